//! Issue 13 §4: `hsm-kms client`, the binary run against a real server:
//! NAVER calls with account and token authentication, NHN calls with the
//! User Access Key and MAC options, JSON output, exit codes by outcome
//! (0 success, 1 local, 2 usage, 3 refused, 4 denied, 5 not found,
//! 6 unavailable, 7 invalid signature), credentials from a 0600 profile
//! file or `HSM_KMS_CLIENT_*` variables and never from argv.
mod common;
#[path = "common/nhn.rs"]
mod nhn;

use common::client::{profile, Client};
use common::{b64, Kms};
use serde_json::json;

// Multi-threaded: the client runs as a blocking subprocess while this
// process's server answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn naver_calls_with_account_and_token_authentication() {
    let kms = Kms::start().await;
    let cli = Client::new();
    // The default profile file, $HOME/.config/hsm-kms/profiles.toml.
    cli.write_profile(
        &cli.default_profile(),
        &profile(
            "default",
            &[
                ("url", &kms.url),
                ("access_key", &kms.access_key),
                ("secret_key", &kms.secret_key),
            ],
        ),
        0o600,
    );

    let made = cli.run(&["naver", "create-key", "--key-name", "cli-aes"]);
    let tag = made.ok()["keyTag"].as_str().expect("keyTag").to_string();
    let listed = cli.run(&["naver", "list-keys"]);
    assert!(
        listed.ok()["keyList"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["keyTag"] == tag.as_str()),
        "{}",
        listed.stdout
    );

    // Encrypt, decrypt, re-encrypt, rotate, create-custom-key.
    let enc = cli.run(&["naver", "encrypt", &tag, "--text", "hello"]);
    let ct = enc.ok()["ciphertext"].as_str().unwrap().to_string();
    assert!(ct.starts_with("ncpkms:v1:"), "{ct}");
    let dec = cli.run(&["naver", "decrypt", &tag, "--ciphertext", &ct]);
    assert_eq!(dec.ok()["plaintext"], b64(b"hello"));
    let rotated = cli.run(&["naver", "rotate", &tag]);
    assert_eq!(rotated.ok()["version"], 2);
    let re = cli.run(&["naver", "re-encrypt", &tag, "--ciphertext", &ct]);
    let new_ct = re.ok()["newCiphertext"].as_str().unwrap().to_string();
    assert!(new_ct.starts_with("ncpkms:v2:"), "{new_ct}");
    assert_eq!(
        kms.decrypt_ok(&tag, &new_ct, None).await,
        b"hello",
        "the server decrypts what the CLI got"
    );
    let custom = cli.run(&["naver", "create-custom-key", &tag, "--request-plain-key"]);
    assert!(custom.ok().as_object().is_some_and(|o| !o.is_empty()));
    let file = cli.home.path().join("payload.bin");
    std::fs::write(&file, [0u8, 1, 2, 255]).unwrap();
    let enc = cli.run(&["naver", "encrypt", &tag, "--file", file.to_str().unwrap()]);
    let ct2 = enc.ok()["ciphertext"].as_str().unwrap().to_string();
    assert_eq!(kms.decrypt_ok(&tag, &ct2, None).await, [0u8, 1, 2, 255]);

    // Sign, verify (exit 7 when not valid), the public key.
    let ec = cli.run(&[
        "naver",
        "create-key",
        "--key-name",
        "cli-ec",
        "--key-type",
        "ECDSA",
    ]);
    let ec_tag = ec.ok()["keyTag"].as_str().unwrap().to_string();
    let sig = cli.run(&["naver", "sign", &ec_tag, "--text", "signed text"]);
    let sig = sig.ok()["signature"].as_str().unwrap().to_string();
    let good = cli.run(&[
        "naver",
        "verify",
        &ec_tag,
        "--text",
        "signed text",
        "--signature",
        &sig,
    ]);
    assert_eq!(good.ok()["valid"], true);
    let bad = cli.run(&[
        "naver",
        "verify",
        &ec_tag,
        "--text",
        "other text",
        "--signature",
        &sig,
    ]);
    assert_eq!(bad.code(7).json["valid"], false);
    let pk = cli.run(&["naver", "get-pub-key", &ec_tag]);
    assert!(pk.ok()["publicKey"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN PUBLIC KEY-----"));

    // Refusals: the dialect's envelope on stdout, the exit code by status.
    let unknown = "0".repeat(64);
    let missing = cli.run(&["naver", "get-key", &unknown]);
    assert_eq!(missing.code(5).json["error"]["errorCode"], "300");
    let denied = cli.run_env(
        &["naver", "list-keys"],
        &[("HSM_KMS_CLIENT_SECRET_KEY", "not-the-secret-key")],
    );
    assert_eq!(denied.code(4).json["error"]["errorCode"], "200");
    let refused = cli.run(&["naver", "encrypt", &tag, "--base64", "!!"]);
    refused.code(1);
    let refused = cli.run(&[
        "naver",
        "create-key",
        "--key-name",
        "x",
        "--key-type",
        "AES256",
    ]);
    assert_eq!(refused.code(3).json["error"]["errorCode"], "100");
    cli.run(&["--url", "http://127.0.0.1:9", "naver", "list-keys"])
        .code(6);

    // Token authentication: a token set, a crypto call with the access
    // token, renewal and a new access token with the refresh token.
    cli.run(&["naver", "token-generator", &tag, "create"]).ok();
    let set = cli.run(&["naver", "token-set", "create", &tag]);
    let access = set.ok()["accessToken"].as_str().unwrap().to_string();
    let refresh = set.ok()["refreshToken"].as_str().unwrap().to_string();
    let by_token = cli.run_env(
        &["naver", "--auth", "token", "encrypt", &tag, "--text", "t"],
        &[("HSM_KMS_CLIENT_TOKEN", &access)],
    );
    let ct3 = by_token.ok()["ciphertext"].as_str().unwrap().to_string();
    assert_eq!(kms.decrypt_ok(&tag, &ct3, None).await, b"t");
    // Token authentication only: no access key at all.
    let token_only = Client::new()
        .with("HSM_KMS_CLIENT_URL", &kms.url)
        .with("HSM_KMS_CLIENT_TOKEN", &access);
    token_only
        .run(&["naver", "decrypt", &tag, "--ciphertext", &ct3])
        .ok();
    token_only.run(&["naver", "list-keys"]).code(1);
    let renewed = cli.run_env(
        &["naver", "token-set", "renew", &tag],
        &[("HSM_KMS_CLIENT_REFRESH_TOKEN", &refresh)],
    );
    assert!(renewed.ok()["accessToken"].is_string());
    // The renewed set's refresh token (whether renewal revokes the one it
    // was called with is issue 13 §1's question, not the client's).
    let refresh2 = renewed.json["refreshToken"].as_str().unwrap().to_string();
    let access2 = cli.run_env(
        &["naver", "token-set", "access-token", &tag],
        &[("HSM_KMS_CLIENT_REFRESH_TOKEN", &refresh2)],
    );
    assert!(access2.ok()["accessToken"].is_string());
}

#[tokio::test]
async fn credentials_come_from_a_private_profile_or_the_environment_only() {
    // No server: nothing listens on port 9, so a run that gets past its
    // credentials ends with 6 (no answer).
    let cli = Client::new();
    let file = cli.home.path().join("profiles.toml");
    let text = profile(
        "default",
        &[
            ("url", "http://127.0.0.1:9"),
            ("access_key", "AK"),
            ("secret_key", "SK"),
        ],
    ) + &profile("other", &[("url", "http://127.0.0.1:9")]);
    let f = file.to_str().unwrap();

    cli.write_profile(&file, &text, 0o600);
    cli.run(&["--profile-file", f, "naver", "list-keys"])
        .code(6);
    // Readable by the group or others: refused before anything is sent.
    for mode in [0o640, 0o604, 0o660] {
        cli.write_profile(&file, &text, mode);
        let r = cli.run(&["--profile-file", f, "naver", "list-keys"]);
        assert!(r.code(1).stderr.contains("chmod 600"), "{}", r.stderr);
    }
    cli.write_profile(&file, &text, 0o600);
    // A named profile that is not there; a profile without credentials.
    let r = cli.run(&[
        "--profile-file",
        f,
        "--profile",
        "nope",
        "naver",
        "list-keys",
    ]);
    assert!(r.code(1).stderr.contains("[nope]"), "{}", r.stderr);
    let r = cli.run(&[
        "--profile-file",
        f,
        "--profile",
        "other",
        "naver",
        "list-keys",
    ]);
    assert!(
        r.code(1).stderr.contains("HSM_KMS_CLIENT_ACCESS_KEY"),
        "{}",
        r.stderr
    );
    // ... which the environment completes.
    cli.run_env(
        &[
            "--profile-file",
            f,
            "--profile",
            "other",
            "naver",
            "list-keys",
        ],
        &[
            ("HSM_KMS_CLIENT_ACCESS_KEY", "AK"),
            ("HSM_KMS_CLIENT_SECRET_KEY", "SK"),
        ],
    )
    .code(6);
    // An unknown field is refused, and its value is not echoed.
    cli.write_profile(&file, "[default]\npassword = \"hunter2-secret\"\n", 0o600);
    let r = cli.run(&["--profile-file", f, "naver", "list-keys"]);
    assert!(!r.code(1).stderr.contains("hunter2-secret"), "{}", r.stderr);
    // A missing file named on the command line.
    cli.run(&[
        "--profile-file",
        "/nonexistent/profiles.toml",
        "naver",
        "list-keys",
    ])
    .code(1);
    // No option takes a credential: these are usage errors (2).
    for (opt, v) in [
        ("--secret-key", "SK"),
        ("--access-key", "AK"),
        ("--token", "T"),
        ("--appkey", "A"),
        ("--secret-access-key", "S"),
    ] {
        cli.run(&["naver", opt, v, "list-keys"]).code(2);
        cli.run(&["nhn", opt, v, "confirm"]).code(2);
    }
}

// Multi-threaded: the client runs as a blocking subprocess while this
// process's server answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nhn_calls_with_user_access_key_and_mac() {
    let kms = nhn::start().await;
    let p = nhn::project(&kms, "cli", true).await;
    nhn::key_store(&kms, &p, "ks", false, false, false, true).await;
    let ks_mac = nhn::key_store(&kms, &p, "ks-mac", false, true, false, false).await;
    let mac = "aa:bb:cc:dd:ee:01";
    nhn::ok(
        &nhn::call(
            &kms,
            &p,
            "POST",
            "/auths/macs",
            Some(json!({"keyStoreName": "ks-mac", "value": mac})),
        )
        .await,
    );
    // Credentials from the environment alone (no profile file).
    let cli = Client::new()
        .with("HSM_KMS_CLIENT_URL", &kms.url)
        .with("HSM_KMS_CLIENT_APPKEY", &p.appkey)
        .with("HSM_KMS_CLIENT_USER_ACCESS_KEY_ID", &p.uak.0)
        .with("HSM_KMS_CLIENT_SECRET_ACCESS_KEY", &p.uak.1);

    assert_eq!(
        cli.run(&["nhn", "confirm"]).ok()["clientSentCertificate"],
        false
    );
    // Symmetric keys.
    let k = cli.run(&[
        "nhn",
        "create-key",
        "symmetric-keys",
        "--key-store",
        "ks",
        "--name",
        "data",
    ]);
    let key = k.ok()["keyId"].as_str().unwrap().to_string();
    let enc = cli.run(&["nhn", "encrypt", &key, "--text", "hello nhn"]);
    let ct = enc.ok()["ciphertext"].as_str().unwrap().to_string();
    let dec = cli.run(&["nhn", "decrypt", &key, "--ciphertext", &ct]);
    assert_eq!(dec.ok()["plaintext"], "hello nhn");
    assert!(cli.run(&["nhn", "create-local-key", &key]).ok()["localKeyCiphertext"].is_string());
    assert!(cli
        .run(&["nhn", "symmetric-key", &key, "--key-version", "0"])
        .ok()["symmetricKey"]
        .is_string());
    // Secrets: the value from a variable or a file, never argv.
    let s = cli.run_env(
        &[
            "nhn",
            "create-key",
            "secrets",
            "--key-store",
            "ks",
            "--name",
            "pw",
            "--value-env",
            "PW",
        ],
        &[("PW", "first value")],
    );
    let secret = s.ok()["keyId"].as_str().unwrap().to_string();
    assert_eq!(
        cli.run(&["nhn", "get-secret", &secret]).ok()["secret"],
        "first value"
    );
    let file = cli.home.path().join("value");
    std::fs::write(&file, "second value\n").unwrap();
    cli.run(&[
        "nhn",
        "update-secret",
        &secret,
        "--value-file",
        file.to_str().unwrap(),
    ])
    .ok();
    assert_eq!(
        cli.run(&["nhn", "get-secret", &secret]).ok()["secret"],
        "second value"
    );
    cli.run(&["nhn", "update-secret", &secret, "--value", "x"])
        .code(2);
    // Asymmetric keys.
    let a = cli.run(&[
        "nhn",
        "create-key",
        "asymmetric-keys",
        "--key-store",
        "ks",
        "--name",
        "signer",
    ]);
    let signer = a.ok()["keyId"].as_str().unwrap().to_string();
    let sig = cli.run(&["nhn", "sign", &signer, "--text", "doc"]);
    let sig = sig.ok()["signature"].as_str().unwrap().to_string();
    let good = cli.run(&[
        "nhn",
        "verify",
        &signer,
        "--text",
        "doc",
        "--signature",
        &sig,
    ]);
    assert_eq!(good.ok()["result"], true);
    cli.run(&[
        "nhn",
        "verify",
        &signer,
        "--text",
        "dog",
        "--signature",
        &sig,
    ])
    .code(7);
    assert!(cli.run(&["nhn", "public-key", &signer]).ok()["encodedKey"].is_string());
    assert!(cli.run(&["nhn", "private-key", &signer]).ok()["encodedKey"].is_string());
    // Key-store queries.
    let stores = cli.run(&["nhn", "key-stores"]);
    assert_eq!(stores.ok()["keyStoreIdList"].as_array().unwrap().len(), 2);
    let ks_id = stores.json["keyStoreIdList"][0].as_i64().unwrap();
    let keys = cli.run(&["nhn", "keys", &ks_id.to_string(), "--type", "SECRET"]);
    assert_eq!(keys.ok()["keyIdList"], json!([secret]));
    let one = cli.run(&["nhn", "key", &ks_id.to_string(), &key]);
    assert_eq!(one.ok()["keyId"], key.as_str());

    // Refusals by exit code: no User Access Key on a management call (4),
    // an unknown key (5).
    let r = cli.run(&["nhn", "--no-user-access-key", "key-stores"]);
    assert_eq!(r.code(4).json["header"]["resultCode"], -1102);
    let r = cli.run(&["nhn", "get-secret", &"0".repeat(32)]);
    assert_eq!(r.code(5).json["header"]["resultCode"], -1300);
    // A wrong appkey never shows in a message.
    let r = cli.run_env(
        &["nhn", "confirm"],
        &[("HSM_KMS_CLIENT_APPKEY", "NotAnAppkey0000000001")],
    );
    assert!(
        !r.code(4).stderr.contains("NotAnAppkey0000000001"),
        "{}",
        r.stderr
    );

    // MAC authentication: refused without the header, served with it.
    let mk = cli.run(&[
        "nhn",
        "create-key",
        "symmetric-keys",
        "--key-store",
        "ks-mac",
        "--name",
        "mac-key",
    ]);
    let mac_key = mk.ok()["keyId"].as_str().unwrap().to_string();
    let r = cli.run(&["nhn", "encrypt", &mac_key, "--text", "m"]);
    assert_eq!(r.code(4).json["header"]["resultCode"], -1201);
    cli.run(&["nhn", "--mac", mac, "encrypt", &mac_key, "--text", "m"])
        .ok();
    cli.run_env(
        &["nhn", "encrypt", &mac_key, "--text", "m"],
        &[("HSM_KMS_CLIENT_MAC", mac)],
    )
    .ok();
    let r = cli.run(&["nhn", "keys", &ks_mac.to_string()]);
    assert_eq!(r.ok()["keyIdList"], json!([mac_key]));

    // Deletion: asked for, then done.
    cli.run(&["nhn", "request-deletion", &mac_key]).ok();
    cli.run(&["nhn", "delete-key", &mac_key]).ok();
    let r = cli.run(&["nhn", "--mac", mac, "encrypt", &mac_key, "--text", "m"]);
    assert_eq!(r.code(5).json["header"]["resultCode"], -1300);
}

// Multi-threaded: the client runs as a blocking subprocess while this
// process's server answers it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nhn_client_certificate_from_a_pkcs12_file() {
    use hsm_kms::core::nhn::{KeyStoreSettings, NhnKeyType};
    // A server with a TLS listener whose certificate the client trusts
    // through `ca_file`, and a key store with certificate authentication.
    let dir = tempfile::tempdir().unwrap();
    common::make_token(dir.path(), "hsm-kms-test");
    let mut cfg = common::config(dir.path());
    let server = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cert_file = dir.path().join("server.pem");
    let key_file = dir.path().join("server.key");
    std::fs::write(&cert_file, server.cert.pem()).unwrap();
    std::fs::write(&key_file, server.signing_key.serialize_pem()).unwrap();
    cfg.tls.listen = "127.0.0.1:0".into();
    cfg.tls.cert_file = cert_file.display().to_string();
    cfg.tls.key_file = key_file.display().to_string();
    cfg.tls.client_auth = true;
    hsm_kms::server::init(&cfg, "default").await.unwrap();
    let running = hsm_kms::server::start(&cfg, std::future::pending())
        .await
        .unwrap();
    let e = &running.engine;
    e.nhn_create_project("p", true).await.unwrap();
    let appkey = e.nhn_create_appkey("p").await.unwrap();
    e.nhn_create_key_store(
        "p",
        KeyStoreSettings {
            name: "TLS".into(),
            certificate_auth_use: true,
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let project = e.nhn_project("p").await.unwrap();
    e.nhn_add_certificate(&project, "TLS", "c1", "pw-c1", 30, "cli", "ADMIN")
        .await
        .unwrap();
    let p12 = dir.path().join("c1.p12");
    std::fs::write(
        &p12,
        &*e.nhn_export_certificate("p", "TLS", "c1").await.unwrap(),
    )
    .unwrap();
    let secret = e
        .nhn_create_key(
            &project,
            "TLS",
            NhnKeyType::Secret,
            "s",
            "",
            Some("over mTLS"),
            0,
            "ADMIN",
        )
        .await
        .unwrap()
        .entry
        .key
        .uid
        .clone();
    let tls = running.tls_addr.expect("TLS listener");
    let cli = Client::new()
        .with(
            "HSM_KMS_CLIENT_URL",
            &format!("https://127.0.0.1:{}", tls.port()),
        )
        .with("HSM_KMS_CLIENT_APPKEY", &appkey)
        .with("HSM_KMS_CLIENT_CA_FILE", cert_file.to_str().unwrap());
    let p12 = p12.to_str().unwrap();

    // Without a certificate: TLS works, the key store refuses (4, -1202).
    let r = cli.run(&["nhn", "get-secret", &secret]);
    assert_eq!(r.code(4).json["header"]["resultCode"], -1202);
    // With the PKCS#12 file and its password (from the environment).
    let with_cert = [
        ("HSM_KMS_CLIENT_CERT", p12),
        ("HSM_KMS_CLIENT_CERT_PASSWORD", "pw-c1"),
    ];
    let r = cli.run_env(&["nhn", "get-secret", &secret], &with_cert);
    assert_eq!(r.ok()["secret"], "over mTLS");
    let r = cli.run_env(&["nhn", "confirm"], &with_cert);
    assert_eq!(r.ok()["clientSentCertificate"], true);
    // A wrong password: nothing is sent (1), and the password is not shown.
    let r = cli.run_env(
        &["nhn", "confirm"],
        &[
            ("HSM_KMS_CLIENT_CERT", p12),
            ("HSM_KMS_CLIENT_CERT_PASSWORD", "not-pw-c1"),
        ],
    );
    assert!(!r.code(1).stderr.contains("not-pw-c1"), "{}", r.stderr);
    // A server certificate the client does not trust: no answer (6).
    let r = cli.run_env(&["nhn", "confirm"], &[("HSM_KMS_CLIENT_CA_FILE", "")]);
    r.code(6);
}
