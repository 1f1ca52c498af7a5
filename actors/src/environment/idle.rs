//! Activity and the idle stop. Terminals report their users' input
//! ([`NoteActivity`]), the owner asks for a keep-awake ([`KeepAwake`]); both are
//! recorded durably, so that every process sees them. The server's idle check
//! (one per process, on the durable times) warns ([`IdleWarning`]) and then asks
//! for the stop ([`AutoStop`]), which this actor — the environment's owner, holding
//! its lease — makes only if nothing newer was recorded meanwhile: an environment is
//! stopped once, whichever process saw its last activity.

use std::time::Instant;

use actix::prelude::*;
use chrono::{DateTime, Utc};

use super::plan::{self, Command, Step};
use super::{Conflict, EnvError, EnvironmentActor, Op};
use crate::model::{Activity, ActivityKind, IdleSeen, Phase, Status};

/// A user's input on one of the environment's terminals. Each terminal sends it
/// at most once per `ActorSettings::activity_every`, and at once while an idle
/// warning is on.
#[derive(Message, Debug, Clone)]
#[rtype(result = "()")]
pub struct NoteActivity(pub Activity);

impl Handler<NoteActivity> for EnvironmentActor {
    type Result = ();

    fn handle(&mut self, NoteActivity(activity): NoteActivity, ctx: &mut Context<Self>) {
        self.last_used = Instant::now();
        self.saw_activity(activity.at);
        let (store, id) = (self.deps.store.clone(), self.record.id);
        ctx.spawn(
            async move { store.record_activity(id, &activity).await }
                .into_actor(self)
                .map(|res, act, _| {
                    if let Err(err) = res {
                        tracing::warn!(environment_id = %act.record.id, error = %crate::error_chain(&err), "terminal activity could not be recorded");
                    }
                }),
        );
    }
}

/// Holds the environment up until `until` at least (itself activity). Replies once
/// durable; refused unless the environment is running.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<(), EnvError>")]
pub struct KeepAwake {
    pub until: DateTime<Utc>,
    pub client_address: Option<String>,
}

impl Handler<KeepAwake> for EnvironmentActor {
    type Result = AtomicResponse<Self, Result<(), EnvError>>;

    fn handle(&mut self, msg: KeepAwake, _: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        let (status, phase) = (self.record.status, self.record.phase);
        if !(status == Status::Running && phase == Phase::Ready) {
            let conflict = Conflict::NotRunning {
                action: "an environment is kept awake",
                status,
                phase,
            };
            return AtomicResponse::new(Box::pin(fut::ready(Err(conflict.into()))));
        }
        let activity = Activity {
            client_address: msg.client_address,
            ..Activity::now(ActivityKind::KeepAwake)
        };
        let at = activity.at;
        let (store, id) = (self.deps.store.clone(), self.record.id);
        AtomicResponse::new(Box::pin(
            async move { store.keep_awake(id, msg.until, &activity).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    res?;
                    act.saw_activity(at);
                    Ok(())
                }),
        ))
    }
}

/// The idle check's word: an idle stop is due at `stop_at`, decided on the
/// activity `seen`; its terminals are warned. A word older than activity this
/// actor has seen is stale, and ignored.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub struct IdleWarning {
    pub stop_at: DateTime<Utc>,
    pub seen: IdleSeen,
}

impl Handler<IdleWarning> for EnvironmentActor {
    type Result = ();

    fn handle(&mut self, msg: IdleWarning, _: &mut Context<Self>) {
        // Kept alive until the stop: it is the one to make it.
        self.last_used = Instant::now();
        let stale = self
            .latest_activity
            .is_some_and(|latest| msg.seen.last_activity.is_none_or(|seen| seen < latest));
        if !stale && self.state.borrow().is_ready() {
            self.set_idle_warning(Some(msg.stop_at));
        }
    }
}

/// Stops the environment for being idle, if this process owns it, it is running,
/// and no activity newer than `seen` has been recorded. Replies whether it stopped
/// it; `because` is what its owner and its terminals read.
#[derive(Message, Debug, Clone)]
#[rtype(result = "Result<bool, EnvError>")]
pub struct AutoStop {
    pub seen: IdleSeen,
    pub because: String,
}

impl Handler<AutoStop> for EnvironmentActor {
    type Result = AtomicResponse<Self, Result<bool, EnvError>>;

    fn handle(&mut self, msg: AutoStop, _: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        // Another process owns it: its own check stops it.
        if !self.has_lease || self.operation.is_some() {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(false))));
        }
        let state = self.plan_state();
        let Ok((transition, Step::Stop)) = plan::plan(Command::Stop, state) else {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(false))));
        };
        let transition = transition.message(msg.because.clone());
        let (store, id) = (self.deps.store.clone(), self.record.id);
        let t = transition.clone();
        AtomicResponse::new(Box::pin(
            async move { store.idle_stop(id, msg.seen, &t).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let Some(times) = res? else {
                        return Ok(false);
                    };
                    tracing::info!(environment_id = %act.record.id, because = %msg.because, "stopping an idle environment");
                    act.state
                        .send_modify(|s| s.stopped_because = Some(msg.because.clone()));
                    act.apply(&transition, times);
                    act.run(Op::Stop(Some(msg.because)), ctx);
                    Ok(true)
                }),
        ))
    }
}

impl EnvironmentActor {
    /// Activity at `at`: the warning is off, and the idle check's words decided on
    /// older activity are stale.
    fn saw_activity(&mut self, at: DateTime<Utc>) {
        self.latest_activity = Some(self.latest_activity.map_or(at, |l| l.max(at)));
        self.set_idle_warning(None);
    }

    /// Publishes when an idle stop is due (or that none is close), for terminals.
    fn set_idle_warning(&mut self, at: Option<DateTime<Utc>>) {
        self.state.send_if_modified(|s| {
            let changed = s.idle_stop_at != at;
            s.idle_stop_at = at;
            changed
        });
    }
}
