//! A client of a served instance's HTTP API, for the steps tests and benchmarks
//! take through it: an account, an environment made and waited for, then deleted.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde_json::{Value, json};

use crate::poll;

/// How long an environment may take to go, once deleted.
const DELETE: Duration = Duration::from_secs(60);

pub struct Api {
    /// `http://127.0.0.1:PORT`
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Self {
        Self {
            base: base.to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .expect("an HTTP client"),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Signs up; the access token.
    pub async fn register(&self, username: &str, password: &str) -> anyhow::Result<String> {
        let email = format!("{username}@example.com");
        let body = json!({"username": username, "email": email, "password": password});
        self.token("/api/v1/auth/register", &body).await
    }

    /// Signs in; the access token.
    pub async fn login(&self, username: &str, password: &str) -> anyhow::Result<String> {
        let body = json!({"username_or_email": username, "password": password});
        self.token("/api/v1/auth/login", &body).await
    }

    async fn token(&self, path: &str, body: &Value) -> anyhow::Result<String> {
        self.post_for(path, None, body, "access_token").await
    }

    /// POSTs `body` to `path` (with `token`, if any); the answer's string `field`.
    async fn post_for(
        &self,
        path: &str,
        token: Option<&str>,
        body: &Value,
        field: &str,
    ) -> anyhow::Result<String> {
        let mut request = self.http.post(self.url(path)).json(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let answer: Value = request.send().await?.json().await?;
        Ok(answer[field]
            .as_str()
            .with_context(|| format!("{path} gave no {field}: {answer}"))?
            .to_owned())
    }

    /// GETs `path` with `token`; the answer.
    async fn get_json(&self, token: &str, path: &str) -> anyhow::Result<Value> {
        let request = self.http.get(self.url(path)).bearer_auth(token);
        Ok(request.send().await?.json().await?)
    }

    /// Signs `username` up and creates their environment `name` from `template`,
    /// without waiting for it: the token and the environment's id.
    pub async fn new_user_with_environment(
        &self,
        (username, password): (&str, &str),
        name: &str,
        template: &str,
    ) -> anyhow::Result<(String, String)> {
        let token = self.register(username, password).await?;
        let id = self.create_environment(&token, name, template).await?;
        Ok((token, id))
    }

    /// Creates an environment from `template`, without waiting for it; its id.
    pub async fn create_environment(
        &self,
        token: &str,
        name: &str,
        template: &str,
    ) -> anyhow::Result<String> {
        let body = json!({"name": name, "template_id": template});
        self.post_for("/api/v1/environments", Some(token), &body, "id")
            .await
    }

    pub async fn environment(&self, token: &str, id: &str) -> anyhow::Result<Value> {
        self.get_json(token, &format!("/api/v1/environments/{id}"))
            .await
    }

    /// Waits (at most `within`) until the environment is no longer being created;
    /// how it is then, which must be running.
    pub async fn running(&self, token: &str, id: &str, within: Duration) -> anyhow::Result<Value> {
        let env = poll(within, async || {
            let env = self.environment(token, id).await?;
            if env["status"] == "creating" {
                return Err(anyhow!("still creating: {env}"));
            }
            Ok(env)
        })
        .await?;
        if env["status"] != "running" {
            bail!("the environment did not start: {env}");
        }
        Ok(env)
    }

    /// The environment's provisioning log, up to 1,000 lines.
    pub async fn logs(&self, token: &str, id: &str) -> anyhow::Result<Value> {
        let path = format!("/api/v1/environments/{id}/logs?lines=1000");
        self.get_json(token, &path).await
    }

    /// Deletes the environment (its machine: processes, files, user) and waits
    /// until it is gone.
    pub async fn delete_environment(&self, token: &str, id: &str) -> anyhow::Result<()> {
        let url = self.url(&format!("/api/v1/environments/{id}"));
        self.http
            .delete(&url)
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?;
        poll(DELETE, async || {
            match self.http.get(&url).bearer_auth(token).send().await {
                Ok(r) if r.status() == 404 => Ok(()),
                Ok(r) => Err(anyhow!("still there: {}", r.status())),
                Err(e) => Err(e.into()),
            }
        })
        .await
        .context("deleting the environment")
    }
}
