//! Group commit: many concurrent appends form one intact chain and share fsyncs.

use super::*;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_parallel_appends_form_one_chain_and_share_fsyncs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let commits = Arc::new(AtomicU64::new(0));
    let hook: CommitHook = {
        let commits = commits.clone();
        Arc::new(move |info: &CommitInfo| {
            commits.fetch_add(1, Ordering::SeqCst);
            assert!(info.records >= 1 && info.bytes > 0);
        })
    };
    let config = AuditConfig { on_commit: Some(hook), ..config(dir.path()) };
    let log = Arc::new(AuditLog::open(config, super::key()).expect("open"));
    // A slow disk: appends arriving during an fsync wait for the next, shared one.
    log.faults.sync_delay_ms.store(20, Ordering::SeqCst);
    let tasks: Vec<_> = (1..=64)
        .map(|i| {
            let log = log.clone();
            tokio::spawn(async move { log.append(&record(i).with_time_ms(T0 + i)).await })
        })
        .collect();
    let mut seqs = Vec::new();
    for task in tasks {
        let receipt = task.await.expect("task").expect("append");
        assert!(receipt.batch >= 1);
        seqs.push(receipt.seq);
    }
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=64).collect::<Vec<_>>());
    let stats = log.stats();
    println!("64 parallel appends: {} fsyncs (group commits)", stats.fsyncs);
    assert_eq!(stats.records, 64);
    assert_eq!(stats.fsyncs, commits.load(Ordering::SeqCst));
    assert!(stats.fsyncs < 64, "appends shared fsyncs: {} for 64", stats.fsyncs);
    log.close().await.expect("close");
    assert_eq!(assert_verifies(dir.path(), &log.public_key()).records, 64);
    // Every record is there once.
    let mut times: Vec<u64> =
        entries(dir.path(), Filter::default()).expect("read").map(|e| e.expect("entry").record.time_ms - T0).collect();
    times.sort_unstable();
    assert_eq!(times, (1..=64).collect::<Vec<_>>());
}

/// `cargo test -p verbund-audit --release -- --ignored --nocapture append_throughput`
#[ignore = "timing figures; run with --ignored --nocapture"]
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn append_throughput() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = Arc::new(AuditLog::open(config(dir.path()), super::key()).expect("open"));
    let record = record(2);

    let n = 500;
    let started = Instant::now();
    for _ in 0..n {
        log.append(&record).await.expect("append");
    }
    let elapsed = started.elapsed();
    println!(
        "one appender: {n} appends in {elapsed:.2?}: {:.0} appends/s, {} fsyncs",
        n as f64 / elapsed.as_secs_f64(),
        log.stats().fsyncs
    );

    let before = log.stats().fsyncs;
    let (tasks, each) = (64, 100);
    let started = Instant::now();
    let handles: Vec<_> = (0..tasks)
        .map(|_| {
            let (log, record) = (log.clone(), record.clone());
            tokio::spawn(async move {
                for _ in 0..each {
                    log.append(&record).await.expect("append");
                }
            })
        })
        .collect();
    for handle in handles {
        handle.await.expect("task");
    }
    let elapsed = started.elapsed();
    let fsyncs = log.stats().fsyncs - before;
    println!(
        "64 appenders: {} appends in {elapsed:.2?}: {:.0} appends/s, {fsyncs} fsyncs ({:.1} records per fsync)",
        tasks * each,
        (tasks * each) as f64 / elapsed.as_secs_f64(),
        (tasks * each) as f64 / fsyncs as f64
    );
    log.close().await.expect("close");
}
