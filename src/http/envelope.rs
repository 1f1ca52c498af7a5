//! Puts every error response that a handler did not build itself (unknown routes,
//! wrong methods, bad paths or queries, oversized bodies) into the one JSON envelope.

use actix_web::body::{BoxBody, MessageBody};
use actix_web::dev::ServiceResponse;
use actix_web::http::{StatusCode, header};
use actix_web::middleware::ErrorHandlerResponse;
use serde_json::json;

use crate::error::envelope;

fn code_for(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "bad_request",
        401 => "unauthorized",
        403 => "forbidden",
        404 => "not_found",
        405 => "method_not_allowed",
        406 => "not_acceptable",
        408 => "request_timeout",
        413 => "payload_too_large",
        414 => "uri_too_long",
        415 => "unsupported_media_type",
        422 => "validation_error",
        429 => "rate_limited",
        431 => "headers_too_large",
        503 => "service_unavailable",
        s if s >= 500 => "internal_error",
        _ => "error",
    }
}

pub fn envelope_fallback<B: MessageBody + 'static>(
    res: ServiceResponse<B>,
) -> actix_web::Result<ErrorHandlerResponse<B>> {
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return Ok(ErrorHandlerResponse::Response(res.map_into_left_body()));
    }
    let status = res.status();
    let detail = match (status.as_u16(), res.response().error()) {
        (405, _) => format!(
            "{} is not allowed on {}.",
            res.request().method(),
            res.request().path()
        ),
        (404, _) => format!(
            "No such endpoint: {} {}.",
            res.request().method(),
            res.request().path()
        ),
        (s, Some(err)) if s < 500 => err.to_string(),
        (s, _) if s >= 500 => {
            "Internal server error. The request id identifies it in the server log.".to_owned()
        }
        _ => status
            .canonical_reason()
            .unwrap_or("Request failed")
            .to_owned(),
    };
    let (req, _) = res.into_parts();
    let body: actix_web::HttpResponse<BoxBody> =
        envelope(status, code_for(status), &detail, json!({}));
    Ok(ErrorHandlerResponse::Response(
        ServiceResponse::new(req, body).map_into_right_body(),
    ))
}
