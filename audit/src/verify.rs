//! The verifier: everything a third party checks, from the file alone plus
//! (optionally) a checkpoint kept elsewhere and a trusted public key.

use crate::chain::{Chain, KeyEpoch};
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::key;
use crate::merkle::{self, Hash};
use crate::reader::{open_all, RawLine};
use crate::record::{Kind, Record};
use crate::storage::{self, StorageError};
use ed25519_dalek::{Signature, VerifyingKey};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Signatures are batch-verified in groups of this many.
const BATCH: usize = 512;

#[derive(Clone, Debug, Default)]
pub struct VerifyOptions {
    /// A checkpoint to hold the log to (ideally one kept where the log's
    /// writer cannot change it).
    pub checkpoint: Option<PathBuf>,
    /// The key the log must be signed under: the header key or a key the
    /// log rotated to. Without it the log is only checked to be internally
    /// consistent (trust on first use).
    pub trusted_key: Option<VerifyingKey>,
    /// Check every signature one by one with `verify_strict` instead of
    /// batch verification (slower; see docs/AUDIT.md §7 for the difference).
    pub strict: bool,
}

/// How much of a rotated log's history `verify_history` requires.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum History {
    /// Every segment from seq 0 (the header) to the live file must be
    /// present and continue each other (the default).
    #[default]
    Complete,
    /// Older segments were archived on purpose: start at the oldest file
    /// present; if it begins with a `segment` record, the history before it
    /// is what that record states (its frontier, key and origin), checked
    /// only through later records and checkpoints. A gap between the files
    /// that are present is still a failure.
    Retained,
}

/// What a successful verification established.
#[derive(Clone, Debug)]
pub struct Report {
    /// The size of the history: the seq after the last record (archived
    /// records included, under [`History::Retained`]).
    pub records: u64,
    pub origin: String,
    /// Root of the Merkle tree over all records.
    pub root: Hash,
    pub keys: Vec<KeyEpoch>,
    pub kinds: BTreeMap<String, u64>,
    pub sessions: usize,
    /// (seq, lost bytes) of each recovery record.
    pub recoveries: Vec<(u64, u64)>,
    /// The checkpoint the log was held to: (path, size).
    pub checkpoint: Option<(PathBuf, u64)>,
    /// Fingerprint of the trusted key, if one was given and matched.
    pub trusted_key: Option<String>,
    pub strict: bool,
    /// Files read: the rotated segments present, then the live file.
    pub files: Vec<PathBuf>,
    /// The first seq verified record by record: 0, or with
    /// `History::Retained` the seq of the oldest segment present.
    pub first_seq: u64,
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VerifyError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{}: the log is empty (no header)", path.display())]
    Empty { path: PathBuf },
    #[error("seq {seq} (line {line}): {problem}")]
    Record { seq: u64, line: u64, problem: String },
    #[error("torn last line after seq {last}: {bytes} bytes at offset {offset} without a newline (a writer died mid-write; records 0..={last} verified; the next writer cuts it off with a recovery record)", last = records.saturating_sub(1))]
    TornTail { records: u64, offset: u64, bytes: u64 },
    #[error("checkpoint {}: {source}", path.display())]
    Checkpoint {
        path: PathBuf,
        #[source]
        source: CheckpointError,
    },
    #[error("seq {records}: missing; the checkpoint {} says the log had {size} records but it has {records}: truncated or rolled back to an older copy", path.display())]
    Truncated { path: PathBuf, size: u64, records: u64 },
    #[error("the first {size} records do not hash to the root in checkpoint {}: the history was rewritten or replaced", path.display())]
    RootMismatch { path: PathBuf, size: u64 },
    #[error("the log is not anchored in the trusted key {trusted}: that is neither the key it starts with nor one a rotation introduced with the new key's own signature; its keys are {found} (a log rotated before rotations carried that signature verifies only under the key it starts with: pass its public key with --pubkey)")]
    Untrusted { trusted: String, found: String },
    #[error("{}: seq {seq} (line {line}): {problem}", file.display())]
    Segment { file: PathBuf, seq: u64, line: u64, problem: String },
    #[error("checkpoint {} is at size {size}, before the oldest segment present (seq {first}): verify the complete history or use a newer checkpoint", path.display())]
    CheckpointBeforeRetained { path: PathBuf, size: u64, first: u64 },
}

impl VerifyError {
    /// The first sequence number known to be bad, where there is one.
    pub fn first_bad_seq(&self) -> Option<u64> {
        match self {
            VerifyError::Record { seq, .. } | VerifyError::Segment { seq, .. } => Some(*seq),
            VerifyError::TornTail { records, .. } | VerifyError::Truncated { records, .. } => Some(*records),
            VerifyError::Empty { .. } => Some(0),
            _ => None,
        }
    }
}

/// Verifies the log at `log_path` (see [`verify_with`]).
pub fn verify(
    log_path: &Path,
    checkpoint: Option<&Path>,
    trusted_key: Option<&VerifyingKey>,
) -> Result<Report, VerifyError> {
    let opts = VerifyOptions {
        checkpoint: checkpoint.map(Path::to_path_buf),
        trusted_key: trusted_key.copied(),
        strict: false,
    };
    verify_with(log_path, &opts)
}

/// A signature waiting to be checked.
struct PendingSig {
    seq: u64,
    /// Where the record is: file index and line in that file.
    file: usize,
    line: u64,
    msg: Vec<u8>,
    sig: Signature,
    key: VerifyingKey,
}

/// Checks, in order, for every line: JSON, canonical form, fields, hash,
/// seq contiguous from 0, prev chain, header first, key in force, signature;
/// then the torn tail, the checkpoint (signature, size, root) and the
/// trusted key. Reports the first failure by seq. A rotated log is read
/// across all its segments (`History::Complete`).
pub fn verify_with(log_path: &Path, opts: &VerifyOptions) -> Result<Report, VerifyError> {
    verify_history(log_path, opts, History::Complete)
}

/// [`verify_with`], choosing how much of a rotated log's history must be present.
pub fn verify_history(log_path: &Path, opts: &VerifyOptions, history: History) -> Result<Report, VerifyError> {
    // Read the checkpoint before the log: a writer appending meanwhile can
    // only make the log longer than it, never shorter.
    let checkpoint = match &opts.checkpoint {
        Some(p) => {
            let text = storage::read_settled(p, crate::checkpoint::MAX_NOTE as u64 + 1)?;
            let (cp, _) =
                Checkpoint::parse(&text).map_err(|source| VerifyError::Checkpoint { path: p.clone(), source })?;
            Some((p.clone(), cp, text))
        }
        None => None,
    };
    let mut readers = open_all(log_path)?;
    let files: Vec<PathBuf> = readers.iter().map(|r| r.path().to_path_buf()).collect();
    // A log that never rotated keeps the single-file error messages.
    let rotated = files.len() > 1;
    let last_file = files.len() - 1;
    let mut chain = Chain::default();
    let mut first_seq = 0;
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut sessions: BTreeSet<String> = BTreeSet::new();
    let mut recoveries = Vec::new();
    let mut pending: Vec<PendingSig> = Vec::with_capacity(BATCH);
    let mut at_checkpoint: Option<(Hash, Option<VerifyingKey>)> = None;
    let want = checkpoint.as_ref().map(|(_, cp, _)| cp.size);
    let mut torn = None;
    let mut started = false;
    'files: for (fi, reader) in readers.iter_mut().enumerate() {
        let file = &files[fi];
        let mut first_in_file = true;
        loop {
            if Some(chain.next_seq) == want && started {
                at_checkpoint = Some((chain.frontier.root(), chain.current_key().copied()));
            }
            let seq = chain.next_seq;
            let line_no = reader.line() + 1;
            let is_rotated = rotated || chain.segment_start > 0;
            let fail = |problem: String| {
                if is_rotated {
                    VerifyError::Segment { file: file.clone(), seq, line: line_no, problem }
                } else {
                    VerifyError::Record { seq, line: line_no, problem }
                }
            };
            let raw = match reader.next_line() {
                Ok(Some(RawLine::Complete(l))) => l,
                Ok(Some(RawLine::Torn { offset, bytes })) => {
                    if fi != last_file {
                        check_signatures(&mut pending, opts.strict, &files, rotated)?;
                        return Err(fail(format!(
                            "{bytes} bytes at offset {offset} without a newline in a rotated segment"
                        )));
                    }
                    torn = Some((offset, bytes));
                    break 'files;
                }
                Ok(None) if first_in_file && (fi != last_file || rotated) => {
                    check_signatures(&mut pending, opts.strict, &files, rotated)?;
                    return Err(fail("the file is empty: a segment starts with its `segment` record".into()));
                }
                Ok(None) => break,
                Err(e) => {
                    check_signatures(&mut pending, opts.strict, &files, rotated)?;
                    return Err(e);
                }
            };
            let rec = match Record::parse_line(&raw) {
                Ok(r) => r,
                Err(e) => {
                    check_signatures(&mut pending, opts.strict, &files, rotated)?;
                    return Err(fail(e.to_string()));
                }
            };
            if let Err(problem) =
                segment_layout(&rec, fi, first_in_file, file, &files, &chain, started, history, log_path)
            {
                check_signatures(&mut pending, opts.strict, &files, rotated)?;
                return Err(VerifyError::Segment { file: file.clone(), seq, line: line_no, problem });
            }
            if !started && rec.kind == Kind::Segment {
                // History::Retained: the history before the oldest segment present.
                match Chain::before_segment(&rec) {
                    Ok(c) => chain = c,
                    Err(e) => return Err(fail(e.to_string())),
                }
                first_seq = rec.seq;
                if Some(chain.next_seq) == want {
                    at_checkpoint = Some((chain.frontier.root(), chain.current_key().copied()));
                }
            }
            started = true;
            first_in_file = false;
            if let Err(e) = chain.apply(&rec, &raw) {
                check_signatures(&mut pending, opts.strict, &files, rotated)?;
                return Err(fail(e.to_string()));
            }
            let Some(key) = chain.key_for(rec.seq).copied() else {
                check_signatures(&mut pending, opts.strict, &files, rotated)?;
                return Err(fail("no key in force".into()));
            };
            pending.push(PendingSig {
                seq: rec.seq,
                file: fi,
                line: line_no,
                msg: rec.signed_message(),
                sig: rec.signature(),
                key,
            });
            if pending.len() >= BATCH {
                check_signatures(&mut pending, opts.strict, &files, rotated)?;
            }
            *kinds.entry(rec.kind.as_str().to_string()).or_default() += 1;
            sessions.insert(rec.session.clone());
            if rec.kind == Kind::Recovery {
                recoveries.push((rec.seq, rec.body.get("lost_bytes").and_then(|v| v.as_u64()).unwrap_or(0)));
            }
        }
    }
    if Some(chain.next_seq) == want && started {
        at_checkpoint = Some((chain.frontier.root(), chain.current_key().copied()));
    }
    check_signatures(&mut pending, opts.strict, &files, rotated)?;
    if chain.next_seq == 0 && torn.is_none() && want.is_none_or(|s| s == 0) {
        return Err(VerifyError::Empty { path: log_path.to_path_buf() });
    }
    if want == Some(0) && at_checkpoint.is_none() && first_seq == 0 {
        at_checkpoint = Some((crate::merkle::empty_root(), None));
    }
    // Checkpoint before the torn tail: a truncation is the graver finding.
    let mut checked = None;
    if let Some((path, cp, text)) = &checkpoint {
        let Some((root, key)) = at_checkpoint else {
            if cp.size < first_seq {
                return Err(VerifyError::CheckpointBeforeRetained {
                    path: path.clone(),
                    size: cp.size,
                    first: first_seq,
                });
            }
            return Err(VerifyError::Truncated { path: path.clone(), size: cp.size, records: chain.next_seq });
        };
        // A checkpoint of size 0 is the first key's, like one of any other
        // size is the key in force there: never taken unsigned.
        let key = key.or_else(|| if cp.size == 0 { chain.keys.first().map(|e| e.key) } else { None });
        if let Some(vk) = key {
            Checkpoint::verify_note(text, Some(&chain.origin), &vk)
                .map_err(|source| VerifyError::Checkpoint { path: path.clone(), source })?;
        } else {
            return Err(VerifyError::Truncated { path: path.clone(), size: cp.size, records: chain.next_seq });
        }
        if root != cp.root {
            return Err(VerifyError::RootMismatch { path: path.clone(), size: cp.size });
        }
        checked = Some((path.clone(), cp.size));
    }
    if let Some((offset, bytes)) = torn {
        return Err(VerifyError::TornTail { records: chain.next_seq, offset, bytes });
    }
    if chain.next_seq == 0 {
        return Err(VerifyError::Empty { path: log_path.to_path_buf() });
    }
    let trusted = match &opts.trusted_key {
        Some(t) => {
            // The key the history starts with, or one a rotation introduced
            // with its own signature over the history before it: a rotation
            // signed by the old key alone proves nothing about the new one.
            let anchors = chain.keys.first().map(|e| e.key) == Some(*t) || chain.endorsed.contains(t);
            if !anchors {
                return Err(VerifyError::Untrusted {
                    trusted: key::fingerprint(t),
                    found: chain.keys.iter().map(|e| key::fingerprint(&e.key)).collect::<Vec<_>>().join(", "),
                });
            }
            Some(key::fingerprint(t))
        }
        None => None,
    };
    Ok(Report {
        records: chain.next_seq,
        origin: chain.origin.clone(),
        root: chain.frontier.root(),
        keys: chain.keys.clone(),
        kinds,
        sessions: sessions.len(),
        recoveries,
        checkpoint: checked,
        trusted_key: trusted,
        strict: opts.strict,
        files,
        first_seq,
    })
}

/// The rules of docs/AUDIT.md §12 that tie records to files: a `segment`
/// record begins every file after the first (and no record elsewhere is
/// one), names the file before it, starts at the seq the previous file
/// ended at (else a segment is missing), and a rotated file's name carries
/// its first seq. The chain rules proper are `Chain::apply`'s.
#[allow(clippy::too_many_arguments)]
fn segment_layout(
    rec: &Record,
    fi: usize,
    first_in_file: bool,
    file: &Path,
    files: &[PathBuf],
    chain: &Chain,
    started: bool,
    history: History,
    log_path: &Path,
) -> Result<(), String> {
    let is_segment = rec.kind == Kind::Segment;
    if !first_in_file {
        return if is_segment { Err("a `segment` record that does not start a file".into()) } else { Ok(()) };
    }
    if file != log_path {
        let named = crate::segment::parse_name(&crate::segment::file_name(log_path), &crate::segment::file_name(file));
        if named != Some(rec.seq) {
            return Err(format!("the file starts at seq {} but its name says {:?}", rec.seq, named));
        }
    }
    if !started {
        if rec.seq != 0 && history == History::Complete {
            return Err(format!(
                "records 0..={} are missing: the segments before {} were removed (to verify only what is retained, use History::Retained / `verify --retained`)",
                rec.seq.saturating_sub(1),
                file.display()
            ));
        }
        return Ok(());
    }
    if !is_segment {
        return Err(format!("the file does not start with a `segment` record continuing {}", files[fi - 1].display()));
    }
    if rec.seq != chain.next_seq {
        return Err(format!(
            "records {}..={} are missing: the segment holding them between {} and {} was removed",
            chain.next_seq,
            rec.seq.saturating_sub(1),
            files[fi - 1].display(),
            file.display()
        ));
    }
    let prev_name = crate::segment::file_name(&files[fi - 1]);
    match rec.body.get("previous_segment").and_then(serde_json::Value::as_str) {
        Some(n) if n == prev_name => Ok(()),
        other => Err(format!("`previous_segment` is {other:?}, but the file before it is {prev_name:?}")),
    }
}

/// Verifies and clears `pending`. Batch verification first; if the batch
/// fails, one by one to name the first bad record.
fn check_signatures(
    pending: &mut Vec<PendingSig>,
    strict: bool,
    files: &[PathBuf],
    rotated: bool,
) -> Result<(), VerifyError> {
    if pending.is_empty() {
        return Ok(());
    }
    let batch_ok = !strict && {
        let msgs: Vec<&[u8]> = pending.iter().map(|p| p.msg.as_slice()).collect();
        let sigs: Vec<Signature> = pending.iter().map(|p| p.sig).collect();
        let keys: Vec<VerifyingKey> = pending.iter().map(|p| p.key).collect();
        ed25519_dalek::verify_batch(&msgs, &sigs, &keys).is_ok()
    };
    if !batch_ok {
        for p in pending.iter() {
            if p.key.verify_strict(&p.msg, &p.sig).is_err() {
                let problem =
                    format!("signature does not verify under the key in force ({})", key::fingerprint(&p.key));
                return Err(if rotated || p.seq + 1 != p.line {
                    VerifyError::Segment { file: files[p.file].clone(), seq: p.seq, line: p.line, problem }
                } else {
                    VerifyError::Record { seq: p.seq, line: p.line, problem }
                });
            }
        }
    }
    pending.clear();
    Ok(())
}

/// Leaf hashes of every complete record line, in order across the log's
/// segments (no other checks, except that each file starts at the seq the
/// previous one ended at, from 0: index `i` must be the leaf of seq `i`).
pub fn leaf_hashes(log_path: &Path) -> Result<Vec<Hash>, VerifyError> {
    let mut out = Vec::new();
    for mut reader in open_all(log_path)? {
        let mut first = true;
        while let Some(RawLine::Complete(l)) = reader.next_line()? {
            if first {
                first = false;
                let seq = Record::parse_line(&l).map(|r| r.seq).map_err(|e| VerifyError::Segment {
                    file: reader.path().to_path_buf(),
                    seq: out.len() as u64,
                    line: 1,
                    problem: e.to_string(),
                })?;
                if seq != out.len() as u64 {
                    return Err(VerifyError::Segment {
                        file: reader.path().to_path_buf(),
                        seq: out.len() as u64,
                        line: 1,
                        problem: format!("the file starts at seq {seq}: the segment before it is missing"),
                    });
                }
            }
            out.push(merkle::leaf_hash(&l));
        }
    }
    Ok(out)
}
