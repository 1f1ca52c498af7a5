//! `WS /api/v1/ws/apps/{id}/logs?token=…`: an app's runs as they happen (every
//! start and stop made on this server process, with compose's output as it
//! prints it), and on request its containers' own logs (`compose logs -f`).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, Message};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::{broadcast, mpsc, oneshot};
use utoipa::IntoParams;
use uuid::Uuid;

use super::ws_common::{Accepted, Refusal, WsSession, accept, close};
use crate::apps::{self, RunEvent};
use crate::auth::AuthUser;
use crate::db::apps::{self as db, App};
use crate::db::servers as servers_db;
use crate::openapi::{BadRequest, TooManyRequests};
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws/apps/{id}/logs", web::get().to(app_logs_socket));
}

const HEARTBEAT: Duration = Duration::from_secs(30);
const MAX_CLIENT_FRAME: usize = 4 * 1024;
/// Pieces of `compose logs -f` waiting for a slow client; past it they are skipped.
const FOLLOW_QUEUE: usize = 256;
const MAX_TAIL: u32 = 10_000;

/// The protocol, for the OpenAPI document.
pub const PROTOCOL: &str = "\
JSON text frames with a `type`.

Server → client:

| Frame | When |
|---|---|
| `{\"type\": \"app\", \"id\": \"…\", \"status\": \"running\", \"status_message\": null}` | first: the app as it is |
| `{\"type\": \"run_started\", \"run_id\": \"…\", \"action\": \"start\"}` | a start, stop or auto-stop begins (`action` `start`, `stop`, `auto_stop`) |
| `{\"type\": \"run_output\", \"run_id\": \"…\", \"data\": \"Creating blog_web_1 ... done\\n\"}` | what compose prints, as it prints it |
| `{\"type\": \"run_finished\", \"run_id\": \"…\", \"status\": \"running\", \"exit_status\": 0}` | the run ended; `status` is the app's now |
| `{\"type\": \"compose_log\", \"data\": \"…\"}` | the containers' logs, after a `compose_logs` request |
| `{\"type\": \"compose_logs_ended\", \"reason\": \"…\"}` | they stopped following (asked, or the command ended, or its hour or 64 MiB are up) |
| `{\"type\": \"pong\", \"timestamp\": 1712345678}` | the answer to a `ping` |
| `{\"type\": \"error\", \"message\": \"…\"}` | a frame that could not be read, or events this client was too slow for (read `GET /apps/{id}/logs`) |

Client → server: `{\"type\": \"compose_logs\", \"tail\": 100}` (follow `compose logs -f`, the \
last `tail` lines first, 0 to 10000, default 100), `{\"type\": \"stop_logs\"}`, \
`{\"type\": \"ping\", \"timestamp\": …}`. Runs made by another server process are not \
streamed here; their output is in `GET /api/v1/apps/{id}/logs` when they end.";

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AppLogsQuery {
    /// An access token (WebSocket clients cannot send headers). Without a valid
    /// one the socket is closed with 1008.
    #[param(required = true)]
    token: Option<String>,
}

/// Follow an app's runs and its containers' logs (WebSocket).
#[utoipa::path(
    get,
    path = "/api/v1/ws/apps/{id}/logs",
    tag = "websockets",
    description = PROTOCOL,
    params(("id" = String, Path, description = "The app's id."), AppLogsQuery),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open."),
        (status = 400, response = BadRequest),
        (status = 429, response = TooManyRequests),
    )
)]
async fn app_logs_socket(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    id: web::Path<String>,
    query: web::Query<AppLogsQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    let token = query.into_inner().token;
    accept(
        state,
        &req,
        payload,
        MAX_CLIENT_FRAME,
        token,
        id.into_inner(),
        Ok(()),
        find_app,
        |accepted, ()| serve(accepted),
    )
}

async fn find_app(state: web::Data<AppState>, caller: AuthUser, id: Uuid) -> Result<App, Refusal> {
    let unavailable = || {
        (
            CloseCode::Again,
            "the app cannot be read right now; reconnect".to_owned(),
        )
    };
    let mut conn = state.pool.get().await.map_err(|_| unavailable())?;
    db::find_app(&mut conn, caller.user.id, id)
        .await
        .map_err(|_| unavailable())?
        .ok_or_else(|| (CloseCode::Policy, "app not found".to_owned()))
}

/// A client frame.
#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
enum ClientFrame {
    ComposeLogs { tail: Option<u32> },
    StopLogs,
    Ping { timestamp: Option<Value> },
}

/// Following `compose logs -f` for this client.
struct Following {
    /// Dropped to stop it.
    _stop: oneshot::Sender<()>,
}

async fn serve(accepted: Accepted<App>) {
    let Accepted {
        state,
        mut session,
        stream,
        environment: app,
        ..
    } = accepted;
    let parents = vec![format!("app:{}", app.id), format!("user:{}", app.user_id)];
    let ws = WsSession::open(&state, "app_logs", parents);
    let mut stream = stream;
    let mut events = state.live_runs.subscribe(app.id);
    let (log_tx, mut log_rx) = mpsc::channel::<Value>(FOLLOW_QUEUE);
    let mut following: Option<Following> = None;
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    let first = json!({"type": "app", "id": app.id, "status": app.status, "status_message": app.status_message});
    let send = async |session: &mut actix_ws::Session, frame: Value| {
        let text = frame.to_string();
        ws.sent(text.len());
        session.text(text).await.is_ok()
    };
    if !send(&mut session, first).await {
        return;
    }
    loop {
        let frame = tokio::select! {
            event = events.recv() => match event {
                Ok(event) => serde_json::to_value(&event).unwrap_or(Value::Null),
                Err(broadcast::error::RecvError::Lagged(n)) => json!({"type": "error",
                    "message": format!("{n} events were missed (too slow); the runs' output is in GET /api/v1/apps/{}/logs", app.id)}),
                // Its channel was dropped (never while this client holds it): a new one.
                Err(broadcast::error::RecvError::Closed) => {
                    events = state.live_runs.subscribe(app.id);
                    continue;
                }
            },
            Some(log) = log_rx.recv() => {
                if log["type"] == "compose_logs_ended" {
                    following = None;
                }
                log
            }
            msg = stream.recv() => match msg {
                Some(Ok(Message::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() { break; }
                    continue;
                }
                Some(Ok(Message::Text(text))) => {
                    ws.received(text.len());
                    match serde_json::from_str::<ClientFrame>(&text) {
                        Ok(ClientFrame::Ping { timestamp }) => json!({"type": "pong", "timestamp": timestamp}),
                        Ok(ClientFrame::StopLogs) => {
                            following = None;
                            continue;
                        }
                        Ok(ClientFrame::ComposeLogs { tail }) => {
                            if following.is_some() {
                                json!({"type": "error", "message": "the logs are followed already; send stop_logs first"})
                            } else {
                                match follow(&state, &app, tail.unwrap_or(100).min(MAX_TAIL), log_tx.clone()).await {
                                    Ok(f) => { following = Some(f); continue; }
                                    Err(message) => json!({"type": "error", "message": message}),
                                }
                            }
                        }
                        Err(err) => json!({"type": "error", "message": format!(
                            "not a frame of this socket ({err}): send {{\"type\": \"compose_logs\", \"tail\": 100}}, {{\"type\": \"stop_logs\"}} or {{\"type\": \"ping\"}}")}),
                    }
                }
                Some(Ok(Message::Close(_))) | None => break,
                Some(Err(_)) => {
                    close(session, CloseCode::Size, "frame too large or malformed").await;
                    break_out(&state, app.id, events);
                    return;
                }
                Some(Ok(_)) => continue,
            },
            _ = heartbeat.tick() => {
                if session.ping(b"").await.is_err() { break; }
                continue;
            }
        };
        if !send(&mut session, frame).await {
            break;
        }
    }
    drop(following);
    break_out(&state, app.id, events);
}

/// This client is gone: its channel is forgotten if nobody else listens.
fn break_out(state: &AppState, app: Uuid, events: broadcast::Receiver<RunEvent>) {
    drop(events);
    state.live_runs.tidy(app);
}

/// Starts following `compose logs -f` for this client: pieces go to `tx` (skipped
/// while it is full), then a `compose_logs_ended` frame.
async fn follow(
    state: &web::Data<AppState>,
    app: &App,
    tail: u32,
    tx: mpsc::Sender<Value>,
) -> Result<Following, String> {
    let mut conn = state.pool.get().await.map_err(|e| e.to_string())?;
    let server = servers_db::find_owned(&mut conn, app.user_id, app.server_id)
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "the app's server is gone".to_owned())?;
    drop(conn);
    let (stop_tx, stop_rx) = oneshot::channel();
    let pieces = tx.clone();
    let mut carry = devpocket_actors::terminal::utf8::Utf8Carry::default();
    let on_data = Box::new(move |bytes: &[u8]| {
        let data = carry.push(bytes);
        if !data.is_empty() {
            let _ = pieces.try_send(json!({"type": "compose_log", "data": data}));
        }
    });
    let (state, app) = (state.clone(), app.clone());
    actix_web::rt::spawn(async move {
        let reason = apps::follow_logs(&state, &server, &app, tail, on_data, stop_rx).await;
        let _ = tx
            .send(json!({"type": "compose_logs_ended", "reason": reason}))
            .await;
    });
    Ok(Following { _stop: stop_tx })
}
