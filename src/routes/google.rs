//! Google sign-in: `POST /api/v1/auth/google`, and linking the signed-in account
//! to Google from the profile (`/api/v1/users/me/google`).

use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, web};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::SessionResponse;
use crate::audit::Origin;
use crate::auth::{AuthUser, google};
use crate::error::ApiError;
use crate::http::Json;
use crate::openapi::{
    BadRequest, Conflict, Forbidden, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable,
    Unprocessable, UnsupportedMediaType,
};
use crate::ratelimit;
use crate::startup::AppState;

/// Resources, not scopes: they must be configured before the `/auth` scope, which
/// would otherwise take `/auth/google` and answer 404.
pub fn configure(cfg: &mut web::ServiceConfig) {
    // Google sign-in can make an account: it shares the sign-ups' per-address limit.
    cfg.service(
        web::resource("/auth/google")
            .wrap(from_fn(ratelimit::limit_register_by_ip))
            .route(web::post().to(sign_in_with_google)),
    )
    .service(
        web::resource("/users/me/google")
            .route(web::post().to(link_google))
            .route(web::delete().to(unlink_google)),
    );
}

#[derive(Deserialize, ToSchema)]
struct GoogleSignInRequest {
    /// The ID token (a JWT) Google Sign-In returned; `idToken` is accepted too.
    #[serde(alias = "idToken")]
    id_token: String,
    /// Google's access token, if the app has one (`accessToken` too). Not needed:
    /// ignored.
    #[serde(default, alias = "accessToken")]
    #[allow(dead_code)]
    access_token: Option<String>,
}

/// Sign in with Google.
///
/// Send the ID token Google Sign-In returned (its audience must be one of the
/// server's `GOOGLE_CLIENT_IDS`). The account linked to that Google account signs
/// in. Otherwise an account with the same e-mail address is linked and signed in
/// when Google and this server both hold the address verified, and refused (409
/// `google_link_requires_verification`) when not: sign in with the password and
/// link Google from the profile. Otherwise a new account is made (username from
/// the address, no password until one is reset). The answer is the same as
/// login's. A token that fails verification is 401, its detail naming why (wrong
/// audience or issuer, expired, unknown key, bad signature); 503 when Google
/// sign-in is not configured. Limited per address with sign-ups.
#[utoipa::path(
    post,
    path = "/api/v1/auth/google",
    tag = "accounts",
    request_body = GoogleSignInRequest,
    responses(
        (status = 200, description = "Signed in.", body = SessionResponse),
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
async fn sign_in_with_google(
    state: web::Data<AppState>,
    origin: Origin,
    body: Json<GoogleSignInRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let (user, tokens) = google::sign_in(&state, &body.id_token, &origin).await?;
    Ok(HttpResponse::Ok().json(SessionResponse {
        tokens,
        user: user.into(),
    }))
}

#[derive(Deserialize, ToSchema)]
struct LinkGoogleRequest {
    /// The ID token Google Sign-In returned; `idToken` is accepted too.
    #[serde(alias = "idToken")]
    id_token: String,
}

/// Whether the account is linked to a Google account.
#[derive(Serialize, ToSchema)]
struct GoogleLinkResponse {
    google_linked: bool,
}

/// Link your account to Google.
///
/// After this, signing in with that Google account signs in to yours. Your
/// e-mail address must be verified (403 otherwise). A Google account links to
/// one account at most: 409 `google_linked_elsewhere` when it is linked to
/// another, 409 `google_already_linked` when yours is linked to another Google
/// account. A token that fails verification is 422 on `id_token`, naming why (not
/// 401: your session is fine).
#[utoipa::path(
    post,
    path = "/api/v1/users/me/google",
    tag = "accounts",
    security(("bearer" = [])),
    request_body = LinkGoogleRequest,
    responses(
        (status = 200, description = "Linked (or already linked to this Google account).", body = GoogleLinkResponse),
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
async fn link_google(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    body: Json<LinkGoogleRequest>,
) -> Result<HttpResponse, ApiError> {
    google::link(&state, &caller, &body.into_inner().id_token, &origin).await?;
    Ok(HttpResponse::Ok().json(GoogleLinkResponse {
        google_linked: true,
    }))
}

/// Unlink your account from Google.
///
/// Signing in with that Google account no longer signs in to yours. Answers 200
/// whether or not it was linked. An account made by Google sign-in has no
/// password until you reset one.
#[utoipa::path(
    delete,
    path = "/api/v1/users/me/google",
    tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Not linked (any more).", body = GoogleLinkResponse),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn unlink_google(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
) -> Result<HttpResponse, ApiError> {
    google::unlink(&state, &caller, &origin).await?;
    Ok(HttpResponse::Ok().json(GoogleLinkResponse {
        google_linked: false,
    }))
}
