//! Bad profiles never panic and never fail without saying where: every
//! shipped profile, cut short and mutated in many ways, either loads and
//! compiles, or is refused with an error that starts with its file and line.
//!
//! The mutations are deterministic (a fixed-seed xorshift), so a failure
//! names a mutant that the next run makes again.

use std::path::Path;

use policy::{compile, Loader, Vars};

/// Bytes and words that break TOML, types, paths and variables.
const JUNK: &[&str] = &[
    "[",
    "]",
    "{",
    "}",
    "=",
    "\"",
    "'",
    "\n",
    ",",
    ".",
    "#",
    "?",
    "~",
    "/",
    "\\",
    "-1",
    "0",
    "99999999999999999999",
    "1e309",
    "true",
    "é",
    "\u{202e}",
    "\u{0}",
    "{nosuch}",
    "{workspace}",
    "~/",
    "?/",
    "[[expect]]",
    "[limits]",
    "max_procs = -5",
    "extends = \"nosuch\"",
    "extends = \"./mutant.toml\"",
    "connect = [\"1.2.3.4:99999\"]",
    "\"\"\"",
    "inf",
    "nan",
];

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn boundary(text: &str, mut at: usize) -> usize {
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

/// Cuts, dropped and doubled lines, and junk put in or written over.
fn mutants(text: &str, rng: &mut Rng) -> Vec<String> {
    let mut out = Vec::new();
    for at in (0..text.len()).step_by(11) {
        out.push(text[..boundary(text, at)].to_string());
    }
    let lines: Vec<&str> = text.lines().collect();
    for i in 0..lines.len() {
        let mut dropped = lines.clone();
        dropped.remove(i);
        out.push(dropped.join("\n"));
        let mut doubled = lines.clone();
        doubled.insert(i, lines[i]);
        out.push(doubled.join("\n"));
    }
    for _ in 0..400 {
        let junk = JUNK[rng.below(JUNK.len())];
        let at = boundary(text, rng.below(text.len() + 1));
        let over = boundary(text, (at + rng.below(4)).min(text.len())).max(at);
        let mut m = String::with_capacity(text.len() + junk.len());
        m.push_str(&text[..at]);
        m.push_str(junk);
        // Half the time the junk replaces what was there.
        m.push_str(&text[if rng.below(2) == 0 { at } else { over }..]);
        out.push(m);
    }
    out
}

fn shipped() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles");
    let mut v: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .map(|p| (p.display().to_string(), std::fs::read_to_string(&p).unwrap()))
        .collect();
    v.sort();
    assert!(v.len() >= 3, "no shipped profiles in {}", dir.display());
    v
}

#[test]
fn mutated_profiles_never_panic_and_every_error_names_its_place() {
    let dir = std::env::temp_dir().join(format!("portcullis-garbage-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mutant.toml");
    let name = path.display().to_string();
    let vars = Vars { workspace: "/tmp".into(), home: "/root".into(), tmp: "/tmp".into() };
    let loader = Loader::builtin_only();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut tried, mut refused) = (0, 0);
    let mut bad = Vec::new();
    for (source, text) in shipped() {
        for m in mutants(&text, &mut rng) {
            std::fs::write(&path, &m).unwrap();
            tried += 1;
            let outcome = std::panic::catch_unwind(|| {
                let profile = loader.load(&name)?;
                compile(&profile, &vars).map(|_| ())
            });
            match outcome {
                Err(_) => bad.push(format!("{source}: panicked on:\n{m}")),
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    refused += 1;
                    let msg = e.to_string();
                    // `file:line: ...` of the mutant (its own line, or the
                    // line of its `extends` when the parent is the problem).
                    let place = msg.strip_prefix(&name).and_then(|r| r.strip_prefix(':'));
                    let line = place.and_then(|r| r.split(':').next()).and_then(|n| n.parse::<usize>().ok());
                    if line.is_none_or(|n| n == 0 || n > m.lines().count().max(1)) {
                        bad.push(format!("{source}: error without its place: {msg}\nmutant:\n{m}"));
                    }
                }
            }
            if bad.len() >= 5 {
                break;
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    eprintln!("{tried} mutants of the shipped profiles: {refused} refused, each naming its file and line");
    assert!(bad.is_empty(), "{} of {tried} mutants:\n\n{}", bad.len(), bad.join("\n\n----\n\n"));
    // Not a test that cannot fail: most mutants must actually be refused.
    assert!(refused * 2 > tried, "only {refused} of {tried} mutants were refused");
}
