//! The tamper-evident audit trail (issue 12, section 2): every activity
//! record carries a chain value computed in the token, checkpoints are
//! signed with the attestation key, and `hsm-kms audit verify` finds the
//! first break (position and kind) after rows were edited, deleted,
//! reordered or truncated, or a checkpoint forged, directly in the store
//! (SQLite, or PostgreSQL with `HSM_KMS_TEST_STORE=postgres`).
//!
//! Each test starts the service in-process on a fresh SoftHSM token (one
//! checkpoint every 10 records), which makes 32 records (seq 1 is `init`'s
//! creation of the first account, seq 2 CreateKey, then Encrypt and Decrypt
//! alternately: odd seqs Encrypt, even seqs Decrypt), tampers with the
//! store through a connection of its own, and runs the real binary for
//! `audit verify`, `audit export` and `audit verify-export`, as an operator
//! would beside the server.
//!
//! Records are chained per group-commit batch by default (a SHA-256 link
//! each, an in-token seal on each batch's last record); sequential calls
//! make batches of one. The later tests make batches of many, mix them with
//! records of the per-record format (an in-token HMAC each, as installed
//! databases hold) and tamper inside a batch.
//!
//! Every source of records shares the one chain: NAVER calls, NHN calls
//! (`NHN_USER_ACCESS_KEY` / `NHN_APPKEY`), the admin CLI (`ADMIN`) and the
//! scheduler (`SYSTEM`); the last tests check each writes chained records
//! and that tampering with an NHN record or an admin record is found at its
//! position.
// The engine's store and HSM ports are public to tests only with the
// `test-hooks` feature (scripts/test.sh builds with --all-features).
#![cfg(feature = "test-hooks")]

mod common;
#[path = "common/nhn.rs"]
mod nhn_t;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::Kms;
use serde_json::json;

/// Records made by [`setup`].
const RECORDS: i64 = 32;

/// Runs the binary: (exit code, stdout, stderr).
fn run(mut c: Command) -> (i32, String, String) {
    let out = c.output().expect("run hsm-kms");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `hsm-kms audit verify [ARGS]`: (exit code, stdout).
fn verify(kms: &Kms, args: &[&str]) -> (i32, String) {
    let mut c = kms.cli();
    c.args(["audit", "verify"]).args(args);
    let (code, out, err) = run(c);
    assert!(code == 0 || code == 1, "audit verify failed: {out}{err}");
    (code, out)
}

/// Asserts `audit verify` reports the first break at `seq` of `kind`.
fn assert_break(kms: &Kms, seq: i64, kind: &str) {
    let (code, out) = verify(kms, &[]);
    assert_eq!(code, 1, "a break exits 1: {out}");
    let line = out
        .lines()
        .find(|l| l.starts_with("BREAK "))
        .unwrap_or_else(|| panic!("no BREAK line: {out}"));
    assert!(
        line.starts_with(&format!("BREAK seq={seq} kind={kind} ")),
        "expected the break at seq {seq} ({kind}): {out}"
    );
}

/// `hsm-kms audit export --out FILE`.
fn export(kms: &Kms, name: &str) -> PathBuf {
    let path = kms.dir.path().join(name);
    let mut c = kms.cli();
    c.args(["audit", "export", "--out"]).arg(&path);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "audit export: {out}{err}");
    path
}

/// The attestation public key, from `hsm-kms attest public-key`.
fn public_key(kms: &Kms) -> PathBuf {
    let path = kms.dir.path().join("attest.pem");
    let mut c = kms.cli();
    c.args(["attest", "public-key", "--out"]).arg(&path);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "attest public-key: {out}{err}");
    path
}

/// `hsm-kms audit verify-export FILE --public-key PEM` with no token and
/// no store at all: (exit code, stdout).
fn verify_export(file: &Path, pem: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
        .env_clear()
        .env("HSM_KMS_HSM_MODULE", "/nonexistent/module.so")
        .env("HSM_KMS_STORE_DATA_DIR", "/nonexistent/data")
        .args(["audit", "verify-export"])
        .arg(file)
        .arg("--public-key")
        .arg(pem)
        .output()
        .expect("run hsm-kms audit verify-export");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// A service with 32 records and checkpoints at seq 10, 20 and 30.
async fn setup() -> Kms {
    let kms = Kms::start_with(|c| {
        c.audit.checkpoint_every_records = 10;
        c.audit.checkpoint_every_secs = 3600;
    })
    .await;
    let tag = kms.create_key("audited", "AES256", json!({})).await;
    for i in 0..15u8 {
        let ct = kms.encrypt(&tag, &[i; 4], None).await;
        assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, vec![i; 4]);
    }
    kms
}

async fn exec(kms: &Kms, sql: &str) {
    let db = kms.db().await;
    sqlx::query(sql).execute(&db).await.expect(sql);
    db.close().await;
}

/// Runs `sql` with one bound blob (`$1`).
async fn exec_blob(kms: &Kms, sql: &str, blob: Vec<u8>) {
    let db = kms.db().await;
    sqlx::query(sql).bind(blob).execute(&db).await.expect(sql);
    db.close().await;
}

/// Exchanges the time and action of two records, leaving their ids and
/// chain values in place.
async fn swap_fields(kms: &Kms, a: i64, b: i64) {
    let db = kms.db().await;
    let get = |id: i64| {
        sqlx::query_as::<_, (i64, String)>("SELECT at, action FROM activity_logs WHERE id = $1")
            .bind(id)
            .fetch_one(&db)
    };
    let (ra, rb) = (get(a).await.unwrap(), get(b).await.unwrap());
    assert_ne!(ra, rb, "the records differ");
    for (id, (at, action)) in [(a, rb), (b, ra)] {
        sqlx::query("UPDATE activity_logs SET at = $1, action = $2 WHERE id = $3")
            .bind(at)
            .bind(action)
            .bind(id)
            .execute(&db)
            .await
            .unwrap();
    }
    db.close().await;
}

async fn checkpoints(kms: &Kms) -> Vec<i64> {
    let db = kms.db().await;
    let v = sqlx::query_scalar("SELECT seq FROM audit_checkpoints ORDER BY seq")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    v
}

#[tokio::test]
async fn an_untouched_log_verifies_online_and_offline() {
    let kms = setup().await;
    assert_eq!(checkpoints(&kms).await, vec![10, 20, 30]);
    let (code, out) = verify(&kms, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!(
            "checked {RECORDS} records from seq 1 to seq {RECORDS}; 3 checkpoints (newest at seq 30)"
        )),
        "{out}"
    );
    assert!(out.lines().last() == Some("OK"), "{out}");
    assert!(!out.contains("unchained"), "{out}");
    // From a later position, anchored on the stored chain value before it.
    let (code, out) = verify(&kms, &["--from", "15"]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("checked 18 records from seq 15"), "{out}");

    // An admin CLI action, written by another process, joins the chain.
    let mut c = kms.cli();
    c.args(["admin", "create-account", "auditor-demo"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}{err}");
    let db = kms.db().await;
    let (action, auth, msg, chain): (String, String, String, Option<Vec<u8>>) =
        sqlx::query_as("SELECT action, auth_type, message, chain FROM activity_logs WHERE id = $1")
            .bind(RECORDS + 1)
            .fetch_one(&db)
            .await
            .unwrap();
    db.close().await;
    assert_eq!(
        (action.as_str(), auth.as_str(), msg.as_str()),
        ("AdminCreateAccount", "ADMIN", "account=auditor-demo")
    );
    assert_eq!(chain.map(|c| c.len()), Some(32));
    // ... and the server continues the chain after it.
    let tag = kms.create_key("after-admin", "AES256", json!({})).await;
    kms.encrypt(&tag, b"x", None).await;
    let (code, out) = verify(&kms, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("checked 35 records"), "{out}");

    // The export checks offline with the attestation public key.
    let file = export(&kms, "audit.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["type"], "header");
    assert_eq!(lines[0]["format"], "hsm-kms-audit-export/2");
    assert_eq!(lines.iter().filter(|l| l["type"] == "record").count(), 35);
    // Sequential calls: batches of one, each record sealed.
    assert!(lines
        .iter()
        .filter(|l| l["type"] == "record")
        .all(|l| l["chainFormat"] == 2 && l["seal"].is_string()));
    assert_eq!(
        lines.iter().filter(|l| l["type"] == "checkpoint").count(),
        3
    );
    // The checkpoint at seq 10 comes right after record 10.
    let at = lines
        .iter()
        .position(|l| l["type"] == "checkpoint" && l["seq"] == 10)
        .unwrap();
    assert_eq!(lines[at - 1]["seq"], 10);
    assert_eq!(lines[at - 1]["chain"], lines[at]["chain"]);
    let pem = public_key(&kms);
    let (code, out) = verify_export(&file, &pem);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("35 records (35 chained), 3 checkpoints"),
        "{out}"
    );
    let (code, out) = verify_export_seals(&kms, &file, &pem);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("in the token: 35 seals and 0 per-record HMACs checked"),
        "{out}"
    );

    // A line cut out of the export, and a checkpoint altered in it, are
    // found offline.
    let cut: String = text
        .lines()
        .filter(|l| !l.contains("\"seq\":7,"))
        .map(|l| format!("{l}\n"))
        .collect();
    let cut_file = kms.dir.path().join("cut.jsonl");
    std::fs::write(&cut_file, cut).unwrap();
    let (code, out) = verify_export(&cut_file, &pem);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BREAK seq=7 kind=deleted"), "{out}");
    let mut forged: Vec<serde_json::Value> = lines.clone();
    forged[at]["at"] = json!(forged[at]["at"].as_i64().unwrap() + 1);
    let forged_file = kms.dir.path().join("forged.jsonl");
    std::fs::write(
        &forged_file,
        forged.iter().map(|l| format!("{l}\n")).collect::<String>(),
    )
    .unwrap();
    let (code, out) = verify_export(&forged_file, &pem);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("BREAK seq=10 kind=bad-checkpoint-signature"),
        "{out}"
    );
}

#[tokio::test]
async fn an_edited_field_is_found_at_its_record() {
    let kms = setup().await;
    exec(
        &kms,
        "UPDATE activity_logs SET source_ip = '203.0.113.9' WHERE id = 17",
    )
    .await;
    assert_break(&kms, 17, "edited");
    // Walking from after the edit, the rest holds.
    let (code, out) = verify(&kms, &["--from", "18"]);
    assert_eq!(code, 0, "{out}");
    // An edited chain value is an edit too.
    exec_blob(
        &kms,
        "UPDATE activity_logs SET source_ip = '127.0.0.1', chain = $1 WHERE id = 17",
        vec![0u8; 32],
    )
    .await;
    assert_break(&kms, 17, "edited");
}

#[tokio::test]
async fn a_deleted_row_is_found_at_its_position() {
    let kms = setup().await;
    exec(&kms, "DELETE FROM activity_logs WHERE id = 12").await;
    assert_break(&kms, 12, "deleted");
}

#[tokio::test]
async fn swapped_rows_are_found_as_reordered() {
    let kms = setup().await;
    // Fields moved, chain values left in place (an Encrypt and a Decrypt).
    swap_fields(&kms, 14, 15).await;
    assert_break(&kms, 14, "reordered");
    swap_fields(&kms, 14, 15).await;
    let (code, out) = verify(&kms, &[]);
    assert_eq!(code, 0, "swapped back: {out}");
    // Whole rows moved, chain values with them.
    for sql in [
        "UPDATE activity_logs SET id = -14 WHERE id = 14",
        "UPDATE activity_logs SET id = 14 WHERE id = 19",
        "UPDATE activity_logs SET id = 19 WHERE id = -14",
    ] {
        exec(&kms, sql).await;
    }
    assert_break(&kms, 14, "reordered");
}

#[tokio::test]
async fn a_truncated_tail_is_found_by_the_checkpoint() {
    let kms = setup().await;
    // Records 26 to 31 cut off; the checkpoint at 30 covered them.
    exec(&kms, "DELETE FROM activity_logs WHERE id > 25").await;
    assert_break(&kms, 26, "truncated");
    // Offline too, from an export of the truncated log.
    let file = export(&kms, "truncated.jsonl");
    let pem = public_key(&kms);
    let (code, out) = verify_export(&file, &pem);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("BREAK seq=26 kind=truncated"), "{out}");
    // The service writing on after the cut does not hide it: the chain it
    // continues from seq 26 does not match the checkpoint signed at 30.
    let tag: String = {
        let db = kms.db().await;
        let t = sqlx::query_scalar("SELECT key_uid FROM activity_logs WHERE id = 2")
            .fetch_one(&db)
            .await
            .unwrap();
        db.close().await;
        t
    };
    for _ in 0..6 {
        kms.encrypt(&tag, b"more", None).await;
    }
    assert_break(&kms, 30, "checkpoint-mismatch");
}

#[tokio::test]
async fn a_forged_checkpoint_is_found() {
    let kms = setup().await;
    exec_blob(
        &kms,
        "UPDATE audit_checkpoints SET chain = $1 WHERE seq = 20",
        vec![0u8; 32],
    )
    .await;
    assert_break(&kms, 20, "bad-checkpoint-signature");
    // A made-up checkpoint past the end (to fake a longer log) as well.
    let kms_db = kms.db().await;
    sqlx::query("UPDATE audit_checkpoints SET chain = (SELECT chain FROM activity_logs WHERE id = 20) WHERE seq = 20")
        .execute(&kms_db)
        .await
        .unwrap();
    sqlx::query("INSERT INTO audit_checkpoints (seq, chain, at, signature) SELECT 99, chain, at, signature FROM audit_checkpoints WHERE seq = 30")
        .execute(&kms_db)
        .await
        .unwrap();
    kms_db.close().await;
    assert_break(&kms, 99, "bad-checkpoint-signature");
}

#[tokio::test]
async fn records_written_before_the_chain_are_reported_unchained() {
    // A store as the release before the chain left it: the engine's
    // migrations before 0009 and three activity records.
    let legacy = common::LegacyStore::before("0009").await;
    let (data, url) = (legacy.data.clone(), legacy.url.clone());
    let db = common::any_pool(&url, &legacy.db_file).await;
    for i in 0..3 {
        sqlx::query(
            "INSERT INTO activity_logs (at, account_id, key_uid, key_name, key_id, version, action, auth_type, caller, source_ip, result, status, message)
             VALUES ($1, 1, 'old-key', 'old', 1, 1, 'Encrypt', 'ACCOUNT', 'AK', '10.0.0.1', 'SUCCESS', 200, '')",
        )
        .bind(1_600_000_000_000i64 + i)
        .execute(&db)
        .await
        .unwrap();
    }
    db.close().await;
    // The upgrade: this release opens it (migration 0009) and chains from
    // seq 4 on (`init`'s record of the first account, CreateKey, Encrypt).
    let data_dir = data.display().to_string();
    let kms = Kms::start_with(move |c| {
        c.store.data_dir = data_dir;
        c.store.url = url;
    })
    .await;
    let tag = kms.create_key("new", "AES256", json!({})).await;
    kms.encrypt(&tag, b"x", None).await;
    let (code, out) = verify(&kms, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("unchained before seq 4: 3 records"), "{out}");
    assert!(
        out.contains("checked 3 records from seq 4 to seq 6"),
        "{out}"
    );
    // The export carries them, without chain values, and checks offline.
    let file = export(&kms, "legacy.jsonl");
    let (code, out) = verify_export(&file, &public_key(&kms));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("6 records (3 chained)"), "{out}");
}

#[tokio::test]
async fn checkpoints_come_every_t_seconds_while_idle() {
    let kms = Kms::start_with(|c| {
        c.audit.checkpoint_every_records = 1000;
        c.audit.checkpoint_every_secs = 1;
    })
    .await;
    let tag = kms.create_key("idle", "AES256", json!({})).await;
    kms.encrypt(&tag, b"x", None).await;
    // No further request: the writer's time trigger signs the tail (seq 1
    // is init's record, 2 CreateKey, 3 Encrypt).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while checkpoints(&kms).await != vec![3] {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint of seq 3 while idle: {:?}",
            checkpoints(&kms).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    let (code, out) = verify(&kms, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("1 checkpoints (newest at seq 3)"), "{out}");
}

#[tokio::test]
async fn an_installation_without_the_audit_key_gets_it_from_init() {
    let kms = Kms::start().await;
    // As an installation made before `init` made the audit-hmac key: no
    // key, no chained record (init's own record goes with the key).
    exec(&kms, "DELETE FROM service_keys WHERE name = 'audit-hmac'").await;
    exec(&kms, "DELETE FROM activity_logs").await;
    let mut c = kms.cli();
    c.args(["admin", "create-account", "x"]);
    let (code, out, err) = run(c);
    assert_ne!(code, 0, "no audit key, no unchained record: {out}{err}");
    assert!(
        err.contains("no `audit-hmac` service key") && err.contains("hsm-kms init"),
        "{err}"
    );
    let mut c = kms.cli();
    c.arg("init");
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}{err}");
    assert!(err.contains("created service keys: audit-hmac"), "{err}");
    let mut c = kms.cli();
    c.args(["admin", "create-account", "x"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out) = verify(&kms, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("checked 1 records"), "{out}");
}

/// Set in the child process of the test below: the store it opens and closes.
const CHILD_DB: &str = "AUDIT_CHAIN_TEST_CHILD_DB";

/// A store opened a second time in one process (as `init` then `serve` in
/// the in-process tests) must leave the first one's SQLite locks alone:
/// the second open used to open and close a descriptor of `metadata.db`,
/// which dropped every POSIX lock of the process on it, so another process
/// closing its last connection took the database as unused and reset the
/// WAL under the open connections (this test's chain walk then lost
/// records written after an admin command, about one run in four).
#[tokio::test]
async fn a_store_opened_twice_in_one_process_keeps_its_wal() {
    if common::sqlite_only("SQLite's file locks and WAL") {
        return;
    }
    if let Ok(path) = std::env::var(CHILD_DB) {
        // The other process: open, read, close (the last connection).
        let db = common::db_pool(Path::new(&path)).await;
        sqlx::query("SELECT COUNT(*) FROM accounts")
            .execute(&db)
            .await
            .unwrap();
        db.close().await;
        return;
    }
    use hsm_kms::store::AccountRepo as _;
    let dir = tempfile::tempdir().unwrap();
    let a = hsm_kms::store::Store::open_sqlite(dir.path())
        .await
        .unwrap();
    a.create_account("first").await.unwrap();
    let _b = hsm_kms::store::Store::open_sqlite(dir.path())
        .await
        .unwrap();
    let db_file = dir.path().join("metadata.db");
    let wal = dir.path().join("metadata.db-wal");
    assert!(wal.exists(), "WAL mode");
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "a_store_opened_twice_in_one_process_keeps_its_wal",
            "--exact",
        ])
        .env(CHILD_DB, &db_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        wal.exists(),
        "another process's last close reset the WAL under this process's open connections"
    );
    a.create_account("second").await.unwrap();
    let db = common::db_pool(&db_file).await;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM accounts")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(n, 2);
}

/// Every record's (action, auth_type, caller, key_uid, version, result,
/// status, message), by sequence number, each with a 32-byte chain value.
#[allow(clippy::type_complexity)]
async fn records(
    kms: &Kms,
) -> Vec<(
    i64,
    String,
    String,
    String,
    String,
    Option<i64>,
    String,
    i64,
    String,
)> {
    let db = kms.db().await;
    let rows: Vec<(
        i64,
        String,
        String,
        String,
        String,
        Option<i64>,
        String,
        i64,
        String,
        Option<Vec<u8>>,
    )> = sqlx::query_as(
        "SELECT id, action, auth_type, caller, key_uid, version, result, status, message, chain \
             FROM activity_logs ORDER BY id",
    )
    .fetch_all(&db)
    .await
    .unwrap();
    db.close().await;
    rows.into_iter()
        .map(|r| {
            assert_eq!(
                r.9.as_ref().map(|c| c.len()),
                Some(32),
                "record {} unchained",
                r.0
            );
            (r.0, r.1, r.2, r.3, r.4, r.5, r.6, r.7, r.8)
        })
        .collect()
}

/// Runs the admin CLI; asserts it succeeded.
fn admin(kms: &Kms, args: &[&str]) -> String {
    let mut c = kms.cli();
    c.arg("admin").args(args);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "admin {args:?}: {out}{err}");
    out
}

#[tokio::test]
async fn nhn_admin_and_scheduler_records_join_the_chain() {
    let kms = Kms::start_with(|c| {
        c.audit.checkpoint_every_records = 5;
        c.audit.checkpoint_every_secs = 3600;
    })
    .await;
    // NHN: a project whose data calls may come with the appkey alone (made
    // through the engine, as the harness does: not an admin CLI action).
    let p = nhn_t::project(&kms, "audited", true).await;
    nhn_t::key_store(&kms, &p, "S", false, false, false, false).await;
    let key = nhn_t::create_key(
        &kms,
        &p,
        "symmetric-keys",
        "S",
        json!({"autoRotationPeriod": 30}),
    )
    .await;
    let enc = format!("/symmetric-keys/{key}/encrypt");
    let r = nhn_t::call(&kms, &p, "POST", &enc, Some(json!({"plaintext": "a"}))).await;
    let ct = nhn_t::ok(&r)["ciphertext"].as_str().unwrap().to_string();
    let r = nhn_t::call_appkey_only(
        &kms,
        &p,
        "POST",
        &format!("/symmetric-keys/{key}/decrypt"),
        Some(json!({"ciphertext": ct})),
    )
    .await;
    assert_eq!(nhn_t::ok(&r)["plaintext"], "a");
    // A refused call is recorded too, with its resultCode.
    let r = nhn_t::call_appkey_only(
        &kms,
        &p,
        "POST",
        &format!("/symmetric-keys/{key}/decrypt"),
        Some(json!({"ciphertext": "AAAAAQ=="})),
    )
    .await;
    nhn_t::err(&r, 400, -1001);
    // Another project's key id is not named as this project's key.
    let naver_tag = kms
        .create_key(
            "naver-key",
            "AES256",
            json!({"isAutoRotation": true, "rotationPeriod": 30}),
        )
        .await;
    let r = nhn_t::call(
        &kms,
        &p,
        "POST",
        &format!("/symmetric-keys/{naver_tag}/encrypt"),
        Some(json!({"plaintext": "probe"})),
    )
    .await;
    nhn_t::err(&r, 404, -1300);
    // Credentials: added, deletion requested (the scheduler deletes it).
    for (method, path) in [("POST", "/auths/ipv4s"), ("PUT", "/auths/ipv4s/delete")] {
        nhn_t::ok(
            &nhn_t::call(
                &kms,
                &p,
                method,
                path,
                Some(json!({"keyStoreName": "S", "value": "192.0.2.7"})),
            )
            .await,
        );
    }

    // Admin CLI actions, from another process.
    admin(&kms, &["create-account", "audited-account"]);
    admin(&kms, &["nhn", "revoke-user-access-key", &p.uak.0]);
    admin(&kms, &["reconcile", "--destroy-orphans", "--yes"]);

    // The scheduler: NAVER and NHN rotations, a NAVER destruction and the
    // NHN credential deletion, all made due.
    let doomed = kms.create_key("doomed", "AES256", json!({})).await;
    kms.op(&doomed, "request-deletion", json!(null)).await.ok();
    let db = kms.db().await;
    for sql in [
        format!("UPDATE keys SET next_rotation_at = 1 WHERE uid = '{naver_tag}'"),
        format!("UPDATE keys SET destroy_at = 1 WHERE uid = '{doomed}'"),
        "UPDATE keys SET next_rotation_at = 1 WHERE dialect = 'nhn'".to_string(),
        "UPDATE nhn_credentials SET deletion_at = 1 WHERE status = 'deleting'".to_string(),
    ] {
        let r = sqlx::query(&sql).execute(&db).await.unwrap();
        assert_eq!(r.rows_affected(), 1, "{sql}");
    }
    db.close().await;
    assert_eq!(kms.engine.run_due_work().await.unwrap(), (2, 1));

    let recs = records(&kms).await;
    let find = |action: &str| {
        recs.iter()
            .filter(|r| r.1 == action)
            .cloned()
            .collect::<Vec<_>>()
    };
    let fp = hsm_kms::core::nhn::appkey_fingerprint(&p.appkey);
    // NHN calls: who, which key and version, what, the result.
    let c = find("NhnCreateKey")[0].clone();
    assert_eq!(
        (c.2.as_str(), c.3.as_str(), c.4.as_str(), c.5),
        (
            "NHN_USER_ACCESS_KEY",
            p.uak.0.as_str(),
            key.as_str(),
            Some(1)
        )
    );
    assert_eq!((c.6.as_str(), c.7), ("SUCCESS", 200));
    assert_eq!(c.8, format!("appkey={fp} keyStore=S"));
    let e = find("NhnEncrypt");
    assert_eq!(e.len(), 2, "{e:?}");
    assert_eq!(
        (e[0].2.as_str(), e[0].4.as_str(), e[0].5, e[0].7),
        ("NHN_USER_ACCESS_KEY", key.as_str(), Some(1), 200)
    );
    assert_eq!(
        (e[1].4.as_str(), e[1].6.as_str(), e[1].7),
        ("", "FAIL", 404)
    );
    assert_eq!(
        e[1].8,
        format!("appkey={fp} keyId={naver_tag} resultCode=-1300")
    );
    let d = find("NhnDecrypt");
    assert_eq!(d.len(), 2, "{d:?}");
    let appkey_caller = format!("appkey:{fp}");
    assert_eq!(
        (
            d[0].2.as_str(),
            d[0].3.as_str(),
            d[0].4.as_str(),
            d[0].5,
            d[0].6.as_str()
        ),
        (
            "NHN_APPKEY",
            appkey_caller.as_str(),
            key.as_str(),
            Some(1),
            "SUCCESS"
        )
    );
    assert_eq!(
        (d[1].4.as_str(), d[1].6.as_str(), d[1].7),
        (key.as_str(), "FAIL", 400)
    );
    assert!(d[1].8.ends_with("resultCode=-1001"), "{:?}", d[1]);
    assert_eq!(
        find("NhnAddCredential")[0].8,
        format!("appkey={fp} keyStore=S ipv4=192.0.2.7")
    );
    assert_eq!(find("NhnRequestCredentialDeletion").len(), 1);
    // The NHN probe wrote nothing under the NAVER key's tag.
    assert!(recs
        .iter()
        .filter(|r| r.4 == naver_tag)
        .all(|r| r.2 != "NHN_USER_ACCESS_KEY"));
    // Admin CLI actions.
    // (The first is init's: `account=default accessKey=... via=init`.)
    let a = find("AdminCreateAccount")[1].clone();
    assert_eq!(
        (a.2.as_str(), a.3.as_str(), a.8.as_str()),
        ("ADMIN", "admin-cli", "account=audited-account")
    );
    assert_eq!(
        find("NhnRevokeUserAccessKey")[0].8,
        format!("userAccessKey={}", p.uak.0)
    );
    assert_eq!(find("AdminDestroyOrphans")[0].8, "objects=0");
    // Scheduled work.
    for (action, uid) in [
        ("RotateKey", &naver_tag),
        ("NhnRotateKey", &key),
        ("DeleteKey", &doomed),
    ] {
        let all = find(action);
        let s = all
            .iter()
            .find(|r| r.2 == "SYSTEM")
            .unwrap_or_else(|| panic!("no SYSTEM {action}: {recs:?}"));
        assert_eq!(
            (s.3.as_str(), s.4.as_str()),
            ("scheduler", uid.as_str()),
            "{s:?}"
        );
    }
    assert_eq!(find("NhnRotateKey")[0].5, Some(2));
    let del = find("NhnDeleteCredential")[0].clone();
    assert_eq!(
        (del.2.as_str(), del.8.as_str()),
        ("SYSTEM", "keyStore=S ipv4=192.0.2.7")
    );
    // No record carries the appkey itself (a bearer credential) or the UAK secret.
    let db = kms.db().await;
    let leaks: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM activity_logs WHERE caller LIKE $1 OR message LIKE $2 OR caller LIKE $3 OR message LIKE $4",
    )
    .bind(format!("%{}%", p.appkey))
    .bind(format!("%{}%", p.appkey))
    .bind(format!("%{}%", p.uak.1))
    .bind(format!("%{}%", p.uak.1))
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    assert_eq!(leaks, 0);

    // One chain over all of them, online and offline.
    let n = recs.len() as i64;
    let (code, out) = verify(&kms, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains(&format!("checked {n} records from seq 1 to seq {n}")),
        "{out}"
    );
    let file = export(&kms, "all-sources.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    for kind in [
        "ACCOUNT",
        "NHN_USER_ACCESS_KEY",
        "NHN_APPKEY",
        "ADMIN",
        "SYSTEM",
    ] {
        assert!(
            text.contains(&format!("\"authType\":\"{kind}\"")),
            "no {kind} record exported"
        );
    }
    let (code, out) = verify_export(&file, &public_key(&kms));
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("{n} records ({n} chained)")), "{out}");
}

/// The sequence number of the first record with `action` and a message
/// starting with `message`.
async fn seq_of(kms: &Kms, action: &str, message: &str) -> i64 {
    let db = kms.db().await;
    let id = sqlx::query_scalar(
        "SELECT MIN(id) FROM activity_logs WHERE action = $1 AND message LIKE $2",
    )
    .bind(action)
    .bind(format!("{message}%"))
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    id
}

/// Asserts `audit verify` passes (after a tampering was undone).
fn assert_ok(kms: &Kms, what: &str) {
    let (code, out) = verify(kms, &[]);
    assert_eq!(code, 0, "{what}: {out}");
}

/// Edits, deletes, reorders and truncates at record `seq`, each found at
/// `seq` and undone before the next.
async fn tamper_at(kms: &Kms, seq: i64) {
    // Edit: another caller.
    exec(
        kms,
        &format!("UPDATE activity_logs SET caller = caller || 'x' WHERE id = {seq}"),
    )
    .await;
    assert_break(kms, seq, "edited");
    exec(kms, &format!("UPDATE activity_logs SET caller = SUBSTR(caller, 1, LENGTH(caller) - 1) WHERE id = {seq}")).await;
    assert_ok(kms, "edit undone");
    // Delete.
    exec(
        kms,
        &format!("CREATE TABLE kept AS SELECT * FROM activity_logs WHERE id >= {seq}"),
    )
    .await;
    exec(kms, &format!("DELETE FROM activity_logs WHERE id = {seq}")).await;
    assert_break(kms, seq, "deleted");
    exec(
        kms,
        &format!("INSERT INTO activity_logs SELECT * FROM kept WHERE id = {seq}"),
    )
    .await;
    assert_ok(kms, "delete undone");
    // Reorder: the record and the next one exchanged, chain values with
    // them.
    let swap = [
        format!("UPDATE activity_logs SET id = -1 WHERE id = {seq}"),
        format!("UPDATE activity_logs SET id = {seq} WHERE id = {}", seq + 1),
        format!("UPDATE activity_logs SET id = {} WHERE id = -1", seq + 1),
    ];
    for sql in &swap {
        exec(kms, sql).await;
    }
    assert_break(kms, seq, "reordered");
    for sql in &swap {
        exec(kms, sql).await;
    }
    assert_ok(kms, "reorder undone");
    // Truncate: the log cut from here on, before a signed checkpoint.
    assert!(checkpoints(kms).await.iter().any(|&c| c >= seq));
    exec(kms, &format!("DELETE FROM activity_logs WHERE id >= {seq}")).await;
    assert_break(kms, seq, "truncated");
    exec(kms, "INSERT INTO activity_logs SELECT * FROM kept").await;
    exec(kms, "DROP TABLE kept").await;
    assert_ok(kms, "truncation undone");
}

#[tokio::test]
async fn tampering_with_an_nhn_or_admin_record_is_found_at_its_position() {
    let kms = Kms::start_with(|c| {
        c.audit.checkpoint_every_records = 5;
        c.audit.checkpoint_every_secs = 3600;
    })
    .await;
    let p = nhn_t::project(&kms, "tampered", true).await;
    nhn_t::key_store(&kms, &p, "S", false, false, false, false).await;
    let key = nhn_t::create_key(&kms, &p, "asymmetric-keys", "S", json!({})).await;
    let sign = |i: usize| {
        let (kms, p, key) = (&kms, &p, &key);
        async move {
            let r = nhn_t::call(
                kms,
                p,
                "POST",
                &format!("/asymmetric-keys/{key}/sign"),
                Some(json!({"plaintext": format!("m{i}")})),
            )
            .await;
            let sig = nhn_t::ok(&r)["signature"].as_str().unwrap().to_string();
            let r = nhn_t::call(
                kms,
                p,
                "POST",
                &format!("/asymmetric-keys/{key}/verify"),
                Some(json!({"plaintext": format!("m{i}"), "signature": sig})),
            )
            .await;
            assert_eq!(nhn_t::ok(&r)["result"], true);
        }
    };
    for i in 0..3 {
        sign(i).await;
    }
    admin(&kms, &["create-account", "between"]);
    for i in 3..8 {
        sign(i).await;
    }
    let nhn = seq_of(&kms, "NhnVerify", "").await;
    let adm = seq_of(&kms, "AdminCreateAccount", "account=between").await;
    assert!(nhn > 1 && adm > nhn, "nhn {nhn}, admin {adm}");
    assert_ok(&kms, "untouched");
    tamper_at(&kms, nhn).await;
    tamper_at(&kms, adm).await;
}

/// Runs `futs` at once on this task; their outputs in order.
async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

/// `hsm-kms audit verify-export FILE --public-key PEM --seals` on the
/// service's token: (exit code, stdout).
fn verify_export_seals(kms: &Kms, file: &Path, pem: &Path) -> (i32, String) {
    let mut c = kms.cli();
    c.args(["audit", "verify-export"])
        .arg(file)
        .arg("--public-key")
        .arg(pem)
        .arg("--seals");
    let (code, out, err) = run(c);
    assert!(
        code == 0 || code == 1,
        "verify-export --seals failed: {out}{err}"
    );
    (code, out)
}

/// Every record's (seq, chain format, sealed).
async fn formats(kms: &Kms) -> Vec<(i64, i32, bool)> {
    let db = kms.db().await;
    let v: Vec<(i64, i32, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT id, chain_format, seal FROM activity_logs ORDER BY id")
            .fetch_all(&db)
            .await
            .unwrap();
    db.close().await;
    v.into_iter().map(|(i, f, s)| (i, f, s.is_some())).collect()
}

/// `init` records the first account it makes as an admin action in the
/// chain; a later `init` with another account records that one; an `init`
/// that makes nothing records nothing, and with the activity log off
/// nothing is recorded.
#[tokio::test]
async fn init_records_the_first_account_in_the_chain() {
    let kms = Kms::start().await;
    let db = kms.db().await;
    let first: (i64, String, String, String, String) = sqlx::query_as(
        "SELECT id, action, auth_type, caller, message FROM activity_logs ORDER BY id LIMIT 1",
    )
    .fetch_one(&db)
    .await
    .unwrap();
    db.close().await;
    assert_eq!(
        first,
        (
            1,
            "AdminCreateAccount".to_string(),
            "ADMIN".to_string(),
            "admin-cli".to_string(),
            format!("account=default accessKey={} via=init", kms.access_key)
        )
    );
    // The real binary: another account, then the same again (nothing made).
    for _ in 0..2 {
        let mut c = kms.cli();
        c.args(["init", "--account", "second"]);
        let (code, out, err) = run(c);
        assert_eq!(code, 0, "{out}{err}");
    }
    let mut c = kms.cli();
    c.args(["init", "--account", "unlogged"])
        .env("HSM_KMS_ACTIVITY_LOG_ENABLED", "false");
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("account=unlogged"), "{out}");
    let recs = records(&kms).await;
    let made: Vec<&str> = recs
        .iter()
        .filter(|r| r.1 == "AdminCreateAccount")
        .map(|r| r.8.as_str())
        .collect();
    assert_eq!(made.len(), 2, "{recs:?}");
    assert!(
        made[1].starts_with("account=second accessKey=") && made[1].ends_with(" via=init"),
        "{made:?}"
    );
    let (code, out) = verify(&kms, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("checked 2 records from seq 1 to seq 2"),
        "{out}"
    );
}

/// The log of a database written in the per-record format (one in-token
/// HMAC per record: installed databases, and `audit.seal = "record"`) goes
/// on in the sealed format and back, and verifies as one chain; each
/// record is checked in its own format, and a format marker changed is an
/// edit. Before these writes the store is taken back to the schema before
/// migration 0011 (as an installed database is), which the binary migrates.
#[tokio::test]
async fn a_mixed_log_of_per_record_and_sealed_records_verifies() {
    let kms = Kms::start_with(|c| {
        c.audit.seal = hsm_kms::core::audit::SealMode::Record;
        c.audit.checkpoint_every_records = 4;
        c.audit.checkpoint_every_secs = 3600;
    })
    .await;
    let tag = kms.create_key("mixed", "AES256", json!({})).await;
    for i in 0..3u8 {
        let ct = kms.encrypt(&tag, &[i; 3], None).await;
        kms.decrypt_ok(&tag, &ct, None).await;
    }
    assert!(formats(&kms).await.iter().all(|f| f.1 == 1 && !f.2));
    // The store as the release before the seal left it: no format marker,
    // no seal column, migration 0011 not applied.
    for sql in [
        "ALTER TABLE activity_logs DROP COLUMN chain_format",
        "ALTER TABLE activity_logs DROP COLUMN seal",
        "DELETE FROM _sqlx_migrations WHERE version = 11",
    ] {
        exec(&kms, sql).await;
    }
    let (code, out) = verify(&kms, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("checked 8 records from seq 1 to seq 8"),
        "{out}"
    );
    // Admin CLI records: sealed (the default), per record, sealed.
    admin(&kms, &["create-account", "mixed-a"]);
    let mut c = kms.cli();
    c.args(["admin", "create-account", "mixed-b"])
        .env("HSM_KMS_AUDIT_SEAL", "record");
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{out}{err}");
    admin(&kms, &["create-account", "mixed-c"]);
    let f = formats(&kms).await;
    assert_eq!(
        f[8..].to_vec(),
        vec![(9, 2, true), (10, 1, false), (11, 2, true)]
    );
    let (code, out) = verify(&kms, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("checked 11 records from seq 1 to seq 11"),
        "{out}"
    );
    assert!(
        out.contains(
            "formats: 9 records with an in-token HMAC each (per record), 2 records linked under 2 in-token seals (per batch)"
        ),
        "{out}"
    );
    let file = export(&kms, "mixed.jsonl");
    let pem = public_key(&kms);
    let (code, out) = verify_export(&file, &pem);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("11 records (11 chained)"), "{out}");
    let (code, out) = verify_export_seals(&kms, &file, &pem);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("in the token: 2 seals and 9 per-record HMACs checked"),
        "{out}"
    );
    // An edit is found at its record, in either format.
    for seq in [5, 9, 10, 11] {
        exec(
            &kms,
            &format!("UPDATE activity_logs SET message = message || 'x' WHERE id = {seq}"),
        )
        .await;
        assert_break(&kms, seq, "edited");
        exec(
            &kms,
            &format!("UPDATE activity_logs SET message = SUBSTR(message, 1, LENGTH(message) - 1) WHERE id = {seq}"),
        )
        .await;
        assert_ok(&kms, "edit undone");
    }
    // A format marker changed either way is an edit of that record.
    for (seq, other, own) in [(5, 2, 1), (9, 1, 2)] {
        exec(
            &kms,
            &format!("UPDATE activity_logs SET chain_format = {other} WHERE id = {seq}"),
        )
        .await;
        assert_break(&kms, seq, "edited");
        exec(
            &kms,
            &format!("UPDATE activity_logs SET chain_format = {own} WHERE id = {seq}"),
        )
        .await;
    }
    assert_ok(&kms, "markers restored");
}

/// The stored records from `seq` on, as the chain reads them.
async fn stored(kms: &Kms, seq: i64) -> Vec<hsm_kms::core::audit::AuditRecord> {
    kms.engine.store().audit_records(seq, 1000).await.unwrap()
}

/// Sets record `seq`'s caller to `caller` and recomputes its link and the
/// links after it up to `until` (inclusive), as someone who can write the
/// store but not use the token would, leaving the seals alone.
async fn forge_links(kms: &Kms, seq: i64, caller: &str, until: i64) {
    let mut prev = stored(kms, seq - 1).await[0].chain.clone().unwrap();
    let db = kms.db().await;
    for mut r in stored(kms, seq)
        .await
        .into_iter()
        .take_while(|r| r.row.id <= until)
    {
        if r.row.id == seq {
            r.row.caller = caller.to_string();
        }
        let l = hsm_kms::core::audit::link(&prev, r.row.id, r.seal.is_some(), &r.row);
        sqlx::query("UPDATE activity_logs SET caller = $1, chain = $2 WHERE id = $3")
            .bind(r.row.caller.clone())
            .bind(l.to_vec())
            .bind(r.row.id)
            .execute(&db)
            .await
            .unwrap();
        prev = l.to_vec();
    }
    db.close().await;
}

/// Records written in one group-commit batch carry one seal, on the last;
/// tampering with a record inside the batch is found: an edit that leaves
/// the links at the record, one whose links were recomputed at the batch's
/// first record (the seal proves the batch as a whole), a seal removed at
/// its record, a move as a reordering, a record appended or a batch cut
/// short as records without a seal.
#[tokio::test]
async fn tampering_inside_a_sealed_batch_is_found() {
    let kms = Kms::start_with(|c| {
        // The writer waits for more records after the first of a batch:
        // calls made at once share one.
        c.activity_log.batch_wait_us = 500_000;
        c.audit.checkpoint_every_records = 1000;
        c.audit.checkpoint_every_secs = 3600;
    })
    .await;
    // One key per call, so that no two records of the batch are alike.
    let mut tags = Vec::new();
    for i in 0..12 {
        tags.push(
            kms.create_key(&format!("batched-{i}"), "AES256", json!({}))
                .await,
        );
    }
    let before = formats(&kms).await.len() as i64;
    let batches_before = kms.metric("hsm_kms_activity_batches_total").await;
    let replies = join_all(
        tags.iter()
            .map(|t| kms.op(t, "encrypt", json!({"plaintext": common::b64(b"once")})))
            .collect(),
    )
    .await;
    for r in &replies {
        r.ok();
    }
    let f = formats(&kms).await;
    assert!(f.iter().all(|r| r.1 == 2), "{f:?}");
    // One seal per batch, on its last record (before: init's record and the
    // CreateKeys, batches of one).
    let batches = kms.metric("hsm_kms_activity_batches_total").await - batches_before;
    let sealed = f.iter().filter(|r| r.0 > before && r.2).count();
    assert_eq!(sealed as f64, batches, "{f:?}");
    assert!(f.last().unwrap().2, "the last record carries a seal");
    // A batch of several: from `a` (after a sealed record) to its seal `s`;
    // `k` inside it, not sealed.
    let k = f
        .iter()
        .find(|r| !r.2)
        .map(|r| r.0)
        .expect("12 calls at once share a batch");
    let a = f.iter().rev().find(|r| r.0 < k && r.2).unwrap().0 + 1;
    let s = f.iter().find(|r| r.0 > k && r.2).unwrap().0;
    let last = f.last().unwrap().0;
    assert_ok(&kms, "untouched");

    // An edit that leaves the links: found at the record.
    exec(
        &kms,
        &format!("UPDATE activity_logs SET caller = caller || 'x' WHERE id = {k}"),
    )
    .await;
    assert_break(&kms, k, "edited");
    exec(&kms, &format!("UPDATE activity_logs SET caller = SUBSTR(caller, 1, LENGTH(caller) - 1) WHERE id = {k}")).await;
    assert_ok(&kms, "edit undone");

    // The same edit with every link after it recomputed up to the seal
    // (no token needed for links): the seal does not hold; the first
    // position not proven is the batch's first record.
    let caller = stored(&kms, k).await[0].row.caller.clone();
    forge_links(&kms, k, "someone-else", s).await;
    assert_break(&kms, a, "bad-seal");
    // Offline, without the token, the links hold: seals need the service,
    // which checks them in the auditor's file on request.
    let file = export(&kms, "forged-links.jsonl");
    let pem = public_key(&kms);
    let (code, out) = verify_export(&file, &pem);
    assert_eq!(code, 0, "{out}");
    let (code, out) = verify_export_seals(&kms, &file, &pem);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("BREAK seq={a} kind=bad-seal")),
        "{out}"
    );
    forge_links(&kms, k, &caller, s).await;
    assert_ok(&kms, "links restored");

    // The seal removed: the sealed record's link covers its seal flag.
    let db = kms.db().await;
    let seal: Vec<u8> = sqlx::query_scalar("SELECT seal FROM activity_logs WHERE id = $1")
        .bind(s)
        .fetch_one(&db)
        .await
        .unwrap();
    db.close().await;
    exec(
        &kms,
        &format!("UPDATE activity_logs SET seal = NULL WHERE id = {s}"),
    )
    .await;
    assert_break(&kms, s, "edited");
    exec_blob(
        &kms,
        &format!("UPDATE activity_logs SET seal = $1 WHERE id = {s}"),
        seal,
    )
    .await;
    assert_ok(&kms, "seal restored");

    // Two records of the batch exchanged, links with them.
    let swap = [
        format!("UPDATE activity_logs SET id = -1 WHERE id = {k}"),
        format!("UPDATE activity_logs SET id = {k} WHERE id = {}", k + 1),
        format!("UPDATE activity_logs SET id = {} WHERE id = -1", k + 1),
    ];
    for sql in &swap {
        exec(&kms, sql).await;
    }
    assert_break(&kms, k, "reordered");
    for sql in &swap {
        exec(&kms, sql).await;
    }
    assert_ok(&kms, "reorder undone");

    // A record appended with a valid link but no seal (no token).
    let mut r = stored(&kms, last).await.remove(0);
    let forged_seq = last + 1;
    r.row.action = "Decrypt".into();
    let l = hsm_kms::core::audit::link(r.chain.as_ref().unwrap(), forged_seq, false, &r.row);
    let db = kms.db().await;
    sqlx::query(
        "INSERT INTO activity_logs (id, at, account_id, key_uid, key_name, key_id, version, action, auth_type, caller, source_ip, result, status, message, chain, chain_format) \
         SELECT $1, at, account_id, key_uid, key_name, key_id, version, 'Decrypt', auth_type, caller, source_ip, result, status, message, $2, 2 FROM activity_logs WHERE id = $3",
    )
    .bind(forged_seq)
    .bind(l.to_vec())
    .bind(last)
    .execute(&db)
    .await
    .unwrap();
    db.close().await;
    assert_break(&kms, forged_seq, "unsealed");
    let file = export(&kms, "appended.jsonl");
    let (code, out) = verify_export(&file, &public_key(&kms));
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains(&format!("BREAK seq={forged_seq} kind=unsealed")),
        "{out}"
    );
    exec(
        &kms,
        &format!("DELETE FROM activity_logs WHERE id = {forged_seq}"),
    )
    .await;
    assert_ok(&kms, "appended record removed");

    // The log cut inside the batch: what is left of it has no seal.
    exec(&kms, &format!("DELETE FROM activity_logs WHERE id > {k}")).await;
    assert_break(&kms, a, "unsealed");
}

/// The SQLite writer sends a batch to the store as one JSON array (one
/// INSERT whatever the batch's size): every text is stored exactly as
/// given, quotes, backslashes, control characters, non-ASCII and JSON-like
/// text included, and a NUL character (which SQLite's JSON functions would
/// cut) takes the bound-parameter INSERTs; in batches of one and of many,
/// with checkpoints between, the chain verifies online and offline.
/// PostgreSQL's text cannot hold a NUL at all: there that text is left out.
#[tokio::test]
async fn records_with_odd_texts_are_stored_exactly_and_verify() {
    let kms = Kms::start_with(|c| {
        c.audit.checkpoint_every_records = 7;
        c.audit.checkpoint_every_secs = 3600;
    })
    .await;
    let texts: Vec<&str> = [
        "quote \" backslash \\ slash / end",
        "tab\tnewline\ncarriage\r",
        "\u{1}\u{1f}\u{7f}",
        "é ü 한국어 🔑",
        "nul \0 inside",
        "",
        "{\"json\":[1,2,null]}",
        "\\u0000 written out",
        "[\"an\",\"array\"]",
    ]
    .into_iter()
    .filter(|t| !(common::on_postgres() && t.contains('\0')))
    .collect();
    // One at a time: a batch each.
    for t in &texts {
        kms.engine.record_admin("OddTextOne", t).await.unwrap();
    }
    // All at once: batches of several records.
    let burst: Vec<String> = (0..90)
        .map(|i| format!("{} #{i}", texts[i % texts.len()]))
        .collect();
    let futs = burst
        .iter()
        .map(|t| kms.engine.record_admin("OddTextBurst", t))
        .collect();
    for r in join_all(futs).await {
        r.unwrap();
    }
    let db = kms.db().await;
    let stored = |action: &'static str| {
        sqlx::query_scalar::<_, String>(
            "SELECT message FROM activity_logs WHERE action = $1 ORDER BY id",
        )
        .bind(action)
        .fetch_all(&db)
    };
    let one = stored("OddTextOne").await.unwrap();
    assert_eq!(one, texts.iter().map(|t| t.to_string()).collect::<Vec<_>>());
    let mut many = stored("OddTextBurst").await.unwrap();
    many.sort();
    let mut want = burst.clone();
    want.sort();
    assert_eq!(many, want);
    db.close().await;
    assert_ok(&kms, "odd texts");
    let file = export(&kms, "odd-texts");
    let (code, out) = verify_export(&file, &public_key(&kms));
    assert_eq!(code, 0, "offline: {out}");
}
