//! Environments and their provisioning logs: the rows and the queries on them.
//! The actors' persistence built on these is `db::store`.

use chrono::{DateTime, Utc};
use devpocket_actors::model::{Activity, ActivityKind, Phase, Stamp, Status, Times, Transition};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use super::json::{StoredJson, Unreadable};
use super::schema::{environment_logs, environments, templates};

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = environments, check_for_backend(diesel::pg::Pg))]
pub struct Environment {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub slug: String,
    pub template_id: Uuid,
    pub provider: String,
    pub region: String,
    pub size: String,
    pub status: String,
    pub phase: String,
    pub progress: i32,
    pub status_message: Option<String>,
    pub resource_limits: StoredJson,
    pub environment_variables: StoredJson,
    pub ip_address: Option<String>,
    pub ssh_port: Option<i32>,
    pub ssh_user: Option<String>,
    pub host_public_key: Option<String>,
    pub host_private_key: Option<Vec<u8>>,
    pub user_public_key: Option<String>,
    pub user_private_key: Option<Vec<u8>>,
    pub provider_ref: Option<String>,
    pub log_seq: i64,
    pub lease_owner: Option<Uuid>,
    pub lease_expires_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub last_accessed: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// The environment's own idle timeout (`None`: its plan's; 0: never).
    pub auto_stop_minutes: Option<i32>,
}

impl Environment {
    /// The first of this row's stored values that cannot be read, if any.
    pub fn unreadable(&self) -> Option<Unreadable> {
        [
            self.resource_limits.read("resource_limits"),
            self.environment_variables.read("environment_variables"),
        ]
        .into_iter()
        .find_map(Result::err)
    }
}

#[derive(Debug, Insertable)]
#[diesel(table_name = environments)]
pub struct NewEnvironment<'a> {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: &'a str,
    pub slug: &'a str,
    pub template_id: Uuid,
    pub provider: &'a str,
    pub region: &'a str,
    pub size: &'a str,
    pub status: &'a str,
    pub phase: &'a str,
    pub progress: i32,
    pub resource_limits: Value,
    pub environment_variables: Value,
    pub auto_stop_minutes: Option<i32>,
}

/// The caller's environment, unless deleted. Another user's is `None`, exactly as
/// if it did not exist.
pub async fn find_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<(Environment, String)>> {
    environments::table
        .inner_join(templates::table)
        .filter(environments::id.eq(id))
        .filter(environments::user_id.eq(user_id))
        .filter(environments::deleted_at.is_null())
        .select((Environment::as_select(), templates::name))
        .first(conn)
        .await
        .optional()
}

pub async fn list_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> QueryResult<Vec<(Environment, String)>> {
    environments::table
        .inner_join(templates::table)
        .filter(environments::user_id.eq(user_id))
        .filter(environments::deleted_at.is_null())
        .select((Environment::as_select(), templates::name))
        .order((environments::created_at.asc(), environments::id.asc()))
        .load(conn)
        .await
}

/// (environments that take an active place, all environments) of a user; see
/// `devpocket_actors::model::is_active`.
pub async fn counts(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<(i64, i64)> {
    // What the API shows as terminated (being deleted) counts for nothing.
    let mine = environments::table
        .filter(environments::user_id.eq(user_id))
        .filter(environments::deleted_at.is_null())
        .filter(environments::status.ne(Status::Terminated.as_str()));
    let total: i64 = mine.count().get_result(conn).await?;
    let at_rest: i64 = mine
        .filter(environments::status.eq(Status::Stopped.as_str()))
        .filter(environments::phase.eq_any(Phase::STOPPED_AT_REST.map(Phase::as_str)))
        .count()
        .get_result(conn)
        .await?;
    Ok((total - at_rest, total))
}

/// `Ok(false)` on a name clash.
pub async fn insert(conn: &mut AsyncPgConnection, new: &NewEnvironment<'_>) -> QueryResult<bool> {
    use diesel::result::{DatabaseErrorKind, Error};
    match diesel::insert_into(environments::table)
        .values(new)
        .execute(conn)
        .await
    {
        Ok(_) => Ok(true),
        Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// What a write returns: whose row it changed (whose list to forget) and the
/// row's times after it.
#[derive(Debug, Clone, Copy, Queryable, Selectable)]
#[diesel(table_name = environments, check_for_backend(diesel::pg::Pg))]
pub struct Stamped {
    pub user_id: Uuid,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    pub last_accessed: Option<DateTime<Utc>>,
}

impl Stamped {
    pub fn times(&self) -> Times {
        Times {
            created_at: self.created_at,
            updated_at: self.updated_at,
            started_at: self.started_at,
            stopped_at: self.stopped_at,
            last_accessed: self.last_accessed,
        }
    }
}

#[derive(AsChangeset)]
#[diesel(table_name = environments)]
struct Rename<'a> {
    name: Option<&'a str>,
    environment_variables: Option<Value>,
    auto_stop_minutes: Option<i32>,
    updated_at: DateTime<Utc>,
}

/// Renames, replaces environment variables and/or sets the idle timeout;
/// `Ok(None)` on a name clash.
pub async fn update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    auto_stop_minutes: Option<i32>,
    name: Option<&str>,
    variables: Option<Value>,
) -> QueryResult<Option<Stamped>> {
    use diesel::result::{DatabaseErrorKind, Error};
    let change = Rename {
        name,
        environment_variables: variables,
        auto_stop_minutes,
        updated_at: Utc::now(),
    };
    match diesel::update(environments::table.find(id))
        .set(&change)
        .returning(Stamped::as_returning())
        .get_result(conn)
        .await
    {
        Ok(stamped) => Ok(Some(stamped)),
        Err(Error::DatabaseError(DatabaseErrorKind::UniqueViolation, _)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Writes a transition; the row as stamped.
pub async fn transition(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    t: &Transition,
) -> QueryResult<Stamped> {
    let target = environments::table.find(id);
    let base = (
        environments::status.eq(t.status.as_str()),
        environments::phase.eq(t.phase.as_str()),
        environments::progress.eq(t.progress.clamp(0, 100)),
        environments::status_message.eq(t.message.clone()),
        environments::updated_at.eq(diesel::dsl::now),
    );
    let stamped = Stamped::as_returning();
    match t.stamp {
        Some(Stamp::Started) => {
            let stamped = diesel::update(target)
                .set((base, environments::started_at.eq(diesel::dsl::now)))
                .returning(stamped)
                .get_result(conn)
                .await?;
            // Coming up starts the idle timer.
            let started = Activity::now(ActivityKind::Started);
            super::activity::record(conn, id, &started, None).await?;
            Ok(stamped)
        }
        Some(Stamp::Stopped) => {
            diesel::update(target)
                .set((base, environments::stopped_at.eq(diesel::dsl::now)))
                .returning(stamped)
                .get_result(conn)
                .await
        }
        None => {
            diesel::update(target)
                .set(base)
                .returning(stamped)
                .get_result(conn)
                .await
        }
    }
}

/// The environments on `provider` that still exist: (id, user, provider_ref).
pub async fn live_on_provider(
    conn: &mut AsyncPgConnection,
    provider: &str,
) -> QueryResult<Vec<(Uuid, Uuid, Option<String>)>> {
    environments::table
        .filter(environments::provider.eq(provider))
        .filter(environments::deleted_at.is_null())
        .select((
            environments::id,
            environments::user_id,
            environments::provider_ref,
        ))
        .load(conn)
        .await
}

/// Stored log lines: `(seq, line, created_at)`.
pub type LogRow = (i64, String, DateTime<Utc>);

/// Lines with `after < seq <= upto`, ascending, at most `limit`.
pub async fn logs_after(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    after: i64,
    upto: i64,
    limit: i64,
) -> QueryResult<Vec<LogRow>> {
    environment_logs::table
        .filter(environment_logs::environment_id.eq(id))
        .filter(environment_logs::seq.gt(after))
        .filter(environment_logs::seq.le(upto))
        .order(environment_logs::seq.asc())
        .limit(limit)
        .select((
            environment_logs::seq,
            environment_logs::line,
            environment_logs::created_at,
        ))
        .load(conn)
        .await
}

/// The newest `limit` lines at or after `since` (ascending), and how many match.
pub async fn logs_tail(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    since: Option<DateTime<Utc>>,
    limit: i64,
) -> QueryResult<(Vec<LogRow>, i64)> {
    let mut base = environment_logs::table
        .filter(environment_logs::environment_id.eq(id))
        .into_boxed();
    let mut count = environment_logs::table
        .filter(environment_logs::environment_id.eq(id))
        .into_boxed();
    if let Some(since) = since {
        base = base.filter(environment_logs::created_at.ge(since));
        count = count.filter(environment_logs::created_at.ge(since));
    }
    let total: i64 = count.count().get_result(conn).await?;
    let mut rows: Vec<LogRow> = base
        .order(environment_logs::seq.desc())
        .limit(limit)
        .select((
            environment_logs::seq,
            environment_logs::line,
            environment_logs::created_at,
        ))
        .load(conn)
        .await?;
    rows.reverse();
    Ok((rows, total))
}

pub async fn count_logs_after(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    after: i64,
) -> QueryResult<i64> {
    environment_logs::table
        .filter(environment_logs::environment_id.eq(id))
        .filter(environment_logs::seq.gt(after))
        .count()
        .get_result(conn)
        .await
}
