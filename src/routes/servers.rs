//! `/api/v1/servers`: servers of users' own — register (with a key pair DevPocket
//! makes or the owner's), confirm the host key, read, change, check, delete. The
//! checks are the server actor's (`servers::check`); handlers validate, authorize,
//! and answer. Another user's server is a 404.

use actix_web::{HttpResponse, web};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::audit::{Action, Event, Origin, ResourceType};
use crate::auth::AuthUser;
use crate::db::servers::{self as db, NewServer, Refused, Server};
use crate::error::ApiError;
use crate::http::Json;
use crate::openapi::{
    BadRequest, Conflict, Forbidden, NotFound, PayloadTooLarge, TooManyRequests, Unauthorized,
    Unavailable, Unprocessable, UnsupportedMediaType,
};
use crate::servers::{self, ServerInput, ServerResponse, not_found};
use crate::startup::AppState;

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.service(
        web::scope("/servers")
            .route("", web::get().to(list_servers))
            .route("", web::post().to(create_server))
            .route("/{id}", web::get().to(get_server))
            .route("/{id}", web::put().to(update_server))
            .route("/{id}", web::delete().to(delete_server))
            .route("/{id}/trust", web::post().to(trust_server))
            .route("/{id}/check", web::post().to(check_server)),
    );
}

fn parse_id(raw: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(raw).map_err(|_| not_found(raw))
}

async fn owned(state: &AppState, caller: &AuthUser, raw: &str) -> Result<Server, ApiError> {
    let id = parse_id(raw)?;
    let mut conn = state.pool.get().await?;
    db::find_owned(&mut conn, caller.user.id, id)
        .await?
        .ok_or_else(|| not_found(raw))
}

fn refused(refused: Refused) -> ApiError {
    match refused {
        Refused::Quota { plan, max } => ApiError::Refused {
            code: "quota_exceeded",
            detail: format!(
                "The {plan} plan allows {max} registered servers; delete one or change plans."
            ),
        },
        Refused::NameTaken => ApiError::State {
            code: "name_taken",
            detail: "You already have a server with that name; choose another.".into(),
            context: json!({ "field": "name" }),
        },
    }
}

/// Records a change to a server, with its outcome.
fn audit(
    state: &AppState,
    caller: &AuthUser,
    origin: &Origin,
    action: Action,
    id: Option<Uuid>,
    details: Value,
    result: &Result<impl Sized, ApiError>,
) {
    if let Some(event) = Event::for_result(action, result) {
        state.audit.record(
            origin,
            event
                .on(ResourceType::Server, id)
                .by(caller.user.id)
                .details(details),
        );
    }
}

/// `GET /servers`: the caller's servers, oldest first (a bare array).
#[utoipa::path(
    get,
    path = "/api/v1/servers",
    tag = "servers",
    summary = "List your servers.",
    description = "A bare array, oldest first, with each server's last check.",
    security(("bearer" = [])),
    responses(
        (status = 200, body = Vec<ServerResponse>),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn list_servers(
    state: web::Data<AppState>,
    caller: AuthUser,
) -> Result<HttpResponse, ApiError> {
    let mut conn = state.pool.get().await?;
    let rows = db::list(&mut conn, caller.user.id).await?;
    let body: Vec<ServerResponse> = rows.into_iter().map(ServerResponse::from).collect();
    Ok(HttpResponse::Ok().json(body))
}

/// The body of `POST /servers`.
#[derive(Deserialize, ToSchema)]
#[allow(dead_code)] // Describes the JSON object `ServerInput` reads.
struct CreateServer {
    /// 1 to 64 characters, unique among your servers.
    #[schema(example = "home box")]
    name: String,
    /// A host name or an IP address.
    #[schema(example = "203.0.113.10")]
    host: String,
    /// Default 22.
    port: Option<u16>,
    /// The user DevPocket logs in as.
    #[schema(example = "deploy")]
    username: String,
    /// `{"type": "generated"}` (the default: DevPocket makes a key pair and answers
    /// its public line) or `{"type": "private_key", "private_key": "-----BEGIN
    /// OPENSSH PRIVATE KEY-----…", "passphrase": "…"}` (OpenSSH or PEM; kept
    /// encrypted, never shown again).
    #[schema(value_type = Object, example = json!({"type": "generated"}))]
    auth: Option<Value>,
}

/// `POST /servers` → 201: stored, then contacted for its host key.
#[utoipa::path(
    post,
    path = "/api/v1/servers",
    tag = "servers",
    summary = "Register a server of your own.",
    description = "Stores the server and contacts it for its host key: the answer shows that \
        key's fingerprint (`presented_host_key_fingerprint`) and `status` `pending_trust` until \
        you confirm it with `POST /servers/{id}/trust` (or `offline`, saying why, when it could \
        not be reached: `POST /servers/{id}/check` tries again). With a generated key, append \
        `public_key` to `~/.ssh/authorized_keys` of `username` on the server. 403 \
        `quota_exceeded` when the plan's servers are all registered; 409 `name_taken`.",
    request_body = CreateServer,
    security(("bearer" = [])),
    responses(
        (status = 201, body = ServerResponse),
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
async fn create_server(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    body: Json<Map<String, Value>>,
) -> Result<HttpResponse, ApiError> {
    let id = Uuid::new_v4();
    let result = async {
        let input = ServerInput::from_json(&body.0, true)?;
        crate::auth::account::require_verified(
            &state,
            &caller.user,
            crate::config::Restricted::RegisterServer,
        )?;
        let auth = input.auth.unwrap_or(servers::Auth::Generated);
        let auth_type = auth.type_name();
        let (private, public) = auth.key_pair(id)?;
        let new = NewServer {
            id,
            user_id: caller.user.id,
            name: input.name.unwrap_or_default(),
            host: input.host.unwrap_or_default(),
            port: input.port.unwrap_or(22),
            username: input.username.unwrap_or_default(),
            auth_type,
            private_key: state
                .secrets
                .seal(private.as_bytes())
                .map_err(ApiError::internal)?,
            public_key: public,
        };
        let mut conn = state.pool.get().await?;
        db::insert(&mut conn, new).await?.map_err(refused)
    }
    .await;
    let details = match &result {
        Ok(s) => json!({"name": s.name, "host": s.host, "port": s.port, "auth_type": s.auth_type}),
        Err(_) => json!({"name": body.0.get("name")}),
    };
    audit(
        &state,
        &caller,
        &origin,
        Action::ServerCreate,
        result.as_ref().ok().map(|s| s.id),
        details,
        &result,
    );
    let server = servers::check(&state, result?).await?;
    Ok(HttpResponse::Created().json(ServerResponse::from(server)))
}

/// `GET /servers/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/servers/{id}",
    tag = "servers",
    summary = "Get a server.",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ServerResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn get_server(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let server = owned(&state, &caller, &id).await?;
    Ok(HttpResponse::Ok().json(ServerResponse::from(server)))
}

/// `PUT /servers/{id}`: the fields sent replace the stored ones.
#[utoipa::path(
    put,
    path = "/api/v1/servers/{id}",
    tag = "servers",
    summary = "Change a server.",
    description = "Any of `name`, `host`, `port`, `username`, `auth` (as in a registration). A \
        new host or port is another machine as far as trust goes: its host key is fetched again \
        and waits for your confirmation (`pending_trust`). A new `auth` replaces the key pair \
        (a generated one answers its new `public_key`).",
    params(("id" = Uuid, Path)),
    request_body(content = Object, description = "Some fields of a registration."),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ServerResponse),
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
async fn update_server(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
    body: Json<Map<String, Value>>,
) -> Result<HttpResponse, ApiError> {
    let mut moved = false;
    let result = async {
        let server = owned(&state, &caller, &id).await?;
        let input = ServerInput::from_json(&body.0, false)?;
        let (changes, changed_address) = servers::changes(&state, &server, input)?;
        moved = changed_address;
        let mut conn = state.pool.get().await?;
        db::update(&mut conn, caller.user.id, server.id, &changes)
            .await?
            .map_err(refused)?
            .ok_or_else(|| not_found(&id))
    }
    .await;
    let fields: Vec<&String> = body.0.keys().collect();
    audit(
        &state,
        &caller,
        &origin,
        Action::ServerUpdate,
        parse_id(&id).ok(),
        json!({"fields": fields}),
        &result,
    );
    let server = result?;
    let server = if moved {
        servers::check(&state, server).await?
    } else {
        server
    };
    Ok(HttpResponse::Ok().json(ServerResponse::from(server)))
}

/// `DELETE /servers/{id}` → 204.
#[utoipa::path(
    delete,
    path = "/api/v1/servers/{id}",
    tag = "servers",
    summary = "Delete a server.",
    description = "Forgets the server and its key pair, and closes DevPocket's connection to it. \
        A server with apps is a 409 `server_has_apps` naming them.",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn delete_server(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let result = async {
        let server = owned(&state, &caller, &id).await?;
        let mut conn = state.pool.get().await?;
        let apps =
            crate::db::apps::app_names(&mut conn, caller.user.id, None, Some(server.id)).await?;
        if !apps.is_empty() {
            return Err(ApiError::State {
                code: "server_has_apps",
                detail: format!(
                    "Apps live on this server ({}): delete them first.",
                    apps.join(", ")
                ),
                context: json!({ "apps": apps }),
            });
        }
        if !db::delete(&mut conn, caller.user.id, server.id).await? {
            return Err(ApiError::State {
                code: "server_has_apps",
                detail: "An app was added to this server meanwhile: delete it first.".into(),
                context: json!({}),
            });
        }
        Ok(server)
    }
    .await;
    let details = json!({"name": result.as_ref().ok().map(|s| &s.name)});
    audit(
        &state,
        &caller,
        &origin,
        Action::ServerDelete,
        parse_id(&id).ok(),
        details,
        &result,
    );
    let server = result?;
    if let Err(err) = state.actors.forget_server(caller.user.id, server.id).await {
        tracing::warn!(server_id = %server.id, error = %err, "a deleted server's actor could not be stopped; it stops when idle");
    }
    Ok(HttpResponse::NoContent().finish())
}

/// The body of `POST /servers/{id}/trust`.
#[derive(Deserialize, ToSchema)]
struct TrustServer {
    /// The fingerprint you compared with the server's own host key
    /// (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on it).
    #[schema(example = "SHA256:uN0PCCFCGL7HD0X0Q2Ko1sd9ZnTWoLOHCuzkrc5A8Ps")]
    fingerprint: String,
}

/// `POST /servers/{id}/trust {fingerprint}`: the presented host key becomes the
/// trusted one, then the server is checked.
#[utoipa::path(
    post,
    path = "/api/v1/servers/{id}/trust",
    tag = "servers",
    summary = "Trust the host key a server presents.",
    description = "`fingerprint` must be the one in `presented_host_key_fingerprint`: that key \
        becomes the only one DevPocket accepts from this server (a different one later is \
        refused and reported as `host_key_mismatch`, with the new key's fingerprint to confirm \
        here if you know why it changed). The server is then checked. 409 `nothing_to_trust`: no \
        host key waits for confirmation; `fingerprint_mismatch`: the server presents another key \
        than the one sent.",
    params(("id" = Uuid, Path)),
    request_body = TrustServer,
    security(("bearer" = [])),
    responses(
        (status = 200, body = ServerResponse),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = Unprocessable),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn trust_server(
    state: web::Data<AppState>,
    caller: AuthUser,
    origin: Origin,
    id: web::Path<String>,
    body: Json<TrustServer>,
) -> Result<HttpResponse, ApiError> {
    let sent = body.0.fingerprint.trim().to_owned();
    let result = async {
        if !sent.starts_with("SHA256:") || sent.len() > 100 {
            return Err(ApiError::validation(
                "fingerprint",
                "must be a SHA256 fingerprint as `ssh-keygen -lf` prints it: SHA256:…",
            ));
        }
        let server = owned(&state, &caller, &id).await?;
        let Some(presented) = server.presented_host_key.clone() else {
            return Err(ApiError::State {
                code: "nothing_to_trust",
                detail: "No host key waits for confirmation: check the server (POST /servers/{id}/check) to fetch the one it presents.".into(),
                context: json!({}),
            });
        };
        let presented_fingerprint = devpocket_actors::ssh::fingerprint(&presented).map_err(ApiError::internal)?;
        if presented_fingerprint != sent {
            return Err(ApiError::State {
                code: "fingerprint_mismatch",
                detail: format!("The server presents the host key {presented_fingerprint}, not {sent}: nothing was trusted. Compare again with the server's own."),
                context: json!({ "field": "fingerprint" }),
            });
        }
        let mut conn = state.pool.get().await?;
        db::trust(&mut conn, caller.user.id, server.id, &presented)
            .await?
            .ok_or_else(|| ApiError::State {
                code: "fingerprint_mismatch",
                detail: "The host key waiting for confirmation changed meanwhile; read the server again.".into(),
                context: json!({ "field": "fingerprint" }),
            })
    }
    .await;
    audit(
        &state,
        &caller,
        &origin,
        Action::ServerTrust,
        parse_id(&id).ok(),
        json!({"fingerprint": sent}),
        &result,
    );
    let server = servers::check(&state, result?).await?;
    Ok(HttpResponse::Ok().json(ServerResponse::from(server)))
}

/// `POST /servers/{id}/check`: contacts the server now.
#[utoipa::path(
    post,
    path = "/api/v1/servers/{id}/check",
    tag = "servers",
    summary = "Check a server now.",
    description = "Without a trusted host key, fetches the one it presents (for `trust`); with \
        one, connects and reads its uptime, load, memory, disk, Docker, compose and running \
        containers. Servers are also checked every `DEVPOCKET_SERVER_CHECK_EVERY`.",
    params(("id" = Uuid, Path)),
    security(("bearer" = [])),
    responses(
        (status = 200, body = ServerResponse),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 503, response = Unavailable),
    )
)]
async fn check_server(
    state: web::Data<AppState>,
    caller: AuthUser,
    id: web::Path<String>,
) -> Result<HttpResponse, ApiError> {
    let server = owned(&state, &caller, &id).await?;
    let server = servers::check(&state, server).await?;
    Ok(HttpResponse::Ok().json(ServerResponse::from(server)))
}
