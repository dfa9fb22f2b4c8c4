//! `portcullis wrap FILE` / `unwrap FILE`: put `portcullis run --mcp` in
//! front of the stdio servers of an MCP client's config, and take it away.
//!
//! Shapes (from each client's documentation):
//! - Claude Desktop `claude_desktop_config.json`, Claude Code `.mcp.json`,
//!   Cursor `~/.cursor/mcp.json`: `{"mcpServers": {NAME: {"command", "args", "env"}}}`;
//! - Claude Code `~/.claude.json`: the same at the top and under `projects.PATH.mcpServers`;
//! - VS Code `.vscode/mcp.json`: `{"servers": {NAME: {"type": "stdio", "command", "args"}}}`.
//!
//! Servers with a `url` (HTTP, SSE) are left alone with a note. Only the
//! `command` and `args` values are rewritten, in place: every other byte of
//! the file stays as it was. The original is kept as `FILE.portcullis-backup`;
//! `unwrap` restores it byte for byte when the file is still what `wrap`
//! wrote, and otherwise unwraps each server in place.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::exit::Failure;

/// `FILE.portcullis-backup`.
pub fn backup_path(file: &Path) -> PathBuf {
    let mut s = file.as_os_str().to_owned();
    s.push(".portcullis-backup");
    PathBuf::from(s)
}

// ------------------------------------------------------------ a JSON reader that keeps byte spans

#[derive(Debug)]
enum Node {
    Object(Vec<(String, Span)>),
    Array,
    Scalar,
}

#[derive(Debug)]
struct Span {
    start: usize,
    end: usize,
    node: Node,
}

struct Reader<'a> {
    b: &'a [u8],
    i: usize,
}

impl Reader<'_> {
    fn ws(&mut self) {
        while self.i < self.b.len() && self.b[self.i].is_ascii_whitespace() {
            self.i += 1;
        }
    }

    fn value(&mut self, depth: usize) -> Result<Span, String> {
        if depth > 64 {
            return Err("nested too deep".into());
        }
        self.ws();
        let start = self.i;
        let node = match self.b.get(self.i) {
            Some(b'{') => {
                self.i += 1;
                let mut members = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b'}') {
                    self.i += 1;
                } else {
                    loop {
                        self.ws();
                        let ks = self.i;
                        self.string()?;
                        let key: String = serde_json::from_slice(&self.b[ks..self.i]).map_err(|e| e.to_string())?;
                        self.ws();
                        if self.b.get(self.i) != Some(&b':') {
                            return Err(format!("expected `:` at byte {}", self.i));
                        }
                        self.i += 1;
                        members.push((key, self.value(depth + 1)?));
                        self.ws();
                        match self.b.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b'}') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(format!("expected `,` or `}}` at byte {}", self.i)),
                        }
                    }
                }
                Node::Object(members)
            }
            Some(b'[') => {
                self.i += 1;
                let mut items = Vec::new();
                self.ws();
                if self.b.get(self.i) == Some(&b']') {
                    self.i += 1;
                } else {
                    loop {
                        items.push(self.value(depth + 1)?);
                        self.ws();
                        match self.b.get(self.i) {
                            Some(b',') => self.i += 1,
                            Some(b']') => {
                                self.i += 1;
                                break;
                            }
                            _ => return Err(format!("expected `,` or `]` at byte {}", self.i)),
                        }
                    }
                }
                drop(items);
                Node::Array
            }
            Some(b'"') => {
                self.string()?;
                Node::Scalar
            }
            Some(_) => {
                while self.i < self.b.len() && !b",}] \t\r\n".contains(&self.b[self.i]) {
                    self.i += 1;
                }
                Node::Scalar
            }
            None => return Err("unexpected end".into()),
        };
        Ok(Span { start, end: self.i, node })
    }

    fn string(&mut self) -> Result<(), String> {
        if self.b.get(self.i) != Some(&b'"') {
            return Err(format!("expected a string at byte {}", self.i));
        }
        self.i += 1;
        while self.i < self.b.len() {
            match self.b[self.i] {
                b'\\' => self.i += 2,
                b'"' => {
                    self.i += 1;
                    return Ok(());
                }
                _ => self.i += 1,
            }
        }
        Err("unterminated string".into())
    }
}

fn member<'a>(s: &'a Span, key: &str) -> Option<&'a Span> {
    match &s.node {
        Node::Object(m) => m.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v),
        _ => None,
    }
}

/// Every server entry: (name, its span).
fn server_entries(root: &Span) -> Vec<(&str, &Span)> {
    fn collect<'a>(out: &mut Vec<(&'a str, &'a Span)>, obj: Option<&'a Span>) {
        if let Some(Span { node: Node::Object(m), .. }) = obj {
            out.extend(m.iter().map(|(k, v)| (k.as_str(), v)));
        }
    }
    let mut out = Vec::new();
    collect(&mut out, member(root, "mcpServers"));
    collect(&mut out, member(root, "servers"));
    if let Some(Span { node: Node::Object(projects), .. }) = member(root, "projects") {
        for (_, p) in projects {
            collect(&mut out, member(p, "mcpServers"));
        }
    }
    out
}

// ------------------------------------------------------------ choosing a profile

/// The `portcullis run` flags for a server launched as `command args`.
pub fn flags_for(command: &str, args: &[String], workspace: &Path) -> Vec<String> {
    let base = Path::new(command).file_name().and_then(|n| n.to_str()).unwrap_or(command);
    // The package the launcher runs, not a name anywhere in the arguments:
    // `node ./helper.js @modelcontextprotocol/server-filesystem ~/.config`
    // runs helper.js, and must not be granted what the filesystem server's
    // profile grants its directories.
    let launched = launched_package(base, args);
    let has = |pkg: &str| launched.is_some_and(|(p, _)| args[p] == pkg || args[p].starts_with(&format!("{pkg}@")));
    let mut flags = vec!["run".to_string(), "--mcp".to_string(), "--profile".to_string()];
    if has("@modelcontextprotocol/server-filesystem") {
        flags.push("mcp-filesystem".into());
        // The directories the server is given become exactly the writable paths.
        let after = launched.map_or(args.len(), |(_, runs)| runs + 1);
        for dir in args[after..].iter().filter(|a| !a.starts_with('-')) {
            flags.extend(["--write".into(), dir.clone()]);
        }
    } else if has("@modelcontextprotocol/server-memory") {
        flags.push("mcp-memory".into());
    } else if has("@modelcontextprotocol/server-everything") {
        flags.push("mcp-everything".into());
    } else if has("mcp-server-git") {
        flags.push("mcp-git".into());
        if let Some(i) = args.iter().position(|a| a == "--repository" || a == "-r") {
            if let Some(repo) = args.get(i + 1) {
                flags.extend(["--write".into(), repo.clone()]);
            }
        }
    } else if has("mcp-server-time") {
        flags.push("mcp-time".into());
    } else if has("mcp-server-fetch") {
        flags.push("mcp-fetch".into());
    } else if base == "npx" {
        flags.push("npx".into());
    } else if base == "uvx" {
        flags.push("uvx".into());
    } else if matches!(base, "node" | "npm") {
        flags.push("node".into());
    } else if matches!(base, "uv" | "python" | "python3") {
        flags.push("python".into());
    } else {
        // Unknown server: the strict default, with only its own command allowed.
        flags.extend(["strict".into(), "--exec".into(), command.to_string()]);
    }
    flags.extend(["--workspace".into(), workspace.display().to_string()]);
    flags
}

/// What `npx` or `uvx` (`uv tool run`, `uv x`) runs: the index of the
/// argument naming the package (`-p PKG`, `--from PKG`, or the first
/// argument that is not an option), and of the argument that runs (the
/// package, or its command after `-p`/`--from`); the server's own
/// arguments follow that one. None for any other launcher.
fn launched_package(base: &str, args: &[String]) -> Option<(usize, usize)> {
    const UV_VALUE: &[&str] = &["--from", "--with", "-w", "--python", "-p", "--index", "--index-url", "--cache-dir"];
    let first = |n: usize| args.iter().take(n).map(String::as_str).collect::<Vec<_>>();
    let (start, takes_value, names_package): (usize, &[&str], &[&str]) = match base {
        "npx" => {
            (0, &["-p", "--package", "-c", "--call", "--cache", "--userconfig", "--registry"], &["-p", "--package"])
        }
        "uvx" => (0, UV_VALUE, &["--from"]),
        "uv" if first(1) == ["x"] => (1, UV_VALUE, &["--from"]),
        "uv" if first(2) == ["tool", "run"] => (2, UV_VALUE, &["--from"]),
        _ => return None,
    };
    let mut package = None;
    let mut i = start;
    while i < args.len() {
        let a = args[i].as_str();
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') {
            break;
        }
        // `--flag=value` is one argument; `--package=PKG` is not matched
        // (the server then gets its launcher's generic profile).
        if takes_value.contains(&a) {
            if names_package.contains(&a) {
                package = Some(i + 1);
            }
            i += 2;
        } else {
            i += 1;
        }
    }
    if i >= args.len() {
        return None;
    }
    Some((package.filter(|p| *p < args.len()).unwrap_or(i), i))
}

/// Where `{workspace}` points for servers of this config: the project for
/// project configs, a private empty directory per server for user-wide ones.
fn workspace_for(file: &Path, server: &str) -> Result<PathBuf, Failure> {
    // The config as named: a `.mcp.json` linked from a dotfiles repository
    // still belongs to the project it sits in.
    let fail = |e: std::io::Error| Failure::setup(format!("{}: {e}", file.display()));
    let parent = file.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let dir = std::fs::canonicalize(parent).map_err(fail)?;
    let name = file.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let dir = dir.as_path();
    if name == "mcp.json" && dir.file_name().is_some_and(|d| d == ".vscode") {
        return Ok(dir.parent().unwrap_or(dir).to_path_buf());
    }
    if name == ".mcp.json" {
        return Ok(dir.to_path_buf());
    }
    let data = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .ok_or_else(|| Failure::setup("wrap: neither $XDG_DATA_HOME nor $HOME is set"))?;
    let safe: String =
        server.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).collect();
    let ws = data.join("portcullis/workspaces").join(safe);
    std::fs::create_dir_all(&ws).map_err(|e| Failure::setup(format!("{}: {e}", ws.display())))?;
    Ok(ws)
}

/// `portcullis run --mcp ... -- CMD`, whatever the binary is called or where it lives.
fn is_wrapped(_command: &str, args: &[String]) -> bool {
    args.len() >= 3 && args[0] == "run" && args[1] == "--mcp" && args.iter().any(|a| a == "--")
}

fn portcullis_path() -> String {
    std::env::current_exe().map(|p| p.display().to_string()).unwrap_or_else(|_| "portcullis".into())
}

// ------------------------------------------------------------ rewriting

struct Edit {
    start: usize,
    end: usize,
    text: String,
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

fn json_args(args: &[String]) -> String {
    serde_json::to_string(args).unwrap_or_default()
}

/// The wrapped text, and notes for the user.
pub fn wrap_text(text: &str, file: &Path, profile: Option<&str>) -> Result<(String, Vec<String>), Failure> {
    let bad = |e: String| Failure::setup(format!("{}: not a JSON config I can read: {e}", file.display()));
    let root = Reader { b: text.as_bytes(), i: 0 }.value(0).map_err(bad)?;
    let mut edits = Vec::new();
    let mut notes = Vec::new();
    for (name, entry) in server_entries(&root) {
        let full: Value = serde_json::from_str(&text[entry.start..entry.end]).map_err(|e| bad(e.to_string()))?;
        let Some(command) = full.get("command").and_then(Value::as_str) else {
            if full.get("url").is_some() || full.get("serverUrl").is_some() {
                notes.push(format!("{name}: an HTTP/SSE server; left as it is (the gate covers stdio servers)"));
            }
            continue;
        };
        let args: Vec<String> = match full.get("args") {
            None => Vec::new(),
            Some(Value::Array(a)) => {
                a.iter().map(|v| v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())).collect()
            }
            Some(_) => {
                notes.push(format!("{name}: `args` is not a list; left as it is"));
                continue;
            }
        };
        if is_wrapped(command, &args) {
            notes.push(format!("{name}: already wrapped"));
            continue;
        }
        let ws = workspace_for(file, name)?;
        let mut flags = flags_for(command, &args, &ws);
        if let Some(p) = profile {
            flags[3] = p.to_string();
        }
        flags.push("--".into());
        flags.push(command.to_string());
        flags.extend(args.iter().cloned());
        notes.push(format!("{name}: wrapped with profile {}", flags[3]));
        let cmd_span = member(entry, "command").ok_or_else(|| bad("no command span".into()))?;
        edits.push(Edit { start: cmd_span.start, end: cmd_span.end, text: json_str(&portcullis_path()) });
        match member(entry, "args") {
            Some(a) => edits.push(Edit { start: a.start, end: a.end, text: json_args(&flags) }),
            None => edits.push(Edit {
                start: cmd_span.end,
                end: cmd_span.end,
                text: format!(", \"args\": {}", json_args(&flags)),
            }),
        }
    }
    Ok((apply(text, edits), notes))
}

/// Each wrapped server back to its own command and arguments.
pub fn unwrap_text(text: &str, file: &Path) -> Result<(String, usize), Failure> {
    let bad = |e: String| Failure::setup(format!("{}: not a JSON config I can read: {e}", file.display()));
    let root = Reader { b: text.as_bytes(), i: 0 }.value(0).map_err(bad)?;
    let mut edits = Vec::new();
    for (_, entry) in server_entries(&root) {
        let full: Value = serde_json::from_str(&text[entry.start..entry.end]).map_err(|e| bad(e.to_string()))?;
        let (Some(command), Some(Value::Array(a))) = (full.get("command").and_then(Value::as_str), full.get("args"))
        else {
            continue;
        };
        let args: Vec<String> = a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
        if !is_wrapped(command, &args) {
            continue;
        }
        let Some(sep) = args.iter().position(|a| a == "--") else { continue };
        let (Some(orig), Some(cmd_span), Some(args_span)) =
            (args.get(sep + 1), member(entry, "command"), member(entry, "args"))
        else {
            continue;
        };
        edits.push(Edit { start: cmd_span.start, end: cmd_span.end, text: json_str(orig) });
        edits.push(Edit { start: args_span.start, end: args_span.end, text: json_args(&args[sep + 2..]) });
    }
    let n = edits.len() / 2;
    Ok((apply(text, edits), n))
}

fn apply(text: &str, mut edits: Vec<Edit>) -> String {
    edits.sort_by_key(|e| std::cmp::Reverse(e.start));
    let mut out = text.to_string();
    for e in edits {
        out.replace_range(e.start..e.end, &e.text);
    }
    out
}

/// Lines that differ, `-` old and `+` new (common head and tail trimmed).
fn diff(old: &str, new: &str) -> String {
    let a: Vec<&str> = old.lines().collect();
    let b: Vec<&str> = new.lines().collect();
    let head = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let tail = a[head..].iter().rev().zip(b[head..].iter().rev()).take_while(|(x, y)| x == y).count();
    let mut s = String::new();
    for l in &a[head..a.len() - tail] {
        s += &format!("-{l}\n");
    }
    for l in &b[head..b.len() - tail] {
        s += &format!("+{l}\n");
    }
    s
}

/// Where a config's bytes live: the file itself, or the file a symlink
/// names (dotfile managers link configs; replacing the link with a file
/// would cut it off from its repository). The backup sits beside the file
/// that is written.
fn resolve(file: &Path) -> Result<PathBuf, Failure> {
    let fail = |e: std::io::Error| Failure::setup(format!("{}: {e}", file.display()));
    if !std::fs::symlink_metadata(file).map_err(fail)?.file_type().is_symlink() {
        return Ok(file.to_path_buf());
    }
    let target = std::fs::canonicalize(file).map_err(fail)?;
    let note =
        format!("{} is a symbolic link: {} is rewritten in place, the link stays", file.display(), target.display());
    eprintln!("portcullis: {}", crate::cli::defused(&note));
    Ok(target)
}

/// Creates `path` afresh with `mode` (never through a link or over a file
/// that is there: O_EXCL) and writes `text` durably. Configs hold servers'
/// API keys in `env`: the copy is never readable by more than the original.
fn create_new(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path)?;
    // The umask may have taken bits away; the copy gets the original's.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()
}

/// The mode of the file being rewritten (0600 for a new one).
fn mode_of(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o600)
}

/// Replaces `path` with `text` through a temporary beside it. A temporary
/// left over (or planted: a project's repository can ship one, as a link
/// to `~/.bashrc`) is removed, never written through.
fn write_atomic(path: &Path, text: &str) -> Result<(), Failure> {
    let fail = |at: &Path, e: std::io::Error| Failure::setup(format!("{}: {e}", at.display()));
    let tmp = {
        let mut s = path.as_os_str().to_owned();
        s.push(".portcullis-tmp");
        PathBuf::from(s)
    };
    match std::fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(fail(&tmp, e)),
        _ => {}
    }
    if let Err(e) = create_new(&tmp, text, mode_of(path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(fail(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| fail(path, e))
}

/// The backup `wrap` kept, if there is one. Anything there but a regular
/// file (a link a repository shipped, say) is refused, not followed.
fn read_backup(backup: &Path) -> Result<Option<String>, Failure> {
    let fail = |e: std::io::Error| Failure::setup(format!("{}: {e}", backup.display()));
    match std::fs::symlink_metadata(backup) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(fail(e)),
        Ok(m) if m.file_type().is_file() => std::fs::read_to_string(backup).map(Some).map_err(fail),
        Ok(_) => Err(Failure::setup(format!(
            "{} is not a regular file (a link?): portcullis did not make it; remove it and run again",
            backup.display()
        ))),
    }
}

pub fn wrap(file: &Path, profile: Option<&str>, dry_run: bool) -> Result<i32, Failure> {
    let real = resolve(file)?;
    let text = std::fs::read_to_string(&real).map_err(|e| Failure::setup(format!("{}: {e}", real.display())))?;
    let (new, notes) = wrap_text(&text, file, profile)?;
    for n in &notes {
        eprintln!("portcullis: {n}");
    }
    if dry_run {
        print!("{}", diff(&text, &new));
        return Ok(0);
    }
    if new == text {
        return Ok(0);
    }
    let backup = backup_path(&real);
    // The first backup is the original; wrapping again must not overwrite it.
    if read_backup(&backup)?.is_none() {
        create_new(&backup, &text, mode_of(&real)).map_err(|e| Failure::setup(format!("{}: {e}", backup.display())))?;
    }
    write_atomic(&real, &new)?;
    let done = format!("wrote {} (original kept in {})", real.display(), backup.display());
    eprintln!("portcullis: {}", crate::cli::defused(&done));
    Ok(0)
}

pub fn unwrap(file: &Path) -> Result<i32, Failure> {
    let real = resolve(file)?;
    let text = std::fs::read_to_string(&real).map_err(|e| Failure::setup(format!("{}: {e}", real.display())))?;
    let backup = backup_path(&real);
    if let Some(original) = read_backup(&backup)? {
        let (rewrapped, _) = wrap_text(&original, file, None)?;
        let (unwrapped_now, _) = unwrap_text(&text, file)?;
        let (unwrapped_then, _) = unwrap_text(&rewrapped, file)?;
        if rewrapped == text || unwrapped_now == unwrapped_then {
            write_atomic(&real, &original)?;
            let _ = std::fs::remove_file(&backup);
            let done = format!("restored {} from {}", real.display(), backup.display());
            eprintln!("portcullis: {}", crate::cli::defused(&done));
            return Ok(0);
        }
        eprintln!("portcullis: {} changed since it was wrapped; unwrapping each server in place", real.display());
    }
    let (new, n) = unwrap_text(&text, file)?;
    if n > 0 {
        write_atomic(&real, &new)?;
    }
    eprintln!("portcullis: unwrapped {n} server(s) in {}", real.display());
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Bad configs: cut and mutated client configs never panic `wrap` or
    // `unwrap`; whatever they accept and change is still JSON wherever the
    // input was, every server with a command ends up wrapped, and unwrap
    // gives each one its own command and arguments back.
    /// A server's profile comes from the package its launcher runs, never
    /// from a package name elsewhere in its arguments (a project's config
    /// could otherwise have any program granted the filesystem server's
    /// writable directories).
    #[test]
    fn the_profile_follows_the_package_that_runs() {
        let ws = Path::new("/p");
        let f = |cmd: &str, args: &[&str]| {
            let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
            flags_for(cmd, &args, ws)[3..].join(" ")
        };
        let fs = "@modelcontextprotocol/server-filesystem";
        assert_eq!(f("node", &["./helper.js", fs, "/root/.config"]), "node --workspace /p");
        assert_eq!(f("npx", &["-y", "other-pkg", fs, "/root/.config"]), "npx --workspace /p");
        assert_eq!(f("/bin/sh", &["-c", "x", fs, "/root"]), "strict --exec /bin/sh --workspace /p");
        assert_eq!(f("npx", &["-y", fs, "/data", "/w"]), "mcp-filesystem --write /data --write /w --workspace /p");
        assert_eq!(f("npx", &["-y", &format!("{fs}@1.2.3"), "/data"]), "mcp-filesystem --write /data --workspace /p");
        assert_eq!(f("npx", &["-p", fs, "mcp-server-filesystem", "/d"]), "mcp-filesystem --write /d --workspace /p");
        assert_eq!(f("uvx", &["mcp-server-git", "--repository", "/r"]), "mcp-git --write /r --workspace /p");
        assert_eq!(f("uvx", &["--from", "mcp-server-git", "mcp-server-git"]), "mcp-git --workspace /p");
        assert_eq!(f("uv", &["tool", "run", "mcp-server-time"]), "mcp-time --workspace /p");
        assert_eq!(f("uvx", &["evil", "mcp-server-git", "--repository", "/"]), "uvx --workspace /p");
    }

    #[test]
    fn mutated_configs_never_panic_and_valid_ones_stay_valid() {
        let dir = std::env::temp_dir().join(format!("pc-wrap-garbage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(".mcp.json");
        std::fs::write(&f, "{}").unwrap();
        let seeds = [
            "{\n  \"mcpServers\": {\n    \"fs\": { \"command\": \"npx\", \"args\": [\"-y\", \"@modelcontextprotocol/server-filesystem\", \"/data\"] },\n    \"web\": {\"url\": \"https://x\"},\n    \"t\": {\"command\": \"uvx\", \"args\": [\"mcp-server-time\"], \"env\": {\"A\": \"1\"}}\n  }\n}\n",
            "{\"servers\": {\"s\": {\"type\": \"stdio\", \"command\": \"node\", \"args\": [\"srv.js\", \"\\u00e9\\\"\"]}}, \"inputs\": []}",
            "{\"projects\": {\"/p\": {\"mcpServers\": {\"g\": {\"command\": \"uvx\", \"args\": [\"mcp-server-git\", \"-r\", \"/p\"]}}}}, \"mcpServers\": {\"b\": {\"command\": \"/opt/srv\"}}}",
        ];
        let junk = [
            "{",
            "}",
            "[",
            "]",
            "\"",
            ",",
            ":",
            "\\",
            "\\u",
            "null",
            "1e999",
            "é",
            "\u{202e}",
            "\n",
            "\"command\":",
            "\"args\":7,",
            "\"command\":\"x\",",
            "\"mcpServers\":{},",
            "[[[[",
            "\"a\":{\"command\":[]},",
        ];
        let junk: Vec<&[u8]> = junk.iter().map(|j| j.as_bytes()).collect();
        let mut rng = crate::mutate::Rng(0x853c_49e6_748f_ea9b);
        // Configs are text: cuts inside a character are dropped.
        let mut mutants: Vec<String> = seeds
            .iter()
            .flat_map(|seed| crate::mutate::mutants(seed.as_bytes(), &junk, 2, 400, &mut rng))
            .filter_map(|m| String::from_utf8(m).ok())
            .collect();
        mutants.push(format!("{{\"mcpServers\": {}{}}}", "[".repeat(10_000), "]".repeat(10_000)));
        let mut bad = Vec::new();
        let (mut wrapped_ok, mut refused) = (0, 0);
        for m in &mutants {
            let outcome = std::panic::catch_unwind(|| (wrap_text(m, &f, None), unwrap_text(m, &f)));
            let Ok((wrapped, unwrapped)) = outcome else {
                bad.push(format!("panicked on {m:?}"));
                continue;
            };
            let valid = serde_json::from_str::<Value>(m).is_ok();
            for (what, out) in
                [("wrap", wrapped.as_ref().ok().map(|(t, _)| t)), ("unwrap", unwrapped.as_ref().ok().map(|(t, _)| t))]
            {
                if let Some(out) = out {
                    if valid && serde_json::from_str::<Value>(out).is_err() {
                        bad.push(format!("{what} made valid JSON invalid: {m:?} -> {out:?}"));
                    }
                }
            }
            match wrapped {
                Err(_) => refused += 1,
                Ok((w, _)) if valid => {
                    wrapped_ok += 1;
                    let root = Reader { b: w.as_bytes(), i: 0 }.value(0).unwrap();
                    for (name, entry) in server_entries(&root) {
                        let v: Value = serde_json::from_str(&w[entry.start..entry.end]).unwrap();
                        let args: Vec<String> = match v.get("args") {
                            Some(Value::Array(a)) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
                            _ => Vec::new(),
                        };
                        let stdio = v.get("command").and_then(Value::as_str).is_some();
                        let args_list = !matches!(v.get("args"), Some(a) if !a.is_array());
                        if stdio && args_list && !is_wrapped("", &args) {
                            bad.push(format!("server {name} left unwrapped: {m:?} -> {w:?}"));
                        }
                    }
                    // unwrap(wrap(x)) gives every server its command and args
                    // back (a server that had no `args` keeps an empty list).
                    let (u, _) = unwrap_text(&w, &f).unwrap();
                    let mut before: Value = serde_json::from_str(m).unwrap();
                    let after: Value = serde_json::from_str(&u).unwrap();
                    let mut lists: Vec<&mut Value> = Vec::new();
                    if let Some(root) = before.as_object_mut() {
                        for (key, v) in root.iter_mut() {
                            match key.as_str() {
                                "mcpServers" | "servers" => lists.push(v),
                                "projects" => lists.extend(
                                    v.as_object_mut()
                                        .into_iter()
                                        .flat_map(|p| p.values_mut())
                                        .filter_map(|p| p.get_mut("mcpServers")),
                                ),
                                _ => {}
                            }
                        }
                    }
                    for server in lists.into_iter().filter_map(Value::as_object_mut).flat_map(|o| o.values_mut()) {
                        let stdio = server.get("command").is_some_and(Value::is_string);
                        if let Some(o) = server.as_object_mut().filter(|_| stdio) {
                            o.entry("args").or_insert(Value::Array(Vec::new()));
                        }
                    }
                    if before != after {
                        bad.push(format!("unwrap(wrap(x)) != x: {m:?} -> {u:?}"));
                    }
                }
                Ok(_) => {}
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        assert!(bad.is_empty(), "{} of {} mutants:\n{}", bad.len(), mutants.len(), bad[..bad.len().min(5)].join("\n"));
        assert!(wrapped_ok > 100 && refused > 100, "wrapped {wrapped_ok}, refused {refused} of {}", mutants.len());
    }

    #[test]
    fn wrap_rewrites_only_command_and_args_and_unwrap_reverses_it() {
        let dir = std::env::temp_dir().join(format!("pc-wrap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join(".mcp.json");
        let text = "{\n  // not JSON, but kept\n}";
        assert!(wrap_text(text, &f, None).is_err());
        let text = "{\n  \"mcpServers\": {\n    \"fs\": { \"command\": \"npx\", \"args\": [\"-y\", \"@modelcontextprotocol/server-filesystem\", \"/data\"] },\n    \"web\": {\"url\": \"https://x\"},\n    \"t\": {\"command\": \"uvx\", \"args\": [\"mcp-server-time\"], \"env\": {\"A\": \"1\"}},\n    \"bare\": {\"command\": \"/opt/srv\"}\n  },\n  \"other\": [1, 2.5e3, true, null, \"\\\"q\\\"\"]\n}\n";
        std::fs::write(&f, text).unwrap();
        let (w, notes) = wrap_text(text, &f, None).unwrap();
        assert!(notes.iter().any(|n| n.contains("web: an HTTP/SSE server")), "{notes:?}");
        let v: Value = serde_json::from_str(&w).unwrap();
        let fs = &v["mcpServers"]["fs"]["args"];
        let fs: Vec<&str> = fs.as_array().unwrap().iter().map(|x| x.as_str().unwrap()).collect();
        assert_eq!(&fs[..5], ["run", "--mcp", "--profile", "mcp-filesystem", "--write"]);
        assert_eq!(fs[5], "/data");
        assert_eq!(&fs[fs.len() - 5..], ["--", "npx", "-y", "@modelcontextprotocol/server-filesystem", "/data"]);
        assert_eq!(v["mcpServers"]["t"]["args"][3], "mcp-time");
        assert_eq!(v["mcpServers"]["bare"]["args"][3], "strict");
        assert!(w.ends_with("\"other\": [1, 2.5e3, true, null, \"\\\"q\\\"\"]\n}\n"), "other bytes are kept: {w}");
        // Idempotent.
        assert_eq!(wrap_text(&w, &f, None).unwrap().0, w);
        // Unwrap restores command and args.
        let (u, n) = unwrap_text(&w, &f).unwrap();
        assert_eq!(n, 3);
        let back: Value = serde_json::from_str(&u).unwrap();
        assert_eq!(
            back["mcpServers"]["t"],
            serde_json::json!({"command": "uvx", "args": ["mcp-server-time"], "env": {"A": "1"}})
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
