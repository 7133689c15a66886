//! Durable counts of AES-GCM invocations per key version (by `CKA_ID`).

use super::{Result, Store};

impl Store {
    /// Invocations reserved so far for the key object `cka_id` (0 if none).
    pub async fn gcm_reserved(&self, cka_id: &[u8]) -> Result<u64> {
        on_db!(self, db => {
            let v: Option<i64> =
                sqlx::query_scalar("SELECT reserved FROM gcm_invocations WHERE cka_id = $1")
                    .bind(cka_id)
                    .fetch_optional(&db.pool)
                    .await?;
            Ok(v.unwrap_or(0).max(0) as u64)
        })
    }

    /// Reserves the next `block` invocations for `cka_id` in one atomic
    /// increment and returns the new reserved count: the caller may use
    /// the invocations from `returned - block` (exclusive) up to `returned`.
    /// Two callers (two nodes, or a node and an admin command) never get
    /// the same block, whatever they read before.
    pub async fn gcm_reserve_next(&self, cka_id: &[u8], block: u64) -> Result<u64> {
        let block = block.min(i64::MAX as u64) as i64;
        on_db!(self, db => {
            let v: i64 = sqlx::query_scalar(
                "INSERT INTO gcm_invocations (cka_id, reserved) VALUES ($1, $2) \
                 ON CONFLICT (cka_id) DO UPDATE SET reserved = gcm_invocations.reserved + excluded.reserved \
                 RETURNING reserved",
            )
            .bind(cka_id)
            .bind(block)
            .fetch_one(&db.pool)
            .await?;
            Ok(v.max(0) as u64)
        })
    }

    /// [`Store::gcm_reserve_next`] for several key objects in one
    /// transaction (one commit, one fsync, however many): the returned
    /// counts are in the order of `blocks`. An id may appear more than once;
    /// each of its blocks is then reserved in turn, disjoint as ever. The
    /// rows are written in ascending `cka_id` order whatever the order of
    /// `blocks`, so that two such transactions (two nodes, or a node's
    /// start-up blocks and its requests' on PostgreSQL) lock shared rows in
    /// one order and never deadlock.
    pub async fn gcm_reserve_batch(&self, blocks: &[(Vec<u8>, u64)]) -> Result<Vec<u64>> {
        const SQL: &str = "INSERT INTO gcm_invocations (cka_id, reserved) VALUES ($1, $2) \
             ON CONFLICT (cka_id) DO UPDATE SET reserved = gcm_invocations.reserved + excluded.reserved \
             RETURNING reserved";
        let mut order: Vec<usize> = (0..blocks.len()).collect();
        order.sort_by(|&a, &b| blocks[a].0.cmp(&blocks[b].0));
        on_db!(self, db => {
            // The first statement writes: SQLite takes the write lock at
            // once (no read-to-write upgrade to fail).
            let mut tx = db.pool.begin().await?;
            let mut ends = vec![0; blocks.len()];
            for &i in &order {
                let (cka_id, block) = &blocks[i];
                let v: i64 = sqlx::query_scalar(SQL)
                    .bind(cka_id)
                    .bind((*block).min(i64::MAX as u64) as i64)
                    .fetch_one(&mut *tx)
                    .await?;
                ends[i] = v.max(0) as u64;
            }
            tx.commit().await?;
            Ok(ends)
        })
    }

    /// Reserves a block of `block` invocations for each of the distinct key
    /// objects `cka_ids` in one statement and one transaction (the start-up
    /// first blocks: one multi-row upsert holds the store's write lock far
    /// shorter than a statement per row). Returns each id's new reserved
    /// count, in the order of `cka_ids`. Rows are written in ascending
    /// `cka_id` order, as [`Store::gcm_reserve_batch`] does.
    pub async fn gcm_reserve_each(&self, cka_ids: &[Vec<u8>], block: u64) -> Result<Vec<u64>> {
        if cka_ids.is_empty() {
            return Ok(Vec::new());
        }
        let block = block.min(i64::MAX as u64) as i64;
        let mut sorted: Vec<&Vec<u8>> = cka_ids.iter().collect();
        sorted.sort();
        sorted.dedup();
        let values: Vec<String> = (0..sorted.len())
            .map(|i| format!("(${}, ${})", 2 * i + 1, 2 * i + 2))
            .collect();
        let sql = format!(
            "INSERT INTO gcm_invocations (cka_id, reserved) VALUES {} \
             ON CONFLICT (cka_id) DO UPDATE SET reserved = gcm_invocations.reserved + excluded.reserved \
             RETURNING cka_id, reserved",
            values.join(", ")
        );
        let rows: Vec<(Vec<u8>, i64)> = on_db!(self, db => {
            let mut q = sqlx::query_as(&sql).persistent(false);
            for id in &sorted {
                q = q.bind(id.as_slice()).bind(block);
            }
            let mut tx = db.pool.begin().await?;
            let rows = q.fetch_all(&mut *tx).await?;
            tx.commit().await?;
            rows
        });
        let ends: std::collections::HashMap<Vec<u8>, i64> = rows.into_iter().collect();
        Ok(cka_ids
            .iter()
            .map(|id| ends.get(id).copied().unwrap_or(0).max(0) as u64)
            .collect())
    }
}
