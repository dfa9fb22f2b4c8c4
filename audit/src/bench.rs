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
    /// Records appended, signed, written and fsynced per second (group
    /// commit of `batch`), over the whole run including open and close.
    pub records_per_sec: f64,
    /// `SigningKey::sign` calls per second on one core, over all rounds.
    pub raw_signatures_per_sec: f64,
    /// Mean cost of one `append` call (mask, canonical encoding, SHA-256; no I/O), in microseconds.
    pub append_us: f64,
    pub batch: usize,
    /// Groups committed, each beside `batch` raw signatures.
    pub rounds: usize,
    /// Median over groups of (durable rate / raw rate beside it).
    pub ratio_median: f64,
    /// Lowest and highest of those per-round ratios.
    pub ratio_low: f64,
    pub ratio_high: f64,
}

/// The CPUs this thread may run on.
fn usable_cpus() -> Vec<usize> {
    use nix::sched::{sched_getaffinity, CpuSet};
    let Ok(set) = sched_getaffinity(nix::unistd::Pid::from_raw(0)) else { return Vec::new() };
    (0..CpuSet::count()).filter(|&c| set.is_set(c).unwrap_or(false)).collect()
}

/// This thread pinned to one CPU until dropped (then back to its old set).
struct Pinned(nix::sched::CpuSet);

impl Pinned {
    fn to(cpu: usize) -> Option<Pinned> {
        use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
        let me = nix::unistd::Pid::from_raw(0);
        let old = sched_getaffinity(me).ok()?;
        let mut one = CpuSet::new();
        one.set(cpu).ok()?;
        sched_setaffinity(me, &one).ok()?;
        Some(Pinned(old))
    }
}

impl Drop for Pinned {
    fn drop(&mut self) {
        let _ = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &self.0);
    }
}

/// Verification throughput: batch against one-by-one `verify_strict`.
#[derive(Clone, Copy, Debug)]
pub struct VerifyBench {
    /// Records per second over all rounds.
    pub batch_per_sec: f64,
    pub one_by_one_per_sec: f64,
    /// Median over rounds of (one-by-one time / batch time), and its range.
    pub speedup_median: f64,
    pub speedup_low: f64,
    pub speedup_high: f64,
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

/// Appends `n` records, committing every `batch`, and closes the log.
fn write_log(path: &Path, n: usize, batch: usize) -> Result<(), AuditError> {
    let opts = LogOptions { max_batch: usize::MAX, checkpoint_every: u64::MAX, ..LogOptions::default() };
    let mut log = AuditLog::open_with(path, key::generate()?, opts)?;
    for i in 0..n {
        log.append(Kind::Verdict, sample_body(i))?;
        if (i + 1) % batch == 0 {
            log.commit()?;
        }
    }
    log.close()
}

/// Signing throughput of one log in its steady state: `n` records (at
/// least 16 groups) appended and committed durably in groups of 512, and
/// beside each group 512 raw signatures on this thread (an equal share
/// pinned to each usable CPU in turn), alternating which goes first. Each group is paired with raw signing measured within
/// about 25 ms of it, because this shared machine's speed swings by a factor
/// of two from one second to the next; the median of the per-group ratios is
/// the figure. The totals include opening the log and its closing checkpoint.
pub fn bench_signing(n: usize) -> Result<SigningBench, AuditError> {
    let batch = 512;
    let rounds = n.div_ceil(batch).max(16);
    let dir = TempDir::new()?;
    let k = key::generate()?;
    let msg = [7u8; 59];
    // Raw signing takes its turn on every CPU this process may use: the
    // log's signer thread runs on whichever the scheduler picks, and on this
    // shared machine one CPU can sign at half the speed of the other.
    let cpus = usable_cpus();
    let raw = || {
        let start = Instant::now();
        let mut sink = 0u8;
        let share = batch.div_ceil(cpus.len().max(1));
        let mut left = batch;
        for cpu in cpus.iter().map(Some).chain(cpus.is_empty().then_some(None)) {
            let _pinned = cpu.and_then(|&c| Pinned::to(c));
            for _ in 0..share.min(left) {
                sink ^= k.sign(&msg).to_bytes()[0];
            }
            left -= share.min(left);
        }
        std::hint::black_box(sink);
        start.elapsed().as_secs_f64()
    };
    let opts = LogOptions { max_batch: usize::MAX, checkpoint_every: u64::MAX, ..LogOptions::default() };
    let (mut log_time, mut raw_time, mut append_time) = (0f64, 0f64, 0f64);
    let mut ratios = Vec::with_capacity(rounds);
    let start = Instant::now();
    let mut log = AuditLog::open_with(&dir.0.join("audit.log"), key::generate()?, opts)?;
    log_time += start.elapsed().as_secs_f64();
    for round in 0..rounds {
        let raw_first = round % 2 == 1;
        let raw_before = if raw_first { raw() } else { 0.0 };
        let group = Instant::now();
        for i in 0..batch {
            let body = sample_body(round * batch + i);
            let t = Instant::now();
            log.append(Kind::Verdict, body)?;
            append_time += t.elapsed().as_secs_f64();
        }
        log.commit()?;
        let this_log = group.elapsed().as_secs_f64();
        let this_raw = if raw_first { raw_before } else { raw() };
        log_time += this_log;
        raw_time += this_raw;
        // Records per second over raw signatures per second, same count.
        ratios.push(this_raw / this_log);
    }
    let close = Instant::now();
    log.close()?;
    log_time += close.elapsed().as_secs_f64();
    let records = (rounds * batch) as f64;
    ratios.sort_by(f64::total_cmp);
    Ok(SigningBench {
        records_per_sec: records / log_time,
        raw_signatures_per_sec: records / raw_time,
        append_us: append_time / records * 1e6,
        batch,
        rounds,
        ratio_median: (ratios[(rounds - 1) / 2] + ratios[rounds / 2]) / 2.0,
        ratio_low: ratios[0],
        ratio_high: ratios[rounds - 1],
    })
}

/// Writes a log of `n` records, then verifies it with batch signature
/// verification and with one-by-one `verify_strict`, in 15 rounds that
/// alternate which goes first. Reported: the totals over all rounds and
/// the median of the per-round speed-ups (each pair within a second).
pub fn bench_verify(n: usize) -> Result<VerifyBench, AuditError> {
    const ROUNDS: usize = 15;
    let n = n.max(1);
    let dir = TempDir::new()?;
    let path = dir.0.join("audit.log");
    write_log(&path, n, 4096)?;
    let run = |strict: bool| -> Result<f64, AuditError> {
        let start = Instant::now();
        let opts = VerifyOptions { strict, ..VerifyOptions::default() };
        let report =
            verify_with(&path, &opts).map_err(|e| AuditError::Failed(format!("benchmark log did not verify: {e}")))?;
        if report.records < n as u64 {
            return Err(AuditError::Failed(format!("benchmark log verified only {} records", report.records)));
        }
        Ok(start.elapsed().as_secs_f64())
    };
    let (mut batch, mut single) = (0f64, 0f64);
    let mut ratios = Vec::with_capacity(ROUNDS);
    for round in 0..ROUNDS {
        let (b, s) = if round % 2 == 0 {
            let b = run(false)?;
            (b, run(true)?)
        } else {
            let s = run(true)?;
            (run(false)?, s)
        };
        batch += b;
        single += s;
        ratios.push(s / b);
    }
    ratios.sort_by(f64::total_cmp);
    let records = (n * ROUNDS) as f64;
    Ok(VerifyBench {
        batch_per_sec: records / batch,
        one_by_one_per_sec: records / single,
        speedup_median: ratios[ROUNDS / 2],
        speedup_low: ratios[0],
        speedup_high: ratios[ROUNDS - 1],
    })
}
