//! Read-only questions to the kernel: which Landlock ABI, which seccomp
//! actions, whether a user namespace can be made.

/// The Landlock ABI version the kernel offers, or 0 when Landlock is missing or
/// disabled at boot.
pub fn landlock_abi() -> i32 {
    const LANDLOCK_CREATE_RULESET_VERSION: libc::c_uint = 1;
    // SAFETY: with a NULL attr, size 0 and the VERSION flag the kernel only
    // returns a number; no memory is read or written and no fd is created.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            LANDLOCK_CREATE_RULESET_VERSION,
        )
    };
    if v < 0 {
        0
    } else {
        v as i32
    }
}

/// Whether the kernel knows the seccomp return action `action`.
pub fn seccomp_action_available(action: u32) -> bool {
    // SAFETY: SECCOMP_GET_ACTION_AVAIL reads one u32 from a pointer to a live
    // local and changes nothing.
    let r = unsafe { libc::syscall(libc::SYS_seccomp, libc::SECCOMP_GET_ACTION_AVAIL, 0, &action as *const u32) };
    r == 0
}

/// Whether user namespaces look allowed, from the sysctls alone (no fork: this
/// runs on every launch). `doctor` double-checks with [`can_unshare_user_pid`];
/// if this guess is wrong the exec stage fails closed at the unshare step.
pub fn user_namespaces_allowed(uid: u32) -> bool {
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<i64>().ok());
    if read("/proc/sys/user/max_user_namespaces") == Some(0) {
        return false;
    }
    if uid != 0 {
        // Debian's switch, and Ubuntu's AppArmor restriction (which lets
        // unshare succeed but takes the capabilities needed afterwards).
        if read("/proc/sys/kernel/unprivileged_userns_clone") == Some(0)
            || read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == Some(1)
        {
            return false;
        }
    }
    std::path::Path::new("/proc/self/ns/user").exists()
}

/// Whether a child can create a user and PID namespace (tested in a throwaway
/// forked child, so this process is unchanged).
pub fn can_unshare_user_pid() -> bool {
    // SAFETY: the child only calls unshare and _exit, both async-signal-safe,
    // so forking a possibly multithreaded process is sound; the parent reaps
    // the child it created.
    unsafe {
        let pid = libc::fork();
        if pid == 0 {
            let r = libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWPID);
            libc::_exit(if r == 0 { 0 } else { 1 });
        }
        if pid < 0 {
            return false;
        }
        let mut status = 0;
        while libc::waitpid(pid, &mut status, 0) < 0 {
            if super::errno() != libc::EINTR {
                return false;
            }
        }
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }
}

/// Real and effective uid of this process.
pub fn ids() -> (u32, u32, u32) {
    // SAFETY: getuid/geteuid/getgid cannot fail and touch no memory.
    unsafe { (libc::getuid(), libc::geteuid(), libc::getgid()) }
}
