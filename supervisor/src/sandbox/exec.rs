//! The command allowlist: names and paths resolved to files at launch, plus
//! the interpreters the kernel opens for them (ELF `PT_INTERP`, `#!` lines).
//! Landlock then grants EXECUTE on exactly these files, so the command and
//! everything it starts can execve nothing else.
//!
//! Known limit: the ELF interpreter (ld.so) must be executable for any
//! dynamic binary to start, and `ld.so /path/to/prog` runs any *readable*
//! dynamic ELF without execve of that file (mmap needs only read access). What
//! runs that way is still inside the same Landlock, seccomp and namespace
//! floor; gating execve of ld.so by argv is the approval gate's job.

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::Serialize;

use policy::plan::CommandSpec;
use policy::Origin;

use crate::exit::{self, Failure};

#[derive(Clone, Debug, Serialize)]
pub struct Resolved {
    /// What the profile or flag said (`node`), or the interpreter's path.
    pub spec: String,
    /// The file (symlinks resolved).
    pub path: PathBuf,
    /// Set for interpreters: the allowed file that needs this one.
    pub implied_by: Option<PathBuf>,
    pub at: Origin,
    #[serde(skip)]
    pub id: (u64, u64),
}

/// Finds `name` on `path_var` (a colon-separated PATH), like execvp does,
/// but passes over matches in directories the sandbox may write: a binary
/// planted there (by an earlier run, or a package) would otherwise become
/// the allowlisted command (THREATS #40). Each match passed over adds a
/// note to `notes`. Name a command by its path to allow it from there.
pub fn which(name: &str, path_var: &OsStr, writable: &Writable, notes: &mut Vec<String>) -> Option<PathBuf> {
    for p in std::env::split_paths(path_var).filter(|d| d.is_absolute()).map(|d| d.join(name)) {
        if !is_executable(&p) {
            continue;
        }
        match writable.reaching(&p) {
            Some(rule) => notes.push(format!(
                "`{name}` at {} on PATH passed over: the sandbox may write there ({rule}); name it by its path to allow it",
                p.display()
            )),
            None => return Some(p),
        }
    }
    None
}

/// The directories the plan lets the sandbox write, looked up (one stat
/// per write rule) only when a name is first found on PATH.
pub struct Writable<'a> {
    plan: &'a policy::Plan,
    rules: std::cell::OnceCell<crate::evidence::RuleInodes<'a>>,
}

impl<'a> Writable<'a> {
    pub fn of(plan: &'a policy::Plan) -> Writable<'a> {
        Writable { plan, rules: std::cell::OnceCell::new() }
    }

    /// The write rule (path and where it was set) that reaches `file`: the
    /// file itself or a directory above it, after following symlinks (a
    /// link in /usr/local/bin may point into the workspace).
    fn reaching(&self, file: &Path) -> Option<String> {
        let rules = self.rules.get_or_init(|| crate::evidence::RuleInodes::of_where(self.plan, |r| r.write));
        let real = std::fs::canonicalize(file).unwrap_or_else(|_| file.to_path_buf());
        rules.reaching(&real, |_| true).map(|r| format!("rule for {} at {}", r.path, r.at))
    }
}

fn is_executable(p: &Path) -> bool {
    std::fs::metadata(p).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

fn file_id(p: &Path) -> std::io::Result<(u64, u64)> {
    let m = std::fs::metadata(p)?;
    Ok((m.dev(), m.ino()))
}

/// The interpreter the kernel opens to run `path`: `#!` line or ELF PT_INTERP.
fn interpreter(path: &Path) -> Option<PathBuf> {
    let mut f = std::fs::File::open(path).ok()?;
    let mut head = vec![0u8; 4096];
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(_) => return None,
        }
    }
    head.truncate(n);
    if let Some(rest) = head.strip_prefix(b"#!") {
        let line = rest.split(|b| *b == b'\n').next()?;
        let line = std::str::from_utf8(line).ok()?.trim();
        let prog = line.split_whitespace().next()?;
        return Some(PathBuf::from(prog));
    }
    elf_interp(&head, &mut f)
}

/// PT_INTERP of a little-endian ELF64 file.
fn elf_interp(head: &[u8], f: &mut std::fs::File) -> Option<PathBuf> {
    use std::io::{Seek, SeekFrom};
    if head.len() < 64 || &head[..4] != b"\x7fELF" || head[4] != 2 || head[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes([head[o], head[o + 1]]);
    let phoff = u64::from_le_bytes(head[0x20..0x28].try_into().ok()?);
    let phentsize = u16_at(0x36) as u64;
    let phnum = u16_at(0x38) as u64;
    if phentsize < 56 || phnum > 512 {
        return None;
    }
    let mut table = vec![0u8; (phentsize * phnum) as usize];
    f.seek(SeekFrom::Start(phoff)).ok()?;
    f.read_exact(&mut table).ok()?;
    for ph in table.chunks(phentsize as usize) {
        let p_type = u32::from_le_bytes(ph[0..4].try_into().ok()?);
        if p_type == 3 {
            let off = u64::from_le_bytes(ph[8..16].try_into().ok()?);
            let size = u64::from_le_bytes(ph[32..40].try_into().ok()?);
            if size == 0 || size > 4096 {
                return None;
            }
            let mut buf = vec![0u8; size as usize];
            f.seek(SeekFrom::Start(off)).ok()?;
            f.read_exact(&mut buf).ok()?;
            let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
            return Some(PathBuf::from(std::str::from_utf8(&buf[..end]).ok()?));
        }
    }
    None
}

/// Resolves every allowed command and adds the interpreters they need.
/// `notes`: PATH matches passed over (see [`which`]).
pub fn resolve_all(
    specs: &[CommandSpec],
    path_var: &OsStr,
    writable: &Writable,
    skipped: &mut Vec<String>,
    notes: &mut Vec<String>,
) -> Result<Vec<Resolved>, Failure> {
    let mut out: Vec<Resolved> = Vec::new();
    for spec in specs {
        let noted = notes.len();
        let found = if spec.spec.contains('/') {
            let p = PathBuf::from(&spec.spec);
            if is_executable(&p) {
                Some(p)
            } else if p.is_dir() {
                // A directory in the exec list: everything beneath is executable.
                Some(p)
            } else {
                None
            }
        } else {
            which(&spec.spec, path_var, writable, notes)
        };
        let Some(found) = found else {
            if spec.optional {
                skipped.push(format!("command `{}` ({}): not found", spec.spec, spec.at));
                continue;
            }
            let passed_over: String = notes[noted..].iter().map(|n| format!("; {n}")).collect();
            return Err(Failure::setup(format!(
                "{}: command `{}` not found (PATH searched for names){passed_over}",
                spec.at, spec.spec
            )));
        };
        let path = std::fs::canonicalize(&found)
            .map_err(|e| Failure::setup(format!("{}: command `{}`: {e}", spec.at, spec.spec)))?;
        push(
            &mut out,
            Resolved {
                spec: spec.spec.clone(),
                id: file_id(&path).unwrap_or_default(),
                path,
                implied_by: None,
                at: spec.at.clone(),
            },
        );
    }
    // Interpreters, transitively (a script's interpreter may itself be dynamic).
    let mut i = 0;
    while i < out.len() {
        if out[i].path.is_file() {
            if let Some(interp) = interpreter(&out[i].path) {
                if let Ok(path) = std::fs::canonicalize(&interp) {
                    let r = Resolved {
                        spec: interp.display().to_string(),
                        id: file_id(&path).unwrap_or_default(),
                        path,
                        implied_by: Some(out[i].path.clone()),
                        at: out[i].at.clone(),
                    };
                    push(&mut out, r);
                }
            }
        }
        i += 1;
    }
    Ok(out)
}

fn push(out: &mut Vec<Resolved>, r: Resolved) {
    if !out.iter().any(|o| o.path == r.path) {
        out.push(r);
    }
}

/// Resolves the command to run, and checks it is allowed. A PATH match
/// passed over (see [`which`]) is printed as a note, unless `noted` (the
/// launch's notices, printed anyway) has it already.
pub fn resolve_command(
    argv0: &OsStr,
    path_var: &OsStr,
    allowed: &[Resolved],
    plan: &policy::Plan,
    noted: &[String],
) -> Result<PathBuf, Failure> {
    let profile = &plan.profile;
    let name = argv0.to_string_lossy();
    let found = if name.contains('/') {
        let p = PathBuf::from(argv0);
        if p.exists() {
            Some(p)
        } else {
            None
        }
    } else {
        let mut notes = Vec::new();
        let found = which(&name, path_var, &Writable::of(plan), &mut notes);
        for n in notes.iter().filter(|n| !noted.contains(n)) {
            eprintln!("portcullis: note: {}", audit::display_safe(n));
        }
        found
    };
    let Some(found) = found else {
        return Err(Failure { code: exit::NOT_FOUND, message: format!("{name}: command not found") });
    };
    let canon = std::fs::canonicalize(&found).unwrap_or_else(|_| found.clone());
    let id = file_id(&canon).ok();
    let ok = allowed
        .iter()
        .any(|a| a.implied_by.is_none() && (Some(a.id) == id || canon.starts_with(&a.path) && a.path.is_dir()));
    if !ok {
        return Err(Failure {
            code: exit::NOT_EXECUTABLE,
            message: format!(
                "{name} ({}) is not in the exec allowlist of profile `{profile}`; allow it with --exec {} or in the profile's [commands] allow",
                canon.display(),
                canon.display()
            ),
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_elf_interpreter_of_a_dynamic_binary() {
        let sh = std::fs::canonicalize("/bin/sh").unwrap();
        let interp = interpreter(&sh).expect("/bin/sh is dynamic here");
        assert!(interp.to_string_lossy().contains("ld-linux"), "{interp:?}");
    }

    #[test]
    fn finds_shebang_interpreter() {
        let d = std::env::temp_dir().join(format!("pc-exec-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let s = d.join("script");
        std::fs::write(&s, "#!/bin/sh -e\necho hi\n").unwrap();
        let found = interpreter(&s);
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(found, Some(PathBuf::from("/bin/sh")));
    }
}
