//! The DigitalOcean provider: one droplet per environment, created from the
//! environment's cloud-init user-data (see `user_data`) with a block-storage
//! volume, made first and attached at creation, mounted as the user's home.
//! Droplets and volumes carry the tags `devpocket`, `devpocket-env-<id>` and
//! `devpocket-user-<id>`; the environment's tag is how a create that may or may not
//! have happened (a timeout, a dropped connection, a restart of the server) is
//! looked up instead of being repeated, so no environment ever gets two droplets.
//!
//! `provider_ref` is `<droplet id>:<volume id>`.
//!
//! `lifecycle` holds create/start/stop/delete, `maintenance` reboot, snapshot and
//! resize, `droplets` the API calls they are made of, `actions` the droplet actions
//! (posted, then followed), `catalog` regions, sizes and what is tagged
//! `devpocket`; `client` and `limiter` speak HTTP politely.

mod actions;
mod catalog;
mod client;
mod droplets;
mod lifecycle;
mod limiter;
mod maintenance;
pub mod user_data;

pub use self::catalog::Tagged;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;
use uuid::Uuid;

use self::catalog::Catalog;
use self::client::{ApiError, Client};
use self::limiter::Limiter;
use super::{
    BootstrapWatch, Cancel, Machine, MachineSpec, Maintenance, Provider, ProviderError, Trouble,
};
use crate::logs::EXIT_MARKER;

pub const NAME: &str = "digitalocean";
pub const TAG: &str = "devpocket";

#[derive(Clone)]
pub struct DigitalOceanConfig {
    pub token: String,
    /// `https://api.digitalocean.com`, or a fake's address in tests.
    pub api_url: String,
    pub region: String,
    pub size: String,
    pub image: String,
    /// The home volume's size.
    pub volume_gigabytes: u32,
    /// The login user on every droplet.
    pub user: String,
    /// Per request.
    pub request_timeout: Duration,
    /// Client-side pace: at most this many requests in any `rate_window`
    /// (DigitalOcean allows 250 a minute per token).
    pub requests_per_minute: u32,
    /// A minute, except in tests that scale time down.
    pub rate_window: Duration,
    /// How often actions and droplets are polled.
    pub poll_interval: Duration,
    /// How long a graceful shutdown may take before the droplet is powered off.
    pub shutdown_timeout: Duration,
    /// How long a droplet may take to become active.
    pub create_timeout: Duration,
}

impl std::fmt::Debug for DigitalOceanConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigitalOceanConfig")
            .field("token", &"***")
            .field("api_url", &self.api_url)
            .field("region", &self.region)
            .field("size", &self.size)
            .field("image", &self.image)
            .finish_non_exhaustive()
    }
}

impl DigitalOceanConfig {
    pub fn new(token: impl Into<String>) -> Self {
        Self {
            token: token.into(),
            api_url: "https://api.digitalocean.com".into(),
            region: "nyc3".into(),
            size: "s-1vcpu-1gb".into(),
            image: "ubuntu-24-04-x64".into(),
            volume_gigabytes: 10,
            user: "dev".into(),
            request_timeout: Duration::from_secs(30),
            requests_per_minute: 250,
            rate_window: Duration::from_secs(60),
            poll_interval: Duration::from_secs(3),
            shutdown_timeout: Duration::from_secs(60),
            create_timeout: Duration::from_secs(10 * 60),
        }
    }
}

/// DevPocket's sizes as DigitalOcean sizes.
pub fn size_slug(size: &str) -> Option<&'static str> {
    match size {
        "small" => Some("s-1vcpu-1gb"),
        "medium" => Some("s-2vcpu-4gb"),
        "large" => Some("s-4vcpu-8gb"),
        "xlarge" => Some("s-8vcpu-16gb"),
        _ => None,
    }
}

pub fn environment_tag(id: Uuid) -> String {
    format!("devpocket-env-{id}")
}

pub fn user_tag(id: Uuid) -> String {
    format!("devpocket-user-{id}")
}

/// The home volume's name: lowercase, starting with a letter, at most 64.
pub fn volume_name(id: Uuid) -> String {
    format!("devpocket-{id}")
}

/// A failure told in words for the environment's owner.
fn failed(message: impl Into<String>) -> ProviderError {
    ProviderError::ForOwner(message.into())
}

/// What DigitalOcean's refusal means for the environment: the kind of trouble for
/// its owner; DigitalOcean's own words, with advice for the operator, for the log.
fn explain(doing: &str, err: ApiError) -> ProviderError {
    let (trouble, advice) = match err.status() {
        Some(401) => (Trouble::Credentials, Some("check DO_API_TOKEN")),
        Some(403) => (
            Trouble::Permission,
            Some("the API token needs read and write scope"),
        ),
        Some(429) => (Trouble::RateLimited, None),
        Some(status) if status >= 500 => (Trouble::Unavailable, None),
        Some(_) => (Trouble::Refused, None),
        None => (Trouble::Unavailable, None),
    };
    ProviderError::Service {
        doing: doing.to_owned(),
        trouble,
        cause: Box::new(Advised { err, advice }),
    }
}

/// DigitalOcean's error and what the operator can do about it.
#[derive(Debug, thiserror::Error)]
#[error("{err}{}", .advice.map(|a| format!(" ({a})")).unwrap_or_default())]
struct Advised {
    err: ApiError,
    advice: Option<&'static str>,
}

/// The droplet's public IPv4 address, once it has one.
fn public_ipv4(droplet: &Value) -> Option<String> {
    droplet
        .pointer("/networks/v4")?
        .as_array()?
        .iter()
        .find(|n| n["type"] == "public")
        .and_then(|n| n["ip_address"].as_str())
        .map(str::to_owned)
}

fn parse_ref(provider_ref: &str) -> Result<(u64, Option<String>), ProviderError> {
    let (droplet, volume) = match provider_ref.split_once(':') {
        Some((d, v)) => (d, Some(v.to_owned()).filter(|v| !v.is_empty())),
        None => (provider_ref, None),
    };
    let droplet = droplet.parse().map_err(|_| {
        failed(format!(
            "`{provider_ref}` is not a DigitalOcean droplet reference"
        ))
    })?;
    Ok((droplet, volume))
}

pub struct DigitalOceanProvider {
    config: DigitalOceanConfig,
    client: Client,
    regions: Catalog,
    sizes: Catalog,
}

impl DigitalOceanProvider {
    pub fn new(config: DigitalOceanConfig) -> Result<Self, ProviderError> {
        if config.token.trim().is_empty() {
            return Err(ProviderError::Setup("DO_API_TOKEN is empty".into()));
        }
        let limiter = Limiter::for_token(
            &config.token,
            config.requests_per_minute,
            config.rate_window,
        );
        let client = Client::new(
            &config.api_url,
            &config.token,
            config.request_timeout,
            limiter,
        )
        .map_err(|e| ProviderError::Setup(format!("DigitalOcean's API client: {e}")))?;
        Ok(Self {
            config,
            client,
            regions: Catalog::default(),
            sizes: Catalog::default(),
        })
    }

    /// Counts the API calls, retries and errors into `recorder` (the server's
    /// Prometheus recorder): `devpocket_provider_api_calls_total`,
    /// `devpocket_provider_api_retries_total`, `devpocket_provider_api_errors_total`.
    pub fn with_recorder(self, recorder: Arc<dyn ::metrics::Recorder + Send + Sync>) -> Self {
        Self {
            client: self.client.with_recorder(recorder),
            ..self
        }
    }

    pub fn config(&self) -> &DigitalOceanConfig {
        &self.config
    }
}

#[async_trait]
impl Provider for DigitalOceanProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn create(&self, spec: &MachineSpec, cancel: &Cancel) -> Result<Machine, ProviderError> {
        self.create_machine(spec, cancel, lifecycle::Home::New)
            .await
    }

    async fn start(
        &self,
        spec: &MachineSpec,
        provider_ref: &str,
    ) -> Result<Machine, ProviderError> {
        self.start_machine(spec, provider_ref).await
    }

    async fn stop(&self, provider_ref: &str) -> Result<(), ProviderError> {
        self.stop_machine(provider_ref).await
    }

    async fn delete(
        &self,
        environment_id: Uuid,
        provider_ref: Option<&str>,
    ) -> Result<(), ProviderError> {
        self.delete_machine(environment_id, provider_ref).await
    }

    /// A droplet's sshd is on its public address, and its user may add keys of
    /// their own to `~/.ssh/authorized_keys`.
    fn admits_outside_ssh(&self) -> bool {
        true
    }

    fn supports(&self, _operation: Maintenance) -> bool {
        true
    }

    async fn reboot(&self, provider_ref: &str) -> Result<(), ProviderError> {
        self.reboot_machine(provider_ref).await
    }

    async fn snapshot(&self, provider_ref: &str, name: &str) -> Result<String, ProviderError> {
        self.snapshot_machine(provider_ref, name).await
    }

    async fn resize(&self, provider_ref: &str, size: &str) -> Result<(), ProviderError> {
        self.resize_machine(provider_ref, size).await
    }

    fn bootstrap_watch(&self) -> BootstrapWatch {
        BootstrapWatch {
            tail_command: tail_command(),
        }
    }
}

/// Follows `/var/log/cloud-init-output.log` from its first line until
/// `cloud-init status --wait` says cloud-init is done, then prints the completion
/// marker with its verdict (0 done, 2 done with recoverable errors, 1 failed).
fn tail_command() -> String {
    format!(
        "log=/var/log/cloud-init-output.log\n\
         result=$(mktemp) || exit 1\n\
         ( cloud-init status --wait >/dev/null 2>&1; echo $? > \"$result\" ) &\n\
         tail -n +1 -F --pid=$! -s 0.5 \"$log\" 2>/dev/null\n\
         code=$(cat \"$result\" 2>/dev/null); rm -f \"$result\"\n\
         case \"$code\" in\n\
         \x20 0) ;;\n\
         \x20 2) echo '==> devpocket: cloud-init finished with recoverable errors (see above)'; code=0 ;;\n\
         \x20 '') code=1 ;;\n\
         esac\n\
         echo \"{EXIT_MARKER}$code\"\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn references_and_names() {
        assert_eq!(
            parse_ref("42:abc").expect("ref"),
            (42, Some("abc".to_owned()))
        );
        assert_eq!(parse_ref("42").expect("ref"), (42, None));
        assert!(parse_ref("x:1").is_err());
        let id = Uuid::nil();
        assert_eq!(volume_name(id).len(), 46);
        assert_eq!(
            environment_tag(id),
            "devpocket-env-00000000-0000-0000-0000-000000000000"
        );
        assert_eq!(size_slug("small"), Some("s-1vcpu-1gb"));
        let droplet = json!({"networks": {"v4": [
            {"ip_address": "10.0.0.2", "type": "private", "gateway": "nil"},
            {"ip_address": "203.0.113.7", "type": "public"},
        ]}});
        assert_eq!(public_ipv4(&droplet).as_deref(), Some("203.0.113.7"));
    }
}
