//! The persistence the actors need, as a trait: the server implements it with
//! diesel-async; tests may use an in-memory one. Every method is durable when it
//! returns.

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use crate::model::{EnvironmentRecord, MachineAccess, MachineKeys, Transition};

#[derive(Debug, thiserror::Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

/// An environment to bring back after a restart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resumable {
    pub user_id: Uuid,
    pub environment_id: Uuid,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The environment, unless it was deleted.
    async fn load(&self, id: Uuid) -> Result<Option<EnvironmentRecord>, StoreError>;
    async fn transition(&self, id: Uuid, transition: &Transition) -> Result<(), StoreError>;
    async fn save_keys(&self, id: Uuid, keys: &MachineKeys) -> Result<(), StoreError>;
    async fn save_machine(
        &self,
        id: Uuid,
        machine: &MachineAccess,
        provider_ref: &str,
    ) -> Result<(), StoreError>;
    /// Stores provisioning-log lines numbered `first_seq..`, keeping the newest
    /// `keep` lines, and advances the environment's `log_seq`.
    async fn append_logs(
        &self,
        id: Uuid,
        first_seq: i64,
        lines: &[String],
        keep: i64,
    ) -> Result<(), StoreError>;
    /// Takes or renews the right to drive this environment until `ttl` from now.
    /// False while another owner holds an unexpired lease.
    async fn acquire_lease(&self, id: Uuid, owner: Uuid, ttl: Duration)
    -> Result<bool, StoreError>;
    async fn release_lease(&self, id: Uuid, owner: Uuid) -> Result<(), StoreError>;
    /// Records the machine's new size after a resize.
    async fn save_size(&self, id: Uuid, size: &str) -> Result<(), StoreError> {
        let _ = (id, size);
        Err(StoreError("this store does not record sizes".into()))
    }
    /// Marks the environment deleted (status `terminated`).
    async fn mark_deleted(&self, id: Uuid) -> Result<(), StoreError>;
    /// Environments that need an actor after a restart: work in progress, or
    /// machines that should be running.
    async fn resumable(&self) -> Result<Vec<Resumable>, StoreError>;
}
