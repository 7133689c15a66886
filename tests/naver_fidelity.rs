//! NAVER behaviour as its pages document it (issue 13, section 1): the
//! `baseUrl` of key records and the error envelope of paths and methods no
//! API serves. Each test quotes the page it follows. Both were seen failing
//! before the change: `baseUrl` was `https://ocapi.ncloud.com` (NAVER's own
//! host) and unknown paths answered 404 / 405 with an empty body.
mod common;

use common::{Kms, Reply};
use serde_json::json;

/// The Get Key Info page: "`data.baseUrl` | String | API call domain
/// (endpoint) by key boundary", with `"baseUrl": "https://ocapi.ncloud.com"`
/// in its example: the address the key is called at. Here that is this
/// service, never NAVER's host (a client following it would send its
/// ciphertexts to NAVER): `naver.base_url` when set, else the scheme and
/// `Host` the request came with.
#[tokio::test]
async fn base_url_is_the_address_the_client_called() {
    let kms = Kms::start().await;
    let tag = kms.create_key("base-url", "AES256", json!({})).await;
    let r = kms.call("GET", &format!("/kms/v1/keys/{tag}"), None).await;
    assert_eq!(r.ok()["baseUrl"], kms.url, "{}", r.body);
    assert!(!r.body.to_string().contains("ncloud.com"), "{}", r.body);

    // Another Host (a DNS name in front of the service): that name.
    let path = format!("/kms/v1/keys/{tag}");
    let mut h = Kms::signed_headers(
        &kms.access_key,
        &kms.secret_key,
        "GET",
        &path,
        &common::fresh_ts(),
    );
    h.push(("host".into(), "kms.example.test:8443".into()));
    // X-Forwarded-Proto from a peer that is not a trusted proxy is ignored.
    h.push(("x-forwarded-proto".into(), "https".into()));
    let r = kms.raw("GET", &path, &h, None).await;
    assert_eq!(r.ok()["baseUrl"], "http://kms.example.test:8443");

    // Create Key answers the same record.
    let r = kms
        .call(
            "POST",
            "/kms/v1/keys",
            Some(json!({"keyName": "base-url-2", "keyType": "AES256"})),
        )
        .await;
    assert_eq!(r.ok()["baseUrl"], kms.url);
}

/// As above, behind a proxy listed in `server.trusted_proxies`: its
/// `X-Forwarded-Proto` tells the scheme the client used (the rightmost
/// value, written by the nearest proxy).
#[tokio::test]
async fn base_url_behind_a_trusted_proxy_takes_its_scheme() {
    let kms = Kms::start_with(|c| c.server.trusted_proxies = vec!["127.0.0.1/32".into()]).await;
    let tag = kms.create_key("proxied", "AES256", json!({})).await;
    let path = format!("/kms/v1/keys/{tag}");
    for (proto, want) in [
        (Some("https"), "https"),
        (Some("http, https"), "https"),
        (Some("https, http"), "http"),
        (Some("gopher"), "http"),
        (None, "http"),
    ] {
        let mut h = Kms::signed_headers(
            &kms.access_key,
            &kms.secret_key,
            "GET",
            &path,
            &common::fresh_ts(),
        );
        h.push(("host".into(), "kms.example.test".into()));
        if let Some(p) = proto {
            h.push(("x-forwarded-proto".into(), p.into()));
        }
        let r = kms.raw("GET", &path, &h, None).await;
        assert_eq!(
            r.ok()["baseUrl"],
            format!("{want}://kms.example.test"),
            "{proto:?}"
        );
    }
}

/// `naver.base_url` set: every record carries it (without a trailing
/// slash), whatever the request's Host.
#[tokio::test]
async fn a_configured_base_url_wins() {
    let kms = Kms::start_with(|c| c.naver.base_url = "https://kms.example.com/".into()).await;
    let tag = kms.create_key("configured", "AES256", json!({})).await;
    let r = kms.call("GET", &format!("/kms/v1/keys/{tag}"), None).await;
    assert_eq!(r.ok()["baseUrl"], "https://kms.example.com");
}

fn assert_envelope(r: &Reply, status: u16, code: &str) {
    r.assert_naver_error(status, code);
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "{r:?}"
    );
}

/// The overview page, API 2.0 "Error syntax": errors answer `error.errorCode`,
/// `error.message`, `error.details`, and its status table lists "404 | 300 |
/// Not Found". A path under `/kms/` or `/keys/` that no API serves is a 404 in
/// that envelope; a served path called with another method is a 405 in it
/// (errorCode `100`, NAVER's request-error code) with `Allow`. Other paths
/// are not NAVER's and keep an empty 404.
#[tokio::test]
async fn unknown_paths_and_methods_answer_in_the_error_envelope() {
    let kms = Kms::start().await;
    let tag = kms.create_key("routes", "AES256", json!({})).await;
    for (method, path) in [
        ("GET", "/kms/v1/nothing".to_string()),
        ("POST", format!("/kms/v1/keys/{tag}/no-such-action")),
        ("GET", "/kms/v2/keys".to_string()),
        ("POST", format!("/keys/v2/{tag}/no-such-action")),
        ("POST", "/keys/v9".to_string()),
    ] {
        let r = kms.call(method, &path, Some(json!({}))).await;
        assert_envelope(&r, 404, "300");
    }
    // Encrypt is POST only; Get Key Info is GET (and DELETE) only.
    let r = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/encrypt"), None)
        .await;
    assert_envelope(&r, 405, "100");
    let allow = r.headers.get("allow").expect("Allow").to_str().unwrap();
    assert!(allow.contains("POST"), "{allow}");
    let r = kms
        .call("PATCH", &format!("/kms/v1/keys/{tag}"), None)
        .await;
    assert_envelope(&r, 405, "100");
    let r = kms
        .call("GET", &format!("/keys/v2/{tag}/encrypt"), None)
        .await;
    assert_envelope(&r, 405, "100");
    // Not a NAVER path: as before.
    let r = kms.raw("GET", "/no/such/path", &[], None).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.body, serde_json::Value::Null);
}
