//! NAVER KMS API v3, the rest of issue 15: token auth under
//! `/kms/v3/token/keys/...` and the token issue calls, the batch cipher
//! calls, the IP ACL and the activity-log query, written from the
//! `pub-kms-v3-*` pages (quoted where a test follows one) and
//! `docs/naver-v3.md` where the generated pages stop. Tokens, ACL, log and
//! quota are API 2.0's: every test crosses to 2.0 and back.
mod common;

use common::independent::{rsa_verify, RsaPadding};
use common::v3::{assert_v3_error, ok};
use common::{b64, unb64, Kms, Reply};
use serde_json::{json, Value};

async fn v3(kms: &Kms, method: &str, path: &str, body: Option<Value>) -> Reply {
    kms.call(method, &format!("/kms/v3{path}"), body).await
}

/// A call with an `x-ncp-ocapi-token` and nothing else.
async fn with_token(
    kms: &Kms,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Reply {
    kms.raw(
        method,
        path,
        &[("x-ncp-ocapi-token".to_string(), token.to_string())],
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
}

async fn tag_of(kms: &Kms, name: &str, key_type: &str, extra: Value) -> String {
    let mut body = json!({
        "keyName": name, "keyType": key_type, "protectionType": "BASIC",
        "rotation": {"enabled": false},
    });
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = v3(kms, "POST", "/keys", Some(body)).await;
    ok(&r, 201)["keyTag"].as_str().unwrap().to_string()
}

async fn generator(kms: &Kms, tag: &str) {
    let r = kms
        .call("POST", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// (access, refresh) through v3's issueKeyTokens.
async fn v3_tokens(kms: &Kms, tag: &str, body: Value) -> (String, String) {
    let r = v3(
        kms,
        "POST",
        &format!("/keys/{tag}/issue-tokens"),
        Some(body),
    )
    .await;
    let b = ok(&r, 200);
    assert_eq!(b.as_object().unwrap().len(), 2, "{b}");
    let a = b["accessToken"].as_str().unwrap().to_string();
    let f = b["refreshToken"].as_str().unwrap().to_string();
    assert_eq!(a.split('.').count(), 3, "a JWT: {a}");
    assert_eq!(f.split('.').count(), 3, "a JWT: {f}");
    (a, f)
}

/// Failure map of a batch answer: index -> errorCode.
fn failures(r: &Reply, status: u16) -> Vec<(String, String)> {
    assert_eq!(r.status, status, "body: {}", r.body);
    assert!(r.body.get("error").is_none(), "{}", r.body);
    assert!(r.body.get("results").is_none(), "atomic: {}", r.body);
    assert!(
        r.headers.contains_key("x-ncp-request-id"),
        "{:?}",
        r.headers
    );
    let f = r.body["failures"].as_object().expect("failures");
    f.iter()
        .map(|(i, e)| {
            assert!(e["message"].is_string() && e["detail"].is_string(), "{e}");
            (i.clone(), e["errorCode"].as_str().unwrap().to_string())
        })
        .collect()
}

/// issueKeyTokens, reissueKeyTokens, issueKeyAccessToken and every token
/// cipher call, on the same token sets as API 2.0 both ways.
#[tokio::test]
async fn token_calls_on_2_0_token_sets_both_ways() {
    let kms = Kms::start().await;
    let tag = tag_of(&kms, "tok-aes", "AES256", json!({})).await;
    // "토큰 생성기가 활성화되어 있어야 합니다": none yet (409, the key's
    // state refuses the call).
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{tag}/issue-tokens"),
        Some(json!({})),
    )
    .await;
    assert_v3_error(&r, 409, "Conflict");
    generator(&kms, &tag).await;

    // Lifetimes: integers only ("30.0·\"30\" 은 400"), 1..1,051,200, not
    // with accessTokenUnlimited.
    for bad in [
        json!({"accessTokenMinutes": 30.0}),
        json!({"accessTokenMinutes": "30"}),
        json!({"accessTokenMinutes": 0}),
        json!({"accessTokenMinutes": 1_051_201}),
        json!({"accessTokenMinutes": 30, "accessTokenUnlimited": true}),
        json!({"refreshTokenHours": 17_521}),
        json!({"bogus": 1}),
    ] {
        let r = v3(
            &kms,
            "POST",
            &format!("/keys/{tag}/issue-tokens"),
            Some(bad.clone()),
        )
        .await;
        assert_v3_error(&r, 400, "InvalidParameter");
    }
    let (access, refresh) = v3_tokens(&kms, &tag, json!({"accessTokenMinutes": 30})).await;
    let (_, _) = v3_tokens(&kms, &tag, json!({"accessTokenUnlimited": true})).await;
    // An empty body takes the defaults.
    let (_, _) = v3_tokens(&kms, &tag, json!({})).await;

    // encryptWithToken -> 2.0 decrypt (account auth).
    let base = format!("/kms/v3/token/keys/{tag}");
    let r = with_token(
        &kms,
        &access,
        "POST",
        &format!("{base}/encrypt"),
        Some(json!({"plaintext": b64(b"by v3 token")})),
    )
    .await;
    let ct = ok(&r, 200)["ciphertext"].as_str().unwrap().to_string();
    assert!(ct.starts_with("ncpkms:v1:"), "{ct}");
    assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, b"by v3 token");
    // decryptWithToken, reEncryptWithToken, issueCustomKeyWithToken.
    let ct2 = kms.encrypt(&tag, b"by 2.0", None).await;
    let r = with_token(
        &kms,
        &access,
        "POST",
        &format!("{base}/decrypt"),
        Some(json!({"ciphertext": ct2})),
    )
    .await;
    assert_eq!(ok(&r, 200)["plaintext"], b64(b"by 2.0"));
    let r = with_token(
        &kms,
        &access,
        "POST",
        &format!("{base}/re-encrypt"),
        Some(json!({"ciphertext": ct2})),
    )
    .await;
    let re = ok(&r, 200)["ciphertext"].as_str().unwrap().to_string();
    assert_eq!(kms.decrypt_ok(&tag, &re, None).await, b"by 2.0");
    let r = with_token(
        &kms,
        &access,
        "POST",
        &format!("{base}/issue-custom-key"),
        Some(json!({"bits": 128, "requestPlainKey": true})),
    )
    .await;
    let ck = ok(&r, 200);
    assert_eq!(unb64(ck["plaintext"].as_str().unwrap()).len(), 16);
    assert_eq!(ck["version"], 1);

    // A token set made through 2.0 works on v3, and a v3 one on 2.0.
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/token-set"),
            Some(json!({})),
        )
        .await;
    let access2 = r.ok()["accessToken"].as_str().unwrap().to_string();
    let refresh2 = r.ok()["refreshToken"].as_str().unwrap().to_string();
    let r = with_token(
        &kms,
        &access2,
        "POST",
        &format!("{base}/decrypt"),
        Some(json!({"ciphertext": ct})),
    )
    .await;
    assert_eq!(ok(&r, 200)["plaintext"], b64(b"by v3 token"));
    let r = with_token(
        &kms,
        &access,
        "POST",
        &format!("/kms/v1/keys/{tag}/decrypt"),
        Some(json!({"ciphertext": ct})),
    )
    .await;
    assert_eq!(r.ok()["plaintext"], b64(b"by v3 token"));

    // reissueKeyTokens and issueKeyAccessToken take a refresh token (a 2.0
    // one too); "이 API 에 쓴 리프레시 토큰은 무효가 되지 않고".
    for rt in [&refresh, &refresh2] {
        let r = with_token(
            &kms,
            rt,
            "POST",
            &format!("{base}/reissue-tokens"),
            Some(json!({"accessTokenMinutes": 10})),
        )
        .await;
        let b = ok(&r, 200);
        let a3 = b["accessToken"].as_str().unwrap().to_string();
        assert!(b["refreshToken"].is_string(), "{b}");
        let r = with_token(
            &kms,
            &a3,
            "POST",
            &format!("{base}/encrypt"),
            Some(json!({"plaintext": b64(b"x")})),
        )
        .await;
        ok(&r, 200);
        let r = with_token(
            &kms,
            rt,
            "POST",
            &format!("{base}/issue-access-token"),
            None,
        )
        .await;
        let b = ok(&r, 200);
        assert_eq!(b.as_object().unwrap().len(), 1, "{b}");
        let a4 = b["accessToken"].as_str().unwrap();
        let r = with_token(
            &kms,
            a4,
            "POST",
            &format!("{base}/encrypt"),
            Some(json!({"plaintext": b64(b"y")})),
        )
        .await;
        ok(&r, 200);
        // The v3 refresh route on 2.0's path: Create Access Token.
        let r = with_token(
            &kms,
            rt,
            "POST",
            &format!("/kms/v1/keys/{tag}/access-token"),
            Some(json!({})),
        )
        .await;
        assert!(r.ok()["accessToken"].is_string());
    }
    let r = with_token(
        &kms,
        &refresh,
        "POST",
        &format!("{base}/issue-access-token"),
        Some(json!({"accessTokenMinutes": 1, "accessTokenUnlimited": true})),
    )
    .await;
    assert_v3_error(&r, 400, "InvalidParameter");

    // Documented auth errors: the wrong kind of token, none, a signature
    // instead of a token, a tag not as issued ("대소문자가 다르거나 ... 401"
    // is met by the token check on the canonical tag: see docs).
    let r = with_token(
        &kms,
        &refresh,
        "POST",
        &format!("{base}/encrypt"),
        Some(json!({"plaintext": b64(b"z")})),
    )
    .await;
    assert_v3_error(&r, 401, "AuthFailure");
    let r = with_token(
        &kms,
        &access,
        "POST",
        &format!("{base}/reissue-tokens"),
        None,
    )
    .await;
    assert_v3_error(&r, 401, "AuthFailure");
    let r = kms
        .raw(
            "POST",
            &format!("{base}/encrypt"),
            &[],
            Some(json!({"plaintext": b64(b"z")}).to_string().into_bytes()),
        )
        .await;
    assert_v3_error(&r, 401, "AuthFailure");
    let r = kms
        .call(
            "POST",
            &format!("{base}/encrypt"),
            Some(json!({"plaintext": b64(b"z")})),
        )
        .await;
    assert_v3_error(&r, 401, "AuthFailure");
    // A token of another key.
    let other = tag_of(&kms, "tok-other", "AES256", json!({})).await;
    let r = with_token(
        &kms,
        &access,
        "POST",
        &format!("/kms/v3/token/keys/{other}/encrypt"),
        Some(json!({"plaintext": b64(b"z")})),
    )
    .await;
    assert_v3_error(&r, 401, "AuthFailure");
}

/// signWithToken, verifyWithToken, getPublicKeyWithToken: a token signature
/// verified by 2.0 and by an independent library from the token's public key.
#[tokio::test]
async fn token_sign_verify_and_public_key() {
    let kms = Kms::start().await;
    let tag = tag_of(&kms, "tok-rsa", "RSA2048", json!({})).await;
    generator(&kms, &tag).await;
    let (access, _) = v3_tokens(&kms, &tag, json!({})).await;
    let base = format!("/kms/v3/token/keys/{tag}");
    let data = b"signed with a v3 token";
    let r = with_token(
        &kms,
        &access,
        "POST",
        &format!("{base}/sign"),
        Some(json!({"data": b64(data)})),
    )
    .await;
    let sig = ok(&r, 200)["signature"].as_str().unwrap().to_string();
    let r = with_token(
        &kms,
        &access,
        "POST",
        &format!("{base}/verify"),
        Some(json!({"data": b64(data), "signature": sig})),
    )
    .await;
    assert_eq!(ok(&r, 200)["valid"], true);
    let r = kms
        .op(&tag, "verify", json!({"data": b64(data), "signature": sig}))
        .await;
    assert_eq!(r.ok()["valid"], true);
    let r = with_token(
        &kms,
        &access,
        "GET",
        &format!("{base}/versions/1/public-key"),
        None,
    )
    .await;
    let b = ok(&r, 200);
    assert_eq!(b["keyTag"], tag.as_str());
    assert_eq!(b["version"], 1);
    let pem = b["publicKey"].as_str().unwrap();
    assert!(rsa_verify(
        pem,
        data,
        &unb64(sig.rsplit_once(':').unwrap().1),
        RsaPadding::Pss222
    ));
    let r = with_token(
        &kms,
        &access,
        "GET",
        &format!("{base}/versions/2/public-key"),
        None,
    )
    .await;
    assert_v3_error(&r, 404, "ResourceNotFound");
}

/// batchEncrypt / batchDecrypt / batchReEncrypt, account and token: results
/// keyed by index, 1..100 items, two-phase checks, atomic failures with the
/// one cause's status (400 when they differ), and 2.0 decrypting v3 batch
/// output.
#[tokio::test]
async fn batch_calls_from_the_pages() {
    let kms = Kms::start().await;
    let tag = tag_of(&kms, "batch-aes", "AES256", json!({})).await;
    let pts: Vec<&[u8]> = vec![b"zero", b"one", b"two"];
    let reqs: Vec<Value> = pts.iter().map(|p| json!({"plaintext": b64(p)})).collect();
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{tag}/batch-encrypt"),
        Some(json!({"requests": reqs})),
    )
    .await;
    let res = ok(&r, 200)["results"].as_object().unwrap().clone();
    assert_eq!(res.len(), 3);
    let mut cts = Vec::new();
    for (i, p) in pts.iter().enumerate() {
        let item = &res[&i.to_string()];
        assert_eq!(item.as_object().unwrap().len(), 1, "{item}");
        let ct = item["ciphertext"].as_str().unwrap().to_string();
        // batch v3 encrypt -> 2.0 decrypt.
        assert_eq!(&kms.decrypt_ok(&tag, &ct, None).await, p);
        cts.push(ct);
    }
    // 2.0 encrypt -> batch v3 decrypt; "context 는 항목마다 다를 수 있음".
    let ct2 = kms.encrypt(&tag, b"by 2.0", None).await;
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{tag}/batch-decrypt"),
        Some(json!({"requests": [
            {"ciphertext": cts[0]}, {"ciphertext": ct2, "context": "ignored on this key"},
        ]})),
    )
    .await;
    let res = &ok(&r, 200)["results"];
    assert_eq!(res["0"]["plaintext"], b64(b"zero"));
    assert_eq!(res["1"]["plaintext"], b64(b"by 2.0"));
    // batchReEncrypt after a rotation: the current version, no plaintext.
    ok(
        &v3(&kms, "POST", &format!("/keys/{tag}/versions"), None).await,
        201,
    );
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{tag}/batch-re-encrypt"),
        Some(json!({"requests": [
            {"ciphertext": cts[1]}, {"ciphertext": cts[2]},
        ]})),
    )
    .await;
    let res = ok(&r, 200)["results"].clone();
    for (i, p) in [(0, b"one".as_slice()), (1, b"two".as_slice())] {
        let ct = res[i.to_string()]["ciphertext"].as_str().unwrap();
        assert!(ct.starts_with("ncpkms:v2:"), "{ct}");
        assert!(res[i.to_string()].get("plaintext").is_none());
        assert_eq!(kms.decrypt_ok(&tag, ct, None).await, p);
    }

    // Item count: 1..100, else `error` 400.
    let path = format!("/keys/{tag}/batch-encrypt");
    let many: Vec<Value> = (0..101).map(|_| json!({"plaintext": b64(b"x")})).collect();
    assert_v3_error(
        &v3(&kms, "POST", &path, Some(json!({"requests": many}))).await,
        400,
        "InvalidParameter",
    );
    let hundred: Vec<Value> = (0..100).map(|_| json!({"plaintext": b64(b"x")})).collect();
    let r = v3(&kms, "POST", &path, Some(json!({"requests": hundred}))).await;
    assert_eq!(ok(&r, 200)["results"].as_object().unwrap().len(), 100);
    assert_v3_error(
        &v3(&kms, "POST", &path, Some(json!({"requests": []}))).await,
        400,
        "InvalidParameter",
    );
    assert_v3_error(
        &v3(&kms, "POST", &path, Some(json!({}))).await,
        400,
        "InvalidParameter",
    );
    // A wrong JSON type inside an item refuses the whole body with `error`.
    let r = v3(
        &kms,
        "POST",
        &path,
        Some(json!({"requests": [{"plaintext": 5}]})),
    )
    .await;
    assert_v3_error(&r, 400, "InvalidParameter");

    // Phase 1 (empty values, formats): only the failed items, by index.
    let r = v3(
        &kms,
        "POST",
        &path,
        Some(json!({"requests": [
            {"plaintext": b64(b"fine")}, {"plaintext": "not base64!"}, {"plaintext": ""}, {},
        ]})),
    )
    .await;
    let f = failures(&r, 400);
    assert_eq!(
        f.iter().map(|x| x.0.as_str()).collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
    assert!(f.iter().all(|x| x.1 == "InvalidParameter"), "{f:?}");
    // Phase 2 only after phase 1 passes: a size failure is reported once
    // the format failure is fixed.
    let rsa = tag_of(&kms, "batch-rsa", "RSA2048", json!({})).await;
    let rpath = format!("/keys/{rsa}/batch-encrypt");
    let big = b64(&[7u8; 191]);
    let r = v3(
        &kms,
        "POST",
        &rpath,
        Some(json!({"requests": [
            {"plaintext": big}, {"plaintext": "%%"},
        ]})),
    )
    .await;
    assert_eq!(
        failures(&r, 400),
        [("1".to_string(), "InvalidParameter".to_string())]
    );
    let r = v3(
        &kms,
        "POST",
        &rpath,
        Some(json!({"requests": [
            {"plaintext": big}, {"plaintext": b64(&[1u8; 190])},
        ]})),
    )
    .await;
    assert_eq!(
        failures(&r, 400),
        [("0".to_string(), "InvalidParameter".to_string())]
    );
    // One cause: its status (404 for a version the key lacks); several: 400.
    let dpath = format!("/keys/{tag}/batch-decrypt");
    let v9 = cts[0].replacen("ncpkms:v1:", "ncpkms:v9:", 1);
    let r = v3(
        &kms,
        "POST",
        &dpath,
        Some(json!({"requests": [
            {"ciphertext": cts[0]}, {"ciphertext": v9},
        ]})),
    )
    .await;
    assert_eq!(
        failures(&r, 404),
        [("1".to_string(), "ResourceNotFound".to_string())]
    );
    let oversize = format!("ncpkms:v1:{}", b64(&[0u8; 32797]));
    let r = v3(
        &kms,
        "POST",
        &dpath,
        Some(json!({"requests": [
            {"ciphertext": v9}, {"ciphertext": oversize},
        ]})),
    )
    .await;
    let f = failures(&r, 400);
    assert_eq!(f.len(), 2, "{f:?}");
    // A ciphertext that does not open: the engine's verdict for that item.
    let mut bad = unb64(cts[0].rsplit_once(':').unwrap().1);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    let r = v3(
        &kms,
        "POST",
        &dpath,
        Some(json!({"requests": [
            {"ciphertext": cts[0]}, {"ciphertext": format!("ncpkms:v1:{}", b64(&bad))},
        ]})),
    )
    .await;
    assert_eq!(
        failures(&r, 400),
        [("1".to_string(), "InvalidParameter".to_string())]
    );

    // The token variants, on a 2.0 token.
    generator(&kms, &tag).await;
    let r = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/token-set"),
            Some(json!({})),
        )
        .await;
    let access = r.ok()["accessToken"].as_str().unwrap().to_string();
    let tbase = format!("/kms/v3/token/keys/{tag}");
    let r = with_token(
        &kms,
        &access,
        "POST",
        &format!("{tbase}/batch-encrypt"),
        Some(json!({"requests": [{"plaintext": b64(b"t0")}, {"plaintext": b64(b"t1")}]})),
    )
    .await;
    let res = ok(&r, 200)["results"].clone();
    let t1 = res["1"]["ciphertext"].as_str().unwrap().to_string();
    assert!(t1.starts_with("ncpkms:v2:"), "{t1}");
    let r = with_token(
        &kms,
        &access,
        "POST",
        &format!("{tbase}/batch-decrypt"),
        Some(json!({"requests": [{"ciphertext": t1}, {"ciphertext": cts[0]}]})),
    )
    .await;
    let res = &ok(&r, 200)["results"];
    assert_eq!(res["0"]["plaintext"], b64(b"t1"));
    assert_eq!(res["1"]["plaintext"], b64(b"zero"));
    let r = with_token(
        &kms,
        &access,
        "POST",
        &format!("{tbase}/batch-re-encrypt"),
        Some(json!({"requests": [{"ciphertext": cts[0]}]})),
    )
    .await;
    assert!(ok(&r, 200)["results"]["0"]["ciphertext"]
        .as_str()
        .unwrap()
        .starts_with("ncpkms:v2:"));
}

async fn records(kms: &Kms, tag: &str) -> Vec<(String, String, String, Option<i64>)> {
    let db = kms.db().await;
    let rows: Vec<(String, String, String, Option<i64>)> = sqlx::query_as(
        "SELECT action, auth_type, result, version FROM activity_logs WHERE key_uid = $1 ORDER BY id",
    )
    .bind(tag)
    .fetch_all(&db)
    .await
    .expect("activity records");
    db.close().await;
    rows
}

/// The quota takes one unit per batch item (as 2.0's batch does), all or
/// none; a batch is one activity record; token calls are recorded as TOKEN.
#[tokio::test]
async fn batch_and_token_calls_take_quota_and_are_logged_as_2_0() {
    const BURST: u32 = 6;
    let kms = Kms::start_with(|c| {
        c.rate_limit.profile = "custom".into();
        c.rate_limit.requests_per_second = 1;
        c.rate_limit.burst = BURST;
    })
    .await;
    let tag = tag_of(&kms, "quota-b", "AES256", json!({})).await;
    let path = format!("/keys/{tag}/batch-encrypt");
    let items = |n: usize| -> Value {
        json!({"requests": (0..n).map(|_| json!({"plaintext": b64(b"q")})).collect::<Vec<_>>()})
    };
    // More items than the burst: refused whole, 429 with Retry-After.
    let r = v3(&kms, "POST", &path, Some(items(BURST as usize + 1))).await;
    assert_v3_error(&r, 429, "TooManyRequests");
    // A batch of 4 leaves at most 2 (+ refill) for the next calls: a second
    // batch of 4 is refused.
    ok(&v3(&kms, "POST", &path, Some(items(4))).await, 200);
    let r = v3(&kms, "POST", &path, Some(items(4))).await;
    assert_v3_error(&r, 429, "TooManyRequests");
    assert!(r.headers.contains_key("retry-after"), "{:?}", r.headers);

    let got = records(&kms, &tag).await;
    let enc: Vec<_> = got.iter().filter(|r| r.0 == "Encrypt").collect();
    assert_eq!(enc.len(), 3, "one record per batch call: {got:?}");
    assert_eq!(
        enc.iter().filter(|r| r.2 == "SUCCESS").count(),
        1,
        "{got:?}"
    );
    assert!(enc.iter().all(|r| r.1 == "ACCOUNT"), "{got:?}");

    // Token calls: recorded as TOKEN with 2.0's action names.
    let tag2 = tag_of(&kms, "log-tok", "AES256", json!({})).await;
    generator(&kms, &tag2).await;
    let (access, refresh) = v3_tokens(&kms, &tag2, json!({})).await;
    let r = with_token(
        &kms,
        &access,
        "POST",
        &format!("/kms/v3/token/keys/{tag2}/batch-encrypt"),
        Some(json!({"requests": [{"plaintext": b64(b"l")}]})),
    )
    .await;
    ok(&r, 200);
    let r = with_token(
        &kms,
        &refresh,
        "POST",
        &format!("/kms/v3/token/keys/{tag2}/issue-access-token"),
        None,
    )
    .await;
    ok(&r, 200);
    let got = records(&kms, &tag2).await;
    let names: Vec<(&str, &str)> = got.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert_eq!(
        names,
        [
            ("CreateKey", "ACCOUNT"),
            ("CreateTokenGenerator", "ACCOUNT"),
            ("CreateTokenSet", "ACCOUNT"),
            ("Encrypt", "TOKEN"),
            ("CreateAccessToken", "TOKEN"),
        ],
        "{got:?}"
    );
    assert_eq!(got[3].3, Some(1), "the version used: {got:?}");
}

/// getKeyAcl, updateKeyAcl, list/add/removeKeyAclAllowedIps on 2.0's ACL,
/// and the ACL's effect on token calls (403 `AccessDenied`).
#[tokio::test]
async fn acl_calls_on_the_2_0_acl() {
    let kms = Kms::start().await;
    let tag = tag_of(&kms, "acl-key", "AES256", json!({})).await;
    let acl = format!("/keys/{tag}/acl");
    let r = v3(&kms, "GET", &acl, None).await;
    assert_eq!(ok(&r, 200), &json!({"keyTag": tag, "enabled": false}));
    // "빈 본문({})은 아무것도 바꾸지 않고 현재 설정을 반환합니다".
    let r = v3(&kms, "PATCH", &acl, Some(json!({}))).await;
    assert_eq!(ok(&r, 200)["enabled"], false);
    generator(&kms, &tag).await;
    let (access, refresh) = v3_tokens(&kms, &tag, json!({})).await;
    // On, with an empty list: "목록이 비어 있으면 모든 IP 에서 토큰 인증 API 호출 불가".
    let r = v3(&kms, "PATCH", &acl, Some(json!({"enabled": true}))).await;
    assert_eq!(ok(&r, 200)["enabled"], true);
    let r = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/acl"), None)
        .await;
    assert_eq!(r.ok()["isAclEnabled"], true, "the 2.0 ACL");
    let tpath = format!("/kms/v3/token/keys/{tag}/encrypt");
    let body = json!({"plaintext": b64(b"acl")});
    assert_v3_error(
        &with_token(&kms, &access, "POST", &tpath, Some(body.clone())).await,
        403,
        "AccessDenied",
    );
    let r = with_token(
        &kms,
        &refresh,
        "POST",
        &format!("/kms/v3/token/keys/{tag}/issue-access-token"),
        None,
    )
    .await;
    assert_v3_error(&r, 403, "AccessDenied");
    // "IAM 인증으로 호출하는 API ... 에는 적용하지 않습니다".
    ok(
        &v3(
            &kms,
            "POST",
            &format!("/keys/{tag}/encrypt"),
            Some(body.clone()),
        )
        .await,
        200,
    );

    // add-allowed-ips: the whole list back; 2.0 sees it.
    let r = v3(
        &kms,
        "POST",
        &format!("{acl}/add-allowed-ips"),
        Some(json!({"allowedIps": ["127.0.0.1", "10.0.0.0/24"]})),
    )
    .await;
    assert_eq!(
        ok(&r, 200),
        &json!({"allowedIps": ["10.0.0.0/24", "127.0.0.1"]})
    );
    // Adding one already there changes nothing and succeeds.
    let r = v3(
        &kms,
        "POST",
        &format!("{acl}/add-allowed-ips"),
        Some(json!({"allowedIps": ["127.0.0.1"]})),
    )
    .await;
    assert_eq!(ok(&r, 200)["allowedIps"].as_array().unwrap().len(), 2);
    let r = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/acl"), None)
        .await;
    assert_eq!(
        r.ok()["allowedIpList"].as_array().unwrap().len(),
        2,
        "{}",
        r.body
    );
    ok(
        &with_token(&kms, &access, "POST", &tpath, Some(body.clone())).await,
        200,
    );
    // A rule added through 2.0 is in v3's list; paging from 0.
    let r = kms
        .op(&tag, "acl", json!({"ipList": ["192.168.1.1"]}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let r = v3(
        &kms,
        "GET",
        &format!("{acl}/allowed-ips?pageNo=0&pageSize=2"),
        None,
    )
    .await;
    assert_eq!(
        ok(&r, 200),
        &json!({"allowedIps": ["10.0.0.0/24", "127.0.0.1"],
        "pageNo": 0, "pageSize": 2, "totalCount": 3})
    );
    let r = v3(
        &kms,
        "GET",
        &format!("{acl}/allowed-ips?pageNo=1&pageSize=2"),
        None,
    )
    .await;
    assert_eq!(ok(&r, 200)["allowedIps"], json!(["192.168.1.1"]));
    assert_v3_error(
        &v3(
            &kms,
            "GET",
            &format!("{acl}/allowed-ips?pageSize=0x10"),
            None,
        )
        .await,
        400,
        "InvalidParameter",
    );
    // Bad entries and counts.
    for bad in [
        json!({"allowedIps": []}),
        json!({"allowedIps": ["300.1.1.1"]}),
        json!({}),
        json!({"allowedIps": (0..101).map(|i| format!("10.1.0.{i}")).collect::<Vec<_>>()}),
    ] {
        let r = v3(&kms, "POST", &format!("{acl}/add-allowed-ips"), Some(bad)).await;
        assert_v3_error(&r, 400, "InvalidParameter");
    }
    // remove: one entry not listed and nothing is removed.
    let r = v3(
        &kms,
        "POST",
        &format!("{acl}/remove-allowed-ips"),
        Some(json!({"allowedIps": ["127.0.0.1", "10.9.9.9"]})),
    )
    .await;
    assert_v3_error(&r, 400, "InvalidParameter");
    let r = v3(&kms, "GET", &format!("{acl}/allowed-ips"), None).await;
    assert_eq!(ok(&r, 200)["totalCount"], 3);
    let r = v3(
        &kms,
        "POST",
        &format!("{acl}/remove-allowed-ips"),
        Some(json!({"allowedIps": ["127.0.0.1"]})),
    )
    .await;
    assert_eq!(
        ok(&r, 200),
        &json!({"allowedIps": ["10.0.0.0/24", "192.168.1.1"]})
    );
    assert_v3_error(
        &with_token(&kms, &access, "POST", &tpath, Some(body.clone())).await,
        403,
        "AccessDenied",
    );
    // Off again.
    let r = v3(&kms, "PATCH", &acl, Some(json!({"enabled": false}))).await;
    assert_eq!(ok(&r, 200)["enabled"], false);
    ok(
        &with_token(&kms, &access, "POST", &tpath, Some(body)).await,
        200,
    );
    // A key with no allowed IPs: remove succeeds with an empty list.
    let other = tag_of(&kms, "acl-none", "AES256", json!({})).await;
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{other}/acl/remove-allowed-ips"),
        Some(json!({"allowedIps": ["1.2.3.4"]})),
    )
    .await;
    assert_eq!(ok(&r, 200), &json!({"allowedIps": []}));
    // "ENABLED 상태의 키만 수정할 수 있습니다".
    let r = kms.op(&other, "disable", json!({})).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_v3_error(
        &v3(
            &kms,
            "PATCH",
            &format!("/keys/{other}/acl"),
            Some(json!({"enabled": true})),
        )
        .await,
        409,
        "Conflict",
    );
    assert_v3_error(
        &v3(
            &kms,
            "POST",
            &format!("/keys/{other}/acl/add-allowed-ips"),
            Some(json!({"allowedIps": ["1.2.3.4"]})),
        )
        .await,
        409,
        "Conflict",
    );
    // No such key.
    let none = "ab".repeat(32);
    assert_v3_error(
        &v3(&kms, "GET", &format!("/keys/{none}/acl"), None).await,
        404,
        "ResourceNotFound",
    );
}

/// listKeyActivities: newest first, paging from 0, the filters (a filter
/// repeated matches any value, different filters all), over the one log
/// 2.0 and v3 write.
#[tokio::test]
async fn activity_query_over_the_shared_log() {
    let kms = Kms::start().await;
    let tag = tag_of(&kms, "act-key", "AES256", json!({})).await;
    let ct = kms.encrypt(&tag, b"2.0", None).await; // 2.0 Encrypt
    ok(
        &v3(
            &kms,
            "POST",
            &format!("/keys/{tag}/decrypt"),
            Some(json!({"ciphertext": ct})),
        )
        .await,
        200,
    );
    let r = v3(
        &kms,
        "POST",
        &format!("/keys/{tag}/decrypt"),
        Some(json!({"ciphertext": "ncpkms:v7:AAAA"})),
    )
    .await;
    assert_eq!(r.status, 404);
    let path = format!("/keys/{tag}/activities");
    let r = v3(&kms, "GET", &path, None).await;
    let b = ok(&r, 200).clone();
    assert_eq!(b["pageNo"], 0);
    assert_eq!(b["pageSize"], 20);
    assert_eq!(b["totalCount"], 4, "{b}");
    let acts = b["activities"].as_array().unwrap();
    let actions: Vec<&str> = acts
        .iter()
        .map(|a| a["actionCode"].as_str().unwrap())
        .collect();
    assert_eq!(
        actions,
        ["Decrypt", "Decrypt", "Encrypt", "CreateKey"],
        "newest first"
    );
    let a = &acts[0];
    assert_eq!(a["resultCode"], "FAIL");
    assert_eq!(a["httpStatus"], 404);
    assert_eq!(a["keyVersion"], 7);
    assert_eq!(a["requestType"], "API");
    assert_eq!(a["requestorId"], kms.access_key.as_str());
    assert_eq!(a["requestorIp"], "127.0.0.1");
    assert_eq!(a["keyTag"], tag.as_str());
    assert!(a["createdAt"].as_str().unwrap().ends_with('Z'), "{a}");
    // Filters.
    let r = v3(
        &kms,
        "GET",
        &format!("{path}?actionCode=Decrypt&resultCode=SUCCESS"),
        None,
    )
    .await;
    assert_eq!(ok(&r, 200)["totalCount"], 1);
    let r = v3(
        &kms,
        "GET",
        &format!("{path}?actionCode=Decrypt&actionCode=Encrypt"),
        None,
    )
    .await;
    assert_eq!(ok(&r, 200)["totalCount"], 3);
    let r = v3(&kms, "GET", &format!("{path}?actionCode=decrypt"), None).await;
    assert_eq!(ok(&r, 200)["totalCount"], 0, "case-sensitive");
    // Paging from 0.
    let r = v3(&kms, "GET", &format!("{path}?pageNo=1&pageSize=3"), None).await;
    let b = ok(&r, 200);
    assert_eq!(b["activities"].as_array().unwrap().len(), 1);
    assert_eq!(b["activities"][0]["actionCode"], "CreateKey");
    // A range that holds nothing; a range backwards; not decimal.
    let r = v3(
        &kms,
        "GET",
        &format!("{path}?timestampFrom=0&timestampTo=1"),
        None,
    )
    .await;
    assert_eq!(ok(&r, 200)["totalCount"], 0);
    assert_v3_error(
        &v3(
            &kms,
            "GET",
            &format!("{path}?timestampFrom=2&timestampTo=1"),
            None,
        )
        .await,
        400,
        "InvalidParameter",
    );
    assert_v3_error(
        &v3(&kms, "GET", &format!("{path}?pageNo=1e1"), None).await,
        400,
        "InvalidParameter",
    );
    // The query itself is not recorded (as 2.0's); 2.0 sees v3's records.
    let r = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/activities"), None)
        .await;
    assert_eq!(r.ok()["totalCount"], 4, "{}", r.body);
}

/// updateKey, updateKeyRotation, updateKeyVersion, the token generator
/// calls and key deletion, each seen through 2.0 too.
#[tokio::test]
async fn key_state_and_metadata_calls() {
    let kms = Kms::start().await;
    let tag = tag_of(&kms, "state-key", "AES256", json!({"memo": "first"})).await;
    let key = format!("/keys/{tag}");
    // "빈 본문({})은 아무것도 바꾸지 않고 키 정보를 반환합니다".
    let r = v3(&kms, "PATCH", &key, Some(json!({}))).await;
    let b = ok(&r, 200);
    assert_eq!(b["memo"], "first");
    assert_eq!(b["status"], "ENABLED");
    let r = v3(&kms, "PATCH", &key, Some(json!({"memo": "second"}))).await;
    assert_eq!(ok(&r, 200)["memo"], "second");
    let r = kms.call("GET", &format!("/kms/v1/keys/{tag}"), None).await;
    assert_eq!(r.ok()["memo"], "second", "2.0 sees the memo");
    // null clears the memo; null keyName/status are 400.
    let r = v3(&kms, "PATCH", &key, Some(json!({"memo": null}))).await;
    assert_eq!(ok(&r, 200)["memo"], "");
    for bad in [
        json!({"status": null}),
        json!({"keyName": null}),
        json!({"status": "PENDING_DELETION"}),
        json!({"memo": "x".repeat(101)}),
        json!({"memo": ""}),
        json!({"bogus": 1}),
    ] {
        assert_v3_error(
            &v3(&kms, "PATCH", &key, Some(bad)).await,
            400,
            "InvalidParameter",
        );
    }
    // status: DISABLED refuses crypto (2.0 too), ENABLED again serves.
    let r = v3(&kms, "PATCH", &key, Some(json!({"status": "DISABLED"}))).await;
    assert_eq!(ok(&r, 200)["status"], "DISABLED");
    let r = kms
        .op(&tag, "encrypt", json!({"plaintext": b64(b"x")}))
        .await;
    assert_eq!(r.status, 403, "{}", r.body);
    assert_v3_error(
        &v3(
            &kms,
            "POST",
            &format!("{key}/encrypt"),
            Some(json!({"plaintext": b64(b"x")})),
        )
        .await,
        403,
        "Forbidden",
    );
    let r = v3(&kms, "PATCH", &key, Some(json!({"status": "ENABLED"}))).await;
    assert_eq!(ok(&r, 200)["status"], "ENABLED");

    // updateKeyRotation: enabled first, then periodDays (only while on).
    let rot = format!("{key}/rotation");
    let r = v3(&kms, "PATCH", &rot, Some(json!({}))).await;
    assert_eq!(ok(&r, 200), &json!({"enabled": false, "periodDays": 0}));
    assert_v3_error(
        &v3(&kms, "PATCH", &rot, Some(json!({"periodDays": 30}))).await,
        400,
        "InvalidParameter",
    );
    assert_v3_error(
        &v3(
            &kms,
            "PATCH",
            &rot,
            Some(json!({"enabled": false, "periodDays": 30})),
        )
        .await,
        400,
        "InvalidParameter",
    );
    let r = v3(&kms, "PATCH", &rot, Some(json!({"enabled": true}))).await;
    assert_eq!(
        ok(&r, 200),
        &json!({"enabled": true, "periodDays": 90}),
        "the default"
    );
    let r = v3(&kms, "PATCH", &rot, Some(json!({"periodDays": 30}))).await;
    assert_eq!(ok(&r, 200), &json!({"enabled": true, "periodDays": 30}));
    let r = kms.call("GET", &format!("/kms/v1/keys/{tag}"), None).await;
    assert_eq!(r.ok()["rotationPeriod"], 30);
    assert_eq!(r.ok()["isAutoRotation"], true);
    assert_v3_error(
        &v3(&kms, "PATCH", &rot, Some(json!({"periodDays": 731}))).await,
        400,
        "InvalidParameter",
    );
    // Off keeps the period; on again without periodDays takes it back.
    let r = v3(&kms, "PATCH", &rot, Some(json!({"enabled": false}))).await;
    assert_eq!(ok(&r, 200), &json!({"enabled": false, "periodDays": 0}));
    let r = v3(&kms, "PATCH", &rot, Some(json!({"enabled": true}))).await;
    assert_eq!(ok(&r, 200)["periodDays"], 30);

    // updateKeyVersion: the current version cannot change.
    ok(
        &v3(&kms, "POST", &format!("{key}/versions"), None).await,
        201,
    );
    let ct1 = {
        let r = kms
            .call("GET", &format!("/kms/v1/keys/{tag}/versions"), None)
            .await;
        assert_eq!(r.ok()["currentVersion"], 2);
        kms.encrypt(&tag, b"v2", None).await
    };
    assert_v3_error(
        &v3(
            &kms,
            "PATCH",
            &format!("{key}/versions/2"),
            Some(json!({"status": "DISABLED"})),
        )
        .await,
        409,
        "Conflict",
    );
    let r = v3(
        &kms,
        "PATCH",
        &format!("{key}/versions/1"),
        Some(json!({"status": "DISABLED"})),
    )
    .await;
    assert_eq!(
        ok(&r, 200),
        &json!({"version": 1, "status": "DISABLED", "current": false})
    );
    let r = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/versions"), None)
        .await;
    assert_eq!(r.ok()["versionList"][0]["status"], "DISABLE", "{}", r.body);
    let r = v3(&kms, "PATCH", &format!("{key}/versions/1"), Some(json!({}))).await;
    assert_eq!(ok(&r, 200)["status"], "DISABLED");
    let r = v3(
        &kms,
        "PATCH",
        &format!("{key}/versions/1"),
        Some(json!({"status": "ENABLED"})),
    )
    .await;
    assert_eq!(ok(&r, 200)["status"], "ENABLED");
    assert_v3_error(
        &v3(&kms, "PATCH", &format!("{key}/versions/9"), Some(json!({}))).await,
        404,
        "ResourceNotFound",
    );
    assert_v3_error(
        &v3(
            &kms,
            "PATCH",
            &format!("{key}/versions/0x1"),
            Some(json!({})),
        )
        .await,
        400,
        "InvalidParameter",
    );
    assert_eq!(kms.decrypt_ok(&tag, &ct1, None).await, b"v2");

    // Token generator: activate (idempotent), rotate (old tokens refused),
    // deactivate (idempotent); 2.0's generator.
    let r = v3(
        &kms,
        "POST",
        &format!("{key}/activate-token-generator"),
        None,
    )
    .await;
    let b = ok(&r, 200).clone();
    assert_eq!(b["status"], "ENABLED");
    let id = b["tokenGeneratorId"].as_str().unwrap().to_string();
    let r = v3(
        &kms,
        "POST",
        &format!("{key}/activate-token-generator"),
        None,
    )
    .await;
    assert_eq!(ok(&r, 200)["tokenGeneratorId"], id.as_str(), "unchanged");
    let r = kms
        .call("GET", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await;
    assert_eq!(r.ok()["tokenGeneratorId"], id.as_str());
    let (access, _) = v3_tokens(&kms, &tag, json!({})).await;
    let tpath = format!("/kms/v3/token/keys/{tag}/encrypt");
    let body = json!({"plaintext": b64(b"g")});
    ok(
        &with_token(&kms, &access, "POST", &tpath, Some(body.clone())).await,
        200,
    );
    let r = v3(&kms, "POST", &format!("{key}/rotate-token-generator"), None).await;
    let b = ok(&r, 200);
    assert_eq!(b["status"], "ENABLED");
    assert_ne!(b["tokenGeneratorId"], id.as_str());
    assert_v3_error(
        &with_token(&kms, &access, "POST", &tpath, Some(body.clone())).await,
        401,
        "AuthFailure",
    );
    let (access, _) = v3_tokens(&kms, &tag, json!({})).await;
    let r = v3(
        &kms,
        "POST",
        &format!("{key}/deactivate-token-generator"),
        None,
    )
    .await;
    assert_eq!(ok(&r, 200), &json!({"status": "DISABLED"}));
    assert_v3_error(
        &with_token(&kms, &access, "POST", &tpath, Some(body)).await,
        401,
        "AuthFailure",
    );
    let r = v3(
        &kms,
        "POST",
        &format!("{key}/deactivate-token-generator"),
        None,
    )
    .await;
    assert_eq!(ok(&r, 200), &json!({"status": "DISABLED"}));
    assert_v3_error(
        &v3(&kms, "POST", &format!("{key}/rotate-token-generator"), None).await,
        409,
        "Conflict",
    );

    // Deletion: request (PENDING_DELETION, crypto refused), cancel (DISABLED).
    let r = v3(&kms, "POST", &format!("{key}/request-deletion"), None).await;
    assert_eq!(ok(&r, 200)["status"], "PENDING_DELETION");
    let r = kms.call("GET", &format!("/kms/v1/keys/{tag}"), None).await;
    assert_eq!(r.ok()["status"], "REVOKE", "2.0's name: {}", r.body);
    assert_v3_error(
        &v3(&kms, "PATCH", &key, Some(json!({"status": "ENABLED"}))).await,
        409,
        "Conflict",
    );
    assert_v3_error(
        &v3(
            &kms,
            "POST",
            &format!("{key}/activate-token-generator"),
            None,
        )
        .await,
        409,
        "Conflict",
    );
    let r = v3(&kms, "POST", &format!("{key}/cancel-deletion"), None).await;
    assert_eq!(ok(&r, 200)["status"], "DISABLED");
    // Renaming is refused (not supported).
    assert_v3_error(
        &v3(&kms, "PATCH", &key, Some(json!({"keyName": "renamed"}))).await,
        400,
        "InvalidParameter",
    );
}
