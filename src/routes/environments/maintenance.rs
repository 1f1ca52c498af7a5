//! Snapshot and resize: maintenance of a machine the provider offers
//! (DigitalOcean), sent to the environment's actor and audited.

use actix_web::{HttpResponse, web};
use chrono::Utc;
use devpocket_actors::environment::MaintenanceRequest;
use devpocket_actors::remote::Instruction;
use serde::Deserialize;
use utoipa::ToSchema;
use uuid::Uuid;

use super::{load, order, parse_id};
use crate::audit::{Action, Event, Origin, ResourceType};
use crate::auth::AuthUser;
use crate::environments::{self as rules, EnvironmentResponse, placement};
use crate::error::ApiError;
use crate::http::{Json, OptionalJson};
use crate::openapi::{
    BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized,
    Unavailable, Unprocessable, UnsupportedMediaType,
};
use crate::startup::AppState;

#[derive(Deserialize, ToSchema)]
#[schema(as = SnapshotEnvironmentRequest)]
pub(super) struct SnapshotRequest {
    /// The snapshot's name at DigitalOcean: at most 200 characters, no control
    /// characters. Left out (or the whole body left out): the environment's slug
    /// and the time, e.g. `my-project-1a2b3c-20261123-101500`.
    #[schema(example = "before-upgrade")]
    name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = ResizeEnvironmentRequest)]
pub(super) struct ResizeRequest {
    /// Required: a DevPocket size (`small`, `medium`, `large`, `xlarge`) or a
    /// DigitalOcean size slug from `GET /api/v1/sizes`; above the plan's largest is
    /// 403.
    #[schema(example = "medium")]
    size: Option<String>,
}

/// Snapshot an environment.
///
/// DigitalOcean only: a snapshot of the droplet's disk (not of the home volume),
/// from `running` or `stopped`; a running machine keeps running. Answers with the
/// environment in phase `snapshotting`; afterwards it is back in `ready` or
/// `stopped` with `status_message` "snapshot NAME saved" (or why it failed). 409 on
/// a provider that cannot take snapshots (the local one) or in any other state.
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/snapshot",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    request_body(content = Option<SnapshotRequest>, description = "Optional; an empty body takes a snapshot with a generated name."),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted; the snapshot is being taken.", body = EnvironmentResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn snapshot_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
    body: OptionalJson<SnapshotRequest>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        let id = parse_id(&id)?;
        let env = load(&state, &caller, id).await?;
        let name = body
            .into_inner()
            .and_then(|b| b.name)
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| {
                let slug = rules::slug(&env.name, id);
                format!("{slug}-{}", Utc::now().format("%Y%m%d-%H%M%S"))
            });
        if name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(ApiError::validation(
                "name",
                "must be at most 200 characters without control characters",
            ));
        }
        maintain(&state, &caller, id, MaintenanceRequest::Snapshot { name }).await
    }
    .await;
    audit_maintenance(
        &state,
        &caller,
        &origin,
        &id,
        Action::EnvironmentSnapshot,
        &result,
    );
    result
}

/// Resize an environment.
///
/// DigitalOcean only, from `running` or `stopped`: a running droplet is shut down,
/// given the new size and powered on again (a larger size's larger disk is kept for
/// good: DigitalOcean cannot shrink it back). Answers with the environment in phase
/// `resizing`; afterwards it is back in `ready` or `stopped` with the new `size`.
/// 409 on a provider that cannot resize (the local one), for the size it already
/// has, or in any other state.
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/resize",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    request_body = ResizeRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted; the machine is being resized.", body = EnvironmentResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn resize_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
    body: Json<ResizeRequest>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        let id = parse_id(&id)?;
        let env = load(&state, &caller, id).await?;
        let size = body
            .into_inner()
            .size
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::validation("size", "is required"))?;
        let size =
            placement::resized(&state, caller.user.subscription_plan, &env.provider, size).await?;
        maintain(&state, &caller, id, MaintenanceRequest::Resize { size }).await
    }
    .await;
    audit_maintenance(
        &state,
        &caller,
        &origin,
        &id,
        Action::EnvironmentResize,
        &result,
    );
    result
}

async fn maintain(
    state: &AppState,
    caller: &AuthUser,
    id: Uuid,
    request: MaintenanceRequest,
) -> Result<HttpResponse, ApiError> {
    let record = order(state, caller, id, Instruction::Maintain { request }).await?;
    Ok(HttpResponse::Accepted().json(EnvironmentResponse::from_record(record)))
}

fn audit_maintenance(
    state: &AppState,
    caller: &AuthUser,
    origin: &Origin,
    raw_id: &str,
    action: Action,
    result: &Result<HttpResponse, ApiError>,
) {
    if let Some(event) = Event::for_result(action, result) {
        state.audit.record(
            origin,
            event
                .on(ResourceType::Environment, Uuid::parse_str(raw_id).ok())
                .by(caller.user.id),
        );
    }
}
