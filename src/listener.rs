//! What other server processes on the same database tell this one, through
//! PostgreSQL `LISTEN`/`NOTIFY` on one connection of its own:
//!
//! - [`CHANNEL`]: what one process changed that others may hold in memory — a
//!   signed-out session, a changed or deactivated account, every list (a template
//!   changed) — is dropped from every process's caches as the notification arrives,
//!   rather than when the cache's time is up. Routes publish these.
//! - `devpocket_environment` (`user:environment`, sent by a trigger at the commit
//!   of any change of an environment): the user's list is dropped, and this
//!   process's actor of the environment, if it only follows it, reads it again.
//! - `devpocket_order` (`user:environment`, by a trigger): an order was written for
//!   the environment's owner (see `devpocket_actors::remote`), which claims it.
//! - `devpocket_answer` (the order's id, by a trigger): the owner answered.
//!
//! A process that loses its listening connection may have missed notifications: it
//! forgets everything it caches, its actors look again, and it listens again.

use std::sync::{Arc, Weak};
use std::time::Duration;

use diesel::sql_types::Text;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use futures_util::StreamExt;
use uuid::Uuid;

use devpocket_actors::registry::Heard;

use crate::startup::AppState;

pub const CHANNEL: &str = "devpocket_invalidate";
const ENVIRONMENTS: &str = "devpocket_environment";
const ORDERS: &str = "devpocket_order";
const ANSWERS: &str = "devpocket_answer";

/// How often the listener checks that its connection and its application live.
const CHECK_EVERY: Duration = Duration::from_secs(15);

/// What to drop from every process's caches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalidation {
    /// A sign-in session ended (logout, refresh-token reuse).
    Session(Uuid),
    /// An account changed (plan, deactivation, password, profile, deletion).
    User(Uuid),
    /// Every user's environments may have changed (a template changed).
    AllLists,
}

impl Invalidation {
    fn encode(self) -> String {
        match self {
            Invalidation::Session(id) => format!("session:{id}"),
            Invalidation::User(id) => format!("user:{id}"),
            Invalidation::AllLists => "lists".to_owned(),
        }
    }

    fn decode(payload: &str) -> Option<Self> {
        if payload == "lists" {
            return Some(Invalidation::AllLists);
        }
        let (kind, id) = payload.split_once(':')?;
        let id = Uuid::parse_str(id).ok()?;
        match kind {
            "session" => Some(Invalidation::Session(id)),
            "user" => Some(Invalidation::User(id)),
            _ => None,
        }
    }

    fn apply(self, state: &AppState) {
        match self {
            Invalidation::Session(id) => state.sessions.forget_session(id),
            Invalidation::User(id) => state.sessions.forget_user(id),
            Invalidation::AllLists => state.lists.forget_all(),
        }
    }
}

/// Invalidations waiting to be sent at most; past that they are dropped (logged),
/// and other processes' caches expire on their own.
const QUEUE: usize = 4096;

/// Where invalidations are queued for the listener, which sends them on its own
/// connection: telling other processes never takes a pooled connection and never
/// waits.
#[derive(Clone)]
pub struct Outgoing(tokio::sync::mpsc::Sender<Invalidation>);

impl Outgoing {
    pub fn new() -> (Self, tokio::sync::mpsc::Receiver<Invalidation>) {
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE);
        (Self(tx), rx)
    }

    pub fn send(&self, what: Invalidation) {
        if let Err(error) = self.0.try_send(what) {
            tracing::warn!(%error, ?what, "other processes could not be told to drop a cached entry");
        }
    }
}

/// Drops `what` here at once, and tells every other process.
pub fn publish(state: &AppState, what: Invalidation) {
    what.apply(state);
    state.invalidations.send(what);
}

async fn notify(conn: &mut AsyncPgConnection, what: Invalidation) -> diesel::QueryResult<()> {
    diesel::sql_query("SELECT pg_notify($1, $2)")
        .bind::<Text, _>(CHANNEL)
        .bind::<Text, _>(what.encode())
        .execute(conn)
        .await
        .map(drop)
}

/// Notifications may have been missed.
fn forget_everything(state: &AppState) {
    state.sessions.forget_all();
    state.lists.forget_all();
    state.actors.heard(Heard::MissedSome);
}

/// `user:environment`.
fn two_ids(payload: &str) -> Option<(Uuid, Uuid)> {
    let (user, environment) = payload.split_once(':')?;
    Some((
        Uuid::parse_str(user).ok()?,
        Uuid::parse_str(environment).ok()?,
    ))
}

fn heard(state: &AppState, channel: &str, payload: &str) {
    let understood = match channel {
        CHANNEL => Invalidation::decode(payload).map(|what| what.apply(state)),
        ENVIRONMENTS => two_ids(payload).map(|(user_id, environment_id)| {
            state.lists.forget(user_id);
            state.actors.heard(Heard::Changed {
                user_id,
                environment_id,
            });
        }),
        ORDERS => two_ids(payload).map(|(user_id, environment_id)| {
            state.actors.heard(Heard::Ordered {
                user_id,
                environment_id,
            });
        }),
        ANSWERS => Uuid::parse_str(payload)
            .ok()
            .map(|order| state.actors.deps.answers.answered(order)),
        _ => None,
    };
    if understood.is_none() {
        tracing::warn!(
            channel,
            payload,
            "a notification this server does not understand"
        );
        forget_everything(state);
    }
}

/// Listens, and sends what `outgoing` queues, for as long as `state` lives: on
/// `first` (see [`connect`]), then on a new connection whenever one fails.
pub fn spawn(
    state: &Arc<AppState>,
    database_url: String,
    first: Listening,
    mut outgoing: tokio::sync::mpsc::Receiver<Invalidation>,
) {
    let state = Arc::downgrade(state);
    actix_web::rt::spawn(async move {
        let mut backoff = Duration::from_millis(250);
        let mut ready = Some(first);
        loop {
            let conn = match ready.take() {
                Some(Listening(conn)) => Ok(conn),
                None => connect(&database_url).await.map(|Listening(conn)| conn),
            };
            let listened = match conn {
                Ok(conn) => listen(&state, conn, &mut outgoing).await,
                Err(error) => Err(error),
            };
            match listened {
                Ok(()) => return,
                Err(error) => {
                    let Some(live) = state.upgrade() else { return };
                    forget_everything(&live);
                    drop(live);
                    tracing::warn!(%error, retry_in = ?backoff, "listening to other server processes failed; caches dropped");
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    });
}

/// A connection that listens on every channel.
pub struct Listening(AsyncPgConnection);

/// Connects and listens. The server does this before it serves (so that it
/// misses nothing from the start), and again after a lost connection.
pub async fn connect(url: &str) -> Result<Listening, String> {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .map_err(|e| e.to_string())?;
    for channel in [CHANNEL, ENVIRONMENTS, ORDERS, ANSWERS] {
        diesel::sql_query(format!("LISTEN {channel}"))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(Listening(conn))
}

/// `Ok` when the application is gone; `Err` when the connection failed.
async fn listen(
    state: &Weak<AppState>,
    mut conn: AsyncPgConnection,
    outgoing: &mut tokio::sync::mpsc::Receiver<Invalidation>,
) -> Result<(), String> {
    // Anything published before this LISTEN may have been missed.
    match state.upgrade() {
        Some(live) => forget_everything(&live),
        None => return Ok(()),
    }
    let mut to_send = Vec::new();
    loop {
        {
            let mut notifications = std::pin::pin!(conn.notifications_stream());
            let tick = tokio::time::sleep(CHECK_EVERY);
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    // The stream borrows the connection: leave it to send.
                    Some(what) = outgoing.recv() => {
                        to_send.push(what);
                        break;
                    }
                    next = notifications.next() => match next {
                        Some(Ok(notification)) => {
                            let Some(live) = state.upgrade() else { return Ok(()) };
                            heard(&live, &notification.channel, &notification.payload);
                        }
                        Some(Err(e)) => return Err(e.to_string()),
                        None => return Err("the notification stream ended".to_owned()),
                    },
                    () = &mut tick => break,
                }
            }
        }
        if state.upgrade().is_none() {
            return Ok(());
        }
        while let Ok(what) = outgoing.try_recv() {
            to_send.push(what);
        }
        if to_send.is_empty() {
            // The connection still answers (a dead one would never yield again).
            diesel::sql_query("SELECT 1")
                .execute(&mut conn)
                .await
                .map_err(|e| e.to_string())?;
        }
        for what in to_send.drain(..) {
            // Notifications this connection gets meanwhile wait in its queue.
            notify(&mut conn, what).await.map_err(|e| e.to_string())?;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalidations_read_back_and_garbage_is_none() {
        let id = Uuid::new_v4();
        for what in [
            Invalidation::Session(id),
            Invalidation::User(id),
            Invalidation::AllLists,
        ] {
            assert_eq!(Invalidation::decode(&what.encode()), Some(what));
        }
        for garbage in [
            "",
            "user:",
            "user:x",
            "dance:00000000-0000-0000-0000-000000000000",
            "lists:",
        ] {
            assert_eq!(Invalidation::decode(garbage), None, "{garbage}");
        }
    }
}
