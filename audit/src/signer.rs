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
//! holds a clone of the handle's signing key, is spawned once a batch grows
//! to [`START_AT`] records, rebuilt after a key rotation, and joined when the
//! handle closes. Until then records are signed on the caller's thread when
//! `commit` takes them: a lone launch or exit record costs one signature
//! instead of a thread's start and two wake-ups, which took longer than the
//! signature itself. Once started, the thread signs every later record.

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
/// Records held for signing in line before a batch is given a thread.
const START_AT: usize = 4;

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
    /// Submitted before there was a thread, oldest first: signed in line by
    /// `take`, with the key each was submitted with.
    held: VecDeque<(Hash, SigningKey)>,
}

impl SignerThread {
    pub fn new() -> Self {
        SignerThread { running: None, held: VecDeque::new() }
    }

    /// Queues `hash` for signing with `key`: held for [`take`](Self::take)
    /// to sign in line while the batch is small, else handed to the thread
    /// (started with `key` if needed). Signatures come back in the order
    /// submitted.
    pub fn submit(&mut self, key: &SigningKey, hash: Hash) -> Result<(), SignerError> {
        if self.running.is_none() && self.held.len() + 1 < START_AT {
            self.held.push_back((hash, key.clone()));
            return Ok(());
        }
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
        // Held records were submitted before any the thread has.
        if let Some((held, key)) = self.held.pop_front() {
            if held != *hash {
                return Err(out_of_order(hash, &held));
            }
            return Ok(key.sign(&record::signed_message(&held)).to_bytes());
        }
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
            return Err(out_of_order(hash, &got));
        }
        Ok(sig)
    }

    /// Signatures requested and not taken back.
    pub fn in_flight(&self) -> usize {
        self.held.len() + self.running.as_ref().map_or(0, |r| r.in_flight)
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

fn out_of_order(want: &Hash, got: &Hash) -> SignerError {
    SignerError::OutOfOrder { want: crate::merkle::to_hex(want), got: crate::merkle::to_hex(got) }
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
        // A hash never submitted, and one out of order, are refused, held or
        // on the thread.
        assert!(matches!(s.take(&[0u8; 32]), Err(SignerError::Missing(1))));
        s.submit(&key, [1u8; 32]).unwrap();
        assert!(matches!(s.take(&[2u8; 32]), Err(SignerError::OutOfOrder { .. })));
        for i in 0..START_AT as u8 {
            s.submit(&key, [i; 32]).unwrap();
        }
        for i in 0..START_AT as u8 - 1 {
            s.take(&[i; 32]).unwrap();
        }
        assert!(matches!(s.take(&[9u8; 32]), Err(SignerError::OutOfOrder { .. })));
        s.stop();
        s.submit(&key, [7u8; 32]).unwrap();
        assert!(s.running.is_none());
        assert!(matches!(s.take(&[8u8; 32]), Err(SignerError::OutOfOrder { .. })));
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn a_small_batch_is_signed_in_line_and_a_large_one_starts_the_thread() {
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let mut s = SignerThread::new();
        let check = |h: &Hash, sig: [u8; 64]| {
            let sig = ed25519_dalek::Signature::from_bytes(&sig);
            key.verifying_key().verify(&record::signed_message(h), &sig).unwrap();
        };
        for h in [[1u8; 32], [2u8; 32]] {
            s.submit(&key, h).unwrap();
        }
        assert!(s.running.is_none(), "two records start no thread");
        assert_eq!(s.in_flight(), 2);
        for h in [[1u8; 32], [2u8; 32]] {
            check(&h, s.take(&h).unwrap());
        }
        // A batch of ten: the first held, the rest on a thread, all in order.
        let hashes: Vec<Hash> = (10u8..20).map(|i| [i; 32]).collect();
        for h in &hashes {
            s.submit(&key, *h).unwrap();
        }
        assert!(s.running.is_some(), "a batch of {} starts the thread", hashes.len());
        assert_eq!(s.in_flight(), hashes.len());
        for h in &hashes {
            check(h, s.take(h).unwrap());
        }
        assert_eq!(s.in_flight(), 0);
        // With the thread stopped (a key rotation), records are held again,
        // each signed with the key it was submitted with.
        s.stop();
        let other = SigningKey::from_bytes(&[6u8; 32]);
        s.submit(&other, [30u8; 32]).unwrap();
        assert!(s.running.is_none());
        let sig = ed25519_dalek::Signature::from_bytes(&s.take(&[30u8; 32]).unwrap());
        other.verifying_key().verify(&record::signed_message(&[30u8; 32]), &sig).unwrap();
    }

    #[test]
    fn a_thread_that_ended_fails_the_wait_instead_of_hanging_it() {
        let key = SigningKey::from_bytes(&[3u8; 32]);
        let mut s = SignerThread::new();
        for i in 0..START_AT as u8 {
            s.submit(&key, [i; 32]).unwrap();
        }
        for i in 0..START_AT as u8 {
            s.take(&[i; 32]).unwrap();
        }
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
