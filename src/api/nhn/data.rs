//! NHN data endpoints, each behind its key store's authentication: confirm,
//! secrets, symmetric keys and asymmetric keys. Only the secret update is a
//! management call (a User Access Key as well).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::json;

use super::audit::{noted, AuditNote};
use super::format::{b64, frame, hex_list, parse_ciphertext, parse_signature};
use super::{success, ManageCtx, NhnCtx, NhnError, NhnJson, NhnResult};
use crate::api::AppState;
use crate::core::KeyUid;

const P: &str = "/keymanager/v1.2/appkey/{appkey}";

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route(&format!("{P}/confirm"), get(confirm))
        .route(
            &format!("{P}/secrets/{{keyid}}"),
            get(get_secret).put(put_secret),
        )
        .route(
            &format!("{P}/symmetric-keys/{{keyid}}/encrypt"),
            post(encrypt),
        )
        .route(
            &format!("{P}/symmetric-keys/{{keyid}}/decrypt"),
            post(decrypt),
        )
        .route(
            &format!("{P}/symmetric-keys/{{keyid}}/create-local-key"),
            post(create_local_key),
        )
        .route(
            &format!("{P}/symmetric-keys/{{keyid}}/symmetric-key"),
            get(symmetric_key),
        )
        .route(&format!("{P}/asymmetric-keys/{{keyid}}/sign"), post(sign))
        .route(
            &format!("{P}/asymmetric-keys/{{keyid}}/verify"),
            post(verify),
        )
        .route(
            &format!("{P}/asymmetric-keys/{{keyid}}/privateKey"),
            get(private_key),
        )
        .route(
            &format!("{P}/asymmetric-keys/{{keyid}}/publicKey"),
            get(public_key),
        )
}

type KeyPath = Path<(String, KeyUid)>;

async fn confirm(ctx: NhnCtx) -> Response {
    let sent = ctx.client.cert_sha256.is_some();
    success(json!({
        "clientIp": ctx.client.ip.to_string(),
        "clientMacHeader": ctx.client.mac,
        "clientSentCertificate": sent,
        // The vendor's example spells the field this way; clients written
        // against the example read this one.
        "clientSentCerfificate": sent,
    }))
}

async fn get_secret(
    State(st): State<AppState>,
    ctx: NhnCtx,
    Path((_, keyid)): KeyPath,
) -> NhnResult {
    let s = st
        .engine
        .nhn_get_secret(&ctx.project, &keyid, &ctx.client)
        .await?;
    Ok(success(json!({"secret": s.as_str()})))
}

/// Update Secret body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct SecretBody {
    pub(crate) secret_value: Option<String>,
}

/// Changing a secret is management (a User Access Key) and passes the key
/// store's checks too.
async fn put_secret(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Path((_, keyid)): KeyPath,
    NhnJson(b): NhnJson<SecretBody>,
) -> NhnResult {
    let value = b
        .secret_value
        .ok_or_else(|| NhnError::bad_request("secretValue is required"))?;
    let v = st
        .engine
        .nhn_update_secret(&ctx.project, &keyid, &value, &ctx.client, &ctx.user)
        .await?;
    let k = &v.entry.key;
    let resp = success(json!({
        "keyId": k.uid,
        "name": v.name(),
        "description": v.meta.description,
        "secretValue": value,
        "creationUser": v.meta.creation_user,
        "creationDatetime": super::format::datetime(k.created_at),
        "lastChangeUser": v.meta.last_change_user,
        "lastChangeDatetime": super::format::datetime(k.updated_at),
    }));
    let note = AuditNote {
        version: v.entry.current().map(|c| c.version),
        ..Default::default()
    };
    Ok(noted(resp, note))
}

/// Encrypt and Sign body.
#[derive(Deserialize)]
pub(crate) struct PlaintextBody {
    pub(crate) plaintext: Option<String>,
}

async fn encrypt(
    State(st): State<AppState>,
    ctx: NhnCtx,
    Path((_, keyid)): KeyPath,
    NhnJson(b): NhnJson<PlaintextBody>,
) -> NhnResult {
    let pt = b
        .plaintext
        .ok_or_else(|| NhnError::bad_request("plaintext is required"))?;
    let sealed = st
        .engine
        .nhn_encrypt(&ctx.project, &keyid, pt.as_bytes(), &ctx.client)
        .await?;
    Ok(noted(
        success(json!({
            "ciphertext": b64(&frame(&sealed)),
            "keyVersion": sealed.version,
        })),
        AuditNote::version(sealed.version),
    ))
}

/// Decrypt body.
#[derive(Deserialize)]
pub(crate) struct CiphertextBody {
    pub(crate) ciphertext: Option<String>,
}

async fn decrypt(
    State(st): State<AppState>,
    ctx: NhnCtx,
    Path((_, keyid)): KeyPath,
    NhnJson(b): NhnJson<CiphertextBody>,
) -> NhnResult {
    let ct = b
        .ciphertext
        .ok_or_else(|| NhnError::bad_request("ciphertext is required"))?;
    let sealed = parse_ciphertext(&ct)?;
    let pt = st
        .engine
        .nhn_decrypt(&ctx.project, &keyid, &sealed, &ctx.client)
        .await?;
    let text = std::str::from_utf8(&pt)
        .map_err(|_| NhnError::invalid_user_data("the plaintext is not UTF-8 text"))?;
    Ok(noted(
        success(json!({"plaintext": text, "keyVersion": sealed.version})),
        AuditNote::version(sealed.version),
    ))
}

async fn create_local_key(
    State(st): State<AppState>,
    ctx: NhnCtx,
    Path((_, keyid)): KeyPath,
) -> NhnResult {
    let lk = st
        .engine
        .nhn_create_local_key(&ctx.project, &keyid, &ctx.client)
        .await?;
    Ok(noted(
        success(json!({
            "localKeyPlaintext": lk.plaintext_b64.as_str(),
            "localKeyCiphertext": b64(&frame(&lk.sealed)),
            "keyVersion": lk.sealed.version,
        })),
        AuditNote::version(lk.sealed.version),
    ))
}

/// The optional `keyVersion` query parameter: a version number, or `0` for
/// the current version (as when it is absent). The API guide's examples of
/// the private- and public-key queries answer `"keyVersion": 0`, so a
/// client that sends back the version it was given sends 0; versions made
/// here are numbered from 1, so 0 names no version of its own.
pub(crate) fn key_version(q: &HashMap<String, String>) -> Result<Option<i64>, NhnError> {
    match q.get("keyVersion") {
        None => Ok(None),
        Some(s) => match s.parse::<i64>() {
            Ok(0) => Ok(None),
            Ok(n) if n >= 1 => Ok(Some(n)),
            _ => Err(NhnError::bad_request(
                "keyVersion must be 0 (the current version) or a version number",
            )),
        },
    }
}

async fn symmetric_key(
    State(st): State<AppState>,
    ctx: NhnCtx,
    Path((_, keyid)): KeyPath,
    Query(q): Query<HashMap<String, String>>,
) -> NhnResult {
    let n = key_version(&q)?;
    let (version, key) = st
        .engine
        .nhn_export_symmetric_key(&ctx.project, &keyid, n, &ctx.client)
        .await?;
    Ok(noted(
        success(json!({"symmetricKey": hex_list(&key), "keyVersion": version})),
        AuditNote::version(version),
    ))
}

async fn sign(
    State(st): State<AppState>,
    ctx: NhnCtx,
    Path((_, keyid)): KeyPath,
    NhnJson(b): NhnJson<PlaintextBody>,
) -> NhnResult {
    let pt = b
        .plaintext
        .ok_or_else(|| NhnError::bad_request("plaintext is required"))?;
    let sealed = st
        .engine
        .nhn_sign(&ctx.project, &keyid, pt.as_bytes(), &ctx.client)
        .await?;
    Ok(noted(
        success(json!({
            "signature": b64(&frame(&sealed)),
            "keyVersion": sealed.version,
        })),
        AuditNote::version(sealed.version),
    ))
}

/// Verify body.
#[derive(Deserialize)]
pub(crate) struct VerifyBody {
    pub(crate) plaintext: Option<String>,
    pub(crate) signature: Option<String>,
}

async fn verify(
    State(st): State<AppState>,
    ctx: NhnCtx,
    Path((_, keyid)): KeyPath,
    NhnJson(b): NhnJson<VerifyBody>,
) -> NhnResult {
    let pt = b
        .plaintext
        .ok_or_else(|| NhnError::bad_request("plaintext is required"))?;
    let sig = b
        .signature
        .ok_or_else(|| NhnError::bad_request("signature is required"))?;
    let (hint, sig) = parse_signature(&sig)?;
    let (version, ok) = st
        .engine
        .nhn_verify(&ctx.project, &keyid, pt.as_bytes(), hint, sig, &ctx.client)
        .await?;
    Ok(noted(
        success(json!({"result": ok, "keyVersion": version})),
        AuditNote::version(version),
    ))
}

async fn private_key(
    State(st): State<AppState>,
    ctx: NhnCtx,
    Path((_, keyid)): KeyPath,
    Query(q): Query<HashMap<String, String>>,
) -> NhnResult {
    let n = key_version(&q)?;
    let (version, der) = st
        .engine
        .nhn_export_private_key(&ctx.project, &keyid, n, &ctx.client)
        .await?;
    Ok(noted(
        success(json!({
            "keyType": "PrivateKey",
            "key": hex_list(&der),
            "encodedKey": b64(&der),
            "keyVersion": version,
        })),
        AuditNote::version(version),
    ))
}

async fn public_key(
    State(st): State<AppState>,
    ctx: NhnCtx,
    Path((_, keyid)): KeyPath,
    Query(q): Query<HashMap<String, String>>,
) -> NhnResult {
    let n = key_version(&q)?;
    let (version, der) = st.engine.nhn_public_key(&ctx.project, &keyid, n).await?;
    Ok(noted(
        success(json!({
            "keyType": "PublicKey",
            "key": hex_list(&der),
            "encodedKey": b64(&der),
            "keyVersion": version,
        })),
        AuditNote::version(version),
    ))
}
