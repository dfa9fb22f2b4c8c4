//! Seccomp user notification: the listener's ioctls, reading the notifying
//! process's memory, borrowing its fds, and confining the supervisor thread
//! that performs approved operations on its behalf.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::errno;

/// One parked syscall.
#[derive(Clone, Copy, Debug)]
pub struct Notif {
    pub id: u64,
    /// Thread id of the caller, in our PID namespace.
    pub pid: u32,
    pub nr: i32,
    pub arch: u32,
    pub args: [u64; 6],
}

/// Waits for the next notification. `Ok(None)`: the notification vanished
/// before we read it (the caller was killed), try again.
pub fn recv(listener: BorrowedFd) -> io::Result<Option<Notif>> {
    // SAFETY: the kernel fills a zeroed struct of the size the ioctl encodes.
    unsafe {
        let mut n: libc::seccomp_notif = std::mem::zeroed();
        if libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_RECV, &mut n) != 0 {
            return match errno() {
                libc::ENOENT | libc::EINTR => Ok(None),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        Ok(Some(Notif { id: n.id, pid: n.pid, nr: n.data.nr, arch: n.data.arch, args: n.data.args }))
    }
}

/// Is notification `id` still pending? After reading the caller's memory,
/// this proves the memory belonged to the caller (not a recycled pid).
pub fn id_valid(listener: BorrowedFd, id: u64) -> bool {
    // SAFETY: the ioctl reads one u64 from a live stack value.
    unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ID_VALID, &id) == 0 }
}

/// Answers `id`: the syscall returns `val` (when `error` is 0) or fails
/// with `error` (a positive errno); with `cont` the kernel runs it as asked.
pub fn respond(listener: BorrowedFd, id: u64, val: i64, error: i32, cont: bool) -> io::Result<()> {
    let resp = libc::seccomp_notif_resp {
        id,
        val,
        error: -error,
        flags: if cont { libc::SECCOMP_USER_NOTIF_FLAG_CONTINUE as u32 } else { 0 },
    };
    // SAFETY: the ioctl reads a live, fully initialised struct.
    if unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SEND, &resp) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Installs `fd` in the caller's fd table and, with `send`, answers the
/// syscall with the new fd number in one step (nothing else can run between).
pub fn addfd_send(listener: BorrowedFd, id: u64, fd: BorrowedFd, cloexec: bool) -> io::Result<i32> {
    let add = libc::seccomp_notif_addfd {
        id,
        flags: libc::SECCOMP_ADDFD_FLAG_SEND as u32,
        srcfd: fd.as_raw_fd() as u32,
        newfd: 0,
        newfd_flags: if cloexec { libc::O_CLOEXEC as u32 } else { 0 },
    };
    // SAFETY: the ioctl reads a live, fully initialised struct.
    let r = unsafe { libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_ADDFD, &add) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

/// Asks the kernel to wake the supervisor's thread synchronously
/// (SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP, Linux 6.6): a round trip costs a
/// few microseconds instead of a scheduler hop. Older kernels: no-op error.
pub fn set_sync_wakeup(listener: BorrowedFd) -> io::Result<()> {
    const SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: u64 = 1;
    // SAFETY: the ioctl takes the flag value itself.
    let r = unsafe {
        libc::ioctl(listener.as_raw_fd(), libc::SECCOMP_IOCTL_NOTIF_SET_FLAGS, SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP)
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A pidfd for `pid` (a thread id is fine since Linux 6.9 with
/// PIDFD_THREAD; we pass the thread group leader).
pub fn pidfd_open(pid: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; on success the kernel returns a new fd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// A pidfd for the peer of a connected unix socket, as the kernel recorded
/// it at connect (or listen) time: `SO_PEERPIDFD`, Linux 6.5+. `Ok(None)`
/// where the kernel does not have it; an error (ESRCH) when the peer has
/// exited.
pub fn peer_pidfd(sock: BorrowedFd) -> io::Result<Option<OwnedFd>> {
    const SO_PEERPIDFD: libc::c_int = 77;
    let mut fd: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `fd` and `len` are live locals of the sizes passed.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_PEERPIDFD,
            (&mut fd as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOPROTOOPT) => Ok(None),
            _ => Err(e),
        };
    }
    // SAFETY: on success the kernel returned a new fd we own.
    Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Whether the process behind `pidfd` is still running (signal 0).
pub fn pidfd_alive(pidfd: BorrowedFd) -> bool {
    // SAFETY: plain integer arguments and a null siginfo.
    unsafe { libc::syscall(libc::SYS_pidfd_send_signal, pidfd.as_raw_fd(), 0, std::ptr::null::<u8>(), 0) == 0 }
}

/// Our own handle on the process's fd `target`: the same open file description.
pub fn pidfd_getfd(pidfd: BorrowedFd, target: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain integer arguments; on success the kernel returns a new fd we own.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), target, 0) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Confines the calling thread like the sandbox: its own cwd/umask, no
/// capabilities, no_new_privs, and the sandbox's Landlock ruleset. What it
/// then does on the sandbox's behalf, the kernel checks as it would for
/// the sandbox. Only this thread is affected.
pub fn confine_thread(ruleset: Option<&OwnedFd>) -> io::Result<()> {
    confine_thread_but_landlock()?;
    restrict_thread(ruleset)
}

/// [`confine_thread`] without its last step, [`restrict_thread`].
pub fn confine_thread_but_landlock() -> io::Result<()> {
    // SAFETY: thread-local attributes set through syscalls with stack data.
    unsafe {
        if libc::unshare(libc::CLONE_FS) != 0 {
            return Err(io::Error::last_os_error());
        }
        super::clear_capabilities().map_err(io::Error::from_raw_os_error)?;
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Puts the calling thread (which has no_new_privs) under `ruleset` as it
/// stands now: rules added to it later do not reach this thread.
pub fn restrict_thread(ruleset: Option<&OwnedFd>) -> io::Result<()> {
    if let Some(r) = ruleset {
        // SAFETY: a plain fd and a zero flags word.
        if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, r.as_raw_fd(), 0u32) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Sets this thread's umask (per thread after `confine_thread`'s CLONE_FS unshare).
pub fn set_umask(mask: u32) {
    // SAFETY: umask takes and returns plain integers.
    unsafe { libc::umask(mask as libc::mode_t) };
}

/// `openat2(dirfd, path, how)`; `path` must not contain NUL.
pub fn openat2(dir: BorrowedFd, path: &std::ffi::CStr, flags: u64, mode: u64, resolve: u64) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow { flags, mode, resolve };
    // SAFETY: `path` is NUL-terminated; `how` is a live struct of the size passed.
    let r = unsafe {
        libc::syscall(libc::SYS_openat2, dir.as_raw_fd(), path.as_ptr(), &how, std::mem::size_of::<OpenHow>())
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `r` is a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// Raw fd number returned by a syscall made in the confined thread, owned from now on.
pub fn own(fd: i32) -> OwnedFd {
    // SAFETY: callers pass an fd a syscall just returned to this process.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Installs `prog` with SECCOMP_FILTER_FLAG_NEW_LISTENER in the calling
/// process and returns the listener. For tests and the benchmark; the
/// sandbox installs its own in the exec stage.
pub fn install_listener(prog: &[super::stage::Insn]) -> io::Result<OwnedFd> {
    let fprog = libc::sock_fprog { len: prog.len() as libc::c_ushort, filter: prog.as_ptr() as *mut libc::sock_filter };
    // SAFETY: `fprog` points at a live program for the duration of the call.
    let r = unsafe {
        libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, libc::SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog)
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(own(r as i32))
}

/// `connect(fd, addr)` with a raw sockaddr the supervisor copied.
pub fn connect_raw(fd: BorrowedFd, addr: &[u8]) -> Result<(), i32> {
    // SAFETY: `addr` is a live buffer of the length passed.
    let r = unsafe { libc::connect(fd.as_raw_fd(), addr.as_ptr().cast(), addr.len() as libc::socklen_t) };
    if r != 0 {
        return Err(errno());
    }
    Ok(())
}

/// The socket's address family (SO_DOMAIN), or None if `fd` is not a socket.
pub fn sock_domain(fd: BorrowedFd) -> Option<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into the live int.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(v)
}
