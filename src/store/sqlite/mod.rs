//! The SQLite engine: one file under the data dir (WAL, `synchronous=FULL`),
//! its identity watched so that a file deleted or replaced under the running
//! service stops it, write transactions as `BEGIN IMMEDIATE`, and the
//! classification of SQLite's result codes.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

use super::{Result, StoreError};

pub(super) mod direct;

/// Below this much free space on the store's filesystem `/readyz` reports
/// not ready: SQLite needs room for WAL frames and checkpoints, and a write
/// refused for space answers 503.
pub const MIN_FREE_BYTES: u64 = 1 << 20;

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

pub(super) fn note_fault() {
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

/// SQLite primary result codes that mean "the store is unusable now", not
/// "this request is wrong": SQLITE_BUSY (5), SQLITE_LOCKED (6),
/// SQLITE_READONLY (8), SQLITE_IOERR (10), SQLITE_CORRUPT (11), SQLITE_FULL
/// (13), SQLITE_CANTOPEN (14), SQLITE_PROTOCOL (15), SQLITE_NOTADB (26).
const UNAVAILABLE_CODES: [i64; 9] = [5, 6, 8, 10, 11, 13, 14, 15, 26];

/// Whether a SQLite result code means the store is unavailable.
pub(super) fn code_unavailable(code: &str) -> bool {
    code.parse::<i64>()
        .ok()
        // Extended codes carry the primary code in their low byte.
        .is_some_and(|c| UNAVAILABLE_CODES.contains(&(c & 0xff)))
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

fn io(e: std::io::Error) -> StoreError {
    StoreError::Db(sqlx::Error::Io(e))
}

/// A SQLite store: the pool and the file it opened.
#[derive(Clone, Debug)]
pub(crate) struct SqliteDb {
    pub(super) pool: SqlitePool,
    file: Arc<StoreFile>,
}

impl SqliteDb {
    /// Opens (creating if needed) `metadata.db` under `data_dir` and runs
    /// the embedded migrations. The file is created here, once; the pool's
    /// connections never create it (`create_if_missing(false)`), so a file
    /// deleted under the running service is never silently recreated by a
    /// connection opened later: that connection fails, and
    /// [`SqliteDb::check_file`] stops the service.
    pub(super) async fn open(data_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(data_dir).map_err(io)?;
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
            Err(e) => return Err(io(e)),
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
        sqlx::migrate!("./migrations/sqlite").run(&pool).await?;
        let id = file_id(&path).map_err(io)?;
        let path = std::path::absolute(&path).unwrap_or(path);
        Ok(SqliteDb {
            pool,
            file: Arc::new(StoreFile {
                path,
                id,
                lost: OnceLock::new(),
            }),
        })
    }

    /// Where the store is, for messages.
    pub(super) fn describe(&self) -> String {
        self.file.path.display().to_string()
    }

    /// Why the store is lost, once [`SqliteDb::check_file`] found it
    /// deleted or replaced.
    pub(super) fn lost(&self) -> Option<&str> {
        self.file.lost.get().map(String::as_str)
    }

    /// Marks the store lost for `why`; the first call logs one ERROR line.
    pub(super) fn mark_lost(&self, why: String) -> StoreError {
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
    pub(super) fn check_file(&self) -> Result<()> {
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

    /// A write transaction: `BEGIN IMMEDIATE` takes SQLite's write lock at
    /// once, waiting up to the busy timeout for it. A deferred `BEGIN`
    /// takes it at the first write, and when another connection has
    /// committed since the transaction's first read that upgrade fails at
    /// once with "database is locked", whatever the busy timeout (a 500
    /// under concurrent load: tests/stress_one_key.rs).
    pub(super) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>> {
        Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// The same write transaction on a connection of its own (the activity
    /// log's writer).
    pub(super) async fn begin_write_on(
        conn: &mut sqlx::SqliteConnection,
    ) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>> {
        use sqlx::Connection as _;
        Ok(conn.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// The file is still ours and its filesystem is writable with at least
    /// [`MIN_FREE_BYTES`] free (a filesystem the kernel turned read-only
    /// after an error may still say `rw` in its mount flags: the caller's
    /// write that changes nothing checks that).
    pub(super) fn check_disk(&self) -> Result<()> {
        self.check_file()?;
        if let Some(dir) = self.file.path.parent() {
            if let Ok(fs) = rustix::fs::statvfs(dir) {
                if fs.f_flag.contains(rustix::fs::StatVfsMountFlags::RDONLY) {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::ReadOnlyFilesystem,
                        "the store's filesystem is read-only",
                    )));
                }
                let free = fs.f_bavail.saturating_mul(fs.f_frsize);
                if free < MIN_FREE_BYTES {
                    return Err(io(std::io::Error::new(
                        std::io::ErrorKind::StorageFull,
                        format!("{} bytes free on the store's filesystem", free),
                    )));
                }
            }
        }
        Ok(())
    }

    /// A connection of its own for the activity-log writer, whose commits
    /// fsync the WAL only when `fsync` is set (`PRAGMA synchronous` is per
    /// connection; the metadata connections keep `FULL`).
    pub(super) async fn activity_writer(&self, fsync: bool) -> Result<sqlx::SqliteConnection> {
        let mut conn = self.pool.acquire().await?.detach();
        let mode = if fsync { "FULL" } else { "NORMAL" };
        sqlx::query(&format!("PRAGMA synchronous = {mode}"))
            .execute(&mut conn)
            .await?;
        Ok(conn)
    }
}

impl SqliteDb {
    /// The larger of two values (SQLite's two-argument `MAX`).
    pub(super) fn greatest(&self) -> &'static str {
        "MAX"
    }

    /// The 1-based position of a substring, 0 when absent.
    pub(super) fn position(&self) -> &'static str {
        "instr"
    }
}
