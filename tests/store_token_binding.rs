//! Issue 8, item 1: the store and the token are bound by an installation id,
//! and no start destroys an object on absence alone. Every scenario runs the
//! real binary on a real SoftHSM token and SQLite store, counts the token's
//! objects with `pkcs11-tool` (the PKCS#11 layer, independent of the binary
//! under test) before and after, and then restarts the service with the
//! right configuration to show that it still serves the old keys.
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::process::{Server, Site, TOKEN_LABEL};
use common::{b64, unb64, PIN};
use serde_json::json;

/// Every object on the token (any label), as `pkcs11-tool` lists them after
/// a user login: (kind, label).
fn token_listing(softhsm_conf: &Path) -> Vec<(String, String)> {
    let out = Command::new("pkcs11-tool")
        .env(common::token_conf_var(), softhsm_conf)
        .args([
            "--module",
            &common::module(),
            "--token-label",
            TOKEN_LABEL,
            "--login",
            "--pin",
            PIN,
            "--list-objects",
        ])
        .output()
        .expect("pkcs11-tool must be installed (package opensc; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "pkcs11-tool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut objects: Vec<(String, String)> = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        // Keys print "Secret Key Object; AES ...", data objects "Data object N".
        if !line.starts_with(' ') && (line.contains("Object;") || line.starts_with("Data object")) {
            let kind = line.split(';').next().unwrap_or("").trim().to_string();
            objects.push((kind, String::new()));
        } else if let (Some(cur), Some(v)) =
            (objects.last_mut(), line.trim().strip_prefix("label:"))
        {
            cur.1 = v.trim().trim_matches('\'').to_string();
        }
    }
    objects
}

fn count(site: &Site) -> usize {
    token_listing(&site.softhsm_conf).len()
}

/// Runs `cmd` and waits for it to exit; a command that is still running
/// after 20 s (a `serve` that did not refuse) is killed and the test fails.
fn run_to_exit(mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn hsm-kms");
    let pid = child.id();
    let start = Instant::now();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    loop {
        if let Ok(out) = rx.recv_timeout(Duration::from_millis(50)) {
            return out.expect("wait for hsm-kms");
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            let out = rx.recv().expect("reaped").expect("output");
            panic!(
                "hsm-kms did not exit (it started instead of refusing): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The installation id the store recorded.
async fn store_installation_id(db_path: &Path) -> Option<String> {
    let db = common::db_pool(db_path).await;
    let id: Option<String> = sqlx::query_scalar("SELECT installation_id FROM installation")
        .fetch_optional(&db)
        .await
        .expect("installation table");
    db.close().await;
    id
}

async fn create_key(server: &Server, name: &str, key_type: &str) -> String {
    let r = server
        .call(
            "POST",
            "/kms/v1/keys",
            Some(json!({"keyName": name, "keyType": key_type, "isAutoRotation": false})),
        )
        .await;
    r.ok()["keyTag"].as_str().unwrap().to_string()
}

async fn encrypt(server: &Server, tag: &str, pt: &[u8]) -> String {
    let r = server
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/encrypt"),
            Some(json!({"plaintext": b64(pt)})),
        )
        .await;
    r.ok()["ciphertext"].as_str().unwrap().to_string()
}

async fn decrypt(server: &Server, tag: &str, ct: &str) -> Vec<u8> {
    let r = server
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/decrypt"),
            Some(json!({"ciphertext": ct})),
        )
        .await;
    unb64(r.ok()["plaintext"].as_str().unwrap())
}

/// A site with one AES key and a ciphertext under it, server stopped.
async fn used_site() -> (Site, String, String) {
    let mut site = Site::init();
    let server = site.serve(&[]).await;
    let tag = create_key(&server, "kept", "AES256").await;
    let ct = encrypt(&server, &tag, b"old secret").await;
    let _ = create_key(&server, "signer", "RSA2048").await;
    server.kill();
    (site, tag, ct)
}

/// Restarts with the site's own config and decrypts the old ciphertext.
async fn still_serves(site: &mut Site, tag: &str, ct: &str) {
    let server = site.serve(&[]).await;
    assert_eq!(decrypt(&server, tag, ct).await, b"old secret");
    server.kill();
}

/// The SQLite files of a store (the WAL holds what a killed server wrote).
fn db_files(dir: &Path) -> Vec<PathBuf> {
    ["metadata.db", "metadata.db-wal", "metadata.db-shm"]
        .iter()
        .map(|f| dir.join(f))
        .collect()
}

/// Copies a stopped store's files from `from` to `to` (replacing them).
fn copy_store(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for (src, dst) in db_files(from).iter().zip(db_files(to)) {
        let _ = std::fs::remove_file(&dst);
        if src.exists() {
            std::fs::copy(src, &dst).unwrap();
        }
    }
}

#[tokio::test]
async fn item1_wrong_data_dir_destroys_nothing() {
    if common::sqlite_only("moves, copies and empties the SQLite store files") {
        return;
    }
    let (mut site, tag, ct) = used_site().await;
    let before = count(&site);
    assert!(before >= 6, "service keys and two keys: {before}");

    // A relative data_dir resolved from another working directory: the
    // default `./data`, started from the wrong place.
    let elsewhere = site.dir.path().join("elsewhere");
    std::fs::create_dir_all(&elsewhere).unwrap();
    let mut cmd = site.command();
    cmd.current_dir(&elsewhere)
        .env("HSM_KMS_STORE_DATA_DIR", "./data")
        .arg("serve");
    let out = run_to_exit(cmd);
    assert_eq!(
        count(&site),
        before,
        "objects destroyed by a start on the wrong store: {}",
        stderr(&out)
    );
    assert!(!out.status.success(), "serve must refuse: {}", stderr(&out));
    let id = store_installation_id(&site.db_path())
        .await
        .expect("init recorded an installation id");
    let msg = stderr(&out);
    assert!(
        msg.contains(&format!("token installation id: {id}")),
        "{msg}"
    );
    assert!(msg.contains("store installation id: none"), "{msg}");
    assert!(msg.contains("nothing was destroyed"), "{msg}");
    assert!(msg.contains("elsewhere/data/metadata.db"), "{msg}");
    assert!(msg.contains("store.data_dir"), "{msg}");

    // A second wrong start is refused the same way; the right one serves.
    let mut cmd = site.command();
    cmd.current_dir(&elsewhere)
        .env("HSM_KMS_STORE_DATA_DIR", "./data")
        .arg("serve");
    assert!(!run_to_exit(cmd).status.success());
    assert_eq!(count(&site), before);
    still_serves(&mut site, &tag, &ct).await;
    assert_eq!(count(&site), before);
}

#[tokio::test]
async fn item1_empty_store_on_used_token_refused() {
    if common::sqlite_only("moves, copies and empties the SQLite store files") {
        return;
    }
    let (mut site, tag, ct) = used_site().await;
    let before = count(&site);
    // The data volume is lost: the same data_dir, now empty.
    let moved = site.dir.path().join("data.moved");
    std::fs::rename(&site.data_dir, &moved).unwrap();

    let mut cmd = site.command();
    cmd.arg("serve");
    let out = run_to_exit(cmd);
    assert_eq!(count(&site), before, "serve: {}", stderr(&out));
    assert!(!out.status.success(), "serve must refuse: {}", stderr(&out));
    let id = store_installation_id(&moved.join("metadata.db"))
        .await
        .unwrap();
    assert!(
        stderr(&out).contains(&format!("token installation id: {id}")),
        "{}",
        stderr(&out)
    );

    // `init` on the empty store (what a container's first start would run)
    // is refused too, and makes no service keys.
    let mut cmd = site.command();
    cmd.arg("init");
    let out = run_to_exit(cmd);
    assert_eq!(count(&site), before, "init: {}", stderr(&out));
    assert!(!out.status.success(), "init must refuse: {}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("token installation id: {id}")),
        "{}",
        stderr(&out)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("secret_key="));

    std::fs::remove_dir_all(&site.data_dir).unwrap();
    std::fs::rename(&moved, &site.data_dir).unwrap();
    still_serves(&mut site, &tag, &ct).await;
    assert_eq!(count(&site), before);
}

#[tokio::test]
async fn item1_second_init_on_used_token_refused() {
    if common::sqlite_only("moves, copies and empties the SQLite store files") {
        return;
    }
    let (mut site, tag, ct) = used_site().await;
    let before = count(&site);
    let second = site.dir.path().join("second-installation");

    let mut cmd = site.command();
    cmd.env("HSM_KMS_STORE_DATA_DIR", &second).arg("init");
    let out = run_to_exit(cmd);
    assert_eq!(count(&site), before, "{}", stderr(&out));
    assert!(!out.status.success(), "init must refuse: {}", stderr(&out));
    let id = store_installation_id(&site.db_path()).await.unwrap();
    let msg = stderr(&out);
    assert!(
        msg.contains(&format!("token installation id: {id}")),
        "{msg}"
    );
    assert!(msg.contains("store installation id: none"), "{msg}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("secret_key="));
    // The second store got no id, so a retry is refused the same way.
    assert_eq!(
        store_installation_id(&second.join("metadata.db")).await,
        None
    );
    let mut cmd = site.command();
    cmd.env("HSM_KMS_STORE_DATA_DIR", &second).arg("serve");
    assert!(!run_to_exit(cmd).status.success());
    assert_eq!(count(&site), before);

    still_serves(&mut site, &tag, &ct).await;
    assert_eq!(count(&site), before);
}

#[tokio::test]
async fn item1_store_restored_from_older_backup_keeps_newer_keys() {
    if common::sqlite_only("moves, copies and empties the SQLite store files") {
        return;
    }
    let (mut site, tag, ct) = used_site().await;
    let backup = site.dir.path().join("backup");
    copy_store(&site.data_dir, &backup);

    // After the backup: a new key, with data encrypted under it.
    let server = site.serve(&[]).await;
    let newer = create_key(&server, "newer", "AES256").await;
    let newer_ct = encrypt(&server, &newer, b"newer secret").await;
    server.kill();
    let latest = site.dir.path().join("latest");
    copy_store(&site.data_dir, &latest);
    let before = count(&site);

    // The store is restored from the older backup: the newer key's object is
    // unknown to it. The service starts, serves what the store knows, and
    // leaves the newer object alone.
    copy_store(&backup, &site.data_dir);
    let server = site.serve(&[("HSM_KMS_LOG_LEVEL", "info")]).await;
    assert_eq!(count(&site), before, "{}", site.log(3));
    assert_eq!(decrypt(&server, &tag, &ct).await, b"old secret");
    server
        .call("GET", &format!("/kms/v1/keys/{newer}"), None)
        .await
        .assert_naver_error(404, "300");
    server.kill();
    assert!(
        site.log(3).contains("unknown_objects: 1"),
        "{}",
        site.log(3)
    );

    // `admin reconcile` lists it (dry run) and destroys nothing.
    let mut cmd = site.command();
    cmd.args(["admin", "reconcile"]);
    let out = run_to_exit(cmd);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        listing
            .lines()
            .any(|l| l.starts_with(&format!("unknown\thsm-kms/{newer}/v1\t"))
                && l.ends_with("\tsecret-key")),
        "{listing}"
    );
    assert!(listing.contains("\tagree"), "{listing}");
    assert_eq!(count(&site), before);

    // With the newest store back, nothing was lost.
    copy_store(&latest, &site.data_dir);
    let server = site.serve(&[]).await;
    assert_eq!(decrypt(&server, &newer, &newer_ct).await, b"newer secret");
    assert_eq!(decrypt(&server, &tag, &ct).await, b"old secret");
    server.kill();
    assert_eq!(count(&site), before);
}

#[tokio::test]
async fn item1_store_listing_missing_objects_refused() {
    if common::sqlite_only("moves, copies and empties the SQLite store files") {
        return;
    }
    let (mut site, tag, ct) = used_site().await;
    let server = site.serve(&[]).await;
    let doomed = create_key(&server, "doomed", "AES256").await;
    server.kill();
    let backup = site.dir.path().join("backup");
    copy_store(&site.data_dir, &backup);

    // After the backup the key is deleted and its object destroyed.
    let server = site.serve(&[]).await;
    let r = server
        .call(
            "POST",
            &format!("/kms/v1/keys/{doomed}/request-deletion"),
            None,
        )
        .await;
    assert_eq!(r.ok()["status"], "REVOKE");
    server
        .call("DELETE", &format!("/kms/v1/keys/{doomed}"), None)
        .await
        .ok();
    server.kill();
    let latest = site.dir.path().join("latest");
    copy_store(&site.data_dir, &latest);
    let before = count(&site);

    // The older store names an active version that is gone: refuse.
    copy_store(&backup, &site.data_dir);
    let mut cmd = site.command();
    cmd.arg("serve");
    let out = run_to_exit(cmd);
    assert!(!out.status.success(), "serve must refuse: {}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("key {doomed} v1")),
        "{}",
        stderr(&out)
    );
    assert_eq!(count(&site), before);
    let mut cmd = site.command();
    cmd.args(["admin", "reconcile"]);
    let out = run_to_exit(cmd);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&format!("missing\tkey {doomed} v1")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    copy_store(&latest, &site.data_dir);
    still_serves(&mut site, &tag, &ct).await;
    assert_eq!(count(&site), before);
}

#[tokio::test]
async fn item1_used_store_with_fresh_token_refused() {
    if common::sqlite_only("moves, copies and empties the SQLite store files") {
        return;
    }
    let (mut site, tag, ct) = used_site().await;
    let before = count(&site);
    // The reverse direction: the data volume is right, the token is a new,
    // empty one (a lost token volume, a re-initialised token, the wrong slot).
    let fresh_dir = site.dir.path().join("fresh-token");
    std::fs::create_dir_all(&fresh_dir).unwrap();
    let fresh_conf = common::make_token(&fresh_dir, TOKEN_LABEL);

    let mut cmd = site.command();
    cmd.env(common::token_conf_var(), &fresh_conf).arg("serve");
    let out = run_to_exit(cmd);
    assert!(!out.status.success(), "serve must refuse: {}", stderr(&out));
    let id = store_installation_id(&site.db_path()).await.unwrap();
    let msg = stderr(&out);
    assert!(
        msg.contains(&format!("store installation id: {id}")),
        "{msg}"
    );
    assert!(msg.contains("token installation id: none"), "{msg}");
    assert_eq!(token_listing(&fresh_conf).len(), 0, "nothing written");
    let mut cmd = site.command();
    cmd.env(common::token_conf_var(), &fresh_conf).arg("init");
    assert!(!run_to_exit(cmd).status.success());
    assert_eq!(token_listing(&fresh_conf).len(), 0, "nothing written");

    assert_eq!(count(&site), before);
    still_serves(&mut site, &tag, &ct).await;
}

/// Writes a private data object labelled `label` on the site's token with
/// `pkcs11-tool` (a stray left by another tool or an interrupted `init`).
fn write_stray(site: &Site, label: &str) {
    let value = site.dir.path().join("stray-value");
    std::fs::write(&value, b"stray").unwrap();
    let out = Command::new("pkcs11-tool")
        .env(common::token_conf_var(), &site.softhsm_conf)
        .args([
            "--module",
            &common::module(),
            "--token-label",
            TOKEN_LABEL,
            "--login",
            "--pin",
            PIN,
            "--write-object",
            value.to_str().unwrap(),
            "--type",
            "data",
            "--label",
            label,
            "--private",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn delete_data_object(site: &Site, label: &str) {
    let out = Command::new("pkcs11-tool")
        .env(common::token_conf_var(), &site.softhsm_conf)
        .args([
            "--module",
            &common::module(),
            "--token-label",
            TOKEN_LABEL,
            "--login",
            "--pin",
            PIN,
            "--delete-object",
            "--type",
            "data",
            "--label",
            label,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn item1_admin_reconcile_destroys_orphans_only_on_request() {
    if common::sqlite_only("moves, copies and empties the SQLite store files") {
        return;
    }
    let (mut site, tag, ct) = used_site().await;
    write_stray(&site, "hsm-kms/stray");
    let before = count(&site);
    let has_stray = |site: &Site| {
        token_listing(&site.softhsm_conf)
            .iter()
            .any(|(_, l)| l == "hsm-kms/stray")
    };

    // The service starts, reports the stray and leaves it.
    still_serves(&mut site, &tag, &ct).await;
    assert_eq!(count(&site), before);
    assert!(has_stray(&site));

    let reconcile = |args: &[&str]| {
        let mut cmd = site.command();
        cmd.args(["admin", "reconcile"]).args(args);
        run_to_exit(cmd)
    };
    let out = reconcile(&[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let unknown: Vec<&str> = listing
        .lines()
        .filter(|l| l.starts_with("unknown\t"))
        .collect();
    assert_eq!(
        unknown,
        vec![format!(
            "unknown\thsm-kms/stray\t{}\tdata",
            hex::encode("hsm-kms/stray")
        )
        .as_str()],
        "{listing}"
    );
    assert!(listing.contains("summary\t1 unknown objects"), "{listing}");
    assert_eq!(count(&site), before);

    // --destroy-orphans without --yes destroys nothing.
    let out = reconcile(&["--destroy-orphans"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("--yes"), "{}", stderr(&out));
    assert!(has_stray(&site));

    // With --yes: exactly the stray goes, logged at WARN with its label.
    let out = reconcile(&["--destroy-orphans", "--yes"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("hsm-kms/stray"), "{}", stderr(&out));
    assert!(!has_stray(&site));
    assert_eq!(count(&site), before - 1);
    still_serves(&mut site, &tag, &ct).await;
    assert_eq!(count(&site), before - 1);
}

#[tokio::test]
async fn item1_installation_made_before_ids_adopted_only_on_proof() {
    if common::sqlite_only("moves, copies and empties the SQLite store files") {
        return;
    }
    let (mut site, tag, ct) = used_site().await;
    // Make it look like an installation from before this change.
    delete_data_object(&site, "hsm-kms/installation");
    let db = site.db().await;
    sqlx::query("DELETE FROM installation")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;

    // An object the store does not know: no proof, refuse.
    write_stray(&site, "hsm-kms/stray");
    let before = count(&site);
    let mut cmd = site.command();
    cmd.arg("serve");
    let out = run_to_exit(cmd);
    assert!(!out.status.success(), "serve must refuse: {}", stderr(&out));
    assert!(
        stderr(&out).contains("predate installation ids"),
        "{}",
        stderr(&out)
    );
    assert_eq!(count(&site), before);
    assert_eq!(store_installation_id(&site.db_path()).await, None);

    // Token and store match exactly: adopted, both get the same id.
    delete_data_object(&site, "hsm-kms/stray");
    still_serves(&mut site, &tag, &ct).await;
    let id = store_installation_id(&site.db_path())
        .await
        .expect("adopted");
    assert!(token_listing(&site.softhsm_conf)
        .iter()
        .any(|(k, l)| k.starts_with("Data") && l == "hsm-kms/installation"));
    let mut cmd = site.command();
    cmd.args(["admin", "reconcile"]);
    let out = run_to_exit(cmd);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("installation\ttoken={id}\tstore={id}\tagree")),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The token's installation id comes from the start-up enumeration (no
/// search by label): a second installation object with another value is
/// still refused, both values named, nothing destroyed.
#[tokio::test]
async fn item1_two_installation_objects_on_the_token_refused() {
    if common::sqlite_only("reads the installation id from the SQLite store file") {
        return;
    }
    let (site, _tag, _ct) = used_site().await;
    let id = store_installation_id(&site.db_path()).await.expect("id");
    write_stray(&site, "hsm-kms/installation");
    let before = count(&site);
    let mut cmd = site.command();
    cmd.arg("serve");
    let out = run_to_exit(cmd);
    assert!(!out.status.success(), "serve must refuse: {}", stderr(&out));
    let msg = stderr(&out);
    assert!(
        msg.contains("2 different hsm-kms/installation objects on the token"),
        "{msg}"
    );
    assert!(msg.contains(&id) && msg.contains("stray"), "{msg}");
    assert_eq!(count(&site), before, "nothing destroyed");
}
