//! The tamper-evident audit log of a verbund node or coordinator (issue 11): one record for
//! every request — received, refused, answered, failed, timed out, cancelled — and for every
//! read of the audit log itself.
//!
//! ```no_run
//! # async fn example(request: serde_json::Value) -> Result<(), verbund_audit::AuditError> {
//! use verbund_audit::{AuditConfig, AuditLog, Decision, Record, Requester, SigningKey};
//! let key = SigningKey::load("audit.key".as_ref())?;
//! let log = AuditLog::open(AuditConfig::new("/var/lib/verbund/audit"), key)?;
//! let who = Requester { subject: "alice".into(), project: Some("p1".into()), roles: vec![] };
//! let receipt = log.append(&Record::new("site-a", "q-42", Decision::Received, who, request)).await?;
//! // ... only answer if that append succeeded ...
//! log.close().await?;
//! # Ok(()) }
//! ```
//!
//! # What a record holds, and what it must not
//! [`Record`]: time, service, query id, [`Decision`], requester (subject, project, roles),
//! peer certificate identity, the typed request as JSON with its [`request_hash`], the SQL
//! (coordinator), the SHA-256 of exactly the released bytes, groups released and withheld, a
//! refusal code and reason, duration, and a reserved privacy cost. Never row-level data and
//! never tokens or keys: the caller decides what goes in, and the log keeps it for years.
//!
//! # Files (format 1)
//! A log is a directory (created 0700; files 0600):
//! - `segment-<first seq, 20 digits>.jsonl` — the entries, one JSON line each;
//! - `checkpoints.jsonl` — signed checkpoints, one JSON line each;
//! - `.lock` — held by the one process that appends;
//! - `<file>.<offset>.torn` — tails set aside by crash recovery (kept for inspection).
//!
//! Everything is plain JSON lines: `jq`, `grep` and `wc -l` work on it.
//!
//! ## Entries and the hash chain
//! Each line of a segment is exactly
//! `{"seq":N,"prev":"<64 hex>","hash":"<64 hex>","record":R}` followed by `\n`, where `R`
//! is the record's compact JSON (absent optional fields left out). Sequence numbers start at
//! 1 and increase by one across all segments.
//!
//! `hash = SHA-256(prev ‖ seq ‖ R)`: `prev` as its 32 raw bytes, `seq` as 8 bytes big-endian,
//! `R` as the bytes in the line. `prev` is the previous entry's `hash` — across segment
//! boundaries too — and 32 zero bytes for seq 1. Because `R` is hashed as stored, verify needs
//! no JSON parser for records, and any changed byte shows. The envelope has a single
//! spelling (no spaces, lower-case hex, no leading zeros), so two different lines never
//! carry the same entry.
//!
//! Segments rotate before they would exceed [`AuditConfig::max_segment_bytes`] (64 MiB by
//! default). Each is named by the seq of its first entry, so a missing middle segment is a
//! gap in the names, and the first entry of segment n+1 chains to the last of segment n.
//!
//! ## Checkpoints
//! Every [`AuditConfig::checkpoint_every`] records (10 000 by default), when a segment is
//! sealed, on [`AuditLog::close`] and on [`AuditLog::checkpoint`], the writer appends
//! `{"seq":N,"hash":"<hex>","time_ms":T,"key_id":"<hex>","signature":"<hex>"}` to
//! `checkpoints.jsonl`: an Ed25519 signature by the site's key over
//! `"verbund-audit checkpoint v1\n" ‖ seq (8 bytes BE) ‖ hash (32 bytes) ‖ time_ms (8 bytes BE)`.
//! `key_id` is the first 8 bytes of SHA-256 of the raw public key. With the public key alone
//! (PEM, [`PublicKey::load`]) a third party can check the log up to any checkpoint. A
//! checkpoint beyond the log's end shows a cut-off tail or deleted last segments — which a
//! hash chain alone cannot show. Records after the newest checkpoint can be removed
//! without trace by someone who can write the files; publishing checkpoints elsewhere (to
//! the coordinator, to an auditor) closes that gap and is up to the caller.
//!
//! ## Durability and failure
//! [`AuditLog::append`] answers after the entry is written *and* fsynced. One writer thread
//! does all writing: appends queued while an fsync runs share the next one (group commit),
//! so async callers never block their runtime. If a write or fsync fails (disk full,
//! permissions), every append in that commit gets [`AuditError::Write`] — the caller must
//! then refuse to answer — and the segment is cut back to the end of its last synced entry;
//! if even that fails, it is retried before the next append, which fails until it succeeds.
//! Once the cause is gone, appends continue the chain without reopening.
//!
//! ## Crash recovery
//! [`AuditLog::open`] reads the newest segment and its link to the one before. A torn tail —
//! a partial last line, or last lines that do not parse or whose hash is wrong, with nothing
//! intact after them — is what a crash during a write leaves, before the fsync that would
//! have acknowledged it (an entry a checkpoint covers is never treated as torn: that is
//! damage). It is moved, not deleted, to `<segment>.<offset>.torn`,
//! reported in [`Recovery`] and logged with `tracing::warn!`, and appending continues after
//! the last intact entry. A torn last line of `checkpoints.jsonl` is set aside the same way.
//! Damage that is not a tail (an intact entry after a bad one, a bad entry a checkpoint
//! covers, a checkpoint beyond the end) makes open refuse with [`AuditError::Damaged`]:
//! nothing is repaired silently. [`verify`] checks the whole log.
//!
//! ## Verifying
//! [`verify`] streams every segment once: a 1-million-record log (547 MB) took 0.9 s with
//! the crate optimized and 5 s in a debug build (the ignored `verify_one_million_records`
//! test prints the figure) and reports the first problem: file, line, seq
//! and what is wrong. An unfinished last line of `checkpoints.jsonl` (a checkpoint being
//! written, or torn by a crash) vouches for nothing and is skipped. Reading ([`entries`], [`get`], [`find_query`]) and exporting
//! ([`export_jsonl`], [`export_csv`], [`FlatRow`]) do not need the writer.
//!
//! ## For operators
//! `verbund audit list|show|verify|export|reconcile` is built on this crate: [`Selection`]
//! (filters as typed on a command line: [`parse_since`], [`parse_until`]), [`list_table`]
//! and [`describe`] for terminals, [`reconcile`] to check that the coordinator's account of
//! each site's answer matches the site's own log.
//!
//! ## Retention
//! Segments never change once sealed. To keep the log bounded, archive or delete whole
//! segments, oldest first, and keep `checkpoints.jsonl`: verify then anchors the first
//! remaining segment on the checkpoint written when the segment before it was sealed (same
//! seq, same hash), and reports where the log starts ([`VerifyReport::first_seq`]).

mod chain;
mod checkpoint;
mod error;
mod export;
mod keys;
mod log;
mod read;
mod reconcile;
mod record;
mod recovery;
pub mod remote;
mod segment;
mod select;
mod settings;
mod stats;
mod text;
mod verify;
mod writer;

#[cfg(test)]
mod tests;

pub use chain::Hash;
pub use checkpoint::Checkpoint;
pub use error::{AuditError, Result};
pub use export::{FlatRow, export_csv, export_jsonl, utc};
pub use keys::{PublicKey, SigningKey};
pub use log::{AuditConfig, AuditLog, CommitHook, CommitInfo, Receipt};
pub use read::{Entries, Entry, Filter, entries, find_query, get};
pub use reconcile::{
    COORDINATOR_SERVICE, Finding, FindingKind, ReconcileReport, Reconciler, Scope, parse_site_log, reconcile,
    site_got_query,
};
pub use record::{Decision, Record, Refusal, Requester, SiteRelease, canonical_json, request_hash, sha256_hex};
pub use recovery::{Recovery, SetAside};
pub use segment::{CHECKPOINTS_FILE, segment_name};
pub use select::{Selection, parse_since, parse_until};
pub use settings::{AuditSettings, PUBLIC_KEY_FILE, spawn_periodic_checkpoints};
pub use stats::StatsSnapshot;
pub use text::{Align, Column, LIST_COLUMNS, describe, list_table, render_table, sanitize};
pub use verify::{Problem, ProblemKind, VerifyOptions, VerifyReport, verify, verify_with};

/// Milliseconds since the Unix epoch, now (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
