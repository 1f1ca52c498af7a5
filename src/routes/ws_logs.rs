//! `WS /api/v1/ws/logs/{environment_id}?token=ACCESS_TOKEN[&after=SEQ]`: the
//! provisioning log, history first, then where provisioning stands, then live, with
//! no gap and no duplicate at the seam (the actor says which line it announced last
//! and where provisioning stands when we subscribe; history is read up to that
//! line, live events follow it).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, Message, Session};
use devpocket_actors::environment::{InstallState, SubscribeLogs};
use devpocket_actors::logs::{self, LogEvent, Standing};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::mpsc;
use utoipa::IntoParams;
use uuid::Uuid;

use super::ws_common::{WsSession, authenticate, close};
use crate::db::environments as db;
use crate::openapi::{BadRequest, TooManyRequests};
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws/logs/{id}", web::get().to(logs_socket));
}

/// Live events waiting for a slow subscriber before it is dropped.
const QUEUE: usize = 1024;
const HISTORY_BATCH: i64 = 500;
const HEARTBEAT: Duration = Duration::from_secs(30);
const MAX_CLIENT_FRAME: usize = 64 * 1024;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogsQuery {
    /// An access token (WebSocket clients cannot send headers). Without a valid
    /// one the socket is closed with 1008.
    #[param(required = true)]
    token: Option<String>,
    /// Send only the stored lines after line SEQ (all kept lines without it).
    after: Option<i64>,
}

/// The frame protocol, for the OpenAPI document.
const PROTOCOL: &str = "\
Upgrades to a WebSocket carrying the provisioning log: the stored lines after `after`, \
then one `installation_progress` saying where provisioning stands, then \
`installation_complete` or `installation_error` if provisioning has ended, then \
live events, with no gap and no duplicate where history meets live. JSON text frames.

Server frames:

| Frame | When |
|---|---|
| `{\"type\": \"installation_log\", \"data\", \"seq\", \"timestamp\"}` | one per line |
| `{\"type\": \"installation_progress\", \"phase\", \"progress\", \"stage\", \"step\", \"total\", \"percent\"}` | right after the history, then at each phase change while provisioning (to `provisioning`, `booting`, `installing`, `configuring`, then `ready`, `failed` or `deleting`) and after each stage marker line. `phase` and `progress` (0-100) are the environment's; `stage`, `step`, `total` and `percent` its bootstrap's latest stage marker (before the first one: the phase, and 0) |
| `{\"type\": \"installation_complete\"}` | the bootstrap exited with status 0 |
| `{\"type\": \"installation_error\", \"error\"}` | provisioning failed |
| `{\"type\": \"pong\"}` | answer to any client text frame, such as `{\"type\": \"ping\"}` |

A well-formed upgrade is always accepted; a refusal comes afterwards as a close frame \
with a reason: 1008 bad or missing token, or unknown environment (another user's too); \
1000 the environment was deleted; 1013 try again (fell behind: reconnect with \
`after=SEQ`; the server cannot check the token right now; too many connection \
attempts); 1009 a client frame over 64 KiB. The server pings every 30 s.";

/// Follow an environment's provisioning log (WebSocket).
#[utoipa::path(
    get,
    path = "/api/v1/ws/logs/{id}",
    tag = "websockets",
    description = PROTOCOL,
    params(
        ("id" = String, Path, description = "The environment's id."),
        LogsQuery,
    ),
    responses(
        (status = 101, description = "Switching Protocols: the WebSocket is open."),
        (status = 400, response = BadRequest),
        (status = 429, response = TooManyRequests),
    )
)]
async fn logs_socket(
    state: web::Data<AppState>,
    req: HttpRequest,
    payload: web::Payload,
    id: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, actix_web::Error> {
    let (response, session, stream) = actix_ws::handle(&req, payload)?;
    let stream = stream.max_frame_size(MAX_CLIENT_FRAME);
    let query = query.into_inner();
    let id = id.into_inner();
    actix_web::rt::spawn(async move {
        let caller = match authenticate(&state, query.token.as_deref()).await {
            Ok(c) => c,
            Err((code, reason)) => return close(session, code, &reason).await,
        };
        let Ok(env_id) = Uuid::parse_str(&id) else {
            return close(session, CloseCode::Policy, "environment not found").await;
        };
        match state.actors.environment(caller.user.id, env_id).await {
            Ok(Some(addr)) => {
                let ws = WsSession::open(
                    &state,
                    "logs",
                    vec![
                        format!("environment:{env_id}"),
                        format!("user:{}", caller.user.id),
                    ],
                );
                let (tx, rx) = mpsc::channel(QUEUE);
                match addr.send(SubscribeLogs { tx }).await {
                    Ok(sub) => {
                        serve(
                            state,
                            ws,
                            session,
                            stream,
                            env_id,
                            query.after.unwrap_or(0),
                            sub,
                            rx,
                        )
                        .await
                    }
                    Err(_) => {
                        close(
                            session,
                            CloseCode::Again,
                            "the environment is restarting; reconnect",
                        )
                        .await
                    }
                }
            }
            Ok(None) => close(session, CloseCode::Policy, "environment not found").await,
            Err(e) => close(session, CloseCode::Again, &e.to_string()).await,
        }
    });
    Ok(response)
}

fn line_frame(seq: i64, data: &str, timestamp: chrono::DateTime<chrono::Utc>) -> String {
    json!({"type": "installation_log", "data": data, "seq": seq, "timestamp": timestamp})
        .to_string()
}

/// Where provisioning stands. Before the bootstrap's first stage marker, `stage`
/// is the phase and `step`, `total` and `percent` are 0.
fn progress_frame(s: &Standing) -> String {
    let (stage, step, total, percent) = match &s.stage {
        Some(p) => (p.stage.as_str(), p.step, p.total, p.percent),
        None => (s.phase.as_str(), 0, 0, 0),
    };
    json!({
        "type": "installation_progress",
        "phase": s.phase,
        "progress": s.progress,
        "stage": stage,
        "step": step,
        "total": total,
        "percent": percent,
    })
    .to_string()
}

#[allow(clippy::too_many_arguments)]
async fn serve(
    state: web::Data<AppState>,
    ws: WsSession,
    mut session: Session,
    mut stream: actix_ws::MessageStream,
    env_id: Uuid,
    after: i64,
    sub: devpocket_actors::environment::LogSubscription,
    mut rx: mpsc::Receiver<LogEvent>,
) {
    // History: stored lines after `after`, up to what the actor announced.
    let mut cursor = after.max(0);
    // The latest stage marker in the history, for when the actor has not seen one
    // (it was re-created after a server restart).
    let mut history_stage = None;
    while cursor < sub.last_seq {
        let rows = match state.pool.get().await {
            Ok(mut conn) => {
                db::logs_after(&mut conn, env_id, cursor, sub.last_seq, HISTORY_BATCH).await
            }
            Err(_) => {
                return close(
                    session,
                    CloseCode::Again,
                    "the database is unavailable; reconnect",
                )
                .await;
            }
        };
        let Ok(rows) = rows else {
            return close(
                session,
                CloseCode::Again,
                "could not read the log; reconnect",
            )
            .await;
        };
        if rows.is_empty() {
            break;
        }
        for (seq, line, at) in &rows {
            let frame = line_frame(*seq, line, *at);
            ws.sent(frame.len());
            if session.text(frame).await.is_err() {
                return;
            }
            if let Some(p) = logs::parse_stage(line) {
                history_stage = Some(p);
            }
            cursor = *seq;
        }
    }
    // Then where provisioning stands, so a progress bar opened mid-way is right.
    let mut standing = sub.standing;
    if standing.stage.is_none() {
        standing.stage = history_stage;
    }
    let frame = progress_frame(&standing);
    ws.sent(frame.len());
    if session.text(frame).await.is_err() {
        return;
    }
    match &sub.state {
        InstallState::Complete => {
            let _ = session
                .text(json!({"type": "installation_complete"}).to_string())
                .await;
        }
        InstallState::Failed(error) => {
            let _ = session
                .text(json!({"type": "installation_error", "error": error}).to_string())
                .await;
        }
        InstallState::InProgress => {}
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            event = rx.recv() => {
                let frame = match event {
                    Some(LogEvent::Line(line)) if line.seq > cursor => {
                        cursor = line.seq;
                        line_frame(line.seq, &line.data, line.timestamp)
                    }
                    Some(LogEvent::Line(_)) => continue,
                    Some(LogEvent::Progress(s)) => progress_frame(&s),
                    Some(LogEvent::Complete) => json!({"type": "installation_complete"}).to_string(),
                    Some(LogEvent::Failed(error)) => json!({"type": "installation_error", "error": error}).to_string(),
                    Some(LogEvent::Closed) => return close(session, CloseCode::Normal, "environment deleted").await,
                    // Dropped for falling behind: the client resumes with after=SEQ.
                    None => return close(session, CloseCode::Again, &format!("too slow; reconnect with after={cursor}")).await,
                };
                ws.sent(frame.len());
                if session.text(frame).await.is_err() {
                    return;
                }
            }
            msg = stream.recv() => match msg {
                Some(Ok(Message::Ping(bytes))) => {
                    if session.pong(&bytes).await.is_err() { return; }
                }
                Some(Ok(Message::Text(text))) => {
                    ws.received(text.len());
                    if text.contains("\"ping\"") && session.text(json!({"type": "pong"}).to_string()).await.is_err() {
                        return;
                    }
                }
                Some(Ok(Message::Close(_))) | None => return,
                Some(Err(_)) => return close(session, CloseCode::Size, "frame too large or malformed").await,
                Some(Ok(_)) => {}
            },
            _ = heartbeat.tick() => {
                if session.ping(b"").await.is_err() { return; }
            }
        }
    }
}
