//! Helpers shared by the audit crate's integration tests.

use ed25519_dalek::SigningKey;
use std::path::PathBuf;

/// A private temp directory removed on drop (no dev-dependency needed).
pub struct Tmp(pub PathBuf);

impl Tmp {
    pub fn new(tag: &str) -> Tmp {
        let mut b = [0u8; 6];
        getrandom::fill(&mut b).unwrap();
        let name: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let dir = std::env::temp_dir().join(format!("audit-test-{tag}-{name}"));
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
        Tmp(dir)
    }
    pub fn log(&self) -> PathBuf {
        self.0.join("audit.log")
    }
    pub fn cp(&self) -> PathBuf {
        self.0.join("audit.log.checkpoint")
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fixed key, so tests can tell keys apart by their byte.
pub fn test_key(b: u8) -> SigningKey {
    SigningKey::from_bytes(&[b; 32])
}
