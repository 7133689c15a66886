//! Issue 8, low: NAVER access keys never reach the log in clear. The real
//! binary at `trace` level (a superset of INFO) serves a session in which
//! access keys succeed, fail (unknown, revoked, bad signature, expired
//! stamp) and are replayed; the server log and the admin commands' logs
//! (stderr) may carry a short prefix of an access key, never the whole key.
mod common;

use common::process::Site;
use common::{b64, now_ms, send, Kms};
use serde_json::json;

const TRACE_JSON: [(&str, &str); 2] = [
    ("HSM_KMS_LOG_LEVEL", "trace"),
    ("HSM_KMS_LOG_FORMAT", "json"),
];

fn field(stdout: &str, name: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {stdout}"))
        .to_string()
}

#[tokio::test]
async fn low_access_keys_never_logged_in_clear() {
    let mut site = Site::init_with(common::PIN, &TRACE_JSON);
    let (out, create_err) = site.admin(&["admin", "create-access-key"]);
    let (ak2, sk2) = (field(&out, "access_key"), field(&out, "secret_key"));
    let (out, revoke_create_err) = site.admin(&["admin", "create-access-key"]);
    let (ak3, sk3) = (field(&out, "access_key"), field(&out, "secret_key"));
    let unknown = "UNKNOWNACCESSKEY0001".to_string();
    let keys = [
        site.access_key.clone(),
        ak2.clone(),
        ak3.clone(),
        unknown.clone(),
    ];

    let server = site.serve(&TRACE_JSON).await;
    let call =
        |ak: &str, sk: &str, method: &str, path: &str, ts: i64, body: Option<serde_json::Value>| {
            let h = Kms::signed_headers(ak, sk, method, path, &ts.to_string());
            let (client, url, method, path) = (
                server.client.clone(),
                server.url.clone(),
                method.to_string(),
                path.to_string(),
            );
            async move {
                send(
                    &client,
                    &url,
                    &method,
                    &path,
                    &h,
                    body.map(|b| b.to_string().into_bytes()),
                )
                .await
            }
        };
    let r = server
        .call(
            "POST",
            "/kms/v1/keys",
            Some(json!({"keyName": "redaction", "keyType": "AES256", "isAutoRotation": false})),
        )
        .await;
    let tag = r.ok()["keyTag"].as_str().unwrap().to_string();
    let enc = format!("/kms/v1/keys/{tag}/encrypt");
    let pt = Some(json!({"plaintext": b64(b"redaction")}));
    call(&ak2, &sk2, "POST", &enc, now_ms(), pt.clone())
        .await
        .ok();
    call(&unknown, &sk2, "POST", &enc, now_ms(), pt.clone())
        .await
        .assert_naver_error(401, "200");
    call(&ak2, "wrong secret", "POST", &enc, now_ms(), pt.clone())
        .await
        .assert_naver_error(401, "200");
    call(&ak2, &sk2, "POST", &enc, now_ms() - 3_600_000, pt.clone())
        .await
        .assert_naver_error(401, "200");
    // A replayed management call (refused by the replay guard where it exists).
    let disable = format!("/kms/v1/keys/{tag}/disable");
    let ts = now_ms();
    call(
        &site.access_key,
        &site.secret_key,
        "POST",
        &disable,
        ts,
        None,
    )
    .await
    .ok();
    call(
        &site.access_key,
        &site.secret_key,
        "POST",
        &disable,
        ts,
        None,
    )
    .await;
    let (_, revoke_err) = site.admin(&["admin", "revoke-access-key", &ak3]);
    call(&ak3, &sk3, "GET", "/kms/v1/keys", now_ms(), None)
        .await
        .assert_naver_error(401, "200");
    drop(server);

    let logs = [
        ("serve", site.log(1)),
        ("init", site.init_stderr.clone()),
        ("create-access-key", create_err),
        ("create-access-key (2)", revoke_create_err),
        ("revoke-access-key", revoke_err),
    ];
    assert!(
        logs[0].1.lines().count() > 10,
        "the server logged: {}",
        logs[0].1
    );
    for (name, text) in &logs {
        for key in &keys {
            if let Some(at) = text.find(key.as_str()) {
                let line = text[..at].lines().count();
                panic!("the {name} log holds access key {key} on line {line}");
            }
        }
    }
}
