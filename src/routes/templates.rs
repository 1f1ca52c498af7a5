//! `/api/v1/templates`: the catalogue of environment templates. Everyone signed in
//! reads it; admins create, change and deprecate templates (DELETE deprecates, so
//! environments made from a template keep their reference).

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::audit::{Action, Event, Origin, ResourceType};
use crate::auth::AuthUser;
use crate::db::templates::{self as store, ListFilter, Template};
use crate::error::ApiError;
use crate::http::Json;
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
#[derive(Debug, Serialize)]
pub struct TemplateResponse {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub category: Category,
    pub tags: Value,
    pub docker_image: String,
    pub default_resources: Value,
    pub environment_variables: Value,
    pub startup_commands: Value,
    pub status: Status,
    pub version: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub usage_count: i64,
    pub default_port: Option<i32>,
    pub documentation_url: Option<String>,
    pub icon_url: Option<String>,
    pub image: String,
    pub icon: Option<String>,
    pub featured: bool,
    pub config: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bootstrap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packages: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cloud_init: Option<Value>,
}

impl TemplateResponse {
    pub fn new(t: Template, usage_count: i64, admin: bool) -> Self {
        let config = json!({
            "default_port": t.default_port,
            "default_resources": t.default_resources,
            "startup_commands": t.startup_commands,
        });
        let (bootstrap, packages, cloud_init) = if admin {
            (Some(t.bootstrap), Some(t.packages), Some(t.cloud_init))
        } else {
            (None, None, None)
        };
        Self {
            featured: templates::is_builtin(&t.name),
            image: t.docker_image.clone(),
            icon: t.icon_url.clone(),
            config,
            id: t.id,
            name: t.name,
            display_name: t.display_name,
            description: t.description,
            category: t.category,
            tags: t.tags,
            docker_image: t.docker_image,
            default_resources: t.default_resources,
            environment_variables: t.environment_variables,
            startup_commands: t.startup_commands,
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
        }
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

#[derive(Deserialize)]
struct ListQuery {
    category: Option<String>,
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
    let body: Vec<TemplateResponse> = rows
        .into_iter()
        .map(|t| {
            let used = counts.get(&t.id).copied().unwrap_or(0);
            TemplateResponse::new(t, used, admin)
        })
        .collect();
    Ok(HttpResponse::Ok().json(body))
}

/// `GET /templates/{id or name}`. A deprecated template is a 404 for non-admins.
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
    let used = store::usage_count(conn, template.id).await?;
    Ok(builder.json(TemplateResponse::new(template, used, admin)))
}
