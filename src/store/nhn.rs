//! NHN Secure Key Manager metadata: projects, appkeys, User Access Keys, key
//! stores, the NHN side of keys, and key-store credentials.

use super::{map_unique, now_ms, NhnRepo, Result, Store, StoreError};
use crate::core::nhn::{
    CredentialKind, NhnCredential, NhnKeyFilter, NhnKeyMeta, NhnKeyStore, NhnProjectRecord,
    NhnUserAccessKeyRecord, UserAccessKeyRequirement,
};
use crate::core::KeyId;

/// The fields of a key store to create.
#[derive(Debug, Clone)]
pub struct NewKeyStore {
    /// Owning project.
    pub project_id: i64,
    /// Name.
    pub name: String,
    /// Description.
    pub description: String,
    /// IPv4 authentication on.
    pub ip4_auth_use: bool,
    /// MAC authentication on.
    pub mac_auth_use: bool,
    /// Certificate authentication on.
    pub certificate_auth_use: bool,
    /// Export policy.
    pub allow_export: bool,
    /// Creator.
    pub creation_user: String,
}

/// A credential to add.
#[derive(Debug, Clone)]
pub struct NewCredential {
    /// Key store.
    pub key_store_id: i64,
    /// IPv4 address, MAC address or certificate.
    pub kind: CredentialKind,
    /// Address or certificate name.
    pub value: String,
    /// Description.
    pub description: String,
    /// SHA-256 of the certificate DER.
    pub cert_sha256: Option<Vec<u8>>,
    /// Certificate DER.
    pub cert_der: Option<Vec<u8>>,
    /// Expiry, ms.
    pub expires_at: Option<i64>,
    /// PKCS#12 under the KEK.
    pub p12_ct: Option<Vec<u8>>,
    /// Creator.
    pub creation_user: String,
}

const PROJECT_COLS: &str = "id, name, account_id, require_user_access_key, require_user_access_key_on_data, ca_cka_id, ca_cert, created_at";
const STORE_COLS: &str = "id, project_id, name, description, ip4_auth_use, mac_auth_use, certificate_auth_use, allow_export, creation_user, created_at, last_change_user, updated_at";
const NHN_KEY_COLS: &str = "key_id, key_store_id, description, nhn_type, extractable, last_access_at, creation_user, last_change_user";
const CRED_COLS: &str = "id, key_store_id, kind, value, description, status, deletion_at, last_access_at, cert_sha256, cert_der, expires_at, p12_ct, creation_user, created_at, last_change_user, updated_at";

impl NhnRepo for Store {
    async fn nhn_create_project(
        &self,
        name: &str,
        account_name: &str,
        require: UserAccessKeyRequirement,
    ) -> Result<i64> {
        on_db!(self, db => {
            let now = now_ms();
            let mut tx = db.begin_write().await?;
            let acct: i64 = sqlx::query_scalar(
                "INSERT INTO accounts (name, created_at) VALUES ($1, $2) RETURNING id",
            )
            .bind(account_name)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_unique)?;
            let id: i64 = sqlx::query_scalar(
                "INSERT INTO nhn_projects (name, account_id, require_user_access_key, require_user_access_key_on_data, created_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
            )
            .bind(name)
            .bind(acct)
            .bind(require.management)
            .bind(require.data)
            .bind(now)
            .fetch_one(&mut *tx)
            .await
            .map_err(map_unique)?;
            tx.commit().await?;
            Ok(id)
        })
    }

    async fn nhn_project_by_name(&self, name: &str) -> Result<Option<NhnProjectRecord>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {PROJECT_COLS} FROM nhn_projects WHERE name = $1"
            ))
            .bind(name)
            .fetch_optional(&db.pool)
            .await?)
        })
    }

    async fn nhn_project(&self, id: i64) -> Result<Option<NhnProjectRecord>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {PROJECT_COLS} FROM nhn_projects WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&db.pool)
            .await?)
        })
    }

    async fn nhn_set_project_ca(&self, id: i64, cka_id: &[u8], cert: &[u8]) -> Result<bool> {
        on_db!(self, db => {
            let r = sqlx::query(
                "UPDATE nhn_projects SET ca_cka_id = $1, ca_cert = $2 WHERE id = $3 AND ca_cka_id IS NULL",
            )
            .bind(cka_id)
            .bind(cert)
            .bind(id)
            .execute(&db.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    async fn nhn_ca_certs(&self) -> Result<Vec<Vec<u8>>> {
        on_db!(self, db => {
            Ok(
                sqlx::query_scalar("SELECT ca_cert FROM nhn_projects WHERE ca_cert IS NOT NULL")
                    .fetch_all(&db.pool)
                    .await?,
            )
        })
    }

    async fn nhn_ca_key_ids(&self) -> Result<Vec<Vec<u8>>> {
        on_db!(self, db => {
            Ok(
                sqlx::query_scalar("SELECT ca_cka_id FROM nhn_projects WHERE ca_cka_id IS NOT NULL")
                    .fetch_all(&db.pool)
                    .await?,
            )
        })
    }

    async fn nhn_insert_appkey(&self, appkey: &str, project_id: i64) -> Result<()> {
        on_db!(self, db => {
            sqlx::query("INSERT INTO nhn_appkeys (appkey, project_id, created_at) VALUES ($1, $2, $3)")
                .bind(appkey)
                .bind(project_id)
                .bind(now_ms())
                .execute(&db.pool)
                .await
                .map_err(map_unique)?;
            Ok(())
        })
    }

    async fn nhn_project_by_appkey(&self, appkey: &str) -> Result<Option<NhnProjectRecord>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT p.id, p.name, p.account_id, p.require_user_access_key, p.require_user_access_key_on_data, p.ca_cka_id, p.ca_cert, p.created_at
                 FROM nhn_appkeys a JOIN nhn_projects p ON p.id = a.project_id WHERE a.appkey = $1 AND a.status = 'active'",
            )
            .bind(appkey)
            .fetch_optional(&db.pool)
            .await?)
        })
    }

    async fn nhn_revoke_appkey(&self, appkey: &str) -> Result<bool> {
        on_db!(self, db => {
            let r = sqlx::query(
                "UPDATE nhn_appkeys SET status = 'revoked', revoked_at = $1 WHERE appkey = $2 AND status = 'active'",
            )
            .bind(now_ms())
            .bind(appkey)
            .execute(&db.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    async fn nhn_rotate_appkey(&self, old: &str, new: &str) -> Result<bool> {
        on_db!(self, db => {
            let now = now_ms();
            let mut tx = db.begin_write().await?;
            let project: Option<i64> = sqlx::query_scalar(
                "SELECT project_id FROM nhn_appkeys WHERE appkey = $1 AND status = 'active'",
            )
            .bind(old)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(project) = project else {
                return Ok(false);
            };
            sqlx::query("UPDATE nhn_appkeys SET status = 'revoked', revoked_at = $1 WHERE appkey = $2")
                .bind(now)
                .bind(old)
                .execute(&mut *tx)
                .await?;
            sqlx::query(
                "INSERT INTO nhn_appkeys (appkey, project_id, status, created_at) VALUES ($1, $2, 'active', $3)",
            )
            .bind(new)
            .bind(project)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(map_unique)?;
            tx.commit().await?;
            Ok(true)
        })
    }

    async fn nhn_update_project(
        &self,
        name: &str,
        management: Option<bool>,
        data: Option<bool>,
    ) -> Result<bool> {
        on_db!(self, db => {
            let r = sqlx::query(
                "UPDATE nhn_projects SET require_user_access_key = COALESCE($1, require_user_access_key),
                 require_user_access_key_on_data = COALESCE($2, require_user_access_key_on_data) WHERE name = $3",
            )
            .bind(management)
            .bind(data)
            .bind(name)
            .execute(&db.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    async fn nhn_projects(&self) -> Result<Vec<NhnProjectRecord>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {PROJECT_COLS} FROM nhn_projects ORDER BY id"
            ))
            .fetch_all(&db.pool)
            .await?)
        })
    }

    async fn nhn_insert_user_access_key(
        &self,
        access_key: &str,
        project_id: i64,
        secret_sha256: &[u8],
    ) -> Result<()> {
        on_db!(self, db => {
            sqlx::query(
                "INSERT INTO nhn_user_access_keys (access_key, project_id, secret_sha256, status, created_at) VALUES ($1, $2, $3, 'active', $4)",
            )
            .bind(access_key)
            .bind(project_id)
            .bind(secret_sha256)
            .bind(now_ms())
            .execute(&db.pool)
            .await
            .map_err(map_unique)?;
            Ok(())
        })
    }

    async fn nhn_user_access_key(
        &self,
        access_key: &str,
    ) -> Result<Option<NhnUserAccessKeyRecord>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT access_key, project_id, secret_sha256, status FROM nhn_user_access_keys WHERE access_key = $1",
            )
            .bind(access_key)
            .fetch_optional(&db.pool)
            .await?)
        })
    }

    async fn nhn_revoke_user_access_key(&self, access_key: &str) -> Result<bool> {
        on_db!(self, db => {
            let r = sqlx::query(
                "UPDATE nhn_user_access_keys SET status = 'revoked' WHERE access_key = $1 AND status = 'active'",
            )
            .bind(access_key)
            .execute(&db.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    async fn nhn_create_key_store(&self, s: &NewKeyStore) -> Result<i64> {
        on_db!(self, db => {
            let now = now_ms();
            sqlx::query_scalar(
                "INSERT INTO nhn_key_stores (project_id, name, description, ip4_auth_use, mac_auth_use, certificate_auth_use, allow_export, creation_user, created_at, last_change_user, updated_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id",
            )
            .bind(s.project_id)
            .bind(&s.name)
            .bind(&s.description)
            .bind(s.ip4_auth_use)
            .bind(s.mac_auth_use)
            .bind(s.certificate_auth_use)
            .bind(s.allow_export)
            .bind(&s.creation_user)
            .bind(now)
            .bind(&s.creation_user)
            .bind(now)
            .fetch_one(&db.pool)
            .await
            .map_err(map_unique)
        })
    }

    async fn nhn_create_key_store_with_id(&self, s: &NewKeyStore, id: i64) -> Result<i64> {
        // PostgreSQL's identity column takes a given id only with
        // OVERRIDING SYSTEM VALUE, and its sequence does not move past it:
        // it is set to the highest id in the same transaction, or a later
        // generated id would collide. SQLite's AUTOINCREMENT counter moves
        // past an inserted id by itself.
        const COLUMNS: &str = "(id, project_id, name, description, ip4_auth_use, mac_auth_use, certificate_auth_use, allow_export, creation_user, created_at, last_change_user, updated_at)";
        const VALUES: &str = "VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)";
        let (sql, bump) = match &self.db {
            super::Db::Sqlite(_) => (format!("INSERT INTO nhn_key_stores {COLUMNS} {VALUES}"), None),
            super::Db::Postgres(_) => (
                format!("INSERT INTO nhn_key_stores {COLUMNS} OVERRIDING SYSTEM VALUE {VALUES}"),
                Some(
                    "SELECT setval(pg_get_serial_sequence('nhn_key_stores', 'id'), (SELECT MAX(id) FROM nhn_key_stores))",
                ),
            ),
        };
        on_db!(self, db => {
            let now = now_ms();
            let mut tx = db.begin_write().await?;
            sqlx::query(&sql)
                .bind(id)
                .bind(s.project_id)
                .bind(&s.name)
                .bind(&s.description)
                .bind(s.ip4_auth_use)
                .bind(s.mac_auth_use)
                .bind(s.certificate_auth_use)
                .bind(s.allow_export)
                .bind(&s.creation_user)
                .bind(now)
                .bind(&s.creation_user)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(map_unique)?;
            if let Some(bump) = bump {
                sqlx::query(bump).execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok(id)
        })
    }

    async fn nhn_update_key_store(&self, s: &NhnKeyStore) -> Result<()> {
        on_db!(self, db => {
            sqlx::query(
                "UPDATE nhn_key_stores SET description = $1, ip4_auth_use = $2, mac_auth_use = $3, certificate_auth_use = $4, allow_export = $5, last_change_user = $6, updated_at = $7 WHERE id = $8",
            )
            .bind(&s.description)
            .bind(s.ip4_auth_use)
            .bind(s.mac_auth_use)
            .bind(s.certificate_auth_use)
            .bind(s.allow_export)
            .bind(&s.last_change_user)
            .bind(now_ms())
            .bind(s.id)
            .execute(&db.pool)
            .await?;
            Ok(())
        })
    }

    async fn nhn_key_stores(&self, project_id: i64) -> Result<Vec<NhnKeyStore>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {STORE_COLS} FROM nhn_key_stores WHERE project_id = $1 ORDER BY id"
            ))
            .bind(project_id)
            .fetch_all(&db.pool)
            .await?)
        })
    }

    async fn nhn_key_store(&self, id: i64) -> Result<Option<NhnKeyStore>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {STORE_COLS} FROM nhn_key_stores WHERE id = $1"
            ))
            .bind(id)
            .fetch_optional(&db.pool)
            .await?)
        })
    }

    async fn nhn_key_store_by_name(
        &self,
        project_id: i64,
        name: &str,
    ) -> Result<Option<NhnKeyStore>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {STORE_COLS} FROM nhn_key_stores WHERE project_id = $1 AND name = $2"
            ))
            .bind(project_id)
            .bind(name)
            .fetch_optional(&db.pool)
            .await?)
        })
    }

    async fn nhn_insert_key(&self, k: &NhnKeyMeta) -> Result<()> {
        on_db!(self, db => {
            sqlx::query(&format!(
                "INSERT INTO nhn_keys ({NHN_KEY_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
            ))
            .bind(k.key_id)
            .bind(k.key_store_id)
            .bind(&k.description)
            .bind(&k.nhn_type)
            .bind(k.extractable)
            .bind(k.last_access_at)
            .bind(&k.creation_user)
            .bind(&k.last_change_user)
            .execute(&db.pool)
            .await
            .map_err(map_unique)?;
            Ok(())
        })
    }

    async fn nhn_key(&self, key_id: KeyId) -> Result<Option<NhnKeyMeta>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {NHN_KEY_COLS} FROM nhn_keys WHERE key_id = $1"
            ))
            .bind(key_id)
            .fetch_optional(&db.pool)
            .await?)
        })
    }

    async fn nhn_touch_key_change(&self, key_id: KeyId, user: &str) -> Result<()> {
        on_db!(self, db => {
            sqlx::query("UPDATE nhn_keys SET last_change_user = $1 WHERE key_id = $2")
                .bind(user)
                .bind(key_id)
                .execute(&db.pool)
                .await?;
            sqlx::query("UPDATE keys SET updated_at = $1 WHERE id = $2")
                .bind(now_ms())
                .bind(key_id)
                .execute(&db.pool)
                .await?;
            Ok(())
        })
    }

    async fn nhn_flush_access(&self, keys: &[(i64, i64)], creds: &[(i64, i64)]) -> Result<()> {
        on_db!(self, db => {
            let mut tx = db.begin_write().await?;
            for (id, at) in keys {
                sqlx::query(&format!("UPDATE nhn_keys SET last_access_at = {}(COALESCE(last_access_at, 0), $1) WHERE key_id = $2", db.greatest()))
                    .bind(at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            for (id, at) in creds {
                sqlx::query(&format!("UPDATE nhn_credentials SET last_access_at = {}(COALESCE(last_access_at, 0), $1) WHERE id = $2", db.greatest()))
                    .bind(at)
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        })
    }

    async fn nhn_list_keys(
        &self,
        key_store_id: i64,
        f: &NhnKeyFilter,
    ) -> Result<(Vec<String>, i64)> {
        on_db!(self, db => {
            let status = match f.active {
                Some(true) => " AND k.status = 'ENABLE'",
                Some(false) => " AND k.status <> 'ENABLE'",
                None => "",
            };
            let from = format!(
                "FROM nhn_keys n JOIN keys k ON k.id = n.key_id
                 WHERE n.key_store_id = $1 AND k.status <> 'DELETED'
                   AND ($2 IS NULL OR n.nhn_type = $2) AND ($3 IS NULL OR {}(k.name, $3) > 0){status}",
                db.position()
            );
            let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) {from}"))
                .bind(key_store_id)
                .bind(&f.nhn_type)
                .bind(&f.name)
                .fetch_one(&db.pool)
                .await?;
            let uids: Vec<String> =
                sqlx::query_scalar(&format!("SELECT k.uid {from} ORDER BY k.id LIMIT $4 OFFSET $5"))
                    .bind(key_store_id)
                    .bind(&f.nhn_type)
                    .bind(&f.name)
                    .bind(f.limit)
                    .bind(f.offset)
                    .fetch_all(&db.pool)
                    .await?;
            Ok((uids, total))
        })
    }

    async fn nhn_insert_credential(
        &self,
        c: &NewCredential,
        max_of_kind: Option<i64>,
    ) -> Result<i64> {
        on_db!(self, db => {
            let now = now_ms();
            // In a write transaction: the count and the insert are one step
            // for concurrent additions on either engine.
            let mut tx = db.begin_write().await?;
            let id: Option<i64> = sqlx::query_scalar(
                "INSERT INTO nhn_credentials (key_store_id, kind, value, description, status, cert_sha256, cert_der, expires_at, p12_ct, creation_user, created_at, last_change_user, updated_at)
                 SELECT $1, $2, $3, $4, 'active', $5, $6, $7, $8, $9, $10, $11, $12
                 WHERE (SELECT COUNT(*) FROM nhn_credentials WHERE key_store_id = $1 AND kind = $2 AND status <> 'deleted') < $13
                 RETURNING id",
            )
            .bind(c.key_store_id)
            .bind(c.kind.as_str())
            .bind(&c.value)
            .bind(&c.description)
            .bind(&c.cert_sha256)
            .bind(&c.cert_der)
            .bind(c.expires_at)
            .bind(&c.p12_ct)
            .bind(&c.creation_user)
            .bind(now)
            .bind(&c.creation_user)
            .bind(now)
            .bind(max_of_kind.unwrap_or(i64::MAX))
            .fetch_optional(&mut *tx)
            .await
            .map_err(map_unique)?;
            let Some(id) = id else {
                tx.rollback().await?;
                return Err(StoreError::LimitReached("credentials"));
            };
            tx.commit().await?;
            Ok(id)
        })
    }

    async fn nhn_credentials(
        &self,
        key_store_id: i64,
        kind: CredentialKind,
    ) -> Result<Vec<NhnCredential>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {CRED_COLS} FROM nhn_credentials WHERE key_store_id = $1 AND kind = $2 AND status <> 'deleted' ORDER BY id"
            ))
            .bind(key_store_id)
            .bind(kind.as_str())
            .fetch_all(&db.pool)
            .await?)
        })
    }

    async fn nhn_credential(
        &self,
        key_store_id: i64,
        kind: CredentialKind,
        value: &str,
    ) -> Result<Option<NhnCredential>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {CRED_COLS} FROM nhn_credentials WHERE key_store_id = $1 AND kind = $2 AND value = $3 AND status <> 'deleted'"
            ))
            .bind(key_store_id)
            .bind(kind.as_str())
            .bind(value)
            .fetch_optional(&db.pool)
            .await?)
        })
    }

    async fn nhn_request_credential_deletion(&self, id: i64, at: i64, user: &str) -> Result<bool> {
        on_db!(self, db => {
            let r = sqlx::query(
                "UPDATE nhn_credentials SET status = 'deleting', deletion_at = $1, last_change_user = $2, updated_at = $3 WHERE id = $4 AND status = 'active'",
            )
            .bind(at)
            .bind(user)
            .bind(now_ms())
            .bind(id)
            .execute(&db.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    async fn nhn_delete_credential(&self, id: i64, at: i64, user: &str) -> Result<bool> {
        on_db!(self, db => {
            let r = sqlx::query(
                "UPDATE nhn_credentials SET status = 'deleted', deletion_at = $1, password_ct = NULL, p12_ct = NULL, last_change_user = $2, updated_at = $3 WHERE id = $4 AND status <> 'deleted'",
            )
            .bind(at)
            .bind(user)
            .bind(now_ms())
            .bind(id)
            .execute(&db.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    async fn nhn_credentials_due_for_deletion(&self, now: i64) -> Result<Vec<i64>> {
        on_db!(self, db => {
            Ok(sqlx::query_scalar(
                "SELECT id FROM nhn_credentials WHERE status = 'deleting' AND deletion_at <= $1",
            )
            .bind(now)
            .fetch_all(&db.pool)
            .await?)
        })
    }

    async fn nhn_certificate_by_hash(&self, sha256: &[u8]) -> Result<Option<NhnCredential>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(&format!(
                "SELECT {CRED_COLS} FROM nhn_credentials WHERE kind = 'certificate' AND cert_sha256 = $1 AND status <> 'deleted'"
            ))
            .bind(sha256)
            .fetch_optional(&db.pool)
            .await?)
        })
    }
}
