//! Errors that name the place: `file:line: what is wrong`.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Where a value came from: a profile file and line, or the command line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    /// A file path, `builtin:NAME`, or `command line`.
    pub source: String,
    /// 1-based line; 0 when the source has no lines (the command line).
    pub line: usize,
}

impl Origin {
    pub fn new(source: impl Into<String>, line: usize) -> Self {
        Origin { source: source.into(), line }
    }

    /// A value given by a command-line flag such as `--read`.
    pub fn flag(flag: &str) -> Self {
        Origin { source: format!("command line ({flag})"), line: 0 }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}", self.source)
        } else {
            write!(f, "{}:{}", self.source, self.line)
        }
    }
}

/// Everything that can be wrong with a profile or the flags that add to it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("{at}: {message}")]
    Invalid { at: Origin, message: String },
    #[error("profile `{name}` not found (looked in {searched})")]
    NotFound { name: String, searched: String },
    #[error("{path}: cannot read profile: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{at}: `extends` cycle: {chain}")]
    Cycle { at: Origin, chain: String },
}

impl Error {
    pub fn invalid(at: &Origin, message: impl Into<String>) -> Self {
        Error::Invalid { at: at.clone(), message: message.into() }
    }
}
