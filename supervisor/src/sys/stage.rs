//! The exec stage: what runs in the forked child before `execve`.
//!
//! Process tree with namespaces (the normal case):
//!
//! ```text
//! supervisor ── relay (C) ── init (G, PID 1 of a new PID namespace) ── command (H)
//! ```
//!
//! * C dies with the supervisor (PDEATHSIG, then a ppid check to close the race),
//!   G dies with C (PDEATHSIG, then a pipe check), and when G dies the kernel
//!   kills everything left in the namespace: nothing outlives the supervisor,
//!   double-forked or not.
//! * C and G forward INT/TERM/HUP/QUIT/USR1/USR2 down the chain and pass the
//!   exit status up (128+N for death by signal N). G reaps orphans.
//! * H confines itself (rlimits, capabilities, no_new_privs, Landlock,
//!   seccomp, fd hygiene) and returns to std, which calls `execve`.
//!
//! Nothing here allocates: every buffer, path and BPF program was prepared by
//! the supervisor before fork.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
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
    /// The supervisor's pid: the relay checks it is still its parent.
    pub supervisor: libc::pid_t,
    /// Create a user + PID namespace with an init (else: confine and exec directly).
    pub namespaces: bool,
    /// `"OUTER OUTER 1\n"` lines for uid_map and gid_map.
    pub uid_map: Vec<u8>,
    pub gid_map: Vec<u8>,
    /// The join files of the sandbox's cgroups (`tasks` on v1, `cgroup.procs` on v2); writing "0" moves the writer.
    pub cgroup_procs: Vec<OwnedFd>,
    /// The sandbox's v2 cgroup (with `namespaces` only): its directory,
    /// which the relay forks init straight into (clone3 CLONE_INTO_CGROUP)
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
    /// `/dev/null`, for the relay's and init's own stdio.
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

/// Pid the relay or init forwards signals to.
static FORWARD_TO: AtomicI32 = AtomicI32::new(0);

const FORWARDED: [libc::c_int; 6] =
    [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT, libc::SIGUSR1, libc::SIGUSR2];

/// Job control: the supervisor sends these down when Ctrl-Z stops it and
/// `fg`/`bg` continues it. The relay passes them on; init turns them into
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
    /// As for [`Stage::run`]; call in init, inside the new mount namespace.
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

    /// Runs in the forked child. Returns Ok in the process that must exec the
    /// command; the relay and init never return.
    ///
    /// # Safety
    ///
    /// Call only in a freshly forked child (from `CommandExt::pre_exec`):
    /// it installs signal handlers, may fork and `_exit`, and must not allocate.
    pub unsafe fn run(&self) -> io::Result<()> {
        // SAFETY: all calls below are async-signal-safe syscalls on local
        // data; see each comment for the invariant that matters.
        unsafe {
            // The supervisor blocks these to sigwait on them; start clean.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(self.fail(Step::Signals, errno()));
            }
            if self.go_writer >= 0 {
                libc::close(self.go_writer);
            }
            // A session of our own: no controlling terminal to inject into
            // (TIOCSTI), and terminal signals reach the sandbox only through
            // the supervisor's forwarding.
            if libc::setsid() < 0 {
                return Err(self.fail(Step::Session, errno()));
            }
            // Die with the supervisor; check afterwards in case it died first.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(self.fail(Step::ParentGone, errno()));
            }
            if libc::getppid() != self.supervisor {
                return Err(self.fail(Step::ParentGone, libc::ESRCH));
            }
            let born_into = match &self.cgroup_v2 {
                Some((dir, _)) if self.namespaces && clone3_usable() => Some(dir.as_raw_fd()),
                Some((_, procs)) => {
                    Self::join(procs.as_raw_fd()).map_err(|e| self.fail(Step::Cgroup, e))?;
                    None
                }
                None => None,
            };
            for fd in &self.cgroup_procs {
                Self::join(fd.as_raw_fd()).map_err(|e| self.fail(Step::Cgroup, e))?;
            }
            if self.namespaces {
                self.enter_namespaces(born_into)?;
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
                None | Some(GO) => Ok(()),
                Some(_) => Err(self.fail(Step::Go, libc::ECANCELED)),
            }
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
    /// As for [`Stage::run`].
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

    /// Creates the user + PID namespace, forks init (which forks the command)
    /// and turns this process into the relay. Returns only in the command.
    ///
    /// # Safety
    ///
    /// As for [`Stage::run`].
    unsafe fn enter_namespaces(&self, born_into: Option<RawFd>) -> io::Result<()> {
        // SAFETY: single-threaded child after fork; only syscalls on
        // prepared buffers and fds this process owns.
        unsafe {
            // IPC: host SysV segments and queues stay out of reach. Mount: for
            // the private /proc.
            let flags = libc::CLONE_NEWUSER | libc::CLONE_NEWPID | libc::CLONE_NEWIPC | libc::CLONE_NEWNS;
            if libc::unshare(flags) != 0 {
                return Err(self.fail(Step::Unshare, errno()));
            }
            // The supervisor is undumpable, which makes /proc/self/* root-owned:
            // an unprivileged relay could not write its own maps. Only for this.
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
            // Held open by the relay: init sees POLLHUP if the relay is gone.
            let mut alive = [0 as RawFd; 2];
            if libc::pipe2(alive.as_mut_ptr(), libc::O_CLOEXEC) != 0 {
                return Err(self.fail(Step::Fork, errno()));
            }
            let init = match born_into {
                Some(dir) => clone_into_cgroup(dir),
                None => libc::fork(),
            };
            if init < 0 {
                let e = errno();
                let step = match born_into {
                    Some(_) if e != libc::EAGAIN && e != libc::ENOMEM => Step::Cgroup,
                    _ => Step::Fork,
                };
                return Err(self.fail(step, e));
            }
            if init > 0 {
                libc::close(alive[0]);
                self.become_waiter(init, Some(alive[1]), false);
            }
            // Init: PID 1 of the new namespace.
            libc::close(alive[1]);
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(self.fail(Step::ParentGone, errno()));
            }
            let mut pfd = libc::pollfd { fd: alive[0], events: libc::POLLIN, revents: 0 };
            if libc::poll(&mut pfd, 1, 0) != 0 {
                // The relay died before PDEATHSIG was armed.
                return Err(self.fail(Step::ParentGone, libc::ESRCH));
            }
            libc::close(alive[0]);
            self.mount_proc();
            let cmd = libc::fork();
            if cmd < 0 {
                return Err(self.fail(Step::Fork, errno()));
            }
            if cmd > 0 {
                self.become_waiter(cmd, None, true);
            }
            // The command: G is its parent; when G goes, the namespace goes.
            Ok(())
        }
    }

    /// The relay (C) and init (G): forward signals to `child`, pass its exit
    /// status up, and (as init) reap every orphan. Never returns.
    ///
    /// # Safety
    ///
    /// As for [`Stage::run`]; `keep` is an fd this process owns.
    unsafe fn become_waiter(&self, child: libc::pid_t, keep: Option<RawFd>, reap_all: bool) -> ! {
        // SAFETY: single-threaded child; handlers only call kill(2); fds are ours.
        unsafe {
            FORWARD_TO.store(child, Ordering::Relaxed);
            // Init (in the sandbox's PID namespace) stops and continues all
            // of it; the relay passes job control on like the rest.
            let job: extern "C" fn(libc::c_int) = if reap_all { stop_or_continue_all } else { forward };
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
            // Drop everything else, std's exec-error pipe included.
            match keep {
                Some(k) => {
                    libc::close_range(3, (k - 1) as libc::c_uint, 0);
                    libc::close_range((k + 1) as libc::c_uint, libc::c_uint::MAX, 0);
                }
                None => {
                    libc::close_range(3, libc::c_uint::MAX, 0);
                }
            }
            loop {
                let mut status = 0;
                let pid = libc::waitpid(if reap_all { -1 } else { child }, &mut status, 0);
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
    /// As for [`Stage::run`]: only in a forked child, which it confines for good.
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
                // The relay left us undumpable, and our memory still belongs
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

/// Whether clone3 can be called: with a size too small for any version of
/// its arguments the kernel answers EINVAL and creates nothing. A seccomp
/// filter around portcullis (Docker's, for one) answers ENOSYS or EPERM.
fn clone3_usable() -> bool {
    // SAFETY: clone3 fails on the size before it reads the (null) pointer.
    let r = unsafe { libc::syscall(libc::SYS_clone3, std::ptr::null::<CloneArgs>(), 0usize) };
    r == -1 && errno() == libc::EINVAL
}

/// Linux 5.7; the libc crate's constant does not fit its own c_int type.
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// fork(2), the child born in the cgroup whose directory is `dir`: the
/// kernel takes its threadgroup lock only for reading, where moving a
/// process takes it for writing. Returns as fork does (-1 and errno).
///
/// # Safety
///
/// As for [`Stage::run`]: the caller is single-threaded. The child is made
/// by the raw syscall, so glibc's fork handlers do not run in it, and
/// glibc's cached thread id is the parent's: the child must keep to
/// syscalls, (glibc's) fork and `_exit`, as init does.
unsafe fn clone_into_cgroup(dir: RawFd) -> libc::pid_t {
    let args = CloneArgs {
        flags: CLONE_INTO_CGROUP,
        exit_signal: libc::SIGCHLD as u64,
        cgroup: dir as u64,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 reads `args` (sized by the second argument) and,
    // without CLONE_VM or a stack, forks like fork(2).
    unsafe {
        libc::syscall(libc::SYS_clone3, &args as *const CloneArgs, std::mem::size_of::<CloneArgs>()) as libc::pid_t
    }
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

/// Spawns `cmd` through the stage.
pub fn spawn(cmd: &mut std::process::Command, stage: Stage) -> io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt;
    // SAFETY: the closure runs after fork and only calls Stage::run, which is
    // allocation-free and async-signal-safe (see its documentation).
    unsafe {
        cmd.pre_exec(move || stage.run());
    }
    cmd.spawn()
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
