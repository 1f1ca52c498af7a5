//! Environment templates: the file format (YAML in `templates/`), its validation, the
//! built-in files compiled into the binary, and the operations on stored templates
//! (start-up sync, admin create/update/deprecate) that keep every row valid.

mod sync;

use std::collections::BTreeMap;
use std::io::Write;

use diesel::deserialize::{self, FromSql, FromSqlRow};
use diesel::expression::AsExpression;
use diesel::pg::{Pg, PgValue};
use diesel::serialize::{self, IsNull, Output, ToSql};
use diesel::sql_types::Text;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::db::json;
use crate::error::{ApiError, ValidationErrors};

pub use sync::{TemplateError, create, deprecate, load_files, not_found, sync, unreadable, update};

/// The built-in templates, shipped inside the binary so a fresh install has them.
pub const BUILTIN: [(&str, &str); 5] = [
    ("python.yaml", include_str!("../templates/python.yaml")),
    ("nodejs.yaml", include_str!("../templates/nodejs.yaml")),
    ("golang.yaml", include_str!("../templates/golang.yaml")),
    ("rust.yaml", include_str!("../templates/rust.yaml")),
    ("ubuntu.yaml", include_str!("../templates/ubuntu.yaml")),
];

/// Whether `name` is one of the built-in templates (older apps show them as featured).
pub fn is_builtin(name: &str) -> bool {
    BUILTIN
        .iter()
        .any(|(file, _)| file.strip_suffix(".yaml") == Some(name))
}

/// Declares a closed set of snake_case words stored as `text` and sent as strings,
/// and its OpenAPI schema under the name `$schema`.
// Not strum: the diesel and OpenAPI impls need the macro anyway, and the parse error
// lists the allowed words, which strum's does not.
macro_rules! text_enum {
    ($(#[doc = $doc:literal])* $name:ident as $schema:literal { $($variant:ident => $text:literal),+ $(,)? }) => {
        $(#[doc = $doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, AsExpression, FromSqlRow)]
        #[diesel(sql_type = Text)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant),+
        }

        impl $name {
            pub const ALL: &[$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }

            /// The allowed words, for error messages.
            pub fn allowed() -> String {
                Self::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("`{s}` is not one of: {}", Self::allowed()))
            }
        }

        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                utoipa::openapi::schema::ObjectBuilder::new()
                    .schema_type(utoipa::openapi::schema::Type::String)
                    .enum_values(Some([$($text),+]))
                    .description(Some(concat!($($doc),*).trim()))
                    .into()
            }
        }

        impl utoipa::ToSchema for $name {
            fn name() -> std::borrow::Cow<'static, str> {
                std::borrow::Cow::Borrowed($schema)
            }
        }

        impl ToSql<Text, Pg> for $name {
            fn to_sql<'b>(&'b self, out: &mut Output<'b, '_, Pg>) -> serialize::Result {
                out.write_all(self.as_str().as_bytes())?;
                Ok(IsNull::No)
            }
        }

        impl FromSql<Text, Pg> for $name {
            fn from_sql(bytes: PgValue<'_>) -> deserialize::Result<Self> {
                Ok(std::str::from_utf8(bytes.as_bytes())?.parse()?)
            }
        }
    };
}

text_enum!(
    /// What kind of environment a template makes; the app knows exactly these.
    Category as "Category" {
        ProgrammingLanguage => "programming_language",
        Framework => "framework",
        Database => "database",
        Devops => "devops",
        OperatingSystem => "operating_system",
    }
);

text_enum!(
    /// Deprecated templates are hidden from non-admins and cannot be chosen.
    Status as "TemplateStatus" {
        Active => "active",
        Beta => "beta",
        Deprecated => "deprecated",
    }
);

/// One template as written in a file or sent by an admin. Unknown fields are refused
/// so that a typo is an error rather than a silently missing setting.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TemplateSpec {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub category: Category,
    #[serde(default)]
    pub tags: Vec<String>,
    pub docker_image: String,
    #[serde(default)]
    pub default_resources: BTreeMap<String, String>,
    #[serde(default)]
    pub environment_variables: BTreeMap<String, String>,
    #[serde(default)]
    pub startup_commands: Vec<String>,
    #[serde(default)]
    pub default_port: Option<u16>,
    #[serde(default)]
    pub documentation_url: Option<String>,
    #[serde(default)]
    pub icon_url: Option<String>,
    #[serde(default = "default_status")]
    pub status: Status,
    #[serde(default = "default_version")]
    pub version: String,
    /// Apt packages a cloud machine installs before the bootstrap runs.
    #[serde(default)]
    pub packages: Vec<String>,
    /// Extra cloud-config merged into a cloud machine's user-data: at most 64 KiB as
    /// JSON, no value more than 16 levels deep; numbers at most 2^53 in size, fractions
    /// at least 10^-6, not -0.
    #[serde(default)]
    #[schema(value_type = Object)]
    pub cloud_init: Map<String, Value>,
    /// A POSIX sh script run as the machine's cloud-init, printing stage markers.
    pub bootstrap: String,
}

/// How deep below its top a value of `cloud_init` may be; cloud-config needs a few.
pub const MAX_CLOUD_INIT_DEPTH: usize = 16;

fn default_status() -> Status {
    Status::Active
}

fn default_version() -> String {
    "1.0.0".to_owned()
}

/// Fields the API returns but never takes: dropped from input so that a template
/// fetched with GET can be edited and sent back as it is.
const READ_ONLY: [&str; 8] = [
    "id",
    "created_at",
    "updated_at",
    "usage_count",
    "image",
    "icon",
    "featured",
    "config",
];

impl TemplateSpec {
    /// Parses and validates a template file; errors name the file and the field.
    pub fn from_yaml(file: &str, text: &str) -> Result<Self, TemplateError> {
        if text.trim().is_empty() {
            return Err(TemplateError::Parse {
                file: file.to_owned(),
                location: String::new(),
                field: "(top level)".to_owned(),
                message: "the file is empty".to_owned(),
            });
        }
        let de = serde_norway::Deserializer::from_str(text);
        let mut spec: Self = serde_path_to_error::deserialize(de).map_err(|err| {
            let path = err.path().to_string();
            let inner = err.into_inner();
            let (field, message) = describe(path, &inner.to_string(), "(top level)");
            TemplateError::Parse {
                file: file.to_owned(),
                location: inner
                    .location()
                    .map(|l| format!(" (line {})", l.line()))
                    .unwrap_or_default(),
                field,
                message,
            }
        })?;
        spec.normalize();
        spec.validate()
            .map_err(|errors| TemplateError::invalid(file, &errors))?;
        Ok(spec)
    }

    /// Builds a template from an API body (read-only fields ignored) and validates it.
    pub fn from_json(mut body: Map<String, Value>) -> Result<Self, ApiError> {
        for key in READ_ONLY {
            body.remove(key);
        }
        let mut spec: Self = from_value(Value::Object(body))?;
        spec.normalize();
        spec.validate().map_err(ApiError::Validation)?;
        Ok(spec)
    }

    /// Trims what people pad by accident; an empty optional URL means none.
    fn normalize(&mut self) {
        for text in [
            &mut self.display_name,
            &mut self.description,
            &mut self.docker_image,
            &mut self.version,
        ] {
            *text = text.trim().to_owned();
        }
        for tag in &mut self.tags {
            *tag = tag.trim().to_owned();
        }
        for url in [&mut self.documentation_url, &mut self.icon_url] {
            *url = url
                .take()
                .map(|u| u.trim().to_owned())
                .filter(|u| !u.is_empty());
        }
    }

    /// Checks every field and reports all problems at once.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut e = ValidationErrors::default();
        check_name(&self.name, &mut e);
        check_text(&mut e, "display_name", &self.display_name, 80);
        check_text(&mut e, "description", &self.description, 1000);
        check_list(&mut e, "tags", &self.tags, 20, |e, field, tag| {
            check_text(e, field, tag, 40);
        });
        check_word(&mut e, "docker_image", &self.docker_image, 200);
        for (key, value) in &self.default_resources {
            if !is_identifier(key, false) {
                e.add(
                    "default_resources",
                    format!("`{key}` is not a resource name (lowercase letters, digits, _)"),
                );
            }
            check_word(&mut e, &format!("default_resources.{key}"), value, 40);
        }
        for (key, value) in &self.environment_variables {
            if !is_identifier(key, true) {
                e.add(
                    "environment_variables",
                    format!("`{key}` is not a variable name ([A-Za-z_][A-Za-z0-9_]*)"),
                );
            }
            if value.chars().any(|c| c.is_control() && c != '\t') || value.len() > 4096 {
                e.add(
                    &format!("environment_variables.{key}"),
                    "must be at most 4096 characters without line breaks or control characters",
                );
            }
        }
        check_list(
            &mut e,
            "startup_commands",
            &self.startup_commands,
            20,
            |e, field, cmd| {
                check_text(e, field, cmd, 1000);
            },
        );
        if self.default_port == Some(0) {
            e.add("default_port", "must be between 1 and 65535");
        }
        for (field, url) in [
            ("documentation_url", &self.documentation_url),
            ("icon_url", &self.icon_url),
        ] {
            if let Some(url) = url {
                let web =
                    url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
                if !web || url.len() > 500 {
                    e.add(field, "must be an http(s) URL of at most 500 characters");
                }
            }
        }
        check_word(&mut e, "version", &self.version, 40);
        check_list(
            &mut e,
            "packages",
            &self.packages,
            100,
            |e, field, package| {
                if !is_package_name(package) {
                    e.add(field, format!("`{package}` is not an apt package name"));
                }
            },
        );
        let cloud_init = Value::Object(self.cloud_init.clone());
        if cloud_init.to_string().len() > 64 * 1024 {
            e.add("cloud_init", "must be at most 64 KiB");
        } else if let Some((field, message)) =
            json::unstorable(&cloud_init, "cloud_init", MAX_CLOUD_INIT_DEPTH)
        {
            e.add(&field, message);
        }
        if self.bootstrap.trim().is_empty() {
            e.add("bootstrap", "is required: a POSIX sh script");
        } else if self.bootstrap.len() > 64 * 1024 {
            e.add("bootstrap", "must be at most 64 KiB");
        }
        if e.is_empty() { Ok(()) } else { Err(e) }
    }
}

/// Names appear in URLs (`/templates/{id or name}`), so they are slugs and never uuids.
fn check_name(name: &str, e: &mut ValidationErrors) {
    let valid_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !(2..=40).contains(&name.len())
        || !valid_chars
        || name.starts_with('-')
        || name.ends_with('-')
    {
        e.add(
            "name",
            "must be 2 to 40 characters of a-z, 0-9 and -, not starting or ending with -",
        );
    } else if uuid::Uuid::parse_str(name).is_ok() {
        e.add(
            "name",
            "must not be a uuid: templates are looked up by id or by name",
        );
    }
}

/// Required human text of at most `max` characters.
fn check_text(e: &mut ValidationErrors, field: &str, value: &str, max: usize) {
    if value.trim().is_empty() {
        e.add(field, "must not be empty");
    } else if value.chars().count() > max {
        e.add(field, format!("must be at most {max} characters"));
    }
}

/// A required single word (an image reference, a version, a quantity).
fn check_word(e: &mut ValidationErrors, field: &str, value: &str, max: usize) {
    if value.is_empty()
        || value.len() > max
        || value.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        e.add(
            field,
            format!("must be 1 to {max} characters without spaces"),
        );
    }
}

fn check_list(
    e: &mut ValidationErrors,
    field: &str,
    items: &[String],
    max: usize,
    check: impl Fn(&mut ValidationErrors, &str, &str),
) {
    if items.len() > max {
        e.add(field, format!("must have at most {max} entries"));
    }
    for (i, item) in items.iter().enumerate() {
        check(e, &format!("{field}[{i}]"), item);
    }
}

fn is_identifier(key: &str, allow_upper: bool) -> bool {
    let mut chars = key.chars();
    let ok =
        |c: char| c == '_' || c.is_ascii_lowercase() || (allow_upper && c.is_ascii_uppercase());
    key.len() <= 128 && chars.next().is_some_and(ok) && chars.all(|c| ok(c) || c.is_ascii_digit())
}

/// Debian policy: lowercase letters, digits, `+ - .`, at least two characters,
/// starting with a letter or digit. Anything else could smuggle options into apt.
fn is_package_name(name: &str) -> bool {
    name.len() >= 2
        && name.len() <= 100
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '+' | '-' | '.'))
}

/// Deserializes an API value, naming the offending field in a 422.
fn from_value<T: DeserializeOwned>(value: Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(value).map_err(|err| {
        let path = err.path().to_string();
        let (field, message) = describe(path, &err.into_inner().to_string(), "body");
        ApiError::validation(&field, message)
    })
}

/// Turns a serde error at `path` into (field, message): serde reports a missing field
/// at its parent, so the field is taken from the message (an unknown one is already
/// in the path); locations are dropped.
fn describe(path: String, message: &str, root: &str) -> (String, String) {
    let message = message.split(" at line ").next().unwrap_or(message);
    // serde_norway repeats the path in front of its message.
    let prefix = format!("{path}: ");
    let message = message.strip_prefix(prefix.as_str()).unwrap_or(message);
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.trim_end_matches('`');
        let field = if path == "." {
            name.to_owned()
        } else {
            format!("{path}.{name}")
        };
        return (field, "is required".to_owned());
    }
    let field = if path == "." { root.to_owned() } else { path };
    (field, message.to_owned())
}

#[cfg(test)]
mod tests;
