use std::collections::BTreeMap;

use super::*;
use crate::Actor;
use gatehouse_identity::PrincipalKind;

fn actor() -> Actor {
    Actor {
        issuer: "https://idp.example".into(),
        subject: "u1".into(),
        kind: PrincipalKind::User,
        email: Some("ann@example.com".into()),
        groups: vec!["dba".into()],
        owner: None,
    }
}

fn event(i: u64) -> AuditEvent {
    match i % 3 {
        0 => AuditEvent::RequestDecided {
            session: format!("s-{i}"),
            request: i,
            action: "Query".into(),
            attributes: serde_json::json!({"sql": "select 1", "ratio": 0.1, "n": i}),
            decision: "allow".into(),
            policies: vec!["p1".into()],
            reason: None,
        },
        1 => AuditEvent::MaskingApplied {
            session: format!("s-{i}"),
            request: i,
            counts: BTreeMap::from([("email".into(), 2)]),
        },
        _ => AuditEvent::CredentialIssued {
            credential_id: format!("c-{i}"),
            actor: actor(),
            protocol: "ssh".into(),
            target: "host \"a\"\n".into(),
            expires_at: "2026-01-01T00:00:00Z".into(),
        },
    }
}

fn log(n: u64) -> Vec<String> {
    let mut prev = GENESIS.to_owned();
    (1..=n)
        .map(|seq| {
            let (line, hash) = seal(seq, "2026-11-27T04:00:00.000Z", &prev, &event(seq)).unwrap();
            prev = hash;
            line
        })
        .collect()
}

fn run(lines: &[String], head: Option<(u64, &str)>) -> Result<(u64, String), VerifyProblem> {
    let mut chain = Chain::new();
    if let Some((s, h)) = head {
        chain.expect_head(s, h);
    }
    for (i, l) in lines.iter().enumerate() {
        chain.push("seg", i + 1, l)?;
    }
    chain.finish("seg", lines.len() + 1)
}

fn hash_of(line: &str) -> String {
    check_line(line).unwrap().hash
}

#[test]
fn sealed_lines_round_trip_and_chain() {
    let lines = log(6);
    let (seq, hash) = run(&lines, Some((6, &hash_of(&lines[5])))).unwrap();
    assert_eq!((seq, hash.clone()), (6, hash_of(&lines[5])));
    let r = check_line(&lines[2]).unwrap();
    assert_eq!(r.event, event(3));
    assert_eq!(r.prev, hash_of(&lines[1]));
    // The hash is of the line without its hash member, exactly as documented.
    let unhashed = lines[2].replacen(&format!("\"hash\":\"{}\",", r.hash), "", 1);
    assert_eq!(sha256_hex(unhashed.as_bytes()), r.hash);
    assert_eq!(serde_json::from_str::<Record>(&lines[2]).unwrap(), r);
    assert_eq!(run(&[], None).unwrap(), (0, GENESIS.to_owned()));
}

#[test]
fn every_single_byte_edit_is_detected() {
    let lines = log(4);
    let target = 2;
    let bytes = lines[target].as_bytes().to_vec();
    for i in 0..bytes.len() {
        let mut edited = bytes.clone();
        edited[i] = if edited[i] == b'a' { b'b' } else { b'a' };
        let mut tampered = lines.clone();
        tampered[target] = String::from_utf8_lossy(&edited).into_owned();
        let p = run(&tampered, None).expect_err(&format!("edit at byte {i} went unnoticed"));
        assert_eq!(p.line, target + 1, "byte {i}: {p:?}");
    }
}

#[test]
fn edit_is_altered_at_that_record() {
    let mut lines = log(5);
    lines[2] = lines[2].replacen("s-3", "s-9", 1);
    let p = run(&lines, None).unwrap_err();
    assert_eq!((p.kind, p.seq, p.line), (ProblemKind::Altered, Some(3), 3));
    assert!(
        p.message.contains("seg line 3") && p.message.contains("seq 3"),
        "{}",
        p.message
    );
}

#[test]
fn deletion_is_removed_gap() {
    let mut lines = log(6);
    lines.remove(2);
    lines.remove(2);
    let p = run(&lines, None).unwrap_err();
    assert_eq!(
        (p.kind, p.seq, p.line),
        (ProblemKind::Removed { first: 3, last: 4 }, Some(3), 3)
    );
    let mut first_gone = log(3);
    first_gone.remove(0);
    assert_eq!(
        run(&first_gone, None).unwrap_err().kind,
        ProblemKind::Removed { first: 1, last: 1 }
    );
}

#[test]
fn swaps_are_reordered_at_the_first_out_of_place_record() {
    let mut adjacent = log(6);
    adjacent.swap(3, 4);
    let p = run(&adjacent, None).unwrap_err();
    assert_eq!((p.kind, p.seq, p.line), (ProblemKind::Reordered, Some(5), 4));
    let mut distant = log(8);
    distant.swap(1, 6);
    let p = run(&distant, None).unwrap_err();
    assert_eq!((p.kind, p.seq, p.line), (ProblemKind::Reordered, Some(7), 2));
}

#[test]
fn insertions_are_detected() {
    let mut copy = log(6);
    let dup = copy[1].clone();
    copy.insert(4, dup);
    let p = run(&copy, None).unwrap_err();
    assert_eq!((p.kind, p.seq, p.line), (ProblemKind::Inserted, Some(2), 5));

    // A well-formed forged record that does not chain.
    let mut forged = log(6);
    let (line, _) = seal(4, "2026-11-27T04:00:00.000Z", GENESIS, &event(99)).unwrap();
    forged.insert(3, line);
    let p = run(&forged, None).unwrap_err();
    assert_eq!((p.kind, p.seq, p.line), (ProblemKind::Altered, Some(4), 4));
}

#[test]
fn head_ahead_is_truncation_and_head_mismatch_is_alteration() {
    let lines = log(6);
    let head = hash_of(&lines[5]);
    let p = run(&lines[..4], Some((6, &head))).unwrap_err();
    assert_eq!(
        (p.kind, p.seq, p.line),
        (ProblemKind::Truncated { head_seq: 6 }, Some(5), 5)
    );
    let p = run(&lines, Some((3, &head))).unwrap_err();
    assert_eq!((p.kind, p.seq), (ProblemKind::Altered, Some(3)));
    // Records past the head are fine: the writer may be ahead of a reader.
    run(&lines, Some((4, &hash_of(&lines[3])))).unwrap();
}

#[test]
fn garbage_and_non_canonical_lines_are_rejected() {
    let mut lines = log(3);
    lines[1] = "not json".into();
    assert_eq!(run(&lines, None).unwrap_err().kind, ProblemKind::Unparseable);
    // Same content, re-serialised with a different layout: the hash is over bytes.
    let mut lines = log(3);
    let v: serde_json::Value = serde_json::from_str(&lines[1]).unwrap();
    lines[1] = serde_json::to_string_pretty(&v).unwrap().replace('\n', "");
    let p = run(&lines, None).unwrap_err();
    assert_eq!((p.kind, p.line), (ProblemKind::Altered, 2));
}

#[test]
fn resume_anywhere_checks_from_the_first_record_given() {
    let lines = log(6);
    let mut chain = Chain::resume_anywhere();
    for (i, l) in lines[3..].iter().enumerate() {
        chain.push("seg", i + 1, l).unwrap();
    }
    assert_eq!(chain.finish("seg", 4).unwrap().0, 6);
}

#[test]
fn extreme_seqs_do_not_panic() {
    for seq in [0, u64::MAX - 1, u64::MAX] {
        let (line, _) = seal(seq, "t", GENESIS, &event(1)).unwrap();
        let mut chain = Chain::resume_anywhere();
        let ok = chain.push("seg", 1, &line).is_ok();
        assert_eq!(ok, seq != u64::MAX, "seq {seq}");
        let _ = chain.finish("seg", 2);
        assert!(run(&[line], None).is_err(), "seq {seq} cannot start a log");
    }
}
