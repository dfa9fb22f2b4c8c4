//! Profile → plan: expand variables, check names, merge path rules, add the
//! seccomp floor. Checks that need the filesystem (does the path exist, where
//! is `node` on PATH) are the supervisor's, using the origins kept here.

use std::collections::BTreeMap;

use crate::env;
use crate::error::{Error, Origin};
use crate::plan::{CommandSpec, EnvPlan, ExecPlan, LandlockPlan, LimitsPlan, PathRule, Plan, SeccompPlan};
use crate::profile::{Located, Profile};
use crate::seccomp::{self, FloorPolicy, SocketPolicy};

/// Values for `{workspace}`, `{home}` and `{tmp}`.
#[derive(Clone, Debug)]
pub struct Vars {
    pub workspace: String,
    pub home: String,
    pub tmp: String,
}

impl Vars {
    /// Expands `{name}` and a leading `~/`. Unknown names are errors.
    pub fn expand(&self, text: &str, at: &Origin) -> Result<String, Error> {
        let text = match text.strip_prefix("~/") {
            Some(rest) => format!("{{home}}/{rest}"),
            None if text == "~" => "{home}".to_string(),
            None => text.to_string(),
        };
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            let close = after.find('}').ok_or_else(|| Error::invalid(at, format!("unclosed `{{` in `{text}`")))?;
            let value = match &after[..close] {
                "workspace" => &self.workspace,
                "home" => &self.home,
                "tmp" => &self.tmp,
                other => {
                    return Err(Error::invalid(
                        at,
                        format!("unknown variable `{{{other}}}`: use {{workspace}}, {{home}} or {{tmp}}"),
                    ))
                }
            };
            out.push_str(value);
            rest = &after[close + 1..];
        }
        out.push_str(rest);
        Ok(out)
    }
}

/// Splits the optional marker: `?/lib64` → (`/lib64`, true).
fn optional(text: &str) -> (&str, bool) {
    match text.strip_prefix('?') {
        Some(rest) => (rest, true),
        None => (text, false),
    }
}

/// `/a/./b/` → `/a/b`; `..` is refused (a rule should say what it means).
fn normalize(path: &str, at: &Origin) -> Result<String, Error> {
    if !path.starts_with('/') {
        return Err(Error::invalid(
            at,
            format!("path `{path}` must be absolute (or start with {{workspace}}, {{home}}, {{tmp}} or ~/)"),
        ));
    }
    if path.contains('\0') {
        return Err(Error::invalid(at, "path contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(Error::invalid(at, format!("path `{path}` must not contain `..`"))),
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

#[derive(Clone, Copy)]
enum Right {
    Read,
    /// Read and write (a profile's `write` paths).
    Write,
    /// Write alone: a path only asked about for writing. Reading it stays
    /// as the rest of the profile has it (strict asks before agent configs
    /// such as `~/.claude.json` change, and they hold API keys).
    AskedWrite,
    Exec,
}

fn add_path(rules: &mut Vec<PathRule>, vars: &Vars, item: &Located<String>, right: Right) -> Result<(), Error> {
    let (raw, opt) = optional(&item.value);
    let expanded = vars.expand(raw, &item.at)?;
    let path = normalize(&expanded, &item.at)?;
    let idx = match rules.iter().position(|r| r.path == path) {
        Some(i) => i,
        None => {
            rules.push(PathRule { path, read: false, write: false, exec: false, optional: opt, at: item.at.clone() });
            rules.len() - 1
        }
    };
    let r = &mut rules[idx];
    // A path is optional only if every line naming it says so.
    r.optional &= opt;
    match right {
        Right::Read => r.read = true,
        Right::Write => {
            r.read = true;
            r.write = true
        }
        Right::AskedWrite => r.write = true,
        Right::Exec => {
            r.read = true;
            r.exec = true
        }
    }
    Ok(())
}

/// Compiles a merged profile into a plan.
pub fn compile(profile: &Profile, vars: &Vars) -> Result<Plan, Error> {
    let mut paths = Vec::new();
    for item in &profile.read {
        add_path(&mut paths, vars, item, Right::Read)?;
    }
    for item in &profile.write {
        add_path(&mut paths, vars, item, Right::Write)?;
    }
    for item in &profile.exec {
        add_path(&mut paths, vars, item, Right::Exec)?;
    }

    let gate = compile_gate(profile, vars)?;
    // What may be asked must be grantable: Landlock gets the rights, the gate asks.
    for r in &gate.rules {
        let right = match (r.access, r.deny) {
            (_, true) => continue,
            (crate::ask::Access::Read, _) => Right::Read,
            (crate::ask::Access::Write, _) => Right::AskedWrite,
            _ => continue,
        };
        if let crate::ask::Target::Path(p) = &r.target {
            add_path(&mut paths, vars, &Located::new(format!("?{p}"), r.at.clone()), right)?;
        }
    }

    let mut allow = Vec::new();
    // An asked command joins the allowlist (with its interpreters); the gate asks before each exec.
    for r in gate.rules.iter().filter(|r| r.access == crate::ask::Access::Exec && !r.deny) {
        if let crate::ask::Target::Path(p) = &r.target {
            allow.push(CommandSpec { spec: p.clone(), optional: true, at: r.at.clone() });
        }
    }
    for item in &profile.commands {
        let (raw, opt) = optional(&item.value);
        let spec = vars.expand(raw, &item.at)?;
        if spec.is_empty() || spec.contains('\0') {
            return Err(Error::invalid(&item.at, "empty command name"));
        }
        let spec = if spec.contains('/') { normalize(&spec, &item.at)? } else { spec };
        allow.push(CommandSpec { spec, optional: opt, at: item.at.clone() });
    }

    // Ports only asked about stay out of the sandbox's own Landlock rules:
    // the gate connects for it once a person said yes, from a thread whose
    // domain has them. So a connect the kernel carries out without the gate
    // (a raced CONTINUE) cannot reach them.
    let mut gate_connect_tcp: Vec<Located<u16>> = gate
        .rules
        .iter()
        .filter(|r| r.access == crate::ask::Access::Connect && !r.deny)
        .filter_map(|r| match r.target {
            crate::ask::Target::Port(p) | crate::ask::Target::Addr(_, p) => Some(Located::new(p, r.at.clone())),
            _ => None,
        })
        .collect();
    gate_connect_tcp.sort_by_key(|p| p.value);
    gate_connect_tcp.dedup_by_key(|p| p.value);
    let sockets = SocketPolicy {
        // A port asked about needs a TCP socket to ask with.
        tcp: !profile.connect.is_empty() || !profile.bind.is_empty() || !gate_connect_tcp.is_empty(),
        tcp_bind: !profile.bind.is_empty(),
        udp: profile.udp,
        unix: profile.unix,
    };
    let floor = FloorPolicy { sockets, chmod: profile.chmod };
    let mut rules = seccomp::baseline(floor);
    for item in &profile.deny_syscalls {
        if let Some(why) = STAGE_NEEDS.iter().find(|(n, _)| *n == item.value).map(|(_, why)| why) {
            return Err(Error::invalid(&item.at, format!("`{}` cannot be denied: {why}", item.value)));
        }
        let rule = seccomp::extra(&item.value, &format!("denied by {}", item.at)).ok_or_else(|| {
            Error::invalid(&item.at, format!("unknown syscall `{}` (x86-64 names, e.g. `ptrace`)", item.value))
        })?;
        rules.push(rule);
    }

    for item in &profile.env_pass {
        if !env::valid_name(&item.value) {
            return Err(Error::invalid(&item.at, format!("bad environment variable name `{}`", item.value)));
        }
    }
    let mut set = BTreeMap::new();
    for (name, value) in &profile.env_set {
        if !env::valid_name(name) {
            return Err(Error::invalid(&value.at, format!("bad environment variable name `{name}`")));
        }
        set.insert(name.clone(), vars.expand(&value.value, &value.at)?);
    }

    let mut connect_tcp = profile.connect.clone();
    connect_tcp.sort_by_key(|p| p.value);
    connect_tcp.dedup_by_key(|p| p.value);
    let mut bind_tcp = profile.bind.clone();
    bind_tcp.dedup_by_key(|p| p.value);

    Ok(Plan {
        profile: profile.name.clone(),
        chain: profile.chain.clone(),
        best_effort: profile.best_effort,
        landlock: LandlockPlan {
            paths,
            connect_tcp,
            gate_connect_tcp,
            bind_tcp,
            scope_abstract_unix: !profile.abstract_unix,
            scope_signal: !profile.signals,
        },
        seccomp: SeccompPlan { kill_foreign_arch: true, floor, rules },
        exec: ExecPlan { allow },
        env: EnvPlan { pass: profile.env_pass.clone(), set },
        limits: LimitsPlan {
            max_procs: profile.max_procs.clone(),
            max_memory: profile.max_memory.clone(),
            max_open_files: profile.max_open_files.clone(),
        },
        mcp: crate::mcp::compile(&profile.mcp),
        gate,
    })
}

/// Calls the sandbox's first process makes under its own filters on its
/// way out when it cannot exec, and why: denied, a failed exec would look
/// like a command that ran (it reports the errno by `write`, then exits;
/// the supervisor takes the end of that pipe without a word for the exec).
const STAGE_NEEDS: [(&str, &str); 3] = [
    (
        "write",
        "portcullis reports a failed exec with it, under the profile's filters (and an MCP server speaks through it)",
    ),
    ("exit", "threads end with it (refused, a glibc thread retries it for ever), and a process when exit_group fails"),
    ("exit_group", "processes end with it, the sandbox's own when its exec fails included"),
];

/// `[ask]`/`[deny]`: paths expanded and normalised; an ask on a syscall the
/// floor denies outright is an error (ask never loosens the floor).
fn compile_gate(profile: &Profile, vars: &Vars) -> Result<crate::ask::GatePlan, Error> {
    // Only for a profile that asks about syscalls by name.
    let floor = std::cell::OnceCell::new();
    let floor = || {
        floor.get_or_init(|| {
            seccomp::baseline(FloorPolicy {
                sockets: SocketPolicy { tcp: true, tcp_bind: true, udp: true, unix: true },
                chmod: profile.chmod,
            })
        })
    };
    let path = |text: &str, at: &Origin| -> Result<String, Error> {
        let (raw, _) = optional(text);
        normalize(&vars.expand(raw, at)?, at)
    };
    let syscall = |name: &str| -> Result<i64, String> {
        let nr = crate::syscalls::number(name).ok_or_else(|| format!("unknown syscall `{name}` (x86-64 names)"))?;
        if name == "sendmsg" {
            // Parked, the hand-off itself would wait for a gate that only
            // starts serving once it arrives: the launch would hang.
            return Err("ask.syscalls: `sendmsg` cannot be asked: the sandbox hands its approval filter to portcullis with it, before anyone could answer".into());
        }
        if let Some((_, why)) = STAGE_NEEDS.iter().find(|(n, _)| *n == name) {
            return Err(format!("ask.syscalls: `{name}` cannot be asked: {why}"));
        }
        if matches!(name, "read" | "close" | "close_range" | "poll" | "sched_yield" | "sched_setaffinity") {
            // The stage makes these under its own filters before exec
            // (closing the listener and its fds, reading the go-ahead,
            // looking for it without sleeping, taking back its CPUs); an
            // answer is recorded under the log's lock, which the launch
            // record holds until the command has exec'd, and the gate's
            // threads start once it has: it would wait for ever (poll,
            // sched_yield and sched_setaffinity did: the launch hung).
            return Err(format!("ask.syscalls: `{name}` cannot be asked: the sandbox makes it itself while it starts, under its filters, before an answer could be recorded"));
        }
        if let Some((_, rule)) = crate::ask::DECIDED_BY_TARGET.iter().find(|(n, _)| *n == name) {
            return Err(format!(
                "ask.syscalls: `{name}` cannot be asked by name: the gate decides it by what it names; ask with [ask] {rule} rules instead"
            ));
        }
        match floor().iter().find(|r| r.nr == nr && r.when.is_empty()) {
            Some(r) => Err(format!("ask.syscalls: `{name}` is always denied ({}); ask cannot loosen that", r.why)),
            None => Ok(nr),
        }
    };
    crate::ask::compile(&profile.gate, &path, &syscall)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::Loader;

    fn vars() -> Vars {
        Vars { workspace: "/w".into(), home: "/h".into(), tmp: "/t".into() }
    }

    #[test]
    fn strict_compiles() {
        let p = Loader::builtin_only().load("strict").unwrap();
        let plan = compile(&p, &vars()).unwrap();
        let ws = plan.landlock.paths.iter().find(|r| r.path == "/w").unwrap();
        assert!(ws.read && ws.write && !ws.exec);
        let usr = plan.landlock.paths.iter().find(|r| r.path == "/usr").unwrap();
        assert!(usr.read && !usr.write && !usr.exec);
        assert!(plan.landlock.connect_tcp.is_empty());
        assert!(plan.landlock.scope_signal && plan.landlock.scope_abstract_unix);
        assert_eq!(plan.env.set["TMPDIR"], "/t");
        assert!(plan.exec.allow.is_empty());
    }

    /// A port only asked about: the sandbox may make TCP sockets (to ask
    /// with), but the port is not among its own Landlock rules; it is the
    /// gate's. A port also allowed outright stays the sandbox's.
    #[test]
    fn asked_ports_need_tcp_sockets_but_stay_out_of_the_sandbox_rules() {
        let mut p = Loader::builtin_only().load("strict").unwrap();
        let ask =
            crate::ask::AskOverrides { connect: vec!["443".into(), "10.0.0.1:5432".into()], ..Default::default() };
        p.apply(&crate::profile::Overrides { connect: vec!["80".into()], ask, ..Default::default() }).unwrap();
        let plan = compile(&p, &vars()).unwrap();
        assert!(plan.seccomp.floor.sockets.tcp);
        let ports = |v: &[Located<u16>]| v.iter().map(|p| p.value).collect::<Vec<_>>();
        assert_eq!(ports(&plan.landlock.connect_tcp), [80]);
        assert_eq!(ports(&plan.landlock.gate_connect_tcp), [443, 5432]);
        let mut only_ask = Loader::builtin_only().load("strict").unwrap();
        let ask = crate::ask::AskOverrides { connect: vec!["443".into()], ..Default::default() };
        only_ask.apply(&crate::profile::Overrides { ask, ..Default::default() }).unwrap();
        let plan = compile(&only_ask, &vars()).unwrap();
        assert!(plan.seccomp.floor.sockets.tcp && plan.landlock.connect_tcp.is_empty());
    }

    #[test]
    fn expansion() {
        let at = Origin::new("x", 1);
        assert_eq!(vars().expand("{workspace}/a", &at).unwrap(), "/w/a");
        assert_eq!(vars().expand("~/.npm", &at).unwrap(), "/h/.npm");
        assert!(vars().expand("{nope}", &at).unwrap_err().to_string().contains("unknown variable `{nope}`"));
        assert!(vars().expand("{home", &at).is_err());
    }

    #[test]
    fn relative_and_dotdot_paths_are_errors() {
        let mut p = Profile::default();
        p.read.push(Located::new("etc".into(), Origin::new("f.toml", 7)));
        assert!(compile(&p, &vars()).unwrap_err().to_string().starts_with("f.toml:7: path `etc` must be absolute"));
        let mut p = Profile::default();
        p.write.push(Located::new("{workspace}/../x".into(), Origin::new("f.toml", 3)));
        assert!(compile(&p, &vars()).unwrap_err().to_string().contains("f.toml:3:"));
    }

    #[test]
    fn unknown_syscall_names_line() {
        let mut p = Profile::default();
        p.deny_syscalls.push(Located::new("frobnicate".into(), Origin::new("f.toml", 9)));
        let e = compile(&p, &vars()).unwrap_err().to_string();
        assert!(e.starts_with("f.toml:9: unknown syscall `frobnicate`"), "{e}");
    }

    #[test]
    fn calls_a_failed_exec_needs_cannot_be_denied() {
        for name in ["write", "exit", "exit_group"] {
            let mut p = Profile::default();
            p.deny_syscalls.push(Located::new(name.into(), Origin::new("f.toml", 4)));
            let e = compile(&p, &vars()).unwrap_err().to_string();
            assert!(e.starts_with(&format!("f.toml:4: `{name}` cannot be denied")), "{e}");
        }
        // Its neighbours still can.
        let mut p = Profile::default();
        p.deny_syscalls.push(Located::new("writev".into(), Origin::new("f.toml", 4)));
        assert!(compile(&p, &vars()).is_ok());
    }

    #[test]
    fn rights_merge_per_path() {
        let mut p = Profile::default();
        p.read.push(Located::new("?/opt/x".into(), Origin::new("a", 1)));
        p.write.push(Located::new("/opt/x/".into(), Origin::new("a", 2)));
        let plan = compile(&p, &vars()).unwrap();
        assert_eq!(plan.landlock.paths.len(), 1);
        let r = &plan.landlock.paths[0];
        assert!(r.read && r.write && !r.optional, "a required mention makes the path required");
    }
}
