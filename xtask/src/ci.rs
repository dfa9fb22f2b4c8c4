//! `cargo xtask ci`: what `.ci/run` runs on a fresh clone: formatting,
//! clippy, tidy, every test, then `vm-test` (host + the kernel matrix).

use std::process::Command;

use anyhow::Result;

use crate::{apt_install, have, run};

pub fn ci() -> Result<()> {
    // The unprivileged test tier switches to nobody with setpriv (util-linux).
    if !have("setpriv") {
        apt_install(&["util-linux"])?;
    }
    // The e2e run without user namespaces is staged with bubblewrap.
    if !have("bwrap") {
        apt_install(&["bubblewrap"])?;
    }
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new("cargo").args(["clippy", "--workspace", "--all-targets", "--quiet", "--", "-D", "warnings"]))?;
    crate::tidy::tidy()?;
    let strict = std::env::var("PORTCULLIS_STRICT_TESTS").unwrap_or_else(|_| "1".into());
    run(Command::new("cargo").args(["test", "--workspace"]).env("PORTCULLIS_STRICT_TESTS", &strict))?;
    // The policy suite on the host and on every kernel of the VM matrix.
    crate::vmtest::vm_test(&[])?;
    eprintln!("xtask ci: all checks passed");
    Ok(())
}
