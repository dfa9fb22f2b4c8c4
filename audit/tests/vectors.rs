//! The worked example of docs/AUDIT.md §9, pinned so the document and the
//! code cannot drift apart. A third-party verifier can use the same bytes.

use audit::chain::header_body;
use audit::checkpoint::Checkpoint;
use audit::merkle;
use audit::record::{self, Kind, Record, ZERO_HASH};
use ed25519_dalek::SigningKey;
use serde_json::json;

fn example() -> (String, String, String) {
    let key = SigningKey::from_bytes(&[1u8; 32]);
    let h = record::seal(
        &key,
        0,
        "2026-01-01T00:00:00.000000Z".into(),
        "doc".into(),
        Kind::Header,
        header_body("example.org/audit", &key.verifying_key()),
        ZERO_HASH,
    )
    .unwrap();
    let body = json!({"syscall": "openat", "path": "/etc/shadow\n\u{1b}[0m", "verdict": "deny"});
    let v = record::seal(
        &key,
        1,
        "2026-01-01T00:00:01.000000Z".into(),
        "doc".into(),
        Kind::Verdict,
        body.as_object().unwrap().clone(),
        h.hash,
    )
    .unwrap();
    let (l0, l1) = (h.line().unwrap(), v.line().unwrap());
    let root = merkle::root(&[merkle::leaf_hash(l0.as_bytes()), merkle::leaf_hash(l1.as_bytes())]);
    let cp = Checkpoint { origin: "example.org/audit".into(), size: 2, root }.sign(&key);
    (l0, l1, cp)
}

#[test]
fn documented_vector() {
    let (l0, l1, cp) = example();
    if std::env::var_os("PRINT_VECTOR").is_some() {
        println!("{l0}\n{l1}\n---\n{cp}---");
        let r = Record::parse_line(l1.as_bytes()).unwrap();
        println!("hash input 1: {}", r.hash_input().unwrap());
    }
    let doc = include_str!("../../docs/AUDIT.md");
    for piece in [&l0, &l1] {
        assert!(doc.contains(piece.as_str()), "docs/AUDIT.md must contain the example line {piece}");
    }
    assert!(doc.contains(cp.as_str()), "docs/AUDIT.md must contain the example checkpoint");
}
