//! Just enough JSON-RPC 2.0: what kind of message a line is, and the error
//! responses the gate sends in the server's place.

use serde::Deserialize;
use serde_json::{json, Value};

/// Error codes the gate answers with (the JSON-RPC server-error range).
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    /// The profile denies the tool.
    pub const DENIED: i64 = -32001;
    /// The tool needs approval and none was given (no broker, or the answer was no).
    pub const NEEDS_APPROVAL: i64 = -32002;
    /// Over the tool's rate limit; `data.retry_after_ms` says when to retry.
    pub const RATE_LIMITED: i64 = -32003;
    /// The tool's circuit breaker is open; `data.retry_after_ms` says when it probes again.
    pub const CIRCUIT_OPEN: i64 = -32004;
    /// The audit log cannot be written: no call goes through unrecorded.
    pub const AUDIT_UNAVAILABLE: i64 = -32005;
    /// The message is larger than the profile's `mcp.max_message`.
    pub const TOO_LARGE: i64 = -32006;
}

/// The fields of a message the gate routes on; the rest is skipped, not parsed.
#[derive(Debug, Default, Deserialize)]
pub struct Peek {
    #[serde(default)]
    pub id: Option<Value>,
    #[serde(default)]
    pub method: Option<String>,
    /// A non-null `result` or `error` (skipped, not parsed) makes a message
    /// a response to a client, whatever else it carries.
    #[serde(default)]
    pub result: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub error: Option<serde::de::IgnoredAny>,
}

impl Peek {
    /// A request or notification: a method, and no result or error.
    pub fn is_request(&self) -> bool {
        self.method.is_some() && self.result.is_none() && self.error.is_none()
    }
}

/// What one line holds.
#[derive(Debug)]
pub enum Shape {
    Object(Peek),
    /// A JSON-RPC batch (MCP 2025-03-26): each element is routed on its own.
    Batch(Vec<Value>),
    Malformed(String),
}

pub fn shape(line: &[u8]) -> Shape {
    // JSON allows a CR as whitespace, and no serializer writes one; but a
    // reader with universal newlines (Python's stdio, the MCP Python SDK's
    // server) ends a line there. Let through, one message to us would be
    // two to the server: a `ping` whose params hide a `tools/call` the gate
    // never saw. (The frame's own CRLF ending is already gone.)
    if line.contains(&b'\r') {
        return Shape::Malformed("a carriage return inside a message".into());
    }
    let first = line.iter().find(|b| !b.is_ascii_whitespace());
    match first {
        Some(b'{') => match serde_json::from_slice::<Peek>(line) {
            Ok(p) => Shape::Object(p),
            Err(e) => Shape::Malformed(e.to_string()),
        },
        Some(b'[') => match serde_json::from_slice::<Vec<Value>>(line) {
            Ok(v) if !v.is_empty() => Shape::Batch(v),
            Ok(_) => Shape::Malformed("empty batch".into()),
            Err(e) => Shape::Malformed(e.to_string()),
        },
        _ => Shape::Malformed("not a JSON object or array".into()),
    }
}

/// The key under which a request id is remembered: its JSON text, so 1 and
/// "1" differ, except that a number is keyed by its value as a double, as
/// JavaScript clients compare ids (and Python ones, below 2^53): an answer
/// with id 7.0 or 7e0 is the answer to request 7. Above 2^53 two integers
/// may share a key: a client that picks such ids may see a second request
/// refused as a reuse; every answer that reaches it is still checked.
pub fn id_key(id: &Value) -> String {
    match id.as_f64() {
        // -0 too: it equals 0.
        Some(0.0) => "0".to_string(),
        Some(f) => format!("{f}"),
        None => id.to_string(),
    }
}

/// `{"jsonrpc":"2.0","id":ID,"error":{...}}` as one line (without the newline).
pub fn error_response(id: Option<&Value>, code: i64, message: &str, data: Option<Value>) -> Vec<u8> {
    let mut error = json!({ "code": code, "message": message });
    if let Some(d) = data {
        error["data"] = d;
    }
    let v = json!({ "jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error });
    serde_json::to_vec(&v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_ids_are_keyed_by_value_and_strings_stay_apart() {
        let seven = id_key(&json!(7));
        for same in [json!(7.0), serde_json::from_str::<Value>("7e0").unwrap(), json!(7u64)] {
            assert_eq!(id_key(&same), seven, "{same}");
        }
        assert_ne!(id_key(&json!("7")), seven);
        assert_eq!(id_key(&json!(-0.0)), id_key(&json!(0)));
        assert_ne!(id_key(&json!(7.5)), seven);
        // Past 2^53 a client holds the nearest double, and so does the key.
        let big = serde_json::from_str::<Value>("9007199254740993").unwrap();
        assert_eq!(id_key(&big), id_key(&json!(9007199254740992u64)));
    }

    #[test]
    fn shapes() {
        match shape(br#"{"jsonrpc":"2.0","id":3,"method":"tools/call","params":{"name":"x"}}"#) {
            Shape::Object(p) => {
                assert_eq!(p.id, Some(json!(3)));
                assert_eq!(p.method.as_deref(), Some("tools/call"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(shape(br#"[{"id":1}]"#), Shape::Batch(v) if v.len() == 1));
        assert!(matches!(shape(b"[]"), Shape::Malformed(_)));
        assert!(matches!(shape(b"{\"id\":"), Shape::Malformed(_)));
        assert!(matches!(shape(b"42"), Shape::Malformed(_)));
        // An array is never read positionally as an object.
        assert!(matches!(shape(br#"["tools/call"]"#), Shape::Batch(_)));
    }

    #[test]
    fn error_lines() {
        let e = error_response(Some(&json!("a")), code::DENIED, "no", Some(json!({"tool": "t"})));
        let v: Value = serde_json::from_slice(&e).unwrap();
        assert_eq!(v, json!({"jsonrpc":"2.0","id":"a","error":{"code":-32001,"message":"no","data":{"tool":"t"}}}));
        let e: Value = serde_json::from_slice(&error_response(None, code::PARSE_ERROR, "bad", None)).unwrap();
        assert_eq!(e["id"], Value::Null);
        assert_eq!(id_key(&json!(1)), "1");
        assert_ne!(id_key(&json!(1)), id_key(&json!("1")));
    }
}
