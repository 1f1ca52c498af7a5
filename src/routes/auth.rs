//! `/api/v1/auth/*`: register, login, refresh, logout, me; e-mail verification,
//! forgotten, reset and changed passwords (the logic is in `auth::account`).

use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{Action, Event, Origin, Outcome};
use crate::auth::{self, AuthUser, Registration, TokenPair, account};
use crate::db::users::User;
use crate::error::ApiError;
use crate::http::Json;
use crate::openapi::{
    BadRequest, Conflict, Forbidden, Locked, PayloadTooLarge, TooManyRequests, Unauthorized,
    Unavailable, Unprocessable, UnsupportedMediaType,
};
use crate::plans::Plan;
use crate::ratelimit;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    // Sign-up and refresh have a per-address limit each, on top of the API's: a
    // refresh is not a sign-in. Sign-in counts failures, in `auth::login`.
    cfg.service(
        web::scope("/auth")
            .service(
                web::resource("/register")
                    .wrap(from_fn(ratelimit::limit_register_by_ip))
                    .route(web::post().to(register)),
            )
            .route("/login", web::post().to(login))
            .service(
                web::resource("/refresh")
                    .wrap(from_fn(ratelimit::limit_refresh_by_ip))
                    .route(web::post().to(refresh)),
            )
            .route("/logout", web::post().to(logout))
            .route("/me", web::get().to(me))
            .route("/verify-email", web::post().to(verify_email))
            .route("/resend-verification", web::post().to(resend_verification))
            .route("/change-password", web::post().to(change_password))
            // Asking for a reset, and using one, are limited per address: the
            // first sends mail, the second guesses at tokens.
            .service(
                web::resource("/forgot-password")
                    .wrap(from_fn(ratelimit::limit_recovery_by_ip))
                    .route(web::post().to(forgot_password)),
            )
            .service(
                web::resource("/reset-password")
                    .wrap(from_fn(ratelimit::limit_recovery_by_ip))
                    .route(web::post().to(reset_password)),
            ),
    );
}

/// The user object the app reads. Never carries a hash or a token.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(as = User)]
pub struct UserResponse {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub full_name: Option<String>,
    pub subscription_plan: Plan,
    pub is_active: bool,
    pub is_verified: bool,
    pub last_login: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<User> for UserResponse {
    fn from(u: User) -> Self {
        Self {
            id: u.id,
            username: u.username,
            email: u.email,
            full_name: u.full_name,
            subscription_plan: u.subscription_plan,
            is_active: u.is_active,
            is_verified: u.is_verified,
            last_login: u.last_login,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// A new sign-in: the tokens and the user.
#[derive(Serialize, ToSchema)]
pub(crate) struct SessionResponse {
    #[serde(flatten)]
    pub(crate) tokens: TokenPair,
    pub(crate) user: UserResponse,
}

#[derive(Deserialize, ToSchema)]
struct RegisterRequest {
    /// 3–30 of `A-Z a-z 0-9 _ -`; unique regardless of case.
    #[schema(example = "alice")]
    username: String,
    /// Unique regardless of case.
    #[schema(example = "alice@example.com")]
    email: String,
    /// 8–128 characters with a lower-case letter, an upper-case letter and a digit.
    #[schema(example = "Correct-horse-9")]
    password: String,
    full_name: Option<String>,
}

/// Create an account and sign in.
#[utoipa::path(
    post,
    path = "/api/v1/auth/register",
    tag = "accounts",
    request_body = RegisterRequest,
    responses(
        (status = 201, description = "Signed up and signed in.", body = SessionResponse),
        (status = 400, response = BadRequest),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn register(
    state: web::Data<AppState>,
    origin: Origin,
    body: Json<RegisterRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let input = Registration {
        username: body.username.trim().to_owned(),
        email: body.email.trim().to_owned(),
        password: body.password,
        full_name: body
            .full_name
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty()),
        plan: Plan::Free,
    };
    let user = auth::create_user(&state.pool, &state.hasher, input).await?;
    state
        .ratelimits
        .signed_up(&state.pool, user.id, auth::address(&origin))
        .await;
    state.audit.record(
        &origin,
        Event::new(Action::Register, Outcome::Success).by(user.id),
    );
    account::send_first_code(&state, &user, &origin).await;
    let mut conn = state.pool.get().await?;
    let tokens = auth::start_session(&state, &mut conn, &user).await?;
    Ok(HttpResponse::Created().json(SessionResponse {
        tokens,
        user: user.into(),
    }))
}

#[derive(Deserialize, ToSchema)]
struct LoginRequest {
    /// The username or the e-mail address, in any case.
    #[schema(example = "alice")]
    username_or_email: String,
    #[schema(example = "Correct-horse-9")]
    password: String,
}

/// Sign in.
///
/// Wrong credentials are 401; too many wrong passwords from one address lock
/// sign-in for that account and address (423); a deactivated account is 403. Too
/// many failed sign-ins from one address, or too many wrong passwords for the
/// account from addresses that have not signed in to it lately, are 429.
#[utoipa::path(
    post,
    path = "/api/v1/auth/login",
    tag = "accounts",
    request_body = LoginRequest,
    responses(
        (status = 200, description = "Signed in.", body = SessionResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 423, response = Locked),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn login(
    state: web::Data<AppState>,
    origin: Origin,
    body: Json<LoginRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let (user, tokens) =
        auth::login(&state, &body.username_or_email, body.password, &origin).await?;
    Ok(HttpResponse::Ok().json(SessionResponse {
        tokens,
        user: user.into(),
    }))
}

#[derive(Deserialize, ToSchema)]
struct RefreshRequest {
    refresh_token: String,
}

/// Exchange a refresh token for a new pair.
///
/// A refresh token works once. Presenting a used one again revokes its whole
/// sign-in session (401).
#[utoipa::path(
    post,
    path = "/api/v1/auth/refresh",
    tag = "accounts",
    request_body = RefreshRequest,
    responses(
        (status = 200, description = "A new access and refresh token.", body = TokenPair),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn refresh(
    state: web::Data<AppState>,
    origin: Origin,
    body: Json<RefreshRequest>,
) -> Result<HttpResponse, ApiError> {
    let tokens = auth::refresh(&state, &body.into_inner().refresh_token, &origin).await?;
    Ok(HttpResponse::Ok().json(tokens))
}

/// `{"success": true}`.
#[derive(Serialize, ToSchema)]
struct LogoutResponse {
    success: bool,
}

/// Sign out: ends this sign-in session.
///
/// Its access and refresh tokens stop working at once.
#[utoipa::path(
    post,
    path = "/api/v1/auth/logout",
    tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Signed out.", body = LogoutResponse),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn logout(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
) -> Result<HttpResponse, ApiError> {
    auth::logout(&state, &caller, &origin).await?;
    Ok(HttpResponse::Ok().json(LogoutResponse { success: true }))
}

/// The signed-in user.
#[utoipa::path(
    get,
    path = "/api/v1/auth/me",
    tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 200, body = UserResponse),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn me(caller: AuthUser) -> HttpResponse {
    HttpResponse::Ok().json(UserResponse::from(caller.user))
}

/// `{"success": true, "detail": …}`: what happened, in words for the user.
#[derive(Serialize, ToSchema)]
pub(crate) struct Done {
    success: bool,
    detail: String,
}

impl Done {
    pub(crate) fn new(detail: impl Into<String>) -> Self {
        Self {
            success: true,
            detail: detail.into(),
        }
    }
}

#[derive(Deserialize, ToSchema)]
struct VerifyEmailRequest {
    /// The 6-digit code from the verification mail.
    #[schema(example = "042917")]
    token: String,
}

/// Verify the account's e-mail address with the code mailed to it.
///
/// A code works for 15 minutes and 5 tries; after that (or for a code sent to an
/// address the account no longer has) ask for a new one. Answers the user, now
/// with `is_verified: true`; an account already verified answers the same.
#[utoipa::path(
    post,
    path = "/api/v1/auth/verify-email",
    tag = "accounts",
    security(("bearer" = [])),
    request_body = VerifyEmailRequest,
    responses(
        (status = 200, description = "Verified.", body = UserResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn verify_email(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    body: Json<VerifyEmailRequest>,
) -> Result<HttpResponse, ApiError> {
    let user = account::verify_email(&state, &caller, &body.0.token, &origin).await?;
    Ok(HttpResponse::Ok().json(UserResponse::from(user)))
}

/// Mail a new verification code.
///
/// At most once a minute (429 with `Retry-After` sooner); the new code replaces
/// the old one. An account already verified is a 409.
#[utoipa::path(
    post,
    path = "/api/v1/auth/resend-verification",
    tag = "accounts",
    security(("bearer" = [])),
    responses(
        (status = 202, description = "A new code is on its way.", body = Done),
        (status = 401, response = Unauthorized),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn resend_verification(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
) -> Result<HttpResponse, ApiError> {
    account::resend_verification(&state, &caller, &origin).await?;
    Ok(HttpResponse::Accepted().json(Done::new(format!(
        "A new code is on its way to {}.",
        caller.user.email
    ))))
}

#[derive(Deserialize, ToSchema)]
struct ForgotPasswordRequest {
    #[schema(example = "alice@example.com")]
    email: String,
}

/// The answer to every password-reset request.
const RESET_REQUESTED: &str = "If an account has this address, a mail with a reset link and code is on its way. It works once, for 30 minutes.";

/// Ask for a password-reset mail.
///
/// Always the same answer, in the same time, whether or not an account has the
/// address; if one does, it gets a single-use link and code, valid 30 minutes.
#[utoipa::path(
    post,
    path = "/api/v1/auth/forgot-password",
    tag = "accounts",
    request_body = ForgotPasswordRequest,
    responses(
        (status = 202, description = "Accepted (whether or not the address has an account).", body = Done),
        (status = 400, response = BadRequest),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
    )
)]
async fn forgot_password(
    state: web::Data<AppState>,
    origin: Origin,
    body: Json<ForgotPasswordRequest>,
) -> HttpResponse {
    account::forgot_password(state, body.into_inner().email, origin);
    HttpResponse::Accepted().json(Done::new(RESET_REQUESTED))
}

#[derive(Deserialize, ToSchema)]
struct ResetPasswordRequest {
    /// The code from the reset mail (the `token` of its link).
    token: String,
    /// Under the registration rules. Also accepted as `password` or `newPassword`.
    #[serde(alias = "password", alias = "newPassword")]
    #[schema(example = "Correct-horse-9")]
    new_password: String,
}

/// Set a new password with the code from a reset mail.
///
/// The code works once. Every session of the account is signed out, its sign-in
/// lockouts are cleared, and the owner is told by mail.
#[utoipa::path(
    post,
    path = "/api/v1/auth/reset-password",
    tag = "accounts",
    request_body = ResetPasswordRequest,
    responses(
        (status = 200, description = "The password is set; sign in with it.", body = Done),
        (status = 400, response = BadRequest),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn reset_password(
    state: web::Data<AppState>,
    origin: Origin,
    body: Json<ResetPasswordRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    account::reset_password(&state, &body.token, body.new_password, &origin).await?;
    Ok(HttpResponse::Ok().json(Done::new(
        "Your password is set, and every device was signed out: sign in with the new password.",
    )))
}

#[derive(Deserialize, ToSchema)]
struct ChangePasswordRequest {
    /// Also accepted as `currentPassword`.
    #[serde(alias = "currentPassword")]
    current_password: String,
    /// Under the registration rules. Also accepted as `newPassword`.
    #[serde(alias = "newPassword")]
    #[schema(example = "Correct-horse-9")]
    new_password: String,
}

/// Change the password.
///
/// A wrong current password is a 400 (`wrong_password`), never a 401. Every other
/// session of the account is signed out; this one stays.
#[utoipa::path(
    post,
    path = "/api/v1/auth/change-password",
    tag = "accounts",
    security(("bearer" = [])),
    request_body = ChangePasswordRequest,
    responses(
        (status = 200, description = "Changed.", body = Done),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn change_password(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    body: Json<ChangePasswordRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    account::change_password(
        &state,
        &caller,
        body.current_password,
        body.new_password,
        &origin,
    )
    .await?;
    Ok(HttpResponse::Ok().json(Done::new(
        "Your password is changed; your other devices were signed out.",
    )))
}
