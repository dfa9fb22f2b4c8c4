//! What this kernel and this process can enforce, probed once per run.

use std::path::PathBuf;

use serde::Serialize;

use crate::sandbox::limits::{self, CgroupController};
use crate::sys::probe;

/// The newest Landlock ABI this build was tested against. Rights of newer
/// ABIs are not requested, so a kernel update cannot silently change what a
/// profile means.
pub const MAX_TESTED_ABI: i32 = 7;

#[derive(Clone, Debug, Serialize)]
pub struct Features {
    pub release: String,
    /// The kernel's Landlock ABI (0: none).
    pub landlock_abi: i32,
    /// The ABI Portcullis uses: min(kernel, MAX_TESTED_ABI).
    pub landlock_abi_used: i32,
    pub seccomp_filter: bool,
    pub seccomp_user_notif: bool,
    pub user_namespaces: bool,
    pub uid: u32,
    pub euid: u32,
    pub gid: u32,
    /// Filled by [`Features::probe_all`] (doctor, explain); launches look
    /// cgroups up only when a limit needs one.
    pub pids_cgroup: Option<CgroupController>,
    pub memory_cgroup: Option<CgroupController>,
    /// Whether this process may read the kernel audit log (Landlock denials).
    pub audit_read: bool,
}

impl Features {
    pub fn probe() -> Features {
        let release =
            nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
        let abi = probe::landlock_abi();
        // PORTCULLIS_LANDLOCK_ABI=N behaves as if the kernel had ABI N (only
        // lower): how the tests and the VM suite check older-kernel behaviour.
        let cap = std::env::var("PORTCULLIS_LANDLOCK_ABI").ok().and_then(|v| v.parse::<i32>().ok());
        let used = match cap {
            Some(c) if c >= 0 && c < abi => c,
            _ => abi,
        };
        let (uid, euid, gid) = probe::ids();
        Features {
            release,
            landlock_abi: abi,
            landlock_abi_used: used.min(MAX_TESTED_ABI),
            seccomp_filter: probe::seccomp_action_available(libc::SECCOMP_RET_ERRNO),
            seccomp_user_notif: probe::seccomp_action_available(libc::SECCOMP_RET_USER_NOTIF),
            user_namespaces: probe::user_namespaces_allowed(uid),
            uid,
            euid,
            gid,
            pids_cgroup: None,
            memory_cgroup: None,
            audit_read: false,
        }
    }

    /// clone3's CLONE_INTO_CGROUP (Linux 5.7): a process forked straight
    /// into a v2 cgroup, without the migration's wait (see limits::apply).
    pub fn clone_into_cgroup(&self) -> bool {
        release_at_least(&self.release, (5, 7))
    }

    /// Everything, including what only `doctor` and `explain` report.
    pub fn probe_all() -> Features {
        let mut f = Features::probe();
        [f.pids_cgroup, f.memory_cgroup] = limits::find_controllers(["pids", "memory"]);
        f.audit_read = crate::kaudit::may_read();
        f
    }

    /// A private temp root for this uid: `$XDG_RUNTIME_DIR/portcullis` or `/tmp/portcullis-UID`.
    pub fn runtime_root(&self) -> PathBuf {
        match std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from) {
            Some(p) if p.is_absolute() && p.is_dir() => p.join("portcullis"),
            _ => PathBuf::from(format!("/tmp/portcullis-{}", self.euid)),
        }
    }
}

/// Whether a `uname -r` release (`6.1.0-28-cloud-amd64`) is at least
/// `(major, minor)`; false when it cannot be read.
fn release_at_least(release: &str, want: (u32, u32)) -> bool {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    let major = parts.next().and_then(|p| p.parse::<u32>().ok());
    let minor = parts.next().and_then(|p| p.parse::<u32>().ok());
    match (major, minor) {
        (Some(major), Some(minor)) => (major, minor) >= want,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::release_at_least;

    #[test]
    fn releases_compare_by_major_then_minor() {
        assert!(release_at_least("6.18.44-fc-v669", (5, 7)));
        assert!(release_at_least("5.7.0", (5, 7)));
        assert!(release_at_least("6.1.0-28-cloud-amd64", (5, 7)));
        assert!(!release_at_least("5.6.19", (5, 7)));
        assert!(!release_at_least("4.19.0-27-amd64", (5, 7)));
        assert!(!release_at_least("5", (5, 7)));
        assert!(!release_at_least("", (5, 7)));
    }
}
