//! `EnvironmentActor`: one per environment. It owns the machine's lifecycle
//! (provision, start, stop, restart, delete), tails the provisioning log over SSH,
//! fans log events out to subscribers and samples resource use.
//!
//! Every transition is written to the store before anyone hears of it: the async
//! work writes durably, then tells the actor (through its own mailbox, in order),
//! and only the actor announces.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::Utc;
use futures_util::FutureExt;
use futures_util::future::Shared;
use russh::ChannelMsg;
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::deps::Deps;
use crate::inspect::{ActorStats, Instrumented, Kind, Registration};
use crate::logs::{self, LineSplitter, LogEvent, LogLine, Progress, Standing};
use crate::metrics::{self, Metrics};
use crate::model::{
    EnvironmentRecord, MachineAccess, MachineKeys, Phase, Stamp, Status, Transition,
};
use crate::provider::{Cancel, Canceller, MachineSpec, Maintenance, Provider, ProviderError};
use crate::ssh::{self, SshError, SshSession};
use crate::store::StoreError;
use crate::supervisor::ChildExited;

mod maintenance;

pub use maintenance::{MachineGone, Maintain, MaintenanceRequest};

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
    #[error("{0}")]
    Conflict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
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
    last_activity: Instant,
    metrics: Option<(Instant, Metrics)>,
    /// While a metrics sample is being taken: who waits for it.
    metrics_waiters: Option<MetricsWaiters>,
    has_lease: bool,
    /// A restart is a stop followed by a start.
    restart_after_stop: bool,
    registration: Registration,
}

impl EnvironmentActor {
    pub fn new(
        deps: Arc<Deps>,
        record: EnvironmentRecord,
        supervisor: Recipient<ChildExited>,
    ) -> Self {
        let install = match record.status {
            Status::Creating => InstallState::InProgress,
            Status::Error if !record.provisioned => InstallState::Failed(
                record
                    .status_message
                    .clone()
                    .unwrap_or_else(|| "provisioning failed".into()),
            ),
            _ => InstallState::Complete,
        };
        let registration = deps.inspector.register(
            Kind::Environment,
            format!("environment:{}", record.id),
            vec![format!("user:{}", record.user_id)],
        );
        registration
            .stats
            .set_state(format!("{}/{}", record.status, record.phase));
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
            last_activity: Instant::now(),
            metrics: None,
            metrics_waiters: None,
            has_lease: false,
            restart_after_stop: false,
            registration,
        }
    }

    fn provider(&self) -> Result<Arc<dyn Provider>, String> {
        self.deps
            .providers
            .get(&self.record.provider)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "provider {} is not configured on this server",
                    self.record.provider
                )
            })
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

    fn apply(&mut self, t: &Transition) {
        // Once deleting, only the delete's own outcome moves the environment, not
        // a late word from the operation it superseded.
        if self.record.phase == Phase::Deleting
            && !matches!(t.phase, Phase::Deleting | Phase::Deleted | Phase::Failed)
        {
            return;
        }
        let moved = self.record.phase != t.phase;
        self.record.status = t.status;
        self.record.phase = t.phase;
        self.record.progress = t.progress;
        self.record.status_message = t.message.clone();
        self.registration
            .stats
            .set_state(format!("{}/{}", t.status, t.phase));
        // Log subscribers follow provisioning phase by phase, up to the phase that
        // ends it (ready, failed, or deleting).
        if moved && self.install == InstallState::InProgress {
            self.broadcast(&LogEvent::Progress(self.standing()));
        }
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
            Phase::Stopping => Some(Op::Stop),
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

    /// Starts `op` once the operation in progress (if any) has ended: that one is
    /// asked to give up first. Operations never overlap, so a delete never races the
    /// create it interrupts: it starts after the create has stopped, and removes
    /// whatever the create made.
    fn run(&mut self, op: Op, ctx: &mut Context<Self>) {
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
                        Some(Err(message)) => fail(deps, id, message, me).await,
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
struct Operation {
    number: u64,
    handle: SpawnHandle,
    /// Asks it to give up at its next safe point.
    canceller: Canceller,
    /// Resolves when it has ended.
    done: Shared<oneshot::Receiver<()>>,
}

#[derive(Debug, Clone)]
enum Op {
    Provision,
    Start,
    EnsureUp,
    Stop,
    Delete,
    Snapshot(String),
    Resize(String),
    /// A restart in one step, on providers that can.
    Reboot,
    /// Back to running or stopped after an interrupted snapshot or resize.
    Settle,
}

impl Actor for EnvironmentActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let ttl = self.deps.settings.lease_ttl;
        // Renew the lease well before it runs out.
        ctx.run_interval(ttl / 3, |act, ctx| act.renew_lease(ctx));
        ctx.run_interval(Duration::from_secs(5), |act, ctx| {
            let idle = act.operation.is_none()
                && act.subscribers.iter().all(|s| s.is_closed())
                && act.last_activity.elapsed() >= act.deps.settings.environment_idle;
            if idle {
                ctx.stop();
            }
        });
        self.renew_lease(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        tracing::debug!(environment_id = %self.record.id, "environment actor stopped");
        // actix also calls `stopped()` from `ContextFut`'s `Drop`, which tokio runs
        // while a panic in this actor unwinds: that is not a clean stop.
        self.guard.clean = !std::thread::panicking();
        if self.has_lease {
            let (store, id, owner) = (self.deps.store.clone(), self.record.id, self.deps.owner);
            actix::spawn(async move {
                let _ = store.release_lease(id, owner).await;
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
    fn renew_lease(&mut self, ctx: &mut Context<Self>) {
        let (store, id, owner, ttl) = (
            self.deps.store.clone(),
            self.record.id,
            self.deps.owner,
            self.deps.settings.lease_ttl,
        );
        let fut = async move { store.acquire_lease(id, owner, ttl).await };
        ctx.spawn(fut.into_actor(self).map(|res, act, ctx| match res {
            Ok(true) if !act.has_lease => {
                act.has_lease = true;
                act.resume(ctx);
            }
            Ok(true) => {}
            Ok(false) => {
                if act.has_lease {
                    // Someone else took over: stop driving this machine at once.
                    tracing::warn!(environment_id = %act.record.id, "lease lost");
                    act.has_lease = false;
                    if let Some(running) = act.operation.take() {
                        running.canceller.cancel();
                        ctx.cancel_future(running.handle);
                    }
                }
            }
            Err(err) => tracing::warn!(environment_id = %act.record.id, error = %err, "lease renewal failed"),
        }));
    }
}

/// Internal: durable facts reported by the work in progress, to be announced.
#[derive(Message)]
#[rtype(result = "()")]
enum Announce {
    Transition(Transition),
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
            Announce::Transition(t) => self.apply(&t),
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

/// A lifecycle request from the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Start,
    Stop,
    Restart,
    Delete,
}

/// Asks for a lifecycle operation. Replies, once the new phase is durable, with
/// that phase; or why the operation is not valid now.
#[derive(Message)]
#[rtype(result = "Result<Phase, EnvError>")]
pub struct Lifecycle(pub Command);

impl Handler<Lifecycle> for EnvironmentActor {
    type Result = AtomicResponse<Self, Result<Phase, EnvError>>;

    fn handle(&mut self, Lifecycle(command): Lifecycle, _: &mut Context<Self>) -> Self::Result {
        self.last_activity = Instant::now();
        let (status, phase) = (self.record.status, self.record.phase);
        let plan = match (command, status, phase) {
            (Command::Delete, _, Phase::Deleting | Phase::Deleted) => {
                Err("the environment is already being deleted".to_owned())
            }
            (Command::Delete, ..) => Ok((
                Transition::new(Status::Terminated, Phase::Deleting, self.record.progress),
                Op::Delete,
            )),
            (Command::Stop, Status::Running, Phase::Ready) => Ok((
                Transition::new(Status::Running, Phase::Stopping, 100),
                Op::Stop,
            )),
            (Command::Start, Status::Stopped, Phase::Stopped) => Ok((
                Transition::new(Status::Stopped, Phase::Starting, 100),
                Op::Start,
            )),
            (Command::Restart, Status::Running, Phase::Ready)
                if self
                    .provider()
                    .is_ok_and(|p| p.supports(Maintenance::Reboot)) =>
            {
                Ok((Transition::new(status, Phase::Restarting, 100), Op::Reboot))
            }
            (Command::Restart, Status::Running, Phase::Ready)
            | (Command::Restart, Status::Stopped, Phase::Stopped) => {
                Ok((Transition::new(status, Phase::Restarting, 100), Op::Start))
            }
            (Command::Start, Status::Running, Phase::Ready) => {
                Err("the environment is already running".to_owned())
            }
            (Command::Stop, Status::Stopped, Phase::Stopped) => {
                Err("the environment is already stopped".to_owned())
            }
            (_, Status::Creating, _) => Err(format!(
                "the environment is still being created ({phase}); wait until it is running"
            )),
            (Command::Start | Command::Restart, Status::Error, _)
                if self.install == InstallState::Complete && self.record.provider_ref.is_some() =>
            {
                Ok((
                    Transition::new(Status::Stopped, Phase::Starting, 100),
                    Op::Start,
                ))
            }
            (Command::Stop, Status::Error, _)
                if self.install == InstallState::Complete && self.record.provider_ref.is_some() =>
            {
                Ok((
                    Transition::new(Status::Error, Phase::Stopping, 100),
                    Op::Stop,
                ))
            }
            (_, Status::Error, _) => Err(
                "the environment failed to provision; delete it and create a new one".to_owned(),
            ),
            _ => Err(format!(
                "the environment is busy ({phase}); try again when it has finished"
            )),
        };
        let (transition, op) = match plan {
            Ok(plan) => plan,
            Err(reason) => {
                return AtomicResponse::new(Box::pin(fut::ready(Err(EnvError::Conflict(reason)))));
            }
        };
        let (store, id) = (self.deps.store.clone(), self.record.id);
        let t = transition.clone();
        let write = async move { store.transition(id, &t).await };
        AtomicResponse::new(Box::pin(write.into_actor(self).map(
            move |res, act, ctx| {
                res?;
                act.apply(&transition);
                if command == Command::Restart && !matches!(op, Op::Reboot) {
                    // Restart = stop, then start, as one operation.
                    act.run(Op::Stop, ctx);
                    act.restart_after_stop = true;
                } else {
                    act.run(op, ctx);
                }
                Ok(transition.phase)
            },
        )))
    }
}

/// Subscribes to provisioning-log events. The reply says which line was announced
/// last: every later line reaches `tx`, every earlier one is already stored, so a
/// subscriber reads history up to that line and then follows `tx` with no gap and
/// no duplicate. It also says where provisioning stands; every later change of
/// that reaches `tx`.
#[derive(Message)]
#[rtype(result = "LogSubscription")]
pub struct SubscribeLogs {
    pub tx: mpsc::Sender<LogEvent>,
}

#[derive(Debug, Clone)]
pub struct LogSubscription {
    pub last_seq: i64,
    pub state: InstallState,
    pub standing: Standing,
}

impl Handler<SubscribeLogs> for EnvironmentActor {
    type Result = MessageResult<SubscribeLogs>;

    fn handle(&mut self, msg: SubscribeLogs, _: &mut Context<Self>) -> Self::Result {
        self.last_activity = Instant::now();
        self.subscribers.push(msg.tx);
        self.registration.stats.set_clients(self.subscribers.len());
        tracing::debug!(environment_id = %self.record.id, subscribers = self.subscribers.len(), "log subscriber added");
        MessageResult(LogSubscription {
            last_seq: self.record.log_seq,
            state: self.install.clone(),
            standing: self.standing(),
        })
    }
}

/// Resource use measured on the machine (cached for a few seconds).
#[derive(Message)]
#[rtype(result = "Result<Metrics, EnvError>")]
pub struct GetMetrics;

/// Who waits for the sample in flight.
type MetricsWaiters = Vec<oneshot::Sender<Result<Metrics, String>>>;

impl Handler<GetMetrics> for EnvironmentActor {
    type Result = ResponseFuture<Result<Metrics, EnvError>>;

    fn handle(&mut self, _: GetMetrics, ctx: &mut Context<Self>) -> Self::Result {
        self.last_activity = Instant::now();
        let ready = self.record.status == Status::Running && self.record.phase == Phase::Ready;
        if let Some((at, m)) = &self.metrics
            && at.elapsed() < METRICS_TTL
            && ready
        {
            return Box::pin(std::future::ready(Ok(m.clone())));
        }
        let (machine, keys) = (self.record.machine.clone(), self.record.keys.clone());
        let (Some(machine), Some(keys), true) = (machine, keys, ready) else {
            return Box::pin(std::future::ready(Err(EnvError::Conflict(format!(
                "metrics are measured on a running machine; this one is {} ({})",
                self.record.status, self.record.phase
            )))));
        };
        // Single flight: requests that come while a sample is being taken wait for
        // that one instead of each opening a connection to the machine.
        let (tx, rx) = oneshot::channel();
        if let Some(waiters) = &mut self.metrics_waiters {
            waiters.push(tx);
        } else {
            self.metrics_waiters = Some(vec![tx]);
            let deps = self.deps.clone();
            ctx.spawn(
                metrics::sample(deps, machine, keys)
                    .into_actor(self)
                    .map(|res, act, _| {
                        if let Ok(m) = &res {
                            act.metrics = Some((Instant::now(), m.clone()));
                        }
                        for waiter in act.metrics_waiters.take().unwrap_or_default() {
                            let _ = waiter.send(res.clone());
                        }
                    }),
            );
        }
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err("the environment's controller stopped".to_owned()))
                .map_err(EnvError::Unavailable)
        })
    }
}

/// Everything the async work needs, detached from the actor.
struct Work {
    deps: Arc<Deps>,
    provider: Arc<dyn Provider>,
    record: EnvironmentRecord,
    me: Addr<EnvironmentActor>,
    /// Set when a later operation (a delete) supersedes this one.
    cancel: Cancel,
}

async fn fail(deps: Arc<Deps>, id: Uuid, message: String, me: Addr<EnvironmentActor>) {
    let t = Transition::failed(message.clone());
    if deps.store.transition(id, &t).await.is_ok() {
        me.do_send(Announce::Transition(t));
        me.do_send(Announce::Installed(Err(message)));
    }
}

impl Work {
    async fn perform(self, op: Op) {
        match op {
            Op::Provision => self.provision().await,
            Op::Start => self.start(false).await,
            Op::EnsureUp => self.start(true).await,
            Op::Stop => self.stop().await,
            Op::Delete => self.delete().await,
            Op::Snapshot(name) => self.snapshot(name).await,
            Op::Resize(size) => self.resize(size).await,
            Op::Settle => self.settle().await,
            Op::Reboot => self.reboot().await,
        }
    }

    /// Durable first, then announced. A superseded operation writes nothing more.
    async fn transition(&self, t: Transition) -> Result<(), String> {
        if self.cancel.is_cancelled() {
            return Err(ProviderError::Cancelled.to_string());
        }
        self.deps
            .store
            .transition(self.record.id, &t)
            .await
            .map_err(|e| e.to_string())?;
        self.me.do_send(Announce::Transition(t));
        Ok(())
    }

    async fn keys(&self) -> Result<MachineKeys, String> {
        if let Some(keys) = &self.record.keys {
            return Ok(keys.clone());
        }
        let keys = ssh::generate_machine_keys(&self.record.slug).map_err(|e| e.to_string())?;
        self.deps
            .store
            .save_keys(self.record.id, &keys)
            .await
            .map_err(|e| e.to_string())?;
        self.me.do_send(Announce::Keys(keys.clone()));
        Ok(keys)
    }

    async fn save_machine(&self, machine: &crate::provider::Machine) -> Result<(), String> {
        self.deps
            .store
            .save_machine(self.record.id, &machine.access, &machine.provider_ref)
            .await
            .map_err(|e| e.to_string())?;
        self.me.do_send(Announce::Machine(
            machine.access.clone(),
            machine.provider_ref.clone(),
        ));
        Ok(())
    }

    fn spec(&self, keys: MachineKeys) -> MachineSpec {
        MachineSpec {
            environment_id: self.record.id,
            user_id: self.record.user_id,
            slug: self.record.slug.clone(),
            region: self.record.region.clone(),
            size: self.record.size.clone(),
            bootstrap: self.record.bootstrap.clone(),
            packages: self.record.packages.clone(),
            cloud_init: self.record.cloud_init.clone(),
            environment_variables: self.record.environment_variables.clone(),
            keys,
        }
    }

    async fn provision(self) {
        let started = Instant::now();
        let limit = self.deps.settings.provision_timeout;
        let outcome = match tokio::time::timeout(limit, self.try_provision()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!(
                "provisioning did not finish within {} minutes (the bootstrap hung or the machine restarted); see the provisioning log",
                limit.as_secs().div_ceil(60)
            )),
        };
        let provider = self.provider.name();
        if self.cancel.is_cancelled() {
            // The delete that superseded it removes whatever was made.
            tracing::info!(environment_id = %self.record.id, "provisioning given up: the environment is being deleted");
            return;
        }
        match outcome {
            Ok(()) => {
                self.deps
                    .provisioned(provider, "success", started.elapsed());
            }
            Err(message) => {
                self.deps
                    .provisioned(provider, "failure", started.elapsed());
                tracing::warn!(environment_id = %self.record.id, %message, "provisioning failed");
                fail(self.deps.clone(), self.record.id, message, self.me.clone()).await;
            }
        }
    }

    async fn try_provision(&self) -> Result<(), String> {
        let keys = self.keys().await?;
        if matches!(self.record.phase, Phase::Queued) {
            self.transition(Transition::new(Status::Creating, Phase::Provisioning, 5))
                .await?;
        }
        let machine = self
            .provider
            .create(&self.spec(keys.clone()), &self.cancel)
            .await
            .map_err(|e| format!("creating the machine failed: {e}"))?;
        self.save_machine(&machine).await?;
        if matches!(self.record.phase, Phase::Queued | Phase::Provisioning) {
            self.transition(Transition::new(Status::Creating, Phase::Booting, 15))
                .await?;
        }
        // Following the log makes nothing: it may stop at any moment.
        tokio::select! {
            result = self.follow_bootstrap(&machine.access, &keys) => result,
            () = self.cancel.cancelled() => Err(ProviderError::Cancelled.to_string()),
        }
    }

    /// Tails the provisioning log from its first line, storing and announcing the
    /// lines not stored yet, until the init's exit marker. Reconnects when SSH drops.
    async fn follow_bootstrap(
        &self,
        access: &MachineAccess,
        keys: &MachineKeys,
    ) -> Result<(), String> {
        let mut stored = self.record.log_seq;
        let mut announced_installing =
            matches!(self.record.phase, Phase::Installing | Phase::Configuring);
        let mut deadline = Instant::now() + REACH_DEADLINE;
        let command = self.provider.bootstrap_watch().tail_command;
        let mut read: u64 = 0;
        // What says why, should the bootstrap fail: its last `error: …` line, or
        // the machine's line just before the exit marker.
        let (mut reason, mut machine_said): (Option<String>, Option<String>) = (None, None);
        loop {
            let session = match SshSession::connect(access, &keys.user_private).await {
                Ok(s) => s,
                Err(e @ SshError::HostKeyMismatch { .. }) => return Err(e.to_string()),
                Err(e) => {
                    if Instant::now() > deadline {
                        return Err(format!("could not reach the machine over SSH: {e}"));
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            if !announced_installing {
                self.transition(Transition::new(Status::Creating, Phase::Installing, 20))
                    .await?;
                announced_installing = true;
            }
            let mut channel = session.exec(&command).await.map_err(|e| e.to_string())?;
            let mut splitter = LineSplitter::default();
            let mut seq = 0i64;
            while let Some(msg) = channel.wait().await {
                let ChannelMsg::Data { data } = msg else {
                    if matches!(msg, ChannelMsg::Close | ChannelMsg::Eof) {
                        break;
                    }
                    continue;
                };
                read += data.len() as u64;
                if read > logs::MAX_LOG_BYTES {
                    session.close().await;
                    return Err(format!(
                        "the provisioning log passed {} MiB, more than any bootstrap should print; see its first lines",
                        logs::MAX_LOG_BYTES >> 20
                    ));
                }
                let mut fresh = Vec::new();
                let mut exit = None;
                for text in splitter.push(&data) {
                    seq += 1;
                    if let Some(status) = logs::parse_exit(&text) {
                        exit = Some(status);
                        // The machine's own word just before it ended says it best.
                        if let Some(said) = machine_said.take() {
                            reason = Some(said);
                        }
                    } else {
                        machine_said = logs::machine_says(&text).map(str::to_owned);
                        if let Some(error) = logs::error_line(&text) {
                            reason = Some(error.to_owned());
                        }
                    }
                    if seq > stored {
                        fresh.push(LogLine {
                            seq,
                            data: text,
                            timestamp: Utc::now(),
                        });
                    }
                }
                if !fresh.is_empty() {
                    // A chunk of newlines is as many lines: stored in batches that
                    // stay within one statement's bind parameters.
                    for batch in fresh.chunks(LOG_BATCH) {
                        let texts: Vec<String> = batch.iter().map(|l| l.data.clone()).collect();
                        self.deps
                            .store
                            .append_logs(self.record.id, batch[0].seq, &texts, logs::KEEP_LINES)
                            .await
                            .map_err(|e| e.to_string())?;
                    }
                    stored = seq;
                    let stages: Vec<Progress> = fresh
                        .iter()
                        .filter_map(|l| logs::parse_stage(&l.data))
                        .collect();
                    self.me.do_send(Announce::Lines(fresh));
                    for stage in stages {
                        let t = Transition::new(
                            Status::Creating,
                            Phase::Installing,
                            logs::overall_percent(&stage),
                        )
                        .message(stage.stage.clone());
                        self.transition(t).await?;
                        self.me.do_send(Announce::Progress(stage));
                    }
                }
                if let Some(status) = exit {
                    session.close().await;
                    return self.finish_install(status, reason).await;
                }
            }
            // The stream ended before the init did: the connection dropped.
            session.close().await;
            deadline = Instant::now() + REACH_DEADLINE;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn finish_install(&self, status: i32, reason: Option<String>) -> Result<(), String> {
        if status != 0 {
            let template = &self.record.template_name;
            return Err(match reason {
                Some(reason) => format!(
                    "the {template} template's bootstrap failed with exit status {status}: {reason}"
                ),
                None => format!(
                    "the {template} template's bootstrap failed with exit status {status}; see the provisioning log"
                ),
            });
        }
        self.transition(Transition::new(Status::Creating, Phase::Configuring, 97))
            .await?;
        self.transition(
            Transition::new(Status::Running, Phase::Ready, 100)
                .message("ready")
                .stamp(Stamp::Started),
        )
        .await?;
        self.me.do_send(Announce::Installed(Ok(())));
        Ok(())
    }

    async fn start(mut self, already_running: bool) {
        // Variables may have changed (PUT) since this actor loaded its record.
        if let Ok(Some(fresh)) = self.deps.store.load(self.record.id).await {
            self.record.environment_variables = fresh.environment_variables;
        }
        let result = async {
            let keys = self.keys().await?;
            let provider_ref = self
                .record
                .provider_ref
                .clone()
                .ok_or_else(|| "the machine was never created".to_owned())?;
            let machine = self
                .provider
                .start(&self.spec(keys), &provider_ref)
                .await
                .map_err(|e| match e {
                    ProviderError::Gone(m) => format!("the machine is gone: {m}"),
                    other => format!("starting the machine failed: {other}"),
                })?;
            self.save_machine(&machine).await?;
            if !already_running {
                self.transition(
                    Transition::new(Status::Running, Phase::Ready, 100)
                        .message("running")
                        .stamp(Stamp::Started),
                )
                .await?;
            }
            Ok::<_, String>(())
        }
        .await;
        if let Err(message) = result {
            let _ = self.transition(Transition::failed(message)).await;
        }
    }

    async fn stop(self) {
        let result = async {
            if let Some(provider_ref) = &self.record.provider_ref {
                self.provider
                    .stop(provider_ref)
                    .await
                    .map_err(|e| format!("stopping the machine failed: {e}"))?;
            }
            self.transition(
                Transition::new(Status::Stopped, Phase::Stopped, 100)
                    .message("stopped")
                    .stamp(Stamp::Stopped),
            )
            .await
        }
        .await;
        match result {
            Ok(()) => self.me.do_send(StopFinished),
            Err(message) => {
                let _ = self.transition(Transition::failed(message)).await;
            }
        }
    }

    async fn delete(self) {
        let result = async {
            // Said again now that the operation this one superseded has ended: a
            // write of its own may have landed after the delete's first one.
            self.transition(Transition::new(
                Status::Terminated,
                Phase::Deleting,
                self.record.progress,
            ))
            .await?;
            // Whatever the machine is, recorded or not (a create cancelled halfway):
            // the provider finds it by the environment.
            self.provider
                .delete(self.record.id, self.record.provider_ref.as_deref())
                .await
                .map_err(|e| format!("deleting the machine failed: {e}"))?;
            self.deps
                .store
                .mark_deleted(self.record.id)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(()) => self.me.do_send(Announce::Deleted),
            Err(message) => {
                tracing::warn!(environment_id = %self.record.id, %message, "delete failed");
                let _ = self.transition(Transition::failed(message)).await;
            }
        }
    }
}

/// Internal: a stop finished (a restart continues with a start).
#[derive(Message)]
#[rtype(result = "()")]
struct StopFinished;

impl Handler<StopFinished> for EnvironmentActor {
    type Result = ();

    fn handle(&mut self, _: StopFinished, ctx: &mut Context<Self>) {
        if std::mem::take(&mut self.restart_after_stop) {
            let t = Transition::new(Status::Stopped, Phase::Restarting, 100);
            let (store, id) = (self.deps.store.clone(), self.record.id);
            let t2 = t.clone();
            ctx.wait(
                async move { store.transition(id, &t2).await }
                    .into_actor(self)
                    .map(move |res, act, ctx| {
                        if res.is_ok() {
                            act.apply(&t);
                            act.run(Op::Start, ctx);
                        }
                    }),
            );
        }
    }
}
