//! One client's connection to its terminal session, once attached: output and
//! status events from the session's queue out as frames, client frames in
//! (keystrokes straight to the SSH channel's writer, sizes to the session, pings
//! answered), a WebSocket ping every 30 s, and the close that says why it ended.

use std::time::{Duration, Instant};

use actix_web::web;
use actix_ws::{CloseCode, Message, Session};
use devpocket_actors::inspect::Handle;
use devpocket_actors::model::Status;
use devpocket_actors::terminal::{
    Attach, Detach, InputPort, Resize, TermEvent, TermState, TerminalActor,
};
use uuid::Uuid;

use super::super::ws_common::{WsSession, close};
use super::{ConnectionSlot, MAX_FRAME_BYTES, clamp_size};
use crate::audit::{Action, TerminalAudit};
use crate::startup::AppState;
use crate::ws::terminal_frames::{ClientFrame, ServerFrame, WelcomeEnvironment, WelcomeSession};

const HEARTBEAT: Duration = Duration::from_secs(30);
/// A client whose socket takes no frame for this long is disconnected.
const SEND_TIMEOUT: Duration = Duration::from_secs(30);
/// A client that answers nothing for this long is removed.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// What the `welcome` frame says of the environment.
pub(super) struct Welcome {
    pub(super) name: String,
    pub(super) template: String,
    pub(super) status: Status,
}

pub(super) struct Connection {
    pub(super) state: web::Data<AppState>,
    pub(super) session: Session,
    pub(super) stream: actix_ws::MessageStream,
    pub(super) env_id: Uuid,
    pub(super) name: String,
    pub(super) cols: u32,
    pub(super) rows: u32,
    pub(super) last_seen: Instant,
    /// The client's address, told with its input's activity.
    pub(super) client_address: Option<String>,
    pub(super) input_limit: governor::DefaultDirectRateLimiter,
    pub(super) _slot: ConnectionSlot,
    pub(super) audit: TerminalAudit,
    pub(super) ws: WsSession,
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

    pub(super) async fn run(
        mut self,
        terminal: Handle<TerminalActor>,
        welcome: Welcome,
        resume: Option<u64>,
    ) {
        let mut attached = match terminal
            .send(Attach {
                cols: self.cols,
                rows: self.rows,
                resume,
                client_address: self.client_address.clone(),
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
        let clients = attached.clients + (&mut attached.elsewhere).await;
        if !self.send_text(self.welcome(&welcome, clients)).await {
            terminal.do_send(Detach {
                client: attached.client,
            });
            self.audit.record(Action::TerminalDetach);
            return;
        }
        if attached.connected {
            self.ws.set_state("attached");
        }
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
                        Some(TermEvent::Status { state, message, stop_at }) => {
                            let closed = state == TermState::Closed;
                            if state == TermState::Connected {
                                self.ws.set_state("attached");
                            }
                            let frame = ServerFrame::Status { state, message: &message, stop_at }.to_text();
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
                msg = self.stream.recv() => match self.client_frame(msg, (&terminal, &attached.input, attached.client)).await {
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

    /// Handles one client frame of the client `client` of `terminal`.
    async fn client_frame(
        &mut self,
        msg: Option<Result<Message, actix_ws::ProtocolError>>,
        (terminal, input, client): (&Handle<TerminalActor>, &InputPort, u64),
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
                match input.send(data) {
                    Ok(()) => Next::Continue,
                    Err(message) => self.error(message).await,
                }
            }
            ClientFrame::Resize { cols, rows } => {
                let (cols, rows) = clamp_size(u32::try_from(cols).ok(), u32::try_from(rows).ok());
                self.cols = cols;
                self.rows = rows;
                terminal.do_send(Resize { client, cols, rows });
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
