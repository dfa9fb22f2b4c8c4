//! Opening paths for Landlock rules, and adding them.

use std::os::fd::{FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};

/// An `O_PATH` fd for `path`. With `follow_symlinks` false, any symlink along
/// the way (and any /proc magic link) fails with ELOOP.
pub fn open_path(path: &str, follow_symlinks: bool) -> Result<OwnedFd, Errno> {
    let mut how = OpenHow::new().flags(OFlag::O_PATH | OFlag::O_CLOEXEC);
    if !follow_symlinks {
        how = how.resolve(ResolveFlag::RESOLVE_NO_SYMLINKS | ResolveFlag::RESOLVE_NO_MAGICLINKS);
    }
    let fd = match openat2(libc::AT_FDCWD, path, how) {
        Ok(fd) => fd,
        // Kernels before 5.6 have no openat2: plain open, refusing a final symlink.
        Err(Errno::ENOSYS) => {
            let mut flags = OFlag::O_PATH | OFlag::O_CLOEXEC;
            if !follow_symlinks {
                flags |= OFlag::O_NOFOLLOW;
            }
            nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty())?
        }
        Err(e) => return Err(e),
    };
    // SAFETY: the kernel just returned this fd; nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Adds a Landlock path-beneath rule to `ruleset`: `access` beneath the
/// file or directory `parent` is open on. The errno on failure.
/// Allocation-free (the exec stage grants its private /proc with it).
pub fn add_path_beneath(ruleset: std::os::fd::RawFd, parent: std::os::fd::RawFd, access: u64) -> Result<(), i32> {
    #[repr(C, packed)]
    struct PathBeneath {
        allowed_access: u64,
        parent_fd: i32,
    }
    const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;
    let attr = PathBeneath { allowed_access: access, parent_fd: parent };
    // SAFETY: the attribute is a live packed struct on the stack, as the
    // kernel's landlock_path_beneath_attr; the fds are only read.
    match unsafe { libc::syscall(libc::SYS_landlock_add_rule, ruleset, LANDLOCK_RULE_PATH_BENEATH, &attr, 0u32) } {
        0 => Ok(()),
        _ => Err(Errno::last_raw()),
    }
}
