//! `PUT /api/v1/environments/{id}`: a new name or new environment variables.

use std::collections::BTreeMap;

use actix_web::{HttpResponse, web};
use devpocket_actors::model::Changes;
use devpocket_actors::remote::Instruction;
use serde_json::Value;
use utoipa::ToSchema;

use super::{order, parse_id};
use crate::auth::AuthUser;
use crate::environments::{self as rules, EnvironmentResponse, auto_stop};
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
    /// As for a new environment; applies at once (the idle timer is not reset).
    #[schema(example = 20)]
    auto_stop_minutes: Option<i32>,
}

/// Rename an environment, replace its variables or set its idle timeout.
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
    let environment_variables = match body.get("environment_variables") {
        None | Some(Value::Null) => None,
        Some(v) => Some(rules::validate_variables(v, &mut errors)),
    };
    let auto_stop_minutes = auto_stop::validate_minutes(
        body.get("auto_stop_minutes"),
        &state.settings.auto_stop,
        caller.user.subscription_plan,
        &mut errors,
    );
    errors.into_result()?;
    let changes = Changes {
        name,
        environment_variables,
        auto_stop_minutes,
    };
    let record = order(&state, &caller, id, Instruction::Update { changes }).await?;
    Ok(HttpResponse::Ok().json(EnvironmentResponse::from_record(record)))
}
