//! Environment rules the HTTP layer calls: validating a new environment, deriving
//! its provider-safe name, plan quotas, and the object the app reads.

pub mod auto_stop;
pub mod limits;
pub mod list_cache;
pub mod placement;

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use devpocket_actors::model::{EnvironmentRecord, Phase, Status};
use serde::Serialize;
use serde_json::{Value, json};
use utoipa::ToSchema;
use utoipa::openapi::schema::{Object, ObjectBuilder, SchemaType, Type};
use uuid::Uuid;

use crate::db::environments::Environment;
use crate::db::json::Unreadable;
use crate::error::ValidationErrors;
use crate::plans;

pub const MAX_VARIABLES: usize = 100;
pub const MAX_VARIABLE_BYTES: usize = 4096;

/// A provider-safe name: lower-case letters, digits and `-`, from what a person
/// typed, with a short suffix of the id so two of them never collide.
pub fn slug(name: &str, id: Uuid) -> String {
    let mut out = String::new();
    for c in name.chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('-') && !out.is_empty() {
            out.push('-');
        }
    }
    let base: String = out.trim_matches('-').chars().take(40).collect();
    let base = base.trim_end_matches('-');
    let base = if base.is_empty() { "env" } else { base };
    format!("{base}-{}", &id.simple().to_string()[..6])
}

pub fn validate_name(name: &str, errors: &mut ValidationErrors) {
    let len = name.chars().count();
    if !(1..=64).contains(&len) {
        errors.add("name", "must be 1 to 64 characters long");
    }
    if name.chars().any(char::is_control) {
        errors.add("name", "must not contain control characters");
    }
}

/// Environment variables: a map of valid shell names to strings.
pub fn validate_variables(
    value: &Value,
    errors: &mut ValidationErrors,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let Some(map) = value.as_object() else {
        if !value.is_null() {
            errors.add(
                "environment_variables",
                "must be an object of names to strings",
            );
        }
        return out;
    };
    if map.len() > MAX_VARIABLES {
        errors.add(
            "environment_variables",
            format!("at most {MAX_VARIABLES} variables"),
        );
    }
    for (key, value) in map {
        let valid_key = key
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && key.len() <= 128;
        if !valid_key {
            errors.add(
                "environment_variables",
                format!("`{key}` is not a valid variable name (letters, digits, '_', not starting with a digit)"),
            );
            continue;
        }
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            _ => {
                errors.add("environment_variables", format!("`{key}` must be a string"));
                continue;
            }
        };
        if text.len() > MAX_VARIABLE_BYTES || text.contains('\0') {
            errors.add(
                "environment_variables",
                format!("`{key}` must be at most {MAX_VARIABLE_BYTES} bytes with no NUL"),
            );
            continue;
        }
        out.insert(key.clone(), text);
    }
    out
}

/// DigitalOcean sizes an environment may ask for by slug, and the DevPocket size
/// each amounts to (the smallest that covers its CPUs and memory), for plan limits.
pub const DIGITALOCEAN_SIZES: [(&str, &str, &str, &str); 6] = [
    ("s-1vcpu-1gb", "small", "1", "1Gi"),
    ("s-1vcpu-2gb", "medium", "1", "2Gi"),
    ("s-2vcpu-2gb", "medium", "2", "2Gi"),
    ("s-2vcpu-4gb", "medium", "2", "4Gi"),
    ("s-4vcpu-8gb", "large", "4", "8Gi"),
    ("s-8vcpu-16gb", "xlarge", "8", "16Gi"),
];

/// What a DigitalOcean environment costs, running and stopped.
pub const DIGITALOCEAN_BILLING_NOTE: &str = "Running, DigitalOcean bills its droplet and its home volume. \
     Stopped, only the home volume: a stop destroys the droplet and keeps the volume (your files in your home), \
     and a start makes a new droplet with it. Deleting it ends the charges.";

/// The environment object of the mobile contract, plus DevPocket's own fields.
#[derive(Debug, Serialize, ToSchema)]
#[schema(as = Environment)]
pub struct EnvironmentResponse {
    pub id: Uuid,
    /// As the person typed it ("My Awesome Project").
    pub name: String,
    /// The template's id.
    pub template_id: String,
    /// The template's id again, for older apps.
    pub template: String,
    pub template_name: String,
    #[schema(schema_with = status_schema)]
    pub status: String,
    /// The values given at creation, else the size's; members may be null.
    #[schema(value_type = ResourceLimits)]
    pub resource_limits: Value,
    /// `resource_limits` as strings, for older apps.
    #[schema(value_type = Resources)]
    pub resources: Value,
    /// `{}` when none.
    #[schema(value_type = BTreeMap<String, String>)]
    pub environment_variables: Value,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// When the environment was last used: its last activity (see
    /// `GET /environments/{id}/activity`).
    pub last_accessed: Option<DateTime<Utc>>,
    /// Its own idle timeout in minutes, as set (0: never); null: its plan's. The
    /// one that applies is in `GET /environments/{id}/activity`.
    pub auto_stop_minutes: Option<i32>,
    pub external_url: Option<String>,
    pub web_port: Option<i32>,
    pub ssh_port: Option<i32>,
    /// `local` or `digitalocean`.
    #[schema(example = "local")]
    pub provider: String,
    /// `local`, or a DigitalOcean region such as `nyc3`.
    #[schema(example = "local")]
    pub region: String,
    /// `small`, `medium`, `large` or `xlarge` (local provider); a DigitalOcean
    /// size slug such as `s-1vcpu-1gb` (DigitalOcean).
    #[schema(example = "small")]
    pub size: String,
    #[schema(schema_with = phase_schema)]
    pub phase: String,
    /// How far provisioning got, 0–100.
    pub progress: i32,
    /// The current bootstrap stage while installing; what went wrong for `error`.
    pub status_message: Option<String>,
    pub ip_address: Option<String>,
    pub started_at: Option<DateTime<Utc>>,
    pub stopped_at: Option<DateTime<Utc>>,
    /// What the environment costs, running and stopped (DigitalOcean); null on
    /// the local provider.
    pub billing_note: Option<&'static str>,
}

/// `resource_limits` of the environment object. Each member is as given at
/// creation (a string or a number) or the size's (a string), or null;
/// `max_instances` is 1 unless given.
#[derive(ToSchema)]
pub struct ResourceLimits {
    #[schema(schema_with = limit_schema)]
    pub cpu: Option<Value>,
    #[schema(schema_with = limit_schema)]
    pub memory: Option<Value>,
    #[schema(schema_with = limit_schema)]
    pub storage: Option<Value>,
    #[schema(schema_with = limit_schema)]
    pub max_instances: Option<Value>,
}

/// `resources` of the environment object: `resource_limits` as strings.
#[derive(ToSchema)]
pub struct Resources {
    #[schema(example = "1")]
    pub cpu: Option<String>,
    #[schema(example = "1Gi")]
    pub memory: Option<String>,
    #[schema(example = "10Gi")]
    pub storage: Option<String>,
}

/// A string schema whose values are `words`.
fn one_of(words: impl IntoIterator<Item = &'static str>, description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(words))
        .description(Some(description))
        .build()
}

fn status_schema() -> Object {
    one_of(
        Status::ALL.iter().map(|s| s.as_str()),
        "Exactly one of the five values the app knows; `phase` has the detail.",
    )
}

fn phase_schema() -> Object {
    one_of(
        Phase::ALL.iter().map(|p| p.as_str()),
        "Where the environment is within its `status`.",
    )
}

/// A member of `resource_limits`: as given (a string or a number), or null.
fn limit_schema() -> Object {
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([
            Type::String,
            Type::Number,
            Type::Null,
        ]))
        .examples([json!("1Gi")])
        .build()
}

impl EnvironmentResponse {
    /// The environment as the app reads it; a row with a stored value that cannot be
    /// read has no faithful answer.
    pub fn new(env: Environment, template_name: String) -> Result<Self, Unreadable> {
        let limits = match env.resource_limits.read("resource_limits")? {
            Value::Object(limits) => limits.clone(),
            _ => serde_json::Map::new(),
        };
        let environment_variables = match env.environment_variables.read("environment_variables")? {
            variables @ Value::Object(_) => variables.clone(),
            _ => json!({}),
        };
        let (resource_limits, resources) = sized(&env.size, &limits);
        Ok(Self {
            id: env.id,
            name: env.name,
            template_id: env.template_id.to_string(),
            template: env.template_id.to_string(),
            template_name,
            status: env.status,
            resource_limits,
            resources,
            environment_variables,
            created_at: env.created_at,
            updated_at: env.updated_at,
            last_accessed: env.last_accessed,
            auto_stop_minutes: env.auto_stop_minutes,
            external_url: None,
            web_port: None,
            ssh_port: env.ssh_port,
            billing_note: billing_note(&env.provider),
            provider: env.provider,
            region: env.region,
            size: env.size,
            phase: env.phase,
            progress: env.progress,
            status_message: env.status_message,
            ip_address: env.ip_address,
            started_at: env.started_at,
            stopped_at: env.stopped_at,
        })
    }

    /// The environment as its actor answered after a change (durable by then).
    pub fn from_record(record: EnvironmentRecord) -> Self {
        let (resource_limits, resources) = sized(&record.size, &record.resource_limits);
        let machine = record.machine.as_ref();
        Self {
            id: record.id,
            name: record.name,
            template_id: record.template_id.to_string(),
            template: record.template_id.to_string(),
            template_name: record.template_name,
            status: record.status.to_string(),
            resource_limits,
            resources,
            environment_variables: json!(record.environment_variables),
            created_at: record.times.created_at,
            updated_at: record.times.updated_at,
            last_accessed: record.times.last_accessed,
            auto_stop_minutes: record.auto_stop_minutes,
            external_url: None,
            web_port: None,
            ssh_port: machine.map(|m| i32::from(m.port)),
            ip_address: machine.map(|m| m.host.clone()),
            billing_note: billing_note(&record.provider),
            provider: record.provider,
            region: record.region,
            size: record.size,
            phase: record.phase.to_string(),
            progress: record.progress,
            status_message: record.status_message,
            started_at: record.times.started_at,
            stopped_at: record.times.stopped_at,
        }
    }
}

fn billing_note(provider: &str) -> Option<&'static str> {
    (provider == devpocket_actors::provider::digitalocean::NAME)
        .then_some(DIGITALOCEAN_BILLING_NOTE)
}

/// `resource_limits` (as given at creation, else the size's) and `resources` (the
/// same as strings) for an environment of `size`.
fn sized(size: &str, limits: &serde_json::Map<String, Value>) -> (Value, Value) {
    // A DigitalOcean slug: its own CPUs and memory, the rest of its equivalent.
    let slug = DIGITALOCEAN_SIZES.iter().find(|s| s.0 == size);
    let equivalent = slug.and_then(|s| plans::size(s.1));
    let size = plans::size(size).or(equivalent).map(|s| plans::Size {
        cpu: slug.map_or(s.cpu, |d| d.2),
        memory: slug.map_or(s.memory, |d| d.3),
        ..*s
    });
    let size = size.as_ref();
    let pick = |key: &str, fallback: Option<&str>| -> Value {
        match limits.get(key) {
            Some(v) if !v.is_null() => v.clone(),
            _ => fallback.map_or(Value::Null, |f| json!(f)),
        }
    };
    let resource_limits = json!({
        "cpu": pick("cpu", size.map(|s| s.cpu)),
        "memory": pick("memory", size.map(|s| s.memory)),
        "storage": pick("storage", size.map(|s| s.storage)),
        "max_instances": limits.get("max_instances").cloned().unwrap_or(json!(1)),
    });
    let as_text = |v: &Value| match v {
        Value::String(s) => json!(s),
        Value::Null => Value::Null,
        other => json!(other.to_string()),
    };
    let resources = json!({
        "cpu": as_text(&resource_limits["cpu"]),
        "memory": as_text(&resource_limits["memory"]),
        "storage": as_text(&resource_limits["storage"]),
    });
    (resource_limits, resources)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_provider_safe() {
        let id = Uuid::nil();
        assert_eq!(slug("My Awesome Project", id), "my-awesome-project-000000");
        assert_eq!(slug("  ünïcödé!! ", id), "n-c-d-000000");
        assert_eq!(slug("!!!", id), "env-000000");
        assert!(slug(&"x".repeat(200), id).len() <= 47);
    }

    #[test]
    fn variables_are_checked() {
        let mut errors = ValidationErrors::default();
        let vars = validate_variables(&json!({"GOOD_1": "x", "PORT": 8080}), &mut errors);
        assert!(errors.is_empty());
        assert_eq!(vars["PORT"], "8080");
        validate_variables(&json!({"1BAD": "x", "ok": {"nested": 1}}), &mut errors);
        assert_eq!(errors.fields["environment_variables"].len(), 2);
    }
}
