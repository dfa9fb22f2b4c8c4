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

/// Where the log and its signing key live.
#[derive(Clone, Debug)]
pub struct AuditPaths {
    pub log: PathBuf,
    pub key: PathBuf,
}

impl AuditPaths {
    /// `--audit-log`/`--audit-key`, else the defaults (`/var/log/portcullis`
    /// and `/var/lib/portcullis` for root, the XDG state and data dirs otherwise).
    pub fn resolve(log: Option<&Path>, key: Option<&Path>) -> Result<AuditPaths, Failure> {
        let fail = |e: &dyn std::fmt::Display| Failure::setup(format!("audit log: {e}"));
        let log = match log {
            Some(p) => absolute(p)?,
            None => audit::location::default_log_path().map_err(|e| fail(&e))?,
        };
        let key = match key {
            Some(p) => absolute(p)?,
            None => audit::location::default_key_path().map_err(|e| fail(&e))?,
        };
        Ok(AuditPaths { log, key })
    }

    /// Refuses when a Landlock rule of the plan would let the sandbox reach
    /// the key (forge records) or the log (rewrite or read history).
    pub fn check_out_of_reach(&self, plan: &policy::Plan) -> Result<(), Failure> {
        let targets = [("signing key", &self.key), ("log", &self.log)];
        for rule in &plan.landlock.paths {
            let Ok(rule_path) = std::fs::canonicalize(&rule.path) else { continue };
            for (what, target) in targets {
                let dir = target.parent().unwrap_or(target);
                let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
                if canon.starts_with(&rule_path) {
                    return Err(Failure::setup(format!(
                        "{}: the rule for {} would let the sandbox reach the audit {what} {}; move the workspace, or pass --audit-log/--audit-key outside every rule",
                        rule.at,
                        rule.path,
                        target.display()
                    )));
                }
            }
        }
        Ok(())
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
        let opts = LogOptions { session: Some(session.to_string()), ..LogOptions::default() };
        let log = AuditLog::open_with(&paths.log, key, opts).map_err(|e| fail("log", &e))?;
        Ok(Evidence { log, started: Instant::now() })
    }

    fn append(&mut self, kind: Kind, body: Value) -> Result<(), Failure> {
        self.log
            .append(kind, body)
            .map(drop)
            .map_err(|e| Failure::setup(format!("audit log write failed: {e}; refusing to go on without a record")))
    }

    /// Writes what is buffered and fsyncs it.
    pub fn commit(&mut self) -> Result<(), Failure> {
        self.log
            .commit()
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
    pub fn exit(&mut self, status: i32) -> Result<(), Failure> {
        let signal = (status > 128).then(|| status - 128);
        let ms = self.started.elapsed().as_millis() as u64;
        self.append(Kind::Exit, json!({ "status": status, "signal": signal, "duration_ms": ms }))?;
        self.close()
    }

    fn close(&mut self) -> Result<(), Failure> {
        self.commit()?;
        self.log.checkpoint().map(drop).map_err(|e| Failure::setup(format!("audit checkpoint failed: {e}")))
    }
}

/// mkdir -p with 0700 for what we create (the audit crate refuses a
/// directory others can write).
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)
}
