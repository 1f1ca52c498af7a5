//! Beyond the lifecycle, on providers that offer it: snapshots, resizes and
//! one-step reboots, and what reconciliation reports (a machine that vanished).

use std::time::Instant;

use actix::prelude::*;

use super::failure::WorkError;
use super::{Announce, Conflict, EnvError, EnvironmentActor, Op, Work, plan};
use crate::model::{EnvironmentRecord, Phase, Stamp, Status, Transition};
use crate::provider::{Maintenance, ProviderError};

/// The provider reports that the machine no longer exists (reconciliation). A
/// running environment moves to `error` with `reason`; one that is busy finds out
/// by itself, and a stopped one needs no machine. Replies whether it moved.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct MachineGone {
    pub reason: String,
}

impl Handler<MachineGone> for EnvironmentActor {
    type Result = ResponseActFuture<Self, bool>;

    fn handle(&mut self, msg: MachineGone, _: &mut Context<Self>) -> Self::Result {
        // Only a running machine is missed: a stopped one may have none (a stopped
        // DigitalOcean environment keeps its volume, not its droplet).
        let running = (self.record.status, self.record.phase) == (Status::Running, Phase::Ready);
        if !running || self.operation.is_some() || !self.has_lease {
            return Box::pin(fut::ready(false));
        }
        tracing::warn!(environment_id = %self.record.id, reason = %msg.reason, "the environment's machine is gone");
        let t = Transition::failed(msg.reason);
        let (store, id) = (self.deps.store.clone(), self.record.id);
        let t2 = t.clone();
        Box::pin(
            async move { store.transition(id, &t2).await }
                .into_actor(self)
                .map(move |res, act, _| match res {
                    Ok(times) => {
                        act.apply(&t, times);
                        true
                    }
                    Err(err) => {
                        tracing::error!(environment_id = %act.record.id, error = %err, "the vanished machine could not be recorded");
                        false
                    }
                }),
        )
    }
}

/// A snapshot or a resize, on providers that offer them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum MaintenanceRequest {
    Snapshot { name: String },
    Resize { size: String },
}

/// Asks for a snapshot or a resize of a running or stopped environment. Replies,
/// once the new phase (`snapshotting`, `resizing`) is durable, with the environment
/// in it; or why it cannot be done (the provider cannot, or not now).
#[derive(Message)]
#[rtype(result = "Result<EnvironmentRecord, EnvError>")]
pub struct Maintain(pub MaintenanceRequest);

impl Handler<Maintain> for EnvironmentActor {
    type Result = AtomicResponse<Self, Result<EnvironmentRecord, EnvError>>;

    fn handle(&mut self, Maintain(request): Maintain, _: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        let refuse = |conflict: Conflict| -> Self::Result {
            AtomicResponse::new(Box::pin(fut::ready(Err(conflict.into()))))
        };
        if let Some(column) = self.record.unreadable {
            return refuse(Conflict::Unreadable(column.into()));
        }
        let (status, phase) = (self.record.status, self.record.phase);
        let (kind, operation) = match &request {
            MaintenanceRequest::Snapshot { .. } => (Maintenance::Snapshot, "take snapshots"),
            MaintenanceRequest::Resize { .. } => (Maintenance::Resize, "be resized"),
        };
        if !self.provider().is_ok_and(|p| p.supports(kind)) {
            return refuse(Conflict::Unsupported {
                provider: self.record.provider.clone(),
                operation: operation.into(),
            });
        }
        let resting = matches!(
            (status, phase),
            (Status::Running, Phase::Ready) | (Status::Stopped, Phase::Stopped)
        );
        if !resting || self.record.provider_ref.is_none() {
            return refuse(plan::not_resting(status, phase));
        }
        let (phase, message, op) = match request {
            MaintenanceRequest::Resize { size } if size == self.record.size => {
                return refuse(Conflict::SameSize(size));
            }
            MaintenanceRequest::Resize { size } => (
                Phase::Resizing,
                format!("resizing to {size}"),
                Op::Resize(size),
            ),
            MaintenanceRequest::Snapshot { name } => (
                Phase::Snapshotting,
                format!("taking snapshot {name}"),
                Op::Snapshot(name),
            ),
        };
        let transition = Transition::new(status, phase, 100).message(message);
        let (store, id) = (self.deps.store.clone(), self.record.id);
        let t = transition.clone();
        let write = async move { store.transition(id, &t).await };
        AtomicResponse::new(Box::pin(write.into_actor(self).map(
            move |res, act, ctx| {
                act.apply(&transition, res?);
                act.run(op, ctx);
                Ok(act.record.clone())
            },
        )))
    }
}

impl Work {
    /// Where the environment rests after a snapshot or resize, as it was before.
    fn resting(&self, message: String) -> Transition {
        match self.record.status {
            Status::Running => Transition::new(Status::Running, Phase::Ready, 100),
            _ => Transition::new(Status::Stopped, Phase::Stopped, 100),
        }
        .message(message)
    }

    pub(super) async fn snapshot(self, name: String) {
        let Some(provider_ref) = self.record.provider_ref.clone() else {
            return;
        };
        let message = match self.provider.snapshot(&provider_ref, &name).await {
            Ok(image) if image.is_empty() => format!("snapshot {name} saved"),
            Ok(image) => format!("snapshot {name} saved (image {image})"),
            Err(ProviderError::Gone(m)) => {
                return self.failed("snapshot", WorkError::Gone(m)).await;
            }
            // The machine is as it was: only the snapshot failed.
            Err(e) => WorkError::provider("the snapshot")(e).to_string(),
        };
        tracing::info!(environment_id = %self.record.id, %message, "snapshot finished");
        self.rest(self.resting(message)).await;
    }

    pub(super) async fn resize(self, size: String) {
        let Some(provider_ref) = self.record.provider_ref.clone() else {
            return;
        };
        let was_running = self.record.status == Status::Running;
        let outcome = match self.provider.resize(&provider_ref, &size).await {
            Ok(()) => match self.deps.store.save_size(self.record.id, &size).await {
                Ok(()) => {
                    self.me.do_send(Announce::Size(size.clone()));
                    Ok(format!("resized to {size}"))
                }
                Err(e) => Err(WorkError::from(e)),
            },
            Err(ProviderError::Gone(m)) => {
                return self.failed("resize", WorkError::Gone(m)).await;
            }
            Err(e) => Err(WorkError::provider("the resize")(e)),
        };
        // The machine keeps its old size when the resize failed: it rests, saying why.
        let message = outcome.unwrap_or_else(|err| {
            tracing::warn!(environment_id = %self.record.id, error = %err, cause = %err.causes(), "resize failed");
            err.to_string()
        });
        if was_running {
            // Whatever happened, a running environment comes back up.
            let up = self
                .bring_up(&provider_ref, "starting the machine after the resize")
                .await;
            if let Err(err) = up {
                return self.failed("resize", err).await;
            }
        }
        tracing::info!(environment_id = %self.record.id, %message, "resize finished");
        self.rest(self.resting(message)).await;
    }

    pub(super) async fn reboot(self) {
        let result = async {
            let provider_ref = self
                .record
                .provider_ref
                .clone()
                .ok_or(WorkError::NoMachine)?;
            self.provider
                .reboot(&provider_ref)
                .await
                .map_err(WorkError::provider("restarting the machine"))?;
            self.bring_up(&provider_ref, "starting the machine").await?;
            self.transition(
                Transition::new(Status::Running, Phase::Ready, 100)
                    .message("restarted")
                    .stamp(Stamp::Started),
            )
            .await
        }
        .await;
        if let Err(err) = result {
            self.failed("restart", err).await;
        }
    }

    pub(super) async fn settle(self) {
        let message = format!(
            "the server restarted during the {}; check the result and try again if needed",
            if self.record.phase == Phase::Resizing {
                "resize"
            } else {
                "snapshot"
            }
        );
        self.rest(self.resting(message)).await;
    }
}
