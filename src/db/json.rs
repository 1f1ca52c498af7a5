//! jsonb as this server stores and reads it: a stored value that cannot be read is
//! its row's problem, not its query's; and the rule for which free-form values are
//! stored at all (those that read back as they were sent).
//!
//! PostgreSQL keeps a jsonb number as an exact `numeric` and prints it without an
//! exponent: `1.7976931348623157e308` comes back as 309 digits, `5e-324` as 326
//! characters. diesel's own reading of jsonb into `serde_json::Value` fails the whole
//! query on the first value serde_json cannot parse (a number out of its range), so
//! one such row, however it got there, failed every list it was in.

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::pg::{Pg, PgValue};
use diesel::sql_types::Jsonb;
use serde_json::Value;

/// A jsonb column as read from a row.
#[derive(Debug, Clone, PartialEq, FromSqlRow)]
pub enum StoredJson {
    Readable(Value),
    /// What serde_json said about the text PostgreSQL sent.
    Unreadable(String),
}

impl FromSql<Jsonb, Pg> for StoredJson {
    fn from_sql(value: PgValue<'_>) -> deserialize::Result<Self> {
        Ok(match value.as_bytes().split_first() {
            // The binary jsonb format: a version byte (1), then the text.
            Some((1, text)) => match serde_json::from_slice(text) {
                Ok(value) => Self::Readable(value),
                Err(err) => Self::Unreadable(err.to_string()),
            },
            _ => Self::Unreadable("not jsonb of format version 1".to_owned()),
        })
    }
}

/// A column of a row that could not be read: logged, and named in the answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Unreadable {
    pub column: &'static str,
    pub reason: String,
}

impl StoredJson {
    pub fn read(&self, column: &'static str) -> Result<&Value, Unreadable> {
        match self {
            Self::Readable(value) => Ok(value),
            Self::Unreadable(reason) => Err(Unreadable {
                column,
                reason: reason.clone(),
            }),
        }
    }

    /// The value, or `Value::Null` (read as none: no variables, packages or
    /// cloud-config) after logging why: for the machine's own use of a row, so that
    /// an environment with unreadable variables can still be stopped and deleted.
    pub fn or_empty(&self, table: &str, id: uuid::Uuid, column: &'static str) -> Value {
        match self.read(column) {
            Ok(value) => value.clone(),
            Err(err) => {
                err.log(table, id);
                Value::Null
            }
        }
    }
}

impl Unreadable {
    pub fn log(&self, table: &str, id: uuid::Uuid) {
        tracing::warn!(
            table,
            %id,
            column = self.column,
            reason = %self.reason,
            "a stored value cannot be read; the row is left out or refused"
        );
    }
}

/// The largest magnitude of a number in free-form stored JSON: every integer up to it
/// is exact in a double.
pub const MAX_NUMBER: f64 = 9_007_199_254_740_992.0; // 2^53
/// The smallest magnitude of a number other than zero: PostgreSQL prints a number
/// without an exponent, so 1e-300 would be stored as 302 characters.
pub const MIN_FRACTION: f64 = 1e-6;

/// Where in `value` (a path such as `write_files[0].mode`, under `field`) there is
/// something that would not read back as sent or would grow on the way, and why:
/// nesting deeper than `max_depth`, or a number that is -0 (PostgreSQL keeps no sign
/// on zero), larger than 2^53 or a fraction smaller than 10^-6.
pub fn unstorable(value: &Value, field: &str, max_depth: usize) -> Option<(String, String)> {
    match value {
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::INFINITY);
            let problem = if n.is_f64() && f == 0.0 && f.is_sign_negative() {
                Some("-0 is not a number that can be stored; send 0".to_owned())
            } else if f.abs() > MAX_NUMBER {
                Some(format!(
                    "numbers must be between -{MAX_NUMBER} and {MAX_NUMBER}"
                ))
            } else if f != 0.0 && f.abs() < MIN_FRACTION {
                Some(format!(
                    "numbers other than 0 must be at least {MIN_FRACTION} in size"
                ))
            } else {
                None
            };
            problem.map(|p| (field.to_owned(), p))
        }
        Value::Array(items) => {
            if !items.is_empty() && max_depth == 0 {
                return Some((field.to_owned(), "is nested too deeply".to_owned()));
            }
            items.iter().enumerate().find_map(|(i, item)| {
                unstorable(item, &format!("{field}[{i}]"), max_depth.saturating_sub(1))
            })
        }
        Value::Object(map) => {
            if !map.is_empty() && max_depth == 0 {
                return Some((field.to_owned(), "is nested too deeply".to_owned()));
            }
            map.iter().find_map(|(key, item)| {
                unstorable(item, &format!("{field}.{key}"), max_depth.saturating_sub(1))
            })
        }
        Value::Null | Value::Bool(_) | Value::String(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn numbers_that_do_not_read_back_are_named() {
        let field = |v: Value| unstorable(&v, "cloud_init", 8).map(|(f, _)| f);
        assert_eq!(field(json!({"a": [1, 2.5, "x", null]})), None);
        assert_eq!(
            field(json!({"a": [1, f64::MAX]})).as_deref(),
            Some("cloud_init.a[1]")
        );
        assert_eq!(field(json!({"a": -0.0})).as_deref(), Some("cloud_init.a"));
        assert_eq!(field(json!({"a": 0.0, "b": 0})), None);
        assert_eq!(field(json!({"a": 5e-324})).as_deref(), Some("cloud_init.a"));
        assert_eq!(
            field(json!({"a": u64::MAX})).as_deref(),
            Some("cloud_init.a")
        );
        assert_eq!(
            field(json!({"a": i64::MIN})).as_deref(),
            Some("cloud_init.a")
        );
    }

    #[test]
    fn depth_is_bounded() {
        let mut deep = json!(1);
        for _ in 0..10 {
            deep = json!([deep]);
        }
        assert_eq!(
            unstorable(&deep, "x", 10).map(|(f, _)| f),
            None,
            "ten levels of arrays fit ten"
        );
        assert!(unstorable(&json!([deep]), "x", 10).is_some());
    }
}
