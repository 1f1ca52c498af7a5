//! `WS /api/v1/ws/terminal/{environment_id}?token=…[&session=NAME][&cols=&rows=][&resume=SEQ][&mode=shell]`:
//! one WebSocket client of a shared terminal session (`mode=shell`: a login shell
//! without tmux, for scripts and measurements; nothing survives a lost
//! connection). The frames are `ws::terminal_frames`.
//!
//! The app reconnects every ~2 s after any close and opens the socket whatever the
//! environment's status, so a machine that is not running yet is not a reason to
//! close: the client attaches to the session at once, and the session tells it
//! (`status` frames) until the environment runs, then attaches to the machine.
//! Only bad credentials (and limits) close it before that.

mod connection;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::CloseCode;
use devpocket_actors::environment::{StateWatch, WatchState};
use devpocket_actors::model::Status;
use devpocket_actors::server::ServerAccess;
use devpocket_actors::terminal::{SessionMode, TerminalTarget};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::ws_common::{Accepted, Refusal, WsSession, accept, close, find_environment};
use crate::audit::{Origin, ResourceType, TerminalAudit};
use crate::auth::AuthUser;
use crate::db::servers as servers_db;
use crate::error::ApiError;
use crate::openapi::{BadRequest, TooManyRequests};
use crate::startup::AppState;
use crate::ws::terminal_frames;
use connection::{Connection, Welcome};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws/terminal/{id}", web::get().to(terminal_socket))
        .route(
            "/ws/servers/{id}/terminal",
            web::get().to(server_terminal_socket),
        );
}

/// The largest text frame accepted; larger ones get an `error` frame. A paste is
/// sent as several `input` frames.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Frames larger than this break the WebSocket protocol limit and close it (1009).
const PROTOCOL_FRAME_LIMIT: usize = 4 * 1024 * 1024;

/// Open terminal connections per user, for the plan's cap.
#[derive(Default)]
pub struct TerminalConnections {
    per_user: Mutex<HashMap<Uuid, u32>>,
}

struct ConnectionSlot {
    registry: Arc<TerminalConnections>,
    user: Uuid,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        if let Ok(mut map) = self.registry.per_user.lock()
            && let Some(n) = map.get_mut(&self.user)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.user);
            }
        }
    }
}

impl TerminalConnections {
    fn take(self: &Arc<Self>, user: Uuid, limit: Option<u32>) -> Option<ConnectionSlot> {
        let mut map = self.per_user.lock().ok()?;
        let n = map.entry(user).or_insert(0);
        if limit.is_some_and(|l| *n >= l) {
            return None;
        }
        *n += 1;
        Some(ConnectionSlot {
            registry: self.clone(),
            user,
        })
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct TerminalQuery {
    /// An access token (WebSocket clients cannot send headers). Without a valid
    /// one the socket is closed with 1008.
    #[param(required = true)]
    token: Option<String>,
    /// 1–32 of `A-Z a-z 0-9 _ -` (default `main`). Clients with the same name
    /// share one shell.
    session: Option<String>,
    /// The client's width, clamped to 10–1000 (default 80).
    cols: Option<u32>,
    /// The client's height, clamped to 5–500 (default 24).
    rows: Option<u32>,
    /// The `seq` of the last output frame the client showed, to get exactly what
    /// it missed.
    resume: Option<u64>,
    /// `tmux` (default) or `shell`: a login shell without tmux, for scripts and
    /// measurements.
    mode: Option<String>,
}

fn valid_session_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn clamp_size(cols: Option<u32>, rows: Option<u32>) -> (u32, u32) {
    (
        cols.unwrap_or(80).clamp(10, 1000),
        rows.unwrap_or(24).clamp(5, 500),
    )
}

/// Open a terminal on an environment (WebSocket).
#[utoipa::path(
    get,
    path = "/api/v1/ws/terminal/{id}",
    tag = "websockets",
    description = terminal_frames::PROTOCOL,
    params(
        ("id" = String, Path, description = "The environment's id."),
        TerminalQuery,
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open."),
        (status = 400, response = BadRequest),
        (status = 429, response = TooManyRequests),
    )
)]
async fn terminal_socket(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    id: web::Path<String>,
    query: web::Query<TerminalQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    let (id, query) = (id.into_inner(), query.into_inner());
    handshake(state, &req, payload, id, query, find_environment, open)
}

/// The handshake both terminal endpoints share: `find` says whether the id is
/// the caller's and what it is, `open` attaches to it.
fn handshake<R, Find, FindFut, Open, OpenFut>(
    state: web::Data<AppState>,
    req: &HttpRequest,
    payload: web::Payload,
    id: String,
    query: TerminalQuery,
    find: Find,
    open: Open,
) -> Result<HttpResponse, actix_web::Error>
where
    R: 'static,
    Find: FnOnce(web::Data<AppState>, AuthUser, Uuid) -> FindFut + 'static,
    FindFut: Future<Output = Result<R, Refusal>> + 'static,
    Open: FnOnce(Accepted<R>, Params, Origin) -> OpenFut + 'static,
    OpenFut: Future<Output = ()> + 'static,
{
    let origin = Origin::of(req, &state.settings.http.trusted_proxies);
    let token = query.token.clone();
    accept(
        state,
        req,
        payload,
        PROTOCOL_FRAME_LIMIT,
        token,
        id,
        Params::of(query),
        find,
        move |accepted, params| open(accepted, params, origin),
    )
}

/// Open a terminal on one of your servers (WebSocket).
#[utoipa::path(
    get,
    path = "/api/v1/ws/servers/{id}/terminal",
    tag = "websockets",
    description = "The same protocol, frames and query as `/api/v1/ws/terminal/{id}` (tmux \
        sessions shared by every client, resume, reconnection), on a server of yours with a \
        trusted host key, as its `username`: the `welcome` frame's `environment` describes the \
        server (`template` `server`). A server whose host key is not trusted yet closes with \
        1008 saying so.",
    params(
        ("id" = String, Path, description = "The server's id."),
        TerminalQuery,
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open."),
        (status = 400, response = BadRequest),
        (status = 429, response = TooManyRequests),
    )
)]
async fn server_terminal_socket(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    id: web::Path<String>,
    query: web::Query<TerminalQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    let (id, query) = (id.into_inner(), query.into_inner());
    handshake(state, &req, payload, id, query, find_server, open_server)
}

/// A server of the caller's, trusted, and how to reach it.
struct ServerTarget {
    name: String,
    access: ServerAccess,
}

async fn find_server(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: Uuid,
) -> Result<ServerTarget, Refusal> {
    let unavailable = |e: ApiError| {
        tracing::warn!(server_id = %id, error = %e, "a terminal could not read its server");
        (
            CloseCode::Again,
            "the server cannot be read right now; reconnect".to_owned(),
        )
    };
    let mut conn = state.pool.get().await.map_err(|e| unavailable(e.into()))?;
    let server = servers_db::find_owned(&mut conn, caller.user.id, id)
        .await
        .map_err(|e| unavailable(e.into()))?
        .ok_or_else(|| (CloseCode::Policy, "server not found".to_owned()))?;
    let access = crate::servers::access(&state, &server)
        .map_err(unavailable)?
        .ok_or_else(|| {
            (
                CloseCode::Policy,
                "the server's host key is not trusted yet: confirm it (POST /api/v1/servers/{id}/trust) first".to_owned(),
            )
        })?;
    Ok(ServerTarget {
        name: server.name,
        access,
    })
}

/// The terminal's query, checked.
struct Params {
    name: String,
    mode: SessionMode,
    cols: u32,
    rows: u32,
    resume: Option<u64>,
}

impl Params {
    fn of(query: TerminalQuery) -> Result<Self, String> {
        let name = query.session.unwrap_or_else(|| "main".to_owned());
        if !valid_session_name(&name) {
            return Err("session names are 1-32 letters, digits, '_' or '-'".to_owned());
        }
        let mode = match query.mode.as_deref() {
            None | Some("tmux") => SessionMode::Tmux,
            Some("shell") => SessionMode::Shell,
            Some(_) => return Err("mode is tmux (default) or shell".to_owned()),
        };
        let (cols, rows) = clamp_size(query.cols, query.rows);
        Ok(Self {
            name,
            mode,
            cols,
            rows,
            resume: query.resume,
        })
    }
}

/// Follows the environment's state and attaches to the session.
async fn open(accepted: Accepted, params: Params, origin: Origin) {
    let Ok(StateWatch {
        link,
        name: env_name,
        template,
    }) = accepted.environment.send(WatchState).await
    else {
        return close(
            accepted.session,
            CloseCode::Again,
            "the environment is restarting; reconnect",
        )
        .await;
    };
    if link.state.borrow().is_deleted() {
        return close(accepted.session, CloseCode::Normal, "environment deleted").await;
    }
    let welcome = Welcome {
        name: env_name,
        template,
        status: link.state.borrow().status,
    };
    let env_id = accepted.env_id;
    let target = Attach {
        target: TerminalTarget::Environment(link),
        welcome,
        resource: ResourceType::Environment,
        node: format!("environment:{env_id}"),
    };
    attach(accepted, target, params, origin).await;
}

/// Attaches to the session on the server.
async fn open_server(accepted: Accepted<ServerTarget>, params: Params, origin: Origin) {
    let Accepted {
        state,
        session,
        stream,
        caller,
        env_id,
        environment: server,
    } = accepted;
    let target = Attach {
        target: TerminalTarget::Server(server.access),
        welcome: Welcome {
            name: server.name,
            template: "server".to_owned(),
            status: Status::Running,
        },
        resource: ResourceType::Server,
        node: format!("server:{env_id}"),
    };
    let accepted = Accepted {
        state,
        session,
        stream,
        caller,
        env_id,
        environment: (),
    };
    attach(accepted, target, params, origin).await;
}

/// What a terminal attaches to.
struct Attach {
    target: TerminalTarget,
    welcome: Welcome,
    /// What its attach and detach are recorded on.
    resource: ResourceType,
    /// Its node in the actor tree.
    node: String,
}

/// Takes a connection slot of the plan and attaches to the session.
async fn attach<R>(accepted: Accepted<R>, to: Attach, params: Params, origin: Origin) {
    let Accepted {
        state,
        session,
        stream,
        caller,
        env_id,
        ..
    } = accepted;
    let user = caller.user.id;
    let limit = caller.user.subscription_plan.limits().terminal_connections;
    let Some(slot) = state.terminal_connections.take(user, limit) else {
        let reason = format!(
            "too many terminal connections for your plan (at most {})",
            limit.unwrap_or(0)
        );
        return close(session, CloseCode::Policy, &reason).await;
    };
    let Params {
        name,
        mode,
        cols,
        rows,
        resume,
    } = params;
    let terminal = match state
        .actors
        .terminal(user, env_id, name.clone(), mode, to.target)
        .await
    {
        Ok(t) => t,
        Err(e) => {
            tracing::warn!(id = %env_id, error = %e, "no terminal actor");
            return close(
                session,
                CloseCode::Again,
                "the terminal is unavailable right now; reconnect",
            )
            .await;
        }
    };
    let terminal_node = match mode {
        SessionMode::Tmux => format!("terminal:{env_id}:{name}"),
        SessionMode::Shell => format!("terminal:{env_id}:shell:{name}"),
    };
    let ws = WsSession::open(
        &state,
        "terminal",
        vec![terminal_node, to.node, format!("user:{user}")],
    );
    ws.set_state("waiting");
    let client_address = origin.ip.clone();
    let conn = Connection {
        ws,
        input_limit: state.ratelimits.ws_input_limiter(),
        audit: TerminalAudit::new(&state, origin, user, (to.resource, env_id), &name),
        state,
        session,
        stream,
        env_id,
        name,
        cols,
        rows,
        last_seen: Instant::now(),
        client_address,
        _slot: slot,
    };
    conn.run(terminal, to.welcome, resume).await;
}
