//! What a lifecycle command does in each state of an environment, as a pure
//! function: the durable transition to write first and the step to take after it,
//! or the conflict that refuses the command. Every state × command is tested here,
//! without an actor.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::model::{Phase, Status, Transition};

/// A lifecycle request from the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Start,
    Stop,
    Restart,
    Delete,
}

/// What the plan needs to know of the environment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct State {
    pub status: Status,
    pub phase: Phase,
    pub progress: i32,
    /// Provisioned, with a machine recorded: it can be started and stopped even
    /// after an error.
    pub has_machine: bool,
    /// The provider restarts a machine in one step.
    pub can_reboot: bool,
    /// A stored value that cannot be read (see `EnvironmentRecord::unreadable`).
    pub unreadable: Option<&'static str>,
}

/// What the actor does once the transition is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Start,
    Stop,
    /// A restart as a stop, then a start.
    StopThenStart,
    /// A restart in one step.
    Reboot,
    Delete,
}

/// Why an operation is refused in the environment's current state (409). Each has
/// a stable code for the API's error envelope. Serialized when the environment's
/// owner is another process (see `remote`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "conflict", content = "detail", rename_all = "snake_case")]
pub enum Conflict {
    #[error("the environment is already being deleted")]
    Deleting,
    #[error("the environment is already running")]
    AlreadyRunning,
    #[error("the environment is already stopped")]
    AlreadyStopped,
    #[error("the environment is still being created ({0}); wait until it is running")]
    Creating(Phase),
    #[error("the environment failed to provision; delete it and create a new one")]
    ProvisioningFailed,
    #[error("the environment is busy ({0}); try again when it has finished")]
    Busy(Phase),
    #[error("environments on the {provider} provider cannot {operation}")]
    Unsupported {
        provider: String,
        operation: Cow<'static, str>,
    },
    #[error(
        "the environment is {status} ({phase}); snapshots and resizes wait until it is running or stopped"
    )]
    NotResting { status: Status, phase: Phase },
    #[error("the environment is already of size {0}")]
    SameSize(String),
    #[error("{action} only on a running environment; this one is {status} ({phase})")]
    NotRunning {
        /// What needs it running, as the start of a sentence.
        action: Cow<'static, str>,
        status: Status,
        phase: Phase,
    },
    #[error(
        "this environment's stored {0} cannot be read (it was saved before such values were refused); it can only be deleted"
    )]
    Unreadable(Cow<'static, str>),
}

impl Conflict {
    /// The stable `code` of the error envelope.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Deleting => "environment_deleting",
            Self::AlreadyRunning => "environment_already_running",
            Self::AlreadyStopped => "environment_already_stopped",
            Self::Creating(_) => "environment_creating",
            Self::ProvisioningFailed => "environment_failed",
            Self::Busy(_) => "operation_in_progress",
            Self::Unsupported { .. } => "operation_unsupported",
            Self::NotResting { .. } => "environment_not_resting",
            Self::SameSize(_) => "same_size",
            Self::NotRunning { .. } => "environment_not_running",
            Self::Unreadable(_) => "environment_unreadable",
        }
    }

    /// Every code, for documentation.
    pub const CODES: [&'static str; 11] = [
        "environment_deleting",
        "environment_already_running",
        "environment_already_stopped",
        "environment_creating",
        "environment_failed",
        "operation_in_progress",
        "operation_unsupported",
        "environment_not_resting",
        "same_size",
        "environment_not_running",
        "environment_unreadable",
    ];
}

/// The transition to write and the step to take for `command` in `state`.
pub fn plan(command: Command, state: State) -> Result<(Transition, Step), Conflict> {
    let State {
        status,
        phase,
        progress,
        has_machine,
        can_reboot,
        unreadable,
    } = state;
    if let Some(column) = unreadable
        && command != Command::Delete
    {
        return Err(Conflict::Unreadable(column.into()));
    }
    let to = |status, phase| Transition::new(status, phase, 100);
    match (command, status, phase) {
        (Command::Delete, _, Phase::Deleting | Phase::Deleted) => Err(Conflict::Deleting),
        (Command::Delete, ..) => Ok((
            Transition::new(Status::Terminated, Phase::Deleting, progress),
            Step::Delete,
        )),
        (Command::Stop, Status::Running, Phase::Ready) => {
            Ok((to(Status::Running, Phase::Stopping), Step::Stop))
        }
        (Command::Start, Status::Stopped, Phase::Stopped) => {
            Ok((to(Status::Stopped, Phase::Starting), Step::Start))
        }
        (Command::Restart, Status::Running, Phase::Ready) if can_reboot => {
            Ok((to(status, Phase::Restarting), Step::Reboot))
        }
        (Command::Restart, Status::Running, Phase::Ready) => {
            Ok((to(status, Phase::Restarting), Step::StopThenStart))
        }
        (Command::Restart, Status::Stopped, Phase::Stopped) => {
            Ok((to(status, Phase::Restarting), Step::Start))
        }
        (Command::Start, Status::Running, Phase::Ready) => Err(Conflict::AlreadyRunning),
        (Command::Stop, Status::Stopped, Phase::Stopped) => Err(Conflict::AlreadyStopped),
        (_, Status::Creating, _) => Err(Conflict::Creating(phase)),
        (Command::Start | Command::Restart, Status::Error, _) if has_machine => {
            Ok((to(Status::Stopped, Phase::Starting), Step::Start))
        }
        (Command::Stop, Status::Error, _) if has_machine => {
            Ok((to(Status::Error, Phase::Stopping), Step::Stop))
        }
        (_, Status::Error, _) => Err(Conflict::ProvisioningFailed),
        _ => Err(not_resting(status, phase)),
    }
}

/// Why an environment that is neither running nor stopped refuses an operation
/// that needs it at rest.
pub fn not_resting(status: Status, phase: Phase) -> Conflict {
    match (status, phase) {
        (_, Phase::Deleting | Phase::Deleted) | (Status::Terminated, _) => Conflict::Deleting,
        (Status::Creating, _) => Conflict::Creating(phase),
        (Status::Error, Phase::Failed) => Conflict::NotResting { status, phase },
        _ => Conflict::Busy(phase),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMMANDS: [Command; 4] = [
        Command::Start,
        Command::Stop,
        Command::Restart,
        Command::Delete,
    ];

    fn state(status: Status, phase: Phase) -> State {
        State {
            status,
            phase,
            progress: 40,
            has_machine: true,
            can_reboot: false,
            unreadable: None,
        }
    }

    #[test]
    fn an_environment_that_cannot_be_read_can_only_be_deleted() {
        for command in COMMANDS {
            let s = State {
                unreadable: Some("environment_variables"),
                ..state(Status::Stopped, Phase::Stopped)
            };
            match plan(command, s) {
                Ok((t, step)) => assert_eq!(
                    (command, t.phase, step),
                    (Command::Delete, Phase::Deleting, Step::Delete)
                ),
                Err(conflict) => assert_eq!(
                    conflict,
                    Conflict::Unreadable("environment_variables".into()),
                    "{command:?}"
                ),
            }
        }
    }

    /// The rules that hold in every status and phase the store can hold.
    #[test]
    fn every_state_and_command() {
        for &status in Status::ALL {
            for &phase in Phase::ALL {
                for command in COMMANDS {
                    for has_machine in [true, false] {
                        let s = State {
                            has_machine,
                            ..state(status, phase)
                        };
                        let outcome = plan(command, s);
                        let case =
                            format!("{command:?} in {status}/{phase}, machine {has_machine}");
                        if command == Command::Delete {
                            // A delete is possible at any moment, once.
                            let deleting = matches!(phase, Phase::Deleting | Phase::Deleted);
                            assert_eq!(outcome.is_err(), deleting, "{case}");
                            continue;
                        }
                        if status == Status::Creating {
                            assert_eq!(outcome, Err(Conflict::Creating(phase)), "{case}");
                            continue;
                        }
                        let Ok((t, _)) = outcome else { continue };
                        // Only a resting machine, or one that failed after it was
                        // made, moves; and it moves to a phase of work.
                        let resting = matches!(
                            (status, phase),
                            (Status::Running, Phase::Ready) | (Status::Stopped, Phase::Stopped)
                        );
                        assert!(
                            resting || (status == Status::Error && has_machine),
                            "{case}"
                        );
                        assert!(
                            matches!(
                                t.phase,
                                Phase::Starting | Phase::Stopping | Phase::Restarting
                            ),
                            "{case}: {t:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn what_each_command_does_where_it_matters() {
        use Command::*;
        type Outcome = Result<(Status, Phase, Step), Conflict>;
        let ok = |status, phase, step| Ok((status, phase, step));
        let cases: [(Command, Status, Phase, bool, Outcome); 14] = [
            (
                Start,
                Status::Stopped,
                Phase::Stopped,
                true,
                ok(Status::Stopped, Phase::Starting, Step::Start),
            ),
            (
                Start,
                Status::Running,
                Phase::Ready,
                true,
                Err(Conflict::AlreadyRunning),
            ),
            (
                Start,
                Status::Running,
                Phase::Stopping,
                true,
                Err(Conflict::Busy(Phase::Stopping)),
            ),
            (
                Start,
                Status::Error,
                Phase::Failed,
                true,
                ok(Status::Stopped, Phase::Starting, Step::Start),
            ),
            (
                Start,
                Status::Error,
                Phase::Failed,
                false,
                Err(Conflict::ProvisioningFailed),
            ),
            (
                Stop,
                Status::Running,
                Phase::Ready,
                true,
                ok(Status::Running, Phase::Stopping, Step::Stop),
            ),
            (
                Stop,
                Status::Stopped,
                Phase::Stopped,
                true,
                Err(Conflict::AlreadyStopped),
            ),
            (
                Stop,
                Status::Error,
                Phase::Failed,
                true,
                ok(Status::Error, Phase::Stopping, Step::Stop),
            ),
            (
                Stop,
                Status::Running,
                Phase::Snapshotting,
                true,
                Err(Conflict::Busy(Phase::Snapshotting)),
            ),
            (
                Restart,
                Status::Running,
                Phase::Ready,
                true,
                ok(Status::Running, Phase::Restarting, Step::StopThenStart),
            ),
            (
                Restart,
                Status::Stopped,
                Phase::Stopped,
                true,
                ok(Status::Stopped, Phase::Restarting, Step::Start),
            ),
            (
                Restart,
                Status::Stopped,
                Phase::Resizing,
                true,
                Err(Conflict::Busy(Phase::Resizing)),
            ),
            (
                Delete,
                Status::Running,
                Phase::Ready,
                true,
                ok(Status::Terminated, Phase::Deleting, Step::Delete),
            ),
            (
                Delete,
                Status::Terminated,
                Phase::Deleting,
                true,
                Err(Conflict::Deleting),
            ),
        ];
        for (command, status, phase, has_machine, expected) in cases {
            let s = State {
                has_machine,
                ..state(status, phase)
            };
            let got = plan(command, s).map(|(t, step)| (t.status, t.phase, step));
            assert_eq!(got, expected, "{command:?} in {status}/{phase}");
        }
    }

    #[test]
    fn a_delete_keeps_the_progress_and_a_reboot_is_one_step() {
        let (t, step) = plan(Command::Delete, state(Status::Creating, Phase::Installing))
            .expect("a delete is always possible");
        assert_eq!((t.progress, step), (40, Step::Delete));
        let rebootable = State {
            can_reboot: true,
            ..state(Status::Running, Phase::Ready)
        };
        let (t, step) = plan(Command::Restart, rebootable).expect("restart");
        assert_eq!((t.phase, step), (Phase::Restarting, Step::Reboot));
        // A stopped machine is started, whatever the provider can do.
        let stopped = State {
            can_reboot: true,
            ..state(Status::Stopped, Phase::Stopped)
        };
        assert_eq!(
            plan(Command::Restart, stopped).map(|p| p.1),
            Ok(Step::Start)
        );
    }

    #[test]
    fn codes_are_stable_and_listed() {
        let all = [
            Conflict::Deleting,
            Conflict::AlreadyRunning,
            Conflict::AlreadyStopped,
            Conflict::Creating(Phase::Queued),
            Conflict::ProvisioningFailed,
            Conflict::Busy(Phase::Stopping),
            Conflict::Unsupported {
                provider: "local".into(),
                operation: "take snapshots".into(),
            },
            Conflict::NotResting {
                status: Status::Creating,
                phase: Phase::Booting,
            },
            Conflict::SameSize("small".into()),
            Conflict::NotRunning {
                action: "metrics are measured".into(),
                status: Status::Stopped,
                phase: Phase::Stopped,
            },
            Conflict::Unreadable("resource_limits".into()),
        ];
        let codes: Vec<&str> = all.iter().map(Conflict::code).collect();
        assert_eq!(codes, Conflict::CODES);
    }
}
