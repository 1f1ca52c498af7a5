//! Create, start, stop and delete: the droplet lifecycle behind the `Provider`
//! trait, never making a second droplet for an environment.

use std::future::Future;

use serde_json::json;
use uuid::Uuid;

use super::actions::{Action, Ended};
use super::user_data::UserDataSpec;
use super::{DigitalOceanProvider, environment_tag, explain, failed, parse_ref, volume_name};
use crate::provider::{Cancel, Machine, MachineSpec, ProviderError};

/// Whether a create's home volume is new to the environment, or its home already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Home {
    New,
    Existing,
}

/// Waiting (polling what exists) may be given up at any moment: nothing is made by
/// it, and what was made before is tagged, so a delete finds it.
async fn unless_cancelled<T>(
    cancel: &Cancel,
    wait: impl Future<Output = Result<T, ProviderError>>,
) -> Result<T, ProviderError> {
    tokio::select! {
        result = wait => result,
        () = cancel.cancelled() => Err(ProviderError::Cancelled),
    }
}

impl DigitalOceanProvider {
    /// Creates the volume (unless it exists) and the droplet, each request seen
    /// through to its end; `cancel` is heeded before each request that would make
    /// something, and at any moment while waiting for the droplet. `home` says
    /// whether the volume is new to this environment (a create) or its home
    /// already (a start), which a refused droplet never takes with it.
    pub(super) async fn create_machine(
        &self,
        spec: &MachineSpec,
        cancel: &Cancel,
        home: Home,
    ) -> Result<Machine, ProviderError> {
        cancel.check()?;
        let tag = environment_tag(spec.environment_id);
        // A droplet made by an earlier attempt (a retry, a restart) is the one.
        if let Some(existing) = self.find_droplet(&tag).await? {
            let id = existing["id"].as_u64().unwrap_or(0);
            tracing::info!(environment_id = %spec.environment_id, droplet = id, "resuming with the existing droplet");
            return unless_cancelled(cancel, self.until_active(id, spec)).await;
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
        let volume = self.ensure_volume(spec, &region, cancel).await?;
        cancel.check()?;
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
        let (droplet, action) = match self.create_droplet(&body, &tag, cancel).await {
            Ok(created) => created,
            // The delete that cancelled it removes the volume.
            Err(ProviderError::Cancelled) => return Err(ProviderError::Cancelled),
            Err(e) => {
                // Refused: a volume made for it would only cost money.
                if home == Home::New
                    && let Ok(None) = self.find_droplet(&tag).await
                    && let Err(gone) = self.delete_volume(&volume).await
                {
                    tracing::warn!(volume, error = %crate::error_chain(&gone), "could not delete the volume of a refused create; deleting the environment removes it");
                }
                return Err(e);
            }
        };
        unless_cancelled(cancel, async {
            if let Some(action) = action
                && !self
                    .follow(action, "creating the droplet", self.config.create_timeout)
                    .await?
            {
                if let Err(gone) = self.destroy_droplet(droplet).await {
                    tracing::warn!(droplet, error = %crate::error_chain(&gone), "could not destroy a droplet whose create errored; deleting the environment removes it");
                }
                return Err(failed(format!(
                    "DigitalOcean could not create the droplet (its create action {action} errored); try again"
                )));
            }
            self.until_active(droplet, spec).await
        })
        .await
    }

    /// Brings a stopped environment's machine up. A stop destroys the droplet and
    /// keeps the home volume, so this makes a droplet again from the same
    /// user-data: the same pinned host key, the volume mounted as home (the
    /// bootstrap does not run again: its lock is on the volume). A droplet that
    /// still exists (a start interrupted, or one stopped by an earlier version,
    /// powered off) is powered on instead.
    pub(super) async fn start_machine(
        &self,
        spec: &MachineSpec,
        provider_ref: &str,
    ) -> Result<Machine, ProviderError> {
        let (id, _) = parse_ref(provider_ref)?;
        let droplet = match self.get_droplet(id).await {
            Ok(droplet) => Some(droplet),
            // Or the one an interrupted start made.
            Err(e) if e.is_not_found() => {
                self.find_droplet(&environment_tag(spec.environment_id))
                    .await?
            }
            Err(e) => return Err(explain("checking on the droplet", e)),
        };
        if let Some(droplet) = droplet {
            let id = droplet["id"].as_u64().unwrap_or(id);
            if droplet["status"] == "off" {
                self.power(id, true).await?;
            }
            return self.until_active(id, spec).await;
        }
        // Without its volume it would come up with an empty home: that is not a start.
        let name = volume_name(spec.environment_id);
        let Some(volume) = self.volumes_named(&name).await?.into_iter().next() else {
            return Err(ProviderError::Gone(format!(
                "the environment's home volume {name} no longer exists on DigitalOcean"
            )));
        };
        self.until_volume_free(&volume).await?;
        self.create_machine(spec, &Cancel::never(), Home::Existing)
            .await
    }

    /// Shuts the droplet down and destroys it: a powered-off droplet is billed in
    /// full, so a stopped environment keeps only its home volume.
    pub(super) async fn stop_machine(&self, provider_ref: &str) -> Result<(), ProviderError> {
        let (id, volume) = parse_ref(provider_ref)?;
        self.power_down(id).await?;
        self.destroy_droplet(id)
            .await
            .map_err(|e| explain("destroying the stopped droplet", e))?;
        // Stopped once the volume is free for the next start's droplet.
        match volume {
            Some(volume) => self.until_volume_free(&volume).await,
            None => Ok(()),
        }
    }

    /// Shuts the droplet down cleanly, or powers it off if it ignores that; a
    /// droplet that is off or gone is left as it is.
    pub(super) async fn power_down(&self, id: u64) -> Result<(), ProviderError> {
        let droplet = match self.get_droplet(id).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(explain("checking on the droplet", e)),
        };
        if droplet["status"] == "off" {
            return Ok(());
        }
        // A clean shutdown first; if the machine ignores it, pull the plug.
        let shutdown = Action::new(json!({"type": "shutdown"}), "shutting the droplet down");
        match self
            .perform(id, &shutdown, self.config.shutdown_timeout)
            .await?
        {
            Ended::Completed => return Ok(()),
            Ended::Errored(_) => tracing::info!(droplet = id, "shutdown errored; powering off"),
            Ended::Unknown(e) => {
                tracing::info!(droplet = id, error = %e, "shutdown took too long; powering off")
            }
        }
        self.power(id, false).await
    }

    /// Destroys the environment's droplets and deletes its volumes: the recorded
    /// ones, and any other tagged with the environment or named after it (a create
    /// that was cancelled, or whose answer was lost, before anything was recorded).
    pub(super) async fn delete_machine(
        &self,
        environment_id: Uuid,
        provider_ref: Option<&str>,
    ) -> Result<(), ProviderError> {
        let (mut droplets, mut volumes) = (Vec::new(), Vec::new());
        if let Some(provider_ref) = provider_ref {
            let (id, volume) = parse_ref(provider_ref)?;
            droplets.push(id);
            volumes.extend(volume);
        }
        let tagged = self
            .droplets_tagged(&environment_tag(environment_id))
            .await
            .map_err(|e| explain("looking up the droplet", e))?;
        droplets.extend(tagged.iter().filter_map(|d| d["id"].as_u64()));
        droplets.sort_unstable();
        droplets.dedup();
        for id in droplets {
            self.destroy_droplet(id)
                .await
                .map_err(|e| explain("destroying the droplet", e))?;
        }
        volumes.extend(self.volumes_named(&volume_name(environment_id)).await?);
        volumes.sort_unstable();
        volumes.dedup();
        for volume in volumes {
            self.delete_volume(&volume).await?;
        }
        Ok(())
    }
}
