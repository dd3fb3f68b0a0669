//! The ledger file: one redb database, three tables.

use crate::cost::{Allowance, Cost, Window};
use crate::error::{Exhausted, LedgerError};
use redb::{Database, DatabaseError, Durability, ReadableDatabase, ReadableTable, StorageError, TableDefinition};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// (project, period start in seconds since 1970) → (ε micro, δ pico, queries charged).
const SPENT: TableDefinition<(&str, u64), (u64, u64, u64)> = TableDefinition::new("spent");
/// (project, request digest) → (ε micro, δ pico, charged at in seconds since 1970, period start).
/// A digest stays here for good: a repeat is free in every later period too.
const CHARGED: TableDefinition<ChargedKey, ChargedRow> = TableDefinition::new("charged");
type ChargedKey = (&'static str, &'static [u8; 32]);
type ChargedRow = (u64, u64, u64, u64);
/// "format" → the layout version of the tables above, so that a later layout is refused rather
/// than misread.
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FORMAT: u64 = 1;

/// The outcome of a debit that may release its answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Debit {
    /// The cost was charged, durably: the answer may now leave.
    Charged { left: Cost, renews_at: SystemTime },
    /// The same request was charged before; nothing was charged now.
    Repeat { left: Cost, renews_at: SystemTime },
}

impl Debit {
    pub fn left(&self) -> Cost {
        match self {
            Debit::Charged { left, .. } | Debit::Repeat { left, .. } => *left,
        }
    }

    pub fn renews_at(&self) -> SystemTime {
        match self {
            Debit::Charged { renews_at, .. } | Debit::Repeat { renews_at, .. } => *renews_at,
        }
    }
}

/// A project's budget in the current period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Remaining {
    pub spent: Cost,
    pub left: Cost,
    pub renews_at: SystemTime,
    /// Queries charged this period (repeats not counted).
    pub queries: u64,
}

/// The durable privacy-budget ledger of one node. Share it as `Arc<Ledger>`: all methods take
/// `&self`, and redb runs one write transaction at a time, which is what makes a debit atomic.
pub struct Ledger {
    db: Database,
    path: PathBuf,
}

impl Ledger {
    /// Opens the ledger file, creating it (not its directory) if missing. Every page's checksum
    /// is verified on open, so a damaged file is refused as `Corrupt` instead of being trusted.
    /// Only one process may have the file open.
    pub fn open(path: &Path) -> Result<Ledger, LedgerError> {
        let mut builder = Database::builder();
        // The ledger is small; redb's 1 GiB default cache would be a waste.
        builder.set_check_integrity_on_open(true).set_cache_size(16 << 20);
        let db = builder.create(path).map_err(|e| open_error(path, e))?;
        let ledger = Ledger { db, path: path.to_owned() };
        ledger.init()?;
        Ok(ledger)
    }

    /// Creates the tables (so reads never meet a missing one) and checks the format.
    fn init(&self) -> Result<(), LedgerError> {
        let tx = self.begin_write()?;
        {
            tx.open_table(SPENT).map_err(|e| self.storage(e))?;
            tx.open_table(CHARGED).map_err(|e| self.storage(e))?;
            let mut meta = tx.open_table(META).map_err(|e| self.storage(e))?;
            let found = meta.get("format").map_err(|e| self.storage(e))?.map(|v| v.value());
            match found {
                Some(FORMAT) => {}
                Some(found) => {
                    return Err(LedgerError::UnknownFormat { path: self.path.clone(), found, known: FORMAT });
                }
                None => {
                    meta.insert("format", FORMAT).map_err(|e| self.storage(e))?;
                }
            }
        }
        tx.commit().map_err(|e| self.storage(e))
    }

    /// Charges `cost` to `project` for `request` (a digest of the request as the node will
    /// answer it), in one durable write transaction. Returns `Charged` only once the debit is
    /// on disk; `Repeat` if this request was charged before (it costs nothing); `Exhausted` if
    /// the period's allowance cannot pay for it, in which case nothing was written.
    pub fn debit(
        &self,
        project: &str,
        request: &[u8; 32],
        cost: Cost,
        allowance: &Allowance,
        now: SystemTime,
    ) -> Result<Debit, LedgerError> {
        let window = Window::of(allowance.period, now)?;
        let at = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let tx = self.begin_write()?;
        let outcome = {
            let mut charged = tx.open_table(CHARGED).map_err(|e| self.storage(e))?;
            let mut spent = tx.open_table(SPENT).map_err(|e| self.storage(e))?;
            let before = spent.get((project, window.start)).map_err(|e| self.storage(e))?.map(|v| v.value());
            let (before, queries) = before.map_or((Cost::ZERO, 0), |(e, d, q)| (cost_of(e, d), q));
            if charged.get((project, request)).map_err(|e| self.storage(e))?.is_some() {
                Err(before)
            } else {
                match before.checked_add(cost).filter(|after| after.within(allowance.per_period)) {
                    None => {
                        let left = allowance.per_period.saturating_sub(before);
                        let exhausted = Exhausted {
                            project: project.to_owned(),
                            cost,
                            left,
                            allowance: *allowance,
                            renews_at: window.renews_at,
                        };
                        // Dropping the transaction aborts it: nothing was written.
                        return Err(exhausted.into());
                    }
                    Some(after) => {
                        let row = (after.epsilon_micro, after.delta_pico, queries.saturating_add(1));
                        spent.insert((project, window.start), row).map_err(|e| self.storage(e))?;
                        let row = (cost.epsilon_micro, cost.delta_pico, at, window.start);
                        charged.insert((project, request), row).map_err(|e| self.storage(e))?;
                        Ok(after)
                    }
                }
            }
        };
        let renews_at = window.renews_at;
        match outcome {
            Ok(after) => {
                // The commit returns once the debit is on disk; only then may the answer leave.
                tx.commit().map_err(|e| self.storage(e))?;
                Ok(Debit::Charged { left: allowance.per_period.saturating_sub(after), renews_at })
            }
            Err(spent) => {
                tx.abort().map_err(|e| self.storage(e))?;
                Ok(Debit::Repeat { left: allowance.per_period.saturating_sub(spent), renews_at })
            }
        }
    }

    /// What `project` has spent and has left in the period that `now` falls in.
    pub fn remaining(&self, project: &str, allowance: &Allowance, now: SystemTime) -> Result<Remaining, LedgerError> {
        let window = Window::of(allowance.period, now)?;
        let tx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = tx.open_table(SPENT).map_err(|e| self.storage(e))?;
        let row = table.get((project, window.start)).map_err(|e| self.storage(e))?.map(|v| v.value());
        let (spent, queries) = row.map_or((Cost::ZERO, 0), |(e, d, q)| (cost_of(e, d), q));
        Ok(Remaining { spent, left: allowance.per_period.saturating_sub(spent), renews_at: window.renews_at, queries })
    }

    /// Spent per project in the period of length `period` that `now` falls in, by project name.
    /// Projects that spent nothing in it are not listed.
    pub fn projects(&self, now: SystemTime, period: Duration) -> Result<Vec<(String, Cost)>, LedgerError> {
        let window = Window::of(period, now)?;
        let tx = self.db.begin_read().map_err(|e| self.storage(e))?;
        let table = tx.open_table(SPENT).map_err(|e| self.storage(e))?;
        let mut projects = Vec::new();
        // A full scan: the key starts with the project, and the table holds one row per project
        // and period, so it stays small.
        for row in table.iter().map_err(|e| self.storage(e))? {
            let (key, value) = row.map_err(|e| self.storage(e))?;
            let ((project, start), (epsilon, delta, _)) = (key.value(), value.value());
            if start == window.start {
                projects.push((project.to_owned(), cost_of(epsilon, delta)));
            }
        }
        Ok(projects)
    }

    /// Immediate durability (the commit returns after fsync) and two-phase commit (a crash
    /// mid-commit falls back to the previous commit, checked by its own checksum, never to a
    /// half-written one), set on every write rather than trusted to defaults.
    fn begin_write(&self) -> Result<redb::WriteTransaction, LedgerError> {
        let mut tx = self.db.begin_write().map_err(|e| self.storage(e))?;
        tx.set_durability(Durability::Immediate).map_err(|e| self.storage(e))?;
        tx.set_two_phase_commit(true);
        Ok(tx)
    }

    fn storage(&self, error: impl Into<redb::Error>) -> LedgerError {
        let path = self.path.clone();
        match error.into() {
            redb::Error::Corrupted(detail) => LedgerError::Corrupt { path, detail },
            redb::Error::Io(io) if io.kind() == ErrorKind::InvalidData => {
                LedgerError::Corrupt { path, detail: io.to_string() }
            }
            e @ (redb::Error::TableTypeMismatch { .. } | redb::Error::TableIsMultimap(_)) => {
                LedgerError::Corrupt { path, detail: format!("its tables are not a ledger's: {e}") }
            }
            e => LedgerError::Storage(format!("{}: {e}", path.display())),
        }
    }
}

fn cost_of(epsilon_micro: u64, delta_pico: u64) -> Cost {
    Cost { epsilon_micro, delta_pico }
}

fn open_error(path: &Path, source: DatabaseError) -> LedgerError {
    let path = path.to_owned();
    let hint = match &source {
        DatabaseError::Storage(StorageError::Corrupted(detail)) => {
            return LedgerError::Corrupt { path, detail: detail.clone() };
        }
        // redb's answer to a file that does not start like a redb database.
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == ErrorKind::InvalidData => {
            return LedgerError::Corrupt { path, detail: format!("it is not a ledger file ({io})") };
        }
        DatabaseError::DatabaseAlreadyOpen => {
            "another process has it open; one node per ledger file, so stop the other one (or give this node its own file)"
        }
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == ErrorKind::NotFound => {
            "its directory does not exist; create it"
        }
        DatabaseError::Storage(StorageError::Io(io)) if io.kind() == ErrorKind::PermissionDenied => {
            "the node's user must be able to read and write the file and its directory"
        }
        DatabaseError::UpgradeRequired(_) => {
            "the file is in an older redb format; upgrade it with the redb version that wrote it"
        }
        _ => "check the path and the disk",
    };
    LedgerError::Open { path, hint, source }
}
