//! Log hygiene: the real binary at `trace` level, JSON format, through a
//! session that handles every kind of secret the service sees (user PIN,
//! secret keys, tokens, plaintexts, custom-key plaintexts, signatures). None
//! of them may reach the log on stderr, and every line a request causes
//! carries that request's id.
mod common;

use std::collections::HashSet;

use common::process::{Server, Site};
use common::{b64, now_ms, send, unb64, Kms, Reply};
use hsm_kms::api::auth::ncp::{sign, SignatureVersion};
use serde_json::{json, Value};

/// A user PIN no log line could contain by chance.
const DISTINCT_PIN: &str = "pin-Qx7vR2mZ9w";

/// Log settings of every command of the site.
const TRACE_JSON: [(&str, &str); 2] = [
    ("HSM_KMS_LOG_LEVEL", "trace"),
    ("HSM_KMS_LOG_FORMAT", "json"),
];

/// What the session sent and received that must never be logged.
#[derive(Default)]
struct Secrets {
    items: Vec<(String, String)>,
}

impl Secrets {
    fn add(&mut self, what: &str, value: &str) {
        assert!(value.len() >= 8, "{what} is too short to look for: {value}");
        self.items.push((what.to_string(), value.to_string()));
    }

    /// A token: the whole value and its random part.
    fn add_token(&mut self, what: &str, token: &str) {
        self.add(what, token);
        self.add(what, token.trim_start_matches("ncpkms_"));
    }

    /// Binary secret material: base64 (standard and URL-safe), hex, and the
    /// bytes themselves when they are text.
    fn add_bytes(&mut self, what: &str, bytes: &[u8]) {
        use base64::Engine as _;
        self.add(what, &b64(bytes));
        self.add(
            what,
            &base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes),
        );
        self.add(what, &hex::encode(bytes));
        self.add(what, &hex::encode_upper(bytes));
        if let Ok(s) = std::str::from_utf8(bytes) {
            self.add(what, s);
        }
    }

    fn assert_absent(&self, name: &str, text: &str) {
        for (what, value) in &self.items {
            if let Some(at) = text.find(value.as_str()) {
                let line = text[..at].lines().count();
                panic!("{name} holds {what} ({value}) on line {line}");
            }
        }
    }
}

/// Sends a request with these headers; records the request id it got.
async fn send_as(
    server: &Server,
    ids: &mut Vec<String>,
    method: &str,
    path: &str,
    headers: &[(String, String)],
    body: Option<Value>,
) -> Reply {
    let r = send(
        &server.client,
        &server.url,
        method,
        path,
        headers,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await;
    let id = r
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("every answer carries x-request-id")
        .to_string();
    ids.push(id);
    r
}

fn signed(ak: &str, sk: &str, method: &str, path: &str) -> Vec<(String, String)> {
    Kms::signed_headers(ak, sk, method, path, &now_ms().to_string())
}

fn token_header(token: &str) -> Vec<(String, String)> {
    vec![("x-ncp-ocapi-token".to_string(), token.to_string())]
}

fn field<'a>(stdout: &'a str, name: &str) -> &'a str {
    stdout
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {stdout}"))
}

#[tokio::test]
async fn trace_log_holds_no_secret_and_tags_every_request() {
    let mut site = Site::init_with(DISTINCT_PIN, &TRACE_JSON);
    let mut secrets = Secrets::default();
    secrets.add("the user PIN", DISTINCT_PIN);
    secrets.add("the first secret key", &site.secret_key.clone());

    // A second access key and an API key, from the admin CLI.
    let (out, admin_err) = site.admin(&["admin", "create-access-key"]);
    let (ak2, sk2) = (
        field(&out, "access_key").to_string(),
        field(&out, "secret_key").to_string(),
    );
    secrets.add("the second secret key", &sk2);
    let (out, api_err) = site.admin(&["admin", "create-api-key"]);
    let api_key = field(&out, "api_key").to_string();
    secrets.add("the API key", &api_key);

    let server = site.serve(&TRACE_JSON).await;
    let (ak, sk) = (site.access_key.clone(), site.secret_key.clone());
    let mut ids = Vec::new();

    // Keys, by both access keys.
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        "/kms/v1/keys",
        &signed(&ak, &sk, "POST", "/kms/v1/keys"),
        Some(json!({"keyName": "hygiene", "keyType": "AES256", "isAutoRotation": false})),
    )
    .await;
    let tag = r.ok()["keyTag"].as_str().unwrap().to_string();
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        "/kms/v1/keys",
        &signed(&ak2, &sk2, "POST", "/kms/v1/keys"),
        Some(json!({"keyName": "hygiene-rsa", "keyType": "RSA2048", "isAutoRotation": false})),
    )
    .await;
    let rsa = r.ok()["keyTag"].as_str().unwrap().to_string();

    // Encrypt / decrypt a recognisable plaintext, one and many.
    let plaintext = format!("TOP-SECRET-PLAINTEXT-{}", now_ms());
    secrets.add_bytes("the plaintext", plaintext.as_bytes());
    let enc = format!("/kms/v1/keys/{tag}/encrypt");
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        &enc,
        &signed(&ak, &sk, "POST", &enc),
        Some(json!({"plaintext": b64(plaintext.as_bytes()), "context": b64(b"ctx-hygiene")})),
    )
    .await;
    let ct = r.ok()["ciphertext"].as_str().unwrap().to_string();
    let second = format!("SECOND-PLAINTEXT-{}", now_ms());
    secrets.add_bytes("the second plaintext", second.as_bytes());
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        &enc,
        &signed(&ak, &sk, "POST", &enc),
        Some(json!({"plaintext": [b64(plaintext.as_bytes()), b64(second.as_bytes())]})),
    )
    .await;
    let cts = r.ok()["ciphertext"].clone();
    let dec = format!("/kms/v1/keys/{tag}/decrypt");
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        &dec,
        &signed(&ak, &sk, "POST", &dec),
        Some(json!({"ciphertext": ct, "context": b64(b"ctx-hygiene")})),
    )
    .await;
    assert_eq!(
        unb64(r.ok()["plaintext"].as_str().unwrap()),
        plaintext.as_bytes()
    );
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        &dec,
        &signed(&ak, &sk, "POST", &dec),
        Some(json!({"ciphertext": cts})),
    )
    .await;
    assert_eq!(r.ok()["plaintext"][1], b64(second.as_bytes()));
    // A decrypt that fails (a tampered ciphertext, with a context the key
    // ignores) must not log the plaintext either.
    let (head, body) = ct.rsplit_once(':').unwrap();
    let mut raw = unb64(body);
    raw[20] ^= 1;
    let tampered = format!("{head}:{}", b64(&raw));
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        &dec,
        &signed(&ak, &sk, "POST", &dec),
        Some(json!({"ciphertext": tampered, "context": b64(b"other")})),
    )
    .await;
    r.assert_naver_error(400, "100");

    // A custom key with its plaintext.
    let ck = format!("/kms/v1/keys/{tag}/create-custom-key");
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        &ck,
        &signed(&ak, &sk, "POST", &ck),
        Some(json!({"requestPlainKey": true, "bits": 256})),
    )
    .await;
    let custom = unb64(r.ok()["plaintext"].as_str().unwrap());
    assert_eq!(custom.len(), 32);
    secrets.add_bytes("the custom key", &custom);

    // Token generator, token set, access token, renewal; crypto by token.
    let tg = format!("/kms/v1/keys/{tag}/token-generator");
    send_as(
        &server,
        &mut ids,
        "POST",
        &tg,
        &signed(&ak, &sk, "POST", &tg),
        None,
    )
    .await
    .ok();
    let ts = format!("/kms/v1/keys/{tag}/token-set");
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        &ts,
        &signed(&ak, &sk, "POST", &ts),
        Some(json!({})),
    )
    .await;
    let refresh = r.ok()["refreshToken"].as_str().unwrap().to_string();
    let access = r.ok()["accessToken"].as_str().unwrap().to_string();
    secrets.add_token("the refresh token", &refresh);
    secrets.add_token("the access token", &access);
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        &enc,
        &token_header(&access),
        Some(json!({"plaintext": b64(plaintext.as_bytes())})),
    )
    .await;
    let ct_by_token = r.ok()["ciphertext"].as_str().unwrap().to_string();
    let at = format!("/kms/v1/keys/{tag}/access-token");
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        &at,
        &token_header(&refresh),
        Some(json!({})),
    )
    .await;
    let access2 = r.ok()["accessToken"].as_str().unwrap().to_string();
    secrets.add_token("the second access token", &access2);
    let r = send_as(
        &server,
        &mut ids,
        "PUT",
        &ts,
        &token_header(&refresh),
        Some(json!({})),
    )
    .await;
    let refresh3 = r.ok()["refreshToken"].as_str().unwrap().to_string();
    let access3 = r.ok()["accessToken"].as_str().unwrap().to_string();
    secrets.add_token("the renewed refresh token", &refresh3);
    secrets.add_token("the renewed access token", &access3);
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        &dec,
        &token_header(&access3),
        Some(json!({"ciphertext": ct_by_token})),
    )
    .await;
    assert_eq!(r.ok()["plaintext"], b64(plaintext.as_bytes()));
    // The renewed refresh token still works (renewing discards no set);
    // presented on a crypto call it is refused, and so is a made-up token,
    // both unlogged.
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        &at,
        &token_header(&refresh),
        None,
    )
    .await;
    let access4 = r.ok()["accessToken"].as_str().unwrap().to_string();
    secrets.add_token("the access token of the renewed refresh token", &access4);
    send_as(
        &server,
        &mut ids,
        "POST",
        &enc,
        &token_header(&refresh),
        Some(json!({"plaintext": b64(plaintext.as_bytes())})),
    )
    .await
    .assert_naver_error(401, "200");
    let made_up = format!("ncpkms_MadeUpTokenValue{}", now_ms());
    secrets.add("a made-up token", &made_up);
    send_as(
        &server,
        &mut ids,
        "POST",
        &enc,
        &token_header(&made_up),
        None,
    )
    .await
    .assert_naver_error(401, "200");

    // A wrong signature: neither the sent nor the expected value is logged.
    let when = now_ms().to_string();
    let wrong = format!("WrongSignatureValue{when}=");
    let right = sign(
        SignatureVersion::V2,
        sk.as_bytes(),
        "POST",
        &enc,
        &when,
        &ak,
        None,
    );
    secrets.add("the wrong signature", &wrong);
    secrets.add("the expected signature", &right);
    let headers = vec![
        ("x-ncp-apigw-timestamp".to_string(), when.clone()),
        ("x-ncp-iam-access-key".to_string(), ak.clone()),
        ("x-ncp-apigw-signature-v2".to_string(), wrong),
    ];
    send_as(
        &server,
        &mut ids,
        "POST",
        &enc,
        &headers,
        Some(json!({"plaintext": b64(plaintext.as_bytes())})),
    )
    .await
    .assert_naver_error(401, "200");

    // Every signature the session sent, good or bad, and API 1.0 with v1.
    let v1 = format!("/keys/v1/{tag}/encrypt");
    let sig1 = sign(
        SignatureVersion::V1,
        sk.as_bytes(),
        "POST",
        &v1,
        &when,
        &ak,
        Some(&api_key),
    );
    secrets.add("a v1 signature", &sig1);
    let headers = vec![
        ("x-ncp-apigw-timestamp".to_string(), when.clone()),
        ("x-ncp-apigw-api-key".to_string(), api_key.clone()),
        ("x-ncp-iam-access-key".to_string(), ak.clone()),
        ("x-ncp-apigw-signature-v1".to_string(), sig1),
    ];
    let r = send_as(
        &server,
        &mut ids,
        "POST",
        &v1,
        &headers,
        Some(json!({"plaintext": b64(plaintext.as_bytes())})),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["code"], "SUCCESS", "{}", r.body);

    // Sign with the second account's key.
    let sp = format!("/kms/v1/keys/{rsa}/sign");
    let h = signed(&ak2, &sk2, "POST", &sp);
    secrets.add("a v2 signature", &h[2].1);
    send_as(
        &server,
        &mut ids,
        "POST",
        &sp,
        &h,
        Some(json!({"data": b64(plaintext.as_bytes())})),
    )
    .await
    .ok();

    // Deletion, so that destruction paths log too.
    let rd = format!("/kms/v1/keys/{rsa}/request-deletion");
    send_as(
        &server,
        &mut ids,
        "POST",
        &rd,
        &signed(&ak2, &sk2, "POST", &rd),
        None,
    )
    .await
    .ok();
    let del = format!("/kms/v1/keys/{rsa}");
    send_as(
        &server,
        &mut ids,
        "DELETE",
        &del,
        &signed(&ak2, &sk2, "DELETE", &del),
        None,
    )
    .await
    .ok();
    server.kill();

    // A wrong PIN fails the command; the error names no PIN.
    let wrong_pin = "pin-WrongGuess5521";
    let out = site
        .command()
        .env("HSM_KMS_PIN", wrong_pin)
        .args(["admin", "list-access-keys"])
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wrong PIN must not log in");
    let wrong_pin_err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(wrong_pin_err.contains("hsm-kms failed"), "{wrong_pin_err}");
    secrets.add("a wrong PIN", wrong_pin);
    secrets.assert_absent("the wrong-PIN log", &wrong_pin_err);

    let log = site.log(1);
    // The admin commands logged at trace level too (their SQL at least).
    assert!(admin_err.contains("sqlx::query"), "{admin_err}");
    secrets.assert_absent("the init log", &site.init_stderr);
    secrets.assert_absent("the create-access-key log", &admin_err);
    secrets.assert_absent("the create-api-key log", &api_err);
    secrets.assert_absent("the server log", &log);

    // The log really is at trace level and JSON: every line parses, and
    // every request left lines that carry its id.
    let lines: Vec<Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert!(
        lines.iter().any(|l| l["level"] == "TRACE"),
        "no TRACE line: is the level applied?"
    );
    let mut logged_ids = HashSet::new();
    for l in &lines {
        if let Some(id) = request_id(l) {
            logged_ids.insert(id.to_string());
        }
        // A line that names a request path belongs to a request and must
        // carry its id.
        let text = l.to_string();
        if text.contains("/kms/v1/keys") || text.contains("/keys/v1/") {
            let id = request_id(l).unwrap_or_else(|| panic!("a request line without an id: {l}"));
            assert!(ids.iter().any(|i| i == id), "unknown request id in {l}");
        }
    }
    let unique: HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "request ids must be unique");
    for id in &ids {
        assert!(
            logged_ids.contains(id),
            "request {id} left no line with its id"
        );
        let n = lines.iter().filter(|l| request_id(l) == Some(id)).count();
        assert!(
            n >= 2,
            "request {id}: {n} lines (start and finish expected)"
        );
    }
}

/// The request id of a JSON log line: its `request` span's `id`.
fn request_id(l: &Value) -> Option<&str> {
    fn in_span(s: &Value) -> Option<&str> {
        if s["name"] == "request" {
            s["id"].as_str()
        } else {
            None
        }
    }
    in_span(&l["span"])
        .or_else(|| l["spans"].as_array()?.iter().find_map(in_span))
        // The access line (target `access`) is written outside the
        // request's span and carries the id as its own field.
        .or_else(|| {
            (l["target"] == "access")
                .then(|| l["request_id"].as_str())
                .flatten()
        })
}
