//! Every kind of change to stored entries is found, and verify names the entry.

use super::*;

/// A 12-entry log in one segment (checkpoint at seq 12 from close).
async fn log12() -> (tempfile::TempDir, PublicKey, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_log(config(dir.path()), 12).await;
    let segment = only_segment(dir.path());
    (dir, key, segment)
}

/// Replaces `from` by `to` once in line `line` (1-based), insisting that it was there.
fn edit_line(segment: &Path, line: usize, from: &str, to: &str) {
    let mut lines = read_lines(segment);
    assert!(lines[line - 1].contains(from), "{from} not in {}", lines[line - 1]);
    lines[line - 1] = lines[line - 1].replacen(from, to, 1);
    write_lines(segment, &lines);
}

#[tokio::test]
async fn an_untouched_log_verifies() {
    let (dir, key, _) = log12().await;
    let report = assert_verifies(dir.path(), &key);
    assert_eq!((report.records, report.segments, report.first_seq, report.last_seq), (12, 1, Some(1), Some(12)));
    assert_eq!((report.checkpoints, report.signatures, report.last_checkpoint), (1, 1, Some(12)));
}

#[tokio::test]
async fn each_altered_field_is_caught_and_the_entry_named() {
    // Entry 9 is an answer (it has a release hash); each edit keeps the line valid JSON.
    let record = record(9);
    let release = record.release_hash.clone().expect("answered");
    let time = format!("\"time_ms\":{}", record.time_ms);
    let edits: [(&str, String, String, ProblemKind); 10] = [
        ("time", time.clone(), format!("\"time_ms\":{}", record.time_ms + 1), ProblemKind::HashMismatch),
        ("query id", "\"query_id\":\"q4\"".into(), "\"query_id\":\"q5\"".into(), ProblemKind::HashMismatch),
        ("decision", "\"decision\":\"answered\"".into(), "\"decision\":\"refused\"".into(), ProblemKind::HashMismatch),
        ("requester", "\"subject\":\"bob\"".into(), "\"subject\":\"eve\"".into(), ProblemKind::HashMismatch),
        ("roles", "\"roles\":[\"researcher\"]".into(), "\"roles\":[\"admin\"]".into(), ProblemKind::HashMismatch),
        ("request", "\"min_group\":5".into(), "\"min_group\":1".into(), ProblemKind::HashMismatch),
        ("release hash", release.clone(), flip_first(&release), ProblemKind::HashMismatch),
        ("prev", "\"prev\":\"".into(), "\"prev\":\"0".into(), ProblemKind::Malformed),
        ("hash", "\"hash\":\"".into(), "\"hash\":\"0".into(), ProblemKind::Malformed),
        ("seq", "{\"seq\":9,".into(), "{\"seq\":10,".into(), ProblemKind::SeqMismatch),
    ];
    for (field, from, to, kind) in edits {
        let (dir, key, segment) = log12().await;
        assert_ne!(from, to, "{field}");
        edit_line(&segment, 9, &from, &to);
        let problem = found(dir.path(), Some(&key));
        assert_eq!((problem.kind, problem.line, problem.seq), (kind, 9, Some(9)), "{field}: {problem}");
        assert_eq!(problem.file, segment, "{field}");
        assert!(problem.to_string().starts_with(&format!("{} line 9 (seq 9): ", file_name(&segment))), "{problem}");
    }
}

#[tokio::test]
async fn a_replaced_prev_or_hash_of_the_right_form_is_caught() {
    let (dir, key, segment) = log12().await;
    let lines = read_lines(&segment);
    // Entry 9 gets entry 7's prev: well-formed, but not the hash of entry 8.
    let prev7 = crate::chain::parse_line(lines[6].as_bytes()).expect("line").prev.to_hex();
    let prev9 = crate::chain::parse_line(lines[8].as_bytes()).expect("line").prev.to_hex();
    edit_line(&segment, 9, &prev9, &prev7);
    let problem = found(dir.path(), Some(&key));
    assert_eq!((problem.kind, problem.line, problem.seq), (ProblemKind::PrevMismatch, 9, Some(9)), "{problem}");
    assert!(problem.what.contains("not the hash of seq 8"), "{problem}");

    let (dir, key, segment) = log12().await;
    let lines = read_lines(&segment);
    let hash9 = crate::chain::parse_line(lines[8].as_bytes()).expect("line").hash.to_hex();
    edit_line(&segment, 9, &format!("\"hash\":\"{hash9}\""), &format!("\"hash\":\"{}\"", Hash([1; 32])));
    let problem = found(dir.path(), Some(&key));
    assert_eq!((problem.kind, problem.line), (ProblemKind::HashMismatch, 9), "{problem}");
}

#[tokio::test]
async fn a_rewritten_chain_is_caught_by_the_signed_checkpoint() {
    // The forger alters entry 9 and recomputes every hash from there on: the chain is
    // consistent again, but the checkpoint at seq 12 signed the old hash.
    let (dir, key, segment) = log12().await;
    let lines = read_lines(&segment);
    let mut forged = lines[..8].to_vec();
    let mut prev = crate::chain::parse_line(lines[7].as_bytes()).expect("line").hash;
    for (i, line) in lines[8..].iter().enumerate() {
        let entry = crate::chain::parse_line(line.as_bytes()).expect("line");
        let record = String::from_utf8(entry.record.to_vec()).expect("utf8");
        let record = if i == 0 { record.replacen("\"subject\":\"bob\"", "\"subject\":\"eve\"", 1) } else { record };
        let mut out = Vec::new();
        prev = crate::chain::write_line(&mut out, &prev, entry.seq, record.as_bytes());
        forged.push(String::from_utf8(out).expect("utf8").trim_end().to_string());
    }
    write_lines(&segment, &forged);
    let problem = found(dir.path(), None);
    assert_eq!((problem.kind, problem.line, problem.seq), (ProblemKind::CheckpointMismatch, 12, Some(12)), "{problem}");

    // Re-signing the checkpoint needs the site's key; one signed with another key fails
    // against the site's public key.
    let forger = super::key();
    let checkpoint = Checkpoint::sign(&forger, 12, prev, T0).expect("sign");
    std::fs::write(dir.path().join(CHECKPOINTS_FILE), checkpoint.to_line()).expect("write");
    assert!(verify(dir.path(), None).expect("verify").is_ok(), "without the key, a forged checkpoint cannot be told");
    let problem = found(dir.path(), Some(&key));
    assert_eq!((problem.kind, problem.line), (ProblemKind::CheckpointSignature, 1), "{problem}");
}

#[tokio::test]
async fn a_deleted_line_is_caught() {
    let (dir, key, segment) = log12().await;
    let mut lines = read_lines(&segment);
    lines.remove(4);
    write_lines(&segment, &lines);
    let problem = found(dir.path(), Some(&key));
    assert_eq!((problem.kind, problem.line, problem.seq), (ProblemKind::SeqMismatch, 5, Some(5)), "{problem}");
    assert!(problem.what.contains("seq 6 where seq 5 belongs") && problem.what.contains("deleted"), "{problem}");
}

#[tokio::test]
async fn an_inserted_copy_of_a_line_is_caught() {
    let (dir, key, segment) = log12().await;
    let mut lines = read_lines(&segment);
    let copy = lines[2].clone();
    lines.insert(6, copy);
    write_lines(&segment, &lines);
    let problem = found(dir.path(), Some(&key));
    assert_eq!((problem.kind, problem.line, problem.seq), (ProblemKind::SeqMismatch, 7, Some(7)), "{problem}");
    assert!(problem.what.contains("seq 3 where seq 7 belongs") && problem.what.contains("inserted"), "{problem}");

    // Appended at the end (after the last checkpointed entry), a copy is caught too.
    let (dir, key, segment) = log12().await;
    let mut lines = read_lines(&segment);
    lines.push(lines[11].clone());
    write_lines(&segment, &lines);
    let problem = found(dir.path(), Some(&key));
    assert_eq!((problem.kind, problem.line), (ProblemKind::SeqMismatch, 13), "{problem}");
}

#[tokio::test]
async fn two_swapped_lines_are_caught() {
    let (dir, key, segment) = log12().await;
    let mut lines = read_lines(&segment);
    lines.swap(3, 4);
    write_lines(&segment, &lines);
    let problem = found(dir.path(), Some(&key));
    assert_eq!((problem.kind, problem.line, problem.seq), (ProblemKind::SeqMismatch, 4, Some(4)), "{problem}");
    assert!(problem.what.contains("reordered"), "{problem}");
}

#[tokio::test]
async fn a_file_cut_inside_a_record_is_caught() {
    let (dir, key, segment) = log12().await;
    let bytes = std::fs::read(&segment).expect("read");
    let line_starts: Vec<usize> = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').map(|(i, _)| i + 1).collect();
    // Cut in the middle of entry 7: entries 8.. are gone, and 7 is half there.
    std::fs::write(&segment, &bytes[..line_starts[5] + 40]).expect("write");
    let problem = found(dir.path(), Some(&key));
    assert_eq!((problem.kind, problem.line, problem.seq), (ProblemKind::Incomplete, 7, Some(7)), "{problem}");
}

#[tokio::test]
async fn a_tail_cut_at_a_line_boundary_after_a_checkpoint_is_caught() {
    let (dir, key, segment) = log12().await;
    let lines = read_lines(&segment);
    write_lines(&segment, &lines[..9]);
    let problem = found(dir.path(), Some(&key));
    assert_eq!(problem.kind, ProblemKind::CheckpointBeyondEnd, "{problem}");
    assert_eq!((problem.file, problem.line, problem.seq), (dir.path().join(CHECKPOINTS_FILE), 1, Some(12)));
    assert!(problem.what.contains("the log ends at seq 9"), "{}", problem.what);
}

#[tokio::test]
async fn deleted_or_renamed_segments_are_caught() {
    // Small segments: 40 entries spread over several files, each sealed with a checkpoint.
    let dir = tempfile::tempdir().expect("tempdir");
    let key = write_log(AuditConfig { max_segment_bytes: 2048, ..config(dir.path()) }, 40).await;
    let all = segments(dir.path());
    assert!(all.len() >= 4, "{all:?}");
    assert_verifies(dir.path(), &key);

    // A middle segment deleted: the next one does not start where the one before ended.
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), copy.path());
    std::fs::remove_file(copy.path().join(file_name(&all[1]))).expect("remove");
    let problem = found(copy.path(), Some(&key));
    assert_eq!((problem.kind, problem.line), (ProblemKind::SegmentGap, 1), "{problem}");
    assert_eq!(file_name(&problem.file), file_name(&all[2]));
    assert!(problem.what.contains("missing"), "{problem}");

    // The last segment deleted: the final checkpoint names a seq beyond the end.
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), copy.path());
    std::fs::remove_file(copy.path().join(file_name(all.last().expect("last")))).expect("remove");
    let problem = found(copy.path(), Some(&key));
    assert_eq!((problem.kind, problem.seq), (ProblemKind::CheckpointBeyondEnd, Some(40)), "{problem}");

    // A segment renamed to hide a gap: its name no longer matches its first entry.
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), copy.path());
    let second = crate::segment::list_segments(copy.path()).expect("list")[1].clone();
    std::fs::rename(&second.path, copy.path().join(segment_name(second.first_seq + 1))).expect("rename");
    assert_eq!(found(copy.path(), Some(&key)).kind, ProblemKind::SegmentGap);

    // The oldest segment removed (retention): the sealing checkpoint anchors the rest.
    let copy = tempfile::tempdir().expect("tempdir");
    copy_dir(dir.path(), copy.path());
    std::fs::remove_file(copy.path().join(file_name(&all[0]))).expect("remove");
    let report = assert_verifies(copy.path(), &key);
    assert_eq!(report.first_seq, Some(second.first_seq));
    // ... but not without that checkpoint.
    let checkpoints = read_lines(&copy.path().join(CHECKPOINTS_FILE));
    write_lines(&copy.path().join(CHECKPOINTS_FILE), &checkpoints[1..]);
    assert_eq!(found(copy.path(), Some(&key)).kind, ProblemKind::UnanchoredStart);
}

/// The same hex string with its first digit changed.
fn flip_first(hex: &str) -> String {
    let first = if hex.starts_with('0') { "1" } else { "0" };
    format!("{first}{}", &hex[1..])
}

pub(crate) fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("entry");
        if entry.file_type().expect("type").is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name())).expect("copy");
        }
    }
}
