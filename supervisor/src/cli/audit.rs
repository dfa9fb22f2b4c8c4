//! `portcullis audit verify | list | show | tail | export | key | prove`:
//! reading and checking the audit log (format: docs/AUDIT.md).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use audit::record::Record;
use audit::{display_safe, key, location, AuditError, AuditLog, Kind, VerifyError, VerifyOptions};
use clap::{Args, Subcommand, ValueEnum};

use crate::exit::Failure;

/// println! that does not panic when stdout is a closed pipe (`| head`).
macro_rules! say {
    ($($t:tt)*) => {{
        let _ = writeln!(std::io::stdout(), $($t)*);
    }};
}

/// Exit status of `portcullis audit verify` when the log does not verify.
pub const VERIFY_FAILED: i32 = 1;

const AUDIT_EXIT: &str = "\
Exit status: 0 on success; `verify` and `prove` exit 1 when the log, a
signature, the checkpoint or a proof does not hold (the message names the
first bad seq); 125 on other errors (bad flags, unreadable key).";

#[derive(Subcommand, Debug)]
#[command(after_help = AUDIT_EXIT)]
pub enum AuditCmd {
    /// Check every hash, signature, sequence number and the checkpoint; exit 0 only if all hold.
    #[command(after_help = AUDIT_EXIT)]
    Verify {
        /// The log (default: --log, or the default log).
        #[arg(value_name = "LOG")]
        log_arg: Option<PathBuf>,
        /// Hold the log to this checkpoint (default: <LOG>.checkpoint if it exists).
        /// Keep a copy of a checkpoint somewhere the log's writer cannot change it.
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// Require the log to be signed under this public key (base64, or a .pub file).
        #[arg(long, value_name = "KEY|FILE")]
        pubkey: Option<String>,
        /// Check signatures one by one with strict verification instead of in batches.
        #[arg(long)]
        strict: bool,
        /// Older rotated files were archived on purpose: verify from the
        /// oldest file present (its first record states the history before it).
        #[arg(long)]
        retained: bool,
        #[command(flatten)]
        paths: PathArgs,
    },
    /// List records, oldest first.
    List {
        /// Only records of this kind (launch, verdict, approval, exec, tool_call, exit, ...).
        #[arg(long, value_name = "KIND")]
        kind: Option<String>,
        /// Only records of this session.
        #[arg(long, value_name = "ID")]
        session: Option<String>,
        /// Only records at or after this time (RFC 3339, or a date).
        #[arg(long, value_name = "RFC3339")]
        since: Option<String>,
        /// Only records that say something was refused (verdict/answer deny, timeout, ...).
        #[arg(long)]
        denied: bool,
        /// Print the stored JSON lines instead of a table.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        paths: PathArgs,
    },
    /// Show one record in full.
    Show {
        seq: u64,
        #[command(flatten)]
        paths: PathArgs,
    },
    /// The last records; with -f, keep printing new ones.
    Tail {
        #[arg(short = 'f', long)]
        follow: bool,
        /// How many records to show first.
        #[arg(short = 'n', long, default_value_t = 10)]
        lines: usize,
        #[command(flatten)]
        paths: PathArgs,
    },
    /// Write every record as a JSON array or CSV to stdout.
    Export {
        #[arg(long, value_enum, default_value_t = ExportFormat::Json)]
        format: ExportFormat,
        #[command(flatten)]
        paths: PathArgs,
    },
    /// Show or rotate the signing key.
    Key {
        #[command(subcommand)]
        cmd: KeyCmd,
    },
    /// Print an inclusion proof for record SEQ against the latest checkpoint, and verify it.
    #[command(after_help = AUDIT_EXIT)]
    Prove {
        seq: u64,
        /// The checkpoint to prove against (default: <LOG>.checkpoint).
        #[arg(long, value_name = "FILE")]
        checkpoint: Option<PathBuf>,
        /// Require the log to be signed under this public key (base64, or a .pub file).
        #[arg(long, value_name = "KEY|FILE")]
        pubkey: Option<String>,
        #[command(flatten)]
        paths: PathArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum KeyCmd {
    /// The key's fingerprint and public key (creates the key if there is none yet).
    Show {
        #[command(flatten)]
        paths: PathArgs,
    },
    /// Replace the key: the log records the new public key, signed by the old one.
    Rotate {
        #[command(flatten)]
        paths: PathArgs,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportFormat {
    Json,
    Csv,
}

/// Where the log and key are; every audit subcommand takes these.
#[derive(Args, Debug, Clone)]
pub struct PathArgs {
    /// The audit log (default: $XDG_STATE_HOME/portcullis/audit.log; /var/log/portcullis/audit.log as root).
    #[arg(long, value_name = "PATH")]
    pub log: Option<PathBuf>,
    /// The signing key (default: $XDG_DATA_HOME/portcullis/audit.key; /var/lib/portcullis/audit.key as root).
    #[arg(long, value_name = "PATH")]
    pub key: Option<PathBuf>,
}

impl PathArgs {
    fn log(&self) -> Result<PathBuf, Failure> {
        match &self.log {
            Some(p) => Ok(p.clone()),
            None => location::default_log_path().map_err(|e| Failure::setup(e.to_string())),
        }
    }
    fn key(&self) -> Result<PathBuf, Failure> {
        match &self.key {
            Some(p) => Ok(p.clone()),
            None => location::default_key_path().map_err(|e| Failure::setup(e.to_string())),
        }
    }
}

fn failed(message: impl Into<String>) -> Failure {
    Failure { code: VERIFY_FAILED, message: message.into() }
}

fn setup(e: impl std::fmt::Display) -> Failure {
    Failure::setup(e.to_string())
}

pub fn audit(cmd: AuditCmd) -> Result<i32, Failure> {
    match cmd {
        AuditCmd::Verify { log_arg, checkpoint, pubkey, strict, retained, paths } => {
            verify(log_arg, checkpoint, pubkey, strict, retained, &paths)
        }
        AuditCmd::List { kind, session, since, denied, json, paths } => {
            let kind = match kind {
                Some(k) => Some(Kind::parse(&k).ok_or_else(|| {
                    let all: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
                    setup(format!("unknown kind {k:?}; one of: {}", all.join(", ")))
                })?),
                None => None,
            };
            let since = match since {
                Some(s) => Some(
                    audit::clock::parse_rfc3339(&s)
                        .ok_or_else(|| setup(format!("--since {s:?} is not an RFC 3339 time or a date")))?,
                ),
                None => None,
            };
            let filter = Filter { kind, session, since, denied };
            list(&paths.log()?, &filter, json)
        }
        AuditCmd::Show { seq, paths } => show(&paths.log()?, seq),
        AuditCmd::Tail { follow, lines, paths } => tail(&paths.log()?, follow, lines),
        AuditCmd::Export { format, paths } => export(&paths.log()?, format),
        AuditCmd::Key { cmd: KeyCmd::Show { paths } } => key_show(&paths),
        AuditCmd::Key { cmd: KeyCmd::Rotate { paths } } => key_rotate(&paths),
        AuditCmd::Prove { seq, checkpoint, pubkey, paths } => prove(&paths, seq, checkpoint, pubkey),
    }
}

/// The trust anchor: --pubkey, else the public half of --key, else the
/// default key's when verifying the default log.
fn trusted_key(
    pubkey: Option<String>,
    paths: &PathArgs,
    log: &Path,
) -> Result<Option<(audit::VerifyingKey, String)>, Failure> {
    if let Some(p) = pubkey {
        return key::read_public_key(&p).map(|k| Some((k, "--pubkey".to_string()))).map_err(setup);
    }
    let key_path = match &paths.key {
        Some(k) => k.clone(),
        None if location::default_log_path().ok().as_deref() == Some(log) => match location::default_key_path() {
            Ok(k) => k,
            Err(_) => return Ok(None),
        },
        None => return Ok(None),
    };
    let pub_path = key::public_path(&key_path);
    if let Ok(k) = key::read_public_key(&pub_path.to_string_lossy()) {
        return Ok(Some((k, pub_path.display().to_string())));
    }
    match key::load(&key_path) {
        Ok(k) => Ok(Some((k.verifying_key(), key_path.display().to_string()))),
        Err(e) if paths.key.is_some() => Err(setup(e)),
        Err(_) => Ok(None),
    }
}

fn verify(
    log_arg: Option<PathBuf>,
    checkpoint: Option<PathBuf>,
    pubkey: Option<String>,
    strict: bool,
    retained: bool,
    paths: &PathArgs,
) -> Result<i32, Failure> {
    let log = match log_arg {
        Some(l) => l,
        None => paths.log()?,
    };
    let checkpoint = checkpoint.or_else(|| Some(location::checkpoint_path(&log)).filter(|p| p.exists()));
    let trusted = trusted_key(pubkey, paths, &log)?;
    let opts = VerifyOptions { checkpoint: checkpoint.clone(), trusted_key: trusted.as_ref().map(|t| t.0), strict };
    let history = if retained { audit::History::Retained } else { audit::History::Complete };
    match audit::verify_history(&log, &opts, history) {
        Ok(r) => {
            // `records` is the history's size; archived records are not counted.
            let present = r.records.saturating_sub(r.first_seq);
            let last = r.records.saturating_sub(1);
            say!("ok: {present} records, seq {}..={last} verified ({})", r.first_seq, log.display());
            if r.files.len() > 1 {
                say!("  files       {} (rotated by size; oldest first)", r.files.len());
            }
            say!("  origin      {}", display_safe(&r.origin));
            say!("  root        {}", audit::merkle::to_hex(&r.root));
            for e in &r.keys {
                say!("  key         {} from seq {}", key::fingerprint(&e.key), e.from_seq);
            }
            match (&r.trusted_key, &trusted) {
                (Some(fp), Some((_, from))) => say!("  trusted key {fp} (from {})", display_safe(from)),
                _ => {
                    say!("  trusted key none: signatures are only self-consistent (pass --pubkey or --key to pin one)")
                }
            }
            match &r.checkpoint {
                Some((p, size)) => say!("  checkpoint  size {size} holds ({})", p.display()),
                None => say!("  checkpoint  none: a truncated tail would not be detected"),
            }
            for (seq, lost) in &r.recoveries {
                say!("  recovery    seq {seq}: a torn write of {lost} bytes was cut off");
            }
            say!("  signatures  {}", if r.strict { "strict, one by one" } else { "batch" });
            let kinds: Vec<String> = r.kinds.iter().map(|(k, n)| format!("{k} {n}")).collect();
            say!("  kinds       {}", kinds.join(", "));
            say!("  sessions    {}", r.sessions);
            Ok(0)
        }
        Err(e) => {
            let seq = e.first_bad_seq().map(|s| format!(" (first bad seq {s})")).unwrap_or_default();
            Err(failed(format!("audit log {} does not verify{seq}: {}", log.display(), display_safe(&e.to_string()))))
        }
    }
}

struct Filter {
    kind: Option<Kind>,
    session: Option<String>,
    since: Option<i64>,
    denied: bool,
}

impl Filter {
    fn matches(&self, r: &Record) -> bool {
        self.kind.is_none_or(|k| r.kind == k)
            && self.session.as_ref().is_none_or(|s| &r.session == s)
            && self.since.is_none_or(|t| audit::clock::parse_rfc3339(&r.ts).is_some_and(|ts| ts >= t))
            && (!self.denied || r.is_denial())
    }
}

/// One human line per record. The body is shown in canonical form, which
/// is printable ASCII, so nothing in it can move the cursor or fake a line.
fn summary(r: &Record) -> String {
    let body = audit::canon::encode(&serde_json::Value::Object(r.body.clone())).unwrap_or_else(|e| e.to_string());
    let body = if body.len() > 200 { format!("{}...", &body[..197]) } else { body };
    format!(
        "{:>6}  {}  {:<12}  {:<12}  {}",
        r.seq,
        display_safe(&r.ts),
        display_safe(&r.session),
        r.kind.as_str(),
        body
    )
}

fn each_record(log: &Path, mut f: impl FnMut(Record) -> bool) -> Result<(), Failure> {
    for item in audit::records(log).map_err(setup)? {
        match item {
            Ok(r) => {
                if !f(r) {
                    break;
                }
            }
            // A torn tail is normal after a crash; say so and show the rest.
            Err(VerifyError::TornTail { records, bytes, .. }) => {
                eprintln!("portcullis: note: {bytes} bytes of a torn write after seq {}", records.saturating_sub(1));
            }
            Err(e) => {
                eprintln!("portcullis: warning: {} (run `portcullis audit verify`)", display_safe(&e.to_string()))
            }
        }
    }
    Ok(())
}

fn list(log: &Path, filter: &Filter, json: bool) -> Result<i32, Failure> {
    let mut out = std::io::stdout().lock();
    each_record(log, |r| {
        if filter.matches(&r) {
            let line = if json { r.line().unwrap_or_default() } else { summary(&r) };
            // Stop quietly when the reader goes away (`| head`).
            return writeln!(out, "{line}").is_ok();
        }
        true
    })?;
    Ok(0)
}

fn show(log: &Path, seq: u64) -> Result<i32, Failure> {
    let mut found = None;
    each_record(log, |r| {
        if r.seq == seq {
            found = Some(r);
            return false;
        }
        true
    })?;
    let r = found.ok_or_else(|| setup(format!("no record with seq {seq} in {}", log.display())))?;
    let mut v = serde_json::Value::Object(r.body.clone());
    if let serde_json::Value::Object(m) = &mut v {
        let body = std::mem::take(m);
        m.insert("body".into(), serde_json::Value::Object(body));
        m.insert("v".into(), r.v.into());
        m.insert("seq".into(), r.seq.into());
        m.insert("ts".into(), r.ts.clone().into());
        m.insert("session".into(), r.session.clone().into());
        m.insert("kind".into(), r.kind.as_str().into());
        m.insert("prev".into(), audit::merkle::to_hex(&r.prev).into());
        m.insert("hash".into(), audit::merkle::to_hex(&r.hash).into());
        let sig = r.line().ok().and_then(|l| serde_json::from_str::<serde_json::Value>(&l).ok());
        m.insert("sig".into(), sig.and_then(|s| s.get("sig").cloned()).unwrap_or_default());
    }
    say!("{}", audit::canon::encode_pretty(&v));
    say!("(signatures and chain are checked by `portcullis audit verify`)");
    Ok(0)
}

fn tail(log: &Path, follow: bool, n: usize) -> Result<i32, Failure> {
    // Grows with what the log holds, not with what was asked for.
    let mut last: std::collections::VecDeque<Record> = std::collections::VecDeque::new();
    each_record(log, |r| {
        last.push_back(r);
        if last.len() > n {
            last.pop_front();
        }
        true
    })?;
    for r in &last {
        say!("{}", summary(r));
    }
    if !follow {
        return Ok(0);
    }
    // Follow: wait for a change in the log's directory (or a second), then
    // read complete new lines; a shrinking file is tampering.
    let mut changed = DirWatch::new(log);
    let mut file = audit::storage::open_read(log).map_err(setup)?;
    let mut offset = file.seek(SeekFrom::End(0)).map_err(|e| setup(format!("{}: {e}", log.display())))?;
    // Start after the last complete line so a torn tail is not half-printed.
    let mut partial: Vec<u8> = Vec::new();
    loop {
        changed.wait();
        let len = file.metadata().map_err(|e| setup(format!("{}: {e}", log.display())))?.len();
        if len < offset {
            return Err(failed(format!("{} shrank from {offset} to {len} bytes: truncated", log.display())));
        }
        if len == offset {
            // Rotated: the path now names a new live file, and the one we
            // hold (read to its end) lives on as a segment. Go on there.
            use std::os::unix::fs::MetadataExt;
            let ours = file.metadata().map_err(|e| setup(format!("{}: {e}", log.display())))?;
            if let Ok(now) = std::fs::metadata(log) {
                if (now.dev(), now.ino()) != (ours.dev(), ours.ino()) {
                    if !partial.is_empty() {
                        eprintln!("portcullis: warning: the rotated file ended in a torn line");
                        partial.clear();
                    }
                    file = audit::storage::open_read(log).map_err(setup)?;
                    offset = 0;
                }
            }
            continue;
        }
        let mut buf = Vec::new();
        file.seek(SeekFrom::Start(offset))
            .and_then(|_| (&mut file).take(len - offset).read_to_end(&mut buf))
            .map_err(|e| setup(format!("{}: {e}", log.display())))?;
        offset = len;
        partial.extend_from_slice(&buf);
        while let Some(i) = partial.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = partial.drain(..=i).collect();
            match Record::parse_line(&line[..line.len() - 1]) {
                Ok(r) => say!("{}", summary(&r)),
                Err(e) => eprintln!("portcullis: warning: unparseable line: {}", display_safe(&e.to_string())),
            }
        }
        let _ = std::io::stdout().flush();
    }
}

/// Wakes `tail -f` when something in the log's directory is written,
/// created or renamed in (a record, a rotation), and at least once a second.
/// Where inotify is unavailable it polls every 250 ms.
struct DirWatch(Option<nix::sys::inotify::Inotify>);

impl DirWatch {
    fn new(log: &Path) -> DirWatch {
        use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
        let dir = match log.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let watch = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).ok().filter(|i| {
            i.add_watch(dir, AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE | AddWatchFlags::IN_MOVED_TO).is_ok()
        });
        DirWatch(watch)
    }

    fn wait(&mut self) {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        use std::os::fd::AsFd;
        let Some(i) = &self.0 else { return std::thread::sleep(Duration::from_millis(250)) };
        let mut fds = [PollFd::new(i.as_fd(), PollFlags::POLLIN)];
        if poll(&mut fds, PollTimeout::from(1000u16)).is_err() {
            std::thread::sleep(Duration::from_millis(250));
        }
        // Drain: one look at the file answers every event so far.
        while i.read_events().is_ok_and(|e| !e.is_empty()) {}
    }
}

/// CSV cell per RFC 4180; cells a spreadsheet would run as a formula get a leading `'`.
fn csv_cell(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_string() };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

fn export(log: &Path, format: ExportFormat) -> Result<i32, Failure> {
    let mut out = std::io::stdout().lock();
    let mut first = true;
    let mut ok = true;
    match format {
        ExportFormat::Json => {
            let _ = write!(out, "[");
            each_record(log, |r| {
                let sep = if first { "\n" } else { ",\n" };
                first = false;
                ok = write!(out, "{sep}{}", r.line().unwrap_or_default()).is_ok();
                ok
            })?;
            let _ = writeln!(out, "\n]");
        }
        ExportFormat::Csv => {
            let _ = writeln!(out, "v,seq,ts,session,kind,body,prev,hash,sig");
            each_record(log, |r| {
                let body = audit::canon::encode(&serde_json::Value::Object(r.body.clone())).unwrap_or_default();
                let line: serde_json::Value = serde_json::from_str(&r.line().unwrap_or_default()).unwrap_or_default();
                let sig = line.get("sig").and_then(|s| s.as_str()).unwrap_or("").to_string();
                let cells = [
                    r.v.to_string(),
                    r.seq.to_string(),
                    r.ts.clone(),
                    r.session.clone(),
                    r.kind.as_str().to_string(),
                    body,
                    audit::merkle::to_hex(&r.prev),
                    audit::merkle::to_hex(&r.hash),
                    sig,
                ];
                let row: Vec<String> = cells.iter().map(|c| csv_cell(c)).collect();
                ok = writeln!(out, "{}", row.join(",")).is_ok();
                ok
            })?;
        }
    }
    Ok(0)
}

fn key_show(paths: &PathArgs) -> Result<i32, Failure> {
    let key_path = paths.key()?;
    let (k, created) = key::load_or_create(&key_path).map_err(setup)?;
    let vk = k.verifying_key();
    if created {
        say!("created a new audit key");
    }
    say!("key          {}", key_path.display());
    say!("public key   {}", key::public_key_b64(&vk));
    say!("fingerprint  {}", key::fingerprint(&vk));
    say!("public file  {}", key::public_path(&key_path).display());
    let log = paths.log()?;
    if let Some(Ok(header)) = audit::records(&log).ok().and_then(|mut r| r.next()) {
        if let Some(origin) = header.body.get("origin").and_then(|o| o.as_str()) {
            say!("log          {} (origin {})", log.display(), display_safe(origin));
            if audit::checkpoint::valid_name(origin) {
                say!("note key     {}", audit::checkpoint::verifier_key(origin, &vk));
            }
        }
    }
    Ok(0)
}

/// Rotation, crash-safe: the new key is stored at `<key>.next` first, the
/// log records the rotation durably, then the key file is replaced. A crash
/// in between is finished by running `key rotate` again.
fn key_rotate(paths: &PathArgs) -> Result<i32, Failure> {
    let key_path = paths.key()?;
    let log_path = paths.log()?;
    let old = key::load(&key_path).map_err(setup)?;
    let next_path = audit::storage::sibling(&key_path, ".next");
    let new = match key::load(&next_path) {
        Ok(k) => k,
        Err(_) => {
            let _ = std::fs::remove_file(&next_path);
            let k = key::generate().map_err(setup)?;
            key::store_new(&next_path, &k).map_err(setup)?;
            k
        }
    };
    let new_fp = key::fingerprint(&new.verifying_key());
    // The new key signs for the history before it (docs/AUDIT.md §5): only
    // for a history anchored in the key in force. A log someone ended with
    // a rotation to our public key, unendorsed, is not ours to vouch for.
    let anchored = |log: &Path| {
        let opts = VerifyOptions {
            checkpoint: Some(location::checkpoint_path(log)).filter(|p| p.exists()),
            trusted_key: Some(old.verifying_key()),
            strict: false,
        };
        audit::verify_history(log, &opts, audit::History::Retained)
    };
    match AuditLog::open(&log_path, old.clone()) {
        Ok(mut log) => {
            if let Err(e) = anchored(&log_path) {
                return Err(Failure::setup(format!(
                    "audit key rotate: {} does not verify under the key in force, and the new key would vouch for it: {}",
                    log_path.display(),
                    display_safe(&e.to_string())
                )));
            }
            let seq = log.rotate_key(new.clone()).map_err(setup)?;
            log.close().map_err(setup)?;
            say!("rotation recorded at seq {seq}, signed by {}", key::fingerprint(&old.verifying_key()));
        }
        // An earlier rotation reached the log but not the key file: finish it.
        Err(AuditError::KeyMismatch { log_key, .. }) if log_key == new_fp => {
            say!("finishing an interrupted rotation");
        }
        Err(e) => return Err(setup(e)),
    }
    key::replace(&key_path, &new).map_err(setup)?;
    let _ = std::fs::remove_file(&next_path);
    let _ = std::fs::remove_file(audit::storage::sibling(&next_path, ".pub"));
    say!("new key      {new_fp} ({})", key_path.display());
    say!("Logs signed by the old key elsewhere cannot be continued with the new one.");
    Ok(0)
}

fn prove(paths: &PathArgs, seq: u64, checkpoint: Option<PathBuf>, pubkey: Option<String>) -> Result<i32, Failure> {
    let log = paths.log()?;
    let cp_path = checkpoint.unwrap_or_else(|| location::checkpoint_path(&log));
    let note = std::fs::read_to_string(&cp_path).map_err(|e| setup(format!("{}: {e}", cp_path.display())))?;
    // The whole log is verified against the checkpoint first, under the
    // same trust anchor as `verify`: a proof out of a log that does not
    // verify, or that anyone's key could have signed, would prove nothing.
    let trusted = trusted_key(pubkey, paths, &log)?;
    let opts =
        VerifyOptions { checkpoint: Some(cp_path.clone()), trusted_key: trusted.as_ref().map(|t| t.0), strict: false };
    let report = audit::verify_with(&log, &opts).map_err(|e| {
        let s = e.first_bad_seq().map(|s| format!(" (first bad seq {s})")).unwrap_or_default();
        failed(format!("audit log {} does not verify{s}: {}", log.display(), display_safe(&e.to_string())))
    })?;
    // The note the proof is built on is the one verified.
    if std::fs::read_to_string(&cp_path).ok().as_deref() != Some(note.as_str()) {
        return Err(failed(format!("{} changed while the log was verified against it", cp_path.display())));
    }
    let receipt = audit::prove_inclusion(&log, seq, &note).map_err(|e| failed(e.to_string()))?;
    let size = receipt.tree_size;
    let vk = report
        .keys
        .iter()
        .rev()
        .find(|e| e.from_seq <= size)
        .map(|e| e.key)
        .ok_or_else(|| failed("no key in force at the checkpoint"))?;
    receipt.verify(&vk).map_err(|e| failed(format!("proof does not verify: {e}")))?;
    say!("{}", audit::canon::encode_pretty(&receipt.to_json()));
    say!("verified: seq {seq} is leaf {seq} of the {size}-record tree in {}", cp_path.display());
    match &trusted {
        Some((k, from)) => say!("  trusted key {} (from {})", key::fingerprint(k), display_safe(from)),
        None => say!("  trusted key none: signatures are only self-consistent (pass --pubkey or --key to pin one)"),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    struct Tmp(PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    fn tmp(tag: &str) -> Tmp {
        let dir = std::env::temp_dir().join(format!("portcullis-cli-audit-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        Tmp(dir)
    }

    fn paths(t: &Tmp) -> PathArgs {
        PathArgs { log: Some(t.0.join("audit.log")), key: Some(t.0.join("audit.key")) }
    }

    fn write_sample(t: &Tmp) {
        let (k, _) = key::load_or_create(&t.0.join("audit.key")).unwrap();
        let mut log = AuditLog::open(&t.0.join("audit.log"), k).unwrap();
        log.append(Kind::Verdict, json!({"syscall": "openat", "path": "/etc/shadow", "verdict": "deny"})).unwrap();
        log.append(Kind::Verdict, json!({"syscall": "openat", "path": "/w", "verdict": "allow"})).unwrap();
        log.close().unwrap();
    }

    fn verify_cmd(t: &Tmp) -> AuditCmd {
        AuditCmd::Verify {
            log_arg: None,
            checkpoint: None,
            pubkey: None,
            strict: false,
            retained: false,
            paths: paths(t),
        }
    }

    #[test]
    fn verify_exit_codes() {
        let t = tmp("verify");
        write_sample(&t);
        assert_eq!(audit(verify_cmd(&t)).unwrap(), 0);
        // Drop the last record: the sibling checkpoint catches the truncation.
        let log = t.0.join("audit.log");
        let text = std::fs::read_to_string(&log).unwrap();
        let mut lines: Vec<&str> = text.lines().collect();
        lines.pop();
        std::fs::write(&log, lines.join("\n") + "\n").unwrap();
        let err = audit(verify_cmd(&t)).unwrap_err();
        assert_eq!(err.code, VERIFY_FAILED);
        assert!(err.message.contains("first bad seq 2"), "{}", err.message);
    }

    /// `prove` holds the log to the key `verify` would: a log and
    /// checkpoint forged whole under another key prove nothing.
    #[test]
    fn prove_pins_the_key_like_verify() {
        let t = tmp("prove");
        write_sample(&t);
        let prove = |t: &Tmp| AuditCmd::Prove { seq: 1, checkpoint: None, pubkey: None, paths: paths(t) };
        assert_eq!(audit(prove(&t)).unwrap(), 0);
        // The same history, signed by someone else's key.
        let other = tmp("prove-other");
        write_sample(&other);
        for f in ["audit.log", "audit.log.checkpoint"] {
            std::fs::copy(other.0.join(f), t.0.join(f)).unwrap();
        }
        let err = audit(prove(&t)).unwrap_err();
        assert_eq!(err.code, VERIFY_FAILED);
        assert!(err.message.contains("not anchored in the trusted key"), "{}", err.message);
    }

    #[test]
    fn rotate_then_verify_pins_the_new_key() {
        let t = tmp("rotate");
        write_sample(&t);
        let before = std::fs::read_to_string(t.0.join("audit.key.pub")).unwrap();
        assert_eq!(audit(AuditCmd::Key { cmd: KeyCmd::Rotate { paths: paths(&t) } }).unwrap(), 0);
        let after = std::fs::read_to_string(t.0.join("audit.key.pub")).unwrap();
        assert_ne!(before, after);
        assert!(!t.0.join("audit.key.next").exists());
        assert_eq!(audit(verify_cmd(&t)).unwrap(), 0);
        // The log continues with the new key.
        let k = key::load(&t.0.join("audit.key")).unwrap();
        AuditLog::open(&t.0.join("audit.log"), k).unwrap().close().unwrap();
    }

    /// A log someone else wrote and ended with a rotation to our public key,
    /// without our key's signature: rotating would make the new key vouch
    /// for it. `key rotate` refuses; our own log still rotates (above).
    #[test]
    fn rotate_refuses_to_vouch_for_a_log_not_anchored_in_the_key() {
        let t = tmp("rotate-forged");
        let (ours, _) = key::load_or_create(&t.0.join("audit.key")).unwrap();
        let theirs = key::generate().unwrap();
        let log_path = t.0.join("audit.log");
        let mut log = AuditLog::open(&log_path, theirs.clone()).unwrap();
        log.append(Kind::Verdict, json!({"syscall": "openat", "path": "/w", "verdict": "allow"})).unwrap();
        log.rotate_key(ours.clone()).unwrap();
        log.close().unwrap();
        // Strip our endorsement from the rotation, as a forger must.
        let text = std::fs::read_to_string(&log_path).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let last = lines.len() - 1;
        let r = Record::parse_line(lines[last].as_bytes()).unwrap();
        let mut body = r.body.clone();
        body.remove("new_key_signature").unwrap();
        lines[last] =
            audit::record::seal(&theirs, r.seq, r.ts, r.session, r.kind, body, r.prev).unwrap().line().unwrap();
        std::fs::write(&log_path, lines.join("\n") + "\n").unwrap();
        let _ = std::fs::remove_file(location::checkpoint_path(&log_path));
        let err = audit(AuditCmd::Key { cmd: KeyCmd::Rotate { paths: paths(&t) } }).unwrap_err();
        assert!(err.message.contains("would vouch for it"), "{}", err.message);
        assert!(!std::fs::read_to_string(&log_path).unwrap().contains("new_key_signature"));
    }

    #[test]
    fn denied_filter_and_csv_cells() {
        let t = tmp("filter");
        write_sample(&t);
        let f = Filter { kind: None, session: None, since: None, denied: true };
        let denied: Vec<u64> = audit::records(&t.0.join("audit.log"))
            .unwrap()
            .filter_map(Result::ok)
            .filter(|r| f.matches(r))
            .map(|r| r.seq)
            .collect();
        assert_eq!(denied, vec![1]);
        assert_eq!(csv_cell("=cmd|' /C calc'!A0"), "'=cmd|' /C calc'!A0");
        assert_eq!(csv_cell("a,\"b\""), "\"a,\"\"b\"\"\"");
        assert_eq!(csv_cell("plain"), "plain");
    }
}
