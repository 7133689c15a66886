//! The PostgreSQL engine (`[store] url = "postgres://..."`): a pool on the
//! server, its own migrations, write transactions serialised by a
//! transaction-scoped advisory lock, and the classification of SQLSTATEs.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};

use super::Result;

/// The advisory lock every write transaction takes ("hsm-kms" in ASCII).
///
/// The write transactions of the store (key creation with its count caps,
/// version numbering, token issuance under a live refresh token, ACL and
/// credential changes) were written for SQLite, where `BEGIN IMMEDIATE`
/// makes them run one at a time. One transaction-scoped advisory lock gives
/// them exactly that on PostgreSQL, across every connection and node, so
/// their read-then-write steps (the next version number, the live-set
/// count) cannot interleave: two concurrent rotations get versions 2 and 3.
/// Reads and single-statement writes do not take it.
const WRITE_LOCK: i64 = 0x0068_736d_2d6b_6d73;

/// A PostgreSQL store.
#[derive(Clone, Debug)]
pub(crate) struct PgDb {
    pub(super) pool: PgPool,
    /// Host, port and database, for messages (never the password).
    name: String,
}

impl PgDb {
    /// Connects to `url` and runs the embedded migrations.
    pub(super) async fn open(url: &str) -> Result<Self> {
        let opts = PgConnectOptions::from_str(url)?
            .log_statements(tracing::log::LevelFilter::Trace)
            .application_name("hsm-kms");
        let name = format!(
            "postgres://{}:{}/{}",
            opts.get_host(),
            opts.get_port(),
            opts.get_database().unwrap_or("")
        );
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await?;
        Ok(PgDb { pool, name })
    }

    /// Where the store is, for messages.
    pub(super) fn describe(&self) -> String {
        self.name.clone()
    }

    /// A write transaction holding [`WRITE_LOCK`] until it ends.
    pub(super) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// The same write transaction on a connection of its own (the activity
    /// log's writer): the advisory lock serializes it with every other
    /// writer, on this node and the others.
    pub(super) async fn begin_write_on(
        conn: &mut sqlx::PgConnection,
    ) -> Result<sqlx::Transaction<'_, sqlx::Postgres>> {
        use sqlx::Connection as _;
        let mut tx = conn.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(WRITE_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// A connection of its own for the activity-log writer; without
    /// `fsync` its commits return before the WAL reaches the disk
    /// (`synchronous_commit = off`: they survive this process being killed,
    /// not the database server losing power).
    pub(super) async fn activity_writer(&self, fsync: bool) -> Result<sqlx::PgConnection> {
        let mut conn = self.pool.acquire().await?.detach();
        let mode = if fsync { "on" } else { "off" };
        sqlx::query(&format!("SET synchronous_commit = {mode}"))
            .execute(&mut conn)
            .await?;
        Ok(conn)
    }
}

/// Whether a SQLSTATE means the store is unavailable for now rather than
/// the request being wrong: connection exceptions (08), insufficient
/// resources such as a full disk (53), operator intervention such as a
/// shutdown (57), serialization failures and deadlocks (40001, 40P01), a
/// lock not available (55P03), a read-only transaction on a standby
/// (25006), an I/O error (58030) and corruption (XX001, XX002).
pub(super) fn sqlstate_unavailable(code: &str) -> bool {
    matches!(code.get(..2), Some("08" | "53" | "57"))
        || matches!(
            code,
            "40001" | "40P01" | "55P03" | "25006" | "58030" | "XX001" | "XX002"
        )
}

impl PgDb {
    /// The larger of two values.
    pub(super) fn greatest(&self) -> &'static str {
        "GREATEST"
    }

    /// The 1-based position of a substring, 0 when absent.
    pub(super) fn position(&self) -> &'static str {
        "strpos"
    }
}
