//! API benchmarks: `cargo bench --bench api`.
//!
//! Sets everything up on loopback by itself — a release `devpocket serve` with its
//! embedded PostgreSQL in a temporary data directory, restarted with the settings
//! each part needs — drives it with wrk and a small client of its own, prints a
//! Markdown report (also written to `target/bench/api.md`), and stops everything it
//! started. Needs `wrk` on the PATH.
//!
//! `BENCH_QUICK=1` runs every measurement shorter (a smoke run).

mod load;
mod peer;
mod server;

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use anyhow::bail;
use load::{Wrk, WrkResult, percentile};
use server::{Metrics, Server};

const USER: &str = "bench";
const PASSWORD: &str = "Bench-password-1";
const ENVIRONMENTS: [&str; 2] = ["bench-a", "bench-b"];

/// How long each part runs.
struct Scale {
    /// A wrk throughput run, after a warm-up.
    run: Duration,
    warmup: Duration,
    /// `/health/live` alone, and under a login flood.
    probe: Duration,
    flood: Duration,
    /// Distinct client addresses per round of the memory part.
    keys: u32,
    /// The per-address limit of the memory part: one request keeps a key about two
    /// emission intervals (period/count), `key_hold`, which must outlast a round.
    key_limit: &'static str,
    key_hold: Duration,
}

/// The memory part's sweep period (`DEVPOCKET_RATE_LIMIT_SWEEP`).
const SWEEP: &str = "5s";
const PROBE_EVERY: Duration = Duration::from_millis(10);

fn main() -> anyhow::Result<()> {
    // This executable is also the 429 path's peer, started by itself.
    if let Ok(spec) = std::env::var(peer::ENV) {
        return peer::serve(&spec);
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(bench())
}

async fn bench() -> anyhow::Result<()> {
    // `cargo bench` passes `--bench`; nothing else is accepted.
    let quick = std::env::var("BENCH_QUICK").is_ok_and(|v| v == "1");
    let scale = if quick {
        Scale {
            run: Duration::from_secs(4),
            warmup: Duration::from_secs(1),
            probe: Duration::from_secs(3),
            flood: Duration::from_secs(6),
            keys: 100_000,
            key_limit: "10/100s",
            key_hold: Duration::from_secs(20),
        }
    } else {
        Scale {
            run: Duration::from_secs(15),
            warmup: Duration::from_secs(3),
            probe: Duration::from_secs(20),
            flood: Duration::from_secs(25),
            keys: 1_000_000,
            key_limit: "15/10m",
            key_hold: Duration::from_secs(80),
        }
    };
    let started = Instant::now();
    let mut report = server::header(quick);
    server::fresh_root()?;
    let secret = hex::encode(rand::random::<[u8; 32]>());
    let result = run(&secret, &scale, &mut report).await;
    // Every server is stopped by now (dropped on the way out if a part failed).
    let _ = std::fs::remove_dir_all(server::root());
    result?;
    report.push_str(&format!(
        "\nThe whole run took {:.0} s.\n",
        started.elapsed().as_secs_f64()
    ));
    println!("{report}");
    devpocket_testkit::report::save(env!("CARGO_TARGET_TMPDIR"), "api.md", &report)?;
    Ok(())
}

/// What the report says, gathered part by part.
#[derive(Default)]
struct Sections {
    environments: String,
    floods: Vec<Flood>,
    /// Table rows and CPU lines.
    refusals: (String, String),
    memory: String,
}

async fn run(secret: &str, scale: &Scale, report: &mut String) -> anyhow::Result<()> {
    let mut sections = Sections::default();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    eprintln!("== limits raised: list of environments, /health/live during a login flood");
    raised(secret, scale, &mut sections).await?;
    eprintln!("== limits raised, one hash per core: /health/live during a login flood");
    one_hash(secret, scale, &mut sections).await?;
    eprintln!("== default limits: /health/live during a login flood, the 429 path");
    defaults(secret, scale, &mut sections).await?;
    eprintln!("== default limits, no request log: the 429 path");
    quiet(secret, scale, &mut sections).await?;
    eprintln!("== memory with many client addresses");
    memory(secret, scale, &mut sections).await?;
    report.push_str(&format!(
        "\nThe server runs five times on the same data directory, restarted between parts:\n\n\
         1. limits raised: {} (and the defaults otherwise);\n\
         2. the same with `DEVPOCKET_HASH_CONCURRENCY={cores}`, one hash per core (the default \
         leaves one core free: {} here);\n\
         3. the default settings;\n\
         4. the default settings but `RUST_LOG={QUIET_LOG}`: no log line per request;\n\
         5. for the memory part: {}.\n\n\
         CPU shares are from `/proc` over each measurement, in % of one core ({} % is the whole \
         machine); \"everything else\" is mostly wrk (and whatever else the machine runs).\n",
        settings_list(&RAISED),
        hashes(cores.saturating_sub(1).max(1)),
        settings_list(&memory_settings(scale)),
        cores * 100,
    ));
    report.push_str(&sections.environments);
    report.push_str(&floods(&mut sections.floods, scale));
    report.push_str(&refusals(&sections.refusals, scale));
    report.push_str(&sections.memory);
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Limits out of the way: every request does the work it would do for a client
/// within its allowance.
const RAISED: [(&str, &str); 8] = [
    ("DEVPOCKET_RATE_LIMIT_IP", "1000000/1s"),
    // The bench user is on the `starter` plan: twice this.
    ("DEVPOCKET_RATE_LIMIT_USER", "500000/1s"),
    ("DEVPOCKET_RATE_LIMIT_REGISTER_IP", "1000000/1s"),
    ("DEVPOCKET_RATE_LIMIT_REFRESH_IP", "1000000/1s"),
    ("DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_IP", "1000000/1s"),
    ("DEVPOCKET_RATE_LIMIT_LOGIN_FAILURES_ACCOUNT", "1000000/1s"),
    // Half the flood's passwords are wrong; a lock would turn them into cheap 423s.
    ("DEVPOCKET_LOCKOUT_THRESHOLD", "1000000"),
    ("DEVPOCKET_LOCKOUT_DURATION", "1s"),
];

fn memory_settings(scale: &Scale) -> [(&'static str, &'static str); 3] {
    [
        ("DEVPOCKET_TRUSTED_PROXIES", "127.0.0.1"),
        ("DEVPOCKET_RATE_LIMIT_SWEEP", SWEEP),
        ("DEVPOCKET_RATE_LIMIT_IP", scale.key_limit),
    ]
}

fn settings_list(settings: &[(&str, &str)]) -> String {
    settings
        .iter()
        .map(|(k, v)| format!("`{k}={v}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The first server: limits raised. The user and two running environments are made
/// here; the environments are deleted before it stops.
async fn raised(secret: &str, scale: &Scale, sections: &mut Sections) -> anyhow::Result<()> {
    let server = Server::start(secret, &RAISED)?;
    server.create_user(USER, PASSWORD, "starter")?;
    let token = server.login(USER, PASSWORD).await?;
    let mut environments = Vec::new();
    let result = async {
        for name in ENVIRONMENTS {
            eprintln!("creating environment {name}");
            environments.push(server.create_environment(&token, name, "ubuntu").await?);
        }
        sections.environments = list_environments(&server, &token, scale).await?;
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        sections.floods.push(
            health_during_logins(
                &server,
                scale,
                format!(
                    "1. limits raised, {} at once (default)",
                    hashes(cores.saturating_sub(1).max(1))
                ),
            )
            .await?,
        );
        anyhow::Ok(())
    }
    .await;
    for id in &environments {
        server.delete_environment(&token, id).await;
    }
    server.stop();
    result
}

fn hashes(n: usize) -> String {
    if n == 1 {
        "1 hash".to_owned()
    } else {
        format!("{n} hashes")
    }
}

/// The second server: as the first, one hash per core (what the default was).
async fn one_hash(secret: &str, scale: &Scale, sections: &mut Sections) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let concurrency = cores.to_string();
    let mut settings = RAISED.to_vec();
    settings.push(("DEVPOCKET_HASH_CONCURRENCY", &concurrency));
    let server = Server::start(secret, &settings)?;
    let flood = health_during_logins(
        &server,
        scale,
        format!("2. limits raised, {} at once (one per core)", hashes(cores)),
    )
    .await;
    server.stop();
    sections.floods.push(flood?);
    Ok(())
}

/// Authenticated `GET /api/v1/environments` at 256 connections.
async fn list_environments(server: &Server, token: &str, scale: &Scale) -> anyhow::Result<String> {
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
        name: "environments",
        script: "",
        url: server.url("/api/v1/environments"),
        connections: 256,
        duration: scale.warmup,
        timeout: Duration::from_secs(5),
        headers: vec![format!("Authorization: Bearer {token}")],
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
struct Flood {
    server: String,
    idle: load::Probed,
    probed: load::Probed,
    flood: WrkResult,
    statuses: BTreeMap<String, u64>,
    cpu: String,
}

/// `/health/live` alone, then while wrk floods `/api/v1/auth/login`.
async fn health_during_logins(
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
fn floods(floods: &mut [Flood], scale: &Scale) -> String {
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
         (a session, or a failure count); with the default limits (server 3) nearly every \
         attempt from the one flooding address is refused with 429 before any hashing. wrk runs \
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

/// The third server: default limits. A login flood and the 429 path.
async fn defaults(secret: &str, scale: &Scale, sections: &mut Sections) -> anyhow::Result<()> {
    let server = Server::start(secret, &[])?;
    let result = async {
        sections
            .floods
            .push(health_during_logins(&server, scale, "3. default limits".to_owned()).await?);
        refused(
            &server,
            scale,
            "3. default limits",
            &[64, 256],
            &mut sections.refusals,
        )
        .await?;
        anyhow::Ok(())
    }
    .await;
    server.stop();
    result
}

const QUIET_LOG: &str = "warn,devpocket::cli=info";

/// The fourth server: default limits, no log line per request. The 429 path.
async fn quiet(secret: &str, scale: &Scale, sections: &mut Sections) -> anyhow::Result<()> {
    // The start-up lines stay (the address is read from them).
    let server = Server::start(secret, &[("RUST_LOG", QUIET_LOG)])?;
    // Spend the address's allowance first, as the login flood did on server 3.
    let result = async {
        let spend = Wrk {
            name: "spend",
            script: "",
            url: server.url("/api/v1/environments"),
            connections: 16,
            duration: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            headers: Vec::new(),
        };
        spend.run().await?;
        refused(
            &server,
            scale,
            "4. no request log",
            &[256],
            &mut sections.refusals,
        )
        .await?;
        // The allowance comes back a request at a time (20/s by default): the
        // next request may pass, one of the next few is refused.
        let url = server.url("/api/v1/environments");
        let mut answer = peer::Answer::record(&server.api.http, &url).await?;
        for _ in 0..100 {
            if answer.status == 429 {
                break;
            }
            answer = peer::Answer::record(&server.api.http, &url).await?;
        }
        if answer.status != 429 {
            bail!("expected a 429 to give the peer, got {}", answer.status);
        }
        refused_by_peer(&answer, scale, &mut sections.refusals).await
    }
    .await;
    server.stop();
    result
}

/// The 429 path: one address far over `DEVPOCKET_RATE_LIMIT_IP`, at each number
/// of connections; adds table rows and CPU lines to `out`.
async fn refused(
    server: &Server,
    scale: &Scale,
    label: &str,
    connections: &[usize],
    out: &mut (String, String),
) -> anyhow::Result<()> {
    let route = "route=\"/api/v1/environments\"";
    for &connections in connections {
        let before = server.metrics().await?;
        let cpu = server.cpu();
        let r = Wrk {
            name: "refused",
            script: "",
            url: server.url("/api/v1/environments"),
            connections,
            duration: scale.run,
            timeout: Duration::from_secs(5),
            headers: Vec::new(),
        }
        .run()
        .await?;
        let cpu = server.cpu().since(&cpu);
        let after = server.metrics().await?;
        let count = |labels: &[&str]| {
            after.sum("devpocket_http_requests_total", labels)
                - before.sum("devpocket_http_requests_total", labels)
        };
        let answered = count(&[route]);
        let refused = count(&[route, "status=\"429\""]);
        out.0.push_str(&format!(
            "| {label} | {connections} | **{:.0}** | {:.2} | {:.2} | {:.1} | **{:.2} %** of {answered:.0} | {} / {} |\n",
            r.rps(),
            ms(r.p50),
            ms(r.p99),
            ms(r.max),
            refused / answered.max(1.0) * 100.0,
            r.socket_errors,
            r.timeouts,
        ));
        out.1
            .push_str(&format!("- {label}, {connections} connections: {cpu}\n"));
    }
    Ok(())
}

/// The same load against the peer: a bare actix-web server giving DevPocket's 429.
async fn refused_by_peer(
    answer: &peer::Answer,
    scale: &Scale,
    out: &mut (String, String),
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let peer = peer::Peer::start(answer, cores)?;
    let r = Wrk {
        name: "peer",
        script: "",
        url: format!("{}/api/v1/environments", peer.base),
        connections: 256,
        duration: scale.run,
        timeout: Duration::from_secs(5),
        headers: Vec::new(),
    }
    .run()
    .await?;
    out.0.push_str(&format!(
        "| peer: bare actix-web, the same 429 bytes | 256 | **{:.0}** | {:.2} | {:.2} | {:.1} | {} non-2xx of {} | {} / {} |\n",
        r.rps(),
        ms(r.p50),
        ms(r.p99),
        ms(r.max),
        r.non_2xx,
        r.requests,
        r.socket_errors,
        r.timeouts,
    ));
    Ok(())
}

/// The 429 section.
fn refusals((rows, cpus): &(String, String), scale: &Scale) -> String {
    format!(
        "\n## The 429 path\n\nServers 3 and 4 (default limits). `GET /api/v1/environments` from \
         one address that is far over `DEVPOCKET_RATE_LIMIT_IP` (1200/1m, spent before the \
         measurement: by the login flood on server 3, by a 1 s run on server 4), so nearly every \
         request is refused by the per-address limiter before anything else runs: 429 with \
         `Retry-After`, the `RateLimit-*` headers and the JSON error envelope, counted in the \
         metrics like any request and, on server 3, logged (one JSON line per request, as by \
         default). wrk, 2 threads, {} s per row; the share of 429s is from the server's \
         `devpocket_http_requests_total` for that route. The peer, measured last, is a bare \
         actix-web server with as many workers, in its own process, answering every request \
         with the bytes server 4 answered a refused request with (status, headers, body) and \
         doing nothing else: the most that wrk on this machine gets from an actix-web server \
         giving that answer.\n\n\
         | Server | Connections | Requests/s (target ≥ 50,000) | p50 ms | p99 ms | max ms | 429s (target ≥ 99 %) | socket errors / timeouts |\n\
         |---|---|---|---|---|---|---|---|\n{rows}\nCPU:\n\n{cpus}",
        scale.run.as_secs()
    )
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
async fn memory(secret: &str, scale: &Scale, sections: &mut Sections) -> anyhow::Result<()> {
    let settings = memory_settings(scale);
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
