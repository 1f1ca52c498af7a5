//! Reconciliation with DigitalOcean, at start-up and every
//! `DO_RECONCILE_INTERVAL`: droplets and volumes tagged `devpocket` that belong to
//! no live environment (a create that outlived its environment, a crash, a hand
//! edit) are reported — logged, and counted in `/health` — and destroyed once they
//! have been orphans for `DO_ORPHAN_GRACE`, when `DO_DESTROY_ORPHANS` is on; an
//! environment whose droplet has vanished moves to `error` saying so. The same
//! figures are in `/metrics`: `devpocket_provider_orphans{provider,resource}`,
//! `devpocket_provider_orphans_destroyed_total{provider,resource}` and
//! `devpocket_provider_machines_vanished_total{provider}`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

use ::metrics::{counter, gauge};
use chrono::{DateTime, Utc};
use devpocket_actors::ActorSystem;
use devpocket_actors::environment::MachineGone;
use devpocket_actors::provider::digitalocean::{self, DigitalOceanProvider};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::config::DigitalOceanSettings;
use crate::db::{DbPool, environments as db};
use crate::metrics::Metrics;

/// What reconciliation with DigitalOcean found, in `/health`.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = DigitalOceanHealth)]
pub struct ReconcileReport {
    /// Droplets tagged `devpocket` that belong to no live environment, in the last
    /// round.
    pub orphan_droplets: i64,
    /// Volumes tagged `devpocket` that belong to no live environment, in the last
    /// round.
    pub orphan_volumes: i64,
    /// Orphan droplets and volumes destroyed since the server started.
    pub orphans_destroyed: i64,
    /// Environments moved to `error` since the server started because their
    /// droplet no longer exists.
    pub vanished_droplets: i64,
    /// When the last complete round ended; null before the first.
    pub last_reconciled: Option<DateTime<Utc>>,
}

/// What the last round found, for operators.
#[derive(Debug, Default)]
pub struct ReconcileStatus {
    pub orphan_droplets: AtomicI64,
    pub orphan_volumes: AtomicI64,
    pub destroyed: AtomicI64,
    pub vanished: AtomicI64,
    /// Unix time of the last complete round (0: none yet).
    pub last_round: AtomicI64,
}

impl ReconcileStatus {
    /// For `/health`.
    pub fn report(&self) -> ReconcileReport {
        let last = self.last_round.load(Ordering::Relaxed);
        ReconcileReport {
            orphan_droplets: self.orphan_droplets.load(Ordering::Relaxed),
            orphan_volumes: self.orphan_volumes.load(Ordering::Relaxed),
            orphans_destroyed: self.destroyed.load(Ordering::Relaxed),
            vanished_droplets: self.vanished.load(Ordering::Relaxed),
            last_reconciled: (last > 0)
                .then(|| DateTime::from_timestamp(last, 0))
                .flatten(),
        }
    }
}

pub struct Reconciler {
    provider: Arc<DigitalOceanProvider>,
    pool: DbPool,
    actors: ActorSystem,
    settings: DigitalOceanSettings,
    metrics: Arc<Metrics>,
    pub status: Arc<ReconcileStatus>,
    /// When each orphan (a droplet id or a volume id) was first seen.
    first_seen: HashMap<String, Instant>,
}

impl Reconciler {
    pub fn new(
        provider: Arc<DigitalOceanProvider>,
        pool: DbPool,
        actors: ActorSystem,
        settings: DigitalOceanSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            provider,
            pool,
            actors,
            settings,
            metrics,
            status: Arc::default(),
            first_seen: HashMap::new(),
        }
    }

    /// Runs a round now and then every interval, for as long as the server runs.
    pub fn spawn(mut self) -> Arc<ReconcileStatus> {
        let status = self.status.clone();
        actix_web::rt::spawn(async move {
            loop {
                if let Err(e) = self.round().await {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "reconciliation with DigitalOcean failed; trying again later"
                    );
                }
                actix_web::rt::time::sleep(self.settings.reconcile_interval).await;
            }
        });
        status
    }

    /// An orphan `resource` (`droplet` or `volume`) was destroyed.
    fn destroyed(&self, resource: &'static str) {
        self.metrics.record(|| {
            counter!("devpocket_provider_orphans_destroyed_total", "provider" => digitalocean::NAME, "resource" => resource)
                .increment(1);
        });
        self.status.destroyed.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether `id` has been an orphan long enough to go (and may go).
    fn expired(&mut self, id: &str, now: Instant) -> bool {
        let since = *self.first_seen.entry(id.to_owned()).or_insert(now);
        self.settings.destroy_orphans && now.duration_since(since) >= self.settings.orphan_grace
    }

    pub async fn round(&mut self) -> anyhow::Result<()> {
        let tagged = self.provider.tagged().await?;
        let live = {
            let mut conn = self.pool.get().await?;
            db::live_on_provider(&mut conn, digitalocean::NAME).await?
        };
        let owners: HashSet<Uuid> = live.iter().map(|(id, ..)| *id).collect();
        let now = Instant::now();
        let mut seen = HashSet::new();

        let mut orphan_droplets = 0;
        for (droplet, environment) in &tagged.droplets {
            if environment.is_some_and(|e| owners.contains(&e)) {
                continue;
            }
            orphan_droplets += 1;
            let key = format!("droplet:{droplet}");
            seen.insert(key.clone());
            tracing::warn!(droplet, environment = ?environment, "orphan droplet: tagged devpocket, no live environment");
            if self.expired(&key, now) {
                match self.provider.destroy_orphan_droplet(*droplet).await {
                    Ok(()) => {
                        tracing::warn!(droplet, "orphan droplet destroyed");
                        self.destroyed("droplet");
                    }
                    Err(e) => {
                        tracing::warn!(droplet, error = %devpocket_actors::error_chain(&e), "could not destroy an orphan droplet")
                    }
                }
            }
        }
        let mut orphan_volumes = 0;
        for (volume, environment, attached) in &tagged.volumes {
            if environment.is_some_and(|e| owners.contains(&e)) {
                continue;
            }
            orphan_volumes += 1;
            let key = format!("volume:{volume}");
            seen.insert(key.clone());
            tracing::warn!(volume, environment = ?environment, "orphan volume: tagged devpocket, no live environment");
            // An attached one goes with its droplet first.
            if !attached && self.expired(&key, now) {
                match self.provider.delete_orphan_volume(volume).await {
                    Ok(()) => {
                        tracing::warn!(volume, "orphan volume deleted");
                        self.destroyed("volume");
                    }
                    Err(e) => {
                        tracing::warn!(volume, error = %devpocket_actors::error_chain(&e), "could not delete an orphan volume")
                    }
                }
            }
        }
        self.first_seen.retain(|k, _| seen.contains(k));
        self.status
            .orphan_droplets
            .store(orphan_droplets, Ordering::Relaxed);
        self.status
            .orphan_volumes
            .store(orphan_volumes, Ordering::Relaxed);
        self.metrics.record(|| {
            gauge!("devpocket_provider_orphans", "provider" => digitalocean::NAME, "resource" => "droplet")
                .set(orphan_droplets as f64);
            gauge!("devpocket_provider_orphans", "provider" => digitalocean::NAME, "resource" => "volume")
                .set(orphan_volumes as f64);
        });

        // Environments whose droplet is not at DigitalOcean any more.
        let listed: HashSet<u64> = tagged.droplets.iter().map(|(d, _)| *d).collect();
        for (id, user_id, provider_ref) in live {
            let Some(droplet) = provider_ref
                .as_deref()
                .and_then(|r| r.split(':').next())
                .and_then(|d| d.parse::<u64>().ok())
            else {
                continue;
            };
            // Confirmed one by one: a listing may lag behind.
            if listed.contains(&droplet) || self.provider.droplet_exists(droplet).await? {
                continue;
            }
            let Some(actor) = self.actors.environment(user_id, id).await? else {
                continue;
            };
            let reason = format!(
                "the environment's droplet {droplet} no longer exists on DigitalOcean (destroyed outside DevPocket?); delete the environment"
            );
            if actor.send(MachineGone { reason }).await.unwrap_or(false) {
                self.status.vanished.fetch_add(1, Ordering::Relaxed);
                self.metrics.record(|| {
                    counter!("devpocket_provider_machines_vanished_total", "provider" => digitalocean::NAME)
                        .increment(1);
                });
            }
        }
        let epoch = Utc::now().timestamp();
        self.status.last_round.store(epoch, Ordering::Relaxed);
        Ok(())
    }
}
