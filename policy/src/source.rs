//! Finding and parsing profiles: built-in ones embedded in the binary, system
//! ones in `/etc/portcullis/profiles`, user ones in
//! `$XDG_CONFIG_HOME/portcullis/profiles`.
//!
//! A name is looked up in the system directory, then among the built-in
//! profiles, then in the user directory. A user profile can never shadow
//! `strict` or a system profile: the user's config directory may be writable
//! by an earlier sandbox (home writable), and a planted `strict.toml` must
//! not weaken the next run. Security teams override built-ins system-wide.

use std::path::{Path, PathBuf};

use crate::error::{Error, Origin};
use crate::profile::{Lines, Profile};
use crate::schema::ProfileFile;

/// The profiles shipped in `profiles/`, embedded at build time.
pub const BUILTIN: &[(&str, &str)] = &[
    ("strict", include_str!("../../profiles/strict.toml")),
    ("node", include_str!("../../profiles/node.toml")),
    ("python", include_str!("../../profiles/python.toml")),
    ("mcp-filesystem", include_str!("../../profiles/mcp-filesystem.toml")),
    ("mcp-memory", include_str!("../../profiles/mcp-memory.toml")),
    ("mcp-everything", include_str!("../../profiles/mcp-everything.toml")),
    ("mcp-git", include_str!("../../profiles/mcp-git.toml")),
    ("mcp-time", include_str!("../../profiles/mcp-time.toml")),
    ("mcp-fetch", include_str!("../../profiles/mcp-fetch.toml")),
    ("npx", include_str!("../../profiles/npx.toml")),
    ("uvx", include_str!("../../profiles/uvx.toml")),
];

/// Where a profile's text came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ProfileSource {
    Builtin(&'static str),
    File(PathBuf),
}

impl ProfileSource {
    /// How errors and `explain` name this source.
    pub fn label(&self) -> String {
        match self {
            ProfileSource::Builtin(name) => format!("builtin:{name}"),
            ProfileSource::File(p) => p.display().to_string(),
        }
    }
}

const MAX_DEPTH: usize = 16;

/// One place a profile name is looked up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Place {
    Dir(PathBuf),
    Builtin,
}

/// Looks profiles up by name or path and loads them with their `extends` chain.
#[derive(Clone, Debug)]
pub struct Loader {
    /// Searched in order; the first place holding the name wins.
    pub places: Vec<Place>,
}

impl Loader {
    /// The usual search path: the system dir, the built-ins, the user's config dir.
    pub fn from_env() -> Self {
        let mut places = vec![Place::Dir(PathBuf::from("/etc/portcullis/profiles")), Place::Builtin];
        let config = std::env::var_os("XDG_CONFIG_HOME")
            .map(PathBuf::from)
            .filter(|p| p.is_absolute())
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")));
        if let Some(c) = config {
            places.push(Place::Dir(c.join("portcullis/profiles")));
        }
        Loader { places }
    }

    /// Only the built-in profiles (for tests).
    pub fn builtin_only() -> Self {
        Loader { places: vec![Place::Builtin] }
    }

    /// A name is a path when it contains `/` or ends in `.toml`.
    fn is_path(name: &str) -> bool {
        name.contains('/') || name.ends_with(".toml")
    }

    /// Finds a profile by name (or path) and returns its source and text.
    pub fn find(&self, name: &str, relative_to: Option<&Path>) -> Result<(ProfileSource, String), Error> {
        if Self::is_path(name) {
            let path = match relative_to {
                Some(dir) if !Path::new(name).is_absolute() => dir.join(name),
                _ => PathBuf::from(name),
            };
            let text = std::fs::read_to_string(&path)
                .map_err(|source| Error::Read { path: path.display().to_string(), source })?;
            return Ok((ProfileSource::File(path), text));
        }
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(Error::NotFound {
                name: name.to_string(),
                searched: "nowhere: not a valid profile name".into(),
            });
        }
        for place in &self.places {
            match place {
                Place::Builtin => {
                    if let Some((n, text)) = BUILTIN.iter().find(|(n, _)| *n == name) {
                        return Ok((ProfileSource::Builtin(n), (*text).to_string()));
                    }
                }
                Place::Dir(dir) => {
                    let path = dir.join(format!("{name}.toml"));
                    match std::fs::read_to_string(&path) {
                        Ok(text) => return Ok((ProfileSource::File(path), text)),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                        Err(source) => return Err(Error::Read { path: path.display().to_string(), source }),
                    }
                }
            }
        }
        let searched: Vec<String> = self
            .places
            .iter()
            .map(|p| match p {
                Place::Dir(d) => d.display().to_string(),
                Place::Builtin => "built-in profiles".into(),
            })
            .collect();
        Err(Error::NotFound { name: name.to_string(), searched: searched.join(", ") })
    }

    /// Every profile name visible from here: (name, where it comes from).
    pub fn list(&self) -> Vec<(String, ProfileSource)> {
        let mut out: Vec<(String, ProfileSource)> = Vec::new();
        for place in &self.places {
            let dir = match place {
                Place::Dir(d) => d,
                Place::Builtin => {
                    for (n, _) in BUILTIN {
                        if !out.iter().any(|(m, _)| m == n) {
                            out.push(((*n).to_string(), ProfileSource::Builtin(n)));
                        }
                    }
                    continue;
                }
            };
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            let mut found: Vec<_> = entries.flatten().map(|e| e.path()).collect();
            found.sort();
            for p in found {
                if p.extension().is_some_and(|e| e == "toml") {
                    if let Some(stem) = p.file_stem().and_then(|s| s.to_str()) {
                        if !out.iter().any(|(n, _)| n == stem) {
                            out.push((stem.to_string(), ProfileSource::File(p.clone())));
                        }
                    }
                }
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// As [`load`](Self::load), taking `name` from `preloaded` when this
    /// loader would load the same profiles: every profile of its chain is
    /// found among the built-ins (no file earlier in the search path
    /// shadows one). `preloaded` holds, as JSON, what
    /// `Loader::builtin_only().load(name)` gave when the binary was built
    /// (supervisor/build.rs): parsing the profiles' TOML took about 0.2 ms
    /// of each launch, the JSON about a quarter of it.
    pub fn load_preloaded(&self, name: &str, preloaded: &[(&str, &str)]) -> Result<Profile, Error> {
        let found = preloaded.iter().find(|(n, _)| *n == name).and_then(|(_, json)| {
            serde_json::from_str::<Profile>(json).ok().filter(|p| {
                let builtin = |label: &String| {
                    label
                        .strip_prefix("builtin:")
                        .is_some_and(|n| matches!(self.find(n, None), Ok((ProfileSource::Builtin(b), _)) if b == n))
                };
                p.name == name && !p.chain.is_empty() && p.chain.iter().all(builtin)
            })
        });
        match found {
            Some(p) => Ok(p),
            None => self.load(name),
        }
    }

    /// Loads `name` and everything it extends, merged root first.
    pub fn load(&self, name: &str) -> Result<Profile, Error> {
        let mut stack: Vec<(ProfileSource, String, ProfileFile)> = Vec::new();
        let mut next = Some((name.to_string(), None::<PathBuf>, Origin::new("command line (--profile)", 0)));
        while let Some((n, rel, asked_at)) = next.take() {
            let (src, text) = self.find(&n, rel.as_deref()).map_err(|e| match e {
                Error::NotFound { .. } | Error::Read { .. } if asked_at.line > 0 => {
                    Error::invalid(&asked_at, format!("extends: {e}"))
                }
                other => other,
            })?;
            if stack.iter().any(|(s, _, _)| *s == src) {
                let mut chain: Vec<String> = stack.iter().map(|(s, _, _)| s.label()).collect();
                chain.push(src.label());
                return Err(Error::Cycle { at: asked_at, chain: chain.join(" -> ") });
            }
            if stack.len() >= MAX_DEPTH {
                return Err(Error::invalid(&asked_at, format!("extends chain deeper than {MAX_DEPTH}")));
            }
            let label = src.label();
            let file = parse(&label, &text)?;
            if let Some(parent) = &file.extends {
                let at = Lines::new(&label, &text).at(parent.span().start);
                let dir = match &src {
                    ProfileSource::File(p) => p.parent().map(Path::to_path_buf),
                    ProfileSource::Builtin(_) => None,
                };
                // A built-in profile may only extend another built-in profile.
                if matches!(src, ProfileSource::Builtin(_)) && Self::is_path(parent.get_ref()) {
                    return Err(Error::invalid(&at, "a built-in profile can only extend a built-in profile"));
                }
                next = Some((parent.get_ref().clone(), dir, at));
            }
            stack.push((src, text, file));
        }
        let mut profile = Profile { name: name.to_string(), ..Profile::default() };
        for (src, text, file) in stack.iter().rev() {
            let label = src.label();
            profile.layer(file, &Lines::new(&label, text))?;
        }
        Ok(profile)
    }
}

/// Parses one profile text; syntax errors and unknown keys name the line.
pub fn parse(label: &str, text: &str) -> Result<ProfileFile, Error> {
    toml::from_str::<ProfileFile>(text).map_err(|e| {
        let at = match e.span() {
            Some(span) => Lines::new(label, text).at(span.start),
            None => Origin::new(label, 1),
        };
        let message: Vec<&str> = e.message().lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        Error::invalid(&at, message.join("; "))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::Overrides;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    /// A directory of this test's own, removed when dropped (a failing
    /// assertion included), so test runs leave nothing in the temp dir.
    struct TmpDir(PathBuf);

    impl std::ops::Deref for TmpDir {
        type Target = Path;
        fn deref(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TmpDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn tmpdir(tag: &str) -> TmpDir {
        let d = std::env::temp_dir().join(format!("portcullis-policy-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TmpDir(d)
    }

    #[test]
    fn builtins_parse_and_merge() {
        let l = Loader::builtin_only();
        for (name, _) in BUILTIN {
            let p = l.load(name).unwrap();
            assert!(!p.read.is_empty(), "{name}");
        }
        let node = l.load("node").unwrap();
        assert_eq!(node.chain, vec!["builtin:strict", "builtin:node"]);
        assert!(node.commands.iter().any(|c| c.value == "node"));
        assert!(node.read.iter().any(|c| c.value == "/usr"), "inherits strict's reads");
    }

    /// What supervisor/build.rs embeds: each built-in as JSON.
    fn preloaded() -> Vec<(&'static str, String)> {
        let l = Loader::builtin_only();
        BUILTIN.iter().map(|(n, _)| (*n, serde_json::to_string(&l.load(n).unwrap()).unwrap())).collect()
    }

    #[test]
    fn preloaded_builtins_load_as_parsed_unless_shadowed() {
        let json = preloaded();
        let table: Vec<(&str, &str)> = json.iter().map(|(n, j)| (*n, j.as_str())).collect();
        let l = Loader::builtin_only();
        for (name, _) in BUILTIN {
            let parsed = serde_json::to_value(l.load(name).unwrap()).unwrap();
            let pre = serde_json::to_value(l.load_preloaded(name, &table).unwrap()).unwrap();
            assert_eq!(pre, parsed, "{name}");
        }
        // Taken from the table: a marked entry shows it.
        let mut marked = l.load("node").unwrap();
        marked.description = Some("from the table".into());
        let marked = serde_json::to_string(&marked).unwrap();
        let t = [("node", marked.as_str())];
        assert_eq!(l.load_preloaded("node", &t).unwrap().description.as_deref(), Some("from the table"));
        // A system file shadowing any profile of the chain (strict, under
        // node) wins over the table, as it does over the built-in.
        let d = tmpdir("preloaded");
        write(&d, "strict.toml", "description = \"site strict\"\n[filesystem]\nread = [\"/usr\"]\n");
        let site = Loader { places: vec![Place::Dir(d.to_path_buf()), Place::Builtin] };
        let node = site.load_preloaded("node", &t).unwrap();
        assert_eq!(node.chain, vec![d.join("strict.toml").display().to_string(), "builtin:node".to_string()]);
        assert_ne!(node.description.as_deref(), Some("from the table"));
        let strict = site.load_preloaded("strict", &table).unwrap();
        assert_eq!(strict.description.as_deref(), Some("site strict"));
        // A table entry that does not parse, or names another profile, is not used.
        let t = [("strict", "{"), ("node", marked.as_str())];
        assert_eq!(l.load_preloaded("strict", &t).unwrap().chain, vec!["builtin:strict"]);
        let t = [("python", marked.as_str())];
        assert_eq!(l.load_preloaded("python", &t).unwrap().name, "python");
    }

    #[test]
    fn unknown_key_names_line() {
        let e = parse("p.toml", "description = \"x\"\n[filesystem]\nread = []\nwrtie = []\n").unwrap_err();
        let s = e.to_string();
        assert!(s.starts_with("p.toml:4:"), "{s}");
        assert!(s.contains("wrtie"), "{s}");
    }

    #[test]
    fn syntax_error_names_line() {
        let e = parse("p.toml", "[network]\nconnect = [443,\n").unwrap_err();
        assert!(e.to_string().starts_with("p.toml:"), "{e}");
    }

    #[test]
    fn bad_port_and_size_name_line() {
        let d = tmpdir("bad");
        let p = write(&d, "a.toml", "[network]\n\nconnect = [70000]\n");
        let e = Loader::builtin_only().load(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.ends_with("a.toml:3: bad port 70000: must be 1..=65535"), "{e}");
        let p = write(&d, "b.toml", "[limits]\nmax_memory = \"12Q\"\n");
        let e = Loader::builtin_only().load(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("b.toml:2: bad size `12Q`"), "{e}");
        let p = write(&d, "c.toml", "[network]\nconnect = [\"https\"]\n");
        let e = Loader::builtin_only().load(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("c.toml:2:"), "{e}");
    }

    #[test]
    fn extends_cycle_and_missing_parent() {
        let d = tmpdir("cycle");
        write(&d, "a.toml", "extends = \"b.toml\"\n");
        write(&d, "b.toml", "\nextends = \"a.toml\"\n");
        let e = Loader::builtin_only().load(d.join("a.toml").to_str().unwrap()).unwrap_err();
        assert!(matches!(e, Error::Cycle { .. }), "{e}");
        assert!(e.to_string().contains("b.toml:2"), "{e}");
        write(&d, "c.toml", "extends = \"nope\"\n");
        let e = Loader::builtin_only().load(d.join("c.toml").to_str().unwrap()).unwrap_err().to_string();
        assert!(e.contains("c.toml:1: extends: profile `nope` not found"), "{e}");
    }

    #[test]
    fn user_dir_adds_profiles_but_cannot_shadow_builtins() {
        let d = tmpdir("shadow");
        write(&d, "mine.toml", "extends = \"strict\"\n[network]\nconnect = [443]\n");
        let l = Loader { places: vec![Place::Builtin, Place::Dir(d.to_path_buf())] };
        let p = l.load("mine").unwrap();
        assert_eq!(p.connect[0].value, 443);
        assert_eq!(p.connect[0].at.line, 3);
        assert!(l.list().iter().any(|(n, _)| n == "mine"));
        // A planted strict.toml in the user dir is ignored.
        write(&d, "strict.toml", "[network]\nconnect = [1]\n");
        assert!(l.load("strict").unwrap().connect.is_empty());
        assert!(l.list().iter().any(|(n, s)| n == "strict" && *s == ProfileSource::Builtin("strict")));
    }

    #[test]
    fn flags_only_add() {
        let mut p = Loader::builtin_only().load("strict").unwrap();
        let before = p.read.len();
        p.apply(&Overrides {
            read: vec!["/opt".into()],
            connect: vec!["443".into()],
            max_procs: Some(10),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.read.len(), before + 1);
        assert_eq!(p.connect[0].value, 443);
        assert_eq!(p.max_procs.as_ref().unwrap().value, 10);
        let e = p.apply(&Overrides { connect: vec!["0".into()], ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("--connect"), "{e}");
        let e = p.apply(&Overrides { max_memory: Some("lots".into()), ..Default::default() }).unwrap_err();
        assert!(e.to_string().contains("--max-memory"), "{e}");
    }
}
