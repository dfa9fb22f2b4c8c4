//! Turns a compiled plan into an exec stage for this kernel.
//!
//! `prepare` does every check and every allocation: it resolves the command
//! allowlist, builds the Landlock ruleset and the seccomp programs, sets up
//! limits, and decides what is degraded. If anything is wrong it returns a
//! [`Failure`] and nothing has been applied. Only then does `run` fork.

pub mod env;
pub mod exec;
pub mod landlock;
pub mod limits;
pub mod report;
pub mod seccomp;

use std::ffi::OsString;
use std::path::PathBuf;

use policy::Plan;

use crate::exit::Failure;
use crate::kernel::Features;
use crate::sys::stage::Stage;
use report::Enforcement;

/// Everything needed to launch, decided before fork.
pub struct Prepared {
    pub enforcement: Enforcement,
    pub exec: Vec<exec::Resolved>,
    /// Seccomp rules after kernel-dependent additions (what `explain` shows).
    pub seccomp_rules: Vec<policy::plan::SyscallRule>,
    pub stage: Stage,
    pub cgroups: Vec<PathBuf>,
    /// For the syscall gate (`ask`/`deny` rules), when the plan has any.
    pub gate: Option<crate::gate::Setup>,
    /// What each path rule's Landlock rule was made from (landlock::Outcome);
    /// empty while `paths` waits.
    pub rule_inodes: Vec<Option<(u64, u64)>>,
    /// The ruleset's path and exec rules, when they are still to be added
    /// ([`prepare_with`]'s `defer_paths`; then `rule_inodes` comes from
    /// [`landlock::Paths::fill`]).
    pub paths: Option<landlock::Paths>,
}

/// Checks and builds everything for `plan` on this kernel.
/// With `dry`, nothing is created on the machine (no cgroups): for `explain` and `doctor`.
pub fn prepare(
    plan: &Plan,
    features: &Features,
    path_var: &OsString,
    session: &str,
    dry: bool,
) -> Result<Prepared, Failure> {
    prepare_with(plan, features, path_var, session, dry, false, || None)
}

/// The pids and memory cgroup controllers, as [`limits::find_controllers`]
/// finds them, and the sandbox's pids cgroup directory if it was made
/// already ([`limits::premake`]).
pub struct Controllers {
    pub found: [Option<limits::CgroupController>; 2],
    pub premade: Option<std::path::PathBuf>,
}

/// As [`prepare`], with the cgroup controllers from `controllers` when it
/// has them (`run` looks them up on another thread meanwhile: asked for
/// only once the Landlock ruleset and the seccomp program are built), and
/// otherwise from `features`. With `defer_paths`, the Landlock ruleset
/// holds none of the plan's path rules yet: they are left for the caller
/// to add ([`Prepared::paths`]) once the stage has its configuration, and
/// before the command confines itself (about a quarter of a millisecond
/// here, an O_PATH open and a rule per path, taken off the way to the
/// configuration: the stage forks and readies the command meanwhile).
#[allow(clippy::too_many_arguments)]
pub fn prepare_with(
    plan: &Plan,
    features: &Features,
    path_var: &OsString,
    session: &str,
    dry: bool,
    defer_paths: bool,
    controllers: impl FnOnce() -> Option<Controllers>,
) -> Result<Prepared, Failure> {
    let mut enforcement = Enforcement::default();
    let writable = exec::Writable::of(plan);
    let exec =
        exec::resolve_all(&plan.exec.allow, path_var, &writable, &mut enforcement.skipped, &mut enforcement.notices)?;

    if features.landlock_abi_used < features.landlock_abi.min(crate::kernel::MAX_TESTED_ABI) {
        enforcement.notices.push(format!(
            "PORTCULLIS_LANDLOCK_ABI: behaving as if this kernel had Landlock ABI {} (it has {})",
            features.landlock_abi_used, features.landlock_abi
        ));
    }
    let namespaces = features.user_namespaces;
    enforcement.lifecycle = if namespaces {
        "PID namespace: the sandbox dies with the supervisor, double-forked processes included".into()
    } else {
        "no user/PID namespace here: PDEATHSIG only; a double-forked process could outlive the supervisor".into()
    };
    if !namespaces {
        enforcement.notices.push(enforcement.lifecycle.clone());
    }
    let write_rules = plan.gate.rules.iter().any(|r| {
        r.access == policy::ask::Access::Write
            && matches!(r.target, policy::ask::Target::Path(_) | policy::ask::Target::Anywhere(_))
    });
    if plan.seccomp.floor.chmod && write_rules {
        // The gate parks no chmod: fchmod names no path to check.
        enforcement.notices.push(
            "[filesystem] chmod = true: mode changes are not checked against the [deny] and [ask] write rules; the sandbox can make a file there executable, a git hook among them".into(),
        );
    }

    let unix = plan.seccomp.floor.sockets.unix;
    let abi = features.landlock_abi_used;
    let (mut ll, mut paths) = landlock::create(&plan.landlock, abi, namespaces, unix, &mut enforcement)?;
    if !defer_paths {
        if let Some(p) = paths.take() {
            ll.inodes = p.fill(&plan.landlock, &exec, &mut enforcement)?;
        }
    }

    if plan.seccomp.floor.chmod && features.euid == 0 {
        return Err(Failure::setup(
            "`[filesystem] chmod = true` is refused when portcullis runs as root: the sandbox would own, and could chmod, every root-owned file on the host",
        ));
    }
    crate::timing::mark(if defer_paths { "Landlock ruleset created" } else { "Landlock ruleset built" });
    let mut rules = plan.seccomp.rules.clone();
    rules.extend(ll.floor);
    if !namespaces {
        // Without a private IPC namespace, host SysV IPC objects and POSIX
        // message queues of this uid would be reachable.
        for name in [
            "shmget",
            "shmat",
            "shmctl",
            "msgget",
            "msgsnd",
            "msgrcv",
            "msgctl",
            "semget",
            "semop",
            "semtimedop",
            "semctl",
            "mq_open",
        ] {
            rules.extend(policy::seccomp::extra(
                name,
                "no IPC namespace here: host SysV IPC and message queues would be shared",
            ));
        }
    }
    if !features.seccomp_filter {
        return Err(Failure::setup("seccomp filtering is not available in this kernel; refusing to run without it"));
    }
    // With ask or deny rules, the approval filter is the program's last part.
    let parked = (!plan.gate.is_empty()).then(|| seccomp::notify_set(&plan.gate));
    let program = seccomp::program(&rules, parked.as_deref())?;
    let filters_first = filters_first(&rules, parked.as_deref());
    crate::timing::mark("seccomp compiled");

    let found = controllers();
    let [pids, memory] = match &found {
        Some(Controllers { found: [pids, memory], .. }) => [pids.as_ref(), memory.as_ref()],
        None => [features.pids_cgroup.as_ref(), features.memory_cgroup.as_ref()],
    };
    let premade = found.as_ref().and_then(|c| c.premade.as_deref());
    // Removed again if anything below fails: nothing else would.
    let mut made = Undo(premade.into_iter().map(PathBuf::from).collect());
    let limits = limits::apply(
        &plan.limits,
        pids,
        memory,
        premade,
        namespaces,
        namespaces && features.clone_into_cgroup(),
        session,
        dry,
        &mut enforcement,
    )?;
    made.0 = limits.cgroups.clone();

    let (notify, gate) = match plan.gate.is_empty() {
        true => (None, None),
        false => {
            if !features.seccomp_user_notif {
                return Err(Failure::setup(format!(
                    "the profile has ask/deny rules ({}), which need seccomp user notification; this kernel lacks it, and an ask never turns into an allow",
                    plan.gate.rules[0].describe()
                )));
            }
            let (ours, theirs) = nix::sys::socket::socketpair(
                nix::sys::socket::AddressFamily::Unix,
                nix::sys::socket::SockType::SeqPacket,
                None,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            )
            .map_err(|e| Failure::setup(format!("cannot create a socket pair: {e}")))?;
            let ruleset = match &ll.ruleset {
                Some(r) => {
                    Some(r.try_clone().map_err(|e| Failure::setup(format!("cannot duplicate the ruleset: {e}")))?)
                }
                None => None,
            };
            let net = landlock::gate_net(&plan.landlock, features.landlock_abi_used)?;
            (Some(theirs), Some(crate::gate::Setup { sock: ours, ruleset, net }))
        }
    };
    // One program: with a gate, attached with the approval filter's listener.
    let (filters, notify) = match notify {
        Some(sock) => (Vec::new(), Some((program, sock))),
        None => (vec![program], None),
    };
    let rule_inodes = ll.inodes;
    let stage = Stage {
        cgroup_procs: limits.cgroup_procs,
        cgroup_v2: limits.cgroup_v2,
        rlimits: limits.rlimits,
        require_bounding_drop: namespaces || features.euid == 0,
        proc_access: ll.proc_access,
        canary: None,
        go: None,
        ruleset: ll.ruleset,
        filters,
        notify,
        filters_first,
    };
    made.0.clear();
    Ok(Prepared { enforcement, exec, seccomp_rules: rules, stage, cgroups: limits.cgroups, gate, rule_inodes, paths })
}

/// Whether the command may install its seccomp program before it waits for
/// its confine byte ([`Stage::filters_first`]). Between the two it reads
/// that byte, restricts itself with Landlock, opens the canary read-only
/// and closes it, and may poll and yield (stage::Config::command); on a
/// refusal or a failure it writes its report and exits. A profile that
/// denies one of those, or parks it for the gate (other than an open for
/// writing: a parked call before exec would wait for a gate that has not
/// started), keeps the other order, the program installed last. (Calls
/// made after the byte in both orders, the go-ahead's read, poll and yield
/// among them, are listed too: the rule errs on the side of the old order.)
fn filters_first(rules: &[policy::plan::SyscallRule], parked: Option<&[(u32, seccomp::Notify)]>) -> bool {
    const BETWEEN: [&str; 10] = [
        "read",
        "landlock_restrict_self",
        "open",
        "openat",
        "close",
        "poll",
        "sched_yield",
        "write",
        "exit",
        "exit_group",
    ];
    let between: Vec<i64> = BETWEEN.iter().filter_map(|n| policy::syscalls::number(n)).collect();
    let denied = rules.iter().any(|r| between.contains(&r.nr));
    let held = parked
        .unwrap_or_default()
        .iter()
        .any(|(n, how)| between.contains(&i64::from(*n)) && !matches!(how, seccomp::Notify::WriteFlags { .. }));
    !denied && !held
}

/// The cgroups of a preparation that failed after making them.
struct Undo(Vec<PathBuf>);

impl Drop for Undo {
    fn drop(&mut self) {
        limits::cleanup(&self.0);
    }
}

/// Where the run `session` has its private `{tmp}` under `root`.
pub fn private_tmp_path(root: &std::path::Path, session: &str) -> PathBuf {
    root.join(format!("tmp-{session}"))
}

/// A fresh private directory for `{tmp}` ([`private_tmp_path`]), mode
/// 0700, under a root we own.
pub fn private_tmp(root: &std::path::Path, session: &str) -> Result<PathBuf, Failure> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let fail = |what: &str, e: &dyn std::fmt::Display| Failure::setup(format!("private temp dir {what}: {e}"));
    match std::fs::DirBuilder::new().mode(0o700).create(root) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(fail(&root.display().to_string(), &e)),
    }
    // Refuse a root planted by someone else or through a symlink.
    let meta = std::fs::symlink_metadata(root).map_err(|e| fail(&root.display().to_string(), &e))?;
    if !meta.is_dir() || meta.uid() != nix::unistd::geteuid().as_raw() || meta.mode() & 0o077 != 0 {
        return Err(Failure::setup(format!(
            "private temp root {} is not a 0700 directory owned by this user; remove it and retry",
            root.display()
        )));
    }
    let dir = private_tmp_path(root, session);
    std::fs::DirBuilder::new().mode(0o700).create(&dir).map_err(|e| fail(&dir.display().to_string(), &e))?;
    Ok(dir)
}

/// Removes the private `{tmp}` once the sandbox is gone, whatever it left
/// there: a directory it made without read or search permission for its
/// owner (`mkdir -m 0300`; chmod is denied, the mode of a new directory is
/// not) made the removal fail, and the tree stayed on the host. Links are
/// never followed. Says so on stderr if the tree still cannot go.
pub fn remove_private_tmp(dir: &std::path::Path) {
    // With no more privilege over the tree than the sandbox had: as root
    // the supervisor could otherwise remove, and chmod, what the sandbox
    // moved in but could not touch itself (a directory of another user).
    if let Err(e) = crate::sys::without_file_overrides(|| remove_tree(dir)) {
        if dir.symlink_metadata().is_ok() {
            // Not eprintln: called by the finisher, whose stderr may be gone.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "portcullis: could not remove the private temp dir {}: {e}",
                ::audit::display_safe(&dir.display().to_string())
            );
        }
    }
}

/// Removes the directory tree at `root`, giving the owner rwx on each
/// directory first. Without recursion, and with one directory open at a
/// time: the sandbox can build a tree deeper than any stack (std's
/// remove_dir_all recursed, a frame and an open fd per level, and a tree
/// of some 60,000 levels crashed the supervisor) and than PATH_MAX (each
/// step is relative to an open directory). It climbs back through "..",
/// checked against the directory it came down from; each directory is
/// read once.
pub fn remove_tree(root: &std::path::Path) -> std::io::Result<()> {
    use nix::dir::{Dir, Type};
    use nix::errno::Errno;
    use nix::unistd::{unlinkat, UnlinkatFlags};
    use std::ffi::{CStr, CString};
    use std::os::fd::AsRawFd;

    /// A directory being emptied: what is left to go into, and where it
    /// hangs (its name in its parent and the parent's inode).
    struct Level {
        subdirs: Vec<CString>,
        name: CString,
        parent: (u64, u64),
    }
    fn ino(fd: std::os::fd::RawFd) -> nix::Result<(u64, u64)> {
        nix::sys::stat::fstat(fd).map(|st| (st.st_dev, st.st_ino))
    }
    /// Unlinks everything in `dir` but directories, which it returns; the
    /// first failure goes to `failed`, and the rest is still tried.
    fn empty_but_subdirs(dir: &mut Dir, failed: &mut Option<Errno>) -> Vec<CString> {
        let fd = dir.as_raw_fd();
        let mut subdirs = Vec::new();
        for entry in dir.iter() {
            let entry = match entry {
                Ok(e) => e,
                Err(e) => {
                    failed.get_or_insert(e);
                    break;
                }
            };
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let is_dir = match entry.file_type() {
                Some(t) => t == Type::Directory,
                None => nix::sys::stat::fstatat(Some(fd), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                    .is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR),
            };
            if is_dir {
                subdirs.push(name.to_owned());
            } else {
                match unlinkat(Some(fd), name, UnlinkatFlags::NoRemoveDir) {
                    Ok(()) | Err(Errno::ENOENT) => {}
                    Err(e) => {
                        failed.get_or_insert(e);
                    }
                }
            }
        }
        subdirs
    }
    /// Opens the directory `name` beneath `at` (never through a symlink)
    /// after giving its owner rwx on it.
    fn open_dir(at: Option<std::os::fd::RawFd>, name: &CStr) -> nix::Result<Dir> {
        use nix::fcntl::OFlag;
        use nix::sys::stat::Mode;
        let path = Dir::openat(
            at,
            name,
            OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let fd = path.as_raw_fd();
        if nix::sys::stat::fstat(fd).is_ok_and(|st| st.st_mode & 0o700 != 0o700) {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(format!("/proc/self/fd/{fd}"), std::fs::Permissions::from_mode(0o700));
        }
        Dir::openat(Some(fd), c".", OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC, Mode::empty())
    }

    // One entry that cannot go (not ours to remove) leaves the rest going.
    let mut failed: Option<Errno> = None;
    let root_c = CString::new(root.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)?;
    let mut cur = open_dir(None, &root_c)?;
    let mut levels = vec![Level { subdirs: empty_but_subdirs(&mut cur, &mut failed), name: root_c, parent: (0, 0) }];
    loop {
        let level = levels.last_mut().expect("the root's level is popped last");
        if let Some(name) = level.subdirs.pop() {
            let here = ino(cur.as_raw_fd())?;
            match open_dir(Some(cur.as_raw_fd()), &name) {
                Ok(mut child) => {
                    let subdirs = empty_but_subdirs(&mut child, &mut failed);
                    levels.push(Level { subdirs, name, parent: here });
                    cur = child;
                }
                Err(e) => {
                    failed.get_or_insert(e);
                }
            }
            continue;
        }
        let done = levels.pop().expect("a level");
        if levels.is_empty() {
            break;
        }
        // Checked before anything is done there: not even a chmod, should
        // a process of the sandbox that outlived it (no PID namespace) have
        // moved this directory out of the tree.
        let up = Dir::openat(
            Some(cur.as_raw_fd()),
            c"..",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        if ino(up.as_raw_fd())? != done.parent {
            return Err(std::io::Error::other("a directory of the tree moved while it was being removed"));
        }
        if let Err(e) = unlinkat(Some(up.as_raw_fd()), done.name.as_c_str(), UnlinkatFlags::RemoveDir) {
            failed.get_or_insert(e);
        }
        cur = up;
    }
    drop(cur);
    match (std::fs::remove_dir(root), failed) {
        (Ok(()), _) => Ok(()),
        (Err(_), Some(first)) => Err(first.into()),
        (Err(e), None) => Err(e),
    }
}

/// Holds `{tmp}` for the life of the run (an exclusive `flock` on the
/// directory, released when portcullis and its stage are gone, killed or
/// not): [`sweep_stale`] leaves alone every tree still held.
pub fn hold_private_tmp(dir: &std::path::Path) -> Result<std::fs::File, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .map_err(|e| Failure::setup(format!("private temp dir {}: {e}", dir.display())))?;
    f.try_lock().map_err(|e| Failure::setup(format!("private temp dir {}: cannot lock it: {e}", dir.display())))?;
    Ok(f)
}

/// Whether `name` (`PREFIX<pid>-<nanos>`, as sessions name what they
/// make) belongs to a session whose portcullis is no longer alive. A pid
/// reused since only leaves the leftovers for a later sweep.
pub fn session_gone(name: &str, prefix: &str) -> bool {
    let pid = name.strip_prefix(prefix).and_then(|r| r.split('-').next()).and_then(|p| p.parse::<i32>().ok());
    pid.filter(|p| *p > 0).is_some_and(|pid| {
        matches!(nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
    })
}

/// Removes the `{tmp}` trees under `root` that runs killed before their
/// cleanup (SIGKILL) left: those of sessions gone ([`session_gone`]) whose
/// tree is not held either (a live run whose pid this process cannot see).
/// Their cgroups go in `limits::cleanup`, at the end of a later run.
pub fn sweep_stale(root: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for e in entries.flatten() {
        if !session_gone(&e.file_name().to_string_lossy(), "tmp-") {
            continue;
        }
        let Ok(held) = hold_private_tmp(&e.path()) else { continue };
        remove_private_tmp(&e.path());
        drop(held);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn deny(name: &str) -> policy::plan::SyscallRule {
        policy::seccomp::extra(name, "test").expect("a known syscall")
    }

    #[test]
    fn the_program_goes_first_unless_it_could_stop_the_way_to_exec() {
        let nr = |n: &str| policy::syscalls::number(n).expect("known") as u32;
        let write_flags = [(nr("openat"), seccomp::Notify::WriteFlags { arg: 2 })];
        // strict's kind: outright denies of other calls, opens for writing parked.
        assert!(filters_first(&[deny("bpf"), deny("mount")], Some(&write_flags)));
        assert!(filters_first(&[], None));
        // Each call the command makes between the program and exec.
        for name in ["read", "landlock_restrict_self", "openat", "close", "poll", "sched_yield", "write", "exit_group"]
        {
            assert!(!filters_first(&[deny(name)], None), "{name} denied");
            let always = [(nr(name), seccomp::Notify::Always)];
            assert!(!filters_first(&[], Some(&always)), "{name} parked");
        }
    }
}
