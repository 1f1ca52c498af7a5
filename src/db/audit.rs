//! Audit events: batched inserts by the audit writer, filtered pages for admins.

use chrono::{DateTime, Utc};
use diesel::pg::Pg;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde_json::Value;
use uuid::Uuid;

use super::json::StoredJson;
use super::schema::{audit_events, users};

#[derive(Debug, Clone, Insertable)]
#[diesel(table_name = audit_events)]
pub struct NewAuditEvent {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub action: &'static str,
    pub resource_type: &'static str,
    pub resource_id: Option<String>,
    pub details: Value,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub outcome: &'static str,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Queryable, Selectable)]
#[diesel(table_name = audit_events, check_for_backend(Pg))]
pub struct AuditEvent {
    pub id: Uuid,
    pub user_id: Option<Uuid>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub details: StoredJson,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub outcome: String,
    pub created_at: DateTime<Utc>,
}

pub async fn insert(conn: &mut AsyncPgConnection, rows: &[NewAuditEvent]) -> QueryResult<usize> {
    diesel::insert_into(audit_events::table)
        .values(rows)
        .execute(conn)
        .await
}

/// What to list; `None` means any. `since` and `until` are both inclusive.
#[derive(Debug, Default)]
pub struct AuditFilter<'a> {
    pub user_id: Option<Uuid>,
    pub action: Option<&'a str>,
    pub resource_type: Option<&'a str>,
    pub resource_id: Option<&'a str>,
    pub outcome: Option<&'a str>,
    pub since: Option<DateTime<Utc>>,
    pub until: Option<DateTime<Utc>>,
}

fn filtered<'a>(filter: &AuditFilter<'a>) -> audit_events::BoxedQuery<'a, Pg> {
    let mut query = audit_events::table.into_boxed();
    if let Some(user) = filter.user_id {
        query = query.filter(audit_events::user_id.eq(user));
    }
    if let Some(action) = filter.action {
        query = query.filter(audit_events::action.eq(action));
    }
    if let Some(kind) = filter.resource_type {
        query = query.filter(audit_events::resource_type.eq(kind));
    }
    if let Some(id) = filter.resource_id {
        query = query.filter(audit_events::resource_id.eq(id));
    }
    if let Some(outcome) = filter.outcome {
        query = query.filter(audit_events::outcome.eq(outcome));
    }
    if let Some(since) = filter.since {
        query = query.filter(audit_events::created_at.ge(since));
    }
    if let Some(until) = filter.until {
        query = query.filter(audit_events::created_at.le(until));
    }
    query
}

/// Who an event's actor is now.
#[derive(Debug, Clone)]
pub struct ActingUser {
    pub username: String,
    /// The account was deleted (its tombstone keeps the username).
    pub deleted: bool,
}

/// One page of matching events, newest first, with each actor as now known, and
/// how many events match in all.
pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &AuditFilter<'_>,
    limit: i64,
    offset: i64,
) -> QueryResult<(Vec<(AuditEvent, Option<ActingUser>)>, i64)> {
    let total: i64 = filtered(filter).count().get_result(conn).await?;
    let events: Vec<AuditEvent> = filtered(filter)
        .order((audit_events::created_at.desc(), audit_events::id.desc()))
        .limit(limit)
        .offset(offset)
        .select(AuditEvent::as_select())
        .load(conn)
        .await?;
    let mut ids: Vec<Uuid> = events.iter().filter_map(|e| e.user_id).collect();
    ids.sort_unstable();
    ids.dedup();
    let names: std::collections::HashMap<Uuid, ActingUser> = users::table
        .filter(users::id.eq_any(&ids))
        .select((users::id, users::username, users::deleted_at.is_not_null()))
        .load::<(Uuid, String, bool)>(conn)
        .await?
        .into_iter()
        .map(|(id, username, deleted)| (id, ActingUser { username, deleted }))
        .collect();
    let page = events
        .into_iter()
        .map(|e| {
            let name = e.user_id.and_then(|id| names.get(&id).cloned());
            (e, name)
        })
        .collect();
    Ok((page, total))
}
