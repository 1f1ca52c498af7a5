//! Writing templates: loading the template files, the start-up sync that upserts them
//! by name, and the admin operations (create, update, deprecate).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use diesel_async::{AsyncConnection, AsyncPgConnection};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{BUILTIN, Status, TemplateSpec};
use crate::db::DbPool;
use crate::db::json::Unreadable;
use crate::db::templates::{self as store, Template, TemplateFields, WriteOutcome};
use crate::error::{ApiError, ValidationErrors};

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("template file {file}{location}: field `{field}`: {message}")]
    Parse {
        file: String,
        /// ` (line N)` when the parser knows it.
        location: String,
        field: String,
        message: String,
    },
    #[error("template file {file} is invalid: {errors}")]
    Invalid { file: String, errors: String },
    #[error("template files {first} and {second} both define the template `{name}`")]
    DuplicateName {
        name: String,
        first: String,
        second: String,
    },
    #[error("reading templates from {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("storing templates: the name `{0}` was taken meanwhile")]
    NameTaken(String),
    #[error("storing templates: {0}")]
    Database(#[from] diesel::result::Error),
    #[error("storing templates: {0}")]
    Unavailable(String),
}

impl TemplateError {
    pub(super) fn invalid(file: &str, errors: &ValidationErrors) -> Self {
        let errors = errors
            .fields
            .iter()
            .map(|(field, messages)| format!("field `{field}`: {}", messages.join("; ")))
            .collect::<Vec<_>>()
            .join(", ");
        Self::Invalid {
            file: file.to_owned(),
            errors,
        }
    }
}

/// Every file template, by name: the built-ins, then `extra_dir/*.yaml|*.yml` in
/// file-name order. A file in `extra_dir` replaces the built-in of the same name, so
/// an operator can change one without rebuilding. Blocking: reads files.
pub fn load_files(extra_dir: Option<&Path>) -> Result<Vec<(String, TemplateSpec)>, TemplateError> {
    let mut by_name: BTreeMap<String, (String, TemplateSpec)> = BTreeMap::new();
    for (file, text) in BUILTIN {
        let spec = TemplateSpec::from_yaml(file, text)?;
        by_name.insert(spec.name.clone(), (file.to_owned(), spec));
    }
    let Some(dir) = extra_dir else {
        return Ok(by_name.into_values().collect());
    };
    let io = |source| TemplateError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut paths = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let yaml = path
            .extension()
            .is_some_and(|ext| ext == "yaml" || ext == "yml");
        if yaml && path.is_file() {
            paths.push(path);
        }
    }
    paths.sort();
    let mut seen: HashMap<String, String> = HashMap::new();
    for path in paths {
        let text = std::fs::read_to_string(&path).map_err(|source| TemplateError::Io {
            path: path.clone(),
            source,
        })?;
        let file = path.display().to_string();
        let spec = TemplateSpec::from_yaml(&file, &text)?;
        if let Some(first) = seen.insert(spec.name.clone(), file.clone()) {
            return Err(TemplateError::DuplicateName {
                name: spec.name,
                first,
                second: file,
            });
        }
        if by_name.contains_key(&spec.name) {
            tracing::info!(template = %spec.name, %file, "template file replaces the built-in");
        }
        by_name.insert(spec.name.clone(), (file, spec));
    }
    Ok(by_name.into_values().collect())
}

/// Loads every file template and upserts it by name (case-insensitive), in one
/// transaction under a lock so replicas starting together do not race. Rows match
/// their files afterwards, except that a template an admin deprecated stays
/// deprecated: a restart must not bring it back. Returns the number of file templates.
pub async fn sync(pool: &DbPool, extra_dir: Option<&Path>) -> Result<usize, TemplateError> {
    let dir = extra_dir.map(Path::to_path_buf);
    let files = tokio::task::spawn_blocking(move || load_files(dir.as_deref()))
        .await
        .map_err(|e| TemplateError::Unavailable(format!("loading task failed: {e}")))??;
    let mut conn = pool
        .get()
        .await
        .map_err(|e| TemplateError::Unavailable(e.to_string()))?;
    let changed = conn
        .transaction::<_, TemplateError, _>(async |conn| {
            store::lock_for_sync(conn).await?;
            let mut changed = 0_usize;
            for (_, spec) in &files {
                if upsert(conn, spec).await? {
                    changed += 1;
                }
            }
            Ok(changed)
        })
        .await?;
    tracing::info!(templates = files.len(), changed, "templates loaded");
    Ok(files.len())
}

/// Writes one file template; `true` when the row was created or changed.
async fn upsert(conn: &mut AsyncPgConnection, spec: &TemplateSpec) -> Result<bool, TemplateError> {
    let mut fields = TemplateFields::from_spec(spec);
    let outcome = match store::find_by_name(conn, &spec.name).await? {
        None => store::insert(conn, Uuid::new_v4(), &fields).await?,
        Some(row) => {
            if row.status == Status::Deprecated {
                fields.status = Status::Deprecated;
            }
            // A stored value that cannot be read is replaced by the file's.
            if TemplateFields::from_row(&row).is_ok_and(|stored| stored == fields) {
                return Ok(false);
            }
            store::update(conn, row.id, &fields).await?
        }
    };
    match outcome {
        WriteOutcome::Saved(_) => Ok(true),
        WriteOutcome::NameTaken => Err(TemplateError::NameTaken(spec.name.clone())),
    }
}

/// The 404 for a template id or name, worded the same whether it never existed or
/// is hidden from the caller.
pub fn not_found(key: &str) -> ApiError {
    ApiError::NotFound(format!("No template with the id or name `{key}`."))
}

/// A template whose row holds a value that cannot be read (stored before such values
/// were refused): it cannot be shown or used until an administrator replaces it.
pub fn unreadable(id: Uuid, err: &Unreadable) -> ApiError {
    err.log("templates", id);
    ApiError::Conflict {
        detail: format!(
            "The template's stored {column} cannot be read (it was saved before such values \
             were refused); an administrator can replace it: PUT the template with a new \
             `{column}`.",
            column = err.column
        ),
        context: json!({ "field": err.column }),
    }
}

fn name_conflict(name: &str) -> ApiError {
    ApiError::Conflict {
        detail: format!("A template named `{name}` already exists; choose another name."),
        context: json!({ "field": "name" }),
    }
}

/// Stores a new template (validated by `TemplateSpec::from_json`).
pub async fn create(
    conn: &mut AsyncPgConnection,
    spec: &TemplateSpec,
) -> Result<Template, ApiError> {
    match store::insert(conn, Uuid::new_v4(), &TemplateFields::from_spec(spec)).await? {
        WriteOutcome::Saved(row) => Ok(*row),
        WriteOutcome::NameTaken => Err(name_conflict(&spec.name)),
    }
}

/// Applies a partial update: the fields in `patch` replace the stored ones (`null`
/// clears an optional field), and the result is validated as a whole.
pub async fn update(
    conn: &mut AsyncPgConnection,
    key: &str,
    patch: Map<String, Value>,
) -> Result<Template, ApiError> {
    conn.transaction::<_, ApiError, _>(async |conn| {
        let row = store::find_for_update(conn, key)
            .await?
            .ok_or_else(|| not_found(key))?;
        // A stored value that cannot be read has to be replaced by this change.
        if let Some(err) = row
            .unreadable()
            .into_iter()
            .find(|err| !patch.contains_key(err.column))
        {
            return Err(unreadable(row.id, &err));
        }
        let Value::Object(mut merged) = serde_json::to_value(TemplateFields::from_row_lossy(&row))
            .map_err(ApiError::internal)?
        else {
            return Err(ApiError::internal(anyhow::anyhow!(
                "a template is not an object"
            )));
        };
        merged.extend(patch);
        let spec = TemplateSpec::from_json(merged)?;
        match store::update(conn, row.id, &TemplateFields::from_spec(&spec)).await? {
            WriteOutcome::Saved(row) => Ok(*row),
            WriteOutcome::NameTaken => Err(name_conflict(&spec.name)),
        }
    })
    .await
}

/// Marks a template deprecated: hidden from non-admins, kept for the environments
/// made from it. Deprecating it again changes nothing.
pub async fn deprecate(conn: &mut AsyncPgConnection, key: &str) -> Result<Template, ApiError> {
    let row = store::find_by_id_or_name(conn, key)
        .await?
        .ok_or_else(|| not_found(key))?;
    if let Some(err) = row.unreadable().first() {
        return Err(unreadable(row.id, err));
    }
    if row.status == Status::Deprecated {
        return Ok(row);
    }
    Ok(store::set_status(conn, row.id, Status::Deprecated).await?)
}
