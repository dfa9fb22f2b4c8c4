//! The MCP gate's plumbing: two threads between the client's stdio and the
//! server's, each reading one bounded line at a time and asking the
//! [`Gate`] what to do with it. The pipes give back-pressure both ways: a
//! flooding server waits for the client to read, and the proxy holds at
//! most one message per direction, so memory is bounded by the message
//! limit, never by traffic.
//!
//! Shutdown: when the client closes its end, the server's stdin is closed
//! (the MCP stdio transport's way of saying "exit"), then the server gets
//! SIGTERM after a grace period and SIGKILL after another. When the server
//! closes its stdout (or exits), the output thread ends and `run` finishes
//! the session.

use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::frame::{Frame, LineReader};
use super::gate::{Forward, Gate};

/// How long the server has to exit after its stdin closes, before SIGTERM (then as long again before SIGKILL).
pub const GRACE: Duration = Duration::from_secs(5);

/// The client's side of the stream, shared by both threads (replies from the gate, messages from the server).
pub struct ClientOut {
    out: Mutex<Box<dyn Write + Send>>,
    /// The client stopped reading: stop writing.
    closed: AtomicBool,
}

impl ClientOut {
    pub fn new(w: Box<dyn Write + Send>) -> Arc<Self> {
        Arc::new(ClientOut { out: Mutex::new(w), closed: AtomicBool::new(false) })
    }

    /// Writes one message and its newline, and flushes. False once the client is gone.
    pub fn send(&self, line: &[u8]) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        let ok = out.write_all(line).and_then(|()| out.write_all(b"\n")).and_then(|()| out.flush()).is_ok();
        if !ok {
            self.closed.store(true, Ordering::Release);
        }
        ok
    }
}

/// The running proxy.
pub struct Proxy {
    down: Option<JoinHandle<()>>,
    server_done: Arc<AtomicBool>,
}

/// Who stops the server when the client goes away.
pub type Stopper = Box<dyn Fn(nix::sys::signal::Signal) + Send>;

impl Proxy {
    /// Starts both threads. `stop` signals the server (its process group
    /// leader) when it does not exit after its stdin closed.
    pub fn start<CI, SO, SI>(
        gate: Arc<Gate>,
        client_in: CI,
        client_out: Arc<ClientOut>,
        server_in: SI,
        server_out: SO,
        stop: Option<Stopper>,
    ) -> io::Result<Proxy>
    where
        CI: BufRead + Send + 'static,
        SO: Read + Send + 'static,
        SI: Write + Send + 'static,
    {
        let server_done = Arc::new(AtomicBool::new(false));
        let max = gate.max_message();
        let (g, out, done) = (gate.clone(), client_out.clone(), server_done.clone());
        std::thread::Builder::new().name("mcp-up".into()).spawn(move || {
            up(&g, LineReader::new(client_in, max), &out, BufWriter::with_capacity(64 << 10, server_in));
            // The client is gone (or the server stopped reading): let the server exit.
            if let Some(stop) = stop {
                let deadline = Instant::now() + GRACE;
                for signal in [nix::sys::signal::Signal::SIGTERM, nix::sys::signal::Signal::SIGKILL] {
                    while Instant::now() < deadline && !done.load(Ordering::Acquire) {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    if done.load(Ordering::Acquire) {
                        return;
                    }
                    eprintln!("portcullis: mcp: the server did not exit after its input closed; sending {signal}");
                    stop(signal);
                }
            }
        })?;
        let (g, out, done) = (gate, client_out, server_done.clone());
        let down = std::thread::Builder::new().name("mcp-down".into()).spawn(move || {
            down(&g, LineReader::new(BufReader::with_capacity(64 << 10, server_out), max), &out);
            done.store(true, Ordering::Release);
        })?;
        Ok(Proxy { down: Some(down), server_done })
    }

    /// Waits until the server's output has ended and everything it sent was passed on.
    pub fn join(mut self) {
        if let Some(d) = self.down.take() {
            let _ = d.join();
        }
        self.server_done.store(true, Ordering::Release);
    }
}

fn up<R: BufRead, W: Write>(gate: &Gate, mut input: LineReader<R>, client: &ClientOut, mut server: W) {
    loop {
        let frame = match input.next_frame() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("portcullis: mcp: reading from the client failed: {e}");
                return;
            }
        };
        match frame {
            Frame::Eof => return,
            Frame::TooLarge { len } => {
                client.send(&gate.client_too_large(&input.line, len));
            }
            Frame::Line => {
                let routed = gate.from_client(&input.line);
                if let Some(r) = &routed.reply {
                    client.send(r);
                }
                let bytes: &[u8] = match &routed.forward {
                    Forward::Same => &input.line,
                    Forward::Changed(v) => v,
                    Forward::Nothing => continue,
                };
                let sent = server.write_all(bytes).and_then(|()| server.write_all(b"\n")).and_then(|()| server.flush());
                if let Err(e) = sent {
                    if e.kind() != io::ErrorKind::BrokenPipe {
                        eprintln!("portcullis: mcp: writing to the server failed: {e}");
                    }
                    return;
                }
            }
        }
    }
}

fn down<R: BufRead>(gate: &Gate, mut input: LineReader<R>, client: &ClientOut) {
    loop {
        let frame = match input.next_frame() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("portcullis: mcp: reading from the server failed: {e}");
                return;
            }
        };
        let delivered = match frame {
            Frame::Eof => return,
            Frame::TooLarge { len } => match gate.server_too_large(&input.line, len) {
                Some(reply) => client.send(&reply),
                None => true,
            },
            Frame::Line => match gate.from_server(&input.line) {
                Forward::Same => client.send(&input.line),
                Forward::Changed(v) => client.send(&v),
                Forward::Nothing => true,
            },
        };
        if !delivered {
            // The client is gone: stop reading, so the server's writes fail and it ends.
            eprintln!("portcullis: mcp: the client closed its input; stopping");
            return;
        }
    }
}
