//! Google sign-in: an ID token from Google signs in the account linked to its
//! Google subject, links the account with its e-mail address when both sides have
//! verified that address, or else makes a new account. Signed-in users link and
//! unlink Google from their profile. Every outcome is audited.

pub mod id_token;
pub mod jwks;
mod username;

use serde_json::json;
use uuid::Uuid;

use diesel_async::AsyncPgConnection;

use crate::audit::{Action, Event, Origin, Outcome};
use crate::config::GoogleSettings;
use crate::db::google::{self as db, GoogleInsert, Link, NewGoogleUser};
use crate::db::users::{self, Duplicate, User};
use crate::error::ApiError;
use crate::plans::Plan;
use crate::startup::AppState;
pub use id_token::{GoogleIdentity, Rejection, VerifyError};

use super::{AuthUser, TokenPair, address, password, start_session};

/// What checks Google ID tokens: this server's client ids and Google's keys.
pub struct GoogleSignIn {
    verifier: id_token::IdTokenVerifier,
}

impl GoogleSignIn {
    pub fn new(settings: &GoogleSettings) -> Result<Self, reqwest::Error> {
        let keys = jwks::Jwks::new(&settings.jwks_url)?;
        Ok(Self {
            verifier: id_token::IdTokenVerifier::new(&settings.client_ids, keys),
        })
    }

    pub async fn verify(&self, token: &str) -> Result<GoogleIdentity, VerifyError> {
        self.verifier.verify(token).await
    }
}

/// The longest full name kept (see `validation::full_name`).
const FULL_NAME_CHARS: usize = 100;
/// Lookups and inserts are retried this many times when a concurrent sign-in or
/// registration takes the account's address or Google subject in between.
const ATTEMPTS: usize = 3;

fn configured(state: &AppState) -> Result<&GoogleSignIn, ApiError> {
    state.google.as_ref().ok_or_else(|| {
        ApiError::ServiceUnavailable("Google sign-in is not configured on this server.".into())
    })
}

/// A missing or empty `id_token`.
pub fn require_token(id_token: &str) -> Result<&str, ApiError> {
    let token = id_token.trim();
    if token.is_empty() {
        return Err(ApiError::validation(
            "id_token",
            "must not be empty: send the ID token Google Sign-In returned",
        ));
    }
    Ok(token)
}

fn unavailable(err: &VerifyError) -> ApiError {
    tracing::warn!(error = %err, "Google ID token not checked");
    ApiError::ServiceUnavailable(
        "Google's signing keys could not be fetched to check the sign-in; try again shortly."
            .into(),
    )
}

/// How the signed-in account was found.
#[derive(Debug, Clone, Copy)]
enum Found {
    Linked,
    LinkedByEmail,
    Created,
}

impl Found {
    fn as_str(self) -> &'static str {
        match self {
            Found::Linked => "linked",
            Found::LinkedByEmail => "linked_by_email",
            Found::Created => "created",
        }
    }
}

/// Signs in with a Google ID token, as `login` does with a password: the account
/// and a new session's tokens.
pub async fn sign_in(
    state: &AppState,
    id_token: &str,
    origin: &Origin,
) -> Result<(User, TokenPair), ApiError> {
    let google = configured(state)?;
    let failed = |outcome: Outcome, reason: &str| {
        Event::new(Action::GoogleSignIn, outcome).details(json!({ "reason": reason }))
    };
    let identity = match google.verify(require_token(id_token)?).await {
        Ok(identity) => identity,
        Err(VerifyError::Rejected(rejection)) => {
            state
                .audit
                .record(origin, failed(Outcome::Failure, rejection.reason()));
            return Err(match rejection {
                Rejection::NoEmail => ApiError::validation("id_token", rejection.to_string()),
                _ => ApiError::Unauthorized(rejection.to_string()),
            });
        }
        Err(err) => return Err(unavailable(&err)),
    };
    let mut conn = state.pool.get().await?;
    let (user, found) = account_for(state, &mut conn, &identity, origin).await?;
    if !user.is_active {
        state
            .audit
            .record(origin, failed(Outcome::Denied, "deactivated").by(user.id));
        return Err(deactivated());
    }
    let user = users::record_login(&mut conn, user.id).await?;
    let pair = start_session(state, &mut conn, &user).await?;
    // As after a right password: this address is the owner's for the sign-in limits.
    state
        .ratelimits
        .signed_up(&state.pool, user.id, address(origin))
        .await;
    state.audit.record(
        origin,
        Event::new(Action::GoogleSignIn, Outcome::Success)
            .by(user.id)
            .details(json!({ "account": found.as_str() })),
    );
    Ok((user, pair))
}

fn deactivated() -> ApiError {
    ApiError::Forbidden("This account is deactivated; contact support.".into())
}

/// The account Google's identity signs in to: the one linked to it, the one with
/// its e-mail address (linked now, when both sides verified the address), or a new
/// one.
async fn account_for(
    state: &AppState,
    conn: &mut AsyncPgConnection,
    identity: &GoogleIdentity,
    origin: &Origin,
) -> Result<(User, Found), ApiError> {
    let refuse = |user: Uuid, reason: &str, err: ApiError| {
        state.audit.record(
            origin,
            Event::new(Action::GoogleSignIn, Outcome::Denied)
                .by(user)
                .details(json!({ "reason": reason })),
        );
        err
    };
    for _ in 0..ATTEMPTS {
        if let Some(user) = db::find_by_sub(conn, &identity.sub).await? {
            return Ok((user, Found::Linked));
        }
        if let Some((user, linked)) = db::find_by_email(conn, &identity.email).await? {
            if linked.is_some() {
                let err = ApiError::State {
                    code: "google_account_mismatch",
                    detail: "The account with this e-mail address is linked to a different \
                             Google account; sign in with that one, or with your password."
                        .into(),
                    context: json!({}),
                };
                return Err(refuse(user.id, "linked_to_other_google_account", err));
            }
            if !(identity.email_verified && user.is_verified) {
                let (reason, why, then) = if identity.email_verified {
                    (
                        "account_email_unverified",
                        "its e-mail address is not verified yet",
                        "verify the address, then link Google from your profile",
                    )
                } else {
                    (
                        "google_email_unverified",
                        "Google has not verified that the address is yours",
                        "then link Google from your profile",
                    )
                };
                let err = ApiError::State {
                    code: "google_link_requires_verification",
                    detail: format!(
                        "An account with this e-mail address already exists, and {why}. \
                         Sign in with your password, {then}."
                    ),
                    context: json!({}),
                };
                return Err(refuse(user.id, reason, err));
            }
            if !user.is_active {
                return Err(refuse(user.id, "deactivated", deactivated()));
            }
            match db::link(conn, user.id, &identity.sub).await? {
                Link::Linked(user) => {
                    state.audit.record(
                        origin,
                        Event::new(Action::GoogleLink, Outcome::Success)
                            .by(user.id)
                            .details(json!({ "via": "sign_in" })),
                    );
                    return Ok((*user, Found::LinkedByEmail));
                }
                // Linked meanwhile, to this subject or another: look again.
                Link::SubTaken | Link::AccountTaken => continue,
            }
        }
        if let Some(user) = create_account(state, conn, identity, origin).await? {
            return Ok((user, Found::Created));
        }
    }
    Err(ApiError::State {
        code: "google_sign_in_conflict",
        detail: "This account changed while signing in with Google; try again.".into(),
        context: json!({}),
    })
}

/// Makes an account for `identity`, with a username derived from its address or
/// name, made unique. `None` when an account took its e-mail address or Google
/// subject meanwhile.
async fn create_account(
    state: &AppState,
    conn: &mut AsyncPgConnection,
    identity: &GoogleIdentity,
    origin: &Origin,
) -> Result<Option<User>, ApiError> {
    let hash = password::unusable_hash().map_err(ApiError::internal)?;
    let full_name: Option<String> = identity.name.as_deref().and_then(|name| {
        let clean: String = name
            .chars()
            .filter(|c| !c.is_control())
            .take(FULL_NAME_CHARS)
            .collect();
        Some(clean.trim().to_owned()).filter(|n| !n.is_empty())
    });
    for username in username::candidates(&identity.email, identity.name.as_deref()) {
        let new = NewGoogleUser {
            id: Uuid::new_v4(),
            username: &username,
            email: &identity.email,
            password_hash: &hash,
            full_name: full_name.as_deref(),
            subscription_plan: Plan::Free,
            is_verified: identity.email_verified,
            google_sub: &identity.sub,
        };
        match db::insert(conn, &new).await? {
            GoogleInsert::Created(user) => {
                state.audit.record(
                    origin,
                    Event::new(Action::Register, Outcome::Success)
                        .by(user.id)
                        .details(json!({ "via": "google" })),
                );
                // An address Google has not verified gets a code, as at sign-up.
                if !user.is_verified {
                    crate::auth::account::send_first_code(state, &user, origin).await;
                }
                return Ok(Some(*user));
            }
            GoogleInsert::Duplicate(Duplicate::Username) => continue,
            GoogleInsert::Duplicate(Duplicate::Email) | GoogleInsert::SubTaken => return Ok(None),
        }
    }
    Err(ApiError::Conflict {
        detail: "No free username could be made from your e-mail address: register with a username of your choice, then link Google from your profile.".into(),
        context: json!({ "field": "username" }),
    })
}

/// Links the signed-in account to the Google identity of `id_token`. An account
/// whose e-mail address is not verified may not, unless `DEVPOCKET_UNVERIFIED_MAY_NOT`
/// allows it; a Google identity links to one account at most.
pub async fn link(
    state: &AppState,
    caller: &AuthUser,
    id_token: &str,
    origin: &Origin,
) -> Result<(), ApiError> {
    let google = configured(state)?;
    let user = caller.user.id;
    let refused = |outcome: Outcome, reason: &str, err: ApiError| {
        state.audit.record(
            origin,
            Event::new(Action::GoogleLink, outcome)
                .by(user)
                .details(json!({ "via": "profile", "reason": reason })),
        );
        err
    };
    let token = require_token(id_token)?;
    if let Err(err) = crate::auth::account::require_verified(
        state,
        &caller.user,
        crate::config::Restricted::GoogleLink,
    ) {
        return Err(refused(Outcome::Denied, "account_email_unverified", err));
    }
    // Not a 401: the caller's own session is fine, and apps sign out on a 401.
    let identity = match google.verify(token).await {
        Ok(identity) => identity,
        Err(VerifyError::Rejected(rejection)) => {
            let reason = rejection.reason();
            return Err(refused(
                Outcome::Failure,
                reason,
                ApiError::validation("id_token", rejection.to_string()),
            ));
        }
        Err(err) => return Err(unavailable(&err)),
    };
    let mut conn = state.pool.get().await?;
    match db::link(&mut conn, user, &identity.sub).await? {
        Link::Linked(_) => {
            state.audit.record(
                origin,
                Event::new(Action::GoogleLink, Outcome::Success)
                    .by(user)
                    .details(json!({ "via": "profile" })),
            );
            Ok(())
        }
        Link::SubTaken => Err(refused(
            Outcome::Failure,
            "linked_to_other_account",
            ApiError::State {
                code: "google_linked_elsewhere",
                detail: "This Google account is already linked to another DevPocket account; unlink it there first.".into(),
                context: json!({}),
            },
        )),
        Link::AccountTaken => Err(refused(
            Outcome::Failure,
            "account_linked_to_other_google_account",
            ApiError::State {
                code: "google_already_linked",
                detail: "Your account is linked to another Google account; unlink it first (DELETE /api/v1/users/me/google).".into(),
                context: json!({}),
            },
        )),
    }
}

/// Unlinks the signed-in account from Google, if it is linked. The
/// account keeps its password, if it has one; one made by Google sign-in has none
/// until its owner resets it (signing in with Google again links it again while
/// both sides hold the address verified).
pub async fn unlink(state: &AppState, caller: &AuthUser, origin: &Origin) -> Result<(), ApiError> {
    let mut conn = state.pool.get().await?;
    let was_linked = db::unlink(&mut conn, caller.user.id).await?;
    state.audit.record(
        origin,
        Event::new(Action::GoogleUnlink, Outcome::Success)
            .by(caller.user.id)
            .details(json!({ "was_linked": was_linked })),
    );
    Ok(())
}
