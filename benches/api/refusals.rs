//! The 429 path: one address far over its limit, against DevPocket and against the
//! peer (a bare actix-web server giving the same bytes), and the report's section.

use anyhow::bail;

use crate::load::Wrk;
use crate::server::Server;
use crate::{Scale, ms, peer};

/// The 429 path: one address far over `DEVPOCKET_RATE_LIMIT_IP`, at each number
/// of connections; adds table rows and CPU lines to `out`.
pub async fn refused(
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
        let url = server.url("/api/v1/environments");
        let r = Wrk::get("refused", url, connections, scale.run)
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

/// A 429 from `server`, whose address has spent its allowance, to give the peer.
pub async fn a_refusal(server: &Server) -> anyhow::Result<peer::Answer> {
    // The allowance comes back a request at a time (20/s by default): the next
    // request may pass, one of the next few is refused.
    let url = server.url("/api/v1/environments");
    for _ in 0..100 {
        let answer = peer::Answer::record(&server.api.http, &url).await?;
        if answer.status == 429 {
            return Ok(answer);
        }
    }
    bail!("expected a 429 to give the peer, got none in 100 requests")
}

/// The same load against the peer: a bare actix-web server giving DevPocket's 429.
pub async fn by_peer(
    answer: &peer::Answer,
    scale: &Scale,
    out: &mut (String, String),
) -> anyhow::Result<()> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let peer = peer::Peer::start(answer, cores)?;
    let url = format!("{}/api/v1/environments", peer.base);
    let r = Wrk::get("peer", url, 256, scale.run).run().await?;
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
pub fn section((rows, cpus): &(String, String), scale: &Scale) -> String {
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
