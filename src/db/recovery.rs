//! What gets a person back into their account, and changes it: e-mail verification
//! codes, password-reset tokens, password and profile changes, account deletion.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Interval, Text, Uuid as SqlUuid};
use diesel_async::{AsyncConnection as _, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::interval;

use super::outbox::{self, NewMail};
use super::schema::{email_verifications, login_failures, password_resets, users};
use super::users::{Duplicate, User};
use crate::db::sessions;

define_sql_function!(fn lower(x: Text) -> Text);

/// Stores a new verification code for `user_id` and `email` (replacing any earlier
/// one, and its tries) and queues `mail` with it, unless the last one was sent less
/// than `min_gap` ago: then nothing changes and the answer is when that one was sent.
pub async fn new_verification_code(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    email: &str,
    code_hash: &str,
    valid_for: std::time::Duration,
    min_gap: std::time::Duration,
    mail: &NewMail,
) -> QueryResult<Result<(), DateTime<Utc>>> {
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
    let stored = diesel::sql_query(
        "INSERT INTO email_verifications AS v (user_id, email, code_hash, attempts, sent_at, expires_at) \
         VALUES ($1, $2, $3, 0, now(), now() + $4) \
         ON CONFLICT (user_id) DO UPDATE SET email = $2, code_hash = $3, attempts = 0, \
           sent_at = now(), expires_at = now() + $4 \
         WHERE v.sent_at <= now() - $5",
    )
    .bind::<SqlUuid, _>(user_id)
    .bind::<Text, _>(email)
    .bind::<Text, _>(code_hash)
    .bind::<Interval, _>(interval(valid_for))
    .bind::<Interval, _>(interval(min_gap))
    .execute(&mut *conn)
    .await?;
    if stored > 0 {
        outbox::enqueue(conn, mail).await?;
        return Ok(Ok(()));
    }
    let last: DateTime<Utc> = email_verifications::table
        .find(user_id)
        .select(email_verifications::sent_at)
        .first(&mut *conn)
        .await?;
    Ok(Err(last))
    })
    .await
}

/// How a typed verification code was taken.
#[derive(Debug)]
pub enum CodeCheck {
    Verified(Box<User>),
    /// Wrong; this many tries are left for this code.
    Wrong {
        tries_left: i32,
    },
    /// No live code: none was sent, it expired, its tries are used up, or it was
    /// sent to an address the account no longer has.
    NeedNewCode(&'static str),
}

/// Checks a typed code (as `hash(code)`, compared in constant time) against the
/// account's live one. Right: the account is verified and the code spent. Wrong:
/// one of `max_tries` is spent.
pub async fn check_verification_code(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    matches: impl FnOnce(&str) -> bool + Send,
    max_tries: i32,
) -> QueryResult<CodeCheck> {
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        let row: Option<(String, String, i32, DateTime<Utc>)> = email_verifications::table
            .find(user_id)
            .for_update()
            .select((
                email_verifications::email,
                email_verifications::code_hash,
                email_verifications::attempts,
                email_verifications::expires_at,
            ))
            .first(&mut *conn)
            .await
            .optional()?;
        let Some((email, code_hash, attempts, expires_at)) = row else {
            return Ok(CodeCheck::NeedNewCode(
                "no code is waiting for this account",
            ));
        };
        if expires_at <= Utc::now() {
            return Ok(CodeCheck::NeedNewCode("the code has expired"));
        }
        if attempts >= max_tries {
            return Ok(CodeCheck::NeedNewCode("the code was tried too many times"));
        }
        if !matches(&code_hash) {
            diesel::update(email_verifications::table.find(user_id))
                .set(email_verifications::attempts.eq(attempts + 1))
                .execute(&mut *conn)
                .await?;
            return Ok(CodeCheck::Wrong {
                tries_left: max_tries - attempts - 1,
            });
        }
        diesel::delete(email_verifications::table.find(user_id))
            .execute(&mut *conn)
            .await?;
        let verified = diesel::update(
            users::table
                .find(user_id)
                .filter(lower(users::email).eq(email.to_lowercase())),
        )
        .set((
            users::is_verified.eq(true),
            users::updated_at.eq(diesel::dsl::now),
        ))
        .returning(User::as_returning())
        .get_result(&mut *conn)
        .await
        .optional()?;
        Ok(match verified {
            Some(user) => CodeCheck::Verified(Box::new(user)),
            None => {
                CodeCheck::NeedNewCode("the code was sent to an address the account no longer has")
            }
        })
    })
    .await
}

/// A live account by e-mail address, ignoring case.
pub async fn find_by_email(conn: &mut AsyncPgConnection, email: &str) -> QueryResult<Option<User>> {
    users::table
        .filter(lower(users::email).eq(email.to_lowercase()))
        .filter(users::deleted_at.is_null())
        .select(User::as_select())
        .first(conn)
        .await
        .optional()
}

/// Reset tokens asked for an account in the last `window`.
pub async fn recent_resets(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    window: std::time::Duration,
) -> QueryResult<i64> {
    let since = Utc::now() - chrono::Duration::from_std(window).unwrap_or_default();
    password_resets::table
        .filter(password_resets::user_id.eq(user_id))
        .filter(password_resets::created_at.gt(since))
        .count()
        .get_result(conn)
        .await
}

/// Stores a reset token (its hash) and queues the `mail` that carries it.
pub async fn new_reset_token(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    token_hash: &str,
    valid_for: std::time::Duration,
    mail: &NewMail,
) -> QueryResult<()> {
    let expires_at = Utc::now() + chrono::Duration::from_std(valid_for).unwrap_or_default();
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        diesel::insert_into(password_resets::table)
            .values((
                password_resets::token_hash.eq(token_hash),
                password_resets::user_id.eq(user_id),
                password_resets::expires_at.eq(expires_at),
            ))
            .execute(&mut *conn)
            .await?;
        outbox::enqueue(conn, mail).await
    })
    .await
}

/// Spends a live reset token and, in the same transaction, sets the account's new
/// password hash, spends its other reset tokens, clears its lockouts and signs out
/// every session. `None`: no such live token (unknown, used, expired, or its
/// account is gone or deactivated); nothing changed.
pub async fn reset_password(
    conn: &mut AsyncPgConnection,
    token_hash: &str,
    new_hash: &str,
) -> QueryResult<Option<(User, usize)>> {
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        let Some(user_id) = diesel::update(
            password_resets::table
                .filter(password_resets::token_hash.eq(token_hash))
                .filter(password_resets::used_at.is_null())
                .filter(password_resets::expires_at.gt(diesel::dsl::now)),
        )
        .set(password_resets::used_at.eq(diesel::dsl::now))
        .returning(password_resets::user_id)
        .get_result::<Uuid>(&mut *conn)
        .await
        .optional()?
        else {
            return Ok(None);
        };
        let Some(user) = diesel::update(
            users::table
                .find(user_id)
                .filter(users::deleted_at.is_null())
                .filter(users::is_active.eq(true)),
        )
        .set((
            users::password_hash.eq(new_hash),
            users::updated_at.eq(diesel::dsl::now),
        ))
        .returning(User::as_returning())
        .get_result(&mut *conn)
        .await
        .optional()?
        else {
            return Ok(None);
        };
        diesel::update(
            password_resets::table
                .filter(password_resets::user_id.eq(user_id))
                .filter(password_resets::used_at.is_null()),
        )
        .set(password_resets::used_at.eq(diesel::dsl::now))
        .execute(&mut *conn)
        .await?;
        diesel::delete(login_failures::table.filter(login_failures::user_id.eq(user_id)))
            .execute(&mut *conn)
            .await?;
        let revoked = sessions::revoke_all(conn, user_id, "password_reset").await?;
        Ok(Some((user, revoked)))
    })
    .await
}

/// Sets a new password hash and signs out every session but `keep`.
pub async fn change_password(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    keep: Uuid,
    new_hash: &str,
) -> QueryResult<usize> {
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        diesel::update(users::table.find(user_id))
            .set((
                users::password_hash.eq(new_hash),
                users::updated_at.eq(diesel::dsl::now),
            ))
            .execute(&mut *conn)
            .await?;
        sessions::revoke_all_but(conn, user_id, Some(keep), "password_changed").await
    })
    .await
}

/// What a user may change on their own profile; `None` leaves it as it is.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = users)]
pub struct ProfileChanges {
    pub username: Option<String>,
    pub email: Option<String>,
    /// `Some(None)` clears it.
    pub full_name: Option<Option<String>>,
    /// Set to false with a new e-mail address.
    pub is_verified: Option<bool>,
}

/// Applies profile changes; a taken username or address is reported as such.
pub async fn update_profile(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    changes: &ProfileChanges,
) -> QueryResult<Result<User, Duplicate>> {
    use diesel::result::{DatabaseErrorKind, Error};
    match diesel::update(
        users::table
            .find(user_id)
            .filter(users::deleted_at.is_null()),
    )
    .set((changes, users::updated_at.eq(diesel::dsl::now)))
    .returning(User::as_returning())
    .get_result(conn)
    .await
    {
        Ok(user) => Ok(Ok(user)),
        Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)) => {
            Ok(Err(if info.constraint_name() == Some("users_email_key") {
                Duplicate::Email
            } else {
                Duplicate::Username
            }))
        }
        Err(e) => Err(e),
    }
}

/// Marks the account deleted (a tombstone its audit entries keep pointing at:
/// username kept, e-mail address, name and password cleared, deactivated), drops
/// its codes and tokens, its registered servers (their keys), projects and apps
/// (nothing on those servers is touched), and signs out every session, in one
/// transaction. Its environments are left to their actors to delete. Answers the
/// servers that were dropped, or `None` when it was already deleted.
pub async fn delete_account(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> QueryResult<Option<Vec<Uuid>>> {
    use super::schema::{apps, projects, servers};
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        let marked = diesel::update(
            users::table
                .find(user_id)
                .filter(users::deleted_at.is_null()),
        )
        .set((
            users::deleted_at.eq(diesel::dsl::now),
            users::is_active.eq(false),
            users::is_verified.eq(false),
            users::email.eq(""),
            users::full_name.eq(None::<String>),
            users::password_hash.eq(""),
            users::google_sub.eq(None::<String>),
            users::updated_at.eq(diesel::dsl::now),
        ))
        .execute(&mut *conn)
        .await?;
        if marked == 0 {
            return Ok(None);
        }
        diesel::delete(apps::table.filter(apps::user_id.eq(user_id)))
            .execute(&mut *conn)
            .await?;
        diesel::delete(projects::table.filter(projects::user_id.eq(user_id)))
            .execute(&mut *conn)
            .await?;
        let servers = diesel::delete(servers::table.filter(servers::user_id.eq(user_id)))
            .returning(servers::id)
            .get_results(&mut *conn)
            .await?;
        diesel::delete(email_verifications::table.find(user_id))
            .execute(&mut *conn)
            .await?;
        diesel::delete(password_resets::table.filter(password_resets::user_id.eq(user_id)))
            .execute(&mut *conn)
            .await?;
        sessions::revoke_all(conn, user_id, "account_deleted").await?;
        Ok(Some(servers))
    })
    .await
}
