//! `/api/v1/openapi.json` (the OpenAPI document, see `openapi`) and `/api/v1/docs`,
//! Swagger UI reading it. Swagger UI's files are compiled into the binary
//! (`utoipa-swagger-ui`, vendored): the page loads nothing from elsewhere.

use std::sync::{Arc, LazyLock};

use actix_web::{HttpResponse, web};
use utoipa::OpenApi;
use utoipa_swagger_ui::Config;

use crate::error::ApiError;
use crate::openapi::{ApiDoc, NotFound, TooManyRequests};

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/openapi.json", web::get().to(openapi_json))
        .route("/docs", web::get().to(docs_index))
        .route("/docs/{file}", web::get().to(docs_file));
}

/// Where the document is served; Swagger UI fetches it from there.
pub const OPENAPI_PATH: &str = "/api/v1/openapi.json";
/// Where the UI's files are served. The page names them relative to this, whether
/// it was asked for as `/api/v1/docs` or `/api/v1/docs/` (the trailing slash is
/// trimmed before routing, so the two cannot be told apart to redirect one).
const DOCS_BASE: &str = "/api/v1/docs/";

static DOCUMENT: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);

static UI_CONFIG: LazyLock<Arc<Config<'static>>> = LazyLock::new(|| {
    // "none": no badge that would send the document to an online validator.
    Arc::new(Config::new([OPENAPI_PATH]).validator_url("none"))
});

/// The OpenAPI document of this API.
#[utoipa::path(
    get,
    path = "/api/v1/openapi.json",
    tag = "docs",
    responses(
        (status = 200, description = "This document: OpenAPI 3.1, JSON.", body = Object),
        (status = 429, response = TooManyRequests),
    )
)]
async fn openapi_json() -> HttpResponse {
    HttpResponse::Ok().json(&*DOCUMENT)
}

/// Swagger UI: this document, browsable and callable.
///
/// Served with or without a trailing slash; its files come from this server.
#[utoipa::path(
    get,
    path = "/api/v1/docs",
    tag = "docs",
    responses(
        (status = 200, description = "The Swagger UI page.", content_type = "text/html", body = String),
        (status = 429, response = TooManyRequests),
    )
)]
async fn docs_index() -> Result<HttpResponse, ApiError> {
    let (page, _) = swagger_file("index.html")?;
    let page = String::from_utf8_lossy(&page)
        .replacen(
            "<head>",
            &format!("<head>\n    <base href=\"{DOCS_BASE}\">"),
            1,
        )
        .replacen(
            "<title>Swagger UI</title>",
            "<title>DevPocket API</title>",
            1,
        );
    Ok(HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .body(page))
}

/// A file of Swagger UI (scripts, styles, icons).
#[utoipa::path(
    get,
    path = "/api/v1/docs/{file}",
    tag = "docs",
    params(("file" = String, Path, description = "A file of the Swagger UI distribution, such as `swagger-ui-bundle.js`.")),
    responses(
        (status = 200, description = "The file, with its content type.", content_type = "application/octet-stream", body = String),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
    )
)]
async fn docs_file(file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    let (bytes, content_type) = swagger_file(&file)?;
    Ok(HttpResponse::Ok().content_type(content_type).body(bytes))
}

/// One of Swagger UI's embedded files; `swagger-initializer.js` comes with our
/// configuration (the document's URL) filled in.
fn swagger_file(name: &str) -> Result<(Vec<u8>, String), ApiError> {
    match utoipa_swagger_ui::serve(name, UI_CONFIG.clone()) {
        Ok(Some(file)) => Ok((file.bytes.into_owned(), file.content_type)),
        Ok(None) => Err(ApiError::NotFound(format!(
            "No such file of the API documentation: {name}."
        ))),
        Err(err) => Err(ApiError::internal(anyhow::anyhow!(
            "serving Swagger UI's {name}: {err}"
        ))),
    }
}
