//! The product as a new user first meets it: a checkout in root's home, and the
//! environment they make from it.

use std::os::unix::fs::PermissionsExt;

use crate::helpers::{TestApp, TestDatabase, test_root};
use crate::isolation::{run, ssh};

#[actix_web::test]
async fn a_data_directory_inside_a_private_directory_of_roots_works() {
    if !nix::unistd::Uid::effective().is_root() {
        eprintln!("skipped: only root has a private home to start from");
        return;
    }
    // As a clone in /root (0700) would have it.
    let private = test_root().join(format!("root-home-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let db = TestDatabase::create().await;
    let app = TestApp::spawn_at(db, None, private.join("devpocket").join("data"), &[]).await;
    let token = app.admin_token("newcomer").await;
    let id = app.ready_environment(&token, "first try", "ubuntu").await;

    // The bootstrap ran as the environment's user, and its sessions reach home.
    let shell = ssh(&app, &id).await;
    let (status, out) = run(
        &shell,
        "cat ~/.devpocket/provisioning.log && test -f ~/.tmux.conf && cd && pwd",
    )
    .await;
    assert_eq!(status, 0, "{out}");
    assert!(out.contains("bootstrap exited with status 0"), "{out}");
    shell.close().await;
    drop(app);
    let _ = std::fs::remove_dir_all(&private);
}
