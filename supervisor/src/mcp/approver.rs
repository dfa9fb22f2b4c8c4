//! Who answers an `ask`: [`Broker`] asks a person through the approval
//! broker (or the terminal, when no broker answers); [`NoBroker`] answers
//! every ask with no, saying why. An ask never turns into an allow by default.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use policy::mcp::Category;
use serde_json::Value;

use crate::broker::{AskRequest, Client, Scope};

/// What the approver is shown for one call.
#[derive(Debug)]
pub struct ApprovalRequest<'a> {
    pub profile: &'a str,
    /// The wrapped command, as the user typed it.
    pub server: &'a [String],
    pub tool: &'a str,
    pub category: Option<Category>,
    /// The call's arguments with secret values already masked.
    pub arguments: &'a Value,
    /// The rule (or default) that asked, and why (e.g. the tool's description changed).
    pub rule: &'a str,
    /// The tool's description or schema changed since it was pinned: an
    /// earlier "allow" (for the session or always) was given to what it was
    /// then, so only a fresh answer allows it. Earlier denials still hold.
    pub changed: bool,
}

/// The answer, and who gave it (`user via terminal`, `broker`, `no-broker`...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Approval {
    /// `answer`: the body of the `approval` record when a person answered
    /// just now (not a grant or a remembered answer); the gate makes it
    /// durable before the call goes out (log before act).
    Allow {
        by: String,
        answer: Option<Value>,
    },
    Deny {
        by: String,
        reason: String,
    },
}

/// Decides `ask` calls. It may block (a human answers); the gate calls it
/// off the server's output path, so replies keep flowing meanwhile.
pub trait Approver: Send + Sync {
    fn decide(&self, request: &ApprovalRequest<'_>) -> Approval;
}

/// The approver while no broker exists: fail closed.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoBroker;

impl Approver for NoBroker {
    fn decide(&self, request: &ApprovalRequest<'_>) -> Approval {
        Approval::Deny {
            by: "no-broker".into(),
            reason: format!(
                "tool `{}` needs approval ({}), and no approval broker is available: denied",
                request.tool, request.rule
            ),
        }
    }
}

/// Asks through the approval broker ([`Client`]). "For this session" and
/// "always" answers hold for the rest of this gate's session; persisting
/// "always" across sessions is the grants file's business, not this gate's.
pub struct Broker {
    client: Client,
    session: String,
    /// The MCP server's pid (in our PID namespace).
    pid: i32,
    timeout: Duration,
    /// Tool name → the remembered answer, and who gave it.
    remembered: Mutex<HashMap<String, (bool, String)>>,
    /// The grants file and this profile's saved answers ("always").
    saved: Option<(std::path::PathBuf, policy::ask::Grants)>,
}

impl Broker {
    /// `server_pid`: the wrapped server's pid; the session shown to the
    /// person answering is this supervisor's (its pid, which prefixes the
    /// audit session id).
    pub fn new(server_pid: u32) -> Broker {
        Broker::with_client(Client::new(), format!("mcp-{}", std::process::id()), server_pid)
    }

    pub fn with_client(client: Client, session: String, server_pid: u32) -> Broker {
        Broker {
            client,
            session,
            pid: i32::try_from(server_pid).unwrap_or(0),
            timeout: Duration::from_millis(policy::ask::DEFAULT_TIMEOUT_MS),
            remembered: Mutex::new(HashMap::new()),
            saved: None,
        }
    }

    /// Consults and extends the grants file: an "always" answer for a tool
    /// holds for later runs of the same profile, like a syscall grant.
    pub fn with_grants(mut self, path: std::path::PathBuf, grants: policy::ask::Grants) -> Broker {
        self.saved = Some((path, grants));
        self
    }

    /// How long an ask waits for a person (the profile's `[ask] timeout`).
    pub fn with_timeout(mut self, timeout: Duration) -> Broker {
        self.timeout = timeout;
        self
    }
}

impl Approver for Broker {
    fn decide(&self, request: &ApprovalRequest<'_>) -> Approval {
        let remembered = self.remembered.lock().unwrap_or_else(|p| p.into_inner()).get(request.tool).cloned();
        match remembered {
            Some((true, _)) if request.changed => {}
            Some((true, by)) => return Approval::Allow { by: format!("{by} (for this session)"), answer: None },
            Some((false, by)) => {
                return Approval::Deny {
                    by: format!("{by} (for this session)"),
                    reason: format!("tool `{}` was denied for the rest of this session", request.tool),
                }
            }
            None => {}
        }
        if let Some((allow, id)) = self
            .saved
            .as_ref()
            .and_then(|(_, g)| g.lookup(policy::ask::Access::Tool, request.tool))
            .filter(|(allow, _)| !(*allow && request.changed))
        {
            let by = format!("grant {id}");
            if allow {
                return Approval::Allow { by, answer: None };
            }
            return Approval::Deny {
                reason: format!("tool `{}` is always denied for this profile ({by})", request.tool),
                by,
            };
        }
        let ask = AskRequest {
            session: self.session.clone(),
            profile: request.profile.to_string(),
            argv: request.server.to_vec(),
            pid: self.pid,
            kind: "tool".into(),
            // A tool without a category is shown as what calling it is: executing something.
            category: request.category.map_or("execute", |c| c.as_str()).into(),
            target: request.tool.to_string(),
            detail: format!("tools/call {} {}", request.tool, request.arguments),
            rule: request.rule.to_string(),
            timeout: self.timeout,
        };
        let answer = self.client.ask(&ask);
        let remember = match (answer.allow, answer.scope) {
            (true, Scope::Session | Scope::Always) | (false, Scope::Always) => true,
            (_, _) => false,
        };
        if remember {
            let mut r = self.remembered.lock().unwrap_or_else(|p| p.into_inner());
            r.insert(request.tool.to_string(), (answer.allow, answer.by.clone()));
        }
        if let (Scope::Always, Some((path, _))) = (answer.scope, &self.saved) {
            let grant = policy::ask::Grant {
                id: crate::grants::new_id(),
                profile: request.profile.to_string(),
                access: policy::ask::Access::Tool,
                target: request.tool.to_string(),
                allow: answer.allow,
                scope: policy::ask::GrantScope::Always,
                created: std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()),
                by: answer.by.clone(),
            };
            if let Err(f) = crate::grants::persist(path, grant) {
                eprintln!("portcullis: mcp: could not save the grant: {}", f.message);
            }
        }
        if answer.allow {
            let body = serde_json::json!({
                "request": {
                    "kind": ask.kind, "category": ask.category, "target": ask.target, "detail": ask.detail,
                    "rule": ask.rule, "pid": ask.pid, "timeout_ms": ask.timeout.as_millis() as u64,
                },
                "decision": "allow",
                "scope": match answer.scope { Scope::Once => "once", Scope::Session => "session", Scope::Always => "always" },
                "by": answer.by,
                "latency_ms": answer.latency.as_millis() as u64,
            });
            return Approval::Allow { by: answer.by, answer: Some(body) };
        }
        let why = answer.reason.unwrap_or_else(|| format!("denied by {}", answer.by));
        let reason = if answer.by == "no-broker" {
            format!(
                "tool `{}` needs approval ({}), and no approval broker is available: {why}; denied",
                request.tool, request.rule
            )
        } else {
            format!("tool `{}` needs approval ({}): {why}", request.tool, request.rule)
        };
        Approval::Deny { by: answer.by, reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::client::Options;

    #[test]
    fn without_a_broker_or_terminal_a_tool_is_denied_and_says_why() {
        let dir = std::env::temp_dir().join(format!("pc-approver-none-{}", std::process::id()));
        let client = Client::with_options(Options { dir: Some(dir), start: None, tty: false, hints: false });
        let b = Broker::with_client(client, "s".into(), 1);
        let args = serde_json::json!({"path": "/x"});
        let req = ApprovalRequest {
            profile: "p",
            server: &["srv".to_string()],
            tool: "wipe",
            category: None,
            arguments: &args,
            rule: "ask.tools wipe",
            changed: false,
        };
        match b.decide(&req) {
            Approval::Deny { by, reason } => {
                assert_eq!(by, "no-broker");
                assert!(reason.contains("no approval broker") && reason.contains("wipe"), "{reason}");
            }
            a => panic!("{a:?}"),
        }
    }

    /// An "always allow" was given to the tool as it was described then: once
    /// its description changed, only a fresh answer allows it (here none
    /// comes: no broker, so deny). An "always deny" still holds.
    #[test]
    fn a_changed_tool_is_not_allowed_by_an_earlier_answer() {
        let dir = std::env::temp_dir().join(format!("pc-approver-changed-{}", std::process::id()));
        let grant = |tool: &str, allow: bool| policy::ask::Grant {
            id: format!("g-{tool}"),
            profile: "p".into(),
            access: policy::ask::Access::Tool,
            target: tool.into(),
            allow,
            scope: policy::ask::GrantScope::Always,
            created: 0,
            by: "cli".into(),
        };
        let file = policy::ask::GrantFile {
            version: policy::ask::GRANT_FILE_VERSION,
            grants: vec![grant("move_file", true), grant("wipe", false)],
        };
        let grants = policy::ask::Grants::for_profile(&file, "p");
        let client = Client::with_options(Options { dir: Some(dir.clone()), start: None, tty: false, hints: false });
        let b = Broker::with_client(client, "s".into(), 1).with_grants(dir.join("grants.json"), grants);
        let args = serde_json::json!({});
        let req = |tool, changed| ApprovalRequest {
            profile: "p",
            server: &[],
            tool,
            category: None,
            arguments: &args,
            rule: "r",
            changed,
        };
        assert_eq!(
            b.decide(&req("move_file", false)),
            Approval::Allow { by: "grant g-move_file".into(), answer: None }
        );
        assert!(matches!(b.decide(&req("move_file", true)), Approval::Deny { by, .. } if by == "no-broker"));
        assert!(matches!(b.decide(&req("wipe", true)), Approval::Deny { by, .. } if by == "grant g-wipe"));
        // Answered "allow for this session" earlier: not for the changed tool either.
        b.remembered.lock().unwrap().insert("move_file".into(), (true, "approvals".into()));
        assert!(matches!(b.decide(&req("move_file", true)), Approval::Deny { by, .. } if by == "no-broker"));
    }
}
