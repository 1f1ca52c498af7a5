//! `EnvironmentActor`: one per environment. It owns the machine's lifecycle
//! (provision, start, stop, restart, delete), tails the provisioning log over SSH,
//! fans log events out to subscribers and samples resource use.
//!
//! Every transition is written to the store before anyone hears of it: the async
//! work writes durably, then tells the actor (through its own mailbox, in order),
//! and only the actor announces. It is the one owner of its environment: every
//! change (`commands`) is a message to it, answered once durable.
//!
//! Here: the actor's state and what the work announces. `commands` (what owners
//! ask), `plan` (what a command does in each state), `operation` (one at a time),
//! `work`/`maintenance` (the work), `failure` (what the owner reads of a failure),
//! `observe` (logs and metrics), `follow` (its state, published for terminals),
//! `idle` (activity, keep-awake and the idle stop).

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::deps::Deps;
use crate::inspect::{ActorStats, Instrumented, Kind, Registration};
use crate::logs::{LogEvent, LogLine, Progress, Standing};
use crate::metrics::Metrics;
use crate::model::{
    EnvironmentRecord, MachineAccess, MachineKeys, Phase, Status, Times, Transition,
};
use crate::provider::Provider;
use crate::remote;
use crate::store::StoreError;
use crate::supervisor::ChildExited;

mod commands;
mod failure;
mod follow;
mod idle;
mod maintenance;
mod observe;
mod operation;
mod plan;
mod work;

pub use commands::{Lifecycle, Update};
pub use follow::{EnvLink, EnvState, StateWatch, WatchState};
pub use idle::{AutoStop, IdleWarning, KeepAwake, NoteActivity};
pub use maintenance::{MachineGone, Maintain, MaintenanceRequest};
pub use observe::{GetMetrics, LogSubscription, SubscribeLogs};
pub use plan::{Command, Conflict};

use observe::MetricsWaiters;
use operation::{Op, Operation};
use work::Work;

/// How long a metrics sample is reused, so a refreshing app does not open a
/// channel per request.
const METRICS_TTL: Duration = Duration::from_secs(5);
/// Provisioning-log lines stored in one statement.
const LOG_BATCH: usize = 1000;
/// How long provisioning may go without reaching the machine before it fails.
const REACH_DEADLINE: Duration = Duration::from_secs(120);

#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    /// The operation is not valid in the current state (→ 409).
    #[error(transparent)]
    Conflict(#[from] Conflict),
    /// The store refused (a plan's limit, a taken name) or failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The actor that would answer is gone: it is stopping or being restarted.
    #[error("the environment's controller is restarting; try again")]
    Restarting(#[from] MailboxError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// Another process owns the environment (see `remote`): internal, never shown.
    #[error("environment {0} is driven by another server process")]
    Elsewhere(Uuid),
    /// The environment's owner could not be reached or could not answer (→ 503).
    #[error("{0}")]
    Unavailable(String),
}

/// How provisioning is going, as log subscribers see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InstallState {
    InProgress,
    Complete,
    Failed(String),
}

impl InstallState {
    /// How provisioning went, as stored.
    fn of(record: &EnvironmentRecord) -> Self {
        match record.status {
            Status::Creating => InstallState::InProgress,
            Status::Error if !record.provisioned => InstallState::Failed(
                record
                    .status_message
                    .clone()
                    .unwrap_or_else(|| "provisioning failed".into()),
            ),
            _ => InstallState::Complete,
        }
    }

    /// The event that tells subscribers provisioning ended, if it has.
    fn event(&self) -> Option<LogEvent> {
        match self {
            InstallState::InProgress => None,
            InstallState::Complete => Some(LogEvent::Complete),
            InstallState::Failed(e) => Some(LogEvent::Failed(e.clone())),
        }
    }
}

/// Tells the supervisor when the actor is gone, and whether it died in a panic:
/// `Drop` runs while a panic unwinds. `stopped()` marks the exit clean, unless it
/// is itself running during that unwinding (actix calls it from the context's
/// `Drop`).
struct ExitGuard {
    id: Uuid,
    supervisor: Recipient<ChildExited>,
    clean: bool,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.supervisor.do_send(ChildExited {
            id: self.id,
            crashed: !self.clean,
        });
    }
}

pub struct EnvironmentActor {
    deps: Arc<Deps>,
    record: EnvironmentRecord,
    guard: ExitGuard,
    /// The lifecycle operation in progress, if any.
    operation: Option<Operation>,
    next_operation: u64,
    install: InstallState,
    /// The bootstrap's latest stage marker seen by this actor (not after a restart:
    /// log subscribers then take it from the history).
    stage: Option<Progress>,
    subscribers: Vec<mpsc::Sender<LogEvent>>,
    /// When the actor last had something to do (it stops after `environment_idle`).
    last_used: Instant,
    /// The latest activity this actor recorded (see `idle`).
    latest_activity: Option<chrono::DateTime<chrono::Utc>>,
    /// While it looks for SSH sessions from outside before an idle warning.
    looking_outside: bool,
    metrics: Option<(Instant, Metrics)>,
    /// While a metrics sample is being taken: who waits for it.
    metrics_waiters: Option<MetricsWaiters>,
    has_lease: bool,
    /// A restart is a stop followed by a start.
    restart_after_stop: bool,
    /// The state as of the latest transition, for those who follow it.
    state: watch::Sender<EnvState>,
    registration: Registration,
}

impl EnvironmentActor {
    pub fn new(
        deps: Arc<Deps>,
        record: EnvironmentRecord,
        supervisor: Recipient<ChildExited>,
    ) -> Self {
        let install = InstallState::of(&record);
        let registration = deps.inspector.register(
            Kind::Environment,
            format!("environment:{}", record.id),
            vec![format!("user:{}", record.user_id)],
        );
        registration
            .stats
            .set_state(format!("{}/{}", record.status, record.phase));
        let state = watch::Sender::new(EnvState::of(&record));
        Self {
            guard: ExitGuard {
                id: record.id,
                supervisor,
                clean: false,
            },
            deps,
            record,
            operation: None,
            next_operation: 0,
            install,
            stage: None,
            subscribers: Vec::new(),
            last_used: Instant::now(),
            latest_activity: None,
            looking_outside: false,
            metrics: None,
            metrics_waiters: None,
            has_lease: false,
            restart_after_stop: false,
            state,
            registration,
        }
    }

    fn provider(&self) -> Result<Arc<dyn Provider>, failure::WorkError> {
        self.deps
            .providers
            .get(&self.record.provider)
            .cloned()
            .ok_or_else(|| failure::WorkError::NoProvider(self.record.provider.clone()))
    }

    /// Sends an event to every subscriber; one that cannot keep up is dropped (it
    /// reconnects with `after=SEQ` and loses nothing).
    fn broadcast(&mut self, event: &LogEvent) {
        self.subscribers
            .retain(|tx| match tx.try_send(event.clone()) {
                Ok(()) => true,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    tracing::info!("dropping a log subscriber that fell behind");
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    tracing::debug!("log subscriber gone");
                    false
                }
            });
        self.registration.stats.set_clients(self.subscribers.len());
    }

    /// Where provisioning stands now.
    fn standing(&self) -> Standing {
        Standing {
            phase: self.record.phase,
            progress: self.record.progress,
            stage: self.stage.clone(),
        }
    }

    /// A transition that is durable now (stored at `times`).
    fn apply(&mut self, t: &Transition, times: Times) {
        self.record.times = times;
        // Once deleting, only the delete's own outcome moves the environment, not
        // a late word from the operation it superseded.
        if self.record.phase == Phase::Deleting
            && !matches!(t.phase, Phase::Deleting | Phase::Deleted | Phase::Failed)
        {
            return;
        }
        self.show(t);
    }

    /// Takes `t` as the environment's state and tells those who follow it.
    fn show(&mut self, t: &Transition) {
        let moved = self.record.phase != t.phase;
        self.record.status = t.status;
        self.record.phase = t.phase;
        self.record.progress = t.progress;
        self.record.status_message = t.message.clone();
        self.registration
            .stats
            .set_state(format!("{}/{}", t.status, t.phase));
        let stopping = matches!(t.phase, Phase::Stopping | Phase::Stopped);
        self.state.send_modify(|s| {
            s.status = t.status;
            s.phase = t.phase;
            s.message = t.message.clone();
            if !s.is_ready() {
                s.idle_stop_at = None;
            }
            if !stopping {
                s.stopped_because = None;
            }
        });
        // Log subscribers follow provisioning phase by phase, up to the phase that
        // ends it (ready, failed, or deleting).
        if moved && self.install == InstallState::InProgress {
            self.broadcast(&LogEvent::Progress(self.standing()));
        }
    }

    /// Writes `t` and applies it once durable. A failure to write is logged: the
    /// environment stays as stored.
    fn record(&mut self, t: Transition, ctx: &mut Context<Self>) {
        let (store, id) = (self.deps.store.clone(), self.record.id);
        let t2 = t.clone();
        ctx.wait(
            async move { store.transition(id, &t2).await }
                .into_actor(self)
                .map(move |res, act, _| match res {
                    Ok(times) => act.apply(&t, times),
                    Err(err) => {
                        tracing::error!(environment_id = %act.record.id, error = %err, phase = %t.phase, "a transition could not be recorded");
                    }
                }),
        );
    }

    /// Picks up whatever the durable state says is unfinished.
    fn resume(&mut self, ctx: &mut Context<Self>) {
        let op = match self.record.phase {
            Phase::Queued
            | Phase::Provisioning
            | Phase::Booting
            | Phase::Installing
            | Phase::Configuring => Some(Op::Provision),
            Phase::Starting | Phase::Restarting => Some(Op::Start),
            Phase::Stopping => Some(Op::Stop(None)),
            Phase::Deleting => Some(Op::Delete),
            // A machine that should be running is brought up (after a server restart).
            Phase::Ready => Some(Op::EnsureUp),
            // The provider's action may or may not have finished: back to rest.
            Phase::Snapshotting | Phase::Resizing => Some(Op::Settle),
            Phase::Stopped | Phase::Failed | Phase::Deleted => None,
        };
        if let Some(op) = op {
            self.run(op, ctx);
        }
    }
}

impl Actor for EnvironmentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let ttl = self.deps.settings.lease_ttl;
        // Renew the lease well before it runs out; a follower takes it over once
        // its owner lets it lapse.
        ctx.run_interval(ttl / 3, |act, ctx| {
            ctx.spawn(act.renew_lease());
        });
        ctx.run_interval(Duration::from_secs(5), move |act, ctx| {
            // A follower nobody watches has nothing to keep.
            let idle_after = if act.has_lease {
                act.deps.settings.environment_idle
            } else {
                act.deps.settings.environment_idle.min(ttl)
            };
            let idle = act.operation.is_none()
                && act.subscribers.iter().all(|s| s.is_closed())
                && act.state.receiver_count() == 0
                && act.last_used.elapsed() >= idle_after;
            if idle {
                ctx.stop();
            }
        });
        // Whether this process owns the environment is known before any message.
        ctx.wait(self.renew_lease());
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        tracing::debug!(environment_id = %self.record.id, "environment actor stopped");
        // actix also calls `stopped()` from `ContextFut`'s `Drop`, which tokio runs
        // while a panic in this actor unwinds: that is not a clean stop.
        self.guard.clean = !std::thread::panicking();
        if self.has_lease {
            let (store, id, owner) = (self.deps.store.clone(), self.record.id, self.deps.owner);
            actix::spawn(async move {
                if let Err(e) = store.release_lease(id, owner).await {
                    tracing::warn!(environment_id = %id, error = %crate::error_chain(&e), "could not release the environment's lease; it lapses at its TTL");
                }
            });
        }
    }
}

impl Instrumented for EnvironmentActor {
    fn stats(&self) -> &Arc<ActorStats> {
        &self.registration.stats
    }
}

crate::instrumented!(EnvironmentActor);

impl EnvironmentActor {
    pub(crate) fn owns(&self) -> bool {
        self.has_lease
    }

    pub(crate) fn id(&self) -> Uuid {
        self.record.id
    }

    pub(crate) fn current(&self) -> &EnvironmentRecord {
        &self.record
    }

    /// Takes or renews the lease. On taking it, the actor reads the environment
    /// again (another process drove it until now), picks up its unfinished work
    /// and the orders waiting for an owner.
    fn renew_lease(&mut self) -> ResponseActFuture<Self, ()> {
        let (store, id, owner, ttl) = (
            self.deps.store.clone(),
            self.record.id,
            self.deps.owner,
            self.deps.settings.lease_ttl,
        );
        let fut = async move {
            let taken = store.acquire_lease(id, owner, ttl).await?;
            let fresh = if taken {
                Some(store.load(id).await?)
            } else {
                None
            };
            Ok::<_, StoreError>((taken, fresh))
        };
        Box::pin(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok((true, fresh)) if !act.has_lease => {
                act.has_lease = true;
                tracing::debug!(environment_id = %act.record.id, "lease taken");
                match fresh.flatten() {
                    Some(record) => act.follow(record),
                    None => return act.gone(ctx),
                }
                act.resume(ctx);
                ctx.notify(remote::ClaimOrders);
            }
            Ok((true, _)) => {}
            Ok((false, _)) => {
                if act.has_lease {
                    // Someone else took over: stop driving this machine at once.
                    tracing::warn!(environment_id = %act.record.id, "lease lost");
                    act.has_lease = false;
                    if let Some(running) = act.operation.take() {
                        running.canceller.cancel();
                        ctx.cancel_future(running.handle);
                    }
                    ctx.notify(remote::Changed);
                }
            }
            Err(err) => tracing::warn!(environment_id = %act.record.id, error = %err, "lease renewal failed"),
        }))
    }

    /// Takes the environment as stored (it was driven elsewhere) and tells those
    /// who follow it what changed: new log lines (stored: subscribers read them
    /// from the store), the phase, the end of provisioning.
    fn follow(&mut self, fresh: EnvironmentRecord) {
        let stored_lines = (fresh.log_seq > self.record.log_seq).then_some(fresh.log_seq);
        if let Some(seq) = stored_lines {
            self.broadcast(&LogEvent::Stored(seq));
        }
        let t = Transition {
            status: fresh.status,
            phase: fresh.phase,
            progress: fresh.progress,
            message: fresh.status_message.clone(),
            stamp: None,
        };
        self.show(&t);
        let install = InstallState::of(&fresh);
        self.record = fresh;
        if self.install == InstallState::InProgress
            && let Some(event) = install.event()
        {
            self.broadcast(&event);
        }
        self.install = install;
    }

    /// The environment is deleted: its followers hear so, and the actor ends.
    fn gone(&mut self, ctx: &mut Context<Self>) {
        self.state.send_modify(|s| {
            s.status = Status::Terminated;
            s.phase = Phase::Deleted;
        });
        self.broadcast(&LogEvent::Closed);
        self.subscribers.clear();
        ctx.stop();
    }
}

impl Handler<remote::TryLead> for EnvironmentActor {
    type Result = AtomicResponse<Self, bool>;

    fn handle(&mut self, _: remote::TryLead, _: &mut Context<Self>) -> Self::Result {
        if self.has_lease {
            return AtomicResponse::new(Box::pin(fut::ready(true)));
        }
        AtomicResponse::new(Box::pin(self.renew_lease().map(|(), act, _| act.has_lease)))
    }
}

impl Handler<remote::ClaimOrders> for EnvironmentActor {
    type Result = ();

    fn handle(&mut self, _: remote::ClaimOrders, ctx: &mut Context<Self>) {
        if !self.has_lease {
            return;
        }
        self.last_used = Instant::now();
        let (deps, id, me) = (self.deps.clone(), self.record.id, ctx.address());
        ctx.spawn(
            async move {
                match deps.store.claim_orders(id, deps.owner).await {
                    Ok(orders) if orders.is_empty() => {}
                    Ok(orders) => remote::carry_out(deps, me, orders).await,
                    Err(err) => tracing::warn!(environment_id = %id, error = %crate::error_chain(&err), "orders for this environment could not be claimed"),
                }
            }
            .into_actor(self),
        );
    }
}

impl Handler<remote::Changed> for EnvironmentActor {
    type Result = ();

    fn handle(&mut self, _: remote::Changed, ctx: &mut Context<Self>) {
        // The owner's memory is the truth (it wrote the change); a follower reads
        // the store, one read at a time so that an older one never lands last.
        if self.has_lease {
            return;
        }
        let (store, id) = (self.deps.store.clone(), self.record.id);
        ctx.wait(
            async move { store.load(id).await }
                .into_actor(self)
                .map(|res, act, ctx| match res {
                    Ok(Some(fresh)) if !act.has_lease => act.follow(fresh),
                    Ok(Some(_)) => {}
                    Ok(None) => act.gone(ctx),
                    Err(err) => tracing::warn!(environment_id = %act.record.id, error = %crate::error_chain(&err), "could not read a change made by another process"),
                }),
        );
    }
}

/// Internal: durable facts reported by the work in progress, to be announced.
#[derive(Message)]
#[rtype(result = "()")]
enum Announce {
    Transition(Transition, Times),
    Lines(Vec<LogLine>),
    Progress(Progress),
    Machine(MachineAccess, String),
    Keys(MachineKeys),
    Size(String),
    Installed(Result<(), String>),
    Deleted,
}

impl Handler<Announce> for EnvironmentActor {
    type Result = ();

    fn handle(&mut self, msg: Announce, ctx: &mut Context<Self>) {
        match msg {
            Announce::Transition(t, times) => self.apply(&t, times),
            Announce::Lines(lines) => {
                if let Some(last) = lines.last() {
                    self.record.log_seq = last.seq;
                }
                for line in lines {
                    self.broadcast(&LogEvent::Line(line));
                }
            }
            Announce::Progress(p) => {
                self.stage = Some(p);
                self.broadcast(&LogEvent::Progress(self.standing()));
            }
            Announce::Machine(access, provider_ref) => {
                self.record.machine = Some(access);
                self.record.provider_ref = Some(provider_ref);
            }
            Announce::Keys(keys) => self.record.keys = Some(keys),
            Announce::Size(size) => self.record.size = size,
            Announce::Installed(outcome) => {
                let event = match &outcome {
                    Ok(()) => LogEvent::Complete,
                    Err(e) => LogEvent::Failed(e.clone()),
                };
                self.install = match outcome {
                    Ok(()) => InstallState::Complete,
                    Err(e) => InstallState::Failed(e),
                };
                self.broadcast(&event);
            }
            Announce::Deleted => {
                tracing::info!(environment_id = %self.record.id, subscribers = self.subscribers.len(), "environment deleted");
                self.broadcast(&LogEvent::Closed);
                self.subscribers.clear();
                ctx.stop();
            }
        }
    }
}
