//! The authenticated list of environments: two running environments of one user,
//! listed by wrk at 256 connections.

use std::time::Duration;

use anyhow::bail;

use crate::load::Wrk;
use crate::server::Server;
use crate::{ENVIRONMENTS, Scale, USER, ms};

/// How long an environment may take to be made.
pub const CREATE: Duration = Duration::from_secs(300);

/// Authenticated `GET /api/v1/environments` at 256 connections.
pub async fn list(server: &Server, token: &str, scale: &Scale) -> anyhow::Result<String> {
    let listed: serde_json::Value = server
        .api
        .http
        .get(server.url("/api/v1/environments"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let count = listed.as_array().map_or(0, Vec::len);
    if count != ENVIRONMENTS.len() {
        bail!("expected {} environments: {listed}", ENVIRONMENTS.len());
    }
    let bytes = listed.to_string().len();
    let mut wrk = Wrk {
        headers: vec![format!("Authorization: Bearer {token}")],
        ..Wrk::get(
            "environments",
            server.url("/api/v1/environments"),
            256,
            scale.warmup,
        )
    };
    wrk.run().await?;
    wrk.duration = scale.run;
    let cpu = server.cpu();
    let r = wrk.run().await?;
    let cpu = server.cpu().since(&cpu);
    Ok(format!(
        "\n## Authenticated list of environments\n\nServer 1. `GET /api/v1/environments` with a \
         bearer token: the token is checked, the session looked up (PostgreSQL, or the server's recent check of it), the \
         per-address and per-user limits counted (raised, so never reached), and the user's \
         environments read. The user `{USER}` is on the `starter` plan and owns {count} running \
         environments (local provider, `ubuntu` template): {bytes} bytes of JSON per answer. \
         wrk, 2 threads, {} s after a {} s warm-up.\n\n\
         | Connections | Requests/s (target ≥ 10,000) | p50 ms | p90 ms | p99 ms | max ms | non-2xx | socket errors / timeouts |\n\
         |---|---|---|---|---|---|---|---|\n\
         | 256 | **{:.0}** | {:.2} | {:.2} | **{:.2}** | {:.1} | {} | {} / {} |\n\n\
         CPU: {cpu}.\n",
        scale.run.as_secs(),
        scale.warmup.as_secs(),
        r.rps(),
        ms(r.p50),
        ms(r.p90),
        ms(r.p99),
        ms(r.max),
        r.non_2xx,
        r.socket_errors,
        r.timeouts,
    ))
}

/// The same list through one process, then spread over two processes on the same
/// database (the second started here, on the same data directory: it shares the
/// first's embedded PostgreSQL). 256 connections in all either way.
pub async fn list_on_two(
    first: &Server,
    token: &str,
    scale: &Scale,
    second: &Server,
) -> anyhow::Result<String> {
    let wrk = |server: &Server, connections: usize, duration: Duration| Wrk {
        headers: vec![format!("Authorization: Bearer {token}")],
        ..Wrk::get(
            "environments",
            server.url("/api/v1/environments"),
            connections,
            duration,
        )
    };
    let row = |label: &str, rs: &[&crate::load::WrkResult]| {
        let total: f64 = rs.iter().map(|r| r.rps()).sum();
        let worst = |f: fn(&crate::load::WrkResult) -> Duration| {
            rs.iter().map(|r| f(r)).max().unwrap_or_default()
        };
        format!(
            "| {label} | **{total:.0}** | {:.2} | **{:.2}** | {:.1} | {} |\n",
            ms(worst(|r| r.p50)),
            ms(worst(|r| r.p99)),
            ms(worst(|r| r.max)),
            rs.iter()
                .map(|r| r.non_2xx + r.socket_errors + r.timeouts)
                .sum::<u64>(),
        )
    };
    // Both warm, then one alone, then both at once, in the same run.
    wrk(second, 256, scale.warmup).run().await?;
    wrk(first, 256, scale.warmup).run().await?;
    let one = wrk(first, 256, scale.run).run().await?;
    let (on_first, on_second) = (wrk(first, 128, scale.run), wrk(second, 128, scale.run));
    let (a, b) = tokio::join!(on_first.run(), on_second.run());
    let (a, b) = (a?, b?);
    Ok(format!(
        "\n### Through one process and through two\n\nThe same list, in the same run: 256 \
         connections to the first process; then 128 to each of two processes on the same \
         database (the second, started for this, follows the first's environments and \
         answers from the same PostgreSQL). wrk, {} s each. On a machine with fewer cores \
         than processes they share the CPU: what a second process adds is headroom on \
         another machine, which this one cannot show.\n\n\
         | Processes | Requests/s in all | p50 ms (worst) | p99 ms (worst) | max ms | errors |\n\
         |---|---|---|---|---|---|\n{}{}",
        scale.run.as_secs(),
        row("one (256 connections)", &[&one]),
        row("two (128 + 128 connections)", &[&a, &b]),
    ))
}
