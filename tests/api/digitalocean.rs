//! The DigitalOcean provider, against a faithful fake of DigitalOcean's API
//! (`fake_do`): the fake itself, the provider alone, then the whole server.

mod catalog;
mod delete_during_create;
mod fake;
mod faults;
pub mod lifecycle;
mod outside_ssh;
mod provider;
mod reconcile;
mod restart;

use std::collections::BTreeMap;

use crate::fake_do::FakeDo;
use crate::helpers::TestApp;

/// The settings that point a server at `fake`, with scaled-down timings.
pub fn settings(fake: &FakeDo) -> Vec<(String, String)> {
    [
        ("DO_API_TOKEN", fake.token.as_str()),
        ("DO_API_URL", fake.url.as_str()),
        ("DO_POLL_INTERVAL", "100ms"),
        ("DO_API_TIMEOUT", "2s"),
        ("DO_SHUTDOWN_TIMEOUT", "3s"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect()
}

/// A server whose default provider is the fake DigitalOcean.
pub async fn spawn_app(fake: &FakeDo, extra: &[(&str, &str)]) -> TestApp {
    let owned = settings(fake);
    let mut overrides: Vec<(&str, &str)> = owned
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    overrides.extend_from_slice(extra);
    TestApp::spawn_with(&overrides).await
}

/// Every series of the metric `name` in the server's `/metrics`, as (labels,
/// value).
pub async fn series(app: &TestApp, name: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let response = app.get("/metrics").await;
    assert_eq!(response.status(), 200);
    let text = response.text().await.unwrap();
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = match series.split_once('{') {
                Some((metric, labels)) => (metric, labels.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                return None;
            }
            let labels = labels
                .split(',')
                .filter_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    Some((k.to_owned(), v.trim_matches('"').to_owned()))
                })
                .collect();
            Some((labels, value.parse().unwrap()))
        })
        .collect()
}

/// The sum of the series of `name` that carry each of `labels`.
pub async fn metric(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(app, name)
        .await
        .iter()
        .filter(|(l, _)| {
            labels
                .iter()
                .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, value)| value)
        .sum()
}
