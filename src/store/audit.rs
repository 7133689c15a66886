//! The audit chain's persistence (migrations `0009_audit_chain.sql` and
//! `0011_audit_seal.sql`): the chain value of each activity record
//! (`activity_logs.chain`, the record's `id` being its sequence number), its
//! format (`chain_format`) and, on the last record of a batch, its seal
//! (`seal`), where the chain starts, and the signed checkpoints. The values
//! themselves are computed by `core::audit`; this module only reads and
//! writes rows, on either engine (the SQL written once, `$N` parameters).

use super::naver::WriterConn;
use super::postgres::PgDb;
use super::sqlite::SqliteDb;
use super::{ActivityWriter, Result, Store};
use crate::core::audit::{AuditRecord, SignedCheckpoint};
use crate::core::ActivityRecord;

/// The newest activity record, as the writer continues the chain from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainTail {
    /// The first chained sequence number (`audit_chain.start_seq`).
    pub start_seq: i64,
    /// The newest record's sequence number and chain value (`None` for an
    /// unchained record), or `None` when the log is empty.
    pub last: Option<(i64, Option<Vec<u8>>)>,
}

/// Most rows in one INSERT.
const MAX_INSERT_ROWS: usize = 512;

/// The row counts of the INSERTs that write a batch of `len` records: with
/// `cached`, powers of two, largest first (a handful of distinct statements,
/// each kept prepared); without, chunks of [`MAX_INSERT_ROWS`].
fn insert_chunks(len: usize, cached: bool) -> Vec<usize> {
    let mut out = Vec::new();
    let mut left = len;
    while left > 0 {
        let n = if cached {
            let p = 1usize << (usize::BITS - 1 - left.leading_zeros());
            p.min(MAX_INSERT_ROWS)
        } else {
            left.min(MAX_INSERT_ROWS)
        };
        out.push(n);
        left -= n;
    }
    out
}

const RECORD_COLS: &str = "id, at, account_id, key_uid, key_name, key_id, version, action, auth_type, caller, source_ip, result, status, message, chain, chain_format, seal";

/// Runs `$body` with `$c` bound to the engine's connection (`&mut`) in
/// `$e` (a `WriterConn` or `TxConn`) and `$DB` to the engine type.
macro_rules! on_conn {
    ($e:expr, $enum:ident, $c:ident, $DB:ident => $body:expr) => {
        match $e {
            $enum::Sqlite($c) => {
                #[allow(dead_code)]
                type $DB = sqlx::Sqlite;
                $body
            }
            $enum::Postgres($c) => {
                #[allow(dead_code)]
                type $DB = sqlx::Postgres;
                $body
            }
        }
    };
}

/// The chain's tail read on the connection `$conn` (`&mut` a connection).
macro_rules! chain_tail {
    ($conn:expr) => {{
        let start_seq: i64 =
            sqlx::query_scalar("SELECT start_seq FROM audit_chain WHERE singleton = 1")
                .fetch_optional(&mut *$conn)
                .await?
                .unwrap_or(1);
        let last: Option<(i64, Option<Vec<u8>>)> =
            sqlx::query_as("SELECT id, chain FROM activity_logs ORDER BY id DESC LIMIT 1")
                .fetch_optional(&mut *$conn)
                .await?;
        Ok(ChainTail { start_seq, last })
    }};
}

/// The audit writer's transaction (see [`ActivityWriter::begin_audit_batch`]).
#[derive(Debug)]
pub struct AuditTx<'c>(TxConn<'c>);

#[derive(Debug)]
enum TxConn<'c> {
    Sqlite(sqlx::Transaction<'c, sqlx::Sqlite>),
    Postgres(sqlx::Transaction<'c, sqlx::Postgres>),
}

impl ActivityWriter {
    /// Starts the audit writer's transaction on its own connection, as
    /// every write transaction of the store starts (`BEGIN IMMEDIATE` on
    /// SQLite, the store's advisory write lock on PostgreSQL), so the tail
    /// read inside it stays the tail until the commit, whichever process
    /// (server, admin CLI, another node) writes next.
    pub async fn begin_audit_batch(&mut self) -> Result<AuditTx<'_>> {
        Ok(AuditTx(match &mut self.0 {
            WriterConn::Sqlite(c) => TxConn::Sqlite(SqliteDb::begin_write_on(c).await?),
            WriterConn::Postgres(c) => TxConn::Postgres(PgDb::begin_write_on(c).await?),
        }))
    }

    /// Reads the chain's tail outside a transaction (the writer's guess,
    /// read again inside its transaction).
    pub async fn chain_tail(&mut self) -> Result<ChainTail> {
        on_conn!(&mut self.0, WriterConn, c, DB => chain_tail!(c))
    }
}

/// The chain state read as the writer's batch transaction begins: the
/// chain's tail and the newest checkpoint's (seq, time).
pub type BatchState = (ChainTail, Option<(i64, i64)>);

/// The statement that reads [`BatchState`] (one row).
pub(super) const CHAIN_STATE_SQL: &str =
    "SELECT (SELECT start_seq FROM audit_chain WHERE singleton = 1), \
        (SELECT id FROM activity_logs ORDER BY id DESC LIMIT 1), \
        (SELECT chain FROM activity_logs ORDER BY id DESC LIMIT 1), \
        (SELECT seq FROM audit_checkpoints ORDER BY seq DESC LIMIT 1), \
        (SELECT at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1)";

/// The row [`CHAIN_STATE_SQL`] reads.
pub(super) type ChainStateRow = (
    Option<i64>,
    Option<i64>,
    Option<Vec<u8>>,
    Option<i64>,
    Option<i64>,
);

pub(super) fn batch_state(r: ChainStateRow) -> BatchState {
    let (start_seq, last_id, last_chain, cp_seq, cp_at) = r;
    let tail = ChainTail {
        start_seq: start_seq.unwrap_or(1),
        last: last_id.map(|id| (id, last_chain)),
    };
    (tail, cp_seq.zip(cp_at))
}

/// One SQLite statement that inserts a whole batch, whatever its size: the
/// rows come as one JSON array bound to `$1` (each row an array of the 17
/// columns, blobs in hex), so the statement is prepared once per
/// connection and a batch is one call to the connection's worker thread
/// instead of one per multi-row INSERT.
const SQLITE_BATCH_INSERT: &str = "INSERT INTO activity_logs (id, at, account_id, key_uid, key_name, key_id, version, action, auth_type, caller, source_ip, result, status, message, chain, chain_format, seal) \
     SELECT value ->> 0, value ->> 1, value ->> 2, value ->> 3, value ->> 4, value ->> 5, value ->> 6, value ->> 7, \
     value ->> 8, value ->> 9, value ->> 10, value ->> 11, value ->> 12, value ->> 13, unhex(value ->> 14), value ->> 15, \
     unhex(value ->> 16) FROM json_each($1) ORDER BY key";

/// The JSON array [`SQLITE_BATCH_INSERT`] reads, or `None` when a text
/// field holds a NUL character (which SQLite's JSON functions would not
/// return intact: such a batch takes the bound-parameter INSERTs).
fn batch_json(
    first_seq: i64,
    rows: &[ActivityRecord],
    chains: &[[u8; 32]],
    chain_format: i32,
    seal: Option<&[u8; 32]>,
) -> Option<String> {
    use std::fmt::Write as _;
    let last = rows.len().saturating_sub(1);
    let mut out = String::with_capacity(64 + rows.len() * 384);
    out.push('[');
    for (i, (a, c)) in rows.iter().zip(chains).enumerate() {
        let texts = [
            &a.key_uid,
            &a.key_name,
            &a.action,
            &a.auth_type,
            &a.caller,
            &a.source_ip,
            &a.result,
            &a.message,
        ];
        if texts.iter().any(|t| t.contains('\0')) {
            return None;
        }
        if i > 0 {
            out.push(',');
        }
        let q = |s: &str| serde_json::to_string(s).unwrap_or_default();
        let _ = write!(
            out,
            "[{},{},{},{},{},{},{},{},{},{},{},{},{},{},\"{}\",{},{}]",
            first_seq + i as i64,
            a.at,
            a.account_id,
            q(&a.key_uid),
            q(&a.key_name),
            a.key_id,
            a.version
                .map_or_else(|| "null".to_string(), |v| v.to_string()),
            q(&a.action),
            q(&a.auth_type),
            q(&a.caller),
            q(&a.source_ip),
            q(&a.result),
            a.status,
            q(&a.message),
            hex::encode(c),
            chain_format,
            match seal.filter(|_| i == last) {
                Some(s) => format!("\"{}\"", hex::encode(s)),
                None => "null".into(),
            },
        );
    }
    out.push(']');
    Some(out)
}

impl ActivityWriter {
    /// True on SQLite, where a batch can be written in two calls to the
    /// connection's worker thread ([`ActivityWriter::sqlite_begin_batch`],
    /// [`ActivityWriter::sqlite_insert_commit`]).
    pub fn is_sqlite(&self) -> bool {
        matches!(self.0, WriterConn::Sqlite(_))
    }

    /// SQLite: `BEGIN IMMEDIATE` (as every write transaction of the store
    /// starts) and the chain state read inside it, in one call. The
    /// transaction stays open on the connection: the caller ends it with
    /// [`ActivityWriter::sqlite_insert_commit`] or
    /// [`ActivityWriter::sqlite_rollback`] (or drops the connection).
    /// `None` on PostgreSQL (nothing done).
    pub async fn sqlite_begin_batch(&mut self) -> Result<Option<BatchState>> {
        let WriterConn::Sqlite(c) = &mut self.0 else {
            return Ok(None);
        };
        let sql = format!("BEGIN IMMEDIATE; {CHAIN_STATE_SQL}");
        let row: ChainStateRow = sqlx::query_as(&sql).fetch_one(&mut *c).await?;
        Ok(Some(batch_state(row)))
    }

    /// SQLite, inside the transaction [`ActivityWriter::sqlite_begin_batch`]
    /// opened: inserts the chained records (as
    /// [`AuditTx::insert_chained`]), the checkpoint when given, and commits,
    /// in one call. Returns `Ok(false)` without touching the transaction
    /// when the batch cannot go as one JSON array (a NUL in a text field),
    /// and on PostgreSQL.
    #[allow(clippy::too_many_arguments)]
    pub async fn sqlite_insert_commit(
        &mut self,
        first_seq: i64,
        rows: &[ActivityRecord],
        chains: &[[u8; 32]],
        chain_format: i32,
        seal: Option<&[u8; 32]>,
        checkpoint: Option<&SignedCheckpoint>,
    ) -> Result<bool> {
        let WriterConn::Sqlite(c) = &mut self.0 else {
            return Ok(false);
        };
        let Some(json) = batch_json(first_seq, rows, chains, chain_format, seal) else {
            return Ok(false);
        };
        match checkpoint {
            None => {
                sqlx::query(&format!("{SQLITE_BATCH_INSERT}; COMMIT"))
                    .bind(json)
                    .execute(&mut *c)
                    .await?;
            }
            Some(cp) => {
                sqlx::query(&format!(
                    "{SQLITE_BATCH_INSERT}; INSERT INTO audit_checkpoints (seq, chain, at, signature) \
                     VALUES ($2, $3, $4, $5) ON CONFLICT (seq) DO UPDATE SET chain = excluded.chain, \
                     at = excluded.at, signature = excluded.signature; COMMIT"
                ))
                .bind(json)
                .bind(cp.seq)
                .bind(&cp.chain)
                .bind(cp.at)
                .bind(&cp.signature)
                .execute(&mut *c)
                .await?;
            }
        }
        Ok(true)
    }

    /// SQLite: ends the open batch transaction without writing (best
    /// effort: a connection that cannot roll back is dropped by the writer,
    /// which rolls back as well).
    pub async fn sqlite_rollback(&mut self) {
        if let WriterConn::Sqlite(c) = &mut self.0 {
            let _ = sqlx::query("ROLLBACK").execute(&mut *c).await;
        }
    }
}

impl AuditTx<'_> {
    /// Commits the transaction.
    pub async fn commit(self) -> Result<()> {
        on_conn!(self.0, TxConn, tx, DB => Ok(tx.commit().await?))
    }

    /// Reads the chain's tail.
    pub async fn chain_tail(&mut self) -> Result<ChainTail> {
        on_conn!(&mut self.0, TxConn, tx, DB => chain_tail!(&mut **tx))
    }

    /// The chain's tail and the newest checkpoint's (seq, time), in one
    /// statement (the writer reads both inside every batch's transaction).
    pub async fn chain_state(&mut self) -> Result<BatchState> {
        on_conn!(&mut self.0, TxConn, tx, DB => {
            let row: ChainStateRow = sqlx::query_as(CHAIN_STATE_SQL).fetch_one(&mut **tx).await?;
            Ok(batch_state(row))
        })
    }

    /// Inserts chained records: `rows[i]` gets sequence number
    /// `first_seq + i`, chain value `chains[i]` and `chain_format`, the last
    /// row `seal` (when given), with the fields bound by reference (no
    /// per-record copies).
    ///
    /// With `cached` (`activity_log.statement_cache`, the default), the
    /// batch is cut into multi-row INSERTs of power-of-two sizes (a batch of
    /// 37 is one INSERT of 32 rows, one of 4 and one of 1), so that at most
    /// ten distinct statements exist and each is prepared once per
    /// connection and then reused from the connection's statement cache.
    /// Without, one INSERT per 512 records, prepared afresh every time (the
    /// earlier way: parsing a statement of up to 512 x 17 parameters was a
    /// third of the SQLite time of a batch).
    pub async fn insert_chained(
        &mut self,
        first_seq: i64,
        rows: &[ActivityRecord],
        chains: &[[u8; 32]],
        chain_format: i32,
        seal: Option<&[u8; 32]>,
        cached: bool,
    ) -> Result<()> {
        let chunks = insert_chunks(rows.len(), cached);
        let last = rows.len().saturating_sub(1);
        on_conn!(&mut self.0, TxConn, tx, DB => {
            let mut at = 0usize;
            for n in chunks {
                let mut qb = sqlx::QueryBuilder::<DB>::new(
                    "INSERT INTO activity_logs (id, at, account_id, key_uid, key_name, key_id, version, action, auth_type, caller, source_ip, result, status, message, chain, chain_format, seal) ",
                );
                let items = rows[at..at + n]
                    .iter()
                    .zip(&chains[at..at + n])
                    .zip(at..);
                qb.push_values(items, |mut b, ((a, c), i)| {
                    b.push_bind(first_seq + i as i64)
                        .push_bind(a.at)
                        .push_bind(a.account_id)
                        .push_bind(a.key_uid.as_str())
                        .push_bind(a.key_name.as_str())
                        .push_bind(a.key_id)
                        .push_bind(a.version)
                        .push_bind(a.action.as_str())
                        .push_bind(a.auth_type.as_str())
                        .push_bind(a.caller.as_str())
                        .push_bind(a.source_ip.as_str())
                        .push_bind(a.result.as_str())
                        .push_bind(a.status)
                        .push_bind(a.message.as_str())
                        .push_bind(&c[..])
                        .push_bind(chain_format)
                        .push_bind(seal.filter(|_| i == last).map(|s| &s[..]));
                });
                qb.build().persistent(cached).execute(&mut **tx).await?;
                at += n;
            }
            Ok(())
        })
    }

    /// The newest checkpoint.
    pub async fn last_checkpoint(&mut self) -> Result<Option<SignedCheckpoint>> {
        on_conn!(&mut self.0, TxConn, tx, DB => {
            Ok(sqlx::query_as(
                "SELECT seq, chain, at, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
            )
            .fetch_optional(&mut **tx)
            .await?)
        })
    }

    /// Stores a checkpoint (replacing one at the same sequence number).
    pub async fn insert_checkpoint(&mut self, cp: &SignedCheckpoint) -> Result<()> {
        on_conn!(&mut self.0, TxConn, tx, DB => {
            sqlx::query(
                "INSERT INTO audit_checkpoints (seq, chain, at, signature) VALUES ($1, $2, $3, $4) \
                 ON CONFLICT (seq) DO UPDATE SET chain = excluded.chain, at = excluded.at, \
                 signature = excluded.signature",
            )
            .bind(cp.seq)
            .bind(&cp.chain)
            .bind(cp.at)
            .bind(&cp.signature)
            .execute(&mut **tx)
            .await?;
            Ok(())
        })
    }
}

impl Store {
    /// The first chained sequence number: records before it were written
    /// before the chain existed.
    pub async fn audit_start_seq(&self) -> Result<i64> {
        on_db!(self, db => {
            Ok(
                sqlx::query_scalar("SELECT start_seq FROM audit_chain WHERE singleton = 1")
                    .fetch_optional(&db.pool)
                    .await?
                    .unwrap_or(1),
            )
        })
    }

    /// How many records precede `seq` (the unchained ones, for `seq` =
    /// [`Store::audit_start_seq`]).
    pub async fn audit_count_before(&self, seq: i64) -> Result<i64> {
        on_db!(self, db => {
            Ok(
                sqlx::query_scalar("SELECT COUNT(*) FROM activity_logs WHERE id < $1")
                    .bind(seq)
                    .fetch_one(&db.pool)
                    .await?,
            )
        })
    }

    /// Up to `limit` records from sequence number `from` on, in sequence order.
    pub async fn audit_records(&self, from: i64, limit: i64) -> Result<Vec<AuditRecord>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {RECORD_COLS} FROM activity_logs WHERE id >= $1 ORDER BY id LIMIT $2"
            ))
            .bind(from)
            .bind(limit)
            .fetch_all(&db.pool)
            .await?)
        })
    }

    /// The record with sequence number `seq`.
    pub async fn audit_record(&self, seq: i64) -> Result<Option<AuditRecord>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {RECORD_COLS} FROM activity_logs WHERE id = $1"
            ))
            .bind(seq)
            .fetch_optional(&db.pool)
            .await?)
        })
    }

    /// What an NHN credential's audit record names: the owning account,
    /// the key store's name, the kind and the value (address or certificate
    /// name).
    pub async fn audit_credential_subject(
        &self,
        id: i64,
    ) -> Result<Option<(i64, String, String, String)>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT p.account_id, s.name, c.kind, c.value FROM nhn_credentials c \
                 JOIN nhn_key_stores s ON s.id = c.key_store_id \
                 JOIN nhn_projects p ON p.id = s.project_id WHERE c.id = $1",
            )
            .bind(id)
            .fetch_optional(&db.pool)
            .await?)
        })
    }

    /// Every checkpoint, in sequence order.
    pub async fn audit_checkpoints(&self) -> Result<Vec<SignedCheckpoint>> {
        on_db!(self, db => {
            Ok(
                sqlx::query_as("SELECT seq, chain, at, signature FROM audit_checkpoints ORDER BY seq")
                    .fetch_all(&db.pool)
                    .await?,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{insert_chunks, MAX_INSERT_ROWS};

    #[test]
    fn cached_inserts_are_few_distinct_sizes_covering_the_batch() {
        assert_eq!(insert_chunks(0, true), Vec::<usize>::new());
        assert_eq!(insert_chunks(1, true), vec![1]);
        assert_eq!(insert_chunks(37, true), vec![32, 4, 1]);
        assert_eq!(insert_chunks(512, true), vec![512]);
        assert_eq!(insert_chunks(1300, true), vec![512, 512, 256, 16, 4]);
        let mut sizes = std::collections::BTreeSet::new();
        for len in 0..=2000 {
            let c = insert_chunks(len, true);
            assert_eq!(c.iter().sum::<usize>(), len);
            assert!(c
                .iter()
                .all(|n| n.is_power_of_two() && *n <= MAX_INSERT_ROWS));
            sizes.extend(c);
        }
        assert_eq!(sizes.len(), 10);
        assert_eq!(insert_chunks(1300, false), vec![512, 512, 276]);
    }
}
