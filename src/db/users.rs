//! Users and their login-failure counters.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{Integer, Interval, Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::{login_failures, users};
use crate::plans::Plan;

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = users, check_for_backend(diesel::pg::Pg))]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub email: String,
    pub password_hash: String,
    pub full_name: Option<String>,
    pub subscription_plan: Plan,
    pub is_active: bool,
    pub is_verified: bool,
    pub last_login: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewUser<'a> {
    pub id: Uuid,
    pub username: &'a str,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub full_name: Option<&'a str>,
    pub subscription_plan: Plan,
}

define_sql_function!(fn lower(x: Text) -> Text);

/// Which unique field a conflicting insert collided with.
#[derive(Debug, PartialEq, Eq)]
pub enum Duplicate {
    Username,
    Email,
}

pub enum InsertOutcome {
    Created(Box<User>),
    Duplicate(Duplicate),
}

pub async fn insert(conn: &mut AsyncPgConnection, new: &NewUser<'_>) -> QueryResult<InsertOutcome> {
    use diesel::result::{DatabaseErrorKind, Error};
    match diesel::insert_into(users::table)
        .values(new)
        .returning(User::as_returning())
        .get_result(conn)
        .await
    {
        Ok(user) => Ok(InsertOutcome::Created(Box::new(user))),
        Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)) => {
            let duplicate = if info.constraint_name() == Some("users_email_key") {
                Duplicate::Email
            } else {
                Duplicate::Username
            };
            Ok(InsertOutcome::Duplicate(duplicate))
        }
        Err(e) => Err(e),
    }
}

pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<User>> {
    users::table
        .find(id)
        .select(User::as_select())
        .first(conn)
        .await
        .optional()
}

/// Looks a user up by username or e-mail address, ignoring case.
pub async fn find_by_login(conn: &mut AsyncPgConnection, login: &str) -> QueryResult<Option<User>> {
    let login = login.to_lowercase();
    users::table
        .filter(
            lower(users::username)
                .eq(&login)
                .or(lower(users::email).eq(&login)),
        )
        .filter(users::deleted_at.is_null())
        .select(User::as_select())
        .first(conn)
        .await
        .optional()
}

/// Stamps a successful sign-in and returns the user as now stored.
pub async fn record_login(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<User> {
    diesel::update(users::table.find(id))
        .set(users::last_login.eq(diesel::dsl::now))
        .returning(User::as_returning())
        .get_result(conn)
        .await
}

/// The lock on an (account, client address) pair, if one is in force.
pub async fn lock_in_force(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    client_ip: &str,
) -> QueryResult<Option<DateTime<Utc>>> {
    login_failures::table
        .find((user_id, client_ip))
        .select(login_failures::locked_until)
        .first::<Option<DateTime<Utc>>>(conn)
        .await
        .optional()
        .map(|until| until.flatten().filter(|t| *t > Utc::now()))
}

#[derive(QueryableByName)]
struct FailureRow {
    #[diesel(sql_type = Integer)]
    failures: i32,
    #[diesel(sql_type = Nullable<Timestamptz>)]
    locked_until: Option<DateTime<Utc>>,
}

/// Counts one more wrong password for (account, client address). Reaching
/// `threshold` consecutive failures locks the pair for `lock_for`; a failure after
/// an expired lock starts counting again from one. Returns the lock, if one starts.
pub async fn record_failure(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    client_ip: &str,
    threshold: u32,
    lock_for: std::time::Duration,
) -> QueryResult<Option<DateTime<Utc>>> {
    let threshold = i32::try_from(threshold).unwrap_or(i32::MAX);
    let lock_for = super::interval(lock_for);
    let row: FailureRow = diesel::sql_query(
        "INSERT INTO login_failures AS f (user_id, client_ip, failures, locked_until, updated_at) \
         VALUES ($1, $2, 1, CASE WHEN 1 >= $3 THEN now() + $4 END, now()) \
         ON CONFLICT (user_id, client_ip) DO UPDATE SET \
           failures = CASE WHEN f.locked_until IS NOT NULL AND f.locked_until <= now() THEN 1 \
                           ELSE f.failures + 1 END, \
           locked_until = CASE \
             WHEN f.locked_until IS NOT NULL AND f.locked_until > now() THEN f.locked_until \
             WHEN (CASE WHEN f.locked_until IS NOT NULL AND f.locked_until <= now() THEN 1 \
                        ELSE f.failures + 1 END) >= $3 THEN now() + $4 \
             ELSE NULL END, \
           updated_at = now() \
         RETURNING f.failures, f.locked_until",
    )
    .bind::<SqlUuid, _>(user_id)
    .bind::<Text, _>(client_ip)
    .bind::<Integer, _>(threshold)
    .bind::<Interval, _>(lock_for)
    .get_result(conn)
    .await?;
    tracing::debug!(failures = row.failures, "login failure recorded");
    Ok(row.locked_until)
}

/// A successful login forgets earlier failures from that address.
pub async fn clear_failures(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    client_ip: &str,
) -> QueryResult<()> {
    diesel::delete(login_failures::table.find((user_id, client_ip)))
        .execute(conn)
        .await
        .map(drop)
}

/// One page of users, oldest first, whose username or e-mail contains `search`
/// (ignoring case), and how many match in all.
pub async fn list(
    conn: &mut AsyncPgConnection,
    search: Option<&str>,
    limit: i64,
    offset: i64,
) -> QueryResult<(Vec<User>, i64)> {
    let matching = || {
        let mut query = users::table
            .filter(users::deleted_at.is_null())
            .into_boxed();
        if let Some(search) = search {
            // `%`, `_` and `\` in the search are literal characters.
            let pattern = format!(
                "%{}%",
                search
                    .replace('\\', "\\\\")
                    .replace('%', "\\%")
                    .replace('_', "\\_")
            );
            query = query.filter(
                users::username
                    .ilike(pattern.clone())
                    .or(users::email.ilike(pattern)),
            );
        }
        query
    };
    let total = matching().count().get_result(conn).await?;
    let page = matching()
        .order((users::created_at.asc(), users::id.asc()))
        .limit(limit)
        .offset(offset)
        .select(User::as_select())
        .load(conn)
        .await?;
    Ok((page, total))
}

/// What an administrator may change on an account; `None` leaves it as it is.
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = users)]
pub struct AccountChanges {
    pub subscription_plan: Option<Plan>,
    pub is_active: Option<bool>,
}

/// An account before and after an administrator's change.
pub struct AccountUpdate {
    pub before: User,
    pub after: User,
    /// Sign-in sessions ended because the account was deactivated.
    pub sessions_revoked: usize,
}

/// Applies `changes` to user `id` (`None` when there is no such user). Setting
/// `is_active: false` also revokes every session, in the same transaction, so the
/// account's tokens stop working at once and stay dead after a reactivation.
pub async fn update_account(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    changes: &AccountChanges,
) -> QueryResult<Option<AccountUpdate>> {
    use diesel_async::AsyncConnection as _;
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        let Some(before) = users::table
            .find(id)
            .filter(users::deleted_at.is_null())
            .for_update()
            .select(User::as_select())
            .first(&mut *conn)
            .await
            .optional()?
        else {
            return Ok(None);
        };
        let after = diesel::update(users::table.find(id))
            .set((changes, users::updated_at.eq(diesel::dsl::now)))
            .returning(User::as_returning())
            .get_result(&mut *conn)
            .await?;
        let sessions_revoked = if changes.is_active == Some(false) {
            super::sessions::revoke_all(conn, id, "deactivated").await?
        } else {
            0
        };
        Ok(Some(AccountUpdate {
            before,
            after,
            sessions_revoked,
        }))
    })
    .await
}
