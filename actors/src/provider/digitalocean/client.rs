//! The HTTP client of DigitalOcean's API v2: bearer token, a timeout on every
//! call, the shared rate limiter, 429 answered by waiting `retry-after`, and 5xx,
//! timeouts and dropped connections retried with jittered backoff — but only for
//! requests that are safe to repeat. A request that creates something and may have
//! taken effect is reported as `Uncertain`, so that the caller looks before it
//! creates again.
//!
//! Every request sent is counted in `devpocket_provider_api_calls_total`, every
//! retry in `devpocket_provider_api_retries_total` and every request that ends in
//! an error for its caller in `devpocket_provider_api_errors_total` (see
//! [`Client::with_recorder`]).

use std::sync::Arc;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::limiter::Limiter;
use crate::backoff::Backoff;

/// Whether a request may be sent again after an answer that leaves it unknown
/// whether it took effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Repeat {
    /// Reading, deleting, power actions: repeating does no harm.
    Safe,
    /// Creating: repeating could make a second one.
    Unsafe,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// DigitalOcean answered with an error body.
    #[error("DigitalOcean answered {status}: {message} ({id})")]
    Api {
        status: u16,
        id: String,
        message: String,
    },
    /// The request may or may not have taken effect.
    #[error("no clear answer from DigitalOcean: {0}")]
    Uncertain(String),
    /// The answer was not what the API describes.
    #[error("unexpected answer from DigitalOcean: {0}")]
    Decode(String),
}

impl ApiError {
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Api { status, .. } => Some(*status),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }

    /// "Droplet already has a pending event."
    pub fn is_pending_event(&self) -> bool {
        matches!(self, Self::Api { status: 422, message, .. } if message.to_lowercase().contains("pending event"))
    }
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts per request (throttled ones included).
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            attempts: 8,
            base: Duration::from_millis(500),
            max: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Exponential backoff with jitter: half to all of `base × 2^attempt`, capped.
    pub fn backoff(&self, attempt: u32) -> Duration {
        Backoff::doubling(self.base)
            .at_most(self.max)
            .jittered()
            .delay(attempt)
    }
}

/// Why a request was sent again (the `reason` of
/// `devpocket_provider_api_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// 429: DigitalOcean's rate limit.
    RateLimited,
    /// 5xx.
    ServerError,
    /// No answer: a timeout or a dropped connection.
    Network,
    /// A create whose effect was unclear, tried again after looking it up.
    Unclear,
    /// Busy: a droplet's action refused while another runs (422 "pending event"),
    /// a volume's delete while it is still attached (409); sent again later.
    Busy,
}

impl RetryReason {
    fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::Network => "network",
            Self::Unclear => "unclear",
            Self::Busy => "busy",
        }
    }
}

/// The `kind` of `devpocket_provider_api_errors_total`.
fn error_kind(status: StatusCode) -> &'static str {
    match status.as_u16() {
        404 => "not_found",
        429 => "rate_limited",
        500.. => "server_error",
        _ => "client_error",
    }
}

pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    limiter: Arc<Limiter>,
    pub retry: RetryPolicy,
    /// Where the request counters go; none: not counted.
    recorder: Option<Arc<dyn ::metrics::Recorder + Send + Sync>>,
}

fn header_u64(headers: &reqwest::header::HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

fn error_body(status: StatusCode, body: &[u8]) -> ApiError {
    let parsed: Option<Value> = serde_json::from_slice(body).ok();
    let field = |k: &str| {
        parsed
            .as_ref()
            .and_then(|v| v.get(k))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    ApiError::Api {
        status: status.as_u16(),
        id: field("id").unwrap_or_else(|| {
            status
                .canonical_reason()
                .unwrap_or("error")
                .to_lowercase()
                .replace(' ', "_")
        }),
        message: field("message").unwrap_or_else(|| {
            String::from_utf8_lossy(&body[..body.len().min(200)])
                .trim()
                .to_owned()
        }),
    }
}

impl Client {
    pub fn new(
        base: &str,
        token: &str,
        timeout: Duration,
        limiter: Arc<Limiter>,
    ) -> Result<Self, String> {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(10)))
            .user_agent(concat!("devpocket/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("building the DigitalOcean client: {e}"))?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            limiter,
            retry: RetryPolicy::default(),
            recorder: None,
        })
    }

    /// Counts requests, retries and errors into `recorder` (the server's
    /// Prometheus recorder), labelled `provider="digitalocean"`.
    pub fn with_recorder(mut self, recorder: Arc<dyn ::metrics::Recorder + Send + Sync>) -> Self {
        self.recorder = Some(recorder);
        self
    }

    fn record(&self, f: impl FnOnce()) {
        if let Some(recorder) = &self.recorder {
            ::metrics::with_local_recorder(&**recorder, f);
        }
    }

    /// One request sent: `status` is the HTTP status, or `error` without an answer.
    fn called(&self, method: &Method, status: Option<StatusCode>) {
        let method = method.as_str().to_owned();
        let status = status.map_or_else(|| "error".to_owned(), |s| s.as_u16().to_string());
        self.record(|| {
            ::metrics::counter!("devpocket_provider_api_calls_total", "provider" => super::NAME, "method" => method, "status" => status)
                .increment(1);
        });
    }

    /// A request is about to be sent again.
    pub fn retried(&self, reason: RetryReason) {
        self.record(|| {
            ::metrics::counter!("devpocket_provider_api_retries_total", "provider" => super::NAME, "reason" => reason.as_str())
                .increment(1);
        });
    }

    /// A request ended in an error for its caller.
    fn failed(&self, kind: &'static str, err: ApiError) -> ApiError {
        self.record(|| {
            ::metrics::counter!("devpocket_provider_api_errors_total", "provider" => super::NAME, "kind" => kind)
                .increment(1);
        });
        err
    }

    /// Sends one request (retrying as `repeat` allows) and returns the JSON body of
    /// a success (`Null` for 204).
    pub async fn send(
        &self,
        method: Method,
        path_or_url: &str,
        query: &[(&str, String)],
        body: Option<&Value>,
        repeat: Repeat,
    ) -> Result<Value, ApiError> {
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last = attempt >= self.retry.attempts;
            let permit = self.limiter.acquire().await;
            let mut request = self
                .http
                .request(method.clone(), &url)
                .bearer_auth(&self.token)
                .query(query);
            if let Some(body) = body {
                request = request.json(body);
            }
            let outcome = match request.send().await {
                Ok(response) => {
                    let headers = response.headers().clone();
                    self.limiter.observe(
                        header_u64(&headers, "ratelimit-remaining"),
                        header_u64(&headers, "ratelimit-reset"),
                    );
                    let status = response.status();
                    response.bytes().await.map(|bytes| (status, headers, bytes))
                }
                Err(e) => Err(e),
            };
            drop(permit);
            self.called(&method, outcome.as_ref().ok().map(|(status, ..)| *status));
            let (status, headers, bytes) = match outcome {
                Ok(answer) => answer,
                Err(e) => {
                    // Not connected: surely not sent. Otherwise it may have arrived.
                    let sent = !e.is_connect();
                    let what = format!("{method} {}: {e}", strip_query(&url));
                    if last || (sent && repeat == Repeat::Unsafe) {
                        return Err(self.failed("network", ApiError::Uncertain(what)));
                    }
                    tracing::info!(attempt, error = %what, "DigitalOcean request failed; retrying");
                    self.retried(RetryReason::Network);
                    tokio::time::sleep(self.retry.backoff(attempt)).await;
                    continue;
                }
            };
            if status.is_success() {
                if bytes.is_empty() {
                    return Ok(Value::Null);
                }
                return serde_json::from_slice(&bytes).map_err(|e| {
                    let what = format!("{method} {}: {e}", strip_query(&url));
                    self.failed("decode", ApiError::Decode(what))
                });
            }
            if status == StatusCode::TOO_MANY_REQUESTS {
                // Not processed, so always safe to send again, once allowed.
                let wait = header_u64(&headers, "retry-after")
                    .map(Duration::from_secs)
                    .unwrap_or_else(|| self.retry.backoff(attempt));
                self.limiter.pause(wait);
                if last {
                    return Err(self.failed(error_kind(status), error_body(status, &bytes)));
                }
                tracing::info!(
                    attempt,
                    wait_ms = wait.as_millis() as u64,
                    "DigitalOcean rate limit reached; waiting"
                );
                self.retried(RetryReason::RateLimited);
                continue;
            }
            if status.is_server_error() {
                let err = error_body(status, &bytes);
                if repeat == Repeat::Unsafe {
                    let err = ApiError::Uncertain(err.to_string());
                    return Err(self.failed(error_kind(status), err));
                }
                if last {
                    return Err(self.failed(error_kind(status), err));
                }
                tracing::info!(attempt, error = %err, "DigitalOcean server error; retrying");
                self.retried(RetryReason::ServerError);
                tokio::time::sleep(self.retry.backoff(attempt)).await;
                continue;
            }
            return Err(self.failed(error_kind(status), error_body(status, &bytes)));
        }
    }

    /// Every item of a paginated listing (`per_page=200`, following
    /// `links.pages.next` to the last page).
    pub async fn list(
        &self,
        path: &str,
        key: &str,
        query: &[(&str, String)],
    ) -> Result<Vec<Value>, ApiError> {
        let mut items = Vec::new();
        let mut query: Vec<(&str, String)> = query.to_vec();
        query.push(("per_page", "200".to_owned()));
        let mut next: Option<String> = None;
        loop {
            let page = match &next {
                None => {
                    self.send(Method::GET, path, &query, None, Repeat::Safe)
                        .await?
                }
                Some(url) => self.send(Method::GET, url, &[], None, Repeat::Safe).await?,
            };
            let list = page.get(key).and_then(Value::as_array).ok_or_else(|| {
                self.failed(
                    "decode",
                    ApiError::Decode(format!("GET {path}: no `{key}` list")),
                )
            })?;
            items.extend(list.iter().cloned());
            match page.pointer("/links/pages/next").and_then(Value::as_str) {
                // The token goes only to the API itself, whatever a link says.
                Some(url) if !list.is_empty() && same_origin(url, &self.base) => {
                    next = Some(url.to_owned());
                }
                Some(url) if !list.is_empty() => {
                    let err = ApiError::Decode(format!(
                        "GET {path}: the next page is on another server ({})",
                        strip_query(url)
                    ));
                    return Err(self.failed("decode", err));
                }
                _ => return Ok(items),
            }
        }
    }
}

fn same_origin(url: &str, base: &str) -> bool {
    let origin = |u: &str| {
        reqwest::Url::parse(u).ok().map(|u| {
            (
                u.scheme().to_owned(),
                u.host_str().map(str::to_owned),
                u.port_or_known_default(),
            )
        })
    };
    origin(url).is_some() && origin(url) == origin(base)
}

fn strip_query(url: &str) -> &str {
    url.split('?').next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_are_read() {
        let err = error_body(
            StatusCode::UNPROCESSABLE_ENTITY,
            br#"{"id":"unprocessable_entity","message":"Droplet already has a pending event.","request_id":"x"}"#,
        );
        assert!(err.is_pending_event());
        assert!(err.to_string().contains("pending event"));
        let err = error_body(StatusCode::BAD_GATEWAY, b"<html>oops</html>");
        assert_eq!(err.status(), Some(502));
        assert!(err.to_string().contains("bad_gateway"), "{err}");
    }
}
