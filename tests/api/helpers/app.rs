//! `TestApp`, the application running in the test on port 0 with a database of
//! its own, and the clients that speak to it over HTTP.

use std::path::PathBuf;

use actix_web::dev::ServerHandle;
use devpocket::config::{Settings, Source};
use devpocket::startup::Application;
use diesel_async::RunQueryDsl;
use reqwest::Method;
use serde_json::{Value, json};

use super::{TestDatabase, eventually, shut_down_machines, test_database, test_root, ws_until};

pub const SECRET_KEY: &str = "test-secret-key-test-secret-key-0123456789";
pub const PASSWORD: &str = "Correct-horse-9";

pub struct TestApp {
    pub address: String,
    pub client: reqwest::Client,
    pub db: TestDatabase,
    pub data_dir: PathBuf,
    handle: ServerHandle,
    actors: devpocket_actors::ActorSystem,
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
        let db = test_database().await;
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
        let actors = app.actors();
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
            actors,
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
        // The server's future is not awaited here: its actors are stopped too (not
        // left running on their own thread for the rest of the test run).
        self.actors.stop();
        shut_down_machines(&self.data_dir);
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Requests carrying a bearer token.
pub struct AuthedClient<'a> {
    app: &'a TestApp,
    pub token: String,
}

impl AuthedClient<'_> {
    /// Sends `method path` with the token (and `body` as JSON, if any).
    async fn send(&self, method: Method, path: &str, body: Option<&Value>) -> reqwest::Response {
        let mut request = self
            .app
            .client
            .request(method, self.app.url(path))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(body);
        }
        request.send().await.expect("request")
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.send(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.send(Method::POST, path, Some(body)).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> reqwest::Response {
        self.send(Method::PUT, path, Some(body)).await
    }

    pub async fn delete(&self, path: &str) -> reqwest::Response {
        self.send(Method::DELETE, path, None).await
    }

    pub async fn delete_json(&self, path: &str, body: &Value) -> reqwest::Response {
        self.send(Method::DELETE, path, Some(body)).await
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

    /// Polls an environment until `pred` holds (bounded: 120 s).
    pub async fn wait_for_env(
        &self,
        token: &str,
        id: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let client = self.authed_client(token);
        let path = format!("/api/v1/environments/{id}");
        eventually(
            std::time::Duration::from_secs(120),
            "the environment to reach the state",
            async || {
                let env: Value = client.get(&path).await.json().await.expect("json");
                if pred(&env) { Ok(env) } else { Err(env) }
            },
        )
        .await
    }

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
        let id = env["id"].as_str().expect("id").to_owned();
        let mut ws = self
            .ws(&format!("/api/v1/ws/logs/{id}?token={token}"))
            .await;
        ws_until(&mut ws, "installation_complete").await;
        self.wait_for_env(token, &id, |e| e["status"] == "running")
            .await;
        id
    }
}
