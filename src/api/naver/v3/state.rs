//! v3 key state and metadata calls: `updateKey` (memo, status),
//! `updateKeyRotation`, `updateKeyVersion`, the token generator
//! (`activate`/`rotate`/`deactivateKeyTokenGenerator`) and key deletion
//! (`requestKeyDeletion` / `cancelKeyDeletion`), on 2.0's engine calls.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{patch, post};
use axum::{Json, Router};
use serde_json::{json, Map, Value};

use super::super::auth::{AccountAuth, NoteVersion};
use super::super::NaverError;
use super::{decimal, key_json, key_tag, version_json, V3Error, V3Json, V3Result};
use crate::api::AppState;
use crate::core::KeyStatus;
use crate::core::KeyUid;

pub(in crate::api::naver) fn router() -> Router<AppState> {
    Router::new()
        .route("/kms/v3/keys/{key_tag}/rotation", patch(update_rotation))
        .route(
            "/kms/v3/keys/{key_tag}/activate-token-generator",
            post(activate_generator),
        )
        .route(
            "/kms/v3/keys/{key_tag}/rotate-token-generator",
            post(rotate_generator),
        )
        .route(
            "/kms/v3/keys/{key_tag}/deactivate-token-generator",
            post(deactivate_generator),
        )
        .route(
            "/kms/v3/keys/{key_tag}/request-deletion",
            post(request_deletion),
        )
        .route(
            "/kms/v3/keys/{key_tag}/cancel-deletion",
            post(cancel_deletion),
        )
}

/// The fields of a merge-patch body, refusing any other.
fn fields(b: Map<String, Value>, allowed: &[&str]) -> V3Result<Map<String, Value>> {
    if let Some(k) = b.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(V3Error::invalid(format!("unknown field {k}")));
    }
    Ok(b)
}

fn not_enabled() -> V3Error {
    V3Error::new(StatusCode::CONFLICT, "the key is not ENABLED")
}

async fn require_enabled(st: &AppState, account_id: i64, tag: &KeyUid) -> V3Result<()> {
    let e = st.engine.owned_key(account_id, tag).await?;
    if e.key.status != KeyStatus::Enabled {
        return Err(not_enabled());
    }
    Ok(())
}

/// `PATCH /kms/v3/keys/{keyTag}` (updateKey): only the fields sent change;
/// `memo: null` clears the memo; `status` is `ENABLED` or `DISABLED`;
/// `{}` answers the key unchanged. Renaming (`keyName`) is refused: the
/// engine has no rename (left out, see docs/naver-v3.md).
pub(super) async fn update_key(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<Map<String, Value>>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let b = fields(b, &["keyName", "memo", "status"])?;
    if let Some(v) = b.get("keyName") {
        if v.is_null() {
            return Err(V3Error::invalid("keyName cannot be null"));
        }
        return Err(V3Error::invalid("keyName cannot be changed by hsm-kms"));
    }
    let status = match b.get("status") {
        None => None,
        Some(Value::String(s)) if s == "ENABLED" => Some(true),
        Some(Value::String(s)) if s == "DISABLED" => Some(false),
        Some(_) => return Err(V3Error::invalid("status must be ENABLED or DISABLED")),
    };
    let memo = match b.get("memo") {
        None => None,
        Some(Value::Null) => Some(String::new()),
        Some(Value::String(m)) if !m.is_empty() && m.chars().count() <= 100 => Some(m.clone()),
        Some(_) => {
            return Err(V3Error::invalid(
                "memo must be 1 to 100 characters, or null",
            ))
        }
    };
    let mut e = st.engine.owned_key(auth.account_id, &tag).await?;
    if let Some(m) = memo {
        e = st.engine.update_memo(auth.account_id, &tag, m).await?;
    }
    match status {
        Some(true) => e = st.engine.enable_key(auth.account_id, &tag).await?,
        Some(false) => e = st.engine.disable_key(auth.account_id, &tag).await?,
        None => {}
    }
    Ok(Json(key_json(&e)).into_response())
}

/// `PATCH /kms/v3/keys/{keyTag}/rotation` (updateKeyRotation): `enabled`
/// first, then `periodDays` (only while rotation is on after `enabled`);
/// ENABLED keys only; `{}` answers the setting unchanged.
async fn update_rotation(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<Map<String, Value>>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let b = fields(b, &["enabled", "periodDays"])?;
    let enabled = match b.get("enabled") {
        None => None,
        Some(Value::Bool(on)) => Some(*on),
        Some(_) => return Err(V3Error::invalid("enabled must be true or false")),
    };
    let days = match b.get("periodDays") {
        None => None,
        Some(v) => Some(
            v.as_i64()
                .filter(|d| (1..=730).contains(d))
                .ok_or_else(|| V3Error::invalid("periodDays must be an integer from 1 to 730"))?,
        ),
    };
    let mut e = st.engine.owned_key(auth.account_id, &tag).await?;
    if enabled.is_some() || days.is_some() {
        if e.key.status != KeyStatus::Enabled {
            return Err(not_enabled());
        }
        let on_after = enabled.unwrap_or(e.key.is_auto_rotation);
        if days.is_some() && !on_after {
            return Err(V3Error::invalid(
                "periodDays can be sent only while automatic rotation is on",
            ));
        }
        if let Some(on) = enabled {
            e = st
                .engine
                .set_auto_rotation(auth.account_id, &tag, on)
                .await?;
        }
        if let Some(d) = days {
            e = st
                .engine
                .update_rotation_period(auth.account_id, &tag, d)
                .await?;
        }
    }
    Ok(Json(key_json(&e)["rotation"].clone()).into_response())
}

/// `PATCH /kms/v3/keys/{keyTag}/versions/{version}` (updateKeyVersion):
/// `status` `ENABLED` or `DISABLED`; the current version cannot change;
/// `{}` answers the version unchanged.
pub(super) async fn update_version(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path((tag, version)): Path<(String, String)>,
    V3Json(b): V3Json<Map<String, Value>>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let n = decimal("version", &version, 1, i64::from(i32::MAX))?;
    auth.note_version(n);
    let b = fields(b, &["status"])?;
    let enabled = match b.get("status") {
        None => None,
        Some(Value::String(s)) if s == "ENABLED" => Some(true),
        Some(Value::String(s)) if s == "DISABLED" => Some(false),
        Some(_) => return Err(V3Error::invalid("status must be ENABLED or DISABLED")),
    };
    let e = super::with_version(&st, auth.account_id, &tag, n).await?;
    if let Some(on) = enabled {
        if e.current().map(|v| v.version) == Some(n) {
            return Err(V3Error::new(
                StatusCode::CONFLICT,
                "the current version's status cannot change",
            ));
        }
        st.engine
            .set_version_enabled(auth.account_id, &tag, n, on)
            .await?;
    }
    let e = st.engine.owned_key(auth.account_id, &tag).await?;
    let v = version_json(&e, n)
        .ok_or_else(|| V3Error::not_found(format!("the key has no version {n}")))?;
    Ok(Json(v).into_response())
}

/// `{"status","tokenGeneratorId"?}` of the token generator calls.
async fn generator_state(st: &AppState, account_id: i64, tag: &KeyUid) -> V3Result<Response> {
    let out = match st.engine.token_generator(account_id, tag).await {
        Ok(g) if g.status == crate::core::GeneratorStatus::Active => {
            json!({"status": "ENABLED", "tokenGeneratorId": g.generator_id})
        }
        Ok(_) | Err(crate::core::Error::NotFound(_)) => json!({"status": "DISABLED"}),
        Err(e) => return Err(e.into()),
    };
    Ok(Json(out).into_response())
}

async fn generator_active(st: &AppState, account_id: i64, tag: &KeyUid) -> V3Result<bool> {
    match st.engine.token_generator(account_id, tag).await {
        Ok(g) => Ok(g.status == crate::core::GeneratorStatus::Active),
        Err(crate::core::Error::NotFound(_)) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// activateKeyTokenGenerator: already active changes nothing.
async fn activate_generator(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    require_enabled(&st, auth.account_id, &tag).await?;
    if !generator_active(&st, auth.account_id, &tag).await? {
        st.engine
            .create_token_generator(auth.account_id, &tag)
            .await?;
    }
    generator_state(&st, auth.account_id, &tag).await
}

/// rotateKeyTokenGenerator: every token issued before is refused.
async fn rotate_generator(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    require_enabled(&st, auth.account_id, &tag).await?;
    if !generator_active(&st, auth.account_id, &tag).await? {
        return Err(V3Error::new(
            StatusCode::CONFLICT,
            "the key's token generator is not active",
        ));
    }
    st.engine
        .replace_token_generator(auth.account_id, &tag)
        .await?;
    generator_state(&st, auth.account_id, &tag).await
}

/// deactivateKeyTokenGenerator: already inactive changes nothing.
async fn deactivate_generator(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    require_enabled(&st, auth.account_id, &tag).await?;
    if generator_active(&st, auth.account_id, &tag).await? {
        st.engine
            .delete_token_generator(auth.account_id, &tag)
            .await?;
    }
    generator_state(&st, auth.account_id, &tag).await
}

/// requestKeyDeletion (**chosen** path and answer: 2.0's
/// `request-deletion`, the v3 key resource; the page was not found).
async fn request_deletion(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let e = st.engine.request_deletion(auth.account_id, &tag).await?;
    Ok(Json(key_json(&e)).into_response())
}

/// cancelKeyDeletion (**chosen** as requestKeyDeletion): the key is
/// DISABLED afterwards, as in 2.0.
async fn cancel_deletion(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let e = st.engine.cancel_deletion(auth.account_id, &tag).await?;
    Ok(Json(key_json(&e)).into_response())
}
