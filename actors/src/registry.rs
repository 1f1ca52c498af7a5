//! The `Registry`: hands out one `UserSupervisor` per user, created on first need,
//! brings environments back after a restart, takes over those whose owning process
//! died, and passes on what other processes did (see `remote`).

use std::collections::HashMap;
use std::sync::Arc;

use actix::prelude::*;
use uuid::Uuid;

use crate::deps::Deps;
use crate::environment::{EnvError, EnvironmentActor};
use crate::inspect::Handle;
use crate::model::{EnvironmentRecord, NewEnvironment};
use crate::supervisor::{CreateEnvironment, GetEnvironment, UserSupervisor};

pub struct Registry {
    deps: Arc<Deps>,
    supervisors: HashMap<Uuid, Handle<UserSupervisor>>,
}

impl Registry {
    pub fn new(deps: Arc<Deps>) -> Self {
        Self {
            deps,
            supervisors: HashMap::new(),
        }
    }

    fn supervisor(&mut self, user_id: Uuid, ctx: &mut Context<Self>) -> Handle<UserSupervisor> {
        if let Some(handle) = self.supervisors.get(&user_id).filter(|a| a.connected()) {
            return handle.clone();
        }
        let handle = Handle::start(UserSupervisor::new(
            user_id,
            self.deps.clone(),
            ctx.address(),
        ));
        self.supervisors.insert(user_id, handle.clone());
        handle
    }
}

impl Actor for Registry {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // An environment whose process died is taken over once its lease lapses:
        // every process looks, the lease decides which one drives it.
        ctx.run_interval(self.deps.settings.lease_ttl / 2, |act, ctx| {
            let store = act.deps.store.clone();
            ctx.spawn(async move { store.orphans().await }.into_actor(act).map(
                |res, act, ctx| match res {
                    Ok(orphans) => {
                        for r in orphans {
                            tracing::info!(environment_id = %r.environment_id, "taking over an environment whose server process is gone");
                            act.supervisor(r.user_id, ctx).do_send(GetEnvironment {
                                id: r.environment_id,
                            });
                        }
                    }
                    Err(err) => tracing::warn!(error = %crate::error_chain(&err), "could not look for environments whose server process is gone"),
                },
            ));
        });
    }
}

/// What another process did, as its notification says (see `remote`): passed to
/// this process's actor of the environment, if it has one.
#[derive(Message, Debug, Clone, Copy)]
#[rtype(result = "()")]
pub enum Heard {
    /// The environment changed in the store: its follower reads it again.
    Changed { user_id: Uuid, environment_id: Uuid },
    /// An order for the environment was written: its owner claims it.
    Ordered { user_id: Uuid, environment_id: Uuid },
    /// Notifications may have been missed: every actor looks again.
    MissedSome,
}

impl Handler<Heard> for Registry {
    type Result = ();

    fn handle(&mut self, heard: Heard, _: &mut Context<Self>) {
        match heard {
            Heard::Changed { user_id, .. } | Heard::Ordered { user_id, .. } => {
                if let Some(supervisor) = self.supervisors.get(&user_id) {
                    supervisor.do_send(heard);
                }
            }
            Heard::MissedSome => {
                for supervisor in self.supervisors.values() {
                    supervisor.do_send(heard);
                }
            }
        }
    }
}

#[derive(Message)]
#[rtype(result = "Handle<UserSupervisor>")]
pub struct SupervisorFor {
    pub user_id: Uuid,
}

impl Handler<SupervisorFor> for Registry {
    type Result = MessageResult<SupervisorFor>;

    fn handle(&mut self, msg: SupervisorFor, ctx: &mut Context<Self>) -> Self::Result {
        MessageResult(self.supervisor(msg.user_id, ctx))
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct SupervisorStopped {
    pub user_id: Uuid,
    pub supervisor: Addr<UserSupervisor>,
}

impl Handler<SupervisorStopped> for Registry {
    type Result = ();

    fn handle(&mut self, msg: SupervisorStopped, _: &mut Context<Self>) {
        if self
            .supervisors
            .get(&msg.user_id)
            .is_some_and(|h| h.addr == msg.supervisor)
        {
            self.supervisors.remove(&msg.user_id);
        }
    }
}

/// Brings back every environment with unfinished work or a machine that should
/// be running (at start-up).
#[derive(Message)]
#[rtype(result = "Result<usize, EnvError>")]
pub struct ResumeAll;

impl Handler<ResumeAll> for Registry {
    type Result = ResponseActFuture<Self, Result<usize, EnvError>>;

    fn handle(&mut self, _: ResumeAll, _: &mut Context<Self>) -> Self::Result {
        let store = self.deps.store.clone();
        Box::pin(
            async move { store.resumable().await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    let resumable = res?;
                    for r in &resumable {
                        act.supervisor(r.user_id, ctx).do_send(GetEnvironment {
                            id: r.environment_id,
                        });
                    }
                    Ok(resumable.len())
                }),
        )
    }
}

/// The handle the server holds.
#[derive(Clone)]
pub struct ActorSystem {
    pub registry: Addr<Registry>,
    pub deps: Arc<Deps>,
    arbiter: ArbiterHandle,
}

impl ActorSystem {
    /// Starts the registry on its own arbiter (thread): supervisors and
    /// environment actors run there, off the HTTP workers. Terminal actors are the
    /// exception: each runs on the worker of the client that opened it, next to
    /// that client's WebSocket, because a keystroke's round trip is what they are
    /// for.
    pub fn start(deps: Arc<Deps>) -> Self {
        let arbiter = Arbiter::new();
        let d = deps.clone();
        let registry = Registry::start_in_arbiter(&arbiter.handle(), move |_| Registry::new(d));
        Self {
            registry,
            deps,
            arbiter: arbiter.handle(),
        }
    }

    /// Stops the registry's arbiter, and with it every supervisor and environment
    /// actor (they give their leases back): for when the server has stopped. The
    /// durable state is where the next process picks them up.
    pub fn stop(&self) {
        self.arbiter.stop();
    }

    /// The actor of `user_id`'s environment `id`; `None` if no such environment of
    /// theirs exists.
    pub async fn environment(
        &self,
        user_id: Uuid,
        id: Uuid,
    ) -> Result<Option<Handle<EnvironmentActor>>, EnvError> {
        let supervisor = self
            .registry
            .send(SupervisorFor { user_id })
            .await
            .map_err(EnvError::from)?;
        supervisor
            .send(GetEnvironment { id })
            .await
            .map_err(EnvError::from)?
    }

    /// Stores `new` within its owner's plan and starts its actor (see
    /// `CreateEnvironment`): the environment as stored.
    pub async fn create(&self, new: NewEnvironment) -> Result<EnvironmentRecord, EnvError> {
        let supervisor = self
            .registry
            .send(SupervisorFor {
                user_id: new.user_id,
            })
            .await?;
        supervisor.send(CreateEnvironment(new)).await?
    }

    /// The terminal actor for a session of `user_id`'s environment or server (the
    /// caller has checked ownership), connecting to `target` if it is new. A new one
    /// runs on the caller's arbiter (thread).
    pub async fn terminal(
        &self,
        user_id: Uuid,
        environment_id: Uuid,
        name: String,
        mode: crate::terminal::SessionMode,
        target: crate::terminal::TerminalTarget,
    ) -> Result<Handle<crate::terminal::TerminalActor>, EnvError> {
        let supervisor = self
            .registry
            .send(SupervisorFor { user_id })
            .await
            .map_err(EnvError::from)?;
        supervisor
            .send(crate::supervisor::GetTerminal {
                environment_id,
                name,
                mode,
                arbiter: Arbiter::current(),
                target,
            })
            .await
            .map_err(EnvError::from)
    }

    /// The actor of `user_id`'s server `id` (the caller has checked ownership).
    pub async fn server(
        &self,
        user_id: Uuid,
        id: Uuid,
    ) -> Result<Handle<crate::server::ServerActor>, MailboxError> {
        let supervisor = self.registry.send(SupervisorFor { user_id }).await?;
        supervisor.send(crate::supervisor::GetServer { id }).await
    }

    /// The actor of `user_id`'s app `id` (the caller has checked ownership).
    pub async fn app(
        &self,
        user_id: Uuid,
        id: Uuid,
        runs: Arc<dyn crate::app::AppRuns>,
    ) -> Result<Handle<crate::app::AppActor>, MailboxError> {
        let supervisor = self.registry.send(SupervisorFor { user_id }).await?;
        supervisor
            .send(crate::supervisor::GetApp { id, runs })
            .await
    }

    /// Stops the actor of `user_id`'s deleted server `id`, if it runs.
    pub async fn forget_server(&self, user_id: Uuid, id: Uuid) -> Result<(), MailboxError> {
        let supervisor = self.registry.send(SupervisorFor { user_id }).await?;
        supervisor
            .send(crate::supervisor::ForgetServer { id })
            .await
    }

    /// Passes on what another process did (see [`Heard`]).
    pub fn heard(&self, heard: Heard) {
        if let Heard::MissedSome = heard {
            self.deps.answers.look_again();
        }
        self.registry.do_send(heard);
    }

    pub async fn resume_all(&self) -> Result<usize, EnvError> {
        self.registry
            .send(ResumeAll)
            .await
            .map_err(EnvError::from)?
    }
}
