//! The NAVER Cloud KMS dialect: API 2.0 under `/kms/v1`, with its success
//! envelope `{"code":"SUCCESS","data":...}` and its error envelope
//! `{"error":{"errorCode","message","details"}}`; API 1.0 (`v1.rs`) and
//! v3 (`v3.rs`, `/kms/v3`) on the same keys.

mod activity;
mod auth;
pub(crate) mod crypto;
pub(crate) mod format;
mod replay;
pub(crate) mod tokens;
mod v1;
pub(crate) mod v2;
mod v3;

pub use activity::action;
pub use auth::{AccountAuth, Caller};
pub use format::{format_sealed, parse_sealed};
pub use replay::{Admitted, ReplayError, ReplayGuard, ReplayMode};

use axum::extract::FromRequest;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::AppState;
use crate::core::Error;

/// Builds the NAVER routes: API 2.0 (account and token auth), API 1.0 and
/// v3,
/// with the per-key quota on crypto calls and the activity log on all.
pub fn router(state: AppState) -> axum::Router<AppState> {
    let crypto = v2::crypto_router()
        .merge(v1::router())
        .merge(v3::crypto_router())
        .merge(v3::token_router())
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            rate_limit,
        ));
    v2::router()
        .merge(tokens::router())
        .merge(v3::router())
        .merge(crypto)
        .route_layer(axum::middleware::from_fn_with_state(
            state,
            activity::record,
        ))
        .route_layer(axum::middleware::from_fn(canonical_path))
}

/// Refuses a NAVER path that carries percent-encoding, before
/// authentication, quota and activity log see it (issue 8, item 3).
///
/// Key tags are hex text and versions numbers: no NAVER path ever needs
/// encoding. The router decodes path parameters, so `%31ab...` and `1ab...`
/// would reach the handler as the same key while the quota and the log,
/// which read the path as sent, saw two different ones (a fresh quota bucket
/// per spelling, calls with no activity record). Refusing every other
/// spelling makes the tag as sent the tag the handler uses, on every route.
async fn canonical_path(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    if req.uri().path().contains('%') {
        return NaverError::bad_request(
            "the path must not be percent-encoded: send the key tag as it is (hex text)",
        )
        .into_response();
    }
    next.run(req).await
}

/// The per-key quota of one crypto request. The middleware below puts it in
/// the request; the [`Caller`] extractor takes from it once the caller is
/// authenticated, so requests without valid credentials never use up a key's
/// quota (nor fill the limiter with made-up key tags).
#[derive(Debug, Clone)]
pub(crate) struct QuotaGate {
    limiter: crate::api::ratelimit::KeyRateLimiter,
    tag: String,
    retry_after: std::sync::Arc<std::sync::Mutex<Option<u64>>>,
}

impl QuotaGate {
    /// Takes one request from the key's bucket: 429 when it is empty.
    pub(crate) fn take(&self) -> Result<(), NaverError> {
        self.take_n(1)
    }

    /// Takes `n` requests (the items of a batch) from the key's bucket, all
    /// or none: 429 when they are not there.
    pub(crate) fn take_n(&self, n: u32) -> Result<(), NaverError> {
        let details = match self.limiter.check_n(&self.tag, n) {
            Ok(()) => return Ok(()),
            Err(Some(wait)) => {
                crate::telemetry::security::quota_refused("naver", &self.tag);
                let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                *self.retry_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(secs);
                format!(
                    "more than {} requests per second for this key",
                    self.limiter.rps
                )
            }
            Err(None) => {
                crate::telemetry::security::quota_refused("naver", &self.tag);
                format!(
                    "a batch of {n} items is more than this key's burst allows; send fewer items"
                )
            }
        };
        Err(NaverError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "400",
            message: "Rate Limited",
            details,
        })
    }
}

/// Where the key tag sits in a NAVER path: `/kms/v1/keys/{keyTag}/...`
/// (API 2.0), `/kms/v3/keys/{keyTag}/...` (v3) or `/keys/v{1,2}/{keyTag}/...`
/// (API 1.0), as a byte range.
fn key_tag_span(path: &str) -> Option<std::ops::Range<usize>> {
    let rest = if let Some(r) = path
        .strip_prefix("/kms/v1/keys/")
        .or_else(|| path.strip_prefix("/kms/v3/keys/"))
        .or_else(|| path.strip_prefix("/kms/v3/token/keys/"))
    {
        r
    } else {
        let r = path.strip_prefix("/keys/")?;
        let (_, r) = r.split_once('/')?;
        r
    };
    let start = path.len() - rest.len();
    let len = rest.find('/').unwrap_or(rest.len());
    (len > 0).then(|| start..start + len)
}

/// The key tag of a NAVER path: `/kms/v1/keys/{keyTag}/...` (API 2.0),
/// `/kms/v3/keys/{keyTag}/...` (v3) or `/keys/v{1,2}/{keyTag}/...` (API
/// 1.0), as [`canonical_key_tag`] left it (lower case for a key tag). A
/// percent-encoded path has no tag here ([`canonical_path`] refuses it before anything reads one).
pub(crate) fn key_tag_in(path: &str) -> Option<&str> {
    if path.contains('%') {
        return None;
    }
    key_tag_span(path).map(|r| &path[r])
}

/// Spells the key tag of a NAVER path canonically (lower case) before the
/// router, authentication, quota, activity log and handlers read it, and
/// refuses a key isolated in another region with the 400 NAVER documents.
///
/// NAVER: "the region prefix and the hex digits are not case-sensitive";
/// every other spelling of one tag would otherwise be another key to the
/// store lookup and a fresh quota bucket and log name (issue 8, item 3). The
/// one parser is [`crate::core::naver::KeyTag`]. The NCP signature covers
/// the path as the client sent it: [`auth`] checks it against
/// [`axum::extract::OriginalUri`], which this keeps.
pub(crate) async fn canonical_key_tag(
    axum::extract::State(st): axum::extract::State<AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let path = req.uri().path();
    let Some(span) = key_tag_span(path).filter(|_| !path.contains('%')) else {
        return next.run(req).await;
    };
    // Already canonical (what clients send): the region check only, no
    // copy of the tag and no new URI.
    match st.engine.naver_key_tag_is_canonical(&path[span.clone()]) {
        Ok(true) => return next.run(req).await,
        Ok(false) => {}
        Err(e) => return in_dialect(path, NaverError::from(e)),
    }
    let tag = match st.engine.naver_key_tag(&path[span.clone()]) {
        Ok(Some(tag)) => tag,
        Ok(None) => return next.run(req).await,
        Err(e) => return in_dialect(path, NaverError::from(e)),
    };
    if tag.as_str() != &path[span.clone()] {
        let mut canonical = String::with_capacity(path.len() + 8);
        canonical.push_str(&path[..span.start]);
        canonical.push_str(tag.as_str());
        canonical.push_str(&path[span.end..]);
        if let Some(q) = req.uri().query() {
            canonical.push('?');
            canonical.push_str(q);
        }
        let original = req.uri().clone();
        let mut parts = original.clone().into_parts();
        parts.path_and_query = canonical.parse().ok();
        match axum::http::Uri::from_parts(parts) {
            Ok(uri) => {
                req.extensions_mut()
                    .get_or_insert_with(|| axum::extract::OriginalUri(original));
                *req.uri_mut() = uri;
            }
            Err(_) => {
                return NaverError::bad_request("the path does not parse").into_response();
            }
        }
    }
    next.run(req).await
}

/// The `baseUrl` of NAVER key records: `naver.base_url` when set, else the
/// URL this request was sent to (scheme and `Host`), never NAVER's own
/// host. The scheme is `https` on the TLS listener and `http` on the plain
/// one; behind a proxy listed in `server.trusted_proxies` its
/// `X-Forwarded-Proto` (the rightmost value, the one the nearest proxy
/// wrote) says which the client used. From any other peer the header is
/// ignored.
#[derive(Debug, Clone)]
pub(crate) struct BaseUrl(pub String);

impl axum::extract::FromRequestParts<AppState> for BaseUrl {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(BaseUrl(request_base_url(parts, state)))
    }
}

fn request_base_url(parts: &axum::http::request::Parts, state: &AppState) -> String {
    if let Some(url) = &state.config.naver_base_url {
        return url.clone();
    }
    let tls = parts
        .extensions
        .get::<crate::api::auth::nhn::TlsClientCert>()
        .is_some();
    let mut scheme = if tls { "https" } else { "http" };
    let peer = crate::api::peer_ip(
        parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>(),
    );
    if state
        .config
        .trusted_proxies
        .iter()
        .any(|n| n.contains(&peer))
    {
        let forwarded = parts
            .headers
            .get_all("x-forwarded-proto")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .next_back()
            .map(|p| p.trim().to_ascii_lowercase());
        match forwarded.as_deref() {
            Some("https") => scheme = "https",
            Some("http") => scheme = "http",
            _ => {}
        }
    }
    let host = parts
        .headers
        .get(axum::http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok())
        .or_else(|| parts.uri.authority().cloned())
        .filter(|a| !a.as_str().contains('@'));
    match host {
        Some(host) => format!("{scheme}://{host}"),
        None => format!("{scheme}://localhost"),
    }
}

/// A NAVER path (API 2.0 under `/kms/`, API 1.0 under `/keys/`).
pub(crate) fn is_naver_path(path: &str) -> bool {
    path.starts_with("/kms/") || path.starts_with("/keys/")
}

/// The answer to a path no NAVER route serves: 404 in NAVER's envelope
/// (`300` / Not Found, the code of its 404s).
pub(crate) fn unknown_route(method: &axum::http::Method, path: &str) -> Response {
    let e = NaverError {
        status: StatusCode::NOT_FOUND,
        code: "300",
        message: "Not Found",
        details: format!("no API at {method} {path}"),
    };
    in_dialect(path, e)
}

/// `e` as the API of `path` answers it: v3's envelope and code names under
/// `/kms/v3/`, API 2.0's elsewhere.
fn in_dialect(path: &str, e: NaverError) -> Response {
    if path.starts_with("/kms/v3/") {
        v3::V3Error::from(e).into_response()
    } else {
        e.into_response()
    }
}

/// The answer to a NAVER route called with a method it does not serve:
/// 405 in NAVER's envelope (`100`, its request-error code), with `Allow`.
pub(crate) fn wrong_method(method: &axum::http::Method, path: &str) -> Response {
    let e = NaverError {
        status: StatusCode::METHOD_NOT_ALLOWED,
        code: "100",
        message: "Method Not Allowed",
        details: format!("{path} does not serve {method}"),
    };
    in_dialect(path, e)
}

/// Per-key quota middleware for crypto routes: hands the request a
/// [`QuotaGate`] and adds `Retry-After` to an answer the gate refused.
async fn rate_limit(
    axum::extract::State(st): axum::extract::State<AppState>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(limiter) = &st.config.rate_limit else {
        return next.run(req).await;
    };
    let Some(tag) = key_tag_in(req.uri().path()).map(str::to_owned) else {
        return next.run(req).await;
    };
    let gate = QuotaGate {
        limiter: limiter.clone(),
        tag,
        retry_after: Default::default(),
    };
    req.extensions_mut().insert(gate.clone());
    let mut resp = next.run(req).await;
    let retry_after = *gate.retry_after.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(secs) = retry_after {
        if let Ok(v) = axum::http::HeaderValue::from_str(&secs.to_string()) {
            resp.headers_mut()
                .insert(axum::http::header::RETRY_AFTER, v);
        }
    }
    resp
}

/// A NAVER error: HTTP status, `errorCode`, `message` and `details`.
#[derive(Debug)]
pub struct NaverError {
    /// HTTP status.
    pub status: StatusCode,
    /// `error.errorCode`.
    pub code: &'static str,
    /// `error.message`.
    pub message: &'static str,
    /// `error.details`.
    pub details: String,
}

impl NaverError {
    /// 400 / `100` / Bad Request.
    pub fn bad_request(details: impl Into<String>) -> Self {
        NaverError {
            status: StatusCode::BAD_REQUEST,
            code: "100",
            message: "Bad Request",
            details: details.into(),
        }
    }

    /// 503 / `900` / Service Unavailable: a bounded resource is full.
    pub fn unavailable(details: impl Into<String>) -> Self {
        NaverError {
            status: StatusCode::SERVICE_UNAVAILABLE,
            code: "900",
            message: "Service Unavailable",
            details: details.into(),
        }
    }

    /// 401 / `200` / Authentication Failed.
    pub fn unauthenticated(details: impl Into<String>) -> Self {
        NaverError {
            status: StatusCode::UNAUTHORIZED,
            code: "200",
            message: "Authentication Failed",
            details: details.into(),
        }
    }
}

impl From<Error> for NaverError {
    fn from(e: Error) -> Self {
        let details = e.to_string();
        let (status, code, message) = match &e {
            Error::InvalidInput(_)
            | Error::InvalidState(_)
            | Error::WrongKeyType(_)
            | Error::DecryptFailed
            | Error::Conflict(_)
            | Error::LimitExceeded(_) => (StatusCode::BAD_REQUEST, "100", "Bad Request"),
            Error::Unauthenticated(_) => (StatusCode::UNAUTHORIZED, "200", "Authentication Failed"),
            Error::KeyStoreAuth(_) => (StatusCode::UNAUTHORIZED, "210", "Permission Denied"),
            Error::Forbidden(_) | Error::KeyDisabled | Error::VersionDisabled(_) => {
                (StatusCode::FORBIDDEN, "230", "Forbidden")
            }
            Error::NotFound(_) => (StatusCode::NOT_FOUND, "300", "Not Found"),
            Error::Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "900",
                "Service Unavailable",
            ),
            Error::KeyMaterialMissing => {
                return NaverError::unavailable(
                    "key material missing from the HSM: the token no longer holds this key \
                     version's object; other keys are unaffected",
                )
            }
            Error::Internal(_) => {
                return NaverError {
                    status: StatusCode::INTERNAL_SERVER_ERROR,
                    code: "900",
                    message: "Unexpected Error",
                    details: "an internal error occurred; see the server log".into(),
                }
            }
        };
        NaverError {
            status,
            code,
            message,
            details,
        }
    }
}

impl IntoResponse for NaverError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({"error": {"errorCode": self.code, "message": self.message, "details": self.details}})),
        )
            .into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            crate::api::retry_after(&mut resp);
        }
        resp
    }
}

/// Result of a NAVER handler.
pub type NaverResult<T> = Result<T, NaverError>;

/// The success envelope `{"code":"SUCCESS","data":...}`.
///
/// With `server.lean_requests`, serialized straight from `data` into one
/// buffer sized for a typical answer (no `serde_json::Value` tree, no
/// regrowth); otherwise through a `Value`, the earlier way.
pub fn success<T: Serialize>(data: T) -> Response {
    if !crate::api::lean_responses() {
        return Json(json!({"code": "SUCCESS", "data": data})).into_response();
    }
    #[derive(Serialize)]
    struct Success<T> {
        code: &'static str,
        data: T,
    }
    let mut buf = Vec::with_capacity(512);
    match serde_json::to_writer(
        &mut buf,
        &Success {
            code: "SUCCESS",
            data,
        },
    ) {
        Ok(()) => (
            [(
                axum::http::header::CONTENT_TYPE,
                axum::http::HeaderValue::from_static("application/json"),
            )],
            buf,
        )
            .into_response(),
        Err(e) => {
            NaverError::from(Error::Internal(format!("serializing an answer: {e}"))).into_response()
        }
    }
}

/// A JSON body whose rejections answer in the NAVER envelope. An empty body
/// reads as `{}`, for endpoints whose fields are all optional.
pub struct NaverJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for NaverJson<T> {
    type Rejection = NaverError;

    async fn from_request(
        req: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        crate::api::read_json(req, state)
            .await
            .map(NaverJson)
            .map_err(NaverError::bad_request)
    }
}

#[cfg(test)]
mod tests {
    use super::key_tag_in;

    #[test]
    fn key_tags_of_both_apis() {
        fn tag(p: &str) -> Option<String> {
            key_tag_in(p).map(str::to_owned)
        }
        assert_eq!(tag("/kms/v1/keys/abc/encrypt").as_deref(), Some("abc"));
        assert_eq!(tag("/kms/v1/keys/abc").as_deref(), Some("abc"));
        assert_eq!(tag("/keys/v1/abc/sign").as_deref(), Some("abc"));
        assert_eq!(tag("/keys/v2/abc/verify").as_deref(), Some("abc"));
        let hex = "AB".repeat(32);
        // As spelled: canonical_key_tag lower-cases it before anything reads it.
        let path = format!("/kms/v3/keys/{hex}/encrypt");
        assert_eq!(tag(&path), Some(hex.clone()));
        assert_eq!(tag("/kms/v3/keys/XYZ/encrypt").as_deref(), Some("XYZ"));
        assert_eq!(
            tag("/kms/v3/token/keys/abc/batch-encrypt").as_deref(),
            Some("abc")
        );
        assert_eq!(key_tag_in("/kms/v1/keys"), None);
        assert_eq!(key_tag_in("/kms/v1/keys/"), None);
        assert_eq!(key_tag_in("/healthz"), None);
        assert_eq!(key_tag_in("/kms/v1/keys/%61bc/encrypt"), None);
        assert_eq!(key_tag_in("/keys/v2/ab%63/encrypt"), None);
        assert_eq!(key_tag_in("/keys/v1"), None);
        assert_eq!(key_tag_in("/keys/v1/"), None);
        assert_eq!(key_tag_in("/kms/v1/keys/kr-ABC/sign"), Some("kr-ABC"));
    }
}
