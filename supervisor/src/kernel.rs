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

    /// Everything, including what only `doctor` and `explain` report.
    pub fn probe_all() -> Features {
        let mut f = Features::probe();
        [f.pids_cgroup, f.memory_cgroup] = limits::find_controllers(["pids", "memory"]);
        f.audit_read = caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_AUDIT_READ).unwrap_or(false);
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
