//! The API calls the lifecycle is made of: looking droplets up by tag, creating
//! them without ever repeating a create blindly, waiting until one is active, and
//! the home volume.

use std::time::Instant;

use reqwest::Method;
use serde_json::{Value, json};

use super::client::{ApiError, Repeat, RetryReason};
use super::{
    DigitalOceanProvider, TAG, environment_tag, explain, failed, public_ipv4, size_slug, user_tag,
    volume_name,
};
use crate::model::MachineAccess;
use crate::provider::{Cancel, Machine, MachineSpec, ProviderError};

impl DigitalOceanProvider {
    pub(super) async fn pause(&self) {
        tokio::time::sleep(self.config.poll_interval).await;
    }

    /// Sends a request, and sends it again after a pause while DigitalOcean answers
    /// that what it acts on is `busy` (another action pending, a volume still
    /// attached) and `deadline` has not passed; the last answer.
    pub(super) async fn send_when_free(
        &self,
        (method, path): (Method, &str),
        body: Option<&Value>,
        repeat: Repeat,
        busy: impl Fn(&ApiError) -> bool,
        deadline: Instant,
    ) -> Result<Value, ApiError> {
        loop {
            match self
                .client
                .send(method.clone(), path, &[], body, repeat)
                .await
            {
                Err(e) if busy(&e) && Instant::now() < deadline => {
                    tracing::debug!(path, error = %e, "busy; waiting");
                    self.client.retried(RetryReason::Busy);
                    self.pause().await;
                }
                answer => return answer,
            }
        }
    }

    /// The id of the newest item listed at `path` (under `key`) that `wanted`, if
    /// there is one; `doing` names the listing in an error.
    pub(super) async fn newest(
        &self,
        (path, key): (&str, &str),
        doing: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Option<u64>, ProviderError> {
        let items = self
            .client
            .list(path, key, &[])
            .await
            .map_err(|e| explain(doing, e))?;
        Ok(items
            .iter()
            .filter(|item| wanted(item))
            .filter_map(|item| item["id"].as_u64())
            .max())
    }

    /// Droplets carrying `tag`, oldest first.
    pub(super) async fn droplets_tagged(&self, tag: &str) -> Result<Vec<Value>, ApiError> {
        let mut droplets = self
            .client
            .list("/v2/droplets", "droplets", &[("tag_name", tag.to_owned())])
            .await?;
        droplets.sort_by_key(|d| d["id"].as_u64().unwrap_or(u64::MAX));
        Ok(droplets)
    }

    /// The environment's droplet, if one exists. Should there ever be more than
    /// one, the oldest is kept and the others destroyed.
    pub(super) async fn find_droplet(&self, tag: &str) -> Result<Option<Value>, ProviderError> {
        let mut found = self
            .droplets_tagged(tag)
            .await
            .map_err(|e| explain("looking up the droplet", e))?;
        if found.len() > 1 {
            for extra in found.drain(1..) {
                let id = extra["id"].as_u64().unwrap_or(0);
                tracing::warn!(tag, droplet = id, "destroying a duplicate droplet");
                if let Err(e) = self.destroy_droplet(id).await {
                    tracing::warn!(tag, droplet = id, error = %crate::error_chain(&e), "could not destroy a duplicate droplet");
                }
            }
        }
        Ok(found.into_iter().next())
    }

    /// The droplet; [`ProviderError::Gone`] once DigitalOcean no longer has it.
    pub(super) async fn droplet(&self, id: u64) -> Result<Value, ProviderError> {
        match self.get_droplet(id).await {
            Ok(d) => Ok(d),
            Err(e) if e.is_not_found() => Err(gone(id)),
            Err(e) => Err(explain("checking on the droplet", e)),
        }
    }

    pub(super) async fn get_droplet(&self, id: u64) -> Result<Value, ApiError> {
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

    pub(super) async fn destroy_droplet(&self, id: u64) -> Result<(), ApiError> {
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

    /// The environment's home volume, created unless it exists. Once `cancel` is
    /// cancelled no create is sent (one already sent is seen through).
    pub(super) async fn ensure_volume(
        &self,
        spec: &MachineSpec,
        region: &str,
        cancel: &Cancel,
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
            cancel.check()?;
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
                    cancel.check()?;
                    if attempt < self.client.retry.attempts {
                        self.client.retried(RetryReason::Unclear);
                    }
                }
                Err(e) => return Err(explain("creating the home volume", e)),
            }
        }
        Err(failed(
            "creating the home volume: no clear answer from DigitalOcean after several attempts",
        ))
    }

    pub(super) fn tags(&self, spec: &MachineSpec) -> Vec<String> {
        vec![
            TAG.to_owned(),
            environment_tag(spec.environment_id),
            user_tag(spec.user_id),
        ]
    }

    pub(super) fn region(&self, spec: &MachineSpec) -> String {
        if spec.region.is_empty() || spec.region == "local" {
            self.config.region.clone()
        } else {
            spec.region.clone()
        }
    }

    pub(super) fn size(&self, spec: &MachineSpec) -> String {
        size_slug(&spec.size)
            .map(str::to_owned)
            .unwrap_or_else(|| spec.size.clone())
    }

    /// Creates the droplet, never twice: when it is unclear whether a create took
    /// effect, the environment's tag is looked up before trying again — unless
    /// `cancel` was cancelled meanwhile.
    pub(super) async fn create_droplet(
        &self,
        body: &Value,
        tag: &str,
        cancel: &Cancel,
    ) -> Result<(u64, Option<u64>), ProviderError> {
        for attempt in 1..=self.client.retry.attempts {
            cancel.check()?;
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
                    cancel.check()?;
                    if attempt < self.client.retry.attempts {
                        self.client.retried(RetryReason::Unclear);
                    }
                }
                Err(e) => return Err(explain("creating the droplet", e)),
            }
        }
        Err(failed(
            "creating the droplet: no clear answer from DigitalOcean after several attempts",
        ))
    }

    /// Waits until the droplet is active with a public address.
    pub(super) async fn until_active(
        &self,
        id: u64,
        spec: &MachineSpec,
    ) -> Result<Machine, ProviderError> {
        let deadline = Instant::now() + self.config.create_timeout;
        loop {
            let droplet = self.droplet(id).await?;
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

    pub(super) fn machine(
        &self,
        droplet: u64,
        volume: &str,
        ip: String,
        spec: &MachineSpec,
    ) -> Machine {
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

    /// The ids of the volumes called `name`, in any region.
    pub(super) async fn volumes_named(&self, name: &str) -> Result<Vec<String>, ProviderError> {
        let found = self
            .client
            .list("/v2/volumes", "volumes", &[("name", name.to_owned())])
            .await
            .map_err(|e| explain("looking up the home volume", e))?;
        Ok(found
            .iter()
            .filter_map(|v| v["id"].as_str().map(str::to_owned))
            .collect())
    }

    /// Waits until no droplet holds the volume (a destroyed droplet lets go of it a
    /// few seconds later), so that a new droplet can have it.
    pub(super) async fn until_volume_free(&self, volume: &str) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.config.create_timeout;
        loop {
            let body = match self
                .client
                .send(
                    Method::GET,
                    &format!("/v2/volumes/{volume}"),
                    &[],
                    None,
                    Repeat::Safe,
                )
                .await
            {
                Ok(body) => body,
                Err(e) if e.is_not_found() => {
                    return Err(ProviderError::Gone(format!(
                        "the environment's home volume {volume} no longer exists on DigitalOcean"
                    )));
                }
                Err(e) => return Err(explain("checking on the home volume", e)),
            };
            let held = body["volume"]["droplet_ids"]
                .as_array()
                .is_some_and(|d| !d.is_empty());
            if !held {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(failed(format!(
                    "the home volume {volume} is still attached to a droplet; try again in a minute"
                )));
            }
            tokio::time::sleep(self.config.poll_interval).await;
        }
    }

    /// Deletes the volume once the droplet has let go of it.
    pub(super) async fn delete_volume(&self, volume: &str) -> Result<(), ProviderError> {
        let deadline = Instant::now() + self.config.create_timeout;
        // Still attached: a destroyed droplet lets go of it a few seconds later.
        let attached = |e: &ApiError| e.status() == Some(409);
        let path = format!("/v2/volumes/{volume}");
        match self
            .send_when_free(
                (Method::DELETE, &path),
                None,
                Repeat::Safe,
                attached,
                deadline,
            )
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if e.is_not_found() => Ok(()),
            Err(e) => Err(explain("deleting the home volume", e)),
        }
    }
}

/// What a droplet that DigitalOcean no longer has makes of an operation on it.
pub(super) fn gone(id: u64) -> ProviderError {
    ProviderError::Gone(format!("droplet {id} no longer exists on DigitalOcean"))
}
