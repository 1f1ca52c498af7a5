//! Request ids: an incoming `X-Request-Id` is kept when it is sane, otherwise one is
//! generated; it is echoed on the response and carried by every log line of the
//! request through a tracing span.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage};
use tracing::Instrument;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The id of the request being served, available from request extensions.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

fn incoming(req: &ServiceRequest) -> Option<String> {
    let value = req.headers().get(&X_REQUEST_ID)?.to_str().ok()?.trim();
    let sane = !value.is_empty()
        && value.len() <= 128
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b));
    sane.then(|| value.to_owned())
}

pub async fn request_context(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    // A random (v4) UUID from the thread's generator: no system call per request.
    let id = incoming(&req).unwrap_or_else(|| {
        uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .to_string()
    });
    req.extensions_mut().insert(RequestId(id.clone()));
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method = %req.method(),
        path = %req.path(),
    );
    let started = Instant::now();
    let metrics = req
        .app_data::<actix_web::web::Data<crate::startup::AppState>>()
        .map(|state| state.metrics.clone());
    let method = req.method().clone();
    // Handlers turn their errors into responses; an `Err` here comes from a
    // middleware and is rendered by actix (and enveloped by the error handlers).
    let mut res = next.call(req).instrument(span.clone()).await?;
    if let Ok(value) = HeaderValue::from_str(&id) {
        res.headers_mut().insert(X_REQUEST_ID, value);
    }
    let status = res.status().as_u16();
    let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
    if let Some(metrics) = metrics {
        // The route template, not the path: ids would make a series per request.
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        metrics.http_request(method.as_str(), route, status, elapsed_ms / 1000.0);
    }
    // One line per request; a refusal by a rate limit at debug level only, so a
    // flood costs neither the log nor the disk (it is counted in
    // `devpocket_rate_limit_rejections_total`).
    span.in_scope(|| match status {
        500.. => tracing::error!(status, elapsed_ms, "request failed"),
        429 => tracing::debug!(status, elapsed_ms, "request"),
        _ => tracing::info!(status, elapsed_ms, "request"),
    });
    Ok(res)
}
