//! Beyond the lifecycle: reboot, snapshot and resize.

use serde_json::json;

use super::actions::{Action, Ended};
use super::{DigitalOceanProvider, explain, failed, parse_ref};
use crate::provider::ProviderError;

impl DigitalOceanProvider {
    pub(super) async fn reboot_machine(&self, provider_ref: &str) -> Result<(), ProviderError> {
        let (id, _) = parse_ref(provider_ref)?;
        let reboot = Action::new(json!({"type": "reboot"}), "rebooting the droplet");
        match self
            .perform(id, &reboot, self.config.create_timeout)
            .await?
        {
            Ended::Completed => return Ok(()),
            Ended::Errored(_) => {}
            Ended::Unknown(e) => return Err(e),
        }
        // A machine that does not reboot gets the hard way: off, then on.
        tracing::info!(droplet = id, "reboot errored; powering off and on");
        self.power_down(id).await?;
        self.power(id, true).await
    }

    pub(super) async fn snapshot_machine(
        &self,
        provider_ref: &str,
        name: &str,
    ) -> Result<String, ProviderError> {
        let (id, _) = parse_ref(provider_ref)?;
        match self.get_droplet(id).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                return Err(ProviderError::ForOwner(
                    "a stopped environment has no machine to take a snapshot of (a stop keeps \
                     only its home volume); start it, then take the snapshot"
                        .into(),
                ));
            }
            Err(e) => return Err(explain("checking on the droplet", e)),
        }
        // A snapshot is not repeated blindly: a second one would be billed.
        let snapshot = Action::billed(
            json!({"type": "snapshot", "name": name}),
            "taking the snapshot",
        );
        self.perform(id, &snapshot, self.config.create_timeout)
            .await?
            .completed(|action| {
                failed(format!(
                    "DigitalOcean could not take the snapshot (action {action} errored)"
                ))
            })?;
        let snapshot = self
            .newest(
                (&format!("/v2/droplets/{id}/snapshots"), "snapshots"),
                "listing the droplet's snapshots",
                |s| s["name"] == name,
            )
            .await?;
        Ok(snapshot.map(|s| s.to_string()).unwrap_or_default())
    }

    pub(super) async fn resize_machine(
        &self,
        provider_ref: &str,
        size: &str,
    ) -> Result<(), ProviderError> {
        let (id, _) = parse_ref(provider_ref)?;
        let sizes = self.sizes().await?;
        let Some(target) = sizes.iter().find(|s| s["slug"] == size) else {
            return Err(failed(format!("DigitalOcean has no size {size}")));
        };
        let droplet = match self.get_droplet(id).await {
            Ok(droplet) => droplet,
            // Stopped: it has no droplet; the next start makes one of the new size.
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(explain("checking on the droplet", e)),
        };
        if droplet["size_slug"] == size {
            return Ok(());
        }
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
            self.power_down(id).await?;
        }
        let resize = Action::new(
            json!({"type": "resize", "size": size, "disk": disk}),
            "resizing the droplet",
        );
        let resized = match self
            .perform(id, &resize, self.config.create_timeout)
            .await?
        {
            Ended::Unknown(e) => return Err(e),
            ended => ended,
        };
        if was_on {
            // Back on whether or not the resize took; the answer is the resize's outcome.
            let power_on = Action::new(json!({"type": "power_on"}), "powering the droplet on");
            if let Ended::Unknown(e) = self
                .perform(id, &power_on, self.config.create_timeout)
                .await?
            {
                return Err(e);
            }
        }
        resized.completed(|action| {
            failed(format!(
                "DigitalOcean could not resize droplet {id} to {size} (action {action} errored)"
            ))
        })
    }
}
