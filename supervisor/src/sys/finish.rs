//! Ending `portcullis run` before its last records are durable.
//!
//! When the command has exited, what is left is bookkeeping the caller
//! does not need to wait for: the kernel-audit reader's last wait (for its
//! marker to come back through the kernel), the exit record and its fsync, the signed
//! checkpoint (a second fsync, an exchange of names and a third fsync of
//! the directory), removing the temp dir and cgroups, and tearing down
//! the supervisor's memory. Measured here that is about a millisecond of
//! every launch's wall time. So the supervisor exits with the command's
//! status at once, and a child that shares its memory (clone CLONE_VM,
//! no copy of the page tables) finishes.
//!
//! The log's lock is already held (and, as a rule, nothing is written
//! yet): the finisher reads the kernel-audit reader's last reports, writes
//! their records and the exit record, and holds the lock until the
//! checkpoint is written: readers (`portcullis audit ...`, which take it
//! shared) and the next writer wait for it, and see the exit record and
//! its checkpoint together. A crash (or a SIGKILL of the finisher) in
//! that millisecond loses the exit record: the log then shows a launch
//! without its end, as after a crash while the command ran.
//!
//! What the finisher may do: allocate, and use std's files and locks.
//! What it must not: start threads, fork or spawn (`Command`), or use
//! pthread mutexes or anything keyed on the thread id: it runs on the
//! exited main thread's TLS, whose thread id the kernel zeroes when that
//! thread exits (its clear_child_tid), so glibc's error-checking and
//! recursive mutexes misbehave there. std's own locks use futexes and do
//! not care.
//!
//! The finisher is an orphan once we exit: the caller's nearest subreaper,
//! or the PID namespace's init, reaps it. Where that init is our parent
//! (an agent running as PID 1 in a container, which often reaps nothing
//! it did not start), the run finishes the old way instead, so that no
//! zombie is left per run.

/// What is left to do after the caller has the status.
pub type Finish = Box<dyn FnOnce()>;

/// Exits this process with `code` now, and runs `finish` to completion in
/// a child that shares its memory. Returns `finish` instead, to be run
/// before returning as usual, when that is not safe or not possible:
///
/// - Another thread is alive. The finisher allocates, and a thread killed
///   by our exit might hold the allocator's lock. The caller joins its
///   threads first; one it could not (an MCP relay) falls back.
/// - The clone fails.
///
/// The finisher's standard input and output are /dev/null (a caller
/// reading our output to its end does not wait for it); its standard error
/// is ours, for a failure to report. It keeps the signal mask of the
/// calling thread (the supervisor blocks the signals it forwards), so a
/// Ctrl-C after the command's end does not cut the checkpoint short.
pub fn exit_finishing(code: i32, finish: Finish) -> Finish {
    use std::io::Write;
    // Our parent is PID 1 (or outside our PID namespace): it would be
    // left the finisher's zombie to reap.
    if nix::unistd::getppid().as_raw() <= 1 || other_threads_alive() {
        return finish;
    }
    let _ = std::io::stdout().flush();
    // As large as the main thread's, reserved not committed, with a guard
    // page below it: an overflow faults instead of writing into whatever
    // mapping lies below.
    const STACK: usize = 8 << 20;
    const GUARD: usize = 4096;
    // SAFETY: a fresh private anonymous mapping; checked below.
    let stack = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            STACK,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if stack == libc::MAP_FAILED {
        return finish;
    }
    // SAFETY: the lowest page of the mapping just made.
    if unsafe { libc::mprotect(stack, GUARD, libc::PROT_NONE) } != 0 {
        // SAFETY: the mapping is unused.
        unsafe { libc::munmap(stack, STACK) };
        return finish;
    }
    let arg = Box::into_raw(Box::new(finish));
    // SAFETY: the child runs `finisher` on its own stack (the top of the
    // mapping above; it grows down) with `arg`, which it owns from here on.
    // CLONE_VM without CLONE_FILES/CLONE_SIGHAND: it shares our memory and
    // has copies of our fds and handlers. SIGCHLD: whoever inherits it
    // when we are gone reaps it.
    let pid = unsafe {
        let top = stack.cast::<u8>().add(STACK).cast();
        libc::clone(finisher, top, libc::CLONE_VM | libc::SIGCHLD, arg.cast())
    };
    if pid > 0 {
        // SAFETY: nothing of ours runs after this: no destructor, no atexit
        // handler, no allocation; the finisher owns everything it uses.
        unsafe { libc::_exit(code) }
    }
    // SAFETY: the clone failed, so `arg` is still ours alone.
    let finish = unsafe { Box::from_raw(arg) };
    // SAFETY: the mapping is unused.
    unsafe { libc::munmap(stack, STACK) };
    *finish
}

/// The finisher's entry point (see [`exit_finishing`]).
extern "C" fn finisher(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the Box leaked by exit_finishing, handed to us alone.
    let finish: Box<Finish> = unsafe { Box::from_raw(arg.cast()) };
    // SAFETY: sched_yield takes nothing; dup2 and close on fds of our own
    // table; signal() on our own copy of the handlers.
    unsafe {
        // The caller's exit first: a new process may run ahead of its
        // creator on the creator's CPU, and the exit, which the caller
        // waits for, would wait for our first steps. (Elsewhere, this
        // returns at once.)
        libc::sched_yield();
        // Once we are gone the caller's shell may take the terminal back:
        // a failure reported then must not stop the finisher (tostop).
        libc::signal(libc::SIGTTOU, libc::SIG_IGN);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC);
        if null >= 0 {
            libc::dup2(null, 0);
            libc::dup2(null, 1);
            libc::close(null);
        }
    }
    let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(*finish)).is_ok();
    // SAFETY: ends the finisher; the memory goes with it.
    unsafe { libc::_exit(if ok { 0 } else { 1 }) }
}

/// Whether this process has a thread besides the caller that is still
/// running (one that has been joined may linger in /proc as it exits: it
/// is then marked exiting, or its state is Z or X, and it runs no more
/// code of ours).
fn other_threads_alive() -> bool {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else { return true };
    // SAFETY: gettid takes no arguments.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) }.to_string();
    for entry in dir {
        let Ok(entry) = entry else { return true };
        let name = entry.file_name();
        if name.to_str() == Some(tid.as_str()) {
            continue;
        }
        let stat = match std::fs::read_to_string(entry.path().join("stat")) {
            Ok(s) => s,
            // Gone between the listing and the read.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(_) => return true,
        };
        if !exiting(&stat) {
            return true;
        }
    }
    false
}

/// Whether a /proc/PID/task/TID/stat line is a thread's that has ended or
/// is ending: state Z or X, or PF_EXITING in its flags (a joined thread
/// still in the kernel's exit path, state R or D: once in 50 launches
/// here, which then made the exit record durable before exiting).
fn exiting(stat: &str) -> bool {
    const PF_EXITING: u64 = 0x4;
    // "tid (comm) S ppid pgrp session tty_nr tpgid flags ...": the state
    // follows the last parenthesis (a comm may hold one), the flags six after.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let flags = fields.get(6).and_then(|f| f.parse::<u64>().ok());
    matches!(fields.first(), Some(&("Z" | "X"))) || flags.is_some_and(|f| f & PF_EXITING != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_on_its_way_out_counts_as_gone() {
        // Fields as the kernel writes them (flags: 0x400040 running, 0x400044 exiting).
        let line =
            |state: &str, flags: u64| format!("4242 (gate (x)) {state} 1 1 1 0 -1 {flags} 0 0 0 0 1 2 0 0 20 0 3 0");
        assert!(!exiting(&line("R", 0x40_0040)));
        assert!(!exiting(&line("S", 0x40_0040)));
        assert!(exiting(&line("R", 0x40_0044)));
        assert!(exiting(&line("D", 0x40_0044)));
        assert!(exiting(&line("Z", 0x40_0040)));
        assert!(exiting(&line("X", 0)));
        assert!(!exiting("garbage"));
        // This thread, read back: running, not exiting.
        let tid = nix::unistd::gettid();
        assert!(!exiting(&std::fs::read_to_string(format!("/proc/self/task/{tid}/stat")).unwrap()));
    }

    #[test]
    fn a_second_thread_keeps_the_finisher_in_process() {
        // A thread that stays alive until told: exit_finishing must hand
        // `finish` back instead of exiting the test process.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || rx.recv());
        assert!(other_threads_alive());
        let ran = std::rc::Rc::new(std::cell::Cell::new(false));
        let seen = ran.clone();
        let back = exit_finishing(0, Box::new(move || seen.set(true)));
        assert!(!ran.get());
        back();
        assert!(ran.get());
        drop(tx);
        let _ = other.join();
    }
}
