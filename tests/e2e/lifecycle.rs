//! Exit status, signal forwarding, and what happens when the supervisor dies.

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::both;
use crate::support::*;

both!(exit_status_passes_through, |sb| {
    assert_eq!(sb.probe(&[], &["exit", "7"]).code, 7);
    assert_eq!(sb.probe(&[], &["exit", "0"]).code, 0);
    assert_eq!(sb.probe(&[], &["raise", "9"]).code, 137);
    assert_eq!(sb.probe(&[], &["raise", "11"]).code, 139);
});

fn spawn_ready(sb: &Sandbox, args: &[&str]) -> (std::process::Child, BufReader<std::process::ChildStdout>) {
    let mut all = vec!["run", "--exec", PROBE, "--", PROBE];
    all.extend_from_slice(args);
    let mut child = sb.portcullis(&all).stdout(Stdio::piped()).stderr(Stdio::inherit()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.starts_with("ready") || line.starts_with("ok"), "child said {line:?}");
    (child, out)
}

both!(signals_are_forwarded, |sb| {
    for (sig, want) in [(libc::SIGTERM, 42), (libc::SIGHUP, 128 + libc::SIGHUP), (libc::SIGINT, 128 + libc::SIGINT)] {
        let (mut child, _out) = spawn_ready(sb, &["trap"]);
        // The supervisor is setpriv's exec'd image for nobody: same pid.
        // SAFETY: kill with plain integers.
        unsafe { libc::kill(child.id() as i32, sig) };
        let status = child.wait().unwrap();
        assert_eq!(status.code(), Some(want), "signal {sig}");
    }
});

// A signal may come at any moment of the launch: before portcullis has
// blocked it (then it ends portcullis itself), while the sandbox's init is
// being cloned (the kernel drops a signal sent to a PID namespace's init
// that has no handler for it: see stage::Inherited), or once the command
// runs. Whenever it comes, the run ends by it; before the stage was cloned
// straight into its namespaces, some were lost and the command ran on.
both!(a_signal_at_any_moment_of_the_launch_ends_the_run, |sb| {
    for i in 0..40u64 {
        let mut child = sb
            .portcullis(&["run", "--exec", PROBE, "--", PROBE, "trap"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_micros(i * 100));
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT);
        let deadline = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("a SIGINT {} µs into the launch was lost: the command ran on", i * 100);
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        use std::os::unix::process::ExitStatusExt;
        let ended = status.code() == Some(128 + libc::SIGINT) || status.signal() == Some(libc::SIGINT);
        assert!(ended, "a SIGINT {} µs into the launch: {status:?}", i * 100);
    }
});

fn processes_with(marker: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if let Ok(cmd) = std::fs::read(e.path().join("cmdline")) {
            if String::from_utf8_lossy(&cmd).split('\0').any(|a| a == marker) {
                out.push(pid);
            }
        }
    }
    out
}

both!(nothing_outlives_a_killed_supervisor, |sb| {
    let marker = format!("pc-orphan-{}-{}", std::process::id(), sb.who as u8);
    let (mut child, _out) = spawn_ready(sb, &["orphan", &marker]);
    // A setsid'd, double-forked grandchild is running...
    let deadline = Instant::now() + Duration::from_secs(5);
    while processes_with(&marker).is_empty() {
        assert!(Instant::now() < deadline, "the orphan never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    // ...then the supervisor is SIGKILLed: it can clean up nothing itself.
    child.kill().unwrap();
    child.wait().unwrap();
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let left = processes_with(&marker);
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "sandboxed processes survived the supervisor by a second: {left:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
});

/// A process's state letter (`T`: stopped), or None once it is gone.
fn state(pid: i32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

// Ctrl-Z (the terminal's SIGTSTP to portcullis) stops the whole sandbox,
// a setsid'd double-forked grandchild included, and portcullis after it;
// SIGCONT (`fg`) continues both. The sandbox has a session of its own, so
// without this it ran on, reading what the user typed into their shell.
both!(ctrl_z_stops_the_whole_sandbox_and_fg_continues_it, |sb| {
    let marker = format!("pc-jobctl-{}-{}", std::process::id(), sb.who as u8);
    let (mut child, _out) = spawn_ready(sb, &["orphan", &marker]);
    use nix::sys::signal::{kill, Signal};
    let sup = child.id() as i32;
    let signal = |sig: Signal| kill(nix::unistd::Pid::from_raw(sup), sig).unwrap();
    let wait_for = |what: &str, ok: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !ok() {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    // The sandbox's own: the probe and its grandchild (not portcullis, its
    // relay and init, which carry the marker in their command line too).
    let sandboxed = || {
        processes_with(&marker)
            .into_iter()
            .filter(|p| {
                let cmd = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
                cmd.split(|b| *b == 0).next() == Some(PROBE.as_bytes())
            })
            .collect::<Vec<_>>()
    };
    wait_for("the grandchild never started", &|| sandboxed().len() >= 2);
    let inside = sandboxed();
    signal(Signal::SIGTSTP);
    wait_for("portcullis did not stop", &|| state(sup) == Some('T'));
    // Init stops them as the signal reaches it, a moment after.
    wait_for("the sandbox runs on while portcullis is stopped", &|| inside.iter().all(|&p| state(p) == Some('T')));
    signal(Signal::SIGCONT);
    wait_for("portcullis did not continue", &|| state(sup) != Some('T'));
    wait_for("the sandbox did not continue", &|| inside.iter().all(|&p| state(p) != Some('T')));
    signal(Signal::SIGTERM);
    child.wait().unwrap();
});

// As root, the sandbox's pids cgroup is made before the profile is read
// (every built-in profile sets max_procs). It lives as long as its run,
// used or not, and goes with it: also for a profile that sets no limit, and
// for a run refused before its limits (a profile that does not exist).
both!(a_cgroup_made_ahead_goes_with_its_run, |sb| {
    let no_limits = sb.profile("nolimits.toml", "[filesystem]\nread = [\"/usr\", \"/lib\", \"/etc\"]\n");
    let gone = |pid: u32| {
        let prefix = format!("portcullis-{pid}-");
        let deadline = Instant::now() + Duration::from_secs(5);
        // The finisher removes it after the status is out.
        while !cgroups_named(&prefix).is_empty() {
            assert!(Instant::now() < deadline, "left behind: {:?}", cgroups_named(&prefix));
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    for profile in ["strict", no_limits.as_str()] {
        let mut child = sb
            .portcullis(&["run", "--profile", profile, "--exec", PROBE, "--", PROBE, "trap"])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(line.starts_with("ready"), "{profile}: {line:?}");
        // Twin: while it runs, root's run has its cgroup (nobody's has none:
        // RLIMIT_NPROC in its user namespace stands in).
        let live = cgroups_named(&format!("portcullis-{}-", child.id()));
        assert_eq!(live.len(), usize::from(sb.who == As::Caller && is_root()), "{profile}: {live:?}");
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        child.wait().unwrap();
        gone(child.id());
    }
    let refused = sb.portcullis(&["run", "--profile", "/nonexistent/p.toml", "--", PROBE]).spawn().unwrap();
    let pid = refused.id();
    assert_eq!(refused.wait_with_output().unwrap().status.code(), Some(125));
    gone(pid);
});

/// Directories under /sys/fs/cgroup (a few levels down) named `prefix...`.
fn cgroups_named(prefix: &str) -> Vec<std::path::PathBuf> {
    let mut found = Vec::new();
    let mut dirs = vec![(std::path::PathBuf::from("/sys/fs/cgroup"), 0)];
    while let Some((d, depth)) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            if e.file_name().to_string_lossy().starts_with(prefix) {
                found.push(e.path());
            } else if depth < 5 {
                dirs.push((e.path(), depth + 1));
            }
        }
    }
    found
}

both!(what_a_killed_supervisor_left_behind_goes_with_the_next_run, |sb| {
    // SIGKILL leaves portcullis no cleanup: its {tmp} (whatever the sandbox
    // wrote there) and its cgroups stayed for good. The next run removes
    // them, once nothing of that run lives (its pid is gone and its {tmp}
    // no longer held): the {tmp} trees as it starts, the cgroups as it
    // cleans up after itself (which may be after its status is out).
    let uid = if sb.who == As::Nobody { NOBODY } else { nix::unistd::geteuid().as_raw() };
    let root = std::path::PathBuf::from(format!("/tmp/portcullis-{uid}"));
    let (mut child, _out) = spawn_ready(sb, &["trap"]);
    let prefix = format!("tmp-{}-", child.id());
    let tmp = std::fs::read_dir(&root)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with(&prefix))
        .expect("the run's {tmp}");
    let cgroup_prefix = format!("portcullis-{}-", child.id());
    let had_cgroups = !cgroups_named(&cgroup_prefix).is_empty();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(tmp.exists(), "a killed portcullis cannot remove its {{tmp}}");
    // Its stage dies with it (PDEATHSIG), and with it the hold on {tmp}.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        sb.probe(&[], &["status"]);
        if !tmp.exists() {
            break;
        }
        assert!(Instant::now() < deadline, "{} was never removed", tmp.display());
        std::thread::sleep(Duration::from_millis(100));
    }
    while had_cgroups && !cgroups_named(&cgroup_prefix).is_empty() {
        assert!(Instant::now() < deadline, "never removed: {:?}", cgroups_named(&cgroup_prefix));
        std::thread::sleep(Duration::from_millis(100));
        sb.probe(&[], &["status"]);
    }
    // Twin: a live run's {tmp} is never swept (its pid lives and it is held).
    let (mut live, _out) = spawn_ready(sb, &["trap"]);
    let live_prefix = format!("tmp-{}-", live.id());
    sb.probe(&[], &["status"]);
    let still =
        std::fs::read_dir(&root).unwrap().flatten().any(|e| e.file_name().to_string_lossy().starts_with(&live_prefix));
    live.kill().unwrap();
    live.wait().unwrap();
    assert!(still, "a live run's {{tmp}} was swept");
});

/// `{tmp}` lives under a root only this user may write. Another user who
/// made that root first (`/tmp/portcullis-UID` when XDG_RUNTIME_DIR is
/// unset, or here `$XDG_RUNTIME_DIR/portcullis`) is refused before
/// anything in it is touched: the sweep of stale trees once ran before the
/// check, and a reviewer turned its chmod against the victim's files. The
/// victim is nobody; the squatter another uid.
#[test]
fn a_temp_root_another_user_made_is_refused_and_left_alone() {
    let Some(sb) = Sandbox::nobody("squat") else { return };
    const SQUATTER: u32 = 4242;
    let run_dir = sb.root.join("run");
    let squat = run_dir.join("portcullis");
    std::fs::create_dir_all(&squat).unwrap();
    std::os::unix::fs::chown(&run_dir, Some(NOBODY), Some(NOBODY)).unwrap();
    // A leftover named as a killed session's (a pid that is gone).
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    gone.wait().unwrap();
    let stale = squat.join(format!("tmp-{}-1", gone.id()));
    std::fs::create_dir(&stale).unwrap();
    use std::os::unix::fs::PermissionsExt;
    for d in [&squat, &stale] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
        std::os::unix::fs::chown(d, Some(SQUATTER), Some(SQUATTER)).unwrap();
    }
    let run = || {
        let mut c = sb.portcullis(&["run", "--exec", PROBE, "--", PROBE, "status"]);
        c.env("XDG_RUNTIME_DIR", &run_dir).env("PORTCULLIS_BROKER", "off");
        Run::from(c.output().unwrap())
    };
    let r = run();
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("is not a 0700 directory owned by this user"), "{}", r.stderr);
    assert!(stale.is_dir(), "the squatter's tree was swept");
    // Twin: the same leftover under a root of the user's own goes.
    std::os::unix::fs::chown(&squat, Some(NOBODY), Some(NOBODY)).unwrap();
    std::fs::set_permissions(&squat, std::fs::Permissions::from_mode(0o700)).unwrap();
    let r = run();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!stale.exists(), "a stale {{tmp}} under the user's own root stayed");
}

// No thread can be started (a process limit of one, for a user with no
// other process): `run`'s launch-signals thread's job then runs on the
// main thread, which must not wait there for what only it sends later.
// The run ends refused, saying why, instead of waiting forever with its
// signals blocked.
#[test]
fn a_run_that_can_start_no_thread_ends_refused() {
    if !is_root() {
        skip("switching to a user of the test's own needs root");
        return;
    }
    if std::process::Command::new("prlimit").arg("--version").output().is_err() {
        skip("prlimit (util-linux) is not installed");
        return;
    }
    const LONER: u32 = 4243;
    let sb = Sandbox::new("nothread", As::Caller);
    for d in [&sb.root, &sb.ws, &sb.home] {
        std::os::unix::fs::chown(d, Some(LONER), Some(LONER)).unwrap();
    }
    let mut outer = std::process::Command::new("setpriv");
    outer.args([&format!("--reuid={LONER}"), &format!("--regid={LONER}"), "--clear-groups", "--"]);
    outer.args(["prlimit", "--nproc=1", "--"]);
    let inner = sb.portcullis(&["run", "--exec", PROBE, "--", PROBE, "status"]);
    let mut child = wrapping(outer, &inner).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("a run that could start no thread was still waiting after 20 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
    assert_eq!(status.code(), Some(125), "{stderr}");
    assert!(stderr.contains("Resource temporarily unavailable"), "{stderr}");
}

/// `c` under bubblewrap with "0" mounted over the user-namespace sysctl:
/// portcullis finds no user namespaces and starts the command itself.
fn without_user_namespaces(c: &std::process::Command, zero: &std::path::Path) -> std::process::Command {
    let mut w = std::process::Command::new("bwrap");
    w.args(["--dev-bind", "/", "/", "--ro-bind"]).arg(zero).args(["/proc/sys/user/max_user_namespaces", "--"]);
    wrapping(w, c)
}

/// `outer` (a launcher and its options) running `c`: its program, arguments,
/// environment and directory; stdin from /dev/null.
fn wrapping(mut outer: std::process::Command, c: &std::process::Command) -> std::process::Command {
    outer.arg(c.get_program()).args(c.get_args());
    for (k, v) in c.get_envs() {
        match v {
            Some(v) => outer.env(k, v),
            None => outer.env_remove(k),
        };
    }
    if let Some(d) = c.get_current_dir() {
        outer.current_dir(d);
    }
    outer.stdin(Stdio::null());
    outer
}

// The path without namespaces (the stage's child is the command itself):
// it still confines, passes the status and signals through, and says
// what it lacks. Root only: bubblewrap mounts without a user namespace.
#[test]
fn without_user_namespaces_the_command_is_still_confined() {
    if !is_root() {
        skip("the run without user namespaces is staged with bubblewrap's mounts, which need root");
        return;
    }
    if std::process::Command::new("bwrap").arg("--version").output().is_err() {
        skip("bubblewrap is not installed (cargo xtask ci installs it)");
        return;
    }
    let sb = Sandbox::new("without_user_namespaces", As::Caller);
    let zero = sb.root.join("zero");
    std::fs::write(&zero, "0\n").unwrap();
    let run = |args: &[&str]| {
        let mut all = vec!["run", "--exec", PROBE, "--", PROBE];
        all.extend_from_slice(args);
        Run::from(without_user_namespaces(&sb.portcullis(&all), &zero).output().unwrap())
    };
    let r = run(&["exit", "7"]);
    assert_eq!(r.code, 7, "{}", r.stderr);
    assert!(r.stderr.contains("no user/PID namespace here"), "{}", r.stderr);
    // Confined all the same: capabilities, no_new_privs, seccomp, Landlock.
    let r = run(&["status"]);
    assert!(r.stdout.contains("NoNewPrivs:\t1") && r.stdout.contains("Seccomp:\t2"), "{}", r.stdout);
    assert!(r.stdout.contains("CapEff:\t0000000000000000"), "{}", r.stdout);
    // It confined itself on another CPU than the deciding thread, and took its CPUs back.
    assert_eq!(cpus_allowed(&r.stdout), cpus_allowed(&std::fs::read_to_string("/proc/self/status").unwrap()));
    let secret = sb.outside.join("secret");
    std::fs::write(&secret, "s").unwrap();
    assert!(run(&["read", &sb.path(&secret)]).stdout.starts_with("errno 13"));
    let inside = sb.ws.join("mine");
    std::fs::write(&inside, "m").unwrap();
    assert_eq!(run(&["read", &sb.path(&inside)]).stdout.trim(), "ok");
    // A signal reaches the command (the supervisor is bwrap's child).
    let mut c = without_user_namespaces(&sb.portcullis(&["run", "--exec", PROBE, "--", PROBE, "trap"]), &zero);
    let mut child = c.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "ready");
    let supervisor = std::fs::read_to_string(format!("/proc/{}/task/{}/children", child.id(), child.id())).unwrap();
    let supervisor: i32 = supervisor.split_whitespace().next().unwrap().parse().unwrap();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(supervisor), nix::sys::signal::Signal::SIGTERM).unwrap();
    assert_eq!(child.wait().unwrap().code(), Some(42));
}

// A script without `#!` runs through /bin/sh, as execvp(3) (and a shell)
// would run it, when the profile lets /bin/sh run; otherwise it is not
// executable (126), and nothing ran.
both!(a_script_without_an_interpreter_line_runs_through_sh_if_allowed, |sb| {
    use std::os::unix::fs::PermissionsExt;
    let script = sb.ws.join("plain.sh");
    std::fs::write(&script, "echo ran \"$@\"\n").unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = sb.path(&script);
    let sh = sb.path(&std::fs::canonicalize("/bin/sh").unwrap());
    let r = sb.run(&["run", "--exec", &path, "--exec", &sh, "--", &path, "a", "b"]);
    assert_eq!((r.code, r.stdout.trim()), (0, "ran a b"), "{}", r.stderr);
    let r = sb.run(&["run", "--exec", &path, "--", &path, "a", "b"]);
    assert_eq!(r.code, 126, "{}", r.stderr);
    assert!(r.stdout.is_empty() && r.stderr.contains("Exec format error"), "{}\n{}", r.stdout, r.stderr);
});

/// The `Cpus_allowed_list` of a /proc/PID/status.
fn cpus_allowed(status: &str) -> Option<String> {
    status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|l| l.trim().to_string())
}

// The stage confines the command on another CPU than the thread deciding
// the launch (it is moved off that thread's CPU while it does); the command
// execs on the CPUs portcullis was given, whatever they are, not on fewer.
both!(the_command_runs_on_the_cpus_portcullis_was_given, |sb| {
    let ours = cpus_allowed(&std::fs::read_to_string("/proc/self/status").unwrap());
    let r = sb.run(&["run", "--exec", PROBE, "--", PROBE, "status"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(cpus_allowed(&r.stdout), ours, "{}", r.stdout);
    // Given one CPU (taskset), the command has that one.
    let last = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .ok()
        .and_then(|set| (0..nix::sched::CpuSet::count()).rev().find(|&c| set.is_set(c).unwrap_or(false)));
    let Some(cpu) = last else {
        skip("this process's CPUs cannot be read");
        return;
    };
    let mut taskset = std::process::Command::new("taskset");
    taskset.args(["-c", &cpu.to_string()]);
    let mut t = wrapping(taskset, &sb.portcullis(&["run", "--exec", PROBE, "--", PROBE, "status"]));
    let r = Run::from(t.output().expect("taskset (util-linux) runs"));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(cpus_allowed(&r.stdout), Some(cpu.to_string()), "{}", r.stdout);
});
