//! DigitalOcean's published OpenAPI description as a validator: every request the
//! fake receives (path and query parameters, body) and every response it sends
//! (status, body, rate-limit headers) is checked against the operation it matches.
//!
//! The document is read from `DEVPOCKET_DO_OPENAPI`, or found by walking up from
//! this crate (or from the local repository it was cloned from) to
//! `shared/digitalocean/openapi-trimmed.json`. OpenAPI 3.0 schemas are
//! JSON Schema draft 4 plus `nullable`, which is rewritten into a union with `null`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use jsonschema::{Validator, ValidatorMap};
use serde_json::{Map, Value, json};

const DOC_NAME: &str = "openapi-trimmed.json";

/// Where the OpenAPI document is, or why it cannot be found.
fn locate() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("DEVPOCKET_DO_OPENAPI") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "DEVPOCKET_DO_OPENAPI={} is not a file",
                path.display()
            ))
        };
    }
    let start = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    // A clone made from a local repository (as CI does) looks above that one too.
    let origin = std::process::Command::new("git")
        .args(["config", "--get", "remote.origin.url"])
        .current_dir(&start)
        .output()
        .ok()
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|url| url.trim().trim_start_matches("file://").to_owned())
        .filter(|url| url.starts_with('/'))
        .map(PathBuf::from);
    for root in std::iter::once(&start).chain(origin.as_ref()) {
        for dir in root.ancestors() {
            let candidate = dir.join("shared").join("digitalocean").join(DOC_NAME);
            if candidate.is_file() {
                return Ok(candidate);
            }
        }
    }
    Err(format!(
        "DigitalOcean's OpenAPI document was not found: set DEVPOCKET_DO_OPENAPI to the path of \
         {DOC_NAME}, or put it at shared/digitalocean/{DOC_NAME} in a directory above {} (or \
         above the repository it was cloned from)",
        start.display()
    ))
}

/// One parameter of an operation.
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub location: String,
    pub required: bool,
    /// Key of the parameter's schema validator.
    key: String,
    /// The primitive type(s) the schema allows, to read the raw string as.
    types: Vec<String>,
}

/// An operation: a method on a path template.
#[derive(Debug, Clone)]
pub struct Operation {
    pub id: String,
    pub method: String,
    pub template: String,
    segments: Vec<String>,
    pub params: Vec<Param>,
    /// (required, validator key) of a JSON request body.
    body: Option<(bool, String)>,
    /// Status ("201", "default") → response description.
    responses: BTreeMap<String, ResponseSpec>,
}

#[derive(Debug, Clone)]
struct ResponseSpec {
    /// Validator key of a JSON body; `None`: the response has no body.
    body: Option<String>,
    headers: Vec<String>,
}

pub struct Spec {
    operations: Vec<Operation>,
    validators: ValidatorMap,
}

static SPEC: OnceLock<Result<Spec, String>> = OnceLock::new();

/// The compiled document, shared by every fake in this process.
pub fn spec() -> &'static Spec {
    match SPEC.get_or_init(Spec::load) {
        Ok(spec) => spec,
        Err(message) => panic!("{message}"),
    }
}

/// Rewrites OpenAPI's `nullable: true` into JSON Schema: `anyOf: [null, schema]`.
fn rewrite_nullable(value: &mut Value) {
    match value {
        Value::Object(map) => {
            for child in map.values_mut() {
                rewrite_nullable(child);
            }
            if map.get("nullable") == Some(&Value::Bool(true)) {
                map.remove("nullable");
                let inner = Value::Object(std::mem::take(map));
                map.insert("anyOf".into(), json!([{"type": "null"}, inner]));
            }
        }
        Value::Array(items) => items.iter_mut().for_each(rewrite_nullable),
        _ => {}
    }
}

/// Follows a local `$ref` (`#/components/...`) to the object it names.
fn resolve<'a>(doc: &'a Value, mut value: &'a Value) -> &'a Value {
    while let Some(reference) = value.get("$ref").and_then(Value::as_str) {
        match reference.strip_prefix('#').and_then(|p| doc.pointer(p)) {
            Some(target) => value = target,
            None => break,
        }
    }
    value
}

/// The primitive types a parameter schema allows (through `$ref`, `anyOf`, `oneOf`).
fn primitive_types(doc: &Value, schema: &Value) -> Vec<String> {
    let schema = resolve(doc, schema);
    let mut out = Vec::new();
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        out.push(t.to_owned());
    }
    for key in ["anyOf", "oneOf", "allOf"] {
        for sub in schema
            .get(key)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
        {
            out.extend(primitive_types(doc, sub));
        }
    }
    if out.is_empty() {
        out.push("string".into());
    }
    out
}

impl Spec {
    fn load() -> Result<Self, String> {
        let path = locate()?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        let mut doc: Value =
            serde_json::from_str(&text).map_err(|e| format!("parsing {}: {e}", path.display()))?;
        rewrite_nullable(&mut doc);
        let mut definitions = Map::new();
        let mut operations = Vec::new();
        let paths = doc["paths"]
            .as_object()
            .ok_or("the OpenAPI document has no paths")?;
        for (template, item) in paths {
            let shared: Vec<Value> = item
                .get("parameters")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for (method, op) in item.as_object().into_iter().flatten() {
                if !["get", "post", "put", "delete", "patch", "head"].contains(&method.as_str()) {
                    continue;
                }
                let id = op["operationId"].as_str().unwrap_or(template).to_owned();
                let mut params = Vec::new();
                let own = op
                    .get("parameters")
                    .and_then(Value::as_array)
                    .cloned()
                    .unwrap_or_default();
                for raw in shared.iter().chain(own.iter()) {
                    let p = resolve(&doc, raw);
                    let name = p["name"].as_str().unwrap_or_default().to_owned();
                    let key = format!("{id}.param.{name}");
                    definitions.insert(key.clone(), p["schema"].clone());
                    params.push(Param {
                        location: p["in"].as_str().unwrap_or_default().to_owned(),
                        required: p["required"].as_bool().unwrap_or(false),
                        types: primitive_types(&doc, &p["schema"]),
                        key,
                        name,
                    });
                }
                let body = op.get("requestBody").map(|rb| {
                    let rb = resolve(&doc, rb);
                    let key = format!("{id}.request");
                    definitions.insert(
                        key.clone(),
                        rb["content"]["application/json"]["schema"].clone(),
                    );
                    (rb["required"].as_bool().unwrap_or(false), key)
                });
                let mut responses = BTreeMap::new();
                for (status, response) in op["responses"].as_object().into_iter().flatten() {
                    let response = resolve(&doc, response);
                    let body =
                        response
                            .pointer("/content/application~1json/schema")
                            .map(|schema| {
                                let key = format!("{id}.response.{status}");
                                definitions.insert(key.clone(), schema.clone());
                                key
                            });
                    let headers = response
                        .get("headers")
                        .and_then(Value::as_object)
                        .map(|h| h.keys().cloned().collect())
                        .unwrap_or_default();
                    responses.insert(status.clone(), ResponseSpec { body, headers });
                }
                operations.push(Operation {
                    id,
                    method: method.to_uppercase(),
                    segments: template.split('/').map(str::to_owned).collect(),
                    template: template.clone(),
                    params,
                    body,
                    responses,
                });
            }
        }
        let root = json!({
            "definitions": definitions,
            "components": doc["components"].clone(),
        });
        let validators = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .should_validate_formats(true)
            .build_map(&root)
            .map_err(|e| format!("compiling the OpenAPI schemas: {e}"))?;
        Ok(Self {
            operations,
            validators,
        })
    }

    fn validator(&self, key: &str) -> Result<&Validator, String> {
        let pointer = format!(
            "#/definitions/{}",
            key.replace('~', "~0").replace('/', "~1")
        );
        self.validators
            .get(&pointer)
            .ok_or_else(|| format!("no compiled schema at {pointer}"))
    }

    fn check(&self, key: &str, what: &str, instance: &Value) -> Result<(), String> {
        let validator = self.validator(key)?;
        let errors: Vec<String> = validator
            .iter_errors(instance)
            .map(|e| format!("{} at `{}`", e, e.instance_path()))
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{what} does not match the API description: {}",
                errors.join("; ")
            ))
        }
    }

    /// The operation a request is for, with its path parameters. Literal segments
    /// win over templated ones (`/v2/volumes/actions` over `/v2/volumes/{volume_id}`).
    pub fn route(
        &self,
        method: &str,
        path: &str,
    ) -> Option<(&Operation, BTreeMap<String, String>)> {
        let parts: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, &Operation, BTreeMap<String, String>)> = None;
        for op in self.operations.iter().filter(|o| o.method == method) {
            if op.segments.len() != parts.len() {
                continue;
            }
            let mut vars = BTreeMap::new();
            let mut literal = 0;
            let matched = op.segments.iter().zip(&parts).all(|(seg, part)| {
                if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
                    vars.insert(name.to_owned(), (*part).to_owned());
                    !part.is_empty()
                } else {
                    literal += 1;
                    seg == part
                }
            });
            if matched && best.as_ref().is_none_or(|(l, ..)| literal > *l) {
                best = Some((literal, op, vars));
            }
        }
        best.map(|(_, op, vars)| (op, vars))
    }

    /// Reads a raw parameter as the JSON value its schema expects.
    fn typed(param: &Param, raw: &str) -> Value {
        for t in &param.types {
            match t.as_str() {
                "integer" => {
                    if let Ok(n) = raw.parse::<i64>() {
                        return json!(n);
                    }
                }
                "number" => {
                    if let Ok(n) = raw.parse::<f64>() {
                        return json!(n);
                    }
                }
                "boolean" => {
                    if let Ok(b) = raw.parse::<bool>() {
                        return json!(b);
                    }
                }
                _ => return json!(raw),
            }
        }
        // Nothing fits: a string, which the schema then refuses with a clear message.
        json!(raw)
    }

    /// Checks a request: path and query parameters (each against its schema; no
    /// unknown or repeated query parameter), and the body.
    pub fn check_request(
        &self,
        op: &Operation,
        path_vars: &BTreeMap<String, String>,
        query: &[(String, String)],
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<Option<Value>, String> {
        let mut problems = Vec::new();
        for (name, _) in query {
            let known = op
                .params
                .iter()
                .any(|p| p.location == "query" && &p.name == name);
            if !known {
                problems.push(format!("unknown query parameter `{name}`"));
            }
            if query.iter().filter(|(n, _)| n == name).count() > 1 {
                problems.push(format!("query parameter `{name}` is repeated"));
            }
        }
        for param in &op.params {
            let raw = match param.location.as_str() {
                "path" => path_vars.get(&param.name).cloned(),
                "query" => query
                    .iter()
                    .find(|(n, _)| n == &param.name)
                    .map(|(_, v)| v.clone()),
                _ => continue,
            };
            match raw {
                None if param.required => problems.push(format!(
                    "required {} parameter `{}` is missing",
                    param.location, param.name
                )),
                None => {}
                Some(raw) => {
                    let what = format!("{} parameter `{}`={raw:?}", param.location, param.name);
                    if let Err(e) = self.check(&param.key, &what, &Self::typed(param, &raw)) {
                        problems.push(e);
                    }
                }
            }
        }
        let parsed = match (&op.body, body.is_empty()) {
            (None, true) => None,
            (None, false) => {
                problems.push(format!("{} takes no request body", op.id));
                None
            }
            (Some((true, _)), true) => {
                problems.push(format!("{} requires a JSON body", op.id));
                None
            }
            (Some(_), true) => None,
            (Some((_, key)), false) => {
                if !content_type.is_some_and(|c| c.starts_with("application/json")) {
                    problems.push(format!(
                        "the body must be sent as application/json, not {content_type:?}"
                    ));
                }
                match serde_json::from_slice::<Value>(body) {
                    Ok(value) => {
                        if let Err(e) = self.check(key, "the request body", &value) {
                            problems.push(e);
                        }
                        Some(value)
                    }
                    Err(e) => {
                        problems.push(format!("the request body is not JSON: {e}"));
                        None
                    }
                }
            }
        };
        if problems.is_empty() {
            Ok(parsed)
        } else {
            Err(format!(
                "{} {}: {}",
                op.method,
                op.template,
                problems.join("; ")
            ))
        }
    }

    /// Checks a response the fake is about to send.
    pub fn check_response(
        &self,
        op: &Operation,
        status: u16,
        headers: &[(String, String)],
        body: Option<&Value>,
    ) -> Result<(), String> {
        let spec = op
            .responses
            .get(&status.to_string())
            .or_else(|| op.responses.get("default"))
            .ok_or_else(|| format!("{}: status {status} is not described", op.id))?;
        let what = format!("{} response {status}", op.id);
        for name in &spec.headers {
            if name == "content-type" {
                continue;
            }
            let value = headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
                .ok_or_else(|| format!("{what}: header {name} is missing"))?;
            if value.parse::<i64>().is_err() {
                return Err(format!("{what}: header {name}={value:?} is not an integer"));
            }
        }
        match (&spec.body, body) {
            (Some(key), Some(body)) => self.check(key, &what, body),
            (Some(_), None) => Err(format!("{what} must have a JSON body")),
            (None, Some(_)) => Err(format!("{what} must have no body")),
            (None, None) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_and_parameters_are_checked_against_the_description() {
        let spec = spec();
        let (op, vars) = spec.route("GET", "/v2/droplets/42").unwrap();
        assert_eq!(op.id, "droplets_get");
        assert_eq!(vars["droplet_id"], "42");
        assert_eq!(
            spec.route("POST", "/v2/volumes/actions").unwrap().0.id,
            "volumeActions_post"
        );
        let headers: Vec<(String, String)> =
            ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"]
                .iter()
                .map(|h| ((*h).to_owned(), "1".to_owned()))
                .collect();
        let err = spec
            .check_response(op, 200, &headers, Some(&json!({"droplet": {"id": 1}})))
            .unwrap_err();
        assert!(err.contains("required"), "{err}");
        assert!(
            spec.check_response(op, 404, &headers, Some(&json!({"id": "not_found"})))
                .is_err()
        );
        assert!(
            spec.check_response(op, 404, &[], Some(&json!({"id": "x", "message": "y"})))
                .is_err()
        );
        let (op, vars) = spec.route("GET", "/v2/droplets/abc").unwrap();
        assert!(spec.check_request(op, &vars, &[], None, b"").is_err());
        let (op, vars) = spec.route("GET", "/v2/droplets").unwrap();
        let query = vec![
            ("tag_name".to_owned(), "x".to_owned()),
            ("per_page".to_owned(), "200".to_owned()),
        ];
        assert!(spec.check_request(op, &vars, &query, None, b"").is_ok());
        let query = vec![("tagname".to_owned(), "x".to_owned())];
        assert!(spec.check_request(op, &vars, &query, None, b"").is_err());
    }
}
