//! The Landlock ruleset: every filesystem right the kernel's ABI knows is
//! handled (an unhandled right is an allowed right), TCP ports on ABI 4+,
//! abstract-unix and signal scoping on ABI 6+. What this kernel lacks is
//! either covered by the seccomp floor (and noted) or reported as a
//! degradation that needs --best-effort.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope, ABI,
};

use policy::plan::{LandlockPlan, SyscallRule};

use super::exec::Resolved;
use super::report::Enforcement;
use crate::exit::Failure;

fn abi_of(v: i32) -> ABI {
    ABI::from(v)
}

fn read_rights() -> BitFlags<AccessFs> {
    AccessFs::ReadFile | AccessFs::ReadDir
}

fn write_rights() -> BitFlags<AccessFs> {
    AccessFs::WriteFile
        | AccessFs::RemoveDir
        | AccessFs::RemoveFile
        | AccessFs::MakeDir
        | AccessFs::MakeReg
        | AccessFs::MakeSock
        | AccessFs::MakeFifo
        | AccessFs::MakeSym
        | AccessFs::Refer
        | AccessFs::Truncate
        | AccessFs::IoctlDev
}

fn ll_err(e: impl std::fmt::Display) -> Failure {
    Failure::setup(format!("Landlock: {e}"))
}

/// What the rest of the sandbox must add because of this kernel's ABI.
pub struct Outcome {
    pub ruleset: Option<OwnedFd>,
    /// (device, inode) of what each of the plan's path rules was made
    /// from, in plan order; None for a rule skipped as optional.
    pub inodes: Vec<Option<(u64, u64)>>,
    /// Rights to grant on the sandbox's private /proc once it is mounted.
    pub proc_access: Option<u64>,
    /// Seccomp rules standing in for rights this ABI lacks.
    pub floor: Vec<SyscallRule>,
}

/// The Landlock domain of the gate's connect threads: TCP only, with the
/// sandbox's own ports and the ones it may only be asked about. None
/// without Landlock's network rights (ABI < 4), where the sandbox has no
/// port rules either.
pub fn gate_net(plan: &LandlockPlan, abi: i32) -> Result<Option<OwnedFd>, Failure> {
    if abi < 4 || cfg!(feature = "sabotage-landlock-net") {
        return Ok(None);
    }
    let v = abi_of(abi);
    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(AccessNet::from_all(v))
        .and_then(|r| r.create())
        .map_err(ll_err)?;
    for p in plan.connect_tcp.iter().chain(&plan.gate_connect_tcp) {
        created = created.add_rule(NetPort::new(p.value, AccessNet::ConnectTcp)).map_err(ll_err)?;
    }
    Ok(created.into())
}

/// The path rules of a ruleset made by [`create`], still to be added
/// ([`fill`](Self::fill)): `run` sends the stage the ruleset first, and
/// adds them while the stage forks the command, which restricts itself
/// only once they are in (Landlock takes the rules a ruleset holds when
/// a process restricts itself; one short of rules refuses more, never
/// less).
pub struct Paths {
    /// Another fd of the ruleset the outcome holds.
    ruleset: OwnedFd,
    fs_all: BitFlags<AccessFs>,
    fs_file: BitFlags<AccessFs>,
}

/// Builds the ruleset for `plan` on a kernel with Landlock ABI `abi`,
/// without the plan's path rules and the commands' exec rules: those are
/// added by [`Paths::fill`] (the outcome's `inodes` are left empty). No
/// paths to add without Landlock. `namespaces`: the sandbox gets its own
/// PID namespace (signals by pid stay inside). `unix_sockets`: the
/// profile allows socket(AF_UNIX).
pub fn create(
    plan: &LandlockPlan,
    abi: i32,
    namespaces: bool,
    unix_sockets: bool,
    report: &mut Enforcement,
) -> Result<(Outcome, Option<Paths>), Failure> {
    report.landlock_abi = abi;
    let mut floor = Vec::new();
    if abi < 1 {
        report.degrade(
            "filesystem rules",
            None,
            "Landlock (ABI >= 1); this kernel has none (not built, or not in lsm= at boot)",
            "no filesystem confinement at all; seccomp, capabilities and no_new_privs still apply",
        );
        return Ok((Outcome { ruleset: None, inodes: Vec::new(), proc_access: None, floor }, None));
    }
    let v = abi_of(abi);
    let fs_all = AccessFs::from_all(v);
    let fs_file = AccessFs::from_file(v);

    if abi < 2 {
        report.notices.push(
            "ABI 1: linking or renaming across directories always fails with EXDEV (stricter, not weaker)".into(),
        );
    }
    if abi < 3 {
        floor.push(
            policy::seccomp::extra("truncate", "Landlock ABI < 3 cannot check truncate(2) by path").expect("known"),
        );
        report
            .notices
            .push("ABI < 3: truncate(2) is denied outright by seccomp (Landlock cannot check it by path)".into());
    }
    if abi < 5 {
        report.notices.push("ABI < 5: ioctl on device files opened inside the sandbox is not restricted by Landlock (TIOCSTI/TIOCLINUX stay denied by seccomp)".into());
    }

    let mut ruleset =
        Ruleset::default().set_compatibility(CompatLevel::HardRequirement).handle_access(fs_all).map_err(ll_err)?;
    let has_ports = !plan.connect_tcp.is_empty() || !plan.gate_connect_tcp.is_empty() || !plan.bind_tcp.is_empty();
    if abi >= 4 {
        // The sabotage build silently drops the network rules (vm-test --sabotage).
        if !cfg!(feature = "sabotage-landlock-net") {
            ruleset = ruleset.handle_access(AccessNet::from_all(v)).map_err(ll_err)?;
        }
    } else if has_ports {
        let connects = plan.connect_tcp.iter().chain(&plan.gate_connect_tcp).map(|p| ("connect", p));
        for p in connects.chain(plan.bind_tcp.iter().map(|p| ("bind", p))) {
            report.degrade(
                format!("network.{} {}", p.0, p.1.value),
                Some(&p.1.at),
                format!("Landlock ABI 4 for TCP port rules; kernel has {abi}"),
                "when degraded, TCP to any port is allowed (seccomp still denies UDP, raw and non-TCP stream sockets)",
            );
        }
    } else {
        report.notices.push(format!("ABI {abi} < 4: no network is enforced by seccomp alone (inet sockets denied)"));
    }
    if abi >= 6 {
        let mut scopes = BitFlags::<Scope>::empty();
        if plan.scope_abstract_unix {
            scopes |= Scope::AbstractUnixSocket;
        }
        if plan.scope_signal {
            scopes |= Scope::Signal;
        }
        if !scopes.is_empty() {
            ruleset = ruleset.scope(scopes).map_err(ll_err)?;
        }
    } else {
        if plan.scope_abstract_unix {
            if unix_sockets {
                report.degrade(
                    "ipc.abstract_unix = false (with ipc.unix = true)",
                    None,
                    format!("Landlock ABI 6 for abstract unix socket scoping; kernel has {abi}"),
                    "when degraded, abstract sockets outside the sandbox (X11, D-Bus) are reachable",
                );
            } else {
                report
                    .notices
                    .push(format!("ABI {abi} < 6: abstract unix sockets are blocked by seccomp (no AF_UNIX sockets)"));
            }
        }
        if plan.scope_signal {
            if namespaces {
                floor.push(
                    policy::seccomp::extra(
                        "pidfd_send_signal",
                        "Landlock ABI < 6: a /proc/PID pidfd could signal outside the PID namespace",
                    )
                    .expect("known"),
                );
                report.notices.push(format!(
                    "ABI {abi} < 6: signals stay inside the sandbox's PID namespace; pidfd_send_signal is denied"
                ));
            } else {
                report.degrade(
                    "ipc.signals = false",
                    None,
                    format!("Landlock ABI 6 for signal scoping (kernel has {abi}) or a PID namespace (unavailable)"),
                    "when degraded, the sandbox can signal other processes of this user",
                );
            }
        }
    }

    let mut created = ruleset.create().map_err(ll_err)?;
    if abi >= 4 && !cfg!(feature = "sabotage-landlock-net") {
        for p in &plan.connect_tcp {
            created = created.add_rule(NetPort::new(p.value, AccessNet::ConnectTcp)).map_err(ll_err)?;
        }
        for p in &plan.bind_tcp {
            created = created.add_rule(NetPort::new(p.value, AccessNet::BindTcp)).map_err(ll_err)?;
        }
    }
    let ruleset: Option<OwnedFd> = created.into();
    let ruleset = ruleset.ok_or_else(|| ll_err("the kernel made no ruleset"))?;
    // The private /proc init mounts is a directory, as the host's is. The
    // profile's rule grants it whether or not the host's /proc opens (an
    // optional `?/proc` on a host without one still grants the sandbox's
    // own, which init mounts in any case).
    let proc_access = plan.paths.iter().find(|r| r.path == "/proc").map(|r| (rights(r) & fs_all).bits());
    let paths = Paths {
        ruleset: ruleset.try_clone().map_err(|e| ll_err(format!("cannot duplicate the ruleset: {e}")))?,
        fs_all,
        fs_file,
    };
    Ok((Outcome { ruleset: Some(ruleset), inodes: Vec::new(), proc_access, floor }, Some(paths)))
}

/// The rights a path rule grants, before they are masked to what the
/// ruleset handles (and to a file's rights for a file).
fn rights(rule: &policy::plan::PathRule) -> BitFlags<AccessFs> {
    let mut access = BitFlags::<AccessFs>::empty();
    if rule.read {
        access |= read_rights();
    }
    if rule.write {
        access |= write_rights();
    }
    if rule.exec {
        access |= AccessFs::Execute;
    }
    access
}

impl Paths {
    /// Adds `plan`'s path rules and the exec rules of `exec`; returns the
    /// (device, inode) of what each path rule was made from, in plan
    /// order (None for an optional rule skipped).
    pub fn fill(
        self,
        plan: &LandlockPlan,
        exec: &[Resolved],
        report: &mut Enforcement,
    ) -> Result<Vec<Option<(u64, u64)>>, Failure> {
        let Paths { ruleset, fs_all, fs_file } = self;
        // Path rules go in directly: the crate's add_rule stats each file
        // again to check what we already know (we stat it for its inode),
        // a syscall per rule on every launch. The rights are masked to
        // what the ruleset handles, and to files' rights for a file, as
        // the crate would.
        let add = |parent: BorrowedFd, access: BitFlags<AccessFs>| {
            crate::sys::fs::add_path_beneath(ruleset.as_raw_fd(), parent.as_raw_fd(), access.bits())
                .map_err(std::io::Error::from_raw_os_error)
        };
        let mut inodes = Vec::with_capacity(plan.paths.len());
        // A path beneath a writable one may be a symlink the sandbox planted in an
        // earlier run: resolve those without following symlinks.
        let writable: Vec<&str> = plan.paths.iter().filter(|r| r.write).map(|r| r.path.as_str()).collect();
        for rule in &plan.paths {
            let beneath_writable = writable.iter().any(|w| {
                rule.path.len() > w.len() && rule.path.starts_with(w) && rule.path.as_bytes()[w.len()] == b'/'
                    || *w == "/"
            });
            let fd = match crate::sys::fs::open_path(&rule.path, !beneath_writable) {
                Ok(fd) => fd,
                Err(nix::errno::Errno::ELOOP) if beneath_writable => {
                    return Err(Failure::setup(format!(
                        "{}: path {} goes through a symlink inside a writable tree; refusing it (the sandbox could have planted it): name the real path",
                        rule.at, rule.path
                    )));
                }
                Err(e) => {
                    // ENOENT: nothing there (or a symlink to nothing), without
                    // a second lookup: optional paths missing is the usual
                    // case, a dozen times a launch under strict.
                    let missing = e == nix::errno::Errno::ENOENT || Path::new(&rule.path).symlink_metadata().is_err();
                    if rule.optional {
                        inodes.push(None);
                        report.skipped.push(format!(
                            "path {} ({}): {}",
                            rule.path,
                            rule.at,
                            if missing { "does not exist" } else { "cannot be opened" }
                        ));
                        continue;
                    }
                    return Err(Failure::setup(if missing {
                        format!(
                            "{}: path {} does not exist (prefix it with `?` in a profile to make it optional)",
                            rule.at, rule.path
                        )
                    } else {
                        format!("{}: path {} cannot be opened: {e}", rule.at, rule.path)
                    }));
                }
            };
            // What was opened, not what the path names a moment later.
            let (is_dir, inode) = kind_of(&fd);
            inodes.push(inode);
            let access = rights(rule) & if is_dir { fs_all } else { fs_file };
            add(fd.as_fd(), access)
                .map_err(|e| Failure::setup(format!("{}: Landlock rule for {}: {e}", rule.at, rule.path)))?;
        }
        for cmd in exec {
            let fd = PathFd::new(&cmd.path)
                .map_err(|e| Failure::setup(format!("{}: {}: {e}", cmd.at, cmd.path.display())))?;
            let access = (AccessFs::Execute | AccessFs::ReadFile | AccessFs::ReadDir)
                & if is_dir(&fd) { fs_all } else { fs_file };
            add(fd.as_fd(), access).map_err(ll_err)?;
        }
        Ok(inodes)
    }
}

/// Whether the opened file is a directory (fstat on the descriptor: one
/// syscall, and about the object the rule is made from).
fn is_dir(fd: &impl std::os::fd::AsFd) -> bool {
    kind_of(fd).0
}

/// Whether the opened file is a directory, and its (device, inode).
fn kind_of(fd: &impl std::os::fd::AsFd) -> (bool, Option<(u64, u64)>) {
    use std::os::fd::AsRawFd;
    match nix::sys::stat::fstat(fd.as_fd().as_raw_fd()) {
        Ok(st) => (st.st_mode & libc::S_IFMT == libc::S_IFDIR, Some((st.st_dev, st.st_ino))),
        Err(_) => (false, None),
    }
}
