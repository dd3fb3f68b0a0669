//! The crate's one error type. Each message says what is wrong and what to do about it;
//! none contains record contents.

use crate::verify::Problem;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot create the audit log directory {path}: {source}; check that its parent exists and is writable")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {path}: {source}; check that the file exists and is readable")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Writing or syncing failed: the record is not stored and must not be treated as logged.
    /// The writer has cut the file back to its last good end (or will before the next append),
    /// so appends resume once the cause (disk full, permissions) is fixed.
    #[error(
        "cannot write the audit log {path}: {source}; the record was NOT logged (free disk space or fix permissions; later appends continue the chain)"
    )]
    Write {
        path: PathBuf,
        #[source]
        source: Arc<std::io::Error>,
    },
    #[error(
        "the audit log in {dir} is open in another writer (lock file {lock} is held); only one process may append to a log"
    )]
    Locked { dir: PathBuf, lock: PathBuf },
    #[error(
        "the audit log in {dir} is damaged and was not opened: {problem}. Nothing was repaired; keep the files for investigation and run verify for the full report"
    )]
    Damaged { dir: PathBuf, problem: Box<Problem> },
    #[error("the audit log is closed; open it again to append")]
    Closed,
    #[error("the audit log writer thread stopped unexpectedly; reopen the log (its files stay consistent)")]
    WriterGone,
    #[error("cannot start the audit log writer thread: {0}")]
    Spawn(#[source] std::io::Error),
    #[error("cannot serialize the audit record: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error(
        "the audit record is {size} bytes, more than the limit of {limit}; log a hash of large content, not the content"
    )]
    RecordTooLarge { size: usize, limit: usize },
    #[error("the audit record's {field} is invalid: {why}")]
    InvalidRecord { field: &'static str, why: &'static str },
    #[error("{path} line {line}: {what}")]
    Parse { path: PathBuf, line: u64, what: String },
    #[error("signing key {path}: {why}")]
    Key { path: PathBuf, why: String },
    #[error(transparent)]
    KeyFile(#[from] verbund_security::Error),
    #[error("cannot sign the checkpoint: the signing key was rejected by the crypto library")]
    Sign,
    #[error("export failed: {0}")]
    Export(#[source] std::io::Error),
    #[error("'{text}' is not a time: {why}; write RFC 3339 like 2026-11-30T10:00:00Z, or a date like 2026-11-30 (UTC)")]
    BadTime { text: String, why: String },
    #[error(
        "'{text}' is not a site log; write NAME=DIR, the site's name and its audit log directory (site-a=/var/lib/verbund/audit)"
    )]
    BadSiteLog { text: String },
    #[error("CSV export failed: {0}")]
    Csv(#[from] csv::Error),
    /// A remote read request that cannot be served as asked.
    #[error("{0}")]
    BadRequest(String),
}

pub type Result<T, E = AuditError> = std::result::Result<T, E>;

impl AuditError {
    pub(crate) fn read(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AuditError::Read { path: path.into(), source }
    }

    pub(crate) fn write(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        AuditError::Write { path: path.into(), source: Arc::new(source) }
    }
}
