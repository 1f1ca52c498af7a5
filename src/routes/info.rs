//! `/api/v1/info`: what this server is and offers, for clients and operators.

use actix_web::{HttpResponse, web};
use serde_json::{Map, Value, json};

use crate::plans::Plan;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/info", web::get().to(info));
}

async fn info(state: web::Data<AppState>) -> HttpResponse {
    let plans: Map<String, Value> = Plan::ALL
        .iter()
        .map(|p| (p.as_str().to_owned(), json!(p.limits())))
        .collect();
    HttpResponse::Ok().json(json!({
        "name": "DevPocket",
        "version": env!("CARGO_PKG_VERSION"),
        "environment": match state.settings.mode {
            crate::config::RunMode::Development => "development",
            crate::config::RunMode::Production => "production",
        },
        "features": {
            "accounts": true,
            "environments": true,
            "terminals": true,
            "provisioning_logs": true,
            "google_sign_in": false,
        },
        "plans": plans,
        "providers": state.providers,
        "default_provider": state.default_provider,
    }))
}
