//! How strongly each layer is enforced on this kernel, and what was degraded.
//! Printed by `explain` and `doctor --profile`, and once on stderr by `run`
//! when anything is weaker than the profile asks.

use serde::Serialize;

use policy::Origin;

/// A rule of the profile that this kernel cannot enforce as written.
#[derive(Clone, Debug, Serialize)]
pub struct Degradation {
    /// The rule, as the profile says it (`network.connect 443`).
    pub rule: String,
    pub at: Option<Origin>,
    /// What it needs and what is here (`Landlock ABI 4; kernel has 2`).
    pub needs: String,
    /// What still holds when degrading (`the seccomp floor still denies UDP`).
    pub fallback: String,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Enforcement {
    pub landlock_abi: i32,
    /// Rules that need --best-effort on this kernel.
    pub degradations: Vec<Degradation>,
    /// Weaker or different than on the newest kernels, without loosening a
    /// profile rule (e.g. truncate(2) denied outright on ABI < 3).
    pub notices: Vec<String>,
    /// Optional paths and commands that were not there.
    pub skipped: Vec<String>,
    /// How limits are enforced (cgroup or rlimit).
    pub limits: Vec<String>,
    /// Lifecycle containment: PID namespace or not.
    pub lifecycle: String,
}

impl Enforcement {
    pub fn degrade(
        &mut self,
        rule: impl Into<String>,
        at: Option<&Origin>,
        needs: impl Into<String>,
        fallback: impl Into<String>,
    ) {
        self.degradations.push(Degradation {
            rule: rule.into(),
            at: at.cloned(),
            needs: needs.into(),
            fallback: fallback.into(),
        });
    }

    /// The refusal message when degradations exist and best effort is off.
    pub fn refusal(&self) -> String {
        let mut s = String::from("this kernel cannot enforce the profile as written:");
        for d in &self.degradations {
            s.push_str("\n  ");
            s.push_str(&d.line());
        }
        s.push_str("\nuse --best-effort (or `best_effort = true` in the profile) to run with these rules degraded, or a newer kernel");
        s
    }
}

impl Degradation {
    pub fn line(&self) -> String {
        let at = self.at.as_ref().map(|o| format!("{o}: ")).unwrap_or_default();
        format!("{at}{} needs {}; {}", self.rule, self.needs, self.fallback)
    }
}
