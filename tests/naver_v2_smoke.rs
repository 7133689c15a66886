//! A first end-to-end check of the harness: create, encrypt, decrypt.
mod common;

use common::{b64, Kms};
use serde_json::json;

#[tokio::test]
async fn aes_round_trip() {
    let kms = Kms::start().await;
    let tag = kms.create_key("smoke-key", "AES256", json!({})).await;
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/encrypt"),
            Some(json!({"plaintext": b64(b"hello")})),
        )
        .await;
    let ct = r.ok()["ciphertext"].as_str().unwrap().to_string();
    assert!(ct.starts_with("ncpkms:v1:"));
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/decrypt"),
            Some(json!({"ciphertext": ct})),
        )
        .await;
    assert_eq!(r.ok()["plaintext"], b64(b"hello"));
}
