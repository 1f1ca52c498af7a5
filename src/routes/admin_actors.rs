//! `GET /api/v1/admin/actors` and `/api/v1/admin/actors/{id}`: the live actor
//! tree for administrators — user supervisors → environments → terminals → their
//! WebSocket clients (log WebSockets hang under their environment) — with each
//! node's state, uptime, mailbox depth, messages handled, clients and last
//! activity. Read from the same registry as the `devpocket_actors` and
//! `devpocket_actor_mailbox_depth` gauges, without messaging any actor: a stuck
//! actor does not stall the view of it.

use actix_web::{HttpResponse, web};
use devpocket_actors::inspect::Kind;
use serde_json::{Map, Value, json};

use crate::auth::AdminUser;
use crate::error::ApiError;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/actors", web::get().to(actor_tree))
        .route("/admin/actors/{id}", web::get().to(actor_node));
}

async fn actor_tree(state: web::Data<AppState>, _: AdminUser) -> HttpResponse {
    let inspector = &state.actors.deps.inspector;
    let alive = inspector.alive();
    let totals: Map<String, Value> = Kind::ALL
        .iter()
        .map(|kind| {
            (
                kind.as_str().to_owned(),
                json!({
                    "alive": alive.get(kind).copied().unwrap_or(0),
                    "mailbox_depth": inspector.mailbox_depth(*kind),
                }),
            )
        })
        .collect();
    HttpResponse::Ok().json(json!({"totals": totals, "actors": inspector.tree()}))
}

async fn actor_node(
    state: web::Data<AppState>,
    _: AdminUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = id.into_inner();
    state
        .actors
        .deps
        .inspector
        .find(&id)
        .map(|node| HttpResponse::Ok().json(node))
        .ok_or_else(|| {
            ApiError::NotFound(format!(
                "No live actor `{id}`: ids look like user:<uuid>, environment:<uuid>, terminal:<uuid>:<session> or websocket:<id>; see GET /api/v1/admin/actors."
            ))
        })
}
