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
