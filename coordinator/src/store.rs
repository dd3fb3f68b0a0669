//! The query store: every researcher's query (or model fit) with its state, and the answer
//! once it is finished, kept for `[queries] keep_hours` and then deleted. One redb file.
//!
//! Tables: `queries` (owner, id) → [`Stored`]; `results` (owner, id) → the encoded answer,
//! apart so that listing never reads answers; `expiry` (expires_unix_ms, owner, id) → (), so
//! that the sweep reads only what is due. No researcher's token is ever written here.

use redb::{Database, DatabaseError, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition};
use std::path::{Path, PathBuf};
use std::time::Duration;
use verbund_proto::v1 as pb;

const QUERIES: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("queries");
const RESULTS: TableDefinition<(&str, &str), &[u8]> = TableDefinition::new("results");
const EXPIRY: TableDefinition<(u64, &str, &str), ()> = TableDefinition::new("expiry");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");
const FORMAT: u64 = 1;

/// One stored query: what the researcher sees of it, and what the coordinator needs to close
/// its audit trail should it restart while the query runs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Stored {
    #[prost(message, optional, tag = "1")]
    pub status: Option<pb::QueryStatus>,
    /// The id the sites and the audit log know the query by.
    #[prost(string, tag = "2")]
    pub wire_id: String,
    #[prost(string, repeated, tag = "3")]
    pub roles: Vec<String>,
    /// The researcher's request as JSON (SQL, cohort, model; never a token).
    #[prost(string, tag = "4")]
    pub request_json: String,
}

impl Stored {
    pub fn status(&self) -> &pb::QueryStatus {
        static EMPTY: std::sync::OnceLock<pb::QueryStatus> = std::sync::OnceLock::new();
        self.status.as_ref().unwrap_or_else(|| EMPTY.get_or_init(pb::QueryStatus::default))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "the query store {path} is in use by another coordinator process; stop it, or give this one \
         another [queries] store"
    )]
    InUse { path: PathBuf },
    #[error(
        "the query store {path} is damaged or unreadable ({why}); move it aside and restart (its queries are lost)"
    )]
    Corrupt { path: PathBuf, why: String },
    #[error("the query store {path} has format {found}; this coordinator reads format {FORMAT}")]
    UnknownFormat { path: PathBuf, found: u64 },
    #[error("the query store {path} cannot be created: {why}")]
    Create { path: PathBuf, why: String },
    #[error("cannot read or write the query store: {0}; free disk space or fix permissions")]
    Storage(String),
    #[error("the query store is closed: the coordinator is stopping")]
    Closed,
    #[error("a stored query could not be read: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// Why a new query was not stored.
#[derive(Debug)]
pub enum Refused {
    /// The owner already has a query with this id.
    Duplicate(Box<pb::QueryStatus>),
    /// The owner has this many stored queries already.
    Full(u64),
}

fn storage(e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(e.to_string())
}

pub struct Store {
    /// None once closed ([`Store::close`]).
    db: parking_lot::RwLock<Option<Database>>,
}

impl Store {
    /// Opens the store, creating it (and its directory, 0700) if missing. Every page's
    /// checksum is verified on open. Another process holding the file gets `InUse`; a
    /// coordinator restarted in the same process may wait briefly for its predecessor.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            create_private_dir(dir).map_err(|e| StoreError::Create { path: path.into(), why: e.to_string() })?;
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        let db = loop {
            let mut builder = Database::builder();
            builder.set_check_integrity_on_open(true).set_cache_size(32 << 20);
            match builder.create(path) {
                Ok(db) => break db,
                Err(DatabaseError::DatabaseAlreadyOpen) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(DatabaseError::DatabaseAlreadyOpen) => return Err(StoreError::InUse { path: path.into() }),
                Err(DatabaseError::Storage(redb::StorageError::Io(e)))
                    if e.kind() != std::io::ErrorKind::InvalidData =>
                {
                    return Err(StoreError::Create { path: path.into(), why: e.to_string() });
                }
                Err(e) => return Err(StoreError::Corrupt { path: path.into(), why: e.to_string() }),
            }
        };
        restrict_to_owner(path).map_err(|e| StoreError::Create { path: path.into(), why: e.to_string() })?;
        let store = Store { db: parking_lot::RwLock::new(Some(db)) };
        store.init(path)?;
        Ok(store)
    }

    fn db(&self) -> Result<parking_lot::MappedRwLockReadGuard<'_, Database>, StoreError> {
        parking_lot::RwLockReadGuard::try_map(self.db.read(), |db| db.as_ref()).map_err(|_| StoreError::Closed)
    }

    /// Releases the file (as a stopped process would), so that another coordinator can open
    /// it; every later call fails with `Closed`.
    pub fn close(&self) {
        self.db.write().take();
    }

    fn init(&self, path: &Path) -> Result<(), StoreError> {
        let tx = self.db()?.begin_write().map_err(storage)?;
        {
            tx.open_table(QUERIES).map_err(storage)?;
            tx.open_table(RESULTS).map_err(storage)?;
            tx.open_table(EXPIRY).map_err(storage)?;
            let mut meta = tx.open_table(META).map_err(storage)?;
            let found = meta.get("format").map_err(storage)?.map(|v| v.value());
            match found {
                Some(FORMAT) => {}
                Some(found) => return Err(StoreError::UnknownFormat { path: path.into(), found }),
                None => {
                    meta.insert("format", FORMAT).map_err(storage)?;
                }
            }
        }
        tx.commit().map_err(storage)
    }

    /// Stores a new query, unless its owner has one with this id or has `max_per_owner`
    /// stored already.
    pub fn insert_new(&self, stored: &Stored, max_per_owner: u64) -> Result<Result<(), Refused>, StoreError> {
        let s = stored.status();
        let tx = self.db()?.begin_write().map_err(storage)?;
        {
            let mut queries = tx.open_table(QUERIES).map_err(storage)?;
            if let Some(old) = queries.get((s.owner.as_str(), s.query_id.as_str())).map_err(storage)? {
                let old = <Stored as prost::Message>::decode(old.value())?;
                return Ok(Err(Refused::Duplicate(Box::new(old.status().clone()))));
            }
            let owned = queries
                .range((s.owner.as_str(), "")..)
                .map_err(storage)?
                .take_while(|e| e.as_ref().is_ok_and(|(k, _)| k.value().0 == s.owner))
                .count() as u64;
            if owned >= max_per_owner {
                return Ok(Err(Refused::Full(owned)));
            }
            let bytes = prost::Message::encode_to_vec(stored);
            queries.insert((s.owner.as_str(), s.query_id.as_str()), bytes.as_slice()).map_err(storage)?;
        }
        tx.commit().map_err(storage)?;
        Ok(Ok(()))
    }

    /// Writes a query's new state; with `result`, also its answer and its expiry.
    pub fn update(&self, stored: &Stored, result: Option<&[u8]>) -> Result<(), StoreError> {
        let s = stored.status();
        let key = (s.owner.as_str(), s.query_id.as_str());
        let tx = self.db()?.begin_write().map_err(storage)?;
        {
            let mut queries = tx.open_table(QUERIES).map_err(storage)?;
            queries.insert(key, prost::Message::encode_to_vec(stored).as_slice()).map_err(storage)?;
            if let Some(result) = result {
                tx.open_table(RESULTS).map_err(storage)?.insert(key, result).map_err(storage)?;
            }
            if s.expires_unix_ms > 0 {
                tx.open_table(EXPIRY)
                    .map_err(storage)?
                    .insert((s.expires_unix_ms, key.0, key.1), ())
                    .map_err(storage)?;
            }
        }
        tx.commit().map_err(storage)
    }

    pub fn get(&self, owner: &str, id: &str) -> Result<Option<Stored>, StoreError> {
        let tx = self.db()?.begin_read().map_err(storage)?;
        let queries = tx.open_table(QUERIES).map_err(storage)?;
        let found = queries.get((owner, id)).map_err(storage)?;
        Ok(match found {
            Some(v) => Some(prost::Message::decode(v.value())?),
            None => None,
        })
    }

    /// The encoded answer of a finished query.
    pub fn result(&self, owner: &str, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db()?.begin_read().map_err(storage)?;
        let results = tx.open_table(RESULTS).map_err(storage)?;
        Ok(results.get((owner, id)).map_err(storage)?.map(|v| v.value().to_vec()))
    }

    /// Every stored query that `keep` says to show (newest first is the caller's business).
    pub fn list(&self, keep: impl Fn(&pb::QueryStatus) -> bool) -> Result<Vec<pb::QueryStatus>, StoreError> {
        let tx = self.db()?.begin_read().map_err(storage)?;
        let queries = tx.open_table(QUERIES).map_err(storage)?;
        let mut out = Vec::new();
        for entry in queries.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            let stored: Stored = prost::Message::decode(v.value())?;
            if let Some(status) = stored.status
                && keep(&status)
            {
                out.push(status);
            }
        }
        Ok(out)
    }

    /// The queries that were queued or running when the coordinator stopped: they are marked
    /// failed with `message` (finished now, kept as any other), and returned.
    pub fn fail_unfinished(&self, now_ms: u64, keep: Duration, message: &str) -> Result<Vec<Stored>, StoreError> {
        let tx = self.db()?.begin_read().map_err(storage)?;
        let queries = tx.open_table(QUERIES).map_err(storage)?;
        let mut unfinished = Vec::new();
        for entry in queries.iter().map_err(storage)? {
            let (_, v) = entry.map_err(storage)?;
            let stored: Stored = prost::Message::decode(v.value())?;
            if matches!(stored.status().state(), pb::QueryState::Queued | pb::QueryState::Running) {
                unfinished.push(stored);
            }
        }
        drop((queries, tx));
        for stored in &mut unfinished {
            if let Some(s) = stored.status.as_mut() {
                s.state = pb::QueryState::Failed as i32;
                s.error_code = tonic::Code::Unavailable as i32;
                s.error_message = message.to_string();
                s.finished_unix_ms = now_ms;
                s.expires_unix_ms = now_ms.saturating_add(keep.as_millis() as u64);
                s.sites.iter_mut().for_each(|p| p.finished = true);
                s.version += 1;
            }
            self.update(stored, None)?;
        }
        Ok(unfinished)
    }

    /// Deletes every query whose result expired by `now_ms`; returns how many.
    pub fn sweep(&self, now_ms: u64) -> Result<u64, StoreError> {
        let tx = self.db()?.begin_write().map_err(storage)?;
        let mut deleted = 0;
        {
            let mut expiry = tx.open_table(EXPIRY).map_err(storage)?;
            let mut queries = tx.open_table(QUERIES).map_err(storage)?;
            let mut results = tx.open_table(RESULTS).map_err(storage)?;
            let due: Vec<(u64, String, String)> = expiry
                .range(..=(now_ms, "\u{10FFFF}", "\u{10FFFF}"))
                .map_err(storage)?
                .filter_map(|e| e.ok())
                .map(|(k, _)| {
                    let (at, owner, id) = k.value();
                    (at, owner.to_string(), id.to_string())
                })
                .collect();
            for (at, owner, id) in &due {
                expiry.remove((*at, owner.as_str(), id.as_str())).map_err(storage)?;
                // A query's expiry may have been moved (it is written once, at its end); only
                // delete what is still due.
                let still_due = match queries.get((owner.as_str(), id.as_str())).map_err(storage)? {
                    Some(v) => <Stored as prost::Message>::decode(v.value())?.status().expires_unix_ms <= now_ms,
                    None => false,
                };
                if still_due {
                    queries.remove((owner.as_str(), id.as_str())).map_err(storage)?;
                    results.remove((owner.as_str(), id.as_str())).map_err(storage)?;
                    deleted += 1;
                }
            }
        }
        tx.commit().map_err(storage)?;
        Ok(deleted)
    }

    /// How many queries are stored.
    pub fn len(&self) -> Result<u64, StoreError> {
        let tx = self.db()?.begin_read().map_err(storage)?;
        tx.open_table(QUERIES).map_err(storage)?.len().map_err(storage)
    }

    pub fn is_empty(&self) -> Result<bool, StoreError> {
        Ok(self.len()? == 0)
    }
}

fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

fn restrict_to_owner(path: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    let _ = path;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(owner: &str, id: &str, state: pb::QueryState) -> Stored {
        Stored {
            status: Some(pb::QueryStatus {
                query_id: id.into(),
                owner: owner.into(),
                state: state as i32,
                ..Default::default()
            }),
            wire_id: format!("w-{id}"),
            ..Default::default()
        }
    }

    #[test]
    fn ids_are_per_owner_and_capped() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("q/queries.redb")).unwrap();
        assert!(store.insert_new(&stored("alice", "a", pb::QueryState::Queued), 2).unwrap().is_ok());
        assert!(store.insert_new(&stored("bob", "a", pb::QueryState::Queued), 2).unwrap().is_ok());
        let again = store.insert_new(&stored("alice", "a", pb::QueryState::Queued), 2).unwrap();
        assert!(matches!(again, Err(Refused::Duplicate(s)) if s.owner == "alice"));
        assert!(store.insert_new(&stored("alice", "b", pb::QueryState::Queued), 2).unwrap().is_ok());
        let full = store.insert_new(&stored("alice", "c", pb::QueryState::Queued), 2).unwrap();
        assert!(matches!(full, Err(Refused::Full(2))), "{full:?}");
        // "alice" and "alice2" are different owners.
        assert!(store.insert_new(&stored("alice2", "c", pb::QueryState::Queued), 2).unwrap().is_ok());
        assert_eq!(store.len().unwrap(), 4);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join("q/queries.redb")).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn unfinished_queries_fail_at_reopen_and_expired_ones_are_swept() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queries.redb");
        {
            let store = Store::open(&path).unwrap();
            store.insert_new(&stored("alice", "running", pb::QueryState::Running), 10).unwrap().unwrap();
            let mut done = stored("alice", "done", pb::QueryState::Done);
            done.status.as_mut().unwrap().expires_unix_ms = 1_000;
            store.insert_new(&done, 10).unwrap().unwrap();
            store.update(&done, Some(b"answer")).unwrap();
        }
        let store = Store::open(&path).unwrap();
        let failed = store.fail_unfinished(500, Duration::from_millis(10_000), "restarted").unwrap();
        assert_eq!(failed.len(), 1);
        let running = store.get("alice", "running").unwrap().unwrap();
        assert_eq!(running.status().state(), pb::QueryState::Failed);
        assert_eq!(running.status().error_message, "restarted");
        assert_eq!(running.status().expires_unix_ms, 10_500);
        assert_eq!(store.result("alice", "done").unwrap().as_deref(), Some(&b"answer"[..]));
        assert_eq!(store.sweep(999).unwrap(), 0);
        assert_eq!(store.sweep(1_000).unwrap(), 1);
        assert!(store.get("alice", "done").unwrap().is_none());
        assert!(store.result("alice", "done").unwrap().is_none());
        assert_eq!(store.sweep(10_500).unwrap(), 1);
        assert!(store.is_empty().unwrap());
    }

    #[test]
    fn a_store_of_another_format_or_a_damaged_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("queries.redb");
        {
            let store = Store::open(&path).unwrap();
            let tx = store.db().unwrap().begin_write().unwrap();
            tx.open_table(META).unwrap().insert("format", 9).unwrap();
            tx.commit().unwrap();
        }
        let e = Store::open(&path).err().unwrap();
        assert!(matches!(e, StoreError::UnknownFormat { found: 9, .. }), "{e}");
        std::fs::write(&path, b"not a database at all, just text").unwrap();
        let e = Store::open(&path).err().unwrap();
        assert!(e.to_string().contains("damaged"), "{e}");
    }
}
