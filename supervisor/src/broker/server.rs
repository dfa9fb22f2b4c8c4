//! `portcullis broker`: the queue of pending requests, one per user.
//!
//! Threads, not an event loop: one accepts, each connection has a reader
//! (parses, acts under the state lock) and a writer (drains the
//! connection's bounded outbox), and one timer denies what nobody answered
//! in time. Nothing blocks while holding the state lock: events to other
//! connections are queued without waiting, and a connection whose outbox is
//! full is dropped (a front end reconnects and resubscribes; a supervisor
//! reconnects and resubmits), so one stuck peer never stalls the others.
//!
//! Memory is bounded by [`Limits`]: connections, pending requests per
//! connection and in all, waiters per connection, queued lines per
//! connection, and each request's shown fields (see [`super::mask`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::net::Shutdown;
use std::os::fd::AsFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::client::Link;
use super::mask;
use super::protocol::{read_line, Line};
use super::protocol::{
    Added, Answer, Answered, Decided, FromBroker, Listed, Pending, Pong, ProtoError, Queued, Resolved, Submit,
    ToBroker, View, MAX_LINE,
};
use super::socket::{self, DirError};
use super::Scope;

/// Set (to 1) in the environment of a broker started in the background: it
/// leaves the caller's session and exits when idle.
pub const DETACHED_ENV: &str = "PORTCULLIS_BROKER_DETACHED";
/// A detached broker with no connection and nothing pending exits after this.
pub const IDLE_EXIT: Duration = Duration::from_secs(30 * 60);
/// What credential-category requests carry.
pub const CREDENTIAL_WARNING: &str =
    "credential: allowing this gives the sandbox a secret (key, token, password); allow only what you expected";

/// Bounds on what one broker holds.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Distinct pending requests one connection may have.
    pub per_conn: usize,
    /// Asks one connection may have waiting, coalesced ones included.
    pub waiters_per_conn: usize,
    /// Distinct pending requests in all.
    pub total: usize,
    /// Open connections.
    pub max_conns: usize,
    /// Lines queued to one connection before it is dropped as too slow.
    pub outbox: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { per_conn: 64, waiters_per_conn: 256, total: 1024, max_conns: 128, outbox: 4096 }
    }
}

#[derive(Clone, Debug)]
pub struct Options {
    pub dir: PathBuf,
    /// Exit after this long with no connection and nothing pending.
    pub idle_exit: Option<Duration>,
    pub limits: Limits,
}

impl Options {
    pub fn new(dir: PathBuf) -> Options {
        Options { dir, idle_exit: None, limits: Limits::default() }
    }
}

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    Dir(#[from] DirError),
    #[error("broker: {what} {path}: {err}")]
    Io { what: &'static str, path: PathBuf, err: std::io::Error },
    #[error("broker: another broker holds {0} but does not answer; is it stuck? (kill it, or remove the directory)")]
    Stuck(PathBuf),
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ServeError + 'a {
    move |err| ServeError::Io { what, path: path.to_path_buf(), err }
}

/// The outcome of [`bind`].
pub enum Bound {
    Serving(Broker),
    /// A live broker already serves this directory.
    Running {
        pid: u32,
    },
}

/// A bound, not yet serving broker.
pub struct Broker {
    listener: UnixListener,
    _lock: Flock<File>,
    sock: PathBuf,
    ident: (u64, u64),
    opts: Options,
}

/// Takes the directory's lock and binds the socket, replacing a stale one.
/// The lock, not the socket, decides who serves: two brokers starting at
/// once cannot both unlink and bind.
pub fn bind(opts: Options) -> Result<Bound, ServeError> {
    let dir = &opts.dir;
    socket::prepare(dir)?;
    let lock_path = dir.join(socket::LOCK);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
        .map_err(io_err("cannot open the lock", &lock_path))?;
    let lock = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(l) => l,
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
            // It may be starting right now: give it the time a client gives it.
            let deadline = Instant::now() + Duration::from_secs(3);
            loop {
                if let Some(pid) = ping(dir) {
                    return Ok(Bound::Running { pid });
                }
                if Instant::now() > deadline {
                    return Err(ServeError::Stuck(lock_path));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        Err((_, e)) => return Err(ServeError::Io { what: "cannot lock", path: lock_path, err: e.into() }),
    };
    let sock = socket::socket_path(dir);
    // We hold the lock, so whatever socket is there belongs to a dead broker.
    match std::fs::remove_file(&sock) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(ServeError::Io { what: "cannot remove the stale socket", path: sock, err: e }),
    }
    let listener = UnixListener::bind(&sock).map_err(io_err("cannot bind", &sock))?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(io_err("cannot chmod", &sock))?;
    let m = std::fs::symlink_metadata(&sock).map_err(io_err("cannot inspect", &sock))?;
    Ok(Bound::Serving(Broker { listener, _lock: lock, sock, ident: (m.dev(), m.ino()), opts }))
}

/// A broker answering on `dir`: its pid.
pub fn ping(dir: &Path) -> Option<u32> {
    let mut link = Link::connect_dir(dir).ok()?;
    link.send(&ToBroker::Ping).ok()?;
    match link.recv_timeout(Duration::from_secs(2)).ok()? {
        FromBroker::Pong(p) => Some(p.pid),
        _ => None,
    }
}

/// How `portcullis broker` (without --foreground) ended.
pub enum Started {
    Started { pid: u32 },
    AlreadyRunning { pid: u32 },
}

/// Starts a broker in the background for `dir` (this binary, `broker
/// --foreground`, in its own session, stdio to /dev/null and stderr to the
/// directory's broker.log) and waits until it answers.
pub fn start_detached(dir: &Path) -> Result<Started, String> {
    socket::prepare(dir).map_err(|e| e.to_string())?;
    if let Some(pid) = ping(dir) {
        return Ok(Started::AlreadyRunning { pid });
    }
    let log_path = dir.join(socket::LOG);
    let log = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&log_path)
        .map_err(|e| format!("cannot open {}: {e}", log_path.display()))?;
    let mut child = Command::new("/proc/self/exe")
        .args(["broker", "--foreground"])
        .env("PORTCULLIS_BROKER_DIR", dir)
        .env(DETACHED_ENV, "1")
        .current_dir("/")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| format!("cannot start the broker: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        if let Some(pid) = ping(dir) {
            return Ok(if pid == child.id() { Started::Started { pid } } else { Started::AlreadyRunning { pid } });
        }
        if let Ok(Some(status)) = child.try_wait() {
            if let Some(pid) = ping(dir) {
                return Ok(Started::AlreadyRunning { pid });
            }
            return Err(format!("the broker exited ({status}); see {}", log_path.display()));
        }
        if Instant::now() > deadline {
            return Err(format!("the broker did not answer within 3 s; see {}", log_path.display()));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Broker {
    pub fn socket(&self) -> &Path {
        &self.sock
    }

    /// Serves until the socket is removed or replaced, or the idle time
    /// passes; returns why it stopped.
    pub fn run(self) -> Result<String, ServeError> {
        let shared = Arc::new(Shared::new(self.opts.limits.clone())?);
        self.listener.set_nonblocking(true).map_err(io_err("cannot configure", &self.sock))?;
        let timer = {
            let shared = shared.clone();
            std::thread::Builder::new()
                .name("broker-timer".into())
                .spawn(move || shared.expire_loop())
                .map_err(io_err("cannot start the timer for", &self.sock))?
        };
        let why = loop {
            let mut fds = [PollFd::new(self.listener.as_fd(), PollFlags::POLLIN)];
            let _ = poll(&mut fds, PollTimeout::from(500u16));
            loop {
                match self.listener.accept() {
                    Ok((stream, _)) => shared.clone().accept(stream),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    // Out of fds and the like: the next round retries.
                    Err(e) => {
                        eprintln!("portcullis broker: accept: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                        break;
                    }
                }
            }
            match std::fs::symlink_metadata(&self.sock) {
                Ok(m) if (m.dev(), m.ino()) == self.ident => {}
                _ => break format!("the socket {} was removed or replaced", self.sock.display()),
            }
            if let Some(idle) = self.opts.idle_exit {
                if shared.idle_for() >= idle {
                    break format!("idle for {} s", idle.as_secs());
                }
            }
        };
        shared.stop();
        let _ = timer.join();
        Ok(why)
    }
}

/// Lines waiting to be written to one connection.
struct Outbox {
    q: Mutex<OutQ>,
    cv: Condvar,
    cap: usize,
}

struct OutQ {
    lines: VecDeque<String>,
    closed: bool,
}

impl Outbox {
    fn new(cap: usize) -> Outbox {
        Outbox { q: Mutex::new(OutQ { lines: VecDeque::new(), closed: false }), cv: Condvar::new(), cap }
    }

    fn lock(&self) -> MutexGuard<'_, OutQ> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues without waiting; false when closed or full.
    fn push(&self, line: String) -> bool {
        let mut q = self.lock();
        if q.closed || q.lines.len() >= self.cap {
            return false;
        }
        q.lines.push_back(line);
        self.cv.notify_all();
        true
    }

    /// Back-pressure for a connection's own replies: waits until half empty,
    /// so a peer that writes without reading stalls only itself.
    fn wait_room(&self) {
        let mut q = self.lock();
        while !q.closed && q.lines.len() >= self.cap / 2 {
            q = self.cv.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn pop(&self) -> Option<String> {
        let mut q = self.lock();
        loop {
            if let Some(l) = q.lines.pop_front() {
                self.cv.notify_all();
                return Some(l);
            }
            if q.closed {
                return None;
            }
            q = self.cv.wait(q).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// No more lines; what is queued is still written.
    fn close(&self) {
        self.lock().closed = true;
        self.cv.notify_all();
    }

    /// No more lines, and what is queued is dropped.
    fn abort(&self) {
        let mut q = self.lock();
        q.closed = true;
        q.lines.clear();
        self.cv.notify_all();
    }
}

struct Conn {
    outbox: Arc<Outbox>,
    stream: UnixStream,
    subscribed: bool,
    /// Distinct pending requests this connection submitted.
    owned: usize,
    /// Its asks waiting for an answer, coalesced ones included.
    waiting: usize,
}

struct Waiter {
    conn: u64,
    req: u64,
    since: Instant,
}

/// Coalescing key: identical asks of one session on one connection: the
/// same kind, target and detail (flags, arguments), so an answer only ever
/// covers what the person was shown.
type Key = (u64, String, String, String, String);
/// Targets or details longer than this are never coalesced (the key is kept in memory).
const MAX_KEY_TARGET: usize = 4096;

struct Entry {
    id: String,
    owner: u64,
    key: Option<Key>,
    shown: View,
    created: Instant,
    deadline: Instant,
    waiters: Vec<Waiter>,
}

struct State {
    seq: u64,
    /// Pending requests, oldest first.
    entries: BTreeMap<u64, Entry>,
    by_id: HashMap<String, u64>,
    by_key: HashMap<Key, u64>,
    /// (connection, req) → the entry it waits on.
    waiting_on: HashMap<(u64, u64), u64>,
    conns: HashMap<u64, Conn>,
    stopped: bool,
    last_activity: Instant,
}

struct Shared {
    state: Mutex<State>,
    timer: Condvar,
    limits: Limits,
    live: AtomicUsize,
    next_conn: AtomicU64,
    refusals: AtomicU64,
    random: Mutex<File>,
}

/// Decrements the live-connection count however the connection thread ends.
struct Live<'a>(&'a AtomicUsize);

impl Drop for Live<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

fn write_line(mut s: &UnixStream, line: &str) {
    let _ = s.set_write_timeout(Some(Duration::from_secs(1)));
    let _ = s.write_all(line.as_bytes());
}

impl Shared {
    fn new(limits: Limits) -> Result<Shared, ServeError> {
        let random = File::open("/dev/urandom").map_err(io_err("cannot open", Path::new("/dev/urandom")))?;
        Ok(Shared {
            state: Mutex::new(State {
                seq: 0,
                entries: BTreeMap::new(),
                by_id: HashMap::new(),
                by_key: HashMap::new(),
                waiting_on: HashMap::new(),
                conns: HashMap::new(),
                stopped: false,
                last_activity: Instant::now(),
            }),
            timer: Condvar::new(),
            limits,
            live: AtomicUsize::new(0),
            next_conn: AtomicU64::new(1),
            refusals: AtomicU64::new(0),
            random: Mutex::new(random),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn idle_for(&self) -> Duration {
        let st = self.lock();
        if st.conns.is_empty() && st.entries.is_empty() && self.live.load(Ordering::SeqCst) == 0 {
            st.last_activity.elapsed()
        } else {
            Duration::ZERO
        }
    }

    fn stop(&self) {
        let mut st = self.lock();
        st.stopped = true;
        for c in st.conns.values() {
            c.outbox.abort();
            let _ = c.stream.shutdown(Shutdown::Both);
        }
        self.timer.notify_all();
    }

    fn log_refusal(&self, why: &str) {
        let n = self.refusals.fetch_add(1, Ordering::Relaxed);
        // A hostile peer reconnecting in a loop must not fill the log.
        if n < 20 || n.is_power_of_two() {
            eprintln!("portcullis broker: refused a connection ({} so far): {why}", n + 1);
        }
    }

    fn accept(self: Arc<Self>, stream: UnixStream) {
        let _ = stream.set_nonblocking(false);
        if self.live.fetch_add(1, Ordering::SeqCst) >= self.limits.max_conns {
            self.live.fetch_sub(1, Ordering::SeqCst);
            let e = FromBroker::Error(super::protocol::ErrorLine {
                code: "busy".into(),
                message: format!("the broker has {} connections open; try again later", self.limits.max_conns),
                req: None,
            });
            write_line(&stream, &e.encode());
            self.log_refusal("too many connections");
            return;
        }
        let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
        let me = self.clone();
        let spawned = std::thread::Builder::new().name("broker-conn".into()).spawn(move || {
            let _live = Live(&me.live);
            me.serve(id, stream);
        });
        if spawned.is_err() {
            self.live.fetch_sub(1, Ordering::SeqCst);
            eprintln!("portcullis broker: cannot start a connection thread");
        }
    }

    fn serve(&self, id: u64, stream: UnixStream) {
        if let Err(why) = super::peer::check(&stream) {
            let e = FromBroker::Error(super::protocol::ErrorLine {
                code: "refused".into(),
                message: format!("refused: {why}; only processes of this user outside any sandbox may use the broker"),
                req: None,
            });
            write_line(&stream, &e.encode());
            self.log_refusal(&why);
            return;
        }
        let (Ok(write_half), Ok(control)) = (stream.try_clone(), stream.try_clone()) else { return };
        // A peer that stops reading must not hold a writer thread forever.
        let _ = write_half.set_write_timeout(Some(Duration::from_secs(10)));
        let outbox = Arc::new(Outbox::new(self.limits.outbox));
        {
            let mut st = self.lock();
            if st.stopped {
                return;
            }
            st.last_activity = Instant::now();
            st.conns
                .insert(id, Conn { outbox: outbox.clone(), stream: control, subscribed: false, owned: 0, waiting: 0 });
        }
        let writer = {
            let outbox = outbox.clone();
            std::thread::Builder::new().name("broker-write".into()).spawn(move || {
                let mut w = &write_half;
                while let Some(line) = outbox.pop() {
                    if w.write_all(line.as_bytes()).is_err() {
                        break;
                    }
                }
                outbox.abort();
                let _ = write_half.shutdown(Shutdown::Both);
            })
        };
        if writer.is_ok() {
            let mut reader = BufReader::with_capacity(16 << 10, &stream);
            let mut buf = Vec::with_capacity(1024);
            loop {
                match read_line(&mut reader, &mut buf, MAX_LINE) {
                    Ok(Line::Line) => self.handle(id, &outbox, &buf),
                    Ok(Line::TooLong) => {
                        outbox.push(FromBroker::error(&ProtoError::TooLong, None).encode());
                        break;
                    }
                    Ok(Line::Eof) | Err(_) => break,
                }
            }
        }
        self.disconnect(id);
        outbox.close();
        if let Ok(w) = writer {
            let _ = w.join();
        }
    }

    fn handle(&self, conn: u64, outbox: &Outbox, line: &[u8]) {
        let refuse = |e: ProtoError, req: Option<u64>| {
            outbox.wait_room();
            self.reply(conn, FromBroker::error(&e, req));
        };
        let msg = match ToBroker::parse(line) {
            Ok(m) => m,
            Err(e) => return refuse(e, req_of(line)),
        };
        match msg {
            ToBroker::Submit(s) => {
                if let Err(e) = s.validate() {
                    return refuse(e, Some(s.req));
                }
                // Masking is the costly part of a submit: done before taking the lock.
                let shown = shown(&s);
                outbox.wait_room();
                self.submit(&mut self.lock(), conn, s, shown);
            }
            ToBroker::Answer(a) => {
                if let Err(e) = a.validate() {
                    return refuse(e, None);
                }
                outbox.wait_room();
                self.answer(&mut self.lock(), conn, a);
            }
            ToBroker::Cancel(c) => {
                outbox.wait_room();
                self.cancel(&mut self.lock(), conn, c.req);
            }
            ToBroker::List | ToBroker::Subscribe => {
                outbox.wait_room();
                let mut st = self.lock();
                if msg == ToBroker::Subscribe {
                    if let Some(c) = st.conns.get_mut(&conn) {
                        c.subscribed = true;
                    }
                }
                let requests = snapshot(&st);
                send(&mut st, conn, FromBroker::Pending(Pending { count: requests.len() }));
                for request in requests {
                    send(&mut st, conn, FromBroker::Request(Listed { request }));
                }
            }
            ToBroker::Ping => {
                outbox.wait_room();
                let mut st = self.lock();
                let pending = st.entries.len();
                let pong = Pong { pid: std::process::id(), version: env!("CARGO_PKG_VERSION").into(), pending };
                send(&mut st, conn, FromBroker::Pong(pong));
            }
        }
    }

    fn cancel(&self, st: &mut State, conn: u64, req: u64) {
        let Some(seq) = st.waiting_on.remove(&(conn, req)) else { return };
        if let Some(c) = st.conns.get_mut(&conn) {
            c.waiting = c.waiting.saturating_sub(1);
        }
        let empty = st.entries.get_mut(&seq).is_some_and(|e| {
            e.waiters.retain(|w| !(w.conn == conn && w.req == req));
            e.waiters.is_empty()
        });
        if empty {
            self.resolve(st, seq, false, Scope::Once, "cancelled", Some("withdrawn by the supervisor"));
        }
    }

    fn reply(&self, conn: u64, msg: FromBroker) {
        let mut st = self.lock();
        send(&mut st, conn, msg);
    }

    fn submit(&self, st: &mut State, conn: u64, s: Submit, mut shown: View) {
        let now = Instant::now();
        let deny = |st: &mut State, reason: String| {
            let d = Decided {
                req: s.req,
                id: None,
                allow: false,
                scope: Scope::Once,
                by: "broker".into(),
                reason: Some(reason),
                latency_ms: 0,
            };
            send(st, conn, FromBroker::Decided(d));
        };
        if st.waiting_on.contains_key(&(conn, s.req)) {
            let e = super::protocol::ErrorLine {
                code: "duplicate-req".into(),
                message: format!("req {} is already pending on this connection", s.req),
                req: Some(s.req),
            };
            send(st, conn, FromBroker::Error(e));
            return;
        }
        let Some(c) = st.conns.get(&conn) else { return };
        if c.waiting >= self.limits.waiters_per_conn {
            let n = self.limits.waiters_per_conn;
            return deny(st, format!("more than {n} requests from this supervisor are waiting: denied without asking"));
        }
        let owned = c.owned;
        let subscribers = st.conns.values().filter(|c| c.subscribed).count();
        let key = (s.target.len() <= MAX_KEY_TARGET && s.detail.len() <= MAX_KEY_TARGET)
            .then(|| (conn, s.session.clone(), s.kind.clone(), s.target.clone(), s.detail.clone()));
        if let Some(seq) = key.as_ref().and_then(|k| st.by_key.get(k)).copied() {
            let (position, of) = position(st, seq);
            if let Some(e) = st.entries.get_mut(&seq) {
                e.waiters.push(Waiter { conn, req: s.req, since: now });
                let q = Queued { req: s.req, id: e.id.clone(), position, of, coalesced: true, subscribers };
                st.waiting_on.insert((conn, s.req), seq);
                if let Some(c) = st.conns.get_mut(&conn) {
                    c.waiting += 1;
                }
                send(st, conn, FromBroker::Queued(q));
                return;
            }
        }
        if owned >= self.limits.per_conn {
            let n = self.limits.per_conn;
            return deny(
                st,
                format!("this supervisor already has {n} distinct requests pending: denied without asking"),
            );
        }
        if st.entries.len() >= self.limits.total {
            let n = self.limits.total;
            return deny(st, format!("the broker's queue is full ({n} pending): denied without asking"));
        }
        let id = self.new_id(st);
        let timeout = Duration::from_millis(s.timeout_ms);
        st.seq += 1;
        let seq = st.seq;
        shown.id = id.clone();
        let entry = Entry {
            id: id.clone(),
            owner: conn,
            key: key.clone(),
            shown,
            created: now,
            deadline: now + timeout,
            waiters: vec![Waiter { conn, req: s.req, since: now }],
        };
        st.entries.insert(seq, entry);
        st.by_id.insert(id.clone(), seq);
        if let Some(k) = key {
            st.by_key.insert(k, seq);
        }
        st.waiting_on.insert((conn, s.req), seq);
        if let Some(c) = st.conns.get_mut(&conn) {
            c.owned += 1;
            c.waiting += 1;
        }
        let of = st.entries.len();
        let q = Queued { req: s.req, id, position: of, coalesced: false, of, subscribers };
        send(st, conn, FromBroker::Queued(q));
        if let Some(e) = st.entries.get(&seq) {
            let added = FromBroker::Added(Added { request: view(e, of, of, now) }).encode();
            broadcast(st, &added);
        }
        self.timer.notify_all();
    }

    fn answer(&self, st: &mut State, conn: u64, a: Answer) {
        let Some(seq) = st.by_id.get(&a.id).copied() else {
            let shown: String = a.id.chars().take(16).collect();
            let e = super::protocol::ErrorLine {
                code: "unknown-id".into(),
                message: format!("no pending request {shown:?} (answered, timed out, or withdrawn already?)"),
                req: None,
            };
            send(st, conn, FromBroker::Error(e));
            return;
        };
        self.resolve(st, seq, a.allow, a.scope, &a.by, None);
        send(st, conn, FromBroker::Answered(Answered { id: a.id }));
    }

    /// Removes the entry, tells each waiting supervisor, then every subscriber.
    fn resolve(&self, st: &mut State, seq: u64, allow: bool, scope: Scope, by: &str, reason: Option<&str>) {
        let Some(e) = st.entries.remove(&seq) else { return };
        st.by_id.remove(&e.id);
        if let Some(k) = &e.key {
            st.by_key.remove(k);
        }
        if let Some(c) = st.conns.get_mut(&e.owner) {
            c.owned = c.owned.saturating_sub(1);
        }
        for w in &e.waiters {
            st.waiting_on.remove(&(w.conn, w.req));
            if let Some(c) = st.conns.get_mut(&w.conn) {
                c.waiting = c.waiting.saturating_sub(1);
            }
            let d = Decided {
                req: w.req,
                id: Some(e.id.clone()),
                allow,
                scope,
                by: by.into(),
                reason: reason.map(String::from),
                latency_ms: w.since.elapsed().as_millis() as u64,
            };
            send(st, w.conn, FromBroker::Decided(d));
        }
        let r = Resolved { id: e.id.clone(), allow, scope, by: by.into(), reason: reason.map(String::from) };
        broadcast(st, &FromBroker::Resolved(r).encode());
    }

    fn disconnect(&self, conn: u64) {
        let mut st = self.lock();
        st.conns.remove(&conn);
        st.last_activity = Instant::now();
        st.waiting_on.retain(|(c, _), _| *c != conn);
        let gone: Vec<u64> = st.entries.iter().filter(|(_, e)| e.owner == conn).map(|(s, _)| *s).collect();
        for seq in gone {
            self.resolve(&mut st, seq, false, Scope::Once, "gone", Some("the supervisor disconnected"));
        }
    }

    /// Eight hex digits from /dev/urandom, unique among pending requests.
    fn new_id(&self, st: &State) -> String {
        let mut f = self.random.lock().unwrap_or_else(|p| p.into_inner());
        let mut fallback = st.seq as u32;
        loop {
            let mut b = [0u8; 4];
            if f.read_exact(&mut b).is_err() {
                // /dev/urandom does not fail once open; a counter keeps ids unique if it ever does.
                fallback = fallback.wrapping_add(1);
                b = (fallback ^ 0x5a5a_5a5a).to_be_bytes();
            }
            let id = format!("{:08x}", u32::from_be_bytes(b));
            if !st.by_id.contains_key(&id) {
                return id;
            }
        }
    }

    fn expire_loop(&self) {
        let mut st = self.lock();
        loop {
            if st.stopped {
                return;
            }
            let now = Instant::now();
            let expired: Vec<u64> = st.entries.iter().filter(|(_, e)| e.deadline <= now).map(|(s, _)| *s).collect();
            for seq in expired {
                let secs = st.entries.get(&seq).map_or(0, |e| e.shown.timeout_ms.div_ceil(1000));
                let reason = format!("nobody answered within {secs} s");
                self.resolve(&mut st, seq, false, Scope::Once, "timeout", Some(&reason));
            }
            let next = st.entries.values().map(|e| e.deadline).min();
            let wait =
                next.map_or(Duration::from_secs(1), |d| d.saturating_duration_since(now)).min(Duration::from_secs(1));
            st = self.timer.wait_timeout(st, wait.max(Duration::from_millis(1))).unwrap_or_else(|p| p.into_inner()).0;
        }
    }
}

/// Queues `msg` for `conn`; a connection too slow to take it is dropped.
fn send(st: &mut State, conn: u64, msg: FromBroker) {
    let line = msg.encode();
    if let Some(c) = st.conns.get(&conn) {
        if !c.outbox.push(line) {
            c.outbox.abort();
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }
}

fn broadcast(st: &mut State, line: &str) {
    for c in st.conns.values().filter(|c| c.subscribed) {
        if !c.outbox.push(line.to_string()) {
            c.outbox.abort();
            let _ = c.stream.shutdown(Shutdown::Both);
        }
    }
}

fn position(st: &State, seq: u64) -> (usize, usize) {
    (st.entries.range(..seq).count() + 1, st.entries.len())
}

fn snapshot(st: &State) -> Vec<View> {
    let now = Instant::now();
    let of = st.entries.len();
    st.entries.values().enumerate().map(|(i, e)| view(e, i + 1, of, now)).collect()
}

fn view(e: &Entry, position: usize, of: usize, now: Instant) -> View {
    View {
        position,
        of,
        age_ms: now.saturating_duration_since(e.created).as_millis() as u64,
        left_ms: e.deadline.saturating_duration_since(now).as_millis() as u64,
        waiters: e.waiters.len(),
        ..e.shown.clone()
    }
}

/// The request as front ends will see it: masked and cut.
fn shown(s: &Submit) -> View {
    View {
        id: String::new(),
        session: mask::text(&s.session, mask::MAX_FIELD),
        profile: mask::text(&s.profile, mask::MAX_FIELD),
        argv: mask::argv(&s.argv),
        pid: s.pid,
        kind: s.kind.clone(),
        category: s.category.clone(),
        target: mask::text(&s.target, mask::MAX_TARGET),
        detail: mask::text(&s.detail, mask::MAX_DETAIL),
        rule: mask::text(&s.rule, mask::MAX_FIELD),
        position: 0,
        of: 0,
        age_ms: 0,
        timeout_ms: s.timeout_ms,
        left_ms: s.timeout_ms,
        waiters: 1,
        warning: (s.category == "credential").then(|| CREDENTIAL_WARNING.to_string()),
    }
}

/// The `req` of a line that did not parse, so the submitter can match the error.
fn req_of(line: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    (v.get("type")?.as_str()? == "submit").then(|| v.get("req")?.as_u64()).flatten()
}

/// `portcullis broker --foreground`: serve here until stopped.
pub fn serve_foreground(dir: PathBuf) -> Result<i32, ServeError> {
    // A broker started by a supervisor inherits its blocked signals (run
    // blocks SIGTERM, SIGINT, SIGHUP... to forward them): unblock them before
    // any thread starts, or `kill PID` would never stop the broker.
    let _ = nix::sys::signal::SigSet::empty().thread_set_mask();
    let detached = std::env::var_os(DETACHED_ENV).is_some_and(|v| v == "1");
    if detached {
        // Out of the starting supervisor's session: its terminal's hangup
        // and its process group's signals are not ours.
        let _ = nix::unistd::setsid();
    }
    let opts = Options { idle_exit: detached.then_some(IDLE_EXIT), ..Options::new(dir) };
    match bind(opts)? {
        Bound::Running { pid } => {
            eprintln!("portcullis broker: already running (pid {pid})");
            Ok(0)
        }
        Bound::Serving(b) => {
            eprintln!("portcullis broker: listening on {} (pid {})", b.socket().display(), std::process::id());
            let why = b.run()?;
            eprintln!("portcullis broker: stopping: {why}");
            Ok(0)
        }
    }
}
