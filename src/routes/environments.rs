//! `/api/v1/environments`: create, list, read, update, delete, start/stop/restart,
//! metrics and provisioning logs. The work happens in the environment's actor;
//! these handlers validate, authorize, send one message and map the answer.

use std::collections::BTreeMap;
use std::sync::Arc;

use actix_web::http::header::ContentType;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use devpocket_actors::environment::{
    Command, EnvError, EnvironmentActor, GetMetrics, Lifecycle, Maintain, MaintenanceRequest,
};
use devpocket_actors::inspect::Handle;
use devpocket_actors::metrics::Metrics;
use devpocket_actors::model::{Phase, Status};
use devpocket_actors::provider::digitalocean;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::audit::{Action, Event, Origin, ResourceType};
use crate::auth::AuthUser;
use crate::db::environments::{self as db, NewEnvironment};
use crate::db::json::Unreadable;
use crate::db::templates as template_db;
use crate::environments::list_cache::CachedList;
use crate::environments::{self as rules, EnvironmentResponse, limits};
use crate::error::{ApiError, ValidationErrors};
use crate::http::{Json, OptionalJson};
use crate::openapi::{
    BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized,
    Unavailable, Unprocessable, UnsupportedMediaType,
};
use crate::startup::AppState;
use crate::templates::Status as TemplateStatus;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/environments")
            .route("", web::get().to(list_environments))
            .route("", web::post().to(create_environment))
            .route("/{id}", web::get().to(get_environment))
            .route("/{id}", web::put().to(update_environment))
            .route("/{id}", web::delete().to(delete_environment))
            .route("/{id}/start", web::post().to(start_environment))
            .route("/{id}/stop", web::post().to(stop_environment))
            .route("/{id}/restart", web::post().to(restart_environment))
            .route("/{id}/snapshot", web::post().to(snapshot_environment))
            .route("/{id}/resize", web::post().to(resize_environment))
            .route("/{id}/metrics", web::get().to(get_metrics))
            .route("/{id}/logs", web::get().to(get_logs)),
    );
}

impl From<EnvError> for ApiError {
    fn from(err: EnvError) -> Self {
        match err {
            EnvError::Conflict(conflict) => ApiError::State {
                code: conflict.code(),
                detail: capitalize(&conflict.to_string()),
                context: json!({}),
            },
            EnvError::Store(e) => ApiError::DatabaseUnavailable(e.into()),
            EnvError::Unavailable(detail) => ApiError::ServiceUnavailable(capitalize(&detail)),
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
    ApiError::Conflict {
        detail: format!(
            "This environment's stored {} cannot be read (it was saved before such values \
             were refused); it can only be deleted.",
            err.column
        ),
        context: json!({ "field": err.column }),
    }
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

#[derive(Deserialize, ToSchema)]
#[schema(as = CreateEnvironmentRequest)]
struct CreateRequest {
    /// Free text as typed: 1–64 characters, no control characters, unique per
    /// user regardless of case.
    #[schema(example = "My Awesome Project")]
    name: String,
    /// A template's id or name (case-insensitive); required unless `template` is
    /// given. An unknown one is 422 listing the valid names.
    #[schema(example = "python")]
    template_id: Option<String>,
    /// Older apps send `template`.
    template: Option<String>,
    /// A slug from `GET /api/v1/regions`: `local` on the local provider; a
    /// DigitalOcean region such as `nyc3` on DigitalOcean. Default: the provider's.
    region: Option<String>,
    /// `small` (the default on the local provider), `medium`, `large` or `xlarge`;
    /// on DigitalOcean also a size slug from `GET /api/v1/sizes` (default
    /// `DO_DEFAULT_SIZE`). Above the plan's largest is 403.
    size: Option<String>,
    /// Kept as given and shown in `resource_limits`; DevPocket does not apply them
    /// (the size does). Only the members `cpu`, `memory`, `storage` and
    /// `max_instances`, each null or: `cpu` a number from 0.001 to 1024 or a string
    /// such as "2", "0.5" or "500m"; `memory` and `storage` a number from 0.001 to
    /// 2^53 or a string of one with an optional unit `K M G T P E`, each optionally
    /// followed by `i` and/or `B` ("4Gi", "512Mi", "10GB"); `max_instances` a whole
    /// number from 1 to 100 (or a string of one). Strings are at most 16 characters.
    /// Anything else is 422 naming the member.
    #[schema(value_type = Option<limits::LimitsRequest>)]
    resource_limits: Option<Value>,
    /// Older apps send `resources` (the same rules).
    #[schema(value_type = Option<limits::LimitsRequest>)]
    resources: Option<Value>,
    /// At most 100 names of letters, digits and `_` (not starting with a digit) to
    /// strings of at most 4096 bytes; numbers and booleans are stored as strings.
    #[schema(value_type = Option<BTreeMap<String, String>>)]
    environment_variables: Option<Value>,
}

/// Create an environment.
///
/// Answers at once with `status: creating`; provisioning goes on in the
/// background (follow it with `GET /api/v1/ws/logs/{id}` or by polling).
#[utoipa::path(
    post,
    path = "/api/v1/environments",
    tag = "environments",
    request_body = CreateRequest,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; provisioning has started.", body = EnvironmentResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn create_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    body: Json<CreateRequest>,
) -> Result<HttpResponse, ApiError> {
    let body = body.into_inner();
    let name = body.name.trim().to_owned();
    let result = create(&state, &caller, body).await;
    if let Some(event) = Event::for_result(Action::EnvironmentCreate, &result) {
        let env = result.as_ref().ok();
        state.audit.record(
            &origin,
            event
                .on(ResourceType::Environment, env.map(|e| e.id))
                .by(caller.user.id)
                .details(json!({
                    "name": name,
                    "template_id": env.map(|e| &e.template_id),
                    "size": env.map(|e| &e.size),
                })),
        );
    }
    Ok(HttpResponse::Created().json(result?))
}

/// Validates and inserts a new environment within the plan, then starts its actor.
async fn create(
    state: &AppState,
    caller: &AuthUser,
    body: CreateRequest,
) -> Result<EnvironmentResponse, ApiError> {
    let name = body.name.trim().to_owned();
    let mut errors = ValidationErrors::default();
    rules::validate_name(&name, &mut errors);
    let variables = rules::validate_variables(
        body.environment_variables.as_ref().unwrap_or(&Value::Null),
        &mut errors,
    );
    let limits = match (body.resource_limits, body.resources) {
        (Some(given), _) => limits::validate(&given, "resource_limits", &mut errors),
        (None, Some(given)) => limits::validate(&given, "resources", &mut errors),
        (None, None) => serde_json::Map::new(),
    };
    let key = body
        .template_id
        .or(body.template)
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    if key.is_none() {
        errors.add("template_id", "is required: a template's id or name");
    }
    errors.into_result()?;

    let mut conn = state.pool.get().await?;
    let template = match key.as_deref() {
        Some(key) => template_db::find_by_id_or_name(&mut conn, key).await?,
        None => None,
    }
    .filter(|t| {
        t.status != TemplateStatus::Deprecated
            || caller.user.subscription_plan == crate::plans::Plan::Admin
    });
    let Some(template) = template else {
        let available = template_db::list(&mut conn, &template_db::ListFilter::default()).await?;
        let names: Vec<String> = available.into_iter().map(|t| t.name).collect();
        return Err(ApiError::validation(
            "template_id",
            format!(
                "unknown template `{}`; valid templates: {}",
                key.unwrap_or_default(),
                names.join(", ")
            ),
        ));
    };

    if let Some(err) = template.unreadable().first() {
        err.log("templates", template.id);
        return Err(ApiError::validation(
            "template_id",
            format!(
                "the template `{}` cannot be used now: its stored {} cannot be read; \
                 an administrator has to replace it",
                template.name, err.column
            ),
        ));
    }

    let provider = state.default_provider.as_str();
    let region = body
        .region
        .map(|r| r.trim().to_owned())
        .filter(|r| !r.is_empty());
    let size = body
        .size
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty());
    let plan = caller.user.subscription_plan;
    let (region, size) = match &state.settings.digitalocean {
        Some(d) if provider == digitalocean::NAME => {
            let region = region.unwrap_or_else(|| d.region.clone());
            let valid = region.len() <= 16
                && region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
            if !valid {
                return Err(ApiError::validation(
                    "region",
                    format!("`{region}` is not a DigitalOcean region such as nyc3 or fra1"),
                ));
            }
            check_region(state, &region).await?;
            let size = match size {
                Some(size) => rules::digitalocean_size(plan, &size, &do_sizes(state, &size).await)?,
                None => d.size.clone(),
            };
            check_user_data(&template, &variables)?;
            (region, size)
        }
        _ => {
            let region = region.unwrap_or_else(|| "local".to_owned());
            if region != "local" {
                return Err(ApiError::validation(
                    "region",
                    format!("`{region}` is not a region of the local provider; use `local`"),
                ));
            }
            let size = size.unwrap_or_else(|| "small".to_owned());
            rules::check_size(plan, &size)?;
            (region, size)
        }
    };

    let id = Uuid::new_v4();
    let slug = rules::slug(&name, id);
    let new = NewEnvironment {
        id,
        user_id: caller.user.id,
        name: &name,
        slug: &slug,
        template_id: template.id,
        provider,
        region: &region,
        size: &size,
        status: Status::Creating.as_str(),
        phase: Phase::Queued.as_str(),
        progress: 0,
        resource_limits: Value::Object(limits),
        environment_variables: json!(variables),
    };
    rules::insert_within_quota(&mut conn, &caller.user, &new).await?;
    drop(conn);
    state.lists.forget(caller.user.id);
    // The actor starts provisioning at once; the answer does not wait for it.
    actor(state, caller, id).await?;
    load(state, caller, id).await
}

/// Refuses a region DigitalOcean does not have, or where it takes no new droplets,
/// naming those it has (its catalog is cached). When the catalog cannot be read
/// quickly the region is let through: DigitalOcean's own refusal will say it.
async fn check_region(state: &AppState, region: &str) -> Result<(), ApiError> {
    let Some(provider) = &state.digitalocean else {
        return Ok(());
    };
    let regions = match tokio::time::timeout(std::time::Duration::from_secs(5), provider.regions())
        .await
    {
        Ok(Ok(regions)) => regions,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "DigitalOcean's regions cannot be read; not checking the region");
            return Ok(());
        }
        Err(_) => {
            tracing::warn!("DigitalOcean's regions took too long; not checking the region");
            return Ok(());
        }
    };
    let available: Vec<&str> = regions
        .iter()
        .filter(|r| r["available"].as_bool().unwrap_or(true))
        .filter_map(|r| r["slug"].as_str())
        .collect();
    if available.is_empty() || available.contains(&region) {
        return Ok(());
    }
    Err(ApiError::validation(
        "region",
        format!(
            "`{region}` is not a DigitalOcean region that takes new droplets; use one of {}",
            available.join(", ")
        ),
    ))
}

/// DigitalOcean's sizes (cached), to check a size that is not one of DevPocket's;
/// none when they cannot be read quickly (the built-in list is used then).
pub async fn do_sizes(state: &AppState, size: &str) -> Vec<Value> {
    let Some(provider) = &state.digitalocean else {
        return Vec::new();
    };
    if digitalocean::size_slug(size).is_some() {
        return Vec::new();
    }
    match tokio::time::timeout(std::time::Duration::from_secs(5), provider.sizes()).await {
        Ok(Ok(sizes)) => sizes,
        Ok(Err(e)) => {
            tracing::warn!(error = %e, "DigitalOcean's sizes cannot be read; using the built-in list");
            Vec::new()
        }
        Err(_) => {
            tracing::warn!("DigitalOcean's sizes took too long; using the built-in list");
            Vec::new()
        }
    }
}

/// Refuses, before anything is made, a template whose cloud-init user-data would
/// be over DigitalOcean's 64 KiB.
fn check_user_data(
    template: &template_db::Template,
    variables: &std::collections::BTreeMap<String, String>,
) -> Result<(), ApiError> {
    let keys = devpocket_actors::ssh::generate_machine_keys("size-check")
        .map_err(|e| ApiError::Internal(anyhow::anyhow!("generating keys: {e}")))?;
    let packages: Vec<String> = template
        .packages
        .read("packages")
        .ok()
        .and_then(Value::as_array)
        .map(|p| {
            p.iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    let cloud_init = template
        .cloud_init
        .read("cloud_init")
        .ok()
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default();
    let volume = digitalocean::volume_name(Uuid::nil());
    digitalocean::user_data::UserDataSpec {
        environment_id: Uuid::nil(),
        slug: "size-check-000000-0000000000000000000000000000000000000000",
        user: "dev",
        keys: &keys,
        volume_name: Some(&volume),
        packages: &packages,
        cloud_init: &cloud_init,
        bootstrap: &template.bootstrap,
        environment_variables: variables,
    }
    .render()
    .map(drop)
    .map_err(|e| ApiError::validation("template_id", e.to_string()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
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
async fn list_environments(
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

/// Get an environment.
#[utoipa::path(
    get,
    path = "/api/v1/environments/{id}",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = EnvironmentResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn get_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    Ok(HttpResponse::Ok().json(load(&state, &caller, id).await?))
}

/// The body of `PUT /environments/{id}`: what may change; other fields are
/// ignored, `null` leaves a field as it is.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the JSON object `update_environment` reads field by field.
struct UpdateEnvironmentRequest {
    /// As for a new environment.
    name: Option<String>,
    /// Replaces the stored variables; the machine sees them at its next start.
    environment_variables: Option<BTreeMap<String, String>>,
}

/// Rename an environment or replace its variables.
#[utoipa::path(
    put,
    path = "/api/v1/environments/{id}",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    request_body = UpdateEnvironmentRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, body = EnvironmentResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn update_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<String>,
    body: Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let body = body.into_inner();
    if !body.is_object() {
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    let mut errors = ValidationErrors::default();
    let name = match body.get("name") {
        None | Some(Value::Null) => None,
        Some(Value::String(n)) => {
            let n = n.trim().to_owned();
            rules::validate_name(&n, &mut errors);
            Some(n)
        }
        Some(_) => {
            errors.add("name", "must be a string");
            None
        }
    };
    let variables = match body.get("environment_variables") {
        None | Some(Value::Null) => None,
        Some(v) => Some(json!(rules::validate_variables(v, &mut errors))),
    };
    errors.into_result()?;
    load(&state, &caller, id).await?;
    let mut conn = state.pool.get().await?;
    let updated = db::update(&mut conn, id, name.as_deref(), variables).await;
    state.lists.forget(caller.user.id);
    if !updated? {
        return Err(ApiError::Conflict {
            detail: format!(
                "You already have an environment named '{}'; choose another name.",
                name.unwrap_or_default()
            ),
            context: json!({ "field": "name" }),
        });
    }
    drop(conn);
    Ok(HttpResponse::Ok().json(load(&state, &caller, id).await?))
}

/// Sends a lifecycle command; 202 with the environment in its new phase. Audited
/// (see `Outcome::of` for what is not).
async fn lifecycle(
    state: &AppState,
    caller: &AuthUser,
    origin: &Origin,
    raw_id: &str,
    command: Command,
) -> Result<HttpResponse, ApiError> {
    let action = match command {
        Command::Start => Action::EnvironmentStart,
        Command::Stop => Action::EnvironmentStop,
        Command::Restart => Action::EnvironmentRestart,
        Command::Delete => Action::EnvironmentDelete,
    };
    let result = send_lifecycle(state, caller, raw_id, command).await;
    if let Some(event) = Event::for_result(action, &result) {
        state.audit.record(
            origin,
            event
                .on(ResourceType::Environment, Uuid::parse_str(raw_id).ok())
                .by(caller.user.id),
        );
    }
    result
}

async fn send_lifecycle(
    state: &AppState,
    caller: &AuthUser,
    raw_id: &str,
    command: Command,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(raw_id)?;
    let current = match (read(state, caller, id).await?, &command) {
        (Ok(current), _) => Some(current),
        // Deleting needs none of the stored values.
        (Err(_), Command::Delete) => None,
        (Err(err), _) => return Err(unreadable(id, &err)),
    };
    if matches!(command, Command::Start | Command::Restart)
        && current.is_some_and(|c| c.status == Status::Stopped.as_str())
    {
        let mut conn = state.pool.get().await?;
        rules::check_quota(&mut conn, &caller.user, true, false).await?;
    }
    let addr = actor(state, caller, id).await?;
    addr.send(Lifecycle(command)).await.map_err(|e| {
        ApiError::ServiceUnavailable(format!(
            "The environment's controller is restarting ({e}); try again."
        ))
    })??;
    match read(state, caller, id).await {
        Ok(Ok(env)) => Ok(HttpResponse::Accepted().json(env)),
        Ok(Err(_)) => Ok(HttpResponse::Accepted()
            .json(json!({ "id": id, "status": "terminated", "phase": "deleting" }))),
        // Deleted already: nothing left to show.
        Err(ApiError::NotFound(_)) => Ok(HttpResponse::Accepted()
            .json(json!({ "id": id, "status": "terminated", "phase": "deleted" }))),
        Err(e) => Err(e),
    }
}

/// Delete an environment.
///
/// From any state but while deleting. Answers with the environment in
/// `terminated`/`deleting`, or `{id, status: "terminated", phase: "deleted"}` when it
/// is already gone; afterwards it is a 404.
#[utoipa::path(
    delete,
    path = "/api/v1/environments/{id}",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Deletion has started.", body = EnvironmentResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn delete_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    lifecycle(&state, &caller, &origin, &id, Command::Delete).await
}

/// Start an environment.
///
/// From `stopped` (or, after a failed start, stop or delete, from `error`); 409 otherwise. Starting counts against the plan's environments that are not stopped (403). Answers with the environment in its new
/// phase, `starting` or further along.
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/start",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted.", body = EnvironmentResponse),
        (status = 403, response = Forbidden),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn start_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    lifecycle(&state, &caller, &origin, &id, Command::Start).await
}

/// Stop an environment.
///
/// From `running`; 409 otherwise. Answers with the environment in its new
/// phase, `stopping` or further along.
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/stop",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted.", body = EnvironmentResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn stop_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    lifecycle(&state, &caller, &origin, &id, Command::Stop).await
}

/// Restart an environment.
///
/// From `running` or `stopped`; 409 otherwise. Starting counts against the plan's environments that are not stopped (403). Answers with the environment in its new
/// phase, `restarting` or further along.
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/restart",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted.", body = EnvironmentResponse),
        (status = 403, response = Forbidden),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn restart_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    lifecycle(&state, &caller, &origin, &id, Command::Restart).await
}

#[derive(Deserialize, ToSchema)]
#[schema(as = SnapshotEnvironmentRequest)]
struct SnapshotRequest {
    /// The snapshot's name at DigitalOcean: at most 200 characters, no control
    /// characters. Left out (or the whole body left out): the environment's slug
    /// and the time, e.g. `my-project-1a2b3c-20261123-101500`.
    #[schema(example = "before-upgrade")]
    name: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[schema(as = ResizeEnvironmentRequest)]
struct ResizeRequest {
    /// Required: a DevPocket size (`small`, `medium`, `large`, `xlarge`) or a
    /// DigitalOcean size slug from `GET /api/v1/sizes`; above the plan's largest is
    /// 403.
    #[schema(example = "medium")]
    size: Option<String>,
}

/// Snapshot an environment.
///
/// DigitalOcean only: a snapshot of the droplet's disk (not of the home volume),
/// from `running` or `stopped`; a running machine keeps running. Answers with the
/// environment in phase `snapshotting`; afterwards it is back in `ready` or
/// `stopped` with `status_message` "snapshot NAME saved" (or why it failed). 409 on
/// a provider that cannot take snapshots (the local one) or in any other state.
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/snapshot",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    request_body(content = Option<SnapshotRequest>, description = "Optional; an empty body takes a snapshot with a generated name."),
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted; the snapshot is being taken.", body = EnvironmentResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn snapshot_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
    body: OptionalJson<SnapshotRequest>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        let id = parse_id(&id)?;
        let env = load(&state, &caller, id).await?;
        let name = body
            .into_inner()
            .and_then(|b| b.name)
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| {
                let slug = rules::slug(&env.name, id);
                format!("{slug}-{}", Utc::now().format("%Y%m%d-%H%M%S"))
            });
        if name.chars().count() > 200 || name.chars().any(char::is_control) {
            return Err(ApiError::validation(
                "name",
                "must be at most 200 characters without control characters",
            ));
        }
        maintain(&state, &caller, id, MaintenanceRequest::Snapshot { name }).await
    }
    .await;
    audit_maintenance(
        &state,
        &caller,
        &origin,
        &id,
        Action::EnvironmentSnapshot,
        &result,
    );
    result
}

/// Resize an environment.
///
/// DigitalOcean only, from `running` or `stopped`: a running droplet is shut down,
/// given the new size and powered on again (a larger size's larger disk is kept for
/// good: DigitalOcean cannot shrink it back). Answers with the environment in phase
/// `resizing`; afterwards it is back in `ready` or `stopped` with the new `size`.
/// 409 on a provider that cannot resize (the local one), for the size it already
/// has, or in any other state.
#[utoipa::path(
    post,
    path = "/api/v1/environments/{id}/resize",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    request_body = ResizeRequest,
    security(("bearer" = [])),
    responses(
        (status = 202, description = "Accepted; the machine is being resized.", body = EnvironmentResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn resize_environment(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
    body: Json<ResizeRequest>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        let id = parse_id(&id)?;
        let env = load(&state, &caller, id).await?;
        let size = body
            .into_inner()
            .size
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ApiError::validation("size", "is required"))?;
        let size = if env.provider == digitalocean::NAME {
            let catalog = do_sizes(&state, &size).await;
            rules::digitalocean_size(caller.user.subscription_plan, &size, &catalog)?
        } else {
            size
        };
        maintain(&state, &caller, id, MaintenanceRequest::Resize { size }).await
    }
    .await;
    audit_maintenance(
        &state,
        &caller,
        &origin,
        &id,
        Action::EnvironmentResize,
        &result,
    );
    result
}

async fn maintain(
    state: &AppState,
    caller: &AuthUser,
    id: Uuid,
    request: MaintenanceRequest,
) -> Result<HttpResponse, ApiError> {
    let addr = actor(state, caller, id).await?;
    addr.send(Maintain(request)).await.map_err(|e| {
        ApiError::ServiceUnavailable(format!(
            "The environment's controller is restarting ({e}); try again."
        ))
    })??;
    Ok(HttpResponse::Accepted().json(load(state, caller, id).await?))
}

fn audit_maintenance(
    state: &AppState,
    caller: &AuthUser,
    origin: &Origin,
    raw_id: &str,
    action: Action,
    result: &Result<HttpResponse, ApiError>,
) {
    if let Some(event) = Event::for_result(action, result) {
        state.audit.record(
            origin,
            event
                .on(ResourceType::Environment, Uuid::parse_str(raw_id).ok())
                .by(caller.user.id),
        );
    }
}

/// Resource use measured on the machine.
#[derive(Serialize, ToSchema)]
#[schema(as = Metrics)]
struct MetricsResponse {
    /// Percent of CPU time busy over a 0.2 s sample.
    cpu_usage: f64,
    /// Percent of memory in use.
    memory_usage: f64,
    /// Percent of the home file system in use.
    disk_usage: f64,
    /// Bytes received since boot, all interfaces but loopback.
    network_in: u64,
    /// Bytes sent since boot, all interfaces but loopback.
    network_out: u64,
    /// When the sample was taken (reused for 5 s).
    timestamp: DateTime<Utc>,
}

impl From<Metrics> for MetricsResponse {
    fn from(m: Metrics) -> Self {
        Self {
            cpu_usage: m.cpu_usage,
            memory_usage: m.memory_usage,
            disk_usage: m.disk_usage,
            network_in: m.network_in,
            network_out: m.network_out,
            timestamp: m.timestamp,
        }
    }
}

/// Measure an environment's resource use.
///
/// Measured on the machine over SSH; a machine that is not `running`/`ready` is
/// 409, one that cannot be reached 503.
#[utoipa::path(
    get,
    path = "/api/v1/environments/{id}/metrics",
    tag = "environments",
    params(("id" = Uuid, Path, description = "The environment's id; a malformed one is a 404.")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = MetricsResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn get_metrics(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(&id)?;
    let addr = actor(&state, &caller, id).await?;
    let sample = match addr.send(GetMetrics).await {
        Ok(sample) => sample.map_err(ApiError::from),
        Err(e) => Err(ApiError::ServiceUnavailable(format!(
            "The environment's controller is restarting ({e}); try again."
        ))),
    };
    match sample {
        Ok(metrics) => Ok(HttpResponse::Ok().json(MetricsResponse::from(metrics))),
        // Stopped or deleted while it was measured (its machine went away, its actor
        // stopped): answered as if the request had come just after, 409 or 404.
        Err(ApiError::ServiceUnavailable(detail)) => {
            let now = load(&state, &caller, id).await?;
            if now.status == Status::Running.as_str() && now.phase == Phase::Ready.as_str() {
                return Err(ApiError::ServiceUnavailable(detail));
            }
            Err(ApiError::Conflict {
                detail: format!(
                    "Metrics are measured on a running machine; this one is {} ({}).",
                    now.status, now.phase
                ),
                context: json!({}),
            })
        }
        Err(err) => Err(err),
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct LogsQuery {
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
async fn get_logs(
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
