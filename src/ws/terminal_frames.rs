//! The terminal WebSocket's frames, `/api/v1/ws/terminal/{id}`: JSON text frames,
//! each an object whose `type` names its variant. A client sends [`ClientFrame`]s
//! (`input`, `resize`, `ping`); the server sends [`ServerFrame`]s (`welcome`,
//! `output`, `status`, `pong`, `error`). The mobile app's contract fixes these
//! shapes: extra fields are fine, renamed or missing ones are not.
//!
//! [`PROTOCOL`] is the description in the OpenAPI document; its examples are
//! checked against these types by the tests below.

use chrono::{DateTime, Utc};
use devpocket_actors::model::Status;
use devpocket_actors::terminal::TermState;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// What a client sends.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Keystrokes or pasted text, written to the shell as they are (xterm's
    /// bytes: `\r` for Enter, escape sequences for arrows).
    Input { data: String },
    /// The client's new size (the route clamps it).
    Resize { cols: u64, rows: u64 },
    /// Answered with a `pong` echoing `timestamp` (the app sends milliseconds).
    Ping {
        #[serde(default)]
        timestamp: Option<serde_json::Number>,
    },
}

impl ClientFrame {
    /// A text frame as a client frame, or what the `error` frame says instead:
    /// what was wrong with it and which frames there are.
    pub fn parse(text: &str) -> Result<Self, String> {
        serde_json::from_str(text).map_err(|e| {
            format!(
                "{e}: frames are JSON objects with a \"type\": use input {{\"data\"}}, \
                 resize {{\"cols\", \"rows\"}} or ping"
            )
        })
    }
}

/// What the server sends. Borrowed, so that output is serialised straight from
/// the shared chunk.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerFrame<'a> {
    /// The first frame.
    Welcome {
        message: String,
        environment: WelcomeEnvironment<'a>,
        session: WelcomeSession<'a>,
    },
    /// Terminal output, numbered 1, 2, 3… per session.
    Output { data: &'a str, seq: u64 },
    /// Where the terminal stands (`connected`, `reconnecting`, `closed`,
    /// `idle_warning`), and why; `stop_at` with `idle_warning`.
    Status {
        state: TermState,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        stop_at: Option<DateTime<Utc>>,
    },
    /// The answer to a `ping`.
    Pong {
        #[serde(skip_serializing_if = "Option::is_none")]
        timestamp: Option<serde_json::Number>,
    },
    /// A client frame was refused; the connection stays open.
    Error { message: &'a str },
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WelcomeEnvironment<'a> {
    pub id: Uuid,
    pub name: &'a str,
    /// The template's name.
    pub template: &'a str,
    pub status: Status,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WelcomeSession<'a> {
    pub name: &'a str,
    /// The session's clients, this one included.
    pub clients: usize,
}

impl ServerFrame<'_> {
    /// The frame as the text of a WebSocket message.
    pub fn to_text(&self) -> String {
        // Cannot fail: every field is a string, a number, a uuid or a unit enum.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The protocol, for the OpenAPI document.
pub const PROTOCOL: &str = "\
Upgrades to a WebSocket with a terminal on the environment: a shell in tmux, shared by \
every client of the same `session`, that outlives dropped connections. The socket is \
accepted whatever the environment's state: until it runs, the client gets a `status` \
frame (`reconnecting`) at each change of the environment's state, and the terminal \
attaches as soon as it runs. JSON text frames only, each an object with a `type`.

Client frames:

| Frame | Meaning |
|---|---|
| `{\"type\": \"input\", \"data\": \"ls -la\\r\"}` | keystrokes or pasted text, written as they are |
| `{\"type\": \"resize\", \"cols\": 120, \"rows\": 40}` | the client's new size |
| `{\"type\": \"ping\", \"timestamp\": 1712345678}` | answered with a `pong` echoing `timestamp` (a number, optional) |

Server frames:

| Frame | Meaning |
|---|---|
| `{\"type\": \"welcome\", \"message\": \"Connected to My Project\", \"environment\": {\"id\": \"6f1c2a3e-0000-4000-8000-000000000001\", \"name\": \"My Project\", \"template\": \"ubuntu\", \"status\": \"running\"}, \"session\": {\"name\": \"main\", \"clients\": 1}}` | the first frame |
| `{\"type\": \"output\", \"data\": \"$ \", \"seq\": 1}` | terminal output, numbered 1, 2, 3… per session |
| `{\"type\": \"status\", \"state\": \"connected\", \"message\": \"terminal attached\"}` | `connected`, `reconnecting`, or `closed` (stopped or deleted; the socket then closes with 1000) |
| `{\"type\": \"status\", \"state\": \"idle_warning\", \"message\": \"no activity: the environment stops at 2026-12-04T12:00:00Z unless someone types here\", \"stop_at\": \"2026-12-04T12:00:00Z\"}` | the environment stops for being idle at `stop_at` (`DEVPOCKET_AUTO_STOP_WARNING` before); any input cancels it (a `connected` status follows), else `closed` at that time |
| `{\"type\": \"pong\", \"timestamp\": 1712345678}` | the answer to a `ping` |
| `{\"type\": \"error\", \"message\": \"input needs a string data\"}` | a client frame was refused; the connection stays open |

A text frame over 256 KiB gets an `error` frame. A well-formed upgrade is always \
accepted; a refusal comes afterwards as a close frame with a reason: 1008 bad or \
missing token, unknown environment (another user's too), invalid session name, or too \
many terminal connections for the plan; 1013 try again (the server cannot check the \
token or reach the environment right now, the client fell behind: reconnect with \
`resume=SEQ`, or too many connection attempts); 1009 a frame over 4 MiB; 1001 nothing \
received for 90 s; 1000 the environment was stopped or deleted. The server pings every \
30 s.";

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn value(frame: &ServerFrame) -> Value {
        serde_json::from_str(&frame.to_text()).unwrap()
    }

    /// Every client frame the mobile app sends, as its contract writes it.
    #[test]
    fn every_client_frame_of_the_contract_parses() {
        assert_eq!(
            ClientFrame::parse(r#"{"type":"input","data":"ls\r\u001b[A"}"#),
            Ok(ClientFrame::Input {
                data: "ls\r\x1b[A".into()
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"resize","cols":120,"rows":40}"#),
            Ok(ClientFrame::Resize {
                cols: 120,
                rows: 40
            })
        );
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping","timestamp":1712345678901}"#),
            Ok(ClientFrame::Ping {
                timestamp: Some(1712345678901u64.into())
            })
        );
        // The timestamp is optional; fields the server does not know are ignored.
        assert_eq!(
            ClientFrame::parse(r#"{"type":"ping","client":"app"}"#),
            Ok(ClientFrame::Ping { timestamp: None })
        );
    }

    #[test]
    fn a_bad_client_frame_gets_a_message_that_says_what_is_wrong() {
        for (text, says) in [
            (r#"{"type":"dance"}"#, "unknown variant `dance`"),
            (r#"{"data":"ls"}"#, "missing field `type`"),
            (r#"{"type":"input"}"#, "missing field `data`"),
            (r#"{"type":"input","data":5}"#, "expected a string"),
            (r#"{"type":"resize","cols":-1,"rows":5}"#, "invalid value"),
            (r#"{"type":"resize","cols":80.5,"rows":5}"#, "invalid type"),
            (r#"{"type":"ping","timestamp":"x"}"#, "invalid type"),
            ("5", "invalid type"),
            (r#"{"type":"input","data":"\ud83d"}"#, "hex escape"),
            ("not json", "expected"),
        ] {
            let message = ClientFrame::parse(text).unwrap_err();
            assert!(message.contains(says), "{text}: {message}");
            assert!(message.contains("use input"), "{text}: {message}");
        }
    }

    /// Every server frame, serialised to the JSON the app's contract reads.
    #[test]
    fn every_server_frame_serialises_to_the_contract() {
        let id = Uuid::nil();
        let welcome = ServerFrame::Welcome {
            message: "Connected to web".into(),
            environment: WelcomeEnvironment {
                id,
                name: "web",
                template: "ubuntu",
                status: Status::Running,
            },
            session: WelcomeSession {
                name: "main",
                clients: 2,
            },
        };
        assert_eq!(
            value(&welcome),
            json!({"type": "welcome", "message": "Connected to web",
                   "environment": {"id": id, "name": "web", "template": "ubuntu", "status": "running"},
                   "session": {"name": "main", "clients": 2}})
        );
        let output = ServerFrame::Output {
            data: "€\r\n",
            seq: 7,
        };
        assert_eq!(
            value(&output),
            json!({"type": "output", "data": "€\r\n", "seq": 7})
        );
        for (state, name) in [
            (TermState::Connected, "connected"),
            (TermState::Reconnecting, "reconnecting"),
            (TermState::Closed, "closed"),
        ] {
            let status = ServerFrame::Status {
                state,
                message: "why",
                stop_at: None,
            };
            assert_eq!(
                value(&status),
                json!({"type": "status", "state": name, "message": "why"})
            );
        }
        let at: DateTime<Utc> = "2026-12-04T12:00:00Z".parse().unwrap();
        let warning = ServerFrame::Status {
            state: TermState::IdleWarning,
            message: "soon",
            stop_at: Some(at),
        };
        assert_eq!(
            value(&warning),
            json!({"type": "status", "state": "idle_warning", "message": "soon", "stop_at": "2026-12-04T12:00:00Z"})
        );
        let pong = ServerFrame::Pong {
            timestamp: Some(12345.into()),
        };
        assert_eq!(value(&pong), json!({"type": "pong", "timestamp": 12345}));
        let bare = ServerFrame::Pong { timestamp: None };
        assert_eq!(value(&bare), json!({"type": "pong"}));
        let error = ServerFrame::Error { message: "no" };
        assert_eq!(value(&error), json!({"type": "error", "message": "no"}));
    }

    /// The description's examples are frames of these types, and it lists them all.
    #[test]
    fn the_protocol_description_shows_the_frames_as_they_are() {
        let client = crate::ws::examples(PROTOCOL, "Client frames:");
        assert_eq!(client.len(), 3);
        for example in &client {
            let frame = ClientFrame::parse(&example.to_string());
            assert!(frame.is_ok(), "{example}: {frame:?}");
        }
        let server = crate::ws::examples(PROTOCOL, "Server frames:");
        let id = Uuid::parse_str("6f1c2a3e-0000-4000-8000-000000000001").unwrap();
        let frames = [
            ServerFrame::Welcome {
                message: "Connected to My Project".into(),
                environment: WelcomeEnvironment {
                    id,
                    name: "My Project",
                    template: "ubuntu",
                    status: Status::Running,
                },
                session: WelcomeSession {
                    name: "main",
                    clients: 1,
                },
            },
            ServerFrame::Output { data: "$ ", seq: 1 },
            ServerFrame::Status {
                state: TermState::Connected,
                message: "terminal attached",
                stop_at: None,
            },
            ServerFrame::Status {
                state: TermState::IdleWarning,
                message: "no activity: the environment stops at 2026-12-04T12:00:00Z unless someone types here",
                stop_at: Some("2026-12-04T12:00:00Z".parse().unwrap()),
            },
            ServerFrame::Pong {
                timestamp: Some(1712345678.into()),
            },
            ServerFrame::Error {
                message: "input needs a string data",
            },
        ];
        let frames: Vec<Value> = frames.iter().map(value).collect();
        assert_eq!(server, frames);
    }
}
