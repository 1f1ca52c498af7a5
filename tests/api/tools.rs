//! A template's tools are there when its environment says ready: on the local provider
//! the server, as root, installs the template's Debian packages on the host first, and
//! an environment whose packages cannot be had fails, naming them.

use serde_json::{Value, json};

use crate::helpers::{TestApp, ws_until};
use crate::helpers::{run, ssh};

fn root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// Each built-in template, packages that bring its tools, and commands that must
/// answer in its environments, with what their output starts with.
type Tools = (
    &'static str,
    &'static [&'static str],
    &'static [(&'static str, &'static str)],
);
const TOOLS: [Tools; 5] = [
    (
        "golang",
        &["golang-go"],
        &[
            ("go version", "go version go1."),
            ("cd ~/workspace/hello && go run .", "Hello from DevPocket!"),
        ],
    ),
    (
        "rust",
        &["rustc", "cargo"],
        &[
            ("rustc --version", "rustc 1."),
            ("cargo --version", "cargo 1."),
            (
                "cd ~/workspace/hello && cargo run -q",
                "Hello from DevPocket!",
            ),
        ],
    ),
    (
        "nodejs",
        &["nodejs"],
        &[
            ("node --version", "v"),
            ("npm --version", ""),
            ("cd ~/workspace && node index.js", "Hello from DevPocket!"),
        ],
    ),
    (
        "python",
        &["python3", "python3-pip", "python3-venv"],
        &[
            ("python3 --version", "Python 3."),
            ("pip3 --version", "pip "),
            (
                "cd ~/workspace && python3 -m venv .venv && .venv/bin/python main.py",
                "Hello from DevPocket!",
            ),
        ],
    ),
    (
        "ubuntu",
        &["git", "htop", "nano"],
        &[
            ("git --version", "git version "),
            ("htop --version", "htop "),
            ("nano --version", " GNU nano"),
        ],
    ),
];

#[actix_web::test]
async fn every_builtin_template_is_ready_with_its_tools() {
    if !root() {
        eprintln!("skipped: only root installs the templates' packages");
        return;
    }
    let app = TestApp::spawn().await;
    let admin = app.admin_token("tools_admin").await;
    // All at once: the ones that need packages take turns at apt.
    let ids = futures_util::future::join_all(
        TOOLS
            .iter()
            .map(|(template, _, _)| app.ready_environment(&admin, template, template)),
    )
    .await;
    for ((template, packages, commands), id) in TOOLS.iter().zip(&ids) {
        let shell = ssh(&app, id).await;
        for (command, start) in *commands {
            // A login shell, as a terminal's: the template's variables apply.
            let (status, out) = run(&shell, &format!("bash -lc '{command}'")).await;
            assert_eq!(status, 0, "{template}: `{command}` said {out}");
            assert!(out.starts_with(start), "{template}: `{command}` said {out}");
        }
        shell.close().await;
        // The packages that bring them are on the host, installed by apt.
        for package in *packages {
            let out = std::process::Command::new("dpkg-query")
                .args(["-W", "-f", "${db:Status-Abbrev}", package])
                .output()
                .unwrap();
            let state = String::from_utf8_lossy(&out.stdout);
            assert_eq!(state.trim(), "ii", "{template}: {package} is not installed");
        }
    }
}

#[actix_web::test]
async fn a_package_debian_does_not_have_fails_the_environment_naming_it() {
    let app = TestApp::spawn().await;
    let admin = app.admin_token("phantom_admin").await;
    let template = app
        .authed_client(&admin)
        .post(
            "/api/v1/templates",
            &json!({
                "name": "phantom", "display_name": "Phantom", "description": "needs what is not there",
                "category": "operating_system", "tags": [], "docker_image": "debian:12",
                "packages": ["git", "devpocket-no-such-package"],
                "bootstrap": "#!/bin/sh\necho 'the bootstrap ran'\n"
            }),
        )
        .await;
    assert_eq!(template.status(), 201, "{:?}", template.text().await);
    let env: Value = app
        .authed_client(&admin)
        .post(
            "/api/v1/environments",
            &json!({"name": "phantom", "template_id": "phantom"}),
        )
        .await
        .json()
        .await
        .unwrap();
    let id = env["id"].as_str().unwrap();
    let mut ws = app.ws(&format!("/api/v1/ws/logs/{id}?token={admin}")).await;
    let frames = ws_until(&mut ws, "installation_error").await;
    let lines: Vec<&str> = frames.iter().filter_map(|f| f["data"].as_str()).collect();
    let env = app
        .wait_for_env(&admin, id, |e| e["status"] == "error")
        .await;
    let message = env["status_message"].as_str().unwrap();
    if root() {
        // apt was asked, its answer reached the log as it came, and the log says
        // which package could not be installed.
        assert!(
            lines.iter().any(|l| l.contains("apt-get install")),
            "{lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("E: ") && l.contains("devpocket-no-such-package")),
            "apt's own error is in the log: {lines:#?}"
        );
        assert!(
            lines
                .iter()
                .any(|l| l.starts_with("==> devpocket: could not install")
                    && l.contains("devpocket-no-such-package")),
            "{lines:#?}"
        );
        // The status says it too, in the machine's words.
        assert!(
            message.contains("could not install") && message.contains("devpocket-no-such-package"),
            "{message}"
        );
    } else {
        // The owner is told which package; what to run is in the operator's log.
        assert!(
            message.contains("devpocket-no-such-package") && message.contains("operator"),
            "{message}"
        );
    }
    // The bootstrap never ran without its packages.
    assert!(!lines.contains(&"the bootstrap ran"), "{lines:#?}");
}
