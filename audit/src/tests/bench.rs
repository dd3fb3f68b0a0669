//! The verify figure for a 1-million-record log (ignored by default: it writes ~600 MB).

use super::*;
use crate::chain::{Hash, write_line};
use std::io::Write;
use std::time::Instant;

/// `cargo test -p verbund-audit --release -- --ignored --nocapture verify_one_million_records`
#[ignore = "timing figure; writes ~600 MB; run with --ignored --nocapture"]
#[test]
fn verify_one_million_records() {
    const N: u64 = 1_000_000;
    let dir = tempfile::tempdir().expect("tempdir");
    let key = super::key();
    // Written directly in the writer's format (the append path is measured elsewhere):
    // 64 MiB segments, a signed checkpoint every 10 000 records and at each seal.
    let started = Instant::now();
    let (mut prev, mut segment_len, mut buf) = (Hash::GENESIS, 0u64, Vec::with_capacity(1 << 20));
    let mut file = std::fs::File::create(dir.path().join(segment_name(1))).expect("create");
    let mut checkpoints = std::fs::File::create(dir.path().join(CHECKPOINTS_FILE)).expect("create");
    for seq in 1..=N {
        let record = serde_json::to_vec(&record(seq)).expect("json");
        let before = buf.len();
        let next = write_line(&mut buf, &prev, seq, &record);
        let line_len = (buf.len() - before) as u64;
        if segment_len > 0 && segment_len + line_len > AuditConfig::DEFAULT_SEGMENT_BYTES {
            let line = buf.split_off(before);
            file.write_all(&buf).expect("write");
            buf = line;
            checkpoints.write_all(&Checkpoint::sign(&key, seq - 1, prev, T0).expect("sign").to_line()).expect("write");
            file = std::fs::File::create(dir.path().join(segment_name(seq))).expect("create");
            segment_len = 0;
        }
        segment_len += line_len;
        prev = next;
        if seq.is_multiple_of(10_000) {
            checkpoints.write_all(&Checkpoint::sign(&key, seq, prev, T0).expect("sign").to_line()).expect("write");
        }
        if buf.len() > 1 << 20 {
            file.write_all(&buf).expect("write");
            buf.clear();
        }
    }
    file.write_all(&buf).expect("write");
    drop((file, checkpoints));
    let bytes: u64 = segments(dir.path()).iter().map(|s| std::fs::metadata(s).expect("meta").len()).sum();
    println!(
        "wrote {N} records, {} MB in {} segments, in {:.2?}",
        bytes >> 20,
        segments(dir.path()).len(),
        started.elapsed()
    );

    let started = Instant::now();
    let report = verify(dir.path(), Some(&key.public_key())).expect("verify");
    let elapsed = started.elapsed();
    assert!(report.is_ok(), "{:?}", report.problem);
    assert_eq!(report.records, N);
    println!(
        "verified {} records and {} checkpoints in {elapsed:.2?} ({:.0} records/s, {:.0} MB/s)",
        report.records,
        report.checkpoints,
        N as f64 / elapsed.as_secs_f64(),
        (bytes >> 20) as f64 / elapsed.as_secs_f64()
    );
}
