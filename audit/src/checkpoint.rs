//! Signed checkpoints: (origin, tree size, root) as a C2SP signed note.
//!
//! A checkpoint is what makes truncation and rollback visible (THREATS.md
//! L1, L2): a verifier holding one knows the log had at least `size`
//! records and what their root was. It is only as strong as the place it is
//! kept; see docs/AUDIT.md §8 for what a local checkpoint does not defend.
//!
//! Format (C2SP tlog-checkpoint + signed-note, Ed25519 signature type 0x01):
//!
//! ```text
//! <origin>\n<size>\n<base64 root>\n\n— <origin> <base64(key id || signature)>\n
//! ```

use crate::merkle::Hash;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signature line prefix: U+2014 EM DASH and a space.
const SIG_PREFIX: &str = "\u{2014} ";

/// A checkpoint note larger than this is refused unread.
pub const MAX_NOTE: usize = 64 * 1024;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Checkpoint {
    pub origin: String,
    pub size: u64,
    pub root: Hash,
}

/// One signature line of a note.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoteSignature {
    pub name: String,
    pub key_id: [u8; 4],
    pub sig: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum CheckpointError {
    #[error("checkpoint is malformed: {0}")]
    Malformed(String),
    #[error("checkpoint is for origin {found:?}, but the log's origin is {expected:?}")]
    WrongOrigin { expected: String, found: String },
    #[error("checkpoint carries no signature by the log key (name {name:?}, key id {key_id})")]
    NotSignedByKey { name: String, key_id: String },
    #[error("checkpoint signature by the log key does not verify")]
    BadSignature,
}

fn malformed(why: impl Into<String>) -> CheckpointError {
    CheckpointError::Malformed(why.into())
}

/// Checks a signed-note key name or checkpoint origin: non-empty, printable,
/// no spaces and no `+` (signed-note's rules; a newline would reframe the note).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 256 && name.chars().all(|c| !c.is_control() && !c.is_whitespace() && c != '+')
}

/// C2SP signed-note key ID: SHA-256(name || "\n" || 0x01 || public key)[..4].
pub fn key_id(name: &str, vk: &VerifyingKey) -> [u8; 4] {
    let mut h = Sha256::new();
    h.update(name.as_bytes());
    h.update(b"\n\x01");
    h.update(vk.as_bytes());
    let d = h.finalize();
    [d[0], d[1], d[2], d[3]]
}

/// The signed-note verifier key string `<name>+<hex key id>+<base64(0x01 || key)>`,
/// usable with other signed-note tools (e.g. golang.org/x/mod/sumdb/note).
pub fn verifier_key(name: &str, vk: &VerifyingKey) -> String {
    let id = key_id(name, vk);
    let mut k = vec![1u8];
    k.extend_from_slice(vk.as_bytes());
    format!("{name}+{:02x}{:02x}{:02x}{:02x}+{}", id[0], id[1], id[2], id[3], B64.encode(k))
}

impl Checkpoint {
    /// The note body that is signed.
    pub fn body(&self) -> String {
        format!("{}\n{}\n{}\n", self.origin, self.size, B64.encode(self.root))
    }

    /// The complete signed note, signed by `key` under the name `origin`.
    pub fn sign(&self, key: &SigningKey) -> String {
        let body = self.body();
        let sig = key.sign(body.as_bytes());
        let mut blob = key_id(&self.origin, &key.verifying_key()).to_vec();
        blob.extend_from_slice(&sig.to_bytes());
        format!("{body}\n{SIG_PREFIX}{} {}\n", self.origin, B64.encode(blob))
    }

    /// Parses a note without checking signatures. Extension lines after the
    /// root are allowed (tlog-checkpoint) and ignored.
    pub fn parse(text: &str) -> Result<(Checkpoint, Vec<NoteSignature>), CheckpointError> {
        if text.len() > MAX_NOTE {
            return Err(malformed("larger than 64 KiB"));
        }
        if text.chars().any(|c| c.is_control() && c != '\n') {
            return Err(malformed("contains control characters"));
        }
        let split = text.find("\n\n").ok_or_else(|| malformed("no blank line before the signatures"))?;
        let (body, sigs) = (&text[..split + 1], &text[split + 2..]);
        let mut lines = body.lines();
        let origin = lines.next().unwrap_or("");
        if !valid_name(origin) {
            return Err(malformed("origin line is empty or contains spaces, `+` or control characters"));
        }
        let size_s = lines.next().ok_or_else(|| malformed("no size line"))?;
        if size_s.is_empty()
            || !size_s.bytes().all(|b| b.is_ascii_digit())
            || (size_s.len() > 1 && size_s.starts_with('0'))
        {
            return Err(malformed("size is not a decimal number without leading zeros"));
        }
        let size: u64 = size_s.parse().map_err(|_| malformed("size out of range"))?;
        let root_s = lines.next().ok_or_else(|| malformed("no root line"))?;
        let root: Hash = B64
            .decode(root_s)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| malformed("root is not base64 of 32 bytes"))?;
        if B64.encode(root) != root_s {
            return Err(malformed("root is not canonical base64"));
        }
        if !sigs.ends_with('\n') || sigs.is_empty() {
            return Err(malformed("signature block does not end with a newline"));
        }
        let mut out = Vec::new();
        for line in sigs.lines() {
            let rest = line
                .strip_prefix(SIG_PREFIX)
                .ok_or_else(|| malformed("signature line does not start with an em dash"))?;
            let (name, b64) = rest.split_once(' ').ok_or_else(|| malformed("signature line has no key name"))?;
            let blob = B64.decode(b64).map_err(|_| malformed("signature is not base64"))?;
            if !valid_name(name) || blob.len() < 5 {
                return Err(malformed("signature line is malformed"));
            }
            out.push(NoteSignature {
                name: name.to_string(),
                key_id: [blob[0], blob[1], blob[2], blob[3]],
                sig: blob[4..].to_vec(),
            });
        }
        Ok((Checkpoint { origin: origin.to_string(), size, root }, out))
    }

    /// Parses `text` and checks it is signed by `vk` under the name of its
    /// origin, with `verify_strict`. If `origin` is given, it must match.
    /// A signature line with the right name and key ID that fails is an
    /// error even if another one verifies (signed-note's rule).
    pub fn verify_note(text: &str, origin: Option<&str>, vk: &VerifyingKey) -> Result<Checkpoint, CheckpointError> {
        let (cp, sigs) = Checkpoint::parse(text)?;
        if let Some(expected) = origin {
            if cp.origin != expected {
                return Err(CheckpointError::WrongOrigin { expected: expected.to_string(), found: cp.origin });
            }
        }
        let id = key_id(&cp.origin, vk);
        let body = &text[..text.find("\n\n").map_or(0, |i| i + 1)];
        let mut found = false;
        for s in sigs.iter().filter(|s| s.name == cp.origin && s.key_id == id) {
            let sig: [u8; 64] = s.sig.as_slice().try_into().map_err(|_| CheckpointError::BadSignature)?;
            vk.verify_strict(body.as_bytes(), &Signature::from_bytes(&sig))
                .map_err(|_| CheckpointError::BadSignature)?;
            found = true;
        }
        if !found {
            return Err(CheckpointError::NotSignedByKey {
                name: cp.origin.clone(),
                key_id: id.iter().map(|b| format!("{b:02x}")).collect(),
            });
        }
        Ok(cp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(b: u8) -> SigningKey {
        SigningKey::from_bytes(&[b; 32])
    }

    #[test]
    fn sign_parse_verify() {
        let cp = Checkpoint { origin: "portcullis-audit/abc".into(), size: 42, root: [9u8; 32] };
        let note = cp.sign(&key(1));
        assert!(note.starts_with("portcullis-audit/abc\n42\n"));
        assert!(note.contains("\n\n\u{2014} portcullis-audit/abc "));
        assert_eq!(Checkpoint::verify_note(&note, Some("portcullis-audit/abc"), &key(1).verifying_key()).unwrap(), cp);
        // Another key, another origin, an edited size: all refused.
        assert!(matches!(
            Checkpoint::verify_note(&note, None, &key(2).verifying_key()),
            Err(CheckpointError::NotSignedByKey { .. })
        ));
        assert!(matches!(
            Checkpoint::verify_note(&note, Some("other"), &key(1).verifying_key()),
            Err(CheckpointError::WrongOrigin { .. })
        ));
        let edited = note.replacen("\n42\n", "\n41\n", 1);
        assert_eq!(Checkpoint::verify_note(&edited, None, &key(1).verifying_key()), Err(CheckpointError::BadSignature));
    }

    #[test]
    fn malformed_notes() {
        let good = Checkpoint { origin: "o".into(), size: 1, root: [0u8; 32] }.sign(&key(1));
        for bad in [
            good.replacen("\n1\n", "\n01\n", 1),
            good.replacen("o\n", "o x\n", 1),
            good.replace("\n\n", "\n"),
            good.replacen("\u{2014}", "-", 1),
            good.trim_end().to_string(),
            format!("o\x1b\n{}", &good[2..]),
        ] {
            assert!(Checkpoint::verify_note(&bad, None, &key(1).verifying_key()).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn verifier_key_format() {
        let vk = key(1).verifying_key();
        let s = verifier_key("example.com/log", &vk);
        let parts: Vec<&str> = s.split('+').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1].len(), 8);
    }
}
