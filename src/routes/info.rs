//! `/api/v1/info`: what this server is and offers, for clients and operators.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde::Serialize;
use utoipa::ToSchema;

use crate::environments::auto_stop;
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
    auto_stop: AutoStopInfo,
}

/// The idle auto-stop: the activity rule and each plan's idle timeout.
#[derive(Serialize, ToSchema)]
pub struct AutoStopInfo {
    /// What counts as activity, and what happens without it.
    rule: &'static str,
    /// Each plan's idle timeout in seconds, which is also the longest an
    /// environment's `auto_stop_minutes` may be; null: never.
    idle_timeout_seconds: BTreeMap<&'static str, Option<u64>>,
    /// How long before an idle stop the terminals are warned, in seconds.
    warning_seconds: u64,
    /// How often the server checks, in seconds: a stop happens within this of its
    /// time.
    check_seconds: u64,
}

/// What this server offers.
#[derive(Serialize, ToSchema)]
pub struct Features {
    accounts: bool,
    environments: bool,
    terminals: bool,
    provisioning_logs: bool,
    google_sign_in: bool,
    /// What an account may not do until its e-mail address is verified, among
    /// `google_link`, `change_email`, `create_environment` and `register_server`.
    #[schema(example = json!(["google_link", "change_email"]))]
    unverified_may_not: Vec<&'static str>,
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
            google_sign_in: state.google.is_some(),
            unverified_may_not: state
                .settings
                .mail
                .unverified_may_not
                .iter()
                .map(|r| r.as_str())
                .collect(),
        },
        plans: Plan::ALL.iter().map(|p| (p.as_str(), p.limits())).collect(),
        providers: state.providers.clone(),
        default_provider: state.default_provider.clone(),
        auto_stop: {
            let settings = &state.settings.auto_stop;
            AutoStopInfo {
                rule: auto_stop::RULE,
                idle_timeout_seconds: Plan::ALL
                    .iter()
                    .map(|p| (p.as_str(), settings.plan_timeout(*p).map(|t| t.as_secs())))
                    .collect(),
                warning_seconds: settings.warning.as_secs(),
                check_seconds: settings.check_every.as_secs(),
            }
        },
    })
}
