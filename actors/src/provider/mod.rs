//! Providers: the only code that knows where machines live. Each turns a machine
//! spec into a machine reachable over SSH whose init runs the template's bootstrap
//! and writes the provisioning log; from there on every provider is driven the same.

pub mod digitalocean;
pub mod local;

use std::collections::BTreeMap;

use async_trait::async_trait;
use uuid::Uuid;

use crate::model::{MachineAccess, MachineKeys};

#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    #[error("{0}")]
    Failed(String),
    #[error("the machine no longer exists: {0}")]
    Gone(String),
    #[error("this provider cannot {0}")]
    Unsupported(&'static str),
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
    /// bootstrap).
    async fn create(&self, spec: &MachineSpec) -> Result<Machine, ProviderError>;

    /// Brings a stopped machine up (idempotent).
    async fn start(&self, spec: &MachineSpec, provider_ref: &str)
    -> Result<Machine, ProviderError>;

    /// Stops the machine and its processes (idempotent).
    async fn stop(&self, provider_ref: &str) -> Result<(), ProviderError>;

    /// Removes the machine and everything it stored (idempotent).
    async fn delete(&self, provider_ref: &str) -> Result<(), ProviderError>;

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
