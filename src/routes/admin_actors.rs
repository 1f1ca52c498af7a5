//! `GET /api/v1/admin/actors` and `/api/v1/admin/actors/{id}`: the live actor
//! tree for administrators — user supervisors → environments → terminals → their
//! WebSocket clients (log WebSockets hang under their environment) — with each
//! node's state, uptime, mailbox depth, messages handled, clients and last
//! activity. Read from the same registry as the `devpocket_actors` and
//! `devpocket_actor_mailbox_depth` gauges, without messaging any actor: a stuck
//! actor does not stall the view of it.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use devpocket_actors::inspect::Kind;
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::auth::AdminUser;
use crate::error::ApiError;
use crate::openapi::{Forbidden, NotFound, TooManyRequests, Unauthorized};
use crate::startup::AppState;

/// One node of the actor tree (the shape of `devpocket_actors::inspect::NodeView`,
/// described for the OpenAPI document).
#[derive(Serialize, ToSchema)]
#[schema(as = ActorNode)]
#[allow(dead_code)]
struct ActorNodeDoc {
    /// `user_supervisor`, `environment`, `terminal` or `websocket`.
    kind: String,
    /// `user:<uuid>`, `environment:<uuid>`, `terminal:<uuid>:<session>` (or
    /// `terminal:<uuid>:shell:<session>`), `websocket:<id>`.
    id: String,
    parent: Option<String>,
    /// An environment's `status/phase`; a terminal's `connecting`, `connected`,
    /// `reconnecting` or `closed`; a WebSocket's `waiting` or `attached`.
    state: String,
    started_at: DateTime<Utc>,
    uptime_seconds: f64,
    mailbox_depth: i64,
    messages_handled: u64,
    /// A supervisor's environments, an environment's log subscribers, a terminal's clients.
    clients: i64,
    last_activity_at: Option<DateTime<Utc>>,
    #[schema(no_recursion)]
    children: Vec<ActorNodeDoc>,
}

#[derive(Serialize, ToSchema)]
#[allow(dead_code)]
struct KindTotalsDoc {
    alive: usize,
    mailbox_depth: i64,
}

/// The live tree and totals per kind.
#[derive(Serialize, ToSchema)]
#[schema(as = ActorTree)]
#[allow(dead_code)]
struct ActorTreeDoc {
    totals: BTreeMap<String, KindTotalsDoc>,
    actors: Vec<ActorNodeDoc>,
}

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/admin/actors", web::get().to(actor_tree))
        .route("/admin/actors/{id}", web::get().to(actor_node));
}

#[utoipa::path(
    get,
    path = "/api/v1/admin/actors",
    tag = "admin",
    summary = "The live actor tree.",
    description = "User supervisors → environments → terminal sessions → their WebSocket \
        clients (log WebSockets under their environment), with totals per kind that match \
        the `devpocket_actors` and `devpocket_actor_mailbox_depth` metrics.",
    security(("bearer" = [])),
    responses(
        (status = 200, body = ActorTreeDoc),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 429, response = TooManyRequests),
    )
)]
pub(crate) async fn actor_tree(state: web::Data<AppState>, _: AdminUser) -> HttpResponse {
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

#[utoipa::path(
    get,
    path = "/api/v1/admin/actors/{id}",
    tag = "admin",
    summary = "One live actor and its subtree.",
    params(("id" = String, Path, description = "A node id, e.g. `environment:<uuid>`.")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ActorNodeDoc),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
    )
)]
pub(crate) async fn actor_node(
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
