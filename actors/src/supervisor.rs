//! `UserSupervisor`: one per active user. Owns that user's environment actors,
//! notices when one dies — cleanly or in a panic, which actix's own supervisor does
//! not catch — and re-creates a crashed one from durable state, with backoff.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use uuid::Uuid;

use crate::app::{AppActor, AppRuns};
use crate::backoff::Backoff;
use crate::deps::Deps;
use crate::environment::{EnvError, EnvironmentActor};
use crate::inspect::{ActorStats, Handle, Instrumented, Kind, Registration};
use crate::model::{EnvironmentRecord, NewEnvironment, Transition};
use crate::registry::{Registry, SupervisorStopped};
use crate::server::ServerActor;
use crate::terminal::{SessionMode, TerminalActor, TerminalTarget};

pub struct UserSupervisor {
    user_id: Uuid,
    deps: Arc<Deps>,
    registry: Addr<Registry>,
    children: HashMap<Uuid, Handle<EnvironmentActor>>,
    /// Consecutive crashes per child.
    crashes: HashMap<Uuid, u32>,
    terminals: HashMap<(Uuid, String, SessionMode), Handle<TerminalActor>>,
    servers: HashMap<Uuid, Handle<ServerActor>>,
    apps: HashMap<Uuid, Handle<AppActor>>,
    last_activity: Instant,
    registration: Registration,
}

impl UserSupervisor {
    pub fn new(user_id: Uuid, deps: Arc<Deps>, registry: Addr<Registry>) -> Self {
        let registration =
            deps.inspector
                .register(Kind::UserSupervisor, format!("user:{user_id}"), Vec::new());
        registration.stats.set_state("active");
        Self {
            registration,
            user_id,
            deps,
            registry,
            children: HashMap::new(),
            crashes: HashMap::new(),
            terminals: HashMap::new(),
            servers: HashMap::new(),
            apps: HashMap::new(),
            last_activity: Instant::now(),
        }
    }
}

impl UserSupervisor {
    fn start_child(
        &mut self,
        record: crate::model::EnvironmentRecord,
        ctx: &mut Context<Self>,
    ) -> Handle<EnvironmentActor> {
        let id = record.id;
        let handle = Handle::start(EnvironmentActor::new(
            self.deps.clone(),
            record,
            ctx.address().recipient(),
        ));
        self.children.insert(id, handle.clone());
        self.registration.stats.set_clients(self.children.len());
        handle
    }
}

impl Instrumented for UserSupervisor {
    fn stats(&self) -> &Arc<ActorStats> {
        &self.registration.stats
    }
}

crate::instrumented!(UserSupervisor);

impl Actor for UserSupervisor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let every = (self.deps.settings.supervisor_idle / 4).max(Duration::from_millis(100));
        ctx.run_interval(every, |act, ctx| {
            act.servers.retain(|_, s| s.connected());
            act.apps.retain(|_, a| a.connected());
            if act.children.is_empty()
                && act.servers.is_empty()
                && act.apps.is_empty()
                && act.last_activity.elapsed() >= act.deps.settings.supervisor_idle
            {
                ctx.stop();
            }
        });
    }

    fn stopped(&mut self, ctx: &mut Context<Self>) {
        self.registry.do_send(SupervisorStopped {
            user_id: self.user_id,
            supervisor: ctx.address(),
        });
    }
}

/// The actor of one of this user's environments, started from durable state if it
/// is not running. `None` when the environment does not exist (or is another
/// user's).
#[derive(Message)]
#[rtype(result = "Result<Option<Handle<EnvironmentActor>>, EnvError>")]
pub struct GetEnvironment {
    pub id: Uuid,
}

impl Handler<GetEnvironment> for UserSupervisor {
    type Result = AtomicResponse<Self, Result<Option<Handle<EnvironmentActor>>, EnvError>>;

    fn handle(&mut self, msg: GetEnvironment, _: &mut Context<Self>) -> Self::Result {
        self.last_activity = Instant::now();
        if let Some(addr) = self.children.get(&msg.id).filter(|a| a.connected()) {
            return AtomicResponse::new(Box::pin(fut::ready(Ok(Some(addr.clone())))));
        }
        let (store, id) = (self.deps.store.clone(), msg.id);
        AtomicResponse::new(Box::pin(
            async move { store.load(id).await }
                .into_actor(self)
                .map(move |res, act, ctx| {
                    let Some(record) = res? else { return Ok(None) };
                    if record.user_id != act.user_id {
                        return Ok(None);
                    }
                    let handle = act.start_child(record, ctx);
                    Ok(Some(handle))
                }),
        ))
    }
}

/// Stores a new environment of this user (within the plan, see `Store::create`)
/// and starts its actor, which provisions it. Replies, once it is durable, with
/// the environment as stored.
#[derive(Message)]
#[rtype(result = "Result<EnvironmentRecord, EnvError>")]
pub struct CreateEnvironment(pub NewEnvironment);

impl Handler<CreateEnvironment> for UserSupervisor {
    type Result = AtomicResponse<Self, Result<EnvironmentRecord, EnvError>>;

    fn handle(
        &mut self,
        CreateEnvironment(new): CreateEnvironment,
        _: &mut Context<Self>,
    ) -> Self::Result {
        self.last_activity = Instant::now();
        let store = self.deps.store.clone();
        // The registry routes by owner: a supervisor only ever gets its own.
        debug_assert_eq!(new.user_id, self.user_id);
        AtomicResponse::new(Box::pin(
            async move { store.create(&new).await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    let record = res?;
                    act.start_child(record.clone(), ctx);
                    Ok(record)
                }),
        ))
    }
}

/// Sent by a child's exit guard when it stops or dies.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChildExited {
    pub id: Uuid,
    pub crashed: bool,
}

impl Handler<ChildExited> for UserSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ChildExited, ctx: &mut Context<Self>) {
        self.last_activity = Instant::now();
        // A newer child may already stand in this one's place.
        if self.children.get(&msg.id).is_some_and(Handle::connected) {
            return;
        }
        self.children.remove(&msg.id);
        self.registration.stats.set_clients(self.children.len());
        if !msg.crashed {
            self.crashes.remove(&msg.id);
            return;
        }
        let crashes = self.crashes.entry(msg.id).or_insert(0);
        *crashes += 1;
        let attempt = *crashes;
        self.deps.gauges.restarts.fetch_add(1, Ordering::Relaxed);
        self.deps.metric(|| {
            ::metrics::counter!("devpocket_actor_restarts_total", "kind" => "environment")
                .increment(1);
        });
        tracing::error!(environment_id = %msg.id, attempt, "environment actor panicked");
        if attempt > self.deps.settings.max_restarts {
            // Give up: record why, durably, instead of crashing forever.
            let (store, id) = (self.deps.store.clone(), msg.id);
            actix::spawn(async move {
                let t = Transition::failed(
                    "the environment's controller kept crashing; delete it and create a new one",
                );
                if let Err(err) = store.transition(id, &t).await {
                    tracing::error!(environment_id = %id, error = %err, "giving up on a crashing environment could not be recorded");
                }
            });
            return;
        }
        let delay = Backoff::doubling(self.deps.settings.restart_backoff).delay(attempt - 1);
        let id = msg.id;
        ctx.run_later(delay, move |act, ctx| {
            if act.children.contains_key(&id) {
                return;
            }
            let store = act.deps.store.clone();
            ctx.spawn(async move { store.load(id).await }.into_actor(act).map(move |res, act, ctx| {
                match res {
                    Ok(Some(record)) => {
                        act.start_child(record, ctx);
                    }
                    Ok(None) => {}
                    Err(err) => tracing::error!(environment_id = %id, error = %err, "could not re-create environment actor"),
                }
            }));
        });
    }
}

impl Handler<crate::registry::Heard> for UserSupervisor {
    type Result = ();

    fn handle(&mut self, heard: crate::registry::Heard, _: &mut Context<Self>) {
        use crate::registry::Heard;
        use crate::remote::{Changed, ClaimOrders};
        let (id, claim) = match heard {
            Heard::Changed { environment_id, .. } => (environment_id, false),
            Heard::Ordered { environment_id, .. } => (environment_id, true),
            Heard::MissedSome => {
                for child in self.children.values() {
                    child.do_send(Changed);
                    child.do_send(ClaimOrders);
                }
                return;
            }
        };
        if let Some(child) = self.children.get(&id) {
            if claim {
                child.do_send(ClaimOrders);
            } else {
                child.do_send(Changed);
            }
        }
    }
}

/// How many environment actors this supervisor runs (for inspection and tests).
#[derive(Message)]
#[rtype(result = "usize")]
pub struct ChildCount;

impl Handler<ChildCount> for UserSupervisor {
    type Result = usize;

    fn handle(&mut self, _: ChildCount, _: &mut Context<Self>) -> usize {
        self.children.values().filter(|a| a.connected()).count()
    }
}

/// The terminal actor of one of this user's environments and a session name,
/// created on first attach. The caller has checked that the environment is theirs.
#[derive(Message)]
#[rtype(result = "Handle<TerminalActor>")]
pub struct GetTerminal {
    pub environment_id: Uuid,
    pub name: String,
    pub mode: SessionMode,
    /// Where a new terminal actor runs: the caller's thread, so that the first
    /// client's keystrokes and echo cross no thread on their way to SSH and back.
    pub arbiter: ArbiterHandle,
    /// Where a new terminal actor connects: the environment (its state and where
    /// to report input, from `WatchState`) or a server.
    pub target: TerminalTarget,
}

impl Handler<GetTerminal> for UserSupervisor {
    type Result = MessageResult<GetTerminal>;

    fn handle(&mut self, msg: GetTerminal, _: &mut Context<Self>) -> Self::Result {
        self.last_activity = Instant::now();
        let key = (msg.environment_id, msg.name.clone(), msg.mode);
        if let Some(handle) = self.terminals.get(&key).filter(|a| a.connected()) {
            return MessageResult(handle.clone());
        }
        self.terminals.retain(|_, t| t.connected());
        let handle = Handle::start_in(
            TerminalActor::new(
                self.deps.clone(),
                self.deps.terminal.clone(),
                self.user_id,
                msg.environment_id,
                msg.name,
                msg.mode,
                msg.target,
            ),
            &msg.arbiter,
        );
        self.terminals.insert(key, handle.clone());
        MessageResult(handle)
    }
}

/// The actor of one of this user's servers, started if it is not running. The
/// caller has checked that the server is theirs.
#[derive(Message)]
#[rtype(result = "Handle<ServerActor>")]
pub struct GetServer {
    pub id: Uuid,
}

impl Handler<GetServer> for UserSupervisor {
    type Result = MessageResult<GetServer>;

    fn handle(&mut self, msg: GetServer, _: &mut Context<Self>) -> Self::Result {
        self.last_activity = Instant::now();
        if let Some(handle) = self.servers.get(&msg.id).filter(|a| a.connected()) {
            return MessageResult(handle.clone());
        }
        let handle = Handle::start(ServerActor::new(self.deps.clone(), self.user_id, msg.id));
        self.servers.insert(msg.id, handle.clone());
        MessageResult(handle)
    }
}

/// Stops the actor of one of this user's servers (it was deleted), closing its
/// connection, and ends its terminals.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ForgetServer {
    pub id: Uuid,
}

impl Handler<ForgetServer> for UserSupervisor {
    type Result = ();

    fn handle(&mut self, msg: ForgetServer, _: &mut Context<Self>) {
        if let Some(handle) = self.servers.remove(&msg.id) {
            handle.addr.do_send(crate::server::Forget);
        }
        // Its terminals end: nobody keeps a way into a server its owner removed.
        self.terminals.retain(|(id, ..), terminal| {
            if *id == msg.id {
                terminal
                    .addr
                    .do_send(crate::terminal::Shut("the server was deleted".to_owned()));
            }
            *id != msg.id
        });
    }
}

/// The actor of one of this user's apps, started if it is not running; `runs` is
/// what a new one asks the server to do when the app's time is up. The caller has
/// checked that the app is theirs.
#[derive(Message)]
#[rtype(result = "Handle<AppActor>")]
pub struct GetApp {
    pub id: Uuid,
    pub runs: Arc<dyn AppRuns>,
}

impl Handler<GetApp> for UserSupervisor {
    type Result = MessageResult<GetApp>;

    fn handle(&mut self, msg: GetApp, _: &mut Context<Self>) -> Self::Result {
        self.last_activity = Instant::now();
        if let Some(handle) = self.apps.get(&msg.id).filter(|a| a.connected()) {
            return MessageResult(handle.clone());
        }
        let app = AppActor::new(self.deps.clone(), self.user_id, msg.id, msg.runs);
        let handle = Handle::start(app);
        self.apps.insert(msg.id, handle.clone());
        MessageResult(handle)
    }
}
