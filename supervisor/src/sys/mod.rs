//! The only place for `unsafe`: thin wrappers over syscalls, and the exec
//! stage that runs between fork and exec.
//!
//! Everything called after fork must be async-signal-safe and allocation-free:
//! the supervisor may have other threads holding the allocator's lock.

pub mod bench;
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

/// Empties the calling thread's effective, permitted and inheritable
/// capability sets (capset acts per thread). Allocation-free: the exec stage
/// calls it between fork and exec. Returns the errno on failure.
pub(crate) fn clear_capabilities() -> Result<(), i32> {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    // _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set.
    let header = CapHeader { version: 0x2008_0522, pid: 0 };
    let data = [CapData { effective: 0, permitted: 0, inheritable: 0 }; 2];
    // SAFETY: capset reads a live header and two live data structs.
    if unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } != 0 {
        return Err(errno());
    }
    Ok(())
}

/// Moves the calling thread to SCHED_IDLE (a per-thread attribute on
/// Linux). For the audit writers and signers: signing and fsync are
/// background work, and a thread a sandboxed call waits on must preempt them
/// at once when it wakes, which the kernel guarantees only against
/// SCHED_IDLE (a nice-10 thread may finish its slice first). They still get
/// the CPU whenever it is idle, and a small share when it is not; if they
/// fall behind, their bounded queues make the callers wait or count drops.
pub fn background_thread() {
    // SAFETY: sched_setscheduler reads a live sched_param; tid 0 is the caller.
    unsafe {
        let param = libc::sched_param { sched_priority: 0 };
        libc::sched_setscheduler(0, libc::SCHED_IDLE, &param);
    }
}
