//! NHN management endpoints: key creation and the two-step deletion,
//! key-store credentials, and the key-store queries. They need the appkey
//! and a User Access Key of the project ([`ManageCtx`]; a project may turn
//! that off), not the key store's IPv4 / MAC / certificate checks.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::routing::{get, post, put};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::audit::{noted, AuditNote};
use super::format::{credential_record, datetime, key_record, key_store_record};
use super::{success, ManageCtx, NhnCtx, NhnError, NhnJson, NhnResult};
use crate::api::AppState;
use crate::core::nhn::NhnKeyFilter;
use crate::core::nhn::{CredentialKind, NhnKeyType};
use crate::core::KeyUid;

const P: &str = "/keymanager/v1.2/appkey/{appkey}";

pub(super) fn router() -> Router<AppState> {
    Router::new()
        // `{keyid}` is the key type on create: one parameter name per segment.
        .route(&format!("{P}/keys/{{keyid}}/create"), post(create_key))
        .route(&format!("{P}/keys/{{keyid}}/delete"), put(request_deletion))
        .route(
            &format!("{P}/keys/{{keyid}}"),
            axum::routing::delete(delete_now),
        )
        .route(&format!("{P}/auths/{{kind}}"), post(add_credential))
        .route(
            &format!("{P}/auths/{{kind}}/delete"),
            put(request_credential_deletion).post(delete_credential_now),
        )
        .route(&format!("{P}/keystores"), get(key_stores))
        .route(
            "/keymanager/v1.0/appkey/{appkey}/keystores",
            get(key_stores),
        )
        .route(&format!("{P}/keystores/{{ksid}}"), get(key_store))
        .route(&format!("{P}/keystores/{{ksid}}/keys"), get(keys))
        .route(&format!("{P}/keystores/{{ksid}}/keys/{{keyid}}"), get(key))
        .route(&format!("{P}/keystores/{{ksid}}/ips"), get(ips))
        .route(&format!("{P}/keystores/{{ksid}}/macs"), get(macs))
        .route(
            &format!("{P}/keystores/{{ksid}}/certificates"),
            get(certificates),
        )
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateKeyBody {
    key_store_name: Option<String>,
    name: Option<String>,
    description: Option<String>,
    secret_value: Option<String>,
    auto_rotation_period: Option<i64>,
}

fn required(v: Option<String>, field: &str) -> Result<String, NhnError> {
    v.ok_or_else(|| NhnError::bad_request(format!("{field} is required")))
}

async fn create_key(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Path((_, kind)): Path<(String, String)>,
    NhnJson(b): NhnJson<CreateKeyBody>,
) -> NhnResult {
    let kind = match kind.as_str() {
        "secrets" => NhnKeyType::Secret,
        "symmetric-keys" => NhnKeyType::Symmetric,
        "asymmetric-keys" => NhnKeyType::Asymmetric,
        other => {
            return Err(NhnError::bad_request(format!(
                "unknown key kind {other:?}: secrets, symmetric-keys or asymmetric-keys"
            )))
        }
    };
    let store = required(b.key_store_name, "keyStoreName")?;
    let name = required(b.name, "name")?;
    let v = st
        .engine
        .nhn_create_key(
            &ctx.project,
            &store,
            kind,
            &name,
            b.description.as_deref().unwrap_or(""),
            b.secret_value.as_deref(),
            b.auto_rotation_period.unwrap_or(0),
            &ctx.user,
        )
        .await?;
    let version = v.entry.current().map(|c| c.version);
    Ok(noted(
        success(json!({"keyId": v.entry.key.uid, "keyStatus": "ACTIVE"})),
        AuditNote {
            key_uid: Some(v.entry.key.uid.to_string()),
            version,
            detail: Some(format!("keyStore={store}")),
        },
    ))
}

async fn request_deletion(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Path((_, keyid)): Path<(String, KeyUid)>,
) -> NhnResult {
    let at = st
        .engine
        .nhn_request_key_deletion(&ctx.project, &keyid, &ctx.user)
        .await?;
    Ok(success(
        json!({"keyId": keyid, "deletionDateTime": datetime(at)}),
    ))
}

async fn delete_now(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Path((_, keyid)): Path<(String, KeyUid)>,
) -> NhnResult {
    let at = st.engine.nhn_delete_key_now(&ctx.project, &keyid).await?;
    Ok(success(
        json!({"keyId": keyid, "deletionDateTime": datetime(at)}),
    ))
}

fn credential_kind(s: &str) -> Result<CredentialKind, NhnError> {
    match s {
        "ipv4s" => Ok(CredentialKind::Ipv4),
        "macs" => Ok(CredentialKind::Mac),
        "certificates" => Ok(CredentialKind::Certificate),
        other => Err(NhnError::bad_request(format!(
            "unknown credential kind {other:?}: ipv4s, macs or certificates"
        ))),
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CredentialBody {
    key_store_name: Option<String>,
    value: Option<String>,
    name: Option<String>,
    description: Option<String>,
    password: Option<String>,
    life_time: Option<i64>,
}

impl CredentialBody {
    /// `value` for addresses, `name` for certificates.
    fn subject(&mut self, kind: CredentialKind) -> Result<String, NhnError> {
        match kind {
            CredentialKind::Certificate => required(self.name.take(), "name"),
            _ => required(self.value.take(), "value"),
        }
    }
}

async fn add_credential(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Path((_, kind)): Path<(String, String)>,
    NhnJson(mut b): NhnJson<CredentialBody>,
) -> NhnResult {
    let kind = credential_kind(&kind)?;
    let store = required(b.key_store_name.take(), "keyStoreName")?;
    let subject = b.subject(kind)?;
    let description = b.description.unwrap_or_default();
    let note = credential_note(&store, kind, &subject);
    let resp = match kind {
        CredentialKind::Certificate => {
            let password = required(b.password, "password")?;
            let life = b
                .life_time
                .ok_or_else(|| NhnError::bad_request("lifeTime is required"))?;
            let row = st
                .engine
                .nhn_add_certificate(
                    &ctx.project,
                    &store,
                    &subject,
                    &password,
                    life,
                    &description,
                    &ctx.user,
                )
                .await?;
            // The password is shown here, once: it is not kept, and the
            // certificate queries answer it as null.
            success(
                json!({"name": row.value, "description": row.description, "password": password}),
            )
        }
        _ => {
            let row = st
                .engine
                .nhn_add_address(
                    &ctx.project,
                    &store,
                    kind,
                    &subject,
                    &description,
                    &ctx.user,
                )
                .await?;
            success(json!({"value": row.value, "description": row.description}))
        }
    };
    Ok(noted(resp, note))
}

/// The record's note on a credential call: key store, kind, address or
/// certificate name (never the certificate's password).
fn credential_note(store: &str, kind: CredentialKind, subject: &str) -> AuditNote {
    let kind = match kind {
        CredentialKind::Ipv4 => "ipv4",
        CredentialKind::Mac => "mac",
        CredentialKind::Certificate => "certificate",
    };
    AuditNote {
        detail: Some(format!("keyStore={store} {kind}={subject}")),
        ..Default::default()
    }
}

fn deletion_body(kind: CredentialKind, subject: String, at: i64) -> Value {
    let field = if kind == CredentialKind::Certificate {
        "name"
    } else {
        "value"
    };
    json!({field: subject, "deletionDateTime": datetime(at)})
}

async fn request_credential_deletion(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Path((_, kind)): Path<(String, String)>,
    NhnJson(mut b): NhnJson<CredentialBody>,
) -> NhnResult {
    let kind = credential_kind(&kind)?;
    let store = required(b.key_store_name.take(), "keyStoreName")?;
    let subject = b.subject(kind)?;
    let note = credential_note(&store, kind, &subject);
    let (v, at) = st
        .engine
        .nhn_request_credential_deletion(&ctx.project, &store, kind, &subject, &ctx.user)
        .await?;
    Ok(noted(success(deletion_body(kind, v, at)), note))
}

async fn delete_credential_now(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Path((_, kind)): Path<(String, String)>,
    NhnJson(mut b): NhnJson<CredentialBody>,
) -> NhnResult {
    let kind = credential_kind(&kind)?;
    let store = required(b.key_store_name.take(), "keyStoreName")?;
    let subject = b.subject(kind)?;
    let note = credential_note(&store, kind, &subject);
    let (v, at) = st
        .engine
        .nhn_delete_credential_now(&ctx.project, &store, kind, &subject, &ctx.user)
        .await?;
    Ok(noted(success(deletion_body(kind, v, at)), note))
}

/// A `true` / `false` query flag (any case), `false` when absent.
pub(crate) fn flag(q: &HashMap<String, String>, name: &str) -> Result<bool, NhnError> {
    match q.get(name).map(|s| s.to_ascii_lowercase()) {
        None => Ok(false),
        Some(s) if s == "true" => Ok(true),
        Some(s) if s == "false" => Ok(false),
        Some(_) => Err(NhnError::bad_request(format!(
            "{name} must be true or false"
        ))),
    }
}

async fn key_stores(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Query(q): Query<HashMap<String, String>>,
) -> NhnResult {
    let stores = st.engine.nhn_key_stores(&ctx.project).await?;
    if flag(&q, "detail")? {
        let list: Vec<Value> = stores.iter().map(key_store_record).collect();
        Ok(success(json!({"keyStoreList": list})))
    } else {
        let ids: Vec<i64> = stores.iter().map(|s| s.id).collect();
        Ok(success(json!({"keyStoreIdList": ids})))
    }
}

fn store_id(s: &str) -> Result<i64, NhnError> {
    s.parse()
        .map_err(|_| NhnError::bad_request("keyStoreId must be a number"))
}

async fn key_store(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Path((_, ksid)): Path<(String, String)>,
) -> NhnResult {
    let s = st
        .engine
        .nhn_key_store(&ctx.project, store_id(&ksid)?)
        .await?;
    Ok(success(key_store_record(&s)))
}

/// The filters and page of Get Key List.
pub(crate) fn key_filter(q: &HashMap<String, String>) -> Result<NhnKeyFilter, NhnError> {
    let nhn_type = match q.get("type") {
        None => None,
        Some(t) => Some(
            NhnKeyType::parse(t)
                .ok_or_else(|| {
                    NhnError::bad_request("type must be SECRET, SYMMETRIC_KEY or ASYMMETRIC_KEY")
                })?
                .as_str()
                .to_string(),
        ),
    };
    let name = match q.get("name") {
        Some(n) if n.chars().count() > 100 => {
            return Err(NhnError::bad_request("name must be at most 100 characters"))
        }
        other => other.cloned().filter(|n| !n.is_empty()),
    };
    let active = match q.get("status").map(|s| s.to_ascii_lowercase()) {
        None => None,
        Some(s) if s == "active" => Some(true),
        Some(s) if s == "inactive" => Some(false),
        Some(_) => return Err(NhnError::bad_request("status must be active or inactive")),
    };
    let page_number = match q.get("pageNumber") {
        None => 1,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| *n >= 1)
            .ok_or_else(|| NhnError::bad_request("pageNumber must be a positive integer"))?,
    };
    let page_size = match q.get("pageSize") {
        None => 10,
        Some(s) => s
            .parse::<i64>()
            .ok()
            .filter(|n| (10..=100).contains(n))
            .ok_or_else(|| NhnError::bad_request("pageSize must be between 10 and 100"))?,
    };
    Ok(NhnKeyFilter {
        nhn_type,
        name,
        active,
        offset: (page_number - 1).saturating_mul(page_size),
        limit: page_size,
    })
}

async fn keys(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Path((_, ksid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> NhnResult {
    let detail = flag(&q, "detail")?;
    let mut filter = key_filter(&q)?;
    // The key-id list (no `detail`) has no paging in NHN's guide: without
    // `pageNumber` / `pageSize` it lists every id of the key store. Paging
    // (default 10 a page) is the detailed list's.
    if !detail && !q.contains_key("pageNumber") && !q.contains_key("pageSize") {
        filter.offset = 0;
        filter.limit = i64::MAX;
    }
    let (views, _total) = st
        .engine
        .nhn_list_keys(&ctx.project, store_id(&ksid)?, &filter)
        .await?;
    if detail {
        let list: Vec<Value> = views.iter().map(key_record).collect();
        Ok(success(json!({"keyList": list})))
    } else {
        let ids: Vec<&str> = views.iter().map(|v| v.entry.key.uid.as_str()).collect();
        Ok(success(json!({"keyIdList": ids})))
    }
}

async fn key(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Path((_, ksid, keyid)): Path<(String, String, KeyUid)>,
) -> NhnResult {
    let v = st
        .engine
        .nhn_key_in_store(&ctx.project, store_id(&ksid)?, &keyid)
        .await?;
    Ok(success(key_record(&v)))
}

async fn list_credentials(
    st: AppState,
    ctx: NhnCtx,
    ksid: String,
    q: HashMap<String, String>,
    kind: CredentialKind,
    list_field: &str,
) -> NhnResult {
    let value = q.get("value").map(String::as_str);
    let views = st
        .engine
        .nhn_list_credentials(&ctx.project, store_id(&ksid)?, kind, value)
        .await?;
    let list: Vec<Value> = if value.is_some() {
        views.iter().map(credential_record).collect()
    } else {
        views.iter().map(|v| json!(v.row.value)).collect()
    };
    Ok(success(json!({list_field: list})))
}

async fn ips(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Path((_, ksid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> NhnResult {
    list_credentials(st, ctx, ksid, q, CredentialKind::Ipv4, "ipv4List").await
}

async fn macs(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Path((_, ksid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> NhnResult {
    list_credentials(st, ctx, ksid, q, CredentialKind::Mac, "macList").await
}

async fn certificates(
    State(st): State<AppState>,
    ManageCtx(ctx): ManageCtx,
    Path((_, ksid)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> NhnResult {
    list_credentials(
        st,
        ctx,
        ksid,
        q,
        CredentialKind::Certificate,
        "certificateList",
    )
    .await
}
