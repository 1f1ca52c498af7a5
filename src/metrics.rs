//! Prometheus metrics, through the `metrics` facade and its Prometheus exporter.
//!
//! Each `Application` has its own recorder (tests run several applications in one
//! process), passed to where metrics are recorded — never a global one. Gauges that
//! describe live state (actors, mailboxes, the database pool, rate-limit keys) are
//! read from that state when `/metrics` is scraped, so they always agree with the
//! admin API.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;

use ::metrics::{Counter, Histogram, Recorder, counter, gauge, histogram};
use actix_web::http::Method;
use devpocket_actors::inspect::{Inspector, Kind};
use metrics_exporter_prometheus::{
    Matcher, PrometheusBuilder, PrometheusHandle, PrometheusRecorder,
};

use crate::db::DbPool;
use crate::ratelimit::RateLimits;

/// Bucket bounds for every `*_seconds` histogram: from sub-millisecond HTTP
/// requests and mailbox waits up to provisioning that takes minutes.
const SECONDS_BUCKETS: [f64; 18] = [
    0.000_1, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
    10.0, 60.0, 300.0, 1800.0,
];

pub struct Metrics {
    recorder: Arc<PrometheusRecorder>,
    handle: PrometheusHandle,
}

impl Metrics {
    pub fn new() -> anyhow::Result<Self> {
        let recorder = PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)?
            .build_recorder();
        let handle = recorder.handle();
        Ok(Self {
            recorder: Arc::new(recorder),
            handle,
        })
    }

    /// Folds the samples recorded since into the histograms every `period`. The
    /// exporter keeps each sample until then (its own upkeep task is not running
    /// here, see `build_recorder`), so without this a server nobody scrapes would
    /// hold one sample per request, forever.
    pub fn spawn_upkeep(metrics: &Arc<Self>, period: std::time::Duration) {
        crate::periodic::every(metrics, period, |metrics| async move {
            metrics.handle.run_upkeep();
        });
    }

    pub fn recorder(&self) -> Arc<dyn Recorder + Send + Sync> {
        self.recorder.clone()
    }

    /// Runs `f` with this application's recorder, e.g.
    /// `metrics.record(|| counter!("…").increment(1))`.
    pub fn record<R>(&self, f: impl FnOnce() -> R) -> R {
        ::metrics::with_local_recorder(&*self.recorder, f)
    }

    /// The exposition text, with the live-state gauges read now.
    pub fn render(&self, inspector: &Inspector, pool: &DbPool, limits: &RateLimits) -> String {
        self.record(|| {
            let alive = inspector.alive();
            for kind in Kind::ALL {
                let n = alive.get(&kind).copied().unwrap_or(0);
                gauge!("devpocket_actors", "kind" => kind.as_str()).set(n as f64);
                gauge!("devpocket_actor_mailbox_depth", "kind" => kind.as_str())
                    .set(inspector.mailbox_depth(kind) as f64);
            }
            let status = pool.status();
            let in_use = status.size.saturating_sub(status.available);
            gauge!("devpocket_db_pool_connections", "state" => "in_use").set(in_use as f64);
            gauge!("devpocket_db_pool_connections", "state" => "idle").set(status.available as f64);
            gauge!("devpocket_db_pool_max_connections").set(status.max_size as f64);
            gauge!("devpocket_db_pool_waiting").set(status.waiting as f64);
            for (limiter, keys) in limits.keys() {
                gauge!("devpocket_rate_limit_keys", "limiter" => limiter).set(keys as f64);
            }
        });
        self.handle.render()
    }
}

/// The HTTP request series one worker has used, by route template: a request then
/// costs two atomic updates, not two registry lookups (labels built, hashed and
/// compared). Bounded by routes × methods × statuses: a method outside the standard
/// ones is counted as `other`, so a client cannot mint series.
#[derive(Default)]
pub struct HttpSeries(RefCell<HashMap<String, Vec<Series>>>);

struct Series {
    method: &'static str,
    status: u16,
    /// `devpocket_http_requests_total{method, route, status}`
    requests: Counter,
    /// `devpocket_http_request_duration_seconds{method, route}`
    duration: Histogram,
}

impl HttpSeries {
    /// Counts one answered request of `route` (a template: ids would make a series
    /// per request) in `metrics`, the recorder of the application this worker serves.
    pub fn record(
        &self,
        metrics: &Metrics,
        method: &Method,
        route: String,
        status: u16,
        seconds: f64,
    ) {
        let method = method_label(method);
        let mut by_route = self.0.borrow_mut();
        let known = by_route.get(route.as_str()).and_then(|all| {
            all.iter()
                .find(|s| s.method == method && s.status == status)
        });
        if let Some(series) = known {
            series.requests.increment(1);
            series.duration.record(seconds);
            return;
        }
        let series = metrics.record(|| Series {
            method,
            status,
            requests: counter!("devpocket_http_requests_total", "method" => method, "route" => route.clone(), "status" => status.to_string()),
            duration: histogram!("devpocket_http_request_duration_seconds", "method" => method, "route" => route.clone()),
        });
        series.requests.increment(1);
        series.duration.record(seconds);
        by_route.entry(route).or_default().push(series);
    }
}

fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_series_is_counted_in_place_and_methods_cannot_mint_series() {
        let metrics = Metrics::new().unwrap();
        let series = HttpSeries::default();
        let brew = Method::from_bytes(b"BREW").unwrap();
        for method in [&Method::GET, &Method::GET, &brew] {
            series.record(&metrics, method, "/api/v1/info".into(), 200, 0.001);
        }
        series.record(&metrics, &Method::GET, "/api/v1/info".into(), 429, 0.001);
        let text = metrics.handle.render();
        for line in [
            r#"devpocket_http_requests_total{method="GET",route="/api/v1/info",status="200"} 2"#,
            r#"devpocket_http_requests_total{method="GET",route="/api/v1/info",status="429"} 1"#,
            r#"devpocket_http_requests_total{method="other",route="/api/v1/info",status="200"} 1"#,
            r#"devpocket_http_request_duration_seconds_count{method="GET",route="/api/v1/info"} 3"#,
        ] {
            assert!(text.contains(line), "{line} in {text}");
        }
        assert!(!text.contains("BREW"), "{text}");
    }
}
