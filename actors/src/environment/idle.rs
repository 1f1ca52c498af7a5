//! Activity and the idle stop. Terminals report their users' input
//! ([`NoteActivity`]), the owner asks for a keep-awake ([`KeepAwake`]); both are
//! recorded durably, so that every process sees them. The server's idle check
//! (one per process, on the durable times) warns ([`IdleWarning`]) and then asks
//! for the stop ([`AutoStop`]), which this actor — the environment's owner, holding
//! its lease — makes only if nothing newer was recorded meanwhile: an environment is
//! stopped once, whichever process saw its last activity. Where users may SSH into
//! the machine from elsewhere, it looks for such a session before the warning and
//! before the stop; one open is activity too.

use std::time::Instant;

use actix::prelude::*;
use chrono::{DateTime, Utc};

use super::plan::{self, Command, Step};
use super::{Conflict, EnvError, EnvironmentActor, Op};
use crate::model::{Activity, ActivityKind, EnvironmentRecord, IdleSeen, Phase, Status};
use crate::outside_ssh;

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
        self.note_activity(activity, ctx);
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
        AtomicResponse::new(self.keep_awake_until(msg))
    }
}

impl EnvironmentActor {
    /// A keep-awake as an order (see `remote`): answered with the environment.
    pub(crate) fn keep_awake(
        &mut self,
        msg: KeepAwake,
        _: &mut Context<Self>,
    ) -> AtomicResponse<Self, Result<EnvironmentRecord, EnvError>> {
        AtomicResponse::new(Box::pin(
            self.keep_awake_until(msg)
                .map(|res, act, _| res.map(|()| act.record.clone())),
        ))
    }

    fn keep_awake_until(
        &mut self,
        msg: KeepAwake,
    ) -> ResponseActFuture<Self, Result<(), EnvError>> {
        self.last_used = Instant::now();
        let (status, phase) = (self.record.status, self.record.phase);
        if !(status == Status::Running && phase == Phase::Ready) {
            let conflict = Conflict::NotRunning {
                action: "an environment is kept awake".into(),
                status,
                phase,
            };
            return Box::pin(fut::ready(Err(conflict.into())));
        }
        let activity = Activity {
            client_address: msg.client_address,
            ..Activity::now(ActivityKind::KeepAwake)
        };
        let at = activity.at;
        let (store, id) = (self.deps.store.clone(), self.record.id);
        Box::pin(
            async move { store.keep_awake(id, msg.until, &activity).await }
                .into_actor(self)
                .map(move |res, act, _| {
                    res?;
                    act.saw_activity(at);
                    Ok(())
                }),
        )
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

    fn handle(&mut self, msg: IdleWarning, ctx: &mut Context<Self>) {
        // Kept alive until the stop: it is the one to make it.
        self.last_used = Instant::now();
        let warned = self.state.borrow().idle_stop_at == Some(msg.stop_at);
        if warned || self.looking_outside || !self.may_warn(msg.seen) {
            return;
        }
        // Where users may SSH in from elsewhere, a session open now is activity:
        // looked for once, before the warning is given.
        let Some(look) = self.look_outside() else {
            self.set_idle_warning(Some(msg.stop_at));
            return;
        };
        self.looking_outside = true;
        ctx.spawn(look.into_actor(self).map(move |found, act, ctx| {
            act.looking_outside = false;
            match found {
                Some(activity) => act.note_activity(activity, ctx),
                None if act.may_warn(msg.seen) => act.set_idle_warning(Some(msg.stop_at)),
                None => {}
            }
        }));
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
    type Result = ResponseFuture<Result<bool, EnvError>>;

    fn handle(&mut self, msg: AutoStop, ctx: &mut Context<Self>) -> Self::Result {
        self.last_used = Instant::now();
        // Another process owns it: its own check stops it.
        if !self.has_lease || self.operation.is_some() {
            return Box::pin(std::future::ready(Ok(false)));
        }
        // A session from outside, open now, is activity: it stays up.
        let look = self.look_outside();
        let me = ctx.address();
        Box::pin(async move {
            if let Some(look) = look
                && let Some(activity) = look.await
            {
                me.send(NoteActivity(activity)).await?;
                return Ok(false);
            }
            me.send(StopIdle(msg)).await?
        })
    }
}

/// [`AutoStop`] once nothing from outside holds the environment up: the stop is
/// made if, by then, it still may be.
#[derive(Message)]
#[rtype(result = "Result<bool, EnvError>")]
struct StopIdle(AutoStop);

impl Handler<StopIdle> for EnvironmentActor {
    type Result = AtomicResponse<Self, Result<bool, EnvError>>;

    fn handle(&mut self, StopIdle(msg): StopIdle, _: &mut Context<Self>) -> Self::Result {
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
    /// Records `activity` durably, for every process's idle check.
    fn note_activity(&mut self, activity: Activity, ctx: &mut Context<Self>) {
        self.saw_activity(activity.at);
        let (store, id) = (self.deps.store.clone(), self.record.id);
        ctx.spawn(
            async move { store.record_activity(id, &activity).await }
                .into_actor(self)
                .map(|res, act, _| {
                    if let Err(err) = res {
                        tracing::warn!(environment_id = %act.record.id, error = %crate::error_chain(&err), "activity could not be recorded");
                    }
                }),
        );
    }

    /// Whether an idle warning decided on the activity `seen` may be given: the
    /// machine is up, and this actor has seen no newer activity.
    fn may_warn(&self, seen: IdleSeen) -> bool {
        let stale = self
            .latest_activity
            .is_some_and(|latest| seen.last_activity.is_none_or(|seen| seen < latest));
        !stale && self.state.borrow().is_ready()
    }

    /// Where the provider lets users SSH in from elsewhere and the machine is up:
    /// looks for such a session, and resolves to the activity one open now is.
    /// Not being able to look counts as none.
    fn look_outside(&self) -> Option<impl Future<Output = Option<Activity>> + 'static> {
        let provider = self.provider().ok()?;
        let up = self.record.status == Status::Running && self.record.phase == Phase::Ready;
        if !(up && provider.admits_outside_ssh()) {
            return None;
        }
        let (machine, keys) = (self.record.machine.clone()?, self.record.keys.clone()?);
        let (deps, id) = (self.deps.clone(), self.record.id);
        Some(async move {
            match outside_ssh::look(&deps, &machine, &keys).await {
                Ok(outside) => outside.first().map(|address| Activity {
                    client_address: Some(address.to_string()),
                    ..Activity::now(ActivityKind::SshSession)
                }),
                Err(err) => {
                    tracing::info!(environment_id = %id, error = %crate::error_chain(&err), "could not look for SSH sessions from outside; counted as none");
                    None
                }
            }
        })
    }

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
