//! `portcullis probe-op OP TARGET`, run inside a sandbox by `profile test`:
//! tries one operation and answers with its exit status.
//!
//! 0: the kernel allowed it. 1: the kernel refused it (EACCES or EPERM, the
//! answers of Landlock and the seccomp floor). 2: it failed for another
//! reason (missing file, ...), so the expectation cannot be judged.

use std::io::ErrorKind;
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

pub const ALLOWED: i32 = 0;
pub const DENIED: i32 = 1;
pub const UNTESTABLE: i32 = 2;

fn verdict(op: &str, target: &str, r: std::io::Result<()>) -> i32 {
    match r {
        Ok(()) => ALLOWED,
        Err(e) if e.kind() == ErrorKind::PermissionDenied || e.raw_os_error() == Some(libc::EPERM) => DENIED,
        Err(e) => {
            eprintln!("portcullis probe-op: {op} {target}: {e}");
            UNTESTABLE
        }
    }
}

pub fn probe_op(op: &str, target: &str) -> i32 {
    let port = || target.parse::<u16>().map_err(|e| std::io::Error::new(ErrorKind::InvalidInput, e));
    let r = match op {
        "read" => std::fs::File::open(target).map(drop),
        "write" => {
            // Open for writing, creating if needed; remove what we created.
            let existed = std::path::Path::new(target).exists();
            std::fs::OpenOptions::new().append(true).create(true).open(target).map(|_| {
                if !existed {
                    let _ = std::fs::remove_file(target);
                }
            })
        }
        "exec" => std::process::Command::new(target)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .map(|mut c| {
                // The exec happened; what the program would do is not the question.
                let _ = c.kill();
                let _ = c.wait();
            }),
        "connect" => port().and_then(|p| {
            match TcpStream::connect_timeout(&([127, 0, 0, 1], p).into(), Duration::from_secs(2)) {
                // Refused or timed out by the peer: the sandbox let the connect through.
                Err(e) if matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::TimedOut) => Ok(()),
                other => other.map(drop),
            }
        }),
        "bind" => port().and_then(|p| match TcpListener::bind(("127.0.0.1", p)) {
            Err(e) if e.kind() == ErrorKind::AddrInUse => Ok(()),
            other => other.map(drop),
        }),
        other => Err(std::io::Error::new(ErrorKind::InvalidInput, format!("unknown op `{other}`"))),
    };
    verdict(op, target, r)
}
