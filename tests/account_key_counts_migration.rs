//! Issue 10 §1, migration 0018 on a store made by the migrations before it:
//! the per-account count of keys that are not deleted, which the key quota
//! now reads instead of a COUNT(*) over every key, starts from the rows
//! already there, and the triggers keep it from then on. Runs on SQLite,
//! and on PostgreSQL in the PG suite.
mod common;

use hsm_kms::store::Store;
use sqlx::Row as _;

/// Two accounts: "a" with two live keys and a deleted one, "b" with one
/// key pending deletion (still counted, as the quota always did).
const LEGACY_ROWS: [&str; 6] = [
    "INSERT INTO accounts (name, created_at) VALUES ('a', 1)",
    "INSERT INTO accounts (name, created_at) VALUES ('b', 1)",
    "INSERT INTO keys (uid, account_id, name, key_type, status, is_convergent, is_auto_rotation, status_at, created_at, updated_at)
     SELECT 'a1', id, 'one', 'AES256', 'ENABLE', FALSE, FALSE, 1, 1, 1 FROM accounts WHERE name = 'a'",
    "INSERT INTO keys (uid, account_id, name, key_type, status, is_convergent, is_auto_rotation, status_at, created_at, updated_at)
     SELECT 'a2', id, 'two', 'RSA2048', 'DISABLE', FALSE, FALSE, 1, 1, 1 FROM accounts WHERE name = 'a'",
    "INSERT INTO keys (uid, account_id, name, key_type, status, is_convergent, is_auto_rotation, status_at, created_at, updated_at)
     SELECT 'a3', id, 'gone', 'AES256', 'DELETED', FALSE, FALSE, 1, 1, 1 FROM accounts WHERE name = 'a'",
    "INSERT INTO keys (uid, account_id, name, key_type, status, is_convergent, is_auto_rotation, destroy_at, status_at, created_at, updated_at)
     SELECT 'b1', id, 'one', 'AES256', 'REVOKE', FALSE, FALSE, 9, 1, 1, 1 FROM accounts WHERE name = 'b'",
];

async fn kept(db: &sqlx::AnyPool) -> Vec<(String, i64)> {
    sqlx::query(
        "SELECT a.name AS name, COALESCE((SELECT c.live FROM account_key_counts c WHERE c.account_id = a.id), 0) AS live
         FROM accounts a ORDER BY a.name",
    )
    .fetch_all(db)
    .await
    .unwrap()
    .iter()
    .map(|r| (r.get::<String, _>("name"), r.get::<i64, _>("live")))
    .collect()
}

#[tokio::test]
async fn the_live_key_counts_start_from_the_existing_rows_and_follow_changes() {
    let legacy = common::LegacyStore::before("0018").await;
    let (data, url) = (legacy.data.clone(), legacy.url.clone());
    legacy.execute(&LEGACY_ROWS).await;

    // This release opens it (migration 0018).
    let store = Store::open(&url, &data).await.expect("open and migrate");
    let db = common::any_pool(&url, &legacy.db_file).await;
    assert_eq!(kept(&db).await, [("a".into(), 2), ("b".into(), 1)]);

    // Every kind of change moves the count: a deletion, its cancellation,
    // a purge of a live row, a new key, and a purge of a deleted row.
    for (sql, want) in [
        ("UPDATE keys SET status = 'DELETED' WHERE uid = 'a1'", [1, 1]),
        ("UPDATE keys SET status = 'ENABLE' WHERE uid = 'a3'", [2, 1]),
        ("UPDATE keys SET memo = 'x' WHERE uid = 'a2'", [2, 1]),
        ("DELETE FROM keys WHERE uid = 'b1'", [2, 0]),
        ("DELETE FROM keys WHERE uid = 'a1'", [2, 0]),
        (
            "INSERT INTO keys (uid, account_id, name, key_type, status, is_convergent, is_auto_rotation, status_at, created_at, updated_at)
             SELECT 'b2', id, 'new', 'AES256', 'ENABLE', FALSE, FALSE, 1, 1, 1 FROM accounts WHERE name = 'b'",
            [2, 1],
        ),
    ] {
        sqlx::query(sql)
            .execute(&db)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(
            kept(&db).await,
            [("a".into(), want[0]), ("b".into(), want[1])],
            "after {sql}"
        );
    }
    drop(store);
}
