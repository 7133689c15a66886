//! NHN helpers on top of the shared harness: a project with an appkey and
//! key stores made through the engine (as `hsm-kms admin nhn` does), calls
//! under `/keymanager/v1.2/appkey/{appkey}`, and envelope assertions.
#![allow(dead_code)]

use hsm_kms::core::nhn::{KeyStoreSettings, NhnProject};
use serde_json::{json, Value};

use crate::common::{Kms, Reply};

/// A project seen through one appkey.
pub struct Project {
    /// Project name.
    pub name: String,
    /// Its appkey.
    pub appkey: String,
    /// Engine view.
    pub project: NhnProject,
}

/// Starts a service that trusts `X-Forwarded-For` from 127.0.0.1, so tests
/// can present another client address.
pub async fn start() -> Kms {
    Kms::start_with(|c| c.server.trusted_proxies = vec!["127.0.0.1/32".into()]).await
}

/// Makes a project and an appkey.
pub async fn project(kms: &Kms, name: &str, require_uak: bool) -> Project {
    kms.engine
        .nhn_create_project(name, require_uak)
        .await
        .expect("project");
    let appkey = kms.engine.nhn_create_appkey(name).await.expect("appkey");
    let project = kms.engine.nhn_project(name).await.expect("project view");
    Project {
        name: name.into(),
        appkey,
        project,
    }
}

/// Makes a key store with the given switches.
pub async fn key_store(
    kms: &Kms,
    p: &Project,
    name: &str,
    ip4: bool,
    mac: bool,
    cert: bool,
    export: bool,
) -> i64 {
    kms.engine
        .nhn_create_key_store(
            &p.name,
            KeyStoreSettings {
                name: name.into(),
                description: format!("{name} description"),
                ip4_auth_use: ip4,
                mac_auth_use: mac,
                certificate_auth_use: cert,
                allow_export: export,
            },
        )
        .await
        .expect("key store")
}

impl Project {
    /// Path under this appkey.
    pub fn path(&self, suffix: &str) -> String {
        format!("/keymanager/v1.2/appkey/{}{}", self.appkey, suffix)
    }
}

/// A call with extra headers.
pub async fn call_h(
    kms: &Kms,
    p: &Project,
    method: &str,
    suffix: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    kms.raw(
        method,
        &p.path(suffix),
        &h,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
}

/// A call with no extra headers.
pub async fn call(
    kms: &Kms,
    p: &Project,
    method: &str,
    suffix: &str,
    body: Option<Value>,
) -> Reply {
    call_h(kms, p, method, suffix, body, &[]).await
}

/// Asserts NHN success and returns `body`.
pub fn ok(r: &Reply) -> &Value {
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(r.body["header"]["isSuccessful"], true, "body: {}", r.body);
    assert_eq!(r.body["header"]["resultCode"], 0, "body: {}", r.body);
    &r.body["body"]
}

/// Asserts an NHN error with this HTTP status and result code.
pub fn err(r: &Reply, status: u16, code: i64) {
    assert_eq!(r.status, status, "body: {}", r.body);
    assert_eq!(r.body["header"]["isSuccessful"], false, "body: {}", r.body);
    assert_eq!(r.body["header"]["resultCode"], code, "body: {}", r.body);
    assert!(
        r.body["header"]["resultMessage"].is_string(),
        "body: {}",
        r.body
    );
}

/// Creates a key of `kind` (`secrets`, `symmetric-keys`, `asymmetric-keys`)
/// in `store` and returns its id.
pub async fn create_key(kms: &Kms, p: &Project, kind: &str, store: &str, extra: Value) -> String {
    let mut body =
        json!({"keyStoreName": store, "name": format!("{kind} key"), "description": "test key"});
    if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            b.insert(k.clone(), v.clone());
        }
    }
    let r = call(kms, p, "POST", &format!("/keys/{kind}/create"), Some(body)).await;
    let b = ok(&r);
    assert_eq!(b["keyStatus"], "ACTIVE");
    let id = b["keyId"].as_str().expect("keyId").to_string();
    assert_eq!(id.len(), 32);
    id
}
