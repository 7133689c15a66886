//! API 2.0: token generators, token sets, IP ACL and activity logs.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{AccountAuth, RefreshAuth};
use super::v2::int_param;
use super::{success, NaverError, NaverJson, NaverResult};
use crate::api::AppState;
use crate::core::ActivityRecord;
use crate::core::KeyUid;
use crate::core::{Lifetime, DEFAULT_ACCESS_HOURS, DEFAULT_REFRESH_HOURS};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/kms/v1/keys/{key_tag}/acl/enable", post(enable_acl))
        .route("/kms/v1/keys/{key_tag}/acl/disable", post(disable_acl))
        .route(
            "/kms/v1/keys/{key_tag}/acl",
            get(get_acl).post(add_acl).delete(delete_acl),
        )
        .route(
            "/kms/v1/keys/{key_tag}/token-generator",
            post(create_generator)
                .get(get_generator)
                .put(update_generator)
                .delete(delete_generator),
        )
        .route(
            "/kms/v1/keys/{key_tag}/token-set",
            post(create_token_set).put(renew_token_set),
        )
        .route(
            "/kms/v1/keys/{key_tag}/access-token",
            post(create_access_token),
        )
        .route("/kms/v1/keys/{key_tag}/activities", get(activities))
        .route("/kms/v1/keys/{key_tag}/last-use-info", get(last_use_info))
}

// ---- IP ACL ----

async fn enable_acl(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    st.engine.set_acl(auth.account_id, &tag, true).await?;
    Ok(success(json!({"keyTag": tag, "isAclEnabled": true})))
}

async fn disable_acl(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    st.engine.set_acl(auth.account_id, &tag, false).await?;
    Ok(success(json!({"keyTag": tag, "isAclEnabled": false})))
}

async fn get_acl(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    let (on, rules) = st.engine.acl(auth.account_id, &tag).await?;
    Ok(success(
        json!({"keyTag": tag, "isAclEnabled": on, "allowedIpList": rules}),
    ))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct IpListBody {
    ip_list: Option<Vec<String>>,
}

async fn change_acl(
    st: AppState,
    auth: AccountAuth,
    tag: KeyUid,
    b: IpListBody,
    add: bool,
) -> NaverResult<Response> {
    let list = b
        .ip_list
        .ok_or_else(|| NaverError::bad_request("ipList is required"))?;
    let rules = st
        .engine
        .change_acl_rules(auth.account_id, &tag, &list, add)
        .await?;
    Ok(success(json!({"keyTag": tag, "allowedIpList": rules})))
}

async fn add_acl(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
    NaverJson(b): NaverJson<IpListBody>,
) -> NaverResult<Response> {
    change_acl(st, auth, tag, b, true).await
}

async fn delete_acl(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
    NaverJson(b): NaverJson<IpListBody>,
) -> NaverResult<Response> {
    change_acl(st, auth, tag, b, false).await
}

// ---- token generator ----

async fn create_generator(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    st.engine
        .create_token_generator(auth.account_id, &tag)
        .await?;
    Ok(success(Value::Null))
}

async fn get_generator(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    let g = st.engine.token_generator(auth.account_id, &tag).await?;
    Ok(success(json!({
        "tokenGeneratorId": g.generator_id,
        "status": g.status.as_str(),
        "enabledDate": g.enabled_at,
        "disabledDate": g.disabled_at,
        "issuedTokenCount": g.issued_count,
    })))
}

async fn update_generator(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    st.engine
        .replace_token_generator(auth.account_id, &tag)
        .await?;
    Ok(success(Value::Null))
}

async fn delete_generator(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    st.engine
        .delete_token_generator(auth.account_id, &tag)
        .await?;
    Ok(success(Value::Null))
}

// ---- token sets ----

/// `accessTokenHours` / `refreshTokenHours`: an integer or `"UL"`.
#[derive(Deserialize)]
#[serde(untagged)]
enum Hours {
    Number(i64),
    Text(String),
}

fn lifetime(field: &str, h: Option<Hours>, default: i64) -> NaverResult<Lifetime> {
    match h {
        None => Ok(Lifetime::Hours(default)),
        Some(Hours::Number(n)) => Ok(Lifetime::Hours(n)),
        Some(Hours::Text(t)) if t == "UL" => Ok(Lifetime::Unlimited),
        Some(Hours::Text(t)) => match t.parse::<i64>() {
            Ok(n) => Ok(Lifetime::Hours(n)),
            Err(_) => Err(NaverError::bad_request(format!(
                "{field} must be a number of hours or \"UL\""
            ))),
        },
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokenSetBody {
    access_token_hours: Option<Hours>,
    refresh_token_hours: Option<Hours>,
}

async fn create_token_set(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
    NaverJson(b): NaverJson<TokenSetBody>,
) -> NaverResult<Response> {
    let a = lifetime(
        "accessTokenHours",
        b.access_token_hours,
        DEFAULT_ACCESS_HOURS,
    )?;
    let r = lifetime(
        "refreshTokenHours",
        b.refresh_token_hours,
        DEFAULT_REFRESH_HOURS,
    )?;
    let set = st
        .engine
        .create_token_set(auth.account_id, &tag, a, r)
        .await?;
    Ok(success(json!({
        "refreshToken": set.refresh_token.as_ref().map(|t| t.as_str()),
        "accessToken": set.access_token.as_str(),
    })))
}

async fn renew_token_set(
    State(st): State<AppState>,
    auth: RefreshAuth,
    NaverJson(b): NaverJson<TokenSetBody>,
) -> NaverResult<Response> {
    let a = lifetime(
        "accessTokenHours",
        b.access_token_hours,
        DEFAULT_ACCESS_HOURS,
    )?;
    let r = lifetime(
        "refreshTokenHours",
        b.refresh_token_hours,
        DEFAULT_REFRESH_HOURS,
    )?;
    let set = st.engine.renew_token_set(&auth.token, a, r).await?;
    Ok(success(json!({
        "refreshToken": set.refresh_token.as_ref().map(|t| t.as_str()),
        "accessToken": set.access_token.as_str(),
    })))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccessTokenBody {
    access_token_hours: Option<Hours>,
}

async fn create_access_token(
    State(st): State<AppState>,
    auth: RefreshAuth,
    NaverJson(b): NaverJson<AccessTokenBody>,
) -> NaverResult<Response> {
    let a = lifetime(
        "accessTokenHours",
        b.access_token_hours,
        DEFAULT_ACCESS_HOURS,
    )?;
    let t = st.engine.create_access_token(&auth.token, a).await?;
    Ok(success(json!({"accessToken": t.as_str()})))
}

// ---- activity ----

fn iso8601(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // Always three fraction digits, so that the text sorts as the time does.
    t.format(time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .unwrap_or_default()
}

fn activity_json(a: &ActivityRecord) -> Value {
    json!({
        "timestamp": iso8601(a.at),
        "data": {
            "kmsKey": {
                "keyTag": a.key_uid,
                "keyName": a.key_name,
                "nrn": format!("nrn:PUB:KMS::{}:Key/{}", a.account_id, a.key_id),
                "keyVersion": a.version,
            },
            "requestor": {"requestType": if a.auth_type == "SYSTEM" { "SYSTEM" } else { "API" }, "id": a.caller, "ip": a.source_ip},
            "api": {"result": a.result, "action": a.action, "type": a.auth_type, "status": a.status},
        },
        "message": a.message,
    })
}

/// The query of Get Key Activity, checked.
#[derive(Debug)]
pub(crate) struct ActivityParams<'a> {
    /// `timestampFrom`, ms (default: a day before `to`).
    pub(crate) from: i64,
    /// `timestampTo`, ms (default: now).
    pub(crate) to: i64,
    /// `pageNo`, 1 to 2^31 - 1.
    pub(crate) page_no: i64,
    /// `pageSize`, 1 to 200.
    pub(crate) page_size: i64,
    /// `keyword`, when not empty.
    pub(crate) keyword: Option<&'a str>,
}

/// Reads the query of Get Key Activity at `now` (ms).
pub(crate) fn activity_params(
    q: &HashMap<String, String>,
    now: i64,
) -> NaverResult<ActivityParams<'_>> {
    let to = int_param(q, "timestampTo", now, 0, i64::MAX)?;
    let from = int_param(q, "timestampFrom", to - 24 * 3600 * 1000, 0, i64::MAX)?;
    if from > to {
        return Err(NaverError::bad_request(
            "timestampFrom must not be after timestampTo",
        ));
    }
    let page_no = int_param(q, "pageNo", 1, 1, i64::from(i32::MAX))?;
    let page_size = int_param(q, "pageSize", 100, 1, 200)?;
    let keyword = q
        .get("keyword")
        .map(String::as_str)
        .filter(|k| !k.is_empty());
    Ok(ActivityParams {
        from,
        to,
        page_no,
        page_size,
        keyword,
    })
}

async fn activities(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
    Query(q): Query<HashMap<String, String>>,
) -> NaverResult<Response> {
    let p = activity_params(&q, crate::core::now_ms())?;
    let (from, to, page_no, page_size) = (p.from, p.to, p.page_no, p.page_size);
    let keyword = p.keyword;
    let (rows, total) = st
        .engine
        .key_activity(auth.account_id, &tag, from, to, keyword, page_no, page_size)
        .await?;
    Ok(success(json!({
        "activityLogList": rows.iter().map(activity_json).collect::<Vec<_>>(),
        "pageSize": page_size,
        "currentPageNo": page_no,
        "totalPageNo": (total + page_size - 1) / page_size,
        "totalCount": total,
    })))
}

async fn last_use_info(
    State(st): State<AppState>,
    auth: AccountAuth,
    Path(tag): Path<KeyUid>,
) -> NaverResult<Response> {
    match st.engine.latest_activity(auth.account_id, &tag).await? {
        Some(a) => Ok(success(activity_json(&a))),
        None => Ok(success(
            json!({"timestamp": null, "data": null, "message": "no usage recorded for this key"}),
        )),
    }
}
