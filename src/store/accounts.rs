//! Service keys, the installation id, accounts and access keys.

use super::{map_unique, now_ms, AccountRepo, InstallationRepo, Result, Store};
use crate::core::{AccessKey, AccountRecord};

impl AccountRepo for Store {
    async fn create_account(&self, name: &str) -> Result<i64> {
        on_db!(self, db => {
            sqlx::query_scalar("INSERT INTO accounts (name, created_at) VALUES ($1, $2) RETURNING id")
                .bind(name)
                .bind(now_ms())
                .fetch_one(&db.pool)
                .await
                .map_err(map_unique)
        })
    }

    async fn account_by_name(&self, name: &str) -> Result<Option<AccountRecord>> {
        on_db!(self, db => {
            Ok(
                sqlx::query_as("SELECT id, name, created_at FROM accounts WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&db.pool)
                    .await?,
            )
        })
    }

    async fn list_accounts(&self) -> Result<Vec<AccountRecord>> {
        on_db!(self, db => {
            Ok(
                sqlx::query_as("SELECT id, name, created_at FROM accounts ORDER BY id")
                    .fetch_all(&db.pool)
                    .await?,
            )
        })
    }

    async fn insert_access_key(
        &self,
        access_key: &str,
        account_id: i64,
        secret_ct: &[u8],
    ) -> Result<()> {
        on_db!(self, db => {
            sqlx::query(
                "INSERT INTO access_keys (access_key, account_id, secret_ct, status, created_at) VALUES ($1, $2, $3, 'active', $4)",
            )
            .bind(access_key)
            .bind(account_id)
            .bind(secret_ct)
            .bind(now_ms())
            .execute(&db.pool)
            .await
            .map_err(map_unique)?;
            Ok(())
        })
    }

    async fn access_key(&self, access_key: &str) -> Result<Option<AccessKey>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT access_key, account_id, secret_ct, status, created_at FROM access_keys WHERE access_key = $1",
            )
            .bind(access_key)
            .fetch_optional(&db.pool)
            .await?)
        })
    }

    async fn list_access_keys(&self) -> Result<Vec<AccessKey>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT access_key, account_id, secret_ct, status, created_at FROM access_keys ORDER BY created_at",
            )
            .fetch_all(&db.pool)
            .await?)
        })
    }

    async fn revoke_access_key(&self, access_key: &str) -> Result<bool> {
        on_db!(self, db => {
            let r = sqlx::query(
                "UPDATE access_keys SET status = 'revoked', revoked_at = $1 WHERE access_key = $2 AND status = 'active'",
            )
            .bind(now_ms())
            .bind(access_key)
            .execute(&db.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }
}

impl InstallationRepo for Store {
    async fn service_key(&self, name: &str) -> Result<Option<Vec<u8>>> {
        on_db!(self, db => {
            Ok(
                sqlx::query_scalar("SELECT cka_id FROM service_keys WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&db.pool)
                    .await?,
            )
        })
    }

    async fn put_service_key(&self, name: &str, cka_id: &[u8]) -> Result<()> {
        on_db!(self, db => {
            sqlx::query("INSERT INTO service_keys (name, cka_id, created_at) VALUES ($1, $2, $3)")
                .bind(name)
                .bind(cka_id)
                .bind(now_ms())
                .execute(&db.pool)
                .await
                .map_err(map_unique)?;
            Ok(())
        })
    }

    async fn service_key_ids(&self) -> Result<Vec<Vec<u8>>> {
        on_db!(self, db => {
            Ok(sqlx::query_scalar("SELECT cka_id FROM service_keys")
                .fetch_all(&db.pool)
                .await?)
        })
    }

    async fn installation_id(&self) -> Result<Option<String>> {
        on_db!(self, db => {
            Ok(
                sqlx::query_scalar("SELECT installation_id FROM installation WHERE singleton = 1")
                    .fetch_optional(&db.pool)
                    .await?,
            )
        })
    }

    async fn put_installation_id(&self, id: &str) -> Result<()> {
        on_db!(self, db => {
            sqlx::query(
                "INSERT INTO installation (singleton, installation_id, created_at) VALUES (1, $1, $2)",
            )
            .bind(id)
            .bind(now_ms())
            .execute(&db.pool)
            .await
            .map_err(map_unique)?;
            Ok(())
        })
    }

    async fn service_keys(&self) -> Result<Vec<(String, Vec<u8>)>> {
        on_db!(self, db => {
            Ok(
                sqlx::query_as("SELECT name, cka_id FROM service_keys ORDER BY name")
                    .fetch_all(&db.pool)
                    .await?,
            )
        })
    }
}
