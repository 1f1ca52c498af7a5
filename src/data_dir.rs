//! The data directory at start-up: made owner-only when missing, and the
//! development secret key kept in it (settings only parse values; files are here).

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rand::RngCore;

use crate::config::{MIN_SECRET_LEN, Secret};

const SECRET_KEY_FILE: &str = "secret_key";

/// The data directory or the key in it could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("could not read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Named like a bad setting: it stands in for `SECRET_KEY`.
    #[error(
        "SECRET_KEY: {} is shorter than {MIN_SECRET_LEN} characters: delete it to generate a new one (this signs everybody out)",
        path.display()
    )]
    ShortSecretKey { path: PathBuf },
}

/// Creates the data directory (owner-only) if needed.
pub fn ensure_data_dir(dir: &Path) -> Result<(), DataDirError> {
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| DataDirError::Io {
                path: dir.to_path_buf(),
                source,
            })?;
    }
    Ok(())
}

/// The development secret: generated once, kept in `<data dir>/secret_key` (0600),
/// so tokens and encrypted keys survive restarts.
pub fn development_secret_key(data_dir: &Path) -> Result<Secret<Vec<u8>>, DataDirError> {
    ensure_data_dir(data_dir)?;
    let path = data_dir.join(SECRET_KEY_FILE);
    let io = |source| DataDirError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(existing) => {
            let existing = existing.trim();
            if existing.len() < MIN_SECRET_LEN {
                return Err(DataDirError::ShortSecretKey { path });
            }
            Ok(Secret::new(existing.as_bytes().to_vec()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut bytes = [0u8; 32];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let key = hex::encode(bytes);
            let mut file = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .map_err(io)?;
            file.write_all(key.as_bytes()).map_err(io)?;
            Ok(Secret::new(key.into_bytes()))
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn development_secret_is_generated_once() {
        let dir = std::env::temp_dir().join(format!("devpocket-cfg-{}", uuid::Uuid::new_v4()));
        let first = development_secret_key(&dir).expect("first");
        let second = development_secret_key(&dir).expect("second");
        assert_eq!(first, second);
        assert!(first.expose().len() >= MIN_SECRET_LEN);
        let mode = std::fs::metadata(dir.join(SECRET_KEY_FILE))
            .expect("kept")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn a_short_kept_key_is_refused_naming_the_setting() {
        let dir = std::env::temp_dir().join(format!("devpocket-cfg-{}", uuid::Uuid::new_v4()));
        ensure_data_dir(&dir).expect("dir");
        std::fs::write(dir.join(SECRET_KEY_FILE), "short").expect("write");
        let err = development_secret_key(&dir).expect_err("too short");
        assert!(err.to_string().starts_with("SECRET_KEY: "), "{err}");
        std::fs::remove_dir_all(dir).ok();
    }
}
