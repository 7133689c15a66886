//! Token-dependent mechanisms (issue 12 §3): RSA-OAEP with SHA-256 and
//! ECDSA with SHA-256 run in one token mechanism where the token offers it
//! and with the hashing / padding outside the token where it does not. The
//! choice is made once at start (`Hsm::mechanism_paths`).
//!
//! The default suite (SoftHSMv2 2.6, which has neither) tests the outside
//! paths; `scripts/test-kryoptic.sh` (Kryoptic, which has both) the token
//! paths. Either way the results are standard OAEP ciphertexts and ECDSA
//! signatures, checked here against the `rsa` and `p256` crates.
// The engine's store and HSM ports are public to tests only with the
// `test-hooks` feature (scripts/test.sh builds with --all-features).
#![cfg(feature = "test-hooks")]

mod common;

use common::{b64, test_module, unb64, Kms, TestModule};
use hsm_kms::hsm::{MechanismPath, MechanismPaths};
use serde_json::json;

/// The paths each module under test must get.
fn expected() -> MechanismPaths {
    match test_module() {
        // Lists CKM_RSA_PKCS_OAEP but takes only SHA-1; no CKM_ECDSA_SHA256.
        TestModule::SoftHsm => MechanismPaths {
            rsa_oaep_sha256: MechanismPath::Outside,
            ecdsa_sha256: MechanismPath::Outside,
        },
        TestModule::Kryoptic => MechanismPaths {
            rsa_oaep_sha256: MechanismPath::Token,
            ecdsa_sha256: MechanismPath::Token,
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_path_chosen_matches_the_module() {
    let kms = Kms::start().await;
    let hsm = kms.engine.hsm();
    assert_eq!(hsm.mechanism_paths(), expected());

    // The module is the one the suite says it runs on, as attestation
    // reports would name it.
    let (module, token) = hsm.describe().await.expect("describe");
    let maker = match test_module() {
        TestModule::SoftHsm => "SoftHSM",
        TestModule::Kryoptic => "Kryoptic",
    };
    assert!(module.manufacturer.contains(maker), "{module:?}");
    assert_eq!(token.label, "hsm-kms-test");

    // OpenSC's own view of the mechanism list agrees on ECDSA-SHA256.
    let out = std::process::Command::new("pkcs11-tool")
        .args([
            "--module",
            &common::module(),
            "--token-label",
            "hsm-kms-test",
        ])
        .arg("--list-mechanisms")
        .output()
        .expect("pkcs11-tool (opensc) must be installed");
    assert!(out.status.success());
    let listed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim_start().starts_with("ECDSA-SHA256,"));
    assert_eq!(
        listed,
        hsm.mechanism_paths().ecdsa_sha256 == MechanismPath::Token,
        "pkcs11-tool --list-mechanisms vs the ECDSA path"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rsa_oaep_sha256_on_the_chosen_path_is_standard() {
    use rsa::pkcs8::DecodePublicKey as _;
    let kms = Kms::start().await;
    let tag = kms.create_key("oaep", "RSA2048", json!({})).await;
    let pem = kms.op(&tag, "get-pub-key", json!({})).await.ok()["publicKey"]
        .as_str()
        .unwrap()
        .to_string();
    let pk = rsa::RsaPublicKey::from_public_key_pem(&pem).unwrap();

    // Made by the service, decrypted by the service.
    let ct = kms.encrypt(&tag, b"inside", None).await;
    assert_eq!(unb64(ct.rsplit_once(':').unwrap().1).len(), 256);
    assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, b"inside");
    // Made outside with the public key, decrypted by the service.
    let outside = pk
        .encrypt(
            &mut rand::rngs::OsRng,
            rsa::Oaep::new::<sha2::Sha256>(),
            b"outside",
        )
        .unwrap();
    let sealed = format!("ncpkms:v1:{}", b64(&outside));
    assert_eq!(kms.decrypt_ok(&tag, &sealed, None).await, b"outside");
    // A ciphertext that does not decode is the caller's error (400), not a
    // token fault (Kryoptic answers it CKR_DEVICE_ERROR), and the key still
    // works after it.
    let mut bad = outside.clone();
    bad[100] ^= 1;
    kms.decrypt(&tag, &format!("ncpkms:v1:{}", b64(&bad)), None)
        .await
        .assert_naver_error(400, "100");
    assert_eq!(kms.decrypt_ok(&tag, &sealed, None).await, b"outside");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ecdsa_sha256_on_the_chosen_path_is_standard() {
    use p256::ecdsa::signature::Verifier as _;
    use p256::pkcs8::DecodePublicKey as _;
    let kms = Kms::start().await;
    let tag = kms.create_key("ecdsa", "ECDSA", json!({})).await;
    let pem = kms.op(&tag, "get-pub-key", json!({})).await.ok()["publicKey"]
        .as_str()
        .unwrap()
        .to_string();
    let vk = p256::ecdsa::VerifyingKey::from_public_key_pem(&pem).unwrap();
    let message = b"a message of any length, hashed with SHA-256".repeat(5);

    let sig = kms.op(&tag, "sign", json!({"data": b64(&message)})).await;
    let sig = sig.ok()["signature"].as_str().unwrap().to_string();
    let der = unb64(sig.rsplit_once(':').unwrap().1);
    let parsed = p256::ecdsa::Signature::from_der(&der).expect("DER signature");
    vk.verify(&message, &parsed)
        .expect("verifies outside the service");

    let verify = |data: Vec<u8>, sig: String| {
        let kms = &kms;
        let tag = tag.clone();
        async move {
            kms.op(
                &tag,
                "verify",
                json!({"data": b64(&data), "signature": sig}),
            )
            .await
            .ok()["valid"]
                .clone()
        }
    };
    assert_eq!(verify(message.clone(), sig.clone()).await, json!(true));
    assert_eq!(verify(b"other".to_vec(), sig).await, json!(false));
}
