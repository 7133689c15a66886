//! v3 IP ACL (`getKeyAcl`, `updateKeyAcl`, `listKeyAclAllowedIps`,
//! `addKeyAclAllowedIps`, `removeKeyAclAllowedIps`) and the activity-log
//! query (`listKeyActivities`), on the same ACL and log as API 2.0.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::auth::AccountAuth;
use super::super::NaverError;
use super::{decimal, key_tag, paging, required, rfc3339, V3Error, V3Json, V3Result};
use crate::api::AppState;
use crate::core::KeyUid;
use crate::core::{ActivityRecord, KeyStatus};

/// Allowed IPs per call (the pages: "항목 수: 1 ~ 100").
const IPS_MAX: usize = 100;
/// Activity records one query reads at most before filtering and paging
/// (**chosen** bound: a narrower time range answers a busier key).
const ACTIVITY_SCAN_MAX: i64 = 100_000;
/// Store page of the activity scan.
const ACTIVITY_CHUNK: i64 = 1_000;

pub(in crate::api::naver) fn router() -> Router<AppState> {
    Router::new()
        .route("/kms/v3/keys/{key_tag}/acl", get(get_acl).patch(update_acl))
        .route("/kms/v3/keys/{key_tag}/acl/allowed-ips", get(list_ips))
        .route("/kms/v3/keys/{key_tag}/acl/add-allowed-ips", post(add_ips))
        .route(
            "/kms/v3/keys/{key_tag}/acl/remove-allowed-ips",
            post(remove_ips),
        )
        .route("/kms/v3/keys/{key_tag}/activities", get(activities))
}

/// "ENABLED 상태의 키만 수정할 수 있습니다": 409 `Conflict` otherwise
/// (**chosen** code: v3's name for a state that refuses the call).
async fn enabled_key(st: &AppState, account_id: i64, tag: &KeyUid) -> V3Result<()> {
    let e = st.engine.owned_key(account_id, tag).await?;
    if e.key.status != KeyStatus::Enabled {
        return Err(V3Error::new(
            StatusCode::CONFLICT,
            "only an ENABLED key's IP ACL can be changed",
        ));
    }
    Ok(())
}

/// `GET /kms/v3/keys/{keyTag}/acl` -> `{"keyTag","enabled"}` (**chosen**
/// names: the PATCH body's).
async fn get_acl(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let (on, _) = st.engine.acl(auth.account_id, &tag).await?;
    Ok(Json(json!({"keyTag": tag, "enabled": on})).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AclPatch {
    enabled: Option<bool>,
}

/// `PATCH /kms/v3/keys/{keyTag}/acl` (`application/json` or
/// `application/merge-patch+json`): `{}` changes nothing and answers the
/// current setting.
async fn update_acl(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<AclPatch>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    if let Some(on) = b.enabled {
        enabled_key(&st, auth.account_id, &tag).await?;
        st.engine.set_acl(auth.account_id, &tag, on).await?;
    }
    let (on, _) = st.engine.acl(auth.account_id, &tag).await?;
    Ok(Json(json!({"keyTag": tag, "enabled": on})).into_response())
}

/// `GET .../acl/allowed-ips?pageNo&pageSize` -> `{"allowedIps", "pageNo",
/// "pageSize", "totalCount"}`, ascending by text.
async fn list_ips(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
    Query(q): Query<HashMap<String, String>>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let (page_no, page_size) = paging(&q)?;
    let (_, mut ips) = st.engine.acl(auth.account_id, &tag).await?;
    ips.sort();
    let total = ips.len();
    let start = usize::try_from(page_no.saturating_mul(page_size)).unwrap_or(usize::MAX);
    let page: Vec<String> = ips
        .into_iter()
        .skip(start)
        .take(usize::try_from(page_size).unwrap_or(0))
        .collect();
    Ok(Json(json!({
        "allowedIps": page,
        "pageNo": page_no,
        "pageSize": page_size,
        "totalCount": total,
    }))
    .into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IpsBody {
    allowed_ips: Option<Vec<String>>,
}

fn ip_list(b: IpsBody) -> V3Result<Vec<String>> {
    let ips = required(b.allowed_ips, "allowedIps")?;
    if ips.is_empty() || ips.len() > IPS_MAX {
        return Err(V3Error::invalid(format!(
            "allowedIps must hold 1 to {IPS_MAX} entries"
        )));
    }
    Ok(ips)
}

/// `POST .../acl/add-allowed-ips` `{"allowedIps":[...]}` -> the whole list
/// `{"allowedIps":[...]}`.
async fn add_ips(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<IpsBody>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let ips = ip_list(b)?;
    enabled_key(&st, auth.account_id, &tag).await?;
    let mut all = st
        .engine
        .change_acl_rules(auth.account_id, &tag, &ips, true)
        .await?;
    all.sort();
    Ok(Json(json!({"allowedIps": all})).into_response())
}

/// The form the shared ACL stores a rule in (an address without `/32`, a
/// range with its host bits cleared): how 2.0 and v3 compare entries.
fn stored_form(r: &str) -> V3Result<String> {
    let n = crate::core::parse_rule(r).map_err(V3Error::invalid)?;
    Ok(if n.prefix_len() == 32 {
        n.addr().to_string()
    } else {
        n.to_string()
    })
}

/// `POST .../acl/remove-allowed-ips`: on a key with allowed IPs, one entry
/// that is not listed refuses the whole call (400, nothing removed); on a
/// key with none, success and an empty list.
async fn remove_ips(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<IpsBody>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let ips = ip_list(b)?;
    enabled_key(&st, auth.account_id, &tag).await?;
    let (_, existing) = st.engine.acl(auth.account_id, &tag).await?;
    if existing.is_empty() {
        return Ok(Json(json!({"allowedIps": Vec::<String>::new()})).into_response());
    }
    for ip in &ips {
        if !existing.contains(&stored_form(ip)?) {
            return Err(V3Error::invalid(format!(
                "{ip} is not in the key's allowed IPs"
            )));
        }
    }
    let mut all = st
        .engine
        .change_acl_rules(auth.account_id, &tag, &ips, false)
        .await?;
    all.sort();
    Ok(Json(json!({"allowedIps": all})).into_response())
}

/// One activity record as v3 lists it (**chosen** field names: the page's
/// filter names, `actionCode`, `resultCode`, `requestType`, `requestorId`,
/// `requestorIp`, and the key version, HTTP status and time).
fn activity_json(a: &ActivityRecord) -> Value {
    json!({
        "createdAt": rfc3339(a.at),
        "keyTag": a.key_uid,
        "keyVersion": a.version,
        "actionCode": a.action,
        "resultCode": a.result,
        "requestType": if a.auth_type == "SYSTEM" { "SYSTEM" } else { "API" },
        "authType": a.auth_type,
        "requestorId": a.caller,
        "requestorIp": a.source_ip,
        "httpStatus": a.status,
        "message": a.message,
    })
}

/// The filters of `listKeyActivities`: each may repeat (any value matches),
/// different filters must all match; exact, case-sensitive.
#[derive(Default)]
struct Filters(HashMap<&'static str, Vec<String>>);

const FILTERS: [&str; 5] = [
    "actionCode",
    "resultCode",
    "requestType",
    "requestorId",
    "requestorIp",
];

impl Filters {
    fn matches(&self, v: &Value) -> bool {
        self.0.iter().all(|(name, wanted)| {
            v[*name]
                .as_str()
                .is_some_and(|s| wanted.iter().any(|w| w == s))
        })
    }
}

/// `GET /kms/v3/keys/{keyTag}/activities`: newest first; `pageNo` from 0,
/// `pageSize` 1..200 (default 20); the time range `timestampFrom` /
/// `timestampTo` (ms; **chosen**: 2.0's names, the page cut off before the
/// range's) defaults to the last 24 hours.
async fn activities(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
    Query(pairs): Query<Vec<(String, String)>>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let mut single: HashMap<String, String> = HashMap::new();
    let mut filters = Filters::default();
    for (k, v) in pairs {
        if let Some(name) = FILTERS.iter().find(|f| **f == k) {
            filters.0.entry(*name).or_default().push(v);
        } else {
            single.insert(k, v);
        }
    }
    let (page_no, page_size) = paging(&single)?;
    let now = crate::core::now_ms();
    let to = match single.get("timestampTo") {
        Some(s) => decimal("timestampTo", s, 0, i64::MAX / 2)?,
        None => now,
    };
    let from = match single.get("timestampFrom") {
        Some(s) => decimal("timestampFrom", s, 0, i64::MAX / 2)?,
        None => to.saturating_sub(24 * 3600 * 1000),
    };
    if from > to {
        return Err(V3Error::invalid(
            "timestampFrom must not be after timestampTo",
        ));
    }
    // The store lists oldest first, 1-based pages: read the range, keep
    // what the filters match, then page newest first.
    let mut matched = Vec::new();
    let mut store_page = 1;
    loop {
        let (rows, total) = st
            .engine
            .key_activity(
                auth.account_id,
                &tag,
                from,
                to,
                None,
                store_page,
                ACTIVITY_CHUNK,
            )
            .await?;
        if total > ACTIVITY_SCAN_MAX {
            return Err(V3Error::invalid(format!(
                "more than {ACTIVITY_SCAN_MAX} records in the time range: narrow timestampFrom / timestampTo"
            )));
        }
        let n = rows.len();
        matched.extend(
            rows.iter()
                .map(activity_json)
                .filter(|v| filters.matches(v)),
        );
        if n < usize::try_from(ACTIVITY_CHUNK).unwrap_or(0) {
            break;
        }
        store_page += 1;
    }
    matched.reverse();
    let total = matched.len();
    let start = usize::try_from(page_no.saturating_mul(page_size)).unwrap_or(usize::MAX);
    let page: Vec<Value> = matched
        .into_iter()
        .skip(start)
        .take(usize::try_from(page_size).unwrap_or(0))
        .collect();
    Ok(Json(json!({
        "activities": page,
        "pageNo": page_no,
        "pageSize": page_size,
        "totalCount": total,
    }))
    .into_response())
}
