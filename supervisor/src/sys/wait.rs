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
    let mut set = forwarded();
    set.add(Signal::SIGCHLD);
    // Job control is ours to carry out (see `supervise`).
    set.add(Signal::SIGTSTP);
    set.add(Signal::SIGCONT);
    set.thread_block()?;
    Ok(set)
}

/// Waits for `child`, forwarding signals; returns the exit code to pass on.
pub fn supervise(child: u32, set: &SigSet) -> i32 {
    let pid = Pid::from_raw(child as i32);
    loop {
        if let Some(code) = reaped(pid) {
            return code;
        }
        // A timed wait: should a thread that does not block SIGCHLD ever
        // take it (a library's thread, a regression), the loop still sees
        // the child's end within a second instead of hanging.
        if let Some(sig) = wait_timeout_ms(set, 1000) {
            pass_on(pid, sig);
        }
    }
}

/// As [`supervise`], until `fd` has something to read (the sandbox's
/// seccomp listener: a syscall parked for the gate): then None, with
/// `child` still to be waited for. Also None at once, `fd` unwatched,
/// should the signals not be readable from a descriptor here; the caller
/// then does what it would do for a parked syscall. `hung_up` runs once
/// `fd` hangs up: every process under the filter has ended and been
/// reaped, which comes a little before `child` (the sandbox's init) ends.
/// From then on the command's status that init sends on `status` (see
/// stage::Spawned::status) ends the wait too, without init's end: the
/// caller then reaps it later ([`Reaper`]).
pub fn supervise_until(
    child: u32,
    set: &SigSet,
    fd: std::os::fd::BorrowedFd,
    status: std::os::fd::BorrowedFd,
    hung_up: impl FnOnce(),
) -> Option<i32> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use nix::sys::signalfd::{SfdFlags, SignalFd};
    use std::os::fd::{AsFd, AsRawFd};
    let pid = Pid::from_raw(child as i32);
    // The signals stay blocked: the descriptor takes them instead of
    // sigtimedwait, in the same poll as `fd`.
    let signals = SignalFd::with_flags(set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).ok()?;
    // Once every process of the sandbox has left the filter, the listener
    // hangs up (and stays readable for poll): the child's end comes next.
    let mut watching = true;
    let mut hung_up = Some(hung_up);
    // Once hung up, the child's end is a few tenths of a millisecond away:
    // looked for without sleeping, for a while (super::Spin).
    let mut spin = super::Spin::none();
    // What init sent so far, read once the listener has hung up; None once
    // its socket has ended (init is gone: `reaped` says so).
    let mut sent = Some(Vec::new());
    loop {
        if let Some(code) = reaped(pid) {
            return Some(code);
        }
        if let (false, Some(got)) = (watching || hung_up.is_some(), sent.as_mut()) {
            let mut buf = [0u8; 16];
            match nix::sys::socket::recv(status.as_raw_fd(), &mut buf, nix::sys::socket::MsgFlags::MSG_DONTWAIT) {
                Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => {}
                // Ended (or broken): init's exit says the rest.
                Ok(_) | Err(_) => sent = None,
            }
            if let Some(code) = sent.as_deref().and_then(super::stage::status_in) {
                return Some(code);
            }
        }
        let mut fds = [
            PollFd::new(signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(fd, PollFlags::POLLIN),
            PollFd::new(status, PollFlags::POLLIN),
        ];
        let n = match (watching, sent.is_some() && hung_up.is_none()) {
            (true, _) => 2,
            // Hung up: the signals, and init's socket.
            (false, true) => {
                fds.swap(1, 2);
                2
            }
            (false, false) => 1,
        };
        let timeout = if spin.again() { PollTimeout::ZERO } else { PollTimeout::from(1000u16) };
        match poll(&mut fds[..n], timeout) {
            Ok(_) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return None,
        }
        if watching {
            let revents = fds[1].revents().unwrap_or(PollFlags::empty());
            if revents.contains(PollFlags::POLLIN) {
                return None;
            }
            watching = !revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL);
            if revents.contains(PollFlags::POLLHUP) {
                if let Some(f) = hung_up.take() {
                    f();
                    spin = super::Spin::rounds(super::Spin::END);
                }
            }
        }
        while let Ok(Some(info)) = signals.read_signal() {
            if let Ok(sig) = Signal::try_from(info.ssi_signo as i32) {
                pass_on(pid, sig);
            }
        }
    }
}

/// Waits, when dropped, for the child to end if it has not been waited for
/// yet: for a run that went on with the status init sent
/// ([`supervise_until`]), before its last steps (a process of ours left
/// unreaped would be a zombie wherever the host's init does not reap what
/// it inherits). Only for a child that has ended or is ending.
pub struct Reaper(pub u32);

impl Drop for Reaper {
    fn drop(&mut self) {
        let pid = Pid::from_raw(self.0 as i32);
        while let Err(nix::errno::Errno::EINTR) = waitpid(pid, None) {}
    }
}

/// The child's exit code once it has ended (128+N when killed by signal
/// N; 125 when it cannot be waited for).
fn reaped(pid: Pid) -> Option<i32> {
    loop {
        return match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(_, code)) => Some(code),
            Ok(WaitStatus::Signaled(_, sig, _)) => Some(128 + sig as i32),
            Ok(_) => None,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => Some(125),
        };
    }
}

/// What the wait loops do with a signal taken for the sandbox.
fn pass_on(pid: Pid, sig: Signal) {
    match sig {
        Signal::SIGCHLD => {}
        // Ctrl-Z: the sandbox has a session of its own, out of reach of
        // the terminal's job control, and would go on running (reading
        // what the user types into their shell). Stop it first (init
        // stops all of it), then ourselves, as the shell expects; once
        // continued, continue it.
        Signal::SIGTSTP => {
            let _ = kill(pid, Signal::SIGTSTP);
            let _ = nix::sys::signal::raise(Signal::SIGSTOP);
            let _ = kill(pid, Signal::SIGCONT);
        }
        sig => {
            let _ = kill(pid, sig);
        }
    }
}

/// Gives the calling thread the CPUs of the process's main thread (those
/// portcullis was started with): for a thread started by one that was
/// moved for a while ([`LaunchWatch::share_this_cpu`]), which it would
/// otherwise keep for good.
pub fn adopt_process_cpus() {
    if let Some(a) = Affinity::of(nix::unistd::getpid().as_raw()) {
        a.restore();
    }
}

/// Forwards the signals that arrive while the command is still being
/// launched. They are blocked from the start (see [`block_signals`]) and
/// [`supervise`] only runs once the command has exec'd; a launch that waits
/// (an `ask exec` of the command itself, answered by a person) would
/// otherwise hold Ctrl-C for as long as it waits. The stage is the child of
/// the thread that clones it: a signal goes to that thread's children, as
/// supervise would send it, and the sandbox's init passes it down.
pub struct LaunchWatch {
    done: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Wakes the launch-signals thread when it is dropped. Blocked in every
/// thread (all start after [`LaunchWatch::start`]) and forwarded nowhere:
/// one sent from outside stays pending, or wakes that thread for nothing.
const WAKE: Signal = Signal::SIGURG;

/// What [`LaunchWatch::start_after`]'s first job gives, once done.
pub enum FirstJob<T> {
    Running(std::sync::mpsc::Receiver<T>),
    /// The thread could not start: the job ran in the caller.
    Done(T),
}

impl<T> FirstJob<T> {
    /// Waits for the job; None if its thread died without a result.
    pub fn wait(self) -> Option<T> {
        match self {
            FirstJob::Running(rx) => rx.recv().ok(),
            FirstJob::Done(t) => Some(t),
        }
    }
}

impl LaunchWatch {
    /// Moves the thread (and what is left of its first job) onto the
    /// calling thread's CPU, until the job ends: once the stage is
    /// configured, the sandbox's init, on the other CPU, forks the command,
    /// which confines itself and waits for the go-ahead; queued behind
    /// this thread's job (the audit log's opening), it waited 0.2 ms here.
    /// The go-ahead needs both this thread's job and the caller's, which
    /// take turns on one CPU meanwhile.
    pub fn share_this_cpu(&self) {
        use std::os::unix::thread::JoinHandleExt;
        let Some(t) = &self.thread else { return };
        // SAFETY: takes nothing.
        let here = unsafe { libc::sched_getcpu() };
        if !(0..libc::CPU_SETSIZE).contains(&here) {
            return;
        }
        // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `here` is below CPU_SETSIZE; `set` is live. The thread is
        // not joined, so its pthread_t is live.
        unsafe {
            libc::CPU_SET(here as usize, &mut set);
            libc::pthread_setaffinity_np(t.as_pthread_t(), CPU_SET_SIZE, &set);
        }
    }

    /// Call in the thread that will fork the stage, after [`block_signals`].
    pub fn start() -> LaunchWatch {
        Self::start_after(|| ()).0
    }

    /// As [`start`](Self::start), on a thread that first does `job`. A
    /// thread costs its creator about a tenth of a millisecond here, so one
    /// that would only wait until the stage is forked does a job before
    /// that; signals that arrive meanwhile wait (there is nothing to pass
    /// them to yet, or the launch is waiting for the job).
    pub fn start_after<T: Send + 'static>(job: impl FnOnce() -> T + Send + 'static) -> (LaunchWatch, FirstJob<T>) {
        use std::sync::atomic::{AtomicBool, Ordering};
        let done = std::sync::Arc::new(AtomicBool::new(false));
        let forker = nix::unistd::gettid();
        let mut set = forwarded();
        let mut wake = SigSet::empty();
        wake.add(WAKE);
        if wake.thread_block().is_ok() {
            set.add(WAKE);
        }
        let watching = done.clone();
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let affinity = Affinity::current();
        let moved = std::sync::Arc::new(AtomicBool::new(false));
        let moved_here = moved.clone();
        let job = std::sync::Arc::new(std::sync::Mutex::new(Some(job)));
        let job_here = job.clone();
        let spawned = std::thread::Builder::new().name("launch-signals".into()).spawn(move || {
            // Waits until moved to another CPU (Affinity::elsewhere): a new
            // thread may run first on its creator's CPU, ahead of the
            // creator (it did here in a third of the launches, when the
            // parent woken by our exec had asked for a reschedule), and
            // did its job there for 0.25 ms while the creator waited.
            // Moved while it sleeps, it wakes on the other CPU and stays
            // there while that is busy; its affinity is restored at once,
            // so the threads the job starts may run anywhere.
            while !moved_here.load(Ordering::Acquire) {
                std::thread::park();
            }
            if let Some(a) = affinity {
                a.restore();
            }
            if let Some(job) = job.lock().ok().and_then(|mut j| j.take()) {
                let _ = tx.send(job());
            }
            // Undoes share_this_cpu, should it have come during the job.
            if let Some(a) = affinity {
                a.restore();
            }
            drop(tx);
            let mut held: Option<Signal> = None;
            loop {
                let finished = watching.load(Ordering::Acquire);
                if held.is_none() {
                    if finished {
                        return;
                    }
                    held = wait_timeout_ms(&set, 100).filter(|&s| s != WAKE);
                } else {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                let Some(sig) = held else { continue };
                let children = children_of(forker);
                if !children.is_empty() {
                    for c in children {
                        let _ = kill(c, sig);
                    }
                    held = None;
                } else if finished {
                    // Nothing was forked (the launch failed): leave the
                    // signal pending for whoever waits next.
                    let _ = kill(nix::unistd::getpid(), sig);
                    return;
                }
            }
        });
        let first = match spawned {
            Ok(ref t) => {
                if let Some(a) = affinity {
                    a.elsewhere(t);
                }
                moved.store(true, Ordering::Release);
                t.thread().unpark();
                FirstJob::Running(rx)
            }
            Err(_) => {
                // Without it a signal waits for the launch to end, as before.
                done.store(true, Ordering::Release);
                // Never started, so the job is still here.
                let job = job_here.lock().ok().and_then(|mut j| j.take());
                match job {
                    Some(job) => FirstJob::Done(job()),
                    None => FirstJob::Running(rx),
                }
            }
        };
        (LaunchWatch { done, thread: spawned.ok() }, first)
    }
}

/// Dropped once the command has exec'd (or the launch failed): supervise
/// takes over. The thread is woken and joined (after passing on a signal
/// it already took), so that no thread of the launch outlives it: a run
/// that ends single-threaded finishes its audit log after exiting (see
/// [`super::finish`]).
impl Drop for LaunchWatch {
    fn drop(&mut self) {
        self.done.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            use std::os::unix::thread::JoinHandleExt;
            // SAFETY: the thread is not joined yet, so its pthread_t is live.
            unsafe { libc::pthread_kill(t.as_pthread_t(), WAKE as libc::c_int) };
            let _ = t.join();
        }
    }
}

/// The CPUs this thread may run on.
#[derive(Clone, Copy)]
struct Affinity(libc::cpu_set_t);

const CPU_SET_SIZE: usize = std::mem::size_of::<libc::cpu_set_t>();

impl Affinity {
    fn current() -> Option<Affinity> {
        Self::of(0)
    }

    /// Those of thread `tid` (0: the calling one).
    fn of(tid: libc::pid_t) -> Option<Affinity> {
        // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a live cpu_set_t of CPU_SET_SIZE bytes.
        (unsafe { libc::sched_getaffinity(tid, CPU_SET_SIZE, &mut set) } == 0).then_some(Affinity(set))
    }

    /// Moves a thread just started off the CPU this one runs on, when
    /// another may run it. Measured here (2 vCPUs): the scheduler queued a
    /// new thread behind its creator for over a millisecond while the
    /// other CPU idled, so a job handed to it was not done alongside the
    /// creator's work at all.
    fn elsewhere<T>(self, thread: &std::thread::JoinHandle<T>) {
        use std::os::unix::thread::JoinHandleExt;
        let mut set = self.0;
        // SAFETY: takes nothing.
        let here = unsafe { libc::sched_getcpu() };
        if here < 0 || here as usize >= libc::CPU_SETSIZE as usize {
            return;
        }
        // SAFETY: `here` is below CPU_SETSIZE; `set` is live.
        unsafe { libc::CPU_CLR(here as usize, &mut set) };
        // SAFETY: reads the live `set`.
        if unsafe { libc::CPU_COUNT(&set) } == 0 {
            return;
        }
        // SAFETY: the thread is not joined, so its pthread_t is live; `set` is live.
        unsafe { libc::pthread_setaffinity_np(thread.as_pthread_t(), CPU_SET_SIZE, &set) };
    }

    /// Undoes [`elsewhere`](Self::elsewhere), from the thread itself.
    fn restore(self) {
        // SAFETY: `self.0` is a live cpu_set_t of CPU_SET_SIZE bytes.
        unsafe { libc::sched_setaffinity(0, CPU_SET_SIZE, &self.0) };
    }
}

fn forwarded() -> SigSet {
    let mut set = SigSet::empty();
    for s in FORWARDED {
        set.add(s);
    }
    set
}

/// The children of thread `tid` of this process.
fn children_of(tid: Pid) -> Vec<Pid> {
    std::fs::read_to_string(format!("/proc/self/task/{tid}/children"))
        .map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).map(Pid::from_raw).collect())
        .unwrap_or_default()
}

/// sigtimedwait for the signals of `set`; None on timeout, EINTR or error.
fn wait_timeout_ms(set: &SigSet, ms: i64) -> Option<Signal> {
    let ts = libc::timespec { tv_sec: ms / 1000, tv_nsec: (ms % 1000) * 1_000_000 };
    // SAFETY: `set` is a live sigset_t; siginfo may be null; `ts` is live.
    let sig = unsafe { libc::sigtimedwait(set.as_ref(), std::ptr::null_mut(), &ts) };
    if sig <= 0 {
        return None;
    }
    Signal::try_from(sig).ok()
}
