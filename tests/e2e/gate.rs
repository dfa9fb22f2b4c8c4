//! The syscall gate: `[deny]` paths carved out of writable trees and `ask`
//! rules, decided on seccomp user notifications. Every refusal is shown by
//! the errno and the untouched file, with the allowed twin beside it. Runs
//! without a broker (PORTCULLIS_BROKER=off, no terminal): every ask is denied.

use std::path::Path;
use std::process::Command;

use crate::both;
use crate::support::*;

/// `strict` plus the protected paths the built-in profiles use.
const PROTECT: &str = r#"extends = "strict"
[deny]
write = ["{workspace}/.git/hooks", "{workspace}/.git/config", "{workspace}/.envrc"]
[ask]
read = ["{workspace}/ask.txt"]
timeout = "5s"
"#;

fn setup(sb: &Sandbox) -> String {
    let git = sb.ws.join(".git");
    std::fs::create_dir_all(git.join("hooks")).unwrap();
    std::fs::write(git.join("config"), "[core]\n").unwrap();
    std::fs::write(sb.ws.join("ask.txt"), "asked\n").unwrap();
    if sb.who == As::Nobody {
        for p in [git.clone(), git.join("hooks"), git.join("config"), sb.ws.join("ask.txt")] {
            std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    sb.profile("protect.toml", PROTECT)
}

fn probe_gate(sb: &Sandbox, profile: &str, args: &[&str]) -> Run {
    let mut all: Vec<&str> = vec!["run", "--profile", profile, "--exec", PROBE, "--", PROBE];
    all.extend_from_slice(args);
    let mut c = sb.portcullis(&all);
    c.env("PORTCULLIS_BROKER", "off").env("PORTCULLIS_GRANTS", sb.root.join("state/grants.json"));
    Run::from(c.output().unwrap())
}

fn ws(sb: &Sandbox, rel: &str) -> String {
    sb.path(&sb.ws.join(rel))
}

both!(protected_file_is_not_written, |sb| {
    let p = setup(sb);
    probe_gate(sb, &p, &["write", &ws(sb, ".git/config")]).expect("errno 13 EACCES");
    assert_eq!(std::fs::read_to_string(sb.ws.join(".git/config")).unwrap(), "[core]\n");
    // Twin: the rest of the workspace is writable, through the gate's own open.
    probe_gate(sb, &p, &["write", &ws(sb, "file.txt")]).expect("ok");
    assert_eq!(std::fs::read_to_string(sb.ws.join("file.txt")).unwrap(), "inside\nprobe\n");
});

both!(protected_dir_refuses_new_files, |sb| {
    let p = setup(sb);
    let hook = ws(sb, ".git/hooks/pre-commit");
    probe_gate(sb, &p, &["create", &hook]).expect("errno 13 EACCES");
    assert!(!sb.ws.join(".git/hooks/pre-commit").exists());
    probe_gate(sb, &p, &["create", &ws(sb, ".git/HEAD")]).expect("ok");
    assert!(sb.ws.join(".git/HEAD").exists());
});

both!(protected_path_created_after_launch, |sb| {
    // No .envrc at launch; the rule still holds for the file the sandbox creates.
    let p = setup(sb);
    probe_gate(sb, &p, &["create", &ws(sb, ".envrc")]).expect("errno 13 EACCES");
    assert!(!sb.ws.join(".envrc").exists());
    // Nor can a fresh .git be built where the hooks would be.
    std::fs::remove_dir_all(sb.ws.join(".git")).unwrap();
    probe_gate(sb, &p, &["mkdir", &ws(sb, ".git")]).expect("ok");
    probe_gate(sb, &p, &["mkdir", &ws(sb, ".git/hooks")]).expect("errno 13 EACCES");
    assert!(!sb.ws.join(".git/hooks").exists());
});

both!(symlink_into_protected_dir_is_followed, |sb| {
    let p = setup(sb);
    // A link made outside the gate's sight (before launch) still resolves.
    std::os::unix::fs::symlink(".git/hooks", sb.ws.join("h")).unwrap();
    probe_gate(sb, &p, &["create", &ws(sb, "h/pre-push")]).expect("errno 13 EACCES");
    std::os::unix::fs::symlink(".git/config", sb.ws.join("cfg")).unwrap();
    probe_gate(sb, &p, &["write", &ws(sb, "cfg")]).expect("errno 13 EACCES");
    assert_eq!(std::fs::read_to_string(sb.ws.join(".git/config")).unwrap(), "[core]\n");
    assert!(!sb.ws.join(".git/hooks/pre-push").exists());
    // A symlink *named* like a protected path would redirect it: refused too.
    std::fs::remove_file(sb.ws.join(".git/config")).unwrap();
    probe_gate(sb, &p, &["symlink", &ws(sb, "file.txt"), &ws(sb, ".git/config")]).expect("errno 13 EACCES");
    probe_gate(sb, &p, &["symlink", &ws(sb, "file.txt"), &ws(sb, "plain-link")]).expect("ok");
});

both!(moving_trees_around_protection_is_refused, |sb| {
    let p = setup(sb);
    // Moving the protected tree away, or another tree into its place.
    probe_gate(sb, &p, &["rename", &ws(sb, ".git"), &ws(sb, "g2")]).expect("errno 13 EACCES");
    std::fs::create_dir_all(sb.ws.join("fake/hooks")).unwrap();
    if sb.who == As::Nobody {
        for d in ["fake", "fake/hooks"] {
            std::os::unix::fs::chown(sb.ws.join(d), Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    std::fs::remove_dir_all(sb.ws.join(".git")).unwrap();
    probe_gate(sb, &p, &["rename", &ws(sb, "fake"), &ws(sb, ".git")]).expect("errno 13 EACCES");
    assert!(!sb.ws.join(".git").exists());
    // A hard link to a protected file would be a second name for it.
    std::fs::create_dir_all(sb.ws.join(".git")).unwrap();
    std::fs::write(sb.ws.join(".git/config"), "[core]\n").unwrap();
    if sb.who == As::Nobody {
        for d in [".git", ".git/config"] {
            std::os::unix::fs::chown(sb.ws.join(d), Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    probe_gate(sb, &p, &["link", &ws(sb, ".git/config"), &ws(sb, "cfg")]).expect("errno 13 EACCES");
    probe_gate(sb, &p, &["unlink", &ws(sb, ".git/config")]).expect("errno 13 EACCES");
    assert!(sb.ws.join(".git/config").exists() && !sb.ws.join("cfg").exists());
    // Twins: ordinary renames, links and unlinks go through.
    probe_gate(sb, &p, &["rename", &ws(sb, "fake"), &ws(sb, "real")]).expect("ok");
    probe_gate(sb, &p, &["link", &ws(sb, "file.txt"), &ws(sb, "file2.txt")]).expect("ok");
    probe_gate(sb, &p, &["unlink", &ws(sb, "file2.txt")]).expect("ok");
    assert!(sb.ws.join("real/hooks").is_dir() && !sb.ws.join("file2.txt").exists());
});

both!(ask_without_broker_or_terminal_is_denied, |sb| {
    let p = setup(sb);
    let r = probe_gate(sb, &p, &["read", &ws(sb, "ask.txt")]);
    r.expect("errno 13 EACCES");
    // Reads elsewhere are not asked.
    probe_gate(sb, &p, &["read", &ws(sb, "file.txt")]).expect("ok");
    // The refusal is evidence: who answered (nobody could) and why.
    let log = sb.root.join("state/audit.log");
    let out =
        Command::new(PORTCULLIS).args(["audit", "export", "--format", "json", "--log"]).arg(&log).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("\"approval\"") && text.contains("ask.txt"), "{text}");
    assert!(text.contains("\"decision\": \"deny\"") || text.contains("\"decision\":\"deny\""), "{text}");
});

both!(race_never_opens_the_denied_file, |sb| {
    // 10,000 opens while another thread swaps the path between an allowed
    // and a protected file: the gate reads the path once and opens what it
    // checked, so the protected file is never opened.
    let p = setup(sb);
    let r = probe_gate(sb, &p, &["race-open", &ws(sb, "file.txt"), &ws(sb, ".git/config"), "10000"]);
    assert!(r.verdict().starts_with("opened "), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(std::fs::read_to_string(sb.ws.join(".git/config")).unwrap(), "[core]\n");
    let opened: usize = r.verdict().split_whitespace().nth(1).unwrap().parse().unwrap();
    let lines = std::fs::read_to_string(sb.ws.join("file.txt")).unwrap().lines().count() - 1;
    assert_eq!(lines, opened, "every successful open was the allowed file");
    assert!(opened > 0, "the race must exercise the allowed side too");
});

both!(ask_connect_denied_listener_gets_nothing, |sb| {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed_port = allowed.local_addr().unwrap().port().to_string();
    let mut c = sb.portcullis(&[
        "run",
        "--ask-connect",
        &port,
        "--connect",
        &allowed_port,
        "--ask-timeout",
        "5s",
        "--exec",
        PROBE,
        "--",
        PROBE,
        "connect",
        &port,
    ]);
    c.env("PORTCULLIS_BROKER", "off").env("PORTCULLIS_GRANTS", sb.root.join("state/grants.json"));
    Run::from(c.output().unwrap()).expect("errno 13 EACCES");
    assert!(listener.accept().is_err(), "the listener must have received nothing");
    // Twin: a port the profile allows connects, through the gate's own connect.
    let mut c = sb.portcullis(&[
        "run",
        "--ask-connect",
        &port,
        "--connect",
        &allowed_port,
        "--exec",
        PROBE,
        "--",
        PROBE,
        "connect",
        &allowed_port,
    ]);
    c.env("PORTCULLIS_BROKER", "off");
    Run::from(c.output().unwrap()).expect("ok");
    allowed.set_nonblocking(true).unwrap();
    assert!(allowed.accept().is_ok());
});

both!(ask_exec_denied_without_answer, |sb| {
    let mut c = sb.portcullis(&[
        "run",
        "--ask-exec",
        "/bin/true",
        "--ask-timeout",
        "5s",
        "--exec",
        PROBE,
        "--",
        PROBE,
        "exec",
        "/bin/true",
    ]);
    c.env("PORTCULLIS_BROKER", "off").env("PORTCULLIS_GRANTS", sb.root.join("state/grants.json"));
    Run::from(c.output().unwrap()).expect("errno 13 EACCES");
});

#[test]
fn grants_file_inside_a_writable_rule_is_refused() {
    let sb = Sandbox::new("gate-grants-reach", As::Caller);
    let p = setup(&sb);
    let mut c = sb.portcullis(&["run", "--profile", &p, "--exec", "/bin/true", "--", "/bin/true"]);
    c.env("PORTCULLIS_GRANTS", sb.ws.join("grants.json"));
    let r = Run::from(c.output().unwrap());
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("grants file"), "{}", r.stderr);
}

#[test]
fn ask_on_an_always_denied_syscall_is_a_profile_error() {
    let sb = Sandbox::new("gate-floor", As::Caller);
    let p = sb.profile("bad.toml", "extends = \"strict\"\n[ask]\nsyscalls = [\"ptrace\"]\n");
    let r = sb.run(&["run", "--profile", &p, "--", "/bin/true"]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("bad.toml:3:") && r.stderr.contains("ptrace"), "{}", r.stderr);
    let _ = Path::new(&p);
}
