//! Providers: the only code that knows where machines live. Each turns a machine
//! spec into a machine reachable over SSH whose init runs the template's bootstrap
//! and writes the provisioning log; from there on every provider is driven the same.

pub mod digitalocean;
pub mod local;

use std::collections::BTreeMap;

use async_trait::async_trait;
use tokio::sync::watch;
use uuid::Uuid;

use crate::model::{MachineAccess, MachineKeys};

/// Why a provider could not do something. The message (`Display`) is what the
/// environment's owner may read; a cloud API's own words, a system command's
/// output and advice for the operator are the `source`, for the log only.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// Told in words for the environment's owner: what happened to their machine.
    #[error("{0}")]
    ForOwner(String),
    /// The cloud's API refused or failed at `doing`.
    #[error("{doing}: {trouble}")]
    Service {
        doing: String,
        trouble: Trouble,
        #[source]
        cause: BoxError,
    },
    /// This host failed at `doing`, in a way the owner cannot act on.
    #[error("{doing}: the server could not do it; try again later")]
    Host {
        doing: String,
        #[source]
        cause: BoxError,
    },
    /// The provider cannot run as configured (at start-up): for the operator.
    #[error("{0}")]
    Setup(String),
    #[error("the machine no longer exists: {0}")]
    Gone(String),
    #[error("this provider cannot {0}")]
    Unsupported(&'static str),
    /// A create gave up because its environment is being deleted.
    #[error("cancelled: the environment is being deleted")]
    Cancelled,
}

/// What kind of trouble a cloud API is in, as its owner may read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Trouble {
    /// It refused this server's credentials (the operator's to fix).
    #[error("the cloud refused this server's credentials; the operator has to fix them")]
    Credentials,
    /// The credentials may not do this (the operator's to fix).
    #[error("this server's cloud account may not do this; the operator has to allow it")]
    Permission,
    /// Too many requests for now.
    #[error("the cloud is limiting requests; try again in a minute")]
    RateLimited,
    /// It refused this request.
    #[error("the cloud refused the request")]
    Refused,
    /// No answer, a failure on its side, or an answer that made no sense.
    #[error("the cloud did not answer clearly; try again later")]
    Unavailable,
}

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Asks work in progress to give up at its next safe point: between the calls it
/// makes, never in the middle of one (a request that may have made something is
/// always seen through, so that what it made can be found and removed).
#[derive(Debug, Clone)]
pub struct Cancel(watch::Receiver<bool>);

/// The side that cancels.
#[derive(Debug)]
pub struct Canceller(watch::Sender<bool>);

impl Cancel {
    pub fn new() -> (Canceller, Cancel) {
        let (tx, rx) = watch::channel(false);
        (Canceller(tx), Cancel(rx))
    }

    /// A token that is never cancelled.
    pub fn never() -> Cancel {
        Self::new().1
    }

    pub fn is_cancelled(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once cancelled (never, if the canceller is dropped without it).
    pub async fn cancelled(&self) {
        let mut rx = self.0.clone();
        if rx.wait_for(|c| *c).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// `Err(Cancelled)` once cancelled: `cancel.check()?` between steps.
    pub fn check(&self) -> Result<(), ProviderError> {
        if self.is_cancelled() {
            Err(ProviderError::Cancelled)
        } else {
            Ok(())
        }
    }
}

impl Canceller {
    pub fn cancel(&self) {
        self.0.send_replace(true);
    }
}

/// What to build.
#[derive(Debug, Clone)]
pub struct MachineSpec {
    pub environment_id: Uuid,
    pub user_id: Uuid,
    pub slug: String,
    pub region: String,
    pub size: String,
    pub bootstrap: String,
    /// Apt packages and extra cloud-config from the template (cloud machines).
    pub packages: Vec<String>,
    pub cloud_init: serde_json::Map<String, serde_json::Value>,
    pub environment_variables: BTreeMap<String, String>,
    pub keys: MachineKeys,
}

/// A machine that exists.
#[derive(Debug, Clone)]
pub struct Machine {
    pub access: MachineAccess,
    /// The provider's own id for it.
    pub provider_ref: String,
}

/// Operations beyond the lifecycle that only some providers offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maintenance {
    Snapshot,
    Resize,
    /// A restart in one step, instead of a stop and a start.
    Reboot,
}

/// Shell commands, run on the machine over SSH, that follow its provisioning.
#[derive(Debug, Clone)]
pub struct BootstrapWatch {
    /// Prints the provisioning log from its first line and follows it; the
    /// machine's init prints `logs::EXIT_MARKER` with the status as its last line.
    pub tail_command: String,
}

#[async_trait]
pub trait Provider: Send + Sync + 'static {
    fn name(&self) -> &'static str;

    /// Creates the machine and starts its init, or returns the one already made for
    /// this environment (a create is never repeated: no second machine, no second
    /// bootstrap). Once `cancel` is cancelled it gives up at its next safe point with
    /// `ProviderError::Cancelled`.
    async fn create(&self, spec: &MachineSpec, cancel: &Cancel) -> Result<Machine, ProviderError>;

    /// Brings a stopped machine up (idempotent).
    async fn start(&self, spec: &MachineSpec, provider_ref: &str)
    -> Result<Machine, ProviderError>;

    /// Stops the machine and its processes (idempotent).
    async fn stop(&self, provider_ref: &str) -> Result<(), ProviderError>;

    /// Removes the environment's machine and everything it stored (idempotent):
    /// whatever a create made for the environment, found by the environment when
    /// `provider_ref` was never recorded (a create cancelled or interrupted halfway).
    async fn delete(
        &self,
        environment_id: Uuid,
        provider_ref: Option<&str>,
    ) -> Result<(), ProviderError>;

    /// Whether users can SSH into its machines other than through DevPocket, with
    /// keys of their own: such sessions are activity for the idle auto-stop.
    fn admits_outside_ssh(&self) -> bool {
        false
    }

    /// Whether this provider can take snapshots and resize machines.
    fn supports(&self, _operation: Maintenance) -> bool {
        false
    }

    /// Saves an image of the machine's disk under `name` (the machine keeps
    /// running); returns the image's id.
    async fn snapshot(&self, _provider_ref: &str, _name: &str) -> Result<String, ProviderError> {
        Err(ProviderError::Unsupported("take snapshots"))
    }

    /// Restarts a running machine in one step (see `Maintenance::Reboot`).
    async fn reboot(&self, _provider_ref: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported("reboot machines"))
    }

    /// Gives the machine another size. A running machine is stopped for it and
    /// brought back up; its files stay.
    async fn resize(&self, _provider_ref: &str, _size: &str) -> Result<(), ProviderError> {
        Err(ProviderError::Unsupported("resize machines"))
    }

    fn bootstrap_watch(&self) -> BootstrapWatch;
}
