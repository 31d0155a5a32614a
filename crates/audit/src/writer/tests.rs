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

/// The records in the log's segments, by reading the files (not through the writer).
fn stored(dir: &Path) -> Vec<u64> {
    crate::read_records(dir)
        .unwrap()
        .map(|r| match r.unwrap().event {
            AuditEvent::PolicyReloaded { generation, .. } => generation,
            other => panic!("unexpected record {other:?}"),
        })
        .collect()
}

#[tokio::test]
async fn submitted_records_go_out_with_the_next_append_in_order() {
    let dir = tempfile::tempdir().unwrap();
    // A delay long enough that only the append can have written the submitted records.
    let opts = AuditOptions {
        fsync: FsyncPolicy::Group {
            max_delay: std::time::Duration::from_secs(3),
        },
        ..AuditOptions::default()
    };
    let log = AuditLog::open(dir.path(), opts).unwrap();
    assert_eq!(log.append(event(1)).await.unwrap(), 1);
    log.submit(event(2)).unwrap();
    log.submit(event(3)).unwrap();
    assert_eq!(
        stored(dir.path()),
        [1],
        "submitted records are not written on their own"
    );
    assert_eq!(
        log.append(event(4)).await.unwrap(),
        4,
        "submitted records took seqs 2 and 3"
    );
    assert_eq!(stored(dir.path()), [1, 2, 3, 4]);
    assert_eq!(log.write_latency().count, 2, "only appends are waited for");
    drop(log);
    let report = verify(dir.path()).unwrap();
    assert_eq!((report.records, report.problem), (4, None));
}

#[tokio::test]
async fn submitted_records_are_written_within_the_group_delay_and_on_close() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), group_commit()).unwrap();
    log.submit(event(1)).unwrap();
    let deadline = Instant::now() + std::time::Duration::from_secs(5);
    while stored(dir.path()).is_empty() {
        assert!(Instant::now() < deadline, "a submitted record was never written");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Made durable and named by HEAD like any record.
    while log.head().0 != 1 {
        assert!(Instant::now() < deadline, "the submitted record was never fsynced");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // Submitted and closed at once: closing writes it.
    log.submit(event(2)).unwrap();
    drop(log);
    assert_eq!(stored(dir.path()), [1, 2]);
    assert_eq!(read_head(dir.path()).unwrap().map(|h| h.seq), Some(2));
    verify(dir.path()).unwrap();
}

#[tokio::test]
async fn submitted_records_are_written_by_the_writer_thread_with_fsync_always() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), AuditOptions::default()).unwrap();
    log.submit(event(1)).unwrap();
    assert_eq!(log.append(event(2)).await.unwrap(), 2);
    assert_eq!(stored(dir.path()), [1, 2]);
    drop(log);
    verify(dir.path()).unwrap();
}

#[tokio::test]
async fn submit_is_refused_once_the_log_failed() {
    let dir = tempfile::tempdir().unwrap();
    let log = AuditLog::open(dir.path(), group_commit()).unwrap();
    log.submit(event(1)).unwrap();
    log.redirect_segment(Path::new("/dev/full"));
    // The append carries the submitted record with it, and both fail.
    assert!(matches!(log.append(event(2)).await, Err(AuditError::Unhealthy(_))));
    assert!(matches!(log.submit(event(3)), Err(AuditError::Unhealthy(_))));
}

#[test]
fn concurrent_appenders_and_submitters_keep_one_chain_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let opts = AuditOptions {
        segment_max_bytes: 2048,
        ..group_commit()
    };
    let log = AuditLog::open(dir.path(), opts).unwrap();
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                let mut acknowledged = Vec::new();
                for i in 0..150 {
                    let n = t * 1000 + i;
                    if i % 3 == 0 {
                        log.submit(event(n)).unwrap();
                    } else {
                        acknowledged.push(log.append_blocking(event(n)).unwrap());
                    }
                }
                acknowledged
            })
        })
        .collect();
    let mut seqs: Vec<u64> = threads.into_iter().flat_map(|t| t.join().unwrap()).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 4 * 100, "every append got its own seq");
    drop(log);

    let report = verify(dir.path()).unwrap();
    assert_eq!((report.records, report.problem), (600, None));
    let segments = list_segments(dir.path()).unwrap();
    assert!(segments.len() > 10, "{} segments", segments.len());
    for (_, path) in &segments {
        let len = fs::metadata(path).unwrap().len();
        assert!(len <= 2048, "{} holds {len} bytes", path.display());
    }
    // Each thread's records are in the order it made them.
    let records: Vec<_> = crate::read_records(dir.path()).unwrap().map(Result::unwrap).collect();
    for t in 0..4u64 {
        let mine: Vec<u64> = records
            .iter()
            .filter_map(|r| match &r.event {
                AuditEvent::PolicyReloaded { generation, .. } if generation / 1000 == t => Some(*generation),
                _ => None,
            })
            .collect();
        assert_eq!(mine, (t * 1000..t * 1000 + 150).collect::<Vec<_>>());
    }
}
