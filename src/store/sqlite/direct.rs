//! The activity-log writer's own synchronous SQLite connection
//! (`activity_log.writer_thread`, on by default): the writer thread runs
//! `BEGIN IMMEDIATE`, the chain-state read, the INSERTs, the checkpoint and
//! the `COMMIT` itself, on the same file and the same SQLite library as the
//! pool (rusqlite on the `libsqlite3-sys` that sqlx links, so SQLite's
//! per-inode lock bookkeeping is shared and no lock of the pool's
//! connections is dropped). A batch then costs no hand-off to sqlx's
//! connection worker thread and none back.

use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags, OptionalExtension as _};

use super::super::audit::{batch_state, BatchState, ChainStateRow, CHAIN_STATE_SQL};
use super::super::{Result, Store, StoreError};
use super::SqliteDb;
use crate::core::audit::SignedCheckpoint;
use crate::core::ActivityRecord;

/// The activity-log writer's synchronous connection (SQLite only). Not
/// `Sync`: one thread uses it.
#[derive(Debug)]
pub struct DirectWriter {
    conn: Connection,
}

/// One row of the writer's INSERT (the statement stays prepared).
const INSERT_ONE: &str = "INSERT INTO activity_logs (id, at, account_id, key_uid, key_name, key_id, version, action, auth_type, caller, source_ip, result, status, message, chain, chain_format, seal) \
     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)";

const INSERT_CHECKPOINT: &str = "INSERT INTO audit_checkpoints (seq, chain, at, signature) VALUES (?1, ?2, ?3, ?4) \
     ON CONFLICT (seq) DO UPDATE SET chain = excluded.chain, at = excluded.at, signature = excluded.signature";

/// A SQLite error of the direct connection as a store error, counted and
/// noted as the pool's errors are (an unavailable one closes the pool's
/// connections opened before it).
pub(in crate::store) fn direct_error(e: rusqlite::Error) -> StoreError {
    use crate::telemetry::store::{store_error, StoreErrorKind};
    if direct_unavailable(&e) {
        super::note_fault();
        store_error(StoreErrorKind::Unavailable);
    } else {
        store_error(StoreErrorKind::Other);
    }
    StoreError::Direct(e)
}

/// Whether an error of the direct connection means the store is
/// unavailable (the same result codes as the pool's).
pub(in crate::store) fn direct_unavailable(e: &rusqlite::Error) -> bool {
    match e {
        rusqlite::Error::SqliteFailure(f, _) => {
            super::code_unavailable(&f.extended_code.to_string())
        }
        _ => false,
    }
}

impl SqliteDb {
    /// Opens the writer's synchronous connection on the pool's file: never
    /// creating it (a file deleted under the service is not recreated),
    /// the pool's busy timeout and foreign keys, and `synchronous` FULL
    /// with `fsync`, NORMAL without (WAL: a commit then reaches the OS).
    fn direct_writer(&self, fsync: bool) -> Result<DirectWriter> {
        let conn = Connection::open_with_flags(
            &self.file.path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(direct_error)?;
        conn.busy_timeout(Duration::from_secs(10))
            .map_err(direct_error)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(direct_error)?;
        conn.pragma_update(None, "synchronous", if fsync { "FULL" } else { "NORMAL" })
            .map_err(direct_error)?;
        // The pool set WAL on the file (persistent); checked, not assumed.
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(direct_error)?;
        if !mode.eq_ignore_ascii_case("wal") {
            conn.pragma_update(None, "journal_mode", "WAL")
                .map_err(direct_error)?;
        }
        Ok(DirectWriter { conn })
    }
}

impl Store {
    /// The activity-log writer's synchronous connection
    /// ([`DirectWriter`]); `Ok(None)` on PostgreSQL, whose writer keeps
    /// its async connection. Blocking: call it on the writer's thread.
    pub fn direct_activity_writer(&self, fsync: bool) -> Result<Option<DirectWriter>> {
        match &self.db {
            super::super::Db::Sqlite(db) => db.direct_writer(fsync).map(Some),
            super::super::Db::Postgres(_) => Ok(None),
        }
    }

    /// True on SQLite.
    pub fn is_sqlite(&self) -> bool {
        matches!(self.db, super::super::Db::Sqlite(_))
    }
}

impl DirectWriter {
    /// `BEGIN IMMEDIATE` (as every write transaction of the store starts)
    /// and the chain state read inside it. The transaction stays open: the
    /// caller ends it with [`DirectWriter::insert_commit`] or
    /// [`DirectWriter::rollback`].
    pub fn begin_batch(&mut self) -> Result<BatchState> {
        self.conn
            .execute_batch("BEGIN IMMEDIATE")
            .map_err(direct_error)?;
        self.chain_state()
    }

    /// The chain state (the tail and the newest checkpoint's (seq, time));
    /// outside a transaction it is the writer's guess, read again inside
    /// the batch's transaction.
    pub fn chain_state(&mut self) -> Result<BatchState> {
        let row: ChainStateRow = self
            .conn
            .query_row(CHAIN_STATE_SQL, [], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(direct_error)?;
        Ok(batch_state(row))
    }

    /// Inside the transaction [`DirectWriter::begin_batch`] opened: inserts
    /// the chained records (`rows[i]` numbered `first_seq + i` with chain
    /// value `chains[i]`, the last one carrying `seal`), the checkpoint when
    /// given, and commits. On an error the transaction may still be open:
    /// the caller rolls it back or drops the connection.
    #[allow(clippy::too_many_arguments)]
    pub fn insert_commit(
        &mut self,
        first_seq: i64,
        rows: &[ActivityRecord],
        chains: &[[u8; 32]],
        chain_format: i32,
        seal: Option<&[u8; 32]>,
        checkpoint: Option<&SignedCheckpoint>,
    ) -> Result<()> {
        let last = rows.len().saturating_sub(1);
        {
            let mut stmt = self.conn.prepare_cached(INSERT_ONE).map_err(direct_error)?;
            for (i, (a, c)) in rows.iter().zip(chains).enumerate() {
                stmt.execute(params![
                    first_seq + i as i64,
                    a.at,
                    a.account_id,
                    a.key_uid,
                    a.key_name,
                    a.key_id,
                    a.version,
                    a.action,
                    a.auth_type,
                    a.caller,
                    a.source_ip,
                    a.result,
                    a.status,
                    a.message,
                    &c[..],
                    chain_format,
                    seal.filter(|_| i == last).map(|s| &s[..]),
                ])
                .map_err(direct_error)?;
            }
        }
        if let Some(cp) = checkpoint {
            self.insert_checkpoint(cp)?;
        }
        self.commit()
    }

    /// Commits the open transaction.
    pub fn commit(&mut self) -> Result<()> {
        self.conn.execute_batch("COMMIT").map_err(direct_error)
    }

    /// Ends the open transaction without writing (best effort: a
    /// connection that cannot roll back is dropped by the writer, which
    /// rolls back as well).
    pub fn rollback(&mut self) {
        if !self.conn.is_autocommit() {
            let _ = self.conn.execute_batch("ROLLBACK");
        }
    }

    /// Inside an open transaction: the newest checkpoint.
    pub fn last_checkpoint(&mut self) -> Result<Option<SignedCheckpoint>> {
        self.conn
            .query_row(
                "SELECT seq, chain, at, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
                [],
                |r| {
                    Ok(SignedCheckpoint {
                        seq: r.get(0)?,
                        chain: r.get(1)?,
                        at: r.get(2)?,
                        signature: r.get(3)?,
                    })
                },
            )
            .optional()
            .map_err(direct_error)
    }

    /// Inside an open transaction: stores a checkpoint (replacing one at
    /// the same sequence number).
    pub fn insert_checkpoint(&mut self, cp: &SignedCheckpoint) -> Result<()> {
        self.conn
            .prepare_cached(INSERT_CHECKPOINT)
            .and_then(|mut s| s.execute(params![cp.seq, cp.chain, cp.at, cp.signature]))
            .map_err(direct_error)?;
        Ok(())
    }
}
