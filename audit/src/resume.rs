//! A cache that lets a writer continue a log without reading all of it.
//!
//! Continuing a log needs its chain state: the next seq, the last hash, the
//! origin, the keys in force and the Merkle frontier (O(log n) hashes).
//! Rebuilding that by reading every record makes each `open` cost O(log
//! size): every launch of the supervisor would slow down as the log grows.
//! So whenever a writer writes a checkpoint it also writes `<log>.state`, and
//! the next writer starts from there and reads only the bytes after it.
//!
//! The state is a cache, never evidence: it is used only if the record that
//! ends at its byte offset exists in the log with the seq and hash it names
//! (and the writer still checks that record's signature); anything else, and
//! the writer reads the whole log as before. `verify` never reads it: a
//! forged frontier would only make later checkpoints fail verification.
//!
//! The file is overwritten in place, not renamed into place (see
//! `storage::write_in_place`), so it ends with the SHA-256 of the JSON line
//! before it: a write torn by a crash is recognised and ignored.

use std::path::Path;

use serde_json::{json, Value};

use crate::chain::{Chain, KeyEpoch};
use crate::merkle::{from_hex, to_hex, Frontier};

/// Chain state as of `bytes` bytes of the log file.
pub struct State {
    pub bytes: u64,
    pub chain: Chain,
}

pub fn encode(bytes: u64, chain: &Chain) -> String {
    let (size, stack) = chain.frontier.parts();
    let body = json!({
        "v": 2,
        "bytes": bytes,
        "next_seq": chain.next_seq,
        "last_hash": to_hex(&chain.last_hash),
        "origin": chain.origin,
        "keys": chain.keys.iter().map(|k| json!([k.from_seq, to_hex(k.key.as_bytes())])).collect::<Vec<_>>(),
        "frontier_size": size,
        "frontier": stack.iter().map(|(h, hash)| json!([h, to_hex(hash)])).collect::<Vec<_>>(),
        "segment_start": chain.segment_start,
    })
    .to_string();
    let sum = to_hex(&crate::record::sha256(body.as_bytes()));
    format!("{body}\n{sum}\n")
}

/// Reads `<log>.state`; None when missing or malformed (then the log is read whole).
pub fn load(path: &Path) -> Option<State> {
    let file = crate::storage::open_read(path).ok()?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut std::io::Read::take(file, 64 * 1024), &mut text).ok()?;
    let (body, sum) = text.split_once('\n')?;
    if sum.trim_end_matches('\n') != to_hex(&crate::record::sha256(body.as_bytes())) {
        return None;
    }
    let v: Value = serde_json::from_str(body).ok()?;
    if v.get("v")?.as_u64()? != 2 {
        return None;
    }
    let keys = v
        .get("keys")?
        .as_array()?
        .iter()
        .map(|k| {
            let from_seq = k.get(0)?.as_u64()?;
            let bytes = from_hex(k.get(1)?.as_str()?)?;
            let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).ok()?;
            Some(KeyEpoch { from_seq, key })
        })
        .collect::<Option<Vec<_>>>()?;
    let stack = v
        .get("frontier")?
        .as_array()?
        .iter()
        .map(|e| Some((u32::try_from(e.get(0)?.as_u64()?).ok()?, from_hex(e.get(1)?.as_str()?)?)))
        .collect::<Option<Vec<_>>>()?;
    let frontier = Frontier::from_parts(v.get("frontier_size")?.as_u64()?, stack)?;
    let next_seq = v.get("next_seq")?.as_u64()?;
    if frontier.size() != next_seq || next_seq == 0 {
        return None;
    }
    let chain = Chain {
        next_seq,
        last_hash: from_hex(v.get("last_hash")?.as_str()?)?,
        origin: v.get("origin")?.as_str()?.to_string(),
        keys,
        frontier,
        // A state written before rotation existed has none: read the file.
        segment_start: v.get("segment_start")?.as_u64()?,
        // Only verifiers look at it.
        endorsed: Vec::new(),
    };
    Some(State { bytes: v.get("bytes")?.as_u64()?, chain })
}
