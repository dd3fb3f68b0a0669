//! Rotation: the chain runs on across segment files, each sealed with a checkpoint.

use super::*;

#[tokio::test]
async fn many_records_rotate_across_segments_and_verify() {
    let dir = tempfile::tempdir().expect("tempdir");
    let max = 4096;
    let key = write_log(AuditConfig { max_segment_bytes: max, ..config(dir.path()) }, 120).await;
    let segments = crate::segment::list_segments(dir.path()).expect("list");
    assert!(segments.len() >= 10, "{} segments", segments.len());
    let mut previous_last: Option<crate::chain::Line<'_>> = None;
    let texts: Vec<Vec<String>> = segments.iter().map(|s| read_lines(&s.path)).collect();
    for (segment, lines) in segments.iter().zip(&texts) {
        assert!(std::fs::metadata(&segment.path).expect("meta").len() <= max, "{segment:?}");
        let first = crate::chain::parse_line(lines[0].as_bytes()).expect("entry");
        assert_eq!(first.seq, segment.first_seq, "a segment is named by its first seq");
        if let Some(last) = previous_last {
            assert_eq!(first.prev, last.hash, "the chain crosses the boundary");
            assert_eq!(first.seq, last.seq + 1);
        }
        previous_last = Some(crate::chain::parse_line(lines.last().expect("line").as_bytes()).expect("entry"));
    }
    let report = assert_verifies(dir.path(), &key);
    assert_eq!((report.records, report.segments), (120, segments.len()));
    // Each sealed segment got a checkpoint at its last entry, and close one at the end.
    assert_eq!(report.checkpoints, segments.len() as u64);
    let sealed: Vec<u64> = segments[1..].iter().map(|s| s.first_seq - 1).chain([120]).collect();
    let signed: Vec<u64> = read_lines(&dir.path().join(CHECKPOINTS_FILE))
        .iter()
        .map(|l| Checkpoint::parse(l.as_bytes()).expect("checkpoint").seq)
        .collect();
    assert_eq!(signed, sealed);

    // Reopening continues in the newest segment.
    let log = AuditLog::open(AuditConfig { max_segment_bytes: max, ..config(dir.path()) }, super::key()).expect("open");
    assert_eq!(log.append(&record(121)).await.expect("append").seq, 121);
    log.close().await.expect("close");
    assert!(verify(dir.path(), None).expect("verify").is_ok());
}

#[tokio::test]
async fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log =
        AuditLog::open(AuditConfig { max_segment_bytes: 1000, ..config(dir.path()) }, super::key()).expect("open");
    let mut big = record(1);
    big.sql = Some("SELECT ".to_string() + &"x, ".repeat(1000));
    for r in [record(1), big, record(3)] {
        log.append(&r).await.expect("append");
    }
    log.close().await.expect("close");
    let lines: Vec<usize> = segments(dir.path()).iter().map(|s| read_lines(s).len()).collect();
    assert_eq!(lines, [1, 1, 1]);
    assert_verifies(dir.path(), &log.public_key());

    let small = AuditLog::open(AuditConfig { max_record_bytes: 100, ..config(dir.path()) }, super::key());
    let e = small.expect("open").append(&record(4)).await.expect_err("too large");
    assert!(matches!(e, AuditError::RecordTooLarge { limit: 100, .. }), "{e}");
}
