//! NAVER KMS API 1.0: the six crypto calls under `/keys/v1/{keyTag}/...`
//! (API Gateway signature v1, with `x-ncp-apigw-api-key`) and
//! `/keys/v2/{keyTag}/...` (signature v2), on the same keys as API 2.0.
//!
//! Answers use the 1.0 envelope `{"code","msg","data"}`; array inputs give
//! `ciphertextList` / `plaintextList`. A request the service understood but
//! refused for its data (bad base64, too long, wrong key state or type, a
//! ciphertext that does not decrypt) answers HTTP 200 with a `code` other than
//! `SUCCESS`, as the vendor documents; authentication, missing keys, access
//! and quota errors use the API Gateway error envelope and status.

use axum::extract::{FromRequest, Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};

use super::auth::Caller;
use super::crypto;
use super::format::OneOrMany;
use super::NaverError;
use crate::api::AppState;
use crate::core::Error;
use crate::core::KeyUid;

pub(super) fn router() -> Router<AppState> {
    // Literal paths, one per route, so tests/openapi.rs can find each one.
    // `/keys/v1` takes signature v1, `/keys/v2` signature v2 (see `Caller`).
    Router::new()
        .route("/keys/v1/{key_tag}/encrypt", post(encrypt))
        .route("/keys/v1/{key_tag}/decrypt", post(decrypt))
        .route(
            "/keys/v1/{key_tag}/createCustomKey",
            post(create_custom_key),
        )
        .route(
            "/keys/v1/{key_tag}/create-custom-key",
            post(create_custom_key),
        )
        .route("/keys/v1/{key_tag}/reencrypt", post(reencrypt))
        .route("/keys/v1/{key_tag}/re-encrypt", post(reencrypt))
        .route("/keys/v1/{key_tag}/sign", post(sign))
        .route("/keys/v1/{key_tag}/verify", post(verify))
        .route("/keys/v2/{key_tag}/encrypt", post(encrypt))
        .route("/keys/v2/{key_tag}/decrypt", post(decrypt))
        .route(
            "/keys/v2/{key_tag}/createCustomKey",
            post(create_custom_key),
        )
        .route(
            "/keys/v2/{key_tag}/create-custom-key",
            post(create_custom_key),
        )
        .route("/keys/v2/{key_tag}/reencrypt", post(reencrypt))
        .route("/keys/v2/{key_tag}/re-encrypt", post(reencrypt))
        .route("/keys/v2/{key_tag}/sign", post(sign))
        .route("/keys/v2/{key_tag}/verify", post(verify))
}

/// An API 1.0 failure.
#[derive(Debug)]
pub enum V1Error {
    /// API Gateway style: `{"error":{...}}` with a 4xx/5xx status.
    Gateway(NaverError),
    /// HTTP 200 with `{"code": code, "msg": msg, "data": null}`.
    Fail {
        /// Failure code.
        code: &'static str,
        /// Message.
        msg: String,
    },
}

impl V1Error {
    fn invalid(msg: impl Into<String>) -> Self {
        V1Error::Fail {
            code: "INVALID_PARAMETER",
            msg: msg.into(),
        }
    }
}

impl From<Error> for V1Error {
    fn from(e: Error) -> Self {
        let code = match &e {
            Error::InvalidInput(_) | Error::Conflict(_) => "INVALID_PARAMETER",
            Error::InvalidState(_) => "INVALID_KEY_STATE",
            Error::WrongKeyType(_) => "UNSUPPORTED_KEY_TYPE",
            Error::DecryptFailed => "DECRYPTION_FAILED",
            _ => return V1Error::Gateway(e.into()),
        };
        V1Error::Fail {
            code,
            msg: e.to_string(),
        }
    }
}

impl From<crypto::OpError> for V1Error {
    fn from(e: crypto::OpError) -> Self {
        match e {
            crypto::OpError::Request(e) => e.into(),
            crypto::OpError::Engine(e) => e.into(),
        }
    }
}

impl From<NaverError> for V1Error {
    fn from(e: NaverError) -> Self {
        if e.status == axum::http::StatusCode::BAD_REQUEST {
            V1Error::invalid(e.details)
        } else {
            V1Error::Gateway(e)
        }
    }
}

impl IntoResponse for V1Error {
    fn into_response(self) -> Response {
        match self {
            V1Error::Gateway(e) => e.into_response(),
            V1Error::Fail { code, msg } => {
                Json(json!({"code": code, "msg": msg, "data": null})).into_response()
            }
        }
    }
}

type V1Result = Result<Response, V1Error>;

fn ok(data: Value) -> Response {
    Json(json!({"code": "SUCCESS", "msg": "Success", "data": data})).into_response()
}

/// JSON body whose rejections are 1.0 failures.
pub struct V1Json<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for V1Json<T> {
    type Rejection = V1Error;

    async fn from_request(
        req: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let super::NaverJson(v) = super::NaverJson::<T>::from_request(req, state).await?;
        Ok(V1Json(v))
    }
}

async fn encrypt(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<KeyUid>,
    V1Json(b): V1Json<crypto::EncryptBody>,
) -> V1Result {
    Ok(ok(match crypto::encrypt(&st, &auth, &tag, b).await? {
        OneOrMany::One(c) => json!({"ciphertext": c}),
        OneOrMany::Many(list) => json!({"ciphertextList": list}),
    }))
}

async fn decrypt(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<KeyUid>,
    V1Json(b): V1Json<crypto::DecryptBody>,
) -> V1Result {
    Ok(ok(match crypto::decrypt(&st, &auth, &tag, b).await? {
        OneOrMany::One(p) => json!({"plaintext": p}),
        OneOrMany::Many(list) => json!({"plaintextList": list}),
    }))
}

async fn reencrypt(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<KeyUid>,
    V1Json(b): V1Json<crypto::DecryptBody>,
) -> V1Result {
    let out = crypto::reencrypt(&st, &auth, &tag, b).await?;
    Ok(ok(json!({"newCiphertext": out})))
}

async fn create_custom_key(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<KeyUid>,
    V1Json(b): V1Json<crypto::CustomKeyBody>,
) -> V1Result {
    Ok(ok(crypto::create_custom_key(&st, &auth, &tag, b).await?))
}

async fn sign(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<KeyUid>,
    V1Json(b): V1Json<crypto::SignBody>,
) -> V1Result {
    let signature = crypto::sign(&st, &auth, &tag, b).await?;
    Ok(ok(json!({"signature": signature})))
}

async fn verify(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<KeyUid>,
    V1Json(b): V1Json<crypto::VerifyBody>,
) -> V1Result {
    let valid = crypto::verify(&st, &auth, &tag, b).await?;
    Ok(ok(json!({"valid": valid})))
}
