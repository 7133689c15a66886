//! v3 token calls: `issueKeyTokens` (account auth), `reissueKeyTokens` and
//! `issueKeyAccessToken` (refresh token), and the token cipher calls under
//! `/kms/v3/token/keys/...` (access token). The tokens are API 2.0's: a set
//! made through one API works on the other.

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::super::auth::{AccountAuth, RefreshAuth};
use super::super::NaverError;
use super::{batch, key_tag, V3Error, V3Json, V3Result};
use crate::api::AppState;
use crate::core::{Lifetime, DEFAULT_ACCESS_HOURS, DEFAULT_REFRESH_HOURS};

/// The token cipher calls (access token; under the per-key quota).
pub(in crate::api::naver) fn token_crypto_router() -> Router<AppState> {
    Router::new()
        .route("/kms/v3/token/keys/{key_tag}/encrypt", post(super::encrypt))
        .route("/kms/v3/token/keys/{key_tag}/decrypt", post(super::decrypt))
        .route(
            "/kms/v3/token/keys/{key_tag}/re-encrypt",
            post(super::reencrypt),
        )
        .route("/kms/v3/token/keys/{key_tag}/sign", post(super::sign))
        .route("/kms/v3/token/keys/{key_tag}/verify", post(super::verify))
        .route(
            "/kms/v3/token/keys/{key_tag}/issue-custom-key",
            post(super::custom_key),
        )
        .route(
            "/kms/v3/token/keys/{key_tag}/versions/{version}/public-key",
            get(super::public_key),
        )
        .route(
            "/kms/v3/token/keys/{key_tag}/batch-encrypt",
            post(batch::batch_encrypt),
        )
        .route(
            "/kms/v3/token/keys/{key_tag}/batch-decrypt",
            post(batch::batch_decrypt),
        )
        .route(
            "/kms/v3/token/keys/{key_tag}/batch-re-encrypt",
            post(batch::batch_reencrypt),
        )
}

/// Token issue calls (account auth or refresh token; no quota).
pub(in crate::api::naver) fn token_issue_router() -> Router<AppState> {
    Router::new()
        .route("/kms/v3/keys/{key_tag}/issue-tokens", post(issue_tokens))
        .route(
            "/kms/v3/token/keys/{key_tag}/reissue-tokens",
            post(reissue_tokens),
        )
        .route(
            "/kms/v3/token/keys/{key_tag}/issue-access-token",
            post(issue_access_token),
        )
}

/// Lifetimes of `issueKeyTokens` / `reissueKeyTokens`: `accessTokenMinutes`
/// (1 to 1,051,200, default 4320) or `accessTokenUnlimited`, and
/// `refreshTokenHours` (1 to 17,520, default 2160) or
/// `refreshTokenUnlimited` (**chosen** names for the refresh token: the
/// pages cut off after the access-token fields). Integers only: `30.0` and
/// `"30"` do not deserialize and are 400.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct TokensBody {
    access_token_minutes: Option<i64>,
    #[serde(default)]
    access_token_unlimited: bool,
    refresh_token_hours: Option<i64>,
    #[serde(default)]
    refresh_token_unlimited: bool,
}

/// `issueKeyAccessToken` body.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct AccessTokenBody {
    access_token_minutes: Option<i64>,
    #[serde(default)]
    access_token_unlimited: bool,
}

fn access_lifetime(minutes: Option<i64>, unlimited: bool) -> V3Result<Lifetime> {
    match (minutes, unlimited) {
        (Some(_), true) => Err(V3Error::invalid(
            "accessTokenMinutes cannot be given with accessTokenUnlimited true",
        )),
        (_, true) => Ok(Lifetime::Unlimited),
        (Some(m), false) => Ok(Lifetime::Minutes(m)),
        (None, false) => Ok(Lifetime::Hours(DEFAULT_ACCESS_HOURS)),
    }
}

fn refresh_lifetime(hours: Option<i64>, unlimited: bool) -> V3Result<Lifetime> {
    match (hours, unlimited) {
        (Some(_), true) => Err(V3Error::invalid(
            "refreshTokenHours cannot be given with refreshTokenUnlimited true",
        )),
        (_, true) => Ok(Lifetime::Unlimited),
        (Some(h), false) => Ok(Lifetime::Hours(h)),
        (None, false) => Ok(Lifetime::Hours(DEFAULT_REFRESH_HOURS)),
    }
}

/// The v3 names of the lifetime errors the engine reports (2.0's field
/// names, hours): the range is checked here, in v3's units, first.
fn check(l: Lifetime, field: &str) -> V3Result<Lifetime> {
    l.checked(field).map_err(V3Error::from)
}

/// `POST /kms/v3/keys/{keyTag}/issue-tokens`: a token set from the key's
/// token generator (API 2.0's Create Token Set). 200
/// `{"accessToken","refreshToken"}` (**chosen**: 2.0's names; the page stops
/// before its response).
async fn issue_tokens(
    State(st): State<AppState>,
    auth: Result<AccountAuth, NaverError>,
    Path(tag): Path<String>,
    V3Json(b): V3Json<TokensBody>,
) -> V3Result<Response> {
    let auth = auth?;
    let tag = key_tag(&tag)?;
    let a = check(
        access_lifetime(b.access_token_minutes, b.access_token_unlimited)?,
        "accessTokenMinutes",
    )?;
    let r = check(
        refresh_lifetime(b.refresh_token_hours, b.refresh_token_unlimited)?,
        "refreshTokenHours",
    )?;
    let set = st
        .engine
        .create_token_set(auth.account_id, &tag, a, r)
        .await?;
    Ok(Json(json!({
        "accessToken": set.access_token.as_str(),
        "refreshToken": set.refresh_token.as_ref().map(|t| t.as_str()),
    }))
    .into_response())
}

/// `POST /kms/v3/token/keys/{keyTag}/reissue-tokens` (refresh token): a new
/// set; the refresh token used stays valid (the page).
async fn reissue_tokens(
    State(st): State<AppState>,
    auth: Result<RefreshAuth, NaverError>,
    V3Json(b): V3Json<TokensBody>,
) -> V3Result<Response> {
    let auth = auth?;
    let a = check(
        access_lifetime(b.access_token_minutes, b.access_token_unlimited)?,
        "accessTokenMinutes",
    )?;
    let r = check(
        refresh_lifetime(b.refresh_token_hours, b.refresh_token_unlimited)?,
        "refreshTokenHours",
    )?;
    let set = st.engine.renew_token_set(&auth.token, a, r).await?;
    Ok(Json(json!({
        "accessToken": set.access_token.as_str(),
        "refreshToken": set.refresh_token.as_ref().map(|t| t.as_str()),
    }))
    .into_response())
}

/// `POST /kms/v3/token/keys/{keyTag}/issue-access-token` (refresh token).
async fn issue_access_token(
    State(st): State<AppState>,
    auth: Result<RefreshAuth, NaverError>,
    V3Json(b): V3Json<AccessTokenBody>,
) -> V3Result<Response> {
    let auth = auth?;
    let a = check(
        access_lifetime(b.access_token_minutes, b.access_token_unlimited)?,
        "accessTokenMinutes",
    )?;
    let t = st.engine.create_access_token(&auth.token, a).await?;
    Ok(Json(json!({"accessToken": t.as_str()})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes_default_to_the_pages_values() {
        assert_eq!(
            access_lifetime(None, false).unwrap(),
            Lifetime::Hours(72),
            "4320 minutes"
        );
        assert_eq!(
            refresh_lifetime(None, false).unwrap(),
            Lifetime::Hours(2160)
        );
        assert!(access_lifetime(Some(30), true).is_err());
        assert!(check(Lifetime::Minutes(1_051_201), "m").is_err());
        assert!(check(Lifetime::Minutes(0), "m").is_err());
        assert!(check(Lifetime::Minutes(1_051_200), "m").is_ok());
    }
}
