//! The environment as the actors see it: its durable record, the status the app
//! knows, the finer phase, and the transitions between them.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What the mobile app understands; anything else breaks its list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Creating,
    Running,
    Stopped,
    Terminated,
    Error,
}

/// The detail behind a status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Queued,
    Provisioning,
    Booting,
    Installing,
    Configuring,
    Ready,
    Stopping,
    Stopped,
    Starting,
    Restarting,
    Deleting,
    Deleted,
    Failed,
    /// A snapshot of the machine is being taken (it keeps its status).
    Snapshotting,
    /// The machine is being given another size.
    Resizing,
}

// Not strum: four derives and a proc-macro crate for these lines, and its parse error
// ("Matching variant not found") would not say which enum a bad stored word was for.
macro_rules! str_enum {
    ($ty:ty { $($variant:ident => $s:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &[$ty] = &[$(Self::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $s),+ }
            }
        }
        impl std::str::FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($s => Ok(Self::$variant),)+
                    other => Err(format!("unknown {}: {other}", stringify!($ty))),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

/// Whether an environment in this state takes one of its plan's active places:
/// all but one being deleted and one at rest stopped (a stopped one that is
/// starting or restarting takes its place already).
pub fn is_active(status: Status, phase: Phase) -> bool {
    match status {
        Status::Terminated => false,
        Status::Stopped => !Phase::STOPPED_AT_REST.contains(&phase),
        Status::Creating | Status::Running | Status::Error => true,
    }
}

impl Phase {
    /// The phases of a `stopped` environment that leave it at rest (a snapshot or
    /// resize of a stopped machine does not wake it).
    pub const STOPPED_AT_REST: [Phase; 3] = [Phase::Stopped, Phase::Snapshotting, Phase::Resizing];
}

str_enum!(Status {
    Creating => "creating",
    Running => "running",
    Stopped => "stopped",
    Terminated => "terminated",
    Error => "error",
});

str_enum!(Phase {
    Queued => "queued",
    Provisioning => "provisioning",
    Booting => "booting",
    Installing => "installing",
    Configuring => "configuring",
    Ready => "ready",
    Stopping => "stopping",
    Stopped => "stopped",
    Starting => "starting",
    Restarting => "restarting",
    Deleting => "deleting",
    Deleted => "deleted",
    Failed => "failed",
    Snapshotting => "snapshotting",
    Resizing => "resizing",
});

/// Where a machine answers SSH and how to recognise it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MachineAccess {
    pub host: String,
    pub port: u16,
    pub user: String,
    /// The pinned host key, `ssh-ed25519 AAAA…`.
    pub host_public_key: String,
}

/// The key pairs DevPocket made for one machine (OpenSSH formats). The private
/// halves are decrypted only in memory.
#[derive(Clone)]
pub struct MachineKeys {
    pub host_private: String,
    pub host_public: String,
    pub user_private: String,
    pub user_public: String,
}

impl fmt::Debug for MachineKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MachineKeys")
            .field("host_public", &self.host_public)
            .field("user_public", &self.user_public)
            .finish_non_exhaustive()
    }
}

/// The durable state an environment actor starts from, and what it answers with
/// after each change.
#[derive(Debug, Clone)]
pub struct EnvironmentRecord {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub slug: String,
    pub template_id: Uuid,
    /// As given at creation (validated then); empty when none were given.
    pub resource_limits: serde_json::Map<String, serde_json::Value>,
    pub times: Times,
    pub provider: String,
    pub region: String,
    pub size: String,
    pub status: Status,
    pub phase: Phase,
    pub progress: i32,
    pub status_message: Option<String>,
    pub template_name: String,
    pub bootstrap: String,
    /// The template's apt packages and extra cloud-config (cloud machines).
    pub packages: Vec<String>,
    pub cloud_init: serde_json::Map<String, serde_json::Value>,
    pub environment_variables: BTreeMap<String, String>,
    pub keys: Option<MachineKeys>,
    pub machine: Option<MachineAccess>,
    pub provider_ref: Option<String>,
    /// The highest provisioning-log line already stored.
    pub log_seq: i64,
    /// Provisioning completed once (the machine has been up): a later failure is
    /// one of starting or stopping, not of the bootstrap.
    pub provisioned: bool,
    /// The first of its own stored values that cannot be read (saved before such
    /// values were refused), left out of this record: such an environment can only
    /// be deleted.
    pub unreadable: Option<&'static str>,
    /// The environment's own idle timeout in minutes (`None`: its plan's; 0: never).
    pub auto_stop_minutes: Option<i32>,
}

/// When an environment was made and last changed, as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Times {
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub last_accessed: Option<DateTime<Utc>>,
}

/// A new environment, validated and placed, for its owner's supervisor to store
/// (within the owner's plan) and bring up.
#[derive(Debug, Clone)]
pub struct NewEnvironment {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub slug: String,
    pub template_id: Uuid,
    pub provider: String,
    pub region: String,
    pub size: String,
    pub resource_limits: serde_json::Map<String, serde_json::Value>,
    pub environment_variables: BTreeMap<String, String>,
    /// Validated against the owner's plan; `None`: the plan's.
    pub auto_stop_minutes: Option<i32>,
}

/// What `PUT /environments/{id}` changes; `None` leaves it as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub name: Option<String>,
    pub environment_variables: Option<BTreeMap<String, String>>,
    pub auto_stop_minutes: Option<i32>,
}

/// What counts as activity for the idle auto-stop (the README's rule). Output
/// alone, resizes, pings and reconnects are not activity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActivityKind {
    /// The environment came up (created, started or restarted): the timer starts.
    Started,
    /// Keystrokes or a paste on one of its terminals.
    TerminalInput,
    /// An explicit keep-awake call.
    KeepAwake,
    /// An SSH session into the machine from outside DevPocket, seen open (where
    /// its provider lets users in: `Provider::admits_outside_ssh`).
    SshSession,
}

/// One piece of activity: what, when, and where from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Activity {
    pub kind: ActivityKind,
    pub at: DateTime<Utc>,
    /// The terminal session's name, for terminal input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session: Option<String>,
    /// The client's address, where one was involved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_address: Option<String>,
}

impl Activity {
    /// Activity of `kind` now, at the database's precision (microseconds), so that
    /// the time read back is the time recorded.
    pub fn now(kind: ActivityKind) -> Self {
        use chrono::SubsecRound;
        Self {
            kind,
            at: Utc::now().trunc_subsecs(6),
            session: None,
            client_address: None,
        }
    }
}

/// The activity an idle stop was decided on (the time of the last one recorded,
/// a keep-awake included): the stop happens only if nothing newer has been
/// recorded since, on any process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdleSeen {
    pub last_activity: Option<DateTime<Utc>>,
}

/// A state change, written durably before anyone hears of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub status: Status,
    pub phase: Phase,
    pub progress: i32,
    pub message: Option<String>,
    /// Stamp `started_at` (the machine came up) or `stopped_at`.
    pub stamp: Option<Stamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stamp {
    Started,
    Stopped,
}

impl Transition {
    pub fn new(status: Status, phase: Phase, progress: i32) -> Self {
        Self {
            status,
            phase,
            progress,
            message: None,
            stamp: None,
        }
    }

    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    pub fn stamp(mut self, stamp: Stamp) -> Self {
        self.stamp = Some(stamp);
        self
    }

    pub fn failed(message: impl Into<String>) -> Self {
        Self::new(Status::Error, Phase::Failed, 100).message(message)
    }
}
