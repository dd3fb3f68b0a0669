//! Segment files: their names, finding them in a directory, and reading them line by line
//! without trusting the file (lines are bounded, a missing final newline is reported).

use crate::{AuditError, Result};
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

/// The longest line any reader accepts. The writer refuses records near this size, so a
/// longer line is damage, and reading stops before it could exhaust memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;

pub const CHECKPOINTS_FILE: &str = "checkpoints.jsonl";
pub const LOCK_FILE: &str = ".lock";

/// `segment-<first seq, 20 digits>.jsonl`: names sort in chain order, and a name says which
/// seq its first entry must have, so a missing middle segment shows as a gap.
pub fn segment_name(first_seq: u64) -> String {
    format!("segment-{first_seq:020}.jsonl")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix("segment-")?.strip_suffix(".jsonl")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// A segment file found in the log directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub first_seq: u64,
    pub path: PathBuf,
}

/// The segments in `dir`, in chain order. Other files (checkpoints, set-aside torn tails)
/// are not segments.
pub fn list_segments(dir: &Path) -> Result<Vec<Segment>> {
    let entries = std::fs::read_dir(dir).map_err(|e| AuditError::read(dir, e))?;
    let mut segments = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| AuditError::read(dir, e))?;
        let name = entry.file_name();
        if let Some(first_seq) = name.to_str().and_then(parse_segment_name) {
            segments.push(Segment { first_seq, path: entry.path() });
        }
    }
    segments.sort_by_key(|s| s.first_seq);
    Ok(segments)
}

/// What one call of [`LineReader::next_line`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Read1 {
    /// A line ending in `\n` (the buffer holds it without the newline).
    Line,
    /// Bytes at the end of the file with no newline after them: a torn write, or a line the
    /// writer is still writing.
    Incomplete,
    /// A line longer than [`MAX_LINE_BYTES`]; reading stops there.
    TooLong,
    End,
}

/// Reads a file line by line into one reused buffer, counting lines (from 1) and offsets.
pub struct LineReader {
    reader: BufReader<File>,
    pub path: PathBuf,
    /// 1-based number of the line last read.
    pub line: u64,
    /// Byte offset where the line last read starts.
    pub start: u64,
    /// Byte offset after the line last read (after its newline).
    pub end: u64,
}

impl LineReader {
    pub fn open(path: &Path) -> Result<LineReader> {
        let file = File::open(path).map_err(|e| AuditError::read(path, e))?;
        Ok(LineReader {
            reader: BufReader::with_capacity(1 << 20, file),
            path: path.to_path_buf(),
            line: 0,
            start: 0,
            end: 0,
        })
    }

    pub fn next_line(&mut self, buf: &mut Vec<u8>) -> Result<Read1> {
        buf.clear();
        self.start = self.end;
        let path = &self.path;
        loop {
            let available = self.reader.fill_buf().map_err(|e| AuditError::read(path, e))?;
            if available.is_empty() {
                return Ok(if buf.is_empty() {
                    Read1::End
                } else {
                    self.line += 1;
                    Read1::Incomplete
                });
            }
            let (taken, done) = match memchr_newline(available) {
                Some(i) => (i + 1, true),
                None => (available.len(), false),
            };
            let content = if done { taken - 1 } else { taken };
            if buf.len() + content > MAX_LINE_BYTES {
                self.line += 1;
                return Ok(Read1::TooLong);
            }
            buf.extend_from_slice(&available[..content]);
            self.reader.consume(taken);
            self.end += taken as u64;
            if done {
                self.line += 1;
                return Ok(Read1::Line);
            }
        }
    }
}

fn memchr_newline(bytes: &[u8]) -> Option<usize> {
    bytes.iter().position(|&b| b == b'\n')
}

/// The last complete line of a file (without its newline) and whether bytes follow it
/// without a newline. Searches backwards for the last two newlines, so a sealed segment's
/// end is found without reading the whole segment.
pub fn read_last_line(path: &Path) -> Result<Option<(Vec<u8>, bool)>> {
    const CHUNK: u64 = 64 << 10;
    let read_error = |e| AuditError::read(path, e);
    let mut file = File::open(path).map_err(read_error)?;
    let len = file.metadata().map_err(read_error)?.len();
    let (mut last, mut before): (Option<u64>, Option<u64>) = (None, None);
    let mut position = len;
    let mut chunk = Vec::new();
    while position > 0 && before.is_none() {
        let step = CHUNK.min(position);
        position -= step;
        chunk.resize(step as usize, 0);
        file.seek(SeekFrom::Start(position)).map_err(read_error)?;
        file.read_exact(&mut chunk).map_err(read_error)?;
        for (i, byte) in chunk.iter().enumerate().rev() {
            if *byte == b'\n' {
                let offset = position + i as u64;
                if last.is_none() {
                    last = Some(offset);
                } else {
                    before = Some(offset);
                    break;
                }
            }
        }
        if let Some(last) = last
            && last - position > MAX_LINE_BYTES as u64
        {
            return Err(AuditError::Parse {
                path: path.to_path_buf(),
                line: 0,
                what: "its last line is longer than any audit entry can be".into(),
            });
        }
    }
    let Some(last) = last else { return Ok(None) };
    let start = before.map_or(0, |b| b + 1);
    let mut line = vec![0; (last - start) as usize];
    file.seek(SeekFrom::Start(start)).map_err(read_error)?;
    file.read_exact(&mut line).map_err(read_error)?;
    Ok(Some((line, last + 1 < len)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_first_seq_and_sort_in_order() {
        assert_eq!(segment_name(42), "segment-00000000000000000042.jsonl");
        assert_eq!(parse_segment_name(&segment_name(u64::MAX)), Some(u64::MAX));
        assert_eq!(parse_segment_name("segment-42.jsonl"), None);
        assert_eq!(parse_segment_name("segment-00000000000000000042.jsonl.10.torn"), None);
    }

    #[test]
    fn lines_and_a_missing_final_newline_are_told_apart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"one\ntwo\nthr").unwrap();
        let mut reader = LineReader::open(&path).unwrap();
        let mut buf = Vec::new();
        assert_eq!(reader.next_line(&mut buf).unwrap(), Read1::Line);
        assert_eq!((buf.as_slice(), reader.line, reader.start, reader.end), (&b"one"[..], 1, 0, 4));
        assert_eq!(reader.next_line(&mut buf).unwrap(), Read1::Line);
        assert_eq!(reader.next_line(&mut buf).unwrap(), Read1::Incomplete);
        assert_eq!((buf.as_slice(), reader.line, reader.start), (&b"thr"[..], 3, 8));
        assert_eq!(reader.next_line(&mut buf).unwrap(), Read1::End);

        assert_eq!(read_last_line(&path).unwrap(), Some((b"two".to_vec(), true)));
        std::fs::write(&path, b"one\ntwo\n").unwrap();
        assert_eq!(read_last_line(&path).unwrap(), Some((b"two".to_vec(), false)));
        std::fs::write(&path, b"only\n").unwrap();
        assert_eq!(read_last_line(&path).unwrap(), Some((b"only".to_vec(), false)));
        std::fs::write(&path, b"partial").unwrap();
        assert_eq!(read_last_line(&path).unwrap(), None);
        let long = format!("{}\n{}\n", "x".repeat(100_000), "y".repeat(150_000));
        std::fs::write(&path, long.as_bytes()).unwrap();
        assert_eq!(read_last_line(&path).unwrap(), Some(("y".repeat(150_000).into_bytes(), false)));
    }
}
