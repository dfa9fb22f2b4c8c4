//! The log's ed25519 signing key: generation on first use, loading, the
//! public-key text form and the fingerprint.
//!
//! The key file must stay out of the sandbox's reach (THREATS.md L4): it is
//! created 0600 in a 0700 directory, and a group- or world-readable key file
//! is refused, as ssh does.

use crate::storage::{self, StorageError};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// First line of a key file.
const KEY_FILE_MAGIC: &str = "portcullis-audit-key v1 ed25519";

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("{}: key file is readable or writable by group or others (mode {mode:o}); chmod 600 it, and treat the key as possibly leaked", path.display())]
    Permissions { path: PathBuf, mode: u32 },
    #[error("{}: not a Portcullis audit key file ({why})", path.display())]
    Format { path: PathBuf, why: &'static str },
    #[error("no randomness from the kernel for a new key: {0}")]
    Random(String),
    #[error("public key {0}")]
    PublicKey(&'static str),
}

/// A fresh key from the kernel's CSPRNG.
pub fn generate() -> Result<SigningKey, KeyError> {
    let mut seed = Zeroizing::new([0u8; 32]);
    getrandom::fill(seed.as_mut()).map_err(|e| KeyError::Random(e.to_string()))?;
    Ok(SigningKey::from_bytes(&seed))
}

/// Loads the key at `path`, or generates and stores one if there is none.
/// Returns the key and whether it was created now.
pub fn load_or_create(path: &Path) -> Result<(SigningKey, bool), KeyError> {
    match load(path) {
        Ok(k) => Ok((k, false)),
        Err(KeyError::Storage(StorageError::Io { source, .. })) if source.kind() == std::io::ErrorKind::NotFound => {
            let key = generate()?;
            match store_new(path, &key) {
                Ok(()) => Ok((key, true)),
                // Another process created it between our load and store: use theirs.
                Err(KeyError::Storage(StorageError::Io { source, .. }))
                    if source.kind() == std::io::ErrorKind::AlreadyExists =>
                {
                    Ok((load(path)?, false))
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

/// Loads the key file at `path` (never through a symlink; mode must be 0600 or stricter).
pub fn load(path: &Path) -> Result<SigningKey, KeyError> {
    let mut file = storage::open_read(path)?;
    let mode = storage::mode_of(&file, path)?;
    if mode & 0o077 != 0 {
        return Err(KeyError::Permissions { path: path.to_path_buf(), mode });
    }
    let mut text = Zeroizing::new(String::new());
    file.by_ref().take(4096).read_to_string(&mut text).map_err(|e| StorageError::io("read key file", path, e))?;
    let format = |why| KeyError::Format { path: path.to_path_buf(), why };
    let mut lines = text.lines();
    if lines.next() != Some(KEY_FILE_MAGIC) {
        return Err(format("first line is not the key-file header"));
    }
    let b64 = lines.next().ok_or_else(|| format("no key line"))?;
    let seed = Zeroizing::new(B64.decode(b64.trim()).map_err(|_| format("key line is not base64"))?);
    let seed: &[u8; 32] = seed.as_slice().try_into().map_err(|_| format("key is not 32 bytes"))?;
    Ok(SigningKey::from_bytes(seed))
}

/// Stores `key` at `path`, which must not exist yet. The content is written
/// to an O_EXCL temp file, fsynced, then published with link(2), which also
/// fails if the name exists: a reader never sees a half-written key, and two
/// processes creating a key at once cannot overwrite each other.
/// Also writes `<path>.pub` (the public key, base64, mode 0644).
pub fn store_new(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let dir = storage::parent_dir(path);
    storage::ensure_private_dir(&dir)?;
    let text = Zeroizing::new(format!("{KEY_FILE_MAGIC}\n{}\n", B64.encode(key.to_bytes())));
    let tmp = storage::sibling(path, &format!(".new-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    storage::create_exclusive(&tmp, text.as_bytes(), 0o600)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    linked.map_err(|e| StorageError::io("publish key file", path, e))?;
    storage::sync_dir(&dir)?;
    write_public(path, &key.verifying_key())?;
    Ok(())
}

/// Replaces the key file at `path` with `key` atomically (used by rotation).
pub fn replace(path: &Path, key: &SigningKey) -> Result<(), KeyError> {
    let text = Zeroizing::new(format!("{KEY_FILE_MAGIC}\n{}\n", B64.encode(key.to_bytes())));
    storage::write_atomic(path, text.as_bytes(), 0o600)?;
    write_public(path, &key.verifying_key())
}

/// Writes `<key path>.pub`: the base64 public key and its fingerprint, for
/// auditors who must not read the secret key.
fn write_public(path: &Path, vk: &VerifyingKey) -> Result<(), KeyError> {
    let text = format!("{}\n", public_key_b64(vk));
    storage::write_atomic(&storage::sibling(path, ".pub"), text.as_bytes(), 0o644)?;
    Ok(())
}

/// The path of the public-key file written next to a key file.
pub fn public_path(key_path: &Path) -> PathBuf {
    storage::sibling(key_path, ".pub")
}

/// First 16 hex digits of SHA-256 over the 32 public-key bytes.
pub fn fingerprint(vk: &VerifyingKey) -> String {
    let d = Sha256::digest(vk.as_bytes());
    crate::merkle::to_hex(&d.into())[..16].to_string()
}

/// Standard base64 (with padding) of the 32 public-key bytes.
pub fn public_key_b64(vk: &VerifyingKey) -> String {
    B64.encode(vk.as_bytes())
}

/// Parses a base64 public key and refuses weak (small-order) keys, for which
/// signatures prove nothing (THREATS.md L10).
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, KeyError> {
    let bytes = B64.decode(s.trim()).map_err(|_| KeyError::PublicKey("is not base64"))?;
    let bytes: [u8; 32] = bytes.as_slice().try_into().map_err(|_| KeyError::PublicKey("is not 32 bytes"))?;
    let vk = VerifyingKey::from_bytes(&bytes).map_err(|_| KeyError::PublicKey("is not a point on the curve"))?;
    if vk.is_weak() {
        return Err(KeyError::PublicKey("is a weak (small-order) key"));
    }
    // Only the canonical encoding of a point is accepted, so one key has one text form.
    if vk.to_bytes() != bytes {
        return Err(KeyError::PublicKey("is not canonically encoded"));
    }
    Ok(vk)
}

/// Reads a public key given as base64 text or as a path to a file whose first
/// line is base64 (a `.pub` file written beside the key).
pub fn read_public_key(arg: &str) -> Result<VerifyingKey, KeyError> {
    if let Ok(vk) = parse_public_key(arg) {
        return Ok(vk);
    }
    let path = Path::new(arg);
    let mut text = String::new();
    storage::open_read(path)?
        .take(4096)
        .read_to_string(&mut text)
        .map_err(|e| StorageError::io("read public key", path, e))?;
    parse_public_key(text.lines().next().unwrap_or(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_keys_are_refused() {
        // The identity point (small order 1) and a point of order 8.
        let identity = {
            let mut b = [0u8; 32];
            b[0] = 1;
            b
        };
        let order8: [u8; 32] = [
            0xc7, 0x17, 0x6a, 0x70, 0x3d, 0x4d, 0xd8, 0x4f, 0xba, 0x3c, 0x0b, 0x76, 0x0d, 0x10, 0x67, 0x0f, 0x2a, 0x20,
            0x53, 0xfa, 0x2c, 0x39, 0xcc, 0xc6, 0x4e, 0xc7, 0xfd, 0x77, 0x92, 0xac, 0x03, 0x7a,
        ];
        for k in [identity, order8] {
            let err = parse_public_key(&B64.encode(k)).unwrap_err();
            assert!(err.to_string().contains("weak"), "{err}");
        }
        assert!(parse_public_key("not base64!").is_err());
        assert!(parse_public_key(&B64.encode([0u8; 31])).is_err());
    }

    #[test]
    fn fingerprint_and_text_form() {
        let k = SigningKey::from_bytes(&[7u8; 32]);
        let vk = k.verifying_key();
        assert_eq!(fingerprint(&vk).len(), 16);
        assert_eq!(parse_public_key(&public_key_b64(&vk)).unwrap(), vk);
    }
}
