//! Repository rules that plain review misses.
//!
//! * `unsafe` only under `supervisor/src/sys/` (and the test probe), each
//!   block with a `// SAFETY:` comment.
//! * no `todo!()` / `unimplemented!()` in shipped code.
//! * every shipped profile is embedded in the binary.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::root;

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            if p.file_name().is_some_and(|n| n == "target" || n == ".git") {
                continue;
            }
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

pub fn tidy() -> Result<()> {
    let root = root();
    let mut files = Vec::new();
    for d in ["policy", "supervisor", "xtask", "tests"] {
        rust_files(&root.join(d), &mut files);
    }
    let mut problems = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&root).unwrap_or(f).to_string_lossy().to_string();
        let text = std::fs::read_to_string(f)?;
        let in_sys = rel.starts_with("supervisor/src/sys/");
        let test_code = rel.starts_with("tests/") || rel.starts_with("xtask/");
        let lines: Vec<&str> = text.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            if code.contains("unsafe {") || code.contains("unsafe fn") || code.contains("unsafe impl") {
                if !in_sys && !test_code {
                    problems.push(format!("{rel}:{}: `unsafe` outside supervisor/src/sys/", i + 1));
                }
                if code.contains("unsafe {") && !test_code {
                    let before = lines[..i].iter().rev().take(6).any(|l| l.contains("SAFETY:"));
                    if !before {
                        problems.push(format!("{rel}:{}: unsafe block without a `// SAFETY:` comment", i + 1));
                    }
                }
            }
            if (code.contains("todo!(") || code.contains("unimplemented!(")) && !rel.starts_with("xtask/src/tidy.rs") {
                problems.push(format!("{rel}:{}: todo!/unimplemented! in shipped code", i + 1));
            }
        }
    }
    let source = std::fs::read_to_string(root.join("policy/src/source.rs"))?;
    for e in std::fs::read_dir(root.join("profiles"))?.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        if name.ends_with(".toml") && !source.contains(&format!("profiles/{name}")) {
            problems.push(format!("profiles/{name} is not embedded in policy/src/source.rs BUILTIN"));
        }
    }
    if !problems.is_empty() {
        bail!("tidy:\n  {}", problems.join("\n  "));
    }
    eprintln!("xtask tidy: {} Rust files checked", files.len());
    Ok(())
}
