//! A JSON body extractor whose failures name the offending field and use the error
//! envelope: 415 for a non-JSON content type, 413 over the size limit, 400 for
//! malformed JSON, 422 for a well-formed body with wrong or missing fields or with a
//! NUL character in any string.

use std::future::Future;
use std::pin::Pin;

use actix_web::error::PayloadError;
use actix_web::http::header;
use actix_web::{FromRequest, HttpRequest, dev::Payload, web};
use serde::de::DeserializeOwned;

use crate::error::{ApiError, ValidationErrors};

/// The configured body limit, stored in app data.
#[derive(Debug, Clone, Copy)]
pub struct JsonLimit(pub usize);

pub struct Json<T>(pub T);

impl<T> Json<T> {
    pub fn into_inner(self) -> T {
        self.0
    }
}

fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "empty_body",
            "The request body is empty: send a JSON object.",
        ));
    }
    // Rare, so the body is read a second time only when it has one.
    if super::nul::in_json_text(bytes)
        && let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes)
    {
        let mut found = Vec::new();
        super::nul::in_json(&value, "", &mut found);
        let mut errors = ValidationErrors::default();
        for field in found {
            errors.add(&field, super::nul::MESSAGE);
        }
        errors.into_result()?;
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    serde_path_to_error::deserialize(&mut de).map_err(|err| {
        let path = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad_request(
                "malformed_json",
                format!("The request body is not valid JSON: {inner}."),
            );
        }
        // `missing field `x`` is reported at the parent; name the field itself.
        let message = inner.to_string();
        let message = message
            .split(" at line ")
            .next()
            .unwrap_or(&message)
            .to_owned();
        let field = match message.strip_prefix("missing field `") {
            Some(rest) => {
                let name = rest.trim_end_matches('`');
                if path == "." {
                    name.to_owned()
                } else {
                    format!("{path}.{name}")
                }
            }
            None if path == "." => "body".to_owned(),
            None => path,
        };
        let message = if message.starts_with("missing field") {
            "is required".to_owned()
        } else {
            message
        };
        ApiError::validation(&field, message)
    })
}

impl<T: DeserializeOwned + 'static> FromRequest for Json<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let limit = req.app_data::<JsonLimit>().map_or(256 * 1024, |l| l.0);
        let content_type_ok = req
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_none_or(|v| {
                let v = v.to_ascii_lowercase();
                v.starts_with("application/json")
                    || (v.starts_with("application/") && v.contains("+json"))
            });
        let body = web::Bytes::from_request(req, payload);
        Box::pin(async move {
            if !content_type_ok {
                return Err(ApiError::UnsupportedMediaType(
                    "Send the body as JSON with `Content-Type: application/json`.".into(),
                ));
            }
            let bytes = body
                .await
                .map_err(|err| match err.as_error::<PayloadError>() {
                    Some(PayloadError::Overflow) => too_large(limit),
                    _ if err.to_string().contains("size limit")
                        || err.to_string().contains("overflow") =>
                    {
                        too_large(limit)
                    }
                    _ => ApiError::bad_request(
                        "bad_body",
                        format!("Could not read the request body: {err}."),
                    ),
                })?;
            if bytes.len() > limit {
                return Err(too_large(limit));
            }
            parse(&bytes).map(Json)
        })
    }
}

/// A JSON body that may be left out: an empty body is `None`; anything else is
/// read as [`Json`] reads it, with the same errors (a malformed body is a 400, not
/// a body left out).
pub struct OptionalJson<T>(pub Option<T>);

impl<T> OptionalJson<T> {
    pub fn into_inner(self) -> Option<T> {
        self.0
    }
}

impl<T: DeserializeOwned + 'static> FromRequest for OptionalJson<T> {
    type Error = ApiError;
    type Future = Pin<Box<dyn Future<Output = Result<Self, Self::Error>>>>;

    fn from_request(req: &HttpRequest, payload: &mut Payload) -> Self::Future {
        let body = Json::<T>::from_request(req, payload);
        Box::pin(async move {
            match body.await {
                Ok(Json(body)) => Ok(Self(Some(body))),
                Err(ApiError::BadRequest {
                    code: "empty_body", ..
                }) => Ok(Self(None)),
                Err(err) => Err(err),
            }
        })
    }
}

fn too_large(limit: usize) -> ApiError {
    ApiError::PayloadTooLarge(format!(
        "The request body is larger than the limit of {limit} bytes."
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[allow(dead_code)]
    struct Body {
        name: String,
        count: u32,
    }

    fn field_of(err: ApiError) -> String {
        match err {
            ApiError::Validation(v) => v.fields.keys().next().cloned().unwrap_or_default(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn names_missing_and_mistyped_fields() {
        assert_eq!(
            field_of(parse::<Body>(br#"{"count": 1}"#).expect_err("missing")),
            "name"
        );
        assert_eq!(
            field_of(parse::<Body>(br#"{"name": "x", "count": "many"}"#).expect_err("type")),
            "count"
        );
    }

    #[test]
    fn a_nul_anywhere_is_a_422_naming_it() {
        assert_eq!(
            field_of(parse::<Body>(br#"{"name": "a\u0000", "count": 1}"#).expect_err("nul")),
            "name"
        );
    }

    #[test]
    fn malformed_json_is_a_400() {
        assert!(matches!(
            parse::<Body>(b"{nope").expect_err("syntax"),
            ApiError::BadRequest {
                code: "malformed_json",
                ..
            }
        ));
    }
}
