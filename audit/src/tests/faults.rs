//! Failing closed: a failed write or fsync is never acknowledged, leaves no partial entry,
//! and appends continue the chain once the fault is gone.

use super::*;
use std::sync::atomic::Ordering;

async fn open_with(dir: &Path, n: u64) -> AuditLog {
    let log = AuditLog::open(config(dir), super::key()).expect("open");
    for i in 1..=n {
        log.append(&record(i)).await.expect("append");
    }
    log
}

fn segment_len(dir: &Path) -> u64 {
    std::fs::metadata(only_segment(dir)).expect("meta").len()
}

#[tokio::test]
async fn a_failed_write_is_not_acknowledged_and_later_appends_chain_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_with(dir.path(), 3).await;
    let len = segment_len(dir.path());

    // A full disk: half the entry reaches the file, then the write fails.
    log.faults.fail_writes.store(1, Ordering::SeqCst);
    let mut refused = record(4);
    refused.query_id = "refused-query".into();
    let e = log.append(&refused).await.expect_err("the write failed");
    assert!(matches!(e, AuditError::Write { .. }), "{e}");
    assert!(e.to_string().contains("NOT logged"), "{e}");
    assert_eq!(segment_len(dir.path()), len, "the partial entry was cut off");
    assert_eq!(log.stats().append_errors, 1);

    assert_eq!(log.append(&record(4)).await.expect("append").seq, 4);
    log.close().await.expect("close");
    assert_eq!(assert_verifies(dir.path(), &log.public_key()).records, 4);
    assert!(find_query(dir.path(), "refused-query").expect("read").is_empty(), "the failed record is not in the log");
}

#[tokio::test]
async fn a_failed_fsync_is_not_acknowledged_and_later_appends_chain_on() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_with(dir.path(), 3).await;
    let len = segment_len(dir.path());
    log.faults.fail_syncs.store(1, Ordering::SeqCst);
    let e = log.append(&record(4)).await.expect_err("the fsync failed");
    assert!(matches!(e, AuditError::Write { .. }), "{e}");
    assert_eq!(segment_len(dir.path()), len, "the unsynced entry was cut off");
    assert_eq!(log.last_seq(), 3);
    assert_eq!(log.append(&record(4)).await.expect("append").seq, 4);
    log.close().await.expect("close");
    assert_eq!(assert_verifies(dir.path(), &log.public_key()).records, 4);
}

#[tokio::test]
async fn appends_fail_until_the_partial_write_can_be_cut_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_with(dir.path(), 2).await;
    let len = segment_len(dir.path());
    // The write fails, and so do the first two attempts to cut it back.
    log.faults.fail_writes.store(1, Ordering::SeqCst);
    log.faults.fail_truncates.store(2, Ordering::SeqCst);
    assert!(log.append(&record(3)).await.is_err(), "the write failed");
    assert!(segment_len(dir.path()) > len, "the partial entry is still there");
    assert!(log.append(&record(3)).await.is_err(), "no append after a partial entry");
    assert_eq!(log.append(&record(3)).await.expect("the cut-back worked").seq, 3);
    log.close().await.expect("close");
    assert_eq!(assert_verifies(dir.path(), &log.public_key()).records, 3);
    assert_eq!(log.stats().append_errors, 2);
}

#[tokio::test]
async fn a_failed_group_commit_acknowledges_nothing_it_did_not_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = std::sync::Arc::new(open_with(dir.path(), 1).await);
    // Slow fsyncs let concurrent appends queue into shared commits; the first one fails.
    log.faults.sync_delay_ms.store(30, Ordering::SeqCst);
    log.faults.fail_syncs.store(1, Ordering::SeqCst);
    let tasks: Vec<_> = (2..=17)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(&record(i)).await })
        })
        .collect();
    let mut acknowledged = Vec::new();
    let mut failed = 0;
    for task in tasks {
        match task.await.expect("task") {
            Ok(receipt) => acknowledged.push(receipt.seq),
            Err(e) => {
                assert!(matches!(e, AuditError::Write { .. }), "{e}");
                failed += 1;
            }
        }
    }
    assert!(failed >= 1, "the injected fsync failure hit a commit");
    acknowledged.sort_unstable();
    let expected: Vec<u64> = (2..2 + acknowledged.len() as u64).collect();
    assert_eq!(acknowledged, expected, "the acknowledged entries follow on without gaps");
    log.close().await.expect("close");
    let report = assert_verifies(dir.path(), &log.public_key());
    assert_eq!(report.records, 1 + acknowledged.len() as u64, "exactly the acknowledged entries are in the log");
}

#[cfg(unix)]
#[tokio::test]
async fn a_directory_that_refuses_new_segments_fails_appends_until_fixed() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let log =
        AuditLog::open(AuditConfig { max_segment_bytes: 1024, ..config(dir.path()) }, super::key()).expect("open");
    log.append(&record(1)).await.expect("append");
    log.append(&record(2)).await.expect("append");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o500)).expect("chmod");
    let probe = dir.path().join("probe");
    if std::fs::write(&probe, b"").is_ok() {
        // Root ignores directory permissions; the injected faults above cover this case.
        let _ = std::fs::remove_file(&probe);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
        eprintln!("skipped: running as root, a read-only directory does not block writes");
        log.close().await.expect("close");
        return;
    }
    // The next entry needs a new segment (a sealing checkpoint fails too; neither is fatal).
    let mut failed = 0;
    for i in 3..=6 {
        if log.append(&record(i)).await.is_err() {
            failed += 1;
            break;
        }
    }
    assert_eq!(failed, 1, "an append needing a new segment failed");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let seq = log.append(&record(99)).await.expect("append after the fix").seq;
    log.close().await.expect("close");
    assert_eq!(assert_verifies(dir.path(), &log.public_key()).records, seq);
}

#[tokio::test]
async fn records_json_cannot_carry_faithfully_are_refused_before_writing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = open_with(dir.path(), 1).await;
    let mut changed = record(2);
    changed.request["min_group"] = serde_json::json!(1);
    let not_finite = record(2).with_privacy_cost(f64::NAN);
    let mut bad_release = record(2);
    bad_release.release_hash = Some("ABC".into());
    let mut no_query = record(2);
    no_query.query_id.clear();
    for (record, field) in
        [(changed, "request_hash"), (not_finite, "privacy_cost"), (bad_release, "release_hash"), (no_query, "query_id")]
    {
        let e = log.append(&record).await.expect_err("invalid");
        assert!(matches!(e, AuditError::InvalidRecord { field: f, .. } if f == field), "{e}");
    }
    assert_eq!(log.last_seq(), 1, "nothing was written");
    log.close().await.expect("close");
}
