//! WebSocket helpers: connecting to a `TestApp`, and reading its frames with a
//! bound on the wait.

use serde_json::Value;

use super::TestApp;

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a WebSocket said next: a JSON text frame, or how it closed.
#[derive(Debug)]
pub enum WsEvent {
    Json(Value),
    Closed(Option<(u16, String)>),
}

/// A WebSocket to `path` on the server at `address` (`http://…`).
pub async fn ws_connect(address: &str, path: &str) -> Ws {
    let url = format!("{}{path}", address.replacen("http://", "ws://", 1));
    let (ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("websocket connect");
    ws
}

impl TestApp {
    pub async fn ws(&self, path: &str) -> Ws {
        ws_connect(&self.address, path).await
    }

    /// A WebSocket whose socket has a small receive buffer, so a test can make it
    /// fall behind without pushing megabytes through the kernel first.
    pub async fn ws_small_buffer(&self, path: &str) -> Ws {
        let addr: std::net::SocketAddr = self
            .address
            .trim_start_matches("http://")
            .parse()
            .expect("a socket address");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        let url = format!("{}{path}", self.address.replacen("http://", "ws://", 1));
        let (ws, _) =
            tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
                .await
                .expect("websocket connect");
        ws
    }
}

/// The next frame (bounded: 120 s), skipping pings.
pub async fn ws_next(ws: &mut Ws) -> WsEvent {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("websocket frame in time");
        match msg {
            Some(Ok(Message::Text(text))) => {
                return WsEvent::Json(serde_json::from_str(&text).expect("json frame"));
            }
            Some(Ok(Message::Close(frame))) => {
                return WsEvent::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return WsEvent::Closed(None),
        }
    }
}

/// Reads frames until one of `type`, returning every frame read (including it).
pub async fn ws_until(ws: &mut Ws, kind: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        match ws_next(ws).await {
            WsEvent::Json(v) => {
                let done = v["type"] == kind;
                frames.push(v);
                if done {
                    return frames;
                }
            }
            WsEvent::Closed(c) => panic!("socket closed before {kind}: {c:?}; frames: {frames:?}"),
        }
    }
}
