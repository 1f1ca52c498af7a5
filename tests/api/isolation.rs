//! What a local environment's shell can reach: its own home, not another
//! environment's files, not the server's data.

use crate::helpers::{SECRET_KEY, TestApp};
use devpocket::crypto::SecretBox;
use devpocket_actors::model::MachineAccess;
use devpocket_actors::ssh::SshSession;
use diesel_async::RunQueryDsl;
use std::time::Duration;

#[derive(diesel::QueryableByName)]
struct Access {
    #[diesel(sql_type = diesel::sql_types::Text)]
    ip_address: String,
    #[diesel(sql_type = diesel::sql_types::Integer)]
    ssh_port: i32,
    #[diesel(sql_type = diesel::sql_types::Text)]
    ssh_user: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    host_public_key: String,
    #[diesel(sql_type = diesel::sql_types::Bytea)]
    user_private_key: Vec<u8>,
}

/// How the server reaches an environment: its stored address and decrypted key.
pub(crate) async fn machine_access(app: &TestApp, id: &str) -> (MachineAccess, String) {
    let mut conn = app.db.connect().await;
    let row: Access = diesel::sql_query(
        "SELECT ip_address, ssh_port, ssh_user, host_public_key, user_private_key FROM environments WHERE id = $1",
    )
    .bind::<diesel::sql_types::Uuid, _>(uuid::Uuid::parse_str(id).unwrap())
    .get_result(&mut conn)
    .await
    .unwrap();
    // Stored encrypted: the raw column is not an OpenSSH key.
    assert!(!String::from_utf8_lossy(&row.user_private_key).contains("PRIVATE KEY"));
    let key = String::from_utf8(
        SecretBox::new(SECRET_KEY.as_bytes())
            .open(&row.user_private_key)
            .unwrap(),
    )
    .unwrap();
    let access = MachineAccess {
        host: row.ip_address,
        port: u16::try_from(row.ssh_port).unwrap(),
        user: row.ssh_user,
        host_public_key: row.host_public_key,
    };
    (access, key)
}

/// Opens SSH to an environment the way the server does.
pub(crate) async fn ssh(app: &TestApp, id: &str) -> SshSession {
    let (access, key) = machine_access(app, id).await;
    SshSession::connect(&access, &key).await.unwrap()
}

pub(crate) async fn run(session: &SshSession, command: &str) -> (u32, String) {
    let out = session
        .run(command, Duration::from_secs(20), 1 << 20)
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.unwrap_or(255), text)
}

#[actix_web::test]
async fn an_environment_cannot_read_its_neighbours_or_the_server() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("isolation_admin").await;
    let a = app.ready_environment(&admin, "first", "ubuntu").await;
    let b = app.ready_environment(&admin, "second", "ubuntu").await;
    let shell = ssh(&app, &a).await;

    let (_, home) = run(&shell, "cd && pwd && ls -a").await;
    assert!(home.contains(&format!("environments/{a}/home")), "{home}");
    assert!(
        home.contains(".tmux.conf") && home.contains("workspace"),
        "{home}"
    );

    let root = nix::unistd::Uid::effective().is_root();
    let data = app.data_dir.canonicalize().unwrap();
    std::fs::write(data.join("server-only"), "secret").unwrap();
    std::fs::set_permissions(
        data.join("server-only"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let neighbour = data
        .join("environments")
        .join(&b)
        .join("home")
        .join(".tmux.conf");
    let host_key = data
        .join("environments")
        .join(&b)
        .join("machine")
        .join("ssh_host_ed25519_key");
    let who = run(&shell, "id -un").await.1;
    if root {
        // Its own unprivileged user…
        assert!(who.trim().starts_with("dp-"), "{who}");
        // …that can read neither another environment's files nor the server's.
        for path in [&neighbour, &host_key] {
            let (status, out) = run(&shell, &format!("cat '{}'", path.display())).await;
            assert_ne!(status, 0, "{} was readable: {out}", path.display());
            assert!(out.contains("Permission denied"), "{out}");
        }
        let (status, out) = run(&shell, &format!("ls '{}'", data.display())).await;
        assert_ne!(status, 0, "the data directory was listable: {out}");
        let (status, out) = run(
            &shell,
            &format!("cat '{}'", data.join("server-only").display()),
        )
        .await;
        assert_ne!(status, 0, "a server file was readable: {out}");
        let (status, _) = run(
            &shell,
            &format!("ls '{}'", data.join("environments").display()),
        )
        .await;
        assert_ne!(status, 0, "the environments directory was listable");
    } else {
        // Unprivileged server: environments run as its user (see README).
        assert_eq!(
            who.trim(),
            nix::unistd::User::from_uid(nix::unistd::Uid::effective())
                .unwrap()
                .unwrap()
                .name
        );
    }
    shell.close().await;
}

#[actix_web::test]
async fn a_host_key_that_does_not_match_is_refused() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("pinning_admin").await;
    let a = app.ready_environment(&admin, "pinned", "ubuntu").await;
    let mut conn = app.db.connect().await;
    // Pretend the machine's host key is another one.
    let (_, other_public) = devpocket_actors::ssh::generate_keypair("impostor").unwrap();
    diesel::sql_query("UPDATE environments SET host_public_key = $1 WHERE id = $2")
        .bind::<diesel::sql_types::Text, _>(&other_public)
        .bind::<diesel::sql_types::Uuid, _>(uuid::Uuid::parse_str(&a).unwrap())
        .execute(&mut conn)
        .await
        .unwrap();
    let (access, key) = machine_access(&app, &a).await;
    let err = SshSession::connect(&access, &key)
        .await
        .err()
        .expect("must refuse");
    assert!(err.to_string().contains("host key does not match"), "{err}");
}
