//! `TerminalActor`: one per (environment, session name), shared by every client of
//! that session. It owns one SSH connection with a PTY channel running
//! `tmux new-session -A -s NAME`, always drains it (an unread russh channel stalls
//! the whole connection), numbers the output, keeps a bounded replay buffer for
//! resuming clients, and fans output out through a bounded queue per client: a
//! client that cannot keep up is never waited for — it is skipped ahead to a fresh
//! screen (tmux sessions) or dropped with a close code that says how to resume.
//!
//! tmux is the persistence layer: if SSH drops, the actor reconnects with backoff
//! and re-attaches to the same tmux session, so the shell survives. After the last
//! client leaves, the actor lingers, then closes SSH (tmux keeps the shell).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use actix::prelude::*;
use bytes_utf8::Utf8Carry;
use futures_util::FutureExt;
use russh::ChannelMsg;
use tokio::sync::{mpsc, watch};
use uuid::Uuid;

use crate::deps::Deps;
use crate::inspect::{ActorStats, Handle, Instrumented, Kind, Registration};
use crate::model::{EnvironmentRecord, Phase, Status};
use crate::ssh::{SshSession, shell_quote};

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

/// One numbered piece of output, shared by the replay buffer and every client's
/// queue: it is stored once however many clients there are.
#[derive(Debug)]
pub struct Chunk {
    pub seq: u64,
    pub data: String,
    wire: OnceLock<bytestring::ByteString>,
}

impl Chunk {
    fn new(seq: u64, data: String) -> Self {
        Self {
            seq,
            data,
            wire: OnceLock::new(),
        }
    }

    /// The chunk as a wire frame, built by the first client that sends it and
    /// shared (not copied) by the others.
    pub fn wire(&self, build: impl FnOnce(&Chunk) -> String) -> bytestring::ByteString {
        self.wire.get_or_init(|| build(self).into()).clone()
    }
}

/// What a client receives.
#[derive(Debug, Clone)]
pub enum TermEvent {
    Output(Arc<Chunk>),
    /// `connected`, `reconnecting` or `closed`.
    Status {
        state: &'static str,
        message: String,
    },
}

mod bytes_utf8 {
    //! Decodes a byte stream as UTF-8, carrying a character split across reads over
    //! to the next read: no U+FFFD that was not in the source.

    #[derive(Debug, Default)]
    pub struct Utf8Carry {
        pending: Vec<u8>,
    }

    impl Utf8Carry {
        pub fn push(&mut self, chunk: &[u8]) -> String {
            self.pending.extend_from_slice(chunk);
            let mut out = String::new();
            loop {
                match std::str::from_utf8(&self.pending) {
                    Ok(text) => {
                        out.push_str(text);
                        self.pending.clear();
                        return out;
                    }
                    Err(e) => {
                        let valid = e.valid_up_to();
                        // Safe by construction: the prefix was just validated.
                        out.push_str(
                            std::str::from_utf8(&self.pending[..valid]).unwrap_or_default(),
                        );
                        match e.error_len() {
                            // An incomplete character at the end: keep it for later.
                            None => {
                                self.pending.drain(..valid);
                                return out;
                            }
                            // Bytes that are invalid in the source itself.
                            Some(bad) => {
                                out.push('\u{FFFD}');
                                self.pending.drain(..valid + bad);
                            }
                        }
                    }
                }
            }
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn carries_split_characters() {
            let mut c = Utf8Carry::default();
            let bytes = "añ€😀".as_bytes();
            let mut out = String::new();
            for b in bytes {
                out.push_str(&c.push(&[*b]));
            }
            assert_eq!(out, "añ€😀");
            assert_eq!(c.push(&[0xff, b'a']), "\u{FFFD}a");
        }
    }
}

/// The actor's end of a client's bounded queue.
struct Client {
    tx: mpsc::Sender<TermEvent>,
    /// Output bytes queued and not yet taken by the client's connection.
    queued: Arc<AtomicUsize>,
    cols: u32,
    rows: u32,
    /// Fell behind: gets no output until it catches up, then a fresh screen.
    skipping: bool,
}

/// Why an event could not be queued for a client.
enum Refused {
    /// The client fell behind: its queue is full.
    Full,
    /// The client is gone.
    Closed,
}

impl Client {
    fn offer(&self, event: TermEvent, budget: usize) -> Result<(), Refused> {
        let len = match &event {
            TermEvent::Output(chunk) => chunk.data.len(),
            TermEvent::Status { .. } => 0,
        };
        if len > 0 && self.queued.load(Ordering::Relaxed) + len > budget {
            return Err(Refused::Full);
        }
        self.queued.fetch_add(len, Ordering::Relaxed);
        self.tx.try_send(event).map_err(|e| {
            self.queued.fetch_sub(len, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => Refused::Full,
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }
        })
    }
}

/// A client's end of its queue: at most `client_queue` events and
/// `client_queue_bytes` bytes of output. A client that would exceed either is
/// dropped by the actor; it then receives what was queued, and `None`.
pub struct ClientQueue {
    rx: mpsc::Receiver<TermEvent>,
    queued: Arc<AtomicUsize>,
}

impl ClientQueue {
    pub async fn recv(&mut self) -> Option<TermEvent> {
        let event = self.rx.recv().await?;
        if let TermEvent::Output(chunk) = &event {
            self.queued.fetch_sub(chunk.data.len(), Ordering::Relaxed);
        }
        Some(event)
    }
}

enum WriterCmd {
    Input(Vec<u8>),
    Resize(u32, u32),
}

pub struct TerminalActor {
    deps: Arc<Deps>,
    settings: TerminalSettings,
    environment_id: Uuid,
    name: String,
    mode: SessionMode,
    clients: HashMap<u64, Client>,
    next_client: u64,
    ring: VecDeque<Arc<Chunk>>,
    ring_bytes: usize,
    /// The seq of the last output frame.
    seq: u64,
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
    registration: Registration,
}

const REDRAW_COALESCE: Duration = Duration::from_millis(20);
/// A repaint prints nothing; past this the command is stopped (on its own channel,
/// so the terminal's connection carries on).
const REDRAW_MAX_BYTES: usize = 64 * 1024;
const REDRAW_TIMEOUT: Duration = Duration::from_secs(5);
const CATCH_UP_POLL: Duration = Duration::from_millis(50);
/// Output already received is joined into frames of up to this size.
const COALESCE_BYTES: usize = 64 * 1024;

impl TerminalActor {
    pub fn new(
        deps: Arc<Deps>,
        settings: TerminalSettings,
        user_id: Uuid,
        environment_id: Uuid,
        name: String,
        mode: SessionMode,
    ) -> Self {
        let id = match mode {
            SessionMode::Tmux => format!("terminal:{environment_id}:{name}"),
            SessionMode::Shell => format!("terminal:{environment_id}:shell:{name}"),
        };
        let registration = deps.inspector.register(
            Kind::Terminal,
            id,
            vec![
                format!("environment:{environment_id}"),
                format!("user:{user_id}"),
            ],
        );
        registration.stats.set_state("connecting");
        Self {
            registration,
            deps,
            settings,
            environment_id,
            name,
            mode,
            clients: HashMap::new(),
            next_client: 1,
            ring: VecDeque::new(),
            ring_bytes: 0,
            seq: 0,
            size: (80, 24),
            size_owner: Arc::new(AtomicU64::new(0)),
            writer: watch::Sender::new(None),
            session: None,
            generation: 0,
            attempts: 0,
            linger: None,
            redraw_pending: false,
            catch_up: None,
        }
    }

    fn own_handle(&self, ctx: &Context<Self>) -> Handle<Self> {
        Handle {
            addr: ctx.address(),
            stats: self.registration.stats.clone(),
        }
    }

    /// Offers an event to every client. A client whose queue is full is skipped
    /// ahead in a tmux session (no more output until it has taken what was queued,
    /// then a fresh screen: see [`Self::watch_skipping`]); without tmux there is no
    /// screen to redraw, so it is dropped and told to resume.
    fn broadcast(&mut self, event: &TermEvent) {
        let budget = self.settings.client_queue_bytes;
        let output = matches!(event, TermEvent::Output(_));
        let skip_ahead = output && self.mode == SessionMode::Tmux;
        let before = self.clients.len();
        self.clients.retain(|id, client| {
            if output && client.skipping {
                return true;
            }
            match client.offer(event.clone(), budget) {
                Ok(()) => true,
                Err(Refused::Full) if skip_ahead => {
                    tracing::info!(
                        client = id,
                        "a terminal client fell behind; skipping it ahead"
                    );
                    client.skipping = true;
                    true
                }
                Err(Refused::Full) => {
                    tracing::info!(client = id, "dropping a terminal client that fell behind");
                    false
                }
                Err(Refused::Closed) => false,
            }
        });
        if self.clients.len() != before {
            self.registration.stats.set_clients(self.clients.len());
        }
    }

    /// While a client is being skipped ahead, checks every `CATCH_UP_POLL` whether
    /// it has taken most of what was queued; then it gets live output again and a
    /// repaint, so its screen is whole.
    fn watch_skipping(&mut self, ctx: &mut Context<Self>) {
        if self.catch_up.is_some() || !self.clients.values().any(|c| c.skipping) {
            return;
        }
        let low_water = self.settings.client_queue_bytes / 4;
        self.catch_up = Some(ctx.run_interval(CATCH_UP_POLL, move |act, ctx| {
            let mut caught_up = false;
            for client in act.clients.values_mut().filter(|c| c.skipping) {
                if client.queued.load(Ordering::Relaxed) <= low_water
                    && client.tx.capacity() >= client.tx.max_capacity() / 2
                {
                    client.skipping = false;
                    caught_up = true;
                }
            }
            if caught_up {
                act.redraw(ctx);
            }
            if !act.clients.values().any(|c| c.skipping)
                && let Some(handle) = act.catch_up.take()
            {
                ctx.cancel_future(handle);
            }
        }));
    }

    fn status(&mut self, state: &'static str, message: impl Into<String>) {
        self.registration.stats.set_state(state);
        let event = TermEvent::Status {
            state,
            message: message.into(),
        };
        self.broadcast(&event);
    }

    fn push_output(&mut self, data: String) {
        if data.is_empty() {
            return;
        }
        self.seq += 1;
        let chunk = Arc::new(Chunk::new(self.seq, data));
        self.ring_bytes += chunk.data.len();
        self.ring.push_back(chunk.clone());
        while self.ring_bytes > self.settings.buffer_bytes {
            match self.ring.pop_front() {
                Some(old) => self.ring_bytes -= old.data.len(),
                None => break,
            }
        }
        self.broadcast(&TermEvent::Output(chunk));
    }

    /// The most recently active client's size wins (like tmux's `latest`).
    fn use_size_of(&mut self, client: u64) {
        let Some(c) = self.clients.get(&client) else {
            return;
        };
        self.size_owner.store(client, Ordering::Relaxed);
        let size = (c.cols, c.rows);
        if size != self.size {
            self.size = size;
            if let Some(w) = &*self.writer.borrow() {
                let _ = w.try_send(WriterCmd::Resize(size.0, size.1));
            }
        }
    }

    /// Asks tmux to repaint the whole screen, so a client that joined (or fell out
    /// of the replay buffer) sees the current screen instead of a garbled tail.
    /// Requests within `REDRAW_COALESCE` make one repaint: a hundred clients
    /// joining at once cost the others one repaint, not a hundred.
    fn redraw(&mut self, ctx: &mut Context<Self>) {
        if self.mode != SessionMode::Tmux || self.redraw_pending {
            return;
        }
        self.redraw_pending = true;
        ctx.run_later(REDRAW_COALESCE, |act, _| {
            act.redraw_pending = false;
            let Some(session) = act.session.clone() else {
                return;
            };
            // Every client of this session (ours among them); a bare
            // `refresh-client` would repaint whichever client was used last.
            let command = format!(
                "tmux list-clients -t ={} -F '#{{client_name}}' | \
                 while read -r c; do tmux refresh-client -t \"$c\"; done",
                shell_quote(&act.name)
            );
            actix::spawn(async move {
                let _ = session
                    .run(&command, REDRAW_TIMEOUT, REDRAW_MAX_BYTES)
                    .await;
            });
        });
    }

    fn connect(&mut self, ctx: &mut Context<Self>) {
        self.generation += 1;
        let generation = self.generation;
        let (store, id) = (self.deps.store.clone(), self.environment_id);
        let (name, mode, (cols, rows)) = (self.name.clone(), self.mode, self.size);
        let me = self.own_handle(ctx);
        let deps = self.deps.clone();
        let fut = async move {
            let loaded = store
                .load(id)
                .await
                .map_err(|e| Failure::Lost(e.to_string()))?;
            let record = running(loaded).map_err(Failure::Closed)?;
            let (Some(machine), Some(keys)) = (record.machine, record.keys) else {
                return Err(Failure::Lost("the environment has no machine".to_owned()));
            };
            let session = SshSession::connect(&machine, &keys.user_private).await;
            deps.ssh_connect("terminal", session.is_ok());
            let session = session.map_err(|e| Failure::Lost(e.to_string()))?;
            let command = match mode {
                SessionMode::Tmux => format!(
                    "cd; {UTF8_LOCALE}; exec tmux -u new-session -A -s {}",
                    shell_quote(&name)
                ),
                SessionMode::Shell => format!("cd; {UTF8_LOCALE}; exec \"${{SHELL:-/bin/sh}}\" -l"),
            };
            let channel = session
                .pty(&command, cols, rows)
                .await
                .map_err(|e| Failure::Lost(e.to_string()))?;
            Ok((Arc::new(session), channel))
        };
        ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
            if generation != act.generation {
                return;
            }
            match res {
                Ok((session, channel)) => {
                    let (mut reader, writer_half) = channel.split();
                    let (wtx, mut wrx) = mpsc::channel::<WriterCmd>(256);
                    // Writes happen in order, off the actor.
                    actix::spawn(async move {
                        while let Some(cmd) = wrx.recv().await {
                            let ok = match cmd {
                                WriterCmd::Input(bytes) => {
                                    writer_half.data(&bytes[..]).await.is_ok()
                                }
                                WriterCmd::Resize(c, r) => {
                                    writer_half.window_change(c, r, 0, 0).await.is_ok()
                                }
                            };
                            if !ok {
                                break;
                            }
                        }
                    });
                    // Always drain the channel.
                    let me2 = me.clone();
                    actix::spawn(async move {
                        let mut carry = Utf8Carry::default();
                        let mut open = true;
                        while open {
                            let Some(msg) = reader.wait().await else {
                                break;
                            };
                            let ChannelMsg::Data { data } = msg else {
                                continue;
                            };
                            let mut text = carry.push(&data);
                            // Output already waiting joins this frame: a flood makes
                            // fewer, larger frames; a keystroke's echo is not delayed.
                            while text.len() < COALESCE_BYTES {
                                match reader.wait().now_or_never() {
                                    Some(Some(ChannelMsg::Data { data })) => {
                                        text.push_str(&carry.push(&data));
                                    }
                                    Some(Some(_)) => {}
                                    Some(None) => {
                                        open = false;
                                        break;
                                    }
                                    None => break,
                                }
                            }
                            me2.do_send(Output { generation, text });
                        }
                        me2.do_send(Disconnected { generation });
                    });
                    act.session = Some(session);
                    act.writer.send_replace(Some(wtx));
                    act.attempts = 0;
                    act.status("connected", "terminal attached");
                    act.redraw(ctx);
                }
                Err(Failure::Closed(why)) => act.close(why, ctx),
                Err(Failure::Lost(message)) => act.reconnect(message, ctx),
            }
        }));
    }

    /// The SSH connection dropped. If the environment is no longer running — a
    /// stop or delete is written before the machine goes — that is why: the
    /// terminal closes, without a `reconnecting` first. Otherwise it reconnects.
    fn lost(&mut self, message: String, ctx: &mut Context<Self>) {
        self.session = None;
        self.writer.send_replace(None);
        let generation = self.generation;
        let (store, id) = (self.deps.store.clone(), self.environment_id);
        let check = async move { store.load(id).await.map(running) };
        ctx.spawn(check.into_actor(self).map(move |res, act, ctx| {
            if generation != act.generation {
                return;
            }
            match res {
                Ok(Err(why)) => act.close(why, ctx),
                // Still running, or the store cannot say: the connection was lost.
                Ok(Ok(_)) | Err(_) => act.reconnect(message, ctx),
            }
        }));
    }

    /// Tells every client the terminal is closed, and why, and stops.
    fn close(&mut self, why: String, ctx: &mut Context<Self>) {
        self.session = None;
        self.writer.send_replace(None);
        self.status("closed", why);
        self.clients.clear();
        ctx.stop();
    }

    /// Reconnects with backoff, telling the clients.
    fn reconnect(&mut self, message: String, ctx: &mut Context<Self>) {
        self.session = None;
        self.writer.send_replace(None);
        self.attempts += 1;
        self.deps.metric(|| {
            ::metrics::counter!("devpocket_ssh_reconnects_total", "purpose" => "terminal")
                .increment(1);
        });
        let delay = crate::backoff::Backoff::doubling(Duration::from_millis(200))
            .delay(self.attempts.min(5));
        self.status(
            "reconnecting",
            format!("connection lost ({message}); reconnecting"),
        );
        ctx.run_later(delay.min(Duration::from_secs(5)), |act, ctx| {
            if act.session.is_none() {
                act.connect(ctx);
            }
        });
    }
}

/// Terminals speak UTF-8 (frames are JSON text): unless the user's locale already
/// does, the PTY's programs are told so, whatever the machine's sshd passes (a
/// local machine's passes no locale at all). Without it tmux draws every
/// non-ASCII character as `_` and readline mangles typed ones; `tmux -u` says the
/// same to tmux itself.
const UTF8_LOCALE: &str = "case \"${LC_ALL:-${LC_CTYPE:-${LANG:-}}}\" in \
     *[Uu][Tt][Ff]-8*|*[Uu][Tt][Ff]8*) ;; \
     *) export LC_CTYPE=C.UTF-8; [ -z \"${LC_ALL:-}\" ] || export LC_ALL=C.UTF-8 ;; esac";

/// Why a connection attempt failed.
enum Failure {
    /// The environment is not running: the terminal closes, saying why.
    Closed(String),
    /// Anything else: the terminal reconnects.
    Lost(String),
}

/// The environment's record if it is running, or why the terminal closes.
fn running(record: Option<EnvironmentRecord>) -> Result<EnvironmentRecord, String> {
    let Some(record) = record else {
        return Err("the environment was deleted".to_owned());
    };
    match (record.status, record.phase) {
        (Status::Running, Phase::Ready) => Ok(record),
        (Status::Terminated, _) | (_, Phase::Deleting | Phase::Deleted) => {
            Err("the environment was deleted".to_owned())
        }
        (_, Phase::Stopping | Phase::Stopped) => Err("the environment was stopped".to_owned()),
        (status, phase) => Err(format!("the environment is {status} ({phase})")),
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
        self.connect(ctx);
    }

    fn stopped(&mut self, _: &mut Context<Self>) {
        if let Some(session) = self.session.take() {
            actix::spawn(async move { session.close().await });
        }
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
            self.push_output(msg.text);
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
}

pub struct Attached {
    pub client: u64,
    pub clients: usize,
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
        let id = self.next_client;
        self.next_client += 1;
        let (tx, rx) = mpsc::channel(self.settings.client_queue);
        let queued = Arc::new(AtomicUsize::new(0));
        let client = Client {
            tx,
            queued: queued.clone(),
            cols: msg.cols,
            rows: msg.rows,
            skipping: false,
        };
        let oldest = self.ring.front().map_or(self.seq + 1, |c| c.seq);
        let replay: Option<Vec<Arc<Chunk>>> = msg
            .resume
            .filter(|r| *r <= self.seq && r + 1 >= oldest)
            .map(|r| self.ring.iter().filter(|c| c.seq > r).cloned().collect());
        let budget = self.settings.client_queue_bytes;
        let fits = |frames: &Vec<Arc<Chunk>>| {
            frames.len() < self.settings.client_queue
                && frames.iter().map(|c| c.data.len()).sum::<usize>() <= budget
        };
        let mut fresh_screen = true;
        if let Some(frames) = replay.filter(fits) {
            for chunk in frames {
                let _ = client.offer(TermEvent::Output(chunk), budget);
            }
            fresh_screen = false;
        }
        if self.session.is_some() {
            let _ = client.offer(
                TermEvent::Status {
                    state: "connected",
                    message: "terminal attached".into(),
                },
                budget,
            );
        }
        self.clients.insert(id, client);
        self.registration.stats.set_clients(self.clients.len());
        self.use_size_of(id);
        if fresh_screen {
            self.redraw(ctx);
        }
        MessageResult(Attached {
            client: id,
            clients: self.clients.len(),
            connected: self.session.is_some(),
            queue: ClientQueue { rx, queued },
            input: InputPort {
                client: id,
                writer: self.writer.subscribe(),
                size_owner: self.size_owner.clone(),
                actor: self.own_handle(ctx),
            },
        })
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
        self.clients.remove(&msg.client);
        self.registration.stats.set_clients(self.clients.len());
        if self.clients.is_empty() && self.linger.is_none() {
            self.linger = Some(ctx.run_later(self.settings.linger, |act, ctx| {
                if act.clients.is_empty() {
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
}

impl InputPort {
    /// Sends keystrokes; the error says why they were not sent.
    pub fn send(&self, data: String) -> Result<(), &'static str> {
        if self.size_owner.load(Ordering::Relaxed) != self.client {
            self.actor.do_send(Active {
                client: self.client,
            });
        }
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
        if let Some(c) = self.clients.get_mut(&msg.client) {
            c.cols = msg.cols;
            c.rows = msg.rows;
        }
        self.use_size_of(msg.client);
    }
}

#[cfg(test)]
mod tests {
    use super::UTF8_LOCALE;

    /// The character type `sh` ends up with, after `UTF8_LOCALE`, from `env`.
    fn ctype_after(env: &[(&str, &str)]) -> String {
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "{UTF8_LOCALE}; echo \"${{LC_ALL:-${{LC_CTYPE:-${{LANG:-}}}}}}|${{LANG:-}}\""
            ))
            .env_clear()
            .envs(env.iter().copied())
            .output()
            .expect("sh runs");
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8")
            .trim()
            .to_owned()
    }

    #[test]
    fn a_terminal_is_utf8_whatever_the_locale_it_is_given() {
        // Nothing, or a locale of another character set: UTF-8, the language kept.
        assert_eq!(ctype_after(&[]), "C.UTF-8|");
        assert_eq!(ctype_after(&[("LANG", "C")]), "C.UTF-8|C");
        assert_eq!(ctype_after(&[("LC_ALL", "POSIX")]), "C.UTF-8|");
        // A UTF-8 locale the user chose is left alone.
        assert_eq!(
            ctype_after(&[("LANG", "en_US.UTF-8")]),
            "en_US.UTF-8|en_US.UTF-8"
        );
        assert_eq!(ctype_after(&[("LC_CTYPE", "C.utf8")]), "C.utf8|");
    }
}
