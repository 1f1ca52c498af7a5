//! Start, stop, restart and delete: one lifecycle command to the environment's
//! actor, audited, answered with the environment in its new phase.

use actix_web::{HttpResponse, web};
use devpocket_actors::environment::Command;
use devpocket_actors::remote::Instruction;
use uuid::Uuid;

use super::{order, parse_id};
use crate::audit::{Action, Event, Origin, ResourceType};
use crate::auth::AuthUser;
use crate::environments::EnvironmentResponse;
use crate::error::ApiError;
use crate::openapi::{Conflict, Forbidden, NotFound, TooManyRequests, Unauthorized, Unavailable};
use crate::startup::AppState;

/// Sends a lifecycle command; 202 with the environment in its new phase. Audited
/// (see `Outcome::of` for what is not).
async fn lifecycle(
    state: &AppState,
    caller: &AuthUser,
    origin: &Origin,
    raw_id: &str,
    command: Command,
) -> Result<HttpResponse, ApiError> {
    let action = match command {
        Command::Start => Action::EnvironmentStart,
        Command::Stop => Action::EnvironmentStop,
        Command::Restart => Action::EnvironmentRestart,
        Command::Delete => Action::EnvironmentDelete,
    };
    let result = send_lifecycle(state, caller, raw_id, command).await;
    if let Some(event) = Event::for_result(action, &result) {
        state.audit.record(
            origin,
            event
                .on(ResourceType::Environment, Uuid::parse_str(raw_id).ok())
                .by(caller.user.id),
        );
    }
    result
}

async fn send_lifecycle(
    state: &AppState,
    caller: &AuthUser,
    raw_id: &str,
    command: Command,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(raw_id)?;
    let record = order(state, caller, id, Instruction::Lifecycle { command }).await?;
    Ok(HttpResponse::Accepted().json(EnvironmentResponse::from_record(record)))
}

/// Delete an environment.
///
/// From any state but while deleting. Answers with the environment in
/// `terminated`/`deleting`, or `{id, status: "terminated", phase: "deleted"}` when it
/// is already gone; afterwards it is a 404.
#[utoipa::path(
    delete,
    path = "/api/v1/environments/{id}",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Deletion has started.", body = EnvironmentResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn delete_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    lifecycle(&state, &caller, &origin, &id, Command::Delete).await
}

/// Start an environment.
///
/// From `stopped` (or, after a failed start, stop or delete, from `error`); 409 otherwise. Starting counts against the plan's environments that are not stopped (403). Answers with the environment in its new
/// phase, `starting` or further along.
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/start",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted.", body = EnvironmentResponse),
        (status = 403, response = Forbidden),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn start_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    lifecycle(&state, &caller, &origin, &id, Command::Start).await
}

/// Stop an environment.
///
/// From `running`; 409 otherwise. Answers with the environment in its new
/// phase, `stopping` or further along.
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/stop",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted.", body = EnvironmentResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn stop_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    lifecycle(&state, &caller, &origin, &id, Command::Stop).await
}

/// Restart an environment.
///
/// From `running` or `stopped`; 409 otherwise. Starting counts against the plan's environments that are not stopped (403). Answers with the environment in its new
/// phase, `restarting` or further along.
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/restart",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted.", body = EnvironmentResponse),
        (status = 403, response = Forbidden),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn restart_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    lifecycle(&state, &caller, &origin, &id, Command::Restart).await
}
