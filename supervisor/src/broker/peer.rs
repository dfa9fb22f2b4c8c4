//! Who may talk to the broker, and whom a supervisor or front end believes
//! to be the broker: a process of our uid, in our user namespace and our PID
//! namespace. Both ends check the other.
//!
//! The uid alone is not enough: a sandbox runs in its own user namespace
//! where it may be "root" mapped onto our uid, and `SO_PEERCRED` reports
//! it as us. A sandbox that reached the socket could then subscribe and
//! approve its own requests, so peers in other namespaces are refused.

use std::os::fd::AsFd;
use std::path::PathBuf;

use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};

/// The peer's credentials, as the kernel recorded them at connect time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub pid: i32,
    pub uid: u32,
}

/// Checks the peer of a connected unix socket; `Err` says why it is refused.
pub fn check(sock: &impl AsFd) -> Result<Peer, String> {
    let cred = getsockopt(sock, PeerCredentials).map_err(|e| format!("SO_PEERCRED failed: {e}"))?;
    let peer = Peer { pid: cred.pid(), uid: cred.uid() };
    let ours = nix::unistd::geteuid().as_raw();
    if peer.uid != ours {
        return Err(format!("peer uid {} is not ours ({ours})", peer.uid));
    }
    // pid 0: the peer is in a PID namespace we cannot see into (an ancestor's).
    if peer.pid <= 0 {
        return Err("the peer's pid is not visible in our PID namespace".into());
    }
    // The pid is the one recorded at connect (listen) time, and may since
    // have been reused: a planted listener can fork, keep the socket in the
    // child, exit, and let its pid go to any process of ours. With a pidfd
    // for that very process (6.5+), the /proc checks below are about it only
    // if it still runs after them. Older kernels: the residual risk in
    // docs/BROKER.md.
    let pidfd = crate::sys::notify::peer_pidfd(sock.as_fd())
        .map_err(|e| format!("the peer (pid {}) cannot be identified: {e}", peer.pid))?;
    same_namespaces(peer.pid)?;
    if let Some(fd) = pidfd {
        if !crate::sys::notify::pidfd_alive(fd.as_fd()) {
            return Err(format!("the peer (pid {}) has exited; its pid may now be another process's", peer.pid));
        }
    }
    Ok(peer)
}

/// Same user and PID namespace as us.
///
/// The `/proc/PID/ns/*` links need ptrace read access. A supervisor makes
/// itself undumpable (so its sandbox cannot read its memory), and an
/// unprivileged broker then gets EACCES on its links. That only happens when
/// the peer's memory belongs to our user namespace (over a sandbox's
/// namespace, which our uid owns, we hold CAP_SYS_PTRACE), so the fallback
/// compares what anyone may read: the depth of the peer's PID namespace
/// (`NSpid` in /proc/PID/status) and its uid/gid maps.
fn same_namespaces(pid: i32) -> Result<(), String> {
    let proc = PathBuf::from(format!("/proc/{pid}"));
    let link = |base: &PathBuf, ns: &str| std::fs::read_link(base.join("ns").join(ns));
    let me = PathBuf::from("/proc/self");
    match (link(&proc, "user"), link(&proc, "pid")) {
        (Ok(user), Ok(pidns)) => {
            let my_user = link(&me, "user").map_err(|e| format!("cannot read our own user namespace: {e}"))?;
            let my_pid = link(&me, "pid").map_err(|e| format!("cannot read our own PID namespace: {e}"))?;
            if user != my_user {
                return Err(format!("peer pid {pid} is in another user namespace ({})", user.display()));
            }
            if pidns != my_pid {
                return Err(format!("peer pid {pid} is in another PID namespace ({})", pidns.display()));
            }
            Ok(())
        }
        (Err(e), _) | (_, Err(e)) if e.kind() == std::io::ErrorKind::PermissionDenied => fallback(pid),
        (Err(e), _) | (_, Err(e)) => Err(format!("cannot read the namespaces of peer pid {pid}: {e}")),
    }
}

fn fallback(pid: i32) -> Result<(), String> {
    let read = |p: String| std::fs::read_to_string(&p).map_err(|e| format!("cannot read {p}: {e}"));
    let depth =
        |status: &str| status.lines().find_map(|l| l.strip_prefix("NSpid:")).map(|v| v.split_whitespace().count());
    let (theirs, mine) = (read(format!("/proc/{pid}/status"))?, read("/proc/self/status".into())?);
    match (depth(&theirs), depth(&mine)) {
        (Some(a), Some(b)) if a == b => {}
        (Some(_), Some(_)) => return Err(format!("peer pid {pid} is in another PID namespace")),
        _ => return Err("no NSpid in /proc/PID/status: cannot compare PID namespaces".into()),
    }
    for map in ["uid_map", "gid_map"] {
        if read(format!("/proc/{pid}/{map}"))? != read(format!("/proc/self/{map}"))? {
            return Err(format!("peer pid {pid} is in another user namespace ({map} differs)"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixStream;

    #[test]
    fn a_peer_in_our_namespaces_passes() {
        let (a, _b) = UnixStream::pair().unwrap();
        let p = check(&a).unwrap();
        assert_eq!(p.pid as u32, std::process::id());
        assert!(fallback(p.pid).is_ok(), "the fallback agrees for ourselves");
    }
}
