//! Counts for `/metrics` ([`crate::telemetry::keys::KeyCounts`]): a few
//! grouped counts over `keys`, `nhn_keys` and `key_versions`, the same SQL
//! on both engines. A key is NHN's when `nhn_keys` names it.

use super::{Result, Store};
use crate::telemetry::keys::KeyCounts;

const KEYS_BY_STATE: &str =
    "SELECT CASE WHEN n.key_id IS NULL THEN 'naver' ELSE 'nhn' END AS dialect, k.status, COUNT(*)
     FROM keys k LEFT JOIN nhn_keys n ON n.key_id = k.id
     WHERE k.status <> 'DELETED'
     GROUP BY 1, 2";

const VERSIONS_BY_STATE: &str =
    "SELECT CASE WHEN n.key_id IS NULL THEN 'naver' ELSE 'nhn' END AS dialect, v.state, COUNT(*)
     FROM key_versions v JOIN keys k ON k.id = v.key_id LEFT JOIN nhn_keys n ON n.key_id = k.id
     WHERE v.state <> 'destroyed'
     GROUP BY 1, 2";

/// Overdue rotations of both dialects: NAVER's `keys.next_rotation_at`
/// (automatic rotation on), NHN's `nhn_keys.next_rotation_at` (a rotation
/// period set); as `keys_due_for_rotation` and `nhn_keys_due_for_rotation`
/// select them.
const ROTATION_OVERDUE: &str = "SELECT COUNT(*), MIN(due) FROM (
       SELECT next_rotation_at AS due FROM keys
        WHERE is_auto_rotation = TRUE AND status = 'ENABLE' AND next_rotation_at IS NOT NULL AND next_rotation_at <= $1
       UNION ALL
       SELECT n.next_rotation_at AS due FROM nhn_keys n JOIN keys k ON k.id = n.key_id
        WHERE n.auto_rotation_period > 0 AND n.next_rotation_at IS NOT NULL AND n.next_rotation_at <= $1 AND k.status = 'ENABLE'
     ) overdue";

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
