//! The persistence the actors need, as a trait: the server implements it with
//! diesel-async; tests may use an in-memory one. Every method is durable when it
//! returns.

use std::time::Duration;

use async_trait::async_trait;
use uuid::Uuid;

use chrono::{DateTime, Utc};

use crate::model::{
    Activity, Changes, EnvironmentRecord, IdleSeen, MachineAccess, MachineKeys, NewEnvironment,
    Times, Transition,
};
use crate::remote::{Answer, Instruction, OrderState, StoredInstruction};

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The owner's plan has no room for what was asked (nothing was written).
    #[error(transparent)]
    Quota(#[from] QuotaExceeded),
    /// The owner already has an environment of that name (nothing was written).
    #[error("you already have an environment named '{0}'; choose another name")]
    NameTaken(String),
    /// A stored value the actors need cannot be read.
    #[error("a stored {what} cannot be read: {value}")]
    Unreadable { what: &'static str, value: String },
    /// The database failed or cannot be reached; the cause is for the log.
    #[error("the database failed: {0}")]
    Database(#[source] BoxError),
    #[error("this store does not record {0}")]
    Unsupported(&'static str),
}

impl StoreError {
    pub fn database(err: impl Into<BoxError>) -> Self {
        Self::Database(err.into())
    }
}

/// Which of a plan's limits a change would exceed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuotaScope {
    /// Environments in total, stopped ones included.
    Total,
    /// Environments that are not stopped.
    Active,
}

/// A plan's limit that a create, start or restart would exceed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[error("{}", self.describe())]
pub struct QuotaExceeded {
    pub plan: String,
    pub scope: QuotaScope,
    pub max: u32,
    pub have: i64,
}

impl QuotaExceeded {
    fn describe(&self) -> String {
        let Self {
            plan, max, have, ..
        } = self;
        match self.scope {
            QuotaScope::Total => format!(
                "Your {plan} plan allows {max} environments in total, stopped ones included, and you have {have}. \
                 Delete one to make room, or upgrade your plan."
            ),
            QuotaScope::Active => format!(
                "Your {plan} plan allows {max} environment{} that {} not stopped, and you have {have}. \
                 Stop or delete one first, or upgrade your plan.",
                if *max == 1 { "" } else { "s" },
                if *max == 1 { "is" } else { "are" },
            ),
        }
    }
}

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
    /// Stores a new environment (`creating`/`queued`) if its owner's plan has room
    /// for one more in total and one more active, checked and written under a lock
    /// on the owner so that two creates cannot both squeeze in. Answers with it as
    /// stored.
    async fn create(&self, new: &NewEnvironment) -> Result<EnvironmentRecord, StoreError>;
    /// Renames the environment and/or replaces its variables.
    async fn update(&self, id: Uuid, changes: &Changes) -> Result<Times, StoreError>;
    async fn transition(&self, id: Uuid, transition: &Transition) -> Result<Times, StoreError>;
    /// A transition that makes a stopped environment active again, if the owner's
    /// plan has room for one more active: checked and written under the same lock
    /// as `create`, so that two starts cannot both squeeze in.
    async fn activate(&self, id: Uuid, transition: &Transition) -> Result<Times, StoreError>;
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
        Err(StoreError::Unsupported("sizes"))
    }
    /// Marks the environment deleted (status `terminated`).
    async fn mark_deleted(&self, id: Uuid) -> Result<(), StoreError>;
    /// Environments that need an actor after a restart: work in progress, or
    /// machines that should be running.
    async fn resumable(&self) -> Result<Vec<Resumable>, StoreError>;
    /// Records activity (see `model::ActivityKind`): the idle timer starts again.
    async fn record_activity(&self, id: Uuid, activity: &Activity) -> Result<(), StoreError> {
        let _ = (id, activity);
        Err(StoreError::Unsupported("activity"))
    }
    /// Records a keep-awake (itself activity) that holds the environment up until
    /// `until` at least; a longer one already recorded stays.
    async fn keep_awake(
        &self,
        id: Uuid,
        until: DateTime<Utc>,
        activity: &Activity,
    ) -> Result<(), StoreError> {
        let _ = (id, until, activity);
        Err(StoreError::Unsupported("keep-awake"))
    }
    /// Writes the transition of an idle stop if the environment is still running
    /// and no activity has been recorded since `seen`; `None` when it was not
    /// written (activity came in, or it is no longer running).
    async fn idle_stop(
        &self,
        id: Uuid,
        seen: IdleSeen,
        transition: &Transition,
    ) -> Result<Option<Times>, StoreError> {
        let _ = (id, seen, transition);
        Err(StoreError::Unsupported("idle stops"))
    }
    /// Environments whose owner is gone: with work in progress, or a machine that
    /// should be running, and a lease that lapsed without being given back (its
    /// process died), or no lease at all while work is in progress.
    async fn orphans(&self) -> Result<Vec<Resumable>, StoreError> {
        Ok(Vec::new())
    }
    /// Writes an order for the environment's owner (see `remote`), which is told.
    async fn submit_order(
        &self,
        order: Uuid,
        environment: Uuid,
        instruction: &Instruction,
    ) -> Result<(), StoreError> {
        let _ = (order, environment, instruction);
        Err(StoreError::Unsupported("orders"))
    }
    /// Claims for `owner` the environment's orders nobody has claimed, oldest first.
    async fn claim_orders(
        &self,
        environment: Uuid,
        owner: Uuid,
    ) -> Result<Vec<(Uuid, StoredInstruction)>, StoreError> {
        let _ = (environment, owner);
        Ok(Vec::new())
    }
    /// Stores the owner's answer to an order; the asking process is told.
    async fn answer_order(&self, order: Uuid, answer: &Answer) -> Result<(), StoreError> {
        let _ = (order, answer);
        Err(StoreError::Unsupported("orders"))
    }
    /// Where an order stands; an answered one is removed as it is read.
    async fn order_state(&self, order: Uuid) -> Result<OrderState, StoreError> {
        let _ = order;
        Err(StoreError::Unsupported("orders"))
    }
    /// This process's clients of an environment's tmux session `session` now (0:
    /// none), renewed while there are some.
    async fn terminal_clients(
        &self,
        environment: Uuid,
        session: &str,
        process: Uuid,
        clients: usize,
    ) -> Result<(), StoreError> {
        let _ = (environment, session, process, clients);
        Ok(())
    }
    /// The clients other processes have of the session, as renewed within `within`.
    async fn other_terminal_clients(
        &self,
        environment: Uuid,
        session: &str,
        process: Uuid,
        within: Duration,
    ) -> Result<usize, StoreError> {
        let _ = (environment, session, process, within);
        Ok(0)
    }
    /// Removes an order nobody has claimed; false when an owner has claimed it.
    async fn withdraw_order(&self, order: Uuid) -> Result<bool, StoreError> {
        let _ = order;
        Err(StoreError::Unsupported("orders"))
    }
}
