//! `ask` and carved-out `deny` rules, the grants a person gave, and the pure
//! decision engine the supervisor's seccomp-notification handler calls.
//!
//! ```toml
//! [ask]
//! read = ["~/.aws", { path = "~/.ssh", category = "credential", timeout = "30s" }]
//! write = ["{workspace}/.mcp.json"]
//! exec = ["/usr/bin/git"]
//! connect = [443, "127.0.0.1:5432"]
//! syscalls = ["ptrace"]
//! timeout = "120s"            # default for the rules above
//!
//! [deny]                      # holes in allowed trees (Landlock can only grant)
//! read = ["{workspace}/.env"]
//! write = ["{workspace}/.git/hooks", "{workspace}/.git/config"]
//! ```
//!
//! Precedence: a profile `deny` beats everything; then a grant (an earlier
//! "always"/"for this session" answer, deny grants first); then `ask`; else
//! the operation is allowed here (Landlock and the floor still apply).

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Error, Origin};
use crate::mcp::{parse_duration_ms, Category};
use crate::profile::{Lines, Located};

/// Default time a person has to answer.
pub const DEFAULT_TIMEOUT_MS: u64 = 120_000;

/// Syscalls the gate decides by what they name (a path, an executable, an
/// address), never by their own name, with the kind of rule that asks about
/// them. An `[ask] syscalls` rule on one is a profile error: the call would
/// be parked, then judged by the path, exec or connect rules alone, and
/// with none naming its target it went through unasked.
pub const DECIDED_BY_TARGET: &[(&str, &str)] = &[
    ("open", "read or write"),
    ("openat", "read or write"),
    ("openat2", "read or write"),
    ("creat", "write"),
    ("rename", "write"),
    ("renameat", "write"),
    ("renameat2", "write"),
    ("link", "write"),
    ("linkat", "write"),
    ("symlink", "write"),
    ("symlinkat", "write"),
    ("unlink", "write"),
    ("unlinkat", "write"),
    ("rmdir", "write"),
    ("mkdir", "write"),
    ("mkdirat", "write"),
    ("mknod", "write"),
    ("mknodat", "write"),
    ("truncate", "write"),
    ("execve", "exec"),
    ("execveat", "exec"),
    ("connect", "connect"),
];

/// `[ask]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskFile {
    #[serde(default)]
    pub read: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    pub write: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    pub exec: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    pub connect: Vec<Spanned<toml::Value>>,
    #[serde(default)]
    pub syscalls: Vec<Spanned<toml::Value>>,
    pub timeout: Option<Spanned<String>>,
    /// `false`: drop the `ask` rules of the profiles this one extends.
    pub inherit: Option<bool>,
}

/// `[deny]` as written: paths carved out of allowed trees.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenyFile {
    #[serde(default)]
    pub read: Vec<Spanned<String>>,
    #[serde(default)]
    pub write: Vec<Spanned<String>>,
    /// Files a tool opens for writing only to make them exist, named like
    /// a place a `**/` rule protects (uv's empty `.git` in its cache): the
    /// gate opens them read-only, so they are made empty and stay so.
    #[serde(default)]
    pub markers: Vec<Spanned<String>>,
    /// Places no symlink may appear beneath (`**/.git`): host tools write
    /// through links there by path (git's COMMIT_EDITMSG, FETCH_HEAD, its
    /// reflogs). None is made, renamed or hard-linked there, and no tree is
    /// moved in from elsewhere (it could hold one).
    #[serde(default)]
    pub symlinks: Vec<Spanned<String>>,
    /// Deny rules of the profiles this one extends to drop, as they were
    /// written there (`**/.git`): a profile whose tool must write what
    /// its base denies whole lists finer rules instead.
    #[serde(default)]
    pub drop: Vec<Spanned<String>>,
    /// `false`: drop the `deny` rules of the profiles this one extends.
    pub inherit: Option<bool>,
}

/// What an operation does to its target.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    Exec,
    Connect,
    Syscall,
    /// An MCP `tools/call` (grants only: tool rules live in `[mcp.tools]`).
    Tool,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::Exec => "exec",
            Access::Connect => "connect",
            Access::Syscall => "syscall",
            Access::Tool => "tool",
        }
    }

    fn default_category(self) -> Category {
        match self {
            Access::Read => Category::Read,
            Access::Write => Category::Write,
            Access::Exec => Category::Execute,
            Access::Connect => Category::Network,
            Access::Syscall | Access::Tool => Category::Execute,
        }
    }
}

/// A rule's target before variables are expanded.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RawTarget {
    Path(String),
    Port(u16),
    Addr(IpAddr, u16),
    Syscall(String),
}

/// One `ask` or `deny` line, merged along the chain.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RawRule {
    pub access: Access,
    pub target: RawTarget,
    pub deny: bool,
    pub category: Option<Category>,
    pub timeout_ms: Option<u64>,
    pub at: Origin,
}

/// `[ask]` and `[deny]` merged along the `extends` chain.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct AskProfile {
    pub rules: Vec<RawRule>,
    pub timeout_ms: Option<Located<u64>>,
    /// `[deny] markers`, as written.
    pub markers: Vec<Located<String>>,
    /// `[deny] symlinks`, as written.
    pub symlinks: Vec<Located<String>>,
}

fn parse_port(at: &Origin, n: i64) -> Result<u16, Error> {
    u16::try_from(n)
        .ok()
        .filter(|p| *p != 0)
        .ok_or_else(|| Error::invalid(at, format!("bad port {n}: must be 1..=65535")))
}

/// `443`, `"443"`, `"127.0.0.1:5432"`, `"[::1]:8080"`.
pub fn parse_connect(at: &Origin, text: &str) -> Result<RawTarget, Error> {
    let text = text.trim();
    if let Ok(n) = text.parse::<i64>() {
        return Ok(RawTarget::Port(parse_port(at, n)?));
    }
    match text.parse::<std::net::SocketAddr>() {
        Ok(sa) if sa.port() != 0 => Ok(RawTarget::Addr(sa.ip(), sa.port())),
        _ => Err(Error::invalid(
            at,
            format!("bad connect target `{text}`: a port, or IP:PORT with a literal address (the kernel sees addresses, not names)"),
        )),
    }
}

impl AskProfile {
    fn entry(&mut self, access: Access, v: &Spanned<toml::Value>, lines: &Lines) -> Result<(), Error> {
        let at = lines.at(v.span().start);
        let key = match access {
            Access::Connect => "port",
            Access::Syscall => "name",
            _ => "path",
        };
        let (target, table) = match v.get_ref() {
            toml::Value::Table(t) => {
                for k in t.keys() {
                    if ![key, "category", "timeout"].contains(&k.as_str()) {
                        return Err(Error::invalid(
                            &at,
                            format!("ask.{}: unknown key `{k}` (use {key}, category, timeout)", access.as_str()),
                        ));
                    }
                }
                let t2 = t.get(key).ok_or_else(|| {
                    Error::invalid(&at, format!("ask.{}: a table entry needs `{key}`", access.as_str()))
                })?;
                (t2.clone(), Some(t))
            }
            other => (other.clone(), None),
        };
        let target = match (access, &target) {
            (Access::Connect, toml::Value::Integer(n)) => RawTarget::Port(parse_port(&at, *n)?),
            (Access::Connect, toml::Value::String(s)) => parse_connect(&at, s)?,
            (Access::Syscall, toml::Value::String(s)) if !s.is_empty() => RawTarget::Syscall(s.clone()),
            (Access::Read | Access::Write | Access::Exec, toml::Value::String(s)) if !s.is_empty() => {
                RawTarget::Path(s.clone())
            }
            (_, t) => {
                return Err(Error::invalid(&at, format!("ask.{}: expected a {key}, not {t}", access.as_str())));
            }
        };
        let mut rule = RawRule { access, target, deny: false, category: None, timeout_ms: None, at: at.clone() };
        if let Some(t) = table {
            if let Some(c) = t.get("category") {
                let name = c.as_str().unwrap_or_default();
                rule.category = Some(Category::parse(name).ok_or_else(|| {
                    Error::invalid(
                        &at,
                        format!("ask.{}: unknown category {c} (read, write, execute, network, credential, connection, navigate)", access.as_str()),
                    )
                })?);
            }
            if let Some(d) = t.get("timeout") {
                let ms = d
                    .as_str()
                    .ok_or_else(|| "a duration like \"30s\"".to_string())
                    .and_then(parse_duration_ms)
                    .map_err(|m| Error::invalid(&at, format!("ask.{}: timeout: {m}", access.as_str())))?;
                rule.timeout_ms = Some(ms);
            }
        }
        self.rules.push(rule);
        Ok(())
    }

    pub(crate) fn layer(&mut self, ask: &AskFile, deny: &DenyFile, lines: &Lines) -> Result<(), Error> {
        if ask.inherit == Some(false) {
            self.rules.retain(|r| r.deny);
        }
        if deny.inherit == Some(false) {
            self.rules.retain(|r| !r.deny);
            self.markers.clear();
            self.symlinks.clear();
        }
        for v in &deny.drop {
            let before = self.rules.len();
            self.rules.retain(|r| !(r.deny && matches!(&r.target, RawTarget::Path(p) if p == v.get_ref())));
            if self.rules.len() == before {
                let at = lines.at(v.span().start);
                return Err(Error::invalid(
                    &at,
                    format!("deny.drop: `{}` is no deny rule of the profiles this one extends", v.get_ref()),
                ));
            }
        }
        for v in &deny.markers {
            self.markers.push(Located::new(v.get_ref().clone(), lines.at(v.span().start)));
        }
        for v in &deny.symlinks {
            self.symlinks.push(Located::new(v.get_ref().clone(), lines.at(v.span().start)));
        }
        for (list, access) in [
            (&ask.read, Access::Read),
            (&ask.write, Access::Write),
            (&ask.exec, Access::Exec),
            (&ask.connect, Access::Connect),
            (&ask.syscalls, Access::Syscall),
        ] {
            for v in list {
                self.entry(access, v, lines)?;
            }
        }
        if let Some(t) = &ask.timeout {
            let at = lines.at(t.span().start);
            let ms = parse_duration_ms(t.get_ref()).map_err(|m| Error::invalid(&at, format!("ask.timeout: {m}")))?;
            self.timeout_ms = Some(Located::new(ms, at));
        }
        for (list, access) in [(&deny.read, Access::Read), (&deny.write, Access::Write)] {
            for v in list {
                let at = lines.at(v.span().start);
                if v.get_ref().is_empty() {
                    return Err(Error::invalid(&at, format!("deny.{}: empty path", access.as_str())));
                }
                self.rules.push(RawRule {
                    access,
                    target: RawTarget::Path(v.get_ref().clone()),
                    deny: true,
                    category: None,
                    timeout_ms: None,
                    at,
                });
            }
        }
        Ok(())
    }

    /// `--ask-read`, `--ask-write`, `--ask-exec`, `--ask-connect`, `--ask-timeout`.
    pub fn apply(&mut self, o: &AskOverrides) -> Result<(), Error> {
        for (list, access, flag) in [
            (&o.read, Access::Read, "--ask-read"),
            (&o.write, Access::Write, "--ask-write"),
            (&o.exec, Access::Exec, "--ask-exec"),
        ] {
            for p in list {
                let at = Origin::flag(flag);
                if p.is_empty() {
                    return Err(Error::invalid(&at, "empty path"));
                }
                self.rules.push(RawRule {
                    access,
                    target: RawTarget::Path(p.clone()),
                    deny: false,
                    category: None,
                    timeout_ms: None,
                    at,
                });
            }
        }
        for c in &o.connect {
            let at = Origin::flag("--ask-connect");
            let target = parse_connect(&at, c)?;
            self.rules.push(RawRule {
                access: Access::Connect,
                target,
                deny: false,
                category: None,
                timeout_ms: None,
                at,
            });
        }
        if let Some(t) = &o.timeout {
            let at = Origin::flag("--ask-timeout");
            let ms = parse_duration_ms(t).map_err(|m| Error::invalid(&at, m))?;
            self.timeout_ms = Some(Located::new(ms, at));
        }
        Ok(())
    }
}

/// What `--ask-*` flags add.
#[derive(Clone, Debug, Default)]
pub struct AskOverrides {
    pub read: Vec<String>,
    pub write: Vec<String>,
    pub exec: Vec<String>,
    pub connect: Vec<String>,
    pub timeout: Option<String>,
}

/// A compiled rule target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Target {
    /// Absolute, normalised: the rule covers the path and everything beneath it.
    Path(String),
    /// `**/NAME[/NAME...]` in a profile: these names (relative, normalised,
    /// without the `**/`) at any depth, in any directory: the rule covers
    /// every place they name and everything beneath each. See [`GateRule::matches`].
    Anywhere(String),
    /// Any address on this TCP port.
    Port(u16),
    /// This address and TCP port.
    Addr(IpAddr, u16),
    Syscall {
        name: String,
        nr: i64,
    },
}

/// A compiled `ask` or `deny` rule.
#[derive(Clone, Debug, Serialize)]
pub struct GateRule {
    pub access: Access,
    pub target: Target,
    pub deny: bool,
    pub category: Category,
    pub timeout_ms: u64,
    pub at: Origin,
}

/// The gate's part of the plan.
#[derive(Clone, Debug, Default, Serialize)]
pub struct GatePlan {
    pub rules: Vec<GateRule>,
    pub default_timeout_ms: u64,
    /// Absolute, normalised paths whose components may be `*` (one name):
    /// see [`DenyFile::markers`] and [`is_marker`].
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub markers: Vec<String>,
    /// `[deny] symlinks`, as write-deny rules on their places (see
    /// [`DenyFile::symlinks`] and [`no_symlinks_at`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub symlinks: Vec<GateRule>,
}

impl GatePlan {
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty() && self.symlinks.is_empty()
    }

    /// Some rule is about `access`.
    pub fn covers(&self, access: Access) -> bool {
        self.rules.iter().chain(&self.symlinks).any(|r| r.access == access)
    }

    /// Syscalls (number, name) that ask.
    pub fn ask_syscalls(&self) -> Vec<(i64, String)> {
        let mut v: Vec<(i64, String)> = self
            .rules
            .iter()
            .filter_map(|r| match &r.target {
                Target::Syscall { name, nr } => Some((*nr, name.clone())),
                _ => None,
            })
            .collect();
        v.sort();
        v.dedup();
        v
    }
}

/// Path components that suggest secrets: such ask rules are `credential`
/// unless the rule says otherwise.
fn looks_like_credential(path: &str) -> bool {
    const NAMES: [&str; 14] = [
        ".ssh",
        ".aws",
        ".gnupg",
        ".netrc",
        ".npmrc",
        ".pypirc",
        ".docker",
        ".kube",
        ".env",
        "credentials",
        ".git-credentials",
        "id_rsa",
        "id_ed25519",
        ".password-store",
    ];
    path.split('/').any(|c| {
        NAMES.contains(&c)
            || c.ends_with(".pem")
            || c.ends_with(".key")
            || c.contains("secret")
            || c.contains("token")
            || c.starts_with(".env.")
    })
}

/// Compiles the rules. `path` expands and normalises a path (the caller's
/// variables); `syscall_nr` resolves a name and says why the floor would
/// deny it anyway (then the rule is an error: ask cannot loosen the floor).
pub fn compile(
    p: &AskProfile,
    path: &dyn Fn(&str, &Origin) -> Result<String, Error>,
    syscall: &dyn Fn(&str) -> Result<i64, String>,
) -> Result<GatePlan, Error> {
    let default_timeout_ms = p.timeout_ms.as_ref().map_or(DEFAULT_TIMEOUT_MS, |t| t.value);
    let mut rules = Vec::new();
    for r in &p.rules {
        let target = match &r.target {
            RawTarget::Path(s) if s.starts_with("**") => anywhere(r.access, s, &r.at)?,
            RawTarget::Path(s) => Target::Path(path(s, &r.at)?),
            RawTarget::Port(n) => Target::Port(*n),
            RawTarget::Addr(ip, n) => Target::Addr(*ip, *n),
            RawTarget::Syscall(name) => {
                let nr = syscall(name).map_err(|m| Error::invalid(&r.at, m))?;
                Target::Syscall { name: name.clone(), nr }
            }
        };
        let category = r.category.unwrap_or(match &target {
            Target::Path(s) | Target::Anywhere(s) if looks_like_credential(s) => Category::Credential,
            _ => r.access.default_category(),
        });
        rules.push(GateRule {
            access: r.access,
            target,
            deny: r.deny,
            category,
            timeout_ms: r.timeout_ms.unwrap_or(default_timeout_ms),
            at: r.at.clone(),
        });
    }
    let mut markers = Vec::new();
    for e in &p.markers {
        let m = path(&e.value, &e.at)?;
        let bad_star = m.split('/').any(|c| c.contains('*') && c != "*");
        if e.value.starts_with("**") || bad_star || m.ends_with("/*") || m == "/" {
            return Err(Error::invalid(
                &e.at,
                format!("deny.markers: `{}`: a file's path, where `*` stands alone for one name of a directory (`~/.cache/uv/*/.git`)", e.value),
            ));
        }
        markers.push(m);
    }
    let mut symlinks = Vec::new();
    for e in &p.symlinks {
        let target = match e.value.starts_with("**") {
            true => anywhere(Access::Write, &e.value, &e.at)?,
            false => Target::Path(path(&e.value, &e.at)?),
        };
        symlinks.push(GateRule {
            access: Access::Write,
            target,
            deny: true,
            category: Category::Write,
            timeout_ms: 0,
            at: e.at.clone(),
        });
    }
    Ok(GatePlan { rules, default_timeout_ms, markers, symlinks })
}

/// The `[deny] symlinks` rule that keeps symlinks out of `path`, if any:
/// `path` is at or beneath one of its places.
pub fn no_symlinks_at<'a>(plan: &'a GatePlan, path: &str) -> Option<&'a GateRule> {
    let subject = Subject::Path { path, moves: false };
    plan.symlinks.iter().find(|r| r.matches(Access::Write, &subject))
}

/// Whether `path` (canonical) is one of `plan`'s markers: the same number
/// of names, each equal or standing for a `*`.
pub fn is_marker(plan: &GatePlan, path: &str) -> bool {
    // Asked for every write the gate decides: nothing at all without markers.
    fn names(s: &str) -> Vec<&str> {
        s.split('/').filter(|c| !c.is_empty()).collect()
    }
    if plan.markers.is_empty() {
        return false;
    }
    let p = names(path);
    plan.markers.iter().any(|m| {
        let m = names(m);
        m.len() == p.len() && m.iter().zip(&p).all(|(a, b)| a == b || (*a == "*" && *b != "." && *b != ".."))
    })
}

/// `**/a/b`: checked and turned into `Target::Anywhere("a/b")`.
fn anywhere(access: Access, s: &str, at: &Origin) -> Result<Target, Error> {
    let bad = |why: &str| Err(Error::invalid(at, format!("`{s}`: {why}")));
    if !matches!(access, Access::Read | Access::Write) {
        return bad("`**/` names places to read or write, not commands");
    }
    let Some(rest) = s.strip_prefix("**/") else {
        return bad("`**` stands only at the start, followed by `/` and names (`**/.git/hooks`)");
    };
    let parts: Vec<&str> = rest.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.is_empty() {
        return bad("`**/` needs at least one name after it");
    }
    for p in &parts {
        if *p == ".." || p.contains('*') || p.contains('\0') || p.contains('{') || *p == "~" {
            return bad("after `**/` come plain names only (no `..`, `*`, variables or `~`)");
        }
    }
    Ok(Target::Anywhere(parts.join("/")))
}

/// Where `suffix`'s names stand in `path` as whole components: whether
/// `path` is at or beneath such a place (`beneath`), or is the start of
/// one, a name a write there would make or remove (`/w/sub/.git` for
/// `.git/config`).
fn anywhere_matches(path: &str, suffix: &str) -> (bool, bool) {
    let p: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let s: Vec<&str> = suffix.split('/').collect();
    let beneath = p.windows(s.len()).any(|w| w == s.as_slice());
    let start = (1..s.len()).any(|j| p.ends_with(&s[..j]));
    (beneath, start)
}

/// What is being done, as the supervisor resolved it.
#[derive(Clone, Copy, Debug)]
pub enum Subject<'a> {
    /// A canonical absolute path. `moves`: the operation adds or removes a
    /// name (rename, link): moving a whole tree into or out of a protected
    /// place counts, so an ancestor of a rule's path matches too.
    Path {
        path: &'a str,
        moves: bool,
    },
    Addr {
        ip: IpAddr,
        port: u16,
    },
    Syscall(&'a str),
}

impl Subject<'_> {
    /// The text grants are keyed by.
    pub fn key(&self) -> String {
        self.key_ref().into_owned()
    }

    /// The same, without allocating where the text is already there.
    pub fn key_ref(&self) -> std::borrow::Cow<'_, str> {
        match self {
            Subject::Path { path, .. } => std::borrow::Cow::Borrowed(path),
            Subject::Addr { ip, port } => std::borrow::Cow::Owned(std::net::SocketAddr::new(*ip, *port).to_string()),
            Subject::Syscall(name) => std::borrow::Cow::Borrowed(name),
        }
    }
}

fn beneath(path: &str, root: &str) -> bool {
    path == root || root == "/" || (path.starts_with(root) && path.as_bytes().get(root.len()) == Some(&b'/'))
}

impl GateRule {
    pub fn matches(&self, access: Access, subject: &Subject) -> bool {
        if self.access != access {
            return false;
        }
        match (&self.target, subject) {
            (Target::Path(root), Subject::Path { path, moves }) => {
                beneath(path, root) || (*moves && beneath(root, path))
            }
            // At any depth, so moving a tree keeps what it holds covered.
            // Putting something at the first names of the suffix (a `.git`
            // file saying `gitdir: elsewhere`, a tree renamed to `.git`)
            // counts as for a path's ancestors: the operations that do it
            // are `moves`. A directory made there only holds names the rule
            // still covers.
            (Target::Anywhere(suffix), Subject::Path { path, moves }) => {
                let (beneath, start) = anywhere_matches(path, suffix);
                beneath || (*moves && start)
            }
            (Target::Port(p), Subject::Addr { port, .. }) => p == port,
            (Target::Addr(ip, p), Subject::Addr { ip: i, port }) => p == port && canonical_ip(*ip) == canonical_ip(*i),
            (Target::Syscall { name, .. }, Subject::Syscall(s)) => name == s,
            _ => false,
        }
    }

    /// `ask.read /h/.ssh (profile.toml:3)`.
    pub fn describe(&self) -> String {
        let what = match &self.target {
            Target::Path(p) => p.clone(),
            Target::Anywhere(p) => format!("**/{p}"),
            Target::Port(p) => format!("port {p}"),
            Target::Addr(ip, p) => std::net::SocketAddr::new(*ip, *p).to_string(),
            Target::Syscall { name, .. } => name.clone(),
        };
        format!("{}.{} {what} ({})", if self.deny { "deny" } else { "ask" }, self.access.as_str(), self.at)
    }
}

/// `::ffff:1.2.3.4` and `1.2.3.4` are the same destination.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// How long an answer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GrantScope {
    /// This supervisor's run only (kept in memory).
    Session,
    /// Persisted for the profile.
    Always,
}

/// An answer that holds beyond one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grant {
    pub id: String,
    pub profile: String,
    pub access: Access,
    /// The exact path, `ip:port` or syscall name that was shown.
    pub target: String,
    pub allow: bool,
    pub scope: GrantScope,
    /// Unix seconds.
    pub created: u64,
    /// Who answered (`approvals`, `cli`, `tty`).
    pub by: String,
}

/// The persisted grants file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantFile {
    pub version: u32,
    pub grants: Vec<Grant>,
}

pub const GRANT_FILE_VERSION: u32 = 1;

/// Grants in force for one profile: the persisted ones plus this session's.
#[derive(Clone, Debug, Default)]
pub struct Grants {
    /// access → target → (allow, grant id). A later grant replaces an earlier one.
    map: BTreeMap<Access, BTreeMap<String, (bool, String)>>,
}

impl Grants {
    /// The grants of `profile` from a grants file.
    pub fn for_profile(file: &GrantFile, profile: &str) -> Grants {
        let mut g = Grants::default();
        for grant in file.grants.iter().filter(|g| g.profile == profile) {
            g.insert(grant);
        }
        g
    }

    pub fn insert(&mut self, grant: &Grant) {
        self.map.entry(grant.access).or_default().insert(grant.target.clone(), (grant.allow, grant.id.clone()));
    }

    pub fn len(&self) -> usize {
        self.map.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn find(&self, access: Access, key: &str) -> Option<&(bool, String)> {
        self.map.get(&access)?.get(key)
    }

    /// The saved answer for exactly `access` on `key`: (allow, grant id).
    pub fn lookup(&self, access: Access, key: &str) -> Option<(bool, &str)> {
        self.find(access, key).map(|(a, id)| (*a, id.as_str()))
    }
}

/// The engine's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Allow,
    Deny,
    Ask,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    pub outcome: Outcome,
    pub category: Option<Category>,
    pub timeout_ms: u64,
    /// The rule or grant that decided, for the audit log and the prompt.
    pub reason: String,
    pub grant: Option<String>,
}

impl Decision {
    fn allow(reason: impl Into<String>) -> Self {
        Decision { outcome: Outcome::Allow, category: None, timeout_ms: 0, reason: reason.into(), grant: None }
    }
}

/// Decides one operation. Pure: rules and grants in, a decision out.
///
/// 1. a matching profile `deny` → deny (no grant can undo it);
/// 2. a grant for exactly this access and target → its answer;
/// 3. a matching `ask` → ask, with the strictest category (credential wins)
///    and the shortest timeout of the matching rules;
/// 4. else allow (the kernel's Landlock rules and the floor still apply).
pub fn decide(plan: &GatePlan, grants: &Grants, access: Access, subject: &Subject) -> Decision {
    // A marker, opened as one (no move), is the one name `**/` rules let be.
    let marker = matches!(subject, Subject::Path { path, moves: false } if is_marker(plan, path));
    let matching: Vec<&GateRule> = plan
        .rules
        .iter()
        .filter(|r| !(marker && matches!(r.target, Target::Anywhere(_))) && r.matches(access, subject))
        .collect();
    if let Some(r) = matching.iter().find(|r| r.deny) {
        return Decision {
            outcome: Outcome::Deny,
            category: Some(r.category),
            timeout_ms: 0,
            reason: r.describe(),
            grant: None,
        };
    }
    if let Some((allow, id)) = grants.find(access, &subject.key_ref()) {
        let outcome = if *allow { Outcome::Allow } else { Outcome::Deny };
        return Decision {
            outcome,
            category: None,
            timeout_ms: 0,
            reason: format!("grant {id}"),
            grant: Some(id.clone()),
        };
    }
    let asks: Vec<&&GateRule> = matching.iter().filter(|r| !r.deny).collect();
    match asks.first() {
        None => Decision::allow("no ask or deny rule"),
        Some(first) => {
            let credential = asks.iter().any(|r| r.category == Category::Credential);
            Decision {
                outcome: Outcome::Ask,
                category: Some(if credential { Category::Credential } else { first.category }),
                timeout_ms: asks.iter().map(|r| r.timeout_ms).min().unwrap_or(DEFAULT_TIMEOUT_MS),
                reason: first.describe(),
                grant: None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(access: Access, target: Target, deny: bool) -> GateRule {
        GateRule { access, target, deny, category: Category::Write, timeout_ms: 1000, at: Origin::new("t.toml", 1) }
    }

    fn path(p: &str) -> Target {
        Target::Path(p.into())
    }

    fn grant(access: Access, target: &str, allow: bool) -> Grant {
        Grant {
            id: format!("g-{target}"),
            profile: "p".into(),
            access,
            target: target.into(),
            allow,
            scope: GrantScope::Always,
            created: 0,
            by: "cli".into(),
        }
    }

    #[test]
    fn parses_entries_with_lines() {
        let text = "[ask]\nread = [\"~/.aws\", { path = \"~/.ssh\", category = \"credential\", timeout = \"30s\" }]\nconnect = [443, \"127.0.0.1:5432\"]\ntimeout = \"10s\"\n[deny]\nwrite = [\"{workspace}/.git/hooks\"]\n";
        let f: crate::schema::ProfileFile = toml::from_str(text).unwrap();
        let mut p = AskProfile::default();
        p.layer(&f.ask, &f.deny, &Lines::new("t.toml", text)).unwrap();
        assert_eq!(p.rules.len(), 5);
        assert_eq!(p.rules[1].category, Some(Category::Credential));
        assert_eq!(p.rules[1].timeout_ms, Some(30_000));
        assert_eq!(p.rules[3].target, RawTarget::Addr("127.0.0.1".parse().unwrap(), 5432));
        assert!(p.rules[4].deny);
        assert_eq!(p.rules[4].at.to_string(), "t.toml:6");
        assert_eq!(p.timeout_ms.unwrap().value, 10_000);
    }

    #[test]
    fn bad_entries_name_their_line() {
        for (text, want) in [
            ("[ask]\nread = [3]\n", "t.toml:2: ask.read: expected a path"),
            ("[ask]\nconnect = [0]\n", "t.toml:2: bad port 0"),
            ("[ask]\nconnect = [\"example.com:443\"]\n", "t.toml:2: bad connect target"),
            ("[ask]\nread = [{ path = \"/x\", category = \"nope\" }]\n", "t.toml:2: ask.read: unknown category"),
            ("[ask]\nread = [{ path = \"/x\", when = 1 }]\n", "t.toml:2: ask.read: unknown key `when`"),
            ("[ask]\nread = [{ category = \"read\" }]\n", "t.toml:2: ask.read: a table entry needs `path`"),
            ("[ask]\nwrite = [{ path = \"/x\", timeout = \"soon\" }]\n", "t.toml:2: ask.write: timeout:"),
            ("[ask]\ntimeout = \"x\"\n", "t.toml:2: ask.timeout:"),
            ("[deny]\nwrite = [\"\"]\n", "t.toml:2: deny.write: empty path"),
        ] {
            let f: crate::schema::ProfileFile = toml::from_str(text).unwrap();
            let mut p = AskProfile::default();
            let e = p.layer(&f.ask, &f.deny, &Lines::new("t.toml", text)).unwrap_err().to_string();
            assert!(e.starts_with(want), "{text:?}: {e}");
        }
        let e: Result<crate::schema::ProfileFile, _> = toml::from_str("[deny]\nexec = [\"/x\"]\n");
        assert!(e.is_err(), "unknown keys are errors");
    }

    #[test]
    fn inherit_false_drops_the_parents_rules() {
        let parent = "[ask]\nread = [\"/a\"]\n[deny]\nwrite = [\"/b\"]\n";
        let child = "[deny]\ninherit = false\nwrite = [\"/c\"]\n";
        let mut p = AskProfile::default();
        for text in [parent, child] {
            let f: crate::schema::ProfileFile = toml::from_str(text).unwrap();
            p.layer(&f.ask, &f.deny, &Lines::new("t.toml", text)).unwrap();
        }
        let targets: Vec<_> = p.rules.iter().map(|r| (r.deny, r.target.clone())).collect();
        assert_eq!(targets, vec![(false, RawTarget::Path("/a".into())), (true, RawTarget::Path("/c".into()))]);
    }

    #[test]
    fn flags_add_rules() {
        let mut p = AskProfile::default();
        let o = AskOverrides {
            read: vec!["/a".into()],
            write: vec!["/b".into()],
            exec: vec!["/c".into()],
            connect: vec!["443".into(), "[::1]:80".into()],
            timeout: Some("5s".into()),
        };
        p.apply(&o).unwrap();
        assert_eq!(p.rules.len(), 5);
        assert_eq!(p.rules[4].target, RawTarget::Addr("::1".parse().unwrap(), 80));
        assert_eq!(p.timeout_ms.as_ref().unwrap().value, 5000);
        let bad = AskOverrides { connect: vec!["x".into()], ..Default::default() };
        assert!(p.apply(&bad).unwrap_err().to_string().starts_with("command line (--ask-connect):"));
        let bad = AskOverrides { timeout: Some("forever".into()), ..Default::default() };
        assert!(p.apply(&bad).unwrap_err().to_string().starts_with("command line (--ask-timeout):"));
    }

    #[test]
    fn path_matching_is_by_component() {
        let r = rule(Access::Write, path("/w/.git/hooks"), true);
        let p = |s| Subject::Path { path: s, moves: false };
        let m = |s| Subject::Path { path: s, moves: true };
        assert!(r.matches(Access::Write, &p("/w/.git/hooks")));
        assert!(r.matches(Access::Write, &p("/w/.git/hooks/pre-commit")));
        assert!(!r.matches(Access::Write, &p("/w/.git/hooksx")));
        assert!(!r.matches(Access::Write, &p("/w/.git")));
        assert!(r.matches(Access::Write, &m("/w/.git")), "moving a tree over the protected path");
        assert!(r.matches(Access::Write, &m("/w")));
        assert!(!r.matches(Access::Write, &m("/w/.gitx")));
        assert!(!r.matches(Access::Read, &p("/w/.git/hooks/pre-commit")));
        let root = rule(Access::Read, path("/"), false);
        assert!(root.matches(Access::Read, &p("/etc/passwd")));
    }

    #[test]
    fn names_at_any_depth() {
        let compiled = |s: &str| anywhere(Access::Write, s, &Origin::new("t.toml", 1));
        let r = rule(Access::Write, compiled("**/.git/config").unwrap(), true);
        let p = |s| Subject::Path { path: s, moves: false };
        let m = |s| Subject::Path { path: s, moves: true };
        assert!(r.matches(Access::Write, &p("/w/.git/config")));
        assert!(r.matches(Access::Write, &p("/w/a/b/.git/config")), "a nested repository");
        assert!(r.matches(Access::Write, &p("/repo/.git/config")), "outside the workspace: a --write root");
        assert!(r.matches(Access::Write, &p("/w/.git/modules/m/.git/config/x")));
        assert!(!r.matches(Access::Write, &p("/w/.git/configx")));
        assert!(!r.matches(Access::Write, &p("/w/.git/HEAD")), "the rest of .git stays writable");
        assert!(!r.matches(Access::Write, &p("/w/x.git/config")));
        // Making, removing or replacing a `.git` anywhere starts a git directory.
        assert!(r.matches(Access::Write, &m("/w/sub/.git")), "a gitdir: file made, or a tree moved there");
        assert!(r.matches(Access::Write, &m("/w/.git")));
        assert!(!r.matches(Access::Write, &p("/w/sub/.git")), "a directory made there holds covered names");
        assert!(!r.matches(Access::Write, &m("/w/sub")), "moving a tree keeps its .git covered");
        let read = rule(Access::Read, compiled("**/.env").unwrap(), true);
        assert!(read.matches(Access::Read, &p("/w/app/.env")));
        assert!(!read.matches(Access::Read, &p("/w/app/.envrc")));
        assert_eq!(r.describe(), "deny.write **/.git/config (t.toml:1)");
        assert_eq!(compiled("**//.git/./hooks/").unwrap(), Target::Anywhere(".git/hooks".into()));
        for bad in ["**", "**/", "**/../x", "**/a/**/b", "**x/y", "**/{home}", "**/~"] {
            assert!(compiled(bad).is_err(), "{bad}");
        }
        assert!(anywhere(Access::Exec, "**/sh", &Origin::new("t.toml", 1)).is_err());
    }

    #[test]
    fn drop_removes_a_bases_deny_rule_as_written_and_names_a_typo() {
        let base = "[deny]\nwrite = [\"**/.git\", \"{workspace}/.envrc\"]\n";
        let child = "[deny]\ndrop = [\"**/.git\"]\nwrite = [\"**/.git/config\"]\n";
        let mut p = AskProfile::default();
        for (text, name) in [(base, "base.toml"), (child, "child.toml")] {
            let f: crate::schema::ProfileFile = toml::from_str(text).unwrap();
            p.layer(&f.ask, &f.deny, &Lines::new(name, text)).unwrap();
        }
        let targets: Vec<_> = p.rules.iter().map(|r| r.target.clone()).collect();
        assert_eq!(targets, [RawTarget::Path("{workspace}/.envrc".into()), RawTarget::Path("**/.git/config".into())]);
        let typo = "[deny]\ndrop = [\"**/.gti\"]\n";
        let f: crate::schema::ProfileFile = toml::from_str(typo).unwrap();
        let e = p.layer(&f.ask, &f.deny, &Lines::new("typo.toml", typo)).unwrap_err().to_string();
        assert!(e.contains("typo.toml:2") && e.contains("deny.drop"), "{e}");
    }

    #[test]
    fn a_marker_is_one_file_with_stars_for_single_names() {
        let plan = GatePlan { markers: vec!["/c/uv/*/.git".into()], ..GatePlan::default() };
        assert!(is_marker(&plan, "/c/uv/sdists-v11/.git"));
        assert!(is_marker(&plan, "/c/uv/x/.git/"));
        for not in
            ["/c/uv/.git", "/c/uv/a/b/.git", "/c/uv/a/.git/config", "/c/uv/a/.gitx", "/c/uvx/a/.git", "/c/uv/../.git"]
        {
            assert!(!is_marker(&plan, not), "{not}");
        }
        let compile = |m: &str| {
            let p = AskProfile {
                markers: vec![Located::new(m.to_string(), Origin::new("t.toml", 9))],
                ..AskProfile::default()
            };
            super::compile(&p, &|s, _| Ok(s.to_string()), &|_| Ok(0))
        };
        assert_eq!(compile("/c/uv/*/.git").unwrap().markers, ["/c/uv/*/.git"]);
        for bad in ["**/.git", "/c/uv/sdists-*/.git", "/c/uv/*", "/"] {
            let e = compile(bad).unwrap_err().to_string();
            assert!(e.contains("t.toml:9") && e.contains("deny.markers"), "{bad}: {e}");
        }
    }

    #[test]
    fn addresses_and_ports() {
        let any = rule(Access::Connect, Target::Port(443), false);
        let one = rule(Access::Connect, Target::Addr("127.0.0.1".parse().unwrap(), 5432), false);
        let a = |ip: &str, port| Subject::Addr { ip: ip.parse().unwrap(), port };
        assert!(any.matches(Access::Connect, &a("1.2.3.4", 443)));
        assert!(!any.matches(Access::Connect, &a("1.2.3.4", 444)));
        assert!(one.matches(Access::Connect, &a("127.0.0.1", 5432)));
        assert!(one.matches(Access::Connect, &a("::ffff:127.0.0.1", 5432)), "v4-mapped is the same host");
        assert!(!one.matches(Access::Connect, &a("127.0.0.2", 5432)));
        assert!(!one.matches(Access::Connect, &a("127.0.0.1", 5433)));
    }

    /// Every combination of (deny rule, grant allow/deny/none, ask rule) for
    /// one subject: the precedence table in `decide`'s documentation.
    #[test]
    fn precedence_exhaustive() {
        let subject = Subject::Path { path: "/h/.ssh/id_rsa", moves: false };
        for deny_rule in [false, true] {
            for ask_rule in [false, true] {
                for grant_state in [None, Some(true), Some(false)] {
                    for other_access_rules in [false, true] {
                        let mut plan = GatePlan {
                            rules: vec![],
                            default_timeout_ms: DEFAULT_TIMEOUT_MS,
                            markers: vec![],
                            symlinks: vec![],
                        };
                        if deny_rule {
                            plan.rules.push(rule(Access::Read, path("/h/.ssh"), true));
                        }
                        if ask_rule {
                            plan.rules.push(rule(Access::Read, path("/h"), false));
                        }
                        if other_access_rules {
                            // Rules about other accesses or paths never change the answer.
                            plan.rules.push(rule(Access::Write, path("/h/.ssh"), true));
                            plan.rules.push(rule(Access::Read, path("/h/.sshx"), true));
                        }
                        let mut grants = Grants::default();
                        if let Some(allow) = grant_state {
                            grants.insert(&grant(Access::Read, "/h/.ssh/id_rsa", allow));
                            // A grant for another target does not apply.
                            grants.insert(&grant(Access::Read, "/h/.ssh/other", !allow));
                        }
                        let d = decide(&plan, &grants, Access::Read, &subject);
                        let want = match (deny_rule, grant_state, ask_rule) {
                            (true, _, _) => Outcome::Deny,
                            (false, Some(true), _) => Outcome::Allow,
                            (false, Some(false), _) => Outcome::Deny,
                            (false, None, true) => Outcome::Ask,
                            (false, None, false) => Outcome::Allow,
                        };
                        assert_eq!(
                            d.outcome, want,
                            "deny={deny_rule} ask={ask_rule} grant={grant_state:?} other={other_access_rules}"
                        );
                        assert_eq!(d.grant.is_some(), !deny_rule && grant_state.is_some());
                    }
                }
            }
        }
    }

    #[test]
    fn ask_takes_strictest_category_and_shortest_timeout() {
        let mut a = rule(Access::Read, path("/h"), false);
        a.timeout_ms = 9000;
        let mut b = rule(Access::Read, path("/h/.ssh"), false);
        b.category = Category::Credential;
        b.timeout_ms = 2000;
        let plan =
            GatePlan { rules: vec![a, b], default_timeout_ms: DEFAULT_TIMEOUT_MS, markers: vec![], symlinks: vec![] };
        let d = decide(&plan, &Grants::default(), Access::Read, &Subject::Path { path: "/h/.ssh/k", moves: false });
        assert_eq!((d.outcome, d.category, d.timeout_ms), (Outcome::Ask, Some(Category::Credential), 2000));
    }

    #[test]
    fn compile_infers_credentials_and_checks_syscalls() {
        let mut p = AskProfile::default();
        let o = AskOverrides { read: vec!["/h/.aws".into(), "/h/notes".into()], ..Default::default() };
        p.apply(&o).unwrap();
        p.rules.push(RawRule {
            access: Access::Syscall,
            target: RawTarget::Syscall("ptrace".into()),
            deny: false,
            category: None,
            timeout_ms: None,
            at: Origin::new("t.toml", 4),
        });
        let ok = |s: &str, _: &Origin| Ok(s.to_string());
        let floor = |n: &str| Err(format!("`{n}` is denied by the floor"));
        let e = compile(&p, &ok, &floor).unwrap_err().to_string();
        assert_eq!(e, "t.toml:4: `ptrace` is denied by the floor");
        p.rules.pop();
        let plan = compile(&p, &ok, &|_| Ok(0)).unwrap();
        assert_eq!(plan.rules[0].category, Category::Credential);
        assert_eq!(plan.rules[1].category, Category::Read);
        assert_eq!(plan.rules[0].timeout_ms, DEFAULT_TIMEOUT_MS);
    }

    #[test]
    fn grants_file_round_trips_and_filters_by_profile() {
        let mut f = GrantFile { version: GRANT_FILE_VERSION, grants: vec![grant(Access::Read, "/x", true)] };
        let mut other = grant(Access::Read, "/y", true);
        other.profile = "q".into();
        f.grants.push(other);
        let text = serde_json::to_string(&f).unwrap();
        let back: GrantFile = serde_json::from_str(&text).unwrap();
        assert_eq!(back, f);
        assert_eq!(Grants::for_profile(&back, "p").len(), 1);
        assert!(serde_json::from_str::<GrantFile>(r#"{"version":1,"grants":[],"x":1}"#).is_err());
    }
}
