//! Reading the inputs (decision D4): files and directories, gzip by magic bytes, NDJSON line by
//! line, Bundles entry by entry. Every bad resource becomes an [`ImportIssue`]; only write
//! errors are fatal.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use flate2::read::MultiGzDecoder;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::extract::{Fail, Outcome, Refs, Staged, delete_target, is_imported_type, stage};
use crate::model::{AnyResource, Entry, EntryHead, Head};
use crate::{ImportError, ImportIssue, Location, TypeCounts};

/// The longest NDJSON line accepted; a longer one is skipped as an issue.
pub const MAX_LINE: usize = 64 * 1024 * 1024;
/// Issues kept in the summary (all go to the issues file).
const FIRST_ISSUES: usize = 20;

/// The `.json`/`.ndjson` files (optionally `.gz`) under the given paths, sorted per argument.
pub fn discover(inputs: &[PathBuf]) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            out.push(dir.to_path_buf()); // reported as unreadable later
            return;
        };
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if p.is_dir() {
                walk(&p, out);
            } else if kind_of(&p).is_some() {
                out.push(p);
            }
        }
    }
    let mut out = Vec::new();
    for input in inputs {
        if input.is_dir() {
            walk(input, &mut out);
        } else {
            out.push(input.clone());
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Json,
    Ndjson,
}

fn kind_of(path: &Path) -> Option<FileKind> {
    let name = path.file_name()?.to_str()?.to_ascii_lowercase();
    let name = name.strip_suffix(".gz").unwrap_or(&name);
    if name.ends_with(".ndjson") || name.ends_with(".jsonl") {
        Some(FileKind::Ndjson)
    } else if name.ends_with(".json") {
        Some(FileKind::Json)
    } else {
        None
    }
}

/// The appended issues file and the first few issues.
pub struct IssueLog {
    path: PathBuf,
    writer: Option<BufWriter<File>>,
    pub count: u64,
    pub first: Vec<ImportIssue>,
}

impl IssueLog {
    pub fn new(path: PathBuf) -> Self {
        Self { path, writer: None, count: 0, first: Vec::new() }
    }

    pub fn path(&self) -> Option<&Path> {
        (self.count > 0).then_some(self.path.as_path())
    }

    fn push(&mut self, issue: ImportIssue) -> Result<(), ImportError> {
        tracing::debug!(file = %issue.file.display(), location = %issue.location, reason = %issue.reason, "resource skipped");
        let write_err = |source| ImportError::Write { path: self.path.clone(), source };
        if self.writer.is_none() {
            let file = File::create(&self.path).map_err(write_err)?;
            self.writer = Some(BufWriter::new(file));
        }
        if let Some(w) = self.writer.as_mut() {
            let line = serde_json::to_string(&issue).map_err(|e| write_err(io::Error::other(e)))?;
            w.write_all(line.as_bytes())
                .and_then(|()| w.write_all(b"\n"))
                .map_err(|source| ImportError::Write { path: self.path.clone(), source })?;
        }
        self.count += 1;
        if self.first.len() < FIRST_ISSUES {
            self.first.push(issue);
        }
        Ok(())
    }

    pub fn close(&mut self) -> Result<(), ImportError> {
        if let Some(mut w) = self.writer.take() {
            w.flush().map_err(|source| ImportError::Write { path: self.path.clone(), source })?;
        }
        Ok(())
    }
}

/// A reader that counts the bytes handed out (for the byte offset of a syntax error).
struct Counting<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

pub struct Progress {
    bar: ProgressBar,
    started: Instant,
}

impl Progress {
    pub fn new(total_bytes: u64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total_bytes), ProgressDrawTarget::stderr());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}")
        {
            bar.set_style(style);
        }
        Self { bar, started: Instant::now() }
    }

    fn resources(&self, n: u64) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        self.bar.set_message(format!("{n} resources, {:.0}/s", n as f64 / secs));
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}

/// The parse phase of one run.
pub struct Reader<'a> {
    pub staged: &'a mut Staged,
    pub counts: BTreeMap<String, TypeCounts>,
    pub issues: IssueLog,
    pub progress: Option<Progress>,
    resources: u64,
    pub files_read: usize,
    pub files_failed: usize,
}

impl<'a> Reader<'a> {
    pub fn new(staged: &'a mut Staged, issues: IssueLog, progress: Option<Progress>) -> Self {
        Self { staged, counts: BTreeMap::new(), issues, progress, resources: 0, files_read: 0, files_failed: 0 }
    }

    fn issue(
        &mut self,
        file: &Path,
        location: Location,
        head: Option<&Head>,
        reason: String,
    ) -> Result<(), ImportError> {
        self.issues.push(ImportIssue {
            file: file.to_path_buf(),
            location,
            resource_type: head.and_then(|h| h.resource_type.clone()),
            id: head.and_then(|h| h.id.clone()),
            reason,
        })
    }

    fn open(&self, path: &Path) -> io::Result<Box<dyn BufRead>> {
        let file = File::open(path)?;
        let raw: Box<dyn Read> = match &self.progress {
            Some(p) => Box::new(p.bar.wrap_read(file)),
            None => Box::new(file),
        };
        let mut buffered = BufReader::with_capacity(256 * 1024, raw);
        let gzip = buffered.fill_buf()?.starts_with(&[0x1f, 0x8b]);
        Ok(if gzip {
            Box::new(BufReader::with_capacity(256 * 1024, MultiGzDecoder::new(buffered)))
        } else {
            Box::new(buffered)
        })
    }

    /// Reads one input file; unreadable files are issues.
    pub fn read_file(&mut self, path: &Path) -> Result<(), ImportError> {
        let kind = kind_of(path).unwrap_or(FileKind::Json);
        let result = match kind {
            FileKind::Ndjson => self.ndjson(path),
            FileKind::Json => self.json(path),
        };
        match result {
            Ok(()) => {
                self.files_read += 1;
                Ok(())
            }
            Err(ReadFail::Fatal(e)) => Err(e),
            Err(ReadFail::Io(e, at)) => {
                self.files_failed += 1;
                self.issue(path, at, None, format!("cannot read the file: {e}"))
            }
        }
    }

    /// One resource's JSON text: route by type, parse, stage, count.
    fn resource(
        &mut self,
        file: &Path,
        location: Location,
        raw: &str,
        refs: &Refs,
        fallback_id: Option<&str>,
    ) -> Result<(), ImportError> {
        self.resources += 1;
        if let Some(p) = &self.progress
            && self.resources.is_multiple_of(4096)
        {
            p.resources(self.resources);
        }
        let head: Head = match serde_json::from_str(raw) {
            Ok(h) => h,
            Err(e) => return self.issue(file, location, None, format!("invalid JSON: {e}")),
        };
        let Some(rtype) = head.resource_type.clone() else {
            return self.issue(file, location, Some(&head), "missing resourceType".into());
        };
        self.counts.entry(rtype.clone()).or_default().read += 1;
        if !is_imported_type(&rtype) {
            self.count(&rtype).not_imported += 1;
            return Ok(());
        }
        let Some(id) = head.id.clone().or_else(|| fallback_id.map(str::to_string)) else {
            self.count(&rtype).skipped += 1;
            return self.issue(file, location, Some(&head), "missing id".into());
        };
        let parsed: AnyResource = match serde_json::from_str(raw) {
            Ok(r) => r,
            Err(e) => {
                self.count(&rtype).skipped += 1;
                return self.issue(file, location, Some(&head), format!("wrong field: {e}"));
            }
        };
        match stage(self.staged, &parsed, &id, refs) {
            Ok(Outcome::Imported) => self.count(&rtype).imported += 1,
            Ok(Outcome::NotImported) => self.count(&rtype).not_imported += 1,
            Err(Fail::Issue(reason)) => {
                self.count(&rtype).skipped += 1;
                let head = Head { resource_type: Some(rtype), id: Some(id) };
                return self.issue(file, location, Some(&head), reason);
            }
            Err(Fail::Fatal(e)) => return Err(e),
        }
        Ok(())
    }

    fn count(&mut self, rtype: &str) -> &mut TypeCounts {
        self.counts.entry(rtype.to_string()).or_default()
    }

    fn ndjson(&mut self, path: &Path) -> Result<(), ReadFail> {
        let mut reader = self.open(path).map_err(|e| ReadFail::Io(e, Location::Byte(0)))?;
        let mut buf = Vec::with_capacity(64 * 1024);
        let refs = Refs { urns: None };
        let mut line_no = 0u64;
        loop {
            line_no += 1;
            let line = read_line_bounded(&mut reader, &mut buf, MAX_LINE)
                .map_err(|e| ReadFail::Io(e, Location::Line(line_no)))?;
            match line {
                Line::Eof => return Ok(()),
                Line::TooLong => {
                    self.issue(path, Location::Line(line_no), None, format!("line longer than {MAX_LINE} bytes"))?;
                }
                Line::Ok => {
                    let text = trim_line(&buf);
                    if text.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match std::str::from_utf8(text) {
                        Ok(text) => self.resource(path, Location::Line(line_no), text, &refs, None)?,
                        Err(e) => self.issue(path, Location::Line(line_no), None, format!("invalid UTF-8: {e}"))?,
                    }
                }
            }
        }
    }

    fn json(&mut self, path: &Path) -> Result<(), ReadFail> {
        // Pass 1, only when the file mentions `urn:` at all: the fullUrl → Type/id map.
        let urns = if self.mentions_urn(path)? { Some(self.urn_map(path)?) } else { None };
        let reader = self.open(path).map_err(|e| ReadFail::Io(e, Location::Byte(0)))?;
        let mut counting = Counting { inner: reader, count: 0 };
        let mut fatal = None;
        let mut others: Vec<(String, Box<RawValue>)> = Vec::new();
        let mut streamed = false;
        let result = {
            let refs = Refs { urns: urns.as_ref() };
            let mut on_entry = |index: usize, raw: &RawValue| self.entry(path, index, raw, &refs);
            let seed =
                TopSeed { on_entry: &mut on_entry, fatal: &mut fatal, others: &mut others, streamed: &mut streamed };
            let mut de = serde_json::Deserializer::from_reader(&mut counting);
            seed.deserialize(&mut de).and_then(|()| de.end())
        };
        if let Some(e) = fatal {
            return Err(ReadFail::Fatal(e));
        }
        if let Err(e) = result {
            if e.is_io() {
                return Err(ReadFail::Io(io::Error::other(e), Location::Byte(counting.count)));
            }
            self.issue(
                path,
                Location::Byte(counting.count),
                None,
                format!("invalid JSON, rest of the file skipped: {e}"),
            )?;
            return Ok(());
        }
        let resource_type = others
            .iter()
            .find(|(k, _)| k == "resourceType")
            .and_then(|(_, v)| serde_json::from_str::<String>(v.get()).ok());
        match resource_type.as_deref() {
            Some("Bundle") => {}
            Some(_) if streamed => self.issue(
                path,
                Location::Byte(0),
                None,
                "`entry` came before `resourceType` in a resource that is not a Bundle".into(),
            )?,
            Some(_) => {
                // A single resource: put its fields back together.
                let mut text = String::from("{");
                for (i, (k, v)) in others.iter().enumerate() {
                    if i > 0 {
                        text.push(',');
                    }
                    let key =
                        serde_json::to_string(k).map_err(|e| ReadFail::Io(io::Error::other(e), Location::Byte(0)))?;
                    text.push_str(&key);
                    text.push(':');
                    text.push_str(v.get());
                }
                text.push('}');
                let refs = Refs { urns: None };
                self.resource(path, Location::Line(1), &text, &refs, None)?;
            }
            None => self.issue(path, Location::Byte(0), None, "not a FHIR resource (no resourceType)".into())?,
        }
        Ok(())
    }

    fn mentions_urn(&self, path: &Path) -> Result<bool, ReadFail> {
        let mut reader = File::open(path)
            .and_then(|f| {
                let mut b = BufReader::new(f);
                let gzip = b.fill_buf()?.starts_with(&[0x1f, 0x8b]);
                Ok(if gzip {
                    Box::new(BufReader::new(MultiGzDecoder::new(b))) as Box<dyn BufRead>
                } else {
                    Box::new(b)
                })
            })
            .map_err(|e| ReadFail::Io(e, Location::Byte(0)))?;
        let needle = b"\"urn:";
        let mut carry: Vec<u8> = Vec::new();
        loop {
            let chunk = reader.fill_buf().map_err(|e| ReadFail::Io(e, Location::Byte(0)))?;
            if chunk.is_empty() {
                return Ok(false);
            }
            carry.extend_from_slice(chunk);
            let n = chunk.len();
            reader.consume(n);
            if carry.windows(needle.len()).any(|w| w == needle) {
                return Ok(true);
            }
            let keep = carry.len().saturating_sub(needle.len() - 1);
            carry.drain(..keep);
        }
    }

    /// Pass 1 over a Bundle: `urn:` fullUrl → `Type/id` (memory ∝ that Bundle's entries).
    fn urn_map(&self, path: &Path) -> Result<HashMap<String, String>, ReadFail> {
        let mut map = HashMap::new();
        let Ok(file) = File::open(path) else {
            return Ok(map);
        };
        let mut b = BufReader::new(file);
        let gzip = b.fill_buf().map_err(|e| ReadFail::Io(e, Location::Byte(0)))?.starts_with(&[0x1f, 0x8b]);
        let reader: Box<dyn Read> = if gzip { Box::new(BufReader::new(MultiGzDecoder::new(b))) } else { Box::new(b) };
        let mut fatal = None;
        let mut others = Vec::new();
        let mut streamed = false;
        let mut on_entry = |_: usize, raw: &RawValue| -> Result<(), ImportError> {
            if let Ok(EntryHead { full_url: Some(url), resource: Some(head) }) =
                serde_json::from_str::<EntryHead>(raw.get())
                && url.starts_with("urn:")
                && let Some(t) = head.resource_type
            {
                let id = head.id.or_else(|| url.rsplit(':').next().map(str::to_string)).unwrap_or_default();
                map.insert(url, format!("{t}/{id}"));
            }
            Ok(())
        };
        let seed = TopSeed { on_entry: &mut on_entry, fatal: &mut fatal, others: &mut others, streamed: &mut streamed };
        let mut de = serde_json::Deserializer::from_reader(reader);
        // Syntax errors are reported by pass 2.
        let _ = seed.deserialize(&mut de);
        Ok(map)
    }

    fn entry(&mut self, path: &Path, index: usize, raw: &RawValue, refs: &Refs) -> Result<(), ImportError> {
        let entry: Entry = match serde_json::from_str(raw.get()) {
            Ok(e) => e,
            Err(e) => {
                return self.issue(
                    path,
                    Location::Entry { index, full_url: None },
                    None,
                    format!("invalid entry: {e}"),
                );
            }
        };
        let location = Location::Entry { index, full_url: entry.full_url.clone() };
        let method = entry.request.as_ref().and_then(|r| r.method.as_deref());
        if method.is_some_and(|m| m.eq_ignore_ascii_case("DELETE")) {
            let url = entry.request.as_ref().and_then(|r| r.url.as_deref());
            let target = match url {
                Some(url) => delete_target(url),
                None => Err("DELETE without request.url".into()),
            };
            return match target {
                Ok(target) => {
                    let rtype = target.split('/').next().unwrap_or_default().to_string();
                    self.count(&rtype).deleted += 1;
                    self.staged.tombstone(&target)
                }
                Err(reason) => self.issue(path, location, None, reason),
            };
        }
        let Some(resource) = entry.resource else {
            return self.issue(path, location, None, "entry without resource".into());
        };
        let fallback =
            entry.full_url.as_deref().filter(|u| u.starts_with("urn:uuid:")).and_then(|u| u.strip_prefix("urn:uuid:"));
        self.resource(path, location, resource.get(), refs, fallback)
    }
}

enum ReadFail {
    Io(io::Error, Location),
    Fatal(ImportError),
}

impl From<ImportError> for ReadFail {
    fn from(e: ImportError) -> Self {
        ReadFail::Fatal(e)
    }
}

impl fmt::Debug for ReadFail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReadFail::Io(e, at) => write!(f, "{e} at {at}"),
            ReadFail::Fatal(e) => write!(f, "{e}"),
        }
    }
}

enum Line {
    Ok,
    TooLong,
    Eof,
}

/// Reads up to and including `\n` into `buf` (cleared first), never holding more than `max`
/// bytes: the rest of a longer line is skipped.
fn read_line_bounded(reader: &mut dyn BufRead, buf: &mut Vec<u8>, max: usize) -> io::Result<Line> {
    buf.clear();
    let mut too_long = false;
    let mut any = false;
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(match (any, too_long) {
                (false, _) => Line::Eof,
                (true, true) => Line::TooLong,
                (true, false) => Line::Ok,
            });
        }
        any = true;
        let (part, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (&chunk[..=i], true),
            None => (chunk, false),
        };
        if !too_long {
            if buf.len() + part.len() > max {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(part);
            }
        }
        let n = part.len();
        reader.consume(n);
        if done {
            return Ok(if too_long { Line::TooLong } else { Line::Ok });
        }
    }
}

fn trim_line(buf: &[u8]) -> &[u8] {
    let mut end = buf.len();
    while end > 0 && (buf[end - 1] == b'\n' || buf[end - 1] == b'\r') {
        end -= 1;
    }
    &buf[..end]
}

/// The top level of a JSON file: streams `entry` (when it comes before a non-Bundle
/// `resourceType`), keeps every other field as raw text.
struct TopSeed<'a, F> {
    on_entry: &'a mut F,
    fatal: &'a mut Option<ImportError>,
    others: &'a mut Vec<(String, Box<RawValue>)>,
    streamed: &'a mut bool,
}

impl<'de, F> DeserializeSeed<'de> for TopSeed<'_, F>
where
    F: FnMut(usize, &RawValue) -> Result<(), ImportError>,
{
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, F> Visitor<'de> for TopSeed<'_, F>
where
    F: FnMut(usize, &RawValue) -> Result<(), ImportError>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a FHIR resource or Bundle (a JSON object)")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        while let Some(key) = map.next_key::<String>()? {
            let not_bundle = self.others.iter().any(|(k, v)| k == "resourceType" && v.get() != "\"Bundle\"");
            if key == "entry" && !not_bundle {
                *self.streamed = true;
                map.next_value_seed(EntriesSeed { on_entry: &mut *self.on_entry, fatal: &mut *self.fatal })?;
            } else {
                let value: Box<RawValue> = map.next_value()?;
                self.others.push((key, value));
            }
        }
        Ok(())
    }
}

struct EntriesSeed<'a, F> {
    on_entry: &'a mut F,
    fatal: &'a mut Option<ImportError>,
}

impl<'de, F> DeserializeSeed<'de> for EntriesSeed<'_, F>
where
    F: FnMut(usize, &RawValue) -> Result<(), ImportError>,
{
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_seq(self)
    }
}

impl<'de, F> Visitor<'de> for EntriesSeed<'_, F>
where
    F: FnMut(usize, &RawValue) -> Result<(), ImportError>,
{
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the Bundle's entry array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let mut index = 0;
        while let Some(raw) = seq.next_element::<Box<RawValue>>()? {
            if let Err(e) = (self.on_entry)(index, &raw) {
                *self.fatal = Some(e);
                return Err(de::Error::custom("import aborted"));
            }
            index += 1;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_lines() -> io::Result<()> {
        let data = b"short\r\nthis line is too long\nok\nlast-without-newline";
        let mut r: &[u8] = data;
        let mut buf = Vec::new();
        assert!(matches!(read_line_bounded(&mut r, &mut buf, 10)?, Line::Ok));
        assert_eq!(trim_line(&buf), b"short");
        assert!(matches!(read_line_bounded(&mut r, &mut buf, 10)?, Line::TooLong));
        assert!(matches!(read_line_bounded(&mut r, &mut buf, 10)?, Line::Ok));
        assert_eq!(trim_line(&buf), b"ok");
        assert!(matches!(read_line_bounded(&mut r, &mut buf, 100)?, Line::Ok));
        assert_eq!(trim_line(&buf), b"last-without-newline");
        assert!(matches!(read_line_bounded(&mut r, &mut buf, 10)?, Line::Eof));
        Ok(())
    }
}
