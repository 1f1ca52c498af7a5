//! Google's signing keys: a JSON Web Key Set fetched over HTTP(S) and kept by key id
//! (`kid`) for as long as its `Cache-Control: max-age` allows. A token naming a key
//! the fresh set lacks refetches it, since Google rotates its keys, but at most once
//! per `UNKNOWN_KEY_REFETCH`, so tokens with made-up key ids cannot make this server
//! hammer Google. One fetch runs at a time; requests that need it wait for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use jsonwebtoken::DecodingKey;
use reqwest::header::{CACHE_CONTROL, HeaderMap};
use serde::Deserialize;

/// The least time between two refetches caused by unknown key ids.
pub const UNKNOWN_KEY_REFETCH: Duration = Duration::from_secs(10);
/// After a failed fetch, how long the cached keys (however old) are used as they are.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);
/// How long a key set without `max-age` is kept.
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);
/// The longest a key set is kept, whatever `max-age` says.
const LONGEST_MAX_AGE: Duration = Duration::from_secs(86_400);
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Google's set is about 2 KB; anything near this is not a key set.
const MAX_BODY_BYTES: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// No key of that id, even in a fresh set.
    #[error("no signing key with that id")]
    Unknown,
    /// The set could not be fetched, and no copy of it has the key.
    #[error("Google's signing keys could not be fetched: {0}")]
    Unavailable(#[source] FetchError),
}

#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("request failed: {0}")]
    Request(#[from] reqwest::Error),
    #[error("answered {0}")]
    Status(reqwest::StatusCode),
    #[error("the key set is larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("the key set is not JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("the key set holds no RS256 signing key")]
    NoKeys,
    #[error("a recent fetch failed; retrying shortly")]
    Backoff,
}

#[derive(Deserialize)]
struct KeySet {
    keys: Vec<Jwk>,
}

/// One key as Google publishes it; other members are ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    usage: Option<String>,
    n: Option<String>,
    e: Option<String>,
}

impl Jwk {
    /// The key id and key of an RSA signing key usable with RS256.
    fn usable(self) -> Option<(String, DecodingKey)> {
        let rs256 = self.kty == "RSA"
            && self.alg.as_deref().is_none_or(|alg| alg == "RS256")
            && self.usage.as_deref().is_none_or(|usage| usage == "sig");
        if !rs256 {
            return None;
        }
        let key = DecodingKey::from_rsa_components(self.n.as_deref()?, self.e.as_deref()?).ok()?;
        Some((self.kid?, key))
    }
}

#[derive(Default)]
struct Cached {
    keys: Arc<HashMap<String, DecodingKey>>,
    /// `None` until the first fetch.
    fresh_until: Option<Instant>,
    /// Counts fetches that replaced the set.
    generation: u64,
    /// When an unknown key id in a fresh set last caused a refetch.
    unknown_refetch_at: Option<Instant>,
    failed_at: Option<Instant>,
}

impl Cached {
    fn fresh(&self, now: Instant) -> bool {
        self.fresh_until.is_some_and(|until| now < until)
    }

    fn get(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.get(kid).cloned()
    }
}

pub struct Jwks {
    http: reqwest::Client,
    url: String,
    cached: Mutex<Cached>,
    /// Held while fetching, so that one fetch serves every request waiting for it.
    fetching: tokio::sync::Mutex<()>,
}

impl Jwks {
    pub fn new(url: &str) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(FETCH_TIMEOUT)
            .user_agent(concat!("DevPocket/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            http,
            url: url.to_owned(),
            cached: Mutex::default(),
            fetching: tokio::sync::Mutex::new(()),
        })
    }

    fn cached(&self) -> MutexGuard<'_, Cached> {
        // Nothing panics while holding it; a poisoned lock still holds a whole set.
        self.cached.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The key with id `kid`, from the cached set while it is fresh.
    pub async fn key(&self, kid: &str) -> Result<DecodingKey, KeyError> {
        let seen = {
            let cached = self.cached();
            if cached.fresh(Instant::now())
                && let Some(key) = cached.get(kid)
            {
                return Ok(key);
            }
            cached.generation
        };
        let _fetching = self.fetching.lock().await;
        {
            // Decide again with what a fetch we waited for may have brought.
            let mut cached = self.cached();
            let now = Instant::now();
            if cached.fresh(now) {
                if let Some(key) = cached.get(kid) {
                    return Ok(key);
                }
                let just_fetched = cached.generation != seen;
                let recently = cached
                    .unknown_refetch_at
                    .is_some_and(|at| now.duration_since(at) < UNKNOWN_KEY_REFETCH);
                if just_fetched || recently {
                    return Err(KeyError::Unknown);
                }
                cached.unknown_refetch_at = Some(now);
            } else if cached
                .failed_at
                .is_some_and(|at| now.duration_since(at) < RETRY_AFTER_FAILURE)
            {
                return cached
                    .get(kid)
                    .ok_or(KeyError::Unavailable(FetchError::Backoff));
            }
        }
        match self.fetch().await {
            Ok((keys, max_age)) => {
                tracing::debug!(keys = keys.len(), ?max_age, "fetched Google's signing keys");
                let mut cached = self.cached();
                cached.keys = Arc::new(keys);
                cached.fresh_until = Some(Instant::now() + max_age);
                cached.generation += 1;
                cached.failed_at = None;
                cached.get(kid).ok_or(KeyError::Unknown)
            }
            Err(err) => {
                tracing::warn!(error = %err, url = %self.url, "fetching Google's signing keys failed");
                let mut cached = self.cached();
                cached.failed_at = Some(Instant::now());
                // An outage at Google does not stop sign-in while the keys are known.
                cached.get(kid).ok_or(KeyError::Unavailable(err))
            }
        }
    }

    async fn fetch(&self) -> Result<(HashMap<String, DecodingKey>, Duration), FetchError> {
        let mut response = self.http.get(&self.url).send().await?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        let max_age = max_age(response.headers());
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        let set: KeySet = serde_json::from_slice(&body)?;
        let keys: HashMap<_, _> = set.keys.into_iter().filter_map(Jwk::usable).collect();
        if keys.is_empty() {
            return Err(FetchError::NoKeys);
        }
        Ok((keys, max_age))
    }
}

/// How long an answer may be kept, by its `Cache-Control`: `max-age` (bounded by a
/// day), nothing for `no-store` or `no-cache`, five minutes when it says neither.
fn max_age(headers: &HeaderMap) -> Duration {
    let directives = headers
        .get_all(CACHE_CONTROL)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(|directive| directive.trim().to_ascii_lowercase());
    let mut max_age = None;
    for directive in directives {
        if directive == "no-store" || directive == "no-cache" {
            return Duration::ZERO;
        }
        if let Some(seconds) = directive.strip_prefix("max-age=") {
            max_age = seconds.trim_matches('"').parse::<u64>().ok();
        }
    }
    max_age.map_or(DEFAULT_MAX_AGE, |seconds| {
        Duration::from_secs(seconds).min(LONGEST_MAX_AGE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn with(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(CACHE_CONTROL, HeaderValue::from_str(value).expect("value"));
        }
        headers
    }

    #[test]
    fn max_age_follows_cache_control() {
        let secs = |values: &[&str]| max_age(&with(values)).as_secs();
        assert_eq!(
            secs(&["public, max-age=19984, must-revalidate, no-transform"]),
            19_984
        );
        assert_eq!(secs(&["public", "Max-Age=60"]), 60);
        assert_eq!(secs(&["max-age=0"]), 0);
        assert_eq!(secs(&["max-age=60, no-cache"]), 0);
        assert_eq!(secs(&["no-store"]), 0);
        assert_eq!(secs(&[]), 300);
        assert_eq!(secs(&["max-age=soon"]), 300);
        assert_eq!(secs(&["max-age=99999999999"]), 86_400);
    }

    #[test]
    fn only_rsa_signing_keys_are_kept() {
        let set: KeySet = serde_json::from_value(serde_json::json!({"keys": [
            {"kty": "RSA", "kid": "a", "alg": "RS256", "use": "sig", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "b", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "c", "alg": "RS512", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "d", "use": "enc", "n": "AQAB", "e": "AQAB"},
            {"kty": "EC", "kid": "e", "crv": "P-256", "x": "AQAB", "y": "AQAB"},
            {"kty": "RSA", "n": "AQAB", "e": "AQAB"},
            {"kty": "RSA", "kid": "g", "n": "not base64!", "e": "AQAB"},
        ]}))
        .expect("set");
        let mut kept: Vec<String> = set
            .keys
            .into_iter()
            .filter_map(Jwk::usable)
            .map(|(kid, _)| kid)
            .collect();
        kept.sort();
        assert_eq!(kept, ["a", "b"]);
    }
}
