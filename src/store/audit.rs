//! The audit chain's persistence (migration `0009_audit_chain.sql`): the
//! chain value of each activity record (`activity_logs.chain`, the record's
//! `id` being its sequence number), where the chain starts, and the signed
//! checkpoints. The chain values themselves are computed in the token by
//! `core::audit`; this module only reads and writes rows.

use sqlx::{Connection as _, SqliteConnection};

use super::{ActivityRow, Result, Store};

/// The newest activity record, as the writer continues the chain from it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainTail {
    /// The first chained sequence number (`audit_chain.start_seq`).
    pub start_seq: i64,
    /// The newest record's sequence number and chain value (`None` for an
    /// unchained record), or `None` when the log is empty.
    pub last: Option<(i64, Option<Vec<u8>>)>,
}

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct CheckpointRow {
    /// The last record it covers.
    pub seq: i64,
    /// That record's chain value.
    pub chain: Vec<u8>,
    /// When it was made, ms.
    pub at: i64,
    /// ECDSA P-256 signature (DER) over the canonical checkpoint bytes.
    pub signature: Vec<u8>,
}

/// An activity record with its chain value, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRecordRow {
    /// The record (`id` is its sequence number).
    #[sqlx(flatten)]
    pub row: ActivityRow,
    /// Its chain value; `None` for records written before the chain.
    pub chain: Option<Vec<u8>>,
}

const RECORD_COLS: &str = "id, at, account_id, key_uid, key_name, key_id, version, action, auth_type, caller, source_ip, result, status, message, chain";

/// Starts the audit writer's transaction on its own connection:
/// `BEGIN IMMEDIATE`, so the tail read inside it stays the tail until the
/// commit, whichever process (server, admin CLI) writes next.
pub async fn begin_audit_batch(
    conn: &mut SqliteConnection,
) -> Result<sqlx::Transaction<'_, sqlx::Sqlite>> {
    Ok(conn.begin_with("BEGIN IMMEDIATE").await?)
}

/// Reads the chain's tail on `conn` (inside the writer's transaction).
pub async fn chain_tail_on(conn: &mut SqliteConnection) -> Result<ChainTail> {
    let start_seq: i64 =
        sqlx::query_scalar("SELECT start_seq FROM audit_chain WHERE singleton = 1")
            .fetch_optional(&mut *conn)
            .await?
            .unwrap_or(1);
    let last: Option<(i64, Option<Vec<u8>>)> =
        sqlx::query_as("SELECT id, chain FROM activity_logs ORDER BY id DESC LIMIT 1")
            .fetch_optional(&mut *conn)
            .await?;
    Ok(ChainTail { start_seq, last })
}

/// The chain's tail and the newest checkpoint's (seq, time) on `conn`, in
/// one statement (the writer reads both inside every batch's transaction).
pub async fn chain_state_on(
    conn: &mut SqliteConnection,
) -> Result<(ChainTail, Option<(i64, i64)>)> {
    #[allow(clippy::type_complexity)]
    let (start_seq, last_id, last_chain, cp_seq, cp_at): (
        Option<i64>,
        Option<i64>,
        Option<Vec<u8>>,
        Option<i64>,
        Option<i64>,
    ) = sqlx::query_as(
        "SELECT (SELECT start_seq FROM audit_chain WHERE singleton = 1), \
                (SELECT id FROM activity_logs ORDER BY id DESC LIMIT 1), \
                (SELECT chain FROM activity_logs ORDER BY id DESC LIMIT 1), \
                (SELECT seq FROM audit_checkpoints ORDER BY seq DESC LIMIT 1), \
                (SELECT at FROM audit_checkpoints ORDER BY seq DESC LIMIT 1)",
    )
    .fetch_one(&mut *conn)
    .await?;
    let tail = ChainTail {
        start_seq: start_seq.unwrap_or(1),
        last: last_id.map(|id| (id, last_chain)),
    };
    Ok((tail, cp_seq.zip(cp_at)))
}

/// Inserts chained records: `rows[i]` gets sequence number `first_seq + i`
/// and chain value `chains[i]`. One multi-row INSERT per 512 records.
pub async fn insert_chained_on(
    conn: &mut SqliteConnection,
    first_seq: i64,
    rows: &[ActivityRow],
    chains: &[[u8; 32]],
) -> Result<()> {
    let mut seq = first_seq;
    for (chunk, chain_chunk) in rows.chunks(512).zip(chains.chunks(512)) {
        let mut qb = sqlx::QueryBuilder::<sqlx::Sqlite>::new(
            "INSERT INTO activity_logs (id, at, account_id, key_uid, key_name, key_id, version, action, auth_type, caller, source_ip, result, status, message, chain) ",
        );
        let items: Vec<(i64, &ActivityRow, &[u8; 32])> = chunk
            .iter()
            .zip(chain_chunk)
            .map(|(a, c)| {
                let s = seq;
                seq += 1;
                (s, a, c)
            })
            .collect();
        qb.push_values(items, |mut b, (s, a, c)| {
            b.push_bind(s)
                .push_bind(a.at)
                .push_bind(a.account_id)
                .push_bind(&a.key_uid)
                .push_bind(&a.key_name)
                .push_bind(a.key_id)
                .push_bind(a.version)
                .push_bind(&a.action)
                .push_bind(&a.auth_type)
                .push_bind(&a.caller)
                .push_bind(&a.source_ip)
                .push_bind(&a.result)
                .push_bind(a.status)
                .push_bind(&a.message)
                .push_bind(c.as_slice());
        });
        qb.build().persistent(false).execute(&mut *conn).await?;
    }
    Ok(())
}

/// The newest checkpoint on `conn`.
pub async fn last_checkpoint_on(conn: &mut SqliteConnection) -> Result<Option<CheckpointRow>> {
    Ok(sqlx::query_as(
        "SELECT seq, chain, at, signature FROM audit_checkpoints ORDER BY seq DESC LIMIT 1",
    )
    .fetch_optional(&mut *conn)
    .await?)
}

/// Stores a checkpoint on `conn`.
pub async fn insert_checkpoint_on(conn: &mut SqliteConnection, cp: &CheckpointRow) -> Result<()> {
    sqlx::query(
        "INSERT OR REPLACE INTO audit_checkpoints (seq, chain, at, signature) VALUES (?, ?, ?, ?)",
    )
    .bind(cp.seq)
    .bind(&cp.chain)
    .bind(cp.at)
    .bind(&cp.signature)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Store {
    /// The first chained sequence number: records before it were written
    /// before the chain existed.
    pub async fn audit_start_seq(&self) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT start_seq FROM audit_chain WHERE singleton = 1")
                .fetch_optional(self.pool())
                .await?
                .unwrap_or(1),
        )
    }

    /// How many records precede `seq` (the unchained ones, for `seq` =
    /// [`Store::audit_start_seq`]).
    pub async fn audit_count_before(&self, seq: i64) -> Result<i64> {
        Ok(
            sqlx::query_scalar("SELECT COUNT(*) FROM activity_logs WHERE id < ?")
                .bind(seq)
                .fetch_one(self.pool())
                .await?,
        )
    }

    /// Up to `limit` records from sequence number `from` on, in sequence order.
    pub async fn audit_records(&self, from: i64, limit: i64) -> Result<Vec<AuditRecordRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {RECORD_COLS} FROM activity_logs WHERE id >= ? ORDER BY id LIMIT ?"
        ))
        .bind(from)
        .bind(limit)
        .fetch_all(self.pool())
        .await?)
    }

    /// The record with sequence number `seq`.
    pub async fn audit_record(&self, seq: i64) -> Result<Option<AuditRecordRow>> {
        Ok(sqlx::query_as(&format!(
            "SELECT {RECORD_COLS} FROM activity_logs WHERE id = ?"
        ))
        .bind(seq)
        .fetch_optional(self.pool())
        .await?)
    }

    /// Every checkpoint, in sequence order.
    pub async fn audit_checkpoints(&self) -> Result<Vec<CheckpointRow>> {
        Ok(
            sqlx::query_as("SELECT seq, chain, at, signature FROM audit_checkpoints ORDER BY seq")
                .fetch_all(self.pool())
                .await?,
        )
    }
}
