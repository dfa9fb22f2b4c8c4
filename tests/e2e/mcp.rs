//! The MCP gate against real MCP servers from npm and PyPI, driven by the
//! official MCP Python SDK client (tests/mcp/driver.py), plus raw-stream
//! cases against tests/mcp/fake_server.py, which records every message it
//! receives so a test can show a refused call never reached it.
//!
//! The servers are installed once into target/tmp/mcp-servers (npm and a
//! venv); when a registry is unreachable the tests skip with the reason
//! (a failure under PORTCULLIS_STRICT_TESTS=1).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use serde_json::{json, Value};

use crate::support::*;

const NPM_PACKAGES: [&str; 3] = [
    "@modelcontextprotocol/server-filesystem",
    "@modelcontextprotocol/server-everything",
    "@modelcontextprotocol/server-memory",
];
const PYPI_PACKAGES: [&str; 5] = ["mcp", "mcp-server-git", "mcp-server-time", "mcp-server-fetch", "uv"];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

struct Servers {
    root: PathBuf,
}

impl Servers {
    fn npm(&self) -> PathBuf {
        self.root.join("npm")
    }
    fn node_server(&self, name: &str) -> String {
        self.npm().join(format!("node_modules/@modelcontextprotocol/{name}/dist/index.js")).to_str().unwrap().into()
    }
    /// uv's `uvx`, installed into the venv from PyPI.
    fn uvx(&self) -> PathBuf {
        self.root.join("venv/bin/uvx")
    }
    fn python(&self) -> String {
        self.root.join("venv/bin/python").to_str().unwrap().into()
    }
    /// The real interpreter behind the venv's symlink (what the sandbox must exec).
    fn python_real(&self) -> String {
        std::fs::canonicalize(self.python()).unwrap().to_str().unwrap().into()
    }
    fn site_packages(&self) -> String {
        let lib = self.root.join("venv/lib");
        let d = std::fs::read_dir(&lib).unwrap().flatten().next().unwrap().path();
        d.join("site-packages").to_str().unwrap().into()
    }
}

/// Installs the real servers once (cached across runs).
fn servers() -> Option<&'static Servers> {
    static S: OnceLock<Result<Servers, String>> = OnceLock::new();
    let r = S.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("mcp-servers");
        std::fs::create_dir_all(&root).map_err(|e| e.to_string())?;
        let s = Servers { root: root.clone() };
        let npm_ok = NPM_PACKAGES.iter().all(|p| s.npm().join("node_modules").join(p).join("package.json").exists());
        if !npm_ok {
            let out = Command::new("npm")
                .args(["install", "--prefix", s.npm().to_str().unwrap(), "--no-audit", "--no-fund"])
                .args(NPM_PACKAGES)
                .output()
                .map_err(|e| format!("npm: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "npm install failed (registry unreachable?): {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        let py_ok = Command::new(s.python())
            .args(["-c", "import mcp, mcp_server_git, mcp_server_time, mcp_server_fetch"])
            .output()
            .map(|o| o.status.success() && s.uvx().exists());
        if !py_ok.unwrap_or(false) {
            let venv = root.join("venv");
            let _ = Command::new("python3").arg("-m").arg("venv").arg(&venv).status();
            let out = Command::new(s.python())
                .args(["-m", "pip", "install", "-q"])
                .args(PYPI_PACKAGES)
                .output()
                .map_err(|e| format!("pip: {e}"))?;
            if !out.status.success() {
                return Err(format!(
                    "pip install failed (PyPI unreachable?): {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(s)
    });
    match r {
        Ok(s) => Some(s),
        Err(e) => {
            skip(&format!("the real MCP servers could not be installed: {e}"));
            None
        }
    }
}

/// `portcullis run --mcp` flags shared by every case.
fn run_args(sb: &Sandbox, profile: &str, extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = vec!["run".into(), "--mcp".into(), "--profile".into(), profile.into()];
    a.extend(["--workspace".into(), sb.path(&sb.ws)]);
    a.extend(["--audit-log".into(), sb.path(&sb.root.join("audit/audit.log"))]);
    a.extend(["--audit-key".into(), sb.path(&sb.root.join("audit/audit.key"))]);
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Runs the SDK driver against `portcullis ARGS -- SERVER...`; returns its report.
fn drive(sb: &Sandbox, servers: &Servers, args: Vec<String>, server: &[&str], calls: Value) -> Value {
    drive_home(sb, servers, args, server, calls, &sb.path(&sb.home))
}

/// [`drive`] with HOME set to `home`.
fn drive_home(sb: &Sandbox, servers: &Servers, args: Vec<String>, server: &[&str], calls: Value, home: &str) -> Value {
    let mut all = args;
    all.push("--".into());
    all.extend(server.iter().map(|s| s.to_string()));
    // The unprivileged tier: the client launches portcullis as nobody.
    let (command, all) = match sb.who {
        As::Caller => (PORTCULLIS.to_string(), all),
        As::Nobody => {
            let mut a: Vec<String> =
                vec![format!("--reuid={NOBODY}"), format!("--regid={NOBODY}"), "--clear-groups".into(), "--".into()];
            a.push(PORTCULLIS.into());
            a.extend(all);
            ("setpriv".to_string(), a)
        }
    };
    let script = json!({
        "command": command,
        "args": all,
        "cwd": sb.path(&sb.ws),
        "env": {
            "HOME": home, "PATH": "/usr/local/bin:/usr/bin:/bin",
            "XDG_STATE_HOME": sb.path(&sb.root.join("state")),
            "SEEN": sb.path(&sb.ws.join("seen.jsonl")),
            // No broker: an ask must fail closed at once (tests/e2e/broker.rs drives one).
            "PORTCULLIS_BROKER": "off",
        },
        "calls": calls,
    });
    let f = sb.root.join("script.json");
    std::fs::write(&f, script.to_string()).unwrap();
    let out = Command::new(servers.python())
        .arg(repo().join("tests/mcp/driver.py"))
        .arg(&f)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "driver failed\nstdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_str(stdout.lines().last().unwrap_or("")).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

fn audit_records(sb: &Sandbox) -> Vec<Value> {
    let r = sb.run(&[
        "audit",
        "list",
        "--log",
        &sb.path(&sb.root.join("audit/audit.log")),
        "--key",
        &sb.path(&sb.root.join("audit/audit.key")),
        "--json",
    ]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["kind"] == "tool_call")
        .collect()
}

fn audit_verifies(sb: &Sandbox) {
    let v = sb.run(&[
        "audit",
        "verify",
        "--log",
        &sb.path(&sb.root.join("audit/audit.log")),
        "--key",
        &sb.path(&sb.root.join("audit/audit.key")),
    ]);
    assert_eq!(v.code, 0, "{} {}", v.stdout, v.stderr);
}

fn node_flags(s: &Servers) -> Vec<String> {
    vec!["--read".into(), s.npm().to_str().unwrap().into()]
}

fn python_flags(s: &Servers) -> Vec<String> {
    let venv = s.root.join("venv");
    let real = s.python_real();
    let prefix = Path::new(&real).parent().unwrap().parent().unwrap().to_str().unwrap().to_string();
    vec![
        "--read".into(),
        venv.to_str().unwrap().into(),
        "--read".into(),
        prefix,
        "--read".into(),
        repo().join("tests/mcp").to_str().unwrap().into(),
        "--exec".into(),
        real,
        "--exec".into(),
        s.python(),
        "--env".into(),
        "SEEN".into(),
    ]
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

#[test]
fn everything_server_initialize_and_list_pass_an_allowed_tool_works_a_denied_one_is_refused() {
    let Some(s) = servers() else { return };
    let sb = Sandbox::new("mcp-everything", As::Caller);
    let args = run_args(&sb, "mcp-everything", &strs(&node_flags(s)));
    let r = drive(
        &sb,
        s,
        args,
        &["node", &s.node_server("server-everything")],
        json!([{"tool": "echo", "arguments": {"message": "hello"}}, {"tool": "get-env", "arguments": {}},
               {"tool": "get-sum", "arguments": {"a": 2, "b": 3}}]),
    );
    assert_eq!(r["server"], "mcp-servers/everything", "{r}");
    assert!(r["tools"].as_array().unwrap().iter().any(|t| t == "get-env"), "tools/list passes unchanged: {r}");
    let calls = r["calls"].as_array().unwrap();
    assert_eq!(calls[0]["text"], "Echo: hello", "{r}");
    assert_eq!(calls[1]["ok"], false);
    assert_eq!(calls[1]["code"], -32001, "{r}");
    assert!(calls[1]["message"].as_str().unwrap().contains("get-env"), "{r}");
    assert!(calls[2]["text"].as_str().unwrap().contains('5'), "{r}");
    let recs = audit_records(&sb);
    assert!(recs.iter().any(|r| r["body"]["tool"] == "get-env" && r["body"]["verdict"] == "deny"), "{recs:?}");
    assert!(recs.iter().any(|r| r["body"]["tool"] == "echo" && r["body"]["status"] == "ok"), "{recs:?}");
    audit_verifies(&sb);
}

#[test]
fn filesystem_server_reads_inside_and_the_kernel_stops_it_outside() {
    filesystem_case(Sandbox::new("mcp-fs", As::Caller));
}

/// The same, with the supervisor run as nobody: no privilege needed for
/// the sandbox, the syscall gate or the MCP gate.
#[test]
fn filesystem_server_under_an_unprivileged_supervisor() {
    if let Some(sb) = Sandbox::nobody("mcp-fs-nobody") {
        filesystem_case(sb);
    }
}

fn filesystem_case(sb: Sandbox) {
    let Some(s) = servers() else { return };
    // The server is told it may use both directories; the profile grants only the workspace.
    let args = run_args(&sb, "mcp-filesystem", &strs(&node_flags(s)));
    let inside = sb.path(&sb.ws.join("file.txt"));
    let outside = sb.path(&sb.outside.join("secret.txt"));
    let r = drive(
        &sb,
        s,
        args,
        &["node", &s.node_server("server-filesystem"), &sb.path(&sb.ws), &sb.path(&sb.outside)],
        json!([{"tool": "read_text_file", "arguments": {"path": inside}},
               {"tool": "read_text_file", "arguments": {"path": outside}},
               {"tool": "write_file", "arguments": {"path": sb.path(&sb.outside.join("planted.txt")), "content": "x"}},
               {"tool": "write_file", "arguments": {"path": sb.path(&sb.ws.join("new.txt")), "content": "ok"}}]),
    );
    let calls = r["calls"].as_array().unwrap();
    assert_eq!(calls[0]["text"], "inside\n", "{r}");
    // The server's own check let it through; Landlock said no.
    assert_eq!(calls[1]["isError"], true, "{r}");
    let msg = calls[1]["text"].as_str().unwrap();
    assert!(msg.contains("EACCES") || msg.contains("permission denied"), "{r}");
    assert!(!msg.contains("outside\n"), "{r}");
    assert_eq!(calls[2]["isError"], true, "{r}");
    assert!(!sb.outside.join("planted.txt").exists(), "the kernel kept the write out");
    assert_eq!(calls[3]["isError"], false, "{r}");
    assert_eq!(std::fs::read_to_string(sb.ws.join("new.txt")).unwrap(), "ok", "the positive twin");
}

/// A HOME under the servers' root, filled once (outside any sandbox, with
/// the registry) by running `fill` with HOME set to it, until `filled` holds;
/// kept across test runs. None (with a skip) when it cannot be filled.
fn filled_home(
    cell: &'static OnceLock<Result<PathBuf, String>>,
    home: PathBuf,
    filled: impl Fn(&Path) -> bool,
    mut fill: Command,
) -> Option<PathBuf> {
    let r = cell.get_or_init(|| {
        if !filled(&home) {
            std::fs::create_dir_all(&home).map_err(|e| e.to_string())?;
            // The servers exit when their stdin closes.
            let out = fill
                .env("HOME", &home)
                .env("PATH", "/usr/local/bin:/usr/bin:/bin")
                .stdin(Stdio::null())
                .output()
                .map_err(|e| format!("{fill:?}: {e}"))?;
            if !filled(&home) {
                return Err(format!(
                    "{fill:?} could not fill its cache (registry unreachable?): {}",
                    String::from_utf8_lossy(&out.stderr)
                ));
            }
        }
        Ok(home)
    });
    match r {
        Ok(h) => Some(h.clone()),
        Err(e) => {
            skip(e);
            None
        }
    }
}

/// A HOME whose npm cache holds server-filesystem, as after a user's first
/// `npx -y @modelcontextprotocol/server-filesystem`.
fn npx_home(s: &Servers) -> Option<PathBuf> {
    static H: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let pkg = "@modelcontextprotocol/server-filesystem";
    let home = s.root.join("npx-home");
    let mut fill = Command::new("npx");
    fill.args(["-y", pkg, home.to_str().unwrap()]);
    let filled = |home: &Path| {
        std::fs::read_dir(home.join(".npm/_npx"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("node_modules").join(pkg).join("package.json").exists())
    };
    filled_home(&H, home, filled, fill)
}

/// `npx -y PKG`, as users (and `portcullis wrap`) launch servers: with the
/// package in npm's cache the server starts and serves with no network at
/// all, under the shipped profile as it is.
#[test]
fn npx_y_starts_a_cached_server_without_the_network() {
    let Some(s) = servers() else { return };
    let Some(home) = npx_home(s) else { return };
    let sb = Sandbox::new("mcp-npx", As::Caller);
    let args = run_args(&sb, "mcp-filesystem", &["--write", &sb.path(&sb.ws)]);
    let inside = sb.path(&sb.ws.join("file.txt"));
    let outside = sb.path(&sb.outside.join("secret.txt"));
    let r = drive_home(
        &sb,
        s,
        args,
        &["npx", "-y", "@modelcontextprotocol/server-filesystem", &sb.path(&sb.ws), &sb.path(&sb.outside)],
        json!([{"tool": "read_text_file", "arguments": {"path": inside}},
               {"tool": "read_text_file", "arguments": {"path": outside}}]),
        home.to_str().unwrap(),
    );
    let calls = r["calls"].as_array().unwrap();
    assert_eq!(calls[0]["text"], "inside\n", "{r}");
    // Twin: the kernel still keeps it out of what the profile does not grant.
    assert_eq!(calls[1]["isError"], true, "{r}");
    assert!(!calls[1]["text"].as_str().unwrap().contains("outside\n"), "{r}");
}

/// A HOME whose uv cache holds mcp-server-time, as after a user's first
/// `uvx mcp-server-time`.
fn uvx_home(s: &Servers) -> Option<PathBuf> {
    static H: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let mut fill = Command::new(s.uvx());
    fill.arg("mcp-server-time");
    let filled = |home: &Path| {
        std::fs::read_dir(home.join(".cache/uv/archive-v0"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|d| d.path().join("bin/mcp-server-time").exists())
    };
    filled_home(&H, s.root.join("uvx-home"), filled, fill)
}

/// `uvx PKG`, the Python twin of the npx case: a cached package starts and
/// serves with no network under its shipped profile.
#[test]
fn uvx_starts_a_cached_server_without_the_network() {
    let Some(s) = servers() else { return };
    let Some(home) = uvx_home(s) else { return };
    let sb = Sandbox::new("mcp-uvx", As::Caller);
    let uvx = s.uvx();
    let uv = uvx.with_file_name("uv");
    let venv = s.root.join("venv");
    let flags = ["--exec", uvx.to_str().unwrap(), "--exec", uv.to_str().unwrap(), "--read", venv.to_str().unwrap()];
    let args = run_args(&sb, "mcp-time", &flags);
    let r = drive_home(
        &sb,
        s,
        args,
        &[uvx.to_str().unwrap(), "mcp-server-time"],
        json!([{"tool": "get_current_time", "arguments": {"timezone": "UTC"}}]),
        home.to_str().unwrap(),
    );
    let calls = r["calls"].as_array().unwrap();
    assert_eq!(calls[0]["isError"], false, "{r}");
    assert!(calls[0]["text"].as_str().unwrap().contains("UTC"), "{r}");
}

#[test]
fn a_denied_write_never_reaches_the_filesystem_server() {
    let Some(s) = servers() else { return };
    let sb = Sandbox::new("mcp-fs-deny", As::Caller);
    let profile =
        sb.profile("ro.toml", "extends = \"mcp-filesystem\"\n[mcp.tools]\ndeny = [\"write_file\", \"edit_file\"]\n");
    let args = run_args(&sb, &profile, &strs(&node_flags(s)));
    let target = sb.ws.join("denied.txt");
    let r = drive(
        &sb,
        s,
        args,
        &["node", &s.node_server("server-filesystem"), &sb.path(&sb.ws)],
        json!([{"tool": "write_file", "arguments": {"path": sb.path(&target), "content": "x"}},
               {"tool": "list_directory", "arguments": {"path": sb.path(&sb.ws)}}]),
    );
    let calls = r["calls"].as_array().unwrap();
    assert_eq!(calls[0]["code"], -32001, "{r}");
    assert!(!target.exists(), "the server never performed the denied call");
    assert!(calls[1]["text"].as_str().unwrap().contains("file.txt"), "{r}");
}

#[test]
fn a_denied_call_never_reaches_the_server_and_ask_fails_closed() {
    let Some(s) = servers() else { return };
    let sb = Sandbox::new("mcp-fake", As::Caller);
    let profile = sb.profile("fake.toml", "extends = \"python\"\n[mcp.tools]\ndeny = [\"secret\"]\nask = [\"big\"]\n");
    let mut flags = python_flags(s);
    flags.extend(["--read".into(), s.site_packages()]);
    let args = run_args(&sb, &profile, &strs(&flags));
    let r = drive(
        &sb,
        s,
        args,
        &[&s.python_real(), &sb.path(&repo().join("tests/mcp/fake_server.py"))],
        json!([{"tool": "echo", "arguments": {"text": "hi"}}, {"tool": "secret"}, {"tool": "big", "arguments": {"n": 5}},
               {"tool": "wipe"}]),
    );
    let calls = r["calls"].as_array().unwrap();
    assert_eq!(calls[0]["text"], "hi", "{r}");
    assert_eq!(calls[1]["code"], -32001, "{r}");
    assert_eq!(calls[2]["code"], -32002, "{r}");
    assert!(calls[2]["message"].as_str().unwrap().contains("no approval broker"), "{r}");
    // wipe is annotated destructive: with no rule it asks, and without a broker that is no.
    assert_eq!(calls[3]["code"], -32002, "{r}");
    let seen = std::fs::read_to_string(sb.ws.join("seen.jsonl")).unwrap();
    let tools: Vec<String> = seen
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|m| m["method"] == "tools/call")
        .map(|m| m["params"]["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tools, vec!["echo"], "the server saw only the allowed call: {seen}");
}

#[test]
fn arguments_are_masked_and_results_redacted() {
    let Some(s) = servers() else { return };
    let sb = Sandbox::new("mcp-mask", As::Caller);
    // Tool calls are forwarded to --syslog like every other record (masked alike).
    let sock = sb.root.join("syslog.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&sock).unwrap();
    let mut flags = python_flags(s);
    flags.extend(["--read".into(), s.site_packages(), "--syslog".into(), sb.path(&sock)]);
    let args = run_args(&sb, "python", &strs(&flags));
    let r = drive(
        &sb,
        s,
        args,
        &[&s.python_real(), &sb.path(&repo().join("tests/mcp/fake_server.py"))],
        json!([{"tool": "echo", "arguments": {"text": "hi", "password": "hunter2", "token": "ghp_0123456789abcdefghijABCDEFGHIJ012345"}},
               {"tool": "secret"}]),
    );
    let calls = r["calls"].as_array().unwrap();
    let secret = calls[1]["text"].as_str().unwrap();
    assert!(!secret.contains("AKIAIOSFODNN7EXAMPLE") && !secret.contains("MIIEabc"), "{r}");
    assert_eq!(secret.matches("[REDACTED]").count(), 2, "{r}");
    let log = std::fs::read_to_string(sb.root.join("audit/audit.log")).unwrap();
    assert!(!log.contains("hunter2") && !log.contains("ghp_0123456789"), "arguments are masked in the log");
    let recs = audit_records(&sb);
    let echo = recs.iter().find(|r| r["body"]["tool"] == "echo").unwrap();
    assert_eq!(echo["body"]["arguments"]["password"], "********");
    assert_eq!(echo["body"]["arguments"]["text"], "hi");
    for k in ["verdict", "decided_by", "status", "duration_us"] {
        assert!(!echo["body"][k].is_null(), "{k} is recorded: {echo}");
    }
    listener.set_nonblocking(true).unwrap();
    let mut forwarded = Vec::new();
    let mut buf = vec![0u8; 65536];
    while let Ok(n) = listener.recv(&mut buf) {
        forwarded.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let calls: Vec<&String> = forwarded.iter().filter(|m| m.contains("\"kind\":\"tool_call\"")).collect();
    assert_eq!(calls.len(), 2, "both tool calls reach syslog: {forwarded:?}");
    assert!(calls.iter().any(|m| m.contains("\"tool\":\"echo\"") && m.contains("********")), "{calls:?}");
    assert!(!forwarded.iter().any(|m| m.contains("hunter2") || m.contains("ghp_0123456789")), "{forwarded:?}");
    audit_verifies(&sb);
}

#[test]
fn rate_limit_and_breaker_trip_on_real_servers() {
    let Some(s) = servers() else { return };
    let sb = Sandbox::new("mcp-limits", As::Caller);
    let profile = sb.profile("lim.toml", "extends = \"mcp-filesystem\"\n[mcp.rate]\n\"list_directory\" = \"2/min\"\n");
    let args = run_args(&sb, &profile, &strs(&node_flags(s)));
    let ws = sb.path(&sb.ws);
    let missing = sb.path(&sb.ws.join("missing.txt"));
    let mut calls = vec![json!({"tool": "list_directory", "arguments": {"path": ws}}); 3];
    calls.extend(vec![json!({"tool": "read_text_file", "arguments": {"path": missing}}); 6]);
    let r = drive(&sb, s, args, &["node", &s.node_server("server-filesystem"), &ws], Value::Array(calls));
    let c = r["calls"].as_array().unwrap();
    assert_eq!(c[0]["ok"], true, "{r}");
    assert_eq!(c[1]["ok"], true, "{r}");
    assert_eq!(c[2]["code"], -32003, "{r}");
    assert!(c[2]["data"]["portcullis"]["retry_after_ms"].as_u64().unwrap() > 0, "{r}");
    for (i, call) in c[3..8].iter().enumerate() {
        assert_eq!(call["isError"], true, "failure {i} reaches the server: {r}");
    }
    assert_eq!(c[8]["code"], -32004, "the sixth call fails fast: {r}");
}

#[test]
fn pypi_time_and_git_servers_work_under_their_profiles() {
    let Some(s) = servers() else { return };
    let sb = Sandbox::new("mcp-py", As::Caller);
    let mut flags = python_flags(s);
    flags.extend(["--read".into(), s.site_packages()]);
    let args = run_args(&sb, "mcp-time", &strs(&flags));
    let r = drive(
        &sb,
        s,
        args,
        &[&s.python(), "-m", "mcp_server_time", "--local-timezone", "UTC"],
        json!([{"tool": "get_current_time", "arguments": {"timezone": "Europe/Paris"}}, {"tool": "not_a_tool"}]),
    );
    let c = r["calls"].as_array().unwrap();
    assert!(c[0]["text"].as_str().unwrap().contains("Europe/Paris"), "{r}");
    assert_eq!(c[1]["code"], -32001, "mcp-time denies tools it does not name: {r}");

    let git = |args: &[&str]| Command::new("git").args(args).current_dir(&sb.ws).output().unwrap();
    git(&["init", "-q"]);
    let args = run_args(&sb, "mcp-git", &strs(&flags));
    let ws = sb.path(&sb.ws);
    let r = drive(
        &sb,
        s,
        args,
        &[&s.python(), "-m", "mcp_server_git", "--repository", &ws],
        json!([{"tool": "git_status", "arguments": {"repo_path": ws}}, {"tool": "git_reset", "arguments": {"repo_path": ws}}]),
    );
    let c = r["calls"].as_array().unwrap();
    assert!(c[0]["text"].as_str().unwrap().contains("file.txt"), "{r}");
    assert_eq!(c[1]["code"], -32002, "git_reset asks, and no broker means no: {r}");
}

/// A one-page HTTP server on 127.0.0.1; returns its port and a counter of requests.
fn http_fixture(body: &'static str) -> (u16, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::io::{Read, Write};
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for mut c in l.incoming().flatten() {
            h.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let resp = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = c.write_all(resp.as_bytes());
        }
    });
    (port, hits)
}

/// mcp-server-fetch under its profile: it fetches from a port the run
/// allows (result redacted), and the kernel stops it at a port it does not.
#[test]
fn fetch_server_fetches_where_allowed_and_the_kernel_stops_it_elsewhere() {
    let Some(s) = servers() else { return };
    let sb = Sandbox::new("mcp-fetch", As::Caller);
    let (port, _) = http_fixture("hello from the fixture; key AKIAIOSFODNN7EXAMPLE\n");
    let (other, other_hits) = http_fixture("must never be served\n");
    let mut flags = python_flags(s);
    flags.extend(["--read".into(), s.site_packages(), "--connect".into(), port.to_string()]);
    let args = run_args(&sb, "mcp-fetch", &strs(&flags));
    let url = |p: u16| format!("http://127.0.0.1:{p}/page");
    let r = drive(
        &sb,
        s,
        args,
        &[&s.python(), "-m", "mcp_server_fetch", "--ignore-robots-txt", "--allow-private-ips"],
        json!([{"tool": "fetch", "arguments": {"url": url(port), "raw": true}},
               {"tool": "fetch", "arguments": {"url": url(other), "raw": true}}]),
    );
    let c = r["calls"].as_array().unwrap();
    let text = c[0]["text"].as_str().unwrap_or_default();
    assert!(text.contains("hello from the fixture"), "{r}");
    assert!(!text.contains("AKIAIOSFODNN7EXAMPLE") && text.contains("[REDACTED]"), "{r}");
    let second = c[1].to_string();
    assert!(!second.contains("must never be served"), "{r}");
    assert_eq!(other_hits.load(std::sync::atomic::Ordering::SeqCst), 0, "the other listener got nothing");
}

/// Raw stream: malformed and oversized messages get errors, the session goes on,
/// and closing the client's side ends the run cleanly.
#[test]
fn malformed_and_oversized_messages_get_errors_and_eof_ends_the_run() {
    let Some(s) = servers() else { return };
    let sb = Sandbox::new("mcp-raw", As::Caller);
    let profile = sb.profile("small.toml", "extends = \"python\"\n[mcp]\nmax_message = \"64K\"\n");
    let mut flags = python_flags(s);
    flags.extend(["--read".into(), s.site_packages()]);
    let mut args = run_args(&sb, &profile, &strs(&flags));
    args.push("--".into());
    args.push(s.python_real());
    args.push(sb.path(&repo().join("tests/mcp/fake_server.py")));
    let mut child = sb
        .portcullis(&strs(&args))
        .env("SEEN", sb.ws.join("seen.jsonl"))
        .env("XDG_STATE_HOME", sb.root.join("state"))
        .env("PORTCULLIS_BROKER", "off")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    let big = format!(
        "{{\"jsonrpc\":\"2.0\",\"id\":2,\"method\":\"tools/call\",\"params\":{{\"name\":\"echo\",\"arguments\":{{\"text\":\"{}\"}}}}}}\n",
        "a".repeat(100_000)
    );
    input.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":tools/list}\n").unwrap();
    input.write_all(big.as_bytes()).unwrap();
    input.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":3,\"method\":\"tools/call\",\"params\":{\"name\":\"big\",\"arguments\":{\"n\":100000}}}\n").unwrap();
    input.write_all(b"{\"jsonrpc\":\"2.0\",\"id\":4,\"method\":\"tools/call\",\"params\":{\"name\":\"echo\",\"arguments\":{\"text\":\"still here\"}}}\n").unwrap();
    drop(input);
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "closing stdin ends the server and the run: {stderr}");
    let replies: Vec<Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let by_id = |id: i64| replies.iter().find(|r| r["id"] == id).unwrap_or_else(|| panic!("no reply {id}: {stdout}"));
    assert_eq!(by_id(1)["error"]["code"], -32700, "{stdout}");
    assert_eq!(by_id(2)["error"]["code"], -32006, "{stdout}");
    assert_eq!(by_id(3)["error"]["code"], -32006, "the server's oversized result is dropped: {stdout}");
    assert_eq!(by_id(4)["result"]["content"][0]["text"], "still here", "{stdout}");
    let seen = std::fs::read_to_string(sb.ws.join("seen.jsonl"))
        .unwrap_or_else(|e| panic!("{e}: {:?} {stderr}", std::fs::read_dir(&sb.ws).unwrap().collect::<Vec<_>>()));
    assert!(
        !seen.contains("\"id\": 1,") && !seen.contains("\"id\": 2,"),
        "refused messages were not forwarded: {seen}"
    );
}

/// Sample configs of each client format (tests/mcp/configs): wrap rewrites
/// every stdio server and nothing else, is idempotent, --dry-run writes
/// nothing, and unwrap restores the original byte for byte.
#[test]
fn wrap_and_unwrap_round_trip_every_client_format() {
    let sb = Sandbox::new("mcp-wrap", As::Caller);
    let cases: [(&str, &str, usize); 5] = [
        ("claude_desktop_config.json", "claude_desktop_config.json", 2),
        ("claude_code.mcp.json", ".mcp.json", 1),
        ("claude.json", ".claude.json", 2),
        ("vscode.mcp.json", ".vscode/mcp.json", 1),
        ("cursor.mcp.json", "mcp.json", 2),
    ];
    for (sample, name, stdio_servers) in cases {
        let dir = sb.root.join(sample.replace('.', "_"));
        let file = dir.join(name);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        let original = std::fs::read(repo().join("tests/mcp/configs").join(sample)).unwrap();
        std::fs::write(&file, &original).unwrap();
        let f = sb.path(&file);
        let dry = sb.run(&["wrap", &f, "--dry-run"]);
        assert_eq!(dry.code, 0, "{}", dry.stderr);
        assert!(dry.stdout.contains("+") && dry.stdout.contains("--mcp"), "{sample}: {}", dry.stdout);
        assert_eq!(std::fs::read(&file).unwrap(), original, "{sample}: --dry-run writes nothing");
        let w = sb.run(&["wrap", &f]);
        assert_eq!(w.code, 0, "{sample}: {}", w.stderr);
        let wrapped = std::fs::read_to_string(&file).unwrap();
        let v: Value = serde_json::from_str(&wrapped).unwrap_or_else(|e| panic!("{sample}: {e}: {wrapped}"));
        let mut servers: Vec<&Value> = Vec::new();
        for key in ["mcpServers", "servers"] {
            servers.extend(v[key].as_object().into_iter().flat_map(|m| m.values()));
        }
        for p in v["projects"].as_object().into_iter().flat_map(|m| m.values()) {
            servers.extend(p["mcpServers"].as_object().into_iter().flat_map(|m| m.values()));
        }
        let wrapped_n = servers.iter().filter(|s| s["args"][1] == "--mcp").count();
        assert_eq!(wrapped_n, stdio_servers, "{sample}: {wrapped}");
        for s in servers.iter().filter(|s| s.get("url").is_some()) {
            assert!(s.get("command").is_none(), "{sample}: HTTP servers are untouched");
        }
        assert!(
            w.stderr.contains("HTTP/SSE") || !String::from_utf8_lossy(&original).contains("\"url\""),
            "{}",
            w.stderr
        );
        assert_eq!(
            std::fs::read(
                file.with_file_name(format!("{}.portcullis-backup", file.file_name().unwrap().to_str().unwrap()))
            )
            .unwrap(),
            original
        );
        // Idempotent.
        assert_eq!(sb.run(&["wrap", &f]).code, 0);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), wrapped, "{sample}: wrapping twice changes nothing");
        let u = sb.run(&["unwrap", &f]);
        assert_eq!(u.code, 0, "{}", u.stderr);
        assert_eq!(std::fs::read(&file).unwrap(), original, "{sample}: unwrap restores byte for byte");
    }
}

/// A project's repository can ship files named like wrap's temporary and
/// backup: they are links `wrap` must never write through (here to a
/// victim file; `~/.bashrc` in real life). A config that is itself a link
/// (dotfile managers) is rewritten where it lives, and stays a link. The
/// backup is no more readable than the config (its servers' API keys).
#[test]
fn wrap_never_writes_through_links_and_keeps_a_linked_config_linked() {
    use std::os::unix::fs::{symlink, PermissionsExt};
    let sb = Sandbox::new("mcp-wrap-links", As::Caller);
    let sample = std::fs::read_to_string(repo().join("tests/mcp/configs/claude_code.mcp.json")).unwrap();
    let mode = |p: &Path| std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o777;

    // A planted temporary.
    let victim = sb.root.join("victim");
    std::fs::write(&victim, "precious\n").unwrap();
    let proj = sb.root.join("proj");
    std::fs::create_dir_all(&proj).unwrap();
    let cfg = proj.join(".mcp.json");
    std::fs::write(&cfg, &sample).unwrap();
    std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o600)).unwrap();
    symlink(&victim, proj.join(".mcp.json.portcullis-tmp")).unwrap();
    let w = sb.run(&["wrap", &sb.path(&cfg)]);
    assert_eq!(w.code, 0, "{}", w.stderr);
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "precious\n", "the planted link was written through");
    assert!(std::fs::symlink_metadata(&cfg).unwrap().is_file());
    assert!(std::fs::read_to_string(&cfg).unwrap().contains("--mcp"), "the config is wrapped all the same");
    assert!(std::fs::symlink_metadata(proj.join(".mcp.json.portcullis-tmp")).is_err(), "no temporary is left");
    assert_eq!(mode(&cfg), 0o600);
    assert_eq!(mode(&proj.join(".mcp.json.portcullis-backup")), 0o600, "the backup is as private as the config");

    // A planted backup, dangling: wrap refuses, creates nothing, changes nothing.
    let proj2 = sb.root.join("proj2");
    std::fs::create_dir_all(&proj2).unwrap();
    let cfg2 = proj2.join(".mcp.json");
    std::fs::write(&cfg2, &sample).unwrap();
    let created = sb.root.join("created-by-wrap");
    symlink(&created, proj2.join(".mcp.json.portcullis-backup")).unwrap();
    let w = sb.run(&["wrap", &sb.path(&cfg2)]);
    assert_eq!(w.code, 125, "{}", w.stderr);
    assert!(w.stderr.contains("not a regular file"), "{}", w.stderr);
    assert!(!created.exists(), "the backup link was written through");
    assert_eq!(std::fs::read_to_string(&cfg2).unwrap(), sample);
    // unwrap does not read a backup through a link either.
    let u = sb.run(&["unwrap", &sb.path(&cfg2)]);
    assert_eq!(u.code, 125, "{}", u.stderr);

    // A linked config: rewritten where it lives; the project it is linked
    // into stays its workspace; unwrap through the link restores it.
    let dots = sb.root.join("dotfiles");
    std::fs::create_dir_all(&dots).unwrap();
    let real = dots.join("proj3.mcp.json");
    std::fs::write(&real, &sample).unwrap();
    let proj3 = sb.root.join("proj3");
    std::fs::create_dir_all(&proj3).unwrap();
    let link = proj3.join(".mcp.json");
    symlink(&real, &link).unwrap();
    let w = sb.run(&["wrap", &sb.path(&link)]);
    assert_eq!(w.code, 0, "{}", w.stderr);
    assert!(w.stderr.contains("symbolic link"), "{}", w.stderr);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink(), "the link stays a link");
    let wrapped = std::fs::read_to_string(&real).unwrap();
    let v: Value = serde_json::from_str(&wrapped).unwrap();
    let args: Vec<&str> = v["mcpServers"].as_object().unwrap().values().next().unwrap()["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    let ws = args.iter().position(|a| *a == "--workspace").map(|i| args[i + 1]);
    assert_eq!(ws, Some(sb.path(&std::fs::canonicalize(&proj3).unwrap()).as_str()), "{wrapped}");
    assert_eq!(std::fs::read_to_string(dots.join("proj3.mcp.json.portcullis-backup")).unwrap(), sample);
    let u = sb.run(&["unwrap", &sb.path(&link)]);
    assert_eq!(u.code, 0, "{}", u.stderr);
    assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
    assert_eq!(std::fs::read_to_string(&real).unwrap(), sample, "unwrap restores byte for byte");
}

/// A grants file that does not parse stops an MCP run as it stops a gated
/// one: its "always deny" answers must not silently stop applying. The
/// profile here has no syscall gate, so only the MCP gate reads the file.
#[test]
fn an_unreadable_grants_file_stops_an_mcp_run() {
    let sb = Sandbox::new("mcp-bad-grants", As::Caller);
    let profile = sb.profile("plain.toml", "[filesystem]\nread = [\"/usr\", \"/etc\"]\n[mcp]\npin = false\n");
    let grants = sb.root.join("grants.json");
    let run = |sb: &Sandbox| {
        let mut args = run_args(sb, &profile, &[]);
        args.extend(["--exec".into(), PROBE.into(), "--".into(), PROBE.into(), "read".into(), "/etc/hostname".into()]);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Run::from(
            sb.portcullis(&args).env("PORTCULLIS_GRANTS", &grants).env("PORTCULLIS_BROKER", "off").output().unwrap(),
        )
    };
    std::fs::write(&grants, "{bad").unwrap();
    let r = run(&sb);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("grants file does not parse"), "{}", r.stderr);
    // Twin: a good file, and the run goes on.
    std::fs::write(&grants, "{\"version\":1,\"grants\":[]}").unwrap();
    let r = run(&sb);
    assert_eq!(r.code, 0, "{}", r.stderr);
}
