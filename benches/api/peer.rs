//! The peer of the 429 path: a bare actix-web server, in a process of its own on
//! the same machine, that answers every request with the very bytes DevPocket
//! answered a refused request with (status, headers, body) and does nothing else:
//! no limiter, no metrics, no log, no middleware. What wrk measures against it is
//! what this machine, its loopback and wrk allow any actix-web server, the ceiling
//! for DevPocket's figure in the same run.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

/// Set in the peer's environment: the answer it gives, as JSON.
pub const ENV: &str = "DEVPOCKET_BENCH_PEER";

/// One recorded answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Answer {
    /// The answer DevPocket gives to `GET url` now (headers it sets per request,
    /// such as the request id, are replayed as recorded).
    pub async fn record(http: &reqwest::Client, url: &str) -> anyhow::Result<Self> {
        let response = http.get(url).send().await?;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            // actix-web writes these itself.
            .filter(|(name, _)| !matches!(name.as_str(), "content-length" | "date"))
            .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_owned())))
            .collect();
        let body = response.text().await?;
        Ok(Self {
            status,
            headers,
            body,
        })
    }
}

/// The peer process, killed when dropped.
pub struct Peer {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub base: String,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Peer {
    /// Starts this benchmark's own executable as the peer, with `workers` worker
    /// threads (DevPocket's default: one per core).
    pub fn start(answer: &Answer, workers: usize) -> anyhow::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .env(ENV, serde_json::to_string(&(answer, workers))?)
            .stdout(Stdio::piped())
            .spawn()
            .context("starting the peer")?;
        let stdout = child.stdout.take().context("the peer's stdout")?;
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line)?;
        let base = line.trim().to_owned();
        if !base.starts_with("http://") {
            let _ = child.kill();
            bail!("the peer did not start: {line:?}");
        }
        Ok(Self { child, base })
    }
}

/// The peer's `main`: serves `spec` (from [`ENV`]) on a free loopback port, whose
/// address it prints, until killed.
pub fn serve(spec: &str) -> anyhow::Result<()> {
    let (answer, workers): (Answer, usize) = serde_json::from_str(spec)?;
    let status = StatusCode::from_u16(answer.status)?;
    let mut headers = Vec::new();
    for (name, value) in &answer.headers {
        headers.push((
            HeaderName::try_from(name.as_str())?,
            HeaderValue::try_from(value.as_str())?,
        ));
    }
    let body = web::Bytes::from(answer.body);
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    println!("http://{}", listener.local_addr()?);
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            let (headers, body) = (headers.clone(), body.clone());
            App::new().default_service(web::to(move || {
                let mut response = HttpResponse::build(status);
                for header in &headers {
                    response.insert_header(header.clone());
                }
                let response = response.body(body.clone());
                async move { response }
            }))
        })
        .workers(workers)
        .disable_signals()
        .listen(listener)?
        .run()
        .await
    })?;
    Ok(())
}
