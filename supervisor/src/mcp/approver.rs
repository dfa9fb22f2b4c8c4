//! Who answers an `ask`. The approval broker (issue 3) will implement
//! [`Approver`]; until it exists, [`NoBroker`] answers every ask with no,
//! saying why: an ask never turns into an allow by default.

use policy::mcp::Category;
use serde_json::Value;

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
}

/// The answer, and who gave it (`user via terminal`, `broker`, `no-broker`...).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Approval {
    Allow { by: String },
    Deny { by: String, reason: String },
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
