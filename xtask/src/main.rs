//! `cargo xtask <task>`: the project's own automation.
//!
//! * `ci`    — everything CI checks: formatting, clippy, tidy rules, all tests.
//! * `bench` — launch and syscall overhead side by side with bare and bwrap;
//!   writes BENCHMARKS.md.
//! * `tidy`  — repository rules (also run as a test by `ci`).
//! * `vm-test` — the policy suite on every kernel of vm-tests/kernels.toml
//!   under QEMU, and on the host.

mod bench;
mod ci;
mod tidy;
mod vmtest;

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("ci") => ci::ci(),
        Some("bench") => bench::bench(&args[1..]),
        Some("tidy") => tidy::tidy(),
        Some("vm-test") => vmtest::vm_test(&args[1..]),
        _ => {
            eprintln!("usage: cargo xtask <ci | bench [--runs N] | tidy | vm-test [--kernel 6.1|6.12|host|all] [--timeout SECS] [--profile NAME] [--sabotage]>");
            std::process::exit(2);
        }
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Runs a command in the workspace root, failing on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {cmd:?}");
    let status = cmd.current_dir(root()).status().with_context(|| format!("cannot start {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Whether `prog` is an executable on PATH.
pub fn have(prog: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .any(|p| std::fs::metadata(&p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false))
}

/// Installs Debian packages when root and they are missing.
pub fn apt_install(pkgs: &[&str]) -> Result<()> {
    if portcullis::sys::probe::ids().1 != 0 {
        bail!("missing packages {pkgs:?}: install them (apt-get install {})", pkgs.join(" "));
    }
    let install =
        |c: &mut Command| c.env("DEBIAN_FRONTEND", "noninteractive").status().map(|s| s.success()).unwrap_or(false);
    if !install(Command::new("apt-get").args(["install", "-y", "-q"]).args(pkgs)) {
        install(Command::new("apt-get").args(["update", "-q"]));
        if !install(Command::new("apt-get").args(["install", "-y", "-q"]).args(pkgs)) {
            bail!("apt-get install {} failed", pkgs.join(" "));
        }
    }
    Ok(())
}
