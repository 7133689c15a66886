//! Account authentication for API 2.0: NCP API Gateway signature v2.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;

use super::NaverError;
use crate::api::auth::ncp::{SignatureError, SignatureVersion, SignedRequest};
use crate::api::AppState;
use crate::core::Error;

/// The account a request was signed for.
#[derive(Debug, Clone)]
pub struct AccountAuth {
    /// Account id.
    pub account_id: i64,
    /// The access key that signed.
    pub access_key: String,
}

/// Verifies an NCP signature of `version` on request `parts`.
pub async fn verify_signature(
    parts: &Parts,
    state: &AppState,
    version: SignatureVersion,
) -> Result<AccountAuth, NaverError> {
    let fail = |e: SignatureError| NaverError::unauthenticated(e.to_string());
    let signed = SignedRequest::from_headers(&parts.headers, version).map_err(fail)?;
    signed
        .check_timestamp(crate::store::now_ms(), state.config.signature_window_secs)
        .map_err(fail)?;
    let (account_id, secret) = match state.engine.access_key_secret(signed.access_key).await {
        Ok(v) => v,
        Err(Error::Unauthenticated(_)) => return Err(fail(SignatureError::UnknownAccessKey)),
        Err(e) => return Err(e.into()),
    };
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    signed
        .verify(parts.method.as_str(), pq, &secret)
        .map_err(fail)?;
    Ok(AccountAuth {
        account_id,
        access_key: signed.access_key.to_string(),
    })
}

impl FromRequestParts<AppState> for AccountAuth {
    type Rejection = NaverError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if parts.headers.contains_key("x-ncp-ocapi-token")
            && !parts
                .headers
                .contains_key(crate::api::auth::ncp::SIGNATURE_V2)
        {
            return Err(NaverError::unauthenticated(
                "this endpoint requires account authentication (x-ncp-apigw-signature-v2)",
            ));
        }
        verify_signature(parts, state, SignatureVersion::V2).await
    }
}
