//! v3 batch cipher calls: `batchEncrypt`, `batchDecrypt`, `batchReEncrypt`
//! (account auth under `/kms/v3/keys/...`, access token under
//! `/kms/v3/token/keys/...`).
//!
//! The pages: 1 to 100 items; results keyed by the item's index (from 0);
//! atomic (one failed item and nothing is returned); checks in two phases
//! (first every item's empty values and formats, only then sizes and
//! `context`); a wrong JSON type inside an item refuses the whole body
//! (`error`, 400); the failures answer with the one cause's status, or 400
//! when the causes differ. Quota and activity log as API 2.0's batch: every
//! item takes one unit of the key's quota, the request is one activity
//! record.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::super::auth::{Caller, NoteVersion};
use super::super::crypto::RawContext;
use super::super::format::{b64, enc, format_sealed, parse_sealed};
use super::super::NaverError;
use super::{
    key_tag, key_type_of, required, V3Error, V3Json, V3Result, AES_CIPHERTEXT_MAX, RSA_LEN,
};
use crate::api::AppState;
use crate::core::KeyUid;
use crate::core::{KeyEntry, KeyType, Sealed, VersionState, ENCRYPT_MAX, RSA_ENCRYPT_MAX};

/// Items per batch (the pages: "한 번에 1~100개 항목").
pub(super) const BATCH_MAX: usize = 100;

/// `{"requests": [...]}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct BatchBody<T> {
    requests: Option<Vec<T>>,
}

/// One `batchEncrypt` item (the single encrypt's body).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EncryptItem {
    plaintext: Option<String>,
    context: Option<String>,
}

/// One `batchDecrypt` / `batchReEncrypt` item.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct DecryptItem {
    ciphertext: Option<String>,
    context: Option<String>,
}

/// Failed items by index.
type Failures = BTreeMap<usize, V3Error>;

/// The batch failure answer: `{"failures": {"{index}": {"errorCode",
/// "message", "detail"}}}` (the "Batch Failure Response" type), with the
/// one cause's status, or 400 when the causes differ.
fn failures(f: Failures) -> Response {
    let codes: std::collections::BTreeSet<&str> = f.values().map(|e| e.code).collect();
    let status = match (codes.len(), f.values().next()) {
        (1, Some(e)) => e.status,
        _ => StatusCode::BAD_REQUEST,
    };
    let mut map = Map::new();
    for (i, e) in &f {
        map.insert(
            i.to_string(),
            json!({"errorCode": e.code, "message": e.message(), "detail": e.details}),
        );
    }
    (status, Json(json!({"failures": map}))).into_response()
}

/// `{"results": {"{index}": item}}`.
fn results(items: Vec<Value>) -> Response {
    let map: Map<String, Value> = items
        .into_iter()
        .enumerate()
        .map(|(i, v)| (i.to_string(), v))
        .collect();
    Json(json!({"results": map})).into_response()
}

/// The item list, 1 to 100 of them.
fn items<T>(b: BatchBody<T>) -> V3Result<Vec<T>> {
    let items = required(b.requests, "requests")?;
    if items.is_empty() || items.len() > BATCH_MAX {
        return Err(V3Error::invalid(format!(
            "requests must hold 1 to {BATCH_MAX} items; this request has {}",
            items.len()
        )));
    }
    Ok(items)
}

/// A base64 value that must be there and not be empty (phase 1).
fn present_base64(name: &str, v: Option<String>) -> V3Result<Vec<u8>> {
    let v = required(v, name)?;
    if v.is_empty() {
        return Err(V3Error::invalid(format!("{name} must not be empty")));
    }
    Ok(b64(name, &v)?)
}

/// A ciphertext that must be there, of the form `ncpkms:v{n}:{base64}`
/// (phase 1).
fn present_sealed(v: Option<String>) -> V3Result<Sealed> {
    let v = required(v, "ciphertext")?;
    Ok(parse_sealed("ciphertext", &v)?)
}

/// The context of one item for key `e` (phase 2): checked on convergent
/// keys, ignored (as the single calls do) on the others.
fn item_context(e: &KeyEntry, c: Option<String>) -> V3Result<Option<Vec<u8>>> {
    let raw = RawContext::from_value(c.map(Value::String))?;
    if e.key.is_convergent {
        Ok(raw.strict()?)
    } else {
        Ok(raw.lenient())
    }
}

/// The key of the path, charged one quota unit per item.
async fn key_for(st: &AppState, auth: &Caller, tag: &KeyUid, n: usize) -> V3Result<Arc<KeyEntry>> {
    auth.charge_items(n)?;
    Ok(st.engine.owned_key(auth.account_id, tag).await?)
}

/// `POST .../batch-encrypt`: `{"requests":[{"plaintext","context"}]}` ->
/// 200 `{"results":{"0":{"ciphertext"}}}`.
pub(super) async fn batch_encrypt(
    State(st): State<AppState>,
    auth: Result<Caller, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<BatchBody<EncryptItem>>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let items = items(b)?;
    // Phase 1: empty values and formats.
    let mut fail = Failures::new();
    let mut decoded = Vec::with_capacity(items.len());
    for (i, it) in items.into_iter().enumerate() {
        match present_base64("plaintext", it.plaintext) {
            Ok(p) => decoded.push((p, it.context)),
            Err(e) => {
                fail.insert(i, e);
            }
        }
    }
    if !fail.is_empty() {
        return Ok(failures(fail));
    }
    let e = key_for(&st, &auth, &tag, decoded.len()).await?;
    // Phase 2: sizes and context.
    let limit = match key_type_of(&e)? {
        KeyType::Rsa2048 => RSA_ENCRYPT_MAX,
        _ => ENCRYPT_MAX,
    };
    let mut ready = Vec::with_capacity(decoded.len());
    for (i, (p, c)) in decoded.into_iter().enumerate() {
        if p.len() > limit {
            fail.insert(
                i,
                V3Error::invalid(format!(
                    "plaintext must be at most {limit} bytes for a {} key",
                    e.key.key_type
                )),
            );
            continue;
        }
        match item_context(&e, c) {
            Ok(c) => ready.push((p, c)),
            Err(err) => {
                fail.insert(i, err);
            }
        }
    }
    if !fail.is_empty() {
        return Ok(failures(fail));
    }
    let mut out = Vec::with_capacity(ready.len());
    for (i, (p, c)) in ready.into_iter().enumerate() {
        match st.engine.encrypt(auth.account_id, &tag, p, c).await {
            Ok(s) => {
                auth.note_version(s.version);
                out.push(json!({"ciphertext": format_sealed(&s)}));
            }
            Err(err) => return Ok(failures(Failures::from([(i, err.into())]))),
        }
    }
    Ok(results(out))
}

/// Phases 1 and 2 of batchDecrypt / batchReEncrypt: the parsed ciphertexts
/// (their versions present on the key, their sizes within the key type's)
/// with their contexts, or the failures.
async fn decrypt_items(
    st: &AppState,
    auth: &Caller,
    tag: &KeyUid,
    b: BatchBody<DecryptItem>,
) -> V3Result<Result<Vec<(Sealed, Option<Vec<u8>>)>, Response>> {
    let items = items(b)?;
    let mut fail = Failures::new();
    let mut parsed = Vec::with_capacity(items.len());
    for (i, it) in items.into_iter().enumerate() {
        match present_sealed(it.ciphertext) {
            Ok(s) => parsed.push((s, it.context)),
            Err(e) => {
                fail.insert(i, e);
            }
        }
    }
    if !fail.is_empty() {
        return Ok(Err(failures(fail)));
    }
    let e = key_for(st, auth, tag, parsed.len()).await?;
    let limit = match key_type_of(&e)? {
        KeyType::Rsa2048 => RSA_LEN,
        _ => AES_CIPHERTEXT_MAX,
    };
    let mut ready = Vec::with_capacity(parsed.len());
    for (i, (s, c)) in parsed.into_iter().enumerate() {
        if !e
            .versions
            .iter()
            .any(|v| v.version == s.version && v.state == VersionState::Active)
        {
            fail.insert(
                i,
                V3Error::not_found(format!("the key has no version {}", s.version)),
            );
            continue;
        }
        if s.blob.len() > limit {
            fail.insert(
                i,
                V3Error::invalid(format!(
                    "ciphertext must decode to at most {limit} bytes for a {} key",
                    e.key.key_type
                )),
            );
            continue;
        }
        match item_context(&e, c) {
            Ok(c) => ready.push((s, c)),
            Err(err) => {
                fail.insert(i, err);
            }
        }
    }
    if !fail.is_empty() {
        return Ok(Err(failures(fail)));
    }
    Ok(Ok(ready))
}

/// `POST .../batch-decrypt` -> 200 `{"results":{"0":{"plaintext"}}}`.
pub(super) async fn batch_decrypt(
    State(st): State<AppState>,
    auth: Result<Caller, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<BatchBody<DecryptItem>>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let ready = match decrypt_items(&st, &auth, &tag, b).await? {
        Ok(r) => r,
        Err(resp) => return Ok(resp),
    };
    let mut out = Vec::with_capacity(ready.len());
    for (i, (s, c)) in ready.into_iter().enumerate() {
        auth.note_version(s.version);
        match st.engine.decrypt(auth.account_id, &tag, &s, c).await {
            Ok(p) => out.push(json!({"plaintext": enc(&p)})),
            Err(err) => return Ok(failures(Failures::from([(i, err.into())]))),
        }
    }
    Ok(results(out))
}

/// `POST .../batch-re-encrypt` -> 200 `{"results":{"0":{"ciphertext"}}}`
/// under the current version; no plaintext in the answer.
pub(super) async fn batch_reencrypt(
    State(st): State<AppState>,
    auth: Result<Caller, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<BatchBody<DecryptItem>>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let ready = match decrypt_items(&st, &auth, &tag, b).await? {
        Ok(r) => r,
        Err(resp) => return Ok(resp),
    };
    let mut out = Vec::with_capacity(ready.len());
    for (i, (s, c)) in ready.into_iter().enumerate() {
        match st.engine.reencrypt(auth.account_id, &tag, &s, c).await {
            Ok(n) => {
                auth.note_version(n.version);
                out.push(json!({"ciphertext": format_sealed(&n)}));
            }
            Err(err) => return Ok(failures(Failures::from([(i, err.into())]))),
        }
    }
    Ok(results(out))
}
