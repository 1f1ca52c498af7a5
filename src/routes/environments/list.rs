//! `GET /api/v1/environments`: the caller's environments, from the list cache when
//! it is fresh.

use std::sync::Arc;

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use devpocket_actors::model::Status;
use serde::Deserialize;
use utoipa::IntoParams;
use uuid::Uuid;

use super::db;
use crate::auth::AuthUser;
use crate::environments::EnvironmentResponse;
use crate::environments::list_cache::CachedList;
use crate::error::ApiError;
use crate::openapi::{TooManyRequests, Unauthorized, Unavailable, Unprocessable};
use crate::startup::AppState;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub(super) struct ListQuery {
    /// Only environments in this status: `creating`, `running`, `stopped`,
    /// `terminated` or `error`. Empty: all.
    status: Option<String>,
}

/// List the caller's environments.
///
/// A bare array, oldest first.
#[utoipa::path(
    get,
    path = "/api/v1/environments",
    tag = "environments",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<EnvironmentResponse>),
        (status = 401, response = Unauthorized),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
pub(super) async fn list_environments(
    state: web::Data<AppState>,
    caller: AuthUser,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let status = query.into_inner().status.filter(|s| !s.is_empty());
    if let Some(s) = &status {
        s.parse::<Status>().map_err(|_| {
            ApiError::validation(
                "status",
                "must be one of creating, running, stopped, terminated, error",
            )
        })?;
    }
    let list = owned_list(&state, caller.user.id).await?;
    Ok(match status {
        None => HttpResponse::Ok()
            .content_type(ContentType::json())
            .body(list.body.clone()),
        Some(status) => HttpResponse::Ok().json(
            list.environments
                .iter()
                .filter(|e| e.status == status)
                .collect::<Vec<_>>(),
        ),
    })
}

/// The user's environments: from memory when this server read them within
/// `DEVPOCKET_LIST_CACHE_TTL` and nothing changed since, else from the database.
async fn owned_list(state: &AppState, user_id: Uuid) -> Result<Arc<CachedList>, ApiError> {
    let ticket = match state.lists.get(user_id) {
        Ok(list) => return Ok(list),
        Err(ticket) => ticket,
    };
    let mut conn = state.pool.get().await?;
    let rows = db::list_owned(&mut conn, user_id).await?;
    drop(conn);
    // One row that cannot be read must not take the others with it.
    let environments: Vec<EnvironmentResponse> = rows
        .into_iter()
        .filter_map(|(env, template)| {
            let id = env.id;
            EnvironmentResponse::new(env, template)
                .inspect_err(|err| err.log("environments", id))
                .ok()
        })
        .collect();
    let body =
        serde_json::to_vec(&environments).map_err(|e| ApiError::internal(anyhow::Error::new(e)))?;
    let list = Arc::new(CachedList {
        environments,
        body: body.into(),
    });
    state.lists.put(ticket, list.clone());
    Ok(list)
}
