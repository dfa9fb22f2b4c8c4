//! `portcullis profile list | show | check`.

use super::ProfileCmd;
use crate::exit::Failure;
use policy::{Loader, ProfileSource};

pub fn profile(cmd: ProfileCmd) -> Result<i32, Failure> {
    let loader = Loader::from_env();
    match cmd {
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
            crate::sandbox::exec::resolve_all(&plan.exec.allow, &path_var, &mut Vec::new())?;
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
