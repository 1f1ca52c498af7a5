//! The DigitalOcean provider, against a faithful fake of DigitalOcean's API
//! (`fake_do`): the fake itself, the provider alone, then the whole server.

mod catalog;
mod fake;
mod faults;
mod lifecycle;
mod provider;
mod reconcile;
mod restart;

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
