//! Health probes: `/health` (details), `/health/live` (the process answers) and
//! `/health/ready` (the database answers; 503 until it does).

use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use diesel_async::RunQueryDsl;
use serde::Serialize;
use utoipa::ToSchema;

use crate::error::ApiError;
use crate::openapi::Unavailable;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/health", web::get().to(health))
        .route("/health/live", web::get().to(live))
        .route("/health/ready", web::get().to(ready));
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Round-trips `SELECT 1`; returns the latency.
async fn probe_database(state: &AppState) -> Result<Duration, ApiError> {
    let started = Instant::now();
    let check = async {
        let mut conn = state.pool.get().await?;
        diesel::sql_query("SELECT 1").execute(&mut conn).await?;
        Ok::<_, ApiError>(())
    };
    match tokio::time::timeout(PROBE_TIMEOUT, check).await {
        Ok(Ok(())) => Ok(started.elapsed()),
        Ok(Err(ApiError::Internal(err))) => Err(ApiError::DatabaseUnavailable(err)),
        Ok(Err(err)) => Err(err),
        Err(_) => Err(ApiError::DatabaseUnavailable(anyhow::anyhow!(
            "database probe timed out after {PROBE_TIMEOUT:?}"
        ))),
    }
}

/// `/health`: always 200; `status` says whether the database answers.
#[derive(Serialize, ToSchema)]
pub struct HealthResponse {
    /// `ok`, or `degraded` while the database does not answer.
    #[schema(example = "ok")]
    status: &'static str,
    version: &'static str,
    database: DatabaseHealth,
    uptime_seconds: u64,
    /// What reconciliation with DigitalOcean found; only when DigitalOcean is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    digitalocean: Option<crate::reconcile::ReconcileReport>,
}

#[derive(Serialize, ToSchema)]
pub struct DatabaseHealth {
    /// `up` or `down`.
    #[schema(example = "up")]
    status: &'static str,
    /// The round trip of `SELECT 1`, when up.
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<f64>,
}

/// The answer of `/health/live` (`ok`) and `/health/ready` (`ready`).
#[derive(Serialize, ToSchema)]
pub struct ProbeResponse {
    #[schema(example = "ok")]
    status: &'static str,
}

/// Health in detail.
///
/// Answers 200 even while the database is down: `status` is then `degraded`.
#[utoipa::path(
    get,
    path = "/health",
    tag = "health",
    responses((status = 200, body = HealthResponse))
)]
async fn health(state: web::Data<AppState>) -> HttpResponse {
    let database = match probe_database(&state).await {
        Ok(latency) => DatabaseHealth {
            status: "up",
            latency_ms: Some(latency.as_secs_f64() * 1000.0),
        },
        Err(_) => DatabaseHealth {
            status: "down",
            latency_ms: None,
        },
    };
    HttpResponse::Ok().json(HealthResponse {
        status: if database.latency_ms.is_some() {
            "ok"
        } else {
            "degraded"
        },
        version: env!("CARGO_PKG_VERSION"),
        database,
        uptime_seconds: state.started_at.elapsed().as_secs(),
        digitalocean: state.reconcile.as_ref().map(|r| r.report()),
    })
}

/// Liveness: the process answers.
#[utoipa::path(
    get,
    path = "/health/live",
    tag = "health",
    responses((status = 200, body = ProbeResponse, example = json!({"status": "ok"})))
)]
async fn live() -> HttpResponse {
    HttpResponse::Ok().json(ProbeResponse { status: "ok" })
}

/// Readiness: the database answers.
///
/// 503 while it does not; recovers by itself.
#[utoipa::path(
    get,
    path = "/health/ready",
    tag = "health",
    responses(
        (status = 200, body = ProbeResponse, example = json!({"status": "ready"})),
        (status = 503, response = Unavailable),
    )
)]
async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    probe_database(&state).await?;
    Ok(HttpResponse::Ok().json(ProbeResponse { status: "ready" }))
}
