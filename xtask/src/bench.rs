//! `cargo xtask bench`: launch overhead and syscall overhead, measured side by
//! side in one run (bare, portcullis, bwrap, and other peers where installed),
//! written to BENCHMARKS.md. Nothing here asserts a time: the numbers are for
//! people to read.
//!
//! Launchers are measured interleaved (one launch of each per round), so a
//! burst of load from the shared machine hits every row alike.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{apt_install, have, root, run};

/// A launcher to time: (label, argv).
type Row = (String, Vec<String>);

struct Stats {
    median_us: f64,
    mean_us: f64,
    p90_us: f64,
    /// CPU time of the launcher and every process it started (see
    /// [`CpuAcct`]), median over the rounds; NaN where not measured.
    cpu_median_us: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// `v` µs rounded, or a dash where it was not measured (NaN).
fn micros(v: f64) -> String {
    if v.is_nan() {
        "—".into()
    } else {
        format!("{v:.0} µs")
    }
}

/// Wall and CPU times of one command's rounds.
fn stats(v: Vec<(f64, f64)>) -> Stats {
    let (mut wall, cpu): (Vec<f64>, Vec<f64>) = v.into_iter().unzip();
    wall.sort_by(|a, b| a.total_cmp(b));
    let n = wall.len();
    Stats {
        median_us: wall[n / 2],
        mean_us: wall.iter().sum::<f64>() / n as f64,
        p90_us: wall[(n * 9) / 10],
        cpu_median_us: median(cpu),
    }
}

/// CPU accounting for the launch tables: a cgroup v1 `cpuacct` group that
/// this process joins while it launches, so every process a launcher starts
/// is counted, whoever reaps it. (`getrusage(RUSAGE_CHILDREN)` counts only
/// processes their parent waited for: it saw a third of bwrap's CPU time.)
/// The bench's own fork and wait are in every row alike, bare included.
struct CpuAcct {
    dir: std::path::PathBuf,
    home: std::path::PathBuf,
}

impl CpuAcct {
    fn enter() -> std::result::Result<CpuAcct, String> {
        // (cgroup v2 has no `cpuacct` controller, so this finds only v1.)
        let c = portcullis::sandbox::limits::find_controller("cpuacct")
            .ok_or("no writable cgroup v1 `cpuacct` hierarchy (CPU time needs one)")?;
        let dir = c.dir.join(format!("xtask-bench-{}", std::process::id()));
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let acct = CpuAcct { dir, home: c.dir };
        std::fs::write(acct.dir.join("cgroup.procs"), std::process::id().to_string())
            .map_err(|e| format!("cannot join {}: {e}", acct.dir.display()))?;
        Ok(acct)
    }

    /// Waits (up to a second) until this process is alone in the group:
    /// whatever a launcher left running (portcullis's finisher, which makes
    /// the exit record durable after the caller has the status) has its
    /// CPU time counted for that launch, and does not run into the next.
    fn settle(&self) {
        let me = std::process::id().to_string();
        let deadline = Instant::now() + std::time::Duration::from_secs(1);
        while Instant::now() < deadline {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            if procs.lines().all(|p| p.trim() == me) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_micros(100));
        }
    }

    /// CPU time of the group so far, in µs.
    fn usage_us(&self) -> f64 {
        let text = std::fs::read_to_string(self.dir.join("cpuacct.usage")).unwrap_or_default();
        text.trim().parse::<f64>().map_or(f64::NAN, |ns| ns / 1000.0)
    }
}

impl Drop for CpuAcct {
    fn drop(&mut self) {
        let _ = std::fs::write(self.home.join("cgroup.procs"), std::process::id().to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Wall time and CPU time (NaN without `acct`) of one launch, in µs.
fn once(argv: &[String], dir: &Path, acct: Option<&CpuAcct>) -> Result<(f64, f64)> {
    let cpu = acct.map_or(f64::NAN, CpuAcct::usage_us);
    let t = Instant::now();
    let status = Command::new(&argv[0])
        .args(&argv[1..])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {argv:?}"))?;
    let dt = t.elapsed().as_secs_f64() * 1e6;
    if !status.success() {
        bail!("{argv:?} failed: {status}");
    }
    if let Some(a) = acct {
        a.settle();
    }
    Ok((dt, acct.map_or(f64::NAN, CpuAcct::usage_us) - cpu))
}

/// Wall time of `runs` launches of each command, interleaved, after 10 warm-up rounds.
fn launch_all(cmds: &[Vec<String>], dir: &Path, runs: usize, acct: Option<&CpuAcct>) -> Result<Vec<Stats>> {
    let mut times = vec![Vec::with_capacity(runs); cmds.len()];
    for round in 0..runs + 10 {
        for (i, c) in cmds.iter().enumerate() {
            let dt = once(c, dir, acct)?;
            if round >= 10 {
                times[i].push(dt);
            }
        }
    }
    Ok(times.into_iter().map(stats).collect())
}

/// ns/op of one loop over interleaved runs.
struct Op {
    median: f64,
    best: f64,
    /// Each run's figure, in the order of the rounds.
    rounds: Vec<f64>,
}

impl Op {
    /// Overhead over `bare` in percent: at the medians, between the best
    /// runs, and the median of each round's own ratio (the variants of a
    /// round run back to back, so a busy moment weighs on both sides).
    fn over(&self, bare: &Op) -> (f64, f64, f64) {
        let pct = |sb: f64, b: f64| (sb - b) / b * 100.0;
        let mut paired: Vec<f64> = self.rounds.iter().zip(&bare.rounds).map(|(s, b)| pct(*s, *b)).collect();
        paired.sort_by(|a, b| a.total_cmp(b));
        (pct(self.median, bare.median), pct(self.best, bare.best), paired[paired.len() / 2])
    }
}

/// Each variant's loop over `reps` interleaved rounds, the order of the
/// variants alternating between rounds.
fn per_op(variants: &[Vec<String>], dir: &Path, reps: usize) -> Result<Vec<Op>> {
    let get = |argv: &[String]| -> Result<f64> {
        let out = Command::new(&argv[0]).args(&argv[1..]).current_dir(dir).stdin(Stdio::null()).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .find_map(|l| l.strip_prefix("ns "))
            .with_context(|| format!("no timing from {argv:?}: {text} {}", String::from_utf8_lossy(&out.stderr)))?
            .trim()
            .parse()?)
    };
    let mut runs: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for round in 0..reps {
        let mut order: Vec<usize> = (0..variants.len()).collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for i in order {
            runs[i].push(get(&variants[i])?);
        }
    }
    Ok(runs
        .into_iter()
        .map(|rounds| {
            let mut v = rounds.clone();
            v.sort_by(|a, b| a.total_cmp(b));
            Op { median: v[v.len() / 2], best: v[0], rounds }
        })
        .collect())
}

/// Which of strict's syscalls the kernel answers from its seccomp action
/// cache (the kernel's own test, rewritten in `cached_allow`), and which
/// run the program on every call.
fn cache_line(plan: &policy::plan::Plan, stage: &portcullis::sys::stage::Stage) -> String {
    use portcullis::sandbox::seccomp::{cached_allow, notify_set, Notify};
    let progs: Vec<&Vec<portcullis::sys::stage::Insn>> =
        stage.filters.iter().chain(stage.notify.as_ref().map(|(p, _)| p)).collect();
    let parked = notify_set(&plan.gate);
    let (mut cached, mut denied, mut parks, mut by_args) = (0, 0, 0, Vec::new());
    for &(name, nr) in policy::syscalls::X86_64 {
        let n = nr as u32;
        if progs.iter().all(|p| cached_allow(p, n)) {
            cached += 1;
        } else if plan.seccomp.rules.iter().any(|r| r.nr == nr && r.when.is_empty())
            || parked.iter().any(|(p, how)| *p == n && *how == Notify::Enosys)
        {
            // The gate answers ENOSYS to some (openat2) whatever the arguments.
            denied += 1;
        } else if parked.iter().any(|(p, how)| *p == n && *how == Notify::Always) {
            parks += 1;
        } else {
            by_args.push(format!("`{name}`"));
        }
    }
    format!(
        "\nUnder strict, the kernel's seccomp action cache answers {cached} of the {} x86-64 syscalls without running the program (every call `read`, `close` and `getppid` make in the loops above among them); {denied} are denied outright and {parks} always parked for the gate, which run it. The {} whose answer depends on their arguments run it on every call: {}. A unit test (`hot_syscalls_are_answered_from_the_kernels_action_cache`) holds the calls servers make all the time (reads, writes, stat, mmap, futex, polls, clocks, signals and more) to the cache under every shipped profile.\n",
        policy::syscalls::X86_64.len(),
        by_args.len(),
        by_args.join(", ")
    )
}

/// Writes a stage's seccomp programs as the `loop-open-seccomp` probe reads
/// them (each: u32 LE count, then count 8-byte instructions), in the order
/// the stage installs them.
fn write_programs(to: &Path, stage: &portcullis::sys::stage::Stage) -> Result<()> {
    let mut bytes = Vec::new();
    for prog in stage.filters.iter().chain(stage.notify.as_ref().map(|(p, _)| p)) {
        bytes.extend((prog.len() as u32).to_le_bytes());
        for i in prog {
            bytes.extend(i.code.to_le_bytes());
            bytes.extend([i.jt, i.jf]);
            bytes.extend(i.k.to_le_bytes());
        }
    }
    Ok(std::fs::write(to, bytes)?)
}

/// Whether the kernel answers `openat` from its action cache under every
/// program of a stage.
fn caches_openat(stage: &portcullis::sys::stage::Stage) -> bool {
    let nr = policy::syscalls::number("openat").expect("x86-64 has openat") as u32;
    stage
        .filters
        .iter()
        .chain(stage.notify.as_ref().map(|(p, _)| p))
        .all(|p| portcullis::sandbox::seccomp::cached_allow(p, nr))
}

/// Interleaved runs of each syscall loop.
const OP_RUNS: usize = 40;

/// The syscall-overhead table. `open`: bare, Landlock alone, strict without
/// its gate filter, strict, strict's seccomp program alone, a filter that
/// allows everything, a filter that reads an argument and allows, strict's
/// program without its gate part alone; `ppid`: bare, strict.
/// `nogate_openat`: whether the last of those programs leaves `openat` to
/// the kernel's action cache.
fn syscall_table(open: &[Op], ppid: &[Op], nogate_openat: bool) -> String {
    let row = |what: &str, bare: &Op, sb: &Op| {
        let (m, b, p) = sb.over(bare);
        format!(
            "| {what} | {:.0} | {:.0} | {m:+.1}% | {:.0} | {:.0} | {b:+.1}% | {p:+.1}% |\n",
            bare.median, sb.median, bare.best, sb.best
        )
    };
    let mut t = format!(
        "\n## Syscall overhead (ns per iteration, {OP_RUNS} interleaved rounds of each loop)\n\nThe loops are CPU-bound and this host is shared: other load only ever adds time, so the best run is the nearest to the code's own cost, and the median shows what a busy moment costs. The last column is the median, over rounds, of each round's own overhead (the loops of a round run back to back, in an order that alternates), the figure a drift in the host's load moves least.\n\n| loop | bare, median | sandboxed, median | overhead | bare, best | sandboxed, best | overhead | overhead, per round (median) |\n|---|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    t += &row("open/read/close of a 1 KiB workspace file, `--profile strict`", &open[0], &open[3]);
    t += &row("the same, strict without its `[ask]`/`[deny]` rules (no gate filter)", &open[0], &open[2]);
    t += &row(
        "the same, strict's seccomp program alone (gate part included, no Landlock, no portcullis): the filtered-syscall cost",
        &open[0],
        &open[4],
    );
    t += &row("the same, the seccomp program of strict without its `[ask]`/`[deny]` rules, alone", &open[0], &open[7]);
    t += &row(
        "the same, a filter of two instructions that loads `openat`'s flags and allows (no portcullis): the floor of any filter that looks at an argument",
        &open[0],
        &open[6],
    );
    t += &row(
        "the same, a seccomp filter that allows everything (one instruction, no portcullis): the floor of any filter",
        &open[0],
        &open[5],
    );
    t += &row(
        "the same, Landlock alone: one layer, one rule beneath the workspace, no portcullis (the kernel's floor)",
        &open[0],
        &open[1],
    );
    t += &row("getppid", &ppid[0], &ppid[1]);
    let verdict = |x: f64| if x <= 5.0 { "met" } else { "not met" };
    let said = |(m, b, p): (f64, f64, f64)| {
        format!(
            "{m:+.1}% at the medians ({}), {b:+.1}% between the best runs ({}), {p:+.1}% per round ({})",
            verdict(m),
            verdict(b),
            verdict(p)
        )
    };
    let three = |(m, b, p): (f64, f64, f64)| format!("{m:+.1}% / {b:+.1}% / {p:+.1}%");
    let cached = if nogate_openat {
        "the kernel's action cache answers `openat` there"
    } else {
        "`openat` still runs that program on every call"
    };
    t += &format!(
        "\nTarget: at most +5% filtered-syscall overhead on the open/read/close loop (figures below: medians / best / per round).\n\n\
- strict's seccomp program alone: {}.\n\
- A filter of two instructions that loads `openat`'s flags and allows everything: {}. Any filter that looks at `openat`'s arguments costs at least this here: the kernel cannot answer such a call from its action cache, so it runs a BPF program on every `openat`. strict's program alone against it: {:+.0} / {:+.0} ns per iteration (medians / best); what its 13 instructions for `openat` add over two is within the noise. The rest is running a program at all.\n\
- strict needs `openat`'s flags: its `[deny]` and `[ask]` write rules (every `.git`, at any depth, files made after launch included) are holes Landlock cannot cut in a writable tree, so the approval filter parks opens for writing for the gate, and lets opens for reading through. Without those rules strict's program alone costs {} ({cached}); that is the profile as this target was first set, before the gate.\n\
- A filter that allows everything: {}: what any seccomp filter costs on this loop here (every syscall takes the kernel's slower entry path, even one the action cache answers). It and strict's program without its `[ask]`/`[deny]` rules cost the same in principle when the cache answers all three calls; here they differ by {:.1} points at the medians: this run's noise.\n\
- The whole sandbox under `--profile strict`, Landlock included: {}. Landlock alone, with one rule, costs {} on the same loop: no Landlock-confined run can meet +5% on this loop here. strict minus strict without its `[ask]`/`[deny]` rules, both whole: {:+.0} / {:+.0} ns (medians / best).\n",
        said(open[4].over(&open[0])),
        three(open[6].over(&open[0])),
        open[4].median - open[6].median,
        open[4].best - open[6].best,
        said(open[7].over(&open[0])),
        three(open[5].over(&open[0])),
        (open[5].over(&open[0]).0 - open[7].over(&open[0]).0).abs(),
        said(open[3].over(&open[0])),
        three(open[1].over(&open[0])),
        open[3].median - open[2].median,
        open[3].best - open[2].best,
    );
    t
}

fn s(x: &str) -> String {
    x.to_string()
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// The launch phases `PORTCULLIS_TIMING=1` marks, as a table: the median time
/// of each mark since portcullis's `main` over `rounds` launches (as root,
/// or as the calling user). Marks come from three threads; they are listed in
/// the order of their medians.
fn timeline(argv: &[String], dir: &Path, rounds: usize) -> Result<String> {
    let mut marks: Vec<(String, Vec<f64>)> = Vec::new();
    for _ in 0..rounds {
        let out = Command::new(&argv[0])
            .args(&argv[1..])
            .current_dir(dir)
            .env("PORTCULLIS_TIMING", "1")
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run {argv:?}"))?;
        if !out.status.success() {
            bail!("{argv:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        for line in String::from_utf8_lossy(&out.stderr).lines() {
            let Some(rest) = line.strip_prefix("portcullis: timing:") else { continue };
            let Some((us, phase)) = rest.trim_start().split_once(" us  ") else { continue };
            let us: f64 = us.trim().parse().with_context(|| format!("bad timing line {line:?}"))?;
            match marks.iter_mut().find(|(p, _)| p == phase) {
                Some((_, v)) => v.push(us),
                None => marks.push((phase.to_string(), vec![us])),
            }
        }
    }
    let mut rows: Vec<(String, f64, usize)> = marks
        .into_iter()
        .map(|(phase, v)| {
            let n = v.len();
            (phase, median(v), n)
        })
        .collect();
    rows.sort_by(|a, b| a.1.total_cmp(&b.1));
    let mut t = format!(
        "\n### Where the time of one launch goes (`PORTCULLIS_TIMING=1`, {rounds} launches as in the first table)\n\nThe median time of each mark since portcullis's `main`. Marks come from two threads (the main one, which clones the stage first, configures it once the sandbox is prepared, decides the launch and starts the gate once the command has exec'd, and the one that joins the kernel's audit stream and opens the log meanwhile; the kernel-audit reader starts once the go-ahead is given), so the steps overlap; printing the marks adds a little to each.\n\n| mark | median since start |\n|---|---:|\n"
    );
    for (phase, us, n) in rows {
        let seen = if n == rounds { String::new() } else { format!(" (in {n} of {rounds} launches)") };
        t += &format!("| {phase}{seen} | {us:.0} µs |\n");
    }
    Ok(t)
}

/// `argv` as nobody, with an audit log of nobody's beside the workspace.
fn as_nobody(argv: &[String], base: &Path) -> Vec<String> {
    let audit = base.join("audit-nobody");
    let mut v = vec![
        s("env"),
        format!("PORTCULLIS_AUDIT_LOG={}", audit.join("audit.log").display()),
        format!("PORTCULLIS_AUDIT_KEY={}", audit.join("audit.key").display()),
        s("setpriv"),
        s("--reuid=65534"),
        s("--regid=65534"),
        s("--clear-groups"),
        s("--"),
    ];
    v.extend_from_slice(argv);
    v
}

/// Issue 4's notification latency with the audit log on against off.
fn gate_audit_table(g: &portcullis::gate::bench::GateBench) -> String {
    let us = |ns: f64| ns / 1000.0;
    let row = |what: &str, s: &portcullis::gate::bench::Stats| {
        format!("| {what} | {:.2} µs | {:.2} µs | {:.2} µs |\n", us(s.p50), us(s.p99), us(s.mean))
    };
    let mut t = String::from(
        "\n### Notification latency, audit log on against off\n\ngetppid parked and denied by a `[deny]` rule (policy-decided, no human), answered EPERM. Each row pools 20 rounds; the rounds of audit off and on alternate, so both see the same host.\n\n| what | p50 | p99 | mean |\n|---|---:|---:|---:|\n",
    );
    t += &row("back to back, audit off", &g.deny_audit_off);
    t += &row("back to back, audit on as shipped (3 records per target, the rest counted)", &g.deny_audit_on);
    for p in &g.paced {
        let every = if p.every_ns >= 1_000_000 {
            format!("{} ms", p.every_ns / 1_000_000)
        } else {
            format!("{} µs", p.every_ns / 1000)
        };
        t += &row(&format!("one call every {every}, audit off"), &p.audit_off);
        t += &row(
            &format!("one call every {every}, audit on, every denial a signed record ({} records)", p.records),
            &p.audit_on,
        );
    }
    t += &format!(
        "\nAudit on / off at p50 (p99): {:.2}x ({:.2}x) back to back as shipped",
        g.deny_audit_on.p50 / g.deny_audit_off.p50,
        g.deny_audit_on.p99 / g.deny_audit_off.p99
    );
    for p in &g.paced {
        t += &format!(
            "; {:.2}x ({:.2}x) with every denial recorded at {:.0}/s",
            p.audit_on.p50 / p.audit_off.p50,
            p.audit_on.p99 / p.audit_off.p99,
            1e9 / p.every_ns as f64
        );
    }
    t += ". Target: at most 1.05x. A denial is answered first and recorded after; \
the gate hands the record to the audit thread through a buffer that wakes it \
once per burst; canonical encoding and SHA-256 happen there, signing on the \
log's signer thread (in line for batches under four records), fsync once \
per group commit; both threads run at \
nice 10. A human-answered ask is \
the exception: it waits for its record to be durable.\n";
    t
}

fn only(section: &str) -> Result<()> {
    match section {
        "gate" => {
            let dir = std::env::temp_dir().join(format!("portcullis-bench-gate-{}", std::process::id()));
            let g = portcullis::gate::bench::measure(100_000, &dir).map_err(|f| anyhow::anyhow!("{}", f.message));
            let _ = std::fs::remove_dir_all(&dir);
            print!("{}", gate_audit_table(&g?));
        }
        "mcp" => {
            let dir = std::env::temp_dir().join(format!("portcullis-bench-mcp-{}", std::process::id()));
            let off = portcullis::mcp::bench::measure(2000, 20_000, None)?;
            let on = portcullis::mcp::bench::measure(2000, 20_000, Some(&dir));
            let _ = std::fs::remove_dir_all(&dir);
            println!("audit off:\n{}\naudit on:\n{}", off.table(), on?.table());
        }
        "audit" => {
            let sign = audit::bench_signing(30_000).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "totals: {:.0} durable records/s, raw {:.0} signatures/s: {:.2}x; per group: median {:.2}x ({:.2}..{:.2})",
                sign.records_per_sec,
                sign.raw_signatures_per_sec,
                sign.records_per_sec / sign.raw_signatures_per_sec,
                sign.ratio_median,
                sign.ratio_low,
                sign.ratio_high
            );
            let v = audit::bench_verify(4_000).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "verify: batch {:.0} records/s, one by one {:.0} records/s; per round: median {:.2}x ({:.2}..{:.2})",
                v.batch_per_sec, v.one_by_one_per_sec, v.speedup_median, v.speedup_low, v.speedup_high
            );
        }
        other => anyhow::bail!("--only {other:?}: expected gate, mcp or audit"),
    }
    Ok(())
}

pub fn bench(args: &[String]) -> Result<()> {
    // The audit and MCP figures are measured in this process: measure
    // optimised code, not the debug build `cargo xtask` runs by default.
    if cfg!(debug_assertions) {
        return run(Command::new("cargo")
            .args(["run", "--release", "--quiet", "-p", "xtask", "--", "bench"])
            .args(args));
    }
    let runs: usize = match args.iter().position(|a| a == "--runs") {
        Some(i) => args.get(i + 1).context("--runs N")?.parse()?,
        None => 200,
    };
    // `--only mcp|audit`: one section, printed, BENCHMARKS.md untouched (for
    // trying a change; the file is only ever written by a full run).
    if let Some(i) = args.iter().position(|a| a == "--only") {
        return only(args.get(i + 1).map(String::as_str).unwrap_or(""));
    }
    run(Command::new("cargo").args(["build", "--release", "--quiet", "-p", "portcullis"]))?;
    // 0. The syscall gate first: its workers fork while this process is
    // still single-threaded.
    eprintln!("xtask bench: syscall gate");
    let gate_dir = std::env::temp_dir().join(format!("portcullis-bench-gate-{}", std::process::id()));
    let gate = portcullis::gate::bench::measure(100_000, &gate_dir).map_err(|f| anyhow::anyhow!("{}", f.message))?;
    let _ = std::fs::remove_dir_all(&gate_dir);
    if !have("bwrap") {
        if let Err(e) = apt_install(&["bubblewrap"]) {
            eprintln!("xtask bench: bwrap unavailable: {e}");
        }
    }
    let root = root();
    // .cargo/config.toml names the target, so release builds land here.
    let bin = root.join("target/x86_64-unknown-linux-gnu/release/portcullis");
    let probe = root.join("target/x86_64-unknown-linux-gnu/release/portcullis-probe");
    // base/ws is the workspace; the audit logs sit beside it, out of the
    // sandbox's reach (run refuses a rule that would reach them).
    let base = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    let work = base.join("ws");
    std::fs::create_dir_all(&work)?;
    std::fs::set_permissions(&work, std::os::unix::fs::PermissionsExt::from_mode(0o777))?;
    let file = work.join("file.txt");
    std::fs::write(&file, "x".repeat(1024))?;
    let (binp, probep, filep, workp) = (path(&bin), path(&probe), path(&file), path(&work));
    // The runs below audit into the scratch dir, not the machine's log.
    std::env::set_var("PORTCULLIS_AUDIT_LOG", base.join("audit-root/audit.log"));
    std::env::set_var("PORTCULLIS_AUDIT_KEY", base.join("audit-root/audit.key"));
    let nobody_audit = base.join("audit-nobody");
    std::fs::create_dir_all(&nobody_audit)?;
    std::fs::set_permissions(&nobody_audit, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
    std::os::unix::fs::chown(&nobody_audit, Some(65534), Some(65534))?;
    let true_s = path(&std::fs::canonicalize("/bin/true")?);

    // 1. Launch overhead of /bin/true, as root and as an unprivileged user.
    let bare = vec![true_s.clone()];
    let pc =
        vec![binp.clone(), s("run"), s("--profile"), s("strict"), s("--exec"), true_s.clone(), s("--"), true_s.clone()];
    let bwrap = have("bwrap").then(|| {
        let mut bw = vec![s("bwrap"), s("--unshare-all"), s("--die-with-parent"), s("--new-session")];
        for d in ["/usr", "/bin", "/lib", "/lib64", "/etc"] {
            if Path::new(d).exists() {
                bw.extend([s("--ro-bind"), s(d), s(d)]);
            }
        }
        bw.extend([s("--proc"), s("/proc"), s("--dev"), s("/dev"), s("--bind"), workp.clone(), workp.clone()]);
        bw.extend([s("--chdir"), workp.clone(), true_s.clone()]);
        bw
    });
    // For reference, not a peer: the namespaces portcullis creates, and the
    // private /proc, made by util-linux `unshare` and nothing else.
    // Dropped where it cannot run (no unprivileged user namespaces, say).
    let unshare = have("unshare")
        .then(|| {
            let mut v = vec![s("unshare"), s("--user"), s("--map-root-user"), s("--pid"), s("--fork")];
            v.extend([s("--mount"), s("--ipc"), s("--mount-proc"), true_s.clone()]);
            v
        })
        .filter(|v| once(v, &work, None).is_ok());
    let is_root = portcullis::sys::probe::ids().1 == 0;
    let pc_label = s("`portcullis run --profile strict`");
    let bw_label = s("`bwrap --unshare-all` (same paths)");
    let un_label = s("namespaces alone: `unshare --user --pid --mount --ipc --mount-proc`");
    let mut groups: Vec<(&str, Vec<Row>)> = Vec::new();
    let mut root_rows = vec![(s("bare `/bin/true`"), bare.clone()), (pc_label.clone(), pc.clone())];
    root_rows.extend(bwrap.clone().map(|bw| (bw_label.clone(), bw)));
    root_rows.extend(unshare.clone().map(|un| (un_label.clone(), un)));
    groups.push((if is_root { "as root" } else { "as the calling user" }, root_rows));
    if is_root && have("setpriv") {
        let mut rows =
            vec![(s("bare `/bin/true`"), as_nobody(&bare, &base)), (pc_label.clone(), as_nobody(&pc, &base))];
        rows.extend(bwrap.as_ref().map(|bw| (bw_label.clone(), as_nobody(bw, &base))));
        let un_nobody = unshare.as_ref().map(|un| as_nobody(un, &base)).filter(|v| once(v, &work, None).is_ok());
        rows.extend(un_nobody.map(|un| (un_label.clone(), un)));
        groups.push(("as nobody (through setpriv, in every row)", rows));
    }
    let mut launch_md = String::new();
    let acct = CpuAcct::enter();
    if let Err(why) = &acct {
        launch_md.push_str(&format!("\nCPU time per launch is not measured: {why}.\n"));
    }
    for (label, rows) in &groups {
        eprintln!("xtask bench: launch overhead {label}, {runs} rounds");
        let cmds: Vec<Vec<String>> = rows.iter().map(|(_, c)| c.clone()).collect();
        let st = launch_all(&cmds, &work, runs, acct.as_ref().ok())?;
        let (bare_med, bare_cpu) = (st[0].median_us, st[0].cpu_median_us);
        launch_md.push_str(&format!(
            "\n### {label}\n\n| launcher | median | mean | p90 | added over bare (median) | CPU per launch (median) | added CPU |\n|---|---:|---:|---:|---:|---:|---:|\n"
        ));
        for ((name, _), st) in rows.iter().zip(&st) {
            launch_md.push_str(&format!(
                "| {name} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs | {} | {} |\n",
                st.median_us,
                st.mean_us,
                st.p90_us,
                st.median_us - bare_med,
                micros(st.cpu_median_us),
                micros(st.cpu_median_us - bare_cpu)
            ));
        }
        let find = |l: &String| rows.iter().position(|(n, _)| n == l).map(|i| &st[i]);
        if let (Some(p), Some(b)) = (find(&pc_label), find(&bw_label)) {
            let ratio = (p.median_us - bare_med) / (b.median_us - bare_med);
            let cpu = (p.cpu_median_us - bare_cpu) / (b.cpu_median_us - bare_cpu);
            let cpu = if cpu.is_nan() { String::new() } else { format!(", and {cpu:.2}x of its added CPU time") };
            launch_md.push_str(&format!(
                "\nportcullis adds {ratio:.2}x of bwrap's added launch time (target: at most 0.6x){cpu}.\n"
            ));
        }
    }
    drop(acct);
    eprintln!("xtask bench: launch timeline");
    launch_md.push_str(&timeline(&pc, &work, 50)?);
    let missing: Vec<&str> = ["nono", "firejail", "syd", "bwrap"].into_iter().filter(|p| !have(p)).collect();
    if !missing.is_empty() {
        launch_md.push_str(&format!(
            "\nNot measured (not installable here from Debian, crates.io, PyPI or npm): {}.\n",
            missing.join(", ")
        ));
    }

    // 2. Setup cost inside portcullis: prepare (ruleset + filters) and install.
    let features = portcullis::kernel::Features::probe();
    let profile = policy::Loader::builtin_only().load("strict")?;
    let vars = policy::Vars {
        workspace: workp.clone(),
        home: std::env::var("HOME").unwrap_or_else(|_| "/root".into()),
        tmp: workp.clone(),
    };
    let mut plan = policy::compile(&profile, &vars)?;
    plan.exec.allow.push(policy::plan::CommandSpec {
        spec: true_s.clone(),
        optional: false,
        at: policy::Origin::flag("--exec"),
    });
    plan.limits.max_procs = None;
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let n_prep = 200;
    let t = Instant::now();
    let mut prepared = None;
    for _ in 0..n_prep {
        prepared = Some(
            portcullis::sandbox::prepare(&plan, &features, &path_var, "bench", true)
                .map_err(|f| anyhow::anyhow!(f.message))?,
        );
    }
    let prepare_us = t.elapsed().as_secs_f64() * 1e6 / n_prep as f64;
    let prepared = prepared.context("prepared")?;
    let mut filter_sizes: Vec<usize> = prepared.stage.filters.iter().map(Vec::len).collect();
    // With a gate, the one program is the approval filter (attached with NEW_LISTENER).
    filter_sizes.extend(prepared.stage.notify.as_ref().map(|(p, _)| p.len()));
    let (fork_ns, confine_ns) =
        portcullis::sys::stage::time_confine(&prepared.stage, 500).context("the stage configuration for strict")?;
    let cache = cache_line(&plan, &prepared.stage);
    let install_us = (confine_ns as f64 - fork_ns as f64) / 1000.0;

    // 3. Syscall overhead.
    eprintln!("xtask bench: syscall overhead");
    let sandboxed = |a: &[&str]| {
        let mut v = vec![binp.clone(), s("run"), s("--exec"), probep.clone(), s("--"), probep.clone()];
        v.extend(a.iter().map(|x| x.to_string()));
        v
    };
    let direct = |a: &[&str]| {
        let mut v = vec![probep.clone()];
        v.extend(a.iter().map(|x| x.to_string()));
        v
    };
    let open_args = ["loop-open", filep.as_str(), "200000"];
    let ppid_args = ["loop-getppid", "2000000"];
    // The kernel's floor: one Landlock rule beneath the workspace, no portcullis.
    let floor_args = ["loop-open-landlock", workp.as_str(), filep.as_str(), "200000"];
    // The filtered-syscall cost alone: strict's seccomp program(s), no
    // Landlock, no portcullis. Written as the stage installs them.
    let bpf = base.join("strict.bpf");
    write_programs(&bpf, &prepared.stage)?;
    let bpfp = path(&bpf);
    let seccomp_args = ["loop-open-seccomp", bpfp.as_str(), filep.as_str(), "200000"];
    // The floor of any filter: one instruction, SECCOMP_RET_ALLOW (BPF_RET|BPF_K).
    let allow = base.join("allow.bpf");
    std::fs::write(
        &allow,
        [&1u32.to_le_bytes()[..], &0x06u16.to_le_bytes(), &[0, 0], &0x7fff_0000u32.to_le_bytes()].concat(),
    )?;
    let allowp = path(&allow);
    let allow_args = ["loop-open-seccomp", allowp.as_str(), filep.as_str(), "200000"];
    // The floor of any filter that looks at an argument: two instructions,
    // load the third argument (an open's flags; BPF_LD|BPF_W|BPF_ABS at
    // offset 32) and allow. The kernel cannot answer it from its action
    // cache for any syscall, so it runs on every call.
    let argread = base.join("argread.bpf");
    std::fs::write(
        &argread,
        [
            &2u32.to_le_bytes()[..],
            &0x20u16.to_le_bytes(),
            &[0, 0],
            &32u32.to_le_bytes(),
            &0x06u16.to_le_bytes(),
            &[0, 0],
            &0x7fff_0000u32.to_le_bytes(),
        ]
        .concat(),
    )?;
    let argreadp = path(&argread);
    let argread_args = ["loop-open-seccomp", argreadp.as_str(), filep.as_str(), "200000"];
    // strict without its [ask]/[deny] rules: no syscall gate filter.
    let nogate = base.join("nogate.toml");
    std::fs::write(&nogate, "extends = \"strict\"\n[ask]\ninherit = false\n[deny]\ninherit = false\n")?;
    // Its seccomp program alone, as for strict's above.
    let mut nogate_plan = policy::compile(&policy::Loader::builtin_only().load(&path(&nogate))?, &vars)?;
    nogate_plan.exec.allow.clone_from(&plan.exec.allow);
    nogate_plan.limits.max_procs = None;
    let nogate_stage = portcullis::sandbox::prepare(&nogate_plan, &features, &path_var, "bench", true)
        .map_err(|f| anyhow::anyhow!(f.message))?
        .stage;
    let nogate_openat = caches_openat(&nogate_stage);
    let nogate_bpf = base.join("nogate.bpf");
    write_programs(&nogate_bpf, &nogate_stage)?;
    let nogate_bpfp = path(&nogate_bpf);
    let nogate_seccomp_args = ["loop-open-seccomp", nogate_bpfp.as_str(), filep.as_str(), "200000"];
    let mut nogate_run = vec![binp.clone(), s("run"), s("--profile"), path(&nogate)];
    nogate_run.extend(sandboxed(&open_args).into_iter().skip(2));
    let open = per_op(
        &[
            direct(&open_args),
            direct(&floor_args),
            nogate_run,
            sandboxed(&open_args),
            direct(&seccomp_args),
            direct(&allow_args),
            direct(&argread_args),
            direct(&nogate_seccomp_args),
        ],
        &work,
        OP_RUNS,
    )?;
    let ppid = per_op(&[direct(&ppid_args), sandboxed(&ppid_args)], &work, OP_RUNS)?;
    let _ = std::fs::remove_dir_all(&base);

    // 4. The audit log.
    eprintln!("xtask bench: audit log");
    let sign = audit::bench_signing(30_000).map_err(|e| anyhow::anyhow!("{e}"))?;
    let verify = audit::bench_verify(4_000).map_err(|e| anyhow::anyhow!("{e}"))?;

    // 5. The MCP gate: tools/call round trips through the proxy, audit off and on.
    eprintln!("xtask bench: MCP gate");
    let mcp_off = portcullis::mcp::bench::measure(2000, 20_000, None)?;
    let audit_dir = std::env::temp_dir().join(format!("portcullis-bench-mcp-{}", std::process::id()));
    let mcp_on = portcullis::mcp::bench::measure(2000, 20_000, Some(&audit_dir))?;
    let _ = std::fs::remove_dir_all(&audit_dir);

    // 4. The report.
    let mut md = String::new();
    md.push_str("# Benchmarks\n\nWritten by `cargo xtask bench` (do not edit by hand; rerun it). ");
    md.push_str(&format!(
        "Measured on {} cores of `{}`, kernel {}, Landlock ABI {}; release build; {runs} interleaved rounds per table after 10 warm-up rounds. The machine is shared and noisy: compare rows of one table, not runs.\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model(),
        features.release,
        features.landlock_abi
    ));
    md.push_str("\n## Launch overhead (`/bin/true`)\n");
    md.push_str(&launch_md);
    md.push_str(LAUNCH_NOTES);
    md.push_str(&format!(
        "\n## Setup cost per launch (inside portcullis)\n\n| step | cost |\n|---|---:|\n| prepare: resolve the allowlist, build the Landlock ruleset ({} path rules), compile seccomp | {:.0} µs |\n| install in a forked child: capabilities, no_new_privs, Landlock restrict, {} ({} instructions) | {:.0} µs |\n",
        plan.landlock.paths.len(),
        prepare_us,
        match filter_sizes.len() {
            1 => "1 seccomp program".to_string(),
            n => format!("{n} seccomp programs"),
        },
        filter_sizes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" + "),
        install_us
    ));
    md.push_str(&syscall_table(&open, &ppid, nogate_openat));
    md.push_str(&cache);
    md.push_str(FILTER_NOTES);
    md.push_str(&format!(
        "\n## Audit log ({} groups of {} records committed durably to one log, each beside as many raw signatures on one core, alternating which goes first)\n\n| measure | figure | target |\n|---|---:|---|\n| signed records per second, durable, whole run (open and closing checkpoint included) | {:.0} | |\n| raw ed25519 signatures per second, one core, all rounds | {:.0} | |\n| ratio of the totals | {:.2}x | |\n| ratio within a group (durable / raw beside it), median over groups (lowest..highest) | {:.2}x ({:.2}..{:.2}) | at least 0.9x |\n| one `append` (mask, canonical encoding, SHA-256; no I/O) | {:.1} µs | |\n| `audit verify`, batch signature verification (a log of 4,000 records, 15 rounds) | {:.0} records/s | |\n| `audit verify --strict`, one by one, rounds alternating with batch | {:.0} records/s | |\n| speed-up of batch verification, median over rounds (lowest..highest) | {:.2}x ({:.2}..{:.2}) | at least 2x |\n\nSHA-256 runs in software on this CPU (no SHA extensions); the `sha2` crate uses them where present.\n",
        sign.rounds,
        sign.batch,
        sign.records_per_sec,
        sign.raw_signatures_per_sec,
        sign.records_per_sec / sign.raw_signatures_per_sec,
        sign.ratio_median,
        sign.ratio_low,
        sign.ratio_high,
        sign.append_us,
        verify.batch_per_sec,
        verify.one_by_one_per_sec,
        verify.speedup_median,
        verify.speedup_low,
        verify.speedup_high
    ));
    md.push_str(&format!(
        "\n## MCP gate (`run --mcp`): a tools/call and its result through the proxy, against an in-process echo server\n\n2,000 round trips of 1 KiB (200 of 1 MiB) each way, direct, through a raw line relay and through the proxy, alternating in 20 chunks.\n\nAudit off:\n\n{}\nAudit on (each call a signed record, group-committed):\n\n{}\n{}",
        mcp_off.table(),
        mcp_on.table(),
        mcp_on.verdict()
    ));
    let us = |ns: f64| ns / 1000.0;
    md.push_str(&format!(
        "\n## Syscall gate (seccomp user notification), 100,000 timed calls each\n\n| what | p50 | p99 | mean | target |\n|---|---:|---:|---:|---|\n\
| getppid, no filter | {:.2} µs | {:.2} µs | {:.2} µs | |\n\
| getppid parked, bare responder (receive, answer): the floor | {:.2} µs | {:.2} µs | {:.2} µs | |\n\
| getppid parked, the gate decides (ask rule, session grant: no human) | {:.2} µs | {:.2} µs | {:.2} µs | p50 ≤ 1.3x floor ({:.2}x), p99 ≤ 3x floor ({:.2}x) |\n\
| open(O_WRONLY\\|O_APPEND)+close, no filter | {:.2} µs | {:.2} µs | {:.2} µs | |\n\
| the same open through the gate (resolve, look for git directories above it, decide, open in the confined thread, ADDFD) | {:.2} µs | {:.2} µs | {:.2} µs | |\n\n\
Decisions per second, one sandbox calling back to back: {:.0} (target: at least 100,000). \
SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP is set where the kernel has it (6.6+). \
Policy-allowed operations write no audit record; denials are group-committed, asks are durable before the answer is acted on.\n",
        us(gate.bare_getppid.p50), us(gate.bare_getppid.p99), us(gate.bare_getppid.mean),
        us(gate.floor.p50), us(gate.floor.p99), us(gate.floor.mean),
        us(gate.gate.p50), us(gate.gate.p99), us(gate.gate.mean),
        gate.gate.p50 / gate.floor.p50, gate.gate.p99 / gate.floor.p99,
        us(gate.open_bare.p50), us(gate.open_bare.p99), us(gate.open_bare.mean),
        us(gate.open_gate.p50), us(gate.open_gate.p99), us(gate.open_gate.mean),
        1e9 / gate.gate.mean,
    ));
    md.push_str(&gate_audit_table(&gate));
    std::fs::write(root.join("BENCHMARKS.md"), &md)?;
    print!("{md}");
    Ok(())
}

const LAUNCH_NOTES: &str = "
What a portcullis launch does that bare fork+exec does not: load and compile
the profile (a built-in one is embedded already parsed, as JSON made at
build time: its TOML took about 0.2 ms to parse), build the Landlock ruleset (one O_PATH open per rule), compile
the seccomp program. The binary skips Rust's own start-up (a read of
/proc/self/maps and an alternate signal stack for every thread: 0.12 ms);
the C library's start-up remains (on this virtual machine its CPU
feature and cache probes, `cpuid` instructions the hypervisor traps,
took about 0.2 ms of every exec, bare `/bin/true`'s included). Before any of it, while the process is still one
thread (the clone then copies least), the main thread clones the sandbox's
init into new user and PID namespaces; init writes its id maps, makes its
own IPC and mount namespaces (unshare: their cost, mostly copying the
mount table, is init's, not the main thread's), mounts a private /proc and
waits for its configuration. Meanwhile, on the other CPU, the thread that
later passes signals on to the sandbox makes the private temp dir, looks up
where the sandbox's cgroups can be made (as root, and makes its pids
cgroup there: every built-in profile sets max_procs), asks the kernel whether
Landlock's denials can be read (first: the kernel replies from a thread it
starts per reply, which the request waits for), joins the kernel's audit stream and places the canary, tells
the command (once there is one) whether its denials are read, opens and
checks the signed audit log, and looks up the files no
rule may reach. The scheduler here
queued a new thread behind its creator for over a millisecond while the
other CPU idled, so that thread is moved off its creator's CPU when it
starts. Once the sandbox is prepared, the main thread sends init its
configuration over a socket (the ruleset and the cgroup's fds, the seccomp
programs, the limits, the command line and environment; read in place,
nothing allocated) and moves it off its own CPU. The ruleset is sent
before its path rules are in: the main thread adds them (an O_PATH open
and a rule per path, about a quarter of a millisecond) while init forks
the command straight into its cgroup where that is cgroup v2 (elsewhere it
starts it in its own memory, clone CLONE_VM: no page tables copied) and
the command readies itself. The command drops its capabilities, sets
no_new_privs and installs its seccomp program at once (the kernel converts
and compiles the program and fills its action cache while the path rules
go in), and restricts itself with Landlock once it is told, in one byte,
whether the kernel's reports are read; that byte goes only when the other
thread knows (before it opens the log) and the path rules are in (Landlock
takes the rules a ruleset holds when a process restricts itself). A
profile whose program would refuse or park a call the command makes on
its way to exec keeps the program for last. Then it waits, while the
main thread resolves the gate's rule paths, checks that no rule reaches
the log, writes the launch record and gives the go-ahead to exec. The command takes back its CPUs and
execs; meanwhile the main thread starts the kernel-audit reader's thread
(what the kernel reports before it reads waits on its socket), then fsyncs the launch record while the command runs,
then waits for it, polling the gate's listener beside its signals: the
syscall gate's threads start only when the sandbox parks a syscall (what
it parks waits in the kernel meanwhile), so `/bin/true` under strict
starts none. Init sends the command's exit status up its socket before
its own exit; once the gate's listener has hung up too (every process of
the sandbox is gone), the main thread goes on with that status (init is
reaped later) and asks the kernel-audit reader to stop: the asker itself
sends the marker after which nothing of this sandbox can be reported and
asks the kernel for its count of dropped records, while the reader wakes
(with a gate running, its server thread asks, once its acting thread has
stopped, and closes the gate's records). The reader's thread is stopped
between two of its wake-ups and joined (it looks for the marker without
sleeping, and hands over what it has not read), the log's lock is taken,
and portcullis exits with the command's status: a finisher that shares its
memory (clone CLONE_VM) reads the rest of the kernel's reports (the marker,
the count of dropped records: a few tenths of a millisecond), writes their
records and the exit record, fsyncs them, writes the signed checkpoint,
removes the temp dir and cgroups and tears the memory down, holding the
log's lock throughout (readers and the next run wait for it). Init lends
its mount namespace to the supervisor, whose finisher closes it: the
namespace's teardown waits for an RCU grace period, which no longer sits
between the command's end and the caller's status. The wall times above
end when the caller has the status; each launch's CPU time includes its
finisher's, and the next launch starts once it is done. As root,
`max_procs` (512 in strict) needs a pids cgroup, because the kernel never
applies RLIMIT_NPROC to uid 0; it is joined through cgroup v1's `tasks`
file, which (unlike `cgroup.procs`) does not wait for an RCU grace period.
On cgroup v2 (not this host's pids controller) a move through
`cgroup.procs` waited 5.7 to 15.7 ms here, so from Linux 5.7 the command
is cloned straight into the cgroup (clone3 CLONE_INTO_CGROUP) instead:
about the cost of a plain fork. Unprivileged, RLIMIT_NPROC in the
sandbox's own user namespace does the same job. `PORTCULLIS_TIMING=1 portcullis run ...` prints where the time of
one launch goes (the timeline table above).

The binary is linked statically (`.cargo/config.toml`): a dynamically
linked build spent about a millisecond more per launch here (A/B, 150
interleaved launches: 10.79 against 9.69 ms) in the loader, in resolving
symbols, and in mapping, forking and tearing down the shared libraries.

The CPU columns are the CPU time of the launcher and of every process it
started, read from a cgroup v1 `cpuacct` group the bench joins for the
launches (`getrusage` would miss processes their parent never waits for).
Where a row's CPU time is close to its wall time (as on the 2-core shared
host these notes were written on), the launch is CPU-bound: running steps
on two threads at once hides little of it. The `unshare` row is a reference, not a peer: util-linux creating the
same four namespaces and a private /proc, and nothing else (no Landlock,
seccomp, capabilities, cgroup, audit log or gate).
";

const FILTER_NOTES: &str = "
## How the filters are laid out, and why

- One seccomp program, built in parts by purpose and joined so that a
  part that allows falls through to the next. The first part checks the
  architecture (i386 and x32 syscalls kill the process) and then finds the
  unconditional denies by binary search over the syscall number, one
  instruction per syscall (two per stretch of consecutive syscalls with the
  same answer, as the mount family's), which jumps to a return shared by its
  block of up to 80 (EPERM, or ENOSYS for `clone3`). The same search also
  names every syscall a later part checks or parks, which goes on to that
  part; every other syscall is allowed there and then, without walking the
  later parts. The second is seccompiler's, for the syscalls whose arguments are checked (`socket`,
  `clone`, `ioctl`, `personality`, `memfd_create`, `execveat`,
  `socketpair`, and with TCP allowed `sendto`/`sendmsg`/`sendmmsg`/`listen`).
  The last is the approval filter, for what a profile's ask and deny rules
  park (strict: opens for writing, and every call that creates, renames or
  removes a name); the program is attached with its listener. The parts
  come in order of strictness, so the first that does not allow gives the
  answer the kernel gave when they were three stacked programs (a unit test
  compares the two for every syscall of every shipped profile).
- Why not seccompiler for everything: it emits one linear chain sorted by
  syscall number, and attaching a filter makes the kernel emulate it once per
  syscall number to build its action cache, so install time grows with
  (chain length) x (number of syscalls). One seccompiler program for the
  whole list measured ~650 µs to install. Measured here with synthetic
  programs: each instruction on the way of every syscall number costs about
  0.7 µs of install, each instruction of the program about 0.2 µs. Under
  strict, the ~360 numbers no part names now stop after at most 24
  instructions (the architecture check, the straight hops, the search);
  they walked every part before (63), and a unit test holds them to the
  search. Each attached program also costs a fixed ~70 µs here, and a
  syscall the action cache cannot answer runs every attached program:
  hence one program rather than one per purpose.
- Every part is default-allow: every syscall without argument rules
  (`read`, `close`, `getppid`, ...) gets the same answer whatever its
  arguments, so the kernel's seccomp action cache answers it from a bitmap
  without running BPF. What remains is the fixed cost of the seccomp entry
  path, visible on a syscall as cheap as `getppid`. `openat` is the
  exception under strict: the approval filter looks at its flags. It (and
  `open`) jumps from the architecture check straight to the approval
  filter, where no earlier part has a rule for it: 13 instructions run for
  strict's `openat` instead of 44.
- Seccomp has a floor: with any filter attached, even one the cache
  answers for every syscall, each syscall takes the kernel's slower entry
  path (`getppid` above). A syscall the cache cannot answer adds the run
  of a program, whatever its length: in a C loop of 60 interleaved rounds
  (wall and thread CPU time agreed to 0.1%), bare 3098 ns, a filter that
  allows everything +2.9%, a two-instruction filter that loads `openat`'s
  flags +5.6%, strict's program +5.6%, strict's program attached twice
  +6.8%. strict's figure is that of the cheapest filter that can tell an
  open for writing from one for reading; on this host it sits at the 5%
  target, within the run-to-run noise. This host's kernel runs with
  `spectre_v2: Retpolines` and `spec_rstack_overflow: Safe RET`, which
  make every indirect call and return in the kernel dearer.
";
