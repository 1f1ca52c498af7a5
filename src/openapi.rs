//! The OpenAPI 3 document of the HTTP API, built from the handlers'
//! `#[utoipa::path]` annotations and the request and response types they name.
//! Served at `/api/v1/openapi.json`, with Swagger UI at `/api/v1/docs`
//! (`routes::docs`). `tests/api/openapi.rs` fails when a route the application
//! registers is missing here, so a new handler needs its annotation and a line in
//! `paths(...)` below.
//!
//! Errors share one schema, `ErrorBody` (the envelope of `error.rs`), and one
//! reusable response per status, so each operation lists the statuses it can
//! answer with and nothing more.

use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::{Modify, OpenApi, ToResponse};

use crate::error::ErrorBody;
use crate::routes::{
    admin, admin_actors, apps, auth, catalog, docs, environments, google, health, info, metrics,
    servers, templates, users, ws_apps, ws_logs, ws_terminal,
};

/// The name of the security scheme that authenticated operations require.
pub const BEARER: &str = "bearer";

const DESCRIPTION: &str = "\
Backend of DevPocket, cloud development environments used from a phone.

* REST under `/api/v1`, JSON bodies. Every path is also served with a trailing slash, \
without a redirect.
* Authenticated operations take `Authorization: Bearer <access_token>` (a JWT from \
`/api/v1/auth/login`, `/register` or `/refresh`). WebSockets take the access token as \
`?token=` instead, since mobile WebSocket clients cannot set headers.
* Every error, including unknown paths and malformed bodies, is the `ErrorBody` \
envelope `{detail, code, context}`. Every `/api/v1` operation may answer 429 when a \
rate limit is exceeded; 5xx bodies are generic.";

#[derive(OpenApi)]
#[openapi(
    info(title = "DevPocket API", description = DESCRIPTION),
    paths(
        health::health,
        health::live,
        health::ready,
        info::info,
        auth::register,
        auth::login,
        auth::refresh,
        auth::logout,
        auth::me,
        auth::verify_email,
        auth::resend_verification,
        auth::forgot_password,
        auth::reset_password,
        auth::change_password,
        users::update_me,
        users::delete_me,
        google::sign_in_with_google,
        google::link_google,
        google::unlink_google,
        templates::list_templates,
        templates::create_template,
        templates::get_template,
        templates::update_template,
        templates::delete_template,
        servers::list_servers,
        servers::create_server,
        servers::get_server,
        servers::update_server,
        servers::delete_server,
        servers::trust_server,
        servers::check_server,
        apps::list_projects,
        apps::create_project,
        apps::get_project,
        apps::update_project,
        apps::delete_project,
        apps::list_apps,
        apps::create_app,
        apps::get_app,
        apps::update_app,
        apps::delete_app,
        apps::start_app,
        apps::stop_app,
        apps::extend_app,
        apps::app_logs,
        environments::list::list_environments,
        environments::create::create_environment,
        environments::get::get_environment,
        environments::update::update_environment,
        environments::lifecycle::delete_environment,
        environments::lifecycle::start_environment,
        environments::lifecycle::stop_environment,
        environments::lifecycle::restart_environment,
        environments::maintenance::snapshot_environment,
        environments::maintenance::resize_environment,
        environments::metrics::get_metrics,
        environments::activity::get_activity,
        environments::activity::keep_awake,
        environments::logs::get_logs,
        catalog::list_regions,
        catalog::list_sizes,
        ws_logs::logs_socket,
        ws_terminal::terminal_socket,
        ws_terminal::server_terminal_socket,
        ws_apps::app_logs_socket,
        admin::list_users,
        admin::update_user,
        admin::list_audit_events,
        admin_actors::actor_tree,
        admin_actors::actor_node,
        metrics::metrics,
        docs::openapi_json,
        docs::docs_index,
        docs::docs_file,
        crate::console::index,
        crate::console::asset,
    ),
    components(
        schemas(ErrorBody),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            UnsupportedMediaType,
            Unprocessable,
            Locked,
            TooManyRequests,
            Unavailable,
        )
    ),
    modifiers(&BearerScheme),
    tags(
        (name = "health", description = "Probes for load balancers and operators; never rate limited."),
        (name = "info", description = "What this server is and offers."),
        (name = "accounts", description = "Sign-up, sign-in, tokens and the signed-in user."),
        (name = "templates", description = "The catalogue of environment templates; admins edit it."),
        (name = "environments", description = "Development machines: lifecycle, snapshots and resizes, metrics, provisioning logs, activity and the idle auto-stop, and the regions and sizes they can have."),
        (name = "servers", description = "Servers of your own, reached over SSH with a pinned host key (registration, trust, status checks), and the compose apps on them, grouped in projects (start, stop, auto-stop, runs)."),
        (name = "websockets", description = "Live provisioning logs and terminals. Not REST: JSON text frames over a WebSocket, described on each operation."),
        (name = "admin", description = "Administrators only (the `admin` plan): users and the audit log."),
        (name = "docs", description = "This document and its viewer."),
        (name = "console", description = "The web console: a page and its files, a client of this API like the mobile app."),
    )
)]
pub struct ApiDoc;

/// Declares the bearer JWT scheme that operations name in `security(...)`.
struct BearerScheme;

impl Modify for BearerScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let mut scheme = Http::new(HttpAuthScheme::Bearer);
        scheme.bearer_format = Some("JWT".to_owned());
        scheme.description = Some(
            "An access token from sign-in, sign-up or refresh (a JWT with an integer `exp`)."
                .to_owned(),
        );
        openapi
            .components
            .get_or_insert_with(Default::default)
            .add_security_scheme(BEARER, SecurityScheme::Http(scheme));
        let mut metrics = Http::new(HttpAuthScheme::Bearer);
        metrics.description = Some(
            "`DEVPOCKET_METRICS_TOKEN`, when the operator set one (otherwise `/metrics` is open)."
                .to_owned(),
        );
        if let Some(components) = openapi.components.as_mut() {
            components.add_security_scheme("metrics_token", SecurityScheme::Http(metrics));
        }
    }
}

/// The error responses, one per status, each an `ErrorBody`.
///
/// Not built at run time: they exist for their `ToResponse` implementations.
mod responses {
    use super::*;

    /// Malformed request: the body is not JSON (`malformed_json`) or is empty
    /// (`empty_body`), or a path or query parameter has the wrong type
    /// (`bad_request`).
    #[derive(ToResponse)]
    #[response(example = json!({
        "detail": "The request body is not valid JSON: expected value at line 1 column 2.",
        "code": "malformed_json",
        "context": {}
    }))]
    pub struct BadRequest(pub ErrorBody<'static>);

    /// No bearer token, or one that is invalid or expired, or whose sign-in
    /// session has ended (signed out, revoked, account deactivated).
    #[derive(ToResponse)]
    #[response(example = json!({
        "detail": "Authentication required: send `Authorization: Bearer <access_token>`.",
        "code": "unauthorized",
        "context": {}
    }))]
    pub struct Unauthorized(pub ErrorBody<'static>);

    /// Not allowed: an administrator's operation or a deactivated account
    /// (`forbidden`), or a limit of the caller's plan: too many environments in
    /// total or not stopped (`quota_exceeded`), a size above the plan's (`forbidden`);
    /// `detail` says which.
    #[derive(ToResponse)]
    #[response(example = json!({
        "detail": "Your free plan allows 1 environment that is not stopped, and you have 1. Stop or delete one first, or upgrade your plan.",
        "code": "quota_exceeded",
        "context": {}
    }))]
    pub struct Forbidden(pub ErrorBody<'static>);

    /// Nothing of that id (or name) that the caller may see; another user's
    /// resource is a 404 too.
    #[derive(ToResponse)]
    #[response(example = json!({
        "detail": "No environment with id 0b6f7a4e-8c1d-4e0a-9a43-2f1f7f3c9d10.",
        "code": "not_found",
        "context": {}
    }))]
    pub struct NotFound(pub ErrorBody<'static>);

    /// A duplicate (`conflict`, or `name_taken` for an environment's name;
    /// `context.field` names it), a template with a stored value that cannot be read
    /// (`conflict`, `context.field` names the column), or an operation that is not
    /// valid in the resource's current state, with a code of its own:
    /// `environment_already_running`, `environment_already_stopped`,
    /// `environment_creating`, `environment_failed`, `operation_in_progress`,
    /// `environment_deleting`, `environment_not_resting`, `environment_not_running`,
    /// `operation_unsupported`, `same_size`, `environment_unreadable` (`context.field`
    /// names the column); for Google sign-in, `google_link_requires_verification`,
    /// `google_account_mismatch`, `google_linked_elsewhere`, `google_already_linked`.
    #[derive(ToResponse)]
    #[response(example = json!({
        "detail": "The username 'alice' is already taken.",
        "code": "conflict",
        "context": {"field": "username"}
    }))]
    pub struct Conflict(pub ErrorBody<'static>);

    /// The body is larger than `DEVPOCKET_MAX_JSON_BYTES`.
    #[derive(ToResponse)]
    #[response(example = json!({
        "detail": "The request body is larger than the limit of 262144 bytes.",
        "code": "payload_too_large",
        "context": {}
    }))]
    pub struct PayloadTooLarge(pub ErrorBody<'static>);

    /// The body was not sent as `Content-Type: application/json`.
    #[derive(ToResponse)]
    #[response(example = json!({
        "detail": "Send the body as JSON with `Content-Type: application/json`.",
        "code": "unsupported_media_type",
        "context": {}
    }))]
    pub struct UnsupportedMediaType(pub ErrorBody<'static>);

    /// Invalid input: `context.fields` maps each offending field (or parameter)
    /// to its messages.
    #[derive(ToResponse)]
    #[response(example = json!({
        "detail": "Invalid input: password: must contain a digit",
        "code": "validation_error",
        "context": {"fields": {"password": ["must contain a digit"]}}
    }))]
    pub struct Unprocessable(pub ErrorBody<'static>);

    /// Sign-in is locked for this account from this address after too many wrong
    /// passwords.
    #[derive(ToResponse)]
    #[response(
        example = json!({
            "detail": "Too many wrong passwords: sign-in for this account from your address is locked for 15 more minutes.",
            "code": "account_locked",
            "context": {"retry_after_seconds": 900}
        }),
        headers(("Retry-After" = u64, description = "Seconds until sign-in is possible again."))
    )]
    pub struct Locked(pub ErrorBody<'static>);

    /// Over a rate limit: per client address, per user (by plan), or for sign-in
    /// per address and per account. Waiting `Retry-After` seconds is enough.
    #[derive(ToResponse)]
    #[response(
        example = json!({
            "detail": "Too many requests from your network address; retry in 12 s.",
            "code": "rate_limited",
            "context": {"retry_after_seconds": 12, "limit": 1200}
        }),
        headers(
            ("Retry-After" = u64, description = "Seconds to wait before retrying."),
            ("RateLimit-Limit" = u32, description = "The limit that was exceeded (requests per period)."),
            ("RateLimit-Remaining" = u32, description = "Requests left now: 0."),
            ("RateLimit-Reset" = u64, description = "Seconds until the whole allowance is back."),
        )
    )]
    pub struct TooManyRequests(pub ErrorBody<'static>);

    /// Temporarily unavailable: the database, or the environment's controller,
    /// is restarting or unreachable. Try again shortly.
    #[derive(ToResponse)]
    #[response(example = json!({
        "detail": "The service is temporarily unavailable; try again shortly.",
        "code": "service_unavailable",
        "context": {}
    }))]
    pub struct Unavailable(pub ErrorBody<'static>);
}

pub use responses::{
    BadRequest, Conflict, Forbidden, Locked, NotFound, PayloadTooLarge, TooManyRequests,
    Unauthorized, Unavailable, Unprocessable, UnsupportedMediaType,
};
