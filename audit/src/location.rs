//! Where the log and key live by default.
//!
//! root writes the system log (`/var/log/portcullis`, key in
//! `/var/lib/portcullis`); anyone else writes under the XDG base
//! directories, which are private to the user.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocationError {
    #[error("cannot find a default {what}: neither ${xdg} nor $HOME is set to an absolute path; pass --log/--key")]
    NoHome { what: &'static str, xdg: &'static str },
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn xdg(var: &'static str, fallback: &str, what: &'static str) -> Result<PathBuf, LocationError> {
    // The XDG spec says relative values are invalid and must be ignored.
    if let Some(v) = std::env::var_os(var).map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Ok(v);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .map(|h| h.join(fallback))
        .ok_or(LocationError::NoHome { what, xdg: var })
}

/// `/var/log/portcullis/audit.log` for root, else `$XDG_STATE_HOME/portcullis/audit.log`
/// (`~/.local/state/portcullis/audit.log`).
pub fn default_log_path() -> Result<PathBuf, LocationError> {
    if is_root() {
        return Ok(PathBuf::from("/var/log/portcullis/audit.log"));
    }
    Ok(xdg("XDG_STATE_HOME", ".local/state", "audit log path")?.join("portcullis/audit.log"))
}

/// `/var/lib/portcullis/audit.key` for root, else `$XDG_DATA_HOME/portcullis/audit.key`
/// (`~/.local/share/portcullis/audit.key`).
pub fn default_key_path() -> Result<PathBuf, LocationError> {
    if is_root() {
        return Ok(PathBuf::from("/var/lib/portcullis/audit.key"));
    }
    Ok(xdg("XDG_DATA_HOME", ".local/share", "audit key path")?.join("portcullis/audit.key"))
}

/// `<log>.checkpoint`: where writers put the latest checkpoint.
pub fn checkpoint_path(log: &std::path::Path) -> PathBuf {
    crate::storage::sibling(log, ".checkpoint")
}
