//! The command-line contract: exit codes, bad input, explain/doctor/profile.

use crate::support::*;

fn setup_error(r: &Run, needle: &str) {
    assert_eq!(r.code, 125, "stdout {}\nstderr {}", r.stdout, r.stderr);
    assert!(r.stderr.contains(needle), "expected `{needle}` in stderr:\n{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
    assert_eq!(r.stderr.trim().lines().count(), 1, "one-line error expected:\n{}", r.stderr);
}

#[test]
fn bad_profiles_name_file_and_line_and_run_nothing() {
    let sb = Sandbox::new("badprof", As::Caller);
    let marker = sb.ws.join("ran");
    let touch = sb.path(&marker);
    let cases = [
        ("unknown.toml", "[filesystem]\nread = []\nwrtie = [\"/x\"]\n", "unknown.toml:3:"),
        ("syntax.toml", "[network]\nconnect = [443,\n", "syntax.toml:"),
        (
            "missing.toml",
            "extends = \"strict\"\n[filesystem]\nread = [\"/definitely/not/here\"]\n",
            "missing.toml:3: path /definitely/not/here does not exist",
        ),
        ("port.toml", "[network]\nbind = [0]\n", "port.toml:2: bad port 0"),
        ("size.toml", "[limits]\nmax_memory = \"lots\"\n", "size.toml:2: bad size `lots`"),
        ("var.toml", "[filesystem]\nread = [\"{nope}/x\"]\n", "var.toml:2: unknown variable `{nope}`"),
        ("sys.toml", "[syscalls]\ndeny = [\"frobnicate\"]\n", "sys.toml:2: unknown syscall `frobnicate`"),
        // Denied, a failed exec could not be told from a command that ran.
        ("nowrite.toml", "[syscalls]\ndeny = [\"write\"]\n", "nowrite.toml:2: `write` cannot be denied"),
        (
            "extends.toml",
            "extends = \"no-such-profile\"\n",
            "extends.toml:1: extends: profile `no-such-profile` not found",
        ),
        ("type.toml", "[network]\nudp = \"yes\"\n", "type.toml:2:"),
        (
            "cmd.toml",
            "extends = \"strict\"\n[commands]\nallow = [\"no-such-command-xyz\"]\n",
            "cmd.toml:3: command `no-such-command-xyz` not found",
        ),
        // A quoted value with terminal controls and a bidi override (TOML
        // escapes) is shown escaped: the error reads as written.
        (
            "controls.toml",
            "[filesystem]\nread = [\"rel\\u001b[2J\\u202Eative\"]\n",
            "controls.toml:2: path `rel\\x1b[2J\\u{202e}ative` must be absolute",
        ),
    ];
    for (name, text, needle) in cases {
        let prof = sb.profile(name, text);
        let r = sb.run(&["run", "--profile", &prof, "--exec", "/usr/bin/touch", "--", "/usr/bin/touch", &touch]);
        setup_error(&r, needle);
        assert!(!marker.exists(), "{name}: the command ran despite the error");
        // `profile check` reports the same error.
        let r = sb.run(&["profile", "check", &prof]);
        setup_error(&r, needle);
    }
    let ok = sb.profile("ok.toml", "extends = \"strict\"\n[network]\nconnect = [443]\n");
    let r = sb.run(&["profile", "check", &ok]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn bad_flags_are_setup_errors() {
    let sb = Sandbox::new("badflags", As::Caller);
    let t = ["--", "/bin/true"];
    let with = |flags: &[&str]| {
        let mut a = vec!["run"];
        a.extend_from_slice(flags);
        a.extend_from_slice(&t);
        sb.run(&a)
    };
    setup_error(&with(&["--connect", "70000"]), "bad port `70000`");
    setup_error(&with(&["--bind", "http"]), "bad port `http`");
    setup_error(&with(&["--max-memory", "12Q"]), "bad size `12Q`");
    setup_error(&with(&["--read", "relative/path"]), "must be absolute");
    setup_error(&with(&["--read", "rel\u{1b}[2J\u{7}"]), "path `rel\\x1b[2J\\x07` must be absolute");
    setup_error(&with(&["--read", "/no/such/dir"]), "does not exist");
    setup_error(&with(&["--profile", "no-such-profile"]), "profile `no-such-profile` not found");
    setup_error(&with(&["--workspace", "/no/such/ws"]), "--workspace /no/such/ws");
    assert_eq!(with(&["--max-procs", "many"]).code, 125);
    assert_eq!(with(&["--frobnicate"]).code, 125);
    assert_eq!(sb.run(&["run"]).code, 125, "no command");
}

#[test]
fn exit_codes_for_missing_and_forbidden_commands() {
    let sb = Sandbox::new("codes", As::Caller);
    let r = sb.run(&["run", "--", "no-such-command-xyz"]);
    assert_eq!(r.code, 127, "{}", r.stderr);
    // A name with terminal controls is quoted back escaped.
    let r = sb.run(&["run", "--", "no-such\u{1b}[31mcmd\u{202e}"]);
    assert_eq!(r.code, 127, "{}", r.stderr);
    assert!(r.stderr.contains("portcullis: no-such\\x1b[31mcmd\\u{202e}: command not found"), "{}", r.stderr);
    assert!(!r.stderr.contains('\u{1b}') && !r.stderr.contains('\u{202e}'), "{:?}", r.stderr);
    let r = sb.run(&["run", "--", "/bin/true"]);
    assert_eq!(r.code, 126, "{}", r.stderr);
    assert!(r.stderr.contains("not in the exec allowlist"), "{}", r.stderr);
    let r = sb.run(&["run", "--exec", "/bin/true", "--", "/bin/true"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let r = sb.run(&["run", "--exec", "/bin/false", "--", "/bin/false"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    let help = sb.run(&["run", "--help"]);
    assert_eq!(help.code, 0);
    for needle in ["125", "126", "127", "128+N"] {
        assert!(help.stdout.contains(needle), "--help documents {needle}");
    }
}

#[test]
fn older_kernel_rules_refuse_or_degrade_loudly() {
    let sb = Sandbox::new("degrade", As::Caller);
    // As if this kernel had Landlock ABI 2 (Linux 6.1): no TCP port rules.
    let run = |flags: &[&str]| {
        let mut a = vec!["run"];
        a.extend_from_slice(flags);
        a.extend_from_slice(&["--exec", PROBE, "--", PROBE, "pid"]);
        Run::from(sb.portcullis(&a).env("PORTCULLIS_LANDLOCK_ABI", "2").output().unwrap())
    };
    let r = run(&["--connect", "443"]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(
        r.stderr.contains(
            "command line (--connect): network.connect 443 needs Landlock ABI 4 for TCP port rules; kernel has 2"
        ),
        "{}",
        r.stderr
    );
    let r = run(&["--connect", "443", "--best-effort"]);
    assert_eq!(r.verdict(), "pid 2", "{}", r.stderr);
    assert_eq!(r.stderr.matches("degraded: ").count(), 1, "printed once: {}", r.stderr);
    // Without port rules, ABI 2 is enough: filesystem enforced, no network via seccomp.
    let r = run(&[]);
    assert_eq!(r.verdict(), "pid 2", "{}", r.stderr);
    assert!(!r.stderr.contains("degraded"), "{}", r.stderr);
    // ...and the seccomp floor stands in for what ABI 2 lacks.
    let r = Run::from(
        sb.portcullis(&["run", "--exec", PROBE, "--", PROBE, "truncate", &sb.path(&sb.ws.join("file.txt"))])
            .env("PORTCULLIS_LANDLOCK_ABI", "2")
            .output()
            .unwrap(),
    );
    r.expect("errno 1 EPERM");
    let r = Run::from(
        sb.portcullis(&["run", "--exec", PROBE, "--", PROBE, "connect", "9"])
            .env("PORTCULLIS_LANDLOCK_ABI", "2")
            .output()
            .unwrap(),
    );
    r.expect("errno 1 EPERM");
}

#[test]
fn no_landlock_means_no_run_unless_best_effort() {
    // THREATS #34: a kernel without Landlock must not run the sandbox unconfined quietly.
    let sb = Sandbox::new("nolandlock", As::Caller);
    let run = |flags: &[&str]| {
        let mut a = vec!["run"];
        a.extend_from_slice(flags);
        a.extend_from_slice(&["--exec", PROBE, "--", PROBE, "read", "/etc/hostname"]);
        Run::from(sb.portcullis(&a).env("PORTCULLIS_LANDLOCK_ABI", "0").output().unwrap())
    };
    let r = run(&[]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("filesystem rules needs Landlock"), "{}", r.stderr);
    assert!(r.stdout.is_empty());
    let r = run(&["--best-effort"]);
    assert!(r.stderr.contains("degraded: filesystem rules"), "{}", r.stderr);
    // The rest of the floor still holds without Landlock.
    let r = Run::from(
        sb.portcullis(&["run", "--best-effort", "--exec", PROBE, "--", PROBE, "syscall", "io_uring_setup", "1", "0"])
            .env("PORTCULLIS_LANDLOCK_ABI", "0")
            .output()
            .unwrap(),
    );
    r.expect("errno 1 EPERM");
}

#[test]
fn explain_shows_every_layer() {
    let sb = Sandbox::new("explain", As::Caller);
    let r = sb.run(&["explain", "--exec", "/bin/sh", "--connect", "443"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    for needle in [
        "Landlock filesystem",
        "rw-  ",
        "connect TCP: 443",
        "interpreter of",
        "io_uring_setup",
        "clone3",
        "ENOSYS",
        "Environment: pass",
        "max_procs 512",
        "Lifecycle: PID namespace",
        "Syscall gate",
        "deny.write",
        "deny.write **/.git (builtin:strict",
        "deny.symlinks **/.git",
        "parked: open (writing), openat (writing)",
        "MCP gate (with run --mcp)",
    ] {
        assert!(r.stdout.contains(needle), "explain lacks `{needle}`:\n{}", r.stdout);
    }
    // A profile's [mcp] rules, as text.
    let r = sb.run(&["explain", "--profile", "mcp-memory"]);
    assert!(r.stdout.contains("ask   delete_*") && r.stdout.contains("rate     50 per 1000 ms"), "{}", r.stdout);
    let r = sb.run(&["explain", "--json", "--profile", "node"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["plan"]["landlock"]["paths"].as_array().unwrap().len() > 5);
    assert!(v["seccomp"].as_array().unwrap().iter().any(|r| r["syscall"] == "ptrace"));
    assert!(v["exec"].as_array().unwrap().iter().any(|r| r["spec"] == "node"));
    // A path with a bidi override is shown escaped, not reordered on screen.
    let odd = sb.ws.join("\u{202e}txt.exe");
    std::fs::create_dir(&odd).unwrap();
    let r = sb.run(&["explain", "--write", &sb.path(&odd)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("\\u{202e}txt.exe") && !r.stdout.contains('\u{202e}'), "{}", r.stdout);
}

#[test]
fn doctor_reports_this_kernel() {
    let sb = Sandbox::new("doctor", As::Caller);
    let r = sb.run(&["doctor", "--json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let v: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert!(v["kernel"]["landlock_abi"].as_i64().unwrap() >= 0);
    assert!(v["kernel"]["seccomp_filter"].as_bool().unwrap());
    let r = Run::from(
        sb.portcullis(&["doctor", "--profile", "strict"]).env("PORTCULLIS_LANDLOCK_ABI", "3").output().unwrap(),
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("profile strict:"), "{}", r.stdout);
    assert!(r.stdout.contains("ABI 3 < 6"), "doctor names what ABI 3 lacks:\n{}", r.stdout);
}

#[test]
fn profile_list_and_show() {
    let sb = Sandbox::new("plist", As::Caller);
    let r = sb.run(&["profile", "list"]);
    assert_eq!(r.code, 0);
    for name in ["strict", "node", "python"] {
        assert!(r.stdout.lines().any(|l| l.starts_with(name)), "{}", r.stdout);
    }
    let r = sb.run(&["profile", "show", "node"]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("extends = \"strict\""), "{}", r.stdout);
    assert_eq!(sb.run(&["profile", "show", "nope"]).code, 125);
}

#[test]
fn user_profiles_add_names() {
    let sb = Sandbox::new("userprof", As::Caller);
    let dir = sb.home.join(".config/portcullis/profiles");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("mine.toml"), "extends = \"strict\"\n[commands]\nallow = [\"/bin/true\"]\n").unwrap();
    let r = sb.run(&["run", "--profile", "mine", "--", "/bin/true"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// A workspace that holds the home directory (or is `/`) would give the
/// sandbox every start-up file in it: refused, whether named or the
/// current directory by default. A project inside home is fine.
#[test]
fn a_workspace_that_holds_home_is_refused() {
    let sb = Sandbox::new("ws-home", As::Caller);
    let project = sb.home.join("project");
    std::fs::create_dir_all(&project).unwrap();
    for ws in [&sb.home, &sb.root] {
        let r = sb.run(&["run", "--workspace", &sb.path(ws), "--exec", PROBE, "--", PROBE, "read", "/etc/hostname"]);
        assert_eq!(r.code, 125, "{}", r.stderr);
        assert!(r.stderr.contains("holds your home directory"), "{}", r.stderr);
    }
    let r = Run::from(
        sb.portcullis(&["run", "--exec", PROBE, "--", PROBE, "read", "/etc/hostname"])
            .current_dir(&sb.home)
            .output()
            .unwrap(),
    );
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("the default workspace"), "{}", r.stderr);
    let r = sb.run(&["run", "--workspace", "/", "--exec", PROBE, "--", PROBE, "read", "/etc/hostname"]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("--workspace / holds"), "{}", r.stderr);
    // Twin: a project under home runs.
    let r = sb.run(&["run", "--workspace", &sb.path(&project), "--exec", PROBE, "--", PROBE, "read", "/etc/hostname"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
