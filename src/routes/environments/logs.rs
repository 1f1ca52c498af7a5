//! `GET /api/v1/environments/{id}/logs`: pages of the stored provisioning log.

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{db, load, parse_id};
use crate::auth::AuthUser;
use crate::error::ApiError;
use crate::openapi::{
    BadRequest, Conflict, NotFound, TooManyRequests, Unauthorized, Unavailable, Unprocessable,
};
use crate::startup::AppState;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct LogsQuery {
    /// How many lines, 1–1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    lines: Option<i64>,
    /// Without `after`: only lines stored at or after this time (RFC 3339).
    #[param(example = "2026-11-23T10:00:00Z")]
    since: Option<String>,
    /// The first lines after line SEQ instead of the newest ones (`since` does not
    /// apply).
    after: Option<i64>,
}

/// A page of the provisioning log.
#[derive(Serialize, ToSchema)]
struct LogsPage {
    /// The lines as plain strings, oldest first.
    logs: Vec<String>,
    /// Stored lines that match (without `after`), or lines after `after`.
    total: i64,
    /// Whether older lines were left out (without `after`) or more follow (with it).
    has_more: bool,
    /// The number of the first line returned; `null` when none.
    first_seq: Option<i64>,
    /// The number of the last line returned: ask again with `after=last_seq`.
    last_seq: Option<i64>,
}

const MAX_LOG_LINES: i64 = 1000;

/// `{logs: [string], total, has_more}` as the app reads it, plus `first_seq` and
/// `last_seq` for exact resumption with `after=SEQ`.
#[utoipa::path(
    get,
    path = "/api/v1/environments/{id}/logs",
    tag = "environments",
    summary = "Read the provisioning log.",
    description = "Without `after`: the newest `lines` lines (at or after `since` when given). \
        With `after=SEQ`: the first `lines` lines after line SEQ.",
    params(
        ("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404."),
        LogsQuery,
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = LogsPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn get_logs(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<String>,
    query: web::Query<LogsQuery>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let query = query.into_inner();
    let limit = query.lines.unwrap_or(100);
    if !(1..=MAX_LOG_LINES).contains(&limit) {
        return Err(ApiError::validation(
            "lines",
            format!("must be between 1 and {MAX_LOG_LINES}"),
        ));
    }
    let since = query
        .since
        .as_deref()
        .map(|s| {
            DateTime::parse_from_rfc3339(s)
                .map(|d| d.with_timezone(&Utc))
                .map_err(|_| {
                    ApiError::validation(
                        "since",
                        "must be an RFC 3339 time such as 2026-11-23T10:00:00Z",
                    )
                })
        })
        .transpose()?;
    load(&state, &caller, id).await?;
    let mut conn = state.pool.get().await?;
    let (rows, total, has_more) = match query.after {
        Some(after) => {
            let rows = db::logs_after(&mut conn, id, after, i64::MAX, limit).await?;
            let total = db::count_logs_after(&mut conn, id, after).await?;
            let has_more = total > i64::try_from(rows.len()).unwrap_or(0);
            (rows, total, has_more)
        }
        None => {
            let (rows, total) = db::logs_tail(&mut conn, id, since, limit).await?;
            let has_more = total > i64::try_from(rows.len()).unwrap_or(0);
            (rows, total, has_more)
        }
    };
    Ok(HttpResponse::Ok().json(LogsPage {
        first_seq: rows.first().map(|r| r.0),
        last_seq: rows.last().map(|r| r.0),
        logs: rows.into_iter().map(|(_, line, _)| line).collect(),
        total,
        has_more,
    }))
}
