//! Health probes: `/health` (details), `/health/live` (the process answers) and
//! `/health/ready` (the database answers; 503 until it does).

use std::time::{Duration, Instant};

use actix_web::{HttpResponse, web};
use diesel_async::RunQueryDsl;
use serde_json::json;

use crate::error::ApiError;
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

async fn health(state: web::Data<AppState>) -> HttpResponse {
    let database = match probe_database(&state).await {
        Ok(latency) => json!({ "status": "up", "latency_ms": latency.as_secs_f64() * 1000.0 }),
        Err(_) => json!({ "status": "down" }),
    };
    let status = if database["status"] == "up" {
        "ok"
    } else {
        "degraded"
    };
    let mut body = json!({
        "status": status,
        "version": env!("CARGO_PKG_VERSION"),
        "database": database,
        "uptime_seconds": state.started_at.elapsed().as_secs(),
    });
    if let Some(r) = &state.reconcile {
        body["digitalocean"] = r.report();
    }
    HttpResponse::Ok().json(body)
}

async fn live() -> HttpResponse {
    HttpResponse::Ok().json(json!({ "status": "ok" }))
}

async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, ApiError> {
    probe_database(&state).await?;
    Ok(HttpResponse::Ok().json(json!({ "status": "ready" })))
}
