//! What operators see of the live actor system. actix exposes no mailbox depth,
//! message counts or time in queue, so they are measured here: messages sent
//! through a [`Handle`] are wrapped in [`Tracked`], counted into the target's
//! mailbox on send and out of it when its handler runs. Every live actor (and every
//! WebSocket session) is registered with the [`Inspector`] while it lives, so the
//! admin API and the Prometheus gauges read the same figures.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix::dev::{MessageResponse, ToEnvelope};
use actix::prelude::*;
use chrono::{DateTime, Utc};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    UserSupervisor,
    Environment,
    Terminal,
    /// A server a user registered (their own SSH host).
    Server,
    /// A compose app on such a server, while a run or its auto-stop is under way.
    App,
    #[serde(rename = "websocket")]
    WebSocket,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::UserSupervisor,
        Kind::Environment,
        Kind::Terminal,
        Kind::Server,
        Kind::App,
        Kind::WebSocket,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::UserSupervisor => "user_supervisor",
            Kind::Environment => "environment",
            Kind::Terminal => "terminal",
            Kind::Server => "server",
            Kind::App => "app",
            Kind::WebSocket => "websocket",
        }
    }
}

/// Live figures of one actor.
#[derive(Debug)]
pub struct ActorStats {
    pub kind: Kind,
    /// Stable within the tree: `user:<uuid>`, `environment:<uuid>`,
    /// `terminal:<uuid>:<mode>:<session>`, `server:<uuid>`, `app:<uuid>`, `websocket:<n>`.
    pub id: String,
    /// Where the node hangs in the tree: the first of these that is alive (a
    /// terminal's environment actor may have gone idle while its supervisor lives).
    pub parents: Vec<String>,
    started: Instant,
    started_at: DateTime<Utc>,
    handled: AtomicU64,
    queued: AtomicI64,
    /// One more than the milliseconds after `started` of the last activity (0:
    /// none yet).
    last_activity_ms: AtomicU64,
    clients: AtomicI64,
    state: Mutex<String>,
    totals: Arc<KindTotals>,
}

impl ActorStats {
    /// A message was put into this actor's mailbox.
    pub fn sent(&self) {
        self.queued.fetch_add(1, Ordering::Relaxed);
    }

    /// A message sent at `sent_at` is being handled.
    pub fn received(&self, sent_at: Instant) {
        self.queued.fetch_sub(1, Ordering::Relaxed);
        self.activity();
        self.totals
            .queue_seconds
            .record(sent_at.elapsed().as_secs_f64());
    }

    /// Something happened that was not a tracked message (a frame, say).
    pub fn activity(&self) {
        self.handled.fetch_add(1, Ordering::Relaxed);
        self.totals.handled.increment(1);
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_activity_ms.store(ms + 1, Ordering::Relaxed);
    }

    pub fn set_state(&self, state: impl Into<String>) {
        if let Ok(mut s) = self.state.lock() {
            *s = state.into();
        }
    }

    pub fn set_clients(&self, n: usize) {
        self.clients
            .store(i64::try_from(n).unwrap_or(i64::MAX), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> NodeView {
        let last = self.last_activity_ms.load(Ordering::Relaxed);
        NodeView {
            kind: self.kind,
            id: self.id.clone(),
            parent: None,
            state: self.state.lock().map(|s| s.clone()).unwrap_or_default(),
            started_at: self.started_at,
            uptime_seconds: self.started.elapsed().as_secs_f64(),
            mailbox_depth: self.queued.load(Ordering::Relaxed).max(0),
            messages_handled: self.handled.load(Ordering::Relaxed),
            clients: self.clients.load(Ordering::Relaxed),
            last_activity_at: last
                .checked_sub(1)
                .and_then(|ms| i64::try_from(ms).ok())
                .and_then(chrono::Duration::try_milliseconds)
                .and_then(|d| self.started_at.checked_add_signed(d)),
            children: Vec::new(),
        }
    }
}

/// One node of the tree, as the admin API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeView {
    pub kind: Kind,
    pub id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    pub state: String,
    pub started_at: DateTime<Utc>,
    pub uptime_seconds: f64,
    pub mailbox_depth: i64,
    pub messages_handled: u64,
    pub clients: i64,
    pub last_activity_at: Option<DateTime<Utc>>,
    pub children: Vec<NodeView>,
}

/// Figures per kind, kept after the actors are gone.
#[derive(Debug)]
pub struct KindTotals {
    /// `devpocket_actor_messages_total{kind}`
    handled: ::metrics::Counter,
    /// `devpocket_actor_queue_seconds{kind}`
    queue_seconds: ::metrics::Histogram,
}

impl KindTotals {
    fn new(kind: Kind, recorder: &dyn ::metrics::Recorder) -> Self {
        ::metrics::with_local_recorder(recorder, || Self {
            handled: ::metrics::counter!("devpocket_actor_messages_total", "kind" => kind.as_str()),
            queue_seconds: ::metrics::histogram!("devpocket_actor_queue_seconds", "kind" => kind.as_str()),
        })
    }
}

/// Every live actor, by a process-unique number.
#[derive(Debug)]
pub struct Inspector {
    nodes: Mutex<HashMap<u64, Arc<ActorStats>>>,
    next: AtomicU64,
    totals: HashMap<Kind, Arc<KindTotals>>,
}

/// An actor's registration; dropping it removes the actor from the tree.
#[derive(Debug)]
pub struct Registration {
    inspector: Arc<Inspector>,
    key: u64,
    pub stats: Arc<ActorStats>,
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Ok(mut nodes) = self.inspector.nodes.lock() {
            nodes.remove(&self.key);
        }
    }
}

impl Inspector {
    /// Per-kind metrics go to `recorder` (the server's Prometheus recorder).
    pub fn new(recorder: &dyn ::metrics::Recorder) -> Arc<Self> {
        Arc::new(Self {
            nodes: Mutex::default(),
            next: AtomicU64::new(1),
            totals: Kind::ALL
                .iter()
                .map(|k| (*k, Arc::new(KindTotals::new(*k, recorder))))
                .collect(),
        })
    }

    pub fn register(
        self: &Arc<Self>,
        kind: Kind,
        id: String,
        parents: Vec<String>,
    ) -> Registration {
        let stats = Arc::new(ActorStats {
            kind,
            id,
            parents,
            started: Instant::now(),
            started_at: Utc::now(),
            handled: AtomicU64::new(0),
            queued: AtomicI64::new(0),
            last_activity_ms: AtomicU64::new(0),
            clients: AtomicI64::new(0),
            state: Mutex::new(String::new()),
            totals: self.totals(kind),
        });
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut nodes) = self.nodes.lock() {
            nodes.insert(key, stats.clone());
        }
        Registration {
            inspector: self.clone(),
            key,
            stats,
        }
    }

    fn totals(&self, kind: Kind) -> Arc<KindTotals> {
        match self.totals.get(&kind) {
            Some(t) => t.clone(),
            // Unreachable: every kind is in the map.
            None => Arc::new(KindTotals::new(kind, &::metrics::NoopRecorder)),
        }
    }

    /// Messages waiting in the mailboxes of live actors of `kind` (what a dead
    /// actor's mailbox held is gone with it).
    pub fn mailbox_depth(&self, kind: Kind) -> i64 {
        self.nodes.lock().map_or(0, |nodes| {
            nodes
                .values()
                .filter(|s| s.kind == kind)
                .map(|s| s.queued.load(Ordering::Relaxed).max(0))
                .sum()
        })
    }

    /// Live actors by kind.
    pub fn alive(&self) -> HashMap<Kind, usize> {
        let mut counts: HashMap<Kind, usize> = Kind::ALL.iter().map(|k| (*k, 0)).collect();
        if let Ok(nodes) = self.nodes.lock() {
            for stats in nodes.values() {
                *counts.entry(stats.kind).or_default() += 1;
            }
        }
        counts
    }

    /// Every live node, flat, each with the parent it hangs under.
    pub fn nodes(&self) -> Vec<NodeView> {
        let Ok(nodes) = self.nodes.lock() else {
            return Vec::new();
        };
        let ids: std::collections::HashSet<&str> = nodes.values().map(|s| s.id.as_str()).collect();
        nodes
            .values()
            .map(|s| {
                let mut view = s.snapshot();
                view.parent = s.parents.iter().find(|p| ids.contains(p.as_str())).cloned();
                view
            })
            .collect()
    }

    /// The live tree: user supervisors at the root, each node's children under it.
    /// A node none of whose parents lives (a WebSocket still waiting for its
    /// terminal) is a root.
    pub fn tree(&self) -> Vec<NodeView> {
        let mut by_parent: HashMap<Option<String>, Vec<NodeView>> = HashMap::new();
        for node in self.nodes() {
            by_parent.entry(node.parent.clone()).or_default().push(node);
        }
        fn build(
            parent: Option<String>,
            by_parent: &mut HashMap<Option<String>, Vec<NodeView>>,
        ) -> Vec<NodeView> {
            let mut level = by_parent.remove(&parent).unwrap_or_default();
            level.sort_by(|a, b| a.started_at.cmp(&b.started_at).then(a.id.cmp(&b.id)));
            for node in &mut level {
                node.children = build(Some(node.id.clone()), by_parent);
            }
            level
        }
        build(None, &mut by_parent)
    }

    /// One node with its subtree.
    pub fn find(&self, id: &str) -> Option<NodeView> {
        fn search(nodes: Vec<NodeView>, id: &str) -> Option<NodeView> {
            for node in nodes {
                if node.id == id {
                    return Some(node);
                }
                if let Some(found) = search(node.children, id) {
                    return Some(found);
                }
            }
            None
        }
        search(self.tree(), id)
    }
}

/// A message on its way, with when it was sent.
pub struct Tracked<M> {
    msg: M,
    sent_at: Instant,
}

impl<M: Message> Message for Tracked<M>
where
    M::Result: 'static,
{
    type Result = M::Result;
}

/// The wrapped handler's response, answered as the tracked message's.
pub struct Delegated<R>(R);

impl<A, M, R> MessageResponse<A, Tracked<M>> for Delegated<R>
where
    A: Actor,
    M: Message,
    M::Result: 'static,
    R: MessageResponse<A, M>,
{
    fn handle(self, ctx: &mut A::Context, tx: Option<tokio::sync::oneshot::Sender<M::Result>>) {
        self.0.handle(ctx, tx);
    }
}

/// An actor whose messages are measured; see [`instrumented!`](crate::instrumented).
pub trait Instrumented: Actor {
    fn stats(&self) -> &Arc<ActorStats>;
}

/// Implements `Handler<Tracked<M>>` for an [`Instrumented`] actor, for every
/// message it handles.
#[macro_export]
macro_rules! instrumented {
    ($actor:ty) => {
        impl<M> ::actix::Handler<$crate::inspect::Tracked<M>> for $actor
        where
            $actor: ::actix::Handler<M>,
            M: ::actix::Message + 'static,
            M::Result: 'static,
        {
            type Result = $crate::inspect::Delegated<<$actor as ::actix::Handler<M>>::Result>;

            fn handle(
                &mut self,
                tracked: $crate::inspect::Tracked<M>,
                ctx: &mut Self::Context,
            ) -> Self::Result {
                let msg = $crate::inspect::Tracked::open(
                    tracked,
                    $crate::inspect::Instrumented::stats(self),
                );
                $crate::inspect::Delegated::new(<$actor as ::actix::Handler<M>>::handle(
                    self, msg, ctx,
                ))
            }
        }
    };
}

impl<M> Tracked<M> {
    /// Counts the message out of the mailbox; returns it.
    pub fn open(self, stats: &ActorStats) -> M {
        stats.received(self.sent_at);
        self.msg
    }
}

impl<R> Delegated<R> {
    pub fn new(r: R) -> Self {
        Self(r)
    }
}

/// An actor's address with its figures: messages sent through it are measured.
pub struct Handle<A: Actor> {
    pub addr: Addr<A>,
    pub stats: Arc<ActorStats>,
}

impl<A: Actor> Clone for Handle<A> {
    fn clone(&self) -> Self {
        Self {
            addr: self.addr.clone(),
            stats: self.stats.clone(),
        }
    }
}

impl<A> Handle<A>
where
    A: Instrumented<Context = Context<A>>,
{
    /// Starts `actor` (on the current arbiter) and returns its handle.
    pub fn start(actor: A) -> Self {
        let stats = actor.stats().clone();
        Self {
            addr: actor.start(),
            stats,
        }
    }

    /// Starts `actor` on `arbiter` and returns its handle.
    pub fn start_in(actor: A, arbiter: &ArbiterHandle) -> Self
    where
        A: Send,
    {
        let stats = actor.stats().clone();
        Self {
            addr: A::start_in_arbiter(arbiter, move |_| actor),
            stats,
        }
    }
}

impl<A: Actor> Handle<A> {
    pub fn connected(&self) -> bool {
        self.addr.connected()
    }

    fn wrap<M>(&self, msg: M) -> Tracked<M> {
        self.stats.sent();
        Tracked {
            msg,
            sent_at: Instant::now(),
        }
    }

    pub async fn send<M>(&self, msg: M) -> Result<M::Result, MailboxError>
    where
        M: Message + Send + 'static,
        M::Result: Send + 'static,
        A: Handler<Tracked<M>>,
        A::Context: ToEnvelope<A, Tracked<M>>,
    {
        let tracked = self.wrap(msg);
        self.addr.send(tracked).await
    }

    pub fn do_send<M>(&self, msg: M)
    where
        M: Message + Send + 'static,
        M::Result: Send + 'static,
        A: Handler<Tracked<M>>,
        A::Context: ToEnvelope<A, Tracked<M>>,
    {
        if self.addr.connected() {
            let tracked = self.wrap(msg);
            self.addr.do_send(tracked);
        }
    }
}
