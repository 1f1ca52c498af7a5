//! `AppActor`: one per compose app with something under way on this process — a
//! start or a stop running, or a running app's auto-stop timer. It makes the app's
//! runs one at a time, in the order asked, and holds the timer: when it fires, it
//! asks the app's runner ([`AppRuns`], implemented by the server) to make the stop
//! that is due. The stop time itself is durable (the runner's), so a timer lost
//! with a process is made good by the runner's own periodic look, and a stop is
//! made once whichever process's timer fires first. With nothing under way for
//! `ActorSettings::environment_idle`, the actor stops.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::deps::Deps;
use crate::inspect::{ActorStats, Instrumented, Kind, Registration};

/// A run of the app's (a start or a stop), made by the server.
pub type AppWork = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// What the app actor asks of the server when the app's time is up.
pub trait AppRuns: Send + Sync + 'static {
    /// Makes the stop due for `app` now, if it still is (it may have been
    /// extended, stopped, or stopped by another process meanwhile).
    fn stop_due(&self, app: Uuid) -> AppWork;
}

pub struct AppActor {
    id: Uuid,
    deps: Arc<Deps>,
    runs: Arc<dyn AppRuns>,
    /// Runs waiting for the one under way.
    busy: bool,
    timer: Option<(DateTime<Utc>, SpawnHandle)>,
    last_used: Instant,
    registration: Registration,
}

impl AppActor {
    pub fn new(deps: Arc<Deps>, user_id: Uuid, id: Uuid, runs: Arc<dyn AppRuns>) -> Self {
        let registration = deps.inspector.register(
            Kind::App,
            format!("app:{id}"),
            vec![format!("user:{user_id}")],
        );
        registration.stats.set_state("idle");
        Self {
            id,
            deps,
            runs,
            busy: false,
            timer: None,
            last_used: Instant::now(),
            registration,
        }
    }

    fn show(&self) {
        let state = match (self.busy, &self.timer) {
            (true, _) => "running a start or stop".to_owned(),
            (false, Some((at, _))) => format!("stops at {}", at.to_rfc3339()),
            (false, None) => "idle".to_owned(),
        };
        self.registration.stats.set_state(state);
    }
}

impl Instrumented for AppActor {
    fn stats(&self) -> &Arc<ActorStats> {
        &self.registration.stats
    }
}

crate::instrumented!(AppActor);

impl Actor for AppActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        let idle = self.deps.settings.environment_idle;
        let every = (idle / 4).clamp(Duration::from_millis(100), Duration::from_secs(30));
        ctx.run_interval(every, move |act, ctx| {
            if !act.busy && act.timer.is_none() && act.last_used.elapsed() >= idle {
                ctx.stop();
            }
        });
    }
}

/// Makes a start or a stop of the app (the server has recorded that it began),
/// after any under way; the reply comes at once.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Run(pub AppWork);

impl Handler<Run> for AppActor {
    type Result = ();

    fn handle(&mut self, Run(work): Run, ctx: &mut Context<Self>) {
        self.last_used = Instant::now();
        self.busy = true;
        self.show();
        // `wait`: the next run (and the timer's stop) comes after this one.
        ctx.wait(work.into_actor(self).map(|(), act, _| {
            act.busy = false;
            act.last_used = Instant::now();
            act.show();
        }));
    }
}

/// When the app is to stop by itself (`None`: it is not, or no longer).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Schedule(pub Option<DateTime<Utc>>);

impl Handler<Schedule> for AppActor {
    type Result = ();

    fn handle(&mut self, Schedule(at): Schedule, ctx: &mut Context<Self>) {
        self.last_used = Instant::now();
        if let Some((_, handle)) = self.timer.take() {
            ctx.cancel_future(handle);
        }
        if let Some(at) = at {
            let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
            let handle = ctx.run_later(wait, |act, ctx| {
                act.timer = None;
                act.busy = true;
                act.show();
                let stop = act.runs.stop_due(act.id);
                ctx.wait(stop.into_actor(act).map(|(), act, _| {
                    act.busy = false;
                    act.last_used = Instant::now();
                    act.show();
                }));
            });
            self.timer = Some((at, handle));
        }
        self.show();
    }
}
