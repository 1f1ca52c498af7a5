//! `/api/v1/auth/*`: register, login, refresh, logout, me.

use actix_web::middleware::from_fn;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::audit::{Action, Event, Origin, Outcome};
use crate::auth::{self, AuthUser, Registration, TokenPair};
use crate::db::users::User;
use crate::error::ApiError;
use crate::http::Json;
use crate::plans::Plan;
use crate::ratelimit;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    // Routes that take credentials are under a stricter per-address limit too.
    let limited = |path| web::resource(path).wrap(from_fn(ratelimit::limit_auth_by_ip));
    cfg.service(
        web::scope("/auth")
            .service(limited("/register").route(web::post().to(register)))
            .service(limited("/login").route(web::post().to(login)))
            .service(limited("/refresh").route(web::post().to(refresh)))
            .route("/logout", web::post().to(logout))
            .route("/me", web::get().to(me)),
    );
}

/// The user object the app reads. Never carries a hash or a token.
#[derive(Debug, Serialize, Deserialize)]
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

#[derive(Serialize)]
struct SessionResponse {
    #[serde(flatten)]
    tokens: TokenPair,
    user: UserResponse,
}

#[derive(Deserialize)]
struct RegisterRequest {
    username: String,
    email: String,
    password: String,
    full_name: Option<String>,
}

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
    state.audit.record(
        &origin,
        Event::new(Action::Register, Outcome::Success).by(user.id),
    );
    let mut conn = state.pool.get().await?;
    let tokens = auth::start_session(&state, &mut conn, &user).await?;
    Ok(HttpResponse::Created().json(SessionResponse {
        tokens,
        user: user.into(),
    }))
}

#[derive(Deserialize)]
struct LoginRequest {
    username_or_email: String,
    password: String,
}

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

#[derive(Deserialize)]
struct RefreshRequest {
    refresh_token: String,
}

async fn refresh(
    state: web::Data<AppState>,
    origin: Origin,
    body: Json<RefreshRequest>,
) -> Result<HttpResponse, ApiError> {
    let tokens = auth::refresh(&state, &body.into_inner().refresh_token, &origin).await?;
    Ok(HttpResponse::Ok().json(tokens))
}

async fn logout(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
) -> Result<HttpResponse, ApiError> {
    auth::logout(&state, &caller, &origin).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "success": true })))
}

async fn me(caller: AuthUser) -> HttpResponse {
    HttpResponse::Ok().json(UserResponse::from(caller.user))
}
