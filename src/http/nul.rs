//! NUL characters are bad input: PostgreSQL can keep them in neither `text` nor
//! `jsonb`, and no name, id, search or setting of this API has one. They are refused
//! where every request passes — the edge for the path and the query, the JSON
//! extractor for bodies — so that no handler can forget to, and none reaches the
//! database to come back as a 500.

use serde_json::Value;

use crate::error::{ApiError, ValidationErrors};

pub const MESSAGE: &str = "must not contain NUL characters (\\u0000)";

/// The answer to a request whose path or query has a percent-encoded NUL (`%00`; a
/// raw one never gets past the HTTP parser): 404 for the path, as nothing has such a
/// name, and 422 naming the parameters for the query.
pub fn in_uri(uri: &actix_web::http::Uri) -> Option<ApiError> {
    let path_and_query = uri.path_and_query()?.as_str();
    if !path_and_query.contains("%00") {
        return None;
    }
    if uri.path().contains("%00") {
        return Some(ApiError::NotFound(
            "Nothing here: the path contains a NUL character (%00).".to_owned(),
        ));
    }
    let mut errors = ValidationErrors::default();
    for (name, value) in url::form_urlencoded::parse(uri.query()?.as_bytes()) {
        if name.contains('\0') {
            errors.add("query", "parameter names must not contain NUL characters");
        } else if value.contains('\0') {
            errors.add(&name, MESSAGE);
        }
    }
    errors.into_result().err()
}

/// Whether a JSON text has a `\u0000` escape, the only way a NUL can be in valid JSON.
/// Backslashes occur only inside strings, where each one starts an escape.
pub fn in_json_text(bytes: &[u8]) -> bool {
    let mut rest = bytes;
    while let Some(at) = rest.iter().position(|&b| b == b'\\') {
        if rest.get(at + 1..at + 6) == Some(b"u0000") {
            return true;
        }
        rest = rest.get(at + 2..).unwrap_or_default();
    }
    false
}

/// The paths (`cloud_init.runcmd[0]`, `body` for the top) of the strings in `value`
/// with a NUL, and of the objects holding a member name with one.
pub fn in_json(value: &Value, path: &str, found: &mut Vec<String>) {
    let here = || {
        if path.is_empty() {
            "body".to_owned()
        } else {
            path.to_owned()
        }
    };
    match value {
        Value::String(s) if s.contains('\0') => found.push(here()),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                in_json(item, &format!("{}[{i}]", here()), found);
            }
        }
        Value::Object(map) => {
            for (key, item) in map {
                if key.contains('\0') {
                    found.push(here());
                    continue;
                }
                let inner = if path.is_empty() {
                    key.clone()
                } else {
                    format!("{path}.{key}")
                };
                in_json(item, &inner, found);
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn finds_the_escape_and_only_it() {
        assert!(in_json_text(br#"{"a": "x\u0000"}"#));
        assert!(in_json_text(br#"{"a": "\\\u0000"}"#));
        assert!(
            !in_json_text(br#"{"a": "\\u0000"}"#),
            "an escaped backslash"
        );
        assert!(!in_json_text(br#"{"a": "\u0001 \n"}"#));
        assert!(!in_json_text(br#"{"a": "\"#), "a backslash at the end");
    }

    #[test]
    fn names_where_it_is() {
        let at = |v: Value| {
            let mut found = Vec::new();
            in_json(&v, "", &mut found);
            found
        };
        assert_eq!(
            at(json!({"a": {"b": ["x", "y\0"]}, "c": "\0"})),
            ["a.b[1]", "c"]
        );
        assert_eq!(at(json!({"a": {"b\0": 1}})), ["a"]);
        assert_eq!(at(json!("\0")), ["body"]);
        assert_eq!(at(json!(["\0"])), ["body[0]"]);
        assert!(at(json!({"a": "ok"})).is_empty());
    }

    #[test]
    fn the_uri_is_checked_by_part() {
        let check = |uri: &str| in_uri(&uri.parse().unwrap()).map(|e| e.to_string());
        assert_eq!(check("/api/v1/templates?search=py"), None);
        assert!(check("/api/v1/templates/%00").unwrap().contains("path"));
        assert!(
            check("/api/v1/templates?search=a%00b")
                .unwrap()
                .contains("search")
        );
        assert_eq!(
            check("/api/v1/templates?search=%2500"),
            None,
            "a literal %00"
        );
    }
}
