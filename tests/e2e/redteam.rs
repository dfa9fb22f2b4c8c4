//! Regression tests for escapes found by red-teaming portcullis itself. Each
//! is named after the hole it pins.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;

use crate::both;
use crate::support::*;

fn mode(p: &std::path::Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o7777
}

// Landlock (ABI <= 7) does not mediate chmod/chown/xattr, and the sandbox owns
// every file of its uid: as root, `chmod 04755` on a workspace copy of a shell
// made a setuid-root binary for any local user.
both!(chmod_chown_xattr_outside_rules_are_denied, |sb| {
    let secret = sb.outside.join("secret.txt");
    let s = sb.path(&secret);
    sb.probe(&[], &["chmod", &s, "0o777"]).expect("errno 1 EPERM");
    sb.probe(&["--read", &sb.path(&sb.outside)], &["fchmod", &s, "0o777"]).expect("errno 1 EPERM");
    sb.probe(&[], &["chown", &s]).expect("errno 1 EPERM");
    sb.probe(&[], &["setxattr", &s]).expect("errno 1 EPERM");
    assert_eq!(mode(&secret), 0o666, "mode must be untouched");
    let inside = sb.ws.join("file.txt");
    let i = sb.path(&inside);
    if sb.who == As::Nobody {
        // Twin: a profile may allow plain chmod (never setuid/setgid bits).
        let prof = sb.profile("chmod.toml", "extends = \"strict\"\n[filesystem]\nchmod = true\n");
        sb.probe(&["--profile", &prof], &["chmod", &i, "0o600"]).expect("ok");
        assert_eq!(mode(&inside), 0o600);
        sb.probe(&["--profile", &prof], &["chmod", &i, "0o4755"]).expect("errno 1 EPERM");
        sb.probe(&["--profile", &prof], &["chmod", &i, "0o2755"]).expect("errno 1 EPERM");
        assert_eq!(mode(&inside), 0o600);
    } else {
        // As root the sandbox would own every root-owned file: refused outright.
        let prof = sb.profile("chmod.toml", "extends = \"strict\"\n[filesystem]\nchmod = true\n");
        let r = sb.probe(&["--profile", &prof], &["chmod", &i, "0o600"]);
        assert_eq!(r.code, 125, "{}", r.stderr);
        assert!(r.stderr.contains("refused when portcullis runs as root"), "{}", r.stderr);
        assert_eq!(mode(&inside), 0o666);
    }
});

// sendto(MSG_FASTOPEN) connects without connect(2), which Landlock never saw.
both!(tcp_fast_open_cannot_skip_connect_rules, |sb| {
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let target = TcpListener::bind("127.0.0.1:0").unwrap();
    target.set_nonblocking(true).unwrap();
    let pa = allowed.local_addr().unwrap().port().to_string();
    let pt = target.local_addr().unwrap().port().to_string();
    sb.probe(&["--connect", &pa], &["tfo", &pt]).expect("errno 1 EPERM");
    assert!(target.accept().is_err(), "the target listener must have received nothing");
    // Twin: a plain connect to the allowed port works.
    sb.probe(&["--connect", &pa], &["connect", &pa]).expect("ok");
});

// Without an IPC namespace, host SysV shared memory of this uid was readable.
both!(host_sysv_ipc_is_out_of_reach, |sb| {
    let key: i32 = 0x5043_0000 | (std::process::id() as i32 & 0xffff);
    // SAFETY: shmget/shmctl with plain integers; the segment is removed below.
    let id = unsafe { libc::shmget(key, 4096, libc::IPC_CREAT | 0o666) };
    assert!(id >= 0, "cannot create the host segment");
    let r = sb.probe(&[], &["shmget", &key.to_string(), "0", "0"]);
    // SAFETY: as above.
    unsafe { libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut()) };
    r.expect("errno 2 ENOENT");
    // Twin: the sandbox has SysV IPC of its own.
    sb.probe(&[], &["shmget", "0", "4096", "0o1600"]).expect("ok");
});

// listen(2) without bind(2) auto-binds an ephemeral port Landlock never checks.
both!(listen_autobind_is_denied, |sb| {
    sb.probe(&["--connect", "443"], &["listen"]).expect("errno 1 EPERM");
    // Twin: with a bind port, bind + listen works.
    let port = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    sb.probe(&["--bind", &port], &["listen", &port]).expect("ok");
});

// A symlink planted in the workspace by an earlier run widened a later
// `--read {workspace}/data` rule to wherever it pointed.
both!(symlinks_planted_in_the_workspace_do_not_widen_rules, |sb| {
    let link = sb.ws.join("data");
    std::os::unix::fs::symlink(&sb.outside, &link).unwrap();
    let secret = sb.path(&sb.outside.join("secret.txt"));
    let r = sb.probe(&["--read", &sb.path(&link)], &["read", &secret]);
    assert_eq!(r.code, 125, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("symlink inside a writable tree"), "{}", r.stderr);
    // Twin: naming the real directory works.
    sb.probe(&["--read", &sb.path(&sb.outside)], &["read", &secret]).expect("ok");
});

// THREATS #40: a program planted early on PATH, in a directory the sandbox
// may write (by an earlier run, or a package), never becomes the command an
// allowlisted bare name means.
both!(a_name_on_path_never_resolves_into_a_writable_directory, |sb| {
    let bin = sb.ws.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let marker = sb.ws.join("planted-ran");
    for name in ["cat", "only-here"] {
        let p = bin.join(name);
        std::fs::write(&p, format!("#!/bin/sh\necho planted > {}\n", sb.path(&marker))).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let note = sb.ws.join("note.txt");
    std::fs::write(&note, "hello\n").unwrap();
    let path = format!("{}:/usr/bin:/bin", sb.path(&bin));
    let run = |args: &[&str]| Run::from(sb.portcullis(args).env("PATH", &path).output().unwrap());
    // The real cat runs (the twin: a bare name still works), and stderr
    // says which match was passed over.
    let r = run(&["run", "--exec", "cat", "--", "cat", &sb.path(&note)]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(r.stdout, "hello\n");
    assert!(r.stderr.contains("passed over"), "{}", r.stderr);
    assert!(!marker.exists(), "the planted program ran");
    // Nor through a symlink from a directory the sandbox cannot write.
    let elsewhere = sb.outside.join("bin");
    std::fs::create_dir_all(&elsewhere).unwrap();
    std::os::unix::fs::symlink(bin.join("cat"), elsewhere.join("cat")).unwrap();
    let linked = format!("{}:/usr/bin:/bin", sb.path(&elsewhere));
    let r = Run::from(
        sb.portcullis(&["run", "--exec", "cat", "--", "cat", &sb.path(&note)]).env("PATH", &linked).output().unwrap(),
    );
    assert_eq!((r.code, r.stdout.as_str()), (0, "hello\n"), "{}", r.stderr);
    assert!(!marker.exists(), "the planted program ran through a link");
    // A name found only there is not found: nothing runs.
    let r = run(&["run", "--exec", "only-here", "--", "only-here"]);
    assert_eq!(r.code, 125, "{} {}", r.stdout, r.stderr);
    assert!(r.stderr.contains("not found") && r.stderr.contains("passed over"), "{}", r.stderr);
    assert!(!marker.exists(), "the planted program ran");
});

// THREATS #9: sandboxed code installs a filter of its own with a listener,
// to answer its own parked syscalls. The kernel allows one listener per
// filter chain, and the gate's comes first.
both!(the_sandbox_cannot_add_a_listener_of_its_own, |sb| {
    sb.probe(&[], &["listener"]).expect("errno 16 EBUSY");
    // Twin: without the gate (no listener in the chain) the same install
    // works, so the EBUSY above is the gate's listener, not a seccomp deny.
    let p = sb.profile("nogate.toml", "extends = \"strict\"\n[deny]\ninherit = false\n[ask]\ninherit = false\n");
    sb.probe(&["--profile", &p], &["listener"]).expect("ok");
});

// THREATS #44: the sandbox's init is a fork of portcullis, so its
// /proc/1/exe is the portcullis binary, and its memory and environment the
// supervisor's: none of them may be opened, and the binary stays intact.
both!(the_sandbox_init_and_the_portcullis_binary_are_out_of_reach, |sb| {
    let before = std::fs::read(PORTCULLIS).unwrap();
    for f in ["/proc/1/exe", "/proc/1/mem", "/proc/1/environ"] {
        let r = sb.probe(&[], &["write", f]);
        assert!(r.verdict().starts_with("errno"), "write {f}: {}", r.stdout);
        let r = sb.probe(&[], &["read", f]);
        assert!(r.verdict().starts_with("errno"), "read {f}: {}", r.stdout);
    }
    assert!(std::fs::read(PORTCULLIS).unwrap() == before, "the portcullis binary changed");
    // Twin: the command's own /proc entries are readable.
    sb.probe(&[], &["read", "/proc/self/environ"]).expect("ok");
});

// THREATS #47: the command starts in the caller's directory, which may lie
// outside every rule; relative paths from there reach nothing more.
both!(a_working_directory_outside_the_rules_reaches_nothing, |sb| {
    let run = |flags: &[&str]| {
        let mut args = vec!["run", "--workspace"];
        let ws = sb.path(&sb.ws);
        args.push(&ws);
        args.extend_from_slice(flags);
        args.extend_from_slice(&["--exec", PROBE, "--", PROBE, "read", "secret.txt"]);
        Run::from(sb.portcullis(&args).current_dir(&sb.outside).output().unwrap())
    };
    run(&[]).expect("errno 13 EACCES");
    // Twin: with a rule for that directory the same relative read works.
    let outside = sb.path(&sb.outside);
    run(&["--read", &outside]).expect("ok");
});

// THREATS #19: the gate performs a create on the caller's behalf; a signal
// must not turn a create that happened into an EINTR the caller believes.
// Every create interrupted here left no file, and every file was reported.
both!(signals_never_turn_a_performed_create_into_eintr, |sb| {
    let dir = sb.ws.join("storm");
    std::fs::create_dir_all(&dir).unwrap();
    if sb.who == As::Nobody {
        std::os::unix::fs::chown(&dir, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let r = sb.probe(&[], &["create-storm", &sb.path(&dir), "2000"]);
    assert_eq!(r.code, 0, "{} {}", r.stdout, r.stderr);
    let mut made = None;
    for line in r.stdout.lines() {
        if let Some(i) = line.strip_prefix("eintr ") {
            assert!(!dir.join(format!("f{i}")).exists(), "f{i} was created, but its create returned EINTR");
        } else if let Some(rest) = line.strip_prefix("made ") {
            made = rest.split_whitespace().next().map(|m| m.parse::<usize>().unwrap());
        }
    }
    let on_disk = std::fs::read_dir(&dir).unwrap().count();
    assert_eq!(Some(on_disk), made, "{}", r.stdout);
    assert!(on_disk > 0, "the twin: creates under the storm still work");
});

// The host /proc showed every process's command line and status.
// THREATS #46: links planted where the supervisor later writes or deletes.
// The supervisor removes the private {tmp} at exit (as root, when it runs as
// root); links the sandbox left there, to directories and files it may or
// may not touch, must be removed as links, never followed.
both!(removing_the_private_tmp_never_follows_what_the_sandbox_planted, |sb| {
    let keep = sb.ws.join("file.txt");
    let r = sb.probe(&["--read", &sb.path(&sb.outside)], &["plant-tmp", &sb.path(&sb.outside), &sb.path(&keep)]);
    let tmp = r.verdict().strip_prefix("planted ").unwrap_or_else(|| panic!("{}\n{}", r.stdout, r.stderr));
    assert!(!tmp.is_empty() && !std::path::Path::new(tmp).exists(), "{tmp} is removed at exit");
    // Everything the links pointed at is still there, unchanged.
    assert_eq!(std::fs::read_to_string(sb.outside.join("secret.txt")).unwrap(), "outside\n");
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "inside\n");
    assert!(sb.ws.is_dir() && sb.outside.is_dir());
});

both!(sandbox_sees_only_its_own_processes, |sb| {
    let r = sb.probe(&[], &["proc-pids"]);
    r.expect("pids [1, 2]");
    let me = format!("/proc/{}/cmdline", std::process::id());
    sb.probe(&[], &["read", &me]).expect("errno 2 ENOENT");
    // Twin: its own entries are readable.
    sb.probe(&[], &["read", "/proc/self/status"]).expect("ok");
});

both!(the_private_tmp_is_removed_even_when_the_sandbox_locks_its_owner_out, |sb| {
    // chmod is denied, but a directory's mode is the sandbox's to choose
    // when it makes one: 0300 (no read for its owner) made the removal at
    // exit fail, and the tree stayed on the host, for runs as a user.
    let r = sb.run(&[
        "run",
        "--exec",
        "/bin/sh",
        "--exec",
        "/bin/mkdir",
        "--",
        "/bin/sh",
        "-c",
        "mkdir -m 0300 \"$TMPDIR/keep\" && mkdir -m 0 \"$TMPDIR/keep/deeper\" && : > \"$TMPDIR/keep/blob\" && echo \"$TMPDIR\"",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let tmp = std::path::PathBuf::from(r.stdout.trim());
    assert!(tmp.is_absolute() && tmp.to_string_lossy().contains("tmp-"), "{}", r.stdout);
    assert!(!tmp.exists(), "{} was left behind", tmp.display());
    assert!(!r.stderr.contains("could not remove"), "{}", r.stderr);
});

/// The sandbox can leave in `{tmp}` a tree deeper than any stack, and than
/// PATH_MAX. Its removal recursed (std's remove_dir_all: a stack frame and
/// an open fd per level): under the usual open-file limit of 1024 a tree of
/// 15,000 levels stayed on the host ("could not remove"), on the finisher's
/// first 1 MiB stack it crashed the finisher, and with a limit past some
/// 60,000 it would crash the supervisor itself. Twin: a shallow tree.
#[test]
fn a_tree_deeper_than_any_stack_is_removed_and_the_status_passes() {
    let sb = Sandbox::new("deeptree", As::Caller);
    // No gate: 210,000 parked mkdir and rename calls would take minutes.
    let nogate = sb.profile("nogate.toml", "extends = \"strict\"\n[deny]\ninherit = false\n[ask]\ninherit = false\n");
    for levels in ["10", "15000"] {
        let run = sb.portcullis(&["run", "--profile", &nogate, "--exec", PROBE, "--", PROBE, "deep-tree", levels]);
        // The usual soft limit, whatever the test runner has: through
        // prlimit(1), as the harness goes through setpriv(1).
        let (_, hard) = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).unwrap();
        let mut cmd = std::process::Command::new("prlimit");
        cmd.arg(format!("--nofile={}:{hard}", hard.min(1024))).arg("--").arg(run.get_program()).args(run.get_args());
        cmd.current_dir(run.get_current_dir().expect("the harness sets the workspace"));
        for (k, v) in run.get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        let r = Run::from(cmd.output().unwrap());
        assert_eq!(r.code, 0, "{levels} levels: {} {}", r.stdout, r.stderr);
        let (tmp, verdict) = r.stdout.trim().split_once('\n').expect("$TMPDIR, then the verdict");
        assert_eq!(verdict, "ok", "{levels} levels: {}", r.stderr);
        assert!(tmp.contains("tmp-"), "{tmp}");
        assert!(!r.stderr.contains("could not remove"), "{levels} levels: {}", r.stderr);
        assert!(!std::path::Path::new(tmp).exists(), "{tmp} was left behind ({levels} levels)");
    }
}

/// As root, `{tmp}` is removed with no more file privilege than the sandbox
/// had (uid 0 without capabilities: file permissions bind it). A helper's
/// hunt: the sandbox could not remove d/victim/file (another user's 0555
/// directory), moved d into `{tmp}` (a profile without the gate, so no
/// EXDEV), and the run's cleanup, with CAP_DAC_OVERRIDE and CAP_FOWNER,
/// chmodded victim and removed the file. Now it stays, and the run says
/// it could not remove the tree. (The deep-tree test is the twin: the
/// sandbox's own tree, modes 0 and 0300 included elsewhere, still goes.)
#[test]
fn tmp_is_removed_with_no_more_privilege_than_the_sandbox_had() {
    if !is_root() {
        return skip("the case is root's DAC override; as another user there is none");
    }
    let sb = Sandbox::new("tmpcaps", As::Caller);
    let nogate = sb.profile("nogate.toml", "extends = \"strict\"\n[deny]\ninherit = false\n[ask]\ninherit = false\n");
    let victim = sb.ws.join("d/victim");
    std::fs::create_dir_all(&victim).unwrap();
    std::fs::write(victim.join("file"), "x").unwrap();
    std::os::unix::fs::chown(victim.join("file"), Some(NOBODY), Some(NOBODY)).unwrap();
    std::os::unix::fs::chown(&victim, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o555)).unwrap();
    let script = format!("{PROBE} unlink d/victim/file; {PROBE} rename d \"$TMPDIR/d\"; echo \"$TMPDIR\"");
    let r =
        sb.run(&["run", "--profile", &nogate, "--exec", "/bin/sh", "--exec", PROBE, "--", "/bin/sh", "-c", &script]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stdout.lines().collect();
    assert_eq!(lines[..2], ["errno 13 EACCES", "ok"], "{}", r.stderr);
    let tmp = std::path::PathBuf::from(lines[2]);
    let kept = tmp.join("d/victim/file").exists();
    let _ = std::fs::remove_dir_all(&tmp);
    assert!(kept, "the cleanup removed what the sandbox could not");
    assert!(r.stderr.contains("could not remove"), "{}", r.stderr);
}
