//! `PORTCULLIS_TIMING=1`: how long each launch phase took, on stderr. Used by
//! `cargo xtask bench` and by anyone asking where launch time goes.

use std::sync::OnceLock;
use std::time::Instant;

static START: OnceLock<Option<Instant>> = OnceLock::new();

/// Starts the clock (once, at the top of `main`).
pub fn start() {
    START.get_or_init(|| std::env::var_os("PORTCULLIS_TIMING").map(|_| Instant::now()));
}

/// Prints the time since `start` when timing is on.
pub fn mark(phase: &str) {
    if let Some(Some(t)) = START.get() {
        // Not eprintln: marks come from the finisher too, where a closed
        // stderr must not panic its work away.
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "portcullis: timing: {:>6} us  {phase}", t.elapsed().as_micros());
    }
}

static DONE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Marks "done" once: `run` marks it before it exits with the command's
/// status, and `main` for every command (a run that could not hand its
/// last steps to the finisher returns to `main`, which printed it again).
pub fn done() {
    if !DONE.swap(true, std::sync::atomic::Ordering::Relaxed) {
        mark("done");
    }
}
