//! Counts for `/metrics` ([`crate::telemetry::keys::KeyCounts`]): a few
//! grouped counts over `keys` and `key_versions`, the same SQL on both
//! engines. `keys.dialect` says whose a key is; both dialects share one
//! rotation schedule in `keys` (migration 0016).

use super::{Result, Store};
use crate::telemetry::keys::KeyCounts;

const KEYS_BY_STATE: &str = "SELECT k.dialect, k.status, COUNT(*)
     FROM keys k
     WHERE k.status <> 'DELETED'
     GROUP BY 1, 2";

const VERSIONS_BY_STATE: &str = "SELECT k.dialect, v.state, COUNT(*)
     FROM key_versions v JOIN keys k ON k.id = v.key_id
     WHERE v.state <> 'destroyed'
     GROUP BY 1, 2";

/// Overdue rotations of both dialects, as `keys_due_for_rotation` selects
/// them.
const ROTATION_OVERDUE: &str = "SELECT COUNT(*), MIN(next_rotation_at) FROM keys
     WHERE is_auto_rotation = TRUE AND status = 'ENABLE' AND next_rotation_at IS NOT NULL AND next_rotation_at <= $1";

const DELETION_DUE: &str = "SELECT COUNT(*) FROM keys WHERE status = 'REVOKE' AND destroy_at IS NOT NULL AND destroy_at <= $1";

impl Store {
    /// The key counts at `now` (ms).
    pub async fn key_counts(&self, now: i64) -> Result<KeyCounts> {
        on_db!(self, db => {
            let keys: Vec<(String, String, i64)> =
                sqlx::query_as(KEYS_BY_STATE).fetch_all(&db.pool).await?;
            let versions: Vec<(String, String, i64)> =
                sqlx::query_as(VERSIONS_BY_STATE).fetch_all(&db.pool).await?;
            let (rotation_overdue, oldest_rotation_due_ms): (i64, Option<i64>) =
                sqlx::query_as(ROTATION_OVERDUE)
                    .bind(now)
                    .fetch_one(&db.pool)
                    .await?;
            let deletion_due: i64 = sqlx::query_scalar(DELETION_DUE)
                .bind(now)
                .fetch_one(&db.pool)
                .await?;
            Ok(KeyCounts {
                keys,
                versions,
                rotation_overdue,
                oldest_rotation_due_ms,
                deletion_due,
                now_ms: now,
            })
        })
    }
}
