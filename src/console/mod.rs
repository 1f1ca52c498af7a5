//! The web console: a small single-page client of the public API, served by the
//! binary at `/` from files compiled into it (`assets/`; xterm.js vendored under
//! `assets/vendor/` by `scripts/vendor-xterm`). No build step, no CDN: what is in
//! the repository is what the browser gets. Every answer carries a strict
//! Content-Security-Policy: scripts from this origin only, no inline script.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{HttpResponse, web};

use crate::error::ApiError;
use crate::openapi::NotFound;

/// Scripts and everything else from this origin; WebSockets back to it; styles may
/// be inline (xterm.js sizes its rows with a `<style>` element), scripts may not.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws: wss:; \
    font-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
    frame-ancestors 'none'";

/// (file name under `/console/`, content type, bytes)
const ASSETS: &[(&str, &str, &[u8])] = &[
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/app.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/style.css"),
    ),
    (
        "xterm.mjs",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/vendor/xterm/xterm.mjs"),
    ),
    (
        "xterm.css",
        "text/css; charset=utf-8",
        include_bytes!("assets/vendor/xterm/xterm.css"),
    ),
    (
        "xterm-LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("assets/vendor/xterm/LICENSE"),
    ),
    (
        "addon-fit.mjs",
        "text/javascript; charset=utf-8",
        include_bytes!("assets/vendor/addon-fit/addon-fit.mjs"),
    ),
    (
        "addon-fit-LICENSE",
        "text/plain; charset=utf-8",
        include_bytes!("assets/vendor/addon-fit/LICENSE"),
    ),
];

const INDEX: &[u8] = include_bytes!("assets/index.html");

pub fn configure(cfg: &mut web::ServiceConfig) {
    cfg.route("/", web::get().to(index))
        .route("/console/{file}", web::get().to(asset));
}

fn page(content_type: &'static str, body: &'static [u8]) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((header::CONTENT_TYPE, HeaderValue::from_static(content_type)))
        .insert_header((
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CONTENT_SECURITY_POLICY),
        ))
        // Files change with the binary: revalidate rather than trust a stale copy.
        .insert_header((header::CACHE_CONTROL, HeaderValue::from_static("no-cache")))
        .body(body)
}

/// The web console.
///
/// A single page that signs in, lists and creates environments, follows their
/// provisioning and opens their terminals, using only this API. Its files are
/// compiled into the server.
#[utoipa::path(
    get,
    path = "/",
    tag = "console",
    responses(
        (status = 200, description = "The console's page.", content_type = "text/html", body = String),
    )
)]
pub(crate) async fn index() -> HttpResponse {
    page("text/html; charset=utf-8", INDEX)
}

/// A file of the web console (its script, its styles, xterm.js and their licences).
#[utoipa::path(
    get,
    path = "/console/{file}",
    tag = "console",
    params(("file" = String, Path, description = "A file of the console, such as `app.js`.")),
    responses(
        (status = 200, description = "The file, with its content type.", content_type = "application/octet-stream", body = String),
        (status = 404, response = NotFound),
    )
)]
pub(crate) async fn asset(file: web::Path<String>) -> Result<HttpResponse, ApiError> {
    ASSETS
        .iter()
        .find(|(name, ..)| *name == file.as_str())
        .map(|(_, content_type, body)| page(content_type, body))
        .ok_or_else(|| ApiError::NotFound(format!("No such file of the console: {file}.")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_module_the_console_imports_is_served() {
        let app = std::str::from_utf8(ASSETS[0].2).unwrap_or_default();
        for line in app.lines().filter(|l| l.starts_with("import ")) {
            let path = line
                .split('"')
                .nth(1)
                .and_then(|p| p.strip_prefix("/console/"))
                .unwrap_or_default();
            assert!(ASSETS.iter().any(|(name, ..)| *name == path), "{line}");
        }
        let index = std::str::from_utf8(INDEX).unwrap_or_default();
        for reference in index.split('"').filter(|s| s.starts_with("/console/")) {
            let path = &reference["/console/".len()..];
            assert!(ASSETS.iter().any(|(name, ..)| *name == path), "{reference}");
        }
        assert!(!index.contains("<script>"), "no inline script");
    }
}
