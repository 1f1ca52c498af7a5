//! `GET /api/v1/environments/{id}/metrics`: resource use measured on the machine
//! by the environment's actor.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use devpocket_actors::environment::GetMetrics;
use devpocket_actors::metrics::Metrics;
use devpocket_actors::model::{Phase, Status};
use serde::Serialize;
use serde_json::json;
use utoipa::ToSchema;

use super::{actor, load, parse_id};
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::openapi::{Conflict, NotFound, TooManyRequests, Unauthorized, Unavailable};
use crate::startup::AppState;

/// Resource use measured on the machine.
#[derive(Serialize, ToSchema)]
#[schema(as = Metrics)]
struct MetricsResponse {
    /// Percent of CPU time busy over a 0.2 s sample.
    cpu_usage: f64,
    /// Percent of memory in use.
    memory_usage: f64,
    /// Percent of the home file system in use.
    disk_usage: f64,
    /// Bytes received since boot, all interfaces but loopback.
    network_in: u64,
    /// Bytes sent since boot, all interfaces but loopback.
    network_out: u64,
    /// When the sample was taken (reused for 5 s).
    timestamp: DateTime<Utc>,
}

impl From<Metrics> for MetricsResponse {
    fn from(m: Metrics) -> Self {
        Self {
            cpu_usage: m.cpu_usage,
            memory_usage: m.memory_usage,
            disk_usage: m.disk_usage,
            network_in: m.network_in,
            network_out: m.network_out,
            timestamp: m.timestamp,
        }
    }
}

/// Measure an environment's resource use.
///
/// Measured on the machine over SSH; a machine that is not `running`/`ready` is
/// 409, one that cannot be reached 503.
#[utoipa::path(
    get,
    path = "/api/v1/environments/{id}/metrics",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = MetricsResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn get_metrics(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let addr = actor(&state, &caller, id).await?;
    let sample = match addr.send(GetMetrics).await {
        Ok(sample) => sample.map_err(ApiError::from),
        Err(e) => Err(ApiError::ServiceUnavailable(format!(
            "The environment's controller is restarting ({e}); try again."
        ))),
    };
    match sample {
        Ok(metrics) => Ok(HttpResponse::Ok().json(MetricsResponse::from(metrics))),
        // Stopped or deleted while it was measured (its machine went away, its actor
        // stopped): answered as if the request had come just after, 409 or 404.
        Err(ApiError::ServiceUnavailable(detail)) => {
            let now = load(&state, &caller, id).await?;
            if now.status == Status::Running.as_str() && now.phase == Phase::Ready.as_str() {
                return Err(ApiError::ServiceUnavailable(detail));
            }
            Err(ApiError::Conflict {
                detail: format!(
                    "Metrics are measured only on a running environment; this one is {} ({}).",
                    now.status, now.phase
                ),
                context: json!({}),
            })
        }
        Err(err) => Err(err),
    }
}
