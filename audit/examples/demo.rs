//! Writes a small sample log the way a supervisor would:
//! `cargo run -p portcullis-audit --example demo -- LOG KEY`.

use audit::{key, AuditLog, Kind, LogOptions};
use serde_json::json;
use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args_os().skip(1).map(PathBuf::from);
    let (Some(log_path), Some(key_path)) = (args.next(), args.next()) else {
        return Err("usage: demo LOG KEY".into());
    };
    let (k, _) = key::load_or_create(&key_path)?;
    let opts = LogOptions { session: Some("demo-1".into()), ..LogOptions::default() };
    let mut log = AuditLog::open_with(&log_path, k, opts)?;
    log.append(
        Kind::Launch,
        json!({"profile": "filesystem", "argv": ["npx", "-y", "server-filesystem"], "landlock_abi": 7}),
    )?;
    log.append(Kind::Degradation, json!({"layer": "landlock", "what": "none"}))?;
    log.commit()?;
    log.append(Kind::Verdict, json!({"syscall": "openat", "path": "/etc/shadow", "verdict": "deny", "rule": "fs"}))?;
    log.append(Kind::Verdict, json!({"syscall": "openat", "path": "/work/a\n\u{1b}[31mred", "verdict": "allow"}))?;
    log.append_durable(Kind::Approval, json!({"syscall": "connect", "verdict": "ask", "answer": "deny", "who": "uid 1000", "front_end": "terminal", "latency_ms": 1800}))?;
    log.append(Kind::Exit, json!({"status": 0}))?;
    log.close()?;
    Ok(())
}
