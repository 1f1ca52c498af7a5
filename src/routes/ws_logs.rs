//! `WS /api/v1/ws/logs/{environment_id}?token=ACCESS_TOKEN[&after=SEQ]`: the
//! provisioning log, history first, then where provisioning stands, then live, with
//! no gap and no duplicate at the seam (the actor says which line it announced last
//! and where provisioning stands when we subscribe; history is read up to that
//! line, live events follow it).

use std::time::Duration;

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, Message, Session};
use devpocket_actors::environment::{InstallState, SubscribeLogs};
use devpocket_actors::logs::{self, LogEvent};
use serde::Deserialize;
use tokio::sync::mpsc;
use utoipa::IntoParams;
use uuid::Uuid;

use super::ws_common::{Accepted, WsSession, accept, close, find_environment};
use crate::db::environments as db;
use crate::openapi::{BadRequest, TooManyRequests};
use crate::startup::AppState;
use crate::ws::log_frames::{self, ClientFrame, ServerFrame};

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

/// Follow an environment's provisioning log (WebSocket).
#[utoipa::path(
    get,
    path = "/api/v1/ws/logs/{id}",
    tag = "websockets",
    description = log_frames::PROTOCOL,
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
    let LogsQuery { token, after } = query.into_inner();
    accept(
        state,
        &req,
        payload,
        MAX_CLIENT_FRAME,
        token,
        id.into_inner(),
        Ok(after.unwrap_or(0)),
        find_environment,
        subscribe,
    )
}

/// Subscribes to the environment's log events, then serves the log.
async fn subscribe(accepted: Accepted, after: i64) {
    let Accepted {
        state,
        session,
        stream,
        caller,
        env_id,
        environment,
    } = accepted;
    let ws = WsSession::open(
        &state,
        "logs",
        vec![
            format!("environment:{env_id}"),
            format!("user:{}", caller.user.id),
        ],
    );
    let (tx, rx) = mpsc::channel(QUEUE);
    match environment.send(SubscribeLogs { tx }).await {
        Ok(sub) => serve(state, ws, session, stream, env_id, after, sub, rx).await,
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

/// Why a stream ends early: the close frame to send, or nothing when the client
/// is gone.
type Ended = Option<(CloseCode, &'static str)>;

/// Sends stored lines after `*cursor` up to `upto`, advancing `*cursor`; the
/// latest stage marker among them, if any.
async fn send_stored(
    state: &AppState,
    ws: &WsSession,
    session: &mut Session,
    env_id: Uuid,
    cursor: &mut i64,
    upto: i64,
) -> Result<Option<logs::Progress>, Ended> {
    let mut stage = None;
    while *cursor < upto {
        let Ok(mut conn) = state.pool.get().await else {
            return Err(Some((
                CloseCode::Again,
                "the database is unavailable; reconnect",
            )));
        };
        let Ok(rows) = db::logs_after(&mut conn, env_id, *cursor, upto, HISTORY_BATCH).await else {
            return Err(Some((
                CloseCode::Again,
                "could not read the log; reconnect",
            )));
        };
        drop(conn);
        if rows.is_empty() {
            break;
        }
        for (seq, line, at) in &rows {
            let frame = ServerFrame::InstallationLog {
                data: line,
                seq: *seq,
                timestamp: *at,
            }
            .to_text();
            ws.sent(frame.len());
            if session.text(frame).await.is_err() {
                return Err(None);
            }
            if let Some(p) = logs::parse_stage(line) {
                stage = Some(p);
            }
            *cursor = *seq;
        }
    }
    Ok(stage)
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
    // (it was re-created after a server restart, or another process drives it).
    let history_stage =
        match send_stored(&state, &ws, &mut session, env_id, &mut cursor, sub.last_seq).await {
            Ok(stage) => stage,
            Err(Some((code, why))) => return close(session, code, why).await,
            Err(None) => return,
        };
    // Then where provisioning stands, so a progress bar opened mid-way is right.
    let mut standing = sub.standing;
    if standing.stage.is_none() {
        standing.stage = history_stage;
    }
    let frame = ServerFrame::progress(&standing).to_text();
    ws.sent(frame.len());
    if session.text(frame).await.is_err() {
        return;
    }
    let ended = match &sub.state {
        InstallState::Complete => Some(ServerFrame::InstallationComplete),
        InstallState::Failed(error) => Some(ServerFrame::InstallationError { error }),
        InstallState::InProgress => None,
    };
    if let Some(frame) = ended {
        let frame = frame.to_text();
        ws.sent(frame.len());
        if session.text(frame).await.is_err() {
            return;
        }
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.tick().await;
    loop {
        tokio::select! {
            event = rx.recv() => {
                let frame = match event {
                    Some(LogEvent::Line(line)) if line.seq > cursor => {
                        cursor = line.seq;
                        ServerFrame::InstallationLog { data: &line.data, seq: line.seq, timestamp: line.timestamp }.to_text()
                    }
                    Some(LogEvent::Line(_)) => continue,
                    // Written by the process that drives the environment: read
                    // from the store, a stage marker among them moves the bar.
                    Some(LogEvent::Stored(upto)) => {
                        match send_stored(&state, &ws, &mut session, env_id, &mut cursor, upto).await {
                            Ok(Some(stage)) => {
                                standing.stage = Some(stage);
                                ServerFrame::progress(&standing).to_text()
                            }
                            Ok(None) => continue,
                            Err(Some((code, why))) => return close(session, code, why).await,
                            Err(None) => return,
                        }
                    }
                    Some(LogEvent::Progress(s)) => {
                        // A follower's actor has no stage: the lines had it.
                        let stage = standing.stage.take();
                        standing = s;
                        standing.stage = standing.stage.take().or(stage);
                        ServerFrame::progress(&standing).to_text()
                    }
                    Some(LogEvent::Complete) => ServerFrame::InstallationComplete.to_text(),
                    Some(LogEvent::Failed(error)) => ServerFrame::InstallationError { error: &error }.to_text(),
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
                    let answer = match ClientFrame::parse(&text) {
                        Ok(ClientFrame::Ping { timestamp }) => ServerFrame::Pong { timestamp }.to_text(),
                        Err(message) => ServerFrame::Error { message: &message }.to_text(),
                    };
                    ws.sent(answer.len());
                    if session.text(answer).await.is_err() {
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
