//! The audit trail of `run`: records for launches and refusals, a log and key
//! out of the sandbox's reach, and no run without a working log.

use crate::both;
use crate::support::*;

fn audit_flags(sb: &Sandbox) -> (String, String) {
    let dir = sb.root.join("audit");
    (sb.path(&dir.join("audit.log")), sb.path(&dir.join("audit.key")))
}

both!(runs_and_refusals_are_recorded_and_verify, |sb| {
    let (log, key) = audit_flags(sb);
    let r = sb.run(&["run", "--audit-log", &log, "--audit-key", &key, "--exec", PROBE, "--", PROBE, "exit", "3"]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let r = sb.run(&["run", "--audit-log", &log, "--audit-key", &key, "--", "/bin/true"]);
    assert_eq!(r.code, 126, "{}", r.stderr);
    let list = sb.run(&["audit", "list", "--log", &log, "--key", &key, "--json"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    assert!(list.stdout.contains("\"launch\"") && list.stdout.contains("\"exit\""), "{}", list.stdout);
    assert!(list.stdout.contains("\"status\":3"), "the exit status is recorded: {}", list.stdout);
    let denied = sb.run(&["audit", "list", "--log", &log, "--key", &key, "--denied"]);
    assert!(denied.stdout.contains("not in the exec allowlist"), "the refusal is visible: {}", denied.stdout);
    let v = sb.run(&["audit", "verify", "--log", &log, "--key", &key]);
    assert_eq!(v.code, 0, "{} {}", v.stdout, v.stderr);
});

both!(the_sandbox_cannot_reach_the_log_or_the_key, |sb| {
    let (log, key) = audit_flags(sb);
    // Create both with a first run.
    let r = sb.run(&["run", "--audit-log", &log, "--audit-key", &key, "--exec", PROBE, "--", PROBE, "pid"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let flags = ["--audit-log", log.as_str(), "--audit-key", key.as_str()];
    sb.probe(&flags, &["read", &key]).expect("errno 13 EACCES");
    sb.probe(&flags, &["write", &log]).expect("errno 13 EACCES");
    // A rule that would cover them makes run refuse, and nothing runs.
    let dir = sb.path(&sb.root.join("audit"));
    let mut with_rule = flags.to_vec();
    with_rule.extend_from_slice(&["--read", &dir]);
    let r = sb.probe(&with_rule, &["read", &key]);
    assert_eq!(r.code, 125, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("would let the sandbox reach the audit"), "{}", r.stderr);
    assert!(r.stdout.is_empty(), "nothing ran: {}", r.stdout);
});

#[test]
fn no_log_no_run() {
    let sb = Sandbox::new("nolog", As::Caller);
    let marker = sb.path(&sb.ws.join("ran"));
    // A log in a directory that cannot be created.
    let r = sb.run(&[
        "run",
        "--audit-log",
        "/proc/portcullis/audit.log",
        "--exec",
        "/usr/bin/touch",
        "--",
        "/usr/bin/touch",
        &marker,
    ]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("refusing to run without a working audit log"), "{}", r.stderr);
    assert!(!sb.ws.join("ran").exists(), "the command must not run without a log");
}

#[test]
fn records_are_forwarded_to_syslog() {
    let sb = Sandbox::new("syslog", As::Caller);
    let (log, key) = audit_flags(&sb);
    let sock = sb.root.join("syslog.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    listener.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
    let s = sb.path(&sock);
    let r = sb.run(&[
        "run",
        "--audit-log",
        &log,
        "--audit-key",
        &key,
        "--syslog",
        &s,
        "--exec",
        PROBE,
        "--",
        PROBE,
        "exit",
        "0",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut got = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = listener.recv(&mut buf) {
        got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        if got.last().is_some_and(|m| m.contains("\"kind\":\"exit\"")) {
            break;
        }
    }
    assert!(got.iter().any(|m| m.starts_with("<86>portcullis[") && m.contains("\"kind\":\"launch\"")), "{got:?}");
    assert!(got.iter().any(|m| m.contains("\"kind\":\"exit\"")), "{got:?}");
}
