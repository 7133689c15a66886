//! HSM faults (issue 9, section 1), each against a real SoftHSMv2 token:
//! sessions closed and login lost under load, the module finalized and the
//! token gone for a while, a key object deleted by another PKCS#11 client,
//! and start-up failures of the real binary.
//!
//! The faults are made from inside the service's process, as a token or a
//! co-resident library would make them: the service runs in the test
//! process (`Kms::start`), and the hooks below act on the same loaded
//! module through its own PKCS#11 entry points.
#![cfg(feature = "test-hooks")]
mod common;
#[path = "common/nhn.rs"]
mod nhn;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{b64, unb64, Kms, Reply};
use serde_json::json;

/// `C_CloseAllSessions` on the service's slot: every session of the process
/// closes, and with the last one the login goes too.
fn close_all_sessions(_: cryptoki::context::Pkcs11, slot: cryptoki::slot::Slot) {
    // SAFETY: the module is already loaded and initialised by the service;
    // loading it again returns the same library, whose C_CloseAllSessions
    // takes a plain slot id. Through C_GetFunctionList: Kryoptic exports no
    // other symbol.
    let rv = unsafe {
        let lib = cryptoki_sys::Pkcs11::new(common::module()).expect("load the module");
        let mut list: cryptoki_sys::CK_FUNCTION_LIST_PTR = std::ptr::null_mut();
        assert_eq!(lib.C_GetFunctionList(&mut list), cryptoki_sys::CKR_OK);
        let close = (*list)
            .C_CloseAllSessions
            .expect("C_CloseAllSessions in the function list");
        close(slot.id())
    };
    assert_eq!(rv, cryptoki_sys::CKR_OK, "C_CloseAllSessions");
}

/// `C_Logout` through a session of the service's own module: the
/// application's login is shared by all its sessions, so all of them lose it.
fn logout(ctx: cryptoki::context::Pkcs11, slot: cryptoki::slot::Slot) {
    let s = ctx.open_ro_session(slot).expect("open a session");
    match s.logout() {
        Ok(()) => {}
        // Between a previous logout and the service's next login.
        Err(cryptoki::error::Error::Pkcs11(cryptoki::error::RvError::UserNotLoggedIn, _)) => {}
        Err(e) => panic!("C_Logout: {e}"),
    }
}

async fn readyz(kms: &Kms) -> (u16, String) {
    let r = reqwest::get(format!("{}/readyz", kms.url))
        .await
        .expect("readyz");
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

fn succeeded(r: &Reply) -> bool {
    r.status == 200 && r.body["code"] == "SUCCESS"
}

/// What the load saw.
#[derive(Default)]
struct Tally {
    ok: AtomicUsize,
    failed: Mutex<Vec<String>>,
    /// (ciphertext, plaintext) of every acknowledged encryption.
    sealed: Mutex<Vec<(String, Vec<u8>)>>,
    /// The AES key's tag.
    aes: Mutex<String>,
}

/// 8 clients doing encrypt, decrypt (of their own last ciphertext) and
/// RSA and ECDSA signing for `secs` while `fault` fires every 150 ms.
/// Returns the tally; every request must have succeeded.
async fn load_with_faults(
    kms: Arc<Kms>,
    secs: u64,
    fault: fn(cryptoki::context::Pkcs11, cryptoki::slot::Slot),
) -> Arc<Tally> {
    let aes = kms.create_key("aes", "AES256", json!({})).await;
    let rsa = kms.create_key("rsa", "RSA2048", json!({})).await;
    let ec = kms.create_key("ecdsa", "ECDSA", json!({})).await;
    let tally = Arc::new(Tally::default());
    *tally.aes.lock().unwrap() = aes.clone();
    let stop = Arc::new(AtomicBool::new(false));
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut clients = Vec::new();
    for c in 0..8u8 {
        let (kms, tally) = (kms.clone(), tally.clone());
        let (aes, rsa, ec) = (aes.clone(), rsa.clone(), ec.clone());
        clients.push(tokio::spawn(async move {
            let mut i = 0u32;
            while Instant::now() < deadline {
                i += 1;
                let pt = format!("client {c} message {i}").into_bytes();
                let r = kms
                    .op(&aes, "encrypt", json!({"plaintext": b64(&pt)}))
                    .await;
                let check = |what: &str, r: &Reply| {
                    if succeeded(r) {
                        tally.ok.fetch_add(1, Ordering::Relaxed);
                        true
                    } else {
                        let mut f = tally.failed.lock().unwrap();
                        f.push(format!("{what}: {} {}", r.status, r.body));
                        false
                    }
                };
                if check("encrypt", &r) {
                    let ct = r.data()["ciphertext"].as_str().unwrap().to_string();
                    let d = kms.op(&aes, "decrypt", json!({"ciphertext": ct})).await;
                    if check("decrypt", &d) {
                        assert_eq!(unb64(d.data()["plaintext"].as_str().unwrap()), pt);
                    }
                    tally.sealed.lock().unwrap().push((ct, pt.clone()));
                }
                let key = if i % 2 == 0 { &rsa } else { &ec };
                let s = kms.op(key, "sign", json!({"data": b64(&pt)})).await;
                if check("sign", &s) {
                    let sig = s.data()["signature"].as_str().unwrap().to_string();
                    let v = kms
                        .op(key, "verify", json!({"data": b64(&pt), "signature": sig}))
                        .await;
                    if check("verify", &v) {
                        assert_eq!(v.data()["valid"], true, "{}", v.body);
                    }
                }
            }
        }));
    }
    let hook = {
        let (kms, stop) = (kms.clone(), stop.clone());
        tokio::spawn(async move {
            let mut fired = 0;
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(150)).await;
                // Between token calls (see Hsm::quiesced); the requests
                // themselves are in flight.
                kms.engine
                    .hsm()
                    .quiesced(fault)
                    .await
                    .expect("the token is serving");
                fired += 1;
            }
            fired
        })
    };
    for c in clients {
        c.await.expect("client task");
    }
    stop.store(true, Ordering::Relaxed);
    let fired = hook.await.unwrap();
    assert!(fired >= 5, "the fault fired only {fired} times");
    let repaired = kms.metric("hsm_kms_hsm_retries_total").await;
    let failed = tally.failed.lock().unwrap().len();
    eprintln!(
        "{} requests acknowledged, {failed} failed, fault fired {fired} times, {repaired} repaired runs",
        tally.ok.load(Ordering::Relaxed),
    );
    tally
}

/// Every acknowledged ciphertext decrypts to its plaintext.
async fn all_decrypt(kms: &Kms, tally: &Tally) {
    let sealed = tally.sealed.lock().unwrap().clone();
    assert!(!sealed.is_empty());
    let tag = tally.aes.lock().unwrap().clone();
    for (ct, pt) in sealed.iter().step_by(7) {
        assert_eq!(&kms.decrypt_ok(&tag, ct, None).await, pt);
    }
}

/// Issue 9 §1: C_CloseAllSessions on the slot, every 150 ms under a load
/// of 8 clients for 3 s: 0 failed requests, every ciphertext decrypts.
/// Before the recovery machinery each firing cost failed requests (500).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn all_sessions_closed_under_load_fails_nothing() {
    // With the inline path on (off by default), so that the repair below
    // covers it as well as the workers.
    let kms = Arc::new(Kms::start_with(|c| c.hsm.inline_symmetric = true).await);
    let tally = load_with_faults(kms.clone(), 3, close_all_sessions).await;
    let failed = tally.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failed.len(),
        failed.len() + tally.ok.load(Ordering::Relaxed),
        failed.first()
    );
    // The load ran between the faults (a floor, not a speed: 578 was the
    // median on a shared 2-core machine, 64 the worst seen; the proof is
    // 0 failed with the faults repaired, asserted around this).
    assert!(tally.ok.load(Ordering::Relaxed) >= 20);
    // The faults were met and repaired, not missed.
    assert!(kms.metric("hsm_kms_hsm_retries_total").await > 0.0);
    // AES calls ran inline (hsm.inline_symmetric): the repair above covers
    // that path too.
    assert!(kms.metric("hsm_kms_token_inline_calls_total").await > 0.0);
    all_decrypt(&kms, &tally).await;
    assert_eq!(readyz(&kms).await.0, 200);
}

/// The token calls of the activity-log writer's own thread
/// (`Hsm::run_audit_blocking`: its batch seals and checkpoints) wait for a
/// quiesced hook like every other call, under both dispatches. They did not
/// (the writer thread came with session 8): CI of stop 21 died with SIGSEGV
/// in `all_sessions_closed_under_load_fails_nothing`, SoftHSMv2 freeing a
/// session under a seal that ran beside `C_CloseAllSessions`.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_writer_threads_token_calls_wait_for_a_quiesced_hook() {
    writer_thread_waits_for_a_quiesced_hook(hsm_kms::hsm::Dispatch::Workers).await;
}

/// The same with `hsm.dispatch = "blocking_pool"`, where the hook also
/// takes every concurrency permit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_writer_threads_token_calls_wait_for_a_quiesced_hook_blocking_pool() {
    writer_thread_waits_for_a_quiesced_hook(hsm_kms::hsm::Dispatch::BlockingPool).await;
}

async fn writer_thread_waits_for_a_quiesced_hook(dispatch: hsm_kms::hsm::Dispatch) {
    {
        let kms = Kms::start_with(|c| c.hsm.dispatch = dispatch).await;
        let hsm = kms.engine.hsm().clone();
        let (entered, inside) = std::sync::mpsc::channel();
        let hook = tokio::spawn({
            let hsm = hsm.clone();
            async move {
                hsm.quiesced(move |_, _| {
                    entered.send(()).expect("the test waits");
                    std::thread::sleep(Duration::from_millis(300));
                    Instant::now()
                })
                .await
                .expect("the token is serving")
            }
        });
        tokio::task::spawn_blocking(move || inside.recv())
            .await
            .unwrap()
            .expect("the hook ran");
        let called = tokio::task::spawn_blocking(move || {
            hsm.run_audit_blocking(hsm_kms::hsm::OpClass::Symmetric, |_| Ok(Instant::now()))
        })
        .await
        .unwrap()
        .expect("an audit call");
        let left = hook.await.unwrap();
        assert!(
            called >= left,
            "{dispatch:?}: the writer thread's call ran {:?} before the hook let go",
            left - called
        );
    }
}

/// Issue 9 §1: C_Logout (the application's login, shared by every
/// session) every 150 ms under load: 0 failed requests after re-login.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn login_lost_under_load_fails_nothing() {
    if common::softhsm_only(
        "Kryoptic 1.5.4 deadlocks when C_Login runs while other sessions are inside \
         C_FindObjectsInit / C_OpenSession (docs/pkcs11-portability.md)",
    ) {
        return;
    }
    let kms = Arc::new(Kms::start().await);
    let tally = load_with_faults(kms.clone(), 3, logout).await;
    let failed = tally.failed.lock().unwrap().clone();
    assert!(
        failed.is_empty(),
        "{} of {} requests failed, first: {:?}",
        failed.len(),
        failed.len() + tally.ok.load(Ordering::Relaxed),
        failed.first()
    );
    // The load ran between the faults (a floor, not a speed: 578 was the
    // median on a shared 2-core machine, 64 the worst seen; the proof is
    // 0 failed with the faults repaired, asserted around this).
    assert!(tally.ok.load(Ordering::Relaxed) >= 20);
    assert!(kms.metric("hsm_kms_hsm_retries_total").await > 0.0);
    all_decrypt(&kms, &tally).await;
    assert_eq!(readyz(&kms).await.0, 200);
}

fn assert_naver_503(r: &Reply) {
    r.assert_naver_error(503, "900");
    assert_eq!(
        r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
        Some("1"),
        "{:?}",
        r.headers
    );
    let text = r.body.to_string();
    assert!(!text.contains("CKR_"), "a PKCS#11 code leaked: {text}");
}

/// Issue 9 §1, the device-class path without p11-kit: the module is
/// finalized under the service (every call then fails with
/// CKR_CRYPTOKI_NOT_INITIALIZED) while the token directory is away, so
/// re-initialising fails until it comes back. Meanwhile: 503 with
/// `Retry-After` in both dialects' envelopes, never a hang, `/readyz` 503;
/// once the token is back the service re-initialises the module by itself
/// and everything acknowledged before still decrypts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn module_finalized_and_token_gone_answers_503_then_recovers() {
    let kms = Kms::start_with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        c.hsm.unavailable_wait_ms = 100;
    })
    .await;
    let aes = kms.create_key("aes", "AES256", json!({})).await;
    let rsa = kms.create_key("rsa", "RSA2048", json!({})).await;
    let before = kms
        .encrypt(&aes, b"acknowledged before the fault", None)
        .await;
    let p = nhn::project(&kms, "p", true).await;
    nhn::key_store(&kms, &p, "S", false, false, false, false).await;
    let nhn_key = nhn::create_key(&kms, &p, "symmetric-keys", "S", json!({})).await;
    let nhn_enc = format!("/symmetric-keys/{nhn_key}/encrypt");
    let r = nhn::call(&kms, &p, "POST", &nhn_enc, Some(json!({"plaintext": "x"}))).await;
    nhn::ok(&r);

    let tokens = kms.dir.path().join("tokens");
    let away = kms.dir.path().join("tokens.away");
    std::fs::rename(&tokens, &away).unwrap();
    let (ctx, _) = kms.engine.hsm().context().unwrap();
    ctx.finalize().expect("C_Finalize");

    for _ in 0..3 {
        let t = Instant::now();
        let r = kms
            .op(&aes, "encrypt", json!({"plaintext": b64(b"during")}))
            .await;
        assert_naver_503(&r);
        assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
        assert_naver_503(&kms.op(&rsa, "sign", json!({"data": b64(b"x")})).await);
        let r = nhn::call(&kms, &p, "POST", &nhn_enc, Some(json!({"plaintext": "x"}))).await;
        nhn::err(&r, 503, -9503);
        assert_eq!(
            r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
            Some("1")
        );
        let (status, text) = readyz(&kms).await;
        assert_eq!(status, 503, "{text}");
        assert!(text.contains("unusable"), "{text}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Key creation is never retried; it fails closed and leaves no
    // half-made version behind (checked once the token is back).
    let r = kms
        .call(
            "POST",
            "/kms/v1/keys",
            Some(json!({"keyName": "during", "keyType": "AES256"})),
        )
        .await;
    assert_naver_503(&r);
    // API 1.0 answers in the 2.0 error envelope for this too.
    let r = kms
        .call(
            "POST",
            &format!("/keys/v2/{aes}/encrypt"),
            Some(json!({"plaintext": b64(b"v1")})),
        )
        .await;
    assert_naver_503(&r);

    std::fs::rename(&away, &tokens).unwrap();
    let back = Instant::now();
    loop {
        if readyz(&kms).await.0 == 200 {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "not ready 5 s after the token came back"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("ready again {:?} after the token came back", back.elapsed());
    assert_eq!(
        kms.decrypt_ok(&aes, &before, None).await,
        b"acknowledged before the fault"
    );
    let ct = kms.encrypt(&aes, b"after", None).await;
    assert_eq!(kms.decrypt_ok(&aes, &ct, None).await, b"after");
    assert!(
        kms.op(&rsa, "sign", json!({"data": b64(b"x")}))
            .await
            .status
            == 200
    );
    let r = nhn::call(&kms, &p, "POST", &nhn_enc, Some(json!({"plaintext": "x"}))).await;
    nhn::ok(&r);
    assert!(kms.metric("hsm_kms_hsm_recoveries_total").await >= 1.0);
    let pending: i64 =
        sqlx::query_scalar("SELECT count(*) FROM key_versions WHERE state = 'pending'")
            .fetch_one(&kms.db().await)
            .await
            .unwrap();
    assert_eq!(pending, 0);
    // The name is free: nothing of the failed creation survived.
    kms.create_key("during", "AES256", json!({})).await;
}

/// Issue 9 §1: a key object deleted by another PKCS#11 client (another
/// process on the same token): that key answers a clear 503 "key material
/// missing from the HSM", the other keys keep working, and `hsm-kms admin
/// reconcile` lists the key as missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn key_object_deleted_behind_the_service() {
    if common::softhsm_file_only(
        "SoftHSMv2's db object store answers CKR_KEY_FUNCTION_NOT_PERMITTED, not \
         CKR_KEY_HANDLE_INVALID, for a key another process deleted (README \"### Key count\")",
    ) {
        return;
    }
    let kms = Kms::start().await;
    let gone = kms.create_key("gone", "AES256", json!({})).await;
    let kept = kms.create_key("kept", "AES256", json!({})).await;
    let ct_gone = kms.encrypt(&gone, b"g", None).await;
    let ct_kept = kms.encrypt(&kept, b"k", None).await;
    let uid: String = sqlx::query_scalar("SELECT uid FROM keys WHERE name = 'gone'")
        .fetch_one(&kms.db().await)
        .await
        .unwrap();
    let conf = std::env::var(common::token_conf_var()).unwrap();
    let out = std::process::Command::new("pkcs11-tool")
        .env(common::token_conf_var(), &conf)
        .args([
            "--module",
            &common::module(),
            "--token-label",
            "hsm-kms-test",
            "--login",
            "--pin",
            common::PIN,
            "--delete-object",
            "--type",
            "secrkey",
            "--label",
            &format!("hsm-kms/{uid}/v1"),
        ])
        .output()
        .expect("pkcs11-tool (opensc) must be installed");
    assert!(
        out.status.success(),
        "pkcs11-tool: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    for r in [
        kms.op(&gone, "encrypt", json!({"plaintext": b64(b"x")}))
            .await,
        kms.decrypt(&gone, &ct_gone, None).await,
    ] {
        r.assert_naver_error(503, "900");
        let details = r.body["error"]["details"].as_str().unwrap();
        assert!(
            details.contains("key material missing from the HSM"),
            "{details}"
        );
    }
    assert_eq!(kms.decrypt_ok(&kept, &ct_kept, None).await, b"k");
    let ct = kms.encrypt(&kept, b"still", None).await;
    assert_eq!(kms.decrypt_ok(&kept, &ct, None).await, b"still");
    assert_eq!(readyz(&kms).await.0, 200);

    let data_dir = &kms.config.store.data_dir;
    let out = std::process::Command::new(common::process::binary())
        .env(common::token_conf_var(), &conf)
        .env("HSM_KMS_HSM_MODULE", common::module())
        .env("HSM_KMS_HSM_TOKEN_LABEL", "hsm-kms-test")
        .env("HSM_KMS_PIN", common::PIN)
        .env("HSM_KMS_STORE_DATA_DIR", data_dir)
        .env("HSM_KMS_STORE_URL", &kms.config.store.url)
        .env("HSM_KMS_LOG_LEVEL", "warn")
        .args(["admin", "reconcile"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l == format!("missing\tkey {uid} v1")),
        "{stdout}"
    );
    assert!(
        stdout.contains("1 missing objects"),
        "only the deleted key is missing: {stdout}"
    );
}

/// The one `hsm-kms: ...` line a failed `serve` leaves on stderr.
fn failed_serve(site: &common::process::Site, env: &[(&str, &str)]) -> String {
    let mut cmd = site.command();
    cmd.arg("serve");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let t = Instant::now();
    let out = cmd.output().expect("run hsm-kms serve");
    assert!(t.elapsed() < Duration::from_secs(20));
    assert!(!out.status.success(), "serve must exit non-zero");
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("hsm-kms: "))
        .collect();
    assert_eq!(lines.len(), 1, "one cause line: {stderr}");
    lines[0].to_string()
}

/// Issue 9 §1: a module that does not load, and a wrong PIN, at start:
/// `serve` exits 1 with one line naming the cause.
#[tokio::test]
async fn start_fails_with_one_line_on_bad_module_or_wrong_pin() {
    let site = common::process::Site::init();
    let line = failed_serve(&site, &[("HSM_KMS_HSM_MODULE", "/nonexistent/libnope.so")]);
    assert!(
        line.contains("cannot load PKCS#11 module /nonexistent/libnope.so"),
        "{line}"
    );
    let line = failed_serve(&site, &[("HSM_KMS_PIN", "999999")]);
    assert!(line.contains("login to the token failed"), "{line}");
    assert!(line.contains("PIN"), "{line}");
    assert!(
        !line.contains("999999"),
        "the PIN must not be shown: {line}"
    );
    let line = failed_serve(&site, &[("HSM_KMS_HSM_TOKEN_LABEL", "no-such-token")]);
    assert!(line.contains("no initialised token matches"), "{line}");
}

/// Version rows in `state` (all keys, both dialects).
async fn versions_in(kms: &Kms, state: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM key_versions WHERE state = $1")
        .bind(state)
        .fetch_one(&kms.db().await)
        .await
        .unwrap()
}

/// The service's objects on the token, by `CKA_ID`.
async fn object_ids(kms: &Kms) -> Vec<Vec<u8>> {
    let mut ids: Vec<Vec<u8>> = kms
        .engine
        .hsm()
        .list_service_objects()
        .await
        .expect("list the token's objects")
        .into_iter()
        .map(|o| o.id)
        .collect();
    ids.sort();
    ids
}

/// Issue 9: a device fault after the store wrote a creation's or a
/// rotation's `pending` row and before the token wrote its key. The request
/// stops at the fault point (`*:after-pending`, a gate of the `test-hooks`
/// feature); there the module is finalized under the service and the token
/// taken away, so the key generation fails as on a dead network HSM. The
/// client gets the 503 envelope of its dialect; the pending row stays while
/// the token is down (it is the only record of a generation the token may
/// have done before failing); once the token is back the service rolls the
/// row back, destroying only objects with the row's own `CKA_ID`s: every
/// other object and version is still there and still works. The same call
/// then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn device_fault_between_pending_row_and_token_write_rolls_back() {
    let kms = Arc::new(
        Kms::start_with(|c| {
            c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
            c.hsm.unavailable_wait_ms = 100;
        })
        .await,
    );
    let aes = kms.create_key("aes", "AES256", json!({})).await;
    let ct = kms.encrypt(&aes, b"acknowledged before", None).await;
    let p = Arc::new(nhn::project(&kms, "p", true).await);
    nhn::key_store(&kms, &p, "S", false, false, false, false).await;
    let nhn_key = nhn::create_key(&kms, &p, "symmetric-keys", "S", json!({})).await;
    let nhn_ct = {
        let r = nhn::call(
            &kms,
            &p,
            "POST",
            &format!("/symmetric-keys/{nhn_key}/encrypt"),
            Some(json!({"plaintext": "kept"})),
        )
        .await;
        nhn::ok(&r)["ciphertext"].as_str().unwrap().to_string()
    };
    let gate = tempfile::tempdir().unwrap();
    let marker = gate.path().join("gate");
    std::env::set_var("HSM_KMS_FAULT_MARKER", &marker);
    let rotate = format!("/kms/v1/keys/{aes}/rotate");

    for (case, point) in [
        ("NAVER create", "create:after-pending"),
        ("NAVER rotate", "rotate:after-pending"),
        ("NHN key create", "nhn-create:after-pending"),
        ("NHN secret create", "nhn-create:after-pending"),
    ] {
        let objects = object_ids(&kms).await;
        let active = versions_in(&kms, "active").await;
        std::env::set_var("HSM_KMS_FAULT_GATE", point);
        let call = {
            let (kms, p, rotate) = (kms.clone(), p.clone(), rotate.clone());
            move || async move {
                match case {
                    "NAVER create" => {
                        let body = json!({"keyName": "during", "keyType": "AES256"});
                        kms.call("POST", "/kms/v1/keys", Some(body)).await
                    }
                    "NAVER rotate" => kms.call("POST", &rotate, None).await,
                    "NHN key create" => {
                        let body =
                            json!({"keyStoreName": "S", "name": "during", "description": "d"});
                        nhn::call(&kms, &p, "POST", "/keys/symmetric-keys/create", Some(body)).await
                    }
                    _ => {
                        let body =
                            json!({"keyStoreName": "S", "name": "during", "secretValue": "v"});
                        nhn::call(&kms, &p, "POST", "/keys/secrets/create", Some(body)).await
                    }
                }
            }
        };
        let req = tokio::spawn(call.clone()());
        let start = Instant::now();
        while !marker.exists() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "{case}: {point} not reached"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            versions_in(&kms, "pending").await,
            1,
            "{case}: the pending row"
        );

        // The device fails before the token writes anything.
        let tokens = kms.dir.path().join("tokens");
        let away = kms.dir.path().join("tokens.away");
        std::fs::rename(&tokens, &away).unwrap();
        let (ctx, _) = kms.engine.hsm().context().unwrap();
        ctx.finalize().expect("C_Finalize");
        std::env::remove_var("HSM_KMS_FAULT_GATE");
        std::fs::remove_file(&marker).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(15), req)
            .await
            .unwrap_or_else(|_| panic!("{case}: no answer within 15 s"))
            .unwrap();
        if case.starts_with("NHN") {
            nhn::err(&r, 503, -9503);
            assert_eq!(
                r.headers.get("retry-after").and_then(|v| v.to_str().ok()),
                Some("1")
            );
            assert!(!r.body.to_string().contains("CKR_"), "{}", r.body);
        } else {
            assert_naver_503(&r);
        }
        // While the token is down nothing can prove what the generation
        // did: the row stays.
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(
            versions_in(&kms, "pending").await,
            1,
            "{case}: kept while down"
        );

        std::fs::rename(&away, &tokens).unwrap();
        let back = Instant::now();
        while versions_in(&kms, "pending").await != 0 {
            assert!(
                back.elapsed() < Duration::from_secs(15),
                "{case}: the pending row was not rolled back 15 s after the token came back"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(readyz(&kms).await.0, 200);
        assert_eq!(object_ids(&kms).await, objects, "{case}: objects changed");
        assert_eq!(versions_in(&kms, "active").await, active);
        assert_eq!(versions_in(&kms, "destroying").await, 0);
        assert_eq!(
            kms.decrypt_ok(&aes, &ct, None).await,
            b"acknowledged before"
        );
        let r = nhn::call(
            &kms,
            &p,
            "POST",
            &format!("/symmetric-keys/{nhn_key}/decrypt"),
            Some(json!({"ciphertext": nhn_ct})),
        )
        .await;
        assert_eq!(nhn::ok(&r)["plaintext"], "kept");

        // The retry succeeds and adds exactly its own objects.
        let r = call().await;
        assert_eq!(r.status, 200, "{case}: retry: {}", r.body);
        if case.starts_with("NHN") {
            nhn::ok(&r);
        } else {
            r.ok();
        }
        assert_eq!(versions_in(&kms, "active").await, active + 1);
        assert_eq!(object_ids(&kms).await.len(), objects.len() + 1);
    }
    let ct2 = kms.encrypt(&aes, b"after", None).await;
    assert_eq!(kms.decrypt_ok(&aes, &ct2, None).await, b"after");
}
