//! Checkpoint signatures: the site's key verifies, another key or an altered checkpoint fails;
//! a third party can check a copy of the older segments with the public key alone.

use super::*;

async fn log_with_checkpoints() -> (tempfile::TempDir, PublicKey) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_log(AuditConfig { checkpoint_every: 5, ..config(dir.path()) }, 12).await;
    (dir, key)
}

#[tokio::test]
async fn signatures_verify_with_the_sites_key_only() {
    let (dir, key) = log_with_checkpoints().await;
    let lines = read_lines(&dir.path().join(CHECKPOINTS_FILE));
    // Every 5 records, and on close.
    let seqs: Vec<u64> = lines.iter().map(|l| Checkpoint::parse(l.as_bytes()).expect("checkpoint").seq).collect();
    assert_eq!(seqs, [5, 10, 12]);
    let report = assert_verifies(dir.path(), &key);
    assert_eq!((report.checkpoints, report.signatures), (3, 3));

    let other = super::key().public_key();
    let problem = found(dir.path(), Some(&other));
    assert_eq!((problem.kind, problem.line, problem.seq), (ProblemKind::CheckpointSignature, 1, Some(5)), "{problem}");
    assert!(problem.what.contains(&other.key_id()) && problem.what.contains(&key.key_id()), "{problem}");
    assert!(problem.what.contains("wrong public key"), "{problem}");

    // Without a key, the checkpoints are matched against the chain but not authenticated.
    let report = verify(dir.path(), None).expect("verify");
    assert!(report.is_ok());
    assert_eq!((report.checkpoints, report.signatures), (3, 0));
}

#[tokio::test]
async fn an_altered_checkpoint_fails() {
    let (dir, key) = log_with_checkpoints().await;
    let path = dir.path().join(CHECKPOINTS_FILE);
    let original = read_lines(&path);
    let checkpoint = Checkpoint::parse(original[1].as_bytes()).expect("checkpoint");
    let altered = [
        Checkpoint { time_ms: checkpoint.time_ms + 1, ..checkpoint.clone() },
        Checkpoint { seq: 9, ..checkpoint.clone() },
        Checkpoint { hash: Hash([9; 32]), ..checkpoint.clone() },
        Checkpoint { signature: vec![0; 64], ..checkpoint.clone() },
    ];
    for altered in altered {
        let mut lines = original.clone();
        lines[1] = String::from_utf8(altered.to_line()).expect("utf8").trim_end().to_string();
        write_lines(&path, &lines);
        let problem = found(dir.path(), Some(&key));
        assert_eq!((problem.kind, problem.line), (ProblemKind::CheckpointSignature, 2), "{altered:?}: {problem}");
        assert!(problem.what.contains("altered"), "{problem}");
    }

    // Without the key, a changed hash still disagrees with the chain.
    let mut lines = original.clone();
    lines[1] = String::from_utf8(Checkpoint { hash: Hash([9; 32]), ..checkpoint.clone() }.to_line())
        .expect("utf8")
        .trim_end()
        .to_string();
    write_lines(&path, &lines);
    let problem = found(dir.path(), None);
    assert_eq!((problem.kind, problem.seq), (ProblemKind::CheckpointMismatch, Some(10)), "{problem}");

    // A line that is not a checkpoint at all.
    let mut lines = original.clone();
    lines[0] = lines[0].replace("\"seq\"", "\"sequence\"");
    write_lines(&path, &lines);
    let problem = found(dir.path(), Some(&key));
    assert_eq!((problem.kind, problem.line), (ProblemKind::CheckpointMalformed, 1), "{problem}");
}

#[tokio::test]
async fn a_third_party_checks_older_segments_with_the_public_key_alone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_log(AuditConfig { max_segment_bytes: 2048, ..config(dir.path()) }, 30).await;
    // The auditor gets the public key as PEM, the first two segments and the checkpoints.
    let pem = dir.path().join("site.pub");
    key.write(&pem).expect("write");
    let auditor = tempfile::tempdir().expect("tempdir");
    for segment in &segments(dir.path())[..2] {
        std::fs::copy(segment, auditor.path().join(file_name(segment))).expect("copy");
    }
    std::fs::copy(dir.path().join(CHECKPOINTS_FILE), auditor.path().join(CHECKPOINTS_FILE)).expect("copy");
    let public = PublicKey::load(&pem).expect("load");

    // The checkpoint sealing the second segment covers exactly what the auditor has.
    let sealed = crate::read::entries(auditor.path(), Filter::default()).expect("read").count() as u64;
    let report = verify_with(auditor.path(), VerifyOptions { public_key: Some(&public), through_seq: Some(sealed) })
        .expect("verify");
    assert!(report.is_ok(), "{:?}", report.problem);
    assert_eq!((report.records, report.last_checkpoint), (sealed, Some(sealed)));
    assert!(report.checkpoints >= 2, "{report:?}");
    // As a whole log it is incomplete, and verify says so.
    assert_eq!(found(auditor.path(), Some(&public)).kind, ProblemKind::CheckpointBeyondEnd);
}
