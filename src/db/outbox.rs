//! The mail outbox: mail waiting to leave (see `mail`).

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Interval, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::interval;

use super::schema::mail_outbox;

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = mail_outbox)]
pub struct NewMail {
    pub id: Uuid,
    pub kind: &'static str,
    pub recipient: String,
    pub subject: String,
    pub text_body: String,
    pub html_body: String,
}

#[derive(Debug, Clone, Queryable, QueryableByName, Selectable)]
#[diesel(table_name = mail_outbox, check_for_backend(diesel::pg::Pg))]
pub struct QueuedMail {
    pub id: Uuid,
    pub kind: String,
    pub recipient: String,
    pub subject: String,
    pub text_body: String,
    pub html_body: String,
    pub created_at: DateTime<Utc>,
    pub attempts: i32,
}

/// Queues a mail; call it in the transaction that decides to send it.
pub async fn enqueue(conn: &mut AsyncPgConnection, mail: &NewMail) -> QueryResult<()> {
    diesel::insert_into(mail_outbox::table)
        .values(mail)
        .execute(conn)
        .await
        .map(drop)
}

/// Takes up to `limit` mails that are due, oldest first, counting an attempt on
/// each and putting it out of every sender's reach for `hold` (another process's
/// sender skips rows being claimed). A sender that dies mid-send leaves its mails to
/// be sent again once `hold` has passed: mail is delivered at least once.
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    limit: i64,
    hold: std::time::Duration,
) -> QueryResult<Vec<QueuedMail>> {
    diesel::sql_query(
        "UPDATE mail_outbox SET attempts = attempts + 1, next_attempt_at = now() + $2 \
         WHERE id IN (SELECT id FROM mail_outbox \
                      WHERE failed_at IS NULL AND next_attempt_at <= now() \
                      ORDER BY next_attempt_at, created_at LIMIT $1 \
                      FOR UPDATE SKIP LOCKED) \
         RETURNING id, kind, recipient, subject, text_body, html_body, created_at, attempts",
    )
    .bind::<BigInt, _>(limit)
    .bind::<Interval, _>(interval(hold))
    .load(conn)
    .await
}

/// The mail left: it is forgotten (its body held a code or a token).
pub async fn sent(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<()> {
    diesel::delete(mail_outbox::table.find(id))
        .execute(conn)
        .await
        .map(drop)
}

/// A failed attempt, to be retried after `retry_in`.
pub async fn retry(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    retry_in: std::time::Duration,
    error: &str,
) -> QueryResult<()> {
    diesel::sql_query(
        "UPDATE mail_outbox SET next_attempt_at = now() + $2, last_error = $3 WHERE id = $1",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Interval, _>(interval(retry_in))
    .bind::<diesel::sql_types::Text, _>(error)
    .execute(conn)
    .await
    .map(drop)
}

/// Given up: kept (without its body) for an operator to see why.
pub async fn failed(conn: &mut AsyncPgConnection, id: Uuid, error: &str) -> QueryResult<()> {
    diesel::update(mail_outbox::table.find(id))
        .set((
            mail_outbox::failed_at.eq(diesel::dsl::now),
            mail_outbox::last_error.eq(error),
            mail_outbox::text_body.eq(""),
            mail_outbox::html_body.eq(""),
        ))
        .execute(conn)
        .await
        .map(drop)
}

/// When the next mail waiting is due, if any is.
pub async fn next_due(conn: &mut AsyncPgConnection) -> QueryResult<Option<DateTime<Utc>>> {
    mail_outbox::table
        .filter(mail_outbox::failed_at.is_null())
        .select(diesel::dsl::min(mail_outbox::next_attempt_at))
        .first(conn)
        .await
}

/// Mails waiting to be sent.
pub async fn queued(conn: &mut AsyncPgConnection) -> QueryResult<i64> {
    mail_outbox::table
        .filter(mail_outbox::failed_at.is_null())
        .count()
        .get_result(conn)
        .await
}
