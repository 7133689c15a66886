//! Issue 8, the NHN findings: management calls need a User Access Key (the
//! appkey alone no longer registers addresses, lists credentials, deletes
//! them or destroys keys), certificate passwords are shown once, appkeys
//! can be revoked and rotated on a running server, the appkey stays out of
//! the INFO log, and the key-store credential cache cannot keep a credential
//! whose deletion was requested. The real binary runs the server and the
//! `admin nhn` CLI, as an operator would.
mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::process::{Server, Site};
use common::{send, Reply};
use hsm_kms::core::nhn::{CredentialKind, KeyStoreSettings, NhnClient};
use hsm_kms::core::ACCESS_KEY_RECHECK;
use serde_json::{json, Value};

/// The code of a management call made without a User Access Key
/// (`docs/nhn-error-codes.md`).
const UAK_REQUIRED: i64 = -1102;
/// The code of a wrong, revoked or incomplete User Access Key.
const UAK_INVALID: i64 = -1101;

fn admin_out(site: &Site, args: &[&str]) -> std::process::Output {
    site.command().args(args).output().expect("run hsm-kms")
}

fn admin(site: &Site, args: &[&str]) -> String {
    let out = admin_out(site, args);
    assert!(
        out.status.success(),
        "hsm-kms {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn field(stdout: &str, name: &str) -> String {
    stdout
        .split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("no {name}= in {stdout}"))
        .to_string()
}

/// A project made with the admin CLI's defaults: appkey, User Access Key
/// and one key store `app` with IPv4 authentication.
struct Project {
    name: String,
    appkey: String,
    uak: (String, String),
    key_store_id: i64,
}

fn make_project(site: &Site, name: &str) -> Project {
    let out = admin(site, &["admin", "nhn", "create-project", name]);
    assert!(out.starts_with(&format!("project={name}")), "{out}");
    let appkey = field(
        &admin(site, &["admin", "nhn", "create-appkey", "--project", name]),
        "appkey",
    );
    let out = admin(
        site,
        &["admin", "nhn", "create-user-access-key", "--project", name],
    );
    let uak = (
        field(&out, "user_access_key"),
        field(&out, "secret_access_key"),
    );
    let out = admin(
        site,
        &[
            "admin",
            "nhn",
            "create-key-store",
            "--project",
            name,
            "--name",
            "app",
            "--ip4-auth",
        ],
    );
    let key_store_id = field(&out, "keyStoreId").parse().expect("keyStoreId");
    Project {
        name: name.into(),
        appkey,
        uak,
        key_store_id,
    }
}

/// Who calls: the client address (through the trusted proxy) and whether
/// the User Access Key headers are sent.
#[derive(Clone, Copy)]
enum As<'a> {
    /// The key-store's application at this address, with the appkey only.
    AppkeyOnly(&'a str),
    /// The owner, with the User Access Key, from this address.
    Owner(&'a str),
    /// Someone with the appkey and a made-up Secret Access Key.
    WrongSecret(&'a str),
}

async fn call(
    server: &Server,
    p: &Project,
    who: As<'_>,
    method: &str,
    suffix: &str,
    body: Option<Value>,
) -> Reply {
    call_appkey(server, &p.appkey, p, who, method, suffix, body).await
}

async fn call_appkey(
    server: &Server,
    appkey: &str,
    p: &Project,
    who: As<'_>,
    method: &str,
    suffix: &str,
    body: Option<Value>,
) -> Reply {
    let (ip, uak) = match who {
        As::AppkeyOnly(ip) => (ip, None),
        As::Owner(ip) => (ip, Some(p.uak.1.as_str())),
        As::WrongSecret(ip) => (ip, Some("not-the-secret-access-key")),
    };
    let mut h = vec![("X-Forwarded-For".to_string(), ip.to_string())];
    if let Some(secret) = uak {
        h.push(("X-TC-AUTHENTICATION-ID".into(), p.uak.0.clone()));
        h.push(("X-TC-AUTHENTICATION-SECRET".into(), secret.into()));
    }
    let path = format!("/keymanager/v1.2/appkey/{appkey}{suffix}");
    send(
        &server.client,
        &server.url,
        method,
        &path,
        &h,
        body.map(|b| b.to_string().into_bytes()),
    )
    .await
}

fn ok(r: &Reply) -> &Value {
    assert_eq!(r.status, 200, "body: {}", r.body);
    assert_eq!(r.body["header"]["isSuccessful"], true, "body: {}", r.body);
    &r.body["body"]
}

fn err(r: &Reply, status: u16, code: i64, what: &str) {
    assert_eq!(r.status, status, "{what}: {}", r.body);
    assert_eq!(
        r.body["header"]["isSuccessful"], false,
        "{what}: {}",
        r.body
    );
    assert_eq!(r.body["header"]["resultCode"], code, "{what}: {}", r.body);
    assert!(r.body["body"].is_null(), "{what}: {}", r.body);
}

const TRUST_LOOPBACK: (&str, &str) = ("HSM_KMS_SERVER_TRUSTED_PROXIES", "[\"127.0.0.1/32\"]");
const APP_IP: &str = "10.0.0.5";
const ATTACKER_IP: &str = "203.0.113.66";

#[tokio::test]
async fn item2_appkey_only_attack_sequence_refused() {
    let mut site = Site::init();
    let p = make_project(&site, "shop");
    let server = site.serve(&[TRUST_LOOPBACK]).await;
    let owner = As::Owner(APP_IP);

    // The owner registers the application's address and makes a secret and
    // a key (management calls, with the User Access Key).
    ok(&call(
        &server,
        &p,
        owner,
        "POST",
        "/auths/ipv4s",
        Some(json!({"keyStoreName": "app", "value": APP_IP})),
    )
    .await);
    let r = call(
        &server,
        &p,
        owner,
        "POST",
        "/keys/secrets/create",
        Some(json!({"keyStoreName": "app", "name": "db", "secretValue": "s3cr3t-db-password"})),
    )
    .await;
    let secret = ok(&r)["keyId"].as_str().unwrap().to_string();
    let r = call(
        &server,
        &p,
        owner,
        "POST",
        "/keys/symmetric-keys/create",
        Some(json!({"keyStoreName": "app", "name": "orders"})),
    )
    .await;
    let key = ok(&r)["keyId"].as_str().unwrap().to_string();

    // The application's data calls need only the appkey and its address.
    let app = As::AppkeyOnly(APP_IP);
    let r = call(&server, &p, app, "GET", &format!("/secrets/{secret}"), None).await;
    assert_eq!(ok(&r)["secret"], "s3cr3t-db-password");

    // The review's attack, from another address, with the appkey only.
    let attacker = As::AppkeyOnly(ATTACKER_IP);
    let ks = p.key_store_id;
    // 1. Register one's own address: refused, so the secret stays closed.
    let r = call(
        &server,
        &p,
        attacker,
        "POST",
        "/auths/ipv4s",
        Some(json!({"keyStoreName": "app", "value": ATTACKER_IP})),
    )
    .await;
    err(&r, 401, UAK_REQUIRED, "register the attacker's IPv4");
    let r = call(
        &server,
        &p,
        attacker,
        "POST",
        "/auths/macs",
        Some(json!({"keyStoreName": "app", "value": "02:00:00:00:00:66"})),
    )
    .await;
    err(&r, 401, UAK_REQUIRED, "register the attacker's MAC");
    let r = call(
        &server,
        &p,
        attacker,
        "GET",
        &format!("/secrets/{secret}"),
        None,
    )
    .await;
    err(
        &r,
        403,
        -1200,
        "read the secret from the attacker's address",
    );
    // 2. List the registered addresses and certificates.
    for what in ["ips", "macs", "certificates"] {
        let r = call(
            &server,
            &p,
            attacker,
            "GET",
            &format!("/keystores/{ks}/{what}"),
            None,
        )
        .await;
        err(&r, 401, UAK_REQUIRED, what);
    }
    // 3. Remove the application's address.
    let body = json!({"keyStoreName": "app", "value": APP_IP});
    let r = call(
        &server,
        &p,
        attacker,
        "PUT",
        "/auths/ipv4s/delete",
        Some(body.clone()),
    )
    .await;
    err(&r, 401, UAK_REQUIRED, "request deletion of the app's IPv4");
    let r = call(
        &server,
        &p,
        attacker,
        "POST",
        "/auths/ipv4s/delete",
        Some(body),
    )
    .await;
    err(&r, 401, UAK_REQUIRED, "delete the app's IPv4");
    // 4. Destroy a key, even from the application's own address.
    for who in [attacker, app] {
        let r = call(
            &server,
            &p,
            who,
            "PUT",
            &format!("/keys/{key}/delete"),
            None,
        )
        .await;
        err(&r, 401, UAK_REQUIRED, "request key deletion");
        let r = call(&server, &p, who, "DELETE", &format!("/keys/{key}"), None).await;
        err(&r, 401, UAK_REQUIRED, "delete the key now");
    }
    // Creating keys and changing secrets are management too.
    let r = call(
        &server,
        &p,
        app,
        "POST",
        "/keys/secrets/create",
        Some(json!({"keyStoreName": "app", "name": "x", "secretValue": "x"})),
    )
    .await;
    err(&r, 401, UAK_REQUIRED, "create a secret");
    let r = call(
        &server,
        &p,
        app,
        "PUT",
        &format!("/secrets/{secret}"),
        Some(json!({"secretValue": "attacker's value"})),
    )
    .await;
    err(&r, 401, UAK_REQUIRED, "overwrite the secret");
    // A made-up Secret Access Key is no better.
    let r = call(
        &server,
        &p,
        As::WrongSecret(ATTACKER_IP),
        "POST",
        "/auths/ipv4s",
        Some(json!({"keyStoreName": "app", "value": ATTACKER_IP})),
    )
    .await;
    err(&r, 401, UAK_INVALID, "wrong Secret Access Key");

    // Nothing changed: the application still reads its secret and uses its key.
    let r = call(&server, &p, app, "GET", &format!("/secrets/{secret}"), None).await;
    assert_eq!(ok(&r)["secret"], "s3cr3t-db-password");
    let r = call(
        &server,
        &p,
        app,
        "POST",
        &format!("/symmetric-keys/{key}/encrypt"),
        Some(json!({"plaintext": "order 1"})),
    )
    .await;
    ok(&r);

    // The owner's management flow works with the User Access Key.
    let r = call(
        &server,
        &p,
        owner,
        "GET",
        &format!("/keystores/{ks}/ips"),
        None,
    )
    .await;
    assert_eq!(ok(&r)["ipv4List"], json!([APP_IP]));
    let r = call(
        &server,
        &p,
        owner,
        "PUT",
        &format!("/secrets/{secret}"),
        Some(json!({"secretValue": "rotated-db-password"})),
    )
    .await;
    ok(&r);
    let r = call(
        &server,
        &p,
        owner,
        "PUT",
        &format!("/keys/{key}/delete"),
        None,
    )
    .await;
    ok(&r);
    let r = call(&server, &p, owner, "DELETE", &format!("/keys/{key}"), None).await;
    ok(&r);
    let r = call(&server, &p, app, "GET", &format!("/secrets/{secret}"), None).await;
    assert_eq!(ok(&r)["secret"], "rotated-db-password");
}

#[tokio::test]
async fn item2_certificate_password_returned_once() {
    let mut site = Site::init();
    let p = make_project(&site, "tls");
    let server = site.serve(&[TRUST_LOOPBACK]).await;
    let owner = As::Owner(APP_IP);
    let password = "pw-Once-9f3kQ2";
    let r = call(
        &server,
        &p,
        owner,
        "POST",
        "/auths/certificates",
        Some(json!({"keyStoreName": "app", "name": "c1", "password": password, "lifeTime": 30})),
    )
    .await;
    let b = ok(&r);
    assert_eq!(b["name"], "c1");
    assert_eq!(b["password"], password, "shown at issuance: {b}");

    // Never again: not in the detail, not in the list, not in the store.
    let ks = p.key_store_id;
    let r = call(
        &server,
        &p,
        owner,
        "GET",
        &format!("/keystores/{ks}/certificates?value=c1"),
        None,
    )
    .await;
    let b = ok(&r);
    assert_eq!(b["certificateList"][0]["name"], "c1", "{b}");
    assert!(b["certificateList"][0]["password"].is_null(), "{b}");
    assert!(!r.body.to_string().contains(password), "{}", r.body);
    let r = call(
        &server,
        &p,
        owner,
        "GET",
        &format!("/keystores/{ks}/certificates"),
        None,
    )
    .await;
    assert!(!r.body.to_string().contains(password), "{}", r.body);
    let db = site.db().await;
    let kept: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM nhn_credentials WHERE password_ct IS NOT NULL")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(kept, 0, "a certificate password is kept in the store");

    // The PKCS#12 file is still delivered, and opens with the password.
    let out = site.dir.path().join("c1.p12");
    admin(
        &site,
        &[
            "admin",
            "nhn",
            "export-certificate",
            "--project",
            &p.name,
            "--key-store",
            "app",
            "--name",
            "c1",
            "--out",
            &out.display().to_string(),
        ],
    );
    p12_keystore::KeyStore::from_pkcs12(
        &std::fs::read(&out).unwrap(),
        password,
        p12_keystore::Pkcs12ImportPolicy::default(),
    )
    .expect("the PKCS#12 opens with the password given at issuance");
}

/// Polls `f` until it returns true, for at most `limit`; returns the time taken.
async fn within<F, Fut>(limit: Duration, what: &str, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    loop {
        if f().await {
            return t0.elapsed();
        }
        assert!(t0.elapsed() < limit, "{what}: not after {:?}", t0.elapsed());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn item2_update_project_turns_the_requirement_off_and_on_with_a_warning() {
    let mut site = Site::init();
    let p = make_project(&site, "legacy");
    let server = site.serve(&[TRUST_LOOPBACK]).await;
    let app = As::AppkeyOnly(APP_IP);
    let create = || {
        let (server, p) = (&server, &p);
        async move {
            call(
                server,
                p,
                app,
                "POST",
                "/auths/ipv4s",
                Some(json!({"keyStoreName": "app", "value": APP_IP})),
            )
            .await
        }
    };
    err(&create().await, 401, UAK_REQUIRED, "default project");
    // No warning for a project that requires the User Access Key.
    assert!(!site.log(1).contains("User Access Key"), "{}", site.log(1));

    // Off, on the running server (another process writes the store).
    admin(
        &site,
        &[
            "admin",
            "nhn",
            "update-project",
            "legacy",
            "--require-user-access-key",
            "false",
        ],
    );
    let limit = ACCESS_KEY_RECHECK + Duration::from_secs(2);
    within(limit, "requirement turned off", || async {
        create().await.status == 200
    })
    .await;
    // A sent User Access Key is still checked.
    let r = call(
        &server,
        &p,
        As::WrongSecret(APP_IP),
        "GET",
        &format!("/keystores/{}/ips", p.key_store_id),
        None,
    )
    .await;
    err(&r, 401, UAK_INVALID, "wrong secret, requirement off");
    drop(server);

    // A restart warns about the project that does not require it.
    let server = site.serve(&[TRUST_LOOPBACK]).await;
    let log = site.log(2);
    let warning = log
        .lines()
        .find(|l| l.contains("WARN") && l.contains("User Access Key") && l.contains("legacy"))
        .unwrap_or_else(|| panic!("no start-up warning for project legacy:\n{log}"));
    assert!(!warning.contains(&p.appkey), "{warning}");
    let r = call(
        &server,
        &p,
        app,
        "GET",
        &format!("/keystores/{}/ips", p.key_store_id),
        None,
    )
    .await;
    assert_eq!(ok(&r)["ipv4List"], json!([APP_IP]));

    // And on again.
    admin(
        &site,
        &[
            "admin",
            "nhn",
            "update-project",
            "legacy",
            "--require-user-access-key",
            "true",
        ],
    );
    within(limit, "requirement turned on", || async {
        let r = call(
            &server,
            &p,
            app,
            "GET",
            &format!("/keystores/{}/ips", p.key_store_id),
            None,
        )
        .await;
        r.status == 401 && r.body["header"]["resultCode"] == UAK_REQUIRED
    })
    .await;
    let r = call(
        &server,
        &p,
        As::Owner(APP_IP),
        "GET",
        &format!("/keystores/{}/ips", p.key_store_id),
        None,
    )
    .await;
    ok(&r);
}

#[tokio::test]
async fn item2_revoked_and_rotated_appkeys_stop_within_a_second() {
    let mut site = Site::init();
    let p = make_project(&site, "rot");
    let server = site.serve(&[TRUST_LOOPBACK]).await;
    let confirm = |appkey: String| {
        let (server, p) = (&server, &p);
        async move {
            call_appkey(
                server,
                &appkey,
                p,
                As::AppkeyOnly(APP_IP),
                "GET",
                "/confirm",
                None,
            )
            .await
        }
    };
    ok(&confirm(p.appkey.clone()).await);

    // Rotation: a new appkey for the project; the old one stops.
    let out = admin(&site, &["admin", "nhn", "rotate-appkey", &p.appkey]);
    let new = field(&out, "appkey");
    assert_ne!(new, p.appkey);
    // The recheck interval, plus room for a loaded test machine.
    let limit = ACCESS_KEY_RECHECK + Duration::from_secs(1);
    let took = within(limit, "rotated appkey refused", || async {
        let r = confirm(p.appkey.clone()).await;
        r.status == 401 && r.body["header"]["resultCode"] == -1100
    })
    .await;
    eprintln!("rotated appkey refused after {took:?}");
    let r = confirm(p.appkey.clone()).await;
    err(&r, 401, -1100, "old appkey");
    ok(&confirm(new.clone()).await);
    // The new appkey reaches the project's keys with the same User Access Key.
    let r = call_appkey(
        &server,
        &new,
        &p,
        As::Owner(APP_IP),
        "GET",
        "/keystores",
        None,
    )
    .await;
    assert_eq!(ok(&r)["keyStoreIdList"], json!([p.key_store_id]));

    // Revocation.
    let t0 = Instant::now();
    admin(&site, &["admin", "nhn", "revoke-appkey", &new]);
    let took = within(limit, "revoked appkey refused", || async {
        confirm(new.clone()).await.status == 401
    })
    .await;
    eprintln!(
        "revoked appkey refused {took:?} after the CLI returned, {:?} after it started",
        t0.elapsed()
    );
    err(&confirm(new.clone()).await, 401, -1100, "revoked appkey");
    // For good: also after another recheck interval.
    tokio::time::sleep(ACCESS_KEY_RECHECK).await;
    err(&confirm(new).await, 401, -1100, "revoked appkey later");
    // Revoking an unknown appkey is an error of the CLI.
    let out = admin_out(&site, &["admin", "nhn", "revoke-appkey", "no-such-appkey"]);
    assert!(!out.status.success());
}

#[tokio::test]
async fn item8_appkey_not_in_info_logs() {
    let mut site = Site::init_with(
        common::PIN,
        &[
            ("HSM_KMS_LOG_LEVEL", "info,tower_http=debug"),
            ("HSM_KMS_LOG_FORMAT", "json"),
        ],
    );
    let p = make_project(&site, "quiet");
    let server = site.serve(&[TRUST_LOOPBACK]).await;
    let owner = As::Owner(APP_IP);
    ok(&call(&server, &p, owner, "GET", "/confirm", None).await);
    ok(&call(
        &server,
        &p,
        owner,
        "POST",
        "/keys/symmetric-keys/create",
        Some(json!({"keyStoreName": "app", "name": "logged"})),
    )
    .await);
    // A refused call and an unknown appkey are logged too.
    call(
        &server,
        &p,
        As::AppkeyOnly(ATTACKER_IP),
        "POST",
        "/auths/ipv4s",
        Some(json!({"keyStoreName": "app", "value": ATTACKER_IP})),
    )
    .await;
    let unknown = format!("{}X", p.appkey);
    call_appkey(
        &server,
        &unknown,
        &p,
        As::AppkeyOnly(APP_IP),
        "GET",
        "/confirm",
        None,
    )
    .await;
    server.kill();
    let log = site.log(1);
    // The requests were logged (at INFO, with their path) ...
    assert!(
        log.contains("NHN key created") && log.contains("/keymanager/v1.2/appkey/"),
        "{log}"
    );
    // ... without the appkey, nor the Secret Access Key.
    for (what, secret) in [("appkey", &p.appkey), ("Secret Access Key", &p.uak.1)] {
        // (`unknown` starts with the appkey.)
        if let Some(line) = log.lines().find(|l| l.contains(secret.as_str())) {
            panic!("the {what} is in the log: {line}");
        }
    }
}

/// An IPv4 credential whose deletion was requested while other requests
/// were loading the key store's credentials never authorizes again: a
/// load that started before the deletion must not refill the cache after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn item8_nhn_credential_cache_keeps_no_deleted_credential() {
    let kms = common::Kms::start().await;
    let e = kms.engine.clone();
    e.nhn_create_project("race", true).await.unwrap();
    let store_id = e
        .nhn_create_key_store(
            "race",
            KeyStoreSettings {
                name: "s".into(),
                ip4_auth_use: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let project = e.nhn_project("race").await.unwrap();
    let client = |ip: &str| NhnClient {
        ip: ip.parse().unwrap(),
        mac: None,
        cert_sha256: None,
    };
    let rounds = 60;
    let mut stale = Vec::new();
    let mut churn_n = 0u32;
    for round in 0..rounds {
        let ip = format!("10.1.{}.{}", round / 200, round % 200 + 1);
        e.nhn_add_address(&project, "s", CredentialKind::Ipv4, &ip, "", "t")
            .await
            .unwrap();
        e.nhn_authorize(store_id, &client(&ip)).await.unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        // Readers: the application, authorizing as fast as it can.
        for _ in 0..3 {
            let (e, stop, c) = (e.clone(), stop.clone(), client(&ip));
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = e.nhn_authorize(store_id, &c).await;
                    // A cache hit never yields: without this a reader
                    // spins on its worker, and a task woken there (the
                    // worker's LIFO slot is not stolen) never runs: on
                    // PostgreSQL the test itself, woken by the reader's
                    // connection, hung for good.
                    tokio::task::yield_now().await;
                }
            }));
        }
        // Other changes to the key store keep the cache missing.
        let stop_churn = Arc::new(AtomicBool::new(false));
        let churn = {
            let (e, stop, project) = (e.clone(), stop_churn.clone(), project.clone());
            let base = churn_n;
            tokio::spawn(async move {
                let mut n = base;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let other = format!("10.2.{}.{}", n / 250 % 250, n % 250 + 1);
                    let _ = e
                        .nhn_add_address(&project, "s", CredentialKind::Ipv4, &other, "", "t")
                        .await;
                    let _ = e
                        .nhn_request_credential_deletion(
                            &project,
                            "s",
                            CredentialKind::Ipv4,
                            &other,
                            "t",
                        )
                        .await;
                }
                n
            })
        };
        tokio::time::sleep(Duration::from_millis(5 + (round % 7) as u64)).await;
        // The last changes of the churn and the deletion overlap the
        // readers' loads; nothing invalidates the cache after them.
        stop_churn.store(true, Ordering::Relaxed);
        e.nhn_request_credential_deletion(&project, "s", CredentialKind::Ipv4, &ip, "owner")
            .await
            .unwrap();
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        churn_n = churn.await.unwrap() + 1;
        if e.nhn_authorize(store_id, &client(&ip)).await.is_ok() {
            stale.push(round);
        }
    }
    assert!(
        stale.is_empty(),
        "a credential whose deletion was requested still authorized in rounds {stale:?} of {rounds}"
    );
}

/// The upgrade: projects of a store made before issue 8 require the User
/// Access Key on management calls from then on (fail closed), those created
/// with `--require-user-access-key` keep it on data calls too, appkeys stay
/// active, and no certificate password survives.
#[tokio::test]
async fn item2_migration_turns_the_requirement_on_and_drops_passwords() {
    // (The SQLite migrations themselves; the PostgreSQL schema starts after them.)
    let db = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(1)
        .connect("sqlite::memory:")
        .await
        .unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
    let run = |name: &str| {
        let sql = std::fs::read_to_string(dir.join(name)).unwrap();
        let db = db.clone();
        async move { sqlx::raw_sql(&sql).execute(&db).await.unwrap() }
    };
    for m in ["0001_core.sql", "0002_nhn.sql", "0003_naver.sql"] {
        run(m).await;
    }
    sqlx::raw_sql(
        "INSERT INTO accounts (id, name, created_at) VALUES (1, 'nhn:open', 0), (2, 'nhn:locked', 0);
         INSERT INTO nhn_projects (id, name, account_id, require_user_access_key, created_at)
             VALUES (1, 'open', 1, 0, 0), (2, 'locked', 2, 1, 0);
         INSERT INTO nhn_appkeys (appkey, project_id, created_at) VALUES ('k1', 1, 0), ('k2', 2, 0);
         INSERT INTO nhn_key_stores (id, project_id, name, ip4_auth_use, mac_auth_use,
             certificate_auth_use, creation_user, created_at, last_change_user, updated_at)
             VALUES (1, 1, 's', 0, 0, 1, 'u', 0, 'u', 0);
         INSERT INTO nhn_credentials (key_store_id, kind, value, status, password_ct, p12_ct,
             creation_user, created_at, last_change_user, updated_at)
             VALUES (1, 'certificate', 'c', 'active', x'0102', x'0304', 'u', 0, 'u', 0);",
    )
    .execute(&db)
    .await
    .unwrap();
    run("0005_nhn_security.sql").await;
    let rows: Vec<(String, bool, bool)> = sqlx::query_as(
        "SELECT name, require_user_access_key, require_user_access_key_on_data FROM nhn_projects ORDER BY id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    assert_eq!(
        rows,
        vec![
            ("open".to_string(), true, false),
            ("locked".to_string(), true, true)
        ]
    );
    let active: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM nhn_appkeys WHERE status = 'active'")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!(active, 2);
    let (pw, p12): (Option<Vec<u8>>, Option<Vec<u8>>) =
        sqlx::query_as("SELECT password_ct, p12_ct FROM nhn_credentials")
            .fetch_one(&db)
            .await
            .unwrap();
    assert_eq!((pw, p12), (None, Some(vec![3, 4])));
}
