//! Memory with many client addresses: rounds of a million forwarded addresses, each
//! swept before the next, and the server's RSS and keys held along the way.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use crate::server::Server;
use crate::{Scale, Sections, load, mib, settings_list};

/// The memory part's sweep period (`DEVPOCKET_RATE_LIMIT_SWEEP`).
const SWEEP: &str = "5s";

/// The memory part's server settings.
pub fn settings(scale: &Scale) -> [(&'static str, &'static str); 3] {
    [
        ("DEVPOCKET_TRUSTED_PROXIES", "127.0.0.1"),
        ("DEVPOCKET_RATE_LIMIT_SWEEP", SWEEP),
        ("DEVPOCKET_RATE_LIMIT_IP", scale.key_limit),
    ]
}

/// Waits until the sweep has dropped the keys (at most `limit`); the time it took
/// and the keys left.
async fn until_swept(server: &Server, limit: Duration) -> anyhow::Result<(Duration, f64)> {
    let start = Instant::now();
    let polled = devpocket_testkit::poll(limit, async || match server.metrics().await {
        Ok(metrics) if metrics.ip_keys() < 100.0 => Ok(Ok(metrics.ip_keys())),
        Ok(metrics) => Err(metrics.ip_keys()),
        Err(e) => Ok(Err(e)),
    })
    .await;
    let keys = match polled {
        Ok(swept) => swept?,
        Err(left) => left,
    };
    Ok((start.elapsed(), keys))
}

/// The fifth server: many client addresses, twice, each round swept before the
/// next.
pub async fn memory(secret: &str, scale: &Scale, sections: &mut Sections) -> anyhow::Result<()> {
    let settings = settings(scale);
    let server = Server::start(secret, &settings)?;
    let result = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut rows = format!(
            "| started, idle | {:.0} | {:.1} |\n",
            server.metrics().await?.ip_keys(),
            mib(server.rss()?)
        );
        let mut peaks = Vec::new();
        let mut swept = Vec::new();
        let mut statuses = BTreeMap::new();
        let rounds = [
            (1, Ipv4Addr::new(10, 0, 0, 0)),
            (2, Ipv4Addr::new(10, 64, 0, 0)),
            (3, Ipv4Addr::new(10, 128, 0, 0)),
        ];
        for (round, first) in rounds {
            eprintln!("round {round}: {} addresses", scale.keys);
            let (took, seen) =
                load::distinct_clients(&server.address, "/api/v1/environments", 64, first, scale.keys)
                    .await?;
            let held = server.metrics().await?.ip_keys();
            let rss = server.rss()?;
            peaks.push(rss);
            for (s, n) in seen {
                *statuses.entry(s).or_insert(0) += n;
            }
            rows.push_str(&format!(
                "| round {round}: {} addresses sent ({:.0}/s, {:.1} s), right after | {held:.0} | **{:.1}** |\n",
                scale.keys,
                f64::from(scale.keys) / took.as_secs_f64(),
                took.as_secs_f64(),
                mib(rss)
            ));
            let (waited, left) =
                until_swept(&server, scale.key_hold + Duration::from_secs(40)).await?;
            tokio::time::sleep(Duration::from_secs(1)).await;
            let rss = server.rss()?;
            swept.push(rss);
            rows.push_str(&format!(
                "| round {round}, swept ({:.0} s after the round) | {left:.0} | **{:.1}** |\n",
                waited.as_secs_f64(),
                mib(rss)
            ));
        }
        let statuses = statuses
            .iter()
            .map(|(s, n)| format!("{n} × {s}"))
            .collect::<Vec<_>>()
            .join(", ");
        let growth = |xs: &[u64], round: usize| mib(xs[round - 1]) - mib(xs[0]);
        sections.memory = format!(
            "\n## Memory with {} client addresses\n\nServer 5: {}. This program sends \
             `GET /api/v1/environments` without a token, one request for each of {} different \
             `X-Forwarded-For` addresses (10.0.0.0 upwards; the second round 10.64.0.0 upwards, \
             the third 10.128.0.0 upwards), \
             on 64 connections from 127.0.0.1, a trusted proxy: each address is a new key in the \
             per-address limiter (the answers: {statuses}). A sweep drops the keys whose \
             allowance is back; governor keeps a key about two emission intervals after its last \
             request, so with this limit one request holds its key about {} s, longer than a \
             round: at the end of a round every address of the round is held at once. (With the \
             default 1200/1m a key is back after 50 ms, so the limiter holds at most the \
             addresses seen since the last sweep, every `DEVPOCKET_RATE_LIMIT_SWEEP`, a minute \
             by default.) Keys held are the server's `devpocket_rate_limit_keys{{limiter=\"ip\"}}`; \
             RSS is the server process's `VmRSS` (not PostgreSQL's), read right after the round \
             and 1 s after the keys were swept.\n\n\
             | State | Keys held | Server RSS MiB |\n|---|---|---|\n{rows}\n\
             Over round 1, right after the round: round 2 {:+.1} MiB, round 3 {:+.1} MiB; after \
             the sweep: round 2 {:+.1} MiB, round 3 {:+.1} MiB. The allocator keeps much of what \
             the swept maps freed (RSS does not fall back to the idle figure), and each round \
             reuses it instead of adding to it.\n",
            scale.keys,
            settings_list(&settings),
            scale.keys,
            scale.key_hold.as_secs(),
            growth(&peaks, 2),
            growth(&peaks, 3),
            growth(&swept, 2),
            growth(&swept, 3),
        );
        anyhow::Ok(())
    }
    .await;
    server.stop();
    result
}
