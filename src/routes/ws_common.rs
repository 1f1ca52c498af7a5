//! What every WebSocket endpoint shares: token authentication from the query
//! string (mobile WebSocket clients cannot set headers) and closing with a code
//! that says why.

use actix_ws::{CloseCode, CloseReason, Session};

use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::startup::AppState;

/// The caller behind `?token=`, or how to close: 1008 for bad credentials, 1013
/// (try again) when the server cannot check them right now or the user is over the
/// limit of connection attempts.
pub async fn authenticate(
    state: &AppState,
    token: Option<&str>,
) -> Result<AuthUser, (CloseCode, String)> {
    let caller = match token {
        None | Some("") => Err((
            CloseCode::Policy,
            "missing token: connect with ?token=ACCESS_TOKEN".to_owned(),
        )),
        Some(token) => AuthUser::from_token(state, token)
            .await
            .map_err(|e| match e {
                ApiError::Unauthorized(m) => (CloseCode::Policy, m),
                other => (CloseCode::Again, format!("{other}; reconnect")),
            }),
    }?;
    state
        .ratelimits
        .check_ws_connect(caller.user.id)
        .map_err(|s| {
            (
                CloseCode::Again,
                format!(
                    "too many connection attempts; retry in {} s",
                    s.retry_after_seconds()
                ),
            )
        })?;
    Ok(caller)
}

pub async fn close(session: Session, code: CloseCode, reason: &str) {
    let _ = session
        .close(Some(CloseReason {
            code,
            description: Some(reason.to_owned()),
        }))
        .await;
}
