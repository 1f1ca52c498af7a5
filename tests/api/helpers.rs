//! The shared test harness: one embedded PostgreSQL cluster per test run, a
//! migrated template database, and `TestApp`, a running server on its own database.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use actix_web::dev::ServerHandle;
use devpocket::config::{Secret, Settings, Source};
use devpocket::db::embedded::{self, Durability, EmbeddedPostgres};
use devpocket::startup::Application;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use serde_json::{Value, json};

pub const SECRET_KEY: &str = "test-secret-key-test-secret-key-0123456789";
pub const PASSWORD: &str = "Correct-horse-9";

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
fn on_own_runtime<T: Send + 'static>(
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

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: TestDatabase,
    pub data_dir: PathBuf,
    handle: ServerHandle,
}

/// The settings a test app runs with; `overrides` win.
pub fn test_settings(
    database_url: &str,
    data_dir: &std::path::Path,
    overrides: &[(&str, &str)],
) -> Settings {
    let mut vars: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), database_url.into()),
        ("DEVPOCKET_LISTEN".into(), "127.0.0.1:0".into()),
        ("DEVPOCKET_WORKERS".into(), "1".into()),
        ("DEVPOCKET_DB_POOL_SIZE".into(), "4".into()),
        ("DEVPOCKET_DB_TIMEOUT".into(), "2s".into()),
        ("DEVPOCKET_DATA_DIR".into(), data_dir.display().to_string()),
        ("SECRET_KEY".into(), SECRET_KEY.into()),
    ];
    for (k, v) in overrides {
        vars.retain(|(key, _)| key != k);
        vars.push(((*k).into(), (*v).into()));
    }
    Settings::load(&Source::from_map(vars)).expect("test settings")
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(&[]).await
    }

    /// Starts the application with extra settings.
    pub async fn spawn_with(overrides: &[(&str, &str)]) -> Self {
        let db = TestDatabase::create().await;
        Self::spawn_on(db, None, overrides).await
    }

    /// Starts the application on `db`, optionally reaching it through another URL
    /// (a fault-injecting proxy).
    pub async fn spawn_on(db: TestDatabase, url: Option<&str>, overrides: &[(&str, &str)]) -> Self {
        let data_dir = test_root().join("apps").join(&db.name);
        Self::spawn_at(db, url, data_dir, overrides).await
    }

    /// Starts the application with its data directory at `data_dir`.
    pub async fn spawn_at(
        db: TestDatabase,
        url: Option<&str>,
        data_dir: PathBuf,
        overrides: &[(&str, &str)],
    ) -> Self {
        std::fs::create_dir_all(&data_dir).expect("data dir");
        if std::env::var_os("TEST_LOG").is_some() {
            devpocket::telemetry::init(devpocket::config::LogFormat::Pretty);
        }
        let settings = test_settings(url.unwrap_or(&db.url), &data_dir, overrides);
        let app = Application::build(settings)
            .await
            .expect("build application");
        let address = format!("http://127.0.0.1:{}", app.port());
        let handle = app.handle();
        actix_web::rt::spawn(app.run_until_stopped());
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(std::time::Duration::from_secs(60))
            .build()
            .expect("client");
        Self {
            address,
            client,
            db,
            data_dir,
            handle,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.address)
    }

    pub async fn post_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(self.url(path))
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(self.url(path))
            .send()
            .await
            .expect("request")
    }

    pub async fn register(&self, username: &str) -> reqwest::Response {
        self.post_json(
            "/api/v1/auth/register",
            &json!({
                "username": username,
                "email": format!("{username}@example.com"),
                "password": PASSWORD,
                "full_name": format!("{username} Tester"),
            }),
        )
        .await
    }

    /// Registers `username` and returns the session body (tokens + user).
    pub async fn signed_up(&self, username: &str) -> Value {
        let response = self.register(username).await;
        assert_eq!(response.status(), 201, "register {username}");
        response.json().await.expect("json")
    }

    pub async fn login(&self, login: &str, password: &str) -> reqwest::Response {
        self.post_json(
            "/api/v1/auth/login",
            &json!({ "username_or_email": login, "password": password }),
        )
        .await
    }

    pub fn authed_client(&self, token: &str) -> AuthedClient<'_> {
        AuthedClient {
            app: self,
            token: token.to_owned(),
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        // Stops accepting at once; the database is dropped after (WITH FORCE).
        drop(self.handle.stop(false));
        shut_down_machines(&self.data_dir);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Removes what local machines under `data_dir` left (sshd, bootstrap, every
/// process, files and, as root, the user of each environment), so tests leave
/// nothing behind: the provider's own sweep, with no environment kept.
pub fn shut_down_machines(data_dir: &std::path::Path) {
    let environments = data_dir.join("environments");
    if !environments.is_dir() {
        return;
    }
    let group = nix::unistd::Uid::effective()
        .is_root()
        .then(|| "devpocket-env".to_owned());
    on_own_runtime(async move {
        match devpocket_actors::provider::local::LocalProvider::new(environments, group) {
            Ok(provider) => {
                if let Err(e) = provider.sweep(std::collections::HashSet::new()).await {
                    eprintln!("could not remove a test's machines: {e}");
                }
            }
            Err(e) => eprintln!("could not remove a test's machines: {e}"),
        }
    });
}

/// Requests carrying a bearer token.
pub struct AuthedClient<'a> {
    app: &'a TestApp,
    pub token: String,
}

impl AuthedClient<'_> {
    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.app
            .client
            .get(self.app.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.app
            .client
            .post(self.app.url(path))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("request")
    }
}

/// Asserts the error envelope and returns its body.
pub async fn assert_error(response: reqwest::Response, status: u16, code: &str) -> Value {
    assert_eq!(response.status().as_u16(), status, "status");
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json"),
        "content-type"
    );
    let body: Value = response.json().await.expect("json body");
    assert!(
        body["detail"].is_string(),
        "detail must be one string: {body}"
    );
    assert_eq!(body["code"], code, "{body}");
    assert!(body["context"].is_object(), "{body}");
    body
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

impl TestApp {
    /// Registers `username`, makes it an administrator, and returns its access token.
    pub async fn admin_token(&self, username: &str) -> String {
        let body = self.signed_up(username).await;
        let mut conn = self.db.connect().await;
        diesel::sql_query(format!(
            "UPDATE users SET subscription_plan = 'admin' WHERE username = '{username}'"
        ))
        .execute(&mut conn)
        .await
        .expect("promote to admin");
        body["access_token"].as_str().expect("token").to_owned()
    }

    /// Registers `username` and returns its access token.
    pub async fn user_token(&self, username: &str) -> String {
        self.signed_up(username).await["access_token"]
            .as_str()
            .expect("token")
            .to_owned()
    }
}

impl AuthedClient<'_> {
    pub async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        self.app
            .client
            .put(self.app.url(path))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.app
            .client
            .delete(self.app.url(path))
            .bearer_auth(&self.token)
            .send()
            .await
            .expect("request")
    }
}

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What a WebSocket said next: a JSON text frame, or how it closed.
#[derive(Debug)]
pub enum WsEvent {
    Json(Value),
    Closed(Option<(u16, String)>),
}

impl TestApp {
    pub async fn ws(&self, path: &str) -> Ws {
        let url = format!("{}{path}", self.address.replacen("http://", "ws://", 1));
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        ws
    }

    /// A WebSocket whose socket has a small receive buffer, so a test can make it
    /// fall behind without pushing megabytes through the kernel first.
    pub async fn ws_small_buffer(&self, path: &str) -> Ws {
        let addr: std::net::SocketAddr = self
            .address
            .trim_start_matches("http://")
            .parse()
            .expect("a socket address");
        let socket = tokio::net::TcpSocket::new_v4().expect("socket");
        socket.set_recv_buffer_size(4096).expect("SO_RCVBUF");
        let stream = socket.connect(addr).await.expect("connect");
        let url = format!("{}{path}", self.address.replacen("http://", "ws://", 1));
        let (ws, _) =
            tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
                .await
                .expect("websocket connect");
        ws
    }

    /// Polls an environment until `pred` holds (bounded: 120 s).
    pub async fn wait_for_env(
        &self,
        token: &str,
        id: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        loop {
            let env: Value = self
                .authed_client(token)
                .get(&format!("/api/v1/environments/{id}"))
                .await
                .json()
                .await
                .expect("json");
            if pred(&env) {
                return env;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "environment never reached the state: {env}"
            );
            actix_web::rt::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }
}

/// The next frame (bounded: 120 s), skipping pings.
pub async fn ws_next(ws: &mut Ws) -> WsEvent {
    use futures_util::StreamExt;
    use tokio_tungstenite::tungstenite::Message;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let msg = tokio::time::timeout_at(deadline, ws.next())
            .await
            .expect("websocket frame in time");
        match msg {
            Some(Ok(Message::Text(text))) => {
                return WsEvent::Json(serde_json::from_str(&text).expect("json frame"));
            }
            Some(Ok(Message::Close(frame))) => {
                return WsEvent::Closed(frame.map(|f| (u16::from(f.code), f.reason.to_string())));
            }
            Some(Ok(_)) => continue,
            Some(Err(_)) | None => return WsEvent::Closed(None),
        }
    }
}

/// Reads frames until one of `type`, returning every frame read (including it).
pub async fn ws_until(ws: &mut Ws, kind: &str) -> Vec<Value> {
    let mut frames = Vec::new();
    loop {
        match ws_next(ws).await {
            WsEvent::Json(v) => {
                let done = v["type"] == kind;
                frames.push(v);
                if done {
                    return frames;
                }
            }
            WsEvent::Closed(c) => panic!("socket closed before {kind}: {c:?}; frames: {frames:?}"),
        }
    }
}

/// The `devpocket` binary with only what a test sets: no DATABASE_URL or `.env`
/// leaking in from the caller.
pub fn devpocket() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_devpocket"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DEVPOCKET_LOG_FORMAT", "json")
        .env("SECRET_KEY", SECRET_KEY)
        .current_dir(env!("CARGO_TARGET_TMPDIR"));
    cmd
}

/// Runs `devpocket serve` from `cmd` (on a free port) and returns the process with
/// its address, read from its log.
pub fn serve(mut cmd: std::process::Command) -> (std::process::Child, String) {
    use std::io::{BufRead, BufReader};
    let mut child = cmd
        .env("DEVPOCKET_LISTEN", "127.0.0.1:0")
        .env("DEVPOCKET_WORKERS", "1")
        .arg("serve")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn devpocket serve");
    let stderr = child.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let Ok(json) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if json["fields"]["message"] == "DevPocket is listening" {
                let address = json["fields"]["address"].as_str().unwrap_or_default();
                let _ = tx.send(address.to_owned());
            }
        }
    });
    let address = rx
        .recv_timeout(std::time::Duration::from_secs(120))
        .expect("server did not start");
    (child, address)
}

impl TestApp {
    /// Creates an environment from `template` and waits until it runs.
    pub async fn ready_environment(&self, token: &str, name: &str, template: &str) -> String {
        let env: Value = self
            .authed_client(token)
            .post(
                "/api/v1/environments",
                &json!({"name": name, "template_id": template}),
            )
            .await
            .json()
            .await
            .expect("json");
        let id = env["id"]
            .as_str()
            .unwrap_or_else(|| panic!("no id: {env}"))
            .to_owned();
        let mut ws = self
            .ws(&format!("/api/v1/ws/logs/{id}?token={token}"))
            .await;
        ws_until(&mut ws, "installation_complete").await;
        self.wait_for_env(token, &id, |e| e["status"] == "running")
            .await;
        id
    }
}
