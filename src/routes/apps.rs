//! `/api/v1/projects` and `/api/v1/apps`: projects group a user's compose apps;
//! an app lives in a directory of one of their servers and is started (`up -d`)
//! and stopped (`down`) there, in the background of the request (202), with the
//! outcome in its `status` and its runs' output in `GET /apps/{id}/logs`. Another
//! user's project or app is a 404.

use actix_web::{HttpResponse, web};
use chrono::Utc;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::apps::{self, AppInput, AppResponse, Run, RunResponse, not_found};
use crate::audit::{Action, Event, Origin, ResourceType};
use crate::auth::AuthUser;
use crate::db::apps::{self as db, App, AppChanges, Project};
use crate::db::servers::{self as servers_db, Refused};
use crate::error::ApiError;
use crate::http::Json;
use crate::openapi::{
    BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized,
    Unavailable, Unprocessable, UnsupportedMediaType,
};
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/projects")
            .route("", web::get().to(list_projects))
            .route("", web::post().to(create_project))
            .route("/{id}", web::get().to(get_project))
            .route("/{id}", web::put().to(update_project))
            .route("/{id}", web::delete().to(delete_project)),
    )
    .service(
        web::scope("/apps")
            .route("", web::get().to(list_apps))
            .route("", web::post().to(create_app))
            .route("/{id}", web::get().to(get_app))
            .route("/{id}", web::put().to(update_app))
            .route("/{id}", web::delete().to(delete_app))
            .route("/{id}/start", web::post().to(start_app))
            .route("/{id}/stop", web::post().to(stop_app))
            .route("/{id}/extend", web::post().to(extend_app))
            .route("/{id}/logs", web::get().to(app_logs)),
    );
}

fn project_not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("No project with id {id}."))
}

fn parse(raw: &str, missing: fn(&str) -> ApiError) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| missing(raw))
}

/// A database error as the API answers it: a unique name already used is
/// `name_taken` for `what`.
fn or_name_taken(what: &'static str) -> impl Fn(diesel::result::Error) -> ApiError {
    move |e| {
        if db::is_name_taken(&e) {
            name_taken(what)
        } else {
            e.into()
        }
    }
}

fn name_taken(what: &str) -> ApiError {
    ApiError::State {
        code: "name_taken",
        detail: format!("You already have {what} with that name; choose another."),
        context: json!({ "field": "name" }),
    }
}

fn record(
    state: &AppState,
    caller: &AuthUser,
    origin: &Origin,
    action: Action,
    resource: (ResourceType, Option<Uuid>),
    details: Value,
    result: &Result<impl Sized, ApiError>,
) {
    if let Some(event) = Event::for_result(action, result) {
        state.audit.record(
            origin,
            event
                .on(resource.0, resource.1)
                .by(caller.user.id)
                .details(details),
        );
    }
}

/// A project as the app reads it.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Project)]
pub struct ProjectResponse {
    pub id: Uuid,
    #[schema(example = "side projects")]
    pub name: String,
    pub description: String,
    /// Its apps' ids.
    pub app_ids: Vec<Uuid>,
    pub created_at: chrono::DateTime<Utc>,
    pub updated_at: chrono::DateTime<Utc>,
}

async fn project_response(state: &AppState, p: Project) -> Result<ProjectResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let apps = db::list_apps(&mut conn, p.user_id, Some(p.id), None).await?;
    Ok(ProjectResponse {
        id: p.id,
        name: p.name,
        description: p.description,
        app_ids: apps.into_iter().map(|a| a.id).collect(),
        created_at: p.created_at,
        updated_at: p.updated_at,
    })
}

/// The body of a project's create or change.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct ProjectBody {
    /// 1 to 64 characters, unique among your projects (required to create).
    name: Option<String>,
    /// At most 1000 characters.
    description: Option<String>,
}

fn project_fields(
    body: &ProjectBody,
    create: bool,
) -> Result<(Option<String>, Option<String>), ApiError> {
    let name = match &body.name {
        None if create => return Err(ApiError::validation("name", "is required")),
        None => None,
        Some(n) => Some(apps::name(n).map_err(|e| ApiError::validation("name", e))?),
    };
    let description = match &body.description {
        Some(d) if d.chars().count() > 1000 => {
            return Err(ApiError::validation(
                "description",
                "must be at most 1000 characters",
            ));
        }
        d => d.clone(),
    };
    Ok((name, description))
}

/// `GET /projects`: a bare array, oldest first.
#[utoipa::path(get, path = "/api/v1/projects", tag = "servers", summary = "List your projects.",
    security(("bearer" = [])),
    responses((status = 200, body = Vec<ProjectResponse>), (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests), (status = 503, response = Unavailable)))]
async fn list_projects(
    state: web::Data<AppState>,
    caller: AuthUser,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let projects = db::list_projects(&mut conn, caller.user.id).await?;
    drop(conn);
    let mut body = Vec::with_capacity(projects.len());
    for p in projects {
        body.push(project_response(&state, p).await?);
    }
    Ok(HttpResponse::Ok().json(body))
}

/// `POST /projects` → 201.
#[utoipa::path(post, path = "/api/v1/projects", tag = "servers", summary = "Create a project.",
    request_body = ProjectBody, security(("bearer" = [])),
    responses((status = 201, body = ProjectResponse), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized), (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge), (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable), (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable)))]
async fn create_project(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    body: Json<ProjectBody>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        let (name, description) = project_fields(&body.0, true)?;
        let mut conn = state.pool.get().await?;
        let name = name.unwrap_or_default();
        db::insert_project(
            &mut conn,
            caller.user.id,
            &name,
            description.as_deref().unwrap_or(""),
        )
        .await
        .map_err(or_name_taken("a project"))
    }
    .await;
    let id = result.as_ref().ok().map(|p| p.id);
    record(
        &state,
        &caller,
        &origin,
        Action::ProjectCreate,
        (ResourceType::Project, id),
        json!({"name": body.0.name}),
        &result,
    );
    Ok(HttpResponse::Created().json(project_response(&state, result?).await?))
}

/// `GET /projects/{id}`.
#[utoipa::path(get, path = "/api/v1/projects/{id}", tag = "servers", summary = "Get a project.",
    params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = ProjectResponse), (status = 401, response = Unauthorized),
        (status = 404, response = NotFound), (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable)))]
async fn get_project(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let pid = parse(&id, project_not_found)?;
    let mut conn = state.pool.get().await?;
    let project = db::find_project(&mut conn, caller.user.id, pid)
        .await?
        .ok_or_else(|| project_not_found(&id))?;
    drop(conn);
    Ok(HttpResponse::Ok().json(project_response(&state, project).await?))
}

/// `PUT /projects/{id}`.
#[utoipa::path(put, path = "/api/v1/projects/{id}", tag = "servers", summary = "Change a project.",
    params(("id" = Uuid, Path)), request_body = ProjectBody, security(("bearer" = [])),
    responses((status = 200, body = ProjectResponse), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized), (status = 404, response = NotFound),
        (status = 409, response = Conflict), (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType), (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests), (status = 503, response = Unavailable)))]
async fn update_project(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
    body: Json<ProjectBody>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        let pid = parse(&id, project_not_found)?;
        let (name, description) = project_fields(&body.0, false)?;
        let mut conn = state.pool.get().await?;
        db::update_project(
            &mut conn,
            caller.user.id,
            pid,
            name.as_deref(),
            description.as_deref(),
        )
        .await
        .map_err(or_name_taken("a project"))?
        .ok_or_else(|| project_not_found(&id))
    }
    .await;
    let pid = Uuid::parse_str(&id).ok();
    record(
        &state,
        &caller,
        &origin,
        Action::ProjectUpdate,
        (ResourceType::Project, pid),
        json!({"name": body.0.name}),
        &result,
    );
    Ok(HttpResponse::Ok().json(project_response(&state, result?).await?))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct DeleteQuery {
    /// `true`: stop the project's apps and delete them with it.
    cascade: Option<bool>,
}

/// `DELETE /projects/{id}[?cascade=true]` → 204.
#[utoipa::path(delete, path = "/api/v1/projects/{id}", tag = "servers", summary = "Delete a project.",
    description = "A project with apps is a 409 naming them, unless `cascade=true`: then each app \
        is stopped (`down`, waited for) and deleted first; one that is starting or stopping is a 409.",
    params(("id" = Uuid, Path), DeleteQuery), security(("bearer" = [])),
    responses((status = 204, description = "Deleted."), (status = 401, response = Unauthorized),
        (status = 404, response = NotFound), (status = 409, response = Conflict),
        (status = 422, response = Unprocessable), (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable)))]
async fn delete_project(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
    query: web::Query<DeleteQuery>,
) -> Result<HttpResponse, ApiError> {
    let cascade = query.cascade.unwrap_or(false);
    let result = async {
        let pid = parse(&id, project_not_found)?;
        let mut conn = state.pool.get().await?;
        db::find_project(&mut conn, caller.user.id, pid)
            .await?
            .ok_or_else(|| project_not_found(&id))?;
        let apps = db::list_apps(&mut conn, caller.user.id, Some(pid), None).await?;
        drop(conn);
        if !apps.is_empty() && !cascade {
            let names: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
            return Err(ApiError::State {
                code: "project_has_apps",
                detail: format!(
                    "The project still has apps ({}): delete them first, or delete with ?cascade=true to stop and delete them.",
                    names.join(", ")
                ),
                context: json!({ "apps": names }),
            });
        }
        for app in apps {
            stop_and_delete(&state, &caller, app).await?;
        }
        let mut conn = state.pool.get().await?;
        if !db::delete_project(&mut conn, caller.user.id, pid).await? {
            return Err(ApiError::State {
                code: "project_has_apps",
                detail: "An app was added to the project meanwhile; try again.".into(),
                context: json!({}),
            });
        }
        Ok(())
    }
    .await;
    let pid = Uuid::parse_str(&id).ok();
    record(
        &state,
        &caller,
        &origin,
        Action::ProjectDelete,
        (ResourceType::Project, pid),
        json!({"cascade": cascade}),
        &result,
    );
    result?;
    Ok(HttpResponse::NoContent().finish())
}

/// For a cascade: stops a running app (waiting for `down`) and deletes it.
async fn stop_and_delete(state: &AppState, caller: &AuthUser, app: App) -> Result<(), ApiError> {
    if app.status == "running" {
        let mut conn = state.pool.get().await?;
        let server = servers_db::find_owned(&mut conn, caller.user.id, app.server_id)
            .await?
            .ok_or_else(|| crate::servers::not_found(&app.server_id.to_string()))?;
        let (app, run) = db::begin_run(&mut conn, app.id, &["running"], "stopping", "stop")
            .await?
            .ok_or_else(|| busy(&app))?;
        drop(conn);
        apps::run_now(
            state,
            Run {
                app: app.clone(),
                server,
                run,
                action: Action::AppStop,
            },
        )
        .await;
        let mut conn = state.pool.get().await?;
        let now = db::find_app(&mut conn, caller.user.id, app.id).await?;
        if now.as_ref().is_some_and(|a| a.status != "stopped") {
            return Err(ApiError::State {
                code: "app_stop_failed",
                detail: format!(
                    "Stopping the app {} failed; see its logs. Nothing was deleted after it.",
                    app.name
                ),
                context: json!({ "app_id": app.id }),
            });
        }
    }
    let mut conn = state.pool.get().await?;
    if !db::delete_app(&mut conn, caller.user.id, app.id).await? {
        return Err(busy(&app));
    }
    Ok(())
}

fn busy(app: &App) -> ApiError {
    ApiError::State {
        code: "operation_in_progress",
        detail: format!(
            "The app {} is {}: wait until that finishes.",
            app.name, app.status
        ),
        context: json!({ "status": app.status }),
    }
}

async fn owned_app(state: &AppState, caller: &AuthUser, raw: &str) -> Result<App, ApiError> {
    let id = parse(raw, not_found)?;
    let mut conn = state.pool.get().await?;
    db::find_app(&mut conn, caller.user.id, id)
        .await?
        .ok_or_else(|| not_found(raw))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct AppFilter {
    /// Only the apps of this project.
    project_id: Option<Uuid>,
    /// Only the apps on this server.
    server_id: Option<Uuid>,
}

/// `GET /apps`: a bare array, oldest first.
#[utoipa::path(get, path = "/api/v1/apps", tag = "servers", summary = "List your apps.",
    params(AppFilter), security(("bearer" = [])),
    responses((status = 200, body = Vec<AppResponse>), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized), (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable)))]
async fn list_apps(
    state: web::Data<AppState>,
    caller: AuthUser,
    filter: web::Query<AppFilter>,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let apps = db::list_apps(
        &mut conn,
        caller.user.id,
        filter.project_id,
        filter.server_id,
    )
    .await?;
    Ok(HttpResponse::Ok().json(apps.into_iter().map(AppResponse::from).collect::<Vec<_>>()))
}

/// The body of `POST /apps`.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // Describes the JSON object `AppInput` reads.
struct CreateApp {
    #[schema(example = "blog")]
    name: String,
    project_id: Uuid,
    server_id: Uuid,
    /// An absolute directory on the server, holding the compose file.
    #[schema(example = "/srv/blog")]
    path: String,
    /// Relative to `path`; default: compose's own (`compose.yaml`, `docker-compose.yml`).
    compose_file: Option<String>,
    /// Where the app answers (http or https).
    url: Option<String>,
    /// Default 60; 0: never stopped by itself.
    auto_stop_minutes: Option<i32>,
}

/// `POST /apps` → 201.
#[utoipa::path(post, path = "/api/v1/apps", tag = "servers", summary = "Add a compose app.",
    description = "The project and the server must be yours (else 422 naming the field). 403 \
        `quota_exceeded` over the plan's apps; 409 `name_taken` in the project.",
    request_body = CreateApp, security(("bearer" = [])),
    responses((status = 201, body = AppResponse), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized), (status = 403, response = Forbidden),
        (status = 409, response = Conflict), (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType), (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests), (status = 503, response = Unavailable)))]
async fn create_app(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    body: Json<Map<String, Value>>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        let input = AppInput::from_json(&body.0, true)?;
        let (project_id, server_id) = (
            input.project_id.unwrap_or_default(),
            input.server_id.unwrap_or_default(),
        );
        let mut conn = state.pool.get().await?;
        if db::find_project(&mut conn, caller.user.id, project_id)
            .await?
            .is_none()
        {
            return Err(ApiError::validation(
                "project_id",
                "is not one of your projects",
            ));
        }
        if servers_db::find_owned(&mut conn, caller.user.id, server_id)
            .await?
            .is_none()
        {
            return Err(ApiError::validation(
                "server_id",
                "is not one of your servers",
            ));
        }
        let now = Utc::now();
        let app = App {
            id: Uuid::new_v4(),
            user_id: caller.user.id,
            project_id,
            server_id,
            name: input.name.unwrap_or_default(),
            path: input.path.unwrap_or_default(),
            compose_file: input.compose_file.flatten(),
            url: input.url.flatten(),
            auto_stop_minutes: input.auto_stop_minutes.unwrap_or(60),
            status: "stopped".into(),
            status_message: None,
            stops_at: None,
            services_running: None,
            last_checked: None,
            created_at: now,
            updated_at: now,
        };
        db::insert_app(&mut conn, &app).await?.map_err(|r| match r {
            Refused::Quota { plan, max } => ApiError::Refused {
                code: "quota_exceeded",
                detail: format!("The {plan} plan allows {max} apps; delete one or change plans."),
            },
            Refused::NameTaken => name_taken("an app in this project"),
        })
    }
    .await;
    let id = result.as_ref().ok().map(|a| a.id);
    record(
        &state,
        &caller,
        &origin,
        Action::AppCreate,
        (ResourceType::App, id),
        json!({"name": body.0.get("name"), "path": body.0.get("path")}),
        &result,
    );
    Ok(HttpResponse::Created().json(AppResponse::from(result?)))
}

/// `GET /apps/{id}`.
#[utoipa::path(get, path = "/api/v1/apps/{id}", tag = "servers", summary = "Get an app.",
    params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = AppResponse), (status = 401, response = Unauthorized),
        (status = 404, response = NotFound), (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable)))]
async fn get_app(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    Ok(HttpResponse::Ok().json(AppResponse::from(owned_app(&state, &caller, &id).await?)))
}

/// `PUT /apps/{id}`.
#[utoipa::path(put, path = "/api/v1/apps/{id}", tag = "servers", summary = "Change an app.",
    description = "Any of `name`, `project_id`, `path`, `compose_file`, `url`, `auto_stop_minutes` \
        (`server_id` cannot change). A new `auto_stop_minutes` applies from the next start or extend.",
    params(("id" = Uuid, Path)), request_body(content = Object, description = "Some fields of an app."),
    security(("bearer" = [])),
    responses((status = 200, body = AppResponse), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized), (status = 404, response = NotFound),
        (status = 409, response = Conflict), (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType), (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests), (status = 503, response = Unavailable)))]
async fn update_app(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
    body: Json<Map<String, Value>>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        let app = owned_app(&state, &caller, &id).await?;
        let input = AppInput::from_json(&body.0, false)?;
        let mut conn = state.pool.get().await?;
        if let Some(project) = input.project_id
            && db::find_project(&mut conn, caller.user.id, project)
                .await?
                .is_none()
        {
            return Err(ApiError::validation(
                "project_id",
                "is not one of your projects",
            ));
        }
        let changes = AppChanges {
            name: input.name,
            project_id: input.project_id,
            path: input.path,
            compose_file: input.compose_file,
            url: input.url,
            auto_stop_minutes: input.auto_stop_minutes,
        };
        db::update_app(&mut conn, caller.user.id, app.id, &changes)
            .await
            .map_err(or_name_taken("an app in this project"))?
            .ok_or_else(|| not_found(&id))
    }
    .await;
    let fields: Vec<&String> = body.0.keys().collect();
    record(
        &state,
        &caller,
        &origin,
        Action::AppUpdate,
        (ResourceType::App, Uuid::parse_str(&id).ok()),
        json!({"fields": fields}),
        &result,
    );
    Ok(HttpResponse::Ok().json(AppResponse::from(result?)))
}

/// `DELETE /apps/{id}` → 204.
#[utoipa::path(delete, path = "/api/v1/apps/{id}", tag = "servers", summary = "Delete an app.",
    description = "Only a stopped (or failed) app: a running one is a 409 `app_running` (stop it \
        first). Nothing on the server is touched.",
    params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 204, description = "Deleted."), (status = 401, response = Unauthorized),
        (status = 404, response = NotFound), (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests), (status = 503, response = Unavailable)))]
async fn delete_app(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        let app = owned_app(&state, &caller, &id).await?;
        let mut conn = state.pool.get().await?;
        if db::delete_app(&mut conn, caller.user.id, app.id).await? {
            Ok(())
        } else {
            Err(ApiError::State {
                code: "app_running",
                detail: format!("The app {} is {}: stop it first.", app.name, app.status),
                context: json!({ "status": app.status }),
            })
        }
    }
    .await;
    record(
        &state,
        &caller,
        &origin,
        Action::AppDelete,
        (ResourceType::App, Uuid::parse_str(&id).ok()),
        json!({}),
        &result,
    );
    result?;
    Ok(HttpResponse::NoContent().finish())
}

/// Begins a start or a stop of the caller's app and runs it in the background.
async fn begin(
    state: web::Data<AppState>,
    caller: &AuthUser,
    id: &str,
    action: Action,
) -> Result<App, ApiError> {
    let app = owned_app(&state, caller, id).await?;
    let mut conn = state.pool.get().await?;
    let server = servers_db::find_owned(&mut conn, caller.user.id, app.server_id)
        .await?
        .ok_or_else(|| crate::servers::not_found(&app.server_id.to_string()))?;
    if server.host_key.is_none() {
        return Err(ApiError::State {
            code: "server_not_trusted",
            detail: format!(
                "The server {} has no trusted host key yet: confirm it (POST /api/v1/servers/{}/trust) first.",
                server.name, server.id
            ),
            context: json!({ "server_id": server.id }),
        });
    }
    let (from, to, name): (&[&str], _, _) = match action {
        Action::AppStart => (&["stopped", "error", "running"], "starting", "start"),
        _ => (&["running", "error"], "stopping", "stop"),
    };
    let Some((begun, run)) = db::begin_run(&mut conn, app.id, from, to, name).await? else {
        return Err(if app.status == "stopped" && action == Action::AppStop {
            ApiError::State {
                code: "app_not_running",
                detail: format!("The app {} is stopped already.", app.name),
                context: json!({ "status": app.status }),
            }
        } else {
            busy(&app)
        });
    };
    apps::spawn_run(
        state.into_inner(),
        Run {
            app: begun.clone(),
            server,
            run,
            action,
        },
    )
    .await;
    Ok(begun)
}

/// A start or a stop, audited, answered 202 with the app as it now is.
async fn begun(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
    action: Action,
) -> Result<HttpResponse, ApiError> {
    let result = begin(state.clone(), &caller, &id, action).await;
    let app = (ResourceType::App, Uuid::parse_str(&id).ok());
    record(&state, &caller, &origin, action, app, json!({}), &result);
    Ok(HttpResponse::Accepted().json(AppResponse::from(result?)))
}

/// `POST /apps/{id}/start` → 202, `starting`.
#[utoipa::path(post, path = "/api/v1/apps/{id}/start", tag = "servers", summary = "Start an app.",
    description = "Runs `compose up -d` in the app's directory on its server, in the background: \
        the answer is `starting`; the app becomes `running` (with `stops_at`, `auto_stop_minutes` \
        from now) or `error` with the reason, and the run's output is in `GET /apps/{id}/logs`. \
        409 `operation_in_progress` while a start or stop runs; `server_not_trusted`.",
    params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 202, body = AppResponse), (status = 401, response = Unauthorized),
        (status = 404, response = NotFound), (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests), (status = 503, response = Unavailable)))]
async fn start_app(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    begun(state, caller, origin, id, Action::AppStart).await
}

/// `POST /apps/{id}/stop` → 202, `stopping`.
#[utoipa::path(post, path = "/api/v1/apps/{id}/stop", tag = "servers", summary = "Stop an app.",
    description = "Runs `compose down` there, in the background: the answer is `stopping`; then \
        `stopped` or `error`. 409 `app_not_running`, `operation_in_progress`, `server_not_trusted`.",
    params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 202, body = AppResponse), (status = 401, response = Unauthorized),
        (status = 404, response = NotFound), (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests), (status = 503, response = Unavailable)))]
async fn stop_app(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    begun(state, caller, origin, id, Action::AppStop).await
}

/// The body of `POST /apps/{id}/extend`.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // Describes the JSON object `apps::extend_minutes` reads.
struct Extend {
    /// 1 to 10080 (a week).
    minutes: i64,
}

/// `POST /apps/{id}/extend {minutes}`: the app stops that long from now.
#[utoipa::path(post, path = "/api/v1/apps/{id}/extend", tag = "servers", summary = "Keep an app up longer.",
    description = "A running app then stops `minutes` from now (whatever `stops_at` was). 409 \
        `app_not_running` otherwise.",
    params(("id" = Uuid, Path)), request_body = Extend, security(("bearer" = [])),
    responses((status = 200, body = AppResponse), (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized), (status = 404, response = NotFound),
        (status = 409, response = Conflict), (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable), (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable)))]
async fn extend_app(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
    body: Json<Value>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        let app = owned_app(&state, &caller, &id).await?;
        let minutes = apps::extend_minutes(&body.0)?;
        let until = apps::after_minutes(&state, minutes);
        let mut conn = state.pool.get().await?;
        db::set_stops_at(&mut conn, caller.user.id, app.id, until)
            .await?
            .ok_or_else(|| ApiError::State {
                code: "app_not_running",
                detail: format!(
                    "The app {} is {}: only a running app is extended.",
                    app.name, app.status
                ),
                context: json!({ "status": app.status }),
            })
    }
    .await;
    if let Ok(app) = &result {
        apps::reschedule(&state.clone().into_inner(), app).await;
    }
    record(
        &state,
        &caller,
        &origin,
        Action::AppExtend,
        (ResourceType::App, Uuid::parse_str(&id).ok()),
        json!({"minutes": body.0.get("minutes")}),
        &result,
    );
    Ok(HttpResponse::Ok().json(AppResponse::from(result?)))
}

/// What `GET /apps/{id}/logs` answers.
#[derive(Serialize, ToSchema)]
struct AppLogs {
    /// The latest runs, newest first (at most 20).
    runs: Vec<RunResponse>,
}

/// `GET /apps/{id}/logs`: its latest starts and stops with their output.
#[utoipa::path(get, path = "/api/v1/apps/{id}/logs", tag = "servers", summary = "An app's latest runs.",
    params(("id" = Uuid, Path)), security(("bearer" = [])),
    responses((status = 200, body = AppLogs), (status = 401, response = Unauthorized),
        (status = 404, response = NotFound), (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable)))]
async fn app_logs(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let app = owned_app(&state, &caller, &id).await?;
    let mut conn = state.pool.get().await?;
    let runs = db::runs(&mut conn, app.id, 20).await?;
    Ok(HttpResponse::Ok().json(AppLogs {
        runs: runs.into_iter().map(RunResponse::from).collect(),
    }))
}
