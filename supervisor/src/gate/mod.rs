//! The syscall gate: decides the syscalls the approval filter parks
//! (seccomp user notification) with the profile's `ask`/`deny` rules, the
//! grants, and — for `ask` — a person through the broker.
//!
//! Threads:
//! - the *server* receives the listener fd from the exec stage, then reads
//!   each notification, resolves its arguments from the caller's memory
//!   (re-checking the notification id after every read) and decides;
//! - the *hands* are one thread confined like the sandbox (no capabilities,
//!   no_new_privs, the same Landlock ruleset, its own umask): every approved
//!   path operation and connect is performed there, then the result is
//!   injected (SECCOMP_IOCTL_NOTIF_ADDFD with SEND for a new fd). The kernel
//!   never re-reads memory the sandbox could have changed after the check;
//! - one thread per distinct pending `ask` (coalesced, capped), blocking on
//!   the broker; other notifications keep flowing meanwhile.
//!
//! `execve` and raw syscalls asked by name are answered with CONTINUE: for
//! execve the supervisor cannot run the program itself, so the Landlock
//! exec allowlist is what a raced path argument could reach (README).

pub mod bench;
pub mod hooks;
pub mod ops;
pub mod path;

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use audit::Kind;
use policy::ask::{Access, Grant, GrantScope, Grants, Outcome};
use serde_json::json;

use crate::broker::{AskAnswer, AskRequest, Scope};
use crate::evidence::Evidence;
use crate::exit::Failure;
use crate::sys::notify::{self, Notif};

/// Distinct asks one sandbox may have waiting; beyond, new ones are denied.
pub const MAX_PENDING: usize = 64;
/// Threads acting apart (blocking FIFO opens, connects) at once; past it,
/// EAGAIN. Each parked call is a sandbox thread, so max_procs bounds them
/// too, but the supervisor's threads count against its user's limits.
const MAX_APART: usize = 256;
/// Denials of one target recorded in the audit log before the rest are counted.
pub const VERDICT_RECORDS_PER_TARGET: u32 = 3;

/// Who answers an ask: the broker client (or a stand-in in tests).
pub trait Asker: Send + Sync {
    fn ask(&self, req: &AskRequest) -> AskAnswer;
}

impl Asker for crate::broker::Client {
    fn ask(&self, req: &AskRequest) -> AskAnswer {
        crate::broker::Client::ask(self, req)
    }
}

/// The broker client (started on demand; tty prompt or deny without one).
pub fn default_asker() -> Box<dyn Asker> {
    Box::new(crate::broker::Client::new())
}

/// What `prepare` made for the gate, before fork.
pub struct Setup {
    /// Our end of the socket the exec stage sends the listener on.
    pub sock: OwnedFd,
    /// The sandbox's Landlock ruleset, for the hands.
    pub ruleset: Option<OwnedFd>,
    /// The Landlock ruleset of the threads that connect for the sandbox
    /// (sandbox::landlock::gate_net).
    pub net: Option<OwnedFd>,
}

/// The context of one sandbox.
pub struct Context {
    pub plan: policy::ask::GatePlan,
    pub profile: String,
    pub session: String,
    pub argv: Vec<String>,
    pub grants_path: std::path::PathBuf,
    pub grants: Grants,
    pub asker: Box<dyn Asker>,
    /// The profile allows AF_UNIX sockets (`[ipc] unix`).
    pub unix_sockets: bool,
    /// Denials recorded per target before the rest are only counted
    /// ([`VERDICT_RECORDS_PER_TARGET`]; the benchmark records every one).
    pub records_per_target: u32,
    /// TCP ports the sandbox may connect to itself (its Landlock rules).
    /// The gate's connect threads can reach more (ports named by `ask`),
    /// so a connect no rule or grant decided goes out only to these.
    pub connect_ports: Vec<u16>,
    /// The run's private `{tmp}` (canonical), which the supervisor removes
    /// when the run ends: no directory is moved into it from elsewhere.
    pub tmp: Option<String>,
}

/// How a parked syscall is answered.
pub enum Reply {
    /// Return this value.
    Value(i64),
    /// Fail with this errno.
    Errno(i32),
    /// Let the kernel run it as asked.
    Continue,
    /// Install this fd in the caller and return its number.
    Fd { fd: OwnedFd, cloexec: bool },
    /// Another thread answers (an operation that may block, like opening a FIFO).
    Deferred,
}

/// The hands: one confined thread running jobs in order.
struct Hands {
    tx: Mutex<mpsc::Sender<Box<dyn FnOnce() + Send>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Disconnected when the thread's work is over.
    gone: Mutex<Option<mpsc::Receiver<()>>>,
}

impl Hands {
    /// Ends the thread's queue and joins it once it has ended: a run whose
    /// threads are all gone can exit before its last records are durable
    /// (sys::finish). Waits a little at most; a job stuck in the kernel
    /// keeps the thread (and the run finishes the slow way). Jobs sent
    /// after this are dropped.
    fn stop(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            *tx = mpsc::channel().0;
        }
        let Some(thread) = self.thread.lock().ok().and_then(|mut t| t.take()) else { return };
        let gone = self.gone.lock().ok().and_then(|mut g| g.take());
        let over = gone.is_some_and(|g| {
            g.recv_timeout(Duration::from_millis(100)).is_err_and(|e| e == mpsc::RecvTimeoutError::Disconnected)
        });
        if over || thread.is_finished() {
            let _ = thread.join();
        }
    }
}

impl Drop for Hands {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Hands whose thread is confining itself; [`PendingHands::ready`] waits for it.
struct PendingHands {
    tx: mpsc::Sender<Box<dyn FnOnce() + Send>>,
    ready: mpsc::Receiver<std::io::Result<()>>,
    thread: std::thread::JoinHandle<()>,
    gone: mpsc::Receiver<()>,
}

impl PendingHands {
    fn ready(self) -> Result<Hands, Failure> {
        match self.ready.recv() {
            Ok(Ok(())) => Ok(Hands {
                tx: Mutex::new(self.tx),
                thread: Mutex::new(Some(self.thread)),
                gone: Mutex::new(Some(self.gone)),
            }),
            Ok(Err(e)) => Err(Failure::setup(format!(
                "gate: cannot confine the thread that acts for the sandbox: {e}; refusing to run"
            ))),
            Err(_) => Err(Failure::setup("gate: the acting thread died")),
        }
    }
}

impl Hands {
    /// Starts the thread; it confines itself while the caller goes on.
    fn spawn(ruleset: Option<OwnedFd>) -> Result<PendingHands, Failure> {
        let (tx, rx) = mpsc::channel::<Box<dyn FnOnce() + Send>>();
        let (ready_tx, ready_rx) = mpsc::sync_channel(1);
        let (gone_tx, gone) = mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("gate-hands".into())
            .spawn(move || {
                // Dropped when this returns: Hands::stop joins at once.
                let _gone = gone_tx;
                let confined = notify::confine_thread_but_landlock();
                let ok = confined.is_ok();
                let _ = ready_tx.send(confined);
                if !ok {
                    return;
                }
                // Landlock comes with the first job, not now: the sandbox's
                // init adds its private /proc to the ruleset after mounting
                // it, which may be after this thread starts, and a domain
                // never sees rules added later. The first job comes from a
                // notification, so from the command, which init forks after
                // that. If it fails, no job runs (each is answered EIO).
                let mut rx = rx.into_iter();
                let Some(first) = rx.next() else { return };
                let restricted = notify::restrict_thread(ruleset.as_ref());
                drop(ruleset);
                if let Err(e) = restricted {
                    eprintln!("portcullis: gate: cannot confine the thread that acts for the sandbox: {e}; refusing every operation it would perform");
                    return;
                }
                first();
                for job in rx {
                    job();
                }
            })
            .map_err(|e| Failure::setup(format!("gate: cannot start a thread: {e}")))?;
        Ok(PendingHands { tx, ready: ready_rx, thread, gone })
    }

    /// Runs `f` confined and waits for its result.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        let (rtx, rrx) = mpsc::sync_channel(1);
        let job: Box<dyn FnOnce() + Send> = Box::new(move || {
            let _ = rtx.send(f());
        });
        self.tx.lock().ok()?.send(job).ok()?;
        rrx.recv().ok()
    }
}

/// An operation decided on but not yet performed.
pub struct Op {
    pub access: Vec<Access>,
    /// Canonical targets the rules are matched on; `moves` as in policy::ask::Subject.
    pub targets: Vec<(String, bool)>,
    /// More names the rules are matched on, for the target of that index:
    /// its path as if each git directory it is or lies in were a `.git`
    /// (gate::path::git_aliases). Never shown, never keyed.
    pub aliases: Vec<(usize, String)>,
    pub subject: Option<Subject>,
    /// `open-write`, `rename`, `exec`, `connect`, ...
    pub kind: &'static str,
    /// The syscall with its arguments, for the prompt and the log.
    pub detail: String,
    /// Performs it (in the hands where it touches the filesystem or network).
    pub perform: Box<dyn FnOnce(&Shared) -> Reply + Send>,
}

/// Non-path subjects.
pub enum Subject {
    Addr(std::net::IpAddr, u16),
    /// A syscall asked by name, and its register arguments.
    Syscall(String, [u64; 6]),
}

impl Op {
    fn key(&self) -> String {
        match &self.subject {
            Some(Subject::Addr(ip, port)) => std::net::SocketAddr::new(*ip, *port).to_string(),
            Some(Subject::Syscall(s, _)) => s.clone(),
            None => self.targets.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>().join(" -> "),
        }
    }

    /// Which parked calls one answer covers: the same operation on the
    /// same target with the same flags or arguments, i.e. what the person
    /// was shown. Who allowed an open did not allow an unlink, an O_RDWR
    /// open an O_WRONLY one, nor `kill(pid, 0)` a `kill(pid, SIGUSR1)`.
    fn question(&self) -> String {
        let access = self.access.iter().map(|a| a.as_str()).collect::<Vec<_>>().join("+");
        format!("{}:{access}:{}:{}", self.kind, self.key(), self.detail())
    }

    /// What the person and the log are shown.
    fn detail(&self) -> String {
        match &self.subject {
            Some(Subject::Syscall(name, a)) if self.detail.is_empty() => {
                format!("{name}({:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x})", a[0], a[1], a[2], a[3], a[4], a[5])
            }
            _ => self.detail.clone(),
        }
    }
}

/// One question out to a person, and the calls parked on its answer.
struct Pending {
    req: AskRequest,
    asked: std::time::Instant,
    waiting: Vec<(Notif, Op)>,
}

/// State shared by the server and the ask threads.
pub struct Shared {
    ctx: Context,
    /// Syscalls asked by name, by number (looked up on every notification).
    syscall_names: HashMap<i64, String>,
    listener: OwnedFd,
    hands: Hands,
    /// The sandbox's ruleset, for threads confined apart from the hands.
    ruleset: Option<OwnedFd>,
    /// The connect threads' ruleset (Setup::net).
    net: Option<OwnedFd>,
    /// Threads acting apart now (at most MAX_APART).
    apart: Arc<std::sync::atomic::AtomicUsize>,
    grants: Mutex<Grants>,
    evidence: Arc<Journal>,
    /// Pending asks by key: the question and the notifications waiting on
    /// its one answer.
    pending: Mutex<HashMap<String, Pending>>,
    /// Denials per target (audit rate limit).
    denials: Mutex<Denials>,
    /// Taken by whoever closes the gate out ([`Shared::close_out`]): the
    /// server once the sandbox is gone, or the run when processes outlived
    /// the command. Never both: a second close-out read the flood's count
    /// while the first was still writing (asks neither recorded nor counted).
    closing: std::sync::atomic::AtomicBool,
}

impl Drop for Shared {
    /// A gate dropped without `finish` (an error path) still commits its records.
    fn drop(&mut self) {
        let _ = self.evidence.close();
    }
}

impl Shared {
    /// Runs `f` in the confined hands thread.
    pub fn hands<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Option<T> {
        self.hands.run(f)
    }

    /// Runs `f` in a new thread confined like the hands, which answers
    /// notification `id` itself: for an operation that may block (opening
    /// a FIFO waits for its other end) and must not stall every other one.
    pub fn hands_apart(&self, id: u64, f: impl FnOnce() -> Reply + Send + 'static) -> Reply {
        self.apart(id, self.ruleset.as_ref(), f)
    }

    /// Runs `f` (a connect) in a new thread confined like the hands but
    /// under the connect threads' Landlock domain (TCP ports only: the
    /// sandbox's own and the ones it may be asked about), which answers
    /// notification `id` itself. A connect can wait minutes for a host
    /// that drops packets; the hands keep serving everything else.
    pub fn connect_apart(&self, id: u64, f: impl FnOnce() -> Reply + Send + 'static) -> Reply {
        self.apart(id, self.net.as_ref(), f)
    }

    fn apart(&self, id: u64, ruleset: Option<&OwnedFd>, f: impl FnOnce() -> Reply + Send + 'static) -> Reply {
        use std::sync::atomic::Ordering;
        let (Ok(listener), Ok(ruleset)) = (self.listener.try_clone(), ruleset.map(|r| r.try_clone()).transpose())
        else {
            return Reply::Errno(libc::EMFILE);
        };
        if self.apart.fetch_add(1, Ordering::SeqCst) >= MAX_APART {
            self.apart.fetch_sub(1, Ordering::SeqCst);
            return Reply::Errno(libc::EAGAIN);
        }
        let count = Arc::clone(&self.apart);
        let spawned = std::thread::Builder::new().name("gate-hands-apart".into()).spawn(move || {
            /// Counts the thread out however it ends.
            struct Out(Arc<std::sync::atomic::AtomicUsize>);
            impl Drop for Out {
                fn drop(&mut self) {
                    self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            let _out = Out(count);
            let reply = match notify::confine_thread(ruleset.as_ref()) {
                Ok(()) => f(),
                Err(_) => Reply::Errno(libc::EPERM),
            };
            drop(ruleset);
            let l = listener.as_fd();
            let _ = match reply {
                Reply::Value(v) => notify::respond(l, id, v, 0, false),
                Reply::Errno(e) => notify::respond(l, id, 0, e, false),
                Reply::Continue | Reply::Deferred => notify::respond(l, id, 0, libc::EIO, false),
                Reply::Fd { fd, cloexec } => match notify::addfd_send(l, id, fd.as_fd(), cloexec) {
                    Ok(_) => Ok(()),
                    Err(e) => notify::respond(l, id, 0, e.raw_os_error().unwrap_or(libc::EIO), false),
                },
            };
        });
        match spawned {
            Ok(_) => Reply::Deferred,
            Err(_) => {
                self.apart.fetch_sub(1, Ordering::SeqCst);
                Reply::Errno(libc::EAGAIN)
            }
        }
    }

    fn send(&self, n: &Notif, reply: Reply) {
        let l = self.listener.as_fd();
        // ENOENT: the caller is gone (killed while parked); nothing to answer.
        let _ = match reply {
            Reply::Value(v) => notify::respond(l, n.id, v, 0, false),
            Reply::Errno(e) => notify::respond(l, n.id, 0, e, false),
            Reply::Continue => notify::respond(l, n.id, 0, 0, true),
            Reply::Fd { fd, cloexec } => match notify::addfd_send(l, n.id, fd.as_fd(), cloexec) {
                Ok(_) => Ok(()),
                Err(e) => notify::respond(l, n.id, 0, e.raw_os_error().unwrap_or(libc::EIO), false),
            },
            Reply::Deferred => Ok(()),
        };
    }

    /// The engine's decision for every (access, target) of `op`; the strictest wins.
    fn decide(&self, op: &Op) -> policy::ask::Decision {
        let grants = self.grants.lock().unwrap_or_else(|p| p.into_inner());
        let mut worst: Option<policy::ask::Decision> = None;
        let mut consider = |d: policy::ask::Decision| {
            let rank = |o: Outcome| match o {
                Outcome::Allow => 0,
                Outcome::Ask => 1,
                Outcome::Deny => 2,
            };
            if worst.as_ref().is_none_or(|w| rank(d.outcome) > rank(w.outcome)) {
                worst = Some(d);
            }
        };
        for &access in &op.access {
            match &op.subject {
                Some(Subject::Addr(ip, port)) => {
                    let subject = policy::ask::Subject::Addr { ip: *ip, port: *port };
                    let d = policy::ask::decide(&self.ctx.plan, &grants, access, &subject);
                    // Not decided by a rule or a grant: only what the
                    // sandbox could reach itself (`10.0.0.1:5432` asked
                    // must not open 5432 on every other host).
                    let own = self.ctx.connect_ports.contains(port);
                    match d.outcome {
                        Outcome::Allow if d.grant.is_none() && !own => consider(policy::ask::Decision {
                            outcome: Outcome::Deny,
                            reason: format!(
                                "TCP port {port} is not the sandbox's: only an ask for another address names it"
                            ),
                            ..d
                        }),
                        _ => consider(d),
                    }
                }
                Some(Subject::Syscall(s, _)) => {
                    consider(policy::ask::decide(&self.ctx.plan, &grants, access, &policy::ask::Subject::Syscall(s)))
                }
                None => {
                    // A grant answers for what it was given on one name
                    // (a file written, a directory made). Putting a tree or
                    // another name at that name (a directory renamed or
                    // swapped in, a link, a symlink, a node) is asked
                    // again: with a grant for making `.vscode`, the sandbox
                    // could otherwise move in a `.vscode` it built unasked.
                    // A file renamed over a file is a write of it and keeps
                    // its grant (atomic saves). A deny grant still holds.
                    let names = matches!(op.kind, "rename-tree" | "link" | "link-symlink" | "symlink" | "mknod");
                    if let Some(r) = self.brings_a_symlink(op) {
                        consider(policy::ask::Decision {
                            outcome: Outcome::Deny,
                            category: Some(r.category),
                            timeout_ms: 0,
                            reason: r.describe().replacen("deny.write", "deny.symlinks", 1),
                            grant: None,
                        });
                    }
                    let no_grants = policy::ask::Grants::default();
                    // A git directory under another name is decided as the
                    // `.git` it stands for, beside its own name; no grant
                    // answers for such a name (a grant on `/ws/.git/x` is
                    // not one on every git directory's `x`).
                    let aliases = op.aliases.iter().filter_map(|(i, a)| Some((a, op.targets.get(*i)?.1, true)));
                    let named = op.targets.iter().map(|(t, m)| (t, *m, false));
                    for (t, moves, alias) in named.chain(aliases) {
                        let subject = policy::ask::Subject::Path { path: t, moves };
                        let mut d = policy::ask::decide(
                            &self.ctx.plan,
                            if alias { &no_grants } else { &grants },
                            access,
                            &subject,
                        );
                        // A name that is not UTF-8 was made text lossily
                        // (each bad byte U+FFFD): many names share that text,
                        // so no grant answers for one (see `answered`).
                        let lossy = t.contains(char::REPLACEMENT_CHARACTER);
                        if (names || lossy) && d.outcome == Outcome::Allow && d.grant.is_some() {
                            d = policy::ask::decide(&self.ctx.plan, &no_grants, access, &subject);
                        }
                        consider(d);
                    }
                }
            }
        }
        worst.unwrap_or(policy::ask::Decision {
            outcome: Outcome::Allow,
            category: None,
            timeout_ms: 0,
            reason: "no rule".into(),
            grant: None,
        })
    }

    /// The `[deny] symlinks` rule `op` breaks, if any: it makes or links a
    /// symlink there, or moves a tree (which could hold one) or a symlink
    /// in from elsewhere (or, exchanged, out).
    fn brings_a_symlink(&self, op: &Op) -> Option<&policy::ask::GateRule> {
        let plan = &self.ctx.plan;
        let named = |i: usize| op.targets.get(i).and_then(|(t, _)| policy::ask::no_symlinks_at(plan, t));
        // Also under the names a git directory of another name gives it
        // (gate::path::git_aliases); those only ever add a refusal.
        let zone = |i: usize| {
            let aliases = op.aliases.iter().filter(|(j, _)| *j == i);
            named(i).or_else(|| aliases.map(|(_, a)| a).find_map(|a| policy::ask::no_symlinks_at(plan, a)))
        };
        match op.kind {
            "symlink" | "mknod" => zone(0),
            "link-symlink" => zone(1),
            // A move within one zone, by the names themselves, brings
            // nothing in; any other move touching a zone does.
            "rename-tree" => match (zone(0), zone(1)) {
                (None, None) => None,
                (Some(_), Some(_)) if named(0).is_some() && named(1).is_some() => None,
                (a, b) => a.or(b),
            },
            _ => None,
        }
    }

    fn record_denial(&self, n: &Notif, op: &Op, reason: &str) {
        let key = op.key();
        let record = self.denials.lock().unwrap_or_else(|p| p.into_inner()).note(&key, self.ctx.records_per_target);
        if !record {
            return;
        }
        self.evidence.record(
            Kind::Verdict,
            json!({ "verdict": "deny", "op": op.kind, "target": key, "detail": op.detail(), "rule": reason, "pid": n.pid }),
        );
    }

    /// Decides `op` for notification `n` and answers, or parks it for a person.
    fn handle(self: &Arc<Self>, n: Notif, op: Op) {
        let d = self.decide(&op);
        match d.outcome {
            Outcome::Allow => {
                let reply = (op.perform)(self);
                self.send(&n, reply);
            }
            Outcome::Deny => {
                // A denial acts on nothing: answer first, then keep the record.
                self.send(&n, Reply::Errno(deny_errno(&op)));
                self.record_denial(&n, &op, &d.reason);
            }
            Outcome::Ask => self.park(n, op, d),
        }
    }

    fn park(self: &Arc<Self>, n: Notif, op: Op, d: policy::ask::Decision) {
        let key = op.question();
        {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(asked) = pending.get_mut(&key) {
                // The same question is already being asked: share its answer.
                if asked.waiting.len() < MAX_PENDING * 16 {
                    asked.waiting.push((n, op));
                    return;
                }
                drop(pending);
                self.send(&n, Reply::Errno(libc::EAGAIN));
                self.record_denial(&n, &op, "too many identical requests waiting");
                return;
            }
            if pending.len() >= MAX_PENDING {
                drop(pending);
                self.send(&n, Reply::Errno(deny_errno(&op)));
                self.record_denial(&n, &op, "too many requests waiting for an answer");
                return;
            }
            let req = AskRequest {
                session: self.ctx.session.clone(),
                profile: self.ctx.profile.clone(),
                argv: self.ctx.argv.clone(),
                pid: n.pid as i32,
                kind: op.kind.to_string(),
                category: d.category.map_or("write", |c| c.as_str()).to_string(),
                target: op.key(),
                detail: op.detail(),
                rule: d.reason.clone(),
                timeout: Duration::from_millis(d.timeout_ms),
            };
            let access = op.access.clone();
            let asked = std::time::Instant::now();
            pending.insert(key.clone(), Pending { req: req.clone(), asked, waiting: vec![(n, op)] });
            let shared = Arc::clone(self);
            let ask_key = key.clone();
            let spawned = std::thread::Builder::new().name("gate-ask".into()).spawn(move || {
                let answer = shared.ctx.asker.ask(&req);
                shared.answered(&ask_key, &access, answer);
            });
            if spawned.is_err() {
                let waiting = pending.remove(&key).map(|p| p.waiting).unwrap_or_default();
                drop(pending);
                for (n, _) in waiting {
                    self.send(&n, Reply::Errno(libc::EAGAIN));
                }
            }
        }
    }

    /// An answer arrived: log it durably, remember grants, then act.
    fn answered(self: &Arc<Self>, key: &str, access: &[Access], answer: AskAnswer) {
        // Gone: the run ended first, and `finish` recorded the question.
        let Some(Pending { req, waiting, .. }) = self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(key)
        else {
            return;
        };
        let req = &req;
        let mut allow = answer.allow;
        // A target shown lossily stands for many names: the answer is for
        // this request only, whatever scope was chosen.
        let lossy = req.target.contains(char::REPLACEMENT_CHARACTER);
        let grant_id = match answer.scope {
            Scope::Once => None,
            Scope::Session | Scope::Always if lossy => None,
            Scope::Session | Scope::Always => Some(crate::grants::new_id()),
        };
        let scope_name = match answer.scope {
            Scope::Once => "once",
            _ if grant_id.is_none() => "once",
            Scope::Session => "session",
            Scope::Always => "always",
        };
        // Log before act: an allowed operation happens only once its answer
        // is durable. A denial acts on nothing; it is group-committed.
        let body = approval_record(req, &answer, scope_name, grant_id.as_deref(), waiting.len());
        let logged = if answer.allow {
            self.evidence.record_durable(Kind::Approval, body)
        } else {
            self.evidence.record(Kind::Approval, body);
            Ok(())
        };
        let durable = logged.is_ok();
        if let Err(f) = logged {
            eprintln!("portcullis: {}; denying the request", f.message);
            allow = false;
        }
        if let (Some(id), true) = (&grant_id, durable) {
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
            for &a in access {
                let grant = Grant {
                    id: id.clone(),
                    profile: self.ctx.profile.clone(),
                    access: a,
                    target: req.target.clone(),
                    allow: answer.allow,
                    scope: if answer.scope == Scope::Always { GrantScope::Always } else { GrantScope::Session },
                    created: now,
                    by: answer.by.clone(),
                };
                self.grants.lock().unwrap_or_else(|p| p.into_inner()).insert(&grant);
                if answer.scope == Scope::Always {
                    if let Err(f) = crate::grants::persist(&self.ctx.grants_path, grant) {
                        eprintln!("portcullis: could not save the grant: {}", f.message);
                    }
                }
            }
        }
        for (n, op) in waiting {
            if allow {
                // A caller that died while a person decided gets nothing
                // done on its behalf (its answer could not be delivered).
                if !crate::sys::notify::id_valid(self.listener.as_fd(), n.id) {
                    continue;
                }
                let reply = (op.perform)(self);
                self.send(&n, reply);
            } else {
                self.send(&n, Reply::Errno(deny_errno(&op)));
            }
        }
    }
}

/// The body of an `approval` record: the question and its answer.
fn approval_record(
    req: &AskRequest,
    answer: &AskAnswer,
    scope: &str,
    grant: Option<&str>,
    coalesced: usize,
) -> serde_json::Value {
    json!({
        "request": {
            "kind": req.kind, "category": req.category, "target": req.target, "detail": req.detail,
            "rule": req.rule, "pid": req.pid, "timeout_ms": req.timeout.as_millis() as u64,
        },
        "decision": if answer.allow { "allow" } else { "deny" },
        "scope": scope,
        "by": answer.by,
        "reason": answer.reason,
        "latency_ms": answer.latency.as_millis() as u64,
        "grant": grant,
        "coalesced": coalesced,
    })
}

fn deny_errno(op: &Op) -> i32 {
    match op.subject {
        Some(Subject::Syscall(..)) => libc::EPERM,
        _ => libc::EACCES,
    }
}

/// Rule paths as the kernel resolves them: `/bin/sh` may really be
/// `/usr/bin/dash`, and the gate matches canonical paths. A path that does
/// not exist yet keeps its longest existing ancestor's canonical form.
pub fn canonical_rules(plan: &policy::ask::GatePlan) -> policy::ask::GatePlan {
    let mut out = plan.clone();
    // Rules share ancestors (strict's name the workspace a dozen times):
    // each is resolved once per launch.
    let mut seen = std::collections::HashMap::new();
    // A marker's directories before its first `*` are resolved; the rest
    // (its own name too: a link there is not followed) are names.
    let markers: Vec<String> = plan
        .markers
        .iter()
        .map(|m| match m.find("/*/").or_else(|| m.rfind('/')) {
            Some(i) if i > 0 => canonical_path(std::path::Path::new(&m[..i]), &mut seen) + &m[i..],
            _ => m.clone(),
        })
        .filter(|c| !plan.markers.contains(c))
        .collect();
    out.markers.extend(markers);
    for (rules, into) in [(&plan.rules, &mut out.rules), (&plan.symlinks, &mut out.symlinks)] {
        for r in rules {
            if let policy::ask::Target::Path(p) = &r.target {
                let c = canonical_path(std::path::Path::new(p), &mut seen);
                if c != *p {
                    let mut extra = r.clone();
                    extra.target = policy::ask::Target::Path(c);
                    into.push(extra);
                }
            }
        }
    }
    out
}

fn canonical_path(
    p: &std::path::Path,
    seen: &mut std::collections::HashMap<std::path::PathBuf, Option<std::path::PathBuf>>,
) -> String {
    use std::path::{Component, PathBuf};
    if !p.is_absolute() || !p.components().all(|c| matches!(c, Component::RootDir | Component::Normal(_))) {
        return canonical_path_by_opens(p, seen);
    }
    // From the root down: each name is looked up (without following it)
    // under its parent's resolved form, which holds no link. Only a link
    // is opened and read back; anything else is that form and its name.
    // Most rules name files that do not exist yet under a few directories:
    // one lstat each, where an open and a read of /proc per ancestor tried
    // (as many as three per rule) cost the launch about 0.2 ms here.
    let (mut prefix, mut canon, mut missing) = (PathBuf::from("/"), PathBuf::from("/"), false);
    for name in p.components().filter_map(|c| match c {
        Component::Normal(n) => Some(n),
        _ => None,
    }) {
        if missing {
            canon.push(name);
            continue;
        }
        prefix.push(name);
        let found = match seen.get(&prefix) {
            Some(r) => r.clone(),
            None => {
                let joined = canon.join(name);
                use std::io::ErrorKind::{NotADirectory, NotFound, PermissionDenied};
                // What neither is there nor is refused to us (a resolved
                // form too long to name or to read back: the kernel walks
                // the short path step by step) is left to the opens of the
                // path as written, with a cache of their own.
                let by_opens = || canonical_path_by_opens(p, &mut Default::default());
                let r = match std::fs::symlink_metadata(&joined) {
                    Ok(m) if m.file_type().is_symlink() => match resolved(&joined) {
                        Some(r) => Some(r),
                        None => return by_opens(),
                    },
                    Ok(_) => Some(joined),
                    Err(e) if matches!(e.kind(), NotFound | NotADirectory | PermissionDenied) => None,
                    Err(_) => return by_opens(),
                };
                seen.insert(prefix.clone(), r.clone());
                r
            }
        };
        match found {
            Some(c) => canon = c,
            None => {
                missing = true;
                canon.push(name);
            }
        }
    }
    canon.to_string_lossy().into_owned()
}

/// [`canonical_path`] for a relative path or one with `.` or `..`: the
/// longest prefix that opens, resolved by [`resolved`].
fn canonical_path_by_opens(
    p: &std::path::Path,
    seen: &mut std::collections::HashMap<std::path::PathBuf, Option<std::path::PathBuf>>,
) -> String {
    let mut head = p.to_path_buf();
    let mut tail = Vec::new();
    loop {
        let found = match seen.get(&head) {
            Some(r) => r.clone(),
            None => {
                let r = resolved(&head);
                seen.insert(head.clone(), r.clone());
                r
            }
        };
        if let Some(c) = found {
            let mut full = c;
            for part in tail.iter().rev() {
                full.push(part);
            }
            return full.to_string_lossy().into_owned();
        }
        match (head.file_name().map(|n| n.to_os_string()), head.pop()) {
            (Some(name), true) => tail.push(name),
            _ => return p.to_string_lossy().into_owned(),
        }
    }
}

/// Where the kernel resolves `p`, if it exists: one O_PATH open and the
/// name /proc gives the descriptor (three syscalls, where realpath reads
/// every component as a link: a launch resolves dozens of rules).
fn resolved(p: &std::path::Path) -> Option<std::path::PathBuf> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new().read(true).custom_flags(libc::O_PATH).open(p).ok()?;
    match std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())) {
        Ok(r) if r.is_absolute() => Some(r),
        // No /proc here: the slow way.
        _ => std::fs::canonicalize(p).ok(),
    }
}

/// The running gate.
pub struct Running {
    /// Returns, once the sandbox is gone, why some of the gate's records
    /// could not be written (it closes its log handle itself).
    server: std::thread::JoinHandle<Option<String>>,
    shared: Arc<Mutex<Option<Arc<Shared>>>>,
    /// Closed when the server thread ends.
    done: mpsc::Receiver<()>,
}

/// A gate being set up: [`begin`] it early, [`Starting::arm`] it when the
/// launch is decided, [`Armed::start`] it when the command may exec (or,
/// for a run, once the sandbox first parks a syscall).
pub struct Starting {
    sock: OwnedFd,
    ruleset: Option<OwnedFd>,
    net: Option<OwnedFd>,
    /// The ruleset the acting thread confines itself with, once started.
    hands: Option<OwnedFd>,
}

/// Takes what `prepare` made for the gate.
pub fn begin(setup: Setup) -> Result<Starting, Failure> {
    let ruleset = match &setup.ruleset {
        Some(r) => Some(r.try_clone().map_err(|e| Failure::setup(format!("gate: cannot duplicate the ruleset: {e}")))?),
        None => None,
    };
    Ok(Starting { sock: setup.sock, ruleset, net: setup.net, hands: setup.ruleset })
}

impl Starting {
    /// [`arm`](Self::arm), then [`Armed::start`].
    pub fn start(self, ctx: Context, evidence: Option<Evidence>) -> Result<Running, Failure> {
        self.arm(ctx)?.start(evidence, None)
    }

    /// With its context loaded (what can refuse the launch before its
    /// threads start).
    pub fn arm(self, ctx: Context) -> Result<Armed, Failure> {
        let Starting { sock, ruleset, net, hands } = self;
        Ok(Armed { sock, ruleset, net, hands, ctx })
    }
}

/// A gate whose context is loaded: only its threads are left to start.
pub struct Armed {
    sock: OwnedFd,
    ruleset: Option<OwnedFd>,
    net: Option<OwnedFd>,
    hands: Option<OwnedFd>,
    ctx: Context,
}

impl Armed {
    /// Starts the server, which serves the sandbox's notifications once the
    /// exec stage sends its listener (what the sandbox parks meanwhile
    /// waits in the kernel). `evidence` None records nothing (the
    /// benchmark's "audit off" row) and so refuses every ask: nothing is
    /// acted on unrecorded. `last` runs on the server's thread once the
    /// sandbox is gone and the acting thread has ended, before the run
    /// learns the server has (the kernel-audit reader's stop: its marker
    /// must follow every report the gate's actions can cause).
    pub fn start(self, evidence: Option<Evidence>, last: Option<Box<dyn FnOnce() + Send>>) -> Result<Running, Failure> {
        self.start_with(None, evidence, last)
    }

    /// The sandbox's listener, if the exec stage has sent it (it does
    /// before the command execs): for a run that starts the gate's threads
    /// only once a syscall is parked ([`start_with`](Self::start_with)).
    pub fn take_listener(&self) -> Option<OwnedFd> {
        crate::sys::stage::recv_fd(&self.sock, false)
    }

    /// As [`start`](Self::start), serving `listener` when the run took it
    /// already ([`take_listener`](Self::take_listener)).
    pub fn start_with(
        self,
        listener: Option<OwnedFd>,
        evidence: Option<Evidence>,
        last: Option<Box<dyn FnOnce() + Send>>,
    ) -> Result<Running, Failure> {
        let Armed { sock, ruleset, net, hands, ctx } = self;
        // The acting thread first: a gate whose thread cannot confine
        // itself does not start, and the run ends (with the sandbox killed,
        // once the command runs: nothing it parked was allowed).
        let hands = Hands::spawn(hands)?.ready()?;
        let evidence = Journal::start(evidence)?;
        let grants = ctx.grants.clone();
        let slot: Arc<Mutex<Option<Arc<Shared>>>> = Arc::new(Mutex::new(None));
        let slot2 = Arc::clone(&slot);
        let (done_tx, done) = mpsc::channel::<()>();
        let server = std::thread::Builder::new()
            .name("gate".into())
            .spawn(move || {
                // No listener: the stage failed before it sent one.
                let listener = match listener {
                    Some(l) => l,
                    None => crate::sys::stage::recv_fd(&sock, true)?,
                };
                drop(sock);
                let _ = notify::set_sync_wakeup(listener.as_fd());
                let syscall_names = ctx.plan.ask_syscalls().into_iter().collect();
                let shared = Arc::new(Shared {
                    ctx,
                    syscall_names,
                    listener,
                    hands,
                    ruleset,
                    net,
                    apart: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
                    grants: Mutex::new(grants),
                    evidence,
                    pending: Mutex::new(HashMap::new()),
                    denials: Mutex::new(Denials::default()),
                    closing: std::sync::atomic::AtomicBool::new(false),
                });
                *slot2.lock().unwrap_or_else(|p| p.into_inner()) = Some(Arc::clone(&shared));
                serve(&shared);
                // Closed out by the run already (processes outlived the
                // command, and it stopped waiting for this thread).
                if shared.closing.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    return None;
                }
                // Nothing more can be asked of the hands, and then nothing
                // can cause a report of this sandbox: all that is left is
                // done here, while the run waits for the sandbox's init to exit.
                shared.hands.stop();
                if let Some(last) = last {
                    last();
                }
                let lost = shared.close_out(None);
                drop(done_tx);
                lost
            })
            .map_err(|e| Failure::setup(format!("gate: cannot start a thread: {e}")))?;
        Ok(Running { server, shared: slot, done })
    }
}

impl Running {
    /// After the sandbox is gone: the server has seen the listener hang up.
    /// Writes the denial counts and commits the gate's records. Returns why
    /// some of its records could not be written, if that happened (for the
    /// run's exit record).
    pub fn finish(self) -> Option<String> {
        self.finish_then(|| {})
    }

    /// As [`finish`](Self::finish); `then` runs once the gate acts for the
    /// sandbox no more (its acting thread has ended): the run tells the
    /// kernel-audit reader to stop there (kaudit::Watcher::ask_to_stop), as
    /// nothing can cause a report of this sandbox after it. Normally the
    /// server has asked already (Armed::start's `last`) and closed out the
    /// gate; only when processes outlived the command does this thread do
    /// both, `then` before the gate's last records.
    pub fn finish_then(self, then: impl FnOnce()) -> Option<String> {
        // With a PID namespace the sandbox is gone when the command is, and
        // the listener hangs up at once. Without one, a process that
        // outlived the command keeps the filter alive: do not wait for it
        // (our exit closes the listener; its parked syscalls then fail).
        let outlived = self.done.recv_timeout(Duration::from_secs(2)) == Err(mpsc::RecvTimeoutError::Timeout);
        if !outlived {
            // The server has closed the gate's records itself.
            let lost = self.server.join().unwrap_or_else(|_| Some("the gate's server panicked".into()));
            then();
            return lost;
        }
        eprintln!("portcullis: note: processes of the sandbox outlived the command; the gate stops serving them");
        let outlived = Some(
            "processes of the sandbox outlived the command; what the gate decided for them from now on is not recorded"
                .to_string(),
        );
        let Some(shared) = self.shared.lock().unwrap_or_else(|p| p.into_inner()).take() else {
            then();
            return outlived;
        };
        // The sandbox is gone after all, and the server is closing out (a
        // flood's records take a while to write): it finishes that.
        if shared.closing.swap(true, std::sync::atomic::Ordering::SeqCst) {
            drop(shared);
            let _ = self.done.recv();
            return self.server.join().unwrap_or_else(|_| Some("the gate's server panicked".into()));
        }
        shared.hands.stop();
        then();
        shared.close_out(outlived)
    }
}

impl Shared {
    /// The gate's last records, once it acts for the sandbox no more, and
    /// the close of its log handle: why records were lost, with `outlived`.
    fn close_out(&self, outlived: Option<String>) -> Option<String> {
        // Questions still out when the run ended: their callers are gone (or
        // are about to lose the gate), nothing was done for them, and an
        // answer that comes now finds nothing to act on. The log says so;
        // otherwise a question nobody answered would leave no trace.
        let unanswered: Vec<Pending> =
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).drain().map(|(_, p)| p).collect();
        for p in unanswered {
            let why = "the run ended before anyone answered; nothing was done";
            let answer = AskAnswer::deny("portcullis", why, p.asked.elapsed());
            self.evidence.record(Kind::Approval, approval_record(&p.req, &answer, "once", None, p.waiting.len()));
        }
        let (suppressed, top) = {
            let d = self.denials.lock().unwrap_or_else(|p| p.into_inner());
            (d.unrecorded(self.ctx.records_per_target), d.top(20))
        };
        let dropped = self.evidence.dropped.load(std::sync::atomic::Ordering::Relaxed);
        if suppressed > 0 || dropped > 0 {
            // Durable, so never turned away by a queue a flood filled.
            let summary = json!({
                "verdict": "deny", "summary": true, "unrecorded_denials": suppressed,
                "records_dropped_in_flood": dropped, "most_denied": top,
            });
            if let Err(f) = self.evidence.record_durable(Kind::Verdict, summary) {
                eprintln!("portcullis: gate: {}", f.message);
            }
        }
        match (self.evidence.close(), outlived) {
            (Some(lost), Some(note)) => Some(format!("{lost}; {note}")),
            (lost, note) => lost.or(note),
        }
    }
}

/// Distinct denied targets remembered for counting; beyond, one shared
/// counter, so a sandbox denied on endless new names cannot grow the
/// supervisor's memory (or the log) without bound.
const MAX_DENIAL_TARGETS: usize = 4096;

/// Denials per target, for recording the first few of each and counting
/// the rest (summarised at exit).
#[derive(Default)]
struct Denials {
    per_target: HashMap<String, u64>,
    /// Denials of targets past [`MAX_DENIAL_TARGETS`]: counted, not recorded.
    overflow: u64,
}

impl Denials {
    /// Counts one denial of `key`; true when it is to be recorded (one of
    /// the first `per_target` of a remembered target).
    fn note(&mut self, key: &str, per_target: u32) -> bool {
        if let Some(c) = self.per_target.get_mut(key) {
            *c += 1;
            return *c <= u64::from(per_target);
        }
        if self.per_target.len() >= MAX_DENIAL_TARGETS {
            self.overflow += 1;
            return false;
        }
        self.per_target.insert(key.to_string(), 1);
        per_target >= 1
    }

    /// Denials counted but not recorded.
    fn unrecorded(&self, per_target: u32) -> u64 {
        let over: u64 = self.per_target.values().map(|c| c.saturating_sub(u64::from(per_target))).sum();
        over + self.overflow
    }

    /// The `n` most denied targets with their counts.
    fn top(&self, n: usize) -> Vec<(String, u64)> {
        let mut top: Vec<(String, u64)> = self.per_target.iter().map(|(k, c)| (k.clone(), *c)).collect();
        top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        top.truncate(n);
        top
    }
}

/// The gate's audit writer: records go to one thread, so no notification
/// waits on the log's lock unless it must ("log before act").
///
/// A record costs the deciding thread a push onto a buffer under a mutex.
/// The writer is woken only when the buffer turns non-empty, then lingers
/// [`LINGER`] to let more arrive, and writes and fsyncs them in one group
/// commit: a burst of denials wakes it once, not once per record. A durable
/// record (an answer a person gave) is written at once, without lingering.
struct Journal {
    queue: Mutex<Queue>,
    wake: std::sync::Condvar,
    /// Returns the first write failure, if any.
    writer: Mutex<Option<std::thread::JoinHandle<Option<String>>>>,
    /// Records the full queue turned away (a flood); reported at exit.
    dropped: std::sync::atomic::AtomicU64,
}

#[derive(Default)]
struct Queue {
    items: Vec<JournalMsg>,
    /// Some records ask to be durable before their sender goes on.
    durable: bool,
    closed: bool,
    /// No writer (the benchmark's audit-off row): records vanish, asks fail.
    absent: bool,
}

type JournalMsg = (Kind, serde_json::Value, Option<mpsc::SyncSender<Result<(), String>>>);

/// Records waiting for the writer; beyond, denials are counted, not queued.
const JOURNAL_QUEUE: usize = 4096;
/// How long the writer collects before a group commit.
const LINGER: Duration = Duration::from_millis(2);

impl Journal {
    fn start(ev: Option<Evidence>) -> Result<Arc<Journal>, Failure> {
        let journal = Arc::new(Journal {
            queue: Mutex::new(Queue { absent: ev.is_none(), ..Queue::default() }),
            wake: std::sync::Condvar::new(),
            writer: Mutex::new(None),
            dropped: Default::default(),
        });
        let Some(ev) = ev else { return Ok(journal) };
        let j = Arc::clone(&journal);
        let writer = std::thread::Builder::new()
            .name("gate-audit".into())
            .spawn(move || j.write_loop(ev))
            .map_err(|e| Failure::setup(format!("gate: cannot start a thread: {e}")))?;
        *journal.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer);
        Ok(journal)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes until closed; returns why records were lost, if any were.
    fn write_loop(&self, mut ev: Evidence) -> Option<String> {
        crate::sys::background_thread();
        let mut lost: Option<String> = None;
        loop {
            let mut q = self.lock();
            while q.items.is_empty() && !q.closed {
                q = self.wake.wait(q).unwrap_or_else(|p| p.into_inner());
            }
            if q.items.is_empty() && q.closed {
                break;
            }
            if !q.durable && !q.closed {
                drop(q);
                std::thread::sleep(LINGER);
                q = self.lock();
            }
            let batch = std::mem::take(&mut q.items);
            q.durable = false;
            drop(q);
            let mut acks = Vec::new();
            let mut result = Ok(());
            for (kind, body, ack) in batch {
                if result.is_ok() {
                    result = ev.record(kind, body);
                }
                acks.extend(ack);
            }
            let result = result.and_then(|()| ev.commit()).map_err(|f| f.message);
            if let Err(m) = &result {
                eprintln!("portcullis: gate: {m}");
                lost.get_or_insert_with(|| crate::evidence::reason(m).to_string());
            }
            for ack in acks {
                let _ = ack.send(result.clone());
            }
        }
        // The run's exit record and checkpoint come after this.
        if let Err(f) = ev.release() {
            eprintln!("portcullis: gate: {}", f.message);
            lost.get_or_insert_with(|| crate::evidence::reason(&f.message).to_string());
        }
        lost
    }

    /// Queues a record (group-committed). A full queue drops it: a flood of
    /// denials must not stall the sandbox; the summary at exit counts them.
    fn record(&self, kind: Kind, body: serde_json::Value) {
        let mut q = self.lock();
        if q.absent || q.closed {
            return;
        }
        if q.items.len() >= JOURNAL_QUEUE {
            drop(q);
            self.dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return;
        }
        let first = q.items.is_empty();
        q.items.push((kind, body, None));
        drop(q);
        if first {
            self.wake.notify_one();
        }
    }

    /// Appends and fsyncs; returns once the record is durable.
    fn record_durable(&self, kind: Kind, body: serde_json::Value) -> Result<(), Failure> {
        let (ack, done) = mpsc::sync_channel(1);
        {
            let mut q = self.lock();
            if q.absent || q.closed {
                return Err(Failure::setup("gate: no audit log to record the answer in"));
            }
            // Never dropped: the asker waits, so the queue stays bounded by
            // the number of asks in flight (MAX_PENDING).
            q.items.push((kind, body, Some(ack)));
            q.durable = true;
        }
        self.wake.notify_one();
        match done.recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(m)) => Err(Failure::setup(m)),
            Err(_) => Err(Failure::setup("gate: the audit writer is gone")),
        }
    }

    /// Stops the writer; returns why records were lost, if any were.
    fn close(&self) -> Option<String> {
        self.lock().closed = true;
        self.wake.notify_one();
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        writer.and_then(|w| w.join().unwrap_or_else(|_| Some("the gate's audit writer panicked".into())))
    }
}

fn serve(shared: &Arc<Shared>) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    loop {
        let mut fds = [PollFd::new(shared.listener.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        }
        let revents = fds[0].revents().unwrap_or(PollFlags::empty());
        if revents.contains(PollFlags::POLLIN) {
            match notify::recv(shared.listener.as_fd()) {
                Ok(Some(n)) => dispatch(shared, n),
                Ok(None) => continue,
                Err(_) => return,
            }
        } else if revents.intersects(PollFlags::POLLHUP | PollFlags::POLLERR | PollFlags::POLLNVAL) {
            // No process uses the filter any more: the sandbox is gone.
            return;
        }
    }
}

fn dispatch(shared: &Arc<Shared>, n: Notif) {
    match ops::classify(shared, &n) {
        Ok(op) => shared.handle(n, op),
        Err(errno) => shared.send(&n, Reply::Errno(errno)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One answer covers one question as shown: parked calls that differ in
    /// flags or arguments are asked on their own.
    #[test]
    fn one_answer_covers_only_the_question_shown() {
        let op = |kind: &'static str, access: Vec<Access>, subject: Option<Subject>, detail: &str| Op {
            access,
            targets: vec![("/ws/secret".into(), false)],
            aliases: vec![],
            subject,
            kind,
            detail: detail.into(),
            perform: Box::new(|_| Reply::Continue),
        };
        let kill = |sig: u64| op("syscall", vec![], Some(Subject::Syscall("kill".into(), [7, sig, 0, 0, 0, 0])), "");
        assert_eq!(kill(0).question(), kill(0).question());
        assert_ne!(kill(0).question(), kill(10).question());
        let open = |flags: &str| op("open-write", vec![Access::Write], None, flags);
        assert_eq!(open("open(/ws/secret, O_WRONLY)").question(), open("open(/ws/secret, O_WRONLY)").question());
        assert_ne!(
            open("open(/ws/secret, O_WRONLY|O_APPEND)").question(),
            open("open(/ws/secret, O_WRONLY|O_TRUNC)").question()
        );
    }

    /// Rule paths resolve as the kernel resolves them: through symlinks
    /// and `..`, and a missing tail keeps its nearest existing ancestor's
    /// resolved form.
    #[test]
    fn rule_paths_resolve_through_links_and_missing_tails() {
        let root = std::env::temp_dir().join(format!("pc-canon-{}", std::process::id()));
        let real = root.join("real");
        std::fs::create_dir_all(real.join("sub")).unwrap();
        std::fs::write(real.join("file"), "x").unwrap();
        std::os::unix::fs::symlink(&real, root.join("link")).unwrap();
        std::os::unix::fs::symlink("real/file", root.join("flink")).unwrap();
        let real_s = std::fs::canonicalize(&real).unwrap().to_string_lossy().into_owned();
        let at = |rel: &str| canonical_path(&root.join(rel), &mut Default::default());
        assert_eq!(at("link"), real_s);
        assert_eq!(at("link/sub/../file"), format!("{real_s}/file"));
        assert_eq!(at("flink"), format!("{real_s}/file"));
        assert_eq!(at("link/not/yet"), format!("{real_s}/not/yet"));
        assert_eq!(at("link/sub"), std::fs::canonicalize(root.join("link/sub")).unwrap().to_string_lossy());
        // Nothing of it exists: kept as written.
        assert_eq!(
            canonical_path(std::path::Path::new("/nonexistent-pc/x"), &mut Default::default()),
            "/nonexistent-pc/x"
        );
        // The walk from the root (lstat per name, links read back) agrees
        // with the opens of the longest existing prefix, and gives the same
        // answers from a cache shared across rules (as canonical_rules).
        std::os::unix::fs::symlink("gone", root.join("dangling")).unwrap();
        std::os::unix::fs::symlink("..", real.join("sub/up")).unwrap();
        let mut shared = Default::default();
        for rel in [
            "link",
            "flink",
            "real/file",
            "link/sub",
            "link/not/yet",
            "dangling",
            "dangling/x",
            "link/sub/up/file",
            "link/sub/up/sub/up/new",
            "real/file/under",
            "",
            "missing",
        ] {
            let p = root.join(rel);
            let walked = canonical_path(&p, &mut Default::default());
            assert_eq!(walked, canonical_path_by_opens(&p, &mut Default::default()), "{rel}");
            assert_eq!(canonical_path(&p, &mut shared), walked, "{rel}, cached");
        }
        assert_eq!(at("link/sub/up/file"), format!("{real_s}/file"));
        // A link whose resolved form is too long to read back (over 4095
        // bytes): the walk hands the path to the opens, which the kernel
        // follows step by step. Before, the rule under it was kept as
        // written and missed the real path (found by a review).
        let deep = root.join("deep");
        let eleven = vec!["d".repeat(200); 11].join("/");
        std::fs::create_dir_all(deep.join(&eleven)).unwrap();
        // Link targets stay under 4096 bytes: two links, eleven levels each.
        std::os::unix::fs::symlink(&eleven, deep.join("half")).unwrap();
        std::fs::create_dir_all(deep.join("half").join(&eleven)).unwrap();
        std::os::unix::fs::symlink(format!("half/{eleven}"), deep.join("cfg")).unwrap();
        std::os::unix::fs::symlink(real.join("sub"), deep.join("cfg/git")).unwrap();
        let sub_s = format!("{real_s}/sub");
        assert_eq!(canonical_path(&deep.join("cfg/git"), &mut Default::default()), sub_s);
        assert_eq!(canonical_path(&deep.join("cfg/git/new"), &mut Default::default()), format!("{sub_s}/new"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn denials_record_the_first_few_per_target_and_stay_bounded() {
        let mut d = Denials::default();
        let recorded: Vec<bool> = (0..5).map(|_| d.note("/w/.git/hooks/x", 3)).collect();
        assert_eq!(recorded, [true, true, true, false, false]);
        assert_eq!(d.unrecorded(3), 2);
        // A flood of new names: remembered up to the cap, then only counted.
        let mut newly_recorded = 0;
        for i in 0..(MAX_DENIAL_TARGETS + 1000) {
            if d.note(&format!("/w/.git/hooks/{i}"), 3) {
                newly_recorded += 1;
            }
        }
        assert_eq!(d.per_target.len(), MAX_DENIAL_TARGETS, "memory stays bounded");
        assert_eq!(newly_recorded, MAX_DENIAL_TARGETS - 1, "past the cap nothing more is recorded");
        assert_eq!(d.unrecorded(3), 2 + 1001, "but everything is counted");
        // Known targets still count and record as before.
        assert!(!d.note("/w/.git/hooks/x", 3));
        assert_eq!(d.top(1), [("/w/.git/hooks/x".to_string(), 6)]);
    }
}
