//! `TerminalActor`: one per (environment, session name), shared by every client of
//! that session. It owns one SSH connection with a PTY channel running
//! `tmux new-session -A -s NAME` ([`link`]), always drains it (an unread russh
//! channel stalls the whole connection), decodes it as UTF-8 ([`utf8`]), and fans
//! the output out ([`fanout`]): numbered, kept in a bounded replay buffer for
//! resuming clients, through a bounded queue per client. A client that cannot keep
//! up is never waited for — it is skipped ahead to a fresh screen (tmux sessions)
//! or dropped with a close code that says how to resume.
//!
//! tmux is the persistence layer: if SSH drops, the actor reconnects with backoff
//! and re-attaches to the same tmux session, so the shell survives. After the last
//! client leaves, the actor lingers, then closes SSH (tmux keeps the shell).

mod fanout;
mod link;
pub mod utf8;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use chrono::{DateTime, Utc};
use tokio::sync::{mpsc, oneshot, watch};
use uuid::Uuid;

use crate::deps::Deps;
use crate::environment::{EnvLink, EnvState, NoteActivity};
use crate::inspect::{ActorStats, Handle, Instrumented, Kind, Registration};
use crate::model::{Activity, ActivityKind};
use crate::server::ServerAccess;
use crate::ssh::SshSession;
use fanout::Fanout;

pub use fanout::{Chunk, ClientQueue, TermEvent, TermState};

/// Tunables, documented in the README.
#[derive(Debug, Clone)]
pub struct TerminalSettings {
    /// Output kept for resuming clients, in bytes.
    pub buffer_bytes: usize,
    /// Frames queued per client before it is dropped as too slow.
    pub client_queue: usize,
    /// Output bytes queued per client before it is dropped as too slow.
    pub client_queue_bytes: usize,
    /// How long the actor stays connected after its last client leaves.
    pub linger: Duration,
}

impl Default for TerminalSettings {
    fn default() -> Self {
        Self {
            buffer_bytes: 256 * 1024,
            client_queue: 256,
            client_queue_bytes: 4 * 1024 * 1024,
            linger: Duration::from_secs(60),
        }
    }
}

/// What a session runs in its PTY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SessionMode {
    /// `tmux new-session -A -s NAME`: the shell survives disconnects and is shared.
    Tmux,
    /// A login shell straight on the PTY, without tmux: nothing survives a lost SSH
    /// connection and a late joiner gets no redraw. For scripted use and for
    /// measuring the bridge itself.
    Shell,
}

enum WriterCmd {
    Input(Vec<u8>),
    Resize(u32, u32),
}

/// Where a terminal's SSH connection goes; everything else about a terminal is the
/// same for both.
pub enum TerminalTarget {
    /// An environment's machine, followed through its actor's state: the terminal
    /// waits for it to run and closes when it stops or is deleted.
    Environment(EnvLink),
    /// A user's own server, reached as its owner set it up. It has no lifecycle of
    /// DevPocket's: the terminal attaches at once, reconnects while the server
    /// cannot be reached, and ends when its clients leave.
    Server(ServerAccess),
}

pub struct TerminalActor {
    deps: Arc<Deps>,
    settings: TerminalSettings,
    /// The environment's or the server's id.
    environment_id: Uuid,
    /// For a server: how to reach it (an environment's machine is read at each
    /// connection).
    server: Option<ServerAccess>,
    /// For a server: the state it always has, kept here so that its watch lives.
    _always_up: Option<watch::Sender<EnvState>>,
    name: String,
    mode: SessionMode,
    /// The environment's state, as its actor publishes it.
    env: watch::Receiver<EnvState>,
    /// Why the terminal is waiting for the environment, while it is.
    waiting: Option<String>,
    /// Attached at least once: from then on a stop closes the terminal.
    attached_before: bool,
    /// The idle stop its clients were last told of.
    idle_warned: Option<DateTime<Utc>>,
    /// Where its clients' input is reported as activity.
    activity: ActivityReport,
    fanout: Fanout,
    size: (u32, u32),
    /// The client whose size applies (the most recently active one).
    size_owner: Arc<AtomicU64>,
    /// The SSH channel's writer while connected, shared with every client's
    /// [`InputPort`] so keystrokes skip the actor's mailbox.
    writer: watch::Sender<Option<mpsc::Sender<WriterCmd>>>,
    session: Option<Arc<SshSession>>,
    /// Which connection attempt is current; messages from older ones are ignored.
    generation: u64,
    attempts: u32,
    linger: Option<SpawnHandle>,
    redraw_pending: bool,
    /// Polls clients that are being skipped ahead.
    catch_up: Option<SpawnHandle>,
    /// While this process's client count is being written, and whether it changed
    /// meanwhile.
    publishing: bool,
    publish_again: bool,
    /// Who waits for the next write of the count.
    publish_waiters: Vec<oneshot::Sender<()>>,
    registration: Registration,
}

const CATCH_UP_POLL: Duration = Duration::from_millis(50);

impl TerminalActor {
    pub fn new(
        deps: Arc<Deps>,
        settings: TerminalSettings,
        user_id: Uuid,
        environment_id: Uuid,
        name: String,
        mode: SessionMode,
        target: TerminalTarget,
    ) -> Self {
        let (env, activity, server, always_up, parent) = match target {
            TerminalTarget::Environment(EnvLink { state, activity }) => (
                state,
                Some(activity),
                None,
                None,
                format!("environment:{environment_id}"),
            ),
            TerminalTarget::Server(access) => {
                let (tx, rx) = watch::channel(EnvState::always_up());
                (
                    rx,
                    None,
                    Some(access),
                    Some(tx),
                    format!("server:{environment_id}"),
                )
            }
        };
        let id = match mode {
            SessionMode::Tmux => format!("terminal:{environment_id}:{name}"),
            SessionMode::Shell => format!("terminal:{environment_id}:shell:{name}"),
        };
        let registration =
            deps.inspector
                .register(Kind::Terminal, id, vec![parent, format!("user:{user_id}")]);
        registration.stats.set_state("connecting");
        let activity = ActivityReport {
            to: activity,
            session: name.clone(),
            every: deps.settings.activity_every,
            last: Arc::new(Mutex::new(None)),
            env: env.clone(),
        };
        Self {
            registration,
            deps,
            fanout: Fanout::new(&settings, mode == SessionMode::Tmux),
            settings,
            environment_id,
            server,
            _always_up: always_up,
            name,
            mode,
            env,
            waiting: None,
            attached_before: false,
            idle_warned: None,
            activity,
            size: (80, 24),
            size_owner: Arc::new(AtomicU64::new(0)),
            writer: watch::Sender::new(None),
            session: None,
            generation: 0,
            attempts: 0,
            linger: None,
            redraw_pending: false,
            catch_up: None,
            publishing: false,
            publish_again: false,
            publish_waiters: Vec::new(),
        }
    }

    fn own_handle(&self, ctx: &Context<Self>) -> Handle<Self> {
        Handle {
            addr: ctx.address(),
            stats: self.registration.stats.clone(),
        }
    }

    fn broadcast(&mut self, event: &TermEvent) {
        let before = self.fanout.len();
        self.fanout.broadcast(event);
        if self.fanout.len() != before {
            self.registration.stats.set_clients(self.fanout.len());
        }
    }

    /// While a client is being skipped ahead, checks every `CATCH_UP_POLL` whether
    /// it has taken most of what was queued; then it gets live output again and a
    /// repaint, so its screen is whole.
    fn watch_skipping(&mut self, ctx: &mut Context<Self>) {
        if self.catch_up.is_some() || !self.fanout.any_skipping() {
            return;
        }
        self.catch_up = Some(ctx.run_interval(CATCH_UP_POLL, move |act, ctx| {
            if act.fanout.catch_up() {
                act.redraw(ctx);
            }
            if !act.fanout.any_skipping()
                && let Some(handle) = act.catch_up.take()
            {
                ctx.cancel_future(handle);
            }
        }));
    }

    fn status(&mut self, state: TermState, message: impl Into<String>) {
        self.registration.stats.set_state(state.as_str());
        let event = TermEvent::Status {
            state,
            message: message.into(),
            stop_at: None,
        };
        self.broadcast(&event);
    }

    /// What a client is told of a coming idle stop, or that it is off.
    fn idle_status(stop_at: Option<DateTime<Utc>>) -> TermEvent {
        match stop_at {
            Some(at) => TermEvent::Status {
                state: TermState::IdleWarning,
                message: format!(
                    "no activity: the environment stops at {} unless someone types here",
                    at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                ),
                stop_at: Some(at),
            },
            None => TermEvent::Status {
                state: TermState::Connected,
                message: "activity seen: the environment stays up".into(),
                stop_at: None,
            },
        }
    }

    /// Tells every client when the environment's idle warning comes on or goes off.
    fn follow_idle_warning(&mut self) {
        let at = self.env.borrow().idle_stop_at;
        if at == self.idle_warned {
            return;
        }
        self.idle_warned = at;
        self.broadcast(&Self::idle_status(at));
    }

    /// The most recently active client's size wins (like tmux's `latest`).
    fn use_size_of(&mut self, client: u64) {
        let Some(size) = self.fanout.size_of(client) else {
            return;
        };
        self.size_owner.store(client, Ordering::Relaxed);
        if size != self.size {
            self.size = size;
            if let Some(w) = &*self.writer.borrow() {
                let _ = w.try_send(WriterCmd::Resize(size.0, size.1));
            }
        }
    }
}

impl Instrumented for TerminalActor {
    fn stats(&self) -> &Arc<ActorStats> {
        &self.registration.stats
    }
}

crate::instrumented!(TerminalActor);

impl Actor for TerminalActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        // One item per transition of the environment; the stream ends with its actor.
        let changes = futures_util::stream::unfold(self.env.clone(), |mut rx| async move {
            rx.changed().await.ok()?;
            Some((EnvMoved, rx))
        });
        ctx.add_stream(changes);
        // Its clients, counted with other processes' (see `publish_clients`), are
        // renewed well within the time others count them.
        ctx.run_interval(self.deps.settings.lease_ttl / 3, |act, ctx| {
            if !act.fanout.is_empty() {
                drop(act.publish_clients(ctx));
            }
        });
        self.connect(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(session) = self.session.take() {
            actix::spawn(async move { session.close().await });
        }
        if let Some(session) = self.shared_session() {
            let (store, id, owner) = (
                self.deps.store.clone(),
                self.environment_id,
                self.deps.owner,
            );
            actix::spawn(async move {
                if let Err(e) = store.terminal_clients(id, &session, owner, 0).await {
                    tracing::debug!(error = %e, "a terminal's clients could not be unlisted; they lapse");
                }
            });
        }
    }
}

impl TerminalActor {
    /// The name other processes know this session by, when they share it: an
    /// environment's tmux session (a `shell` session is this actor's own).
    fn shared_session(&self) -> Option<String> {
        (self.server.is_none() && self.mode == SessionMode::Tmux).then(|| self.name.clone())
    }

    /// Writes how many clients this process has of the session, for the others'
    /// `welcome`. One write at a time; a change meanwhile is written after it.
    /// What it returns resolves once the count as of now is written (or failed).
    fn publish_clients(&mut self, ctx: &mut Context<Self>) -> oneshot::Receiver<()> {
        let (done, written) = oneshot::channel();
        let Some(session) = self.shared_session() else {
            return written;
        };
        self.publish_waiters.push(done);
        if self.publishing {
            self.publish_again = true;
            return written;
        }
        self.publishing = true;
        let waiters = std::mem::take(&mut self.publish_waiters);
        let (store, id, owner, clients) = (
            self.deps.store.clone(),
            self.environment_id,
            self.deps.owner,
            self.fanout.len(),
        );
        ctx.spawn(
            async move { store.terminal_clients(id, &session, owner, clients).await }
                .into_actor(self)
                .map(|res, act, ctx| {
                    if let Err(e) = res {
                        tracing::debug!(error = %e, "a terminal's clients could not be published");
                    }
                    for waiter in waiters {
                        let _ = waiter.send(());
                    }
                    act.publishing = false;
                    if std::mem::take(&mut act.publish_again) {
                        drop(act.publish_clients(ctx));
                    }
                }),
        );
        written
    }

    /// How many clients other processes have of this session, once `published`
    /// (this process's count) has resolved: of two clients joining at once on two
    /// processes, the second to read counts the first.
    fn clients_elsewhere(
        &self,
        published: oneshot::Receiver<()>,
    ) -> impl Future<Output = usize> + 'static {
        let session = self.shared_session();
        let (store, id, owner) = (
            self.deps.store.clone(),
            self.environment_id,
            self.deps.owner,
        );
        let within = self.deps.settings.lease_ttl;
        async move {
            let Some(session) = session else { return 0 };
            let _ = published.await;
            store
                .other_terminal_clients(id, &session, owner, within)
                .await
                .unwrap_or_else(|e| {
                    tracing::debug!(error = %e, "other processes' clients of a terminal are not known");
                    0
                })
        }
    }
}

/// The environment's state changed.
struct EnvMoved;

impl StreamHandler<EnvMoved> for TerminalActor {
    fn handle(&mut self, _: EnvMoved, ctx: &mut Context<Self>) {
        self.env_moved(ctx);
        self.follow_idle_warning();
    }

    fn finished(&mut self, ctx: &mut Context<Self>) {
        self.env_gone(ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Output {
    generation: u64,
    text: String,
}

impl Handler<Output> for TerminalActor {
    type Result = ();
    fn handle(&mut self, msg: Output, ctx: &mut Context<Self>) {
        if msg.generation == self.generation {
            let before = self.fanout.len();
            self.fanout.push_output(msg.text);
            if self.fanout.len() != before {
                self.registration.stats.set_clients(self.fanout.len());
            }
            self.watch_skipping(ctx);
        }
    }
}

#[derive(Message)]
#[rtype(result = "()")]
struct Disconnected {
    generation: u64,
}

impl Handler<Disconnected> for TerminalActor {
    type Result = ();
    fn handle(&mut self, msg: Disconnected, ctx: &mut Context<Self>) {
        if msg.generation == self.generation {
            self.lost("the SSH connection dropped".into(), ctx);
        }
    }
}

/// Joins the session. With `resume` (the last seq the client saw), the missing
/// output is replayed if the buffer still holds it (and it fits the client's
/// queue); otherwise the client gets a fresh screen.
#[derive(Message)]
#[rtype(result = "Attached")]
pub struct Attach {
    pub cols: u32,
    pub rows: u32,
    pub resume: Option<u64>,
    /// The client's address, told with its input's activity.
    pub client_address: Option<String>,
}

pub struct Attached {
    pub client: u64,
    /// This process's clients of the session, this one included.
    pub clients: usize,
    /// Resolves to the clients other processes have of it (tmux sessions of
    /// environments; 0 for others).
    pub elsewhere: std::pin::Pin<Box<dyn Future<Output = usize> + Send>>,
    pub connected: bool,
    /// Where this client's output and status events arrive.
    pub queue: ClientQueue,
    /// Where this client's keystrokes go.
    pub input: InputPort,
}

impl Handler<Attach> for TerminalActor {
    type Result = MessageResult<Attach>;

    fn handle(&mut self, msg: Attach, ctx: &mut Context<Self>) -> Self::Result {
        if let Some(handle) = self.linger.take() {
            ctx.cancel_future(handle);
        }
        let status = match (&self.session, &self.waiting) {
            (Some(_), _) if self.idle_warned.is_some() => Some(Self::idle_status(self.idle_warned)),
            (Some(_), _) => Some(TermEvent::Status {
                state: TermState::Connected,
                message: "terminal attached".into(),
                stop_at: None,
            }),
            (None, Some(why)) => Some(TermEvent::Status {
                state: TermState::Reconnecting,
                message: why.clone(),
                stop_at: None,
            }),
            (None, None) => None,
        };
        let joined = self.fanout.attach(msg.cols, msg.rows, msg.resume, status);
        self.registration.stats.set_clients(self.fanout.len());
        let published = self.publish_clients(ctx);
        self.use_size_of(joined.id);
        if joined.fresh_screen {
            self.redraw(ctx);
        }
        MessageResult(Attached {
            client: joined.id,
            clients: self.fanout.len(),
            elsewhere: Box::pin(self.clients_elsewhere(published)),
            connected: self.session.is_some(),
            queue: joined.queue,
            input: InputPort {
                client: joined.id,
                writer: self.writer.subscribe(),
                size_owner: self.size_owner.clone(),
                actor: self.own_handle(ctx),
                activity: self.activity.clone(),
                client_address: msg.client_address,
            },
        })
    }
}

/// Ends the terminal for every client, saying why (its server was deleted).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Shut(pub String);

impl Handler<Shut> for TerminalActor {
    type Result = ();

    fn handle(&mut self, Shut(why): Shut, ctx: &mut Context<Self>) {
        self.close(why, ctx);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Detach {
    pub client: u64,
}

impl Handler<Detach> for TerminalActor {
    type Result = ();

    fn handle(&mut self, msg: Detach, ctx: &mut Context<Self>) {
        self.fanout.detach(msg.client);
        self.registration.stats.set_clients(self.fanout.len());
        drop(self.publish_clients(ctx));
        if self.fanout.is_empty() && self.linger.is_none() {
            self.linger = Some(ctx.run_later(self.settings.linger, |act, ctx| {
                if act.fanout.is_empty() {
                    ctx.stop();
                }
            }));
        }
    }
}

/// A client's way to type: keystrokes go from its connection straight to the SSH
/// channel's writer (in order, never through the actor's mailbox, so a flood of
/// output being fanned out does not delay an echo). The actor only hears about a
/// keystroke when it makes another client's size the one that applies.
pub struct InputPort {
    client: u64,
    writer: watch::Receiver<Option<mpsc::Sender<WriterCmd>>>,
    size_owner: Arc<AtomicU64>,
    actor: Handle<TerminalActor>,
    activity: ActivityReport,
    client_address: Option<String>,
}

impl InputPort {
    /// Sends keystrokes; the error says why they were not sent.
    pub fn send(&self, data: String) -> Result<(), &'static str> {
        if self.size_owner.load(Ordering::Relaxed) != self.client {
            self.actor.do_send(Active {
                client: self.client,
            });
        }
        self.activity.input(self.client_address.as_deref());
        const RECONNECTING: &str = "the terminal is reconnecting; input was not sent";
        let writer = self.writer.borrow().clone().ok_or(RECONNECTING)?;
        writer
            .try_send(WriterCmd::Input(data.into_bytes()))
            .map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => {
                    "input is arriving faster than the machine takes it; slow down"
                }
                // The SSH channel just closed; the actor is reconnecting.
                mpsc::error::TrySendError::Closed(_) => RECONNECTING,
            })
    }
}

/// Reports a session's input to its environment as activity (the idle auto-stop's
/// rule): at most once per `every` for the whole session, so that typing costs no
/// message per keystroke, and at once while an idle warning is on, so that the
/// first keystroke cancels it.
#[derive(Clone)]
struct ActivityReport {
    /// The environment's actor (a server's terminal reports no activity).
    to: Option<Recipient<NoteActivity>>,
    session: String,
    every: Duration,
    last: Arc<Mutex<Option<Instant>>>,
    env: watch::Receiver<EnvState>,
}

impl ActivityReport {
    fn input(&self, client_address: Option<&str>) {
        let Some(to) = &self.to else { return };
        let warned = self.env.borrow().idle_stop_at.is_some();
        let now = Instant::now();
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if !warned && last.is_some_and(|at| now.duration_since(at) < self.every) {
                return;
            }
            *last = Some(now);
        }
        to.do_send(NoteActivity(Activity {
            session: Some(self.session.clone()),
            client_address: client_address.map(str::to_owned),
            ..Activity::now(ActivityKind::TerminalInput)
        }));
    }
}

/// A client typed: its size applies now.
#[derive(Message)]
#[rtype(result = "()")]
struct Active {
    client: u64,
}

impl Handler<Active> for TerminalActor {
    type Result = ();

    fn handle(&mut self, msg: Active, _: &mut Context<Self>) {
        self.use_size_of(msg.client);
    }
}

#[derive(Message)]
#[rtype(result = "()")]
pub struct Resize {
    pub client: u64,
    pub cols: u32,
    pub rows: u32,
}

impl Handler<Resize> for TerminalActor {
    type Result = ();

    fn handle(&mut self, msg: Resize, _: &mut Context<Self>) {
        self.fanout.set_size(msg.client, msg.cols, msg.rows);
        self.use_size_of(msg.client);
    }
}
