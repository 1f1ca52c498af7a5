//! Argon2id password hashing, off the async executor and with bounded concurrency,
//! so a burst of logins cannot starve the workers or exhaust memory.

use std::sync::Arc;

use argon2::password_hash::rand_core::{OsRng, RngCore as _};
use argon2::password_hash::{
    Output, PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString,
};
use argon2::{Algorithm, Argon2, Params, Version};
use tokio::sync::Semaphore;

/// OWASP's recommended Argon2id parameters: 19 MiB of memory, 2 passes, 1 lane.
const MEMORY_KIB: u32 = 19 * 1024;
const ITERATIONS: u32 = 2;
const LANES: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("hashing failed: {0}")]
    Hash(String),
    #[error("the hashing task did not complete: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("the hashing pool is closed")]
    Closed,
}

#[derive(Clone)]
pub struct PasswordHasher {
    permits: Arc<Semaphore>,
    /// Verified against when the account does not exist, so an unknown user costs
    /// the same time as a wrong password.
    dummy_hash: Arc<str>,
}

fn argon2() -> Argon2<'static> {
    // The constants are valid parameters; `Params::DEFAULT` is only a fallback.
    let params = Params::new(MEMORY_KIB, ITERATIONS, LANES, None).unwrap_or(Params::DEFAULT);
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

fn hash_blocking(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

/// A hash that no password matches, for an account made without a password (Google
/// sign-in): a random salt and a random output with this server's parameters.
/// Computed without hashing anything, yet checking a password against it costs what
/// checking a real one does, so a sign-in attempt cannot tell such accounts apart.
pub fn unusable_hash() -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    let mut output = [0u8; 32];
    OsRng.fill_bytes(&mut output);
    let output = Output::new(&output).map_err(|e| PasswordError::Hash(e.to_string()))?;
    Ok(format!(
        "$argon2id$v=19$m={MEMORY_KIB},t={ITERATIONS},p={LANES}${}${output}",
        salt.as_str()
    ))
}

fn verify_blocking(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash)
        .map(|parsed| {
            argon2()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

impl PasswordHasher {
    pub fn new(concurrency: usize) -> Result<Self, PasswordError> {
        Ok(Self {
            permits: Arc::new(Semaphore::new(concurrency)),
            dummy_hash: hash_blocking("devpocket-timing-equaliser")?.into(),
        })
    }

    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Closed)?;
        tokio::task::spawn_blocking(move || hash_blocking(&password)).await?
    }

    /// Checks `password` against `hash`; with no hash (unknown account) it does the
    /// same work against a dummy and returns false.
    pub async fn verify(
        &self,
        password: String,
        hash: Option<String>,
    ) -> Result<bool, PasswordError> {
        let _permit = self
            .permits
            .acquire()
            .await
            .map_err(|_| PasswordError::Closed)?;
        let known = hash.is_some();
        let hash = hash.unwrap_or_else(|| self.dummy_hash.to_string());
        let ok = tokio::task::spawn_blocking(move || verify_blocking(&password, &hash)).await?;
        Ok(ok && known)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_unusable_hash_parses_and_matches_no_password() {
        let hasher = PasswordHasher::new(2).expect("hasher");
        let hash = unusable_hash().expect("hash");
        assert!(PasswordHash::new(&hash).is_ok(), "{hash}");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert_ne!(hash, unusable_hash().expect("hash"), "random each time");
        for guess in ["", "Correct1horse", "$argon2id"] {
            assert!(
                !hasher
                    .verify(guess.into(), Some(hash.clone()))
                    .await
                    .expect("verify")
            );
        }
    }

    #[tokio::test]
    async fn hashes_verify_and_use_argon2id_with_owasp_parameters() {
        let hasher = PasswordHasher::new(2).expect("hasher");
        let hash = hasher.hash("Correct1horse".into()).await.expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(
            hasher
                .verify("Correct1horse".into(), Some(hash.clone()))
                .await
                .expect("verify")
        );
        assert!(
            !hasher
                .verify("wrong".into(), Some(hash))
                .await
                .expect("verify")
        );
    }

    #[tokio::test]
    async fn unknown_account_never_verifies() {
        let hasher = PasswordHasher::new(1).expect("hasher");
        assert!(
            !hasher
                .verify("devpocket-timing-equaliser".into(), None)
                .await
                .expect("verify")
        );
    }
}
