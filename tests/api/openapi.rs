//! The OpenAPI document at `/api/v1/openapi.json`: it covers every route the real
//! application registers (listed by actix-web's route introspection, so a new
//! route fails here until its handler is annotated), it is a well-formed OpenAPI
//! document whose parameters match its paths, and what it says about
//! authentication and errors is true. The Swagger UI at `/api/v1/docs` is in
//! `openapi/ui.rs`.

mod ui;

use std::collections::BTreeSet;

use actix_web::introspection::{IntrospectionNode, IntrospectionTree, ResourceType};
use actix_web::{HttpResponse, web};
use serde_json::{Value, json};
use utoipa::OpenApi;

use crate::helpers::{TestApp, test_settings};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

/// Lists the routes of the app it is the fallback of.
async fn list_routes(tree: web::Data<IntrospectionTree>) -> HttpResponse {
    fn walk(node: &IntrospectionNode, out: &mut Vec<(String, String)>) {
        if matches!(node.kind, ResourceType::Resource) {
            if node.methods.is_empty() {
                // Any method: it must be registered with one, to be documented.
                out.push(("ANY".to_owned(), node.full_path.clone()));
            }
            for method in &node.methods {
                out.push((method.to_string(), node.full_path.clone()));
            }
        }
        for child in &node.children {
            walk(child, out);
        }
    }
    let mut routes = Vec::new();
    walk(&tree.root, &mut routes);
    HttpResponse::Ok().json(routes)
}

/// Every `(METHOD, path)` the application serves: the app `main` runs
/// (`startup::app`), asked through actix-web's introspection which routes it
/// registered — wherever and however they were registered.
async fn registered_routes() -> BTreeSet<(String, String)> {
    let dir = std::env::temp_dir().join("devpocket-openapi-routes");
    let settings = test_settings("postgres://unused@localhost/unused", &dir, &[]);
    let app = devpocket::startup::app(&settings).default_service(web::to(list_routes));
    let app = actix_web::test::init_service(app).await;
    let request = actix_web::test::TestRequest::get()
        .uri("/__routes_of_this_app__")
        .to_request();
    let routes: Vec<(String, String)> =
        actix_web::test::call_and_read_body_json(&app, request).await;
    routes.into_iter().collect()
}

/// The document as the application generates it.
fn document() -> Value {
    serde_json::to_value(devpocket::openapi::ApiDoc::openapi()).unwrap()
}

/// Every `(METHOD, path)` the document describes.
fn documented_routes(doc: &Value) -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if item.get(method).is_some() {
                routes.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    routes
}

/// Every operation: `(METHOD, path, operation)`.
fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut all = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in METHODS {
            if let Some(op) = item.get(method) {
                all.push((method.to_uppercase(), path.clone(), op.clone()));
            }
        }
    }
    all
}

fn path_placeholders(path: &str) -> BTreeSet<String> {
    path.split('/')
        .filter_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
        .map(str::to_owned)
        .collect()
}

#[actix_web::test]
async fn every_registered_route_is_documented() {
    let registered = registered_routes().await;
    assert!(
        registered.contains(&("POST".to_owned(), "/api/v1/environments".to_owned())),
        "the route listing looks broken: {registered:#?}"
    );
    let documented = documented_routes(&document());
    let missing: Vec<_> = registered.difference(&documented).collect();
    assert!(
        missing.is_empty(),
        "routes registered but missing from the OpenAPI document: {missing:?}. Annotate each \
         handler with #[utoipa::path(...)] (method and full path, parameters, responses) and \
         add it to `paths(...)` in src/openapi.rs"
    );
    let stale: Vec<_> = documented.difference(&registered).collect();
    assert!(
        stale.is_empty(),
        "documented but not served by the application: {stale:?}"
    );
}

#[actix_web::test]
async fn the_served_document_is_well_formed_openapi() {
    let app = TestApp::spawn().await;
    let response = app.get("/api/v1/openapi.json").await;
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let doc: Value = response.json().await.unwrap();
    assert_eq!(doc, document(), "the served document is the generated one");
    // It reads back as an OpenAPI document (utoipa's model of the specification).
    let parsed: utoipa::openapi::OpenApi = serde_json::from_value(doc.clone()).unwrap();
    assert_eq!(parsed.info.title, "DevPocket API");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    assert_eq!(doc["info"]["version"], env!("CARGO_PKG_VERSION"));

    let mut ids = BTreeSet::new();
    for (method, path, op) in operations(&doc) {
        let id = op["operationId"].as_str().unwrap_or_default().to_owned();
        assert!(
            ids.insert(id),
            "{method} {path}: operationId missing or repeated"
        );
        assert!(op["summary"].is_string(), "{method} {path}: no summary");
        assert!(
            op["tags"].as_array().is_some_and(|t| t.len() == 1),
            "{method} {path}: one tag"
        );
        let responses = op["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|s| s.starts_with('2') || s == "101"),
            "{method} {path}: no success response"
        );
    }
    // Every reference points at something in the document.
    let mut refs = Vec::new();
    collect_refs(&doc, &mut refs);
    assert!(refs.len() > 50, "refs: {refs:?}");
    for reference in refs {
        let pointer = reference.strip_prefix('#').unwrap();
        assert!(doc.pointer(pointer).is_some(), "dangling $ref {reference}");
    }
}

fn collect_refs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(r)) = map.get("$ref") {
                out.push(r.clone());
            }
            map.values().for_each(|v| collect_refs(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
        _ => {}
    }
}

#[test]
fn parameters_match_each_path() {
    let doc = document();
    for (method, path, op) in operations(&doc) {
        let params = op["parameters"].as_array().cloned().unwrap_or_default();
        let in_path: BTreeSet<String> = params
            .iter()
            .filter(|p| p["in"] == "path")
            .map(|p| {
                assert_eq!(p["required"], true, "{method} {path}: {p}");
                p["name"].as_str().unwrap().to_owned()
            })
            .collect();
        assert_eq!(
            in_path,
            path_placeholders(&path),
            "{method} {path}: the path parameters declared are not the path's"
        );
        let mut seen = BTreeSet::new();
        for p in &params {
            let key = (p["in"].as_str().unwrap(), p["name"].as_str().unwrap());
            assert!(seen.insert(key), "{method} {path}: parameter {key:?} twice");
            assert!(
                ["path", "query"].contains(&key.0),
                "{method} {path}: {key:?}"
            );
            assert!(
                p["schema"].is_object(),
                "{method} {path}: {key:?} has no schema"
            );
        }
        if path.starts_with("/api/v1/ws/") {
            let token = params
                .iter()
                .find(|p| p["in"] == "query" && p["name"] == "token");
            assert_eq!(token.unwrap()["required"], true, "{method} {path}: ?token=");
        }
    }
}

/// The words an enum schema lists are the ones its type serialises to.
#[test]
fn enum_schemas_list_the_serialised_values() {
    fn words<T: serde::Serialize>(all: &[T]) -> Value {
        serde_json::to_value(all).unwrap()
    }
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    use devpocket::templates::{Category, Status};
    assert_eq!(schemas["Category"]["enum"], words(Category::ALL));
    assert_eq!(schemas["TemplateStatus"]["enum"], words(Status::ALL));
    assert_eq!(schemas["Plan"]["enum"], words(&devpocket::plans::Plan::ALL));
    let environment = &schemas["Environment"]["properties"];
    use devpocket_actors::model::{Phase, Status as EnvStatus};
    assert_eq!(environment["status"]["enum"], words(EnvStatus::ALL));
    assert_eq!(environment["phase"]["enum"], words(Phase::ALL));
}

#[test]
fn errors_are_the_envelope_and_rate_limits_are_documented() {
    let doc = document();
    let error_body = doc.pointer("/components/schemas/ErrorBody").unwrap();
    let mut required: Vec<&str> = error_body["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    required.sort();
    assert_eq!(required, ["code", "context", "detail"]);
    for (name, response) in doc["components"]["responses"].as_object().unwrap() {
        assert_eq!(
            response["content"]["application/json"]["schema"]["$ref"],
            "#/components/schemas/ErrorBody",
            "{name}"
        );
    }
    for (method, path, op) in operations(&doc) {
        for (status, response) in op["responses"].as_object().unwrap() {
            if status.starts_with('4') || status.starts_with('5') {
                let reference = response["$ref"].as_str().unwrap_or_default();
                assert!(
                    reference.starts_with("#/components/responses/"),
                    "{method} {path} {status}: errors use the shared responses"
                );
            }
        }
        if path.starts_with("/api/v1/") {
            assert!(
                op["responses"].get("429").is_some(),
                "{method} {path}: every /api/v1 route is rate limited (429)"
            );
        }
    }
}

#[test]
fn the_bearer_scheme_marks_exactly_the_routes_that_answer_401() {
    let doc = document();
    let scheme = doc.pointer("/components/securitySchemes/bearer").unwrap();
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    assert_eq!(scheme["bearerFormat"], "JWT");
    for (method, path, op) in operations(&doc) {
        let secured = op["security"] == json!([{"bearer": []}]);
        let answers_401 = op["responses"].get("401").is_some();
        let sign_in = [
            "/api/v1/auth/login",
            "/api/v1/auth/refresh",
            "/api/v1/auth/google",
        ]
        .contains(&path.as_str());
        // `/metrics` takes the operator's own token, only when one is configured.
        let metrics = path == "/metrics" && op["security"] == json!([{}, {"metrics_token": []}]);
        assert!(
            secured == answers_401 || (sign_in && !secured) || (metrics && answers_401),
            "{method} {path}: security {} but 401 {answers_401}",
            op["security"]
        );
    }
}

/// What the document says about authentication holds: each operation marked
/// with the bearer scheme answers 401 without a token.
#[actix_web::test]
async fn secured_operations_refuse_requests_without_a_token() {
    let app = TestApp::spawn().await;
    let id = uuid::Uuid::new_v4().to_string();
    let mut checked = 0;
    for (method, path, op) in operations(&document()) {
        if op["security"] != json!([{"bearer": []}]) {
            continue;
        }
        let url = app.url(&path.replace("{id}", &id));
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let response = app
            .client
            .request(method.clone(), url)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{method} {path} without a token");
        checked += 1;
    }
    assert!(checked >= 20, "only {checked} secured operations");
}

#[test]
fn every_conflict_code_is_documented_in_the_readme_and_the_document() {
    let readme = include_str!("../../README.md");
    let document = document().to_string();
    for code in devpocket_actors::environment::Conflict::CODES {
        assert!(readme.contains(&format!("`{code}`")), "README lacks {code}");
        assert!(document.contains(code), "the OpenAPI document lacks {code}");
    }
}
