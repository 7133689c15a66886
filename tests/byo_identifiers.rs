//! Issue 13 §3: bring your own identifiers. An application moving from
//! NAVER Cloud KMS or NHN Secure Key Manager keeps its configuration (key
//! tags; appkey, User Access Key, key-store and key ids) when the operator
//! recreates them with the admin CLI, which checks their form and refuses
//! clashes with a clear error. Secrets (the Secret Access Key, a secret's
//! value) come from an environment variable or a file, never from argv.
mod common;
#[path = "common/nhn.rs"]
mod nhn;

use common::{Kms, Reply};
use nhn::{err, ok};
use serde_json::{json, Value};

/// `hsm-kms ARGS` on the service's token and store with extra variables:
/// (success, stdout, stderr).
fn admin(kms: &Kms, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let mut c = kms.cli();
    c.args(args);
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run hsm-kms");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs an admin command that must succeed; returns its stdout.
fn admin_ok(kms: &Kms, args: &[&str], env: &[(&str, &str)]) -> String {
    let (ok, out, err) = admin(kms, args, env);
    assert!(ok, "hsm-kms {args:?} failed: {err}");
    out
}

/// Runs an admin command that must fail with `why` in its message.
fn admin_refused(kms: &Kms, args: &[&str], env: &[(&str, &str)], why: &str) {
    let (ok, out, err) = admin(kms, args, env);
    assert!(!ok, "hsm-kms {args:?} should fail: {out}");
    assert!(
        err.contains(why),
        "hsm-kms {args:?}: expected {why:?} in: {err}"
    );
}

/// The value of `name=` in an admin command's output.
fn field(out: &str, name: &str) -> String {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {out}"))
        .to_string()
}

/// The tag of a key NAVER isolated in a region is brought to the service
/// that is that region's address (`naver.region`), in either case.
#[tokio::test]
async fn naver_key_tag_of_a_region_is_brought_to_that_regions_address() {
    let jpn = Kms::start_with(|c| c.naver.region = "jpn".into()).await;
    let region_given = format!("JPN-{}", "B".repeat(64));
    let region_tag = region_given.to_ascii_lowercase();
    let out = admin_ok(
        &jpn,
        &[
            "admin",
            "naver",
            "create-key",
            "--key-name",
            "byo-jpn",
            "--key-tag",
            &region_given,
        ],
        &[],
    );
    assert_eq!(field(&out, "keyTag"), region_tag, "{out}");
    let ct = jpn.encrypt(&region_tag, b"region", None).await;
    assert_eq!(jpn.decrypt_ok(&region_tag, &ct, None).await, b"region");
}

#[tokio::test]
async fn naver_key_tag_brought_from_naver() {
    let kms = Kms::start().await;
    // NAVER's form: 64 hexadecimal digits; given in upper case here.
    let given = "0123456789ABCDEF".repeat(4);
    let tag = given.to_ascii_lowercase();
    let out = admin_ok(
        &kms,
        &[
            "admin",
            "naver",
            "create-key",
            "--key-name",
            "byo-aes",
            "--key-tag",
            &given,
        ],
        &[],
    );
    assert_eq!(field(&out, "keyTag"), tag, "kept in lower case: {out}");

    // The application's configured tag works as it did at NAVER.
    let info = kms.call("GET", &format!("/kms/v1/keys/{tag}"), None).await;
    assert_eq!(info.ok()["keyTag"], tag.as_str());
    assert_eq!(info.ok()["keyName"], "byo-aes");
    let ct = kms.encrypt(&tag, b"moved", None).await;
    assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, b"moved");

    // Clashes: the same tag (either case), and a tag the service made.
    for t in [given.as_str(), tag.as_str()] {
        admin_refused(
            &kms,
            &[
                "admin",
                "naver",
                "create-key",
                "--key-name",
                "byo-two",
                "--key-tag",
                t,
            ],
            &[],
            "is taken",
        );
    }
    let made = kms.create_key("made-here", "AES256", json!({})).await;
    admin_refused(
        &kms,
        &[
            "admin",
            "naver",
            "create-key",
            "--key-name",
            "byo-three",
            "--key-tag",
            &made,
        ],
        &[],
        "is taken",
    );

    // A region-isolated key's tag: NAVER's prefix, either case. This
    // service is the global address: a JPN key could not be called here
    // (every call would answer 400), so it is refused at creation.
    let region_given = format!("JPN-{}", "B".repeat(64));
    let byo_jpn = [
        "admin",
        "naver",
        "create-key",
        "--key-name",
        "byo-jpn",
        "--key-tag",
        region_given.as_str(),
    ];
    admin_refused(&kms, &byo_jpn, &[], "isolated in region jpn");

    // The vendor's forms only.
    let short = "a".repeat(63);
    let not_hex = format!("{}g", "a".repeat(63));
    let other_region = format!("us-{}", "b".repeat(64));
    let prefix_only = format!("kr-{}", "b".repeat(63));
    for bad in [
        short.as_str(),
        not_hex.as_str(),
        other_region.as_str(),
        prefix_only.as_str(),
    ] {
        admin_refused(
            &kms,
            &[
                "admin",
                "naver",
                "create-key",
                "--key-name",
                "byo-bad",
                "--key-tag",
                bad,
            ],
            &[],
            "64 hexadecimal digits",
        );
    }
    // Nothing was made by the refused commands.
    let list = kms.call("GET", "/kms/v1/keys", None).await;
    assert_eq!(list.ok()["totalCount"], 2, "{}", list.body);
}

/// An NHN call under `appkey` with these headers.
async fn nhn_call(
    kms: &Kms,
    appkey: &str,
    method: &str,
    suffix: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let h: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    kms.raw(
        method,
        &format!("/keymanager/v1.2/appkey/{appkey}{suffix}"),
        &h,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
}

#[tokio::test]
async fn nhn_identifiers_brought_from_nhn() {
    let kms = Kms::start().await;
    admin_ok(&kms, &["admin", "nhn", "create-project", "moved"], &[]);
    admin_ok(&kms, &["admin", "nhn", "create-project", "other"], &[]);

    // Appkey.
    let appkey = "Ab3dEf7hIj9kLm1n";
    let out = admin_ok(
        &kms,
        &[
            "admin",
            "nhn",
            "create-appkey",
            "--project",
            "moved",
            "--appkey",
            appkey,
        ],
        &[],
    );
    assert_eq!(field(&out, "appkey"), appkey);
    ok(&nhn_call(&kms, appkey, "GET", "/confirm", None, &[]).await);
    for project in ["moved", "other"] {
        admin_refused(
            &kms,
            &[
                "admin",
                "nhn",
                "create-appkey",
                "--project",
                project,
                "--appkey",
                appkey,
            ],
            &[],
            "already registered",
        );
    }
    for bad in ["short", "has-a-dash-0001", &"x".repeat(65)] {
        admin_refused(
            &kms,
            &[
                "admin",
                "nhn",
                "create-appkey",
                "--project",
                "moved",
                "--appkey",
                bad,
            ],
            &[],
            "8 to 64 ASCII letters and digits",
        );
    }
    // A revoked appkey stays revoked: registering it again is a clash.
    let old = "RevokedAppkey000";
    admin_ok(
        &kms,
        &[
            "admin",
            "nhn",
            "create-appkey",
            "--project",
            "moved",
            "--appkey",
            old,
        ],
        &[],
    );
    admin_ok(&kms, &["admin", "nhn", "revoke-appkey", old], &[]);
    admin_refused(
        &kms,
        &[
            "admin",
            "nhn",
            "create-appkey",
            "--project",
            "moved",
            "--appkey",
            old,
        ],
        &[],
        "already registered",
    );

    // User Access Key: the secret from an environment variable or a file.
    let uak = "UakFromNhn0000000001";
    let secret = "S3cret-Access-Key-From-NHN";
    let out = admin_ok(
        &kms,
        &[
            "admin",
            "nhn",
            "import-user-access-key",
            "--project",
            "moved",
            "--id",
            uak,
        ],
        &[("HSM_KMS_NHN_SECRET_ACCESS_KEY", secret)],
    );
    assert_eq!(field(&out, "user_access_key"), uak);
    assert!(!out.contains(secret), "the secret is never printed: {out}");
    let uak_headers = [
        ("X-TC-AUTHENTICATION-ID", uak),
        ("X-TC-AUTHENTICATION-SECRET", secret),
    ];
    ok(&nhn_call(&kms, appkey, "GET", "/keystores", None, &uak_headers).await);
    let wrong = [
        ("X-TC-AUTHENTICATION-ID", uak),
        ("X-TC-AUTHENTICATION-SECRET", "not-the-secret"),
    ];
    err(
        &nhn_call(&kms, appkey, "GET", "/keystores", None, &wrong).await,
        401,
        -1101,
    );
    let file = kms.dir.path().join("uak-secret");
    std::fs::write(&file, "Second-Secret-Key-0001\n").unwrap();
    admin_ok(
        &kms,
        &[
            "admin",
            "nhn",
            "import-user-access-key",
            "--project",
            "moved",
            "--id",
            "UakFromNhn0000000002",
            "--secret-file",
            file.to_str().unwrap(),
        ],
        &[],
    );
    let second = [
        ("X-TC-AUTHENTICATION-ID", "UakFromNhn0000000002"),
        ("X-TC-AUTHENTICATION-SECRET", "Second-Secret-Key-0001"),
    ];
    ok(&nhn_call(&kms, appkey, "GET", "/keystores", None, &second).await);
    admin_refused(
        &kms,
        &[
            "admin",
            "nhn",
            "import-user-access-key",
            "--project",
            "other",
            "--id",
            uak,
        ],
        &[("HSM_KMS_NHN_SECRET_ACCESS_KEY", secret)],
        "already registered",
    );
    admin_refused(
        &kms,
        &[
            "admin",
            "nhn",
            "import-user-access-key",
            "--project",
            "moved",
            "--id",
            "UakFromNhn0000000003",
        ],
        &[],
        "HSM_KMS_NHN_SECRET_ACCESS_KEY",
    );
    // There is no option that takes the secret on the command line.
    let (done, _, usage) = admin(
        &kms,
        &[
            "admin",
            "nhn",
            "import-user-access-key",
            "--project",
            "moved",
            "--id",
            "UakFromNhn0000000004",
            "--secret",
            secret,
        ],
        &[],
    );
    assert!(!done && usage.contains("--secret"), "{usage}");

    // Key stores: the id given, and ids made later come after it (on
    // PostgreSQL the identity sequence is moved past it).
    let out = admin_ok(
        &kms,
        &[
            "admin",
            "nhn",
            "create-key-store",
            "--project",
            "moved",
            "--name",
            "first",
        ],
        &[],
    );
    let first: i64 = field(&out, "keyStoreId").parse().unwrap();
    let byo = (first + 1).to_string();
    let out = admin_ok(
        &kms,
        &[
            "admin",
            "nhn",
            "create-key-store",
            "--project",
            "moved",
            "--name",
            "byo",
            "--id",
            &byo,
        ],
        &[],
    );
    assert_eq!(field(&out, "keyStoreId"), byo);
    let out = admin_ok(
        &kms,
        &[
            "admin",
            "nhn",
            "create-key-store",
            "--project",
            "moved",
            "--name",
            "after",
        ],
        &[],
    );
    let after: i64 = field(&out, "keyStoreId").parse().unwrap();
    assert!(after > first + 1, "a later key store got id {after}");
    for project in ["moved", "other"] {
        admin_refused(
            &kms,
            &[
                "admin",
                "nhn",
                "create-key-store",
                "--project",
                project,
                "--name",
                "again",
                "--id",
                &byo,
            ],
            &[],
            "is taken",
        );
    }
    admin_refused(
        &kms,
        &[
            "admin",
            "nhn",
            "create-key-store",
            "--project",
            "moved",
            "--name",
            "zero",
            "--id",
            "0",
        ],
        &[],
        "positive integer",
    );
    let stores = nhn_call(&kms, appkey, "GET", "/keystores", None, &uak_headers).await;
    let ids: Vec<i64> = ok(&stores)["keyStoreIdList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3, "{ids:?}");
    assert!(ids.contains(&(first + 1)), "{ids:?}");

    // Keys: the id given (either case), in the key store given.
    let key_given = "00112233445566778899AABBCCDDEEFF";
    let key_id = key_given.to_ascii_lowercase();
    let out = admin_ok(
        &kms,
        &[
            "admin",
            "nhn",
            "create-key",
            "--project",
            "moved",
            "--key-store",
            "byo",
            "--type",
            "symmetric",
            "--name",
            "data-key",
            "--key-id",
            key_given,
        ],
        &[],
    );
    assert_eq!(field(&out, "keyId"), key_id);
    let enc = nhn_call(
        &kms,
        appkey,
        "POST",
        &format!("/symmetric-keys/{key_id}/encrypt"),
        Some(json!({"plaintext": "moved data"})),
        &[],
    )
    .await;
    let ct = ok(&enc)["ciphertext"].as_str().unwrap().to_string();
    let dec = nhn_call(
        &kms,
        appkey,
        "POST",
        &format!("/symmetric-keys/{key_id}/decrypt"),
        Some(json!({"ciphertext": ct})),
        &[],
    )
    .await;
    assert_eq!(ok(&dec)["plaintext"], "moved data");
    let listed = nhn_call(
        &kms,
        appkey,
        "GET",
        &format!("/keystores/{byo}/keys"),
        None,
        &uak_headers,
    )
    .await;
    assert_eq!(ok(&listed)["keyIdList"], json!([key_id]));

    // A secret: its value from an environment variable.
    let secret_id = "ffeeddccbbaa99887766554433221100";
    admin_ok(
        &kms,
        &[
            "admin",
            "nhn",
            "create-key",
            "--project",
            "moved",
            "--key-store",
            "byo",
            "--type",
            "secret",
            "--name",
            "db-password",
            "--key-id",
            secret_id,
            "--secret-env",
            "DB_PASSWORD",
        ],
        &[("DB_PASSWORD", "correct horse battery staple")],
    );
    let got = nhn_call(
        &kms,
        appkey,
        "GET",
        &format!("/secrets/{secret_id}"),
        None,
        &[],
    )
    .await;
    assert_eq!(ok(&got)["secret"], "correct horse battery staple");

    // Clashes and the format.
    for id in [key_given, key_id.as_str(), secret_id] {
        admin_refused(
            &kms,
            &[
                "admin",
                "nhn",
                "create-key",
                "--project",
                "moved",
                "--key-store",
                "byo",
                "--type",
                "asymmetric",
                "--name",
                "again",
                "--key-id",
                id,
            ],
            &[],
            "is taken",
        );
    }
    let short = "a".repeat(31);
    let not_hex = format!("{}z", "a".repeat(31));
    for bad in [short.as_str(), not_hex.as_str()] {
        admin_refused(
            &kms,
            &[
                "admin",
                "nhn",
                "create-key",
                "--project",
                "moved",
                "--key-store",
                "byo",
                "--type",
                "symmetric",
                "--name",
                "bad",
                "--key-id",
                bad,
            ],
            &[],
            "32 hexadecimal digits",
        );
    }
    admin_refused(
        &kms,
        &[
            "admin",
            "nhn",
            "create-key",
            "--project",
            "moved",
            "--key-store",
            "byo",
            "--type",
            "symmetric",
            "--name",
            "bad",
            "--secret-env",
            "DB_PASSWORD",
        ],
        &[("DB_PASSWORD", "x")],
        "for --type secret",
    );
    let listed = nhn_call(
        &kms,
        appkey,
        "GET",
        &format!("/keystores/{byo}/keys"),
        None,
        &uak_headers,
    )
    .await;
    assert_eq!(
        ok(&listed)["keyIdList"].as_array().unwrap().len(),
        2,
        "refused commands made nothing: {}",
        listed.body
    );
}
