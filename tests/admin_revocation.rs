//! Revocations made with the admin CLI, a separate process, reach a running
//! server: a revoked access key stops signing within
//! `ACCESS_KEY_RECHECK`, a revoked API key at once; other credentials keep
//! working.
mod common;

use std::time::{Duration, Instant};

use common::process::Site;
use common::{b64, now_ms, send, Kms};
use hsm_kms::api::auth::ncp::{sign, SignatureVersion};
use hsm_kms::core::ACCESS_KEY_RECHECK;
use serde_json::json;

fn field(stdout: &str, name: &str) -> String {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {stdout}"))
        .to_string()
}

#[tokio::test]
async fn cli_revocations_reach_a_running_server() {
    let mut site = Site::init();
    let out = site.admin(&["admin", "create-access-key"]).0;
    let (ak2, sk2) = (field(&out, "access_key"), field(&out, "secret_key"));
    let api_key = field(&site.admin(&["admin", "create-api-key"]).0, "api_key");
    let server = site.serve(&[]).await;
    let list = |ak: String, sk: String| {
        let h = Kms::signed_headers(&ak, &sk, "GET", "/kms/v1/keys", &now_ms().to_string());
        let (client, url) = (server.client.clone(), server.url.clone());
        async move { send(&client, &url, "GET", "/kms/v1/keys", &h, None).await }
    };
    let (ak, sk) = (site.access_key.clone(), site.secret_key.clone());
    list(ak.clone(), sk.clone()).await.ok();
    list(ak2.clone(), sk2.clone()).await.ok();

    // API 1.0 with signature v1 and the API key.
    let r = server
        .call(
            "POST",
            "/kms/v1/keys",
            Some(json!({"keyName": "rev-key", "keyType": "AES256", "isAutoRotation": false})),
        )
        .await;
    let tag = r.ok()["keyTag"].as_str().unwrap().to_string();
    let v1 = |api_key: String| {
        let path = format!("/keys/v1/{tag}/encrypt");
        let ts = now_ms().to_string();
        let sig = sign(
            SignatureVersion::V1,
            sk.as_bytes(),
            "POST",
            &path,
            &ts,
            &ak,
            Some(&api_key),
        );
        let h = vec![
            ("x-ncp-apigw-timestamp".to_string(), ts),
            ("x-ncp-apigw-api-key".to_string(), api_key),
            ("x-ncp-iam-access-key".to_string(), ak.clone()),
            ("x-ncp-apigw-signature-v1".to_string(), sig),
        ];
        let (client, url) = (server.client.clone(), server.url.clone());
        let body = json!({"plaintext": b64(b"x")}).to_string().into_bytes();
        async move { send(&client, &url, "POST", &path, &h, Some(body)).await }
    };
    let r = v1(api_key.clone()).await;
    assert_eq!(r.body["code"], "SUCCESS", "{}", r.body);

    // The API key: refused as soon as the CLI has revoked it.
    site.admin(&["admin", "revoke-api-key", &api_key]);
    v1(api_key.clone()).await.assert_naver_error(401, "200");

    // The access key: refused within the recheck interval.
    let revoked_at = Instant::now();
    site.admin(&["admin", "revoke-access-key", &ak2]);
    loop {
        let r = list(ak2.clone(), sk2.clone()).await;
        if r.status == 401 {
            r.assert_naver_error(401, "200");
            break;
        }
        r.ok();
        assert!(
            revoked_at.elapsed() < ACCESS_KEY_RECHECK + Duration::from_secs(2),
            "a revoked access key still signs after {:?}",
            revoked_at.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // For good, and the other access key is unaffected, also after a recheck.
    tokio::time::sleep(ACCESS_KEY_RECHECK).await;
    list(ak2, sk2).await.assert_naver_error(401, "200");
    list(ak.clone(), sk.clone()).await.ok();
    list(ak, sk).await.ok();
}
