//! The `[mcp]` section of a profile: what the MCP gate does with each
//! `tools/call` (allow, ask, deny), how fast a tool may be called, when its
//! circuit breaker opens, and whether results are redacted and tool
//! descriptions pinned. Parsed here, merged along the `extends` chain like
//! the rest of the profile, compiled into a plain-data [`McpPlan`]; the
//! decision for one call ([`McpPlan::decide`]) is pure and unit-tested.
//!
//! ```toml
//! [mcp]
//! max_message = "16M"       # a bigger message is refused with a JSON-RPC error
//! redact = true             # private keys, AWS/GitHub/OpenAI tokens, secret fields -> [REDACTED]
//! redact_fields = ["ssn"]   # more object keys whose values are redacted
//! pin = true                # remember tool descriptions; a changed tool goes to ask
//!
//! [mcp.tools]
//! allow = ["read_*", "@read"]   # names (globs `*`, `?`) or `@category`
//! ask = ["write_file"]
//! deny = ["delete_*", "@credential"]
//! default = "allow"             # for tools no rule names (destructive ones: ask)
//! category = { "run_*" = "execute" }
//!
//! [mcp.rate]                    # token buckets per tool glob: N per s|min|h
//! "*" = "20/s"
//! "search_*" = "5/min"
//!
//! [mcp.breaker]
//! failures = 5                  # consecutive failures that open the breaker
//! cooldown = "30s"              # then one probe call is let through
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Error, Origin};
use crate::profile::{Lines, Located};

/// Default largest JSON-RPC message the gate accepts (16 MiB).
pub const DEFAULT_MAX_MESSAGE: u64 = 16 << 20;
/// Default consecutive failures before a tool's breaker opens.
pub const DEFAULT_BREAKER_FAILURES: u32 = 5;
/// Default time an open breaker waits before letting one probe through.
pub const DEFAULT_BREAKER_COOLDOWN_MS: u64 = 30_000;

// ---------------------------------------------------------------- schema

/// `[mcp]` as written in a profile file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpFile {
    pub max_message: Option<Spanned<String>>,
    pub redact: Option<bool>,
    #[serde(default)]
    pub redact_fields: Vec<Spanned<String>>,
    pub pin: Option<bool>,
    #[serde(default)]
    pub tools: ToolsFile,
    #[serde(default)]
    pub rate: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub breaker: BreakerFile,
}

/// `[mcp.tools]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolsFile {
    #[serde(default)]
    pub allow: Vec<Spanned<String>>,
    #[serde(default)]
    pub ask: Vec<Spanned<String>>,
    #[serde(default)]
    pub deny: Vec<Spanned<String>>,
    pub default: Option<Spanned<String>>,
    #[serde(default)]
    pub category: BTreeMap<String, Spanned<String>>,
}

/// `[mcp.breaker]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerFile {
    pub failures: Option<Spanned<i64>>,
    pub cooldown: Option<Spanned<String>>,
}

// ---------------------------------------------------------------- merged profile

/// What a tool rule does with a call.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ToolVerdict {
    Allow,
    Ask,
    Deny,
}

impl ToolVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            ToolVerdict::Allow => "allow",
            ToolVerdict::Ask => "ask",
            ToolVerdict::Deny => "deny",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "allow" => Some(ToolVerdict::Allow),
            "ask" => Some(ToolVerdict::Ask),
            "deny" => Some(ToolVerdict::Deny),
            _ => None,
        }
    }
}

/// What a tool does, for rules (`@write`), the audit log and the approver.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Category {
    Read,
    Write,
    Execute,
    Network,
    Credential,
    Navigate,
    Connection,
}

impl Category {
    pub const ALL: [Category; 7] = [
        Category::Read,
        Category::Write,
        Category::Execute,
        Category::Network,
        Category::Credential,
        Category::Navigate,
        Category::Connection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Category::Read => "read",
            Category::Write => "write",
            Category::Execute => "execute",
            Category::Network => "network",
            Category::Credential => "credential",
            Category::Navigate => "navigate",
            Category::Connection => "connection",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Category::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// The merged `[mcp]` section: lists add up along the chain, scalars from the child win.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct McpProfile {
    pub max_message: Option<Located<u64>>,
    pub redact: Option<bool>,
    pub redact_fields: Vec<Located<String>>,
    pub pin: Option<bool>,
    pub rules: Vec<ToolRule>,
    pub default: Option<Located<ToolVerdict>>,
    pub categories: Vec<CategoryRule>,
    pub rates: Vec<RateRule>,
    pub breaker_failures: Option<Located<u32>>,
    pub breaker_cooldown_ms: Option<Located<u64>>,
}

/// `allow`/`ask`/`deny` entry: a tool-name glob or `@category`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolRule {
    pub pattern: String,
    pub verdict: ToolVerdict,
    pub at: Origin,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CategoryRule {
    pub pattern: String,
    pub category: Category,
    pub at: Origin,
}

/// A token bucket: at most `burst` calls at once, refilled at `burst` per `per_ms`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RateRule {
    pub pattern: String,
    pub burst: u32,
    pub per_ms: u64,
    pub at: Origin,
}

fn check_pattern(at: &Origin, p: &str) -> Result<(), Error> {
    if let Some(cat) = p.strip_prefix('@') {
        if Category::parse(cat).is_none() {
            return Err(Error::invalid(at, format!("unknown tool category `@{cat}` ({})", categories_list())));
        }
        return Ok(());
    }
    if p.is_empty() || p.len() > 256 || p.chars().any(|c| c.is_control()) {
        return Err(Error::invalid(
            at,
            format!("bad tool pattern `{p}`: 1-256 printable characters, `*` and `?` globs"),
        ));
    }
    Ok(())
}

fn categories_list() -> String {
    Category::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>().join(", ")
}

/// `30s`, `2m`, `500ms`, `1h` into milliseconds.
pub fn parse_duration_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, mult) = if let Some(d) = t.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = t.strip_suffix("min") {
        (d, 60_000)
    } else if let Some(d) = t.strip_suffix('s') {
        (d, 1000)
    } else if let Some(d) = t.strip_suffix('m') {
        (d, 60_000)
    } else if let Some(d) = t.strip_suffix('h') {
        (d, 3_600_000)
    } else {
        return Err(format!("bad duration `{text}`: use a number with ms, s, m or h, e.g. 30s"));
    };
    let n: u64 = digits.trim().parse().map_err(|_| format!("bad duration `{text}`: use e.g. 30s, 2m, 500ms"))?;
    if n == 0 {
        return Err(format!("bad duration `{text}`: must be greater than zero"));
    }
    n.checked_mul(mult).ok_or_else(|| format!("bad duration `{text}`: too large"))
}

/// `20/s`, `5/min`, `100/h` into (burst, period in ms).
pub fn parse_rate(text: &str) -> Result<(u32, u64), String> {
    let bad = || format!("bad rate `{text}`: use N/s, N/min or N/h, e.g. 20/s");
    let (n, per) = text.trim().split_once('/').ok_or_else(bad)?;
    let n: u32 = n.trim().parse().map_err(|_| bad())?;
    if n == 0 {
        return Err(format!("bad rate `{text}`: must allow at least one call (use deny to forbid a tool)"));
    }
    let per_ms = match per.trim() {
        "s" | "sec" | "second" => 1000,
        "m" | "min" | "minute" => 60_000,
        "h" | "hour" => 3_600_000,
        _ => return Err(bad()),
    };
    Ok((n, per_ms))
}

impl McpProfile {
    /// Adds one file's `[mcp]` on top of what is merged so far.
    pub(crate) fn layer(&mut self, file: &McpFile, lines: &Lines) -> Result<(), Error> {
        if let Some(v) = &file.max_message {
            let at = lines.at(v.span().start);
            let bytes =
                crate::size::parse(v.get_ref()).map_err(|m| Error::invalid(&at, format!("mcp.max_message: {m}")))?;
            if bytes < 4096 {
                return Err(Error::invalid(&at, "mcp.max_message: at least 4K (an initialize message is bigger)"));
            }
            self.max_message = Some(Located::new(bytes, at));
        }
        if file.redact.is_some() {
            self.redact = file.redact;
        }
        if file.pin.is_some() {
            self.pin = file.pin;
        }
        for f in &file.redact_fields {
            let at = lines.at(f.span().start);
            if f.get_ref().trim().is_empty() {
                return Err(Error::invalid(&at, "mcp.redact_fields: empty field name"));
            }
            self.redact_fields.push(Located::new(f.get_ref().clone(), at));
        }
        let t = &file.tools;
        for (list, verdict) in
            [(&t.allow, ToolVerdict::Allow), (&t.ask, ToolVerdict::Ask), (&t.deny, ToolVerdict::Deny)]
        {
            for p in list {
                let at = lines.at(p.span().start);
                check_pattern(&at, p.get_ref())?;
                self.rules.push(ToolRule { pattern: p.get_ref().clone(), verdict, at });
            }
        }
        if let Some(d) = &t.default {
            let at = lines.at(d.span().start);
            let v = ToolVerdict::parse(d.get_ref()).ok_or_else(|| {
                Error::invalid(&at, format!("mcp.tools.default: `{}` is not allow, ask or deny", d.get_ref()))
            })?;
            self.default = Some(Located::new(v, at));
        }
        for (pattern, c) in &t.category {
            let at = lines.at(c.span().start);
            if pattern.starts_with('@') {
                return Err(Error::invalid(&at, "mcp.tools.category: keys are tool names or globs, not @categories"));
            }
            check_pattern(&at, pattern)?;
            let category = Category::parse(c.get_ref()).ok_or_else(|| {
                Error::invalid(&at, format!("unknown tool category `{}` ({})", c.get_ref(), categories_list()))
            })?;
            // A child's category for the same pattern replaces the parent's.
            self.categories.retain(|r| r.pattern != *pattern);
            self.categories.push(CategoryRule { pattern: pattern.clone(), category, at });
        }
        for (pattern, r) in &file.rate {
            let at = lines.at(r.span().start);
            check_pattern(&at, pattern)?;
            let (burst, per_ms) = parse_rate(r.get_ref()).map_err(|m| Error::invalid(&at, format!("mcp.rate: {m}")))?;
            self.rates.retain(|x| x.pattern != *pattern);
            self.rates.push(RateRule { pattern: pattern.clone(), burst, per_ms, at });
        }
        if let Some(f) = &file.breaker.failures {
            let at = lines.at(f.span().start);
            match u32::try_from(*f.get_ref()) {
                Ok(n) if (1..=1000).contains(&n) => self.breaker_failures = Some(Located::new(n, at)),
                _ => return Err(Error::invalid(&at, "mcp.breaker.failures: must be 1..=1000")),
            }
        }
        if let Some(c) = &file.breaker.cooldown {
            let at = lines.at(c.span().start);
            let ms = parse_duration_ms(c.get_ref())
                .map_err(|m| Error::invalid(&at, format!("mcp.breaker.cooldown: {m}")))?;
            self.breaker_cooldown_ms = Some(Located::new(ms, at));
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- plan

/// What the gate applies to the MCP stream: plain data, printed by `explain`.
#[derive(Clone, Debug, Serialize)]
pub struct McpPlan {
    pub max_message: u64,
    pub redact: bool,
    /// Object keys (beyond the built-in secret names) whose values are redacted.
    pub redact_fields: Vec<String>,
    pub pin: bool,
    pub rules: Vec<ToolRule>,
    pub default: ToolVerdict,
    /// Where `default` came from (None: built in).
    pub default_at: Option<Origin>,
    pub categories: Vec<CategoryRule>,
    pub rates: Vec<RateRule>,
    pub breaker_failures: u32,
    pub breaker_cooldown_ms: u64,
}

impl Default for McpPlan {
    fn default() -> Self {
        compile(&McpProfile::default())
    }
}

/// Compiles the merged section. Everything was checked while merging.
pub fn compile(p: &McpProfile) -> McpPlan {
    McpPlan {
        max_message: p.max_message.as_ref().map_or(DEFAULT_MAX_MESSAGE, |l| l.value),
        redact: p.redact.unwrap_or(true),
        redact_fields: p.redact_fields.iter().map(|l| l.value.clone()).collect(),
        pin: p.pin.unwrap_or(true),
        rules: p.rules.clone(),
        default: p.default.as_ref().map_or(ToolVerdict::Allow, |l| l.value),
        default_at: p.default.as_ref().map(|l| l.at.clone()),
        categories: p.categories.clone(),
        rates: p.rates.clone(),
        breaker_failures: p.breaker_failures.as_ref().map_or(DEFAULT_BREAKER_FAILURES, |l| l.value),
        breaker_cooldown_ms: p.breaker_cooldown_ms.as_ref().map_or(DEFAULT_BREAKER_COOLDOWN_MS, |l| l.value),
    }
}

/// The MCP annotations of a tool (`tools/list`), as far as the gate uses them.
/// The spec calls them hints: a server can lie, so they only ever make the
/// default stricter (destructive -> ask), never grant anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Hints {
    pub read_only: Option<bool>,
    pub destructive: Option<bool>,
    pub open_world: Option<bool>,
}

impl Hints {
    /// Reads `readOnlyHint`, `destructiveHint`, `openWorldHint` from an `annotations` object.
    pub fn from_annotations(a: &serde_json::Value) -> Hints {
        let b = |k: &str| a.get(k).and_then(serde_json::Value::as_bool);
        Hints { read_only: b("readOnlyHint"), destructive: b("destructiveHint"), open_world: b("openWorldHint") }
    }

    /// Destructive as the spec means it: not read-only, and `destructiveHint`
    /// not false. A tool with no annotations at all is not counted (most
    /// servers send none); a tool saying `readOnlyHint: false` is.
    pub fn destructive(&self) -> bool {
        self.read_only != Some(true)
            && (self.destructive == Some(true) || (self.read_only == Some(false) && self.destructive.is_none()))
    }
}

/// The gate's answer for one call, with the reason.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ToolDecision {
    pub verdict: ToolVerdict,
    pub category: Option<Category>,
    /// The rule that decided (`file:line`), or what the default was.
    pub rule: String,
}

/// `*` matches any run, `?` one character. Case-sensitive, like MCP tool names.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// How specific a pattern is: an exact name beats any glob; a longer literal part beats a shorter.
fn specificity(pattern: &str) -> (bool, usize) {
    let literal = !pattern.contains(['*', '?']);
    (literal, pattern.chars().filter(|c| *c != '*' && *c != '?').count())
}

impl McpPlan {
    /// The tool's category: the profile's most specific `category` entry,
    /// else inferred from its annotations.
    pub fn category(&self, tool: &str, hints: Option<&Hints>) -> Option<Category> {
        if let Some(c) = self.declared_category(tool) {
            return Some(c);
        }
        let h = hints?;
        if h.read_only == Some(true) {
            Some(Category::Read)
        } else if h.destructive() {
            Some(Category::Write)
        } else if h.open_world == Some(true) {
            Some(Category::Network)
        } else {
            None
        }
    }

    /// The tool's category from the profile's own `category` entries only.
    fn declared_category(&self, tool: &str) -> Option<Category> {
        self.categories
            .iter()
            .filter(|r| glob_match(&r.pattern, tool))
            .max_by_key(|r| specificity(&r.pattern))
            .map(|r| r.category)
    }

    /// allow / ask / deny for a call of `tool`. Every matching rule counts
    /// and the strictest wins (deny > ask > allow), so a broad allow can
    /// never undo a narrow deny. With no rule: destructive tools ask, the
    /// rest get the profile's default. An `allow` of a `@category` matches
    /// only the category the profile gives the tool: one its annotations
    /// claim (a server can call any tool read-only) can put it under an ask
    /// or deny rule, never under an allow.
    pub fn decide(&self, tool: &str, hints: Option<&Hints>) -> ToolDecision {
        let category = self.category(tool, hints);
        let declared = self.declared_category(tool);
        let matching = self.rules.iter().filter(|r| match r.pattern.strip_prefix('@') {
            Some(c) => {
                let by = if r.verdict == ToolVerdict::Allow { declared } else { category };
                by.is_some_and(|cat| cat.as_str() == c)
            }
            None => glob_match(&r.pattern, tool),
        });
        if let Some(r) = matching.max_by_key(|r| r.verdict) {
            return ToolDecision {
                verdict: r.verdict,
                category,
                rule: format!("{} `{}` at {}", r.verdict.as_str(), r.pattern, r.at),
            };
        }
        if hints.is_some_and(Hints::destructive) && self.default < ToolVerdict::Ask {
            return ToolDecision {
                verdict: ToolVerdict::Ask,
                category,
                rule: "destructive tool (annotations) with no rule: ask".into(),
            };
        }
        let rule = match &self.default_at {
            Some(at) => format!("default {} at {at}", self.default.as_str()),
            None => format!("built-in default {}", self.default.as_str()),
        };
        ToolDecision { verdict: self.default, category, rule }
    }

    /// The rate limit for `tool`: the most specific matching entry.
    pub fn rate(&self, tool: &str) -> Option<&RateRule> {
        self.rates.iter().filter(|r| glob_match(&r.pattern, tool)).max_by_key(|r| specificity(&r.pattern))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(text: &str) -> Result<McpPlan, Error> {
        #[derive(Deserialize)]
        struct Wrap {
            #[serde(default)]
            mcp: McpFile,
        }
        let w: Wrap = toml::from_str(text).map_err(|e| Error::invalid(&Origin::new("t", 0), e.to_string()))?;
        let mut p = McpProfile::default();
        p.layer(&w.mcp, &Lines::new("t.toml", text))?;
        Ok(compile(&p))
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", ""));
        assert!(glob_match("read_*", "read_file"));
        assert!(!glob_match("read_*", "write_file"));
        assert!(glob_match("*_file", "read_text_file"));
        assert!(glob_match("a?c", "abc"));
        assert!(!glob_match("a?c", "ac"));
        assert!(glob_match("a*b*c", "axxbyyc"));
        assert!(!glob_match("a*b*c", "axxbyy"));
        assert!(glob_match("exact", "exact"));
        assert!(!glob_match("exact", "exact2"));
    }

    #[test]
    fn deny_beats_ask_beats_allow() {
        let p = plan(
            "[mcp.tools]\nallow = [\"*\"]\nask = [\"write_*\"]\ndeny = [\"write_secret\", \"rm\"]\ndefault = \"deny\"\n",
        )
        .unwrap();
        assert_eq!(p.decide("read_file", None).verdict, ToolVerdict::Allow);
        assert_eq!(p.decide("write_file", None).verdict, ToolVerdict::Ask);
        let d = p.decide("write_secret", None);
        assert_eq!(d.verdict, ToolVerdict::Deny);
        assert!(d.rule.contains("t.toml:4"), "{}", d.rule);
        assert_eq!(p.decide("rm", None).verdict, ToolVerdict::Deny);
    }

    #[test]
    fn default_and_destructive() {
        let p = plan("").unwrap();
        assert_eq!(p.decide("anything", None).verdict, ToolVerdict::Allow);
        let destructive = Hints { destructive: Some(true), ..Hints::default() };
        assert_eq!(p.decide("rm", Some(&destructive)).verdict, ToolVerdict::Ask);
        let spec_default = Hints { read_only: Some(false), ..Hints::default() };
        assert_eq!(p.decide("rm", Some(&spec_default)).verdict, ToolVerdict::Ask);
        let ro = Hints { read_only: Some(true), destructive: Some(true), ..Hints::default() };
        assert_eq!(p.decide("ls", Some(&ro)).verdict, ToolVerdict::Allow, "read-only overrides destructive");
        // An explicit rule wins over the destructive default.
        let p = plan("[mcp.tools]\nallow = [\"rm\"]\n").unwrap();
        assert_eq!(p.decide("rm", Some(&destructive)).verdict, ToolVerdict::Allow);
        // A default of deny stays deny for destructive tools.
        let p = plan("[mcp.tools]\ndefault = \"deny\"\n").unwrap();
        assert_eq!(p.decide("rm", Some(&destructive)).verdict, ToolVerdict::Deny);
    }

    #[test]
    fn categories_from_profile_then_annotations() {
        let p = plan(
            "[mcp.tools]\ndeny = [\"@credential\"]\nask = [\"@execute\"]\n[mcp.tools.category]\n\"get_*\" = \"read\"\n\"get_token\" = \"credential\"\n\"run\" = \"execute\"\n",
        )
        .unwrap();
        assert_eq!(p.category("get_file", None), Some(Category::Read));
        assert_eq!(p.category("get_token", None), Some(Category::Credential), "exact beats glob");
        assert_eq!(p.decide("get_token", None).verdict, ToolVerdict::Deny);
        assert_eq!(p.decide("run", None).verdict, ToolVerdict::Ask);
        let ro = Hints { read_only: Some(true), ..Hints::default() };
        assert_eq!(p.category("list", Some(&ro)), Some(Category::Read));
        let ow = Hints { read_only: Some(false), destructive: Some(false), open_world: Some(true) };
        assert_eq!(p.category("fetch", Some(&ow)), Some(Category::Network));
        assert_eq!(p.category("x", None), None);
    }

    /// A hostile server calls `delete_all` read-only: that may make a
    /// `@read` ask or deny rule match, but never a `@read` allow; the
    /// profile's own category for a tool still can.
    #[test]
    fn annotations_never_match_an_allow_by_category() {
        let p = plan(
            "[mcp.tools]\nallow = [\"@read\"]\ndeny = [\"@write\"]\ndefault = \"ask\"\n[mcp.tools.category]\n\"list_*\" = \"read\"\n",
        )
        .unwrap();
        let ro = Hints { read_only: Some(true), ..Hints::default() };
        let d = p.decide("delete_all", Some(&ro));
        assert_eq!((d.verdict, d.category), (ToolVerdict::Ask, Some(Category::Read)), "{}", d.rule);
        assert_eq!(p.decide("list_dir", Some(&ro)).verdict, ToolVerdict::Allow);
        assert_eq!(p.decide("list_dir", None).verdict, ToolVerdict::Allow);
        let destructive = Hints { destructive: Some(true), ..Hints::default() };
        assert_eq!(p.decide("rm", Some(&destructive)).verdict, ToolVerdict::Deny, "stricter: still matches");
        let p = plan("[mcp.tools]\nask = [\"@read\"]\n").unwrap();
        assert_eq!(p.decide("peek", Some(&ro)).verdict, ToolVerdict::Ask);
    }

    #[test]
    fn rates_and_breaker() {
        let p = plan(
            "[mcp.rate]\n\"*\" = \"20/s\"\n\"search_*\" = \"5/min\"\n[mcp.breaker]\nfailures = 3\ncooldown = \"2s\"\n",
        )
        .unwrap();
        assert_eq!(p.rate("search_web").map(|r| (r.burst, r.per_ms)), Some((5, 60_000)));
        assert_eq!(p.rate("other").map(|r| (r.burst, r.per_ms)), Some((20, 1000)));
        assert_eq!((p.breaker_failures, p.breaker_cooldown_ms), (3, 2000));
        let d = McpPlan::default();
        assert_eq!((d.breaker_failures, d.breaker_cooldown_ms, d.max_message), (5, 30_000, 16 << 20));
        assert!(d.redact && d.pin);
    }

    #[test]
    fn errors_name_the_line() {
        let e = plan("[mcp.tools]\nallow = [\"a\"]\ndeny = [\"@secrets\"]\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:3: unknown tool category `@secrets`"), "{e}");
        let e = plan("[mcp.rate]\n\"x\" = \"fast\"\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:2: mcp.rate: bad rate"), "{e}");
        let e = plan("[mcp]\nmax_message = \"1K\"\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:2:"), "{e}");
        let e = plan("[mcp.tools]\ndefault = \"maybe\"\n").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:2:"), "{e}");
        let e = plan("[mcp.breaker]\ncooldown = \"soon\"\n").unwrap_err().to_string();
        assert!(e.contains("t.toml:2"), "{e}");
        assert!(plan("[mcp]\nunknown = 1\n").is_err());
    }

    #[test]
    fn durations_and_rates_parse() {
        assert_eq!(parse_duration_ms("500ms"), Ok(500));
        assert_eq!(parse_duration_ms("30s"), Ok(30_000));
        assert_eq!(parse_duration_ms("2m"), Ok(120_000));
        assert_eq!(parse_duration_ms("1h"), Ok(3_600_000));
        assert!(parse_duration_ms("0s").is_err());
        assert!(parse_duration_ms("10").is_err());
        assert_eq!(parse_rate("5/min"), Ok((5, 60_000)));
        assert!(parse_rate("0/s").is_err());
        assert!(parse_rate("5/week").is_err());
    }
}
