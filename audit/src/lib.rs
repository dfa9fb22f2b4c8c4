//! Portcullis audit log: JSON Lines records, SHA-256 chained, ed25519
//! signed, with an RFC 6962 Merkle tree, signed checkpoints and a verifier.
//! The format is specified in `docs/AUDIT.md`; this crate is one
//! implementation of it.
//!
//! # How the supervisor uses it
//!
//! ```no_run
//! use audit::{key, location, AuditLog, Kind, LogOptions};
//! use serde_json::json;
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! // 1. Before the sandbox starts: load (or create) the key and open the log.
//! //    Both stay in the supervisor; neither path may be reachable from the
//! //    sandbox (deny them in Landlock; the log fd is O_CLOEXEC).
//! let (signing_key, _created) = key::load_or_create(&location::default_key_path()?)?;
//! let opts = LogOptions { session: Some("run-4f2a".into()), ..LogOptions::default() };
//! let mut log = AuditLog::open_with(&location::default_log_path()?, signing_key, opts)?;
//! // If open fails, refuse to run: without a log, asks cannot be answered.
//!
//! // 2. Launch, and each degradation, durably before exec.
//! log.append(Kind::Launch, json!({"profile": "filesystem", "argv": ["npx", "server"], "landlock_abi": 7}))?;
//! log.append(Kind::Degradation, json!({"layer": "landlock", "what": "scope signals", "reason": "ABI 5 < 6"}))?;
//! log.commit()?;
//!
//! // 3. Policy-decided verdicts: append on the hot path (hash only, no I/O),
//! //    commit from a timer every few milliseconds (group commit).
//! log.append(Kind::Verdict, json!({"syscall": "openat", "path": "/etc/shadow", "verdict": "deny", "rule": "fs"}))?;
//!
//! // 4. A human-answered ask: record durably, THEN act on the answer.
//! //    If this fails, deny the operation (fail closed) and say why.
//! let seq = log.append_durable(Kind::Approval, json!({"syscall": "connect", "verdict": "ask", "answer": "allow",
//!     "who": "uid 1000", "front_end": "terminal", "latency_ms": 2100}))?;
//! # let _ = seq;
//!
//! // 5. At exit: the exit record, then close (commit + final checkpoint).
//! log.append(Kind::Exit, json!({"status": 0, "signal": null}))?;
//! log.close()?;
//! # Ok(()) }
//! ```
//!
//! Threading: `AuditLog` is `Send`, not shared. Run it on one thread (or a
//! `spawn_blocking` task) fed by a channel; `append` takes the file lock
//! at the first record of a batch and `commit` releases it, so other
//! supervisors sharing the log wait at most one batch. Never drive two
//! handles on the same log from one thread: the second would wait for the
//! first's lock forever. Each handle signs on a thread of its own (started
//! at the first `append`, joined on close or drop), so encoding and hashing
//! on the caller's thread overlap with signing. Call `checkpoint()`
//! from a timer (e.g. every `LogOptions::checkpoint_interval`) so an idle log
//! still gets checkpoints. Any error leaves the handle refusing further
//! records: treat it as "audit unavailable" and deny what needs a record.
//!
//! Record bodies are masked with [`mask_secrets`] by `append`; record
//! argv/env/paths as JSON values, never pre-formatted text. Use the body
//! field names in docs/AUDIT.md §2 (notably `verdict` and `answer`), so that
//! `portcullis audit list --denied` finds denials.

#![forbid(unsafe_code)]

pub mod bench;
pub mod canon;
pub mod chain;
pub mod checkpoint;
pub mod clock;
pub mod key;
pub mod location;
pub mod mask;
pub mod merkle;
pub mod proof;
pub mod reader;
pub mod record;
pub mod resume;
pub mod segment;
pub mod signer;
pub mod storage;
pub mod verify;
pub mod writer;

pub use bench::{bench_signing, bench_verify, SigningBench, VerifyBench};
pub use checkpoint::Checkpoint;
pub use ed25519_dalek::{SigningKey, VerifyingKey};
pub use mask::{display_safe, mask_secrets};
pub use proof::{prove_consistency, prove_inclusion, InclusionReceipt, ProveError};
pub use reader::records;
pub use record::{Kind, Record};
pub use verify::{verify, verify_history, verify_with, History, Report, VerifyError, VerifyOptions};
pub use writer::{AuditError, AuditLog, LogOptions};
