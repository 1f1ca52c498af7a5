//! `resource_limits` of a new environment (older apps: `resources`): what the app may
//! send and DevPocket stores and shows back as it was sent. DevPocket does not apply
//! these values to the machine (its size does); they are the app's to keep.
//!
//! An object (or null) with only the members `cpu`, `memory`, `storage` and
//! `max_instances`, each null or:
//! - `cpu`: a number from 0.001 to 1024, or a string of one (`"2"`, `"0.5"`) or of
//!   millicores (`"500m"`);
//! - `memory`, `storage`: a number from 0.001 to 2^53, or a string of one with an
//!   optional unit: `K`, `M`, `G`, `T`, `P` or `E`, each optionally followed by `i`
//!   and/or `B`, in any case (`"4Gi"`, `"512Mi"`, `"10GB"`);
//! - `max_instances`: a whole number from 1 to 100, or a string of one.
//!
//! Strings are at most 16 characters. Anything else is a 422 naming the member.

use serde_json::{Map, Value, json};
use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, SchemaType, Type};

use crate::error::ValidationErrors;

pub const MAX_TEXT: usize = 16;
pub const MAX_CPU: f64 = 1024.0;
pub const MAX_QUANTITY: f64 = 9_007_199_254_740_992.0; // 2^53
pub const MIN_QUANTITY: f64 = 0.001;
pub const MAX_INSTANCES: u32 = 100;

/// What each member takes, for the messages.
const CPU: &str =
    "must be null, a number from 0.001 to 1024, or a string such as \"2\", \"0.5\" or \"500m\"";
const SIZE: &str = "must be null, a number from 0.001 to 2^53, or a string such as \"4Gi\", \"512Mi\" or \"10GB\" (at most 16 characters)";
const INSTANCES: &str = "must be null or a whole number from 1 to 100 (or a string of one)";

/// The patterns of the strings (the numbers' ranges are checked too).
const CPU_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?m?$";
const SIZE_PATTERN: &str = r"^[0-9]+(\.[0-9]+)?([KkMmGgTtPpEe][Ii]?)?[Bb]?$";
const INSTANCES_PATTERN: &str = r"^[0-9]+$";

/// The OpenAPI schema of `resource_limits` in a request (`ResourceLimitsRequest`).
pub struct LimitsRequest;

impl utoipa::PartialSchema for LimitsRequest {
    fn schema() -> RefOr<Schema> {
        let member =
            |number: Type, min: f64, max: f64, pattern: &str, rule: &str, example: Value| {
                ObjectBuilder::new()
                    .schema_type(SchemaType::from_iter([Type::String, number, Type::Null]))
                    .minimum(Some(min))
                    .maximum(Some(max))
                    .max_length(Some(MAX_TEXT))
                    .pattern(Some(pattern))
                    .description(Some(rule.strip_prefix("must be ").unwrap_or(rule)))
                    .examples([example])
                    .build()
            };
        ObjectBuilder::new()
            .description(Some(
                "Only these members, each optional and nullable. Kept as sent and shown \
                 back in `resource_limits`; not applied to the machine (its size is).",
            ))
            .property(
                "cpu",
                member(
                    Type::Number,
                    MIN_QUANTITY,
                    MAX_CPU,
                    CPU_PATTERN,
                    CPU,
                    json!("2"),
                ),
            )
            .property(
                "memory",
                member(
                    Type::Number,
                    MIN_QUANTITY,
                    MAX_QUANTITY,
                    SIZE_PATTERN,
                    SIZE,
                    json!("4Gi"),
                ),
            )
            .property(
                "storage",
                member(
                    Type::Number,
                    MIN_QUANTITY,
                    MAX_QUANTITY,
                    SIZE_PATTERN,
                    SIZE,
                    json!("10Gi"),
                ),
            )
            .property(
                "max_instances",
                member(
                    Type::Integer,
                    1.0,
                    f64::from(MAX_INSTANCES),
                    INSTANCES_PATTERN,
                    INSTANCES,
                    json!(1),
                ),
            )
            .additional_properties(Some(AdditionalProperties::FreeForm(false)))
            .into()
    }
}

impl utoipa::ToSchema for LimitsRequest {
    fn name() -> std::borrow::Cow<'static, str> {
        std::borrow::Cow::Borrowed("ResourceLimitsRequest")
    }
}

/// The limits to store, from the value sent as `field` (`resource_limits` or
/// `resources`); problems go to `errors` under `field.member`.
pub fn validate(value: &Value, field: &str, errors: &mut ValidationErrors) -> Map<String, Value> {
    let mut out = Map::new();
    let map = match value {
        Value::Null => return out,
        Value::Object(map) => map,
        _ => {
            errors.add(
                field,
                "must be null or an object such as {\"cpu\": \"2\", \"memory\": \"4Gi\"}",
            );
            return out;
        }
    };
    for (member, value) in map {
        let name = format!("{field}.{member}");
        let (valid, rule) = match member.as_str() {
            "cpu" => (cpu(value), CPU),
            "memory" | "storage" => (size(value), SIZE),
            "max_instances" => (instances(value), INSTANCES),
            _ => {
                errors.add(
                    &name,
                    "is not a member of resource_limits: use cpu, memory, storage and max_instances",
                );
                continue;
            }
        };
        if valid {
            out.insert(member.clone(), value.clone());
        } else {
            errors.add(&name, rule);
        }
    }
    out
}

fn cpu(value: &Value) -> bool {
    let within = |n: f64| (MIN_QUANTITY..=MAX_CPU).contains(&n);
    match value {
        Value::Null => true,
        Value::Number(n) => n.as_f64().is_some_and(within),
        Value::String(s) if s.len() <= MAX_TEXT => match s.strip_suffix('m') {
            Some(millis) => decimal(millis).is_some_and(|n| within(n / 1000.0)),
            None => decimal(s).is_some_and(within),
        },
        _ => false,
    }
}

fn size(value: &Value) -> bool {
    let within = |n: f64| (MIN_QUANTITY..=MAX_QUANTITY).contains(&n);
    match value {
        Value::Null => true,
        Value::Number(n) => n.as_f64().is_some_and(within),
        Value::String(s) if s.len() <= MAX_TEXT => {
            let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
            unit(&s[digits.len()..]) && decimal(digits).is_some_and(within)
        }
        _ => false,
    }
}

fn instances(value: &Value) -> bool {
    let within = |n: u64| (1..=u64::from(MAX_INSTANCES)).contains(&n);
    match value {
        Value::Null => true,
        Value::Number(n) => n.as_u64().is_some_and(within),
        Value::String(s) if s.len() <= MAX_TEXT => {
            s.bytes().all(|b| b.is_ascii_digit()) && s.parse().is_ok_and(within)
        }
        _ => false,
    }
}

/// `12` or `12.5`: digits with an optional fraction, nothing else.
fn decimal(text: &str) -> Option<f64> {
    let (whole, fraction) = text.split_once('.').unwrap_or((text, "0"));
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(whole) && digits(fraction))
        .then(|| text.parse().ok())
        .flatten()
}

/// Empty, `B`, or one of `K M G T P E` then optionally `i`, then optionally `B`.
fn unit(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    let rest = match text.strip_prefix(['k', 'm', 'g', 't', 'p', 'e']) {
        Some(rest) => rest.strip_prefix('i').unwrap_or(rest),
        None => &text,
    };
    rest.is_empty() || rest == "b"
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn problems(value: Value) -> Vec<String> {
        let mut errors = ValidationErrors::default();
        validate(&value, "resource_limits", &mut errors);
        errors.fields.into_keys().collect()
    }

    #[test]
    fn what_the_app_sends_is_kept() {
        for ok in [
            json!(null),
            json!({}),
            json!({"cpu": "2", "memory": "4Gi", "storage": "10Gi", "max_instances": 1}),
            json!({"cpu": 2, "memory": 4096, "storage": 10.5, "max_instances": "3"}),
            json!({"cpu": "500m", "memory": "512MiB", "storage": "10GB", "max_instances": null}),
            json!({"cpu": 0.25, "memory": "1.5G", "storage": "1024"}),
        ] {
            assert!(problems(ok.clone()).is_empty(), "{ok}");
        }
    }

    #[test]
    fn each_bad_member_is_named() {
        assert_eq!(problems(json!([1])), ["resource_limits"]);
        assert_eq!(
            problems(json!({
                "cpu": f64::MAX,
                "memory": -0.0,
                "storage": "10 Gi",
                "max_instances": 1.5,
                "gpu": 1,
            })),
            [
                "resource_limits.cpu",
                "resource_limits.gpu",
                "resource_limits.max_instances",
                "resource_limits.memory",
                "resource_limits.storage",
            ]
        );
        for bad in [
            json!({"cpu": 0}),
            json!({"cpu": "0m"}),
            json!({"cpu": "1e3"}),
            json!({"cpu": "2x"}),
            json!({"cpu": {"nested": 1}}),
            json!({"memory": "4Gix"}),
            json!({"memory": "12345678901234567Gi"}),
            json!({"memory": u64::MAX}),
            json!({"memory": "-1Gi"}),
            json!({"storage": ".5G"}),
            json!({"storage": true}),
            json!({"max_instances": 0}),
            json!({"max_instances": "101"}),
        ] {
            assert!(!problems(bad.clone()).is_empty(), "{bad}");
        }
    }
}
