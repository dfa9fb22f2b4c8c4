//! A profile after its `extends` chain is merged: every value knows where it
//! came from. Lists add up along the chain; scalars from the child win.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use toml::Spanned;

use crate::error::{Error, Origin};
use crate::schema::ProfileFile;
use crate::size;

/// A value and the place (file:line or flag) that gave it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Located<T> {
    pub value: T,
    pub at: Origin,
}

impl<T> Located<T> {
    pub fn new(value: T, at: Origin) -> Self {
        Located { value, at }
    }
}

/// A merged profile, not yet expanded or checked against the machine.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Profile {
    /// Name the user asked for (`strict`, `./mine.toml`).
    pub name: String,
    /// Sources from the root of the `extends` chain down to this profile.
    pub chain: Vec<String>,
    pub description: Option<String>,
    pub best_effort: bool,
    pub read: Vec<Located<String>>,
    pub write: Vec<Located<String>>,
    pub exec: Vec<Located<String>>,
    pub chmod: bool,
    pub connect: Vec<Located<u16>>,
    pub bind: Vec<Located<u16>>,
    pub udp: bool,
    pub abstract_unix: bool,
    pub signals: bool,
    pub unix: bool,
    pub commands: Vec<Located<String>>,
    pub deny_syscalls: Vec<Located<String>>,
    pub env_pass: Vec<Located<String>>,
    pub env_set: BTreeMap<String, Located<String>>,
    pub max_procs: Option<Located<u64>>,
    pub max_memory: Option<Located<u64>>,
    pub max_open_files: Option<Located<u64>>,
    /// The `[[expect]]` entries of the named profile itself (not inherited:
    /// a child profile may grant what its parent denies).
    pub expect: Vec<Located<Expect>>,
    /// The `[mcp]` section, merged along the chain.
    pub mcp: crate::mcp::McpProfile,
    /// `[ask]` and `[deny]`, merged along the chain.
    pub gate: crate::ask::AskProfile,
}

/// A checked `[[expect]]` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expect {
    pub op: ExpectOp,
    /// A path (variables not yet expanded) or a port number as text.
    pub target: String,
    pub allow: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExpectOp {
    Read,
    Write,
    Exec,
    Connect,
    Bind,
}

impl ExpectOp {
    pub fn name(self) -> &'static str {
        match self {
            ExpectOp::Read => "read",
            ExpectOp::Write => "write",
            ExpectOp::Exec => "exec",
            ExpectOp::Connect => "connect",
            ExpectOp::Bind => "bind",
        }
    }
}

fn expect(lines: &Lines, v: &Spanned<crate::schema::ExpectEntry>) -> Result<Located<Expect>, Error> {
    let at = lines.at(v.span().start);
    let e = v.get_ref();
    let op = match e.op.as_str() {
        "read" => ExpectOp::Read,
        "write" => ExpectOp::Write,
        "exec" => ExpectOp::Exec,
        "connect" => ExpectOp::Connect,
        "bind" => ExpectOp::Bind,
        other => {
            return Err(Error::invalid(&at, format!("expect: unknown op `{other}` (read, write, exec, connect, bind)")))
        }
    };
    let allow = match e.verdict.as_str() {
        "allow" => true,
        "deny" => false,
        other => return Err(Error::invalid(&at, format!("expect: unknown verdict `{other}` (allow or deny)"))),
    };
    let target = match (&e.target, op) {
        (toml::Value::Integer(p), ExpectOp::Connect | ExpectOp::Bind) if (1..=65535).contains(p) => p.to_string(),
        (toml::Value::String(s), ExpectOp::Read | ExpectOp::Write | ExpectOp::Exec) if !s.is_empty() => s.clone(),
        (t, ExpectOp::Connect | ExpectOp::Bind) => {
            return Err(Error::invalid(&at, format!("expect: {} needs a port 1..=65535, not {t}", op.name())))
        }
        (t, _) => return Err(Error::invalid(&at, format!("expect: {} needs a path, not {t}", op.name()))),
    };
    Ok(Located::new(Expect { op, target, allow }, at))
}

/// Maps byte offsets in one source text to 1-based lines.
pub(crate) struct Lines<'a> {
    source: &'a str,
    /// Byte offset where each line starts (the first is 0).
    starts: Vec<usize>,
    /// Where the last line with text ends: an error at the end of the file
    /// belongs to it, not to the empty line after it.
    end: usize,
}

impl<'a> Lines<'a> {
    pub(crate) fn new(source: &'a str, text: &str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        Lines { source, starts, end: text.trim_end_matches('\n').len() }
    }

    /// The 1-based line holding byte `offset` (one binary search, so that
    /// locating every value of a profile stays linear in its size).
    pub(crate) fn at(&self, offset: usize) -> Origin {
        let offset = offset.min(self.end);
        Origin::new(self.source, self.starts.partition_point(|&s| s <= offset))
    }

    fn locate<T: Clone>(&self, v: &Spanned<T>) -> Located<T> {
        Located::new(v.get_ref().clone(), self.at(v.span().start))
    }
}

fn port(lines: &Lines, v: &Spanned<i64>) -> Result<Located<u16>, Error> {
    let at = lines.at(v.span().start);
    match u16::try_from(*v.get_ref()) {
        Ok(p) if p != 0 => Ok(Located::new(p, at)),
        _ => Err(Error::invalid(&at, format!("bad port {}: must be 1..=65535", v.get_ref()))),
    }
}

fn count(lines: &Lines, v: &Spanned<i64>, what: &str) -> Result<Located<u64>, Error> {
    let at = lines.at(v.span().start);
    match u64::try_from(*v.get_ref()) {
        Ok(n) if n > 0 => Ok(Located::new(n, at)),
        _ => Err(Error::invalid(&at, format!("bad {what} {}: must be a positive number", v.get_ref()))),
    }
}

impl Profile {
    /// Adds one parsed file on top of what is merged so far (`self` is the parent).
    pub(crate) fn layer(&mut self, file: &ProfileFile, lines: &Lines) -> Result<(), Error> {
        self.chain.push(lines.source.to_string());
        self.expect = file.expect.iter().map(|e| expect(lines, e)).collect::<Result<_, _>>()?;
        if file.description.is_some() {
            self.description.clone_from(&file.description);
        }
        if let Some(b) = file.best_effort {
            self.best_effort = b;
        }
        let fs = &file.filesystem;
        self.read.extend(fs.read.iter().map(|v| lines.locate(v)));
        self.write.extend(fs.write.iter().map(|v| lines.locate(v)));
        self.exec.extend(fs.exec.iter().map(|v| lines.locate(v)));
        if let Some(c) = fs.chmod {
            self.chmod = c;
        }
        for p in &file.network.connect {
            self.connect.push(port(lines, p)?);
        }
        for p in &file.network.bind {
            self.bind.push(port(lines, p)?);
        }
        if let Some(u) = file.network.udp {
            self.udp = u;
        }
        if let Some(b) = file.ipc.abstract_unix {
            self.abstract_unix = b;
        }
        if let Some(b) = file.ipc.signals {
            self.signals = b;
        }
        if let Some(b) = file.ipc.unix {
            self.unix = b;
        }
        self.commands.extend(file.commands.allow.iter().map(|v| lines.locate(v)));
        self.deny_syscalls.extend(file.syscalls.deny.iter().map(|v| lines.locate(v)));
        self.env_pass.extend(file.env.pass.iter().map(|v| lines.locate(v)));
        for (k, v) in &file.env.set {
            self.env_set.insert(k.clone(), lines.locate(v));
        }
        let limits = &file.limits;
        if let Some(v) = &limits.max_procs {
            self.max_procs = Some(count(lines, v, "max_procs")?);
        }
        if let Some(v) = &limits.max_open_files {
            self.max_open_files = Some(count(lines, v, "max_open_files")?);
        }
        if let Some(v) = &limits.max_memory {
            let at = lines.at(v.span().start);
            let bytes = size::parse(v.get_ref()).map_err(|m| Error::invalid(&at, m))?;
            self.max_memory = Some(Located::new(bytes, at));
        }
        self.mcp.layer(&file.mcp, lines)?;
        self.gate.layer(&file.ask, &file.deny, lines)?;
        Ok(())
    }

    /// Applies command-line flags. Flags only add to the profile.
    pub fn apply(&mut self, o: &Overrides) -> Result<(), Error> {
        let flag = |name: &str, v: &[String]| -> Vec<Located<String>> {
            v.iter().map(|s| Located::new(s.clone(), Origin::flag(name))).collect()
        };
        self.read.extend(flag("--read", &o.read));
        self.write.extend(flag("--write", &o.write));
        // `--exec PATH` both allows running PATH and, for a directory, what is beneath it.
        self.commands.extend(flag("--exec", &o.exec));
        self.env_pass.extend(flag("--env", &o.env));
        for (list, ports, name) in [(&mut self.connect, &o.connect, "--connect"), (&mut self.bind, &o.bind, "--bind")] {
            for p in ports {
                let at = Origin::flag(name);
                match p.trim().parse::<u16>() {
                    Ok(n) if n != 0 => list.push(Located::new(n, at)),
                    _ => return Err(Error::invalid(&at, format!("bad port `{p}`: must be 1..=65535"))),
                }
            }
        }
        if let Some(n) = o.max_procs {
            let at = Origin::flag("--max-procs");
            if n == 0 {
                return Err(Error::invalid(&at, "bad max-procs 0: must be a positive number"));
            }
            // Flags only tighten or add: a smaller limit wins over the profile's.
            if self.max_procs.as_ref().is_none_or(|p| n < p.value) {
                self.max_procs = Some(Located::new(n, at));
            }
        }
        if let Some(m) = &o.max_memory {
            let at = Origin::flag("--max-memory");
            let bytes = size::parse(m).map_err(|e| Error::invalid(&at, e))?;
            if self.max_memory.as_ref().is_none_or(|p| bytes < p.value) {
                self.max_memory = Some(Located::new(bytes, at));
            }
        }
        if o.best_effort {
            self.best_effort = true;
        }
        self.gate.apply(&o.ask)?;
        Ok(())
    }
}

/// What `portcullis run` flags add to a profile.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub read: Vec<String>,
    pub write: Vec<String>,
    pub exec: Vec<String>,
    pub connect: Vec<String>,
    pub bind: Vec<String>,
    pub env: Vec<String>,
    pub max_procs: Option<u64>,
    pub max_memory: Option<String>,
    pub best_effort: bool,
    pub ask: crate::ask::AskOverrides,
}
