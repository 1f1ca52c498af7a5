//! Environment templates: the stored row, its writable fields, and queries.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use diesel::dsl::{count_star, sql};
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use super::json::{StoredJson, Unreadable};
use super::schema::{environments, templates};
use crate::templates::{Category, Status, TemplateSpec};

#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = templates, check_for_backend(diesel::pg::Pg))]
pub struct Template {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub category: Category,
    pub tags: StoredJson,
    pub docker_image: String,
    pub default_resources: StoredJson,
    pub environment_variables: StoredJson,
    pub startup_commands: StoredJson,
    pub bootstrap: String,
    pub packages: StoredJson,
    pub cloud_init: StoredJson,
    pub default_port: Option<i32>,
    pub documentation_url: Option<String>,
    pub icon_url: Option<String>,
    pub status: Status,
    pub version: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl Template {
    fn json_columns(&self) -> [(&'static str, &StoredJson); 6] {
        [
            ("tags", &self.tags),
            ("default_resources", &self.default_resources),
            ("environment_variables", &self.environment_variables),
            ("startup_commands", &self.startup_commands),
            ("packages", &self.packages),
            ("cloud_init", &self.cloud_init),
        ]
    }

    /// The stored values of this row that cannot be read.
    pub fn unreadable(&self) -> Vec<Unreadable> {
        self.json_columns()
            .into_iter()
            .filter_map(|(column, value)| value.read(column).err())
            .collect()
    }
}

/// Everything a template file or an admin sets: the row minus id and timestamps.
/// Field names match `TemplateSpec`, so it serializes back into one.
#[derive(Debug, Clone, PartialEq, Serialize, Insertable, AsChangeset)]
#[diesel(table_name = templates, treat_none_as_null = true)]
pub struct TemplateFields {
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub category: Category,
    pub tags: Value,
    pub docker_image: String,
    pub default_resources: Value,
    pub environment_variables: Value,
    pub startup_commands: Value,
    pub bootstrap: String,
    pub packages: Value,
    pub cloud_init: Value,
    pub default_port: Option<i32>,
    pub documentation_url: Option<String>,
    pub icon_url: Option<String>,
    pub status: Status,
    pub version: String,
}

fn strings(items: &[String]) -> Value {
    Value::from(items.to_vec())
}

fn string_map(map: &std::collections::BTreeMap<String, String>) -> Value {
    Value::Object(
        map.iter()
            .map(|(k, v)| (k.clone(), Value::from(v.as_str())))
            .collect(),
    )
}

impl TemplateFields {
    pub fn from_spec(spec: &TemplateSpec) -> Self {
        Self {
            name: spec.name.clone(),
            display_name: spec.display_name.clone(),
            description: spec.description.clone(),
            category: spec.category,
            tags: strings(&spec.tags),
            docker_image: spec.docker_image.clone(),
            default_resources: string_map(&spec.default_resources),
            environment_variables: string_map(&spec.environment_variables),
            startup_commands: strings(&spec.startup_commands),
            bootstrap: spec.bootstrap.clone(),
            packages: strings(&spec.packages),
            cloud_init: Value::Object(spec.cloud_init.clone()),
            default_port: spec.default_port.map(i32::from),
            documentation_url: spec.documentation_url.clone(),
            icon_url: spec.icon_url.clone(),
            status: spec.status,
            version: spec.version.clone(),
        }
    }

    /// The stored fields, unless one cannot be read.
    pub fn from_row(row: &Template) -> Result<Self, Unreadable> {
        Self::read(row, &mut Err)
    }

    /// The stored fields, with `Value::Null` for those that cannot be read.
    pub fn from_row_lossy(row: &Template) -> Self {
        match Self::read::<std::convert::Infallible>(row, &mut |_| Ok(Value::Null)) {
            Ok(fields) => fields,
            Err(never) => match never {},
        }
    }

    fn read<E>(
        row: &Template,
        unreadable: &mut dyn FnMut(Unreadable) -> Result<Value, E>,
    ) -> Result<Self, E> {
        let mut json = |column, value: &StoredJson| match value.read(column) {
            Ok(value) => Ok(value.clone()),
            Err(err) => unreadable(err),
        };
        Ok(Self {
            name: row.name.clone(),
            display_name: row.display_name.clone(),
            description: row.description.clone(),
            category: row.category,
            tags: json("tags", &row.tags)?,
            docker_image: row.docker_image.clone(),
            default_resources: json("default_resources", &row.default_resources)?,
            environment_variables: json("environment_variables", &row.environment_variables)?,
            startup_commands: json("startup_commands", &row.startup_commands)?,
            bootstrap: row.bootstrap.clone(),
            packages: json("packages", &row.packages)?,
            cloud_init: json("cloud_init", &row.cloud_init)?,
            default_port: row.default_port,
            documentation_url: row.documentation_url.clone(),
            icon_url: row.icon_url.clone(),
            status: row.status,
            version: row.version.clone(),
        })
    }
}

/// The result of a write that may collide with another template's name.
pub enum WriteOutcome {
    Saved(Box<Template>),
    NameTaken,
}

/// Which templates a listing shows.
#[derive(Debug, Default)]
pub struct ListFilter<'a> {
    pub category: Option<Category>,
    /// Matched case-insensitively against name, display name, description and tags.
    pub search: Option<&'a str>,
    pub include_deprecated: bool,
}

define_sql_function!(fn lower(x: Text) -> Text);

/// Escapes `%`, `_` and `\` so a search term matches literally inside ILIKE.
fn like_pattern(term: &str) -> String {
    let mut pattern = String::with_capacity(term.len() + 2);
    pattern.push('%');
    for c in term.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

pub async fn list(
    conn: &mut AsyncPgConnection,
    filter: &ListFilter<'_>,
) -> QueryResult<Vec<Template>> {
    let mut query = templates::table
        .select(Template::as_select())
        .order(templates::name.asc())
        .into_boxed();
    if let Some(category) = filter.category {
        query = query.filter(templates::category.eq(category));
    }
    if let Some(term) = filter.search {
        let pattern = like_pattern(term);
        query = query.filter(
            templates::name
                .ilike(pattern.clone())
                .or(templates::display_name.ilike(pattern.clone()))
                .or(templates::description.ilike(pattern.clone()))
                .or(sql::<Text>("templates.tags::text").ilike(pattern)),
        );
    }
    if !filter.include_deprecated {
        query = query.filter(templates::status.ne(Status::Deprecated));
    }
    query.load(conn).await
}

pub async fn find(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Template>> {
    templates::table
        .find(id)
        .select(Template::as_select())
        .first(conn)
        .await
        .optional()
}

/// Looks a template up by name, ignoring case.
pub async fn find_by_name(
    conn: &mut AsyncPgConnection,
    name: &str,
) -> QueryResult<Option<Template>> {
    templates::table
        .filter(lower(templates::name).eq(name.to_lowercase()))
        .select(Template::as_select())
        .first(conn)
        .await
        .optional()
}

/// Looks a template up by what a client sends: its id or its name (as the app and
/// `POST /environments` may use either). Deprecated ones are returned too.
pub async fn find_by_id_or_name(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> QueryResult<Option<Template>> {
    match Uuid::parse_str(key) {
        Ok(id) => find(conn, id).await,
        Err(_) => find_by_name(conn, key).await,
    }
}

/// Like `find_by_id_or_name`, locking the row until the transaction ends.
pub async fn find_for_update(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> QueryResult<Option<Template>> {
    let id = match Uuid::parse_str(key) {
        Ok(id) => id,
        Err(_) => match find_by_name(conn, key).await? {
            Some(t) => t.id,
            None => return Ok(None),
        },
    };
    templates::table
        .find(id)
        .select(Template::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

fn name_taken(err: diesel::result::Error) -> QueryResult<WriteOutcome> {
    use diesel::result::{DatabaseErrorKind, Error};
    match err {
        Error::DatabaseError(DatabaseErrorKind::UniqueViolation, info)
            if info.constraint_name() == Some("templates_name_key") =>
        {
            Ok(WriteOutcome::NameTaken)
        }
        other => Err(other),
    }
}

pub async fn insert(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    fields: &TemplateFields,
) -> QueryResult<WriteOutcome> {
    diesel::insert_into(templates::table)
        .values((templates::id.eq(id), fields))
        .returning(Template::as_returning())
        .get_result(conn)
        .await
        .map(|t| WriteOutcome::Saved(Box::new(t)))
        .or_else(name_taken)
}

/// Replaces every writable field of template `id` (which must exist).
pub async fn update(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    fields: &TemplateFields,
) -> QueryResult<WriteOutcome> {
    diesel::update(templates::table.find(id))
        .set((fields, templates::updated_at.eq(diesel::dsl::now)))
        .returning(Template::as_returning())
        .get_result(conn)
        .await
        .map(|t| WriteOutcome::Saved(Box::new(t)))
        .or_else(name_taken)
}

pub async fn set_status(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    status: Status,
) -> QueryResult<Template> {
    diesel::update(templates::table.find(id))
        .set((
            templates::status.eq(status),
            templates::updated_at.eq(diesel::dsl::now),
        ))
        .returning(Template::as_returning())
        .get_result(conn)
        .await
}

/// How many environments were made from each of `ids` (deleted ones included:
/// the count says how much a template has been used).
pub async fn usage_counts(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<HashMap<Uuid, i64>> {
    let rows: Vec<(Uuid, i64)> = environments::table
        .filter(environments::template_id.eq_any(ids))
        .group_by(environments::template_id)
        .select((environments::template_id, count_star()))
        .load(conn)
        .await?;
    Ok(rows.into_iter().collect())
}

pub async fn usage_count(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<i64> {
    environments::table
        .filter(environments::template_id.eq(id))
        .count()
        .get_result(conn)
        .await
}

/// Serialises start-up syncs of several replicas; held until the transaction ends.
pub async fn lock_for_sync(conn: &mut AsyncPgConnection) -> QueryResult<()> {
    const SYNC_LOCK_KEY: i64 = 0x6465_7670_6f63_6b02;
    diesel::sql_query("SELECT pg_advisory_xact_lock($1)")
        .bind::<BigInt, _>(SYNC_LOCK_KEY)
        .execute(conn)
        .await
        .map(drop)
}
