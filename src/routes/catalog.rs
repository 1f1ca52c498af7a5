//! `/api/v1/regions` and `/api/v1/sizes`: where and how large the caller's next
//! environment can be, on the default provider. DigitalOcean's lists are read from
//! its API (cached a few minutes); sizes are those the caller's plan allows.

use actix_web::{HttpResponse, web};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::openapi::{TooManyRequests, Unauthorized, Unavailable};
use crate::plans;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/regions", web::get().to(list_regions))
        .route("/sizes", web::get().to(list_sizes));
}

/// A place where new environments can be made.
#[derive(Serialize, ToSchema)]
pub struct Region {
    /// What `region` takes at creation: `local`, or a DigitalOcean region.
    #[schema(example = "nyc3")]
    slug: String,
    #[schema(example = "New York 3")]
    name: String,
    /// Whether new machines can be made there now.
    available: bool,
    /// Whether an environment created without `region` goes there.
    default: bool,
    /// `local` or `digitalocean`.
    #[schema(example = "digitalocean")]
    provider: &'static str,
}

/// A machine size the caller's plan allows.
#[derive(Serialize, ToSchema)]
pub struct Size {
    /// What `size` takes at creation and resize: `small` … `xlarge` on the local
    /// provider, a DigitalOcean size slug on DigitalOcean.
    #[schema(example = "s-1vcpu-1gb")]
    slug: String,
    /// CPUs, as a string.
    #[schema(example = "1")]
    cpu: Option<String>,
    #[schema(example = "1Gi")]
    memory: String,
    /// The home's storage (local provider).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "10Gi")]
    storage: Option<String>,
    /// The droplet's own disk (DigitalOcean; the home is a separate volume).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(example = "25Gi")]
    disk: Option<String>,
    /// US dollars a month (DigitalOcean).
    #[serde(skip_serializing_if = "Option::is_none")]
    price_monthly: Option<f64>,
    /// US dollars an hour (DigitalOcean).
    #[serde(skip_serializing_if = "Option::is_none")]
    price_hourly: Option<f64>,
    /// The regions that offer it (DigitalOcean).
    #[serde(skip_serializing_if = "Option::is_none")]
    regions: Option<Vec<String>>,
    /// Whether new machines of this size can be made now.
    available: bool,
    /// Whether an environment created without `size` gets it.
    default: bool,
    /// `local` or `digitalocean`.
    #[schema(example = "digitalocean")]
    provider: &'static str,
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

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_owned)
}

/// List the regions new environments can be made in.
///
/// On the default provider: DigitalOcean's regions (read from its API, cached a
/// few minutes), or the local provider's one region, `local`.
#[utoipa::path(
    get,
    path = "/api/v1/regions",
    tag = "environments",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<Region>),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn list_regions(
    state: web::Data<AppState>,
    _caller: AuthUser,
) -> Result<HttpResponse, ApiError> {
    let Some(provider) = digitalocean(&state) else {
        return Ok(HttpResponse::Ok().json([Region {
            slug: "local".to_owned(),
            name: "This server".to_owned(),
            available: true,
            default: true,
            provider: "local",
        }]));
    };
    let default = &provider.config().region;
    let regions: Vec<Region> = provider
        .regions()
        .await
        .map_err(unavailable)?
        .into_iter()
        .filter_map(|r| {
            let slug = text(&r["slug"])?;
            Some(Region {
                name: text(&r["name"]).unwrap_or_else(|| slug.clone()),
                available: r["available"].as_bool().unwrap_or(false),
                default: slug == *default,
                provider: "digitalocean",
                slug,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(regions))
}

/// List the machine sizes the caller's plan allows.
///
/// On the default provider: DigitalOcean's droplet sizes (read from its API,
/// cached a few minutes) whose CPUs and memory fit the plan's largest size, or
/// the local provider's sizes up to the plan's largest.
#[utoipa::path(
    get,
    path = "/api/v1/sizes",
    tag = "environments",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<Size>),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn list_sizes(
    state: web::Data<AppState>,
    caller: AuthUser,
) -> Result<HttpResponse, ApiError> {
    let plan = caller.user.subscription_plan;
    let Some(provider) = digitalocean(&state) else {
        let sizes: Vec<Size> = plans::SIZES
            .iter()
            .filter(|s| plan.allows_size(s.name))
            .map(|s| Size {
                slug: s.name.to_owned(),
                cpu: Some(s.cpu.to_owned()),
                memory: s.memory.to_owned(),
                storage: Some(s.storage.to_owned()),
                disk: None,
                price_monthly: None,
                price_hourly: None,
                regions: None,
                available: true,
                default: s.name == "small",
                provider: "local",
            })
            .collect();
        return Ok(HttpResponse::Ok().json(sizes));
    };
    let default = &provider.config().size;
    let sizes: Vec<Size> = provider
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
        .filter_map(|s| {
            let slug = text(&s["slug"])?;
            let memory = s["memory"].as_u64().unwrap_or(0);
            Some(Size {
                cpu: s["vcpus"].as_u64().map(|c| c.to_string()),
                memory: if memory % 1024 == 0 {
                    format!("{}Gi", memory / 1024)
                } else {
                    format!("{memory}Mi")
                },
                storage: None,
                disk: s["disk"].as_u64().map(|d| format!("{d}Gi")),
                price_monthly: s["price_monthly"].as_f64(),
                price_hourly: s["price_hourly"].as_f64(),
                regions: s["regions"]
                    .as_array()
                    .map(|r| r.iter().filter_map(text).collect()),
                available: s["available"].as_bool().unwrap_or(false),
                default: slug == *default,
                provider: "digitalocean",
                slug,
            })
        })
        .collect();
    Ok(HttpResponse::Ok().json(sizes))
}
