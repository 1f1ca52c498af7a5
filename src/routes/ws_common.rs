//! What every WebSocket endpoint shares: token authentication from the query
//! string (mobile WebSocket clients cannot set headers) and closing with a code
//! that says why.

use actix_ws::{CloseCode, CloseReason, Session};
use devpocket_actors::inspect::{Kind, Registration};

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::startup::AppState;

/// The caller behind `?token=`, or how to close: 1008 for bad credentials, 1013
/// (try again) when the server cannot check them right now or the user is over the
/// limit of connection attempts.
pub async fn authenticate(
    state: &AppState,
    token: Option<&str>,
) -> Result<AuthUser, (CloseCode, String)> {
    let caller = match token {
        None | Some("") => Err((
            CloseCode::Policy,
            "missing token: connect with ?token=ACCESS_TOKEN".to_owned(),
        )),
        Some(token) => AuthUser::from_token(state, token)
            .await
            .map_err(|e| match e {
                ApiError::Unauthorized(m) => (CloseCode::Policy, m),
                other => (CloseCode::Again, format!("{other}; reconnect")),
            }),
    }?;
    state
        .ratelimits
        .check_ws_connect(caller.user.id)
        .map_err(|s| {
            (
                CloseCode::Again,
                format!(
                    "too many connection attempts; retry in {} s",
                    s.retry_after_seconds()
                ),
            )
        })?;
    Ok(caller)
}

pub async fn close(session: Session, code: CloseCode, reason: &str) {
    let _ = session
        .close(Some(CloseReason {
            code,
            description: Some(reason.to_owned()),
        }))
        .await;
}

/// One WebSocket connection as operators see it: a node of the actor tree
/// (`websocket:<id>`, under its terminal, environment or user), the
/// `devpocket_websocket_connections` gauge, and frames and bytes both ways.
pub struct WsSession {
    registration: Registration,
    connections: ::metrics::Gauge,
    bytes_in: ::metrics::Counter,
    bytes_out: ::metrics::Counter,
}

impl WsSession {
    /// `endpoint` is `terminal` or `logs`; `parents` as in the actor tree, nearest
    /// first.
    pub fn open(state: &AppState, endpoint: &'static str, parents: Vec<String>) -> Self {
        let registration = state.actors.deps.inspector.register(
            Kind::WebSocket,
            format!("websocket:{}", uuid::Uuid::new_v4().simple()),
            parents,
        );
        registration.stats.set_state("open");
        let (connections, bytes_in, bytes_out) = state.metrics.record(|| {
            (
                ::metrics::gauge!("devpocket_websocket_connections", "endpoint" => endpoint),
                ::metrics::counter!("devpocket_websocket_received_bytes_total", "endpoint" => endpoint),
                ::metrics::counter!("devpocket_websocket_sent_bytes_total", "endpoint" => endpoint),
            )
        });
        connections.increment(1.0);
        Self {
            registration,
            connections,
            bytes_in,
            bytes_out,
        }
    }

    pub fn received(&self, bytes: usize) {
        self.registration.stats.activity();
        self.bytes_in.increment(bytes as u64);
    }

    pub fn sent(&self, bytes: usize) {
        self.registration.stats.activity();
        self.bytes_out.increment(bytes as u64);
    }

    pub fn set_state(&self, state: &str) {
        self.registration.stats.set_state(state);
    }
}

impl Drop for WsSession {
    fn drop(&mut self) {
        self.connections.decrement(1.0);
    }
}
