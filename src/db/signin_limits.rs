//! The sign-in limits' state, shared by every server process (see
//! `ratelimit::signin`): failed-sign-in budgets as GCRA theoretical arrival times,
//! and the addresses each account signed in from lately. Each step is one
//! statement, so concurrent attempts on any process cannot overshoot.

use std::time::Duration;

use diesel::sql_types::{BigInt, Bool, Double, Text, Uuid as SqlUuid};
use diesel::{OptionalExtension, QueryableByName};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::config::Rate;
use crate::ratelimit::Status;

/// Addresses remembered per account: home, work, a phone's carrier or two.
pub const KNOWN_PER_ACCOUNT: i64 = 8;

fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

#[derive(QueryableByName)]
struct Ahead {
    /// Microseconds from now to the key's theoretical arrival time.
    #[diesel(sql_type = Double)]
    ahead: f64,
}

#[derive(QueryableByName)]
struct Exists {
    #[diesel(sql_type = Bool)]
    found: bool,
}

#[derive(QueryableByName)]
struct Counts {
    #[diesel(sql_type = BigInt)]
    ip: i64,
    #[diesel(sql_type = BigInt)]
    account: i64,
    #[diesel(sql_type = BigInt)]
    known: i64,
}

/// Takes one unit of `key`'s budget: `Ok` with what is left, `Err` with when to
/// retry (a refusal takes nothing).
pub async fn take(
    conn: &mut AsyncPgConnection,
    key: &str,
    rate: Rate,
) -> diesel::QueryResult<Result<Status, Status>> {
    let interval = micros(rate.interval());
    let span = interval.saturating_mul(i64::from(rate.count.get()));
    let taken: Option<Ahead> = diesel::sql_query(
        "INSERT INTO signin_budgets AS b (key, tat) \
           VALUES ($1, now() + make_interval(secs => $2::float8 / 1e6)) \
         ON CONFLICT (key) DO UPDATE \
           SET tat = greatest(b.tat, now()) + make_interval(secs => $2::float8 / 1e6) \
           WHERE greatest(b.tat, now()) + make_interval(secs => $2::float8 / 1e6) \
                 <= now() + make_interval(secs => $3::float8 / 1e6) \
         RETURNING (extract(epoch FROM tat - now()) * 1e6)::float8 AS ahead",
    )
    .bind::<Text, _>(key)
    .bind::<BigInt, _>(interval)
    .bind::<BigInt, _>(span)
    .get_result(conn)
    .await
    .optional()?;
    let limit = rate.count.get();
    let us = |v: f64| Duration::from_micros(v.max(0.0) as u64);
    if let Some(Ahead { ahead }) = taken {
        let left = (span as f64 - ahead).max(0.0) / interval.max(1) as f64;
        return Ok(Ok(Status {
            limit,
            remaining: left.floor() as u32,
            reset: us(ahead),
        }));
    }
    let Ahead { ahead } = diesel::sql_query(
        "SELECT (extract(epoch FROM tat - now()) * 1e6)::float8 AS ahead \
         FROM signin_budgets WHERE key = $1",
    )
    .bind::<Text, _>(key)
    .get_result(conn)
    .await?;
    Ok(Err(Status {
        limit,
        remaining: 0,
        reset: us(ahead + interval as f64 - span as f64),
    }))
}

/// Gives back a unit taken from `key`'s budget.
pub async fn give_back(
    conn: &mut AsyncPgConnection,
    key: &str,
    rate: Rate,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "UPDATE signin_budgets SET tat = tat - make_interval(secs => $2::float8 / 1e6) \
         WHERE key = $1",
    )
    .bind::<Text, _>(key)
    .bind::<BigInt, _>(micros(rate.interval()))
    .execute(conn)
    .await
    .map(drop)
}

/// Whether `user` signed in from `address` within `ttl`.
pub async fn is_known(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    address: &str,
    ttl: Duration,
) -> diesel::QueryResult<bool> {
    diesel::sql_query(
        "SELECT EXISTS (SELECT 1 FROM signin_known_addresses \
           WHERE user_id = $1 AND address = $2 \
             AND last_seen > now() - make_interval(secs => $3::float8 / 1e6)) AS found",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<Text, _>(address)
    .bind::<BigInt, _>(micros(ttl))
    .get_result::<Exists>(conn)
    .await
    .map(|e| e.found)
}

/// `user` signed in from `address` just now; past [`KNOWN_PER_ACCOUNT`], the
/// addresses used least recently are forgotten.
pub async fn remember(
    conn: &mut AsyncPgConnection,
    user: Uuid,
    address: &str,
) -> diesel::QueryResult<()> {
    diesel::sql_query(
        "INSERT INTO signin_known_addresses (user_id, address) VALUES ($1, $2) \
         ON CONFLICT (user_id, address) DO UPDATE SET last_seen = now()",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<Text, _>(address)
    .execute(conn)
    .await?;
    diesel::sql_query(
        "DELETE FROM signin_known_addresses WHERE user_id = $1 AND address NOT IN \
           (SELECT address FROM signin_known_addresses WHERE user_id = $1 \
            ORDER BY last_seen DESC LIMIT $2)",
    )
    .bind::<SqlUuid, _>(user)
    .bind::<BigInt, _>(KNOWN_PER_ACCOUNT)
    .execute(conn)
    .await
    .map(drop)
}

/// Drops full budgets and addresses remembered longer than `ttl`; what is left:
/// address budgets, account budgets, accounts with remembered addresses.
pub async fn sweep(
    conn: &mut AsyncPgConnection,
    ttl: Duration,
) -> diesel::QueryResult<(usize, usize, usize)> {
    diesel::sql_query("DELETE FROM signin_budgets WHERE tat <= now()")
        .execute(conn)
        .await?;
    diesel::sql_query(
        "DELETE FROM signin_known_addresses \
         WHERE last_seen <= now() - make_interval(secs => $1::float8 / 1e6)",
    )
    .bind::<BigInt, _>(micros(ttl))
    .execute(conn)
    .await?;
    let c: Counts = diesel::sql_query(
        "SELECT (SELECT count(*) FROM signin_budgets WHERE key LIKE 'ip:%') AS ip, \
                (SELECT count(*) FROM signin_budgets WHERE key LIKE 'account:%') AS account, \
                (SELECT count(DISTINCT user_id) FROM signin_known_addresses) AS known",
    )
    .get_result(conn)
    .await?;
    let n = |v: i64| usize::try_from(v).unwrap_or(0);
    Ok((n(c.ip), n(c.account), n(c.known)))
}
