//! What each parked syscall means: its arguments read from the caller's
//! memory (the notification id re-checked after every read), its targets
//! resolved, and how to perform it on the caller's behalf.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd};

use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use policy::ask::Access;

use super::path::{git_aliases, resolve, Caller, OwnProc, Resolved};
use super::{Op, Reply, Shared, Subject};
use crate::sandbox::seccomp::nr;
use crate::sys::notify::{self, Notif};

const PATH_MAX: usize = 4096;
const AT_EMPTY_PATH: u64 = 0x1000;
const AT_SYMLINK_FOLLOW: u64 = 0x400;
const AT_SYMLINK_NOFOLLOW: u64 = 0x100;
const AT_REMOVEDIR: u64 = 0x200;
const O_TMPFILE_BIT: i32 = 0x40_0000;

/// Reads `len` bytes at `addr` of the caller.
fn read_mem(shared: &Shared, n: &Notif, addr: u64, buf: &mut [u8]) -> Result<usize, i32> {
    use nix::sys::uio::{process_vm_readv, RemoteIoVec};
    let mut local = [std::io::IoSliceMut::new(buf)];
    let remote = [RemoteIoVec { base: addr as usize, len: local[0].len() }];
    let got =
        process_vm_readv(nix::unistd::Pid::from_raw(n.pid as i32), &mut local, &remote).map_err(|_| libc::EFAULT)?;
    // The pid may have been recycled between the notification and the read.
    if !notify::id_valid(shared.listener.as_fd(), n.id) {
        return Err(libc::ESRCH);
    }
    Ok(got)
}

/// Reads a NUL-terminated string of at most PATH_MAX bytes, page by page
/// (a read across an unmapped page would fail as a whole).
fn read_cstr(shared: &Shared, n: &Notif, addr: u64, max: usize) -> Result<Vec<u8>, i32> {
    if addr == 0 {
        return Err(libc::EFAULT);
    }
    let mut out = Vec::new();
    let mut at = addr;
    while out.len() < max {
        let to_page_end = 4096 - (at % 4096) as usize;
        let want = to_page_end.min(max - out.len());
        let mut buf = vec![0u8; want];
        let got = read_mem(shared, n, at, &mut buf)?;
        if got == 0 {
            return Err(libc::EFAULT);
        }
        if let Some(end) = buf[..got].iter().position(|&b| b == 0) {
            out.extend_from_slice(&buf[..end]);
            return Ok(out);
        }
        out.extend_from_slice(&buf[..got]);
        at += got as u64;
    }
    Err(libc::ENAMETOOLONG)
}

/// argv for the prompt: at most 64 arguments of 256 bytes each.
fn read_argv(shared: &Shared, n: &Notif, addr: u64) -> Vec<String> {
    let mut out = Vec::new();
    if addr == 0 {
        return out;
    }
    let mut ptrs = [0u8; 8 * 64];
    let Ok(got) = read_mem(shared, n, addr, &mut ptrs) else { return out };
    for chunk in ptrs[..got - got % 8].chunks(8) {
        let p = u64::from_le_bytes(chunk.try_into().unwrap_or([0; 8]));
        if p == 0 {
            break;
        }
        match read_cstr(shared, n, p, 256) {
            Ok(s) => out.push(String::from_utf8_lossy(&s).into_owned()),
            Err(libc::ENAMETOOLONG) => out.push("[long argument]".into()),
            Err(_) => break,
        }
    }
    out
}

fn int(v: u64) -> i32 {
    v as u32 as i32
}

fn path_arg(shared: &Shared, n: &Notif, caller: &Caller, dirfd: u64, addr: u64, follow: bool) -> Result<Resolved, i32> {
    let p = read_cstr(shared, n, addr, PATH_MAX)?;
    let resolved = resolve(caller, int(dirfd), &p, follow)?;
    // `resolve` opened the caller's /proc/TID/{root,cwd,fd/N}: had the
    // caller died and its TID been reused since the read above, those would
    // be another process's (THREATS #14). Still valid now: they were its.
    if !notify::id_valid(shared.listener.as_fd(), n.id) {
        return Err(libc::ESRCH);
    }
    Ok(resolved)
}

/// Whether a rule names a `.git` (`**/.git`, `**/.git/config`,
/// `/ws/.git/hooks`): then a git directory under another name is held to
/// it too.
fn names_dot_git(plan: &policy::ask::GatePlan) -> bool {
    plan.rules.iter().any(|r| match &r.target {
        policy::ask::Target::Anywhere(s) => s == ".git" || s.starts_with(".git/"),
        policy::ask::Target::Path(p) => p.ends_with("/.git") || p.contains("/.git/"),
        _ => false,
    })
}

/// Whether no `.git` can be written anywhere (strict's `**/.git`, denied).
fn denies_every_dot_git(plan: &policy::ask::GatePlan) -> bool {
    plan.rules.iter().any(|r| {
        r.deny && r.access == Access::Write && matches!(&r.target, policy::ask::Target::Anywhere(s) if s == ".git")
    })
}

/// The names resolved targets also go by, by their index in the op's
/// `targets` ([`git_aliases`]), where a rule names `.git` at any depth.
fn aliases_of(shared: &Shared, targets: &[&Resolved]) -> Result<Vec<(usize, String)>, i32> {
    if !names_dot_git(&shared.ctx.plan) {
        return Ok(Vec::new());
    }
    let strict = denies_every_dot_git(&shared.ctx.plan);
    let mut out = Vec::new();
    for (i, r) in targets.iter().enumerate() {
        out.extend(git_aliases(r, strict)?.into_iter().map(|a| (i, a)));
    }
    Ok(out)
}

fn hands_result(r: Option<Reply>) -> Reply {
    r.unwrap_or(Reply::Errno(libc::EIO))
}

fn errno_of(e: nix::errno::Errno) -> Reply {
    Reply::Errno(e as i32)
}

fn unit(r: nix::Result<()>) -> Reply {
    match r {
        Ok(()) => Reply::Value(0),
        Err(e) => errno_of(e),
    }
}

/// The file type of `name` in `dir` now (`st_mode & S_IFMT`), if it exists.
fn kind_now(dir: &std::os::fd::OwnedFd, name: &CString) -> Option<u32> {
    nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name.as_c_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .ok()
        .map(|st| st.st_mode & libc::S_IFMT)
}

fn name_or_busy(r: &Resolved) -> Result<CString, i32> {
    r.name.clone().ok_or(libc::EBUSY)
}

/// A directory moved into `{tmp}` from elsewhere would be removed with
/// `{tmp}` when the run ends, by the supervisor, past every rule that
/// protects what is inside it: `mv proj $TMPDIR/p` took a `.git` the
/// sandbox may not remove along (a helper's hunt). EXDEV, as between
/// filesystems: `mv` copies instead, and the removals it then tries are
/// decided one by one. Both sides of an exchange move.
fn moves_no_tree_into_tmp(shared: &Shared, from: &Resolved, to: &Resolved, flags: u32) -> Result<(), i32> {
    let Some(tmp) = shared.ctx.tmp.as_deref() else { return Ok(()) };
    let inside = |p: &str| p.strip_prefix(tmp).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
    let moves_in = |src: &Resolved, dst: &Resolved| {
        src.kind == Some(libc::S_IFDIR) && !inside(&src.canonical) && inside(&dst.canonical)
    };
    if moves_in(from, to) || (flags & libc::RENAME_EXCHANGE != 0 && moves_in(to, from)) {
        return Err(libc::EXDEV);
    }
    Ok(())
}

/// Classifies notification `n` into an operation to decide and perform.
pub fn classify(shared: &Shared, n: &Notif) -> Result<Op, i32> {
    let caller = Caller { tid: n.pid };
    let a = n.args;
    let nr_ = u32::try_from(n.nr).map_err(|_| libc::ENOSYS)?;
    match nr_ {
        nr::OPEN => open_op(shared, n, &caller, libc::AT_FDCWD as u64, a[0], int(a[1]), a[2]),
        nr::OPENAT => open_op(shared, n, &caller, a[0], a[1], int(a[2]), a[3]),
        nr::CREAT => open_op(
            shared,
            n,
            &caller,
            libc::AT_FDCWD as u64,
            a[0],
            libc::O_CREAT | libc::O_WRONLY | libc::O_TRUNC,
            a[1],
        ),
        nr::OPENAT2 => Err(libc::ENOSYS),
        nr::RENAME | nr::RENAMEAT | nr::RENAMEAT2 => {
            let (od, op, nd, np, flags) = match nr_ {
                nr::RENAME => (libc::AT_FDCWD as u64, a[0], libc::AT_FDCWD as u64, a[1], 0),
                nr::RENAMEAT => (a[0], a[1], a[2], a[3], 0),
                _ => (a[0], a[1], a[2], a[3], a[4] as u32),
            };
            let from = path_arg(shared, n, &caller, od, op, false)?;
            let to = path_arg(shared, n, &caller, nd, np, false)?;
            from.no_slash_link(libc::ENOTDIR)?;
            to.no_slash_link(libc::ENOTDIR)?;
            let (fname, tname) = (name_or_busy(&from)?, name_or_busy(&to)?);
            moves_no_tree_into_tmp(shared, &from, &to, flags)?;
            // A file saved over a file (write a temporary, rename it into
            // place: editors, git, npm) is a write of that file; anything
            // else moves a tree or swaps two names (see Gate::decide).
            let file = |k: Option<u32>| k == Some(libc::S_IFREG);
            let file_over_file =
                file(from.kind) && (to.kind.is_none() || file(to.kind)) && flags & libc::RENAME_EXCHANGE == 0;
            let kinds = (from.kind, to.kind);
            Ok(Op {
                access: vec![Access::Write, Access::Read],
                targets: vec![(from.canonical.clone(), true), (to.canonical.clone(), true)],
                aliases: aliases_of(shared, &[&from, &to])?,
                subject: None,
                kind: if file_over_file { "rename" } else { "rename-tree" },
                detail: format!("rename({:?}, {:?}, flags {flags:#x})", from.canonical, to.canonical),
                perform: Box::new(move |s: &Shared| {
                    hands_result(s.hands(move || {
                        // What was decided on (and shown, if asked) is still
                        // what would move: a file the person let be renamed
                        // must not have become a tree meanwhile.
                        if (kind_now(&from.dir, &fname), kind_now(&to.dir, &tname)) != kinds {
                            return Reply::Errno(libc::EAGAIN);
                        }
                        unit(nix::fcntl::renameat2(
                            Some(from.dir.as_raw_fd()),
                            fname.as_c_str(),
                            Some(to.dir.as_raw_fd()),
                            tname.as_c_str(),
                            nix::fcntl::RenameFlags::from_bits_retain(flags),
                        ))
                    }))
                }),
            })
        }
        nr::LINK | nr::LINKAT => {
            let (od, op, nd, np, flags) = match nr_ {
                nr::LINK => (libc::AT_FDCWD as u64, a[0], libc::AT_FDCWD as u64, a[1], 0),
                _ => (a[0], a[1], a[2], a[3], a[4]),
            };
            if flags & AT_EMPTY_PATH != 0 {
                // Linking an fd (O_TMPFILE) in: the gate cannot see what it is.
                return Err(libc::EPERM);
            }
            let from = path_arg(shared, n, &caller, od, op, flags & AT_SYMLINK_FOLLOW != 0)?;
            let to = path_arg(shared, n, &caller, nd, np, false)?;
            from.no_slash_link(libc::ENOTDIR)?;
            to.no_slash_link(libc::EEXIST)?;
            to.no_slash_for_a_file()?;
            let (fname, tname) = (name_or_busy(&from)?, name_or_busy(&to)?);
            let kind = from.kind;
            Ok(Op {
                access: vec![Access::Write, Access::Read],
                targets: vec![(from.canonical.clone(), true), (to.canonical.clone(), true)],
                aliases: aliases_of(shared, &[&from, &to])?,
                subject: None,
                // Without AT_SYMLINK_FOLLOW a symlink is linked as itself.
                kind: if from.kind == Some(libc::S_IFLNK) { "link-symlink" } else { "link" },
                detail: format!("link({:?}, {:?})", from.canonical, to.canonical),
                perform: Box::new(move |s: &Shared| {
                    hands_result(s.hands(move || {
                        // Still what was decided on (a symlink swapped in
                        // while a question waited would be linked as itself).
                        if kind_now(&from.dir, &fname) != kind {
                            return Reply::Errno(libc::EAGAIN);
                        }
                        unit(nix::unistd::linkat(
                            Some(from.dir.as_raw_fd()),
                            fname.as_c_str(),
                            Some(to.dir.as_raw_fd()),
                            tname.as_c_str(),
                            nix::fcntl::AtFlags::empty(),
                        ))
                    }))
                }),
            })
        }
        nr::SYMLINK | nr::SYMLINKAT => {
            let (target_addr, nd, np) = match nr_ {
                nr::SYMLINK => (a[0], libc::AT_FDCWD as u64, a[1]),
                _ => (a[0], a[1], a[2]),
            };
            let target = CString::new(read_cstr(shared, n, target_addr, PATH_MAX)?).map_err(|_| libc::EINVAL)?;
            let link = path_arg(shared, n, &caller, nd, np, false)?;
            link.no_slash_link(libc::EEXIST)?;
            link.no_slash_for_a_file()?;
            let lname = name_or_busy(&link)?;
            Ok(Op {
                access: vec![Access::Write, Access::Read],
                // A symlink named like a protected place redirects it: counts as a move.
                targets: vec![(link.canonical.clone(), true)],
                aliases: aliases_of(shared, &[&link])?,
                subject: None,
                kind: "symlink",
                detail: format!("symlink({:?} -> {:?})", link.canonical, target.to_string_lossy()),
                perform: Box::new(move |s: &Shared| {
                    hands_result(s.hands(move || {
                        unit(nix::unistd::symlinkat(target.as_c_str(), Some(link.dir.as_raw_fd()), lname.as_c_str()))
                    }))
                }),
            })
        }
        nr::UNLINK | nr::UNLINKAT | nr::RMDIR => {
            let (d, p, flags) = match nr_ {
                nr::UNLINK => (libc::AT_FDCWD as u64, a[0], 0),
                nr::RMDIR => (libc::AT_FDCWD as u64, a[0], AT_REMOVEDIR),
                _ => (a[0], a[1], a[2]),
            };
            let r = path_arg(shared, n, &caller, d, p, false)?;
            r.no_slash_link(libc::ENOTDIR)?;
            let name = name_or_busy(&r)?;
            let how = if flags & AT_REMOVEDIR != 0 {
                nix::unistd::UnlinkatFlags::RemoveDir
            } else {
                nix::unistd::UnlinkatFlags::NoRemoveDir
            };
            Ok(Op {
                access: vec![Access::Write],
                targets: vec![(r.canonical.clone(), false)],
                aliases: aliases_of(shared, &[&r])?,
                subject: None,
                kind: "unlink",
                detail: format!("unlink({:?})", r.canonical),
                perform: Box::new(move |s: &Shared| {
                    hands_result(
                        s.hands(move || unit(nix::unistd::unlinkat(Some(r.dir.as_raw_fd()), name.as_c_str(), how))),
                    )
                }),
            })
        }
        nr::MKDIR | nr::MKDIRAT => {
            let (d, p, mode) = match nr_ {
                nr::MKDIR => (libc::AT_FDCWD as u64, a[0], a[1]),
                _ => (a[0], a[1], a[2]),
            };
            let r = path_arg(shared, n, &caller, d, p, false)?;
            r.no_slash_link(libc::EEXIST)?;
            let name = name_or_busy(&r).map_err(|_| libc::EEXIST)?;
            let umask = caller.umask();
            Ok(Op {
                access: vec![Access::Write],
                targets: vec![(r.canonical.clone(), false)],
                aliases: aliases_of(shared, &[&r])?,
                subject: None,
                kind: "mkdir",
                detail: format!("mkdir({:?}, {:o})", r.canonical, mode),
                perform: Box::new(move |s: &Shared| {
                    hands_result(s.hands(move || {
                        notify::set_umask(umask);
                        unit(nix::sys::stat::mkdirat(
                            Some(r.dir.as_raw_fd()),
                            name.as_c_str(),
                            Mode::from_bits_truncate(mode as u32),
                        ))
                    }))
                }),
            })
        }
        nr::MKNOD | nr::MKNODAT => {
            let (d, p, mode, dev) = match nr_ {
                nr::MKNOD => (libc::AT_FDCWD as u64, a[0], a[1], a[2]),
                _ => (a[0], a[1], a[2], a[3]),
            };
            let r = path_arg(shared, n, &caller, d, p, false)?;
            r.no_slash_link(libc::EEXIST)?;
            r.no_slash_for_a_file()?;
            let name = name_or_busy(&r).map_err(|_| libc::EEXIST)?;
            let umask = caller.umask();
            Ok(Op {
                access: vec![Access::Write],
                targets: vec![(r.canonical.clone(), true)],
                aliases: aliases_of(shared, &[&r])?,
                subject: None,
                kind: "mknod",
                detail: format!("mknod({:?}, {:o})", r.canonical, mode),
                perform: Box::new(move |s: &Shared| {
                    hands_result(s.hands(move || {
                        notify::set_umask(umask);
                        let m = mode as u32;
                        unit(nix::sys::stat::mknodat(
                            Some(r.dir.as_raw_fd()),
                            name.as_c_str(),
                            nix::sys::stat::SFlag::from_bits_truncate(m & libc::S_IFMT),
                            Mode::from_bits_truncate(m & 0o1777),
                            dev,
                        ))
                    }))
                }),
            })
        }
        nr::TRUNCATE => {
            let r = path_arg(shared, n, &caller, libc::AT_FDCWD as u64, a[0], true)?;
            let len = a[1] as i64;
            Ok(Op {
                access: vec![Access::Write],
                // A write of the file, as an open for writing it is: cut to
                // `gitdir: .`, a submodule's `.git` file names the
                // submodule's own directory, whose `config` no rule covers
                // (a helper's hunt ran core.fsmonitor that way).
                targets: vec![(r.canonical.clone(), r.kind == Some(libc::S_IFREG))],
                aliases: aliases_of(shared, &[&r])?,
                subject: None,
                kind: "truncate",
                detail: format!("truncate({:?}, {len})", r.canonical),
                perform: Box::new(move |s: &Shared| {
                    hands_result(s.hands(move || {
                        // Never waits for a FIFO's reader (that would stall
                        // every parked call): what is not a regular file
                        // gets the kernel's EINVAL.
                        let fd = match nix::fcntl::openat(
                            Some(r.dir.as_raw_fd()),
                            r.at_name(),
                            OFlag::O_WRONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC,
                            Mode::empty(),
                        ) {
                            Ok(fd) => notify::own(fd),
                            Err(nix::errno::Errno::ENXIO) => return Reply::Errno(libc::EINVAL),
                            Err(e) => return errno_of(e),
                        };
                        match nix::sys::stat::fstat(fd.as_raw_fd()) {
                            Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => {
                                unit(nix::unistd::ftruncate(fd, len))
                            }
                            Ok(_) => Reply::Errno(libc::EINVAL),
                            Err(e) => errno_of(e),
                        }
                    }))
                }),
            })
        }
        nr::EXECVE | nr::EXECVEAT => {
            let (d, p, argv, flags) = match nr_ {
                nr::EXECVE => (libc::AT_FDCWD as u64, a[0], a[1], 0),
                _ => (a[0], a[1], a[2], a[4]),
            };
            let r = path_arg(shared, n, &caller, d, p, flags & AT_SYMLINK_NOFOLLOW == 0)?;
            let argv = read_argv(shared, n, argv);
            Ok(Op {
                access: vec![Access::Exec],
                targets: vec![(r.canonical.clone(), false)],
                // Only writes are held to the `.git` rules under other names.
                aliases: vec![],
                subject: None,
                kind: "exec",
                detail: format!("exec {} (argv: {})", r.canonical, shell_words(&argv)),
                // The kernel runs it; Landlock's exec allowlist bounds what a raced path reaches.
                perform: Box::new(|_| Reply::Continue),
            })
        }
        nr::CONNECT => connect_op(shared, n, &caller),
        other => {
            let name = shared.syscall_names.get(&i64::from(other)).ok_or(libc::ENOSYS)?;
            Ok(Op {
                access: vec![Access::Syscall],
                targets: vec![],
                aliases: vec![],
                // The arguments are formatted only if someone is shown them.
                subject: Some(Subject::Syscall(name.clone(), a)),
                kind: "syscall",
                detail: String::new(),
                // Register arguments only: nothing the caller can change after the check.
                perform: Box::new(|_| Reply::Continue),
            })
        }
    }
}

fn shell_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if a.is_empty() || a.contains(|c: char| c.is_whitespace() || c == '\'') {
                format!("{a:?}")
            } else {
                a.clone()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn open_op(
    shared: &Shared,
    n: &Notif,
    caller: &Caller,
    dirfd: u64,
    addr: u64,
    flags: i32,
    mode: u64,
) -> Result<Op, i32> {
    let accmode = flags & libc::O_ACCMODE;
    let tmpfile = flags & O_TMPFILE_BIT != 0;
    let path_only = flags & libc::O_PATH != 0;
    let creates = flags & libc::O_CREAT != 0 || tmpfile;
    let writes = !path_only && (accmode != libc::O_RDONLY || creates || flags & libc::O_TRUNC != 0);
    let reads = !path_only && accmode != libc::O_WRONLY;
    let excl_create = flags & libc::O_CREAT != 0 && flags & libc::O_EXCL != 0;
    let follow = flags & libc::O_NOFOLLOW == 0 && !excl_create;
    if path_only {
        // An O_PATH fd reads and writes nothing, and everything done through
        // it (an *at call, a /proc reopen) is parked and resolved again.
        // ADDFD cannot pass one anyway (fget refuses O_PATH files).
        return Ok(Op {
            access: vec![],
            targets: vec![],
            aliases: vec![],
            subject: None,
            kind: "open-path",
            detail: String::new(),
            perform: Box::new(|_| Reply::Continue),
        });
    }
    let r = path_arg(shared, n, caller, dirfd, addr, follow)?;
    if r.trailing_slash && flags & libc::O_CREAT != 0 && r.name.is_some() {
        return Err(libc::EISDIR);
    }
    // What the kernel says to a create of a name that is there (a symlink
    // included: O_CREAT|O_EXCL never follows one), said before O_CREAT is
    // dropped below.
    if excl_create && r.kind.is_some() {
        return Err(libc::EEXIST);
    }
    // O_CREAT with O_DIRECTORY is EINVAL (Linux 6.4 and later) before anything else.
    if flags & libc::O_CREAT != 0 && flags & libc::O_DIRECTORY != 0 && !tmpfile {
        return Err(libc::EINVAL);
    }
    if flags & libc::O_CREAT != 0 && r.kind == Some(libc::S_IFDIR) {
        return Err(libc::EISDIR);
    }
    // A marker (`[deny] markers`: uv's `.git` in its cache) is made if
    // missing and opened read-only: it stays empty, as its tool wants it.
    // A write there (a `gitdir:` line) would start a repository that
    // strict's `**/.git/...` rules never saw (a reviewer's repro built one
    // in uv's cache and moved it into the workspace).
    let marker = writes
        && !tmpfile
        && r.name.is_some()
        && matches!(r.kind, None | Some(libc::S_IFREG))
        && policy::ask::is_marker(&shared.ctx.plan, &r.canonical);
    let fifo = r.kind == Some(libc::S_IFIFO);
    let id = n.id;
    let mut access = Vec::new();
    if reads {
        access.push(Access::Read);
    }
    if writes {
        access.push(Access::Write);
    }
    let umask = if creates { caller.umask() } else { 0 };
    let cloexec = flags & libc::O_CLOEXEC != 0;
    let kind = if writes { "open-write" } else { "open-read" };
    // A read of the caller's own /proc file: see own_proc_open.
    let own_proc = match (&r.own_proc, writes) {
        (Some(own), false) => r.dir.try_clone().ok().map(|dir| (own.clone(), dir, n.pid, flags)),
        _ => None,
    };
    let mut own_flags = flags | libc::O_CLOEXEC;
    if r.name.is_some() {
        // Resolved already (a symlink followed if the caller follows): one
        // there now, swapped in or never to be followed, must not redirect
        // the open (a reviewer opened `.git/config` through a link with
        // O_CREAT|O_EXCL once O_CREAT was dropped).
        own_flags |= libc::O_NOFOLLOW;
    }
    if r.trailing_slash && !tmpfile {
        own_flags |= libc::O_DIRECTORY;
    }
    if marker {
        own_flags = (own_flags & !(libc::O_ACCMODE | libc::O_TRUNC | libc::O_APPEND)) | libc::O_RDONLY;
    }
    if r.kind.is_some_and(|k| k != libc::S_IFREG) {
        // Decided on as what is there (a directory at `.git`): no name is
        // made, so none counted as made. Had it gone meanwhile (removed
        // while a question waited), O_CREAT would make a file there.
        own_flags &= !libc::O_CREAT;
    }
    Ok(Op {
        access,
        // Creating or writing a file where a protected tree would be (a
        // `.git` *file* saying `gitdir: /elsewhere`; linked worktrees and
        // submodule checkouts have one already) redirects that tree: counts
        // as a move.
        targets: vec![(
            r.canonical.clone(),
            !marker && ((creates && r.kind.is_none()) || (writes && r.kind == Some(libc::S_IFREG))),
        )],
        aliases: aliases_of(shared, &[&r])?,
        subject: None,
        kind,
        detail: format!(
            "open({:?}, {}){}",
            r.canonical,
            open_flags(flags),
            if marker { " (a marker: opened read-only)" } else { "" }
        ),
        perform: Box::new(move |s: &Shared| {
            let open = move |nonblock: bool| {
                if creates {
                    notify::set_umask(umask);
                }
                let asked_nonblock = own_flags & libc::O_NONBLOCK != 0;
                let flags = if nonblock { own_flags | libc::O_NONBLOCK } else { own_flags };
                match nix::fcntl::openat(
                    Some(r.dir.as_raw_fd()),
                    r.at_name(),
                    OFlag::from_bits_retain(flags),
                    // Never setuid or setgid: chmod cannot set them either.
                    Mode::from_bits_truncate(mode as u32 & 0o1777),
                ) {
                    Ok(fd) => {
                        let fd = notify::own(fd);
                        if nonblock && !asked_nonblock {
                            // Only so the shared thread never blocks: give back the caller's flags.
                            let back = OFlag::from_bits_retain(own_flags & !libc::O_NONBLOCK & !libc::O_CLOEXEC);
                            let _ = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(back));
                        }
                        Reply::Fd { fd, cloexec }
                    }
                    Err(e) => errno_of(e),
                }
            };
            if fifo {
                // Opening a FIFO waits for its other end: in a thread of its own.
                s.hands_apart(id, move || open(false))
            } else {
                // Never block the shared thread: a FIFO swapped in after the
                // check fails (ENXIO) instead of stalling every other call.
                match (hands_result(s.hands(move || open(true))), own_proc) {
                    (Reply::Errno(libc::EACCES), Some((own, dir, tid, flags))) => {
                        own_proc_open(s, id, &own, dir, tid, flags)
                    }
                    (reply, _) => reply,
                }
            }
        }),
    })
}

/// The caller reads a file of its own /proc directory (`/proc/self/maps`,
/// `environ`, `auxv`, ...). Those files ask for ptrace access to the
/// process, and Landlock grants that only from the caller's own domain or
/// an enclosing one; the hands are confined in a domain of their own, so
/// they get EACCES where the caller itself would not. When the hands may
/// read an ordinary file of that same directory (`status`, which needs no
/// ptrace access: the profile grants reading it), the file is opened here,
/// outside Landlock (but without capabilities) through the supervisor's
/// /proc entry for the caller: what the caller may read of itself, and
/// nothing else (one plain name, no symlinks, a regular file, the caller
/// still the same process after).
fn own_proc_open(s: &Shared, id: u64, own: &OwnProc, dir: std::os::fd::OwnedFd, tid: u32, asked: i32) -> Reply {
    let readable = s.hands(move || {
        nix::fcntl::openat(Some(dir.as_raw_fd()), c"status", OFlag::O_RDONLY | OFlag::O_CLOEXEC, Mode::empty()).is_ok()
    });
    if readable != Some(true) {
        return Reply::Errno(libc::EACCES);
    }
    let Some(tgid) = tgid_of(tid) else { return Reply::Errno(libc::ESRCH) };
    let base = if own.thread { format!("/proc/{tgid}/task/{tid}") } else { format!("/proc/{tgid}") };
    let flags = libc::O_RDONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NOCTTY | (asked & libc::O_NONBLOCK);
    // Opened by a thread without capabilities: some of these files decide
    // what a read shows by the opener's (pagemap's frame numbers need
    // CAP_SYS_ADMIN), and a root supervisor's own threads have them all.
    let rest = own.rest.clone();
    let opened = std::thread::scope(|scope| {
        let opener = scope.spawn(move || -> Result<std::os::fd::OwnedFd, i32> {
            notify::confine_thread_but_landlock().map_err(|e| e.raw_os_error().unwrap_or(libc::EPERM))?;
            let dir = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
            let base = notify::own(nix::fcntl::open(base.as_str(), dir, Mode::empty()).map_err(|_| libc::ESRCH)?);
            let fd = notify::openat2(base.as_fd(), &rest, flags as u64, 0, RESOLVE_BENEATH_NO_LINKS)
                .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
            match nix::sys::stat::fstat(fd.as_raw_fd()) {
                Ok(st) if st.st_mode & libc::S_IFMT == libc::S_IFREG => Ok(fd),
                _ => Err(libc::EACCES),
            }
        });
        opener.join().unwrap_or(Err(libc::EIO))
    });
    let fd = match opened {
        Ok(fd) => fd,
        Err(e) => return Reply::Errno(e),
    };
    // The TID was the caller's when the notification arrived; still now.
    if !notify::id_valid(s.listener.as_fd(), id) {
        return Reply::Errno(libc::ESRCH);
    }
    Reply::Fd { fd, cloexec: asked & libc::O_CLOEXEC != 0 }
}

/// openat2: RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS | RESOLVE_NO_XDEV.
const RESOLVE_BENEATH_NO_LINKS: u64 = 0x08 | 0x04 | 0x02 | 0x01;

fn open_flags(flags: i32) -> String {
    let mut parts = vec![match flags & libc::O_ACCMODE {
        libc::O_WRONLY => "O_WRONLY",
        libc::O_RDWR => "O_RDWR",
        _ => "O_RDONLY",
    }];
    for (bit, name) in [
        (libc::O_CREAT, "O_CREAT"),
        (libc::O_TRUNC, "O_TRUNC"),
        (libc::O_APPEND, "O_APPEND"),
        (libc::O_EXCL, "O_EXCL"),
        (libc::O_NOFOLLOW, "O_NOFOLLOW"),
        (libc::O_DIRECTORY, "O_DIRECTORY"),
        (libc::O_PATH, "O_PATH"),
        (O_TMPFILE_BIT, "O_TMPFILE"),
    ] {
        if flags & bit == bit {
            parts.push(name);
        }
    }
    parts.join("|")
}

fn tgid_of(tid: u32) -> Option<i32> {
    let status = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

fn connect_op(shared: &Shared, n: &Notif, _caller: &Caller) -> Result<Op, i32> {
    let fd = int(n.args[0]);
    let tgid = tgid_of(n.pid).ok_or(libc::ESRCH)?;
    let pidfd = notify::pidfd_open(tgid).map_err(|e| e.raw_os_error().unwrap_or(libc::ESRCH))?;
    // The caller's own socket (same open file description): connecting it
    // here connects it for the caller, with every option it set, and what
    // the kernel connects is exactly the address checked below.
    let sock = notify::pidfd_getfd(pidfd.as_fd(), fd).map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
    let inet = matches!(notify::sock_domain(sock.as_fd()), Some(libc::AF_INET | libc::AF_INET6));
    if !inet {
        if !shared.ctx.unix_sockets {
            // Only socketpairs exist here (the floor refuses AF_UNIX
            // sockets): nothing to connect, and a CONTINUE could be raced
            // by swapping a TCP socket onto this fd number.
            return Err(libc::EISCONN);
        }
        // A unix socket the profile allows: the rules are about TCP
        // destinations (README: the unix-socket caveat).
        return Ok(Op {
            access: vec![],
            targets: vec![],
            aliases: vec![],
            subject: None,
            kind: "connect",
            detail: String::new(),
            perform: Box::new(|_| Reply::Continue),
        });
    }
    let len = (n.args[2] as usize).min(128);
    let mut addr = vec![0u8; len];
    let got = read_mem(shared, n, n.args[1], &mut addr)?;
    addr.truncate(got);
    let family = if addr.len() >= 2 { u16::from_ne_bytes([addr[0], addr[1]]) as i32 } else { -1 };
    let (ip, port) = match family {
        libc::AF_INET if addr.len() >= 8 => {
            (std::net::IpAddr::from([addr[4], addr[5], addr[6], addr[7]]), u16::from_be_bytes([addr[2], addr[3]]))
        }
        libc::AF_INET6 if addr.len() >= 24 => {
            let mut ip = [0u8; 16];
            ip.copy_from_slice(&addr[8..24]);
            (std::net::IpAddr::from(ip), u16::from_be_bytes([addr[2], addr[3]]))
        }
        // AF_UNSPEC dissolves a UDP association; anything else the kernel refuses itself.
        _ => (std::net::IpAddr::from([0u8; 4]), 0),
    };
    let stream = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::SockType)
        .is_ok_and(|t| t == nix::sys::socket::SockType::Stream);
    let id = n.id;
    let perform: Box<dyn FnOnce(&Shared) -> Reply + Send> = Box::new(move |s: &Shared| {
        s.connect_apart(id, move || match notify::connect_raw(sock.as_fd(), &addr) {
            Ok(()) => Reply::Value(0),
            Err(e) => Reply::Errno(e),
        })
    });
    if !stream {
        // UDP: the rules are about TCP; the floor decided UDP already.
        return Ok(Op {
            access: vec![],
            targets: vec![],
            aliases: vec![],
            subject: None,
            kind: "connect",
            detail: String::new(),
            perform,
        });
    }
    Ok(Op {
        access: vec![Access::Connect],
        targets: vec![],
        aliases: vec![],
        subject: Some(Subject::Addr(ip, port)),
        kind: "connect",
        detail: format!("connect(tcp {})", std::net::SocketAddr::new(ip, port)),
        perform,
    })
}
