//! Sign-in: the server secret, token lifetimes, the session cache, password
//! hashing and the lockout after wrong passwords.

use std::time::Duration;

use super::source::{Source, invalid};
use super::{ConfigError, RunMode, Secret};

/// The shortest `SECRET_KEY` accepted, given or kept in the data directory.
pub const MIN_SECRET_LEN: usize = 32;

#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// `SECRET_KEY`. `None` only in development when it is unset: start-up then
    /// keeps a generated one in the data directory (`data_dir::development_secret_key`).
    pub secret_key: Option<Secret<Vec<u8>>>,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// How long a recent check that a sign-in session is live may be reused.
    pub session_cache_ttl: Duration,
    /// Password hashes computed at once.
    pub hash_concurrency: usize,
    pub lockout_threshold: u32,
    pub lockout_duration: Duration,
}

impl AuthSettings {
    pub(super) fn load(source: &Source, mode: RunMode, cpus: usize) -> Result<Self, ConfigError> {
        let access_token_ttl =
            source.duration("ACCESS_TOKEN_TTL", Duration::from_secs(24 * 3600))?;
        let refresh_token_ttl =
            source.duration("REFRESH_TOKEN_TTL", Duration::from_secs(30 * 86_400))?;
        if refresh_token_ttl <= access_token_ttl {
            return Err(invalid(
                "REFRESH_TOKEN_TTL",
                "must be longer than ACCESS_TOKEN_TTL",
            ));
        }
        // One core is left to the workers: a login flood must not starve the
        // requests that do not hash (health checks, the terminal).
        let hash_concurrency = source.parse(
            "DEVPOCKET_HASH_CONCURRENCY",
            cpus.saturating_sub(1).max(1),
            "a whole number",
        )?;
        if hash_concurrency == 0 {
            return Err(invalid("DEVPOCKET_HASH_CONCURRENCY", "must be at least 1"));
        }
        let lockout_threshold =
            source.parse("DEVPOCKET_LOCKOUT_THRESHOLD", 5u32, "a whole number")?;
        if lockout_threshold == 0 {
            return Err(invalid("DEVPOCKET_LOCKOUT_THRESHOLD", "must be at least 1"));
        }
        let lockout_duration =
            source.duration("DEVPOCKET_LOCKOUT_DURATION", Duration::from_secs(15 * 60))?;
        let session_cache_ttl =
            source.cache_ttl("DEVPOCKET_SESSION_CACHE_TTL", Duration::from_secs(2))?;
        let secret_key = match source.get("SECRET_KEY") {
            Some(key) if key.len() >= MIN_SECRET_LEN => Some(Secret::new(key.as_bytes().to_vec())),
            Some(_) => {
                return Err(invalid(
                    "SECRET_KEY",
                    format!(
                        "must be at least {MIN_SECRET_LEN} characters (for example: openssl rand -hex 32)"
                    ),
                ));
            }
            None if mode == RunMode::Production => {
                return Err(invalid(
                    "SECRET_KEY",
                    "is required when DEVPOCKET_ENV=production (for example: openssl rand -hex 32)",
                ));
            }
            None => None,
        };
        Ok(Self {
            secret_key,
            access_token_ttl,
            refresh_token_ttl,
            session_cache_ttl,
            hash_concurrency,
            lockout_threshold,
            lockout_duration,
        })
    }
}
