//! Tool-call records into the signed audit log. `AuditLog` is not `Sync`,
//! so one writer thread owns a handle (same log, same session id as the
//! run's launch and exit records; the log's file lock keeps the chain
//! linear) and the proxy threads send it bodies over a bounded channel.
//! It group-commits: it writes what arrived, fsyncs once, and takes the
//! next batch. If a write fails, [`Journal::healthy`] turns false and the
//! gate refuses further calls: nothing goes through unrecorded.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use audit::{AuditLog, Kind};
use serde_json::Value;

/// Records waiting for the writer; a full channel makes senders wait (bounded memory).
const QUEUE: usize = 4096;

pub struct Journal {
    tx: Option<SyncSender<Value>>,
    healthy: Arc<AtomicBool>,
    writer: Option<JoinHandle<()>>,
    /// Where the records go, for messages.
    pub target: String,
}

impl Journal {
    /// Records nowhere (benchmarks, unit tests): always healthy.
    pub fn discard() -> Self {
        Journal { tx: None, healthy: Arc::new(AtomicBool::new(true)), writer: None, target: "nowhere".into() }
    }

    /// Records into a channel (tests, or a consumer other than the log).
    pub fn to_channel(capacity: usize) -> (Self, Receiver<Value>) {
        let (tx, rx) = sync_channel(capacity);
        let j =
            Journal { tx: Some(tx), healthy: Arc::new(AtomicBool::new(true)), writer: None, target: "channel".into() };
        (j, rx)
    }

    /// Starts the writer thread on an open log.
    pub fn start(log: AuditLog) -> std::io::Result<Self> {
        let (tx, rx) = sync_channel(QUEUE);
        let healthy = Arc::new(AtomicBool::new(true));
        let h = healthy.clone();
        let target = log.path().display().to_string();
        let writer = std::thread::Builder::new().name("mcp-audit".into()).spawn(move || write_loop(log, rx, h))?;
        Ok(Journal { tx: Some(tx), healthy, writer: Some(writer), target })
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Ordering::Acquire)
    }

    /// Queues one `tool_call` record.
    pub fn record(&self, body: Value) {
        if let Some(tx) = &self.tx {
            if tx.send(body).is_err() {
                self.healthy.store(false, Ordering::Release);
            }
        }
    }

    /// Commits what is queued, writes a checkpoint and stops the writer.
    pub fn close(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Journal {
    fn drop(&mut self) {
        self.close();
    }
}

fn write_loop(mut log: AuditLog, rx: Receiver<Value>, healthy: Arc<AtomicBool>) {
    crate::sys::background_thread();
    let fail = |e: &dyn std::fmt::Display| {
        if healthy.swap(false, Ordering::AcqRel) {
            eprintln!("portcullis: mcp: audit log write failed: {e}; refusing further tool calls");
        }
    };
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        while let Some(body) = next {
            if healthy.load(Ordering::Acquire) {
                if let Err(e) = log.append(Kind::ToolCall, body) {
                    fail(&e);
                }
            }
            next = rx.try_recv().ok();
        }
        if healthy.load(Ordering::Acquire) {
            if let Err(e) = log.commit() {
                fail(&e);
            }
        }
    }
    if healthy.load(Ordering::Acquire) {
        if let Err(e) = log.checkpoint() {
            fail(&e);
        }
    }
}
