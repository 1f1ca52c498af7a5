//! The test database: one PostgreSQL cluster per process (embedded, or
//! `TEST_DATABASE_URL`'s), a template database migrated once per set of
//! migrations, and a database of its own cloned from it for each test.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use devpocket::config::Secret;
use devpocket::db::embedded::{self, Durability, EmbeddedPostgres};
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};

/// The cluster every test in this process uses, and the template to clone.
pub struct Cluster {
    /// A URL of the cluster's maintenance database, for CREATE/DROP DATABASE.
    admin_url: String,
    template: String,
    _embedded: Option<EmbeddedPostgres>,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();

/// Replaces the database name of a PostgreSQL URL.
pub fn with_database(url: &str, name: &str) -> String {
    let mut url = url::Url::parse(url).expect("database url");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// Runs async set-up or clean-up on a runtime of its own: from a `Drop`, or from
/// whichever test sets the cluster up first (its runtime may be gone later).
pub fn on_own_runtime<T: Send + 'static>(
    f: impl std::future::Future<Output = T> + Send + 'static,
) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(f)
    })
    .join()
    .expect("setup thread")
}

fn migrations_digest() -> String {
    use sha2::Digest;
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../migrations"))
            .expect("migrations dir")
            .flatten()
            .map(|e| e.path().join("up.sql"))
            .collect();
    files.sort();
    let mut hasher = sha2::Sha256::new();
    for f in files {
        hasher.update(std::fs::read(&f).unwrap_or_default());
    }
    hex::encode(hasher.finalize())[..16].to_owned()
}

impl Cluster {
    /// The cluster of this process, set up by whichever test asks first:
    /// `TEST_DATABASE_URL`'s if set, else an embedded one kept in `root`.
    pub fn shared(root: &Path) -> &'static Self {
        CLUSTER.get_or_init(|| {
            let (admin_url, embedded) = match std::env::var("TEST_DATABASE_URL") {
                Ok(url) if !url.is_empty() => (url, None),
                _ => {
                    let mut pg = EmbeddedPostgres::prepare(root, None, Durability::Ephemeral)
                        .expect("embedded PostgreSQL for tests");
                    pg.ensure_running().expect("start embedded PostgreSQL");
                    (pg.url(embedded::DATABASE).expose().clone(), Some(pg))
                }
            };
            let template = format!("devpocket_tpl_{}", migrations_digest());
            let (admin, tpl) = (admin_url.clone(), template.clone());
            on_own_runtime(async move { ensure_template(&admin, &tpl).await });
            Self {
                admin_url,
                template,
                _embedded: embedded,
            }
        })
    }

    /// A database of its own for one test, cloned from the migrated template and
    /// dropped with it.
    pub async fn database(&self) -> TestDatabase {
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = AsyncPgConnection::establish(&self.admin_url)
            .await
            .expect("admin connection");
        run(
            &mut conn,
            format!("CREATE DATABASE {name} TEMPLATE {}", self.template),
            "create test database",
        )
        .await;
        let url = with_database(&self.admin_url, &name);
        TestDatabase {
            name,
            url,
            admin_url: self.admin_url.clone(),
        }
    }
}

/// Runs one statement on the admin connection; `what` names it if it fails.
async fn run(conn: &mut AsyncPgConnection, sql: impl AsRef<str>, what: &str) {
    diesel::sql_query(sql.as_ref())
        .execute(conn)
        .await
        .expect(what);
}

async fn ensure_template(admin_url: &str, template: &str) {
    let mut conn = AsyncPgConnection::establish(admin_url)
        .await
        .expect("admin connection");
    // Several test processes may race to build the template.
    run(&mut conn, "SELECT pg_advisory_lock(4242)", "lock").await;
    let exists: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "EXISTS (SELECT 1 FROM pg_database WHERE datname = '{template}')"
    )))
    .get_result(&mut conn)
    .await
    .expect("check template");
    if !exists {
        let building = format!("{template}_building");
        run(
            &mut conn,
            format!("DROP DATABASE IF EXISTS {building}"),
            "drop",
        )
        .await;
        run(&mut conn, format!("CREATE DATABASE {building}"), "create").await;
        let url = Secret::new(with_database(admin_url, &building));
        devpocket::db::run_migrations(&url)
            .await
            .expect("migrate template");
        run(
            &mut conn,
            format!("ALTER DATABASE {building} RENAME TO {template}"),
            "rename template",
        )
        .await;
    }
    run(&mut conn, "SELECT pg_advisory_unlock(4242)", "unlock").await;
}

/// A database of its own for one test, dropped when the test ends.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    admin_url: String,
}

impl TestDatabase {
    pub async fn connect(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("test database connection")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = self.admin_url.clone();
        let name = self.name.clone();
        on_own_runtime(async move {
            if let Ok(mut conn) = AsyncPgConnection::establish(&admin).await {
                let _ = diesel::sql_query(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut conn)
                    .await;
            }
        });
    }
}
