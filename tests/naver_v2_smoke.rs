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

#[tokio::test]
async fn health_readiness_and_metrics() {
    let kms = Kms::start().await;
    let get = |p: &'static str| {
        let url = format!("{}{p}", kms.url);
        async move { reqwest::get(url).await.unwrap() }
    };
    assert_eq!(get("/healthz").await.status(), 200);
    assert_eq!(get("/readyz").await.status(), 200);
    let tag = kms.create_key("metric-key", "AES256", json!({})).await;
    kms.call(
        "POST",
        &format!("/kms/v1/keys/{tag}/encrypt"),
        Some(json!({"plaintext": b64(b"m")})),
    )
    .await
    .ok();
    let text = get("/metrics").await.text().await.unwrap();
    assert!(
        text.lines().any(|l| l.starts_with("hsm_kms_requests_total")
            && l.contains("route=\"/kms/v1/keys/{key_tag}/encrypt\"")
            && l.contains("status=\"200\"")),
        "{text}"
    );
    assert!(!text.contains(&tag), "key tags are not metric labels");
    let spec: serde_json::Value = get("/openapi.json").await.json().await.unwrap();
    assert!(spec["openapi"].as_str().unwrap().starts_with("3."));
}
