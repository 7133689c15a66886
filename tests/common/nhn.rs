//! NHN helpers on top of the shared harness: a project with an appkey, a
//! User Access Key and key stores made through the engine (as `hsm-kms
//! admin nhn` does), calls under `/keymanager/v1.2/appkey/{appkey}` (with
//! the User Access Key, as the owner sends them, or with the appkey alone,
//! as an application's data calls), and envelope assertions.
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
    /// A User Access Key of the project: (id, Secret Access Key).
    pub uak: (String, String),
}

/// Starts a service that trusts `X-Forwarded-For` from 127.0.0.1, so tests
/// can present another client address.
pub async fn start() -> Kms {
    Kms::start_with(|c| c.server.trusted_proxies = vec!["127.0.0.1/32".into()]).await
}

/// Makes a project (management calls need a User Access Key when
/// `require_uak`, the default of `admin nhn create-project`), an appkey and
/// a User Access Key.
pub async fn project(kms: &Kms, name: &str, require_uak: bool) -> Project {
    kms.engine
        .nhn_create_project(name, require_uak)
        .await
        .expect("project");
    let appkey = kms.engine.nhn_create_appkey(name).await.expect("appkey");
    let project = kms.engine.nhn_project(name).await.expect("project view");
    let k = kms
        .engine
        .nhn_create_user_access_key(name)
        .await
        .expect("user access key");
    Project {
        name: name.into(),
        appkey,
        project,
        uak: (k.access_key.clone(), k.secret.to_string()),
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

    /// The User Access Key headers of the project's owner.
    pub fn uak_headers(&self) -> [(&str, &str); 2] {
        [
            ("X-TC-AUTHENTICATION-ID", self.uak.0.as_str()),
            ("X-TC-AUTHENTICATION-SECRET", self.uak.1.as_str()),
        ]
    }
}

/// A call by the owner with extra headers: the User Access Key headers are
/// added unless `headers` sets them.
pub async fn call_h(
    kms: &Kms,
    p: &Project,
    method: &str,
    suffix: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let sets_uak = headers
        .iter()
        .any(|(k, _)| k.to_ascii_lowercase().starts_with("x-tc-authentication"));
    let uak = if sets_uak {
        vec![]
    } else {
        p.uak_headers().to_vec()
    };
    let h: Vec<(&str, &str)> = headers.iter().copied().chain(uak).collect();
    call_appkey_only_h(kms, p, method, suffix, body, &h).await
}

/// A call by the owner (with the User Access Key).
pub async fn call(
    kms: &Kms,
    p: &Project,
    method: &str,
    suffix: &str,
    body: Option<Value>,
) -> Reply {
    call_h(kms, p, method, suffix, body, &[]).await
}

/// A call with the appkey and exactly these headers (no User Access Key
/// unless given).
pub async fn call_appkey_only_h(
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

/// A call with the appkey alone, as an application's data calls are made.
pub async fn call_appkey_only(
    kms: &Kms,
    p: &Project,
    method: &str,
    suffix: &str,
    body: Option<Value>,
) -> Reply {
    call_appkey_only_h(kms, p, method, suffix, body, &[]).await
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
