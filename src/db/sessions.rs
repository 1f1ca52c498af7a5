//! Sign-in sessions (refresh-token families) and their refresh tokens.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{auth_sessions, refresh_tokens, users};
use super::users::User;

pub async fn create(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    user_id: Uuid,
    expires_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(auth_sessions::table)
        .values((
            auth_sessions::id.eq(id),
            auth_sessions::user_id.eq(user_id),
            auth_sessions::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await
        .map(drop)
}

pub async fn insert_refresh_token(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    session_id: Uuid,
    expires_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::insert_into(refresh_tokens::table)
        .values((
            refresh_tokens::id.eq(id),
            refresh_tokens::session_id.eq(session_id),
            refresh_tokens::expires_at.eq(expires_at),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// What presenting a refresh token did.
#[derive(Debug, PartialEq, Eq)]
pub enum Consumed {
    /// The token was live and is now used; its session may issue the next one.
    Fresh { session_id: Uuid },
    /// The token had been used before: its whole family is now revoked.
    Reused,
    /// Unknown, expired, or its session is revoked or expired.
    Invalid,
}

/// Marks a refresh token used, exactly once. A second presentation revokes the
/// token's session (reuse detection: someone else holds a copy).
pub async fn consume_refresh_token(
    conn: &mut AsyncPgConnection,
    jti: Uuid,
) -> QueryResult<Consumed> {
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        let fresh: Option<Uuid> = diesel::update(
            refresh_tokens::table
                .filter(refresh_tokens::id.eq(jti))
                .filter(refresh_tokens::used_at.is_null())
                .filter(refresh_tokens::expires_at.gt(diesel::dsl::now)),
        )
        .set(refresh_tokens::used_at.eq(diesel::dsl::now))
        .returning(refresh_tokens::session_id)
        .get_result(&mut *conn)
        .await
        .optional()?;
        if let Some(session_id) = fresh {
            let live = session_is_live(conn, session_id).await?;
            return Ok(if live {
                Consumed::Fresh { session_id }
            } else {
                Consumed::Invalid
            });
        }
        let used: Option<(Uuid, Option<DateTime<Utc>>)> = refresh_tokens::table
            .find(jti)
            .select((refresh_tokens::session_id, refresh_tokens::used_at))
            .first(conn)
            .await
            .optional()?;
        match used {
            Some((session_id, Some(_))) => {
                revoke(conn, session_id, "refresh_token_reuse").await?;
                Ok(Consumed::Reused)
            }
            _ => Ok(Consumed::Invalid),
        }
    })
    .await
}

async fn session_is_live(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    diesel::select(diesel::dsl::exists(
        auth_sessions::table
            .filter(auth_sessions::id.eq(id))
            .filter(auth_sessions::revoked_at.is_null())
            .filter(auth_sessions::expires_at.gt(diesel::dsl::now)),
    ))
    .get_result(conn)
    .await
}

pub async fn extend(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    expires_at: DateTime<Utc>,
) -> QueryResult<()> {
    diesel::update(auth_sessions::table.find(id))
        .set(auth_sessions::expires_at.eq(expires_at))
        .execute(conn)
        .await
        .map(drop)
}

/// Revokes a session: its refresh tokens and access tokens stop working at once.
pub async fn revoke(conn: &mut AsyncPgConnection, id: Uuid, reason: &str) -> QueryResult<()> {
    diesel::update(
        auth_sessions::table
            .filter(auth_sessions::id.eq(id))
            .filter(auth_sessions::revoked_at.is_null()),
    )
    .set((
        auth_sessions::revoked_at.eq(diesel::dsl::now),
        auth_sessions::revoked_reason.eq(reason),
    ))
    .execute(conn)
    .await
    .map(drop)
}

/// The active user behind a live session, or `None` when the session was revoked,
/// has expired, belongs to someone else, or the account is deactivated.
pub async fn active_user(
    conn: &mut AsyncPgConnection,
    session_id: Uuid,
    user_id: Uuid,
) -> QueryResult<Option<User>> {
    auth_sessions::table
        .inner_join(users::table)
        .filter(auth_sessions::id.eq(session_id))
        .filter(auth_sessions::user_id.eq(user_id))
        .filter(auth_sessions::revoked_at.is_null())
        .filter(auth_sessions::expires_at.gt(diesel::dsl::now))
        .filter(users::is_active.eq(true))
        .select(User::as_select())
        .first(conn)
        .await
        .optional()
}

/// Revokes every live session of a user; returns how many there were.
pub async fn revoke_all(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    reason: &str,
) -> QueryResult<usize> {
    revoke_all_but(conn, user_id, None, reason).await
}

/// Revokes every live session of a user but `keep`; returns how many there were.
pub async fn revoke_all_but(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    keep: Option<Uuid>,
    reason: &str,
) -> QueryResult<usize> {
    // No session has the nil id (they are random): `None` keeps none.
    let keep = keep.unwrap_or(Uuid::nil());
    diesel::update(
        auth_sessions::table
            .filter(auth_sessions::user_id.eq(user_id))
            .filter(auth_sessions::id.ne(keep))
            .filter(auth_sessions::revoked_at.is_null()),
    )
    .set((
        auth_sessions::revoked_at.eq(diesel::dsl::now),
        auth_sessions::revoked_reason.eq(reason),
    ))
    .execute(conn)
    .await
}
