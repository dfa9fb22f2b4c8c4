//! Resolving a path argument of a parked syscall the way the kernel would for
//! the sandboxed caller, into something the supervisor can act on without
//! rereading the caller's memory: an O_PATH fd of the parent directory, the
//! last component, and the canonical absolute path rules are matched against.
//!
//! - The walk starts at the caller's root, cwd or dirfd (through
//!   `/proc/TID/root|cwd|fd/N`), never at ours.
//! - Magic links (`/proc/*/fd/*`, `/proc/*/cwd`, ...) are refused
//!   (RESOLVE_NO_MAGICLINKS): ELOOP.
//! - A symlink in the last component is followed here, one hop at a time,
//!   so the canonical path names the file actually reached; the act then
//!   uses O_NOFOLLOW, so a symlink swapped in afterwards fails with ELOOP
//!   instead of redirecting the act.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use nix::fcntl::OFlag;

use crate::sys::notify;

const RESOLVE_NO_MAGICLINKS: u64 = 0x02;
const RESOLVE_IN_ROOT: u64 = 0x10;
const PROC_SUPER_MAGIC: i64 = 0x9fa0;
const MAX_HOPS: usize = 40;

/// A resolved path argument.
#[derive(Debug)]
pub struct Resolved {
    /// O_PATH fd of the directory holding the last component.
    pub dir: OwnedFd,
    /// The last component; None when the path names `dir` itself (`/`, `.`, `..`).
    pub name: Option<CString>,
    /// Absolute, without `.`, `..` or symlinks (as far as resolved).
    pub canonical: String,
    /// The path ended in `/`: it must be a directory.
    pub trailing_slash: bool,
    /// File type (`st_mode & S_IFMT`) of the last component when resolved, if it exists.
    pub kind: Option<u32>,
    /// The caller named a file of its own process or thread directory
    /// (`/proc/self/NAME`, `/proc/thread-self/NAME`), as [`OwnProc`].
    pub own_proc: Option<OwnProc>,
    /// A symlink in the last component was followed only because the path
    /// ended in `/`, for a call that does not follow: the kernel acts on
    /// no target then (`unlink("link/")` is ENOTDIR), see [`Resolved::no_slash_link`].
    pub slash_followed: bool,
}

/// A file in the caller's own /proc directory, named through `/proc/self`
/// or `/proc/thread-self` (see [`Resolved::own_proc`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OwnProc {
    /// Through `/proc/thread-self`: relative to the thread's directory.
    pub thread: bool,
    /// `NAME`.
    pub rest: CString,
}

impl Resolved {
    /// `errno` when the call named a symlink with a trailing `/` and does
    /// not follow: the kernel's answer (ENOTDIR, or EEXIST for a create),
    /// never an act on the link's target.
    pub fn no_slash_link(&self, errno: i32) -> Result<(), i32> {
        if self.slash_followed {
            Err(errno)
        } else {
            Ok(())
        }
    }

    /// For a call that makes a name that is no directory (a symlink, a
    /// link, a node): a path ending in `/` is the kernel's EEXIST if the
    /// name is there, else ENOENT; never a name made without the slash.
    pub fn no_slash_for_a_file(&self) -> Result<(), i32> {
        match (self.trailing_slash && self.name.is_some(), self.kind) {
            (false, _) => Ok(()),
            (true, Some(_)) => Err(libc::EEXIST),
            (true, None) => Err(libc::ENOENT),
        }
    }

    /// The name to pass to the *at call: the component, or "." for the directory itself.
    pub fn at_name(&self) -> &std::ffi::CStr {
        self.name.as_deref().unwrap_or(c".")
    }
}

/// The process the path belongs to.
pub struct Caller {
    pub tid: u32,
}

impl Caller {
    fn proc(&self, what: &str) -> String {
        format!("/proc/{}/{what}", self.tid)
    }

    fn open_proc(&self, what: &str) -> Result<OwnedFd, i32> {
        let p = self.proc(what);
        nix::fcntl::open(p.as_str(), OFlag::O_PATH | OFlag::O_CLOEXEC, nix::sys::stat::Mode::empty())
            .map(notify::own)
            .map_err(|e| if e == nix::errno::Errno::ENOENT { libc::ESRCH } else { e as i32 })
    }

    /// `NStgid` and `NSpid` of the caller, for `/proc/self`: in its own
    /// (innermost) PID namespace, or with `host`, in ours.
    fn ns_ids(&self, host: bool) -> Option<(String, String)> {
        let status = std::fs::read_to_string(self.proc("status")).ok()?;
        let pick = |key: &str| {
            let mut ids = status.lines().find_map(|l| l.strip_prefix(key))?.split_whitespace();
            if host { ids.next() } else { ids.last() }.map(str::to_string)
        };
        Some((pick("NStgid:")?, pick("NSpid:")?))
    }

    /// The caller's umask, for files the supervisor creates on its behalf.
    pub fn umask(&self) -> u32 {
        std::fs::read_to_string(self.proc("status"))
            .ok()
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("Umask:")).and_then(|v| u32::from_str_radix(v.trim(), 8).ok())
            })
            .unwrap_or(0o022)
    }
}

/// procfs's root directory.
const PROC_ROOT_INO: u64 = 1;

/// Whether `dir` (holding `name`, if any) lies in a process's directory of
/// a procfs that shows the supervisor (the host's, mounted anywhere), other
/// than the caller's. The gate acts as
/// the supervisor, and procfs lets a process into its own directory without
/// the ptrace check: where the sandbox sees the host's /proc (its own could
/// not be mounted), `/proc/<supervisor>/mem` would hand it the supervisor's
/// memory, the audit log's signing key among it. The sandbox's own procfs
/// shows no process of ours. Fails closed on anything it cannot tell.
fn in_a_host_process_dir(caller: &Caller, dir: &OwnedFd, dir_path: &str, name: Option<&[u8]>) -> bool {
    use nix::sys::stat::fstat;
    let in_proc = |fd: &OwnedFd| nix::sys::statfs::fstatfs(fd).is_ok_and(|s| s.filesystem_type().0 == PROC_SUPER_MAGIC);
    if !in_proc(dir) {
        return false;
    }
    let Ok(st) = fstat(dir.as_raw_fd()) else { return true };
    // The name just beneath procfs's root says whose directory `dir` is in.
    let (mut ino, mut depth) = (st.st_ino, 0usize);
    let mut cur = match dir.try_clone() {
        Ok(d) => d,
        Err(_) => return true,
    };
    while ino != PROC_ROOT_INO {
        let up = nix::fcntl::openat(
            Some(cur.as_raw_fd()),
            "..",
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        );
        match up.map(notify::own) {
            Ok(d) if depth < 32 && in_proc(&d) => cur = d,
            _ => return true,
        }
        ino = match fstat(cur.as_raw_fd()) {
            Ok(s) => s.st_ino,
            Err(_) => return true,
        };
        depth += 1;
    }
    // A procfs that shows us has a `self`: ours, mounted anywhere (a
    // second mount has a device of its own), not the sandbox's private one.
    if nix::fcntl::readlinkat(Some(cur.as_raw_fd()), "self").is_err() {
        return false;
    }
    let top: &[u8] = if depth == 0 {
        match name {
            Some(n) => n,
            None => return false,
        }
    } else {
        let parts: Vec<&str> = dir_path.split('/').filter(|c| !c.is_empty()).collect();
        match parts.len().checked_sub(depth) {
            Some(i) => parts[i].as_bytes(),
            None => return true,
        }
    };
    let pid = !top.is_empty() && top.iter().all(u8::is_ascii_digit);
    pid && caller.ns_ids(true).is_none_or(|(tgid, _)| tgid.as_bytes() != top)
}

fn fd_path(fd: &OwnedFd) -> Result<String, i32> {
    let link = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).map_err(|_| libc::ENOENT)?;
    let s = link.to_string_lossy().into_owned();
    if !s.starts_with('/') || s.ends_with(" (deleted)") {
        return Err(libc::ENOENT);
    }
    Ok(s)
}

fn join(dir: &str, name: &[u8]) -> String {
    let name = String::from_utf8_lossy(name);
    if dir == "/" {
        format!("/{name}")
    } else {
        format!("{dir}/{name}")
    }
}

/// Rewrites a leading `/proc/self` or `/proc/thread-self`: those links
/// resolve by the *opener's* pid, and the supervisor is not in the
/// sandbox's PID namespace.
///
/// The pid is the caller's as its /proc shows it: its own namespace's in
/// the sandbox's private procfs, ours when that could not be mounted and
/// the sandbox sees the host's (same device as our /proc). Naming the
/// namespace pid there would name another process.
fn rewrite_self(caller: &Caller, root: &OwnedFd, path: &[u8]) -> (Vec<u8>, Option<OwnProc>) {
    for (prefix, thread) in [(&b"/proc/self"[..], false), (&b"/proc/thread-self"[..], true)] {
        if path.starts_with(prefix) && matches!(path.get(prefix.len()), None | Some(b'/')) {
            let dev = |st: nix::Result<nix::sys::stat::FileStat>| st.ok().map(|st| st.st_dev);
            let theirs = dev(nix::sys::stat::fstatat(Some(root.as_raw_fd()), c"proc", nix::fcntl::AtFlags::empty()));
            let host = theirs.is_some() && theirs == dev(nix::sys::stat::stat("/proc"));
            if let Some((tgid, tid)) = caller.ns_ids(host) {
                let head = if thread { format!("/proc/{tgid}/task/{tid}") } else { format!("/proc/{tgid}") };
                let mut out = head.into_bytes();
                out.extend_from_slice(&path[prefix.len()..]);
                let own = own_rest(&path[prefix.len()..], thread).map(|rest| OwnProc { thread, rest });
                return (out, own);
            }
        }
    }
    (path.to_vec(), None)
}

/// `/NAME`: one plain name (not `.`, `..` or empty), else None. Not
/// `/task/N/NAME`: N is a TID in the sandbox's PID namespace, which names
/// nothing (or another thread) under the supervisor's /proc.
fn own_rest(rest: &[u8], _thread: bool) -> Option<CString> {
    let name = rest.strip_prefix(b"/")?;
    let plain = !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/');
    plain.then(|| CString::new(name.to_vec()).ok()).flatten()
}

/// Resolves `path` (relative to `dirfd`, the caller's number or AT_FDCWD).
/// `follow`: follow a symlink in the last component.
pub fn resolve(caller: &Caller, dirfd: i32, path: &[u8], follow: bool) -> Result<Resolved, i32> {
    if path.is_empty() {
        return Err(libc::ENOENT);
    }
    let root = caller.open_proc("root")?;
    let mut base = if path.starts_with(b"/") {
        root.try_clone().map_err(|_| libc::EMFILE)?
    } else if dirfd == libc::AT_FDCWD {
        caller.open_proc("cwd")?
    } else {
        caller.open_proc(&format!("fd/{dirfd}")).map_err(|e| if e == libc::ESRCH { libc::EBADF } else { e })?
    };
    let (mut path, mut own_proc) = rewrite_self(caller, &root, path);
    let mut slash_followed = false;
    for _ in 0..MAX_HOPS {
        let trailing_slash = path.ends_with(b"/") && path.len() > 1;
        let trimmed: &[u8] = {
            let mut p = &path[..];
            while p.len() > 1 && p.ends_with(b"/") {
                p = &p[..p.len() - 1];
            }
            p
        };
        let (dir_part, last): (&[u8], &[u8]) = match trimmed.iter().rposition(|&b| b == b'/') {
            Some(0) => (b"/", &trimmed[1..]),
            Some(i) => (&trimmed[..i], &trimmed[i + 1..]),
            None => (b".", trimmed),
        };
        let whole_dir = last.is_empty() || last == b"." || last == b"..";
        let walk: &[u8] = if whole_dir { trimmed } else { dir_part };
        let absolute = walk.starts_with(b"/");
        let start = if absolute { &root } else { &base };
        let walk_c = CString::new(walk).map_err(|_| libc::EINVAL)?;
        let resolve_flags = RESOLVE_NO_MAGICLINKS | if absolute { RESOLVE_IN_ROOT } else { 0 };
        let dir = notify::openat2(
            start.as_fd(),
            &walk_c,
            (libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) as u64,
            0,
            resolve_flags,
        )
        .map_err(|e| e.raw_os_error().unwrap_or(libc::EIO))?;
        let dir_path = fd_path(&dir)?;
        if in_a_host_process_dir(caller, &dir, &dir_path, (!whole_dir).then_some(last)) {
            return Err(libc::EACCES);
        }
        if whole_dir {
            return Ok(Resolved {
                dir,
                name: None,
                canonical: dir_path,
                trailing_slash: true,
                kind: Some(libc::S_IFDIR),
                own_proc: None,
                slash_followed,
            });
        }
        let name = CString::new(last).map_err(|_| libc::EINVAL)?;
        let kind =
            nix::sys::stat::fstatat(Some(dir.as_raw_fd()), name.as_c_str(), nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .ok()
                .map(|st| st.st_mode & libc::S_IFMT);
        let is_link = kind == Some(libc::S_IFLNK);
        if is_link && (follow || trailing_slash) {
            // Links in procfs are magic: their text is not a path to follow.
            let in_proc = nix::sys::statfs::fstatfs(&dir).is_ok_and(|s| s.filesystem_type().0 == PROC_SUPER_MAGIC);
            if in_proc {
                return Err(libc::ELOOP);
            }
            let target = nix::fcntl::readlinkat(Some(dir.as_raw_fd()), name.as_c_str()).map_err(|e| e as i32)?;
            let mut next = OsStr::as_bytes(&target).to_vec();
            if trailing_slash {
                next.push(b'/');
            }
            slash_followed |= !follow;
            base = dir;
            path = next;
            own_proc = None;
            continue;
        }
        let canonical = join(&dir_path, last);
        let own_proc = own_proc.filter(|_| !trailing_slash && kind == Some(libc::S_IFREG));
        return Ok(Resolved { dir, name: Some(name), canonical, trailing_slash, kind, own_proc, slash_followed });
    }
    Err(libc::ELOOP)
}

/// Whether git takes the directory `fd` for a git directory: it holds
/// `HEAD` and `objects` (or `commondir`, as a linked worktree's does).
/// Looser than git (which also wants a valid `HEAD` and `refs/`, and an
/// `objects` it may search): a directory that only looks like one is
/// treated as one. Without `strict` (where the sandbox may move `HEAD`
/// aside: mcp-git, whose git writes it), `objects` beside a `config` is
/// enough: rules on `.git/config` and `.git/objects/...` keep both in
/// place once the directory is known for one.
fn is_git_dir(fd: &OwnedFd, strict: bool) -> bool {
    let has = |name: &std::ffi::CStr| {
        nix::sys::stat::fstatat(Some(fd.as_raw_fd()), name, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW).is_ok()
    };
    let objects = has(c"objects");
    (has(c"HEAD") && (objects || has(c"commondir"))) || (!strict && objects && has(c"config"))
}

/// Whether the directory `fd` holds a `.git` file or directory (a work
/// tree's root). Not a socket, FIFO or symlink of that name: strict lets
/// the sandbox make none of those two kinds, but `bind` makes a socket
/// without the gate.
fn holds_dot_git(fd: &OwnedFd) -> bool {
    nix::sys::stat::fstatat(Some(fd.as_raw_fd()), c".git", nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
        .is_ok_and(|st| matches!(st.st_mode & libc::S_IFMT, libc::S_IFREG | libc::S_IFDIR))
}

/// The target's path as it would read if each git directory it is or lies
/// in were named `.git`, for each such directory not named `.git` already.
///
/// A `.git` *file* (`gitdir: PATH`: `git clone --separate-git-dir`, a bare
/// repository with worktrees beside it) sends git to a directory of any
/// name, whose `config` and hooks it obeys as it would a `.git`'s; so does
/// a bare repository. Rules that name `.git` must hold there too (a
/// helper's hunt rewrote `proj/.bare/config`, and the host's next `git
/// status` ran its fsmonitor).
///
/// Found from the resolved directory fd upwards (`..`, not by name), so
/// what is checked is where the act lands even if names change meanwhile,
/// and mapped onto `canonical` by the path the kernel gives each git
/// directory found. The walk ends at `/`. With `strict` (the sandbox can
/// make no `.git` anywhere: strict's `**/.git`) it also ends above a
/// directory holding a `.git` (a work tree's root: what lies in it is no
/// repository's state, as in a worktree checked out inside its bare
/// repository), other than the target itself; elsewhere a `.git` made
/// inside a git directory would end the walk short of it.
///
/// Err (the call is refused, never let through unchecked): the walk could
/// not go on or did not reach its end (EAGAIN), or a git directory found
/// no longer leads to `canonical` (a name changed meanwhile: EAGAIN) or
/// has no path (ENAMETOOLONG, deleted).
pub fn git_aliases(r: &Resolved, strict: bool) -> Result<Vec<String>, i32> {
    use std::os::unix::fs::MetadataExt;
    let open_dir = |at: &OwnedFd, name: &std::ffi::CStr| {
        nix::fcntl::openat(
            Some(at.as_raw_fd()),
            name,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map(notify::own)
        .map_err(|e| e as i32)
    };
    let id =
        |fd: &OwnedFd| nix::sys::stat::fstat(fd.as_raw_fd()).map(|st| (st.st_dev, st.st_ino)).map_err(|e| e as i32);
    let mut out = Vec::new();
    let (mut fd, mut at_target) = match (&r.name, r.kind) {
        (Some(name), Some(libc::S_IFDIR)) => (open_dir(&r.dir, name)?, true),
        _ => (r.dir.try_clone().map_err(|_| libc::EMFILE)?, false),
    };
    let root = std::fs::metadata("/").map(|m| (m.dev(), m.ino())).map_err(|_| libc::EIO)?;
    // As many levels as `canonical` names, and two more should a rename
    // meanwhile have put the target deeper; not reaching the end is an error.
    for _ in 0..r.canonical.matches('/').count() + 2 {
        if is_git_dir(&fd, strict) {
            let path = fd_path(&fd)?;
            let (parent, name) = path.rsplit_once('/').ok_or(libc::ENOENT)?;
            if name != ".git" {
                let rest =
                    r.canonical.strip_prefix(path.as_str()).filter(|rest| rest.is_empty() || rest.starts_with('/'));
                let rest = if path == "/" { Some(r.canonical.as_str()) } else { rest };
                out.push(format!("{parent}/.git{}", rest.ok_or(libc::EAGAIN)?));
            }
        }
        if (strict && !at_target && holds_dot_git(&fd)) || id(&fd)? == root {
            return Ok(out);
        }
        at_target = false;
        fd = open_dir(&fd, c"..")?;
    }
    Err(libc::EAGAIN)
}

#[cfg(test)]
mod tests {
    use super::own_rest;

    #[test]
    fn only_a_plain_name_of_the_callers_own_directory_counts_as_its_own() {
        let own = |p: &str, thread: bool| own_rest(p.as_bytes(), thread).map(|c| c.into_string().unwrap());
        assert_eq!(own("/maps", false).as_deref(), Some("maps"));
        assert_eq!(own("/maps", true).as_deref(), Some("maps"));
        for bad in ["", "/", "/.", "/..", "//maps", "/fd/1", "/root/etc/passwd", "/task/x/maps", "/task/1/..", "/maps/"]
        {
            assert_eq!(own(bad, false), None, "{bad:?}");
        }
    }
}
