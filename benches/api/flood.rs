//! `/health/live` during a login flood: the prober alone, then while wrk floods
//! `POST /api/v1/auth/login`, and the report's section from every server's figures.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::load::{self, Wrk, WrkResult, percentile};
use crate::server::{Metrics, Server};
use crate::{Scale, ms};

/// How often the prober asks.
const PROBE_EVERY: Duration = Duration::from_millis(10);

/// Correct and wrong passwords, alternately, on every connection.
const LOGIN_FLOOD: &str = r#"
local bodies = {
  '{"username_or_email":"bench","password":"Bench-password-1"}',
  '{"username_or_email":"bench","password":"Wrong-password-1"}',
}
local requests = {}
local n = 0
function init(args)
  for i, body in ipairs(bodies) do
    requests[i] = wrk.format("POST", "/api/v1/auth/login",
      {["Content-Type"] = "application/json"}, body)
  end
end
function request()
  n = n + 1
  return requests[n % 2 + 1]
end
"#;

const FLOOD_CONNECTIONS: usize = 32;

/// Login statuses counted by the server between two scrapes.
fn login_statuses(before: &Metrics, after: &Metrics) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for status in ["200", "401", "403", "423", "429", "500", "503"] {
        let label = format!("status=\"{status}\"");
        let labels = ["route=\"/api/v1/auth/login\"", label.as_str()];
        let n = after.sum("devpocket_http_requests_total", &labels)
            - before.sum("devpocket_http_requests_total", &labels);
        if n > 0.0 {
            out.insert(status.to_owned(), n as u64);
        }
    }
    out
}

/// One server's `/health/live` figures, alone and during a login flood.
pub struct Flood {
    server: String,
    idle: load::Probed,
    probed: load::Probed,
    flood: WrkResult,
    statuses: BTreeMap<String, u64>,
    cpu: String,
}

/// `/health/live` alone, then while wrk floods `/api/v1/auth/login`.
pub async fn health_during_logins(
    server: &Server,
    scale: &Scale,
    label: String,
) -> anyhow::Result<Flood> {
    let until = Instant::now() + scale.probe;
    let idle = load::probe(&server.address, "/health/live", PROBE_EVERY, until).await?;
    let before = server.metrics().await?;
    let cpu = server.cpu();
    let flood = Wrk {
        name: "login-flood",
        script: LOGIN_FLOOD,
        url: server.url("/api/v1/auth/login"),
        connections: FLOOD_CONNECTIONS,
        duration: scale.flood,
        timeout: Duration::from_secs(10),
        headers: Vec::new(),
    };
    // The prober starts once the flood is under way and stops before it ends.
    let probing = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let until = Instant::now() + scale.flood.saturating_sub(Duration::from_secs(2));
        load::probe(&server.address, "/health/live", PROBE_EVERY, until).await
    };
    let (flooded, probed) = tokio::join!(flood.run_as_flood(), probing);
    let cpu = server.cpu().since(&cpu);
    let after = server.metrics().await?;
    Ok(Flood {
        server: label,
        idle,
        probed: probed?,
        flood: flooded?,
        statuses: login_statuses(&before, &after),
        cpu,
    })
}

fn probe_row(server: &str, load: &str, probed: &mut load::Probed) -> String {
    let n = probed.latencies.len();
    let xs = &mut probed.latencies;
    format!(
        "| {server} | {load} | {n} | {:.2} | **{:.2}** | {:.1} | {} |\n",
        ms(percentile(xs, 0.50)),
        ms(percentile(xs, 0.99)),
        ms(xs.iter().max().copied().unwrap_or_default()),
        probed.failures,
    )
}

/// The `/health/live` section, from every server's figures.
pub fn section(floods: &mut [Flood], scale: &Scale) -> String {
    let mut probes = String::new();
    let mut attempts = String::new();
    let mut cpu = String::new();
    for f in floods.iter_mut() {
        probes.push_str(&probe_row(&f.server, "none (just before)", &mut f.idle));
        probes.push_str(&probe_row(&f.server, "login flood", &mut f.probed));
        let checked = f.statuses.get("200").copied().unwrap_or(0)
            + f.statuses.get("401").copied().unwrap_or(0);
        let answers = f
            .statuses
            .iter()
            .map(|(s, n)| format!("{n} × {s}"))
            .collect::<Vec<_>>()
            .join(", ");
        attempts.push_str(&format!(
            "| {} | {:.0} | {:.1} | {answers} | {:.0} | {:.0} | {} / {} |\n",
            f.server,
            f.flood.rps(),
            checked as f64 / f.flood.elapsed.as_secs_f64(),
            ms(f.flood.p50),
            ms(f.flood.p99),
            f.flood.socket_errors,
            f.flood.timeouts,
        ));
        cpu.push_str(&format!("- {}: {}\n", f.server, f.cpu));
    }
    format!(
        "\n## `/health/live` during a login flood\n\nOn each server, this program first sends \
         `GET /health/live` every {} ms on one keep-alive connection (as a load balancer would) \
         for {} s and times each answer; then wrk floods `POST /api/v1/auth/login` on \
         {FLOOD_CONNECTIONS} connections for {} s, alternating the right password and a wrong \
         one, while the prober goes on (from 1 s into the flood to 1 s before its end). With the \
         limits raised (servers 1 and 2) every attempt runs Argon2id (19 MiB, t=2) on the \
         blocking pool, at most `DEVPOCKET_HASH_CONCURRENCY` at once, and writes to PostgreSQL \
         (a session, or a failure count); with the default limits (server 3) the flooding \
         address is known for the account (it signed in there on server 1; the sign-in limits \
         are kept in the database), so its wrong passwords meet the lockout (423), not the \
         address's failure budget (429). wrk runs \
         at niceness {}, below the server and the prober: remote clients do not take the \
         server's cores, wrk here does, and at the same priority the kernel's time slices \
         (milliseconds) would be in the prober's percentiles. The prober shares the machine: \
         its own scheduling delays are in its figures.\n\n\
         | Server | Load | `/health/live` probes | p50 ms | p99 ms (target < 5 during the flood) | max ms | failed |\n\
         |---|---|---|---|---|---|---|\n{probes}\n\
         The floods:\n\n\
         | Server | Attempts/s | Passwords checked/s | Answers | Attempt p50 ms | Attempt p99 ms | socket errors / timeouts |\n\
         |---|---|---|---|---|---|---|\n{attempts}\n\
         CPU during the floods:\n\n{cpu}",
        PROBE_EVERY.as_millis(),
        scale.probe.as_secs(),
        scale.flood.as_secs(),
        load::FLOOD_NICENESS,
    )
}
