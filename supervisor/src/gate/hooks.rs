//! Git hooks a repository's own config moves into its work tree
//! (`core.hooksPath = .husky/_`, `= githooks`): ordinary writable files,
//! which git runs on the user's next commit or checkout. When a profile
//! protects `.git/hooks`, the directory the workspace's config names is
//! protected the same way (docs/GATE.md).

use std::path::Path;

use policy::ask::{Access, GatePlan, GateRule, Target};
use policy::mcp::Category;
use policy::Origin;

/// `core.hooksPath` in a git config file's bytes, with its 1-based line:
/// the last one wins, as in git. Read as git reads it: section and key
/// names are case-insensitive, a `[core] key = value` line holds both,
/// `[core "x"]` and `[core.x]` are other sections, `;` and `#` start a
/// comment outside quotes, `\` escapes and continues lines, and blanks
/// outside quotes are spaces (trailing ones dropped). Includes are not
/// followed.
pub fn hooks_path(config: &[u8]) -> Option<(String, usize)> {
    let mut in_core = false;
    let mut found = None;
    let mut line_no = 0;
    // git skips a UTF-8 byte-order mark, and reads no further than a NUL.
    let config = config.strip_prefix(b"\xef\xbb\xbf").unwrap_or(config);
    let config = config.split(|&b| b == 0).next().unwrap_or(config);
    let mut lines = config.split(|&b| b == b'\n').peekable();
    while let Some(raw) = lines.next() {
        line_no += 1;
        let at = line_no;
        let mut rest = trim_start(raw);
        // Headers, as many as the line holds (`[alias] [core] hooksPath = x`).
        while let Some(header) = rest.strip_prefix(b"[") {
            let Some(end) = header.iter().position(|&b| b == b']') else { break };
            let name = &header[..end];
            in_core = name.eq_ignore_ascii_case(b"core");
            rest = trim_start(&header[end + 1..]);
        }
        if !in_core {
            continue;
        }
        let key_len = rest.iter().position(|b| !(b.is_ascii_alphanumeric() || *b == b'-')).unwrap_or(rest.len());
        if !rest[..key_len].eq_ignore_ascii_case(b"hookspath") {
            continue;
        }
        let Some(value) = trim_start(&rest[key_len..]).strip_prefix(b"=") else { continue };
        let (value, continued) = parse_value(value, &mut lines);
        line_no += continued;
        if !value.is_empty() {
            found = Some((String::from_utf8_lossy(&value).into_owned(), at));
        }
    }
    found
}

fn trim_start(b: &[u8]) -> &[u8] {
    let n = b.iter().position(|c| !matches!(c, b' ' | b'\t' | b'\r')).unwrap_or(b.len());
    &b[n..]
}

/// A value after its `=`, through continuation lines (how many are taken).
fn parse_value<'a>(first: &'a [u8], more: &mut impl Iterator<Item = &'a [u8]>) -> (Vec<u8>, usize) {
    let (mut out, mut quoted, mut blanks, mut taken) = (Vec::new(), false, 0, 0);
    let mut line = trim_start(first);
    'lines: loop {
        let mut i = 0;
        while i < line.len() {
            let c = line[i];
            i += 1;
            match c {
                b'\r' if i == line.len() => {}
                b' ' | b'\t' if !quoted => blanks += usize::from(!out.is_empty()),
                b';' | b'#' if !quoted => break 'lines,
                _ => {
                    out.extend(std::iter::repeat_n(b' ', blanks));
                    blanks = 0;
                    match c {
                        b'"' => quoted = !quoted,
                        b'\\' => match line.get(i..) {
                            Some([] | [b'\r']) | None => match more.next() {
                                Some(next) => {
                                    taken += 1;
                                    line = next;
                                    continue 'lines;
                                }
                                None => break 'lines,
                            },
                            Some(rest) => {
                                let e = &rest[0];
                                i += 1;
                                out.push(match e {
                                    b'n' => b'\n',
                                    b't' => b'\t',
                                    b'b' => 8,
                                    other => *other,
                                });
                            }
                        },
                        other => out.push(other),
                    }
                }
            }
        }
        break;
    }
    (out, taken)
}

/// Whether the plan protects git hooks (a deny on `.git/hooks`).
fn protects_hooks(plan: &GatePlan) -> bool {
    plan.rules.iter().any(|r| {
        r.deny
            && r.access == Access::Write
            && match &r.target {
                Target::Anywhere(s) => s == ".git/hooks" || s == ".git",
                Target::Path(p) => p.ends_with("/.git/hooks") || p.ends_with("/.git"),
                _ => false,
            }
    })
}

/// The config files git reads for `workspace`'s repository, lowest
/// precedence first: system, the user's (XDG, then `~/.gitconfig`), the
/// repository's and its worktree's. `.git` may be a file (`gitdir: X`: a
/// linked worktree or a submodule), whose git dir may share a common one.
fn config_files(workspace: &Path, home: &str) -> Vec<std::path::PathBuf> {
    let xdg = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| Path::new(v).is_absolute())
        .map_or_else(|| Path::new(home).join(".config"), std::path::PathBuf::from);
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(std::path::PathBuf::from);
    // The system file is $(prefix)/etc/gitconfig: /etc for a distribution's
    // git, /usr/local/etc for one built from source.
    let mut files = match env("GIT_CONFIG_NOSYSTEM") {
        Some(_) => vec![],
        None => env("GIT_CONFIG_SYSTEM")
            .map_or_else(|| vec!["/etc/gitconfig".into(), "/usr/local/etc/gitconfig".into()], |p| vec![p]),
    };
    match env("GIT_CONFIG_GLOBAL") {
        Some(p) => files.push(p),
        None => files.extend([xdg.join("git/config"), Path::new(home).join(".gitconfig")]),
    }
    let dot = workspace.join(".git");
    let gitdir = match std::fs::read(&dot) {
        Ok(text) => {
            let text = String::from_utf8_lossy(&text);
            match text.lines().next().and_then(|l| l.strip_prefix("gitdir:")) {
                Some(d) => workspace.join(d.trim()),
                None => return files,
            }
        }
        Err(_) => dot,
    };
    let common = match std::fs::read_to_string(gitdir.join("commondir")) {
        Ok(c) => gitdir.join(c.trim_end_matches(['\n', '\r'])),
        Err(_) => gitdir.clone(),
    };
    files.push(common.join("config"));
    files.push(gitdir.join("config.worktree"));
    files
}

/// Adds a deny rule for the hooks directory `workspace`'s git config
/// names (the last `core.hooksPath` of the files git reads), when the plan
/// protects hooks at all. A relative path is the work tree's, `~/` the
/// user's home.
pub fn protect_configured_hooks(plan: &mut GatePlan, workspace: &Path, home: &str) {
    protect_found_hooks(plan, configured_hooks(workspace, home));
}

/// [`protect_configured_hooks`] with the rule [`configured_hooks`] found.
pub fn protect_found_hooks(plan: &mut GatePlan, found: Option<GateRule>) {
    if let (Some(rule), true) = (found, protects_hooks(plan)) {
        plan.rules.push(rule);
    }
}

/// The deny rule for the hooks directory `workspace`'s git config names,
/// if it names one: what [`protect_configured_hooks`] adds. Reads git's
/// config files, and nothing of the plan: a launch looks while its profile
/// loads, on another thread.
pub fn configured_hooks(workspace: &Path, home: &str) -> Option<GateRule> {
    let mut last = None;
    for file in config_files(workspace, home) {
        if let Ok(bytes) = std::fs::read(&file) {
            if let Some(found) = hooks_path(&bytes) {
                last = Some((file, found));
            }
        }
    }
    let (config, (value, line)) = last?;
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
    Some(GateRule {
        access: Access::Write,
        target: Target::Path(format!("/{}", parts.join("/"))),
        deny: true,
        category: Category::Write,
        timeout_ms: 0,
        at: Origin::new(format!("{} (core.hooksPath)", config.display()), line),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hooks_path_is_read_as_git_reads_it() {
        let h = |c: &str| hooks_path(c.as_bytes());
        let c = "[core]\n\trepositoryformatversion = 0\n[Core]\n\tHooksPath = \".husky/_\" ; husky\n";
        assert_eq!(h(c), Some((".husky/_".into(), 4)));
        assert_eq!(h("[core]\n\thooksPath = a\n\thookspath = b\n"), Some(("b".into(), 3)));
        assert_eq!(h("[alias]\n\thooksPath = x\n"), None);
        assert_eq!(h("[core \"x\"]\n\thooksPath = y\n"), None, "a subsection is another section");
        assert_eq!(h("[core.x]\n\thooksPath = y\n"), None);
        assert_eq!(h("[core]\n# hooksPath = y\n; hooksPath = z\n"), None);
        assert_eq!(h("[core]\n\tbare = false\n"), None);
        assert_eq!(h("[core]\n\thooksPathX = y\n"), None);
        // What a simpler reading missed (a reviewer's list).
        assert_eq!(h("[core] hooksPath = one\n"), Some(("one".into(), 1)), "section and key on one line");
        assert_eq!(h("[core]\nhooksPath = \"a;b\"#c\n"), Some(("a;b".into(), 2)), "quoted ; is no comment");
        assert_eq!(h("[core]\nhooksPath = a\\\"b\\\\c\n"), Some(("a\"b\\c".into(), 2)), "escapes");
        assert_eq!(h("[core]\nhooksPath = x\\\ny\n\tbare = true\n"), Some(("xy".into(), 2)), "a continued line");
        assert_eq!(h("[core]\nhooksPath = a  b \t\n"), Some(("a  b".into(), 2)), "blanks are spaces, trailing go");
        assert_eq!(h("[core]\r\nhooksPath=crlf\r\n"), Some(("crlf".into(), 2)));
        // A second reviewer's list, each checked against `git config -f`.
        assert_eq!(h("\u{feff}[core]\nhooksPath = bom\n"), Some(("bom".into(), 2)), "a byte-order mark");
        assert_eq!(h("[alias] [core] hooksPath = two\n"), Some(("two".into(), 1)), "two headers on a line");
        assert_eq!(h("[core]\nhooksPath = con\\\r\ntinued\r\n"), Some(("continued".into(), 2)), "CRLF continuation");
        assert_eq!(h("[core]\nhooksPath = a\0b\n"), Some(("a".into(), 2)), "a NUL ends it");
        let mut bytes = b"[core]\nhooksPath = h\xffd\n".to_vec();
        assert_eq!(hooks_path(&bytes), Some(("h\u{fffd}d".into(), 2)), "a config that is not UTF-8 is still read");
        bytes.extend_from_slice(b"[core]\nhooksPath =\n");
        assert_eq!(hooks_path(&bytes), Some(("h\u{fffd}d".into(), 2)), "an empty value is no path");
    }

    #[test]
    fn a_worktree_or_submodule_reads_the_config_its_gitdir_names() {
        let root = std::env::temp_dir().join(format!("pc-hooks-{}", std::process::id()));
        let (ws, home) = (root.join("ws"), root.join("home"));
        let gitdir = root.join("main/.git/worktrees/w");
        std::fs::create_dir_all(&gitdir).unwrap();
        std::fs::create_dir_all(&ws).unwrap();
        std::fs::create_dir_all(&home).unwrap();
        std::fs::write(ws.join(".git"), format!("gitdir: {}\n", gitdir.display())).unwrap();
        std::fs::write(gitdir.join("commondir"), "../..\n").unwrap();
        std::fs::write(root.join("main/.git/config"), "[core]\n\thooksPath = hooks-here\n").unwrap();
        let files = config_files(&ws, home.to_str().unwrap());
        assert_eq!(files[files.len() - 2], gitdir.join("../..").join("config"));
        let mut plan = GatePlan {
            rules: vec![GateRule {
                access: Access::Write,
                target: Target::Anywhere(".git/hooks".into()),
                deny: true,
                category: Category::Write,
                timeout_ms: 0,
                at: Origin::new("t", 1),
            }],
            ..GatePlan::default()
        };
        protect_configured_hooks(&mut plan, &ws, home.to_str().unwrap());
        let added = plan.rules.last().unwrap();
        assert_eq!(added.target, Target::Path(format!("{}/hooks-here", ws.display())));
        // The user's own config counts too, below the repository's.
        std::fs::write(root.join("main/.git/config"), "[core]\n").unwrap();
        std::fs::write(home.join(".gitconfig"), "[core]\n\thooksPath = .githooks\n").unwrap();
        protect_configured_hooks(&mut plan, &ws, home.to_str().unwrap());
        assert_eq!(plan.rules.last().unwrap().target, Target::Path(format!("{}/.githooks", ws.display())));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
