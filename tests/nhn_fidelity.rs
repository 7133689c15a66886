//! NHN Secure Key Manager behaviour as NHN's API v1.2 guide documents it
//! (issue 13, section 2; the guide: https://docs.nhncloud.com/en/Security/
//! Secure%20Key%20Manager/en/api-guide-v1.2/, the seed
//! `001_02a379f84cb8e0b0.txt`). Each test quotes the page it follows.
mod common;
#[path = "common/nhn.rs"]
mod nhn_t;

use common::Kms;
use nhn_t::{call, create_key, err, ok, project};
use serde_json::json;

/// The guide, "Common Data Header of API Response":
///
/// ```text
/// {
/// "header": {
/// "resultCode": 0,
/// "resultMessage": "success",
/// "isSuccessful": true
/// },
/// ```
#[tokio::test]
async fn the_success_header_reads_as_the_guide_writes_it() {
    let kms = Kms::start().await;
    let p = project(&kms, "header", true).await;
    nhn_t::key_store(&kms, &p, "S", false, false, false, false).await;
    let id = create_key(&kms, &p, "symmetric-keys", "S", json!({})).await;
    for (method, path, body) in [
        (
            "POST",
            format!("/symmetric-keys/{id}/encrypt"),
            Some(json!({"plaintext": "data"})),
        ),
        ("GET", "/keystores".to_string(), None),
        ("GET", "/confirm".to_string(), None),
    ] {
        let r = call(&kms, &p, method, &path, body).await;
        assert_eq!(
            r.body["header"],
            json!({"resultCode": 0, "resultMessage": "success", "isSuccessful": true}),
            "{method} {path}: {}",
            r.body
        );
    }
}

/// The guide, "Query the list of key IDs": "Users can query the list of
/// key IDs created in Secure Key Manager. GET .../keystores/{keyStoreId}/keys"
/// with no request parameter, answering `"keyIdList": [...]`; paging
/// ("pageNumber | Number | Page number (default: 1 ...)", "pageSize |
/// Number | Page size (default: 10, 10-100)") belongs to the detailed list,
/// `GET .../keys?detail={detail}&...&pageNumber={pageNumber}&pageSize={pageSize}`.
#[tokio::test]
async fn the_plain_key_id_list_has_every_id() {
    let kms = Kms::start().await;
    let p = project(&kms, "list", true).await;
    let ks = nhn_t::key_store(&kms, &p, "S", false, false, false, false).await;
    let mut made = Vec::new();
    for i in 0..12 {
        made.push(
            create_key(
                &kms,
                &p,
                "secrets",
                "S",
                json!({"name": format!("secret {i}"), "secretValue": "v"}),
            )
            .await,
        );
    }
    let list = |query: &'static str| {
        let (kms, p) = (&kms, &p);
        async move {
            let r = call(kms, p, "GET", &format!("/keystores/{ks}/keys{query}"), None).await;
            ok(&r).clone()
        }
    };
    // Every id, in creation order.
    let b = list("").await;
    let ids: Vec<String> = b["keyIdList"]
        .as_array()
        .expect("keyIdList")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, made);
    // Filters still apply.
    let b = list("?type=SECRET&name=secret%201").await;
    assert_eq!(b["keyIdList"].as_array().unwrap().len(), 3, "{b}"); // 1, 10, 11
                                                                    // The detailed list pages, 10 by default.
    let b = list("?detail=true").await;
    assert_eq!(b["keyList"].as_array().unwrap().len(), 10, "{b}");
    let b = list("?detail=true&pageNumber=2").await;
    assert_eq!(b["keyList"].as_array().unwrap().len(), 2, "{b}");
    // Paging asked for on the plain list is honoured.
    let b = list("?pageNumber=2&pageSize=10").await;
    assert_eq!(b["keyIdList"].as_array().unwrap().len(), 2, "{b}");
}

/// The guide's private- and public-key queries take `?keyVersion={keyVersion}`
/// ("keyVersion | Number | Asymmetric key version to retrieve") and their
/// example answers carry `"keyVersion": 0`; the symmetric-key query takes
/// the same parameter. A client that sends back the version the example
/// shows sends 0: it names the current version, as no `keyVersion` does.
#[tokio::test]
async fn key_version_zero_is_the_current_version() {
    let kms = Kms::start().await;
    let p = project(&kms, "versions", true).await;
    nhn_t::key_store(&kms, &p, "X", false, false, false, true).await;
    let rsa = create_key(
        &kms,
        &p,
        "asymmetric-keys",
        "X",
        json!({"autoRotationPeriod": 30}),
    )
    .await;
    let aes = create_key(
        &kms,
        &p,
        "symmetric-keys",
        "X",
        json!({"autoRotationPeriod": 30}),
    )
    .await;
    // A second version of each, by the scheduler.
    let db = kms.db().await;
    sqlx::query("UPDATE keys SET next_rotation_at = 1 WHERE dialect = 'nhn'")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    kms.engine.run_due_work().await.unwrap();
    for (path, field) in [
        (format!("/asymmetric-keys/{rsa}/publicKey"), "encodedKey"),
        (format!("/asymmetric-keys/{rsa}/privateKey"), "encodedKey"),
        (
            format!("/symmetric-keys/{aes}/symmetric-key"),
            "symmetricKey",
        ),
    ] {
        let get = |q: &'static str| {
            let (kms, p, path) = (&kms, &p, &path);
            async move { call(kms, p, "GET", &format!("{path}{q}"), None).await }
        };
        let current = get("").await;
        let current = ok(&current);
        assert_eq!(current["keyVersion"], 2, "{path}: {current}");
        let zero = get("?keyVersion=0").await;
        let zero = ok(&zero);
        assert_eq!(zero["keyVersion"], 2, "{path}: {zero}");
        assert_eq!(zero[field], current[field], "{path}");
        let first = get("?keyVersion=1").await;
        let first = ok(&first);
        assert_eq!(first["keyVersion"], 1, "{path}");
        assert_ne!(first[field], current[field], "{path}");
        err(&get("?keyVersion=-1").await, 400, -1000);
        err(&get("?keyVersion=3").await, 400, -1301);
    }
}

/// The guide's date-times carry no offset: `"creationDatetime":
/// "2025-01-25T12:00:00"`, `"lastChangeDatetime": "2025-01-30T15:00:00.000"`,
/// `"deletionDateTime": "2023-11-14T10:05:24.312"`. NHN Cloud is a Korean
/// service; its times are Korea Standard Time (UTC+09:00). hsm-kms writes
/// them as `YYYY-MM-DDTHH:MM:SS.mmm` in KST, no offset.
#[tokio::test]
async fn dates_are_korean_local_time_without_an_offset() {
    let kms = Kms::start().await;
    let p = project(&kms, "dates", true).await;
    let ks = nhn_t::key_store(&kms, &p, "S", false, false, false, false).await;
    let id = create_key(&kms, &p, "symmetric-keys", "S", json!({})).await;
    let r = call(&kms, &p, "PUT", &format!("/keys/{id}/delete"), None).await;
    let deletion = ok(&r)["deletionDateTime"].as_str().unwrap().to_string();
    let r = call(&kms, &p, "GET", &format!("/keystores/{ks}/keys/{id}"), None).await;
    let rec = ok(&r).clone();
    let db = kms.db().await;
    let (created, destroy_at): (i64, i64) =
        sqlx::query_as("SELECT created_at, destroy_at FROM keys WHERE uid = $1")
            .bind(&id)
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    // Computed here from the stored instants, independently of the server.
    let kst = |ms: i64| {
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .unwrap()
            .to_offset(time::UtcOffset::from_hms(9, 0, 0).unwrap());
        format!(
            "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    };
    assert_eq!(rec["creationDatetime"], kst(created), "{rec}");
    assert_eq!(rec["deletionDatetime"], kst(destroy_at), "{rec}");
    assert_eq!(deletion, kst(destroy_at));
    for field in ["creationDatetime", "lastChangeDatetime", "deletionDatetime"] {
        let s = rec[field].as_str().unwrap();
        assert_eq!(s.len(), "2025-01-30T15:00:00.000".len(), "{field}: {s}");
        assert!(!s.ends_with('Z') && !s[10..].contains('+'), "{field}: {s}");
    }
}

/// The guide's "Common Data Header of API Response": every answer carries
/// `"header": {"resultCode", "resultMessage", "isSuccessful"}` ("Result
/// code value of API call", "Whether API call is successful or not"). A
/// path under `/keymanager/` that no API serves, and an API called with a
/// method it does not serve, answer in that envelope (404 `-1900`, 405
/// `-1901` with `Allow`), not with an empty body (issue 13, section 1's
/// last item, for both dialects). Seen failing before the change: 404 and
/// 405 with an empty body.
#[tokio::test]
async fn unknown_apis_and_wrong_methods_answer_in_the_envelope() {
    let kms = Kms::start().await;
    let p = project(&kms, "routes", true).await;
    for (method, suffix) in [
        ("GET", "/no-such-api"),
        ("POST", "/symmetric-keys/abc/no-such-action"),
        ("GET", "/keystores/1/keys/abc/extra/segments"),
    ] {
        let r = call(&kms, &p, method, suffix, None).await;
        err(&r, 404, -1900);
        assert_eq!(r.body["body"], serde_json::Value::Null, "{}", r.body);
    }
    // An appkey that names no project: still the envelope, the route decides.
    let r = kms
        .raw("GET", "/keymanager/v1.2/nothing-here", &[], None)
        .await;
    err(&r, 404, -1900);
    // `confirm` is GET only; `encrypt` POST only.
    let r = call(&kms, &p, "DELETE", "/confirm", None).await;
    err(&r, 405, -1901);
    let allow = r.headers.get("allow").expect("Allow").to_str().unwrap();
    assert!(allow.contains("GET"), "{allow}");
    let r = call(&kms, &p, "GET", "/symmetric-keys/abc/encrypt", None).await;
    err(&r, 405, -1901);
    // The message does not echo the path: it carries the appkey, a bearer
    // credential.
    assert!(
        !r.body["header"]["resultMessage"]
            .as_str()
            .unwrap()
            .contains(&p.appkey),
        "{}",
        r.body
    );
}
