//! The test database: one embedded PostgreSQL cluster per test run, a migrated
//! template database, a database of its own cloned from it for each test, and a
//! proxy that can cut a server off from it.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

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

/// Runs async setup work on its own runtime (cluster set-up happens once, from
/// whichever test gets there first).
pub(super) fn on_own_runtime<T: Send + 'static>(
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
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"))
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

/// Where tests keep their embedded cluster and per-test data directories.
pub fn test_root() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("devpocket-test")
}

pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(|| {
        let (admin_url, embedded) = match std::env::var("TEST_DATABASE_URL") {
            Ok(url) if !url.is_empty() => (url, None),
            _ => {
                let mut pg = EmbeddedPostgres::prepare(&test_root(), None, Durability::Ephemeral)
                    .expect("embedded PostgreSQL for tests");
                pg.ensure_running().expect("start embedded PostgreSQL");
                (pg.url(embedded::DATABASE).expose().clone(), Some(pg))
            }
        };
        let template = format!("devpocket_tpl_{}", migrations_digest());
        let (admin, tpl) = (admin_url.clone(), template.clone());
        on_own_runtime(async move { ensure_template(&admin, &tpl).await });
        Cluster {
            admin_url,
            template,
            _embedded: embedded,
        }
    })
}

async fn ensure_template(admin_url: &str, template: &str) {
    let mut conn = AsyncPgConnection::establish(admin_url)
        .await
        .expect("admin connection");
    // Several test processes may race to build the template.
    diesel::sql_query("SELECT pg_advisory_lock(4242)")
        .execute(&mut conn)
        .await
        .expect("lock");
    let exists: bool = diesel::select(diesel::dsl::sql::<diesel::sql_types::Bool>(&format!(
        "EXISTS (SELECT 1 FROM pg_database WHERE datname = '{template}')"
    )))
    .get_result(&mut conn)
    .await
    .expect("check template");
    if !exists {
        let building = format!("{template}_building");
        diesel::sql_query(format!("DROP DATABASE IF EXISTS {building}"))
            .execute(&mut conn)
            .await
            .expect("drop");
        diesel::sql_query(format!("CREATE DATABASE {building}"))
            .execute(&mut conn)
            .await
            .expect("create");
        let url = Secret::new(with_database(admin_url, &building));
        devpocket::db::run_migrations(&url)
            .await
            .expect("migrate template");
        diesel::sql_query(format!("ALTER DATABASE {building} RENAME TO {template}"))
            .execute(&mut conn)
            .await
            .expect("rename template");
    }
    diesel::sql_query("SELECT pg_advisory_unlock(4242)")
        .execute(&mut conn)
        .await
        .expect("unlock");
}

/// A database of its own for one test, dropped when the test ends.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let cluster = cluster();
        let name = format!("test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = AsyncPgConnection::establish(&cluster.admin_url)
            .await
            .expect("admin connection");
        diesel::sql_query(format!(
            "CREATE DATABASE {name} TEMPLATE {}",
            cluster.template
        ))
        .execute(&mut conn)
        .await
        .expect("create test database");
        let url = with_database(&cluster.admin_url, &name);
        Self { name, url }
    }

    pub async fn connect(&self) -> AsyncPgConnection {
        AsyncPgConnection::establish(&self.url)
            .await
            .expect("test database connection")
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin = cluster().admin_url.clone();
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

/// A TCP front for the test database that can be cut and restored, to see how the
/// server behaves while PostgreSQL is unreachable.
pub struct DbProxy {
    pub url: String,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::watch::Sender<u64>,
}

impl DbProxy {
    pub async fn start(db: &TestDatabase) -> Self {
        use std::sync::atomic::Ordering;
        let target = url::Url::parse(&db.url).expect("url");
        let query: std::collections::HashMap<_, _> = target.query_pairs().into_owned().collect();
        let socket = PathBuf::from(query.get("host").expect("socket dir")).join(format!(
            ".s.PGSQL.{}",
            query.get("port").map_or("5432", String::as_str)
        ));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let mut url = target.clone();
        url.set_query(None);
        url.set_host(Some("127.0.0.1")).expect("host");
        url.set_port(Some(port)).expect("port");
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let (cut, _) = tokio::sync::watch::channel(0u64);
        let (up2, cut2) = (up.clone(), cut.clone());
        actix_web::rt::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !std::sync::atomic::AtomicBool::load(&up2, Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                let socket = socket.clone();
                let mut cut_rx = cut2.subscribe();
                actix_web::rt::spawn(async move {
                    let Ok(mut server) = tokio::net::UnixStream::connect(&socket).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut_rx.changed() => {}
                    }
                });
            }
        });
        Self {
            url: url.to_string(),
            up,
            cut,
        }
    }

    /// Drops every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        self.cut.send_modify(|n| *n += 1);
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}
