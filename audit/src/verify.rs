//! The verifier: everything a third party checks, from the file alone plus
//! (optionally) a checkpoint kept elsewhere and a trusted public key.

use crate::chain::{Chain, KeyEpoch};
use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::key;
use crate::merkle::{self, Hash};
use crate::reader::{LineReader, RawLine};
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

/// What a successful verification established.
#[derive(Clone, Debug)]
pub struct Report {
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
    #[error("the log is not signed under the trusted key {trusted}; its keys are {found}")]
    Untrusted { trusted: String, found: String },
}

impl VerifyError {
    /// The first sequence number known to be bad, where there is one.
    pub fn first_bad_seq(&self) -> Option<u64> {
        match self {
            VerifyError::Record { seq, .. } => Some(*seq),
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
    msg: Vec<u8>,
    sig: Signature,
    key: VerifyingKey,
}

/// Checks, in order, for every line: JSON, canonical form, fields, hash,
/// seq contiguous from 0, prev chain, header first, key in force, signature;
/// then the torn tail, the checkpoint (signature, size, root) and the
/// trusted key. Reports the first failure by seq.
pub fn verify_with(log_path: &Path, opts: &VerifyOptions) -> Result<Report, VerifyError> {
    // Read the checkpoint before the log: a writer appending meanwhile can
    // only make the log longer than it, never shorter.
    let checkpoint = match &opts.checkpoint {
        Some(p) => {
            let mut text = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(storage::open_read(p)?, crate::checkpoint::MAX_NOTE as u64 + 1),
                &mut text,
            )
            .map_err(|e| StorageError::io("read checkpoint", p, e))?;
            let (cp, _) =
                Checkpoint::parse(&text).map_err(|source| VerifyError::Checkpoint { path: p.clone(), source })?;
            Some((p.clone(), cp, text))
        }
        None => None,
    };
    let mut reader = LineReader::open_shared(log_path)?;
    let mut chain = Chain::default();
    let mut kinds: BTreeMap<String, u64> = BTreeMap::new();
    let mut sessions: BTreeSet<String> = BTreeSet::new();
    let mut recoveries = Vec::new();
    let mut pending: Vec<PendingSig> = Vec::with_capacity(BATCH);
    let mut at_checkpoint: Option<(Hash, Option<VerifyingKey>)> = None;
    let want = checkpoint.as_ref().map(|(_, cp, _)| cp.size);
    let mut torn = None;
    loop {
        if Some(chain.next_seq) == want {
            at_checkpoint = Some((chain.frontier.root(), chain.current_key().copied()));
        }
        let raw = match reader.next_line() {
            Ok(Some(RawLine::Complete(l))) => l,
            Ok(Some(RawLine::Torn { offset, bytes })) => {
                torn = Some((offset, bytes));
                break;
            }
            Ok(None) => break,
            Err(e) => {
                check_signatures(&mut pending, opts.strict)?;
                return Err(e);
            }
        };
        let seq = chain.next_seq;
        let line_no = seq + 1;
        let fail = |problem: String| VerifyError::Record { seq, line: line_no, problem };
        let rec = match Record::parse_line(&raw) {
            Ok(r) => r,
            Err(e) => {
                check_signatures(&mut pending, opts.strict)?;
                return Err(fail(e.to_string()));
            }
        };
        if let Err(e) = chain.apply(&rec, &raw) {
            check_signatures(&mut pending, opts.strict)?;
            return Err(fail(e.to_string()));
        }
        let Some(key) = chain.key_for(rec.seq).copied() else {
            check_signatures(&mut pending, opts.strict)?;
            return Err(fail("no key in force".into()));
        };
        pending.push(PendingSig { seq: rec.seq, msg: rec.signed_message(), sig: rec.signature(), key });
        if pending.len() >= BATCH {
            check_signatures(&mut pending, opts.strict)?;
        }
        *kinds.entry(rec.kind.as_str().to_string()).or_default() += 1;
        sessions.insert(rec.session.clone());
        if rec.kind == Kind::Recovery {
            recoveries.push((rec.seq, rec.body.get("lost_bytes").and_then(|v| v.as_u64()).unwrap_or(0)));
        }
    }
    check_signatures(&mut pending, opts.strict)?;
    if chain.next_seq == 0 && torn.is_none() && want.is_none_or(|s| s == 0) {
        return Err(VerifyError::Empty { path: log_path.to_path_buf() });
    }
    // Checkpoint before the torn tail: a truncation is the graver finding.
    let mut checked = None;
    if let Some((path, cp, text)) = &checkpoint {
        let Some((root, key)) = at_checkpoint else {
            return Err(VerifyError::Truncated { path: path.clone(), size: cp.size, records: chain.next_seq });
        };
        if let Some(vk) = key {
            Checkpoint::verify_note(text, Some(&chain.origin), &vk)
                .map_err(|source| VerifyError::Checkpoint { path: path.clone(), source })?;
        } else if cp.size > 0 {
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
            if !chain.keys.iter().any(|e| e.key == *t) {
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
    })
}

/// Verifies and clears `pending`. Batch verification first; if the batch
/// fails, one by one to name the first bad record.
fn check_signatures(pending: &mut Vec<PendingSig>, strict: bool) -> Result<(), VerifyError> {
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
                return Err(VerifyError::Record {
                    seq: p.seq,
                    line: p.seq + 1,
                    problem: format!("signature does not verify under the key in force ({})", key::fingerprint(&p.key)),
                });
            }
        }
    }
    pending.clear();
    Ok(())
}

/// Leaf hashes of every complete record line, in order (no other checks).
pub fn leaf_hashes(log_path: &Path) -> Result<Vec<Hash>, VerifyError> {
    let mut reader = LineReader::open_shared(log_path)?;
    let mut out = Vec::new();
    while let Some(RawLine::Complete(l)) = reader.next_line()? {
        out.push(merkle::leaf_hash(&l));
    }
    Ok(out)
}
