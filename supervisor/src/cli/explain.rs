//! `portcullis explain`: the compiled plan for this kernel, rule by rule.

use std::fmt::Write;

use serde::Serialize;

use policy::plan::{Op, SyscallRule, Width};

use super::run::Session;
use super::ExplainArgs;
use crate::exit::Failure;
use crate::kernel::Features;
use crate::sandbox::exec::Resolved;
use crate::sandbox::report::Enforcement;

#[derive(Serialize)]
struct Explained<'a> {
    kernel: &'a Features,
    plan: &'a policy::Plan,
    exec: &'a [Resolved],
    /// The seccomp rules actually installed (the plan's plus this kernel's floor).
    seccomp: &'a [SyscallRule],
    enforcement: &'a Enforcement,
}

pub fn explain(args: ExplainArgs) -> Result<i32, Failure> {
    let session = Session::open(&args.sandbox)?;
    let prepared = session.prepare(true)?;
    let e = Explained {
        kernel: &session.features,
        plan: &session.plan,
        exec: &prepared.exec,
        seccomp: &prepared.seccomp_rules,
        enforcement: &prepared.enforcement,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&e).map_err(|e| Failure::setup(e.to_string()))?);
    } else {
        // Paths and names come from profiles and flags: shown escaped.
        print!("{}", super::defused(&render(&e)));
    }
    Ok(0)
}

fn cond(c: &policy::plan::ArgCmp) -> String {
    let w = if c.width == Width::Dword { "(u32)" } else { "" };
    match c.op {
        Op::Eq => format!("{w}arg{} == {:#x}", c.arg, c.value),
        Op::Ne => format!("{w}arg{} != {:#x}", c.arg, c.value),
        Op::Ge => format!("{w}arg{} >= {:#x}", c.arg, c.value),
        Op::Le => format!("{w}arg{} <= {:#x}", c.arg, c.value),
        Op::Gt => format!("{w}arg{} > {:#x}", c.arg, c.value),
        Op::MaskedEq(m) => format!("{w}arg{} & {m:#x} == {:#x}", c.arg, c.value),
    }
}

fn render(e: &Explained) -> String {
    let mut s = String::new();
    let p = e.plan;
    let k = e.kernel;
    let _ = writeln!(s, "profile {} ({})", p.profile, p.chain.join(" -> "));
    let _ = writeln!(
        s,
        "kernel {}: Landlock ABI {} (using {}), best effort: {}",
        k.release, k.landlock_abi, k.landlock_abi_used, p.best_effort
    );
    let _ =
        writeln!(s, "\nLandlock filesystem (every right of the ABI is handled; what is not granted here is denied):");
    for r in &p.landlock.paths {
        let rights = format!(
            "{}{}{}",
            if r.read { 'r' } else { '-' },
            if r.write { 'w' } else { '-' },
            if r.exec { 'x' } else { '-' }
        );
        let opt = if r.optional { " (optional)" } else { "" };
        let _ = writeln!(s, "  {rights}  {:<44} {}{opt}", r.path, r.at);
    }
    let ports = |v: &[policy::profile::Located<u16>]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.iter().map(|p| format!("{} ({})", p.value, p.at)).collect::<Vec<_>>().join(", ")
        }
    };
    let _ = writeln!(
        s,
        "\nLandlock network (ABI 4+): connect TCP: {}; bind TCP: {}",
        ports(&p.landlock.connect_tcp),
        ports(&p.landlock.bind_tcp)
    );
    if !p.landlock.gate_connect_tcp.is_empty() {
        let _ = writeln!(
            s,
            "  asked only, not the sandbox's: connect TCP {} (the gate connects once approved)",
            ports(&p.landlock.gate_connect_tcp)
        );
    }
    let blocked = |b: bool| if b { "blocked" } else { "allowed" };
    let _ = writeln!(
        s,
        "Landlock scopes (ABI 6+): abstract unix sockets outside: {}; signals outside: {}",
        blocked(p.landlock.scope_abstract_unix),
        blocked(p.landlock.scope_signal)
    );
    if !p.gate.is_empty() {
        let _ =
            writeln!(s, "\nSyscall gate (seccomp user notification; deny > grant > ask > allowed here; docs/GATE.md):");
        for r in &p.gate.rules {
            let extra =
                if r.deny { String::new() } else { format!(" [{}, {} s]", r.category.as_str(), r.timeout_ms / 1000) };
            let _ = writeln!(s, "  {}{extra}", r.describe());
        }
        for r in &p.gate.symlinks {
            let _ = writeln!(
                s,
                "  {}: no symlink made, linked or moved in",
                r.describe().replacen("deny.write", "deny.symlinks", 1)
            );
        }
        for m in &p.gate.markers {
            let _ = writeln!(s, "  marker {m}: made if missing, opened read-only (stays empty)");
        }
        let parked: Vec<String> = crate::sandbox::seccomp::notify_set(&p.gate)
            .iter()
            .map(|(nr, how)| {
                let name = policy::syscalls::name(i64::from(*nr)).unwrap_or("?");
                match how {
                    crate::sandbox::seccomp::Notify::Always => name.to_string(),
                    crate::sandbox::seccomp::Notify::WriteFlags { .. } => format!("{name} (writing)"),
                    crate::sandbox::seccomp::Notify::Enosys => format!("{name} (ENOSYS)"),
                }
            })
            .collect();
        let _ = writeln!(s, "  parked: {}", parked.join(", "));
    }
    let _ = writeln!(s, "\nExec allowlist (Landlock EXECUTE on exactly these files):");
    if e.exec.is_empty() {
        let _ = writeln!(s, "  (nothing: add --exec PATH or [commands] allow)");
    }
    for r in e.exec {
        match &r.implied_by {
            Some(by) => {
                let _ = writeln!(s, "  {:<44} interpreter of {}", r.path.display(), by.display());
            }
            None => {
                let _ = writeln!(s, "  {:<44} {} ({})", r.path.display(), r.spec, r.at);
            }
        }
    }
    let so = &p.seccomp.floor.sockets;
    let _ = writeln!(
        s,
        "\nSeccomp (native x86-64 only: i386 and x32 syscalls kill the process; sockets: tcp {}, udp {}, unix {}; chmod {}):",
        so.tcp, so.udp, so.unix, p.seccomp.floor.chmod
    );
    for r in e.seccomp {
        let when = if r.when.is_empty() {
            "always".to_string()
        } else {
            r.when.iter().map(cond).collect::<Vec<_>>().join(" && ")
        };
        let verdict = serde_json::to_string(&r.verdict).unwrap_or_default();
        let _ = writeln!(s, "  {:<7} {:<18} {:<44} {}", verdict.trim_matches('"'), r.syscall, when, r.why);
    }
    let _ = writeln!(
        s,
        "  + no_new_privs; every capability dropped (effective, permitted, inheritable, ambient, bounding)"
    );
    let _ = writeln!(
        s,
        "\nEnvironment: pass {}",
        p.env.pass.iter().map(|v| v.value.as_str()).collect::<Vec<_>>().join(" ")
    );
    for (k, v) in &p.env.set {
        let _ = writeln!(s, "  set {k}={v}");
    }
    let _ = writeln!(s, "  (names that look like secrets pass only when named exactly)");
    let m = &p.mcp;
    let _ = writeln!(
        s,
        "\nMCP gate (with run --mcp): tools/call rules, strictest match wins (deny > ask > allow); max message {} bytes; redaction {}; description pinning {}; breaker after {} failures, {} s cool-down:",
        m.max_message,
        if m.redact { "on" } else { "off" },
        if m.pin { "on" } else { "off" },
        m.breaker_failures,
        m.breaker_cooldown_ms / 1000
    );
    for r in &m.rules {
        let _ = writeln!(s, "  {:<5} {:<32} ({})", r.verdict.as_str(), r.pattern, r.at);
    }
    let default_at = m.default_at.as_ref().map_or("built in".to_string(), |o| o.to_string());
    let _ = writeln!(
        s,
        "  default {} for tools no rule names ({default_at}); tools annotated destructive ask at least",
        m.default.as_str()
    );
    for c in &m.categories {
        let _ = writeln!(s, "  category {:<10} {:<26} ({})", c.category.as_str(), c.pattern, c.at);
    }
    for r in &m.rates {
        let _ = writeln!(s, "  rate     {} per {} ms      {:<26} ({})", r.burst, r.per_ms, r.pattern, r.at);
    }
    if !m.redact_fields.is_empty() {
        let _ = writeln!(s, "  redacted fields: {}", m.redact_fields.join(", "));
    }
    let _ = writeln!(s, "\nLimits:");
    if e.enforcement.limits.is_empty() {
        let _ = writeln!(s, "  none");
    }
    for l in &e.enforcement.limits {
        let _ = writeln!(s, "  {l}");
    }
    let _ = writeln!(s, "Lifecycle: {}", e.enforcement.lifecycle);
    if !e.enforcement.degradations.is_empty() {
        let _ = writeln!(s, "\nNot enforceable on this kernel (run refuses unless --best-effort):");
        for d in &e.enforcement.degradations {
            let _ = writeln!(s, "  {}", d.line());
        }
    }
    for n in &e.enforcement.notices {
        let _ = writeln!(s, "note: {n}");
    }
    for n in &e.enforcement.skipped {
        let _ = writeln!(s, "skipped: {n}");
    }
    s
}
