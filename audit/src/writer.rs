//! The append side: one `AuditLog` handle per supervisor, any number of
//! handles (processes) per file.
//!
//! Every change to the file happens inside an exclusive `flock` on the
//! sibling `<log>.lock`, after re-reading whatever other writers appended,
//! so the chain stays linear however many supervisors share it. Records are
//! buffered by `append` and written and fsynced together by `commit`
//! (group commit); `append_durable` is for decisions a human made, which
//! must not be acted on before their record is on disk (THREATS.md L11).

use crate::chain::{self, Chain};
use crate::checkpoint::{self, Checkpoint, CheckpointError};
use crate::clock;
use crate::key::{self, KeyError};
use crate::mask;
use crate::merkle;
use crate::record::{self, Kind, Record, FORMAT_VERSION, MAX_LINE};
use crate::resume;
use crate::segment;
use crate::signer::{SignerError, SignerThread};
use crate::storage::{self, StorageError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use serde_json::{Map, Value};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// At most this many bytes of a torn tail are kept (base64) in the recovery record.
const RECOVERY_KEEP: usize = 4096;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AuditError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("lock {}: {source}", path.display())]
    Lock {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: damaged at line {line} (seq {seq}): {problem}; run `portcullis audit verify` and move the log aside to start a new one", path.display())]
    Corrupt { path: PathBuf, line: u64, seq: u64, problem: String },
    #[error("{}: the log is signed by key {log_key} but the key file holds {our_key}; use the key that signs it, or rotate with `portcullis audit key rotate`", path.display())]
    KeyMismatch { path: PathBuf, log_key: String, our_key: String },
    #[error("{}: another writer rotated the log key to {new_key} at seq {seq}; this handle holds {our_key} and stops writing", path.display())]
    KeyRotatedElsewhere { path: PathBuf, seq: u64, new_key: String, our_key: String },
    #[error("{}: its checkpoint says {size} records but the log has {records}: the log was truncated or rolled back; run `portcullis audit verify` (if you removed the log on purpose, remove its .checkpoint too)", path.display())]
    CheckpointAhead { path: PathBuf, size: u64, records: u64 },
    #[error("{}: the first {size} records do not match the checkpoint's root: the log was rewritten; run `portcullis audit verify`", path.display())]
    CheckpointMismatch { path: PathBuf, size: u64 },
    #[error("{}: checkpoint: {source}", path.display())]
    Checkpoint {
        path: PathBuf,
        #[source]
        source: CheckpointError,
    },
    #[error("{}: the log shrank from {from} to {to} bytes while open: someone truncated it", path.display())]
    Shrunk { path: PathBuf, from: u64, to: u64 },
    #[error("{}: the log file was removed, renamed or replaced while open; records stop here (fail closed)", path.display())]
    Replaced { path: PathBuf },
    #[error("{}: its checkpoint is at {size} records, before this file's first record (seq {first}): the checkpoint was rolled back or the live file replaced; run `portcullis audit verify`", path.display())]
    CheckpointBeforeSegment { path: PathBuf, size: u64, first: u64 },
    #[error("{}: the live file is empty but rotated segments of it exist (newest {}): it was removed or emptied; a new history is not started here (move the segments aside on purpose to start one)", path.display(), newest.display())]
    LiveFileMissing { path: PathBuf, newest: PathBuf },
    #[error("{}: rotating the log to {}: {source}", path.display(), segment.display())]
    Rotate {
        path: PathBuf,
        segment: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the audit log is unusable after an earlier failure ({0}); no record is accepted")]
    Failed(String),
    #[error("`{0}` records are written by the log itself, not by callers")]
    ReservedKind(Kind),
    #[error("a record body must be a JSON object")]
    BodyNotObject,
    #[error("record of {0} bytes is larger than the limit")]
    TooLarge(usize),
    #[error("record body: {0}")]
    Canon(#[from] crate::canon::CanonError),
    #[error("a second handle on the log can only be made between commits")]
    NotBetweenCommits,
    #[error("session id {0:?} is invalid: use 1-128 of A-Z a-z 0-9 . _ : @ / -")]
    InvalidSession(String),
    #[error(transparent)]
    Signer(#[from] SignerError),
}

/// How an `AuditLog` behaves; `Default` is what `AuditLog::open` uses.
#[derive(Clone, Debug)]
pub struct LogOptions {
    /// Session id stamped on every record this handle writes (default: 128 random bits, hex).
    pub session: Option<String>,
    /// Write a checkpoint after this many records (default 1000).
    pub checkpoint_every: u64,
    /// ...or when this much time has passed since the last one, checked at
    /// each commit (default 10 s). Call `checkpoint()` from a timer for idle logs.
    pub checkpoint_interval: Duration,
    /// `append` commits by itself when this many records are buffered (default 512).
    pub max_batch: usize,
    /// Origin written into the header of a new log (default `portcullis-audit/<16 random hex>`).
    pub origin: Option<String>,
    /// Rotation by size: once a commit leaves the live file at least this
    /// many bytes long, the writer moves it aside as `<log>.<first seq, 20
    /// digits>` and continues the chain in a new live file (docs/AUDIT.md
    /// §12). `None` (the default): one file grows forever.
    pub rotate_bytes: Option<u64>,
    /// How long to wait for the log's lock before failing (default 30 s).
    /// Writers hold it for one group commit, milliseconds; a holder stuck
    /// longer (stopped, or on a dead disk) must not hang every other writer
    /// silently and for ever: the wait fails closed, naming the lock.
    pub lock_wait: Duration,
}

impl Default for LogOptions {
    fn default() -> Self {
        LogOptions {
            session: None,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(10),
            max_batch: 512,
            origin: None,
            rotate_bytes: None,
            lock_wait: Duration::from_secs(30),
        }
    }
}

/// Takes the exclusive lock, waiting at most `wait`: at once when it is
/// free (the usual case), else polling with a backoff capped at 2 ms (a
/// release is noticed within that), then a TimedOut error.
fn lock_within(lock: &File, wait: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_micros(50);
    loop {
        match lock.try_lock() {
            Ok(()) => return Ok(()),
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(2));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!(
                        "another writer has held it for {} s (a stopped or stuck portcullis?); refusing to wait longer",
                        wait.as_secs_f64()
                    ),
                ))
            }
        }
    }
}

/// Signed records as one write: their lines (each with its `\n`), and the
/// Merkle frontier as it will be once they are durable.
struct Encoded {
    buf: Vec<u8>,
    frontier: merkle::Frontier,
}

impl Encoded {
    fn new(frontier: &merkle::Frontier, records: usize) -> Encoded {
        Encoded { buf: Vec::with_capacity(records * 400), frontier: frontier.clone() }
    }

    fn push(&mut self, r: &Record, body_enc: &str) {
        let line = r.line_with_body(body_enc);
        self.frontier.push(merkle::leaf_hash(line.as_bytes()));
        self.buf.extend_from_slice(line.as_bytes());
        self.buf.push(b'\n');
    }
}

/// A torn tail found (and cut off) while catching up.
struct Torn {
    offset: u64,
    bytes: Vec<u8>,
}

/// An open, writable audit log. See the crate docs for the calling protocol.
pub struct AuditLog {
    path: PathBuf,
    lock_path: PathBuf,
    checkpoint_path: PathBuf,
    file: File,
    lock: File,
    key: SigningKey,
    vk: VerifyingKey,
    /// Signs buffered records with `key` on a thread of its own (see `signer`).
    signer: SignerThread,
    session: String,
    opts: LogOptions,
    /// History as of `known_len` bytes, plus any pending records.
    chain: Chain,
    /// Bytes of the file folded into `chain` (always the end of a complete line).
    known_len: u64,
    /// Buffered records (with their body's canonical encoding): hashed and
    /// chained; their signatures are being made by `signer`, collected at commit.
    pending: Vec<(Record, String)>,
    /// Written by `write_ahead`, not yet fsynced: the length before it and
    /// what it adds to the tree once durable (`commit` finishes it).
    unsynced: Option<(u64, Encoded)>,
    locked: bool,
    last_checkpoint_size: u64,
    last_checkpoint_at: Instant,
    failed: Option<String>,
    closed: bool,
    /// This handle appended a record (a handle that never did leaves the
    /// checkpoint to the writer that did).
    appended: bool,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("session", &self.session)
            .field("next_seq", &self.chain.next_seq)
            .field("pending", &self.pending.len())
            .finish_non_exhaustive()
    }
}

fn random_hex(bytes: usize) -> Result<String, AuditError> {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn valid_session(s: &str) -> bool {
    (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_@/-".contains(&b))
}

impl AuditLog {
    /// Opens (creating if needed) the log at `path`, signing with `key`.
    pub fn open(path: &Path, key: SigningKey) -> Result<AuditLog, AuditError> {
        Self::open_with(path, key, LogOptions::default())
    }

    /// Opens the log with explicit options.
    ///
    /// Creates the parent directory 0700 if missing (refuses one writable by
    /// group or others), takes the lock, reads the whole log to continue its
    /// chain, repairs a torn last line with a `recovery` record, checks the
    /// existing checkpoint against the log (fails if the log is shorter or
    /// different: truncation or rollback), writes a header to a new log.
    pub fn open_with(path: &Path, key: SigningKey, opts: LogOptions) -> Result<AuditLog, AuditError> {
        let session = match &opts.session {
            Some(s) if valid_session(s) => s.clone(),
            Some(s) => return Err(AuditError::InvalidSession(s.clone())),
            None => random_hex(16)?,
        };
        storage::ensure_private_dir(&storage::parent_dir(path))?;
        let lock_path = storage::sibling(path, ".lock");
        let lock = storage::open_lock(&lock_path)?;
        lock_within(&lock, opts.lock_wait).map_err(|source| AuditError::Lock { path: lock_path.clone(), source })?;
        // The log itself is created under the lock, so two first writers
        // cannot both write a header. Dropping `lock` on error releases it.
        let file = storage::open_append(path)?;
        let mut log = AuditLog {
            path: path.to_path_buf(),
            checkpoint_path: storage::sibling(path, ".checkpoint"),
            file,
            lock_path,
            lock,
            vk: key.verifying_key(),
            key,
            signer: SignerThread::new(),
            session,
            opts,
            chain: Chain::default(),
            known_len: 0,
            pending: Vec::new(),
            unsynced: None,
            locked: true,
            last_checkpoint_size: 0,
            last_checkpoint_at: Instant::now(),
            failed: None,
            closed: false,
            appended: false,
        };
        let result = log.open_locked();
        log.unlock();
        if result.is_err() {
            log.closed = true;
        }
        result.map(|()| log)
    }

    /// A second writer on the same log, with the same key, for another thread
    /// or session of this process. Nothing is read or verified again: the
    /// sibling starts from this handle's view of the log (checked when this
    /// handle opened it), and like every handle folds in what other writers
    /// appended when it next takes the lock. Only between commits: nothing
    /// pending, the lock not held.
    pub fn sibling(&self, session: Option<String>) -> Result<AuditLog, AuditError> {
        if let Some(why) = &self.failed {
            return Err(AuditError::Failed(why.clone()));
        }
        if self.locked || self.closed || !self.pending.is_empty() {
            return Err(AuditError::NotBetweenCommits);
        }
        let session = match session {
            Some(s) if valid_session(&s) => s,
            Some(s) => return Err(AuditError::InvalidSession(s)),
            None => random_hex(16)?,
        };
        let lock = storage::open_lock(&self.lock_path)?;
        let file = self.file.try_clone().map_err(|e| StorageError::io("duplicate", &self.path, e))?;
        Ok(AuditLog {
            path: self.path.clone(),
            lock_path: self.lock_path.clone(),
            checkpoint_path: self.checkpoint_path.clone(),
            file,
            lock,
            key: self.key.clone(),
            vk: self.vk,
            signer: SignerThread::new(),
            session: session.clone(),
            opts: LogOptions { session: Some(session), ..self.opts.clone() },
            chain: self.chain.clone(),
            known_len: self.known_len,
            pending: Vec::new(),
            unsynced: None,
            locked: false,
            last_checkpoint_size: self.last_checkpoint_size,
            last_checkpoint_at: self.last_checkpoint_at,
            failed: None,
            closed: false,
            appended: false,
        })
    }

    /// Starts from `<log>.state` when it matches the log (see `resume`).
    fn resume(&mut self, checkpoint_size: Option<u64>) {
        let Some(st) = resume::load(&storage::sibling(&self.path, ".state")) else { return };
        // The keys come from the cache too: the record it ends on must be
        // one this writer's key signed (checked below, in
        // `check_last_signature`), never one under a key the cache names.
        // Else a cache naming a key of a forger's for that seq would have
        // the writer chain onto the forger's record.
        if st.chain.key_for(st.chain.next_seq - 1) != Some(&self.vk) {
            return;
        }
        let len = match self.file.metadata() {
            Ok(m) => m.len(),
            Err(_) => return,
        };
        // The checkpoint must be at or beyond the state, so that reading the
        // rest of the log still meets (and checks) the checkpointed size.
        if st.bytes > len || checkpoint_size.is_some_and(|c| c < st.chain.next_seq) {
            return;
        }
        self.known_len = st.bytes;
        let matches = self
            .read_last_line()
            .ok()
            .and_then(|line| Record::parse_line(&line).ok())
            .is_some_and(|rec| rec.seq + 1 == st.chain.next_seq && rec.hash == st.chain.last_hash);
        if matches {
            self.chain = st.chain;
        } else {
            self.known_len = 0;
        }
    }

    fn open_locked(&mut self) -> Result<(), AuditError> {
        let existing = self.read_checkpoint_file()?;
        let mut at_size: Option<(merkle::Hash, Option<VerifyingKey>)> = None;
        let want = existing.as_ref().map(|(cp, _)| cp.size);
        if want == Some(0) {
            at_size = Some((merkle::empty_root(), None));
        }
        self.resume(want);
        let torn = self.fold_new_bytes(|chain| {
            if Some(chain.frontier.size()) == want {
                at_size = Some((chain.frontier.root(), chain.current_key().copied()));
            }
        })?;
        if let Some((cp, text)) = existing {
            let Some((root, key)) = at_size else {
                if cp.size < self.chain.segment_start {
                    return Err(AuditError::CheckpointBeforeSegment {
                        path: self.path.clone(),
                        size: cp.size,
                        first: self.chain.segment_start,
                    });
                }
                return Err(AuditError::CheckpointAhead {
                    path: self.path.clone(),
                    size: cp.size,
                    records: self.chain.next_seq,
                });
            };
            // A note this key wrote is the note it writes again (Ed25519
            // signing is deterministic): signing costs half a verification.
            // Anything else (another key, a witness's cosignature) is verified.
            let ours = key == Some(self.vk) && cp.origin == self.chain.origin && cp.sign(&self.key) == text;
            if let (Some(vk), false) = (key, ours) {
                Checkpoint::verify_note(&text, Some(&self.chain.origin), &vk)
                    .map_err(|source| AuditError::Checkpoint { path: self.checkpoint_path.clone(), source })?;
            }
            if root != cp.root {
                return Err(AuditError::CheckpointMismatch { path: self.path.clone(), size: cp.size });
            }
            self.last_checkpoint_size = cp.size;
        }
        if self.chain.next_seq > 0 {
            self.check_key()?;
            // Verify the signature of the record we chain onto: a forged tail
            // must not be built upon.
            self.check_last_signature()?;
        }
        self.finish_interrupted_rotation()?;
        if let Some(t) = &torn {
            self.cut(t)?;
        }
        if self.chain.next_seq == 0 {
            // A new header beside rotated segments would start a second history.
            if let Some((_, newest)) = segment::list(&self.path)?.pop() {
                return Err(AuditError::LiveFileMissing { path: self.path.clone(), newest });
            }
            let origin = match &self.opts.origin {
                Some(o) if checkpoint::valid_name(o) => o.clone(),
                Some(o) => {
                    return Err(AuditError::Checkpoint {
                        path: self.checkpoint_path.clone(),
                        source: CheckpointError::Malformed(format!("origin {o:?} has spaces, `+` or controls")),
                    })
                }
                None => format!("portcullis-audit/{}", random_hex(8)?),
            };
            let body = chain::header_body(&origin, &self.vk);
            self.write_now(Kind::Header, body)?;
        }
        if let Some(t) = torn {
            self.write_recovery(t)?;
        }
        if self.chain.next_seq > self.last_checkpoint_size {
            self.write_checkpoint()?;
        }
        Ok(())
    }

    fn check_key(&self) -> Result<(), AuditError> {
        match self.chain.current_key() {
            Some(k) if *k == self.vk => Ok(()),
            Some(k) => Err(AuditError::KeyMismatch {
                path: self.path.clone(),
                log_key: key::fingerprint(k),
                our_key: key::fingerprint(&self.vk),
            }),
            None => Ok(()),
        }
    }

    fn check_last_signature(&self) -> Result<(), AuditError> {
        let last = self.chain.next_seq - 1;
        let line = self.read_last_line()?;
        let corrupt =
            |problem: String| AuditError::Corrupt { path: self.path.clone(), line: last + 1, seq: last, problem };
        let rec = Record::parse_line(&line).map_err(|e| corrupt(e.to_string()))?;
        let vk = self.chain.key_for(last).ok_or_else(|| corrupt("no key in force".into()))?;
        let (msg, sig) = (rec.signed_message(), rec.signature());
        // As for the checkpoint: a record this key signed is signed the same
        // way again, at half the cost of verifying it.
        if *vk == self.vk && ed25519_dalek::Signer::sign(&self.key, &msg).to_bytes() == sig.to_bytes() {
            return Ok(());
        }
        vk.verify_strict(&msg, &sig).map_err(|_| corrupt("signature does not verify under the key in force".into()))
    }

    fn read_last_line(&self) -> Result<Vec<u8>, AuditError> {
        let end = self.known_len;
        let mut start = end.saturating_sub(4096);
        loop {
            let mut buf = vec![0u8; (end - start) as usize];
            self.file.read_exact_at(&mut buf, start).map_err(|e| StorageError::io("read", &self.path, e))?;
            let body = &buf[..buf.len().saturating_sub(1)];
            if let Some(i) = body.iter().rposition(|&b| b == b'\n') {
                return Ok(body[i + 1..].to_vec());
            }
            if start == 0 {
                return Ok(body.to_vec());
            }
            start = start.saturating_sub(MAX_LINE as u64 + 2);
        }
    }

    fn read_checkpoint_file(&self) -> Result<Option<(Checkpoint, String)>, AuditError> {
        // Same rules as the log: no symlinks, bounded size.
        let text = match storage::read_settled(&self.checkpoint_path, checkpoint::MAX_NOTE as u64 + 1) {
            Ok(t) => t,
            Err(StorageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let (cp, _) = Checkpoint::parse(&text)
            .map_err(|source| AuditError::Checkpoint { path: self.checkpoint_path.clone(), source })?;
        Ok(Some((cp, text)))
    }

    /// The session id stamped on this handle's records.
    pub fn session(&self) -> &str {
        &self.session
    }

    /// The log's origin (checkpoint name).
    pub fn origin(&self) -> &str {
        &self.chain.origin
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The public key this handle signs with.
    pub fn public_key(&self) -> VerifyingKey {
        self.vk
    }

    /// Number of records in the log as this handle knows it, including buffered ones.
    pub fn len(&self) -> u64 {
        self.chain.next_seq
    }

    pub fn is_empty(&self) -> bool {
        self.chain.next_seq == 0
    }

    /// Records buffered and not yet committed.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Buffers a record and returns its seq. The body is masked
    /// ([`mask::mask_secrets`]) before it is hashed.
    ///
    /// The file lock is taken at the first buffered record and held until
    /// [`commit`](Self::commit): seq numbers are final when returned, and
    /// other writers wait for this batch. Commit within your group-commit
    /// window (milliseconds). Nothing is on disk until commit.
    pub fn append(&mut self, kind: Kind, body: Value) -> Result<u64, AuditError> {
        self.usable()?;
        if kind.is_structural() {
            return Err(AuditError::ReservedKind(kind));
        }
        let mut body = body;
        mask::mask_secrets(&mut body);
        let Value::Object(body) = body else {
            return Err(AuditError::BodyNotObject);
        };
        let seq = match self.push(kind, body) {
            Ok(seq) => {
                self.appended = true;
                seq
            }
            Err(e) => {
                // Do not keep other writers waiting for a batch that has nothing in it.
                if self.pending.is_empty() {
                    self.unlock();
                }
                return Err(e);
            }
        };
        if self.pending.len() >= self.opts.max_batch.max(1) {
            self.commit()?;
        }
        Ok(seq)
    }

    /// Takes the lock now, as the first appended record would (and learns
    /// what other writers added meanwhile), and keeps it until the next
    /// [`commit`](Self::commit) or [`checkpoint`](Self::checkpoint): other
    /// writers and readers wait from here for the records to come.
    pub fn hold(&mut self) -> Result<(), AuditError> {
        self.usable()?;
        self.take_lock()
    }

    /// Appends and commits: returns only once the record (and everything
    /// buffered before it) is written and fsynced. Use it for every decision
    /// a human answered, before acting on the answer.
    pub fn append_durable(&mut self, kind: Kind, body: Value) -> Result<u64, AuditError> {
        let seq = self.append(kind, body)?;
        self.commit()?;
        Ok(seq)
    }

    /// Signs, writes and fsyncs the buffered records, writes a checkpoint if
    /// one is due, and releases the lock. On error the handle is unusable
    /// (fail closed) and whatever part of the batch reached the file is cut
    /// off again where possible.
    pub fn commit(&mut self) -> Result<(), AuditError> {
        let result = self.commit_held();
        self.unlock();
        result
    }

    /// [`commit`](Self::commit), keeping the lock if it was held.
    fn commit_held(&mut self) -> Result<(), AuditError> {
        self.usable()?;
        if let Some((before, encoded)) = self.unsynced.take() {
            if let Err(e) = self.file.sync_data() {
                let _ = self.file.set_len(before).and_then(|()| self.file.sync_data());
                let err = AuditError::Storage(StorageError::io("fsync", &self.path, e));
                self.failed = Some(err.to_string());
                return Err(err);
            }
            self.chain.frontier = encoded.frontier;
            self.known_len = before + encoded.buf.len() as u64;
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let result = self.commit_locked();
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
        }
        result
    }

    /// Same as [`commit`](Self::commit): everything appended so far is durable when it returns.
    pub fn flush_durable(&mut self) -> Result<(), AuditError> {
        self.commit()
    }

    /// Signs and writes the buffered records without waiting for the disk,
    /// keeping the lock: a log that cannot take them (a full disk, a
    /// read-only filesystem) fails here, before the caller acts on them.
    /// The next [`commit`](Self::commit) makes them durable, or cuts them
    /// off again and fails. Called again before that commit, it writes what
    /// was appended since, chained after the first batch.
    pub fn write_ahead(&mut self) -> Result<(), AuditError> {
        self.usable()?;
        if self.pending.is_empty() {
            return Ok(());
        }
        let (before, prior) = match self.unsynced.take() {
            Some((before, written)) => (before, Some(written)),
            None => (self.known_len, None),
        };
        let base = prior.as_ref().map_or(&self.chain.frontier, |p| &p.frontier).clone();
        let result = self.encode_pending(&base).and_then(|encoded| match self.file.write_all(&encoded.buf) {
            Ok(()) => {
                self.unsynced = Some((
                    before,
                    match prior {
                        Some(mut p) => {
                            p.buf.extend_from_slice(&encoded.buf);
                            p.frontier = encoded.frontier;
                            p
                        }
                        None => encoded,
                    },
                ));
                Ok(())
            }
            Err(e) => {
                let _ = self.file.set_len(before).and_then(|()| self.file.sync_data());
                Err(AuditError::Storage(StorageError::io("append to", &self.path, e)))
            }
        });
        if let Err(e) = &result {
            self.failed = Some(e.to_string());
            self.unlock();
        }
        result
    }

    /// The buffered records, signed and encoded after the tree `base`.
    fn encode_pending(&mut self, base: &merkle::Frontier) -> Result<Encoded, AuditError> {
        let batch = std::mem::take(&mut self.pending);
        let mut encoded = Encoded::new(base, batch.len());
        // In order: the signer thread has been signing since each `push`.
        // Each line is encoded, leaf-hashed and freed as soon as its
        // signature is back, while the thread signs the next ones, so only
        // the write and fsync follow the last signature. (`chain` already
        // holds these records' seq and hash: `push` chained them.)
        for (mut r, body_enc) in batch {
            r.sig = self.signer.take(&r.hash)?;
            encoded.push(&r, &body_enc);
        }
        if self.signer.in_flight() != 0 {
            return Err(SignerError::Missing(self.signer.in_flight()).into());
        }
        Ok(encoded)
    }

    fn commit_locked(&mut self) -> Result<(), AuditError> {
        let base = self.chain.frontier.clone();
        let encoded = self.encode_pending(&base)?;
        self.write_encoded(encoded)?;
        if self.opts.rotate_bytes.is_some_and(|limit| self.known_len >= limit) {
            self.rotate()?;
        }
        if self.checkpoint_due() {
            self.write_checkpoint()?;
        }
        Ok(())
    }

    /// Commits, then writes a checkpoint of the current tree (under the
    /// lock, after catching up with other writers) if it has grown.
    /// The lock is held from the commit through the checkpoint (and since
    /// [`write_ahead`](Self::write_ahead), which keeps it): a reader, who
    /// takes it shared, sees the records this call makes durable together
    /// with the checkpoint that covers them. `portcullis run` relies on this:
    /// its exit record is made durable after the caller has the status.
    pub fn checkpoint(&mut self) -> Result<(), AuditError> {
        let result = self.commit_held().and_then(|()| {
            self.lock_now()?;
            self.catch_up()?;
            if self.chain.next_seq > self.last_checkpoint_size {
                self.write_checkpoint()?;
            }
            Ok(())
        });
        if let Err(e) = &result {
            if !matches!(e, AuditError::Lock { .. }) {
                self.failed = Some(e.to_string());
            }
        }
        self.unlock();
        result
    }

    /// Rotates the signing key: appends (durably) a `key_rotation` record
    /// signed by the current key that names `new_key`; every later record
    /// and checkpoint is signed by `new_key`. Returns the rotation's seq.
    /// Store `new_key` durably before calling this, so a crash cannot lose
    /// the key the log now expects (`portcullis audit key rotate` keeps it
    /// at `<key>.next` until the key file is replaced).
    pub fn rotate_key(&mut self, new_key: SigningKey) -> Result<u64, AuditError> {
        self.commit()?;
        self.usable()?;
        let new_vk = new_key.verifying_key();
        let result = (|| {
            self.lock_now()?;
            self.catch_up()?;
            // The new key takes the history on: it signs the place and
            // everything before it (chain::rotation_statement).
            let statement = chain::rotation_statement(
                &self.chain.origin,
                self.chain.next_seq,
                &self.chain.last_hash,
                &key::fingerprint(&self.vk),
                &key::fingerprint(&new_vk),
            );
            let endorsement = ed25519_dalek::Signer::sign(&new_key, &statement).to_bytes();
            let seq = self.write_now(Kind::KeyRotation, chain::rotation_body(&self.vk, &new_vk, &endorsement))?;
            self.key = new_key;
            self.vk = new_vk;
            // The thread holds the old key: the next record starts one with the new key.
            self.signer.stop();
            self.write_checkpoint()?;
            Ok(seq)
        })();
        if result.is_err() {
            self.failed = result.as_ref().err().map(ToString::to_string);
        }
        self.unlock();
        result
    }

    /// Commits, writes a final checkpoint and closes the handle.
    pub fn close(mut self) -> Result<(), AuditError> {
        let r = self.checkpoint();
        self.closed = true;
        r
    }

    /// Commits and closes without writing a checkpoint: for a second writer
    /// of one run (the syscall gate's), whose records the run's own final
    /// checkpoint covers. Saves a checkpoint's fsyncs per launch.
    pub fn release(mut self) -> Result<(), AuditError> {
        let r = self.commit();
        self.closed = true;
        r
    }

    fn usable(&self) -> Result<(), AuditError> {
        match &self.failed {
            Some(why) => Err(AuditError::Failed(why.clone())),
            None => Ok(()),
        }
    }

    fn lock_now(&mut self) -> Result<(), AuditError> {
        if !self.locked {
            lock_within(&self.lock, self.opts.lock_wait)
                .map_err(|source| AuditError::Lock { path: self.lock_path.clone(), source })?;
            self.locked = true;
        }
        Ok(())
    }

    fn unlock(&mut self) {
        if self.locked {
            // Closing the fd would also release it; an unlock error leaves
            // the lock to be released when the handle is dropped.
            let _ = self.lock.unlock();
            self.locked = false;
        }
    }

    /// Takes the lock unless held, and folds what other writers appended
    /// meanwhile (a failure there makes the handle unusable).
    fn take_lock(&mut self) -> Result<(), AuditError> {
        if !self.locked {
            self.lock_now()?;
            if let Err(e) = self.catch_up() {
                self.failed = Some(e.to_string());
                self.unlock();
                return Err(e);
            }
        }
        Ok(())
    }

    /// Chains a record onto the buffer (taking the lock first if needed).
    fn push(&mut self, kind: Kind, body: Map<String, Value>) -> Result<u64, AuditError> {
        self.take_lock()?;
        let seq = self.chain.next_seq;
        let mut rec = Record {
            v: FORMAT_VERSION,
            seq,
            ts: clock::now_rfc3339(),
            session: self.session.clone(),
            kind,
            body,
            prev: self.chain.last_hash,
            hash: [0u8; 32],
            sig: [0u8; 64],
        };
        let body_enc = record::encode_body(&rec.body)?;
        let input = rec.hash_input_with_body(&body_enc);
        // hash (64 hex) + sig (88 base64) + their keys add under 200 bytes.
        if input.len() + 256 > MAX_LINE {
            return Err(AuditError::TooLarge(input.len()));
        }
        rec.hash = record::sha256(input.as_bytes());
        if let Err(e) = self.signer.submit(&self.key, rec.hash) {
            self.failed = Some(e.to_string());
            return Err(e.into());
        }
        self.chain.next_seq += 1;
        self.chain.last_hash = rec.hash;
        self.pending.push((rec, body_enc));
        Ok(seq)
    }

    /// Signs (on this thread) and writes one record immediately and durably
    /// (lock must be held, buffer empty): the structural records.
    fn write_now(&mut self, kind: Kind, body: Map<String, Value>) -> Result<u64, AuditError> {
        let seq = self.chain.next_seq;
        let rec =
            record::seal(&self.key, seq, clock::now_rfc3339(), self.session.clone(), kind, body, self.chain.last_hash)?;
        let body_enc = record::encode_body(&rec.body)?;
        let mut encoded = Encoded::new(&self.chain.frontier, 1);
        encoded.push(&rec, &body_enc);
        self.write_encoded(encoded)?;
        self.chain.next_seq = seq + 1;
        self.chain.last_hash = rec.hash;
        match rec.kind {
            Kind::KeyRotation => {
                if let Some(Ok(vk)) = rec.body.get("new_public_key").and_then(Value::as_str).map(key::parse_public_key)
                {
                    self.chain.keys.push(chain::KeyEpoch { from_seq: seq + 1, key: vk });
                }
            }
            Kind::Header => {
                if let Some(o) = rec.body.get("origin").and_then(Value::as_str) {
                    self.chain.origin = o.to_string();
                }
                self.chain.keys.push(chain::KeyEpoch { from_seq: 0, key: self.vk });
            }
            _ => {}
        }
        Ok(seq)
    }

    /// Appends encoded records in one write and fsyncs; only then do their
    /// leaves join the chain's tree, so a checkpoint never covers something
    /// that could still be lost. On failure the batch is cut off again and
    /// the handle fails closed.
    fn write_encoded(&mut self, encoded: Encoded) -> Result<(), AuditError> {
        let before = self.known_len;
        if let Err(e) = self.file.write_all(&encoded.buf).and_then(|()| self.file.sync_data()) {
            // Cut off a partial batch so the file ends on a record boundary;
            // if even that fails the next writer repairs it as a torn line.
            let _ = self.file.set_len(before).and_then(|()| self.file.sync_data());
            let err = AuditError::Storage(StorageError::io("append to", &self.path, e));
            self.failed = Some(err.to_string());
            return Err(err);
        }
        self.chain.frontier = encoded.frontier;
        self.known_len = before + encoded.buf.len() as u64;
        Ok(())
    }

    /// Folds records other writers appended since we last looked, and
    /// repairs a torn tail they left. Lock must be held, buffer empty.
    fn catch_up(&mut self) -> Result<(), AuditError> {
        self.follow_rotation()?;
        let torn = self.fold_new_bytes(|_| {})?;
        if let Some(epoch) = self.chain.keys.last() {
            if epoch.key != self.vk {
                return Err(AuditError::KeyRotatedElsewhere {
                    path: self.path.clone(),
                    seq: epoch.from_seq.saturating_sub(1),
                    new_key: key::fingerprint(&epoch.key),
                    our_key: key::fingerprint(&self.vk),
                });
            }
        }
        if self.chain.next_seq == 0 {
            // Someone emptied the file under us: refuse rather than start a
            // second history with a new header.
            return Err(AuditError::Shrunk { path: self.path.clone(), from: self.known_len, to: 0 });
        }
        if let Some(t) = torn {
            self.cut(&t)?;
            self.write_recovery(t)?;
        }
        Ok(())
    }

    /// The path must still name the file we hold open: if it was renamed,
    /// removed or replaced, further records would go to a file nobody reads.
    fn is_live(&self) -> Result<bool, AuditError> {
        same_inode(&self.file, &self.path, &self.path)
    }

    /// Follows rotations by other writers: while the path no longer names our
    /// file, reads the rest of it, checks it now lives at its segment name,
    /// and moves on to the file that continues it (the next segment, else the
    /// live file), which must start with a `segment` record continuing
    /// exactly the chain we hold. Anything else is a replacement: fail closed.
    fn follow_rotation(&mut self) -> Result<(), AuditError> {
        while !self.is_live()? {
            let path = self.path.clone();
            let replaced = || AuditError::Replaced { path: path.clone() };
            if self.fold_new_bytes(|_| {})?.is_some() {
                // A writer rotates only after a complete write.
                return Err(replaced());
            }
            let ours = segment::segment_path(&self.path, self.chain.segment_start);
            if !same_inode(&self.file, &ours, &self.path)? {
                return Err(replaced());
            }
            let next = segment::segment_path(&self.path, self.chain.next_seq);
            let file = match storage::open_read(&next) {
                Ok(f) => f,
                Err(StorageError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                    storage::open_append_existing(&self.path).map_err(|_| replaced())?
                }
                Err(e) => return Err(e.into()),
            };
            let first = first_line(&file).ok().and_then(|l| Record::parse_line(&l).ok()).ok_or_else(replaced)?;
            let continues = first.kind == Kind::Segment
                && first.seq == self.chain.next_seq
                && first.prev == self.chain.last_hash
                && first.body.get("previous_segment").and_then(Value::as_str)
                    == Some(segment::file_name(&ours).as_str());
            if !continues {
                return Err(replaced());
            }
            self.file = file;
            self.known_len = 0;
        }
        Ok(())
    }

    /// A rotation that stopped between linking the live file to its segment
    /// name and renaming the new file over it left two names for one file:
    /// the rotation did not happen, so the extra name goes (lock held).
    fn finish_interrupted_rotation(&mut self) -> Result<(), AuditError> {
        let seg = segment::segment_path(&self.path, self.chain.segment_start);
        if self.chain.next_seq > 0 && same_inode(&self.file, &seg, &self.path)? {
            std::fs::remove_file(&seg).map_err(|e| StorageError::io("remove stale segment link", &seg, e))?;
            storage::sync_dir(&storage::parent_dir(&self.path))?;
        }
        Ok(())
    }

    /// Moves the live file aside as `<log>.<first seq>` and starts a new one
    /// whose first record, a `segment` record, continues the chain. Lock
    /// held, buffer empty, everything written durable.
    fn rotate(&mut self) -> Result<(), AuditError> {
        // A checkpoint at the rotation point: a writer that opens the new
        // file alone can hold it to the segment record's frontier even if we
        // stop before the next checkpoint.
        if self.chain.frontier.size() > self.last_checkpoint_size {
            self.write_checkpoint()?;
        }
        let seg_path = segment::segment_path(&self.path, self.chain.segment_start);
        let fail =
            |source: std::io::Error| AuditError::Rotate { path: self.path.clone(), segment: seg_path.clone(), source };
        let seq = self.chain.next_seq;
        let body = chain::segment_body(&self.chain, &self.vk, &segment::file_name(&seg_path));
        let rec = record::seal(
            &self.key,
            seq,
            clock::now_rfc3339(),
            self.session.clone(),
            Kind::Segment,
            body,
            self.chain.last_hash,
        )?;
        let body_enc = record::encode_body(&rec.body)?;
        let mut encoded = Encoded::new(&self.chain.frontier, 1);
        encoded.push(&rec, &body_enc);
        let dir = storage::parent_dir(&self.path);
        let (tmp, mut file) = storage::create_temp(&self.path)?;
        let written = file.write_all(&encoded.buf).and_then(|()| file.sync_data());
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(e));
        }
        // link, then rename: the live name always names a complete file. A
        // crash between the two leaves two names for the old file, which the
        // next writer removes (finish_interrupted_rotation).
        if let Err(e) = std::fs::hard_link(&self.path, &seg_path) {
            let _ = std::fs::remove_file(&tmp);
            return Err(fail(e));
        }
        let moved = match same_inode(&self.file, &seg_path, &self.path) {
            Ok(true) => storage::sync_dir(&dir)
                .map_err(AuditError::from)
                .and_then(|()| std::fs::rename(&tmp, &self.path).map_err(fail)),
            Ok(false) => Err(AuditError::Replaced { path: self.path.clone() }),
            Err(e) => Err(e),
        };
        if let Err(e) = moved {
            let _ = std::fs::remove_file(&seg_path);
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        storage::sync_dir(&dir)?;
        self.file = file;
        self.known_len = encoded.buf.len() as u64;
        self.chain.frontier = encoded.frontier;
        self.chain.next_seq = seq + 1;
        self.chain.last_hash = rec.hash;
        self.chain.segment_start = seq;
        self.write_checkpoint()
    }

    /// Reads the file from `known_len` to its end, applies every complete
    /// line to the chain, cuts off a torn last line (returned). `observe` is
    /// called before each record is applied and once at the end.
    fn fold_new_bytes(&mut self, mut observe: impl FnMut(&Chain)) -> Result<Option<Torn>, AuditError> {
        let len = self.file.metadata().map_err(|e| StorageError::io("stat", &self.path, e))?.len();
        if len < self.known_len {
            return Err(AuditError::Shrunk { path: self.path.clone(), from: self.known_len, to: len });
        }
        let mut off = self.known_len;
        let fresh = self.known_len == 0 && self.chain.next_seq == 0;
        // Read in chunks so a large log does not need to fit in memory twice.
        let mut carry: Vec<u8> = Vec::new();
        while off < len {
            let n = ((len - off) as usize).min(1 << 20);
            let mut chunk = vec![0u8; n];
            self.file.read_exact_at(&mut chunk, off).map_err(|e| StorageError::io("read", &self.path, e))?;
            off += n as u64;
            carry.extend_from_slice(&chunk);
            let mut start = 0;
            while let Some(i) = carry[start..].iter().position(|&b| b == b'\n') {
                let line = &carry[start..start + i];
                observe(&self.chain);
                let seq = self.chain.next_seq;
                let line_no = seq.saturating_sub(self.chain.segment_start) + 1;
                let corrupt =
                    |problem: String| AuditError::Corrupt { path: self.path.clone(), line: line_no, seq, problem };
                let rec = Record::parse_line(line).map_err(|e| corrupt(e.to_string()))?;
                if fresh && self.known_len == 0 && rec.kind == Kind::Segment {
                    // A rotated live file: the history before it is what its
                    // first record states (older segments are not read).
                    self.chain = Chain::before_segment(&rec).map_err(|e| corrupt(e.to_string()))?;
                    observe(&self.chain);
                }
                self.chain.apply(&rec, line).map_err(|e| corrupt(e.to_string()))?;
                self.known_len += i as u64 + 1;
                start += i + 1;
            }
            carry.drain(..start);
            if carry.len() > MAX_LINE + 1 {
                return Err(AuditError::Corrupt {
                    path: self.path.clone(),
                    line: self.chain.next_seq.saturating_sub(self.chain.segment_start) + 1,
                    seq: self.chain.next_seq,
                    problem: format!("line longer than {MAX_LINE} bytes"),
                });
            }
        }
        observe(&self.chain);
        if carry.is_empty() {
            return Ok(None);
        }
        // A torn last line: a writer died mid-write (or the disk filled).
        // Nothing is cut here: the caller first finishes its checks, so a
        // log it then refuses is left exactly as found.
        Ok(Some(Torn { offset: self.known_len, bytes: carry }))
    }

    /// Cuts a torn tail off (it was never acknowledged). Must be followed by
    /// `write_recovery` at once, so the loss is recorded, never silent; a
    /// crash between the two (milliseconds) is the one way to lose it.
    fn cut(&mut self, torn: &Torn) -> Result<(), AuditError> {
        self.file
            .set_len(torn.offset)
            .and_then(|()| self.file.sync_data())
            .map_err(|e| StorageError::io("truncate torn line of", &self.path, e).into())
    }

    fn write_recovery(&mut self, torn: Torn) -> Result<(), AuditError> {
        let mut body = Map::new();
        body.insert("reason".into(), "torn last line: a writer stopped mid-write; the bytes were cut off".into());
        body.insert("offset".into(), torn.offset.into());
        body.insert("lost_bytes".into(), (torn.bytes.len() as u64).into());
        body.insert("lost_sha256".into(), merkle::to_hex(&record::sha256(&torn.bytes)).into());
        let keep = &torn.bytes[..torn.bytes.len().min(RECOVERY_KEEP)];
        body.insert("lost_head_b64".into(), B64.encode(keep).into());
        self.write_now(Kind::Recovery, body)?;
        Ok(())
    }

    fn checkpoint_due(&self) -> bool {
        let new = self.chain.frontier.size().saturating_sub(self.last_checkpoint_size);
        new > 0
            && (new >= self.opts.checkpoint_every || self.last_checkpoint_at.elapsed() >= self.opts.checkpoint_interval)
    }

    /// Writes `<log>.checkpoint` for the committed tree. Lock must be held.
    fn write_checkpoint(&mut self) -> Result<(), AuditError> {
        let cp = Checkpoint {
            origin: self.chain.origin.clone(),
            size: self.chain.frontier.size(),
            root: self.chain.frontier.root(),
        };
        storage::write_atomic_swap(&self.checkpoint_path, cp.sign(&self.key).as_bytes(), 0o644)?;
        // A cache for the next writer, not fsynced: a crash only costs a full read.
        let _ = storage::write_in_place(
            &storage::sibling(&self.path, ".state"),
            resume::encode(self.known_len, &self.chain).as_bytes(),
            0o600,
        );
        self.last_checkpoint_size = cp.size;
        self.last_checkpoint_at = Instant::now();
        Ok(())
    }
}

impl Drop for AuditLog {
    /// Best effort: commit what is buffered and checkpoint. Errors cannot be
    /// reported here; call `close` to see them.
    fn drop(&mut self) {
        if !self.closed && self.failed.is_none() && self.appended {
            let _ = self.checkpoint();
        }
        self.unlock();
    }
}

/// Whether `path` (not followed if a symlink) names the file `file` is open on.
fn same_inode(file: &File, path: &Path, log: &Path) -> Result<bool, AuditError> {
    use std::os::unix::fs::MetadataExt;
    let ours = file.metadata().map_err(|e| StorageError::io("stat", log, e))?;
    Ok(std::fs::symlink_metadata(path).is_ok_and(|m| m.dev() == ours.dev() && m.ino() == ours.ino()))
}

/// The first line of a file (without its newline), read with a bound.
fn first_line(file: &File) -> std::io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut n = 0;
    loop {
        let got = file.read_at(&mut buf[n..], n as u64)?;
        if got == 0 {
            break;
        }
        n += got;
        if buf[..n].contains(&b'\n') || n > MAX_LINE {
            break;
        }
        if n == buf.len() {
            buf.resize((buf.len() * 2).min(MAX_LINE + 1), 0);
        }
    }
    let end = buf[..n].iter().position(|&b| b == b'\n').ok_or(std::io::ErrorKind::UnexpectedEof)?;
    buf.truncate(end);
    Ok(buf)
}
