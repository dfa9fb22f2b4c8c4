//! `portcullis broker`, `approvals`, `approve`, `deny`: the broker and its
//! front ends (docs/BROKER.md).

use std::fs::File;
use std::io::{IsTerminal, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use crate::broker::client::LinkError;
use crate::broker::protocol::{Answer, FromBroker, ToBroker, View};
use crate::broker::server::{self, Started};
use crate::broker::tty::SETTLE;
use crate::broker::{socket, Link, Scope};
use crate::exit::Failure;

/// Exit code of `approve`/`deny` when there is no such pending request.
pub const NO_SUCH_REQUEST: i32 = 1;

pub fn broker(foreground: bool) -> Result<i32, Failure> {
    let dir = socket::dir().map_err(|e| Failure::setup(e.to_string()))?;
    if foreground {
        return server::serve_foreground(dir).map_err(|e| Failure::setup(e.to_string()));
    }
    let sock = socket::socket_path(&dir);
    match server::start_detached(&dir) {
        Ok(Started::Started { pid }) => println!("portcullis broker: started (pid {pid}) on {}", sock.display()),
        Ok(Started::AlreadyRunning { pid }) => {
            println!("portcullis broker: already running (pid {pid}) on {}", sock.display())
        }
        Err(e) => return Err(Failure::setup(format!("broker: {e}"))),
    }
    Ok(0)
}

pub fn approvals(json: bool) -> Result<i32, Failure> {
    if json || !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return list_json();
    }
    interactive()
}

fn list_json() -> Result<i32, Failure> {
    let list = match Link::connect() {
        Ok(mut link) => link.list(Duration::from_secs(5)).map_err(|e| Failure::setup(format!("approvals: {e}")))?,
        Err(LinkError::NotRunning(p)) => {
            eprintln!("portcullis: no approval broker is running ({}): nothing is pending", p.display());
            vec![]
        }
        Err(e) => return Err(Failure::setup(format!("approvals: {e}"))),
    };
    println!("{}", serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into()));
    Ok(0)
}

pub fn answer(id: &str, allow: bool, session: bool, always: bool) -> Result<i32, Failure> {
    let scope = if always {
        Scope::Always
    } else if session {
        Scope::Session
    } else {
        Scope::Once
    };
    let no_such = |why: &str| {
        eprintln!("portcullis: no pending request {:?}: {why} (see `portcullis approvals --json`)", short(id));
        Ok(NO_SUCH_REQUEST)
    };
    if id.is_empty() || id.len() > 64 || !id.chars().all(|c| c.is_ascii_hexdigit()) {
        return no_such("request ids are hex digits");
    }
    let mut link = match Link::connect() {
        Ok(l) => l,
        Err(LinkError::NotRunning(p)) => {
            return Err(Failure::setup(format!("no approval broker is running ({}): nothing to answer", p.display())))
        }
        Err(e) => return Err(Failure::setup(e.to_string())),
    };
    let a = Answer { id: id.to_ascii_lowercase(), allow, scope, by: "cli".into() };
    link.send(&ToBroker::Answer(a)).map_err(|e| Failure::setup(e.to_string()))?;
    loop {
        match link.recv_timeout(Duration::from_secs(5)) {
            Ok(FromBroker::Answered(a)) => {
                let verdict = if allow { "allowed" } else { "denied" };
                println!("{verdict} {} ({})", a.id, scope.as_str());
                return Ok(0);
            }
            Ok(FromBroker::Error(e)) if e.code == "unknown-id" => {
                return no_such("it was answered, timed out or withdrawn already, or never existed")
            }
            Ok(FromBroker::Error(e)) => return Err(Failure::setup(format!("broker: {}: {}", e.code, e.message))),
            Ok(_) => {}
            Err(e) => return Err(Failure::setup(format!("broker: {e}"))),
        }
    }
}

fn short(s: &str) -> String {
    s.chars().take(64).collect()
}

// ---- the interactive queue ----

/// The terminal in single-key mode for as long as this lives. nix's termios
/// is not among this build's features, so `stty` does it; restoring runs on
/// every return path, panics included.
struct RawTerminal {
    saved: String,
}

fn stty(args: &[&str]) -> std::io::Result<String> {
    let out = Command::new("stty").args(args).stdin(File::open("/dev/tty")?).stderr(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!("stty {} failed", args.join(" "))));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

impl RawTerminal {
    fn enter() -> std::io::Result<RawTerminal> {
        let saved = stty(&["-g"])?;
        // -isig: Ctrl-C arrives as a key (quit) instead of killing us before the terminal is restored.
        stty(&["-icanon", "-echo", "-isig", "-ixon", "min", "1", "time", "0"])?;
        print!("\x1b[?1049h\x1b[?25l");
        let _ = std::io::stdout().flush();
        Ok(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        print!("\x1b[?25h\x1b[?1049l");
        let _ = std::io::stdout().flush();
        let _ = stty(&[&self.saved]);
    }
}

fn terminal_size() -> (usize, usize) {
    stty(&["size"])
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().filter_map(|n| n.parse::<usize>().ok());
            Some((it.next()?, it.next()?))
        })
        .filter(|(r, c)| *r > 0 && *c > 0)
        .unwrap_or((24, 80))
}

enum Msg {
    From(Box<FromBroker>),
    Lost(String),
}

/// Subscribes; messages arrive on `tx`. Starts a broker when none runs, so
/// supervisors started later find this one.
fn subscribe(tx: &Sender<Msg>) -> Result<UnixStream, String> {
    let dir = socket::dir().map_err(|e| e.to_string())?;
    let mut link = match Link::connect_dir(&dir) {
        Ok(l) => l,
        Err(LinkError::NotRunning(_)) => {
            server::start_detached(&dir)?;
            Link::connect_dir(&dir).map_err(|e| e.to_string())?
        }
        Err(e) => return Err(e.to_string()),
    };
    link.send(&ToBroker::Subscribe).map_err(|e| e.to_string())?;
    let writer = link.writer().map_err(|e| e.to_string())?;
    let tx = tx.clone();
    std::thread::spawn(move || loop {
        match link.recv() {
            Ok(m) => {
                if tx.send(Msg::From(Box::new(m))).is_err() {
                    return;
                }
            }
            Err(e) => {
                let _ = tx.send(Msg::Lost(e.to_string()));
                return;
            }
        }
    });
    Ok(writer)
}

struct Item {
    view: View,
    received: Instant,
}

/// What the screen shows.
#[derive(Default)]
struct Queue {
    items: Vec<Item>,
    selected: usize,
    status: String,
    /// The request under the cursor, and since when it counts as read:
    /// when it came there by itself, from then; when the person moved the
    /// cursor to it, from when the list last changed (it was on screen).
    under: Option<(String, Instant)>,
    /// When a request last came or went.
    changed: Option<Instant>,
}

impl Queue {
    fn apply(&mut self, m: FromBroker) {
        let before = self.items.len();
        let was = self.items.get(self.selected).map(|i| i.view.id.clone());
        match m {
            FromBroker::Pending(_) => self.items.clear(),
            FromBroker::Request(r) => self.add(r.request),
            FromBroker::Added(a) => self.add(a.request),
            FromBroker::Resolved(r) => {
                self.items.retain(|i| i.view.id != r.id);
                let verdict = if r.allow { "allowed" } else { "denied" };
                let why = r.reason.map(|w| format!(": {w}")).unwrap_or_default();
                self.status = format!("{} {verdict} ({}) by {}{why}", r.id, r.scope.as_str(), r.by);
            }
            FromBroker::Error(e) => self.status = format!("broker: {}: {}", e.code, e.message),
            _ => {}
        }
        self.selected = self.selected.min(self.items.len().saturating_sub(1));
        let now = Instant::now();
        if self.items.len() != before || self.items.get(self.selected).map(|i| &i.view.id) != was.as_ref() {
            self.changed = Some(now);
        }
        self.settle(now, false);
    }

    /// Moves the cursor by `by` (the person's own move).
    fn step(&mut self, by: isize, now: Instant) {
        let last = self.items.len().saturating_sub(1);
        self.selected = self.selected.saturating_add_signed(by).min(last);
        self.settle(now, true);
    }

    /// Notes when the request under the cursor changed.
    fn settle(&mut self, now: Instant, moved: bool) {
        let id = self.items.get(self.selected).map(|i| i.view.id.clone());
        if self.under.as_ref().map(|(u, _)| u) != id.as_ref() {
            // A Down pressed as the list changed lands on a request the
            // person never saw there: it waits like one that slid in.
            let read = now.checked_sub(SETTLE).unwrap_or(now);
            let since = if moved { self.changed.map_or(read, |c| c.max(read)) } else { now };
            self.under = id.map(|i| (i, since));
        }
    }

    /// The request a decision key answers now: none while the one under
    /// the cursor has just taken the place of another by itself (that
    /// one resolved, or was withdrawn, as the person typed).
    fn answerable(&self, now: Instant) -> Result<&Item, String> {
        let Some(it) = self.items.get(self.selected) else { return Err("nothing pending to answer".into()) };
        match &self.under {
            Some((id, since)) if *id == it.view.id && now.saturating_duration_since(*since) >= SETTLE => Ok(it),
            _ => Err(format!(
                "not answered: request {} has just come under the cursor; read it, then answer",
                it.view.id
            )),
        }
    }

    fn add(&mut self, v: View) {
        if !self.items.iter().any(|i| i.view.id == v.id) {
            self.items.push(Item { view: v, received: Instant::now() });
        }
    }
}

/// A key of the queue, decoded from what the terminal sent.
#[derive(Debug, PartialEq, Eq)]
enum Key {
    Decide(bool, Scope),
    Up,
    Down,
    Quit,
    Other,
}

fn keys(bytes: &[u8]) -> Vec<Key> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let k = match bytes[i] {
            // An escape sequence is one key, read to its end: its last
            // byte is never a decision (Ctrl-Up is `ESC [ 1 ; 5 A`, whose
            // `A` alone would mean "always allow"; Alt-a is `ESC a`).
            b'\x1b' => {
                let (key, len) = escape(&bytes[i..]);
                i += len - 1;
                key
            }
            b'y' | b'Y' => Key::Decide(true, Scope::Once),
            b's' | b'S' => Key::Decide(true, Scope::Session),
            b'a' | b'A' => Key::Decide(true, Scope::Always),
            b'n' | b'N' => Key::Decide(false, Scope::Once),
            b'd' | b'D' => Key::Decide(false, Scope::Always),
            b'k' => Key::Up,
            b'j' => Key::Down,
            b'q' | b'Q' | 0x03 | 0x04 => Key::Quit,
            _ => Key::Other,
        };
        out.push(k);
        i += 1;
    }
    out
}

/// The key an escape sequence at the start of `b` stands for, and its
/// length: CSI (`ESC [`, parameters, intermediates, a final byte), SS3
/// (`ESC O` and one byte), or ESC with the key it modifies (Alt-key). Only
/// the plain arrows mean anything; a sequence cut off by the read's end is
/// taken whole.
fn escape(b: &[u8]) -> (Key, usize) {
    match b.get(1) {
        Some(b'[') => {
            let params = b[2..].iter().take_while(|c| (0x20..=0x3f).contains(*c)).count();
            let end = 2 + params;
            let Some(&last) = b.get(end).filter(|c| (0x40..=0x7e).contains(*c)) else {
                return (Key::Other, b.len().min(end.max(2)));
            };
            let key = match (params, last) {
                (0, b'A') => Key::Up,
                (0, b'B') => Key::Down,
                _ => Key::Other,
            };
            (key, end + 1)
        }
        Some(b'O') => match b.get(2) {
            Some(b'A') => (Key::Up, 3),
            Some(b'B') => (Key::Down, 3),
            Some(_) => (Key::Other, 3),
            None => (Key::Other, 2),
        },
        Some(_) => (Key::Other, 2),
        None => (Key::Other, 1),
    }
}

fn safe(s: &str) -> String {
    audit::display_safe(s).into_owned()
}

fn fit(s: &str, cols: usize) -> String {
    if s.chars().count() <= cols {
        return s.to_string();
    }
    let mut t: String = s.chars().take(cols.saturating_sub(1)).collect();
    t.push('…');
    t
}

fn secs(ms: u64) -> String {
    let s = ms.div_ceil(1000);
    if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// The whole screen as text (every field from the broker defused for the terminal).
fn screen(q: &Queue, now: Instant, rows: usize, cols: usize) -> String {
    let mut lines: Vec<String> = Vec::new();
    let n = q.items.len();
    lines.push(format!("portcullis approvals: {n} pending"));
    lines.push(String::new());
    let left = |i: &Item| i.view.left_ms.saturating_sub(now.saturating_duration_since(i.received).as_millis() as u64);
    let list_rows = rows.saturating_sub(16).clamp(3, 12);
    let first = q.selected.saturating_sub(list_rows - 1);
    for (k, it) in q.items.iter().enumerate().skip(first).take(list_rows) {
        let v = &it.view;
        let mark = if k == q.selected { '>' } else { ' ' };
        lines.push(format!(
            "{mark} {:>3} of {n}  {}  {:<10} {:<10} {:>6} left  {}",
            k + 1,
            safe(&v.id),
            safe(&v.category),
            safe(&v.kind),
            secs(left(it)),
            safe(&v.target)
        ));
    }
    if n == 0 {
        lines.push("  nothing pending; requests appear here as sandboxes ask".into());
    }
    lines.push(String::new());
    if let Some(it) = q.items.get(q.selected) {
        let v = &it.view;
        let age = v.age_ms + now.saturating_duration_since(it.received).as_millis() as u64;
        lines.push(format!(
            "request {} ({} of {n}), waiting {}, {} left",
            safe(&v.id),
            q.selected + 1,
            secs(age),
            secs(left(it))
        ));
        lines.push(format!("  sandbox:  profile {}, session {}, pid {}", safe(&v.profile), safe(&v.session), v.pid));
        lines.push(format!("  command:  {}", v.argv.iter().map(|a| safe(a)).collect::<Vec<_>>().join(" ")));
        lines.push(format!("  asks:     {} ({})", safe(&v.kind), safe(&v.category)));
        lines.push(format!("  target:   {}", safe(&v.target)));
        lines.push(format!("  detail:   {}", safe(&v.detail)));
        lines.push(format!("  rule:     {}", safe(&v.rule)));
        if v.waiters > 1 {
            lines.push(format!("  ({} identical asks wait on this answer)", v.waiters));
        }
        if let Some(w) = &v.warning {
            lines.push(format!("  WARNING:  {}", safe(w)));
        }
    }
    lines.push(String::new());
    lines.push("y allow once  s allow for session  a always allow  n deny  d always deny  j/k move  q quit".into());
    lines.push(safe(&q.status));
    let mut out = String::from("\x1b[H\x1b[2J");
    for l in lines.iter().take(rows) {
        out.push_str(&fit(l, cols));
        out.push_str("\r\n");
    }
    out
}

fn interactive() -> Result<i32, Failure> {
    let (tx, rx): (Sender<Msg>, Receiver<Msg>) = channel();
    let mut writer = Some(subscribe(&tx).map_err(|e| Failure::setup(format!("approvals: {e}")))?);
    let mut tty = File::open("/dev/tty").map_err(|e| Failure::setup(format!("approvals: /dev/tty: {e}")))?;
    let _raw =
        RawTerminal::enter().map_err(|e| Failure::setup(format!("approvals: cannot set up the terminal: {e}")))?;
    let mut q = Queue::default();
    let mut size = terminal_size();
    let mut last_draw = Instant::now() - Duration::from_secs(10);
    let mut dirty = true;
    let mut retry_at: Option<Instant> = None;
    loop {
        while let Ok(m) = rx.try_recv() {
            match m {
                Msg::From(m) => q.apply(*m),
                Msg::Lost(why) => {
                    q.status = format!("lost the broker ({why}); reconnecting...");
                    writer = None;
                    retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            dirty = true;
        }
        if writer.is_none() && retry_at.is_some_and(|t| Instant::now() >= t) {
            match subscribe(&tx) {
                Ok(w) => {
                    writer = Some(w);
                    q.status = "reconnected".into();
                }
                Err(e) => {
                    q.status = format!("no broker ({e}); retrying...");
                    retry_at = Some(Instant::now() + Duration::from_secs(1));
                }
            }
            dirty = true;
        }
        if dirty || last_draw.elapsed() >= Duration::from_secs(1) {
            if last_draw.elapsed() >= Duration::from_secs(1) {
                size = terminal_size();
            }
            print!("{}", screen(&q, Instant::now(), size.0, size.1));
            let _ = std::io::stdout().flush();
            last_draw = Instant::now();
            dirty = false;
        }
        let mut fds = [PollFd::new(tty.as_fd(), PollFlags::POLLIN)];
        if !matches!(poll(&mut fds, PollTimeout::from(200u16)), Ok(n) if n > 0) {
            continue;
        }
        let mut buf = [0u8; 64];
        let n = match tty.read(&mut buf) {
            Ok(0) | Err(_) => return Ok(0),
            Ok(n) => n,
        };
        for k in keys(&buf[..n]) {
            dirty = true;
            match k {
                Key::Quit => return Ok(0),
                Key::Up => q.step(-1, Instant::now()),
                Key::Down => q.step(1, Instant::now()),
                Key::Decide(allow, scope) => {
                    let it = match q.answerable(Instant::now()) {
                        Ok(it) => it,
                        Err(why) => {
                            q.status = why;
                            continue;
                        }
                    };
                    let a = Answer { id: it.view.id.clone(), allow, scope, by: "approvals".into() };
                    let sent = writer.as_mut().map(|w| w.write_all(ToBroker::Answer(a).encode().as_bytes()));
                    if !matches!(sent, Some(Ok(()))) {
                        q.status = "not connected to the broker: answer not sent".into();
                    }
                }
                Key::Other => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view(id: &str, category: &str) -> View {
        View {
            id: id.into(),
            session: "s".into(),
            profile: "strict".into(),
            argv: vec!["cat".into()],
            pid: 9,
            kind: "open-read".into(),
            category: category.into(),
            target: "/t\x1b[31m".into(),
            detail: "d".into(),
            rule: "r".into(),
            position: 1,
            of: 1,
            age_ms: 0,
            timeout_ms: 120_000,
            left_ms: 120_000,
            waiters: 1,
            warning: (category == "credential").then(|| "careful".into()),
        }
    }

    #[test]
    fn keys_decode() {
        assert_eq!(
            keys(b"ysand\x1b[A\x1b[Bjkq\x03x"),
            vec![
                Key::Decide(true, Scope::Once),
                Key::Decide(true, Scope::Session),
                Key::Decide(true, Scope::Always),
                Key::Decide(false, Scope::Once),
                Key::Decide(false, Scope::Always),
                Key::Up,
                Key::Down,
                Key::Down,
                Key::Up,
                Key::Quit,
                Key::Quit,
                Key::Other,
            ]
        );
    }

    /// Modified arrows, function keys and Alt-keys end in letters that are
    /// decisions on their own: none of them decides anything.
    #[test]
    fn escape_sequences_never_decide() {
        for seq in [
            &b"\x1b[1;5A"[..], // Ctrl-Up ("A": always allow)
            b"\x1b[1;2D",      // Shift-Left ("D": always deny)
            b"\x1b[1;3A",      // Alt-Up
            b"\x1ba",          // Alt-a
            b"\x1bY",          // Alt-Shift-y
            b"\x1bOS",         // F4
            b"\x1b[24~",       // F12
            b"\x1b[200~",      // bracketed paste start
            b"\x1b[1;5",       // cut off by the read
            b"\x1b",
        ] {
            let k = keys(seq);
            assert!(k.iter().all(|k| *k == Key::Other), "{seq:?} -> {k:?}");
        }
        assert_eq!(keys(b"\x1bOA\x1bOBy"), vec![Key::Up, Key::Down, Key::Decide(true, Scope::Once)]);
        assert_eq!(keys(b"\x1b[1;5\x03"), vec![Key::Other, Key::Quit]);
    }

    #[test]
    fn the_queue_follows_events_and_the_screen_is_defused() {
        use crate::broker::protocol::{Added, Listed, Pending, Resolved};
        let mut q = Queue::default();
        q.apply(FromBroker::Pending(Pending { count: 1 }));
        q.apply(FromBroker::Request(Listed { request: view("aaaaaaaa", "read") }));
        q.apply(FromBroker::Added(Added { request: view("bbbbbbbb", "credential") }));
        q.selected = 1;
        let s = screen(&q, Instant::now(), 40, 200);
        assert!(s.contains("2 pending") && s.contains("2 of 2") && s.contains("WARNING:  careful"), "{s}");
        assert!(!s[7..].contains('\x1b') && s.contains("\\x1b[31m"), "{s}");
        q.apply(FromBroker::Resolved(Resolved {
            id: "bbbbbbbb".into(),
            allow: true,
            scope: Scope::Session,
            by: "cli".into(),
            reason: None,
        }));
        assert_eq!(q.items.len(), 1);
        assert_eq!(q.selected, 0);
        assert!(q.status.contains("allowed (session) by cli"), "{}", q.status);
    }

    /// The person reads the request under the cursor; it resolves (timed
    /// out, withdrawn by the sandbox, answered elsewhere) just as they
    /// type: the key must not answer the request that slid into its place.
    #[test]
    fn a_key_never_answers_a_request_that_just_slid_under_the_cursor() {
        use crate::broker::protocol::{Added, Resolved};
        let mut q = Queue::default();
        q.apply(FromBroker::Added(Added { request: view("aaaaaaaa", "read") }));
        q.apply(FromBroker::Added(Added { request: view("bbbbbbbb", "credential") }));
        let read_a = Instant::now() + SETTLE;
        assert_eq!(q.answerable(read_a).map(|i| i.view.id.as_str()), Ok("aaaaaaaa"));
        q.apply(FromBroker::Resolved(Resolved {
            id: "aaaaaaaa".into(),
            allow: false,
            scope: Scope::Once,
            by: "timeout".into(),
            reason: None,
        }));
        // The key, typed a moment later, was meant for aaaaaaaa.
        let typed = Instant::now() + Duration::from_millis(50);
        let refused = q.answerable(typed).map(|i| i.view.id.clone());
        assert!(refused.as_ref().is_err_and(|why| why.contains("bbbbbbbb")), "{refused:?}");
        // Twin: once it has been on screen long enough, it is answerable.
        let later = Instant::now() + SETTLE + Duration::from_millis(10);
        assert_eq!(q.answerable(later).map(|i| i.view.id.as_str()), Ok("bbbbbbbb"));
        // The person's own move onto a request that has been on screen
        // makes it answerable at once.
        q.apply(FromBroker::Added(Added { request: view("cccccccc", "read") }));
        let seen = Instant::now() + SETTLE + Duration::from_millis(10);
        q.step(1, seen);
        assert_eq!(q.answerable(seen).map(|i| i.view.id.as_str()), Ok("cccccccc"));
        // But not onto one that has just arrived (or slid) there: the Down
        // was pressed for the list as it was (a reviewer's note).
        q.step(-1, seen);
        q.apply(FromBroker::Added(Added { request: view("eeeeeeee", "credential") }));
        let pressed = Instant::now() + Duration::from_millis(50);
        q.step(2, pressed);
        assert!(q.answerable(pressed).is_err_and(|why| why.contains("eeeeeeee")));
        let read = Instant::now() + SETTLE + Duration::from_millis(10);
        assert_eq!(q.answerable(read).map(|i| i.view.id.as_str()), Ok("eeeeeeee"));
        // A first request, arriving on an empty queue, waits too.
        let mut q = Queue::default();
        q.apply(FromBroker::Added(Added { request: view("dddddddd", "read") }));
        assert!(q.answerable(Instant::now()).is_err());
    }
}
