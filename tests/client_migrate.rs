//! Issue 13 §3: `hsm-kms client migrate`, with two real servers: one
//! stands in for the vendor (NAVER Cloud KMS, NHN Secure Key Manager)
//! holding the keys and the ciphertexts made with them, the other is the
//! hsm-kms the application moves to, where the operator recreated the
//! identifiers (`admin naver create-key --key-tag`, `admin nhn
//! create-appkey --appkey`, `import-user-access-key`, `create-key-store
//! --id`, `create-key --key-id`). The migrated ciphertexts decrypt there
//! under the same identifiers, through the same client configuration but
//! for the base URL.
mod common;

use common::client::{profile, Client};
use common::process::Site;
use serde_json::{json, Value};

/// The value of `name=` in an admin command's output.
fn field(out: &str, name: &str) -> String {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {out}"))
        .to_string()
}

#[tokio::test]
async fn naver_ciphertexts_move_under_the_same_key_tag() {
    let mut vendor = Site::init();
    let at_vendor = vendor.serve(&[]).await;
    let cli = Client::new();
    let file = cli.home.path().join("profiles.toml");
    let pf = file.to_str().unwrap().to_string();
    let source = profile(
        "source",
        &[
            ("url", &at_vendor.url),
            ("access_key", &vendor.access_key),
            ("secret_key", &vendor.secret_key),
        ],
    );
    cli.write_profile(&file, &source, 0o600);
    let vendor_cli = |args: &[&str]| {
        let mut a = vec![
            "--profile-file",
            pf.as_str(),
            "--profile",
            "source",
            "naver",
        ];
        a.extend_from_slice(args);
        cli.run(&a)
    };

    // The application's key and data at the vendor.
    let made = vendor_cli(&["create-key", "--key-name", "app-key"]);
    let tag = made.ok()["keyTag"].as_str().unwrap().to_string();
    let texts = ["alpha", "beta", "gamma"];
    let cts: Vec<String> = texts
        .iter()
        .map(|t| {
            let r = vendor_cli(&["encrypt", &tag, "--text", t]);
            r.ok()["ciphertext"].as_str().unwrap().to_string()
        })
        .collect();

    // hsm-kms: the key recreated under the vendor's tag, then served.
    let mut ours = Site::init();
    ours.admin(&[
        "admin",
        "naver",
        "create-key",
        "--key-name",
        "app-key",
        "--key-tag",
        &tag,
    ]);
    let at_ours = ours.serve(&[]).await;
    let target = profile(
        "target",
        &[
            ("url", &at_ours.url),
            ("access_key", &ours.access_key),
            ("secret_key", &ours.secret_key),
        ],
    );
    cli.write_profile(&file, &format!("{source}{target}"), 0o600);

    // One ciphertext per line; a blank line stays blank; a line the
    // vendor cannot decrypt stays blank and makes the exit code 8.
    let input = cli.home.path().join("in.txt");
    let output = cli.home.path().join("out.txt");
    std::fs::write(
        &input,
        format!("{}\n{}\n\n{}\nncpkms:v1:AAAA\n", cts[0], cts[1], cts[2]),
    )
    .unwrap();
    let (i, o) = (input.to_str().unwrap(), output.to_str().unwrap());
    let run = cli.run(&[
        "--profile-file",
        &pf,
        "migrate",
        "naver",
        "--key",
        &tag,
        "--input",
        i,
        "--output",
        o,
    ]);
    assert_eq!(
        run.code(8).json,
        json!({"migrated": 3, "failed": 1, "blank": 1, "output": o})
    );
    assert!(run.stderr.contains("line 5"), "{}", run.stderr);
    let lines: Vec<String> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(lines.len(), 5, "{lines:?}");
    assert!(lines[2].is_empty() && lines[4].is_empty(), "{lines:?}");
    for (line, text) in [(0, texts[0]), (1, texts[1]), (3, texts[2])] {
        assert_ne!(lines[line], cts[line.min(2)], "re-encrypted");
        let r = at_ours
            .call(
                "POST",
                &format!("/kms/v1/keys/{tag}/decrypt"),
                Some(json!({"ciphertext": lines[line]})),
            )
            .await;
        assert_eq!(r.ok()["plaintext"], common::b64(text.as_bytes()));
    }

    // JSON lines: every other field kept, all migrated: exit 0.
    let jsonl: String = cts
        .iter()
        .enumerate()
        .map(|(n, ct)| {
            format!(
                "{}\n",
                json!({"id": n, "ciphertext": ct, "table": "orders"})
            )
        })
        .collect();
    std::fs::write(&input, jsonl).unwrap();
    let run = cli.run(&[
        "--profile-file",
        &pf,
        "migrate",
        "naver",
        "--format",
        "jsonl",
        "--key",
        &tag,
        "--input",
        i,
        "--output",
        o,
    ]);
    assert_eq!(run.code(0).json["migrated"], 3);
    let records: Vec<Value> = std::fs::read_to_string(&output)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for (n, r) in records.iter().enumerate() {
        assert_eq!(r["id"], n);
        assert_eq!(r["table"], "orders");
        let back = at_ours
            .call(
                "POST",
                &format!("/kms/v1/keys/{tag}/decrypt"),
                Some(json!({"ciphertext": r["ciphertext"]})),
            )
            .await;
        assert_eq!(back.ok()["plaintext"], common::b64(texts[n].as_bytes()));
    }

    // Nothing migrated because the source refuses the credentials: the
    // exit code is the refusal's (4), not "partial".
    let run = cli.run_env(
        &[
            "--profile-file",
            &pf,
            "migrate",
            "naver",
            "--format",
            "jsonl",
            "--key",
            &tag,
            "--input",
            i,
            "--output",
            o,
        ],
        &[("HSM_KMS_SOURCE_SECRET_KEY", "not-the-secret-key")],
    );
    assert_eq!(run.code(4).json["failed"], 3);
}

#[tokio::test]
async fn nhn_ciphertexts_move_with_the_same_appkey_user_access_key_and_ids() {
    // The vendor: a project with an appkey, a User Access Key, a key store.
    let mut vendor = Site::init();
    vendor.admin(&["admin", "nhn", "create-project", "shop"]);
    let (out, _) = vendor.admin(&["admin", "nhn", "create-appkey", "--project", "shop"]);
    let appkey = field(&out, "appkey");
    let (out, _) = vendor.admin(&[
        "admin",
        "nhn",
        "create-user-access-key",
        "--project",
        "shop",
    ]);
    let (uak, secret) = (
        field(&out, "user_access_key"),
        field(&out, "secret_access_key"),
    );
    let (out, _) = vendor.admin(&[
        "admin",
        "nhn",
        "create-key-store",
        "--project",
        "shop",
        "--name",
        "main",
    ]);
    let ksid = field(&out, "keyStoreId");
    let at_vendor = vendor.serve(&[]).await;

    // The application's configuration: every identifier but the URL.
    let app = |url: &str| {
        Client::new()
            .with("HSM_KMS_CLIENT_URL", url)
            .with("HSM_KMS_CLIENT_APPKEY", &appkey)
            .with("HSM_KMS_CLIENT_USER_ACCESS_KEY_ID", &uak)
            .with("HSM_KMS_CLIENT_SECRET_ACCESS_KEY", &secret)
    };
    let at_vendor_cli = app(&at_vendor.url);
    let made = at_vendor_cli.run(&[
        "nhn",
        "create-key",
        "symmetric-keys",
        "--key-store",
        "main",
        "--name",
        "data",
    ]);
    let key = made.ok()["keyId"].as_str().unwrap().to_string();
    let texts = ["card 4111", "card 5500", "card 3400"];
    let cts: Vec<String> = texts
        .iter()
        .map(|t| {
            let r = at_vendor_cli.run(&["nhn", "encrypt", &key, "--text", t]);
            r.ok()["ciphertext"].as_str().unwrap().to_string()
        })
        .collect();

    // hsm-kms: the same appkey, User Access Key, key-store id and key id.
    let mut ours = Site::init();
    ours.admin(&["admin", "nhn", "create-project", "shop"]);
    ours.admin(&[
        "admin",
        "nhn",
        "create-appkey",
        "--project",
        "shop",
        "--appkey",
        &appkey,
    ]);
    let secret_file = ours.dir.path().join("uak-secret");
    std::fs::write(&secret_file, &secret).unwrap();
    ours.admin(&[
        "admin",
        "nhn",
        "import-user-access-key",
        "--project",
        "shop",
        "--id",
        &uak,
        "--secret-file",
        secret_file.to_str().unwrap(),
    ]);
    ours.admin(&[
        "admin",
        "nhn",
        "create-key-store",
        "--project",
        "shop",
        "--name",
        "main",
        "--id",
        &ksid,
    ]);
    ours.admin(&[
        "admin",
        "nhn",
        "create-key",
        "--project",
        "shop",
        "--key-store",
        "main",
        "--type",
        "symmetric",
        "--name",
        "data",
        "--key-id",
        &key,
    ]);
    let at_ours = ours.serve(&[]).await;

    let cli = Client::new()
        .with("HSM_KMS_SOURCE_URL", &at_vendor.url)
        .with("HSM_KMS_SOURCE_APPKEY", &appkey)
        .with("HSM_KMS_SOURCE_USER_ACCESS_KEY_ID", &uak)
        .with("HSM_KMS_SOURCE_SECRET_ACCESS_KEY", &secret)
        .with("HSM_KMS_TARGET_URL", &at_ours.url)
        .with("HSM_KMS_TARGET_APPKEY", &appkey)
        .with("HSM_KMS_TARGET_USER_ACCESS_KEY_ID", &uak)
        .with("HSM_KMS_TARGET_SECRET_ACCESS_KEY", &secret);
    let input = cli.home.path().join("in.txt");
    let output = cli.home.path().join("out.txt");
    std::fs::write(&input, cts.join("\n") + "\n").unwrap();
    let run = cli.run(&[
        "migrate",
        "nhn",
        "--key",
        &key,
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert_eq!(run.code(0).json["migrated"], 3);

    // The application, pointed at hsm-kms by its URL alone, reads its data
    // and its key-store queries answer the same ids.
    let moved = app(&at_ours.url);
    for (line, text) in std::fs::read_to_string(&output).unwrap().lines().zip(texts) {
        let r = moved.run(&["nhn", "decrypt", &key, "--ciphertext", line]);
        assert_eq!(r.ok()["plaintext"], text);
    }
    let keys = moved.run(&["nhn", "keys", &ksid]);
    assert_eq!(keys.ok()["keyIdList"], json!([key]));
    // The vendor's ciphertexts are not hsm-kms's: another key material.
    moved
        .run(&["nhn", "decrypt", &key, "--ciphertext", &cts[0]])
        .code(3);
}
