//! Metadata persistence on sqlx, on one of two engines: SQLite under the data
//! dir (WAL; the embedded default) or PostgreSQL (`[store] url`), each with
//! its migrations embedded in the binary (`migrations/sqlite`,
//! `migrations/postgres`). Nothing secret is stored in the clear: API secret
//! keys are ciphertexts under the HSM KEK.
//!
//! The SQL is written once, in `$N` parameter style (which both engines
//! read), and type-checked once per engine by [`on_db!`]; the few fragments
//! that differ are methods of the engine types (`sqlite::SqliteDb`,
//! `postgres::PgDb`), and so are connecting, migrating, write transactions
//! and error classification.
//!
//! What crosses the boundary: the repository traits (`repo.rs`) take and
//! return `core` types only. `core` owns every record the store reads:
//! `Key` and `KeyVersion` (mapped by hand in `keys.rs`), and, each read with
//! its one `FromRow`, `AccountRecord`, `AccessKey`, `TokenGenerator`,
//! `StoredToken`, `ActivityRecord`, `NhnProjectRecord`,
//! `NhnUserAccessKeyRecord`, `NhnKeyStore`, `NhnKeyMeta`, `NhnCredential`,
//! `AuditRecord`, `SignedCheckpoint` and `VersionOwner`; the identifiers
//! `KeyId`, `KeyUid` and `ObjectRef` bind as SQL values (`ids.rs`). What
//! `store/` itself exports is input to the store (`NewKey`, `KeyCaps`, `NewToken`,
//! `NewKeyStore`, `NewCredential`, `TokenParent`), its transactions and
//! writers (`AuditTx`, `ActivityWriter`, `ChainTail`), node changes
//! (`Change`, `ChangeListener`) and the traits; no row type of its own.

/// Runs `$body` with `$db` bound to the store's engine (`SqliteDb` or
/// `PgDb`, both with a `pool` field and `begin_write()`): the same code,
/// compiled once per engine. Timed in
/// `hsm_kms_store_call_duration_seconds{repo, engine}` (`repo`: the calling
/// module of `store/`).
macro_rules! on_db {
    ($store:expr, $db:ident => $body:expr) => {
        match &$store.db {
            $crate::store::Db::Sqlite($db) => {
                let _timed = $crate::telemetry::store::StoreCall::start(module_path!(), 0);
                $body
            }
            $crate::store::Db::Postgres($db) => {
                let _timed = $crate::telemetry::store::StoreCall::start(module_path!(), 1);
                $body
            }
        }
    };
}

mod accounts;
mod audit;
mod ids;
mod invocations;
mod key_commits;
mod keys;
mod naver;
mod nhn;
mod nodes;
mod postgres;
mod repo;
mod sqlite;
mod stats;

pub use audit::{AuditTx, ChainTail};
pub use keys::{KeyCaps, NewKey};
pub use naver::{ActivityWriter, NewToken, TokenParent};
pub use nhn::{NewCredential, NewKeyStore};
pub use nodes::{Change, ChangeListener};
pub use repo::{AccountRepo, ActivitySink, InstallationRepo, KeyRepo, NaverRepo, NhnRepo};
pub use sqlite::direct::DirectWriter;
pub use sqlite::MIN_FREE_BYTES;

pub(crate) use crate::core::now_ms;

use std::path::Path;

use postgres::PgDb;
use sqlite::SqliteDb;

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
    /// The row an operation was finishing is no longer in the state it
    /// left it in (another node finished or undid it meanwhile).
    #[error("changed meanwhile: {0}")]
    Gone(&'static str),
    /// The store file was deleted or replaced under the running service;
    /// nothing is read or written any more (see [`Store::check_file`]).
    #[error("the metadata store is lost: {0}")]
    Lost(String),
    /// An error of the activity-log writer's own SQLite connection
    /// ([`DirectWriter`]).
    #[error("database error: {0}")]
    Direct(rusqlite::Error),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use crate::telemetry::store::{store_error, StoreErrorKind};
        if db_unavailable(&e) {
            sqlite::note_fault();
            store_error(StoreErrorKind::Unavailable);
        } else if !matches!(e, sqlx::Error::RowNotFound) {
            store_error(StoreErrorKind::Other);
        }
        StoreError::Db(e)
    }
}

impl StoreError {
    /// True when the store cannot be used right now for a reason outside the
    /// request (a full or read-only filesystem, an I/O error, a lock held
    /// too long, a lost file, a database server gone): the caller gets a 503
    /// and may retry later, never a 500.
    pub fn is_unavailable(&self) -> bool {
        match self {
            StoreError::Lost(_) => true,
            StoreError::Direct(e) => sqlite::direct::direct_unavailable(e),
            StoreError::Db(e) | StoreError::Migrate(sqlx::migrate::MigrateError::Execute(e)) => {
                db_unavailable(e)
            }
            _ => false,
        }
    }
}

fn db_unavailable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => true,
        sqlx::Error::Database(d) => match d.code() {
            None => false,
            Some(code)
                if d.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
                    .is_some() =>
            {
                postgres::sqlstate_unavailable(&code)
            }
            Some(code) => sqlite::code_unavailable(&code),
        },
        _ => false,
    }
}

/// Result type of the store.
pub type Result<T> = std::result::Result<T, StoreError>;

fn map_unique(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(d) if d.is_unique_violation() => {
            crate::telemetry::store::store_error(crate::telemetry::store::StoreErrorKind::Conflict);
            StoreError::Conflict
        }
        _ => StoreError::from(e),
    }
}

/// The metadata store: a handle on one engine.
#[derive(Clone, Debug)]
pub struct Store {
    db: Db,
    /// This node's id and the lock that shows it alive (see `nodes`).
    node: std::sync::Arc<nodes::NodeLease>,
    /// Group commit of key creations' pending rows and activations.
    key_commits: std::sync::Arc<key_commits::KeyCommits>,
}

/// The engine behind a [`Store`].
#[derive(Clone, Debug)]
pub(crate) enum Db {
    /// SQLite file under the data dir.
    Sqlite(SqliteDb),
    /// PostgreSQL server.
    Postgres(PgDb),
}

impl Store {
    /// Opens the store `url` names (`postgres://` or `postgresql://`), or,
    /// when `url` is empty, the SQLite file under `data_dir`.
    pub async fn open(url: &str, data_dir: &Path) -> Result<Self> {
        if url.is_empty() {
            Self::open_sqlite(data_dir).await
        } else {
            Self::open_postgres(url).await
        }
    }

    /// Opens (creating if needed) `metadata.db` under `data_dir` and runs
    /// the embedded migrations.
    pub async fn open_sqlite(data_dir: &Path) -> Result<Self> {
        let db = SqliteDb::open(data_dir).await?;
        Ok(Store {
            db: Db::Sqlite(db),
            node: std::sync::Arc::new(nodes::NodeLease::on_file(data_dir)?),
            key_commits: Default::default(),
        })
    }

    /// Connects to a PostgreSQL database and runs the embedded migrations.
    pub async fn open_postgres(url: &str) -> Result<Self> {
        let db = PgDb::open(url).await?;
        let node = nodes::NodeLease::on_pg(&db.pool).await?;
        Ok(Store {
            db: Db::Postgres(db),
            node,
            key_commits: Default::default(),
        })
    }

    /// Key creations' group commit so far: shared transactions committed
    /// and the writes (pending rows, activations) they carried.
    pub fn key_commit_counts(&self) -> (u64, u64) {
        self.key_commits.counts()
    }

    /// Where the store is (the SQLite file, or the PostgreSQL host, port
    /// and database), for messages.
    pub fn describe(&self) -> String {
        match &self.db {
            Db::Sqlite(db) => db.describe(),
            Db::Postgres(db) => db.describe(),
        }
    }

    /// Whether writers may commit out of the change log's order: on
    /// PostgreSQL a change's position is taken at its insert, so a
    /// transaction open while the log's last position is read may commit a
    /// lower one after it; SQLite's one writer commits in order.
    pub fn commits_out_of_log_order(&self) -> bool {
        matches!(self.db, Db::Postgres(_))
    }

    /// Why the store is lost, once [`Store::check_file`] found its SQLite
    /// file deleted or replaced (it stays lost: only a restart, through the
    /// start-up binding check, may use a store again). Never on PostgreSQL.
    pub fn lost(&self) -> Option<&str> {
        match &self.db {
            Db::Sqlite(db) => db.lost(),
            Db::Postgres(_) => None,
        }
    }

    /// Marks the store lost for `why`; the first call logs one ERROR line.
    pub fn mark_lost(&self, why: String) -> StoreError {
        match &self.db {
            Db::Sqlite(db) => db.mark_lost(why),
            Db::Postgres(_) => StoreError::Lost(why),
        }
    }

    /// Checks that the SQLite file is still the one the pool opened (see
    /// `SqliteDb::check_file`); always passes on PostgreSQL.
    pub fn check_file(&self) -> Result<()> {
        match &self.db {
            Db::Sqlite(db) => db.check_file(),
            Db::Postgres(_) => Ok(()),
        }
    }

    /// Checks that the store's filesystem is writable with at least
    /// [`MIN_FREE_BYTES`] free (SQLite; always passes on PostgreSQL, whose
    /// server answers for its own disk). `/readyz` and the activity log's
    /// writer use it, so that a full disk refuses the log's commits every
    /// time: without it, a small commit on a full disk still succeeds
    /// whenever its WAL frames fit into space that earlier failed or
    /// restarted WAL writes left allocated, and whether a NAVER call is
    /// refused would depend on the pages its batch touches.
    pub fn check_space(&self) -> Result<()> {
        match &self.db {
            Db::Sqlite(db) => db.check_disk(),
            Db::Postgres(_) => Ok(()),
        }
    }

    /// Checks that the database answers and can take a write (for
    /// `/readyz`): on SQLite the file is still ours and its filesystem is
    /// writable with at least [`MIN_FREE_BYTES`] free; on both, a write that
    /// changes nothing commits.
    pub async fn ping(&self) -> Result<()> {
        if let Db::Sqlite(db) = &self.db {
            db.check_disk()?;
        }
        on_db!(self, db => {
            sqlx::query("UPDATE installation SET created_at = created_at WHERE singleton = 1")
                .execute(&db.pool)
                .await?;
            Ok(())
        })
    }
}
