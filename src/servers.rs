//! Users' own servers (the README's "Servers and apps"): what a registration or a
//! change may say, what the app reads of a server, and its checks — the first
//! contact, which fetches the host key its owner is to confirm, and the status
//! check its actor makes once a host key is trusted, on demand and every
//! `DEVPOCKET_SERVER_CHECK_EVERY`.

use std::net::IpAddr;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use devpocket_actors::server::{
    self as actor, CheckServer, ServerAccess, ServerError, ServerFacts,
};
use devpocket_actors::ssh::{self, KeyRefused};
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::db::servers::{self as db, CheckOutcome, Server, ServerChanges};
use crate::error::{ApiError, ValidationErrors};
use crate::startup::AppState;

/// What a server's `status` may be.
pub const STATUSES: [&str; 5] = [
    "pending_trust",
    "online",
    "offline",
    "auth_failed",
    "host_key_mismatch",
];

const MAX_KEY_BYTES: usize = 16 * 1024;
const MAX_PASSPHRASE: usize = 1024;

/// How DevPocket authenticates to a server.
#[derive(Debug, Clone)]
pub enum Auth {
    /// A key pair DevPocket made: the owner appends its public line to
    /// `~/.ssh/authorized_keys` on the server.
    Generated,
    /// The owner's own key: (unencrypted OpenSSH private key, public line).
    PrivateKey(String, String),
}

impl Auth {
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::Generated => "generated",
            Self::PrivateKey(..) => "private_key",
        }
    }

    /// The key pair to store: (private, public).
    pub fn key_pair(self, id: Uuid) -> Result<(String, String), ApiError> {
        match self {
            Self::Generated => {
                ssh::generate_keypair(&format!("devpocket-server-{id}")).map_err(ApiError::internal)
            }
            Self::PrivateKey(private, public) => Ok((private, public)),
        }
    }
}

/// A registration or a change, as validated: `None` fields were not sent.
#[derive(Debug, Default)]
pub struct ServerInput {
    pub name: Option<String>,
    pub host: Option<String>,
    pub port: Option<i32>,
    pub username: Option<String>,
    pub auth: Option<Auth>,
}

const FIELDS: [&str; 5] = ["name", "host", "port", "username", "auth"];

impl ServerInput {
    /// Reads a body; `create` requires what a registration needs. Unknown fields
    /// are refused, so that a misspelt one is not silently ignored.
    pub fn from_json(body: &Map<String, Value>, create: bool) -> Result<Self, ApiError> {
        let mut errors = ValidationErrors::default();
        for key in body.keys() {
            if !FIELDS.contains(&key.as_str()) {
                errors.add(
                    key,
                    format!("is not a field of a server; use {}", FIELDS.join(", ")),
                );
            }
        }
        let required = |errors: &mut ValidationErrors, field: &str| {
            if create && body.get(field).is_none_or(Value::is_null) {
                errors.add(field, "is required");
            }
        };
        for field in ["name", "host", "username"] {
            required(&mut errors, field);
        }
        let mut input = Self {
            name: text(body, "name", &mut errors, crate::apps::name),
            host: text(body, "host", &mut errors, host),
            username: text(body, "username", &mut errors, username),
            port: port(body.get("port"), &mut errors),
            auth: auth(body.get("auth"), &mut errors),
        };
        if create {
            input.port = input.port.or(Some(22));
            if body.get("auth").is_none_or(Value::is_null) {
                input.auth = Some(Auth::Generated);
            }
        }
        errors.into_result()?;
        Ok(input)
    }
}

/// A string field checked by `check` (which answers the stored value or why not).
fn text(
    body: &Map<String, Value>,
    field: &str,
    errors: &mut ValidationErrors,
    check: impl Fn(&str) -> Result<String, String>,
) -> Option<String> {
    match body.get(field)? {
        Value::Null => None,
        Value::String(s) => check(s).map_err(|e| errors.add(field, e)).ok(),
        _ => {
            errors.add(field, "must be a string");
            None
        }
    }
}

/// A DNS name or an IP address (an IPv6 one without brackets), kept as sent.
fn host(v: &str) -> Result<String, String> {
    if v.parse::<IpAddr>().is_ok() {
        return Ok(v.to_owned());
    }
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    let name = v.strip_suffix('.').unwrap_or(v);
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        return Err(
            "must be a host name (letters, digits, hyphens and dots) or an IP address (IPv6 without brackets)"
                .into(),
        );
    }
    Ok(v.to_owned())
}

fn username(v: &str) -> Result<String, String> {
    let ok = v.len() <= 32
        && v.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if ok {
        Ok(v.to_owned())
    } else {
        Err("must be a user name of up to 32 letters, digits, `_`, `-` and `.`, starting with a letter or `_`".into())
    }
}

fn port(value: Option<&Value>, errors: &mut ValidationErrors) -> Option<i32> {
    match value? {
        Value::Null => None,
        v => match v.as_i64().filter(|p| (1..=65535).contains(p)) {
            Some(p) => i32::try_from(p).ok(),
            None => {
                errors.add("port", "must be a whole number from 1 to 65535");
                None
            }
        },
    }
}

fn auth(value: Option<&Value>, errors: &mut ValidationErrors) -> Option<Auth> {
    let value = value.filter(|v| !v.is_null())?;
    let Some(object) = value.as_object() else {
        errors.add(
            "auth",
            r#"must be {"type": "generated"} or {"type": "private_key", "private_key": "...", "passphrase": "..."}"#,
        );
        return None;
    };
    let string = |field: &str, errors: &mut ValidationErrors| match object.get(field) {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => {
            errors.add(&format!("auth.{field}"), "must be a string");
            None
        }
    };
    match object.get("type").and_then(Value::as_str) {
        Some("generated") => {
            if let Some(extra) = object.keys().find(|k| *k != "type") {
                errors.add(&format!("auth.{extra}"), "is not used with `generated`");
                return None;
            }
            Some(Auth::Generated)
        }
        Some("private_key") => {
            if let Some(extra) = object
                .keys()
                .find(|k| !["type", "private_key", "passphrase"].contains(&k.as_str()))
            {
                errors.add(
                    &format!("auth.{extra}"),
                    "is not a field of `private_key` auth",
                );
                return None;
            }
            let key = string("private_key", errors);
            let passphrase = string("passphrase", errors);
            let Some(key) = key else {
                errors.add("auth.private_key", "is required with `private_key`");
                return None;
            };
            if key.len() > MAX_KEY_BYTES {
                errors.add(
                    "auth.private_key",
                    format!("must be at most {MAX_KEY_BYTES} bytes"),
                );
                return None;
            }
            if passphrase
                .as_ref()
                .is_some_and(|p| p.len() > MAX_PASSPHRASE)
            {
                errors.add(
                    "auth.passphrase",
                    format!("must be at most {MAX_PASSPHRASE} bytes"),
                );
                return None;
            }
            let passphrase = passphrase.filter(|p| !p.is_empty());
            match ssh::usable_private_key(&key, passphrase.as_deref()) {
                Ok((private, public)) => Some(Auth::PrivateKey(private, public)),
                Err(refused) => {
                    let field = match refused {
                        KeyRefused::WrongPassphrase => "auth.passphrase",
                        KeyRefused::NeedsPassphrase | KeyRefused::Unreadable => "auth.private_key",
                    };
                    let what = if field == "auth.passphrase" {
                        "the key"
                    } else {
                        "it"
                    };
                    errors.add(field, format!("{what} {refused}"));
                    None
                }
            }
        }
        _ => {
            errors.add("auth.type", "must be `generated` or `private_key`");
            None
        }
    }
}

/// A server as the app reads it. Its private key is never shown.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Server)]
pub struct ServerResponse {
    pub id: Uuid,
    #[schema(example = "home box")]
    pub name: String,
    #[schema(example = "203.0.113.10")]
    pub host: String,
    pub port: i32,
    #[schema(example = "deploy")]
    pub username: String,
    /// `generated` (DevPocket made the key pair) or `private_key` (the owner's).
    #[schema(example = "generated")]
    pub auth_type: String,
    /// The line to append to `~/.ssh/authorized_keys` on the server.
    #[schema(example = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI… devpocket-server-…")]
    pub public_key: String,
    /// `pending_trust` (a host key waits for its owner's confirmation), `online`,
    /// `offline`, `auth_failed` or `host_key_mismatch`.
    #[schema(example = "online")]
    pub status: String,
    /// Why, in words (what failed, what to do).
    pub status_message: Option<String>,
    pub last_checked: Option<DateTime<Utc>>,
    /// The trusted host key's fingerprint, as `ssh-keygen -lf` prints it.
    #[schema(example = "SHA256:uN0PCCFCGL7HD0X0Q2Ko1sd9ZnTWoLOHCuzkrc5A8Ps")]
    pub host_key_fingerprint: Option<String>,
    /// The fingerprint of a host key the server presented that nobody confirmed
    /// yet: `POST /servers/{id}/trust` with it, after comparing it with the server's own.
    pub presented_host_key_fingerprint: Option<String>,
    pub uptime_seconds: Option<u64>,
    /// Over 1, 5 and 15 minutes.
    pub load_average: Option<[f64; 3]>,
    pub memory_total_bytes: Option<u64>,
    pub memory_used_bytes: Option<u64>,
    /// The root file system.
    pub disk_total_bytes: Option<u64>,
    pub disk_used_bytes: Option<u64>,
    /// Whether a Docker engine answers the server's user.
    pub docker_available: bool,
    /// `docker compose` or `docker-compose`, whichever is there; null: neither.
    pub compose_command: Option<String>,
    pub containers_running: Option<u64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

fn fingerprint(key: Option<&str>) -> Option<String> {
    key.and_then(|k| ssh::fingerprint(k).ok())
}

impl From<Server> for ServerResponse {
    fn from(s: Server) -> Self {
        let facts: ServerFacts = s
            .facts
            .read("facts")
            .ok()
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        Self {
            host_key_fingerprint: fingerprint(s.host_key.as_deref()),
            presented_host_key_fingerprint: fingerprint(s.presented_host_key.as_deref()),
            id: s.id,
            name: s.name,
            host: s.host,
            port: s.port,
            username: s.username,
            auth_type: s.auth_type,
            public_key: s.public_key,
            status: s.status,
            status_message: s.status_message,
            last_checked: s.last_checked,
            uptime_seconds: facts.uptime_seconds,
            load_average: facts.load_average,
            memory_total_bytes: facts.memory_total_bytes,
            memory_used_bytes: facts.memory_used_bytes,
            disk_total_bytes: facts.disk_total_bytes,
            disk_used_bytes: facts.disk_used_bytes,
            docker_available: facts.docker,
            compose_command: facts.compose,
            containers_running: facts.containers_running,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// How to reach `server`, once its owner trusted a host key.
pub fn access(state: &AppState, server: &Server) -> Result<Option<ServerAccess>, ApiError> {
    let Some(host_key) = server.host_key.clone() else {
        return Ok(None);
    };
    let private_key = state
        .secrets
        .open(&server.private_key)
        .map_err(ApiError::internal)
        .and_then(|k| String::from_utf8(k).map_err(ApiError::internal))?;
    Ok(Some(ServerAccess {
        host: server.host.clone(),
        port: u16::try_from(server.port).unwrap_or(22),
        username: server.username.clone(),
        private_key,
        host_key,
    }))
}

/// Contacts `server` now and records what it found: with no trusted host key, the
/// key it presents (for its owner to confirm); with one, its status and figures.
/// Answers the server as recorded (as it is, if it changed meanwhile).
pub async fn check(state: &AppState, server: Server) -> Result<Server, ApiError> {
    let settings = &state.settings.servers.actors;
    let port = u16::try_from(server.port).unwrap_or(22);
    let outcome = match access(state, &server)? {
        None => match actor::presented_host_key(settings, &server.host, port).await {
            Ok(key) => CheckOutcome {
                status: "pending_trust",
                status_message: Some(Some(format!(
                    "confirm the host key {} (compare it with `ssh-keygen -lf` of the server's host key) to trust this server",
                    fingerprint(Some(&key)).unwrap_or_default()
                ))),
                last_checked: Utc::now(),
                facts: None,
                presented_host_key: Some(Some(key)),
            },
            Err(err) => failed(&err, None),
        },
        Some(access) => {
            let server_actor = state
                .actors
                .server(server.user_id, server.id)
                .await
                .map_err(|e| ApiError::ServiceUnavailable(e.to_string()))?;
            match server_actor.send(CheckServer(access)).await {
                Ok(Ok(facts)) => CheckOutcome {
                    status: "online",
                    status_message: Some(None),
                    last_checked: Utc::now(),
                    facts: serde_json::to_value(facts).ok(),
                    presented_host_key: Some(None),
                },
                Ok(Err(err @ ServerError::HostKeyMismatch { .. })) => {
                    // What it presents now waits for its owner's word, never taken.
                    let presented = actor::presented_host_key(settings, &server.host, port)
                        .await
                        .ok();
                    failed(&err, presented)
                }
                Ok(Err(err)) => failed(&err, None),
                Err(mailbox) => failed(&ServerError::from(mailbox), None),
            }
        }
    };
    state.metrics.record(|| {
        ::metrics::counter!("devpocket_server_checks_total", "status" => outcome.status)
            .increment(1);
    });
    let mut conn = state.pool.get().await?;
    let recorded = db::record_check(&mut conn, server.id, server.updated_at, &outcome).await?;
    drop(conn);
    if outcome.status == "online" {
        crate::apps::check_apps_on(state, &server).await;
    }
    let mut conn = state.pool.get().await?;
    match recorded {
        Some(recorded) => Ok(recorded),
        None => db::find_owned(&mut conn, server.user_id, server.id)
            .await?
            .ok_or_else(|| not_found(&server.id.to_string())),
    }
}

fn failed(err: &ServerError, presented: Option<String>) -> CheckOutcome {
    CheckOutcome {
        status: err.status(),
        status_message: Some(Some(err.to_string())),
        last_checked: Utc::now(),
        facts: None,
        presented_host_key: presented.map(Some),
    }
}

pub fn not_found(id: &str) -> ApiError {
    ApiError::NotFound(format!("No server with id {id}."))
}

/// What a `PUT` stores, from what it sent: a new address or port clears the trust
/// (another machine may answer there), a new key is made or taken.
pub fn changes(
    state: &AppState,
    server: &Server,
    input: ServerInput,
) -> Result<(ServerChanges, bool), ApiError> {
    let moved = input.host.as_ref().is_some_and(|h| *h != server.host)
        || input.port.is_some_and(|p| p != server.port);
    let mut changes = ServerChanges {
        name: input.name,
        host: input.host,
        port: input.port,
        username: input.username,
        ..ServerChanges::default()
    };
    if let Some(auth) = input.auth {
        changes.auth_type = Some(auth.type_name());
        let (private, public) = auth.key_pair(server.id)?;
        changes.private_key = Some(
            state
                .secrets
                .seal(private.as_bytes())
                .map_err(ApiError::internal)?,
        );
        changes.public_key = Some(public);
    }
    if moved {
        changes.host_key = Some(None);
        changes.presented_host_key = Some(None);
        changes.status = Some("pending_trust");
        changes.status_message = Some(Some(
            "the address changed: its host key is to be confirmed again".into(),
        ));
    }
    Ok((changes, moved))
}

/// Starts this process's periodic checks; they end with the application. Each
/// pass claims the servers not checked for `DEVPOCKET_SERVER_CHECK_EVERY` (so that
/// with several processes each is checked once) and checks them together.
pub fn spawn_checks(state: &Arc<AppState>) {
    let every = state.settings.servers.check_every;
    let pass = (every / 10).clamp(
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(30),
    );
    crate::periodic::every(state, pass, move |state| async move {
        let due = match state.pool.get().await {
            Ok(mut conn) => db::claim_due(&mut conn, every, 100)
                .await
                .map_err(anyhow::Error::from),
            Err(e) => Err(anyhow::Error::from(e)),
        };
        let due = match due {
            Ok(due) => due,
            Err(err) => {
                tracing::warn!(error = %err, "the server checks could not read which servers are due; they try again at the next pass");
                return;
            }
        };
        let checks = due.into_iter().map(|server| {
            let state = state.clone();
            async move {
                let id = server.id;
                if let Err(err) = check(&state, server).await {
                    tracing::warn!(server_id = %id, error = %err, "a server check could not be recorded");
                }
            }
        });
        futures_util::future::join_all(checks).await;
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    fn fields(err: ApiError) -> Vec<String> {
        match err {
            ApiError::Validation(e) => e.fields.keys().cloned().collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_registration_needs_a_name_a_host_and_a_user_and_defaults_the_rest() {
        let input = ServerInput::from_json(
            &body(
                serde_json::json!({"name": " box ", "host": "Example.COM.", "username": "deploy"}),
            ),
            true,
        )
        .unwrap();
        // Kept as sent: they read back as they were written.
        assert_eq!(input.name.as_deref(), Some(" box "));
        assert_eq!(input.host.as_deref(), Some("Example.COM."));
        assert_eq!(input.port, Some(22));
        assert!(matches!(input.auth, Some(Auth::Generated)));
        let err = ServerInput::from_json(&body(serde_json::json!({})), true).unwrap_err();
        assert_eq!(fields(err), ["host", "name", "username"]);
    }

    #[test]
    fn hosts_users_ports_and_keys_are_refused_with_the_field_to_fix() {
        for (field, value) in [
            ("host", serde_json::json!("a b")),
            ("host", serde_json::json!("-x.com")),
            ("host", serde_json::json!("x;rm -rf /")),
            ("host", serde_json::json!("$(id)")),
            ("host", serde_json::json!(7)),
            ("username", serde_json::json!("root;id")),
            ("username", serde_json::json!("-oProxyCommand=x")),
            ("port", serde_json::json!(0)),
            ("port", serde_json::json!(70000)),
            ("port", serde_json::json!("22")),
            ("name", serde_json::json!("")),
            ("name", serde_json::json!("   ")),
            ("host", serde_json::json!("[::1]")),
            ("host", serde_json::json!(" h")),
            ("name", serde_json::json!("a\u{7}b")),
        ] {
            let mut b = body(serde_json::json!({"name": "n", "host": "h", "username": "u"}));
            b.insert(field.into(), value.clone());
            let err = ServerInput::from_json(&b, true).expect_err(&format!("{field} {value}"));
            assert_eq!(fields(err), [field], "{value}");
        }
        for (auth, field) in [
            (serde_json::json!("generated"), "auth"),
            (serde_json::json!({"type": "password"}), "auth.type"),
            (
                serde_json::json!({"type": "private_key"}),
                "auth.private_key",
            ),
            (
                serde_json::json!({"type": "private_key", "private_key": "nonsense"}),
                "auth.private_key",
            ),
            (
                serde_json::json!({"type": "generated", "private_key": "x"}),
                "auth.private_key",
            ),
        ] {
            let b =
                body(serde_json::json!({"name": "n", "host": "h", "username": "u", "auth": auth}));
            let err = ServerInput::from_json(&b, true).expect_err(&auth.to_string());
            assert_eq!(fields(err), [field], "{auth}");
        }
        let b =
            body(serde_json::json!({"name": "n", "host": "h", "username": "u", "colour": "red"}));
        assert_eq!(
            fields(ServerInput::from_json(&b, true).unwrap_err()),
            ["colour"]
        );
    }

    #[test]
    fn an_owners_key_is_kept_unencrypted_with_its_public_line() {
        let (private, public) = ssh::generate_keypair("mine").unwrap();
        let b = body(
            serde_json::json!({"name": "n", "host": "::1", "username": "u",
            "auth": {"type": "private_key", "private_key": private}}),
        );
        let input = ServerInput::from_json(&b, true).unwrap();
        assert_eq!(input.host.as_deref(), Some("::1"));
        match input.auth {
            Some(Auth::PrivateKey(_, line)) => assert_eq!(line.trim(), public.trim()),
            other => panic!("{other:?}"),
        }
    }
}
