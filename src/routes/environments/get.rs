//! `GET /api/v1/environments/{id}`: one of the caller's environments.

use actix_web::{HttpResponse, web};

use super::{load, parse_id};
use crate::auth::AuthUser;
use crate::environments::EnvironmentResponse;
use crate::error::ApiError;
use crate::openapi::{Conflict, NotFound, TooManyRequests, Unauthorized, Unavailable};
use crate::startup::AppState;

/// Get an environment.
#[utoipa::path(
    get,
    path = "/api/v1/environments/{id}",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = EnvironmentResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn get_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(HttpResponse::Ok().json(load(&state, &caller, id).await?))
}
