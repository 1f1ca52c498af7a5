//! `GET /api/v1/environments/{id}/activity` (why it is awake, and until when) and
//! `POST …/keep-awake` (hold it up for a long build): the idle auto-stop as its
//! owner sees it (`environments::auto_stop`).

use actix_web::{HttpResponse, web};
use chrono::Utc;
use devpocket_actors::remote::Instruction;
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use super::{not_found, order, parse_id};
use crate::audit::{Action, Event, Origin, ResourceType};
use crate::auth::AuthUser;
use crate::db::activity;
use crate::environments::auto_stop::ActivityResponse;
use crate::error::ApiError;
use crate::http::Json;
use crate::openapi::{
    BadRequest, Conflict, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable,
    Unprocessable, UnsupportedMediaType,
};
use crate::startup::AppState;

/// The environment's activity as the idle rule weighs it.
async fn read(state: &AppState, caller: &AuthUser, id: Uuid) -> Result<ActivityResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let env = activity::owned(&mut conn, caller.user.id, id)
        .await?
        .ok_or_else(|| not_found(&id.to_string()))?;
    Ok(ActivityResponse::new(
        &state.settings.auto_stop,
        env,
        Utc::now(),
    ))
}

/// Why an environment is awake, and until when.
///
/// The last activity (what, when, which terminal session and client address),
/// the idle timeout that applies, when the environment stops if nothing happens
/// (and when its terminals are warned), and what holds it up regardless. The
/// activity rule is `rule` (also in `GET /api/v1/info`).
#[utoipa::path(
    get,
    path = "/api/v1/environments/{id}/activity",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ActivityResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn get_activity(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(HttpResponse::Ok().json(read(&state, &caller, id).await?))
}

/// The body of `POST /environments/{id}/keep-awake`.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the JSON object `keep_awake` reads.
struct KeepAwakeRequest {
    /// How long to hold the environment up, from now: a whole number of minutes
    /// from 1 to the plan's `max_keep_awake_minutes` (`GET /api/v1/info`).
    #[schema(example = 90)]
    minutes: u32,
}

/// Keep an environment awake.
///
/// For a long build that prints but takes no input: the environment is not
/// stopped for being idle before `minutes` from now (a longer keep-awake already
/// in force stays). The call is itself activity. Only on a running environment
/// (409 `environment_not_running`). Answers as `GET …/activity`.
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/keep-awake",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    request_body = KeepAwakeRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, body = ActivityResponse),
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
pub(super) async fn keep_awake(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
    body: Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let result = hold(&state, &caller, &origin, &id, &body).await;
    if let Some(event) = Event::for_result(Action::EnvironmentKeepAwake, &result) {
        state.audit.record(
            &origin,
            event
                .on(ResourceType::Environment, Uuid::parse_str(&id).ok())
                .by(caller.user.id)
                .details(json!({ "minutes": body.get("minutes") })),
        );
    }
    Ok(HttpResponse::Ok().json(result?))
}

async fn hold(
    state: &AppState,
    caller: &AuthUser,
    origin: &Origin,
    raw_id: &str,
    body: &Value,
) -> Result<ActivityResponse, ApiError> {
    let id = parse_id(raw_id)?;
    let most = caller
        .user
        .subscription_plan
        .limits()
        .max_keep_awake_minutes;
    let minutes = body
        .get("minutes")
        .and_then(Value::as_u64)
        .filter(|m| (1..=u64::from(most)).contains(m));
    let Some(minutes) = minutes else {
        let field = if body.is_object() { "minutes" } else { "body" };
        return Err(ApiError::validation(
            field,
            format!(
                "must be a whole number of minutes from 1 to {most} (the most the {} plan allows)",
                caller.user.subscription_plan.as_str()
            ),
        ));
    };
    let until = Utc::now() + chrono::Duration::minutes(i64::try_from(minutes).unwrap_or(1));
    let instruction = Instruction::KeepAwake {
        until,
        client_address: origin.ip.clone(),
    };
    order(state, caller, id, instruction).await?;
    read(state, caller, id).await
}
