//! The web console (issue 18), served by the binary at `/` and driven here in a real
//! browser (headless Chromium): sign up, create an environment and watch its
//! provisioning reach 100 %, open its terminal and run a command, see the same
//! screen from a second browser, sign out.

use serde_json::{Value, json};

use crate::helpers::{Driver, TestApp, is_root, skipped, test_root};

#[actix_web::test]
async fn the_console_is_served_with_a_strict_content_security_policy() {
    let app = TestApp::spawn().await;
    let page = app.get("/").await;
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self';"), "{csp}");
    assert!(
        !csp.contains("unsafe-eval") && !csp.contains("script-src 'self' 'unsafe-inline'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains(r#"<script type="module" src="/console/app.js"></script>"#));
    assert!(!html.contains("<script>"), "no inline script");
    for (file, kind) in [
        ("app.js", "text/javascript"),
        ("xterm.mjs", "text/javascript"),
        ("addon-fit.mjs", "text/javascript"),
        ("xterm.css", "text/css"),
        ("style.css", "text/css"),
        ("xterm-LICENSE", "text/plain"),
    ] {
        let response = app.get(&format!("/console/{file}")).await;
        assert_eq!(response.status(), 200, "{file}");
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(content_type.starts_with(kind), "{file}: {content_type}");
    }
    let missing = app.get("/console/nothing.js").await;
    assert_eq!(missing.status(), 404);
    let missing: Value = missing.json().await.unwrap();
    assert_eq!(missing["code"], "not_found");
}

/// The xterm.js rows as the page shows them.
const SCREEN: &str = "return document.querySelector('.xterm-rows')?.innerText || ''";

#[actix_web::test]
async fn a_new_user_creates_an_environment_and_shares_its_terminal_from_two_browsers() {
    if !is_root() {
        return skipped();
    }
    let app = TestApp::spawn().await;
    let driver = Driver::start().await;
    let laptop = driver.browser("laptop", 1200, 800).await;
    laptop.open(&app.url("/")).await;

    // Sign up, with the API's own errors shown: first a weak password.
    laptop.click("#tab-register").await;
    laptop.type_into("input[name=username]", "webber").await;
    laptop
        .type_into("input[name=email]", "webber@example.com")
        .await;
    laptop.type_into("input[name=password]", "weak").await;
    laptop.click("#auth-submit").await;
    let shown = laptop
        .until(
            "the sign-up error",
            "return document.querySelector('#auth-error').textContent",
        )
        .await;
    assert!(shown.as_str().unwrap().contains("password"), "{shown}");
    laptop
        .eval("document.querySelector('input[name=password]').value = ''")
        .await;
    laptop
        .type_into("input[name=password]", "Correct-horse-9")
        .await;
    laptop.click("#auth-submit").await;
    laptop
        .until(
            "the environment list",
            "return location.hash === '#/environments' && document.querySelector('#environments')",
        )
        .await;

    // Create one from a template; its page shows the provisioning to 100 %.
    laptop.click("#new-environment").await;
    laptop
        .until(
            "the create form",
            "return document.querySelector('#create-form')",
        )
        .await;
    laptop
        .eval(
            "document.querySelector('input[name=name]').value = 'From the browser';
             document.querySelector('select[name=template_id]').value = 'ubuntu';",
        )
        .await;
    laptop.click("#create-submit").await;
    let id = laptop
        .until(
            "the environment's page",
            "return (location.hash.match(/^#\\/environments\\/([0-9a-f-]{36})$/) || [])[1]",
        )
        .await;
    let id = id.as_str().unwrap().to_owned();
    laptop
        .until(
            "the progress bar at 100 %",
            "return document.querySelector('#progress')?.value === 100",
        )
        .await;
    laptop
        .until(
            "the log to show the bootstrap",
            "return document.querySelector('#log').textContent.length > 0",
        )
        .await;
    laptop
        .until(
            "the environment to run",
            "return document.querySelector('.env')?.dataset.status === 'running'",
        )
        .await;

    // Its terminal: type a command, read its output from the page.
    laptop.click("#open-terminal").await;
    laptop
        .until(
            "the terminal to attach",
            "return document.querySelector('#terminal-state')?.textContent === 'connected'",
        )
        .await;
    laptop
        .type_into(".xterm-helper-textarea", "echo console-$((6*7))\u{E007}")
        .await;
    laptop
        .until(
            "the command's output",
            &format!("{SCREEN}.includes('console-42')"),
        )
        .await;

    // A second browser, phone-sized, signed in as the same person: the same screen.
    let phone = driver.browser("phone", 390, 844).await;
    phone.open(&app.url("/")).await;
    phone.type_into("input[name=login]", "webber").await;
    phone
        .type_into("input[name=password]", "Correct-horse-9")
        .await;
    phone.click("#auth-submit").await;
    phone
        .until("the list", "return location.hash === '#/environments'")
        .await;
    phone
        .eval(&format!("location.hash = '#/terminal/{id}/main'"))
        .await;
    phone
        .until(
            "the shared screen",
            &format!("{SCREEN}.includes('console-42')"),
        )
        .await;
    phone
        .until(
            "two clients",
            "return document.querySelector('#terminal-clients').textContent === '2 clients'",
        )
        .await;
    phone
        .type_into(".xterm-helper-textarea", "echo from-the-phone\u{E007}")
        .await;
    laptop
        .until(
            "the phone's command on the laptop",
            &format!("{SCREEN}.includes('from-the-phone')"),
        )
        .await;

    // No token in any URL the page has; no inline script.
    for browser in [&laptop, &phone] {
        let href = browser.eval("return location.href").await;
        let href = href.as_str().unwrap();
        assert!(!href.contains("token") && !href.contains("eyJ"), "{href}");
    }
    let artifact = test_root().join("console-terminal.png");
    std::fs::write(&artifact, laptop.screenshot().await).unwrap();
    eprintln!("the terminal page: {}", artifact.display());

    // Sign out: back to the sign-in form, nothing kept.
    laptop.click("#sign-out").await;
    laptop
        .until(
            "the sign-in form",
            "return location.hash === '#/signin' && document.querySelector('#auth-form')",
        )
        .await;
    let kept = laptop
        .eval("return sessionStorage.length + localStorage.length")
        .await;
    assert_eq!(kept, json!(0));
    laptop.close().await;
    phone.close().await;
}
