//! Several server processes on one database. Each environment is driven by the one
//! process whose actor holds its lease, its owner; the actors of other processes
//! follow it from the store. A change asked of a process that does not own the
//! environment becomes an order in the store: the owner, told by a notification (or
//! on taking the lease over from an owner that died), claims it, carries it out as
//! it would its own request, and writes its answer, which the asking process relays.
//! No process acts on an environment from what it remembers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use uuid::Uuid;

use crate::deps::Deps;
use crate::environment::{
    Command, Conflict, EnvError, EnvironmentActor, KeepAwake, Lifecycle, Maintain,
    MaintenanceRequest, Update,
};
use crate::inspect::Handle;
use crate::model::{Changes, EnvironmentRecord, Phase, Status};
use crate::store::{QuotaExceeded, StoreError};

/// How often a process waiting for the owner's answer looks for it in the store,
/// besides the notification (which a lost connection can miss).
const LOOK_EVERY: Duration = Duration::from_secs(1);

/// A change of an environment, as its owner carries it out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "order", rename_all = "snake_case")]
pub enum Instruction {
    Lifecycle {
        command: Command,
    },
    Update {
        changes: Changes,
    },
    Maintain {
        request: MaintenanceRequest,
    },
    KeepAwake {
        until: DateTime<Utc>,
        client_address: Option<String>,
    },
}

/// Why the owner refused an order: the errors a caller tells apart.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "refusal", rename_all = "snake_case")]
pub enum Refusal {
    Conflict { conflict: Conflict },
    Quota { quota: QuotaExceeded },
    NameTaken { name: String },
    Unavailable { message: String },
}

/// The owner's answer to an order.
pub type Answer = Result<(), Refusal>;

impl From<EnvError> for Refusal {
    fn from(err: EnvError) -> Self {
        match err {
            EnvError::Conflict(conflict) => Refusal::Conflict { conflict },
            EnvError::Store(StoreError::Quota(quota)) => Refusal::Quota { quota },
            EnvError::Store(StoreError::NameTaken(name)) => Refusal::NameTaken { name },
            other => {
                tracing::warn!(error = %crate::error_chain(&other), "an order for this process failed");
                Refusal::Unavailable {
                    message: other.to_string(),
                }
            }
        }
    }
}

impl From<Refusal> for EnvError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            Refusal::Conflict { conflict } => EnvError::Conflict(conflict),
            Refusal::Quota { quota } => EnvError::Store(StoreError::Quota(quota)),
            Refusal::NameTaken { name } => EnvError::Store(StoreError::NameTaken(name)),
            Refusal::Unavailable { message } => EnvError::Unavailable(message),
        }
    }
}

/// Where an order stands in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OrderState {
    /// Not answered yet; `claimed` once an owner has taken it.
    Pending {
        claimed: bool,
    },
    Answered(Answer),
    /// Withdrawn, or its environment was deleted.
    Gone,
}

/// The orders this process waits for, woken as their answers are announced.
#[derive(Default)]
pub struct Answers(Mutex<HashMap<Uuid, Arc<Notify>>>);

impl Answers {
    fn expect(&self, order: Uuid) -> Arc<Notify> {
        let notify = Arc::new(Notify::new());
        self.lock().insert(order, notify.clone());
        notify
    }

    fn forget(&self, order: Uuid) {
        self.lock().remove(&order);
    }

    /// The answer to `order` is in the store.
    pub fn answered(&self, order: Uuid) {
        if let Some(notify) = self.lock().get(&order) {
            notify.notify_one();
        }
    }

    /// Notifications may have been missed: every waiter looks again.
    pub fn look_again(&self) {
        for notify in self.lock().values() {
            notify.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Notify>>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Carries out `instruction` on the environment of `env`: at once when this process
/// owns it (or can take it over, nobody holding it), else through its owner.
/// Replies once the change is durable, with the environment as stored then.
pub async fn order(
    deps: &Deps,
    env: &Handle<EnvironmentActor>,
    instruction: Instruction,
) -> Result<EnvironmentRecord, EnvError> {
    match env.send(Order(instruction.clone())).await? {
        Err(EnvError::Elsewhere(_)) => {}
        done => return done,
    }
    if env.send(TryLead).await? {
        return match env.send(Order(instruction.clone())).await? {
            Err(EnvError::Elsewhere(_)) => forward(deps, env, instruction).await,
            done => done,
        };
    }
    forward(deps, env, instruction).await
}

/// Writes the order for the owner and waits for its answer. Past the deadline an
/// order nobody took is withdrawn (nothing changed); one taken is waited for a
/// while longer (its owner may have died after taking it).
async fn forward(
    deps: &Deps,
    env: &Handle<EnvironmentActor>,
    instruction: Instruction,
) -> Result<EnvironmentRecord, EnvError> {
    let id = env.send(WhoAmI).await?;
    let order = Uuid::new_v4();
    let woken = deps.answers.expect(order);
    let answered = async {
        deps.store.submit_order(order, id, &instruction).await?;
        // The owner may die before it answers: another process takes its lease
        // over at its expiry and then the order; this one may be that process.
        let give_up = tokio::time::Instant::now() + deps.settings.lease_ttl * 2 + LOOK_EVERY * 5;
        let mut looked = 0u32;
        loop {
            tokio::select! {
                () = woken.notified() => {}
                () = tokio::time::sleep(LOOK_EVERY) => {}
            }
            looked += 1;
            match deps.store.order_state(order).await? {
                OrderState::Answered(answer) => return Ok(Some(answer)),
                OrderState::Gone => return Ok(None),
                OrderState::Pending { claimed: false } => {
                    if tokio::time::Instant::now() >= give_up
                        && deps.store.withdraw_order(order).await?
                    {
                        return Err(EnvError::Unavailable(
                            "the environment's owner did not take the request, and nothing was changed; try again".into(),
                        ));
                    }
                    if looked.is_multiple_of(3) {
                        // The owner may be gone: lead if its lease has lapsed (the
                        // new owner claims waiting orders, this one included).
                        env.send(TryLead).await?;
                    }
                }
                OrderState::Pending { claimed: true } => {
                    // The owner answers once the change is durable, in moments; one
                    // that took the order and went silent this long has died.
                    if tokio::time::Instant::now() >= give_up + deps.settings.lease_ttl * 2 {
                        return Err(EnvError::Unavailable(
                            "the environment's owner took the request and stopped answering; look at the environment before trying again".into(),
                        ));
                    }
                }
            }
        }
    }
    .await;
    deps.answers.forget(order);
    match answered {
        Ok(Some(Ok(()))) => match deps.store.load(id).await? {
            Some(record) => Ok(record),
            // Deleted meanwhile: as a delete answers for a gone environment.
            None => {
                let mut record = env.send(Snapshot).await?;
                record.status = Status::Terminated;
                record.phase = Phase::Deleted;
                Ok(record)
            }
        },
        Ok(Some(Err(refusal))) => Err(refusal.into()),
        Ok(None) => Err(Conflict::Deleting.into()),
        Err(err) => Err(err),
    }
}

/// Carries out an instruction if this process owns the environment; else
/// `EnvError::Elsewhere` at once (see [`order`]).
#[derive(Message)]
#[rtype(result = "Result<EnvironmentRecord, EnvError>")]
pub struct Order(pub Instruction);

impl Handler<Order> for EnvironmentActor {
    type Result = AtomicResponse<Self, Result<EnvironmentRecord, EnvError>>;

    fn handle(&mut self, Order(instruction): Order, ctx: &mut Context<Self>) -> Self::Result {
        if !self.owns() {
            return AtomicResponse::new(Box::pin(fut::ready(Err(EnvError::Elsewhere(self.id())))));
        }
        match instruction {
            Instruction::Lifecycle { command } => {
                Handler::<Lifecycle>::handle(self, Lifecycle(command), ctx)
            }
            Instruction::Update { changes } => {
                Handler::<Update>::handle(self, Update(changes), ctx)
            }
            Instruction::Maintain { request } => {
                Handler::<Maintain>::handle(self, Maintain(request), ctx)
            }
            Instruction::KeepAwake {
                until,
                client_address,
            } => self.keep_awake(
                KeepAwake {
                    until,
                    client_address,
                },
                ctx,
            ),
        }
    }
}

/// Takes the environment's lease if nobody holds it; true when this process owns
/// the environment afterwards (it has picked up its unfinished work and orders).
#[derive(Message)]
#[rtype(result = "bool")]
pub struct TryLead;

/// The environment's id.
#[derive(Message)]
#[rtype(result = "Uuid")]
struct WhoAmI;

impl Handler<WhoAmI> for EnvironmentActor {
    type Result = MessageResult<WhoAmI>;

    fn handle(&mut self, _: WhoAmI, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.id())
    }
}

/// The environment as this actor last knew it.
#[derive(Message)]
#[rtype(result = "EnvironmentRecord")]
struct Snapshot;

impl Handler<Snapshot> for EnvironmentActor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _: &mut Context<Self>) -> Self::Result {
        MessageResult(self.current().clone())
    }
}

/// An order for this environment was written: its owner claims it.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ClaimOrders;

/// The environment changed in the store: a follower reads it again.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Changed;

/// The instruction stored for an order, as the store read it.
pub type StoredInstruction = Result<Instruction, String>;

/// Carries out claimed orders one after another and stores each answer.
pub(crate) async fn carry_out(
    deps: Arc<Deps>,
    me: Addr<EnvironmentActor>,
    orders: Vec<(Uuid, StoredInstruction)>,
) {
    for (order, instruction) in orders {
        let answer: Answer = match instruction {
            Ok(instruction) => match me.send(Order(instruction)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(EnvError::Elsewhere(_))) => Err(Refusal::Unavailable {
                    message: "the environment changed hands; try again".into(),
                }),
                Ok(Err(err)) => Err(err.into()),
                Err(err) => Err(EnvError::from(err).into()),
            },
            Err(unreadable) => {
                tracing::warn!(%order, error = %unreadable, "an order cannot be read");
                Err(Refusal::Unavailable {
                    message: "the request could not be read by the environment's owner (a server of another version?); try again".into(),
                })
            }
        };
        if let Err(err) = deps.store.answer_order(order, &answer).await {
            tracing::warn!(%order, error = %crate::error_chain(&err), "an order's answer could not be stored; the asking process gives up at its deadline");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::QuotaScope;

    #[test]
    fn instructions_and_answers_read_back() {
        let instructions = [
            Instruction::Lifecycle {
                command: Command::Restart,
            },
            Instruction::Update {
                changes: Changes {
                    name: Some("n".into()),
                    environment_variables: Some([("A".into(), "b".into())].into()),
                    auto_stop_minutes: Some(0),
                },
            },
            Instruction::Maintain {
                request: MaintenanceRequest::Resize {
                    size: "large".into(),
                },
            },
            Instruction::KeepAwake {
                until: Utc::now(),
                client_address: Some("10.0.0.1".into()),
            },
        ];
        for i in instructions {
            let json = serde_json::to_value(&i).unwrap();
            assert_eq!(serde_json::from_value::<Instruction>(json).unwrap(), i);
        }
        let answers: [Answer; 5] = [
            Ok(()),
            Err(Refusal::Conflict {
                conflict: Conflict::NotRunning {
                    action: "metrics are measured".into(),
                    status: Status::Stopped,
                    phase: Phase::Stopped,
                },
            }),
            Err(Refusal::Quota {
                quota: QuotaExceeded {
                    plan: "free".into(),
                    scope: QuotaScope::Active,
                    max: 1,
                    have: 1,
                },
            }),
            Err(Refusal::NameTaken { name: "x".into() }),
            Err(Refusal::Unavailable {
                message: "m".into(),
            }),
        ];
        for a in answers {
            let json = serde_json::to_value(&a).unwrap();
            assert_eq!(serde_json::from_value::<Answer>(json).unwrap(), a);
        }
    }

    #[test]
    fn a_refusal_keeps_what_the_api_shows() {
        let conflict = Conflict::Busy(Phase::Stopping);
        let back = EnvError::from(Refusal::from(EnvError::Conflict(conflict.clone())));
        assert!(matches!(back, EnvError::Conflict(c) if c == conflict));
    }
}
