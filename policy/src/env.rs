//! Which environment variables reach the sandbox.

/// True for names that look like they hold a credential. These never pass
/// through a glob such as `*` or `NPM_*`; naming one exactly passes it.
pub fn is_secret_like(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    const PREFIXES: &[&str] = &[
        "AWS_",
        "AZURE_",
        "GOOGLE_",
        "GCP_",
        "GCLOUD_",
        "OPENAI_",
        "ANTHROPIC_",
        "SSH_",
        "GPG_",
        "VAULT_",
        "DOCKER_AUTH",
    ];
    const SUFFIXES: &[&str] =
        &["_KEY", "_KEYS", "_PASS", "_AUTH", "_PAT", "_DSN", "_COOKIE", "_SESSION", "_CREDS", "_CREDENTIALS"];
    const WORDS: &[&str] =
        &["SECRET", "TOKEN", "PASSWORD", "PASSWD", "APIKEY", "API_KEY", "PRIVATE", "CREDENTIAL", "BEARER"];
    PREFIXES.iter().any(|p| n.starts_with(p))
        || SUFFIXES.iter().any(|s| n.ends_with(s))
        || WORDS.iter().any(|w| n.contains(w))
}

/// `*` matches any run of characters; everything else matches itself.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let Some((head, rest)) = pattern.split_once('*') else {
        return pattern == name;
    };
    let Some(mut tail) = name.strip_prefix(head) else {
        return false;
    };
    let parts: Vec<&str> = rest.split('*').collect();
    for (i, part) in parts.iter().enumerate() {
        let last = i + 1 == parts.len();
        if last {
            return tail.ends_with(part) && tail.len() >= part.len();
        }
        match tail.find(part) {
            Some(pos) => tail = &tail[pos + part.len()..],
            None => return false,
        }
    }
    true
}

/// Whether `name` passes the `pass` list.
pub fn passes<'a>(name: &str, pass: impl IntoIterator<Item = &'a str>) -> bool {
    let secret = is_secret_like(name);
    pass.into_iter().any(|p| if p.contains('*') { !secret && glob_match(p, name) } else { p == name })
}

/// A valid variable name or pattern: no `=`, no NUL, not empty.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.contains('=') && !name.contains('\0')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets() {
        for s in [
            "OPENAI_API_KEY",
            "GITHUB_TOKEN",
            "AWS_REGION",
            "DB_PASSWORD",
            "MY_SECRET",
            "npm_token",
            "STRIPE_KEY",
            "SSH_AUTH_SOCK",
        ] {
            assert!(is_secret_like(s), "{s}");
        }
        for s in ["PATH", "HOME", "LANG", "LC_ALL", "TERM", "NODE_ENV", "KEYBOARD"] {
            assert!(!is_secret_like(s), "{s}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match("LC_*", "LC_ALL"));
        assert!(glob_match("*", "X"));
        assert!(glob_match("A*B*C", "AxxBxxC"));
        assert!(!glob_match("A*B*C", "AxxBxx"));
        assert!(!glob_match("LC_*", "XLC_ALL"));
        assert!(glob_match("*_X", "A_X"));
        assert!(!glob_match("*_X_X", "_X"));
    }

    #[test]
    fn passing() {
        assert!(passes("LANG", ["LANG"]));
        assert!(passes("LC_ALL", ["LC_*"]));
        assert!(!passes("GITHUB_TOKEN", ["*"]));
        assert!(passes("GITHUB_TOKEN", ["GITHUB_TOKEN"]), "an exact name passes even a secret");
        assert!(!passes("HOME", ["PATH"]));
    }
}
