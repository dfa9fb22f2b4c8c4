//! The TOML shape of a profile file. Unknown keys are errors; every value that
//! can be wrong keeps its byte span so errors can name the line.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

type Paths = Vec<Spanned<String>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProfileFile {
    pub description: Option<String>,
    /// Name or path of the profile this one adds to.
    pub extends: Option<Spanned<String>>,
    /// Allow degrading rules this kernel cannot enforce (printed once on stderr).
    pub best_effort: Option<bool>,
    #[serde(default)]
    pub filesystem: Filesystem,
    #[serde(default)]
    pub network: Network,
    #[serde(default)]
    pub ipc: Ipc,
    #[serde(default)]
    pub commands: Commands,
    #[serde(default)]
    pub syscalls: Syscalls,
    #[serde(default)]
    pub env: Env,
    #[serde(default)]
    pub limits: Limits,
    /// Operations that stop for a decision (seccomp user notification).
    #[serde(default)]
    pub ask: crate::ask::AskFile,
    /// Paths carved out of allowed trees (enforced through the same gate).
    #[serde(default)]
    pub deny: crate::ask::DenyFile,
    /// The MCP gate (`portcullis run --mcp`): tool rules, rates, breaker, redaction, pinning.
    #[serde(default)]
    pub mcp: crate::mcp::McpFile,
    /// What this profile promises: operations and the verdict each must get.
    /// Checked by `portcullis profile test` and on every kernel by `cargo xtask vm-test`.
    #[serde(default)]
    pub expect: Vec<Spanned<ExpectEntry>>,
}

/// `[[expect]]`: one operation and the verdict it must get in the sandbox.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExpectEntry {
    /// `read`, `write`, `exec`, `connect` or `bind`.
    pub op: String,
    /// A path (read, write, exec; variables allowed) or a TCP port (connect, bind).
    pub target: toml::Value,
    /// `allow` or `deny`.
    pub verdict: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    #[serde(default)]
    pub read: Paths,
    #[serde(default)]
    pub write: Paths,
    /// Paths whose files may be executed (implies read). Directories grant
    /// execute beneath them; prefer single files.
    #[serde(default)]
    pub exec: Paths,
    /// Allow chmod (never setuid/setgid bits) of files this uid owns.
    /// Landlock cannot confine mode changes to the writable paths, so this
    /// reaches every file the uid owns; refused when portcullis runs as root.
    pub chmod: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    /// TCP ports the sandbox may connect to.
    #[serde(default)]
    pub connect: Vec<Spanned<i64>>,
    /// TCP ports the sandbox may bind.
    #[serde(default)]
    pub bind: Vec<Spanned<i64>>,
    /// Allow UDP sockets (Landlock cannot restrict UDP by port: all or nothing).
    pub udp: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ipc {
    /// Connect to abstract unix sockets outside the sandbox (X11, D-Bus...).
    pub abstract_unix: Option<bool>,
    /// Send signals to processes outside the sandbox.
    pub signals: Option<bool>,
    /// Create AF_UNIX sockets (pathname sockets: docker.sock, the session bus...).
    /// `socketpair` is always allowed: it reaches nothing outside.
    pub unix: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Commands {
    /// Executables that may be run: absolute paths, or names resolved on PATH at launch.
    #[serde(default)]
    pub allow: Paths,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Syscalls {
    /// Extra syscalls to deny with EPERM, by x86-64 name.
    #[serde(default)]
    pub deny: Paths,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Env {
    /// Variables passed from the caller's environment; `*` globs allowed.
    /// Globs never pass secret-looking names; exact names do.
    #[serde(default)]
    pub pass: Paths,
    /// Variables set for the sandbox (values may use `{workspace}`, `{home}`, `{tmp}`).
    #[serde(default)]
    pub set: BTreeMap<String, Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub max_procs: Option<Spanned<i64>>,
    pub max_memory: Option<Spanned<String>>,
    pub max_open_files: Option<Spanned<i64>>,
}
