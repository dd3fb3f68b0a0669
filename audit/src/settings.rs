//! The `[audit]` section of node and coordinator configuration, and opening the log it
//! describes: the signing key is created on first start (like an SSH host key) and its
//! public half is written next to the log for whoever verifies it.

use crate::{AuditConfig, AuditLog, CommitHook, PublicKey, Result, SigningKey};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Name of the public key file written into the log directory.
pub const PUBLIC_KEY_FILE: &str = "signing.pub";

fn default_dir() -> PathBuf {
    PathBuf::from("audit")
}

fn default_key() -> PathBuf {
    PathBuf::from("audit-signing.key")
}

fn default_segment_mb() -> u64 {
    AuditConfig::DEFAULT_SEGMENT_BYTES >> 20
}

fn default_checkpoint_every() -> u64 {
    AuditConfig::DEFAULT_CHECKPOINT_EVERY
}

fn default_checkpoint_seconds() -> u64 {
    60
}

/// Where the audit log lives and how it is kept. Relative paths are resolved against the
/// configuration file's directory.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSettings {
    /// The log directory (created 0700): segments, checkpoints, the public key.
    #[serde(default = "default_dir")]
    pub dir: PathBuf,
    /// The Ed25519 key that signs checkpoints (PKCS#8 PEM, 0600); created when absent.
    /// Keep it outside the log directory, so that a copy of the log never carries it.
    #[serde(default = "default_key")]
    pub key: PathBuf,
    /// A segment file is sealed and a new one started before it would pass this size.
    #[serde(default = "default_segment_mb")]
    pub max_segment_mb: u64,
    /// A signed checkpoint after this many records (and at every sealed segment and on
    /// shutdown).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: u64,
    /// ... and at the latest this many seconds after a record, so that the newest records
    /// are vouched for by a signature soon (records after the last checkpoint could be cut
    /// off without trace by someone who can write the files).
    #[serde(default = "default_checkpoint_seconds")]
    pub checkpoint_seconds: u64,
}

impl Default for AuditSettings {
    fn default() -> Self {
        Self {
            dir: default_dir(),
            key: default_key(),
            max_segment_mb: default_segment_mb(),
            checkpoint_every: default_checkpoint_every(),
            checkpoint_seconds: default_checkpoint_seconds(),
        }
    }
}

impl AuditSettings {
    /// Settings for a log in `dir` with its key beside it (tests, tools).
    pub fn in_dir(dir: &Path) -> Self {
        Self { dir: dir.join("log"), key: dir.join("audit-signing.key"), ..Self::default() }
    }

    pub fn resolve_paths(&mut self, base: &Path) {
        for p in [&mut self.dir, &mut self.key] {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    /// What reading the file cannot check.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if self.max_segment_mb == 0 || self.checkpoint_every == 0 || self.checkpoint_seconds == 0 {
            return Err("[audit] max_segment_mb, checkpoint_every and checkpoint_seconds must be at least 1".into());
        }
        Ok(())
    }

    /// Opens the log for appending (blocking: call at start-up). A missing signing key is
    /// created; the public key is written to `<dir>/signing.pub` when absent.
    /// `on_commit` hears of each group commit: records in it, its fsync time (for metrics).
    pub fn open(
        &self,
        on_commit: Option<std::sync::Arc<dyn Fn(usize, std::time::Duration) + Send + Sync>>,
    ) -> Result<AuditLog> {
        let key = if self.key.exists() {
            SigningKey::load(&self.key)?
        } else {
            if let Some(parent) = self.key.parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .map_err(|source| crate::AuditError::CreateDir { path: parent.to_path_buf(), source })?;
            }
            let key = SigningKey::generate(&self.key)?;
            tracing::info!(key = %self.key.display(), "created the audit signing key");
            key
        };
        let mut config = AuditConfig::new(&self.dir);
        config.max_segment_bytes = self.max_segment_mb.saturating_mul(1 << 20);
        config.checkpoint_every = self.checkpoint_every;
        config.on_commit = on_commit.map(|observe| -> CommitHook {
            std::sync::Arc::new(move |c: &crate::CommitInfo| observe(c.records, c.fsync))
        });
        let log = AuditLog::open(config, key)?;
        let public = self.dir.join(PUBLIC_KEY_FILE);
        match PublicKey::load(&public) {
            Ok(written) if written == log.public_key() => {}
            Ok(other) => tracing::warn!(
                file = %public.display(),
                holds = %other.key_id(),
                signing_key = %log.public_key().key_id(),
                "the public key beside the audit log is not the signing key's; left as it is"
            ),
            // Absent, or unreadable: a crash while it was written (before writes were atomic).
            Err(_) => {
                if public.exists() {
                    tracing::warn!(file = %public.display(), "the public key beside the audit log is unreadable; written again");
                }
                log.public_key().write(&public)?;
            }
        }
        let recovery = log.recovery();
        tracing::info!(
            dir = %self.dir.display(),
            last_seq = log.last_seq(),
            key_id = %log.public_key().key_id(),
            recovered = ?recovery,
            "audit log open"
        );
        Ok(log)
    }
}

/// Signs a checkpoint every `every` while the log is open (none when nothing was appended
/// since the last one). Stops when the log is dropped. Needs a tokio runtime.
pub fn spawn_periodic_checkpoints(log: &std::sync::Arc<AuditLog>, every: std::time::Duration) {
    let log = std::sync::Arc::downgrade(log);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        loop {
            tick.tick().await;
            let Some(log) = log.upgrade() else { return };
            match log.checkpoint().await {
                Ok(_) => {}
                // A closed log has signed its last checkpoint already.
                Err(crate::AuditError::Closed) => return,
                Err(error) => tracing::warn!(%error, "cannot sign the periodic audit checkpoint"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_key_is_created_once_and_its_public_half_written() {
        let dir = tempfile::tempdir().unwrap();
        let settings = AuditSettings::in_dir(dir.path());
        let log = settings.open(None).unwrap();
        let first = log.public_key();
        log.close().await.unwrap();
        assert!(settings.dir.join(PUBLIC_KEY_FILE).exists());
        let second = settings.open(None).unwrap().public_key();
        assert_eq!(first, second, "the key is reused, not replaced");
        let parsed: AuditSettings = toml_like("max_segment_mb = 1");
        assert_eq!(parsed.max_segment_mb, 1);
        assert_eq!(parsed.dir, PathBuf::from("audit"));
    }

    #[tokio::test]
    async fn an_unreadable_public_key_is_written_again_and_another_key_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let settings = AuditSettings::in_dir(dir.path());
        let public = settings.dir.join(PUBLIC_KEY_FILE);
        let key = settings.open(None).unwrap();
        let ours = key.public_key();
        key.close().await.unwrap();

        // What a crash while writing it could leave (it used to be written in place).
        std::fs::write(&public, b"").unwrap();
        settings.open(None).unwrap().close().await.unwrap();
        assert_eq!(PublicKey::load(&public).unwrap(), ours);

        // Someone put another key there: not for the log to overwrite.
        let (other, _) = SigningKey::generate_in_memory().unwrap();
        other.public_key().write(&public).unwrap();
        settings.open(None).unwrap().close().await.unwrap();
        assert_eq!(PublicKey::load(&public).unwrap(), other.public_key());
    }

    fn toml_like(line: &str) -> AuditSettings {
        // serde_json stands in for TOML here: same field names and defaults.
        let (k, v) = line.split_once(" = ").unwrap();
        serde_json::from_str(&format!("{{\"{k}\": {v}}}")).unwrap()
    }
}
