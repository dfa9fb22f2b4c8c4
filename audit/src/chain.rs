//! The rules that tie records into one history: contiguous `seq`, `prev`
//! links, a header first, and which key is in force for each record.
//! Shared by the writer (continuing a log) and the verifier (checking one).

use crate::checkpoint;
use crate::key;
use crate::merkle::{self, Frontier, Hash};
use crate::record::{Kind, Record, ZERO_HASH};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, VerifyingKey};
use serde_json::{Map, Value};

/// Value of the header's `format` field.
pub const HEADER_FORMAT: &str = "portcullis-audit";

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum ChainError {
    #[error("seq is {found}, expected {expected} (a record was deleted, inserted or moved)")]
    SeqGap { expected: u64, found: u64 },
    #[error("prev does not match the hash of record {0} (the chain is broken here)")]
    PrevMismatch(u64),
    #[error("the first record is `{0}`, not `header`")]
    FirstNotHeader(Kind),
    #[error("a `header` record may only be the first record")]
    HeaderNotFirst,
    #[error("header is invalid: {0}")]
    BadHeader(String),
    #[error("key_rotation record is invalid: {0}")]
    BadRotation(String),
    #[error("segment record does not continue the previous segment: {0}")]
    BadSegment(String),
    #[error("a `segment` record at seq 0 (the first record of a log must be its `header`)")]
    SegmentFirst,
    #[error("seq {0} is the last there can be: no record may follow it")]
    SeqOverflow(u64),
}

/// A key and the first seq it signs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyEpoch {
    pub from_seq: u64,
    pub key: VerifyingKey,
}

/// The state of a history after some prefix of its records.
#[derive(Clone, Debug)]
pub struct Chain {
    pub next_seq: u64,
    pub last_hash: Hash,
    pub origin: String,
    pub keys: Vec<KeyEpoch>,
    pub frontier: Frontier,
    /// First seq of the current file: 0, or the seq of its `segment` record.
    pub segment_start: u64,
    /// Keys a rotation introduced with the new key's own signature over
    /// the history so far ([`rotation_statement`]): a verifier that trusts
    /// one of them may trust what came before it.
    pub endorsed: Vec<VerifyingKey>,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            next_seq: 0,
            last_hash: ZERO_HASH,
            origin: String::new(),
            keys: Vec::new(),
            frontier: Frontier::new(),
            segment_start: 0,
            endorsed: Vec::new(),
        }
    }
}

impl Chain {
    /// Checks that `rec` (stored as `line`, without newline) continues this
    /// history, and advances it. Does not check the signature.
    pub fn apply(&mut self, rec: &Record, line: &[u8]) -> Result<(), ChainError> {
        if rec.seq != self.next_seq {
            return Err(ChainError::SeqGap { expected: self.next_seq, found: rec.seq });
        }
        let next = rec.seq.checked_add(1).ok_or(ChainError::SeqOverflow(rec.seq))?;
        if rec.prev != self.last_hash {
            // For seq 0 the expected prev is the zero hash.
            return Err(ChainError::PrevMismatch(rec.seq.saturating_sub(1)));
        }
        match (rec.seq, rec.kind) {
            (0, Kind::Header) => {
                let (origin, vk) = parse_header(&rec.body).map_err(ChainError::BadHeader)?;
                self.origin = origin;
                self.keys.push(KeyEpoch { from_seq: 0, key: vk });
            }
            (0, Kind::Segment) => return Err(ChainError::SegmentFirst),
            (0, other) => return Err(ChainError::FirstNotHeader(other)),
            (_, Kind::Header) => return Err(ChainError::HeaderNotFirst),
            (seq, Kind::KeyRotation) => {
                let current = self.key_for(seq).copied();
                let vk = parse_rotation(&rec.body, current.as_ref()).map_err(ChainError::BadRotation)?;
                if endorsed_by_new_key(&rec.body, &self.origin, seq, &rec.prev, &vk).map_err(ChainError::BadRotation)? {
                    self.endorsed.push(vk);
                }
                self.keys.push(KeyEpoch { from_seq: seq + 1, key: vk });
            }
            (seq, Kind::Segment) => {
                let seg = parse_segment(&rec.body).map_err(ChainError::BadSegment)?;
                self.check_segment(seq, &seg).map_err(ChainError::BadSegment)?;
                self.segment_start = seq;
            }
            _ => {}
        }
        self.next_seq = next;
        self.last_hash = rec.hash;
        self.frontier.push(merkle::leaf_hash(line));
        Ok(())
    }

    /// The history before a `segment` record, as the record states it: for a
    /// reader that starts at a segment without the files before it. The
    /// record itself still has to be applied (and its signature checked
    /// under the key it names).
    pub fn before_segment(rec: &Record) -> Result<Chain, ChainError> {
        if rec.kind != Kind::Segment {
            return Err(ChainError::BadSegment(format!("the record is a `{}`", rec.kind)));
        }
        if rec.seq == 0 {
            return Err(ChainError::SegmentFirst);
        }
        let seg = parse_segment(&rec.body).map_err(ChainError::BadSegment)?;
        let frontier = Frontier::from_hashes(seg.tree_size, &seg.frontier).ok_or_else(|| {
            ChainError::BadSegment("`frontier` does not have one hash per 1-bit of `tree_size`".into())
        })?;
        Ok(Chain {
            next_seq: rec.seq,
            last_hash: rec.prev,
            origin: seg.origin,
            keys: vec![KeyEpoch { from_seq: rec.seq, key: seg.key }],
            frontier,
            segment_start: seg.previous_first_seq,
            endorsed: Vec::new(),
        })
    }

    /// A segment record at `seq` must restate this history exactly.
    fn check_segment(&self, seq: u64, seg: &Segment) -> Result<(), String> {
        if seg.origin != self.origin {
            return Err(format!("`origin` is {:?}, the log's is {:?}", seg.origin, self.origin));
        }
        if self.key_for(seq) != Some(&seg.key) {
            return Err("`public_key` is not the key in force".into());
        }
        if seg.previous_last_seq.checked_add(1) != Some(seq) || seg.tree_size != seq {
            return Err(format!(
                "`previous_last_seq` {} / `tree_size` {} do not match seq {seq}",
                seg.previous_last_seq, seg.tree_size
            ));
        }
        if seg.previous_last_hash != self.last_hash {
            return Err("`previous_last_hash` is not the hash of the previous record".into());
        }
        if seg.previous_first_seq != self.segment_start {
            return Err(format!(
                "`previous_first_seq` is {}, but the previous segment starts at seq {}",
                seg.previous_first_seq, self.segment_start
            ));
        }
        if seg.frontier != self.frontier.hashes() || self.frontier.size() != seq {
            return Err("`frontier` is not the Merkle frontier of the records before it".into());
        }
        Ok(())
    }

    /// The key that must have signed record `seq`.
    pub fn key_for(&self, seq: u64) -> Option<&VerifyingKey> {
        self.keys.iter().rev().find(|e| e.from_seq <= seq).map(|e| &e.key)
    }

    /// The key in force now: it signs the next record and checkpoints of the current size.
    pub fn current_key(&self) -> Option<&VerifyingKey> {
        self.key_for(self.next_seq)
    }
}

fn str_field<'a>(body: &'a Map<String, Value>, f: &str) -> Result<&'a str, String> {
    body.get(f).and_then(Value::as_str).ok_or_else(|| format!("`{f}` is missing or not a string"))
}

/// Header body: `format`, `algorithm`, `origin`, `public_key`, `fingerprint`.
pub fn header_body(origin: &str, vk: &VerifyingKey) -> Map<String, Value> {
    let mut b = Map::new();
    b.insert("format".into(), HEADER_FORMAT.into());
    b.insert("algorithm".into(), "ed25519".into());
    b.insert("origin".into(), origin.into());
    b.insert("public_key".into(), key::public_key_b64(vk).into());
    b.insert("fingerprint".into(), key::fingerprint(vk).into());
    b
}

fn parse_header(body: &Map<String, Value>) -> Result<(String, VerifyingKey), String> {
    if str_field(body, "format")? != HEADER_FORMAT {
        return Err(format!("`format` is not {HEADER_FORMAT:?}"));
    }
    if str_field(body, "algorithm")? != "ed25519" {
        return Err("`algorithm` is not \"ed25519\"".into());
    }
    let origin = str_field(body, "origin")?;
    if !checkpoint::valid_name(origin) {
        return Err("`origin` is empty or contains spaces, `+` or control characters".into());
    }
    let vk = key::parse_public_key(str_field(body, "public_key")?).map_err(|e| e.to_string())?;
    if str_field(body, "fingerprint")? != key::fingerprint(&vk) {
        return Err("`fingerprint` does not match `public_key`".into());
    }
    Ok((origin.to_string(), vk))
}

/// key_rotation body: `new_public_key`, `new_fingerprint`, `old_fingerprint`.
pub fn rotation_body(old: &VerifyingKey, new: &VerifyingKey, new_key_signature: &[u8; 64]) -> Map<String, Value> {
    let mut b = Map::new();
    b.insert("old_fingerprint".into(), key::fingerprint(old).into());
    b.insert("new_public_key".into(), key::public_key_b64(new).into());
    b.insert("new_fingerprint".into(), key::fingerprint(new).into());
    b.insert("new_key_signature".into(), B64.encode(new_key_signature).into());
    b
}

/// What the new key signs in a rotation at `seq` (docs/AUDIT.md §5): the
/// log, the place and the whole history before it (`prev`). The old key's
/// signature alone only says the old key let go; with this, the new key
/// takes the history on, so a verifier may trust a log by the key it
/// rotated to. Without it, anyone could end a log of their own with a
/// rotation to someone else's public key.
pub fn rotation_statement(
    origin: &str,
    seq: u64,
    prev: &Hash,
    old_fingerprint: &str,
    new_fingerprint: &str,
) -> Vec<u8> {
    format!(
        "portcullis-audit key rotation v1\n{origin}\n{seq}\n{}\n{old_fingerprint}\n{new_fingerprint}\n",
        merkle::to_hex(prev)
    )
    .into_bytes()
}

/// Whether a rotation's `new_key_signature` holds; false where it has none
/// (logs rotated before it existed), an error where one is there but wrong.
fn endorsed_by_new_key(
    body: &Map<String, Value>,
    origin: &str,
    seq: u64,
    prev: &Hash,
    new: &VerifyingKey,
) -> Result<bool, String> {
    let Some(v) = body.get("new_key_signature") else { return Ok(false) };
    let bytes = v.as_str().and_then(|s| B64.decode(s).ok()).and_then(|b| <[u8; 64]>::try_from(b).ok());
    let sig = Signature::from_bytes(&bytes.ok_or("`new_key_signature` is not a base64 signature")?);
    let statement = rotation_statement(origin, seq, prev, str_field(body, "old_fingerprint")?, &key::fingerprint(new));
    new.verify_strict(&statement, &sig)
        .map(|()| true)
        .map_err(|_| "`new_key_signature` does not verify under the new key".into())
}

fn parse_rotation(body: &Map<String, Value>, current: Option<&VerifyingKey>) -> Result<VerifyingKey, String> {
    let vk = key::parse_public_key(str_field(body, "new_public_key")?).map_err(|e| e.to_string())?;
    if str_field(body, "new_fingerprint")? != key::fingerprint(&vk) {
        return Err("`new_fingerprint` does not match `new_public_key`".into());
    }
    if let Some(cur) = current {
        if str_field(body, "old_fingerprint")? != key::fingerprint(cur) {
            return Err("`old_fingerprint` is not the key in force".into());
        }
        if cur == &vk {
            return Err("rotates to the key already in force".into());
        }
    }
    Ok(vk)
}

/// What a `segment` record states (docs/AUDIT.md §12).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub origin: String,
    pub key: VerifyingKey,
    pub previous_segment: String,
    pub previous_first_seq: u64,
    pub previous_last_seq: u64,
    pub previous_last_hash: Hash,
    pub tree_size: u64,
    pub frontier: Vec<Hash>,
}

/// Body of the `segment` record that starts a new file at `chain.next_seq`,
/// after the file holding `chain.segment_start..` was moved to `previous_segment`.
pub fn segment_body(chain: &Chain, vk: &VerifyingKey, previous_segment: &str) -> Map<String, Value> {
    let mut b = header_body(&chain.origin, vk);
    b.insert("previous_segment".into(), previous_segment.into());
    b.insert("previous_first_seq".into(), chain.segment_start.into());
    b.insert("previous_last_seq".into(), chain.next_seq.saturating_sub(1).into());
    b.insert("previous_last_hash".into(), merkle::to_hex(&chain.last_hash).into());
    b.insert("tree_size".into(), chain.frontier.size().into());
    b.insert("frontier".into(), chain.frontier.hashes().iter().map(|h| Value::from(merkle::to_hex(h))).collect());
    b
}

/// Parses a segment body: the header members, then the continuation.
pub fn parse_segment(body: &Map<String, Value>) -> Result<Segment, String> {
    let (origin, key) = parse_header(body)?;
    let uint =
        |f: &str| body.get(f).and_then(Value::as_u64).ok_or_else(|| format!("`{f}` is missing or not an integer"));
    let hex = |s: &str, f: &str| merkle::from_hex(s).ok_or_else(|| format!("`{f}` is not 64 lowercase hex digits"));
    let previous_segment = str_field(body, "previous_segment")?.to_string();
    let frontier = body
        .get("frontier")
        .and_then(Value::as_array)
        .ok_or_else(|| "`frontier` is missing or not an array".to_string())?
        .iter()
        .map(|v| v.as_str().ok_or_else(|| "`frontier` holds a non-string".to_string()).and_then(|s| hex(s, "frontier")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Segment {
        origin,
        key,
        previous_segment,
        previous_first_seq: uint("previous_first_seq")?,
        previous_last_seq: uint("previous_last_seq")?,
        previous_last_hash: hex(str_field(body, "previous_last_hash")?, "previous_last_hash")?,
        tree_size: uint("tree_size")?,
        frontier,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A record at seq u64::MAX is the last there can be: the add that
    /// followed it wrapped to 0 and let a second `header` in (a helper's hunt).
    #[test]
    fn the_last_seq_has_no_successor() {
        let mut chain = Chain { next_seq: u64::MAX, ..Chain::default() };
        let rec = Record {
            v: 1,
            seq: u64::MAX,
            ts: "2026-11-23T00:00:00Z".into(),
            session: "s".into(),
            kind: Kind::Verdict,
            body: serde_json::Map::new(),
            prev: chain.last_hash,
            hash: [0; 32],
            sig: [0; 64],
        };
        assert_eq!(chain.apply(&rec, b"x"), Err(ChainError::SeqOverflow(u64::MAX)));
        assert_eq!(chain.next_seq, u64::MAX, "nothing advanced");
    }
}
