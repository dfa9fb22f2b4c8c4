//! The approval broker: one per user, a unix socket under
//! `$XDG_RUNTIME_DIR/portcullis/`. Supervisors submit `ask` requests, front
//! ends (`portcullis approvals`, `approve`, `deny`) subscribe and answer.
//!
//! This file fixes the interface the supervisor's notification handler and
//! the MCP gate use: [`Client::ask`]. Everything else in this module is the
//! broker's own business:
//!
//! - [`protocol`]: the versioned JSON-lines messages (docs/BROKER.md);
//! - [`socket`]: where the socket lives, and the private directory around it;
//! - [`peer`]: who may talk to the broker (same uid, same user and PID namespace);
//! - [`mask`]: what front ends are shown instead of secrets;
//! - [`server`]: `portcullis broker` itself: the queue, timeouts, flood limits;
//! - [`client`]: [`Client`] for supervisors, [`Link`] for front ends;
//! - [`tty`]: the supervisor's own prompt when no broker answers.

pub mod client;
pub mod mask;
pub mod peer;
pub mod protocol;
pub mod server;
pub mod socket;
pub mod tty;

use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use client::{Client, Link};

/// One request for a decision, as the supervisor knows it.
#[derive(Clone, Debug)]
pub struct AskRequest {
    /// Session id of the sandbox (`run`'s id, as in the audit log).
    pub session: String,
    pub profile: String,
    /// The sandboxed command as launched.
    pub argv: Vec<String>,
    /// Pid of the process asking (in the supervisor's PID namespace).
    pub pid: i32,
    /// What is asked: `open-read`, `open-write`, `create`, `rename`, `link`,
    /// `unlink`, `mkdir`, `exec`, `connect`, `syscall`, `tool`.
    pub kind: String,
    /// `read`, `write`, `execute`, `network`, `credential`, `connection`, `navigate`.
    pub category: String,
    /// What the decision is about: a path, `host:port`, a syscall or tool name.
    pub target: String,
    /// Human detail: the syscall with arguments, the argv of an exec, the tool's
    /// arguments. May contain secrets: the broker masks before showing.
    pub detail: String,
    /// The rule that asked (`file:line: ask.read ~/.ssh`).
    pub rule: String,
    /// Deny when nobody answered by then.
    pub timeout: Duration,
}

/// How long an answer holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Once,
    Session,
    Always,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Once => "once",
            Scope::Session => "session",
            Scope::Always => "always",
        }
    }
}

/// The decision on one request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AskAnswer {
    pub allow: bool,
    pub scope: Scope,
    /// Who answered: `approvals` (terminal front end), `cli` (approve/deny),
    /// `tty` (the supervisor's own prompt), `timeout`, `no-broker`.
    pub by: String,
    /// Why, for a denial that nobody chose (timeout, no broker, queue full).
    pub reason: Option<String>,
    pub latency: Duration,
}

impl AskAnswer {
    /// A denial nobody chose: `by` says which path gave up, `reason` why.
    pub fn deny(by: &str, reason: impl Into<String>, latency: Duration) -> AskAnswer {
        AskAnswer { allow: false, scope: Scope::Once, by: by.into(), reason: Some(reason.into()), latency }
    }
}
