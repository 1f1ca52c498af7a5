//! Typed settings, read once from the environment (and an optional `.env`) and
//! validated before anything listens; one group per file. Loading only parses and
//! validates values: what lives in files (the data directory, the development
//! secret key) is start-up's (`data_dir`). Every key is documented in README.md.

mod auth;
mod auto_stop;
mod database;
mod digitalocean;
mod environments;
mod google;
mod http;
mod mail;
mod metrics;
mod rate_limits;
mod servers;
mod source;
mod terminal;

use std::fmt;
use std::path::PathBuf;

pub use auth::{AuthSettings, MIN_SECRET_LEN};
pub use auto_stop::AutoStopSettings;
pub use database::{DatabaseLocation, DatabaseSettings};
pub use digitalocean::DigitalOceanSettings;
pub use environments::EnvironmentSettings;
pub use google::{GOOGLE_JWKS_URL, GoogleSettings};
pub use http::{HttpSettings, IpNet};
pub use mail::{MailSettings, Restricted};
pub use metrics::MetricsSettings;
pub use rate_limits::{Rate, RateLimitSettings};
pub use servers::ServersConfig;
pub use source::{Source, parse_duration};
pub use terminal::TerminalSettings;

use source::invalid;

/// A secret value that never shows up in `Debug` output or logs.
// Not `secrecy`: its zeroing on drop buys nothing when every secret is copied into a client
// (a connection string, a header, a derived key), and redaction is all this does.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunMode {
    Development,
    Production,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: RunMode,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    /// Extra template files (`*.yaml`) loaded over the built-in ones.
    pub templates_dir: Option<PathBuf>,
    pub http: HttpSettings,
    pub database: DatabaseSettings,
    pub auth: AuthSettings,
    pub rate_limits: RateLimitSettings,
    pub environments: EnvironmentSettings,
    pub auto_stop: AutoStopSettings,
    pub terminal: TerminalSettings,
    pub servers: ServersConfig,
    pub mail: MailSettings,
    pub metrics: MetricsSettings,
    /// The DigitalOcean provider, when `DO_API_TOKEN` is set.
    pub digitalocean: Option<DigitalOceanSettings>,
    /// Google sign-in, when `GOOGLE_CLIENT_IDS` is set.
    pub google: Option<GoogleSettings>,
}

/// A setting that could not be used, naming the key and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Settings {
    /// Reads and validates every setting. In development a missing `SECRET_KEY` is
    /// left unset, for start-up to keep one in the data directory.
    pub fn load(source: &Source) -> Result<Self, ConfigError> {
        let mode = match source.get("DEVPOCKET_ENV").map(str::to_ascii_lowercase) {
            None => RunMode::Development,
            Some(v) if v == "development" || v == "dev" => RunMode::Development,
            Some(v) if v == "production" || v == "prod" => RunMode::Production,
            Some(v) => {
                return Err(invalid(
                    "DEVPOCKET_ENV",
                    format!("`{v}` must be `development` or `production`"),
                ));
            }
        };
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        let http = HttpSettings::load(source, cpus)?;
        let data_dir = PathBuf::from(source.get("DEVPOCKET_DATA_DIR").unwrap_or("./.devpocket"));
        let database = DatabaseSettings::load(source)?;
        let log_format = match source
            .get("DEVPOCKET_LOG_FORMAT")
            .map(str::to_ascii_lowercase)
        {
            None if mode == RunMode::Production => LogFormat::Json,
            None => LogFormat::Pretty,
            Some(v) if v == "json" => LogFormat::Json,
            Some(v) if v == "pretty" => LogFormat::Pretty,
            Some(v) => {
                return Err(invalid(
                    "DEVPOCKET_LOG_FORMAT",
                    format!("`{v}` must be `json` or `pretty`"),
                ));
            }
        };
        Ok(Self {
            mode,
            data_dir,
            log_format,
            templates_dir: source.get("DEVPOCKET_TEMPLATES_DIR").map(PathBuf::from),
            http,
            database,
            auth: AuthSettings::load(source, mode, cpus)?,
            environments: EnvironmentSettings::load(source)?,
            auto_stop: AutoStopSettings::load(source)?,
            terminal: TerminalSettings::load(source)?,
            servers: ServersConfig::load(source)?,
            mail: MailSettings::load(source)?,
            rate_limits: RateLimitSettings::load(source)?,
            metrics: MetricsSettings::load(source)?,
            digitalocean: DigitalOceanSettings::load(source)?,
            google: GoogleSettings::load(source)?,
        })
    }

    /// The provider new environments use: DigitalOcean when it is configured.
    pub fn default_provider(&self) -> &'static str {
        if self.digitalocean.is_some() {
            "digitalocean"
        } else {
            "local"
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load(&Source::from_map(pairs.iter().copied()))
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = load(&[("SECRET_KEY", KEY)]).expect("defaults load");
        assert_eq!(s.http.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(s.data_dir, PathBuf::from("./.devpocket"));
        assert!(matches!(s.database.location, DatabaseLocation::Embedded));
        assert_eq!(s.auth.refresh_token_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(s.log_format, LogFormat::Pretty);
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert_eq!(s.auth.hash_concurrency, cpus.saturating_sub(1).max(1));
    }

    #[test]
    fn production_requires_a_secret_key() {
        let err = load(&[("DEVPOCKET_ENV", "production")]).expect_err("must fail");
        assert!(err.to_string().contains("SECRET_KEY"), "{err}");
        let ok = load(&[("DEVPOCKET_ENV", "production"), ("SECRET_KEY", KEY)]).expect("loads");
        assert_eq!(ok.log_format, LogFormat::Json);
    }

    #[test]
    fn bad_values_name_the_key() {
        for (key, value) in [
            ("DEVPOCKET_LISTEN", "nowhere"),
            ("DEVPOCKET_LOG_FORMAT", "xml"),
            ("ACCESS_TOKEN_TTL", "soon"),
            ("DATABASE_URL", "mysql://x"),
            ("ALLOWED_ORIGINS", "example.com"),
            ("DEVPOCKET_TRUSTED_PROXIES", "10.0.0.0/99"),
            ("DEVPOCKET_RATE_LIMIT_IP", "100"),
            ("DEVPOCKET_RATE_LIMIT_USER", "0/1m"),
            ("DEVPOCKET_RATE_LIMIT_REGISTER_IP", "5/0s"),
            ("DEVPOCKET_RATE_LIMIT_REFRESH_IP", "0/1m"),
            ("DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_IP", "many/1h"),
            ("DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_ACCOUNT", "5/fortnight"),
            ("DEVPOCKET_KNOWN_ADDRESS_TTL", "0"),
            ("DEVPOCKET_RATE_LIMIT_AUTH_IP", "5/1m"),
            ("DEVPOCKET_RATE_LIMIT_AUTH_ACCOUNT", "5/1m"),
            ("DEVPOCKET_RATE_LIMIT_WS_CONNECT", "2000000/1s"),
            ("DEVPOCKET_RATE_LIMIT_SWEEP", "0"),
            ("DEVPOCKET_WS_INPUT_PER_SECOND", "0"),
            ("DEVPOCKET_AUTO_STOP_FREE", "half an hour"),
            ("DEVPOCKET_AUTO_STOP_CHECK", "0"),
            ("DEVPOCKET_AUTO_STOP_WARNING", "soon"),
            ("DEVPOCKET_SERVER_CHECK_EVERY", "0"),
            ("DEVPOCKET_SERVER_CONNECT_TIMEOUT", "ten"),
            ("DEVPOCKET_SERVERS_ALLOW_PRIVATE", "perhaps"),
            ("DO_API_URL", "ftp://example.com"),
            ("DO_DEFAULT_REGION", "New York"),
            ("DO_VOLUME_SIZE_GB", "0"),
            ("DO_POLL_INTERVAL", "soon"),
            ("DO_DESTROY_ORPHANS", "maybe"),
            ("GOOGLE_CLIENT_IDS", " , "),
            ("GOOGLE_CLIENT_IDS", "one two"),
            ("GOOGLE_JWKS_URL", "ftp://example.com/certs"),
            ("SECRET_KEY", "short"),
        ] {
            let mut pairs = vec![(key, value)];
            if key != "SECRET_KEY" {
                pairs.push(("SECRET_KEY", KEY));
            }
            if key.starts_with("DO_") {
                pairs.push(("DO_API_TOKEN", "dop_v1_test"));
            }
            if key == "GOOGLE_JWKS_URL" {
                pairs.push(("GOOGLE_CLIENT_IDS", "app.apps.googleusercontent.com"));
            }
            let err = load(&pairs).expect_err(key);
            assert!(err.to_string().starts_with(key), "{err}");
        }
    }

    #[test]
    fn the_caches_can_be_turned_off_but_not_misspelt() {
        let s = load(&[("SECRET_KEY", KEY)]).expect("loads");
        assert_eq!(s.auth.session_cache_ttl, Duration::from_secs(2));
        let s = load(&[("SECRET_KEY", KEY), ("DEVPOCKET_SESSION_CACHE_TTL", "0")]).expect("loads");
        assert_eq!(s.auth.session_cache_ttl, Duration::ZERO);
        let e = load(&[
            ("SECRET_KEY", KEY),
            ("DEVPOCKET_SESSION_CACHE_TTL", "2 scs"),
        ]);
        assert!(e.is_err_and(|e| e.to_string().contains("DEVPOCKET_SESSION_CACHE_TTL")));
        assert_eq!(s.environments.list_cache_ttl, Duration::from_secs(1));
        let s = load(&[("SECRET_KEY", KEY), ("DEVPOCKET_LIST_CACHE_TTL", "0")]).expect("loads");
        assert_eq!(s.environments.list_cache_ttl, Duration::ZERO);
        let e = load(&[("SECRET_KEY", KEY), ("DEVPOCKET_LIST_CACHE_TTL", "soon")]);
        assert!(e.is_err_and(|e| e.to_string().contains("DEVPOCKET_LIST_CACHE_TTL")));
    }

    #[test]
    fn digitalocean_is_the_default_provider_when_a_token_is_set() {
        let local = load(&[("SECRET_KEY", KEY)]).expect("loads");
        assert!(local.digitalocean.is_none());
        assert_eq!(local.default_provider(), "local");
        let s = load(&[
            ("SECRET_KEY", KEY),
            ("DO_API_TOKEN", "dop_v1_secret"),
            ("DO_POLL_INTERVAL", "100ms"),
        ])
        .expect("loads");
        assert_eq!(s.default_provider(), "digitalocean");
        let d = s.digitalocean.as_ref().expect("configured");
        assert_eq!(d.api_url, "https://api.digitalocean.com");
        assert_eq!(
            (d.region.as_str(), d.size.as_str()),
            ("nyc3", "s-1vcpu-1gb")
        );
        assert_eq!(d.image, "ubuntu-24-04-x64");
        assert_eq!(d.poll_interval, Duration::from_millis(100));
        assert!(
            !format!("{s:?}").contains("dop_v1_secret"),
            "the token never prints"
        );
    }

    #[test]
    fn google_sign_in_is_on_when_client_ids_are_set() {
        let off = load(&[("SECRET_KEY", KEY)]).expect("loads");
        assert!(off.google.is_none());
        let s = load(&[
            ("SECRET_KEY", KEY),
            (
                "GOOGLE_CLIENT_IDS",
                " ios.apps.googleusercontent.com, android.apps.googleusercontent.com,",
            ),
        ])
        .expect("loads");
        let google = s.google.expect("configured");
        assert_eq!(
            google.client_ids,
            [
                "ios.apps.googleusercontent.com",
                "android.apps.googleusercontent.com"
            ]
        );
        assert_eq!(google.jwks_url, GOOGLE_JWKS_URL);
    }

    #[test]
    fn loading_touches_no_files() {
        let dir = std::env::temp_dir().join(format!("devpocket-cfg-{}", uuid::Uuid::new_v4()));
        let dir_s = dir.to_string_lossy().to_string();
        let s = load(&[("DEVPOCKET_DATA_DIR", &dir_s)]).expect("loads");
        // Development without SECRET_KEY: start-up keeps one in the data directory.
        assert!(s.auth.secret_key.is_none());
        assert!(!dir.exists(), "the data directory is start-up's to make");
    }
}
