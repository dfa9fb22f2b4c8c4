//! Opening paths for Landlock rules.

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
