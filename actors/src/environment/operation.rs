//! Running one lifecycle operation at a time: a new one asks the one in progress to
//! give up at its next safe point and starts when it has ended.

use actix::prelude::*;
use futures_util::FutureExt;
use futures_util::future::Shared;
use tokio::sync::oneshot;

use super::EnvironmentActor;
use super::work::{Work, fail};
use crate::provider::{Cancel, Canceller};

impl EnvironmentActor {
    /// Starts `op` once the operation in progress (if any) has ended: that one is
    /// asked to give up first. Operations never overlap, so a delete never races the
    /// create it interrupts: it starts after the create has stopped, and removes
    /// whatever the create made.
    pub(super) fn run(&mut self, op: Op, ctx: &mut Context<Self>) {
        if !self.has_lease {
            // Only the owner drives the machine; it picks the work up from the store.
            tracing::warn!(environment_id = %self.record.id, ?op, "not the owner: the operation is left to the environment's owner");
            return;
        }
        let previous = self.operation.take().map(|running| {
            running.canceller.cancel();
            running.done
        });
        let (canceller, cancel) = Cancel::new();
        let (done_tx, done_rx) = oneshot::channel::<()>();
        self.next_operation += 1;
        let number = self.next_operation;
        let wait = async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
        };
        let fut = wait
            .into_actor(self)
            .then(move |(), act, ctx| {
                // Sent (or dropped) when this operation ends, however it ends.
                let _done = done_tx;
                let work = if cancel.is_cancelled() {
                    // Superseded before it began.
                    None
                } else {
                    Some(act.provider().map(|provider| Work {
                        deps: act.deps.clone(),
                        provider,
                        record: act.record.clone(),
                        me: ctx.address(),
                        cancel,
                    }))
                };
                let (deps, id, me) = (act.deps.clone(), act.record.id, ctx.address());
                async move {
                    let _done = _done;
                    match work {
                        None => {}
                        Some(Err(err)) => fail(deps, id, err, me).await,
                        Some(Ok(work)) => work.perform(op).await,
                    }
                }
                .into_actor(act)
            })
            .map(move |(), act, _| {
                if act.operation.as_ref().is_some_and(|o| o.number == number) {
                    act.operation = None;
                }
            });
        self.operation = Some(Operation {
            number,
            handle: ctx.spawn(fut),
            canceller,
            done: done_rx.shared(),
        });
    }
}

/// The lifecycle operation in progress.
pub(super) struct Operation {
    pub(super) number: u64,
    pub(super) handle: SpawnHandle,
    /// Asks it to give up at its next safe point.
    pub(super) canceller: Canceller,
    /// Resolves when it has ended.
    pub(super) done: Shared<oneshot::Receiver<()>>,
}

#[derive(Debug, Clone)]
pub(super) enum Op {
    Provision,
    Start,
    EnsureUp,
    /// With the reason when nobody asked for it (an idle stop): the stopped
    /// environment's status message.
    Stop(Option<String>),
    Delete,
    Snapshot(String),
    Resize(String),
    /// A restart in one step, on providers that can.
    Reboot,
    /// Back to running or stopped after an interrupted snapshot or resize.
    Settle,
}
