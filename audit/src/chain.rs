//! The rules that tie records into one history: contiguous `seq`, `prev`
//! links, a header first, and which key is in force for each record.
//! Shared by the writer (continuing a log) and the verifier (checking one).

use crate::checkpoint;
use crate::key;
use crate::merkle::{self, Frontier, Hash};
use crate::record::{Kind, Record, ZERO_HASH};
use ed25519_dalek::VerifyingKey;
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
}

impl Default for Chain {
    fn default() -> Self {
        Chain { next_seq: 0, last_hash: ZERO_HASH, origin: String::new(), keys: Vec::new(), frontier: Frontier::new() }
    }
}

impl Chain {
    /// Checks that `rec` (stored as `line`, without newline) continues this
    /// history, and advances it. Does not check the signature.
    pub fn apply(&mut self, rec: &Record, line: &[u8]) -> Result<(), ChainError> {
        if rec.seq != self.next_seq {
            return Err(ChainError::SeqGap { expected: self.next_seq, found: rec.seq });
        }
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
            (0, other) => return Err(ChainError::FirstNotHeader(other)),
            (_, Kind::Header) => return Err(ChainError::HeaderNotFirst),
            (seq, Kind::KeyRotation) => {
                let current = self.key_for(seq).copied();
                let vk = parse_rotation(&rec.body, current.as_ref()).map_err(ChainError::BadRotation)?;
                self.keys.push(KeyEpoch { from_seq: seq + 1, key: vk });
            }
            _ => {}
        }
        self.next_seq += 1;
        self.last_hash = rec.hash;
        self.frontier.push(merkle::leaf_hash(line));
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
pub fn rotation_body(old: &VerifyingKey, new: &VerifyingKey) -> Map<String, Value> {
    let mut b = Map::new();
    b.insert("old_fingerprint".into(), key::fingerprint(old).into());
    b.insert("new_public_key".into(), key::public_key_b64(new).into());
    b.insert("new_fingerprint".into(), key::fingerprint(new).into());
    b
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
