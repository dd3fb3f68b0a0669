//! Crash recovery at open: a torn tail is set aside and the chain continues; damage that is
//! not a tail makes open refuse.

use super::*;

/// The line the writer would write for record(seq) after `prev`, as text with its newline.
fn next_line(prev: Hash, seq: u64) -> (String, Hash) {
    let record = serde_json::to_vec(&record(seq)).expect("json");
    let mut out = Vec::new();
    let hash = crate::chain::write_line(&mut out, &prev, seq, &record);
    (String::from_utf8(out).expect("utf8"), hash)
}

fn append_bytes(path: &Path, bytes: &[u8]) {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).expect("open");
    file.write_all(bytes).expect("write");
}

fn last_hash(segment: &Path) -> Hash {
    let lines = read_lines(segment);
    crate::chain::parse_line(lines.last().expect("line").as_bytes()).expect("entry").hash
}

#[tokio::test]
async fn a_torn_last_line_is_set_aside_and_the_chain_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::open(config(dir.path()), reload(&dir)).expect("open");
    let public = log.public_key();
    for i in 1..=5 {
        log.append(&record(i)).await.expect("append");
    }
    log.close().await.expect("close");
    // Then a crash while writing record 6: half of it on disk.
    let segment = only_segment(dir.path());
    let (line6, _) = next_line(last_hash(&segment), 6);
    let torn = &line6.as_bytes()[..line6.len() / 2];
    let good_len = std::fs::metadata(&segment).expect("meta").len();
    append_bytes(&segment, torn);
    assert_eq!(found(dir.path(), Some(&public)).kind, ProblemKind::Incomplete);

    let log = AuditLog::open(config(dir.path()), reload(&dir)).expect("open");
    let set_aside = &log.recovery().set_aside;
    assert_eq!(set_aside.len(), 1, "{:?}", log.recovery());
    assert_eq!((set_aside[0].line, set_aside[0].offset, set_aside[0].bytes), (6, good_len, torn.len() as u64));
    assert_eq!(std::fs::read(&set_aside[0].torn_file).expect("torn file"), torn);
    assert!(file_name(&set_aside[0].torn_file).ends_with(".torn"));
    assert_eq!(log.recovery().last_seq, 5);

    let receipt = log.append(&record(6)).await.expect("append");
    assert_eq!(receipt.seq, 6);
    log.close().await.expect("close");
    let report = assert_verifies(dir.path(), &log.public_key());
    assert_eq!(report.records, 6);
}

/// Tests that reopen a log reuse its key: the key is kept in a file in the temp dir.
fn reload(dir: &tempfile::TempDir) -> SigningKey {
    let path = dir.path().join("key.pem");
    if !path.exists() {
        SigningKey::generate(&path).expect("generate");
    }
    SigningKey::load(&path).expect("load")
}

async fn log_without_final_checkpoint(dir: &tempfile::TempDir, n: u64) -> PathBuf {
    // Records 1..=n, of which only 1..=2 a checkpoint covers, as after a crash.
    let log = AuditLog::open(AuditConfig { checkpoint_every: 2, ..config(dir.path()) }, reload(dir)).expect("open");
    for i in 1..=n {
        log.append(&record(i)).await.expect("append");
    }
    log.close().await.expect("close");
    let checkpoints = dir.path().join(CHECKPOINTS_FILE);
    let lines = read_lines(&checkpoints);
    assert!(lines[0].starts_with("{\"seq\":2,"), "{lines:?}");
    write_lines(&checkpoints, &lines[..1]);
    only_segment(dir.path())
}

#[tokio::test]
async fn a_torn_batch_keeps_its_whole_entries_and_sets_aside_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = log_without_final_checkpoint(&dir, 4).await;
    // A group commit of entries 5, 6, 7 torn: 5 whole, 6 garbled in the middle, 7 cut.
    let (line5, hash5) = next_line(last_hash(&segment), 5);
    let (line6, hash6) = next_line(hash5, 6);
    let (line7, _) = next_line(hash6, 7);
    let garbled6 = format!("{}{}{}", &line6[..30], "\0".repeat(40), &line6[70..]);
    append_bytes(&segment, format!("{line5}{garbled6}{}", &line7[..20]).as_bytes());

    let log = AuditLog::open(config(dir.path()), reload(&dir)).expect("open");
    let recovery = log.recovery().clone();
    assert_eq!(recovery.last_seq, 5, "{recovery:?}");
    assert_eq!(recovery.set_aside.len(), 1);
    assert_eq!(recovery.set_aside[0].line, 6);
    assert_eq!(log.append(&record(6)).await.expect("append").seq, 6);
    log.close().await.expect("close");
    assert_verifies(dir.path(), &log.public_key());
}

#[tokio::test]
async fn damage_before_intact_entries_makes_open_refuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    let segment = log_without_final_checkpoint(&dir, 6).await;
    let mut lines = read_lines(&segment);
    lines[3] = lines[3].replacen("\"subject\":\"alice\"", "\"subject\":\"eve\"", 1);
    write_lines(&segment, &lines);
    let before = std::fs::read(&segment).expect("read");
    let e = AuditLog::open(config(dir.path()), reload(&dir)).expect_err("damaged");
    let AuditError::Damaged { problem, .. } = &e else { panic!("{e}") };
    assert_eq!(problem.line, 4, "{e}");
    assert!(e.to_string().contains("not a torn tail") && e.to_string().contains("Nothing was repaired"), "{e}");
    assert_eq!(std::fs::read(&segment).expect("read"), before, "open changed nothing");
}

#[tokio::test]
async fn a_damaged_entry_a_checkpoint_covers_makes_open_refuse() {
    // The last entry is damaged, but the close checkpoint covers it: it was acknowledged,
    // so it is not a torn tail to set aside.
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(config(dir.path()), 5).await;
    let segment = only_segment(dir.path());
    let mut lines = read_lines(&segment);
    lines[4] = lines[4].replacen("\"query_id\":\"q2\"", "\"query_id\":\"q3\"", 1);
    write_lines(&segment, &lines);
    let e = AuditLog::open(config(dir.path()), super::key()).expect_err("damaged");
    assert!(matches!(&e, AuditError::Damaged { problem, .. } if problem.line == 5), "{e}");
    assert!(e.to_string().contains("acknowledged"), "{e}");
}

#[tokio::test]
async fn a_log_shorter_than_its_checkpoints_makes_open_refuse() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(config(dir.path()), 5).await;
    let segment = only_segment(dir.path());
    write_lines(&segment, &read_lines(&segment)[..3]);
    let e = AuditLog::open(config(dir.path()), super::key()).expect_err("damaged");
    assert!(
        matches!(&e, AuditError::Damaged { problem, .. } if problem.kind == ProblemKind::CheckpointBeyondEnd),
        "{e}"
    );
}

#[tokio::test]
async fn a_torn_checkpoint_line_is_set_aside() {
    let dir = tempfile::tempdir().expect("tempdir");
    write_log(config(dir.path()), 3).await;
    let checkpoints = dir.path().join(CHECKPOINTS_FILE);
    append_bytes(&checkpoints, b"{\"seq\":4,\"hash\":\"00");
    let log = AuditLog::open(config(dir.path()), reload(&dir)).expect("open");
    assert_eq!(log.recovery().set_aside.len(), 1);
    assert_eq!(log.recovery().set_aside[0].file, checkpoints);
    assert_eq!(read_lines(&checkpoints).len(), 1);
    log.append(&record(4)).await.expect("append");
    log.close().await.expect("close");
    assert!(verify(dir.path(), None).expect("verify").is_ok());
}

#[tokio::test]
async fn an_empty_newest_segment_continues_the_chain() {
    // A crash right after a segment was created leaves it empty.
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::open(config(dir.path()), reload(&dir)).expect("open");
    for i in 1..=3 {
        log.append(&record(i)).await.expect("append");
    }
    log.close().await.expect("close");
    std::fs::write(dir.path().join(segment_name(4)), b"").expect("create");
    let log = AuditLog::open(config(dir.path()), reload(&dir)).expect("open");
    assert_eq!(log.append(&record(4)).await.expect("append").seq, 4);
    log.close().await.expect("close");
    assert_eq!(read_lines(&dir.path().join(segment_name(4))).len(), 1);
    assert_verifies(dir.path(), &log.public_key());
}

#[tokio::test]
async fn one_writer_at_a_time_and_reopening_continues() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = AuditLog::open(config(dir.path()), reload(&dir)).expect("open");
    log.append(&record(1)).await.expect("append");
    let e = AuditLog::open(config(dir.path()), reload(&dir)).expect_err("locked");
    assert!(matches!(e, AuditError::Locked { .. }), "{e}");
    log.close().await.expect("close");
    assert!(matches!(log.append(&record(2)).await, Err(AuditError::Closed)));

    let log = AuditLog::open(config(dir.path()), reload(&dir)).expect("reopen");
    assert_eq!((log.last_seq(), log.recovery().set_aside.len()), (1, 0));
    assert_eq!(log.append(&record(2)).await.expect("append").seq, 2);
    let report = log.verify().expect("verify");
    assert!(report.is_ok(), "{report:?}");
    assert_eq!(report.records, 2);
    assert_eq!((log.stats().verify_runs, log.stats().verify_failures), (1, 0));
    log.close().await.expect("close");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(&only_segment(dir.path())), 0o600);
        assert_eq!(mode(&dir.path().join(CHECKPOINTS_FILE)), 0o600);
    }
}
