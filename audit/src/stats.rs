//! Counters for the caller's metrics: read them with [`crate::AuditLog::stats`], or take each
//! commit's fsync time from [`crate::Receipt`] or the `on_commit` hook for a histogram.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

#[derive(Debug, Default)]
pub(crate) struct AuditStats {
    records: AtomicU64,
    bytes: AtomicU64,
    fsyncs: AtomicU64,
    append_errors: AtomicU64,
    last_fsync_us: AtomicU64,
    max_fsync_us: AtomicU64,
    checkpoints: AtomicU64,
    checkpoint_errors: AtomicU64,
    verify_runs: AtomicU64,
    verify_failures: AtomicU64,
}

/// A copy of the counters at one moment. All count since the log was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// Records written and synced (acknowledged).
    pub records: u64,
    pub bytes: u64,
    /// Group commits: each is one write and one fsync shared by all records in it.
    pub fsyncs: u64,
    /// Appends answered with an error (not logged).
    pub append_errors: u64,
    pub last_fsync: Duration,
    pub max_fsync: Duration,
    pub checkpoints: u64,
    pub checkpoint_errors: u64,
    pub verify_runs: u64,
    /// Verify runs that found a problem.
    pub verify_failures: u64,
}

impl AuditStats {
    pub fn committed(&self, records: u64, bytes: u64, fsync: Duration) {
        let micros = u64::try_from(fsync.as_micros()).unwrap_or(u64::MAX);
        self.records.fetch_add(records, Relaxed);
        self.bytes.fetch_add(bytes, Relaxed);
        self.fsyncs.fetch_add(1, Relaxed);
        self.last_fsync_us.store(micros, Relaxed);
        self.max_fsync_us.fetch_max(micros, Relaxed);
    }

    pub fn append_errors(&self, n: u64) {
        self.append_errors.fetch_add(n, Relaxed);
    }

    pub fn checkpoint(&self, ok: bool) {
        let counter = if ok { &self.checkpoints } else { &self.checkpoint_errors };
        counter.fetch_add(1, Relaxed);
    }

    pub fn verified(&self, ok: bool) {
        self.verify_runs.fetch_add(1, Relaxed);
        if !ok {
            self.verify_failures.fetch_add(1, Relaxed);
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            records: self.records.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            fsyncs: self.fsyncs.load(Relaxed),
            append_errors: self.append_errors.load(Relaxed),
            last_fsync: Duration::from_micros(self.last_fsync_us.load(Relaxed)),
            max_fsync: Duration::from_micros(self.max_fsync_us.load(Relaxed)),
            checkpoints: self.checkpoints.load(Relaxed),
            checkpoint_errors: self.checkpoint_errors.load(Relaxed),
            verify_runs: self.verify_runs.load(Relaxed),
            verify_failures: self.verify_failures.load(Relaxed),
        }
    }
}
