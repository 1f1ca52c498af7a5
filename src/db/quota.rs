//! A plan's limits on environments, checked where the write happens: under a lock
//! on the user's row, in the transaction that then writes, so that two creates or
//! starts at once cannot both squeeze in.

use devpocket_actors::store::{QuotaExceeded, QuotaScope};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use super::environments::counts;
use super::schema::users;
use crate::plans::Plan;

/// Whether `user_id`'s plan has room for one more active environment (and, when
/// `scope` is `Total`, one more in all). Locks the user's row until the end of the
/// transaction, so that the check and the write that follows are one step.
pub async fn room(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    scope: QuotaScope,
) -> QueryResult<Result<(), QuotaExceeded>> {
    let plan: Plan = users::table
        .find(user_id)
        .select(users::subscription_plan)
        .for_update()
        .get_result(conn)
        .await?;
    let limits = plan.limits();
    let (active, total) = counts(conn, user_id).await?;
    let exceeded = |scope, max: u32, have: i64| QuotaExceeded {
        plan: plan.to_string(),
        scope,
        max,
        have,
    };
    if let Some(max) = limits.total_environments
        && scope == QuotaScope::Total
        && total >= i64::from(max)
    {
        return Ok(Err(exceeded(QuotaScope::Total, max, total)));
    }
    if let Some(max) = limits.active_environments
        && active >= i64::from(max)
    {
        return Ok(Err(exceeded(QuotaScope::Active, max, active)));
    }
    Ok(Ok(()))
}
