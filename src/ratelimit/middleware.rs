//! The HTTP side of the limits: requests per client address (all API routes, checked
//! by the edge; sign-up and refresh each have their own, checked by middleware on
//! those routes), and the `RateLimit-*` headers, which describe the tightest limit
//! that applied to the request.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue, ORIGIN};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest, web};

use super::{Credentials, Status};
use crate::error::ApiError;
use crate::http::client_ip;
use crate::startup::AppState;

pub const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
pub const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
pub const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

/// The tightest limit met while serving a request, in its extensions.
#[derive(Debug, Clone, Copy)]
struct Tightest(Status);

/// Notes a limit a request passed, for the response headers.
pub fn record(req: &HttpRequest, status: Status) {
    let mut extensions = req.extensions_mut();
    let tighter = extensions.get::<Tightest>().is_none_or(|Tightest(seen)| {
        (status.remaining, std::cmp::Reverse(status.reset))
            < (seen.remaining, std::cmp::Reverse(seen.reset))
    });
    if tighter {
        extensions.insert(Tightest(status));
    }
}

/// Writes the `RateLimit-*` headers of `status`.
pub fn insert_headers(headers: &mut HeaderMap, status: Status) {
    for (name, value) in [
        (RATELIMIT_LIMIT, u64::from(status.limit)),
        (RATELIMIT_REMAINING, u64::from(status.remaining)),
        (RATELIMIT_RESET, status.reset_seconds()),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
}

/// The per-address limit on the API, applied by the edge (`http::edge`) before any
/// other work. A passed check is noted for the response headers; a refusal is
/// returned, to be answered at once. A browser's request (it carries `Origin`) is
/// the exception: its answer must pass CORS to be readable by the page, so its
/// refusal is left in the request for [`answer_deferred`], which runs inside CORS.
pub fn check_at_edge(req: &ServiceRequest, state: &AppState) -> Option<ApiError> {
    if !crate::routes::is_api(req.path()) {
        return None;
    }
    let ip = client_ip(req.request(), &state.settings.http.trusted_proxies)?;
    match state.ratelimits.check_ip(ip) {
        Ok(status) => {
            record(req.request(), status);
            None
        }
        Err(err) if req.headers().contains_key(ORIGIN) => {
            req.extensions_mut().insert(Deferred(err));
            None
        }
        Err(err) => Some(err),
    }
}

/// A refusal the edge left for [`answer_deferred`].
struct Deferred(ApiError);

/// Answers the refusal [`check_at_edge`] deferred, if any; wraps the API routes.
pub async fn answer_deferred(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    let deferred = req.extensions_mut().remove::<Deferred>();
    match deferred {
        Some(Deferred(err)) => Ok(req.error_response(err).map_into_right_body()),
        None => Ok(next.call(req).await?.map_into_left_body()),
    }
}

/// Sign-ups per client address.
pub async fn limit_register_by_ip(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    limit_by_ip(Credentials::Register, req, next).await
}

/// Token refreshes per client address.
pub async fn limit_refresh_by_ip(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    limit_by_ip(Credentials::Refresh, req, next).await
}

/// Password-reset requests and attempts per client address.
pub async fn limit_recovery_by_ip(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    limit_by_ip(Credentials::Recovery, req, next).await
}

async fn limit_by_ip<B: MessageBody + 'static>(
    route: Credentials,
    req: ServiceRequest,
    next: Next<B>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    if let Some(state) = req.app_data::<web::Data<AppState>>()
        && let Some(ip) = client_ip(req.request(), &state.settings.http.trusted_proxies)
    {
        match state.ratelimits.check_credentials(route, ip) {
            Ok(status) => record(req.request(), status),
            // A response, not an `Err`: the edge still adds the request id, logs
            // it, and CORS applies.
            Err(err) => return Ok(req.error_response(err).map_into_right_body()),
        }
    }
    Ok(next.call(req).await?.map_into_left_body())
}

/// Writes the `RateLimit-*` headers of the tightest limit the request passed,
/// unless the answer carries its own (a refusal does).
pub fn add_headers<B>(res: &mut ServiceResponse<B>) {
    let tightest = res.request().extensions().get::<Tightest>().copied();
    if let Some(Tightest(status)) = tightest
        && !res.headers().contains_key(RATELIMIT_LIMIT)
    {
        insert_headers(res.headers_mut(), status);
    }
}
