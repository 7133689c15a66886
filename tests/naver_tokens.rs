//! NAVER API 2.0 token auth: token generators, token sets, the token crypto
//! calls, and the IP ACL that gates them.
mod common;

use common::{b64, Kms, Reply};
use serde_json::{json, Value};

async fn with_token(
    kms: &Kms,
    method: &str,
    path: &str,
    token: &str,
    body: Option<Value>,
) -> Reply {
    kms.raw(
        method,
        path,
        &[("x-ncp-ocapi-token".to_string(), token.to_string())],
        Some(body.unwrap_or(json!({})).to_string().into_bytes()),
    )
    .await
}

async fn token_set(kms: &Kms, tag: &str, body: Value) -> (String, String) {
    kms.call("POST", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await
        .ok();
    let r = kms
        .call("POST", &format!("/kms/v1/keys/{tag}/token-set"), Some(body))
        .await;
    let d = r.ok();
    (
        d["refreshToken"]
            .as_str()
            .expect("refreshToken")
            .to_string(),
        d["accessToken"].as_str().expect("accessToken").to_string(),
    )
}

async fn encrypt_with(kms: &Kms, tag: &str, token: &str) -> Reply {
    with_token(
        kms,
        "POST",
        &format!("/kms/v1/keys/{tag}/encrypt"),
        token,
        Some(json!({"plaintext": b64(b"payload")})),
    )
    .await
}

#[tokio::test]
async fn full_token_flow_with_expiry_and_renewal() {
    // One token "hour" lasts 2 seconds in this test.
    let kms = Kms::start_with(|c| c.naver.token_hour_secs = 2).await;
    let tag = kms.create_key("tok-key", "AES256", json!({})).await;

    let r = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await;
    r.assert_naver_error(404, "300");
    let (refresh, access) = token_set(
        &kms,
        &tag,
        json!({"accessTokenHours": 1, "refreshTokenHours": 100}),
    )
    .await;
    assert!(access.len() >= 43 && refresh.len() >= 43 && access != refresh);

    let g = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await;
    let g = g.ok();
    assert_eq!(g["status"], "ACTIVE");
    assert_eq!(g["issuedTokenCount"], 2);
    assert!(g["tokenGeneratorId"].is_string() && g["enabledDate"].is_i64());

    let r = encrypt_with(&kms, &tag, &access).await;
    let ct = r.ok()["ciphertext"].as_str().unwrap().to_string();
    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{tag}/decrypt"),
        &access,
        Some(json!({"ciphertext": ct})),
    )
    .await;
    assert_eq!(r.ok()["plaintext"], b64(b"payload"));

    tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
    let r = encrypt_with(&kms, &tag, &access).await;
    r.assert_naver_error(401, "200");
    assert!(r.body["error"]["details"]
        .as_str()
        .unwrap()
        .contains("expired"));

    // A new access token from the refresh token.
    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{tag}/access-token"),
        &refresh,
        Some(json!({"accessTokenHours": 10})),
    )
    .await;
    let access2 = r.ok()["accessToken"].as_str().unwrap().to_string();
    encrypt_with(&kms, &tag, &access2).await.ok();

    // Renew the set: the new tokens work, and the old refresh token still
    // does (renewing discards no set; see
    // `renewing_a_token_set_keeps_the_existing_sets`).
    let r = with_token(
        &kms,
        "PUT",
        &format!("/kms/v1/keys/{tag}/token-set"),
        &refresh,
        Some(json!({"accessTokenHours": "UL", "refreshTokenHours": 5})),
    )
    .await;
    let d = r.ok().clone();
    let refresh3 = d["refreshToken"].as_str().unwrap().to_string();
    let access3 = d["accessToken"].as_str().unwrap().to_string();
    encrypt_with(&kms, &tag, &access3).await.ok();
    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{tag}/access-token"),
        &refresh,
        None,
    )
    .await;
    let access4 = r.ok()["accessToken"].as_str().unwrap().to_string();
    encrypt_with(&kms, &tag, &access4).await.ok();
    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{tag}/access-token"),
        &refresh3,
        None,
    )
    .await;
    r.ok();
}

#[tokio::test]
async fn bad_tokens_are_refused() {
    let kms = Kms::start().await;
    let tag = kms.create_key("key-one", "AES256", json!({})).await;
    let other = kms.create_key("key-two", "AES256", json!({})).await;
    let (refresh, access) = token_set(&kms, &tag, json!({})).await;

    for bad in [
        "",
        "garbage",
        "ncpkms_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    ] {
        encrypt_with(&kms, &tag, bad)
            .await
            .assert_naver_error(401, "200");
    }
    // A token of another key.
    let r = encrypt_with(&kms, &other, &access).await;
    r.assert_naver_error(401, "200");
    // The refresh token is not an access token, and vice versa.
    encrypt_with(&kms, &tag, &refresh)
        .await
        .assert_naver_error(401, "200");
    with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{tag}/access-token"),
        &access,
        None,
    )
    .await
    .assert_naver_error(401, "200");
    // Token auth is not account auth: management endpoints refuse it.
    with_token(&kms, "GET", &format!("/kms/v1/keys/{tag}"), &access, None)
        .await
        .assert_naver_error(401, "200");
    // Lifetimes out of range.
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/token-set"),
            Some(json!({"accessTokenHours": 17521})),
        )
        .await;
    r.assert_naver_error(400, "100");
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/token-set"),
            Some(json!({"refreshTokenHours": "forever"})),
        )
        .await;
    r.assert_naver_error(400, "100");
    // Another account cannot make tokens for this key.
    let (ak, sk) = kms.second_account("intruder").await;
    let r = kms
        .call_as(
            &ak,
            &sk,
            "POST",
            &format!("/kms/v1/keys/{tag}/token-set"),
            Some(json!({})),
        )
        .await;
    r.assert_naver_error(404, "300");
}

#[tokio::test]
async fn replacing_or_deleting_the_generator_stops_its_tokens() {
    let kms = Kms::start().await;
    let tag = kms.create_key("gen-key", "AES256", json!({})).await;
    let (_, access) = token_set(&kms, &tag, json!({})).await;
    encrypt_with(&kms, &tag, &access).await.ok();
    // Creating a second generator while one is active is refused.
    kms.call("POST", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await
        .assert_naver_error(400, "100");

    kms.call("PUT", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await
        .ok();
    encrypt_with(&kms, &tag, &access)
        .await
        .assert_naver_error(401, "200");
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/token-set"),
            Some(json!({})),
        )
        .await;
    let access2 = r.ok()["accessToken"].as_str().unwrap().to_string();
    encrypt_with(&kms, &tag, &access2).await.ok();

    let r = kms
        .call(
            "DELETE",
            &format!("/kms/v1/keys/{tag}/token-generator"),
            None,
        )
        .await;
    assert!(r.ok().is_null());
    encrypt_with(&kms, &tag, &access2)
        .await
        .assert_naver_error(401, "200");
    let g = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await;
    let g = g.ok();
    assert_eq!(g["status"], "INACTIVE");
    assert!(g["disabledDate"].is_i64());
    // No token set without an active generator.
    kms.call(
        "POST",
        &format!("/kms/v1/keys/{tag}/token-set"),
        Some(json!({})),
    )
    .await
    .assert_naver_error(400, "100");
}

#[tokio::test]
async fn every_token_crypto_call_works() {
    let kms = Kms::start().await;
    let aes = kms.create_key("aes-key", "AES256", json!({})).await;
    let rsa = kms.create_key("rsa-key", "RSA2048", json!({})).await;
    let (_, at_aes) = token_set(&kms, &aes, json!({})).await;
    let (_, at_rsa) = token_set(&kms, &rsa, json!({})).await;

    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{aes}/create-custom-key"),
        &at_aes,
        Some(json!({"requestPlainKey": true, "bits": 128})),
    )
    .await;
    let d = r.ok().clone();
    assert_eq!(d["key_version"], 1);
    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{aes}/decrypt"),
        &at_aes,
        Some(json!({"ciphertext": d["ciphertext"]})),
    )
    .await;
    assert_eq!(r.ok()["plaintext"], d["plaintext"]);
    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{aes}/reencrypt"),
        &at_aes,
        Some(json!({"ciphertext": d["ciphertext"]})),
    )
    .await;
    assert!(r.ok()["newCiphertext"]
        .as_str()
        .unwrap()
        .starts_with("ncpkms:v1:"));

    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{rsa}/sign"),
        &at_rsa,
        Some(json!({"data": b64(b"doc")})),
    )
    .await;
    let sig = r.ok()["signature"].clone();
    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{rsa}/verify"),
        &at_rsa,
        Some(json!({"data": b64(b"doc"), "signature": sig})),
    )
    .await;
    assert_eq!(r.ok()["valid"], true);
    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{rsa}/get-pub-key"),
        &at_rsa,
        None,
    )
    .await;
    assert!(r.ok()["publicKey"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));
}

#[tokio::test]
async fn ip_acl_gates_token_calls_only() {
    let kms = Kms::start().await;
    let tag = kms.create_key("acl-key", "AES256", json!({})).await;
    let (_, access) = token_set(&kms, &tag, json!({})).await;
    let r = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/acl"), None)
        .await;
    assert_eq!(
        r.ok().clone(),
        json!({"keyTag": tag, "isAclEnabled": false, "allowedIpList": []})
    );

    // Enabled with no rules: deny all token requests.
    let r = kms
        .call("POST", &format!("/kms/v1/keys/{tag}/acl/enable"), None)
        .await;
    assert_eq!(r.ok()["isAclEnabled"], true);
    encrypt_with(&kms, &tag, &access)
        .await
        .assert_naver_error(403, "230");
    // Account auth is not subject to the key's ACL.
    kms.call(
        "POST",
        &format!("/kms/v1/keys/{tag}/encrypt"),
        Some(json!({"plaintext": b64(b"x")})),
    )
    .await
    .ok();

    // An address outside the list is refused; the loopback client inside it passes.
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/acl"),
            Some(json!({"ipList": ["10.1.2.3", "192.168.0.0/16"]})),
        )
        .await;
    assert_eq!(
        r.ok()["allowedIpList"],
        json!(["10.1.2.3", "192.168.0.0/16"])
    );
    encrypt_with(&kms, &tag, &access)
        .await
        .assert_naver_error(403, "230");
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/acl"),
            Some(json!({"ipList": ["127.0.0.0/8"]})),
        )
        .await;
    assert_eq!(r.ok()["allowedIpList"].as_array().unwrap().len(), 3);
    encrypt_with(&kms, &tag, &access).await.ok();

    // Bad rules.
    for bad in [
        json!({"ipList": ["300.1.1.1"]}),
        json!({"ipList": ["::1"]}),
        json!({"ipList": []}),
        json!({}),
    ] {
        kms.call("POST", &format!("/kms/v1/keys/{tag}/acl"), Some(bad))
            .await
            .assert_naver_error(400, "100");
    }

    // Delete the loopback rule: refused again.
    let r = kms
        .call(
            "DELETE",
            &format!("/kms/v1/keys/{tag}/acl"),
            Some(json!({"ipList": ["127.0.0.0/8"]})),
        )
        .await;
    assert_eq!(
        r.ok()["allowedIpList"],
        json!(["10.1.2.3", "192.168.0.0/16"])
    );
    encrypt_with(&kms, &tag, &access)
        .await
        .assert_naver_error(403, "230");

    // Disabled: allowed again.
    kms.call("POST", &format!("/kms/v1/keys/{tag}/acl/disable"), None)
        .await
        .ok();
    encrypt_with(&kms, &tag, &access).await.ok();
}

#[tokio::test]
async fn acl_uses_forwarded_address_only_from_trusted_proxies() {
    let kms = Kms::start_with(|c| c.server.trusted_proxies = vec!["127.0.0.1".into()]).await;
    let tag = kms.create_key("xff-key", "AES256", json!({})).await;
    let (_, access) = token_set(&kms, &tag, json!({})).await;
    kms.call("POST", &format!("/kms/v1/keys/{tag}/acl/enable"), None)
        .await
        .ok();
    kms.call(
        "POST",
        &format!("/kms/v1/keys/{tag}/acl"),
        Some(json!({"ipList": ["203.0.113.7"]})),
    )
    .await
    .ok();
    let path = format!("/kms/v1/keys/{tag}/encrypt");
    let body = Some(json!({"plaintext": b64(b"x")}).to_string().into_bytes());
    let hdr = |xff: &str| {
        vec![
            ("x-ncp-ocapi-token".to_string(), access.clone()),
            ("x-forwarded-for".to_string(), xff.to_string()),
        ]
    };
    kms.raw("POST", &path, &hdr("203.0.113.7"), body.clone())
        .await
        .ok();
    kms.raw("POST", &path, &hdr("198.51.100.9"), body.clone())
        .await
        .assert_naver_error(403, "230");
    // Without the header the peer (127.0.0.1) is the client, which is not listed.
    encrypt_with(&kms, &tag, &access)
        .await
        .assert_naver_error(403, "230");
}

#[tokio::test]
async fn an_expired_refresh_token_is_refused_and_tokens_are_stored_hashed() {
    // One token "hour" lasts 1 second in this test.
    let kms = Kms::start_with(|c| c.naver.token_hour_secs = 1).await;
    let tag = kms.create_key("exp-key", "AES256", json!({})).await;
    let (refresh, access) = token_set(
        &kms,
        &tag,
        json!({"accessTokenHours": "UL", "refreshTokenHours": 1}),
    )
    .await;
    // Within its lifetime the refresh token works.
    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{tag}/access-token"),
        &refresh,
        Some(json!({"accessTokenHours": "UL"})),
    )
    .await;
    let access2 = r.ok()["accessToken"].as_str().unwrap().to_string();

    // The store holds hashes and public ids, never a token.
    let db = kms.db().await;
    let rows: Vec<(Vec<u8>, String)> = sqlx::query_as("SELECT token_hash, token_id FROM tokens")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(rows.len(), 3);
    {
        use sha2::{Digest, Sha256};
        for t in [&refresh, &access, &access2] {
            let h = Sha256::digest(t.as_bytes()).to_vec();
            assert!(rows.iter().any(|(hash, _)| *hash == h), "hash of a token");
            assert!(rows.iter().all(|(_, id)| !t.contains(id.as_str())));
        }
    }
    if common::sqlite_only("the rest scans the SQLite file and its WAL") {
        return;
    }
    let raw = std::fs::read(kms.db_path()).unwrap();
    let wal = std::fs::read(kms.db_path().with_extension("db-wal")).unwrap_or_default();
    for t in [&refresh, &access, &access2] {
        let needle = t.as_bytes();
        for file in [&raw, &wal] {
            assert!(
                !file.windows(needle.len()).any(|w| w == needle),
                "a token in the clear in the store"
            );
        }
    }

    tokio::time::sleep(std::time::Duration::from_millis(1300)).await;
    for (method, path, body) in [
        ("POST", "access-token", json!({})),
        ("PUT", "token-set", json!({})),
    ] {
        let r = with_token(
            &kms,
            method,
            &format!("/kms/v1/keys/{tag}/{path}"),
            &refresh,
            Some(body),
        )
        .await;
        r.assert_naver_error(401, "200");
        assert!(
            r.body["error"]["details"]
                .as_str()
                .unwrap()
                .contains("expired"),
            "{}",
            r.body
        );
    }
    // Unlimited access tokens outlive the refresh token that made them.
    encrypt_with(&kms, &tag, &access).await.ok();
    encrypt_with(&kms, &tag, &access2).await.ok();
}

/// The tokens of a reply to Create or Renew Token Set: (refresh, access).
fn set_of(r: &Reply) -> (String, String) {
    let d = r.ok();
    (
        d["refreshToken"]
            .as_str()
            .expect("refreshToken")
            .to_string(),
        d["accessToken"].as_str().expect("accessToken").to_string(),
    )
}

/// NAVER, Renew Token Set
/// (<https://api.ncloud-docs.com/docs/en/security-kms2-token-renew>),
/// "Caution": "Recreating a token set does not automatically discard
/// existing token sets." (the Korean page: "토큰 셋을 재생성해도 기존 토큰 셋은
/// 자동으로 폐기되지 않습니다.") and "Token generators do not manage the tokens
/// they generate, so they can't be destroyed individually." So a refresh
/// token stays valid until it expires or its generator is replaced or
/// deleted, and renewals with it, concurrent ones included, each get a set.
#[tokio::test]
async fn renewing_a_token_set_keeps_the_existing_sets() {
    let kms = Kms::start().await;
    let tag = kms.create_key("renew-key", "AES256", json!({})).await;
    let (refresh, access) = token_set(&kms, &tag, json!({})).await;
    let path = format!("/kms/v1/keys/{tag}/token-set");
    let at_path = format!("/kms/v1/keys/{tag}/access-token");
    let renew = |token: String| {
        let (kms, path) = (&kms, &path);
        async move {
            with_token(
                kms,
                "PUT",
                path,
                &token,
                Some(json!({"accessTokenHours": 1})),
            )
            .await
        }
    };

    // Renewed twice with the same refresh token: two new sets.
    let (refresh1, access1) = set_of(&renew(refresh.clone()).await);
    let (refresh2, access2) = set_of(&renew(refresh.clone()).await);
    assert!(refresh1 != refresh2 && access1 != access2);
    // And three times at once: three more.
    let (a, b, c) = tokio::join!(
        renew(refresh.clone()),
        renew(refresh.clone()),
        renew(refresh.clone())
    );
    let concurrent = [set_of(&a), set_of(&b), set_of(&c)];

    // Every access token works: the first set's and each renewal's.
    let mut accesses = vec![access, access1, access2];
    accesses.extend(concurrent.iter().map(|(_, a)| a.clone()));
    for a in &accesses {
        encrypt_with(&kms, &tag, a).await.ok();
    }
    // Every refresh token still makes access tokens and renews.
    let mut refreshes = vec![refresh, refresh1, refresh2];
    refreshes.extend(concurrent.iter().map(|(r, _)| r.clone()));
    for r in &refreshes {
        let a = with_token(&kms, "POST", &at_path, r, None).await;
        let a = a.ok()["accessToken"].as_str().unwrap().to_string();
        encrypt_with(&kms, &tag, &a).await.ok();
        accesses.push(a);
    }
    let (refresh3, access3) = set_of(&renew(refreshes[0].clone()).await);
    encrypt_with(&kms, &tag, &access3).await.ok();
    refreshes.push(refresh3);
    accesses.push(access3);
    let g = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await;
    assert_eq!(
        g.ok()["issuedTokenCount"],
        2 + 6 * 2 + 6,
        "one set, six renewed sets, six access tokens"
    );

    // Replacing the generator kills all of them.
    kms.call("PUT", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await
        .ok();
    for a in &accesses {
        encrypt_with(&kms, &tag, a)
            .await
            .assert_naver_error(401, "200");
    }
    for r in &refreshes {
        with_token(&kms, "POST", &at_path, r, None)
            .await
            .assert_naver_error(401, "200");
        renew(r.clone()).await.assert_naver_error(401, "200");
    }

    // So does deleting it: a set of the new generator and its renewal.
    let (refresh, access) = set_of(&kms.call("POST", &path, Some(json!({}))).await);
    let (refresh1, access1) = set_of(&renew(refresh.clone()).await);
    encrypt_with(&kms, &tag, &access).await.ok();
    encrypt_with(&kms, &tag, &access1).await.ok();
    kms.call(
        "DELETE",
        &format!("/kms/v1/keys/{tag}/token-generator"),
        None,
    )
    .await
    .ok();
    for a in [&access, &access1] {
        encrypt_with(&kms, &tag, a)
            .await
            .assert_naver_error(401, "200");
    }
    for r in [refresh, refresh1] {
        renew(r).await.assert_naver_error(401, "200");
    }
}

#[tokio::test]
async fn tokens_of_a_deleted_key_stop_working() {
    let kms = Kms::start().await;
    let tag = kms.create_key("gone-key", "AES256", json!({})).await;
    let keep = kms.create_key("kept-key", "AES256", json!({})).await;
    let (refresh, access) = token_set(&kms, &tag, json!({})).await;
    let (_, keep_access) = token_set(&kms, &keep, json!({})).await;
    encrypt_with(&kms, &tag, &access).await.ok();

    // Pending deletion: the key is not usable, by token or otherwise.
    kms.call(
        "POST",
        &format!("/kms/v1/keys/{tag}/request-deletion"),
        None,
    )
    .await
    .ok();
    encrypt_with(&kms, &tag, &access)
        .await
        .assert_naver_error(403, "230");

    // Deleted: every token of the key is refused as not valid.
    kms.call("DELETE", &format!("/kms/v1/keys/{tag}"), None)
        .await
        .ok();
    encrypt_with(&kms, &tag, &access)
        .await
        .assert_naver_error(401, "200");
    for (method, path) in [("POST", "access-token"), ("PUT", "token-set")] {
        with_token(
            &kms,
            method,
            &format!("/kms/v1/keys/{tag}/{path}"),
            &refresh,
            None,
        )
        .await
        .assert_naver_error(401, "200");
    }
    // A new key with the same name gets nothing from the old tokens.
    let again = kms.create_key("gone-key", "AES256", json!({})).await;
    encrypt_with(&kms, &again, &access)
        .await
        .assert_naver_error(401, "200");
    // Another key's tokens are unaffected.
    encrypt_with(&kms, &keep, &keep_access).await.ok();
}

#[tokio::test]
async fn array_plaintext_over_the_total_limit_in_api_2() {
    let kms = Kms::start().await;
    let tag = kms.create_key("arr-key", "AES256", json!({})).await;
    let (_, access) = token_set(&kms, &tag, json!({})).await;
    let path = format!("/kms/v1/keys/{tag}/encrypt");
    let half = b64(&vec![1u8; 16 * 1024]);
    let over = b64(&vec![2u8; 16 * 1024 + 1]);
    // 32 KB in total is the limit, under account and token auth alike.
    let at_limit = json!({"plaintext": [half.clone(), half.clone()]});
    let over_limit = json!({"plaintext": [half.clone(), over]});
    let r = kms.call("POST", &path, Some(at_limit.clone())).await;
    let cts = r.ok()["ciphertext"].as_array().unwrap().clone();
    assert_eq!(cts.len(), 2);
    let r = with_token(&kms, "POST", &path, &access, Some(at_limit)).await;
    assert_eq!(r.ok()["ciphertext"].as_array().unwrap().len(), 2);
    let r = kms.call("POST", &path, Some(over_limit.clone())).await;
    r.assert_naver_error(400, "100");
    with_token(&kms, "POST", &path, &access, Some(over_limit))
        .await
        .assert_naver_error(400, "100");
    // Many small items over the total too.
    let many: Vec<String> = (0..33).map(|_| b64(&[3u8; 1024])).collect();
    kms.call("POST", &path, Some(json!({"plaintext": many})))
        .await
        .assert_naver_error(400, "100");
    // An empty array is refused; the decrypt side takes the array back.
    kms.call("POST", &path, Some(json!({"plaintext": []})))
        .await
        .assert_naver_error(400, "100");
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/decrypt"),
            Some(json!({"ciphertext": cts})),
        )
        .await;
    assert_eq!(r.ok()["plaintext"], json!([half.clone(), half]));
}

#[tokio::test]
async fn acl_holds_at_most_100_rules() {
    let kms = Kms::start().await;
    let tag = kms.create_key("big-acl", "AES256", json!({})).await;
    let path = format!("/kms/v1/keys/{tag}/acl");
    let hundred: Vec<String> = (1..=100).map(|i| format!("10.0.0.{i}")).collect();
    // 101 entries in one call are refused; 100 are accepted.
    let mut too_many = hundred.clone();
    too_many.push("10.0.1.0/24".into());
    kms.call("POST", &path, Some(json!({"ipList": too_many})))
        .await
        .assert_naver_error(400, "100");
    let r = kms
        .call("POST", &path, Some(json!({"ipList": hundred})))
        .await;
    assert_eq!(r.ok()["allowedIpList"].as_array().unwrap().len(), 100);
    // Full: a new rule is refused, one already there is not a new rule.
    kms.call("POST", &path, Some(json!({"ipList": ["10.0.1.0/24"]})))
        .await
        .assert_naver_error(400, "100");
    let r = kms
        .call(
            "POST",
            &path,
            Some(json!({"ipList": ["10.0.0.7", "10.0.0.7/32"]})),
        )
        .await;
    assert_eq!(r.ok()["allowedIpList"].as_array().unwrap().len(), 100);
    // With one slot free, the same new rule written twice takes one slot.
    let r = kms
        .call("DELETE", &path, Some(json!({"ipList": ["10.0.0.100"]})))
        .await;
    assert_eq!(r.ok()["allowedIpList"].as_array().unwrap().len(), 99);
    let r = kms
        .call(
            "POST",
            &path,
            Some(json!({"ipList": ["192.0.2.9", "192.0.2.9/32", " 192.0.2.9 "]})),
        )
        .await;
    let list = r.ok()["allowedIpList"].as_array().unwrap().clone();
    assert_eq!(list.len(), 100);
    assert_eq!(list.iter().filter(|r| *r == "192.0.2.9").count(), 1);
    let r = kms.call("GET", &path, None).await;
    assert_eq!(r.ok()["allowedIpList"].as_array().unwrap().len(), 100);
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_is_ignored() {
    // No trusted proxies: X-Forwarded-For never names the client.
    let kms = Kms::start().await;
    let tag = kms.create_key("spoof-key", "AES256", json!({})).await;
    let (_, access) = token_set(&kms, &tag, json!({})).await;
    kms.call("POST", &format!("/kms/v1/keys/{tag}/acl/enable"), None)
        .await
        .ok();
    kms.call(
        "POST",
        &format!("/kms/v1/keys/{tag}/acl"),
        Some(json!({"ipList": ["203.0.113.7"]})),
    )
    .await
    .ok();
    let path = format!("/kms/v1/keys/{tag}/encrypt");
    let body = Some(json!({"plaintext": b64(b"x")}).to_string().into_bytes());
    let hdr = |xff: &str, real_ip: &str| {
        vec![
            ("x-ncp-ocapi-token".to_string(), access.clone()),
            ("x-forwarded-for".to_string(), xff.to_string()),
            ("x-real-ip".to_string(), real_ip.to_string()),
        ]
    };
    // A listed address in the header does not let the loopback peer in.
    kms.raw(
        "POST",
        &path,
        &hdr("203.0.113.7", "203.0.113.7"),
        body.clone(),
    )
    .await
    .assert_naver_error(403, "230");
    kms.raw(
        "POST",
        &path,
        &hdr("198.51.100.1, 203.0.113.7", "203.0.113.7"),
        body.clone(),
    )
    .await
    .assert_naver_error(403, "230");
    // Allow the peer: an unlisted address in the header does not keep it out.
    kms.call(
        "POST",
        &format!("/kms/v1/keys/{tag}/acl"),
        Some(json!({"ipList": ["127.0.0.1"]})),
    )
    .await
    .ok();
    kms.raw("POST", &path, &hdr("198.51.100.9", "198.51.100.9"), body)
        .await
        .ok();
    // The activity log records the peer, not the claimed address.
    let r = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/last-use-info"), None)
        .await;
    let d = r.ok();
    assert_eq!(d["data"]["api"]["action"], "Encrypt");
    assert_eq!(d["data"]["api"]["type"], "TOKEN");
    assert_eq!(d["data"]["requestor"]["ip"], "127.0.0.1");
}
