//! What a local environment's shell can reach: its own home, not another
//! environment's files, not the server's data.

use crate::helpers::{TestApp, machine_access, run, ssh};
use devpocket_actors::ssh::SshSession;
use diesel_async::RunQueryDsl;

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
