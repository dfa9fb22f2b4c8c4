//! The evidence a run leaves: records in the signed audit log (the `audit`
//! crate; format in docs/AUDIT.md) for the launch, every degradation, every
//! refusal, and the exit.
//!
//! Fail closed: if the log cannot be opened or written, `run` refuses (exit
//! 125) before anything is executed. The log and its key must be out of the
//! sandbox's reach: a profile rule that covers either makes `run` refuse.

use std::path::{Path, PathBuf};
use std::time::Instant;

use audit::{AuditLog, Kind, LogOptions};
use serde_json::{json, Value};

use crate::exit::Failure;

/// A failure's message without the "refusing to ..." tail that a caller
/// who stops adds: for a writer whose failure the run outlives (its exit
/// record names it in `incomplete`).
pub fn reason(message: &str) -> &str {
    ["; refusing to run without a working audit log", "; refusing to go on without a record"]
        .iter()
        .fold(message, |m, tail| m.strip_suffix(tail).unwrap_or(m))
}

/// Where the log and its signing key live.
#[derive(Clone, Debug)]
pub struct AuditPaths {
    pub log: PathBuf,
    pub key: PathBuf,
    /// Forward each record to this syslog datagram socket as well.
    pub syslog: Option<PathBuf>,
    /// Rotate the live file at this size (None: never).
    pub rotate_bytes: Option<u64>,
}

/// The live log file's size at which a run starts a new one, unless
/// `--audit-rotate-size` or `$PORTCULLIS_AUDIT_ROTATE_SIZE` says otherwise.
pub const DEFAULT_ROTATE_BYTES: u64 = 64 << 20;

impl AuditPaths {
    /// `--audit-log`/`--audit-key`, else `$PORTCULLIS_AUDIT_LOG` /
    /// `$PORTCULLIS_AUDIT_KEY`, else the defaults (`/var/log/portcullis` and
    /// `/var/lib/portcullis` for root, the XDG state and data dirs otherwise).
    pub fn resolve(log: Option<&Path>, key: Option<&Path>, syslog: Option<&Path>) -> Result<AuditPaths, Failure> {
        let fail = |e: &dyn std::fmt::Display| Failure::setup(format!("audit log: {e}"));
        let env_log = std::env::var_os("PORTCULLIS_AUDIT_LOG").map(PathBuf::from);
        let env_key = std::env::var_os("PORTCULLIS_AUDIT_KEY").map(PathBuf::from);
        let (log, key) = (log.or(env_log.as_deref()), key.or(env_key.as_deref()));
        let log = match log {
            Some(p) => absolute(p)?,
            None => audit::location::default_log_path().map_err(|e| fail(&e))?,
        };
        let key = match key {
            Some(p) => absolute(p)?,
            None => audit::location::default_key_path().map_err(|e| fail(&e))?,
        };
        Ok(AuditPaths { log, key, syslog: syslog.map(Path::to_path_buf), rotate_bytes: Some(DEFAULT_ROTATE_BYTES) })
    }

    /// `--audit-rotate-size`, else `$PORTCULLIS_AUDIT_ROTATE_SIZE`, else the
    /// default; `0` turns rotation off.
    pub fn set_rotate_size(&mut self, flag: Option<&str>) -> Result<(), Failure> {
        let env = std::env::var("PORTCULLIS_AUDIT_ROTATE_SIZE").ok();
        let (text, from) = match (flag, env.as_deref()) {
            (Some(f), _) => (f, "--audit-rotate-size"),
            (None, Some(e)) => (e, "PORTCULLIS_AUDIT_ROTATE_SIZE"),
            (None, None) => return Ok(()),
        };
        let bytes = policy::size::parse(text).map_err(|m| Failure::setup(format!("{from} {text:?}: {m}")))?;
        self.rotate_bytes = (bytes > 0).then_some(bytes);
        Ok(())
    }

    /// How a run's handles open the log.
    pub fn log_options(&self, session: &str) -> LogOptions {
        LogOptions { session: Some(session.to_string()), rotate_bytes: self.rotate_bytes, ..LogOptions::default() }
    }

    /// The key (forge records) and the log (rewrite or read history): no
    /// Landlock rule of the plan may reach them.
    pub fn guarded(&self, lookups: &mut Lookups) -> [Guarded; 2] {
        let advice = "move the workspace, or pass --audit-log/--audit-key outside every rule";
        [
            Guarded::file("audit signing key", &self.key, advice, lookups),
            Guarded::file("audit log", &self.log, advice, lookups),
        ]
    }
}

/// The inodes of a plan's Landlock rules. A rule covers everything beneath
/// its inode, so a path is within its reach when the rule's inode is the
/// path's own or one of its ancestors'. Comparing inodes rather than
/// canonical path prefixes costs one stat per rule for the whole launch (no
/// symlink walk per rule and target), and also catches a rule naming the
/// same directory through a bind mount.
pub struct RuleInodes<'a> {
    paths: &'a [policy::plan::PathRule],
    /// (device, inode) to indexes into `paths`.
    inodes: std::collections::HashMap<(u64, u64), Vec<usize>>,
}

impl<'a> RuleInodes<'a> {
    /// Rules whose path does not exist reach nothing and are left out.
    pub fn of(plan: &'a policy::Plan) -> RuleInodes<'a> {
        Self::of_where(plan, |_| true)
    }

    /// Only the rules `keep` accepts (e.g. write rules).
    pub fn of_where(plan: &'a policy::Plan, keep: impl Fn(&policy::plan::PathRule) -> bool) -> RuleInodes<'a> {
        use std::os::unix::fs::MetadataExt;
        let mut inodes: std::collections::HashMap<_, Vec<_>> = std::collections::HashMap::new();
        for (i, rule) in plan.landlock.paths.iter().enumerate().filter(|(_, r)| keep(r)) {
            if let Ok(m) = std::fs::metadata(&rule.path) {
                inodes.entry((m.dev(), m.ino())).or_default().push(i);
            }
        }
        RuleInodes { paths: &plan.landlock.paths, inodes }
    }

    /// From the (device, inode) each rule's Landlock rule was made from
    /// (sandbox::Prepared): no stat at all, and exactly the objects the
    /// kernel confines to. Falls back to [`of`](Self::of) unless there is
    /// one entry per rule.
    pub fn opened(plan: &'a policy::Plan, opened: &[Option<(u64, u64)>]) -> RuleInodes<'a> {
        if opened.len() != plan.landlock.paths.len() {
            return Self::of(plan);
        }
        let mut inodes: std::collections::HashMap<_, Vec<_>> = std::collections::HashMap::new();
        for (i, inode) in opened.iter().enumerate() {
            if let Some(key) = inode {
                inodes.entry(*key).or_default().push(i);
            }
        }
        RuleInodes { paths: &plan.landlock.paths, inodes }
    }

    /// The first rule (in plan order, among those `keep` accepts) that
    /// reaches `path`, which need not exist yet (its nearest existing
    /// ancestor is what the sandbox could reach).
    pub fn reaching(
        &self,
        path: &Path,
        keep: impl Fn(&policy::plan::PathRule) -> bool,
    ) -> Option<&'a policy::plan::PathRule> {
        self.first_over(&Reach::of(path, &mut Lookups::default()), keep)
    }

    /// As [`reaching`](Self::reaching), for a path looked up before.
    pub fn first_over(
        &self,
        reach: &Reach,
        keep: impl Fn(&policy::plan::PathRule) -> bool,
    ) -> Option<&'a policy::plan::PathRule> {
        // Plan order decides which rule the message names.
        let mut first: Option<usize> = None;
        for key in &reach.chain {
            for &i in self.inodes.get(key).into_iter().flatten() {
                if keep(&self.paths[i]) && first.is_none_or(|f| i < f) {
                    first = Some(i);
                }
            }
        }
        first.map(|i| &self.paths[i])
    }
}

/// Where a path sits: the (device, inode) of its nearest existing ancestor
/// (canonical) and of each directory above that. A rule made from any of
/// them reaches the path. Needs no plan, so a run looks its guarded files
/// up while the profile compiles.
pub struct Reach {
    chain: Vec<(u64, u64)>,
}

/// What [`Reach::of`] looked up, for the next lookup of one batch (the
/// guarded places share most of their ancestors: each is looked up once).
/// Only for lookups made together: the file system moves on.
#[derive(Default)]
pub struct Lookups {
    /// stat (symlinks followed) by path.
    ids: std::collections::HashMap<PathBuf, Option<(u64, u64)>>,
    /// canonicalize by path.
    canonical: std::collections::HashMap<PathBuf, PathBuf>,
}

impl Lookups {
    fn id(&mut self, p: &Path) -> Option<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        if let Some(id) = self.ids.get(p) {
            return *id;
        }
        let id = std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
        self.ids.insert(p.to_path_buf(), id);
        id
    }

    fn canonical(&mut self, p: PathBuf) -> PathBuf {
        if let Some(c) = self.canonical.get(&p) {
            return c.clone();
        }
        let c = std::fs::canonicalize(&p).unwrap_or_else(|_| p.clone());
        self.canonical.insert(p, c.clone());
        c
    }
}

impl Reach {
    pub fn of(path: &Path, lookups: &mut Lookups) -> Reach {
        let mut probe = path.to_path_buf();
        while lookups.id(&probe).is_none() && probe.pop() {}
        let mut at = lookups.canonical(probe);
        let mut chain = Vec::new();
        loop {
            chain.extend(lookups.id(&at));
            if !at.pop() {
                return Reach { chain };
            }
        }
    }
}

/// What no Landlock rule of a launch may reach, looked up before the plan
/// is known (see [`Reach`]); [`check`](Self::check) refuses a plan with such a rule.
pub struct Guarded {
    reach: Reach,
    writes_only: bool,
    /// What such a rule would let the sandbox do.
    would: String,
    advice: &'static str,
}

impl Guarded {
    /// A file the sandbox must neither read nor write: no rule may reach its directory.
    pub fn file(what: &str, target: &Path, advice: &'static str, lookups: &mut Lookups) -> Guarded {
        let dir = target.parent().unwrap_or(target);
        Guarded {
            reach: Reach::of(dir, lookups),
            writes_only: false,
            would: format!("reach the {what} {}", target.display()),
            advice,
        }
    }

    /// A directory the sandbox must not write in: no writable rule may reach it.
    pub fn unwritable_dir(what: &str, dir: &Path, advice: &'static str, lookups: &mut Lookups) -> Guarded {
        let reach = Reach::of(dir, lookups);
        Guarded { reach, writes_only: true, would: format!("rewrite {what} {}", dir.display()), advice }
    }

    pub fn check(&self, rules: &RuleInodes) -> Result<(), Failure> {
        match rules.first_over(&self.reach, |r| r.write || !self.writes_only) {
            Some(rule) => Err(Failure::setup(format!(
                "{}: the rule for {} would let the sandbox {}; {}",
                rule.at, rule.path, self.would, self.advice
            ))),
            None => Ok(()),
        }
    }
}

fn absolute(p: &Path) -> Result<PathBuf, Failure> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    std::env::current_dir().map(|d| d.join(p)).map_err(|e| Failure::setup(format!("{}: {e}", p.display())))
}

/// An open audit log for one run.
pub struct Evidence {
    log: AuditLog,
    started: Instant,
    session: String,
    syslog: Option<Syslog>,
}

/// Forwards records to a syslog socket (RFC 3164 framing, the record as
/// JSON), so rsyslog, journald, Vector or Fluent Bit can ship them. The
/// signed file stays the evidence: a forwarding failure is reported once and
/// does not stop the run.
struct Syslog {
    socket: std::os::unix::net::UnixDatagram,
    path: PathBuf,
    failed: bool,
}

impl Syslog {
    /// Non-blocking: a collector that stops reading costs forwarded copies
    /// (reported once), never a stalled writer.
    fn socket() -> std::io::Result<std::os::unix::net::UnixDatagram> {
        let s = std::os::unix::net::UnixDatagram::unbound()?;
        s.set_nonblocking(true)?;
        Ok(s)
    }

    fn send(&mut self, seq: u64, session: &str, kind: Kind, body: &Value) {
        // authpriv (10); warning (4) for refusals, info (6) otherwise.
        let denied = body.get("verdict").and_then(Value::as_str) == Some("deny");
        let pri = 10 * 8 + if denied { 4 } else { 6 };
        let record = json!({ "seq": seq, "session": session, "kind": kind.as_str(), "body": body });
        let msg = format!("<{pri}>portcullis[{}]: {record}", std::process::id());
        if let Err(e) = self.socket.send_to(msg.as_bytes(), &self.path) {
            if !self.failed {
                // Not eprintln: this may run in the finisher, where a closed
                // stderr must not panic the run's last records away.
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "portcullis: note: cannot forward audit records to {}: {e}",
                    self.path.display()
                );
                self.failed = true;
            }
        }
    }
}

impl Evidence {
    /// Opens (creating on first use) the key and the log.
    pub fn open(paths: &AuditPaths, session: &str) -> Result<Evidence, Failure> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Failure::setup(format!("audit {what}: {e}; refusing to run without a working audit log"))
        };
        if let Some(dir) = paths.key.parent() {
            create_private_dir(dir).map_err(|e| fail("key directory", &e))?;
        }
        if let Some(dir) = paths.log.parent() {
            create_private_dir(dir).map_err(|e| fail("log directory", &e))?;
        }
        let (key, _created) = audit::key::load_or_create(&paths.key).map_err(|e| fail("key", &e))?;
        let log = AuditLog::open_with(&paths.log, key, paths.log_options(session)).map_err(|e| fail("log", &e))?;
        let syslog = match &paths.syslog {
            Some(p) => Some(Syslog {
                socket: Syslog::socket().map_err(|e| fail("syslog socket", &e))?,
                path: p.clone(),
                failed: false,
            }),
            None => None,
        };
        Ok(Evidence { log, started: Instant::now(), session: session.to_string(), syslog })
    }

    /// A second handle on the same log for another thread of this run (the
    /// gate's journal), without opening and checking the log again.
    pub fn sibling(&self) -> Result<Evidence, Failure> {
        let log = self.sibling_log()?;
        let syslog = match &self.syslog {
            Some(s) => Some(Syslog {
                socket: Syslog::socket().map_err(|e| {
                    Failure::setup(format!("audit syslog socket: {e}; refusing to run without a working audit log"))
                })?,
                path: s.path.clone(),
                failed: false,
            }),
            None => None,
        };
        Ok(Evidence { log, started: self.started, session: self.session.clone(), syslog })
    }

    fn sibling_log(&self) -> Result<AuditLog, Failure> {
        self.log
            .sibling(Some(self.session.clone()))
            .map_err(|e| Failure::setup(format!("audit log: {e}; refusing to run without a working audit log")))
    }

    fn append(&mut self, kind: Kind, body: Value) -> Result<(), Failure> {
        // The forwarded copy is masked like the record itself.
        let forwarded = self.syslog.as_ref().map(|_| {
            let mut b = body.clone();
            audit::mask_secrets(&mut b);
            b
        });
        let seq = self
            .log
            .append(kind, body)
            .map_err(|e| Failure::setup(format!("audit log write failed: {e}; refusing to go on without a record")))?;
        if let (Some(s), Some(body)) = (self.syslog.as_mut(), forwarded) {
            s.send(seq, &self.session, kind, &body);
        }
        Ok(())
    }

    /// Appends a record (group-committed with the next commit).
    pub fn record(&mut self, kind: Kind, body: Value) -> Result<(), Failure> {
        self.append(kind, body)
    }

    /// Appends a record and makes it durable before returning ("log before act").
    pub fn record_durable(&mut self, kind: Kind, body: Value) -> Result<(), Failure> {
        self.append(kind, body)?;
        self.commit()
    }

    /// Writes what is buffered and fsyncs it.
    pub fn commit(&mut self) -> Result<(), Failure> {
        self.log
            .commit()
            .map_err(|e| Failure::setup(format!("audit log write failed: {e}; refusing to go on without a record")))
    }

    /// Writes what is buffered without waiting for the disk: a log that
    /// cannot take it fails here. `commit` makes it durable.
    pub fn write_ahead(&mut self) -> Result<(), Failure> {
        self.log
            .write_ahead()
            .map_err(|e| Failure::setup(format!("audit log write failed: {e}; refusing to go on without a record")))
    }

    pub fn launch(&mut self, body: Value) -> Result<(), Failure> {
        self.append(Kind::Launch, body)
    }

    pub fn degradation(&mut self, body: Value) -> Result<(), Failure> {
        self.append(Kind::Degradation, body)
    }

    /// A launch portcullis refused (exit `code`): recorded and made durable.
    pub fn refused(&mut self, kind: Kind, code: i32, reason: &str, mut body: Value) -> Result<(), Failure> {
        if let Value::Object(m) = &mut body {
            m.insert("verdict".into(), json!("deny"));
            m.insert("reason".into(), json!(reason));
            m.insert("status".into(), json!(code));
        }
        self.append(kind, body)?;
        self.close()
    }

    /// The exit record, then commit and the final checkpoint.
    /// `incomplete`: what of the run's evidence could not be written
    /// (another handle's failures), named in the exit record.
    pub fn exit(&mut self, status: i32, incomplete: &[String]) -> Result<(), Failure> {
        self.exit_written(status, incomplete)?;
        self.close()
    }

    /// The exit record, written to the log but not yet durable: the lock
    /// stays held until [`checkpoint`](Self::checkpoint) has made it
    /// durable and written the final checkpoint. A log that cannot take
    /// it fails here.
    pub fn exit_written(&mut self, status: i32, incomplete: &[String]) -> Result<(), Failure> {
        let signal = (status > 128).then(|| status - 128);
        let ms = self.started.elapsed().as_millis() as u64;
        // The supervisor's own peak memory: bounded, floods or not.
        let max_rss_kb =
            nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF).map(|u| u.max_rss()).unwrap_or(0);
        let mut body =
            json!({ "status": status, "signal": signal, "duration_ms": ms, "supervisor_max_rss_kb": max_rss_kb });
        if !incomplete.is_empty() {
            body["incomplete"] = json!(incomplete);
        }
        self.append(Kind::Exit, body)?;
        self.write_ahead()
    }

    /// Takes the log's lock and keeps it for the records to come (see
    /// `audit::AuditLog::hold`): whoever reads or writes the log next waits
    /// for them.
    pub fn hold(&mut self) -> Result<(), Failure> {
        self.log.hold().map_err(|e| Failure::setup(format!("audit log write failed: {e}")))
    }

    /// Commits and writes a checkpoint (a journal's last act).
    pub fn checkpoint(&mut self) -> Result<(), Failure> {
        self.close()
    }

    /// The log's path, for messages.
    pub fn path(&self) -> &Path {
        self.log.path()
    }

    /// Commits and closes without a checkpoint (see `audit::AuditLog::release`).
    pub fn release(self) -> Result<(), Failure> {
        self.log.release().map_err(|e| Failure::setup(format!("audit log write failed: {e}")))
    }

    /// Commits and checkpoints under one hold of the log's lock (see
    /// `audit::AuditLog::checkpoint`): a reader never sees these records
    /// without the checkpoint that covers them.
    fn close(&mut self) -> Result<(), Failure> {
        self.log.checkpoint().map(drop).map_err(|e| match e {
            audit::AuditError::Storage(_) | audit::AuditError::Failed(_) => {
                Failure::setup(format!("audit log write failed: {e}; refusing to go on without a record"))
            }
            e => Failure::setup(format!("audit checkpoint failed: {e}")),
        })
    }
}

/// mkdir -p with 0700 for what we create (the audit crate refuses a
/// directory others can write).
pub(crate) fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}

#[cfg(test)]
mod tests {
    use super::{Lookups, Reach};

    /// One batch of lookups (shared ancestors, a symlinked directory, a
    /// path that does not exist yet) finds what each lookup finds alone.
    #[test]
    fn shared_lookups_find_what_fresh_ones_find() {
        let dir = std::env::temp_dir().join(format!("pc-reach-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("a/real/inner")).unwrap();
        std::fs::create_dir_all(dir.join("b")).unwrap();
        // Relative, and out of its own directory: its ancestors are a's.
        std::os::unix::fs::symlink("../a/real", dir.join("b/link")).unwrap();
        let paths = [
            dir.join("a/real/inner"),
            dir.join("b/link/inner"),
            dir.join("b/link/inner/not/yet"),
            dir.join("a/real"),
            dir.join("gone/away"),
            dir.join("b"),
            dir.clone(),
        ];
        let mut shared = Lookups::default();
        for p in &paths {
            let batch = Reach::of(p, &mut shared).chain;
            let alone = Reach::of(p, &mut Lookups::default()).chain;
            assert_eq!(batch, alone, "{}", p.display());
            assert!(!batch.is_empty(), "{}", p.display());
        }
        // Through the link, the chain is the real directory's.
        let real = Reach::of(&dir.join("a/real/inner"), &mut shared).chain;
        assert_eq!(Reach::of(&dir.join("b/link/inner"), &mut shared).chain, real);
        assert_ne!(Reach::of(&dir.join("b"), &mut shared).chain[..], real[2..]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
