//! `portcullis grants list | revoke ID | clear`.

use clap::Subcommand;

use crate::exit::Failure;
use crate::grants;

#[derive(Subcommand, Debug)]
pub enum GrantsCmd {
    /// Persisted answers: id, profile, allow/deny, access, target.
    List {
        #[arg(long)]
        json: bool,
        /// Only this profile's.
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
    },
    /// Remove one grant: the next such operation asks again.
    Revoke { id: String },
    /// Remove every grant (of one profile with --profile).
    Clear {
        #[arg(long, value_name = "NAME")]
        profile: Option<String>,
    },
}

pub fn grants(cmd: GrantsCmd) -> Result<i32, Failure> {
    let path = grants::path()?;
    match cmd {
        GrantsCmd::List { json, profile } => {
            let f = grants::load(&path)?;
            let list: Vec<_> = f.grants.iter().filter(|g| profile.as_ref().is_none_or(|p| &g.profile == p)).collect();
            if json {
                println!("{}", serde_json::to_string_pretty(&list).unwrap_or_else(|_| "[]".into()));
            } else if list.is_empty() {
                println!("no grants ({})", path.display());
            } else {
                println!("{:<8}  {:<16}  {:<5}  {:<7}  TARGET", "ID", "PROFILE", "", "ACCESS");
                for g in list {
                    let verdict = if g.allow { "allow" } else { "deny" };
                    // A target is a name the sandbox chose: shown escaped.
                    let line =
                        format!("{:<8}  {:<16}  {verdict:<5}  {:<7}  {}", g.id, g.profile, g.access.as_str(), g.target);
                    println!("{}", ::audit::display_safe(&line));
                }
            }
            Ok(0)
        }
        GrantsCmd::Revoke { id } => {
            let removed = grants::update(&path, |f| {
                let before = f.grants.len();
                f.grants.retain(|g| g.id != id);
                before - f.grants.len()
            })?;
            if removed == 0 {
                eprintln!("portcullis: no grant with id {id} (see `portcullis grants list`)");
                return Ok(1);
            }
            println!("revoked {id}");
            Ok(0)
        }
        GrantsCmd::Clear { profile } => {
            let removed = grants::update(&path, |f| {
                let before = f.grants.len();
                f.grants.retain(|g| profile.as_ref().is_some_and(|p| &g.profile != p));
                before - f.grants.len()
            })?;
            println!("cleared {removed} grant(s)");
            Ok(0)
        }
    }
}
