//! `portcullis run`: load, compile, prepare, then fork and supervise.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::{RunArgs, SandboxArgs};
use crate::exit::{self, Failure};
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
}

impl Session {
    /// Loads and compiles the profile with the flags; creates `{tmp}`.
    pub fn open(args: &SandboxArgs) -> Result<Session, Failure> {
        let features = Features::probe();
        crate::timing::mark("kernel probed");
        let nanos =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
        let id = format!("{}-{:08x}", std::process::id(), nanos);
        let mut profile = policy::Loader::from_env().load(&args.profile)?;
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
        crate::timing::mark("profile loaded");
        let tmp = sandbox::private_tmp(&features.runtime_root(), &id)?;
        let vars = policy::Vars { workspace: path_str(&workspace)?, home, tmp: path_str(&tmp)? };
        let plan = match policy::compile(&profile, &vars) {
            Ok(p) => p,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&tmp);
                return Err(e.into());
            }
        };
        let path_var = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        Ok(Session { id, features, plan, tmp, path_var })
    }

    pub fn prepare(&self, dry: bool) -> Result<Prepared, Failure> {
        sandbox::prepare(&self.plan, &self.features, &self.path_var, &self.id, dry)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.tmp);
    }
}

fn path_str(p: &Path) -> Result<String, Failure> {
    p.to_str().map(str::to_string).ok_or_else(|| Failure::setup(format!("path {} is not UTF-8", p.display())))
}

pub fn run(args: RunArgs) -> Result<i32, Failure> {
    // A sandboxed process of the same uid must not read our memory.
    stage::set_undumpable();
    let session = Session::open(&args.sandbox)?;
    crate::timing::mark("profile loaded and compiled");
    let prepared = session.prepare(false)?;
    crate::timing::mark("sandbox prepared");
    launch(&session, prepared, &args.command)
}

pub(super) fn launch(session: &Session, prepared: Prepared, command: &[OsString]) -> Result<i32, Failure> {
    let Prepared { enforcement, exec: allowed, stage, report_rx, cgroups, .. } = prepared;
    let _cleanup = CgroupCleanup(cgroups);
    if !enforcement.degradations.is_empty() {
        if !session.plan.best_effort {
            return Err(Failure::setup(enforcement.refusal()));
        }
        for d in &enforcement.degradations {
            eprintln!("portcullis: degraded: {}", d.line());
        }
    }
    for n in &enforcement.notices {
        eprintln!("portcullis: note: {n}");
    }
    let program = exec::resolve_command(&command[0], &session.path_var, &allowed, &session.plan.profile)?;
    let env = env::build(&session.plan.env, std::env::vars_os());
    let mut cmd = Command::new(&program);
    cmd.arg0(&command[0]).args(&command[1..]).env_clear().envs(env);

    let set = wait::block_signals().map_err(|e| Failure::setup(format!("cannot block signals: {e}")))?;
    crate::timing::mark("forking");
    let spawned = stage::spawn(&mut cmd, stage);
    crate::timing::mark("command exec'd");
    // Drop our copies of the stage's fds (ruleset, report pipe, cgroup files).
    drop(cmd);
    let child = match spawned {
        Ok(c) => c,
        Err(e) => {
            if let Some((step, errno)) =
                stage::read_reports(&report_rx).into_iter().find(|(s, _)| *s != stage::Step::ProcMount)
            {
                return Err(setup_failed(step, errno));
            }
            let name = command[0].to_string_lossy();
            return Err(match e.kind() {
                std::io::ErrorKind::NotFound => {
                    Failure { code: exit::NOT_FOUND, message: format!("{name}: command not found") }
                }
                _ => Failure {
                    code: exit::NOT_EXECUTABLE,
                    message: format!("{name} ({}): cannot execute: {e}", program.display()),
                },
            });
        }
    };
    // Init has mounted /proc (or failed to) before the command could exec.
    let mut reports = stage::read_reports(&report_rx);
    for (_, errno) in reports.iter().filter(|(s, _)| *s == stage::Step::ProcMount) {
        eprintln!(
            "portcullis: note: the sandbox's own /proc could not be mounted ({}): it sees the host's /proc, where other processes' command lines are readable",
            std::io::Error::from_raw_os_error(*errno)
        );
    }
    let code = wait::supervise(child.id(), &set);
    crate::timing::mark("command exited");
    reports.extend(stage::read_reports(&report_rx));
    if let Some((step, errno)) = reports.into_iter().find(|(s, _)| *s != stage::Step::ProcMount) {
        return Err(setup_failed(step, errno));
    }
    Ok(code)
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
