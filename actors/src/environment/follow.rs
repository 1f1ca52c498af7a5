//! The environment's state as it changes, for those who follow it (terminals): a
//! `watch` channel that `apply()` updates with every transition, so a follower
//! learns of each one without asking the database.

use std::time::Instant;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use tokio::sync::watch;

use super::EnvironmentActor;
use super::idle::NoteActivity;
use crate::model::{EnvironmentRecord, Phase, Status};

/// The environment's state, as of its latest applied transition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvState {
    pub status: Status,
    pub phase: Phase,
    pub message: Option<String>,
    /// When an idle stop is due, once it is close (its warning is on).
    pub idle_stop_at: Option<DateTime<Utc>>,
    /// Why it was stopped, when nobody asked for the stop (an idle stop).
    pub stopped_because: Option<String>,
}

impl EnvState {
    pub(super) fn of(record: &EnvironmentRecord) -> Self {
        Self {
            status: record.status,
            phase: record.phase,
            message: record.status_message.clone(),
            idle_stop_at: None,
            stopped_because: None,
        }
    }

    /// A state that is always up, for what a terminal attaches to that has no
    /// lifecycle of DevPocket's (a user's own server).
    pub fn always_up() -> Self {
        Self {
            status: Status::Running,
            phase: Phase::Ready,
            message: None,
            idle_stop_at: None,
            stopped_because: None,
        }
    }

    /// The machine is up and provisioned: a terminal can attach.
    pub fn is_ready(&self) -> bool {
        self.status == Status::Running && self.phase == Phase::Ready
    }

    /// The environment is being deleted or is gone.
    pub fn is_deleted(&self) -> bool {
        self.status == Status::Terminated || matches!(self.phase, Phase::Deleting | Phase::Deleted)
    }
}

/// Follows the environment's state. The receiver holds the current state and sees
/// every later transition; it ends when the actor stops (the environment was
/// deleted, or the actor is gone). While anyone follows it, the actor does not
/// stop for being idle.
#[derive(Message)]
#[rtype(result = "StateWatch")]
pub struct WatchState;

pub struct StateWatch {
    pub link: EnvLink,
    pub name: String,
    pub template: String,
}

/// What a terminal needs of its environment: its state as it changes, and where
/// to report its users' input (activity, for the idle auto-stop).
#[derive(Clone)]
pub struct EnvLink {
    pub state: watch::Receiver<EnvState>,
    pub activity: Recipient<NoteActivity>,
}

impl Handler<WatchState> for EnvironmentActor {
    type Result = MessageResult<WatchState>;

    fn handle(&mut self, _: WatchState, ctx: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        MessageResult(StateWatch {
            link: EnvLink {
                state: self.state.subscribe(),
                activity: ctx.address().recipient(),
            },
            name: self.record.name.clone(),
            template: self.record.template_name.clone(),
        })
    }
}
