//! `portcullis doctor`: what this kernel and this user can enforce.

use std::fmt::Write;

use landlock::{Access, AccessFs, ABI};
use serde::Serialize;

use super::run::Session;
use super::SandboxArgs;
use crate::exit::Failure;
use crate::kernel::Features;
use crate::sandbox::report::Enforcement;

#[derive(Serialize)]
struct Report<'a> {
    kernel: &'a Features,
    landlock_fs_rights: Vec<String>,
    landlock_network: bool,
    landlock_scopes: bool,
    pids_limit: String,
    memory_limit: String,
    denials_visible: String,
    /// Whether the user's git takes any directory holding HEAD, objects/
    /// and refs/ for a repository (docs/GATE.md, "Limits").
    git_bare_repositories: String,
    profile: Option<ProfileReport<'a>>,
}

/// What the user's git does with a bare repository it was not pointed at.
fn git_bare_repositories() -> String {
    let out = std::process::Command::new("git")
        .args(["config", "--get", "safe.bareRepository"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output();
    match out {
        Err(_) => "git not found".into(),
        Ok(o) if String::from_utf8_lossy(&o.stdout).trim().eq_ignore_ascii_case("explicit") => {
            "refused where git finds them, but in a .git directory (safe.bareRepository=explicit)".into()
        }
        Ok(_) => "found anywhere: a directory a sandbox wrote (HEAD, objects/, refs/, config) can run its config when you run git there; set `git config --global safe.bareRepository explicit`".into(),
    }
}

#[derive(Serialize)]
struct ProfileReport<'a> {
    name: String,
    /// Whether `run` would start without --best-effort.
    runs_without_best_effort: bool,
    enforcement: &'a Enforcement,
}

fn rights(abi: i32) -> Vec<String> {
    if abi < 1 {
        return Vec::new();
    }
    AccessFs::from_all(ABI::from(abi)).iter().map(|r| format!("{r:?}")).collect()
}

pub fn doctor(json: bool, profile: Option<&str>) -> Result<i32, Failure> {
    let mut features = Features::probe_all();
    // The launch path guesses from sysctls; here there is time to try for real.
    features.user_namespaces = crate::sys::probe::can_unshare_user_pid();
    let abi = features.landlock_abi_used;
    let pids_limit = match &features.pids_cgroup {
        _ if features.user_namespaces && features.euid != 0 => {
            "RLIMIT_NPROC inside the sandbox's own user namespace (counts only its tasks)".into()
        }
        Some(c) => format!("pids cgroup {} at {}", if c.v2 { "v2" } else { "v1" }, c.dir.display()),
        None => "RLIMIT_NPROC (does not bind root; no pids cgroup, no user namespace)".into(),
    };
    let memory_limit = match &features.memory_cgroup {
        Some(c) => format!("memory cgroup {} at {}", if c.v2 { "v2" } else { "v1" }, c.dir.display()),
        None => "RLIMIT_DATA per process (no writable memory cgroup): private memory only; shared mappings and tmpfs files are not counted".into(),
    };
    let git_bare_repositories = git_bare_repositories();
    let denials_visible = match crate::kaudit::probe(abi) {
        Ok(_) => {
            let mut v = "visible: Landlock reports its denials to the kernel audit log, readable here (CAP_AUDIT_READ); `portcullis run` records them, `portcullis audit list --denied` shows them".to_string();
            if let Some(n) = crate::kaudit::backlog_limit().filter(|&n| n < 1024) {
                v += &format!("; the kernel queues only {n} audit records, so a burst of denials loses some (`auditctl -b 8192` raises it)");
            }
            v
        }
        Err(why) => format!("invisible: {why}; portcullis cannot record what Landlock refused"),
    };
    let session;
    let prepared;
    let profile_report = match profile {
        Some(name) => {
            let args = SandboxArgs::for_profile(name);
            session = Session::open(&args)?;
            prepared = session.prepare(true)?;
            Some(ProfileReport {
                name: name.to_string(),
                runs_without_best_effort: prepared.enforcement.degradations.is_empty() || session.plan.best_effort,
                enforcement: &prepared.enforcement,
            })
        }
        None => None,
    };
    let r = Report {
        kernel: &features,
        landlock_fs_rights: rights(abi),
        landlock_network: abi >= 4,
        landlock_scopes: abi >= 6,
        pids_limit,
        memory_limit,
        denials_visible,
        git_bare_repositories,
        profile: profile_report,
    };
    if json {
        println!("{}", serde_json::to_string_pretty(&r).map_err(|e| Failure::setup(e.to_string()))?);
        return Ok(0);
    }
    let mut s = String::new();
    let yes = |b: bool| if b { "yes" } else { "NO" };
    let _ = writeln!(s, "kernel:              {}", features.release);
    let _ = writeln!(s, "running as:          uid {} (euid {})", features.uid, features.euid);
    let _ = writeln!(
        s,
        "Landlock:            ABI {} (portcullis uses {}, tested up to {})",
        features.landlock_abi,
        abi,
        crate::kernel::MAX_TESTED_ABI
    );
    let _ = writeln!(
        s,
        "  filesystem rights: {}",
        if r.landlock_fs_rights.is_empty() { "none".into() } else { r.landlock_fs_rights.join(" ") }
    );
    let _ = writeln!(s, "  TCP port rules:    {} (ABI 4)", yes(r.landlock_network));
    let _ = writeln!(s, "  scoping:           {} (abstract unix sockets, signals; ABI 6)", yes(r.landlock_scopes));
    let _ = writeln!(s, "seccomp filters:     {}", yes(features.seccomp_filter));
    let _ = writeln!(s, "  user notification: {}", yes(features.seccomp_user_notif));
    let _ = writeln!(s, "user+PID namespaces: {}", yes(features.user_namespaces));
    let _ = writeln!(s, "process limit:       {}", r.pids_limit);
    let _ = writeln!(s, "memory limit:        {}", r.memory_limit);
    let _ = writeln!(s, "denials:             {}", r.denials_visible);
    let _ = writeln!(s, "git bare repos:      {}", r.git_bare_repositories);
    if let Some(p) = &r.profile {
        let _ = writeln!(s, "\nprofile {}:", p.name);
        if p.enforcement.degradations.is_empty() {
            let _ = writeln!(s, "  every rule is enforced on this kernel");
        }
        for d in &p.enforcement.degradations {
            let _ = writeln!(s, "  weakened: {}", d.line());
        }
        for n in &p.enforcement.notices {
            let _ = writeln!(s, "  note: {n}");
        }
        for l in &p.enforcement.limits {
            let _ = writeln!(s, "  limit: {l}");
        }
        if !p.runs_without_best_effort {
            let _ = writeln!(s, "  `portcullis run` refuses this profile here unless --best-effort");
        }
    }
    print!("{}", super::defused(&s));
    Ok(0)
}
