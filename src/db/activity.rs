//! Activity and the idle auto-stop: what the last activity was (`environment_activity`;
//! its time is the environment's `last_accessed`), keep-awakes, the conditional write
//! of an idle stop, and what the idle check and `GET …/activity` read.

use chrono::{DateTime, Utc};
use devpocket_actors::model::{Activity, ActivityKind, IdleSeen, Phase, Status, Transition};
use diesel::prelude::*;
use diesel::sql_types::{Nullable, Text, Timestamptz, Uuid as SqlUuid};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::environments::Stamped;
use super::schema::{environment_activity, environments, users};
use crate::plans::Plan;

/// The name stored (and served by `GET …/activity`) for a kind of activity.
fn kind_name(kind: ActivityKind) -> &'static str {
    match kind {
        ActivityKind::Started => "started",
        ActivityKind::TerminalInput => "terminal_input",
        ActivityKind::KeepAwake => "keep_awake",
        ActivityKind::SshSession => "ssh_session",
    }
}

/// Records `activity` as the environment's last, unless a later one is recorded
/// already. With `awake_until`, a keep-awake lasting at least until then (a longer
/// one stays); a start ends the keep-awake of an earlier run.
pub async fn record(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    activity: &Activity,
    awake_until: Option<DateTime<Utc>>,
) -> QueryResult<()> {
    diesel::sql_query(
        "WITH touched AS ( \
           UPDATE environments SET last_accessed = $2 \
           WHERE id = $1 AND deleted_at IS NULL \
             AND (last_accessed IS NULL OR last_accessed < $2) \
           RETURNING id) \
         INSERT INTO environment_activity (environment_id, kind, session, client_address, awake_until) \
         SELECT id, $3, $4, $5, $6 FROM touched \
         ON CONFLICT (environment_id) DO UPDATE SET \
           kind = EXCLUDED.kind, session = EXCLUDED.session, \
           client_address = EXCLUDED.client_address, \
           awake_until = CASE WHEN EXCLUDED.kind = 'started' THEN NULL \
             ELSE GREATEST(environment_activity.awake_until, EXCLUDED.awake_until) END",
    )
    .bind::<SqlUuid, _>(id)
    .bind::<Timestamptz, _>(activity.at)
    .bind::<Text, _>(kind_name(activity.kind))
    .bind::<Nullable<Text>, _>(activity.session.as_deref())
    .bind::<Nullable<Text>, _>(activity.client_address.as_deref())
    .bind::<Nullable<Timestamptz>, _>(awake_until)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes an idle stop's transition if the environment is still running and its
/// last activity is still the one the stop was decided on; `None` otherwise.
pub async fn idle_stop(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    seen: IdleSeen,
    t: &Transition,
) -> QueryResult<Option<Stamped>> {
    diesel::update(
        environments::table
            .find(id)
            .filter(environments::deleted_at.is_null())
            .filter(environments::status.eq(Status::Running.as_str()))
            .filter(environments::phase.eq(Phase::Ready.as_str()))
            .filter(environments::last_accessed.is_not_distinct_from(seen.last_activity)),
    )
    .set((
        environments::status.eq(t.status.as_str()),
        environments::phase.eq(t.phase.as_str()),
        environments::progress.eq(t.progress.clamp(0, 100)),
        environments::status_message.eq(t.message.clone()),
        environments::updated_at.eq(diesel::dsl::now),
    ))
    .returning(Stamped::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// An environment as the idle rule weighs it.
#[derive(Debug, Clone, Queryable)]
pub struct Weighed {
    pub id: Uuid,
    pub user_id: Uuid,
    pub status: String,
    pub phase: String,
    pub plan: Plan,
    pub auto_stop_minutes: Option<i32>,
    /// The last activity's time (`last_accessed`).
    pub last_activity: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub kind: Option<String>,
    pub session: Option<String>,
    pub client_address: Option<String>,
    pub awake_until: Option<DateTime<Utc>>,
}

impl Weighed {
    pub fn is_running(&self) -> bool {
        self.status == Status::Running.as_str() && self.phase == Phase::Ready.as_str()
    }
}

macro_rules! weighed {
    () => {
        environments::table
            .inner_join(users::table)
            .left_join(environment_activity::table)
            .filter(environments::deleted_at.is_null())
            .select((
                environments::id,
                environments::user_id,
                environments::status,
                environments::phase,
                users::subscription_plan,
                environments::auto_stop_minutes,
                environments::last_accessed,
                environments::started_at,
                environment_activity::kind.nullable(),
                environment_activity::session.nullable(),
                environment_activity::client_address.nullable(),
                environment_activity::awake_until.nullable(),
            ))
    };
}

/// Every running environment, for the idle check.
pub async fn running(conn: &mut AsyncPgConnection) -> QueryResult<Vec<Weighed>> {
    weighed!()
        .filter(environments::status.eq(Status::Running.as_str()))
        .filter(environments::phase.eq(Phase::Ready.as_str()))
        .load(conn)
        .await
}

/// The caller's environment, for `GET …/activity`.
pub async fn owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<Weighed>> {
    weighed!()
        .filter(environments::id.eq(id))
        .filter(environments::user_id.eq(user_id))
        .first(conn)
        .await
        .optional()
}
