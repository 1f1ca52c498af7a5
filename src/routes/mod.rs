//! The HTTP surface: one module per resource, wired here.

pub mod admin;
pub mod admin_actors;
pub mod apps;
pub mod auth;
pub mod catalog;
pub mod docs;
pub mod environments;
pub mod google;
pub mod health;
pub mod info;
pub mod metrics;
pub mod servers;
pub mod templates;
pub mod users;
pub mod ws_apps;
pub mod ws_common;
pub mod ws_logs;
pub mod ws_terminal;

use actix_web::middleware::from_fn;
use actix_web::{HttpRequest, HttpResponse, web};

use crate::error::ApiError;

/// Where the API lives: every path under it is limited per client address (see
/// `ratelimit::check_at_edge`). Health probes stay outside (load balancers poll them).
pub const API: &str = "/api/v1";

/// Whether `path` (normalised) is under [`API`], as the scope matches it.
pub fn is_api(path: &str) -> bool {
    path.strip_prefix(API)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.configure(health::configure).service(
        web::scope(API)
            .wrap(from_fn(crate::ratelimit::answer_deferred))
            // Before `auth`: its `/auth` scope would take `/auth/google`.
            .configure(google::configure)
            .configure(auth::configure)
            .configure(users::configure)
            .configure(info::configure)
            .configure(templates::configure)
            .configure(environments::configure)
            .configure(catalog::configure)
            .configure(servers::configure)
            .configure(apps::configure)
            .configure(ws_logs::configure)
            .configure(ws_terminal::configure)
            .configure(ws_apps::configure)
            .configure(admin::configure)
            .configure(admin_actors::configure)
            .configure(docs::configure),
    );
}

/// Unknown paths get the error envelope, not an HTML page.
pub async fn not_found(req: HttpRequest) -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound(format!(
        "No such endpoint: {} {}.",
        req.method(),
        req.path()
    )))
}
