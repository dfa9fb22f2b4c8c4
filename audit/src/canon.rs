//! Canonical JSON: the one byte encoding that is hashed, signed and stored.
//!
//! Two encodings of "the same" event must never exist (THREATS.md L9), and no
//! field may be able to reframe the line it sits on (L8). So the encoding is:
//! object keys sorted by their UTF-8 bytes, no whitespace, integers only, and
//! every string escaped down to printable ASCII. The rules are restated,
//! normatively, in docs/AUDIT.md §3.

use serde_json::Value;
use std::fmt::Write as _;

/// Deeper nesting than this is refused: it guards the recursion below against
/// a hostile caller and matches serde_json's own parse limit.
pub const MAX_DEPTH: usize = 64;

#[derive(Debug, thiserror::Error, PartialEq, Eq, Clone)]
#[non_exhaustive]
pub enum CanonError {
    /// Floats have more than one textual form (1.0, 1e0, 1.00): refuse them.
    #[error("floating-point number at {path}: the audit format allows integers only")]
    Float { path: String },
    #[error("nesting deeper than {MAX_DEPTH} levels at {path}")]
    TooDeep { path: String },
}

/// Encodes `value` canonically (docs/AUDIT.md §3).
pub fn encode(value: &Value) -> Result<String, CanonError> {
    let mut out = String::with_capacity(256);
    write_value(&mut out, value, 0, &mut PathTrail::default())?;
    Ok(out)
}

/// Appends the canonical encoding of `value` to `out`.
pub fn encode_into(out: &mut String, value: &Value) -> Result<(), CanonError> {
    write_value(out, value, 0, &mut PathTrail::default())
}

/// Appends the canonical encoding of an object to `out`.
pub fn encode_object_into(out: &mut String, map: &serde_json::Map<String, Value>) -> Result<(), CanonError> {
    write_object(out, map, 0, &mut PathTrail::default())
}

/// Where in the value we are, for error messages only (`.argv[3]`).
/// Borrowed steps: nothing is allocated unless an error is rendered.
#[derive(Default)]
struct PathTrail<'a>(Vec<Step<'a>>);

enum Step<'a> {
    Index(usize),
    Key(&'a str),
}

impl PathTrail<'_> {
    fn render(&self) -> String {
        if self.0.is_empty() {
            return "the top level".to_string();
        }
        self.0
            .iter()
            .map(|s| match s {
                Step::Index(i) => format!("[{i}]"),
                Step::Key(k) => format!(".{k}"),
            })
            .collect()
    }
}

fn write_value<'a>(
    out: &mut String,
    value: &'a Value,
    depth: usize,
    trail: &mut PathTrail<'a>,
) -> Result<(), CanonError> {
    if depth > MAX_DEPTH {
        return Err(CanonError::TooDeep { path: trail.render() });
    }
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(true) => out.push_str("true"),
        Value::Bool(false) => out.push_str("false"),
        Value::Number(n) => {
            if let Some(u) = n.as_u64() {
                let _ = write!(out, "{u}");
            } else if let Some(i) = n.as_i64() {
                let _ = write!(out, "{i}");
            } else {
                return Err(CanonError::Float { path: trail.render() });
            }
        }
        Value::String(s) => write_string(out, s),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                trail.0.push(Step::Index(i));
                write_value(out, item, depth + 1, trail)?;
                trail.0.pop();
            }
            out.push(']');
        }
        Value::Object(map) => write_object(out, map, depth, trail)?,
    }
    Ok(())
}

fn write_object<'a>(
    out: &mut String,
    map: &'a serde_json::Map<String, Value>,
    depth: usize,
    trail: &mut PathTrail<'a>,
) -> Result<(), CanonError> {
    // Sort explicitly: serde_json's map order depends on a cargo feature
    // (preserve_order) that any crate in the build may switch on.
    let mut entries: Vec<(&'a String, &'a Value)> = map.iter().collect();
    entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push('{');
    for (i, (k, v)) in entries.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        write_string(out, k);
        out.push(':');
        trail.0.push(Step::Key(k));
        write_value(out, v, depth + 1, trail)?;
        trail.0.pop();
    }
    out.push('}');
    Ok(())
}

/// Indented JSON for people: same key order and the same printable-ASCII
/// string escaping as the canonical form (so a hostile string cannot drive
/// the terminal), floats printed as serde_json prints them. Not hashed.
pub fn encode_pretty(value: &Value) -> String {
    let mut out = String::new();
    pretty(&mut out, value, 0);
    out
}

fn pretty(out: &mut String, value: &Value, indent: usize) {
    let pad = |out: &mut String, n: usize| out.extend(std::iter::repeat_n(' ', n * 2));
    match value {
        Value::Array(items) if !items.is_empty() => {
            out.push_str("[\n");
            for (i, item) in items.iter().enumerate() {
                pad(out, indent + 1);
                pretty(out, item, indent + 1);
                out.push_str(if i + 1 < items.len() { ",\n" } else { "\n" });
            }
            pad(out, indent);
            out.push(']');
        }
        Value::Object(map) if !map.is_empty() => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push_str("{\n");
            let n = entries.len();
            for (i, (k, v)) in entries.into_iter().enumerate() {
                pad(out, indent + 1);
                write_string(out, k);
                out.push_str(": ");
                pretty(out, v, indent + 1);
                out.push_str(if i + 1 < n { ",\n" } else { "\n" });
            }
            pad(out, indent);
            out.push('}');
        }
        Value::String(s) => write_string(out, s),
        Value::Number(n) => {
            let _ = write!(out, "{n}");
        }
        other => {
            let _ = write!(out, "{other}");
        }
    }
}

/// Writes `s` as a JSON string whose bytes are all printable ASCII.
///
/// Escaping every non-ASCII character keeps U+0085 (NEL), U+2028/2029 and
/// C1 controls out of the file: some line splitters (Python's splitlines,
/// several log shippers) treat them as line breaks, which would let a tool
/// name forge a second record for a naive reader.
pub fn write_string(out: &mut String, s: &str) {
    out.push('"');
    // Fast path: most strings (paths, names) need no escaping at all.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{08}' => out.push_str("\\b"),
            '\u{0c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            ' '..='~' => out.push(c),
            _ => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    let _ = write!(out, "\\u{unit:04x}");
                }
            }
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn keys_sorted_no_whitespace() {
        let v = json!({"b": 1, "a": [true, null, -5], "A": {"z": "x", "y": ""}});
        assert_eq!(encode(&v).unwrap(), r#"{"A":{"y":"","z":"x"},"a":[true,null,-5],"b":1}"#);
    }

    #[test]
    fn keys_sorted_by_utf8_bytes() {
        // U+00E9 (0xC3 0xA9) sorts after 'z' (0x7A) by bytes.
        let v = json!({"\u{e9}": 1, "z": 2, "Z": 3});
        assert_eq!(encode(&v).unwrap(), r#"{"Z":3,"z":2,"\u00e9":1}"#);
    }

    #[test]
    fn strings_become_printable_ascii() {
        let s = "a\"b\\c\u{8}\u{c}\n\r\t\u{0}\u{1b}[31m\u{7f}\u{85}\u{2028}\u{e9}\u{1F600}";
        let enc = encode(&json!(s)).unwrap();
        assert_eq!(enc, r#""a\"b\\c\b\f\n\r\t\u0000\u001b[31m\u007f\u0085\u2028\u00e9\ud83d\ude00""#);
        assert!(enc.bytes().all(|b| (0x20..0x7f).contains(&b)));
        // Round trip: parsing the encoding gives back the same string.
        let back: Value = serde_json::from_str(&enc).unwrap();
        assert_eq!(back, json!(s));
    }

    #[test]
    fn integers_only() {
        assert_eq!(encode(&json!(u64::MAX)).unwrap(), "18446744073709551615");
        assert_eq!(encode(&json!(i64::MIN)).unwrap(), "-9223372036854775808");
        assert_eq!(encode(&json!(0)).unwrap(), "0");
        let err = encode(&json!({"a": {"b": [1, 2.5]}})).unwrap_err();
        assert_eq!(err, CanonError::Float { path: ".a.b[1]".into() });
        // A float that happens to be integral is still a float.
        assert!(encode(&serde_json::from_str::<Value>("1.0").unwrap()).is_err());
        assert!(encode(&serde_json::from_str::<Value>("1e3").unwrap()).is_err());
    }

    #[test]
    fn round_trip_is_identity() {
        let samples = [
            r#"{"a":1}"#,
            r#"{"body":{"argv":["x\ny","\u001b]0;pwned\u0007"]},"k":-1,"z":null}"#,
            r#"[[],{},"",false]"#,
        ];
        for s in samples {
            let v: Value = serde_json::from_str(s).unwrap();
            assert_eq!(encode(&v).unwrap(), s);
        }
    }

    #[test]
    fn non_canonical_inputs_reencode_differently() {
        for s in [r#"{"b":1,"a":2}"#, r#"{"a": 1}"#, r#"{"a":"\u00E9"}"#, r#"{"a":"é"}"#, r#"{"a":1,"a":1}"#] {
            let v: Value = serde_json::from_str(s).unwrap();
            assert_ne!(encode(&v).unwrap(), s, "{s} must not be canonical");
        }
    }

    #[test]
    fn pretty_is_ascii_and_parses_back() {
        let v = json!({"b": [1, {"x": "\u{1b}[31m\u{85}"}], "a": {}, "c": []});
        let p = encode_pretty(&v);
        assert!(p.bytes().all(|b| b == b'\n' || (0x20..0x7f).contains(&b)));
        assert_eq!(serde_json::from_str::<Value>(&p).unwrap(), v);
        assert!(p.starts_with("{\n  \"a\": {},\n"));
    }

    #[test]
    fn depth_limit() {
        let mut v = json!(1);
        for _ in 0..(MAX_DEPTH + 2) {
            v = json!([v]);
        }
        assert!(matches!(encode(&v), Err(CanonError::TooDeep { .. })));
    }
}
