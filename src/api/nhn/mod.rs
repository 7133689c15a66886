//! The NHN Cloud Secure Key Manager v1.2 dialect under
//! `/keymanager/v1.2/appkey/{appkey}/...` (and the `v1.0` key-store list),
//! with its envelope `{"header":{"resultCode","resultMessage",
//! "isSuccessful"},"body":...}`. Error codes: `docs/nhn-error-codes.md`.

mod data;
mod format;
mod manage;

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
use crate::core::nhn::{AuthFactor, NhnClient, NhnProject};
use crate::core::Error;

/// Builds the NHN routes.
pub fn router() -> axum::Router<AppState> {
    data::router().merge(manage::router())
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

    /// -1001, 400: base64, ciphertext or signature that does not parse or decrypt.
    pub fn invalid_user_data(detail: impl std::fmt::Display) -> Self {
        Self::new(StatusCode::BAD_REQUEST, -1001, "Invalid User Data", detail)
    }
}

impl From<Error> for NhnError {
    fn from(e: Error) -> Self {
        use StatusCode as S;
        let d = e.to_string();
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
        (
            self.status,
            Json(json!({
                "header": {"resultCode": self.code, "resultMessage": self.message, "isSuccessful": false},
                "body": null,
            })),
        )
            .into_response()
    }
}

/// Result of an NHN handler.
pub type NhnResult<T = Response> = Result<T, NhnError>;

/// The success envelope.
pub fn success<T: Serialize>(body: T) -> Response {
    Json(json!({
        "header": {"resultCode": 0, "resultMessage": "SUCCESS", "isSuccessful": true},
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

impl FromRequestParts<AppState> for NhnCtx {
    type Rejection = NhnError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let Path(params) =
            Path::<std::collections::HashMap<String, String>>::from_request_parts(parts, state)
                .await
                .map_err(|e| NhnError::bad_request(e.body_text()))?;
        let appkey = params
            .get("appkey")
            .ok_or_else(|| NhnError::bad_request("no appkey in the path"))?;
        let project = state.engine.nhn_project_by_appkey(appkey).await?;
        let (ak, sk) = user_access_key(parts);
        let user = state
            .engine
            .nhn_check_user_access_key(&project, ak, sk)
            .await?;
        let client = client_of(parts, &state.config.trusted_proxies);
        Ok(NhnCtx {
            project,
            user,
            client,
        })
    }
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
