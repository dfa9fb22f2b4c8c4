//! The sandbox's environment: the pass list, then the profile's `set` values.

use std::ffi::OsString;
use std::os::unix::ffi::OsStrExt;

use policy::plan::EnvPlan;

/// Builds the environment from `caller` (normally `std::env::vars_os()`).
pub fn build(plan: &EnvPlan, caller: impl IntoIterator<Item = (OsString, OsString)>) -> Vec<(OsString, OsString)> {
    let patterns: Vec<&str> = plan.pass.iter().map(|p| p.value.as_str()).collect();
    let mut out: Vec<(OsString, OsString)> = caller
        .into_iter()
        .filter(|(k, _)| match std::str::from_utf8(k.as_bytes()) {
            Ok(name) => !plan.set.contains_key(name) && policy::env::passes(name, patterns.iter().copied()),
            Err(_) => false,
        })
        .collect();
    for (k, v) in &plan.set {
        out.push((k.into(), v.into()));
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::profile::Located;
    use policy::Origin;

    #[test]
    fn secrets_need_exact_names() {
        let at = Origin::new("t", 1);
        let plan = EnvPlan {
            pass: vec![Located::new("*".into(), at.clone()), Located::new("NPM_TOKEN".into(), at)],
            set: [("TMPDIR".to_string(), "/t".to_string())].into(),
        };
        let caller = [("PATH", "/bin"), ("GITHUB_TOKEN", "x"), ("NPM_TOKEN", "y"), ("TMPDIR", "/tmp")]
            .map(|(k, v)| (OsString::from(k), OsString::from(v)));
        let env = build(&plan, caller);
        let names: Vec<_> =
            env.iter().map(|(k, v)| format!("{}={}", k.to_string_lossy(), v.to_string_lossy())).collect();
        assert_eq!(names, vec!["NPM_TOKEN=y", "PATH=/bin", "TMPDIR=/t"]);
    }
}
