//! Issue 13 §1, shared by NAVER API 2.0, 1.0 and v3:
//!
//! - RSA2048 signatures are RSASSA-PSS with SHA-256, MGF1-SHA-256 and a
//!   222-byte salt. The v3 getPublicKey page: "RSA2048 은 RSASSA-PSS(SHA-256,
//!   MGF1-SHA256, salt 길이 222바이트)라 검증 라이브러리의 기본 salt 길이로는
//!   실패할 수 있습니다". Signatures made before (PKCS#1 v1.5) keep verifying;
//!   `naver.rsa_signature = "pkcs1"` signs the old way.
//! - `context` is used by convergent keys only. The v3 encrypt page: "형식(Base64
//!   pattern·길이)은 컨버전트 키에서만 검사함. 컨버전트 키가 아니면 쓰지 않으므로
//!   문자열 값은 형식과 관계없이 무시. 문자열이 아닌 값(숫자 등)은 키 유형과
//!   관계없이 400". Ciphertexts made before with a context (then the GCM AAD)
//!   still decrypt with it.
//!
//! `rsa_signatures_are_pss_with_a_222_byte_salt` and
//! `context_is_ignored_on_keys_that_are_not_convergent` failed on the code
//! before the change (PKCS#1 v1.5 signatures; a context was the AAD, and a
//! 400 on RSA keys).
// The engine's store and HSM ports are public to tests only with the
// `test-hooks` feature (scripts/test.sh builds with --all-features).
#![cfg(feature = "test-hooks")]

mod common;

use common::independent::{rsa_verify, RsaPadding};
use common::{b64, unb64, Kms};
use hsm_kms::hsm::SignAlg;
use serde_json::json;

fn sig_bytes(sig: &str) -> Vec<u8> {
    unb64(sig.rsplit_once(':').unwrap().1)
}

async fn public_key(kms: &Kms, tag: &str) -> String {
    kms.op(tag, "get-pub-key", json!({})).await.ok()["publicKey"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn sign(kms: &Kms, tag: &str, data: &[u8]) -> String {
    kms.op(tag, "sign", json!({"data": b64(data)})).await.ok()["signature"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn verify(kms: &Kms, tag: &str, data: &[u8], sig: &str) -> bool {
    kms.op(tag, "verify", json!({"data": b64(data), "signature": sig}))
        .await
        .ok()["valid"]
        .as_bool()
        .unwrap()
}

/// The first version's `CKA_ID`, to make values the old code made.
async fn first_cka_id(kms: &Kms, tag: &str) -> Vec<u8> {
    kms.engine
        .key_entry(&hsm_kms::core::KeyUid::from(tag))
        .await
        .unwrap()
        .versions[0]
        .cka_id
        .to_vec()
}

#[tokio::test]
async fn rsa_signatures_are_pss_with_a_222_byte_salt() {
    let kms = Kms::start().await;
    let tag = kms.create_key("pss", "RSA2048", json!({})).await;
    let pem = public_key(&kms, &tag).await;
    let data = b"signed by hsm-kms, checked elsewhere";
    let sig = sign(&kms, &tag, data).await;
    assert!(sig.starts_with("ncpkms:v1:"), "{sig}");
    let raw = sig_bytes(&sig);
    assert_eq!(raw.len(), 256);
    assert!(
        rsa_verify(&pem, data, &raw, RsaPadding::Pss222),
        "an independent PSS verifier (salt 222) refuses the signature"
    );
    assert!(!rsa_verify(&pem, data, &raw, RsaPadding::Pkcs1));
    assert!(!rsa_verify(&pem, b"other data", &raw, RsaPadding::Pss222));
    // PSS is randomized: two signatures differ, both verify.
    let again = sign(&kms, &tag, data).await;
    assert_ne!(again, sig);
    assert!(verify(&kms, &tag, data, &sig).await);
    assert!(verify(&kms, &tag, data, &again).await);
    assert!(!verify(&kms, &tag, b"other data", &sig).await);
    // API 1.0 verifies it too.
    let r = kms
        .call(
            "POST",
            &format!("/keys/v2/{tag}/verify"),
            Some(json!({"data": b64(data), "signature": sig})),
        )
        .await;
    assert_eq!(r.body["code"], "SUCCESS", "{}", r.body);
    assert_eq!(r.body["data"]["valid"], true, "{}", r.body);
}

/// hsm-kms signed RSASSA-PKCS1-v1_5 before issue 13: such a signature (made
/// here the way the old code made it, `CKM_SHA256_RSA_PKCS` in the token)
/// still verifies through both APIs.
#[tokio::test]
async fn signatures_made_before_pss_keep_verifying() {
    let kms = Kms::start().await;
    let tag = kms.create_key("old-sigs", "RSA2048", json!({})).await;
    let data = b"signed last year";
    let old = kms
        .engine
        .hsm()
        .sign(
            first_cka_id(&kms, &tag).await,
            SignAlg::RsaPkcs1Sha256,
            data.to_vec(),
        )
        .await
        .unwrap();
    let pem = public_key(&kms, &tag).await;
    assert!(rsa_verify(&pem, data, &old, RsaPadding::Pkcs1));
    let old = format!("ncpkms:v1:{}", b64(&old));
    assert!(verify(&kms, &tag, data, &old).await);
    assert!(!verify(&kms, &tag, b"tampered", &old).await);
    let r = kms
        .call(
            "POST",
            &format!("/keys/v2/{tag}/verify"),
            Some(json!({"data": b64(data), "signature": old})),
        )
        .await;
    assert_eq!(r.body["data"]["valid"], true, "{}", r.body);
    // Rotation does not change which version checks it.
    let r = kms
        .call("POST", &format!("/kms/v1/keys/{tag}/rotate"), None)
        .await;
    r.ok();
    assert!(verify(&kms, &tag, data, &old).await);
}

#[tokio::test]
async fn pkcs1_switch_signs_the_old_scheme() {
    let kms = Kms::start_with(|c| c.naver.rsa_signature = "pkcs1".into()).await;
    let tag = kms.create_key("pkcs1", "RSA2048", json!({})).await;
    let pem = public_key(&kms, &tag).await;
    let data = b"for a client that needs PKCS#1 v1.5";
    let sig = sign(&kms, &tag, data).await;
    let raw = sig_bytes(&sig);
    assert!(rsa_verify(&pem, data, &raw, RsaPadding::Pkcs1));
    assert!(!rsa_verify(&pem, data, &raw, RsaPadding::Pss222));
    // Deterministic, as PKCS#1 v1.5 is.
    assert_eq!(sign(&kms, &tag, data).await, sig);
    assert!(verify(&kms, &tag, data, &sig).await);
    // A PSS signature (made under the default) verifies here as well.
    let pss = kms
        .engine
        .hsm()
        .sign(
            first_cka_id(&kms, &tag).await,
            SignAlg::RsaPssSha256,
            data.to_vec(),
        )
        .await
        .unwrap();
    assert!(rsa_verify(&pem, data, &pss, RsaPadding::Pss222));
    assert!(verify(&kms, &tag, data, &format!("ncpkms:v1:{}", b64(&pss))).await);
}

#[tokio::test]
async fn context_is_ignored_on_keys_that_are_not_convergent() {
    let kms = Kms::start().await;
    let aes = kms.create_key("plain-aes", "AES256", json!({})).await;
    let ct = kms.encrypt(&aes, b"no aad", Some(b"tenant-1")).await;
    for ctx in [Some(&b"tenant-1"[..]), Some(b"tenant-2"), None] {
        assert_eq!(kms.decrypt_ok(&aes, &ct, ctx).await, b"no aad");
    }
    // Any string is ignored, whatever it holds: bad base64, over 50 bytes.
    for ctx in [json!("***"), json!(b64(&[1u8; 51])), json!("")] {
        let r = kms
            .op(
                &aes,
                "encrypt",
                json!({"plaintext": b64(b"x"), "context": ctx}),
            )
            .await;
        let c = r.ok()["ciphertext"].as_str().unwrap().to_string();
        assert_eq!(kms.decrypt_ok(&aes, &c, None).await, b"x");
        let r = kms
            .op(&aes, "decrypt", json!({"ciphertext": c, "context": ctx}))
            .await;
        assert_eq!(r.ok()["plaintext"], b64(b"x"));
    }
    // A value that is not a string is 400 on every key.
    for ctx in [json!(42), json!(true), json!({"a": 1}), json!(["x"])] {
        kms.op(
            &aes,
            "encrypt",
            json!({"plaintext": b64(b"x"), "context": ctx}),
        )
        .await
        .assert_naver_error(400, "100");
    }

    let rsa = kms.create_key("plain-rsa", "RSA2048", json!({})).await;
    let ct = kms.encrypt(&rsa, b"rsa", Some(b"ignored")).await;
    assert_eq!(kms.decrypt_ok(&rsa, &ct, Some(b"other")).await, b"rsa");
    assert_eq!(kms.decrypt_ok(&rsa, &ct, None).await, b"rsa");
    kms.op(
        &rsa,
        "encrypt",
        json!({"plaintext": b64(b"x"), "context": 1}),
    )
    .await
    .assert_naver_error(400, "100");
    // API 1.0 follows the same rule.
    let r = kms
        .call(
            "POST",
            &format!("/keys/v2/{rsa}/encrypt"),
            Some(json!({"plaintext": b64(b"v1"), "context": "not base64 at all"})),
        )
        .await;
    assert_eq!(r.body["code"], "SUCCESS", "{}", r.body);

    // A convergent key still checks and needs it.
    let conv = kms
        .create_key("conv", "AES256", json!({"isConvergent": true}))
        .await;
    for body in [
        json!({"plaintext": b64(b"x")}),
        json!({"plaintext": b64(b"x"), "context": "***"}),
        json!({"plaintext": b64(b"x"), "context": b64(&[1u8; 51])}),
        json!({"plaintext": b64(b"x"), "context": 5}),
    ] {
        kms.op(&conv, "encrypt", body.clone())
            .await
            .assert_naver_error(400, "100");
    }
    let a = kms.encrypt(&conv, b"same", Some(b"ctx")).await;
    assert_eq!(kms.encrypt(&conv, b"same", Some(b"ctx")).await, a);
    kms.decrypt(&conv, &a, Some(b"other"))
        .await
        .assert_naver_error(400, "100");
}

/// A ciphertext the old rule made (the context as GCM AAD on a key that is
/// not convergent), made here as the old code did in the token, decrypts
/// with that context through API 2.0 and 1.0, and Re-encrypt moves it to the
/// new rule.
#[tokio::test]
async fn ciphertexts_made_with_a_context_under_the_old_rule_still_decrypt() {
    let kms = Kms::start().await;
    let tag = kms.create_key("legacy-aad", "AES256", json!({})).await;
    let ctx = b"tenant-7";
    let blob = kms
        .engine
        .hsm()
        .aes_gcm_encrypt(
            first_cka_id(&kms, &tag).await,
            b"made last year".to_vec(),
            ctx.to_vec(),
            None,
        )
        .await
        .unwrap();
    let old = format!("ncpkms:v1:{}", b64(&blob));
    assert_eq!(
        kms.decrypt_ok(&tag, &old, Some(ctx)).await,
        b"made last year"
    );
    kms.decrypt(&tag, &old, None)
        .await
        .assert_naver_error(400, "100");
    kms.decrypt(&tag, &old, Some(b"tenant-8"))
        .await
        .assert_naver_error(400, "100");
    let r = kms
        .call(
            "POST",
            &format!("/keys/v2/{tag}/decrypt"),
            Some(json!({"ciphertext": old, "context": b64(ctx)})),
        )
        .await;
    assert_eq!(
        r.body["data"]["plaintext"],
        b64(b"made last year"),
        "{}",
        r.body
    );
    let r = kms
        .op(
            &tag,
            "re-encrypt",
            json!({"ciphertext": old, "context": b64(ctx)}),
        )
        .await;
    let new = r.ok()["newCiphertext"].as_str().unwrap().to_string();
    assert_eq!(kms.decrypt_ok(&tag, &new, None).await, b"made last year");
}
