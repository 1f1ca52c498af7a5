//! `PUT /api/v1/environments/{id}`: a new name or new environment variables.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{db, load, parse_id};
use crate::auth::AuthUser;
use crate::environments::{self as rules, EnvironmentResponse};
use crate::error::{ApiError, ValidationErrors};
use crate::http::Json;
use crate::openapi::{
    BadRequest, Conflict, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable,
    Unprocessable, UnsupportedMediaType,
};
use crate::startup::AppState;

/// The body of `PUT /environments/{id}`: what may change; other fields are
/// ignored, `null` leaves a field as it is.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the JSON object `update_environment` reads field by field.
struct UpdateEnvironmentRequest {
    /// As for a new environment.
    name: Option<String>,
    /// Replaces the stored variables; the machine sees them at its next start.
    environment_variables: Option<BTreeMap<String, String>>,
}

/// Rename an environment or replace its variables.
#[utoipa::path(
    put,
    path = "/api/v1/environments/{id}",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    request_body = UpdateEnvironmentRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, body = EnvironmentResponse),
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
pub(super) async fn update_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<String>,
    body: Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let body = body.into_inner();
    if !body.is_object() {
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    let mut errors = ValidationErrors::default();
    let name = match body.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) => {
            let n = n.trim().to_owned();
            rules::validate_name(&n, &mut errors);
            Some(n)
        }
        Some(_) => {
            errors.add("name", "must be a string");
            None
        }
    };
    let variables = match body.get("environment_variables") {
        None | Some(Value::Null) => None,
        Some(v) => Some(json!(rules::validate_variables(v, &mut errors))),
    };
    errors.into_result()?;
    load(&state, &caller, id).await?;
    let mut conn = state.pool.get().await?;
    let updated = db::update(&mut conn, id, name.as_deref(), variables).await;
    state.lists.forget(caller.user.id);
    if !updated? {
        return Err(ApiError::Conflict {
            detail: format!(
                "You already have an environment named '{}'; choose another name.",
                name.unwrap_or_default()
            ),
            context: json!({ "field": "name" }),
        });
    }
    drop(conn);
    Ok(HttpResponse::Ok().json(load(&state, &caller, id).await?))
}
