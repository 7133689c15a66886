//! NHN operation records (issue 12, section 2): every NHN call that uses or
//! changes a key, a secret or a key-store credential is recorded in the
//! chained activity log, as NAVER calls are: who (the User Access Key id,
//! or the appkey's fingerprint; the client's address, MAC header and
//! certificate), which key and version, what operation, and the result.
//! The answer waits until the record is durable; an answer that reports
//! success and cannot be recorded is refused (503), never sent unrecorded.
//!
//! Not recorded: calls refused before the caller was known (an unknown
//! appkey, a wrong User Access Key: no project to attribute them to), and
//! the read-only key-store queries and `confirm`, as NAVER's key listing
//! is not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{FromRequestParts, MatchedPath, Path, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::NhnError;
use crate::api::AppState;
use crate::core::nhn::{appkey_fingerprint, NhnClient};
use crate::core::ActivityRecord;
use crate::core::Error;
use crate::core::KeyUid;

/// The `auth_type` of a call made with a User Access Key.
pub const AUTH_USER_ACCESS_KEY: &str = "NHN_USER_ACCESS_KEY";
/// The `auth_type` of a call made with the appkey alone.
pub const AUTH_APPKEY: &str = "NHN_APPKEY";

/// Longest key id, MAC header or detail copied into a record: they come
/// from the client.
const MAX_FIELD: usize = 128;

/// The authenticated caller, as the context extractor found it.
#[derive(Debug, Clone)]
struct Caller {
    account_id: i64,
    user_access_key: Option<String>,
    appkey_fingerprint: String,
    client: NhnClient,
}

/// Where the context extractor of one request leaves its caller for the
/// record (a request extension set by [`record`]).
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditSlot(Arc<Mutex<Option<Caller>>>);

impl AuditSlot {
    /// Notes the caller once the appkey and User Access Key checks passed.
    pub(crate) fn set_caller(
        &self,
        account_id: i64,
        user_access_key: Option<&str>,
        appkey: &str,
        client: &NhnClient,
    ) {
        let c = Caller {
            account_id,
            user_access_key: user_access_key.map(str::to_string),
            appkey_fingerprint: appkey_fingerprint(appkey),
            client: client.clone(),
        };
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(c);
    }

    fn take(&self) -> Option<Caller> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// What a handler adds to its call's record, as an extension of its
/// answer: the key when the path does not name it (Create Key), the key
/// version used, and the key store and credential acted on (never a
/// secret or a password).
#[derive(Debug, Clone, Default)]
pub(crate) struct AuditNote {
    pub(crate) key_uid: Option<String>,
    pub(crate) version: Option<i64>,
    pub(crate) detail: Option<String>,
}

impl AuditNote {
    /// The key version used.
    pub(crate) fn version(v: i64) -> Self {
        AuditNote {
            version: Some(v),
            ..Default::default()
        }
    }
}

/// Attaches `note` to a handler's answer.
pub(crate) fn noted(mut resp: Response, note: AuditNote) -> Response {
    resp.extensions_mut().insert(note);
    resp
}

/// The `resultCode` of an NHN error answer (set by `NhnError`'s
/// `IntoResponse`), for the record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ResultCode(pub(crate) i32);

/// The action name of an NHN route, or `None` for calls that are not
/// recorded. `template` is the route as registered.
pub fn action(method: &str, template: &str) -> Option<&'static str> {
    let tail = template.strip_prefix("/keymanager/v1.2/appkey/{appkey}")?;
    Some(match (method, tail) {
        ("GET", "/secrets/{keyid}") => "NhnGetSecret",
        ("PUT", "/secrets/{keyid}") => "NhnUpdateSecret",
        ("POST", "/symmetric-keys/{keyid}/encrypt") => "NhnEncrypt",
        ("POST", "/symmetric-keys/{keyid}/decrypt") => "NhnDecrypt",
        ("POST", "/symmetric-keys/{keyid}/create-local-key") => "NhnCreateLocalKey",
        ("GET", "/symmetric-keys/{keyid}/symmetric-key") => "NhnGetSymmetricKey",
        ("POST", "/asymmetric-keys/{keyid}/sign") => "NhnSign",
        ("POST", "/asymmetric-keys/{keyid}/verify") => "NhnVerify",
        ("GET", "/asymmetric-keys/{keyid}/privateKey") => "NhnGetPrivateKey",
        ("GET", "/asymmetric-keys/{keyid}/publicKey") => "NhnGetPublicKey",
        ("POST", "/keys/{keyid}/create") => "NhnCreateKey",
        ("PUT", "/keys/{keyid}/delete") => "NhnRequestKeyDeletion",
        ("DELETE", "/keys/{keyid}") => "NhnDeleteKey",
        ("POST", "/auths/{kind}") => "NhnAddCredential",
        ("PUT", "/auths/{kind}/delete") => "NhnRequestCredentialDeletion",
        ("POST", "/auths/{kind}/delete") => "NhnDeleteCredential",
        _ => return None,
    })
}

/// `s` cut to [`MAX_FIELD`] characters.
fn bounded(s: &str) -> String {
    s.chars().take(MAX_FIELD).collect()
}

/// The middleware. Apply with `route_layer` so `MatchedPath` is known.
pub async fn record(State(st): State<AppState>, req: Request, next: Next) -> Response {
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
    let (mut parts, body) = req.into_parts();
    // The key the path names (decoded as the handler sees it); on Create
    // Key `{keyid}` is the key kind and the handler names the new key.
    let path_key = match Path::<HashMap<String, String>>::from_request_parts(&mut parts, &st).await
    {
        Ok(Path(mut p)) if action != "NhnCreateKey" => p.remove("keyid"),
        _ => None,
    };
    let slot = AuditSlot::default();
    parts.extensions.insert(slot.clone());
    // On its way to the log's writer until its record is queued (or it
    // ends without one): the writer's batch wait counts it.
    let coming = st.engine.activity_coming();
    let resp = next.run(Request::from_parts(parts, body)).await;
    let status = resp.status();
    let Some(caller) = slot.take() else {
        // Refused before the caller was known: nobody to attribute it to.
        if status.is_success() {
            tracing::error!(action, "refusing an NHN answer with no caller to record");
            return NhnError::from(Error::Internal("activity log: no caller".into()))
                .into_response();
        }
        return resp;
    };
    let note = resp
        .extensions()
        .get::<AuditNote>()
        .cloned()
        .unwrap_or_default();
    let code = resp.extensions().get::<ResultCode>().map(|c| c.0);
    let mut detail = vec![format!("appkey={}", caller.appkey_fingerprint)];
    if let Some(mac) = &caller.client.mac {
        detail.push(format!("mac={}", bounded(mac)));
    }
    if let Some(cert) = &caller.client.cert_sha256 {
        detail.push(format!("cert=sha256:{}", hex::encode(cert)));
    }
    // Only a key of the caller's own project is named in the record's key
    // fields: an id that is not (a probe of another project's key, or of a
    // NAVER key tag) goes into the message, so it never shows in another
    // owner's Get Key Activity Logs.
    let (mut key_uid, mut key_id, mut key_name) = (String::new(), 0, String::new());
    if let Some(uid) = note.key_uid.as_deref().or(path_key.as_deref()) {
        match st.engine.key_entry(&KeyUid::from(uid)).await {
            Ok(e) if e.key.account_id == caller.account_id => {
                key_uid = e.key.uid.to_string();
                key_id = e.key.id.get();
                key_name = e.key.name.clone();
            }
            _ => detail.push(format!("keyId={}", bounded(uid))),
        }
    }
    if let Some(d) = &note.detail {
        detail.push(bounded(d));
    }
    if let Some(c) = code {
        detail.push(format!("resultCode={c}"));
    }
    let (auth_type, who) = match &caller.user_access_key {
        Some(ak) => (AUTH_USER_ACCESS_KEY, ak.clone()),
        None => (AUTH_APPKEY, format!("appkey:{}", caller.appkey_fingerprint)),
    };
    let row = ActivityRecord {
        id: 0,
        at: crate::core::now_ms(),
        account_id: caller.account_id,
        key_uid,
        key_name,
        key_id,
        version: note.version,
        action: action.to_string(),
        auth_type: auth_type.to_string(),
        caller: who,
        source_ip: caller.client.ip.to_string(),
        result: if status.is_success() {
            "SUCCESS"
        } else {
            "FAIL"
        }
        .to_string(),
        status: i64::from(status.as_u16()),
        message: detail.join(" "),
    };
    match st.engine.record_coming_activity(row, coming).await {
        Ok(()) => resp,
        Err(e) => NhnError::from(e).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_calls_are_recorded_and_queries_are_not() {
        let p = "/keymanager/v1.2/appkey/{appkey}";
        assert_eq!(
            action("POST", &format!("{p}/symmetric-keys/{{keyid}}/encrypt")),
            Some("NhnEncrypt")
        );
        assert_eq!(
            action("GET", &format!("{p}/asymmetric-keys/{{keyid}}/privateKey")),
            Some("NhnGetPrivateKey")
        );
        assert_eq!(
            action("POST", &format!("{p}/auths/{{kind}}/delete")),
            Some("NhnDeleteCredential")
        );
        assert_eq!(action("GET", &format!("{p}/confirm")), None);
        assert_eq!(action("GET", &format!("{p}/keystores/{{ksid}}/keys")), None);
        assert_eq!(action("POST", "/kms/v1/keys"), None);
    }
}
