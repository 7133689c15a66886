//! Issue 8, item 5: replayed signatures. NCP's signature covers method, path,
//! timestamp and access key but not the body, so a captured request can be
//! sent again within the signature window with any body. A replay guard
//! refuses a second use of (access key, timestamp, signature) on management
//! calls by default (`naver.replay_guard = "management"`), on every signed
//! call with `"all"`, and nowhere with `"off"`; the window itself
//! (`naver.signature_window_secs`) is at most NCP's 300 s.
mod common;

use common::process::Site;
use common::{b64, now_ms, Kms, Reply};
use hsm_kms::config::Config;
use serde_json::{json, Value};

/// Sets `[naver] key = value` (through TOML, so a setting that does not
/// exist fails the test at run time rather than its build).
fn set_naver(cfg: &mut Config, key: &str, value: toml::Value) {
    let mut v = toml::Value::try_from(&*cfg).expect("config as TOML");
    v["naver"]
        .as_table_mut()
        .expect("[naver]")
        .insert(key.into(), value);
    *cfg = v
        .try_into()
        .unwrap_or_else(|e| panic!("naver.{key} is not a setting: {e}"));
}

/// v2 signature headers of one request, to send as often as a test likes.
fn v2_headers(kms: &Kms, method: &str, path: &str) -> Vec<(String, String)> {
    Kms::signed_headers(
        &kms.access_key,
        &kms.secret_key,
        method,
        path,
        &now_ms().to_string(),
    )
}

async fn send(
    kms: &Kms,
    method: &str,
    path: &str,
    h: &[(String, String)],
    body: Option<Value>,
) -> Reply {
    kms.raw(method, path, h, body.map(|b| b.to_string().into_bytes()))
        .await
}

fn assert_replay_refused(r: &Reply, what: &str) {
    assert_eq!(r.status, 401, "{what} was served again: {}", r.body);
    assert_eq!(r.body["error"]["errorCode"], "200", "{what}: {}", r.body);
    let details = r.body["error"]["details"].as_str().unwrap_or_default();
    assert!(
        details.contains("replay"),
        "{what}: the message must say why: {details}"
    );
}

#[tokio::test]
async fn item5_replayed_management_calls_refused_api_2_0() {
    let kms = Kms::start().await;

    // Create Key: a replay (even with another body) creates nothing.
    let h = v2_headers(&kms, "POST", "/kms/v1/keys");
    let body = json!({"keyName": "item5", "keyType": "AES256", "isAutoRotation": false});
    let r = send(&kms, "POST", "/kms/v1/keys", &h, Some(body)).await;
    let tag = r.ok()["keyTag"].as_str().unwrap().to_string();
    let other = json!({"keyName": "item5-evil", "keyType": "RSA2048", "isAutoRotation": false});
    assert_replay_refused(
        &send(&kms, "POST", "/kms/v1/keys", &h, Some(other)).await,
        "Create Key",
    );
    let list = kms.call("GET", "/kms/v1/keys", None).await;
    assert_eq!(list.ok()["totalCount"], 1);

    // Token set: the replay in the review minted a second set.
    let path = format!("/kms/v1/keys/{tag}/token-generator");
    kms.call("POST", &path, None).await.ok();
    let ts_path = format!("/kms/v1/keys/{tag}/token-set");
    let h = v2_headers(&kms, "POST", &ts_path);
    send(&kms, "POST", &ts_path, &h, Some(json!({}))).await.ok();
    let issued = kms.call("GET", &path, None).await.ok()["issuedTokenCount"].clone();
    assert!(issued.as_i64().is_some_and(|n| n > 0), "{issued}");
    assert_replay_refused(
        &send(&kms, "POST", &ts_path, &h, Some(json!({}))).await,
        "Create Token Set",
    );
    let g = kms.call("GET", &path, None).await;
    assert_eq!(g.ok()["issuedTokenCount"], issued, "{}", g.body);

    // Memo: the replay carries another body; the first memo stays.
    let memo = format!("/kms/v1/keys/{tag}/memo");
    let h = v2_headers(&kms, "PUT", &memo);
    send(&kms, "PUT", &memo, &h, Some(json!({"memo": "first"})))
        .await
        .ok();
    assert_replay_refused(
        &send(&kms, "PUT", &memo, &h, Some(json!({"memo": "evil"}))).await,
        "Update Memo",
    );
    let k = kms.call("GET", &format!("/kms/v1/keys/{tag}"), None).await;
    assert_eq!(k.ok()["memo"], "first");

    // ACL change, rotation, deletion, token generator changes.
    let acl = format!("/kms/v1/keys/{tag}/acl");
    let h = v2_headers(&kms, "POST", &acl);
    send(
        &kms,
        "POST",
        &acl,
        &h,
        Some(json!({"ipList": ["10.0.0.1"]})),
    )
    .await
    .ok();
    assert_replay_refused(
        &send(
            &kms,
            "POST",
            &acl,
            &h,
            Some(json!({"ipList": ["0.0.0.0/0"]})),
        )
        .await,
        "Add ACL Rule",
    );
    for (method, suffix) in [
        ("POST", "/rotate"),
        ("PUT", "/token-generator"),
        ("POST", "/disable"),
        ("POST", "/enable"),
        ("POST", "/request-deletion"),
    ] {
        let p = format!("/kms/v1/keys/{tag}{suffix}");
        let h = v2_headers(&kms, method, &p);
        send(&kms, method, &p, &h, None).await.ok();
        assert_replay_refused(&send(&kms, method, &p, &h, None).await, suffix);
    }
    let k = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/versions"), None)
        .await;
    assert_eq!(k.ok()["currentVersion"], 2, "one rotation, not two");

    // Reads are not guarded under "management": an identical GET is served.
    let p = format!("/kms/v1/keys/{tag}");
    let h = v2_headers(&kms, "GET", &p);
    send(&kms, "GET", &p, &h, None).await.ok();
    send(&kms, "GET", &p, &h, None).await.ok();
}

#[tokio::test]
async fn item5_identical_crypto_calls_in_one_millisecond_served_under_management() {
    let kms = Kms::start().await;
    let api_key = kms.engine.create_api_key("default").await.unwrap();
    let tag = kms.create_key("item5-crypto", "AES256", json!({})).await;
    let body = json!({"plaintext": b64(b"same")});

    // API 2.0: the same signed request twice, and twice at once.
    let p = format!("/kms/v1/keys/{tag}/encrypt");
    let h = v2_headers(&kms, "POST", &p);
    for _ in 0..2 {
        send(&kms, "POST", &p, &h, Some(body.clone())).await.ok();
    }
    let (a, b) = tokio::join!(
        send(&kms, "POST", &p, &h, Some(body.clone())),
        send(&kms, "POST", &p, &h, Some(body.clone()))
    );
    a.ok();
    b.ok();
    // API 1.0, both signatures.
    let p1 = format!("/keys/v1/{tag}/encrypt");
    let h1 = common::v1_headers(&kms, &api_key, &p1);
    let p2 = format!("/keys/v2/{tag}/encrypt");
    let h2 = v2_headers(&kms, "POST", &p2);
    for _ in 0..2 {
        let r = send(&kms, "POST", &p1, &h1, Some(body.clone())).await;
        assert_eq!(r.body["code"], "SUCCESS", "{}", r.body);
        let r = send(&kms, "POST", &p2, &h2, Some(body.clone())).await;
        assert_eq!(r.body["code"], "SUCCESS", "{}", r.body);
    }
}

#[tokio::test]
async fn item5_replays_refused_under_all_for_api_2_0_and_both_1_0_signatures() {
    let kms = Kms::start_with(|c| set_naver(c, "replay_guard", "all".into())).await;
    let api_key = kms.engine.create_api_key("default").await.unwrap();
    let tag = kms.create_key("item5-all", "AES256", json!({})).await;
    let secret = kms.encrypt(&tag, b"secret A", None).await;
    let other = kms.encrypt(&tag, b"secret B", None).await;

    // The review's attack: a captured Decrypt replayed with another ciphertext.
    let p = format!("/kms/v1/keys/{tag}/decrypt");
    let h = v2_headers(&kms, "POST", &p);
    send(&kms, "POST", &p, &h, Some(json!({"ciphertext": other})))
        .await
        .ok();
    assert_replay_refused(
        &send(&kms, "POST", &p, &h, Some(json!({"ciphertext": secret}))).await,
        "Decrypt (API 2.0)",
    );
    // API 1.0, signature v1 and v2.
    let body = json!({"ciphertext": other});
    let p1 = format!("/keys/v1/{tag}/decrypt");
    let h1 = common::v1_headers(&kms, &api_key, &p1);
    let r = send(&kms, "POST", &p1, &h1, Some(body.clone())).await;
    assert_eq!(r.body["code"], "SUCCESS", "{}", r.body);
    assert_replay_refused(
        &send(&kms, "POST", &p1, &h1, Some(json!({"ciphertext": secret}))).await,
        "Decrypt (API 1.0, signature v1)",
    );
    let p2 = format!("/keys/v2/{tag}/decrypt");
    let h2 = v2_headers(&kms, "POST", &p2);
    let r = send(&kms, "POST", &p2, &h2, Some(body)).await;
    assert_eq!(r.body["code"], "SUCCESS", "{}", r.body);
    assert_replay_refused(
        &send(&kms, "POST", &p2, &h2, Some(json!({"ciphertext": secret}))).await,
        "Decrypt (API 1.0, signature v2)",
    );
    // Two identical crypto calls in one millisecond: the second is refused.
    let p = format!("/kms/v1/keys/{tag}/encrypt");
    let h = v2_headers(&kms, "POST", &p);
    let b = json!({"plaintext": b64(b"same")});
    let (x, y) = tokio::join!(
        send(&kms, "POST", &p, &h, Some(b.clone())),
        send(&kms, "POST", &p, &h, Some(b.clone()))
    );
    let mut statuses = [x.status, y.status];
    statuses.sort();
    assert_eq!(statuses, [200, 401], "{} / {}", x.body, y.body);
    // A management call is guarded under "all" too.
    let m = format!("/kms/v1/keys/{tag}/rotate");
    let h = v2_headers(&kms, "POST", &m);
    send(&kms, "POST", &m, &h, None).await.ok();
    assert_replay_refused(&send(&kms, "POST", &m, &h, None).await, "Rotate Key");
}

#[tokio::test]
async fn item5_replay_guard_off_serves_replays() {
    let kms = Kms::start_with(|c| set_naver(c, "replay_guard", "off".into())).await;
    let tag = kms.create_key("item5-off", "AES256", json!({})).await;
    let m = format!("/kms/v1/keys/{tag}/disable");
    let h = v2_headers(&kms, "POST", &m);
    send(&kms, "POST", &m, &h, None).await.ok();
    send(&kms, "POST", &m, &h, None).await.ok();
}

#[tokio::test]
async fn item5_full_replay_guard_refuses_management_calls_with_503() {
    let kms = Kms::start_with(|c| set_naver(c, "replay_guard_max_entries", 3.into())).await;
    // create_key is a guarded call itself.
    let tag = kms.create_key("item5-full", "AES256", json!({})).await;
    kms.call("POST", &format!("/kms/v1/keys/{tag}/disable"), None)
        .await
        .ok();
    kms.call("POST", &format!("/kms/v1/keys/{tag}/enable"), None)
        .await
        .ok();
    // Full: a new management call is refused rather than an entry forgotten early.
    let r = kms
        .call("POST", &format!("/kms/v1/keys/{tag}/disable"), None)
        .await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.body["error"]["errorCode"], "900", "{}", r.body);
    let k = kms.call("GET", &format!("/kms/v1/keys/{tag}"), None).await;
    assert_eq!(k.ok()["status"], "ENABLE");
    // Crypto calls (not guarded under "management") are still served.
    kms.encrypt(&tag, b"still served", None).await;
}

#[tokio::test]
async fn item5_signature_window_below_300_seconds_is_applied() {
    let kms = Kms::start_with(|c| c.naver.signature_window_secs = 5).await;
    let tag = kms.create_key("item5-window", "AES256", json!({})).await;
    let p = format!("/kms/v1/keys/{tag}/encrypt");
    let old = (now_ms() - 10_000).to_string();
    let h = Kms::signed_headers(&kms.access_key, &kms.secret_key, "POST", &p, &old);
    let r = send(&kms, "POST", &p, &h, Some(json!({"plaintext": b64(b"x")}))).await;
    r.assert_naver_error(401, "200");
    let fresh = (now_ms() - 2_000).to_string();
    let h = Kms::signed_headers(&kms.access_key, &kms.secret_key, "POST", &p, &fresh);
    send(&kms, "POST", &p, &h, Some(json!({"plaintext": b64(b"x")})))
        .await
        .ok();
}

#[tokio::test]
async fn item5_signature_window_above_ncp_300_seconds_refused_at_start() {
    let mut site = Site::init();
    for bad in ["301", "0", "86400"] {
        let mut child = site
            .command()
            .arg("serve")
            .env("HSM_KMS_NAVER_SIGNATURE_WINDOW_SECS", bad)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("run hsm-kms serve");
        let start = std::time::Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                break s;
            }
            if start.elapsed() > std::time::Duration::from_secs(15) {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve started with a {bad} s window");
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        };
        assert!(!status.success(), "serve accepted a {bad} s window");
        let mut err = String::new();
        std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
            .expect("stderr");
        assert!(
            err.contains("signature_window_secs") && err.contains("300"),
            "the error must name the setting and its limit: {err}"
        );
    }
    // 300 (NCP's own window) is accepted.
    let server = site
        .serve(&[("HSM_KMS_NAVER_SIGNATURE_WINDOW_SECS", "300")])
        .await;
    server.call("GET", "/kms/v1/keys", None).await.ok();
}
