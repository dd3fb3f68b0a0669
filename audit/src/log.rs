//! The handle callers append through: [`AuditLog`].
//!
//! One writer thread owns the files. Appends travel to it over a bounded channel; it takes
//! everything queued, writes it with one `write` and one fsync (group commit), then answers
//! each append. An append returns `Ok` only after its entry is on disk, so a caller that
//! refuses to answer when `append` fails never releases anything unlogged.

use crate::chain::Hash;
use crate::checkpoint::Checkpoint;
use crate::keys::{PublicKey, SigningKey};
use crate::recovery::{Recovery, recover};
use crate::segment::{LOCK_FILE, MAX_LINE_BYTES};
use crate::stats::StatsSnapshot;
use crate::verify::{VerifyOptions, VerifyReport, verify_with};
use crate::writer::{Command, Shared, Writer};
use crate::{AuditError, Record, Result};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Called after each group commit, on the writer thread (keep it quick: a histogram update).
pub type CommitHook = Arc<dyn Fn(&CommitInfo) + Send + Sync>;

/// One group commit, for metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitInfo {
    pub records: usize,
    pub bytes: usize,
    /// How long the fsync took.
    pub fsync: Duration,
}

/// Where and how to keep the log.
#[derive(Clone)]
pub struct AuditConfig {
    pub dir: PathBuf,
    /// A segment is sealed (and a new one started) before it would grow past this size.
    pub max_segment_bytes: u64,
    /// Sign a checkpoint after this many records (and whenever a segment is sealed, and on
    /// close).
    pub checkpoint_every: u64,
    /// Larger records are refused: log hashes of large content, not the content. (Capped
    /// at just under 16 MiB, the longest line readers accept.)
    pub max_record_bytes: usize,
    /// Appends that may wait for the writer; more wait in `append` (back-pressure).
    pub queue: usize,
    pub on_commit: Option<CommitHook>,
}

impl fmt::Debug for AuditConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditConfig")
            .field("dir", &self.dir)
            .field("max_segment_bytes", &self.max_segment_bytes)
            .field("checkpoint_every", &self.checkpoint_every)
            .field("max_record_bytes", &self.max_record_bytes)
            .field("queue", &self.queue)
            .field("on_commit", &self.on_commit.is_some())
            .finish()
    }
}

impl AuditConfig {
    pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;
    pub const DEFAULT_CHECKPOINT_EVERY: u64 = 10_000;
    pub const DEFAULT_RECORD_BYTES: usize = 1 << 20;

    pub fn new(dir: impl Into<PathBuf>) -> AuditConfig {
        AuditConfig {
            dir: dir.into(),
            max_segment_bytes: Self::DEFAULT_SEGMENT_BYTES,
            checkpoint_every: Self::DEFAULT_CHECKPOINT_EVERY,
            max_record_bytes: Self::DEFAULT_RECORD_BYTES,
            queue: 4096,
            on_commit: None,
        }
    }
}

/// What an acknowledged append got: its place in the chain and what the commit cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Receipt {
    pub seq: u64,
    pub hash: Hash,
    /// The fsync this record shared with the others in its group commit.
    pub fsync: Duration,
    /// How many records that commit held.
    pub batch: usize,
}

/// An open audit log: the only writer of its directory (a lock file keeps others out).
///
/// Share it as `Arc<AuditLog>`. Call [`AuditLog::close`] on shutdown; if the last handle is
/// dropped instead, the writer still finishes the queued appends and signs a final
/// checkpoint, but in the background.
pub struct AuditLog {
    sender: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    dir: PathBuf,
    public_key: PublicKey,
    max_record_bytes: usize,
    recovery: Recovery,
    #[cfg(any(test, feature = "fault-injection"))]
    pub(crate) faults: Arc<crate::writer::Faults>,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog").field("dir", &self.dir).field("public_key", &self.public_key).finish()
    }
}

impl AuditLog {
    /// Opens (or creates) the log in `config.dir`, recovering from a crash if needed (see
    /// [`Recovery`]), and starts its writer thread. Checkpoints are signed with `key`.
    ///
    /// Blocking: it reads the newest segment. Call it at start-up, or in `spawn_blocking`.
    pub fn open(config: AuditConfig, key: SigningKey) -> Result<AuditLog> {
        let dir = config.dir.clone();
        create_dir(&dir)?;
        let lock = lock(&dir)?;
        let (tail, recovery) = recover(&dir)?;
        tracing::info!(
            dir = %dir.display(),
            segments = recovery.segments,
            last_seq = recovery.last_seq,
            set_aside = recovery.set_aside.len(),
            "audit log opened"
        );
        let shared = Arc::new(Shared::new(tail.next_seq - 1));
        let public_key = key.public_key();
        let (sender, receiver) = mpsc::channel(config.queue.max(1));
        let writer = Writer::new(config.clone(), key, tail, lock, shared.clone())?;
        #[cfg(any(test, feature = "fault-injection"))]
        let faults = writer.faults.clone();
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer.run(receiver))
            .map_err(AuditError::Spawn)?;
        Ok(AuditLog {
            sender,
            shared,
            dir,
            public_key,
            max_record_bytes: config.max_record_bytes,
            recovery,
            #[cfg(any(test, feature = "fault-injection"))]
            faults,
        })
    }

    /// Test support (feature `fault-injection`): the next `n` segment writes fail as on a
    /// full disk, half written; the writer cuts them back as it would after a real failure.
    #[cfg(feature = "fault-injection")]
    #[doc(hidden)]
    pub fn inject_disk_full(&self, n: u32) {
        self.faults.fail_writes.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// Stores `record`; returns once it is written and synced. On `Err` the record is not
    /// logged and the caller must act as if it could not be (refuse to answer).
    ///
    /// If this future is dropped after the record was handed to the writer, the record is
    /// still written: an unanswered request may be logged, a logged one is never lost.
    pub async fn append(&self, record: &Record) -> Result<Receipt> {
        let record = self.encode(record)?;
        let (reply, answer) = oneshot::channel();
        self.sender.send(Command::Append { record, reply }).await.map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())?
    }

    /// [`AuditLog::append`] for synchronous code. It panics inside an async runtime (use
    /// `append` there).
    pub fn append_blocking(&self, record: &Record) -> Result<Receipt> {
        let record = self.encode(record)?;
        let (reply, answer) = oneshot::channel();
        self.sender.blocking_send(Command::Append { record, reply }).map_err(|_| self.gone())?;
        answer.blocking_recv().map_err(|_| self.gone())?
    }

    /// Signs a checkpoint at the newest entry now (e.g. from a timer), unless one is there.
    pub async fn checkpoint(&self) -> Result<Option<Checkpoint>> {
        let (reply, answer) = oneshot::channel();
        self.sender.send(Command::Checkpoint { reply }).await.map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Signs a final checkpoint, syncs and stops the writer; later appends fail with
    /// [`AuditError::Closed`]. When it returns, the directory may be opened again.
    pub async fn close(&self) -> Result<()> {
        let (reply, answer) = oneshot::channel();
        self.sender.send(Command::Close { reply }).await.map_err(|_| self.gone())?;
        answer.await.map_err(|_| self.gone())?
    }

    /// Verifies the log up to the last acknowledged entry, signatures included, and counts
    /// the run in the stats. Blocking (it reads the whole log): use `spawn_blocking`.
    pub fn verify(&self) -> Result<VerifyReport> {
        let through = self.shared.acked.load(Ordering::Acquire);
        let options =
            VerifyOptions { public_key: Some(&self.public_key), through_seq: (through > 0).then_some(through) };
        let report = verify_with(&self.dir, options)?;
        self.shared.stats.verified(report.is_ok());
        Ok(report)
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.shared.stats.snapshot()
    }

    /// What open found (torn tails set aside).
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// The seq of the newest acknowledged entry (0 when the log is empty).
    pub fn last_seq(&self) -> u64 {
        self.shared.acked.load(Ordering::Acquire)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn public_key(&self) -> PublicKey {
        self.public_key
    }

    fn encode(&self, record: &Record) -> Result<Vec<u8>> {
        record.validate()?;
        let bytes = serde_json::to_vec(record).map_err(AuditError::Serialize)?;
        // Readers refuse lines beyond MAX_LINE_BYTES, so no setting may let one be written.
        let limit = self.max_record_bytes.min(MAX_LINE_BYTES - 256);
        if bytes.len() > limit {
            return Err(AuditError::RecordTooLarge { size: bytes.len(), limit });
        }
        Ok(bytes)
    }

    fn gone(&self) -> AuditError {
        if self.shared.closed.load(Ordering::Acquire) { AuditError::Closed } else { AuditError::WriterGone }
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir).map_err(|source| AuditError::CreateDir { path: dir.to_path_buf(), source })
}

/// Holds an advisory lock on `<dir>/.lock` for as long as the returned file is open.
fn lock(dir: &Path) -> Result<File> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| AuditError::write(&path, e))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(AuditError::Locked { dir: dir.to_path_buf(), lock: path }),
        Err(std::fs::TryLockError::Error(e)) => Err(AuditError::write(&path, e)),
    }
}
