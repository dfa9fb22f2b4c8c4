//! MCP stdio framing: one JSON-RPC message per line, each at most `max`
//! bytes. A longer line is never buffered whole: the first bytes are kept
//! (to find its id) and the rest is skipped up to the next newline, so
//! memory is bounded by the limit, not by what the peer sends.

use std::io::{self, BufRead, Read};

/// How much of an oversized message is kept to find its `id`.
const PREFIX: usize = 4096;

/// One read from the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A message, without its line end.
    Line,
    /// A line longer than the limit: its length and first bytes (in the line buffer).
    TooLarge {
        len: u64,
    },
    Eof,
}

/// Reads newline-delimited messages of at most `max` bytes.
pub struct LineReader<R> {
    inner: R,
    max: u64,
    /// The last message (or the prefix of an oversized one).
    pub line: Vec<u8>,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max: u64) -> Self {
        LineReader { inner, max, line: Vec::new() }
    }

    /// The next non-empty line into `self.line`.
    pub fn next_frame(&mut self) -> io::Result<Frame> {
        loop {
            self.line.clear();
            // A message that used a lot of memory does not keep it.
            if self.line.capacity() > 1 << 20 {
                self.line.shrink_to(1 << 20);
            }
            let n = (&mut self.inner).take(self.max + 1).read_until(b'\n', &mut self.line)?;
            if n == 0 {
                return Ok(Frame::Eof);
            }
            let complete = self.line.last() == Some(&b'\n');
            if complete {
                self.line.pop();
            }
            if !complete && self.line.len() as u64 > self.max {
                let skipped = skip_line(&mut self.inner)?;
                let len = self.line.len() as u64 + skipped;
                self.line.truncate(PREFIX);
                return Ok(Frame::TooLarge { len });
            }
            if self.line.last() == Some(&b'\r') {
                self.line.pop();
            }
            if self.line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            return Ok(Frame::Line);
        }
    }
}

/// Discards input up to and including the next newline; returns how many bytes.
fn skip_line<R: BufRead>(r: &mut R) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        let buf = match r.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            return Ok(total);
        }
        match buf.iter().position(|b| *b == b'\n') {
            Some(i) => {
                r.consume(i + 1);
                return Ok(total + i as u64);
            }
            None => {
                let n = buf.len();
                r.consume(n);
                total += n as u64;
            }
        }
    }
}

/// Finds the top-level `"id"` of a JSON object from its first bytes, for
/// answering a message too large (or too broken) to parse. Returns the id's
/// JSON text when it is a number or a string that appears before the prefix ends.
pub fn scan_id(prefix: &[u8]) -> Option<serde_json::Value> {
    let mut i = skip_ws(prefix, 0);
    if prefix.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    loop {
        i = skip_ws(prefix, i);
        if prefix.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = string_end(prefix, i)?;
        let key = &prefix[i + 1..key_end - 1];
        i = skip_ws(prefix, key_end);
        if prefix.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(prefix, i + 1);
        let value_end = value_end(prefix, i)?;
        if key == b"id" {
            return serde_json::from_slice(&prefix[i..value_end])
                .ok()
                .filter(|v: &serde_json::Value| v.is_number() || v.is_string());
        }
        i = skip_ws(prefix, value_end);
        match prefix.get(i) {
            Some(b',') => i += 1,
            _ => return None,
        }
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// `b[i]` is `"`: the index after the closing quote.
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    i += 1;
    while i < b.len() {
        match b[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index after the value starting at `b[i]`.
fn value_end(b: &[u8], i: usize) -> Option<usize> {
    match b.get(i)? {
        b'"' => string_end(b, i),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut j = i;
            while j < b.len() {
                match b[j] {
                    b'"' => {
                        j = string_end(b, j)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(j + 1);
                        }
                    }
                    _ => {}
                }
                j += 1;
            }
            None
        }
        _ => {
            let mut j = i;
            while j < b.len() && !matches!(b[j], b',' | b'}' | b']') && !b[j].is_ascii_whitespace() {
                j += 1;
            }
            (j < b.len()).then_some(j)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn frames(input: &[u8], max: u64) -> Vec<(Frame, Vec<u8>)> {
        let mut r = LineReader::new(std::io::BufReader::with_capacity(7, input), max);
        let mut out = Vec::new();
        loop {
            let f = r.next_frame().unwrap();
            if f == Frame::Eof {
                return out;
            }
            out.push((f, r.line.clone()));
        }
    }

    #[test]
    fn lines_blank_lines_crlf_and_a_last_line_without_newline() {
        let f = frames(b"{\"a\":1}\n\n  \r\n{\"b\":2}\r\n{\"c\":3}", 100);
        let lines: Vec<&[u8]> = f.iter().map(|(_, l)| l.as_slice()).collect();
        assert_eq!(lines, vec![&b"{\"a\":1}"[..], b"{\"b\":2}", b"{\"c\":3}"]);
    }

    #[test]
    fn an_oversized_line_is_skipped_with_its_length_and_the_next_one_is_read() {
        let mut input = b"{\"id\":7,\"x\":\"".to_vec();
        input.extend(std::iter::repeat_n(b'a', 10_000));
        input.extend_from_slice(b"\"}\n{\"ok\":1}\n");
        let f = frames(&input, 100);
        assert_eq!(f[0].0, Frame::TooLarge { len: 10_015 });
        assert!(f[0].1.len() <= PREFIX);
        assert_eq!(scan_id(&f[0].1), Some(json!(7)));
        assert_eq!(f[1], (Frame::Line, b"{\"ok\":1}".to_vec()));
        // Exactly the limit is fine.
        let f = frames(b"0123456789\n", 10);
        assert_eq!(f[0].0, Frame::Line);
        let f = frames(b"0123456789A\n", 10);
        assert_eq!(f[0].0, Frame::TooLarge { len: 11 });
    }

    #[test]
    fn id_scan() {
        assert_eq!(scan_id(br#"{"jsonrpc":"2.0","id":"a\"b","method":"x","params":{"#), Some(json!("a\"b")));
        assert_eq!(scan_id(br#" { "params" : {"id": 1, "x": [1,{"y":"}"}]}, "id" : 42 , "#), Some(json!(42)));
        assert_eq!(scan_id(br#"{"params":{"id":1"#), None, "a nested id does not count");
        assert_eq!(scan_id(br#"{"id":null,"#), None);
        assert_eq!(scan_id(b"[1,2]"), None);
        assert_eq!(scan_id(b"garbage"), None);
        assert_eq!(scan_id(br#"{"id":12"#), None, "a number cut by the prefix end is not trusted");
    }
}
