//! `/api/v1/users/me`: the signed-in user's profile, and deleting the account.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

use super::auth::{Done, UserResponse};
use crate::audit::Origin;
use crate::auth::{AuthUser, account};
use crate::error::ApiError;
use crate::http::Json;
use crate::openapi::{
    BadRequest, Conflict, Forbidden, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable,
    Unprocessable, UnsupportedMediaType,
};
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    // A resource, not a scope: other routes live under `/users/me/…`.
    cfg.service(
        web::resource("/users/me")
            .route(web::put().to(update_me))
            .route(web::delete().to(delete_me)),
    );
}

/// What `PUT /users/me` reads; any other member is ignored.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // Documents the body; the handler reads it as a map.
struct ProfileUpdate {
    /// 3–30 of `A-Z a-z 0-9 _ -`; unique regardless of case. `null` keeps it.
    username: Option<String>,
    /// A new address is unverified until the code mailed to it is typed (and an
    /// unverified account may not change its address, by default). `null` keeps it.
    email: Option<String>,
    /// `null` or `""` clears it.
    full_name: Option<String>,
}

/// Edit the profile.
///
/// Takes `username`, `email` and `full_name`; other members are ignored. Answers
/// the user as now stored.
#[utoipa::path(
    put,
    path = "/api/v1/users/me",
    tag = "accounts",
    security(("bearer" = [])),
    request_body = ProfileUpdate,
    responses(
        (status = 200, description = "Updated.", body = UserResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn update_me(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    body: Json<Map<String, Value>>,
) -> Result<HttpResponse, ApiError> {
    let user = account::update_profile(&state, &caller, &body.0, &origin).await?;
    Ok(HttpResponse::Ok().json(UserResponse::from(user)))
}

#[derive(Deserialize, ToSchema)]
struct DeleteAccount {
    /// The account's password, to confirm.
    password: String,
}

/// Delete the account.
///
/// Confirmed with the password (a wrong one is a 400, `wrong_password`). Every
/// environment is deleted — machines, droplets and volumes: nothing keeps running
/// or billing —, registered servers (and their keys), projects and apps are
/// forgotten (nothing on those servers is touched), and every session ends, so a
/// second call is a 401. The audit log keeps the account's entries.
#[utoipa::path(
    delete,
    path = "/api/v1/users/me",
    tag = "accounts",
    security(("bearer" = [])),
    request_body = DeleteAccount,
    responses(
        (status = 200, description = "Deleted.", body = Done),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn delete_me(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    body: Json<DeleteAccount>,
) -> Result<HttpResponse, ApiError> {
    let deleted =
        account::delete_account(&state, &caller, body.into_inner().password, &origin).await?;
    Ok(HttpResponse::Ok().json(Done::new(format!(
        "Your account is deleted{}.",
        match deleted {
            0 => String::new(),
            1 => ", and your environment is being deleted".into(),
            n => format!(", and your {n} environments are being deleted"),
        }
    ))))
}
