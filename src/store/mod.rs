//! Metadata persistence on sqlx: SQLite under the data dir (WAL) with the
//! migrations embedded in the binary. Nothing secret is stored in the clear:
//! API secret keys are ciphertexts under the HSM KEK.

mod keys;
mod naver;
mod nhn;

pub use keys::{KeyCaps, KeyRow, NewKey, VersionOwnerRow, VersionRow, VersionState};
pub use naver::{
    insert_activity_batch_on, ActivityRow, GeneratorRow, NewToken, TokenParent, TokenRow,
};
pub use nhn::{
    NewCredential, NewKeyStore, NhnCredentialRow, NhnKeyFilter, NhnKeyRow, NhnKeyStoreRow,
    NhnProjectRow, NhnUserAccessKeyRow, UserAccessKeyRequirement,
};

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

/// An error of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A database error.
    #[error("database error: {0}")]
    Db(#[from] sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A uniqueness constraint refused the write.
    #[error("already exists")]
    Conflict,
    /// A count limit refused the insert (names what was counted).
    #[error("limit reached: {0}")]
    LimitReached(&'static str),
}

/// Result type of the store.
pub type Result<T> = std::result::Result<T, StoreError>;

fn map_unique(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::Db(e),
    }
}

/// The metadata store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
}

/// An access key row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccessKeyRow {
    /// The access key id (public).
    pub access_key: String,
    /// Owning account.
    pub account_id: i64,
    /// Secret key encrypted under the KEK.
    pub secret_ct: Vec<u8>,
    /// `active` or `revoked`.
    pub status: String,
    /// Creation time, ms.
    pub created_at: i64,
}

/// An account row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRow {
    /// Account id.
    pub id: i64,
    /// Account name.
    pub name: String,
    /// Creation time, ms.
    pub created_at: i64,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens (creating if needed) `metadata.db` under `data_dir` and runs
    /// the embedded migrations.
    pub async fn open_sqlite(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        let url = format!("sqlite://{}", data_dir.join("metadata.db").display());
        let opts = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool })
    }

    /// The underlying pool (for modules of the store).
    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// A write transaction: `BEGIN IMMEDIATE` takes SQLite's write lock at
    /// once, waiting up to the busy timeout for it. A deferred `BEGIN`
    /// takes it at the first write, and when another connection has
    /// committed since the transaction's first read that upgrade fails at
    /// once with "database is locked", whatever the busy timeout (a 500
    /// under concurrent load: tests/stress_one_key.rs).
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// Checks that the database answers (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// The `CKA_ID` of a service key, if it was created.
    pub async fn service_key(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(
            sqlx::query_scalar("SELECT cka_id FROM service_keys WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Records a service key.
    pub async fn put_service_key(&self, name: &str, cka_id: &[u8]) -> Result<()> {
        sqlx::query("INSERT INTO service_keys (name, cka_id, created_at) VALUES (?, ?, ?)")
            .bind(name)
            .bind(cka_id)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(map_unique)?;
        Ok(())
    }

    /// All service keys' ids.
    pub async fn service_key_ids(&self) -> Result<Vec<Vec<u8>>> {
        Ok(sqlx::query_scalar("SELECT cka_id FROM service_keys")
            .fetch_all(&self.pool)
            .await?)
    }

    /// The installation id this store was bound to at `init` (hex), if any.
    pub async fn installation_id(&self) -> Result<Option<String>> {
        Ok(
            sqlx::query_scalar("SELECT installation_id FROM installation WHERE singleton = 1")
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// Records the installation id; `Conflict` when one is recorded already.
    pub async fn put_installation_id(&self, id: &str) -> Result<()> {
        sqlx::query(
            "INSERT INTO installation (singleton, installation_id, created_at) VALUES (1, ?, ?)",
        )
        .bind(id)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(map_unique)?;
        Ok(())
    }

    /// Service keys by name: (name, `CKA_ID`).
    pub async fn service_keys(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(
            sqlx::query_as("SELECT name, cka_id FROM service_keys ORDER BY name")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Creates an account; `Conflict` when the name is taken.
    pub async fn create_account(&self, name: &str) -> Result<i64> {
        let r = sqlx::query("INSERT INTO accounts (name, created_at) VALUES (?, ?)")
            .bind(name)
            .bind(now_ms())
            .execute(&self.pool)
            .await
            .map_err(map_unique)?;
        Ok(r.last_insert_rowid())
    }

    /// Looks an account up by name.
    pub async fn account_by_name(&self, name: &str) -> Result<Option<AccountRow>> {
        Ok(
            sqlx::query_as("SELECT id, name, created_at FROM accounts WHERE name = ?")
                .bind(name)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// All accounts.
    pub async fn list_accounts(&self) -> Result<Vec<AccountRow>> {
        Ok(
            sqlx::query_as("SELECT id, name, created_at FROM accounts ORDER BY id")
                .fetch_all(&self.pool)
                .await?,
        )
    }

    /// Stores a new access key.
    pub async fn insert_access_key(
        &self,
        access_key: &str,
        account_id: i64,
        secret_ct: &[u8],
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO access_keys (access_key, account_id, secret_ct, status, created_at) VALUES (?, ?, ?, 'active', ?)",
        )
        .bind(access_key)
        .bind(account_id)
        .bind(secret_ct)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(map_unique)?;
        Ok(())
    }

    /// Looks an access key up.
    pub async fn access_key(&self, access_key: &str) -> Result<Option<AccessKeyRow>> {
        Ok(sqlx::query_as(
            "SELECT access_key, account_id, secret_ct, status, created_at FROM access_keys WHERE access_key = ?",
        )
        .bind(access_key)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// Access keys of all accounts.
    pub async fn list_access_keys(&self) -> Result<Vec<AccessKeyRow>> {
        Ok(sqlx::query_as(
            "SELECT access_key, account_id, secret_ct, status, created_at FROM access_keys ORDER BY created_at",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    /// Marks an access key revoked. Returns false when there is no such key.
    pub async fn revoke_access_key(&self, access_key: &str) -> Result<bool> {
        let r = sqlx::query(
            "UPDATE access_keys SET status = 'revoked', revoked_at = ? WHERE access_key = ? AND status = 'active'",
        )
        .bind(now_ms())
        .bind(access_key)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }
}
