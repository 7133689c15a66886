//! The NAVER Cloud KMS dialect: API 2.0 under `/kms/v1`, with its success
//! envelope `{"code":"SUCCESS","data":...}` and its error envelope
//! `{"error":{"errorCode","message","details"}}`.

mod activity;
mod auth;
pub(crate) mod crypto;
pub(crate) mod format;
mod replay;
pub(crate) mod tokens;
mod v1;
pub(crate) mod v2;

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

/// Builds the NAVER routes: API 2.0 (account and token auth) and API 1.0,
/// with the per-key quota on crypto calls and the activity log on all.
pub fn router(state: AppState) -> axum::Router<AppState> {
    let crypto =
        v2::crypto_router()
            .merge(v1::router())
            .route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                rate_limit,
            ));
    v2::router()
        .merge(tokens::router())
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
                let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                *self.retry_after.lock().unwrap_or_else(|p| p.into_inner()) = Some(secs);
                format!(
                    "more than {} requests per second for this key",
                    self.limiter.rps
                )
            }
            Err(None) => format!(
                "a batch of {n} items is more than this key's burst allows; send fewer items"
            ),
        };
        Err(NaverError {
            status: StatusCode::TOO_MANY_REQUESTS,
            code: "400",
            message: "Rate Limited",
            details,
        })
    }
}

/// The key tag of a NAVER path: `/kms/v1/keys/{keyTag}/...` (API 2.0) or
/// `/keys/v{1,2}/{keyTag}/...` (API 1.0). A percent-encoded path has no tag
/// here ([`canonical_path`] refuses it before anything reads one).
pub(crate) fn key_tag_in(path: &str) -> Option<&str> {
    if path.contains('%') {
        return None;
    }
    let mut segs = path.split('/');
    match (
        segs.next(),
        segs.next(),
        segs.next(),
        segs.next(),
        segs.next(),
    ) {
        (Some(""), Some("kms"), Some("v1"), Some("keys"), Some(tag)) if !tag.is_empty() => {
            Some(tag)
        }
        (Some(""), Some("keys"), Some(_), Some(tag), _) if !tag.is_empty() => Some(tag),
        _ => None,
    }
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
    let Some(tag) = key_tag_in(req.uri().path()).map(str::to_string) else {
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
        assert_eq!(key_tag_in("/kms/v1/keys/abc/encrypt"), Some("abc"));
        assert_eq!(key_tag_in("/kms/v1/keys/abc"), Some("abc"));
        assert_eq!(key_tag_in("/keys/v1/abc/sign"), Some("abc"));
        assert_eq!(key_tag_in("/keys/v2/abc/verify"), Some("abc"));
        assert_eq!(key_tag_in("/kms/v1/keys"), None);
        assert_eq!(key_tag_in("/kms/v1/keys/"), None);
        assert_eq!(key_tag_in("/healthz"), None);
        assert_eq!(key_tag_in("/kms/v1/keys/%61bc/encrypt"), None);
        assert_eq!(key_tag_in("/keys/v2/ab%63/encrypt"), None);
    }
}
