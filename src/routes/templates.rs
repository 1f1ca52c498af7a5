//! `/api/v1/templates`: the catalogue of environment templates. Everyone signed in
//! reads it; admins create, change and deprecate templates (DELETE deprecates, so
//! environments made from a template keep their reference).

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::audit::{Action, Event, Origin, ResourceType};
use crate::auth::AuthUser;
use crate::db::json::{StoredJson, Unreadable};
use crate::db::templates::{self as store, ListFilter, Template};
use crate::error::ApiError;
use crate::http::Json;
use crate::openapi::{
    BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized,
    Unavailable, Unprocessable, UnsupportedMediaType,
};
use crate::plans::Plan;
use crate::startup::AppState;
use crate::templates::{self, Category, Status, TemplateSpec};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::resource("/templates")
            .route(web::get().to(list_templates))
            .route(web::post().to(create_template)),
    )
    .service(
        web::resource("/templates/{id}")
            .route(web::get().to(get_template))
            .route(web::put().to(update_template))
            .route(web::delete().to(delete_template)),
    );
}

/// The template object of the app's contract, plus what older app versions read
/// (`image`, `icon`, `featured`, `config`). The script and the machine set-up
/// (`bootstrap`, `packages`, `cloud_init`) are shown to admins only.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Template)]
pub struct TemplateResponse {
    pub id: Uuid,
    /// Unique, case-insensitive; `template_id` of a new environment may name it.
    #[schema(example = "python")]
    pub name: String,
    #[schema(example = "Python 3")]
    pub display_name: String,
    pub description: String,
    pub category: Category,
    #[schema(value_type = Vec<String>)]
    pub tags: Value,
    #[schema(example = "ubuntu:22.04")]
    pub docker_image: String,
    #[schema(value_type = BTreeMap<String, String>, example = json!({"cpu": "1", "memory": "1Gi", "storage": "10Gi"}))]
    pub default_resources: Value,
    #[schema(value_type = BTreeMap<String, String>)]
    pub environment_variables: Value,
    #[schema(value_type = Vec<String>)]
    pub startup_commands: Value,
    pub status: Status,
    #[schema(example = "1.0.0")]
    pub version: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Environments made from it, deleted ones included.
    pub usage_count: i64,
    pub default_port: Option<i32>,
    pub documentation_url: Option<String>,
    pub icon_url: Option<String>,
    /// `docker_image` again, for older apps.
    pub image: String,
    /// `icon_url` again, for older apps.
    pub icon: Option<String>,
    /// True for the built-in templates (older apps).
    pub featured: bool,
    /// `{default_port, default_resources, startup_commands}`, for older apps.
    #[schema(value_type = Object)]
    pub config: Value,
    /// Admins only: the bootstrap script.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<String>,
    /// Admins only: apt packages a cloud machine installs.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Vec<String>>)]
    pub packages: Option<Value>,
    /// Admins only: extra cloud-config.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub cloud_init: Option<Value>,
}

impl TemplateResponse {
    /// The template as the caller may see it; a row with a stored value that cannot
    /// be read has no faithful answer.
    pub fn new(t: Template, usage_count: i64, admin: bool) -> Result<Self, Unreadable> {
        let json = |column, value: StoredJson| value.read(column).cloned();
        let tags = json("tags", t.tags)?;
        let default_resources = json("default_resources", t.default_resources)?;
        let environment_variables = json("environment_variables", t.environment_variables)?;
        let startup_commands = json("startup_commands", t.startup_commands)?;
        let packages = json("packages", t.packages)?;
        let cloud_init = json("cloud_init", t.cloud_init)?;
        let config = json!({
            "default_port": t.default_port,
            "default_resources": default_resources,
            "startup_commands": startup_commands,
        });
        let (bootstrap, packages, cloud_init) = if admin {
            (Some(t.bootstrap), Some(packages), Some(cloud_init))
        } else {
            (None, None, None)
        };
        Ok(Self {
            featured: templates::is_builtin(&t.name),
            image: t.docker_image.clone(),
            icon: t.icon_url.clone(),
            config,
            id: t.id,
            name: t.name,
            display_name: t.display_name,
            description: t.description,
            category: t.category,
            tags,
            docker_image: t.docker_image,
            default_resources,
            environment_variables,
            startup_commands,
            status: t.status,
            version: t.version,
            created_at: t.created_at,
            updated_at: t.updated_at,
            usage_count,
            default_port: t.default_port,
            documentation_url: t.documentation_url,
            icon_url: t.icon_url,
            bootstrap,
            packages,
            cloud_init,
        })
    }
}

fn is_admin(caller: &AuthUser) -> bool {
    caller.user.subscription_plan == Plan::Admin
}

fn require_admin(caller: &AuthUser) -> Result<(), ApiError> {
    if is_admin(caller) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(
            "Only administrators can create, change or deprecate templates.".into(),
        ))
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
struct ListQuery {
    /// Only this category: `programming_language`, `framework`, `database`,
    /// `devops` or `operating_system`. Empty: any.
    category: Option<String>,
    /// At most 100 characters, matched case-insensitively against the name,
    /// display name, description and tags. Empty: no filter.
    search: Option<String>,
}

impl ListQuery {
    /// Empty parameters mean "no filter", as a form with blank fields sends them.
    fn to_filter<'a>(&'a self, admin: bool) -> Result<ListFilter<'a>, ApiError> {
        let category = match self.category.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(c) => Some(c.parse().map_err(|_| {
                ApiError::validation(
                    "category",
                    format!("must be one of: {}", Category::allowed()),
                )
            })?),
        };
        let search = self
            .search
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty());
        if search.is_some_and(|s| s.chars().count() > 100) {
            return Err(ApiError::validation(
                "search",
                "must be at most 100 characters",
            ));
        }
        Ok(ListFilter {
            category,
            search,
            include_deprecated: admin,
        })
    }
}

/// `GET /templates`: a bare array, by name; deprecated ones only for admins.
#[utoipa::path(
    get,
    path = "/api/v1/templates",
    tag = "templates",
    summary = "List templates.",
    description = "A bare array sorted by name. Deprecated templates are listed for admins only.",
    params(ListQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<TemplateResponse>),
        (status = 401, response = Unauthorized),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn list_templates(
    state: web::Data<AppState>,
    caller: AuthUser,
    query: web::Query<ListQuery>,
) -> Result<HttpResponse, ApiError> {
    let admin = is_admin(&caller);
    let filter = query.to_filter(admin)?;
    let mut conn = state.pool.get().await?;
    let rows = store::list(&mut conn, &filter).await?;
    let ids: Vec<Uuid> = rows.iter().map(|t| t.id).collect();
    let counts = store::usage_counts(&mut conn, &ids).await?;
    // One row that cannot be read must not take the others with it.
    let body: Vec<TemplateResponse> = rows
        .into_iter()
        .filter_map(|t| {
            let (id, used) = (t.id, counts.get(&t.id).copied().unwrap_or(0));
            TemplateResponse::new(t, used, admin)
                .inspect_err(|err| err.log("templates", id))
                .ok()
        })
        .collect();
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /templates/{id or name}`. A deprecated template is a 404 for non-admins.
#[utoipa::path(
    get,
    path = "/api/v1/templates/{id}",
    tag = "templates",
    summary = "Get a template.",
    description = "A deprecated template is a 404 for non-admins.",
    params(("id" = String, Path, description = "The template's id or its name (case-insensitive).")),
    security(("bearer" = [])),
    responses(
        (status = 200, body = TemplateResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn get_template(
    state: web::Data<AppState>,
    caller: AuthUser,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let admin = is_admin(&caller);
    let mut conn = state.pool.get().await?;
    let template = store::find_by_id_or_name(&mut conn, &key)
        .await?
        .filter(|t| admin || t.status != Status::Deprecated)
        .ok_or_else(|| templates::not_found(&key))?;
    respond_on(&mut conn, HttpResponse::Ok(), template, admin).await
}

/// `POST /templates` (admin): the body is a template as in a file → 201.
#[utoipa::path(
    post,
    path = "/api/v1/templates",
    tag = "templates",
    summary = "Create a template (admin).",
    description = "The body is a template as in a template file, as JSON. Read-only fields of the \
        template object (`id`, `created_at`, `updated_at`, `usage_count`, `image`, `icon`, \
        `featured`, `config`) are ignored, so a fetched template can be sent back.",
    request_body = TemplateSpec,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Created; as admins see it.", body = TemplateResponse),
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
async fn create_template(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    body: Json<Map<String, Value>>,
) -> Result<HttpResponse, ApiError> {
    let name = body
        .0
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let result = async {
        require_admin(&caller)?;
        let spec = TemplateSpec::from_json(body.into_inner())?;
        let mut conn = state.pool.get().await?;
        templates::create(&mut conn, &spec).await
    }
    .await;
    audit(
        &state,
        &caller,
        &origin,
        Action::TemplateCreate,
        name,
        &result,
    );
    respond(&state, HttpResponse::Created(), result?, true).await
}

/// `PUT /templates/{id or name}` (admin): the fields sent replace the stored ones.
#[utoipa::path(
    put,
    path = "/api/v1/templates/{id}",
    tag = "templates",
    summary = "Change a template (admin).",
    description = "The fields sent (any of `TemplateSpec`'s) replace the stored ones; `null` \
        clears an optional one. The result is validated as a whole.",
    params(("id" = String, Path, description = "The template's id or its name (case-insensitive).")),
    request_body(content = Object, description = "Some fields of a `TemplateSpec`."),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Changed; as admins see it.", body = TemplateResponse),
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
async fn update_template(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    key: web::Path<String>,
    body: Json<Map<String, Value>>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        require_admin(&caller)?;
        let mut conn = state.pool.get().await?;
        templates::update(&mut conn, &key, body.into_inner()).await
    }
    .await;
    // Every list of environments names its templates.
    crate::listener::publish(&state, crate::listener::Invalidation::AllLists);
    let key = key.into_inner();
    audit(
        &state,
        &caller,
        &origin,
        Action::TemplateUpdate,
        Some(key),
        &result,
    );
    respond(&state, HttpResponse::Ok(), result?, true).await
}

/// `DELETE /templates/{id or name}` (admin): marks it deprecated and answers 200
/// with the template, so the caller sees the new status.
#[utoipa::path(
    delete,
    path = "/api/v1/templates/{id}",
    tag = "templates",
    summary = "Deprecate a template (admin).",
    description = "Deprecates rather than removes, so environments made from it keep working; \
        a `PUT` with `status: active` brings it back.",
    params(("id" = String, Path, description = "The template's id or its name (case-insensitive).")),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The template, now `deprecated`.", body = TemplateResponse),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn delete_template(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    key: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        require_admin(&caller)?;
        let mut conn = state.pool.get().await?;
        templates::deprecate(&mut conn, &key).await
    }
    .await;
    let key = key.into_inner();
    audit(
        &state,
        &caller,
        &origin,
        Action::TemplateDeprecate,
        Some(key),
        &result,
    );
    respond(&state, HttpResponse::Ok(), result?, true).await
}

/// Records an admin change to a template: the template's id once known, and the
/// name or key the request used.
fn audit(
    state: &AppState,
    caller: &AuthUser,
    origin: &Origin,
    action: Action,
    key: Option<String>,
    result: &Result<Template, ApiError>,
) {
    if let Some(event) = Event::for_result(action, result) {
        let template = result.as_ref().ok();
        state.audit.record(
            origin,
            event
                .on(ResourceType::Template, template.map(|t| t.id))
                .by(caller.user.id)
                .details(json!({ "template": template.map(|t| &t.name).or(key.as_ref()) })),
        );
    }
}

/// Answers with one template as an admin sees it, on a connection of its own.
async fn respond(
    state: &AppState,
    builder: actix_web::HttpResponseBuilder,
    template: Template,
    admin: bool,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    respond_on(&mut conn, builder, template, admin).await
}

/// Answers with one template as an admin sees it (or not), counting its environments.
async fn respond_on(
    conn: &mut diesel_async::AsyncPgConnection,
    mut builder: actix_web::HttpResponseBuilder,
    template: Template,
    admin: bool,
) -> Result<HttpResponse, ApiError> {
    let (id, used) = (template.id, store::usage_count(conn, template.id).await?);
    let response = TemplateResponse::new(template, used, admin)
        .map_err(|err| templates::unreadable(id, &err))?;
    Ok(builder.json(response))
}
