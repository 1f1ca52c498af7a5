//! The two kinds of terminal client measured: a WebSocket client of the bridge and
//! an `ssh -tt` process on the same sshd, behind one interface.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub struct WsClient {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    url: String,
    /// The last output seq received, and how many were missing in between.
    pub last_seq: u64,
    pub gaps: u64,
}

impl WsClient {
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, None, true)
            .await
            .with_context(|| format!("connecting {url}"))?;
        Ok(Self {
            ws,
            url: url.to_owned(),
            last_seq: 0,
            gaps: 0,
        })
    }

    /// Reconnects as the app does after a close: with `resume` = the last seq seen.
    pub async fn reconnect(&mut self) -> anyhow::Result<()> {
        let url = format!("{}&resume={}", self.url, self.last_seq);
        let (ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
            .await
            .with_context(|| format!("connecting {url}"))?;
        self.ws = ws;
        Ok(())
    }

    pub async fn input(&mut self, data: &str) -> anyhow::Result<()> {
        let frame = json!({"type": "input", "data": data}).to_string();
        self.ws.send(Message::text(frame)).await?;
        Ok(())
    }

    /// The next frame as JSON; `None` once the socket closed.
    async fn frame(&mut self) -> Option<Value> {
        loop {
            match self.ws.next().await? {
                Ok(Message::Text(text)) => return serde_json::from_str(&text).ok(),
                Ok(Message::Close(frame)) => {
                    if let Some(f) = frame.filter(|f| u16::from(f.code) != 1000) {
                        eprintln!("closed by the server: {} {}", u16::from(f.code), f.reason);
                    }
                    return None;
                }
                Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// The next output; `None` once the socket or the terminal closed.
    pub async fn output(&mut self) -> Option<String> {
        loop {
            let frame = self.frame().await?;
            match frame["type"].as_str() {
                Some("output") => {
                    let seq = frame["seq"].as_u64().unwrap_or(0);
                    if self.last_seq > 0 && seq != self.last_seq + 1 {
                        self.gaps += 1;
                    }
                    self.last_seq = seq;
                    return frame["data"].as_str().map(str::to_owned);
                }
                Some("status") if frame["state"] == "closed" => return None,
                Some("error") => eprintln!("server error frame: {}", frame["message"]),
                _ => {}
            }
        }
    }

    /// Waits until the terminal is attached.
    pub async fn ready_attached(&mut self) -> anyhow::Result<()> {
        tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                let Some(frame) = self.frame().await else {
                    bail!("the socket closed before the terminal attached");
                };
                if frame["type"] == "status" && frame["state"] == "connected" {
                    return Ok(());
                }
            }
        })
        .await
        .context("the terminal did not attach")?
    }

    pub async fn wait_for(&mut self, marker: &str, limit: Duration) -> anyhow::Result<usize> {
        wait_for(self, marker, limit).await
    }

    /// Reads everything until the socket closes.
    pub async fn drain(mut self) {
        while self.frame().await.is_some() {}
    }

    /// Reads, but not while `pause` is true (the socket is then not read at all, as
    /// on a stalled network). Says how the stream ended and whether output had gaps.
    pub async fn read_pausable(
        mut self,
        mut pause: watch::Receiver<bool>,
    ) -> anyhow::Result<String> {
        let mut last_seq: Option<u64> = None;
        let mut gaps = 0;
        let mut resumed_at: Option<Instant> = None;
        loop {
            if *pause.borrow() {
                pause.changed().await?;
                resumed_at = Some(Instant::now());
                continue;
            }
            if resumed_at.is_some_and(|t| t.elapsed() > Duration::from_secs(15)) {
                return Ok(format!(
                    "it stayed connected and caught up ({gaps} gaps in seq)"
                ));
            }
            let msg = tokio::select! {
                msg = self.ws.next() => msg,
                _ = pause.changed() => continue,
                _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
            };
            match msg {
                Some(Ok(Message::Text(text))) => {
                    let frame: Value = serde_json::from_str(&text)?;
                    if let Some(seq) = frame["seq"].as_u64() {
                        if last_seq.is_some_and(|l| seq != l + 1) {
                            gaps += 1;
                        }
                        last_seq = Some(seq);
                    }
                }
                Some(Ok(Message::Close(Some(frame)))) => {
                    return Ok(format!(
                        "it received what was queued ({gaps} gaps in seq), then close {} \"{}\"",
                        u16::from(frame.code),
                        frame.reason
                    ));
                }
                Some(Ok(Message::Close(None))) | None => {
                    return Ok("its connection closed without a reason".to_owned());
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Ok(format!("its connection failed: {e}")),
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

pub struct SshClient {
    child: Child,
    stdin: ChildStdin,
    stdout: ChildStdout,
    buf: Vec<u8>,
}

impl SshClient {
    pub fn new(mut child: Child) -> anyhow::Result<Self> {
        let stdin = child.stdin.take().context("ssh stdin")?;
        let stdout = child.stdout.take().context("ssh stdout")?;
        Ok(Self {
            child,
            stdin,
            stdout,
            buf: vec![0; 64 * 1024],
        })
    }
}

pub enum Term {
    Ws(WsClient),
    Ssh(SshClient),
}

const KEYS: [char; 4] = ['Q', 'W', 'Y', 'V'];

impl Term {
    pub async fn send(&mut self, data: &str) -> anyhow::Result<()> {
        match self {
            Term::Ws(ws) => ws.input(data).await,
            Term::Ssh(ssh) => {
                ssh.stdin.write_all(data.as_bytes()).await?;
                ssh.stdin.flush().await?;
                Ok(())
            }
        }
    }

    pub async fn next(&mut self) -> Option<String> {
        match self {
            Term::Ws(ws) => ws.output().await,
            Term::Ssh(ssh) => {
                let n = ssh.stdout.read(&mut ssh.buf).await.ok()?;
                (n > 0).then(|| String::from_utf8_lossy(&ssh.buf[..n]).into_owned())
            }
        }
    }

    pub async fn wait_for(&mut self, marker: &str, limit: Duration) -> anyhow::Result<usize> {
        wait_for(self, marker, limit).await
    }

    /// Waits for a shell prompt that takes input.
    pub async fn ready(&mut self) -> anyhow::Result<()> {
        if let Term::Ws(ws) = self {
            ws.ready_attached().await?;
        }
        self.send("echo RE\"\"ADY\r").await?;
        self.wait_for("READY", Duration::from_secs(30)).await?;
        self.settle(Duration::from_millis(200)).await;
        Ok(())
    }

    /// Reads and discards output for `d`.
    async fn settle(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Ok(Some(_)) = tokio::time::timeout_at(deadline, self.next()).await {}
    }

    /// Types `n` keys one at a time at a prompt, each after the previous one's echo;
    /// the line is cleared (Ctrl-U) every 40 keys, outside the measurement.
    pub async fn echo_latencies(&mut self, n: usize) -> anyhow::Result<Vec<Duration>> {
        let mut out = Vec::with_capacity(n);
        self.send("\x15").await?;
        self.settle(Duration::from_millis(50)).await;
        for i in 0..n {
            let key = KEYS[i % KEYS.len()];
            let start = Instant::now();
            self.send(key.encode_utf8(&mut [0; 4])).await?;
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match self.next().await {
                        Some(chunk) if chunk.contains(key) => return Ok(()),
                        Some(_) => {}
                        None => bail!("the terminal closed"),
                    }
                }
            })
            .await
            .context("no echo")??;
            out.push(start.elapsed());
            if (i + 1) % 40 == 0 {
                self.send("\x15").await?;
                self.settle(Duration::from_millis(50)).await;
            } else {
                // A fast typist, and under the per-connection input frame limit.
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        Ok(out)
    }

    /// Reads everything until the terminal closes.
    pub async fn drain_forever(mut self) {
        while self.next().await.is_some() {}
    }

    pub async fn close(self) {
        match self {
            Term::Ws(ws) => ws.close().await,
            Term::Ssh(mut ssh) => {
                let _ = ssh.child.kill().await;
            }
        }
    }
}

/// Something that yields terminal output.
pub trait Output {
    /// The next piece of output; `None` once the terminal closed.
    fn next_output(&mut self) -> impl Future<Output = Option<String>>;
}

impl Output for WsClient {
    async fn next_output(&mut self) -> Option<String> {
        self.output().await
    }
}

impl Output for Term {
    async fn next_output(&mut self) -> Option<String> {
        self.next().await
    }
}

/// Reads until `marker` has been seen; returns the bytes read.
async fn wait_for(out: &mut impl Output, marker: &str, limit: Duration) -> anyhow::Result<usize> {
    let mut tail = String::new();
    let mut bytes = 0;
    tokio::time::timeout(limit, async {
        loop {
            let Some(chunk) = out.next_output().await else {
                bail!("the terminal closed before `{marker}`");
            };
            bytes += chunk.len();
            tail.push_str(&chunk);
            if tail.contains(marker) {
                return Ok(bytes);
            }
            let keep = tail.len().saturating_sub(marker.len());
            let cut = (keep..=tail.len())
                .find(|i| tail.is_char_boundary(*i))
                .unwrap_or(0);
            tail.drain(..cut);
        }
    })
    .await
    .with_context(|| format!("`{marker}` did not arrive"))?
}

pub fn percentile(xs: &mut [Duration], q: f64) -> Duration {
    xs.sort();
    let i = ((xs.len() as f64 - 1.0) * q).round() as usize;
    xs.get(i).copied().unwrap_or_default()
}
