//! Writing secrets (private keys, signing keys, tokens) to disk: readable by their owner only
//! from the moment the file exists, and never replacing an existing one unless the caller
//! says so.

use crate::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// What to do when the file to write exists already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overwrite {
    /// Refuse: a new key or token never replaces one that is there (the error names the file).
    Refuse,
    /// Replace it (re-issuing a certificate replaces its key). The new contents go to a
    /// private file beside it, which is then renamed over it: the secret never sits in a file
    /// that others may read, whatever the old file's mode was.
    Replace,
}

/// Writes `contents` to `path`, created with mode 0600 (owner read/write only) on Unix; the
/// final file has mode 0600 whether it replaced another or not.
pub fn write_secret(path: &Path, contents: &[u8], overwrite: Overwrite) -> Result<()> {
    let error = |error| Error::Write { path: path.to_path_buf(), error };
    match overwrite {
        Overwrite::Refuse => match create_private(path) {
            Ok(file) => fill(file, contents).map_err(|e| {
                let _ = std::fs::remove_file(path);
                error(e)
            }),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(Error::Exists { path: path.to_path_buf() }),
            Err(e) => Err(error(e)),
        },
        Overwrite::Replace => {
            let temporary = temporary_beside(path);
            match std::fs::remove_file(&temporary) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(error(e)),
                _ => {}
            }
            let written = create_private(&temporary)
                .and_then(|file| fill(file, contents))
                .and_then(|()| std::fs::rename(&temporary, path));
            written.map_err(|e| {
                let _ = std::fs::remove_file(&temporary);
                error(e)
            })
        }
    }
}

/// A new file (never an existing one, never through a symbolic link) that only its owner
/// may read or write.
fn create_private(path: &Path) -> std::io::Result<std::fs::File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let file = options.open(path)?;
    // The umask can only take bits away from 0600; set the mode exactly all the same.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(file)
}

fn fill(mut file: std::fs::File, contents: &[u8]) -> std::io::Result<()> {
    file.write_all(contents)?;
    file.sync_all()
}

/// `<dir>/.<name>.<pid>.tmp`: in the same directory, so that the rename stays on one file system.
fn temporary_beside(path: &Path) -> PathBuf {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.{}.tmp", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn an_existing_secret_is_not_overwritten_unless_asked() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("ca.key");
        write_secret(&key, b"first", Overwrite::Refuse).unwrap();
        let e = write_secret(&key, b"second", Overwrite::Refuse).unwrap_err();
        assert!(matches!(e, Error::Exists { .. }), "{e}");
        let message = e.to_string();
        assert!(message.contains(&key.display().to_string()) && message.contains("delete"), "{message}");
        assert_eq!(std::fs::read(&key).unwrap(), b"first", "the refused write left the key alone");

        write_secret(&key, b"second", Overwrite::Replace).unwrap();
        assert_eq!(std::fs::read(&key).unwrap(), b"second");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(left, ["ca.key"], "no temporary file is left behind");
    }

    #[cfg(unix)]
    #[test]
    fn secrets_are_private_from_the_start_and_after_replacing() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("researcher.token");
        write_secret(&token, b"t", Overwrite::Refuse).unwrap();
        assert_eq!(mode(&token), 0o600);

        // A file others could read is replaced by a private one, not rewritten in place.
        let site = dir.path().join("site.key");
        std::fs::write(&site, b"old").unwrap();
        std::fs::set_permissions(&site, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_secret(&site, b"new", Overwrite::Replace).unwrap();
        assert_eq!(mode(&site), 0o600);
        assert_eq!(std::fs::read(&site).unwrap(), b"new");

        // Replacing where nothing was creates the file.
        let fresh = dir.path().join("fresh.key");
        write_secret(&fresh, b"k", Overwrite::Replace).unwrap();
        assert_eq!(mode(&fresh), 0o600);
    }

    #[test]
    fn a_missing_directory_is_a_write_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = write_secret(&dir.path().join("no/such/dir.key"), b"k", Overwrite::Refuse).unwrap_err();
        assert!(matches!(e, Error::Write { .. }), "{e}");
    }
}
