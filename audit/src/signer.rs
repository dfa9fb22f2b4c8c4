//! A handle's signer thread: record signatures off the caller's thread.
//!
//! Signing (~21 µs) costs several times what `append` does (mask, canonical
//! encoding, SHA-256, ~4.6 µs). Done in line, the two run one after the
//! other on the caller's core; here the caller hands each record hash to a
//! thread of its own as soon as `push` has computed it, and `commit` takes
//! the signatures back in order before writing. On two cores encoding,
//! hashing, writing and fsync overlap with signing.
//!
//! Waiting is done in chunks: a caller that finds no signature ready sleeps
//! until up to [`CHUNK`] are, and the thread wakes it once for them. Waking
//! per signature costs the signing thread a futex call (and the VM an
//! inter-processor interrupt) per record; spinning instead (as this module
//! once did) keeps a second core busy doing nothing, which on a loaded
//! machine is the signer's core.
//!
//! One thread per `AuditLog` (never shared between handles or keys): it
//! holds a clone of the handle's signing key, is spawned at the first
//! record, rebuilt after a key rotation, and joined when the handle closes.

use crate::merkle::Hash;
use crate::record;
use ed25519_dalek::{Signer as _, SigningKey};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

/// Signatures a waiting caller sleeps for at most (fewer when fewer are
/// outstanding): at most 32 wake-ups per group of 512, and at most this many
/// lines left to encode after the last signature.
const CHUNK: usize = 16;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SignerError {
    #[error("cannot start the audit signer thread: {0}")]
    Spawn(std::io::Error),
    #[error("the audit signer thread stopped (it panicked or was shut down); no record is signed")]
    Gone,
    #[error("the audit signer thread returned a signature for another record (hash {got}, expected {want})")]
    OutOfOrder { want: String, got: String },
    #[error("{0} records are waiting for signatures that were never requested")]
    Missing(usize),
}

/// What the handle and its thread share, under one lock.
#[derive(Default)]
struct State {
    /// Hashes to sign, oldest first.
    jobs: VecDeque<Hash>,
    /// Signatures made and not taken yet, in the order of `jobs`.
    done: VecDeque<(Hash, [u8; 64])>,
    /// The handle sleeps until `done` holds this many (0: it is not waiting).
    want: usize,
    /// The thread sleeps for a job.
    idle: bool,
    /// Set by the handle: finish now.
    stop: bool,
    /// Set by the thread as it ends, however it ends (a panic included).
    gone: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    /// The thread waits here for jobs.
    work: Condvar,
    /// The handle waits here for signatures.
    ready: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing panics while holding the lock; if something did, the
        // queues are still consistent (every change is one push or pop).
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The running thread of a [`SignerThread`].
struct Running {
    shared: Arc<Shared>,
    thread: JoinHandle<()>,
    /// Hashes sent whose signature was not taken back yet.
    in_flight: usize,
}

/// A lazily started signer thread for one key.
pub struct SignerThread {
    running: Option<Running>,
}

impl SignerThread {
    pub fn new() -> Self {
        SignerThread { running: None }
    }

    /// Hands `hash` to the thread (starting it with `key` if needed); its
    /// signature comes back from [`take`](Self::take) in the order sent.
    pub fn submit(&mut self, key: &SigningKey, hash: Hash) -> Result<(), SignerError> {
        if self.running.is_none() {
            self.running = Some(spawn(key.clone())?);
        }
        let Some(r) = self.running.as_mut() else { return Err(SignerError::Gone) };
        let mut st = r.shared.lock();
        if st.gone {
            return Err(SignerError::Gone);
        }
        st.jobs.push_back(hash);
        if st.idle {
            r.shared.work.notify_one();
        }
        drop(st);
        r.in_flight += 1;
        Ok(())
    }

    /// The signature over the next hash submitted (which must be `hash`).
    pub fn take(&mut self, hash: &Hash) -> Result<[u8; 64], SignerError> {
        let r = self.running.as_mut().ok_or(SignerError::Missing(1))?;
        if r.in_flight == 0 {
            return Err(SignerError::Missing(1));
        }
        let mut st = r.shared.lock();
        if st.done.is_empty() {
            st.want = r.in_flight.min(CHUNK);
            while st.done.len() < st.want && !st.gone {
                st = r.shared.ready.wait(st).unwrap_or_else(PoisonError::into_inner);
            }
            st.want = 0;
        }
        let (got, sig) = st.done.pop_front().ok_or(SignerError::Gone)?;
        drop(st);
        r.in_flight -= 1;
        // Cheap insurance: a signature is never attached to another record.
        if got != *hash {
            return Err(SignerError::OutOfOrder {
                want: crate::merkle::to_hex(hash),
                got: crate::merkle::to_hex(&got),
            });
        }
        Ok(sig)
    }

    /// Signatures requested and not taken back.
    pub fn in_flight(&self) -> usize {
        self.running.as_ref().map_or(0, |r| r.in_flight)
    }

    /// Stops and joins the thread (the next `submit` starts a new one): after
    /// a key rotation, and when the handle closes.
    pub fn stop(&mut self) {
        if let Some(r) = self.running.take() {
            r.shared.lock().stop = true;
            r.shared.work.notify_one();
            // A panic in the thread has already been reported by `take`.
            let _ = r.thread.join();
        }
    }
}

impl Default for SignerThread {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for SignerThread {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Marks the thread gone and wakes a waiting handle, on any way out of it.
struct Farewell(Arc<Shared>);

impl Drop for Farewell {
    fn drop(&mut self) {
        self.0.lock().gone = true;
        self.0.ready.notify_all();
    }
}

fn spawn(key: SigningKey) -> Result<Running, SignerError> {
    let shared = Arc::new(Shared::default());
    let theirs = Arc::clone(&shared);
    let thread = std::thread::Builder::new()
        .name("audit-signer".into())
        .spawn(move || {
            let farewell = Farewell(theirs);
            let shared = &farewell.0;
            loop {
                let hash = {
                    let mut st = shared.lock();
                    loop {
                        if st.stop {
                            return;
                        }
                        if let Some(h) = st.jobs.pop_front() {
                            break h;
                        }
                        st.idle = true;
                        st = shared.work.wait(st).unwrap_or_else(PoisonError::into_inner);
                        st.idle = false;
                    }
                };
                let sig = key.sign(&record::signed_message(&hash)).to_bytes();
                let mut st = shared.lock();
                st.done.push_back((hash, sig));
                if st.want != 0 && st.done.len() >= st.want {
                    shared.ready.notify_one();
                }
            }
        })
        .map_err(SignerError::Spawn)?;
    Ok(Running { shared, thread, in_flight: 0 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::Verifier;

    #[test]
    fn signatures_come_back_in_order_and_verify() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let mut s = SignerThread::new();
        let hashes: Vec<Hash> = (0u8..50).map(|i| [i; 32]).collect();
        for h in &hashes {
            s.submit(&key, *h).unwrap();
        }
        assert_eq!(s.in_flight(), 50);
        for h in &hashes {
            let sig = ed25519_dalek::Signature::from_bytes(&s.take(h).unwrap());
            key.verifying_key().verify(&record::signed_message(h), &sig).unwrap();
        }
        assert_eq!(s.in_flight(), 0);
        // A hash never submitted, and one out of order, are refused.
        assert!(matches!(s.take(&[0u8; 32]), Err(SignerError::Missing(1))));
        s.submit(&key, [1u8; 32]).unwrap();
        assert!(matches!(s.take(&[2u8; 32]), Err(SignerError::OutOfOrder { .. })));
        s.stop();
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn a_thread_that_ended_fails_the_wait_instead_of_hanging_it() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let mut s = SignerThread::new();
        s.submit(&key, [1u8; 32]).unwrap();
        s.take(&[1u8; 32]).unwrap();
        // The thread ends with a job queued and a caller about to wait for it.
        let r = s.running.as_mut().unwrap();
        {
            let mut st = r.shared.lock();
            st.stop = true;
            st.jobs.push_back([2u8; 32]);
        }
        r.in_flight += 1;
        r.shared.work.notify_one();
        assert!(matches!(s.take(&[2u8; 32]), Err(SignerError::Gone)));
        assert!(matches!(s.submit(&key, [3u8; 32]), Err(SignerError::Gone)));
    }
}
