//! What DigitalOcean has: regions and sizes (cached), and everything tagged
//! `devpocket`, for reconciliation.

use std::time::{Duration, Instant};

use serde_json::Value;
use uuid::Uuid;

use super::{DigitalOceanProvider, TAG, explain};
use crate::provider::ProviderError;

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

pub(super) type Catalog = tokio::sync::Mutex<Option<(Instant, Vec<Value>)>>;

impl DigitalOceanProvider {
    pub(super) async fn catalog(
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
}
