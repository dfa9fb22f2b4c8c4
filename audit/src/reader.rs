//! Reading a log: bounded lines, a consistent snapshot, parsed records.

use crate::record::{Record, MAX_LINE};
use crate::storage::{self, StorageError};
use crate::verify::VerifyError;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

/// One line of the file.
#[derive(Debug)]
pub enum RawLine {
    /// A line that ended with `\n` (the newline removed).
    Complete(Vec<u8>),
    /// Bytes after the last newline: a torn write.
    Torn { offset: u64, bytes: u64 },
}

/// Tries for up to two seconds to take a shared lock: a writer holds the
/// exclusive lock only for one batch, but a stuck writer must not hang a
/// reader, which then reads without it (a half-written batch at the end
/// would show up as a torn line).
fn shared_lock_briefly(lock: &File) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match lock.try_lock_shared() {
            Ok(()) => return true,
            Err(std::fs::TryLockError::WouldBlock) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(_) => return false,
        }
    }
}

/// The writers' lock, held shared while a snapshot is taken (released on drop).
struct SharedLock(Option<File>);

impl SharedLock {
    fn take(log: &Path) -> SharedLock {
        SharedLock(storage::open_read(&storage::sibling(log, ".lock")).ok().filter(shared_lock_briefly))
    }
}

impl Drop for SharedLock {
    fn drop(&mut self) {
        if let Some(l) = &self.0 {
            let _ = l.unlock();
        }
    }
}

/// Every file of a log, oldest first: the rotated segments present
/// (`<log>.<first seq>`, docs/AUDIT.md §12) and then the live file, listed
/// and opened with its length fixed in one snapshot under the shared lock,
/// so a rotation happening meanwhile is seen entirely or not at all. A
/// rotated segment never changes again, so each is opened only when it is
/// read: a log of thousands of segments holds one file open at a time.
pub fn open_all(log: &Path) -> Result<Vec<LineReader>, VerifyError> {
    let _guard = SharedLock::take(log);
    let mut out: Vec<LineReader> =
        crate::segment::list(log)?.into_iter().map(|(_, path)| LineReader::deferred(&path)).collect();
    out.push(LineReader::open_unlocked(log)?);
    Ok(out)
}

/// Reads lines up to a length fixed at open time.
pub struct LineReader {
    path: PathBuf,
    /// None until the first read of a deferred reader.
    inner: Option<BufReader<std::io::Take<File>>>,
    offset: u64,
    line: u64,
}

impl LineReader {
    /// Opens `path` (never through a symlink) and fixes the snapshot length.
    /// If the writers' lock file is readable, the length is taken under a
    /// shared lock, so a batch being written is never seen half-done; the
    /// lock is released at once (writers only append, so earlier bytes
    /// cannot change without that being a tampering the verifier reports).
    pub fn open_shared(path: &Path) -> Result<LineReader, VerifyError> {
        let guard = SharedLock::take(path);
        let r = LineReader::open_unlocked(path);
        drop(guard);
        r
    }

    fn open_unlocked(path: &Path) -> Result<LineReader, VerifyError> {
        let mut r = LineReader::deferred(path);
        opened(&r.path, &mut r.inner)?;
        Ok(r)
    }

    /// A reader that opens `path` at its first read.
    fn deferred(path: &Path) -> LineReader {
        LineReader { path: path.to_path_buf(), inner: None, offset: 0, line: 0 }
    }

    /// Lines read so far.
    pub fn line(&self) -> u64 {
        self.line
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Byte offset of the next line.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    pub fn next_line(&mut self) -> Result<Option<RawLine>, VerifyError> {
        let mut buf = Vec::new();
        let n = opened(&self.path, &mut self.inner)?
            .take(MAX_LINE as u64 + 2)
            .read_until(b'\n', &mut buf)
            .map_err(|e| StorageError::io("read", &self.path, e))?;
        if n == 0 {
            return Ok(None);
        }
        self.line += 1;
        let start = self.offset;
        self.offset += n as u64;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            return Ok(Some(RawLine::Complete(buf)));
        }
        if buf.len() > MAX_LINE {
            return Err(VerifyError::Record {
                seq: self.line - 1,
                line: self.line,
                problem: format!("line longer than {MAX_LINE} bytes"),
            });
        }
        // Bytes without a newline can only be the end of the snapshot.
        Ok(Some(RawLine::Torn { offset: start, bytes: n as u64 }))
    }
}

/// `inner`, opening `path` (never through a symlink, its length fixed now) if it is not yet.
fn opened<'a>(
    path: &Path,
    inner: &'a mut Option<BufReader<std::io::Take<File>>>,
) -> Result<&'a mut BufReader<std::io::Take<File>>, VerifyError> {
    let reader = match inner.take() {
        Some(r) => r,
        None => {
            let file = storage::open_read(path)?;
            let len = file.metadata().map_err(|e| StorageError::io("stat", path, e))?.len();
            BufReader::with_capacity(1 << 16, file.take(len))
        }
    };
    Ok(inner.insert(reader))
}

/// Parsed records of a log, in seq order across its rotated segments and
/// the live file, for display (`list`, `show`, `export`). Lines are parsed
/// strictly but chain and signatures are not checked: that is `verify`'s job.
pub struct Records {
    files: std::vec::IntoIter<LineReader>,
    reader: Option<LineReader>,
    done: bool,
}

/// Iterates over the records of the log at `path` (all its segments present, oldest first).
pub fn records(path: &Path) -> Result<Records, VerifyError> {
    let mut files = open_all(path)?.into_iter();
    let reader = files.next();
    Ok(Records { files, reader, done: false })
}

impl Iterator for Records {
    type Item = Result<Record, VerifyError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            let reader = self.reader.as_mut()?;
            let line_no = reader.line + 1;
            match reader.next_line() {
                Ok(Some(RawLine::Complete(l))) => {
                    return Some(Record::parse_line(&l).map_err(|e| VerifyError::Record {
                        seq: line_no - 1,
                        line: line_no,
                        problem: format!("{}: {e}", reader.path().display()),
                    }))
                }
                Ok(Some(RawLine::Torn { offset, bytes })) => {
                    self.done = true;
                    return Some(Err(VerifyError::TornTail { records: line_no - 1, offset, bytes }));
                }
                Ok(None) => self.reader = self.files.next(),
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
