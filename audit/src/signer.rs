//! A handle's signer thread: record signatures off the caller's thread.
//!
//! Signing (~23 µs) costs five times what `append` does (mask, canonical
//! encoding, SHA-256, ~4.6 µs). Done in line, the two run one after the
//! other on the caller's core; here the caller hands each record hash to a
//! thread of its own as soon as `push` has computed it, and `commit` takes
//! the signatures back in order before writing. On two cores encoding,
//! hashing, writing and fsync overlap with signing.
//!
//! One thread per `AuditLog` (never shared between handles or keys): it
//! holds a clone of the handle's signing key, is spawned at the first
//! record, rebuilt after a key rotation, and joined when the handle closes.

use crate::merkle::Hash;
use crate::record;
use ed25519_dalek::{Signer as _, SigningKey};
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::thread::JoinHandle;

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

/// The running thread of a [`SignerThread`].
struct Running {
    jobs: Sender<Hash>,
    sigs: Receiver<(Hash, [u8; 64])>,
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
        r.jobs.send(hash).map_err(|_| SignerError::Gone)?;
        r.in_flight += 1;
        Ok(())
    }

    /// The signature over the next hash submitted (which must be `hash`).
    pub fn take(&mut self, hash: &Hash) -> Result<[u8; 64], SignerError> {
        let r = self.running.as_mut().ok_or(SignerError::Missing(1))?;
        if r.in_flight == 0 {
            return Err(SignerError::Missing(1));
        }
        let (got, sig) = receive(&r.sigs)?;
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
            drop(r.jobs);
            drop(r.sigs);
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

/// Waits for the next signature, spinning for up to about two signatures'
/// time before sleeping: `commit` catches up with the thread and then waits
/// for one signature at a time, and waking a sleeping receiver costs the
/// signer thread a futex call (and the VM an inter-processor interrupt) per
/// record, several µs of a 23 µs signature.
fn receive(sigs: &Receiver<(Hash, [u8; 64])>) -> Result<(Hash, [u8; 64]), SignerError> {
    const SPIN: std::time::Duration = std::time::Duration::from_micros(50);
    let start = std::time::Instant::now();
    loop {
        match sigs.try_recv() {
            Ok(v) => return Ok(v),
            Err(TryRecvError::Disconnected) => return Err(SignerError::Gone),
            Err(TryRecvError::Empty) if start.elapsed() < SPIN => std::hint::spin_loop(),
            Err(TryRecvError::Empty) => return sigs.recv().map_err(|_| SignerError::Gone),
        }
    }
}

fn spawn(key: SigningKey) -> Result<Running, SignerError> {
    let (jobs, job_rx) = mpsc::channel::<Hash>();
    let (sig_tx, sigs) = mpsc::channel();
    let thread = std::thread::Builder::new()
        .name("audit-signer".into())
        .spawn(move || {
            // Ends when the handle drops its sender (or its receiver).
            for hash in job_rx {
                let sig = key.sign(&record::signed_message(&hash)).to_bytes();
                if sig_tx.send((hash, sig)).is_err() {
                    break;
                }
            }
        })
        .map_err(SignerError::Spawn)?;
    Ok(Running { jobs, sigs, thread, in_flight: 0 })
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
}
