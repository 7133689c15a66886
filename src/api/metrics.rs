//! Prometheus metrics at `/metrics` and the access log.
//!
//! `/metrics` is the `metrics` exporter's families (counters and gauges
//! set across the crate with the `metrics` macros: token recoveries, the
//! handle map's size, the key cache, connections, ...) followed by the
//! service's own ([`crate::telemetry`]: request and operation latency
//! histograms, the token, the store, the activity log, the schedulers,
//! security signals) and the key counts read from the store at each
//! scrape. `docs/operations.md` lists every family.
//!
//! Only route templates are labels, never key tags or other values a
//! client controls. Memory is constant per (method, route) label set,
//! whatever the traffic, scraped or not (issue 9: the soak's RSS grew
//! 3.5 MiB a minute while the exporter kept every latency sample until a
//! scrape drained it, and its default summaries kept growing sketches):
//! request latencies are now fixed-bucket histograms of atomic counters
//! ([`crate::telemetry::Histogram`]), and no family of the exporter is a
//! histogram, so nothing waits for an upkeep.
//!
//! The access log ([`access_log`], `log.access`): one `info` line per
//! request, with target `access`, written outside the request's span so
//! that it carries no path: request id, method, route template, status,
//! duration, dialect, operation, the kind of credentials presented, and a
//! fingerprint of the key tag or key id.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::telemetry::http::{generic_operation, snake_case, RouteStats};
use crate::telemetry::LATENCY_BUCKETS as BUCKETS;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Upper bounds (seconds) of the request latency histograms' buckets.
pub const LATENCY_BUCKETS: [f64; 16] = BUCKETS;

/// How long a scrape waits for the key counts before it answers without
/// them.
const KEY_STATS_WAIT: Duration = Duration::from_secs(2);

/// Whether [`track`] leaves the route in the answer for [`access_log`].
static ACCESS_LOG: AtomicBool = AtomicBool::new(false);

/// Installs the process-wide recorder once; later calls reuse it.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(h) => {
                describe();
                Some(h)
            }
            Err(e) => {
                tracing::warn!(error = %e, "metrics recorder not installed");
                None
            }
        })
        .as_ref()
}

/// `# HELP` of the families set with the `metrics` macros across the crate
/// (`docs/operations.md` has the longer story).
fn describe() {
    use metrics::{describe_counter, describe_gauge};
    describe_counter!(
        "hsm_kms_activity_batches_total",
        "Activity-log batches written."
    );
    describe_counter!(
        "hsm_kms_activity_batch_records_total",
        "Records the activity-log batches carried."
    );
    describe_counter!(
        "hsm_kms_token_calls_total",
        "Token operations requests asked for, by class."
    );
    describe_counter!(
        "hsm_kms_audit_token_calls_total",
        "Token passes of the audit chain, by class."
    );
    describe_gauge!("hsm_kms_connections_open", "Connections open, by listener.");
    describe_counter!(
        "hsm_kms_connections_refused_total",
        "Connections refused at server.max_connections, by listener."
    );
    describe_counter!(
        "hsm_kms_find_objects_total",
        "C_FindObjects searches: enumerate (whole token) or lookup (one object)."
    );
    describe_counter!(
        "hsm_kms_gcm_reservations_total",
        "AES-GCM invocation blocks reserved on the request path (a key version's use found no reserved invocation left)."
    );
    describe_counter!(
        "hsm_kms_gcm_reservation_commits_total",
        "Commits of AES-GCM invocation reservations."
    );
    describe_counter!(
        "hsm_kms_gcm_first_blocks_total",
        "AES-GCM first blocks reserved at start, ahead of use, one per key version."
    );
    describe_counter!(
        "hsm_kms_gcm_first_block_commits_total",
        "Store transactions of the first blocks reserved at start."
    );
    describe_counter!(
        "hsm_kms_gcm_invocation_limit_refusals_total",
        "Encryptions refused at a key's AES-GCM invocation limit."
    );
    describe_gauge!("hsm_kms_handle_map_entries", "Objects in the handle map.");
    describe_gauge!("hsm_kms_handle_map_bytes", "Bytes the handle map holds.");
    describe_counter!(
        "hsm_kms_handle_refreshes_total",
        "Single-object look-ups by CKA_ID: stale (a handle refused) or unknown (not in the map)."
    );
    describe_gauge!(
        "hsm_kms_hsm_ready",
        "1 while a module generation serves, 0 while the module is re-initialised."
    );
    describe_counter!(
        "hsm_kms_hsm_recoveries_total",
        "Module re-initialisations that succeeded."
    );
    describe_counter!(
        "hsm_kms_hsm_late_view_reinits_total",
        "Module re-initialisations for a late view of the token."
    );
    describe_counter!(
        "hsm_kms_hsm_retries_total",
        "Operations run again after a repaired token fault."
    );
    describe_counter!(
        "hsm_kms_token_inline_calls_total",
        "Short symmetric token calls run on the request's executor thread (hsm.inline_symmetric)."
    );
    describe_counter!(
        "hsm_kms_key_commit_transactions_total",
        "Store transactions that committed key creations' pending rows and activations together."
    );
    describe_counter!(
        "hsm_kms_key_commit_writes_total",
        "Key creations' pending rows and activations committed by those transactions."
    );
    describe_counter!(
        "hsm_kms_key_material_missing_total",
        "Requests on a key version whose token object is gone."
    );
    describe_gauge!("hsm_kms_key_cache_entries", "Keys in the metadata cache.");
    describe_gauge!("hsm_kms_key_cache_bytes", "Bytes the metadata cache holds.");
    describe_gauge!("hsm_kms_startup_seconds", "Time of each start-up phase.");
}

/// The dialect and operation of an API route: NAVER's action names
/// (`Encrypt`, `CreateKey`, ... as `encrypt`, `create_key`), NHN's path
/// (`symmetric_keys_encrypt`, ...); `None` for the service's own routes.
fn classify(method: &str, template: &str) -> Option<(&'static str, String)> {
    if template.starts_with("/kms/") || template.starts_with("/keys/") {
        let op = match super::naver::action(method, template) {
            Some(action) => snake_case(action),
            None if method == "GET" && template == "/kms/v1/keys" => "list_keys".into(),
            None => generic_operation(method, template, 2),
        };
        Some(("naver", op))
    } else if template.starts_with("/keymanager/") {
        Some(("nhn", generic_operation(method, template, 4)))
    } else {
        None
    }
}

fn route_stats(method: &str, template: &str) -> &'static RouteStats {
    crate::telemetry::http::route(method, template, || classify(method, template))
}

/// The route an answer came from, for [`access_log`].
#[derive(Clone, Copy)]
struct Routed(&'static RouteStats);

/// Middleware counting requests and timing them per route template and
/// dialect operation (apply with `route_layer`: it needs the template).
pub async fn track(req: Request, next: Next) -> Response {
    let Some(stats) = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| route_stats(req.method().as_str(), m.as_str()))
    else {
        return next.run(req).await;
    };
    let start = Instant::now();
    let mut resp = next.run(req).await;
    stats.record(resp.status().as_u16(), start.elapsed());
    if ACCESS_LOG.load(Ordering::Relaxed) {
        resp.extensions_mut().insert(Routed(stats));
    }
    resp
}

/// Counts one answered request of `method` on route template `route` and
/// records its latency (what [`track`] does for each request).
pub fn record_request(method: &str, route: &str, status: u16, secs: f64) {
    route_stats(method, route).record(status, Duration::from_secs_f64(secs.max(0.0)));
}

/// Turns the access log on or off (process-wide; set by the router).
pub(crate) fn set_access_log(on: bool) {
    ACCESS_LOG.store(on, Ordering::Relaxed);
}

/// The kind of credentials a request presented (whether they checked is
/// in its status): from its headers and connection, never their values.
fn auth_kind(req: &Request) -> &'static str {
    let h = req.headers();
    let path = req.uri().path();
    if path.starts_with("/keymanager/") {
        if h.contains_key(super::auth::nhn::USER_ACCESS_KEY_HEADER) {
            "nhn_user_access_key"
        } else {
            "nhn_appkey"
        }
    } else if path.starts_with("/kms/") || path.starts_with("/keys/") {
        if h.contains_key(super::auth::ncp::SIGNATURE_V2) {
            "ncp_signature_v2"
        } else if h.contains_key(super::auth::ncp::SIGNATURE_V1) {
            "ncp_signature_v1"
        } else if h.contains_key("x-ncp-ocapi-token") {
            "ocapi_token"
        } else {
            "none"
        }
    } else {
        "none"
    }
}

/// The key tag or key id of `path`: the segment where `template` has
/// `{key_tag}` or `{keyid}`.
fn key_segment<'a>(template: &str, path: &'a str) -> Option<&'a str> {
    let at = template
        .split('/')
        .position(|s| s == "{key_tag}" || s == "{keyid}")?;
    path.split('/').nth(at).filter(|s| !s.is_empty())
}

/// Middleware writing one access-log line per request (apply outside the
/// request span: see the module documentation).
pub async fn access_log(req: Request, next: Next) -> Response {
    let start = Instant::now();
    let auth = auth_kind(&req);
    let id = req.headers().get("x-request-id").cloned();
    let method = req.method().clone();
    let uri = req.uri().clone();
    let resp = next.run(req).await;
    let took = start.elapsed();
    let routed = resp.extensions().get::<Routed>().copied();
    let (route, dialect, operation) = match routed {
        Some(Routed(r)) => {
            let (d, o) = r.operation().unwrap_or(("service", ""));
            (RouteStats::route(r), d, o)
        }
        None => ("unmatched", "service", ""),
    };
    let key = key_segment(route, uri.path()).map(crate::telemetry::fingerprint);
    tracing::info!(
        target: "access",
        request_id = id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("-"),
        method = method.as_str(),
        route,
        status = resp.status().as_u16(),
        duration_us = u64::try_from(took.as_micros()).unwrap_or(u64::MAX),
        dialect,
        operation,
        auth,
        key = key.as_deref().unwrap_or("-"),
        "request"
    );
    resp
}

/// `GET /metrics`.
pub async fn render(State(st): State<super::AppState>) -> Response {
    let Some(h) = handle() else {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "metrics unavailable",
        )
            .into_response();
    };
    let mut out = h.render();
    crate::telemetry::render(&mut out);
    match tokio::time::timeout(KEY_STATS_WAIT, st.engine.key_stats()).await {
        Ok(Ok(stats)) => stats.render(&mut out),
        Ok(Err(e)) => tracing::warn!(error = %e, "key counts for /metrics failed"),
        Err(_) => tracing::warn!("key counts for /metrics took too long"),
    }
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operations_and_key_segments() {
        assert_eq!(
            classify("POST", "/kms/v1/keys/{key_tag}/encrypt"),
            Some(("naver", "encrypt".into()))
        );
        assert_eq!(
            classify("POST", "/keys/v2/{key_tag}/createCustomKey"),
            Some(("naver", "create_custom_key".into()))
        );
        assert_eq!(
            classify("POST", "/kms/v1/keys"),
            Some(("naver", "create_key".into()))
        );
        assert_eq!(
            classify(
                "POST",
                "/keymanager/v1.2/appkey/{appkey}/symmetric-keys/{keyid}/decrypt"
            ),
            Some(("nhn", "symmetric_keys_decrypt".into()))
        );
        assert_eq!(classify("GET", "/metrics"), None);
        assert_eq!(
            key_segment("/kms/v1/keys/{key_tag}/encrypt", "/kms/v1/keys/abc/encrypt"),
            Some("abc")
        );
        assert_eq!(
            key_segment(
                "/keymanager/v1.2/appkey/{appkey}/secrets/{keyid}",
                "/keymanager/v1.2/appkey/APPKEY/secrets/k1"
            ),
            Some("k1")
        );
        assert_eq!(key_segment("/metrics", "/metrics"), None);
    }
}
