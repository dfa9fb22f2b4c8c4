//! portcullis-vmsuite: the policy suite of `cargo xtask vm-test`, run inside
//! each VM (and directly on the host). It runs every case of
//! vm-tests/cases.toml as root and as nobody, checks each against what this
//! kernel's Landlock ABI must give, runs `portcullis profile test` for every
//! shipped profile, and prints one `RESULT` line per check and a `SUITE`
//! line at the end, which the host reads from the serial console.
//!
//! usage: portcullis-vmsuite PORTCULLIS PROBE [--expect-abi N] [--only-profile NAME]

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

const CASES: &str = include_str!("../../vm-tests/cases.toml");
const NOBODY: u32 = 65534;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Cases {
    case: Vec<Case>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    #[serde(default)]
    flags: Vec<String>,
    args: Vec<String>,
    expect: Vec<String>,
    /// Replaces `expect` when the supervisor runs as root (which may make
    /// the cgroups an unprivileged user cannot).
    root_expect: Option<Vec<String>>,
    #[serde(default = "one")]
    needs_abi: i64,
    below: Option<Below>,
    then: Option<Then>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Below {
    refuse: Option<String>,
    degraded: Option<Vec<String>>,
    expect: Option<Vec<String>>,
}

#[derive(Deserialize, Clone)]
#[serde(deny_unknown_fields)]
struct Then {
    args: Vec<String>,
    expect: Vec<String>,
}

fn one() -> i64 {
    1
}

struct Outcome {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Outcome {
    fn matches(&self, want: &str) -> bool {
        if let Some(code) = want.strip_prefix("exit ") {
            return code.parse() == Ok(self.code);
        }
        if let Some(text) = want.strip_prefix("has:") {
            return self.stdout.contains(text);
        }
        self.stdout.lines().last().map(str::trim) == Some(want)
    }

    fn any(&self, wants: &[String]) -> bool {
        wants.iter().any(|w| self.matches(w))
    }

    fn describe(&self) -> String {
        let last = self.stdout.lines().last().unwrap_or("").trim();
        let err = self.stderr.lines().last().unwrap_or("").trim();
        format!("exit {}, stdout `{last}`, stderr `{err}`", self.code)
    }
}

struct Suite {
    portcullis: PathBuf,
    probe: PathBuf,
    dir: PathBuf,
    vars: BTreeMap<&'static str, String>,
    pass: usize,
    fail: usize,
}

impl Suite {
    fn expand(&self, s: &str) -> String {
        let mut out = s.to_string();
        for (k, v) in &self.vars {
            out = out.replace(&format!("{{{k}}}"), v);
        }
        out
    }

    fn run(&self, who: &str, flags: &[String], args: &[String], best_effort: bool) -> Outcome {
        let c = self.command(who, flags, args, best_effort);
        Self::output(c)
    }

    fn command(&self, who: &str, flags: &[String], args: &[String], best_effort: bool) -> Command {
        let mut c = Command::new(&self.portcullis);
        c.arg("run");
        c.args(flags.iter().map(|f| self.expand(f)));
        if best_effort {
            c.arg("--best-effort");
        }
        let probe = self.probe.to_string_lossy().to_string();
        c.args(["--exec", &probe, "--workspace", &self.vars["ws"], "--", &probe]);
        c.args(args.iter().map(|a| self.expand(a)));
        c.current_dir(&self.vars["ws"]).stdin(Stdio::null()).env_remove("XDG_RUNTIME_DIR");
        // The suite's own audit log per user, not the machine's.
        let audit = self.dir.join(format!("audit-{who}"));
        c.env("PORTCULLIS_AUDIT_LOG", audit.join("audit.log")).env("PORTCULLIS_AUDIT_KEY", audit.join("audit.key"));
        if who == "nobody" {
            c.uid(NOBODY).gid(NOBODY).env("HOME", self.dir.join("home"));
        }
        c
    }

    fn output(mut c: Command) -> Outcome {
        match c.output() {
            Ok(o) => Outcome {
                code: o.status.code().unwrap_or_else(|| 128 + o.status.signal().unwrap_or(0)),
                stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            },
            Err(e) => Outcome { code: -1, stdout: String::new(), stderr: format!("cannot start portcullis: {e}") },
        }
    }

    fn record(&mut self, ok: bool, name: &str, detail: &str) {
        if ok {
            self.pass += 1;
            println!("RESULT PASS {name}");
        } else {
            self.fail += 1;
            println!("RESULT FAIL {name}: {detail}");
        }
    }

    fn reset_files(&self) {
        let ws = PathBuf::from(&self.vars["ws"]);
        let outside = PathBuf::from(&self.vars["outside"]);
        let _ = std::fs::remove_dir_all(&ws);
        let _ = std::fs::remove_dir_all(&outside);
        // The workspace is a git checkout: strict protects its hooks and config.
        for d in [&ws, &outside, &ws.join(".git"), &ws.join(".git/hooks")] {
            std::fs::create_dir_all(d).expect("scratch dir");
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
        }
        for (f, text) in [
            (ws.join("file.txt"), "inside\n"),
            (outside.join("secret.txt"), "outside\n"),
            (ws.join(".git/config"), "[core]\n"),
        ] {
            std::fs::write(&f, text).expect("scratch file");
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        }
    }

    fn case(&mut self, case: &Case, who: &str, abi: i64) {
        self.reset_files();
        let name = format!("{} [{who}]", case.name);
        let check_then = |s: &Suite| -> Option<String> {
            let t = case.then.as_ref()?;
            let o = s.run(who, &case.flags, &t.args, false);
            (!o.any(&t.expect)).then(|| format!("then {:?}: want {:?}, got {}", t.args, t.expect, o.describe()))
        };
        if abi >= case.needs_abi {
            let o = self.run(who, &case.flags, &case.args, false);
            let expect = case.root_expect.as_ref().filter(|_| who == "root").unwrap_or(&case.expect);
            let mut problem = (!o.any(expect)).then(|| format!("want {expect:?}, got {}", o.describe()));
            if problem.is_none() {
                problem = check_then(self);
            }
            self.record(problem.is_none(), &name, &problem.unwrap_or_default());
            return;
        }
        let below =
            case.below.clone().unwrap_or(Below { refuse: None, degraded: None, expect: Some(case.expect.clone()) });
        if let Some(text) = &below.refuse {
            let o = self.run(who, &case.flags, &case.args, false);
            let refused = o.code == 125 && o.stderr.contains(text.as_str());
            self.record(
                refused,
                &format!("{name} refused without --best-effort (ABI {abi})"),
                &format!("want exit 125 naming `{text}`, got {}", o.describe()),
            );
            if let Some(degraded) = &below.degraded {
                let o = self.run(who, &case.flags, &case.args, true);
                let ok = o.any(degraded) && o.stderr.contains("degraded:");
                self.record(
                    ok,
                    &format!("{name} degrades loudly with --best-effort (ABI {abi})"),
                    &format!("want {degraded:?} and a `degraded:` line, got {}", o.describe()),
                );
            }
        }
        if let Some(expect) = &below.expect {
            let o = self.run(who, &case.flags, &case.args, false);
            let mut problem =
                (!o.any(expect)).then(|| format!("want {expect:?} (ABI {abi} floor), got {}", o.describe()));
            if problem.is_none() {
                problem = check_then(self);
            }
            self.record(problem.is_none(), &format!("{name} (floor on ABI {abi})"), &problem.unwrap_or_default());
        }
    }

    fn profile_test(&mut self, profile: &str, abi: i64) {
        let o = Command::new(&self.portcullis)
            .args(["profile", "test", profile])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .env("HOME", self.dir.join("home"))
            .env("PORTCULLIS_AUDIT_LOG", self.dir.join("audit-root/audit.log"))
            .env("PORTCULLIS_AUDIT_KEY", self.dir.join("audit-root/audit.key"))
            .output();
        match o {
            Ok(o) => {
                let out = String::from_utf8_lossy(&o.stdout);
                for line in out.lines() {
                    if let Some(rest) = line.strip_prefix("PASS ") {
                        self.record(true, &format!("profile {profile}: {rest}"), "");
                    } else if let Some(rest) = line.strip_prefix("FAIL ") {
                        self.record(false, &format!("profile {profile}: {rest}"), "");
                    }
                }
                let err = String::from_utf8_lossy(&o.stderr);
                // Only network port rules (ABI 4) are allowed to be the reason, and only below ABI 4.
                let only_ports = err
                    .lines()
                    .filter(|l| l.contains(" needs Landlock ABI "))
                    .all(|l| l.contains("needs Landlock ABI 4"));
                if abi < 4
                    && only_ports
                    && o.status.code() == Some(125)
                    && err.contains("this kernel cannot enforce the profile as written")
                {
                    // A profile needing more than this kernel has (mcp-fetch's
                    // port rules on ABI < 4) must be refused, not run weaker.
                    self.record(true, &format!("profile {profile}: refused on this kernel, as it must be"), "");
                    return;
                }
                self.record(
                    o.status.success(),
                    &format!("profile {profile}: `portcullis profile test` exits 0"),
                    err.trim(),
                );
            }
            Err(e) => self.record(false, &format!("profile {profile}"), &e.to_string()),
        }
    }
}

/// Every shipped profile: each carries `[[expect]]` entries to check here.
fn builtin_profiles(portcullis: &Path) -> Vec<String> {
    let out = Command::new(portcullis).args(["profile", "list"]).output().expect("portcullis profile list");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?;
            words.next().filter(|src| src.starts_with("builtin:")).map(|_| name.to_string())
        })
        .collect()
}

fn abi_of(portcullis: &Path) -> i64 {
    let out = Command::new(portcullis).args(["doctor", "--json"]).output().expect("portcullis doctor");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("doctor --json");
    v["kernel"]["landlock_abi_used"].as_i64().unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: portcullis-vmsuite PORTCULLIS PROBE [--expect-abi N] [--only-profile NAME]");
        std::process::exit(2);
    }
    let opt = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let portcullis = std::fs::canonicalize(&args[1]).expect("portcullis binary");
    let probe = std::fs::canonicalize(&args[2]).expect("probe binary");
    let only_profile = opt("--only-profile");
    let abi = abi_of(&portcullis);
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();

    let dir = std::env::temp_dir().join(format!("portcullis-vmsuite-{}", std::process::id()));
    // A home like a user's: profiles promise to keep ~/.ssh out of reach.
    std::fs::create_dir_all(dir.join("home/.ssh")).expect("scratch dir");
    for d in [dir.clone(), dir.join("home")] {
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    std::fs::write(dir.join("unix.toml"), "extends = \"strict\"\n[ipc]\nunix = true\n").expect("profile");
    // strict without the syscall gate's protected paths: Landlock alone.
    std::fs::write(dir.join("nogate.toml"), "extends = \"strict\"\n[deny]\ninherit = false\n[ask]\ninherit = false\n")
        .expect("profile");
    let open = TcpListener::bind("127.0.0.1:0").expect("listener");
    let other = TcpListener::bind("127.0.0.1:0").expect("listener");
    open.set_nonblocking(true).expect("nonblocking");
    other.set_nonblocking(true).expect("nonblocking");
    let abstract_name = format!("portcullis-vmsuite-{}", std::process::id());
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).expect("abstract name");
        std::os::unix::net::UnixListener::bind_addr(&addr).expect("abstract listener")
    };
    let mut vars = BTreeMap::new();
    vars.insert("ws", dir.join("ws").to_string_lossy().to_string());
    vars.insert("outside", dir.join("outside").to_string_lossy().to_string());
    vars.insert("dir", dir.to_string_lossy().to_string());
    vars.insert("probe", probe.to_string_lossy().to_string());
    vars.insert("port_open", open.local_addr().expect("addr").port().to_string());
    vars.insert("port_other", other.local_addr().expect("addr").port().to_string());
    vars.insert("abstract", abstract_name);
    let mut suite = Suite { portcullis, probe, dir: dir.clone(), vars, pass: 0, fail: 0 };

    println!("SUITE START kernel={release} abi={abi}");
    if let Some(want) = opt("--expect-abi") {
        let ok = want.parse::<i64>() == Ok(abi);
        suite.record(ok, &format!("kernel reports Landlock ABI {want}"), &format!("it reports {abi}"));
    }
    if abi == 0 {
        // THREATS #34: a kernel without Landlock. Nothing below applies.
        no_landlock(&mut suite);
        println!("SUITE DONE kernel={release} abi={abi} pass={} fail={}", suite.pass, suite.fail);
        let _ = std::fs::remove_dir_all(&dir);
        std::process::exit(if suite.fail == 0 { 0 } else { 1 });
    }
    let profiles: Vec<String> = match &only_profile {
        Some(p) => vec![p.clone()],
        None => {
            let cases: Cases = toml::from_str(CASES).expect("vm-tests/cases.toml parses");
            // SAFETY: geteuid cannot fail.
            let root = unsafe { libc::geteuid() } == 0;
            for case in &cases.case {
                for who in ["root", "nobody"] {
                    if who == "nobody" && !root {
                        continue;
                    }
                    suite.case(case, who, abi);
                    // Drain the listeners between cases so a later "nothing
                    // received" stays meaningful.
                    while open.accept().is_ok() || other.accept().is_ok() {}
                    let _ = abstract_listener.set_nonblocking(true);
                    while abstract_listener.accept().is_ok() {}
                }
            }
            if root {
                clone3_refused(&mut suite);
            }
            builtin_profiles(&suite.portcullis)
        }
    };
    for p in &profiles {
        suite.profile_test(p, abi);
    }
    println!("SUITE DONE kernel={release} abi={abi} pass={} fail={}", suite.pass, suite.fail);
    let _ = std::fs::remove_dir_all(&dir);
    std::process::exit(if suite.fail == 0 { 0 } else { 1 });
}

/// Under a seccomp filter that answers clone3 with ENOSYS (as Docker's
/// default profile does), the sandbox still lands in its cgroup: where the
/// relay would fork init straight into a v2 cgroup it joins by a write
/// instead, and `--max-procs` holds. Without that fallback every such
/// launch failed. (On a v1 host this is the ordinary path.)
fn clone3_refused(suite: &mut Suite) {
    use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let filter = SeccompFilter::new(
        [(libc::SYS_clone3, vec![])].into_iter().collect(),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        TargetArch::x86_64,
    )
    .expect("a filter for clone3");
    let prog: BpfProgram = filter.try_into().expect("compiles");
    suite.reset_files();
    let mut c = suite.command("root", &v(&["--max-procs", "16"]), &v(&["forks", "64"]), false);
    // SAFETY: installs a seccomp filter between fork and exec; seccompiler
    // only makes the prctl/seccomp calls on the prepared program.
    unsafe {
        c.pre_exec(move || seccompiler::apply_filter(&prog).map_err(|e| std::io::Error::other(e.to_string())));
    }
    let o = Suite::output(c);
    suite.record(
        o.any(&v(&["has:EAGAIN"])),
        "limits: --max-procs holds with clone3 refused by a seccomp filter around portcullis [root]",
        &format!("want has:EAGAIN, got {}", o.describe()),
    );
}

/// A kernel without Landlock (booted with an `lsm=` that leaves it out): a
/// sandbox that silently ran unconfined here is the failure this catches.
/// `run` must refuse and run nothing; with --best-effort it runs, says it is
/// degraded, and the seccomp floor, capabilities and no_new_privs still hold.
fn no_landlock(suite: &mut Suite) {
    let v = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // SAFETY: geteuid cannot fail.
    let users: &[&str] = if unsafe { libc::geteuid() } == 0 { &["root", "nobody"] } else { &["root"] };
    for who in users {
        suite.reset_files();
        let ws_file = PathBuf::from(&suite.vars["ws"]).join("file.txt");
        let o = suite.run(who, &[], &v(&["write", "{ws}/file.txt"]), false);
        let untouched = std::fs::read_to_string(&ws_file).is_ok_and(|t| t == "inside\n");
        suite.record(
            o.code == 125 && o.stderr.contains("needs Landlock") && o.stdout.is_empty() && untouched,
            &format!("no Landlock: run refuses and runs nothing [{who}]"),
            &format!(
                "want exit 125 naming Landlock and nothing run, got {} (file untouched: {untouched})",
                o.describe()
            ),
        );
        let o = suite.run(who, &[], &v(&["read", "{outside}/secret.txt"]), true);
        suite.record(
            o.code == 0 && o.stderr.contains("degraded:") && o.stderr.contains("no filesystem confinement"),
            &format!("no Landlock: --best-effort runs and says what is lost [{who}]"),
            &format!("want exit 0 and a `degraded:` line, got {}", o.describe()),
        );
        for (what, args, want) in [
            ("netlink socket", v(&["socket", "16", "3", "0"]), "errno 1 EPERM"),
            ("io_uring", v(&["syscall", "io_uring_setup", "1", "0"]), "errno 1 EPERM"),
        ] {
            let o = suite.run(who, &[], &args, true);
            suite.record(
                o.stdout.lines().last().map(str::trim) == Some(want),
                &format!("no Landlock, --best-effort: seccomp still denies {what} [{who}]"),
                &format!("want `{want}`, got {}", o.describe()),
            );
        }
        let o = suite.run(who, &[], &v(&["status"]), true);
        suite.record(
            o.stdout.contains("NoNewPrivs:\t1") && o.stdout.contains("CapEff:\t0000000000000000"),
            &format!("no Landlock, --best-effort: no_new_privs and no capabilities [{who}]"),
            &format!("got {}", o.describe()),
        );
    }
}
