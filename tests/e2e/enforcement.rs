//! Landlock, seccomp, capabilities, exec allowlist, environment and fds.

use std::io::{Read, Write};
use std::net::{TcpListener, UdpSocket};
use std::path::Path;
use std::time::Duration;

use crate::both;
use crate::support::*;

both!(fs_read_outside_is_denied, |sb| {
    let secret = sb.path(&sb.outside.join("secret.txt"));
    sb.probe(&[], &["read", &secret]).expect("errno 13 EACCES");
    sb.probe(&[], &["read", &sb.path(&sb.ws.join("file.txt"))]).expect("ok");
    // Twin: the same file becomes readable when the profile says so.
    sb.probe(&["--read", &sb.path(&sb.outside)], &["read", &secret]).expect("ok");
});

both!(fs_write_outside_is_denied_and_file_untouched, |sb| {
    let secret = sb.outside.join("secret.txt");
    sb.probe(&["--read", &sb.path(&sb.outside)], &["write", &sb.path(&secret)]).expect("errno 13 EACCES");
    sb.probe(&[], &["truncate", &sb.path(&secret)]).expect("errno 13 EACCES");
    sb.probe(&[], &["unlink", &sb.path(&secret)]).expect("errno 13 EACCES");
    sb.probe(&[], &["create", &sb.path(&sb.outside.join("new"))]).expect("errno 13 EACCES");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), "outside\n");
    assert!(!sb.outside.join("new").exists());
    // Twin: the workspace is writable.
    let inside = sb.ws.join("file.txt");
    sb.probe(&[], &["write", &sb.path(&inside)]).expect("ok");
    assert_eq!(std::fs::read_to_string(&inside).unwrap(), "inside\nprobe\n");
    sb.probe(&["--write", &sb.path(&sb.outside)], &["write", &sb.path(&secret)]).expect("ok");
});

both!(fs_reparenting_out_of_the_workspace_is_denied, |sb| {
    let inside = sb.path(&sb.ws.join("file.txt"));
    let out = sb.path(&sb.outside.join("moved.txt"));
    let r = sb.probe(&[], &["rename", &inside, &out]);
    assert!(r.verdict() == "errno 13 EACCES" || r.verdict() == "errno 18 EXDEV", "{}", r.stdout);
    let r = sb.probe(&[], &["link", &sb.path(&sb.outside.join("secret.txt")), &sb.path(&sb.ws.join("l"))]);
    assert!(r.verdict() == "errno 13 EACCES" || r.verdict() == "errno 18 EXDEV", "{}", r.stdout);
    assert!(sb.ws.join("file.txt").exists() && !sb.outside.join("moved.txt").exists() && !sb.ws.join("l").exists());
    // Twin: renames inside the workspace work.
    sb.probe(&[], &["rename", &inside, &sb.path(&sb.ws.join("renamed.txt"))]).expect("ok");
});

// THREATS #27: a right the ruleset does not handle is allowed everywhere.
// Each filesystem right of the ABI, tried in a directory the profile only
// reads (ro/) and in the workspace (the twin), Landlock alone (no gate) and
// under strict (the gate performs the writes, confined the same way).
both!(every_filesystem_right_is_handled, |sb| {
    let ro = sb.outside.join("ro");
    std::fs::create_dir_all(ro.join("sub")).unwrap();
    std::fs::create_dir_all(sb.ws.join("sub")).unwrap();
    std::fs::write(ro.join("f.txt"), "kept\n").unwrap();
    std::fs::write(sb.ws.join("f.txt"), "w\n").unwrap();
    for p in [sb.outside.clone(), ro.clone(), ro.join("sub"), ro.join("f.txt"), sb.ws.join("sub"), sb.ws.join("f.txt")]
    {
        if sb.who == As::Nobody {
            std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
        }
    }
    let nogate = sb.profile(
        "nogate-unix.toml",
        "extends = \"strict\"\n[deny]\ninherit = false\n[ask]\ninherit = false\n[ipc]\nunix = true\n",
    );
    let unix = sb.profile("unix.toml", "extends = \"strict\"\n[ipc]\nunix = true\n");
    let (r, w) = (|n: &str| sb.path(&ro.join(n)), |n: &str| sb.path(&sb.ws.join(n)));
    let read_ro = sb.path(&ro);
    for profile in [&nogate, &unix] {
        let probe = |args: &[&str]| sb.probe(&["--profile", profile, "--read", &read_ro], args);
        // READ_DIR: granted by the read rule; nowhere without one.
        probe(&["list", &read_ro]).expect("ok");
        probe(&["list", &sb.path(&sb.outside)]).expect("errno 13 EACCES");
        let cases: [(&str, &str, Option<&str>); 9] = [
            ("write", "f.txt", None),        // WRITE_FILE
            ("truncate", "f.txt", None),     // TRUNCATE
            ("create", "new", None),         // MAKE_REG
            ("mkdir", "d", None),            // MAKE_DIR
            ("rmdir", "sub", None),          // REMOVE_DIR
            ("symlink", "l", Some("f.txt")), // MAKE_SYM
            ("mkfifo", "p", None),           // MAKE_FIFO
            ("unix-bind", "s", None),        // MAKE_SOCK
            ("unlink", "f.txt", None),       // REMOVE_FILE
        ];
        for (op, name, target) in cases {
            let args = |path: String| match target {
                Some(t) => vec![op.to_string(), t.to_string(), path],
                None => vec![op.to_string(), path],
            };
            let denied = args(r(name));
            let denied: Vec<&str> = denied.iter().map(String::as_str).collect();
            probe(&denied).expect("errno 13 EACCES");
            let allowed = args(w(name));
            let allowed: Vec<&str> = allowed.iter().map(String::as_str).collect();
            probe(&allowed).expect("ok");
        }
        // MAKE_CHAR and MAKE_BLOCK are granted by no rule, the workspace's
        // neither. A whiteout (char 0:0) needs no capability, so only
        // Landlock refuses it; a block device is refused by Landlock before
        // the capability check (EACCES, not EPERM).
        for place in [r("c"), w("c")] {
            probe(&["mknod", &place, "chr"]).expect("errno 13 EACCES");
        }
        for place in [r("b"), w("b")] {
            probe(&["mknod", &place, "blk"]).expect("errno 13 EACCES");
        }
        // IOCTL_DEV: granted with write (/dev/null), not with read (/dev/zero).
        probe(&["ioctl-on", "/dev/zero", "0x5401"]).expect("errno 13 EACCES");
        probe(&["ioctl-on", "/dev/null", "0x5401"]).expect("errno 25 ENOTTY");
        // The read-only directory is as it was; reset the workspace for the next profile.
        assert_eq!(std::fs::read_to_string(ro.join("f.txt")).unwrap(), "kept\n");
        let mut names: Vec<_> = std::fs::read_dir(&ro).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        assert_eq!(names, ["f.txt", "sub"]);
        for n in ["new", "l", "p", "s"] {
            std::fs::remove_file(sb.ws.join(n)).unwrap();
        }
        std::fs::remove_dir(sb.ws.join("d")).unwrap();
        std::fs::create_dir(sb.ws.join("sub")).unwrap();
        std::fs::write(sb.ws.join("f.txt"), "w\n").unwrap();
        if sb.who == As::Nobody {
            for p in [sb.ws.join("sub"), sb.ws.join("f.txt")] {
                std::os::unix::fs::chown(&p, Some(NOBODY), Some(NOBODY)).unwrap();
            }
        }
    }
    // Twin of the whiteout: outside portcullis the same mknod works (as
    // nobody too, without any capability).
    let mut bare = match sb.who {
        As::Caller => std::process::Command::new(PROBE),
        As::Nobody => {
            let mut c = std::process::Command::new("setpriv");
            c.args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", PROBE]);
            c
        }
    };
    let bare = bare.args(["mknod", &sb.path(&sb.root.join("c")), "chr"]).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&bare.stdout).trim(), "ok");
});

both!(fs_reopen_through_proc_fd_cannot_widen, |sb| {
    // Landlock alone (a profile without the gate's protected paths): the
    // reopen is re-checked. outside/ is readable only; the file itself is DAC-writable.
    let p = sb.profile("nogate.toml", "extends = \"strict\"\n[deny]\ninherit = false\n[ask]\ninherit = false\n");
    let secret = sb.path(&sb.outside.join("secret.txt"));
    sb.probe(&["--profile", &p, "--read", &sb.path(&sb.outside)], &["reopen-rw", &secret]).expect("errno 13 EACCES");
    sb.probe(&["--profile", &p, "--write", &sb.path(&sb.outside)], &["reopen-rw", &secret]).expect("ok");
    // With the gate (strict's protected paths), a write open is performed by
    // the supervisor, which never follows magic links: refused even where
    // Landlock would allow it.
    sb.probe(&["--write", &sb.path(&sb.outside)], &["reopen-rw", &secret]).expect("errno 40 ELOOP");
    assert_eq!(std::fs::read_to_string(sb.outside.join("secret.txt")).unwrap(), "outside\n");
});

both!(exec_outside_allowlist_is_denied, |sb| {
    sb.probe(&[], &["exec", "/bin/cat", "/etc/hostname"]).expect("errno 13 EACCES");
    // Twin: allow cat and the probe can exec it.
    let r = sb.probe(&["--exec", "/bin/cat"], &["exec", "/bin/cat", &sb.path(&sb.ws.join("file.txt"))]);
    assert_eq!(r.stdout, "inside\n", "{}", r.stderr);
});

both!(exec_of_a_copy_in_the_workspace_is_denied, |sb| {
    let copy = sb.path(&sb.ws.join("copy"));
    sb.probe(&[], &["create", &copy, PROBE]).expect("ok");
    sb.probe(&[], &["exec", &copy, "pid"]).expect("errno 13 EACCES");
    // Twin: the original runs.
    sb.probe(&[], &["exec", PROBE, "pid"]).expect("pid 2");
});

both!(shell_cannot_run_what_is_not_listed, |sb| {
    let file = sb.path(&sb.ws.join("file.txt"));
    let script = format!("/bin/cat {file}");
    let r = sb.run(&["run", "--exec", "/bin/sh", "--", "/bin/sh", "-c", &script]);
    assert_eq!(r.code, 126, "{}", r.stderr);
    assert!(r.stderr.contains("Permission denied"), "{}", r.stderr);
    let r = sb.run(&["run", "--exec", "/bin/sh", "--exec", "/bin/cat", "--", "/bin/sh", "-c", &script]);
    assert_eq!((r.code, r.stdout.as_str()), (0, "inside\n"), "{}", r.stderr);
});

both!(fileless_exec_is_denied, |sb| {
    sb.probe(&[], &["memfd", "0"]).expect("errno 1 EPERM");
    sb.probe(&[], &["memfd", "0x10"]).expect("errno 1 EPERM"); // MFD_EXEC
    sb.probe(&[], &["execveat-empty", PROBE]).expect("errno 1 EPERM");
    // Twin: a sealed non-executable memfd is fine.
    sb.probe(&[], &["memfd", "8"]).expect("ok");
});

both!(dynamic_loader_trick_stays_inside_the_floor, |sb| {
    // Documented limit: an allowed dynamic program brings its ELF
    // interpreter into the allowlist (the kernel opens it to run the
    // program), so `ld.so /bin/cat` runs cat, which is not allowed itself.
    // It still runs confined. The allowed dynamic program is named here:
    // the probe is linked statically and brings no interpreter.
    let ld = "/lib64/ld-linux-x86-64.so.2";
    if !std::path::Path::new(ld).exists() {
        return skip("no /lib64/ld-linux-x86-64.so.2 on this machine");
    }
    let dynamic = ["--exec", "/usr/bin/true"];
    let r = sb.probe(&dynamic, &["exec", ld, "/bin/cat", &sb.path(&sb.outside.join("secret.txt"))]);
    assert!(r.stderr.contains("Permission denied") || r.code != 0, "{} {}", r.stdout, r.stderr);
    assert!(!r.stdout.contains("outside"), "{}", r.stdout);
    let r = sb.probe(&dynamic, &["exec", ld, "/bin/cat", &sb.path(&sb.ws.join("file.txt"))]);
    assert_eq!(r.stdout, "inside\n", "{}", r.stderr);
});

both!(tcp_connect_only_to_allowed_ports, |sb| {
    let allowed = TcpListener::bind("127.0.0.1:0").unwrap();
    let denied = TcpListener::bind("127.0.0.1:0").unwrap();
    denied.set_nonblocking(true).unwrap();
    let (pa, pd) = (allowed.local_addr().unwrap().port().to_string(), denied.local_addr().unwrap().port().to_string());
    // No network in strict: not even a socket.
    sb.probe(&[], &["connect", &pa]).expect("errno 1 EPERM");
    sb.probe(&["--connect", &pa], &["connect", &pd]).expect("errno 13 EACCES");
    assert!(denied.accept().is_err(), "the denied listener must have received nothing");
    sb.probe(&["--connect", &pa], &["connect", &pa]).expect("ok");
    allowed.set_nonblocking(true).unwrap();
    assert!(allowed.accept().is_ok(), "the allowed listener got the connection");
});

both!(tcp_bind_only_to_allowed_ports, |sb| {
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let (p, other) = (port.to_string(), (if port == 65535 { port - 1 } else { port + 1 }).to_string());
    sb.probe(&["--bind", &p], &["bind", &other]).expect("errno 13 EACCES");
    sb.probe(&["--bind", &p], &["bind", &p]).expect("ok");
});

both!(udp_and_raw_families_are_denied, |sb| {
    let listener = UdpSocket::bind("127.0.0.1:0").unwrap();
    listener.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    // Even with TCP allowed, UDP is not (Landlock cannot restrict it by port).
    sb.probe(&["--connect", "443"], &["udp-send", &port]).expect("errno 1 EPERM");
    let mut buf = [0u8; 16];
    assert!(listener.recv(&mut buf).is_err(), "the UDP listener must have received nothing");
    for (family, ty) in [("16", "3"), ("17", "3"), ("40", "1"), ("1", "1")] {
        // netlink, packet, vsock, and AF_UNIX (no IPC in strict)
        sb.probe(&["--connect", "443"], &["socket", family, ty, "0"]).expect("errno 1 EPERM");
    }
    // SCTP stream sockets would dodge Landlock's TCP port rules.
    sb.probe(&["--connect", "443"], &["socket", "2", "1", "132"]).expect("errno 1 EPERM");
    // Twins: TCP sockets with ports allowed, socketpair always.
    sb.probe(&["--connect", "443"], &["socket", "2", "1", "0"]).expect("ok");
    sb.probe(&[], &["socketpair", "1"]).expect("ok");
});

both!(seccomp_floor_answers_with_its_own_errno, |sb| {
    // Each call would fail differently (EFAULT, EBADF, EINVAL) or succeed if
    // the filter let it through: EPERM/ENOSYS proves seccomp answered.
    let cases: &[(&[&str], &str)] = &[
        (&["syscall", "io_uring_setup", "1", "0"], "errno 1 EPERM"),
        (&["syscall", "io_uring_enter", "-1", "0", "0", "0", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "io_uring_register", "-1", "0", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "bpf", "0", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "perf_event_open", "0", "0", "-1", "-1", "0"], "errno 1 EPERM"),
        (&["syscall", "userfaultfd", "0"], "errno 1 EPERM"),
        (&["syscall", "keyctl", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "add_key", "0", "0", "0", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "request_key", "0", "0", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "ptrace", "0"], "errno 1 EPERM"),
        (&["syscall", "process_vm_readv", "1", "0", "0", "0", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "process_vm_writev", "1", "0", "0", "0", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "kexec_load", "0", "0", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "init_module", "0", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "finit_module", "-1", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "delete_module", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "mount", "0", "0", "0", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "umount2", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "fsopen", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "open_tree", "-1", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "move_mount", "-1", "0", "-1", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "mount_setattr", "-1", "0", "0", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "pivot_root", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "chroot", "0"], "errno 1 EPERM"),
        (&["syscall", "setns", "-1", "0"], "errno 1 EPERM"),
        (&["syscall", "unshare", "0x10000000"], "errno 1 EPERM"),
        (&["syscall", "open_by_handle_at", "-1", "0", "0"], "errno 1 EPERM"),
        (&["syscall", "pidfd_getfd", "-1", "0", "0"], "errno 1 EPERM"),
        // personality: READ_IMPLIES_EXEC denied, the query allowed.
        (&["syscall", "personality", "0x0400000"], "errno 1 EPERM"),
        (&["syscall", "personality", "0xffffffff"], "ok"),
        // clone3 hides its flags: ENOSYS so libc falls back to clone.
        (&["syscall", "clone3", "0", "0"], "errno 38 ENOSYS"),
        // No Landlock layer of the sandbox's own (its denials would be
        // reported under a domain portcullis does not know): the version
        // query, which the kernel answers (7 here), and a create.
        (&["syscall", "landlock_create_ruleset", "0", "0", "1"], "errno 38 ENOSYS"),
        (&["syscall", "landlock_create_ruleset", "0", "0", "0"], "errno 38 ENOSYS"),
        (&["clone", "0x10000000"], "errno 1 EPERM"),
        (&["clone", "0x20000000"], "errno 1 EPERM"),
        (&["clone", "0x40000000"], "errno 1 EPERM"),
        // High bits beside the flag: the rule masks, it does not compare.
        (&["clone", "0x1000010010000000"], "errno 1 EPERM"),
        (&["clone", "0"], "ok"),
        // TIOCSTI/TIOCLINUX compared as 32 bits (CVE-2019-10063): high bits do not help.
        (&["ioctl", "0x5412"], "errno 1 EPERM"),
        (&["ioctl", "0x100005412"], "errno 1 EPERM"),
        (&["ioctl", "0x541C"], "errno 1 EPERM"),
        (&["ioctl", "0x5413"], "errno 9 EBADF"),
    ];
    for (args, want) in cases {
        let r = sb.probe(&[], args);
        assert_eq!(r.verdict(), *want, "probe {args:?}\nstderr: {}", r.stderr);
    }
});

both!(foreign_architecture_syscalls_kill, |sb| {
    // SIGSYS (31): 128 + 31. The x32 bit and i386 int 0x80 never reach a rule.
    let r = sb.probe(&[], &["x32"]);
    assert_eq!(r.code, 159, "x32: {} {}", r.stdout, r.stderr);
    let r = sb.probe(&[], &["int80"]);
    assert_eq!(r.code, 159, "int80: {} {}", r.stdout, r.stderr);
    // Twin: the native getpid works.
    sb.probe(&[], &["pid"]).expect("pid 2");
});

both!(no_capabilities_no_new_privs_seccomp_on, |sb| {
    let r = sb.probe(&[], &["status"]);
    for line in [
        "CapInh:\t0000000000000000",
        "CapPrm:\t0000000000000000",
        "CapEff:\t0000000000000000",
        "CapBnd:\t0000000000000000",
        "CapAmb:\t0000000000000000",
        "NoNewPrivs:\t1",
        "Seccomp:\t2",
    ] {
        assert!(r.stdout.lines().any(|l| l == line), "missing `{line}` in\n{}", r.stdout);
    }
});

both!(setuid_binaries_gain_nothing, |sb| {
    // su is setuid root: with no_new_privs the exec gains no privilege.
    let su = ["/bin/su", "/usr/bin/su"].into_iter().find(|p| std::path::Path::new(p).exists());
    let Some(su) = su else {
        return skip("no su binary to test setuid with");
    };
    let r = sb.run(&["run", "--exec", su, "--", su, "-c", "id -u"]);
    assert_ne!(r.code, 0, "su must fail: {} {}", r.stdout, r.stderr);
    assert!(!r.stdout.contains('0') || sb.who == As::Caller, "{}", r.stdout);
});

both!(only_stdio_fds_reach_the_command, |sb| {
    // Start portcullis with extra inherited fds (a directory and a file),
    // opened without close-on-exec by the shell that execs it.
    let mut inner = sb.portcullis(&["run", "--exec", PROBE, "--", PROBE, "fds"]);
    let mut c = std::process::Command::new("/bin/sh");
    c.args(["-c", "exec 7</ 8</etc/passwd; exec \"$@\"", "sh"]).arg(inner.get_program()).args(inner.get_args());
    c.current_dir(&sb.ws).env("HOME", &sb.home).env_remove("XDG_RUNTIME_DIR");
    let _ = inner.stdin(std::process::Stdio::null());
    Run::from(c.output().unwrap()).expect("fds [0, 1, 2]");
});

both!(environment_is_scrubbed, |sb| {
    let mut c = sb.portcullis(&[
        "run",
        "--env",
        "EXTRA",
        "--env",
        "EXPLICIT_TOKEN",
        "--env",
        "GH_*",
        "--exec",
        PROBE,
        "--",
        PROBE,
        "env",
    ]);
    c.env("GITHUB_TOKEN", "t1").env("OPENAI_API_KEY", "k1").env("AWS_SECRET_ACCESS_KEY", "a1").env("GH_TOKEN", "g1");
    // Loader and interpreter injection (THREATS #41) never pass by default.
    c.env("LD_PRELOAD", "/tmp/evil.so").env("LD_AUDIT", "/tmp/evil.so").env("NODE_OPTIONS", "--require /tmp/x.js");
    c.env("BASH_ENV", "/tmp/x.sh").env("PYTHONSTARTUP", "/tmp/x.py");
    c.env("RANDOM_THING", "r1")
        .env("EXTRA", "e1")
        .env("EXPLICIT_TOKEN", "x1")
        .env("GH_HOST", "h1")
        .env("LANG", "C.UTF-8");
    let r = Run::from(c.output().unwrap());
    let env: Vec<&str> = r.stdout.lines().collect();
    for gone in [
        "GITHUB_TOKEN=",
        "OPENAI_API_KEY=",
        "AWS_SECRET_ACCESS_KEY=",
        "RANDOM_THING=",
        "GH_TOKEN=",
        "LD_PRELOAD=",
        "LD_AUDIT=",
        "NODE_OPTIONS=",
        "BASH_ENV=",
        "PYTHONSTARTUP=",
    ] {
        assert!(!env.iter().any(|l| l.starts_with(gone)), "{gone} leaked: {env:?}");
    }
    for kept in ["EXTRA=e1", "EXPLICIT_TOKEN=x1", "GH_HOST=h1", "LANG=C.UTF-8"] {
        assert!(env.contains(&kept), "{kept} missing: {env:?}");
    }
    assert!(env.iter().any(|l| l.starts_with("TMPDIR=")), "{env:?}");

    // `--env '*'` passes everything else, but still no credential, no
    // connection string and no loader or interpreter variable.
    let mut c = sb.portcullis(&["run", "--env", "*", "--exec", PROBE, "--", PROBE, "env"]);
    c.env("LD_PRELOAD", "/tmp/evil.so").env("NODE_OPTIONS", "--require /tmp/x.js").env("GLIBC_TUNABLES", "x");
    c.env("DATABASE_URL", "postgres://u:hunter2@db/x").env("HTTPS_PROXY", "http://u:pw@proxy:3128");
    c.env("GITHUB_TOKEN", "t1").env("RANDOM_THING", "r1");
    let r = Run::from(c.output().unwrap());
    let env: Vec<&str> = r.stdout.lines().collect();
    for gone in ["LD_PRELOAD=", "NODE_OPTIONS=", "GLIBC_TUNABLES=", "DATABASE_URL=", "HTTPS_PROXY=", "GITHUB_TOKEN="] {
        assert!(!env.iter().any(|l| l.starts_with(gone)), "{gone} passed '*': {env:?}");
    }
    assert!(env.contains(&"RANDOM_THING=r1"), "{env:?}");
});

both!(signals_and_abstract_sockets_do_not_leave_the_sandbox, |sb| {
    // PID 1 in the sandbox's namespace is portcullis' init, outside the
    // Landlock domain: signal scoping refuses it (else: success).
    sb.probe(&[], &["kill", "1", "0"]).expect("errno 1 EPERM");
    // Twin: signalling itself works.
    sb.probe(&[], &["kill", "2", "0"]).expect("ok");
    // An abstract unix listener outside the sandbox, and a profile allowing AF_UNIX.
    let name = format!("pc-e2e-{}-{}", std::process::id(), sb.who as u8);
    let listener = abstract_listener(&name);
    let prof = sb.profile("unix.toml", "extends = \"strict\"\n[ipc]\nunix = true\n");
    sb.probe(&["--profile", &prof], &["abstract-connect", &name]).expect("errno 1 EPERM");
    assert!(!listener.accepted(), "the abstract listener must have accepted nothing");
    // Twin: with abstract sockets allowed the same connect succeeds.
    let prof = sb.profile("unix2.toml", "extends = \"strict\"\n[ipc]\nunix = true\nabstract_unix = true\n");
    sb.probe(&["--profile", &prof], &["abstract-connect", &name]).expect("ok");
    assert!(listener.accepted());
});

struct Abstract(std::os::unix::net::UnixListener);

impl Abstract {
    fn accepted(&self) -> bool {
        self.0.set_nonblocking(true).unwrap();
        self.0.accept().is_ok()
    }
}

fn abstract_listener(name: &str) -> Abstract {
    use std::os::linux::net::SocketAddrExt;
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
    Abstract(std::os::unix::net::UnixListener::bind_addr(&addr).unwrap())
}

both!(stdio_passes_through_untouched, |sb| {
    let mut c = sb.portcullis(&["run", "--exec", PROBE, "--", PROBE, "echo-stdin"]);
    c.stdin(std::process::Stdio::piped()).stdout(std::process::Stdio::piped());
    let mut child = c.spawn().unwrap();
    let msg = "{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"initialize\"}\n";
    child.stdin.take().unwrap().write_all(msg.as_bytes()).unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(out, msg);
});

/// What the host runs later is out of the python profile's reach: uv's tool
/// installs (`~/.local/bin/TOOL` links into them) and the Pythons uv
/// manages run unsandboxed. A warm `uvx` still takes the tools lock; uv's
/// cache stays writable (README "Known limits").
#[test]
fn the_python_profile_keeps_what_the_host_runs_later_read_only() {
    let sb = Sandbox::new("py-host-code", As::Caller);
    let uv = sb.home.join(".local/share/uv");
    let tool = uv.join("tools/ruff/bin/ruff");
    let python = uv.join("python/cpython-3.12-linux/bin/python3.12");
    for f in [&tool, &python, &uv.join("tools/.lock"), &sb.home.join(".cache/uv/.lock")] {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, "").unwrap();
    }
    let p = |f: &Path| sb.path(f);
    sb.probe(&["--profile", "python"], &["write", &p(&tool)]).expect("errno 13 EACCES");
    sb.probe(&["--profile", "python"], &["write", &p(&python)]).expect("errno 13 EACCES");
    sb.probe(&["--profile", "python"], &["create", &p(&uv.join("tools/ruff/bin/new"))]).expect("errno 13 EACCES");
    sb.probe(&["--profile", "python"], &["read", &p(&tool)]).expect("ok");
    sb.probe(&["--profile", "python"], &["write", &p(&uv.join("tools/.lock"))]).expect("ok");
    sb.probe(&["--profile", "python"], &["write", &p(&sb.home.join(".cache/uv/.lock"))]).expect("ok");
}

/// `uv auth login` keeps package-index tokens in plain text beside uv's
/// tools: the python profile (and every uvx server's) cannot read them.
#[test]
fn the_python_profile_does_not_read_uv_credentials() {
    let sb = Sandbox::new("py-uv-creds", As::Caller);
    let uv = sb.home.join(".local/share/uv");
    let creds = uv.join("credentials/credentials.toml");
    let python = uv.join("python/cpython-3.12-linux/bin/python3.12");
    for f in [&creds, &python] {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, "[[credential]]\nservice = \"https://pypi.example/\"\npassword = \"pypi-secret\"\n").unwrap();
    }
    for profile in ["python", "uvx", "mcp-fetch", "mcp-git"] {
        sb.probe(&["--profile", profile], &["read", &sb.path(&creds)]).expect("errno 13 EACCES");
        // Twin: the Pythons uv manages are readable (uvx runs them).
        sb.probe(&["--profile", profile], &["read", &sb.path(&python)]).expect("ok");
    }
}

/// `~/.npmrc` holds registry tokens: the node profile (and every npm
/// server's) cannot read it; an offline npm does not need it.
#[test]
fn the_node_profile_does_not_read_npm_tokens() {
    let sb = Sandbox::new("node-npmrc", As::Caller);
    let npmrc = sb.home.join(".npmrc");
    std::fs::write(&npmrc, "//registry.npmjs.org/:_authToken=npm_0123456789abcdef\n").unwrap();
    let cache = sb.home.join(".npm/_cacache/index");
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    std::fs::write(&cache, "").unwrap();
    sb.probe(&["--profile", "node"], &["read", &sb.path(&npmrc)]).expect("errno 13 EACCES");
    sb.probe(&["--profile", "node"], &["read", &sb.path(&cache)]).expect("ok");
}
