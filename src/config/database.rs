//! The database: an external PostgreSQL server or the embedded cluster, and the
//! connection pool.

use std::path::PathBuf;
use std::time::Duration;

use super::source::{Source, invalid};
use super::{ConfigError, Secret};

/// Where the database lives.
#[derive(Debug, Clone)]
pub enum DatabaseLocation {
    /// A server the operator runs (`DATABASE_URL`).
    External(Secret<String>),
    /// A private cluster under the data directory, started by DevPocket.
    Embedded,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    pub location: DatabaseLocation,
    pub pool_size: usize,
    /// How long to wait for a pooled connection.
    pub timeout: Duration,
    /// Explicit PostgreSQL binary directory for the embedded cluster.
    pub pg_bin_dir: Option<PathBuf>,
}

impl DatabaseSettings {
    pub(super) fn load(source: &Source) -> Result<Self, ConfigError> {
        let location = match source.get("DATABASE_URL") {
            None => DatabaseLocation::Embedded,
            Some(url) => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(invalid(
                        "DATABASE_URL",
                        "must be a postgres:// or postgresql:// URL (unset it to use the embedded database)",
                    ));
                }
                DatabaseLocation::External(Secret::new(url.to_owned()))
            }
        };
        let pool_size = source.parse("DEVPOCKET_DB_POOL_SIZE", 16usize, "a whole number")?;
        if pool_size == 0 {
            return Err(invalid("DEVPOCKET_DB_POOL_SIZE", "must be at least 1"));
        }
        Ok(Self {
            location,
            pool_size,
            timeout: source.duration("DEVPOCKET_DB_TIMEOUT", Duration::from_secs(5))?,
            pg_bin_dir: source.get("DEVPOCKET_PG_BIN").map(PathBuf::from),
        })
    }
}
