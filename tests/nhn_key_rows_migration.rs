//! Issue 11 §1, migration 0016 on a store made by the migrations before it:
//! NHN keys' names and automatic-rotation schedules move from `nhn_keys`
//! into their `keys` rows (which carried a made-up `nhn/{uid}` name and no
//! schedule), `keys.dialect` tells the dialects apart, NAVER names stay
//! unique per account while NHN names may repeat, and NAVER rows are left
//! as they were. Runs on SQLite, and on PostgreSQL in the PG suite.
mod common;

use hsm_kms::core::Dialect;
use hsm_kms::store::{KeyRepo, Store};

/// What a release before 0016 wrote: a NAVER key, and two NHN keys of one
/// project both named "db" (one symmetric with a 30-day rotation due at
/// 1234, one secret without rotation).
const LEGACY_ROWS: [&str; 9] = [
    "INSERT INTO accounts (name, created_at) VALUES ('naver', 1)",
    "INSERT INTO accounts (name, created_at) VALUES ('nhn:p', 1)",
    "INSERT INTO nhn_projects (name, account_id, created_at)
     SELECT 'p', id, 1 FROM accounts WHERE name = 'nhn:p'",
    "INSERT INTO nhn_key_stores (project_id, name, ip4_auth_use, mac_auth_use, certificate_auth_use, creation_user, created_at, last_change_user, updated_at)
     SELECT id, 'app', FALSE, FALSE, FALSE, 'u', 1, 'u', 1 FROM nhn_projects WHERE name = 'p'",
    "INSERT INTO keys (uid, account_id, name, key_type, status, is_convergent, is_auto_rotation, rotation_period, next_rotation_at, status_at, created_at, updated_at)
     SELECT 'n1', id, 'alpha', 'AES256', 'ENABLE', FALSE, TRUE, 90, 777, 1, 1, 1 FROM accounts WHERE name = 'naver'",
    "INSERT INTO keys (uid, account_id, name, key_type, status, protection_type, is_convergent, is_auto_rotation, status_at, created_at, updated_at)
     SELECT 'k1', id, 'nhn/k1', 'AES256', 'ENABLE', 'HSM', FALSE, FALSE, 1, 1, 1 FROM accounts WHERE name = 'nhn:p'",
    "INSERT INTO keys (uid, account_id, name, key_type, status, protection_type, is_convergent, is_auto_rotation, status_at, created_at, updated_at)
     SELECT 'k2', id, 'nhn/k2', 'SECRET', 'ENABLE', 'HSM', FALSE, FALSE, 1, 1, 1 FROM accounts WHERE name = 'nhn:p'",
    "INSERT INTO nhn_keys (key_id, key_store_id, name, nhn_type, extractable, auto_rotation_period, next_rotation_at, creation_user, last_change_user)
     SELECT k.id, s.id, 'db', 'SYMMETRIC_KEY', FALSE, 30, 1234, 'u', 'u' FROM keys k, nhn_key_stores s WHERE k.uid = 'k1'",
    "INSERT INTO nhn_keys (key_id, key_store_id, name, description, nhn_type, extractable, auto_rotation_period, creation_user, last_change_user)
     SELECT k.id, s.id, 'db', 'the password', 'SECRET', FALSE, 0, 'u', 'u' FROM keys k, nhn_key_stores s WHERE k.uid = 'k2'",
];

#[tokio::test]
async fn nhn_names_and_rotation_schedules_move_into_the_key_rows() {
    // A store as the release before 0016 left it.
    let legacy = common::LegacyStore::before("0016").await;
    let (data, url) = (legacy.data.clone(), legacy.url.clone());
    legacy.execute(&LEGACY_ROWS).await;

    // This release opens it (migration 0016).
    let store = Store::open(&url, &data).await.expect("open and migrate");
    let (k1, _) = store.key_by_uid(&"k1".into()).await.unwrap().expect("k1");
    assert_eq!(
        (
            k1.name.as_str(),
            k1.dialect,
            k1.is_auto_rotation,
            k1.rotation_period,
            k1.next_rotation_at
        ),
        ("db", Dialect::Nhn, true, Some(30), Some(1234)),
        "{k1:?}"
    );
    let (k2, _) = store.key_by_uid(&"k2".into()).await.unwrap().expect("k2");
    assert_eq!(
        (
            k2.name.as_str(),
            k2.dialect,
            k2.is_auto_rotation,
            k2.rotation_period,
            k2.next_rotation_at
        ),
        ("db", Dialect::Nhn, false, None, None),
        "{k2:?}"
    );
    let (n1, _) = store.key_by_uid(&"n1".into()).await.unwrap().expect("n1");
    assert_eq!(
        (
            n1.name.as_str(),
            n1.dialect,
            n1.is_auto_rotation,
            n1.rotation_period,
            n1.next_rotation_at
        ),
        ("alpha", Dialect::Naver, true, Some(90), Some(777)),
        "{n1:?}"
    );
    // The NHN side keeps what is NHN's own.
    let meta = {
        use hsm_kms::store::NhnRepo;
        store.nhn_key(k2.id).await.unwrap().expect("nhn_keys row")
    };
    assert_eq!(
        (meta.description.as_str(), meta.nhn_type.as_str()),
        ("the password", "SECRET")
    );
    // The one schedule: the NHN key is due with the NAVER keys.
    let mut due = store.keys_due_for_rotation(1000).await.unwrap();
    assert_eq!(due, vec![n1.id], "due at 1000");
    due = store.keys_due_for_rotation(2000).await.unwrap();
    due.sort();
    assert_eq!(due, vec![n1.id, k1.id], "due at 2000");
    drop(store);

    // The moved columns are gone; NHN names may repeat, NAVER names may not.
    let db = common::any_pool(&url, &legacy.db_file).await;
    assert!(
        sqlx::query("SELECT name FROM nhn_keys")
            .execute(&db)
            .await
            .is_err(),
        "nhn_keys.name is still there"
    );
    let nhn_again = "INSERT INTO keys (uid, account_id, name, key_type, status, protection_type, is_convergent, is_auto_rotation, status_at, created_at, updated_at, dialect)
         SELECT 'k3', id, 'db', 'AES256', 'ENABLE', 'HSM', FALSE, FALSE, 1, 1, 1, 'nhn' FROM accounts WHERE name = 'nhn:p'";
    sqlx::query(nhn_again).execute(&db).await.unwrap();
    let naver_again = "INSERT INTO keys (uid, account_id, name, key_type, status, is_convergent, is_auto_rotation, status_at, created_at, updated_at)
         SELECT 'n2', id, 'alpha', 'AES256', 'ENABLE', FALSE, FALSE, 1, 1, 1 FROM accounts WHERE name = 'naver'";
    assert!(
        sqlx::query(naver_again).execute(&db).await.is_err(),
        "a second NAVER key named alpha was accepted"
    );
    db.close().await;
}
