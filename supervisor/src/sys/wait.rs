//! The supervisor's side of the lifecycle: forward signals to the sandbox,
//! wait for it, and turn its end into an exit code.

use nix::sys::signal::{kill, SigSet, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

/// Signals the supervisor forwards to the sandbox.
pub const FORWARDED: [Signal; 6] =
    [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGQUIT, Signal::SIGUSR1, Signal::SIGUSR2];

/// Blocks the forwarded signals and SIGCHLD in this thread, before spawning,
/// so none is lost between spawn and the wait loop. Start every other thread
/// (MCP proxy, audit writer) after this: a thread created before it keeps the
/// signals unblocked, may take SIGCHLD, and the wait loop would never wake.
pub fn block_signals() -> nix::Result<SigSet> {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set.add(Signal::SIGCHLD);
    set.thread_block()?;
    Ok(set)
}

/// Waits for `child`, forwarding signals; returns the exit code to pass on.
pub fn supervise(child: u32, set: &SigSet) -> i32 {
    let pid = Pid::from_raw(child as i32);
    loop {
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => return code,
            Ok(WaitStatus::Signaled(_, sig, _)) => return 128 + sig as i32,
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return 125,
        }
        // A timed wait: should a thread that does not block SIGCHLD ever
        // take it (a library's thread, a regression), the loop still sees
        // the child's end within a second instead of hanging.
        match wait_timeout(set, 1) {
            Some(Signal::SIGCHLD) | None => {}
            Some(sig) => {
                let _ = kill(pid, sig);
            }
        }
    }
}

/// sigtimedwait for the signals of `set`; None on timeout, EINTR or error.
fn wait_timeout(set: &SigSet, secs: libc::time_t) -> Option<Signal> {
    let ts = libc::timespec { tv_sec: secs, tv_nsec: 0 };
    // SAFETY: `set` is a live sigset_t; siginfo may be null; `ts` is live.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if sig <= 0 {
        return None;
    }
    Signal::try_from(sig).ok()
}
