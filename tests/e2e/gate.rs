//! The syscall gate: `[deny]` paths carved out of writable trees and `ask`
//! rules, decided on seccomp user notifications. Every refusal is shown by
//! the errno and the untouched file, with the allowed twin beside it. Runs
//! without a broker (PORTCULLIS_BROKER=off, no terminal): every ask is denied.

use std::path::Path;
use std::process::Command;

use crate::both;
use crate::support::*;

/// `strict` plus the protected paths the built-in profiles use.
// mcp-git: strict with its whole-`.git` rule dropped for the finer rules
// these tests exercise (and twins elsewhere in .git).
const PROTECT: &str = r#"extends = "mcp-git"
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
    probe_with(sb, &["--profile", profile], args)
}

/// `portcullis run FLAGS --exec PROBE -- PROBE ARGS`, no broker (asks are no).
fn probe_with(sb: &Sandbox, flags: &[&str], args: &[&str]) -> Run {
    let mut all: Vec<&str> = vec!["run"];
    all.extend_from_slice(flags);
    all.extend_from_slice(&["--exec", PROBE, "--", PROBE]);
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

both!(the_gate_starts_its_threads_only_once_a_syscall_is_parked, |sb| {
    // A command that parks nothing costs no gate thread; one that parks a
    // syscall later, after the run has waited a while, is still answered.
    // (strict parks opens for writing only: the probe's start parks none.)
    let go = sb.path(&sb.ws.join("go"));
    let asked = ws(sb, ".mcp.json");
    let args = ["run", "--profile", "strict", "--exec", PROBE, "--", PROBE, "await", &go, "create", &asked];
    let mut c = sb.portcullis(&args);
    c.env("PORTCULLIS_BROKER", "off").env("PORTCULLIS_GRANTS", sb.root.join("state/grants.json"));
    let child = c.stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    // The probe waits (any write it made to say so would be parked):
    // found by its command line, then given time to be well under way.
    let waiting = || {
        std::fs::read_dir("/proc").unwrap().flatten().any(|e| {
            std::fs::read(e.path().join("cmdline"))
                .is_ok_and(|c| c.starts_with(format!("{PROBE}\0await\0{go}\0").as_bytes()))
        })
    };
    let started = std::time::Instant::now();
    while !waiting() && started.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(waiting(), "the sandboxed probe never started");
    std::thread::sleep(std::time::Duration::from_millis(100));
    let threads: Vec<String> = std::fs::read_dir(format!("/proc/{}/task", child.id()))
        .unwrap()
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
        .map(|n| n.trim().to_string())
        .collect();
    assert!(!threads.iter().any(|n| n.starts_with("gate")), "gate threads before anything was parked: {threads:?}");
    std::fs::write(sb.ws.join("go"), "").unwrap();
    Run::from(child.wait_with_output().unwrap()).expect("errno 13 EACCES");
    assert!(!sb.ws.join(".mcp.json").exists());
});

both!(a_rule_named_through_a_link_holds_for_the_real_path, |sb| {
    // The rule names the file through a link to its directory; the sandbox
    // writes it by its real name. `run` resolves the rule's path before
    // the command can change the link (on its other thread, meanwhile).
    std::fs::create_dir(sb.ws.join("real")).unwrap();
    if sb.who == As::Nobody {
        std::os::unix::fs::chown(sb.ws.join("real"), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    std::os::unix::fs::symlink("real", sb.ws.join("via")).unwrap();
    let p = sb.profile("via.toml", "extends = \"strict\"\n[deny]\nwrite = [\"{workspace}/via/secret.txt\"]\n");
    probe_gate(sb, &p, &["create", &ws(sb, "real/secret.txt")]).expect("errno 13 EACCES");
    assert!(!sb.ws.join("real/secret.txt").exists());
    // Twin: its neighbour is written.
    probe_gate(sb, &p, &["create", &ws(sb, "real/other.txt")]).expect("ok");
    assert!(sb.ws.join("real/other.txt").exists());
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
    let flags = ["--ask-connect", &port, "--connect", &allowed_port, "--ask-timeout", "5s"];
    probe_with(sb, &flags, &["connect", &port]).expect("errno 13 EACCES");
    assert!(listener.accept().is_err(), "the listener must have received nothing");
    // Twin: a port the profile allows connects, through the gate's own connect.
    probe_with(sb, &flags, &["connect", &allowed_port]).expect("ok");
    allowed.set_nonblocking(true).unwrap();
    assert!(allowed.accept().is_ok());
});

// THREATS #11: the sockaddr is rewritten by another thread while the gate
// decides. The gate connects the caller's socket itself, to the address it
// read and checked, so the asked (here: denied) port never gets a
// connection, while the allowed one, from the same buffer, does.
both!(race_never_connects_to_the_denied_port, |sb| {
    let denied = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let allowed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (dp, ap) = (denied.local_addr().unwrap().port().to_string(), allowed.local_addr().unwrap().port().to_string());
    // Keep the allowed backlog drained so connects do not stall.
    let drain = Drain::start(allowed);
    let flags = ["--ask-connect", &dp, "--connect", &ap, "--ask-timeout", "5s"];
    let r = probe_with(sb, &flags, &["race-connect", &ap, &dp, "1000"]);
    let accepted = drain.stop();
    let v: Vec<&str> = r.verdict().split_whitespace().collect();
    assert_eq!(v.first(), Some(&"connected"), "{}\n{}", r.stdout, r.stderr);
    let (to_allowed, to_denied): (usize, usize) = (v[1].parse().unwrap(), v[3].parse().unwrap());
    assert_eq!(to_denied, 0, "{}", r.stdout);
    denied.set_nonblocking(true).unwrap();
    assert!(denied.accept().is_err(), "the denied port's listener received nothing");
    assert!(to_allowed > 0 && accepted > 0, "the race exercised the allowed side: {}", r.stdout);
});

// THREATS #12: with `[ipc] unix = true` a connect on a unix socket goes on
// to the kernel unchanged (CONTINUE), and the fd can be swapped for a TCP
// socket in between. A port that is only asked about is therefore not in
// the sandbox's own Landlock rules (the gate connects it from a thread of
// its own once a person says yes): the swapped connect is refused by the
// kernel. Before, the port was in the sandbox's rules, and 371 to 514 of
// 2,000 such connects reached a port no one had approved.
both!(a_socket_swapped_behind_a_unix_connect_never_reaches_an_asked_port, |sb| {
    let asked = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = asked.local_addr().unwrap().port().to_string();
    // Accepted at once, so a connect that got through never waits on a
    // full backlog (it would block the probe for minutes).
    let drain = Drain::start(asked);
    let p = sb.profile("unix.toml", "extends = \"strict\"\n[ipc]\nunix = true\n");
    let flags = ["--profile", &p, "--ask-connect", &port, "--ask-timeout", "5s"];
    let r = probe_with(sb, &flags, &["race-unix-swap", &port, "2000"]);
    let accepted = drain.stop();
    let v: Vec<&str> = r.verdict().split_whitespace().collect();
    assert_eq!(v.get(..2), Some(&["connected", "0"][..]), "{}\n{}", r.stdout, r.stderr);
    assert_eq!(accepted, 0, "the asked port's listener received nothing");
    // Both sides of the race happened: the gate refused TCP connects (EACCES,
    // no broker) and let unix ones through (EINVAL for an inet address).
    assert!(r.stdout.contains("EACCES") && r.stdout.contains("EINVAL"), "{}", r.stdout);
});

// An ask names one address; its port is reachable by the gate's connect
// threads, but no other address on that port gets through: the gate
// refuses what the sandbox could not reach itself, without asking.
both!(an_ask_for_one_address_opens_its_port_nowhere_else, |sb| {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let elsewhere = format!("127.0.0.2:{port}");
    let r = probe_with(sb, &["--ask-connect", &elsewhere], &["connect", &port]);
    r.expect("errno 13 EACCES");
    assert!(!r.stderr.contains("waiting for approval"), "nobody was asked: {}", r.stderr);
    assert!(listener.accept().is_err(), "127.0.0.1 got nothing");
    // Twin: the port allowed outright connects on any address.
    probe_with(sb, &["--ask-connect", &elsewhere, "--connect", &port], &["connect", &port]).expect("ok");
    assert!(listener.accept().is_ok());
});

// openat2 keeps its flags behind a pointer no seccomp filter can read, so
// under path rules it fails with ENOSYS, and libc falls back to openat,
// which the gate sees (GATE.md). A profile that also denies openat2 outright
// must not turn that into EPERM, which callers do not fall back from: the
// answer the stacked filters gave, kept when they became one program.
both!(openat2_fails_enosys_even_where_the_profile_denies_it, |sb| {
    let file = sb.path(&sb.ws.join("file.txt"));
    probe_with(sb, &[], &["openat2", &file]).expect("errno 38 ENOSYS");
    let p = sb.profile("deny-openat2.toml", "extends = \"strict\"\n[syscalls]\ndeny = [\"openat2\"]\n");
    probe_with(sb, &["--profile", &p], &["openat2", &file]).expect("errno 38 ENOSYS");
    // Twin: the call callers fall back to opens the same file.
    probe_with(sb, &["--profile", &p], &["read", &file]).expect("ok");
});

// THREATS #26: Landlock's TCP rules name ports, not hosts, so `--connect P`
// lets the sandbox reach P on every address; a second loopback address
// stands in for a LAN host or 169.254.169.254. This is a limit, and the
// test shows it so that a change in it is noticed. What narrows a port to
// one host is an ask on a literal IP:PORT instead of the port. Another
// address on that port is then refused without asking anyone, and its
// listener gets nothing.
both!(a_port_rule_reaches_every_address_and_an_address_ask_only_its_own, |sb| {
    let here = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = here.local_addr().unwrap().port();
    let there = std::net::TcpListener::bind(("127.0.0.2", port)).expect("127.0.0.2 on the same port");
    there.set_nonblocking(true).unwrap();
    let p = port.to_string();
    // The limit: the port rule alone reaches the other address.
    probe_with(sb, &["--connect", &p], &["connect", &p, "127.0.0.2"]).expect("ok");
    assert!(there.accept().is_ok(), "the port rule let the connect to 127.0.0.2 through");
    // Narrowed to 127.0.0.1:P: the same connect is refused, and no one is asked.
    let only_here = format!("127.0.0.1:{port}");
    let r = probe_with(sb, &["--ask-connect", &only_here], &["connect", &p, "127.0.0.2"]);
    r.expect("errno 13 EACCES");
    assert!(!r.stderr.contains("waiting for approval"), "nobody was asked: {}", r.stderr);
    assert!(there.accept().is_err(), "127.0.0.2 got nothing");
    drop(here);
});

/// A person approves renaming a *file* to `.claude` (an ask: agent
/// config). While the question waits, the file becomes a directory holding
/// a `settings.json`: the approval must not move that tree in. (A helper's
/// hunt swapped it from a second thread; the test swaps it from outside.)
#[test]
fn an_approved_file_rename_never_moves_a_tree_swapped_in_meanwhile() {
    let sb = Sandbox::new("gate-rename-swap", As::Caller);
    let p = setup(&sb);
    let b = TestBroker::start(&sb);
    let a = sb.ws.join("a");
    std::fs::write(&a, "notes\n").unwrap();
    let child = spawn_with_broker(&sb, &b, &p, &["rename", &ws(&sb, "a"), &ws(&sb, ".claude")]);
    let req = b.next();
    assert_eq!(req["kind"], "rename", "shown as a file's rename: {req}");
    std::fs::remove_file(&a).unwrap();
    std::fs::create_dir(&a).unwrap();
    std::fs::write(a.join("settings.json"), "{\"hooks\": {}}\n").unwrap();
    assert_eq!(b.cli(&["approve", req["id"].as_str().unwrap()]).code, 0);
    Run::from(child.wait_with_output().unwrap()).expect("errno 11 EAGAIN");
    assert!(!sb.ws.join(".claude").exists(), "the swapped-in tree was moved in");
    // Twin: approved with the file still a file, it is renamed.
    std::fs::remove_dir_all(&a).unwrap();
    std::fs::write(&a, "notes\n").unwrap();
    let child = spawn_with_broker(&sb, &b, &p, &["rename", &ws(&sb, "a"), &ws(&sb, ".claude")]);
    let req = b.next();
    assert_eq!(b.cli(&["approve", req["id"].as_str().unwrap()]).code, 0);
    Run::from(child.wait_with_output().unwrap()).expect("ok");
    assert_eq!(std::fs::read_to_string(sb.ws.join(".claude")).unwrap(), "notes\n");
}

/// strict refuses making a `.git` file (a `gitdir:` line starts a
/// repository the rules never saw). An open with O_CREAT of a `.git`
/// directory was decided on the directory and could be asked about; removed
/// while the question waited, the approved open made a `gitdir:` file (a
/// reviewer's note). It is now refused at once, as the kernel would
/// (EEXIST, EISDIR), with nothing asked.
#[test]
fn an_approved_open_of_a_directory_never_creates_a_file_in_its_place() {
    let sb = Sandbox::new("gate-create-swap", As::Caller);
    setup(&sb);
    let p =
        sb.profile("ask-sub.toml", "extends = \"strict\"\n[ask]\nwrite = [\"{workspace}/sub\"]\ntimeout = \"20s\"\n");
    let b = TestBroker::start(&sb);
    let git = sb.ws.join("sub/.git");
    std::fs::create_dir_all(&git).unwrap();
    std::fs::write(sb.ws.join("gitdir.txt"), "gitdir: /w/evil\n").unwrap();
    let args = ["create", &ws(&sb, "sub/.git"), &ws(&sb, "gitdir.txt")];
    Run::from(spawn_with_broker(&sb, &b, &p, &args).wait_with_output().unwrap()).expect("errno 17 EEXIST");
    assert!(git.is_dir(), "the directory was replaced");
    // Twin: approved, a plain name is created.
    let child = spawn_with_broker(&sb, &b, &p, &["create", &ws(&sb, "sub/notes"), &ws(&sb, "gitdir.txt")]);
    let req = b.next();
    assert_eq!(b.cli(&["approve", req["id"].as_str().unwrap()]).code, 0);
    Run::from(child.wait_with_output().unwrap()).expect("ok");
    assert!(sb.ws.join("sub/notes").is_file());
}

/// Names that are not UTF-8 are shown (and were keyed) with each bad byte
/// as U+FFFD, so `tasks\xff.json` and `tasks\xfe.json` read the same: a
/// session grant for one let the other be made unasked (a helper's hunt).
/// Such an answer now covers its request only.
#[test]
fn an_answer_for_a_name_that_is_not_utf8_covers_that_request_only() {
    let sb = Sandbox::new("gate-lossy", As::Caller);
    let p = setup(&sb);
    std::fs::create_dir(sb.ws.join(".vscode")).unwrap();
    let b = TestBroker::start(&sb);
    let hex = |name: &[u8]| {
        let mut path = sb.ws.join(".vscode").into_os_string().into_encoded_bytes();
        path.push(b'/');
        path.extend_from_slice(name);
        path.iter().map(|b| format!("{b:02x}")).collect::<String>()
    };
    let (ff, fe) = (hex(b"tasks\xff.json"), hex(b"tasks\xfe.json"));
    let child = spawn_with_broker(&sb, &b, &p, &["create-hex", &ff, &fe]);
    let first = b.next();
    assert_eq!(b.cli(&["approve", "--session", first["id"].as_str().unwrap()]).code, 0);
    // The second name is asked about again, though it reads the same.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let second = loop {
        let list: Vec<serde_json::Value> =
            serde_json::from_str(&b.cli(&["approvals", "--json"]).stdout).unwrap_or_default();
        if let Some(v) = list.into_iter().find(|v| v["id"] != first["id"]) {
            break v;
        }
        assert!(std::time::Instant::now() < until, "the second name was not asked about");
        std::thread::sleep(std::time::Duration::from_millis(30));
    };
    assert_eq!(b.cli(&["deny", second["id"].as_str().unwrap()]).code, 0);
    let r = Run::from(child.wait_with_output().unwrap());
    assert_eq!(r.stdout.lines().collect::<Vec<_>>(), vec!["ok", "errno 13 EACCES"], "{}", r.stderr);
    use std::os::unix::ffi::OsStrExt;
    let made: Vec<Vec<u8>> =
        std::fs::read_dir(sb.ws.join(".vscode")).unwrap().map(|e| e.unwrap().file_name().as_bytes().to_vec()).collect();
    assert_eq!(made, vec![b"tasks\xff.json".to_vec()]);
}

// The twin of the test above: a port only asked about still connects once
// a person approves (the gate's own connect, in its own domain), and a
// profile whose only TCP rule is an ask can make the socket to ask with.
#[test]
fn an_approved_connect_to_an_asked_port_goes_through() {
    let sb = Sandbox::new("gate-ask-connect", As::Caller);
    let asked = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = asked.local_addr().unwrap().port().to_string();
    let p = sb.profile("askc.toml", &format!("extends = \"strict\"\n[ask]\nconnect = [{port}]\n"));
    let b = TestBroker::start(&sb);
    let child = spawn_with_broker(&sb, &b, &p, &["connect", &port]);
    let req = b.next();
    assert_eq!(req["kind"], "connect", "{req}");
    assert_eq!(b.cli(&["approve", req["id"].as_str().unwrap()]).code, 0);
    Run::from(child.wait_with_output().unwrap()).expect("ok");
    asked.set_nonblocking(true).unwrap();
    assert!(asked.accept().is_ok(), "the approved connect arrived");
    // Denied: nothing arrives.
    let child = spawn_with_broker(&sb, &b, &p, &["connect", &port]);
    let req = b.next();
    assert_eq!(b.cli(&["deny", req["id"].as_str().unwrap()]).code, 0);
    Run::from(child.wait_with_output().unwrap()).expect("errno 13 EACCES");
    assert!(asked.accept().is_err(), "the denied connect never arrived");
}

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

// A run with no gate of its own is held to the same rule: what it could
// write there, the next, gated run would trust (an "always" grant, a fake
// broker, a rewritten tool pin).
both!(approval_state_is_out_of_reach_of_ungated_runs_too, |sb| {
    let p = sb.profile("nogate.toml", "extends = \"strict\"\n[ask]\ninherit = false\n[deny]\ninherit = false\n");
    let state = sb.root.join("state");
    let run = |env: &[(&str, std::path::PathBuf)]| {
        let mut c = sb.portcullis(&["run", "--profile", &p, "--exec", "/bin/true", "--", "/bin/true"]);
        c.env("PORTCULLIS_GRANTS", state.join("grants.json"))
            .env("PORTCULLIS_BROKER_DIR", state.join("broker"))
            .env("XDG_STATE_HOME", &state);
        for (k, v) in env {
            c.env(k, v);
        }
        Run::from(c.output().unwrap())
    };
    for (var, place, what) in [
        ("PORTCULLIS_GRANTS", sb.ws.join("grants.json"), "grants file"),
        ("PORTCULLIS_BROKER_DIR", sb.ws.join("broker"), "approval broker socket"),
        ("XDG_STATE_HOME", sb.ws.join("state"), "MCP tool pins"),
    ] {
        let r = run(&[(var, place)]);
        assert_eq!(r.code, 125, "{var}: {}", r.stderr);
        assert!(
            r.stderr.contains(what) && r.stderr.contains(&format!("the rule for {}", sb.path(&sb.ws))),
            "{var}: {}",
            r.stderr
        );
    }
    // Twin: the same profile, with all of them outside every rule, runs.
    let r = run(&[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
});

// A broker planted by a sandbox. An earlier sandbox (unix sockets allowed,
// its workspace the directory a later run takes for its broker's) listens
// there and approves every ask. The later run's supervisor must not believe
// it: the listener runs in another user and PID namespace, though as our uid.
both!(a_broker_planted_by_a_sandbox_is_not_believed, |sb| {
    use std::io::BufRead;
    let p = setup(sb);
    let planted = sb.outside.join("broker");
    std::fs::create_dir(&planted).unwrap();
    std::fs::set_permissions(&planted, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    if sb.who == As::Nobody {
        std::os::unix::fs::chown(&planted, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let attacker = sb.profile("attacker.toml", "extends = \"strict\"\n[ipc]\nunix = true\n");
    let sock = sb.path(&planted.join("broker.sock"));
    let mut c = sb.portcullis(&[
        "run",
        "--profile",
        &attacker,
        "--workspace",
        &sb.path(&planted),
        "--exec",
        PROBE,
        "--",
        PROBE,
        "fake-broker",
        &sock,
    ]);
    c.env("PORTCULLIS_BROKER_DIR", sb.root.join("state/other-broker")).stdout(std::process::Stdio::piped());
    let mut fake = c.spawn().unwrap();
    let mut out = std::io::BufReader::new(fake.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "listening");
    let mut c = sb.portcullis(&["run", "--profile", &p, "--exec", PROBE, "--", PROBE, "read", &ws(sb, "ask.txt")]);
    c.env("PORTCULLIS_BROKER_DIR", &planted).env("PORTCULLIS_GRANTS", sb.root.join("state/grants.json"));
    let r = Run::from(c.output().unwrap());
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(fake.id() as i32), nix::sys::signal::Signal::SIGTERM);
    let _ = fake.wait();
    r.expect("errno 13 EACCES");
    // The refusal names the impostor (without the check, it approved: "ok").
    let log = sb.root.join("state/audit.log");
    let out = Command::new(PORTCULLIS).args(["audit", "list", "--json", "--log"]).arg(&log).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let approval = text.lines().find(|l| l.contains("\"approval\"")).unwrap_or_else(|| panic!("{text}"));
    assert!(approval.contains("is not ours") && approval.contains("in another"), "{approval}");
});

// With a `read` ask rule every open is parked, /proc ones too. The gate
// acts in a Landlock domain of its own, which the kernel does not let
// reach the caller's ptrace-guarded files (maps, environ): those reads
// failed (EACCES) where the same program without the gate read them. And
// the acting thread could confine itself before init added the private
// /proc to the ruleset: then even /proc/self/status failed (1 run in 40).
both!(the_callers_own_proc_files_read_as_without_the_gate, |sb| {
    let p = setup(sb);
    for f in ["/proc/self/maps", "/proc/self/environ", "/proc/thread-self/maps", "/proc/self/auxv"] {
        probe_gate(sb, &p, &["read", f]).expect("ok");
        // Twin: the same read without a gate.
        sb.probe(&[], &["read", f]).expect("ok");
    }
    for _ in 0..20 {
        probe_gate(sb, &p, &["read", "/proc/self/status"]).expect("ok");
    }
    // Opened for the caller, but not with the supervisor's privileges:
    // pagemap shows frame numbers only to an opener with CAP_SYS_ADMIN.
    probe_gate(sb, &p, &["pagemap"]).expect("pfn 0");
    sb.probe(&[], &["pagemap"]).expect("pfn 0");
    if sb.who == As::Caller && is_root() {
        // Twin: root outside the sandbox sees them.
        let bare = Command::new(PROBE).arg("pagemap").output().unwrap();
        let out = String::from_utf8_lossy(&bare.stdout);
        assert!(out.starts_with("pfn ") && out.trim() != "pfn 0", "{out}");
    }
    // Only the caller's own: the sandbox's init (a fork of portcullis)
    // stays out of reach, gate or not.
    probe_gate(sb, &p, &["read", "/proc/1/environ"]).expect("errno 13 EACCES");
    sb.probe(&[], &["read", "/proc/1/environ"]).expect("errno 13 EACCES");
    // A profile that does not let the sandbox read /proc: not through the gate either.
    let noproc = sb.profile(
        "noproc.toml",
        "[filesystem]\nread = [\"/usr\", \"?/lib\", \"?/lib64\", \"?/etc/ld.so.cache\"]\nwrite = [\"{workspace}\"]\n[ask]\nread = [\"{workspace}/ask.txt\"]\ntimeout = \"5s\"\n",
    );
    probe_gate(sb, &noproc, &["read", "/proc/self/maps"]).expect("errno 13 EACCES");
    probe_gate(sb, &noproc, &["read", &ws(sb, "file.txt")]).expect("ok");
});

// THREATS #15: a name the gate cannot read must not fall through to the
// kernel, which may well read it. The vDSO's data page is such memory: the
// kernel reads it in the caller's own context (the twin without the gate
// gets ENOENT, here, for the bytes it finds there: anything but EFAULT),
// process_vm_readv from the supervisor cannot. A gate that let the call go
// on would show the kernel's answer too.
both!(a_name_the_gate_cannot_read_is_refused_not_passed_on, |sb| {
    let p = setup(sb);
    let bare = sb.probe(&[], &["open-unreadable-name"]);
    let bare = bare.verdict();
    assert!(bare.starts_with("errno ") && bare != "errno 14 EFAULT", "{bare}");
    probe_gate(sb, &p, &["open-unreadable-name"]).expect("errno 14 EFAULT");
    // Twin: the same gate opens a name it can read.
    probe_gate(sb, &p, &["read", &ws(sb, "file.txt")]).expect("ok");
});

// Calls that may block (a FIFO's open, a connect) are performed in threads
// of their own; a sandbox could make the supervisor start one per thread it
// has. At most 256 run at once: the rest are answered EAGAIN.
#[test]
fn threads_acting_apart_for_the_sandbox_are_capped() {
    let sb = Sandbox::new("gate-apart-cap", As::Caller);
    let p = setup(&sb);
    probe_gate(&sb, &p, &["fifo-flood", &ws(&sb, "fifo"), "300"]).expect("eagain 44");
    // Twin: below the cap, none is refused.
    probe_gate(&sb, &p, &["fifo-flood", &ws(&sb, "fifo2"), "100"]).expect("eagain 0");
}

// THREATS #62: a name made of control characters (a screen clear, a
// carriage return and a newline that forge a line, C1 NEL, a bell) reaches
// the person through the ask hint on stderr and through `audit list`. Both
// show it escaped, on the one line it belongs to.
#[test]
fn control_characters_in_names_never_reach_a_terminal_raw() {
    let sb = Sandbox::new("ctl-chars", As::Caller);
    let p = sb.profile(
        "ctl.toml",
        "extends = \"strict\"\n[deny]\nwrite = [\"{workspace}/deny\"]\n[ask]\nwrite = [\"{workspace}/ask\"]\ntimeout = \"1s\"\n",
    );
    std::fs::create_dir(sb.ws.join("deny")).unwrap();
    std::fs::create_dir(sb.ws.join("ask")).unwrap();
    let evil = "x\u{1b}[2J\r\nportcullis: approved everything\u{85}\u{7}";
    let raw = |s: &str| s.chars().any(|c| c.is_control() && c != '\n');
    probe_gate(&sb, &p, &["create", &ws(&sb, &format!("deny/{evil}"))]).expect("errno 13 EACCES");
    let b = TestBroker::start(&sb);
    let mut c = sb.portcullis(&[
        "run",
        "--profile",
        &p,
        "--exec",
        PROBE,
        "--",
        PROBE,
        "create",
        &ws(&sb, &format!("ask/{evil}")),
    ]);
    c.env("PORTCULLIS_BROKER_DIR", &b.dir).env("PORTCULLIS_GRANTS", sb.root.join("state/grants.json"));
    let r = Run::from(c.output().unwrap());
    r.expect("errno 13 EACCES");
    assert!(!sb.ws.join(format!("ask/{evil}")).exists() && !sb.ws.join(format!("deny/{evil}")).exists());
    let hint = r.stderr.lines().find(|l| l.contains("waiting for approval")).unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(hint.contains("approved everything"), "the forged line stays in the hint's: {:?}", r.stderr);
    assert!(!raw(&r.stderr), "{:?}", r.stderr);
    let log = sb.root.join("state/audit.log");
    let out = Command::new(PORTCULLIS).args(["audit", "list", "--log"]).arg(&log).output().unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && !raw(&table), "{table:?}");
    assert!(table.lines().any(|l| l.contains(" verdict ") && l.contains("approved everything")), "{table}");
    assert!(table.lines().any(|l| l.contains(" approval ")), "{table}");
    // No line the name could have forged: each one is a record (seq first).
    for l in table.lines() {
        let seq = l.split_whitespace().next().and_then(|n| n.parse::<u64>().ok());
        assert!(seq.is_some(), "on a record's own line (seq first): {l:?}");
    }
}

// The listener's pid is the one recorded when it called listen(). A planted
// broker can fork, keep the socket in the child, exit, and wait for its pid
// to be reused by a process in our namespaces: the /proc checks would then
// be about that process. Here the pid is handed to a `sleep` of ours
// (ns_last_pid, as root); the client must still refuse (SO_PEERPIDFD).
#[test]
fn a_broker_whose_listener_pid_was_reused_is_not_believed() {
    if !is_root() {
        return skip("steering pid reuse (/proc/sys/kernel/ns_last_pid) needs root");
    }
    let sb = Sandbox::new("stale-broker", As::Caller);
    let p = setup(&sb);
    let dir = sb.root.join("stale");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let out = Command::new(PROBE)
        .args(["fake-broker", &sb.path(&dir.join("broker.sock")), "stale"])
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let ids: Vec<i32> = text.split_whitespace().skip(1).filter_map(|n| n.parse().ok()).collect();
    assert_eq!(ids.len(), 2, "{text}");
    let (dead, server) = (ids[0], ids[1]);
    let mut holder = None;
    for _ in 0..100 {
        std::fs::write("/proc/sys/kernel/ns_last_pid", (dead - 1).to_string()).unwrap();
        let mut c = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        if c.id() as i32 == dead {
            holder = Some(c);
            break;
        }
        let _ = c.kill();
        let _ = c.wait();
    }
    let mut holder = holder.expect("the dead listener's pid could not be handed to a process of ours");
    let mut c = sb.portcullis(&["run", "--profile", &p, "--exec", PROBE, "--", PROBE, "read", &ws(&sb, "ask.txt")]);
    c.env("PORTCULLIS_BROKER_DIR", &dir).env("PORTCULLIS_GRANTS", sb.root.join("state/grants.json"));
    let r = Run::from(c.output().unwrap());
    let _ = holder.kill();
    let _ = holder.wait();
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(server), nix::sys::signal::Signal::SIGKILL);
    r.expect("errno 13 EACCES");
    let log = sb.root.join("state/audit.log");
    let out = Command::new(PORTCULLIS).args(["audit", "list", "--json", "--log"]).arg(&log).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let approval = text.lines().find(|l| l.contains("\"approval\"")).unwrap_or_else(|| panic!("{text}"));
    assert!(approval.contains("has exited"), "{approval}");
}

// Where the sandbox's own /proc cannot be mounted (here: a tmpfs over
// /proc/sys, which a new user namespace may not uncover), it sees the
// host's. The gate's /proc/self must then name the caller by its host pid:
// its namespace pid names another process there.
#[test]
fn proc_self_names_the_caller_when_the_sandbox_sees_the_host_proc() {
    let sb = Sandbox::new("host-proc", As::Caller);
    if !is_root() {
        return skip("mounting over /proc/sys in a private mount namespace needs root");
    }
    let p = setup(&sb);
    let run = |profile: &str, args: &[&str]| {
        let mut c = Command::new("unshare");
        c.args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            "mount -t tmpfs none /proc/sys && exec \"$0\" \"$@\"",
        ]);
        c.args([PORTCULLIS, "run", "--profile", profile, "--exec", PROBE, "--", PROBE]);
        c.args(args);
        c.current_dir(&sb.ws).env("HOME", &sb.home).env_remove("XDG_RUNTIME_DIR").stdin(std::process::Stdio::null());
        let state = sb.root.join("state");
        c.env("PORTCULLIS_AUDIT_LOG", state.join("audit.log")).env("PORTCULLIS_AUDIT_KEY", state.join("audit.key"));
        c.env("PORTCULLIS_BROKER", "off").env("PORTCULLIS_GRANTS", state.join("grants.json"));
        Run::from(c.output().unwrap())
    };
    let gated = run(&p, &["proc-name", "/proc/self/status"]);
    assert!(gated.stderr.contains("could not be mounted"), "the setup must defeat the private /proc: {}", gated.stderr);
    gated.expect("Name:\tportcullis-prob");
    // Twin: strict does not park reads; the kernel resolves /proc/self itself.
    run("strict", &["proc-name", "/proc/self/status"]).expect("Name:\tportcullis-prob");
    // The gate acts as the supervisor, which procfs lets into its own
    // directory unchecked: /proc/<supervisor>/environ (or mem, with the
    // audit key) opened for the sandbox. No process's environ opens now,
    // the supervisor's included (every other one Landlock refuses anyway).
    run(&p, &["proc-environs"]).expect("opened 0");
    // Twins: the rest of that /proc still reads through the gate, and in
    // the sandbox's own /proc (which shows no process of ours) a process
    // directory does too.
    run(&p, &["read", "/proc/cpuinfo"]).expect("ok");
    probe_gate(&sb, &p, &["read", "/proc/1/status"]).expect("ok");
}

#[test]
fn ask_on_an_always_denied_syscall_is_a_profile_error() {
    let sb = Sandbox::new("gate-floor", As::Caller);
    let p = sb.profile("bad.toml", "extends = \"strict\"\n[ask]\nsyscalls = [\"ptrace\"]\n");
    let r = sb.run(&["run", "--profile", &p, "--", "/bin/true"]);
    assert_eq!(r.code, 125);
    assert!(r.stderr.contains("bad.toml:3:") && r.stderr.contains("ptrace"), "{}", r.stderr);
    let _ = Path::new(&p);
    // The sandbox hands its approval filter over with sendmsg: parked, that
    // hand-off waited for a gate that starts with it, and the launch hung.
    let p = sb.profile("handoff.toml", "extends = \"strict\"\n[ask]\nsyscalls = [\"sendmsg\"]\n");
    let r = sb.run(&["run", "--profile", &p, "--", "/bin/true"]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("handoff.toml:3:") && r.stderr.contains("`sendmsg` cannot be asked"), "{}", r.stderr);
    // The sandbox reads its go-ahead, closes its fds, looks for the
    // go-ahead without sleeping and takes back its CPUs under its own
    // filters: parked, those waited for an answer that could only be
    // recorded once the command had started (the last three hung). It
    // reports a failed exec with write and then exits: parked (and so
    // failing once the gate's listener is closed), that exec looked made.
    for name in
        ["read", "close", "close_range", "poll", "sched_yield", "sched_setaffinity", "write", "exit", "exit_group"]
    {
        let p = sb.profile("startup.toml", &format!("extends = \"strict\"\n[ask]\nsyscalls = [\"{name}\"]\n"));
        let r = sb.run(&["run", "--profile", &p, "--", "/bin/true"]);
        assert_eq!(r.code, 125, "{}", r.stderr);
        assert!(
            r.stderr.contains("startup.toml:3:") && r.stderr.contains(&format!("`{name}` cannot be asked")),
            "{}",
            r.stderr
        );
    }
}

/// With chmod allowed, the gate checks no mode change against the write
/// rules (fchmod names no path): `run` says so at launch, and the limit is
/// real, a protected hook can be made executable. strict alone says nothing
/// (and denies chmod outright). Run as nobody: as root chmod = true is
/// refused.
#[test]
fn chmod_beside_write_rules_is_a_limit_said_at_launch() {
    use std::os::unix::fs::PermissionsExt;
    // As root, chmod = true is refused outright.
    let Some(sb) = Sandbox::nobody("gate-chmod") else { return };
    let p = setup(&sb);
    let hook = sb.ws.join(".git/hooks/pre-push");
    std::fs::write(&hook, "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::chown(&hook, Some(NOBODY), Some(NOBODY)).unwrap();
    let chmod = sb.profile("chmod.toml", &format!("extends = \"{p}\"\n[filesystem]\nchmod = true\n"));
    let r = probe_gate(&sb, &chmod, &["chmod", &sb.path(&hook), "493"]);
    r.expect("ok");
    assert!(
        r.stderr.contains("chmod = true: mode changes are not checked against the [deny] and [ask] write rules"),
        "{}",
        r.stderr
    );
    assert_eq!(std::fs::metadata(&hook).unwrap().permissions().mode() & 0o777, 0o755);
    // Twin: the same profile without chmod denies it, and says nothing.
    std::fs::set_permissions(&hook, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = probe_gate(&sb, &p, &["chmod", &sb.path(&hook), "493"]);
    r.expect("errno 1 EPERM");
    assert!(!r.stderr.contains("chmod = true"), "{}", r.stderr);
    assert_eq!(std::fs::metadata(&hook).unwrap().permissions().mode() & 0o777, 0o644);
}

/// strict asks before agent and editor configs in the home change
/// (`~/.claude.json`, `~/.cursor`, `~/.config/Claude`), and those hold the
/// API keys of the servers they launch. Asking about writes used to grant
/// reading them, unasked; a path only asked about for writing now gets
/// Landlock's write rights alone.
#[test]
fn asking_before_a_write_grants_no_read() {
    let sb = Sandbox::new("ask-write-no-read", As::Caller);
    std::fs::create_dir_all(sb.home.join(".cursor")).unwrap();
    for f in [".claude.json", ".cursor/mcp.json"] {
        let path = sb.home.join(f);
        std::fs::write(&path, "{\"env\":{\"API_KEY\":\"sk-not-for-the-sandbox\"}}\n").unwrap();
        let p = sb.path(&path);
        probe_gate(&sb, "strict", &["read", &p]).expect("errno 13 EACCES");
        // Writing is still asked: with no broker, the answer is no.
        probe_gate(&sb, "strict", &["write", &p]).expect("errno 13 EACCES");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"env\":{\"API_KEY\":\"sk-not-for-the-sandbox\"}}\n");
        // Twins: a read the run grants outright goes through, and so does
        // a write a person allowed (a saved grant), with the write rights
        // alone; reading stays refused.
        probe_with(&sb, &["--profile", "strict", "--read", &p], &["read", &p]).expect("ok");
        let grants = sb.root.join("state/grants.json");
        std::fs::create_dir_all(grants.parent().unwrap()).unwrap();
        let grant = serde_json::json!({"version": 1, "grants": [{
            "id": "g1", "profile": "strict", "access": "write", "target": p,
            "allow": true, "scope": "always", "created": 0, "by": "cli"}]});
        std::fs::write(&grants, grant.to_string()).unwrap();
        probe_gate(&sb, "strict", &["write", &p]).expect("ok");
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("}\nprobe\n"));
        probe_gate(&sb, "strict", &["read", &p]).expect("errno 13 EACCES");
        std::fs::remove_file(&grants).unwrap();
    }
}

/// An `[ask] syscalls` rule on a call the gate decides by what it names
/// (a path, an executable, an address) was parked, then judged by the path
/// rules alone: with none naming its target, the file was removed unasked,
/// where an ask without a broker is denied. Such a rule is a profile error
/// that names the rule to use.
#[test]
fn ask_by_name_on_a_call_the_gate_decides_by_target_is_a_profile_error() {
    let sb = Sandbox::new("gate-by-target", As::Caller);
    let victim = ws(&sb, "victim.txt");
    std::fs::write(&victim, "keep\n").unwrap();
    for (names, rule) in [
        ("\"unlink\", \"unlinkat\"", "write"),
        ("\"openat\"", "read or write"),
        ("\"execve\"", "exec"),
        ("\"connect\"", "connect"),
    ] {
        let p = sb.profile(
            "bytarget.toml",
            &format!("extends = \"strict\"\n[ask]\ninherit = false\nsyscalls = [{names}]\n[deny]\ninherit = false\n"),
        );
        let r = probe_gate(&sb, &p, &["unlink", &victim]);
        assert_eq!(r.code, 125, "{names}: {} {}", r.stdout, r.stderr);
        assert!(
            r.stderr.contains("bytarget.toml:4:")
                && r.stderr.contains("cannot be asked by name")
                && r.stderr.contains(&format!("[ask] {rule} rules")),
            "{names}: {}",
            r.stderr
        );
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
    }
    // Twin: a path rule asks about the same removal, and with no broker the
    // answer is no.
    let p = sb.profile("bypath.toml", "extends = \"strict\"\n[ask]\nwrite = [\"{workspace}/victim.txt\"]\n");
    probe_gate(&sb, &p, &["unlink", &victim]).expect("errno 13 EACCES");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep\n");
}

#[test]
fn a_profile_denying_read_fails_before_exec_and_says_why() {
    // The sandbox reads portcullis's go-ahead under its own filters: a
    // profile that denies read(2) outright stops there, with the errno.
    let sb = Sandbox::new("deny-read", As::Caller);
    let p = sb.profile("noread.toml", "extends = \"strict\"\n[syscalls]\ndeny = [\"read\"]\n");
    let r = sb.probe(&["--profile", &p], &["read", &ws(&sb, "file.txt")]);
    assert_eq!(r.code, 125, "{} {}", r.stdout, r.stderr);
    assert!(
        r.stderr.contains("go-ahead: Operation not permitted") && r.stderr.contains("nothing was run"),
        "{}",
        r.stderr
    );
    assert!(r.stdout.is_empty(), "{}", r.stdout);
}

#[test]
fn a_profile_denying_landlock_restrict_self_is_still_confined_by_landlock() {
    // The command installs its seccomp program before Landlock, unless the
    // program would refuse a call it makes on the way to exec
    // (sandbox::filters_first): this profile denies landlock_restrict_self,
    // so Landlock comes first and still holds. In the other order the
    // launch would fail closed (exit 125: Landlock refused by the program).
    let sb = Sandbox::new("deny-llrs", As::Caller);
    let p = sb.profile("nollrs.toml", "extends = \"strict\"\n[syscalls]\ndeny = [\"landlock_restrict_self\"]\n");
    let secret = sb.path(&sb.outside.join("secret.txt"));
    sb.probe(&["--profile", &p], &["read", &secret]).expect("errno 13 EACCES");
    // Twin: the workspace is readable, so the command did run.
    sb.probe(&["--profile", &p], &["read", &ws(&sb, "file.txt")]).expect("ok");
}

/// Accepts (and counts) every connection a listener gets, until stopped.
struct Drain {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<usize>,
}

impl Drain {
    fn start(listener: std::net::TcpListener) -> Drain {
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                match listener.accept() {
                    Ok(_) => n += 1,
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(1)),
                }
            }
            n
        });
        Drain { stop, thread }
    }

    /// How many connections arrived.
    fn stop(self) -> usize {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.thread.join().unwrap()
    }
}

/// A broker of our own, in the foreground, for one test.
struct TestBroker {
    dir: std::path::PathBuf,
    child: std::process::Child,
}

impl TestBroker {
    fn start(sb: &Sandbox) -> TestBroker {
        let dir = sb.root.join("broker");
        let child = Command::new(PORTCULLIS)
            .args(["broker", "--foreground"])
            .env("PORTCULLIS_BROKER_DIR", &dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !dir.join("broker.sock").exists() {
            assert!(std::time::Instant::now() < until, "broker did not start");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        TestBroker { dir, child }
    }

    fn cli(&self, args: &[&str]) -> Run {
        Run::from(Command::new(PORTCULLIS).args(args).env("PORTCULLIS_BROKER_DIR", &self.dir).output().unwrap())
    }

    /// Waits for the one pending request and returns it.
    fn next(&self) -> serde_json::Value {
        let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            let r = self.cli(&["approvals", "--json"]);
            let list: Vec<serde_json::Value> = serde_json::from_str(&r.stdout).unwrap_or_default();
            if let Some(v) = list.into_iter().next() {
                return v;
            }
            assert!(std::time::Instant::now() < until, "no request reached the broker");
            std::thread::sleep(std::time::Duration::from_millis(30));
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `portcullis run` of the probe with a broker, in the background.
fn spawn_with_broker(sb: &Sandbox, b: &TestBroker, profile: &str, args: &[&str]) -> std::process::Child {
    run_with_broker(sb, b, profile, args).spawn().unwrap()
}

/// The command [`spawn_with_broker`] starts, stdout and stderr piped.
fn run_with_broker(sb: &Sandbox, b: &TestBroker, profile: &str, args: &[&str]) -> Command {
    let mut all: Vec<&str> = vec!["run", "--profile", profile, "--exec", PROBE, "--", PROBE];
    all.extend_from_slice(args);
    let mut c = sb.portcullis(&all);
    c.env("PORTCULLIS_BROKER_DIR", &b.dir)
        .env("PORTCULLIS_GRANTS", sb.root.join("state/grants.json"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    c
}

/// A sandbox whose `{workspace}/ask` is asked about before any write (a
/// 120 s timeout), the profile saying so, the path of a new file there, and
/// a broker to answer.
fn ask_dir(name: &str) -> (Sandbox, String, String, TestBroker) {
    let sb = Sandbox::new(name, As::Caller);
    let p = sb.profile("askw.toml", "extends = \"strict\"\n[ask]\nwrite = [\"{workspace}/ask\"]\ntimeout = \"120s\"\n");
    std::fs::create_dir(sb.ws.join("ask")).unwrap();
    let target = ws(&sb, "ask/new");
    let b = TestBroker::start(&sb);
    (sb, p, target, b)
}

/// The first `approval` record in the sandbox's audit log.
fn approval_in_log(sb: &Sandbox) -> serde_json::Value {
    let log = sb.root.join("state/audit.log");
    let out = Command::new(PORTCULLIS).args(["audit", "list", "--json", "--log"]).arg(&log).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let rec = text.lines().find(|l| l.contains("\"approval\"")).unwrap_or_else(|| panic!("no approval record: {text}"));
    serde_json::from_str(rec).unwrap()
}

// THREATS #22, teardown: the command exits while a process it left behind
// is parked on a question to a person. The run ends with the command (not
// at the ask's timeout), the question is withdrawn, an answer given later
// does nothing, and the log keeps the question: nobody answered it.
#[test]
fn a_run_ends_with_its_command_while_a_question_is_out() {
    let (sb, p, target, b) = ask_dir("gate-teardown");
    let mut c = run_with_broker(&sb, &b, &p, &["leave-behind", "create", &target]);
    let mut child = c.stdin(std::process::Stdio::piped()).spawn().unwrap();
    let req = b.next();
    assert_eq!(req["target"], target.as_str(), "{req}");
    // The command exits; its child stays parked in open().
    drop(child.stdin.take());
    // Not a speed check: a run that waited for the question would take 120 s.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < until, "the run waited for the question");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    Run::from(child.wait_with_output().unwrap()).expect("ok");
    assert_eq!(b.cli(&["approvals", "--json"]).stdout.trim(), "[]");
    assert_ne!(b.cli(&["approve", req["id"].as_str().unwrap()]).code, 0);
    assert!(!sb.ws.join("ask/new").exists());
    let rec = approval_in_log(&sb);
    assert_eq!(rec["body"]["decision"], "deny", "{rec}");
    assert_eq!(rec["body"]["by"], "portcullis", "{rec}");
    assert_eq!(rec["body"]["request"]["target"], target.as_str(), "{rec}");
}

// THREATS #14: a caller dies while its question is out (its TID is then
// free for reuse). An approval must do nothing for the dead caller: the gate
// checks that each parked notification is still valid before acting on it.
// Two callers share one question to create the same file with O_EXCL; the
// first is killed and reaped, then a person approves. The survivor gets the
// file: had the gate created it for the dead caller first, the survivor
// would get EEXIST (and the test says so).
#[test]
fn an_approval_does_nothing_for_a_caller_that_died_while_parked() {
    use std::io::{BufRead, Write};
    let (sb, p, target, b) = ask_dir("gate-dead-caller");
    let mut c = run_with_broker(&sb, &b, &p, &["kill-first-parked", &target]);
    let mut child = c.stdin(std::process::Stdio::piped()).spawn().unwrap();
    let req = b.next();
    assert_eq!(req["target"], target.as_str(), "{req}");
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "killed");
    assert_eq!(b.cli(&["approve", req["id"].as_str().unwrap()]).code, 0);
    line.clear();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ok", "the survivor of the two callers: EEXIST means the file was made for the dead one");
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(sb.ws.join("ask/new").exists());
    // Both callers were parked on the one answer (the dead one was passed
    // over, not missing).
    let rec = approval_in_log(&sb);
    assert_eq!(
        (rec["body"]["decision"].as_str(), rec["body"]["coalesced"].as_u64()),
        (Some("allow"), Some(2)),
        "{rec}"
    );
}

#[test]
fn a_person_approves_denies_and_always_allows_through_the_broker() {
    let sb = Sandbox::new("gate-broker", As::Caller);
    let p = setup(&sb);
    let b = TestBroker::start(&sb);
    let target = ws(&sb, "ask.txt");

    // Allow once.
    let child = spawn_with_broker(&sb, &b, &p, &["read", &target]);
    let req = b.next();
    assert_eq!(req["kind"], "open-read", "{req}");
    assert_eq!(req["target"], target.as_str(), "{req}");
    assert!(req["detail"].as_str().unwrap().contains("O_RDONLY"), "{req}");
    assert!(req["command"].to_string().contains("portcullis-probe") || req.to_string().contains("portcullis-probe"));
    assert_eq!(b.cli(&["approve", req["id"].as_str().unwrap()]).code, 0);
    Run::from(child.wait_with_output().unwrap()).expect("ok");

    // Deny once.
    let child = spawn_with_broker(&sb, &b, &p, &["read", &target]);
    let req = b.next();
    assert_eq!(b.cli(&["deny", req["id"].as_str().unwrap()]).code, 0);
    Run::from(child.wait_with_output().unwrap()).expect("errno 13 EACCES");

    // Always allow: persisted, so the next run needs nobody.
    let child = spawn_with_broker(&sb, &b, &p, &["read", &target]);
    let req = b.next();
    assert_eq!(b.cli(&["approve", "--always", req["id"].as_str().unwrap()]).code, 0);
    Run::from(child.wait_with_output().unwrap()).expect("ok");
    let grants_env = [("PORTCULLIS_GRANTS", sb.root.join("state/grants.json"))];
    let list = Command::new(PORTCULLIS).args(["grants", "list", "--json"]).envs(grants_env.clone()).output().unwrap();
    let grants: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(grants.len(), 1, "{grants:?}");
    assert_eq!((grants[0]["target"].as_str(), grants[0]["allow"].as_bool()), (Some(target.as_str()), Some(true)));
    probe_gate(&sb, &p, &["read", &target]).expect("ok");

    // Revoked: asked again (and with no broker, denied).
    let id = grants[0]["id"].as_str().unwrap();
    let r = Command::new(PORTCULLIS).args(["grants", "revoke", id]).envs(grants_env).output().unwrap();
    assert!(r.status.success());
    probe_gate(&sb, &p, &["read", &target]).expect("errno 13 EACCES");
}

#[test]
fn supervisor_death_while_parked_kills_the_sandbox_and_acts_on_nothing() {
    let sb = Sandbox::new("gate-death", As::Caller);
    let p = sb.profile("askw.toml", "extends = \"strict\"\n[ask]\nwrite = [\"{workspace}/file.txt\"]\n");
    let b = TestBroker::start(&sb);
    let mut child = spawn_with_broker(&sb, &b, &p, &["write", &ws(&sb, "file.txt")]);
    let _req = b.next();
    // The probe is parked in open(); kill the supervisor outright.
    let probe_pids = |ws: &str| -> Vec<u32> {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .filter(|pid| {
                std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| {
                    let c = String::from_utf8_lossy(&c);
                    c.starts_with(PROBE) && c.contains(ws)
                })
            })
            .collect()
    };
    let wsp = ws(&sb, "file.txt");
    assert!(!probe_pids(&wsp).is_empty(), "the probe should be parked");
    child.kill().unwrap();
    let _ = child.wait();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !probe_pids(&wsp).is_empty() {
        assert!(std::time::Instant::now() < until, "the sandbox outlived its supervisor");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert_eq!(std::fs::read_to_string(sb.ws.join("file.txt")).unwrap(), "inside\n");
}

#[test]
fn a_flood_of_asks_keeps_the_supervisor_small() {
    // 100,000 distinct asked opens from 4 threads, no broker: each is
    // denied, the supervisor's memory stays bounded, and the log says how
    // many denials it summarised instead of recording one by one.
    let sb = Sandbox::new("gate-flood", As::Caller);
    std::fs::create_dir_all(sb.ws.join("vault")).unwrap();
    let p = sb.profile("vault.toml", "extends = \"strict\"\n[ask]\nread = [\"{workspace}/vault\"]\n");
    let r = probe_gate(&sb, &p, &["flood-open", &ws(&sb, "vault"), "100000", "4"]);
    r.expect("denied 100000 of 100000");
    let out = Command::new(PORTCULLIS)
        .args(["audit", "export", "--format", "json", "--log"])
        .arg(sb.root.join("state/audit.log"))
        .output()
        .unwrap();
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let exit = records.iter().rev().find(|r| r["kind"] == "exit").expect("an exit record");
    let rss = exit["body"]["supervisor_max_rss_kb"].as_i64().unwrap();
    assert!(rss > 0 && rss < 128 * 1024, "supervisor peak RSS {rss} KiB");
    let approvals = records.iter().filter(|r| r["kind"] == "approval").count();
    // The gate's summary (the kernel-audit watcher may write its own).
    let summary = records.iter().find(|r| r["body"]["summary"] == true && r["body"]["source"].is_null());
    let dropped = summary.map_or(0, |s| s["body"]["records_dropped_in_flood"].as_u64().unwrap_or(0));
    assert_eq!(approvals as u64 + dropped, 100_000, "every ask is either recorded or counted");
}

#[test]
fn the_sandbox_cannot_use_the_broker_even_with_unix_sockets() {
    // With AF_UNIX sockets allowed, the sandbox can reach the socket file,
    // but the broker refuses peers outside its own user and PID namespaces:
    // a sandbox must never list, let alone answer, its own requests.
    let sb = Sandbox::new("gate-broker-reach", As::Caller);
    let b = TestBroker::start(&sb);
    let p = sb.profile("unix.toml", "extends = \"strict\"\n[ipc]\nunix = true\n");
    let sock = sb.path(&b.dir.join("broker.sock"));
    let r = probe_gate(&sb, &p, &["unix-talk", &sock, r#"{"v":1,"type":"list"}"#]);
    let v = r.verdict();
    assert!(v.starts_with("reply ") || v.starts_with("errno "), "{}\n{}", r.stdout, r.stderr);
    assert!(!v.contains("\"pending\""), "the sandbox was served: {v}");
    if v.starts_with("reply ") {
        assert!(v.contains("error"), "{v}");
    }
    // Twin: the same line from outside the sandbox is answered.
    let outside = b.cli(&["approvals", "--json"]);
    assert_eq!((outside.code, outside.stdout.trim()), (0, "[]"), "{}", outside.stderr);
}

// The command's own exec asked at launch: portcullis waits for a person
// before the command runs. A SIGTERM (a Ctrl-C, an MCP client giving up)
// then ended nothing until the ask timed out: signals are blocked until the
// command has exec'd. Now it goes to the stage at once; the command never ran.
#[test]
fn a_signal_while_the_launch_waits_for_an_ask_ends_the_run() {
    let sb = Sandbox::new("gate-launch-signal", As::Caller);
    let b = TestBroker::start(&sb);
    let p =
        sb.profile("askself.toml", &format!("extends = \"strict\"\n[ask]\nexec = [\"{PROBE}\"]\ntimeout = \"60s\"\n"));
    let mut child = spawn_with_broker(&sb, &b, &p, &["pid"]);
    let req = b.next();
    assert_eq!(req["kind"], "exec", "{req}");
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM);
    // Long before the ask's 60 s.
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        assert!(std::time::Instant::now() < until, "portcullis ignored SIGTERM while the launch waited");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let r = Run::from(child.wait_with_output().unwrap());
    assert_eq!(r.code, 143, "{}\n{}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("pid "), "the command never ran: {}", r.stdout);
    // Twin: approved, the same launch runs the command.
    let child = spawn_with_broker(&sb, &b, &p, &["pid"]);
    let req = b.next();
    assert_eq!(b.cli(&["approve", req["id"].as_str().unwrap()]).code, 0);
    let r = Run::from(child.wait_with_output().unwrap());
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("pid "), "{}", r.stdout);
}

#[test]
fn an_approved_exec_runs_and_always_deny_sticks() {
    let sb = Sandbox::new("gate-exec-ok", As::Caller);
    let b = TestBroker::start(&sb);
    let p = sb.profile("askexec.toml", "extends = \"strict\"\n[ask]\nexec = [\"/bin/true\"]\n");
    // Approve: the exec happens (the probe reports its own exec status).
    let child = spawn_with_broker(&sb, &b, &p, &["exec", "/bin/true"]);
    let req = b.next();
    assert_eq!(req["kind"], "exec", "{req}");
    assert!(req["detail"].as_str().unwrap().contains("/bin/true") || req["detail"].as_str().unwrap().contains("true"));
    assert_eq!(b.cli(&["approve", req["id"].as_str().unwrap()]).code, 0);
    let out = child.wait_with_output().unwrap();
    let r = Run::from(out);
    assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
    // Always deny: saved, and the next run is refused without asking anyone.
    let child = spawn_with_broker(&sb, &b, &p, &["exec", "/bin/true"]);
    let req = b.next();
    assert_eq!(b.cli(&["deny", "--always", req["id"].as_str().unwrap()]).code, 0);
    Run::from(child.wait_with_output().unwrap()).expect("errno 13 EACCES");
    let started = std::time::Instant::now();
    let child = spawn_with_broker(&sb, &b, &p, &["exec", "/bin/true"]);
    Run::from(child.wait_with_output().unwrap()).expect("errno 13 EACCES");
    assert!(started.elapsed() < std::time::Duration::from_secs(60), "no one was asked");
    let r = b.cli(&["approvals", "--json"]);
    assert_eq!(r.stdout.trim(), "[]");
}

// THREATS #39: an approved exec is CONTINUEd, so the kernel reads the name
// again, and a thread can change it after the approval. What holds is
// Landlock's exec allowlist: another program runs only if the profile lets
// it execute. 300 execs of a name flipping between true (asked, approved
// for the session) and false (not executable): false never runs; the kernel
// refuses it. Twin: false is executable but asked too, and every question
// about it is denied, so false can run only by a swap after an approval of
// true: it does.
#[test]
fn an_approved_exec_raced_to_another_program_runs_only_what_landlock_allows() {
    let sb = Sandbox::new("gate-exec-race", As::Caller);
    let b = TestBroker::start(&sb);
    let race = |profile: &str| -> [u32; 4] {
        let mut child = spawn_with_broker(&sb, &b, profile, &["race-exec", "/usr/bin/true", "/usr/bin/false", "300"]);
        let until = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            assert!(std::time::Instant::now() < until, "the race did not finish");
            let list = b.cli(&["approvals", "--json"]).stdout;
            for req in serde_json::from_str::<Vec<serde_json::Value>>(&list).unwrap_or_default() {
                let id = req["id"].as_str().unwrap();
                match req["target"].as_str() {
                    Some("/usr/bin/true") => b.cli(&["approve", "--session", id]),
                    _ => b.cli(&["deny", "--always", id]),
                };
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let r = Run::from(child.wait_with_output().unwrap());
        assert_eq!(r.code, 0, "{}\n{}", r.stdout, r.stderr);
        let words: Vec<&str> = r.stdout.split_whitespace().collect();
        let count = |w: &str| words.iter().position(|x| *x == w).and_then(|i| words[i + 1].parse().ok()).unwrap();
        eprintln!("race-exec under {profile}: {}", r.stdout.trim());
        [count("first"), count("second"), count("refused"), count("other")]
    };
    let p = sb.profile("askexec.toml", "extends = \"strict\"\n[ask]\nexec = [\"/usr/bin/true\"]\n");
    let [first, second, refused, other] = race(&p);
    assert_eq!(second, 0, "false ran: true {first}, false {second}, refused {refused}, other {other}");
    assert!(first > 0 && refused > 0, "the race never happened: true {first}, refused {refused}, other {other}");
    let twin = sb
        .profile("askexec-both.toml", "extends = \"strict\"\n[ask]\nexec = [\"/usr/bin/true\", \"/usr/bin/false\"]\n");
    let [first, second, refused, other] = race(&twin);
    assert!(first > 0 && second > 0, "twin: true {first}, false {second}, refused {refused}, other {other}");
}

#[test]
fn the_interactive_queue_answers_with_one_key() {
    // `portcullis approvals` on a real terminal (a pty through script(1)):
    // the request is shown, `y` allows it once, `q` quits.
    if Command::new("script").arg("--version").output().is_err() {
        return skip("script (util-linux) is needed to give `approvals` a terminal");
    }
    let sb = Sandbox::new("gate-tui", As::Caller);
    let p = setup(&sb);
    let b = TestBroker::start(&sb);
    let target = ws(&sb, "ask.txt");
    let child = spawn_with_broker(&sb, &b, &p, &["read", &target]);
    let _ = b.next();
    let mut tui = Command::new("script")
        .args(["-q", "-e", "-c", &format!("{PORTCULLIS} approvals"), "/dev/null"])
        .env("PORTCULLIS_BROKER_DIR", &b.dir)
        .env("TERM", "xterm")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut keys = tui.stdin.take().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    use std::io::Write;
    keys.write_all(b"y").unwrap();
    keys.flush().unwrap();
    Run::from(child.wait_with_output().unwrap()).expect("ok");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let _ = keys.write_all(b"q");
    drop(keys);
    let out = tui.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(screen.contains("ask.txt"), "the queue showed the request: {screen}");
}

#[test]
fn an_always_answer_for_an_mcp_tool_is_saved_for_the_profile() {
    use std::io::{BufRead, Write};
    const PYTHON: &str = "/usr/bin/python3";
    if !Path::new(PYTHON).exists() {
        return skip("/usr/bin/python3 is needed for the fake MCP server");
    }
    let sb = Sandbox::new("gate-mcp-always", As::Caller);
    let b = TestBroker::start(&sb);
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let server = sb.path(&repo.join("tests/mcp/fake_server.py"));
    let mcp_dir = sb.path(&repo.join("tests/mcp"));
    let profile = sb.profile("ask.toml", "extends = \"python\"\n[mcp.tools]\nask = [\"big\"]\n");
    let grants = sb.root.join("state/grants.json");
    let call = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/call\",\"params\":{\"name\":\"big\",\"arguments\":{\"n\":3}}}\n";
    let session = |with_broker: bool| -> serde_json::Value {
        let mut c = sb.portcullis(&[
            "run",
            "--mcp",
            "--profile",
            &profile,
            "--read",
            &mcp_dir,
            "--exec",
            PYTHON,
            "--",
            PYTHON,
            &server,
        ]);
        c.env("PORTCULLIS_GRANTS", &grants).env("XDG_STATE_HOME", sb.root.join("state"));
        if with_broker {
            c.env("PORTCULLIS_BROKER_DIR", &b.dir);
        } else {
            c.env("PORTCULLIS_BROKER", "off");
        }
        let mut child = c
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut input = child.stdin.take().unwrap();
        input.write_all(call.as_bytes()).unwrap();
        input.flush().unwrap();
        if with_broker {
            let req = b.next();
            assert_eq!((req["kind"].as_str(), req["target"].as_str()), (Some("tool"), Some("big")), "{req}");
            assert_eq!(b.cli(&["approve", "--always", req["id"].as_str().unwrap()]).code, 0);
        }
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        drop(input);
        let _ = child.wait();
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"))
    };
    let first = session(true);
    assert_eq!(first["result"]["content"][0]["text"], "xxx", "{first}");
    // The next run asks nobody (no broker at all): the saved grant answers.
    let second = session(false);
    assert_eq!(second["result"]["content"][0]["text"], "xxx", "{second}");
    let list =
        Command::new(PORTCULLIS).args(["grants", "list", "--json"]).env("PORTCULLIS_GRANTS", &grants).output().unwrap();
    let saved: Vec<serde_json::Value> = serde_json::from_slice(&list.stdout).unwrap();
    assert!(saved.iter().any(|g| g["access"] == "tool" && g["target"] == "big" && g["allow"] == true), "{saved:?}");
}

#[test]
fn a_corrupt_grants_file_refuses_the_run_and_says_where() {
    // A lost "always deny" would weaken the policy: no guessing, no run.
    let sb = Sandbox::new("gate-grants-corrupt", As::Caller);
    let p = setup(&sb);
    let grants = sb.root.join("state/grants.json");
    std::fs::create_dir_all(grants.parent().unwrap()).unwrap();
    std::fs::write(&grants, "{\"version\": 1, \"grants\": [\n  {\"id\": 3}\n]}\n").unwrap();
    let r = probe_gate(&sb, &p, &["read", &ws(&sb, "file.txt")]);
    assert_eq!(r.code, 125, "{}\n{}", r.stdout, r.stderr);
    assert!(r.stderr.contains("grants.json:") && r.stderr.contains("does not parse"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "nothing ran: {}", r.stdout);
}

// A grant's target is a name the sandbox chose (a file it asked to write):
// `grants list` shows it escaped, so it cannot repaint the list or reorder
// itself on screen.
#[test]
fn grants_list_shows_a_planted_name_escaped() {
    let sb = Sandbox::new("gate-grants-names", As::Caller);
    let grants = sb.root.join("state/grants.json");
    std::fs::create_dir_all(grants.parent().unwrap()).unwrap();
    let grant = serde_json::json!({"version": 1, "grants": [{
        "id": "g1", "profile": "strict", "access": "write", "target": "/w/\u{1b}[2J\u{202e}txt.exe\ng2  strict  allow  write  /etc",
        "allow": true, "scope": "always", "created": 0, "by": "cli"}]});
    std::fs::write(&grants, grant.to_string()).unwrap();
    let r = Run::from(
        Command::new(PORTCULLIS).args(["grants", "list"]).env("PORTCULLIS_GRANTS", &grants).output().unwrap(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("/w/\\x1b[2J\\u{202e}txt.exe\\ng2"), "{}", r.stdout);
    assert_eq!(r.stdout.lines().count(), 2, "a header and one grant, no forged line: {}", r.stdout);
    assert!(!r.stdout.contains('\u{1b}') && !r.stdout.contains('\u{202e}'), "{:?}", r.stdout);
}

both!(git_redirects_are_protected_too, |sb| {
    // Git takes config and hooks from $GIT_DIR/commondir's target, from
    // worktrees/ and modules/, and from a `.git` *file* naming another git
    // dir: each would run code the sandbox planted without touching hooks/.
    let p = setup(sb);
    // Nor opened through a symlink by a create that must not follow it
    // (O_CREAT|O_EXCL on a name that is there is EEXIST, a reviewer's
    // write through `cfg -> .git/config` ran core.fsmonitor), nor a directory.
    std::os::unix::fs::symlink(".git/config", sb.ws.join("cfg")).unwrap();
    if sb.who == As::Nobody {
        std::os::unix::fs::lchown(sb.ws.join("cfg"), Some(NOBODY), Some(NOBODY)).unwrap();
    }
    probe_gate(sb, &p, &["create", &ws(sb, "cfg"), &ws(sb, "file.txt")]).expect("errno 17 EEXIST");
    probe_gate(sb, &p, &["create", &ws(sb, ".git")]).expect("errno 17 EEXIST");
    assert_eq!(std::fs::read_to_string(sb.ws.join(".git/config")).unwrap(), "[core]\n");
    probe_gate(sb, &p, &["create", &ws(sb, ".git/commondir")]).expect("errno 13 EACCES");
    probe_gate(sb, &p, &["mkdir", &ws(sb, ".git/worktrees")]).expect("errno 13 EACCES");
    probe_gate(sb, &p, &["mkdir", &ws(sb, ".git/modules")]).expect("errno 13 EACCES");
    assert!(!sb.ws.join(".git/commondir").exists());
    std::fs::remove_dir_all(sb.ws.join(".git")).unwrap();
    probe_gate(sb, &p, &["create", &ws(sb, ".git")]).expect("errno 13 EACCES");
    assert!(!sb.ws.join(".git").exists());
    // Twins: the rest of .git stays writable (git itself works in the sandbox).
    probe_gate(sb, &p, &["mkdir", &ws(sb, ".git")]).expect("ok");
    probe_gate(sb, &p, &["create", &ws(sb, ".git/index")]).expect("ok");
    // A linked worktree or a submodule checkout has a `.git` file already:
    // writing it names another git dir just as well as creating it would.
    std::fs::remove_dir_all(sb.ws.join(".git")).unwrap();
    let gitfile = sb.ws.join(".git");
    std::fs::write(&gitfile, "gitdir: /srv/repo/.git/worktrees/w\n").unwrap();
    if sb.who == As::Nobody {
        std::os::unix::fs::chown(&gitfile, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    probe_gate(sb, &p, &["write", &ws(sb, ".git")]).expect("errno 13 EACCES");
    assert_eq!(std::fs::read_to_string(&gitfile).unwrap(), "gitdir: /srv/repo/.git/worktrees/w\n");
    // Nor cut: a submodule's `gitdir: ../.git/modules/sub` cut to
    // `gitdir: .` makes the submodule's directory the repository, and its
    // `config` is no `.git/config` (a helper's hunt ran core.fsmonitor so).
    probe_gate(sb, &p, &["truncate", &ws(sb, ".git")]).expect("errno 13 EACCES");
    assert_eq!(std::fs::read_to_string(&gitfile).unwrap(), "gitdir: /srv/repo/.git/worktrees/w\n");
    probe_gate(sb, &p, &["truncate", &ws(sb, "file.txt")]).expect("ok");
    // Twin: reading it (git in the sandbox does) stays allowed.
    probe_gate(sb, &p, &["read", &ws(sb, ".git")]).expect("ok");
});

both!(a_git_directory_under_another_name_is_held_to_the_git_rules, |sb| {
    // A `.git` *file* sends git to a git directory of any name: a bare
    // repository with worktrees beside it (`proj/.git` says `gitdir:
    // ./.bare`) or `git clone --separate-git-dir`. git obeys its config and
    // hooks as a `.git`'s (a helper's hunt appended an fsmonitor to
    // `proj/.bare/config` and the host's next `git status` ran it).
    let bare = sb.ws.join("proj/.bare");
    let sep = sb.ws.join("sep/repo-gitdir");
    for g in [&bare, &sep] {
        std::fs::create_dir_all(g.join("objects")).unwrap();
        std::fs::create_dir_all(g.join("refs/heads")).unwrap();
        std::fs::create_dir_all(g.join("hooks")).unwrap();
        std::fs::write(g.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(g.join("config"), "[core]\n").unwrap();
    }
    std::fs::create_dir_all(bare.join("worktrees/main")).unwrap();
    std::fs::write(bare.join("worktrees/main/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(bare.join("worktrees/main/commondir"), "../..\n").unwrap();
    std::fs::write(sb.ws.join("proj/.git"), "gitdir: ./.bare\n").unwrap();
    std::fs::create_dir_all(sb.ws.join("proj/main")).unwrap();
    std::fs::write(sb.ws.join("proj/main/.git"), "gitdir: ../.bare/worktrees/main\n").unwrap();
    std::fs::write(sb.ws.join("proj/main/file.txt"), "work\n").unwrap();
    std::fs::create_dir_all(sb.ws.join("sep/wt")).unwrap();
    std::fs::write(sb.ws.join("sep/wt/.git"), format!("gitdir: {}\n", sep.display())).unwrap();
    std::fs::create_dir_all(bare.join("objects/info")).unwrap();
    // A worktree checked out inside its bare repository: a work tree.
    let inside = sb.ws.join("inb/repo.git");
    for d in ["objects", "refs", "main"] {
        std::fs::create_dir_all(inside.join(d)).unwrap();
    }
    std::fs::write(inside.join("HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(inside.join("config"), "[core]\n").unwrap();
    std::fs::write(inside.join("main/.git"), "gitdir: ../worktrees/main\n").unwrap();
    if sb.who == As::Nobody {
        for d in ["proj", "sep", "inb"] {
            Command::new("chown").args(["-R", "65534:65534"]).arg(sb.ws.join(d)).status().unwrap();
        }
    }
    let strict = |args: &[&str]| probe_with(sb, &["--profile", "strict"], args);
    strict(&["write", &ws(sb, "proj/.bare/config")]).expect("errno 13 EACCES");
    strict(&["create", &ws(sb, "proj/.bare/hooks/pre-commit")]).expect("errno 13 EACCES");
    strict(&["create", &ws(sb, "proj/.bare/worktrees/main/config.worktree")]).expect("errno 13 EACCES");
    strict(&["write", &ws(sb, "sep/repo-gitdir/config")]).expect("errno 13 EACCES");
    // Nor moved away whole (its name freed for another).
    strict(&["rename", &ws(sb, "proj/.bare"), &ws(sb, "proj/old")]).expect("errno 13 EACCES");
    for g in [&bare, &sep] {
        assert_eq!(std::fs::read_to_string(g.join("config")).unwrap(), "[core]\n");
    }
    assert!(!bare.join("hooks/pre-commit").exists() && !bare.join("worktrees/main/config.worktree").exists());
    // Moving the project moves the repository along, still protected; but
    // no git directory can be built in its place (a `.git` file naming it
    // by an absolute path would send git there): git wants a HEAD.
    strict(&["rename", &ws(sb, "proj"), &ws(sb, "moved")]).expect("ok");
    strict(&["write", &ws(sb, "moved/.bare/config")]).expect("errno 13 EACCES");
    strict(&["mkdir", &ws(sb, "proj")]).expect("ok");
    strict(&["mkdir", &ws(sb, "proj/.bare")]).expect("ok");
    strict(&["create", &ws(sb, "proj/.bare/HEAD")]).expect("errno 13 EACCES");
    assert!(!sb.ws.join("proj/.bare/HEAD").exists());
    // Twins: the work trees beside them (or in them) stay writable.
    strict(&["write", &ws(sb, "moved/main/file.txt")]).expect("ok");
    strict(&["create", &ws(sb, "sep/wt/new.txt")]).expect("ok");
    strict(&["create", &ws(sb, "inb/repo.git/main/new.txt")]).expect("ok");
    strict(&["write", &ws(sb, "inb/repo.git/config")]).expect("errno 13 EACCES");
    // Only a `.git` file or directory marks a work tree's root: a socket of
    // that name (`bind` makes one without the gate, where unix sockets are
    // allowed) does not end the look short of the git directory.
    let unix = sb.profile("unix.toml", "extends = \"strict\"\n[ipc]\nunix = true\n");
    let with_unix = |args: &[&str]| probe_with(sb, &["--profile", &unix], args);
    with_unix(&["unix-bind", &ws(sb, "moved/.bare/hooks/.git")]).expect("ok");
    with_unix(&["create", &ws(sb, "moved/.bare/hooks/pre-commit")]).expect("errno 13 EACCES");
    assert!(!sb.ws.join("moved/.bare/hooks/pre-commit").exists());
    assert_eq!(std::fs::read_to_string(sb.ws.join("moved/main/file.txt")).unwrap(), "work\nprobe\n");
    // mcp-git writes a repository's objects but not its config: its finer
    // `**/.git/...` rules hold under the other name too.
    let p = sb.profile("protect.toml", PROTECT);
    probe_gate(sb, &p, &["write", &ws(sb, "moved/.bare/config")]).expect("errno 13 EACCES");
    probe_gate(sb, &p, &["create", &ws(sb, "moved/.bare/objects/ab")]).expect("ok");
    assert_eq!(std::fs::read_to_string(sb.ws.join("moved/.bare/config")).unwrap(), "[core]\n");
    // mcp-git lets `.git` directories be made (git init): one made inside
    // a git directory does not end the look upwards short of it.
    probe_gate(sb, &p, &["mkdir", &ws(sb, "moved/.bare/objects/.git")]).expect("ok");
    probe_gate(sb, &p, &["create", &ws(sb, "moved/.bare/objects/info/alternates")]).expect("errno 13 EACCES");
    // Nor does moving its HEAD aside (mcp-git's git writes HEAD) make it
    // no git directory: its objects beside its config still say it is.
    probe_gate(sb, &p, &["rename", &ws(sb, "moved/.bare/HEAD"), &ws(sb, "moved/.bare/H")]).expect("ok");
    probe_gate(sb, &p, &["write", &ws(sb, "moved/.bare/config")]).expect("errno 13 EACCES");
    // Nor can the workspace itself become a bare repository (git writes
    // `.git/HEAD`, never the workspace's), nor a directory point at a
    // common git directory of the sandbox's making (`commondir`, whose
    // target needs no HEAD).
    probe_gate(sb, &p, &["create", &ws(sb, "HEAD")]).expect("errno 13 EACCES");
    probe_gate(sb, &p, &["create", &ws(sb, "moved/commondir")]).expect("errno 13 EACCES");
    assert!(!sb.ws.join("HEAD").exists() && !sb.ws.join("moved/.bare/objects/info/alternates").exists());
});

both!(strict_protects_git_at_any_depth_and_in_write_roots, |sb| {
    // strict's `**/.git/...` rules: a repository handed over with --write
    // (a git server's --repository, a filesystem server's directory: `wrap`
    // makes those --write roots, with an empty workspace of their own) and
    // one nested in the workspace are protected like the workspace's own.
    let repo = sb.outside.join("repo");
    let nested = sb.ws.join("vendor/lib");
    for r in [&repo, &nested] {
        std::fs::create_dir_all(r.join(".git/hooks")).unwrap();
        std::fs::write(r.join(".git/config"), "[core]\n").unwrap();
        std::fs::write(r.join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
    }
    if sb.who == As::Nobody {
        for p in [&sb.ws.join("vendor"), &repo] {
            Command::new("chown").args(["-R", "65534:65534"]).arg(p).status().unwrap();
        }
    }
    let repo_s = sb.path(&repo);
    let run = |args: &[&str]| probe_with(sb, &["--profile", "strict", "--write", &repo_s], args);
    let at = |rel: &str| sb.path(&repo.join(rel));
    run(&["write", &at(".git/config")]).expect("errno 13 EACCES");
    run(&["create", &at(".git/hooks/post-checkout")]).expect("errno 13 EACCES");
    run(&["write", &ws(sb, "vendor/lib/.git/config")]).expect("errno 13 EACCES");
    run(&["create", &ws(sb, "vendor/lib/.git/hooks/pre-commit")]).expect("errno 13 EACCES");
    // A `gitdir:` file made anywhere, a tree renamed to `.git`, or a `.git` moved away.
    run(&["create", &ws(sb, "vendor/.git")]).expect("errno 13 EACCES");
    run(&["mkdir", &at("sub")]).expect("ok");
    run(&["create", &at("sub/.git")]).expect("errno 13 EACCES");
    run(&["rename", &at("sub"), &ws(sb, "vendor/.git")]).expect("errno 13 EACCES");
    run(&["rename", &ws(sb, "vendor/lib/.git"), &ws(sb, "vendor/lib/git")]).expect("errno 13 EACCES");
    // The workspace root made a bare repository once `.git` is broken.
    run(&["create", &ws(sb, "HEAD")]).expect("errno 13 EACCES");
    for r in [&repo, &nested] {
        assert_eq!(std::fs::read_to_string(r.join(".git/config")).unwrap(), "[core]\n");
        assert!(std::fs::read_dir(r.join(".git/hooks")).unwrap().next().is_none());
    }
    assert!(!sb.ws.join("vendor/.git").exists() && !repo.join("sub/.git").exists() && repo.join("sub").is_dir());
    assert!(!sb.ws.join("HEAD").exists() && nested.join(".git").is_dir());
    // strict denies every `.git` whole: HEAD and the index too, and a new one.
    run(&["write", &at(".git/HEAD")]).expect("errno 13 EACCES");
    run(&["create", &ws(sb, "vendor/lib/.git/index")]).expect("errno 13 EACCES");
    run(&["mkdir", &at("sub/.git")]).expect("errno 13 EACCES");
    // Twins: the rest of those trees is the sandbox's.
    run(&["create", &at("notes.txt")]).expect("ok");
    run(&["create", &ws(sb, "vendor/HEAD.txt")]).expect("ok");
    // mcp-git, whose server writes .git, keeps the finer rules: git works
    // there (HEAD, the index), config and hooks stay out of reach, and a
    // `.git` directory made holds only names the rules still cover.
    let git = |args: &[&str]| probe_with(sb, &["--profile", "mcp-git", "--write", &repo_s], args);
    git(&["write", &at(".git/config")]).expect("errno 13 EACCES");
    git(&["create", &ws(sb, "vendor/lib/.git/hooks/pre-commit")]).expect("errno 13 EACCES");
    git(&["create", &ws(sb, "vendor/.git")]).expect("errno 13 EACCES");
    git(&["write", &at(".git/HEAD")]).expect("ok");
    git(&["create", &at(".git/index")]).expect("ok");
    git(&["create", &ws(sb, "vendor/lib/.git/index")]).expect("ok");
    git(&["mkdir", &at("sub/.git")]).expect("ok");
    git(&["create", &at("sub/.git/config")]).expect("errno 13 EACCES");
});

both!(uvs_cache_holds_no_repository_and_its_marker_stays_empty, |sb| {
    // python (and what extends it) lets uv write its cache. The `**/` rules
    // reach into it too: a reviewer built a repository there (`.git/config`
    // with core.fsmonitor) under an exception for the whole tree, renamed it
    // into the workspace, and git run there ran it. Only uv's marker is let
    // be, read-only: made, if missing, and empty for good.
    let cache = sb.home.join(".cache/uv");
    for d in ["sdists-v11", "built/.git/hooks", "plain"] {
        std::fs::create_dir_all(cache.join(d)).unwrap();
    }
    std::fs::write(cache.join("sdists-v11/.git"), "").unwrap();
    std::fs::write(sb.ws.join("gitdir.txt"), "gitdir: /w/evil\n").unwrap();
    if sb.who == As::Nobody {
        Command::new("chown").args(["-R", "65534:65534"]).arg(sb.home.join(".cache")).status().unwrap();
    }
    let run = |args: &[&str]| probe_with(sb, &["--profile", "python"], args);
    let c = |rel: &str| sb.path(&cache.join(rel));
    let data = ws(sb, "gitdir.txt");
    run(&["create", &c("built/.git/config")]).expect("errno 13 EACCES");
    run(&["create", &c("built/.git/hooks/pre-commit")]).expect("errno 13 EACCES");
    run(&["create", &c("built/.envrc")]).expect("errno 13 EACCES");
    run(&["create", &c("built/sub/.git")]).expect("errno 2 ENOENT");
    run(&["mkdir", &c("built/sub")]).expect("ok");
    run(&["create", &c("built/sub/.git"), &data]).expect("errno 13 EACCES");
    run(&["rename", &c("plain"), &c("built/sub/.git")]).expect("errno 13 EACCES");
    assert!(std::fs::read_dir(cache.join("built/.git")).unwrap().count() == 1);
    assert!(!cache.join("built/.envrc").exists() && !cache.join("built/sub/.git").exists());
    // The marker: uv's open for writing works, and writes nothing.
    run(&["write", &c("sdists-v11/.git")]).expect("ok");
    run(&["truncate", &c("sdists-v11/.git")]).expect("errno 13 EACCES");
    std::fs::remove_file(cache.join("sdists-v11/.git")).unwrap();
    run(&["create", &c("sdists-v11/.git"), &data]).expect("ok");
    assert_eq!(std::fs::read(cache.join("sdists-v11/.git")).unwrap(), b"");
    // Twins: the rest of the cache is uv's to write, and a plain tree moves out.
    run(&["create", &c("plain/file.py"), &data]).expect("ok");
    assert_eq!(std::fs::read_to_string(cache.join("plain/file.py")).unwrap(), "gitdir: /w/evil\n");
    run(&["rename", &c("plain"), &ws(sb, "plain")]).expect("ok");
    assert!(sb.ws.join("plain/file.py").exists());
});

both!(no_symlink_lands_in_a_git_dir_and_git_obeys_nothing_else_there, |sb| {
    // Git writes COMMIT_EDITMSG (filled from MERGE_MSG), FETCH_HEAD and its
    // reflogs by path, following symlinks: a helper's link at
    // .git/COMMIT_EDITMSG made the host's next `git commit` write the
    // sandbox's MERGE_MSG into ~/.bashrc (or over a protected hook). Nor
    // does git get a rebase todo (its `exec` lines run on `--continue`),
    // alternates (read as another repository's config) or legacy remotes.
    let p = setup(sb);
    std::fs::create_dir_all(sb.ws.join(".git/objects/info")).unwrap();
    std::fs::create_dir_all(sb.ws.join(".git/objects/pack")).unwrap();
    std::fs::create_dir_all(sb.ws.join("tree")).unwrap();
    std::fs::write(sb.ws.join("msg.txt"), "Update\n").unwrap();
    if sb.who == As::Nobody {
        Command::new("chown").args(["-R", "65534:65534"]).arg(&sb.ws).status().unwrap();
    }
    let target = sb.path(&sb.outside.join("secret.txt"));
    let run = |args: &[&str]| probe_gate(sb, &p, args);
    run(&["symlink", &target, &ws(sb, ".git/COMMIT_EDITMSG")]).expect("errno 13 EACCES");
    run(&["symlink", &target, &ws(sb, ".git/objects/info/x")]).expect("errno 13 EACCES");
    // Made elsewhere, then moved, linked or carried in a tree.
    run(&["symlink", &target, &ws(sb, "tree/HEAD")]).expect("ok");
    run(&["rename", &ws(sb, "tree/HEAD"), &ws(sb, ".git/ORIG_HEAD")]).expect("errno 13 EACCES");
    run(&["link", &ws(sb, "tree/HEAD"), &ws(sb, ".git/FETCH_HEAD")]).expect("errno 13 EACCES");
    run(&["rename", &ws(sb, "tree"), &ws(sb, ".git/logs")]).expect("errno 13 EACCES");
    // Nor once `tree` looks like a git directory itself (its HEAD the
    // link): a move between two no-symlink zones passes only when both
    // sides are in one by their own names (a reviewer's repro).
    run(&["mkdir", &ws(sb, "tree/objects")]).expect("ok");
    run(&["rename", &ws(sb, "tree/HEAD"), &ws(sb, ".git/COMMIT_EDITMSG")]).expect("errno 13 EACCES");
    for name in ["COMMIT_EDITMSG", "ORIG_HEAD", "FETCH_HEAD", "logs", "objects/info/x"] {
        assert!(std::fs::symlink_metadata(sb.ws.join(".git").join(name)).is_err(), "{name}");
    }
    run(&["mkdir", &ws(sb, ".git/rebase-merge")]).expect("errno 13 EACCES");
    run(&["create", &ws(sb, ".git/objects/info/alternates")]).expect("errno 13 EACCES");
    run(&["mkdir", &ws(sb, ".git/remotes")]).expect("errno 13 EACCES");
    run(&["mkdir", &ws(sb, ".git/branches")]).expect("errno 13 EACCES");
    // A cherry-pick's options (a merge strategy named as a path ran on
    // `--continue`), `git am`'s state, rerere's record (git copied the files
    // MERGE_RR named into rr-cache), and a FIFO git would hang on.
    run(&["mkdir", &ws(sb, ".git/sequencer")]).expect("errno 13 EACCES");
    run(&["mkdir", &ws(sb, ".git/rebase-apply")]).expect("errno 13 EACCES");
    run(&["mkdir", &ws(sb, ".git/rr-cache")]).expect("errno 13 EACCES");
    run(&["create", &ws(sb, ".git/MERGE_RR")]).expect("errno 13 EACCES");
    run(&["mkfifo", &ws(sb, ".git/COMMIT_EDITMSG")]).expect("errno 13 EACCES");
    // A multi-pack-index naming `../../other/.git/objects/pack/pack-X.idx`
    // (the next auto gc copied that repository's objects in), and a
    // BISECT_START that `git bisect reset` passes to checkout as an option.
    run(&["create", &ws(sb, ".git/objects/pack/multi-pack-index")]).expect("errno 13 EACCES");
    run(&["create", &ws(sb, ".git/BISECT_START")]).expect("errno 13 EACCES");
    run(&["create", &ws(sb, ".git/objects/pack/pack-x.keep")]).expect("ok");
    run(&["mkfifo", &ws(sb, "fifo")]).expect("ok");
    // Twins: links elsewhere, files moved in (git's own lock files), and
    // trees moved inside .git are fine.
    run(&["symlink", "file.txt", &ws(sb, "link")]).expect("ok");
    run(&["rename", &ws(sb, "msg.txt"), &ws(sb, ".git/MERGE_MSG")]).expect("ok");
    run(&["mkdir", &ws(sb, ".git/a")]).expect("ok");
    run(&["rename", &ws(sb, ".git/a"), &ws(sb, ".git/b")]).expect("ok");
    run(&["create", &ws(sb, ".git/objects/info/packs")]).expect("ok");
    assert!(sb.ws.join(".git/MERGE_MSG").is_file() && sb.ws.join(".git/b").is_dir());
});

both!(a_truncate_of_a_fifo_never_stalls_the_gate, |sb| {
    // The kernel says EINVAL at once; the gate opened the FIFO for writing
    // and waited for a reader, and every parked call of the sandbox waited
    // behind it (a helper's hunt). Bounded here, so the old code fails
    // instead of hanging the test.
    let p = setup(sb);
    let fifo = sb.ws.join("f");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    if sb.who == As::Nobody {
        std::os::unix::fs::chown(&fifo, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let mut c = sb.portcullis(&["run", "--profile", &p, "--exec", PROBE, "--", PROBE, "truncate", &ws(sb, "f")]);
    c.env("PORTCULLIS_BROKER", "off").stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("truncate of a FIFO stalled the gate");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Run::from(child.wait_with_output().unwrap()).expect("errno 22 EINVAL");
    // Twin: a regular file is cut.
    probe_gate(sb, &p, &["truncate", &ws(sb, "file.txt")]).expect("ok");
    assert_eq!(std::fs::read(sb.ws.join("file.txt")).unwrap(), b"");
});

both!(a_trailing_slash_on_a_symlink_never_acts_on_its_target, |sb| {
    // `unlink("link/")` is ENOTDIR for the kernel (it does not follow); the
    // gate followed the link for the slash and removed the target (a
    // helper's hunt: `rm link/` lost the file, `rmdir`/`rename` the directory).
    let p = setup(sb);
    std::fs::write(sb.ws.join("target.txt"), "kept\n").unwrap();
    std::fs::create_dir(sb.ws.join("dir")).unwrap();
    std::os::unix::fs::symlink("target.txt", sb.ws.join("lf")).unwrap();
    std::os::unix::fs::symlink("dir", sb.ws.join("ld")).unwrap();
    if sb.who == As::Nobody {
        Command::new("chown").args(["-R", "-h", "65534:65534"]).arg(&sb.ws).status().unwrap();
    }
    probe_gate(sb, &p, &["unlink", &format!("{}/", ws(sb, "lf"))]).expect("errno 20 ENOTDIR");
    probe_gate(sb, &p, &["rmdir", &format!("{}/", ws(sb, "ld"))]).expect("errno 20 ENOTDIR");
    probe_gate(sb, &p, &["rename", &format!("{}/", ws(sb, "ld")), &ws(sb, "moved")]).expect("errno 20 ENOTDIR");
    assert!(sb.ws.join("target.txt").is_file() && sb.ws.join("dir").is_dir() && !sb.ws.join("moved").exists());
    // A symlink or a node named with a trailing slash is no name to make.
    probe_gate(sb, &p, &["symlink", "target.txt", &format!("{}/", ws(sb, "missing"))]).expect("errno 2 ENOENT");
    probe_gate(sb, &p, &["mkfifo", &format!("{}/", ws(sb, "missing"))]).expect("errno 2 ENOENT");
    assert!(std::fs::symlink_metadata(sb.ws.join("missing")).is_err());
    // Twins: without the slash the link itself goes; a real directory's slash is fine.
    probe_gate(sb, &p, &["unlink", &ws(sb, "lf")]).expect("ok");
    probe_gate(sb, &p, &["rmdir", &format!("{}/", ws(sb, "dir"))]).expect("ok");
    assert!(sb.ws.join("target.txt").is_file() && std::fs::symlink_metadata(sb.ws.join("lf")).is_err());
    // O_CREAT with O_DIRECTORY is EINVAL for the kernel (6.4+), not EISDIR.
    std::fs::create_dir(sb.ws.join("dir2")).unwrap();
    probe_gate(sb, &p, &["open-creat-dir", &ws(sb, "dir2")]).expect("errno 22 EINVAL");
});

both!(files_the_gate_creates_are_never_setuid, |sb| {
    // The gate creates files for the sandbox (a parked open): with the mode
    // asked for, but never the setuid or setgid bit, which chmod could not
    // set either. A helper's hunt made `-rwsr-xr-x` files this way.
    let p = setup(sb);
    probe_gate(sb, &p, &["create-mode", &ws(sb, "suid"), "6755"]).expect("ok");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(sb.ws.join("suid")).unwrap().permissions().mode();
    assert_eq!(mode & 0o6000, 0, "mode {mode:o}");
    // Twin: the permission bits are the ones asked for (less the umask).
    assert_eq!(mode & 0o777, 0o755, "mode {mode:o}");
});

both!(hooks_in_the_work_tree_are_protected_like_git_hooks, |sb| {
    // core.hooksPath moves hooks into the work tree: husky's `.husky/_`
    // (strict names `.husky`), or whatever the workspace's config says,
    // read at launch. A helper's hunt planted `.husky/pre-commit`, run by
    // the host's next commit.
    let p = setup(sb);
    std::fs::write(sb.ws.join(".git/config"), "[core]\n\thooksPath = \"tools/githooks\" ; ours\n").unwrap();
    for d in [".husky/_", "tools/githooks", "tools/other"] {
        std::fs::create_dir_all(sb.ws.join(d)).unwrap();
    }
    if sb.who == As::Nobody {
        Command::new("chown").args(["-R", "65534:65534"]).arg(&sb.ws).status().unwrap();
    }
    probe_gate(sb, &p, &["create", &ws(sb, ".husky/pre-commit")]).expect("errno 13 EACCES");
    probe_gate(sb, &p, &["create", &ws(sb, "tools/githooks/pre-commit")]).expect("errno 13 EACCES");
    probe_gate(sb, &p, &["rename", &ws(sb, "tools/other"), &ws(sb, "tools/githooks2")]).expect("ok");
    probe_gate(sb, &p, &["rename", &ws(sb, "tools/githooks"), &ws(sb, "tools/gone")]).expect("errno 13 EACCES");
    assert!(!sb.ws.join(".husky/pre-commit").exists() && !sb.ws.join("tools/githooks/pre-commit").exists());
    // A hook manager's config is asked about (no broker here: refused).
    probe_gate(sb, &p, &["create", &ws(sb, ".pre-commit-config.yaml")]).expect("errno 13 EACCES");
    // So is a mise config (mise trusts one by path: a changed one runs unasked).
    probe_gate(sb, &p, &["create", &ws(sb, "tools/mise.toml")]).expect("errno 13 EACCES");
    // Twin: the rest of the tree is written.
    probe_gate(sb, &p, &["create", &ws(sb, "tools/githooks2/x")]).expect("ok");
    let r = sb.run(&["explain", "--profile", &p]);
    assert!(r.stdout.contains("core.hooksPath"), "explain names where the rule came from: {}", r.stdout);
});

both!(git_config_lock_files_are_protected_like_config, |sb| {
    // Git writes config through config.lock, then renames it into place: a
    // hard link to the lock, made while git holds it, was a writable name
    // for the next .git/config.
    let p = setup(sb);
    for f in [".git/config.lock", ".git/index.lock"] {
        std::fs::write(sb.ws.join(f), "[core]\n").unwrap();
        if sb.who == As::Nobody {
            std::os::unix::fs::chown(sb.ws.join(f), Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    probe_gate(sb, &p, &["link", &ws(sb, ".git/config.lock"), &ws(sb, "c")]).expect("errno 13 EACCES");
    probe_gate(sb, &p, &["write", &ws(sb, ".git/config.lock")]).expect("errno 13 EACCES");
    assert!(!sb.ws.join("c").exists());
    assert_eq!(std::fs::read_to_string(sb.ws.join(".git/config.lock")).unwrap(), "[core]\n");
    // Twin: git's other lock files stay usable.
    probe_gate(sb, &p, &["link", &ws(sb, ".git/index.lock"), &ws(sb, "i")]).expect("ok");
});

both!(a_grant_on_a_name_does_not_let_a_tree_be_moved_there, |sb| {
    // strict asks before {workspace}/.vscode changes. Someone allowed making
    // that directory, always: the sandbox built a .vscode elsewhere (a task
    // that runs when the folder opens) and renamed it into place, unasked.
    let p = setup(sb);
    let vscode = ws(sb, ".vscode");
    // The first run makes the state directory as the sandbox's user.
    probe_gate(sb, &p, &["mkdir", &ws(sb, "prepared")]).expect("ok");
    let grants = sb.root.join("state/grants.json");
    let grant = serde_json::json!({"version": 1, "grants": [{
        "id": "g1", "profile": p, "access": "write", "target": vscode,
        "allow": true, "scope": "always", "created": 0, "by": "cli"}, {
        "id": "g2", "profile": p, "access": "write", "target": ws(sb, ".mcp.json"),
        "allow": true, "scope": "always", "created": 0, "by": "cli"}]});
    std::fs::write(&grants, grant.to_string()).unwrap();
    if sb.who == As::Nobody {
        std::os::unix::fs::chown(&grants, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    probe_gate(sb, &p, &["create", &ws(sb, "prepared/tasks.json")]).expect("ok");
    probe_gate(sb, &p, &["rename", &ws(sb, "prepared"), &vscode]).expect("errno 13 EACCES");
    probe_gate(sb, &p, &["symlink", &ws(sb, "prepared"), &vscode]).expect("errno 13 EACCES");
    assert!(!sb.ws.join(".vscode").exists());
    // Twins: the grant still answers for what it was given, and a file
    // saved over an allowed file (a temporary renamed into place) keeps its
    // grant.
    probe_gate(sb, &p, &["mkdir", &vscode]).expect("ok");
    assert!(sb.ws.join(".vscode").is_dir());
    probe_gate(sb, &p, &["create", &ws(sb, "mcp.json.tmp")]).expect("ok");
    probe_gate(sb, &p, &["rename", &ws(sb, "mcp.json.tmp"), &ws(sb, ".mcp.json")]).expect("ok");
    assert!(sb.ws.join(".mcp.json").is_file());
});

both!(inode_flags_of_protected_files_cannot_change, |sb| {
    // chattr-style flags: metadata Landlock does not mediate (floor).
    sb.probe(&[], &["ioctl", "0x40086602"]).expect("errno 1 EPERM");
    sb.probe(&[], &["ioctl", "0x401c5820"]).expect("errno 1 EPERM");
    sb.probe(&[], &["syscall", "file_setattr"]).expect("errno 1 EPERM");
    // Twin: an unfiltered ioctl request reaches the kernel (EBADF for fd -1).
    sb.probe(&[], &["ioctl", "0x80086601"]).expect("errno 9 EBADF");
});

both!(o_path_opens_and_fifos_work_under_read_rules, |sb| {
    // Read rules park every open. An O_PATH open reads nothing (and ADDFD
    // could not pass it): it still works. Opening a FIFO waits for its other
    // end, in a thread of its own, so the reader's open is still served.
    let p = setup(sb);
    probe_gate(sb, &p, &["opath", &ws(sb, "file.txt")]).expect("ok");
    probe_gate(sb, &p, &["fifo", &ws(sb, "pipe")]).expect("ok");
    // And the read rule still holds beside them.
    probe_gate(sb, &p, &["read", &ws(sb, "ask.txt")]).expect("errno 13 EACCES");
});

/// `portcullis run` of `/bin/sh SCRIPT` under `script` (so portcullis has
/// a controlling terminal and is in its foreground), with no broker: asks
/// are put on that terminal. Returns the child and what it has printed.
fn on_a_terminal(sb: &Sandbox, script: &str) -> (std::process::Child, std::sync::Arc<std::sync::Mutex<String>>) {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let profile = setup(sb);
    let file = sb.ws.join("script.sh");
    std::fs::write(&file, script).unwrap();
    let cmd = format!(
        "{PORTCULLIS} run --profile {profile} --workspace {} --exec /bin/sh --exec /bin/sleep --exec {PROBE} -- /bin/sh {}",
        sb.path(&sb.ws),
        sb.path(&file)
    );
    let mut child = Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .current_dir(&sb.ws)
        .env("HOME", &sb.home)
        .env("PORTCULLIS_BROKER", "off")
        .env("PORTCULLIS_GRANTS", sb.root.join("state/grants.json"))
        .env("PORTCULLIS_AUDIT_LOG", sb.root.join("state/audit.log"))
        .env("PORTCULLIS_AUDIT_KEY", sb.root.join("state/audit.key"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let mut out = child.stdout.take().unwrap();
    let sink = seen.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    });
    (child, seen)
}

/// Waits (10 s at most) until what was printed satisfies `ok`.
fn wait_for(seen: &std::sync::Mutex<String>, what: &str, ok: &dyn Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ok(&seen.lock().unwrap()) {
        assert!(std::time::Instant::now() < deadline, "{what}: {}", seen.lock().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

const PROMPT_UP: &dyn Fn(&str) -> bool = &|s| s.contains("approval needed") && s.contains("s left): ");

/// With no broker, the supervisor asks on its terminal, which the sandbox
/// may write to: it is stopped while the prompt is up, so what it writes
/// cannot land after the prompt (and draw a question of its own over it),
/// and goes on once answered. The sandbox prints SPAM every 20 ms.
#[test]
fn the_terminal_prompt_stops_the_sandbox_while_it_asks() {
    use std::io::Write;
    let sb = Sandbox::new("tty-pause", As::Caller);
    let asked = ws(&sb, "ask.txt");
    let (mut child, seen) = on_a_terminal(
        &sb,
        &format!("(while :; do echo SPAM; /bin/sleep 0.02; done) &\n/bin/sleep 0.3\n{PROBE} read {asked}\necho DONE\nkill $!\n"),
    );
    wait_for(&seen, "no prompt", PROMPT_UP);
    let at = seen.lock().unwrap().len();
    // Past the time an answer needs to count (broker::tty::SETTLE).
    std::thread::sleep(std::time::Duration::from_millis(1200));
    let after = seen.lock().unwrap()[at..].to_string();
    assert!(!after.contains("SPAM"), "the sandbox wrote over the prompt: {after:?}");
    child.stdin.as_mut().unwrap().write_all(b"n\n").unwrap();
    // Twin: answered (no), the sandbox goes on: the read is refused, and
    // the script ends (stopping its SPAM loop).
    wait_for(&seen, "the sandbox did not go on", &|s| {
        s[at..].contains("denied (once)") && s[at..].contains("EACCES") && s[at..].contains("DONE")
    });
    let _ = child.kill();
    let _ = child.wait();
}

/// A key typed before a question appears, or at once after (meant for the
/// question before, which timed out as the person typed: the sandbox
/// chooses when its questions come), does not answer it. Only what is
/// typed once it could be read does.
#[test]
fn a_typed_ahead_or_hasty_answer_never_answers_the_terminal_prompt() {
    use std::io::Write;
    let sb = Sandbox::new("tty-hasty", As::Caller);
    let asked = ws(&sb, "ask.txt");
    let (mut child, seen) = on_a_terminal(&sb, &format!("/bin/sleep 0.5\n{PROBE} read {asked}\necho DONE\n"));
    let mut keys = child.stdin.take().unwrap();
    keys.write_all(b"a\n").unwrap();
    wait_for(&seen, "no prompt", PROMPT_UP);
    let at = seen.lock().unwrap().len();
    keys.write_all(b"a\n").unwrap();
    wait_for(&seen, "the hasty answer was not refused", &|s| s[at..].contains("answer ignored"));
    std::thread::sleep(std::time::Duration::from_millis(1200));
    keys.write_all(b"n\n").unwrap();
    wait_for(&seen, "the sandbox did not go on", &|s| s[at..].contains("DONE"));
    let s = seen.lock().unwrap().clone();
    assert!(!s.contains("allowed ("), "an early key answered: {s}");
    // The typed-ahead key was dropped unread; only the hasty one was refused.
    assert_eq!(s.matches("answer ignored").count(), 1, "{s}");
    assert!(s[at..].contains("denied (once)") && s[at..].contains("EACCES"), "{s}");
    assert!(!sb.root.join("state/grants.json").exists(), "an always answer was saved");
    let _ = child.kill();
    let _ = child.wait();
}

// No directory moves into {tmp} from elsewhere: the supervisor removes
// {tmp} when the run ends, past the rules that protect what is inside it.
// A helper's hunt: `mv proj $TMPDIR/p` took proj/.git along, which strict
// does not let the sandbox remove, and the run's cleanup deleted it. EXDEV,
// as between filesystems: `mv` copies instead, and cannot remove the .git.
// Twins: a file moves in; a directory moves within {tmp}, and out of it.
both!(no_directory_moves_into_tmp_to_be_removed_with_it, |sb| {
    std::fs::create_dir_all(sb.ws.join("proj/.git")).unwrap();
    std::fs::write(sb.ws.join("proj/.git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(sb.ws.join("file"), "x").unwrap();
    if sb.who == As::Nobody {
        for p in ["proj", "proj/.git", "proj/.git/HEAD", "file"] {
            std::os::unix::fs::chown(sb.ws.join(p), Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    let script = format!(
        "{PROBE} rename proj \"$TMPDIR/p\"; {PROBE} rename file \"$TMPDIR/f\"; {PROBE} mkdir \"$TMPDIR/a\"; \
         {PROBE} rename \"$TMPDIR/a\" \"$TMPDIR/b\"; {PROBE} rename \"$TMPDIR/b\" moved-out"
    );
    let r = sb.run(&["run", "--exec", "/bin/sh", "--exec", PROBE, "--", "/bin/sh", "-c", &script]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines, ["errno 18 EXDEV", "ok", "ok", "ok", "ok"], "{}", r.stderr);
    assert!(sb.ws.join("proj/.git/HEAD").exists(), "the repository went with {{tmp}}");
    assert!(sb.ws.join("moved-out").is_dir() && !sb.ws.join("file").exists());
});
