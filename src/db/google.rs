//! Accounts' links to Google identities (`users.google_sub`): lookups, new accounts
//! made by Google sign-in, linking and unlinking. The column is read and written
//! only here, with explicit selects, so `User` stays what every other query loads.

use diesel::prelude::*;
use diesel::result::{DatabaseErrorKind, Error};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::schema::users;
use super::users::{Duplicate, User};
use crate::plans::Plan;

define_sql_function!(fn lower(x: diesel::sql_types::Text) -> diesel::sql_types::Text);

/// The unique index that keeps one account per Google subject.
const GOOGLE_SUB_KEY: &str = "users_google_sub_key";

/// The account linked to Google subject `sub`.
pub async fn find_by_sub(conn: &mut AsyncPgConnection, sub: &str) -> QueryResult<Option<User>> {
    users::table
        .filter(users::google_sub.eq(sub))
        .select(User::as_select())
        .first(conn)
        .await
        .optional()
}

/// The account with e-mail address `email` (ignoring case), and the Google subject
/// it is linked to, if any.
pub async fn find_by_email(
    conn: &mut AsyncPgConnection,
    email: &str,
) -> QueryResult<Option<(User, Option<String>)>> {
    users::table
        .filter(lower(users::email).eq(email.to_lowercase()))
        .select((User::as_select(), users::google_sub))
        .first(conn)
        .await
        .optional()
}

/// An account made by Google sign-in.
#[derive(Debug, Insertable)]
#[diesel(table_name = users)]
pub struct NewGoogleUser<'a> {
    pub id: Uuid,
    pub username: &'a str,
    pub email: &'a str,
    /// A hash no password matches: the account signs in with Google until its
    /// owner sets a password.
    pub password_hash: &'a str,
    pub full_name: Option<&'a str>,
    pub subscription_plan: Plan,
    pub is_verified: bool,
    pub google_sub: &'a str,
}

/// How inserting a Google account ended.
pub enum GoogleInsert {
    Created(Box<User>),
    /// The username or the e-mail address is taken.
    Duplicate(Duplicate),
    /// Another account was linked to the Google subject meanwhile.
    SubTaken,
}

pub async fn insert(
    conn: &mut AsyncPgConnection,
    new: &NewGoogleUser<'_>,
) -> QueryResult<GoogleInsert> {
    match diesel::insert_into(users::table)
        .values(new)
        .returning(User::as_returning())
        .get_result(conn)
        .await
    {
        Ok(user) => Ok(GoogleInsert::Created(Box::new(user))),
        Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)) => {
            Ok(match info.constraint_name() {
                Some(GOOGLE_SUB_KEY) => GoogleInsert::SubTaken,
                Some("users_email_key") => GoogleInsert::Duplicate(Duplicate::Email),
                _ => GoogleInsert::Duplicate(Duplicate::Username),
            })
        }
        Err(e) => Err(e),
    }
}

/// How linking an account to a Google subject ended.
pub enum Link {
    /// Linked (or it already was, to this subject): the account as now stored.
    Linked(Box<User>),
    /// Another account is linked to the subject.
    SubTaken,
    /// The account is linked to another subject (or is gone).
    AccountTaken,
}

/// Links account `id` to Google subject `sub`, unless either is linked elsewhere.
pub async fn link(conn: &mut AsyncPgConnection, id: Uuid, sub: &str) -> QueryResult<Link> {
    let updated = diesel::update(
        users::table
            .find(id)
            .filter(users::google_sub.is_null().or(users::google_sub.eq(sub))),
    )
    .set((
        users::google_sub.eq(sub),
        users::updated_at.eq(diesel::dsl::now),
    ))
    .returning(User::as_returning())
    .get_result(conn)
    .await
    .optional();
    match updated {
        Ok(Some(user)) => Ok(Link::Linked(Box::new(user))),
        Ok(None) => Ok(Link::AccountTaken),
        Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info))
            if info.constraint_name() == Some(GOOGLE_SUB_KEY) =>
        {
            Ok(Link::SubTaken)
        }
        Err(e) => Err(e),
    }
}

/// Unlinks account `id` from its Google identity; `true` when it was linked.
pub async fn unlink(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<bool> {
    diesel::update(
        users::table
            .find(id)
            .filter(users::google_sub.is_not_null()),
    )
    .set((
        users::google_sub.eq(None::<String>),
        users::updated_at.eq(diesel::dsl::now),
    ))
    .execute(conn)
    .await
    .map(|rows| rows > 0)
}
