//! Reading records back: a streaming iterator with a filter, and lookups by seq or query id.
//!
//! Reading does not check the chain (that is [`crate::verify`]'s job) but does parse every
//! line it returns. It may run while the log is being written: a last line still being
//! written (no newline yet) is not returned.

use crate::chain::{Hash, parse_line};
use crate::record::{Decision, Record};
use crate::segment::{LineReader, Read1, Segment, list_segments};
use crate::{AuditError, Result};
use std::path::{Path, PathBuf};

/// A stored record with its place in the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub seq: u64,
    pub hash: Hash,
    pub record: Record,
}

/// Which records to return; every condition set must hold. Times are Unix milliseconds,
/// `from_ms` inclusive and `until_ms` exclusive.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Filter {
    pub from_ms: Option<u64>,
    pub until_ms: Option<u64>,
    pub from_seq: Option<u64>,
    pub until_seq: Option<u64>,
    pub subject: Option<String>,
    pub project: Option<String>,
    pub decision: Option<Decision>,
    pub query_id: Option<String>,
    pub service: Option<String>,
}

impl Filter {
    pub fn matches(&self, seq: u64, record: &Record) -> bool {
        let at_least = |bound: Option<u64>, value: u64| bound.is_none_or(|b| value >= b);
        let below = |bound: Option<u64>, value: u64| bound.is_none_or(|b| value < b);
        let equals = |wanted: &Option<String>, value: &str| wanted.as_deref().is_none_or(|w| w == value);
        at_least(self.from_ms, record.time_ms)
            && below(self.until_ms, record.time_ms)
            && at_least(self.from_seq, seq)
            && below(self.until_seq, seq)
            && equals(&self.subject, &record.requester.subject)
            && self.project.as_deref().is_none_or(|p| record.requester.project.as_deref() == Some(p))
            && self.decision.is_none_or(|d| d == record.decision)
            && equals(&self.query_id, &record.query_id)
            && equals(&self.service, &record.service)
    }
}

/// The records in `dir` that pass `filter`, oldest first, read lazily segment by segment.
/// A line that cannot be read as an entry yields an `Err` item, and reading goes on.
pub fn entries(dir: &Path, filter: Filter) -> Result<Entries> {
    let mut segments = list_segments(dir)?;
    // Segments wholly before `from_seq` need not be opened.
    if let Some(from) = filter.from_seq {
        let keep_from = segments.iter().rposition(|s| s.first_seq <= from).unwrap_or(0);
        segments.drain(..keep_from);
    }
    Ok(Entries { segments: segments.into_iter(), reader: None, filter, buf: Vec::new() })
}

/// The entry with sequence number `seq`, if the log has it.
pub fn get(dir: &Path, seq: u64) -> Result<Option<Entry>> {
    let filter = Filter { from_seq: Some(seq), until_seq: seq.checked_add(1), ..Filter::default() };
    entries(dir, filter)?.next().transpose()
}

/// Every entry of query `query_id` (received, then its outcome), oldest first.
pub fn find_query(dir: &Path, query_id: &str) -> Result<Vec<Entry>> {
    entries(dir, Filter { query_id: Some(query_id.to_string()), ..Filter::default() })?.collect()
}

/// The iterator of [`entries`].
pub struct Entries {
    segments: std::vec::IntoIter<Segment>,
    reader: Option<LineReader>,
    filter: Filter,
    buf: Vec<u8>,
}

impl Iterator for Entries {
    type Item = Result<Entry>;

    fn next(&mut self) -> Option<Result<Entry>> {
        loop {
            if self.reader.is_none() {
                let segment = self.segments.next()?;
                if self.filter.until_seq.is_some_and(|until| segment.first_seq >= until) {
                    return None;
                }
                match LineReader::open(&segment.path) {
                    Ok(reader) => self.reader = Some(reader),
                    Err(e) => return Some(Err(e)),
                }
            }
            let Some(reader) = self.reader.as_mut() else { continue };
            match reader.next_line(&mut self.buf) {
                Err(e) => {
                    self.reader = None;
                    return Some(Err(e));
                }
                Ok(Read1::Line) => {}
                // A line being written, or a torn tail open will set aside: not a record yet.
                Ok(Read1::End | Read1::Incomplete) => {
                    self.reader = None;
                    continue;
                }
                Ok(Read1::TooLong) => {
                    let error =
                        parse_error(&reader.path, reader.line, "the line is longer than any audit entry".into());
                    self.reader = None;
                    return Some(Err(error));
                }
            }
            let line = match parse_line(&self.buf) {
                Ok(line) => line,
                Err(what) => return Some(Err(parse_error(&reader.path, reader.line, what.into()))),
            };
            if self.filter.from_seq.is_some_and(|from| line.seq < from) {
                continue;
            }
            if self.filter.until_seq.is_some_and(|until| line.seq >= until) {
                return None;
            }
            let record: Record = match serde_json::from_slice(line.record) {
                Ok(record) => record,
                Err(e) => return Some(Err(parse_error(&reader.path, reader.line, format!("its record: {e}")))),
            };
            if self.filter.matches(line.seq, &record) {
                return Some(Ok(Entry { seq: line.seq, hash: line.hash, record }));
            }
        }
    }
}

fn parse_error(path: &Path, line: u64, what: String) -> AuditError {
    AuditError::Parse { path: PathBuf::from(path), line, what }
}
