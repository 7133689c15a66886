//! Metadata persistence on sqlx: SQLite under the data dir (WAL) with the
//! migrations embedded in the binary. Nothing secret is stored in the clear:
//! API secret keys are ciphertexts under the HSM KEK.

mod audit;
mod invocations;
mod keys;
mod naver;
mod nhn;

pub use audit::{
    begin_audit_batch, chain_state_on, chain_tail_on, insert_chained_on, insert_checkpoint_on,
    last_checkpoint_on, AuditRecordRow, ChainTail, CheckpointRow,
};
pub use keys::{KeyCaps, KeyRow, NewKey, VersionOwnerRow, VersionRow, VersionState};
pub use naver::{ActivityRow, GeneratorRow, NewToken, TokenParent, TokenRow};
pub use nhn::{
    NewCredential, NewKeyStore, NhnCredentialRow, NhnKeyFilter, NhnKeyRow, NhnKeyStoreRow,
    NhnProjectRow, NhnUserAccessKeyRow, UserAccessKeyRequirement,
};

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

/// An error of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A database error.
    #[error("database error: {0}")]
    Db(sqlx::Error),
    /// A migration failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A uniqueness constraint refused the write.
    #[error("already exists")]
    Conflict,
    /// A count limit refused the insert (names what was counted).
    #[error("limit reached: {0}")]
    LimitReached(&'static str),
    /// The store file was deleted or replaced under the running service;
    /// nothing is read or written any more (see [`Store::check_file`]).
    #[error("the metadata store is lost: {0}")]
    Lost(String),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        if db_unavailable(&e) {
            note_fault();
        }
        StoreError::Db(e)
    }
}

/// When this process last saw the store fail for an unavailable reason, in
/// nanoseconds after [`fault_clock`]'s start (0: never). Connections opened
/// before it are closed instead of reused: after a failed write SQLite may
/// have rolled the transaction back by itself, and sqlx's bookkeeping of
/// that connection's transaction depth is then wrong (its next transaction
/// would be a savepoint that a rollback leaves open, holding a stale
/// snapshot), so the service would stay broken after the disk recovered.
static LAST_FAULT_NS: AtomicU64 = AtomicU64::new(0);

fn fault_clock() -> Instant {
    static START: OnceLock<Instant> = OnceLock::new();
    *START.get_or_init(Instant::now)
}

fn note_fault() {
    let ns = u64::try_from(fault_clock().elapsed().as_nanos()).unwrap_or(u64::MAX);
    LAST_FAULT_NS.fetch_max(ns.max(1), Ordering::Relaxed);
}

/// Whether a connection of age `age` was opened before the last fault.
fn opened_before_last_fault(age: Duration) -> bool {
    let last = LAST_FAULT_NS.load(Ordering::Relaxed);
    if last == 0 {
        return false;
    }
    let opened = fault_clock().elapsed().saturating_sub(age).as_nanos();
    opened <= u128::from(last)
}

impl StoreError {
    /// True when the store cannot be used right now for a reason outside the
    /// request (a full or read-only filesystem, an I/O error, a lock held
    /// too long, a lost file): the caller gets a 503 and may retry later,
    /// never a 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Lost(_) => true,
            StoreError::Db(e) | StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => {
                db_unavailable(e)
            }
            _ => false,
        }
    }
}

/// SQLite primary result codes that mean "the store is unusable now", not
/// "this request is wrong": SQLITE_BUSY (5), SQLITE_LOCKED (6),
/// SQLITE_READONLY (8), SQLITE_IOERR (10), SQLITE_CORRUPT (11), SQLITE_FULL
/// (13), SQLITE_CANTOPEN (14), SQLITE_PROTOCOL (15), SQLITE_NOTADB (26).
const UNAVAILABLE_CODES: [i64; 9] = [5, 6, 8, 10, 11, 13, 14, 15, 26];

fn db_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => d
            .code()
            .and_then(|c| c.parse::<i64>().ok())
            // Extended codes carry the primary code in their low byte.
            .is_some_and(|c| UNAVAILABLE_CODES.contains(&(c & 0xff))),
        _ => false,
    }
}

/// Below this much free space on the store's filesystem `/readyz` reports
/// not ready: SQLite needs room for WAL frames and checkpoints, and a write
/// refused for space answers 503.
pub const MIN_FREE_BYTES: u64 = 1 << 20;

/// Result type of the store.
pub type Result<T> = std::result::Result<T, StoreError>;

fn map_unique(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => StoreError::Conflict,
        _ => StoreError::from(e),
    }
}

/// The metadata store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    file: Arc<StoreFile>,
}

/// The SQLite file the pool opened, by identity: a file deleted or replaced
/// under the running service (another inode at the path, or none) must stop
/// it, because its open connections keep writing into the old inode, where
/// every write is lost to the next start.
#[derive(Debug)]
struct StoreFile {
    path: PathBuf,
    /// (`st_dev`, `st_ino`) at open.
    id: (u64, u64),
    /// Why the store is lost, once it is.
    lost: OnceLock<String>,
}

fn file_id(path: &Path) -> std::io::Result<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
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
    /// the embedded migrations. The file is created here, once; the pool's
    /// connections never create it (`create_if_missing(false)`), so a file
    /// deleted under the running service is never silently recreated by a
    /// connection opened later: that connection fails, and
    /// [`Store::check_file`] stops the service.
    pub async fn open_sqlite(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        let path = data_dir.join("metadata.db");
        // An empty file is an empty SQLite database. An existing file is
        // never opened here: closing a descriptor of it would drop every
        // POSIX lock this process holds on it, including those of SQLite
        // connections still open on it (a store opened twice in one
        // process, as `init` then `serve` in the tests), and another
        // process closing its last connection would then take the file as
        // unused and reset the WAL under them (records lost).
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(StoreError::Db(sqlx::Error::Io(e))),
        }
        let url = format!("sqlite://{}", path.display());
        let opts = SqliteConnectOptions::from_str(&url)?
            .create_if_missing(false)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        // Connections are kept for the process's life: one opened later
        // would open whatever file is at the path by then.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .idle_timeout(None)
            .max_lifetime(None)
            .before_acquire(|_conn, meta| {
                let keep = !opened_before_last_fault(meta.age);
                Box::pin(async move { Ok(keep) })
            })
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let id = file_id(&path).map_err(|e| StoreError::Db(sqlx::Error::Io(e)))?;
        let path = std::path::absolute(&path).unwrap_or(path);
        Ok(Store {
            pool,
            file: Arc::new(StoreFile {
                path,
                id,
                lost: OnceLock::new(),
            }),
        })
    }

    /// Why the store is lost, once [`Store::check_file`] found it deleted or
    /// replaced (it stays lost: only a restart, through the start-up binding
    /// check, may use a store again).
    pub fn lost(&self) -> Option<&str> {
        self.file.lost.get().map(String::as_str)
    }

    /// Marks the store lost for `why`; the first call logs one ERROR line.
    pub fn mark_lost(&self, why: String) -> StoreError {
        let mut first = false;
        let why = self
            .file
            .lost
            .get_or_init(|| {
                first = true;
                why
            })
            .clone();
        if first {
            tracing::error!(
                store = %self.file.path.display(),
                "the metadata store is lost: {why}; refusing every request, nothing is recreated \
                 (restore the file and restart; the start-up binding check verifies it)"
            );
        }
        StoreError::Lost(why)
    }

    /// Checks that `metadata.db` is still the file the pool opened: the
    /// same inode on the same device. A missing file or another inode marks
    /// the store lost for good. One `stat`; an error of the `stat` itself
    /// (other than "not found") says nothing about the file and passes.
    pub fn check_file(&self) -> Result<()> {
        if let Some(why) = self.lost() {
            return Err(StoreError::Lost(why.to_string()));
        }
        match file_id(&self.file.path) {
            Ok(id) if id == self.file.id => Ok(()),
            Ok(_) => Err(self.mark_lost(format!(
                "{} was replaced by another file",
                self.file.path.display()
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(self.mark_lost(format!("{} was deleted", self.file.path.display())))
            }
            Err(_) => Ok(()),
        }
    }

    /// Checks that the store's filesystem is writable with at least
    /// [`MIN_FREE_BYTES`] free (one `statvfs`); an error of the `statvfs`
    /// itself says nothing about the filesystem and passes. `/readyz` and
    /// the activity log's writer use it, so that a full disk refuses the
    /// log's commits every time: without it, a small commit on a full disk
    /// still succeeds whenever its WAL frames fit into space that earlier
    /// failed or restarted WAL writes left allocated, and whether a NAVER
    /// call is refused would depend on the pages its batch touches.
    pub fn check_space(&self) -> Result<()> {
        let Some(dir) = self.file.path.parent() else {
            return Ok(());
        };
        let Ok(fs) = rustix::fs::statvfs(dir) else {
            return Ok(());
        };
        if fs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
            return Err(StoreError::Db(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::ReadOnlyFilesystem,
                "the store's filesystem is read-only",
            ))));
        }
        let free = fs.f_bavail.saturating_mul(fs.f_frsize);
        if free < MIN_FREE_BYTES {
            return Err(StoreError::Db(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::StorageFull,
                format!("{} bytes free on the store's filesystem", free),
            ))));
        }
        Ok(())
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

    /// Checks that the database answers and can take a write (for
    /// `/readyz`): the file is still ours, its filesystem is writable with at
    /// least [`MIN_FREE_BYTES`] free, and a write that changes nothing
    /// commits (a filesystem the kernel turned read-only after an error may
    /// still say `rw` in its mount flags).
    pub async fn ping(&self) -> Result<()> {
        self.check_file()?;
        self.check_space()?;
        // A write that changes nothing still commits a WAL frame: a
        // read-only or failing disk refuses it.
        sqlx::query("UPDATE installation SET created_at = created_at WHERE singleton = 1")
            .execute(&self.pool)
            .await?;
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
