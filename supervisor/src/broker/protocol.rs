//! The broker's wire format: one JSON object per line, `{"v":1,"type":...}`.
//! docs/BROKER.md is the reference a front end is written from; this file
//! and that one change together.
//!
//! Parsing is strict in both directions: unknown or duplicate fields, a
//! missing or different `v`, an unknown `type`, a wrong JSON type or a line
//! over [`MAX_LINE`] bytes are errors, never guesses.

use std::fmt;
use std::io::BufRead;

use serde::de::{DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::Scope;

/// The protocol version every message carries as `"v"`.
pub const VERSION: u64 = 1;
/// Longest line either side accepts, newline excluded.
pub const MAX_LINE: usize = 64 * 1024;
/// Longest timeout a submit may ask for (a day).
pub const MAX_TIMEOUT_MS: u64 = 24 * 3600 * 1000;
/// Most argv elements a submit may carry.
pub const MAX_ARGV: usize = 256;
/// The categories a request can have.
pub const CATEGORIES: [&str; 7] = ["read", "write", "execute", "network", "credential", "connection", "navigate"];
/// `by` values only the broker or the supervisor itself may give.
pub const RESERVED_BY: [&str; 6] = ["tty", "timeout", "no-broker", "broker", "cancelled", "gone"];

/// Why a line was not a valid message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtoError {
    #[error("line longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("not JSON: {0}")]
    BadJson(String),
    #[error("protocol version {0} is not supported (this side speaks {VERSION})")]
    Version(String),
    #[error("{0}")]
    BadMessage(String),
}

impl ProtoError {
    /// The `code` of the error line the broker answers with.
    pub fn code(&self) -> &'static str {
        match self {
            ProtoError::TooLong => "too-long",
            ProtoError::BadJson(_) => "bad-json",
            ProtoError::Version(_) => "unsupported-version",
            ProtoError::BadMessage(_) => "bad-message",
        }
    }
}

/// A supervisor asks for a decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Submit {
    /// Chosen by the submitter, unique among its pending submits on this connection.
    pub req: u64,
    pub session: String,
    pub profile: String,
    pub argv: Vec<String>,
    pub pid: i32,
    pub kind: String,
    pub category: String,
    pub target: String,
    pub detail: String,
    pub rule: String,
    pub timeout_ms: u64,
}

impl Submit {
    /// Checks the values serde cannot: ranges and vocabularies.
    pub fn validate(&self) -> Result<(), ProtoError> {
        let bad = |m: String| Err(ProtoError::BadMessage(format!("submit: {m}")));
        if !CATEGORIES.contains(&self.category.as_str()) {
            return bad(format!("category {:?} is not one of {}", self.category, CATEGORIES.join(", ")));
        }
        if !is_word(&self.kind) {
            return bad(format!("kind {:?} must be 1-32 of a-z 0-9 -", self.kind));
        }
        if self.timeout_ms == 0 || self.timeout_ms > MAX_TIMEOUT_MS {
            return bad(format!("timeout_ms {} must be 1..={MAX_TIMEOUT_MS}", self.timeout_ms));
        }
        if self.argv.len() > MAX_ARGV {
            return bad(format!("argv has {} elements, at most {MAX_ARGV}", self.argv.len()));
        }
        Ok(())
    }
}

/// A supervisor withdraws a submit (its own timeout fired, the process is gone).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cancel {
    pub req: u64,
}

/// A front end decides a pending request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    pub id: String,
    pub allow: bool,
    pub scope: Scope,
    /// The front end's name: `approvals`, `cli`, or another 1-32 of a-z 0-9 -.
    pub by: String,
}

impl Answer {
    pub fn validate(&self) -> Result<(), ProtoError> {
        if !is_word(&self.by) || RESERVED_BY.contains(&self.by.as_str()) {
            return Err(ProtoError::BadMessage(format!(
                "answer: by {:?} must be 1-32 of a-z 0-9 - and not one of {}",
                self.by,
                RESERVED_BY.join(", ")
            )));
        }
        Ok(())
    }
}

/// Messages to the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ToBroker {
    Submit(Submit),
    Cancel(Cancel),
    List,
    Subscribe,
    Answer(Answer),
    Ping,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

impl ToBroker {
    pub fn parse(line: &[u8]) -> Result<ToBroker, ProtoError> {
        let (ty, body) = envelope(line)?;
        Ok(match ty.as_str() {
            "submit" => ToBroker::Submit(payload(&ty, body)?),
            "cancel" => ToBroker::Cancel(payload(&ty, body)?),
            "list" => payload::<Empty>(&ty, body).map(|_| ToBroker::List)?,
            "subscribe" => payload::<Empty>(&ty, body).map(|_| ToBroker::Subscribe)?,
            "answer" => ToBroker::Answer(payload(&ty, body)?),
            "ping" => payload::<Empty>(&ty, body).map(|_| ToBroker::Ping)?,
            other => return Err(unknown_type(other, "submit, cancel, list, subscribe, answer, ping")),
        })
    }

    /// One line, newline included.
    pub fn encode(&self) -> String {
        match self {
            ToBroker::Submit(m) => encode("submit", m),
            ToBroker::Cancel(m) => encode("cancel", m),
            ToBroker::List => encode("list", &Empty {}),
            ToBroker::Subscribe => encode("subscribe", &Empty {}),
            ToBroker::Answer(m) => encode("answer", m),
            ToBroker::Ping => encode("ping", &Empty {}),
        }
    }
}

/// A pending request as front ends see it: sensitive values already masked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct View {
    pub id: String,
    pub session: String,
    pub profile: String,
    pub argv: Vec<String>,
    pub pid: i32,
    pub kind: String,
    pub category: String,
    pub target: String,
    pub detail: String,
    pub rule: String,
    /// `position` of `of`: 1 is the oldest pending request.
    pub position: usize,
    pub of: usize,
    pub age_ms: u64,
    pub timeout_ms: u64,
    pub left_ms: u64,
    /// How many identical asks wait on this one answer.
    pub waiters: usize,
    /// Set for category `credential`.
    pub warning: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Queued {
    pub req: u64,
    pub id: String,
    pub position: usize,
    pub of: usize,
    /// Joined an identical pending request of the same session.
    pub coalesced: bool,
    /// Front ends subscribed right now (0: nobody is watching).
    pub subscribers: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decided {
    pub req: u64,
    /// Null when the request was refused before it was queued.
    pub id: Option<String>,
    pub allow: bool,
    pub scope: Scope,
    pub by: String,
    pub reason: Option<String>,
    /// From the broker receiving the submit to this answer.
    pub latency_ms: u64,
}

/// The head of a snapshot: `count` [`Listed`] lines follow, oldest first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pending {
    pub count: usize,
}

/// One request of a snapshot (each on its own line, so every line stays
/// under [`MAX_LINE`] however long the queue is).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listed {
    pub request: View,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Added {
    pub request: View,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolved {
    pub id: String,
    pub allow: bool,
    pub scope: Scope,
    pub by: String,
    pub reason: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answered {
    pub id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pong {
    pub pid: u32,
    pub version: String,
    pub pending: usize,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorLine {
    pub code: String,
    pub message: String,
    /// The submit this is about, when there is one.
    pub req: Option<u64>,
}

/// Messages from the broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FromBroker {
    Queued(Queued),
    Decided(Decided),
    Pending(Pending),
    Request(Listed),
    Added(Added),
    Resolved(Resolved),
    Answered(Answered),
    Pong(Pong),
    Error(ErrorLine),
}

impl FromBroker {
    pub fn parse(line: &[u8]) -> Result<FromBroker, ProtoError> {
        let (ty, body) = envelope(line)?;
        Ok(match ty.as_str() {
            "queued" => FromBroker::Queued(payload(&ty, body)?),
            "decided" => FromBroker::Decided(payload(&ty, body)?),
            "pending" => FromBroker::Pending(payload(&ty, body)?),
            "request" => FromBroker::Request(payload(&ty, body)?),
            "added" => FromBroker::Added(payload(&ty, body)?),
            "resolved" => FromBroker::Resolved(payload(&ty, body)?),
            "answered" => FromBroker::Answered(payload(&ty, body)?),
            "pong" => FromBroker::Pong(payload(&ty, body)?),
            "error" => FromBroker::Error(payload(&ty, body)?),
            other => {
                return Err(unknown_type(
                    other,
                    "queued, decided, pending, request, added, resolved, answered, pong, error",
                ))
            }
        })
    }

    pub fn encode(&self) -> String {
        match self {
            FromBroker::Queued(m) => encode("queued", m),
            FromBroker::Decided(m) => encode("decided", m),
            FromBroker::Pending(m) => encode("pending", m),
            FromBroker::Request(m) => encode("request", m),
            FromBroker::Added(m) => encode("added", m),
            FromBroker::Resolved(m) => encode("resolved", m),
            FromBroker::Answered(m) => encode("answered", m),
            FromBroker::Pong(m) => encode("pong", m),
            FromBroker::Error(m) => encode("error", m),
        }
    }

    pub fn error(e: &ProtoError, req: Option<u64>) -> FromBroker {
        FromBroker::Error(ErrorLine { code: e.code().into(), message: e.to_string(), req })
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    Line,
    TooLong,
    Eof,
}

/// Reads one line of at most `max` bytes into `buf` (newline dropped),
/// without ever holding more than `max` bytes of it.
pub fn read_line(r: &mut impl BufRead, buf: &mut Vec<u8>, max: usize) -> std::io::Result<Line> {
    buf.clear();
    loop {
        let avail = match r.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(if buf.is_empty() { Line::Eof } else { Line::Line });
        }
        match avail.iter().position(|&b| b == b'\n') {
            Some(i) => {
                if buf.len() + i > max {
                    return Ok(Line::TooLong);
                }
                buf.extend_from_slice(&avail[..i]);
                r.consume(i + 1);
                return Ok(Line::Line);
            }
            None => {
                let n = avail.len();
                if buf.len() + n > max {
                    return Ok(Line::TooLong);
                }
                buf.extend_from_slice(avail);
                r.consume(n);
            }
        }
    }
}

/// 1-32 of a-z 0-9 -, starting with a letter.
fn is_word(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

fn unknown_type(ty: &str, known: &str) -> ProtoError {
    let shown: String = ty.chars().take(40).collect();
    ProtoError::BadMessage(format!("unknown type {shown:?} (known: {known})"))
}

/// `{"v":1,"type":T, ...payload}` and a newline.
fn encode<T: Serialize>(ty: &str, payload: &T) -> String {
    // Our payloads are structs of strings, numbers, bools and lists: they always serialise.
    let body = serde_json::to_string(payload).unwrap_or_else(|_| "{}".into());
    let rest = body.strip_prefix('{').unwrap_or("}");
    let sep = if rest == "}" { "" } else { "," };
    format!("{{\"v\":{VERSION},\"type\":{}{sep}{rest}\n", Value::String(ty.into()))
}

/// Checks the line's length, JSON, `v` and `type`; returns the type and the rest.
fn envelope(line: &[u8]) -> Result<(String, Map<String, Value>), ProtoError> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    if line.len() > MAX_LINE {
        return Err(ProtoError::TooLong);
    }
    let top: TopLevel = serde_json::from_slice(line).map_err(|e| {
        if e.is_data() {
            ProtoError::BadMessage(e.to_string())
        } else {
            ProtoError::BadJson(e.to_string())
        }
    })?;
    let mut map = top.0;
    match map.remove("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
        Some(other) => return Err(ProtoError::Version(other.to_string().chars().take(40).collect())),
        None => return Err(ProtoError::BadMessage("missing \"v\" (the protocol version, 1)".into())),
    }
    let ty = match map.remove("type") {
        Some(Value::String(s)) => s,
        Some(_) => return Err(ProtoError::BadMessage("\"type\" must be a string".into())),
        None => return Err(ProtoError::BadMessage("missing \"type\"".into())),
    };
    Ok((ty, map))
}

fn payload<T: DeserializeOwned>(ty: &str, body: Map<String, Value>) -> Result<T, ProtoError> {
    serde_json::from_value(Value::Object(body)).map_err(|e| ProtoError::BadMessage(format!("{ty}: {e}")))
}

/// The top-level object, refusing duplicate keys (serde_json's `Value`
/// would silently keep the last one: `"allow":false,"allow":true`).
struct TopLevel(Map<String, Value>);

impl<'de> Deserialize<'de> for TopLevel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = TopLevel;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut access: A) -> Result<TopLevel, A::Error> {
                let mut map = Map::new();
                while let Some(key) = access.next_key::<String>()? {
                    if map.contains_key(&key) {
                        let shown: String = key.chars().take(40).collect();
                        return Err(serde::de::Error::custom(format!("duplicate field {shown:?}")));
                    }
                    let value: Value = access.next_value()?;
                    map.insert(key, value);
                }
                Ok(TopLevel(map))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submit() -> Submit {
        Submit {
            req: 7,
            session: "s1".into(),
            profile: "strict".into(),
            argv: vec!["cat".into(), "x".into()],
            pid: 42,
            kind: "open-read".into(),
            category: "read".into(),
            target: "/etc/passwd".into(),
            detail: "openat(\"/etc/passwd\")".into(),
            rule: "p.toml:3: ask.read /etc".into(),
            timeout_ms: 1000,
        }
    }

    #[test]
    fn every_message_round_trips() {
        let view = View {
            id: "0a1b2c3d".into(),
            session: "s".into(),
            profile: "p".into(),
            argv: vec![],
            pid: 1,
            kind: "exec".into(),
            category: "credential".into(),
            target: "t".into(),
            detail: "d".into(),
            rule: "r".into(),
            position: 1,
            of: 2,
            age_ms: 3,
            timeout_ms: 4,
            left_ms: 1,
            waiters: 1,
            warning: Some("w".into()),
        };
        let to = [
            ToBroker::Submit(submit()),
            ToBroker::Cancel(Cancel { req: 1 }),
            ToBroker::List,
            ToBroker::Subscribe,
            ToBroker::Answer(Answer { id: "x".into(), allow: true, scope: Scope::Session, by: "cli".into() }),
            ToBroker::Ping,
        ];
        for m in to {
            let line = m.encode();
            assert!(line.starts_with("{\"v\":1,\"type\":\"") && line.ends_with('\n'), "{line}");
            assert_eq!(ToBroker::parse(line.as_bytes()).unwrap(), m, "{line}");
        }
        let from = [
            FromBroker::Queued(Queued { req: 1, id: "i".into(), position: 1, of: 1, coalesced: false, subscribers: 0 }),
            FromBroker::Decided(Decided {
                req: 1,
                id: None,
                allow: false,
                scope: Scope::Once,
                by: "broker".into(),
                reason: Some("full".into()),
                latency_ms: 0,
            }),
            FromBroker::Pending(Pending { count: 1 }),
            FromBroker::Request(Listed { request: view.clone() }),
            FromBroker::Added(Added { request: view }),
            FromBroker::Resolved(Resolved {
                id: "i".into(),
                allow: true,
                scope: Scope::Always,
                by: "approvals".into(),
                reason: None,
            }),
            FromBroker::Answered(Answered { id: "i".into() }),
            FromBroker::Pong(Pong { pid: 1, version: "0.1.0".into(), pending: 0 }),
            FromBroker::error(&ProtoError::TooLong, None),
        ];
        for m in from {
            let line = m.encode();
            assert_eq!(FromBroker::parse(line.as_bytes()).unwrap(), m, "{line}");
        }
    }

    #[test]
    fn strict_parsing_names_what_is_wrong() {
        let cases: &[(&str, &str)] = &[
            ("", "bad-json"),
            ("not json", "bad-json"),
            ("{\"v\":1,\"type\":\"ping\"", "bad-json"),
            ("[1,2]", "bad-message"),
            ("\"ping\"", "bad-message"),
            ("{\"type\":\"ping\"}", "bad-message"),
            ("{\"v\":2,\"type\":\"ping\"}", "unsupported-version"),
            ("{\"v\":\"1\",\"type\":\"ping\"}", "unsupported-version"),
            ("{\"v\":1.0,\"type\":\"ping\"}", "unsupported-version"),
            ("{\"v\":1}", "bad-message"),
            ("{\"v\":1,\"type\":7}", "bad-message"),
            ("{\"v\":1,\"type\":\"launch\"}", "bad-message"),
            ("{\"v\":1,\"type\":\"ping\",\"extra\":1}", "bad-message"),
            ("{\"v\":1,\"v\":1,\"type\":\"ping\"}", "bad-message"),
            ("{\"v\":1,\"type\":\"cancel\"}", "bad-message"),
            ("{\"v\":1,\"type\":\"cancel\",\"req\":-1}", "bad-message"),
            ("{\"v\":1,\"type\":\"cancel\",\"req\":1.5}", "bad-message"),
            ("{\"v\":1,\"type\":\"cancel\",\"req\":\"1\"}", "bad-message"),
            ("{\"v\":1,\"type\":\"answer\",\"id\":\"x\",\"allow\":true,\"scope\":\"forever\",\"by\":\"cli\"}", "bad-message"),
            ("{\"v\":1,\"type\":\"answer\",\"id\":\"x\",\"allow\":1,\"scope\":\"once\",\"by\":\"cli\"}", "bad-message"),
            (
                "{\"v\":1,\"type\":\"answer\",\"id\":\"x\",\"allow\":false,\"allow\":true,\"scope\":\"once\",\"by\":\"cli\"}",
                "bad-message",
            ),
        ];
        for (line, code) in cases {
            let e = ToBroker::parse(line.as_bytes()).unwrap_err();
            assert_eq!(e.code(), *code, "{line}: {e}");
        }
        let long = format!("{{\"v\":1,\"type\":\"ping\",\"pad\":\"{}\"}}", "x".repeat(MAX_LINE));
        assert_eq!(ToBroker::parse(long.as_bytes()).unwrap_err(), ProtoError::TooLong);
        // Deep nesting is an error, not a stack overflow.
        let deep = format!("{{\"v\":1,\"type\":\"ping\",\"a\":{}{}}}", "[".repeat(10_000), "]".repeat(10_000));
        assert!(ToBroker::parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn submit_values_are_checked() {
        assert!(submit().validate().is_ok());
        for bad in [
            Submit { category: "admin".into(), ..submit() },
            Submit { kind: "Open Read".into(), ..submit() },
            Submit { kind: String::new(), ..submit() },
            Submit { timeout_ms: 0, ..submit() },
            Submit { timeout_ms: MAX_TIMEOUT_MS + 1, ..submit() },
            Submit { argv: vec![String::new(); MAX_ARGV + 1], ..submit() },
        ] {
            assert_eq!(bad.validate().unwrap_err().code(), "bad-message", "{bad:?}");
        }
        let a = |by: &str| Answer { id: "x".into(), allow: true, scope: Scope::Once, by: by.into() };
        assert!(a("cli").validate().is_ok() && a("approvals").validate().is_ok() && a("web-ui").validate().is_ok());
        for by in ["timeout", "tty", "no-broker", "", "CLI", "a b", &"x".repeat(33)] {
            assert!(a(by).validate().is_err(), "{by}");
        }
    }
}
