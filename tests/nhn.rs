//! NHN Cloud Secure Key Manager v1.2 over HTTP against a real SoftHSMv2
//! token: every endpoint of the API document with its bad inputs.
//! Run with `cargo nextest run` (one service per process).
// The engine's store and HSM ports are public to tests only with the
// `test-hooks` feature (scripts/test.sh builds with --all-features).
#![cfg(feature = "test-hooks")]

mod common;
#[path = "common/nhn.rs"]
mod nhn;

use aes_gcm::aead::{Aead, KeyInit};
use common::{b64, unb64};
use hsm_kms::core::nhn::UserAccessKeyRequirement;
use hsm_kms::store::{KeyRepo, NhnRepo};
use nhn::{
    call, call_appkey_only, call_appkey_only_h, call_h, create_key, err, key_store, ok, project,
};
use serde_json::json;

fn hex_list_bytes(s: &str) -> Vec<u8> {
    s.split(", ")
        .map(|x| u8::from_str_radix(x.trim_start_matches("0x"), 16).expect("hex byte"))
        .collect()
}

#[tokio::test]
async fn confirm_and_appkey_and_user_access_key() {
    let kms = nhn::start().await;
    let p = project(&kms, "open", false).await;
    let r = call_h(
        &kms,
        &p,
        "GET",
        "/confirm",
        None,
        &[
            ("X-TOAST-CLIENT-MAC-ADDR", "aa:bb:cc:dd:ee:ff"),
            ("X-Forwarded-For", "203.0.113.9"),
        ],
    )
    .await;
    let b = ok(&r);
    assert_eq!(b["clientIp"], "203.0.113.9");
    assert_eq!(b["clientMacHeader"], "aa:bb:cc:dd:ee:ff");
    assert_eq!(b["clientSentCertificate"], false);
    let r = call(&kms, &p, "GET", "/confirm", None).await;
    assert_eq!(ok(&r)["clientIp"], "127.0.0.1");

    // Unknown appkey.
    let r = kms
        .raw(
            "GET",
            "/keymanager/v1.2/appkey/nosuchappkey/confirm",
            &[],
            None,
        )
        .await;
    err(&r, 401, -1100);

    // A project that took management calls with the appkey alone keeps
    // working that way (and the server warns at start: tests/nhn_security.rs).
    key_store(&kms, &p, "open store", false, false, false, false).await;
    let r = call_appkey_only(
        &kms,
        &p,
        "POST",
        "/keys/secrets/create",
        Some(json!({"keyStoreName": "open store", "name": "n", "secretValue": "v"})),
    )
    .await;
    ok(&r);

    // A project that requires User Access Keys on every call.
    kms.engine
        .nhn_create_project_with(
            "locked",
            UserAccessKeyRequirement {
                management: true,
                data: true,
            },
        )
        .await
        .unwrap();
    let q = nhn::Project {
        name: "locked".into(),
        appkey: kms.engine.nhn_create_appkey("locked").await.unwrap(),
        project: kms.engine.nhn_project("locked").await.unwrap(),
        uak: (String::new(), String::new()),
    };
    let uak = kms
        .engine
        .nhn_create_user_access_key("locked")
        .await
        .unwrap();
    let other = kms.engine.nhn_create_user_access_key("open").await.unwrap();
    err(
        &call_appkey_only(&kms, &q, "GET", "/confirm", None).await,
        401,
        -1102,
    );
    let ak = uak.access_key.clone();
    let sk = uak.secret.to_string();
    let r = call_h(
        &kms,
        &q,
        "GET",
        "/confirm",
        None,
        &[
            ("X-TC-AUTHENTICATION-ID", &ak),
            ("X-TC-AUTHENTICATION-SECRET", "wrong"),
        ],
    )
    .await;
    err(&r, 401, -1101);
    let r = call_h(
        &kms,
        &q,
        "GET",
        "/confirm",
        None,
        &[("X-TC-AUTHENTICATION-ID", &ak)],
    )
    .await;
    err(&r, 401, -1101);
    // Another project's key is refused.
    let r = call_h(
        &kms,
        &q,
        "GET",
        "/confirm",
        None,
        &[
            ("X-TC-AUTHENTICATION-ID", &other.access_key),
            ("X-TC-AUTHENTICATION-SECRET", other.secret.as_str()),
        ],
    )
    .await;
    err(&r, 401, -1101);
    let good = [
        ("X-TC-AUTHENTICATION-ID", ak.as_str()),
        ("X-TC-AUTHENTICATION-SECRET", sk.as_str()),
    ];
    ok(&call_h(&kms, &q, "GET", "/confirm", None, &good).await);
    // The creator recorded is the User Access Key.
    key_store(&kms, &q, "S", false, false, false, false).await;
    let r = call_h(
        &kms,
        &q,
        "POST",
        "/keys/secrets/create",
        Some(json!({"keyStoreName": "S", "name": "n", "secretValue": "v"})),
        &good,
    )
    .await;
    let id = ok(&r)["keyId"].as_str().unwrap().to_string();
    let ks = kms.engine.nhn_key_stores(&q.project).await.unwrap()[0].id;
    let r = call_h(
        &kms,
        &q,
        "GET",
        &format!("/keystores/{ks}/keys/{id}"),
        None,
        &good,
    )
    .await;
    assert_eq!(ok(&r)["creationUser"], ak.as_str());
    // Revoked keys stop working.
    kms.engine.nhn_revoke_user_access_key(&ak).await.unwrap();
    err(
        &call_h(&kms, &q, "GET", "/confirm", None, &good).await,
        401,
        -1101,
    );
}

#[tokio::test]
async fn secrets_create_query_update_delete() {
    let kms = nhn::start().await;
    let p = project(&kms, "p1", true).await;
    let other = project(&kms, "p2", true).await;
    key_store(&kms, &p, "Store #1", false, false, false, false).await;
    key_store(&kms, &other, "Store #1", false, false, false, false).await;

    let id = create_key(
        &kms,
        &p,
        "secrets",
        "Store #1",
        json!({"secretValue": "s3cr3t"}),
    )
    .await;
    let r = call(&kms, &p, "GET", &format!("/secrets/{id}"), None).await;
    assert_eq!(ok(&r)["secret"], "s3cr3t");

    // Each version is a private CKO_DATA object in the token.
    let entry = kms
        .engine
        .key_entry(&hsm_kms::core::KeyUid::from(&id))
        .await
        .unwrap();
    let v1 = entry.versions[0].cka_id.to_vec();
    let info = kms.engine.hsm().object_info(v1.clone()).await.unwrap();
    assert_eq!(info.len(), 1);
    assert_eq!(info[0].class, "data");
    assert!(info[0].private && info[0].token);

    // Update: a new version, the old object stays until the key is destroyed.
    let r = call(
        &kms,
        &p,
        "PUT",
        &format!("/secrets/{id}"),
        Some(json!({"secretValue": "next"})),
    )
    .await;
    let b = ok(&r);
    assert_eq!(b["keyId"], id.as_str());
    assert_eq!(b["secretValue"], "next");
    assert_eq!(b["name"], "secrets key");
    assert!(b["creationDatetime"].is_string() && b["lastChangeDatetime"].is_string());
    let r = call(&kms, &p, "GET", &format!("/secrets/{id}"), None).await;
    assert_eq!(ok(&r)["secret"], "next");
    let entry = kms
        .engine
        .key_entry(&hsm_kms::core::KeyUid::from(&id))
        .await
        .unwrap();
    assert_eq!(entry.versions.len(), 2);

    // Bad inputs.
    err(
        &call(&kms, &p, "PUT", &format!("/secrets/{id}"), Some(json!({}))).await,
        400,
        -1000,
    );
    err(
        &call(
            &kms,
            &p,
            "PUT",
            &format!("/secrets/{id}"),
            Some(json!({"secretValue": "x".repeat(32 * 1024 + 1)})),
        )
        .await,
        400,
        -1000,
    );
    err(
        &call(
            &kms,
            &p,
            "PUT",
            &format!("/secrets/{id}"),
            Some(json!({"secretValue": ""})),
        )
        .await,
        400,
        -1000,
    );
    err(
        &call(
            &kms,
            &p,
            "GET",
            "/secrets/00000000000000000000000000000000",
            None,
        )
        .await,
        404,
        -1300,
    );
    // The key of another project is not found through this appkey.
    err(
        &call(&kms, &other, "GET", &format!("/secrets/{id}"), None).await,
        404,
        -1300,
    );
    // A symmetric key is not a secret.
    let sym = create_key(&kms, &p, "symmetric-keys", "Store #1", json!({})).await;
    err(
        &call(&kms, &p, "GET", &format!("/secrets/{sym}"), None).await,
        400,
        -1304,
    );
    // Creation errors.
    let r = call(
        &kms,
        &p,
        "POST",
        "/keys/secrets/create",
        Some(json!({"keyStoreName": "Store #1", "name": "x"})),
    )
    .await;
    err(&r, 400, -1000);
    let r = call(
        &kms,
        &p,
        "POST",
        "/keys/secrets/create",
        Some(json!({"keyStoreName": "nope", "name": "x", "secretValue": "v"})),
    )
    .await;
    err(&r, 404, -1500);
    let r = call(
        &kms,
        &p,
        "POST",
        "/keys/widgets/create",
        Some(json!({"keyStoreName": "Store #1", "name": "x"})),
    )
    .await;
    err(&r, 400, -1000);
    let r = call(
        &kms,
        &p,
        "POST",
        "/keys/secrets/create",
        Some(json!({"keyStoreName": "Store #1", "secretValue": "v"})),
    )
    .await;
    err(&r, 400, -1000);
    // Without a User Access Key the body is not even read.
    let r = call_appkey_only_h(
        &kms,
        &p,
        "POST",
        "/keys/secrets/create",
        None,
        &[("content-type", "application/json")],
    )
    .await;
    err(&r, 401, -1102);
    let uak: Vec<(String, String)> = p
        .uak_headers()
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let r = kms
        .raw(
            "POST",
            &p.path("/keys/secrets/create"),
            &uak,
            Some(b"{not json".to_vec()),
        )
        .await;
    err(&r, 400, -1000);

    // Immediate deletion of an active key is refused.
    err(
        &call(&kms, &p, "DELETE", &format!("/keys/{id}"), None).await,
        400,
        -1302,
    );
    // Another project cannot request the deletion.
    err(
        &call(&kms, &other, "PUT", &format!("/keys/{id}/delete"), None).await,
        404,
        -1300,
    );
    let r = call(&kms, &p, "PUT", &format!("/keys/{id}/delete"), None).await;
    let b = ok(&r);
    assert_eq!(b["keyId"], id.as_str());
    assert!(b["deletionDateTime"].is_string());
    // No longer usable, and a second request is refused.
    err(
        &call(&kms, &p, "GET", &format!("/secrets/{id}"), None).await,
        400,
        -1302,
    );
    err(
        &call(&kms, &p, "PUT", &format!("/keys/{id}/delete"), None).await,
        400,
        -1302,
    );
    let r = call(&kms, &p, "DELETE", &format!("/keys/{id}"), None).await;
    assert_eq!(ok(&r)["keyId"], id.as_str());
    err(
        &call(&kms, &p, "GET", &format!("/secrets/{id}"), None).await,
        404,
        -1300,
    );
    err(
        &call(&kms, &p, "DELETE", &format!("/keys/{id}"), None).await,
        404,
        -1300,
    );
    // Both version objects are gone from the token.
    assert!(kms.engine.hsm().object_info(v1).await.unwrap().is_empty());
    for v in &entry.versions {
        assert!(kms
            .engine
            .hsm()
            .object_info(v.cka_id.to_vec())
            .await
            .unwrap()
            .is_empty());
    }
}

#[tokio::test]
async fn symmetric_encrypt_decrypt_local_key_and_rotation() {
    let kms = nhn::start().await;
    let p = project(&kms, "p1", true).await;
    let other = project(&kms, "p2", true).await;
    key_store(&kms, &p, "S", false, false, false, false).await;
    let id = create_key(
        &kms,
        &p,
        "symmetric-keys",
        "S",
        json!({"autoRotationPeriod": 30}),
    )
    .await;
    let enc = format!("/symmetric-keys/{id}/encrypt");
    let dec = format!("/symmetric-keys/{id}/decrypt");

    let r = call(
        &kms,
        &p,
        "POST",
        &enc,
        Some(json!({"plaintext": "hello NHN"})),
    )
    .await;
    let b = ok(&r);
    assert_eq!(b["keyVersion"], 1);
    let ct = b["ciphertext"].as_str().unwrap().to_string();
    let raw = unb64(&ct);
    assert_eq!(&raw[..4], &[0, 0, 0, 1]);
    assert_eq!(raw.len(), 4 + 12 + 9 + 16);
    let r = call(&kms, &p, "POST", &dec, Some(json!({"ciphertext": ct}))).await;
    let b = ok(&r);
    assert_eq!(b["plaintext"], "hello NHN");
    assert_eq!(b["keyVersion"], 1);

    // 32 KB is the limit.
    let r = call(
        &kms,
        &p,
        "POST",
        &enc,
        Some(json!({"plaintext": "a".repeat(32 * 1024)})),
    )
    .await;
    ok(&r);
    let r = call(
        &kms,
        &p,
        "POST",
        &enc,
        Some(json!({"plaintext": "a".repeat(32 * 1024 + 1)})),
    )
    .await;
    err(&r, 400, -1000);
    err(
        &call(&kms, &p, "POST", &enc, Some(json!({}))).await,
        400,
        -1000,
    );
    // Invalid base64, too short, tampered, unknown version.
    err(
        &call(
            &kms,
            &p,
            "POST",
            &dec,
            Some(json!({"ciphertext": "%%%not base64"})),
        )
        .await,
        400,
        -1001,
    );
    err(
        &call(
            &kms,
            &p,
            "POST",
            &dec,
            Some(json!({"ciphertext": b64(&[0, 0, 0, 1, 9, 9])})),
        )
        .await,
        400,
        -1001,
    );
    let mut t = raw.clone();
    let last = t.len() - 1;
    t[last] ^= 1;
    err(
        &call(&kms, &p, "POST", &dec, Some(json!({"ciphertext": b64(&t)}))).await,
        400,
        -1001,
    );
    let mut t = raw.clone();
    t[3] = 9;
    err(
        &call(&kms, &p, "POST", &dec, Some(json!({"ciphertext": b64(&t)}))).await,
        400,
        -1301,
    );
    // Another project, a secret's id, an unknown id.
    err(
        &call(&kms, &other, "POST", &enc, Some(json!({"plaintext": "x"}))).await,
        404,
        -1300,
    );
    let sec = create_key(&kms, &p, "secrets", "S", json!({"secretValue": "v"})).await;
    err(
        &call(
            &kms,
            &p,
            "POST",
            &format!("/symmetric-keys/{sec}/encrypt"),
            Some(json!({"plaintext": "x"})),
        )
        .await,
        400,
        -1304,
    );
    err(
        &call(
            &kms,
            &p,
            "POST",
            "/symmetric-keys/ffffffffffffffffffffffffffffffff/encrypt",
            Some(json!({"plaintext": "x"})),
        )
        .await,
        404,
        -1300,
    );

    // Local key: the plaintext is the decryption of the ciphertext.
    let r = call(
        &kms,
        &p,
        "POST",
        &format!("/symmetric-keys/{id}/create-local-key"),
        None,
    )
    .await;
    let b = ok(&r);
    let lp = b["localKeyPlaintext"].as_str().unwrap().to_string();
    assert_eq!(unb64(&lp).len(), 32);
    let lc = b["localKeyCiphertext"].as_str().unwrap().to_string();
    assert_eq!(b["keyVersion"], 1);
    let r = call(&kms, &p, "POST", &dec, Some(json!({"ciphertext": lc}))).await;
    assert_eq!(ok(&r)["plaintext"], lp.as_str());
    // Two local keys differ.
    let r = call(
        &kms,
        &p,
        "POST",
        &format!("/symmetric-keys/{id}/create-local-key"),
        None,
    )
    .await;
    assert_ne!(ok(&r)["localKeyPlaintext"], lp.as_str());

    // Export is off by default: 403 in the envelope.
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/symmetric-keys/{id}/symmetric-key?keyVersion=1"),
        None,
    )
    .await;
    err(&r, 403, -1400);
    // The token agrees: the key is sensitive and not extractable.
    let e = kms
        .engine
        .key_entry(&hsm_kms::core::KeyUid::from(&id))
        .await
        .unwrap();
    let info = kms
        .engine
        .hsm()
        .object_info(e.versions[0].cka_id.to_vec())
        .await
        .unwrap();
    assert!(info[0].sensitive && !info[0].extractable);

    // autoRotationPeriod limits.
    let r = call(
        &kms,
        &p,
        "POST",
        "/keys/symmetric-keys/create",
        Some(json!({"keyStoreName": "S", "name": "x", "autoRotationPeriod": -1})),
    )
    .await;
    err(&r, 400, -1000);
    let r = call(
        &kms,
        &p,
        "POST",
        "/keys/symmetric-keys/create",
        Some(json!({"keyStoreName": "S", "name": "x", "autoRotationPeriod": 3651})),
    )
    .await;
    err(&r, 400, -1000);

    // The scheduler rotates when due; old ciphertexts still decrypt.
    let ks = kms.engine.nhn_key_stores(&p.project).await.unwrap()[0].id;
    let r = call(&kms, &p, "GET", &format!("/keystores/{ks}/keys/{id}"), None).await;
    let b = ok(&r);
    assert_eq!(b["autoRotationPeriod"], 30);
    assert!(b["nextAutoRotationDate"].is_string());
    assert_eq!(b["currentKeyValueVersion"], 1);
    assert!(b["lastAccessDatetime"].is_string());
    kms.engine.run_due_work().await.unwrap();
    assert_eq!(
        kms.engine
            .key_entry(&hsm_kms::core::KeyUid::from(&id))
            .await
            .unwrap()
            .versions
            .len(),
        1,
        "not due yet"
    );
    // One rotation schedule for both dialects: the key row's.
    let db = kms.db().await;
    sqlx::query("UPDATE keys SET next_rotation_at = $1 WHERE id = $2")
        .bind(common::now_ms() - 1000)
        .bind(e.key.id)
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let (rotated, _) = kms.engine.run_due_work().await.unwrap();
    assert_eq!(rotated, 1);
    let r = call(&kms, &p, "POST", &enc, Some(json!({"plaintext": "v2"}))).await;
    assert_eq!(ok(&r)["keyVersion"], 2);
    let r = call(&kms, &p, "POST", &dec, Some(json!({"ciphertext": ct}))).await;
    assert_eq!(ok(&r)["plaintext"], "hello NHN");
    let r = call(&kms, &p, "GET", &format!("/keystores/{ks}/keys/{id}"), None).await;
    assert_eq!(ok(&r)["currentKeyValueVersion"], 2);

    // Deleted key.
    ok(&call(&kms, &p, "PUT", &format!("/keys/{id}/delete"), None).await);
    err(
        &call(&kms, &p, "POST", &enc, Some(json!({"plaintext": "x"}))).await,
        400,
        -1302,
    );
    err(
        &call(&kms, &p, "POST", &dec, Some(json!({"ciphertext": ct}))).await,
        400,
        -1302,
    );
}

#[tokio::test]
async fn export_policy_allows_reading_keys_back() {
    let kms = nhn::start().await;
    let p = project(&kms, "p1", true).await;
    key_store(&kms, &p, "Exportable", false, false, false, true).await;
    let id = create_key(&kms, &p, "symmetric-keys", "Exportable", json!({})).await;
    let r = call(
        &kms,
        &p,
        "POST",
        &format!("/symmetric-keys/{id}/encrypt"),
        Some(json!({"plaintext": "outside"})),
    )
    .await;
    let raw = unb64(ok(&r)["ciphertext"].as_str().unwrap());

    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/symmetric-keys/{id}/symmetric-key?keyVersion=1"),
        None,
    )
    .await;
    let b = ok(&r);
    assert_eq!(b["keyVersion"], 1);
    let key = hex_list_bytes(b["symmetricKey"].as_str().unwrap());
    assert_eq!(key.len(), 32);
    // The exported key decrypts the service's ciphertext outside the service.
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&key).unwrap();
    let pt = cipher
        .decrypt(
            &aes_gcm::Nonce::from(<[u8; 12]>::try_from(&raw[4..16]).unwrap()),
            &raw[16..],
        )
        .expect("decrypts outside");
    assert_eq!(pt, b"outside");
    // Without keyVersion: the current version.
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/symmetric-keys/{id}/symmetric-key"),
        None,
    )
    .await;
    assert_eq!(
        hex_list_bytes(ok(&r)["symmetricKey"].as_str().unwrap()),
        key
    );
    err(
        &call(
            &kms,
            &p,
            "GET",
            &format!("/symmetric-keys/{id}/symmetric-key?keyVersion=7"),
            None,
        )
        .await,
        400,
        -1301,
    );
    err(
        &call(
            &kms,
            &p,
            "GET",
            &format!("/symmetric-keys/{id}/symmetric-key?keyVersion=zero"),
            None,
        )
        .await,
        400,
        -1000,
    );

    // RSA private key, and its public half matches publicKey.
    let rid = create_key(&kms, &p, "asymmetric-keys", "Exportable", json!({})).await;
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/asymmetric-keys/{rid}/privateKey?keyVersion=1"),
        None,
    )
    .await;
    let b = ok(&r);
    assert_eq!(b["keyType"], "PrivateKey");
    let der = unb64(b["encodedKey"].as_str().unwrap());
    assert_eq!(hex_list_bytes(b["key"].as_str().unwrap()), der);
    use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
    let sk = rsa::RsaPrivateKey::from_pkcs8_der(&der).expect("PKCS#8");
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/asymmetric-keys/{rid}/publicKey"),
        None,
    )
    .await;
    let spki = unb64(ok(&r)["encodedKey"].as_str().unwrap());
    assert_eq!(
        sk.to_public_key().to_public_key_der().unwrap().as_bytes(),
        spki.as_slice()
    );
    // A signature of the service equals one made with the exported key.
    let r = call(
        &kms,
        &p,
        "POST",
        &format!("/asymmetric-keys/{rid}/sign"),
        Some(json!({"plaintext": "abc"})),
    )
    .await;
    let sig = unb64(ok(&r)["signature"].as_str().unwrap());
    let mine = sk
        .sign(rsa::Pkcs1v15Sign::new_unprefixed(), b"abc")
        .unwrap();
    assert_eq!(&sig[4..], mine.as_slice());
}

#[tokio::test]
async fn asymmetric_sign_verify_public_key() {
    let kms = nhn::start().await;
    let p = project(&kms, "p1", true).await;
    let other = project(&kms, "p2", true).await;
    key_store(&kms, &p, "S", false, false, false, false).await;
    let id = create_key(
        &kms,
        &p,
        "asymmetric-keys",
        "S",
        json!({"autoRotationPeriod": 0}),
    )
    .await;
    let sign = format!("/asymmetric-keys/{id}/sign");
    let verify = format!("/asymmetric-keys/{id}/verify");
    let msg = "x".repeat(245);

    let r = call(&kms, &p, "POST", &sign, Some(json!({"plaintext": msg}))).await;
    let b = ok(&r);
    assert_eq!(b["keyVersion"], 1);
    let sig_b64 = b["signature"].as_str().unwrap().to_string();
    let sig = unb64(&sig_b64);
    assert_eq!(sig.len(), 4 + 256);
    assert_eq!(&sig[..4], &[0, 0, 0, 1]);

    // Public key: hex and base64 forms of the same SPKI DER.
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/asymmetric-keys/{id}/publicKey?keyVersion=1"),
        None,
    )
    .await;
    let b = ok(&r);
    assert_eq!(b["keyType"], "PublicKey");
    assert_eq!(b["keyVersion"], 1);
    let spki = unb64(b["encodedKey"].as_str().unwrap());
    assert_eq!(hex_list_bytes(b["key"].as_str().unwrap()), spki);
    // The signature verifies outside the service: raw PKCS#1 v1.5.
    use rsa::pkcs8::DecodePublicKey;
    let pk = rsa::RsaPublicKey::from_public_key_der(&spki).unwrap();
    pk.verify(
        rsa::Pkcs1v15Sign::new_unprefixed(),
        msg.as_bytes(),
        &sig[4..],
    )
    .expect("verifies outside the service");
    assert!(pk
        .verify(rsa::Pkcs1v15Sign::new_unprefixed(), b"other", &sig[4..])
        .is_err());

    let r = call(
        &kms,
        &p,
        "POST",
        &verify,
        Some(json!({"plaintext": msg, "signature": sig_b64})),
    )
    .await;
    let b = ok(&r);
    assert_eq!(b["result"], true);
    assert_eq!(b["keyVersion"], 1);
    // A bare signature (no version prefix) is checked with the current version.
    let r = call(
        &kms,
        &p,
        "POST",
        &verify,
        Some(json!({"plaintext": msg, "signature": b64(&sig[4..])})),
    )
    .await;
    assert_eq!(ok(&r)["result"], true);
    let r = call(
        &kms,
        &p,
        "POST",
        &verify,
        Some(json!({"plaintext": "changed", "signature": sig_b64})),
    )
    .await;
    assert_eq!(ok(&r)["result"], false);
    let mut t = sig.clone();
    t[100] ^= 0x40;
    let r = call(
        &kms,
        &p,
        "POST",
        &verify,
        Some(json!({"plaintext": msg, "signature": b64(&t)})),
    )
    .await;
    assert_eq!(ok(&r)["result"], false);

    // Bad inputs.
    let r = call(
        &kms,
        &p,
        "POST",
        &sign,
        Some(json!({"plaintext": "x".repeat(246)})),
    )
    .await;
    err(&r, 400, -1000);
    err(
        &call(&kms, &p, "POST", &sign, Some(json!({}))).await,
        400,
        -1000,
    );
    err(
        &call(&kms, &p, "POST", &verify, Some(json!({"plaintext": "a"}))).await,
        400,
        -1000,
    );
    err(
        &call(
            &kms,
            &p,
            "POST",
            &verify,
            Some(json!({"plaintext": "a", "signature": "***"})),
        )
        .await,
        400,
        -1001,
    );
    let mut t = sig.clone();
    t[3] = 5;
    err(
        &call(
            &kms,
            &p,
            "POST",
            &verify,
            Some(json!({"plaintext": msg, "signature": b64(&t)})),
        )
        .await,
        400,
        -1301,
    );
    err(
        &call(&kms, &other, "POST", &sign, Some(json!({"plaintext": "a"}))).await,
        404,
        -1300,
    );
    err(
        &call(
            &kms,
            &other,
            "GET",
            &format!("/asymmetric-keys/{id}/publicKey"),
            None,
        )
        .await,
        404,
        -1300,
    );
    let sym = create_key(&kms, &p, "symmetric-keys", "S", json!({})).await;
    err(
        &call(
            &kms,
            &p,
            "POST",
            &format!("/asymmetric-keys/{sym}/sign"),
            Some(json!({"plaintext": "a"})),
        )
        .await,
        400,
        -1304,
    );
    // Export off: private key refused, and the token holds it sensitive.
    err(
        &call(
            &kms,
            &p,
            "GET",
            &format!("/asymmetric-keys/{id}/privateKey"),
            None,
        )
        .await,
        403,
        -1400,
    );
    let e = kms
        .engine
        .key_entry(&hsm_kms::core::KeyUid::from(&id))
        .await
        .unwrap();
    let infos = kms
        .engine
        .hsm()
        .object_info(e.versions[0].cka_id.to_vec())
        .await
        .unwrap();
    let private = infos.iter().find(|i| i.class == "private-key").unwrap();
    assert!(private.sensitive && !private.extractable && private.local);

    // Deleted key: no signing, no public key.
    ok(&call(&kms, &p, "PUT", &format!("/keys/{id}/delete"), None).await);
    err(
        &call(&kms, &p, "POST", &sign, Some(json!({"plaintext": "a"}))).await,
        400,
        -1302,
    );
    err(
        &call(
            &kms,
            &p,
            "GET",
            &format!("/asymmetric-keys/{id}/publicKey"),
            None,
        )
        .await,
        400,
        -1302,
    );
}

#[tokio::test]
async fn ipv4_authentication() {
    let kms = nhn::start().await;
    let p = project(&kms, "p1", true).await;
    let ks = key_store(&kms, &p, "S", true, false, false, false).await;
    let id = create_key(&kms, &p, "secrets", "S", json!({"secretValue": "v"})).await;
    let get = format!("/secrets/{id}");
    let from = |ip: &'static str| [("X-Forwarded-For", ip)];

    // The switch is on and nothing is registered: everyone is refused.
    err(&call(&kms, &p, "GET", &get, None).await, 403, -1200);
    let r = call(
        &kms,
        &p,
        "POST",
        "/auths/ipv4s",
        Some(json!({"keyStoreName": "S", "value": "127.0.0.1", "description": "local"})),
    )
    .await;
    let b = ok(&r);
    assert_eq!(b["value"], "127.0.0.1");
    assert_eq!(b["description"], "local");
    assert_eq!(ok(&call(&kms, &p, "GET", &get, None).await)["secret"], "v");
    // Another client address (through the trusted proxy) is refused.
    err(
        &call_h(&kms, &p, "GET", &get, None, &from("203.0.113.9")).await,
        403,
        -1200,
    );
    ok(&call(
        &kms,
        &p,
        "POST",
        "/auths/ipv4s",
        Some(json!({"keyStoreName": "S", "value": "203.0.113.9"})),
    )
    .await);
    ok(&call_h(&kms, &p, "GET", &get, None, &from("203.0.113.9")).await);
    // The public key needs no key-store authentication, but other data calls do.
    let rid = create_key(&kms, &p, "asymmetric-keys", "S", json!({})).await;
    ok(&call_h(
        &kms,
        &p,
        "GET",
        &format!("/asymmetric-keys/{rid}/publicKey"),
        None,
        &from("198.51.100.1"),
    )
    .await);
    err(
        &call_h(
            &kms,
            &p,
            "POST",
            &format!("/asymmetric-keys/{rid}/sign"),
            Some(json!({"plaintext": "a"})),
            &from("198.51.100.1"),
        )
        .await,
        403,
        -1200,
    );

    // Bad inputs on registration.
    err(
        &call(
            &kms,
            &p,
            "POST",
            "/auths/ipv4s",
            Some(json!({"keyStoreName": "S", "value": "300.1.1.1"})),
        )
        .await,
        400,
        -1000,
    );
    err(
        &call(
            &kms,
            &p,
            "POST",
            "/auths/ipv4s",
            Some(json!({"keyStoreName": "S", "value": "::1"})),
        )
        .await,
        400,
        -1000,
    );
    err(
        &call(
            &kms,
            &p,
            "POST",
            "/auths/ipv4s",
            Some(json!({"keyStoreName": "S", "value": "127.0.0.1"})),
        )
        .await,
        409,
        -1502,
    );
    err(
        &call(
            &kms,
            &p,
            "POST",
            "/auths/ipv4s",
            Some(json!({"keyStoreName": "T", "value": "127.0.0.2"})),
        )
        .await,
        404,
        -1500,
    );
    err(
        &call(
            &kms,
            &p,
            "POST",
            "/auths/ipv4s",
            Some(json!({"keyStoreName": "S"})),
        )
        .await,
        400,
        -1000,
    );
    err(
        &call(
            &kms,
            &p,
            "POST",
            "/auths/wifi",
            Some(json!({"keyStoreName": "S", "value": "x"})),
        )
        .await,
        400,
        -1000,
    );

    // Queries.
    let r = call(&kms, &p, "GET", &format!("/keystores/{ks}/ips"), None).await;
    assert_eq!(ok(&r)["ipv4List"], json!(["127.0.0.1", "203.0.113.9"]));
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/keystores/{ks}/ips?value=127.0.0.1"),
        None,
    )
    .await;
    let d = &ok(&r)["ipv4List"][0];
    assert_eq!(d["value"], "127.0.0.1");
    assert_eq!(d["description"], "local");
    assert!(d["deletionDatetime"].is_null());
    assert_eq!(d["creationUser"], p.uak.0.as_str());
    assert!(d["creationDatetime"].is_string() && d["lastChangeDatetime"].is_string());
    assert!(d["lastAccessDatetime"].is_string(), "used above: {d}");

    // Two-step deletion: immediate deletion of an active credential is refused.
    let del = json!({"keyStoreName": "S", "value": "203.0.113.9"});
    err(
        &call(&kms, &p, "POST", "/auths/ipv4s/delete", Some(del.clone())).await,
        400,
        -1302,
    );
    let r = call(&kms, &p, "PUT", "/auths/ipv4s/delete", Some(del.clone())).await;
    let b = ok(&r);
    assert_eq!(b["value"], "203.0.113.9");
    assert!(b["deletionDateTime"].is_string());
    // Unusable from the request on.
    err(
        &call_h(&kms, &p, "GET", &get, None, &from("203.0.113.9")).await,
        403,
        -1200,
    );
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/keystores/{ks}/ips?value=203.0.113.9"),
        None,
    )
    .await;
    assert!(ok(&r)["ipv4List"][0]["deletionDatetime"].is_string());
    err(
        &call(&kms, &p, "PUT", "/auths/ipv4s/delete", Some(del.clone())).await,
        400,
        -1302,
    );
    let r = call(&kms, &p, "POST", "/auths/ipv4s/delete", Some(del.clone())).await;
    assert_eq!(ok(&r)["value"], "203.0.113.9");
    let r = call(&kms, &p, "GET", &format!("/keystores/{ks}/ips"), None).await;
    assert_eq!(ok(&r)["ipv4List"], json!(["127.0.0.1"]));
    err(
        &call(&kms, &p, "POST", "/auths/ipv4s/delete", Some(del)).await,
        404,
        -1501,
    );
}

#[tokio::test]
async fn mac_authentication() {
    let kms = nhn::start().await;
    let p = project(&kms, "p1", true).await;
    let ks = key_store(&kms, &p, "S", false, true, false, false).await;
    let id = create_key(&kms, &p, "symmetric-keys", "S", json!({})).await;
    let enc = format!("/symmetric-keys/{id}/encrypt");
    let body = || Some(json!({"plaintext": "m"}));
    let mac = |m: &'static str| [("X-TOAST-CLIENT-MAC-ADDR", m)];

    ok(&call(
        &kms,
        &p,
        "POST",
        "/auths/macs",
        Some(json!({"keyStoreName": "S", "value": "AA-BB-CC-DD-EE-01", "description": "nic"})),
    )
    .await);
    // Missing, malformed and unregistered MAC headers are refused.
    err(&call(&kms, &p, "POST", &enc, body()).await, 403, -1201);
    err(
        &call_h(&kms, &p, "POST", &enc, body(), &mac("not-a-mac")).await,
        403,
        -1201,
    );
    err(
        &call_h(&kms, &p, "POST", &enc, body(), &mac("aa:bb:cc:dd:ee:02")).await,
        403,
        -1201,
    );
    ok(&call_h(&kms, &p, "POST", &enc, body(), &mac("aa:bb:cc:dd:ee:01")).await);
    err(
        &call(
            &kms,
            &p,
            "POST",
            "/auths/macs",
            Some(json!({"keyStoreName": "S", "value": "aa:bb:cc"})),
        )
        .await,
        400,
        -1000,
    );

    let r = call(&kms, &p, "GET", &format!("/keystores/{ks}/macs"), None).await;
    assert_eq!(ok(&r)["macList"], json!(["aa:bb:cc:dd:ee:01"]));
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/keystores/{ks}/macs?value=aa:bb:cc:dd:ee:01"),
        None,
    )
    .await;
    assert_eq!(ok(&r)["macList"][0]["description"], "nic");

    let del = json!({"keyStoreName": "S", "value": "aa:bb:cc:dd:ee:01"});
    ok(&call(&kms, &p, "PUT", "/auths/macs/delete", Some(del.clone())).await);
    err(
        &call_h(&kms, &p, "POST", &enc, body(), &mac("aa:bb:cc:dd:ee:01")).await,
        403,
        -1201,
    );
    ok(&call(&kms, &p, "POST", "/auths/macs/delete", Some(del)).await);
}

#[tokio::test]
async fn certificate_switch_refuses_plain_http_and_lists_certificates() {
    let kms = nhn::start().await;
    let p = project(&kms, "p1", true).await;
    let ks = key_store(&kms, &p, "S", false, false, true, false).await;
    let id = create_key(&kms, &p, "secrets", "S", json!({"secretValue": "v"})).await;
    // No certificate (plain HTTP): refused.
    err(
        &call(&kms, &p, "GET", &format!("/secrets/{id}"), None).await,
        403,
        -1202,
    );

    let r = call(&kms, &p, "POST", "/auths/certificates", Some(json!({"keyStoreName": "S", "name": "Certificate Name #1", "password": "pw-1", "lifeTime": 365, "description": "client"}))).await;
    let b = ok(&r);
    assert_eq!(b["name"], "Certificate Name #1");
    assert_eq!(b["description"], "client");
    err(
        &call(&kms, &p, "GET", &format!("/secrets/{id}"), None).await,
        403,
        -1202,
    );
    // Bad inputs.
    for bad in [
        json!({"keyStoreName": "S", "name": "c2", "password": "pw", "lifeTime": 0}),
        json!({"keyStoreName": "S", "name": "c2", "password": "pw"}),
        json!({"keyStoreName": "S", "name": "c2", "lifeTime": 1}),
        json!({"keyStoreName": "S", "password": "pw", "lifeTime": 1}),
    ] {
        err(
            &call(&kms, &p, "POST", "/auths/certificates", Some(bad)).await,
            400,
            -1000,
        );
    }
    let dup = json!({"keyStoreName": "S", "name": "Certificate Name #1", "password": "pw", "lifeTime": 1});
    err(
        &call(&kms, &p, "POST", "/auths/certificates", Some(dup)).await,
        409,
        -1502,
    );

    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/keystores/{ks}/certificates"),
        None,
    )
    .await;
    assert_eq!(ok(&r)["certificateList"], json!(["Certificate Name #1"]));
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/keystores/{ks}/certificates?value=Certificate%20Name%20%231"),
        None,
    )
    .await;
    let d = &ok(&r)["certificateList"][0];
    assert_eq!(d["name"], "Certificate Name #1");
    // Shown once, at issuance; never listed (issue 8).
    assert!(d["password"].is_null(), "{d}");
    assert!(d["expirationDate"].is_string());

    // The PKCS#12 is kept under the KEK, and opens with the password.
    let p12 = kms
        .engine
        .nhn_export_certificate("p1", "S", "Certificate Name #1")
        .await
        .unwrap();
    let store = p12_keystore::KeyStore::from_pkcs12(
        &p12,
        "pw-1",
        p12_keystore::Pkcs12ImportPolicy::default(),
    )
    .unwrap();
    let (_, chain) = store.private_key_chain().expect("key chain");
    assert_eq!(chain.certs().len(), 2);
    assert!(p12_keystore::KeyStore::from_pkcs12(
        &p12,
        "wrong",
        p12_keystore::Pkcs12ImportPolicy::default()
    )
    .is_err());

    let del = json!({"keyStoreName": "S", "name": "Certificate Name #1"});
    err(
        &call(
            &kms,
            &p,
            "POST",
            "/auths/certificates/delete",
            Some(del.clone()),
        )
        .await,
        400,
        -1302,
    );
    let r = call(
        &kms,
        &p,
        "PUT",
        "/auths/certificates/delete",
        Some(del.clone()),
    )
    .await;
    assert_eq!(ok(&r)["name"], "Certificate Name #1");
    let r = call(&kms, &p, "POST", "/auths/certificates/delete", Some(del)).await;
    assert_eq!(ok(&r)["name"], "Certificate Name #1");
    assert!(kms
        .engine
        .nhn_export_certificate("p1", "S", "Certificate Name #1")
        .await
        .is_err());
}

#[tokio::test]
async fn key_store_and_key_queries() {
    let kms = nhn::start().await;
    let p = project(&kms, "p1", true).await;
    let other = project(&kms, "p2", true).await;
    let s1 = key_store(&kms, &p, "One", true, false, true, false).await;
    let s2 = key_store(&kms, &p, "Two", false, false, false, false).await;
    let o1 = key_store(&kms, &other, "One", false, false, false, false).await;

    let r = call(&kms, &p, "GET", "/keystores", None).await;
    assert_eq!(ok(&r)["keyStoreIdList"], json!([s1, s2]));
    let r = kms
        .raw(
            "GET",
            &format!("/keymanager/v1.0/appkey/{}/keystores?detail=true", p.appkey),
            &p.uak_headers().map(|(k, v)| (k.to_string(), v.to_string())),
            None,
        )
        .await;
    let list = ok(&r)["keyStoreList"].as_array().unwrap().clone();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["name"], "One");
    assert_eq!(list[0]["ip4AuthUse"], "Y");
    assert_eq!(list[0]["macAuthUse"], "N");
    assert_eq!(list[0]["certificateAuthUse"], "Y");
    assert_eq!(list[1]["keyStoreId"], s2);
    let r = call(&kms, &p, "GET", &format!("/keystores/{s2}"), None).await;
    let b = ok(&r);
    assert_eq!(b["name"], "Two");
    assert_eq!(b["description"], "Two description");
    assert_eq!(b["ip4AuthUse"], "N");
    err(
        &call(&kms, &p, "GET", &format!("/keystores/{o1}"), None).await,
        404,
        -1500,
    );
    err(
        &call(&kms, &p, "GET", "/keystores/abc", None).await,
        400,
        -1000,
    );
    err(
        &call(&kms, &p, "GET", "/keystores?detail=maybe", None).await,
        400,
        -1000,
    );

    let mut secrets = vec![];
    for i in 0..12 {
        let r = call(
            &kms,
            &p,
            "POST",
            "/keys/secrets/create",
            Some(json!({"keyStoreName": "Two", "name": format!("secret {i}"), "secretValue": "v"})),
        )
        .await;
        secrets.push(ok(&r)["keyId"].as_str().unwrap().to_string());
    }
    let sym = create_key(&kms, &p, "symmetric-keys", "Two", json!({})).await;
    let asym = create_key(&kms, &p, "asymmetric-keys", "Two", json!({})).await;
    let elsewhere = create_key(&kms, &p, "symmetric-keys", "One", json!({})).await;

    let r = call(&kms, &p, "GET", &format!("/keystores/{s2}/keys"), None).await;
    let ids = ok(&r)["keyIdList"].as_array().unwrap().clone();
    // Every id: NHN's guide pages only the detailed list (issue 13;
    // tests/nhn_fidelity.rs); paging applies when asked for, below.
    assert_eq!(ids.len(), 14, "the key-id list has every id");
    assert_eq!(ids[0], secrets[0].as_str());
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/keystores/{s2}/keys?pageNumber=2"),
        None,
    )
    .await;
    let ids = ok(&r)["keyIdList"].as_array().unwrap().clone();
    assert_eq!(
        ids,
        vec![
            json!(secrets[10]),
            json!(secrets[11]),
            json!(sym),
            json!(asym)
        ]
    );
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/keystores/{s2}/keys?type=SYMMETRIC_KEY"),
        None,
    )
    .await;
    assert_eq!(ok(&r)["keyIdList"], json!([sym]));
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/keystores/{s2}/keys?name=secret%2011"),
        None,
    )
    .await;
    assert_eq!(ok(&r)["keyIdList"], json!([secrets[11]]));
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/keystores/{s2}/keys?detail=true&type=ASYMMETRIC_KEY"),
        None,
    )
    .await;
    let d = &ok(&r)["keyList"][0];
    assert_eq!(d["keyId"], asym.as_str());
    assert_eq!(d["keyType"], "ASYMMETRIC_KEY");
    assert_eq!(d["name"], "asymmetric-keys key");
    assert_eq!(d["description"], "test key");
    assert_eq!(d["currentKeyValueVersion"], 1);
    assert_eq!(d["autoRotationPeriod"], 0);
    assert!(d["nextAutoRotationDate"].is_null());
    assert!(d["deletionDatetime"].is_null());

    // Pending deletion: inactive, with its deletion time.
    ok(&call(&kms, &p, "PUT", &format!("/keys/{sym}/delete"), None).await);
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/keystores/{s2}/keys?status=inactive&detail=true"),
        None,
    )
    .await;
    let l = ok(&r)["keyList"].as_array().unwrap().clone();
    assert_eq!(l.len(), 1);
    assert_eq!(l[0]["keyId"], sym.as_str());
    assert!(l[0]["deletionDatetime"].is_string());
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/keystores/{s2}/keys?status=active&pageSize=100"),
        None,
    )
    .await;
    assert_eq!(ok(&r)["keyIdList"].as_array().unwrap().len(), 13);

    // Filter limits.
    for q in [
        "pageSize=9",
        "pageSize=101",
        "pageNumber=0",
        "type=KEY",
        "status=gone",
        "detail=1",
    ] {
        err(
            &call(&kms, &p, "GET", &format!("/keystores/{s2}/keys?{q}"), None).await,
            400,
            -1000,
        );
    }
    let long = "n".repeat(101);
    err(
        &call(
            &kms,
            &p,
            "GET",
            &format!("/keystores/{s2}/keys?name={long}"),
            None,
        )
        .await,
        400,
        -1000,
    );
    err(
        &call(&kms, &p, "GET", &format!("/keystores/{o1}/keys"), None).await,
        404,
        -1500,
    );

    // Key detail: only in its own key store.
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/keystores/{s2}/keys/{asym}"),
        None,
    )
    .await;
    assert_eq!(ok(&r)["keyId"], asym.as_str());
    err(
        &call(
            &kms,
            &p,
            "GET",
            &format!("/keystores/{s2}/keys/{elsewhere}"),
            None,
        )
        .await,
        404,
        -1300,
    );
}

#[tokio::test]
async fn scheduled_deletions_and_reconciler_keep_live_objects() {
    let kms = nhn::start().await;
    let p = project(&kms, "p1", true).await;
    let ks = key_store(&kms, &p, "S", true, false, false, false).await;
    let keep = create_key(&kms, &p, "secrets", "S", json!({"secretValue": "keep"})).await;
    let gone = create_key(&kms, &p, "secrets", "S", json!({"secretValue": "gone"})).await;
    let sym = create_key(&kms, &p, "symmetric-keys", "S", json!({})).await;
    ok(&call(
        &kms,
        &p,
        "POST",
        "/auths/ipv4s",
        Some(json!({"keyStoreName": "S", "value": "127.0.0.1"})),
    )
    .await);
    ok(&call(
        &kms,
        &p,
        "POST",
        "/auths/certificates",
        Some(json!({"keyStoreName": "S", "name": "c", "password": "pw", "lifeTime": 1})),
    )
    .await);

    // The reconciler knows every NHN object (secrets, keys, the project CA).
    let report = kms.engine.reconcile().await.unwrap();
    assert_eq!(report.unknown_objects, 0, "{report:?}");
    assert_eq!(report.missing_objects, 0, "{report:?}");
    assert_eq!(
        ok(&call(&kms, &p, "GET", &format!("/secrets/{keep}"), None).await)["secret"],
        "keep"
    );
    ok(&call(
        &kms,
        &p,
        "POST",
        &format!("/symmetric-keys/{sym}/encrypt"),
        Some(json!({"plaintext": "x"})),
    )
    .await);

    // A key whose seven days are over is destroyed by the scheduler.
    ok(&call(&kms, &p, "PUT", &format!("/keys/{gone}/delete"), None).await);
    let e = kms
        .engine
        .key_entry(&hsm_kms::core::KeyUid::from(&gone))
        .await
        .unwrap();
    let mut k = e.key.clone();
    assert!(k.destroy_at.unwrap() - common::now_ms() > 6 * 24 * 3600 * 1000);
    k.destroy_at = Some(common::now_ms() - 1);
    kms.engine.store().update_key(&k).await.unwrap();
    kms.engine.invalidate(&gone);
    let (_, destroyed) = kms.engine.run_due_work().await.unwrap();
    assert_eq!(destroyed, 1);
    err(
        &call(&kms, &p, "GET", &format!("/secrets/{gone}"), None).await,
        404,
        -1300,
    );
    assert!(kms
        .engine
        .hsm()
        .object_info(e.versions[0].cka_id.to_vec())
        .await
        .unwrap()
        .is_empty());
    assert_eq!(
        ok(&call(&kms, &p, "GET", &format!("/secrets/{keep}"), None).await)["secret"],
        "keep"
    );

    // A credential whose waiting period is over is deleted by the scheduler.
    let row = kms
        .engine
        .store()
        .nhn_credential(ks, hsm_kms::core::nhn::CredentialKind::Ipv4, "127.0.0.1")
        .await
        .unwrap()
        .unwrap();
    assert!(kms
        .engine
        .store()
        .nhn_request_credential_deletion(row.id, common::now_ms() - 1, "test")
        .await
        .unwrap());
    kms.engine.run_due_work().await.unwrap();
    let r = call(&kms, &p, "GET", &format!("/keystores/{ks}/ips"), None).await;
    assert_eq!(ok(&r)["ipv4List"], json!([]));
    err(
        &call(&kms, &p, "GET", &format!("/secrets/{keep}"), None).await,
        403,
        -1200,
    );
    // Last access was written by the scheduler's batch.
    let r = call(
        &kms,
        &p,
        "GET",
        &format!("/keystores/{ks}/keys/{keep}"),
        None,
    )
    .await;
    assert!(ok(&r)["lastAccessDatetime"].is_string());
    let meta = kms
        .engine
        .store()
        .nhn_key(
            kms.engine
                .key_entry(&hsm_kms::core::KeyUid::from(&keep))
                .await
                .unwrap()
                .key
                .id,
        )
        .await
        .unwrap()
        .unwrap();
    assert!(meta.last_access_at.is_some());
}
