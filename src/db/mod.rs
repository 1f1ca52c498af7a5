//! Persistence: the connection pool, embedded migrations, and query functions
//! (one module per table family). Query functions take `&mut AsyncPgConnection`
//! and return `QueryResult`.

pub mod activity;
pub mod apps;
pub mod audit;
pub mod embedded;
pub mod environments;
pub mod google;
pub mod json;
pub mod outbox;
pub mod quota;
pub mod recovery;
pub mod schema;
pub mod servers;
pub mod sessions;
pub mod signin_limits;
pub mod store;
pub mod templates;
pub mod users;

use std::time::Duration;

use diesel::Connection;
use diesel::RunQueryDsl as _;
use diesel_async::AsyncPgConnection;
use diesel_async::async_connection_wrapper::AsyncConnectionWrapper;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::pooled_connection::{
    AsyncDieselConnectionManager, ManagerConfig, RecyclingMethod,
};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};

use crate::config::Secret;

pub type DbPool = Pool<AsyncPgConnection>;
pub type DbConn = Object<AsyncPgConnection>;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("migrations");

/// A duration as a PostgreSQL interval (saturating past some 292,000 years).
pub(crate) fn interval(d: Duration) -> diesel::pg::data_types::PgInterval {
    diesel::pg::data_types::PgInterval::from_microseconds(
        i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
    )
}

/// Any advisory-lock key only DevPocket uses: serialises migrations across replicas.
const MIGRATION_LOCK_KEY: i64 = 0x6465_7670_6f63_6b01;

#[derive(Debug, thiserror::Error)]
pub enum DbSetupError {
    #[error("could not connect to the database: {0}")]
    Connect(#[from] diesel::ConnectionError),
    #[error("migration failed: {0}")]
    Migration(String),
    #[error("database query failed: {0}")]
    Query(#[from] diesel::result::Error),
    #[error("could not build the connection pool: {0}")]
    Pool(String),
}

/// A pool whose checkouts fail after `timeout` instead of waiting forever.
pub fn build_pool(
    url: &Secret<String>,
    size: usize,
    timeout: Duration,
) -> Result<DbPool, DbSetupError> {
    let mut config = ManagerConfig::default();
    // A closed connection is detected without a round trip; queries that hit a dead
    // server fail and the connection is discarded.
    config.recycling_method = RecyclingMethod::Fast;
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url.expose(), config);
    Pool::builder(manager)
        .max_size(size)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .build()
        .map_err(|e| DbSetupError::Pool(e.to_string()))
}

/// Applies pending migrations under a Postgres advisory lock so that replicas
/// starting together do not race. Runs on a blocking thread with its own connection.
pub async fn run_migrations(url: &Secret<String>) -> Result<Vec<String>, DbSetupError> {
    let url = url.expose().clone();
    tokio::task::spawn_blocking(move || {
        let mut conn = AsyncConnectionWrapper::<AsyncPgConnection>::establish(&url)?;
        diesel::sql_query(format!("SELECT pg_advisory_lock({MIGRATION_LOCK_KEY})"))
            .execute(&mut conn)?;
        let applied = conn
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|e| DbSetupError::Migration(e.to_string()));
        diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK_KEY})"))
            .execute(&mut conn)?;
        applied
    })
    .await
    .map_err(|e| DbSetupError::Migration(format!("migration task failed: {e}")))?
}
