//! The approval broker as a real process on a real socket: a fake
//! supervisor speaks the protocol (docs/BROKER.md) over a UnixStream, the
//! front ends are the real `portcullis approvals` / `approve` / `deny`.
//! Every test has its own broker directory (PORTCULLIS_BROKER_DIR).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::*;

static N: AtomicUsize = AtomicUsize::new(0);
const PYTHON: &str = "/usr/bin/python3";

/// A broker directory under a fresh temp root, and the broker serving it.
struct Broker {
    root: PathBuf,
    dir: PathBuf,
    child: Option<Child>,
}

impl Broker {
    fn dir_only(tag: &str) -> Broker {
        let n = N.fetch_add(1, Ordering::Relaxed);
        let root = std::env::temp_dir().join(format!("pc-e2e-brokerdir-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755)).unwrap();
        let dir = root.join("b");
        Broker { root, dir, child: None }
    }

    /// `portcullis broker --foreground`, as our child, answering pings.
    fn start(tag: &str) -> Broker {
        let mut b = Broker::dir_only(tag);
        let child = b.cmd(&["broker", "--foreground"]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
        b.child = Some(child);
        b.wait_ready();
        b
    }

    fn wait_ready(&self) {
        let until = Instant::now() + Duration::from_secs(10);
        while Instant::now() < until {
            if let Ok(mut c) = self.try_connect() {
                c.send(json!({"v":1,"type":"ping"}));
                if c.recv()["type"] == "pong" {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the broker did not come up in {}", self.dir.display());
    }

    fn sock(&self) -> PathBuf {
        self.dir.join("broker.sock")
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(PORTCULLIS);
        c.args(args).env("PORTCULLIS_BROKER_DIR", &self.dir).env_remove("XDG_RUNTIME_DIR").stdin(Stdio::null());
        c
    }

    fn cli(&self, args: &[&str]) -> Run {
        Run::from(self.cmd(args).output().unwrap())
    }

    fn pending(&self) -> Vec<Value> {
        let r = self.cli(&["approvals", "--json"]);
        assert_eq!(r.code, 0, "{}", r.stderr);
        serde_json::from_str::<Vec<Value>>(&r.stdout).unwrap_or_else(|e| panic!("{e}: {}", r.stdout))
    }

    fn try_connect(&self) -> std::io::Result<Peer> {
        Peer::connect(&self.sock())
    }

    fn connect(&self) -> Peer {
        self.try_connect().unwrap()
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // A detached broker notices its socket is gone and exits.
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// A raw protocol peer: a fake supervisor or front end.
struct Peer {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Peer {
    fn connect(sock: &Path) -> std::io::Result<Peer> {
        let w = UnixStream::connect(sock)?;
        w.set_read_timeout(Some(Duration::from_secs(10)))?;
        let r = BufReader::new(w.try_clone()?);
        Ok(Peer { w, r })
    }

    fn send(&mut self, v: Value) {
        self.raw(format!("{v}\n").as_bytes());
    }

    fn raw(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// The next line, parsed; `null` at EOF.
    fn recv(&mut self) -> Value {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => Value::Null,
            Ok(_) => serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}")),
            Err(e) => panic!("no line from the broker: {e}"),
        }
    }

    /// The broker closed the connection: EOF, or a reset (it closed with
    /// bytes of ours still unread, as after an over-long line).
    fn closed(&mut self) -> bool {
        let mut line = String::new();
        match self.r.read_line(&mut line) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }

    /// The next message of `ty`, skipping others.
    fn recv_type(&mut self, ty: &str) -> Value {
        loop {
            let m = self.recv();
            if m["type"] == ty || m.is_null() {
                return m;
            }
        }
    }

    fn submit(&mut self, req: u64, session: &str, target: &str, detail: &str, timeout_ms: u64) -> Value {
        self.send(submit(req, session, target, detail, timeout_ms));
        self.recv()
    }
}

fn submit(req: u64, session: &str, target: &str, detail: &str, timeout_ms: u64) -> Value {
    json!({
        "v": 1, "type": "submit", "req": req, "session": session, "profile": "strict",
        "argv": ["mysql", "--password", "hunter2", "-h", "db"], "pid": 4242,
        "kind": "open-read", "category": "credential", "target": target, "detail": detail,
        "rule": "p.toml:3: ask.read ~/.ssh", "timeout_ms": timeout_ms,
    })
}

const SECRET_DETAIL: &str =
    "openat(\"/home/u/.ssh/id_rsa\") password=hunter2 token ghp_0123456789abcdefghijklmn otpauth://totp/x:alice@example.com?secret=JBSWY3DPEHPK3PXP";

#[test]
fn broker_runs_once_per_directory_in_a_private_directory() {
    let b = Broker::dir_only("once");
    let first = b.cli(&["broker"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    assert!(first.stdout.contains("started (pid"), "{}", first.stdout);
    let second = b.cli(&["broker"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    assert!(second.stdout.contains("already running"), "{}", second.stdout);
    let fg = b.cli(&["broker", "--foreground"]);
    assert_eq!(fg.code, 0, "{}", fg.stderr);
    assert!(fg.stderr.contains("already running"), "{}", fg.stderr);
    let m = std::fs::symlink_metadata(&b.dir).unwrap();
    assert!(m.is_dir() && m.mode() & 0o777 == 0o700, "mode {:o}", m.mode());

    // A directory someone else could write is refused, not used.
    let open = b.root.join("open");
    std::fs::create_dir(&open).unwrap();
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
    let r = Run::from(b.cmd(&["broker", "--foreground"]).env("PORTCULLIS_BROKER_DIR", &open).output().unwrap());
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("0777") && r.stderr.contains("unsafe"), "{}", r.stderr);
    assert!(!open.join("broker.sock").exists());
}

#[test]
fn a_stale_socket_is_replaced() {
    let b = Broker::dir_only("stale");
    std::fs::create_dir(&b.dir).unwrap();
    std::fs::set_permissions(&b.dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A socket file nobody listens on, as a crashed broker leaves it.
    drop(std::os::unix::net::UnixListener::bind(b.sock()).unwrap());
    assert!(b.sock().exists());
    let r = b.cli(&["broker"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stdout.contains("started"), "{}", r.stdout);
    assert!(b.pending().is_empty());
}

#[test]
fn approvals_json_masks_secrets_and_approve_delivers_allow() {
    let b = Broker::start("approve");
    let mut front = b.connect();
    front.send(json!({"v":1,"type":"subscribe"}));
    assert_eq!(front.recv(), json!({"v":1,"type":"pending","count":0}));

    let mut sup = b.connect();
    let q = sup.submit(1, "sess-1", "/home/u/.ssh/id_rsa", SECRET_DETAIL, 60_000);
    assert_eq!(q["type"], "queued", "{q}");
    assert_eq!((q["position"].as_u64(), q["of"].as_u64(), q["coalesced"].as_bool()), (Some(1), Some(1), Some(false)));
    assert_eq!(q["subscribers"], 1);
    let id = q["id"].as_str().unwrap().to_string();
    assert!(id.len() == 8 && id.chars().all(|c| c.is_ascii_hexdigit()), "{id}");

    let added = front.recv();
    assert_eq!(added["type"], "added", "{added}");
    assert_eq!(added["request"]["id"], id.as_str());

    let list = b.pending();
    assert_eq!(list.len(), 1, "{list:?}");
    let v = &list[0];
    let text = v.to_string();
    for secret in ["hunter2", "ghp_0123456789", "JBSWY3DPEHPK3PXP"] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    assert!(v["detail"].as_str().unwrap().contains("password=********"), "{v}");
    assert_eq!(v["argv"], json!(["mysql", "--password", "********", "-h", "db"]));
    for k in ["session", "profile", "pid", "kind", "category", "target", "rule", "age_ms", "left_ms", "timeout_ms"] {
        assert!(!v[k].is_null(), "{k} missing: {v}");
    }
    assert_eq!((v["position"].as_u64(), v["of"].as_u64()), (Some(1), Some(1)));
    assert!(v["warning"].as_str().unwrap().contains("credential"), "{v}");

    let r = b.cli(&["approve", &id, "--session"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let d = sup.recv();
    assert_eq!(d["type"], "decided", "{d}");
    assert_eq!((d["req"].as_u64(), d["allow"].as_bool()), (Some(1), Some(true)));
    assert_eq!((d["scope"].as_str(), d["by"].as_str()), (Some("session"), Some("cli")));
    assert!(d["latency_ms"].as_u64().is_some());
    let res = front.recv_type("resolved");
    assert_eq!(
        (res["id"].as_str(), res["by"].as_str(), res["allow"].as_bool()),
        (Some(id.as_str()), Some("cli"), Some(true))
    );
    assert!(b.pending().is_empty());

    // Answered already: no such pending request.
    let again = b.cli(&["approve", &id]);
    assert_eq!(again.code, 1, "{} {}", again.stdout, again.stderr);
}

#[test]
fn deny_always_delivers_deny_with_scope_always() {
    let b = Broker::start("deny");
    let mut sup = b.connect();
    let id = sup.submit(9, "s", "/etc/shadow", "open", 60_000)["id"].as_str().unwrap().to_string();
    let r = b.cli(&["deny", &id, "--always"]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let d = sup.recv();
    assert_eq!((d["req"].as_u64(), d["allow"].as_bool()), (Some(9), Some(false)), "{d}");
    assert_eq!((d["scope"].as_str(), d["by"].as_str()), (Some("always"), Some("cli")), "{d}");
}

#[test]
fn identical_requests_of_a_session_share_one_answer() {
    let b = Broker::start("coalesce");
    let mut sup = b.connect();
    let a = sup.submit(1, "s", "/x", "open(O_WRONLY|O_APPEND)", 60_000);
    let c = sup.submit(2, "s", "/x", "open(O_WRONLY|O_APPEND)", 60_000);
    assert_eq!(c["coalesced"], true, "{c}");
    assert_eq!(a["id"], c["id"]);
    let other = sup.submit(3, "other-session", "/x", "open(O_WRONLY|O_APPEND)", 60_000);
    assert_eq!(other["coalesced"], false, "another session is asked on its own: {other}");
    // The same target with other flags is another question: an answer
    // covers only what the person was shown (O_RDWR also reads).
    let wider = sup.submit(4, "s", "/x", "open(O_RDWR)", 60_000);
    assert_eq!(wider["coalesced"], false, "{wider}");
    let list = b.pending();
    assert_eq!(list.len(), 3);
    assert_eq!(list[0]["waiters"], 2);
    assert_eq!(b.cli(&["approve", a["id"].as_str().unwrap()]).code, 0);
    let mut reqs = vec![sup.recv()["req"].as_u64().unwrap(), sup.recv()["req"].as_u64().unwrap()];
    reqs.sort();
    assert_eq!(reqs, [1, 2]);
}

#[test]
fn unanswered_requests_are_denied_at_their_timeout() {
    let b = Broker::start("timeout");
    let mut front = b.connect();
    front.send(json!({"v":1,"type":"subscribe"}));
    let mut sup = b.connect();
    let t = Instant::now();
    let q = sup.submit(5, "s", "/x", "d", 400);
    assert_eq!(q["type"], "queued");
    let d = sup.recv();
    let waited = t.elapsed();
    assert_eq!((d["allow"].as_bool(), d["by"].as_str()), (Some(false), Some("timeout")), "{d}");
    assert!(d["reason"].as_str().unwrap().contains("nobody answered"), "{d}");
    assert!(waited >= Duration::from_millis(380) && waited < Duration::from_secs(3), "{waited:?}");
    assert_eq!(front.recv_type("resolved")["by"], "timeout");
}

#[test]
fn a_supervisor_that_disconnects_takes_its_requests_with_it() {
    let b = Broker::start("gone");
    let mut sup = b.connect();
    sup.submit(1, "s", "/x", "d", 60_000);
    let mut front = b.connect();
    front.send(json!({"v":1,"type":"subscribe"}));
    assert_eq!(front.recv()["count"], 1);
    drop(sup);
    front.recv_type("request");
    let r = front.recv_type("resolved");
    assert_eq!(r["by"], "gone", "{r}");
    assert!(b.pending().is_empty());
    // A front end leaving loses nothing.
    let mut sup = b.connect();
    sup.submit(2, "s", "/y", "d", 60_000);
    drop(front);
    assert_eq!(b.pending().len(), 1);
}

#[test]
fn unknown_id_exits_1_and_no_broker_exits_125() {
    let b = Broker::start("unknown");
    let r = b.cli(&["approve", "deadbeef"]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("no pending request"), "{}", r.stderr);
    assert_eq!(b.cli(&["deny", "not-an-id"]).code, 1);

    let none = Broker::dir_only("none");
    let r = none.cli(&["approve", "deadbeef"]);
    assert_eq!(r.code, 125, "{}", r.stderr);
    assert!(r.stderr.contains("no approval broker is running"), "{}", r.stderr);
    assert_eq!(none.cli(&["deny", "deadbeef", "--always"]).code, 125);
    let list = none.cli(&["approvals", "--json"]);
    assert_eq!((list.code, list.stdout.trim()), (0, "[]"), "{}", list.stderr);
    assert!(!none.dir.exists(), "front ends never create the broker directory");
}

#[test]
fn malformed_input_gets_an_error_line_and_the_broker_survives() {
    let b = Broker::start("malformed");
    let mut p = b.connect();
    let cases: &[(&[u8], &str)] = &[
        (b"not json\n", "bad-json"),
        (b"{\"v\":1,\"type\":\"ping\"\n", "bad-json"),
        (b"[]\n", "bad-message"),
        (b"{\"v\":2,\"type\":\"ping\"}\n", "unsupported-version"),
        (b"{\"type\":\"ping\"}\n", "bad-message"),
        (b"{\"v\":1,\"type\":\"ping\",\"x\":1}\n", "bad-message"),
        (b"{\"v\":1,\"type\":\"launch\"}\n", "bad-message"),
        (
            b"{\"v\":1,\"type\":\"answer\",\"id\":\"x\",\"allow\":\"yes\",\"scope\":\"once\",\"by\":\"cli\"}\n",
            "bad-message",
        ),
        (
            b"{\"v\":1,\"type\":\"answer\",\"id\":\"x\",\"allow\":true,\"scope\":\"once\",\"by\":\"timeout\"}\n",
            "bad-message",
        ),
        (b"\xff\xfe\n", "bad-json"),
    ];
    for (line, code) in cases {
        p.raw(line);
        let e = p.recv();
        assert_eq!(e["type"], "error", "{}: {e}", String::from_utf8_lossy(line));
        assert_eq!(e["code"], *code, "{}: {e}", String::from_utf8_lossy(line));
        assert!(!e["message"].as_str().unwrap().is_empty());
    }
    // A bad submit names its req, so the supervisor knows which ask failed.
    let mut bad = submit(77, "s", "/x", "d", 1000);
    bad["category"] = json!("admin");
    p.send(bad);
    let e = p.recv();
    assert_eq!((e["code"].as_str(), e["req"].as_u64()), (Some("bad-message"), Some(77)), "{e}");
    p.send(json!({"v":1,"type":"ping"}));
    assert_eq!(p.recv()["type"], "pong", "the same connection still works");
    assert_eq!(b.connect().submit(1, "s", "/x", "d", 60_000)["type"], "queued");
}

#[test]
fn an_over_long_line_is_refused_and_the_connection_closed() {
    let b = Broker::start("long");
    let mut p = b.connect();
    // No newline ever: the broker must not keep reading into memory.
    let chunk = vec![b'x'; 1 << 16];
    let _ = p.w.write_all(&chunk);
    let _ = p.w.write_all(&chunk);
    let e = p.recv();
    assert_eq!((e["type"].as_str(), e["code"].as_str()), (Some("error"), Some("too-long")), "{e}");
    assert!(p.closed(), "then the connection is closed");
    let mut q = b.connect();
    q.send(json!({"v":1,"type":"ping"}));
    assert_eq!(q.recv()["type"], "pong");
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines().find_map(|l| l.strip_prefix("VmRSS:")).unwrap().split_whitespace().next().unwrap().parse().unwrap()
}

#[test]
fn a_flood_of_submits_keeps_the_broker_responsive_and_other_sessions_get_through() {
    let b = Broker::start("flood");
    let mut flood = b.connect();
    let mut reader = flood.r;
    let counter = std::thread::spawn(move || {
        let (mut queued, mut denied, mut reason) = (0, 0, String::new());
        let mut line = String::new();
        while queued + denied < 10_000 {
            line.clear();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                break;
            }
            let m: Value = serde_json::from_str(&line).unwrap();
            match m["type"].as_str() {
                Some("queued") => queued += 1,
                Some("decided") => {
                    denied += 1;
                    assert_eq!((m["allow"].as_bool(), m["by"].as_str()), (Some(false), Some("broker")), "{m}");
                    reason = m["reason"].as_str().unwrap_or("").to_string();
                }
                _ => panic!("{m}"),
            }
        }
        (queued, denied, reason)
    });
    let mut batch = String::new();
    for i in 0..10_000u64 {
        batch.push_str(&format!("{}\n", submit(i, "flood", &format!("/f/{i}"), SECRET_DETAIL, 60_000)));
        if i % 500 == 499 {
            flood.w.write_all(batch.as_bytes()).unwrap();
            batch.clear();
        }
    }
    // Meanwhile another supervisor is heard, and quickly.
    let mut other = b.connect();
    let t = Instant::now();
    let q = other.submit(1, "calm", "/calm", "d", 60_000);
    assert_eq!(q["type"], "queued", "{q}");
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    let (queued, denied, reason) = counter.join().unwrap();
    assert_eq!((queued, denied), (64, 10_000 - 64), "the per-supervisor cap holds");
    assert!(reason.contains("64 distinct requests pending"), "{reason}");
    let list = b.pending();
    assert_eq!(list.len(), 65);
    let calm = list.iter().find(|v| v["session"] == "calm").expect("the other session's request is listed");
    assert_eq!(b.cli(&["approve", calm["id"].as_str().unwrap()]).code, 0);
    assert_eq!(other.recv()["allow"], true);
    assert!(rss_kib(b.pid()) < 64 * 1024, "broker memory stays bounded: {} KiB", rss_kib(b.pid()));
    drop(flood.w);
}

#[test]
fn the_total_queue_is_capped_too() {
    let b = Broker::start("total");
    let mut peers: Vec<Peer> = (0..17).map(|_| b.connect()).collect();
    let (mut queued, mut full) = (0, 0);
    for (c, p) in peers.iter_mut().enumerate() {
        for i in 0..64u64 {
            let m = p.submit(i, &format!("s{c}"), &format!("/t/{i}"), "d", 60_000);
            match m["type"].as_str() {
                Some("queued") => queued += 1,
                _ => {
                    assert!(m["reason"].as_str().unwrap().contains("queue is full"), "{m}");
                    full += 1;
                }
            }
        }
    }
    assert_eq!((queued, full), (1024, 64));
}

/// `unshare` runs a client in new namespaces, as a sandboxed process would
/// be: same uid (mapped root), but the broker refuses it. The client is the
/// probe speaking the protocol by hand: portcullis's own front ends refuse
/// a broker outside their namespaces before they say anything (checked last).
#[test]
fn peers_in_another_user_or_pid_namespace_are_refused() {
    if Command::new("unshare").arg("--version").output().is_err() {
        return skip("unshare (util-linux) is not installed");
    }
    let b = Broker::start("userns");
    let mut sup = b.connect();
    let id = sup.submit(1, "s", "/x", "d", 60_000)["id"].as_str().unwrap().to_string();
    let sock = b.sock();
    let in_ns = |unshare: &[&str], line: &str| {
        let mut c = Command::new("unshare");
        c.args(unshare).arg(PROBE).arg("unix-talk").arg(&sock).arg(line).stdin(Stdio::null());
        Run::from(c.output().unwrap())
    };
    let list = r#"{"v":1,"type":"list"}"#;
    let answer = format!(r#"{{"v":1,"type":"answer","id":"{id}","allow":true,"scope":"once","by":"cli"}}"#);
    let userns = ["--user", "--map-root-user"];
    let probe = in_ns(&userns, list);
    if probe.stderr.contains("unshare failed") {
        return skip("user namespaces are not available here");
    }
    let refused = |r: &Run, why: &str| {
        assert!(r.verdict().starts_with("reply ") && r.verdict().contains("\"refused\""), "{} {}", r.stdout, r.stderr);
        assert!(r.verdict().contains(why), "{}", r.stdout);
        assert!(!r.stdout.contains(&id), "{}", r.stdout);
    };
    refused(&probe, "another user namespace");
    refused(&in_ns(&userns, &answer), "another user namespace");
    refused(&in_ns(&["--user", "--map-root-user", "--pid", "--fork"], &answer), "another");
    if is_root() {
        refused(&in_ns(&["--pid", "--fork"], &answer), "another PID namespace");
    }
    // Nothing was answered: the request still waits.
    assert_eq!(b.pending().len(), 1);
    // Our own front end, in a user namespace, does not take the broker for
    // its own either (the broker is outside its namespaces).
    let mut c = Command::new("unshare");
    c.args(userns).arg(PORTCULLIS).args(["approve", &id]).env("PORTCULLIS_BROKER_DIR", &b.dir).stdin(Stdio::null());
    let cli = Run::from(c.output().unwrap());
    assert_eq!(cli.code, 125, "{}", cli.stderr);
    assert!(cli.stderr.contains("is not ours") && cli.stderr.contains("another user namespace"), "{}", cli.stderr);
    assert_eq!(b.pending().len(), 1);
    // Twin: an approve from our own namespaces works.
    assert_eq!(b.cli(&["approve", &id]).code, 0);
    assert_eq!(sup.recv()["allow"], true);
}

/// A python client, for what the portcullis front ends cannot do (another
/// uid, an undumpable process). Returns the first line the broker sent.
fn python_ping(b: &Broker, as_nobody: bool, undumpable: bool) -> Option<String> {
    let script = format!(
        "import ctypes, socket, sys\n\
         if {undumpable}: ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)\n\
         s = socket.socket(socket.AF_UNIX)\n\
         s.connect(sys.argv[1])\n\
         try: s.sendall(b'{{\"v\":1,\"type\":\"ping\"}}\\n')\n\
         except BrokenPipeError: pass  # refused peers are closed at once\n\
         print(s.makefile().readline().strip())\n",
        undumpable = if undumpable { "True" } else { "False" }
    );
    let sock = b.sock();
    let mut c = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", "--", PYTHON]);
        c
    } else {
        Command::new(PYTHON)
    };
    let out = c.args(["-c", &script, sock.to_str().unwrap()]).output().ok()?;
    if !out.status.success() {
        eprintln!("python client: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The broker and the supervisor run unprivileged. A supervisor makes itself
/// undumpable, which hides its /proc/PID/ns links from a broker without
/// CAP_SYS_PTRACE: the broker must still accept it, and still refuse
/// another uid.
#[test]
fn unprivileged_broker_accepts_an_undumpable_supervisor_and_refuses_other_uids() {
    if !is_root() || Command::new("setpriv").arg("--version").output().is_err() || !Path::new(PYTHON).exists() {
        return skip("needs root, setpriv and /usr/bin/python3 to run the broker as nobody");
    }
    let mut b = Broker::dir_only("nobody");
    std::os::unix::fs::chown(&b.root, Some(NOBODY), Some(NOBODY)).unwrap();
    let child = Command::new("setpriv")
        .args([&format!("--reuid={NOBODY}"), &format!("--regid={NOBODY}"), "--clear-groups", "--", PORTCULLIS])
        .args(["broker", "--foreground"])
        .env("PORTCULLIS_BROKER_DIR", &b.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    b.child = Some(child);
    // Not b.wait_ready(): it connects as root, whom this broker refuses.
    let until = Instant::now() + Duration::from_secs(10);
    while python_ping(&b, true, false).is_none_or(|l| !l.contains("\"type\":\"pong\"")) {
        assert!(Instant::now() < until, "the broker did not come up as nobody");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(std::fs::metadata(&b.dir).unwrap().uid(), NOBODY);

    let pong = python_ping(&b, true, true).unwrap();
    assert!(pong.contains("\"type\":\"pong\""), "an undumpable same-uid peer is accepted: {pong}");
    let pong = python_ping(&b, true, false).unwrap();
    assert!(pong.contains("\"type\":\"pong\""), "{pong}");
    let refused = python_ping(&b, false, false).unwrap();
    assert!(refused.contains("\"code\":\"refused\"") && refused.contains("uid 0"), "root is another uid: {refused}");
}

/// The whole path: `portcullis run --mcp` asks for a tool, no broker runs,
/// the supervisor starts one on demand, the request shows up in
/// `approvals --json`, `approve` lets the call through to the server.
#[test]
fn an_mcp_ask_starts_the_broker_on_demand_and_approve_lets_the_call_through() {
    if !Path::new(PYTHON).exists() {
        return skip("/usr/bin/python3 is needed for the fake MCP server");
    }
    let sb = Sandbox::new("broker-mcp", As::Caller);
    let b = Broker::dir_only("mcp");
    let profile = sb.profile("ask.toml", "extends = \"python\"\n[mcp.tools]\nask = [\"big\"]\n");
    let mut child = fake_mcp_server(&sb, &b, &profile);
    let mut input = child.stdin.take().unwrap();
    let mut output = BufReader::new(child.stdout.take().unwrap());
    input.write_all(tool_call(1, "big", json!({"n": 3, "password": "hunter2"})).as_bytes()).unwrap();
    input.flush().unwrap();

    let pending = wait_pending(&b);
    let v = &pending[0];
    assert_eq!((v["kind"].as_str(), v["target"].as_str()), (Some("tool"), Some("big")), "{v}");
    assert!(!v.to_string().contains("hunter2"), "{v}");
    assert_eq!(b.cli(&["approve", v["id"].as_str().unwrap()]).code, 0);

    let mut line = String::new();
    output.read_line(&mut line).unwrap();
    let reply: Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(reply["result"]["content"][0]["text"], "xxx", "the approved call reached the server: {reply}");
    drop(input);
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("waiting for approval"), "the supervisor said how to answer: {stderr}");
    // Log before act: the person's yes is in the log, ahead of the call's own record.
    let (list, records) = audit_records(&sb);
    let approval = records.iter().position(|r| {
        r["kind"] == "approval" && r["body"]["request"]["target"] == "big" && r["body"]["decision"] == "allow"
    });
    let call = records.iter().position(|r| r["kind"] == "tool_call" && r["body"]["tool"] == "big");
    assert!(approval.is_some() && approval < call, "approval then call: {}", list.stdout);
    assert!(!list.stdout.contains("hunter2"), "masked in the log too");

    // The broker outlives the supervisor, and (regression) does not inherit
    // the signals `run` blocks: SIGTERM stops it.
    let mut p = b.connect();
    p.send(json!({"v":1,"type":"ping"}));
    let pid = p.recv()["pid"].as_u64().unwrap() as i32;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let blocked = status.lines().find_map(|l| l.strip_prefix("SigBlk:")).unwrap().trim().to_string();
    assert!(blocked.chars().all(|c| c == '0'), "the broker blocks signals: {blocked}");
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGTERM).unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    while Path::new(&format!("/proc/{pid}")).exists() {
        let zombie = std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z"));
        if zombie {
            break;
        }
        assert!(Instant::now() < until, "SIGTERM did not stop the broker");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tool call still waiting for a person when the run ends (the client
/// stops it with SIGTERM, as MCP clients do after closing stdin): the run
/// ends at once, the question is withdrawn, and the log keeps the call as
/// unanswered and never forwarded. The profile's `[ask] timeout` is the
/// tool ask's too.
#[test]
fn an_mcp_call_still_asking_when_the_run_ends_is_recorded_unanswered() {
    if !Path::new(PYTHON).exists() {
        return skip("/usr/bin/python3 is needed for the fake MCP server");
    }
    let sb = Sandbox::new("broker-mcp-end", As::Caller);
    let b = Broker::dir_only("mcp-end");
    let profile =
        sb.profile("ask.toml", "extends = \"python\"\n[mcp.tools]\nask = [\"big\"]\n[ask]\ntimeout = \"90s\"\n");
    let mut child = fake_mcp_server(&sb, &b, &profile);
    let mut input = child.stdin.take().unwrap();
    input.write_all(tool_call(7, "big", json!({"n": 3, "password": "hunter2"})).as_bytes()).unwrap();
    input.flush().unwrap();
    let pending = wait_pending(&b);
    assert_eq!(pending[0]["timeout_ms"].as_u64().map(|t| t.div_ceil(1000)), Some(90), "{}", pending[0]);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    // Not a speed check: a run that waited for the question would take 90 s.
    let until = Instant::now() + Duration::from_secs(45);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < until, "the run waited for the question");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(child.wait().unwrap().code(), Some(143));
    assert_ne!(b.cli(&["approve", pending[0]["id"].as_str().unwrap()]).code, 0, "the question was withdrawn");
    let (list, records) = audit_records(&sb);
    let call = records
        .iter()
        .find(|r| r["kind"] == "tool_call" && r["body"]["tool"] == "big")
        .unwrap_or_else(|| panic!("no record of the call: {}", list.stdout));
    let body = &call["body"];
    assert_eq!((body["verdict"].as_str(), body["status"].as_str()), (Some("deny"), Some("unanswered")), "{call}");
    assert_eq!((body["decided_by"].as_str(), body["id"].as_u64()), (Some("portcullis"), Some(7)), "{call}");
    assert!(!list.stdout.contains("hunter2"), "masked in the log");
    let seen = std::fs::read_to_string(sb.ws.join("seen.jsonl")).unwrap_or_default();
    assert!(!seen.contains("tools/call"), "the server never saw the call: {seen}");
}

/// `audit list --json` of the run's log (under `root/audit`): the text and its records.
fn audit_records(sb: &Sandbox) -> (Run, Vec<Value>) {
    let audit = sb.root.join("audit");
    let list = sb.run(&[
        "audit",
        "list",
        "--log",
        &sb.path(&audit.join("audit.log")),
        "--key",
        &sb.path(&audit.join("audit.key")),
        "--json",
    ]);
    let records = list.stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    (list, records)
}

fn tool_call(id: u64, tool: &str, args: Value) -> String {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":tool,"arguments":args}}).to_string() + "\n"
}

/// The broker's pending requests, once there are some (it may be started on demand).
fn wait_pending(b: &Broker) -> Vec<Value> {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        if b.sock().exists() {
            let p = b.pending();
            if !p.is_empty() {
                return p;
            }
        }
        assert!(Instant::now() < until, "no request reached a broker started on demand");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `portcullis run --mcp` of the fake server, stdio piped, with `b`'s directory.
fn fake_mcp_server(sb: &Sandbox, b: &Broker, profile: &str) -> Child {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let server = repo.join("tests/mcp/fake_server.py");
    let audit = sb.root.join("audit");
    sb.portcullis(&[
        "run",
        "--mcp",
        "--profile",
        profile,
        "--workspace",
        &sb.path(&sb.ws),
        "--audit-log",
        &sb.path(&audit.join("audit.log")),
        "--audit-key",
        &sb.path(&audit.join("audit.key")),
        "--read",
        &sb.path(&repo.join("tests/mcp")),
        "--exec",
        PYTHON,
        "--",
        PYTHON,
        &sb.path(&server),
    ])
    .env("PORTCULLIS_BROKER_DIR", &b.dir)
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap()
}
