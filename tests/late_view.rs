//! A late view of the token (issue 11 §4/§5): a process whose SoftHSMv2
//! 2.6.1 stopped seeing objects other processes make.
//!
//! SoftHSMv2's file store rewrites `token.object` at every `C_Login`
//! (`Token::loginUser` → `setTokenFlags`): it truncates the file, writes
//! through a stdio buffer, releases its `fcntl` lock and only then flushes
//! (`File::~File` → `fclose`). A process reading `token.object` in that
//! window (`C_GetTokenInfo`, `C_Login`) finds it empty and marks its token
//! object invalid; its next re-index (after any object was made or
//! destroyed) fails "Token integrity check failed" and marks its whole
//! `OSToken` invalid, which nothing but `C_Finalize` / `C_Initialize` undoes:
//! from then on that process never sees another process's new objects
//! (docs/pkcs11-portability.md, "Late views").
//!
//! These tests put the service's process in exactly that state without
//! waiting for the race: the test empties `token.object` while the
//! service's module reads it (`C_GetTokenInfo`), then writes the same bytes
//! back (the writer's late flush); `pkcs11-tool`, another process, then makes
//! an AES key, and the service is asked to use it.
#![cfg(feature = "test-hooks")]
mod common;

use std::path::PathBuf;

use common::Kms;

/// The token's `token.object` under the test's token directory.
fn token_object(kms: &Kms) -> PathBuf {
    let tokens = kms.dir.path().join("tokens");
    std::fs::read_dir(&tokens)
        .expect("token dir")
        .filter_map(|e| e.ok())
        .map(|e| e.path().join("token.object"))
        .find(|p| p.exists())
        .expect("token.object")
}

/// Leaves the service's SoftHSMv2 with a late view, then has another
/// process make an AES key with `CKA_ID = id`.
fn late_view_then_key_from_another_process(kms: &Kms, id: &[u8]) {
    late_view_then_labelled_key_from_another_process(kms, id, "late-view")
}

/// [`late_view_then_key_from_another_process`] with the key labelled
/// `label`.
fn late_view_then_labelled_key_from_another_process(kms: &Kms, id: &[u8], label: &str) {
    let path = token_object(kms);
    let saved = std::fs::read(&path).expect("read token.object");
    // What a reader finds while another process rewrites token.object
    // (truncated, not flushed yet, unlocked).
    std::fs::write(&path, b"").expect("empty token.object");
    let (ctx, slot) = kms.engine.hsm().context().expect("context");
    // The read may fail or not; it leaves the module's token object invalid.
    let _ = ctx.get_token_info(slot);
    // The writer's late flush.
    std::fs::write(&path, &saved).expect("restore token.object");
    let hex: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let out = common::pkcs11_tool()
        .args(["--keygen", "--key-type", "aes:32", "--label", label])
        .args(["--id", &hex])
        .output()
        .expect("pkcs11-tool");
    assert!(
        out.status.success(),
        "pkcs11-tool --keygen: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The service finds the other process's key: the miss re-initialises the
/// module once (counted), and the call runs again on the fresh module.
/// Failed before the fix: `ObjectNotFound` ("key material missing").
#[tokio::test]
async fn key_made_by_another_process_is_found_after_a_late_view() {
    if common::softhsm_only("SoftHSMv2's file object store") {
        return;
    }
    let kms = Kms::start().await;
    let id = b"late-view-key-01".to_vec();
    late_view_then_key_from_another_process(&kms, &id);
    let hsm = kms.engine.hsm().clone();
    let ct = hsm
        .aes_gcm_encrypt(id.clone(), b"late".to_vec(), b"aad".to_vec(), None)
        .await
        .expect("the key another process made, after one re-initialisation");
    let pt = hsm
        .aes_gcm_decrypt(id, ct, b"aad".to_vec())
        .await
        .expect("decrypt");
    assert_eq!(pt, b"late");
    assert_eq!(
        kms.metric("hsm_kms_hsm_late_view_reinits_total").await,
        1.0,
        "one re-initialisation for the late view"
    );
    // The module is usable afterwards: a key of the service itself works.
    let tag = kms
        .create_key("after-late-view", "AES256", serde_json::json!({}))
        .await;
    let ct = kms.encrypt(&tag, b"x", None).await;
    assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, b"x");
}

/// With `hsm.late_view_reinit_interval_ms = 0` (no re-initialisation) the
/// module keeps its late view: the same key stays "not found" however often
/// it is asked for, while a fresh process lists it. This is the state the
/// test above repairs (and proves the set-up reaches it).
#[tokio::test]
async fn late_view_persists_without_a_reinitialisation() {
    if common::softhsm_only("SoftHSMv2's file object store") {
        return;
    }
    let kms = Kms::start_with(|c| c.hsm.late_view_reinit_interval_ms = 0).await;
    let id = b"late-view-key-02".to_vec();
    late_view_then_key_from_another_process(&kms, &id);
    let hsm = kms.engine.hsm().clone();
    for _ in 0..3 {
        let r = hsm
            .aes_gcm_encrypt(id.clone(), b"late".to_vec(), b"".to_vec(), None)
            .await;
        assert!(
            matches!(r, Err(hsm_kms::hsm::HsmError::ObjectNotFound)),
            "expected the late view to hide the key, got {r:?}"
        );
    }
    let out = common::pkcs11_tool()
        .args(["--list-objects", "--type", "secrkey"])
        .output()
        .expect("pkcs11-tool");
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        listed.contains("late-view"),
        "a fresh process lists the key: {listed}"
    );
    assert_eq!(kms.metric("hsm_kms_hsm_late_view_reinits_total").await, 0.0);
}

/// A start whose view of the token is late: the reconciler finds an object
/// that the store names missing from this process's view, re-initialises
/// the module once and lists the token again before it judges, and starts.
/// It refused to start before (CI of session 9, in
/// `cluster::losing_a_node_under_round_robin_load` through p11-kit: "the
/// store names 1 objects that are not on the token"). Another node's key
/// is made here by another process (the token object, `pkcs11-tool`) and
/// rows copied from a key of this service (the store, SQL), SQLite only.
#[tokio::test]
async fn the_start_up_inventory_reads_the_token_again_after_a_late_view() {
    if common::softhsm_only("SoftHSMv2's file object store") {
        return;
    }
    if common::on_postgres() {
        eprintln!("SKIPPED on PostgreSQL: the rows are copied with SQLite's pragma_table_info");
        return;
    }
    let kms = Kms::start().await;
    let model = kms
        .create_key("model", "AES256", serde_json::json!({}))
        .await;
    // Another node's key: rows like the model's, another uid, name and CKA_ID.
    let uid: String = (0..32).map(|i| format!("{:02x}", 0xa0 + i)).collect();
    let id = b"late-view-start1".to_vec();
    let db = kms.db().await;
    let sql = copy_rows(&db, "keys", &[("uid", "$1"), ("name", "$2")], "uid = $3").await;
    sqlx::query(&sql)
        .bind(&uid)
        .bind("othernode")
        .bind(&model)
        .execute(&db)
        .await
        .expect("copy the key row");
    let sql = copy_rows(
        &db,
        "key_versions",
        &[
            ("key_id", "(SELECT id FROM keys WHERE uid = $1)"),
            ("cka_id", "$2"),
        ],
        "key_id = (SELECT id FROM keys WHERE uid = $3)",
    )
    .await;
    sqlx::query(&sql)
        .bind(&uid)
        .bind(&id)
        .bind(&model)
        .execute(&db)
        .await
        .expect("copy the version row");
    late_view_then_labelled_key_from_another_process(&kms, &id, &format!("hsm-kms/{uid}/v1"));

    let report = hsm_kms::core::reconcile(
        kms.engine.hsm(),
        kms.engine.store(),
        hsm_kms::core::StartMode::Serve,
    )
    .await
    .expect("the start goes on after one re-initialisation");
    assert_eq!(report.missing_objects, 0);
    assert_eq!(
        kms.metric("hsm_kms_hsm_late_view_reinits_total").await,
        1.0,
        "one re-initialisation for the late view"
    );
}

/// An `INSERT ... SELECT` that copies the rows of `table` matching `filter`
/// (SQLite: the columns from `pragma_table_info`, all but `id`), with the
/// columns in `replace` taken from the given expressions instead.
async fn copy_rows(
    db: &sqlx::AnyPool,
    table: &str,
    replace: &[(&str, &str)],
    filter: &str,
) -> String {
    let cols: Vec<String> = sqlx::query_scalar(&format!(
        "SELECT name FROM pragma_table_info('{table}') WHERE name <> 'id'"
    ))
    .fetch_all(db)
    .await
    .expect("columns");
    let picked: Vec<&str> = cols
        .iter()
        .map(|c| {
            replace
                .iter()
                .find(|(name, _)| name == c)
                .map_or(c.as_str(), |(_, expr)| expr)
        })
        .collect();
    format!(
        "INSERT INTO {table} ({}) SELECT {} FROM {table} WHERE {filter}",
        cols.join(", "),
        picked.join(", ")
    )
}
