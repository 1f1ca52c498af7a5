//! Where settings are read from (the process environment, or a map in tests) and
//! how a value is read: durations, rates, numbers, each failing with the key named.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::time::Duration;

use super::ConfigError;
use super::rate_limits::Rate;

/// A value read from a [`Source`], or the setting that could not be used.
type Read<T> = Result<T, ConfigError>;

/// Reads settings from a key/value source (the process environment in production,
/// a map in tests).
pub struct Source {
    vars: HashMap<String, String>,
}

impl Source {
    /// The process environment, after loading `.env` from the working directory if
    /// there is one (real environment variables win).
    pub fn from_env() -> Self {
        // A missing .env is normal; a malformed one is reported by dotenvy at start-up.
        if let Err(err) = dotenvy::dotenv()
            && !err.not_found()
        {
            eprintln!("warning: ignoring .env: {err}");
        }
        Self {
            vars: std::env::vars().collect(),
        }
    }

    pub fn from_map<I, K, V>(vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self {
            vars: vars
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    pub(super) fn parse<T: std::str::FromStr>(
        &self,
        key: &'static str,
        default: T,
        what: &str,
    ) -> Read<T> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| invalid(key, format!("`{v}` is not {what}"))),
        }
    }

    /// A duration other than zero.
    pub(super) fn duration(&self, key: &'static str, default: Duration) -> Read<Duration> {
        self.any_duration(key, default, false, "900, 90s, 15m, 24h or 30d")
    }

    /// How long a cache may keep an answer; zero turns it off.
    pub(super) fn cache_ttl(&self, key: &'static str, default: Duration) -> Read<Duration> {
        self.any_duration(key, default, true, "0, 2s or 1m")
    }

    fn any_duration(
        &self,
        key: &'static str,
        default: Duration,
        zero: bool,
        examples: &str,
    ) -> Read<Duration> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_duration(v)
                .filter(|d| zero || !d.is_zero())
                .ok_or_else(|| invalid(key, format!("`{v}` is not a duration such as {examples}"))),
        }
    }

    /// `true`/`false` (or `1`/`0`, `yes`/`no`).
    pub(super) fn flag(&self, key: &'static str, default: bool) -> Read<bool> {
        match self.get(key).map(str::to_ascii_lowercase) {
            None => Ok(default),
            Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => Ok(true),
            Some(v) if matches!(v.as_str(), "false" | "0" | "no") => Ok(false),
            Some(v) => Err(invalid(key, format!("`{v}` must be true or false"))),
        }
    }

    pub(super) fn rate(&self, key: &'static str, default: Rate) -> Read<Rate> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|m| invalid(key, m)),
        }
    }
}

pub(super) fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Parses `90` (seconds), `90s`, `15m`, `24h`, `30d`, `250ms` and combinations such
/// as `1h30m` into a duration.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    // A bare number is seconds here; humantime wants a unit.
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok().map(Duration::from_secs);
    }
    humantime::parse_duration(value).ok()
}

/// `n`, or 1 for 0: for defaults, which are never 0.
pub(super) const fn nonzero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("30d"), Some(Duration::from_secs(2_592_000)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_duration("3x"), None);
        assert_eq!(parse_duration("h"), None);
        assert_eq!(parse_duration("-5s"), None);
        assert_eq!(parse_duration("99999999999999999999"), None);
    }
}
