//! Keys and key versions.

use super::key_commits::{KeyWrite, Written};
use super::{map_unique, now_ms, KeyRepo, Result, Store, StoreError};
use super::{InstallationRepo, NhnRepo};
use crate::core::attest::VersionOwner;
use crate::core::{
    Algorithm, Dialect, Key, KeyId, KeyStatus, KeyUid, KeyVersion, ObjectRef, VersionState,
};
use sqlx::{ColumnIndex, Decode, FromRow, Row, Type};

/// A `keys` row read straight into the engine's [`Key`]: the store has no
/// key row type of its own, and this is the one place its columns map onto
/// the engine's fields (status, dialect and state texts included).
impl<'r, R: Row> FromRow<'r, R> for Key
where
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(r: &'r R) -> sqlx::Result<Self> {
        Ok(Key {
            id: KeyId::new(r.try_get("id")?),
            uid: KeyUid::from(r.try_get::<String, _>("uid")?),
            account_id: r.try_get("account_id")?,
            name: r.try_get("name")?,
            dialect: Dialect::parse(&r.try_get::<String, _>("dialect")?),
            key_type: Algorithm::try_from(r.try_get::<String, _>("key_type")?).map_err(|e| {
                sqlx::Error::ColumnDecode {
                    index: "key_type".into(),
                    source: Box::new(e),
                }
            })?,
            status: KeyStatus::parse(&r.try_get::<String, _>("status")?),
            memo: r.try_get("memo")?,
            protection_type: r.try_get("protection_type")?,
            is_convergent: r.try_get("is_convergent")?,
            is_auto_rotation: r.try_get("is_auto_rotation")?,
            rotation_period: r.try_get("rotation_period")?,
            next_rotation_at: r.try_get("next_rotation_at")?,
            destroy_at: r.try_get("destroy_at")?,
            status_before_delete: r.try_get("status_before_delete")?,
            status_at: r.try_get("status_at")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            revision: r.try_get("revision")?,
        })
    }
}

/// A `key_versions` row read straight into the engine's [`KeyVersion`].
impl<'r, R: Row> FromRow<'r, R> for KeyVersion
where
    &'r str: ColumnIndex<R>,
    i64: Decode<'r, R::Database> + Type<R::Database>,
    String: Decode<'r, R::Database> + Type<R::Database>,
    bool: Decode<'r, R::Database> + Type<R::Database>,
    Vec<u8>: Decode<'r, R::Database> + Type<R::Database>,
{
    fn from_row(r: &'r R) -> sqlx::Result<Self> {
        Ok(KeyVersion {
            key_id: KeyId::new(r.try_get("key_id")?),
            version: r.try_get("version")?,
            state: VersionState::parse(&r.try_get::<String, _>("state")?),
            enabled: r.try_get("enabled")?,
            cka_id: ObjectRef::from(r.try_get::<Vec<u8>, _>("cka_id")?),
            aux_cka_id: r
                .try_get::<Option<Vec<u8>>, _>("aux_cka_id")?
                .map(ObjectRef::from),
            status_at: r.try_get("status_at")?,
            created_at: r.try_get("created_at")?,
        })
    }
}

/// Counts a new key must stay below (the key itself included they may be
/// reached, not passed).
#[derive(Debug, Clone, Copy)]
pub struct KeyCaps<'a> {
    /// Keys of the account not destroyed.
    pub per_account: i64,
    /// Keys of the account of one `key_type`, not destroyed, and their cap.
    pub of_type: Option<(&'a str, i64)>,
}

/// The fields of a key to create.
#[derive(Debug, Clone)]
pub struct NewKey {
    /// Public identifier.
    pub uid: String,
    /// Owning account.
    pub account_id: i64,
    /// Name.
    pub name: String,
    /// The dialect whose rules the key follows.
    pub dialect: Dialect,
    /// Key type.
    pub key_type: Algorithm,
    /// Memo.
    pub memo: String,
    /// NAVER `protectionType`.
    pub protection_type: String,
    /// Convergent encryption.
    pub is_convergent: bool,
    /// Automatic rotation.
    pub is_auto_rotation: bool,
    /// Rotation period in days.
    pub rotation_period: Option<i64>,
    /// Next rotation, ms.
    pub next_rotation_at: Option<i64>,
}

const KEY_COLS: &str = "id, uid, account_id, name, dialect, key_type, status, memo, protection_type, is_convergent, is_auto_rotation, rotation_period, next_rotation_at, destroy_at, status_before_delete, status_at, created_at, updated_at, revision";

const VERSION_COLS: &str =
    "key_id, version, state, enabled, cka_id, aux_cka_id, status_at, created_at";

impl Store {
    /// Up to `max` keys not deleted (lowest ids first), each with its
    /// versions in order, in two queries: the engine fills its key cache
    /// from it at start-up, so that no key's first use reads the store.
    pub async fn live_keys_with_versions(&self, max: usize) -> Result<Vec<(Key, Vec<KeyVersion>)>> {
        let max = i64::try_from(max).unwrap_or(i64::MAX);
        on_db!(self, db => {
            let keys: Vec<Key> = sqlx::query_as(&format!(
                "SELECT {KEY_COLS} FROM keys WHERE status <> 'DELETED' ORDER BY id LIMIT $1"
            ))
            .bind(max)
            .fetch_all(&db.pool)
            .await?;
            let Some(last) = keys.last().map(|k| k.id) else {
                return Ok(Vec::new());
            };
            let versions: Vec<KeyVersion> = sqlx::query_as(&format!(
                "SELECT {VERSION_COLS} FROM key_versions WHERE key_id <= $1 ORDER BY key_id, version"
            ))
            .bind(last)
            .fetch_all(&db.pool)
            .await?;
            let mut by_key: std::collections::HashMap<KeyId, Vec<KeyVersion>> =
                std::collections::HashMap::with_capacity(keys.len());
            for v in versions {
                by_key.entry(v.key_id).or_default().push(v);
            }
            Ok(keys
                .into_iter()
                .map(|k| {
                    let versions = by_key.remove(&k.id).unwrap_or_default();
                    (k, versions)
                })
                .collect())
        })
    }
}

impl KeyRepo for Store {
    async fn insert_key_pending(
        &self,
        key: &NewKey,
        cka_id: &ObjectRef,
        aux_cka_id: Option<&ObjectRef>,
        caps: KeyCaps<'_>,
    ) -> Result<KeyId> {
        // Committed with the other creations queued at this moment (one
        // transaction, one fsync); answered once this row is durable.
        let write = KeyWrite::InsertKeyPending {
            key: Box::new(key.clone()),
            cka_id: cka_id.clone(),
            aux_cka_id: aux_cka_id.cloned(),
            per_account: caps.per_account,
            of_type: caps.of_type.map(|(t, cap)| (t.to_string(), cap)),
        };
        match self
            .key_commits
            .write(&self.db, self.node_id(), write)
            .await?
        {
            Written::Key(id) => Ok(id),
            Written::Activated => Err(StoreError::Gone("the key writer answered another write")),
        }
    }

    async fn insert_version_pending(
        &self,
        key_id: KeyId,
        cka_id: &ObjectRef,
        aux_cka_id: Option<&ObjectRef>,
    ) -> Result<i64> {
        // Owners of pending rows proved gone, outside any transaction:
        // their liveness check may take a connection of its own
        // (PostgreSQL), which must not wait while this one holds the
        // write lock. A gone node stays gone (ids are per process).
        let mut gone: Vec<Option<i64>> = Vec::new();
        loop {
            let unproved = on_db!(self, db => {
                let mut tx = db.begin_write().await?;
                // One addition per key at a time: a version still
                // `pending` on a live node is a rotation in flight, and a
                // second one would number past it and could activate first
                // (a client told "version 3" while version 2 does not exist
                // yet). A pending row of a gone node is the reconciler's to
                // undo and does not block. SQLite serialises write
                // transactions and PostgreSQL's unique (key_id, version)
                // index refuses the second of two transactions that both
                // saw no pending row, so the check cannot be raced.
                let pending: Vec<Option<i64>> = sqlx::query_scalar(
                    "SELECT owner_node FROM key_versions WHERE key_id = $1 AND state = 'pending'",
                )
                .bind(key_id)
                .fetch_all(&mut *tx)
                .await?;
                let unproved: Vec<Option<i64>> =
                    pending.into_iter().filter(|o| !gone.contains(o)).collect();
                if !unproved.is_empty() {
                    tx.rollback().await?;
                    unproved
                } else {
                    let next: i64 = sqlx::query_scalar(
                        "SELECT COALESCE(MAX(version), 0) + 1 FROM key_versions WHERE key_id = $1",
                    )
                    .bind(key_id)
                    .fetch_one(&mut *tx)
                    .await?;
                    sqlx::query(
                        "INSERT INTO key_versions (key_id, version, state, enabled, cka_id, aux_cka_id, status_at, created_at, owner_node) VALUES ($1, $2, 'pending', TRUE, $3, $4, $5, $6, $7)",
                    )
                    .bind(key_id)
                    .bind(next)
                    .bind(cka_id)
                    .bind(aux_cka_id)
                    .bind(now_ms())
                    .bind(now_ms())
                    .bind(self.node_id())
                    .execute(&mut *tx)
                    .await
                    .map_err(map_unique)?;
                    tx.commit().await?;
                    return Ok(next);
                }
            });
            for owner in unproved {
                if self.node_alive(owner).await {
                    return Err(StoreError::Conflict);
                }
                gone.push(owner);
            }
        }
    }

    async fn set_version_state(
        &self,
        key_id: KeyId,
        version: i64,
        state: VersionState,
    ) -> Result<()> {
        on_db!(self, db => {
            sqlx::query("UPDATE key_versions SET state = $1 WHERE key_id = $2 AND version = $3")
                .bind(state.as_str())
                .bind(key_id)
                .bind(version)
                .execute(&db.pool)
                .await?;
            Ok(())
        })
    }

    async fn activate_version(
        &self,
        key_id: KeyId,
        version: i64,
        next_rotation_at: Option<i64>,
    ) -> Result<()> {
        // Group commit, as for the pending rows.
        let write = KeyWrite::Activate {
            key_id,
            version,
            next_rotation_at,
        };
        match self
            .key_commits
            .write(&self.db, self.node_id(), write)
            .await?
        {
            Written::Activated => Ok(()),
            Written::Key(_) => Err(StoreError::Gone("the key writer answered another write")),
        }
    }

    async fn delete_pending_version(&self, key_id: KeyId, version: i64) -> Result<()> {
        self.delete_version_in_state(key_id, version, VersionState::Pending)
            .await
    }

    async fn mark_pending_destroying(
        &self,
        key_id: KeyId,
        version: i64,
        cka_id: &ObjectRef,
    ) -> Result<Option<VersionState>> {
        on_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let r = sqlx::query(
                "UPDATE key_versions SET state = 'destroying', owner_node = $4 WHERE key_id = $1 AND version = $2 AND cka_id = $3 AND state = 'pending'",
            )
            .bind(key_id)
            .bind(version)
            .bind(cka_id)
            .bind(self.node_id())
            .execute(&mut *tx)
            .await?;
            if r.rows_affected() == 1 {
                sqlx::query(
                    "UPDATE keys SET status = 'DELETED', updated_at = $1, revision = revision + 1 WHERE id = $2 AND NOT EXISTS (SELECT 1 FROM key_versions v WHERE v.key_id = keys.id AND v.state = 'active')",
                )
                .bind(now_ms())
                .bind(key_id)
                .execute(&mut *tx)
                .await?;
            }
            let state: Option<String> = sqlx::query_scalar(
                "SELECT state FROM key_versions WHERE key_id = $1 AND version = $2 AND cka_id = $3",
            )
            .bind(key_id)
            .bind(version)
            .bind(cka_id)
            .fetch_optional(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(state.as_deref().map(VersionState::parse))
        })
    }

    async fn delete_version_in_state(
        &self,
        key_id: KeyId,
        version: i64,
        state: VersionState,
    ) -> Result<()> {
        on_db!(self, db => {
            let mut tx = db.begin_write().await?;
            sqlx::query("DELETE FROM key_versions WHERE key_id = $1 AND version = $2 AND state = $3")
                .bind(key_id)
                .bind(version)
                .bind(state.as_str())
                .execute(&mut *tx)
                .await?;
            // A key whose only version never came to be is removed with it.
            let left: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM key_versions WHERE key_id = $1")
                .bind(key_id)
                .fetch_one(&mut *tx)
                .await?;
            if left == 0 {
                sqlx::query("DELETE FROM keys WHERE id = $1")
                    .bind(key_id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn set_version_enabled(
        &self,
        key_id: KeyId,
        version: i64,
        enabled: bool,
    ) -> Result<bool> {
        on_db!(self, db => {
            let r = sqlx::query("UPDATE key_versions SET enabled = $1, status_at = $2 WHERE key_id = $3 AND version = $4 AND state = 'active'")
                .bind(enabled)
                .bind(now_ms())
                .bind(key_id)
                .bind(version)
                .execute(&db.pool)
                .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    async fn key_by_uid(&self, uid: &KeyUid) -> Result<Option<(Key, Vec<KeyVersion>)>> {
        on_db!(self, db => {
            let row: Option<Key> = sqlx::query_as(&format!("SELECT {KEY_COLS} FROM keys WHERE uid = $1"))
                .bind(uid)
                .fetch_optional(&db.pool)
                .await?;
            let Some(key) = row else { return Ok(None) };
            let versions = self.versions(key.id).await?;
            Ok(Some((key, versions)))
        })
    }

    async fn key_by_id(&self, id: KeyId) -> Result<Option<(Key, Vec<KeyVersion>)>> {
        on_db!(self, db => {
            let row: Option<Key> = sqlx::query_as(&format!("SELECT {KEY_COLS} FROM keys WHERE id = $1"))
                .bind(id)
                .fetch_optional(&db.pool)
                .await?;
            let Some(key) = row else { return Ok(None) };
            let versions = self.versions(key.id).await?;
            Ok(Some((key, versions)))
        })
    }

    async fn versions(&self, key_id: KeyId) -> Result<Vec<KeyVersion>> {
        on_db!(self, db => {
            let rows: Vec<KeyVersion> = sqlx::query_as(&format!(
                "SELECT {VERSION_COLS} FROM key_versions WHERE key_id = $1 ORDER BY version"
            ))
            .bind(key_id)
            .fetch_all(&db.pool)
            .await?;
            Ok(rows)
        })
    }

    async fn versions_in_state(&self, state: VersionState) -> Result<Vec<KeyVersion>> {
        on_db!(self, db => {
            let rows: Vec<KeyVersion> = sqlx::query_as(&format!(
                "SELECT {VERSION_COLS} FROM key_versions WHERE state = $1"
            ))
            .bind(state.as_str())
            .fetch_all(&db.pool)
            .await?;
            Ok(rows)
        })
    }

    async fn active_version_ids(&self) -> Result<Vec<(String, i64, Vec<u8>, Option<Vec<u8>>)>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT k.uid, v.version, v.cka_id, v.aux_cka_id FROM key_versions v JOIN keys k ON k.id = v.key_id WHERE v.state = 'active' ORDER BY k.id, v.version",
            )
            .fetch_all(&db.pool)
            .await?)
        })
    }

    async fn versions_with_owners(&self, uid: Option<&str>) -> Result<Vec<VersionOwner>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT k.uid, k.key_type, k.status AS key_status, v.version, v.state, v.enabled,
                        v.cka_id, v.aux_cka_id, a.name AS account, n.nhn_type,
                        s.name AS key_store, p.name AS project, n.extractable AS export_policy
                 FROM key_versions v
                 JOIN keys k ON k.id = v.key_id
                 JOIN accounts a ON a.id = k.account_id
                 LEFT JOIN nhn_keys n ON n.key_id = k.id
                 LEFT JOIN nhn_key_stores s ON s.id = n.key_store_id
                 LEFT JOIN nhn_projects p ON p.id = s.project_id
                 WHERE v.state <> 'destroyed' AND ($1 IS NULL OR k.uid = $1)
                 ORDER BY k.id, v.version",
            )
            .bind(uid)
            .fetch_all(&db.pool)
            .await?)
        })
    }

    async fn known_object_ids(&self) -> Result<Vec<Vec<u8>>> {
        on_db!(self, db => {
            let mut ids: Vec<Vec<u8>> =
                sqlx::query_scalar("SELECT cka_id FROM key_versions WHERE state <> 'destroyed'")
                    .fetch_all(&db.pool)
                    .await?;
            let aux: Vec<Vec<u8>> = sqlx::query_scalar(
                "SELECT aux_cka_id FROM key_versions WHERE state <> 'destroyed' AND aux_cka_id IS NOT NULL",
            )
            .fetch_all(&db.pool)
            .await?;
            ids.extend(aux);
            ids.extend(self.service_key_ids().await?);
            ids.extend(self.nhn_ca_key_ids().await?);
            Ok(ids)
        })
    }

    async fn list_keys(&self, account_id: i64, offset: i64, limit: i64) -> Result<(Vec<Key>, i64)> {
        on_db!(self, db => {
            let total: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM keys WHERE account_id = $1 AND status <> 'DELETED' AND EXISTS (SELECT 1 FROM key_versions v WHERE v.key_id = keys.id AND v.state = 'active')",
            )
            .bind(account_id)
            .fetch_one(&db.pool)
            .await?;
            let keys: Vec<Key> = sqlx::query_as(&format!(
                "SELECT {KEY_COLS} FROM keys WHERE account_id = $1 AND status <> 'DELETED' AND EXISTS (SELECT 1 FROM key_versions v WHERE v.key_id = keys.id AND v.state = 'active') ORDER BY id DESC LIMIT $2 OFFSET $3"
            ))
            .bind(account_id)
            .bind(limit)
            .bind(offset)
            .fetch_all(&db.pool)
            .await?;
            Ok((keys, total))
        })
    }

    async fn update_key(&self, k: &Key) -> Result<bool> {
        on_db!(self, db => {
            let r = sqlx::query(
                "UPDATE keys SET status = $1, memo = $2, is_auto_rotation = $3, rotation_period = $4, next_rotation_at = $5, destroy_at = $6, status_before_delete = $7, status_at = $8, updated_at = $9, revision = revision + 1 WHERE id = $10 AND revision = $11",
            )
            .bind(k.status.as_str())
            .bind(&k.memo)
            .bind(k.is_auto_rotation)
            .bind(k.rotation_period)
            .bind(k.next_rotation_at)
            .bind(k.destroy_at)
            .bind(&k.status_before_delete)
            .bind(k.status_at)
            .bind(now_ms())
            .bind(k.id)
            .bind(k.revision)
            .execute(&db.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    async fn keys_due_for_rotation(&self, now: i64) -> Result<Vec<KeyId>> {
        on_db!(self, db => {
            Ok(sqlx::query_scalar(
                "SELECT id FROM keys WHERE is_auto_rotation = TRUE AND status = 'ENABLE' AND next_rotation_at IS NOT NULL AND next_rotation_at <= $1",
            )
            .bind(now)
            .fetch_all(&db.pool)
            .await?)
        })
    }

    async fn keys_due_for_deletion(&self, now: i64) -> Result<Vec<KeyId>> {
        on_db!(self, db => {
            Ok(sqlx::query_scalar(
                "SELECT id FROM keys WHERE status = 'REVOKE' AND destroy_at IS NOT NULL AND destroy_at <= $1",
            )
            .bind(now)
            .fetch_all(&db.pool)
            .await?)
        })
    }

    async fn mark_key_destroying(&self, key_id: KeyId) -> Result<bool> {
        on_db!(self, db => {
            let mut tx = db.begin_write().await?;
            // Only from `REVOKE`: of several nodes (or requests) destroying
            // one key, exactly one goes on.
            let r = sqlx::query("UPDATE keys SET status = 'DELETED', updated_at = $1, revision = revision + 1 WHERE id = $2 AND status = 'REVOKE'")
                .bind(now_ms())
                .bind(key_id)
                .execute(&mut *tx)
                .await?;
            if r.rows_affected() == 0 {
                tx.rollback().await?;
                return Ok(false);
            }
            sqlx::query("UPDATE key_versions SET state = 'destroying', owner_node = $2 WHERE key_id = $1 AND state IN ('active', 'pending')")
                .bind(key_id)
                .bind(self.node_id())
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }
}
