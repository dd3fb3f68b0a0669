//! The site's audit signing key (Ed25519): generated once and written readable by its owner
//! only, loaded at start-up, and its public half exported for third parties who verify the
//! log's checkpoints.
//!
//! Files are PEM so that standard tools read them: the private key is PKCS#8 v1
//! (`-----BEGIN PRIVATE KEY-----`, as `openssl genpkey -algorithm ED25519` writes it), the
//! public key is SubjectPublicKeyInfo (`-----BEGIN PUBLIC KEY-----`).

use crate::{AuditError, Result};
use aws_lc_rs::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use std::fmt;
use std::path::Path;
use verbund_security::files::{Overwrite, write_secret};

/// DER prefix of an Ed25519 SubjectPublicKeyInfo; the 32 key bytes follow it (RFC 8410).
const SPKI_PREFIX: [u8; 12] = [0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00];

/// The private key that signs checkpoints.
pub struct SigningKey {
    pair: Ed25519KeyPair,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({})", self.public_key().key_id())
    }
}

impl SigningKey {
    /// Generates a key and writes it to `path` (mode 0600). An existing file is never
    /// replaced: the error names it.
    ///
    /// The key is written whole (and synced) to `<path>.partial` first and then linked to
    /// `path`, so a crash while writing never leaves a partial key at `path`: that would stop
    /// every later start ("not an Ed25519 private key") until someone deleted it by hand. A
    /// `.partial` left by such a crash is replaced by the next attempt.
    pub fn generate(path: &Path) -> Result<SigningKey> {
        let (key, pkcs8) = Self::generate_in_memory()?;
        if path.exists() {
            return Err(verbund_security::Error::Exists { path: path.to_path_buf() }.into());
        }
        let partial = beside(path, ".partial");
        match std::fs::remove_file(&partial) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(AuditError::write(&partial, e)),
            _ => {}
        }
        write_secret(&partial, pem("PRIVATE KEY", &pkcs8).as_bytes(), Overwrite::Refuse)?;
        // A hard link never replaces an existing file (as a rename would).
        let linked = std::fs::hard_link(&partial, path);
        let _ = std::fs::remove_file(&partial);
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(verbund_security::Error::Exists { path: path.to_path_buf() }.into());
            }
            Err(e) => return Err(AuditError::write(path, e)),
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::recovery::sync_dir(dir).map_err(|e| AuditError::write(dir, e))?;
        }
        Ok(key)
    }

    /// A key that lives only in memory (tests, tools).
    pub fn generate_in_memory() -> Result<(SigningKey, Vec<u8>)> {
        let key_error = |why: &str| AuditError::Key { path: "(new key)".into(), why: why.into() };
        let pair = Ed25519KeyPair::generate().map_err(|_| key_error("the crypto library could not generate one"))?;
        let pkcs8 = pair.to_pkcs8v1().map_err(|_| key_error("the crypto library could not encode it"))?;
        Ok((SigningKey { pair }, pkcs8.as_ref().to_vec()))
    }

    /// Loads a PKCS#8 Ed25519 key, PEM or DER.
    pub fn load(path: &Path) -> Result<SigningKey> {
        let bytes = std::fs::read(path).map_err(|e| AuditError::read(path, e))?;
        let key_error = |why: &str| AuditError::Key { path: path.to_path_buf(), why: why.into() };
        let der = match std::str::from_utf8(&bytes) {
            Ok(text) if text.trim_start().starts_with("-----BEGIN") => unpem(text, "PRIVATE KEY")
                .ok_or_else(|| key_error("it is PEM but not a single PRIVATE KEY block in base64"))?,
            _ => bytes,
        };
        Self::from_pkcs8(&der).map_err(key_error)
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<SigningKey, &'static str> {
        Ed25519KeyPair::from_pkcs8(der)
            .map(|pair| SigningKey { pair })
            .map_err(|_| "it is not an Ed25519 private key in PKCS#8 (generate one with the audit key command)")
    }

    pub fn public_key(&self) -> PublicKey {
        let mut bytes = [0; 32];
        bytes.copy_from_slice(self.pair.public_key().as_ref());
        PublicKey(bytes)
    }

    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>> {
        self.pair.try_sign(message).map(|s| s.as_ref().to_vec()).map_err(|_| AuditError::Sign)
    }
}

/// The public half, which is all a third party needs to check checkpoints.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct PublicKey(pub [u8; 32]);

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.key_id())
    }
}

impl PublicKey {
    /// A short name for the key, written into each checkpoint: the first 8 bytes of the
    /// SHA-256 of the raw key, in hex. It lets verify say "signed by another key".
    pub fn key_id(&self) -> String {
        hex::encode(&aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.0).as_ref()[..8])
    }

    /// PEM SubjectPublicKeyInfo, as `openssl pkey -pubout` writes it.
    pub fn to_pem(&self) -> String {
        let mut der = SPKI_PREFIX.to_vec();
        der.extend_from_slice(&self.0);
        pem("PUBLIC KEY", &der)
    }

    pub fn from_pem(text: &str) -> Option<PublicKey> {
        let der = unpem(text, "PUBLIC KEY")?;
        let raw = der.strip_prefix(&SPKI_PREFIX[..])?;
        Some(PublicKey(raw.try_into().ok()?))
    }

    /// Writes the PEM public key (it is not secret; an existing file is replaced). Written
    /// to a temporary file beside it and renamed, so a crash never leaves a partial key.
    pub fn write(&self, path: &Path) -> Result<()> {
        let temporary = beside(path, &format!(".{}.tmp", std::process::id()));
        let written = std::fs::write(&temporary, self.to_pem())
            .and_then(|()| std::fs::File::open(&temporary)?.sync_all())
            .and_then(|()| std::fs::rename(&temporary, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&temporary);
            return Err(AuditError::write(path, e));
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::recovery::sync_dir(dir).map_err(|e| AuditError::write(dir, e))?;
        }
        Ok(())
    }

    pub fn load(path: &Path) -> Result<PublicKey> {
        let text = std::fs::read_to_string(path).map_err(|e| AuditError::read(path, e))?;
        PublicKey::from_pem(&text).ok_or_else(|| AuditError::Key {
            path: path.to_path_buf(),
            why: "it is not an Ed25519 public key in PEM (-----BEGIN PUBLIC KEY-----)".into(),
        })
    }

    pub(crate) fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ED25519, &self.0).verify(message, signature).is_ok()
    }
}

/// `path` with `suffix` added to its file name.
fn beside(path: &Path, suffix: &str) -> std::path::PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

fn pem(label: &str, der: &[u8]) -> String {
    let body = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unpem(text: &str, label: &str) -> Option<Vec<u8>> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let body = text.trim().strip_prefix(&begin)?.strip_suffix(&end)?;
    let body: String = body.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    STANDARD.decode(body).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_written_private_never_overwritten_and_load_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        let key = SigningKey::generate(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let e = SigningKey::generate(&path).unwrap_err();
        assert!(e.to_string().contains("exists already"), "{e}");
        let loaded = SigningKey::load(&path).unwrap();
        assert_eq!(loaded.public_key(), key.public_key());

        let public = dir.path().join("audit.pub");
        key.public_key().write(&public).unwrap();
        assert!(std::fs::read_to_string(&public).unwrap().starts_with("-----BEGIN PUBLIC KEY-----\n"));
        assert_eq!(PublicKey::load(&public).unwrap(), key.public_key());

        let signature = key.sign(b"message").unwrap();
        assert!(key.public_key().verify(b"message", &signature));
        assert!(!key.public_key().verify(b"massage", &signature));

        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left.len(), 2, "no temporary file is left behind: {left:?}");

        std::fs::write(dir.path().join("junk.key"), b"not a key").unwrap();
        let e = SigningKey::load(&dir.path().join("junk.key")).unwrap_err();
        assert!(e.to_string().contains("not an Ed25519 private key"), "{e}");
        assert!(PublicKey::load(&path).is_err(), "a private key is not a public key");
    }

    #[test]
    fn a_crash_while_creating_the_key_leaves_no_partial_key_behind_it() {
        // What a crash inside `generate` can leave: the key written only in part, under the
        // temporary name. The final name has nothing yet, so the next start generates again.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.key");
        std::fs::write(dir.path().join("audit.key.partial"), b"-----BEGIN PRIVATE KEY-----\nMC4CAQAw").unwrap();
        let key = SigningKey::generate(&path).unwrap();
        assert_eq!(SigningKey::load(&path).unwrap().public_key(), key.public_key());
        assert!(!dir.path().join("audit.key.partial").exists());

        // The public key is replaced whole, whatever was there.
        let public = dir.path().join("signing.pub");
        std::fs::write(&public, b"-----BEGIN PUB").unwrap();
        key.public_key().write(&public).unwrap();
        assert_eq!(PublicKey::load(&public).unwrap(), key.public_key());
        let mut left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        left.sort();
        assert_eq!(left, ["audit.key", "signing.pub"]);
    }
}
