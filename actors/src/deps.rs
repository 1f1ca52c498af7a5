//! What every actor shares: the store, the providers, this process's identity for
//! leases, timings, and live counters the server exports.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use uuid::Uuid;

use crate::provider::Provider;
use crate::store::Store;

#[derive(Debug, Clone)]
pub struct ActorSettings {
    /// How long a lease on an environment lasts without renewal.
    pub lease_ttl: Duration,
    /// An environment actor with nothing to do stops after this long (it is
    /// re-created on demand).
    pub environment_idle: Duration,
    /// A user supervisor with no children stops after this long.
    pub supervisor_idle: Duration,
    /// Re-creating a child that panicked waits this long, doubling per crash.
    pub restart_backoff: Duration,
    /// A child that panics this many times in a row is given up on.
    pub max_restarts: u32,
    /// Provisioning that has not finished after this long fails.
    pub provision_timeout: Duration,
}

impl Default for ActorSettings {
    fn default() -> Self {
        Self {
            lease_ttl: Duration::from_secs(30),
            environment_idle: Duration::from_secs(300),
            supervisor_idle: Duration::from_secs(300),
            restart_backoff: Duration::from_millis(200),
            max_restarts: 5,
            provision_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// Live counts of actors by kind.
#[derive(Debug, Default)]
pub struct Gauges {
    pub supervisors: AtomicI64,
    pub environments: AtomicI64,
    pub restarts: AtomicI64,
}

impl Gauges {
    pub fn environment_started(&self) {
        self.environments.fetch_add(1, Ordering::Relaxed);
    }
    pub fn environment_stopped(&self) {
        self.environments.fetch_sub(1, Ordering::Relaxed);
    }
    pub fn provisioned(&self, provider: &str, outcome: &str, took: Duration) {
        tracing::info!(
            provider,
            outcome,
            seconds = took.as_secs_f64(),
            "provisioning finished"
        );
    }
}

pub struct Deps {
    pub store: Arc<dyn Store>,
    pub providers: HashMap<String, Arc<dyn Provider>>,
    /// This process's identity as a lease owner.
    pub owner: Uuid,
    pub settings: ActorSettings,
    pub terminal: crate::terminal::TerminalSettings,
    pub gauges: Gauges,
}
