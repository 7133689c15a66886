//! NAVER's region-isolated keys (issue 13, section 1).
//!
//! NAVER's overview page: "On June 19, 2025, the Region isolation key
//! feature will be added to API 2.0 ... All keys created and in operation
//! before the feature is added will automatically be converted to global
//! keys, and there will be no change to the APIs you are using", with the
//! API 2.0 base URLs "Global: https://ocapi.ncloud.com - Isolation: Korea
//! (KR): https://ocapi-kr.ncloud.com - Isolation: Japan (JP):
//! https://ocapi-jp.ncloud.com". Its v3 pages, `keyTag`: "리전 격리 키는 리전
//! 접두어(예: kr-, jpn-)가 붙음. 키는 만든 리전의 API 주소로만 호출할 수
//! 있고, 다른 리전의 주소로 호출하면 400. 리전 접두어와 16진 문자의
//! 대소문자는 구분하지 않음. 길이: 64 ~ 68" (region-isolated keys carry a
//! region prefix, e.g. `kr-`, `jpn-`; a key can be called only at its
//! region's address, another region's address answers 400; the prefix and
//! the hex digits are not case-sensitive; 64 to 68 characters).
//!
//! hsm-kms: `naver.region = "kr"` makes this service the KR address (new
//! tags `kr-` + 64 hex); keys of another region are refused with 400; global
//! keys (no prefix) keep working everywhere.
// The engine's store and HSM ports are public to tests only with the
// `test-hooks` feature (scripts/test.sh builds with --all-features).
#![cfg(feature = "test-hooks")]

mod common;

use common::{b64, Kms};
use serde_json::json;

const HEX: &str = "f3a1c2d4e5b6978812345678abcdef0123456789abcdef0123456789abcdef01";

fn mixed_case(tag: &str) -> String {
    tag.char_indices()
        .map(|(i, c)| {
            if i % 2 == 0 {
                c.to_ascii_uppercase()
            } else {
                c
            }
        })
        .collect()
}

#[tokio::test]
async fn a_region_service_makes_prefixed_tags_in_any_case_and_refuses_other_regions() {
    let kms = Kms::start_with(|c| c.naver.region = "kr".into()).await;
    let tag = kms.create_key("kr-key", "AES256", json!({})).await;
    let hex = tag.strip_prefix("kr-").expect("a KR tag");
    assert_eq!(hex.len(), 64);
    assert!(hex
        .bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
    // The record points at this service.
    let r = kms.call("GET", &format!("/kms/v1/keys/{tag}"), None).await;
    assert_eq!(r.ok()["keyTag"], tag.as_str());
    assert_eq!(r.ok()["baseUrl"], kms.url);

    // Any case of the prefix and the hex reaches the same key; the answer
    // names it canonically, and the signature covers the path as sent.
    let ct = kms.encrypt(&tag, b"region", None).await;
    for spelling in [tag.to_uppercase(), mixed_case(&tag), format!("Kr-{hex}")] {
        let r = kms
            .call("GET", &format!("/kms/v1/keys/{spelling}"), None)
            .await;
        assert_eq!(r.ok()["keyTag"], tag.as_str(), "{spelling}");
        assert_eq!(kms.decrypt_ok(&spelling, &ct, None).await, b"region");
        // API 1.0 too.
        let r = kms
            .call(
                "POST",
                &format!("/keys/v2/{spelling}/decrypt"),
                Some(json!({"ciphertext": ct})),
            )
            .await;
        assert_eq!(r.ok()["plaintext"], b64(b"region"), "{spelling}");
    }
    // One key, one name in the activity log, whatever the spelling.
    let db = kms.db().await;
    let (other_names,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM activity_logs WHERE key_uid <> $1 AND lower(key_uid) = $1",
    )
    .bind(&tag)
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    assert_eq!(other_names, 0);

    // Token auth on an uppercase spelling: the token's keyTag claim is the
    // canonical tag.
    let upper = tag.to_uppercase();
    kms.call(
        "POST",
        &format!("/kms/v1/keys/{upper}/token-generator"),
        None,
    )
    .await
    .ok();
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{upper}/token-set"),
            Some(json!({})),
        )
        .await;
    let access = r.ok()["accessToken"].as_str().unwrap().to_string();
    let r = kms
        .raw(
            "POST",
            &format!("/kms/v1/keys/{}/encrypt", mixed_case(&tag)),
            &[("x-ncp-ocapi-token".to_string(), access)],
            Some(json!({"plaintext": b64(b"t")}).to_string().into_bytes()),
        )
        .await;
    r.ok();

    // A key of another region, on every route kind: 400 before anything.
    let jpn = format!("jpn-{HEX}");
    for (method, path) in [
        ("GET", format!("/kms/v1/keys/{jpn}")),
        ("POST", format!("/kms/v1/keys/{jpn}/encrypt")),
        (
            "POST",
            format!("/kms/v1/keys/JPN-{}/encrypt", HEX.to_uppercase()),
        ),
        ("POST", format!("/kms/v1/keys/{jpn}/token-set")),
        ("POST", format!("/keys/v2/{jpn}/encrypt")),
    ] {
        let r = kms
            .call(method, &path, Some(json!({"plaintext": b64(b"x")})))
            .await;
        r.assert_naver_error(400, "100");
        let d = r.body["error"]["details"].as_str().unwrap();
        assert!(d.contains("region jpn") && d.contains("region kr"), "{d}");
    }
    // A global key (no prefix) is still served here.
    let node = hsm_kms::core::Engine::with_options(
        kms.engine.hsm().clone(),
        kms.engine.store().clone(),
        hsm_kms::core::EngineOptions {
            activity_log: false,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let account = kms.engine.account_id("default").await.unwrap().unwrap();
    let global = node
        .create_key(
            account,
            hsm_kms::core::CreateKeyRequest {
                name: "global-key".into(),
                key_type: hsm_kms::core::KeyType::Aes256,
                memo: String::new(),
                is_convergent: false,
                is_auto_rotation: false,
                rotation_period: None,
                protection_type: "COMMON_HSM".into(),
            },
        )
        .await
        .unwrap()
        .key
        .uid
        .clone();
    assert_eq!(global.len(), 64, "a global tag has no prefix: {global}");
    let ct = kms.encrypt(&global.to_uppercase(), b"global", None).await;
    assert_eq!(kms.decrypt_ok(&global, &ct, None).await, b"global");
}

/// Without `naver.region` (the default) the service is the global address:
/// tags have no prefix, as before; any case of the hex works; a region's
/// key answers 400.
#[tokio::test]
async fn the_global_service_refuses_isolated_keys() {
    let kms = Kms::start().await;
    let tag = kms.create_key("global", "AES256", json!({})).await;
    assert_eq!(tag.len(), 64);
    let ct = kms.encrypt(&tag.to_uppercase(), b"g", None).await;
    assert_eq!(kms.decrypt_ok(&mixed_case(&tag), &ct, None).await, b"g");
    for prefix in ["kr-", "KR-", "jpn-"] {
        let r = kms
            .call("GET", &format!("/kms/v1/keys/{prefix}{HEX}"), None)
            .await;
        r.assert_naver_error(400, "100");
        assert!(
            r.body["error"]["details"]
                .as_str()
                .unwrap()
                .contains("global address"),
            "{}",
            r.body
        );
    }
    // Not a key tag at all: the lookup finds nothing, as before.
    let r = kms
        .call("GET", &format!("/kms/v1/keys/xx-{HEX}"), None)
        .await;
    r.assert_naver_error(404, "300");
}
