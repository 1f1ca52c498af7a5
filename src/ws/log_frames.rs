//! The provisioning-log WebSocket's frames, `/api/v1/ws/logs/{id}`: JSON text
//! frames, each an object whose `type` names its variant. The server sends
//! [`ServerFrame`]s: the log's lines, where provisioning stands, how it ended; a
//! client may send a [`ClientFrame`] `ping`.
//!
//! [`PROTOCOL`] is the description in the OpenAPI document; its examples are
//! checked against these types by the tests below.

use chrono::{DateTime, Utc};
use devpocket_actors::logs::Standing;
use devpocket_actors::model::Phase;
use serde::{Deserialize, Serialize};

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Answered with a `pong` echoing `timestamp`.
    Ping {
        #[serde(default)]
        timestamp: Option<serde_json::Number>,
    },
}

impl ClientFrame {
    /// A text frame as a client frame, or what the `error` frame says instead.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| {
            format!("{e}: the only client frame is {{\"type\": \"ping\"}}; the log needs none")
        })
    }
}

/// What the server sends, borrowed from the event it describes.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// One line of the log; `seq` is its line number.
    InstallationLog {
        data: &'a str,
        seq: i64,
        timestamp: DateTime<Utc>,
    },
    /// Where provisioning stands: the environment's `phase` and `progress`
    /// (0–100), and its bootstrap's latest stage marker (before the first one,
    /// `stage` is the phase and the numbers are 0).
    InstallationProgress {
        phase: Phase,
        progress: i32,
        stage: &'a str,
        step: u32,
        total: u32,
        percent: u32,
    },
    /// The bootstrap exited with status 0.
    InstallationComplete,
    /// Provisioning failed; `error` is the environment's status message.
    InstallationError { error: &'a str },
    /// The answer to a `ping`.
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        timestamp: Option<serde_json::Number>,
    },
    /// A client frame was not understood; the connection stays open.
    Error { message: &'a str },
}

impl<'a> ServerFrame<'a> {
    /// Where provisioning stands, as `installation_progress`.
    pub fn progress(s: &'a Standing) -> Self {
        let (stage, step, total, percent) = match &s.stage {
            Some(p) => (p.stage.as_str(), p.step, p.total, p.percent),
            None => (s.phase.as_str(), 0, 0, 0),
        };
        Self::InstallationProgress {
            phase: s.phase,
            progress: s.progress,
            stage,
            step,
            total,
            percent,
        }
    }

    /// The frame as the text of a WebSocket message.
    pub fn to_text(&self) -> String {
        // Cannot fail: every field is a string, a number, a date or a unit enum.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The protocol, for the OpenAPI document.
pub const PROTOCOL: &str = "\
Upgrades to a WebSocket carrying the provisioning log: the stored lines after `after`, \
then one `installation_progress` saying where provisioning stands, then \
`installation_complete` or `installation_error` if provisioning has ended, then \
live events, with no gap and no duplicate where history meets live. JSON text frames.

Server frames:

| Frame | When |
|---|---|
| `{\"type\": \"installation_log\", \"data\": \"==> [1/3] Installing tools\", \"seq\": 12, \"timestamp\": \"2026-12-01T10:00:00Z\"}` | one per line |
| `{\"type\": \"installation_progress\", \"phase\": \"installing\", \"progress\": 50, \"stage\": \"Installing tools\", \"step\": 1, \"total\": 3, \"percent\": 33}` | right after the history, then at each phase change while provisioning (to `provisioning`, `booting`, `installing`, `configuring`, then `ready`, `failed` or `deleting`) and after each stage marker line. `phase` and `progress` (0-100) are the environment's; `stage`, `step`, `total` and `percent` its bootstrap's latest stage marker (before the first one: the phase, and 0) |
| `{\"type\": \"installation_complete\"}` | the bootstrap exited with status 0 |
| `{\"type\": \"installation_error\", \"error\": \"the bootstrap exited with status 1\"}` | provisioning failed |
| `{\"type\": \"pong\", \"timestamp\": 1712345678}` | the answer to a client's `ping` |
| `{\"type\": \"error\", \"message\": \"the only client frame is ping\"}` | a client frame was not understood; the connection stays open |

Client frames:

| Frame | Meaning |
|---|---|
| `{\"type\": \"ping\", \"timestamp\": 1712345678}` | answered with a `pong` echoing `timestamp` (a number, optional) |

A well-formed upgrade is always accepted; a refusal comes afterwards as a close frame \
with a reason: 1008 bad or missing token, or unknown environment (another user's too); \
1000 the environment was deleted; 1013 try again (fell behind: reconnect with \
`after=SEQ`; the server cannot check the token right now; too many connection \
attempts); 1009 a client frame over 64 KiB. The server pings every 30 s.";

#[cfg(test)]
mod tests {
    use devpocket_actors::logs::Progress;
    use serde_json::{Value, json};

    use super::*;

    fn value(frame: &ServerFrame) -> Value {
        serde_json::from_str(&frame.to_text()).unwrap()
    }

    #[test]
    fn a_ping_parses_and_anything_else_says_what_is_wrong() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping","timestamp":5}"#),
            Ok(ClientFrame::Ping {
                timestamp: Some(5.into())
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping"}"#),
            Ok(ClientFrame::Ping { timestamp: None })
        );
        for text in [r#"{"type":"dance"}"#, "[]", "ping", r#"{"kind":"ping"}"#] {
            let message = ClientFrame::parse(text).unwrap_err();
            assert!(
                message.contains("the only client frame"),
                "{text}: {message}"
            );
        }
    }

    /// Every server frame of the protocol as DESIGN.md and the README write it.
    #[test]
    fn every_server_frame_serialises_to_the_protocol() {
        let at: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let line = ServerFrame::InstallationLog {
            data: "hello",
            seq: 3,
            timestamp: at,
        };
        assert_eq!(
            value(&line),
            json!({"type": "installation_log", "data": "hello", "seq": 3, "timestamp": "2026-12-01T10:00:00Z"})
        );
        let before_markers = Standing {
            phase: Phase::Booting,
            progress: 15,
            stage: None,
        };
        assert_eq!(
            value(&ServerFrame::progress(&before_markers)),
            json!({"type": "installation_progress", "phase": "booting", "progress": 15,
                   "stage": "booting", "step": 0, "total": 0, "percent": 0})
        );
        let marked = Standing {
            phase: Phase::Installing,
            progress: 50,
            stage: Some(Progress {
                stage: "Preparing the workspace".into(),
                step: 2,
                total: 5,
                percent: 40,
            }),
        };
        assert_eq!(
            value(&ServerFrame::progress(&marked)),
            json!({"type": "installation_progress", "phase": "installing", "progress": 50,
                   "stage": "Preparing the workspace", "step": 2, "total": 5, "percent": 40})
        );
        assert_eq!(
            value(&ServerFrame::InstallationComplete),
            json!({"type": "installation_complete"})
        );
        assert_eq!(
            value(&ServerFrame::InstallationError { error: "boom" }),
            json!({"type": "installation_error", "error": "boom"})
        );
        assert_eq!(
            value(&ServerFrame::Pong { timestamp: None }),
            json!({"type": "pong"})
        );
        assert_eq!(
            value(&ServerFrame::Error { message: "no" }),
            json!({"type": "error", "message": "no"})
        );
    }

    #[test]
    fn the_protocol_description_shows_the_frames_as_they_are() {
        let client = crate::ws::examples(PROTOCOL, "Client frames:");
        assert_eq!(client.len(), 1);
        assert!(ClientFrame::parse(&client[0].to_string()).is_ok());
        let at: DateTime<Utc> = "2026-12-01T10:00:00Z".parse().unwrap();
        let standing = Standing {
            phase: Phase::Installing,
            progress: 50,
            stage: Some(Progress {
                stage: "Installing tools".into(),
                step: 1,
                total: 3,
                percent: 33,
            }),
        };
        let frames = [
            ServerFrame::InstallationLog {
                data: "==> [1/3] Installing tools",
                seq: 12,
                timestamp: at,
            },
            ServerFrame::progress(&standing),
            ServerFrame::InstallationComplete,
            ServerFrame::InstallationError {
                error: "the bootstrap exited with status 1",
            },
            ServerFrame::Pong {
                timestamp: Some(1712345678.into()),
            },
            ServerFrame::Error {
                message: "the only client frame is ping",
            },
        ];
        let frames: Vec<Value> = frames.iter().map(value).collect();
        assert_eq!(crate::ws::examples(PROTOCOL, "Server frames:"), frames);
    }
}
