//! Tests of the log as a whole: tampering, crashes, injected faults, concurrency, rotation,
//! reading and export, and the timing figures (`--ignored`).

mod bench;
mod checkpoints;
mod concurrency;
mod faults;
mod read;
mod recovery;
mod rotation;
mod tamper;

use crate::*;
use serde_json::json;
use std::path::{Path, PathBuf};

pub(crate) const T0: u64 = 1_700_000_000_000;

/// A varied record: two requesters, two projects, all decisions, two records per query.
pub(crate) fn record(i: u64) -> Record {
    let subject = if i.is_multiple_of(2) { "alice" } else { "bob" };
    let project = if i.is_multiple_of(3) { None } else { Some(format!("p{}", i % 3)) };
    let decision = Decision::ALL[(i % 7) as usize];
    let requester = Requester { subject: subject.into(), project, roles: vec!["researcher".into()] };
    let request = json!({"table": "patients", "group_by": ["sex", "age_band"], "min_group": 5, "n": i});
    let mut record = Record::new("site-a", format!("q{}", i / 2), decision, requester, request)
        .with_time_ms(T0 + i * 1000)
        .with_peer("coordinator.verbund.test")
        .with_duration(std::time::Duration::from_millis(i));
    match decision {
        Decision::Answered => record = record.with_release(format!("released {i}").as_bytes(), 4, 1),
        Decision::Refused => record = record.with_refusal("MIN_GROUP", "a group is smaller than 5"),
        _ => {}
    }
    record
}

pub(crate) fn key() -> SigningKey {
    SigningKey::generate_in_memory().expect("key").0
}

/// A config for tests: no periodic checkpoints unless asked (so tests control them).
pub(crate) fn config(dir: &Path) -> AuditConfig {
    AuditConfig { checkpoint_every: u64::MAX, ..AuditConfig::new(dir) }
}

/// Writes records 1..=n (record(i) for seq i) one after another, then closes (which signs a
/// checkpoint at seq n). Returns the public key.
pub(crate) async fn write_log(config: AuditConfig, n: u64) -> PublicKey {
    let log = AuditLog::open(config, key()).expect("open");
    for i in 1..=n {
        let receipt = log.append(&record(i)).await.expect("append");
        assert_eq!(receipt.seq, i);
    }
    log.close().await.expect("close");
    log.public_key()
}

pub(crate) fn segments(dir: &Path) -> Vec<PathBuf> {
    crate::segment::list_segments(dir).expect("segments").into_iter().map(|s| s.path).collect()
}

pub(crate) fn only_segment(dir: &Path) -> PathBuf {
    let segments = segments(dir);
    assert_eq!(segments.len(), 1, "{segments:?}");
    segments[0].clone()
}

pub(crate) fn read_lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path).expect("read").lines().map(str::to_string).collect()
}

pub(crate) fn write_lines(path: &Path, lines: &[String]) {
    let mut text = lines.join("\n");
    text.push('\n');
    std::fs::write(path, text).expect("write");
}

/// Verify's problem, which the test expects there to be.
#[track_caller]
pub(crate) fn found(dir: &Path, key: Option<&PublicKey>) -> Problem {
    let report = verify(dir, key).expect("verify runs");
    match report.problem {
        Some(problem) => problem,
        None => panic!("verify found no problem: {report:?}"),
    }
}

#[track_caller]
pub(crate) fn assert_verifies(dir: &Path, key: &PublicKey) -> VerifyReport {
    let report = verify(dir, Some(key)).expect("verify runs");
    assert!(report.is_ok(), "{:?}", report.problem);
    report
}

pub(crate) fn file_name(path: &Path) -> String {
    path.file_name().expect("name").to_string_lossy().into_owned()
}
