//! One audit record: its fields, its canonical hash input, its stored line,
//! and the strict parser a verifier uses.

use crate::canon::{self, CanonError};
use crate::merkle::{self, Hash};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

/// The `v` field of every record this crate writes and reads.
pub const FORMAT_VERSION: u64 = 1;

/// `prev` of the first record.
pub const ZERO_HASH: Hash = [0u8; 32];

/// Signatures are over this prefix followed by the 32 raw bytes of the
/// record hash. The prefix separates record signatures from checkpoint
/// signatures made with the same key (and from any other use of it).
pub const SIGNATURE_CONTEXT: &[u8] = b"portcullis-audit/v1 record\n";

/// A stored line longer than this is refused by writer and verifier alike,
/// so a hostile file cannot make a reader allocate without bound.
pub const MAX_LINE: usize = 1 << 20;

/// What a record is about. The set is closed for format version 1; a new
/// kind is a documented format change (docs/AUDIT.md §2).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Kind {
    /// seq 0 of every log file: the public key and origin.
    Header,
    Launch,
    Degradation,
    Verdict,
    Exec,
    Approval,
    ToolCall,
    Limit,
    Exit,
    KeyRotation,
    Recovery,
    /// The first record of a log file started by rotation by size: continues
    /// the chain of the file moved aside and carries what a reader of this
    /// file alone needs (docs/AUDIT.md §12).
    Segment,
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Header,
        Kind::Launch,
        Kind::Degradation,
        Kind::Verdict,
        Kind::Exec,
        Kind::Approval,
        Kind::ToolCall,
        Kind::Limit,
        Kind::Exit,
        Kind::KeyRotation,
        Kind::Recovery,
        Kind::Segment,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Header => "header",
            Kind::Launch => "launch",
            Kind::Degradation => "degradation",
            Kind::Verdict => "verdict",
            Kind::Exec => "exec",
            Kind::Approval => "approval",
            Kind::ToolCall => "tool_call",
            Kind::Limit => "limit",
            Kind::Exit => "exit",
            Kind::KeyRotation => "key_rotation",
            Kind::Recovery => "recovery",
            Kind::Segment => "segment",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Kinds only the log machinery itself writes; `AuditLog::append` refuses them.
    pub fn is_structural(self) -> bool {
        matches!(self, Kind::Header | Kind::KeyRotation | Kind::Recovery | Kind::Segment)
    }
}

impl std::fmt::Display for Kind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A parsed, structurally valid record. Signature validity is a separate
/// question (see `verify`): the key in force depends on earlier records.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    pub v: u64,
    pub seq: u64,
    pub ts: String,
    pub session: String,
    pub kind: Kind,
    pub body: Map<String, Value>,
    pub prev: Hash,
    pub hash: Hash,
    pub sig: [u8; 64],
}

/// What is wrong with one line, before any chain or signature check.
#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum LineError {
    #[error("line is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("not valid JSON: {0}")]
    NotJson(String),
    #[error("not a JSON object")]
    NotObject,
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("unexpected field `{0}`")]
    Unexpected(String),
    #[error("field `{field}` is invalid: {why}")]
    Invalid { field: &'static str, why: String },
    #[error("unsupported format version {0} (this verifier knows {FORMAT_VERSION})")]
    Version(u64),
    #[error(
        "line is not in canonical form (re-encoding differs: reordered keys, whitespace, escapes or duplicate keys)"
    )]
    NotCanonical,
    #[error("`hash` does not match the SHA-256 of the record's canonical encoding")]
    HashMismatch,
    #[error(transparent)]
    Canon(#[from] CanonError),
}

const FIELDS: [&str; 9] = ["body", "hash", "kind", "prev", "seq", "session", "sig", "ts", "v"];

impl Record {
    /// The hash input: the canonical encoding of the record without `hash` and `sig`.
    pub fn hash_input(&self) -> Result<String, CanonError> {
        Ok(self.hash_input_with_body(&encode_body(&self.body)?))
    }

    /// [`hash_input`](Self::hash_input) given the body's canonical encoding.
    pub fn hash_input_with_body(&self, body_enc: &str) -> String {
        let mut out = String::with_capacity(body_enc.len() + 200);
        assemble(&mut out, body_enc, None, self.kind, &self.prev, self.seq, &self.session, None, &self.ts, self.v);
        out
    }

    /// The stored line, without its trailing newline: the canonical encoding
    /// of all nine fields.
    pub fn line(&self) -> Result<String, CanonError> {
        Ok(self.line_with_body(&encode_body(&self.body)?))
    }

    /// [`line`](Self::line) given the body's canonical encoding (which the
    /// writer already has from hashing).
    pub fn line_with_body(&self, body_enc: &str) -> String {
        let mut out = String::with_capacity(body_enc.len() + 320);
        assemble(
            &mut out,
            body_enc,
            Some(&self.hash),
            self.kind,
            &self.prev,
            self.seq,
            &self.session,
            Some(&self.sig),
            &self.ts,
            self.v,
        );
        out
    }

    /// The message the signature is over: context prefix || 32-byte hash.
    pub fn signed_message(&self) -> Vec<u8> {
        signed_message(&self.hash)
    }

    pub fn signature(&self) -> Signature {
        Signature::from_bytes(&self.sig)
    }

    /// Whether this record says something was refused (docs/AUDIT.md §2):
    /// `verdict`, `answer` or `decision` is one of deny/denied/kill/errno/no/timeout,
    /// or `denied` is true. What `portcullis audit list --denied` shows.
    pub fn is_denial(&self) -> bool {
        const DENY: [&str; 7] = ["deny", "denied", "kill", "errno", "no", "timeout", "block"];
        let field_denies = |f: &str| {
            self.body.get(f).and_then(Value::as_str).is_some_and(|v| DENY.contains(&v.to_ascii_lowercase().as_str()))
        };
        field_denies("verdict")
            || field_denies("answer")
            || field_denies("decision")
            || self.body.get("denied") == Some(&Value::Bool(true))
    }

    /// Parses one stored line (without its newline) and checks everything
    /// that needs no context: JSON, the exact field set and types, the format
    /// version, canonical form, and that `hash` is the hash of the input.
    pub fn parse_line(line: &[u8]) -> Result<Record, LineError> {
        if line.len() > MAX_LINE {
            return Err(LineError::TooLong);
        }
        let value: Value = serde_json::from_slice(line).map_err(|e| LineError::NotJson(e.to_string()))?;
        let Value::Object(map) = &value else {
            return Err(LineError::NotObject);
        };
        for k in map.keys() {
            if !FIELDS.contains(&k.as_str()) {
                return Err(LineError::Unexpected(k.clone()));
            }
        }
        let get = |f: &'static str| map.get(f).ok_or(LineError::Missing(f));
        let string = |f: &'static str| -> Result<&str, LineError> {
            get(f)?.as_str().ok_or_else(|| LineError::Invalid { field: f, why: "not a string".into() })
        };
        let uint = |f: &'static str| -> Result<u64, LineError> {
            get(f)?.as_u64().ok_or_else(|| LineError::Invalid { field: f, why: "not a non-negative integer".into() })
        };
        let v = uint("v")?;
        if v != FORMAT_VERSION {
            return Err(LineError::Version(v));
        }
        let seq = uint("seq")?;
        let ts = string("ts")?;
        if crate::clock::parse_rfc3339(ts).is_none() || !ts.ends_with('Z') {
            return Err(LineError::Invalid { field: "ts", why: "not an RFC 3339 UTC time ending in Z".into() });
        }
        let session = string("session")?;
        let kind_s = string("kind")?;
        let kind = Kind::parse(kind_s)
            .ok_or_else(|| LineError::Invalid { field: "kind", why: format!("unknown kind {kind_s:?}") })?;
        let body = match get("body")? {
            Value::Object(b) => b.clone(),
            _ => return Err(LineError::Invalid { field: "body", why: "not a JSON object".into() }),
        };
        let prev = merkle::from_hex(string("prev")?)
            .ok_or_else(|| LineError::Invalid { field: "prev", why: "not 64 lowercase hex digits".into() })?;
        let hash = merkle::from_hex(string("hash")?)
            .ok_or_else(|| LineError::Invalid { field: "hash", why: "not 64 lowercase hex digits".into() })?;
        let sig_bytes =
            B64.decode(string("sig")?).map_err(|_| LineError::Invalid { field: "sig", why: "not base64".into() })?;
        let sig: [u8; 64] = sig_bytes
            .as_slice()
            .try_into()
            .map_err(|_| LineError::Invalid { field: "sig", why: "not 64 bytes".into() })?;
        let record = Record { v, seq, ts: ts.to_string(), session: session.to_string(), kind, body, prev, hash, sig };
        // Byte-exact: the stored line must be what the canonical encoder makes
        // of it. This rejects every alternative spelling of the same record.
        let body_enc = encode_body(&record.body)?;
        if record.line_with_body(&body_enc).as_bytes() != line {
            return Err(LineError::NotCanonical);
        }
        if sha256(record.hash_input_with_body(&body_enc).as_bytes()) != hash {
            return Err(LineError::HashMismatch);
        }
        Ok(record)
    }
}

/// Canonical encoding of a body object.
pub fn encode_body(body: &Map<String, Value>) -> Result<String, CanonError> {
    let mut out = String::with_capacity(256);
    canon::encode_object_into(&mut out, body)?;
    Ok(out)
}

/// Writes the canonical encoding of a record object straight from its parts
/// (members in the canonical order body, hash, kind, prev, seq, session,
/// sig, ts, v); without `hash` and `sig` this is the hash input. Equivalent
/// to building the JSON object and encoding it, without the copies.
#[allow(clippy::too_many_arguments)]
fn assemble(
    out: &mut String,
    body_enc: &str,
    hash: Option<&Hash>,
    kind: Kind,
    prev: &Hash,
    seq: u64,
    session: &str,
    sig: Option<&[u8; 64]>,
    ts: &str,
    v: u64,
) {
    use std::fmt::Write as _;
    out.push_str("{\"body\":");
    out.push_str(body_enc);
    if let Some(h) = hash {
        out.push_str(",\"hash\":\"");
        out.push_str(&merkle::to_hex(h));
        out.push('"');
    }
    out.push_str(",\"kind\":");
    canon::write_string(out, kind.as_str());
    out.push_str(",\"prev\":\"");
    out.push_str(&merkle::to_hex(prev));
    let _ = write!(out, "\",\"seq\":{seq},\"session\":");
    canon::write_string(out, session);
    if let Some(s) = sig {
        out.push_str(",\"sig\":\"");
        B64.encode_string(s, out);
        out.push('"');
    }
    out.push_str(",\"ts\":");
    canon::write_string(out, ts);
    let _ = write!(out, ",\"v\":{v}}}");
}

/// The canonical hash input of a record with these fields.
pub fn hash_input(
    v: u64,
    seq: u64,
    ts: &str,
    session: &str,
    kind: Kind,
    body: &Map<String, Value>,
    prev: &Hash,
) -> Result<String, CanonError> {
    let body_enc = encode_body(body)?;
    let mut out = String::with_capacity(body_enc.len() + 200);
    assemble(&mut out, &body_enc, None, kind, prev, seq, session, None, ts, v);
    Ok(out)
}

pub fn sha256(data: &[u8]) -> Hash {
    Sha256::digest(data).into()
}

pub fn signed_message(hash: &Hash) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNATURE_CONTEXT.len() + 32);
    m.extend_from_slice(SIGNATURE_CONTEXT);
    m.extend_from_slice(hash);
    m
}

/// Builds and signs a complete record.
pub fn seal(
    key: &SigningKey,
    seq: u64,
    ts: String,
    session: String,
    kind: Kind,
    body: Map<String, Value>,
    prev: Hash,
) -> Result<Record, CanonError> {
    let input = hash_input(FORMAT_VERSION, seq, &ts, &session, kind, &body, &prev)?;
    let hash = sha256(input.as_bytes());
    let sig = key.sign(&signed_message(&hash)).to_bytes();
    Ok(Record { v: FORMAT_VERSION, seq, ts, session, kind, body, prev, hash, sig })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn sample() -> Record {
        let key = SigningKey::from_bytes(&[1u8; 32]);
        let body = json!({"argv": ["sh", "-c", "echo hi\n{\"seq\":1}"], "exit": 0}).as_object().unwrap().clone();
        seal(&key, 0, "2026-01-01T00:00:00.000000Z".into(), "s1".into(), Kind::Launch, body, ZERO_HASH).unwrap()
    }

    #[test]
    fn assembled_line_equals_generic_canonical_encoding() {
        let r = sample();
        let mut m = Map::new();
        m.insert("v".into(), r.v.into());
        m.insert("seq".into(), r.seq.into());
        m.insert("ts".into(), r.ts.clone().into());
        m.insert("session".into(), r.session.clone().into());
        m.insert("kind".into(), r.kind.as_str().into());
        m.insert("body".into(), Value::Object(r.body.clone()));
        m.insert("prev".into(), merkle::to_hex(&r.prev).into());
        assert_eq!(r.hash_input().unwrap(), canon::encode(&Value::Object(m.clone())).unwrap());
        m.insert("hash".into(), merkle::to_hex(&r.hash).into());
        m.insert("sig".into(), B64.encode(r.sig).into());
        assert_eq!(r.line().unwrap(), canon::encode(&Value::Object(m)).unwrap());
    }

    #[test]
    fn line_round_trip() {
        let r = sample();
        let line = r.line().unwrap();
        assert!(!line.contains('\n'));
        assert_eq!(Record::parse_line(line.as_bytes()).unwrap(), r);
    }

    #[test]
    fn strict_parse_rejects_variants() {
        let line = sample().line().unwrap();
        let spaced = line.replacen(",", ", ", 1);
        assert_eq!(Record::parse_line(spaced.as_bytes()), Err(LineError::NotCanonical));
        let extra = line.replacen("{", "{\"zz\":1,", 1);
        assert!(matches!(Record::parse_line(extra.as_bytes()), Err(LineError::Unexpected(_))));
        let changed = line.replace("echo hi", "echo ho");
        assert_eq!(Record::parse_line(changed.as_bytes()), Err(LineError::HashMismatch));
        let v2 = line.replace("\"v\":1", "\"v\":2");
        assert_eq!(Record::parse_line(v2.as_bytes()), Err(LineError::Version(2)));
        assert!(matches!(Record::parse_line(b"{\"a\""), Err(LineError::NotJson(_))));
        assert!(matches!(Record::parse_line(b"[]"), Err(LineError::NotObject)));
        let float = line.replace("\"exit\":0", "\"exit\":0.0");
        assert!(matches!(Record::parse_line(float.as_bytes()), Err(LineError::Canon(_))));
    }
}
