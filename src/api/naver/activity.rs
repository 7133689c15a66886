//! Activity-log middleware: every key-management and crypto call of an
//! authenticated caller is recorded (time, key, version, action, caller,
//! address, result) and the answer waits until the record is durable.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::NaverError;
use crate::api::AppState;
use crate::core::ActivityRecord;
use crate::core::KeyEntry;
use crate::core::KeyUid;

#[derive(Debug, Default)]
struct Ctx {
    account_id: Option<i64>,
    auth_type: &'static str,
    caller: String,
    ip: Option<IpAddr>,
    key_uid: Option<String>,
    entry: Option<Arc<KeyEntry>>,
    version: Option<i64>,
}

/// What the extractors and handlers of one request tell the activity log.
#[derive(Debug, Clone, Default)]
pub struct ActivitySlot(Arc<Mutex<Ctx>>);

impl ActivitySlot {
    fn with<R>(&self, f: impl FnOnce(&mut Ctx) -> R) -> R {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }
    pub(super) fn set_caller(
        &self,
        account_id: i64,
        auth_type: &'static str,
        caller: &str,
        ip: IpAddr,
    ) {
        self.with(|c| {
            c.account_id = Some(account_id);
            c.auth_type = auth_type;
            c.caller = caller.to_string();
            c.ip = Some(ip);
        });
    }
    pub(super) fn set_version(&self, v: i64) {
        self.with(|c| c.version = Some(v));
    }
    pub(super) fn set_key(&self, uid: &str) {
        self.with(|c| c.key_uid = Some(uid.to_string()));
    }
    /// The key the path names, resolved once the caller was authenticated
    /// and before the handler acted.
    pub(super) fn set_entry(&self, entry: Arc<KeyEntry>) {
        self.with(|c| c.entry = Some(entry));
    }
}

/// The NAVER action name of a route, or `None` for calls that are not
/// recorded (key listing, and reading the activity log itself).
pub fn action(method: &str, template: &str) -> Option<&'static str> {
    let tail = template
        .strip_prefix("/kms/v1/keys")
        .or_else(|| template.strip_prefix("/kms/v3/keys"))
        .or_else(|| template.strip_prefix("/kms/v3/token/keys"))
        .or_else(|| template.strip_prefix("/keys/v1/{key_tag}"))
        .or_else(|| template.strip_prefix("/keys/v2/{key_tag}"))?;
    let collection = matches!(template, "/kms/v1/keys" | "/kms/v3/keys");
    let tail = tail.strip_prefix("/{key_tag}").unwrap_or(tail);
    Some(match (method, tail) {
        ("POST", "") if collection => "CreateKey",
        ("GET", "") if !collection => "GetKeyInfo",
        ("DELETE", "") => "DeleteKey",
        ("POST", "/enable") => "EnableKey",
        ("POST", "/disable") => "DisableKey",
        ("GET", "/versions") => "GetKeyVersionList",
        ("POST", "/versions/{version}/enable") => "EnableKeyVersion",
        ("POST", "/versions/{version}/disable") => "DisableKeyVersion",
        ("POST", "/rotate") => "RotateKey",
        ("POST", "/request-deletion") => "RequestKeyDeletion",
        ("POST", "/cancel-deletion") => "CancelKeyDeletion",
        ("PUT", "/memo") => "UpdateMemo",
        ("PUT", "/rotation-period") => "UpdateRotationPeriod",
        ("POST", "/enable-auto-rotation") => "EnableAutoRotation",
        ("POST", "/disable-auto-rotation") => "DisableAutoRotation",
        ("POST", "/encrypt") => "Encrypt",
        ("POST", "/decrypt") => "Decrypt",
        ("POST", "/re-encrypt" | "/reencrypt") => "ReEncrypt",
        ("POST", "/create-custom-key" | "/createCustomKey") => "CreateCustomKey",
        ("POST", "/sign") => "Sign",
        ("POST", "/verify") => "Verify",
        ("POST", "/get-pub-key") => "GetPublicKey",
        // v3's own paths; its other calls share 2.0's (the same actions).
        ("GET", "/versions/{version}/public-key") => "GetPublicKey",
        ("GET", "/versions/{version}") => "GetKeyVersion",
        ("POST", "/versions") => "RotateKey",
        ("POST", "/issue-custom-key") => "CreateCustomKey",
        ("PATCH", "") if !collection => "UpdateKey",
        ("PATCH", "/rotation") => "UpdateRotationPeriod",
        ("PATCH", "/versions/{version}") => "UpdateKeyVersion",
        ("POST", "/activate-token-generator") => "CreateTokenGenerator",
        ("POST", "/rotate-token-generator") => "UpdateTokenGenerator",
        ("POST", "/deactivate-token-generator") => "DeleteTokenGenerator",
        ("POST", "/batch-encrypt") => "Encrypt",
        ("POST", "/batch-decrypt") => "Decrypt",
        ("POST", "/batch-re-encrypt") => "ReEncrypt",
        ("POST", "/issue-tokens") => "CreateTokenSet",
        ("POST", "/reissue-tokens") => "RenewTokenSet",
        ("POST", "/issue-access-token") => "CreateAccessToken",
        ("PATCH", "/acl") => "UpdateIpAcl",
        ("GET", "/acl/allowed-ips") => "GetAclRuleList",
        ("POST", "/acl/add-allowed-ips") => "AddAclRule",
        ("POST", "/acl/remove-allowed-ips") => "DeleteAclRule",
        ("POST", "/acl/enable") => "EnableIpAcl",
        ("POST", "/acl/disable") => "DisableIpAcl",
        ("GET", "/acl") => "GetAclRuleList",
        ("POST", "/acl") => "AddAclRule",
        ("DELETE", "/acl") => "DeleteAclRule",
        ("POST", "/token-generator") => "CreateTokenGenerator",
        ("GET", "/token-generator") => "GetTokenGenerator",
        ("PUT", "/token-generator") => "UpdateTokenGenerator",
        ("DELETE", "/token-generator") => "DeleteTokenGenerator",
        ("POST", "/token-set") => "CreateTokenSet",
        ("PUT", "/token-set") => "RenewTokenSet",
        ("POST", "/access-token") => "CreateAccessToken",
        _ => return None,
    })
}

/// The middleware. Apply with `route_layer` so `MatchedPath` is known.
pub async fn record(State(st): State<AppState>, mut req: Request, next: Next) -> Response {
    let template = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let method = req.method().as_str().to_string();
    let Some(action) = template.as_deref().and_then(|t| action(&method, t)) else {
        return next.run(req).await;
    };
    if !st.engine.activity_enabled() {
        return next.run(req).await;
    }
    let slot = ActivitySlot::default();
    req.extensions_mut().insert(slot.clone());
    // On its way to the log's writer until its record is queued (or it
    // ends without one): the writer's batch wait counts it.
    let coming = st.engine.activity_coming();
    let resp = next.run(req).await;
    let ctx = std::mem::take(&mut *slot.0.lock().unwrap_or_else(|p| p.into_inner()));
    // Fails closed: an answer that reports success always has its record.
    // Whatever cannot be recorded is refused, never answered silently.
    let unrecorded = |resp: Response, why: &str| {
        if resp.status().is_success() {
            tracing::error!(
                action,
                why,
                "refusing an answer the activity log cannot record"
            );
            NaverError::from(crate::core::Error::Internal(format!("activity log: {why}")))
                .into_response()
        } else {
            resp
        }
    };
    // No authenticated caller: the handler did not run, nothing to record.
    let Some(account_id) = ctx.account_id else {
        return unrecorded(resp, "no authenticated caller");
    };
    // The key: as the handler noted it (Create Key), else as resolved from
    // the path before the handler acted (see `auth::resolve_logged_key`).
    let entry = match (ctx.key_uid, ctx.entry) {
        (Some(uid), Some(e)) if e.key.uid == uid => e,
        (Some(uid), _) => match st.engine.key_entry(&KeyUid::from(uid)).await {
            Ok(e) => e,
            Err(e) => {
                tracing::error!(error = %e, action, "activity log: key lookup failed");
                return unrecorded(resp, "key lookup failed");
            }
        },
        (None, Some(e)) => e,
        // No such key (a probe of a tag that does not exist).
        (None, None) => return unrecorded(resp, "no key"),
    };
    // Only keys of the caller's own account get records; a probe of another
    // account's key tag must not write into that account's log.
    if entry.key.account_id != account_id {
        return unrecorded(resp, "another account's key");
    }
    let status = resp.status();
    let row = ActivityRecord {
        id: 0,
        at: crate::core::now_ms(),
        account_id,
        key_uid: entry.key.uid.to_string(),
        key_name: entry.key.name.clone(),
        key_id: entry.key.id.get(),
        version: ctx.version,
        action: action.to_string(),
        auth_type: ctx.auth_type.to_string(),
        caller: ctx.caller,
        source_ip: ctx.ip.map(|i| i.to_string()).unwrap_or_default(),
        result: if status.is_success() {
            "SUCCESS"
        } else {
            "FAIL"
        }
        .to_string(),
        status: i64::from(status.as_u16()),
        message: if status.is_success() {
            String::new()
        } else {
            status.canonical_reason().unwrap_or("").to_string()
        },
    };
    match st.engine.record_coming_activity(row, coming).await {
        Ok(()) => resp,
        Err(e) => NaverError::from(e).into_response(),
    }
}
