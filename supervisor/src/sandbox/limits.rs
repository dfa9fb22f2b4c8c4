//! Process and memory limits. A cgroup (v2, or the v1 controller where that is
//! what the machine mounts) binds root too; without one, rlimits inside the
//! sandbox's user namespace are the fallback, and `doctor` says which is used.

use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use policy::plan::LimitsPlan;

use super::report::Enforcement;
use crate::exit::Failure;

/// A cgroup controller directory this process could create children in.
#[derive(Clone, Debug, Serialize)]
pub struct CgroupController {
    pub controller: String,
    /// Our own cgroup in that hierarchy; children are created here.
    pub dir: PathBuf,
    pub v2: bool,
}

/// Finds our cgroup for `controller`, if we may create a child there.
pub fn find_controller(controller: &str) -> Option<CgroupController> {
    let [found] = find_controllers([controller]);
    found
}

/// [`find_controller`] for each of `controllers`, reading our cgroups and
/// the mount table once (the kernel formats every mount for each read).
pub fn find_controllers<const N: usize>(controllers: [&str; N]) -> [Option<CgroupController>; N] {
    let own = read_proc("/proc/self/cgroup");
    let mounts = read_proc("/proc/self/mountinfo");
    controllers.map(|c| match (&own, &mounts) {
        (Some(own), Some(mounts)) => controller_in(c, own, mounts),
        _ => None,
    })
}

/// A /proc file, which reports no size: read into room for a whole
/// mount table at once, where `read_to_string` starts with 32 bytes and
/// doubles, and the kernel formats the table again for every read.
fn read_proc(path: &str) -> Option<String> {
    use std::io::Read;
    let mut text = String::with_capacity(16 << 10);
    fs::File::open(path).ok()?.read_to_string(&mut text).ok()?;
    Some(text)
}

fn controller_in(controller: &str, own: &str, mounts: &str) -> Option<CgroupController> {
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (id, ctrls, path) = (parts.next()?, parts.next()?, parts.next()?);
        let v2 = id == "0" && ctrls.is_empty();
        if !v2 && !ctrls.split(',').any(|c| c == controller) {
            continue;
        }
        let mount = mounts.lines().find_map(|m| {
            let (pre, post) = m.split_once(" - ")?;
            let mut post = post.split_whitespace();
            let fstype = post.next()?;
            let _src = post.next()?;
            let opts = post.next().unwrap_or("");
            let point = pre.split_whitespace().nth(4)?;
            let fits =
                if v2 { fstype == "cgroup2" } else { fstype == "cgroup" && opts.split(',').any(|o| o == controller) };
            fits.then(|| PathBuf::from(point))
        })?;
        let dir = mount.join(path.trim_start_matches('/'));
        if v2 {
            // Usable only where the controller is delegated to our children.
            let sub = fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
            if !sub.split_whitespace().any(|c| c == controller) {
                continue;
            }
        }
        if nix::unistd::access(&dir, nix::unistd::AccessFlags::W_OK).is_err() {
            continue;
        }
        return Some(CgroupController { controller: controller.to_string(), dir, v2 });
    }
    None
}

/// Limits ready for the exec stage, and the cgroups to remove afterwards.
#[derive(Default)]
pub struct Applied {
    /// Files the stage joins by writing "0": v1 `tasks`, and v2's
    /// `cgroup.procs` where the sandbox cannot be born in its cgroup.
    pub cgroup_procs: Vec<OwnedFd>,
    /// The sandbox's v2 cgroup, when its init is forked straight into it
    /// (clone3 with CLONE_INTO_CGROUP) instead of joining by a write: its
    /// directory, and its `cgroup.procs` for where clone3 is refused.
    pub cgroup_v2: Option<(OwnedFd, OwnedFd)>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
    pub cgroups: Vec<PathBuf>,
}

/// How the sandbox's cgroup is entered.
enum Join {
    /// By the file that moves its writer (v1 `tasks`, v2 `cgroup.procs`).
    Write(OwnedFd),
    /// Born in it: the directory, for CLONE_INTO_CGROUP (and `cgroup.procs`).
    Born(OwnedFd, OwnedFd),
}

/// The directory of session `session`'s cgroup under `ctrl`.
fn cgroup_dir(ctrl: &CgroupController, session: &str) -> PathBuf {
    ctrl.dir.join(format!("portcullis-{session}"))
}

/// Makes the sandbox's cgroup directory under `ctrl` before the plan is
/// known (`run` does, on another thread, where the sandbox needs a cgroup
/// for max_procs: every built-in profile sets it). [`apply`] then writes
/// its limits, or has it removed with the sandbox's cgroups when the plan
/// wants none there.
pub fn premake(ctrl: &CgroupController, session: &str) -> Option<PathBuf> {
    let dir = cgroup_dir(ctrl, session);
    fs::create_dir(&dir).ok().map(|()| dir)
}

/// Makes the sandbox's cgroup under `ctrl` (unless it is `premade`) and
/// writes its limit `files`. `born`: the v2 sandbox is forked into it
/// rather than moved there.
fn make_cgroup(
    ctrl: &CgroupController,
    session: &str,
    files: &[(&str, String)],
    born: bool,
    premade: Option<&Path>,
) -> std::io::Result<(PathBuf, Join)> {
    let dir = cgroup_dir(ctrl, session);
    if premade != Some(dir.as_path()) {
        fs::create_dir(&dir)?;
    }
    let setup = || -> std::io::Result<Join> {
        for (name, value) in files {
            let p = dir.join(name);
            if p.exists() {
                fs::write(&p, value)?;
            }
        }
        // Moving a process: on v1 the `tasks` file moves just the calling
        // thread, which the kernel does without its global threadgroup
        // lock. v2's `cgroup.procs` takes that lock for writing, which waits
        // for an RCU grace period (most moves 5.7 to 15.7 ms measured here)
        // on every launch; a process forked into the cgroup (Linux 5.7)
        // takes it only for reading. v2 allows moving a lone thread only
        // inside one threaded subtree, so a move there goes through
        // `cgroup.procs`.
        let join = if ctrl.v2 { "cgroup.procs" } else { "tasks" };
        let procs: OwnedFd = fs::OpenOptions::new().write(true).open(dir.join(join))?.into();
        if ctrl.v2 && born {
            let d = fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(&dir)?;
            return Ok(Join::Born(d.into(), procs));
        }
        Ok(Join::Write(procs))
    };
    match setup() {
        Ok(join) => Ok((dir, join)),
        Err(e) => {
            let _ = fs::remove_dir(&dir);
            Err(e)
        }
    }
}

/// A limit to hold by a cgroup, and what stands in when none can be made.
struct Wanted {
    ctrl: CgroupController,
    files: Vec<(&'static str, String)>,
    /// `what: controller cgroup DIR (vN)` for the report, per limit.
    whats: Vec<String>,
    fallbacks: Vec<Fallback>,
}

enum Fallback {
    Nproc(u64, policy::error::Origin),
    Data(u64),
}

/// Prepares the limits of `plan`, preferring cgroups. `born`: the sandbox
/// gets an init cloned into its namespaces (user + PID) on a kernel with
/// CLONE_INTO_CGROUP (5.7+), so a v2 cgroup is entered at birth.
/// `premade`: the sandbox's cgroup directory made already ([`premake`]);
/// removed with the others afterwards whether used or not.
#[allow(clippy::too_many_arguments)]
pub fn apply(
    plan: &LimitsPlan,
    pids: Option<&CgroupController>,
    memory: Option<&CgroupController>,
    premade: Option<&Path>,
    in_user_ns: bool,
    born: bool,
    session: &str,
    dry: bool,
    report: &mut Enforcement,
) -> Result<Applied, Failure> {
    let mut out = Applied::default();
    // No core dumps: they would write the sandbox's memory outside it.
    out.rlimits.push((libc::RLIMIT_CORE, 0));
    if let Some(n) = &plan.max_open_files {
        out.rlimits.push((libc::RLIMIT_NOFILE, n.value));
        report.limits.push(format!("max_open_files {}: RLIMIT_NOFILE", n.value));
    }
    // One cgroup per hierarchy: on v2 the pids and memory limits share it.
    let mut wanted: Vec<Wanted> = Vec::new();
    let mut want = |ctrl: CgroupController, files: Vec<(&'static str, String)>, what: String, fb: Fallback| {
        let what = format!("{what}: {} cgroup", ctrl.controller);
        match wanted.iter_mut().find(|w| w.ctrl.dir == ctrl.dir) {
            Some(w) => {
                w.files.extend(files);
                w.whats.push(what);
                w.fallbacks.push(fb);
            }
            None => wanted.push(Wanted { ctrl, files, whats: vec![what], fallbacks: vec![fb] }),
        }
    };
    if let Some(n) = &plan.max_procs {
        // For a non-root user, RLIMIT_NPROC in the sandbox's own user
        // namespace counts only the sandbox's tasks; it is preferred over a
        // pids cgroup (none to make, join and remove, and an unprivileged
        // user can rarely make one). The kernel never applies RLIMIT_NPROC to
        // uid 0 (user namespace or not), so root needs the cgroup.
        let rlimit_binds = in_user_ns && !nix::unistd::geteuid().is_root();
        let found = if rlimit_binds { None } else { pids.cloned().or_else(|| find_controller("pids")) };
        let fb = Fallback::Nproc(n.value, n.at.clone());
        match found {
            _ if rlimit_binds => {
                out.rlimits.push((libc::RLIMIT_NPROC, n.value));
                report.limits.push(format!(
                    "max_procs {}: RLIMIT_NPROC in the sandbox's own user namespace (counts only its tasks)",
                    n.value
                ));
            }
            Some(c) => want(c, vec![("pids.max", n.value.to_string())], format!("max_procs {}", n.value), fb),
            None => fallback(&mut out, report, fb),
        }
    }
    if let Some(m) = &plan.max_memory {
        let files = vec![
            ("memory.max", m.value.to_string()),
            ("memory.swap.max", "0".to_string()),
            ("memory.limit_in_bytes", m.value.to_string()),
        ];
        match memory.cloned().or_else(|| find_controller("memory")) {
            Some(c) => want(c, files, format!("max_memory {}", m.value), Fallback::Data(m.value)),
            None => fallback(&mut out, report, Fallback::Data(m.value)),
        }
    }
    for w in wanted {
        let made = match dry {
            true => Some((cgroup_dir(&w.ctrl, session), None)),
            false => make_cgroup(&w.ctrl, session, &w.files, born, premade).ok().map(|(d, j)| (d, Some(j))),
        };
        let Some((dir, join)) = made else {
            for fb in w.fallbacks {
                fallback(&mut out, report, fb);
            }
            continue;
        };
        let v = if w.ctrl.v2 { "v2" } else { "v1" };
        for what in &w.whats {
            report.limits.push(format!("{what} {} ({v})", dir.display()));
        }
        match join {
            Some(Join::Write(fd)) => out.cgroup_procs.push(fd),
            Some(Join::Born(dir_fd, procs)) => out.cgroup_v2 = Some((dir_fd, procs)),
            None => continue,
        }
        out.cgroups.push(dir);
    }
    // Made for a limit the plan does not set there: removed afterwards
    // (cleanup skips it if make_cgroup removed it already).
    if let Some(p) = premade.filter(|p| !out.cgroups.iter().any(|c| c == p)) {
        out.cgroups.push(p.to_path_buf());
    }
    Ok(out)
}

/// Removes the cgroups under `dir` of sessions killed before their cleanup
/// (see `sandbox::session_gone`): by the next run to clean up after itself
/// there, off its launch's way. What is still in one belongs to a sandbox
/// whose supervisor is gone, and should have died with it: it is killed,
/// and the removal tried again for a moment (a sandbox killed a moment ago
/// can still be leaving its cgroup when its `{tmp}` is already free; a CI
/// run saw that). One that stays is left for a later sweep.
fn sweep_stale_cgroups(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        if !super::session_gone(&e.file_name().to_string_lossy(), "portcullis-") {
            continue;
        }
        let path = e.path();
        for _ in 0..10 {
            if fs::remove_dir(&path).is_ok() || !path.exists() {
                break;
            }
            kill_all(&path);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

/// The rlimit that stands in for a limit no cgroup could hold.
fn fallback(out: &mut Applied, report: &mut Enforcement, fb: Fallback) {
    match fb {
        Fallback::Nproc(n, at) => {
            out.rlimits.push((libc::RLIMIT_NPROC, n));
            report.limits.push(format!(
                "max_procs {n}: RLIMIT_NPROC counts every process of this uid and does not bind root (no pids cgroup, no user namespace)"
            ));
            if nix::unistd::geteuid().is_root() {
                report.degrade(
                    format!("limits.max_procs {n}"),
                    Some(&at),
                    "a pids cgroup or a user namespace when running as root",
                    "RLIMIT_NPROC does not bind root",
                );
            }
        }
        Fallback::Data(m) => {
            out.rlimits.push((libc::RLIMIT_DATA, m));
            report.limits.push(format!("max_memory {m}: RLIMIT_DATA per process (no writable memory cgroup)"));
            // Said at each launch: the limit holds less than it says.
            report.notices.push(format!(
                "max_memory {m}: no writable memory cgroup here, so RLIMIT_DATA bounds each process's private memory only; shared mappings and tmpfs files are not counted"
            ));
        }
    }
}

/// Removes the sandbox's cgroups once it has exited, killing stragglers,
/// then what killed runs left beside them ([`sweep_stale_cgroups`]).
pub fn cleanup(dirs: &[PathBuf]) {
    for dir in dirs {
        for _ in 0..50 {
            if fs::remove_dir(dir).is_ok() || !dir.exists() {
                break;
            }
            kill_all(dir);
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    for parent in dirs.iter().filter_map(|d| d.parent()) {
        sweep_stale_cgroups(parent);
    }
}

fn kill_all(dir: &Path) {
    if fs::write(dir.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}
