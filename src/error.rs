//! The one error type at the HTTP boundary and its JSON envelope:
//! `{"detail": "<one human-readable string>", "code": "<snake_case>", "context": {…}}`.
//! 5xx bodies stay generic; their causes go to the log only.

use std::collections::BTreeMap;
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;
use serde_json::{Value, json};

/// Per-field validation messages, keyed by field name.
pub type FieldErrors = BTreeMap<String, Vec<String>>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    BadRequest { detail: String, code: &'static str },
    #[error("{0}")]
    Validation(ValidationErrors),
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{detail}")]
    Conflict { detail: String, context: Value },
    /// A 409 with a code of its own: the resource's state refuses the operation
    /// (`environment_not_running`, `operation_in_progress`, …).
    #[error("{detail}")]
    State {
        code: &'static str,
        detail: String,
        context: Value,
    },
    #[error("{detail}")]
    Locked {
        detail: String,
        retry_after: Duration,
    },
    #[error("{0}")]
    PayloadTooLarge(String),
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// Over a rate limit: 429 with `Retry-After` and `RateLimit-*` headers.
    #[error("{detail}")]
    RateLimited {
        detail: String,
        status: crate::ratelimit::Status,
    },
    #[error("{0}")]
    ServiceUnavailable(String),
    #[error("the database is unavailable")]
    DatabaseUnavailable(#[source] anyhow::Error),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

/// Validation failures: a summary line plus the offending fields.
#[derive(Debug, Default)]
pub struct ValidationErrors {
    pub fields: FieldErrors,
}

impl ValidationErrors {
    pub fn add(&mut self, field: &str, message: impl Into<String>) {
        self.fields
            .entry(field.to_owned())
            .or_default()
            .push(message.into());
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// `Ok(())` when nothing was added.
    pub fn into_result(self) -> Result<(), ApiError> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self))
        }
    }
}

impl std::fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts: Vec<String> = self
            .fields
            .iter()
            .map(|(field, messages)| format!("{field}: {}", messages.join("; ")))
            .collect();
        write!(f, "Invalid input: {}", parts.join(". "))
    }
}

impl ApiError {
    pub fn validation(field: &str, message: impl Into<String>) -> Self {
        let mut errors = ValidationErrors::default();
        errors.add(field, message);
        Self::Validation(errors)
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::BadRequest {
            detail: detail.into(),
            code,
        }
    }

    pub fn internal(err: impl Into<anyhow::Error>) -> Self {
        Self::Internal(err.into())
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { code, .. } => code,
            Self::Validation(_) => "validation_error",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::NotFound(_) => "not_found",
            Self::Conflict { .. } => "conflict",
            Self::State { code, .. } => code,
            Self::Locked { .. } => "account_locked",
            Self::PayloadTooLarge(_) => "payload_too_large",
            Self::UnsupportedMediaType(_) => "unsupported_media_type",
            Self::RateLimited { .. } => "rate_limited",
            Self::DatabaseUnavailable(_) | Self::ServiceUnavailable(_) => "service_unavailable",
            Self::Internal(_) => "internal_error",
        }
    }

    fn context(&self) -> Value {
        match self {
            Self::Validation(v) => json!({ "fields": v.fields }),
            Self::Conflict { context, .. } | Self::State { context, .. } => context.clone(),
            Self::Locked { retry_after, .. } => {
                json!({ "retry_after_seconds": retry_after.as_secs().max(1) })
            }
            Self::RateLimited { status, .. } => json!({
                "retry_after_seconds": status.retry_after_seconds(),
                "limit": status.limit,
            }),
            _ => json!({}),
        }
    }
}

/// The body of every error response.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "detail": "Invalid input: password: must contain a digit",
    "code": "validation_error",
    "context": {"fields": {"password": ["must contain a digit"]}}
}))]
pub struct ErrorBody<'a> {
    /// One human-readable sentence, always a string.
    pub detail: &'a str,
    /// A stable snake_case code: `validation_error`, `unauthorized`, `forbidden`,
    /// `not_found`, `conflict`, `account_locked`, `rate_limited`, `malformed_json`,
    /// `service_unavailable`, …
    pub code: &'a str,
    /// Details that depend on the code: `fields` (per-field messages) for
    /// `validation_error`, `field` for some conflicts, `retry_after_seconds` (and
    /// `limit`) for `account_locked` and `rate_limited`; `{}` otherwise.
    #[schema(value_type = Object)]
    pub context: Value,
}

/// Builds the envelope for any status; used for errors raised outside handlers too
/// (unknown routes, extractor failures, middleware).
pub fn envelope(status: StatusCode, code: &str, detail: &str, context: Value) -> HttpResponse {
    HttpResponse::build(status)
        .insert_header((header::CACHE_CONTROL, "no-store"))
        .json(ErrorBody {
            detail,
            code,
            context,
        })
}

impl ResponseError for ApiError {
    fn status_code(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Validation(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict { .. } | Self::State { .. } => StatusCode::CONFLICT,
            Self::Locked { .. } => StatusCode::LOCKED,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::DatabaseUnavailable(_) | Self::ServiceUnavailable(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn error_response(&self) -> HttpResponse {
        let status = self.status_code();
        let detail = match self {
            Self::Internal(err) => {
                tracing::error!(error = ?err, "request failed");
                "Internal server error. The request id identifies it in the server log.".to_owned()
            }
            Self::DatabaseUnavailable(err) => {
                tracing::warn!(error = %err, "database unavailable");
                "The service is temporarily unavailable; try again shortly.".to_owned()
            }
            other => other.to_string(),
        };
        let mut response = envelope(status, self.code(), &detail, self.context());
        let retry_after = match self {
            Self::Locked { retry_after, .. } => Some(retry_after.as_secs().max(1)),
            Self::RateLimited { status, .. } => {
                crate::ratelimit::insert_headers(response.headers_mut(), *status);
                Some(status.retry_after_seconds())
            }
            _ => None,
        };
        if let Some(secs) = retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

/// Database errors: pool exhaustion and lost connections are 503, anything else 500.
impl From<diesel::result::Error> for ApiError {
    fn from(err: diesel::result::Error) -> Self {
        use diesel::result::Error as E;
        match err {
            E::DatabaseError(diesel::result::DatabaseErrorKind::ClosedConnection, _)
            | E::BrokenTransactionManager => Self::DatabaseUnavailable(err.into()),
            other => Self::Internal(other.into()),
        }
    }
}

impl From<deadpool::managed::PoolError<diesel_async::pooled_connection::PoolError>> for ApiError {
    fn from(err: deadpool::managed::PoolError<diesel_async::pooled_connection::PoolError>) -> Self {
        Self::DatabaseUnavailable(anyhow::anyhow!("database pool: {err}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::body::to_bytes;

    async fn body(err: ApiError) -> (StatusCode, Value) {
        let response = err.error_response();
        let status = response.status();
        let bytes = to_bytes(response.into_body()).await.expect("body");
        (status, serde_json::from_slice(&bytes).expect("json"))
    }

    #[actix_web::test]
    async fn validation_detail_is_one_string_with_fields_in_context() {
        let mut errors = ValidationErrors::default();
        errors.add("username", "too short");
        errors.add("password", "needs a digit");
        let (status, json) = body(ApiError::Validation(errors)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert!(json["detail"].is_string());
        assert_eq!(json["code"], "validation_error");
        assert_eq!(json["context"]["fields"]["username"][0], "too short");
    }

    #[actix_web::test]
    async fn internal_errors_hide_their_cause() {
        let (status, json) = body(ApiError::internal(anyhow::anyhow!(
            "password=hunter2 leaked"
        )))
        .await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!json["detail"].as_str().unwrap_or("").contains("hunter2"));
    }
}
