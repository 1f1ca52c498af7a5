//! `/api/v1/environments`: create, list, read, update, delete, start/stop/restart,
//! snapshot/resize, metrics and provisioning logs, one module per operation. The
//! work happens in the environment's actor; the handlers validate, authorize, send
//! one message and map the answer. Here: the routes table and what the handlers
//! share (the id, the caller's environment, its actor, the actor's errors).

pub(crate) mod activity;
pub(crate) mod create;
pub(crate) mod get;
pub(crate) mod lifecycle;
pub(crate) mod list;
pub(crate) mod logs;
pub(crate) mod maintenance;
pub(crate) mod metrics;
pub(crate) mod update;

use actix_web::web;
use devpocket_actors::environment::{Conflict, EnvError, EnvironmentActor};
use devpocket_actors::inspect::Handle;
use devpocket_actors::model::EnvironmentRecord;
use devpocket_actors::remote::{self, Instruction};
use devpocket_actors::store::StoreError;
use serde_json::json;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::db::environments as db;
use crate::db::json::Unreadable;
use crate::environments::EnvironmentResponse;
use crate::error::ApiError;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/environments")
            .route("", web::get().to(list::list_environments))
            .route("", web::post().to(create::create_environment))
            .route("/{id}", web::get().to(get::get_environment))
            .route("/{id}", web::put().to(update::update_environment))
            .route("/{id}", web::delete().to(lifecycle::delete_environment))
            .route("/{id}/start", web::post().to(lifecycle::start_environment))
            .route("/{id}/stop", web::post().to(lifecycle::stop_environment))
            .route(
                "/{id}/restart",
                web::post().to(lifecycle::restart_environment),
            )
            .route(
                "/{id}/snapshot",
                web::post().to(maintenance::snapshot_environment),
            )
            .route(
                "/{id}/resize",
                web::post().to(maintenance::resize_environment),
            )
            .route("/{id}/metrics", web::get().to(metrics::get_metrics))
            .route("/{id}/activity", web::get().to(activity::get_activity))
            .route("/{id}/keep-awake", web::post().to(activity::keep_awake))
            .route("/{id}/logs", web::get().to(logs::get_logs)),
    );
}

impl From<EnvError> for ApiError {
    fn from(err: EnvError) -> Self {
        match err {
            EnvError::Conflict(conflict) => conflict.into(),
            EnvError::Store(StoreError::Quota(quota)) => ApiError::Refused {
                code: "quota_exceeded",
                detail: quota.to_string(),
            },
            EnvError::Store(taken @ StoreError::NameTaken(_)) => ApiError::State {
                code: "name_taken",
                detail: capitalize(&taken.to_string()),
                context: json!({ "field": "name" }),
            },
            EnvError::Store(err) => ApiError::DatabaseUnavailable(err.into()),
            EnvError::Unavailable(message) => ApiError::ServiceUnavailable(capitalize(&message)),
            err @ (EnvError::Restarting(_) | EnvError::Elsewhere(_)) => {
                tracing::warn!(error = ?err, "an environment's controller did not answer");
                ApiError::ServiceUnavailable(capitalize(&err.to_string()))
            }
            EnvError::Metrics(err) => {
                if let Some(cause) = std::error::Error::source(&err) {
                    tracing::info!(error = %err, %cause, "no metrics for the app");
                }
                ApiError::ServiceUnavailable(capitalize(&err.to_string()))
            }
        }
    }
}

impl From<Conflict> for ApiError {
    fn from(conflict: Conflict) -> Self {
        let context = match &conflict {
            Conflict::Unreadable(column) => json!({ "field": column }),
            _ => json!({}),
        };
        ApiError::State {
            code: conflict.code(),
            detail: capitalize(&conflict.to_string()),
            context,
        }
    }
}

fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => format!(
            "{}{}.",
            first.to_uppercase(),
            chars.as_str().trim_end_matches('.')
        ),
        None => String::new(),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("No environment with id {id}."))
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| not_found(raw))
}

/// The caller's environment as the app reads it, or which of its stored values
/// cannot be read; 404 for anyone else's.
async fn read(
    state: &AppState,
    caller: &AuthUser,
    id: Uuid,
) -> Result<Result<EnvironmentResponse, Unreadable>, ApiError> {
    let mut conn = state.pool.get().await?;
    let (env, template) = db::find_owned(&mut conn, caller.user.id, id)
        .await?
        .ok_or_else(|| not_found(&id.to_string()))?;
    Ok(EnvironmentResponse::new(env, template))
}

/// The caller's environment as the app reads it; 404 for anyone else's, 409 for
/// one with a stored value that cannot be read.
async fn load(
    state: &AppState,
    caller: &AuthUser,
    id: Uuid,
) -> Result<EnvironmentResponse, ApiError> {
    read(state, caller, id)
        .await?
        .map_err(|err| unreadable(id, &err))
}

/// An environment whose row holds a value that cannot be read (stored before such
/// values were refused): nothing about it can be shown faithfully, and nothing done
/// with it but deleting it.
fn unreadable(id: Uuid, err: &Unreadable) -> ApiError {
    err.log("environments", id);
    Conflict::Unreadable(err.column.into()).into()
}

/// Carries out `instruction` on the caller's environment `id`, wherever its owner
/// runs (see `devpocket_actors::remote`): the environment once the change is
/// durable.
pub async fn order(
    state: &AppState,
    caller: &AuthUser,
    id: Uuid,
    instruction: Instruction,
) -> Result<EnvironmentRecord, ApiError> {
    let env = actor(state, caller, id).await?;
    Ok(remote::order(&state.actors.deps, &env, instruction).await?)
}

/// The environment's actor (started from durable state if needed).
pub async fn actor(
    state: &AppState,
    caller: &AuthUser,
    id: Uuid,
) -> Result<Handle<EnvironmentActor>, ApiError> {
    state
        .actors
        .environment(caller.user.id, id)
        .await?
        .ok_or_else(|| not_found(&id.to_string()))
}
