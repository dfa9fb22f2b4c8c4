//! Tool-call records into the signed audit log. A log handle is not `Sync`,
//! so one writer thread owns one (an [`Evidence`] sibling of the run's: same
//! log, same session id as the launch and exit records, forwarded to
//! `--syslog` like them; the log's file lock keeps the chain linear) and
//! the proxy threads hand it bodies through a bounded queue.
//!
//! A record costs the proxy thread a push under a mutex. The writer is woken
//! only when the queue turns non-empty; it appends everything queued and
//! fsyncs once, and what arrives meanwhile makes the next group. It does not
//! linger for more (the syscall gate's writer does, for floods of denials):
//! measured here, a 2 ms linger bunched the signing into bursts that cost
//! the proxy's threads their CPU at p99, for no gain at p50. A full queue
//! makes senders wait (bounded memory). If a write fails,
//! [`Journal::healthy`] turns false and the gate refuses further calls:
//! nothing goes through unrecorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use audit::Kind;

use crate::evidence::Evidence;
use serde_json::Value;

/// Records waiting for the writer; a full queue makes senders wait (bounded memory).
const QUEUE: usize = 4096;

pub struct Journal {
    sink: Sink,
    healthy: Arc<AtomicBool>,
    /// Returns the first write failure, if any.
    writer: Option<JoinHandle<Option<String>>>,
    /// Where the records go, for messages.
    pub target: String,
}

enum Sink {
    Nowhere,
    Channel(Option<SyncSender<Value>>),
    Log(Arc<Shared>),
}

struct Shared {
    queue: Mutex<Queue>,
    /// The writer waits here for a first record.
    wake: Condvar,
    /// Senders wait here while the queue is full.
    space: Condvar,
}

#[derive(Default)]
struct Queue {
    items: Vec<Item>,
    closed: bool,
}

/// A record, and for a durable one where to say it is on disk (or why not).
type Item = (Kind, Value, Option<SyncSender<Result<(), String>>>);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Journal {
    /// Records nowhere (benchmarks, unit tests): always healthy.
    pub fn discard() -> Self {
        Journal {
            sink: Sink::Nowhere,
            healthy: Arc::new(AtomicBool::new(true)),
            writer: None,
            target: "nowhere".into(),
        }
    }

    /// Records into a channel (tests, or a consumer other than the log).
    pub fn to_channel(capacity: usize) -> (Self, Receiver<Value>) {
        let (tx, rx) = sync_channel(capacity);
        let healthy = Arc::new(AtomicBool::new(true));
        let j = Journal { sink: Sink::Channel(Some(tx)), healthy, writer: None, target: "channel".into() };
        (j, rx)
    }

    /// Starts the writer thread on an open log.
    pub fn start(log: Evidence) -> std::io::Result<Self> {
        let shared = Arc::new(Shared { queue: Mutex::default(), wake: Condvar::new(), space: Condvar::new() });
        let healthy = Arc::new(AtomicBool::new(true));
        let (h, q) = (healthy.clone(), shared.clone());
        let target = log.path().display().to_string();
        let writer = std::thread::Builder::new().name("mcp-audit".into()).spawn(move || write_loop(log, &q, &h))?;
        Ok(Journal { sink: Sink::Log(shared), healthy, writer: Some(writer), target })
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Queues one `tool_call` record.
    pub fn record(&self, body: Value) {
        match &self.sink {
            Sink::Nowhere => {}
            Sink::Channel(tx) => {
                if tx.as_ref().is_none_or(|tx| tx.send(body).is_err()) {
                    self.healthy.store(false, Ordering::Release);
                }
            }
            Sink::Log(shared) => {
                let mut q = shared.lock();
                while q.items.len() >= QUEUE && !q.closed {
                    q = shared.space.wait(q).unwrap_or_else(|p| p.into_inner());
                }
                if q.closed {
                    drop(q);
                    self.healthy.store(false, Ordering::Release);
                    return;
                }
                let first = q.items.is_empty();
                q.items.push((Kind::ToolCall, body, None));
                drop(q);
                if first {
                    shared.wake.notify_one();
                }
            }
        }
    }

    /// Appends and fsyncs a record; returns once it is durable, or why it
    /// could not be (then the caller must not act on it).
    pub fn record_durable(&self, kind: Kind, body: Value) -> Result<(), String> {
        match &self.sink {
            Sink::Nowhere => Ok(()),
            Sink::Channel(tx) => match tx.as_ref().map(|tx| tx.send(body)) {
                Some(Ok(())) => Ok(()),
                _ => Err("the audit channel is closed".into()),
            },
            Sink::Log(shared) => {
                if !self.healthy() {
                    return Err("the audit log failed earlier".into());
                }
                let (ack, done) = sync_channel(1);
                {
                    let mut q = shared.lock();
                    if q.closed {
                        return Err("the audit writer has stopped".into());
                    }
                    // Not bounded by QUEUE: the caller waits, so durable
                    // records in the queue are at most the callers waiting.
                    q.items.push((kind, body, Some(ack)));
                }
                shared.wake.notify_one();
                done.recv().unwrap_or_else(|_| Err("the audit writer is gone".into()))
            }
        }
    }

    /// Commits what is queued, writes a checkpoint and stops the writer.
    /// Returns why records were lost, if any were (once).
    pub fn close(&mut self) -> Option<String> {
        match &mut self.sink {
            Sink::Nowhere => {}
            Sink::Channel(tx) => *tx = None,
            Sink::Log(shared) => {
                shared.lock().closed = true;
                shared.wake.notify_one();
                shared.space.notify_all();
            }
        }
        let writer = self.writer.take();
        writer.and_then(|w| w.join().unwrap_or_else(|_| Some("the MCP audit writer panicked".into())))
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// Writes until closed; returns the first failure, if any.
fn write_loop(mut log: Evidence, shared: &Shared, healthy: &AtomicBool) -> Option<String> {
    crate::sys::background_thread();
    let first = std::cell::RefCell::new(None::<String>);
    let fail = |e: &str| {
        if healthy.swap(false, Ordering::AcqRel) {
            eprintln!("portcullis: mcp: {e}; refusing further tool calls");
        }
        first.borrow_mut().get_or_insert_with(|| crate::evidence::reason(e).to_string());
    };
    loop {
        let mut q = shared.lock();
        while q.items.is_empty() && !q.closed {
            q = shared.wake.wait(q).unwrap_or_else(|p| p.into_inner());
        }
        if q.items.is_empty() && q.closed {
            break;
        }
        let batch = std::mem::take(&mut q.items);
        drop(q);
        shared.space.notify_all();
        let mut acks = Vec::new();
        let mut error: Option<String> = None;
        for (kind, body, ack) in batch {
            if error.is_none() && healthy.load(Ordering::Acquire) {
                if let Err(e) = log.record(kind, body) {
                    fail(&e.message);
                    error = Some(e.message);
                }
            }
            acks.extend(ack);
        }
        if error.is_none() && healthy.load(Ordering::Acquire) {
            if let Err(e) = log.commit() {
                fail(&e.message);
                error = Some(e.message);
            }
        }
        let result = match (error, healthy.load(Ordering::Acquire)) {
            (Some(e), _) => Err(e),
            (None, false) => Err("the audit log failed earlier".into()),
            (None, true) => Ok(()),
        };
        for ack in acks {
            let _ = ack.send(result.clone());
        }
    }
    if healthy.load(Ordering::Acquire) {
        if let Err(e) = log.checkpoint() {
            fail(&e.message);
        }
    }
    first.into_inner()
}
