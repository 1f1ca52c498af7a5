//! `POST /api/v1/environments`: a new environment, validated, placed by the
//! provider's rules and inserted within the plan; its actor provisions it.

use actix_web::{HttpResponse, web};
use devpocket_actors::model::NewEnvironment;
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{Action, Event, Origin, ResourceType};
use crate::auth::AuthUser;
use crate::db::templates as template_db;
use crate::environments::placement::{self, Placement};
use crate::environments::{self as rules, EnvironmentResponse, auto_stop, limits};
use crate::error::{ApiError, ValidationErrors};
use crate::http::Json;
use crate::openapi::{
    BadRequest, Conflict, Forbidden, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable,
    Unprocessable, UnsupportedMediaType,
};
use crate::startup::AppState;
use crate::templates::Status as TemplateStatus;

#[derive(Deserialize, ToSchema)]
#[schema(as = CreateEnvironmentRequest)]
pub(super) struct CreateRequest {
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
    /// The environment's idle timeout in minutes, within its plan's (which is the
    /// default when this is absent or null): from 1 to the plan's, or 0 (never)
    /// where the plan never stops idle environments (admin).
    #[schema(value_type = Option<i32>, example = 20)]
    auto_stop_minutes: Option<Value>,
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
pub(super) async fn create_environment(
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
    let auto_stop_minutes = auto_stop::validate_minutes(
        body.auto_stop_minutes.as_ref(),
        &state.settings.auto_stop,
        caller.user.subscription_plan,
        &mut errors,
    );
    let key = body
        .template_id
        .or(body.template)
        .map(|t| t.trim().to_owned())
        .filter(|t| !t.is_empty());
    if key.is_none() {
        errors.add("template_id", "is required: a template's id or name");
    }
    errors.into_result()?;
    crate::auth::account::require_verified(
        state,
        &caller.user,
        crate::config::Restricted::CreateEnvironment,
    )?;

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
    // Not held while the supervisor stores the environment (it takes its own).
    drop(conn);

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

    let Placement { region, size } = placement::place(
        state,
        placement::Request {
            plan: caller.user.subscription_plan,
            region: body.region,
            size: body.size,
            template: &template,
            variables: &variables,
        },
    )
    .await?;

    let id = Uuid::new_v4();
    let record = state
        .actors
        .create(NewEnvironment {
            id,
            user_id: caller.user.id,
            slug: rules::slug(&name, id),
            name,
            template_id: template.id,
            provider: state.default_provider.clone(),
            region,
            size,
            resource_limits: limits,
            environment_variables: variables,
            auto_stop_minutes,
        })
        .await?;
    // The actor is provisioning it already; the answer does not wait for that.
    Ok(EnvironmentResponse::from_record(record))
}
