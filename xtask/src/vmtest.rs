//! `cargo xtask vm-test [--kernel 6.1|6.12|6.12-nolandlock|host|all] [--timeout SECS] [--profile NAME] [--sabotage]`
//!
//! Builds static `portcullis`, `portcullis-probe` and `portcullis-vmsuite`,
//! fetches the Debian kernels of vm-tests/kernels.toml, packs a busybox
//! initramfs around them, boots each kernel under QEMU (KVM when it works,
//! else TCG), runs the policy suite in the guest and reads its results from
//! the serial console. The host kernel runs the same suite directly. Prints a
//! table; exits non-zero on any failed check, boot failure or timeout.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use crate::{apt_install, have, root, run};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Kernels {
    kernel: Vec<KernelSpec>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct KernelSpec {
    name: String,
    package: String,
    abi: i64,
    /// More kernel command line (e.g. an `lsm=` without Landlock).
    #[serde(default)]
    append: Option<String>,
}

/// One line of the result table: a fresh one per kernel and per boot attempt.
struct Row {
    kernel: String,
    abi: String,
    pass: usize,
    fail: usize,
    secs: f64,
    note: String,
}

impl Row {
    fn new(kernel: &str) -> Row {
        Row { kernel: kernel.into(), abi: "?".into(), pass: 0, fail: 0, secs: 0.0, note: String::new() }
    }
}

const TARGET: &str = "x86_64-unknown-linux-gnu";
/// Note left by `follow` when KVM fails mid-boot (nested virtualisation often
/// opens /dev/kvm and then cannot run the guest): the kernel is rebooted under TCG.
const KVM_BROKEN: &str = "KVM failed";
/// Note left by `follow` when the guest did not reach /init in time.
const NO_BOOT: &str = "did not boot in time";
/// How long a guest may take to reach /init: seconds under KVM (which, when
/// nested, sometimes hangs without a word), about 5 s under TCG here.
const BOOT_KVM: Duration = Duration::from_secs(45);
const BOOT_TCG: Duration = Duration::from_secs(180);

fn opt<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).map(String::as_str)
}

fn sh(cmd: &mut Command) -> Result<String> {
    let out = cmd.output().with_context(|| format!("cannot run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Static binaries for the guest (static-pie glibc: no loader, no libraries).
fn build_static(sabotage: bool) -> Result<PathBuf> {
    let mut c = Command::new("cargo");
    c.args(["build", "--quiet", "--profile", "vm", "--target", TARGET, "-p", "portcullis", "--bins"]);
    if sabotage {
        c.args(["--features", "sabotage-landlock-net", "--target-dir", "target/sabotage"]);
    }
    c.env("RUSTFLAGS", "-C target-feature=+crt-static");
    run(&mut c)?;
    let base = if sabotage { "target/sabotage" } else { "target" };
    Ok(root().join(base).join(TARGET).join("vm"))
}

/// Downloads (once) the newest Debian package matching `spec.package` and
/// returns the path of its vmlinuz.
fn fetch_kernel(spec: &KernelSpec, cache: &Path) -> Result<PathBuf> {
    // One download per package, whatever the command lines booted with it.
    let first = |k: &KernelSpec| k.package == spec.package;
    let kernels: Option<Kernels> =
        std::fs::read_to_string(root().join("vm-tests/kernels.toml")).ok().and_then(|t| toml::from_str(&t).ok());
    let name = kernels.and_then(|k| k.kernel.into_iter().find(first)).map_or(spec.name.clone(), |k| k.name);
    let dir = cache.join(name);
    if let Some(k) = find_vmlinuz(&dir) {
        return Ok(k);
    }
    std::fs::create_dir_all(&dir)?;
    let search = |c: &mut Command| sh(c.args(["search", "--names-only", &spec.package]));
    let mut list = search(&mut Command::new("apt-cache"))?;
    if list.trim().is_empty() {
        let _ = Command::new("apt-get").args(["update", "-q"]).status();
        list = search(&mut Command::new("apt-cache"))?;
    }
    let mut names: Vec<&str> = list.lines().filter_map(|l| l.split_whitespace().next()).collect();
    // Newest last: compare the numeric runs of the names.
    names.sort_by_key(|n| {
        n.split(|c: char| !c.is_ascii_digit()).filter_map(|d| d.parse::<u64>().ok()).collect::<Vec<_>>()
    });
    let pkg =
        *names.last().with_context(|| format!("no Debian package matches {} (apt-cache search)", spec.package))?;
    eprintln!("xtask vm-test: fetching {pkg}");
    sh(Command::new("apt-get").args(["download", "-q", pkg]).current_dir(&dir))?;
    let deb = std::fs::read_dir(&dir)?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .context("apt-get download left no .deb")?;
    sh(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(dir.join("root")))?;
    let _ = std::fs::remove_file(&deb);
    find_vmlinuz(&dir).context("the package holds no boot/vmlinuz-*")
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir.join("root/boot"))
        .ok()?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("vmlinuz-")))
}

/// Packs the initramfs: busybox, the static binaries, stand-ins for node and
/// python3 (what is tested is the policy, not the runtimes), a passwd file.
fn pack_initramfs(bins: &Path, out: &Path) -> Result<()> {
    let tree = out.with_extension("d");
    let _ = std::fs::remove_dir_all(&tree);
    for d in ["bin", "usr/bin", "etc", "root", "tmp", "proc", "sys", "dev", "run"] {
        std::fs::create_dir_all(tree.join(d))?;
    }
    let busybox =
        ["/bin/busybox", "/usr/bin/busybox"].into_iter().find(|p| Path::new(p).exists()).context("busybox")?;
    std::fs::copy(busybox, tree.join("bin/busybox"))?;
    std::os::unix::fs::symlink("busybox", tree.join("bin/sh"))?;
    for b in ["portcullis", "portcullis-probe", "portcullis-vmsuite"] {
        std::fs::copy(bins.join(b), tree.join("usr/bin").join(b))?;
    }
    // Commands the shipped profiles allow; what their [[expect]] entries
    // check is that exec is allowed or denied, not what the program does.
    for stand_in in ["node", "python3", "git"] {
        std::fs::copy(bins.join("portcullis-probe"), tree.join("usr/bin").join(stand_in))?;
    }
    // Files the shipped profiles promise to let their servers read.
    std::fs::create_dir_all(tree.join("usr/share/zoneinfo"))?;
    if Path::new("/usr/share/zoneinfo/UTC").exists() {
        std::fs::copy("/usr/share/zoneinfo/UTC", tree.join("usr/share/zoneinfo/UTC"))?;
    }
    std::fs::write(
        tree.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/sh\n",
    )?;
    std::fs::write(tree.join("etc/group"), "root:x:0:\nnogroup:x:65534:\n")?;
    std::fs::copy(root().join("vm-tests/init.sh"), tree.join("init"))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(tree.join("init"), std::fs::Permissions::from_mode(0o755))?;
    std::fs::set_permissions(tree.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    let list = sh(Command::new("find").arg(".").current_dir(&tree))?;
    let mut cpio = Command::new("cpio")
        .args(["-o", "-H", "newc", "--quiet"])
        .current_dir(&tree)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cpio")?;
    let mut stdin = cpio.stdin.take().context("cpio stdin")?;
    let feeder = std::thread::spawn(move || stdin.write_all(list.as_bytes()));
    let mut gz = Command::new("gzip")
        .arg("-1")
        .stdin(cpio.stdout.take().context("cpio stdout")?)
        .stdout(std::fs::File::create(out)?)
        .spawn()?;
    feeder.join().map_err(|_| anyhow::anyhow!("cpio feeder panicked"))??;
    if !cpio.wait()?.success() || !gz.wait()?.success() {
        bail!("packing the initramfs failed");
    }
    Ok(())
}

fn kvm_works() -> bool {
    Command::new("qemu-system-x86_64")
        .args(["-accel", "kvm", "-machine", "none", "-nographic", "-S", "-monitor", "none", "-serial", "none"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .and_then(|mut c| {
            std::thread::sleep(Duration::from_millis(500));
            let alive = c.try_wait()?.is_none();
            let _ = c.kill();
            let _ = c.wait();
            Ok(alive)
        })
        .unwrap_or(false)
}

/// Feeds a child's output lines, prints progress, and fills a result row.
/// `boot_deadline`: when the guest must have said VMTEST BOOTED.
fn follow(
    label: &str,
    lines: mpsc::Receiver<String>,
    deadline: Instant,
    boot_deadline: Option<Instant>,
    row: &mut Row,
    log: &mut std::fs::File,
) -> bool {
    let mut booted = false;
    let mut done = false;
    loop {
        if !booted && boot_deadline.is_some_and(|d| Instant::now() >= d) {
            row.note = NO_BOOT.into();
            return false;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            row.note = format!("timed out ({})", if booted { "suite unfinished" } else { "no boot" });
            return false;
        }
        let Ok(line) = lines.recv_timeout(left.min(Duration::from_secs(1))) else {
            if lines.try_recv().is_err() && done {
                return true;
            }
            continue;
        };
        let _ = writeln!(log, "{line}");
        if line.contains("VMTEST BOOTED") {
            booted = true;
        }
        if let Some(rest) = line.strip_prefix("RESULT ") {
            if rest.starts_with("PASS") {
                row.pass += 1;
            } else {
                row.fail += 1;
                eprintln!("\n  [{label}] {rest}");
            }
            eprint!("\r  [{label}] {} checks, {} failed   ", row.pass + row.fail, row.fail);
        }
        if let Some(rest) = line.split("SUITE START ").nth(1) {
            row.abi = rest.split("abi=").nth(1).unwrap_or("?").trim().to_string();
            booted = true;
        }
        if line.contains("SUITE DONE") || line.contains("VMTEST EXIT") {
            done = true;
        }
        if line.contains("VMTEST EXIT") {
            eprintln!();
            return true;
        }
        if line.contains("Kernel panic") {
            row.note = "kernel panic".into();
            return false;
        }
        if line.contains("KVM internal error") {
            row.note = KVM_BROKEN.into();
            return false;
        }
    }
}

fn spawn_lines(cmd: &mut Command) -> Result<(std::process::Child, mpsc::Receiver<String>)> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("{cmd:?}"))?;
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().context("stdout")?) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().context("stderr")?),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines().map_while(Result::ok) {
                // The serial console ends lines with \r.
                if tx.send(line.trim_end_matches('\r').to_string()).is_err() {
                    break;
                }
            }
        });
    }
    Ok((child, rx))
}

pub fn vm_test(args: &[String]) -> Result<()> {
    let which = opt(args, "--kernel").unwrap_or("all");
    let timeout: u64 = opt(args, "--timeout").map(str::parse).transpose()?.unwrap_or(900);
    let profile = opt(args, "--profile");
    let sabotage = args.iter().any(|a| a == "--sabotage");
    let kernels: Kernels = toml::from_str(&std::fs::read_to_string(root().join("vm-tests/kernels.toml"))?)?;
    let selected: Vec<KernelSpec> =
        kernels.kernel.iter().filter(|k| which == "all" || which == k.name).cloned().collect();
    if selected.is_empty() && which != "host" {
        bail!("--kernel {which}: not in vm-tests/kernels.toml (or `host`, `all`)");
    }
    let mut need = Vec::new();
    if !have("busybox") {
        need.push("busybox-static");
    }
    if !selected.is_empty() {
        if !have("qemu-system-x86_64") {
            need.push("qemu-system-x86");
        }
        if !have("cpio") {
            need.push("cpio");
        }
    }
    if !need.is_empty() {
        apt_install(&need).context("vm-test needs these packages")?;
    }
    let bins = build_static(sabotage)?;
    let cache = root().join("target/vm-cache");
    std::fs::create_dir_all(&cache)?;
    let mut log = std::fs::File::create(cache.join("last-run.log"))?;
    let mut rows = Vec::new();

    if which == "all" || which == "host" {
        let t = Instant::now();
        let mut row = Row::new("host");
        eprintln!("xtask vm-test: host kernel, directly");
        // Through sh, so the suite's exit status arrives as the guest's does.
        let mut c = Command::new("sh");
        c.arg("-c").arg(format!(
            "{} {} {}{}; echo VMTEST EXIT $?",
            bins.join("portcullis-vmsuite").display(),
            bins.join("portcullis").display(),
            bins.join("portcullis-probe").display(),
            profile.map(|p| format!(" --only-profile {p}")).unwrap_or_default()
        ));
        let (mut child, lines) = spawn_lines(&mut c)?;
        let ok = follow("host", lines, Instant::now() + Duration::from_secs(timeout), None, &mut row, &mut log);
        let _ = child.kill();
        let _ = child.wait();
        if !ok && row.note.is_empty() {
            row.note = "suite did not finish".into();
        }
        row.secs = t.elapsed().as_secs_f64();
        rows.push(row);
    }

    let mut accel = if kvm_works() { "kvm" } else { "tcg" };
    let initrd = cache.join(if sabotage { "initramfs-sabotage.cpio.gz" } else { "initramfs.cpio.gz" });
    if !selected.is_empty() {
        pack_initramfs(&bins, &initrd)?;
    }
    for spec in &selected {
        let t = Instant::now();
        let mut row = Row::new(&spec.name);
        let kernel = match fetch_kernel(spec, &cache) {
            Ok(k) => k,
            Err(e) => {
                row.note = format!("cannot fetch: {e:#}");
                rows.push(row);
                continue;
            }
        };
        let mut append = format!("console=ttyS0 panic=-1 quiet rdinit=/init portcullis.abi={}", spec.abi);
        if let Some(more) = &spec.append {
            append.push(' ');
            append.push_str(more);
        }
        if let Some(p) = profile {
            append.push_str(&format!(" portcullis.profile={p}"));
        }
        let mut early_panics = 0;
        let ok = loop {
            eprintln!("xtask vm-test: booting {} ({accel})", kernel.display());
            let mut q = Command::new("qemu-system-x86_64");
            // One vCPU under TCG: with two, the kernel's live text patching
            // (int3-based) races in QEMU's multi-threaded TCG and the guest
            // sometimes oopses at boot.
            let smp = if accel == "tcg" { "1" } else { "2" };
            q.args([
                "-accel",
                accel,
                "-machine",
                "q35",
                "-cpu",
                "max",
                "-m",
                "1024",
                "-smp",
                smp,
                "-nographic",
                "-no-reboot",
            ]);
            q.arg("-kernel").arg(&kernel).arg("-initrd").arg(&initrd).args(["-append", &append]);
            let (mut child, lines) = spawn_lines(&mut q)?;
            let boot = Instant::now() + if accel == "kvm" { BOOT_KVM } else { BOOT_TCG };
            let ok = follow(
                &spec.name,
                lines,
                Instant::now() + Duration::from_secs(timeout),
                Some(boot),
                &mut row,
                &mut log,
            );
            let _ = child.kill();
            let _ = child.wait();
            // A panic before /init ran says nothing about portcullis: boot
            // once more, and count a second one as the failure it is.
            if row.note == "kernel panic" && row.abi == "?" && row.pass + row.fail == 0 && early_panics == 0 {
                early_panics += 1;
                eprintln!("xtask vm-test: the guest kernel panicked while booting; booting it once more");
                row = Row::new(&spec.name);
                continue;
            }
            if (row.note == KVM_BROKEN || row.note == NO_BOOT) && accel == "kvm" {
                eprintln!("xtask vm-test: KVM does not run this guest ({}); using TCG from now on", row.note);
                accel = "tcg";
                row = Row::new(&spec.name);
                continue;
            }
            break ok;
        };
        if !ok && row.note.is_empty() {
            row.note = "the guest stopped before the suite finished".into();
        }
        if row.pass + row.fail == 0 && row.note.is_empty() {
            row.note = "booted, but no results".into();
        }
        row.secs = t.elapsed().as_secs_f64();
        rows.push(row);
    }

    println!(
        "\n| kernel | Landlock ABI | checks | passed | failed | time | note |\n|---|---:|---:|---:|---:|---:|---|"
    );
    let mut bad = false;
    for r in &rows {
        let failed = r.fail > 0 || !r.note.is_empty() || r.pass == 0;
        bad |= failed;
        println!(
            "| {} | {} | {} | {} | {} | {:.0} s | {} |",
            r.kernel,
            r.abi,
            r.pass + r.fail,
            r.pass,
            r.fail,
            r.secs,
            if failed && r.note.is_empty() { "FAILED" } else { &r.note }
        );
    }
    println!("(guest output: {})", cache.join("last-run.log").display());
    if bad {
        bail!("vm-test failed");
    }
    Ok(())
}
