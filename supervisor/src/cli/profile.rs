//! `portcullis profile list | show | check`.

use std::ffi::OsString;

use super::run::{launch, Session};
use super::{probe_op, ProfileCmd, SandboxArgs};
use crate::exit::Failure;
use policy::{Loader, ProfileSource};

pub fn profile(cmd: ProfileCmd) -> Result<i32, Failure> {
    let loader = Loader::from_env();
    match cmd {
        ProfileCmd::Test { name, vm: false } => test(&loader, &name),
        ProfileCmd::Test { name, vm: true } => test_in_vms(&name),
        ProfileCmd::List => {
            for (name, src) in loader.list() {
                let desc = loader.load(&name).ok().and_then(|p| p.description).unwrap_or_default();
                println!("{name:<12} {:<48} {desc}", src.label());
            }
            Ok(0)
        }
        ProfileCmd::Show { name } => {
            let profile = loader.load(&name)?;
            println!("# {} (chain: {})", name, profile.chain.join(" -> "));
            let (src, text) = loader.find(&name, None)?;
            if let ProfileSource::File(p) = &src {
                println!("# from {}", p.display());
            }
            print!("{text}");
            Ok(0)
        }
        ProfileCmd::Check { file } => {
            let name = file.to_string_lossy().to_string();
            let name = if name.contains('/') || name.ends_with(".toml") { name } else { format!("./{name}") };
            let profile = loader.load(&name)?;
            let cwd = std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_else(|_| "/".into());
            let home = std::env::var("HOME").unwrap_or_else(|_| "/".into());
            let vars = policy::Vars { workspace: cwd, home, tmp: std::env::temp_dir().display().to_string() };
            let plan = policy::compile(&profile, &vars)?;
            // The checks that need this machine: required paths exist, commands resolve.
            for r in &plan.landlock.paths {
                if !r.optional && std::fs::symlink_metadata(&r.path).is_err() {
                    return Err(Failure::setup(format!("{}: path {} does not exist", r.at, r.path)));
                }
            }
            let path_var = std::env::var_os("PATH").unwrap_or_default();
            let writable = crate::sandbox::exec::Writable::of(&plan);
            let mut notes = Vec::new();
            crate::sandbox::exec::resolve_all(&plan.exec.allow, &path_var, &writable, &mut Vec::new(), &mut notes)?;
            for n in notes {
                println!("{}", ::audit::display_safe(&format!("{}: note: {n}", file.display())));
            }
            println!(
                "{}: ok ({} path rules, {} commands, {} seccomp rules)",
                file.display(),
                plan.landlock.paths.len(),
                plan.exec.allow.len(),
                plan.seccomp.rules.len()
            );
            Ok(0)
        }
    }
}

/// Runs each `[[expect]]` of `name` in a fresh sandbox of that profile.
fn test(loader: &Loader, name: &str) -> Result<i32, Failure> {
    let profile = loader.load(name)?;
    if profile.expect.is_empty() {
        return Err(Failure::setup(format!("profile `{name}` has no [[expect]] entries to test")));
    }
    let me = std::env::current_exe().map_err(|e| Failure::setup(format!("cannot find the portcullis binary: {e}")))?;
    let me_s = me.to_string_lossy().to_string();
    let ws = std::env::temp_dir().join(format!("portcullis-profile-test-{}", std::process::id()));
    // A workspace like a real one: a git checkout, whose hooks and config
    // the built-in profiles protect, with a repository nested in it.
    std::fs::create_dir_all(ws.join(".git/hooks"))
        .and_then(|()| std::fs::write(ws.join(".git/config"), "[core]\n"))
        .and_then(|()| std::fs::create_dir_all(ws.join("vendor/lib/.git/hooks")))
        .map_err(|e| Failure::setup(format!("{}: {e}", ws.display())))?;
    let args = SandboxArgs { workspace: Some(ws.clone()), exec: vec![me_s.clone()], ..SandboxArgs::for_profile(name) };
    let mut failed = 0;
    for e in &profile.expect {
        let session = Session::open(&args)?;
        let vars = policy::Vars {
            workspace: ws.to_string_lossy().to_string(),
            home: std::env::var("HOME").unwrap_or_else(|_| "/nonexistent".into()),
            tmp: session.tmp.to_string_lossy().to_string(),
        };
        let target = vars.expand(&e.value.target, &e.at)?;
        let prepared = session.prepare(false)?;
        let command: Vec<OsString> =
            vec![me.clone().into(), "probe-op".into(), e.value.op.name().into(), target.clone().into()];
        let code = launch(&session, prepared, &command)?;
        let want = if e.value.allow { "allow" } else { "deny" };
        let got = match code {
            probe_op::ALLOWED => "allow",
            probe_op::DENIED => "deny",
            _ => "untestable",
        };
        let line = format!("{} {target} -> {want}", e.value.op.name());
        if got == want {
            println!("PASS {line}  ({})", e.at);
        } else {
            failed += 1;
            println!("FAIL {line}, got {got}  ({})", e.at);
        }
    }
    let _ = std::fs::remove_dir_all(&ws);
    println!("profile {name}: {} expectations, {failed} failed", profile.expect.len());
    Ok(if failed == 0 { 0 } else { 1 })
}

/// `profile test --vm`: the same expectations on every kernel of the VM
/// matrix, through `cargo xtask vm-test` of the source tree this binary was
/// built from.
fn test_in_vms(name: &str) -> Result<i32, Failure> {
    let me = std::env::current_exe().map_err(|e| Failure::setup(e.to_string()))?;
    let tree = me
        .ancestors()
        .find(|d| d.join("xtask/Cargo.toml").is_file() && d.join("vm-tests").is_dir())
        .ok_or_else(|| Failure::setup("--vm needs the portcullis source tree (it runs `cargo xtask vm-test`); this binary was not run from one"))?;
    let status = std::process::Command::new("cargo")
        .args(["xtask", "vm-test", "--profile", name])
        .current_dir(tree)
        .status()
        .map_err(|e| Failure::setup(format!("cannot run cargo xtask vm-test: {e}")))?;
    Ok(status.code().unwrap_or(1))
}
