//! Accounts, access keys and the service keys made at `init`.

use crate::store::{AccountRepo, InstallationRepo, NaverRepo};
use rand::distributions::Alphanumeric;
use rand::Rng;
use zeroize::Zeroizing;

use super::{service_keys, Engine, Error, Result};
use crate::core::now_ms;
use crate::hsm::{Hsm, KeySpec};
use crate::store::{Store, StoreError};

/// A secret key decrypted from the store, kept in memory for signature checks.
#[derive(Clone)]
pub(super) struct CachedSecret {
    pub account_id: i64,
    pub secret: Zeroizing<Vec<u8>>,
    /// When the store last said the access key is active.
    pub checked_at: std::time::Instant,
}

/// How long a cached access key is trusted before its status is read from
/// the store again. `hsm-kms admin revoke-access-key` runs in another
/// process and cannot clear this process's cache: a revocation takes effect
/// within this time on a running server.
pub const ACCESS_KEY_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// A freshly created access key; the secret is shown once.
pub struct NewAccessKey {
    /// The access key id.
    pub access_key: String,
    /// The secret key. Shown once, never logged, stored only encrypted.
    pub secret_key: Zeroizing<String>,
    /// Owning account.
    pub account_id: i64,
}

impl std::fmt::Debug for NewAccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewAccessKey")
            .field("access_key", &self.access_key)
            .field("secret_key", &"<redacted>")
            .finish()
    }
}

/// An access key as listed by the admin CLI (no secret).
#[derive(Debug, Clone, serde::Serialize)]
pub struct AccessKeyInfo {
    /// The access key id.
    pub access_key: String,
    /// Owning account's name.
    pub account: String,
    /// `active` or `revoked`.
    pub status: String,
    /// Creation time, ms.
    pub created_at: i64,
}

fn random_text(len: usize, upper: bool) -> String {
    let s: String = rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect();
    if upper {
        s.to_ascii_uppercase()
    } else {
        s
    }
}

/// Creates the service keys that do not exist yet (KEK, audit HMAC key,
/// attestation key, NAVER token-signing key). Idempotent; returns the names
/// created: on an existing installation this is the upgrade step that adds
/// the keys a newer release needs.
pub async fn ensure_service_keys(hsm: &Hsm, store: &Store) -> Result<Vec<&'static str>> {
    let wanted = [
        (service_keys::KEK, KeySpec::Aes256 { extractable: false }),
        (service_keys::AUDIT_HMAC, KeySpec::HmacSha256),
        (service_keys::ATTESTATION, KeySpec::EcP256),
        (service_keys::TOKEN_SIGNING, KeySpec::EcP256),
    ];
    let mut made = Vec::new();
    for (name, spec) in wanted {
        if store.service_key(name).await?.is_some() {
            continue;
        }
        let id = hsm.random(16).await?;
        hsm.generate(spec, format!("hsm-kms/service/{name}"), id.clone())
            .await?;
        // A crash here leaves an object no row names: the reconciler reports
        // it (never destroys it), the next `init` makes the key again, and
        // `hsm-kms admin reconcile --destroy-orphans --yes` removes the stray.
        store.put_service_key(name, &id).await?;
        made.push(name);
    }
    Ok(made)
}

impl Engine {
    /// Creates an account.
    pub async fn create_account(&self, name: &str) -> Result<i64> {
        if name.is_empty() || name.len() > 64 {
            return Err(Error::InvalidInput(
                "account name must be 1 to 64 characters".into(),
            ));
        }
        match self.store().create_account(name).await {
            Ok(id) => Ok(id),
            Err(StoreError::Conflict) => Err(Error::Conflict(format!("account {name} exists"))),
            Err(e) => Err(e.into()),
        }
    }

    /// The id of the account named `name`, if there is one.
    pub async fn account_id(&self, name: &str) -> Result<Option<i64>> {
        Ok(self.store().account_by_name(name).await?.map(|a| a.id))
    }

    /// Creates an access key for an account (by name). The secret is
    /// encrypted under the HSM KEK, with the access key id as AAD.
    pub async fn create_access_key(&self, account: &str) -> Result<NewAccessKey> {
        let acct = self
            .store()
            .account_by_name(account)
            .await?
            .ok_or(Error::NotFound("account"))?;
        let access_key = random_text(20, true);
        let secret_key = Zeroizing::new(random_text(40, false));
        let ct = self
            .hsm()
            .aes_gcm_encrypt(
                self.inner.kek_id.clone(),
                secret_key.as_bytes().to_vec(),
                access_key.as_bytes().to_vec(),
                None,
            )
            .await?;
        self.store()
            .insert_access_key(&access_key, acct.id, &ct)
            .await?;
        Ok(NewAccessKey {
            access_key,
            secret_key,
            account_id: acct.id,
        })
    }

    /// Lists access keys (no secrets).
    pub async fn list_access_keys(&self) -> Result<Vec<AccessKeyInfo>> {
        let accounts = self.store().list_accounts().await?;
        let rows = self.store().list_access_keys().await?;
        Ok(rows
            .into_iter()
            .map(|r| AccessKeyInfo {
                account: accounts
                    .iter()
                    .find(|a| a.id == r.account_id)
                    .map(|a| a.name.clone())
                    .unwrap_or_default(),
                access_key: r.access_key,
                status: r.status.as_str().to_string(),
                created_at: r.created_at,
            })
            .collect())
    }

    /// Revokes an access key; requests signed with it fail from now on.
    pub async fn revoke_access_key(&self, access_key: &str) -> Result<()> {
        if !self.store().revoke_access_key(access_key).await? {
            return Err(Error::NotFound("access key"));
        }
        self.inner.secrets.remove(access_key);
        Ok(())
    }

    /// Drops every cached access-key secret, so that a key revoked by
    /// another process (the `admin` CLI writes only the store) stops working
    /// here too. The scheduler calls it on every pass.
    pub(crate) fn forget_cached_secrets(&self) {
        self.inner.secrets.clear();
    }

    /// The account and secret of an active access key, for signature checks.
    /// The secret is decrypted in the token once and then cached in memory.
    /// Unknown and revoked keys give `Unauthenticated`.
    pub async fn access_key_secret(&self, access_key: &str) -> Result<(i64, Zeroizing<Vec<u8>>)> {
        let revoked = || Error::Unauthenticated("unknown or revoked access key".into());
        let seen = match self
            .inner
            .secrets
            .get_if(access_key, |c| c.checked_at.elapsed() < ACCESS_KEY_RECHECK)
        {
            Ok(c) => return Ok((c.account_id, c.secret)),
            Err(seen) => seen,
        };
        // Missing, or stale: ask the store whether the key is still active
        // (a stale entry's secret is reused, no second decryption).
        let stale = self.inner.secrets.get(access_key).ok();
        let Some(row) = self
            .store()
            .access_key(access_key)
            .await?
            .filter(|r| r.status == super::AccessKeyStatus::Active)
        else {
            if stale.is_some() {
                self.inner.secrets.remove(access_key);
            }
            return Err(revoked());
        };
        let secret = match stale {
            Some(c) if c.account_id == row.account_id => c.secret,
            _ => Zeroizing::new(
                self.hsm()
                    .aes_gcm_decrypt(
                        self.inner.kek_id.clone(),
                        row.secret_ct.clone(),
                        access_key.as_bytes().to_vec(),
                    )
                    .await?,
            ),
        };
        // Kept only if no invalidation (a revocation seen by this node or
        // announced by another) came in since `seen`.
        self.inner.secrets.fill(
            access_key.to_string(),
            CachedSecret {
                account_id: row.account_id,
                secret: secret.clone(),
                checked_at: std::time::Instant::now(),
            },
            seen,
        );
        Ok((row.account_id, secret))
    }
}

/// Milliseconds now (re-exported for the engine's modules).
pub(super) fn now() -> i64 {
    now_ms()
}

impl Engine {
    /// Creates an API Gateway API key (signature v1) for an account.
    pub async fn create_api_key(&self, account: &str) -> Result<String> {
        let acct = self
            .store()
            .account_by_name(account)
            .await?
            .ok_or(Error::NotFound("account"))?;
        let key = random_text(40, false);
        self.store().insert_api_key(&key, acct.id).await?;
        Ok(key)
    }

    /// The account owning an active API key.
    pub async fn api_key_account(&self, api_key: &str) -> Result<Option<i64>> {
        Ok(self.store().api_key_account(api_key).await?)
    }

    /// Revokes an API key.
    pub async fn revoke_api_key(&self, api_key: &str) -> Result<()> {
        if !self.store().revoke_api_key(api_key).await? {
            return Err(Error::NotFound("API key"));
        }
        Ok(())
    }
}

/// An access key row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccessKey {
    /// The access key id (public).
    pub access_key: String,
    /// Owning account.
    pub account_id: i64,
    /// Secret key encrypted under the KEK.
    pub secret_ct: Vec<u8>,
    /// Active or revoked.
    #[sqlx(try_from = "String")]
    pub status: crate::core::AccessKeyStatus,
    /// Creation time, ms.
    pub created_at: i64,
}

/// An account row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AccountRecord {
    /// Account id.
    pub id: i64,
    /// Account name.
    pub name: String,
    /// Creation time, ms.
    pub created_at: i64,
}
