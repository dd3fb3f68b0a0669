//! FHIR R4 import: Bundles (transaction, batch, collection, searchset) and Bulk Data NDJSON,
//! plain or gzip, into the Parquet datasets of `docs/fhir-datasets.md`.
//!
//! An import runs in two phases. **Parse** streams every input (NDJSON line by line, Bundles
//! entry by entry) and writes staged rows into one Parquet file per dataset, row group by row
//! group. **Finalize** merges the staged rows with the current generation of each dataset
//! (newest version of a resource wins, `DELETE` entries remove it) with DataFusion under a
//! spilling memory pool, writes `<out>/<dataset>/gen-<N>/` and swaps `<out>/<dataset>/current`.

mod dates;
mod extract;
mod finalize;
mod input;
mod model;
mod table;

use std::collections::BTreeMap;
use std::fmt;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

pub use table::{COLUMNS, DATASETS};

/// What to import and where.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// Files or directories (searched recursively for `.json`, `.ndjson`, `.json.gz`, `.ndjson.gz`).
    pub inputs: Vec<PathBuf>,
    /// The output directory (`<out>/<dataset>/current`).
    pub out: PathBuf,
    /// Memory for the merge (DataFusion's pool; it spills to `<out>/.tmp` beyond this).
    pub memory_mb: usize,
    /// Draw a progress bar on stderr (only when stderr is a terminal).
    pub progress: bool,
}

impl ImportOptions {
    pub const DEFAULT_MEMORY_MB: usize = 256;

    pub fn new(inputs: Vec<PathBuf>, out: PathBuf) -> Self {
        Self { inputs, out, memory_mb: Self::DEFAULT_MEMORY_MB, progress: false }
    }
}

/// Where in a file a problem is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Location {
    /// An NDJSON line (1-based), or line 1 of a single-resource file.
    Line(u64),
    /// A Bundle entry (0-based index) and its fullUrl.
    Entry { index: usize, full_url: Option<String> },
    /// A byte offset in the (decompressed) file.
    Byte(u64),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Entry { index, full_url: Some(url) } => write!(f, "entry {index} ({url})"),
            Location::Entry { index, full_url: None } => write!(f, "entry {index}"),
            Location::Byte(n) => write!(f, "byte {n}"),
        }
    }
}

/// A resource (or a part of a file) that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImportIssue {
    pub file: PathBuf,
    pub location: Location,
    pub resource_type: Option<String>,
    pub id: Option<String>,
    pub reason: String,
}

impl fmt::Display for ImportIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.file.display(), self.location)?;
        if let Some(t) = &self.resource_type {
            write!(f, " {t}")?;
            if let Some(id) = &self.id {
                write!(f, "/{id}")?;
            }
        }
        write!(f, ": {}", self.reason)
    }
}

/// Per resource type: what was read and what became of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct TypeCounts {
    /// Resources of this type read (DELETE entries not included).
    pub read: u64,
    /// Imported into a dataset (or, for Medication, the reference table).
    pub imported: u64,
    /// Skipped as bad (each one an issue).
    pub skipped: u64,
    /// A type that is not imported (Organization, …): counted, not an error.
    pub not_imported: u64,
    /// `DELETE` entries naming this type.
    pub deleted: u64,
}

#[derive(Debug, Clone)]
pub struct ImportSummary {
    /// The generation written (`gen-<N>`), also the run number.
    pub generation: u64,
    pub files_read: usize,
    pub files_failed: usize,
    pub resources: BTreeMap<String, TypeCounts>,
    /// Rows this run staged, per dataset.
    pub rows_staged: BTreeMap<String, u64>,
    /// Rows in each dataset's new generation (after merging with what was there).
    pub rows: BTreeMap<String, u64>,
    pub issues: u64,
    /// The first 20 issues; all are in `issues_file`.
    pub first_issues: Vec<ImportIssue>,
    pub issues_file: Option<PathBuf>,
    pub elapsed: Duration,
    /// Peak resident memory of this process (VmHWM), in KiB.
    pub peak_rss_kb: Option<u64>,
}

impl fmt::Display for ImportSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<28} {:>10} {:>10} {:>9} {:>13} {:>8}",
            "resource type", "read", "imported", "skipped", "not imported", "deleted"
        )?;
        for (t, c) in &self.resources {
            writeln!(
                f,
                "{:<28} {:>10} {:>10} {:>9} {:>13} {:>8}",
                t, c.read, c.imported, c.skipped, c.not_imported, c.deleted
            )?;
        }
        writeln!(f)?;
        writeln!(f, "{:<28} {:>12} {:>12}", "dataset", "rows staged", "rows now")?;
        for name in DATASETS {
            writeln!(
                f,
                "{:<28} {:>12} {:>12}",
                name,
                self.rows_staged.get(*name).copied().unwrap_or(0),
                self.rows.get(*name).copied().unwrap_or(0)
            )?;
        }
        writeln!(f)?;
        writeln!(
            f,
            "generation {}, {} file(s) read, {} unreadable, {} issue(s), {:.1} s, peak RSS {}",
            self.generation,
            self.files_read,
            self.files_failed,
            self.issues,
            self.elapsed.as_secs_f64(),
            self.peak_rss_kb.map(|kb| format!("{} MiB", kb / 1024)).unwrap_or_else(|| "unknown".into())
        )?;
        for issue in &self.first_issues {
            writeln!(f, "  {issue}")?;
        }
        if let Some(p) = &self.issues_file {
            writeln!(f, "all issues: {}", p.display())?;
        }
        Ok(())
    }
}

/// Fatal problems only; a bad resource is an [`ImportIssue`].
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot write Parquet file {path}: {source}")]
    Parquet {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("cannot build rows for {path}: {source}")]
    Arrow {
        path: PathBuf,
        #[source]
        source: arrow::error::ArrowError,
    },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: parquet::errors::ParquetError,
    },
    #[error("merging dataset {dataset} failed: {source}")]
    Merge {
        dataset: String,
        #[source]
        source: datafusion::error::DataFusionError,
    },
    #[error("no input could be read ({failed} file(s) failed, {found} found)")]
    NoInput { found: usize, failed: usize },
    #[error("the import task stopped: {0}")]
    Task(#[source] tokio::task::JoinError),
}

pub type Result<T, E = ImportError> = std::result::Result<T, E>;

/// The node's `[[dataset]]` blocks for every dataset under `out`.
pub fn dataset_config(out: &Path) -> String {
    let mut s = String::new();
    for (name, cols) in DATASETS.iter().zip(COLUMNS.iter()) {
        let path = out.join(name).join("current");
        let columns: Vec<String> = cols.iter().map(|(c, _)| format!("{c:?}")).collect();
        s.push_str("[[dataset]]\n");
        s.push_str(&format!("name = {name:?}\n"));
        s.push_str(&format!("path = {}\n", toml_string(&path.to_string_lossy())));
        s.push_str("format = \"parquet\"\n");
        s.push_str(&format!("model = \"fhir/{name}\"\n"));
        s.push_str("patient_key = \"patient_id\"\n");
        s.push_str(&format!("columns = [{}]\n\n", columns.join(", ")));
    }
    s
}

fn toml_string(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Peak resident set size of this process (VmHWM), in KiB.
pub fn peak_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Imports the inputs into `options.out` (see the crate documentation).
pub async fn import(options: &ImportOptions) -> Result<ImportSummary> {
    let started = Instant::now();
    let out = options.out.clone();
    std::fs::create_dir_all(&out).map_err(|source| ImportError::Write { path: out.clone(), source })?;
    let generation = finalize::next_generation(&out);
    let staging = out.join(".staging").join(format!("run-{generation}"));
    let _ = std::fs::remove_dir_all(&staging);
    std::fs::create_dir_all(&staging).map_err(|source| ImportError::Write { path: staging.clone(), source })?;

    let opts = options.clone();
    let staging_dir = staging.clone();
    let parsed = tokio::task::spawn_blocking(move || parse(&opts, &staging_dir, generation))
        .await
        .map_err(ImportError::Task)??;

    let rows =
        finalize::finalize(&out, &staging, generation, options.memory_mb, parsed.meds, parsed.tombstones).await?;
    let _ = std::fs::remove_dir_all(out.join(".staging"));
    Ok(ImportSummary {
        generation,
        files_read: parsed.files_read,
        files_failed: parsed.files_failed,
        resources: parsed.counts,
        rows_staged: parsed.rows_staged,
        rows,
        issues: parsed.issues,
        first_issues: parsed.first_issues,
        issues_file: parsed.issues_file,
        elapsed: started.elapsed(),
        peak_rss_kb: peak_rss_kb(),
    })
}

struct Parsed {
    files_read: usize,
    files_failed: usize,
    counts: BTreeMap<String, TypeCounts>,
    rows_staged: BTreeMap<String, u64>,
    issues: u64,
    first_issues: Vec<ImportIssue>,
    issues_file: Option<PathBuf>,
    meds: Vec<extract::MedStage>,
    tombstones: bool,
}

fn parse(options: &ImportOptions, staging: &Path, generation: u64) -> Result<Parsed> {
    let files = input::discover(&options.inputs);
    let progress = (options.progress && std::io::stderr().is_terminal()).then(|| {
        let total = files.iter().filter_map(|f| std::fs::metadata(f).ok()).map(|m| m.len()).sum();
        input::Progress::new(total)
    });
    let issues = input::IssueLog::new(options.out.join(format!("import-{generation}.issues.jsonl")));
    let mut staged = extract::Staged::new(staging);
    let mut reader = input::Reader::new(&mut staged, issues, progress);
    for file in &files {
        reader.read_file(file)?;
    }
    if let Some(p) = &reader.progress {
        p.finish();
    }
    reader.issues.close()?;
    if reader.files_read == 0 {
        return Err(ImportError::NoInput { found: files.len(), failed: reader.files_failed });
    }
    let files_read = reader.files_read;
    let files_failed = reader.files_failed;
    let counts = std::mem::take(&mut reader.counts);
    let issue_count = reader.issues.count;
    let first_issues = std::mem::take(&mut reader.issues.first);
    let issues_file = reader.issues.path().map(Path::to_path_buf);
    drop(reader);
    let mut rows_staged = BTreeMap::new();
    for (name, t) in DATASETS.iter().zip(staged.tables.iter_mut()) {
        t.close()?;
        rows_staged.insert((*name).to_string(), t.written);
    }
    let tombstones = staged.tombstones.close()?;
    Ok(Parsed {
        files_read,
        files_failed,
        counts,
        rows_staged,
        issues: issue_count,
        first_issues,
        issues_file,
        meds: std::mem::take(&mut staged.meds),
        tombstones,
    })
}
