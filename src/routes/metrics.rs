//! `GET /metrics`: Prometheus exposition. On the main listener unless
//! `DEVPOCKET_METRICS_LISTEN` gives it its own; behind a bearer token when
//! `DEVPOCKET_METRICS_TOKEN` is set.

use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use sha2::{Digest, Sha256};

use crate::error::ApiError;
use crate::openapi::Unauthorized;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/metrics", web::get().to(metrics));
}

#[utoipa::path(
    get,
    path = "/metrics",
    tag = "health",
    summary = "Prometheus metrics.",
    description = "Text exposition format. Needs `Authorization: Bearer DEVPOCKET_METRICS_TOKEN` \
        when that setting is set; served on `DEVPOCKET_METRICS_LISTEN` instead when that is set.",
    security((), ("metrics_token" = [])),
    responses(
        (status = 200, description = "The metrics.", content_type = "text/plain", body = String),
        (status = 401, response = Unauthorized),
    )
)]
pub(crate) async fn metrics(
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, ApiError> {
    if let Some(expected) = &state.settings.metrics.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        // Compare digests, so the time taken says nothing about the token.
        if Sha256::digest(given.as_bytes()) != Sha256::digest(expected.expose().as_bytes()) {
            return Err(ApiError::Unauthorized(
                "metrics need Authorization: Bearer DEVPOCKET_METRICS_TOKEN".to_owned(),
            ));
        }
    }
    let body = state
        .metrics
        .render(&state.actors.deps.inspector, &state.pool, &state.ratelimits);
    Ok(HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4; charset=utf-8")
        .body(body))
}
