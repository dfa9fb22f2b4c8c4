// Rust's runtime set-up before `main` is skipped: see
// portcullis::sys::start_process for what it did, what is kept and why.
#![no_main]

use std::ffi::{c_char, c_int};

/// The C library's entry point, called with the process's arguments (which
/// `std::env::args` reads on its own).
#[no_mangle]
extern "C" fn main(_argc: c_int, _argv: *const *const c_char) -> c_int {
    portcullis::sys::start_process();
    // A panic ends the process with 101, as it did under Rust's own main
    // (the panic hook has printed it).
    let code = std::panic::catch_unwind(portcullis::cli::main).unwrap_or(101);
    // Flushes stdout, as returning from Rust's main did.
    std::process::exit(code)
}
