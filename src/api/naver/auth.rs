//! NAVER authentication: account auth (NCP signature v2, or v1 with an API
//! Gateway API key for API 1.0) and token auth (`x-ncp-ocapi-token`). Every
//! extractor also tells the activity log who the caller is.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;

use super::activity::ActivitySlot;
use super::{NaverError, QuotaGate, ReplayError};
use crate::api::auth::ncp::{
    SignatureError, SignatureVersion, SignedRequest, SIGNATURE_V1, SIGNATURE_V2,
};
use crate::api::AppState;
use crate::core::KeyUid;
use crate::core::{Error, TokenAuth, TokenKind};
use crate::telemetry::security::{auth_failure, AuthFailure};

/// Header of token auth.
pub const OCAPI_TOKEN: &str = "x-ncp-ocapi-token";

/// The account a request was signed for.
#[derive(Debug, Clone)]
pub struct AccountAuth {
    /// Account id.
    pub account_id: i64,
    /// The access key that signed.
    pub access_key: String,
    slot: Option<ActivitySlot>,
}

/// The caller of a crypto endpoint: an account (signature) or an access token.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Account the call acts for.
    pub account_id: i64,
    slot: Option<ActivitySlot>,
    gate: Option<QuotaGate>,
}

impl Caller {
    /// Charges the key's quota for a batch of `items`: the request itself
    /// took one unit when the caller was authenticated, each further item
    /// takes one more.
    pub fn charge_items(&self, items: usize) -> Result<(), NaverError> {
        match &self.gate {
            Some(gate) if items > 1 => gate.take_n(u32::try_from(items - 1).unwrap_or(u32::MAX)),
            _ => Ok(()),
        }
    }
}

/// A verified refresh token (Create Access Token, Renew Token Set).
#[derive(Debug, Clone)]
pub struct RefreshAuth {
    /// The token's identity.
    pub token: TokenAuth,
}

/// Records the key version an operation used, for the activity log.
pub trait NoteVersion {
    /// The slot of this request, if the activity middleware runs.
    fn slot(&self) -> Option<&ActivitySlot>;
    /// Notes the version.
    fn note_version(&self, v: i64) {
        if let Some(s) = self.slot() {
            s.set_version(v);
        }
    }
    /// Notes the key (for calls whose path has no key tag, e.g. Create Key).
    fn note_key(&self, uid: &str) {
        if let Some(s) = self.slot() {
            s.set_key(uid);
        }
    }
}

impl NoteVersion for AccountAuth {
    fn slot(&self) -> Option<&ActivitySlot> {
        self.slot.as_ref()
    }
}

impl NoteVersion for Caller {
    fn slot(&self) -> Option<&ActivitySlot> {
        self.slot.as_ref()
    }
}

/// The client address of a request (socket peer, or X-Forwarded-For from a
/// trusted proxy).
pub fn request_ip(parts: &Parts, state: &AppState) -> IpAddr {
    let peer = crate::api::peer_ip(parts.extensions.get::<ConnectInfo<SocketAddr>>());
    crate::api::client_ip(peer, &parts.headers, &state.config.trusted_proxies)
}

/// Verifies an NCP signature of `version` on request `parts`.
pub async fn verify_signature(
    parts: &Parts,
    state: &AppState,
    version: SignatureVersion,
) -> Result<AccountAuth, NaverError> {
    let fail = |e: SignatureError| {
        auth_failure(match e {
            SignatureError::MissingHeader(_) => AuthFailure::MissingCredentials,
            SignatureError::BadTimestamp | SignatureError::Expired(_) => {
                AuthFailure::StaleTimestamp
            }
            SignatureError::UnknownAccessKey => AuthFailure::UnknownAccessKey,
            SignatureError::UnknownApiKey => AuthFailure::UnknownApiKey,
            SignatureError::Mismatch => AuthFailure::BadSignature,
        });
        NaverError::unauthenticated(e.to_string())
    };
    let signed = SignedRequest::from_headers(&parts.headers, version).map_err(fail)?;
    signed
        .check_timestamp(crate::core::now_ms(), state.config.signature_window_secs)
        .map_err(fail)?;
    let (account_id, secret) = match state.engine.access_key_secret(signed.access_key).await {
        Ok(v) => v,
        Err(Error::Unauthenticated(_)) => return Err(fail(SignatureError::UnknownAccessKey)),
        Err(e) => return Err(e.into()),
    };
    if let Some(api_key) = signed.api_key {
        match state.engine.api_key_account(api_key).await? {
            Some(owner) if owner == account_id => {}
            _ => return Err(fail(SignatureError::UnknownApiKey)),
        }
    }
    // The path as the client sent (and signed) it, before its key tag was
    // spelled canonically (`canonical_key_tag`).
    let uri = parts
        .extensions
        .get::<axum::extract::OriginalUri>()
        .map_or(&parts.uri, |o| &o.0);
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    signed
        .verify(parts.method.as_str(), pq, &secret)
        .map_err(fail)?;
    check_replay(parts, state, &signed).await?;
    let slot = parts.extensions.get::<ActivitySlot>().cloned();
    let auth_type = match version {
        SignatureVersion::V1 => "SIGNATURE_V1",
        SignatureVersion::V2 => "ACCOUNT",
    };
    if let Some(s) = &slot {
        s.set_caller(
            account_id,
            auth_type,
            signed.access_key,
            request_ip(parts, state),
        );
        resolve_logged_key(parts, state, s).await?;
    }
    Ok(AccountAuth {
        account_id,
        access_key: signed.access_key.to_string(),
        slot,
    })
}

async fn verify_token(
    parts: &Parts,
    state: &AppState,
    kind: TokenKind,
) -> Result<TokenAuth, NaverError> {
    let token = parts
        .headers
        .get(OCAPI_TOKEN)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            auth_failure(AuthFailure::MissingCredentials);
            NaverError::unauthenticated(format!("missing header {OCAPI_TOKEN}"))
        })?;
    let tag = super::key_tag_in(parts.uri.path())
        .map(KeyUid::from)
        .ok_or_else(|| NaverError::bad_request("no key tag in the path"))?;
    let ip = request_ip(parts, state);
    let auth = state
        .engine
        .authenticate_token(token, kind, &tag, ip)
        .await
        .inspect_err(|e| match e {
            Error::Unauthenticated(_) => auth_failure(AuthFailure::BadToken),
            Error::Forbidden(_) => auth_failure(AuthFailure::Acl),
            _ => {}
        })?;
    if let Some(s) = parts.extensions.get::<ActivitySlot>() {
        s.set_caller(auth.account_id, "TOKEN", &auth.token_id, ip);
        resolve_logged_key(parts, state, s).await?;
    }
    Ok(auth)
}

/// The replay guard (issue 8, item 5), after the signature verified: only
/// genuine signatures take room in it, so nobody without the secret key can
/// fill it or block another caller's request. This process's map first (a
/// replay to this node is refused without a store round trip), then, when
/// the guard is shared (`naver.replay_guard_scope = "store"`), the store's
/// record, which every node sharing the store claims (issue 11).
async fn check_replay(
    parts: &Parts,
    state: &AppState,
    signed: &SignedRequest<'_>,
) -> Result<(), NaverError> {
    let guard = &state.config.replay_guard;
    let template = parts
        .extensions
        .get::<axum::extract::MatchedPath>()
        .map(|m| m.as_str());
    if !guard.covers(parts.method.as_str(), template) {
        return Ok(());
    }
    let ts = signed
        .timestamp_ms()
        .map_err(|e| NaverError::unauthenticated(e.to_string()))?;
    let now = crate::core::now_ms();
    let refused = |e: ReplayError| match e {
        ReplayError::Replayed => {
            auth_failure(AuthFailure::Replay);
            tracing::warn!(
                access_key = %access_key_hint(signed.access_key),
                "replayed signature refused"
            );
            NaverError::unauthenticated(e.to_string())
        }
        ReplayError::Full => {
            tracing::warn!("replay guard full: signed management call refused");
            NaverError::unavailable(e.to_string())
        }
    };
    let admitted = guard
        .admit(signed.access_key, ts, signed.signature, now)
        .map_err(refused)?;
    if !guard.is_shared() {
        return Ok(());
    }
    match state
        .engine
        .claim_signature(&admitted.digest, admitted.expires_at, now)
        .await
    {
        Ok(true) => Ok(()),
        Ok(false) => Err(refused(ReplayError::Replayed)),
        Err(e) => {
            // Not recorded anywhere: the client may send it again.
            guard.forget(&admitted);
            Err(e.into())
        }
    }
}

/// An access key as logs may show it: its first four characters. Access
/// keys identify a caller and are half of a credential; the log names which
/// one without handing the whole of it to whoever reads the log.
pub fn access_key_hint(access_key: &str) -> String {
    let prefix: String = access_key.chars().take(4).collect();
    format!("{prefix}...")
}

/// Tells the activity log which key the call names, once the caller is
/// known and before the handler acts: the entry the handler will resolve
/// from the same (canonical) tag. A lookup that fails for any reason other
/// than "no such key" refuses the call here, so nothing is done that could
/// not be recorded (the log fails closed).
async fn resolve_logged_key(
    parts: &Parts,
    state: &AppState,
    slot: &ActivitySlot,
) -> Result<(), NaverError> {
    let Some(tag) = super::key_tag_in(parts.uri.path()).map(KeyUid::from) else {
        return Ok(());
    };
    match state.engine.key_entry(&tag).await {
        Ok(entry) => {
            slot.set_entry(entry);
            Ok(())
        }
        Err(Error::NotFound(_)) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl FromRequestParts<AppState> for AccountAuth {
    type Rejection = NaverError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        if parts.headers.contains_key(OCAPI_TOKEN) && !parts.headers.contains_key(SIGNATURE_V2) {
            return Err(NaverError::unauthenticated(
                "this endpoint requires account authentication (x-ncp-apigw-signature-v2)",
            ));
        }
        verify_signature(parts, state, SignatureVersion::V2).await
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = NaverError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let slot = parts.extensions.get::<ActivitySlot>().cloned();
        let account_id = if parts.uri.path().starts_with("/kms/v3/token/") {
            // v3's token calls take the token only (the pages' one header).
            verify_token(parts, state, TokenKind::Access)
                .await?
                .account_id
        } else if parts.uri.path().starts_with("/keys/v1/") {
            verify_signature(parts, state, SignatureVersion::V1)
                .await?
                .account_id
        } else if parts.headers.contains_key(OCAPI_TOKEN)
            && !parts.headers.contains_key(SIGNATURE_V2)
            && !parts.headers.contains_key(SIGNATURE_V1)
            && parts.uri.path().starts_with("/kms/v1/")
        {
            verify_token(parts, state, TokenKind::Access)
                .await?
                .account_id
        } else {
            verify_signature(parts, state, SignatureVersion::V2)
                .await?
                .account_id
        };
        // Only an authenticated call counts against the key's quota.
        let gate = parts.extensions.get::<QuotaGate>().cloned();
        if let Some(gate) = &gate {
            gate.take()?;
        }
        Ok(Caller {
            account_id,
            slot,
            gate,
        })
    }
}

impl FromRequestParts<AppState> for RefreshAuth {
    type Rejection = NaverError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        Ok(RefreshAuth {
            token: verify_token(parts, state, TokenKind::Refresh).await?,
        })
    }
}
