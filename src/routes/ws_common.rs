//! What every WebSocket endpoint shares: one handshake ([`accept`]: the upgrade,
//! token authentication from the query string — mobile WebSocket clients cannot
//! set headers —, the endpoint's own parameters, and that the environment is the
//! caller's, asked of its actor), closing with a code that says why, and how a
//! connection shows in the actor tree and the metrics.

use std::future::Future;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, CloseReason, MessageStream, Session};
use devpocket_actors::environment::EnvironmentActor;
use devpocket_actors::inspect::{Handle, Kind, Registration};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::startup::AppState;

/// A WebSocket past the handshake: the caller, and what they connect to (`R`: an
/// environment's actor, a server).
pub struct Accepted<R = Handle<EnvironmentActor>> {
    pub state: web::Data<AppState>,
    pub session: Session,
    pub stream: MessageStream,
    pub caller: AuthUser,
    /// The environment's or the server's id.
    pub env_id: Uuid,
    pub environment: R,
}

/// How a handshake closes: the code and its reason.
pub type Refusal = (CloseCode, String);

/// The caller's environment `id`, as its actor: the handshake's lookup for the
/// environment endpoints.
pub async fn find_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    env_id: Uuid,
) -> Result<Handle<EnvironmentActor>, Refusal> {
    match state.actors.environment(caller.user.id, env_id).await {
        Ok(Some(environment)) => Ok(environment),
        Ok(None) => Err((CloseCode::Policy, "environment not found".to_owned())),
        Err(e) => {
            tracing::warn!(environment_id = %env_id, error = %e, "a WebSocket could not reach its environment");
            Err((
                CloseCode::Again,
                "the environment cannot be reached right now; reconnect".to_owned(),
            ))
        }
    }
}

/// The handshake of every WebSocket endpoint. A well-formed upgrade is always
/// accepted (a refused upgrade is only "connection failed" to a mobile client);
/// then, in order: the token (1008 if bad, 1013 if it cannot be checked now or the
/// user is over the connection-attempt limit), the endpoint's own parameters as
/// `params` parsed them (1008 with their message), the id of the path, and what
/// `find` says of it — that it is the caller's (1008 "environment not found"
/// otherwise, another user's included; `find_environment`). Then `serve` runs the
/// endpoint's protocol.
#[allow(clippy::too_many_arguments)]
pub fn accept<P, R, Find, FindFut, F, Fut>(
    state: web::Data<AppState>,
    req: &HttpRequest,
    payload: web::Payload,
    max_frame: usize,
    token: Option<String>,
    id: String,
    params: Result<P, String>,
    find: Find,
    serve: F,
) -> Result<HttpResponse, actix_web::Error>
where
    P: 'static,
    R: 'static,
    Find: FnOnce(web::Data<AppState>, AuthUser, Uuid) -> FindFut + 'static,
    FindFut: Future<Output = Result<R, Refusal>> + 'static,
    F: FnOnce(Accepted<R>, P) -> Fut + 'static,
    Fut: Future<Output = ()> + 'static,
{
    let (response, session, stream) = actix_ws::handle(req, payload)?;
    let stream = stream.max_frame_size(max_frame);
    actix_web::rt::spawn(async move {
        let handshake = async {
            let caller = authenticate(&state, token.as_deref()).await?;
            let params = params.map_err(|why| (CloseCode::Policy, why))?;
            // An id that is no id is found nowhere: `find` says how it says so.
            let env_id = Uuid::parse_str(&id).unwrap_or(Uuid::nil());
            let environment = find(state.clone(), caller.clone(), env_id).await?;
            Ok::<_, Refusal>((caller, env_id, environment, params))
        };
        match handshake.await {
            Ok((caller, env_id, environment, params)) => {
                let accepted = Accepted {
                    state,
                    session,
                    stream,
                    caller,
                    env_id,
                    environment,
                };
                serve(accepted, params).await;
            }
            Err((code, reason)) => close(session, code, &reason).await,
        }
    });
    Ok(response)
}

/// The caller behind `?token=`, or how to close: 1008 for bad credentials, 1013
/// (try again) when the server cannot check them right now or the user is over the
/// limit of connection attempts.
async fn authenticate(
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
