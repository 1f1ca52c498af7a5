//! `WS /api/v1/ws/terminal/{environment_id}?token=…[&session=NAME][&cols=&rows=][&resume=SEQ][&mode=shell]`:
//! one WebSocket client of a shared terminal session (`mode=shell`: a login shell
//! without tmux, for scripts and measurements; nothing survives a lost connection). JSON text frames:
//! client → `input {data}`, `resize {cols, rows}`, `ping`; server → `welcome`,
//! `output {data, seq}`, `pong`, `status {state, message}`, `error {message}`.
//!
//! The app reconnects every ~2 s after any close and opens the socket whatever the
//! environment's status, so a machine that is not running yet is not a reason to
//! close: the socket stays open with `status` frames until it is, then attaches.
//! Only bad credentials (and limits) close it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix_web::{HttpRequest, HttpResponse, web};
use actix_ws::{CloseCode, Message, Session};
use devpocket_actors::inspect::Handle;
use devpocket_actors::model::Status;
use devpocket_actors::terminal::{
    Attach, Detach, InputPort, Resize, SessionMode, TermEvent, TermState, TerminalActor,
};
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::ws_common::{WsSession, authenticate, close};
use crate::audit::{Action, Origin, TerminalAudit};
use crate::db::environments as db;
use crate::openapi::{BadRequest, TooManyRequests};
use crate::startup::AppState;
use crate::ws::terminal_frames::{
    self, ClientFrame, ServerFrame, WelcomeEnvironment, WelcomeSession,
};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/ws/terminal/{id}", web::get().to(terminal_socket));
}

/// The largest text frame accepted; larger ones get an `error` frame. A paste is
/// sent as several `input` frames.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Frames larger than this break the WebSocket protocol limit and close it (1009).
const PROTOCOL_FRAME_LIMIT: usize = 4 * 1024 * 1024;
const HEARTBEAT: Duration = Duration::from_secs(30);
/// A client whose socket takes no frame for this long is disconnected.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that answers nothing for this long is removed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
const WAIT_POLL: Duration = Duration::from_secs(1);

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
    let (response, session, stream) = actix_ws::handle(&req, payload)?;
    let origin = Origin::of(&req, &state.settings.http.trusted_proxies);
    let stream = stream.max_frame_size(PROTOCOL_FRAME_LIMIT);
    let query = query.into_inner();
    let id = id.into_inner();
    actix_web::rt::spawn(async move {
        let caller = match authenticate(&state, query.token.as_deref()).await {
            Ok(c) => c,
            Err((code, reason)) => return close(session, code, &reason).await,
        };
        let name = query.session.clone().unwrap_or_else(|| "main".to_owned());
        if !valid_session_name(&name) {
            return close(
                session,
                CloseCode::Policy,
                "session names are 1-32 letters, digits, '_' or '-'",
            )
            .await;
        }
        let mode = match query.mode.as_deref() {
            None | Some("tmux") => SessionMode::Tmux,
            Some("shell") => SessionMode::Shell,
            Some(_) => {
                return close(
                    session,
                    CloseCode::Policy,
                    "mode is tmux (default) or shell",
                )
                .await;
            }
        };
        let Ok(env_id) = Uuid::parse_str(&id) else {
            return close(session, CloseCode::Policy, "environment not found").await;
        };
        let env = match state.pool.get().await {
            Ok(mut conn) => db::find_owned(&mut conn, caller.user.id, env_id)
                .await
                .ok()
                .flatten(),
            Err(_) => {
                return close(
                    session,
                    CloseCode::Again,
                    "the database is unavailable; reconnect",
                )
                .await;
            }
        };
        let Some((env, template)) = env else {
            return close(session, CloseCode::Policy, "environment not found").await;
        };
        let limit = caller.user.subscription_plan.limits().terminal_connections;
        let Some(slot) = state.terminal_connections.take(caller.user.id, limit) else {
            return close(
                session,
                CloseCode::Policy,
                &format!(
                    "too many terminal connections for your plan (at most {})",
                    limit.unwrap_or(0)
                ),
            )
            .await;
        };
        let welcome = Welcome {
            name: env.name,
            template,
            status: env.status.parse().unwrap_or(Status::Error),
        };
        let (cols, rows) = clamp_size(query.cols, query.rows);
        let input_limit = state.ratelimits.ws_input_limiter();
        let audit = TerminalAudit::new(&state, origin, caller.user.id, env_id, &name);
        let terminal_node = match mode {
            SessionMode::Tmux => format!("terminal:{env_id}:{name}"),
            SessionMode::Shell => format!("terminal:{env_id}:shell:{name}"),
        };
        let ws = WsSession::open(
            &state,
            "terminal",
            vec![
                terminal_node,
                format!("environment:{env_id}"),
                format!("user:{}", caller.user.id),
            ],
        );
        ws.set_state("waiting");
        let conn = Connection {
            ws,
            state,
            session,
            stream,
            user: caller.user.id,
            env_id,
            name,
            mode,
            cols,
            rows,
            last_seen: Instant::now(),
            input_limit,
            _slot: slot,
            audit,
        };
        conn.run(welcome, query.resume).await;
    });
    Ok(response)
}

/// What the `welcome` frame says of the environment.
struct Welcome {
    name: String,
    template: String,
    status: Status,
}

struct Connection {
    state: web::Data<AppState>,
    session: Session,
    stream: actix_ws::MessageStream,
    user: Uuid,
    env_id: Uuid,
    name: String,
    mode: SessionMode,
    cols: u32,
    rows: u32,
    last_seen: Instant,
    input_limit: governor::DefaultDirectRateLimiter,
    _slot: ConnectionSlot,
    audit: TerminalAudit,
    ws: WsSession,
}

/// What to do after a client frame.
enum Next {
    Continue,
    Stop,
}

impl Connection {
    async fn send(&mut self, frame: ServerFrame<'_>) -> bool {
        let text = frame.to_text();
        self.ws.sent(text.len());
        self.session.text(text).await.is_ok()
    }

    fn welcome(&self, welcome: &Welcome, clients: usize) -> String {
        ServerFrame::Welcome {
            message: format!("Connected to {}", welcome.name),
            environment: WelcomeEnvironment {
                id: self.env_id,
                name: &welcome.name,
                template: &welcome.template,
                status: welcome.status,
            },
            session: WelcomeSession {
                name: &self.name,
                clients,
            },
        }
        .to_text()
    }

    async fn send_text(&mut self, text: String) -> bool {
        self.ws.sent(text.len());
        self.session.text(text).await.is_ok()
    }

    async fn run(mut self, welcome: Welcome, resume: Option<u64>) {
        // Until the machine runs: status frames, pings answered.
        let mut welcomed = false;
        loop {
            let env = match self.state.pool.get().await {
                Ok(mut conn) => db::find_owned(&mut conn, self.user, self.env_id)
                    .await
                    .map_err(|_| ()),
                Err(_) => Err(()),
            };
            let message = match env {
                Ok(None) => {
                    return close(self.session, CloseCode::Normal, "environment deleted").await;
                }
                Ok(Some((env, _))) if env.status == "running" && env.phase == "ready" => break,
                Ok(Some((env, _))) => format!(
                    "the environment is {} ({}); the terminal attaches when it is running",
                    env.status, env.phase
                ),
                // A database hiccup is not a reason to drop the phone: keep waiting.
                Err(()) => "the server is busy; the terminal attaches shortly".to_owned(),
            };
            if !welcomed {
                if !self.send_text(self.welcome(&welcome, 0)).await {
                    return;
                }
                welcomed = true;
            }
            if !self
                .send(ServerFrame::Status {
                    state: TermState::Reconnecting,
                    message: &message,
                })
                .await
            {
                return;
            }
            let deadline = tokio::time::sleep(WAIT_POLL);
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    _ = &mut deadline => break,
                    msg = self.stream.recv() => match self.client_frame(msg, None).await {
                        Next::Continue => {}
                        Next::Stop => return,
                    },
                }
            }
        }
        let terminal = match self
            .state
            .actors
            .terminal(self.user, self.env_id, self.name.clone(), self.mode)
            .await
        {
            Ok(t) => t,
            Err(e) => return close(self.session, CloseCode::Again, &e.to_string()).await,
        };
        let mut attached = match terminal
            .send(Attach {
                cols: self.cols,
                rows: self.rows,
                resume,
            })
            .await
        {
            Ok(a) => a,
            Err(_) => {
                return close(
                    self.session,
                    CloseCode::Again,
                    "the terminal is restarting; reconnect",
                )
                .await;
            }
        };
        self.audit.record(Action::TerminalAttach);
        if !welcomed {
            if !self
                .send_text(self.welcome(&welcome, attached.clients))
                .await
            {
                terminal.do_send(Detach {
                    client: attached.client,
                });
                self.audit.record(Action::TerminalDetach);
                return;
            }
        }
        self.ws.set_state("attached");
        let mut last_seq = resume.unwrap_or(0);
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.tick().await;
        let outcome = loop {
            tokio::select! {
                event = attached.queue.recv() => {
                    let frame = match event {
                        Some(TermEvent::Output(chunk)) => {
                            last_seq = chunk.seq;
                            // Serialised once, shared by every client of the session.
                            chunk.wire(|c| ServerFrame::Output { data: &c.data, seq: c.seq }.to_text())
                        }
                        Some(TermEvent::Status { state, message }) => {
                            let closed = state == TermState::Closed;
                            let frame = ServerFrame::Status { state, message: &message }.to_text();
                            if closed {
                                let _ = self.send_text(frame).await;
                                break Some((CloseCode::Normal, "the terminal closed".to_owned()));
                            }
                            frame.into()
                        }
                        None => break Some((CloseCode::Again, format!("fell behind; reconnect with resume={last_seq}"))),
                    };
                    self.ws.sent(frame.len());
                    match tokio::time::timeout(SEND_TIMEOUT, self.session.text(frame)).await {
                        Ok(Ok(())) => {}
                        // A closed socket, or one that took nothing for SEND_TIMEOUT.
                        Ok(Err(_)) | Err(_) => break None,
                    }
                }
                msg = self.stream.recv() => match self.client_frame(msg, Some((&terminal, &attached.input, attached.client))).await {
                    Next::Continue => {}
                    Next::Stop => break None,
                },
                _ = heartbeat.tick() => {
                    if self.last_seen.elapsed() > CLIENT_TIMEOUT {
                        break Some((CloseCode::Away, "no answer from the client".to_owned()));
                    }
                    if self.session.ping(b"").await.is_err() {
                        break None;
                    }
                }
            }
        };
        terminal.do_send(Detach {
            client: attached.client,
        });
        self.audit.record(Action::TerminalDetach);
        if let Some((code, reason)) = outcome {
            close(self.session, code, &reason).await;
        }
    }

    /// Handles one client frame; `attached` once the terminal is attached.
    async fn client_frame(
        &mut self,
        msg: Option<Result<Message, actix_ws::ProtocolError>>,
        attached: Option<(&Handle<TerminalActor>, &InputPort, u64)>,
    ) -> Next {
        self.last_seen = Instant::now();
        let text = match msg {
            Some(Ok(Message::Text(text))) => {
                self.ws.received(text.len());
                text
            }
            Some(Ok(Message::Ping(bytes))) => {
                return if self.session.pong(&bytes).await.is_ok() {
                    Next::Continue
                } else {
                    Next::Stop
                };
            }
            Some(Ok(Message::Pong(_))) => return Next::Continue,
            Some(Ok(Message::Binary(_))) => {
                return self
                    .error("binary frames are not supported: send JSON text frames")
                    .await;
            }
            Some(Ok(Message::Close(_))) | None => return Next::Stop,
            Some(Ok(_)) => return Next::Continue,
            Some(Err(e)) => {
                let session = self.session.clone();
                close(session, CloseCode::Size, &format!("frame rejected: {e}")).await;
                return Next::Stop;
            }
        };
        if text.len() > MAX_FRAME_BYTES {
            return self
                .error(&format!("frame too large ({} bytes; at most {MAX_FRAME_BYTES}): split input into several frames", text.len()))
                .await;
        }
        let frame = match ClientFrame::parse(&text) {
            Ok(frame) => frame,
            // Says what was wrong: an unknown type, a missing or mistyped field, or
            // invalid JSON (a character split across frames, half a surrogate pair
            // in each, is refused here).
            Err(message) => return self.error(&message).await,
        };
        match frame {
            ClientFrame::Ping { timestamp } => {
                if self.send(ServerFrame::Pong { timestamp }).await {
                    Next::Continue
                } else {
                    Next::Stop
                }
            }
            ClientFrame::Input { data } => {
                if self.input_limit.check().is_err() {
                    self.state.ratelimits.rejected_ws_input();
                    let max = self.state.settings.rate_limits.ws_input_per_second;
                    return self
                        .error(&format!(
                            "too many input frames (at most {max} per second); input dropped"
                        ))
                        .await;
                }
                let Some((_, input, _)) = attached else {
                    return self
                        .error("the terminal is not attached yet; input was not sent")
                        .await;
                };
                match input.send(data) {
                    Ok(()) => Next::Continue,
                    Err(message) => self.error(message).await,
                }
            }
            ClientFrame::Resize { cols, rows } => {
                let (cols, rows) = clamp_size(u32::try_from(cols).ok(), u32::try_from(rows).ok());
                self.cols = cols;
                self.rows = rows;
                if let Some((terminal, _, client)) = attached {
                    terminal.do_send(Resize { client, cols, rows });
                }
                Next::Continue
            }
        }
    }

    async fn error(&mut self, message: &str) -> Next {
        if self.send(ServerFrame::Error { message }).await {
            Next::Continue
        } else {
            Next::Stop
        }
    }
}
