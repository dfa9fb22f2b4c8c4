//! Git hooks a repository's own config moves into its work tree
//! (`core.hooksPath = .husky/_`, `= githooks`): ordinary writable files,
//! which git runs on the user's next commit or checkout. When a profile
//! protects `.git/hooks`, the directory the workspace's config names is
//! protected the same way (docs/GATE.md).

use std::path::Path;

use policy::ask::{Access, GatePlan, GateRule, Target};
use policy::mcp::Category;
use policy::Origin;

/// `core.hooksPath` in the text of a git config file, with its 1-based
/// line: the last one wins, as in git. Sections and keys are
/// case-insensitive; values may be quoted. Includes are not followed.
pub fn hooks_path(config: &str) -> Option<(String, usize)> {
    let mut section = String::new();
    let mut found = None;
    for (i, raw) in config.lines().enumerate() {
        let line = raw.trim();
        if let Some(rest) = line.strip_prefix('[') {
            let name = rest.split([']', ' ', '"', '.']).next().unwrap_or("");
            section = name.to_ascii_lowercase();
            continue;
        }
        if section != "core" || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else { continue };
        if !key.trim().eq_ignore_ascii_case("hookspath") {
            continue;
        }
        let value = value.split([';', '#']).next().unwrap_or("").trim();
        let value = value.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(value);
        if !value.is_empty() {
            found = Some((value.to_string(), i + 1));
        }
    }
    found
}

/// Whether the plan protects git hooks (a deny on `.git/hooks`).
fn protects_hooks(plan: &GatePlan) -> bool {
    plan.rules.iter().any(|r| {
        r.deny
            && r.access == Access::Write
            && match &r.target {
                Target::Anywhere(s) => s == ".git/hooks",
                Target::Path(p) => p.ends_with("/.git/hooks"),
                _ => false,
            }
    })
}

/// Adds a deny rule for the hooks directory `workspace`'s git config
/// names, when the plan protects hooks at all. A relative path is the work
/// tree's, `~/` the user's home.
pub fn protect_configured_hooks(plan: &mut GatePlan, workspace: &Path, home: &str) {
    if !protects_hooks(plan) {
        return;
    }
    let config = workspace.join(".git/config");
    let Ok(text) = std::fs::read_to_string(&config) else { return };
    let Some((value, line)) = hooks_path(&text) else { return };
    let dir = match value.strip_prefix("~/") {
        Some(rest) => Path::new(home).join(rest),
        None => workspace.join(&value),
    };
    // Normalised as rules are: no `.` or `..` left (a `..` would leave the tree).
    let mut parts: Vec<String> = Vec::new();
    for c in dir.components() {
        match c {
            std::path::Component::Normal(n) => parts.push(n.to_string_lossy().into_owned()),
            std::path::Component::ParentDir => {
                parts.pop();
            }
            _ => {}
        }
    }
    plan.rules.push(GateRule {
        access: Access::Write,
        target: Target::Path(format!("/{}", parts.join("/"))),
        deny: true,
        category: Category::Write,
        timeout_ms: 0,
        at: Origin::new(format!("{} (core.hooksPath)", config.display()), line),
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_path_is_read_as_git_reads_it() {
        let c = "[core]\n\trepositoryformatversion = 0\n[Core]\n\tHooksPath = \".husky/_\" ; husky\n";
        assert_eq!(hooks_path(c), Some((".husky/_".into(), 4)));
        assert_eq!(hooks_path("[core]\n\thooksPath = a\n\thookspath = b\n"), Some(("b".into(), 3)));
        assert_eq!(hooks_path("[alias]\n\thooksPath = x\n"), None);
        assert_eq!(hooks_path("[core \"x\"]\n# hooksPath = y\n"), None);
        assert_eq!(hooks_path("[core]\n\tbare = false\n"), None);
    }
}
