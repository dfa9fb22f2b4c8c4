//! Talking to the broker: [`Link`], one plain connection (front ends, the
//! CLI), and [`Client`], what a supervisor asks through.
//!
//! A [`Client`] is shared by the supervisor's threads. It connects lazily,
//! starts a broker when none runs, multiplexes every thread's asks over one
//! connection, and when the broker goes away reconnects and resubmits what
//! was still pending. It enforces each ask's timeout itself, so a hung
//! broker cannot hold a syscall longer than the rule allows. When no broker
//! can be reached it asks on the controlling terminal ([`super::tty`]), and
//! with no terminal either it denies. It never allows by default.

use std::collections::{HashMap, HashSet};
use std::io::{BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::protocol::{read_line, Cancel, Decided, FromBroker, Line, ProtoError, Queued, Submit, ToBroker, MAX_LINE};
use super::socket::{self, DirError};
use super::{mask, tty, AskAnswer, AskRequest};

/// `PORTCULLIS_BROKER=off`: never use a broker (ask on the terminal, or deny).
pub const DISABLE_ENV: &str = "PORTCULLIS_BROKER";
/// Asks one client may have waiting at once; more are denied unasked.
pub const MAX_IN_FLIGHT: usize = 256;
/// How long connecting waits for a broker that was just started.
const START_WAIT: Duration = Duration::from_secs(2);
/// How long an ask whose broker went away waits for it to come back.
const RESTART_GRACE: Duration = Duration::from_secs(3);

/// Why a [`Link`] could not be made or used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LinkError {
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error("no broker is running at {}", .0.display())]
    NotRunning(PathBuf),
    #[error("cannot connect to the broker at {}: {err}", path.display())]
    Connect { path: PathBuf, err: std::io::Error },
    #[error("the process listening at {} is not ours: {why}", path.display())]
    NotOurs { path: PathBuf, why: String },
    #[error("the broker refused the connection: {0}")]
    Refused(String),
    #[error("the broker closed the connection")]
    Closed,
    #[error("the broker did not answer in time")]
    Timeout,
    #[error("broker connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("the broker sent an invalid message: {0}")]
    Protocol(#[from] ProtoError),
}

/// One connection to the broker, used from one thread.
pub struct Link {
    stream: UnixStream,
    reader: BufReader<UnixStream>,
    buf: Vec<u8>,
}

impl Link {
    /// Connects to the broker of [`socket::dir`]; never starts one.
    pub fn connect() -> Result<Link, LinkError> {
        Link::connect_dir(&socket::dir()?)
    }

    pub fn connect_dir(dir: &Path) -> Result<Link, LinkError> {
        let path = socket::socket_path(dir);
        match socket::verify(dir) {
            Ok(()) => {}
            Err(DirError::Inspect(_, e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LinkError::NotRunning(path))
            }
            Err(e) => return Err(e.into()),
        }
        let stream = UnixStream::connect(&path).map_err(|err| match err.kind() {
            std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => LinkError::NotRunning(path.clone()),
            _ => LinkError::Connect { path: path.clone(), err },
        })?;
        // The directory is ours and 0700, which a sandbox that could once
        // write it defeats: the listener must also be in our user and PID
        // namespaces, as the broker requires of us (a sandbox's process is
        // "us" by uid).
        super::peer::check(&stream).map_err(|why| LinkError::NotOurs { path: path.clone(), why })?;
        let reader = BufReader::with_capacity(64 << 10, stream.try_clone()?);
        Ok(Link { stream, reader, buf: Vec::with_capacity(1024) })
    }

    pub fn send(&mut self, m: &ToBroker) -> Result<(), LinkError> {
        match self.stream.write_all(m.encode().as_bytes()) {
            Ok(()) => Ok(()),
            // A refused peer is closed at once: the refusal line says why better than EPIPE.
            Err(e) => match self.recv_timeout(Duration::from_millis(200)) {
                Err(LinkError::Refused(why)) => Err(LinkError::Refused(why)),
                _ => Err(e.into()),
            },
        }
    }

    /// The next message. An error line about the connection itself
    /// (`refused`, `busy`, `too-long`) ends it: [`LinkError::Refused`].
    pub fn recv(&mut self) -> Result<FromBroker, LinkError> {
        match read_line(&mut self.reader, &mut self.buf, MAX_LINE) {
            Ok(Line::Line) => {}
            Ok(Line::Eof) => return Err(LinkError::Closed),
            Ok(Line::TooLong) => return Err(ProtoError::TooLong.into()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(LinkError::Timeout)
            }
            Err(e) => return Err(e.into()),
        }
        match FromBroker::parse(&self.buf)? {
            FromBroker::Error(e) if matches!(e.code.as_str(), "refused" | "busy" | "too-long") => {
                Err(LinkError::Refused(e.message))
            }
            m => Ok(m),
        }
    }

    pub fn recv_timeout(&mut self, d: Duration) -> Result<FromBroker, LinkError> {
        self.stream.set_read_timeout(Some(d.max(Duration::from_millis(1))))?;
        let r = self.recv();
        self.stream.set_read_timeout(None)?;
        r
    }

    /// A snapshot of the pending requests (`list`).
    pub fn list(&mut self, timeout: Duration) -> Result<Vec<super::protocol::View>, LinkError> {
        self.send(&ToBroker::List)?;
        let deadline = Instant::now() + timeout;
        let left = |d: Instant| d.saturating_duration_since(Instant::now());
        let count = loop {
            match self.recv_timeout(left(deadline))? {
                FromBroker::Pending(p) => break p.count,
                FromBroker::Error(e) => return Err(LinkError::Refused(e.message)),
                _ => {}
            }
        };
        let mut out = Vec::with_capacity(count.min(4096));
        while out.len() < count {
            if let FromBroker::Request(r) = self.recv_timeout(left(deadline))? {
                out.push(r.request);
            }
        }
        Ok(out)
    }

    /// A second handle on the socket (to write while another thread reads).
    pub fn writer(&self) -> std::io::Result<UnixStream> {
        self.stream.try_clone()
    }
}

/// What the reader thread hands an asking thread.
enum Event {
    Queued(Queued),
    Decided(Decided),
    /// The broker refused this one submit.
    Error(String),
    /// The connection ended; `Some` when the broker refused us outright.
    Lost(Option<String>),
}

struct Conn {
    writer: Mutex<UnixStream>,
    waiters: Mutex<HashMap<u64, Sender<Event>>>,
    alive: AtomicBool,
    /// Set when the broker refused this connection, before `alive` clears.
    refused: Mutex<Option<String>>,
}

impl Conn {
    fn waiters(&self) -> MutexGuard<'_, HashMap<u64, Sender<Event>>> {
        self.waiters.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn send(&self, m: &ToBroker) -> std::io::Result<()> {
        let mut w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        w.write_all(m.encode().as_bytes())
    }

    fn kill(&self) {
        self.alive.store(false, Ordering::SeqCst);
        let w = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _ = w.shutdown(std::net::Shutdown::Both);
    }

    fn read_loop(self: Arc<Self>, mut link: Link) {
        let lost = loop {
            match link.recv() {
                Ok(FromBroker::Queued(q)) => {
                    if let Some(tx) = self.waiters().get(&q.req) {
                        let _ = tx.send(Event::Queued(q));
                    }
                }
                Ok(FromBroker::Decided(d)) => {
                    if let Some(tx) = self.waiters().remove(&d.req) {
                        let _ = tx.send(Event::Decided(d));
                    }
                }
                Ok(FromBroker::Error(e)) => match e.req.and_then(|r| self.waiters().remove(&r)) {
                    Some(tx) => {
                        let _ = tx.send(Event::Error(format!("{}: {}", e.code, e.message)));
                    }
                    None => eprintln!("portcullis: broker: {}: {}", e.code, e.message),
                },
                Ok(_) => {}
                Err(LinkError::Refused(why)) => break Some(why),
                Err(_) => break None,
            }
        };
        *self.refused.lock().unwrap_or_else(|p| p.into_inner()) = lost.clone();
        self.alive.store(false, Ordering::SeqCst);
        for (_, tx) in self.waiters().drain() {
            let _ = tx.send(Event::Lost(lost.clone()));
        }
    }
}

/// How a [`Client`] finds and starts the broker.
#[derive(Clone, Debug)]
pub struct Options {
    /// The broker directory; `None`: [`socket::dir`] at first use.
    pub dir: Option<PathBuf>,
    /// The binary to run as `BIN broker` when no broker answers; `None`: never start one.
    pub start: Option<PathBuf>,
    /// Ask on the controlling terminal when no broker answers.
    pub tty: bool,
    /// Say on stderr how to answer when nobody is watching the queue.
    pub hints: bool,
}

impl Default for Options {
    fn default() -> Self {
        // A unit test binary run as `BIN broker` would run the tests again.
        let start = (!cfg!(test)).then(|| PathBuf::from("/proc/self/exe"));
        Options { dir: None, start, tty: true, hints: true }
    }
}

/// What a supervisor asks through. Cheap to create, connects on first use,
/// safe to share between threads.
pub struct Client {
    opts: Options,
    conn: Mutex<Option<Arc<Conn>>>,
    /// After a broker could not be reached or started: when to try again, and why.
    backoff: Mutex<Option<(Instant, String)>>,
    next_req: AtomicU64,
    in_flight: AtomicUsize,
    tty: Mutex<()>,
    hinted: Mutex<HashSet<String>>,
}

impl Default for Client {
    fn default() -> Self {
        Client::new()
    }
}

struct InFlight<'a>(&'a AtomicUsize);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Client {
    pub fn new() -> Client {
        Client::with_options(Options::default())
    }

    pub fn with_options(opts: Options) -> Client {
        Client {
            opts,
            conn: Mutex::new(None),
            backoff: Mutex::new(None),
            next_req: AtomicU64::new(1),
            in_flight: AtomicUsize::new(0),
            tty: Mutex::new(()),
            hinted: Mutex::new(HashSet::new()),
        }
    }

    /// Asks for a decision; blocks until someone answers or `req.timeout` passes.
    pub fn ask(&self, req: &AskRequest) -> AskAnswer {
        let start = Instant::now();
        let deadline = start + req.timeout;
        if std::env::var(DISABLE_ENV).is_ok_and(|v| v == "off") {
            return self.without_broker(req, start, deadline, "PORTCULLIS_BROKER=off");
        }
        if self.in_flight.fetch_add(1, Ordering::SeqCst) >= MAX_IN_FLIGHT {
            self.in_flight.fetch_sub(1, Ordering::SeqCst);
            let why = format!("more than {MAX_IN_FLIGHT} approval requests are already waiting: denied without asking");
            return AskAnswer::deny("broker", why, start.elapsed());
        }
        let _in_flight = InFlight(&self.in_flight);
        // After losing the broker: how long a restarting one is waited for.
        let mut grace: Option<Instant> = None;
        let mut send_failures = 0;
        loop {
            let now = Instant::now();
            if now >= deadline {
                return timed_out(req, start);
            }
            let conn = match self.connection() {
                Ok(c) => c,
                Err(_) if grace.is_some_and(|g| now < g) => {
                    std::thread::sleep(Duration::from_millis(100));
                    continue;
                }
                Err(why) => return self.without_broker(req, start, deadline, &why),
            };
            let n = self.next_req.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = channel();
            conn.waiters().insert(n, tx);
            let left_ms = deadline.saturating_duration_since(now).as_millis().clamp(1, u64::MAX as u128) as u64;
            let submit = fitted_submit(n, req, left_ms.min(super::protocol::MAX_TIMEOUT_MS));
            if conn.send(&submit).is_err() {
                conn.waiters().remove(&n);
                // Let the reader see the refusal line, if that is why the write failed.
                std::thread::sleep(Duration::from_millis(20));
                if let Some(why) = conn.refused.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                    return self.without_broker(req, start, deadline, &format!("refused: {why}"));
                }
                conn.kill();
                send_failures += 1;
                if send_failures >= 3 {
                    return self.without_broker(req, start, deadline, "cannot send to the broker");
                }
                continue;
            }
            loop {
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(Event::Queued(q)) => self.hint(req, &q),
                    Ok(Event::Decided(d)) => {
                        return AskAnswer {
                            allow: d.allow,
                            scope: d.scope,
                            by: d.by,
                            reason: d.reason,
                            latency: start.elapsed(),
                        }
                    }
                    Ok(Event::Error(why)) => {
                        return AskAnswer::deny(
                            "broker",
                            format!("the broker refused the request: {why}"),
                            start.elapsed(),
                        )
                    }
                    Ok(Event::Lost(Some(refused))) => {
                        return self.without_broker(req, start, deadline, &format!("refused: {refused}"))
                    }
                    // The broker went away (restart): reconnect and submit again.
                    Ok(Event::Lost(None)) | Err(RecvTimeoutError::Disconnected) => {
                        grace.get_or_insert(Instant::now() + RESTART_GRACE);
                        std::thread::sleep(Duration::from_millis(20));
                        break;
                    }
                    Err(RecvTimeoutError::Timeout) => {
                        conn.waiters().remove(&n);
                        let _ = conn.send(&ToBroker::Cancel(Cancel { req: n }));
                        return timed_out(req, start);
                    }
                }
            }
        }
    }

    /// The live connection, or a new one (starting a broker if none runs).
    fn connection(&self) -> Result<Arc<Conn>, String> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref().filter(|c| c.alive.load(Ordering::SeqCst)) {
            return Ok(c.clone());
        }
        let mut backoff = self.backoff.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((until, why)) = backoff.as_ref() {
            if Instant::now() < *until {
                return Err(why.clone());
            }
        }
        let result = self.open();
        match &result {
            Ok(c) => {
                *slot = Some(c.clone());
                *backoff = None;
            }
            // Each ask would otherwise spend seconds trying to start a broker.
            Err(why) => *backoff = Some((Instant::now() + Duration::from_secs(1), why.clone())),
        }
        result
    }

    fn open(&self) -> Result<Arc<Conn>, String> {
        let dir = match &self.opts.dir {
            Some(d) => d.clone(),
            None => socket::dir().map_err(|e| e.to_string())?,
        };
        let link = match Link::connect_dir(&dir) {
            Ok(l) => l,
            Err(LinkError::NotRunning(_)) => {
                let Some(bin) = &self.opts.start else {
                    return Err(format!("no broker is running at {}", dir.display()));
                };
                start_broker(bin, &dir)?;
                let until = Instant::now() + START_WAIT;
                loop {
                    match Link::connect_dir(&dir) {
                        Ok(l) => break l,
                        Err(LinkError::NotRunning(_)) if Instant::now() < until => {
                            std::thread::sleep(Duration::from_millis(50))
                        }
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
            Err(e) => return Err(e.to_string()),
        };
        let writer = link.writer().map_err(|e| e.to_string())?;
        let conn = Arc::new(Conn {
            writer: Mutex::new(writer),
            waiters: Mutex::new(HashMap::new()),
            alive: AtomicBool::new(true),
            refused: Mutex::new(None),
        });
        let reader = conn.clone();
        std::thread::Builder::new()
            .name("broker-client".into())
            .spawn(move || reader.read_loop(link))
            .map_err(|e| format!("cannot start the broker reader: {e}"))?;
        Ok(conn)
    }

    fn without_broker(&self, req: &AskRequest, start: Instant, deadline: Instant, why: &str) -> AskAnswer {
        if self.opts.tty {
            if let Some(mut a) = tty::prompt(req, deadline, &self.tty) {
                a.latency = start.elapsed();
                return a;
            }
        }
        AskAnswer::deny("no-broker", format!("no approval broker ({why}) and no terminal to ask on"), start.elapsed())
    }

    /// Once per request, when no front end is subscribed: how to answer it.
    fn hint(&self, req: &AskRequest, q: &Queued) {
        if !self.opts.hints || q.subscribers > 0 || q.coalesced {
            return;
        }
        let mut seen = self.hinted.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() > 1024 {
            seen.clear();
        }
        if seen.insert(q.id.clone()) {
            let target = audit::display_safe(&mask::text(&req.target, mask::MAX_TARGET)).into_owned();
            eprintln!(
                "portcullis: waiting for approval {} ({} {target}, {} s): run `portcullis approvals`, or `portcullis approve {}` / `portcullis deny {}`",
                q.id,
                req.kind,
                req.timeout.as_secs(),
                q.id,
                q.id
            );
        }
    }
}

/// The submit for `req`, masked here already (secrets need not leave the
/// supervisor) and cut so its line fits the protocol's limit. The target is
/// kept whole as long as it fits: the broker coalesces on it.
fn fitted_submit(n: u64, req: &AskRequest, timeout_ms: u64) -> ToBroker {
    let field = |s: &str| mask::text(s, mask::MAX_FIELD);
    let mut s = Submit {
        req: n,
        session: field(&req.session),
        profile: field(&req.profile),
        argv: mask::argv(&req.argv),
        pid: req.pid,
        kind: req.kind.clone(),
        category: req.category.clone(),
        target: req.target.clone(),
        detail: mask::text(&req.detail, mask::MAX_DETAIL),
        rule: field(&req.rule),
        timeout_ms,
    };
    let fits = |s: &Submit| ToBroker::Submit(s.clone()).encode().len() <= MAX_LINE;
    // A cut target is longer than the broker's coalescing limit (4096
    // bytes), so two targets that differ only after the cut never share an answer.
    if !fits(&s) {
        s.target = mask::cut(&req.target, 4096);
    }
    if !fits(&s) {
        let short = |v: &str| mask::cut(v, 128);
        s.detail = mask::cut(&s.detail, 256);
        s.argv = s.argv.iter().take(4).map(|a| short(a)).collect();
        (s.session, s.profile, s.rule) = (short(&s.session), short(&s.profile), short(&s.rule));
    }
    ToBroker::Submit(s)
}

fn timed_out(req: &AskRequest, start: Instant) -> AskAnswer {
    AskAnswer::deny(
        "timeout",
        format!("nobody answered within {} s", req.timeout.as_secs_f64().ceil()),
        start.elapsed(),
    )
}

/// Runs `BIN broker`, which starts the detached broker and exits once it
/// answers. Waiting for it leaves no zombie behind in the supervisor; the
/// broker itself is reparented away from us.
fn start_broker(bin: &Path, dir: &Path) -> Result<(), String> {
    let mut child = Command::new(bin)
        .arg("broker")
        .env("PORTCULLIS_BROKER_DIR", dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("cannot start a broker ({}): {e}", bin.display()))?;
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        match child.try_wait() {
            Ok(Some(s)) if s.success() => return Ok(()),
            Ok(Some(s)) => {
                return Err(format!("starting a broker failed ({s}); see {}", dir.join(socket::LOG).display()))
            }
            Ok(None) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err("starting a broker took longer than 5 s".into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::server::{bind, Bound, Options as ServerOptions};
    use super::super::Scope;
    use super::*;

    /// A broker on a thread, in its own directory; stops when the directory goes.
    struct TestBroker {
        root: PathBuf,
        dir: PathBuf,
    }

    impl TestBroker {
        fn start(tag: &str) -> TestBroker {
            let root = std::env::temp_dir().join(format!("pc-broker-unit-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            std::fs::create_dir_all(&root).unwrap();
            let dir = root.join("b");
            TestBroker::serve(&dir);
            TestBroker { root, dir }
        }

        fn serve(dir: &Path) {
            let Bound::Serving(b) = bind(ServerOptions::new(dir.to_path_buf())).unwrap() else {
                panic!("a broker already runs in a fresh directory")
            };
            std::thread::spawn(move || b.run());
        }

        fn client(&self) -> Client {
            Client::with_options(Options { dir: Some(self.dir.clone()), start: None, tty: false, hints: false })
        }

        fn link(&self) -> Link {
            Link::connect_dir(&self.dir).unwrap()
        }
    }

    impl Drop for TestBroker {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    fn request(target: &str, timeout: Duration) -> AskRequest {
        AskRequest {
            session: "s1".into(),
            profile: "strict".into(),
            argv: vec!["cat".into()],
            pid: 1,
            kind: "open-read".into(),
            category: "read".into(),
            target: target.into(),
            detail: "password=hunter2".into(),
            rule: "r".into(),
            timeout,
        }
    }

    /// Waits until `n` requests are pending, answering the first with `answer` if given.
    fn wait_pending(link: &mut Link, n: usize) -> Vec<super::super::protocol::View> {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let l = link.list(Duration::from_secs(2)).unwrap();
            if l.len() >= n || Instant::now() > until {
                return l;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn answer(link: &mut Link, id: &str, allow: bool, scope: Scope) -> FromBroker {
        let a = super::super::protocol::Answer { id: id.into(), allow, scope, by: "cli".into() };
        link.send(&ToBroker::Answer(a)).unwrap();
        link.recv_timeout(Duration::from_secs(2)).unwrap()
    }

    #[test]
    fn threads_share_one_client_and_each_gets_its_own_answer() {
        let b = TestBroker::start("threads");
        let client = Arc::new(b.client());
        let asks: Vec<_> = ["/a", "/b", "/c"]
            .into_iter()
            .map(|t| {
                let c = client.clone();
                std::thread::spawn(move || c.ask(&request(t, Duration::from_secs(10))))
            })
            .collect();
        let mut link = b.link();
        let pending = wait_pending(&mut link, 3);
        assert_eq!(pending.len(), 3);
        assert!(pending.iter().all(|v| v.detail == "password=********"), "{pending:?}");
        for v in &pending {
            let allow = v.target != "/b";
            assert!(matches!(answer(&mut link, &v.id, allow, Scope::Session), FromBroker::Answered(_)));
        }
        let got: Vec<AskAnswer> = asks.into_iter().map(|h| h.join().unwrap()).collect();
        assert_eq!(got.iter().map(|a| a.allow).collect::<Vec<_>>(), [true, false, true]);
        assert!(got.iter().all(|a| a.by == "cli" && a.scope == Scope::Session));
    }

    #[test]
    fn the_client_enforces_the_timeout_itself() {
        let b = TestBroker::start("timeout");
        let c = b.client();
        let t = Instant::now();
        let a = c.ask(&request("/slow", Duration::from_millis(300)));
        assert!(!a.allow && a.by == "timeout", "{a:?}");
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
        // Cancelled or expired: nothing is left pending.
        std::thread::sleep(Duration::from_millis(100));
        assert!(wait_pending(&mut b.link(), 0).is_empty());
    }

    #[test]
    fn no_broker_and_no_terminal_is_no() {
        let root = std::env::temp_dir().join(format!("pc-broker-unit-none-{}", std::process::id()));
        let c =
            Client::with_options(Options { dir: Some(root.join("nothing")), start: None, tty: false, hints: false });
        let a = c.ask(&request("/x", Duration::from_secs(5)));
        assert!(!a.allow && a.by == "no-broker", "{a:?}");
        assert!(a.reason.as_deref().unwrap().contains("no broker is running"), "{a:?}");
    }

    #[test]
    fn a_restarted_broker_gets_the_pending_ask_again() {
        let b = TestBroker::start("restart");
        let c = Arc::new(b.client());
        let asker = {
            let c = c.clone();
            std::thread::spawn(move || c.ask(&request("/again", Duration::from_secs(20))))
        };
        assert_eq!(wait_pending(&mut b.link(), 1).len(), 1);
        // The old broker stops when its socket goes; a new one binds the same directory.
        std::fs::remove_file(b.dir.join(socket::SOCKET)).unwrap();
        std::thread::sleep(Duration::from_millis(700));
        TestBroker::serve(&b.dir);
        let mut link = b.link();
        let pending = wait_pending(&mut link, 1);
        assert_eq!(pending.len(), 1, "the ask was resubmitted");
        assert_eq!(pending[0].target, "/again");
        answer(&mut link, &pending[0].id, true, Scope::Once);
        let a = asker.join().unwrap();
        assert!(a.allow && a.by == "cli", "{a:?}");
    }

    #[test]
    fn identical_asks_coalesce_and_share_one_answer() {
        let b = TestBroker::start("coalesce");
        let c = Arc::new(b.client());
        let asks: Vec<_> = (0..5)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || c.ask(&request("/same", Duration::from_secs(10))))
            })
            .collect();
        let mut link = b.link();
        let until = Instant::now() + Duration::from_secs(5);
        let pending = loop {
            let p = wait_pending(&mut link, 1);
            if p.first().is_some_and(|v| v.waiters == 5) || Instant::now() > until {
                break p;
            }
        };
        assert_eq!(pending.len(), 1, "{pending:?}");
        assert_eq!(pending[0].waiters, 5);
        answer(&mut link, &pending[0].id, false, Scope::Always);
        for h in asks {
            let a = h.join().unwrap();
            assert!(!a.allow && a.scope == Scope::Always, "{a:?}");
        }
    }
}
