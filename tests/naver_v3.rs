//! NAVER KMS API v3 (`/kms/v3/...`, issue 15), written from the
//! `pub-kms-v3-*` pages (quoted where a test follows one) and
//! `docs/naver-v3.md` where the generated pages stop: every operation's
//! answer field by field, the documented errors in v3's envelope, the same
//! keys as API 2.0 and 1.0 both ways, and the activity log and per-key quota
//! applied exactly as to 2.0 calls.
mod common;

use common::independent::{ecdsa_verify, rsa_verify, RsaPadding};
use common::v3::{assert_v3_error, ok};
use common::{b64, unb64, Kms, Reply};
use serde_json::{json, Value};

async fn v3(kms: &Kms, method: &str, path: &str, body: Option<Value>) -> Reply {
    kms.call(method, &format!("/kms/v3{path}"), body).await
}

async fn create(kms: &Kms, name: &str, key_type: &str, extra: Value) -> Value {
    let mut body = json!({
        "keyName": name,
        "keyType": key_type,
        "protectionType": "BASIC",
        "rotation": {"enabled": false},
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = v3(kms, "POST", "/keys", Some(body)).await;
    ok(&r, 201).clone()
}

async fn tag_of(kms: &Kms, name: &str, key_type: &str) -> String {
    create(kms, name, key_type, json!({})).await["keyTag"]
        .as_str()
        .unwrap()
        .to_string()
}

async fn encrypt(kms: &Kms, tag: &str, pt: &[u8]) -> String {
    let r = v3(
        kms,
        "POST",
        &format!("/keys/{tag}/encrypt"),
        Some(json!({"plaintext": b64(pt)})),
    )
    .await;
    ok(&r, 200)["ciphertext"].as_str().unwrap().to_string()
}

async fn decrypt(kms: &Kms, tag: &str, ct: &str) -> Reply {
    v3(
        kms,
        "POST",
        &format!("/keys/{tag}/decrypt"),
        Some(json!({"ciphertext": ct})),
    )
    .await
}

fn is_rfc3339_utc(s: &str) -> bool {
    s.len() >= 20 && s.as_bytes()[10] == b'T' && s.ends_with('Z')
}

/// createKey, getKey, listKeys, listKeyVersions, getKeyVersion,
/// createKeyVersion.
#[tokio::test]
async fn key_management_field_by_field() {
    let kms = Kms::start().await;
    // createKey: "생성한 키는 ENABLED 상태입니다."
    let k = create(
        &kms,
        "v3-aes",
        "AES256",
        json!({"memo": "payment data key"}),
    )
    .await;
    let tag = k["keyTag"].as_str().unwrap().to_string();
    assert_eq!(tag.len(), 64);
    assert!(tag
        .bytes()
        .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
    assert_eq!(k["keyName"], "v3-aes");
    assert!(
        k["nrn"].as_str().unwrap().starts_with("nrn:PUB:KMS::"),
        "{k}"
    );
    assert_eq!(k["keyType"], "AES256");
    assert_eq!(k["protectionType"], "BASIC");
    assert_eq!(k["status"], "ENABLED");
    assert_eq!(k["memo"], "payment data key");
    assert_eq!(k["convergent"], false);
    assert_eq!(k["currentVersion"], 1);
    // "rotation.enabled 가 false 이면 ... periodDays 는 0 입니다."
    assert_eq!(k["rotation"], json!({"enabled": false, "periodDays": 0}));
    assert!(is_rfc3339_utc(k["createdAt"].as_str().unwrap()), "{k}");
    // "rotation.enabled 가 true 이고 rotation.periodDays 를 지정하지 않으면 주기는 90일"
    let r = create(
        &kms,
        "v3-rot",
        "RSA2048",
        json!({"rotation": {"enabled": true}}),
    )
    .await;
    assert_eq!(r["rotation"], json!({"enabled": true, "periodDays": 90}));
    let c = create(&kms, "v3-conv", "AES256", json!({"convergent": true})).await;
    assert_eq!(c["convergent"], true);

    // createKey errors.
    for (body, status, code) in [
        (
            json!({"keyType": "AES256", "protectionType": "BASIC", "rotation": {"enabled": false}}),
            400,
            "InvalidParameter",
        ),
        (
            json!({"keyName": "1bad", "keyType": "AES256", "protectionType": "BASIC", "rotation": {"enabled": false}}),
            400,
            "InvalidParameter",
        ),
        (
            json!({"keyName": "okname", "keyType": "DES", "protectionType": "BASIC", "rotation": {"enabled": false}}),
            400,
            "InvalidParameter",
        ),
        (
            json!({"keyName": "okname", "keyType": "AES256", "protectionType": "COMMON_HSM", "rotation": {"enabled": false}}),
            400,
            "InvalidParameter",
        ),
        (
            json!({"keyName": "okname", "keyType": "AES256", "protectionType": "BASIC"}),
            400,
            "InvalidParameter",
        ),
        // "조회 응답의 periodDays: 0 을 생성 요청에 그대로 넣으면 InvalidParameter"
        (
            json!({"keyName": "okname", "keyType": "AES256", "protectionType": "BASIC", "rotation": {"enabled": false, "periodDays": 0}}),
            400,
            "InvalidParameter",
        ),
        // "convergent 는 AES256 키에서만 true 로 지정할 수 있습니다."
        (
            json!({"keyName": "okname", "keyType": "RSA2048", "protectionType": "BASIC", "convergent": true, "rotation": {"enabled": false}}),
            400,
            "InvalidParameter",
        ),
        (
            json!({"keyName": "okname", "keyType": "AES256", "protectionType": "BASIC", "memo": "", "rotation": {"enabled": false}}),
            400,
            "InvalidParameter",
        ),
        (
            json!({"keyName": "okname", "keyType": "AES256", "protectionType": "BASIC", "rotation": {"enabled": false}, "extra": 1}),
            400,
            "InvalidParameter",
        ),
        (
            json!({"keyName": "v3-aes", "keyType": "AES256", "protectionType": "BASIC", "rotation": {"enabled": false}}),
            409,
            "Conflict",
        ),
    ] {
        let r = v3(&kms, "POST", "/keys", Some(body.clone())).await;
        assert_v3_error(&r, status, code);
    }

    // getKey, the tag in any case.
    let r = v3(&kms, "GET", &format!("/keys/{tag}"), None).await;
    assert_eq!(ok(&r, 200), &k);
    let r = v3(&kms, "GET", &format!("/keys/{}", tag.to_uppercase()), None).await;
    assert_eq!(ok(&r, 200)["keyTag"], tag);
    assert_v3_error(
        &v3(&kms, "GET", "/keys/not-a-tag", None).await,
        400,
        "InvalidParameter",
    );
    assert_v3_error(
        &v3(&kms, "GET", &format!("/keys/{}", "ab".repeat(32)), None).await,
        404,
        "ResourceNotFound",
    );
    // Another account's key is not found.
    let (ak, sk) = kms.second_account("other").await;
    let r = kms
        .call_as(&ak, &sk, "GET", &format!("/kms/v3/keys/{tag}"), None)
        .await;
    assert_v3_error(&r, 404, "ResourceNotFound");
    // No signature: AuthFailure.
    let r = kms
        .raw("GET", &format!("/kms/v3/keys/{tag}"), &[], None)
        .await;
    assert_v3_error(&r, 401, "AuthFailure");

    // listKeys: pageNo from 0, pageSize 20 by default.
    let r = v3(&kms, "GET", "/keys", None).await;
    let l = ok(&r, 200);
    assert_eq!(l["pageNo"], 0);
    assert_eq!(l["pageSize"], 20);
    assert_eq!(l["totalCount"], 3);
    assert_eq!(l["keys"].as_array().unwrap().len(), 3);
    assert!(l["keys"].as_array().unwrap().iter().any(|x| x == &k));
    let r = v3(&kms, "GET", "/keys?pageNo=1&pageSize=2", None).await;
    let l = ok(&r, 200);
    assert_eq!(l["keys"].as_array().unwrap().len(), 1);
    assert_eq!(l["pageNo"], 1);
    // "10진 정수 표기만 받음(0x10·1e1 은 400)"
    for q in [
        "pageNo=0x1",
        "pageSize=1e1",
        "pageSize=0",
        "pageSize=201",
        "pageNo=-1",
        "pageNo=2147483646&pageSize=2",
    ] {
        assert_v3_error(
            &v3(&kms, "GET", &format!("/keys?{q}"), None).await,
            400,
            "InvalidParameter",
        );
    }

    // createKeyVersion: "키를 회전하여 새 버전을 만듭니다."
    let r = v3(&kms, "POST", &format!("/keys/{tag}/versions"), None).await;
    assert_eq!(
        ok(&r, 201),
        &json!({"version": 2, "status": "ENABLED", "current": true})
    );
    let r = v3(&kms, "GET", &format!("/keys/{tag}"), None).await;
    assert_eq!(ok(&r, 200)["currentVersion"], 2);
    let r = v3(&kms, "GET", &format!("/keys/{tag}/versions"), None).await;
    let l = ok(&r, 200);
    assert_eq!(
        l["versions"],
        json!([
            {"version": 1, "status": "ENABLED", "current": false},
            {"version": 2, "status": "ENABLED", "current": true},
        ])
    );
    assert_eq!(l["totalCount"], 2);
    assert_eq!(
        (l["pageNo"].clone(), l["pageSize"].clone()),
        (json!(0), json!(20))
    );
    let r = v3(
        &kms,
        "GET",
        &format!("/keys/{tag}/versions?pageNo=1&pageSize=1"),
        None,
    )
    .await;
    assert_eq!(
        ok(&r, 200)["versions"],
        json!([{"version": 2, "status": "ENABLED", "current": true}])
    );
    let r = v3(&kms, "GET", &format!("/keys/{tag}/versions/1"), None).await;
    assert_eq!(
        ok(&r, 200),
        &json!({"version": 1, "status": "ENABLED", "current": false})
    );
    // A version disabled through 2.0 shows as DISABLED.
    kms.call(
        "POST",
        &format!("/kms/v1/keys/{tag}/versions/1/disable"),
        None,
    )
    .await
    .ok();
    let r = v3(&kms, "GET", &format!("/keys/{tag}/versions/1"), None).await;
    assert_eq!(ok(&r, 200)["status"], "DISABLED");
    assert_v3_error(
        &v3(&kms, "GET", &format!("/keys/{tag}/versions/3"), None).await,
        404,
        "ResourceNotFound",
    );
    // "10진 정수 표기만 받음(0x1 은 400)"
    assert_v3_error(
        &v3(&kms, "GET", &format!("/keys/{tag}/versions/0x1"), None).await,
        400,
        "InvalidParameter",
    );
    assert_v3_error(
        &v3(&kms, "GET", &format!("/keys/{tag}/versions/0"), None).await,
        400,
        "InvalidParameter",
    );
}

/// encrypt, decrypt, reEncrypt, issueCustomKey on AES256 keys.
#[tokio::test]
async fn aes_cipher_calls() {
    let kms = Kms::start().await;
    let tag = tag_of(&kms, "v3-aes", "AES256").await;
    let ct = encrypt(&kms, &tag, b"hello v3").await;
    assert!(ct.starts_with("ncpkms:v1:"), "{ct}");
    let r = decrypt(&kms, &tag, &ct).await;
    assert_eq!(ok(&r, 200), &json!({"plaintext": b64(b"hello v3")}));
    // The tag in upper case is the same key.
    let r = decrypt(&kms, &tag.to_uppercase(), &ct).await;
    assert_eq!(ok(&r, 200)["plaintext"], b64(b"hello v3"));

    // "AES256 32768바이트" is the plaintext limit.
    let max = vec![5u8; 32768];
    let big = encrypt(&kms, &tag, &max).await;
    assert_eq!(
        unb64(
            ok(&decrypt(&kms, &tag, &big).await, 200)["plaintext"]
                .as_str()
                .unwrap()
        ),
        max
    );
    for body in [
        json!({"plaintext": b64(&[5u8; 32769])}),
        json!({}),
        json!({"plaintext": ""}),
        json!({"plaintext": "not base64!"}),
        json!({"plaintext": [b64(b"a")]}),
        json!({"plaintext": b64(b"x"), "unknown": 1}),
        // "문자열이 아닌 값(숫자 등)은 키 유형과 관계없이 400"
        json!({"plaintext": b64(b"x"), "context": 3}),
    ] {
        let r = v3(
            &kms,
            "POST",
            &format!("/keys/{tag}/encrypt"),
            Some(body.clone()),
        )
        .await;
        assert_v3_error(&r, 400, "InvalidParameter");
    }
    // "컨버전트 키가 아니면 ... 문자열 값은 형식과 관계없이 무시"
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{tag}/encrypt"),
        Some(json!({"plaintext": b64(b"c"), "context": "%%%"})),
    )
    .await;
    let c = ok(&r, 200)["ciphertext"].as_str().unwrap().to_string();
    assert_eq!(
        ok(&decrypt(&kms, &tag, &c).await, 200)["plaintext"],
        b64(b"c")
    );

    // decrypt errors.
    let (_, body) = ct.rsplit_once(':').unwrap();
    let mut raw = unb64(body);
    raw[13] ^= 1;
    assert_v3_error(
        &decrypt(&kms, &tag, &format!("ncpkms:v1:{}", b64(&raw))).await,
        400,
        "InvalidParameter",
    );
    assert_v3_error(&decrypt(&kms, &tag, body).await, 400, "InvalidParameter");
    assert_v3_error(
        &decrypt(&kms, &tag, "ncpkms:v0:AAAA").await,
        400,
        "InvalidParameter",
    );
    assert_v3_error(
        &decrypt(&kms, &tag, &format!("ncpkms:v9:{body}")).await,
        404,
        "ResourceNotFound",
    );
    // "디코딩한 크기는 ... AES256 32796바이트" at most.
    assert_v3_error(
        &decrypt(&kms, &tag, &format!("ncpkms:v1:{}", b64(&[0u8; 32797]))).await,
        400,
        "InvalidParameter",
    );

    // reEncrypt moves a ciphertext to the current version.
    ok(
        &v3(&kms, "POST", &format!("/keys/{tag}/versions"), None).await,
        201,
    );
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{tag}/re-encrypt"),
        Some(json!({"ciphertext": ct})),
    )
    .await;
    let re = ok(&r, 200)["ciphertext"].as_str().unwrap().to_string();
    assert!(re.starts_with("ncpkms:v2:"), "{re}");
    assert_eq!(
        ok(&decrypt(&kms, &tag, &re).await, 200)["plaintext"],
        b64(b"hello v3")
    );
    // A disabled version: 403 Forbidden.
    kms.call(
        "POST",
        &format!("/kms/v1/keys/{tag}/versions/1/disable"),
        None,
    )
    .await
    .ok();
    assert_v3_error(&decrypt(&kms, &tag, &ct).await, 403, "Forbidden");

    // issueCustomKey.
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{tag}/issue-custom-key"),
        Some(json!({"bits": 128, "requestPlainKey": true})),
    )
    .await;
    let ck = ok(&r, 200).clone();
    assert_eq!(ck["version"], 2);
    assert_eq!(unb64(ck["plaintext"].as_str().unwrap()).len(), 16);
    let r = decrypt(&kms, &tag, ck["ciphertext"].as_str().unwrap()).await;
    assert_eq!(ok(&r, 200)["plaintext"], ck["plaintext"]);
    // "요청 본문을 생략하면 256비트 데이터 키를 발급하고 암호화한 데이터 키만 반환"
    let r = v3(&kms, "POST", &format!("/keys/{tag}/issue-custom-key"), None).await;
    assert!(ok(&r, 200).get("plaintext").is_none());
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{tag}/issue-custom-key"),
        Some(json!({"bits": "128"})),
    )
    .await;
    assert_v3_error(&r, 400, "InvalidParameter");
    assert_v3_error(
        &v3(
            &kms,
            "POST",
            &format!("/keys/{tag}/issue-custom-key"),
            Some(json!({"bits": 100})),
        )
        .await,
        400,
        "InvalidParameter",
    );

    // Convergent: "같은 키 버전에서는 같은 context 와 평문이 항상 같은 암호문"
    let conv = create(&kms, "v3-conv", "AES256", json!({"convergent": true})).await["keyTag"]
        .as_str()
        .unwrap()
        .to_string();
    let body = json!({"plaintext": b64(b"same"), "context": b64(b"user-123")});
    let a = v3(
        &kms,
        "POST",
        &format!("/keys/{conv}/encrypt"),
        Some(body.clone()),
    )
    .await;
    let b = v3(&kms, "POST", &format!("/keys/{conv}/encrypt"), Some(body)).await;
    assert_eq!(ok(&a, 200), ok(&b, 200));
    // "컨버전트 키에서는 필수", its format checked there.
    for body in [
        json!({"plaintext": b64(b"same")}),
        json!({"plaintext": b64(b"same"), "context": "%%%"}),
        json!({"plaintext": b64(b"same"), "context": b64(&[1u8; 51])}),
    ] {
        let r = v3(&kms, "POST", &format!("/keys/{conv}/encrypt"), Some(body)).await;
        assert_v3_error(&r, 400, "InvalidParameter");
    }
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{conv}/decrypt"),
        Some(json!({"ciphertext": a.body["ciphertext"], "context": b64(b"user-123")})),
    )
    .await;
    assert_eq!(ok(&r, 200)["plaintext"], b64(b"same"));
}

/// sign, verify, getPublicKey on RSA2048 and ECDSA keys, RSA encryption.
#[tokio::test]
async fn asymmetric_calls() {
    let kms = Kms::start().await;
    let rsa = tag_of(&kms, "v3-rsa", "RSA2048").await;
    let data = b"data, not a digest";
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{rsa}/sign"),
        Some(json!({"data": b64(data)})),
    )
    .await;
    let sig = ok(&r, 200)["signature"].as_str().unwrap().to_string();
    assert!(sig.starts_with("ncpkms:v1:"), "{sig}");
    let raw = unb64(sig.rsplit_once(':').unwrap().1);
    // getPublicKey: PEM; "RSA2048 은 RSASSA-PSS(SHA-256, MGF1-SHA256, salt 길이 222바이트)"
    let r = v3(
        &kms,
        "GET",
        &format!("/keys/{rsa}/versions/1/public-key"),
        None,
    )
    .await;
    let pk = ok(&r, 200).clone();
    assert_eq!(pk["keyTag"], rsa);
    assert_eq!(pk["version"], 1);
    let pem = pk["publicKey"].as_str().unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pem}");
    assert!(rsa_verify(pem, data, &raw, RsaPadding::Pss222));

    let verify = |d: &[u8], s: &str| json!({"data": b64(d), "signature": s});
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{rsa}/verify"),
        Some(verify(data, &sig)),
    )
    .await;
    assert_eq!(ok(&r, 200), &json!({"valid": true}));
    // "서명이 일치하지 않으면 오류가 아니라 valid: false"
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{rsa}/verify"),
        Some(verify(b"other", &sig)),
    )
    .await;
    assert_eq!(ok(&r, 200), &json!({"valid": false}));
    // "RSA2048 키는 서명 길이가 256바이트가 아니면 ... valid: false"
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{rsa}/verify"),
        Some(verify(data, &format!("ncpkms:v1:{}", b64(&[1u8; 64])))),
    )
    .await;
    assert_eq!(ok(&r, 200), &json!({"valid": false}));
    // "그 버전이 검증하는 키에 없으면 ResourceNotFound"
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{rsa}/verify"),
        Some(verify(data, &format!("ncpkms:v7:{}", b64(&raw)))),
    )
    .await;
    assert_v3_error(&r, 404, "ResourceNotFound");
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{rsa}/verify"),
        Some(verify(data, &b64(&raw))),
    )
    .await;
    assert_v3_error(&r, 400, "InvalidParameter");
    // "디코딩 8192바이트 이하"
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{rsa}/sign"),
        Some(json!({"data": b64(&[0u8; 8193])})),
    )
    .await;
    assert_v3_error(&r, 400, "InvalidParameter");
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{rsa}/sign"),
        Some(json!({"data": b64(&[0u8; 8192])})),
    )
    .await;
    ok(&r, 200);

    // RSA2048 encryption: "RSA2048 190바이트".
    let ct = encrypt(&kms, &rsa, &[9u8; 190]).await;
    assert_eq!(
        unb64(
            ok(&decrypt(&kms, &rsa, &ct).await, 200)["plaintext"]
                .as_str()
                .unwrap()
        ),
        vec![9u8; 190]
    );
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{rsa}/encrypt"),
        Some(json!({"plaintext": b64(&[9u8; 191])})),
    )
    .await;
    assert_v3_error(&r, 400, "InvalidParameter");
    assert_v3_error(
        &decrypt(&kms, &rsa, &format!("ncpkms:v1:{}", b64(&[1u8; 257]))).await,
        400,
        "InvalidParameter",
    );

    // getPublicKey errors.
    assert_v3_error(
        &v3(
            &kms,
            "GET",
            &format!("/keys/{rsa}/versions/2/public-key"),
            None,
        )
        .await,
        404,
        "ResourceNotFound",
    );
    assert_v3_error(
        &v3(
            &kms,
            "GET",
            &format!("/keys/{rsa}/versions/+1/public-key"),
            None,
        )
        .await,
        400,
        "InvalidParameter",
    );
    let aes = tag_of(&kms, "v3-aes", "AES256").await;
    assert_v3_error(
        &v3(
            &kms,
            "GET",
            &format!("/keys/{aes}/versions/1/public-key"),
            None,
        )
        .await,
        400,
        "InvalidParameter",
    );
    assert_v3_error(
        &v3(
            &kms,
            "POST",
            &format!("/keys/{aes}/sign"),
            Some(json!({"data": b64(data)})),
        )
        .await,
        400,
        "InvalidParameter",
    );

    // ECDSA: "P-256 이며 서명은 DER".
    let ec = tag_of(&kms, "v3-ec", "ECDSA").await;
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{ec}/sign"),
        Some(json!({"data": b64(data)})),
    )
    .await;
    let esig = ok(&r, 200)["signature"].as_str().unwrap().to_string();
    let eraw = unb64(esig.rsplit_once(':').unwrap().1);
    assert_eq!(eraw[0], 0x30, "DER SEQUENCE");
    let r = v3(
        &kms,
        "GET",
        &format!("/keys/{ec}/versions/1/public-key"),
        None,
    )
    .await;
    let epem = ok(&r, 200)["publicKey"].as_str().unwrap().to_string();
    assert!(ecdsa_verify(&epem, data, &eraw));
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{ec}/verify"),
        Some(verify(data, &esig)),
    )
    .await;
    assert_eq!(ok(&r, 200), &json!({"valid": true}));
    // "ECDSA 키는 서명을 ECDSA 서명으로 해석할 수 없으면 ... InvalidParameter"
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{ec}/verify"),
        Some(verify(data, &sig)),
    )
    .await;
    assert_v3_error(&r, 400, "InvalidParameter");
    // ... and an ECDSA signature checked by an RSA key is valid: false.
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{rsa}/verify"),
        Some(verify(data, &esig)),
    )
    .await;
    assert_eq!(ok(&r, 200), &json!({"valid": false}));
    assert_v3_error(
        &v3(
            &kms,
            "POST",
            &format!("/keys/{ec}/encrypt"),
            Some(json!({"plaintext": b64(b"x")})),
        )
        .await,
        400,
        "InvalidParameter",
    );
}

/// The same keys through v3, 2.0 and 1.0, both ways.
#[tokio::test]
async fn cross_api_on_the_same_keys() {
    let kms = Kms::start().await;
    // A key made through 2.0.
    let tag = kms.create_key("x-aes", "AES256", json!({})).await;
    // v3 encrypt -> 2.0 and 1.0 decrypt.
    let ct = encrypt(&kms, &tag, b"from v3").await;
    assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, b"from v3");
    let r = kms
        .call(
            "POST",
            &format!("/keys/v2/{tag}/decrypt"),
            Some(json!({"ciphertext": ct})),
        )
        .await;
    assert_eq!(r.body["data"]["plaintext"], b64(b"from v3"), "{}", r.body);
    // 2.0 and 1.0 encrypt -> v3 decrypt.
    let ct2 = kms.encrypt(&tag, b"from 2.0", None).await;
    assert_eq!(
        ok(&decrypt(&kms, &tag, &ct2).await, 200)["plaintext"],
        b64(b"from 2.0")
    );
    let r = kms
        .call(
            "POST",
            &format!("/keys/v2/{tag}/encrypt"),
            Some(json!({"plaintext": b64(b"from 1.0")})),
        )
        .await;
    let ct1 = r.body["data"]["ciphertext"].as_str().unwrap().to_string();
    assert_eq!(
        ok(&decrypt(&kms, &tag, &ct1).await, 200)["plaintext"],
        b64(b"from 1.0")
    );
    // A key made through 2.0 is a v3 key.
    let r = v3(&kms, "GET", &format!("/keys/{tag}"), None).await;
    assert_eq!(ok(&r, 200)["protectionType"], "COMMON_HSM");

    // A v3 signature verified by 1.0 and 2.0, and by an independent library
    // from the v3 public key; a 2.0 signature verified by v3.
    let made = create(&kms, "x-rsa", "RSA2048", json!({})).await;
    let rsa = made["keyTag"].as_str().unwrap().to_string();
    let data = b"signed through v3";
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{rsa}/sign"),
        Some(json!({"data": b64(data)})),
    )
    .await;
    let sig = ok(&r, 200)["signature"].as_str().unwrap().to_string();
    let r = kms
        .call(
            "POST",
            &format!("/keys/v2/{rsa}/verify"),
            Some(json!({"data": b64(data), "signature": sig})),
        )
        .await;
    assert_eq!(r.body["code"], "SUCCESS", "{}", r.body);
    assert_eq!(r.body["data"]["valid"], true, "{}", r.body);
    let r = kms
        .op(&rsa, "verify", json!({"data": b64(data), "signature": sig}))
        .await;
    assert_eq!(r.ok()["valid"], true);
    let r = v3(
        &kms,
        "GET",
        &format!("/keys/{rsa}/versions/1/public-key"),
        None,
    )
    .await;
    let pem = ok(&r, 200)["publicKey"].as_str().unwrap().to_string();
    assert!(rsa_verify(
        &pem,
        data,
        &unb64(sig.rsplit_once(':').unwrap().1),
        RsaPadding::Pss222
    ));
    let r = kms.op(&rsa, "sign", json!({"data": b64(data)})).await;
    let sig2 = r.ok()["signature"].as_str().unwrap().to_string();
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{rsa}/verify"),
        Some(json!({"data": b64(data), "signature": sig2})),
    )
    .await;
    assert_eq!(ok(&r, 200)["valid"], true);
    // 2.0's public key is v3's.
    let r = kms.op(&rsa, "get-pub-key", json!({"keyVersion": 1})).await;
    assert_eq!(r.ok()["publicKey"], pem.as_str());
}

async fn records(kms: &Kms, tag: &str) -> Vec<(String, String, String)> {
    let db = kms.db().await;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT action, auth_type, result FROM activity_logs WHERE key_uid = $1 ORDER BY id",
    )
    .bind(tag)
    .fetch_all(&db)
    .await
    .expect("activity records");
    db.close().await;
    rows
}

/// Every v3 call is an activity record as the 2.0 call is (same action
/// names), and the cipher calls take the key's quota as 2.0's do: one bucket
/// per key whatever the API and whatever the case of the tag, 429 with
/// `Retry-After`, nothing taken by a call that fails authentication.
#[tokio::test]
async fn activity_log_and_quota_as_for_2_0() {
    const BURST: u32 = 4;
    let kms = Kms::start_with(|c| {
        c.rate_limit.profile = "custom".into();
        c.rate_limit.requests_per_second = 1;
        c.rate_limit.burst = BURST;
    })
    .await;
    let tag = tag_of(&kms, "quota", "AES256").await;
    let ct = encrypt(&kms, &tag, b"a").await;
    // An unauthenticated call takes nothing and is not recorded.
    let r = kms
        .raw(
            "POST",
            &format!("/kms/v3/keys/{tag}/decrypt"),
            &[],
            Some(json!({"ciphertext": ct}).to_string().into_bytes()),
        )
        .await;
    assert_v3_error(&r, 401, "AuthFailure");
    // Decrypts through three spellings of the key (v3, v3 in upper case,
    // 2.0) until the key's bucket is empty. Three buckets would serve three
    // bursts; one bucket serves one (plus what refills meanwhile: 1/s).
    let mut served = 1; // the encrypt
    let mut refused = None;
    for i in 0..(3 * BURST + 3) {
        let r = match i % 3 {
            0 => decrypt(&kms, &tag, &ct).await,
            1 => decrypt(&kms, &tag.to_uppercase(), &ct).await,
            _ => kms.decrypt(&tag, &ct, None).await,
        };
        if r.status == 429 {
            refused = Some((i % 3, r));
            break;
        }
        assert_eq!(r.status, 200, "{}", r.body);
        served += 1;
    }
    let (api, r) = refused.expect("the key's quota never ran out");
    assert!(
        (BURST..=BURST + 1).contains(&served),
        "{served} calls served on a burst of {BURST}: one bucket per key"
    );
    if api == 2 {
        r.assert_naver_error(429, "400");
    } else {
        assert_v3_error(&r, 429, "TooManyRequests");
    }
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);
    // Management calls are not rate limited.
    ok(&v3(&kms, "GET", &format!("/keys/{tag}"), None).await, 200);

    let got = records(&kms, &tag).await;
    assert_eq!(
        got.first().map(|r| r.0.as_str()),
        Some("CreateKey"),
        "{got:?}"
    );
    assert_eq!(
        got.last().map(|r| r.0.as_str()),
        Some("GetKeyInfo"),
        "{got:?}"
    );
    assert!(got.iter().all(|r| r.1 == "ACCOUNT"), "{got:?}");
    let count = |action: &str, result: &str| {
        got.iter()
            .filter(|r| r.0 == action && r.2 == result)
            .count() as u32
    };
    assert_eq!(count("Encrypt", "SUCCESS"), 1, "{got:?}");
    assert_eq!(count("Decrypt", "SUCCESS"), served - 1, "{got:?}");
    assert_eq!(
        count("Decrypt", "FAIL"),
        1,
        "the refused call is recorded: {got:?}"
    );
    assert_eq!(got.len() as u32, served + 3, "{got:?}");
}
