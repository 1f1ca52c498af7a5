//! The HTTP side of the limits: middleware that counts requests per client address
//! (all API routes; stricter on sign-up, sign-in and refresh), and the `RateLimit-*`
//! headers, which describe the tightest limit that applied to the request.

use std::net::IpAddr;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderMap, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpMessage, HttpRequest, web};

use super::{RateLimits, Status};
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

/// Every request to the API, per client address.
pub async fn limit_by_ip(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    limit(req, next, RateLimits::check_ip).await
}

/// Sign-up, sign-in and refresh, per client address.
pub async fn limit_auth_by_ip(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    limit(req, next, RateLimits::check_auth_ip).await
}

async fn limit<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
    check: fn(&RateLimits, IpAddr) -> Result<Status, ApiError>,
) -> Result<ServiceResponse<EitherBody<B>>, Error> {
    if let Some(state) = req.app_data::<web::Data<AppState>>()
        && let Some(ip) = client_ip(req.request(), &state.settings.trusted_proxies)
    {
        match check(&state.ratelimits, ip) {
            Ok(status) => record(req.request(), status),
            // A response, not an `Err`: the outer middleware still adds the request
            // id, logs it and applies CORS.
            Err(err) => return Ok(req.error_response(err).map_into_right_body()),
        }
    }
    let mut res = next.call(req).await?;
    // A refusal further in carries its own headers.
    let tightest = res.request().extensions().get::<Tightest>().copied();
    if let Some(Tightest(status)) = tightest
        && !res.headers().contains_key(RATELIMIT_LIMIT)
    {
        insert_headers(res.headers_mut(), status);
    }
    Ok(res.map_into_left_body())
}
