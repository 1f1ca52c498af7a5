//! What every actor shares: the store, the providers, this process's identity for
//! leases, timings, and live counters the server exports.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;
use std::time::Duration;

use uuid::Uuid;

use crate::inspect::Inspector;
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
    /// A terminal session reports its users' input as activity at most this often
    /// (at once while an idle warning is on).
    pub activity_every: Duration,
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
            activity_every: Duration::from_secs(30),
        }
    }
}

/// Counters that tests read directly.
#[derive(Debug, Default)]
pub struct Gauges {
    /// Environment actors re-created after a panic.
    pub restarts: AtomicI64,
}

pub struct Deps {
    pub store: Arc<dyn Store>,
    pub providers: HashMap<String, Arc<dyn Provider>>,
    /// This process's identity as a lease owner.
    pub owner: Uuid,
    pub settings: ActorSettings,
    pub terminal: crate::terminal::TerminalSettings,
    /// Users' own servers.
    pub servers: crate::server::ServerSettings,
    pub gauges: Gauges,
    /// Every live actor, for the admin API and the actor gauges.
    pub inspector: Arc<Inspector>,
    /// Where metrics go (the server's Prometheus recorder).
    pub recorder: Arc<dyn ::metrics::Recorder + Send + Sync>,
    /// Orders sent to other processes that wait for their answers (see `remote`).
    pub answers: crate::remote::Answers,
}

impl Deps {
    /// Records metrics into this system's recorder, e.g.
    /// `deps.metric(|| metrics::counter!("…").increment(1))`.
    pub fn metric<R>(&self, f: impl FnOnce() -> R) -> R {
        ::metrics::with_local_recorder(&*self.recorder, f)
    }

    pub fn provisioned(&self, provider: &str, outcome: &'static str, took: Duration) {
        tracing::info!(
            provider,
            outcome,
            seconds = took.as_secs_f64(),
            "provisioning finished"
        );
        let provider = provider.to_owned();
        self.metric(|| {
            ::metrics::histogram!("devpocket_provisioning_duration_seconds", "provider" => provider, "outcome" => outcome)
                .record(took.as_secs_f64());
        });
    }

    /// An SSH connection attempt to a machine: `outcome` is `ok` or `error`;
    /// `purpose` says what for (`terminal`, `logs`, `metrics`, …).
    pub fn ssh_connect(&self, purpose: &'static str, ok: bool) {
        let outcome = if ok { "ok" } else { "error" };
        self.metric(|| {
            ::metrics::counter!("devpocket_ssh_connects_total", "purpose" => purpose, "outcome" => outcome)
                .increment(1);
        });
    }
}
