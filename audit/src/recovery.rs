//! Opening after a crash: find where the chain ends, and set aside a torn tail.
//!
//! A crash during an append can leave the newest segment (or the checkpoints file) ending in
//! a partial line, or in lines a torn write garbled. Such a tail was never acknowledged (the
//! writer answers only after fsync), so it is moved to `<file>.<offset>.torn` beside the
//! file and cut off, and the log continues from the last intact entry. What was set aside is
//! returned in [`Recovery`] and logged.
//!
//! Only a tail may be set aside: a bad entry followed by an intact one, or a bad entry that a
//! checkpoint covers (so it was acknowledged), is damage, and open refuses with
//! [`AuditError::Damaged`] rather than repair anything. Open checks the newest segment and its
//! link to the one before; [`crate::verify`] checks everything.

use crate::chain::{Hash, parse_line};
use crate::checkpoint::CheckpointFile;
use crate::segment::{CHECKPOINTS_FILE, LineReader, Read1, Segment, list_segments, read_last_line};
use crate::verify::{Problem, ProblemKind};
use crate::{AuditError, Result};
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

/// What open found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    pub segments: usize,
    /// The last intact entry's seq (0 for an empty log).
    pub last_seq: u64,
    /// Torn tails moved aside (normally none).
    pub set_aside: Vec<SetAside>,
}

/// A torn tail that open moved out of a segment or the checkpoints file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetAside {
    pub file: PathBuf,
    /// Where the bytes went.
    pub torn_file: PathBuf,
    /// The 1-based line and byte offset where the torn part started.
    pub line: u64,
    pub offset: u64,
    pub bytes: u64,
    pub what: String,
}

/// Where appending continues.
#[derive(Debug, Clone)]
pub(crate) struct Tail {
    pub segment: Option<Segment>,
    /// End of the intact entries in `segment`.
    pub offset: u64,
    pub next_seq: u64,
    pub prev: Hash,
    pub checkpoints_end: u64,
    pub last_checkpoint: u64,
}

pub(crate) fn recover(dir: &Path) -> Result<(Tail, Recovery)> {
    let mut recovery = Recovery::default();
    let damaged = |problem: Problem| AuditError::Damaged { dir: dir.to_path_buf(), problem: Box::new(problem) };

    let checkpoints_path = dir.join(CHECKPOINTS_FILE);
    let checkpoints = CheckpointFile::read(&checkpoints_path)?;
    if let Some(bad) = &checkpoints.bad {
        if !bad.at_tail {
            let problem = problem_at(&checkpoints_path, bad.line, None, ProblemKind::CheckpointMalformed, &bad.what);
            return Err(damaged(problem));
        }
        recovery.set_aside.push(set_aside(&checkpoints_path, bad.line, bad.offset, &bad.what)?);
    }
    let checkpoint_seq = |seq: u64| checkpoints.entries.iter().find(|(_, c)| c.seq == seq).map(|(l, c)| (*l, c.hash));
    let last_checkpoint = checkpoints.entries.iter().map(|(_, c)| c.seq).max().unwrap_or(0);

    let segments = list_segments(dir)?;
    recovery.segments = segments.len();
    let Some(last) = segments.last() else {
        if last_checkpoint > 0 {
            let what =
                format!("there are no segments, but a checkpoint covers seq {last_checkpoint}: the log was deleted");
            return Err(damaged(problem_at(
                &checkpoints_path,
                0,
                Some(last_checkpoint),
                ProblemKind::CheckpointBeyondEnd,
                &what,
            )));
        }
        let tail = Tail {
            segment: None,
            offset: 0,
            next_seq: 1,
            prev: Hash::GENESIS,
            checkpoints_end: checkpoints.good_end(),
            last_checkpoint: 0,
        };
        return Ok((tail, recovery));
    };

    // The hash the newest segment's first entry must chain to.
    let mut prev = if let Some(before) = segments.len().checked_sub(2).map(|i| &segments[i]) {
        sealed_end(before, last).map_err(damaged)?
    } else if last.first_seq == 1 {
        Hash::GENESIS
    } else {
        match checkpoint_seq(last.first_seq - 1) {
            Some((_, hash)) => hash,
            None => {
                let what = format!("the log starts at seq {}, and no checkpoint anchors it", last.first_seq);
                return Err(damaged(problem_at(
                    &last.path,
                    1,
                    Some(last.first_seq),
                    ProblemKind::UnanchoredStart,
                    &what,
                )));
            }
        }
    };

    let mut expected = last.first_seq;
    let mut reader = LineReader::open(&last.path)?;
    let mut buf = Vec::new();
    let mut good_end = 0;
    // The first bad line: (line, offset, what).
    let mut torn: Option<(u64, u64, String)> = None;
    loop {
        match reader.next_line(&mut buf)? {
            Read1::End => break,
            Read1::Incomplete => {
                torn.get_or_insert((reader.line, reader.start, format!("a partial line of {} bytes", buf.len())));
                break;
            }
            Read1::TooLong => {
                let what = "a line longer than any audit entry";
                return Err(damaged(problem_at(&last.path, reader.line, Some(expected), ProblemKind::Malformed, what)));
            }
            Read1::Line => {}
        }
        let parsed = parse_line(&buf);
        if let Some((line, _, what)) = &torn {
            // An intact entry after a bad one: the bad one is damage, not a torn tail.
            if parsed.is_ok_and(|entry| entry.is_self_consistent()) {
                let what = format!("{what}, followed by intact entries: damage inside the log, not a torn tail");
                return Err(damaged(problem_at(&last.path, *line, Some(expected), ProblemKind::Malformed, &what)));
            }
            continue;
        }
        let why = match parsed {
            Err(what) => Some(format!("not an audit entry ({what})")),
            Ok(entry) if entry.seq != expected => Some(format!("seq {} where seq {expected} belongs", entry.seq)),
            Ok(entry) if entry.prev != prev => Some("its prev does not match the entry before".to_string()),
            Ok(entry) if !entry.is_self_consistent() => Some("its hash does not match its contents".to_string()),
            Ok(entry) => {
                if let Some((checkpoint_line, hash)) = checkpoint_seq(entry.seq)
                    && hash != entry.hash
                {
                    let what = format!(
                        "the checkpoint on line {checkpoint_line} of {CHECKPOINTS_FILE} signs another hash for this seq"
                    );
                    return Err(damaged(problem_at(
                        &last.path,
                        reader.line,
                        Some(entry.seq),
                        ProblemKind::CheckpointMismatch,
                        &what,
                    )));
                }
                prev = entry.hash;
                expected += 1;
                good_end = reader.end;
                None
            }
        };
        if let Some(what) = why {
            torn = Some((reader.line, reader.start, what));
        }
    }

    if let Some((line, offset, what)) = torn {
        if last_checkpoint >= expected {
            // A checkpoint is written only after the entries it covers were synced.
            let what =
                format!("{what}, but a checkpoint covers seq {last_checkpoint}: an acknowledged entry is damaged");
            return Err(damaged(problem_at(&last.path, line, Some(expected), ProblemKind::HashMismatch, &what)));
        }
        recovery.set_aside.push(set_aside(&last.path, line, offset, &what)?);
    }
    let last_seq = expected - 1;
    if last_checkpoint > last_seq {
        let what = format!(
            "a checkpoint covers seq {last_checkpoint}, but the log ends at seq {last_seq}: acknowledged entries are missing"
        );
        return Err(damaged(problem_at(
            &checkpoints_path,
            0,
            Some(last_checkpoint),
            ProblemKind::CheckpointBeyondEnd,
            &what,
        )));
    }
    recovery.last_seq = last_seq;
    let tail = Tail {
        segment: Some(last.clone()),
        offset: good_end,
        next_seq: expected,
        prev,
        checkpoints_end: checkpoints.good_end(),
        last_checkpoint,
    };
    Ok((tail, recovery))
}

/// The hash of the last entry of the sealed segment `before`, checking that `next` follows it.
fn sealed_end(before: &Segment, next: &Segment) -> Result<Hash, Problem> {
    let at = |kind, what: &str| problem_at(&before.path, 0, None, kind, what);
    let last_line = read_last_line(&before.path).map_err(|e| at(ProblemKind::Malformed, &e.to_string()))?;
    let Some((line, incomplete)) = last_line else {
        return Err(at(ProblemKind::EmptySegment, "an older segment has no complete entry"));
    };
    if incomplete {
        return Err(at(ProblemKind::Incomplete, "an older segment ends inside a record"));
    }
    let entry = parse_line(&line).map_err(|what| at(ProblemKind::Malformed, &format!("its last line: {what}")))?;
    if !entry.is_self_consistent() {
        return Err(at(ProblemKind::HashMismatch, "its last entry's hash does not match its contents"));
    }
    if entry.seq + 1 != next.first_seq {
        let what = format!("it ends at seq {}, but the next segment starts at seq {}", entry.seq, next.first_seq);
        return Err(problem_at(&next.path, 1, Some(next.first_seq), ProblemKind::SegmentGap, &what));
    }
    Ok(entry.hash)
}

fn problem_at(file: &Path, line: u64, seq: Option<u64>, kind: ProblemKind, what: &str) -> Problem {
    Problem { file: file.to_path_buf(), line, seq, kind, what: what.to_string() }
}

/// Copies `path` from `offset` to its end into a new `.torn` file (synced), then cuts
/// `path` back to `offset` (synced). A crash in between repeats the move at the next open.
fn set_aside(path: &Path, line: u64, offset: u64, what: &str) -> Result<SetAside> {
    let mut file = OpenOptions::new().read(true).write(true).open(path).map_err(|e| AuditError::read(path, e))?;
    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_to_end(&mut bytes))
        .map_err(|e| AuditError::read(path, e))?;
    let torn_file = new_torn_file(path, offset)?;
    let mut out = create_private(&torn_file).map_err(|e| AuditError::write(&torn_file, e))?;
    out.write_all(&bytes).and_then(|()| out.sync_all()).map_err(|e| AuditError::write(&torn_file, e))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir).map_err(|e| AuditError::write(dir, e))?;
    }
    file.set_len(offset).and_then(|()| file.sync_all()).map_err(|e| AuditError::write(path, e))?;
    let set_aside = SetAside {
        file: path.to_path_buf(),
        torn_file,
        line,
        offset,
        bytes: bytes.len() as u64,
        what: what.to_string(),
    };
    tracing::warn!(
        file = %set_aside.file.display(),
        line,
        offset,
        bytes = set_aside.bytes,
        torn_file = %set_aside.torn_file.display(),
        what,
        "audit log: an unacknowledged torn tail was set aside"
    );
    Ok(set_aside)
}

fn new_torn_file(path: &Path, offset: u64) -> Result<PathBuf> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    for n in 0..1000u32 {
        let candidate = match n {
            0 => path.with_file_name(format!("{name}.{offset}.torn")),
            n => path.with_file_name(format!("{name}.{offset}.{n}.torn")),
        };
        if !candidate.exists() {
            return Ok(candidate);
        }
    }
    let error = std::io::Error::new(std::io::ErrorKind::AlreadyExists, "too many .torn files; move old ones away");
    Err(AuditError::write(path, error))
}

/// A new file only its owner may read (audit records name people and projects).
pub(crate) fn create_private(path: &Path) -> std::io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options.open(path)
}

/// Makes a file's creation or rename durable: its directory entry is synced too.
pub(crate) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir).and_then(|d| d.sync_all())
}
