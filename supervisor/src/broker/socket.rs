//! Where the broker listens: `$XDG_RUNTIME_DIR/portcullis/broker.sock`.
//!
//! The directory is the access control: created 0700, and before anything
//! is bound or connected in it, checked to be a real directory (not a
//! symlink), owned by us, mode 0700. A directory someone else prepared in
//! `/tmp` could hold a fake broker that approves everything; we refuse it.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The socket's file name inside the directory.
pub const SOCKET: &str = "broker.sock";
/// Held (flock) by the running broker: two brokers never serve one directory.
pub const LOCK: &str = "broker.lock";
/// Where a detached broker writes what it would have said on stderr.
pub const LOG: &str = "broker.log";

/// Why the broker directory cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DirError {
    #[error("PORTCULLIS_BROKER_DIR={0:?} is not an absolute path")]
    RelativeOverride(String),
    #[error("cannot create the broker directory {0}: {1}")]
    Create(PathBuf, std::io::Error),
    #[error("cannot inspect the broker directory {0}: {1}")]
    Inspect(PathBuf, std::io::Error),
    #[error(
        "the broker directory {path} is unsafe: {why}; remove it (or set PORTCULLIS_BROKER_DIR to a private directory)"
    )]
    Unsafe { path: PathBuf, why: String },
}

/// The directory: `PORTCULLIS_BROKER_DIR` if set; else
/// `$XDG_RUNTIME_DIR/portcullis`; else `/run/user/UID/portcullis` when that
/// runtime directory exists and is ours; else `/tmp/portcullis-UID`.
pub fn dir() -> Result<PathBuf, DirError> {
    if let Some(d) = std::env::var_os("PORTCULLIS_BROKER_DIR") {
        let p = PathBuf::from(&d);
        if !p.is_absolute() {
            return Err(DirError::RelativeOverride(d.to_string_lossy().into_owned()));
        }
        return Ok(p);
    }
    if let Some(x) = std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Ok(x.join("portcullis"));
    }
    let uid = nix::unistd::geteuid().as_raw();
    let run = PathBuf::from(format!("/run/user/{uid}"));
    if std::fs::symlink_metadata(&run).is_ok_and(|m| m.is_dir() && m.uid() == uid) {
        return Ok(run.join("portcullis"));
    }
    Ok(PathBuf::from(format!("/tmp/portcullis-{uid}")))
}

pub fn socket_path(dir: &Path) -> PathBuf {
    dir.join(SOCKET)
}

/// Creates the directory 0700 if it does not exist, then [`verify`]s it.
/// An existing directory with other permissions is refused, not fixed:
/// we cannot know who else already has a handle into it.
pub fn prepare(dir: &Path) -> Result<(), DirError> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {
            // The umask may have taken bits away; we made it, so we may set them.
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| DirError::Create(dir.to_path_buf(), e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(DirError::Create(dir.to_path_buf(), e)),
    }
    verify(dir)
}

/// A real directory, owned by our effective uid, mode exactly 0700.
pub fn verify(dir: &Path) -> Result<(), DirError> {
    let m = std::fs::symlink_metadata(dir).map_err(|e| DirError::Inspect(dir.to_path_buf(), e))?;
    let unsafe_dir = |why: String| Err(DirError::Unsafe { path: dir.to_path_buf(), why });
    if m.file_type().is_symlink() {
        return unsafe_dir("it is a symbolic link".into());
    }
    if !m.is_dir() {
        return unsafe_dir("it is not a directory".into());
    }
    let uid = nix::unistd::geteuid().as_raw();
    if m.uid() != uid {
        return unsafe_dir(format!("it is owned by uid {}, not by us ({uid})", m.uid()));
    }
    let mode = m.mode() & 0o7777;
    if mode != 0o700 {
        return unsafe_dir(format!("its mode is {mode:04o}, not 0700"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("pc-broker-dir-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn prepare_creates_0700_and_refuses_what_it_did_not_make_safe() {
        let root = scratch("prep");
        let d = root.join("portcullis");
        prepare(&d).unwrap();
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o777, 0o700);
        prepare(&d).unwrap();

        let open = root.join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        let e = prepare(&open).unwrap_err().to_string();
        assert!(e.contains("0755") && e.contains("remove it"), "{e}");

        let link = root.join("link");
        std::os::unix::fs::symlink(&d, &link).unwrap();
        assert!(prepare(&link).unwrap_err().to_string().contains("symbolic link"));

        let file = root.join("file");
        std::fs::write(&file, "").unwrap();
        assert!(verify(&file).unwrap_err().to_string().contains("not a directory"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
