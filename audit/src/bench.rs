//! Throughput figures for `cargo xtask bench` (issue 4's performance table).
//! Each function works in a fresh private temp directory and removes it.

use crate::key;
use crate::record::Kind;
use crate::verify::{verify_with, VerifyOptions};
use crate::writer::{AuditError, AuditLog, LogOptions};
use ed25519_dalek::Signer;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Signing throughput with durability on, against raw ed25519 signing.
#[derive(Clone, Copy, Debug)]
pub struct SigningBench {
    /// Records appended, signed, written and fsynced per second (group commit of `batch`).
    pub records_per_sec: f64,
    /// `SigningKey::sign` calls per second on one core, same run.
    pub raw_signatures_per_sec: f64,
    /// Mean cost of one `append` call (mask, canonical encoding, SHA-256; no I/O), in microseconds.
    pub append_us: f64,
    pub batch: usize,
}

/// Verification throughput: batch against one-by-one `verify_strict`.
#[derive(Clone, Copy, Debug)]
pub struct VerifyBench {
    pub batch_per_sec: f64,
    pub one_by_one_per_sec: f64,
}

struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, AuditError> {
        let mut b = [0u8; 8];
        getrandom::fill(&mut b).map_err(|e| key::KeyError::Random(e.to_string()))?;
        let name: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("portcullis-audit-bench-{name}"));
        crate::storage::ensure_private_dir(&dir)?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn sample_body(i: usize) -> serde_json::Value {
    json!({"syscall": "openat", "path": format!("/home/user/work/src/file{i}.rs"), "verdict": "allow", "rule": "fs.read", "pid": 4242})
}

/// Appends `n` records, committing every `batch`; returns (total seconds,
/// seconds spent inside `append` alone — the supervisor's hot path).
fn write_log(path: &Path, n: usize, batch: usize) -> Result<(f64, f64), AuditError> {
    let opts = LogOptions { max_batch: usize::MAX, checkpoint_every: u64::MAX, ..LogOptions::default() };
    let mut log = AuditLog::open_with(path, key::generate()?, opts)?;
    let mut append_time = 0f64;
    let start = Instant::now();
    for i in 0..n {
        let body = sample_body(i);
        let t = Instant::now();
        log.append(Kind::Verdict, body)?;
        append_time += t.elapsed().as_secs_f64();
        if (i + 1) % batch == 0 {
            log.commit()?;
        }
    }
    log.close()?;
    Ok((start.elapsed().as_secs_f64(), append_time))
}

/// Appends `n` records (group commit of 512) durably, and separately signs
/// `n` messages with the raw key, on this thread. The two are measured in
/// six interleaved rounds and the best round of each is reported, so that
/// other load on the machine skews both alike.
pub fn bench_signing(n: usize) -> Result<SigningBench, AuditError> {
    const ROUNDS: usize = 6;
    let per_round = (n / ROUNDS).max(1);
    let dir = TempDir::new()?;
    let batch = 512;
    let k = key::generate()?;
    let msg = [7u8; 59];
    let (mut best_log, mut best_raw, mut best_append) = (0f64, 0f64, f64::MAX);
    for round in 0..ROUNDS {
        let (total, append_time) = write_log(&dir.0.join(format!("audit-{round}.log")), per_round, batch)?;
        best_log = best_log.max(per_round as f64 / total);
        best_append = best_append.min(append_time / per_round as f64 * 1e6);
        let start = Instant::now();
        let mut sink = 0u8;
        for _ in 0..per_round {
            sink ^= k.sign(&msg).to_bytes()[0];
        }
        std::hint::black_box(sink);
        best_raw = best_raw.max(per_round as f64 / start.elapsed().as_secs_f64());
    }
    Ok(SigningBench { records_per_sec: best_log, raw_signatures_per_sec: best_raw, append_us: best_append, batch })
}

/// Writes a log of `n` records, then verifies it with batch signature
/// verification and with one-by-one `verify_strict`.
pub fn bench_verify(n: usize) -> Result<VerifyBench, AuditError> {
    let n = n.max(1);
    let dir = TempDir::new()?;
    let path = dir.0.join("audit.log");
    write_log(&path, n, 4096)?;
    let run = |strict: bool| -> Result<f64, AuditError> {
        let start = Instant::now();
        let opts = VerifyOptions { strict, ..VerifyOptions::default() };
        let report =
            verify_with(&path, &opts).map_err(|e| AuditError::Failed(format!("benchmark log did not verify: {e}")))?;
        Ok(report.records as f64 / start.elapsed().as_secs_f64())
    };
    // Interleaved rounds, best of each (see bench_signing).
    let (mut batch, mut single) = (0f64, 0f64);
    for _ in 0..3 {
        batch = batch.max(run(false)?);
        single = single.max(run(true)?);
    }
    Ok(VerifyBench { batch_per_sec: batch, one_by_one_per_sec: single })
}
