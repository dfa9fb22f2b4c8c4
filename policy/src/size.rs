//! Sizes such as `512M` or `2G` (binary units, as `ulimit` and cgroups use).

/// Parses `N`, `NK`, `NM`, `NG` or `NT` (case-insensitive, optional `B`/`iB`)
/// into bytes.
pub fn parse(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let lower = t.to_ascii_lowercase();
    let body = lower.strip_suffix("ib").or_else(|| lower.strip_suffix('b')).unwrap_or(&lower);
    let (digits, shift) = match body.chars().last() {
        Some('k') => (&body[..body.len() - 1], 10),
        Some('m') => (&body[..body.len() - 1], 20),
        Some('g') => (&body[..body.len() - 1], 30),
        Some('t') => (&body[..body.len() - 1], 40),
        _ => (body, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("bad size `{text}`: expected a number with an optional K, M, G or T suffix, e.g. 512M"))?;
    if n == 0 {
        return Err(format!("bad size `{text}`: must be greater than zero"));
    }
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("bad size `{text}`: too large"))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn units() {
        assert_eq!(parse("512M"), Ok(512 << 20));
        assert_eq!(parse("2g"), Ok(2 << 30));
        assert_eq!(parse("64KiB"), Ok(64 << 10));
        assert_eq!(parse("4096"), Ok(4096));
        assert!(parse("12Q").is_err());
        assert!(parse("").is_err());
        assert!(parse("0").is_err());
        assert!(parse("-1M").is_err());
        assert!(parse("99999999999T").is_err());
    }
}
