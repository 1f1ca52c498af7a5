//! The fake's HTTP side (hyper, HTTP/1.1): authentication, DigitalOcean's rate
//! limits and headers, injected faults (429, 5xx, slow answers, dropped
//! connections), and the OpenAPI check of every request and response.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rand::RngExt;
use serde_json::Value;
use tokio::net::TcpListener;

use super::api::error;
use super::hold::{Point, Step};
use super::openapi::spec;
use super::{Exchange, Inner};

/// Returned by the service to make hyper close the connection without an answer.
#[derive(Debug)]
pub struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

pub async fn serve(
    inner: Arc<Inner>,
    listener: TcpListener,
    mut stop: tokio::sync::oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => break,
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let inner = inner.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let inner = inner.clone();
                        async move { handle(inner, req).await }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

/// What goes wrong with one request: drawn by the configured rates, or aimed at
/// it (`FakeDo::fault_next`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `retry-after`.
    Throttle,
    /// 503 before applying.
    ErrorBefore,
    /// 500 after applying.
    ErrorAfter,
    /// Applied; the answer comes after `slow_for`.
    Slow,
    /// The connection closes without an answer, before applying.
    DropBefore,
    /// The connection closes without an answer, after applying.
    DropAfter,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::Throttle => "429",
            Fault::ErrorBefore => "5xx before applying",
            Fault::ErrorAfter => "5xx after applying",
            Fault::Slow => "slow answer",
            Fault::DropBefore => "dropped before applying",
            Fault::DropAfter => "dropped after applying",
        }
    }
}

fn draw(inner: &Inner) -> Option<Fault> {
    let faults = inner.config().faults;
    let mut rng = rand::rng();
    let r: f64 = rng.random();
    let half = rng.random_bool(0.5);
    let mut edge = faults.throttle;
    if r < edge {
        return Some(Fault::Throttle);
    }
    edge += faults.server_error;
    if r < edge {
        return Some(if half {
            Fault::ErrorBefore
        } else {
            Fault::ErrorAfter
        });
    }
    edge += faults.slow;
    if r < edge {
        return Some(Fault::Slow);
    }
    edge += faults.dropped;
    if r < edge {
        return Some(if half {
            Fault::DropBefore
        } else {
            Fault::DropAfter
        });
    }
    None
}

fn epoch(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Counts a request against the token's windows: the rate-limit headers, and
/// `Some(retry after)` when a window is used up.
fn count(inner: &Inner) -> (Vec<(String, String)>, Option<u64>) {
    let limits = inner.config().rate_limits;
    let mut state = inner.lock();
    let now = Instant::now();
    if state.windows.len() != limits.len() {
        state.windows = vec![(now, 0); limits.len()];
    }
    let mut retry_after = None;
    for ((limit, per), (start, used)) in limits.iter().zip(state.windows.iter_mut()) {
        if now.duration_since(*start) >= *per {
            *start = now;
            *used = 0;
        }
        if *used >= *limit {
            let left = per.saturating_sub(now.duration_since(*start));
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            retry_after = Some(retry_after.unwrap_or(0).max(secs.max(1)));
        }
    }
    if retry_after.is_none() {
        for (_, used) in state.windows.iter_mut() {
            *used += 1;
        }
    }
    // The headers speak of the first (hourly) window.
    let headers = match (limits.first(), state.windows.first()) {
        (Some((limit, per)), Some((start, used))) => {
            let reset = SystemTime::now() + per.saturating_sub(now.duration_since(*start));
            vec![
                ("ratelimit-limit".to_owned(), limit.to_string()),
                (
                    "ratelimit-remaining".to_owned(),
                    limit.saturating_sub(*used).to_string(),
                ),
                ("ratelimit-reset".to_owned(), (epoch(reset) + 1).to_string()),
            ]
        }
        _ => Vec::new(),
    };
    (headers, retry_after)
}

async fn handle(
    inner: Arc<Inner>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let _busy = inner.holds.busy();
    let method = req.method().as_str().to_owned();
    let path = req.uri().path().to_owned();
    let query: Vec<(String, String)> = req
        .uri()
        .query()
        .map(|q| {
            url::form_urlencoded::parse(q.as_bytes())
                .into_owned()
                .collect()
        })
        .unwrap_or_default();
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let authorization = header("authorization");
    let content_type = header("content-type");
    let body = req
        .into_body()
        .collect()
        .await
        .map_err(|_| Dropped)?
        .to_bytes();

    let mut exchange = Exchange {
        method: method.clone(),
        path: path.clone(),
        query: query.clone(),
        operation: String::new(),
        status: 0,
        fault: None,
        at: std::time::Instant::now(),
    };
    let Some((op, vars)) = spec().route(&method, &path) else {
        inner.violation(format!(
            "{method} {path} is not an operation of the API description"
        ));
        exchange.status = 404;
        inner.log(exchange);
        return Ok(respond(
            404,
            &[],
            Some(
                &error(
                    404,
                    "not_found",
                    "The resource you were accessing could not be found.",
                )
                .body
                .unwrap_or_default(),
            ),
        ));
    };
    exchange.operation = op.id.clone();
    let mut logged = false;
    let (rate_headers, throttled) = count(&inner);
    let expected = format!("Bearer {}", inner.token);
    let reply = if authorization.as_deref() != Some(expected.as_str()) {
        error(401, "Unauthorized", "Unable to authenticate you")
    } else {
        match spec().check_request(op, &vars, &query, content_type.as_deref(), &body) {
            Err(problem) => {
                inner.violation(problem.clone());
                error(400, "bad_request", &problem)
            }
            Ok(_) if throttled.is_some() => {
                error(429, "too_many_requests", "API Rate limit exceeded.")
            }
            Ok(parsed) => {
                let arrival = Step::Request(Point::Arrival, op.id.clone());
                inner.holds.pass(arrival, &query).await;
                let fault = inner.holds.take_fault(&op.id).or_else(|| draw(&inner));
                exchange.fault = fault.map(Fault::name);
                match fault {
                    Some(Fault::Throttle) => {
                        error(429, "too_many_requests", "API Rate limit exceeded.")
                    }
                    Some(Fault::ErrorBefore) => {
                        error(503, "service_unavailable", "Service Unavailable")
                    }
                    Some(Fault::DropBefore) => {
                        inner.log(exchange);
                        return Err(Dropped);
                    }
                    _ => {
                        let reply = inner.dispatch(&op.id, &vars, &query, parsed);
                        let delay = inner
                            .config()
                            .delays
                            .iter()
                            .find(|(o, _)| *o == op.id)
                            .map(|d| d.1);
                        // Held-back answers are logged first: the client may give up
                        // and close the connection, which drops this future.
                        let answer = Step::Request(Point::Answer, op.id.clone());
                        let held = inner.holds.holding(&answer, &query);
                        if delay.is_some() || held || fault == Some(Fault::Slow) {
                            let mut early = exchange.clone();
                            early.status = reply.status;
                            inner.log(early);
                            logged = true;
                        }
                        inner.holds.pass(answer, &query).await;
                        if let Some(delay) = delay {
                            tokio::time::sleep(delay).await;
                        }
                        match fault {
                            Some(Fault::ErrorAfter) => error(
                                500,
                                "server_error",
                                "Server was unable to give you a response.",
                            ),
                            Some(Fault::DropAfter) => {
                                inner.log(exchange);
                                return Err(Dropped);
                            }
                            Some(Fault::Slow) => {
                                let slow = inner.config().faults.slow_for;
                                tokio::time::sleep(slow).await;
                                reply
                            }
                            _ => reply,
                        }
                    }
                }
            }
        }
    };
    let mut headers = rate_headers;
    let retry_after = match (reply.status, throttled) {
        (429, Some(secs)) => Some(secs),
        (429, None) => Some(1),
        _ => None,
    };
    if let Some(secs) = retry_after {
        headers.push(("retry-after".into(), secs.to_string()));
    }
    if let Err(problem) = spec().check_response(op, reply.status, &headers, reply.body.as_ref()) {
        inner.violation(format!("the fake's own answer is wrong: {problem}"));
    }
    exchange.status = reply.status;
    if !logged {
        inner.log(exchange);
    }
    Ok(respond(reply.status, &headers, reply.body.as_ref()))
}

fn respond(
    status: u16,
    headers: &[(String, String)],
    body: Option<&Value>,
) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(status);
    for (name, value) in headers {
        builder = builder.header(name, value);
    }
    let body = match body {
        Some(json) => {
            builder = builder.header("content-type", "application/json; charset=utf-8");
            Bytes::from(json.to_string())
        }
        None => {
            builder = builder.header("content-type", "application/json; charset=utf-8");
            Bytes::new()
        }
    };
    builder
        .body(Full::new(body))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}
