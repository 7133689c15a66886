//! Prometheus metrics at `/metrics`: requests by route and status, and
//! request latency. Only route templates are labels, never key tags or
//! other values a client controls.
//!
//! Memory is constant per (method, route) label set, whatever the traffic
//! (issue 9: the soak's RSS grew 3.5 MiB a minute):
//! - latency is a Prometheus histogram with fixed buckets
//!   ([`LATENCY_BUCKETS`]): a few counters per label set. The exporter's
//!   default, a summary, keeps three rolling 20-second DDSketches per label
//!   set, each growing to 32,768 bins (256 KiB) as the latencies seen spread
//!   out: measured with heaptrack after a 2-minute soak, 6.9 of the
//!   process's 10.5 MB of heap were those bins;
//! - the exporter keeps each latency sample in a per-label-set bucket until
//!   an "upkeep" drains it into the histogram. The recorder is installed
//!   with `install_recorder`, which runs no upkeep, and only a scrape of
//!   `/metrics` drained: a service nobody scraped kept 16 bytes of every
//!   request for ever. Every [`DRAIN_EVERY`]th request now drains them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Upper bounds (seconds) of the request latency histogram's buckets.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Requests between two drains of the latency samples into the histograms.
pub const DRAIN_EVERY: u64 = 4096;

/// Requests recorded so far (for the drain schedule).
static RECORDED: AtomicU64 = AtomicU64::new(0);

/// Installs the process-wide recorder once; later calls reuse it.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            match PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("hsm_kms_request_duration_seconds".into()),
                    &LATENCY_BUCKETS,
                )
                .and_then(PrometheusBuilder::install_recorder)
            {
                Ok(h) => Some(h),
                Err(e) => {
                    tracing::warn!(error = %e, "metrics recorder not installed");
                    None
                }
            }
        })
        .as_ref()
}

/// Middleware counting requests and timing them per route template.
pub async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().as_str().to_string();
    let start = Instant::now();
    let resp = next.run(req).await;
    record_request(
        &method,
        &route,
        resp.status().as_u16(),
        start.elapsed().as_secs_f64(),
    );
    resp
}

/// Counts one answered request of `method` on route template `route` and
/// records its latency; every [`DRAIN_EVERY`]th call drains the latency
/// samples into the histograms.
pub fn record_request(method: &str, route: &str, status: u16, secs: f64) {
    let (method, route) = (method.to_string(), route.to_string());
    metrics::counter!("hsm_kms_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("hsm_kms_request_duration_seconds", "method" => method, "route" => route)
        .record(secs);
    if RECORDED.fetch_add(1, Ordering::Relaxed) % DRAIN_EVERY == DRAIN_EVERY - 1 {
        if let Some(h) = handle() {
            h.run_upkeep();
        }
    }
}

/// `GET /metrics`.
pub async fn render() -> Response {
    match handle() {
        Some(h) => (
            [(
                axum::http::header::CONTENT_TYPE,
                "text/plain; version=0.0.4",
            )],
            h.render(),
        )
            .into_response(),
        None => (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "metrics unavailable",
        )
            .into_response(),
    }
}
