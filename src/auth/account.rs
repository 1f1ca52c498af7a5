//! A person's own account, beyond signing in: proving the e-mail address is theirs,
//! getting back in after forgetting the password, changing it, editing the profile
//! and deleting the account. Mail goes through the outbox (`mail`).

use std::time::Duration;

use chrono::Utc;
use devpocket_actors::environment::{Command, EnvError};
use devpocket_actors::remote::{self, Instruction};
use hmac::{Hmac, Mac};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::{AuthUser, validation};
use crate::audit::{Action, Event, Origin, Outcome, ResourceType};
use crate::config::Restricted;
use crate::db::outbox;
use crate::db::recovery::{self, CodeCheck, ProfileChanges};
use crate::db::users::{Duplicate, User};
use crate::error::{ApiError, ValidationErrors};
use crate::listener::Invalidation;
use crate::mail::Kind;
use crate::startup::AppState;

/// How long a verification code works, how many tries it allows, and how often
/// one may be asked for.
pub const CODE_VALID_FOR: Duration = Duration::from_secs(15 * 60);
pub const CODE_TRIES: i32 = 5;
pub const RESEND_EVERY: Duration = Duration::from_secs(60);
/// How long a password-reset token works, and how many are mailed to one account
/// an hour at most (more requests are answered the same, and mail nothing).
pub const RESET_VALID_FOR: Duration = Duration::from_secs(30 * 60);
const RESETS_PER_HOUR: i64 = 5;

/// The code, bound to its account, under the server's secret.
fn code_mac(state: &AppState, user: &User, code: &str) -> Result<String, ApiError> {
    let key = state
        .settings
        .auth
        .secret_key
        .as_ref()
        .ok_or_else(|| ApiError::internal(anyhow::anyhow!("no secret key")))?;
    let mut mac = Hmac::<Sha256>::new_from_slice(key.expose()).map_err(ApiError::internal)?;
    mac.update(b"devpocket email verification\0");
    mac.update(user.id.as_bytes());
    mac.update(code.as_bytes());
    Ok(hex::encode(mac.finalize().into_bytes()))
}

fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// Equal, in time that does not depend on where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Mails `user` a new verification code for their address, unless one went out
/// less than `min_gap` ago (then: how long to wait).
pub async fn send_verification(
    state: &AppState,
    user: &User,
    min_gap: Duration,
    origin: &Origin,
) -> Result<Result<(), Duration>, ApiError> {
    let code = format!("{:06}", rand::random_range(0..1_000_000u32));
    let mac = code_mac(state, user, &code)?;
    let minutes = (CODE_VALID_FOR.as_secs() / 60).to_string();
    let mail = Kind::Verification.render(
        &user.email,
        &[
            ("username", &user.username),
            ("email", &user.email),
            ("code", &code),
            ("minutes", &minutes),
        ],
    );
    let mut conn = state.pool.get().await?;
    let stored = recovery::new_verification_code(
        &mut conn,
        user.id,
        &user.email,
        &mac,
        CODE_VALID_FOR,
        min_gap,
        &mail,
    )
    .await?;
    drop(conn);
    match stored {
        Ok(()) => {
            state.outbox.wake();
            state.audit.record(
                origin,
                Event::new(Action::VerificationSent, Outcome::Success).by(user.id),
            );
            Ok(Ok(()))
        }
        Err(last) => {
            let next = last + chrono::Duration::from_std(min_gap).unwrap_or_default();
            Ok(Err((next - Utc::now())
                .to_std()
                .unwrap_or(Duration::from_secs(1))))
        }
    }
}

/// The first code of a new account or a new address. The change is made whatever
/// happens to it (another can be asked for), so a failure is logged, not answered.
pub async fn send_first_code(state: &AppState, user: &User, origin: &Origin) {
    if let Err(e) = send_verification(state, user, Duration::ZERO, origin).await {
        tracing::warn!(user_id = %user.id, error = %e, "the first verification code could not be queued");
    }
}

/// `POST /auth/resend-verification`.
pub async fn resend_verification(
    state: &AppState,
    caller: &AuthUser,
    origin: &Origin,
) -> Result<(), ApiError> {
    if caller.user.is_verified {
        return Err(ApiError::State {
            code: "already_verified",
            detail: format!("{} is already verified.", caller.user.email),
            context: json!({}),
        });
    }
    match send_verification(state, &caller.user, RESEND_EVERY, origin).await? {
        Ok(()) => Ok(()),
        Err(wait) => Err(ApiError::RateLimited {
            detail: format!(
                "A code was sent less than a minute ago; check your mail, or ask again in {} s.",
                wait.as_secs().max(1)
            ),
            status: crate::ratelimit::Status {
                limit: 1,
                remaining: 0,
                reset: wait.max(Duration::from_secs(1)),
            },
        }),
    }
}

/// `POST /auth/verify-email {token}`: the code the user typed.
pub async fn verify_email(
    state: &AppState,
    caller: &AuthUser,
    code: &str,
    origin: &Origin,
) -> Result<User, ApiError> {
    let code: String = code.chars().filter(|c| !c.is_whitespace()).collect();
    if code.len() != 6 || !code.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::validation(
            "token",
            "must be the 6-digit code from the verification mail",
        ));
    }
    if caller.user.is_verified {
        return Ok(caller.user.clone());
    }
    let mac = code_mac(state, &caller.user, &code)?;
    let mut conn = state.pool.get().await?;
    let checked = recovery::check_verification_code(
        &mut conn,
        caller.user.id,
        |stored| same(stored, &mac),
        CODE_TRIES,
    )
    .await?;
    let failed = |reason: &str| {
        Event::new(Action::VerificationFailed, Outcome::Failure)
            .by(caller.user.id)
            .details(json!({ "reason": reason }))
    };
    match checked {
        CodeCheck::Verified(user) => {
            crate::listener::publish(state, Invalidation::User(user.id));
            state.audit.record(
                origin,
                Event::new(Action::EmailVerified, Outcome::Success)
                    .by(user.id)
                    .details(json!({ "email": user.email })),
            );
            Ok(*user)
        }
        CodeCheck::Wrong { tries_left } => {
            state.audit.record(origin, failed("wrong_code"));
            Err(ApiError::BadRequest {
                code: "verification_code_wrong",
                detail: if tries_left > 0 {
                    format!(
                        "That code is not right; {tries_left} {} left.",
                        if tries_left == 1 { "try" } else { "tries" }
                    )
                } else {
                    "That code is not right, and it was the last try: ask for a new code.".into()
                },
            })
        }
        CodeCheck::NeedNewCode(why) => {
            state.audit.record(origin, failed(why));
            Err(ApiError::BadRequest {
                code: "verification_code_expired",
                detail: format!("No code can be checked now ({why}): ask for a new code."),
            })
        }
    }
}

/// `POST /auth/forgot-password {email}`: does its work after the answer, so that
/// the answer is the same, in the same time, whether the address has an account.
pub fn forgot_password(state: actix_web::web::Data<AppState>, email: String, origin: Origin) {
    actix_web::rt::spawn(async move {
        if let Err(e) = mail_reset(&state, &email, &origin).await {
            tracing::warn!(error = %e, "a password-reset request could not be handled");
        }
    });
}

async fn mail_reset(state: &AppState, email: &str, origin: &Origin) -> Result<(), ApiError> {
    let mut conn = state.pool.get().await?;
    let requested = |outcome, reason: &str| {
        Event::new(Action::PasswordResetRequested, outcome).details(json!({ "reason": reason }))
    };
    let user = match recovery::find_by_email(&mut conn, email.trim()).await? {
        Some(user) if user.is_active => user,
        Some(user) => {
            state.audit.record(
                origin,
                requested(Outcome::Denied, "deactivated").by(user.id),
            );
            return Ok(());
        }
        None => {
            let attempted: String = email.trim().chars().take(254).collect();
            state.audit.record(
                origin,
                requested(Outcome::Failure, "unknown_address")
                    .details(json!({ "reason": "unknown_address", "email": attempted })),
            );
            return Ok(());
        }
    };
    if recovery::recent_resets(&mut conn, user.id, Duration::from_secs(3600)).await?
        >= RESETS_PER_HOUR
    {
        state
            .audit
            .record(origin, requested(Outcome::Denied, "too_many").by(user.id));
        return Ok(());
    }
    let token = hex::encode(rand::random::<[u8; 32]>());
    let mut link = state.settings.mail.reset_url.clone();
    link.query_pairs_mut().append_pair("token", &token);
    let minutes = (RESET_VALID_FOR.as_secs() / 60).to_string();
    let mail = Kind::PasswordReset.render(
        &user.email,
        &[
            ("username", &user.username),
            ("link", link.as_str()),
            ("token", &token),
            ("minutes", &minutes),
        ],
    );
    recovery::new_reset_token(
        &mut conn,
        user.id,
        &token_hash(&token),
        RESET_VALID_FOR,
        &mail,
    )
    .await?;
    state.outbox.wake();
    state
        .audit
        .record(origin, requested(Outcome::Success, "mailed").by(user.id));
    Ok(())
}

async fn new_hash(state: &AppState, password: String) -> Result<String, ApiError> {
    state
        .hasher
        .hash(password)
        .await
        .map_err(ApiError::internal)
}

async fn is_password_of(state: &AppState, user: &User, password: String) -> Result<bool, ApiError> {
    state
        .hasher
        .verify(password, Some(user.password_hash.clone()))
        .await
        .map_err(ApiError::internal)
}

fn new_password_errors(password: &str) -> Result<(), ApiError> {
    let mut errors = ValidationErrors::default();
    validation::password(password, &mut errors);
    // Named as the request names it.
    if let Some(messages) = errors.fields.remove("password") {
        errors.fields.insert("new_password".into(), messages);
    }
    errors.into_result()
}

/// Tells the account's owner their password changed (and how to react if it was
/// not them). The change is made whatever happens to this mail: a failure to queue
/// it is logged, not answered.
async fn mail_password_changed(state: &AppState, user: &User, how: &str, origin: &Origin) {
    let time = Utc::now().format("%Y-%m-%d %H:%M UTC").to_string();
    let address = origin
        .ip
        .clone()
        .unwrap_or_else(|| "an unknown address".into());
    let mail = Kind::PasswordChanged.render(
        &user.email,
        &[
            ("username", &user.username),
            ("how", how),
            ("time", &time),
            ("address", &address),
        ],
    );
    let queued = match state.pool.get().await {
        Ok(mut conn) => outbox::enqueue(&mut conn, &mail)
            .await
            .map_err(ApiError::from),
        Err(e) => Err(e.into()),
    };
    match queued {
        Ok(()) => state.outbox.wake(),
        Err(e) => {
            tracing::warn!(user_id = %user.id, error = %e, "the password-changed notice could not be queued");
        }
    }
}

/// `POST /auth/reset-password {token, new_password}`.
pub async fn reset_password(
    state: &AppState,
    token: &str,
    new_password: String,
    origin: &Origin,
) -> Result<(), ApiError> {
    let token = token.trim();
    if token.is_empty() {
        return Err(ApiError::validation(
            "token",
            "must be the code from the password-reset mail",
        ));
    }
    new_password_errors(&new_password)?;
    let hash = new_hash(state, new_password).await?;
    let mut conn = state.pool.get().await?;
    let Some((user, revoked)) =
        recovery::reset_password(&mut conn, &token_hash(token), &hash).await?
    else {
        state.audit.record(
            origin,
            Event::new(Action::PasswordReset, Outcome::Failure)
                .details(json!({ "reason": "invalid_token" })),
        );
        return Err(ApiError::BadRequest {
            code: "reset_token_invalid",
            detail: "This reset code is not valid (already used, expired, or mistyped): ask for a new one with \"Forgot password?\".".into(),
        });
    };
    drop(conn);
    crate::listener::publish(state, Invalidation::User(user.id));
    state
        .ratelimits
        .signed_up(&state.pool, user.id, super::address(origin))
        .await;
    state.audit.record(
        origin,
        Event::new(Action::PasswordReset, Outcome::Success)
            .by(user.id)
            .details(json!({ "sessions_revoked": revoked })),
    );
    mail_password_changed(state, &user, "reset", origin).await;
    Ok(())
}

/// `POST /auth/change-password`: the current session stays; every other ends.
pub async fn change_password(
    state: &AppState,
    caller: &AuthUser,
    current: String,
    new_password: String,
    origin: &Origin,
) -> Result<(), ApiError> {
    new_password_errors(&new_password)?;
    if !is_password_of(state, &caller.user, current).await? {
        state.audit.record(
            origin,
            Event::new(Action::PasswordChanged, Outcome::Failure)
                .by(caller.user.id)
                .details(json!({ "reason": "wrong_current_password" })),
        );
        // Not a 401: the app signs out on any 401.
        return Err(ApiError::BadRequest {
            code: "wrong_password",
            detail: "The current password is not right.".into(),
        });
    }
    let hash = new_hash(state, new_password).await?;
    let mut conn = state.pool.get().await?;
    let revoked =
        recovery::change_password(&mut conn, caller.user.id, caller.session_id, &hash).await?;
    drop(conn);
    crate::listener::publish(state, Invalidation::User(caller.user.id));
    state.audit.record(
        origin,
        Event::new(Action::PasswordChanged, Outcome::Success)
            .by(caller.user.id)
            .details(json!({ "sessions_revoked": revoked })),
    );
    mail_password_changed(state, &caller.user, "changed", origin).await;
    Ok(())
}

/// Refuses what `DEVPOCKET_UNVERIFIED_MAY_NOT` holds back from an account whose
/// address is not verified yet.
pub fn require_verified(state: &AppState, user: &User, what: Restricted) -> Result<(), ApiError> {
    if user.is_verified || !state.settings.mail.restricts(what) {
        return Ok(());
    }
    Err(ApiError::Refused {
        code: "email_not_verified",
        detail: format!(
            "Verify your e-mail address first (the code is in the mail we sent to {}) to {}.",
            user.email,
            what.describe()
        ),
    })
}

/// `PUT /users/me`: `full_name`, `username` and `email`; other members are
/// ignored. A new address is unverified until its code is typed.
pub async fn update_profile(
    state: &AppState,
    caller: &AuthUser,
    body: &Map<String, Value>,
    origin: &Origin,
) -> Result<User, ApiError> {
    let mut errors = ValidationErrors::default();
    let text = |name: &str, errors: &mut ValidationErrors| -> Option<Option<String>> {
        match body.get(name) {
            None => None,
            Some(Value::Null) => Some(None),
            Some(Value::String(s)) => Some(Some(s.trim().to_owned())),
            Some(_) => {
                errors.add(name, "must be a string or null");
                None
            }
        }
    };
    let username = text("username", &mut errors);
    let email = text("email", &mut errors);
    let full_name = text("full_name", &mut errors);
    let user = &caller.user;
    let mut changes = ProfileChanges::default();
    // `null` keeps a username or an address (an account always has both).
    if let Some(Some(name)) = username
        && name != user.username
    {
        validation::username(&name, &mut errors);
        changes.username = Some(name);
    }
    if let Some(Some(address)) = email
        && address != user.email
    {
        validation::email(&address, &mut errors);
        if !address.eq_ignore_ascii_case(&user.email) {
            changes.is_verified = Some(false);
        }
        changes.email = Some(address);
    }
    if let Some(name) = full_name {
        let name = name.filter(|n| !n.is_empty());
        if let Some(n) = &name {
            validation::full_name(n, &mut errors);
        }
        if name != user.full_name {
            changes.full_name = Some(name);
        }
    }
    errors.into_result()?;
    if changes.is_verified == Some(false) {
        require_verified(state, user, Restricted::ChangeEmail)?;
    }
    let fields: Vec<&str> = [
        changes.username.as_ref().map(|_| "username"),
        changes.email.as_ref().map(|_| "email"),
        changes.full_name.as_ref().map(|_| "full_name"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if fields.is_empty() {
        return Ok(user.clone());
    }
    let mut conn = state.pool.get().await?;
    let updated = match recovery::update_profile(&mut conn, user.id, &changes).await? {
        Ok(updated) => updated,
        Err(Duplicate::Username) => {
            return Err(ApiError::Conflict {
                detail: format!(
                    "The username '{}' is already taken.",
                    changes.username.unwrap_or_default()
                ),
                context: json!({ "field": "username" }),
            });
        }
        Err(Duplicate::Email) => {
            return Err(ApiError::Conflict {
                detail: "An account with this e-mail address already exists.".into(),
                context: json!({ "field": "email" }),
            });
        }
    };
    drop(conn);
    crate::listener::publish(state, Invalidation::User(user.id));
    state.audit.record(
        origin,
        Event::new(Action::ProfileUpdate, Outcome::Success)
            .on(ResourceType::User, Some(user.id))
            .by(user.id)
            .details(json!({ "fields": fields })),
    );
    if changes.is_verified == Some(false) {
        // A code for the new address; the old one's code no longer verifies.
        send_first_code(state, &updated, origin).await;
    }
    Ok(updated)
}

/// `DELETE /users/me {password}`: every environment is deleted (machines,
/// droplets, volumes), every session ends, and the account is kept only as a
/// tombstone for the audit log.
pub async fn delete_account(
    state: &AppState,
    caller: &AuthUser,
    password: String,
    origin: &Origin,
) -> Result<usize, ApiError> {
    let user = &caller.user;
    if !is_password_of(state, user, password).await? {
        state.audit.record(
            origin,
            Event::new(Action::AccountDelete, Outcome::Failure)
                .on(ResourceType::User, Some(user.id))
                .by(user.id)
                .details(json!({ "reason": "wrong_password" })),
        );
        return Err(ApiError::BadRequest {
            code: "wrong_password",
            detail: "The password is not right; the account was not deleted.".into(),
        });
    }
    // Environments first, each durably marked for deletion by its actor: a crash
    // after this leaves an account whose delete can be asked again, never a
    // deleted account with machines still running.
    let mut conn = state.pool.get().await?;
    let environments = crate::db::environments::list_owned(&mut conn, user.id).await?;
    drop(conn);
    let mut deleted = 0;
    for (environment, _) in &environments {
        let Some(actor) = state.actors.environment(user.id, environment.id).await? else {
            continue;
        };
        let delete = Instruction::Lifecycle {
            command: Command::Delete,
        };
        match remote::order(&state.actors.deps, &actor, delete).await {
            Ok(_) => deleted += 1,
            Err(EnvError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
        state.audit.record(
            origin,
            Event::new(Action::EnvironmentDelete, Outcome::Success)
                .on(ResourceType::Environment, Some(environment.id))
                .by(user.id)
                .details(json!({ "reason": "account_deleted" })),
        );
    }
    let mut conn = state.pool.get().await?;
    let Some(servers) = recovery::delete_account(&mut conn, user.id).await? else {
        return Err(ApiError::Unauthorized(
            "This account has been deleted.".into(),
        ));
    };
    drop(conn);
    crate::listener::publish(state, Invalidation::User(user.id));
    for server in &servers {
        if let Err(e) = state.actors.forget_server(user.id, *server).await {
            tracing::warn!(server_id = %server, error = %e, "a deleted account's server actor could not be stopped; it stops when idle");
        }
    }
    state.audit.record(
        origin,
        Event::new(Action::AccountDelete, Outcome::Success)
            .on(ResourceType::User, Some(user.id))
            .by(user.id)
            .details(json!({
                "username": user.username,
                "environments_deleted": deleted,
                "servers_removed": servers.len(),
            })),
    );
    Ok(deleted)
}
