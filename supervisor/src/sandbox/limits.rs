//! Process and memory limits. A cgroup (v2, or the v1 controller where that is
//! what the machine mounts) binds root too; without one, rlimits inside the
//! sandbox's user namespace are the fallback, and `doctor` says which is used.

use std::fs;
use std::os::fd::OwnedFd;
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
    let own = fs::read_to_string("/proc/self/cgroup").ok();
    let mounts = fs::read_to_string("/proc/self/mountinfo").ok();
    controllers.map(|c| match (&own, &mounts) {
        (Some(own), Some(mounts)) => controller_in(c, own, mounts),
        _ => None,
    })
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
    pub cgroup_procs: Vec<OwnedFd>,
    pub rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
    pub cgroups: Vec<PathBuf>,
}

impl Applied {
    /// Joins the sandbox to a cgroup made for it (`fd`: the file to join by; None in a dry run).
    fn use_cgroup(
        &mut self,
        report: &mut Enforcement,
        what: String,
        c: &CgroupController,
        dir: PathBuf,
        fd: Option<OwnedFd>,
    ) {
        let v = if c.v2 { "v2" } else { "v1" };
        report.limits.push(format!("{what}: {} cgroup {} ({v})", c.controller, dir.display()));
        if let Some(fd) = fd {
            self.cgroups.push(dir);
            self.cgroup_procs.push(fd);
        }
    }
}

fn make_cgroup(
    ctrl: &CgroupController,
    session: &str,
    files: &[(&str, String)],
) -> std::io::Result<(PathBuf, OwnedFd)> {
    let dir = ctrl.dir.join(format!("portcullis-{session}"));
    fs::create_dir(&dir)?;
    let setup = || -> std::io::Result<OwnedFd> {
        for (name, value) in files {
            let p = dir.join(name);
            if p.exists() {
                fs::write(&p, value)?;
            }
        }
        // The stage writes "0" to join while it is still single-threaded.
        // On v1 the `tasks` file moves just the calling thread, which the
        // kernel does without its global threadgroup lock; `cgroup.procs`
        // takes that lock for writing, which waits for an RCU grace period
        // (0.1 to 14 ms measured here) on every launch. v2 allows moving a
        // lone thread only inside one threaded subtree, so it keeps
        // `cgroup.procs`.
        let join = if ctrl.v2 { "cgroup.procs" } else { "tasks" };
        let procs = fs::OpenOptions::new().write(true).open(dir.join(join))?;
        Ok(procs.into())
    };
    match setup() {
        Ok(fd) => Ok((dir, fd)),
        Err(e) => {
            let _ = fs::remove_dir(&dir);
            Err(e)
        }
    }
}

/// Prepares the limits of `plan`, preferring cgroups.
pub fn apply(
    plan: &LimitsPlan,
    pids: Option<&CgroupController>,
    memory: Option<&CgroupController>,
    in_user_ns: bool,
    session: &str,
    dry: bool,
    report: &mut Enforcement,
) -> Result<Applied, Failure> {
    let make = |c: &CgroupController, files: &[(&str, String)]| -> Option<(PathBuf, Option<OwnedFd>)> {
        if dry {
            return Some((c.dir.join(format!("portcullis-{session}")), None));
        }
        make_cgroup(c, session, files).ok().map(|(d, fd)| (d, Some(fd)))
    };
    let mut out = Applied::default();
    // No core dumps: they would write the sandbox's memory outside it.
    out.rlimits.push((libc::RLIMIT_CORE, 0));
    if let Some(n) = &plan.max_open_files {
        out.rlimits.push((libc::RLIMIT_NOFILE, n.value));
        report.limits.push(format!("max_open_files {}: RLIMIT_NOFILE", n.value));
    }
    if let Some(n) = &plan.max_procs {
        // For a non-root user, RLIMIT_NPROC in the sandbox's own user
        // namespace counts only the sandbox's tasks; it is preferred over a
        // pids cgroup (none to make, join and remove, and an unprivileged
        // user can rarely make one). The kernel never applies RLIMIT_NPROC to
        // uid 0 (user namespace or not), so root needs the cgroup.
        let rlimit_binds = in_user_ns && !nix::unistd::geteuid().is_root();
        let files = [("pids.max", n.value.to_string())];
        let found = if rlimit_binds { None } else { pids.cloned().or_else(|| find_controller("pids")) };
        let via_cgroup = found.as_ref().and_then(|c| make(c, &files).map(|(d, fd)| (c, d, fd)));
        match via_cgroup {
            _ if rlimit_binds => {
                out.rlimits.push((libc::RLIMIT_NPROC, n.value));
                report.limits.push(format!(
                    "max_procs {}: RLIMIT_NPROC in the sandbox's own user namespace (counts only its tasks)",
                    n.value
                ));
            }
            Some((c, dir, fd)) => out.use_cgroup(report, format!("max_procs {}", n.value), c, dir, fd),
            None => {
                out.rlimits.push((libc::RLIMIT_NPROC, n.value));
                report.limits.push(format!(
                    "max_procs {}: RLIMIT_NPROC counts every process of this uid and does not bind root (no pids cgroup, no user namespace)",
                    n.value
                ));
                if nix::unistd::geteuid().is_root() {
                    report.degrade(
                        format!("limits.max_procs {}", n.value),
                        Some(&n.at),
                        "a pids cgroup or a user namespace when running as root",
                        "RLIMIT_NPROC does not bind root",
                    );
                }
            }
        }
    }
    if let Some(m) = &plan.max_memory {
        let files = [
            ("memory.max", m.value.to_string()),
            ("memory.swap.max", "0".to_string()),
            ("memory.limit_in_bytes", m.value.to_string()),
        ];
        let found = memory.cloned().or_else(|| find_controller("memory"));
        match found.as_ref().and_then(|c| make(c, &files).map(|(d, fd)| (c, d, fd))) {
            Some((c, dir, fd)) => out.use_cgroup(report, format!("max_memory {}", m.value), c, dir, fd),
            None => {
                out.rlimits.push((libc::RLIMIT_DATA, m.value));
                report
                    .limits
                    .push(format!("max_memory {}: RLIMIT_DATA per process (no writable memory cgroup)", m.value));
            }
        }
    }
    Ok(out)
}

/// Removes the sandbox's cgroups once it has exited, killing stragglers.
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
