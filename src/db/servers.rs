//! Users' own servers: the rows and the queries on them. Every query but the
//! periodic check's is by owner: another user's server is never found.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use super::json::StoredJson;
use super::schema::{apps, servers, users};
use crate::plans::Plan;

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = servers, check_for_backend(diesel::pg::Pg))]
pub struct Server {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub host: String,
    pub port: i32,
    pub username: String,
    pub auth_type: String,
    /// Sealed (`crypto::SecretBox`).
    pub private_key: Vec<u8>,
    pub public_key: String,
    pub host_key: Option<String>,
    pub presented_host_key: Option<String>,
    pub status: String,
    pub status_message: Option<String>,
    pub last_checked: Option<DateTime<Utc>>,
    pub facts: StoredJson,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Debug, Insertable)]
#[diesel(table_name = servers)]
pub struct NewServer {
    pub id: Uuid,
    pub user_id: Uuid,
    pub name: String,
    pub host: String,
    pub port: i32,
    pub username: String,
    pub auth_type: &'static str,
    pub private_key: Vec<u8>,
    pub public_key: String,
}

/// What a `PUT` changes (`None`: unchanged).
#[derive(Debug, Default, AsChangeset)]
#[diesel(table_name = servers)]
pub struct ServerChanges {
    pub name: Option<String>,
    pub host: Option<String>,
    pub port: Option<i32>,
    pub username: Option<String>,
    pub auth_type: Option<&'static str>,
    pub private_key: Option<Vec<u8>>,
    pub public_key: Option<String>,
    /// A new address or port is another machine as far as trust goes: both host
    /// keys are cleared with it (`Some(None)`).
    pub host_key: Option<Option<String>>,
    pub presented_host_key: Option<Option<String>>,
    pub status: Option<&'static str>,
    pub status_message: Option<Option<String>>,
}

/// Why a new server was not stored.
#[derive(Debug)]
pub enum Refused {
    /// The plan allows this many.
    Quota {
        plan: Plan,
        max: u32,
    },
    NameTaken,
}

fn is_name_taken(err: &diesel::result::Error) -> bool {
    matches!(
        err,
        diesel::result::Error::DatabaseError(
            diesel::result::DatabaseErrorKind::UniqueViolation,
            info,
        ) if info.constraint_name() == Some("servers_user_name")
    )
}

/// Stores `new` if its owner's plan has room (checked under a lock on the owner's
/// row, so that two creates at once cannot both squeeze in) and the name is free.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    new: NewServer,
) -> QueryResult<Result<Server, Refused>> {
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        let plan: Plan = users::table
            .find(new.user_id)
            .select(users::subscription_plan)
            .for_update()
            .get_result(conn)
            .await?;
        if let Some(max) = plan.limits().servers {
            let have: i64 = servers::table
                .filter(servers::user_id.eq(new.user_id))
                .count()
                .get_result(conn)
                .await?;
            if have >= i64::from(max) {
                return Ok(Err(Refused::Quota { plan, max }));
            }
        }
        match diesel::insert_into(servers::table)
            .values(&new)
            .returning(Server::as_returning())
            .get_result(conn)
            .await
        {
            Ok(server) => Ok(Ok(server)),
            Err(e) if is_name_taken(&e) => Ok(Err(Refused::NameTaken)),
            Err(e) => Err(e),
        }
    })
    .await
}

/// The owner's servers, oldest first.
pub async fn list(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Vec<Server>> {
    servers::table
        .filter(servers::user_id.eq(user_id))
        .order((servers::created_at.asc(), servers::id.asc()))
        .select(Server::as_select())
        .load(conn)
        .await
}

pub async fn find_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<Server>> {
    servers::table
        .filter(servers::id.eq(id).and(servers::user_id.eq(user_id)))
        .select(Server::as_select())
        .first(conn)
        .await
        .optional()
}

/// Applies `changes` to the owner's server; `Ok(None)`: no such server of theirs.
pub async fn update(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
    changes: &ServerChanges,
) -> QueryResult<Result<Option<Server>, Refused>> {
    let result =
        diesel::update(servers::table.filter(servers::id.eq(id).and(servers::user_id.eq(user_id))))
            .set((changes, servers::updated_at.eq(diesel::dsl::now)))
            .returning(Server::as_returning())
            .get_result(conn)
            .await
            .optional();
    match result {
        Ok(server) => Ok(Ok(server)),
        Err(e) if is_name_taken(&e) => Ok(Err(Refused::NameTaken)),
        Err(e) => Err(e),
    }
}

/// What a check (or a first contact) found.
#[derive(Debug, AsChangeset)]
#[diesel(table_name = servers)]
pub struct CheckOutcome {
    pub status: &'static str,
    /// Always `Some`: the message, or `Some(None)` for none.
    pub status_message: Option<Option<String>>,
    pub last_checked: DateTime<Utc>,
    /// The facts found (`None`: left as they were).
    pub facts: Option<Value>,
    /// A host key presented that nobody confirmed yet (`None`: left as it was).
    pub presented_host_key: Option<Option<String>>,
}

/// Records `outcome`, unless the server's access changed meanwhile
/// (`expect_updated_at`): a check made with the old settings must not overwrite
/// what the new ones say.
pub async fn record_check(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    expect_updated_at: DateTime<Utc>,
    outcome: &CheckOutcome,
) -> QueryResult<Option<Server>> {
    diesel::update(
        servers::table.filter(
            servers::id
                .eq(id)
                .and(servers::updated_at.eq(expect_updated_at)),
        ),
    )
    .set(outcome)
    .returning(Server::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Trusts the host key presented, if its fingerprint is still `presented` (the
/// caller compared it): it becomes the pinned one.
pub async fn trust(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
    presented: &str,
) -> QueryResult<Option<Server>> {
    diesel::update(
        servers::table.filter(
            servers::id
                .eq(id)
                .and(servers::user_id.eq(user_id))
                .and(servers::presented_host_key.eq(presented)),
        ),
    )
    .set((
        servers::host_key.eq(presented),
        servers::presented_host_key.eq(None::<String>),
        servers::status.eq("offline"),
        servers::status_message.eq("trusted; not checked since"),
        servers::updated_at.eq(diesel::dsl::now),
    ))
    .returning(Server::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Deletes the owner's server if no app lives on it (checked in the same
/// statement, so that an app added meanwhile keeps it): whether it was deleted.
pub async fn delete(conn: &mut AsyncPgConnection, user_id: Uuid, id: Uuid) -> QueryResult<bool> {
    let n = diesel::delete(
        servers::table.filter(servers::id.eq(id).and(servers::user_id.eq(user_id)).and(
            diesel::dsl::not(diesel::dsl::exists(
                apps::table.filter(apps::server_id.eq(servers::id)),
            )),
        )),
    )
    .execute(conn)
    .await?;
    Ok(n > 0)
}

/// Servers with a trusted host key not checked for `every`, claimed for a check by
/// this process (their `last_checked` moves to now, so that no other process
/// checks them in this round).
pub async fn claim_due(
    conn: &mut AsyncPgConnection,
    every: std::time::Duration,
    limit: i64,
) -> QueryResult<Vec<Server>> {
    let now = Utc::now();
    let cutoff = now - chrono::Duration::from_std(every).unwrap_or(chrono::Duration::MAX);
    conn.transaction::<_, diesel::result::Error, _>(async |conn| {
        let due: Vec<Uuid> = servers::table
            .filter(servers::host_key.is_not_null())
            .filter(
                servers::last_checked
                    .is_null()
                    .or(servers::last_checked.le(cutoff)),
            )
            .order(servers::last_checked.asc().nulls_first())
            .limit(limit)
            .select(servers::id)
            .for_update()
            .skip_locked()
            .load(conn)
            .await?;
        diesel::update(servers::table.filter(servers::id.eq_any(&due)))
            .set(servers::last_checked.eq(now))
            .returning(Server::as_returning())
            .get_results(conn)
            .await
    })
    .await
}
