//! `cargo xtask bench`: launch overhead and syscall overhead, measured side by
//! side in one run (bare, portcullis, bwrap, and other peers where installed),
//! written to BENCHMARKS.md. Nothing here asserts a time: the numbers are for
//! people to read.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{apt_install, have, root, run};

struct Stats {
    median_us: f64,
    mean_us: f64,
    p90_us: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Stats { median_us: v[n / 2], mean_us: v.iter().sum::<f64>() / n as f64, p90_us: v[(n * 9) / 10] }
}

/// Wall time of `runs` sequential launches of `argv` (after 10 warm-ups).
fn launch(argv: &[String], dir: &Path, runs: usize) -> Result<Stats> {
    let mut times = Vec::with_capacity(runs);
    for i in 0..runs + 10 {
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
        if i >= 10 {
            times.push(dt);
        }
    }
    Ok(stats(times))
}

/// Median ns/op the probe reports over `reps` runs of `argv`.
fn per_op(argv: &[String], dir: &Path, reps: usize) -> Result<f64> {
    let mut v = Vec::new();
    for _ in 0..reps {
        let out = Command::new(&argv[0]).args(&argv[1..]).current_dir(dir).stdin(Stdio::null()).output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let ns: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("ns "))
            .with_context(|| format!("no timing from {argv:?}: {text} {}", String::from_utf8_lossy(&out.stderr)))?
            .trim()
            .parse()?;
        v.push(ns);
    }
    v.sort_by(|a, b| a.total_cmp(b));
    Ok(v[v.len() / 2])
}

fn s(x: &str) -> String {
    x.to_string()
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

pub fn bench(args: &[String]) -> Result<()> {
    let runs: usize = match args.iter().position(|a| a == "--runs") {
        Some(i) => args.get(i + 1).context("--runs N")?.parse()?,
        None => 200,
    };
    run(Command::new("cargo").args(["build", "--release", "--quiet", "-p", "portcullis"]))?;
    if !have("bwrap") {
        if let Err(e) = apt_install(&["bubblewrap"]) {
            eprintln!("xtask bench: bwrap unavailable: {e}");
        }
    }
    let root = root();
    let bin = root.join("target/release/portcullis");
    let probe = root.join("target/release/portcullis-probe");
    let work = std::env::temp_dir().join(format!("portcullis-bench-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let file = work.join("file.txt");
    std::fs::write(&file, "x".repeat(1024))?;
    let (binp, probep, filep, workp) = (path(&bin), path(&probe), path(&file), path(&work));

    // 1. Launch overhead of /bin/true.
    let t_true = std::fs::canonicalize("/bin/true")?;
    let true_s = path(&t_true);
    let mut rows: Vec<(String, Option<Stats>, String)> = Vec::new();
    eprintln!("xtask bench: launch overhead, {runs} runs each");
    rows.push(("bare `/bin/true`".into(), Some(launch(std::slice::from_ref(&true_s), &work, runs)?), String::new()));
    let pc =
        vec![binp.clone(), s("run"), s("--profile"), s("strict"), s("--exec"), true_s.clone(), s("--"), true_s.clone()];
    rows.push(("`portcullis run --profile strict`".into(), Some(launch(&pc, &work, runs)?), String::new()));
    if have("bwrap") {
        let mut bw = vec![
            s("bwrap"),
            s("--unshare-all"),
            s("--die-with-parent"),
            s("--new-session"),
            s("--ro-bind"),
            s("/usr"),
            s("/usr"),
        ];
        for d in ["/bin", "/lib", "/lib64", "/etc"] {
            if Path::new(d).exists() {
                bw.extend([s("--ro-bind"), s(d), s(d)]);
            }
        }
        bw.extend([
            s("--proc"),
            s("/proc"),
            s("--dev"),
            s("/dev"),
            s("--bind"),
            workp.clone(),
            workp.clone(),
            s("--chdir"),
            workp.clone(),
            true_s.clone(),
        ]);
        rows.push(("`bwrap --unshare-all` (same paths)".into(), Some(launch(&bw, &work, runs)?), String::new()));
    } else {
        rows.push(("`bwrap --unshare-all`".into(), None, "not installed".into()));
    }
    for peer in ["nono", "firejail", "syd"] {
        if !have(peer) {
            rows.push((
                format!("`{peer}`"),
                None,
                "not installed here (not in Debian's or the registries' reach)".into(),
            ));
        }
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
    let path_var = std::env::var_os("PATH").unwrap_or_default();
    let t = Instant::now();
    let n_prep = 200;
    let mut prepared = None;
    for _ in 0..n_prep {
        prepared = Some(
            portcullis::sandbox::prepare(&plan, &features, &path_var, "bench", true)
                .map_err(|f| anyhow::anyhow!(f.message))?,
        );
    }
    let prepare_us = t.elapsed().as_secs_f64() * 1e6 / n_prep as f64;
    let prepared = prepared.expect("ran");
    let filter_sizes: Vec<usize> = prepared.stage.filters.iter().map(Vec::len).collect();
    let (fork_ns, confine_ns) = portcullis::sys::stage::time_confine(&prepared.stage, 500);
    let install_us = (confine_ns as f64 - fork_ns as f64) / 1000.0;

    // 3. Syscall overhead.
    eprintln!("xtask bench: syscall overhead");
    let sandboxed = |a: &[&str]| {
        let mut v = vec![binp.clone(), s("run"), s("--exec"), probep.clone(), s("--"), probep.clone()];
        v.extend(a.iter().map(|x| x.to_string()));
        v
    };
    let bare = |a: &[&str]| {
        let mut v = vec![probep.clone()];
        v.extend(a.iter().map(|x| x.to_string()));
        v
    };
    let open_args = ["loop-open", filep.as_str(), "200000"];
    let ppid_args = ["loop-getppid", "2000000"];
    let open_bare = per_op(&bare(&open_args), &work, 7)?;
    let open_sb = per_op(&sandboxed(&open_args), &work, 7)?;
    let ppid_bare = per_op(&bare(&ppid_args), &work, 7)?;
    let ppid_sb = per_op(&sandboxed(&ppid_args), &work, 7)?;
    let _ = std::fs::remove_dir_all(&work);

    // 4. The table.
    let bare_med = rows[0].1.as_ref().map(|s| s.median_us).unwrap_or(0.0);
    let mut md = String::new();
    md.push_str("# Benchmarks\n\nWritten by `cargo xtask bench` (do not edit by hand; rerun it). ");
    md.push_str(&format!(
        "Measured on {} cores of `{}`, kernel {}, Landlock ABI {}; release build; {runs} sequential launches per row after 10 warm-ups. The machine is shared: compare rows of one run, not runs.\n\n",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        cpu_model(),
        features.release,
        features.landlock_abi
    ));
    md.push_str("## Launch overhead (`/bin/true`)\n\n| launcher | median | mean | p90 | added over bare (median) |\n|---|---:|---:|---:|---:|\n");
    for (name, st, note) in &rows {
        match st {
            Some(st) => md.push_str(&format!(
                "| {name} | {:.0} µs | {:.0} µs | {:.0} µs | {:.0} µs |\n",
                st.median_us,
                st.mean_us,
                st.p90_us,
                st.median_us - bare_med
            )),
            None => md.push_str(&format!("| {name} | — | — | — | {note} |\n")),
        }
    }
    let added = |i: usize| rows[i].1.as_ref().map(|s| s.median_us - bare_med);
    if let (Some(pc), Some(bw)) = (added(1), added(2)) {
        md.push_str(&format!(
            "\nportcullis adds {:.2}x of bwrap's added launch time (target: at most 0.6x).\n",
            pc / bw
        ));
    }
    md.push_str(&format!(
        "\n## Setup cost per launch (inside portcullis)\n\n| step | cost |\n|---|---:|\n| prepare: resolve allowlist, build the Landlock ruleset ({} path rules), compile seccomp | {:.0} µs |\n| install in the child: capabilities, no_new_privs, Landlock restrict, {} seccomp programs ({} instructions) | {:.0} µs |\n",
        plan.landlock.paths.len(),
        prepare_us,
        filter_sizes.len(),
        filter_sizes.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(" + "),
        install_us
    ));
    let pct = |sb: f64, b: f64| (sb - b) / b * 100.0;
    md.push_str(&format!(
        "\n## Syscall overhead (median of 7 runs, ns per iteration)\n\n| loop | bare | sandboxed | overhead |\n|---|---:|---:|---:|\n| open/read/close of a 1 KiB workspace file | {open_bare:.0} | {open_sb:.0} | {:+.1}% |\n| getppid | {ppid_bare:.0} | {ppid_sb:.0} | {:+.1}% |\n",
        pct(open_sb, open_bare),
        pct(ppid_sb, ppid_bare)
    ));
    md.push_str(FILTER_NOTES);
    std::fs::write(root.join("BENCHMARKS.md"), &md)?;
    print!("{md}");
    Ok(())
}

fn path(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

const FILTER_NOTES: &str = "
## How the filters are laid out, and why

- Three stacked seccomp programs, each with one purpose: a 7-instruction
  architecture filter (i386 and x32 syscalls kill the process), the EPERM deny
  list, and a one-rule ENOSYS program for `clone3`. seccompiler gives every
  filter a single match action, so one program per verdict is the natural cut.
- The deny lists are default-allow: every syscall without argument rules
  (`openat`, `read`, `close`, `getppid`, ...) gets the same answer from every
  program whatever its arguments, so the kernel's seccomp action cache
  answers it from a bitmap without running BPF. Only the syscalls with
  argument checks (`socket`, `clone`, `ioctl`, `personality`, `memfd_create`,
  `execveat`, `socketpair`) walk their chain.
- seccompiler emits one linear chain sorted by syscall number; keeping the
  unconditional list near 60 syscalls keeps installation well under a
  millisecond (see the install row).
";
