//! Verifying a log directory: the whole chain across segments, and the checkpoints against
//! it (and their signatures, given the site's public key). Streams every segment once with a
//! fixed buffer; the envelope is taken apart by [`crate::chain::parse_line`] without a JSON
//! parser, so the cost is reading the bytes and one SHA-256 per record.
//!
//! Verify stops at the first problem and names it: file, line, seq and what is wrong.
//! Damage after a break in the chain cannot be told apart from its consequences.

use crate::Result;
use crate::chain::{Hash, parse_line};
use crate::checkpoint::{Checkpoint, CheckpointFile};
use crate::keys::PublicKey;
use crate::segment::{CHECKPOINTS_FILE, LineReader, Read1, list_segments};
use std::fmt;
use std::path::{Path, PathBuf};

/// What kind of damage verify found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProblemKind {
    /// A line that is not an entry in the writer's layout.
    Malformed,
    /// A segment ends inside a record (torn write or truncated file).
    Incomplete,
    /// The seq is not the next one: a record was deleted, inserted, duplicated or moved.
    SeqMismatch,
    /// `prev` is not the hash of the entry before: the chain is broken here.
    PrevMismatch,
    /// The stored hash is not the hash of the entry's contents: the entry was altered.
    HashMismatch,
    /// A segment does not start where the previous one ended: a segment is missing or extra.
    SegmentGap,
    /// A segment that is not the newest has no entries.
    EmptySegment,
    /// The log does not start at seq 1 and no checkpoint anchors its first entry.
    UnanchoredStart,
    /// A line of the checkpoints file is not a checkpoint.
    CheckpointMalformed,
    /// A checkpoint's signature does not verify with the given key.
    CheckpointSignature,
    /// A checkpoint signs a different hash than the log has at its seq.
    CheckpointMismatch,
    /// A checkpoint names a seq beyond the log's end: the tail was cut off.
    CheckpointBeyondEnd,
    /// The log ends before the seq it was required to reach.
    EndsEarly,
}

/// The first problem found: where and what. `line` is 1-based (0: the file as a whole);
/// `seq` is the seq that belongs at that place (for a checkpoint, the seq it signs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: PathBuf,
    pub line: u64,
    pub seq: Option<u64>,
    pub kind: ProblemKind,
    pub what: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name =
            self.file.file_name().map_or_else(|| self.file.display().to_string(), |n| n.to_string_lossy().into());
        write!(f, "{name} line {}", self.line)?;
        if let Some(seq) = self.seq {
            write!(f, " (seq {seq})")?;
        }
        write!(f, ": {}", self.what)
    }
}

/// What verify checked, and the first problem if there is one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Records whose chain link and hash were checked.
    pub records: u64,
    pub segments: usize,
    pub first_seq: Option<u64>,
    pub last_seq: Option<u64>,
    pub last_hash: Option<Hash>,
    /// Checkpoints matched against the chain.
    pub checkpoints: u64,
    /// Checkpoint signatures checked (0 when no public key was given).
    pub signatures: u64,
    /// The highest seq a checkpoint covers.
    pub last_checkpoint: Option<u64>,
    pub problem: Option<Problem>,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problem.is_none()
    }
}

/// How to verify.
#[derive(Debug, Clone, Copy, Default)]
pub struct VerifyOptions<'a> {
    /// Check checkpoint signatures with this key. Without it, checkpoints are still matched
    /// against the chain but anyone who rewrote the log could have rewritten them too.
    pub public_key: Option<&'a PublicKey>,
    /// Verify only up to this seq (which the log must reach); later entries and checkpoints
    /// are ignored. For a log that is being written, or a copy of its older segments.
    pub through_seq: Option<u64>,
}

/// Verifies the log in `dir`: every entry, and every checkpoint (signatures too when
/// `public_key` is given). Damage is reported in [`VerifyReport::problem`]; `Err` means
/// the files could not be read at all.
pub fn verify(dir: &Path, public_key: Option<&PublicKey>) -> Result<VerifyReport> {
    verify_with(dir, VerifyOptions { public_key, through_seq: None })
}

pub fn verify_with(dir: &Path, options: VerifyOptions<'_>) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let problem = run(dir, options, &mut report)?;
    report.problem = problem.err();
    Ok(report)
}

struct Problems<'a> {
    file: &'a Path,
}

impl Problems<'_> {
    fn at(&self, line: u64, seq: Option<u64>, kind: ProblemKind, what: impl Into<String>) -> Problem {
        Problem { file: self.file.to_path_buf(), line, seq, kind, what: what.into() }
    }
}

/// `Ok(Err(problem))` is damage found; `Err` is failing to read.
fn run(dir: &Path, options: VerifyOptions<'_>, report: &mut VerifyReport) -> Result<Result<(), Problem>> {
    let checkpoint_path = dir.join(CHECKPOINTS_FILE);
    let checkpoints = match checked_checkpoints(&checkpoint_path, options, report) {
        Ok(checkpoints) => checkpoints,
        Err(problem) => return Ok(Err(problem)),
    };
    let at_checkpoints = Problems { file: &checkpoint_path };
    // Checkpoints in seq order; `next` walks along them as the chain is read.
    let mut next = 0;
    let segments = list_segments(dir)?;
    let mut expected = 0u64;
    let mut prev = Hash::GENESIS;
    let mut buf = Vec::new();
    'segments: for (i, segment) in segments.iter().enumerate() {
        let at = Problems { file: &segment.path };
        let first = segment.first_seq;
        if i == 0 {
            report.first_seq = Some(first);
            if first == 0 {
                return Ok(Err(at.at(1, Some(0), ProblemKind::SegmentGap, "seq 0 does not exist: the first seq is 1")));
            }
            if first > 1 {
                // Older segments were removed (retention); the checkpoint written when the
                // previous segment was sealed vouches for the hash this one chains to.
                match checkpoints.iter().find(|(_, c)| c.seq == first - 1) {
                    Some((_, c)) => prev = c.hash,
                    None => {
                        let what = format!(
                            "the log starts at seq {first}, and no checkpoint at seq {} anchors it: the segments before were deleted",
                            first - 1
                        );
                        return Ok(Err(at.at(1, Some(first), ProblemKind::UnanchoredStart, what)));
                    }
                }
            }
            expected = first;
        } else if first != expected {
            let what = if first > expected {
                format!(
                    "this segment starts at seq {first}, but the one before ends at seq {}: the segment(s) holding seq {expected}..{} are missing",
                    expected - 1,
                    first - 1
                )
            } else {
                format!(
                    "this segment starts at seq {first}, which the segment before already holds (a copied or extra segment)"
                )
            };
            return Ok(Err(at.at(1, Some(first), ProblemKind::SegmentGap, what)));
        }
        report.segments += 1;
        let mut reader = LineReader::open(&segment.path)?;
        loop {
            let line = match reader.next_line(&mut buf)? {
                Read1::Line => reader.line,
                Read1::End if reader.line == 0 && i + 1 < segments.len() => {
                    let what = "this segment is empty, but later segments exist (its records were removed)";
                    return Ok(Err(at.at(1, Some(expected), ProblemKind::EmptySegment, what)));
                }
                Read1::End => break,
                Read1::Incomplete => {
                    let what = format!(
                        "the segment ends inside a record ({} bytes without a newline): a torn write or a truncated file{}",
                        buf.len(),
                        if i + 1 == segments.len() { "; opening the log sets a torn tail aside" } else { "" }
                    );
                    return Ok(Err(at.at(reader.line, Some(expected), ProblemKind::Incomplete, what)));
                }
                Read1::TooLong => {
                    let what = "the line is longer than any audit entry can be";
                    return Ok(Err(at.at(reader.line, Some(expected), ProblemKind::Malformed, what)));
                }
            };
            let entry = match parse_line(&buf) {
                Ok(entry) => entry,
                Err(what) => {
                    let what = format!("not an audit entry: {what}");
                    return Ok(Err(at.at(line, Some(expected), ProblemKind::Malformed, what)));
                }
            };
            if entry.seq != expected {
                return Ok(Err(at.at(
                    line,
                    Some(expected),
                    ProblemKind::SeqMismatch,
                    seq_mismatch(entry.seq, expected),
                )));
            }
            if entry.prev != prev {
                let what = if expected == 1 {
                    "its prev is not the all-zero hash that starts a log".to_string()
                } else {
                    format!("its prev is not the hash of seq {}: the chain is broken here", expected - 1)
                };
                return Ok(Err(at.at(line, Some(expected), ProblemKind::PrevMismatch, what)));
            }
            if entry.computed_hash() != entry.hash {
                let what = "its hash does not match its contents: the entry was altered";
                return Ok(Err(at.at(line, Some(expected), ProblemKind::HashMismatch, what)));
            }
            while let Some((checkpoint_line, checkpoint)) = checkpoints.get(next)
                && checkpoint.seq <= entry.seq
            {
                if checkpoint.seq == entry.seq {
                    if checkpoint.hash != entry.hash {
                        let what = format!(
                            "the checkpoint on line {checkpoint_line} of {CHECKPOINTS_FILE} signs another hash for this seq: the log was rewritten after it was checkpointed"
                        );
                        return Ok(Err(at.at(line, Some(entry.seq), ProblemKind::CheckpointMismatch, what)));
                    }
                    report.checkpoints += 1;
                }
                next += 1;
            }
            report.records += 1;
            report.last_seq = Some(entry.seq);
            report.last_hash = Some(entry.hash);
            prev = entry.hash;
            expected += 1;
            if options.through_seq == Some(entry.seq) {
                break 'segments;
            }
        }
    }
    let end = report.last_seq.unwrap_or(report.first_seq.map_or(0, |f| f.saturating_sub(1)));
    if let Some(through) = options.through_seq
        && end < through
    {
        let file = segments.last().map_or_else(|| dir.to_path_buf(), |s| s.path.clone());
        let what = format!("the log ends at seq {end}, before seq {through} which it must reach");
        return Ok(Err(Problems { file: &file }.at(0, Some(end), ProblemKind::EndsEarly, what)));
    }
    if let Some((line, checkpoint)) = checkpoints.iter().rev().find(|(_, c)| c.seq > end) {
        let what = format!(
            "this checkpoint signs seq {}, but the log ends at seq {end}: records after {end} were removed (the tail was cut off or the last segments deleted)",
            checkpoint.seq
        );
        return Ok(Err(at_checkpoints.at(*line, Some(checkpoint.seq), ProblemKind::CheckpointBeyondEnd, what)));
    }
    Ok(Ok(()))
}

/// The checkpoints file's entries, checked for form and signature, in seq order.
fn checked_checkpoints(
    path: &Path,
    options: VerifyOptions<'_>,
    report: &mut VerifyReport,
) -> Result<Vec<(u64, Checkpoint)>, Problem> {
    let at = Problems { file: path };
    let file = CheckpointFile::read(path).map_err(|e| {
        let what = format!("cannot be read: {e}");
        at.at(0, None, ProblemKind::CheckpointMalformed, what)
    })?;
    if let Some(bad) = &file.bad
        && !(bad.at_tail && bad.incomplete)
    {
        // An unfinished last line is a checkpoint being written or torn by a crash; it
        // vouches for nothing and is skipped. Anything else is damage.
        return Err(at.at(bad.line, None, ProblemKind::CheckpointMalformed, bad.what.clone()));
    }
    let mut checkpoints: Vec<(u64, Checkpoint)> =
        file.entries.into_iter().filter(|(_, c)| options.through_seq.is_none_or(|t| c.seq <= t)).collect();
    if let Some(key) = options.public_key {
        for (line, checkpoint) in &checkpoints {
            if !checkpoint.verify(key) {
                let what = if checkpoint.key_id != key.key_id() {
                    format!(
                        "the signature does not verify: the checkpoint names key {}, the key given is {} (wrong public key, or the checkpoint was replaced)",
                        checkpoint.key_id,
                        key.key_id()
                    )
                } else {
                    "the signature does not match the checkpoint's seq, hash and time: the checkpoint was altered"
                        .into()
                };
                return Err(at.at(*line, Some(checkpoint.seq), ProblemKind::CheckpointSignature, what));
            }
            report.signatures += 1;
        }
    }
    checkpoints.sort_by_key(|(_, c)| c.seq);
    report.last_checkpoint = checkpoints.last().map(|(_, c)| c.seq);
    Ok(checkpoints)
}

fn seq_mismatch(found: u64, expected: u64) -> String {
    if found < expected {
        format!("seq {found} where seq {expected} belongs: a record was inserted, duplicated or moved here")
    } else {
        format!(
            "seq {found} where seq {expected} belongs: seq {expected}..{} were deleted, or records were reordered",
            found - 1
        )
    }
}
