//! Beyond the lifecycle: reboot, snapshot and resize.

use std::time::Instant;

use reqwest::Method;
use serde_json::json;

use super::client::{ApiError, Repeat, RetryReason};
use super::{DigitalOceanProvider, explain, failed, parse_ref};
use crate::provider::ProviderError;

impl DigitalOceanProvider {
    pub(super) async fn reboot_machine(&self, provider_ref: &str) -> Result<(), ProviderError> {
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
        self.stop_machine(provider_ref).await?;
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

    pub(super) async fn snapshot_machine(
        &self,
        provider_ref: &str,
        name: &str,
    ) -> Result<String, ProviderError> {
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
                    self.client.retried(RetryReason::Unclear);
                }
                Err(e) if e.is_pending_event() && Instant::now() < deadline => {
                    self.client.retried(RetryReason::Busy);
                    self.pause().await;
                }
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

    pub(super) async fn resize_machine(
        &self,
        provider_ref: &str,
        size: &str,
    ) -> Result<(), ProviderError> {
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
        let (target_disk, droplet_disk) = (
            target["disk"].as_u64().unwrap_or(0),
            droplet["disk"].as_u64().unwrap_or(0),
        );
        if target_disk < droplet_disk {
            return Err(failed(format!(
                "{size} has a {target_disk} GB disk, and this droplet's disk has grown to \
                 {droplet_disk} GB, which DigitalOcean cannot shrink: choose a size with at \
                 least {droplet_disk} GB of disk"
            )));
        }
        let disk = target_disk > droplet_disk;
        let was_on = droplet["status"] == "active";
        if was_on {
            self.stop_machine(provider_ref).await?;
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
}
