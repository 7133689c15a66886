//! The NHN Cloud Secure Key Manager v1.2 dialect under
//! `/keymanager/v1.2/appkey/{appkey}/...` (and the `v1.0` key-store list),
//! with its envelope `{"header":{"resultCode","resultMessage",
//! "isSuccessful"},"body":...}`. Error codes: `docs/nhn-error-codes.md`.

pub(crate) mod audit;
pub(crate) mod data;
pub(crate) mod format;
pub(crate) mod manage;

use std::borrow::Cow;
use std::sync::Arc;

use axum::extract::{FromRequest, FromRequestParts, Path};
use axum::http::request::Parts;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;

use super::AppState;
use crate::api::auth::nhn::{client_of, user_access_key};
use crate::core::nhn::{appkey_fingerprint, AuthFactor, NhnCall, NhnClient, NhnProject};
use crate::core::Error;
use crate::telemetry::security::{auth_failure, AuthFailure};

/// Builds the NHN routes, each call recorded in the chained activity log
/// ([`audit::record`]).
pub fn router(state: AppState) -> axum::Router<AppState> {
    data::router()
        .merge(manage::router())
        .route_layer(axum::middleware::from_fn_with_state(state, audit::record))
}

/// An NHN error: HTTP status, negative `resultCode`, `resultMessage`.
#[derive(Debug)]
pub struct NhnError {
    /// HTTP status.
    pub status: StatusCode,
    /// `header.resultCode` (negative).
    pub code: i32,
    /// `header.resultMessage`.
    pub message: String,
}

impl NhnError {
    fn new(status: StatusCode, code: i32, title: &str, detail: impl std::fmt::Display) -> Self {
        NhnError {
            status,
            code,
            message: format!("{title}: {detail}"),
        }
    }

    /// -1000, 400: a parameter is missing, malformed or out of range.
    pub fn bad_request(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            -1000,
            "Invalid Request Parameter",
            detail,
        )
    }

    /// -1102, 401: a call that needs a User Access Key came without the
    /// `X-TC-AUTHENTICATION-ID` / `X-TC-AUTHENTICATION-SECRET` headers.
    pub fn user_access_key_required(call: NhnCall) -> Self {
        auth_failure(AuthFailure::UserAccessKeyMissing);
        let what = match call {
            NhnCall::Management => "management calls",
            NhnCall::Data => "every call",
        };
        Self::new(
            StatusCode::UNAUTHORIZED,
            -1102,
            "User Access Key Required",
            format!(
                "{what} of this project need a User Access Key \
                 (X-TC-AUTHENTICATION-ID and X-TC-AUTHENTICATION-SECRET)"
            ),
        )
    }

    /// -1001, 400: base64, ciphertext or signature that does not parse or decrypt.
    pub fn invalid_user_data(detail: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, -1001, "Invalid User Data", detail)
    }
}

/// An NHN path (`/keymanager/...`).
pub(crate) fn is_nhn_path(path: &str) -> bool {
    path.starts_with("/keymanager/")
}

/// The answer to a path no NHN route serves: 404 in NHN's envelope
/// (`-1900`, "Unknown API"; NHN publishes no code for it, like the others'
/// numbers it is ours).
pub(crate) fn unknown_route(method: &axum::http::Method) -> Response {
    NhnError::new(
        StatusCode::NOT_FOUND,
        -1900,
        "Unknown API",
        format!("no API at this path for {method}"),
    )
    .into_response()
}

/// The answer to an NHN route called with a method it does not serve: 405
/// in NHN's envelope (`-1901`, "Method Not Allowed"), with `Allow`.
pub(crate) fn wrong_method(method: &axum::http::Method) -> Response {
    NhnError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        -1901,
        "Method Not Allowed",
        format!("this path does not serve {method}"),
    )
    .into_response()
}

impl From<Error> for NhnError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let d = e.to_string();
        match &e {
            Error::NotFound("appkey") => auth_failure(AuthFailure::UnknownAppkey),
            Error::Unauthenticated(_) => auth_failure(AuthFailure::BadUserAccessKey),
            Error::KeyStoreAuth(AuthFactor::Ipv4) => auth_failure(AuthFailure::Ipv4),
            Error::KeyStoreAuth(AuthFactor::Mac) => auth_failure(AuthFailure::Mac),
            Error::KeyStoreAuth(AuthFactor::Certificate) => auth_failure(AuthFailure::Certificate),
            _ => {}
        }
        match &e {
            Error::InvalidInput(_) => {
                Self::new(S::BAD_REQUEST, -1000, "Invalid Request Parameter", d)
            }
            Error::DecryptFailed => Self::new(S::BAD_REQUEST, -1001, "Invalid User Data", d),
            Error::NotFound("appkey") => Self::new(S::UNAUTHORIZED, -1100, "Invalid Appkey", d),
            Error::Unauthenticated(_) => {
                Self::new(S::UNAUTHORIZED, -1101, "Invalid User Access Key", d)
            }
            Error::KeyStoreAuth(AuthFactor::Ipv4) => {
                Self::new(S::FORBIDDEN, -1200, "IPv4 Auth Failure", d)
            }
            Error::KeyStoreAuth(AuthFactor::Mac) => {
                Self::new(S::FORBIDDEN, -1201, "MAC Auth Failure", d)
            }
            Error::KeyStoreAuth(AuthFactor::Certificate) => {
                Self::new(S::FORBIDDEN, -1202, "Certificate Auth Failure", d)
            }
            Error::NotFound("key") => Self::new(S::NOT_FOUND, -1300, "Invalid Key ID", d),
            Error::NotFound("key version") => {
                Self::new(S::BAD_REQUEST, -1301, "Invalid Key Version", d)
            }
            Error::KeyDisabled => Self::new(
                S::BAD_REQUEST,
                -1302,
                "Invalid Key Status",
                "the key is scheduled for deletion",
            ),
            Error::InvalidState(_) => Self::new(S::BAD_REQUEST, -1302, "Invalid Key Status", d),
            Error::VersionDisabled(_) => {
                Self::new(S::BAD_REQUEST, -1303, "Invalid Key Version Status", d)
            }
            Error::WrongKeyType(t) => Self::new(
                S::BAD_REQUEST,
                -1304,
                "Invalid Key Type",
                format!("the key is a {t}"),
            ),
            Error::Forbidden(_) => Self::new(S::FORBIDDEN, -1400, "Key Export Not Allowed", d),
            Error::NotFound("key store") => Self::new(S::NOT_FOUND, -1500, "Invalid Key Store", d),
            Error::NotFound(_) => Self::new(S::NOT_FOUND, -1501, "Invalid Credential", d),
            Error::Conflict(_) => Self::new(S::CONFLICT, -1502, "Duplicated", d),
            Error::LimitExceeded(_) => Self::new(S::BAD_REQUEST, -1600, "Limit Exceeded", d),
            Error::Unavailable(_) => {
                Self::new(S::SERVICE_UNAVAILABLE, -9503, "Service Unavailable", d)
            }
            Error::KeyMaterialMissing => Self::new(
                S::SERVICE_UNAVAILABLE,
                -9504,
                "Key Material Missing",
                "the HSM no longer holds this key version's object; other keys are unaffected",
            ),
            Error::Internal(_) => Self::new(
                S::INTERNAL_SERVER_ERROR,
                -9999,
                "Internal Server Error",
                "see the server log",
            ),
        }
    }
}

impl IntoResponse for NhnError {
    fn into_response(self) -> Response {
        let mut resp = (
            self.status,
            Json(json!({
                "header": {"resultCode": self.code, "resultMessage": self.message, "isSuccessful": false},
                "body": null,
            })),
        )
            .into_response();
        resp.extensions_mut().insert(audit::ResultCode(self.code));
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            crate::api::retry_after(&mut resp);
        }
        resp
    }
}

/// Result of an NHN handler.
pub type NhnResult<T = Response> = Result<T, NhnError>;

/// The success `resultMessage`, as the API guide's common response header
/// writes it: `"resultCode": 0, "resultMessage": "success", "isSuccessful":
/// true`.
pub const SUCCESS_MESSAGE: &str = "success";

/// The success envelope.
pub fn success<T: Serialize>(body: T) -> Response {
    Json(json!({
        "header": {"resultCode": 0, "resultMessage": SUCCESS_MESSAGE, "isSuccessful": true},
        "body": body,
    }))
    .into_response()
}

/// A request's NHN context: the appkey's project, the user (User Access
/// Key id or the default), and what the server saw of the client.
#[derive(Debug, Clone)]
pub struct NhnCtx {
    /// The project the appkey names.
    pub project: Arc<NhnProject>,
    /// User recorded as creator / modifier.
    pub user: String,
    /// Client address, MAC header, TLS certificate.
    pub client: NhnClient,
}

impl NhnCtx {
    /// Appkey, then User Access Key as the class of call requires.
    async fn extract(parts: &mut Parts, state: &AppState, call: NhnCall) -> Result<Self, NhnError> {
        let Path(params) =
            Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|e| NhnError::bad_request(e.body_text()))?;
        let appkey = params
            .get("appkey")
            .ok_or_else(|| NhnError::bad_request("no appkey in the path"))?;
        let project = state.engine.nhn_project_by_appkey(appkey).await?;
        let (ak, sk) = user_access_key(parts);
        if ak.is_none() && sk.is_none() && project.requires_user_access_key(call) {
            return Err(NhnError::user_access_key_required(call));
        }
        let user = state
            .engine
            .nhn_check_user_access_key(&project, ak, sk, call)
            .await?;
        let client = client_of(parts, &state.config.trusted_proxies);
        if let Some(slot) = parts.extensions.get::<audit::AuditSlot>() {
            slot.set_caller(
                project.account_id,
                ak.map(|_| user.as_str()),
                appkey,
                &client,
            );
        }
        Ok(NhnCtx {
            project,
            user,
            client,
        })
    }
}

/// The context of a data call: the appkey, and the User Access Key only
/// where the project asks for it on data calls (the key store's checks come
/// with the key).
impl FromRequestParts<AppState> for NhnCtx {
    type Rejection = NhnError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        NhnCtx::extract(parts, state, NhnCall::Data).await
    }
}

/// The context of a management call: the appkey and, unless the project
/// turned it off, a valid User Access Key of the project (-1102 without
/// one, -1101 with a wrong one).
#[derive(Debug, Clone)]
pub struct ManageCtx(pub NhnCtx);

impl FromRequestParts<AppState> for ManageCtx {
    type Rejection = NhnError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        NhnCtx::extract(parts, state, NhnCall::Management)
            .await
            .map(ManageCtx)
    }
}

/// The request path as logged: an NHN appkey is a bearer credential, so the
/// segment after `/appkey/` is replaced by its fingerprint
/// ([`appkey_fingerprint`]); other paths are logged as they are.
pub fn loggable_path(path: &str) -> Cow<'_, str> {
    if !path.starts_with("/keymanager/") {
        return Cow::Borrowed(path);
    }
    let Some(at) = path.find("/appkey/").map(|i| i + "/appkey/".len()) else {
        return Cow::Borrowed(path);
    };
    let end = path[at..].find('/').map_or(path.len(), |i| at + i);
    Cow::Owned(format!(
        "{}[appkey {}]{}",
        &path[..at],
        appkey_fingerprint(&path[at..end]),
        &path[end..]
    ))
}

/// A JSON body whose rejections answer in the NHN envelope.
pub struct NhnJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for NhnJson<T> {
    type Rejection = NhnError;

    async fn from_request(
        req: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        crate::api::read_json(req, state)
            .await
            .map(NhnJson)
            .map_err(NhnError::bad_request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_appkey_is_not_in_the_logged_path() {
        let p = loggable_path("/keymanager/v1.2/appkey/SECRETappkey123/keys/x/create");
        assert!(!p.contains("SECRETappkey123"), "{p}");
        assert!(p.starts_with("/keymanager/v1.2/appkey/[appkey "), "{p}");
        assert!(p.ends_with("]/keys/x/create"), "{p}");
        let p = loggable_path("/keymanager/v1.0/appkey/SECRETappkey123");
        assert!(!p.contains("SECRETappkey123"), "{p}");
        assert_eq!(loggable_path("/kms/v1/keys"), "/kms/v1/keys");
    }
}
