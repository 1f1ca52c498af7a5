//! Droplet actions (power, reboot, resize, snapshot), the one way they are done:
//! posted while waiting out another pending one, then followed to their end.

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{Value, json};

use super::client::{ApiError, Repeat, RetryReason};
use super::droplets::gone;
use super::{DigitalOceanProvider, explain, failed};
use crate::provider::ProviderError;

/// A droplet action to post: its body (`type` and arguments) and what it does, in
/// the words of messages.
pub(super) struct Action<'a> {
    body: Value,
    doing: &'a str,
    repeat: Repeat,
}

impl<'a> Action<'a> {
    /// An action that does no harm when posted twice (power, reboot, resize).
    pub(super) fn new(body: Value, doing: &'a str) -> Self {
        Self {
            body,
            doing,
            repeat: Repeat::Safe,
        }
    }

    /// An action that is billed (a snapshot): never posted blindly again; after an
    /// unclear answer, the droplet's recent actions are looked through first.
    pub(super) fn billed(body: Value, doing: &'a str) -> Self {
        Self {
            body,
            doing,
            repeat: Repeat::Unsafe,
        }
    }

    fn kind(&self) -> &str {
        self.body["type"].as_str().unwrap_or_default()
    }
}

/// How a posted action ended.
#[derive(Debug)]
pub(super) enum Ended {
    Completed,
    /// DigitalOcean reports that the action (this one) errored.
    Errored(u64),
    /// It could not be followed to its end: no answer, or not within the limit.
    Unknown(ProviderError),
}

impl Ended {
    /// Completed, or else the error; `errored` says what failed, given the action.
    pub(super) fn completed(
        self,
        errored: impl FnOnce(u64) -> ProviderError,
    ) -> Result<(), ProviderError> {
        match self {
            Self::Completed => Ok(()),
            Self::Errored(action) => Err(errored(action)),
            Self::Unknown(e) => Err(e),
        }
    }
}

impl DigitalOceanProvider {
    /// Posts `action` on `droplet` and follows it for at most `limit`. An error is
    /// one in posting it; how it ended is the answer.
    pub(super) async fn perform(
        &self,
        droplet: u64,
        action: &Action<'_>,
        limit: Duration,
    ) -> Result<Ended, ProviderError> {
        let id = self.post_action(droplet, action).await?;
        Ok(match self.follow(id, action.doing, limit).await {
            Ok(true) => Ended::Completed,
            Ok(false) => Ended::Errored(id),
            Err(e) => Ended::Unknown(e),
        })
    }

    /// Powers the droplet on or off and waits until it is.
    pub(super) async fn power(&self, droplet: u64, on: bool) -> Result<(), ProviderError> {
        let (kind, doing, state) = if on {
            ("power_on", "powering the droplet on", "on")
        } else {
            ("power_off", "powering the droplet off", "off")
        };
        let action = Action::new(json!({ "type": kind }), doing);
        self.perform(droplet, &action, self.config.create_timeout)
            .await?
            .completed(|_| {
                failed(format!(
                    "DigitalOcean could not power droplet {droplet} {state}"
                ))
            })
    }

    /// Follows an action to its end: whether it completed (not: errored).
    pub(super) async fn follow(
        &self,
        action: u64,
        doing: &str,
        limit: Duration,
    ) -> Result<bool, ProviderError> {
        let deadline = Instant::now() + limit;
        loop {
            let body = self
                .client
                .send(
                    Method::GET,
                    &format!("/v2/actions/{action}"),
                    &[],
                    None,
                    Repeat::Safe,
                )
                .await
                .map_err(|e| explain(doing, e))?;
            match body["action"]["status"].as_str() {
                Some("completed") => return Ok(true),
                Some("errored") => return Ok(false),
                _ if Instant::now() > deadline => {
                    return Err(failed(format!(
                        "{doing}: DigitalOcean's action {action} did not finish within {} s",
                        limit.as_secs()
                    )));
                }
                _ => self.pause().await,
            }
        }
    }

    /// Starts a droplet action, waiting while another one is pending; its id.
    async fn post_action(&self, droplet: u64, action: &Action<'_>) -> Result<u64, ProviderError> {
        let doing = action.doing;
        let since = chrono::Utc::now();
        let deadline = Instant::now() + self.config.create_timeout;
        let path = format!("/v2/droplets/{droplet}/actions");
        let request = || {
            self.send_when_free(
                (Method::POST, &path),
                Some(&action.body),
                action.repeat,
                ApiError::is_pending_event,
                deadline,
            )
        };
        loop {
            match request().await {
                Ok(answer) => {
                    return answer["action"]["id"].as_u64().ok_or_else(|| {
                        failed(format!("{doing}: DigitalOcean returned no action"))
                    });
                }
                Err(ApiError::Uncertain(e)) if action.repeat == Repeat::Unsafe => {
                    tracing::info!(droplet, doing, error = %e, "action request unclear; looking for it");
                    self.pause().await;
                    if let Some(found) = self.recent_action(droplet, action.kind(), since).await? {
                        return Ok(found);
                    }
                    self.client.retried(RetryReason::Unclear);
                }
                Err(e) if e.is_not_found() => return Err(gone(droplet)),
                Err(e) => return Err(explain(doing, e)),
            }
        }
    }

    /// The droplet's most recent action of `kind` begun at or after `since`, if
    /// DigitalOcean has one (a POST whose answer was lost).
    async fn recent_action(
        &self,
        droplet: u64,
        kind: &str,
        since: chrono::DateTime<chrono::Utc>,
    ) -> Result<Option<u64>, ProviderError> {
        let path = format!("/v2/droplets/{droplet}/actions");
        let started_since = |a: &Value| {
            a["started_at"]
                .as_str()
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
                .is_some_and(|t| {
                    t.with_timezone(&chrono::Utc) >= since - chrono::Duration::seconds(5)
                })
        };
        self.newest((&path, "actions"), "listing the droplet's actions", |a| {
            a["type"] == kind && started_since(a)
        })
        .await
    }
}
