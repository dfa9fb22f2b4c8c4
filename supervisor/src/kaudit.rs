//! Landlock denials as the kernel reports them to its audit subsystem
//! (Landlock ABI 7+), attributed to this sandbox and written to the signed
//! log as `verdict` records with `source: landlock-kernel-audit`.
//!
//! * Reading: a `NETLINK_AUDIT` socket joined to the read-only multicast
//!   group (needs CAP_AUDIT_READ; auditd keeps working beside it). Nothing
//!   is reported while the kernel's audit is off (`auditctl -e 0`, the
//!   default without auditd): `probe` says so and the run records it.
//! * Attribution: a report names the Landlock *domain* that refused, not the
//!   sandbox. Right after `landlock_restrict_self` the sandboxed process
//!   opens a per-session canary file that no rule grants (it lies beside
//!   the audit log, which no rule may reach); the kernel's report of that
//!   refusal carries the canary's path and the new domain's id, and every
//!   later report with that id is ours. Refusals met by the gate's confined
//!   thread carry a domain this process created (`pid=` ours).
//! * After `execve`, the kernel reports a domain's denials only when it was
//!   created with LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON, which the stage
//!   sets when a watcher is running.
//! * Completeness: at exit an AUDIT_USER marker goes through the kernel's
//!   own queue; once it comes back, every report queued before it has been
//!   read. The kernel drops reports itself when its backlog overflows, and
//!   our socket may overrun: both are counted in the summary record.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use audit::Kind;
use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
use serde_json::{json, Map, Value};

use crate::evidence::{AuditPaths, Evidence};
use crate::sys::Spin;

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const AUDIT_GET: u16 = 1000;
const AUDIT_USER: u16 = 1005;
const AUDIT_SYSCALL: u16 = 1300;
const AUDIT_EOE: u16 = 1320;
const AUDIT_LANDLOCK_ACCESS: u16 = 1423;
const AUDIT_LANDLOCK_DOMAIN: u16 = 1424;
/// The read-only multicast group (AUDIT_NLGRP_READLOG = 1), as a bind mask.
const READLOG_GROUPS: u32 = 1;
/// LANDLOCK_RESTRICT_SELF_LOG_NEW_EXEC_ON (ABI 7).
pub const LOG_NEW_EXEC_ON: u32 = 1 << 1;

/// Per refused target (blockers + object), this many records; the rest are counted.
const RECORDS_PER_TARGET: u32 = 3;
/// Distinct targets remembered for counting; beyond, one shared counter.
const MAX_TARGETS: usize = 4096;
/// How long the reader waits for the marker to come back through the
/// kernel, from when it was asked to stop. Under the 2 s a reader of the
/// log waits for its lock: at a run's end the finisher waits for it with
/// the log locked (Handoff), after the caller has the status.
const SYNC_WAIT: Duration = Duration::from_millis(1500);
const MARKER: &str = "portcullis-sync";

/// A socket joined to the kernel's audit stream, from [`probe`].
pub struct Reader {
    fd: OwnedFd,
    /// The kernel's `lost` counter just before joining (None: unreadable).
    lost: Option<u32>,
}

/// Whether this process can see Landlock denials, and if not why.
pub fn probe(landlock_abi: i32) -> Result<Reader, String> {
    probe_with(landlock_abi, None)
}

/// [`probe`], with the status asked for earlier (see [`StatusQuery`]).
pub fn probe_with(landlock_abi: i32, status: Option<StatusQuery>) -> Result<Reader, String> {
    if landlock_abi < 7 {
        return Err(format!("Landlock ABI {landlock_abi} does not report denials (ABI 7, Linux 6.15, does)"));
    }
    // One status request answers both: is audit on, and how many records
    // has the kernel lost so far (taken before joining, so a loss in between
    // counts against this run: the cautious side).
    let status = status.unwrap_or_else(StatusQuery::send).answer().map(|w| (w[1] != 0, w[6]));
    if status.map(|(enabled, _)| enabled) == Some(false) {
        return Err("the kernel's audit is off, so Landlock reports nothing (`auditctl -e 1` turns it on)".into());
    }
    Ok(Reader { fd: open_reader()?, lost: status.map(|(_, lost)| lost) })
}

/// Why an unprivileged run sees none of the kernel's reports.
pub const NO_AUDIT_READ: &str = "reading the kernel's audit stream needs CAP_AUDIT_READ, which this user lacks";

/// Whether this process may join the kernel's audit stream (CAP_AUDIT_READ).
pub fn may_read() -> bool {
    caps::has_cap(None, caps::CapSet::Effective, caps::Capability::CAP_AUDIT_READ).unwrap_or(false)
}

/// A socket joined to the audit read-log multicast group.
fn open_reader() -> Result<OwnedFd, String> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        SockProtocol::NetlinkAudit,
    )
    .map_err(|e| format!("cannot open a kernel audit socket: {e}"))?;
    match socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, READLOG_GROUPS)) {
        Ok(()) => {}
        Err(Errno::EPERM) => return Err(NO_AUDIT_READ.into()),
        Err(e) => return Err(format!("cannot join the kernel audit read group: {e}")),
    }
    // Bursts of denials: room for a few thousand reports (best effort).
    let _ = socket::setsockopt(&fd, socket::sockopt::RcvBufForce, &(4 << 20))
        .or_else(|_| socket::setsockopt(&fd, socket::sockopt::RcvBuf, &(4 << 20)));
    Ok(fd)
}

/// A netlink message to the kernel's audit subsystem.
fn request(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let len = NLMSG_HDRLEN + payload.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(payload);
    m
}

fn control_socket() -> Option<OwnedFd> {
    let fd = socket::socket(AddressFamily::Netlink, SockType::Raw, SockFlag::SOCK_CLOEXEC, SockProtocol::NetlinkAudit)
        .ok()?;
    socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0)).ok()?;
    let tv = nix::sys::time::TimeVal::new(1, 0);
    socket::setsockopt(&fd, socket::sockopt::ReceiveTimeout, &tv).ok()?;
    Some(fd)
}

/// The kernel's audit `enabled` flag; None when this process may not ask
/// (AUDIT_GET needs CAP_AUDIT_CONTROL in the initial namespaces).
pub fn audit_enabled() -> Option<bool> {
    audit_status().map(|(enabled, _)| enabled)
}

/// (enabled, lost): the `lost` counter grows whenever the kernel drops a
/// record (backlog full), anywhere on the machine.
fn audit_status() -> Option<(bool, u32)> {
    audit_status_words().map(|w| (w[1] != 0, w[6]))
}

/// The first seven words of struct audit_status: mask, enabled, failure,
/// pid, rate_limit, backlog_limit, lost.
fn audit_status_words() -> Option<[u32; 7]> {
    StatusQuery::send().answer()
}

/// An AUDIT_GET asked ahead of its answer. The kernel takes its snapshot
/// when the request is sent, but replies from a kernel thread it starts for
/// each reply, which took hundreds of microseconds here: a launch asks
/// while it still has other work, and reads the answer when it needs it.
pub struct StatusQuery(Option<OwnedFd>);

impl StatusQuery {
    /// Sends the request (an unanswerable query when that fails).
    pub fn send() -> StatusQuery {
        let fd = control_socket().filter(|fd| {
            let req = request(AUDIT_GET, 0, &[]);
            socket::sendto(fd.as_raw_fd(), &req, &NetlinkAddr::new(0, 0), MsgFlags::empty()).is_ok()
        });
        StatusQuery(fd)
    }

    /// The reply (waiting up to the control socket's timeout); None when
    /// this process may not ask (AUDIT_GET needs CAP_AUDIT_CONTROL).
    fn answer(self) -> Option<[u32; 7]> {
        self.answer_spinning(Spin::none())
    }

    /// As [`answer`](Self::answer), looking for the reply without sleeping
    /// first, for `spin`'s rounds (the reply comes from a thread the kernel
    /// starts for it, which needs a CPU).
    fn answer_spinning(self, mut spin: Spin) -> Option<[u32; 7]> {
        let fd = self.0?;
        let mut buf = [0u8; 512];
        for _ in 0..4 {
            let n = loop {
                match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                    Err(Errno::EAGAIN) | Err(Errno::EINTR) if spin.again() => {}
                    Err(Errno::EAGAIN) | Err(Errno::EINTR) => {
                        break socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).ok()?
                    }
                    r => break r.ok()?,
                }
            };
            let (kind, payload) = header(&buf[..n])?;
            match kind {
                // struct audit_status: mask, enabled, failure, pid, rate_limit, backlog_limit, lost, ...
                AUDIT_GET if payload.len() >= 28 => {
                    let word = |i: usize| {
                        u32::from_ne_bytes([payload[4 * i], payload[4 * i + 1], payload[4 * i + 2], payload[4 * i + 3]])
                    };
                    return Some(std::array::from_fn(word));
                }
                NLMSG_ERROR if payload.len() >= 4 && payload[..4] != [0, 0, 0, 0] => return None,
                _ => {}
            }
        }
        None
    }
}

/// Turns the kernel's audit on or off (AUDIT_SET; needs CAP_AUDIT_CONTROL).
/// Portcullis never does this by itself: the tests do, and so may an admin
/// (`auditctl -e 1` is the same request).
pub fn set_enabled(on: bool) -> Result<(), String> {
    // struct audit_status: mask, enabled, failure, pid, rate_limit, backlog_limit, ...
    audit_set(AUDIT_STATUS_ENABLED, 1, u32::from(on))
}

/// Sets how many records the kernel queues before it drops them
/// (`auditctl -b N`; auditd's usual configuration says 8192, the kernel's
/// default is 64, which a burst of denials overflows).
pub fn set_backlog_limit(n: u32) -> Result<(), String> {
    audit_set(AUDIT_STATUS_BACKLOG_LIMIT, 5, n)
}

const AUDIT_STATUS_ENABLED: u32 = 0x1;
const AUDIT_STATUS_BACKLOG_LIMIT: u32 = 0x10;

/// One AUDIT_SET: `mask` names the field, `word` its index in audit_status.
fn audit_set(mask: u32, word: usize, value: u32) -> Result<(), String> {
    const AUDIT_SET: u16 = 1001;
    let fd = control_socket().ok_or("cannot open a kernel audit socket")?;
    let mut status = [0u8; 40];
    status[0..4].copy_from_slice(&mask.to_ne_bytes());
    status[word * 4..word * 4 + 4].copy_from_slice(&value.to_ne_bytes());
    socket::sendto(fd.as_raw_fd(), &request(AUDIT_SET, NLM_F_ACK, &status), &NetlinkAddr::new(0, 0), MsgFlags::empty())
        .map_err(|e| format!("AUDIT_SET: {e}"))?;
    let mut buf = [0u8; 256];
    let n = socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| format!("AUDIT_SET: {e}"))?;
    match header(&buf[..n]) {
        Some((NLMSG_ERROR, p)) if p.len() >= 4 => match i32::from_ne_bytes([p[0], p[1], p[2], p[3]]) {
            0 => Ok(()),
            e => Err(format!("AUDIT_SET: {}", Errno::from_raw(-e))),
        },
        _ => Err("AUDIT_SET: no acknowledgement".into()),
    }
}

/// The kernel's audit backlog limit, when this process may ask.
pub fn backlog_limit() -> Option<u32> {
    audit_status_words().map(|w| w[5])
}

/// Sends an AUDIT_USER message (needs CAP_AUDIT_WRITE); true when accepted.
fn send_user_message(text: &str) -> bool {
    let Some(fd) = control_socket() else { return false };
    let mut payload = text.as_bytes().to_vec();
    payload.push(0);
    if socket::sendto(
        fd.as_raw_fd(),
        &request(AUDIT_USER, NLM_F_ACK, &payload),
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 256];
    match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()) {
        Ok(n) => matches!(header(&buf[..n]), Some((NLMSG_ERROR, p)) if p.len() >= 4 && p[..4] == [0, 0, 0, 0]),
        Err(_) => false,
    }
}

/// (type, payload) of the first netlink message in `buf`.
fn header(buf: &[u8]) -> Option<(u16, &[u8])> {
    if buf.len() < NLMSG_HDRLEN {
        return None;
    }
    let len = u32::from_ne_bytes(buf[0..4].try_into().ok()?) as usize;
    let kind = u16::from_ne_bytes(buf[4..6].try_into().ok()?);
    let end = len.clamp(NLMSG_HDRLEN, buf.len());
    Some((kind, &buf[NLMSG_HDRLEN..end]))
}

/// One kernel audit record: its type, event serial and `key=value` fields.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub kind: u16,
    pub serial: u64,
    pub fields: Vec<(String, String)>,
}

impl Report {
    fn get(&self, key: &str) -> Option<&str> {
        self.fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Parses `audit(1729738800.268:30): key=value key="quoted" ...`. Values
/// the kernel hex-encoded (untrusted strings with spaces, quotes or
/// control characters) are decoded for `path`, `exe`, `comm` and other
/// string fields that come unquoted in hex.
pub fn parse(kind: u16, text: &str) -> Option<Report> {
    let text = text.trim_end_matches(['\0', '\n']);
    let rest = text.strip_prefix("audit(")?;
    let close = rest.find("):")?;
    let stamp = &rest[..close];
    let serial = stamp.rsplit(':').next()?.parse().ok()?;
    let mut fields = Vec::new();
    let mut s = rest[close + 2..].trim_start();
    while !s.is_empty() {
        let eq = match s.find('=') {
            Some(i) if !s[..i].contains(' ') => i,
            _ => {
                // A bare word: skip it.
                s = s.find(' ').map_or("", |i| s[i..].trim_start());
                continue;
            }
        };
        let key = s[..eq].to_string();
        let after = &s[eq + 1..];
        let (value, next) = if let Some(q) = after.strip_prefix('"') {
            match q.find('"') {
                Some(end) => (q[..end].to_string(), &q[end + 1..]),
                None => (q.to_string(), ""),
            }
        } else if let Some(q) = after.strip_prefix('\'') {
            match q.find('\'') {
                Some(end) => (q[..end].to_string(), &q[end + 1..]),
                None => (q.to_string(), ""),
            }
        } else {
            let end = after.find(' ').unwrap_or(after.len());
            let raw = &after[..end];
            let v = match key.as_str() {
                "path" | "exe" | "comm" | "name" | "ocomm" => unhex(raw).unwrap_or_else(|| raw.to_string()),
                _ => raw.to_string(),
            };
            (v, &after[end..])
        };
        fields.push((key, value));
        s = next.trim_start();
    }
    Some(Report { kind, serial, fields })
}

fn unhex(s: &str) -> Option<String> {
    if s.is_empty() || !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok()).collect();
    Some(String::from_utf8_lossy(&bytes?).into_owned())
}

/// What the watcher learned, for the summary record and the tests.
#[derive(Debug, Default)]
struct Tally {
    domains: HashSet<String>,
    /// Per target: denials seen.
    targets: HashMap<String, u32>,
    /// Denials past MAX_TARGETS distinct targets.
    overflow: u64,
    recorded: u64,
    canary_seen: bool,
    /// A second domain reported the canary: attribution cannot be trusted.
    canary_contested: bool,
    overruns: u64,
    /// Records the kernel dropped machine-wide while we watched (None: unknown).
    kernel_lost: Option<u32>,
}

/// Decides, per event (all reports sharing a serial), what is ours and what to record.
struct Attributor {
    canary: String,
    own_pid: String,
    tally: Tally,
}

impl Attributor {
    /// Bodies of the `verdict` records this event yields.
    fn event(&mut self, reports: &[Report]) -> Vec<Value> {
        for r in reports.iter().filter(|r| r.kind == AUDIT_LANDLOCK_DOMAIN) {
            // A domain this process created: the gate's confined thread.
            if r.get("status") == Some("allocated") && r.get("pid") == Some(self.own_pid.as_str()) {
                if let Some(domain) = r.get("domain") {
                    self.tally.domains.insert(domain.to_string());
                }
            }
        }
        let syscall = reports.iter().find(|r| r.kind == AUDIT_SYSCALL);
        let mut out = Vec::new();
        for r in reports.iter().filter(|r| r.kind == AUDIT_LANDLOCK_ACCESS) {
            let Some(domain) = r.get("domain") else { continue };
            if r.get("path") == Some(self.canary.as_str()) {
                // Only the first: the sandbox opens the canary before its
                // command runs; a later report naming it (another sandbox
                // that guessed the path) must not make its domain ours.
                if !self.tally.canary_seen {
                    self.tally.domains.insert(domain.to_string());
                    self.tally.canary_seen = true;
                } else if !self.tally.domains.contains(domain) {
                    self.tally.canary_contested = true;
                }
                continue;
            }
            if !self.tally.domains.contains(domain) {
                continue;
            }
            let mut body = Map::new();
            body.insert("source".into(), json!("landlock-kernel-audit"));
            body.insert("verdict".into(), json!("deny"));
            body.insert("layer".into(), json!("landlock"));
            for (k, v) in &r.fields {
                body.insert(k.clone(), json!(v));
            }
            if let Some(sc) = syscall {
                for key in ["pid", "exe", "comm"] {
                    if let Some(v) = sc.get(key) {
                        body.insert(key.into(), json!(v));
                    }
                }
                if let Some(nr) = sc.get("syscall").and_then(|n| n.parse::<i64>().ok()) {
                    body.insert("syscall".into(), json!(policy::syscalls::name(nr).unwrap_or("?")));
                }
            }
            let target = format!(
                "{} {}",
                r.get("blockers").unwrap_or("?"),
                ["path", "daddr", "dest", "opid", "name"].iter().filter_map(|k| r.get(k)).collect::<Vec<_>>().join(":")
            );
            let known = self.tally.targets.len();
            let n = match self.tally.targets.entry(target) {
                std::collections::hash_map::Entry::Occupied(mut e) => {
                    *e.get_mut() += 1;
                    *e.get()
                }
                std::collections::hash_map::Entry::Vacant(e) if known < MAX_TARGETS => *e.insert(1),
                std::collections::hash_map::Entry::Vacant(_) => {
                    self.tally.overflow += 1;
                    continue;
                }
            };
            if n <= RECORDS_PER_TARGET {
                self.tally.recorded += 1;
                out.push(Value::Object(body));
            }
        }
        out
    }

    /// The closing record; None when nothing was refused, the sandbox was
    /// identified and everything the kernel queued was read.
    fn summary(&self, synced: bool) -> Option<Value> {
        let seen: u64 = self.tally.targets.values().map(|&n| u64::from(n)).sum::<u64>() + self.tally.overflow;
        let identified = self.tally.canary_seen && !self.tally.canary_contested;
        let complete = synced && self.tally.overruns == 0 && self.tally.kernel_lost == Some(0) && identified;
        if seen == 0 && complete {
            return None;
        }
        Some(json!({
            "source": "landlock-kernel-audit",
            "summary": true,
            "verdict": if seen > 0 { "deny" } else { "none" },
            "denials_seen": seen,
            "denials_recorded": self.tally.recorded,
            "unrecorded_denials": seen - self.tally.recorded,
            "receive_overruns": self.tally.overruns,
            "sandbox_identified": identified,
            "canary_contested": self.tally.canary_contested,
            "kernel_lost": self.tally.kernel_lost,
            "complete": complete,
        }))
    }
}

/// The canary's name: beside the audit log, where no rule may reach.
/// Chosen before the stage forks (it opens the canary when watched); created
/// by [`Canary::place`] or at the latest by [`Watcher::start`], and removed
/// by whichever of the two holds it last.
pub struct Canary {
    path: PathBuf,
    token: String,
    placed: bool,
}

impl Canary {
    pub fn new(paths: &AuditPaths) -> Result<Canary, String> {
        let log_dir = paths.log.parent().unwrap_or(Path::new("/"));
        // The kernel reports the path it resolved: compare against that. The
        // directory may not exist yet (the audit log makes it, later):
        // resolve its nearest existing ancestor. Should the final path differ
        // after all, the canary is never reported and the run says it could
        // not tell its denials apart (incomplete), never the reverse.
        let mut existing = log_dir.to_path_buf();
        while !existing.exists() && existing.pop() {}
        let rest = log_dir.strip_prefix(&existing).unwrap_or(Path::new("")).to_path_buf();
        let log_dir = std::fs::canonicalize(&existing).map_err(|e| format!("{}: {e}", existing.display()))?.join(rest);
        // Unguessable, so no other sandbox can get its domain taken for ours.
        let token = crate::grants::random_hex(16).map_err(|e| format!("cannot read random bytes: {e}"))?;
        Ok(Canary { path: log_dir.join(format!(".landlock-canary-{token}")), token, placed: false })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates the file (once; a second call does nothing). Before the audit
    /// log has opened, its directory may not exist yet: then this fails and
    /// [`Watcher::start`] tries again.
    pub fn place(&mut self) -> Result<(), String> {
        use std::os::unix::fs::OpenOptionsExt;
        if self.placed {
            return Ok(());
        }
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&self.path)
            .map_err(|e| format!("cannot create the canary {}: {e}", self.path.display()))?;
        self.placed = true;
        Ok(())
    }
}

impl Drop for Canary {
    /// A canary placed for a launch that was refused, or whose watcher did not start.
    fn drop(&mut self) {
        if self.placed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// The running watcher: one thread reading the audit stream.
pub struct Watcher {
    canary: PathBuf,
    /// How the reader is to stop, and its wake-up.
    stopper: Stopper,
    /// Returns why denials went unrecorded, if they did (or the reader's
    /// state, handed over).
    thread: Option<JoinHandle<Option<Box<Drain>>>>,
}

/// [`Watcher::ask_to_stop`] from another thread: the gate's server asks as
/// soon as its acting thread has ended, while the run still waits for the
/// sandbox's init to exit (see gate::Armed::start).
#[derive(Clone)]
pub struct Stopper {
    /// RUNNING, then ASKED, HAND_OFF or DISCARD.
    stop: Arc<AtomicU8>,
    /// A byte written here wakes the reader at once (its poll times out
    /// after 50 ms otherwise: a refused launch took that much longer).
    wake: Arc<OwnedFd>,
    /// The end's questions, once asked (see [`ask`](Self::ask)).
    end: Arc<EndAsked>,
}

/// What the asker sent the kernel for the reader when it asked it to stop.
struct EndAsked {
    marker: String,
    /// Set by the first asker (the others return at once).
    asked: std::sync::atomic::AtomicBool,
    /// Whether the marker went out, and the `lost` question.
    sent: std::sync::Mutex<Option<(bool, StatusQuery)>>,
}

impl Stopper {
    /// Asks the reader to stop once it has read everything the kernel
    /// queued; asking again does nothing. The sandbox is gone when this is
    /// asked, so the asker sends the marker and asks the kernel for its
    /// `lost` counter itself (the second answered by a kernel thread
    /// started for the reply): the kernel works on both while the reader
    /// wakes, which took it tenths of a millisecond at a run's end (it
    /// runs at a lower priority than the run, which spins for init's end
    /// meanwhile). Costs the asker two netlink sends and the marker's
    /// acknowledgement.
    pub fn ask(&self) {
        if self.end.asked.swap(true, Ordering::AcqRel) {
            return;
        }
        // The marker first: see Drain::run.
        let at_marker = send_user_message(&self.end.marker);
        let lost = StatusQuery::send();
        if let Ok(mut sent) = self.end.sent.lock() {
            *sent = Some((at_marker, lost));
        }
        if self.stop.compare_exchange(RUNNING, ASKED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            let _ = nix::unistd::write(self.wake.as_fd(), &[ASKED]);
        }
    }
}

impl Watcher {
    /// Creates the canary and starts reading. `reader` comes from [`probe`].
    /// Records go to the log through a handle of the watcher's own, opened at
    /// its first record: a run the kernel reports nothing about costs no
    /// extra write.
    pub fn start(reader: Reader, mut canary: Canary, paths: &AuditPaths, session: &str) -> Result<Watcher, String> {
        canary.place()?;
        let canary_str = canary.path.to_str().ok_or("the audit log's directory is not UTF-8")?.to_string();
        let token = canary.token.clone();
        let stop = Arc::new(AtomicU8::new(RUNNING));
        let marker = format!("{MARKER} session={session} token={token}");
        let Reader { fd: reader, lost } = reader;
        let tally = Tally { kernel_lost: lost, ..Tally::default() };
        let attributor = Attributor { canary: canary_str, own_pid: std::process::id().to_string(), tally };
        let s = stop.clone();
        let sink = Sink { paths: paths.clone(), session: session.to_string(), ev: None, failed: None, held: false };
        let (woken, wake) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
            .map_err(|e| format!("cannot make a pipe: {e}"))?;
        let end = Arc::new(EndAsked {
            marker,
            asked: std::sync::atomic::AtomicBool::new(false),
            sent: std::sync::Mutex::new(None),
        });
        let drain = Drain::new(reader, woken, attributor, sink, end.clone());
        let thread = std::thread::Builder::new()
            .name("kernel-audit".into())
            .spawn(move || {
                crate::sys::wait::adopt_process_cpus();
                crate::sys::background_thread();
                drain.read(&s)
            })
            .map_err(|e| format!("cannot start a thread: {e}"));
        // On an error the canary removes its file; from here on the watcher does.
        let thread = thread?;
        canary.placed = false;
        Ok(Watcher {
            canary: std::mem::take(&mut canary.path),
            stopper: Stopper { stop, wake: Arc::new(wake), end },
            thread: Some(thread),
        })
    }

    pub fn canary(&self) -> &Path {
        &self.canary
    }

    /// The first half of [`hand_off`](Self::hand_off), which a run sends as
    /// soon as nothing can cause a report of this sandbox any more (the
    /// sandbox and the gate's acting thread are gone), so that the kernel
    /// delivers the marker while the run does its last steps.
    pub fn ask_to_stop(&mut self) {
        self.stopper.ask()
    }

    /// The same question, for another thread to ask.
    pub fn stopper(&self) -> Stopper {
        self.stopper.clone()
    }

    fn join(&mut self) -> Option<String> {
        let lost = self.thread.take().and_then(|t| match t.join() {
            Ok(_) => None,
            Err(_) => Some("the kernel-audit reader panicked".into()),
        });
        let _ = std::fs::remove_file(&self.canary);
        lost
    }

    /// Stops the reader's thread at once, between two of its wake-ups, and
    /// takes over what it has not read yet: the kernel's reports that are
    /// still on their way (the marker, the `lost` answer) are read by
    /// [`Handoff::finish_into`], which a run calls from its finisher, once
    /// the caller has the command's status. Asks the reader to stop first
    /// (as [`ask_to_stop`](Self::ask_to_stop)), if nobody has. Returns
    /// when the thread has ended.
    pub fn hand_off(mut self) -> Handoff {
        self.ask_to_stop();
        // From ASKED (or RUNNING), never from DISCARD.
        let s = &self.stopper.stop;
        if s.compare_exchange(ASKED, HAND_OFF, Ordering::AcqRel, Ordering::Acquire).is_ok()
            || s.compare_exchange(RUNNING, HAND_OFF, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            let _ = nix::unistd::write(self.stopper.wake.as_fd(), &[HAND_OFF]);
        }
        // The thread is awake as a rule (it looks for the marker without
        // sleeping): its end is looked for without sleeping too, a join
        // that sleeps would wait for this CPU to be woken (tens of
        // microseconds here). The join then waits only for its exit.
        let mut spin = Spin::rounds(Spin::END);
        while self.thread.as_ref().is_some_and(|t| !t.is_finished()) && spin.again() {}
        let (drain, lost) = match self.thread.take().map(JoinHandle::join) {
            Some(Ok(drain)) => (drain, None),
            Some(Err(_)) => (None, Some("the kernel-audit reader panicked".into())),
            None => (None, None),
        };
        Handoff { drain, lost, canary: std::mem::take(&mut self.canary) }
    }
}

/// The kernel-audit reader's state, taken from its thread by
/// [`Watcher::hand_off`]; its end is read by [`finish_into`](Self::finish_into).
/// Dropped unfinished, it records nothing more.
pub struct Handoff {
    drain: Option<Box<Drain>>,
    /// Why there is no state to finish with (the thread panicked).
    lost: Option<String>,
    canary: PathBuf,
}

impl Drop for Handoff {
    /// Unfinished (the run ended before its finisher): nothing more is
    /// recorded, and the canary goes.
    fn drop(&mut self) {
        if !self.canary.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.canary);
        }
    }
}

impl Handoff {
    /// Reads the kernel's reports until every one queued before the stop
    /// was asked has been read (the marker comes back, or SYNC_WAIT), asks
    /// the kernel's `lost` counter, and records what they say through `ev`,
    /// the run's own handle, whose lock the caller holds
    /// ([`Evidence::hold`]): the records are written ahead under that lock,
    /// which is never released in between, so that the run's exit record
    /// follows them before anyone else writes or reads. (As a rule this
    /// takes a few tenths of a millisecond; when the kernel loses the marker,
    /// up to SYNC_WAIT and its last answer's timeout, and a reader may give
    /// up waiting for the lock first: it then reads the log without them.)
    /// Returns why denials went unrecorded, if they did, and `ev`.
    pub fn finish_into(mut self, ev: Evidence) -> (Option<String>, Evidence) {
        let _ = std::fs::remove_file(std::mem::take(&mut self.canary));
        let Some(mut d) = self.drain.take() else { return (self.lost.take(), ev) };
        // The thread closed its own handle (Drain::read).
        d.sink.let_go();
        d.sink.ev = Some(ev);
        d.sink.held = true;
        // Unless the thread saw the marker already (or gave up waiting).
        if !d.synced {
            let _ = d.run(&AtomicU8::new(ASKED));
        }
        d.wind_up();
        d.sink.commit();
        let ev = d.sink.ev.take().expect("the sink holds the run's handle");
        (d.sink.failed.take(), ev)
    }
}

impl Drop for Watcher {
    /// A run that ends without `finish` (refused before or at spawn): the
    /// thread stops without writing, so nothing lands after the refusal
    /// record, and it never waits for a log lock the run still holds.
    /// (Even when it was asked to stop at the marker already.)
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.stopper.stop.store(DISCARD, Ordering::Release);
            let _ = nix::unistd::write(self.stopper.wake.as_fd(), &[DISCARD]);
            let _ = self.join();
        }
    }
}

/// Events waiting for the rest of their reports.
#[derive(Default)]
struct Events {
    open: std::collections::BTreeMap<u64, (Instant, Vec<Report>)>,
}

/// An event without its end-of-event report after this long is complete.
const EVENT_AGE: Duration = Duration::from_millis(250);
/// Events held at once; beyond, the oldest is taken as complete.
const MAX_OPEN_EVENTS: usize = 1024;

impl Events {
    /// Adds a report; returns its event when this report completes it.
    fn add(&mut self, r: Report) -> Option<Vec<Report>> {
        if r.kind == AUDIT_EOE {
            return self.open.remove(&r.serial).map(|(_, v)| v);
        }
        self.open.entry(r.serial).or_insert_with(|| (Instant::now(), Vec::new())).1.push(r);
        None
    }

    /// Events older than `age` (and the oldest beyond MAX_OPEN_EVENTS), oldest first.
    fn take_older_than(&mut self, age: Duration) -> Vec<Vec<Report>> {
        let mut done = Vec::new();
        let old: Vec<u64> = self.open.iter().filter(|(_, (t, _))| t.elapsed() >= age).map(|(k, _)| *k).collect();
        for k in old {
            done.extend(self.open.remove(&k).map(|(_, v)| v));
        }
        while self.open.len() > MAX_OPEN_EVENTS {
            done.extend(self.open.pop_first().map(|(_, (_, v))| v));
        }
        done
    }
}

const RUNNING: u8 = 0;
/// To stop once every report queued before now has been read.
const ASKED: u8 = 1;
/// To stop between two wake-ups and hand the rest over (Watcher::hand_off).
const HAND_OFF: u8 = 2;
/// To stop at once, recording nothing more.
const DISCARD: u8 = 3;
/// Reports read per wake-up before the stop flag is looked at again.
const DRAIN_MAX: usize = 256;
/// Without a marker, this long without a report ends the watch.
const QUIET: Duration = Duration::from_millis(100);

/// The watcher's audit handle, opened at the first record.
struct Sink {
    paths: AuditPaths,
    session: String,
    ev: Option<Evidence>,
    /// Why records stopped being written (the first failure).
    failed: Option<String>,
    /// `ev` is the run's own handle, whose lock is held for the run's
    /// last records: written ahead, never unlocked (see Handoff).
    held: bool,
}

impl Sink {
    fn record(&mut self, body: Value) {
        if self.failed.is_some() {
            return;
        }
        if self.ev.is_none() {
            match Evidence::open(&self.paths, &self.session) {
                Ok(ev) => self.ev = Some(ev),
                Err(f) => return self.fail(&f.message),
            }
        }
        let held = self.held;
        // Held for the finisher: each record is written at once, so that a
        // batch never grows to where the handle would start a signer
        // thread (the finisher may start none) or commit on its own
        // (which would let the lock go).
        let written = self.ev.as_mut().map(|ev| match held {
            true => ev.record(Kind::Verdict, body).and_then(|()| ev.write_ahead()),
            false => ev.record(Kind::Verdict, body),
        });
        if let Some(Err(f)) = written {
            self.fail(&f.message);
        }
    }

    fn commit(&mut self) {
        let held = self.held;
        let written = self.ev.as_mut().filter(|_| self.failed.is_none()).map(|ev| match held {
            true => ev.write_ahead(),
            false => ev.commit(),
        });
        if let Some(Err(f)) = written {
            self.fail(&f.message);
        }
    }

    fn fail(&mut self, why: &str) {
        // The run itself goes on: its own log handle works. Not eprintln:
        // in the finisher a closed stderr must not panic the run's last
        // records away.
        use std::io::Write;
        let why = crate::evidence::reason(why);
        let _ = writeln!(
            std::io::stderr(),
            "portcullis: kernel audit: {why}; denials the kernel reports are no longer recorded"
        );
        self.failed = Some(why.to_string());
    }

    /// Commits and closes the handle (joining its signer thread, if it
    /// started one); returns why records were lost, if any were. Records
    /// after this open a handle again, unless one is given (Handoff).
    fn let_go(&mut self) -> Option<String> {
        if let Some(Err(f)) = self.ev.take().map(Evidence::release) {
            self.fail(&f.message);
        }
        self.failed.clone()
    }
}

/// The reader's state between wake-ups. The reader's thread runs it; at a
/// run's end it may hand it over (HAND_OFF) to the run's finisher, which
/// reads the rest of the kernel's reports after the caller has the status
/// (see [`Handoff`]).
struct Drain {
    fd: OwnedFd,
    woken: OwnedFd,
    at: Attributor,
    sink: Sink,
    asked: Arc<EndAsked>,
    buf: Vec<u8>,
    /// Reports by event serial: one event's reports arrive apart and
    /// interleaved with other events' (its SYSCALL report comes at syscall
    /// exit). An event is complete at its EOE, or once it is EVENT_AGE old.
    events: Events,
    stop_since: Option<Instant>,
    last_read: Instant,
    synced: bool,
    /// Once asked to stop: the kernel's `lost` counter asked for, and
    /// whether the marker went out.
    lost_after: Option<StatusQuery>,
    at_marker: bool,
    /// Once asked to stop, the run waits for the marker: looked for
    /// without sleeping, for a while.
    spin: Spin,
}

/// How [`Drain::run`] ended.
enum Step {
    /// Every report queued before the stop was read (or the wait gave up).
    Done,
    /// Told to hand over, between two wake-ups (nothing read is left
    /// unwritten).
    Handed,
    /// Told to record nothing more.
    Discarded,
}

impl Drain {
    fn new(fd: OwnedFd, woken: OwnedFd, at: Attributor, sink: Sink, asked: Arc<EndAsked>) -> Drain {
        Drain {
            fd,
            woken,
            at,
            sink,
            asked,
            buf: vec![0u8; 16 << 10],
            events: Events::default(),
            stop_since: None,
            last_read: Instant::now(),
            synced: false,
            lost_after: None,
            at_marker: false,
            spin: Spin::rounds(Spin::END),
        }
    }

    /// Reads until `stop` says why not to go on.
    fn run(&mut self, stop: &AtomicU8) -> Step {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let marker = &self.asked.marker;
        loop {
            match stop.load(Ordering::Acquire) {
                RUNNING => {}
                DISCARD => return Step::Discarded,
                HAND_OFF => return Step::Handed,
                _ => {
                    let asked = &self.asked;
                    let (at_marker, lost_after) = (&mut self.at_marker, &mut self.lost_after);
                    let since = *self.stop_since.get_or_insert_with(|| {
                        // The sandbox is gone, so every report of its has been
                        // queued or dropped: the kernel's `lost` counter, taken
                        // from now on, counts each one it dropped. The marker
                        // goes first: the kernel's audit thread delivers it
                        // while the status question waits for the thread the
                        // kernel starts to answer it (the snapshot is taken when
                        // asked, after the marker: later is the cautious side).
                        // Without CAP_AUDIT_WRITE there is no marker: a quiet
                        // spell instead. Both were sent by whoever asked us to
                        // stop, as a rule (Stopper::ask); by us otherwise.
                        // From here the run waits for this thread: back to the
                        // priority of the threads it competes with (init's
                        // exit, the kernel's audit thread), not a tenth of their
                        // share.
                        crate::sys::foreground_thread();
                        let sent = asked.sent.lock().ok().and_then(|mut s| s.take());
                        let (marker_sent, lost) =
                            sent.unwrap_or_else(|| (send_user_message(&asked.marker), StatusQuery::send()));
                        *at_marker = marker_sent;
                        *lost_after = Some(lost);
                        Instant::now()
                    });
                    let quiet = !self.at_marker && since.elapsed() > QUIET && self.last_read.elapsed() > QUIET;
                    if quiet || since.elapsed() > SYNC_WAIT {
                        return Step::Done;
                    }
                }
            }
            let mut fds =
                [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN), PollFd::new(self.woken.as_fd(), PollFlags::POLLIN)];
            let timeout = match self.stop_since.is_some() && self.spin.again() {
                true => PollTimeout::ZERO,
                false => PollTimeout::from(50u16),
            };
            match poll(&mut fds, timeout) {
                Ok(_) => {}
                Err(Errno::EINTR) => continue,
                Err(_) => return Step::Done,
            }
            if fds[1].revents().is_some_and(|r| r.contains(PollFlags::POLLIN)) {
                // The byte that woke us: the stop flag says what it meant.
                let _ = nix::unistd::read(self.woken.as_raw_fd(), &mut [0u8; 8]);
            }
            for _ in 0..DRAIN_MAX {
                let (n, from) = match socket::recvfrom::<NetlinkAddr>(self.fd.as_raw_fd(), &mut self.buf) {
                    Ok(r) => r,
                    Err(Errno::EAGAIN) => break,
                    Err(Errno::ENOBUFS) => {
                        self.at.tally.overruns += 1;
                        continue;
                    }
                    Err(Errno::EINTR) => continue,
                    Err(_) => break,
                };
                // Only the kernel speaks on this group.
                if from.is_none_or(|a| a.pid() != 0) {
                    continue;
                }
                self.last_read = Instant::now();
                let Some((kind, payload)) = header(&self.buf[..n]) else { continue };
                if kind == AUDIT_USER {
                    if String::from_utf8_lossy(payload).contains(marker.as_str()) {
                        self.synced = true;
                        break;
                    }
                    continue;
                }
                if !matches!(kind, AUDIT_LANDLOCK_ACCESS | AUDIT_LANDLOCK_DOMAIN | AUDIT_SYSCALL | AUDIT_EOE) {
                    continue;
                }
                let Some(r) = parse(kind, &String::from_utf8_lossy(payload)) else { continue };
                if let Some(done) = self.events.add(r) {
                    self.at.event(&done).into_iter().for_each(|b| self.sink.record(b));
                }
            }
            for done in self.events.take_older_than(EVENT_AGE) {
                self.at.event(&done).into_iter().for_each(|b| self.sink.record(b));
            }
            // Group commit per wake-up: the log's lock is never held across
            // a wait (unless the sink writes under a lock held for it).
            self.sink.commit();
            if self.synced {
                return Step::Done;
            }
        }
    }

    /// After [`run`](Self::run) is done: what is left of the events, the
    /// kernel's `lost` counter since the start, the summary.
    fn wind_up(&mut self) {
        // The marker can come in before the stop is seen (the asker sent it):
        // then the asker's question is taken here, and the run waits for this
        // thread from now on.
        if self.stop_since.is_none() {
            crate::sys::foreground_thread();
            self.lost_after = self.asked.sent.lock().ok().and_then(|mut s| s.take()).map(|(_, lost)| lost);
        }
        for done in self.events.take_older_than(Duration::ZERO) {
            self.at.event(&done).into_iter().for_each(|b| self.sink.record(b));
        }
        let after = self
            .lost_after
            .take()
            .unwrap_or_else(StatusQuery::send)
            .answer_spinning(Spin::rounds(Spin::END))
            .map(|w| w[6]);
        self.at.tally.kernel_lost = match (self.at.tally.kernel_lost, after) {
            (Some(before), Some(after)) => Some(after.wrapping_sub(before)),
            _ => None,
        };
        // A run with nothing refused, seen to the end, needs no summary.
        if let Some(summary) = self.at.summary(self.synced) {
            self.sink.record(summary);
        }
    }

    /// The reader's thread: reads until told to stop, and returns the
    /// state for [`Handoff::finish_into`] to wind up (the kernel's last
    /// answer about lost records, the summary) where the run needs it, off
    /// the caller's way; None when told to record nothing more.
    fn read(mut self, stop: &AtomicU8) -> Option<Box<Drain>> {
        match self.run(stop) {
            Step::Done | Step::Handed => {
                // Its handle holds no lock between wake-ups and nothing
                // buffered; closed here, its signer thread (if it started
                // one) ends with this thread, before the run's finisher.
                self.sink.let_go();
                Some(Box::new(self))
            }
            Step::Discarded => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sink_that_cannot_write_says_why_for_the_exit_record() {
        let dir = std::env::temp_dir().join(format!("pc-kaudit-sink-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // The log's directory is a regular file: the sink cannot open the log.
        let blocker = dir.join("not-a-dir");
        std::fs::write(&blocker, b"").unwrap();
        let paths =
            AuditPaths { log: blocker.join("audit.log"), key: dir.join("audit.key"), syslog: None, rotate_bytes: None };
        let mut sink = Sink { paths, session: "s".into(), ev: None, failed: None, held: false };
        sink.record(json!({"verdict": "deny"}));
        sink.commit();
        sink.record(json!({"verdict": "deny"}));
        let why = sink.let_go().expect("the failure is returned");
        assert!(why.contains("log directory"), "{why}");
        // The run outlives this writer: its record does not say it refused to run.
        assert!(!why.contains("refusing"), "{why}");
        // A sink that never had anything to write has nothing to report.
        let quiet = Sink {
            paths: AuditPaths {
                log: dir.join("audit.log"),
                key: dir.join("audit.key"),
                syslog: None,
                rotate_bytes: None,
            },
            session: "s".into(),
            ev: None,
            failed: None,
            held: false,
        };
        let mut quiet = quiet;
        assert_eq!(quiet.let_go(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_sink_writing_for_the_finisher_never_lets_the_log_go() {
        // At a run's end the finisher writes the reader's last records
        // through the run's handle, whose lock was taken before the caller
        // got the status: nobody may get in between them and the exit record.
        let dir = std::env::temp_dir().join(format!("pc-kaudit-held-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let paths =
            AuditPaths { log: dir.join("audit.log"), key: dir.join("audit.key"), syslog: None, rotate_bytes: None };
        let mut ev = Evidence::open(&paths, "s").unwrap();
        // A lock of our own on the lock file (flock, as writers and readers take it).
        let free = || std::fs::File::open(dir.join("audit.log.lock")).unwrap().try_lock().is_ok();
        assert!(free(), "nothing holds the log yet");
        ev.hold().unwrap();
        assert!(!free(), "held before the first record");
        let mut sink = Sink { paths: paths.clone(), session: "s".into(), ev: Some(ev), failed: None, held: true };
        sink.record(json!({"verdict": "deny"}));
        sink.commit();
        assert!(!free(), "still held after the sink's records were written");
        assert_eq!(sink.failed, None);
        let mut ev = sink.ev.take().unwrap();
        ev.exit_written(0, &[]).unwrap();
        ev.checkpoint().unwrap();
        assert!(free(), "released with the checkpoint");
        let text = std::fs::read_to_string(dir.join("audit.log")).unwrap();
        let kinds: Vec<&str> = text.lines().filter_map(|l| l.split("\"kind\":\"").nth(1)?.split('"').next()).collect();
        assert_eq!(kinds.iter().rev().take(2).collect::<Vec<_>>(), [&"exit", &"verdict"], "{text}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn report(kind: u16, text: &str) -> Report {
        parse(kind, text).expect("parses")
    }

    #[test]
    fn parses_quoted_hex_and_plain_fields() {
        let r = report(
            AUDIT_LANDLOCK_ACCESS,
            r#"audit(1729738800.268:30): domain=195ba459b blockers=fs.read_file path="/etc/hostname" dev="vda2" ino=351"#,
        );
        assert_eq!(r.serial, 30);
        assert_eq!(r.get("domain"), Some("195ba459b"));
        assert_eq!(r.get("path"), Some("/etc/hostname"));
        assert_eq!(r.get("ino"), Some("351"));
        // A path with a space comes hex-encoded and unquoted.
        let r = report(
            AUDIT_LANDLOCK_ACCESS,
            "audit(1.2:7): domain=1 blockers=fs.read_file path=2F746D702F612062 dev=\"vda\" ino=3\0",
        );
        assert_eq!(r.get("path"), Some("/tmp/a b"));
        assert_eq!(r.serial, 7);
        assert!(parse(AUDIT_SYSCALL, "garbage").is_none());
        assert!(parse(AUDIT_SYSCALL, "audit(1.2:x): a=b").is_none());
    }

    fn at() -> Attributor {
        let tally = Tally { kernel_lost: Some(0), ..Tally::default() };
        Attributor { canary: "/state/.landlock-canary-s".into(), own_pid: "100".into(), tally }
    }

    fn access(serial: u64, domain: &str, path: &str) -> Report {
        report(
            AUDIT_LANDLOCK_ACCESS,
            &format!(r#"audit(1.0:{serial}): domain={domain} blockers=fs.read_file path="{path}" dev="vda" ino=9"#),
        )
    }

    #[test]
    fn the_canary_names_our_domain_and_others_are_ignored() {
        let mut a = at();
        // Before the canary, an unknown domain is not ours.
        assert!(a.event(&[access(1, "aa", "/etc/shadow")]).is_empty());
        // The canary: not recorded itself, but identifies domain bb.
        assert!(a.event(&[access(2, "bb", "/state/.landlock-canary-s")]).is_empty());
        let sc = report(
            AUDIT_SYSCALL,
            "audit(1.0:3): arch=c000003e syscall=257 success=no pid=4242 comm=\"cat\" exe=\"/usr/bin/cat\"",
        );
        let out = a.event(&[access(3, "bb", "/etc/shadow"), sc]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0]["path"], "/etc/shadow");
        assert_eq!(out[0]["pid"], "4242");
        assert_eq!(out[0]["syscall"], "openat");
        assert_eq!(out[0]["verdict"], "deny");
        assert!(a.event(&[access(4, "aa", "/etc/passwd")]).is_empty(), "another sandbox's domain");
        // A domain this process created (the gate's confined thread).
        let dom =
            report(AUDIT_LANDLOCK_DOMAIN, "audit(1.0:5): domain=cc status=allocated mode=enforcing pid=100 uid=0");
        assert_eq!(a.event(&[access(5, "cc", "/etc"), dom]).len(), 1);
        let s = a.summary(true).expect("denials: a summary");
        assert_eq!(s["denials_seen"], 2);
        assert_eq!(s["sandbox_identified"], true);
        assert_eq!(s["complete"], true);
        // Another domain reporting our canary later does not become ours,
        // and the run no longer claims to know whose denials it saw.
        assert!(a.event(&[access(6, "dd", "/state/.landlock-canary-s")]).is_empty());
        assert!(a.event(&[access(7, "dd", "/etc/passwd")]).is_empty(), "a late canary report names no domain of ours");
        let s = a.summary(true).expect("contested: a summary");
        assert_eq!(s["sandbox_identified"], false);
        assert_eq!(s["canary_contested"], true);
        assert_eq!(s["complete"], false);
    }

    #[test]
    fn records_the_kernel_dropped_make_the_run_incomplete() {
        let mut a = at();
        a.event(&[access(1, "bb", "/state/.landlock-canary-s")]);
        assert!(a.summary(true).is_none());
        a.tally.kernel_lost = Some(2);
        assert_eq!(a.summary(true).expect("a summary")["complete"], false);
        a.tally.kernel_lost = None;
        assert_eq!(a.summary(true).expect("unknown: a summary")["complete"], false);
    }

    #[test]
    fn a_clean_run_needs_no_summary_but_an_unidentified_one_does() {
        let mut a = at();
        let s = a.summary(true).expect("not identified: say so");
        assert_eq!(s["sandbox_identified"], false);
        a.event(&[access(1, "bb", "/state/.landlock-canary-s")]);
        assert!(a.summary(true).is_none(), "identified, complete, nothing refused");
        assert!(a.summary(false).is_some(), "not read to the end: say so");
    }

    #[test]
    fn a_flood_is_counted_not_recorded() {
        let mut a = at();
        a.event(&[access(1, "bb", "/state/.landlock-canary-s")]);
        let mut recorded = 0;
        for i in 0..1000 {
            recorded += a.event(&[access(10 + i, "bb", "/etc/shadow")]).len();
        }
        assert_eq!(recorded, RECORDS_PER_TARGET as usize);
        let s = a.summary(false).expect("a summary");
        assert_eq!(s["denials_seen"], 1000);
        assert_eq!(s["unrecorded_denials"], 1000 - u64::from(RECORDS_PER_TARGET));
        assert_eq!(s["complete"], false, "not synced with the kernel");
    }
}

#[cfg(test)]
mod event_tests {
    use super::*;

    #[test]
    fn interleaved_events_keep_their_own_reports() {
        let mut e = Events::default();
        let r = |kind, serial: u64, rest: &str| parse(kind, &format!("audit(1.0:{serial}): {rest}")).unwrap();
        assert!(e.add(r(AUDIT_LANDLOCK_ACCESS, 5, "domain=a path=\"/x\"")).is_none());
        assert!(e.add(r(AUDIT_LANDLOCK_ACCESS, 6, "domain=b path=\"/y\"")).is_none());
        assert!(e.add(r(AUDIT_SYSCALL, 5, "syscall=257 pid=1")).is_none());
        let five = e.add(r(AUDIT_EOE, 5, "")).expect("event 5 ends");
        assert_eq!(five.len(), 2);
        assert!(five.iter().all(|x| x.serial == 5));
        // Event 6 never gets its EOE: taken once old enough.
        assert!(e.take_older_than(Duration::from_secs(60)).is_empty());
        assert_eq!(e.take_older_than(Duration::ZERO).len(), 1);
    }
}
