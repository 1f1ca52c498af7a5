//! The `devpocket` command: help on every command, settings validated before the
//! port opens, admin commands on the same database as the server (embedded or not,
//! with or without a server running), and the embedded cluster's lifecycle.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::helpers::{
    PASSWORD, Server, TestApp, create_user, devpocket, serve, succeeded, test_root,
};

/// `admin create-user` with the database setting `(key, value)`: what it printed.
fn create(database: (&str, &str), username: &str, plan: &str, password: &str) -> Output {
    create_user(
        devpocket().env(database.0, database.1),
        username,
        plan,
        password,
    )
    .unwrap()
}

/// The same, which must succeed.
fn created(database: (&str, &str), username: &str, plan: &str) -> Output {
    succeeded(create(database, username, plan, PASSWORD)).unwrap()
}

#[test]
fn every_command_has_help() {
    for args in [
        &["--help"][..],
        &["serve", "--help"],
        &["migrate", "--help"],
        &["admin", "--help"],
        &["admin", "create-user", "--help"],
        &["db", "--help"],
        &["db", "status", "--help"],
        &["db", "stop", "--help"],
    ] {
        let out = devpocket().args(args).output().unwrap();
        assert!(out.status.success(), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Usage"),
            "{args:?}"
        );
    }
    // The password option does not exist: it is never taken from argv.
    let help = devpocket()
        .args(["admin", "create-user", "--help"])
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&help.stdout).contains("--password"));
}

#[test]
fn bad_settings_fail_before_listening_and_name_the_key() {
    let out = devpocket()
        .env("DEVPOCKET_LISTEN", "nowhere")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("DEVPOCKET_LISTEN"));

    let out = devpocket()
        .env_remove("SECRET_KEY")
        .env("DEVPOCKET_ENV", "production")
        .arg("serve")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("SECRET_KEY"));
}

#[actix_web::test]
async fn create_user_and_migrate_use_the_configured_database() {
    let app = TestApp::spawn().await;
    let url = app.db.url.clone();
    let out = created(("DATABASE_URL", &url), "root_admin", "admin");
    assert!(String::from_utf8_lossy(&out.stdout).contains("plan admin"));

    let login: Value = app
        .login("root_admin", PASSWORD)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(login["user"]["subscription_plan"], "admin");

    // Bad input is refused before the database is touched, with the reason.
    let weak = create(("DATABASE_URL", &url), "weakling", "free", "weak");
    assert!(!weak.status.success());
    assert!(String::from_utf8_lossy(&weak.stderr).contains("password"));
    let duplicate = create(("DATABASE_URL", &url), "root_admin", "free", PASSWORD);
    assert!(String::from_utf8_lossy(&duplicate.stderr).contains("already taken"));

    let migrate = devpocket()
        .env("DATABASE_URL", &url)
        .arg("migrate")
        .output()
        .unwrap();
    assert!(migrate.status.success());
    assert!(String::from_utf8_lossy(&migrate.stdout).contains("up to date"));
}

/// Starts `devpocket serve` on the embedded database in `data_dir`.
fn start_server(data_dir: &Path) -> Server {
    let mut cmd = devpocket();
    cmd.env("DEVPOCKET_DATA_DIR", data_dir);
    serve(cmd)
}

fn status(data_dir: &Path) -> String {
    let out = devpocket()
        .env("DEVPOCKET_DATA_DIR", data_dir)
        .args(["db", "status"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[actix_web::test]
async fn embedded_database_is_shared_by_server_and_admin_commands() {
    let data_dir = test_root().join(format!("embedded-{}", uuid::Uuid::new_v4().simple()));
    let embedded = ("DEVPOCKET_DATA_DIR", data_dir.to_str().unwrap());
    // No server yet: the command creates the cluster, uses it and stops it again.
    created(embedded, "first_admin", "admin");
    assert!(status(&data_dir).contains("stopped"));
    let password_file = data_dir.join("postgres.password");
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&password_file).unwrap().permissions(),
    );
    assert_eq!(mode & 0o077, 0, "credentials readable by others");

    // The server reuses the cluster and sees that user.
    let server = start_server(&data_dir);
    let address = &server.address;
    let client = reqwest::Client::new();
    let login = |user: &'static str| {
        client
            .post(format!("{address}/api/v1/auth/login"))
            .json(&serde_json::json!({"username_or_email": user, "password": PASSWORD}))
            .send()
    };
    assert_eq!(login("first_admin").await.unwrap().status(), 200);

    // While it runs, an admin command uses the same cluster and leaves it running.
    created(embedded, "second_user", "pro");
    assert_eq!(login("second_user").await.unwrap().status(), 200);
    assert!(status(&data_dir).contains("running"));

    // SIGTERM stops the server and the cluster it started.
    let exit = server.stop().unwrap();
    assert!(exit.success());
    assert!(status(&data_dir).contains("stopped"));
    let _ = std::fs::remove_dir_all(&data_dir);
}
