//! The only place for `unsafe`: thin wrappers over syscalls, and the exec
//! stage that runs between fork and exec.
//!
//! Everything called after fork must be async-signal-safe and allocation-free:
//! the supervisor may have other threads holding the allocator's lock.

pub mod bench;
pub mod finish;
pub mod fs;
pub mod notify;
pub mod probe;
pub mod stage;
pub mod wait;

use std::io;

/// errno of the last failed call, without allocating.
pub(crate) fn errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// capget/capset's header, for _LINUX_CAPABILITY_VERSION_3 (two 32-bit
/// words per set) and the calling thread.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

const CAP_HEADER: CapHeader = CapHeader { version: 0x2008_0522, pid: 0 };

/// One 32-bit word of each capability set.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// capset for the calling thread; the errno on failure. Allocation-free.
fn capset(data: &[CapData; 2]) -> Result<(), i32> {
    // SAFETY: capset reads a live header and two live data structs.
    match unsafe { libc::syscall(libc::SYS_capset, &CAP_HEADER, data.as_ptr()) } {
        0 => Ok(()),
        _ => Err(errno()),
    }
}

/// Empties the calling thread's effective, permitted and inheritable
/// capability sets (capset acts per thread). Allocation-free: the exec stage
/// calls it between fork and exec. Returns the errno on failure.
pub(crate) fn clear_capabilities() -> Result<(), i32> {
    capset(&[CapData::default(); 2])
}

/// Runs `f` with CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER out
/// of the calling thread's effective set (capabilities are per thread),
/// then puts them back: file permissions bind `f` as they bound the
/// sandbox. Without those capabilities it just runs `f`.
pub fn without_file_overrides<T>(f: impl FnOnce() -> T) -> T {
    const OVERRIDES: u32 = 1 << 1 | 1 << 2 | 1 << 3;
    let mut saved = [CapData::default(); 2];
    // SAFETY: capget writes two data structs into a live array.
    let got = unsafe { libc::syscall(libc::SYS_capget, &CAP_HEADER, saved.as_mut_ptr()) } == 0;
    if !got || saved[0].effective & OVERRIDES == 0 {
        return f();
    }
    let mut lowered = saved;
    lowered[0].effective &= !OVERRIDES;
    let dropped = capset(&lowered).is_ok();
    let r = f();
    if dropped {
        let _ = capset(&saved);
    }
    r
}

/// What the `portcullis` binary needs of the process set-up that Rust's
/// runtime does before `main`, which the binary skips (`#![no_main]` in
/// main.rs): standard fds 0-2 open (on /dev/null when closed), so that no
/// file the supervisor opens later becomes its stdout; and SIGPIPE
/// ignored, so a closed pipe is an EPIPE error, not death (the stage puts
/// it back to the default for the command). What is skipped is the stack
/// overflow handler's set-up: a read of /proc/self/maps and an alternate
/// signal stack mapped for the main thread and every thread after it, and
/// unmapped again, which cost about 0.12 ms of each launch here (A/B,
/// 300 interleaved starts of a static binary that only exits). Without
/// it a stack overflow is a plain SIGSEGV instead of a message and an
/// abort: the supervisor dies either way, and the sandbox with it.
pub fn start_process() {
    let mut fds = [0, 1, 2].map(|fd| libc::pollfd { fd, events: 0, revents: 0 });
    // SAFETY: poll reads and writes the three pollfds of a live local
    // array; fcntl, open and signal take plain integers and a static
    // NUL-terminated path.
    unsafe {
        let polled = libc::poll(fds.as_mut_ptr(), 3, 0) >= 0;
        for p in fds {
            let closed = match polled {
                true => p.revents & libc::POLLNVAL != 0,
                false => libc::fcntl(p.fd, libc::F_GETFD) < 0 && errno() == libc::EBADF,
            };
            // The lowest free fd: the closed one.
            if closed && libc::open(c"/dev/null".as_ptr(), libc::O_RDWR) != p.fd {
                libc::abort();
            }
        }
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
}

/// Puts the calling thread back at nice 0 after [`background_thread`], when
/// what it does has become what the run waits for. Unprivileged without
/// RLIMIT_NICE room this fails, and the thread stays where it was.
pub fn foreground_thread() {
    // SAFETY: gettid and setpriority take and return plain integers.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 0);
    }
}

/// Lowers the calling thread to nice 10 (a per-thread attribute on Linux).
/// For the audit writers and signers: signing and fsync are background work
/// that should yield the CPU to the threads a sandboxed call waits on. Not
/// SCHED_IDLE: these threads hold the log's file lock, which other
/// supervisors wait for, and must keep a bounded share of a busy CPU.
pub fn background_thread() {
    // SAFETY: gettid and setpriority take and return plain integers.
    unsafe {
        let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, 10);
    }
}

/// Looks for something that is a few tenths of a millisecond away without
/// sleeping, for a bounded number of rounds: a CPU that idles is slow to
/// wake on a virtual machine (tens of microseconds on this project's
/// 2-vCPU host), and a wait that sleeps pays for that wake-up. Each round
/// yields the CPU to whatever else wants it (often what is awaited).
pub struct Spin(u32);

impl Spin {
    /// The rounds a run spends looking for its end: init's exit, the
    /// kernel-audit reader's marker and the kernel's last answer. A round
    /// is a syscall or three, a microsecond or two here.
    pub const END: u32 = 512;

    /// No rounds: waits sleep from the start.
    pub const fn none() -> Spin {
        Spin(0)
    }

    /// `n` rounds before waits sleep.
    pub const fn rounds(n: u32) -> Spin {
        Spin(n)
    }

    /// Whether to look once more without sleeping: yields the CPU and
    /// counts the round. False once the rounds are spent.
    pub fn again(&mut self) -> bool {
        if self.0 == 0 {
            return false;
        }
        self.0 -= 1;
        let _ = nix::sched::sched_yield();
        true
    }
}
