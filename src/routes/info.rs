//! `/api/v1/info`: what this server is and offers, for clients and operators.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::openapi::TooManyRequests;
use crate::plans::{Plan, PlanLimits};
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/info", web::get().to(info));
}

#[derive(Serialize, ToSchema)]
pub struct InfoResponse {
    #[schema(example = "DevPocket")]
    name: &'static str,
    version: &'static str,
    /// `development` or `production`.
    #[schema(example = "production")]
    environment: &'static str,
    features: Features,
    /// What each plan allows, by plan name.
    plans: BTreeMap<&'static str, PlanLimits>,
    /// Where environments can run.
    #[schema(example = json!(["local"]))]
    providers: Vec<String>,
    /// The provider new environments use.
    #[schema(example = "local")]
    default_provider: String,
}

/// What this server offers.
#[derive(Serialize, ToSchema)]
pub struct Features {
    accounts: bool,
    environments: bool,
    terminals: bool,
    provisioning_logs: bool,
    google_sign_in: bool,
}

/// What this server is and offers.
///
/// Name, version, run mode, features, the limits of each plan and the providers.
#[utoipa::path(
    get,
    path = "/api/v1/info",
    tag = "info",
    responses(
        (status = 200, body = InfoResponse),
        (status = 429, response = TooManyRequests),
    )
)]
async fn info(state: web::Data<AppState>) -> HttpResponse {
    HttpResponse::Ok().json(InfoResponse {
        name: "DevPocket",
        version: env!("CARGO_PKG_VERSION"),
        environment: match state.settings.mode {
            crate::config::RunMode::Development => "development",
            crate::config::RunMode::Production => "production",
        },
        features: Features {
            accounts: true,
            environments: true,
            terminals: true,
            provisioning_logs: true,
            google_sign_in: false,
        },
        plans: Plan::ALL.iter().map(|p| (p.as_str(), p.limits())).collect(),
        providers: state.providers.clone(),
        default_provider: state.default_provider.clone(),
    })
}
