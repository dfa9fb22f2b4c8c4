//! The enforcement plan: plain data the supervisor applies and `explain` prints.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::error::Origin;
use crate::profile::Located;

#[derive(Clone, Debug, Serialize)]
pub struct Plan {
    pub profile: String,
    /// The `extends` chain, root first.
    pub chain: Vec<String>,
    /// Degrade rules the kernel cannot enforce instead of refusing to run.
    pub best_effort: bool,
    pub landlock: LandlockPlan,
    pub seccomp: SeccompPlan,
    pub exec: ExecPlan,
    pub env: EnvPlan,
    pub limits: LimitsPlan,
    /// What the MCP gate applies in `run --mcp`.
    pub mcp: crate::mcp::McpPlan,
    /// `ask` rules and carved-out `deny` paths: decided by the supervisor on
    /// seccomp user notifications.
    pub gate: crate::ask::GatePlan,
}

#[derive(Clone, Debug, Serialize)]
pub struct LandlockPlan {
    /// One rule per path; rights from every line naming it are merged.
    pub paths: Vec<PathRule>,
    /// TCP ports the sandbox may connect to; none means no TCP connect at all.
    pub connect_tcp: Vec<Located<u16>>,
    /// TCP ports only `[ask] connect` names: never the sandbox's own; the
    /// gate's connect threads have them (with `connect_tcp`), and connect
    /// there once a person allowed it.
    pub gate_connect_tcp: Vec<Located<u16>>,
    /// TCP ports the sandbox may bind; none means no TCP bind at all.
    pub bind_tcp: Vec<Located<u16>>,
    /// Block connecting to abstract unix sockets created outside the sandbox.
    pub scope_abstract_unix: bool,
    /// Block signals to processes outside the sandbox.
    pub scope_signal: bool,
}

/// Rights on a path (and, for a directory, everything beneath it).
#[derive(Clone, Debug, Serialize)]
pub struct PathRule {
    pub path: String,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// Skip the rule quietly when the path does not exist (written `?/path`).
    pub optional: bool,
    pub at: Origin,
}

#[derive(Clone, Debug, Serialize)]
pub struct SeccompPlan {
    /// Syscalls from a non-native architecture (i386 `int 0x80`, the x32 bit)
    /// kill the process. Always on.
    pub kill_foreign_arch: bool,
    /// What the floor lets through (Landlock then checks TCP ports).
    pub floor: crate::seccomp::FloorPolicy,
    pub rules: Vec<SyscallRule>,
}

/// How a denied syscall fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum Verdict {
    /// Fail with EPERM.
    #[serde(rename = "EPERM")]
    Eperm,
    /// Fail with ENOSYS, so libc falls back to an older syscall we can inspect.
    #[serde(rename = "ENOSYS")]
    Enosys,
}

/// Width of an argument comparison. Kernel `int` arguments are compared as
/// 32 bits (the kernel truncates them: TIOCSTI|1<<32 is still TIOCSTI).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Width {
    Dword,
    Qword,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Op {
    Eq,
    Ne,
    Ge,
    Le,
    Gt,
    /// `(arg & mask) == value`.
    MaskedEq(u64),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct ArgCmp {
    pub arg: u8,
    pub width: Width,
    pub op: Op,
    pub value: u64,
}

/// Deny `syscall` when every comparison in `when` holds (always, if empty).
#[derive(Clone, Debug, Serialize)]
pub struct SyscallRule {
    pub syscall: String,
    pub nr: i64,
    pub when: Vec<ArgCmp>,
    pub verdict: Verdict,
    pub why: String,
}

#[derive(Clone, Debug, Serialize)]
pub struct ExecPlan {
    /// Executables that may be run: absolute paths, or names looked up on PATH
    /// at launch. The supervisor resolves them and grants Landlock EXECUTE on
    /// exactly those files (plus the ELF or `#!` interpreters they need).
    pub allow: Vec<CommandSpec>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CommandSpec {
    pub spec: String,
    pub optional: bool,
    pub at: Origin,
}

#[derive(Clone, Debug, Serialize)]
pub struct EnvPlan {
    /// Names or `*` globs passed from the caller. Globs never pass secret-looking names.
    pub pass: Vec<Located<String>>,
    /// Set for the sandbox, after expansion.
    pub set: BTreeMap<String, String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct LimitsPlan {
    pub max_procs: Option<Located<u64>>,
    pub max_memory: Option<Located<u64>>,
    pub max_open_files: Option<Located<u64>>,
}
