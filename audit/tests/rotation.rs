//! Rotation by size (docs/AUDIT.md §12): the chain, the Merkle tree and the
//! checkpoints carry across files; missing, reordered or forged segments
//! are reported; writers sharing a log follow a rotation and nothing else.

use audit::record::{self, Kind, Record};
use audit::segment;
use audit::{verify, verify_history, AuditError, AuditLog, History, LogOptions, VerifyError, VerifyOptions};
use serde_json::json;
use std::path::{Path, PathBuf};

mod common;
use common::{test_key, Tmp};

/// Small files: a rotation every few commits.
fn rotating(session: &str) -> LogOptions {
    LogOptions { rotate_bytes: Some(3000), session: Some(session.into()), ..LogOptions::default() }
}

/// Appends `n` verdicts, committing every 4.
fn append(log: &mut AuditLog, n: usize, tag: &str) {
    for i in 0..n {
        log.append(Kind::Verdict, json!({"syscall": "openat", "path": format!("/w/{tag}{i}"), "verdict": "allow"}))
            .unwrap();
        if i % 4 == 3 {
            log.commit().unwrap();
        }
    }
    log.commit().unwrap();
}

/// A closed log with a header and `n` verdicts over several segments.
fn make_rotated(t: &Tmp, n: usize) {
    let mut log = AuditLog::open_with(&t.log(), test_key(1), rotating("a")).unwrap();
    append(&mut log, n, "a");
    log.close().unwrap();
}

fn segments(t: &Tmp) -> Vec<(u64, PathBuf)> {
    segment::list(&t.log()).unwrap()
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap().lines().map(str::to_string).collect()
}

fn write_lines(p: &Path, l: &[String]) {
    let mut s = l.join("\n");
    s.push('\n');
    std::fs::write(p, s).unwrap();
}

/// Every record across the files, with consecutive seqs from 0.
fn all_seqs_consecutive(t: &Tmp) -> u64 {
    let mut n = 0;
    for r in audit::records(&t.log()).unwrap() {
        assert_eq!(r.unwrap().seq, n);
        n += 1;
    }
    n
}

#[test]
fn rotation_over_several_segments_verifies() {
    let t = Tmp::new("several");
    make_rotated(&t, 60);
    let segs = segments(&t);
    assert!(segs.len() >= 3, "expected several rotated segments, got {segs:?}");
    assert_eq!(segs[0].0, 0);
    // Each rotated file is named after its first seq and every file after the
    // first starts with a segment record continuing the one before.
    let mut files: Vec<PathBuf> = segs.iter().map(|(_, p)| p.clone()).collect();
    files.push(t.log());
    for (i, f) in files.iter().enumerate() {
        let first = Record::parse_line(lines(f)[0].as_bytes()).unwrap();
        if i == 0 {
            assert_eq!(first.kind, Kind::Header);
        } else {
            assert_eq!(first.kind, Kind::Segment);
            assert_eq!(first.body["previous_segment"], json!(segment::file_name(&files[i - 1])));
            assert_eq!(first.seq, segs.get(i).map_or(first.seq, |s| s.0));
        }
        // Rotation happens at the first commit that reaches the limit (batches of 4 records here).
        let len = std::fs::metadata(f).unwrap().len();
        assert!(len < 3000 + 4 * 600, "{}: {len} bytes", f.display());
    }
    let r = verify(&t.log(), Some(&t.cp()), Some(&test_key(1).verifying_key())).unwrap();
    let total = 1 + 60 + segs.len() as u64;
    assert_eq!(r.records, total);
    assert_eq!(r.files.len(), segs.len() + 1);
    assert_eq!(r.kinds.get("segment"), Some(&(segs.len() as u64)));
    assert_eq!(r.checkpoint.as_ref().map(|c| c.1), Some(total), "the checkpoint covers every segment");
    assert_eq!(all_seqs_consecutive(&t), total);
    // Strict mode agrees; the root is over the whole history.
    let strict = audit::verify_with(&t.log(), &VerifyOptions { strict: true, ..Default::default() }).unwrap();
    assert_eq!(strict.root, r.root);
    let leaves = audit::verify::leaf_hashes(&t.log()).unwrap();
    assert_eq!(audit::merkle::root(&leaves), r.root);
}

#[test]
fn deleted_middle_segment_is_detected() {
    let t = Tmp::new("delmid");
    make_rotated(&t, 60);
    let segs = segments(&t);
    let (gone_seq, gone) = segs[1].clone();
    let next = segs.get(2).map_or(t.log(), |s| s.1.clone());
    std::fs::remove_file(&gone).unwrap();
    let e = verify(&t.log(), None, None).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, VerifyError::Segment { .. }), "{msg}");
    assert_eq!(e.first_bad_seq(), Some(gone_seq), "{msg}");
    assert!(msg.contains("missing") && msg.contains(&next.display().to_string()), "{msg}");
    // Retained does not excuse a gap between files that are present.
    assert!(verify_history(&t.log(), &VerifyOptions::default(), History::Retained).is_err());
    // Nor are proofs built over a history with holes.
    assert!(audit::verify::leaf_hashes(&t.log()).is_err());
}

#[test]
fn tampered_continuation_record_is_detected() {
    // An edited byte: the hash no longer matches.
    let t = Tmp::new("tampbyte");
    make_rotated(&t, 40);
    let segs = segments(&t);
    let (seq, file) = segs[1].clone();
    let mut l = lines(&file);
    l[0] = l[0].replacen("\"previous_first_seq\":0", "\"previous_first_seq\":1", 1);
    write_lines(&file, &l);
    let e = verify(&t.log(), None, None).unwrap_err();
    assert_eq!(e.first_bad_seq(), Some(seq), "{e}");
    assert!(e.to_string().contains(&file.display().to_string()), "{e}");

    // Re-signed with the right key but a frontier that is not the history's:
    // hash, prev and signature all hold, the continuation check does not.
    let t = Tmp::new("tampsig");
    make_rotated(&t, 40);
    let segs = segments(&t);
    let (seq, file) = segs[1].clone();
    let mut l = lines(&file);
    let rec = Record::parse_line(l[0].as_bytes()).unwrap();
    let mut body = rec.body.clone();
    body.insert("frontier".into(), json!([audit::merkle::to_hex(&[7u8; 32])]));
    let forged =
        record::seal(&test_key(1), rec.seq, rec.ts.clone(), rec.session.clone(), Kind::Segment, body, rec.prev)
            .unwrap();
    l[0] = forged.line().unwrap();
    write_lines(&file, &l);
    let e = verify(&t.log(), None, None).unwrap_err();
    assert_eq!(e.first_bad_seq(), Some(seq), "{e}");
    assert!(e.to_string().contains("frontier"), "{e}");

    // A segment record in the middle of a file.
    let t = Tmp::new("tampmid");
    make_rotated(&t, 40);
    let segs = segments(&t);
    let file = segs[1].1.clone();
    let mut l = lines(&file);
    let moved = l.remove(0);
    l.insert(1, moved);
    write_lines(&file, &l);
    assert!(verify(&t.log(), None, None).is_err());
}

#[test]
fn two_handles_one_rotates_the_other_follows() {
    let t = Tmp::new("follow");
    let mut a = AuditLog::open_with(&t.log(), test_key(1), rotating("a")).unwrap();
    a.append_durable(Kind::Launch, json!({"who": "a"})).unwrap();
    // b shares the log but never rotates by itself.
    let opts = LogOptions { session: Some("b".into()), ..LogOptions::default() };
    let mut b = AuditLog::open_with(&t.log(), test_key(1), opts).unwrap();
    b.append_durable(Kind::Launch, json!({"who": "b"})).unwrap();
    for round in 0..6 {
        // a rotates under b (several times in some rounds), b keeps appending.
        append(&mut a, 12, &format!("a{round}-"));
        append(&mut b, 3, &format!("b{round}-"));
    }
    assert!(segments(&t).len() >= 3);
    b.close().unwrap();
    a.close().unwrap();
    let r = verify(&t.log(), Some(&t.cp()), Some(&test_key(1).verifying_key())).unwrap();
    assert_eq!(r.sessions, 2);
    let n = all_seqs_consecutive(&t);
    assert_eq!(r.records, n);
    let by_b = audit::records(&t.log()).unwrap().filter(|r| r.as_ref().unwrap().session == "b").count();
    assert_eq!(by_b, 1 + 6 * 3, "every record b appended after the rotations is in the chain");
}

#[test]
fn a_live_file_that_does_not_continue_the_chain_still_stops_the_writer() {
    let t = Tmp::new("notcont");
    let mut a = AuditLog::open_with(&t.log(), test_key(1), rotating("a")).unwrap();
    append(&mut a, 4, "a");
    let mut b = AuditLog::open(&t.log(), test_key(1)).unwrap();
    b.append_durable(Kind::Exec, json!({"path": "/bin/true"})).unwrap();
    append(&mut a, 40, "a");
    a.close().unwrap();
    assert!(!segments(&t).is_empty());
    // Someone swaps in another log's file (it starts with a segment record
    // of its own history) as the live file.
    let other = Tmp::new("other");
    make_rotated(&other, 40);
    std::fs::copy(other.log(), t.log()).unwrap();
    let err = b.append_durable(Kind::Exec, json!({"path": "/bin/false"})).unwrap_err();
    assert!(matches!(err, AuditError::Replaced { .. }), "{err}");
    assert!(matches!(b.append(Kind::Exit, json!({})), Err(AuditError::Failed(_))));
}

#[test]
fn checkpoints_cover_the_whole_history_after_rotation() {
    let t = Tmp::new("cp");
    let mut log = AuditLog::open_with(&t.log(), test_key(1), rotating("a")).unwrap();
    append(&mut log, 8, "a");
    log.checkpoint().unwrap();
    // A checkpoint kept elsewhere, taken before the next rotations.
    let kept = t.0.join("kept.checkpoint");
    std::fs::copy(t.cp(), &kept).unwrap();
    append(&mut log, 50, "b");
    log.close().unwrap();
    assert!(segments(&t).len() >= 2);
    let r = verify(&t.log(), Some(&kept), None).unwrap();
    assert!(r.checkpoint.unwrap().1 < r.records);
    let note = std::fs::read_to_string(t.cp()).unwrap();
    let (cp, _) = audit::Checkpoint::parse(&note).unwrap();
    assert_eq!(cp.size, r.records, "the latest checkpoint counts records in every segment");
    // An inclusion proof for a record in the oldest segment, against it.
    let receipt = audit::prove_inclusion(&t.log(), 3, &note).unwrap();
    receipt.verify(&test_key(1).verifying_key()).unwrap();

    // Truncating the live file is still caught by the checkpoint...
    let mut l = lines(&t.log());
    l.pop();
    write_lines(&t.log(), &l);
    let e = verify(&t.log(), Some(&t.cp()), None).unwrap_err();
    assert!(matches!(e, VerifyError::Truncated { .. }), "{e}");
    assert!(matches!(AuditLog::open(&t.log(), test_key(1)), Err(AuditError::CheckpointAhead { .. })));
}

#[test]
fn rolling_back_to_the_previous_segment_is_detected() {
    let t = Tmp::new("rollback");
    make_rotated(&t, 40);
    // Drop the live file and put the last rotated segment back in its place.
    let (_, last) = segments(&t).pop().unwrap();
    std::fs::rename(&last, t.log()).unwrap();
    let e = verify(&t.log(), Some(&t.cp()), None).unwrap_err();
    assert!(matches!(e, VerifyError::Truncated { .. }), "{e}");
    assert!(AuditLog::open(&t.log(), test_key(1)).is_err());
}

#[test]
fn writers_resume_after_reopen_with_rotated_segments() {
    let t = Tmp::new("resume");
    make_rotated(&t, 30);
    let before = segments(&t).len();
    // With the state cache, then without it (the live file alone is read).
    for round in 0..2 {
        if round == 1 {
            std::fs::remove_file(storage_state(&t)).unwrap();
        }
        let mut log = AuditLog::open_with(&t.log(), test_key(1), rotating("r")).unwrap();
        append(&mut log, 20, &format!("r{round}-"));
        log.close().unwrap();
    }
    assert!(segments(&t).len() > before);
    let r = verify(&t.log(), Some(&t.cp()), None).unwrap();
    assert_eq!(r.records, all_seqs_consecutive(&t));
    // A writer without rotate_bytes continues the rotated log as it is.
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    log.append_durable(Kind::Exit, json!({"status": 0})).unwrap();
    log.close().unwrap();
    assert_eq!(verify(&t.log(), Some(&t.cp()), None).unwrap().records, r.records + 1);
}

fn storage_state(t: &Tmp) -> PathBuf {
    t.0.join("audit.log.state")
}

#[test]
fn archived_older_segments_verify_only_when_asked() {
    let t = Tmp::new("archived");
    make_rotated(&t, 40);
    let segs = segments(&t);
    let complete = verify(&t.log(), Some(&t.cp()), None).unwrap();
    // Archive all rotated segments: the live file alone is left.
    for (_, p) in &segs {
        std::fs::remove_file(p).unwrap();
    }
    let e = verify(&t.log(), Some(&t.cp()), None).unwrap_err();
    // Records 0.. are missing, in the live file's name.
    assert_eq!(e.first_bad_seq(), Some(0), "{e}");
    assert!(matches!(e, VerifyError::Segment { .. }), "{e}");
    assert!(e.to_string().contains("missing") && e.to_string().contains("audit.log"), "{e}");
    let opts = VerifyOptions { checkpoint: Some(t.cp()), ..VerifyOptions::default() };
    let r = verify_history(&t.log(), &opts, History::Retained).unwrap();
    assert_eq!((r.records, r.root), (complete.records, complete.root), "the segment record carries the frontier");
    assert!(r.first_seq > 0);
    // A writer still continues it (it never reads old segments).
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    log.append_durable(Kind::Exit, json!({"status": 0})).unwrap();
    log.close().unwrap();
    assert!(verify_history(&t.log(), &opts, History::Retained).is_ok());
}

#[test]
fn interrupted_rotation_is_finished_by_the_next_writer() {
    let t = Tmp::new("interrupted");
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    append(&mut log, 5, "a");
    log.close().unwrap();
    // A crash between link(live, segment name) and the rename over the live name.
    std::fs::hard_link(t.log(), segment::segment_path(&t.log(), 0)).unwrap();
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    assert!(segments(&t).is_empty(), "the stale second name is removed");
    log.append_durable(Kind::Exit, json!({"status": 0})).unwrap();
    log.close().unwrap();
    verify(&t.log(), Some(&t.cp()), None).unwrap();
}

#[test]
fn a_removed_live_file_is_not_replaced_by_a_new_history() {
    let t = Tmp::new("nolive");
    make_rotated(&t, 40);
    std::fs::remove_file(t.log()).unwrap();
    std::fs::remove_file(t.cp()).unwrap();
    let err = AuditLog::open(&t.log(), test_key(1)).unwrap_err();
    assert!(matches!(err, AuditError::LiveFileMissing { .. }), "{err}");
}
