//! The edge: the first and the last code every request meets.
//!
//! On the way in, the path is normalised, the request gets its id (an incoming
//! `X-Request-Id` is kept when it is sane) and an API request is counted against its
//! client address's limit. A refusal is answered right here, before any other work —
//! no span, no routing, no other middleware — so a flood from one address costs as
//! little as it can. A path or query with a NUL character is refused next, before
//! routing, so that no handler sees one (`super::nul`). Anything else is served
//! inside a tracing span that carries the request id into every log line. On the way
//! out every answer gets the request id, the security headers and the `RateLimit-*`
//! headers, and is counted and logged.

use std::future::{Ready, ready};
use std::rc::Rc;
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{Service, ServiceRequest, ServiceResponse, Transform, forward_ready};
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::{Error, web};
use futures_util::future::LocalBoxFuture;
use tracing::Instrument;

use super::normalize::normalize;
use super::nul;
use crate::metrics::HttpSeries;
use crate::ratelimit;
use crate::startup::AppState;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// On every answer, unless the handler set its own.
const SECURITY_HEADERS: [(HeaderName, HeaderValue); 3] = [
    (
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    ),
    (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
    (
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    ),
];

/// The middleware; the outermost one of the application.
pub struct Edge;

impl<S, B> Transform<S, ServiceRequest> for Edge
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Transform = EdgeService<S>;
    type InitError = ();
    type Future = Ready<Result<Self::Transform, Self::InitError>>;

    /// Once per worker: each keeps its own metric handles.
    fn new_transform(&self, service: S) -> Self::Future {
        ready(Ok(EdgeService {
            service: Rc::new(service),
            series: Rc::new(HttpSeries::default()),
        }))
    }
}

pub struct EdgeService<S> {
    service: Rc<S>,
    series: Rc<HttpSeries>,
}

impl<S, B> Service<ServiceRequest> for EdgeService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = Error> + 'static,
    B: MessageBody + 'static,
{
    type Response = ServiceResponse<EitherBody<B>>;
    type Error = Error;
    type Future = LocalBoxFuture<'static, Result<Self::Response, Self::Error>>;

    forward_ready!(service);

    fn call(&self, mut req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        normalize(&mut req);
        let id = request_id(&req);
        let state = req
            .app_data::<web::Data<AppState>>()
            .map(|data| data.clone().into_inner());
        let refusal = state
            .as_deref()
            .and_then(|state| ratelimit::check_at_edge(&req, state));
        if let Some(refusal) = refusal {
            // A refusal is counted in `devpocket_rate_limit_rejections_total`; its
            // log line is at debug level only, so a flood costs neither log nor disk
            // (nor, unless debug is on, a copy of the path).
            tracing::debug!(request_id = %id, method = %req.method(), path = req.path(), status = 429, "request");
            let mut res = req.error_response(refusal);
            finish(&mut res, &id, started, state.as_deref(), &self.series);
            return Box::pin(ready(Ok(res.map_into_right_body())));
        }

        let span = tracing::info_span!(
            "request",
            request_id = %id,
            method = %req.method(),
            path = %req.path(),
        );
        if let Some(refusal) = nul::in_uri(req.uri()) {
            let mut res = req.error_response(refusal);
            let status = finish(&mut res, &id, started, state.as_deref(), &self.series);
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            span.in_scope(|| tracing::info!(status, elapsed_ms, "request"));
            return Box::pin(ready(Ok(res.map_into_right_body())));
        }
        let call = span.in_scope(|| self.service.call(req));
        let series = self.series.clone();
        Box::pin(async move {
            // Handlers turn their errors into responses; an `Err` here comes from a
            // middleware and is rendered by actix (and enveloped by the error
            // handlers).
            let mut res = call.instrument(span.clone()).await?;
            ratelimit::add_headers(&mut res);
            let status = finish(&mut res, &id, started, state.as_deref(), &series);
            let elapsed_ms = started.elapsed().as_secs_f64() * 1000.0;
            span.in_scope(|| match status {
                500.. => tracing::error!(status, elapsed_ms, "request failed"),
                // Refused by a limit further in (see above).
                429 => tracing::debug!(status, elapsed_ms, "request"),
                _ => tracing::info!(status, elapsed_ms, "request"),
            });
            Ok(res.map_into_left_body())
        })
    }
}

/// What every answer gets: the request id and security headers, and its count in
/// the metrics. Returns its status.
fn finish<B>(
    res: &mut ServiceResponse<B>,
    id: &str,
    started: Instant,
    state: Option<&AppState>,
    series: &HttpSeries,
) -> u16 {
    let headers = res.headers_mut();
    if let Ok(value) = HeaderValue::from_str(id) {
        headers.insert(X_REQUEST_ID, value);
    }
    for (name, value) in SECURITY_HEADERS {
        if !headers.contains_key(&name) {
            headers.insert(name, value);
        }
    }
    let status = res.status().as_u16();
    if let Some(state) = state {
        // The route template, not the path: ids would make a series per request.
        let route = res
            .request()
            .match_pattern()
            .unwrap_or_else(|| "unmatched".to_owned());
        let seconds = started.elapsed().as_secs_f64();
        series.record(
            &state.metrics,
            res.request().method(),
            route,
            status,
            seconds,
        );
    }
    status
}

/// The incoming `X-Request-Id` when it is sane (it goes into logs and headers),
/// otherwise a random (v4) UUID from the thread's generator: no system call.
fn request_id(req: &ServiceRequest) -> String {
    let incoming = req
        .headers()
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 128
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.:/+=".contains(&b))
        });
    match incoming {
        Some(id) => id.to_owned(),
        None => uuid::Builder::from_random_bytes(rand::random())
            .into_uuid()
            .to_string(),
    }
}
