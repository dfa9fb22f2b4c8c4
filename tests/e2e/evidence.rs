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

/// A log whose disk is full: the launch record cannot be written, and the
/// command must not run at all (it used to start while the record was
/// written, and act before it was killed). Each run creates a file named
/// after itself; only runs that exit 0 may leave one. A tmpfs of 256 KiB in
/// a mount namespace of the test's own (root only: mounting needs it).
#[test]
fn a_full_disk_stops_the_command_before_it_runs() {
    if !is_root() {
        return skip("mounting a small tmpfs needs root");
    }
    let sb = Sandbox::new("fulldisk", As::Caller);
    let disk = sb.root.join("disk");
    std::fs::create_dir(&disk).unwrap();
    let script = format!(
        r#"set -u
mount -t tmpfs -o size=256k,mode=700 tmpfs {disk}
mkdir -m 700 {disk}/st
export PORTCULLIS_AUDIT_LOG={disk}/st/audit.log PORTCULLIS_AUDIT_KEY={disk}/st/audit.key
{PORTCULLIS} run --workspace {ws} --exec {PROBE} -- {PROBE} status >/dev/null 2>&1 || echo "first run failed"
dd if=/dev/zero of={disk}/fill bs=4k 2>/dev/null
for i in $(seq 1 40); do
  {PORTCULLIS} run --workspace {ws} --exec {PROBE} -- {PROBE} create {ws}/ran-$i >/dev/null 2>{ws}/err-$i
  echo "$i $?"
done
"#,
        disk = sb.path(&disk),
        ws = sb.path(&sb.ws),
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !stdout.contains("first run failed"),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut refused = 0;
    for line in stdout.lines() {
        let (i, code) = line.split_once(' ').unwrap();
        let ran = sb.ws.join(format!("ran-{i}")).exists();
        match code {
            "0" => assert!(ran, "run {i} exited 0 without running"),
            "125" => {
                refused += 1;
                let err = std::fs::read_to_string(sb.ws.join(format!("err-{i}"))).unwrap();
                assert!(err.contains("No space left on device"), "run {i}: {err}");
                assert!(!ran, "run {i} was refused for its log, yet the command ran");
            }
            other => panic!("run {i} exited {other}"),
        }
    }
    assert!(refused > 30, "the disk never filled: {stdout}");
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

/// Landlock ABI 7 reports its refusals to the kernel's audit subsystem; the
/// supervisor reads them, attributes them to its sandbox and records them.
#[test]
fn kernel_reported_landlock_denials_are_recorded() {
    if !is_root() {
        return skip("reading the kernel audit stream needs CAP_AUDIT_READ (run as root)");
    }
    if portcullis::kernel::Features::probe().landlock_abi < 7 {
        return skip("Landlock ABI 7 (Linux 6.15) is needed for denial reports");
    }
    // The kernel reports nothing while its audit is off (the default without
    // auditd). This turns it on for the machine, like `auditctl -e 1`, and
    // leaves it on: other tests may be running sandboxes meanwhile.
    portcullis::kaudit::set_enabled(true).expect("turn the kernel's audit on");
    // And give it auditd's usual backlog: the default 64 overflows while the
    // other tests' sandboxes are refused things in parallel.
    if portcullis::kaudit::backlog_limit().is_some_and(|n| n < 8192) {
        portcullis::kaudit::set_backlog_limit(8192).expect("raise the kernel's audit backlog");
    }
    let sb = Sandbox::new("kaudit", As::Caller);
    let (log, key) = audit_flags(&sb);
    let flags = ["--audit-log", log.as_str(), "--audit-key", key.as_str()];
    let secret = sb.path(&sb.outside.join("secret.txt"));
    // Meanwhile another sandbox, with a log of its own, is refused something
    // else again and again: none of it may be taken for ours.
    let other = Sandbox::new("kaudit-other", As::Caller);
    let other_secret = other.path(&other.outside.join("secret.txt"));
    let mut noisy = other
        .portcullis(&[
            "run",
            "--exec",
            "/usr/bin/dash",
            "--",
            "/bin/sh",
            "-c",
            &format!("i=0; while [ $i -lt 300 ]; do read x < {other_secret}; i=$((i+1)); done 2>/dev/null; true"),
        ])
        .spawn()
        .unwrap();
    sb.probe(&flags, &["read", &secret]).expect("errno 13 EACCES");
    assert!(noisy.wait().unwrap().success());
    // Twin: an allowed read is not reported.
    let allowed = sb.path(&sb.ws.join("file.txt"));
    sb.probe(&flags, &["read", &allowed]).expect("ok");
    let list = sb.run(&["audit", "list", "--log", &log, "--key", &key, "--denied", "--json"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let records: Vec<serde_json::Value> =
        list.stdout.lines().map(|l| serde_json::from_str(l).expect("a JSON line")).collect();
    let from_kernel: Vec<&serde_json::Value> =
        records.iter().filter(|r| r["body"]["source"] == "landlock-kernel-audit").collect();
    let hit: Vec<_> = from_kernel.iter().filter(|r| r["body"]["path"] == secret.as_str()).collect();
    assert_eq!(hit.len(), 1, "the refused read is recorded once: {}", list.stdout);
    assert_eq!(hit[0]["body"]["blockers"], "fs.read_file");
    assert_eq!(hit[0]["body"]["syscall"], "openat");
    assert!(
        from_kernel.iter().all(|r| r["body"]["path"] != allowed.as_str()),
        "the allowed read is not a denial: {}",
        list.stdout
    );
    assert!(
        from_kernel.iter().all(|r| !r["body"]["path"].as_str().unwrap_or("").contains("landlock-canary")),
        "the canary is not recorded: {}",
        list.stdout
    );
    assert!(
        from_kernel.iter().all(|r| r["body"]["path"] != other_secret.as_str()),
        "another sandbox's denials are not ours: {}",
        list.stdout
    );
    // Each run closes with a summary: identified, complete, and counted.
    let summaries: Vec<_> = records
        .iter()
        .chain(
            sb.run(&["audit", "list", "--log", &log, "--key", &key, "--json"])
                .stdout
                .lines()
                .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
                .collect::<Vec<_>>()
                .iter(),
        )
        .filter(|r| r["body"]["source"] == "landlock-kernel-audit" && r["body"]["summary"] == true)
        .map(|r| r["body"].clone())
        .collect();
    assert!(summaries.iter().any(|s| s["denials_seen"] == 1 && s["complete"] == true), "{summaries:?}");
    assert!(summaries.iter().all(|s| s["sandbox_identified"] == true), "{summaries:?}");
    // The kernel's reports land before the run's exit record.
    let all = sb.run(&["audit", "list", "--log", &log, "--key", &key, "--json"]).stdout;
    let kinds: Vec<serde_json::Value> = all.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let hit_seq = hit[0]["seq"].as_u64().unwrap();
    let exit_seq = kinds
        .iter()
        .find(|r| r["kind"] == "exit" && r["session"] == hit[0]["session"])
        .and_then(|r| r["seq"].as_u64())
        .expect("the run's exit record");
    assert!(hit_seq < exit_seq, "denial {hit_seq} before exit {exit_seq}");
    let exit = kinds.iter().find(|r| r["seq"].as_u64() == Some(exit_seq)).unwrap();
    assert!(exit["body"].get("incomplete").is_none(), "nothing was lost: {exit}");
    // The canary is removed with the run, and with a launch refused after
    // it was placed (beside the probe, before the reach checks): here a rule
    // reaches the log's directory.
    let state = sb.root.join("audit");
    let refused = sb.probe(&[&flags[..], &["--read", state.to_str().unwrap()]].concat(), &["read", &allowed]);
    assert_eq!(refused.code, 125, "{} {}", refused.stdout, refused.stderr);
    assert!(refused.stderr.contains("would let the sandbox reach the audit"), "{}", refused.stderr);
    let left: Vec<_> = std::fs::read_dir(&state)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("canary"))
        .collect();
    assert!(left.is_empty(), "canary left behind: {left:?}");
    let v = sb.run(&["audit", "verify", "--log", &log, "--key", &key]);
    assert_eq!(v.code, 0, "{} {}", v.stdout, v.stderr);
}

/// When the kernel-audit reader cannot write what the kernel reported, the
/// run's exit record names what is missing and why (not only stderr). Here
/// the key file is swapped while the command waits: the run's own handle
/// holds its key already, the reader opens its handle at the first denial.
#[test]
fn denials_that_could_not_be_recorded_are_named_in_the_exit_record() {
    if !is_root() {
        return skip("reading the kernel audit stream needs CAP_AUDIT_READ (run as root)");
    }
    if portcullis::kernel::Features::probe().landlock_abi < 7 {
        return skip("Landlock ABI 7 (Linux 6.15) is needed for denial reports");
    }
    portcullis::kaudit::set_enabled(true).expect("turn the kernel's audit on");
    let sb = Sandbox::new("kaudit-lost", As::Caller);
    let (log, key) = audit_flags(&sb);
    // Another key, made by a run with a log of its own.
    let (other_log, other_key) = (sb.path(&sb.root.join("other/audit.log")), sb.path(&sb.root.join("other/audit.key")));
    let r = sb.run(&["run", "--audit-log", &other_log, "--audit-key", &other_key, "--exec", PROBE, "--", PROBE, "pid"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let secret = sb.path(&sb.outside.join("secret.txt"));
    // Shell builtins only (the allowlist holds dash alone): the command
    // says it started, then blocks on a FIFO until the key is swapped.
    let (started, go) = (sb.ws.join("started"), sb.ws.join("go"));
    nix::unistd::mkfifo(&go, nix::sys::stat::Mode::from_bits_truncate(0o666)).unwrap();
    let script = format!(
        ": > {s}; read x < {g}; read x < {secret} 2>/dev/null; exit 7",
        s = sb.path(&started),
        g = sb.path(&go)
    );
    let mut run = sb
        .portcullis(&[
            "run",
            "--audit-log",
            &log,
            "--audit-key",
            &key,
            "--exec",
            "/usr/bin/dash",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ])
        .spawn()
        .unwrap();
    let t = std::time::Instant::now();
    while !started.exists() {
        if t.elapsed() > std::time::Duration::from_secs(20) {
            let _ = run.kill();
            panic!("the command never started");
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let ours = std::fs::read(&key).unwrap();
    std::fs::write(&key, std::fs::read(&other_key).unwrap()).unwrap();
    std::fs::write(&go, b"go\n").unwrap();
    let status = run.wait().unwrap();
    std::fs::write(&key, &ours).unwrap();
    assert_eq!(status.code(), Some(7), "the command's status passes through");
    let all = sb.run(&["audit", "list", "--log", &log, "--key", &key, "--json"]);
    assert_eq!(all.code, 0, "{}", all.stderr);
    let records: Vec<serde_json::Value> = all.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(
        records.iter().all(|r| r["body"]["source"] != "landlock-kernel-audit"),
        "the reader could not write: {}",
        all.stdout
    );
    let exit = records.iter().rev().find(|r| r["kind"] == "exit").expect("the run's exit record");
    let incomplete = exit["body"]["incomplete"].as_array().unwrap_or_else(|| panic!("named as incomplete: {exit}"));
    assert_eq!(incomplete.len(), 1, "{exit}");
    let why = incomplete[0].as_str().unwrap();
    assert!(why.starts_with("kernel-reported denials: ") && why.contains("key"), "{why}");
    let v = sb.run(&["audit", "verify", "--log", &log, "--key", &key]);
    assert_eq!(v.code, 0, "{} {}", v.stdout, v.stderr);
}

/// Unprivileged, the kernel's reports cannot be read: the launch record and
/// `doctor` say so instead of pretending nothing was refused.
#[test]
fn unprivileged_runs_say_kernel_denials_are_invisible() {
    let Some(sb) = Sandbox::nobody("kaudit-nobody") else { return };
    let (log, key) = audit_flags(&sb);
    let r = sb.run(&["run", "--audit-log", &log, "--audit-key", &key, "--exec", PROBE, "--", PROBE, "pid"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let list = sb.run(&["audit", "list", "--log", &log, "--key", &key, "--kind", "launch", "--json"]);
    let launch: serde_json::Value = serde_json::from_str(list.stdout.lines().last().unwrap()).unwrap();
    let said = launch["body"]["kernel_denials"].as_str().unwrap_or_default().to_string();
    assert!(said.starts_with("invisible: "), "{}", list.stdout);
    if portcullis::kernel::Features::probe().landlock_abi >= 7 {
        assert!(said.contains("CAP_AUDIT_READ"), "the reason is the missing capability: {said}");
    }
    let doctor = sb.run(&["doctor"]);
    assert!(doctor.stdout.contains("invisible: "), "{}", doctor.stdout);
}

/// A log rotated by size keeps one chain: every file verifies together, the
/// readers see all records, `tail -f` follows into the new file, and a
/// missing middle file is reported.
#[test]
fn rotation_by_size_keeps_one_chain_across_files() {
    let sb = Sandbox::new("rotate", As::Caller);
    let (log, key) = audit_flags(&sb);
    let flags = ["--audit-log", log.as_str(), "--audit-key", key.as_str(), "--audit-rotate-size", "2K"];
    // A first run creates the log; then follow it while more runs rotate it.
    let r = sb.probe(&flags, &["pid"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut tail = sb
        .portcullis(&["audit", "tail", "-f", "-n", "0", "--log", &log, "--key", &key])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (lines_tx, lines) = std::sync::mpsc::channel::<String>();
    let out = tail.stdout.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for l in std::io::BufReader::new(out).lines().map_while(Result::ok) {
            if lines_tx.send(l).is_err() {
                return;
            }
        }
    });
    // Each run also has the syscall gate refuse a write (strict's [deny]
    // .git/config): its own log handle, opened before the run's, appends
    // into files the other handles rotate.
    std::fs::create_dir_all(sb.ws.join(".git")).unwrap();
    let git_config = sb.path(&sb.ws.join(".git/config"));
    let mut sessions = Vec::new();
    for _ in 0..6 {
        let r = sb.probe(&flags, &["write", &git_config]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.verdict().starts_with("errno"), "the gate refused: {}", r.stdout);
    }
    assert!(!sb.ws.join(".git/config").exists());
    let list = sb.run(&["audit", "list", "--log", &log, "--key", &key, "--json"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let records: Vec<serde_json::Value> = list.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r["seq"].as_u64(), Some(i as u64), "one gapless chain across files: {}", list.stdout);
        if r["kind"] == "exit" {
            sessions.push(r["session"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(sessions.len(), 7, "every run's exit record is listed");
    let gate_denials = records.iter().filter(|r| r["kind"] == "verdict" && r["body"]["op"] == "open-write").count();
    assert_eq!(gate_denials, 6, "every gate refusal is in the chain: {}", list.stdout);
    assert!(records.iter().any(|r| r["kind"] == "segment"), "a continuation record starts each new file");
    let dir = sb.root.join("audit");
    let mut segments: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.strip_prefix("audit.log.").is_some_and(|rest| rest.bytes().all(|b| b.is_ascii_digit())))
        .collect();
    segments.sort();
    assert!(segments.len() >= 2, "rotated at 2 KiB: {segments:?}");
    let v = sb.run(&["audit", "verify", "--log", &log, "--key", &key]);
    assert_eq!(v.code, 0, "{} {}", v.stdout, v.stderr);
    assert!(v.stdout.contains("files"), "{}", v.stdout);
    // tail -f followed the live file through the rotations (it polls every
    // 250 ms; allow a loaded machine 20 s).
    let last = sessions.last().unwrap();
    let until = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut followed = String::new();
    while !followed.contains(last.as_str()) {
        let left = until.saturating_duration_since(std::time::Instant::now());
        match lines.recv_timeout(left) {
            Ok(l) => followed.push_str(&(l + "\n")),
            Err(_) => break,
        }
    }
    let _ = tail.kill();
    let _ = tail.wait();
    assert!(followed.contains(last.as_str()), "tail -f saw the last run ({last}) after rotating:\n{followed}");
    // Archiving the oldest file on purpose: only `--retained` accepts it.
    let oldest = dir.join(&segments[0]);
    let archived = sb.root.join("archived");
    std::fs::rename(&oldest, &archived).unwrap();
    let v = sb.run(&["audit", "verify", "--log", &log, "--key", &key]);
    assert_ne!(v.code, 0, "a missing file must not verify: {}", v.stdout);
    let v = sb.run(&["audit", "verify", "--retained", "--log", &log, "--key", &key]);
    assert_eq!(v.code, 0, "{} {}", v.stdout, v.stderr);
    // A missing file in the middle is reported whatever the mode.
    std::fs::rename(&archived, &oldest).unwrap();
    std::fs::remove_file(dir.join(&segments[1])).unwrap();
    for extra in [&[][..], &["--retained"][..]] {
        let mut args = vec!["audit", "verify", "--log", &log, "--key", &key];
        args.extend_from_slice(extra);
        let v = sb.run(&args);
        assert_ne!(v.code, 0, "{extra:?}: {}", v.stdout);
        assert!(v.stderr.contains("does not verify"), "{}", v.stderr);
    }
}

/// The size a log's checkpoint file vouches for (its second line).
fn checkpoint_size(log: &str) -> u64 {
    let text = std::fs::read_to_string(format!("{log}.checkpoint")).expect("a checkpoint");
    text.lines().nth(1).and_then(|l| l.parse().ok()).expect("a size on the checkpoint's second line")
}

// `run` exits with the command's status before its exit record is
// durable: a finisher that shares its memory fsyncs the record and writes
// the checkpoint (sys::finish), holding the log's lock. A reader waits for
// that lock, and sees the exit record and the checkpoint that covers it
// together. PORTCULLIS_TEST_FINISH_DELAY_MS holds the finisher back, so
// the order is seen; the caller's stderr is a file (a pipe would be held
// open by the finisher until it is done).
both!(the_status_comes_first_and_readers_see_the_finished_log, |sb| {
    let (log, key) = audit_flags(sb);
    let first = sb.probe(&["--audit-log", &log, "--audit-key", &key], &["status"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    let before = checkpoint_size(&log);
    let err = sb.root.join("finisher.err");
    let status = sb
        .portcullis(&["run", "--audit-log", &log, "--audit-key", &key, "--exec", PROBE, "--", PROBE, "exit", "3"])
        .env("PORTCULLIS_TEST_FINISH_DELAY_MS", "1000")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&err).unwrap())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(3), "{}", std::fs::read_to_string(&err).unwrap_or_default());
    assert_eq!(checkpoint_size(&log), before, "the status came only after the checkpoint was written");
    // A reader waits for the finisher: the exit record is there, durable,
    // and the checkpoint covers it.
    let list = sb.run(&["audit", "list", "--log", &log, "--key", &key, "--json"]);
    assert_eq!(list.code, 0, "{}", list.stderr);
    let records = list.stdout.lines().count() as u64;
    assert!(list.stdout.lines().last().unwrap_or("").contains("\"status\":3"), "{}", list.stdout);
    let v = sb.run(&["audit", "verify", "--log", &log, "--key", &key]);
    assert_eq!(v.code, 0, "{} {}", v.stdout, v.stderr);
    assert!(v.stdout.contains(&format!("checkpoint  size {records} holds")), "{records} records: {}", v.stdout);
    assert_eq!(checkpoint_size(&log), records);
    let stderr = std::fs::read_to_string(&err).unwrap();
    assert!(!stderr.contains("portcullis:"), "the finisher reported a failure: {stderr}");
});
