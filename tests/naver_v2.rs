//! NAVER KMS API 2.0 under account authentication, over HTTP against a real
//! SoftHSMv2 token and a real SQLite file: every endpoint's happy path with
//! its response shape, and each bad input with its status and envelope.
// The engine's store and HSM ports are public to tests only with the
// `test-hooks` feature (scripts/test.sh builds with --all-features).
#![cfg(feature = "test-hooks")]

mod common;

use common::{b64, now_ms, unb64, Kms, Reply};
use serde_json::{json, Value};

const DAY_MS: i64 = 24 * 3600 * 1000;

/// Asserts that a millisecond timestamp is within `slack_ms` of `expected`.
fn assert_near(v: &Value, expected: i64, slack_ms: i64) {
    let got = v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"));
    assert!(
        (got - expected).abs() <= slack_ms,
        "timestamp {got} is not within {slack_ms} ms of {expected}"
    );
}

fn keys(tag: &str) -> String {
    format!("/kms/v1/keys/{tag}")
}

/// Asserts the object has exactly these keys.
fn assert_fields(v: &Value, fields: &[&str]) {
    let obj = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"));
    let mut got: Vec<&str> = obj.keys().map(String::as_str).collect();
    got.sort_unstable();
    let mut want = fields.to_vec();
    want.sort_unstable();
    assert_eq!(got, want, "fields of {v}");
}

/// Flips one bit in the body of an `ncpkms:v{n}:{base64}` text.
fn tamper(sealed: &str) -> String {
    let (prefix, body) = sealed.rsplit_once(':').unwrap();
    let mut bytes = unb64(body);
    let i = bytes.len() / 2;
    bytes[i] ^= 0x01;
    format!("{prefix}:{}", b64(&bytes))
}

// ---------------------------------------------------------------- keys

#[tokio::test]
async fn create_key_and_get_key_info_shapes() {
    let kms = Kms::start().await;
    let t0 = now_ms();

    // AES256 without rotation.
    let r = kms
        .call(
            "POST",
            "/kms/v1/keys",
            Some(json!({"keyName": "aes-plain", "keyType": "AES256", "memo": "first key", "isAutoRotation": false, "protectionType": "BASIC"})),
        )
        .await;
    let d = r.ok().clone();
    assert_fields(
        &d,
        &[
            "keyId",
            "keyTag",
            "keyName",
            "nrn",
            "baseUrl",
            "keyType",
            "status",
            "keystoreId",
            "currentVersion",
            "protectionType",
            "memo",
            "isConvergent",
            "isAutoRotation",
            "registerDate",
        ],
    );
    let tag = d["keyTag"].as_str().unwrap().to_string();
    assert_eq!(tag.len(), 64);
    assert!(tag.bytes().all(|c| c.is_ascii_hexdigit()));
    assert!(d["keyId"].is_i64());
    assert!(d["keystoreId"].is_i64());
    assert_eq!(
        d["nrn"],
        format!(
            "nrn:PUB:KMS::{}:Key/{}",
            d["keystoreId"].as_i64().unwrap(),
            d["keyId"].as_i64().unwrap()
        )
    );
    assert_eq!(d["keyName"], "aes-plain");
    // The address the client called (issue 13: never NAVER's own host).
    assert_eq!(d["baseUrl"], kms.url);
    assert_eq!(d["keyType"], "AES256");
    assert_eq!(d["status"], "ENABLE");
    assert_eq!(d["currentVersion"], 1);
    assert_eq!(d["protectionType"], "BASIC");
    assert_eq!(d["memo"], "first key");
    assert_eq!(d["isConvergent"], false);
    assert_eq!(d["isAutoRotation"], false);
    assert_near(&d["registerDate"], t0, 10_000);

    // Get Key Info answers the same record.
    let info = kms.call("GET", &keys(&tag), None).await;
    assert_eq!(info.ok(), &d);

    // Convergent AES256 with automatic rotation every 30 days.
    let r = kms
        .call(
            "POST",
            "/kms/v1/keys",
            Some(json!({"keyName": "aes-conv", "keyType": "AES256", "isConvergent": true, "isAutoRotation": true, "rotationPeriod": 30})),
        )
        .await;
    let c = r.ok().clone();
    assert_eq!(c["isConvergent"], true);
    assert_eq!(c["isAutoRotation"], true);
    assert_eq!(c["rotationPeriod"], 30);
    assert_eq!(c["protectionType"], "COMMON_HSM");
    assert_eq!(c["memo"], "");
    assert_near(&c["nextRotationDate"], t0 + 30 * DAY_MS, 10_000);
    assert_ne!(c["keyTag"], d["keyTag"]);
    assert_ne!(c["keyId"], d["keyId"]);

    // Auto rotation without a period: the default of 90 days.
    let r = kms
        .call(
            "POST",
            "/kms/v1/keys",
            Some(json!({"keyName": "rsa-key", "keyType": "RSA2048", "isAutoRotation": true})),
        )
        .await;
    let rsa = r.ok().clone();
    assert_eq!(rsa["keyType"], "RSA2048");
    assert_eq!(rsa["rotationPeriod"], 90);
    assert_near(&rsa["nextRotationDate"], t0 + 90 * DAY_MS, 10_000);
    assert_eq!(rsa["currentVersion"], 1);

    let r = kms
        .call(
            "POST",
            "/kms/v1/keys",
            Some(json!({"keyName": "ec_key", "keyType": "ECDSA", "isAutoRotation": false})),
        )
        .await;
    let ec = r.ok().clone();
    assert_eq!(ec["keyType"], "ECDSA");
    assert_eq!(ec["status"], "ENABLE");
    assert!(ec.get("rotationPeriod").is_none());
    assert!(ec.get("nextRotationDate").is_none());

    // Bad inputs.
    let bad: Vec<(Value, &str)> = vec![
        (json!({"keyType": "AES256"}), "keyName"),
        (json!({"keyName": "nokind"}), "keyType"),
        (json!({"keyName": "ab", "keyType": "AES256"}), "keyName"),
        (json!({"keyName": "1abc", "keyType": "AES256"}), "keyName"),
        (
            json!({"keyName": "abcdefghijklmnop", "keyType": "AES256"}),
            "keyName",
        ),
        (
            json!({"keyName": "bad.name", "keyType": "AES256"}),
            "keyName",
        ),
        (json!({"keyName": "kind", "keyType": "AES128"}), "keyType"),
        (
            json!({"keyName": "conv", "keyType": "RSA2048", "isConvergent": true}),
            "isConvergent",
        ),
        (
            json!({"keyName": "rot0", "keyType": "AES256", "isAutoRotation": true, "rotationPeriod": 0}),
            "rotationPeriod",
        ),
        (
            json!({"keyName": "rot731", "keyType": "AES256", "isAutoRotation": true, "rotationPeriod": 731}),
            "rotationPeriod",
        ),
        (
            json!({"keyName": "memo", "keyType": "AES256", "memo": "m".repeat(101)}),
            "memo",
        ),
        (
            json!({"keyName": "prot", "keyType": "AES256", "protectionType": "CLOUD"}),
            "protectionType",
        ),
        (
            json!({"keyName": "aes-plain", "keyType": "AES256"}),
            "aes-plain",
        ),
        (
            json!({"keyName": "typed", "keyType": "AES256", "isConvergent": "yes"}),
            "malformed JSON",
        ),
    ];
    for (body, hint) in bad {
        let r = kms.call("POST", "/kms/v1/keys", Some(body.clone())).await;
        r.assert_naver_error(400, "100");
        assert_eq!(r.body["error"]["message"], "Bad Request");
        assert!(
            r.body["error"]["details"].as_str().unwrap().contains(hint),
            "{body} -> {}",
            r.body
        );
    }
    let r = kms
        .call_raw_body("POST", "/kms/v1/keys", b"{\"keyName\": \"x\",")
        .await;
    r.assert_naver_error(400, "100");
    assert!(r.body["error"]["details"]
        .as_str()
        .unwrap()
        .contains("malformed JSON"));

    // Nothing was created by the failed requests.
    let list = kms.call("GET", "/kms/v1/keys", None).await;
    assert_eq!(list.ok()["totalCount"], 4);

    // Unknown key tag: 404 in the NAVER envelope.
    let r = kms.call("GET", &keys(&"0".repeat(64)), None).await;
    r.assert_naver_error(404, "300");
    assert_eq!(r.body["error"]["message"], "Not Found");
}

#[tokio::test]
async fn key_list_paging_and_limits() {
    let kms = Kms::start().await;
    let mut tags = Vec::new();
    for i in 0..5 {
        tags.push(
            kms.create_key(&format!("list-key-{i}"), "AES256", json!({}))
                .await,
        );
    }
    // Default page: all five, newest first.
    let r = kms.call("GET", "/kms/v1/keys", None).await;
    let d = r.ok();
    assert_fields(
        d,
        &["keyList", "currentPageNo", "totalPageNo", "totalCount"],
    );
    assert_eq!(d["currentPageNo"], 1);
    assert_eq!(d["totalPageNo"], 1);
    assert_eq!(d["totalCount"], 5);
    let list = d["keyList"].as_array().unwrap();
    let got: Vec<&str> = list.iter().map(|k| k["keyTag"].as_str().unwrap()).collect();
    let want: Vec<&str> = tags.iter().rev().map(String::as_str).collect();
    assert_eq!(got, want);
    let item = &list[0];
    assert_fields(
        item,
        &[
            "keyId",
            "keyTag",
            "keyName",
            "keyType",
            "status",
            "protectionType",
            "isConvergent",
            "registerDate",
            "destroyDate",
        ],
    );
    assert_eq!(item["keyName"], "list-key-4");
    assert_eq!(item["keyType"], "AES256");
    assert_eq!(item["status"], "ENABLE");
    assert_eq!(item["isConvergent"], false);
    assert!(item["keyId"].is_i64());
    assert!(item["registerDate"].is_i64());

    // Pages of two.
    let mut seen = Vec::new();
    for page in 1..=3 {
        let r = kms
            .call(
                "GET",
                &format!("/kms/v1/keys?pageNo={page}&pageSize=2"),
                None,
            )
            .await;
        let d = r.ok();
        assert_eq!(d["currentPageNo"], page);
        assert_eq!(d["totalPageNo"], 3);
        assert_eq!(d["totalCount"], 5);
        let n = d["keyList"].as_array().unwrap().len();
        assert_eq!(n, if page == 3 { 1 } else { 2 });
        for k in d["keyList"].as_array().unwrap() {
            seen.push(k["keyTag"].as_str().unwrap().to_string());
        }
    }
    let mut want = tags.clone();
    want.reverse();
    assert_eq!(seen, want);
    // Past the last page: empty list, same totals.
    let r = kms
        .call("GET", "/kms/v1/keys?pageNo=4&pageSize=2", None)
        .await;
    assert_eq!(r.ok()["keyList"], json!([]));
    assert_eq!(r.ok()["totalCount"], 5);
    // The limits: pageSize 1..=200, pageNo >= 1.
    let r = kms.call("GET", "/kms/v1/keys?pageSize=200", None).await;
    assert_eq!(r.ok()["keyList"].as_array().unwrap().len(), 5);
    let r = kms.call("GET", "/kms/v1/keys?pageSize=1", None).await;
    assert_eq!(r.ok()["totalPageNo"], 5);
    for q in [
        "pageSize=201",
        "pageSize=0",
        "pageNo=0",
        "pageNo=-1",
        "pageSize=abc",
        "pageNo=1.5",
    ] {
        let r = kms.call("GET", &format!("/kms/v1/keys?{q}"), None).await;
        r.assert_naver_error(400, "100");
    }

    // Another account sees none of them.
    let (ak, sk) = kms.second_account("other").await;
    let r = kms.call_as(&ak, &sk, "GET", "/kms/v1/keys", None).await;
    assert_eq!(r.ok()["totalCount"], 0);
    assert_eq!(r.ok()["keyList"], json!([]));
}

#[tokio::test]
async fn enable_and_disable_key() {
    let kms = Kms::start().await;
    let tag = kms.create_key("toggle", "AES256", json!({})).await;
    let rsa = kms.create_key("toggle-rsa", "RSA2048", json!({})).await;
    let ct = kms.encrypt(&tag, b"before", None).await;
    let sig = kms.op(&rsa, "sign", json!({"data": b64(b"doc")})).await;
    let sig = sig.ok()["signature"].as_str().unwrap().to_string();

    let t0 = now_ms();
    let r = kms.op(&tag, "disable", json!(null)).await;
    let d = r.ok();
    assert_fields(d, &["keyTag", "status", "statusDate"]);
    assert_eq!(d["keyTag"], tag);
    assert_eq!(d["status"], "DISABLE");
    assert_near(&d["statusDate"], t0, 10_000);
    let info = kms.call("GET", &keys(&tag), None).await;
    assert_eq!(info.ok()["status"], "DISABLE");

    // A disabled key does nothing: 403.
    let r = kms
        .op(&tag, "encrypt", json!({"plaintext": b64(b"x")}))
        .await;
    r.assert_naver_error(403, "230");
    assert_eq!(r.body["error"]["message"], "Forbidden");
    kms.decrypt(&tag, &ct, None)
        .await
        .assert_naver_error(403, "230");
    kms.op(&tag, "re-encrypt", json!({"ciphertext": ct}))
        .await
        .assert_naver_error(403, "230");
    kms.op(&tag, "create-custom-key", json!({}))
        .await
        .assert_naver_error(403, "230");
    // Rotation needs an enabled key; versions of a disabled key cannot change.
    kms.op(&tag, "rotate", json!(null))
        .await
        .assert_naver_error(400, "100");
    kms.op(&tag, "versions/1/enable", json!(null))
        .await
        .assert_naver_error(400, "100");

    kms.op(&rsa, "disable", json!(null)).await.ok();
    kms.op(&rsa, "sign", json!({"data": b64(b"doc")}))
        .await
        .assert_naver_error(403, "230");
    kms.op(
        &rsa,
        "verify",
        json!({"data": b64(b"doc"), "signature": sig}),
    )
    .await
    .assert_naver_error(403, "230");
    kms.op(&rsa, "get-pub-key", json!({}))
        .await
        .assert_naver_error(403, "230");

    // Disabling twice is harmless; enabling restores everything.
    kms.op(&tag, "disable", json!(null)).await.ok();
    let r = kms.op(&tag, "enable", json!(null)).await;
    assert_eq!(r.ok()["status"], "ENABLE");
    assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, b"before");
    kms.op(&rsa, "enable", json!(null)).await.ok();
    let r = kms
        .op(
            &rsa,
            "verify",
            json!({"data": b64(b"doc"), "signature": sig}),
        )
        .await;
    assert_eq!(r.ok()["valid"], true);

    // Unknown key tag.
    for action in ["enable", "disable"] {
        kms.op(&"f".repeat(64), action, json!(null))
            .await
            .assert_naver_error(404, "300");
    }
}

#[tokio::test]
async fn deletion_request_cancel_and_delete() {
    let kms = Kms::start().await;
    let tag = kms.create_key("doomed", "AES256", json!({})).await;
    let ct = kms.encrypt(&tag, b"last words", None).await;
    let cka_id = kms
        .engine
        .key_entry(&hsm_kms::core::KeyUid::from(&tag))
        .await
        .unwrap()
        .versions[0]
        .cka_id
        .to_vec();

    // Delete Key only works on a key pending deletion.
    kms.call("DELETE", &keys(&tag), None)
        .await
        .assert_naver_error(400, "100");
    kms.op(&tag, "cancel-deletion", json!(null))
        .await
        .assert_naver_error(400, "100");

    let t0 = now_ms();
    let r = kms.op(&tag, "request-deletion", json!(null)).await;
    let d = r.ok();
    assert_fields(d, &["keyTag", "status", "statusDate"]);
    assert_eq!(d["status"], "REVOKE");
    let status_date = d["statusDate"].as_i64().unwrap();
    assert_near(&d["statusDate"], t0, 10_000);
    let info = kms.call("GET", &keys(&tag), None).await;
    assert_eq!(info.ok()["status"], "REVOKE");
    assert_eq!(info.ok()["destroyDate"], status_date + 72 * 3600 * 1000);

    // Pending deletion: unusable, cannot be enabled, cannot be requested twice.
    kms.decrypt(&tag, &ct, None)
        .await
        .assert_naver_error(403, "230");
    for action in ["enable", "disable", "request-deletion"] {
        kms.op(&tag, action, json!(null))
            .await
            .assert_naver_error(400, "100");
    }

    // Cancel: the key comes back disabled, without a destroy date.
    let r = kms.op(&tag, "cancel-deletion", json!(null)).await;
    assert_eq!(r.ok()["status"], "DISABLE");
    let info = kms.call("GET", &keys(&tag), None).await;
    assert!(info.ok().get("destroyDate").is_none(), "{}", info.body);
    kms.op(&tag, "enable", json!(null)).await.ok();
    assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, b"last words");

    // Request again, then delete now.
    kms.op(&tag, "request-deletion", json!(null)).await.ok();
    let r = kms.call("DELETE", &keys(&tag), None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, json!({"code": "SUCCESS", "data": null}));

    // The key is gone: 404 everywhere, absent from the list, objects destroyed.
    kms.call("GET", &keys(&tag), None)
        .await
        .assert_naver_error(404, "300");
    kms.decrypt(&tag, &ct, None)
        .await
        .assert_naver_error(404, "300");
    kms.op(&tag, "encrypt", json!({"plaintext": b64(b"x")}))
        .await
        .assert_naver_error(404, "300");
    for action in ["enable", "rotate", "cancel-deletion", "request-deletion"] {
        kms.op(&tag, action, json!(null))
            .await
            .assert_naver_error(404, "300");
    }
    kms.call("DELETE", &keys(&tag), None)
        .await
        .assert_naver_error(404, "300");
    let list = kms.call("GET", "/kms/v1/keys", None).await;
    assert_eq!(list.ok()["totalCount"], 0);
    assert!(kms
        .engine
        .hsm()
        .object_info(cka_id)
        .await
        .unwrap()
        .is_empty());

    // The name can be used again.
    let again = kms.create_key("doomed", "AES256", json!({})).await;
    assert_ne!(again, tag);
}

#[tokio::test]
async fn memo_rotation_period_and_auto_rotation() {
    let kms = Kms::start().await;
    let tag = kms.create_key("settings", "AES256", json!({})).await;

    let r = kms
        .call(
            "PUT",
            &format!("{}/memo", keys(&tag)),
            Some(json!({"memo": "payments"})),
        )
        .await;
    assert_eq!(r.ok(), &json!({"keyTag": tag, "memo": "payments"}));
    let info = kms.call("GET", &keys(&tag), None).await;
    assert_eq!(info.ok()["memo"], "payments");
    let long = "가".repeat(100);
    let r = kms
        .call(
            "PUT",
            &format!("{}/memo", keys(&tag)),
            Some(json!({"memo": long})),
        )
        .await;
    assert_eq!(r.ok()["memo"], long);
    for body in [
        json!({"memo": "m".repeat(101)}),
        json!({}),
        json!({"memo": 5}),
    ] {
        kms.call("PUT", &format!("{}/memo", keys(&tag)), Some(body))
            .await
            .assert_naver_error(400, "100");
    }
    let r = kms
        .call_raw_body("PUT", &format!("{}/memo", keys(&tag)), b"memo=x")
        .await;
    r.assert_naver_error(400, "100");

    // The period can only be set while automatic rotation is on.
    kms.call(
        "PUT",
        &format!("{}/rotation-period", keys(&tag)),
        Some(json!({"rotationPeriod": 30})),
    )
    .await
    .assert_naver_error(400, "100");

    let t0 = now_ms();
    let r = kms.op(&tag, "enable-auto-rotation", json!(null)).await;
    let d = r.ok();
    assert_fields(
        d,
        &[
            "keyTag",
            "isAutoRotation",
            "rotationPeriod",
            "nextRotationDate",
        ],
    );
    assert_eq!(d["keyTag"], tag);
    assert_eq!(d["isAutoRotation"], true);
    assert_eq!(d["rotationPeriod"], 90);
    assert_near(&d["nextRotationDate"], t0 + 90 * DAY_MS, 10_000);

    let r = kms
        .call(
            "PUT",
            &format!("{}/rotation-period", keys(&tag)),
            Some(json!({"rotationPeriod": 30})),
        )
        .await;
    let d = r.ok();
    assert_fields(d, &["keyTag", "rotationPeriod", "nextRotationDate"]);
    assert_eq!(d["rotationPeriod"], 30);
    // Counted from the last rotation (here: the key's creation).
    let created = kms.call("GET", &keys(&tag), None).await.ok()["registerDate"]
        .as_i64()
        .unwrap();
    assert_eq!(d["nextRotationDate"], created + 30 * DAY_MS);
    let info = kms.call("GET", &keys(&tag), None).await;
    assert_eq!(info.ok()["rotationPeriod"], 30);
    assert_eq!(info.ok()["isAutoRotation"], true);
    assert_eq!(info.ok()["nextRotationDate"], created + 30 * DAY_MS);

    for body in [
        json!({"rotationPeriod": 0}),
        json!({"rotationPeriod": 731}),
        json!({}),
        json!({"rotationPeriod": "30"}),
    ] {
        kms.call(
            "PUT",
            &format!("{}/rotation-period", keys(&tag)),
            Some(body),
        )
        .await
        .assert_naver_error(400, "100");
    }
    let r = kms
        .call(
            "PUT",
            &format!("{}/rotation-period", keys(&tag)),
            Some(json!({"rotationPeriod": 730})),
        )
        .await;
    assert_eq!(r.ok()["rotationPeriod"], 730);

    let r = kms.op(&tag, "disable-auto-rotation", json!(null)).await;
    assert_eq!(r.ok(), &json!({"keyTag": tag, "isAutoRotation": false}));
    let info = kms.call("GET", &keys(&tag), None).await;
    assert_eq!(info.ok()["isAutoRotation"], false);
    assert!(info.ok().get("nextRotationDate").is_none(), "{}", info.body);

    for (m, p, body) in [
        ("PUT", "memo", json!({"memo": "x"})),
        ("PUT", "rotation-period", json!({"rotationPeriod": 10})),
        ("POST", "enable-auto-rotation", json!(null)),
        ("POST", "disable-auto-rotation", json!(null)),
    ] {
        kms.call(m, &format!("{}/{p}", keys(&"a".repeat(64))), Some(body))
            .await
            .assert_naver_error(404, "300");
    }
}

// ---------------------------------------------------------------- versions

#[tokio::test]
async fn rotate_then_decrypt_reencrypt_and_version_states() {
    let kms = Kms::start().await;
    let tag = kms.create_key("rotating", "AES256", json!({})).await;
    let ct1 = kms.encrypt(&tag, b"one", None).await;
    assert!(ct1.starts_with("ncpkms:v1:"), "{ct1}");

    let t0 = now_ms();
    let r = kms.op(&tag, "rotate", json!(null)).await;
    let d = r.ok();
    assert_fields(d, &["keyTag", "version", "rotatedDate"]);
    assert_eq!(d["keyTag"], tag);
    assert_eq!(d["version"], 2);
    assert_near(&d["rotatedDate"], t0, 10_000);
    let ct2 = kms.encrypt(&tag, b"two", None).await;
    assert!(ct2.starts_with("ncpkms:v2:"), "{ct2}");
    let r = kms.op(&tag, "rotate", json!(null)).await;
    assert_eq!(r.ok()["version"], 3);
    let ct3 = kms.encrypt(&tag, b"three", None).await;
    assert!(ct3.starts_with("ncpkms:v3:"), "{ct3}");
    let info = kms.call("GET", &keys(&tag), None).await;
    assert_eq!(info.ok()["currentVersion"], 3);

    // Every enabled version still decrypts its ciphertexts.
    assert_eq!(kms.decrypt_ok(&tag, &ct1, None).await, b"one");
    assert_eq!(kms.decrypt_ok(&tag, &ct2, None).await, b"two");
    assert_eq!(kms.decrypt_ok(&tag, &ct3, None).await, b"three");

    // Version list.
    let r = kms
        .call("GET", &format!("{}/versions", keys(&tag)), None)
        .await;
    let d = r.ok();
    assert_fields(d, &["keyTag", "currentVersion", "versionList"]);
    assert_eq!(d["currentVersion"], 3);
    let vl = d["versionList"].as_array().unwrap();
    assert_eq!(vl.len(), 3);
    for (i, v) in vl.iter().enumerate() {
        assert_fields(v, &["version", "status", "statusDate", "rotatedDate"]);
        assert_eq!(v["version"], i as i64 + 1);
        assert_eq!(v["status"], "ENABLE");
        assert_near(&v["rotatedDate"], t0, 20_000);
    }

    // Re-encrypt gives a ciphertext of the newest version, under both paths.
    for path in ["re-encrypt", "reencrypt"] {
        let r = kms.op(&tag, path, json!({"ciphertext": ct1})).await;
        let d = r.ok();
        assert_fields(d, &["newCiphertext"]);
        let n = d["newCiphertext"].as_str().unwrap();
        assert!(n.starts_with("ncpkms:v3:"), "{n}");
        assert_eq!(kms.decrypt_ok(&tag, n, None).await, b"one");
    }
    let r = kms
        .op(&tag, "re-encrypt", json!({"ciphertext": [ct1, ct2]}))
        .await;
    let arr = r.ok()["newCiphertext"].as_array().unwrap().clone();
    assert_eq!(arr.len(), 2);
    for (n, want) in arr.iter().zip([b"one".as_slice(), b"two"]) {
        let n = n.as_str().unwrap();
        assert!(n.starts_with("ncpkms:v3:"));
        assert_eq!(kms.decrypt_ok(&tag, n, None).await, want);
    }

    // Disabling a version makes its ciphertexts fail with a clear 403.
    let t1 = now_ms();
    let r = kms.op(&tag, "versions/1/disable", json!(null)).await;
    let d = r.ok();
    assert_fields(d, &["version", "status", "statusDate"]);
    assert_eq!(d["version"], 1);
    assert_eq!(d["status"], "DISABLE");
    assert_near(&d["statusDate"], t1, 10_000);
    let r = kms.decrypt(&tag, &ct1, None).await;
    r.assert_naver_error(403, "230");
    assert!(
        r.body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("version 1"),
        "{}",
        r.body
    );
    kms.op(&tag, "reencrypt", json!({"ciphertext": ct1}))
        .await
        .assert_naver_error(403, "230");
    // Other versions are untouched.
    assert_eq!(kms.decrypt_ok(&tag, &ct2, None).await, b"two");
    let r = kms
        .call("GET", &format!("{}/versions", keys(&tag)), None)
        .await;
    let vl = r.ok()["versionList"].as_array().unwrap().clone();
    assert_eq!(vl[0]["status"], "DISABLE");
    assert_eq!(vl[1]["status"], "ENABLE");

    // The newest version cannot be disabled.
    let r = kms.op(&tag, "versions/3/disable", json!(null)).await;
    r.assert_naver_error(400, "100");
    assert!(r.body["error"]["details"]
        .as_str()
        .unwrap()
        .contains("newest"));
    assert_eq!(kms.decrypt_ok(&tag, &ct3, None).await, b"three");

    // Enabling restores the old ciphertexts.
    let r = kms.op(&tag, "versions/1/enable", json!(null)).await;
    assert_eq!(r.ok()["status"], "ENABLE");
    assert_eq!(r.ok()["version"], 1);
    assert_eq!(kms.decrypt_ok(&tag, &ct1, None).await, b"one");

    // Bad version numbers.
    for v in ["0", "101", "abc", "-1"] {
        kms.op(&tag, &format!("versions/{v}/disable"), json!(null))
            .await
            .assert_naver_error(400, "100");
    }
    kms.op(&tag, "versions/7/disable", json!(null))
        .await
        .assert_naver_error(404, "300");
    // A ciphertext that names a version the key does not have.
    let body = ct3.rsplit_once(':').unwrap().1;
    kms.decrypt(&tag, &format!("ncpkms:v9:{body}"), None)
        .await
        .assert_naver_error(400, "100");
    // A ciphertext of v2 relabelled as v3 does not decrypt.
    let body2 = ct2.rsplit_once(':').unwrap().1;
    kms.decrypt(&tag, &format!("ncpkms:v3:{body2}"), None)
        .await
        .assert_naver_error(400, "100");
}

#[tokio::test]
async fn rotate_asymmetric_keys_keeps_old_versions() {
    let kms = Kms::start().await;
    let rsa = kms.create_key("rot-rsa", "RSA2048", json!({})).await;
    let ec = kms.create_key("rot-ec", "ECDSA", json!({})).await;
    let ct1 = kms.encrypt(&rsa, b"rsa one", None).await;
    let data = b64(b"signed before rotation");
    let mut sigs = Vec::new();
    for tag in [&rsa, &ec] {
        let s = kms.op(tag, "sign", json!({"data": data})).await;
        sigs.push(s.ok()["signature"].as_str().unwrap().to_string());
        assert_eq!(kms.op(tag, "rotate", json!(null)).await.ok()["version"], 2);
    }
    assert!(kms
        .encrypt(&rsa, b"x", None)
        .await
        .starts_with("ncpkms:v2:"));
    assert_eq!(kms.decrypt_ok(&rsa, &ct1, None).await, b"rsa one");
    let r = kms.op(&rsa, "reencrypt", json!({"ciphertext": ct1})).await;
    let n = r.ok()["newCiphertext"].as_str().unwrap().to_string();
    assert!(n.starts_with("ncpkms:v2:"));
    assert_eq!(kms.decrypt_ok(&rsa, &n, None).await, b"rsa one");

    for (tag, sig) in [&rsa, &ec].into_iter().zip(&sigs) {
        assert!(sig.starts_with("ncpkms:v1:"));
        let r = kms
            .op(tag, "verify", json!({"data": data, "signature": sig}))
            .await;
        assert_eq!(r.ok()["valid"], true);
        let s = kms.op(tag, "sign", json!({"data": data})).await;
        assert!(s.ok()["signature"]
            .as_str()
            .unwrap()
            .starts_with("ncpkms:v2:"));
        // Public keys per version differ.
        let p1 = kms.op(tag, "get-pub-key", json!({"keyVersion": 1})).await;
        let p2 = kms.op(tag, "get-pub-key", json!({})).await;
        let p2b = kms.op(tag, "get-pub-key", json!({"keyVersion": 2})).await;
        assert_ne!(p1.ok()["publicKey"], p2.ok()["publicKey"]);
        assert_eq!(p2.ok()["publicKey"], p2b.ok()["publicKey"]);

        // A disabled version cannot verify nor give its public key.
        kms.op(tag, "versions/1/disable", json!(null)).await.ok();
        kms.op(tag, "verify", json!({"data": data, "signature": sig}))
            .await
            .assert_naver_error(403, "230");
        kms.op(tag, "get-pub-key", json!({"keyVersion": 1}))
            .await
            .assert_naver_error(403, "230");
        kms.op(tag, "versions/1/enable", json!(null)).await.ok();
        let r = kms
            .op(tag, "verify", json!({"data": data, "signature": sig}))
            .await;
        assert_eq!(r.ok()["valid"], true);
    }
    kms.op(&rsa, "versions/1/disable", json!(null)).await.ok();
    kms.decrypt(&rsa, &ct1, None)
        .await
        .assert_naver_error(403, "230");
}

// ---------------------------------------------------------------- crypto

#[tokio::test]
async fn encrypt_decrypt_forms_and_limits() {
    let kms = Kms::start().await;
    let tag = kms.create_key("crypt", "AES256", json!({})).await;

    // String form.
    let r = kms
        .op(&tag, "encrypt", json!({"plaintext": b64(b"hello")}))
        .await;
    assert_fields(r.ok(), &["ciphertext"]);
    let ct = r.ok()["ciphertext"].as_str().unwrap().to_string();
    assert!(ct.starts_with("ncpkms:v1:"));
    // iv (12) || ciphertext (5) || tag (16)
    assert_eq!(unb64(ct.rsplit_once(':').unwrap().1).len(), 12 + 5 + 16);
    let r = kms.decrypt(&tag, &ct, None).await;
    assert_fields(r.ok(), &["plaintext"]);
    assert_eq!(r.ok()["plaintext"], b64(b"hello"));
    // A random IV: the same plaintext twice gives two ciphertexts.
    let again = kms.encrypt(&tag, b"hello", None).await;
    assert_ne!(again, ct);

    // Array form: the answer keeps the shape and the order.
    let items = [b"a".to_vec(), b"bb".to_vec(), vec![0u8; 100]];
    let r = kms
        .op(
            &tag,
            "encrypt",
            json!({"plaintext": items.iter().map(|p| b64(p)).collect::<Vec<_>>()}),
        )
        .await;
    let cts = r.ok()["ciphertext"].as_array().unwrap().clone();
    assert_eq!(cts.len(), 3);
    let r = kms.op(&tag, "decrypt", json!({"ciphertext": cts})).await;
    let pts: Vec<Vec<u8>> = r.ok()["plaintext"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| unb64(p.as_str().unwrap()))
        .collect();
    assert_eq!(pts, items.to_vec());

    // A context on a key that is not convergent is ignored (issue 13 §1;
    // tests/naver_sign_context.rs has the rule and its history).
    let ctx_ct = kms.encrypt(&tag, b"aad", Some(b"tenant-1")).await;
    for ctx in [Some(&b"tenant-1"[..]), Some(b"tenant-2"), None] {
        assert_eq!(kms.decrypt_ok(&tag, &ctx_ct, ctx).await, b"aad");
    }

    // 32 KB is the limit, for one plaintext and for the array's total.
    let max = vec![7u8; 32 * 1024];
    let big = kms.encrypt(&tag, &max, None).await;
    assert_eq!(kms.decrypt_ok(&tag, &big, None).await, max);
    let r = kms
        .op(
            &tag,
            "encrypt",
            json!({"plaintext": b64(&vec![7u8; 32 * 1024 + 1])}),
        )
        .await;
    r.assert_naver_error(400, "100");
    assert!(r.body["error"]["details"]
        .as_str()
        .unwrap()
        .contains("32 KB"));
    let half = b64(&vec![1u8; 16 * 1024]);
    let r = kms
        .op(&tag, "encrypt", json!({"plaintext": [half, half]}))
        .await;
    assert_eq!(r.ok()["ciphertext"].as_array().unwrap().len(), 2);
    let r = kms
        .op(
            &tag,
            "encrypt",
            json!({"plaintext": [half, half, b64(b"x")]}),
        )
        .await;
    r.assert_naver_error(400, "100");
    assert!(r.body["error"]["details"]
        .as_str()
        .unwrap()
        .contains("32 KB"));

    // Malformed bodies and fields.
    let bad: Vec<Value> = vec![
        json!({}),
        json!({"plaintext": []}),
        json!({"plaintext": "not base64!!"}),
        json!({"plaintext": ["aGk=", "%%%"]}),
        json!({"plaintext": 42}),
        json!({"plaintext": b64(b"x"), "context": 42}),
        json!({"plaintext": b64(b"x"), "context": {"a": 1}}),
        json!({"plaintext": b64(b"x"), "unknown": 1}),
    ];
    for body in bad {
        let r = kms.op(&tag, "encrypt", body.clone()).await;
        r.assert_naver_error(400, "100");
        assert_eq!(r.body["error"]["message"], "Bad Request", "{body}");
    }
    let ok50 = kms.encrypt(&tag, b"x", Some(&[9u8; 50])).await;
    assert_eq!(kms.decrypt_ok(&tag, &ok50, Some(&[9u8; 50])).await, b"x");
    for path in [
        "encrypt",
        "decrypt",
        "re-encrypt",
        "reencrypt",
        "create-custom-key",
    ] {
        let r = kms
            .call_raw_body(
                "POST",
                &format!("{}/{path}", keys(&tag)),
                b"{\"plaintext\":",
            )
            .await;
        r.assert_naver_error(400, "100");
        assert!(r.body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("malformed JSON"));
    }

    // Ciphertexts that do not parse or were tampered with.
    let body = ct.rsplit_once(':').unwrap().1.to_string();
    for bad in [
        body.clone(),
        format!("ncpkms:{body}"),
        format!("ncpkms:v1:{body}!!"),
        format!("ncpkms:vX:{body}"),
        "ncpkms:v1:".to_string(),
        tamper(&ct),
        format!("ncpkms:v1:{}", b64(&unb64(&body)[..20])),
    ] {
        let r = kms.decrypt(&tag, &bad, None).await;
        r.assert_naver_error(400, "100");
        let r = kms.op(&tag, "re-encrypt", json!({"ciphertext": bad})).await;
        r.assert_naver_error(400, "100");
    }
    for bad in [
        json!({}),
        json!({"ciphertext": []}),
        json!({"ciphertext": 1}),
    ] {
        kms.op(&tag, "decrypt", bad)
            .await
            .assert_naver_error(400, "100");
    }
    // A ciphertext of another key of the same account does not decrypt.
    let other = kms.create_key("crypt-2", "AES256", json!({})).await;
    kms.decrypt(&other, &ct, None)
        .await
        .assert_naver_error(400, "100");

    // Wrong key type for the operation.
    let ec = kms.create_key("crypt-ec", "ECDSA", json!({})).await;
    for (action, body) in [
        ("encrypt", json!({"plaintext": b64(b"x")})),
        ("decrypt", json!({"ciphertext": ct})),
        ("re-encrypt", json!({"ciphertext": ct})),
        ("create-custom-key", json!({})),
    ] {
        let r = kms.op(&ec, action, body).await;
        r.assert_naver_error(400, "100");
        assert!(
            r.body["error"]["details"]
                .as_str()
                .unwrap()
                .contains("ECDSA"),
            "{}",
            r.body
        );
    }
    // Unknown key tag.
    for (action, body) in [
        ("encrypt", json!({"plaintext": b64(b"x")})),
        ("decrypt", json!({"ciphertext": ct})),
        ("re-encrypt", json!({"ciphertext": ct})),
        ("reencrypt", json!({"ciphertext": ct})),
    ] {
        kms.op(&"e".repeat(64), action, body)
            .await
            .assert_naver_error(404, "300");
    }
}

#[tokio::test]
async fn rsa_encrypt_decrypt_and_limits() {
    let kms = Kms::start().await;
    let tag = kms.create_key("crypt-rsa", "RSA2048", json!({})).await;
    let ct = kms.encrypt(&tag, b"rsa secret", None).await;
    assert!(ct.starts_with("ncpkms:v1:"));
    assert_eq!(unb64(ct.rsplit_once(':').unwrap().1).len(), 256);
    assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, b"rsa secret");
    // The ciphertexts are standard RSA-OAEP with SHA-256: one made outside
    // the service with the public key from Get Public Key decrypts inside.
    {
        use rsa::pkcs8::DecodePublicKey as _;
        let r = kms.op(&tag, "get-pub-key", json!({})).await;
        let pem = r.ok()["publicKey"].as_str().unwrap().to_string();
        let pk = rsa::RsaPublicKey::from_public_key_pem(&pem).unwrap();
        let outside = pk
            .encrypt(
                &mut rand::rngs::OsRng,
                rsa::Oaep::new::<sha2::Sha256>(),
                b"from outside",
            )
            .unwrap();
        let sealed = format!("ncpkms:v1:{}", b64(&outside));
        assert_eq!(kms.decrypt_ok(&tag, &sealed, None).await, b"from outside");
        // OAEP with another hash is another scheme and must not decrypt.
        let other = pk
            .encrypt(
                &mut rand::rngs::OsRng,
                rsa::Oaep::new::<sha2::Sha384>(),
                b"x",
            )
            .unwrap();
        kms.decrypt(&tag, &format!("ncpkms:v1:{}", b64(&other)), None)
            .await
            .assert_naver_error(400, "100");
    }
    // OAEP is randomised.
    assert_ne!(kms.encrypt(&tag, b"rsa secret", None).await, ct);
    let max = vec![3u8; 190];
    let c = kms.encrypt(&tag, &max, None).await;
    assert_eq!(kms.decrypt_ok(&tag, &c, None).await, max);
    let r = kms
        .op(&tag, "encrypt", json!({"plaintext": b64(&[3u8; 191])}))
        .await;
    r.assert_naver_error(400, "100");
    assert!(r.body["error"]["details"].as_str().unwrap().contains("190"));
    // Array form.
    let r = kms
        .op(
            &tag,
            "encrypt",
            json!({"plaintext": [b64(b"a"), b64(b"b")]}),
        )
        .await;
    let cts = r.ok()["ciphertext"].clone();
    let r = kms.op(&tag, "decrypt", json!({"ciphertext": cts})).await;
    assert_eq!(r.ok()["plaintext"], json!([b64(b"a"), b64(b"b")]));
    // Tampered or truncated.
    kms.decrypt(&tag, &tamper(&ct), None)
        .await
        .assert_naver_error(400, "100");
    let short = format!(
        "ncpkms:v1:{}",
        b64(&unb64(ct.rsplit_once(':').unwrap().1)[..100])
    );
    kms.decrypt(&tag, &short, None)
        .await
        .assert_naver_error(400, "100");
    // A string context is ignored on RSA keys; any other value is 400.
    let r = kms
        .op(
            &tag,
            "encrypt",
            json!({"plaintext": b64(b"x"), "context": b64(b"ctx")}),
        )
        .await;
    let ct = r.ok()["ciphertext"].as_str().unwrap().to_string();
    assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, b"x");
    kms.op(
        &tag,
        "encrypt",
        json!({"plaintext": b64(b"x"), "context": 7}),
    )
    .await
    .assert_naver_error(400, "100");
}

#[tokio::test]
async fn convergent_encryption() {
    let kms = Kms::start().await;
    let tag = kms
        .create_key("conv", "AES256", json!({"isConvergent": true}))
        .await;
    let ctx = b"customer-42";
    let a = kms.encrypt(&tag, b"jumin 900101-1234567", Some(ctx)).await;
    let b = kms.encrypt(&tag, b"jumin 900101-1234567", Some(ctx)).await;
    assert_eq!(a, b, "same plaintext and context give the same ciphertext");
    let c = kms
        .encrypt(&tag, b"jumin 900101-1234567", Some(b"customer-43"))
        .await;
    assert_ne!(a, c, "another context gives another ciphertext");
    let d = kms.encrypt(&tag, b"jumin 900101-1234568", Some(ctx)).await;
    assert_ne!(a, d);
    assert_ne!(
        a.rsplit_once(':').unwrap().1[..16],
        d.rsplit_once(':').unwrap().1[..16],
        "different plaintexts get different IVs"
    );
    // Array form is deterministic too.
    let r = kms
        .op(
            &tag,
            "encrypt",
            json!({"plaintext": [b64(b"jumin 900101-1234567"), b64(b"x")], "context": b64(ctx)}),
        )
        .await;
    assert_eq!(r.ok()["ciphertext"][0], a);

    assert_eq!(
        kms.decrypt_ok(&tag, &a, Some(ctx)).await,
        b"jumin 900101-1234567"
    );
    // The wrong context fails; no context is refused.
    let r = kms.decrypt(&tag, &a, Some(b"customer-43")).await;
    r.assert_naver_error(400, "100");
    let r = kms.decrypt(&tag, &a, None).await;
    r.assert_naver_error(400, "100");
    assert!(r.body["error"]["details"]
        .as_str()
        .unwrap()
        .contains("context"));
    let r = kms
        .op(&tag, "encrypt", json!({"plaintext": b64(b"x")}))
        .await;
    r.assert_naver_error(400, "100");
    assert!(r.body["error"]["details"]
        .as_str()
        .unwrap()
        .contains("context is required"));
    kms.op(&tag, "re-encrypt", json!({"ciphertext": a}))
        .await
        .assert_naver_error(400, "100");
    kms.op(&tag, "create-custom-key", json!({}))
        .await
        .assert_naver_error(400, "100");
    // Context over 50 bytes.
    let r = kms
        .op(
            &tag,
            "encrypt",
            json!({"plaintext": b64(b"x"), "context": b64(&[1u8; 51])}),
        )
        .await;
    r.assert_naver_error(400, "100");
    assert!(r.body["error"]["details"].as_str().unwrap().contains("50"));
    let r = kms
        .op(
            &tag,
            "decrypt",
            json!({"ciphertext": a, "context": b64(&[1u8; 51])}),
        )
        .await;
    r.assert_naver_error(400, "100");
    // 50 bytes is fine.
    let e50 = kms.encrypt(&tag, b"x", Some(&[1u8; 50])).await;
    assert_eq!(e50, kms.encrypt(&tag, b"x", Some(&[1u8; 50])).await);

    // Rotation: the new version gives a new (still deterministic) ciphertext,
    // the old one still decrypts, re-encrypt moves to the new version.
    kms.op(&tag, "rotate", json!(null)).await.ok();
    let a2 = kms.encrypt(&tag, b"jumin 900101-1234567", Some(ctx)).await;
    assert!(a2.starts_with("ncpkms:v2:"));
    assert_ne!(a2, a);
    assert_eq!(
        a2,
        kms.encrypt(&tag, b"jumin 900101-1234567", Some(ctx)).await
    );
    assert_eq!(
        kms.decrypt_ok(&tag, &a, Some(ctx)).await,
        b"jumin 900101-1234567"
    );
    let r = kms
        .op(
            &tag,
            "re-encrypt",
            json!({"ciphertext": a, "context": b64(ctx)}),
        )
        .await;
    assert_eq!(r.ok()["newCiphertext"], a2);

    // Custom keys on a convergent master need the context.
    let r = kms
        .op(
            &tag,
            "create-custom-key",
            json!({"requestPlainKey": true, "context": b64(ctx)}),
        )
        .await;
    let ck = r.ok().clone();
    assert_eq!(
        b64(&kms
            .decrypt_ok(&tag, ck["ciphertext"].as_str().unwrap(), Some(ctx))
            .await),
        ck["plaintext"]
    );
}

#[tokio::test]
async fn sign_verify_and_independent_verification() {
    use p256::pkcs8::DecodePublicKey as _;
    use rsa::signature::Verifier as _;

    let kms = Kms::start().await;
    let rsa_tag = kms.create_key("sign-rsa", "RSA2048", json!({})).await;
    let ec_tag = kms.create_key("sign-ec", "ECDSA", json!({})).await;
    let message = b"contract #1234: pay 100 KRW".to_vec();

    for tag in [&rsa_tag, &ec_tag] {
        let r = kms.op(tag, "sign", json!({"data": b64(&message)})).await;
        assert_fields(r.ok(), &["signature"]);
        let sig = r.ok()["signature"].as_str().unwrap().to_string();
        assert!(sig.starts_with("ncpkms:v1:"), "{sig}");
        let raw = unb64(sig.rsplit_once(':').unwrap().1);

        let r = kms
            .op(
                tag,
                "verify",
                json!({"data": b64(&message), "signature": sig}),
            )
            .await;
        assert_eq!(r.ok(), &json!({"valid": true}));
        let r = kms
            .op(
                tag,
                "verify",
                json!({"data": b64(b"other"), "signature": sig}),
            )
            .await;
        assert_eq!(r.ok(), &json!({"valid": false}));
        let r = kms
            .op(
                tag,
                "verify",
                json!({"data": b64(&message), "signature": tamper(&sig)}),
            )
            .await;
        assert_eq!(r.ok(), &json!({"valid": false}));
        let r = kms
            .op(
                tag,
                "verify",
                json!({"data": b64(&message), "signature": "ncpkms:v1:AAAA"}),
            )
            .await;
        assert_eq!(r.ok(), &json!({"valid": false}));
        // A bare signature without the ncpkms prefix is refused.
        let r = kms
            .op(
                tag,
                "verify",
                json!({"data": b64(&message), "signature": b64(&raw)}),
            )
            .await;
        r.assert_naver_error(400, "100");
        assert!(r.body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("ncpkms"));
        for body in [
            json!({"data": b64(&message)}),
            json!({"signature": sig}),
            json!({"data": "***", "signature": sig}),
            json!({"data": b64(&message), "signature": "ncpkms:v1:***"}),
            json!({"data": b64(&vec![0u8; 8 * 1024 + 1]), "signature": sig}),
        ] {
            kms.op(tag, "verify", body)
                .await
                .assert_naver_error(400, "100");
        }
        for body in [
            json!({}),
            json!({"data": "%%"}),
            json!({"data": b64(&vec![0u8; 8 * 1024 + 1])}),
        ] {
            kms.op(tag, "sign", body)
                .await
                .assert_naver_error(400, "100");
        }
        // 8 KB is accepted.
        let r = kms
            .op(tag, "sign", json!({"data": b64(&vec![5u8; 8 * 1024])}))
            .await;
        let big_sig = r.ok()["signature"].as_str().unwrap().to_string();
        let r = kms
            .op(
                tag,
                "verify",
                json!({"data": b64(&vec![5u8; 8 * 1024]), "signature": big_sig}),
            )
            .await;
        assert_eq!(r.ok()["valid"], true);

        // Get Public Key, and verification outside the service.
        let r = kms.op(tag, "get-pub-key", json!({})).await;
        assert_fields(r.ok(), &["publicKey"]);
        let pem = r.ok()["publicKey"].as_str().unwrap().to_string();
        assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
        assert!(pem.trim_end().ends_with("-----END PUBLIC KEY-----"));
        let r1 = kms.op(tag, "get-pub-key", json!({"keyVersion": 1})).await;
        assert_eq!(r1.ok()["publicKey"], pem);
        if tag == &rsa_tag {
            let pk = rsa::RsaPublicKey::from_public_key_pem(&pem).expect("RSA SPKI PEM");
            assert_eq!(rsa::traits::PublicKeyParts::size(&pk), 256);
            // RSASSA-PSS, SHA-256, MGF1-SHA-256, salt 222 (issue 13 §1);
            // not PKCS#1 v1.5 any more.
            let vk = rsa::pss::VerifyingKey::<sha2::Sha256>::new_with_salt_len(pk.clone(), 222);
            let s = rsa::pss::Signature::try_from(raw.as_slice()).unwrap();
            vk.verify(&message, &s)
                .expect("RSA signature verifies outside");
            assert!(vk.verify(b"other", &s).is_err());
            let old = rsa::pkcs1v15::VerifyingKey::<sha2::Sha256>::new(pk);
            let s = rsa::pkcs1v15::Signature::try_from(raw.as_slice()).unwrap();
            assert!(old.verify(&message, &s).is_err());
        } else {
            let vk = p256::ecdsa::VerifyingKey::from_public_key_pem(&pem).expect("EC SPKI PEM");
            let s = p256::ecdsa::Signature::from_der(&raw).expect("DER signature");
            vk.verify(&message, &s)
                .expect("ECDSA signature verifies outside");
            assert!(vk.verify(b"other", &s).is_err());
        }
        for body in [
            json!({"keyVersion": 0}),
            json!({"keyVersion": 101}),
            json!({"keyVersion": "1"}),
        ] {
            kms.op(tag, "get-pub-key", body)
                .await
                .assert_naver_error(400, "100");
        }
        kms.op(tag, "get-pub-key", json!({"keyVersion": 2}))
            .await
            .assert_naver_error(400, "100");
        // A signature naming a version the key does not have.
        let r = kms
            .op(
                tag,
                "verify",
                json!({"data": b64(&message), "signature": format!("ncpkms:v5:{}", b64(&raw))}),
            )
            .await;
        r.assert_naver_error(400, "100");
    }

    // Sign and verify with an AES key: wrong key type.
    let aes = kms.create_key("sign-aes", "AES256", json!({})).await;
    for (action, body) in [
        ("sign", json!({"data": b64(&message)})),
        (
            "verify",
            json!({"data": b64(&message), "signature": "ncpkms:v1:AAAA"}),
        ),
        ("get-pub-key", json!({})),
    ] {
        let r = kms.op(&aes, action, body).await;
        r.assert_naver_error(400, "100");
        assert!(r.body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("AES256"));
    }
    for (action, body) in [
        ("sign", json!({"data": b64(&message)})),
        (
            "verify",
            json!({"data": b64(&message), "signature": "ncpkms:v1:AAAA"}),
        ),
        ("get-pub-key", json!({})),
    ] {
        kms.op(&"b".repeat(64), action, body)
            .await
            .assert_naver_error(404, "300");
    }
}

#[tokio::test]
async fn create_custom_key() {
    let kms = Kms::start().await;
    let aes = kms.create_key("master-aes", "AES256", json!({})).await;
    let rsa = kms.create_key("master-rsa", "RSA2048", json!({})).await;
    for tag in [&aes, &rsa] {
        for bits in [128usize, 256, 512] {
            let r = kms
                .op(
                    tag,
                    "create-custom-key",
                    json!({"requestPlainKey": true, "bits": bits}),
                )
                .await;
            let d = r.ok().clone();
            assert_fields(&d, &["plaintext", "ciphertext", "key_version"]);
            assert_eq!(d["key_version"], 1);
            let plain = unb64(d["plaintext"].as_str().unwrap());
            assert_eq!(plain.len(), bits / 8);
            assert!(plain.iter().any(|b| *b != 0));
            let ct = d["ciphertext"].as_str().unwrap();
            assert!(ct.starts_with("ncpkms:v1:"));
            assert_eq!(kms.decrypt_ok(tag, ct, None).await, plain);
        }
        // Default: 256 bits, no plaintext in the answer.
        let r = kms.op(tag, "create-custom-key", json!({})).await;
        let d = r.ok().clone();
        assert_fields(&d, &["ciphertext", "key_version"]);
        let ct = d["ciphertext"].as_str().unwrap();
        assert_eq!(kms.decrypt_ok(tag, ct, None).await.len(), 32);
        let r = kms
            .op(
                tag,
                "create-custom-key",
                json!({"requestPlainKey": false, "bits": 512}),
            )
            .await;
        assert!(r.ok().get("plaintext").is_none());
        // Two calls give two keys.
        let k1 = kms
            .op(tag, "create-custom-key", json!({"requestPlainKey": true}))
            .await;
        let k2 = kms
            .op(tag, "create-custom-key", json!({"requestPlainKey": true}))
            .await;
        assert_ne!(k1.ok()["plaintext"], k2.ok()["plaintext"]);
        for body in [
            json!({"bits": 64}),
            json!({"bits": 1024}),
            json!({"bits": "256"}),
            json!({"requestPlainKey": "yes"}),
        ] {
            kms.op(tag, "create-custom-key", body)
                .await
                .assert_naver_error(400, "100");
        }
    }
    // After rotation, custom keys come from the newest version.
    kms.op(&aes, "rotate", json!(null)).await.ok();
    let r = kms
        .op(&aes, "create-custom-key", json!({"requestPlainKey": true}))
        .await;
    assert_eq!(r.ok()["key_version"], 2);
    assert!(r.ok()["ciphertext"]
        .as_str()
        .unwrap()
        .starts_with("ncpkms:v2:"));
    kms.op(&"c".repeat(64), "create-custom-key", json!({}))
        .await
        .assert_naver_error(404, "300");
}

// ---------------------------------------------------------------- isolation

#[tokio::test]
async fn another_accounts_key_is_not_found_and_never_described() {
    let kms = Kms::start().await;
    let tag = kms
        .create_key(
            "secret-name",
            "AES256",
            json!({"memo": "private memo text"}),
        )
        .await;
    let rsa = kms.create_key("secret-rsa", "RSA2048", json!({})).await;
    let ct = kms.encrypt(&tag, b"mine", None).await;
    let sig = kms.op(&rsa, "sign", json!({"data": b64(b"d")})).await;
    let sig = sig.ok()["signature"].as_str().unwrap().to_string();
    let key_id = kms.call("GET", &keys(&tag), None).await.ok()["keyId"].clone();

    let (ak, sk) = kms.second_account("intruder").await;
    let k = |t: &str| keys(t);
    let attempts: Vec<(&str, String, Option<Value>)> = vec![
        ("GET", k(&tag), None),
        ("GET", format!("{}/versions", k(&tag)), None),
        ("POST", format!("{}/enable", k(&tag)), None),
        ("POST", format!("{}/disable", k(&tag)), None),
        ("POST", format!("{}/rotate", k(&tag)), None),
        ("POST", format!("{}/versions/1/disable", k(&tag)), None),
        ("POST", format!("{}/versions/1/enable", k(&tag)), None),
        (
            "PUT",
            format!("{}/memo", k(&tag)),
            Some(json!({"memo": "pwned"})),
        ),
        (
            "PUT",
            format!("{}/rotation-period", k(&tag)),
            Some(json!({"rotationPeriod": 5})),
        ),
        ("POST", format!("{}/enable-auto-rotation", k(&tag)), None),
        ("POST", format!("{}/disable-auto-rotation", k(&tag)), None),
        ("POST", format!("{}/request-deletion", k(&tag)), None),
        ("POST", format!("{}/cancel-deletion", k(&tag)), None),
        ("DELETE", k(&tag), None),
        (
            "POST",
            format!("{}/encrypt", k(&tag)),
            Some(json!({"plaintext": b64(b"x")})),
        ),
        (
            "POST",
            format!("{}/decrypt", k(&tag)),
            Some(json!({"ciphertext": ct})),
        ),
        (
            "POST",
            format!("{}/re-encrypt", k(&tag)),
            Some(json!({"ciphertext": ct})),
        ),
        (
            "POST",
            format!("{}/reencrypt", k(&tag)),
            Some(json!({"ciphertext": ct})),
        ),
        (
            "POST",
            format!("{}/create-custom-key", k(&tag)),
            Some(json!({"requestPlainKey": true})),
        ),
        (
            "POST",
            format!("{}/sign", k(&rsa)),
            Some(json!({"data": b64(b"d")})),
        ),
        (
            "POST",
            format!("{}/verify", k(&rsa)),
            Some(json!({"data": b64(b"d"), "signature": sig})),
        ),
        ("POST", format!("{}/get-pub-key", k(&rsa)), Some(json!({}))),
    ];
    for (m, p, body) in &attempts {
        let r = kms.call_as(&ak, &sk, m, p, body.clone()).await;
        r.assert_naver_error(404, "300");
        let text = r.body.to_string();
        for leak in [
            "secret-name",
            "secret-rsa",
            "private memo",
            "mine",
            "ENABLE",
            "AES256",
            "RSA2048",
            "PUBLIC KEY",
        ] {
            assert!(!text.contains(leak), "{m} {p} leaks {leak}: {text}");
        }
        assert!(!text.contains(&format!("\"keyId\":{key_id}")));
        assert!(r.body.get("data").is_none(), "{text}");
    }

    // The owner's key is untouched.
    let info = kms.call("GET", &keys(&tag), None).await;
    let d = info.ok();
    assert_eq!(d["status"], "ENABLE");
    assert_eq!(d["memo"], "private memo text");
    assert_eq!(d["currentVersion"], 1);
    assert_eq!(d["isAutoRotation"], false);
    assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, b"mine");
    // The intruder's own key cannot decrypt the owner's ciphertext either.
    let own = kms
        .call_as(
            &ak,
            &sk,
            "POST",
            "/kms/v1/keys",
            Some(json!({"keyName": "intruder-key", "keyType": "AES256", "isAutoRotation": false})),
        )
        .await;
    let own = own.ok()["keyTag"].as_str().unwrap().to_string();
    let r = kms
        .call_as(
            &ak,
            &sk,
            "POST",
            &format!("{}/decrypt", k(&own)),
            Some(json!({"ciphertext": ct})),
        )
        .await;
    r.assert_naver_error(400, "100");
    // And the owner does not see the intruder's key.
    let r = kms.call("GET", &keys(&own), None).await;
    r.assert_naver_error(404, "300");
}

// ---------------------------------------------------------------- auth

fn assert_auth_error(r: &Reply, hint: &str) {
    r.assert_naver_error(401, "200");
    assert_eq!(r.body["error"]["message"], "Authentication Failed");
    let details = r.body["error"]["details"].as_str().unwrap();
    assert!(
        details.contains(hint),
        "details {details:?} should mention {hint:?}"
    );
}

#[tokio::test]
async fn signature_failures_answer_401() {
    let kms = Kms::start().await;
    let tag = kms.create_key("authed", "AES256", json!({})).await;
    let path = format!("{}/encrypt", keys(&tag));
    let body = json!({"plaintext": b64(b"x")}).to_string().into_bytes();
    let (ak, sk) = (kms.access_key.clone(), kms.secret_key.clone());
    let now = now_ms();
    let good = Kms::signed_headers(&ak, &sk, "POST", &path, &now.to_string());
    let r = kms.raw("POST", &path, &good, Some(body.clone())).await;
    r.ok();

    // Each header missing.
    for (i, name) in [
        "x-ncp-apigw-timestamp",
        "x-ncp-iam-access-key",
        "x-ncp-apigw-signature-v2",
    ]
    .into_iter()
    .enumerate()
    {
        let mut h = good.clone();
        h.remove(i);
        let r = kms.raw("POST", &path, &h, Some(body.clone())).await;
        assert_auth_error(&r, name);
    }
    let r = kms.raw("POST", &path, &[], Some(body.clone())).await;
    assert_auth_error(&r, "missing");
    let r = kms.raw("GET", "/kms/v1/keys", &[], None).await;
    assert_auth_error(&r, "missing");

    // A bad signature header: garbage, another secret, another path, another method.
    let expected = good[2].1.clone();
    let variants = vec![
        "bm90IGEgc2lnbmF0dXJl".to_string(),
        Kms::signed_headers(&ak, "wrong-secret", "POST", &path, &now.to_string())[2]
            .1
            .clone(),
        Kms::signed_headers(&ak, &sk, "POST", "/kms/v1/keys", &now.to_string())[2]
            .1
            .clone(),
        Kms::signed_headers(&ak, &sk, "GET", &path, &now.to_string())[2]
            .1
            .clone(),
    ];
    for sig in variants {
        let mut h = good.clone();
        h[2].1 = sig;
        let r = kms.raw("POST", &path, &h, Some(body.clone())).await;
        assert_auth_error(&r, "signature");
        assert!(
            !r.body.to_string().contains(&expected),
            "the expected signature must not leak"
        );
    }
    // The signature covers the query string.
    let list = "/kms/v1/keys?pageNo=1&pageSize=10";
    let mut h = Kms::signed_headers(&ak, &sk, "GET", "/kms/v1/keys", &now.to_string());
    let r = kms.raw("GET", list, &h, None).await;
    assert_auth_error(&r, "signature");
    h = Kms::signed_headers(&ak, &sk, "GET", list, &now.to_string());
    kms.raw("GET", list, &h, None).await.ok();

    // Timestamps: 6 minutes old, 6 minutes ahead, not a number.
    for ts in [now - 6 * 60 * 1000, now + 6 * 60 * 1000] {
        let h = Kms::signed_headers(&ak, &sk, "POST", &path, &ts.to_string());
        let r = kms.raw("POST", &path, &h, Some(body.clone())).await;
        assert_auth_error(&r, "x-ncp-apigw-timestamp");
    }
    // 4 minutes old is within the window.
    let h = Kms::signed_headers(&ak, &sk, "POST", &path, &(now - 4 * 60 * 1000).to_string());
    kms.raw("POST", &path, &h, Some(body.clone())).await.ok();
    let h = Kms::signed_headers(&ak, &sk, "POST", &path, "yesterday");
    let r = kms.raw("POST", &path, &h, Some(body.clone())).await;
    assert_auth_error(&r, "x-ncp-apigw-timestamp");

    // Unknown access key.
    let h = Kms::signed_headers("NOSUCHKEY0000000000", &sk, "POST", &path, &now.to_string());
    let r = kms.raw("POST", &path, &h, Some(body.clone())).await;
    assert_auth_error(&r, "access key");

    // A token header alone does not authenticate account endpoints.
    let h = vec![(
        "x-ncp-ocapi-token".to_string(),
        "eyJhbGciOi.x.y".to_string(),
    )];
    let r = kms.raw("GET", "/kms/v1/keys", &h, None).await;
    r.assert_naver_error(401, "200");

    // Revoked access key: works before, 401 after (also for a second account).
    let (ak2, sk2) = kms.second_account("revokee").await;
    kms.call_as(&ak2, &sk2, "GET", "/kms/v1/keys", None)
        .await
        .ok();
    kms.engine.revoke_access_key(&ak2).await.unwrap();
    let r = kms.call_as(&ak2, &sk2, "GET", "/kms/v1/keys", None).await;
    assert_auth_error(&r, "revoked");
    // The first account is unaffected.
    kms.call("GET", "/kms/v1/keys", None).await.ok();
    // Revoking the first account's key as well.
    kms.engine.revoke_access_key(&ak).await.unwrap();
    let r = kms.call("GET", &keys(&tag), None).await;
    assert_auth_error(&r, "revoked");
}

#[tokio::test]
async fn a_key_holds_at_most_100_versions() {
    let kms = Kms::start().await;
    let tag = kms.create_key("full", "AES256", json!({})).await;
    let ct1 = kms.encrypt(&tag, b"first", None).await;
    // A rotation costs about 0.1 s on SoftHSM (object file, fsync'd store
    // writes): versions 2 to 98 are written into the store directly (rows
    // without objects, never used below); 99 and 100 are real rotations.
    let db = kms.db().await;
    for v in 2..=98 {
        sqlx::query(
            "INSERT INTO key_versions (key_id, version, state, enabled, cka_id, status_at, created_at)
             SELECT id, $1, 'active', TRUE, $2, created_at, created_at FROM keys WHERE uid = $3",
        )
        .bind(v)
        .bind(rand::random::<[u8; 16]>().to_vec())
        .bind(&tag)
        .execute(&db)
        .await
        .unwrap();
    }
    for v in 99..=100 {
        let r = kms.op(&tag, "rotate", json!(null)).await;
        assert_eq!(r.ok()["version"], v);
    }
    let r = kms.op(&tag, "rotate", json!(null)).await;
    r.assert_naver_error(400, "100");
    assert!(r.body["error"]["details"].as_str().unwrap().contains("100"));
    let info = kms.call("GET", &keys(&tag), None).await;
    assert_eq!(info.ok()["currentVersion"], 100);
    let r = kms
        .call("GET", &format!("{}/versions", keys(&tag)), None)
        .await;
    assert_eq!(r.ok()["versionList"].as_array().unwrap().len(), 100);
    assert!(kms
        .encrypt(&tag, b"x", None)
        .await
        .starts_with("ncpkms:v100:"));
    assert_eq!(kms.decrypt_ok(&tag, &ct1, None).await, b"first");
    // No version 101 row was left behind by the refused rotation.
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM key_versions v JOIN keys k ON k.id = v.key_id WHERE k.uid = $1",
    )
    .bind(&tag)
    .fetch_one(&db)
    .await
    .unwrap();
    assert_eq!(n, 100);
}
