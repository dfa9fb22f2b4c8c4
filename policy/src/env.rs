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
    // Connection strings and proxy URLs carry `user:password@` (`DATABASE_URL`,
    // `REDIS_URL`, `MONGODB_URI`, `HTTPS_PROXY`), webhook URLs are the secret.
    const SUFFIXES: &[&str] = &[
        "_KEY",
        "_KEYS",
        "_PASS",
        "_PWD",
        "_AUTH",
        "_PAT",
        "_JWT",
        "_DSN",
        "_COOKIE",
        "_SESSION",
        "_CREDS",
        "_CREDENTIALS",
        "DATABASE_URL",
        "REDIS_URL",
        "_URI",
        "_PROXY",
        "CONNECTION_STRING",
    ];
    const WORDS: &[&str] = &[
        "SECRET",
        "TOKEN",
        "PASSWORD",
        "PASSWD",
        "PASSPHRASE",
        "APIKEY",
        "API_KEY",
        "PRIVATE",
        "CREDENTIAL",
        "BEARER",
        "WEBHOOK",
    ];
    PREFIXES.iter().any(|p| n.starts_with(p))
        || SUFFIXES.iter().any(|s| n.ends_with(s))
        || WORDS.iter().any(|w| n.contains(w))
}

/// True for names that change what a loader or an interpreter runs before
/// the program's own code (`LD_PRELOAD`, `BASH_ENV`, `NODE_OPTIONS`,
/// `PYTHONSTARTUP`, `GLIBC_TUNABLES`...). Like secrets, these never pass
/// through a glob; naming one exactly passes it.
pub fn is_loader_like(name: &str) -> bool {
    let n = name.to_ascii_uppercase();
    const PREFIXES: &[&str] = &["LD_", "GLIBC_", "MALLOC_", "DYLD_", "GIT_CONFIG", "NODE_OPTIONS", "PERL5", "RUBY"];
    const NAMES: &[&str] = &[
        "BASH_ENV",
        "ENV",
        "PROMPT_COMMAND",
        "SHELLOPTS",
        "BASHOPTS",
        "PS4",
        "IFS",
        "CDPATH",
        "GCONV_PATH",
        "LOCPATH",
        "NLSPATH",
        "HOSTALIASES",
        "RESOLV_HOST_CONF",
        "PYTHONSTARTUP",
        "PYTHONPATH",
        "PYTHONHOME",
        "PYTHONINSPECT",
        "PYTHONWARNINGS",
        "PYTHONBREAKPOINT",
        "NODE_PATH",
        "NODE_REPL_EXTERNAL_MODULE",
        "JAVA_TOOL_OPTIONS",
        "_JAVA_OPTIONS",
        "JDK_JAVA_OPTIONS",
        "GIT_SSH",
        "GIT_SSH_COMMAND",
        "GIT_EXEC_PATH",
        "GIT_ASKPASS",
        "SSH_ASKPASS",
        "EDITOR",
        "VISUAL",
        "PAGER",
    ];
    PREFIXES.iter().any(|p| n.starts_with(p)) || NAMES.contains(&n.as_str())
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
    let named_only = is_secret_like(name) || is_loader_like(name);
    pass.into_iter().any(|p| if p.contains('*') { !named_only && glob_match(p, name) } else { p == name })
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

    /// With `--env '*'`, credentials in connection strings and proxy URLs,
    /// and what loaders and interpreters run first, stay out unless named.
    #[test]
    fn a_glob_passes_no_connection_string_and_no_loader_variable() {
        for n in [
            "DATABASE_URL",
            "PG_DATABASE_URL",
            "MYSQL_PWD",
            "REDIS_URL",
            "MONGODB_URI",
            "HTTPS_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "SLACK_WEBHOOK_URL",
            "CI_JOB_JWT",
            "SIGNING_PASSPHRASE",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "LD_AUDIT",
            "GLIBC_TUNABLES",
            "BASH_ENV",
            "ENV",
            "NODE_OPTIONS",
            "PYTHONSTARTUP",
            "PYTHONPATH",
            "PERL5OPT",
            "RUBYOPT",
            "JAVA_TOOL_OPTIONS",
            "GIT_SSH_COMMAND",
            "GIT_CONFIG_COUNT",
        ] {
            assert!(!passes(n, ["*"]), "{n} passed a glob");
            assert!(passes(n, [n]), "{n} named exactly passes");
        }
        for n in ["PATH", "HOME", "LANG", "NODE_ENV", "PYTHONUNBUFFERED", "LC_ALL", "TZ", "XDG_RUNTIME_DIR"] {
            assert!(passes(n, ["*"]), "{n}");
        }
    }
}
