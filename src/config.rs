//! Typed settings, read once from the environment (and an optional `.env`) and
//! validated before anything listens. Every key is documented in README.md.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A secret value that never shows up in `Debug` output or logs.
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

/// Where the database lives.
#[derive(Debug, Clone)]
pub enum DatabaseSetting {
    /// A server the operator runs (`DATABASE_URL`).
    External(Secret<String>),
    /// A private cluster under the data directory, started by DevPocket.
    Embedded,
}

/// A trusted reverse proxy: an address or a CIDR block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            (IpAddr::V6(_), IpAddr::V4(v4)) => self.contains(IpAddr::V6(v4.to_ipv6_mapped())),
            (IpAddr::V4(_), IpAddr::V6(v6)) => v6
                .to_ipv4_mapped()
                .is_some_and(|v4| self.contains(v4.into())),
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .trim()
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or CIDR block"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0..={max}"))?,
            None => max,
        };
        Ok(Self { addr, prefix })
    }
}

/// A rate limit: at most `count` in any `per`, as `N/DURATION` (`5/1m`, `300/m`, `10/30s`).
/// Enforced as GCRA: a burst of `count` at once, then one more every `per / count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub count: NonZeroU32,
    pub per: Duration,
}

impl Rate {
    pub const fn new(count: NonZeroU32, per: Duration) -> Self {
        Self { count, per }
    }

    /// The time one unit takes to come back.
    pub fn interval(&self) -> Duration {
        self.per / self.count.get()
    }

    /// `factor` times as many in the same period.
    pub fn scaled(self, factor: NonZeroU32) -> Self {
        Self {
            count: self.count.saturating_mul(factor),
            per: self.per,
        }
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}s", self.count, self.per.as_secs())
    }
}

impl std::str::FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || format!("`{s}` is not a rate such as 5/1m, 300/m or 10/30s");
        let (count, per) = s.split_once('/').ok_or_else(bad)?;
        let count: NonZeroU32 = count.trim().parse().map_err(|_| bad())?;
        let per = per.trim();
        // `5/m` reads as `5/1m`.
        let per = if per.starts_with(|c: char| c.is_ascii_alphabetic()) {
            parse_duration(&format!("1{per}"))
        } else {
            parse_duration(per)
        }
        .filter(|d| !d.is_zero())
        .ok_or_else(bad)?;
        let rate = Self { count, per };
        if rate.interval() < Duration::from_micros(1) {
            return Err(format!("`{s}`: at most a million per second"));
        }
        Ok(rate)
    }
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub mode: RunMode,
    pub listen: SocketAddr,
    pub workers: usize,
    pub data_dir: PathBuf,
    pub database: DatabaseSetting,
    pub db_pool_size: usize,
    pub db_timeout: Duration,
    /// Explicit PostgreSQL binary directory for the embedded cluster.
    pub pg_bin_dir: Option<PathBuf>,
    pub secret_key: Secret<Vec<u8>>,
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    pub allowed_origins: Vec<String>,
    pub log_format: LogFormat,
    pub trusted_proxies: Vec<IpNet>,
    pub max_json_bytes: usize,
    pub hash_concurrency: usize,
    pub lockout_threshold: u32,
    pub lockout_duration: Duration,
    /// Extra template files (`*.yaml`) loaded over the built-in ones.
    pub templates_dir: Option<PathBuf>,
    /// How long this process's claim on an environment lasts without renewal.
    pub lease_ttl: Duration,
    /// Provisioning that has not finished after this long fails.
    pub provision_timeout: Duration,
    /// Terminal output kept per session for resuming clients.
    pub terminal_buffer_bytes: usize,
    /// Terminal output queued per client before it is dropped as too slow.
    pub terminal_client_queue_bytes: usize,
    /// How long a terminal stays connected after its last client leaves.
    pub terminal_linger: Duration,
    /// Requests per client address on `/api/v1`.
    pub rate_limit_ip: Rate,
    /// Requests per signed-in user on the free plan; other plans scale it.
    pub rate_limit_user: Rate,
    /// Sign-ups per client address.
    pub rate_limit_register_ip: Rate,
    /// Token refreshes per client address.
    pub rate_limit_refresh_ip: Rate,
    /// Failed sign-ins per client address, and wrong passwords per account, not
    /// counting an address that signed in to that account within `known_address_ttl`.
    pub rate_limit_login_failures_ip: Rate,
    pub rate_limit_login_failures_account: Rate,
    /// How long an address that signed in to an account is remembered for it.
    pub known_address_ttl: Duration,
    /// WebSocket connection attempts per user.
    pub rate_limit_ws_connect: Rate,
    /// How often the limiters drop the keys whose allowance is full again.
    pub rate_limit_sweep: Duration,
    pub session_cache_ttl: Duration,
    /// How long a user's list of environments may be answered from memory.
    pub list_cache_ttl: Duration,
    /// Terminal `input` frames per second per WebSocket connection.
    pub ws_input_per_second: NonZeroU32,
    /// When set, `/metrics` needs `Authorization: Bearer` this.
    pub metrics_token: Option<Secret<String>>,
    /// When set, `/metrics` is served there instead of on `listen`.
    pub metrics_listen: Option<SocketAddr>,
    /// The DigitalOcean provider, when `DO_API_TOKEN` is set.
    pub digitalocean: Option<DigitalOceanSettings>,
}

/// Where and how environments are made on DigitalOcean.
#[derive(Debug, Clone)]
pub struct DigitalOceanSettings {
    pub token: Secret<String>,
    pub api_url: String,
    pub region: String,
    pub size: String,
    pub image: String,
    pub volume_gigabytes: u32,
    pub request_timeout: Duration,
    pub requests_per_minute: u32,
    pub poll_interval: Duration,
    pub shutdown_timeout: Duration,
    /// How often droplets and volumes are compared with the environments.
    pub reconcile_interval: Duration,
    /// How long an orphan (tagged `devpocket`, no live environment) is left alone.
    pub orphan_grace: Duration,
    /// Whether orphans are destroyed after the grace period (else only reported).
    pub destroy_orphans: bool,
}

impl DigitalOceanSettings {
    fn load(source: &Source) -> Result<Option<Self>, ConfigError> {
        let Some(token) = source.get("DO_API_TOKEN") else {
            return Ok(None);
        };
        let api_url = source
            .get("DO_API_URL")
            .unwrap_or("https://api.digitalocean.com")
            .trim_end_matches('/')
            .to_owned();
        let valid_url = url::Url::parse(&api_url)
            .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
        if !valid_url {
            return Err(invalid(
                "DO_API_URL",
                format!("`{api_url}` must be an http(s) URL such as https://api.digitalocean.com"),
            ));
        }
        let slug = |key: &'static str, default: &str| -> Result<String, ConfigError> {
            let value = source.get(key).unwrap_or(default).to_owned();
            let ok = !value.is_empty()
                && value.len() <= 64
                && value
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if ok {
                Ok(value)
            } else {
                Err(invalid(
                    key,
                    format!("`{value}` is not a DigitalOcean slug (lowercase letters, digits, -)"),
                ))
            }
        };
        let volume_gigabytes = source.parse("DO_VOLUME_SIZE_GB", 10u32, "a whole number of GiB")?;
        if !(1..=16 * 1024).contains(&volume_gigabytes) {
            return Err(invalid("DO_VOLUME_SIZE_GB", "must be between 1 and 16384"));
        }
        let requests_per_minute =
            source.parse("DO_REQUESTS_PER_MINUTE", 250u32, "a whole number")?;
        if requests_per_minute == 0 {
            return Err(invalid("DO_REQUESTS_PER_MINUTE", "must be at least 1"));
        }
        Ok(Some(Self {
            token: Secret::new(token.to_owned()),
            api_url,
            region: slug("DO_DEFAULT_REGION", "nyc3")?,
            size: slug("DO_DEFAULT_SIZE", "s-1vcpu-1gb")?,
            image: slug("DO_DEFAULT_IMAGE", "ubuntu-24-04-x64")?,
            volume_gigabytes,
            request_timeout: source.duration("DO_API_TIMEOUT", Duration::from_secs(30))?,
            requests_per_minute,
            poll_interval: source.duration("DO_POLL_INTERVAL", Duration::from_secs(3))?,
            shutdown_timeout: source.duration("DO_SHUTDOWN_TIMEOUT", Duration::from_secs(60))?,
            reconcile_interval: source
                .duration("DO_RECONCILE_INTERVAL", Duration::from_secs(10 * 60))?,
            orphan_grace: source.duration("DO_ORPHAN_GRACE", Duration::from_secs(3600))?,
            destroy_orphans: match source
                .get("DO_DESTROY_ORPHANS")
                .map(str::to_ascii_lowercase)
            {
                None => false,
                Some(v) if matches!(v.as_str(), "true" | "1" | "yes") => true,
                Some(v) if matches!(v.as_str(), "false" | "0" | "no") => false,
                Some(v) => {
                    return Err(invalid(
                        "DO_DESTROY_ORPHANS",
                        format!("`{v}` must be true or false"),
                    ));
                }
            },
        }))
    }
}

/// A setting that could not be used, naming the key and what to fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("could not read or write {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

/// Parses `90`, `90s`, `15m`, `24h`, `30d` (and `250ms`) into a duration.
pub fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    let split = value
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(value.len());
    let (number, unit) = value.split_at(split);
    let number: u64 = number.parse().ok()?;
    if unit.trim() == "ms" {
        return Some(Duration::from_millis(number));
    }
    let seconds = match unit.trim() {
        "" | "s" => number,
        "m" => number.checked_mul(60)?,
        "h" => number.checked_mul(3600)?,
        "d" => number.checked_mul(86_400)?,
        _ => return None,
    };
    Some(Duration::from_secs(seconds))
}

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

    fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(|v| v.trim())
            .filter(|v| !v.is_empty())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        key: &'static str,
        default: T,
        what: &str,
    ) -> Result<T, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| invalid(key, format!("`{v}` is not {what}"))),
        }
    }

    fn duration(&self, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_duration(v).filter(|d| !d.is_zero()).ok_or_else(|| {
                invalid(
                    key,
                    format!("`{v}` is not a duration such as 900, 90s, 15m, 24h or 30d"),
                )
            }),
        }
    }

    /// How long a cache may keep an answer; zero turns it off.
    fn cache_ttl(&self, key: &'static str, default: Duration) -> Result<Duration, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => parse_duration(v).ok_or_else(|| {
                invalid(key, format!("`{v}` is not a duration such as 0, 2s or 1m"))
            }),
        }
    }

    fn rate(&self, key: &'static str, default: Rate) -> Result<Rate, ConfigError> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|m| invalid(key, m)),
        }
    }
}

/// `n`, or 1 for 0: for defaults, which are never 0.
const fn nonzero(n: u32) -> NonZeroU32 {
    match NonZeroU32::new(n) {
        Some(n) => n,
        None => NonZeroU32::MIN,
    }
}

const SECRET_KEY_FILE: &str = "secret_key";
const MIN_SECRET_LEN: usize = 32;

impl Settings {
    /// Reads and validates every setting. In development, a missing `SECRET_KEY` is
    /// generated once and kept in the data directory.
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
        let listen = source.parse(
            "DEVPOCKET_LISTEN",
            SocketAddr::from(([127, 0, 0, 1], 8000)),
            "an address such as 127.0.0.1:8000 or 0.0.0.0:8000",
        )?;
        let workers = source.parse("DEVPOCKET_WORKERS", cpus, "a whole number")?;
        if workers == 0 {
            return Err(invalid("DEVPOCKET_WORKERS", "must be at least 1"));
        }
        let data_dir = PathBuf::from(source.get("DEVPOCKET_DATA_DIR").unwrap_or("./.devpocket"));
        let database = match source.get("DATABASE_URL") {
            None => DatabaseSetting::Embedded,
            Some(url) => {
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(invalid(
                        "DATABASE_URL",
                        "must be a postgres:// or postgresql:// URL (unset it to use the embedded database)",
                    ));
                }
                DatabaseSetting::External(Secret::new(url.to_owned()))
            }
        };
        let db_pool_size = source.parse("DEVPOCKET_DB_POOL_SIZE", 16usize, "a whole number")?;
        if db_pool_size == 0 {
            return Err(invalid("DEVPOCKET_DB_POOL_SIZE", "must be at least 1"));
        }
        let db_timeout = source.duration("DEVPOCKET_DB_TIMEOUT", Duration::from_secs(5))?;
        let pg_bin_dir = source.get("DEVPOCKET_PG_BIN").map(PathBuf::from);

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
        let allowed_origins = source
            .get("ALLOWED_ORIGINS")
            .map(|v| {
                v.split(',')
                    .map(|o| o.trim().trim_end_matches('/').to_owned())
                    .filter(|o| !o.is_empty())
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default();
        for origin in &allowed_origins {
            if origin != "*" && !(origin.starts_with("http://") || origin.starts_with("https://")) {
                return Err(invalid(
                    "ALLOWED_ORIGINS",
                    format!("`{origin}` must be `*` or start with http:// or https://"),
                ));
            }
        }
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
        let trusted_proxies = source
            .get("DEVPOCKET_TRUSTED_PROXIES")
            .map(|v| {
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse::<IpNet>())
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()
            .map_err(|m| invalid("DEVPOCKET_TRUSTED_PROXIES", m))?
            .unwrap_or_default();
        let max_json_bytes = source.parse(
            "DEVPOCKET_MAX_JSON_BYTES",
            256 * 1024usize,
            "a number of bytes",
        )?;
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

        let templates_dir = source.get("DEVPOCKET_TEMPLATES_DIR").map(PathBuf::from);
        let lease_ttl = source.duration("DEVPOCKET_LEASE_TTL", Duration::from_secs(30))?;
        let provision_timeout =
            source.duration("DEVPOCKET_PROVISION_TIMEOUT", Duration::from_secs(30 * 60))?;
        let terminal_buffer_bytes = source.parse(
            "DEVPOCKET_TERMINAL_BUFFER_BYTES",
            256 * 1024usize,
            "a number of bytes",
        )?;
        let terminal_client_queue_bytes = source.parse(
            "DEVPOCKET_TERMINAL_CLIENT_QUEUE_BYTES",
            4 * 1024 * 1024usize,
            "a number of bytes",
        )?;
        if terminal_client_queue_bytes < 64 * 1024 {
            return Err(invalid(
                "DEVPOCKET_TERMINAL_CLIENT_QUEUE_BYTES",
                "must be at least 65536 (one SSH packet is up to 32 KiB)".to_owned(),
            ));
        }
        let terminal_linger =
            source.duration("DEVPOCKET_TERMINAL_LINGER", Duration::from_secs(60))?;

        let per_minute = |count| Rate::new(nonzero(count), Duration::from_secs(60));
        let rate_limit_ip = source.rate("DEVPOCKET_RATE_LIMIT_IP", per_minute(1200))?;
        let rate_limit_user = source.rate("DEVPOCKET_RATE_LIMIT_USER", per_minute(300))?;
        let per_hour = |count| Rate::new(nonzero(count), Duration::from_secs(3600));
        for (old, new) in [
            (
                "DEVPOCKET_RATE_LIMIT_AUTH_IP",
                "DEVPOCKET_RATE_LIMIT_REGISTER_IP, DEVPOCKET_RATE_LIMIT_REFRESH_IP and DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_IP",
            ),
            (
                "DEVPOCKET_RATE_LIMIT_AUTH_ACCOUNT",
                "DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_ACCOUNT",
            ),
        ] {
            if source.get(old).is_some() {
                return Err(invalid(
                    old,
                    format!("is no longer read: see {new} in the README's settings"),
                ));
            }
        }
        let rate_limit_register_ip =
            source.rate("DEVPOCKET_RATE_LIMIT_REGISTER_IP", per_hour(60))?;
        let rate_limit_refresh_ip =
            source.rate("DEVPOCKET_RATE_LIMIT_REFRESH_IP", per_minute(300))?;
        let rate_limit_login_failures_ip =
            source.rate("DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_IP", per_hour(100))?;
        let rate_limit_login_failures_account =
            source.rate("DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_ACCOUNT", per_hour(10))?;
        let known_address_ttl = source.duration(
            "DEVPOCKET_KNOWN_ADDRESS_TTL",
            Duration::from_secs(30 * 86_400),
        )?;
        let rate_limit_ws_connect =
            source.rate("DEVPOCKET_RATE_LIMIT_WS_CONNECT", per_minute(60))?;
        let rate_limit_sweep =
            source.duration("DEVPOCKET_RATE_LIMIT_SWEEP", Duration::from_secs(60))?;
        let session_cache_ttl =
            source.cache_ttl("DEVPOCKET_SESSION_CACHE_TTL", Duration::from_secs(2))?;
        let list_cache_ttl =
            source.cache_ttl("DEVPOCKET_LIST_CACHE_TTL", Duration::from_secs(1))?;
        let metrics_token = match source.get("DEVPOCKET_METRICS_TOKEN") {
            Some(t) if t.len() < 16 => {
                return Err(invalid(
                    "DEVPOCKET_METRICS_TOKEN",
                    "must be at least 16 characters (for example: openssl rand -hex 24)",
                ));
            }
            t => t.map(|t| Secret::new(t.to_owned())),
        };
        let metrics_listen = match source.get("DEVPOCKET_METRICS_LISTEN") {
            None => None,
            Some(v) => Some(v.parse::<SocketAddr>().map_err(|_| {
                invalid(
                    "DEVPOCKET_METRICS_LISTEN",
                    format!("`{v}` is not an address such as 127.0.0.1:9100"),
                )
            })?),
        };
        let ws_input_per_second = source.parse(
            "DEVPOCKET_WS_INPUT_PER_SECOND",
            nonzero(200),
            "a whole number of at least 1",
        )?;

        let secret_key = match source.get("SECRET_KEY") {
            Some(key) if key.len() >= MIN_SECRET_LEN => key.as_bytes().to_vec(),
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
            None => load_or_create_secret(&data_dir)?,
        };

        Ok(Self {
            mode,
            listen,
            workers,
            data_dir,
            database,
            db_pool_size,
            db_timeout,
            pg_bin_dir,
            secret_key: Secret::new(secret_key),
            access_token_ttl,
            refresh_token_ttl,
            allowed_origins,
            log_format,
            trusted_proxies,
            max_json_bytes,
            hash_concurrency,
            lockout_threshold,
            lockout_duration,
            templates_dir,
            lease_ttl,
            provision_timeout,
            terminal_buffer_bytes,
            terminal_client_queue_bytes,
            terminal_linger,
            rate_limit_ip,
            rate_limit_user,
            rate_limit_register_ip,
            rate_limit_refresh_ip,
            rate_limit_login_failures_ip,
            rate_limit_login_failures_account,
            known_address_ttl,
            rate_limit_ws_connect,
            rate_limit_sweep,
            session_cache_ttl,
            list_cache_ttl,
            ws_input_per_second,
            metrics_token,
            metrics_listen,
            digitalocean: DigitalOceanSettings::load(source)?,
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

/// Creates the data directory (owner-only) if needed.
pub fn ensure_data_dir(dir: &Path) -> Result<(), ConfigError> {
    use std::os::unix::fs::DirBuilderExt;
    let io = |source| ConfigError::Io {
        path: dir.to_path_buf(),
        source,
    };
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    Ok(())
}

/// The development secret: generated once, kept in `<data dir>/secret_key` (0600),
/// so tokens and encrypted keys survive restarts.
fn load_or_create_secret(data_dir: &Path) -> Result<Vec<u8>, ConfigError> {
    use rand::RngCore;
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;

    ensure_data_dir(data_dir)?;
    let path = data_dir.join(SECRET_KEY_FILE);
    let io = |source| ConfigError::Io {
        path: path.clone(),
        source,
    };
    match std::fs::read_to_string(&path) {
        Ok(existing) => {
            let existing = existing.trim();
            if existing.len() < MIN_SECRET_LEN {
                return Err(invalid(
                    "SECRET_KEY",
                    format!(
                        "{} is shorter than {MIN_SECRET_LEN} characters: delete it to generate a new one (this signs everybody out)",
                        path.display()
                    ),
                ));
            }
            Ok(existing.as_bytes().to_vec())
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
            Ok(key.into_bytes())
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        Settings::load(&Source::from_map(pairs.iter().copied()))
    }

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn durations_accept_units() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("15m"), Some(Duration::from_secs(900)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("30d"), Some(Duration::from_secs(2_592_000)));
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("3w"), None);
        assert_eq!(parse_duration("h"), None);
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = load(&[("SECRET_KEY", KEY)]).expect("defaults load");
        assert_eq!(s.listen.to_string(), "127.0.0.1:8000");
        assert_eq!(s.data_dir, PathBuf::from("./.devpocket"));
        assert!(matches!(s.database, DatabaseSetting::Embedded));
        assert_eq!(s.refresh_token_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(s.log_format, LogFormat::Pretty);
        let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
        assert_eq!(s.hash_concurrency, cpus.saturating_sub(1).max(1));
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
            ("DO_API_URL", "ftp://example.com"),
            ("DO_DEFAULT_REGION", "New York"),
            ("DO_VOLUME_SIZE_GB", "0"),
            ("DO_POLL_INTERVAL", "soon"),
            ("DO_DESTROY_ORPHANS", "maybe"),
            ("SECRET_KEY", "short"),
        ] {
            let mut pairs = vec![(key, value)];
            if key != "SECRET_KEY" {
                pairs.push(("SECRET_KEY", KEY));
            }
            if key.starts_with("DO_") {
                pairs.push(("DO_API_TOKEN", "dop_v1_test"));
            }
            let err = load(&pairs).expect_err(key);
            assert!(err.to_string().starts_with(key), "{err}");
        }
    }

    #[test]
    fn development_secret_is_generated_once() {
        let dir = std::env::temp_dir().join(format!("devpocket-cfg-{}", uuid::Uuid::new_v4()));
        let dir_s = dir.to_string_lossy().to_string();
        let first = load(&[("DEVPOCKET_DATA_DIR", &dir_s)]).expect("first");
        let second = load(&[("DEVPOCKET_DATA_DIR", &dir_s)]).expect("second");
        assert_eq!(first.secret_key, second.secret_key);
        assert!(first.secret_key.expose().len() >= MIN_SECRET_LEN);
        std::fs::remove_dir_all(dir).ok();
    }

    #[test]
    fn rates_read_as_count_per_duration() {
        let rate: Rate = "5/1m".parse().expect("rate");
        assert_eq!(rate.count.get(), 5);
        assert_eq!(rate.per, Duration::from_secs(60));
        assert_eq!(rate.interval(), Duration::from_secs(12));
        assert_eq!("5/m".parse::<Rate>(), Ok(rate));
        assert_eq!("5 / 60".parse::<Rate>(), Ok(rate));
        let hourly: Rate = "100/h".parse().expect("rate");
        assert_eq!(hourly.per, Duration::from_secs(3600));
        for bad in ["5", "/1m", "x/1m", "5/", "5/0", "-1/1m", "5/1w"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
        let s =
            load(&[("SECRET_KEY", KEY), ("DEVPOCKET_RATE_LIMIT_USER", "10/30s")]).expect("loads");
        assert_eq!(s.rate_limit_user.count.get(), 10);
        assert_eq!(s.rate_limit_register_ip.to_string(), "60/3600s");
        assert_eq!(s.rate_limit_refresh_ip.to_string(), "300/60s");
        assert_eq!(s.rate_limit_login_failures_ip.to_string(), "100/3600s");
        assert_eq!(s.rate_limit_login_failures_account.to_string(), "10/3600s");
        assert_eq!(s.known_address_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(s.ws_input_per_second.get(), 200);
        assert_eq!(s.rate_limit_sweep, Duration::from_secs(60));
        let s = load(&[("SECRET_KEY", KEY), ("DEVPOCKET_RATE_LIMIT_SWEEP", "5s")]).expect("loads");
        assert_eq!(s.rate_limit_sweep, Duration::from_secs(5));
    }

    #[test]
    fn the_caches_can_be_turned_off_but_not_misspelt() {
        let s = load(&[("SECRET_KEY", KEY)]).expect("loads");
        assert_eq!(s.session_cache_ttl, Duration::from_secs(2));
        let s = load(&[("SECRET_KEY", KEY), ("DEVPOCKET_SESSION_CACHE_TTL", "0")]).expect("loads");
        assert_eq!(s.session_cache_ttl, Duration::ZERO);
        let e = load(&[
            ("SECRET_KEY", KEY),
            ("DEVPOCKET_SESSION_CACHE_TTL", "2 secs"),
        ]);
        assert!(e.is_err_and(|e| e.to_string().contains("DEVPOCKET_SESSION_CACHE_TTL")));
        assert_eq!(s.list_cache_ttl, Duration::from_secs(1));
        let s = load(&[("SECRET_KEY", KEY), ("DEVPOCKET_LIST_CACHE_TTL", "0")]).expect("loads");
        assert_eq!(s.list_cache_ttl, Duration::ZERO);
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
    fn cidr_matching() {
        let net: IpNet = "10.0.0.0/8".parse().expect("cidr");
        assert!(net.contains("10.1.2.3".parse().expect("ip")));
        assert!(!net.contains("11.0.0.1".parse().expect("ip")));
        let one: IpNet = "127.0.0.1".parse().expect("ip");
        assert!(one.contains("127.0.0.1".parse().expect("ip")));
        assert!(!one.contains("127.0.0.2".parse().expect("ip")));
        let all: IpNet = "0.0.0.0/0".parse().expect("all");
        assert!(all.contains("8.8.8.8".parse().expect("ip")));
    }
}
