//! DigitalOcean: the token that turns the provider on, the API, the defaults of
//! new droplets, request pacing, and reconciliation with what DigitalOcean holds.

use std::time::Duration;

use super::source::{Source, invalid};
use super::{ConfigError, Secret};

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
    pub(super) fn load(source: &Source) -> Result<Option<Self>, ConfigError> {
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
            destroy_orphans: source.flag("DO_DESTROY_ORPHANS", false)?,
        }))
    }
}
