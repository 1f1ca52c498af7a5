//! Accounts and sign-in: registration, login with lockout, refresh-token rotation
//! with reuse detection, logout. Handlers in `routes::auth` stay thin and call these.

pub mod account;
pub mod extractor;
pub mod google;
pub mod password;
pub mod session_cache;
pub mod tokens;
pub mod validation;

use std::net::IpAddr;
use std::time::Duration;

use chrono::Utc;
use diesel_async::AsyncPgConnection;
use serde::Serialize;
use serde_json::json;
use uuid::Uuid;

pub use extractor::{AdminUser, AuthUser};
use tokens::{TokenError, TokenKind};

use crate::audit::{Action, Event, Origin, Outcome, ResourceType};
use crate::db::users::{Duplicate, InsertOutcome, NewUser, User};
use crate::db::{DbPool, sessions, users};
use crate::error::{ApiError, ValidationErrors};
use crate::plans::Plan;
use crate::startup::AppState;
use password::PasswordHasher;

/// The token half of the login/register/refresh answer.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TokenPair {
    /// A JWT for `Authorization: Bearer …` (and `?token=` on WebSockets).
    pub access_token: String,
    /// For `/auth/refresh`; works once.
    pub refresh_token: String,
    /// Always `bearer`.
    #[schema(example = "bearer")]
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    #[schema(example = 86400)]
    pub expires_in: u64,
}

impl From<TokenError> for ApiError {
    fn from(err: TokenError) -> Self {
        match err {
            TokenError::Sign(_) => ApiError::internal(err),
            TokenError::Expired => {
                ApiError::Unauthorized("The token has expired; sign in again.".into())
            }
            TokenError::Invalid => ApiError::Unauthorized("The token is not valid.".into()),
            TokenError::WrongKind(TokenKind::Refresh) => ApiError::Unauthorized(
                "A refresh token cannot be used as a bearer token; use the access token.".into(),
            ),
            TokenError::WrongKind(TokenKind::Access) => ApiError::Unauthorized(
                "An access token cannot be used to refresh; use the refresh token.".into(),
            ),
        }
    }
}

/// Validated registration input.
pub struct Registration {
    pub username: String,
    pub email: String,
    pub password: String,
    pub full_name: Option<String>,
    pub plan: Plan,
}

impl Registration {
    /// Checks every field and reports all problems at once.
    pub fn validate(&self) -> Result<(), ApiError> {
        let mut errors = ValidationErrors::default();
        validation::username(&self.username, &mut errors);
        validation::email(&self.email, &mut errors);
        validation::password(&self.password, &mut errors);
        if let Some(name) = &self.full_name {
            validation::full_name(name, &mut errors);
        }
        errors.into_result()
    }
}

/// Creates an account. Duplicate username or e-mail → 409 naming which.
pub async fn create_user(
    pool: &DbPool,
    hasher: &PasswordHasher,
    input: Registration,
) -> Result<User, ApiError> {
    input.validate()?;
    let hash = hasher
        .hash(input.password)
        .await
        .map_err(ApiError::internal)?;
    let mut conn = pool.get().await?;
    let new = NewUser {
        id: Uuid::new_v4(),
        username: &input.username,
        email: &input.email,
        password_hash: &hash,
        full_name: input.full_name.as_deref(),
        subscription_plan: input.plan,
    };
    match users::insert(&mut conn, &new).await? {
        InsertOutcome::Created(user) => Ok(*user),
        InsertOutcome::Duplicate(Duplicate::Username) => Err(ApiError::Conflict {
            detail: format!("The username '{}' is already taken.", input.username),
            context: json!({ "field": "username" }),
        }),
        InsertOutcome::Duplicate(Duplicate::Email) => Err(ApiError::Conflict {
            detail: "An account with this e-mail address already exists.".into(),
            context: json!({ "field": "email" }),
        }),
    }
}

/// Starts a sign-in session (a new refresh-token family) and issues its first pair.
pub async fn start_session(
    state: &AppState,
    conn: &mut AsyncPgConnection,
    user: &User,
) -> Result<TokenPair, ApiError> {
    let session_id = Uuid::new_v4();
    let expires_at = Utc::now()
        + chrono::Duration::from_std(state.tokens.refresh_ttl).map_err(ApiError::internal)?;
    sessions::create(conn, session_id, user.id, expires_at).await?;
    issue_pair(state, conn, user.id, session_id).await
}

async fn issue_pair(
    state: &AppState,
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    session_id: Uuid,
) -> Result<TokenPair, ApiError> {
    let access = state.tokens.issue(TokenKind::Access, user_id, session_id)?;
    let refresh = state
        .tokens
        .issue(TokenKind::Refresh, user_id, session_id)?;
    sessions::insert_refresh_token(conn, refresh.jti, session_id, refresh.expires_at).await?;
    Ok(TokenPair {
        access_token: access.token,
        refresh_token: refresh.token,
        token_type: "bearer",
        expires_in: state.tokens.access_ttl.as_secs(),
    })
}

fn locked(until: chrono::DateTime<Utc>) -> ApiError {
    let left = (until - Utc::now())
        .to_std()
        .unwrap_or(Duration::from_secs(1));
    let minutes = left.as_secs().div_ceil(60);
    ApiError::Locked {
        detail: format!(
            "Too many wrong passwords: sign-in for this account from your address is locked for {minutes} more minute{}.",
            if minutes == 1 { "" } else { "s" }
        ),
        retry_after: left,
    }
}

/// The longest attempted login name kept in the audit log.
const AUDITED_LOGIN_CHARS: usize = 254;

/// The client address of a request, when it has one.
pub fn address(origin: &Origin) -> Option<IpAddr> {
    origin.ip.as_deref().and_then(|ip| ip.parse().ok())
}

/// Checks a password and starts a session. Consecutive failures lock the
/// (account, client address) pair; failures from an address that has not signed in
/// to the account lately spend the address's and the account's budgets. See README,
/// Security and Rate limits. Every attempt that gets as far as checking is audited.
pub async fn login(
    state: &AppState,
    login: &str,
    password: String,
    origin: &Origin,
) -> Result<(User, TokenPair), ApiError> {
    let wrong = || ApiError::Unauthorized("Wrong username, e-mail or password.".into());
    let ip = address(origin);
    // The lockout counts an IPv6 client per /64, as the rate limits do.
    let lock_key = ip
        .map(|ip| crate::ratelimit::address_key(ip).to_string())
        .unwrap_or_default();
    let failed = |outcome: Outcome, reason: &str| {
        Event::new(Action::LoginFailed, outcome).details(json!({ "reason": reason }))
    };
    let mut conn = state.pool.get().await?;
    let user = users::find_by_login(&mut conn, login.trim()).await?;
    if let Some(user) = &user
        && let Some(until) = users::lock_in_force(&mut conn, user.id, &lock_key).await?
    {
        state
            .audit
            .record(origin, failed(Outcome::Denied, "locked").by(user.id));
        return Err(locked(until));
    }
    // Only an account that exists has a budget of its own: memory stays bounded by
    // the accounts, whatever logins are typed (an unknown one counts per address).
    let attempt = state
        .ratelimits
        .begin_login(&mut conn, &state.pool, user.as_ref().map(|u| u.id), ip)
        .await?;
    // Do not hold a pooled connection across the (slow) hash.
    drop(conn);
    let ok = state
        .hasher
        .verify(password, user.as_ref().map(|u| u.password_hash.clone()))
        .await
        .map_err(ApiError::internal)?;
    let mut conn = state.pool.get().await?;
    let Some(user) = user else {
        attempt.failed();
        let attempted: String = login.trim().chars().take(AUDITED_LOGIN_CHARS).collect();
        state.audit.record(
            origin,
            failed(Outcome::Failure, "unknown_account").details(json!({ "login": attempted })),
        );
        return Err(wrong());
    };
    if !ok {
        attempt.failed();
        let settings = &state.settings;
        let lock = users::record_failure(
            &mut conn,
            user.id,
            &lock_key,
            settings.auth.lockout_threshold,
            settings.auth.lockout_duration,
        )
        .await?;
        state.audit.record(
            origin,
            failed(Outcome::Failure, "wrong_password").by(user.id),
        );
        return match lock {
            Some(until) => {
                tracing::warn!(user_id = %user.id, "login locked after repeated wrong passwords");
                state.audit.record(
                    origin,
                    Event::new(Action::Lockout, Outcome::Denied)
                        .by(user.id)
                        .details(json!({
                            "locked_until": until,
                            "failures": settings.auth.lockout_threshold,
                        })),
                );
                Err(locked(until))
            }
            None => Err(wrong()),
        };
    }
    if !user.is_active {
        state
            .audit
            .record(origin, failed(Outcome::Denied, "deactivated").by(user.id));
        return Err(ApiError::Forbidden(
            "This account is deactivated; contact support.".into(),
        ));
    }
    users::clear_failures(&mut conn, user.id, &lock_key).await?;
    attempt.succeeded(&mut conn).await?;
    let user = users::record_login(&mut conn, user.id).await?;
    let pair = start_session(state, &mut conn, &user).await?;
    state.audit.record(
        origin,
        Event::new(Action::Login, Outcome::Success).by(user.id),
    );
    Ok((user, pair))
}

/// Rotates a refresh token. Presenting one that was already used revokes its whole
/// family, signing out whoever holds the newer tokens too.
pub async fn refresh(
    state: &AppState,
    refresh_token: &str,
    origin: &Origin,
) -> Result<TokenPair, ApiError> {
    let claims = state.tokens.decode(refresh_token, TokenKind::Refresh)?;
    let mut conn = state.pool.get().await?;
    match sessions::consume_refresh_token(&mut conn, claims.jti).await? {
        sessions::Consumed::Fresh { session_id } => {
            if sessions::active_user(&mut conn, session_id, claims.sub)
                .await?
                .is_none()
            {
                return Err(ApiError::Unauthorized(
                    "This session has ended; sign in again.".into(),
                ));
            }
            // An active user stays signed in: each rotation extends the session.
            let expires_at = Utc::now()
                + chrono::Duration::from_std(state.tokens.refresh_ttl)
                    .map_err(ApiError::internal)?;
            sessions::extend(&mut conn, session_id, expires_at).await?;
            issue_pair(state, &mut conn, claims.sub, session_id).await
        }
        sessions::Consumed::Reused => {
            crate::listener::publish(state, crate::listener::Invalidation::Session(claims.sid));
            tracing::warn!(user_id = %claims.sub, session_id = %claims.sid, "refresh token reuse: session revoked");
            state.audit.record(
                origin,
                Event::new(Action::RefreshReuse, Outcome::Denied)
                    .on(ResourceType::Session, Some(claims.sid))
                    .by(claims.sub),
            );
            Err(ApiError::Unauthorized(
                "This refresh token was already used, so the session was signed out everywhere for safety; sign in again.".into(),
            ))
        }
        sessions::Consumed::Invalid => Err(ApiError::Unauthorized(
            "This session has ended; sign in again.".into(),
        )),
    }
}

pub async fn logout(state: &AppState, caller: &AuthUser, origin: &Origin) -> Result<(), ApiError> {
    let mut conn = state.pool.get().await?;
    sessions::revoke(&mut conn, caller.session_id, "logout").await?;
    crate::listener::publish(
        state,
        crate::listener::Invalidation::Session(caller.session_id),
    );
    state.audit.record(
        origin,
        Event::new(Action::Logout, Outcome::Success)
            .on(ResourceType::Session, Some(caller.session_id))
            .by(caller.user.id),
    );
    Ok(())
}
