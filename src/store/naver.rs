//! NAVER-specific metadata: token generators and token hashes, IP ACLs,
//! API Gateway API keys and the activity log.

use sqlx::Row;

use super::{map_unique, now_ms, ActivitySink, Db, NaverRepo, Result, Store, StoreError};
use crate::core::{ActivityRecord, KeyId, StoredToken, TokenGenerator};

/// The refresh token that new tokens are made from, if any.
#[derive(Debug, Clone, Copy)]
pub enum TokenParent<'a> {
    /// Create Token Set (account auth): no parent.
    None,
    /// Create Access Token and Renew Token Set: the refresh token (hash)
    /// must still be unrevoked. Renewal does not revoke it (NAVER: existing
    /// sets are not discarded); only rows revoked by older releases are.
    Live(&'a [u8]),
}

/// A new token to store.
#[derive(Debug, Clone)]
pub struct NewToken {
    /// SHA-256 of the token.
    pub hash: Vec<u8>,
    /// Public id.
    pub token_id: String,
    /// `access` or `refresh`.
    pub kind: &'static str,
    /// Expiry, ms.
    pub expires_at: Option<i64>,
}

const ACTIVITY_COLS: &str =
    "id, at, account_id, key_uid, key_name, key_id, version, action, auth_type, caller, source_ip, result, status, message";

impl NaverRepo for Store {
    async fn generator(&self, key_id: KeyId) -> Result<Option<TokenGenerator>> {
        on_db!(self, db => {
            Ok(sqlx::query_as("SELECT key_id, generator_id, status, enabled_at, disabled_at, issued_count FROM token_generators WHERE key_id = $1")
                .bind(key_id)
                .fetch_optional(&db.pool)
                .await?)
        })
    }

    async fn put_generator(&self, key_id: KeyId, generator_id: &str) -> Result<()> {
        on_db!(self, db => {
            sqlx::query(
                "INSERT INTO token_generators (key_id, generator_id, status, enabled_at, disabled_at, issued_count) VALUES ($1, $2, 'ACTIVE', $3, NULL, 0)
                 ON CONFLICT(key_id) DO UPDATE SET generator_id = excluded.generator_id, status = 'ACTIVE', enabled_at = excluded.enabled_at, disabled_at = NULL, issued_count = 0",
            )
            .bind(key_id)
            .bind(generator_id)
            .bind(now_ms())
            .execute(&db.pool)
            .await?;
            Ok(())
        })
    }

    async fn disable_generator(&self, key_id: KeyId) -> Result<bool> {
        on_db!(self, db => {
            let r = sqlx::query("UPDATE token_generators SET status = 'INACTIVE', disabled_at = $1 WHERE key_id = $2 AND status = 'ACTIVE'")
                .bind(now_ms())
                .bind(key_id)
                .execute(&db.pool)
                .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn insert_tokens(
        &self,
        key_id: KeyId,
        generator_id: &str,
        account_id: i64,
        set_id: &str,
        tokens: &[NewToken],
        parent: TokenParent<'_>,
        max_live_sets: Option<i64>,
    ) -> Result<bool> {
        on_db!(self, db => {
            let now = now_ms();
            let mut tx = db.begin_write().await?;
            if let Some(max) = max_live_sets {
                // Take the write lock first, so the count below cannot be raced
                // past by a concurrent creation.
                sqlx::query("UPDATE token_generators SET issued_count = issued_count WHERE key_id = $1")
                    .bind(key_id)
                    .execute(&mut *tx)
                    .await?;
                let live: i64 = sqlx::query_scalar(
                    "SELECT COUNT(DISTINCT set_id) FROM tokens WHERE key_id = $1 AND generator_id = $2 AND kind = 'refresh' AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > $3)",
                )
                .bind(key_id)
                .bind(generator_id)
                .bind(now)
                .fetch_one(&mut *tx)
                .await?;
                if live >= max {
                    tx.rollback().await?;
                    return Err(StoreError::LimitReached("token sets"));
                }
            }
            // The check is an UPDATE guarded by `revoked_at IS NULL` that
            // changes nothing: it takes the write lock, so the parent is read
            // in the transaction that inserts its children.
            let live = match parent {
                TokenParent::None => true,
                TokenParent::Live(h) => sqlx::query(
                    "UPDATE tokens SET revoked_at = NULL WHERE token_hash = $1 AND revoked_at IS NULL",
                )
                .bind(h)
                .execute(&mut *tx)
                .await?
                .rows_affected()
                    == 1,
            };
            if !live {
                tx.rollback().await?;
                return Ok(false);
            }
            for t in tokens {
                sqlx::query(
                    "INSERT INTO tokens (token_hash, token_id, key_id, generator_id, account_id, kind, set_id, expires_at, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&t.hash)
                .bind(&t.token_id)
                .bind(key_id)
                .bind(generator_id)
                .bind(account_id)
                .bind(t.kind)
                .bind(set_id)
                .bind(t.expires_at)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(map_unique)?;
            }
            sqlx::query("UPDATE token_generators SET issued_count = issued_count + $1 WHERE key_id = $2 AND generator_id = $3")
                .bind(tokens.len() as i64)
                .bind(key_id)
                .bind(generator_id)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    async fn token_by_hash(&self, hash: &[u8]) -> Result<Option<StoredToken>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT token_id, key_id, generator_id, account_id, kind, set_id, expires_at, revoked_at FROM tokens WHERE token_hash = $1",
            )
            .bind(hash)
            .fetch_optional(&db.pool)
            .await?)
        })
    }

    async fn set_acl_enabled(&self, key_id: KeyId, on: bool) -> Result<()> {
        on_db!(self, db => {
            sqlx::query("UPDATE keys SET acl_enabled = $1 WHERE id = $2")
                .bind(on)
                .bind(key_id)
                .execute(&db.pool)
                .await?;
            Ok(())
        })
    }

    async fn acl(&self, key_id: KeyId) -> Result<(bool, Vec<String>)> {
        on_db!(self, db => {
            let on: bool = sqlx::query_scalar("SELECT acl_enabled FROM keys WHERE id = $1")
                .bind(key_id)
                .fetch_one(&db.pool)
                .await?;
            let rules = sqlx::query(
                "SELECT rule FROM key_acl_rules WHERE key_id = $1 ORDER BY created_at, rule",
            )
            .bind(key_id)
            .fetch_all(&db.pool)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>("rule"))
            .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok((on, rules))
        })
    }

    async fn add_acl_rules(&self, key_id: KeyId, rules: &[String]) -> Result<()> {
        on_db!(self, db => {
            let mut tx = db.begin_write().await?;
            for r in rules {
                sqlx::query(
                    "INSERT INTO key_acl_rules (key_id, rule, created_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
                )
                .bind(key_id)
                .bind(r)
                .bind(now_ms())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn delete_acl_rules(&self, key_id: KeyId, rules: &[String]) -> Result<()> {
        on_db!(self, db => {
            let mut tx = db.begin_write().await?;
            for r in rules {
                sqlx::query("DELETE FROM key_acl_rules WHERE key_id = $1 AND rule = $2")
                    .bind(key_id)
                    .bind(r)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn insert_api_key(&self, api_key: &str, account_id: i64) -> Result<()> {
        on_db!(self, db => {
            sqlx::query("INSERT INTO api_keys (api_key, account_id, status, created_at) VALUES ($1, $2, 'active', $3)")
                .bind(api_key)
                .bind(account_id)
                .bind(now_ms())
                .execute(&db.pool)
                .await
                .map_err(map_unique)?;
            Ok(())
        })
    }

    async fn api_key_account(&self, api_key: &str) -> Result<Option<i64>> {
        on_db!(self, db => {
            Ok(sqlx::query_scalar(
                "SELECT account_id FROM api_keys WHERE api_key = $1 AND status = 'active'",
            )
            .bind(api_key)
            .fetch_optional(&db.pool)
            .await?)
        })
    }

    async fn revoke_api_key(&self, api_key: &str) -> Result<bool> {
        on_db!(self, db => {
            let r = sqlx::query(
                "UPDATE api_keys SET status = 'revoked' WHERE api_key = $1 AND status = 'active'",
            )
            .bind(api_key)
            .execute(&db.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    async fn claim_signature(&self, digest: &[u8], expires_at: i64, now: i64) -> Result<bool> {
        // One statement, atomic on both engines: a new digest is inserted,
        // an expired record taken over, a live one left alone (0 rows).
        on_db!(self, db => {
            let r = sqlx::query(
                "INSERT INTO used_signatures (digest, expires_at) VALUES ($1, $2)
                 ON CONFLICT (digest) DO UPDATE SET expires_at = excluded.expires_at
                 WHERE used_signatures.expires_at < $3",
            )
            .bind(digest)
            .bind(expires_at)
            .bind(now)
            .execute(&db.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    async fn prune_signatures(&self, now: i64) -> Result<u64> {
        on_db!(self, db => {
            let r = sqlx::query("DELETE FROM used_signatures WHERE expires_at < $1")
                .bind(now)
                .execute(&db.pool)
                .await?;
            Ok(r.rows_affected())
        })
    }
}

impl ActivitySink for Store {
    async fn activity_writer(&self, fsync: bool) -> Result<ActivityWriter> {
        Ok(ActivityWriter(match &self.db {
            Db::Sqlite(db) => WriterConn::Sqlite(db.activity_writer(fsync).await?),
            Db::Postgres(db) => WriterConn::Postgres(db.activity_writer(fsync).await?),
        }))
    }

    async fn activity(
        &self,
        key_uid: &str,
        from: i64,
        to: i64,
        keyword: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> Result<(Vec<ActivityRecord>, i64)> {
        on_db!(self, db => {
            // LIKE wildcards and the escape character itself match literally.
            let pattern = keyword.map(|k| {
                format!(
                    "%{}%",
                    k.replace('\\', "\\\\")
                        .replace('%', "\\%")
                        .replace('_', "\\_")
                )
            });
            // Numbered parameters: ?1 key, ?2 from, ?3 to, ?4 pattern (or NULL).
            let filter = "key_uid = $1 AND at >= $2 AND at <= $3 AND ($4 IS NULL OR LOWER(action) LIKE LOWER($4) ESCAPE '\\' OR LOWER(caller) LIKE LOWER($4) ESCAPE '\\' OR LOWER(source_ip) LIKE LOWER($4) ESCAPE '\\' OR LOWER(result) LIKE LOWER($4) ESCAPE '\\')";
            let total: i64 = sqlx::query_scalar(&format!(
                "SELECT COUNT(*) FROM activity_logs WHERE {filter}"
            ))
            .bind(key_uid)
            .bind(from)
            .bind(to)
            .bind(&pattern)
            .fetch_one(&db.pool)
            .await?;
            let rows = sqlx::query_as(&format!(
                "SELECT {ACTIVITY_COLS} FROM activity_logs WHERE {filter} ORDER BY id LIMIT $5 OFFSET $6"
            ))
            .bind(key_uid)
            .bind(from)
            .bind(to)
            .bind(&pattern)
            .bind(limit)
            .bind(offset)
            .fetch_all(&db.pool)
            .await?;
            Ok((rows, total))
        })
    }

    async fn latest_activity(&self, key_uid: &str) -> Result<Option<ActivityRecord>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {ACTIVITY_COLS} FROM activity_logs WHERE key_uid = $1 ORDER BY id DESC LIMIT 1"
            ))
            .bind(key_uid)
            .fetch_optional(&db.pool)
            .await?)
        })
    }
}

/// The activity-log writer's own connection (see [`ActivitySink::activity_writer`]).
#[derive(Debug)]
pub struct ActivityWriter(pub(super) WriterConn);

#[derive(Debug)]
pub(super) enum WriterConn {
    Sqlite(sqlx::SqliteConnection),
    Postgres(sqlx::PgConnection),
}
