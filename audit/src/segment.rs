//! Rotation by size: where the segments of a log live and how they are named.
//!
//! When the live file `audit.log` reaches `LogOptions::rotate_bytes`, the
//! writer moves it aside as `audit.log.<first seq>` (20 decimal digits,
//! zero-padded, so names sort in seq order) and starts a new `audit.log`
//! whose first record is a `segment` record continuing the chain
//! (docs/AUDIT.md §12). The live file is always named `audit.log`.

use crate::storage::{self, StorageError};
use std::path::{Path, PathBuf};

/// Digits in a segment name's seq: enough for any u64, so names sort as numbers.
pub const SEQ_DIGITS: usize = 20;

/// `<log>.<first_seq, 20 digits>`: where the segment starting at `first_seq` goes when rotated.
pub fn segment_path(log: &Path, first_seq: u64) -> PathBuf {
    storage::sibling(log, &format!(".{first_seq:0SEQ_DIGITS$}"))
}

/// The last component of a path, as the `previous_segment` member names it.
pub fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// The first seq a segment file name says it holds, if `name` is a segment of `log_name`.
pub fn parse_name(log_name: &str, name: &str) -> Option<u64> {
    let digits = name.strip_prefix(log_name)?.strip_prefix('.')?;
    if digits.len() != SEQ_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The rotated segments of `log` present now, oldest first: (first seq, path).
/// The live file itself is not included.
pub fn list(log: &Path) -> Result<Vec<(u64, PathBuf)>, StorageError> {
    let dir = storage::parent_dir(log);
    let log_name = file_name(log);
    let mut out = Vec::new();
    let entries = std::fs::read_dir(&dir).map_err(|e| StorageError::io("list directory", &dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::io("list directory", &dir, e))?;
        let name = entry.file_name();
        if let Some(seq) = name.to_str().and_then(|n| parse_name(&log_name, n)) {
            out.push((seq, log.with_file_name(name)));
        }
    }
    out.sort();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_in_seq_order_and_parse_back() {
        let log = Path::new("/x/audit.log");
        let a = segment_path(log, 9);
        let b = segment_path(log, 10);
        assert_eq!(file_name(&a), "audit.log.00000000000000000009");
        assert!(file_name(&a) < file_name(&b));
        assert_eq!(parse_name("audit.log", &file_name(&b)), Some(10));
        assert_eq!(parse_name("audit.log", &file_name(&segment_path(log, u64::MAX))), Some(u64::MAX));
        for other in
            ["audit.log.lock", "audit.log.checkpoint", "audit.log.0001", "audit.log", "x.log.00000000000000000009"]
        {
            assert_eq!(parse_name("audit.log", other), None, "{other}");
        }
    }
}
