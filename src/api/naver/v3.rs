//! NAVER Cloud KMS API v3 (`/kms/v3/...`, the "Ncloud API standard" pages
//! `pub-kms-v3-*`), on the same keys as API 2.0 and 1.0. `docs/naver-v3.md`
//! lists each operation and every choice made where the generated pages
//! stop.
//!
//! What sets v3 apart from 2.0: answers are the resource itself (no
//! `{"code","data"}` envelope), errors carry v3's code names
//! (`InvalidParameter`, `ResourceNotFound`, ...), every answer has an
//! `x-ncp-request-id`, key tags are case-insensitive with an optional region
//! prefix, paging counts from 0, and integers in paths and queries are
//! decimal digits only. Authentication (signature v2), the activity log, the
//! replay guard and the per-key quota are 2.0's, applied the same way.

use std::collections::HashMap;

mod acl;
mod batch;
mod state;
mod tokens;

use axum::extract::{FromRequest, Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{AccountAuth, Caller, NoteVersion};
use super::crypto::RawContext;
use super::format::{b64, enc, format_sealed, parse_sealed};
use super::NaverError;
use crate::api::AppState;
use crate::core::{
    CreateKeyRequest, Error, KeyEntry, KeyStatus, KeyType, KeyUid, Sealed, VersionState,
    ENCRYPT_MAX, RSA_ENCRYPT_MAX, SIGN_DATA_MAX,
};

/// Header naming each answer (the v3 overview's response header).
const REQUEST_ID: &str = "x-ncp-request-id";

/// Largest decoded ciphertext body of an AES256 key: 32768 + IV + tag.
const AES_CIPHERTEXT_MAX: usize = ENCRYPT_MAX + 12 + 16;
/// RSA2048 ciphertexts and signatures are exactly this long.
const RSA_LEN: usize = 256;

/// Key management under account authentication.
pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/kms/v3/keys", post(create_key).get(list_keys))
        .route(
            "/kms/v3/keys/{key_tag}",
            get(get_key).patch(state::update_key),
        )
        .route(
            "/kms/v3/keys/{key_tag}/versions",
            get(list_versions).post(create_version),
        )
        .route(
            "/kms/v3/keys/{key_tag}/versions/{version}",
            get(get_version).patch(state::update_version),
        )
        .merge(tokens::token_issue_router())
        .merge(state::router())
        .merge(acl::router())
        .layer(axum::middleware::from_fn(request_id))
}

/// The token cipher calls under `/kms/v3/token/keys/...` (access token),
/// under the per-key quota.
pub(super) fn token_router() -> Router<AppState> {
    tokens::token_crypto_router().layer(axum::middleware::from_fn(request_id))
}

/// The cipher calls, under the per-key quota.
pub(super) fn crypto_router() -> Router<AppState> {
    Router::new()
        .route("/kms/v3/keys/{key_tag}/encrypt", post(encrypt))
        .route("/kms/v3/keys/{key_tag}/decrypt", post(decrypt))
        .route("/kms/v3/keys/{key_tag}/re-encrypt", post(reencrypt))
        .route("/kms/v3/keys/{key_tag}/sign", post(sign))
        .route("/kms/v3/keys/{key_tag}/verify", post(verify))
        .route("/kms/v3/keys/{key_tag}/issue-custom-key", post(custom_key))
        .route(
            "/kms/v3/keys/{key_tag}/versions/{version}/public-key",
            get(public_key),
        )
        .route(
            "/kms/v3/keys/{key_tag}/batch-encrypt",
            post(batch::batch_encrypt),
        )
        .route(
            "/kms/v3/keys/{key_tag}/batch-decrypt",
            post(batch::batch_decrypt),
        )
        .route(
            "/kms/v3/keys/{key_tag}/batch-re-encrypt",
            post(batch::batch_reencrypt),
        )
        .layer(axum::middleware::from_fn(request_id))
}

/// Names the answer with the request's id (the one the logs carry).
async fn request_id(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let id = req
        .headers()
        .get("x-request-id")
        .cloned()
        .or_else(|| HeaderValue::from_str(&uuid::Uuid::new_v4().to_string()).ok());
    let mut resp = next.run(req).await;
    if let Some(id) = id {
        resp.headers_mut().insert(REQUEST_ID, id);
    }
    resp
}

/// A v3 error: `{"error":{"errorCode","message","details"}}` with v3's code
/// names.
#[derive(Debug)]
pub struct V3Error {
    status: StatusCode,
    code: &'static str,
    details: String,
}

/// Result of a v3 handler.
type V3Result<T> = Result<T, V3Error>;

impl V3Error {
    fn new(status: StatusCode, details: impl Into<String>) -> Self {
        let code = match status {
            StatusCode::BAD_REQUEST => "InvalidParameter",
            StatusCode::UNAUTHORIZED => "AuthFailure",
            StatusCode::FORBIDDEN => "Forbidden",
            StatusCode::NOT_FOUND => "ResourceNotFound",
            StatusCode::CONFLICT => "Conflict",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "UnsupportedMediaType",
            StatusCode::TOO_MANY_REQUESTS => "TooManyRequests",
            StatusCode::SERVICE_UNAVAILABLE => "ServiceUnavailable",
            _ => "InternalError",
        };
        V3Error {
            status,
            code,
            details: details.into(),
        }
    }

    fn invalid(details: impl Into<String>) -> Self {
        V3Error::new(StatusCode::BAD_REQUEST, details)
    }

    fn not_found(details: impl Into<String>) -> Self {
        V3Error::new(StatusCode::NOT_FOUND, details)
    }

    fn message(&self) -> &'static str {
        match self.code {
            "InvalidParameter" => "The request has an invalid parameter",
            "AuthFailure" => "Authentication failed",
            "Forbidden" => "The operation is not allowed",
            "AccessDenied" => "The client address is not allowed by the key's IP ACL",
            "ResourceNotFound" => "The resource was not found",
            "Conflict" => "The resource's state does not allow the operation",
            "UnsupportedMediaType" => "Unsupported media type",
            "TooManyRequests" => "Too many requests",
            "ServiceUnavailable" => "The service is unavailable",
            _ => "Internal error",
        }
    }
}

impl From<NaverError> for V3Error {
    fn from(e: NaverError) -> Self {
        // A token refused by the key's IP ACL: v3's `AccessDenied` (the
        // reissueKeyTokens and issueKeyAccessToken pages).
        let acl = e.status == StatusCode::FORBIDDEN && e.details.contains("IP ACL");
        let mut v = V3Error::new(e.status, e.details);
        if acl {
            v.code = "AccessDenied";
        }
        v
    }
}

impl From<Error> for V3Error {
    fn from(e: Error) -> Self {
        match &e {
            Error::Conflict(_) | Error::InvalidState(_) => {
                V3Error::new(StatusCode::CONFLICT, e.to_string())
            }
            // 2.0's mapping for the rest (status, safe details).
            _ => NaverError::from(e).into(),
        }
    }
}

impl From<super::crypto::OpError> for V3Error {
    fn from(e: super::crypto::OpError) -> Self {
        NaverError::from(e).into()
    }
}

impl IntoResponse for V3Error {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "errorCode": self.code,
            "message": self.message(),
            "details": self.details,
        }});
        let mut resp = (self.status, Json(body)).into_response();
        if self.status == StatusCode::SERVICE_UNAVAILABLE {
            crate::api::retry_after(&mut resp);
        }
        resp
    }
}

/// A JSON body whose rejections answer in the v3 envelope.
struct V3Json<T>(T);

impl<T: serde::de::DeserializeOwned> FromRequest<AppState> for V3Json<T> {
    type Rejection = V3Error;

    async fn from_request(
        req: axum::extract::Request,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        crate::api::read_json(req, state)
            .await
            .map(V3Json)
            .map_err(V3Error::invalid)
    }
}

/// The canonical key tag of a path (case-insensitive, optional region
/// prefix), through core's one tag parser.
fn key_tag(tag: &str) -> V3Result<KeyUid> {
    crate::core::naver::canonical_tag(tag)
        .map(KeyUid::from)
        .ok_or_else(|| {
            V3Error::invalid(
                "keyTag must be 64 hex digits, optionally after a region prefix (kr-, jpn-)",
            )
        })
}

/// A decimal integer as v3 takes them: digits only (`0x10`, `1e1`, `+1` are
/// 400), within `min..=max`.
fn decimal(name: &str, text: &str, min: i64, max: i64) -> V3Result<i64> {
    let bad = || {
        V3Error::invalid(format!(
            "{name} must be a decimal integer from {min} to {max}"
        ))
    };
    if text.is_empty() || text.len() > 10 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let v: i64 = text.parse().map_err(|_| bad())?;
    if (min..=max).contains(&v) {
        Ok(v)
    } else {
        Err(bad())
    }
}

/// `pageNo` (from 0, default 0) and `pageSize` (1 to 200, default 20);
/// their product stays within 2^31 - 1.
fn paging(q: &HashMap<String, String>) -> V3Result<(i64, i64)> {
    let max = i64::from(i32::MAX);
    let page_no = match q.get("pageNo") {
        Some(s) => decimal("pageNo", s, 0, max - 1)?,
        None => 0,
    };
    let page_size = match q.get("pageSize") {
        Some(s) => decimal("pageSize", s, 1, 200)?,
        None => 20,
    };
    if page_no.saturating_mul(page_size) > max {
        return Err(V3Error::invalid(
            "pageNo x pageSize must be at most 2147483647",
        ));
    }
    Ok((page_no, page_size))
}

/// A base64 field (the pages' pattern: standard alphabet, padded, not
/// empty).
fn base64_field(name: &str, text: &str) -> V3Result<Vec<u8>> {
    if text.is_empty() {
        return Err(V3Error::invalid(format!("{name} must not be empty")));
    }
    Ok(b64(name, text)?)
}

fn required<T>(v: Option<T>, name: &str) -> V3Result<T> {
    v.ok_or_else(|| V3Error::invalid(format!("{name} is required")))
}

fn status_name(s: KeyStatus) -> &'static str {
    match s {
        KeyStatus::Enabled => "ENABLED",
        KeyStatus::Disabled => "DISABLED",
        KeyStatus::PendingDeletion => "PENDING_DELETION",
        KeyStatus::Deleted => "DESTROYED",
    }
}

/// RFC 3339 UTC text of epoch milliseconds.
fn rfc3339(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

/// The v3 key resource.
fn key_json(e: &KeyEntry) -> Value {
    let k = &e.key;
    json!({
        "keyTag": k.uid,
        "keyName": k.name,
        "nrn": format!("nrn:PUB:KMS::{}:Key/{}", k.account_id, k.id),
        "keyType": k.key_type,
        "protectionType": k.protection_type,
        "status": status_name(k.status),
        "memo": k.memo,
        "convergent": k.is_convergent,
        "currentVersion": e.current().map(|v| v.version).unwrap_or(0),
        "rotation": {
            "enabled": k.is_auto_rotation,
            "periodDays": if k.is_auto_rotation { k.rotation_period.unwrap_or(0) } else { 0 },
        },
        "createdAt": rfc3339(k.created_at),
    })
}

fn version_json(e: &KeyEntry, n: i64) -> Option<Value> {
    let current = e.current().map(|v| v.version);
    e.versions
        .iter()
        .find(|v| v.version == n && v.state == VersionState::Active)
        .map(|v| {
            json!({
                "version": v.version,
                "status": if v.enabled { "ENABLED" } else { "DISABLED" },
                "current": Some(v.version) == current,
            })
        })
}

/// The key, after checking that it has version `n` (404 otherwise, before
/// anything looks at the value that names it: the verify page).
async fn with_version(
    st: &AppState,
    account_id: i64,
    tag: &KeyUid,
    n: i64,
) -> V3Result<std::sync::Arc<KeyEntry>> {
    let e = st.engine.owned_key(account_id, tag).await?;
    if !e
        .versions
        .iter()
        .any(|v| v.version == n && v.state == VersionState::Active)
    {
        return Err(V3Error::not_found(format!("the key has no version {n}")));
    }
    Ok(e)
}

fn key_type_of(e: &KeyEntry) -> V3Result<KeyType> {
    KeyType::of(e.key.key_type)
        .ok_or_else(|| Error::Internal(format!("unknown key type {}", e.key.key_type)).into())
}

// ---- key management ----

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotationBody {
    enabled: Option<bool>,
    period_days: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateKeyBody {
    key_name: Option<String>,
    key_type: Option<String>,
    protection_type: Option<String>,
    memo: Option<String>,
    convergent: Option<bool>,
    rotation: Option<RotationBody>,
}

async fn create_key(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    V3Json(b): V3Json<CreateKeyBody>,
) -> V3Result<Response> {
    let auth = auth?;
    let name = required(b.key_name, "keyName")?;
    let key_type = KeyType::parse(&required(b.key_type, "keyType")?)
        .ok_or_else(|| V3Error::invalid("keyType must be AES256, RSA2048 or ECDSA"))?;
    let protection_type = required(b.protection_type, "protectionType")?;
    if protection_type != "BASIC" {
        return Err(V3Error::invalid("protectionType must be BASIC"));
    }
    let memo = match b.memo {
        Some(m) if m.is_empty() => {
            return Err(V3Error::invalid("memo must be 1 to 100 characters"))
        }
        Some(m) => m,
        None => String::new(),
    };
    let rotation = required(b.rotation, "rotation")?;
    let enabled = required(rotation.enabled, "rotation.enabled")?;
    // The range is checked whether or not rotation is on (createKey page).
    if let Some(d) = rotation.period_days {
        crate::core::naver::check_rotation_period(d)
            .map_err(|_| V3Error::invalid("rotation.periodDays must be from 1 to 730"))?;
    }
    let e = st
        .engine
        .create_key(
            auth.account_id,
            CreateKeyRequest {
                name,
                key_type,
                memo,
                is_convergent: b.convergent.unwrap_or(false),
                is_auto_rotation: enabled,
                rotation_period: if enabled { rotation.period_days } else { None },
                protection_type,
            },
        )
        .await?;
    auth.note_key(&e.key.uid);
    if let Some(v) = e.current() {
        auth.note_version(v.version);
    }
    Ok((StatusCode::CREATED, Json(key_json(&e))).into_response())
}

async fn list_keys(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Query(q): Query<HashMap<String, String>>,
) -> V3Result<Response> {
    let auth = auth?;
    let (page_no, page_size) = paging(&q)?;
    let (keys, total) = st
        .engine
        .list_keys(auth.account_id, page_no + 1, page_size)
        .await?;
    let keys: Vec<Value> = keys.iter().map(key_json).collect();
    Ok(Json(json!({
        "keys": keys,
        "pageNo": page_no,
        "pageSize": page_size,
        "totalCount": total,
    }))
    .into_response())
}

async fn get_key(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let e = st.engine.owned_key(auth.account_id, &tag).await?;
    Ok(Json(key_json(&e)).into_response())
}

async fn list_versions(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let (page_no, page_size) = paging(&q)?;
    let e = st.engine.owned_key(auth.account_id, &tag).await?;
    let mut numbers: Vec<i64> = e
        .versions
        .iter()
        .filter(|v| v.state == VersionState::Active)
        .map(|v| v.version)
        .collect();
    numbers.sort_unstable();
    let total = numbers.len();
    let start = usize::try_from(page_no.saturating_mul(page_size)).unwrap_or(usize::MAX);
    let versions: Vec<Value> = numbers
        .into_iter()
        .skip(start)
        .take(usize::try_from(page_size).unwrap_or(0))
        .filter_map(|n| version_json(&e, n))
        .collect();
    Ok(Json(json!({
        "versions": versions,
        "pageNo": page_no,
        "pageSize": page_size,
        "totalCount": total,
    }))
    .into_response())
}

async fn get_version(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path((tag, version)): Path<(String, String)>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let n = decimal("version", &version, 1, i64::from(i32::MAX))?;
    auth.note_version(n);
    let e = with_version(&st, auth.account_id, &tag, n).await?;
    let v = version_json(&e, n)
        .ok_or_else(|| V3Error::not_found(format!("the key has no version {n}")))?;
    Ok(Json(v).into_response())
}

/// createKeyVersion: rotates the key ("ENABLED 상태의 키만 회전할 수
/// 있습니다"); answers the new version, 201.
async fn create_version(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let e = st.engine.rotate(auth.account_id, &tag).await?;
    let n = e
        .current()
        .map(|v| v.version)
        .ok_or_else(|| V3Error::from(Error::Internal("no current version".into())))?;
    auth.note_version(n);
    let v = version_json(&e, n)
        .ok_or_else(|| V3Error::from(Error::Internal("no current version".into())))?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

// ---- cipher ----

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EncryptBody {
    plaintext: Option<String>,
    context: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecryptBody {
    ciphertext: Option<String>,
    context: Option<Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SignBody {
    data: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct VerifyBody {
    data: Option<String>,
    signature: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CustomKeyBody {
    bits: Option<u32>,
    context: Option<Value>,
    #[serde(default)]
    request_plain_key: bool,
}

async fn encrypt(
    State(st): State<AppState>,
    auth: Result<Caller, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<EncryptBody>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let plaintext = base64_field("plaintext", &required(b.plaintext, "plaintext")?)?;
    let context = RawContext::from_value(b.context)?;
    let e = st.engine.owned_key(auth.account_id, &tag).await?;
    let limit = match key_type_of(&e)? {
        KeyType::Rsa2048 => RSA_ENCRYPT_MAX,
        _ => ENCRYPT_MAX,
    };
    if plaintext.len() > limit {
        return Err(V3Error::invalid(format!(
            "plaintext must be at most {limit} bytes for a {} key",
            e.key.key_type
        )));
    }
    let context = context.for_key(&st, auth.account_id, &tag).await?;
    let sealed = st
        .engine
        .encrypt(auth.account_id, &tag, plaintext, context)
        .await?;
    auth.note_version(sealed.version);
    Ok(Json(json!({"ciphertext": format_sealed(&sealed)})).into_response())
}

/// The parsed ciphertext, within the decoded size the pages allow, and the
/// key after checking the version it names.
async fn ciphertext_of(
    st: &AppState,
    auth: &Caller,
    tag: &KeyUid,
    text: Option<String>,
) -> V3Result<(Sealed, std::sync::Arc<KeyEntry>)> {
    let sealed = parse_sealed("ciphertext", &required(text, "ciphertext")?)?;
    auth.note_version(sealed.version);
    let e = with_version(st, auth.account_id, tag, sealed.version).await?;
    let limit = match key_type_of(&e)? {
        KeyType::Rsa2048 => RSA_LEN,
        _ => AES_CIPHERTEXT_MAX,
    };
    if sealed.blob.len() > limit {
        return Err(V3Error::invalid(format!(
            "ciphertext must decode to at most {limit} bytes for a {} key",
            e.key.key_type
        )));
    }
    Ok((sealed, e))
}

async fn decrypt(
    State(st): State<AppState>,
    auth: Result<Caller, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<DecryptBody>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let context = RawContext::from_value(b.context)?;
    let (sealed, _) = ciphertext_of(&st, &auth, &tag, b.ciphertext).await?;
    let context = context.for_key(&st, auth.account_id, &tag).await?;
    let pt = st
        .engine
        .decrypt(auth.account_id, &tag, &sealed, context)
        .await?;
    Ok(Json(json!({"plaintext": enc(&pt)})).into_response())
}

async fn reencrypt(
    State(st): State<AppState>,
    auth: Result<Caller, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<DecryptBody>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let context = RawContext::from_value(b.context)?;
    let (sealed, _) = ciphertext_of(&st, &auth, &tag, b.ciphertext).await?;
    let context = context.for_key(&st, auth.account_id, &tag).await?;
    let s = st
        .engine
        .reencrypt(auth.account_id, &tag, &sealed, context)
        .await?;
    auth.note_version(s.version);
    Ok(Json(json!({"ciphertext": format_sealed(&s)})).into_response())
}

async fn sign(
    State(st): State<AppState>,
    auth: Result<Caller, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<SignBody>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let data = base64_field("data", &required(b.data, "data")?)?;
    if data.len() > SIGN_DATA_MAX {
        return Err(V3Error::invalid("data must be at most 8192 bytes"));
    }
    let (version, sig) = st.engine.sign(auth.account_id, &tag, data).await?;
    auth.note_version(version);
    Ok(Json(json!({"signature": format_sealed(&Sealed { version, blob: sig })})).into_response())
}

async fn verify(
    State(st): State<AppState>,
    auth: Result<Caller, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<VerifyBody>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let data = base64_field("data", &required(b.data, "data")?)?;
    if data.len() > SIGN_DATA_MAX {
        return Err(V3Error::invalid("data must be at most 8192 bytes"));
    }
    let sig = parse_sealed("signature", &required(b.signature, "signature")?)?;
    auth.note_version(sig.version);
    // The version first, then the signature's form (the verify page).
    let e = with_version(&st, auth.account_id, &tag, sig.version).await?;
    match key_type_of(&e)? {
        // Not 256 bytes: a signature that does not match, not an error.
        KeyType::Rsa2048 if sig.blob.len() != RSA_LEN => {
            return Ok(Json(json!({"valid": false})).into_response())
        }
        KeyType::Ecdsa if p256::ecdsa::Signature::from_der(&sig.blob).is_err() => {
            return Err(V3Error::invalid(
                "signature is not a DER-encoded ECDSA signature",
            ))
        }
        _ => {}
    }
    let valid = st
        .engine
        .verify(auth.account_id, &tag, sig.version, data, sig.blob)
        .await?;
    Ok(Json(json!({"valid": valid})).into_response())
}

async fn custom_key(
    State(st): State<AppState>,
    auth: Result<Caller, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<CustomKeyBody>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let context = RawContext::from_value(b.context)?
        .for_key(&st, auth.account_id, &tag)
        .await?;
    let ck = st
        .engine
        .create_custom_key(auth.account_id, &tag, b.bits.unwrap_or(256), context)
        .await?;
    auth.note_version(ck.sealed.version);
    let mut out = json!({
        "ciphertext": format_sealed(&ck.sealed),
        "version": ck.sealed.version,
    });
    if b.request_plain_key {
        out["plaintext"] = json!(enc(&ck.plaintext));
    }
    Ok(Json(out).into_response())
}

async fn public_key(
    State(st): State<AppState>,
    auth: Result<Caller, NaverError>,
    Path((tag, version)): Path<(String, String)>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let n = decimal("version", &version, 1, i64::from(i32::MAX))?;
    auth.note_version(n);
    with_version(&st, auth.account_id, &tag, n).await?;
    let (version, der) = st.engine.public_key(auth.account_id, &tag, Some(n)).await?;
    Ok(Json(json!({
        "keyTag": tag,
        "version": version,
        "publicKey": super::v2::pem("PUBLIC KEY", &der),
    }))
    .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimals_only() {
        assert_eq!(decimal("v", "1", 1, 100).unwrap(), 1);
        assert_eq!(decimal("v", "100", 1, 100).unwrap(), 100);
        for bad in [
            "",
            "0x1",
            "1e1",
            "+1",
            "-1",
            " 1",
            "101",
            "0",
            "99999999999",
        ] {
            assert!(decimal("v", bad, 1, 100).is_err(), "{bad}");
        }
    }

    #[test]
    fn paging_defaults_and_bounds() {
        let q = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<HashMap<_, _>>()
        };
        assert_eq!(paging(&q(&[])).unwrap(), (0, 20));
        assert_eq!(
            paging(&q(&[("pageNo", "3"), ("pageSize", "200")])).unwrap(),
            (3, 200)
        );
        assert!(paging(&q(&[("pageSize", "0")])).is_err());
        assert!(paging(&q(&[("pageSize", "201")])).is_err());
        assert!(paging(&q(&[("pageNo", "-1")])).is_err());
        assert!(paging(&q(&[("pageNo", "2147483646"), ("pageSize", "2")])).is_err());
    }

    #[test]
    fn limits_match_the_pages() {
        assert_eq!(AES_CIPHERTEXT_MAX, 32796);
        assert_eq!(RSA_ENCRYPT_MAX, 190);
        assert_eq!(crate::core::CONTEXT_MAX, 50);
    }
}
