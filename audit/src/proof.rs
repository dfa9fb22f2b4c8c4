//! Receipts: proof that one record is in the log a checkpoint commits to
//! (THREATS.md L14), and proof that a later log extends an earlier one (L2).

use crate::checkpoint::{Checkpoint, CheckpointError};
use crate::merkle::{self, Hash, ProofError};
use crate::reader::{open_all, RawLine};
use crate::record::Record;
use crate::verify::{leaf_hashes, VerifyError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::VerifyingKey;
use serde_json::{json, Value};
use std::path::Path;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProveError {
    #[error(transparent)]
    Log(#[from] VerifyError),
    #[error("checkpoint: {0}")]
    Checkpoint(#[from] CheckpointError),
    #[error("proof: {0}")]
    Proof(#[from] ProofError),
    #[error("seq {seq} is not covered by the checkpoint (size {size}); it will be after the next checkpoint")]
    NotCovered { seq: u64, size: u64 },
    #[error("the log has {records} records, fewer than the checkpoint's {size}: truncated or rolled back")]
    Truncated { records: u64, size: u64 },
    #[error("receipt's record line does not hash to its leaf hash")]
    LeafMismatch,
    #[error("receipt's record has seq {found}, not {expected}")]
    SeqMismatch { expected: u64, found: u64 },
}

/// Everything a client needs to check, later and offline, that record `seq`
/// is in the log: the record, its audit path, and the signed checkpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InclusionReceipt {
    pub seq: u64,
    pub tree_size: u64,
    pub leaf_hash: Hash,
    pub path: Vec<Hash>,
    pub root: Hash,
    /// The record's stored line.
    pub line: String,
    /// The signed checkpoint note the proof is against.
    pub checkpoint: String,
}

/// Builds the inclusion proof of record `seq` against the checkpoint `checkpoint_note`.
pub fn prove_inclusion(log_path: &Path, seq: u64, checkpoint_note: &str) -> Result<InclusionReceipt, ProveError> {
    let (cp, _) = Checkpoint::parse(checkpoint_note)?;
    if seq >= cp.size {
        return Err(ProveError::NotCovered { seq, size: cp.size });
    }
    let leaves = leaf_hashes(log_path)?;
    if (leaves.len() as u64) < cp.size {
        return Err(ProveError::Truncated { records: leaves.len() as u64, size: cp.size });
    }
    let tree = &leaves[..cp.size as usize];
    let path = merkle::inclusion_proof(seq, tree)?;
    let line = nth_line(log_path, seq)?;
    Ok(InclusionReceipt {
        seq,
        tree_size: cp.size,
        leaf_hash: leaves[seq as usize],
        path,
        root: cp.root,
        line,
        checkpoint: checkpoint_note.to_string(),
    })
}

fn nth_line(log_path: &Path, seq: u64) -> Result<String, VerifyError> {
    // Across segments; `leaf_hashes` has checked they start at seq 0.
    let mut i = 0;
    for mut reader in open_all(log_path)? {
        while let Some(RawLine::Complete(l)) = reader.next_line()? {
            if i == seq {
                return Ok(String::from_utf8_lossy(&l).into_owned());
            }
            i += 1;
        }
    }
    Err(VerifyError::Record { seq, line: seq + 1, problem: "no such record".into() })
}

impl InclusionReceipt {
    /// Checks the receipt on its own: the checkpoint is signed by `vk`, the
    /// line parses, has the claimed seq and hashes to the leaf, and the path
    /// leads from the leaf to the checkpoint's root. The record's own
    /// signature is not checked here (the key in force at its seq may not
    /// be `vk`): the checkpoint, signed by `vk`, covers the whole line,
    /// signature included, through the root; verifying the log checks it.
    pub fn verify(&self, vk: &VerifyingKey) -> Result<(), ProveError> {
        let cp = Checkpoint::verify_note(&self.checkpoint, None, vk)?;
        if cp.size != self.tree_size || cp.root != self.root {
            return Err(ProveError::Proof(ProofError::RootMismatch));
        }
        if merkle::leaf_hash(self.line.as_bytes()) != self.leaf_hash {
            return Err(ProveError::LeafMismatch);
        }
        let rec = Record::parse_line(self.line.as_bytes()).map_err(|e| VerifyError::Record {
            seq: self.seq,
            line: self.seq + 1,
            problem: e.to_string(),
        })?;
        if rec.seq != self.seq {
            return Err(ProveError::SeqMismatch { expected: self.seq, found: rec.seq });
        }
        merkle::verify_inclusion(self.seq, self.tree_size, &self.leaf_hash, &self.path, &self.root)?;
        Ok(())
    }

    pub fn to_json(&self) -> Value {
        json!({
            "seq": self.seq,
            "tree_size": self.tree_size,
            "leaf_hash": merkle::to_hex(&self.leaf_hash),
            "path": self.path.iter().map(merkle::to_hex).collect::<Vec<_>>(),
            "root_b64": B64.encode(self.root),
            "line": self.line,
            "checkpoint": self.checkpoint,
        })
    }
}

/// PROOF(old_size, D[new_size]) over the log's records.
pub fn prove_consistency(log_path: &Path, old_size: u64, new_size: u64) -> Result<Vec<Hash>, ProveError> {
    let leaves = leaf_hashes(log_path)?;
    if (leaves.len() as u64) < new_size {
        return Err(ProveError::Truncated { records: leaves.len() as u64, size: new_size });
    }
    Ok(merkle::consistency_proof(old_size, &leaves[..new_size as usize])?)
}
