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
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::core::Engine;

/// Settings the HTTP layer needs.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// Allowed skew of NCP signature timestamps, seconds.
    pub signature_window_secs: i64,
    /// NAVER `baseUrl` reported in key records (`naver.base_url`); `None`:
    /// each request's own scheme and `Host` ([`request_base_url`]).
    pub naver_base_url: Option<String>,
    /// Proxies whose `X-Forwarded-For` is trusted.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Largest request body, bytes.
    pub body_limit: usize,
    /// Per-key quota on crypto calls, when enabled.
    pub rate_limit: Option<ratelimit::KeyRateLimiter>,
    /// Items in one NAVER array request (`limits.max_batch_items`).
    pub max_batch_items: usize,
    /// Refuses a second use of an NCP signature on the calls it covers.
    pub replay_guard: Arc<naver::ReplayGuard>,
    /// `server.lean_requests`: counter request ids, borrowed span fields,
    /// success answers serialized straight into one buffer.
    pub lean_requests: bool,
    /// `log.access`: one `info` line per request ([`metrics::access_log`]).
    pub access_log: bool,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            signature_window_secs: 300,
            naver_base_url: None,
            trusted_proxies: vec![],
            body_limit: 1024 * 1024,
            rate_limit: None,
            max_batch_items: 100,
            replay_guard: Arc::new(
                naver::ReplayGuard::new(naver::ReplayMode::Management, 300, 100_000).shared(true),
            ),
            lean_requests: true,
            access_log: true,
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

/// The address [`client_ip`] answers when a trusted proxy forwarded a hop
/// that is not an address (`unknown`, an empty entry, text): the unspecified
/// IPv6 address `::`. No IPv4 check, registered address or sensible ACL rule
/// matches it, so such a request fails every address check, and the
/// activity log shows `::`.
pub const UNKNOWN_CLIENT: IpAddr = IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED);

/// The client address of a request.
///
/// A peer that is not in `trusted` is the client: its headers are ignored.
/// Behind trusted proxies, every `X-Forwarded-For` line is read in order
/// (HAProxy appends its own line, nginx appends to one comma list; both
/// forms, and mixes, read as one list), and the hops are walked from the
/// right: trusted proxies are skipped and the first untrusted hop is the
/// client. Entries on its left were written by the client itself and are
/// never believed. If every hop is trusted, the leftmost is the client.
/// A hop that is not an address (`unknown`, empty, garbage) stops the walk:
/// nothing on its left can be trusted and the hop on its right is a proxy,
/// not the client, so the answer is [`UNKNOWN_CLIENT`]. Hops may carry a
/// port (`192.0.2.1:4711`, `[2001:db8::1]:4711`), as some load balancers
/// write them.
///
/// RFC 7239 `Forwarded` is ignored: a proxy that sets only `Forwarded` must
/// be configured to set (append to) `X-Forwarded-For` as well, and a client
/// cannot use `Forwarded` to claim an address.
pub fn client_ip(peer: IpAddr, headers: &HeaderMap, trusted: &[ipnet::IpNet]) -> IpAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|n| n.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let mut hops: Vec<Option<IpAddr>> = Vec::new();
    for line in headers.get_all("x-forwarded-for") {
        match line.to_str() {
            Ok(text) => hops.extend(text.split(',').map(|h| parse_hop(h.trim()))),
            Err(_) => hops.push(None),
        }
    }
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop {
            Some(ip) if is_trusted(ip) => client = *ip,
            Some(ip) => return *ip,
            None => return UNKNOWN_CLIENT,
        }
    }
    client
}

/// One `X-Forwarded-For` entry: an address, optionally with a port.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    if let Ok(ip) = hop.parse::<IpAddr>() {
        return Some(ip);
    }
    if let Ok(sa) = hop.parse::<SocketAddr>() {
        return Some(sa.ip());
    }
    hop.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .and_then(|h| h.parse::<std::net::Ipv6Addr>().ok())
        .map(IpAddr::V6)
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Whether success answers are serialized straight into one buffer
/// (`server.lean_requests`); a process-wide switch since the dialects'
/// `success` functions take no state. Set by [`router`].
static LEAN_RESPONSES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// See [`LEAN_RESPONSES`].
pub(crate) fn lean_responses() -> bool {
    LEAN_RESPONSES.load(std::sync::atomic::Ordering::Relaxed)
}

/// `x-request-id` values for requests that come without one.
///
/// Lean (`server.lean_requests`): a random 64-bit prefix drawn once per
/// process and a counter, written as a UUID (unique within the process and,
/// with overwhelming probability, across processes; not secret, it only
/// ties log lines together). Otherwise a random (v4) UUID per request: one
/// `getrandom` system call each.
#[derive(Clone, Debug)]
pub struct RequestIds {
    sequence: Option<Arc<(u64, std::sync::atomic::AtomicU64)>>,
}

impl RequestIds {
    /// The generator of `server.lean_requests = lean`.
    pub fn new(lean: bool) -> Self {
        RequestIds {
            sequence: lean.then(|| {
                let prefix = uuid::Uuid::new_v4().as_u64_pair().0;
                Arc::new((prefix, std::sync::atomic::AtomicU64::new(0)))
            }),
        }
    }

    /// The next id.
    pub fn next_id(&self) -> uuid::Uuid {
        match &self.sequence {
            Some(s) => {
                let n = s.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                uuid::Uuid::from_u64_pair(s.0, n)
            }
            None => uuid::Uuid::new_v4(),
        }
    }
}

impl tower_http::request_id::MakeRequestId for RequestIds {
    fn make_request_id<B>(&mut self, _: &Request<B>) -> Option<tower_http::request_id::RequestId> {
        let mut buf = uuid::Uuid::encode_buffer();
        let text = self.next_id().hyphenated().encode_lower(&mut buf);
        axum::http::HeaderValue::from_str(text)
            .ok()
            .map(tower_http::request_id::RequestId::new)
    }
}

/// Builds the router of every dialect.
///
/// Two routers: the outer one carries the layers every request passes
/// (request ids, panic guard, trace, body limit, store guard) and hands
/// each request to [`naver::canonical_key_tag`], which spells a NAVER key
/// tag canonically before the inner router matches routes (a rewrite after
/// routing would not reach the path parameters). Paths and methods no route
/// serves answer in their dialect's envelope.
pub fn router(state: AppState) -> Router {
    let limit = state.config.body_limit;
    let lean = state.config.lean_requests;
    let access_log = state.config.access_log;
    LEAN_RESPONSES.store(lean, std::sync::atomic::Ordering::Relaxed);
    metrics::set_access_log(access_log);
    let routes = Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/openapi.json", get(openapi))
        .route("/metrics", get(metrics::render))
        .merge(naver::router(state.clone()))
        .merge(nhn::router(state.clone()))
        .route_layer(axum::middleware::from_fn(metrics::track))
        .method_not_allowed_fallback(wrong_method)
        .fallback(unknown_route)
        .with_state(state.clone());
    let canonical = axum::middleware::from_fn_with_state(state.clone(), naver::canonical_key_tag);
    let router = Router::new()
        .fallback_service(tower::Layer::layer(&canonical, routes))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            store_guard,
        ))
        .with_state(state)
        .layer(axum::extract::DefaultBodyLimit::max(limit))
        .layer(
            TraceLayer::new_for_http().make_span_with(move |req: &Request<_>| {
                let id = req
                    .headers()
                    .get(REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("-");
                // Only the path: query strings and headers are not logged.
                // NHN appkeys (bearer credentials in the path) as fingerprints.
                let path = nhn::loggable_path(req.uri().path());
                if lean {
                    // Fields as strings, not through `Display`: the JSON
                    // formatter records them without a formatting pass.
                    tracing::info_span!(
                        "request",
                        id,
                        method = req.method().as_str(),
                        path = &*path
                    )
                } else {
                    tracing::info_span!("request", id = %id, method = %req.method(), path = %path)
                }
            }),
        );
    // Outside the request span: the access line carries no path.
    let router = if access_log {
        router.layer(axum::middleware::from_fn(metrics::access_log))
    } else {
        router
    };
    router
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, RequestIds::new(lean)))
}

/// A path no route serves: 404 in the dialect's envelope under a dialect's
/// prefix, an empty 404 elsewhere (issue 13).
async fn unknown_route(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if naver::is_naver_path(path) {
        naver::unknown_route(&method, path)
    } else if nhn::is_nhn_path(path) {
        nhn::unknown_route(&method)
    } else {
        StatusCode::NOT_FOUND.into_response()
    }
}

/// A served path called with another method: 405 in the dialect's envelope
/// under a dialect's prefix, an empty 405 elsewhere; axum adds `Allow`.
async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    let path = uri.path();
    if naver::is_naver_path(path) {
        naver::wrong_method(&method, path)
    } else if nhn::is_nhn_path(path) {
        nhn::wrong_method(&method)
    } else {
        StatusCode::METHOD_NOT_ALLOWED.into_response()
    }
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
        Err(e) => {
            let mut resp =
                (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}")).into_response();
            retry_after(&mut resp);
            resp
        }
    }
}

/// Adds `Retry-After` ([`crate::core::RETRY_AFTER_SECS`]) to a 503 unless
/// it has one.
pub(crate) fn retry_after(resp: &mut Response) {
    resp.headers_mut()
        .entry(axum::http::header::RETRY_AFTER)
        .or_insert_with(|| axum::http::HeaderValue::from(crate::core::RETRY_AFTER_SECS));
}

/// Refuses every API call once the store file was deleted or replaced
/// under the service, in the dialect's envelope. The file is checked (one
/// `stat`) before each call, so that a call does not start on a lost store,
/// and after it, so that an answer computed on a file that is no longer the
/// store (its writes lost, its reads stale) is not sent. `/healthz`,
/// `/readyz`, `/metrics` and `/openapi.json` are not API calls.
async fn store_guard(
    State(st): State<AppState>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let nhn = path.starts_with("/keymanager/");
    if !(nhn || path.starts_with("/kms/") || path.starts_with("/keys/")) {
        return next.run(req).await;
    }
    let lost = |nhn: bool| {
        let e = crate::core::Error::Unavailable(
            "the metadata store is lost (deleted or replaced); see the server log".into(),
        );
        if nhn {
            nhn::NhnError::from(e).into_response()
        } else {
            naver::NaverError::from(e).into_response()
        }
    };
    if !st.engine.store_file_ok() {
        return lost(nhn);
    }
    let resp = next.run(req).await;
    if !st.engine.store_file_ok() {
        return lost(nhn);
    }
    resp
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
    parse_json(&bytes)
}

/// The body rule of [`read_json`]: empty or blank reads as `{}`, anything
/// else must be JSON of `T`.
pub fn parse_json<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let body: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        bytes
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

    fn xff(lines: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for l in lines {
            h.append("x-forwarded-for", l.parse().unwrap());
        }
        h
    }

    /// Issue 8, item 4: every line is read, from the right.
    #[test]
    fn item4_every_forwarded_line_walked_from_the_right() {
        let trusted: Vec<ipnet::IpNet> = vec![
            "10.0.0.0/8".parse().unwrap(),
            "127.0.0.1/32".parse().unwrap(),
        ];
        let proxy: IpAddr = "127.0.0.1".parse().unwrap();
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        let cases: &[(&[&str], IpAddr)] = &[
            // HAProxy: the client's forged line first, the proxy's own line last.
            (&["198.51.100.7", "203.0.113.9"], ip("203.0.113.9")),
            (&["203.0.113.9", "198.51.100.7"], ip("198.51.100.7")),
            // nginx: one list.
            (&["198.51.100.7, 203.0.113.9"], ip("203.0.113.9")),
            (&["198.51.100.7, 203.0.113.9, 10.1.1.1"], ip("203.0.113.9")),
            (
                &["198.51.100.7", "203.0.113.9, 10.1.1.1"],
                ip("203.0.113.9"),
            ),
            // Every hop trusted: the leftmost.
            (&["10.3.3.3, 10.1.1.1"], ip("10.3.3.3")),
            // Ports, as some load balancers write them.
            (&["198.51.100.7, 203.0.113.9:4711"], ip("203.0.113.9")),
            (&["[2001:db8::1]:4711"], ip("2001:db8::1")),
            (&["[2001:db8::1]"], ip("2001:db8::1")),
            // Garbage where the client should be: unknown, never the proxy.
            (&["198.51.100.7, unknown, 10.1.1.1"], UNKNOWN_CLIENT),
            (&["198.51.100.7, , 10.1.1.1"], UNKNOWN_CLIENT),
            (&["198.51.100.7", ""], UNKNOWN_CLIENT),
            // Garbage left of the client does not matter.
            (&["junk, 203.0.113.9"], ip("203.0.113.9")),
            (&["junk", "203.0.113.9"], ip("203.0.113.9")),
            // No header: the peer.
            (&[], proxy),
        ];
        for (lines, want) in cases {
            assert_eq!(client_ip(proxy, &xff(lines), &trusted), *want, "{lines:?}");
        }
        // Forwarded (RFC 7239) is not read.
        let mut h = HeaderMap::new();
        h.insert("forwarded", "for=198.51.100.7".parse().unwrap());
        assert_eq!(client_ip(proxy, &h, &trusted), proxy);
        // A line that is not text is garbage too.
        let mut h = xff(&["198.51.100.7"]);
        h.append(
            "x-forwarded-for",
            axum::http::HeaderValue::from_bytes(b"\xff\xfe").unwrap(),
        );
        assert_eq!(client_ip(proxy, &h, &trusted), UNKNOWN_CLIENT);
        // An untrusted peer's headers are ignored entirely.
        let peer = ip("203.0.113.50");
        assert_eq!(client_ip(peer, &xff(&["198.51.100.7"]), &trusted), peer);
    }
}
