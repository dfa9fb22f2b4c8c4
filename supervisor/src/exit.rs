//! Exit codes, and the error type that carries one.

/// portcullis failed before exec: bad profile or flags, a rule this kernel
/// cannot enforce, sandbox setup failed.
pub const SETUP: i32 = 125;
/// The command may not be executed under the profile (not in the allowlist,
/// or the kernel refused to execute it).
pub const NOT_EXECUTABLE: i32 = 126;
/// The command was not found.
pub const NOT_FOUND: i32 = 127;

/// A failure that ends `portcullis` with `code` after printing `message`.
#[derive(Debug, Clone)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl Failure {
    pub fn setup(message: impl Into<String>) -> Self {
        Failure { code: SETUP, message: message.into() }
    }
}

impl From<policy::Error> for Failure {
    fn from(e: policy::Error) -> Self {
        Failure::setup(e.to_string())
    }
}
