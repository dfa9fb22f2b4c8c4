//! The supervisor's own prompt on its controlling terminal, for when no
//! broker can be reached. `portcullis run` puts the sandbox in a session of
//! its own, so the sandboxed program cannot type on this terminal (TIOCSTI
//! needs it as controlling terminal, and is denied anyway); but it may hold
//! the terminal as its stdio, so it is stopped while the prompt is up:
//! nothing it writes lands after the prompt, and nothing typed goes to it.
//!
//! Line-based on purpose: the terminal stays in the mode the user's shell
//! left it in, so nothing needs restoring if the supervisor is killed while
//! asking. Everything shown is masked and made safe to print (no escape
//! sequences from the request reach the terminal).

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{mask, AskAnswer, AskRequest, Scope};

/// Asks on `/dev/tty`. `None` when there is no controlling terminal or we
/// are not in its foreground process group (reading would stop us with
/// SIGTTIN); otherwise the answer, a timeout, or a denial when the terminal
/// closes. `lock` keeps two threads from prompting at once.
pub fn prompt(req: &AskRequest, deadline: Instant, lock: &Mutex<()>) -> Option<AskAnswer> {
    let mut tty = OpenOptions::new().read(true).write(true).open("/dev/tty").ok()?;
    if !in_foreground() {
        return None;
    }
    let _one_at_a_time = lock.lock().unwrap_or_else(|p| p.into_inner());
    // The sandbox may write to this terminal (and read from it): stopped
    // while we ask, it can neither draw a prompt of its own over ours nor
    // take the answer typed here.
    let _paused = Paused::start();
    let start = Instant::now();
    // Typed ahead, it was meant for an earlier question (or none): only
    // what is typed once this one is up can answer it.
    let _ = nix::sys::termios::tcflush(tty.as_fd(), nix::sys::termios::FlushArg::TCIFLUSH);
    let _ = tty.write_all(render(req, deadline).as_bytes());
    let shown = Instant::now();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let _ = tty.write_all(b"\nportcullis: no answer in time: denied\n");
            let why = format!("nobody answered on the terminal within {} s", req.timeout.as_secs_f64().ceil());
            return Some(AskAnswer::deny("timeout", why, start.elapsed()));
        }
        match read_answer(&mut tty, left.min(Duration::from_secs(1))) {
            Input::Nothing => continue,
            Input::Closed => {
                return Some(AskAnswer::deny("tty", "the terminal closed before an answer", start.elapsed()));
            }
            Input::Text(t) => match parse_key(&t) {
                // Too soon to have read this question: meant for the one before.
                Some(_) if shown.elapsed() < SETTLE => {
                    let _ = tty.write_all(
                        b"  (answer ignored: given before this question could be read; read it, then answer): ",
                    );
                }
                Some((allow, scope)) => {
                    let word = if allow { "allowed" } else { "denied" };
                    let _ = writeln!(tty, "portcullis: {word} ({})", scope.as_str());
                    return Some(AskAnswer { allow, scope, by: "tty".into(), reason: None, latency: start.elapsed() });
                }
                None => {
                    let _ = tty.write_all(b"  answer y, s, a, n or d (then Enter): ");
                }
            },
        }
    }
}

/// An answer typed sooner than this after a question appears is not taken:
/// a key meant for the question before (which timed out, or was answered
/// elsewhere, as the person typed) must not answer the one that replaced
/// it. The sandbox chooses when its questions come.
pub const SETTLE: Duration = Duration::from_millis(1000);

/// The sandbox's stage (its init), once `run` has cloned it: stopping
/// it stops the whole sandbox (its init turns SIGTSTP into SIGSTOP for
/// every process of the namespace), SIGCONT continues it.
static SANDBOX: AtomicI32 = AtomicI32::new(0);

/// Called by `run` with the stage's pid: prompts stop that sandbox.
pub fn pause_while_asking(stage: u32) {
    SANDBOX.store(i32::try_from(stage).unwrap_or(0), Ordering::Relaxed);
}

/// The sandbox stopped for as long as this lives.
struct Paused(Pid);

impl Paused {
    fn start() -> Option<Paused> {
        let stage = SANDBOX.load(Ordering::Relaxed);
        if stage <= 0 {
            return None;
        }
        let stage = Pid::from_raw(stage);
        kill(stage, Signal::SIGTSTP).ok()?;
        // The stop reaches the sandbox through its init: draw the
        // prompt once it has (a caller parked on this question cannot stop
        // until it is answered, so this waits at most a moment).
        let until = Instant::now() + Duration::from_millis(200);
        while Instant::now() < until && !all_stopped(stage) {
            std::thread::sleep(Duration::from_millis(2));
        }
        Some(Paused(stage))
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        let _ = kill(self.0, Signal::SIGCONT);
    }
}

/// The children of every thread of `pid`.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return vec![] };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        if let Ok(s) = std::fs::read_to_string(t.path().join("children")) {
            out.extend(s.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
        }
    }
    out
}

/// Whether every process under the stage's init is stopped (or gone).
fn all_stopped(stage: Pid) -> bool {
    let mut stack: Vec<i32> = children(stage.as_raw()).into_iter().flat_map(children).collect();
    while let Some(p) = stack.pop() {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else { continue };
        let state = stat.rsplit_once(')').and_then(|(_, r)| r.trim_start().chars().next());
        if !matches!(state, Some('T') | Some('t') | None) {
            return false;
        }
        stack.extend(children(p));
    }
    true
}

enum Input {
    Nothing,
    Closed,
    Text(String),
}

fn read_answer(tty: &mut File, wait: Duration) -> Input {
    let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX);
    let mut fds = [PollFd::new(tty.as_fd(), PollFlags::POLLIN)];
    match poll(&mut fds, PollTimeout::from(ms)) {
        Ok(0) | Err(nix::errno::Errno::EINTR) => return Input::Nothing,
        Err(_) => return Input::Closed,
        Ok(_) => {}
    }
    let mut buf = [0u8; 256];
    match tty.read(&mut buf) {
        Ok(0) => Input::Closed,
        Ok(n) => Input::Text(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Input::Nothing,
        Err(_) => Input::Closed,
    }
}

/// y allow once, s allow for the session, a always allow, n deny once, d always deny.
pub fn parse_key(input: &str) -> Option<(bool, Scope)> {
    let word = input.trim();
    let mut chars = word.chars();
    let c = chars.next()?;
    // "yes"/"no" are fine; "yikes" is not an answer.
    let rest: String = chars.collect();
    let ok = |full: &str| rest.is_empty() || word.eq_ignore_ascii_case(full);
    match c.to_ascii_lowercase() {
        'y' if ok("yes") => Some((true, Scope::Once)),
        's' if ok("session") => Some((true, Scope::Session)),
        'a' if ok("always") => Some((true, Scope::Always)),
        'n' if ok("no") => Some((false, Scope::Once)),
        'd' if ok("deny") => Some((false, Scope::Always)),
        _ => None,
    }
}

/// The prompt: the request masked, cut and defused for the terminal.
pub fn render(req: &AskRequest, deadline: Instant) -> String {
    let safe = |s: &str, max: usize| audit::display_safe(&mask::text(s, max)).into_owned();
    let argv = mask::argv(&req.argv).iter().map(|a| audit::display_safe(a).into_owned()).collect::<Vec<_>>().join(" ");
    let left = deadline.saturating_duration_since(Instant::now()).as_secs();
    let mut out = format!(
        "\n\
         portcullis: approval needed (no approval broker answers; asking here)\n\
         \x20 sandbox:  profile {}, session {}, pid {}\n\
         \x20 command:  {}\n\
         \x20 asks:     {} ({})\n\
         \x20 target:   {}\n\
         \x20 detail:   {}\n\
         \x20 rule:     {}\n",
        safe(&req.profile, mask::MAX_FIELD),
        safe(&req.session, mask::MAX_FIELD),
        req.pid,
        argv,
        safe(&req.kind, 32),
        safe(&req.category, 32),
        safe(&req.target, mask::MAX_TARGET),
        safe(&req.detail, mask::MAX_DETAIL),
        safe(&req.rule, mask::MAX_FIELD),
    );
    if req.category == "credential" {
        out.push_str(&format!("  WARNING:  {}\n", super::server::CREDENTIAL_WARNING));
    }
    out.push_str(&format!(
        "  [y] allow once  [s] allow for this session  [a] always allow  [n] deny  [d] always deny  ({left} s left): "
    ));
    out
}

/// Are we in the foreground process group of our controlling terminal?
/// (/proc/self/stat: pgrp is field 5, tpgid field 8.)
fn in_foreground() -> bool {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return false };
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { return false };
    let f: Vec<&str> = rest.split_whitespace().collect();
    match (f.get(2).and_then(|p| p.parse::<i32>().ok()), f.get(5).and_then(|t| t.parse::<i32>().ok())) {
        (Some(pgrp), Some(tpgid)) => tpgid > 0 && pgrp == tpgid,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(parse_key("y\n"), Some((true, Scope::Once)));
        assert_eq!(parse_key(" Yes "), Some((true, Scope::Once)));
        assert_eq!(parse_key("s"), Some((true, Scope::Session)));
        assert_eq!(parse_key("a"), Some((true, Scope::Always)));
        assert_eq!(parse_key("n"), Some((false, Scope::Once)));
        assert_eq!(parse_key("no"), Some((false, Scope::Once)));
        assert_eq!(parse_key("d"), Some((false, Scope::Always)));
        for bad in ["", "\n", "yikes", "x", "q", "allow"] {
            assert_eq!(parse_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_prompt_is_masked_and_defused() {
        let req = AskRequest {
            session: "s".into(),
            profile: "strict".into(),
            argv: vec!["mysql".into(), "--password".into(), "hunter2".into()],
            pid: 7,
            kind: "open-read".into(),
            category: "credential".into(),
            target: "/home/u/.ssh/id_rsa\x1b[2J".into(),
            detail: "token=ghp_0123456789abcdefghij".into(),
            rule: "r".into(),
            timeout: Duration::from_secs(5),
        };
        let p = render(&req, Instant::now() + Duration::from_secs(5));
        assert!(!p.contains("hunter2") && !p.contains("ghp_0123"), "{p}");
        assert!(!p.contains('\x1b') && p.contains("\\x1b[2J"), "{p}");
        assert!(p.contains("WARNING"), "{p}");
    }
}
