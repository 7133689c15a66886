//! HTTP surface: one module per dialect, shared authentication, and the
//! service's own endpoints (`/healthz`, `/readyz`, `/openapi.json`).

pub mod auth;
pub mod metrics;
pub mod naver;
pub mod nhn;
pub mod ratelimit;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::core::Engine;

/// Settings the HTTP layer needs.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Allowed skew of NCP signature timestamps, seconds.
    pub signature_window_secs: i64,
    /// NAVER `baseUrl` reported in key records.
    pub naver_base_url: String,
    /// Proxies whose `X-Forwarded-For` is trusted.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// Per-key quota on crypto calls, when enabled.
    pub rate_limit: Option<ratelimit::KeyRateLimiter>,
    /// Items in one NAVER array request (`limits.max_batch_items`).
    pub max_batch_items: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            signature_window_secs: 300,
            naver_base_url: "https://ocapi.ncloud.com".into(),
            trusted_proxies: vec![],
            body_limit: 1024 * 1024,
            rate_limit: None,
            max_batch_items: 100,
        }
    }
}

/// Shared state of every handler.
#[derive(Clone, Debug)]
pub struct AppState {
    /// The engine.
    pub engine: Engine,
    /// HTTP settings.
    pub config: Arc<ApiConfig>,
}

/// The client address: the socket peer, or the first untrusted hop of
/// `X-Forwarded-For` when the peer is a trusted proxy.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    if !trusted.iter().any(|n| n.contains(&peer)) {
        return peer;
    }
    let Some(xff) = headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) else {
        return peer;
    };
    // Walk from the nearest hop back; the first address that is not a
    // trusted proxy is the client.
    let mut client = peer;
    for hop in xff.rsplit(',').map(str::trim) {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !trusted.iter().any(|n| n.contains(&ip)) {
                    break;
                }
            }
            Err(_) => break,
        }
    }
    client
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Builds the router of every dialect.
pub fn router(state: AppState) -> Router {
    let limit = state.config.body_limit;
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics::render))
        .merge(naver::router(state.clone()))
        .merge(nhn::router())
        .route_layer(axum::middleware::from_fn(metrics::track))
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &Request<_>| {
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                // Only the path: query strings and headers are not logged.
                // NHN appkeys (bearer credentials in the path) as fingerprints.
                let path = nhn::loggable_path(req.uri().path());
                tracing::info_span!("request", id = %id, method = %req.method(), path = %path)
            }),
        )
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
}

/// A panic in a handler is a bug; the client gets a 500 in an envelope both
/// dialects' clients parse as an error, never a dropped connection.
fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    tracing::error!("a request handler panicked");
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({
            "error": {"errorCode": "900", "message": "Unexpected Error", "details": "internal error"},
            "header": {"resultCode": -1, "resultMessage": "internal error", "isSuccessful": false}
        })),
    )
        .into_response()
}

async fn readyz(State(st): State<AppState>) -> Response {
    match st.engine.ready().await {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")).into_response(),
    }
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        include_str!("../../docs/openapi.json"),
    )
        .into_response()
}

/// Reads a JSON body for a dialect's extractor; an empty body reads as `{}`
/// (endpoints whose fields are all optional). The error is the text the
/// dialect puts in its 400 envelope.
pub async fn read_json<T: serde::de::DeserializeOwned>(
    req: axum::extract::Request,
    state: &AppState,
) -> Result<T, String> {
    use axum::extract::FromRequest as _;
    let bytes = axum::body::Bytes::from_request(req, state)
        .await
        .map_err(|e| format!("cannot read the request body: {e}"))?;
    let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &bytes
    };
    serde_json::from_slice(body).map_err(|e| format!("malformed JSON body: {e}"))
}

/// The peer address, when the server was started with connect info.
pub fn peer_ip(ci: Option<&ConnectInfo<SocketAddr>>) -> IpAddr {
    ci.map(|c| c.0.ip())
        .unwrap_or(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xff_only_from_trusted_proxies() {
        let trusted: Vec<ipnet::IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", "203.0.113.7, 10.1.1.1".parse().unwrap());
        let direct: IpAddr = "198.51.100.1".parse().unwrap();
        assert_eq!(client_ip(direct, &h, &trusted), direct);
        let proxy: IpAddr = "10.2.2.2".parse().unwrap();
        assert_eq!(
            client_ip(proxy, &h, &trusted),
            "203.0.113.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(client_ip(proxy, &HeaderMap::new(), &trusted), proxy);
    }
}
