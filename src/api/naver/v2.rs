//! NAVER KMS API 2.0 endpoints under account authentication.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post, put};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::auth::{Caller, NoteVersion};
use super::crypto;
use super::format::enc;
use super::{success, AccountAuth, BaseUrl, NaverError, NaverJson, NaverResult};
use crate::api::AppState;
use crate::core::KeyUid;
use crate::core::{CreateKeyRequest, KeyEntry, KeyType};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/kms/v1/keys", post(create_key).get(list_keys))
        .route("/kms/v1/keys/{key_tag}", get(get_key).delete(delete_key))
        .route("/kms/v1/keys/{key_tag}/enable", post(enable_key))
        .route("/kms/v1/keys/{key_tag}/disable", post(disable_key))
        .route("/kms/v1/keys/{key_tag}/versions", get(list_versions))
        .route(
            "/kms/v1/keys/{key_tag}/versions/{version}/enable",
            post(enable_version),
        )
        .route(
            "/kms/v1/keys/{key_tag}/versions/{version}/disable",
            post(disable_version),
        )
        .route("/kms/v1/keys/{key_tag}/rotate", post(rotate))
        .route(
            "/kms/v1/keys/{key_tag}/request-deletion",
            post(request_deletion),
        )
        .route(
            "/kms/v1/keys/{key_tag}/cancel-deletion",
            post(cancel_deletion),
        )
        .route("/kms/v1/keys/{key_tag}/memo", put(update_memo))
        .route(
            "/kms/v1/keys/{key_tag}/rotation-period",
            put(update_rotation_period),
        )
        .route(
            "/kms/v1/keys/{key_tag}/enable-auto-rotation",
            post(enable_auto_rotation),
        )
        .route(
            "/kms/v1/keys/{key_tag}/disable-auto-rotation",
            post(disable_auto_rotation),
        )
}

/// The crypto routes, which also take token auth and are rate limited.
pub(super) fn crypto_router() -> Router<AppState> {
    Router::new()
        .route("/kms/v1/keys/{key_tag}/encrypt", post(encrypt))
        .route("/kms/v1/keys/{key_tag}/decrypt", post(decrypt))
        .route("/kms/v1/keys/{key_tag}/re-encrypt", post(reencrypt))
        .route("/kms/v1/keys/{key_tag}/reencrypt", post(reencrypt))
        .route(
            "/kms/v1/keys/{key_tag}/create-custom-key",
            post(create_custom_key),
        )
        .route("/kms/v1/keys/{key_tag}/sign", post(sign))
        .route("/kms/v1/keys/{key_tag}/verify", post(verify))
        .route("/kms/v1/keys/{key_tag}/get-pub-key", post(get_public_key))
}

/// The key record of Get Key Info and Create Key.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KeyInfo {
    key_id: i64,
    key_tag: String,
    key_name: String,
    nrn: String,
    base_url: String,
    key_type: String,
    status: String,
    keystore_id: i64,
    current_version: i64,
    protection_type: String,
    memo: String,
    is_convergent: bool,
    is_auto_rotation: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    rotation_period: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_rotation_date: Option<i64>,
    register_date: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    destroy_date: Option<i64>,
}

fn key_info(e: &KeyEntry, base_url: &str) -> KeyInfo {
    let k = &e.key;
    KeyInfo {
        key_id: k.id.get(),
        key_tag: k.uid.to_string(),
        key_name: k.name.clone(),
        nrn: format!("nrn:PUB:KMS::{}:Key/{}", k.account_id, k.id),
        base_url: base_url.to_string(),
        key_type: k.key_type.to_string(),
        status: k.status.as_str().to_string(),
        keystore_id: k.account_id,
        current_version: e.current().map(|v| v.version).unwrap_or(0),
        protection_type: k.protection_type.clone(),
        memo: k.memo.clone(),
        is_convergent: k.is_convergent,
        is_auto_rotation: k.is_auto_rotation,
        rotation_period: k.rotation_period,
        next_rotation_date: k.next_rotation_at,
        register_date: k.created_at,
        destroy_date: k.destroy_at,
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CreateKeyBody {
    key_name: Option<String>,
    key_type: Option<String>,
    #[serde(default)]
    memo: String,
    #[serde(default)]
    is_convergent: bool,
    #[serde(default)]
    is_auto_rotation: bool,
    rotation_period: Option<i64>,
    protection_type: Option<String>,
}

async fn create_key(
    State(st): State<AppState>,
    auth: AccountAuth,
    BaseUrl(base_url): BaseUrl,
    NaverJson(b): NaverJson<CreateKeyBody>,
) -> NaverResult<Response> {
    let name = b
        .key_name
        .ok_or_else(|| NaverError::bad_request("keyName is required"))?;
    let kt = b
        .key_type
        .ok_or_else(|| NaverError::bad_request("keyType is required"))?;
    let key_type = KeyType::parse(&kt)
        .ok_or_else(|| NaverError::bad_request("keyType must be AES256, RSA2048 or ECDSA"))?;
    let protection_type = b.protection_type.unwrap_or_else(|| "COMMON_HSM".into());
    if !matches!(protection_type.as_str(), "BASIC" | "COMMON_HSM") {
        return Err(NaverError::bad_request(
            "protectionType must be BASIC or COMMON_HSM",
        ));
    }
    let e = st
        .engine
        .create_key(
            auth.account_id,
            CreateKeyRequest {
                name,
                key_type,
                memo: b.memo,
                is_convergent: b.is_convergent,
                is_auto_rotation: b.is_auto_rotation,
                rotation_period: b.rotation_period,
                protection_type,
            },
        )
        .await?;
    auth.note_key(&e.key.uid);
    if let Some(v) = e.current() {
        auth.note_version(v.version);
    }
    Ok(success(key_info(&e, &base_url)))
}

async fn get_key(
    State(st): State<AppState>,
    auth: AccountAuth,
    BaseUrl(base_url): BaseUrl,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    let e = st.engine.owned_key(auth.account_id, &tag).await?;
    Ok(success(key_info(&e, &base_url)))
}

pub(super) fn int_param(
    q: &HashMap<String, String>,
    name: &str,
    default: i64,
    min: i64,
    max: i64,
) -> NaverResult<i64> {
    match q.get(name) {
        None => Ok(default),
        Some(s) => match s.parse::<i64>() {
            Ok(v) if (min..=max).contains(&v) => Ok(v),
            _ => Err(NaverError::bad_request(format!(
                "{name} must be an integer from {min} to {max}"
            ))),
        },
    }
}

/// `pageNo` (1 to 2^31 - 1, default 1) and `pageSize` (1 to 200, default
/// 100) of Get Key List.
pub(crate) fn list_params(q: &HashMap<String, String>) -> NaverResult<(i64, i64)> {
    let page_no = int_param(q, "pageNo", 1, 1, i64::from(i32::MAX))?;
    let page_size = int_param(q, "pageSize", 100, 1, 200)?;
    Ok((page_no, page_size))
}

async fn list_keys(
    State(st): State<AppState>,
    auth: AccountAuth,
    Query(q): Query<HashMap<String, String>>,
) -> NaverResult<Response> {
    let (page_no, page_size) = list_params(&q)?;
    let (keys, total) = st
        .engine
        .list_keys(auth.account_id, page_no, page_size)
        .await?;
    let list: Vec<_> = keys
        .iter()
        .map(|e| {
            json!({
                "keyId": e.key.id,
                "keyTag": e.key.uid,
                "keyName": e.key.name,
                "keyType": e.key.key_type,
                "status": e.key.status.as_str(),
                "protectionType": e.key.protection_type,
                "isConvergent": e.key.is_convergent,
                "registerDate": e.key.created_at,
                "destroyDate": e.key.destroy_at,
            })
        })
        .collect();
    Ok(success(json!({
        "keyList": list,
        "currentPageNo": page_no,
        "totalPageNo": (total + page_size - 1) / page_size,
        "totalCount": total,
    })))
}

fn status_reply(e: &KeyEntry) -> Response {
    success(
        json!({"keyTag": e.key.uid, "status": e.key.status.as_str(), "statusDate": e.key.status_at}),
    )
}

async fn enable_key(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    Ok(status_reply(
        &*st.engine.enable_key(auth.account_id, &tag).await?,
    ))
}

async fn disable_key(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    Ok(status_reply(
        &*st.engine.disable_key(auth.account_id, &tag).await?,
    ))
}

async fn request_deletion(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    Ok(status_reply(
        &*st.engine.request_deletion(auth.account_id, &tag).await?,
    ))
}

async fn cancel_deletion(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    Ok(status_reply(
        &*st.engine.cancel_deletion(auth.account_id, &tag).await?,
    ))
}

async fn delete_key(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    st.engine.delete_key(auth.account_id, &tag).await?;
    Ok(success(serde_json::Value::Null))
}

fn version_status(enabled: bool) -> &'static str {
    if enabled {
        "ENABLE"
    } else {
        "DISABLE"
    }
}

async fn list_versions(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    let e = st.engine.owned_key(auth.account_id, &tag).await?;
    let list: Vec<_> = e
        .versions
        .iter()
        .filter(|v| v.state == crate::core::VersionState::Active)
        .map(|v| {
            json!({
                "version": v.version,
                "status": version_status(v.enabled),
                "statusDate": v.status_at,
                "rotatedDate": v.created_at,
            })
        })
        .collect();
    Ok(success(json!({
        "keyTag": e.key.uid,
        "currentVersion": e.current().map(|v| v.version).unwrap_or(0),
        "versionList": list,
    })))
}

fn parse_version(s: &str) -> NaverResult<i64> {
    match s.parse::<i64>() {
        Ok(v) if (1..=crate::core::MAX_VERSIONS).contains(&v) => Ok(v),
        _ => Err(NaverError::bad_request(
            "version must be an integer from 1 to 100",
        )),
    }
}

async fn set_version(
    st: AppState,
    auth: AccountAuth,
    tag: KeyUid,
    version: String,
    enabled: bool,
) -> NaverResult<Response> {
    let n = parse_version(&version)?;
    auth.note_version(n);
    let v = st
        .engine
        .set_version_enabled(auth.account_id, &tag, n, enabled)
        .await?;
    Ok(success(
        json!({"version": v.version, "status": version_status(v.enabled), "statusDate": v.status_at}),
    ))
}

async fn enable_version(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path((tag, v)): Path<(KeyUid, String)>,
) -> NaverResult<Response> {
    set_version(st, auth, tag, v, true).await
}

async fn disable_version(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path((tag, v)): Path<(KeyUid, String)>,
) -> NaverResult<Response> {
    set_version(st, auth, tag, v, false).await
}

async fn rotate(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    let e = st.engine.rotate(auth.account_id, &tag).await?;
    let v = e.current().ok_or_else(|| {
        NaverError::from(crate::core::Error::Internal("no current version".into()))
    })?;
    auth.note_version(v.version);
    Ok(success(
        json!({"keyTag": e.key.uid, "version": v.version, "rotatedDate": v.created_at}),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MemoBody {
    memo: Option<String>,
}

async fn update_memo(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
    NaverJson(b): NaverJson<MemoBody>,
) -> NaverResult<Response> {
    let memo = b
        .memo
        .ok_or_else(|| NaverError::bad_request("memo is required"))?;
    let e = st.engine.update_memo(auth.account_id, &tag, memo).await?;
    Ok(success(json!({"keyTag": e.key.uid, "memo": e.key.memo})))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RotationPeriodBody {
    rotation_period: Option<i64>,
}

async fn update_rotation_period(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
    NaverJson(b): NaverJson<RotationPeriodBody>,
) -> NaverResult<Response> {
    let days = b
        .rotation_period
        .ok_or_else(|| NaverError::bad_request("rotationPeriod is required"))?;
    let e = st
        .engine
        .update_rotation_period(auth.account_id, &tag, days)
        .await?;
    Ok(success(
        json!({"keyTag": e.key.uid, "rotationPeriod": e.key.rotation_period, "nextRotationDate": e.key.next_rotation_at}),
    ))
}

async fn enable_auto_rotation(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    let e = st
        .engine
        .set_auto_rotation(auth.account_id, &tag, true)
        .await?;
    Ok(success(json!({
        "keyTag": e.key.uid,
        "isAutoRotation": e.key.is_auto_rotation,
        "rotationPeriod": e.key.rotation_period,
        "nextRotationDate": e.key.next_rotation_at,
    })))
}

async fn disable_auto_rotation(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    let e = st
        .engine
        .set_auto_rotation(auth.account_id, &tag, false)
        .await?;
    Ok(success(
        json!({"keyTag": e.key.uid, "isAutoRotation": e.key.is_auto_rotation}),
    ))
}

// ---- crypto ----

async fn encrypt(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<KeyUid>,
    NaverJson(b): NaverJson<crypto::EncryptBody>,
) -> NaverResult<Response> {
    let out = crypto::encrypt(&st, &auth, &tag, b).await?;
    Ok(success(json!({"ciphertext": out})))
}

async fn decrypt(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<KeyUid>,
    NaverJson(b): NaverJson<crypto::DecryptBody>,
) -> NaverResult<Response> {
    let out = crypto::decrypt(&st, &auth, &tag, b).await?;
    Ok(success(json!({"plaintext": out})))
}

async fn reencrypt(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<KeyUid>,
    NaverJson(b): NaverJson<crypto::DecryptBody>,
) -> NaverResult<Response> {
    let out = crypto::reencrypt(&st, &auth, &tag, b).await?;
    Ok(success(json!({"newCiphertext": out})))
}

async fn create_custom_key(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<KeyUid>,
    NaverJson(b): NaverJson<crypto::CustomKeyBody>,
) -> NaverResult<Response> {
    Ok(success(
        crypto::create_custom_key(&st, &auth, &tag, b).await?,
    ))
}

async fn sign(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<KeyUid>,
    NaverJson(b): NaverJson<crypto::SignBody>,
) -> NaverResult<Response> {
    let signature = crypto::sign(&st, &auth, &tag, b).await?;
    Ok(success(json!({"signature": signature})))
}

async fn verify(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<KeyUid>,
    NaverJson(b): NaverJson<crypto::VerifyBody>,
) -> NaverResult<Response> {
    let valid = crypto::verify(&st, &auth, &tag, b).await?;
    Ok(success(json!({"valid": valid})))
}

/// Get Public Key body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct PubKeyBody {
    pub(crate) key_version: Option<i64>,
}

async fn get_public_key(
    State(st): State<AppState>,
    auth: Caller,
    Path(tag): Path<KeyUid>,
    NaverJson(b): NaverJson<PubKeyBody>,
) -> NaverResult<Response> {
    let (version, der) = st
        .engine
        .public_key(auth.account_id, &tag, b.key_version)
        .await?;
    auth.note_version(version);
    Ok(success(json!({"publicKey": pem("PUBLIC KEY", &der)})))
}

/// PEM-encodes DER.
pub(super) fn pem(label: &str, der: &[u8]) -> String {
    let b = enc(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}
