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

/// Runs `f` with CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER out
/// of the calling thread's effective set (capabilities are per thread),
/// then puts them back: file permissions bind `f` as they bound the
/// sandbox. Without those capabilities it just runs `f`.
pub fn without_file_overrides<T>(f: impl FnOnce() -> T) -> T {
    #[repr(C)]
    struct CapHeader {
        version: u32,
        pid: libc::c_int,
    }
    #[repr(C)]
    #[derive(Clone, Copy, Default)]
    struct CapData {
        effective: u32,
        permitted: u32,
        inheritable: u32,
    }
    const OVERRIDES: u32 = 1 << 1 | 1 << 2 | 1 << 3;
    let header = CapHeader { version: 0x2008_0522, pid: 0 };
    let mut saved = [CapData::default(); 2];
    // SAFETY: capget writes two data structs into a live array.
    let got = unsafe { libc::syscall(libc::SYS_capget, &header, saved.as_mut_ptr()) } == 0;
    if !got || saved[0].effective & OVERRIDES == 0 {
        return f();
    }
    let mut lowered = saved;
    lowered[0].effective &= !OVERRIDES;
    // SAFETY: capset reads a live header and two live data structs.
    let set = |data: &[CapData; 2]| unsafe { libc::syscall(libc::SYS_capset, &header, data.as_ptr()) } == 0;
    let dropped = set(&lowered);
    let r = f();
    if dropped {
        set(&saved);
    }
    r
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
