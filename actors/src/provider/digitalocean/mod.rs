//! The DigitalOcean provider: one droplet per environment, created from the
//! environment's cloud-init user-data (see `user_data`) with a block-storage
//! volume, made first and attached at creation, mounted as the user's home.
//! Droplets and volumes carry the tags `devpocket`, `devpocket-env-<id>` and
//! `devpocket-user-<id>`; the environment's tag is how a create that may or may not
//! have happened (a timeout, a dropped connection, a restart of the server) is
//! looked up instead of being repeated, so no environment ever gets two droplets.
//!
//! `provider_ref` is `<droplet id>:<volume id>`.

mod client;
mod limiter;
pub mod user_data;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Value, json};
use uuid::Uuid;

use self::client::{ApiError, Client, Repeat};
use self::limiter::Limiter;
use self::user_data::UserDataSpec;
use super::{BootstrapWatch, Machine, MachineSpec, Maintenance, Provider, ProviderError};
use crate::logs::EXIT_MARKER;
use crate::model::MachineAccess;

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

fn failed(message: impl Into<String>) -> ProviderError {
    ProviderError::Failed(message.into())
}

/// What DigitalOcean's refusal means for the environment.
fn explain(doing: &str, err: ApiError) -> ProviderError {
    match &err {
        ApiError::Api { status: 401, .. } => failed(format!(
            "{doing}: DigitalOcean refused the API token (401): check DO_API_TOKEN"
        )),
        ApiError::Api {
            status: 403,
            message,
            ..
        } => failed(format!(
            "{doing}: the API token may not do this (403: {message}); it needs read and write scope"
        )),
        ApiError::Api {
            status,
            message,
            id,
        } => failed(format!(
            "{doing}: DigitalOcean said {message} ({status} {id})"
        )),
        _ => failed(format!("{doing}: {err}")),
    }
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

/// DevPocket's droplets and volumes at DigitalOcean.
#[derive(Debug, Clone, Default)]
pub struct Tagged {
    /// (droplet id, environment from its tag).
    pub droplets: Vec<(u64, Option<Uuid>)>,
    /// (volume id, environment from its tag, attached to a droplet).
    pub volumes: Vec<(String, Option<Uuid>, bool)>,
}

/// How long the lists of regions and sizes are reused.
const CATALOG_TTL: Duration = Duration::from_secs(10 * 60);

type Catalog = tokio::sync::Mutex<Option<(Instant, Vec<Value>)>>;

pub struct DigitalOceanProvider {
    config: DigitalOceanConfig,
    client: Client,
    regions: Catalog,
    sizes: Catalog,
}

impl DigitalOceanProvider {
    pub fn new(config: DigitalOceanConfig) -> Result<Self, ProviderError> {
        if config.token.trim().is_empty() {
            return Err(failed("DO_API_TOKEN is empty"));
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
        .map_err(failed)?;
        Ok(Self {
            config,
            client,
            regions: Catalog::default(),
            sizes: Catalog::default(),
        })
    }

    async fn catalog(
        &self,
        cache: &Catalog,
        path: &str,
        key: &str,
    ) -> Result<Vec<Value>, ProviderError> {
        let mut cached = cache.lock().await;
        if let Some((at, items)) = cached.as_ref()
            && at.elapsed() < CATALOG_TTL
        {
            return Ok(items.clone());
        }
        let items = self
            .client
            .list(path, key, &[])
            .await
            .map_err(|e| explain(&format!("listing {key}"), e))?;
        *cached = Some((Instant::now(), items.clone()));
        Ok(items)
    }

    /// DigitalOcean's regions (cached for a few minutes).
    pub async fn regions(&self) -> Result<Vec<Value>, ProviderError> {
        self.catalog(&self.regions, "/v2/regions", "regions").await
    }

    /// DigitalOcean's droplet sizes (cached for a few minutes).
    pub async fn sizes(&self) -> Result<Vec<Value>, ProviderError> {
        self.catalog(&self.sizes, "/v2/sizes", "sizes").await
    }

    /// Everything tagged `devpocket`: droplets as (id, environment from the tag,
    /// created at), volumes as (id, environment, attached).
    pub async fn tagged(&self) -> Result<Tagged, ProviderError> {
        let environment = |item: &Value| {
            item["tags"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .find_map(|t| t.strip_prefix("devpocket-env-"))
                .and_then(|id| Uuid::parse_str(id).ok())
        };
        let droplets = self
            .droplets_tagged(TAG)
            .await
            .map_err(|e| explain("listing DevPocket's droplets", e))?
            .iter()
            .filter_map(|d| Some((d["id"].as_u64()?, environment(d))))
            .collect();
        let volumes = self
            .client
            .list("/v2/volumes", "volumes", &[])
            .await
            .map_err(|e| explain("listing volumes", e))?
            .iter()
            .filter(|v| {
                v["tags"]
                    .as_array()
                    .is_some_and(|t| t.iter().any(|t| t == TAG))
            })
            .filter_map(|v| {
                let attached = v["droplet_ids"].as_array().is_some_and(|d| !d.is_empty());
                Some((v["id"].as_str()?.to_owned(), environment(v), attached))
            })
            .collect();
        Ok(Tagged { droplets, volumes })
    }

    /// Whether the droplet still exists (asked on its own, not from a listing).
    pub async fn droplet_exists(&self, id: u64) -> Result<bool, ProviderError> {
        match self.get_droplet(id).await {
            Ok(_) => Ok(true),
            Err(e) if e.is_not_found() => Ok(false),
            Err(e) => Err(explain("checking on the droplet", e)),
        }
    }

    /// Destroys a droplet nobody owns.
    pub async fn destroy_orphan_droplet(&self, id: u64) -> Result<(), ProviderError> {
        self.destroy_droplet(id)
            .await
            .map_err(|e| explain("destroying an orphan droplet", e))
    }

    /// Deletes a volume nobody owns (once it is detached).
    pub async fn delete_orphan_volume(&self, id: &str) -> Result<(), ProviderError> {
        self.delete_volume(id).await
    }

    /// Follows the droplet's most recent action of `kind` begun at or after
    /// `since`, if DigitalOcean has one (a POST whose answer was lost).
    async fn recent_action(
        &self,
        droplet: u64,
        kind: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<u64>, ProviderError> {
        let actions = self
            .client
            .list(&format!("/v2/droplets/{droplet}/actions"), "actions", &[])
            .await
            .map_err(|e| explain("listing the droplet's actions", e))?;
        Ok(actions
            .iter()
            .filter(|a| a["type"] == kind)
            .filter(|a| {
                a["started_at"]
                    .as_str()
                    .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                    .is_some_and(|t| {
                        t.with_timezone(&chrono::Utc) >= since - chrono::Duration::seconds(5)
                    })
            })
            .filter_map(|a| a["id"].as_u64())
            .max())
    }

    pub fn config(&self) -> &DigitalOceanConfig {
        &self.config
    }

    async fn pause(&self) {
        tokio::time::sleep(self.config.poll_interval).await;
    }

    /// Droplets carrying `tag`, oldest first.
    async fn droplets_tagged(&self, tag: &str) -> Result<Vec<Value>, ApiError> {
        let mut droplets = self
            .client
            .list("/v2/droplets", "droplets", &[("tag_name", tag.to_owned())])
            .await?;
        droplets.sort_by_key(|d| d["id"].as_u64().unwrap_or(u64::MAX));
        Ok(droplets)
    }

    /// The environment's droplet, if one exists. Should there ever be more than
    /// one, the oldest is kept and the others destroyed.
    async fn find_droplet(&self, tag: &str) -> Result<Option<Value>, ProviderError> {
        let mut found = self
            .droplets_tagged(tag)
            .await
            .map_err(|e| explain("looking up the droplet", e))?;
        if found.len() > 1 {
            for extra in found.drain(1..) {
                let id = extra["id"].as_u64().unwrap_or(0);
                tracing::warn!(tag, droplet = id, "destroying a duplicate droplet");
                let _ = self.destroy_droplet(id).await;
            }
        }
        Ok(found.into_iter().next())
    }

    async fn get_droplet(&self, id: u64) -> Result<Value, ApiError> {
        let body = self
            .client
            .send(
                Method::GET,
                &format!("/v2/droplets/{id}"),
                &[],
                None,
                Repeat::Safe,
            )
            .await?;
        Ok(body["droplet"].clone())
    }

    async fn destroy_droplet(&self, id: u64) -> Result<(), ApiError> {
        match self
            .client
            .send(
                Method::DELETE,
                &format!("/v2/droplets/{id}"),
                &[],
                None,
                Repeat::Safe,
            )
            .await
        {
            Err(e) if e.is_not_found() => Ok(()),
            other => other.map(drop),
        }
    }

    /// The environment's home volume, created unless it exists.
    async fn ensure_volume(
        &self,
        spec: &MachineSpec,
        region: &str,
    ) -> Result<String, ProviderError> {
        let name = volume_name(spec.environment_id);
        let lookup = || async {
            let found = self
                .client
                .list(
                    "/v2/volumes",
                    "volumes",
                    &[("name", name.clone()), ("region", region.to_owned())],
                )
                .await
                .map_err(|e| explain("looking up the home volume", e))?;
            Ok::<_, ProviderError>(
                found
                    .first()
                    .and_then(|v| v["id"].as_str())
                    .map(str::to_owned),
            )
        };
        if let Some(id) = lookup().await? {
            return Ok(id);
        }
        let body = json!({
            "name": name,
            "region": region,
            "size_gigabytes": self.config.volume_gigabytes,
            "description": format!("DevPocket home of {}", spec.slug),
            "filesystem_type": "ext4",
            "filesystem_label": "devpocket",
            "tags": self.tags(spec),
        });
        for attempt in 1..=self.client.retry.attempts {
            match self
                .client
                .send(
                    Method::POST,
                    "/v2/volumes",
                    &[],
                    Some(&body),
                    Repeat::Unsafe,
                )
                .await
            {
                Ok(created) => {
                    return created["volume"]["id"]
                        .as_str()
                        .map(str::to_owned)
                        .ok_or_else(|| failed("DigitalOcean created a volume without an id"));
                }
                // It may exist after all (made by this very request, or a 409 says so).
                Err(e @ (ApiError::Uncertain(_) | ApiError::Api { status: 409, .. })) => {
                    tracing::info!(attempt, error = %e, "volume create unclear; looking it up");
                    tokio::time::sleep(self.client.retry.backoff(attempt)).await;
                    if let Some(id) = lookup().await? {
                        return Ok(id);
                    }
                }
                Err(e) => return Err(explain("creating the home volume", e)),
            }
        }
        Err(failed(
            "creating the home volume: no clear answer from DigitalOcean after several attempts",
        ))
    }

    fn tags(&self, spec: &MachineSpec) -> Vec<String> {
        vec![
            TAG.to_owned(),
            environment_tag(spec.environment_id),
            user_tag(spec.user_id),
        ]
    }

    fn region(&self, spec: &MachineSpec) -> String {
        if spec.region.is_empty() || spec.region == "local" {
            self.config.region.clone()
        } else {
            spec.region.clone()
        }
    }

    fn size(&self, spec: &MachineSpec) -> String {
        size_slug(&spec.size)
            .map(str::to_owned)
            .unwrap_or_else(|| spec.size.clone())
    }

    /// Creates the droplet, never twice: when it is unclear whether a create took
    /// effect, the environment's tag is looked up before trying again.
    async fn create_droplet(
        &self,
        body: &Value,
        tag: &str,
    ) -> Result<(u64, Option<u64>), ProviderError> {
        for attempt in 1..=self.client.retry.attempts {
            match self
                .client
                .send(
                    Method::POST,
                    "/v2/droplets",
                    &[],
                    Some(body),
                    Repeat::Unsafe,
                )
                .await
            {
                Ok(created) => {
                    let id = created["droplet"]["id"]
                        .as_u64()
                        .ok_or_else(|| failed("DigitalOcean created a droplet without an id"))?;
                    let action = created
                        .pointer("/links/actions/0/id")
                        .and_then(Value::as_u64);
                    return Ok((id, action));
                }
                Err(e @ ApiError::Uncertain(_)) => {
                    tracing::info!(attempt, error = %e, tag, "droplet create unclear; looking it up before trying again");
                    // Give a request still being processed time to land.
                    tokio::time::sleep(
                        self.client
                            .retry
                            .backoff(attempt)
                            .max(self.config.poll_interval),
                    )
                    .await;
                    if let Some(found) = self.find_droplet(tag).await? {
                        return Ok((found["id"].as_u64().unwrap_or(0), None));
                    }
                }
                Err(e) => return Err(explain("creating the droplet", e)),
            }
        }
        Err(failed(
            "creating the droplet: no clear answer from DigitalOcean after several attempts",
        ))
    }

    /// Follows an action to its end.
    async fn follow(
        &self,
        action: u64,
        doing: &str,
        limit: Duration,
    ) -> Result<bool, ProviderError> {
        let deadline = Instant::now() + limit;
        loop {
            let body = self
                .client
                .send(
                    Method::GET,
                    &format!("/v2/actions/{action}"),
                    &[],
                    None,
                    Repeat::Safe,
                )
                .await
                .map_err(|e| explain(doing, e))?;
            match body["action"]["status"].as_str() {
                Some("completed") => return Ok(true),
                Some("errored") => return Ok(false),
                _ if Instant::now() > deadline => {
                    return Err(failed(format!(
                        "{doing}: DigitalOcean's action {action} did not finish within {} s",
                        limit.as_secs()
                    )));
                }
                _ => self.pause().await,
            }
        }
    }

    /// Starts a droplet action, waiting while another one is pending.
    async fn action(&self, droplet: u64, body: Value, doing: &str) -> Result<u64, ProviderError> {
        let deadline = Instant::now() + self.config.create_timeout;
        loop {
            match self
                .client
                .send(
                    Method::POST,
                    &format!("/v2/droplets/{droplet}/actions"),
                    &[],
                    Some(&body),
                    Repeat::Safe,
                )
                .await
            {
                Ok(answer) => {
                    return answer["action"]["id"].as_u64().ok_or_else(|| {
                        failed(format!("{doing}: DigitalOcean returned no action"))
                    });
                }
                Err(e) if e.is_pending_event() && Instant::now() < deadline => {
                    tracing::debug!(droplet, doing, "droplet busy with another action; waiting");
                    self.pause().await;
                }
                Err(e) if e.is_not_found() => {
                    return Err(ProviderError::Gone(format!(
                        "droplet {droplet} no longer exists on DigitalOcean"
                    )));
                }
                Err(e) => return Err(explain(doing, e)),
            }
        }
    }

    /// Waits until the droplet is active with a public address.
    async fn until_active(&self, id: u64, spec: &MachineSpec) -> Result<Machine, ProviderError> {
        let deadline = Instant::now() + self.config.create_timeout;
        loop {
            let droplet = match self.get_droplet(id).await {
                Ok(d) => d,
                Err(e) if e.is_not_found() => {
                    return Err(ProviderError::Gone(format!(
                        "droplet {id} no longer exists on DigitalOcean"
                    )));
                }
                Err(e) => return Err(explain("checking on the droplet", e)),
            };
            if droplet["status"] == "active"
                && let Some(ip) = public_ipv4(&droplet)
            {
                let volume = droplet["volume_ids"][0].as_str().unwrap_or_default();
                return Ok(self.machine(id, volume, ip, spec));
            }
            if droplet["status"] == "archive" {
                return Err(ProviderError::Gone(format!("droplet {id} is archived")));
            }
            if Instant::now() > deadline {
                return Err(failed(format!(
                    "droplet {id} did not become active within {} minutes",
                    self.config.create_timeout.as_secs().div_ceil(60)
                )));
            }
            self.pause().await;
        }
    }

    fn machine(&self, droplet: u64, volume: &str, ip: String, spec: &MachineSpec) -> Machine {
        Machine {
            access: MachineAccess {
                host: ip,
                port: 22,
                user: self.config.user.clone(),
                host_public_key: spec.keys.host_public.trim().to_owned(),
            },
            provider_ref: format!("{droplet}:{volume}"),
        }
    }

    /// Deletes the volume once the droplet has let go of it.
    async fn delete_volume(&self, volume: &str) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.config.create_timeout;
        loop {
            match self
                .client
                .send(
                    Method::DELETE,
                    &format!("/v2/volumes/{volume}"),
                    &[],
                    None,
                    Repeat::Safe,
                )
                .await
            {
                Ok(_) => return Ok(()),
                Err(e) if e.is_not_found() => return Ok(()),
                // Still attached: a destroyed droplet lets go of it a few seconds later.
                Err(e) if e.status() == Some(409) && Instant::now() < deadline => {
                    self.pause().await
                }
                Err(e) => return Err(explain("deleting the home volume", e)),
            }
        }
    }
}

#[async_trait]
impl Provider for DigitalOceanProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn create(&self, spec: &MachineSpec) -> Result<Machine, ProviderError> {
        let tag = environment_tag(spec.environment_id);
        // A droplet made by an earlier attempt (a retry, a restart) is the one.
        if let Some(existing) = self.find_droplet(&tag).await? {
            let id = existing["id"].as_u64().unwrap_or(0);
            tracing::info!(environment_id = %spec.environment_id, droplet = id, "resuming with the existing droplet");
            return self.until_active(id, spec).await;
        }
        let region = self.region(spec);
        let volume_name = volume_name(spec.environment_id);
        // Rendered first: a template too large for a droplet costs nothing.
        let user_data = UserDataSpec {
            environment_id: spec.environment_id,
            slug: &spec.slug,
            user: &self.config.user,
            keys: &spec.keys,
            volume_name: Some(&volume_name),
            packages: &spec.packages,
            cloud_init: &spec.cloud_init,
            bootstrap: &spec.bootstrap,
            environment_variables: &spec.environment_variables,
        }
        .render()
        .map_err(|e| failed(e.to_string()))?;
        let volume = self.ensure_volume(spec, &region).await?;
        let body = json!({
            "name": spec.slug,
            "region": region,
            "size": self.size(spec),
            "image": self.config.image,
            "ssh_keys": [],
            "backups": false,
            "ipv6": true,
            "monitoring": true,
            "tags": self.tags(spec),
            "user_data": user_data,
            "volumes": [volume],
        });
        let (droplet, action) = match self.create_droplet(&body, &tag).await {
            Ok(created) => created,
            Err(e) => {
                // Refused: the volume made for it would only cost money.
                if let Ok(None) = self.find_droplet(&tag).await {
                    let _ = self.delete_volume(&volume).await;
                }
                return Err(e);
            }
        };
        if let Some(action) = action
            && !self
                .follow(action, "creating the droplet", self.config.create_timeout)
                .await?
        {
            let _ = self.destroy_droplet(droplet).await;
            return Err(failed(format!(
                "DigitalOcean could not create the droplet (its create action {action} errored); try again"
            )));
        }
        self.until_active(droplet, spec).await
    }

    async fn start(
        &self,
        spec: &MachineSpec,
        provider_ref: &str,
    ) -> Result<Machine, ProviderError> {
        let (id, _) = parse_ref(provider_ref)?;
        let droplet = match self.get_droplet(id).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => {
                return Err(ProviderError::Gone(format!(
                    "droplet {id} no longer exists on DigitalOcean"
                )));
            }
            Err(e) => return Err(explain("checking on the droplet", e)),
        };
        if droplet["status"] == "off" {
            let action = self
                .action(id, json!({"type": "power_on"}), "powering the droplet on")
                .await?;
            if !self
                .follow(
                    action,
                    "powering the droplet on",
                    self.config.create_timeout,
                )
                .await?
            {
                return Err(failed(format!(
                    "DigitalOcean could not power droplet {id} on"
                )));
            }
        }
        self.until_active(id, spec).await
    }

    async fn stop(&self, provider_ref: &str) -> Result<(), ProviderError> {
        let (id, _) = parse_ref(provider_ref)?;
        let droplet = match self.get_droplet(id).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(explain("checking on the droplet", e)),
        };
        if droplet["status"] == "off" {
            return Ok(());
        }
        // A clean shutdown first; if the machine ignores it, pull the plug.
        let action = self
            .action(id, json!({"type": "shutdown"}), "shutting the droplet down")
            .await?;
        match self
            .follow(
                action,
                "shutting the droplet down",
                self.config.shutdown_timeout,
            )
            .await
        {
            Ok(true) => return Ok(()),
            Ok(false) => tracing::info!(droplet = id, "shutdown errored; powering off"),
            Err(e) => {
                tracing::info!(droplet = id, error = %e, "shutdown took too long; powering off")
            }
        }
        let action = self
            .action(id, json!({"type": "power_off"}), "powering the droplet off")
            .await?;
        if self
            .follow(
                action,
                "powering the droplet off",
                self.config.create_timeout,
            )
            .await?
        {
            Ok(())
        } else {
            Err(failed(format!(
                "DigitalOcean could not power droplet {id} off"
            )))
        }
    }

    async fn delete(&self, provider_ref: &str) -> Result<(), ProviderError> {
        let (id, volume) = parse_ref(provider_ref)?;
        self.destroy_droplet(id)
            .await
            .map_err(|e| explain("destroying the droplet", e))?;
        if let Some(volume) = volume {
            self.delete_volume(&volume).await?;
        }
        Ok(())
    }

    fn supports(&self, _operation: Maintenance) -> bool {
        true
    }

    async fn reboot(&self, provider_ref: &str) -> Result<(), ProviderError> {
        let (id, _) = parse_ref(provider_ref)?;
        let action = self
            .action(id, json!({"type": "reboot"}), "rebooting the droplet")
            .await?;
        if self
            .follow(action, "rebooting the droplet", self.config.create_timeout)
            .await?
        {
            return Ok(());
        }
        // A machine that does not reboot gets the hard way: off, then on.
        tracing::info!(droplet = id, "reboot errored; powering off and on");
        self.stop(provider_ref).await?;
        let action = self
            .action(id, json!({"type": "power_on"}), "powering the droplet on")
            .await?;
        if self
            .follow(
                action,
                "powering the droplet on",
                self.config.create_timeout,
            )
            .await?
        {
            Ok(())
        } else {
            Err(failed(format!(
                "DigitalOcean could not power droplet {id} on"
            )))
        }
    }

    async fn snapshot(&self, provider_ref: &str, name: &str) -> Result<String, ProviderError> {
        let (id, _) = parse_ref(provider_ref)?;
        let doing = "taking the snapshot";
        let body = json!({"type": "snapshot", "name": name});
        let since = chrono::Utc::now();
        let deadline = Instant::now() + self.config.create_timeout;
        // A snapshot is not repeated blindly either: a second one would be billed.
        let action = loop {
            match self
                .client
                .send(
                    Method::POST,
                    &format!("/v2/droplets/{id}/actions"),
                    &[],
                    Some(&body),
                    Repeat::Unsafe,
                )
                .await
            {
                Ok(answer) => {
                    break answer["action"]["id"].as_u64().ok_or_else(|| {
                        failed(format!("{doing}: DigitalOcean returned no action"))
                    })?;
                }
                Err(ApiError::Uncertain(e)) => {
                    tracing::info!(droplet = id, error = %e, "snapshot request unclear; looking for it");
                    self.pause().await;
                    if let Some(action) = self.recent_action(id, "snapshot", since).await? {
                        break action;
                    }
                }
                Err(e) if e.is_pending_event() && Instant::now() < deadline => self.pause().await,
                Err(e) if e.is_not_found() => {
                    return Err(ProviderError::Gone(format!(
                        "droplet {id} no longer exists on DigitalOcean"
                    )));
                }
                Err(e) => return Err(explain(doing, e)),
            }
        };
        if !self
            .follow(action, doing, self.config.create_timeout)
            .await?
        {
            return Err(failed(format!(
                "DigitalOcean could not take the snapshot (action {action} errored)"
            )));
        }
        let snapshots = self
            .client
            .list(&format!("/v2/droplets/{id}/snapshots"), "snapshots", &[])
            .await
            .map_err(|e| explain("listing the droplet's snapshots", e))?;
        Ok(snapshots
            .iter()
            .filter(|s| s["name"] == name)
            .filter_map(|s| s["id"].as_u64())
            .max()
            .map(|s| s.to_string())
            .unwrap_or_default())
    }

    async fn resize(&self, provider_ref: &str, size: &str) -> Result<(), ProviderError> {
        let (id, _) = parse_ref(provider_ref)?;
        let droplet = match self.get_droplet(id).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => {
                return Err(ProviderError::Gone(format!(
                    "droplet {id} no longer exists on DigitalOcean"
                )));
            }
            Err(e) => return Err(explain("checking on the droplet", e)),
        };
        if droplet["size_slug"] == size {
            return Ok(());
        }
        let sizes = self.sizes().await?;
        let Some(target) = sizes.iter().find(|s| s["slug"] == size) else {
            return Err(failed(format!("DigitalOcean has no size {size}")));
        };
        // The disk grows with a larger size (for good: it cannot shrink again);
        // otherwise only CPUs and memory change. The home is on its own volume.
        let disk = target["disk"].as_u64().unwrap_or(0) > droplet["disk"].as_u64().unwrap_or(0);
        let was_on = droplet["status"] == "active";
        if was_on {
            self.stop(provider_ref).await?;
        }
        let action = self
            .action(
                id,
                json!({"type": "resize", "size": size, "disk": disk}),
                "resizing the droplet",
            )
            .await?;
        let resized = self
            .follow(action, "resizing the droplet", self.config.create_timeout)
            .await?;
        if was_on {
            let action = self
                .action(id, json!({"type": "power_on"}), "powering the droplet on")
                .await?;
            self.follow(
                action,
                "powering the droplet on",
                self.config.create_timeout,
            )
            .await?;
        }
        if resized {
            Ok(())
        } else {
            Err(failed(format!(
                "DigitalOcean could not resize droplet {id} to {size} (action {action} errored)"
            )))
        }
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
