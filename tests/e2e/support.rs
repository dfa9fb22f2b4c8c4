//! Test harness: a throwaway workspace, the real `portcullis` binary, and the
//! probe that reports what the kernel answered inside the sandbox.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

pub const PORTCULLIS: &str = env!("CARGO_BIN_EXE_portcullis");
pub const PROBE: &str = env!("CARGO_BIN_EXE_portcullis-probe");
/// The unprivileged user the supervisor also runs as (nobody).
pub const NOBODY: u32 = 65534;

/// A test that cannot run here says why; under PORTCULLIS_STRICT_TESTS=1 that is a failure.
pub fn skip(reason: &str) {
    if std::env::var("PORTCULLIS_STRICT_TESTS").is_ok_and(|v| v == "1") {
        panic!("test cannot run here and PORTCULLIS_STRICT_TESTS=1: {reason}");
    }
    eprintln!("SKIP: {reason}");
}

pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// Who runs `portcullis`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum As {
    /// The test's own user (root here).
    Caller,
    /// nobody, through setpriv: proves no privilege is needed.
    Nobody,
}

pub struct Sandbox {
    pub root: PathBuf,
    /// The workspace: read+write in strict.
    pub ws: PathBuf,
    /// Outside every rule; files here are DAC-writable by the runner, so a
    /// refusal can only come from the sandbox.
    pub outside: PathBuf,
    pub home: PathBuf,
    pub who: As,
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn from(o: Output) -> Run {
        use std::os::unix::process::ExitStatusExt;
        let code = o.status.code().unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0));
        Run {
            code,
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    /// The probe's one-line verdict.
    pub fn verdict(&self) -> &str {
        self.stdout.lines().last().unwrap_or("").trim()
    }

    #[track_caller]
    pub fn expect(&self, verdict: &str) -> &Self {
        assert_eq!(self.verdict(), verdict, "code {}\nstdout:\n{}\nstderr:\n{}", self.code, self.stdout, self.stderr);
        self
    }
}

impl Sandbox {
    pub fn new(tag: &str, who: As) -> Sandbox {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("pc-e2e-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let ws = root.join("ws");
        let outside = root.join("outside");
        let home = root.join("home");
        for d in [&root, &ws, &outside, &home] {
            std::fs::create_dir_all(d).unwrap();
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        std::fs::write(ws.join("file.txt"), "inside\n").unwrap();
        std::fs::write(outside.join("secret.txt"), "outside\n").unwrap();
        for f in [ws.join("file.txt"), outside.join("secret.txt")] {
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        }
        if who == As::Nobody {
            for p in [&root, &ws, &outside, &home, &ws.join("file.txt"), &outside.join("secret.txt")] {
                std::os::unix::fs::chown(p, Some(NOBODY), Some(NOBODY)).unwrap();
            }
        }
        Sandbox { root, ws, outside, home, who }
    }

    /// A sandbox for the unprivileged run, or None (with a skip) when this
    /// machine cannot switch users.
    pub fn nobody(tag: &str) -> Option<Sandbox> {
        if !is_root() {
            skip("the unprivileged tier needs root to switch to nobody with setpriv");
            return None;
        }
        if Command::new("setpriv").arg("--version").output().is_err() {
            skip("setpriv (util-linux) is not installed");
            return None;
        }
        Some(Sandbox::new(tag, As::Nobody))
    }

    /// `portcullis ARGS...` as this sandbox's user, in the workspace.
    pub fn portcullis(&self, args: &[&str]) -> Command {
        let mut c = match self.who {
            As::Caller => Command::new(PORTCULLIS),
            As::Nobody => {
                let mut c = Command::new("setpriv");
                c.args([
                    &format!("--reuid={NOBODY}"),
                    &format!("--regid={NOBODY}"),
                    "--clear-groups",
                    "--",
                    PORTCULLIS,
                ]);
                c
            }
        };
        c.args(args)
            .current_dir(&self.ws)
            .env("HOME", &self.home)
            .env_remove("XDG_RUNTIME_DIR")
            .env_remove("XDG_CONFIG_HOME");
        // Each sandbox keeps its own audit log: tests run as root must not
        // write the machine's /var/log/portcullis, nor queue on its lock.
        let audit = self.root.join("state");
        c.env("PORTCULLIS_AUDIT_LOG", audit.join("audit.log")).env("PORTCULLIS_AUDIT_KEY", audit.join("audit.key"));
        c.stdin(Stdio::null());
        c
    }

    /// `portcullis run FLAGS... --exec PROBE -- PROBE ARGS...`
    pub fn probe(&self, flags: &[&str], args: &[&str]) -> Run {
        let mut all: Vec<&str> = vec!["run"];
        all.extend_from_slice(flags);
        all.extend_from_slice(&["--exec", PROBE, "--", PROBE]);
        all.extend_from_slice(args);
        Run::from(self.portcullis(&all).output().unwrap())
    }

    pub fn run(&self, args: &[&str]) -> Run {
        Run::from(self.portcullis(args).output().unwrap())
    }

    pub fn path(&self, p: &Path) -> String {
        p.to_str().unwrap().to_string()
    }

    /// Writes a profile file in the sandbox root and returns its path.
    pub fn profile(&self, name: &str, text: &str) -> String {
        let p = self.root.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        self.path(&p)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        // A run's finisher writes its last records and checkpoint after the
        // run has exited, holding its log's lock: wait for every lock in
        // here (at most 5 s), or the finisher writes into a tree being
        // removed (it failed with "rename into place", and recreated the
        // state directory, left behind in /tmp).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        for lock in lock_files(&self.root) {
            let Ok(f) = std::fs::File::open(&lock) else { continue };
            while f.try_lock().is_err() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// The audit logs' lock files (`*.lock`) under `dir`, at any depth.
fn lock_files(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        match entry.file_type() {
            Ok(t) if t.is_dir() => found.extend(lock_files(&path)),
            Ok(t) if t.is_file() && path.extension().is_some_and(|e| e == "lock") => found.push(path),
            _ => {}
        }
    }
    found
}

/// Defines `mod NAME { fn caller(); fn nobody(); }`: the same enforcement
/// test with the supervisor run by the caller (root) and by nobody.
#[macro_export]
macro_rules! both {
    ($name:ident, |$sb:ident| $body:block) => {
        mod $name {
            #[allow(unused_imports)]
            use super::*;
            fn body($sb: &Sandbox) $body
            #[test]
            fn caller() {
                body(&Sandbox::new(stringify!($name), As::Caller));
            }
            #[test]
            fn nobody() {
                if let Some(sb) = Sandbox::nobody(stringify!($name)) {
                    body(&sb);
                }
            }
        }
    };
}
