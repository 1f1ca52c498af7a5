//! The changes an environment's owner asks for: a lifecycle command (start, stop,
//! restart, delete, planned by `plan`), an update of its name or variables, and
//! the second half of a restart. Each is answered once durable, with the
//! environment as stored.

use std::time::Instant;

use actix::prelude::*;

use super::InstallState;
use super::plan::{Command, Step};
use super::{Conflict, EnvError, EnvironmentActor, Op, plan};
use crate::model::{Changes, EnvironmentRecord, Phase, Status, Transition, is_active};
use crate::provider::Maintenance;
use crate::store::StoreError;

/// Asks for a lifecycle operation. Replies, once the new phase is durable, with
/// the environment in it; or why the operation is not valid now (including a
/// start that the owner's plan has no room for).
#[derive(Message)]
#[rtype(result = "Result<EnvironmentRecord, EnvError>")]
pub struct Lifecycle(pub Command);

impl Handler<Lifecycle> for EnvironmentActor {
    type Result = AtomicResponse<Self, Result<EnvironmentRecord, EnvError>>;

    fn handle(&mut self, Lifecycle(command): Lifecycle, _: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        let (transition, step) = match plan::plan(command, self.plan_state()) {
            Ok(plan) => plan,
            Err(conflict) => {
                return AtomicResponse::new(Box::pin(fut::ready(Err(conflict.into()))));
            }
        };
        let (store, id) = (self.deps.store.clone(), self.record.id);
        let t = transition.clone();
        // Waking a stopped environment takes a place in the plan: checked with
        // the write, under the owner's lock.
        let activates = !is_active(self.record.status, self.record.phase)
            && is_active(transition.status, transition.phase);
        let write = async move {
            if activates {
                store.activate(id, &t).await
            } else {
                store.transition(id, &t).await
            }
        };
        AtomicResponse::new(Box::pin(write.into_actor(self).map(
            move |res, act, ctx| {
                act.apply(&transition, res?);
                match step {
                    Step::Start => act.run(Op::Start, ctx),
                    Step::Stop => act.run(Op::Stop(None), ctx),
                    Step::Reboot => act.run(Op::Reboot, ctx),
                    Step::Delete => act.run(Op::Delete, ctx),
                    Step::StopThenStart => {
                        act.run(Op::Stop(None), ctx);
                        act.restart_after_stop = true;
                    }
                }
                Ok(act.record.clone())
            },
        )))
    }
}

impl EnvironmentActor {
    /// What `plan` needs to know of the environment now.
    pub(super) fn plan_state(&self) -> plan::State {
        plan::State {
            status: self.record.status,
            phase: self.record.phase,
            progress: self.record.progress,
            has_machine: self.install == InstallState::Complete
                && self.record.provider_ref.is_some(),
            can_reboot: self
                .provider()
                .is_ok_and(|p| p.supports(Maintenance::Reboot)),
            unreadable: self.record.unreadable,
        }
    }
}

/// Renames the environment and/or replaces its variables (the next start uses
/// them). Replies, once durable, with the environment as changed.
#[derive(Message)]
#[rtype(result = "Result<EnvironmentRecord, EnvError>")]
pub struct Update(pub Changes);

impl Handler<Update> for EnvironmentActor {
    type Result = AtomicResponse<Self, Result<EnvironmentRecord, EnvError>>;

    fn handle(&mut self, Update(changes): Update, _: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        if let Some(column) = self.record.unreadable {
            return AtomicResponse::new(Box::pin(fut::ready(Err(Conflict::Unreadable(
                column.into(),
            )
            .into()))));
        }
        if changes == Changes::default() {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(self.record.clone()))));
        }
        let (store, id) = (self.deps.store.clone(), self.record.id);
        let write = {
            let changes = changes.clone();
            async move { store.update(id, &changes).await }
        };
        AtomicResponse::new(Box::pin(write.into_actor(self).map(move |res, act, _| {
            act.record.times = res?;
            if let Some(name) = changes.name {
                act.record.name = name;
            }
            if let Some(variables) = changes.environment_variables {
                act.record.environment_variables = variables;
            }
            if let Some(minutes) = changes.auto_stop_minutes {
                act.record.auto_stop_minutes = Some(minutes);
            }
            Ok(act.record.clone())
        })))
    }
}

/// Internal: a stop finished (a restart continues with a start).
#[derive(Message)]
#[rtype(result = "()")]
pub(super) struct StopFinished;

impl Handler<StopFinished> for EnvironmentActor {
    type Result = ();

    fn handle(&mut self, _: StopFinished, ctx: &mut Context<Self>) {
        if !std::mem::take(&mut self.restart_after_stop) {
            return;
        }
        // The stop gave up the environment's active place: taking it back is
        // checked like any start.
        let t = Transition::new(Status::Stopped, Phase::Restarting, 100);
        let (store, id) = (self.deps.store.clone(), self.record.id);
        let t2 = t.clone();
        ctx.wait(
            async move { store.activate(id, &t2).await }
                .into_actor(self)
                .map(move |res, act, ctx| match res {
                    Ok(times) => {
                        act.apply(&t, times);
                        act.run(Op::Start, ctx);
                    }
                    Err(StoreError::Quota(quota)) => {
                        let rest = Transition::new(Status::Stopped, Phase::Stopped, 100)
                            .message(format!("stopped, not restarted: {quota}"));
                        act.record(rest, ctx);
                    }
                    Err(err) => {
                        tracing::error!(environment_id = %act.record.id, error = %err, "the restart could not be recorded; the environment stays stopped");
                    }
                }),
        );
    }
}
