//! `/api/v1/regions` and `/api/v1/sizes`: where and how large the caller's next
//! environment can be, on the default provider. DigitalOcean's lists are read from
//! its API (cached a few minutes); sizes are those the caller's plan allows.

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::plans;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/regions", web::get().to(list_regions))
        .route("/sizes", web::get().to(list_sizes));
}

/// The DigitalOcean provider when it makes new environments.
fn digitalocean(
    state: &AppState,
) -> Option<&devpocket_actors::provider::digitalocean::DigitalOceanProvider> {
    state
        .digitalocean
        .as_deref()
        .filter(|_| state.default_provider == devpocket_actors::provider::digitalocean::NAME)
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::ServiceUnavailable(format!(
        "DigitalOcean's list cannot be read right now ({e}); try again."
    ))
}

async fn list_regions(
    state: web::Data<AppState>,
    _caller: AuthUser,
) -> Result<HttpResponse, ApiError> {
    let Some(provider) = digitalocean(&state) else {
        return Ok(HttpResponse::Ok().json(json!([{
            "slug": "local", "name": "This server", "available": true, "default": true, "provider": "local",
        }])));
    };
    let default = &provider.config().region;
    let regions: Vec<Value> = provider
        .regions()
        .await
        .map_err(unavailable)?
        .into_iter()
        .map(|r| {
            json!({
                "slug": r["slug"],
                "name": r["name"],
                "available": r["available"],
                "default": r["slug"] == default.as_str(),
                "provider": "digitalocean",
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(regions))
}

async fn list_sizes(
    state: web::Data<AppState>,
    caller: AuthUser,
) -> Result<HttpResponse, ApiError> {
    let plan = caller.user.subscription_plan;
    let Some(provider) = digitalocean(&state) else {
        let sizes: Vec<Value> = plans::SIZES
            .iter()
            .filter(|s| plan.allows_size(s.name))
            .map(|s| {
                json!({
                    "slug": s.name, "cpu": s.cpu, "memory": s.memory, "storage": s.storage,
                    "available": true, "default": s.name == "small", "provider": "local",
                })
            })
            .collect();
        return Ok(HttpResponse::Ok().json(sizes));
    };
    let default = &provider.config().size;
    let sizes: Vec<Value> = provider
        .sizes()
        .await
        .map_err(unavailable)?
        .into_iter()
        .filter(|s| {
            plan.fits(
                s["vcpus"].as_u64().unwrap_or(u64::MAX),
                s["memory"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .map(|s| {
            let memory = s["memory"].as_u64().unwrap_or(0);
            json!({
                "slug": s["slug"],
                "cpu": s["vcpus"].as_u64().map(|c| c.to_string()),
                "memory": if memory % 1024 == 0 { format!("{}Gi", memory / 1024) } else { format!("{memory}Mi") },
                "disk": s["disk"].as_u64().map(|d| format!("{d}Gi")),
                "price_monthly": s["price_monthly"],
                "price_hourly": s["price_hourly"],
                "regions": s["regions"],
                "available": s["available"],
                "default": s["slug"] == default.as_str(),
                "provider": "digitalocean",
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(sizes))
}
