//! A real browser for the tests: Debian's headless Chromium, driven through
//! chromedriver over the W3C WebDriver protocol (plain HTTP, with the tests' reqwest).
//! Each [`Browser`] is a session of its own (its own profile: its own storage),
//! as a second device would be.

use std::net::{Ipv4Addr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use super::{eventually, test_root};

/// The WebDriver name of an element reference.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// chromedriver, one per test.
pub struct Driver {
    url: String,
    child: Child,
    client: reqwest::Client,
}

impl Driver {
    pub async fn start() -> Self {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver (Debian: apt-get install chromium chromium-driver; scripts/test does)");
        let driver = Self {
            url: format!("http://127.0.0.1:{port}"),
            child,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("client"),
        };
        eventually(
            Duration::from_secs(30),
            "chromedriver to be ready",
            async || {
                let status: Value = driver
                    .client
                    .get(format!("{}/status", driver.url))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?
                    .json()
                    .await
                    .map_err(|e| e.to_string())?;
                if status["value"]["ready"] == true {
                    Ok(())
                } else {
                    Err(status.to_string())
                }
            },
        )
        .await;
        driver
    }

    /// A new browser (a fresh profile), `width`×`height`.
    pub async fn browser(&self, name: &str, width: u32, height: u32) -> Browser<'_> {
        let profile = test_root()
            .join("browsers")
            .join(format!("{name}-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&profile).expect("profile dir");
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": [
                    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    "--no-first-run", "--disable-extensions",
                    format!("--window-size={width},{height}"),
                    format!("--user-data-dir={}", profile.display()),
                ],
            },
        }}});
        let answer = self
            .call(reqwest::Method::POST, "/session", Some(&caps))
            .await;
        let id = answer["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {answer}"))
            .to_owned();
        Browser {
            driver: self,
            id,
            profile,
        }
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Value {
        let mut request = self.client.request(method, format!("{}{path}", self.url));
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.expect("webdriver request");
        let status = response.status();
        let value: Value = response.json().await.expect("webdriver json");
        assert!(status.is_success(), "webdriver {path}: {status} {value}");
        value["value"].clone()
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One browser session.
pub struct Browser<'a> {
    driver: &'a Driver,
    id: String,
    profile: PathBuf,
}

impl Browser<'_> {
    async fn call(&self, method: reqwest::Method, path: &str, body: Option<&Value>) -> Value {
        self.driver
            .call(method, &format!("/session/{}{path}", self.id), body)
            .await
    }

    pub async fn open(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(&json!({ "url": url })))
            .await;
    }

    /// Runs `script` (a function body; `return` gives the answer) in the page.
    pub async fn eval(&self, script: &str) -> Value {
        self.call(
            reqwest::Method::POST,
            "/execute/sync",
            Some(&json!({ "script": script, "args": [] })),
        )
        .await
    }

    /// Waits until `script` answers something truthy, and returns it.
    pub async fn until(&self, what: &str, script: &str) -> Value {
        eventually(Duration::from_secs(120), what, async || {
            let value = self.eval(script).await;
            let truthy = !matches!(&value, Value::Null | Value::Bool(false))
                && value != json!("")
                && value != json!(0);
            if truthy {
                Ok(value)
            } else {
                Err(format!("{value}"))
            }
        })
        .await
    }

    async fn element(&self, css: &str) -> String {
        let found = eventually(
            Duration::from_secs(30),
            &format!("an element {css}"),
            async || {
                let answer = self
                    .driver
                    .client
                    .post(format!("{}/session/{}/element", self.driver.url, self.id))
                    .json(&json!({ "using": "css selector", "value": css }))
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                let ok = answer.status().is_success();
                let value: Value = answer.json().await.map_err(|e| e.to_string())?;
                if ok {
                    Ok(value["value"][ELEMENT]
                        .as_str()
                        .unwrap_or_default()
                        .to_owned())
                } else {
                    Err(value.to_string())
                }
            },
        )
        .await;
        assert!(!found.is_empty(), "{css}");
        found
    }

    pub async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/click"),
            Some(&json!({})),
        )
        .await;
    }

    /// Types `text` into the element (keys as WebDriver names them: "\u{E007}" is Enter).
    pub async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.call(
            reqwest::Method::POST,
            &format!("/element/{element}/value"),
            Some(&json!({ "text": text })),
        )
        .await;
    }

    /// A PNG of the window.
    pub async fn screenshot(&self) -> Vec<u8> {
        use base64::Engine as _;
        let data = self.call(reqwest::Method::GET, "/screenshot", None).await;
        base64::engine::general_purpose::STANDARD
            .decode(data.as_str().unwrap_or_default())
            .expect("a PNG")
    }

    pub async fn close(self) {
        self.call(reqwest::Method::DELETE, "", None).await;
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}
