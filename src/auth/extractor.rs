//! `AuthUser`: the authenticated caller, checked on every request against the
//! session store (through a short-lived cache that this process's logouts, token
//! reuse and account changes clear, see `session_cache`) so that they take effect
//! at once, and counted against the per-user rate limit of their plan.

use std::future::Future;
use std::pin::Pin;

use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use uuid::Uuid;

use super::tokens::TokenKind;
use crate::audit::{Action, Event, Origin, Outcome, ResourceType};
use crate::db::sessions;
use crate::db::users::User;
use crate::error::ApiError;
use crate::ratelimit;
use crate::startup::AppState;

#[derive(Debug, Clone)]
pub struct AuthUser {
    pub user: User,
    pub session_id: Uuid,
}

/// The bearer token of a request, if it has one.
fn bearer(req: &HttpRequest) -> Option<String> {
    let value = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

impl AuthUser {
    /// Resolves an access token (from a header or, for WebSockets, a query parameter).
    pub async fn from_token(state: &AppState, token: &str) -> Result<Self, ApiError> {
        let claims = state.tokens.decode(token, TokenKind::Access)?;
        if let Some(user) = state.sessions.get(claims.sid, claims.sub) {
            return Ok(Self {
                user,
                session_id: claims.sid,
            });
        }
        let mut conn = state.pool.get().await?;
        match sessions::active_user(&mut conn, claims.sid, claims.sub).await? {
            Some(user) => {
                state.sessions.put(claims.sid, &user);
                Ok(Self {
                    user,
                    session_id: claims.sid,
                })
            }
            None => Err(ApiError::Unauthorized(
                "This session has ended (signed out, revoked or account deactivated); sign in again.".into(),
            )),
        }
    }
}

impl FromRequest for AuthUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, _: &mut Payload) -> Self::Future {
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let token = bearer(req);
        let req = req.clone();
        Box::pin(async move {
            let state = state
                .ok_or_else(|| ApiError::internal(anyhow::anyhow!("application state missing")))?;
            let token = token.ok_or_else(|| {
                ApiError::Unauthorized(
                    "Authentication required: send `Authorization: Bearer <access_token>`.".into(),
                )
            })?;
            let caller = AuthUser::from_token(&state, &token).await?;
            // Per user, scaled by plan: known only now, after the session check.
            if let Some(status) = state.ratelimits.check_user(&caller.user)? {
                ratelimit::record(&req, status);
            }
            Ok(caller)
        })
    }
}

/// An authenticated administrator: 401 without credentials, 403 for anyone else.
/// A refusal is recorded in the audit log (`admin.access_denied`).
#[derive(Debug, Clone)]
pub struct AdminUser(pub AuthUser);

impl FromRequest for AdminUser {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let caller = AuthUser::from_request(req, payload);
        let state = req.app_data::<web::Data<AppState>>().cloned();
        let endpoint = format!(
            "{} {}",
            req.method(),
            req.match_pattern().unwrap_or_else(|| req.path().to_owned())
        );
        let origin = state
            .as_ref()
            .map(|s| Origin::of(req, &s.settings.http.trusted_proxies))
            .unwrap_or_default();
        Box::pin(async move {
            let caller = caller.await?;
            if caller.user.subscription_plan == crate::plans::Plan::Admin {
                return Ok(Self(caller));
            }
            if let Some(state) = state {
                state.audit.record(
                    &origin,
                    Event::new(Action::AdminDenied, Outcome::Denied)
                        .on(ResourceType::Endpoint, Some(endpoint))
                        .by(caller.user.id),
                );
            }
            Err(ApiError::Forbidden(
                "This is an administrator's endpoint; your account is not an administrator.".into(),
            ))
        })
    }
}
