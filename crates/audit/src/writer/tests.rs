use super::*;
use crate::verify;

fn event(n: u64) -> AuditEvent {
    AuditEvent::PolicyReloaded {
        generation: n,
        policies: 3,
    }
}

#[tokio::test]
async fn write_failure_fails_closed_and_loses_nothing_acknowledged() {
    write_failure_fails_closed(AuditOptions::default()).await;
}

#[tokio::test]
async fn write_failure_fails_closed_with_group_commit_too() {
    write_failure_fails_closed(AuditOptions {
        fsync: FsyncPolicy::Group {
            max_delay: std::time::Duration::from_millis(5),
        },
        ..AuditOptions::default()
    })
    .await;
}

async fn write_failure_fails_closed(opts: AuditOptions) {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), opts).unwrap();
    assert_eq!(log.append(event(1)).await.unwrap(), 1);
    // With group commit HEAD follows within the delay.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while log.head().0 != 1 && std::time::Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let head = log.head();
    assert_eq!(head.0, 1);

    // A real device that fails every write with ENOSPC.
    log.redirect_segment(Path::new("/dev/full"));
    let err = log.append(event(2)).await.unwrap_err();
    assert!(matches!(err, AuditError::Unhealthy(_)), "{err}");
    assert!(!log.healthy());
    let why = log.last_error().unwrap();
    assert!(why.contains("cannot write segment-000001.jsonl"), "{why}");
    // Later appends are refused without reaching the disk, async or blocking.
    assert!(matches!(log.append(event(3)).await, Err(AuditError::Unhealthy(_))));
    let log2 = log.clone();
    let blocking = tokio::task::spawn_blocking(move || log2.append_blocking(event(4)))
        .await
        .unwrap();
    assert!(matches!(blocking, Err(AuditError::Unhealthy(_))));
    assert_eq!(log.head(), head);
    assert_eq!(log.write_latency().count, 2);
    drop(log);

    let report = verify(dir.path()).unwrap();
    assert_eq!((report.records, report.problem), (1, None));
}

fn group_commit() -> AuditOptions {
    AuditOptions {
        fsync: FsyncPolicy::Group {
            max_delay: std::time::Duration::from_millis(5),
        },
        ..AuditOptions::default()
    }
}

#[tokio::test]
async fn group_commit_head_follows_within_its_interval_and_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), group_commit()).unwrap();
    // Records keep coming for longer than HEAD_INTERVAL: HEAD moves meanwhile, never past
    // what was fsynced, and catches up with the last record once they stop.
    let started = Instant::now();
    let mut seq = 0;
    while started.elapsed() < HEAD_INTERVAL * 3 {
        seq = log.append(event(seq + 1)).await.unwrap();
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
    let head = read_head(dir.path()).unwrap().expect("HEAD written while records came");
    assert!(head.seq >= 1 && head.seq <= seq, "HEAD {} of {seq}", head.seq);
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while read_head(dir.path()).unwrap().map(|h| h.seq) != Some(seq) {
        assert!(Instant::now() < deadline, "HEAD never caught up with seq {seq}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(log.head().0, seq);

    // One more record, then close at once: closing moves HEAD to it.
    let last = log.append(event(seq + 1)).await.unwrap();
    drop(log);
    assert_eq!(read_head(dir.path()).unwrap().map(|h| h.seq), Some(last));
    verify(dir.path()).unwrap();
}

#[tokio::test]
async fn submitted_records_keep_their_order_with_appends_in_both_modes() {
    for opts in [AuditOptions::default(), group_commit()] {
        let dir = tempfile::tempdir().unwrap();
        let log = AuditLog::open(dir.path(), opts).unwrap();
        assert_eq!(log.append(event(1)).await.unwrap(), 1);
        log.submit(event(2));
        log.submit(event(3));
        // An awaited append after them is acknowledged after them: one queue.
        assert_eq!(log.append(event(4)).await.unwrap(), 4);
        drop(log);
        let report = verify(dir.path()).unwrap();
        assert_eq!((report.records, report.problem), (4, None));
        let generations: Vec<u64> = crate::read_records(dir.path())
            .unwrap()
            .map(|r| match r.unwrap().event {
                AuditEvent::PolicyReloaded { generation, .. } => generation,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(generations, [1, 2, 3, 4]);
    }
}
