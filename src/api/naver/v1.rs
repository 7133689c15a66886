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
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Caller, NoteVersion};
use super::format::{b64, enc, format_sealed, parse_sealed, OneOrMany};
use super::v2::plaintexts;
use super::NaverError;
use crate::api::AppState;
use crate::core::{Error, Sealed, CONTEXT_MAX};

pub(super) fn router() -> Router<AppState> {
    let mut r = Router::new();
    for v in ["v1", "v2"] {
        r = r
            .route(&format!("/keys/{v}/{{key_tag}}/encrypt"), post(encrypt))
            .route(&format!("/keys/{v}/{{key_tag}}/decrypt"), post(decrypt))
            .route(
                &format!("/keys/{v}/{{key_tag}}/createCustomKey"),
                post(create_custom_key),
            )
            .route(
                &format!("/keys/{v}/{{key_tag}}/create-custom-key"),
                post(create_custom_key),
            )
            .route(&format!("/keys/{v}/{{key_tag}}/reencrypt"), post(reencrypt))
            .route(
                &format!("/keys/{v}/{{key_tag}}/re-encrypt"),
                post(reencrypt),
            )
            .route(&format!("/keys/{v}/{{key_tag}}/sign"), post(sign))
            .route(&format!("/keys/{v}/{{key_tag}}/verify"), post(verify));
    }
    r
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

fn context(c: &Option<String>) -> Result<Option<Vec<u8>>, V1Error> {
    match c {
        None => Ok(None),
        Some(s) => {
            let v = b64("context", s)?;
            if v.len() > CONTEXT_MAX {
                return Err(V1Error::invalid("context must be at most 50 bytes"));
            }
            Ok(Some(v))
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptBody {
    plaintext: Option<OneOrMany>,
    context: Option<String>,
}

async fn encrypt(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<String>,
    V1Json(b): V1Json<EncryptBody>,
) -> V1Result {
    let p = b
        .plaintext
        .ok_or_else(|| V1Error::invalid("plaintext is required"))?;
    let ctx = context(&b.context)?;
    let mut out = Vec::new();
    for pt in plaintexts(&p)? {
        let s = st
            .engine
            .encrypt(auth.account_id, &tag, pt, ctx.clone())
            .await?;
        auth.note_version(s.version);
        out.push(format_sealed(&s));
    }
    Ok(ok(match p {
        OneOrMany::One(_) => json!({"ciphertext": out.pop()}),
        OneOrMany::Many(_) => json!({"ciphertextList": out}),
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecryptBody {
    ciphertext: Option<OneOrMany>,
    context: Option<String>,
}

fn sealed_list(c: &OneOrMany) -> Result<Vec<Sealed>, V1Error> {
    let items = c.items();
    if items.is_empty() {
        return Err(V1Error::invalid("ciphertext must not be empty"));
    }
    Ok(items
        .into_iter()
        .map(|s| parse_sealed("ciphertext", s))
        .collect::<Result<Vec<_>, _>>()?)
}

async fn decrypt(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<String>,
    V1Json(b): V1Json<DecryptBody>,
) -> V1Result {
    let c = b
        .ciphertext
        .ok_or_else(|| V1Error::invalid("ciphertext is required"))?;
    let ctx = context(&b.context)?;
    let mut out = Vec::new();
    for s in sealed_list(&c)? {
        auth.note_version(s.version);
        let pt = st
            .engine
            .decrypt(auth.account_id, &tag, &s, ctx.clone())
            .await?;
        out.push(enc(&pt));
    }
    Ok(ok(match c {
        OneOrMany::One(_) => json!({"plaintext": out.pop()}),
        OneOrMany::Many(_) => json!({"plaintextList": out}),
    }))
}

async fn reencrypt(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<String>,
    V1Json(b): V1Json<DecryptBody>,
) -> V1Result {
    let c = b
        .ciphertext
        .ok_or_else(|| V1Error::invalid("ciphertext is required"))?;
    let ctx = context(&b.context)?;
    let mut out = Vec::new();
    for s in sealed_list(&c)? {
        let n = st
            .engine
            .reencrypt(auth.account_id, &tag, &s, ctx.clone())
            .await?;
        auth.note_version(n.version);
        out.push(format_sealed(&n));
    }
    Ok(ok(json!({"newCiphertext": c.same_shape(out)})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CustomKeyBody {
    #[serde(default)]
    request_plain_key: bool,
    bits: Option<u32>,
    context: Option<String>,
}

async fn create_custom_key(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<String>,
    V1Json(b): V1Json<CustomKeyBody>,
) -> V1Result {
    let ctx = context(&b.context)?;
    let ck = st
        .engine
        .create_custom_key(auth.account_id, &tag, b.bits.unwrap_or(256), ctx)
        .await?;
    auth.note_version(ck.sealed.version);
    let mut data =
        json!({"ciphertext": format_sealed(&ck.sealed), "key_version": ck.sealed.version});
    if b.request_plain_key {
        data["plaintext"] = json!(enc(&ck.plaintext));
    }
    Ok(ok(data))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    data: Option<String>,
}

async fn sign(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<String>,
    V1Json(b): V1Json<SignBody>,
) -> V1Result {
    let data = b64(
        "data",
        &b.data.ok_or_else(|| V1Error::invalid("data is required"))?,
    )?;
    let (version, sig) = st.engine.sign(auth.account_id, &tag, data).await?;
    auth.note_version(version);
    Ok(ok(
        json!({"signature": format_sealed(&Sealed { version, blob: sig })}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    data: Option<String>,
    signature: Option<String>,
}

async fn verify(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<String>,
    V1Json(b): V1Json<VerifyBody>,
) -> V1Result {
    let data = b64(
        "data",
        &b.data.ok_or_else(|| V1Error::invalid("data is required"))?,
    )?;
    let sig = parse_sealed(
        "signature",
        &b.signature
            .ok_or_else(|| V1Error::invalid("signature is required"))?,
    )?;
    auth.note_version(sig.version);
    let valid = st
        .engine
        .verify(auth.account_id, &tag, sig.version, data, sig.blob)
        .await?;
    Ok(ok(json!({"valid": valid})))
}
