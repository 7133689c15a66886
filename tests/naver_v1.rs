//! NAVER API 1.0 under /keys/v1 (signature v1 with an API key) and /keys/v2
//! (signature v2), on the same keys as API 2.0; and the per-key quota.
mod common;

use common::{b64, now_ms, Kms, Reply};
use hsm_kms::api::auth::ncp::{sign, SignatureVersion};
use serde_json::{json, Value};

fn ok1(r: &Reply) -> &Value {
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["code"], "SUCCESS", "{}", r.body);
    assert!(r.body["msg"].is_string());
    &r.body["data"]
}

fn fail1(r: &Reply, code: &str) {
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["code"], code, "{}", r.body);
    assert!(r.body["msg"].as_str().is_some_and(|m| !m.is_empty()));
    assert!(r.body["data"].is_null());
}

#[tokio::test]
async fn v1_signature_with_api_key_and_cross_api_ciphertexts() {
    let kms = Kms::start().await;
    let api_key = kms.engine.create_api_key("default").await.unwrap();
    let tag = kms.create_key("shared-key", "AES256", json!({})).await;

    // Encrypt through 1.0 (v1 signature), decrypt through 2.0, and back.
    let r = common::v1_call(
        &kms,
        &api_key,
        &format!("/keys/v1/{tag}/encrypt"),
        json!({"plaintext": b64(b"one")}),
    )
    .await;
    let ct = ok1(&r)["ciphertext"].as_str().unwrap().to_string();
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/decrypt"),
            Some(json!({"ciphertext": ct})),
        )
        .await;
    assert_eq!(r.ok()["plaintext"], b64(b"one"));
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/encrypt"),
            Some(json!({"plaintext": b64(b"two")})),
        )
        .await;
    let ct2 = r.ok()["ciphertext"].as_str().unwrap().to_string();
    let r = common::v1_call(
        &kms,
        &api_key,
        &format!("/keys/v1/{tag}/decrypt"),
        json!({"ciphertext": ct2}),
    )
    .await;
    assert_eq!(ok1(&r)["plaintext"], b64(b"two"));

    // Array forms use ciphertextList / plaintextList.
    let r = common::v1_call(
        &kms,
        &api_key,
        &format!("/keys/v1/{tag}/encrypt"),
        json!({"plaintext": [b64(b"a"), b64(b"b")]}),
    )
    .await;
    let list = ok1(&r)["ciphertextList"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    let r = common::v1_call(
        &kms,
        &api_key,
        &format!("/keys/v1/{tag}/decrypt"),
        json!({"ciphertext": list}),
    )
    .await;
    assert_eq!(ok1(&r)["plaintextList"], json!([b64(b"a"), b64(b"b")]));

    // Over the total limit: the 200-with-code form.
    let big = b64(&vec![7u8; 20 * 1024]);
    let r = common::v1_call(
        &kms,
        &api_key,
        &format!("/keys/v1/{tag}/encrypt"),
        json!({"plaintext": [big.clone(), big]}),
    )
    .await;
    fail1(&r, "INVALID_PARAMETER");
    let r = common::v1_call(
        &kms,
        &api_key,
        &format!("/keys/v1/{tag}/encrypt"),
        json!({"plaintext": "%%%"}),
    )
    .await;
    fail1(&r, "INVALID_PARAMETER");
    let r = common::v1_call(
        &kms,
        &api_key,
        &format!("/keys/v1/{tag}/decrypt"),
        json!({"ciphertext": "ncpkms:v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}),
    )
    .await;
    fail1(&r, "DECRYPTION_FAILED");
    let r = common::v1_call(
        &kms,
        &api_key,
        &format!("/keys/v1/{tag}/sign"),
        json!({"data": b64(b"x")}),
    )
    .await;
    fail1(&r, "UNSUPPORTED_KEY_TYPE");

    // Custom key (camelCase path) and re-encrypt.
    let r = common::v1_call(
        &kms,
        &api_key,
        &format!("/keys/v1/{tag}/createCustomKey"),
        json!({"requestPlainKey": true}),
    )
    .await;
    let d = ok1(&r).clone();
    assert_eq!(d["key_version"], 1);
    assert_eq!(common::unb64(d["plaintext"].as_str().unwrap()).len(), 32);
    let r = common::v1_call(
        &kms,
        &api_key,
        &format!("/keys/v1/{tag}/reencrypt"),
        json!({"ciphertext": d["ciphertext"]}),
    )
    .await;
    assert!(ok1(&r)["newCiphertext"]
        .as_str()
        .unwrap()
        .starts_with("ncpkms:v1:"));

    // A wrong or revoked API key is an authentication failure (gateway envelope).
    let r = common::v1_call(
        &kms,
        "not-an-api-key",
        &format!("/keys/v1/{tag}/encrypt"),
        json!({"plaintext": b64(b"x")}),
    )
    .await;
    r.assert_naver_error(401, "200");
    // A valid API key signed as another one fails the signature.
    let other_key = kms.engine.create_api_key("default").await.unwrap();
    let ts = now_ms().to_string();
    let path = format!("/keys/v1/{tag}/encrypt");
    let sig = sign(
        SignatureVersion::V1,
        kms.secret_key.as_bytes(),
        "POST",
        &path,
        &ts,
        &kms.access_key,
        Some(&api_key),
    );
    let h = vec![
        ("x-ncp-apigw-timestamp".to_string(), ts),
        ("x-ncp-apigw-api-key".to_string(), other_key),
        ("x-ncp-iam-access-key".to_string(), kms.access_key.clone()),
        ("x-ncp-apigw-signature-v1".to_string(), sig),
    ];
    kms.raw(
        "POST",
        &path,
        &h,
        Some(json!({"plaintext": b64(b"x")}).to_string().into_bytes()),
    )
    .await
    .assert_naver_error(401, "200");
    kms.engine.revoke_api_key(&api_key).await.unwrap();
    let r = common::v1_call(
        &kms,
        &api_key,
        &format!("/keys/v1/{tag}/encrypt"),
        json!({"plaintext": b64(b"x")}),
    )
    .await;
    r.assert_naver_error(401, "200");
    // An unknown key tag is a 404 in the gateway envelope.
    let k2 = kms.engine.create_api_key("default").await.unwrap();
    let r = common::v1_call(
        &kms,
        &k2,
        "/keys/v1/nosuchkey/encrypt",
        json!({"plaintext": b64(b"x")}),
    )
    .await;
    r.assert_naver_error(404, "300");
}

#[tokio::test]
async fn v2_path_of_api_1_signs_and_verifies() {
    let kms = Kms::start().await;
    let tag = kms.create_key("ec-key", "ECDSA", json!({})).await;
    let path = format!("/keys/v2/{tag}/sign");
    let r = kms
        .call("POST", &path, Some(json!({"data": b64(b"doc")})))
        .await;
    let sig = ok1(&r)["signature"].as_str().unwrap().to_string();
    let r = kms
        .call(
            "POST",
            &format!("/keys/v2/{tag}/verify"),
            Some(json!({"data": b64(b"doc"), "signature": sig})),
        )
        .await;
    assert_eq!(ok1(&r)["valid"], true);
    // The 2.0 Verify accepts a 1.0 signature.
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/verify"),
            Some(json!({"data": b64(b"doc"), "signature": sig})),
        )
        .await;
    assert_eq!(r.ok()["valid"], true);
    // /keys/v2 with signature v1 headers only is refused.
    let r = kms
        .raw(
            "POST",
            &path,
            &[("x-ncp-apigw-signature-v1".to_string(), "x".to_string())],
            Some(b"{}".to_vec()),
        )
        .await;
    r.assert_naver_error(401, "200");
}

#[tokio::test]
async fn per_key_quota_answers_429_with_retry_after() {
    let kms = Kms::start_with(|c| {
        c.rate_limit.profile = "custom".into();
        // One request per second past the burst: the sixth request is over
        // the quota unless the first five took a whole second, which a
        // loaded machine reached with 5 per second (a cell every 200 ms).
        c.rate_limit.requests_per_second = 1;
        c.rate_limit.burst = 5;
    })
    .await;
    let a = kms.create_key("quota-a", "AES256", json!({})).await;
    let b = kms.create_key("quota-b", "AES256", json!({})).await;
    let body = json!({"plaintext": b64(b"x")});
    let mut limited = None;
    for _ in 0..8 {
        let r = kms
            .call(
                "POST",
                &format!("/kms/v1/keys/{a}/encrypt"),
                Some(body.clone()),
            )
            .await;
        if r.status == 429 {
            limited = Some(r);
            break;
        }
        r.ok();
    }
    let r = limited.expect("the sixth request within a second is over the quota");
    r.assert_naver_error(429, "400");
    assert_eq!(r.body["error"]["message"], "Rate Limited");
    let retry: u64 = r.headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry));
    // Another key has its own quota, and management calls are not limited.
    kms.call(
        "POST",
        &format!("/kms/v1/keys/{b}/encrypt"),
        Some(body.clone()),
    )
    .await
    .ok();
    kms.call("GET", &format!("/kms/v1/keys/{a}"), None)
        .await
        .ok();
    // After the wait, the key works again.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    kms.call("POST", &format!("/kms/v1/keys/{a}/encrypt"), Some(body))
        .await
        .ok();
}

#[tokio::test]
async fn api_1_refuses_token_auth() {
    let kms = Kms::start().await;
    let tag = kms.create_key("tok-v1", "RSA2048", json!({})).await;
    kms.call("POST", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await
        .ok();
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/token-set"),
            Some(json!({})),
        )
        .await;
    let access = r.ok()["accessToken"].as_str().unwrap().to_string();
    let token = [("x-ncp-ocapi-token".to_string(), access.clone())];
    let body = json!({"plaintext": b64(b"x")}).to_string().into_bytes();
    // The token works on API 2.0 ...
    kms.raw(
        "POST",
        &format!("/kms/v1/keys/{tag}/encrypt"),
        &token,
        Some(body.clone()),
    )
    .await
    .ok();
    // ... and on no API 1.0 path: those take gateway signatures only.
    for v in ["v1", "v2"] {
        for action in ["encrypt", "sign", "createCustomKey"] {
            let r = kms
                .raw(
                    "POST",
                    &format!("/keys/{v}/{tag}/{action}"),
                    &token,
                    Some(body.clone()),
                )
                .await;
            r.assert_naver_error(401, "200");
        }
    }
    // Nothing was recorded for the refused calls.
    let r = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/last-use-info"), None)
        .await;
    assert_eq!(r.ok()["data"]["api"]["type"], "TOKEN");
    assert_eq!(r.ok()["data"]["api"]["action"], "Encrypt");
    let r = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/activities"), None)
        .await;
    assert_eq!(r.ok()["totalCount"], 4, "{}", r.body);
}

#[tokio::test]
async fn unauthenticated_requests_do_not_use_a_keys_quota() {
    let kms = Kms::start_with(|c| {
        c.rate_limit.profile = "custom".into();
        c.rate_limit.requests_per_second = 1;
        c.rate_limit.burst = 3;
    })
    .await;
    let tag = kms.create_key("quota-dos", "AES256", json!({})).await;
    let body = json!({"plaintext": b64(b"x")}).to_string().into_bytes();
    // Someone who knows the key tag but holds no credential floods it.
    for path in [
        format!("/kms/v1/keys/{tag}/encrypt"),
        format!("/keys/v2/{tag}/encrypt"),
    ] {
        for _ in 0..5 {
            let r = kms.raw("POST", &path, &[], Some(body.clone())).await;
            r.assert_naver_error(401, "200");
            let bad = [("x-ncp-ocapi-token".to_string(), "ncpkms_forged".to_string())];
            let r = kms.raw("POST", &path, &bad, Some(body.clone())).await;
            r.assert_naver_error(401, "200");
        }
    }
    // The owner still has the whole burst: its first three calls pass.
    for _ in 0..3 {
        kms.call(
            "POST",
            &format!("/kms/v1/keys/{tag}/encrypt"),
            Some(json!({"plaintext": b64(b"x")})),
        )
        .await
        .ok();
    }
    // Then the quota does bite, in both envelopes. The bucket refills one
    // token a second, so on a loaded machine a call may slip through first:
    // call until refused (a bounded number of times) rather than assume the
    // fourth call is refused.
    for path in [
        format!("/kms/v1/keys/{tag}/encrypt"),
        format!("/keys/v2/{tag}/encrypt"),
    ] {
        let mut refused = None;
        for _ in 0..20 {
            let r = kms
                .call("POST", &path, Some(json!({"plaintext": b64(b"x")})))
                .await;
            if r.status == 429 {
                refused = Some(r);
                break;
            }
            r.ok();
        }
        let r = refused.unwrap_or_else(|| panic!("{path}: never refused over the quota"));
        r.assert_naver_error(429, "400");
        assert!(r.headers.contains_key("retry-after"));
    }
}
