//! Issue 8, item 3: the activity log and the per-key quota see the key the
//! handler used. A key tag is hex text, so no client ever needs to
//! percent-encode it: a path whose key tag (or any other segment) carries
//! percent-encoding is refused with 400 in the NAVER envelope before
//! authentication, quota and logging, on every route of API 2.0 and 1.0.
//! Before the fix such a call was served on the decoded tag with no activity
//! record and a fresh quota bucket per spelling.
mod common;

use common::{b64, Kms, Reply};
use serde_json::{json, Value};

/// The tag with its first character percent-encoded: the same key once
/// decoded, another spelling on the wire.
fn encoded(tag: &str) -> String {
    format!("%{:02X}{}", tag.as_bytes()[0], &tag[1..])
}

async fn records(kms: &Kms, tag: &str) -> i64 {
    let db = kms.db().await;
    let n: (i64,) = sqlx::query_as("SELECT COUNT(*) FROM activity_logs WHERE key_uid = $1")
        .bind(tag)
        .fetch_one(&db)
        .await
        .expect("count records");
    db.close().await;
    n.0
}

/// Every route of API 2.0 under account authentication that names a key,
/// with a body it accepts: (method, suffix after the tag, body, recorded).
fn account_routes(ct: &str, sig: &str) -> Vec<(&'static str, String, Option<Value>, bool)> {
    let pt = json!({"plaintext": b64(b"item3")});
    vec![
        ("GET", String::new(), None, true),
        ("POST", "/disable".into(), None, true),
        ("POST", "/enable".into(), None, true),
        ("GET", "/versions".into(), None, true),
        ("POST", "/versions/1/disable".into(), None, true),
        ("POST", "/versions/1/enable".into(), None, true),
        ("POST", "/rotate".into(), None, true),
        ("PUT", "/memo".into(), Some(json!({"memo": "m"})), true),
        (
            "PUT",
            "/rotation-period".into(),
            Some(json!({"rotationPeriod": 30})),
            true,
        ),
        ("POST", "/enable-auto-rotation".into(), None, true),
        ("POST", "/disable-auto-rotation".into(), None, true),
        ("GET", "/acl".into(), None, true),
        (
            "POST",
            "/acl".into(),
            Some(json!({"ipList": ["198.51.100.0/24"]})),
            true,
        ),
        (
            "DELETE",
            "/acl".into(),
            Some(json!({"ipList": ["198.51.100.0/24"]})),
            true,
        ),
        ("POST", "/acl/enable".into(), None, true),
        ("POST", "/acl/disable".into(), None, true),
        ("POST", "/token-generator".into(), None, true),
        ("GET", "/token-generator".into(), None, true),
        ("PUT", "/token-generator".into(), None, true),
        ("POST", "/token-set".into(), Some(json!({})), true),
        ("DELETE", "/token-generator".into(), None, true),
        ("GET", "/activities".into(), None, false),
        ("GET", "/last-use-info".into(), None, false),
        ("POST", "/encrypt".into(), Some(pt.clone()), true),
        (
            "POST",
            "/decrypt".into(),
            Some(json!({"ciphertext": ct})),
            true,
        ),
        (
            "POST",
            "/re-encrypt".into(),
            Some(json!({"ciphertext": ct})),
            true,
        ),
        (
            "POST",
            "/reencrypt".into(),
            Some(json!({"ciphertext": ct})),
            true,
        ),
        (
            "POST",
            "/create-custom-key".into(),
            Some(json!({"requestPlainKey": false})),
            true,
        ),
        (
            "POST",
            "/sign".into(),
            Some(json!({"data": b64(b"item3")})),
            true,
        ),
        (
            "POST",
            "/verify".into(),
            Some(json!({"data": b64(b"item3"), "signature": sig})),
            true,
        ),
        ("POST", "/get-pub-key".into(), Some(json!({})), true),
        ("POST", "/request-deletion".into(), None, true),
        ("POST", "/cancel-deletion".into(), None, true),
        ("DELETE", String::new(), None, true),
    ]
}

fn assert_refused(r: &Reply, what: &str) {
    assert_eq!(r.status, 400, "{what}: {}", r.body);
    assert_eq!(r.body["error"]["errorCode"], "100", "{what}: {}", r.body);
}

#[tokio::test]
async fn item3_encoded_key_tag_refused_on_every_route_and_logged_once_canonical() {
    let kms = Kms::start().await;
    let api_key = kms.engine.create_api_key("default").await.unwrap();
    let tag = kms.create_key("item3", "AES256", json!({})).await;
    let ct = kms.encrypt(&tag, b"item3", None).await;
    let rsa = kms.create_key("item3-rsa", "RSA2048", json!({})).await;
    let sig = kms
        .op(&rsa, "sign", json!({"data": b64(b"item3")}))
        .await
        .ok()["signature"]
        .as_str()
        .unwrap()
        .to_string();

    // Each route, spelled with an encoded tag, is refused and leaves no trace
    // (nothing done, so nothing to record); spelled canonically it is served
    // and gets exactly one record.
    for (method, suffix, body, recorded) in account_routes(&ct, &sig) {
        // Sign/verify/get-pub-key need the RSA key; the rest the AES key.
        let key = if matches!(suffix.as_str(), "/sign" | "/verify" | "/get-pub-key") {
            &rsa
        } else {
            &tag
        };
        let before = records(&kms, key).await;
        let state_before = kms.call("GET", &format!("/kms/v1/keys/{key}"), None).await;
        let bad = format!("/kms/v1/keys/{}{suffix}", encoded(key));
        let r = kms.call(method, &bad, body.clone()).await;
        assert_refused(&r, &format!("{method} {bad}"));
        let state_after = kms.call("GET", &format!("/kms/v1/keys/{key}"), None).await;
        // The two GETs above are recorded themselves (GetKeyInfo).
        assert_eq!(
            records(&kms, key).await,
            before + 2,
            "{method} {bad} left a record"
        );
        assert_eq!(
            state_before.ok(),
            state_after.ok(),
            "{method} {bad} changed the key"
        );

        let good = format!("/kms/v1/keys/{key}{suffix}");
        let r = kms.call(method, &good, body).await;
        assert!(
            r.status < 500,
            "{method} {good} answered {}: {}",
            r.status,
            r.body
        );
        assert_eq!(
            records(&kms, key).await,
            before + 2 + i64::from(recorded),
            "{method} {good}: one record"
        );
    }

    // Token auth (crypto) and refresh-token calls with an encoded tag.
    if kms
        .call("GET", &format!("/kms/v1/keys/{tag}"), None)
        .await
        .ok()["status"]
        != "ENABLE"
    {
        kms.call("POST", &format!("/kms/v1/keys/{tag}/enable"), None)
            .await
            .ok();
    }
    kms.call("POST", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await
        .ok();
    let set = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/token-set"),
            Some(json!({})),
        )
        .await;
    let access = set.ok()["accessToken"].as_str().unwrap().to_string();
    let refresh = set.ok()["refreshToken"].as_str().unwrap().to_string();
    let before = records(&kms, &tag).await;
    let h = |t: &str| vec![("x-ncp-ocapi-token".to_string(), t.to_string())];
    let pt = json!({"plaintext": b64(b"token")}).to_string().into_bytes();
    let r = kms
        .raw(
            "POST",
            &format!("/kms/v1/keys/{}/encrypt", encoded(&tag)),
            &h(&access),
            Some(pt.clone()),
        )
        .await;
    assert_refused(&r, "token-auth encrypt");
    for (m, s) in [("PUT", "token-set"), ("POST", "access-token")] {
        let r = kms
            .raw(
                m,
                &format!("/kms/v1/keys/{}/{s}", encoded(&tag)),
                &h(&refresh),
                Some(b"{}".to_vec()),
            )
            .await;
        assert_refused(&r, &format!("{m} {s} with a refresh token"));
    }
    assert_eq!(records(&kms, &tag).await, before);
    let r = kms
        .raw(
            "POST",
            &format!("/kms/v1/keys/{tag}/encrypt"),
            &h(&access),
            Some(pt),
        )
        .await;
    r.ok();
    assert_eq!(records(&kms, &tag).await, before + 1);

    // API 1.0: both signatures, every route.
    let v1_routes = [
        ("encrypt", json!({"plaintext": b64(b"one")})),
        ("decrypt", json!({"ciphertext": ct})),
        ("reencrypt", json!({"ciphertext": ct})),
        ("re-encrypt", json!({"ciphertext": ct})),
        ("createCustomKey", json!({"requestPlainKey": false})),
        ("create-custom-key", json!({"requestPlainKey": false})),
    ];
    for (action, body) in v1_routes.iter() {
        let before = records(&kms, &tag).await;
        let bad = format!("/keys/v1/{}/{action}", encoded(&tag));
        assert_refused(
            &common::v1_call(&kms, &api_key, &bad, body.clone()).await,
            &bad,
        );
        let bad = format!("/keys/v2/{}/{action}", encoded(&tag));
        assert_refused(&kms.call("POST", &bad, Some(body.clone())).await, &bad);
        assert_eq!(records(&kms, &tag).await, before, "{action}");
        let good = format!("/keys/v1/{tag}/{action}");
        let r = common::v1_call(&kms, &api_key, &good, body.clone()).await;
        assert_eq!(r.status, 200, "{good}: {}", r.body);
        let good = format!("/keys/v2/{tag}/{action}");
        let r = kms.call("POST", &good, Some(body.clone())).await;
        assert_eq!(r.status, 200, "{good}: {}", r.body);
        assert_eq!(records(&kms, &tag).await, before + 2, "{action}");
    }
    for action in ["sign", "verify"] {
        let body = if action == "sign" {
            json!({"data": b64(b"item3")})
        } else {
            json!({"data": b64(b"item3"), "signature": sig})
        };
        let bad = format!("/keys/v1/{}/{action}", encoded(&rsa));
        assert_refused(
            &common::v1_call(&kms, &api_key, &bad, body.clone()).await,
            &bad,
        );
        let bad = format!("/keys/v2/{}/{action}", encoded(&rsa));
        assert_refused(&kms.call("POST", &bad, Some(body)).await, &bad);
    }
}

#[tokio::test]
async fn item3_encoded_key_tag_cannot_take_a_fresh_quota_bucket() {
    let kms = Kms::start_with(|c| {
        c.rate_limit.profile = "custom".into();
        c.rate_limit.requests_per_second = 1;
        c.rate_limit.burst = 2;
    })
    .await;
    let tag = kms.create_key("item3-quota", "AES256", json!({})).await;
    let body = json!({"plaintext": b64(b"q")});
    kms.op(&tag, "encrypt", body.clone()).await.ok();
    kms.op(&tag, "encrypt", body.clone()).await.ok();
    kms.op(&tag, "encrypt", body.clone())
        .await
        .assert_naver_error(429, "400");
    // Another spelling of the same key is the same key: never a fresh bucket.
    for path in [
        format!("/kms/v1/keys/{}/encrypt", encoded(&tag)),
        format!("/keys/v2/{}/encrypt", encoded(&tag)),
        format!(
            "/kms/v1/keys/{}%{:02x}/encrypt",
            &tag[..tag.len() - 1],
            tag.as_bytes()[tag.len() - 1]
        ),
    ] {
        let r = kms.call("POST", &path, Some(body.clone())).await;
        assert_ne!(r.status, 200, "{path} was served: {}", r.body);
        assert_refused(&r, &path);
    }
}
