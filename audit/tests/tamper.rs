//! Every tampering case of issue 4 and THREATS.md (c), against the real
//! writer and verifier on real files.

use audit::checkpoint::Checkpoint;
use audit::record::{self, Kind, Record};
use audit::{key, verify, verify_with, AuditError, AuditLog, LogOptions, VerifyError, VerifyOptions};
use base64::Engine as _;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::{test_key, Tmp};

/// A log with a header and `n` verdict records, closed (checkpoint at its size).
fn make_log(t: &Tmp, n: usize) {
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    for i in 0..n {
        let verdict = if i % 3 == 0 { "deny" } else { "allow" };
        log.append(Kind::Verdict, json!({"syscall": "openat", "path": format!("/w/f{i}"), "verdict": verdict}))
            .unwrap();
    }
    log.close().unwrap();
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p).unwrap().lines().map(str::to_string).collect()
}

fn write_lines(p: &Path, l: &[String]) {
    let mut s = l.join("\n");
    s.push('\n');
    std::fs::write(p, s).unwrap();
}

fn bad_seq(r: Result<audit::Report, VerifyError>) -> (u64, String) {
    let e = r.expect_err("verification must fail");
    (e.first_bad_seq().unwrap_or(u64::MAX), e.to_string())
}

#[test]
fn clean_log_verifies_with_checkpoint_and_trusted_key() {
    let t = Tmp::new("clean");
    make_log(&t, 10);
    let r = verify(&t.log(), Some(&t.cp()), Some(&test_key(1).verifying_key())).unwrap();
    assert_eq!(r.records, 11);
    assert_eq!(r.checkpoint.as_ref().map(|c| c.1), Some(11));
    assert_eq!(r.kinds.get("verdict"), Some(&10));
    assert_eq!(r.trusted_key, Some(key::fingerprint(&test_key(1).verifying_key())));
    // Strict one-by-one mode agrees.
    let strict = verify_with(&t.log(), &VerifyOptions { strict: true, ..Default::default() }).unwrap();
    assert_eq!(strict.root, r.root);
    // The file is 0600, the checkpoint says what the verifier computed.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(t.log()).unwrap().permissions().mode() & 0o777, 0o600);
    let (cp, _) = Checkpoint::parse(&std::fs::read_to_string(t.cp()).unwrap()).unwrap();
    assert_eq!((cp.size, cp.root), (11, r.root));
}

/// `write_ahead` puts records on the file before the caller acts on them.
/// Called twice before a commit, the second call returned Ok and wrote
/// nothing (a reviewer's note): what was appended between had not reached
/// the file when the caller went on.
#[test]
fn a_second_write_ahead_writes_what_came_since() {
    let t = Tmp::new("ahead-twice");
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    log.append(Kind::Verdict, json!({"path": "/w/first"})).unwrap();
    log.write_ahead().unwrap();
    log.append(Kind::Verdict, json!({"path": "/w/second"})).unwrap();
    log.write_ahead().unwrap();
    let on_file = std::fs::read_to_string(t.log()).unwrap();
    assert!(on_file.contains("/w/first") && on_file.contains("/w/second"), "{on_file}");
    log.append(Kind::Verdict, json!({"path": "/w/third"})).unwrap();
    log.commit().unwrap();
    log.close().unwrap();
    let r = verify(&t.log(), Some(&t.cp()), Some(&test_key(1).verifying_key())).unwrap();
    assert_eq!(r.records, 4);
}

#[test]
fn changed_byte_is_detected_at_its_seq() {
    let t = Tmp::new("byte");
    make_log(&t, 10);
    let mut l = lines(&t.log());
    l[5] = l[5].replacen("/w/f4", "/w/f5", 1);
    write_lines(&t.log(), &l);
    let (seq, msg) = bad_seq(verify(&t.log(), None, None));
    assert_eq!(seq, 5, "{msg}");
    assert!(msg.contains("hash"), "{msg}");

    // A flipped bit in the signature: the hash still matches, the signature does not.
    let t = Tmp::new("sigbyte");
    make_log(&t, 10);
    let mut l = lines(&t.log());
    let rec = Record::parse_line(l[7].as_bytes()).unwrap();
    let mut sig = rec.sig;
    sig[10] ^= 1;
    let b64 = base64::engine::general_purpose::STANDARD;
    l[7] = l[7].replace(&b64.encode(rec.sig), &b64.encode(sig));
    write_lines(&t.log(), &l);
    let (seq, msg) = bad_seq(verify(&t.log(), None, None));
    assert_eq!(seq, 7, "{msg}");
    assert!(msg.contains("signature"), "{msg}");
}

#[test]
fn deleted_record_is_detected() {
    let t = Tmp::new("del");
    make_log(&t, 10);
    let mut l = lines(&t.log());
    l.remove(4);
    write_lines(&t.log(), &l);
    let (seq, msg) = bad_seq(verify(&t.log(), None, None));
    assert_eq!(seq, 4, "{msg}");
    assert!(msg.contains("seq is 5, expected 4"), "{msg}");
}

#[test]
fn swapped_records_are_detected() {
    let t = Tmp::new("swap");
    make_log(&t, 10);
    let mut l = lines(&t.log());
    l.swap(3, 4);
    write_lines(&t.log(), &l);
    let (seq, _) = bad_seq(verify(&t.log(), None, None));
    assert_eq!(seq, 3);
}

#[test]
fn inserted_forged_record_is_detected() {
    let t = Tmp::new("insert");
    make_log(&t, 10);
    let mut l = lines(&t.log());
    // The forger links correctly to record 5 and numbers it 6, but does not have the key.
    let prev = Record::parse_line(l[5].as_bytes()).unwrap().hash;
    let forged = record::seal(
        &test_key(9),
        6,
        "2026-01-01T00:00:00.000000Z".into(),
        "x".into(),
        Kind::Approval,
        json!({"answer": "allow"}).as_object().unwrap().clone(),
        prev,
    )
    .unwrap();
    l.insert(6, forged.line().unwrap());
    write_lines(&t.log(), &l);
    let (seq, msg) = bad_seq(verify(&t.log(), None, None));
    assert_eq!(seq, 6, "{msg}");
    assert!(msg.contains("signature"), "{msg}");

    // Even renumbering and re-chaining everything after it cannot fix the signatures.
    let mut l2 = l.clone();
    let mut prev = forged.hash;
    for (i, line) in l2.iter_mut().enumerate().skip(7) {
        let r = Record::parse_line(line.as_bytes()).unwrap();
        let re = record::seal(&test_key(9), i as u64, r.ts, r.session, r.kind, r.body, prev).unwrap();
        prev = re.hash;
        *line = re.line().unwrap();
    }
    write_lines(&t.log(), &l2);
    let (seq, _) = bad_seq(verify(&t.log(), None, None));
    assert_eq!(seq, 6);
}

#[test]
fn truncated_tail_is_detected_with_the_checkpoint() {
    let t = Tmp::new("trunc");
    make_log(&t, 10);
    let mut l = lines(&t.log());
    l.truncate(8);
    write_lines(&t.log(), &l);
    // Without a checkpoint the shorter chain is self-consistent (L1).
    assert_eq!(verify(&t.log(), None, None).unwrap().records, 8);
    let (seq, msg) = bad_seq(verify(&t.log(), Some(&t.cp()), None));
    assert_eq!(seq, 8, "{msg}");
    assert!(msg.contains("truncated"), "{msg}");
    // A writer refuses to continue it (fail closed), so the gap cannot be papered over.
    let err = AuditLog::open(&t.log(), test_key(1)).unwrap_err();
    assert!(matches!(err, AuditError::CheckpointAhead { size: 11, records: 8, .. }), "{err}");
}

#[test]
fn older_log_swapped_in_is_detected() {
    let t = Tmp::new("rollback");
    make_log(&t, 5);
    let old = std::fs::read(t.log()).unwrap();
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    log.append(Kind::Exec, json!({"path": "/bin/rm"})).unwrap();
    log.close().unwrap();
    std::fs::write(t.log(), &old).unwrap();
    let (seq, msg) = bad_seq(verify(&t.log(), Some(&t.cp()), None));
    assert_eq!(seq, 6, "{msg}");

    // A forked history of the same length: every record validly signed, but
    // not the history the checkpoint committed to.
    let t2 = Tmp::new("fork");
    make_log(&t2, 5);
    let snapshot = std::fs::read(t2.log()).unwrap();
    let mut log = AuditLog::open(&t2.log(), test_key(1)).unwrap();
    log.append(Kind::Exec, json!({"path": "/bin/true"})).unwrap();
    log.close().unwrap();
    let good_cp = std::fs::read(t2.cp()).unwrap();
    std::fs::write(t2.log(), &snapshot).unwrap();
    std::fs::remove_file(t2.cp()).unwrap();
    let mut log = AuditLog::open(&t2.log(), test_key(1)).unwrap();
    log.append(Kind::Exec, json!({"path": "/bin/false"})).unwrap();
    log.close().unwrap();
    assert!(verify(&t2.log(), None, None).is_ok());
    std::fs::write(t2.cp(), &good_cp).unwrap();
    let err = verify(&t2.log(), Some(&t2.cp()), None).unwrap_err();
    assert!(matches!(err, VerifyError::RootMismatch { size: 7, .. }), "{err}");
}

#[test]
fn record_signed_by_another_key_is_detected() {
    let t = Tmp::new("otherkey");
    make_log(&t, 6);
    let mut l = lines(&t.log());
    let r = Record::parse_line(l[3].as_bytes()).unwrap();
    // Same content, same hash, valid signature — by the wrong key.
    let resigned = record::seal(&test_key(2), r.seq, r.ts, r.session, r.kind, r.body, r.prev).unwrap();
    assert_eq!(resigned.hash, r.hash);
    l[3] = resigned.line().unwrap();
    write_lines(&t.log(), &l);
    let (seq, msg) = bad_seq(verify(&t.log(), None, None));
    assert_eq!(seq, 3, "{msg}");

    // A whole log re-signed by an attacker's key verifies only without a trusted key.
    let t2 = Tmp::new("wholeforge");
    let mut log = AuditLog::open(&t2.log(), test_key(3)).unwrap();
    log.append(Kind::Exit, json!({"status": 0})).unwrap();
    log.close().unwrap();
    assert!(verify(&t2.log(), None, None).is_ok());
    let err = verify(&t2.log(), None, Some(&test_key(1).verifying_key())).unwrap_err();
    assert!(matches!(err, VerifyError::Untrusted { .. }), "{err}");
}

#[test]
fn weak_public_key_in_header_is_rejected() {
    let t = Tmp::new("weak");
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let b64 = base64::engine::general_purpose::STANDARD;
    let body = json!({
        "format": "portcullis-audit", "algorithm": "ed25519", "origin": "o",
        "public_key": b64.encode(identity), "fingerprint": "0000000000000000"
    });
    let mut rec = record::seal(
        &test_key(1),
        0,
        "2026-01-01T00:00:00.000000Z".into(),
        "s".into(),
        Kind::Header,
        body.as_object().unwrap().clone(),
        record::ZERO_HASH,
    )
    .unwrap();
    // With the identity key, s = 0 and R = identity satisfy the verification equation for any message
    let mut sig = [0u8; 64];
    sig[0] = 1;
    rec.sig = sig;
    write_lines(&t.log(), &[rec.line().unwrap()]);
    let (seq, msg) = bad_seq(verify(&t.log(), None, None));
    assert_eq!(seq, 0);
    assert!(msg.contains("weak"), "{msg}");
}

#[test]
fn torn_last_line_is_reported_then_repaired_with_a_recovery_record() {
    let t = Tmp::new("torn");
    make_log(&t, 4);
    let l = lines(&t.log());
    let mut bytes = std::fs::read(t.log()).unwrap();
    // A writer died half-way through a record.
    bytes.extend_from_slice(&l[2].as_bytes()[..70]);
    std::fs::write(t.log(), &bytes).unwrap();
    let err = verify(&t.log(), Some(&t.cp()), None).unwrap_err();
    assert!(matches!(err, VerifyError::TornTail { records: 5, bytes: 70, .. }), "{err}");
    assert_eq!(err.first_bad_seq(), Some(5));

    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    log.append(Kind::Exit, json!({"status": 0})).unwrap();
    log.close().unwrap();
    let r = verify(&t.log(), Some(&t.cp()), None).unwrap();
    assert_eq!(r.recoveries, vec![(5, 70)]);
    let recovery = Record::parse_line(lines(&t.log())[5].as_bytes()).unwrap();
    assert_eq!(recovery.kind, Kind::Recovery);
    assert_eq!(recovery.body["offset"], json!(bytes.len() - 70));
}

#[test]
fn symlinked_log_path_is_refused() {
    let t = Tmp::new("symlink");
    let target = t.0.join("elsewhere");
    std::fs::write(&target, b"").unwrap();
    std::os::unix::fs::symlink(&target, t.log()).unwrap();
    let err = AuditLog::open(&t.log(), test_key(1)).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    assert_eq!(std::fs::read(&target).unwrap(), b"", "nothing written through the link");
    let err = verify(&t.log(), None, None).unwrap_err();
    assert!(err.to_string().contains("symbolic link"), "{err}");
    // A symlinked lock file is refused too.
    let t2 = Tmp::new("symlock");
    std::os::unix::fs::symlink(&target, t2.0.join("audit.log.lock")).unwrap();
    assert!(AuditLog::open(&t2.log(), test_key(1)).is_err());
}

#[test]
fn shared_log_directory_is_refused() {
    let t = Tmp::new("shared");
    let dir = t.0.join("open");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    let err = AuditLog::open(&dir.join("audit.log"), test_key(1)).unwrap_err();
    assert!(err.to_string().contains("writable by group or others"), "{err}");
}

#[test]
fn control_characters_cannot_forge_a_line() {
    let t = Tmp::new("inject");
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    let evil = "x\n{\"v\":1,\"seq\":2,\"kind\":\"approval\"}\r\u{1b}[2K\u{1b}[1A\u{85}\u{2028}\u{2029}\u{202e}\u{0}";
    log.append(Kind::Exec, json!({"argv": [evil], evil: evil})).unwrap();
    log.close().unwrap();
    let text = std::fs::read(t.log()).unwrap();
    assert!(text.iter().all(|&b| b == b'\n' || (0x20..0x7f).contains(&b)), "log is printable ASCII");
    assert_eq!(text.iter().filter(|&&b| b == b'\n').count(), 2);
    let r = verify(&t.log(), Some(&t.cp()), None).unwrap();
    assert_eq!(r.records, 2);
    let rec = Record::parse_line(lines(&t.log())[1].as_bytes()).unwrap();
    assert_eq!(rec.body["argv"][0], json!(evil), "the value survives exactly");
    assert!(!audit::display_safe(evil).contains('\n'));
    assert!(!audit::display_safe(evil).contains('\u{1b}'));
}

#[test]
fn secrets_are_masked_before_hashing() {
    let t = Tmp::new("mask");
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    log.append(Kind::Launch, json!({"env": {"GITHUB_TOKEN": "ghp_supersecretvalue1234"}, "password": "hunter2", "argv": ["--api-key", "k-123456"]})).unwrap();
    log.close().unwrap();
    let text = std::fs::read_to_string(t.log()).unwrap();
    for s in ["ghp_supersecret", "hunter2", "k-123456"] {
        assert!(!text.contains(s), "{s} leaked");
    }
    verify(&t.log(), None, None).unwrap();
}

#[test]
fn key_rotation_is_signed_by_the_old_key() {
    let t = Tmp::new("rotate");
    make_log(&t, 3);
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    let rot = log.rotate_key(test_key(2)).unwrap();
    log.append(Kind::Exit, json!({"status": 0})).unwrap();
    log.close().unwrap();
    let r = verify(&t.log(), Some(&t.cp()), Some(&test_key(2).verifying_key())).unwrap();
    assert_eq!(r.keys.len(), 2);
    assert_eq!(r.keys[1].from_seq, rot + 1);
    // The old key can no longer write: it is not the key in force.
    let err = AuditLog::open(&t.log(), test_key(1)).unwrap_err();
    assert!(matches!(err, AuditError::KeyMismatch { .. }), "{err}");
    // A record after the rotation signed by the old key is caught.
    let mut l = lines(&t.log());
    let last = l.len() - 1;
    let r = Record::parse_line(l[last].as_bytes()).unwrap();
    l[last] = record::seal(&test_key(1), r.seq, r.ts, r.session, r.kind, r.body, r.prev).unwrap().line().unwrap();
    write_lines(&t.log(), &l);
    let (seq, _) = bad_seq(verify(&t.log(), None, None));
    assert_eq!(seq, last as u64);
}

/// Anyone can end a log of their own with a rotation to someone else's
/// public key: signed by the old key alone, that made a verifier pinning
/// the other key accept the whole forged history. A rotation now carries
/// the new key's own signature over the history before it, and only then
/// does the pinned key anchor the log.
#[test]
fn a_rotation_to_the_pinned_key_must_be_signed_by_it() {
    let t = Tmp::new("rotate-forged");
    make_log(&t, 3);
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    log.rotate_key(test_key(2)).unwrap();
    log.close().unwrap();
    // Twin: the genuine rotation anchors the log in the new key.
    verify(&t.log(), Some(&t.cp()), Some(&test_key(2).verifying_key())).unwrap();
    // The forger holds key 1 only: the same rotation without the new key's
    // signature, and no checkpoint (one at that size is the new key's).
    let mut l = lines(&t.log());
    let last = l.len() - 1;
    let r = Record::parse_line(l[last].as_bytes()).unwrap();
    assert_eq!(r.kind, Kind::KeyRotation);
    let mut body = r.body.clone();
    body.remove("new_key_signature").expect("a rotation names the new key's signature");
    l[last] = record::seal(&test_key(1), r.seq, r.ts.clone(), r.session.clone(), r.kind, body.clone(), r.prev)
        .unwrap()
        .line()
        .unwrap();
    write_lines(&t.log(), &l);
    std::fs::remove_file(t.cp()).unwrap();
    let err = verify(&t.log(), None, Some(&test_key(2).verifying_key())).unwrap_err();
    assert!(matches!(err, VerifyError::Untrusted { .. }), "{err}");
    assert!(err.to_string().contains("neither the key it starts with"), "{err}");
    // Still self-consistent, and anchored in the key it starts with.
    verify(&t.log(), None, Some(&test_key(1).verifying_key())).unwrap();
    // A signature by some other key in its place is refused outright.
    let other = ed25519_dalek::Signer::sign(&test_key(3), b"anything").to_bytes();
    body.insert("new_key_signature".into(), base64::engine::general_purpose::STANDARD.encode(other).into());
    l[last] = record::seal(&test_key(1), r.seq, r.ts, r.session, r.kind, body, r.prev).unwrap().line().unwrap();
    write_lines(&t.log(), &l);
    let (seq, why) = bad_seq(verify(&t.log(), None, None));
    assert_eq!(seq, last as u64, "{why}");
    assert!(why.contains("new_key_signature"), "{why}");
}

/// A checkpoint of size 0 was taken without checking its signature, and
/// reported as holding: an attacker could put one of their own in place of
/// the real checkpoint, where deleting it would have been reported.
#[test]
fn a_checkpoint_of_size_zero_is_signed_by_the_first_key() {
    let t = Tmp::new("cp-zero");
    make_log(&t, 3);
    let (real, _) = Checkpoint::parse(&std::fs::read_to_string(t.cp()).unwrap()).unwrap();
    let zero = Checkpoint { origin: real.origin.clone(), size: 0, root: audit::merkle::empty_root() };
    std::fs::write(t.cp(), zero.sign(&test_key(3))).unwrap();
    let err = verify(&t.log(), Some(&t.cp()), None).unwrap_err();
    assert!(matches!(err, VerifyError::Checkpoint { .. }), "{err}");
    // Twin: the same checkpoint signed by the log's own key holds.
    std::fs::write(t.cp(), zero.sign(&test_key(1))).unwrap();
    verify(&t.log(), Some(&t.cp()), None).unwrap();
}

#[test]
fn wrong_key_cannot_continue_a_log() {
    let t = Tmp::new("wrongkey");
    make_log(&t, 1);
    let err = AuditLog::open(&t.log(), test_key(5)).unwrap_err();
    assert!(matches!(err, AuditError::KeyMismatch { .. }), "{err}");
}

#[test]
fn structural_kinds_are_reserved_and_bodies_must_be_objects() {
    let t = Tmp::new("reserved");
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    assert!(matches!(log.append(Kind::Header, json!({})), Err(AuditError::ReservedKind(Kind::Header))));
    assert!(matches!(log.append(Kind::Exit, json!([1])), Err(AuditError::BodyNotObject)));
    assert!(matches!(log.append(Kind::Exit, json!({"x": 1.5})), Err(AuditError::Canon(_))));
    log.append(Kind::Exit, json!({"status": 0})).unwrap();
    log.close().unwrap();
    assert_eq!(verify(&t.log(), None, None).unwrap().records, 2);
}

#[test]
fn inclusion_receipt_verifies_offline() {
    let t = Tmp::new("prove");
    make_log(&t, 20);
    let note = std::fs::read_to_string(t.cp()).unwrap();
    let receipt = audit::prove_inclusion(&t.log(), 13, &note).unwrap();
    receipt.verify(&test_key(1).verifying_key()).unwrap();
    assert!(receipt.verify(&test_key(2).verifying_key()).is_err());
    let mut bad = receipt.clone();
    bad.line = lines(&t.log())[12].clone();
    assert!(bad.verify(&test_key(1).verifying_key()).is_err());
    // Consistency between two checkpoints of the same log.
    let (old_cp, _) = Checkpoint::parse(&note).unwrap();
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    log.append(Kind::Exit, json!({"status": 0})).unwrap();
    log.close().unwrap();
    let (new_cp, _) = Checkpoint::parse(&std::fs::read_to_string(t.cp()).unwrap()).unwrap();
    let proof = audit::prove_consistency(&t.log(), old_cp.size, new_cp.size).unwrap();
    audit::merkle::verify_consistency(old_cp.size, new_cp.size, &old_cp.root, &new_cp.root, &proof).unwrap();
}

#[test]
fn garbage_never_panics() {
    let t = Tmp::new("garbage");
    for junk in [
        &b"\n"[..],
        b"{}\n",
        b"\xff\xfe\n",
        b"{\"v\":1}\n",
        b"[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n",
        b"null\n",
        b"",
    ] {
        std::fs::write(t.log(), junk).unwrap();
        let e = verify(&t.log(), None, None).unwrap_err();
        assert_eq!(e.first_bad_seq(), Some(0), "{e}");
    }
    // A writer refuses a damaged log instead of chaining onto it.
    std::fs::write(t.log(), b"{}\n").unwrap();
    assert!(matches!(AuditLog::open(&t.log(), test_key(1)), Err(AuditError::Corrupt { line: 1, .. })));
    // A hostile checkpoint file is an error, not a panic.
    let t2 = Tmp::new("badcp");
    make_log(&t2, 1);
    std::fs::write(t2.cp(), "o\n99999999999999999999999\nAAAA\n\n\u{2014} o AAAA\n").unwrap();
    assert!(verify(&t2.log(), Some(&t2.cp()), None).is_err());
}

/// Child side of the multi-process tests; a no-op unless the parent set the variable.
#[test]
fn child_entry() {
    let Ok(mode) = std::env::var("AUDIT_TEST_CHILD") else { return };
    let log_path = PathBuf::from(std::env::var("AUDIT_TEST_LOG").unwrap());
    match mode.as_str() {
        "writer" => {
            let session = std::env::var("AUDIT_TEST_SESSION").unwrap();
            let opts = LogOptions { session: Some(session), max_batch: 7, ..Default::default() };
            let mut log = AuditLog::open_with(&log_path, test_key(1), opts).unwrap();
            for i in 0..150 {
                log.append(Kind::Verdict, json!({"i": i, "verdict": "allow"})).unwrap();
                if i % 10 == 0 {
                    log.commit().unwrap();
                }
            }
            log.close().unwrap();
        }
        "diskfull" => {
            let mut log = AuditLog::open(&log_path, test_key(1)).unwrap();
            let big = "y".repeat(2000);
            let mut failed = false;
            for i in 0..100 {
                if log.append_durable(Kind::Approval, json!({"i": i, "pad": big, "answer": "allow"})).is_err() {
                    failed = true;
                    break;
                }
            }
            assert!(failed, "the file-size limit must make a durable append fail");
            // Fail closed: once a write failed, nothing more is accepted.
            let again = log.append(Kind::Approval, json!({"answer": "allow"}));
            assert!(matches!(again, Err(AuditError::Failed(_))), "{again:?}");
            println!("CHILD-OK");
        }
        other => panic!("unknown child mode {other}"),
    }
}

fn spawn_child(mode: &str, log: &Path, session: &str) -> Command {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env("AUDIT_TEST_CHILD", mode)
        .env("AUDIT_TEST_LOG", log)
        .env("AUDIT_TEST_SESSION", session)
        // The child's own test-harness summary must not mix into ours.
        .stdout(std::process::Stdio::null());
    c
}

#[test]
fn two_writer_processes_keep_one_linear_chain() {
    let t = Tmp::new("concurrent");
    let mut a = spawn_child("writer", &t.log(), "proc-a").spawn().unwrap();
    let mut b = spawn_child("writer", &t.log(), "proc-b").spawn().unwrap();
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    let r = verify(&t.log(), Some(&t.cp()), Some(&test_key(1).verifying_key())).unwrap();
    assert_eq!(r.records, 301, "one header and 2 x 150 records");
    assert_eq!(r.kinds.get("header"), Some(&1));
    assert_eq!(r.checkpoint.map(|c| c.1), Some(301));
    // Both writers' records are interleaved in one chain.
    let sessions: Vec<String> =
        lines(&t.log()).iter().skip(1).map(|l| Record::parse_line(l.as_bytes()).unwrap().session).collect();
    assert!(sessions.iter().any(|s| s == "proc-a") && sessions.iter().any(|s| s == "proc-b"));
}

#[test]
fn two_handles_in_one_process_keep_one_linear_chain() {
    let t = Tmp::new("threads");
    make_log(&t, 0);
    let handles: Vec<_> = (0..2)
        .map(|n| {
            let p = t.log();
            std::thread::spawn(move || {
                let mut log = AuditLog::open(&p, test_key(1)).unwrap();
                for i in 0..100 {
                    log.append(Kind::Verdict, json!({"t": n, "i": i})).unwrap();
                    if i % 5 == 0 {
                        log.commit().unwrap();
                    }
                }
                log.close().unwrap();
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    assert_eq!(verify(&t.log(), Some(&t.cp()), None).unwrap().records, 201);
}

#[test]
fn sibling_handles_share_one_linear_chain_and_only_between_commits() {
    let t = Tmp::new("sibling");
    make_log(&t, 3);
    let mut a =
        AuditLog::open_with(&t.log(), test_key(1), LogOptions { session: Some("a".into()), ..Default::default() })
            .unwrap();
    let mut b = a.sibling(Some("b".into())).unwrap();
    assert_eq!(b.session(), "b");
    let h = std::thread::spawn(move || {
        for i in 0..100 {
            b.append(Kind::Verdict, json!({"t": "b", "i": i})).unwrap();
            if i % 7 == 0 {
                b.commit().unwrap();
            }
        }
        b.close().unwrap();
    });
    for i in 0..100 {
        a.append(Kind::Verdict, json!({"t": "a", "i": i})).unwrap();
        if i % 5 == 0 {
            a.commit().unwrap();
        }
    }
    // An uncommitted batch holds the lock: commit before waiting for b.
    a.commit().unwrap();
    h.join().unwrap();
    // With a record pending (and the lock held) there is no consistent view to share.
    a.append(Kind::Verdict, json!({"t": "a", "last": true})).unwrap();
    assert!(matches!(a.sibling(None), Err(AuditError::NotBetweenCommits)));
    a.close().unwrap();
    let r = verify(&t.log(), Some(&t.cp()), None).unwrap();
    assert_eq!(r.records, 4 + 201, "{r:?}");
    let sessions: Vec<String> =
        lines(&t.log()).iter().skip(4).map(|l| Record::parse_line(l.as_bytes()).unwrap().session).collect();
    assert!(sessions.iter().any(|s| s == "a") && sessions.iter().any(|s| s == "b"));
}

#[test]
fn full_disk_fails_closed() {
    let t = Tmp::new("diskfull");
    // RLIMIT_FSIZE stands in for a full disk; SIGXFSZ is ignored so write() returns EFBIG.
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 64; exec \"$0\" --exact child_entry --nocapture --test-threads=1")
        .arg(exe)
        .env("AUDIT_TEST_CHILD", "diskfull")
        .env("AUDIT_TEST_LOG", t.log())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("CHILD-OK"), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    // What reached the disk is a valid log: the partial batch was cut off.
    let r = verify(&t.log(), None, None).unwrap();
    assert!(r.records >= 2, "{r:?}");
}

#[test]
fn readers_do_not_hang_on_a_stuck_writer() {
    let t = Tmp::new("stuck");
    make_log(&t, 2);
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    // Holds the exclusive lock (a batch is open) and never commits during the read.
    log.append(Kind::Exec, json!({"path": "/bin/true"})).unwrap();
    let started = std::time::Instant::now();
    let r = verify(&t.log(), Some(&t.cp()), None).unwrap();
    assert_eq!(r.records, 3, "only committed records are visible");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    log.close().unwrap();
    assert_eq!(verify(&t.log(), Some(&t.cp()), None).unwrap().records, 4);
}

#[test]
fn replaced_log_file_stops_the_writer() {
    let t = Tmp::new("replaced");
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    log.append_durable(Kind::Exec, json!({"path": "/bin/true"})).unwrap();
    // Someone moves the log away and plants an empty file in its place.
    std::fs::rename(t.log(), t.0.join("moved.log")).unwrap();
    std::fs::write(t.log(), b"").unwrap();
    let err = log.append_durable(Kind::Exec, json!({"path": "/bin/false"})).unwrap_err();
    assert!(matches!(err, AuditError::Replaced { .. }), "{err}");
    assert!(matches!(log.append(Kind::Exit, json!({})), Err(AuditError::Failed(_))));
}

#[test]
fn a_refused_log_is_left_exactly_as_found() {
    let t = Tmp::new("asfound");
    make_log(&t, 5);
    let mut l = lines(&t.log());
    l.truncate(4);
    let mut bytes = (l.join("\n") + "\n").into_bytes();
    bytes.extend_from_slice(b"{\"body\":{\"half");
    std::fs::write(t.log(), &bytes).unwrap();
    // Truncated below its checkpoint and torn: the writer refuses, and the
    // evidence (including the torn bytes) stays for the investigation.
    assert!(matches!(AuditLog::open(&t.log(), test_key(1)), Err(AuditError::CheckpointAhead { .. })));
    assert_eq!(std::fs::read(t.log()).unwrap(), bytes);
}

#[test]
fn crash_while_writing_the_header_is_recovered() {
    let t = Tmp::new("tornheader");
    std::fs::write(t.log(), b"{\"body\":{\"algor").unwrap();
    let log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    log.close().unwrap();
    let r = verify(&t.log(), Some(&t.cp()), None).unwrap();
    assert_eq!(r.recoveries, vec![(1, 15)]);
    assert_eq!(r.kinds.get("header"), Some(&1));
}

fn state(t: &Tmp) -> PathBuf {
    t.0.join("audit.log.state")
}

/// Appends `n` more verdicts and closes.
fn append_more(t: &Tmp, n: usize) {
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    for i in 0..n {
        log.append(Kind::Verdict, json!({"syscall": "openat", "path": format!("/w/more{i}"), "verdict": "allow"}))
            .unwrap();
    }
    log.close().unwrap();
}

#[test]
fn writers_resume_from_the_state_cache_and_the_log_still_verifies() {
    let t = Tmp::new("resume");
    make_log(&t, 50);
    assert!(state(&t).exists(), "a checkpoint leaves a state cache beside it");
    append_more(&t, 7);
    append_more(&t, 3);
    let report = verify(&t.log(), Some(&t.cp()), None).unwrap();
    assert_eq!(report.records, 1 + 50 + 10);
    // Proof that the next writer did not reread the log: a byte changed in an
    // early record goes unnoticed by it (reading whole, it would refuse)...
    let mut l = lines(&t.log());
    l[5] = l[5].replacen("/w/f", "/w/g", 1);
    write_lines(&t.log(), &l);
    append_more(&t, 1);
    // ...and `verify`, which never uses the cache, finds it.
    let (seq, _) = bad_seq(verify(&t.log(), Some(&t.cp()), None));
    assert_eq!(seq, 5);
}

/// The state cache's JSON line (its first line).
fn read_state(t: &Tmp) -> serde_json::Value {
    let text = std::fs::read_to_string(state(t)).unwrap();
    serde_json::from_str(text.lines().next().unwrap()).unwrap()
}

/// Writes a state cache as a writer does: the JSON line, then its SHA-256,
/// so that only the content is forged, not the framing.
fn write_state(t: &Tmp, v: &serde_json::Value) {
    let body = v.to_string();
    let sum: String = record::sha256(body.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(state(t), format!("{body}\n{sum}\n")).unwrap();
}

#[test]
fn a_forged_or_stale_state_cache_is_ignored() {
    let t = Tmp::new("resume-forged");
    make_log(&t, 20);
    // A state whose last hash matches no record: ignored, the log is read whole.
    let mut v = read_state(&t);
    v["last_hash"] = json!("11".repeat(32));
    write_state(&t, &v);
    append_more(&t, 2);
    verify(&t.log(), Some(&t.cp()), None).unwrap();
    // A state pointing past the end of the log (a log restored from backup): ignored too.
    let mut v = read_state(&t);
    v["bytes"] = json!(u64::MAX / 2);
    write_state(&t, &v);
    append_more(&t, 2);
    let report = verify(&t.log(), Some(&t.cp()), None).unwrap();
    assert_eq!(report.records, 1 + 20 + 4);
    // A write torn by a crash: new bytes over an older, longer copy. The
    // frontier is forged so that using it would break the next checkpoint.
    let mut v = read_state(&t);
    v["frontier"][0][1] = json!("22".repeat(32));
    let body = v.to_string();
    let mut torn = std::fs::read(state(&t)).unwrap();
    torn.extend_from_slice(b"padding from an older copy");
    torn[..body.len()].copy_from_slice(body.as_bytes());
    std::fs::write(state(&t), torn).unwrap();
    append_more(&t, 2);
    verify(&t.log(), Some(&t.cp()), None).unwrap();
    // Garbage: ignored.
    std::fs::write(state(&t), "not json").unwrap();
    append_more(&t, 1);
    verify(&t.log(), Some(&t.cp()), None).unwrap();
}

#[test]
fn a_state_cache_naming_a_forgers_key_is_not_built_upon() {
    // A local forger (no key) appends a record signed with a key of theirs
    // and rewrites the cache to name that key for its seq, the real one
    // after it; they remove the checkpoint that would betray the append.
    let t = Tmp::new("resume-key");
    make_log(&t, 5);
    let mut l = lines(&t.log());
    let last = Record::parse_line(l.last().unwrap().as_bytes()).unwrap();
    let forged = record::seal(
        &test_key(9),
        last.seq + 1,
        "2026-01-01T00:00:00.000000Z".into(),
        "x".into(),
        Kind::Exit,
        json!({"status": 0, "note": "forged"}).as_object().unwrap().clone(),
        last.hash,
    )
    .unwrap();
    l.push(forged.line().unwrap());
    write_lines(&t.log(), &l);
    let _ = std::fs::remove_file(t.cp());
    let _ = std::fs::remove_file(t.0.join(".audit.log.checkpoint.spare"));
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let mut v = read_state(&t);
    let next = forged.seq + 1;
    v["bytes"] = json!(std::fs::metadata(t.log()).unwrap().len());
    v["next_seq"] = json!(next);
    v["last_hash"] = json!(hex(&forged.hash));
    v["keys"] =
        json!([[0, hex(test_key(9).verifying_key().as_bytes())], [next, hex(test_key(1).verifying_key().as_bytes())]]);
    // The frontier as the log's own would be: one more leaf, the forged one.
    let mut frontier = audit::merkle::Frontier::default();
    for line in &l {
        frontier.push(audit::merkle::leaf_hash(line.as_bytes()));
    }
    let (size, stack) = frontier.parts();
    v["frontier_size"] = json!(size);
    v["frontier"] = json!(stack.iter().map(|(h, x)| json!([h, hex(x)])).collect::<Vec<_>>());
    write_state(&t, &v);
    // The writer reads the log whole instead, and refuses the forged record.
    let Err(e) = AuditLog::open(&t.log(), test_key(1)) else { panic!("a forged tail was built upon") };
    assert!(e.to_string().contains("signature"), "{e}");
    assert_eq!(lines(&t.log()).len(), l.len(), "nothing was written after it");
}

#[test]
fn a_lock_held_too_long_fails_closed_and_a_released_one_is_taken() {
    let t = Tmp::new("lockwait");
    let mut log = AuditLog::open(&t.log(), test_key(1)).unwrap();
    log.append(Kind::Verdict, json!({"n": 1})).unwrap();
    log.commit().unwrap();
    // A stuck writer: another open file description holding the lock.
    let holder = std::fs::OpenOptions::new().read(true).write(true).open(t.0.join("audit.log.lock")).unwrap();
    holder.lock().unwrap();
    let opts = || LogOptions { lock_wait: std::time::Duration::from_millis(300), ..LogOptions::default() };
    let started = std::time::Instant::now();
    let err = AuditLog::open_with(&t.log(), test_key(1), opts()).map(drop).unwrap_err();
    assert!(started.elapsed() >= std::time::Duration::from_millis(300));
    match &err {
        AuditError::Lock { source, .. } => assert_eq!(source.kind(), std::io::ErrorKind::TimedOut, "{err}"),
        other => panic!("expected a lock timeout, got {other}"),
    }
    assert!(err.to_string().contains("audit.log.lock"), "the error names the lock: {err}");
    // A handle opened while the lock was free times out the same way when it appends.
    holder.unlock().unwrap();
    let mut waiting = AuditLog::open_with(&t.log(), test_key(1), opts()).unwrap();
    holder.lock().unwrap();
    assert!(matches!(waiting.append(Kind::Verdict, json!({"n": 2})), Err(AuditError::Lock { .. })));
    drop(waiting);
    // Released while a writer waits: the writer goes on.
    let t2 = std::thread::spawn(move || {
        std::thread::sleep(std::time::Duration::from_millis(50));
        holder.unlock().unwrap();
    });
    let mut log = AuditLog::open_with(&t.log(), test_key(1), opts()).unwrap();
    t2.join().unwrap();
    log.append(Kind::Verdict, json!({"n": 3})).unwrap();
    log.close().unwrap();
    verify(&t.log(), Some(&t.cp()), None).unwrap();
}

/// A writer checks the record it chains onto, and the checkpoint, before it
/// appends. For its own key it checks by signing again and comparing (the
/// same bytes always get the same Ed25519 signature); a signature by that
/// key over other bytes, well formed and valid for those, must still be
/// refused, as verifying would refuse it.
#[test]
fn a_writer_refuses_a_tail_or_checkpoint_signed_over_other_bytes() {
    use ed25519_dalek::Signer;
    let b64 = base64::engine::general_purpose::STANDARD;
    let other = test_key(1).sign(b"other bytes").to_bytes();
    let t = Tmp::new("forgedsig");
    make_log(&t, 3);
    let clean = lines(&t.log());
    AuditLog::open(&t.log(), test_key(1)).unwrap().close().unwrap();
    write_lines(&t.log(), &clean);

    let mut forged = clean.clone();
    let mut last: serde_json::Value = serde_json::from_str(forged.last().unwrap()).unwrap();
    last["sig"] = json!(b64.encode(other));
    *forged.last_mut().unwrap() = serde_json::to_string(&last).unwrap();
    write_lines(&t.log(), &forged);
    let err = AuditLog::open(&t.log(), test_key(1)).unwrap_err();
    assert!(err.to_string().contains("signature does not verify"), "{err}");
    write_lines(&t.log(), &clean);

    let note = std::fs::read_to_string(t.cp()).unwrap();
    let (head, sig_line) = note.trim_end().rsplit_once('\n').unwrap();
    let (name, blob) = sig_line.rsplit_once(' ').unwrap();
    let mut blob = b64.decode(blob).unwrap();
    blob[4..].copy_from_slice(&other);
    std::fs::write(t.cp(), format!("{head}\n{name} {}\n", b64.encode(&blob))).unwrap();
    let err = AuditLog::open(&t.log(), test_key(1)).unwrap_err();
    let bad_signature = audit::checkpoint::CheckpointError::BadSignature;
    assert!(matches!(&err, AuditError::Checkpoint { source, .. } if *source == bad_signature), "{err}");
    std::fs::write(t.cp(), &note).unwrap();
    AuditLog::open(&t.log(), test_key(1)).unwrap().close().unwrap();
}
