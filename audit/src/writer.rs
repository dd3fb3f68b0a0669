//! The writer thread: group commit, rotation, checkpoints, and cutting back a failed write.
//!
//! The thread keeps the chain state (next seq, hash of the last entry, end offset of the
//! last synced entry) and advances it only after a write *and* its fsync succeeded. When a
//! write or fsync fails, every append in that commit gets an error and the segment is cut
//! back to the last synced offset (`set_len`) and synced; if even that fails, the writer
//! tries again before the next commit and refuses appends until it succeeds. So an error
//! never leaves half an entry that a later entry would chain after.

use crate::chain::{self, Hash};
use crate::checkpoint::Checkpoint;
use crate::keys::SigningKey;
use crate::log::{AuditConfig, CommitInfo, Receipt};
use crate::recovery::{Tail, create_private, sync_dir};
use crate::segment::{CHECKPOINTS_FILE, Segment, segment_name};
use crate::stats::AuditStats;
use crate::{AuditError, Result};
use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;
use tokio::sync::{mpsc, oneshot};

/// Most appends taken into one group commit (bounds the write buffer with the byte limit).
const MAX_BATCH: usize = 4096;
const MAX_BATCH_BYTES: usize = 8 << 20;
/// The envelope around a record: seq, two hex hashes, keys and newline.
const LINE_OVERHEAD: u64 = 200;

pub(crate) enum Command {
    Append { record: Vec<u8>, reply: oneshot::Sender<Result<Receipt>> },
    Checkpoint { reply: oneshot::Sender<Result<Option<Checkpoint>>> },
    Close { reply: oneshot::Sender<Result<()>> },
}

/// What the handle and the thread share.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    /// The seq of the newest acknowledged entry.
    pub acked: AtomicU64,
    pub closed: AtomicBool,
    pub stats: AuditStats,
}

impl Shared {
    pub fn new(acked: u64) -> Shared {
        Shared { acked: AtomicU64::new(acked), ..Shared::default() }
    }
}

/// A failed write, answerable to every append of its commit.
#[derive(Clone)]
struct Failure {
    path: PathBuf,
    error: Arc<std::io::Error>,
}

impl Failure {
    fn new(path: &std::path::Path, error: std::io::Error) -> Failure {
        Failure { path: path.to_path_buf(), error: Arc::new(error) }
    }

    fn to_error(&self) -> AuditError {
        AuditError::Write { path: self.path.clone(), source: self.error.clone() }
    }
}

struct Pending {
    record: Vec<u8>,
    reply: oneshot::Sender<Result<Receipt>>,
}

pub(crate) struct Writer {
    config: AuditConfig,
    key: SigningKey,
    shared: Arc<Shared>,
    /// Held (locked) for the writer's lifetime.
    _lock: File,
    segment: Option<(Segment, File)>,
    /// End of the synced entries in the current segment.
    offset: u64,
    /// The segment may hold bytes after `offset` from a failed write.
    needs_repair: bool,
    next_seq: u64,
    prev: Hash,
    checkpoints: Option<File>,
    checkpoints_end: u64,
    last_checkpoint: u64,
    #[cfg(any(test, feature = "fault-injection"))]
    pub faults: Arc<Faults>,
}

impl Writer {
    pub fn new(config: AuditConfig, key: SigningKey, tail: Tail, lock: File, shared: Arc<Shared>) -> Result<Writer> {
        let segment = match tail.segment {
            Some(segment) => {
                let file = OpenOptions::new()
                    .write(true)
                    .open(&segment.path)
                    .map_err(|e| AuditError::write(&segment.path, e))?;
                Some((segment, file))
            }
            None => None,
        };
        Ok(Writer {
            config,
            key,
            shared,
            _lock: lock,
            segment,
            offset: tail.offset,
            needs_repair: false,
            next_seq: tail.next_seq,
            prev: tail.prev,
            checkpoints: None,
            checkpoints_end: tail.checkpoints_end,
            last_checkpoint: tail.last_checkpoint,
            #[cfg(any(test, feature = "fault-injection"))]
            faults: Arc::default(),
        })
    }

    pub fn run(mut self, mut receiver: mpsc::Receiver<Command>) {
        let mut appends = Vec::new();
        while let Some(first) = receiver.blocking_recv() {
            // Take whatever queued up during the last fsync into this commit.
            let mut commands = vec![first];
            let mut bytes = 0;
            while commands.len() < MAX_BATCH
                && bytes < MAX_BATCH_BYTES
                && let Ok(command) = receiver.try_recv()
            {
                if let Command::Append { record, .. } = &command {
                    bytes += record.len();
                }
                commands.push(command);
            }
            for command in commands {
                match command {
                    Command::Append { record, reply } => appends.push(Pending { record, reply }),
                    Command::Checkpoint { reply } => {
                        self.commit(std::mem::take(&mut appends));
                        let _ = reply.send(self.checkpoint());
                    }
                    Command::Close { reply } => {
                        self.commit(std::mem::take(&mut appends));
                        self.shared.closed.store(true, Ordering::Release);
                        receiver.close();
                        let result = self.checkpoint().map(|_| ());
                        // Release the files and the lock before answering, so that the
                        // caller can reopen as soon as close returns.
                        drop(self);
                        let _ = reply.send(result);
                        while let Ok(command) = receiver.try_recv() {
                            refuse_closed(command);
                        }
                        return;
                    }
                }
            }
            self.commit(std::mem::take(&mut appends));
        }
        // Every handle is gone without close: seal what was written.
        if let Err(e) = self.checkpoint() {
            tracing::error!(error = %e, "audit log: the final checkpoint failed");
        }
    }

    /// Writes and syncs the appends, answering each.
    fn commit(&mut self, batch: Vec<Pending>) {
        if batch.is_empty() {
            return;
        }
        let mut pending: VecDeque<Pending> = batch.into();
        if let Err(failure) = self.repair() {
            return self.fail(pending, &failure);
        }
        while let Some(first) = pending.front() {
            if self.needs_rotation(first.record.len() as u64 + LINE_OVERHEAD)
                && let Err(failure) = self.rotate()
            {
                return self.fail(pending, &failure);
            }
            // The entries that fit into the current segment.
            let mut buf = Vec::new();
            let mut chunk = Vec::new();
            let (mut seq, mut prev) = (self.next_seq, self.prev);
            while let Some(next) = pending.front() {
                let size = self.offset + buf.len() as u64 + next.record.len() as u64 + LINE_OVERHEAD;
                if !chunk.is_empty() && size > self.config.max_segment_bytes {
                    break;
                }
                let Some(next) = pending.pop_front() else { break };
                prev = chain::write_line(&mut buf, &prev, seq, &next.record);
                chunk.push((next.reply, seq, prev));
                seq += 1;
            }
            let fsync = match self.write_and_sync(&buf) {
                Ok(fsync) => fsync,
                Err(failure) => {
                    self.fail_replies(chunk.into_iter().map(|(reply, ..)| reply), &failure);
                    return self.fail(pending, &failure);
                }
            };
            self.offset += buf.len() as u64;
            self.next_seq = seq;
            self.prev = prev;
            self.shared.acked.store(seq - 1, Ordering::Release);
            self.shared.stats.committed(chunk.len() as u64, buf.len() as u64, fsync);
            let batch = chunk.len();
            if let Some(hook) = &self.config.on_commit {
                hook(&CommitInfo { records: batch, bytes: buf.len(), fsync });
            }
            for (reply, seq, hash) in chunk {
                let _ = reply.send(Ok(Receipt { seq, hash, fsync, batch }));
            }
        }
        if self.next_seq > self.last_checkpoint.saturating_add(self.config.checkpoint_every.max(1))
            && let Err(e) = self.checkpoint()
        {
            tracing::error!(error = %e, "audit log: a periodic checkpoint failed; it is retried later");
        }
    }

    fn fail(&self, pending: VecDeque<Pending>, failure: &Failure) {
        self.fail_replies(pending.into_iter().map(|p| p.reply), failure);
    }

    fn fail_replies(&self, replies: impl Iterator<Item = oneshot::Sender<Result<Receipt>>>, failure: &Failure) {
        // Counted before anyone hears of the failure: a caller that reads the stats after its
        // error sees it counted.
        let replies: Vec<_> = replies.collect();
        let n = replies.len() as u64;
        self.shared.stats.append_errors(n);
        for reply in replies {
            let _ = reply.send(Err(failure.to_error()));
        }
        tracing::error!(
            path = %failure.path.display(),
            error = %failure.error,
            records = n,
            "audit log: write failed; the records were not logged"
        );
    }

    fn needs_rotation(&self, line: u64) -> bool {
        match &self.segment {
            None => true,
            Some(_) => self.offset > 0 && self.offset + line > self.config.max_segment_bytes,
        }
    }

    /// Seals the current segment with a checkpoint and starts the next one, named by the
    /// seq its first entry will have.
    fn rotate(&mut self) -> Result<(), Failure> {
        if self.segment.is_some()
            && let Err(e) = self.checkpoint()
        {
            // The chain still links the segments; only the seal is missing, and the next
            // periodic checkpoint covers these entries.
            tracing::error!(error = %e, "audit log: the checkpoint sealing a segment failed");
        }
        let path = self.config.dir.join(segment_name(self.next_seq));
        let file = open_new_segment(&path).map_err(|e| Failure::new(&path, e))?;
        sync_dir(&self.config.dir).map_err(|e| Failure::new(&self.config.dir, e))?;
        self.segment = Some((Segment { first_seq: self.next_seq, path }, file));
        self.offset = 0;
        self.needs_repair = false;
        Ok(())
    }

    fn write_and_sync(&mut self, buf: &[u8]) -> Result<std::time::Duration, Failure> {
        let Some((segment, file)) = &mut self.segment else {
            return Err(Failure::new(&self.config.dir, std::io::Error::other("no segment is open")));
        };
        let path = segment.path.clone();
        let written = {
            #[cfg(any(test, feature = "fault-injection"))]
            let fault = self.faults.write(file, self.offset, buf);
            #[cfg(not(any(test, feature = "fault-injection")))]
            let fault = Ok(());
            fault.and_then(|()| file.seek(SeekFrom::Start(self.offset))).and_then(|_| file.write_all(buf))
        };
        let started = Instant::now();
        let synced = written.and_then(|()| {
            #[cfg(any(test, feature = "fault-injection"))]
            self.faults.sync()?;
            file.sync_data()
        });
        match synced {
            Ok(()) => Ok(started.elapsed()),
            Err(e) => {
                self.needs_repair = true;
                let failure = Failure::new(&path, e);
                // Cut back now; if that fails too, the next commit tries again first.
                let _ = self.repair();
                Err(failure)
            }
        }
    }

    /// Cuts the segment back to the end of its synced entries after a failed write.
    fn repair(&mut self) -> Result<(), Failure> {
        if !self.needs_repair {
            return Ok(());
        }
        let Some((segment, file)) = &mut self.segment else { return Ok(()) };
        #[cfg(any(test, feature = "fault-injection"))]
        self.faults.truncate().map_err(|e| Failure::new(&segment.path, e))?;
        file.set_len(self.offset).and_then(|()| file.sync_data()).map_err(|e| Failure::new(&segment.path, e))?;
        self.needs_repair = false;
        tracing::info!(path = %segment.path.display(), offset = self.offset, "audit log: cut back after a failed write");
        Ok(())
    }

    /// Signs and appends a checkpoint at the newest entry, unless there is one already.
    fn checkpoint(&mut self) -> Result<Option<Checkpoint>> {
        let seq = self.next_seq - 1;
        if seq == 0 || seq <= self.last_checkpoint {
            return Ok(None);
        }
        let checkpoint = Checkpoint::sign(&self.key, seq, self.prev, crate::now_ms())?;
        let path = self.config.dir.join(CHECKPOINTS_FILE);
        let result = self.append_checkpoint(&path, &checkpoint.to_line());
        self.shared.stats.checkpoint(result.is_ok());
        result.map_err(|e| AuditError::write(&path, e))?;
        self.last_checkpoint = seq;
        Ok(Some(checkpoint))
    }

    fn append_checkpoint(&mut self, path: &std::path::Path, line: &[u8]) -> std::io::Result<()> {
        if self.checkpoints.is_none() {
            let file = match create_private(path) {
                Ok(file) => {
                    sync_dir(&self.config.dir)?;
                    file
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => OpenOptions::new().write(true).open(path)?,
                Err(e) => return Err(e),
            };
            self.checkpoints = Some(file);
        }
        let Some(file) = &mut self.checkpoints else { return Err(std::io::Error::other("no checkpoints file")) };
        let written = file.seek(SeekFrom::Start(self.checkpoints_end)).and_then(|_| file.write_all(line));
        match written.and_then(|()| file.sync_data()) {
            Ok(()) => {
                self.checkpoints_end += line.len() as u64;
                Ok(())
            }
            Err(e) => {
                // Leave no partial line; if this fails too, open sets the torn line aside.
                let _ = file.set_len(self.checkpoints_end).and_then(|()| file.sync_data());
                Err(e)
            }
        }
    }
}

/// A new, empty segment file. One left empty by an earlier failed attempt is reused; one
/// with contents is never written over.
fn open_new_segment(path: &std::path::Path) -> std::io::Result<File> {
    match create_private(path) {
        Ok(file) => Ok(file),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let file = OpenOptions::new().write(true).open(path)?;
            if file.metadata()?.len() != 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "the next segment exists already and is not empty; move it away",
                ));
            }
            Ok(file)
        }
        Err(e) => Err(e),
    }
}

fn refuse_closed(command: Command) {
    match command {
        Command::Append { reply, .. } => drop(reply.send(Err(AuditError::Closed))),
        Command::Checkpoint { reply } => drop(reply.send(Err(AuditError::Closed))),
        Command::Close { reply } => drop(reply.send(Ok(()))),
    }
}

/// Faults the tests inject into the writer's file operations.
#[cfg(any(test, feature = "fault-injection"))]
#[derive(Debug, Default)]
pub(crate) struct Faults {
    /// The next n segment writes write half their bytes, then fail (a full disk).
    pub fail_writes: std::sync::atomic::AtomicU32,
    /// The next n segment fsyncs fail.
    pub fail_syncs: std::sync::atomic::AtomicU32,
    /// The next n cut-backs after a failure fail.
    pub fail_truncates: std::sync::atomic::AtomicU32,
    /// Each fsync takes this much longer (to make group commits observable).
    pub sync_delay_ms: AtomicU64,
}

#[cfg(any(test, feature = "fault-injection"))]
impl Faults {
    fn take(counter: &std::sync::atomic::AtomicU32) -> bool {
        counter.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
    }

    fn disk_full() -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::StorageFull, "injected: no space left on device")
    }

    fn write(&self, file: &mut File, offset: u64, buf: &[u8]) -> std::io::Result<()> {
        if Self::take(&self.fail_writes) {
            file.seek(SeekFrom::Start(offset))?;
            file.write_all(&buf[..buf.len() / 2])?;
            return Err(Self::disk_full());
        }
        Ok(())
    }

    fn sync(&self) -> std::io::Result<()> {
        let delay = self.sync_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            std::thread::sleep(std::time::Duration::from_millis(delay));
        }
        if Self::take(&self.fail_syncs) {
            return Err(std::io::Error::other("injected: fsync failed"));
        }
        Ok(())
    }

    fn truncate(&self) -> std::io::Result<()> {
        if Self::take(&self.fail_truncates) {
            return Err(Self::disk_full());
        }
        Ok(())
    }
}
