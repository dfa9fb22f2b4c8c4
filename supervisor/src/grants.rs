//! The grants file: "always allow" / "always deny" answers, per profile,
//! under `$XDG_STATE_HOME/portcullis/grants.json` (`/var/lib/portcullis` for
//! root; `PORTCULLIS_GRANTS` overrides). Read at launch, updated under an
//! exclusive lock and replaced atomically. A file that does not parse is an
//! error, never silently empty: a lost "always deny" would weaken the policy.

use std::fs::OpenOptions;
use std::io::Read;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use policy::ask::{Grant, GrantFile, GRANT_FILE_VERSION};

use crate::exit::Failure;

pub fn path() -> Result<PathBuf, Failure> {
    if let Some(p) = std::env::var_os("PORTCULLIS_GRANTS").map(PathBuf::from).filter(|p| p.is_absolute()) {
        return Ok(p);
    }
    if nix::unistd::geteuid().is_root() {
        return Ok(PathBuf::from("/var/lib/portcullis/grants.json"));
    }
    let state = std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .filter(|p| p.is_absolute())
        .ok_or_else(|| Failure::setup("cannot find the grants file: neither $XDG_STATE_HOME nor $HOME is set"))?;
    Ok(state.join("portcullis/grants.json"))
}

fn parse(path: &Path, text: &str) -> Result<GrantFile, Failure> {
    if text.trim().is_empty() {
        return Ok(GrantFile { version: GRANT_FILE_VERSION, grants: vec![] });
    }
    let f: GrantFile = serde_json::from_str(text)
        .map_err(|e| Failure::setup(format!("{}:{}: grants file does not parse: {e}", path.display(), e.line())))?;
    if f.version != GRANT_FILE_VERSION {
        return Err(Failure::setup(format!(
            "{}: grants file version {} is not {GRANT_FILE_VERSION}",
            path.display(),
            f.version
        )));
    }
    Ok(f)
}

/// The grants file, or an empty one when it does not exist yet.
pub fn load(path: &Path) -> Result<GrantFile, Failure> {
    match std::fs::read_to_string(path) {
        Ok(t) => parse(path, &t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Ok(GrantFile { version: GRANT_FILE_VERSION, grants: vec![] })
        }
        // Not ours to read (HOME points at another user's home): this user
        // saved nothing there, so no saved answer applies. Only asking more.
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            eprintln!(
                "portcullis: note: the grants file {} is not readable by this user: no saved answers apply, and `always` answers cannot be saved (set PORTCULLIS_GRANTS or XDG_STATE_HOME)",
                path.display()
            );
            Ok(GrantFile { version: GRANT_FILE_VERSION, grants: vec![] })
        }
        Err(e) => Err(Failure::setup(format!("{}: {e}", path.display()))),
    }
}

/// Applies `change` to the file under an exclusive lock (on `<file>.lock`)
/// and replaces it atomically. Returns what `change` returned.
pub fn update<T>(path: &Path, change: impl FnOnce(&mut GrantFile) -> T) -> Result<T, Failure> {
    let fail = |e: &dyn std::fmt::Display| Failure::setup(format!("{}: {e}", path.display()));
    if let Some(dir) = path.parent() {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(|e| fail(&e))?;
    }
    let lock_path = audit::storage::sibling(path, ".lock");
    let lock = OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path).map_err(|e| fail(&e))?;
    let _held = Flock::lock(lock, FlockArg::LockExclusive).map_err(|(_, e)| fail(&e))?;
    let mut text = String::new();
    match std::fs::File::open(path) {
        Ok(mut f) => {
            f.read_to_string(&mut text).map_err(|e| fail(&e))?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(&e)),
    }
    let mut file = parse(path, &text)?;
    let out = change(&mut file);
    let mut data = serde_json::to_vec_pretty(&file).map_err(|e| fail(&e))?;
    data.push(b'\n');
    audit::storage::write_replace(path, &data, 0o600).map_err(|e| fail(&e))?;
    Ok(out)
}

/// Persists an "always" answer, replacing any earlier grant for the same
/// profile, access and target.
pub fn persist(path: &Path, grant: Grant) -> Result<(), Failure> {
    update(path, |f| {
        f.grants.retain(|g| !(g.profile == grant.profile && g.access == grant.access && g.target == grant.target));
        f.grants.push(grant);
    })
}

/// A fresh grant id: 8 hex digits.
pub fn new_id() -> String {
    random_hex(4).unwrap_or_else(|_| "00000000".into())
}

/// `bytes` random bytes from /dev/urandom, as lowercase hex.
pub(crate) fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut b = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut b)?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}
