//! For `cargo xtask bench`: a forked worker that installs an approval
//! filter, hands the listener over, then times a syscall in a loop.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::errno;
use super::stage::Insn;

/// What the worker times.
#[derive(Clone)]
pub enum Work {
    Getppid,
    /// getppid, one call every this many nanoseconds (a steady rate the
    /// audit writer can keep up with, instead of back to back).
    GetppidEvery(u64),
    /// open(path, O_WRONLY|O_APPEND) + close.
    OpenAppend(CString),
}

/// A worker waiting for the go signal.
pub struct Worker {
    pid: libc::pid_t,
    go: OwnedFd,
    results: OwnedFd,
    iters: usize,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into a live array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fresh fds owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks the worker. With `filter`, the worker installs it with
/// NEW_LISTENER and sends the listener over `sock` before waiting.
/// Call while the process is single-threaded: the worker allocates.
pub fn fork_worker(filter: Option<(&[Insn], &OwnedFd)>, work: Work, iters: usize) -> io::Result<Worker> {
    let (go_r, go_w) = pipe()?;
    let (res_r, res_w) = pipe()?;
    let mut times: Vec<u64> = Vec::with_capacity(iters);
    // SAFETY: the child only makes syscalls on fds and buffers allocated
    // before fork, then _exits; the parent keeps its own copies.
    unsafe {
        let pid = libc::fork();
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid > 0 {
            return Ok(Worker { pid, go: go_w, results: res_r, iters });
        }
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0);
        if let Some((prog, sock)) = filter {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            let fprog =
                libc::sock_fprog { len: prog.len() as libc::c_ushort, filter: prog.as_ptr() as *mut libc::sock_filter };
            let l = libc::syscall(
                libc::SYS_seccomp,
                libc::SECCOMP_SET_MODE_FILTER,
                libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                &fprog,
            );
            if l < 0 || super::stage::send_fd(sock.as_raw_fd(), l as RawFd).is_err() {
                libc::_exit(1);
            }
            libc::close(l as RawFd);
        }
        let mut b = [0u8; 1];
        if libc::read(go_r.as_raw_fd(), b.as_mut_ptr().cast(), 1) != 1 {
            libc::_exit(1);
        }
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        let now = |ts: &mut libc::timespec| {
            libc::clock_gettime(libc::CLOCK_MONOTONIC, ts);
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        };
        let op = || match &work {
            Work::Getppid | Work::GetppidEvery(_) => {
                libc::getppid();
            }
            Work::OpenAppend(p) => {
                let fd = libc::open(p.as_ptr(), libc::O_WRONLY | libc::O_APPEND | libc::O_CLOEXEC);
                if fd >= 0 {
                    libc::close(fd);
                }
            }
        };
        for _ in 0..iters / 10 {
            op();
        }
        let gap = match &work {
            Work::GetppidEvery(gap) => *gap,
            _ => 0,
        };
        let mut next = 0u64;
        for _ in 0..iters {
            if gap > 0 {
                // Sleep to the next deadline (an open-loop load: the caller
                // does not hog a core between calls).
                let now_ns = now(&mut ts);
                next = if next == 0 { now_ns } else { next + gap };
                let deadline = libc::timespec {
                    tv_sec: (next / 1_000_000_000) as libc::time_t,
                    tv_nsec: (next % 1_000_000_000) as libc::c_long,
                };
                libc::clock_nanosleep(libc::CLOCK_MONOTONIC, libc::TIMER_ABSTIME, &deadline, std::ptr::null_mut());
            }
            let t0 = now(&mut ts);
            op();
            times.push(now(&mut ts) - t0);
        }
        let bytes = std::slice::from_raw_parts(times.as_ptr().cast::<u8>(), times.len() * 8);
        let mut off = 0;
        while off < bytes.len() {
            let n = libc::write(res_w.as_raw_fd(), bytes[off..].as_ptr().cast(), bytes.len() - off);
            if n <= 0 {
                libc::_exit(1);
            }
            off += n as usize;
        }
        libc::_exit(0);
    }
}

impl Worker {
    /// Starts the timed loop and returns each iteration's nanoseconds.
    pub fn run(self) -> io::Result<Vec<u64>> {
        // SAFETY: one byte from a live buffer to a pipe we own.
        if unsafe { libc::write(self.go.as_raw_fd(), b"g".as_ptr().cast(), 1) } != 1 {
            return Err(io::Error::last_os_error());
        }
        let mut bytes = vec![0u8; self.iters * 8];
        let mut off = 0;
        while off < bytes.len() {
            // SAFETY: reads into the unread tail of a live buffer.
            let n =
                unsafe { libc::read(self.results.as_raw_fd(), bytes[off..].as_mut_ptr().cast(), bytes.len() - off) };
            if n <= 0 {
                let e = errno();
                return Err(io::Error::other(format!("worker stopped early (errno {e})")));
            }
            off += n as usize;
        }
        let mut status = 0;
        // SAFETY: reaps our own child.
        unsafe { libc::waitpid(self.pid, &mut status, 0) };
        Ok(bytes.chunks(8).map(|c| u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]))).collect())
    }
}
