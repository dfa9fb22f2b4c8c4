//! The exec stage: the sandbox's first processes, from the clone to `execve`.
//!
//! Process tree with namespaces (the normal case):
//!
//! ```text
//! supervisor ── init (G, PID 1 of new user, PID, IPC and mount namespaces) ── command (H)
//! ```
//!
//! * The supervisor clones G straight into its namespaces and its cgroup
//!   (clone3 with CLONE_INTO_CGROUP where it can): a multithreaded process
//!   may create namespaces that way, where unshare(2) would need a
//!   single-threaded helper, a fork of its own and one more hop at exit.
//! * G dies with the supervisor (PDEATHSIG, then a look at the go-ahead
//!   pipe to close the race), and when G dies the kernel kills everything
//!   left in the namespace: nothing outlives the supervisor, double-forked
//!   or not.
//! * G writes its id maps, mounts a private /proc, forks H, forwards
//!   INT/TERM/HUP/QUIT/USR1/USR2 to H, stops and continues the whole
//!   namespace on TSTP/CONT, passes H's exit status up (128+N for death by
//!   signal N) and reaps orphans.
//! * H confines itself (rlimits, capabilities, no_new_privs, Landlock,
//!   seccomp, fd hygiene) and execs the command on the supervisor's go-ahead.
//! * Without user namespaces the supervisor's child is H itself.
//!
//! Nothing here allocates or takes a lock after the clone: every buffer,
//! path and BPF program was prepared by the supervisor before, and the
//! clone copied a multithreaded process whose other threads may have held
//! the allocator's locks. Init forks H by the raw syscall for the same reason.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};

use super::errno;

/// One BPF instruction, as `struct sock_filter` (seccompiler's type has the same layout).
pub type Insn = seccompiler::sock_filter;

/// Which setup step failed, reported to the supervisor through the report pipe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    Signals = 1,
    Session,
    ParentGone,
    Cgroup,
    Unshare,
    IdMap,
    Fork,
    Rlimit,
    Capabilities,
    NoNewPrivs,
    Landlock,
    Seccomp,
    Fds,
    Notify,
    /// The supervisor refused the launch (or died) before its go-ahead.
    Go,
    /// Not fatal: the private /proc could not be mounted; the host's stays.
    ProcMount,
}

impl Step {
    /// Every step, in discriminant order (1..); `ProcMount` stays last.
    const ALL: [Step; 16] = [
        Step::Signals,
        Step::Session,
        Step::ParentGone,
        Step::Cgroup,
        Step::Unshare,
        Step::IdMap,
        Step::Fork,
        Step::Rlimit,
        Step::Capabilities,
        Step::NoNewPrivs,
        Step::Landlock,
        Step::Seccomp,
        Step::Fds,
        Step::Notify,
        Step::Go,
        Step::ProcMount,
    ];

    pub fn from_u32(v: u32) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u32 == v)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Step::Signals => "resetting signal handling",
            Step::Session => "starting a new session (setsid)",
            Step::ParentGone => "checking the supervisor is alive",
            Step::Cgroup => "joining the sandbox cgroup",
            Step::Unshare => "creating the user and PID namespaces",
            Step::IdMap => "writing the user-namespace id maps",
            Step::Fork => "forking the sandbox init",
            Step::Rlimit => "setting resource limits",
            Step::Capabilities => "dropping capabilities",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Landlock => "applying the Landlock ruleset",
            Step::Seccomp => "installing a seccomp filter",
            Step::Fds => "closing inherited file descriptors",
            Step::Notify => "installing the approval filter (seccomp user notification)",
            Step::Go => "waiting for the supervisor's go-ahead",
            Step::ProcMount => "mounting the sandbox's own /proc",
        }
    }
}

/// Everything the child needs, prepared before fork.
pub struct Stage {
    /// The supervisor's pid: the child checks it is still its parent (without namespaces).
    pub supervisor: libc::pid_t,
    /// Create a user + PID namespace with an init (else: confine and exec directly).
    pub namespaces: bool,
    /// `"OUTER OUTER 1\n"` lines for uid_map and gid_map.
    pub uid_map: Vec<u8>,
    pub gid_map: Vec<u8>,
    /// The join files of the sandbox's cgroups (`tasks` on v1, `cgroup.procs` on v2); writing "0" moves the writer.
    pub cgroup_procs: Vec<OwnedFd>,
    /// The sandbox's v2 cgroup (with `namespaces` only): its directory,
    /// which init is cloned straight into (clone3 CLONE_INTO_CGROUP)
    /// so that nothing waits for the RCU grace period of a move (see
    /// limits::apply), and its `cgroup.procs`, joined by a write instead
    /// where clone3 is refused (a container's seccomp filter, say).
    pub cgroup_v2: Option<(OwnedFd, OwnedFd)>,
    /// (resource, limit) pairs set as both soft and hard limit.
    pub rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
    /// Fail when the bounding set cannot be emptied (false only for an
    /// unprivileged run without a user namespace, where it cannot be).
    pub require_bounding_drop: bool,
    /// A created Landlock ruleset, or None when Landlock is unavailable (best effort).
    pub ruleset: Option<OwnedFd>,
    /// Landlock rights for the private /proc (the profile's /proc rule), added
    /// by init once it has mounted it.
    pub proc_access: Option<u64>,
    /// When the kernel's reports are read: opened (and refused by Landlock)
    /// right after `landlock_restrict_self`, so the report names this
    /// sandbox's domain (crate::kaudit).
    pub canary: Option<std::ffi::CString>,
    /// Read end of the go-ahead pipe. The supervisor forks the stage as soon
    /// as the sandbox is prepared and decides the launch (audit log, launch
    /// record, gate, kernel-audit watcher) while the namespaces come up and
    /// the command confines itself. Two bytes: [`CONFINE`] or
    /// [`CONFINE_WATCHED`], before which the command does not confine
    /// itself, then [`GO`], before which it does not exec. Anything else, or
    /// EOF, stops it. None: confine (unwatched) and go at once.
    pub go: Option<OwnedFd>,
    /// This process's number for the pipe's write end, closed first thing
    /// in the child so that only the supervisor can ever write (or close) it.
    pub go_writer: RawFd,
    /// Seccomp programs, installed in order (portcullis makes one, or none
    /// when `notify` carries it).
    pub filters: Vec<Vec<Insn>>,
    /// A program whose last part is the approval filter (RET_USER_NOTIF for
    /// what the gate decides), installed last with NEW_LISTENER; the
    /// listener goes to the supervisor over the socket and is closed here.
    pub notify: Option<(Vec<Insn>, OwnedFd)>,
    /// Write end of the report pipe: (step, errno) records on failure.
    pub report: OwnedFd,
    /// `/dev/null`, for init's own stdio.
    pub devnull: OwnedFd,
}

/// First byte: confine yourself; the kernel's Landlock reports are not read.
pub const CONFINE: u8 = b'c';
/// First byte: confine yourself, and the kernel's Landlock reports are read:
/// log denials after exec, and open the canary.
pub const CONFINE_WATCHED: u8 = b'w';
/// Second byte: the launch is decided and recorded; exec the command.
pub const GO: u8 = b'g';

/// `SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV` (Linux 5.19; not in every libc crate).
const SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV: libc::c_ulong = 1 << 5;

/// Pid init forwards signals to.
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

const FORWARDED: [libc::c_int; 6] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

/// Job control: the supervisor sends these down when Ctrl-Z stops it and
/// `fg`/`bg` continues it. Init turns them into
/// SIGSTOP/SIGCONT for every process of the sandbox (its own session has no
/// terminal, so nothing else would stop it, and a sandbox left running
/// reads what the user types into their shell).
const JOB_CONTROL: [libc::c_int; 2] = [libc::SIGTSTP, libc::SIGCONT];

/// Init's handler for [`JOB_CONTROL`]: kill(-1) from a PID namespace's init
/// reaches every other process in it.
extern "C" fn stop_or_continue_all(sig: libc::c_int) {
    let to = if sig == libc::SIGTSTP { libc::SIGSTOP } else { libc::SIGCONT };
    // Only as PID 1 of the sandbox's namespace: anywhere else, kill(-1)
    // would reach every process the user may signal on the host.
    // SAFETY: getpid and kill are async-signal-safe and take plain integers.
    unsafe {
        if libc::getpid() == 1 {
            libc::kill(-1, to);
        }
    }
}

extern "C" fn forward(sig: libc::c_int) {
    let pid = FORWARD_TO.load(Ordering::Relaxed);
    if pid > 0 {
        // SAFETY: kill is async-signal-safe and takes plain integers.
        unsafe { libc::kill(pid, sig) };
    }
}

fn check(r: libc::c_long) -> Result<(), i32> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(())
    }
}

/// Exit code for a wait status: the code, or 128+N for death by signal N.
fn status_code(status: libc::c_int) -> libc::c_int {
    if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else if libc::WIFSIGNALED(status) {
        128 + libc::WTERMSIG(status)
    } else {
        125
    }
}

impl Stage {
    /// Sends a (step, errno) record to the supervisor.
    fn record(&self, step: Step, err: i32) {
        let mut rec = [0u8; 8];
        rec[..4].copy_from_slice(&(step as u32).to_ne_bytes());
        rec[4..].copy_from_slice(&err.to_ne_bytes());
        // SAFETY: writes 8 bytes from a live stack buffer to an fd we own;
        // 8 < PIPE_BUF so the record is atomic.
        unsafe { libc::write(self.report.as_raw_fd(), rec.as_ptr().cast(), rec.len()) };
    }

    /// Records a fatal failure and makes the io::Error std reports through its own pipe.
    fn fail(&self, step: Step, err: i32) -> io::Error {
        self.record(step, err);
        io::Error::from_raw_os_error(err)
    }

    /// Mounts a fresh procfs on /proc (init only: procfs shows the mounter's
    /// PID namespace) and grants the profile's /proc rights on it, so the
    /// sandbox sees its own processes, not the host's command lines.
    ///
    /// # Safety
    ///
    /// As for [`Stage::child`]; call in init, inside the new mount namespace.
    unsafe fn mount_proc(&self) {
        // SAFETY: mount and open take NUL-terminated literals; the Landlock
        // attribute is a live packed struct on the stack.
        unsafe {
            // Nothing mounted here may propagate back to the host.
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            );
            let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
            if libc::mount(c"proc".as_ptr(), c"/proc".as_ptr(), c"proc".as_ptr(), flags, std::ptr::null()) != 0 {
                self.record(Step::ProcMount, errno());
                return;
            }
            if let (Some(ruleset), Some(access)) = (&self.ruleset, self.proc_access) {
                #[repr(C, packed)]
                struct PathBeneath {
                    allowed_access: u64,
                    parent_fd: i32,
                }
                let fd = libc::open(c"/proc".as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
                let attr = PathBeneath { allowed_access: access, parent_fd: fd };
                const LANDLOCK_RULE_PATH_BENEATH: libc::c_int = 1;
                if fd < 0
                    || libc::syscall(
                        libc::SYS_landlock_add_rule,
                        ruleset.as_raw_fd(),
                        LANDLOCK_RULE_PATH_BENEATH,
                        &attr,
                        0u32,
                    ) != 0
                {
                    self.record(Step::ProcMount, errno());
                }
                libc::close(fd);
            }
        }
    }

    fn write_file(path: &[u8], data: &[u8]) -> Result<(), i32> {
        debug_assert_eq!(path.last(), Some(&0));
        // SAFETY: `path` is NUL-terminated (checked above, and all callers
        // pass literals ending in \0); `data` is a live slice.
        unsafe {
            let fd = libc::open(path.as_ptr().cast(), libc::O_WRONLY | libc::O_CLOEXEC);
            if fd < 0 {
                return Err(errno());
            }
            let n = libc::write(fd, data.as_ptr().cast(), data.len());
            let e = errno();
            libc::close(fd);
            if n != data.len() as isize {
                return Err(if n < 0 { e } else { libc::EIO });
            }
        }
        Ok(())
    }

    /// The child of [`start`]: with namespaces, init (PID 1 of the new
    /// namespaces), which forks the command; without, the command itself.
    /// Never returns: the command execs, init waits, and a failure is
    /// written to `done` (as an errno) before `_exit`.
    ///
    /// # Safety
    ///
    /// Call only in the child of [`start`]'s clone: it installs signal
    /// handlers, may fork and `_exit`, and must not allocate or take a lock
    /// (the clone copied a multithreaded process; see [`clone_child`]).
    unsafe fn child(&self, exec: &Exec, done: RawFd, born: bool, alive: Option<RawFd>) -> ! {
        // SAFETY: all calls are async-signal-safe syscalls on prepared data.
        unsafe {
            let failed = match self.prelude(born, alive) {
                Ok(()) if self.namespaces => match raw_fork() {
                    0 => self.command(exec),
                    cmd if cmd > 0 => self.become_waiter(cmd),
                    _ => Err(self.fail(Step::Fork, errno())),
                },
                Ok(()) => self.command(exec),
                Err(e) => Err(e),
            };
            let err = failed.err().and_then(|e| e.raw_os_error()).unwrap_or(libc::EIO);
            libc::write(done, (&err as *const i32).cast(), 4);
            libc::_exit(125)
        }
    }

    /// What runs first in the child: a session of its own, death with the
    /// supervisor, the cgroup, and (init only) the user-namespace maps and a
    /// private /proc.
    ///
    /// # Safety
    ///
    /// As for [`Stage::child`].
    unsafe fn prelude(&self, born: bool, alive: Option<RawFd>) -> io::Result<()> {
        // SAFETY: syscalls on local data and fds this process owns.
        unsafe {
            self.close_go_writer();
            // A session of our own: no controlling terminal to inject into
            // (TIOCSTI), and terminal signals reach the sandbox only through
            // the supervisor's forwarding.
            if libc::setsid() < 0 {
                return Err(self.fail(Step::Session, errno()));
            }
            // Die with the supervisor (with the thread that cloned us, which
            // stays for the whole run); check afterwards in case it died first.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(self.fail(Step::ParentGone, errno()));
            }
            if self.supervisor_gone(alive) {
                return Err(self.fail(Step::ParentGone, libc::ESRCH));
            }
            if let (Some((_, procs)), false) = (&self.cgroup_v2, born) {
                Self::join(procs.as_raw_fd()).map_err(|e| self.fail(Step::Cgroup, e))?;
            }
            for fd in &self.cgroup_procs {
                Self::join(fd.as_raw_fd()).map_err(|e| self.fail(Step::Cgroup, e))?;
            }
            if self.namespaces {
                // The supervisor is undumpable, which makes /proc/self/*
                // root-owned: an unprivileged init could not write its own
                // maps. Only for this.
                libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
                let maps: [(&[u8], &[u8]); 3] = [
                    (b"/proc/self/setgroups\0", b"deny"),
                    (b"/proc/self/uid_map\0", &self.uid_map),
                    (b"/proc/self/gid_map\0", &self.gid_map),
                ];
                for (path, data) in maps {
                    if let Err(e) = Self::write_file(path, data) {
                        return Err(self.fail(Step::IdMap, e));
                    }
                }
                libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
                self.mount_proc();
            }
        }
        Ok(())
    }

    /// Closes our copy of the go-ahead pipe's write end, so that only the
    /// supervisor can write (or close) it. By number: the supervisor's
    /// thread that clones is the one that later writes and closes its end
    /// (run::decide), so the number is still the pipe's at the clone.
    ///
    /// # Safety
    ///
    /// As for [`Stage::child`].
    unsafe fn close_go_writer(&self) {
        if self.go.is_some() && self.go_writer >= 0 {
            // SAFETY: closes an fd of this process (our copy of the pipe's end).
            unsafe { libc::close(self.go_writer) };
        }
    }

    /// Whether the supervisor is gone: `alive` is a pidfd of it (readable
    /// once it has exited); in a new PID namespace getppid() says 0
    /// whoever the parent is. Without a pidfd (Linux before 5.3), a
    /// supervisor gone before PR_SET_PDEATHSIG still stops the command:
    /// its go-ahead pipe ends before the go-ahead.
    ///
    /// # Safety
    ///
    /// As for [`Stage::child`].
    unsafe fn supervisor_gone(&self, alive: Option<RawFd>) -> bool {
        if !self.namespaces {
            // SAFETY: getppid takes no arguments.
            return unsafe { libc::getppid() } != self.supervisor;
        }
        let Some(fd) = alive else { return false };
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: polls one live pollfd without waiting.
        unsafe { libc::poll(&mut pfd, 1, 0) != 0 }
    }

    /// The command: plain signal handling, its stdio, confinement once the
    /// supervisor says how, and exec on its go-ahead. Returns only on failure.
    ///
    /// # Safety
    ///
    /// As for [`Stage::child`].
    unsafe fn command(&self, exec: &Exec) -> io::Result<()> {
        // SAFETY: syscalls on prepared buffers and fds this process owns;
        // `exec`'s pointer arrays are NULL-terminated and point into its
        // live CStrings.
        unsafe {
            // Blocked since the supervisor (every thread of it blocks them
            // to wait for them), with init's handlers or the supervisor's:
            // back to the defaults, with SIGPIPE, which Rust ignores.
            for sig in FORWARDED.iter().chain(&JOB_CONTROL).chain(&[libc::SIGPIPE]) {
                libc::signal(*sig, libc::SIG_DFL);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(self.fail(Step::Signals, errno()));
            }
            for (fd, to) in [(&exec.stdin, 0), (&exec.stdout, 1)] {
                if let Some(fd) = fd {
                    if libc::dup2(fd.as_raw_fd(), to) < 0 {
                        return Err(self.fail(Step::Fds, errno()));
                    }
                }
            }
            // Confined before the launch is decided, so that only exec is
            // left once it is; a refusal still stops it before exec.
            let watched = match self.await_byte()? {
                None | Some(CONFINE) => false,
                Some(CONFINE_WATCHED) => true,
                Some(_) => return Err(self.fail(Step::Go, libc::ECANCELED)),
            };
            self.confine(true, watched)?;
            match self.await_byte()? {
                None | Some(GO) => {}
                Some(_) => return Err(self.fail(Step::Go, libc::ECANCELED)),
            }
            libc::execve(exec.program.as_ptr(), exec.argv.as_ptr(), exec.envp.as_ptr());
            let e = errno();
            if e == libc::ENOEXEC {
                libc::execve(c"/bin/sh".as_ptr(), exec.sh_argv.as_ptr(), exec.envp.as_ptr());
            }
            Err(io::Error::from_raw_os_error(e))
        }
    }

    /// Moves this process into a cgroup by its join file (`tasks`,
    /// `cgroup.procs`): the errno when the kernel refuses.
    fn join(fd: RawFd) -> Result<(), i32> {
        // SAFETY: writes one byte from a static buffer to an fd we own.
        match unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } {
            1 => Ok(()),
            _ => Err(errno()),
        }
    }

    /// Reads the next byte of the go-ahead pipe; None without a pipe. EOF
    /// (the supervisor refused the launch, or died) fails.
    ///
    /// # Safety
    ///
    /// As for [`Stage::child`].
    unsafe fn await_byte(&self) -> io::Result<Option<u8>> {
        let Some(go) = &self.go else { return Ok(None) };
        let mut byte = 0u8;
        loop {
            // SAFETY: reads one byte into a live stack variable from an fd we own.
            let n = unsafe { libc::read(go.as_raw_fd(), (&mut byte as *mut u8).cast(), 1) };
            match n {
                1 => break,
                // EOF: refused, or the supervisor is gone.
                0 => return Err(self.fail(Step::Go, libc::ECANCELED)),
                // The second read runs under the sandbox's own filters: a
                // profile that denies read(2) outright fails here, and says so.
                _ => match errno() {
                    libc::EINTR => continue,
                    e => return Err(self.fail(Step::Go, e)),
                },
            }
        }
        Ok(Some(byte))
    }

    /// Init: forward signals to `child`, pass its exit status up, and reap
    /// every orphan. Never returns.
    ///
    /// # Safety
    ///
    /// As for [`Stage::child`].
    unsafe fn become_waiter(&self, child: libc::pid_t) -> ! {
        // SAFETY: single-threaded child; handlers only call kill(2); fds are ours.
        unsafe {
            FORWARD_TO.store(child, Ordering::Relaxed);
            // Init stops and continues all of the sandbox's PID namespace.
            let job = stop_or_continue_all as extern "C" fn(libc::c_int);
            let handlers = FORWARDED.iter().map(|&s| (s, forward as extern "C" fn(libc::c_int)));
            for (sig, handler) in handlers.chain(JOB_CONTROL.iter().map(|&s| (s, job))) {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = handler as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                libc::sigaction(sig, &sa, std::ptr::null_mut());
            }
            // Our own stdio goes to /dev/null so the command alone holds the
            // client's pipes: its EOF is the client's EOF.
            let null = self.devnull.as_raw_fd();
            for fd in 0..3 {
                libc::dup2(null, fd);
            }
            // Drop everything else: the exec-status pipe among them.
            libc::close_range(3, libc::c_uint::MAX, 0);
            // Signals sent before now are pending (see [`Inherited`]): they reach
            // the command as soon as they are unblocked.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, 0);
                if pid == child {
                    libc::_exit(status_code(status));
                }
                if pid < 0 && errno() != libc::EINTR {
                    libc::_exit(125);
                }
            }
        }
    }

    /// Confines the calling process. Order matters: limits and capability
    /// drops need privilege that no_new_privs, Landlock and seccomp then lock.
    /// With `send_listener` false the approval filter is installed but its
    /// listener closed instead of sent (for the benchmark, whose forked
    /// children have no supervisor to send it to). `watched`: the kernel's
    /// reports are read (see [`CONFINE_WATCHED`]): the Landlock domain logs
    /// denials after exec, and the canary is opened.
    ///
    /// # Safety
    ///
    /// As for [`Stage::child`]: only in a forked child, which it confines for good.
    unsafe fn confine(&self, send_listener: bool, watched: bool) -> io::Result<()> {
        // SAFETY: syscalls on local structs and prepared buffers; the BPF
        // programs are live Vecs owned by `self` for the whole call.
        unsafe {
            for &(res, lim) in &self.rlimits {
                let rl = libc::rlimit { rlim_cur: lim, rlim_max: lim };
                if libc::setrlimit(res, &rl) != 0 {
                    return Err(self.fail(Step::Rlimit, errno()));
                }
            }
            // Securebits first (needs CAP_SETPCAP): uid 0 never regains
            // capabilities through exec or setuid. Unprivileged without a
            // user namespace this fails harmlessly: there is nothing to regain.
            const SECBITS: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08 | 0x10 | 0x20 | 0x40 | 0x80;
            libc::prctl(libc::PR_SET_SECUREBITS, SECBITS, 0, 0, 0);
            if let Err(e) =
                check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0)
                    as libc::c_long)
            {
                if e != libc::EINVAL {
                    return Err(self.fail(Step::Capabilities, e));
                }
            }
            for cap in 0..64 {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                    match errno() {
                        // Past the last capability this kernel knows.
                        libc::EINVAL => break,
                        libc::EPERM if !self.require_bounding_drop => break,
                        e => return Err(self.fail(Step::Capabilities, e)),
                    }
                }
            }
            if let Err(e) = super::clear_capabilities() {
                return Err(self.fail(Step::Capabilities, e));
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(self.fail(Step::NoNewPrivs, errno()));
            }
            if let Some(ruleset) = &self.ruleset {
                let flags = if watched { crate::kaudit::LOG_NEW_EXEC_ON } else { 0 };
                if libc::syscall(libc::SYS_landlock_restrict_self, ruleset.as_raw_fd(), flags) != 0 {
                    return Err(self.fail(Step::Landlock, errno()));
                }
                if let Some(canary) = self.canary.as_ref().filter(|_| watched) {
                    let fd = libc::open(canary.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
            }
            for prog in &self.filters {
                let fprog = libc::sock_fprog {
                    len: prog.len() as libc::c_ushort,
                    filter: prog.as_ptr() as *mut libc::sock_filter,
                };
                if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0u32, &fprog) != 0 {
                    return Err(self.fail(Step::Seccomp, errno()));
                }
            }
            if let Some((prog, sock)) = &self.notify {
                // Init left us undumpable, and our memory still belongs
                // to the host's user namespace until exec: an unprivileged
                // supervisor could not read a parked execve's arguments.
                libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
                let fprog = libc::sock_fprog {
                    len: prog.len() as libc::c_ushort,
                    filter: prog.as_ptr() as *mut libc::sock_filter,
                };
                // Once the gate has received a notification, a signal must not
                // interrupt the wait (5.19+): the gate may already have done
                // the operation (created the file), and an EINTR would tell
                // the caller it did not (THREATS #19). Older kernels: without.
                let mut listener = libc::syscall(
                    libc::SYS_seccomp,
                    libc::SECCOMP_SET_MODE_FILTER,
                    libc::SECCOMP_FILTER_FLAG_NEW_LISTENER | SECCOMP_FILTER_FLAG_WAIT_KILLABLE_RECV,
                    &fprog,
                );
                if listener < 0 && errno() == libc::EINVAL {
                    listener = libc::syscall(
                        libc::SYS_seccomp,
                        libc::SECCOMP_SET_MODE_FILTER,
                        libc::SECCOMP_FILTER_FLAG_NEW_LISTENER,
                        &fprog,
                    );
                }
                if listener < 0 {
                    return Err(self.fail(Step::Notify, errno()));
                }
                let sent = if send_listener { send_fd(sock.as_raw_fd(), listener as RawFd) } else { Ok(()) };
                libc::close(listener as RawFd);
                if let Err(e) = sent {
                    return Err(self.fail(Step::Notify, e));
                }
            }
            // Every inherited fd but stdio closes at exec (CVE-2024-21626: a
            // leaked directory fd walks around Landlock's path checks).
            if libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) != 0 {
                return Err(self.fail(Step::Fds, errno()));
            }
        }
        Ok(())
    }
}

/// `struct clone_args` up to `cgroup` (CLONE_ARGS_SIZE_VER2).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// The namespaces init is cloned into: user (its maps), PID (init is its
/// PID 1, and when init dies the kernel kills everything left in it), IPC
/// (host SysV segments and queues stay out of reach) and mount (for the
/// private /proc).
const NAMESPACES: u64 = (libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWNS) as u64;

/// Linux 5.7; the libc crate's constant does not fit its own c_int type.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// fork(2) into the namespaces of `flags`, the child born in the cgroup
/// whose directory is `cgroup` where clone3 takes one: the kernel then
/// takes its threadgroup lock only for reading, where moving a process
/// takes it for writing. Returns the pid (0 in the child) and whether the
/// child was born in `cgroup`, or the failed step and errno.
///
/// # Safety
///
/// The caller is multithreaded: the child, a copy of it, must keep to
/// syscalls (no allocation, no lock another thread may have held, no
/// glibc fork) and leave by exec or `_exit`, as [`Stage::child`] does.
unsafe fn clone_child(flags: u64, cgroup: Option<RawFd>) -> Result<(libc::pid_t, bool), (Step, i32)> {
    let failed = |e: i32| match e {
        libc::EAGAIN | libc::ENOMEM => Step::Fork,
        _ if flags != 0 => Step::Unshare,
        _ => Step::Fork,
    };
    if let Some(dir) = cgroup {
        let args = CloneArgs {
            flags: flags | CLONE_INTO_CGROUP,
            exit_signal: libc::SIGCHLD as u64,
            cgroup: dir as u64,
            ..CloneArgs::default()
        };
        // SAFETY: clone3 reads `args` (sized by the second argument) and,
        // without CLONE_VM or a stack, forks like fork(2).
        let pid =
            unsafe { libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) }
                as libc::pid_t;
        if pid >= 0 {
            return Ok((pid, true));
        }
        match errno() {
            // Refused by a seccomp filter around portcullis (Docker's, for
            // one) or unknown: fork, and join the cgroup by a write.
            libc::ENOSYS | libc::EPERM | libc::E2BIG => {}
            e @ (libc::EAGAIN | libc::ENOMEM) => return Err((Step::Fork, e)),
            // The cgroup refused the child (or the namespaces were).
            e => return Err((if e == libc::EINVAL || e == libc::ENOSPC { failed(e) } else { Step::Cgroup }, e)),
        }
    }
    // SAFETY: clone with SIGCHLD, no stack and no CLONE_VM forks like fork(2).
    let pid = unsafe { libc::syscall(libc::SYS_clone, flags | libc::SIGCHLD as u64, 0usize, 0usize, 0usize, 0usize) }
        as libc::pid_t;
    match pid {
        p if p >= 0 => Ok((p, false)),
        _ => {
            let e = errno();
            Err((failed(e), e))
        }
    }
}

/// fork(2) by the raw syscall, for init (a copy of a multithreaded
/// process: glibc's fork would take locks another thread may have held
/// when it was cloned). The child keeps to syscalls until it execs.
///
/// # Safety
///
/// As for [`clone_child`].
unsafe fn raw_fork() -> libc::pid_t {
    // SAFETY: as in clone_child, without namespaces.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0usize, 0usize, 0usize, 0usize) };
    pid as libc::pid_t
}

/// Sends `fd` over the unix socket `sock` (SCM_RIGHTS), without allocating.
///
/// # Safety
///
/// `sock` and `fd` must be open fds of this process.
pub(crate) unsafe fn send_fd(sock: RawFd, fd: RawFd) -> Result<(), i32> {
    // SAFETY: every pointer is to a live stack buffer sized for one fd; the
    // CMSG_* helpers only compute offsets inside `space`.
    unsafe {
        let mut space = [0u64; 4];
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) as usize;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<RawFd>(), fd);
        if libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) != 1 {
            return Err(errno());
        }
    }
    Ok(())
}

/// What the command execs, made before the clone: nothing is allocated after it.
pub struct Exec {
    program: CString,
    /// NULL-terminated; point into `_strings`.
    argv: Vec<*const libc::c_char>,
    /// `/bin/sh PROGRAM ARGS...`, for a program the kernel cannot exec
    /// (ENOEXEC: a script without `#!`), as execvp(3) (and std) does.
    sh_argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    _strings: Vec<CString>,
    /// The command's ends of its stdin and stdout pipes (MCP), or None: it
    /// inherits the supervisor's.
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
    /// The supervisor's ends of those pipes, for [`Spawned`].
    ours: Option<(std::process::ChildStdin, std::process::ChildStdout)>,
}

impl Exec {
    /// `argv[0]` first. `piped`: the command's stdin and stdout are pipes,
    /// whose other ends [`Spawned`] holds.
    pub fn new(program: &Path, argv: &[OsString], env: &[(OsString, OsString)], piped: bool) -> io::Result<Exec> {
        let c = |bytes: Vec<u8>| {
            CString::new(bytes)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "nul byte found in provided data"))
        };
        let program = c(program.as_os_str().as_bytes().to_vec())?;
        let mut strings = argv.iter().map(|a| c(a.as_bytes().to_vec())).collect::<io::Result<Vec<_>>>()?;
        for (k, v) in env {
            strings.push(c([k.as_bytes(), b"=", v.as_bytes()].concat())?);
        }
        let pointers = |s: &[CString]| s.iter().map(|s| s.as_ptr()).chain([std::ptr::null()]).collect::<Vec<_>>();
        let (argv, envp) = (pointers(&strings[..argv.len()]), pointers(&strings[argv.len()..]));
        // (A CString's bytes stay where they are when it moves into Exec.)
        let sh_argv = [c"/bin/sh".as_ptr(), program.as_ptr()].into_iter().chain(argv.iter().skip(1).copied()).collect();
        let mut exec = Exec { program, argv, sh_argv, envp, _strings: strings, stdin: None, stdout: None, ours: None };
        if piped {
            let cloexec = nix::fcntl::OFlag::O_CLOEXEC;
            let (in_r, in_w) = nix::unistd::pipe2(cloexec)?;
            let (out_r, out_w) = nix::unistd::pipe2(cloexec)?;
            (exec.stdin, exec.stdout, exec.ours) = (Some(in_r), Some(out_w), Some((in_w.into(), out_r.into())));
        }
        Ok(exec)
    }
}

/// The sandbox's first process, once the command has exec'd: init with
/// namespaces, else the command.
pub struct Spawned {
    pid: libc::pid_t,
    pub stdin: Option<std::process::ChildStdin>,
    pub stdout: Option<std::process::ChildStdout>,
}

impl Spawned {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }
}

/// The forwarded and job-control signals, handled by [`forward`] while
/// the stage's child is cloned (they are blocked in every thread here, so
/// the handler never runs in the supervisor). The kernel drops a signal
/// sent to a PID namespace's init that has no handler for it, even a
/// blocked one; with one inherited, it stays pending until init passes it on.
struct Inherited(Vec<(libc::c_int, libc::sigaction)>);

impl Inherited {
    fn forwarding() -> Inherited {
        let mut saved = Vec::with_capacity(FORWARDED.len() + JOB_CONTROL.len());
        for &sig in FORWARDED.iter().chain(&JOB_CONTROL) {
            // SAFETY: sigaction reads and writes live structs on the stack.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = forward as extern "C" fn(libc::c_int) as usize;
                sa.sa_flags = libc::SA_RESTART;
                libc::sigemptyset(&mut sa.sa_mask);
                let mut old: libc::sigaction = std::mem::zeroed();
                if libc::sigaction(sig, &sa, &mut old) == 0 {
                    saved.push((sig, old));
                }
            }
        }
        Inherited(saved)
    }
}

impl Drop for Inherited {
    fn drop(&mut self) {
        for (sig, old) in &self.0 {
            // SAFETY: puts back the action sigaction gave us.
            unsafe { libc::sigaction(*sig, old, std::ptr::null_mut()) };
        }
    }
}

/// The sandbox's first process, cloned; the command has not exec'd yet.
pub struct Started {
    pid: libc::pid_t,
    /// Where the child writes an errno if it fails; EOF once the command has exec'd.
    done: OwnedFd,
    pipes: Option<(std::process::ChildStdin, std::process::ChildStdout)>,
}

/// Starts the sandbox: clones its first process (init, in new user, PID,
/// IPC and mount namespaces, born in its cgroup; or, without namespaces,
/// the command), which confines the command and execs it on the go-ahead.
/// Returns once cloned: [`Started::exec`] waits for the exec. Call from the
/// thread that stays for the whole run: PR_SET_PDEATHSIG fires when it ends.
pub fn start(stage: Stage, mut exec: Exec) -> io::Result<Started> {
    // The child writes an errno here if it fails; close-on-exec, so the
    // command's exec closes the last write end.
    let (done_rx, done_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (flags, cgroup) = match (stage.namespaces, &stage.cgroup_v2) {
        (true, Some((dir, _))) => (NAMESPACES, Some(dir.as_raw_fd())),
        (true, None) => (NAMESPACES, None),
        (false, _) => (0, None),
    };
    // For init to see whether we are still there (it cannot ask getppid).
    let alive = match stage.namespaces {
        // SAFETY: pidfd_open takes plain integers; its fd is close-on-exec.
        true => match unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id(), 0) } {
            // SAFETY: a new fd, owned by nothing else.
            fd if fd >= 0 => Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
            _ => None,
        },
        false => None,
    };
    let inherited = Inherited::forwarding();
    // SAFETY: the child only runs Stage::child, which keeps to syscalls on
    // data prepared above and never returns.
    let cloned = unsafe { clone_child(flags, cgroup) };
    if let Ok((0, born)) = cloned {
        // SAFETY: in the child of the clone, as Stage::child requires.
        unsafe { stage.child(&exec, done_tx.as_raw_fd(), born, alive.as_ref().map(|a| a.as_raw_fd())) }
    }
    drop(inherited);
    let pid = match cloned {
        Ok((pid, _)) => pid,
        Err((step, e)) => {
            stage.record(step, e);
            return Err(io::Error::from_raw_os_error(e));
        }
    };
    // Our copies of the child's fds: the pipes' ends, the ruleset, the
    // report pipe's write end, the cgroup files.
    let pipes = exec.ours.take();
    drop((done_tx, exec, stage, alive));
    Ok(Started { pid, done: done_rx, pipes })
}

impl Started {
    /// Waits until the command has exec'd, or for the error that stopped
    /// it (a setup step's is also in the report pipe; the child is reaped).
    /// The go-ahead pipe must be written or closed before: the command
    /// waits for it.
    pub fn exec(self) -> io::Result<Spawned> {
        let Started { pid, done, pipes } = self;
        let mut err = [0u8; 4];
        let read = loop {
            match nix::unistd::read(done.as_raw_fd(), &mut err) {
                Err(nix::errno::Errno::EINTR) => continue,
                r => break r,
            }
        };
        let (stdin, stdout) = match pipes {
            Some((i, o)) => (Some(i), Some(o)),
            None => (None, None),
        };
        match read {
            Ok(0) => Ok(Spawned { pid, stdin, stdout }),
            other => {
                let e = match other {
                    Ok(4) => i32::from_ne_bytes(err),
                    Err(e) => e as i32,
                    Ok(_) => libc::EIO,
                };
                // It is on its way out (or stuck before its go-ahead): reap it.
                let p = nix::unistd::Pid::from_raw(pid);
                let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
                let _ = nix::sys::wait::waitpid(p, None);
                Err(io::Error::from_raw_os_error(e))
            }
        }
    }
}

/// Reads the records the child sent so far, without blocking.
pub fn read_reports(fd: &OwnedFd) -> Vec<(Step, i32)> {
    let mut out = Vec::new();
    loop {
        let mut rec = [0u8; 8];
        // SAFETY: reads at most 8 bytes into a live stack buffer from an fd
        // we own (opened O_NONBLOCK by report_pipe).
        let n = unsafe { libc::read(fd.as_raw_fd(), rec.as_mut_ptr().cast(), rec.len()) };
        if n != 8 {
            return out;
        }
        let step = u32::from_ne_bytes([rec[0], rec[1], rec[2], rec[3]]);
        let err = i32::from_ne_bytes([rec[4], rec[5], rec[6], rec[7]]);
        if let Some(s) = Step::from_u32(step) {
            out.push((s, err));
        }
    }
}

/// A close-on-exec pipe whose read end does not block.
pub fn report_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)?;
    Ok((r, w))
}

/// Makes this process undumpable: a sandboxed process of the same uid cannot
/// read the supervisor's memory through /proc or ptrace.
pub fn set_undumpable() {
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
}

/// For `cargo xtask bench`: mean nanoseconds of fork → child `_exit` → reap,
/// without and with [`Stage::confine`] in the child. The difference is what
/// installing the capabilities drop, Landlock and seccomp costs per launch.
pub fn time_confine(stage: &Stage, runs: u32) -> (u128, u128) {
    let once = |confine: bool| -> u128 {
        let t = std::time::Instant::now();
        // SAFETY: the child only runs Stage::confine (allocation-free and
        // async-signal-safe) and _exit; the parent reaps the child it made.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                if confine && stage.confine(false, false).is_err() {
                    libc::_exit(1);
                }
                libc::_exit(0);
            }
            let mut status = 0;
            libc::waitpid(pid, &mut status, 0);
        }
        t.elapsed().as_nanos()
    };
    let mean = |confine: bool| (0..runs).map(|_| once(confine)).sum::<u128>() / runs.max(1) as u128;
    let _warm = (mean(false), mean(true));
    (mean(false), mean(true))
}

#[cfg(test)]
mod tests {
    use super::Step;

    #[test]
    fn every_step_survives_the_report_pipe() {
        // A step missing from ALL would be dropped on the supervisor's side:
        // the /proc warning once was, silently.
        for (i, s) in Step::ALL.iter().enumerate() {
            assert_eq!(*s as u32, i as u32 + 1);
            assert_eq!(Step::from_u32(*s as u32), Some(*s));
        }
        assert_eq!(Step::ALL.len() as u32, Step::ProcMount as u32);
        assert_eq!(Step::from_u32(0), None);
    }
}
