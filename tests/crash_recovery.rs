//! Crash consistency: the real binary is SIGKILLed at a fault point between
//! the HSM write and the store write (or just after the store write), then
//! started again on the same token and store. The start-up reconciler must
//! leave no orphan object, no version without its object, and lose nothing
//! the store acknowledged.
#![cfg(feature = "test-hooks")]
mod common;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

use common::process::{Server, Site};
use common::{b64, unb64};
use serde_json::{json, Value};

/// A version row as the store holds it.
#[derive(Debug, Clone)]
struct Row {
    uid: String,
    key_type: String,
    version: i64,
    state: String,
    cka_id: String,
    aux_id: Option<String>,
}

/// (uid, key type, version, state, `CKA_ID`, convergent `CKA_ID`).
type VersionTuple = (String, String, i64, String, Vec<u8>, Option<Vec<u8>>);

async fn rows(site: &Site) -> Vec<Row> {
    let db = site.db().await;
    let rows: Vec<VersionTuple> = sqlx::query_as(
        "SELECT k.uid, k.key_type, v.version, v.state, v.cka_id, v.aux_cka_id
         FROM key_versions v JOIN keys k ON k.id = v.key_id ORDER BY k.id, v.version",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows.into_iter()
        .map(|(uid, key_type, version, state, cka_id, aux_id)| Row {
            uid,
            key_type,
            version,
            state,
            cka_id: hex::encode(cka_id),
            aux_id: aux_id.filter(|a| !a.is_empty()).map(hex::encode),
        })
        .collect()
}

async fn service_ids(site: &Site) -> HashSet<String> {
    let db = site.db().await;
    let ids: Vec<Vec<u8>> = sqlx::query_scalar("SELECT cka_id FROM service_keys")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    ids.into_iter().map(hex::encode).collect()
}

/// The invariants after recovery (checked with the server stopped): every
/// `hsm-kms/` object is named by a store row, no row is left half-done, and
/// every active version has its object(s) with its label.
async fn assert_consistent(site: &Site) {
    let objects = site.token_objects();
    let rows = rows(site).await;
    let service = service_ids(site).await;
    let mut named: HashSet<String> = service.clone();
    for r in &rows {
        assert!(
            r.state == "active" || r.state == "destroyed",
            "a row was left {}: {r:?}",
            r.state
        );
        if r.state != "destroyed" {
            named.insert(r.cka_id.clone());
            named.extend(r.aux_id.clone());
        }
    }
    for o in &objects {
        assert!(named.contains(&o.id), "orphan object on the token: {o:?}");
    }
    let mut by_id: HashMap<&str, Vec<&common::process::ObjectLine>> = HashMap::new();
    for o in &objects {
        by_id.entry(o.id.as_str()).or_default().push(o);
    }
    for r in rows.iter().filter(|r| r.state == "active") {
        let label = format!("hsm-kms/{}/v{}", r.uid, r.version);
        let objs = by_id.get(r.cka_id.as_str()).cloned().unwrap_or_default();
        let want = if r.key_type == "AES256" { 1 } else { 2 };
        assert_eq!(
            objs.len(),
            want,
            "active version {label} must have its object(s)"
        );
        assert!(objs.iter().all(|o| o.label == label), "{objs:?}");
        if let Some(aux) = &r.aux_id {
            let objs = by_id.get(aux.as_str()).cloned().unwrap_or_default();
            assert_eq!(objs.len(), 1, "{label}/convergent");
            assert_eq!(objs[0].label, format!("{label}/convergent"));
        }
    }
    for r in rows.iter().filter(|r| r.state == "destroyed") {
        assert!(!by_id.contains_key(r.cka_id.as_str()), "{r:?}");
    }
}

/// Sends `method path` and waits until the server pauses at the fault point
/// (the request never gets an answer; the paused thread stays blocked after
/// the client gives up on it).
async fn pause_at_fault(
    server: &Server,
    marker: &Path,
    method: &str,
    path: &str,
    body: Option<Value>,
) {
    let start = Instant::now();
    let req = server.call(method, path, body);
    tokio::pin!(req);
    loop {
        tokio::select! {
            r = &mut req => panic!("the request answered instead of pausing: {r:?}"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        if marker.exists() {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the fault point was not reached"
        );
    }
}

/// [`pause_at_fault`], then SIGKILL.
async fn kill_at_fault(
    server: Server,
    marker: &Path,
    method: &str,
    path: &str,
    body: Option<Value>,
) {
    pause_at_fault(&server, marker, method, path, body).await;
    server.kill();
}

fn fault_env<'a>(point: &'a str, marker: &'a Path) -> Vec<(&'a str, &'a str)> {
    vec![
        ("HSM_KMS_FAULT_PAUSE", point),
        ("HSM_KMS_FAULT_MARKER", marker.to_str().unwrap()),
    ]
}

async fn create_key(server: &Server, name: &str, key_type: &str, extra: Value) -> String {
    let mut body = json!({"keyName": name, "keyType": key_type, "isAutoRotation": false});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    let r = server.call("POST", "/kms/v1/keys", Some(body)).await;
    r.ok()["keyTag"].as_str().unwrap().to_string()
}

async fn encrypt(server: &Server, tag: &str, pt: &[u8], ctx: Option<&[u8]>) -> String {
    let mut body = json!({"plaintext": b64(pt)});
    if let Some(c) = ctx {
        body["context"] = json!(b64(c));
    }
    let r = server
        .call("POST", &format!("/kms/v1/keys/{tag}/encrypt"), Some(body))
        .await;
    r.ok()["ciphertext"].as_str().unwrap().to_string()
}

async fn decrypt(server: &Server, tag: &str, ct: &str, ctx: Option<&[u8]>) -> Vec<u8> {
    let mut body = json!({"ciphertext": ct});
    if let Some(c) = ctx {
        body["context"] = json!(b64(c));
    }
    let r = server
        .call("POST", &format!("/kms/v1/keys/{tag}/decrypt"), Some(body))
        .await;
    unb64(r.ok()["plaintext"].as_str().unwrap())
}

async fn versions(server: &Server, tag: &str) -> Vec<i64> {
    let r = server
        .call("GET", &format!("/kms/v1/keys/{tag}/versions"), None)
        .await;
    r.ok()["versionList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn rotation_killed_between_hsm_and_store_is_rolled_back() {
    let mut site = Site::init();
    let marker = site.dir.path().join("fault-rotate");
    let server = site.serve(&fault_env("rotate:after-hsm", &marker)).await;
    let ctx = b"tenant-7";
    let tag = create_key(&server, "crashy", "AES256", json!({"isConvergent": true})).await;
    let ct1 = encrypt(&server, &tag, b"keep me", Some(ctx)).await;
    kill_at_fault(
        server,
        &marker,
        "POST",
        &format!("/kms/v1/keys/{tag}/rotate"),
        None,
    )
    .await;

    // The crash window was really hit: a pending v2 whose objects exist.
    let before = rows(&site).await;
    let crashed = before
        .iter()
        .find(|r| r.uid == tag && r.version == 2)
        .expect("pending v2 row")
        .clone();
    assert_eq!(crashed.state, "pending");
    let objects = site.token_objects();
    assert!(objects.iter().any(|o| o.id == crashed.cka_id));
    assert!(objects
        .iter()
        .any(|o| Some(&o.id) == crashed.aux_id.as_ref()));

    // Restart without the fault: the key has exactly its old version.
    let server = site.serve(&[]).await;
    let info = server
        .call("GET", &format!("/kms/v1/keys/{tag}"), None)
        .await;
    assert_eq!(info.ok()["currentVersion"], 1);
    assert_eq!(versions(&server, &tag).await, vec![1]);
    assert_eq!(decrypt(&server, &tag, &ct1, Some(ctx)).await, b"keep me");
    // Convergent and still on v1: the same ciphertext as before the crash.
    assert_eq!(encrypt(&server, &tag, b"keep me", Some(ctx)).await, ct1);

    // A new rotation works and old ciphertexts still decrypt.
    let r = server
        .call("POST", &format!("/kms/v1/keys/{tag}/rotate"), None)
        .await;
    assert_eq!(r.ok()["version"], 2);
    let ct2 = encrypt(&server, &tag, b"new", Some(ctx)).await;
    assert!(ct2.starts_with("ncpkms:v2:"));
    assert_eq!(decrypt(&server, &tag, &ct1, Some(ctx)).await, b"keep me");
    assert_eq!(decrypt(&server, &tag, &ct2, Some(ctx)).await, b"new");
    server.kill();

    assert_consistent(&site).await;
    let after = site.token_objects();
    assert!(!after.iter().any(|o| o.id == crashed.cka_id));
    assert!(!after.iter().any(|o| Some(&o.id) == crashed.aux_id.as_ref()));
    let v2 = rows(&site).await;
    let v2 = v2.iter().find(|r| r.uid == tag && r.version == 2).unwrap();
    assert_eq!(v2.state, "active");
    assert_ne!(v2.cka_id, crashed.cka_id);
}

#[tokio::test]
async fn creation_killed_between_hsm_and_store_leaves_no_key() {
    let mut site = Site::init();
    let server = site.serve(&[]).await;
    let keeper = create_key(&server, "keeper", "RSA2048", json!({})).await;
    let ct = encrypt(&server, &keeper, b"kept", None).await;
    server.kill();

    let marker = site.dir.path().join("fault-create");
    let server = site.serve(&fault_env("create:after-hsm", &marker)).await;
    pause_at_fault(
        &server,
        &marker,
        "POST",
        "/kms/v1/keys",
        Some(json!({"keyName": "half-made", "keyType": "RSA2048", "isAutoRotation": false})),
    )
    .await;
    let before = rows(&site).await;
    let crashed = before
        .iter()
        .find(|r| r.uid != keeper)
        .expect("the half-made key's pending row")
        .clone();
    assert_eq!(crashed.state, "pending");
    // While it is half-made, the running server does not show the key.
    let list = server.call("GET", "/kms/v1/keys", None).await;
    assert_eq!(list.ok()["totalCount"], 1, "{}", list.body);
    server
        .call("GET", &format!("/kms/v1/keys/{}", crashed.uid), None)
        .await
        .assert_naver_error(404, "300");
    server
        .call(
            "POST",
            &format!("/kms/v1/keys/{}/encrypt", crashed.uid),
            Some(json!({"plaintext": b64(b"x")})),
        )
        .await
        .assert_naver_error(404, "300");
    server.kill();
    assert_eq!(
        site.token_objects()
            .iter()
            .filter(|o| o.id == crashed.cka_id)
            .count(),
        2,
        "the pair was generated before the kill"
    );

    let server = site.serve(&[]).await;
    // The half-made key does not appear anywhere.
    let list = server.call("GET", "/kms/v1/keys", None).await;
    assert_eq!(list.ok()["totalCount"], 1);
    assert_eq!(list.ok()["keyList"][0]["keyTag"], keeper);
    server
        .call("GET", &format!("/kms/v1/keys/{}", crashed.uid), None)
        .await
        .assert_naver_error(404, "300");
    // Its name is free again, and the other key is intact.
    let again = create_key(&server, "half-made", "RSA2048", json!({})).await;
    assert_ne!(again, crashed.uid);
    assert_eq!(decrypt(&server, &keeper, &ct, None).await, b"kept");
    server.kill();

    assert_consistent(&site).await;
    assert!(!site.token_objects().iter().any(|o| o.id == crashed.cka_id));
    assert!(!rows(&site).await.iter().any(|r| r.uid == crashed.uid));
}

/// Creations running at once share the commits of their pending rows
/// (group commit). Killed after those commits and before any token object
/// exists (`create:after-pending`), they leave pending rows only, which
/// the restart rolls back: no key appears, no object is orphaned, the
/// names are free again, and the key made before is intact.
#[tokio::test]
async fn concurrent_creations_killed_after_their_pending_rows_leave_no_key() {
    let mut site = Site::init();
    let server = site.serve(&[]).await;
    let keeper = create_key(&server, "keeper", "AES256", json!({})).await;
    let ct = encrypt(&server, &keeper, b"kept", None).await;
    server.kill();

    let marker = site.dir.path().join("fault-create-pending");
    let server = site
        .serve(&fault_env("create:after-pending", &marker))
        .await;
    let body = |n: usize| {
        Some(json!({"keyName": format!("burst{n}"), "keyType": "AES256", "isAutoRotation": false}))
    };
    let mut burst = Box::pin(async {
        tokio::join!(
            server.call("POST", "/kms/v1/keys", body(0)),
            server.call("POST", "/kms/v1/keys", body(1)),
            server.call("POST", "/kms/v1/keys", body(2)),
            server.call("POST", "/kms/v1/keys", body(3)),
            server.call("POST", "/kms/v1/keys", body(4)),
            server.call("POST", "/kms/v1/keys", body(5)),
        )
    });
    let start = Instant::now();
    while !marker.exists() {
        tokio::select! {
            r = &mut burst => panic!("the creations answered instead of pausing: {r:?}"),
            _ = tokio::time::sleep(Duration::from_millis(10)) => {}
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the fault point was not reached"
        );
    }
    // Let the other creations reach the pause too, or queue behind it.
    tokio::select! {
        r = &mut burst => panic!("the creations answered instead of pausing: {r:?}"),
        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
    }
    drop(burst);
    server.kill();

    let before = rows(&site).await;
    let crashed: Vec<Row> = before.iter().filter(|r| r.uid != keeper).cloned().collect();
    assert!(
        !crashed.is_empty(),
        "at least one pending row was committed"
    );
    let objects = site.token_objects();
    for r in &crashed {
        assert_eq!(r.state, "pending", "{r:?}");
        assert!(
            !objects.iter().any(|o| o.id == r.cka_id),
            "no object was made before the kill: {r:?}"
        );
    }

    let server = site.serve(&[]).await;
    let list = server.call("GET", "/kms/v1/keys", None).await;
    assert_eq!(list.ok()["totalCount"], 1, "{}", list.body);
    assert_eq!(list.ok()["keyList"][0]["keyTag"], keeper);
    for n in 0..6 {
        create_key(&server, &format!("burst{n}"), "AES256", json!({})).await;
    }
    assert_eq!(decrypt(&server, &keeper, &ct, None).await, b"kept");
    server.kill();

    assert_consistent(&site).await;
    let after = rows(&site).await;
    for r in &crashed {
        assert!(!after.iter().any(|a| a.uid == r.uid), "{r:?} left a row");
    }
    assert_eq!(after.len(), 7);
}

#[tokio::test]
async fn rotation_killed_after_the_store_write_survives() {
    let mut site = Site::init();
    let marker = site.dir.path().join("fault-store");
    let server = site.serve(&fault_env("rotate:after-store", &marker)).await;
    let tag = create_key(&server, "durable", "ECDSA", json!({})).await;
    let aes = create_key(&server, "durable-aes", "AES256", json!({})).await;
    let ct1 = encrypt(&server, &aes, b"v1 data", None).await;
    let sig1 = server
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/sign"),
            Some(json!({"data": b64(b"doc")})),
        )
        .await;
    let sig1 = sig1.ok()["signature"].as_str().unwrap().to_string();
    kill_at_fault(
        server,
        &marker,
        "POST",
        &format!("/kms/v1/keys/{tag}/rotate"),
        None,
    )
    .await;
    let v2 = rows(&site)
        .await
        .into_iter()
        .find(|r| r.uid == tag && r.version == 2)
        .expect("v2 row");
    assert_eq!(
        v2.state, "active",
        "the store write happened before the kill"
    );

    let server = site.serve(&[]).await;
    let info = server
        .call("GET", &format!("/kms/v1/keys/{tag}"), None)
        .await;
    assert_eq!(info.ok()["currentVersion"], 2);
    assert_eq!(versions(&server, &tag).await, vec![1, 2]);
    // v2 works: it signs, and its signature verifies; v1's still does too.
    let sig2 = server
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/sign"),
            Some(json!({"data": b64(b"doc")})),
        )
        .await;
    let sig2 = sig2.ok()["signature"].as_str().unwrap().to_string();
    assert!(sig2.starts_with("ncpkms:v2:"));
    for sig in [&sig1, &sig2] {
        let r = server
            .call(
                "POST",
                &format!("/kms/v1/keys/{tag}/verify"),
                Some(json!({"data": b64(b"doc"), "signature": sig})),
            )
            .await;
        assert_eq!(r.ok()["valid"], true);
    }
    let p1 = server
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/get-pub-key"),
            Some(json!({"keyVersion": 1})),
        )
        .await;
    let p2 = server
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/get-pub-key"),
            Some(json!({})),
        )
        .await;
    assert_ne!(p1.ok()["publicKey"], p2.ok()["publicKey"]);
    // Rotation goes on from there; the other key is untouched.
    let r = server
        .call("POST", &format!("/kms/v1/keys/{tag}/rotate"), None)
        .await;
    assert_eq!(r.ok()["version"], 3);
    assert_eq!(decrypt(&server, &aes, &ct1, None).await, b"v1 data");
    server.kill();

    assert_consistent(&site).await;
    let objects = site.token_objects();
    assert_eq!(
        objects.iter().filter(|o| o.id == v2.cka_id).count(),
        2,
        "the acknowledged version keeps its pair"
    );
}

#[tokio::test]
async fn deletion_killed_between_mark_and_destroy_is_finished() {
    let mut site = Site::init();
    let marker = site.dir.path().join("fault-destroy");
    let mut env = fault_env("destroy:after-mark", &marker);
    env.push(("HSM_KMS_LOG_LEVEL", "info"));
    let server = site.serve(&env).await;
    // The doomed key has two versions, each with an AES key and its
    // convergent HMAC key; the other keys must come through untouched.
    let doomed = create_key(&server, "doomed", "AES256", json!({"isConvergent": true})).await;
    let r = server
        .call("POST", &format!("/kms/v1/keys/{doomed}/rotate"), None)
        .await;
    assert_eq!(r.ok()["version"], 2);
    let keeper = create_key(&server, "keeper", "AES256", json!({})).await;
    let signer = create_key(&server, "signer", "ECDSA", json!({})).await;
    let ct = encrypt(&server, &keeper, b"still here", None).await;
    let sig = server
        .call(
            "POST",
            &format!("/kms/v1/keys/{signer}/sign"),
            Some(json!({"data": b64(b"doc")})),
        )
        .await;
    let sig = sig.ok()["signature"].as_str().unwrap().to_string();
    let r = server
        .call(
            "POST",
            &format!("/kms/v1/keys/{doomed}/request-deletion"),
            None,
        )
        .await;
    assert_eq!(r.ok()["status"], "REVOKE");
    let objects_before = site.token_objects();
    kill_at_fault(
        server,
        &marker,
        "DELETE",
        &format!("/kms/v1/keys/{doomed}"),
        None,
    )
    .await;

    // The crash window was really hit: both versions are marked, their
    // objects are still on the token.
    let marked: Vec<Row> = rows(&site)
        .await
        .into_iter()
        .filter(|r| r.uid == doomed)
        .collect();
    assert_eq!(marked.len(), 2);
    let mut doomed_ids = HashSet::new();
    for r in &marked {
        assert_eq!(r.state, "destroying", "{r:?}");
        doomed_ids.insert(r.cka_id.clone());
        doomed_ids.insert(r.aux_id.clone().expect("convergent key"));
    }
    let objects = site.token_objects();
    assert_eq!(
        objects
            .iter()
            .filter(|o| doomed_ids.contains(&o.id))
            .count(),
        4,
        "two AES keys and two HMAC keys before recovery"
    );
    assert_eq!(objects.len(), objects_before.len());

    // Restart: the reconciler finishes the destruction.
    let server = site.serve(&[("HSM_KMS_LOG_LEVEL", "info")]).await;
    assert!(
        site.log(2).contains("destroyed_finished: 2"),
        "the reconciler reports both versions: {}",
        site.log(2)
    );
    server
        .call("GET", &format!("/kms/v1/keys/{doomed}"), None)
        .await
        .assert_naver_error(404, "300");
    server
        .call(
            "POST",
            &format!("/kms/v1/keys/{doomed}/encrypt"),
            Some(json!({"plaintext": b64(b"x")})),
        )
        .await
        .assert_naver_error(404, "300");
    server
        .call("DELETE", &format!("/kms/v1/keys/{doomed}"), None)
        .await
        .assert_naver_error(404, "300");
    let list = server.call("GET", "/kms/v1/keys", None).await;
    assert_eq!(list.ok()["totalCount"], 2, "{}", list.body);
    let tags: HashSet<&str> = list.ok()["keyList"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["keyTag"].as_str().unwrap())
        .collect();
    assert_eq!(tags, HashSet::from([keeper.as_str(), signer.as_str()]));
    // The other keys work as before; the name is free again.
    assert_eq!(decrypt(&server, &keeper, &ct, None).await, b"still here");
    let r = server
        .call(
            "POST",
            &format!("/kms/v1/keys/{signer}/verify"),
            Some(json!({"data": b64(b"doc"), "signature": sig})),
        )
        .await;
    assert_eq!(r.ok()["valid"], true);
    let again = create_key(&server, "doomed", "AES256", json!({})).await;
    assert_ne!(again, doomed);
    server.kill();

    assert_consistent(&site).await;
    let after = rows(&site).await;
    for r in after.iter().filter(|r| r.uid == doomed) {
        assert_eq!(r.state, "destroyed", "{r:?}");
    }
    let objects = site.token_objects();
    assert!(
        !objects.iter().any(|o| doomed_ids.contains(&o.id)),
        "the doomed key's objects are gone"
    );
    // Exactly the doomed key's four objects went; the new key added one.
    assert_eq!(objects.len(), objects_before.len() - 4 + 1);
    let db = site.db().await;
    let status: String = sqlx::query_scalar("SELECT status FROM keys WHERE uid = $1")
        .bind(&doomed)
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    assert_eq!(status, "DELETED");
}
