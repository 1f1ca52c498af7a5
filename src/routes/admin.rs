//! `/api/v1/admin/*`: administrators' endpoints — users (list and search, change
//! plan, deactivate) and the audit log. Every route takes `AdminUser` (401 without
//! credentials, 403 for anyone but an administrator). Lists are pages:
//! `{items, total, page, per_page, has_more}` from `?page=&per_page=`.

use std::collections::{HashMap, HashSet};

use actix_web::{HttpResponse, web};
use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{Action, Event, Origin, Outcome, ResourceType};
use crate::auth::AdminUser;
use crate::db::audit::{self as audit_db, ActingUser, AuditEvent, AuditFilter};
use crate::db::json::Unreadable;
use crate::db::users::{self, AccountChanges};
use crate::error::{ApiError, ValidationErrors};
use crate::http::Json;
use crate::openapi::{
    BadRequest, Forbidden, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized, Unavailable,
    Unprocessable, UnsupportedMediaType,
};
use crate::plans::Plan;
use crate::routes::auth::UserResponse;
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    // Plain routes, not a `/admin` scope: another module may add admin routes too.
    cfg.route("/admin/users", web::get().to(list_users))
        .route("/admin/users/{id}", web::patch().to(update_user))
        .route("/admin/audit", web::get().to(list_audit_events));
}

pub const DEFAULT_PER_PAGE: i64 = 50;
pub const MAX_PER_PAGE: i64 = 200;
/// Deeper pages than this are refused rather than scanned.
const MAX_PAGE: i64 = 100_000;
const MAX_SEARCH_CHARS: usize = 100;
const MAX_RESOURCE_ID_CHARS: usize = 200;

/// A page of a list, as every admin list answers.
#[derive(Serialize, ToSchema)]
struct Page<T> {
    items: Vec<T>,
    /// Items matching, over all pages.
    total: i64,
    /// From 1.
    page: i64,
    per_page: i64,
    has_more: bool,
}

/// The query string as named parameters. An unknown or repeated parameter is a
/// 422 naming it (a typo must not silently widen a search); empty values count
/// as absent, as a form with blank fields sends them.
struct Params(HashMap<String, String>);

impl Params {
    fn parse(pairs: Vec<(String, String)>, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut errors = ValidationErrors::default();
        let mut map = HashMap::new();
        let mut seen = HashSet::new();
        for (key, value) in pairs {
            if !allowed.contains(&key.as_str()) {
                errors.add(
                    &key,
                    format!(
                        "is not a parameter of this endpoint; use {}",
                        allowed.join(", ")
                    ),
                );
                continue;
            }
            if !seen.insert(key.clone()) {
                errors.add(&key, "is given more than once");
                continue;
            }
            let value = value.trim().to_owned();
            if !value.is_empty() {
                map.insert(key, value);
            }
        }
        errors.into_result()?;
        Ok(Self(map))
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// `page` (from 1) and `per_page` (1 to `MAX_PER_PAGE`).
    fn page(&self, errors: &mut ValidationErrors) -> (i64, i64) {
        let number = |key: &str, default: i64, max: i64, errors: &mut ValidationErrors| match self
            .get(key)
        {
            None => default,
            Some(raw) => match raw.parse::<i64>() {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => {
                    errors.add(key, format!("must be a whole number from 1 to {max}"));
                    default
                }
            },
        };
        let page = number("page", 1, MAX_PAGE, errors);
        let per_page = number("per_page", DEFAULT_PER_PAGE, MAX_PER_PAGE, errors);
        (page, per_page)
    }

    fn time(&self, key: &str, errors: &mut ValidationErrors) -> Option<DateTime<Utc>> {
        let raw = self.get(key)?;
        match DateTime::parse_from_rfc3339(raw) {
            Ok(t) => Some(t.with_timezone(&Utc)),
            Err(_) => {
                errors.add(key, "must be an RFC 3339 time such as 2026-11-23T10:00:00Z");
                None
            }
        }
    }
}

fn paged<T>(items: Vec<T>, total: i64, page: i64, per_page: i64) -> Page<T> {
    let seen = (page - 1) * per_page + i64::try_from(items.len()).unwrap_or(i64::MAX);
    Page {
        has_more: total > seen,
        items,
        total,
        page,
        per_page,
    }
}

/// `GET /admin/users?q=&page=&per_page=`: users oldest first; `q` searches
/// usernames and e-mail addresses (case-insensitive substring).
#[utoipa::path(
    get,
    path = "/api/v1/admin/users",
    tag = "admin",
    summary = "List users.",
    description = "Oldest first. An unknown or repeated parameter, or a bad value, is 422 \
        naming it; empty parameters mean no filter.",
    params(
        ("q" = Option<String>, Query, description = "Users whose username or e-mail address contains this, ignoring case (at most 100 characters)."),
        ("page" = Option<i64>, Query, minimum = 1, description = "The page, from 1 (default 1)."),
        ("per_page" = Option<i64>, Query, minimum = 1, maximum = 200, description = "Items per page, 1–200 (default 50)."),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<UserResponse>),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn list_users(
    state: web::Data<AppState>,
    _admin: AdminUser,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(query.into_inner(), &["q", "page", "per_page"])?;
    let mut errors = ValidationErrors::default();
    let (page, per_page) = params.page(&mut errors);
    let search = params.get("q");
    if search.is_some_and(|q| q.chars().count() > MAX_SEARCH_CHARS) {
        errors.add(
            "q",
            format!("must be at most {MAX_SEARCH_CHARS} characters"),
        );
    }
    errors.into_result()?;
    let mut conn = state.pool.get().await?;
    let (rows, total) = users::list(&mut conn, search, per_page, (page - 1) * per_page).await?;
    let items = rows.into_iter().map(UserResponse::from).collect();
    Ok(HttpResponse::Ok().json(paged(items, total, page, per_page)))
}

/// Parses `{subscription_plan?, is_active?}`; `null` leaves a field unchanged.
fn account_changes(body: Map<String, Value>) -> Result<AccountChanges, ApiError> {
    let mut errors = ValidationErrors::default();
    let mut changes = AccountChanges::default();
    for (key, value) in body {
        match (key.as_str(), value) {
            (_, Value::Null) => {}
            ("subscription_plan", Value::String(plan)) => match plan.trim().parse::<Plan>() {
                Ok(plan) => changes.subscription_plan = Some(plan),
                Err(message) => errors.add("subscription_plan", message),
            },
            ("subscription_plan", _) => errors.add(
                "subscription_plan",
                "must be a plan name: free, starter, pro or admin",
            ),
            ("is_active", Value::Bool(active)) => changes.is_active = Some(active),
            ("is_active", _) => errors.add("is_active", "must be true or false"),
            (other, _) => errors.add(
                other,
                "cannot be changed here; send subscription_plan and/or is_active",
            ),
        }
    }
    if errors.is_empty() && changes.subscription_plan.is_none() && changes.is_active.is_none() {
        errors.add(
            "body",
            "send at least one of subscription_plan and is_active",
        );
    }
    errors.into_result()?;
    Ok(changes)
}

/// The body of `PATCH /admin/users/{id}`: at least one field; `null` leaves a
/// field as it is, any other field is 422.
#[derive(ToSchema)]
#[allow(dead_code)] // Describes the JSON object `account_changes` reads field by field.
struct UserUpdateRequest {
    subscription_plan: Option<Plan>,
    /// `false` deactivates the account and revokes all its sign-in sessions.
    is_active: Option<bool>,
}

/// `PATCH /admin/users/{id}` with `{subscription_plan?, is_active?}` → 200, the
/// user. Deactivating signs the user out everywhere at once. Administrators
/// cannot deactivate or demote themselves (so at least one always remains).
#[utoipa::path(
    patch,
    path = "/api/v1/admin/users/{id}",
    tag = "admin",
    summary = "Change a user's plan or deactivate them.",
    description = "Deactivating signs the user out everywhere at once. Administrators cannot \
        deactivate themselves or leave the `admin` plan (422).",
    params(("id" = Uuid, Path, description = "The user's id; a malformed one is a 404.")),
    request_body = UserUpdateRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, body = UserResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn update_user(
    state: web::Data<AppState>,
    admin: AdminUser,
    origin: Origin,
    id: web::Path<String>,
    body: Json<Map<String, Value>>,
) -> Result<HttpResponse, ApiError> {
    let AdminUser(admin) = admin;
    let not_found = || ApiError::NotFound(format!("No user with id {id}."));
    let user_id = Uuid::parse_str(&id).map_err(|_| not_found())?;
    let changes = account_changes(body.into_inner())?;
    if user_id == admin.user.id {
        let mut errors = ValidationErrors::default();
        if changes.is_active == Some(false) {
            errors.add(
                "is_active",
                "administrators cannot deactivate their own account; ask another administrator",
            );
        }
        if changes.subscription_plan.is_some_and(|p| p != Plan::Admin) {
            errors.add(
                "subscription_plan",
                "administrators cannot remove their own admin plan; ask another administrator",
            );
        }
        errors.into_result()?;
    }
    let mut conn = state.pool.get().await?;
    let update = users::update_account(&mut conn, user_id, &changes)
        .await?
        .ok_or_else(not_found)?;
    crate::listener::publish(&state, crate::listener::Invalidation::User(user_id));
    let mut changed = Map::new();
    if update.before.subscription_plan != update.after.subscription_plan {
        changed.insert(
            "subscription_plan".into(),
            json!({"from": update.before.subscription_plan, "to": update.after.subscription_plan}),
        );
    }
    if update.before.is_active != update.after.is_active {
        changed.insert(
            "is_active".into(),
            json!({"from": update.before.is_active, "to": update.after.is_active}),
        );
    }
    state.audit.record(
        &origin,
        Event::new(Action::UserUpdate, Outcome::Success)
            .on(ResourceType::User, Some(user_id))
            .by(admin.user.id)
            .details(json!({
                "username": update.after.username,
                "changes": changed,
                "sessions_revoked": update.sessions_revoked,
            })),
    );
    Ok(HttpResponse::Ok().json(UserResponse::from(update.after)))
}

/// One audit event as admins read it.
#[derive(Serialize, ToSchema)]
#[schema(as = AuditEvent)]
struct AuditEventResponse {
    id: Uuid,
    created_at: DateTime<Utc>,
    user_id: Option<Uuid>,
    /// The acting user's current username (`null` if unknown).
    username: Option<String>,
    /// The acting user's account has been deleted since (its entries are kept).
    user_deleted: bool,
    action: String,
    resource_type: String,
    resource_id: Option<String>,
    outcome: String,
    ip: Option<String>,
    user_agent: Option<String>,
    #[schema(value_type = Object)]
    details: Value,
}

impl AuditEventResponse {
    fn new(e: AuditEvent, actor: Option<ActingUser>) -> Result<Self, Unreadable> {
        let details = e.details.read("details")?.clone();
        Ok(Self {
            id: e.id,
            created_at: e.created_at,
            user_id: e.user_id,
            user_deleted: actor.as_ref().is_some_and(|a| a.deleted),
            username: actor.map(|a| a.username),
            action: e.action,
            resource_type: e.resource_type,
            resource_id: e.resource_id,
            outcome: e.outcome,
            ip: e.ip,
            user_agent: e.user_agent,
            details,
        })
    }
}

fn one_of<T>(all: &[T], name: impl Fn(&T) -> &'static str) -> String {
    all.iter().map(name).collect::<Vec<_>>().join(", ")
}

/// `GET /admin/audit?user=&action=&resource_type=&resource_id=&outcome=&since=&until=&page=&per_page=`:
/// matching events, newest first. `since` and `until` are inclusive.
#[utoipa::path(
    get,
    path = "/api/v1/admin/audit",
    tag = "admin",
    summary = "Read the audit log.",
    description = "Matching events, newest first. An unknown or repeated parameter, or a bad \
        value, is 422 naming it; empty parameters mean no filter. To page a fixed view, pass \
        the first page's newest `created_at` as `until`.",
    params(
        ("user" = Option<Uuid>, Query, description = "Events by this user."),
        ("action" = Option<String>, Query, description = "An action name, such as `auth.login` or `environment.create`."),
        ("resource_type" = Option<String>, Query, description = "`user`, `session`, `environment`, `template` or `endpoint`."),
        ("resource_id" = Option<String>, Query, description = "The resource's id (at most 200 characters)."),
        ("outcome" = Option<String>, Query, description = "`success`, `failure` or `denied`."),
        ("since" = Option<DateTime<Utc>>, Query, description = "Events at or after this time (RFC 3339)."),
        ("until" = Option<DateTime<Utc>>, Query, description = "Events at or before this time (RFC 3339)."),
        ("page" = Option<i64>, Query, minimum = 1, description = "The page, from 1 (default 1)."),
        ("per_page" = Option<i64>, Query, minimum = 1, maximum = 200, description = "Items per page, 1–200 (default 50)."),
    ),
    security(("bearer" = [])),
    responses(
        (status = 200, body = Page<AuditEventResponse>),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn list_audit_events(
    state: web::Data<AppState>,
    _admin: AdminUser,
    query: web::Query<Vec<(String, String)>>,
) -> Result<HttpResponse, ApiError> {
    let params = Params::parse(
        query.into_inner(),
        &[
            "user",
            "action",
            "resource_type",
            "resource_id",
            "outcome",
            "since",
            "until",
            "page",
            "per_page",
        ],
    )?;
    let mut errors = ValidationErrors::default();
    let (page, per_page) = params.page(&mut errors);
    let user_id = params.get("user").and_then(|raw| {
        Uuid::parse_str(raw)
            .inspect_err(|_| errors.add("user", "must be a user id (a UUID)"))
            .ok()
    });
    let action = params.get("action");
    if action.is_some_and(|a| Action::parse(a).is_none()) {
        errors.add(
            "action",
            format!("must be one of {}", one_of(&Action::ALL, |a| a.as_str())),
        );
    }
    let resource_type = params.get("resource_type");
    if resource_type.is_some_and(|r| ResourceType::parse(r).is_none()) {
        errors.add(
            "resource_type",
            format!(
                "must be one of {}",
                one_of(&ResourceType::ALL, |r| r.as_str())
            ),
        );
    }
    let resource_id = params.get("resource_id");
    if resource_id.is_some_and(|r| r.chars().count() > MAX_RESOURCE_ID_CHARS) {
        errors.add(
            "resource_id",
            format!("must be at most {MAX_RESOURCE_ID_CHARS} characters"),
        );
    }
    let outcome = params.get("outcome");
    if outcome.is_some_and(|o| Outcome::parse(o).is_none()) {
        errors.add(
            "outcome",
            format!("must be one of {}", one_of(&Outcome::ALL, |o| o.as_str())),
        );
    }
    let since = params.time("since", &mut errors);
    let until = params.time("until", &mut errors);
    if let (Some(since), Some(until)) = (since, until)
        && since > until
    {
        errors.add("until", "must not be earlier than since");
    }
    errors.into_result()?;
    let filter = AuditFilter {
        user_id,
        action,
        resource_type,
        resource_id,
        outcome,
        since,
        until,
    };
    let mut conn = state.pool.get().await?;
    let (rows, total) = audit_db::list(&mut conn, &filter, per_page, (page - 1) * per_page).await?;
    // One row that cannot be read must not take the page with it.
    let items = rows
        .into_iter()
        .filter_map(|(event, actor)| {
            let id = event.id;
            AuditEventResponse::new(event, actor)
                .inspect_err(|err| err.log("audit_events", id))
                .ok()
        })
        .collect();
    Ok(HttpResponse::Ok().json(paged(items, total, page, per_page)))
}
