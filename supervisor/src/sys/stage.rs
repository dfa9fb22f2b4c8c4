//! The exec stage: the sandbox's first processes, from the clone to `execve`.
//!
//! Process tree with namespaces (the normal case):
//!
//! ```text
//! supervisor ── init (G, PID 1 of new user, PID, IPC and mount namespaces) ── command (H)
//! ```
//!
//! * The supervisor clones G ([`begin`]) before it has even loaded the
//!   profile, while it is still one thread: G writes its id maps and mounts
//!   its /proc while the supervisor loads, compiles and prepares, and then
//!   waits for its configuration ([`Early::configure`]: the Landlock
//!   ruleset, the seccomp programs, limits, cgroups and what to exec, over
//!   a socket). A multithreaded process may create namespaces by clone
//!   too; only unshare(2) would need a single-threaded helper.
//! * G dies with the supervisor (PDEATHSIG, then a look at a pidfd of it
//!   to close the race), and when G dies the kernel kills everything left
//!   in the namespace: nothing outlives the supervisor, double-forked or not.
//! * Once configured, G forks H, straight into the sandbox's v2 cgroup where
//!   clone3 takes one; elsewhere H starts in G's memory (clone CLONE_VM, a
//!   stack of its own: [`Birth::start_sharing`]) and joins its cgroups by a
//!   write, until its exec makes it a process of its own. Then G forwards
//!   INT/TERM/HUP/QUIT/USR1/USR2 to H, stops and continues the whole
//!   namespace on TSTP/CONT, passes H's exit status up (128+N for death by
//!   signal N) and reaps orphans.
//! * H joins its cgroups (unless born in one), confines itself (rlimits,
//!   capabilities, no_new_privs, Landlock, seccomp, fd hygiene) and execs
//!   the command on the supervisor's go-ahead.
//! * Without user namespaces the supervisor's child is H itself.
//!
//! Nothing here allocates or takes a lock after the clone: the clone may
//! copy a multithreaded process (when a launch is not a `run`'s first),
//! whose other threads may have held the allocator's locks. The
//! configuration arrives in a buffer mapped by mmap(2) and is read in
//! place; init forks (or clones) H by the raw syscall for the same reason.

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
    /// Its configuration could not be received.
    Config,
    /// The supervisor refused the launch (or died) before its go-ahead.
    Go,
    /// Not fatal: the private /proc could not be mounted; the host's stays.
    ProcMount,
}

impl Step {
    /// Every step, in discriminant order (1..); `ProcMount` stays last.
    const ALL: [Step; 17] = [
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
        Step::Config,
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
            Step::Unshare => "creating the user, PID, IPC and mount namespaces",
            Step::IdMap => "writing the user-namespace id maps",
            Step::Fork => "forking the sandbox's processes",
            Step::Rlimit => "setting resource limits",
            Step::Capabilities => "dropping capabilities",
            Step::NoNewPrivs => "setting no_new_privs",
            Step::Landlock => "applying the Landlock ruleset",
            Step::Seccomp => "installing a seccomp filter",
            Step::Fds => "closing inherited file descriptors",
            Step::Notify => "installing the approval filter (seccomp user notification)",
            Step::Config => "receiving the sandbox's configuration from the supervisor",
            Step::Go => "waiting for the supervisor's go-ahead",
            Step::ProcMount => "mounting the sandbox's own /proc",
        }
    }
}

/// What the command is confined by, prepared by the supervisor once the
/// profile is known, and sent to the stage ([`Early::configure`]).
pub struct Stage {
    /// The join files of the sandbox's cgroups (`tasks` on v1, `cgroup.procs` on v2); writing "0" moves the writer.
    pub cgroup_procs: Vec<OwnedFd>,
    /// The sandbox's v2 cgroup (with namespaces only): its directory, which
    /// the command is cloned straight into (clone3 CLONE_INTO_CGROUP) so
    /// that nothing waits for the RCU grace period of a move (see
    /// limits::apply), and its `cgroup.procs`, joined by a write instead
    /// where clone3 is refused (a container's seccomp filter, say).
    pub cgroup_v2: Option<(OwnedFd, OwnedFd)>,
    /// (resource, limit) pairs set as both soft and hard limit.
    pub rlimits: Vec<(libc::__rlimit_resource_t, libc::rlim_t)>,
    /// Fail when the bounding set cannot be emptied (false only for an
    /// unprivileged run without a user namespace, where it cannot be).
    pub require_bounding_drop: bool,
    /// A created Landlock ruleset, or None when Landlock is unavailable
    /// (best effort). Its path rules may still be on their way when the
    /// stage receives it (`run` adds them while the stage forks the
    /// command): the supervisor writes the confine byte ([`Stage::go`])
    /// only once they are in, and Landlock takes the rules a ruleset holds
    /// when `landlock_restrict_self` is called.
    pub ruleset: Option<OwnedFd>,
    /// Landlock rights for the private /proc (the profile's /proc rule),
    /// added by the command for the /proc init mounted.
    pub proc_access: Option<u64>,
    /// When the kernel's reports are read: opened (and refused by Landlock)
    /// right after `landlock_restrict_self`, so the report names this
    /// sandbox's domain (crate::kaudit).
    pub canary: Option<CString>,
    /// Read end of the go-ahead pipe. The supervisor configures the stage
    /// as soon as the sandbox is prepared and decides the launch (audit log,
    /// launch record, gate, kernel-audit watcher) while the command confines
    /// itself. Two bytes: [`CONFINE`] or [`CONFINE_WATCHED`], before which
    /// the command does not confine itself, then [`GO`], before which it
    /// does not exec. Anything else, or EOF, stops it. None: confine
    /// (unwatched) and go at once.
    pub go: Option<OwnedFd>,
    /// Seccomp programs, installed in order (portcullis makes one, or none
    /// when `notify` carries it).
    pub filters: Vec<Vec<Insn>>,
    /// A program whose last part is the approval filter (RET_USER_NOTIF for
    /// what the gate decides), installed last with NEW_LISTENER; the
    /// listener goes to the supervisor over the socket and is closed here.
    pub notify: Option<(Vec<Insn>, OwnedFd)>,
    /// The command installs the seccomp programs before it waits for its
    /// confine byte, and restricts itself with Landlock once the byte
    /// comes: the programs' install (the kernel compiles them, a tenth of a
    /// millisecond and more here) overlaps the supervisor adding the path
    /// rules. False where the programs could refuse or park a call the
    /// command makes between them and the byte's restriction, or on a
    /// failure there (sandbox::filters_first): then both wait for the
    /// byte, Landlock first. The limits, capability drops and
    /// no_new_privs come before the byte either way.
    pub filters_first: bool,
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

/// The first byte of init's message with the command's exit status (then
/// its code, 4 bytes), on the configuration socket: unlike the byte of the
/// mount namespace's message (`send_fd`), never 0.
const STATUS_TAG: u8 = b'S';

/// Sends a (step, errno) record to the supervisor through the report pipe's write end.
fn record(report: RawFd, step: Step, err: i32) {
    let mut rec = [0u8; 8];
    rec[..4].copy_from_slice(&(step as u32).to_ne_bytes());
    rec[4..].copy_from_slice(&err.to_ne_bytes());
    // SAFETY: writes 8 bytes from a live stack buffer to an fd we own;
    // 8 < PIPE_BUF so the record is atomic.
    unsafe { libc::write(report, rec.as_ptr().cast(), rec.len()) };
}

/// Records a fatal failure and makes the io::Error the done pipe carries.
fn fail(report: RawFd, step: Step, err: i32) -> io::Error {
    record(report, step, err);
    io::Error::from_raw_os_error(err)
}

/// How many times the command looks at the go-ahead pipe before it sleeps
/// on it ([`Config::spin_for_byte`]): each look is two syscalls, about a
/// microsecond here, so at most a few hundred microseconds of a CPU the
/// command has to itself.
const GO_SPINS: u32 = 256;

/// Set by init once it has emptied its capability bounding set (which the
/// command inherits): the command's confinement then skips its own
/// forty-odd prctl calls. Process memory, copied by the fork.
static BOUNDING_SET_EMPTY: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Empties the calling process's capability bounding set, up to the last
/// capability this kernel knows, and says so in [`BOUNDING_SET_EMPTY`];
/// on any error it stops and says nothing (the command's confinement then
/// drops them itself, and decides what an error means). Only exec and
/// capset read the bounding set, and init does neither: it does this while
/// it waits for its configuration, off the command's path.
///
/// # Safety
///
/// As for [`Birth::run`].
unsafe fn empty_bounding_set() {
    for cap in 0..64 {
        // SAFETY: prctl on this process.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) } != 0 {
            if errno() == libc::EINVAL && cap > 0 {
                BOUNDING_SET_EMPTY.store(true, std::sync::atomic::Ordering::Relaxed);
            }
            return;
        }
    }
}

/// What the stage's first process is given at its clone, before the
/// profile is known: all of it is the supervisor's, not the profile's.
struct Birth {
    /// The supervisor's pid: the child checks it is still its parent (without namespaces).
    supervisor: libc::pid_t,
    /// Init in new user, PID, IPC and mount namespaces (else: the child is the command).
    namespaces: bool,
    /// `"OUTER OUTER 1\n"` lines for uid_map and gid_map.
    uid_map: Vec<u8>,
    gid_map: Vec<u8>,
    /// Write end of the report pipe: (step, errno) records on failure.
    report: RawFd,
    /// `/dev/null`, for init's own stdio.
    devnull: RawFd,
    /// Our end of the configuration socket.
    sock: RawFd,
    /// The supervisor's end of it, closed first thing in the child.
    supervisors_end: RawFd,
    /// Where the child writes an errno if it fails; closes at the command's exec.
    done: RawFd,
    /// A pidfd of the supervisor (readable once it has exited), if the kernel has them.
    alive: Option<RawFd>,
    /// The CPUs the command may run on once it execs: the supervisor's
    /// when it cloned init (see Early::configure).
    cpus: Option<libc::cpu_set_t>,
    /// Those without the CPU the supervisor's thread cloned it on, where
    /// there is another ([`cpus_but_this`]).
    away: Option<libc::cpu_set_t>,
}

impl Birth {
    /// The child of [`begin`]: with namespaces, init (PID 1 of the new
    /// namespaces), which forks the command once configured; without, the
    /// command itself. Never returns: the command execs, init waits, and a
    /// failure is written to `done` (as an errno) before `_exit`.
    ///
    /// # Safety
    ///
    /// Call only in the child of [`begin`]'s clone: it installs signal
    /// handlers, may fork and `_exit`, and must not allocate or take a lock
    /// (the clone may have copied a multithreaded process; see [`clone_child`]).
    unsafe fn run(&self) -> ! {
        // SAFETY: all calls are async-signal-safe syscalls on prepared data.
        unsafe {
            // Off the supervisor's CPU first. A new process may run ahead
            // of its creator, on the creator's CPU (here when our parent,
            // woken by the supervisor's exec, had asked for a reschedule),
            // and would do its setup there while the supervisor waited;
            // the supervisor moves it too, should it not have run yet.
            if let Some(set) = &self.away {
                libc::sched_setaffinity(0, CPU_SET_SIZE, set);
            }
            let failed = match self.prelude() {
                Err(e) => Err(e),
                // Init forks the command once configured, straight into the
                // sandbox's v2 cgroup if there is one. (Forked before, and
                // waiting for the configuration itself, it gained nothing
                // measurable here, and could only join a v2 cgroup by a write.)
                Ok(proc_dir) => self.configured(proc_dir, |config| {
                    if !self.namespaces {
                        return config.command(false);
                    }
                    // Before the fork, which leaves the command queued
                    // behind init on init's CPU until init waits.
                    self.install_forwarding();
                    let cgroup = config.fd(config.header().cgroup_dir_fd);
                    if cgroup.is_none() {
                        if let Some(cmd) = self.start_sharing(config) {
                            self.become_waiter(cmd)
                        }
                    }
                    match clone_child(0, cgroup) {
                        Ok((0, born)) => config.command(born),
                        Ok((cmd, _)) => self.become_waiter(cmd),
                        Err((step, e)) => Err(fail(self.report, step, e)),
                    }
                }),
            };
            let err = failed.err().and_then(|e| e.raw_os_error()).unwrap_or(libc::EIO);
            libc::write(self.done, (&err as *const i32).cast(), 4);
            libc::_exit(125)
        }
    }

    /// Receives the configuration, then goes on with `then`.
    ///
    /// # Safety
    ///
    /// As for [`Birth::run`].
    /// Runs `then` once the configuration has come. The capability
    /// bounding set is emptied first, while init waits for it
    /// ([`empty_bounding_set`]).
    unsafe fn configured(&self, proc_dir: RawFd, then: impl FnOnce(&Config) -> io::Result<()>) -> io::Result<()> {
        // SAFETY: prctl on this process.
        unsafe { empty_bounding_set() };
        // SAFETY: as for this function.
        match unsafe { self.receive() } {
            Ok(mut config) => {
                config.proc_dir = proc_dir;
                config.cpus = self.cpus;
                then(&config)
            }
            Err(e) => Err(fail(self.report, Step::Config, e)),
        }
    }

    /// What runs first in the child: a session of its own, death with the
    /// supervisor and (init only) the user-namespace maps and a private
    /// /proc, whose O_PATH fd it returns (-1 without one).
    ///
    /// # Safety
    ///
    /// As for [`Birth::run`].
    unsafe fn prelude(&self) -> io::Result<RawFd> {
        // SAFETY: syscalls on local data and fds this process owns.
        unsafe {
            // Only the supervisor may close (or write) its end: its EOF is
            // ours. By number: the thread that cloned us made the socket
            // just before, so the number is still the socket's.
            libc::close(self.supervisors_end);
            // A session of our own: no controlling terminal to inject into
            // (TIOCSTI), and terminal signals reach the sandbox only through
            // the supervisor's forwarding.
            if libc::setsid() < 0 {
                return Err(fail(self.report, Step::Session, errno()));
            }
            // Die with the supervisor (with the thread that cloned us, which
            // stays for the whole run); check afterwards in case it died first.
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(fail(self.report, Step::ParentGone, errno()));
            }
            if self.supervisor_gone() {
                return Err(fail(self.report, Step::ParentGone, libc::ESRCH));
            }
            if !self.namespaces {
                return Ok(-1);
            }
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
                if let Err(e) = write_file(path, data) {
                    return Err(fail(self.report, Step::IdMap, e));
                }
            }
            libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
            if libc::unshare(UNSHARED) != 0 {
                return Err(fail(self.report, Step::Unshare, errno()));
            }
            let proc_dir = self.mount_proc();
            self.lend_mount_ns();
            Ok(proc_dir)
        }
    }

    /// Mounts a fresh procfs on /proc (init only: procfs shows the mounter's
    /// PID namespace), so the sandbox sees its own processes, not the host's
    /// command lines. Returns an O_PATH fd of it, for the command to grant
    /// the profile's /proc rights on (-1 when it could not be mounted).
    ///
    /// # Safety
    ///
    /// As for [`Birth::run`]; call in init, inside the new mount namespace.
    unsafe fn mount_proc(&self) -> RawFd {
        // SAFETY: mount and open take NUL-terminated literals.
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
                record(self.report, Step::ProcMount, errno());
                return -1;
            }
            let fd = libc::open(c"/proc".as_ptr(), libc::O_PATH | libc::O_CLOEXEC);
            if fd < 0 {
                record(self.report, Step::ProcMount, errno());
            }
            fd
        }
    }

    /// Sends the supervisor our mount namespace (over the configuration
    /// socket, which it reads once the command has exec'd). Whoever holds
    /// the last reference tears the namespace down, and that waits for an
    /// RCU grace period (0.1 to 0.2 ms here): held by the supervisor, that
    /// is no longer init, between the command's end and the run's status,
    /// but the supervisor's finisher, after. Nothing fails without it.
    ///
    /// # Safety
    ///
    /// As for [`Birth::run`]; call in init, once it has mounted its /proc.
    unsafe fn lend_mount_ns(&self) {
        // SAFETY: open takes a NUL-terminated literal; the fd is ours.
        unsafe {
            let fd = libc::open(c"/proc/self/ns/mnt".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC);
            if fd >= 0 {
                let _ = send_fd(self.sock, fd);
                libc::close(fd);
            }
        }
    }

    /// Whether the supervisor is gone: `alive` is a pidfd of it (readable
    /// once it has exited); in a new PID namespace getppid() says 0
    /// whoever the parent is. Without a pidfd (Linux before 5.3), a
    /// supervisor gone before PR_SET_PDEATHSIG still stops the command:
    /// its configuration socket ends before the configuration.
    ///
    /// # Safety
    ///
    /// As for [`Birth::run`].
    unsafe fn supervisor_gone(&self) -> bool {
        if !self.namespaces {
            // SAFETY: getppid takes no arguments.
            return unsafe { libc::getppid() } != self.supervisor;
        }
        let Some(fd) = self.alive else { return false };
        let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: polls one live pollfd without waiting.
        unsafe { libc::poll(&mut pfd, 1, 0) != 0 }
    }

    /// Waits for the configuration ([`Early::configure`]): its header and
    /// fds first, then the rest into a buffer mapped for it. The errno on
    /// failure; ECANCELED when the supervisor closed the socket before the
    /// end (it refused the launch, or died).
    ///
    /// # Safety
    ///
    /// As for [`Birth::run`].
    unsafe fn receive(&self) -> Result<Config, i32> {
        const HEADER: usize = std::mem::size_of::<Header>();
        // SAFETY: recvmsg and read write into live stack buffers within
        // their sizes; the CMSG_* helpers compute offsets inside `space`;
        // mmap returns a fresh private mapping of `len` bytes, or fails.
        unsafe {
            let mut header = [0u64; HEADER / 8];
            let mut fds = [-1; MAX_FDS];
            let mut nfds = 0;
            let mut got = 0;
            while got < HEADER {
                let mut space = [0u64; CMSG_WORDS];
                let mut iov =
                    libc::iovec { iov_base: header.as_mut_ptr().cast::<u8>().add(got).cast(), iov_len: HEADER - got };
                let mut msg: libc::msghdr = std::mem::zeroed();
                msg.msg_iov = &mut iov;
                msg.msg_iovlen = 1;
                msg.msg_control = space.as_mut_ptr().cast();
                msg.msg_controllen = std::mem::size_of_val(&space);
                let n = libc::recvmsg(self.sock, &mut msg, libc::MSG_CMSG_CLOEXEC);
                match n {
                    0 => return Err(libc::ECANCELED),
                    n if n < 0 => match errno() {
                        libc::EINTR => continue,
                        e => return Err(e),
                    },
                    n => got += n as usize,
                }
                if msg.msg_flags & libc::MSG_CTRUNC != 0 {
                    return Err(libc::EMSGSIZE);
                }
                let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
                while !cmsg.is_null() {
                    if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                        let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                        let count =
                            (*cmsg).cmsg_len.saturating_sub(libc::CMSG_LEN(0) as usize) / std::mem::size_of::<RawFd>();
                        for i in 0..count {
                            if nfds == MAX_FDS {
                                return Err(libc::EMSGSIZE);
                            }
                            fds[nfds] = std::ptr::read_unaligned(data.add(i));
                            nfds += 1;
                        }
                    }
                    cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
                }
            }
            let head: Header = std::ptr::read(header.as_ptr().cast());
            if head.len < HEADER as u64 || head.len > MAX_CONFIG || head.nfds != nfds as u64 {
                return Err(libc::EPROTO);
            }
            let len = head.len as usize;
            let base = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(errno());
            }
            let base = base.cast::<u8>();
            std::ptr::copy_nonoverlapping(header.as_ptr().cast::<u8>(), base, HEADER);
            let mut at = HEADER;
            while at < len {
                match libc::read(self.sock, base.add(at).cast(), len - at) {
                    0 => return Err(libc::ECANCELED),
                    n if n < 0 => match errno() {
                        libc::EINTR => continue,
                        e => return Err(e),
                    },
                    n => at += n as usize,
                }
            }
            let mut config = Config { base, len, fds, nfds, report: self.report, proc_dir: -1, cpus: None };
            config.settle()?;
            Ok(config)
        }
    }

    /// Init's signal handlers: [`FORWARDED`] go to the command once there
    /// is one ([`become_waiter`](Self::become_waiter)), [`JOB_CONTROL`]
    /// stops or continues the whole sandbox. Installed before the command
    /// is forked (which resets them to the defaults), while signals are
    /// still blocked.
    ///
    /// # Safety
    ///
    /// As for [`Birth::run`].
    unsafe fn install_forwarding(&self) {
        // SAFETY: sigaction on local structs; handlers only call kill(2).
        unsafe {
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
        }
    }

    /// Starts the command in init's memory (clone CLONE_VM, on a stack of
    /// its own), where it is not born in a cgroup (it joins by a write):
    /// no copy of init's page tables, and none of the copy-on-write
    /// faults that follow a fork, on the way to the command's exec (about
    /// 0.1 ms here). Until it execs it shares init's memory as a vfork
    /// child would, but runs beside it: it only reads the configuration,
    /// which init no longer touches, and its own stack; init only waits,
    /// and reads no errno the command could have set (see
    /// [`become_waiter`](Self::become_waiter)). Its fd table and signal
    /// handlers are its own copies, as after a fork. None when it cannot
    /// start: init forks it instead.
    ///
    /// # Safety
    ///
    /// As for [`Birth::run`]; `config` must stay where it is until the
    /// command has exec'd or exited (init never returns from its caller).
    unsafe fn start_sharing(&self, config: &Config) -> Option<libc::pid_t> {
        const STACK: usize = 1 << 20;
        const GUARD: usize = 4096;
        // SAFETY: a fresh private mapping, checked; its lowest page made
        // inaccessible (an overflow faults instead of writing below); the
        // start's data is written at its top, where the command's stack
        // begins below it, and init never touches it again.
        unsafe {
            let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK | libc::MAP_NORESERVE;
            let stack = libc::mmap(std::ptr::null_mut(), STACK, libc::PROT_READ | libc::PROT_WRITE, flags, -1, 0);
            if stack == libc::MAP_FAILED {
                return None;
            }
            if libc::mprotect(stack, GUARD, libc::PROT_NONE) != 0 {
                libc::munmap(stack, STACK);
                return None;
            }
            let at = stack.cast::<u8>().add(STACK - 64).cast::<SharedStart>();
            std::ptr::write(at, SharedStart { config, done: self.done });
            let pid = libc::clone(command_entry, at.cast(), libc::CLONE_VM | libc::SIGCHLD, at.cast());
            if pid <= 0 {
                libc::munmap(stack, STACK);
                return None;
            }
            Some(pid)
        }
    }

    /// Init: forward signals to `child`, pass its exit status up, and reap
    /// every orphan. Never returns.
    ///
    /// # Safety
    ///
    /// As for [`Birth::run`].
    unsafe fn become_waiter(&self, child: libc::pid_t) -> ! {
        // SAFETY: single-threaded child; handlers only call kill(2); fds are ours.
        unsafe {
            // The handlers are in place (install_forwarding); signals still
            // blocked.
            FORWARD_TO.store(child, Ordering::Relaxed);
            // Our own stdio goes to /dev/null so the command alone holds the
            // client's pipes: its EOF is the client's EOF.
            for fd in 0..3 {
                libc::dup2(self.devnull, fd);
            }
            // Drop everything else but our end of the configuration
            // socket (the command's status goes up it): the exec-status
            // pipe and the configuration among them. (The socket is
            // close-on-exec: the command's copy goes with its exec.)
            let sock = self.sock;
            if sock > 3 {
                libc::close_range(3, (sock - 1) as libc::c_uint, 0);
            }
            libc::close_range((sock + 1).max(3) as libc::c_uint, libc::c_uint::MAX, 0);
            // Signals sent before now are pending (see [`Inherited`]): they reach
            // the command as soon as they are unblocked.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            loop {
                let mut status = 0;
                let pid = libc::waitpid(-1, &mut status, 0);
                if pid == child {
                    // The status first, then our exit (which the supervisor
                    // need not wait for: see Spawned::status).
                    let code = status_code(status);
                    let mut msg = [STATUS_TAG; 5];
                    msg[1..].copy_from_slice(&code.to_ne_bytes());
                    libc::send(sock, msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT);
                    libc::_exit(code);
                }
                // Interrupted (a signal passed on), or worse: while the
                // command lives, wait again. Not by errno: a command that
                // shares our memory until its exec (start_sharing) writes
                // the same errno.
                if pid < 0 && libc::kill(child, 0) != 0 {
                    libc::_exit(125);
                }
            }
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

/// Moves this process into a cgroup by its join file (`tasks`,
/// `cgroup.procs`): the errno when the kernel refuses.
fn join(fd: RawFd) -> Result<(), i32> {
    // SAFETY: writes one byte from a static buffer to an fd we own.
    match unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } {
        1 => Ok(()),
        _ => Err(errno()),
    }
}

/// How many fds a configuration may carry (it needs at most ten).
const MAX_FDS: usize = 16;
/// Control-message room for [`MAX_FDS`] fds (CMSG_SPACE(64) is 80 bytes).
const CMSG_WORDS: usize = 16;
/// A configuration larger than this is refused (the command line and
/// environment are its only parts of any size).
const MAX_CONFIG: u64 = 1 << 28;
/// An absent offset, fd slot or rule.
const NONE: u64 = u64::MAX;

/// `n` items at byte offset `at` of a configuration.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
struct Span {
    at: u64,
    n: u64,
}

/// The start of a configuration: a [`Stage`] and an [`Exec`] as the
/// stage's first process receives them. Offsets are bytes from the
/// header's first, 8-aligned; `*_fd` fields are indexes into the fds sent
/// with it (SCM_RIGHTS), in the order sent, or [`NONE`]. String tables
/// (`argv`, `sh_argv`, `envp`) are offsets of NUL-terminated strings,
/// ending in [`NONE`]; the receiver turns them into pointers in place.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct Header {
    /// Every byte of the configuration, this header's included.
    len: u64,
    nfds: u64,
    require_bounding_drop: u64,
    proc_access: u64,
    filters_first: u64,
    ruleset_fd: u64,
    go_fd: u64,
    notify_fd: u64,
    stdin_fd: u64,
    stdout_fd: u64,
    cgroup_dir_fd: u64,
    cgroup_procs_v2_fd: u64,
    /// fd indexes, not bytes.
    cgroup_procs: Span,
    /// (resource, limit) pairs of u64.
    rlimits: Span,
    /// Spans of instructions, one per program.
    filters: Span,
    /// Instructions, or `at` = NONE.
    notify: Span,
    canary: u64,
    program: u64,
    argv: u64,
    sh_argv: u64,
    envp: u64,
}

const HEADER: usize = std::mem::size_of::<Header>();
// A string table entry becomes a pointer in its place.
const _: () = assert!(std::mem::size_of::<*const libc::c_char>() == 8 && HEADER.is_multiple_of(8));

/// A configuration to send: its bytes ([`Header`] first) and the fds its
/// header names, which stay the sender's to close.
struct Wire {
    bytes: Vec<u8>,
    fds: Vec<RawFd>,
}

/// Appends `bytes` at the next 8-aligned offset of `out`, which it returns.
fn put(out: &mut Vec<u8>, bytes: &[u8]) -> u64 {
    out.resize(out.len().next_multiple_of(8), 0);
    let at = out.len() as u64;
    out.extend_from_slice(bytes);
    at
}

/// Appends a string table: the offsets, then [`NONE`].
fn put_table(out: &mut Vec<u8>, offsets: impl Iterator<Item = u64>) -> u64 {
    let bytes: Vec<u8> = offsets.chain([NONE]).flat_map(u64::to_ne_bytes).collect();
    put(out, &bytes)
}

fn put_program(out: &mut Vec<u8>, prog: &[Insn]) -> Span {
    let bytes: Vec<u8> = prog
        .iter()
        .flat_map(|i| {
            let [c0, c1] = i.code.to_ne_bytes();
            let [k0, k1, k2, k3] = i.k.to_ne_bytes();
            [c0, c1, i.jt, i.jf, k0, k1, k2, k3]
        })
        .collect();
    Span { at: put(out, &bytes), n: prog.len() as u64 }
}

fn slot(fds: &mut Vec<RawFd>, fd: Option<&OwnedFd>) -> u64 {
    match fd {
        Some(fd) => {
            fds.push(fd.as_raw_fd());
            fds.len() as u64 - 1
        }
        None => NONE,
    }
}

impl Header {
    fn bytes(&self) -> &[u8] {
        // SAFETY: Header is repr(C) and all u64 (Span too): HEADER
        // initialized bytes without padding, borrowed for self's lifetime.
        unsafe { std::slice::from_raw_parts((self as *const Header).cast::<u8>(), HEADER) }
    }
}

/// `stage` and `exec` as [`Birth::receive`] takes them.
fn encode(stage: &Stage, exec: &Exec) -> io::Result<Wire> {
    let mut fds = Vec::new();
    let mut h = Header {
        require_bounding_drop: stage.require_bounding_drop as u64,
        filters_first: stage.filters_first as u64,
        proc_access: stage.proc_access.unwrap_or(NONE),
        ..Header::default()
    };
    h.ruleset_fd = slot(&mut fds, stage.ruleset.as_ref());
    h.go_fd = slot(&mut fds, stage.go.as_ref());
    h.notify_fd = slot(&mut fds, stage.notify.as_ref().map(|(_, sock)| sock));
    h.stdin_fd = slot(&mut fds, exec.stdin.as_ref());
    h.stdout_fd = slot(&mut fds, exec.stdout.as_ref());
    h.cgroup_dir_fd = slot(&mut fds, stage.cgroup_v2.as_ref().map(|(dir, _)| dir));
    h.cgroup_procs_v2_fd = slot(&mut fds, stage.cgroup_v2.as_ref().map(|(_, procs)| procs));
    h.cgroup_procs = Span { at: fds.len() as u64, n: stage.cgroup_procs.len() as u64 };
    fds.extend(stage.cgroup_procs.iter().map(AsRawFd::as_raw_fd));
    if fds.len() > MAX_FDS {
        return Err(io::Error::other(format!("{} fds for the stage, at most {MAX_FDS}", fds.len())));
    }
    let mut out = vec![0u8; HEADER];
    let rlimits: Vec<u8> =
        stage.rlimits.iter().flat_map(|&(r, l)| [u64::from(r), l]).flat_map(u64::to_ne_bytes).collect();
    h.rlimits = Span { at: put(&mut out, &rlimits), n: stage.rlimits.len() as u64 };
    let spans: Vec<Span> = stage.filters.iter().map(|p| put_program(&mut out, p)).collect();
    let table: Vec<u8> = spans.iter().flat_map(|s| [s.at, s.n]).flat_map(u64::to_ne_bytes).collect();
    h.filters = Span { at: put(&mut out, &table), n: spans.len() as u64 };
    h.notify = match &stage.notify {
        Some((prog, _)) => put_program(&mut out, prog),
        None => Span { at: NONE, n: 0 },
    };
    h.canary = stage.canary.as_ref().map_or(NONE, |c| put(&mut out, c.to_bytes_with_nul()));
    h.program = put(&mut out, exec.program.to_bytes_with_nul());
    let sh = put(&mut out, b"/bin/sh\0");
    let argv: Vec<u64> = exec.argv.iter().map(|a| put(&mut out, a.to_bytes_with_nul())).collect();
    let envp: Vec<u64> = exec.env.iter().map(|e| put(&mut out, e.to_bytes_with_nul())).collect();
    h.argv = put_table(&mut out, argv.iter().copied());
    // `/bin/sh PROGRAM ARGS...`, for a program the kernel cannot exec
    // (ENOEXEC: a script without `#!`), as execvp(3) (and std) does.
    h.sh_argv = put_table(&mut out, [sh, h.program].into_iter().chain(argv.iter().skip(1).copied()));
    h.envp = put_table(&mut out, envp.into_iter());
    out.resize(out.len().next_multiple_of(8), 0);
    if out.len() as u64 > MAX_CONFIG {
        return Err(io::Error::other(format!("the command line and environment take over {MAX_CONFIG} bytes")));
    }
    (h.len, h.nfds) = (out.len() as u64, fds.len() as u64);
    out[..HEADER].copy_from_slice(h.bytes());
    Ok(Wire { bytes: out, fds })
}

/// A configuration received: a [`Header`] and what it points at, in a
/// buffer of this process, read in place.
struct Config {
    base: *mut u8,
    len: usize,
    fds: [RawFd; MAX_FDS],
    nfds: usize,
    /// Write end of the report pipe.
    report: RawFd,
    /// An O_PATH fd of the private /proc init mounted, or -1.
    proc_dir: RawFd,
    /// The CPUs the command may run on once it execs.
    cpus: Option<libc::cpu_set_t>,
}

impl Config {
    fn header(&self) -> Header {
        // SAFETY: `base` is 8-aligned and holds at least HEADER bytes
        // (checked by receive); Header is plain u64s.
        unsafe { std::ptr::read(self.base.cast::<Header>()) }
    }

    fn fd(&self, slot: u64) -> Option<RawFd> {
        (slot < self.nfds as u64).then(|| self.fds[slot as usize])
    }

    /// Whether `n` items of `size` bytes at `at` lie inside the buffer, 8-aligned.
    fn fits(&self, at: u64, n: u64, size: u64) -> bool {
        at.is_multiple_of(8)
            && n.checked_mul(size).and_then(|b| b.checked_add(at)).is_some_and(|end| end <= self.len as u64)
    }

    /// Whether a NUL-terminated string starts at `at` (8-aligned, as every
    /// offset), inside the buffer.
    fn is_str(&self, at: u64) -> bool {
        // SAFETY: reads bytes of the buffer, inside it.
        self.fits(at, 1, 1) && (at as usize..self.len).any(|i| unsafe { *self.base.add(i) } == 0)
    }

    fn word(&self, at: u64) -> u64 {
        // SAFETY: callers check `at` with `fits` (8-aligned, inside).
        unsafe { std::ptr::read(self.base.add(at as usize).cast::<u64>()) }
    }

    /// A program's instructions (checked by [`settle`](Self::settle)).
    fn program(&self, s: Span) -> &[Insn] {
        // SAFETY: settle checked the span lies inside the buffer, 8-aligned
        // (Insn needs 4); Insn is plain data, any bytes are one.
        unsafe { std::slice::from_raw_parts(self.base.add(s.at as usize).cast::<Insn>(), s.n as usize) }
    }

    fn filter(&self, i: u64) -> Span {
        let at = self.header().filters.at + i * 16;
        Span { at: self.word(at), n: self.word(at + 8) }
    }

    fn ptr<T>(&self, at: u64) -> *const T {
        // SAFETY: an offset checked inside the buffer by settle.
        unsafe { self.base.add(at as usize).cast::<T>().cast_const() }
    }

    /// Checks every offset of the header against the buffer, and turns the
    /// string tables' offsets into pointers. EPROTO for anything out of place.
    fn settle(&mut self) -> Result<(), i32> {
        let h = self.header();
        let program_ok = |c: &Config, s: Span| s.n > 0 && s.n <= u16::MAX as u64 && c.fits(s.at, s.n, 8);
        let fds_ok =
            [h.ruleset_fd, h.go_fd, h.notify_fd, h.stdin_fd, h.stdout_fd, h.cgroup_dir_fd, h.cgroup_procs_v2_fd]
                .iter()
                .all(|&s| s == NONE || s < self.nfds as u64)
                && h.cgroup_procs.at.checked_add(h.cgroup_procs.n).is_some_and(|end| end <= self.nfds as u64);
        let ok = fds_ok
            && self.fits(h.rlimits.at, h.rlimits.n, 16)
            && self.fits(h.filters.at, h.filters.n, 16)
            && (0..h.filters.n).all(|i| program_ok(self, self.filter(i)))
            && (h.notify.at == NONE || program_ok(self, h.notify))
            && (h.notify.at == NONE) == (h.notify_fd == NONE)
            && (h.canary == NONE || self.is_str(h.canary))
            && self.is_str(h.program);
        if !ok {
            return Err(libc::EPROTO);
        }
        for table in [h.argv, h.sh_argv, h.envp] {
            self.settle_table(table)?;
        }
        Ok(())
    }

    fn settle_table(&mut self, at: u64) -> Result<(), i32> {
        let mut entry = at;
        loop {
            if !self.fits(entry, 1, 8) {
                return Err(libc::EPROTO);
            }
            let off = self.word(entry);
            let ptr = match off {
                NONE => 0,
                off if self.is_str(off) => self.ptr::<u8>(off) as u64,
                _ => return Err(libc::EPROTO),
            };
            // SAFETY: `entry` is inside the buffer and 8-aligned (fits).
            unsafe { std::ptr::write(self.base.add(entry as usize).cast::<u64>(), ptr) };
            if off == NONE {
                return Ok(());
            }
            entry += 8;
        }
    }

    /// The command: its cgroups, plain signal handling, its stdio,
    /// confinement once the supervisor says how, and exec on its go-ahead.
    /// `born`: cloned into the sandbox's v2 cgroup already. Returns only
    /// on failure.
    ///
    /// # Safety
    ///
    /// As for [`Birth::run`].
    unsafe fn command(&self, born: bool) -> io::Result<()> {
        let h = self.header();
        // SAFETY: syscalls on the settled buffer and fds this process owns;
        // the string tables are NULL-terminated pointers into the buffer.
        unsafe {
            if let (Some(procs), false) = (self.fd(h.cgroup_procs_v2_fd), born) {
                join(procs).map_err(|e| fail(self.report, Step::Cgroup, e))?;
            }
            for i in 0..h.cgroup_procs.n {
                join(self.fds[(h.cgroup_procs.at + i) as usize]).map_err(|e| fail(self.report, Step::Cgroup, e))?;
            }
            self.grant_proc(h);
            // Blocked since the supervisor (every thread of it blocks them
            // to wait for them), with init's handlers or the supervisor's:
            // back to the defaults, with SIGPIPE, which Rust ignores.
            for sig in FORWARDED.iter().chain(&JOB_CONTROL).chain(&[libc::SIGPIPE]) {
                libc::signal(*sig, libc::SIG_DFL);
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            if libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) != 0 {
                return Err(fail(self.report, Step::Signals, errno()));
            }
            for (fd, to) in [(h.stdin_fd, 0), (h.stdout_fd, 1)] {
                if let Some(fd) = self.fd(fd) {
                    if libc::dup2(fd, to) < 0 {
                        return Err(fail(self.report, Step::Fds, errno()));
                    }
                }
            }
            // Confined before the launch is decided, so that only exec is
            // left once it is; a refusal still stops it before exec. What
            // needs no word from the supervisor comes first (Stage::filters_first).
            let first = h.filters_first != 0;
            self.limit_and_drop()?;
            if first {
                self.install_filters(true)?;
            }
            let watched = match self.await_byte()? {
                None | Some(CONFINE) => false,
                Some(CONFINE_WATCHED) => true,
                Some(_) => return Err(fail(self.report, Step::Go, libc::ECANCELED)),
            };
            self.restrict(watched)?;
            if !first {
                self.install_filters(true)?;
            }
            if self.cpus.is_some() {
                self.spin_for_byte(GO_SPINS);
            }
            match self.await_byte()? {
                None | Some(GO) => {}
                Some(_) => return Err(fail(self.report, Step::Go, libc::ECANCELED)),
            }
            // Configured to run away from the supervisor's deciding thread:
            // the command and what it starts get the CPUs it was born with.
            if let Some(set) = &self.cpus {
                libc::sched_setaffinity(0, CPU_SET_SIZE, set);
            }
            let envp = self.ptr(h.envp);
            libc::execve(self.ptr(h.program), self.ptr(h.argv), envp);
            let e = errno();
            if e == libc::ENOEXEC {
                libc::execve(c"/bin/sh".as_ptr(), self.ptr(h.sh_argv), envp);
            }
            Err(io::Error::from_raw_os_error(e))
        }
    }

    /// Grants the profile's /proc rights on the private /proc init mounted
    /// (a failure is reported, not fatal: the host's /proc stays out of
    /// reach unless the profile names it).
    ///
    /// # Safety
    ///
    /// As for [`Birth::run`].
    unsafe fn grant_proc(&self, h: Header) {
        let (Some(ruleset), true, true) = (self.fd(h.ruleset_fd), h.proc_access != NONE, self.proc_dir >= 0) else {
            return;
        };
        if let Err(e) = super::fs::add_path_beneath(ruleset, self.proc_dir, h.proc_access) {
            record(self.report, Step::ProcMount, e);
        }
        // SAFETY: the fd is ours, used no more.
        unsafe { libc::close(self.proc_dir) };
    }

    /// Reads the next byte of the go-ahead pipe; None without a pipe. EOF
    /// (the supervisor refused the launch, or died) fails.
    ///
    /// # Safety
    ///
    /// As for [`Birth::run`].
    unsafe fn await_byte(&self) -> io::Result<Option<u8>> {
        let Some(go) = self.fd(self.header().go_fd) else { return Ok(None) };
        let mut byte = 0u8;
        loop {
            // SAFETY: reads one byte into a live stack variable from an fd we own.
            let n = unsafe { libc::read(go, (&mut byte as *mut u8).cast(), 1) };
            match n {
                1 => break,
                // EOF: refused, or the supervisor is gone.
                0 => return Err(fail(self.report, Step::Go, libc::ECANCELED)),
                // The second read runs under the sandbox's own filters: a
                // profile that denies read(2) outright fails here, and says so.
                _ => match errno() {
                    libc::EINTR => continue,
                    e => return Err(fail(self.report, Step::Go, e)),
                },
            }
        }
        Ok(Some(byte))
    }

    /// Returns once the go-ahead pipe has something to read (or is
    /// closed), or after `rounds` looks at it, without sleeping in between
    /// ([`super::Spin`]): the go-ahead took about 60 us to wake a command
    /// that slept for it, on the 2-vCPU host of BENCHMARKS.md, and the
    /// command waits for it on a CPU of its own, away from the deciding
    /// thread (`cpus` is set). A profile that denies poll(2) ends the spin
    /// at once: the blocking read then waits.
    ///
    /// # Safety
    ///
    /// As for [`Config::command`].
    unsafe fn spin_for_byte(&self, rounds: u32) {
        let Some(go) = self.fd(self.header().go_fd) else { return };
        let mut p = libc::pollfd { fd: go, events: libc::POLLIN, revents: 0 };
        let mut spin = super::Spin::rounds(rounds);
        // SAFETY: polls one live pollfd without waiting.
        while unsafe { libc::poll(&mut p, 1, 0) } == 0 && spin.again() {}
    }

    /// Confines the calling process in one go, as the benchmark measures it
    /// (the command runs the same parts around its confine byte, in the
    /// order [`Stage::filters_first`] says: [`Config::command`]). Order
    /// matters: limits and capability drops need privilege that
    /// no_new_privs, Landlock and seccomp then lock.
    /// With `send_listener` false the approval filter is installed but its
    /// listener closed instead of sent (for the benchmark, whose forked
    /// children have no supervisor to send it to). `watched`: the kernel's
    /// reports are read (see [`CONFINE_WATCHED`]): the Landlock domain logs
    /// denials after exec, and the canary is opened.
    ///
    /// # Safety
    ///
    /// As for [`Birth::run`]: only in a forked child, which it confines for good.
    unsafe fn confine(&self, send_listener: bool, watched: bool) -> io::Result<()> {
        // SAFETY: as for this function.
        unsafe {
            self.limit_and_drop()?;
            self.restrict(watched)?;
            self.install_filters(send_listener)
        }
    }

    /// The first part of [`confine`](Self::confine): limits, capabilities,
    /// no_new_privs.
    ///
    /// # Safety
    ///
    /// As for [`confine`](Self::confine).
    unsafe fn limit_and_drop(&self) -> io::Result<()> {
        let h = self.header();
        // SAFETY: syscalls on local structs and the settled buffer.
        unsafe {
            for i in 0..h.rlimits.n {
                let at = h.rlimits.at + i * 16;
                let (res, lim) = (self.word(at) as libc::__rlimit_resource_t, self.word(at + 8) as libc::rlim_t);
                let rl = libc::rlimit { rlim_cur: lim, rlim_max: lim };
                if libc::setrlimit(res, &rl) != 0 {
                    return Err(fail(self.report, Step::Rlimit, errno()));
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
                    return Err(fail(self.report, Step::Capabilities, e));
                }
            }
            // Done by init already, as a rule (the command inherited it).
            for cap in (0..64).filter(|_| !BOUNDING_SET_EMPTY.load(std::sync::atomic::Ordering::Relaxed)) {
                if libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) != 0 {
                    match errno() {
                        // Past the last capability this kernel knows.
                        libc::EINVAL => break,
                        libc::EPERM if h.require_bounding_drop == 0 => break,
                        e => return Err(fail(self.report, Step::Capabilities, e)),
                    }
                }
            }
            if let Err(e) = super::clear_capabilities() {
                return Err(fail(self.report, Step::Capabilities, e));
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                return Err(fail(self.report, Step::NoNewPrivs, errno()));
            }
        }
        Ok(())
    }

    /// Landlock (after [`limit_and_drop`](Self::limit_and_drop)), and the
    /// canary when `watched`.
    ///
    /// # Safety
    ///
    /// As for [`confine`](Self::confine).
    unsafe fn restrict(&self, watched: bool) -> io::Result<()> {
        let h = self.header();
        // SAFETY: syscalls on the settled buffer and fds this process owns.
        unsafe {
            if let Some(ruleset) = self.fd(h.ruleset_fd) {
                let flags = if watched { crate::kaudit::LOG_NEW_EXEC_ON } else { 0 };
                if libc::syscall(libc::SYS_landlock_restrict_self, ruleset, flags) != 0 {
                    return Err(fail(self.report, Step::Landlock, errno()));
                }
                if h.canary != NONE && watched {
                    let fd = libc::open(self.ptr(h.canary), libc::O_RDONLY | libc::O_CLOEXEC);
                    if fd >= 0 {
                        libc::close(fd);
                    }
                }
            }
        }
        Ok(())
    }

    /// The seccomp programs (after [`limit_and_drop`](Self::limit_and_drop)),
    /// the approval filter's listener sent (or closed: `send_listener`),
    /// then every inherited fd but stdio marked close-on-exec.
    ///
    /// # Safety
    ///
    /// As for [`confine`](Self::confine); the last step of a confinement
    /// but Landlock (see [`Stage::filters_first`]).
    unsafe fn install_filters(&self, send_listener: bool) -> io::Result<()> {
        let h = self.header();
        // SAFETY: syscalls on local structs and the settled buffer, whose
        // BPF programs stay mapped for the whole call.
        unsafe {
            for prog in (0..h.filters.n).map(|i| self.program(self.filter(i))) {
                let fprog = libc::sock_fprog {
                    len: prog.len() as libc::c_ushort,
                    filter: prog.as_ptr() as *mut libc::sock_filter,
                };
                if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0u32, &fprog) != 0 {
                    return Err(fail(self.report, Step::Seccomp, errno()));
                }
            }
            if let (Some(sock), true) = (self.fd(h.notify_fd), h.notify.at != NONE) {
                let prog = self.program(h.notify);
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
                    return Err(fail(self.report, Step::Notify, errno()));
                }
                let sent = if send_listener { send_fd(sock, listener as RawFd) } else { Ok(()) };
                libc::close(listener as RawFd);
                if let Err(e) = sent {
                    return Err(fail(self.report, Step::Notify, e));
                }
            }
            // Every inherited fd but stdio closes at exec (CVE-2024-21626: a
            // leaked directory fd walks around Landlock's path checks).
            if libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as libc::c_int) != 0 {
                return Err(fail(self.report, Step::Fds, errno()));
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

/// The namespaces init is cloned into: user (its maps) and PID (init is
/// its PID 1, and when init dies the kernel kills everything left in it).
const NAMESPACES: u64 = (libc::CLONE_NEWUSER | libc::CLONE_NEWPID) as u64;

/// The namespaces init then makes for itself, in its user namespace: IPC
/// (host SysV segments and queues stay out of reach) and mount (for the
/// private /proc). Made by init rather than in the clone, they cost the
/// supervisor nothing (the mount namespace copies the host's mount table:
/// about 0.1 ms here).
const UNSHARED: libc::c_int = libc::CLONE_NEWIPC | libc::CLONE_NEWNS;

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
/// The caller may be multithreaded: the child, a copy of it, must keep to
/// syscalls (no allocation, no lock another thread may have held, no
/// glibc fork) and leave by exec or `_exit`, as [`Birth::run`] does.
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

/// What [`Birth::start_sharing`] hands the command: at the top of its stack.
struct SharedStart {
    config: *const Config,
    /// Init's `done` pipe: a failure before exec, as an errno.
    done: RawFd,
}

/// The command's start in init's memory ([`Birth::start_sharing`]): as the
/// forked command would, it execs or says why not and exits.
extern "C" fn command_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the SharedStart written at the top of this stack,
    // whose Config init keeps in place (it never returns from the call that
    // holds it); the calls are syscalls on it, as after a fork.
    unsafe {
        let start = &*arg.cast::<SharedStart>();
        let failed = (*start.config).command(false);
        let err = failed.err().and_then(|e| e.raw_os_error()).unwrap_or(libc::EIO);
        libc::write(start.done, (&err as *const i32).cast(), 4);
        libc::_exit(125)
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

/// What the command execs: the program, its arguments and environment.
pub struct Exec {
    program: CString,
    argv: Vec<CString>,
    /// `NAME=value` strings.
    env: Vec<CString>,
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
        let argv = argv.iter().map(|a| c(a.as_bytes().to_vec())).collect::<io::Result<Vec<_>>>()?;
        let env =
            env.iter().map(|(k, v)| c([k.as_bytes(), b"=", v.as_bytes()].concat())).collect::<io::Result<Vec<_>>>()?;
        let mut exec = Exec { program, argv, env, stdin: None, stdout: None, ours: None };
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
    /// The sandbox's mount namespace, lent by init (see Birth::lend_mount_ns).
    mount_ns: Option<OwnedFd>,
    /// Our end of the configuration socket, where init sends the command's
    /// exit status before its own exit ([`Spawned::status`]).
    sock: OwnedFd,
}

impl Spawned {
    pub fn id(&self) -> u32 {
        self.pid as u32
    }

    /// The sandbox's mount namespace, to be closed once the run's status is
    /// out (its teardown waits for an RCU grace period): by the finisher.
    pub fn take_mount_ns(&mut self) -> Option<OwnedFd> {
        self.mount_ns.take()
    }

    /// Where init sends the command's exit status once it has reaped it,
    /// before its own exit (its unmapping, its namespaces' and its
    /// /proc's teardown: 0.1 to 0.3 ms here). With the seccomp listener
    /// hung up as well, every process of the sandbox is gone: the run
    /// goes on with that status, and reaps init later (wait::Reaper).
    pub fn status(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.sock.as_fd()
    }
}

/// The command's exit code in what init sent on its socket ([`Spawned::status`]),
/// if all of it is there.
pub fn status_in(got: &[u8]) -> Option<i32> {
    // Before it, at most the mount namespace's message bytes (0).
    let at = got.iter().position(|&b| b == STATUS_TAG)?;
    let code: [u8; 4] = got.get(at + 1..at + 5)?.try_into().ok()?;
    Some(i32::from_ne_bytes(code))
}

/// The first fd sent over the unix socket `sock` with one byte
/// ([`send_fd`]), close-on-exec; any others in the message are closed.
/// `wait`: block until a message comes (else None when there is none yet).
pub(crate) fn recv_fd(sock: &OwnedFd, wait: bool) -> Option<OwnedFd> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut cmsg = nix::cmsg_space!(RawFd);
    let flags = MsgFlags::MSG_CMSG_CLOEXEC | if wait { MsgFlags::empty() } else { MsgFlags::MSG_DONTWAIT };
    let msg = recvmsg::<()>(sock.as_raw_fd(), &mut iov, Some(&mut cmsg), flags).ok()?;
    let mut first = None;
    for c in msg.cmsgs().ok()? {
        if let ControlMessageOwned::ScmRights(fds) = c {
            for fd in fds {
                // SAFETY: received just now, owned by nothing else.
                let fd = unsafe { OwnedFd::from_raw_fd(fd) };
                first.get_or_insert(fd);
            }
        }
    }
    first
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

/// The sandbox's first process, cloned by [`begin`]; it waits for its
/// configuration ([`configure`](Early::configure)). Dropped unconfigured
/// (the launch was refused first), it is told so and reaped.
pub struct Early {
    /// The child, or the step and errno that stopped its clone (reported
    /// when it is configured, after any error of the profile's).
    child: Result<libc::pid_t, (Step, i32)>,
    sock: Option<OwnedFd>,
    done: Option<OwnedFd>,
    /// Our copy of the report pipe's write end, for the clone's failure.
    report: OwnedFd,
}

/// Clones the sandbox's first process now: init, in new user, PID, IPC
/// and mount namespaces (or, without namespaces, the command), which
/// writes its id maps and mounts its /proc while this process goes on,
/// then waits for [`Early::configure`]. Returns it, and the read end of
/// the report pipe ([`read_reports`]). Call after the signals are blocked
/// (wait::block_signals), best before any other thread exists (the clone
/// then copies less), from the thread that stays for the whole run:
/// PR_SET_PDEATHSIG fires when it ends.
pub fn begin(namespaces: bool) -> io::Result<(Early, OwnedFd)> {
    let (report_rx, report) = report_pipe()?;
    // The child writes an errno here if it fails; close-on-exec, so the
    // command's exec closes the last write end.
    let (done_rx, done_tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let (ours, theirs) = nix::sys::socket::socketpair(
        nix::sys::socket::AddressFamily::Unix,
        nix::sys::socket::SockType::Stream,
        None,
        nix::sys::socket::SockFlag::SOCK_CLOEXEC,
    )?;
    let devnull: OwnedFd = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null")?.into();
    // For init to see whether we are still there (it cannot ask getppid).
    let alive = match namespaces {
        // SAFETY: pidfd_open takes plain integers; its fd is close-on-exec.
        true => match unsafe { libc::syscall(libc::SYS_pidfd_open, std::process::id(), 0) } {
            // SAFETY: a new fd, owned by nothing else.
            fd if fd >= 0 => Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) }),
            _ => None,
        },
        false => None,
    };
    let map = |id: u32| format!("{id} {id} 1\n").into_bytes();
    let birth = Birth {
        supervisor: std::process::id() as libc::pid_t,
        namespaces,
        uid_map: map(nix::unistd::geteuid().as_raw()),
        gid_map: map(nix::unistd::getegid().as_raw()),
        report: report.as_raw_fd(),
        devnull: devnull.as_raw_fd(),
        sock: theirs.as_raw_fd(),
        supervisors_end: ours.as_raw_fd(),
        done: done_tx.as_raw_fd(),
        alive: alive.as_ref().map(AsRawFd::as_raw_fd),
        cpus: cpus_of(0),
        away: cpus_but_this(),
    };
    let flags = if namespaces { NAMESPACES } else { 0 };
    let inherited = Inherited::forwarding();
    // SAFETY: the child only runs Birth::run, which keeps to syscalls on
    // data prepared above and never returns.
    let cloned = unsafe { clone_child(flags, None) };
    if let Ok((0, _)) = cloned {
        // SAFETY: in the child of the clone, as Birth::run requires.
        unsafe { birth.run() }
    }
    drop(inherited);
    // Init's setup runs beside this thread's, not queued behind it (2 CPUs
    // here: 0.12 ms off a launch); configure moves it again, and the
    // command takes back the CPUs it was born with. (Init moves itself
    // too, should it run first.)
    if let (Ok((pid, _)), Some(set)) = (cloned, &birth.away) {
        // SAFETY: reads a live cpu_set_t.
        unsafe { libc::sched_setaffinity(pid, CPU_SET_SIZE, set) };
    }
    // Our copies of the child's ends.
    drop((done_tx, theirs, devnull, alive));
    let early = Early { child: cloned.map(|(pid, _)| pid), sock: Some(ours), done: Some(done_rx), report };
    Ok((early, report_rx))
}

impl Early {
    /// Sends the stage its configuration: it forks the command (init) or
    /// becomes it, which confines itself and execs on the go-ahead
    /// ([`Stage::go`]). Returns at once: [`Started::exec`] waits for the
    /// exec, and reports why the stage stopped if it did (this only fails
    /// for a clone that failed, or a configuration that cannot be made).
    pub fn configure(mut self, stage: Stage, mut exec: Exec) -> io::Result<Started> {
        let pid = match self.child {
            Ok(pid) => pid,
            Err((step, e)) => {
                record(self.report.as_raw_fd(), step, e);
                return Err(io::Error::from_raw_os_error(e));
            }
        };
        let wire = encode(&stage, &exec)?;
        let (Some(sock), Some(done)) = (self.sock.take(), self.done.take()) else {
            return Err(io::Error::other("the stage was configured twice"));
        };
        // A stage that could not take it all (gone, or a short send) reads
        // the end of the socket first, and says so through `done`. The
        // socket stays: init lends its mount namespace through it.
        // The stage forks and confines the command while this thread
        // decides the launch: on another CPU, not queued behind this thread
        // (measured here, 2 CPUs: 0.16 ms off a launch). The command takes
        // back the CPUs it was born with before it execs.
        move_off_this_cpu(pid);
        let _ = send(&sock, &wire);
        let _ = nix::sys::socket::shutdown(sock.as_raw_fd(), nix::sys::socket::Shutdown::Write);
        // Our copies of the fds it was sent: the pipes' ends, the ruleset,
        // the cgroup files.
        let pipes = exec.ours.take();
        drop((exec, stage));
        Ok(Started { pid, done, pipes, sock })
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        if let (Some(sock), Ok(pid)) = (self.sock.take(), self.child) {
            drop(sock);
            let p = nix::unistd::Pid::from_raw(pid);
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(p, None);
        }
    }
}

const CPU_SET_SIZE: usize = std::mem::size_of::<libc::cpu_set_t>();

/// The CPUs process `pid` (0: this thread) may run on.
fn cpus_of(pid: libc::pid_t) -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data (all zeroes: the empty set), filled
    // by the kernel within its size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        (libc::sched_getaffinity(pid, CPU_SET_SIZE, &mut set) == 0).then_some(set)
    }
}

/// Lets process `pid` run anywhere this thread may, but on the CPU this
/// thread runs on now (where there is another).
fn move_off_this_cpu(pid: libc::pid_t) {
    if let Some(set) = cpus_but_this() {
        // SAFETY: reads a live cpu_set_t.
        unsafe { libc::sched_setaffinity(pid, CPU_SET_SIZE, &set) };
    }
}

/// The CPUs this thread may run on but the one it runs on now; None when
/// that is the only one.
fn cpus_but_this() -> Option<libc::cpu_set_t> {
    let mut set = cpus_of(0)?;
    // SAFETY: takes nothing.
    let here = unsafe { libc::sched_getcpu() };
    if !(0..libc::CPU_SETSIZE).contains(&here) {
        return None;
    }
    // SAFETY: `here` is below CPU_SETSIZE; `set` is live.
    unsafe {
        libc::CPU_CLR(here as usize, &mut set);
        (libc::CPU_COUNT(&set) > 0).then_some(set)
    }
}

/// Writes `wire` to `sock`: the header with the fds, then the rest.
fn send(sock: &OwnedFd, wire: &Wire) -> nix::Result<()> {
    use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};
    let flags = MsgFlags::MSG_NOSIGNAL;
    let rights = [ControlMessage::ScmRights(&wire.fds)];
    let cmsgs: &[ControlMessage] = if wire.fds.is_empty() { &[] } else { &rights };
    let first = [io::IoSlice::new(&wire.bytes[..HEADER])];
    let mut sent = loop {
        match sendmsg::<()>(sock.as_raw_fd(), &first, cmsgs, flags, None) {
            Err(nix::errno::Errno::EINTR) => continue,
            r => break r?,
        }
    };
    while sent < wire.bytes.len() {
        match nix::sys::socket::send(sock.as_raw_fd(), &wire.bytes[sent..], flags) {
            Ok(n) => sent += n,
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The sandbox's first process, configured; the command has not exec'd yet.
pub struct Started {
    pid: libc::pid_t,
    /// Where the child writes an errno if it fails; EOF once the command has exec'd.
    done: OwnedFd,
    pipes: Option<(std::process::ChildStdin, std::process::ChildStdout)>,
    /// The configuration socket, where init lends its mount namespace.
    sock: OwnedFd,
}

impl Started {
    /// Waits until the command has exec'd, or for the error that stopped
    /// it (a setup step's is also in the report pipe; the child is reaped).
    /// The go-ahead pipe must be written or closed before: the command
    /// waits for it.
    pub fn exec(self) -> io::Result<Spawned> {
        let Started { pid, done, pipes, sock } = self;
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
            Ok(0) => Ok(Spawned { pid, stdin, stdout, mount_ns: recv_fd(&sock, false), sock }),
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
/// without and with the stage's confinement in the child (from `stage`,
/// as the stage receives it). The difference is what installing the
/// capabilities drop, Landlock and seccomp costs per launch. None if the
/// configuration cannot be made.
pub fn time_confine(stage: &Stage, runs: u32) -> Option<(u128, u128)> {
    let exec = Exec::new(Path::new("/bin/true"), &["true".into()], &[], false).ok()?;
    let wire = encode(stage, &exec).ok()?;
    let mut words = vec![0u64; wire.bytes.len() / 8];
    for (w, b) in words.iter_mut().zip(wire.bytes.chunks_exact(8)) {
        *w = u64::from_ne_bytes(b.try_into().ok()?);
    }
    let mut fds = [-1; MAX_FDS];
    fds[..wire.fds.len()].copy_from_slice(&wire.fds);
    let base = words.as_mut_ptr().cast::<u8>();
    let mut config =
        Config { base, len: wire.bytes.len(), fds, nfds: wire.fds.len(), report: -1, proc_dir: -1, cpus: None };
    config.settle().ok()?;
    let once = |confine: bool| -> u128 {
        let t = std::time::Instant::now();
        // SAFETY: the child only runs Config::confine (allocation-free and
        // async-signal-safe) and _exit; the parent reaps the child it made.
        unsafe {
            let pid = libc::fork();
            if pid == 0 {
                if confine && config.confine(false, false).is_err() {
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
    Some((mean(false), mean(true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn insn(code: u16, k: u32) -> Insn {
        Insn { code, jt: 1, jf: 2, k }
    }

    fn stage() -> Stage {
        Stage {
            cgroup_procs: Vec::new(),
            cgroup_v2: None,
            rlimits: vec![(libc::RLIMIT_NPROC, 7), (libc::RLIMIT_AS, u64::MAX)],
            require_bounding_drop: true,
            ruleset: None,
            proc_access: Some(0x5),
            canary: Some(c"/run/canary".into()),
            go: None,
            filters: vec![vec![insn(0x20, 4), insn(0x6, 0x7fff_0000)], vec![insn(0x6, 0)]],
            notify: None,
            filters_first: true,
        }
    }

    /// The buffer as the stage receives it (page-aligned there; 8 here).
    fn received(wire: &Wire) -> (Vec<u64>, Config) {
        let mut words: Vec<u64> =
            wire.bytes.chunks_exact(8).map(|b| u64::from_ne_bytes(b.try_into().expect("8 bytes"))).collect();
        let mut fds = [-1; MAX_FDS];
        fds[..wire.fds.len()].copy_from_slice(&wire.fds);
        let config = Config {
            base: words.as_mut_ptr().cast(),
            len: wire.bytes.len(),
            fds,
            nfds: wire.fds.len(),
            report: -1,
            proc_dir: -1,
            cpus: None,
        };
        (words, config)
    }

    fn strings(table: *const *const libc::c_char) -> Vec<String> {
        let mut out = Vec::new();
        // SAFETY: a settled table: pointers to NUL-terminated strings in a live buffer, then NULL.
        unsafe {
            let mut p = table;
            while !(*p).is_null() {
                out.push(std::ffi::CStr::from_ptr(*p).to_string_lossy().into_owned());
                p = p.add(1);
            }
        }
        out
    }

    #[test]
    fn a_configuration_reads_back_as_it_was_sent() {
        let argv: Vec<OsString> = ["prog", "-x", ""].iter().map(OsString::from).collect();
        let env = vec![(OsString::from("PATH"), OsString::from("/usr/bin")), ("A".into(), "b=c".into())];
        let exec = Exec::new(Path::new("/usr/bin/prog"), &argv, &env, false).expect("exec");
        let stage = stage();
        let wire = encode(&stage, &exec).expect("encoded");
        assert!(wire.fds.is_empty());
        let (_words, mut config) = received(&wire);
        config.settle().expect("settled");
        let h = config.header();
        assert_eq!((h.len as usize, h.require_bounding_drop, h.proc_access), (wire.bytes.len(), 1, 5));
        assert_eq!(h.filters_first, 1);
        assert_eq!((config.fd(h.ruleset_fd), config.fd(h.go_fd), h.notify.at), (None, None, NONE));
        let rlimits: Vec<(u64, u64)> = (0..h.rlimits.n)
            .map(|i| (config.word(h.rlimits.at + i * 16), config.word(h.rlimits.at + i * 16 + 8)))
            .collect();
        assert_eq!(rlimits, vec![(libc::RLIMIT_NPROC as u64, 7), (libc::RLIMIT_AS as u64, u64::MAX)]);
        let programs: Vec<Vec<(u16, u8, u8, u32)>> = (0..h.filters.n)
            .map(|i| config.program(config.filter(i)).iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect())
            .collect();
        let sent: Vec<Vec<(u16, u8, u8, u32)>> =
            stage.filters.iter().map(|p| p.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()).collect();
        assert_eq!(programs, sent);
        // SAFETY: settled offsets of NUL-terminated strings in the live buffer.
        let text = |at| unsafe { std::ffi::CStr::from_ptr(config.ptr(at)) }.to_string_lossy().into_owned();
        assert_eq!((text(h.program), text(h.canary)), ("/usr/bin/prog".to_string(), "/run/canary".to_string()));
        assert_eq!(strings(config.ptr(h.argv)), ["prog", "-x", ""]);
        assert_eq!(strings(config.ptr(h.sh_argv)), ["/bin/sh", "/usr/bin/prog", "-x", ""]);
        assert_eq!(strings(config.ptr(h.envp)), ["PATH=/usr/bin", "A=b=c"]);
    }

    #[test]
    fn a_configuration_pointing_outside_itself_is_refused() {
        let exec = Exec::new(Path::new("/bin/true"), &["true".into()], &[], false).expect("exec");
        let wire = encode(&stage(), &exec).expect("encoded");
        // Each offset in turn set past the end, or misaligned: refused, never read.
        let fields: [fn(&mut Header) -> &mut u64; 6] = [
            |h| &mut h.program,
            |h| &mut h.canary,
            |h| &mut h.argv,
            |h| &mut h.envp,
            |h| &mut h.rlimits.at,
            |h| &mut h.filters.at,
        ];
        for (i, field) in fields.iter().enumerate() {
            for bad in [wire.bytes.len() as u64, wire.bytes.len() as u64 + 4096, 3] {
                let (mut words, mut config) = received(&wire);
                let mut h = config.header();
                *field(&mut h) = bad;
                // SAFETY: the buffer starts with a Header and is live.
                unsafe { std::ptr::write(words.as_mut_ptr().cast::<Header>(), h) };
                config.base = words.as_mut_ptr().cast();
                assert_eq!(config.settle(), Err(libc::EPROTO), "field {i} = {bad}");
            }
        }
        // And an fd slot no fd was sent for.
        let (mut words, mut config) = received(&wire);
        let mut h = config.header();
        h.go_fd = 0;
        // SAFETY: as above.
        unsafe { std::ptr::write(words.as_mut_ptr().cast::<Header>(), h) };
        config.base = words.as_mut_ptr().cast();
        assert_eq!(config.settle(), Err(libc::EPROTO));
    }

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

    /// Init's status message is found whole, after the mount namespace's
    /// bytes if they were not read yet, and a code whose byte is the tag
    /// (83) is not taken for another message; half of one is not a status.
    #[test]
    fn init_status_messages_parse() {
        let msg = |code: i32| [&[STATUS_TAG][..], &code.to_ne_bytes()[..]].concat();
        assert_eq!(status_in(&msg(3)), Some(3));
        assert_eq!(status_in(&[&[0u8][..], &msg(143)[..]].concat()), Some(143));
        assert_eq!(status_in(&msg(i32::from(STATUS_TAG))), Some(i32::from(STATUS_TAG)));
        assert_eq!(status_in(&msg(0)[..3]), None);
        assert_eq!(status_in(&[0u8, 0]), None);
    }
}
