//! A value a user can send cannot break the row it lands in (issue 12, point 5).
//! Every JSON member is checked before it is stored, and what is stored reads back
//! as it was sent: extreme values are either refused with a 422 naming them and
//! nothing stored, or stored and read back identically. A row that cannot be read
//! all the same (left by an attack before the checks; written here with SQL) is left
//! out of every list and answered alone with a 409 naming the column, and an
//! environment in that state can still be deleted.

mod environments;
mod rows;
mod templates;

use diesel::QueryableByName;
use diesel::sql_types::Text;
use diesel_async::RunQueryDsl;
use serde_json::Value;

use crate::helpers::TestApp;

/// What PostgreSQL stored in jsonb numbers: printed without an exponent. Past
/// f64::MAX, so serde_json can read it in no build: the row cannot be read.
pub const UNREADABLE: &str = r#"{"cpu": 1.8e308}"#;

/// Runs SQL on the test's database, as an attacker's earlier success (or an
/// operator) would have left it.
pub async fn sql(app: &TestApp, statement: &str) {
    let mut conn = app.db.connect().await;
    diesel::sql_query(statement)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

#[derive(QueryableByName)]
struct Text1 {
    #[diesel(sql_type = Text)]
    text: String,
}

/// The single text column `text` of each row `query` returns.
pub async fn texts(app: &TestApp, query: &str) -> Vec<String> {
    let mut conn = app.db.connect().await;
    diesel::sql_query(query)
        .load::<Text1>(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .into_iter()
        .map(|row| row.text)
        .collect()
}

/// `value` nested `depth` times in one-member objects.
pub fn nested(depth: usize, value: Value) -> Value {
    (0..depth).fold(value, |inner, _| serde_json::json!({ "a": inner }))
}
