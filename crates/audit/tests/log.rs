//! The log through its public API: tampering of every kind is caught at the first bad
//! record, and honest logs verify across rotation, reopening and concurrent writers.

// Helpers outside #[test] functions fail the test on setup errors, exactly like the tests.
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use gatehouse_audit::{
    AuditError, AuditEvent, AuditLog, AuditOptions, FsyncPolicy, ProblemKind, read_records, session_records, sessions,
    verify,
};

fn opts(segment_max_bytes: u64) -> AuditOptions {
    AuditOptions {
        fsync: FsyncPolicy::Always,
        segment_max_bytes,
    }
}

fn event(n: u64) -> AuditEvent {
    AuditEvent::TargetError {
        session: format!("sess-{n}"),
        message: format!("error number {n}"),
    }
}

async fn write(dir: &Path, opts: AuditOptions, n: u64) -> AuditLog {
    let log = AuditLog::open(dir, opts).unwrap();
    for i in 1..=n {
        log.append(event(i)).await.unwrap();
    }
    log
}

fn segment(dir: &Path, no: u64) -> PathBuf {
    dir.join(format!("segment-{no:06}.jsonl"))
}

fn lines(path: &Path) -> Vec<String> {
    fs::read_to_string(path).unwrap().lines().map(str::to_owned).collect()
}

fn put_lines(path: &Path, lines: &[String]) {
    fs::write(path, lines.iter().map(|l| format!("{l}\n")).collect::<String>()).unwrap();
}

/// A fresh 10-record single-segment log, writer closed.
async fn ten(dir: &Path) -> PathBuf {
    drop(write(dir, AuditOptions::default(), 10).await);
    segment(dir, 1)
}

#[tokio::test]
async fn untouched_log_verifies_across_rotation_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = write(dir.path(), opts(1024), 30).await;
    let head = log.head();
    assert_eq!(head.0, 30);
    drop(log);
    assert!(segment(dir.path(), 3).exists(), "small segments must rotate");

    let log = AuditLog::open(dir.path(), opts(1024)).unwrap();
    assert_eq!(log.head(), head, "reopen resumes the chain");
    assert_eq!(log.append(event(31)).await.unwrap(), 31);
    drop(log);

    let report = verify(dir.path()).unwrap();
    assert_eq!(report.problem, None);
    assert_eq!(report.records, 31);
    assert_eq!(report.head_file.as_ref().map(|h| h.0), Some(31));
    assert_eq!(report.head, report.head_file.unwrap());
    assert!(report.segments >= 3);
    for (no, path) in [(1, segment(dir.path(), 1)), (2, segment(dir.path(), 2))] {
        let size = fs::metadata(path).unwrap().len();
        assert!(size <= 1024, "segment {no} is {size} bytes");
    }
    let records: Vec<_> = read_records(dir.path()).unwrap().map(Result::unwrap).collect();
    assert_eq!(
        records.iter().map(|r| r.seq).collect::<Vec<_>>(),
        (1..=31).collect::<Vec<_>>()
    );
    for pair in records.windows(2) {
        assert_eq!(pair[1].prev, pair[0].hash);
    }
    assert_eq!(records[4].event, event(5));
}

#[tokio::test]
async fn edited_byte_is_reported_at_its_record() {
    let dir = tempfile::tempdir().unwrap();
    let seg = ten(dir.path()).await;
    let mut l = lines(&seg);
    l[4] = l[4].replace("error number 5", "error number 6");
    put_lines(&seg, &l);
    let p = verify(dir.path()).unwrap().problem.unwrap();
    assert_eq!(
        (p.kind, p.seq, p.line, p.segment.as_str()),
        (ProblemKind::Altered, Some(5), 5, "segment-000001.jsonl")
    );
    assert!(p.message.contains("segment-000001.jsonl line 5"), "{}", p.message);
}

#[tokio::test]
async fn deleted_record_is_a_gap() {
    let dir = tempfile::tempdir().unwrap();
    let seg = ten(dir.path()).await;
    let mut l = lines(&seg);
    l.remove(6);
    put_lines(&seg, &l);
    let p = verify(dir.path()).unwrap().problem.unwrap();
    assert_eq!(
        (p.kind, p.seq, p.line),
        (ProblemKind::Removed { first: 7, last: 7 }, Some(7), 7)
    );
}

#[tokio::test]
async fn swapped_records_are_reordered() {
    let dir = tempfile::tempdir().unwrap();
    let seg = ten(dir.path()).await;
    let mut l = lines(&seg);
    l.swap(2, 3);
    put_lines(&seg, &l);
    let p = verify(dir.path()).unwrap().problem.unwrap();
    assert_eq!((p.kind, p.seq, p.line), (ProblemKind::Reordered, Some(4), 3));
}

#[tokio::test]
async fn inserted_record_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let seg = ten(dir.path()).await;
    let mut l = lines(&seg);
    let copy = l[1].clone();
    l.insert(8, copy);
    put_lines(&seg, &l);
    let p = verify(dir.path()).unwrap().problem.unwrap();
    assert_eq!((p.kind, p.seq, p.line), (ProblemKind::Inserted, Some(2), 9));
}

#[tokio::test]
async fn truncated_tail_is_caught_by_head_and_refused_on_open() {
    let dir = tempfile::tempdir().unwrap();
    let seg = ten(dir.path()).await;
    let l = lines(&seg);
    put_lines(&seg, &l[..7]);
    let p = verify(dir.path()).unwrap().problem.unwrap();
    assert_eq!(
        (p.kind, p.seq, p.line),
        (ProblemKind::Truncated { head_seq: 10 }, Some(8), 8)
    );

    let err = AuditLog::open(dir.path(), AuditOptions::default()).unwrap_err();
    let AuditError::Corrupt(p) = err else {
        panic!("expected Corrupt, got {err}")
    };
    assert_eq!(p.kind, ProblemKind::Truncated { head_seq: 10 });
}

#[tokio::test]
async fn open_refuses_a_tail_that_does_not_verify() {
    let dir = tempfile::tempdir().unwrap();
    let seg = ten(dir.path()).await;
    let mut l = lines(&seg);
    l[9] = l[9].replace("sess-10", "sess-11");
    put_lines(&seg, &l);
    let err = AuditLog::open(dir.path(), AuditOptions::default()).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("segment-000001.jsonl line 10") && msg.contains("seq 10"),
        "{msg}"
    );
}

#[tokio::test]
async fn deleted_middle_segment_is_named() {
    let dir = tempfile::tempdir().unwrap();
    drop(write(dir.path(), opts(600), 20).await);
    assert!(segment(dir.path(), 4).exists());
    let first_of_three: u64 = lines(&segment(dir.path(), 3))[0][7..]
        .split(',')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    fs::remove_file(segment(dir.path(), 3)).unwrap();
    let p = verify(dir.path()).unwrap().problem.unwrap();
    assert!(
        matches!(p.kind, ProblemKind::Removed { first, .. } if first == first_of_three),
        "{p:?}"
    );
    assert_eq!(
        (p.seq, p.segment.as_str(), p.line),
        (Some(first_of_three), "segment-000004.jsonl", 1)
    );
    assert!(p.message.contains("segment-000003.jsonl"), "{}", p.message);
}

#[tokio::test]
async fn torn_unacknowledged_line_is_dropped_on_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let seg = ten(dir.path()).await;
    let mut data = fs::read(&seg).unwrap();
    data.extend_from_slice(br#"{"seq":11,"time":"2026"#);
    fs::write(&seg, data).unwrap();
    // Readers treat it as a write in progress.
    assert_eq!(verify(dir.path()).unwrap().problem, None);
    let log = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    assert_eq!(log.append(event(11)).await.unwrap(), 11);
    drop(log);
    let report = verify(dir.path()).unwrap();
    assert_eq!((report.records, report.problem), (11, None));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_make_a_gap_free_chain() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), opts(8 * 1024)).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..16 {
        let log = log.clone();
        tasks.spawn(async move {
            let mut seqs = Vec::new();
            for i in 0..40 {
                seqs.push(log.append(event(t * 100 + i)).await.unwrap());
            }
            seqs
        });
    }
    let mut seqs: Vec<u64> = tasks.join_all().await.into_iter().flatten().collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=640).collect::<Vec<_>>());
    assert_eq!(log.head().0, 640);
    let stats = log.write_latency();
    assert_eq!(stats.count, 640);
    assert!(stats.max_us > 0 && stats.sum_us >= stats.max_us);
    drop(log);
    let report = verify(dir.path()).unwrap();
    assert_eq!((report.records, report.problem), (640, None));
}

#[tokio::test(flavor = "current_thread")]
async fn group_commit_acknowledges_after_the_write_and_fsyncs_within_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let group = AuditOptions {
        fsync: FsyncPolicy::Group {
            max_delay: Duration::from_millis(500),
        },
        ..AuditOptions::default()
    };
    let log = AuditLog::open(dir.path(), group).unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..50 {
        let log = log.clone();
        tasks.spawn(async move { log.append(event(i)).await.unwrap() });
    }
    let mut seqs = tasks.join_all().await;
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=50).collect::<Vec<_>>());
    // Acknowledged once written: the fsync (and HEAD) follow within max_delay, not before.
    assert_eq!(log.write_latency().batches, 0, "acknowledged before the fsync");
    let head_file = || std::fs::read_to_string(dir.path().join("HEAD")).unwrap_or_default();
    assert!(
        !head_file().contains("\"seq\":50"),
        "HEAD never runs ahead of the fsync"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.write_latency().batches == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(log.write_latency().batches, 1, "all 50 appends share one fsync");
    assert!(head_file().contains("\"seq\":50"), "{}", head_file());
    assert_eq!(verify(dir.path()).unwrap().problem, None);

    // With `Always`, appends awaited one by one each get their own fsync.
    drop(log);
    let log = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    for i in 0..3 {
        log.append(event(i)).await.unwrap();
    }
    assert_eq!(log.write_latency().batches, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_while_writing_sees_no_problem() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), opts(4096)).unwrap();
    let writer = {
        let log = log.clone();
        tokio::spawn(async move {
            for i in 0..400 {
                log.append(event(i)).await.unwrap();
            }
        })
    };
    let path = dir.path().to_owned();
    let checks = tokio::task::spawn_blocking(move || {
        let mut runs = 0;
        loop {
            let report = verify(&path).unwrap();
            assert_eq!(report.problem, None, "verify during writes");
            assert!(report.records >= report.head_file.map_or(0, |h| h.0));
            runs += 1;
            if report.records == 400 {
                return runs;
            }
        }
    });
    writer.await.unwrap();
    assert!(checks.await.unwrap() >= 1);
}

#[tokio::test]
async fn one_writer_per_directory() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    assert!(matches!(
        AuditLog::open(dir.path(), AuditOptions::default()),
        Err(AuditError::Locked(_))
    ));
    drop(log);
    AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
}

#[test]
fn append_blocking_works_without_a_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    assert_eq!(log.append_blocking(event(1)).unwrap(), 1);
    assert_eq!(log.append_blocking(event(2)).unwrap(), 2);
    assert!(log.healthy() && log.last_error().is_none());
}

#[tokio::test]
async fn sessions_and_their_records_are_summarised() {
    use gatehouse_audit::Actor;
    use gatehouse_identity::{Identity, PrincipalKind};

    let id = Identity {
        issuer: "https://idp.example".into(),
        subject: "agent-7".into(),
        kind: PrincipalKind::Agent,
        email: None,
        name: Some("Bot".into()),
        groups: vec!["ci".into()],
        owner: Some("ann@example.com".into()),
        expires_at: std::time::SystemTime::now(),
    };
    let actor = Actor::from(&id);
    assert_eq!(actor.to_string(), "agent-7 (agent of ann@example.com)");
    let decided = |session: &str, request, decision: &str| AuditEvent::RequestDecided {
        session: session.into(),
        request,
        action: "Query".into(),
        attributes: serde_json::json!({"statement": "select"}),
        decision: decision.into(),
        policies: vec![],
        reason: None,
    };
    let started = |session: &str| AuditEvent::SessionStarted {
        session: session.into(),
        actor: actor.clone(),
        protocol: "postgres".into(),
        target: "orders".into(),
        client_addr: "127.0.0.1:5000".into(),
        policies: vec!["base".into()],
    };
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    for e in [
        started("a"),
        started("b"),
        decided("a", 1, "allow"),
        decided("a", 2, "deny"),
        decided("b", 1, "needs_approval"),
        AuditEvent::ApprovalRequested {
            approval: "ap-1".into(),
            session: "b".into(),
            request: 1,
            requester: actor.clone(),
            target: "orders".into(),
            action: "Query".into(),
            summary: "delete".into(),
            request_sha256: "00".into(),
            approver_group: "dba".into(),
            approvals_required: 1,
            expires_at: "2026-11-27T06:00:00Z".into(),
        },
        AuditEvent::ApprovalExpired {
            approval: "ap-1".into(),
        },
        AuditEvent::ApprovalExpired {
            approval: "other".into(),
        },
        AuditEvent::SessionEnded {
            session: "a".into(),
            reason: "client closed".into(),
            requests: 2,
            duration_ms: 5,
        },
    ] {
        assert_eq!(e.session().is_some(), !matches!(e, AuditEvent::ApprovalExpired { .. }));
        log.append(e).await.unwrap();
    }
    let list = sessions(dir.path()).unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(
        (list[0].session.as_str(), list[0].requests, list[0].denied),
        ("a", 2, 1)
    );
    assert_eq!(list[0].outcome, "client closed");
    assert!(list[0].ended.is_some());
    assert_eq!((list[1].outcome.as_str(), list[1].ended.as_deref()), ("active", None));
    assert_eq!(list[1].actor, "agent-7 (agent of ann@example.com)");

    let b: Vec<_> = session_records(dir.path(), "b")
        .unwrap()
        .into_iter()
        .map(|r| r.event.kind())
        .collect();
    assert_eq!(
        b,
        [
            "session_started",
            "request_decided",
            "approval_requested",
            "approval_expired"
        ]
    );
    let json = serde_json::to_value(read_records(dir.path()).unwrap().next().unwrap().unwrap()).unwrap();
    assert_eq!(
        (json["event"].as_str(), json["actor"]["kind"].as_str()),
        (Some("session_started"), Some("Agent"))
    );
}

#[tokio::test]
async fn a_lost_final_newline_is_refused_not_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let seg = ten(dir.path()).await;
    let mut data = fs::read(&seg).unwrap();
    data.pop();
    fs::write(&seg, &data).unwrap();
    let err = AuditLog::open(dir.path(), AuditOptions::default()).unwrap_err();
    assert!(
        matches!(&err, AuditError::Corrupt(p) if p.kind == ProblemKind::Truncated { head_seq: 10 }),
        "{err}"
    );
    assert_eq!(fs::read(&seg).unwrap(), data, "a refused log is left as found");
}
