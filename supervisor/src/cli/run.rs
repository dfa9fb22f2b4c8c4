//! `portcullis run`: load, compile, prepare, then fork and supervise.

use std::ffi::OsString;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::{RunArgs, SandboxArgs};
use audit::Kind;
use serde_json::json;

use crate::evidence::{AuditPaths, Evidence};
use crate::exit::{self, Failure};
use crate::kaudit;
use crate::kernel::Features;
use crate::sandbox::{self, env, exec, limits, Prepared};
use crate::sys::{stage, wait};

/// A profile compiled for this machine, with the private temp dir it uses.
pub struct Session {
    pub id: String,
    pub features: Features,
    pub plan: policy::Plan,
    pub tmp: PathBuf,
    pub path_var: OsString,
    pub workspace: PathBuf,
    pub audit: AuditPaths,
    /// Holds `tmp` while the run lives (see sandbox::sweep_stale).
    _tmp_held: std::fs::File,
}

/// The workspace is read and written by the sandbox: one that holds the
/// user's home (or is `/`) would hand it shell start-up files, `~/.ssh`,
/// `~/.config/autostart` and the rest, where no deny list can be complete.
fn refuse_home_as_workspace(workspace: &Path, home: &str, by_default: bool) -> Result<(), Failure> {
    let home = std::fs::canonicalize(home).ok().filter(|h| h != Path::new("/"));
    let holds_home = home.as_deref().is_some_and(|h| h.starts_with(workspace));
    if workspace != Path::new("/") && !holds_home {
        return Ok(());
    }
    let what = if holds_home { "your home directory" } else { "the whole filesystem" };
    let whence = if by_default { " (the current directory, the default workspace)" } else { "" };
    Err(Failure::setup(format!(
        "--workspace {}{whence} holds {what}: the sandbox could write all of it; run from, or name with --workspace, a project directory",
        workspace.display()
    )))
}

impl Session {
    /// Loads and compiles the profile with the flags; creates `{tmp}`.
    pub fn open(args: &SandboxArgs) -> Result<Session, Failure> {
        let features = Features::probe();
        crate::timing::mark("kernel probed");
        Self::open_on(args, features)
    }

    /// As [`open`](Self::open), on a kernel already probed.
    pub fn open_on(args: &SandboxArgs, features: Features) -> Result<Session, Failure> {
        let audit = audit_paths(args)?;
        let id = session_id();
        let root = features.runtime_root();
        let planned = sandbox::private_tmp_path(&root, &id);
        let tmp = make_private_tmp(&root, &id);
        Self::open_as(args, features, id, audit, planned, || tmp, crate::gate::hooks::configured_hooks)
    }

    /// As [`open_on`](Self::open_on), with the run's id and audit paths
    /// already chosen (`run` opens the log with them meanwhile). The
    /// profile is compiled with `planned` for `{tmp}`
    /// ([`sandbox::private_tmp_path`]); `tmp` then gives the directory
    /// made there ([`make_private_tmp`]; `run` makes it on the other thread
    /// meanwhile). `tmp` is taken even when the profile fails, so that the
    /// directory it made goes again. `hooks`: the rule for the hooks
    /// directory the workspace's git config names (see
    /// gate::hooks::configured_hooks).
    fn open_as(
        args: &SandboxArgs,
        features: Features,
        id: String,
        audit: AuditPaths,
        planned: PathBuf,
        tmp: impl FnOnce() -> Result<(PathBuf, std::fs::File), Failure>,
        hooks: impl FnOnce(&Path, &str) -> Option<policy::ask::GateRule>,
    ) -> Result<Session, Failure> {
        let compiled = (|| {
            let mut profile = policy::Loader::from_env().load_preloaded(&args.profile, crate::profiles::PRELOADED)?;
            profile.apply(&args.overrides())?;
            let workspace = match &args.workspace {
                Some(w) => {
                    std::fs::canonicalize(w).map_err(|e| Failure::setup(format!("--workspace {}: {e}", w.display())))?
                }
                None => std::env::current_dir().map_err(|e| Failure::setup(format!("current directory: {e}")))?,
            };
            if !workspace.is_dir() {
                return Err(Failure::setup(format!("--workspace {}: not a directory", workspace.display())));
            }
            let home = std::env::var("HOME").unwrap_or_else(|_| "/nonexistent".into());
            refuse_home_as_workspace(&workspace, &home, args.workspace.is_none())?;
            crate::timing::mark("profile loaded");
            let vars = policy::Vars { workspace: path_str(&workspace)?, home, tmp: path_str(&planned)? };
            let plan = policy::compile(&profile, &vars)?;
            Ok((plan, workspace, vars.home))
        })();
        let made = tmp();
        let (mut plan, workspace, home) = match compiled {
            Ok(c) => c,
            Err(e) => {
                // The profile's error first, as when the directory was made
                // after it; the directory goes again.
                if let Ok((dir, held)) = made {
                    drop(held);
                    let _ = std::fs::remove_dir_all(&dir);
                }
                return Err(e);
            }
        };
        // Made at `planned`: both come from sandbox::private_tmp_path.
        let (tmp, tmp_held) = made?;
        crate::gate::hooks::protect_found_hooks(&mut plan.gate, hooks(&workspace, &home));
        let path_var = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        Ok(Session { id, features, plan, tmp, path_var, workspace, audit, _tmp_held: tmp_held })
    }

    pub fn prepare(&self, dry: bool) -> Result<Prepared, Failure> {
        sandbox::prepare(&self.plan, &self.features, &self.path_var, &self.id, dry)
    }

    /// As [`prepare`](Self::prepare), for a launch, with the cgroup
    /// controllers from `controllers` ([`sandbox::prepare_with`]).
    fn prepare_with(&self, controllers: impl FnOnce() -> Option<sandbox::Controllers>) -> Result<Prepared, Failure> {
        sandbox::prepare_with(&self.plan, &self.features, &self.path_var, &self.id, false, true, controllers)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        sandbox::remove_private_tmp(&self.tmp);
    }
}

/// The run's private `{tmp}` under `root`, held open (see
/// sandbox::hold_private_tmp) once stale ones are swept. private_tmp
/// checks the root is a 0700 directory of ours first: only then is what
/// runs killed before their cleanup left swept.
fn make_private_tmp(root: &Path, id: &str) -> Result<(PathBuf, std::fs::File), Failure> {
    let tmp = sandbox::private_tmp(root, id)?;
    sandbox::sweep_stale(root);
    match sandbox::hold_private_tmp(&tmp) {
        Ok(f) => Ok((tmp, f)),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// The run's id: our pid and the clock's nanoseconds.
fn session_id() -> String {
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{}-{:08x}", std::process::id(), nanos)
}

fn audit_paths(args: &SandboxArgs) -> Result<AuditPaths, Failure> {
    let mut audit = AuditPaths::resolve(args.audit_log.as_deref(), args.audit_key.as_deref(), args.syslog.as_deref())?;
    audit.set_rotate_size(args.audit_rotate_size.as_deref())?;
    Ok(audit)
}

fn path_str(p: &Path) -> Result<String, Failure> {
    p.to_str().map(str::to_string).ok_or_else(|| Failure::setup(format!("path {} is not UTF-8", p.display())))
}

pub fn run(args: RunArgs) -> Result<i32, Failure> {
    // A sandboxed process of the same uid must not read our memory.
    stage::set_undumpable();
    let audit = audit_paths(&args.sandbox)?;
    let id = session_id();
    // Before any thread exists: see launch_with.
    let set = wait::block_signals().map_err(|e| Failure::setup(format!("cannot block signals: {e}")))?;
    let features = Features::probe();
    crate::timing::mark("kernel probed");
    // The sandbox's first process comes up (its namespaces, id maps and
    // /proc) while this one loads the profile, and waits for what it is
    // to confine: cloned now, while this process is one thread and small.
    let stage = stage::begin(features.user_namespaces)
        .map_err(|e| Failure::setup(format!("cannot start the sandbox's first process: {e}")))?;
    crate::timing::mark("stage cloned");
    let abi = features.landlock_abi_used;
    // Whether the kernel's reports can be read at all: an unprivileged run
    // (no CAP_AUDIT_READ) names no canary, and asks the kernel nothing.
    let audit_read = abi >= 7 && kaudit::may_read();
    // The canary's name is fixed now; the go-ahead says whether it is used.
    let canary = audit_read.then(|| kaudit::Canary::new(&audit).ok()).flatten();
    let canary_path = canary.as_ref().map(|c| c.path().to_path_buf());
    // The thread that passes signals on during the launch has nothing to
    // do until the stage is forked: it joins the kernel's audit stream and
    // opens the audit log meanwhile, on the second core while this one
    // loads, compiles and prepares. (A thread of its own for that cost this
    // one about as much as it saved: a thread costs its creator a tenth of a
    // millisecond here.)
    let (cgroups_tx, cgroups) = std::sync::mpsc::sync_channel(1);
    let mut cgroups = AheadCgroups(Some(cgroups));
    let (tmp_tx, tmp) = std::sync::mpsc::sync_channel(1);
    let (hooks_tx, hooks) = std::sync::mpsc::sync_channel(1);
    // The gate's rules, once compiled, for that thread to resolve.
    let (gate_tx, gate_rx) = std::sync::mpsc::sync_channel::<policy::ask::GatePlan>(1);
    // That thread says whether the kernel's reports are read, which the
    // command's confinement waits for (with the path rules: GoState).
    let (go_rx, go) = go_ahead()?;
    let (watch, opened) = {
        let (audit, id, root) = (audit.clone(), id.clone(), features.runtime_root());
        // Where no thread can be started, the job runs here, on this thread.
        let creator = nix::unistd::gettid();
        // Only root needs a cgroup for max_procs (RLIMIT_NPROC binds anyone
        // else in the sandbox's user namespace); a memory limit alone looks
        // its cgroup up in prepare.
        let cgroup_limits = features.euid == 0 || !features.user_namespaces;
        let go = go.clone();
        let workspace = args.sandbox.workspace.clone();
        wait::LaunchWatch::start_after(move || {
            // The kernel's audit status is asked first: the request waits
            // for the kernel's reply thread to exist, and the work below
            // runs while that thread answers.
            let status = (abi >= 7 && audit_read).then(kaudit::StatusQuery::send);
            // First what the main thread needs from here, each about 0.1 ms
            // off its path: once the profile is compiled, the private
            // `{tmp}` (mkdir: the slowest, so first) and the hooks directory
            // git's config names, for the workspace the main thread is about
            // to find (it checks it is the same); where this process may
            // make the sandbox's cgroups (the kernel formats our cgroups and
            // the mount table for the reads) and its pids cgroup, once the
            // sandbox is built.
            let _ = tmp_tx.send(make_private_tmp(&root, &id));
            let workspace = match workspace {
                Some(w) => std::fs::canonicalize(w),
                None => std::env::current_dir(),
            };
            let home = std::env::var("HOME").unwrap_or_else(|_| "/nonexistent".into());
            let found = workspace.ok().map(|ws| {
                let rule = crate::gate::hooks::configured_hooks(&ws, &home);
                (ws, home, rule)
            });
            let _ = hooks_tx.send(found);
            let _ = cgroups_tx.send(cgroup_limits.then(|| {
                let found = limits::find_controllers(["pids", "memory"]);
                // Every built-in profile sets max_procs: its cgroup is
                // made here, off the main thread's way (removed at the end
                // if the profile wants none).
                let premade = found[0].as_ref().and_then(|pids| limits::premake(pids, &id));
                sandbox::Controllers { found, premade }
            }));
            // Then whether the kernel's reports will be read, which the
            // command waits for to confine itself (with the ruleset's path
            // rules, which the main thread adds once the stage is
            // configured: GoState): told from here, it does while the log
            // opens (and without a wake-up of the main thread, which the
            // scheduler queued behind this one for 0.4 ms while the other
            // CPU idled). The kernel answers the status request (sent
            // first: see above) from a thread it starts for the reply (the
            // request waits for that thread to exist: about 0.1 ms here, a
            // few milliseconds when the machine was busy).
            let watch = match abi >= 7 && !audit_read {
                true => Err(kaudit::NO_AUDIT_READ.to_string()),
                false => watch_kernel(abi, status, canary, &audit),
            };
            tell_confine(&go, watch.is_ok());
            let mut opened = open_audit(&audit, &id);
            opened.watch = Some(watch);
            // Last, the gate's rule paths (0.1 ms here), which the main
            // thread would otherwise resolve after it configured the stage,
            // on the go-ahead's way. Nothing comes when the run has no gate
            // or ends before it compiled its profile; nor when the job runs
            // on the main thread (no thread could be started), which would
            // wait for itself: decide resolves them then.
            opened.gate_rules = match nix::unistd::gettid() == creator {
                true => None,
                false => gate_rx.recv().ok().map(|g| crate::gate::canonical_rules(&g)),
            };
            opened
        })
    };
    // Dropped before the watch, whose drop waits for the thread: should
    // this return early, the thread's job ends without the gate's rules.
    let gate_tx = gate_tx;
    // Without the thread's answer (it died), made here.
    let root = features.runtime_root();
    let made_here = || make_private_tmp(&root, &id);
    let tmp = move || tmp.recv().unwrap_or_else(|_| made_here());
    let hooks = move |ws: &Path, home: &str| match hooks.recv() {
        Ok(Some((w, h, found))) if w == ws && h == home => found,
        _ => crate::gate::hooks::configured_hooks(ws, home),
    };
    let planned = sandbox::private_tmp_path(&root, &id);
    let session = Session::open_as(&args.sandbox, features, id.clone(), audit, planned, tmp, hooks)?;
    if !session.plan.gate.is_empty() {
        let _ = gate_tx.send(session.plan.gate.clone());
    }
    drop(gate_tx);
    crate::timing::mark("profile loaded and compiled");
    // Without them (the thread died), prepare looks for itself.
    let prepared = session.prepare_with(|| cgroups.take())?;
    crate::timing::mark("sandbox prepared");
    let early = Early { set, watch, opened, canary: canary_path, stage, go: (go_rx, go) };
    launch_with(&session, prepared, &args.command, args.mcp, Some(early), Ending::Exit)
}

pub(super) fn launch(session: &Session, prepared: Prepared, command: &[OsString]) -> Result<i32, Failure> {
    launch_with(session, prepared, command, false, None, Ending::Return)
}

/// The run's audit log, the places no sandbox may reach ([`guarded`]) and,
/// when made with it, the kernel-audit watch ([`watch_kernel`]).
struct AuditOpened {
    evidence: Result<Evidence, Failure>,
    guarded: Vec<crate::evidence::Guarded>,
    watch: Option<Watch>,
    /// The gate's rules with their paths resolved (gate::canonical_rules),
    /// when the thread that opened the log was given them.
    gate_rules: Option<policy::ask::GatePlan>,
}

/// The go-ahead pipe's writer, shared by the threads that may write to it
/// (never duplicated: a copy made while the stage forks would be inherited
/// by the command, which would then never see the end of the pipe that a
/// refusal must give it), with what its first byte waits for. Its `fd` is
/// taken out and dropped to refuse.
type GoAhead = std::sync::Arc<std::sync::Mutex<GoState>>;

/// The go-ahead pipe's writer, and what the command's confine byte
/// ([`stage::CONFINE`] or [`stage::CONFINE_WATCHED`]) waits for: whether
/// the kernel's reports are read (known on `run`'s other thread, or in
/// decide), and the ruleset's path rules, added by launch_with once the
/// stage has its configuration (sandbox::prepare_with's `defer_paths`): a
/// command that restricted itself before would lack them.
struct GoState {
    fd: Option<std::os::fd::OwnedFd>,
    watched: Option<bool>,
    paths_pending: bool,
    /// The confine byte is written.
    told: bool,
}

impl GoState {
    /// Writes the confine byte once both are known (once only); whether
    /// it is written, now or before.
    fn tell(&mut self) -> bool {
        if let (false, false, Some(watched), Some(fd)) = (self.told, self.paths_pending, self.watched, &self.fd) {
            let byte = if watched { stage::CONFINE_WATCHED } else { stage::CONFINE };
            // A stage that already failed has closed its end: spawn reports why.
            self.told = nix::unistd::write(fd, &[byte]).is_ok();
        }
        self.told
    }
}

/// The go-ahead pipe: the stage's end, and ours, with the path rules
/// still to be added ([`paths_added`] says they are). Made once the stage
/// is cloned, which must not hold a copy of the writer.
fn go_ahead() -> Result<(std::os::fd::OwnedFd, GoAhead), Failure> {
    let (rx, tx) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| Failure::setup(format!("cannot make the go-ahead pipe: {e}")))?;
    let state = GoState { fd: Some(tx), watched: None, paths_pending: true, told: false };
    Ok((rx, std::sync::Arc::new(std::sync::Mutex::new(state))))
}

/// The state, also after a thread panicked holding it (every change to
/// it is a single assignment: it is never half made).
fn lock(go: &GoAhead) -> std::sync::MutexGuard<'_, GoState> {
    go.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Says whether the kernel's reports are read: the command confines
/// itself (stage::CONFINE_WATCHED or stage::CONFINE) now, or once the
/// path rules are in.
fn tell_confine(go: &GoAhead, watched: bool) {
    let mut g = lock(go);
    g.watched.get_or_insert(watched);
    g.tell();
}

/// The ruleset the stage holds has every rule: the confine byte may go.
fn paths_added(go: &GoAhead) {
    let mut g = lock(go);
    g.paths_pending = false;
    g.tell();
}

/// Refuses the launch before the command confines itself: the stage
/// reads the end of the go-ahead pipe and stops.
fn refuse(go: &GoAhead) {
    let fd = lock(go).fd.take();
    drop(fd);
}

/// The cgroup controllers (and the cgroup made ahead) from `run`'s other
/// thread. Never taken (the launch was refused before its limits), the
/// cgroup made ahead is removed (waiting for it: the other thread sends it
/// soon, or has ended).
struct AheadCgroups(Option<std::sync::mpsc::Receiver<Option<sandbox::Controllers>>>);

impl AheadCgroups {
    /// None when the thread died.
    fn take(&mut self) -> Option<sandbox::Controllers> {
        self.0.take().and_then(|rx| rx.recv().ok().flatten())
    }
}

impl Drop for AheadCgroups {
    fn drop(&mut self) {
        if let Some(premade) = self.take().and_then(|c| c.premade) {
            limits::cleanup(&[premade]);
        }
    }
}

/// What `run` set up before the profile was loaded: the blocked signals,
/// the launch's signal watcher, the audit log that watcher opens first
/// (after joining the kernel's audit stream and saying whether the
/// command's denials are read: [`tell_confine`]), the canary's path, the
/// stage with its report pipe, and the go-ahead pipe.
struct Early {
    set: nix::sys::signal::SigSet,
    watch: wait::LaunchWatch,
    opened: wait::FirstJob<AuditOpened>,
    canary: Option<PathBuf>,
    stage: (stage::Early, std::os::fd::OwnedFd),
    go: (std::os::fd::OwnedFd, GoAhead),
}

/// Opens the log (reads the key, checks the chain's tail against its
/// checkpoint), then looks up the guarded places, as the opening may have
/// made the log's and key's directories. Needs neither the plan nor the fork.
fn open_audit(audit: &AuditPaths, id: &str) -> AuditOpened {
    let evidence = Evidence::open(audit, id);
    crate::timing::mark("audit log opened");
    AuditOpened { evidence, guarded: guarded(audit), watch: None, gate_rules: None }
}

/// Asks the kernel whether Landlock's own reports of what it refused can
/// be read (ABI 7+, kernel audit on, CAP_AUDIT_READ; the answer took about
/// a millisecond here, much of it spent waiting), and if so joins its audit
/// stream and places the canary: what must be done before the command
/// confines itself, whose reports then queue on the socket until the
/// reader's thread starts ([`start_watcher`]).
fn watch_kernel(
    abi: i32,
    audit_status: Option<kaudit::StatusQuery>,
    canary: Option<kaudit::Canary>,
    audit: &AuditPaths,
) -> Watch {
    let reader = kaudit::probe_with(abi, audit_status)?;
    let mut canary = canary.ok_or("no canary could be placed beside the audit log")?;
    // A first run's log directory may not be made yet.
    if let Some(dir) = audit.log.parent() {
        let _ = crate::evidence::create_private_dir(dir);
    }
    canary.place()?;
    Ok((reader, canary))
}

/// The kernel's audit stream joined and the canary placed, or why the
/// kernel's reports of this sandbox are invisible.
type Watch = Result<(kaudit::Reader, kaudit::Canary), String>;

/// The kernel-audit reader's thread started on [`watch_kernel`]'s socket.
fn start_watcher(
    (reader, canary): (kaudit::Reader, kaudit::Canary),
    audit: &AuditPaths,
    id: &str,
) -> Result<kaudit::Watcher, String> {
    let watcher = kaudit::Watcher::start(reader, canary, audit, id);
    crate::timing::mark("kernel audit watcher started");
    watcher
}

/// How [`launch_with`] ends once the command has exited.
#[derive(PartialEq)]
enum Ending {
    /// Returns the status when the run's evidence is complete.
    Return,
    /// The process may exit with the status before its exit record is
    /// durable, leaving the rest to a finisher (sys::finish).
    Exit,
}

/// `mcp`: the command's stdin/stdout go through the MCP gate (crate::mcp).
///
/// The stage (cloned by `run` before the profile was loaded, or here) is
/// configured as soon as the sandbox is prepared: while init forks the
/// command into its cgroup, this thread ([`decide`]) takes the audit log
/// and the kernel's audit stream (`early`: opened and joined by `run`
/// meanwhile; otherwise it does both), checks what must be refused,
/// writes the launch record, arms the gate and, after the go-ahead, starts
/// the kernel-audit reader. Before that, it adds the Landlock ruleset's
/// path rules (prepared without them: the stage gets the ruleset first).
/// The command confines itself once it is told whether the kernel's
/// reports are read (the first byte of the go-ahead pipe, written once
/// the path rules are in: GoState), and execs only on its go-ahead (the
/// second); a refusal closes the pipe and the command never runs. (A
/// thread of its own for the decision, beside one waiting for the exec,
/// cost more than it overlapped.)
fn launch_with(
    session: &Session,
    prepared: Prepared,
    command: &[OsString],
    mcp: bool,
    early: Option<Early>,
    ending: Ending,
) -> Result<i32, Failure> {
    let Prepared { mut enforcement, exec: allowed, stage, cgroups, gate: gate_setup, mut rule_inodes, paths, .. } =
        prepared;
    let mut cleanup = CgroupCleanup(cgroups);
    // Signals are blocked before any thread exists (audit writers and
    // signers, the kernel-audit reader, the MCP journal, the gate),
    // by `run` or here: every thread inherits the mask, so SIGCHLD can only
    // be taken by the wait loop (see wait::block_signals). Until the
    // command has exec'd, signals go to the stage from the watcher.
    let (set, launch_signals, opened, early_canary, (begun, report_rx), (go_rx, go)) = match early {
        Some(Early { set, watch, opened, canary, stage, go }) => (set, watch, Some(opened), Some(canary), stage, go),
        None => {
            let set = wait::block_signals().map_err(|e| Failure::setup(format!("cannot block signals: {e}")))?;
            let begun = stage::begin(session.features.user_namespaces)
                .map_err(|e| Failure::setup(format!("cannot start the sandbox's first process: {e}")))?;
            (set, wait::LaunchWatch::start(), None, None, begun, go_ahead()?)
        }
    };
    let argv: Vec<String> = command.iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let decision =
        |enforcement, rule_inodes| Decision { session, enforcement, allowed: &allowed, argv: &argv, mcp, rule_inodes };
    let program =
        match exec::resolve_command(&command[0], &session.path_var, &allowed, &session.plan, &enforcement.notices) {
            Ok(p) => p,
            // Nothing to fork: record the refusal (or an earlier one) and stop.
            Err(f) => {
                // A path that fails is the profile's error, and comes first.
                fill(paths, session, &allowed, &mut enforcement, &mut rule_inodes)?;
                let d = decision(&enforcement, &rule_inodes);
                return Err(decide(&d, Err(&f), gate_setup, None, opened, go).err().unwrap_or(f));
            }
        };
    // The canary's name is fixed now (by `run`, or here); the go-ahead says whether it is used.
    let (canary, canary_path) = match early_canary {
        Some(path) => (None, path),
        None => {
            let canary = match session.features.landlock_abi_used >= 7 {
                true => kaudit::Canary::new(&session.audit).ok(),
                false => None,
            };
            let path = canary.as_ref().map(|c| c.path().to_path_buf());
            (canary, path)
        }
    };
    let mut stage = stage;
    if let Some(p) = &canary_path {
        stage.canary = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok();
    }
    stage.go = Some(go_rx);
    let env = env::build(&session.plan.env, std::env::vars_os());
    let exec = match stage::Exec::new(&program, command, &env, mcp) {
        Ok(e) => e,
        Err(e) => {
            let f = Failure::setup(format!("cannot prepare the command's exec: {e}"));
            fill(paths, session, &allowed, &mut enforcement, &mut rule_inodes)?;
            let d = decision(&enforcement, &rule_inodes);
            return Err(decide(&d, Err(&f), gate_setup, None, opened, go).err().unwrap_or(f));
        }
    };
    crate::timing::mark("configuring the stage");
    // This thread cloned the stage, and stays for the whole run:
    // PR_SET_PDEATHSIG in it fires when the thread that cloned it ends.
    // While the command is forked and confines itself (on the other CPU),
    // this thread adds the path rules, decides the launch, then waits for
    // the exec.
    let started = begun.configure(stage, exec);
    // The ruleset's path and exec rules go into the ruleset the stage
    // holds while it forks and readies the command, which restricts
    // itself only once they are in (GoState).
    if let Err(f) = fill(paths, session, &allowed, &mut enforcement, &mut rule_inodes) {
        // As when a path failed before the stage was configured: nothing
        // recorded, and the command stops before Landlock and exec (it
        // reads the end of the go-ahead pipe).
        refuse(&go);
        // The gate's socket goes first: whatever the command parks on its
        // way out fails (ENOSYS) instead of waiting for a gate that never
        // starts.
        drop(gate_setup);
        if let Ok(child) = started.and_then(stage::Started::exec) {
            kill(&child);
            wait::supervise(child.id(), &set);
        }
        return Err(f);
    }
    paths_added(&go);
    // Not before: the rules took twice as long beside that thread's job
    // (A/B, 200 launches: 0.16 ms more).
    launch_signals.share_this_cpu();
    let decision = decision(&enforcement, &rule_inodes);
    let ready = decide(&decision, Ok(program.as_path()), gate_setup, canary, opened, go);
    let spawned = started.and_then(stage::Started::exec);
    crate::timing::mark("command exec'd");
    let ready = match ready {
        Ok(r) => r,
        Err(f) => {
            // Refused (and recorded): the stage read EOF instead of the
            // go-ahead and stopped before it exec'd.
            if let Ok(child) = spawned {
                kill(&child);
                wait::supervise(child.id(), &set);
            }
            return Err(f);
        }
    };
    let Ready { mut evidence, watcher, unwatched, syscall_gate, mcp_gate } = ready;
    let mut child = match spawned {
        Ok(c) => {
            // A prompt on the terminal stops this sandbox while it asks.
            crate::broker::tty::pause_while_asking(c.id());
            c
        }
        Err(e) => {
            let f = spawn_failure(&report_rx, e, command, &program);
            evidence.refused(Kind::Exec, f.code, &f.message, json!({ "program": program }))?;
            return Err(f);
        }
    };
    let mount_ns = child.take_mount_ns();
    // What the command parks waits in the kernel until the gate reads it.
    // A gate the command's exec does not need starts its threads only once
    // a syscall is parked (wait::supervise_until): not at all for a command
    // that never parks one. Should a thread not start, the run ends with
    // the command killed, and nothing parked was ever allowed (ENOSYS once
    // the listener closes).
    let (syscall_gate, idle_gate) = match syscall_gate {
        Some(SyscallGate::Pending(p)) => match p.armed.take_listener() {
            Some(listener) => (None, Some((p, listener))),
            None => (Some(SyscallGate::Pending(p)), None),
        },
        other => (other, None),
    };
    let syscall_gate = match syscall_gate.map(|g| match g {
        SyscallGate::Running(g) => Ok(g),
        SyscallGate::Pending(p) => p.start(None),
    }) {
        Some(Ok(g)) => Some(g),
        Some(Err(f)) => return stop_refused(&child, &set, &mut evidence, f, json!({ "stage": "syscall gate" })),
        None => None,
    };
    let proxy = match mcp_gate.map(|g| crate::mcp::attach(g, &mut child)).transpose() {
        Ok(p) => p,
        Err(f) => return stop_refused(&child, &set, &mut evidence, f, json!({})),
    };
    // Init has mounted /proc (or failed to) before the command could exec.
    let mut reports = stage::read_reports(&report_rx);
    for (_, errno) in reports.iter().filter(|(s, _)| *s == stage::Step::ProcMount) {
        eprintln!(
            "portcullis: note: the sandbox's own /proc could not be mounted ({}): it sees the host's /proc, where other processes' command lines are readable",
            std::io::Error::from_raw_os_error(*errno)
        );
    }
    // Log before the command gets far: the launch record is made durable
    // while the command runs (a command that is done sooner waits for it
    // here); if it cannot be, the command is killed and the sandbox does
    // not go on. Meanwhile the launch's watcher still passes signals on;
    // the wait loop takes over from it after. (A thread of its own for the
    // wait cost more than the fsync it ran beside.)
    let committed = evidence.commit();
    if committed.is_err() {
        kill(&child);
    }
    crate::timing::mark("launch record durable");
    drop(launch_signals);
    let mut watcher = watcher;
    // Once the sandbox is gone (the listener hangs up) nothing can cause a
    // report of it: the kernel-audit reader is asked to stop while its
    // init exits.
    let ask_watcher = || {
        if let Some(w) = watcher.as_mut() {
            w.ask_to_stop();
        }
    };
    // A gate that never started is dropped by the finisher, after the
    // caller has the status (its handles took 0.05 ms to close here); its
    // listener is closed at once, as before (without a PID namespace, what
    // an orphan of the command parks fails then, not at the finisher).
    let mut idle_rest = None;
    let (code, syscall_gate) = match idle_gate {
        Some((pending, listener)) => {
            match wait::supervise_until(child.id(), &set, listener.as_fd(), child.status(), ask_watcher) {
                // Never started: no thread of it acted, or is left to stop.
                Some(code) => {
                    drop(listener);
                    idle_rest = Some(pending);
                    (code, syscall_gate)
                }
                None => match pending.start(Some(listener)) {
                    Ok(g) => (wait::supervise(child.id(), &set), Some(g)),
                    Err(f) => {
                        committed?;
                        return stop_refused(&child, &set, &mut evidence, f, json!({ "stage": "syscall gate" }));
                    }
                },
            }
        }
        None => (wait::supervise(child.id(), &set), syscall_gate),
    };
    // Init is gone, or on its way out (the wait went on with the status it
    // sent): reaped on every way out of here (and before the finisher).
    let init = wait::Reaper(child.id());
    committed?;
    crate::timing::mark("command exited");
    // Parts of the run's evidence that could not be written: the exit
    // record says so, not only stderr. The kernel-audit reader stops last:
    // the gate waits for processes that outlived the command, and for its
    // acting thread's last job, whose denials the reader must still see.
    let mut incomplete = Vec::new();
    incomplete.extend(unwatched.map(|why| format!("kernel-reported denials: the reader did not start: {why}")));
    if let Some(g) = syscall_gate {
        // The reader is told to stop as soon as the gate acts no more, and
        // finds its marker while the gate's records are written.
        let ask = || {
            if let Some(w) = watcher.as_mut() {
                w.ask_to_stop();
            }
        };
        incomplete.extend(g.finish_then(ask).map(|why| format!("syscall gate records: {why}")));
        crate::timing::mark("gate finished");
    }
    if let Some(p) = proxy {
        incomplete.extend(p.finish().map(|why| format!("MCP tool-call records: {why}")));
    }
    // The kernel-audit reader stops at once, between two of its wake-ups
    // (its thread is joined here): what the kernel still has on its way
    // (the marker, the `lost` answer, a tenth of a millisecond here) is
    // read after the caller has the status, by the finisher, which writes
    // those records and the exit record under the log's lock, taken here
    // (readers wait for it); or below, when the run ends another way.
    let reader = watcher.map(kaudit::Watcher::hand_off);
    reports.extend(stage::read_reports(&report_rx));
    if let Some((step, errno)) = reports.into_iter().find(|(s, _)| *s != stage::Step::ProcMount) {
        let f = setup_failed(step, errno);
        let mut evidence = read_to_the_end(reader, evidence, &mut incomplete);
        let extra = if incomplete.is_empty() { json!({}) } else { json!({ "incomplete": incomplete }) };
        evidence.refused(Kind::Exit, f.code, &f.message, extra)?;
        return Err(f);
    }
    if ending == Ending::Exit {
        if let Err(f) = evidence.hold() {
            // The command has run; its status still passes through.
            eprintln!("portcullis: {}", f.message);
            return Ok(code);
        }
        let (tmp, cgroups) = (session.tmp.clone(), std::mem::take(&mut cleanup.0));
        // For the e2e test that shows the order (the caller's status, then
        // the durable record): the finisher waits this long, the log locked.
        // (At most 1.5 s: readers wait 2 s for the lock.)
        let hold = std::env::var("PORTCULLIS_TEST_FINISH_DELAY_MS").ok().and_then(|ms| ms.parse::<u64>().ok());
        let finish = Box::new(move || {
            drop(idle_rest);
            let mut incomplete = incomplete;
            let mut evidence = read_to_the_end(reader, evidence, &mut incomplete);
            if let Some(ms) = hold {
                std::thread::sleep(std::time::Duration::from_millis(ms.min(1500)));
            }
            let recorded = evidence.exit_written(code, &incomplete).and_then(|()| evidence.checkpoint());
            crate::timing::mark("exit record durable");
            // The sandbox's mount namespace goes here, not in its init's
            // exit: its teardown waits for an RCU grace period.
            drop(mount_ns);
            // The cgroups first: their cleanup kills what outlived the
            // command (no PID namespace), which could still write in {tmp}.
            limits::cleanup(&cgroups);
            sandbox::remove_private_tmp(&tmp);
            if let Err(f) = recorded {
                // Not eprintln: a closed stderr must not panic the cleanup away.
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "portcullis: {}", f.message);
            }
        });
        // The sandbox's init too is reaped before the finisher shares our
        // memory, if the run went on with the status it sent (it is
        // exiting, mostly done).
        drop(init);
        crate::timing::done();
        // Returns only where the finisher cannot run here (see sys::finish).
        crate::sys::finish::exit_finishing(code, finish)();
        return Ok(code);
    }
    let mut evidence = read_to_the_end(reader, evidence, &mut incomplete);
    let exit_record = evidence.exit(code, &incomplete);
    crate::timing::mark("exit record durable");
    if let Err(f) = exit_record {
        // The command has run; its status still passes through.
        eprintln!("portcullis: {}", f.message);
    }
    Ok(code)
}

/// The rest of the kernel-audit reader's work (see kaudit::Handoff), its
/// records written through `evidence`; a loss goes into `incomplete`.
fn read_to_the_end(reader: Option<kaudit::Handoff>, evidence: Evidence, incomplete: &mut Vec<String>) -> Evidence {
    let Some(reader) = reader else { return evidence };
    let (lost, evidence) = reader.finish_into(evidence);
    incomplete.extend(lost.map(|why| format!("kernel-reported denials: {why}")));
    crate::timing::mark("kernel audit read to the end");
    evidence
}

fn kill(child: &stage::Spawned) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGKILL);
}

/// What [`decide`] looks at.
struct Decision<'a> {
    session: &'a Session,
    enforcement: &'a sandbox::report::Enforcement,
    allowed: &'a [exec::Resolved],
    argv: &'a [String],
    mcp: bool,
    /// What each path rule's Landlock rule was made from (Prepared::rule_inodes).
    rule_inodes: &'a [Option<(u64, u64)>],
}

/// Adds the ruleset's path and exec rules when they are still to be added
/// (sandbox::prepare_with's `defer_paths`), and sets `rule_inodes` from them.
fn fill(
    paths: Option<sandbox::landlock::Paths>,
    session: &Session,
    allowed: &[exec::Resolved],
    enforcement: &mut sandbox::report::Enforcement,
    rule_inodes: &mut Vec<Option<(u64, u64)>>,
) -> Result<(), Failure> {
    if let Some(paths) = paths {
        *rule_inodes = paths.fill(&session.plan.landlock, allowed, enforcement)?;
        crate::timing::mark("Landlock path rules added");
    }
    Ok(())
}

/// What the launch runs with, once decided.
struct Ready {
    evidence: Evidence,
    watcher: Option<kaudit::Watcher>,
    /// Why the kernel-audit reader did not start after all, when the
    /// launch record says the kernel's reports are recorded.
    unwatched: Option<String>,
    syscall_gate: Option<SyscallGate>,
    mcp_gate: Option<crate::mcp::Prepared>,
}

/// Takes the audit log (or opens it: meanwhile a second thread joins the
/// kernel's audit stream), tells the stage to confine itself, refuses (and
/// records why) a launch that must not happen, writes the launch record,
/// arms the gate, and then gives the stage its go-ahead through `go`, and
/// starts the kernel-audit reader's thread while the command execs. A
/// refusal drops `go` before the go-ahead, which stops the stage before
/// exec. `program`: the resolved command, or why it may not run (then
/// nothing was forked and `go` is None).
fn decide(
    d: &Decision,
    program: Result<&Path, &Failure>,
    gate_setup: Option<crate::gate::Setup>,
    canary: Option<kaudit::Canary>,
    opened: Option<wait::FirstJob<AuditOpened>>,
    go: GoAhead,
) -> Result<Ready, Failure> {
    std::thread::scope(|scope| decide_in(scope, d, program, gate_setup, canary, opened, go))
}

fn decide_in<'scope>(
    scope: &'scope std::thread::Scope<'scope, '_>,
    d: &'scope Decision,
    program: Result<&Path, &Failure>,
    gate_setup: Option<crate::gate::Setup>,
    canary: Option<kaudit::Canary>,
    opened: Option<wait::FirstJob<AuditOpened>>,
    go: GoAhead,
) -> Result<Ready, Failure> {
    let session = d.session;
    // What needs no log is done while the log opens and the reach checks
    // run: the gate's rule paths are resolved, and (unless `run`'s other
    // thread does it: it also says whether the kernel's reports are read,
    // which with the path rules, in by now, lets the command confine
    // itself) a second thread joins the kernel's audit stream
    // (watch_kernel), says so, and resolves the gate's rule paths.
    let gated = gate_setup.is_some();
    let mut gate_setup = gate_setup;
    let mut gate = None;
    let gate_rules = move || gated.then(|| crate::gate::canonical_rules(&session.plan.gate));
    let (opened, prep) = match opened {
        Some(job) => {
            let mut opened = job.wait().unwrap_or_else(|| AuditOpened {
                evidence: Err(Failure::setup(
                    "the thread opening the audit log died; refusing to run without a working audit log",
                )),
                guarded: Vec::new(),
                watch: None,
                gate_rules: None,
            });
            let watch = opened.watch.take().unwrap_or_else(|| Err("the kernel's audit stream was not joined".into()));
            // Resolved by that thread, or here: either way before the
            // go-ahead, so before the command execs anything that could
            // plant a link (the job often ends after the stage was
            // configured; until its exec the command runs only our code).
            let rules = opened.gate_rules.take().or_else(gate_rules);
            (opened, Prep::Done(watch, rules))
        }
        None => {
            gate = gate_setup.take().map(crate::gate::begin);
            let abi = session.features.landlock_abi_used;
            let confine = go.clone();
            let prepare = move || {
                let watch = watch_kernel(abi, None, canary, &session.audit);
                tell_confine(&confine, watch.is_ok());
                (watch, gate_rules())
            };
            let prep = std::thread::Builder::new().name("launch-prep".into()).spawn_scoped(scope, prepare);
            (open_audit(&session.audit, &session.id), Prep::Thread(prep))
        }
    };
    let gate = gate.or_else(|| gate_setup.take().map(crate::gate::begin));
    let AuditOpened { evidence, guarded, .. } = opened;
    let mut evidence = evidence?;
    // The other handles are siblings, made before this one holds the lock.
    let mcp_gate = match d.mcp {
        true => Some(crate::mcp::open(&session.plan, &evidence, &session.id, d.argv)?),
        false => None,
    };
    let gate_evidence = match &gate {
        Some(_) => Some(evidence.sibling()?),
        None => None,
    };
    let f = &session.features;
    let enforcement = d.enforcement;
    let mut launch = json!({
        "profile": session.plan.profile,
        "chain": session.plan.chain,
        "argv": d.argv,
        "workspace": session.workspace,
        "kernel": f.release,
        "landlock_abi": f.landlock_abi_used,
        "uid": f.euid,
        "best_effort": session.plan.best_effort,
        "degraded": enforcement.degradations.iter().map(|d| d.line()).collect::<Vec<_>>(),
        "notices": enforcement.notices,
        "limits": enforcement.limits,
        "exec_allow": d.allowed.iter().map(|r| &r.path).collect::<Vec<_>>(),
    });
    let rules = crate::evidence::RuleInodes::opened(&session.plan, d.rule_inodes);
    // Every launch, gated or not: a sandbox without an ask rule of its own
    // could still forge the answers, or the pins, that a later one trusts.
    let reach = guarded.iter().try_for_each(|g| g.check(&rules));
    if let Err(f) = reach {
        evidence.refused(Kind::Launch, f.code, &f.message, launch)?;
        return Err(f);
    }
    if !enforcement.degradations.is_empty() {
        if !session.plan.best_effort {
            let f = Failure::setup(enforcement.refusal());
            evidence.refused(Kind::Launch, f.code, &f.message, launch)?;
            return Err(f);
        }
        for d in &enforcement.degradations {
            eprintln!("portcullis: degraded: {}", ::audit::display_safe(&d.line()));
            evidence.degradation(json!({ "rule": d.rule, "at": d.at.as_ref().map(|o| o.to_string()), "needs": d.needs, "fallback": d.fallback }))?;
        }
    }
    for n in &enforcement.notices {
        eprintln!("portcullis: note: {}", ::audit::display_safe(n));
    }
    let program = match program {
        Ok(p) => p,
        Err(f) => {
            evidence.refused(Kind::Exec, f.code, &f.message, json!({ "argv": d.argv, "rule": "exec allowlist" }))?;
            return Err(f.clone());
        }
    };
    launch["program"] = json!(program);
    // Without the thread the canary went with it: the launch record says
    // the kernel's reports are invisible, and why.
    let (watch, gate_rules) = match prep {
        Prep::Thread(Ok(h)) => h.join().unwrap_or_else(|_| (Err("the launch-prep thread panicked".into()), None)),
        Prep::Thread(Err(e)) => (Err(format!("cannot start a thread: {e}")), gate_rules()),
        Prep::Done(watch, rules) => (watch, rules),
    };
    launch["kernel_denials"] = match &watch {
        Ok(_) => json!("recorded"),
        Err(why) => json!(format!("invisible: {why}")),
    };
    // Without a byte from the thread that was to tell it (launch-prep, or
    // `run`'s), the command may confine itself now (the canary exists if
    // it is to be opened; the path rules are in). Ours alone from here
    // (that thread has ended).
    let go = {
        let mut g = lock(&go);
        g.watched.get_or_insert(watch.is_ok());
        g.tell();
        g.fd.take()
    };
    evidence.launch(launch)?;
    // Written before the go-ahead, so a log that cannot take it (a full
    // disk) stops the launch before exec; made durable while the command
    // starts (an fsync that fails then kills it).
    evidence.write_ahead()?;
    // What can refuse the gate is done before the go-ahead (its grants
    // file; its acting thread confines itself when the gate's threads
    // start, and a gate that cannot start ends the run, the sandbox
    // killed), and its rule paths are resolved: once the command runs, it
    // could plant symlinks the resolution would follow.
    let gate = match gate.zip(gate_evidence) {
        Some((starting, ev)) => {
            let rules = gate_rules.unwrap_or_else(|| crate::gate::canonical_rules(&session.plan.gate));
            match starting.and_then(|starting| arm_gate(session, starting, rules, d.argv)) {
                Ok(armed) => Some((armed, ev)),
                Err(f) => {
                    evidence.refused(Kind::Exit, f.code, &f.message, json!({ "stage": "syscall gate" }))?;
                    return Err(f);
                }
            }
        }
        None => None,
    };
    // The gate's records wait for the log's lock, which the launch record
    // holds until committed. With exec rules the very first execve may be
    // an ask whose answer must be durable before the command runs: commit
    // the launch record first, or that answer waits for spawn, which waits
    // for it. (A gate handle that never appended needs no lock to be dropped.)
    if gate.is_some() && session.plan.gate.covers(policy::ask::Access::Exec) {
        evidence.commit()?;
    }
    // The go-ahead comes before the gate's threads start (here, or once the
    // command has exec'd: see below): what the command parks waits in the
    // kernel until the gate reads it (its listener is already on the gate's
    // socket).
    if let Some(go) = go {
        let _ = nix::unistd::write(&go, &[stage::GO]);
    }
    // The reader's thread starts while the command execs (on two CPUs, the
    // thread that joined the audit stream was the one the go-ahead waited
    // for); what the kernel reports meanwhile waits on its socket. Should it
    // not start after all, the exit record says so (the launch record said
    // "recorded").
    let (watcher, unwatched) = match watch.map(|w| start_watcher(w, &session.audit, &session.id)) {
        Ok(Ok(w)) => (Some(w), None),
        Ok(Err(why)) => (None, Some(why)),
        Err(_) => (None, None),
    };
    let syscall_gate = match gate {
        Some((armed, ev)) => {
            // The kernel-audit reader is asked to stop by the gate itself, as
            // soon as the sandbox and the gate's acting thread are gone.
            let last = watcher.as_ref().map(|w| {
                let stopper = w.stopper();
                Box::new(move || {
                    stopper.ask();
                }) as Box<dyn FnOnce() + Send>
            });
            let pending = PendingGate { armed, evidence: ev, last };
            // Its threads start once the command has exec'd, off the
            // command's way to it (on two CPUs they delayed the exec by a
            // few tenths of a millisecond); unless the command's own
            // execve may be parked, and waits for them.
            match session.plan.gate.covers(policy::ask::Access::Exec) {
                true => match pending.start(None) {
                    Ok(g) => Some(SyscallGate::Running(g)),
                    Err(f) => {
                        evidence.refused(Kind::Exit, f.code, &f.message, json!({ "stage": "syscall gate" }))?;
                        return Err(f);
                    }
                },
                false => Some(SyscallGate::Pending(Box::new(pending))),
            }
        }
        None => None,
    };
    Ok(Ready { evidence, watcher, unwatched, syscall_gate, mcp_gate })
}

/// The syscall gate, armed before the go-ahead, whose threads may start after it.
struct PendingGate {
    armed: crate::gate::Armed,
    evidence: Evidence,
    last: Option<Box<dyn FnOnce() + Send>>,
}

impl PendingGate {
    /// `listener`: the sandbox's, when the run took it already.
    fn start(self, listener: Option<std::os::fd::OwnedFd>) -> Result<crate::gate::Running, Failure> {
        let g = self.armed.start_with(listener, Some(self.evidence), self.last)?;
        crate::timing::mark("gate started");
        Ok(g)
    }
}

/// Ends a launch that cannot go on once the command runs: the sandbox is
/// killed and waited for, and the refusal recorded.
fn stop_refused(
    child: &stage::Spawned,
    set: &nix::sys::signal::SigSet,
    evidence: &mut Evidence,
    f: Failure,
    body: serde_json::Value,
) -> Result<i32, Failure> {
    kill(child);
    wait::supervise(child.id(), set);
    evidence.refused(Kind::Exit, f.code, &f.message, body)?;
    Err(f)
}

/// The syscall gate as [`decide`] leaves it.
enum SyscallGate {
    Running(crate::gate::Running),
    /// To start once the command has exec'd.
    Pending(Box<PendingGate>),
}

/// The kernel-audit watch and the gate's rule paths (resolved when the run
/// has a gate): from decide's own thread, or known already.
enum Prep<T> {
    Thread(std::io::Result<T>),
    Done(Watch, Option<policy::ask::GatePlan>),
}

/// What no sandbox may reach, whether or not this run has a gate: the
/// audit key and log (AuditPaths::guarded), and what later runs trust: the
/// grants file (a sandbox could grant itself, or the next one, "always"),
/// the broker's socket (answer its own requests, or plant a broker that
/// approves everything) and the MCP tool pins (accept a changed tool). A
/// path that cannot be placed (no $XDG_STATE_HOME or $HOME) is used by no
/// run, and is not checked.
fn guarded(audit: &AuditPaths) -> Vec<crate::evidence::Guarded> {
    use crate::evidence::Guarded;
    let mut lookups = crate::evidence::Lookups::default();
    let mut guarded = Vec::from(audit.guarded(&mut lookups));
    if let Ok(grants) = crate::grants::path() {
        let advice = "set PORTCULLIS_GRANTS or XDG_STATE_HOME outside every rule";
        guarded.push(Guarded::file("grants file", &grants, advice, &mut lookups));
    }
    if let Ok(dir) = crate::broker::socket::dir() {
        let advice = "set XDG_RUNTIME_DIR outside every rule";
        guarded.push(Guarded::file("approval broker socket", &dir.join("broker.sock"), advice, &mut lookups));
    }
    if let Some(dir) = crate::mcp::pins::default_dir() {
        let advice = "move the workspace, or set XDG_STATE_HOME outside every writable rule";
        guarded.push(Guarded::unwritable_dir("the MCP tool pins in", &dir, advice, &mut lookups));
    }
    guarded
}

/// Arms the syscall gate for the plan's `ask`/`deny` rules: its grants.
fn arm_gate(
    session: &Session,
    starting: crate::gate::Starting,
    rules: policy::ask::GatePlan,
    argv: &[String],
) -> Result<crate::gate::Armed, Failure> {
    let grants_path = crate::grants::path()?;
    let file = crate::grants::load(&grants_path)?;
    let ctx = crate::gate::Context {
        plan: rules,
        profile: session.plan.profile.clone(),
        session: session.id.clone(),
        argv: argv.to_vec(),
        grants: policy::ask::Grants::for_profile(&file, &session.plan.profile),
        grants_path,
        asker: crate::gate::default_asker(),
        unix_sockets: session.plan.seccomp.floor.sockets.unix,
        records_per_target: crate::gate::VERDICT_RECORDS_PER_TARGET,
        connect_ports: session.plan.landlock.connect_tcp.iter().map(|p| p.value).collect(),
        tmp: std::fs::canonicalize(&session.tmp).ok().and_then(|t| t.to_str().map(str::to_string)),
    };
    starting.arm(ctx)
}

/// Why spawn failed: a setup step the stage reported, or exec's own error.
fn spawn_failure(report_rx: &std::os::fd::OwnedFd, e: std::io::Error, command: &[OsString], program: &Path) -> Failure {
    if let Some((step, errno)) = stage::read_reports(report_rx).into_iter().find(|(s, _)| *s != stage::Step::ProcMount)
    {
        return setup_failed(step, errno);
    }
    let name = command[0].to_string_lossy();
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            Failure { code: exit::NOT_FOUND, message: format!("{name}: command not found") }
        }
        _ => Failure {
            code: exit::NOT_EXECUTABLE,
            message: format!("{name} ({}): cannot execute: {e}", program.display()),
        },
    }
}

fn setup_failed(step: stage::Step, errno: i32) -> Failure {
    Failure::setup(format!(
        "sandbox setup failed while {}: {}; nothing was run",
        step.describe(),
        std::io::Error::from_raw_os_error(errno)
    ))
}

struct CgroupCleanup(Vec<PathBuf>);

impl Drop for CgroupCleanup {
    fn drop(&mut self) {
        limits::cleanup(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    /// What is in the go-ahead pipe now (it does not block).
    fn pending(rx: &std::os::fd::OwnedFd) -> Vec<u8> {
        let mut buf = [0u8; 8];
        match nix::unistd::read(rx.as_raw_fd(), &mut buf) {
            Ok(n) => buf[..n].to_vec(),
            Err(nix::errno::Errno::EAGAIN) => Vec::new(),
            Err(e) => panic!("read: {e}"),
        }
    }

    fn pipe() -> (std::os::fd::OwnedFd, GoAhead) {
        let (rx, go) = go_ahead().unwrap();
        nix::fcntl::fcntl(rx.as_raw_fd(), nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK)).unwrap();
        (rx, go)
    }

    #[test]
    fn the_confine_byte_waits_for_the_path_rules_and_goes_once() {
        // Told first: the byte waits until the ruleset has its path rules.
        let (rx, go) = pipe();
        tell_confine(&go, true);
        assert_eq!(pending(&rx), b"");
        paths_added(&go);
        assert_eq!(pending(&rx), [stage::CONFINE_WATCHED]);
        // Neither a second word nor decide's own (GoState::tell) sends another.
        tell_confine(&go, false);
        assert!(go.lock().unwrap().tell());
        assert_eq!(pending(&rx), b"");
        // The rules first: the byte goes when told, as told.
        let (rx, go) = pipe();
        paths_added(&go);
        assert_eq!(pending(&rx), b"");
        tell_confine(&go, false);
        assert_eq!(pending(&rx), [stage::CONFINE]);
        // Refused before the rules were in: the stage reads the end, no byte.
        let (rx, go) = pipe();
        tell_confine(&go, true);
        refuse(&go);
        paths_added(&go);
        assert!(matches!(nix::unistd::read(rx.as_raw_fd(), &mut [0u8; 1]), Ok(0)), "EOF expected");
    }
}
