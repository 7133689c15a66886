//! Key lifecycle: creation, versions and rotation, enable/disable, the
//! two-step deletion, memo and rotation settings.
//!
//! Every HSM object is written between a `pending` row and its activation, and
//! destroyed between a `destroying` mark and `destroyed`, so that the
//! reconciler can finish or undo whatever a crash interrupted.

use crate::store::KeyRepo;
use std::sync::Arc;

use super::accounts::now;
use super::{fault_point, Engine, Error, KeyEntry, Result};
use crate::hsm::{KeySpec, KeyUsage};
use super::{KeyStatus, VersionState};
use crate::store::NewKey;

/// Default automatic-rotation period, days.
pub const ROTATION_PERIOD_DEFAULT: i64 = 90;
/// Waiting period between a deletion request and the destruction: 72 hours.
pub const DELETION_WAIT_MS: i64 = 72 * 3600 * 1000;
/// Highest version number a key may reach.
pub const MAX_VERSIONS: i64 = 100;
const DAY_MS: i64 = 24 * 3600 * 1000;
/// Reads and re-applies of one key change before giving up on a key that
/// other requests keep changing.
const MODIFY_ATTEMPTS: usize = 16;

/// The key types the engine makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// AES-256-GCM.
    Aes256,
    /// RSA-2048 (OAEP encryption and PKCS#1 v1.5 signatures).
    Rsa2048,
    /// ECDSA P-256.
    Ecdsa,
}

impl KeyType {
    /// NAVER name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyType::Aes256 => "AES256",
            KeyType::Rsa2048 => "RSA2048",
            KeyType::Ecdsa => "ECDSA",
        }
    }

    /// Parses a NAVER name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "AES256" => Some(KeyType::Aes256),
            "RSA2048" => Some(KeyType::Rsa2048),
            "ECDSA" => Some(KeyType::Ecdsa),
            _ => None,
        }
    }

    fn spec(self) -> KeySpec {
        match self {
            KeyType::Aes256 => KeySpec::Aes256 { extractable: false },
            KeyType::Rsa2048 => KeySpec::Rsa2048 {
                usage: KeyUsage::CryptAndSign,
                extractable: false,
            },
            KeyType::Ecdsa => KeySpec::EcP256,
        }
    }
}

/// What a client asks for when creating a key.
#[derive(Debug, Clone)]
pub struct CreateKeyRequest {
    /// Name, `[A-Za-z][A-Za-z0-9_-]{2,14}`, unique in the account.
    pub name: String,
    /// Key type.
    pub key_type: KeyType,
    /// Memo, at most 100 characters.
    pub memo: String,
    /// Convergent encryption (AES256 only).
    pub is_convergent: bool,
    /// Automatic rotation.
    pub is_auto_rotation: bool,
    /// Rotation period in days (1 to 730); default 90 when rotation is on.
    pub rotation_period: Option<i64>,
    /// NAVER `protectionType` (`BASIC` or `COMMON_HSM`).
    pub protection_type: String,
}

/// Re-exported view types: the dialects format [`KeyEntry`] directly.
pub type KeyView = KeyEntry;
/// A version as the dialects see it.
pub type VersionView = crate::store::VersionRow;

fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=15).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// Checks a rotation period in days.
pub fn check_rotation_period(days: i64) -> Result<i64> {
    if (1..=730).contains(&days) {
        Ok(days)
    } else {
        Err(Error::InvalidInput(
            "rotationPeriod must be between 1 and 730 days".into(),
        ))
    }
}

/// Checks a memo.
pub fn check_memo(memo: &str) -> Result<()> {
    if memo.chars().count() > 100 {
        return Err(Error::InvalidInput(
            "memo must be at most 100 characters".into(),
        ));
    }
    Ok(())
}

/// The account (or NHN project) already has `max` keys.
pub(super) fn keys_limit(max: i64) -> Error {
    Error::LimitExceeded(format!(
        "the account has reached its limit of {max} keys (limits.max_keys_per_account); \
         destroy keys it no longer needs"
    ))
}

/// A version whose objects this process made and whose activation failed.
#[derive(Debug, Clone)]
pub(crate) struct Abandoned {
    /// Owning key.
    pub(crate) key_id: i64,
    /// Version number.
    pub(crate) version: i64,
    /// The key's uid (cache, log).
    pub(crate) uid: String,
    /// `CKA_ID` (or NHN secret label) of the version's object.
    pub(crate) cka_id: Vec<u8>,
    /// `CKA_ID` of the convergent HMAC key, if any.
    pub(crate) aux_id: Option<Vec<u8>>,
}

fn label(uid: &str, version: i64) -> String {
    format!("hsm-kms/{uid}/v{version}")
}

impl Engine {
    /// Creates a key and its first version in the token.
    pub async fn create_key(
        &self,
        account_id: i64,
        req: CreateKeyRequest,
    ) -> Result<Arc<KeyEntry>> {
        if !valid_name(&req.name) {
            return Err(Error::InvalidInput(
                "keyName must be 3 to 15 letters, digits, '-' or '_', starting with a letter"
                    .into(),
            ));
        }
        check_memo(&req.memo)?;
        if req.is_convergent && req.key_type != KeyType::Aes256 {
            return Err(Error::InvalidInput(
                "isConvergent is only allowed for AES256 keys".into(),
            ));
        }
        let rotation_period = match (req.is_auto_rotation, req.rotation_period) {
            (true, p) => Some(check_rotation_period(p.unwrap_or(ROTATION_PERIOD_DEFAULT))?),
            (false, Some(p)) => {
                check_rotation_period(p)?;
                None
            }
            (false, None) => None,
        };
        let uid = hex::encode(self.hsm().random(32).await?);
        let cka_id = self.hsm().random(16).await?;
        let aux_id = if req.is_convergent {
            Some(self.hsm().random(16).await?)
        } else {
            None
        };
        let new = NewKey {
            uid: uid.clone(),
            account_id,
            name: req.name.clone(),
            key_type: req.key_type.as_str().to_string(),
            memo: req.memo,
            protection_type: req.protection_type,
            is_convergent: req.is_convergent,
            is_auto_rotation: req.is_auto_rotation,
            rotation_period,
            next_rotation_at: rotation_period.map(|d| now() + d * DAY_MS),
        };
        let max = self.limits().keys_per_account;
        let caps = crate::store::KeyCaps {
            per_account: max,
            of_type: None,
        };
        let key_id = match self
            .store()
            .insert_key_pending(&new, &cka_id, aux_id.as_deref(), caps)
            .await
        {
            Ok(id) => id,
            Err(crate::store::StoreError::Conflict) => {
                return Err(Error::Conflict(format!(
                    "a key named {} already exists",
                    req.name
                )))
            }
            Err(crate::store::StoreError::LimitReached(_)) => return Err(keys_limit(max)),
            Err(e) => return Err(e.into()),
        };
        fault_point("create:after-pending");
        self.make_version_objects(
            key_id,
            1,
            &uid,
            req.key_type.spec(),
            &cka_id,
            aux_id.as_deref(),
        )
        .await?;
        fault_point("create:after-hsm");
        self.activate_made_version(
            Abandoned {
                key_id,
                version: 1,
                uid: uid.clone(),
                cka_id,
                aux_id,
            },
            None,
        )
        .await?;
        self.invalidate(&uid);
        self.key_entry(&uid).await
    }

    /// Activates a version whose objects were just made. When the store
    /// refuses (a full or read-only disk), the version is rolled back
    /// ([`Engine::roll_back_version`]) so that no object outlives the
    /// failed request; if even that cannot be written now, each scheduler
    /// pass tries again, and the start-up reconciler's `pending` rule
    /// covers a restart. Returns the store's error, or `Ok` when the
    /// activation did commit after all.
    pub(super) async fn activate_made_version(
        &self,
        made: Abandoned,
        next_rotation_at: Option<i64>,
    ) -> Result<()> {
        let err = match self
            .store()
            .activate_version(made.key_id, made.version, next_rotation_at)
            .await
        {
            Ok(()) => return Ok(()),
            Err(e) => Error::from(e),
        };
        self.invalidate(&made.uid);
        match self.roll_back_version(&made).await {
            Ok(true) => {
                tracing::warn!(key = %made.uid, version = made.version, "activation failed; the version's objects were destroyed and its row removed");
                Err(err)
            }
            Ok(false) => Ok(()),
            Err(e) => {
                tracing::warn!(key = %made.uid, version = made.version, error = %e, "activation failed and so did its rollback; retried by the scheduler");
                self.inner
                    .abandoned
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(made);
                Err(err)
            }
        }
    }

    /// Rolls back a version this process wrote `pending` and whose objects
    /// it made, on positive proof only: the store must first commit the
    /// decision (`pending` to `destroying`, for the row with this `CKA_ID`);
    /// then the objects are destroyed and the row removed. Returns `false`
    /// when the version turned out active (its activation committed), and
    /// leaves it alone. Safe to repeat.
    pub(super) async fn roll_back_version(&self, v: &Abandoned) -> Result<bool> {
        match self
            .store()
            .mark_pending_destroying(v.key_id, v.version, &v.cka_id)
            .await?
        {
            Some(VersionState::Active) => return Ok(false),
            Some(VersionState::Destroying) => {}
            _ => return Ok(true),
        }
        self.hsm().destroy_id(v.cka_id.clone()).await?;
        if let Some(aux) = &v.aux_id {
            self.hsm().destroy_id(aux.clone()).await?;
        }
        self.store()
            .delete_version_in_state(v.key_id, v.version, VersionState::Destroying)
            .await?;
        self.invalidate(&v.uid);
        Ok(true)
    }

    /// Retries the rollbacks the store refused earlier (scheduler pass).
    /// Returns how many are still waiting.
    pub(super) async fn retry_abandoned(&self) -> usize {
        let todo = std::mem::take(
            &mut *self
                .inner
                .abandoned
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let mut left = Vec::new();
        for v in todo {
            match self.roll_back_version(&v).await {
                Ok(_) => {
                    tracing::info!(key = %v.uid, version = v.version, "rolled back a version whose activation failed")
                }
                Err(_) => left.push(v),
            }
        }
        let mut q = self
            .inner
            .abandoned
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        q.extend(left);
        q.len()
    }

    /// Generates the objects of one version; on failure removes whatever was
    /// made and the pending row, so no half-made version survives.
    pub(super) async fn make_version_objects(
        &self,
        key_id: i64,
        version: i64,
        uid: &str,
        spec: KeySpec,
        cka_id: &[u8],
        aux_id: Option<&[u8]>,
    ) -> Result<()> {
        let res = async {
            self.hsm()
                .generate(spec, label(uid, version), cka_id.to_vec())
                .await?;
            if let Some(aux) = aux_id {
                self.hsm()
                    .generate(
                        KeySpec::HmacSha256,
                        format!("{}/convergent", label(uid, version)),
                        aux.to_vec(),
                    )
                    .await?;
            }
            Ok::<(), crate::hsm::HsmError>(())
        }
        .await;
        if let Err(e) = res {
            tracing::error!(error = %e, key = uid, version, "key generation failed; rolling back");
            let ids: Vec<Vec<u8>> = std::iter::once(cka_id.to_vec())
                .chain(aux_id.map(<[u8]>::to_vec))
                .collect();
            if self.destroy_ids(&ids).await.is_ok() {
                self.store().delete_pending_version(key_id, version).await?;
            } else {
                // The token is unusable, and the generation may have been
                // done before the fault: the pending row is the only record
                // of that object. Keep it, and finish the rollback once the
                // token is back (the start-up reconciler does it otherwise).
                self.roll_back_later(key_id, version, ids);
            }
            return Err(e.into());
        }
        Ok(())
    }

    async fn destroy_ids(&self, ids: &[Vec<u8>]) -> crate::hsm::Result<()> {
        for id in ids {
            self.hsm().destroy_id(id.clone()).await?;
        }
        Ok(())
    }

    /// Rolls back a pending version whose objects could not be destroyed
    /// (the token was unusable): waits for the token, destroys them, then
    /// deletes the row. Only this process's own failed creation is touched.
    pub(crate) fn roll_back_later(&self, key_id: i64, version: i64, ids: Vec<Vec<u8>>) {
        tracing::warn!(
            key_id,
            version,
            "the token is unusable: the pending version stays until its objects can be destroyed"
        );
        let engine = self.clone();
        tokio::spawn(async move {
            loop {
                engine
                    .hsm()
                    .wait_ready(std::time::Duration::from_secs(5))
                    .await;
                if engine.destroy_ids(&ids).await.is_ok() {
                    match engine.store().delete_pending_version(key_id, version).await {
                        Ok(()) => {
                            tracing::info!(key_id, version, "rolled back the pending version");
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, key_id, version, "deleting the pending version failed")
                        }
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    /// Keys of an account, newest first: (keys, total count).
    pub async fn list_keys(
        &self,
        account_id: i64,
        page_no: i64,
        page_size: i64,
    ) -> Result<(Vec<KeyEntry>, i64)> {
        let (rows, total) = self
            .store()
            .list_keys(account_id, (page_no - 1) * page_size, page_size)
            .await?;
        let mut out = Vec::with_capacity(rows.len());
        for key in rows {
            let versions = self.store().versions(key.id).await?;
            out.push(KeyEntry { key, versions });
        }
        Ok((out, total))
    }

    /// Reads the key, applies `change` and writes the row back only if no
    /// other write came in between (the row's revision); on a lost race it
    /// reads again and re-applies `change`, so concurrent changes of
    /// different fields (memo, rotation period, status) all persist.
    async fn modify(
        &self,
        account_id: i64,
        uid: &str,
        change: impl Fn(&mut KeyEntry) -> Result<()>,
    ) -> Result<Arc<KeyEntry>> {
        for _ in 0..MODIFY_ATTEMPTS {
            let mut e = (*self.owned_key(account_id, uid).await?).clone();
            change(&mut e)?;
            let written = self.store().update_key(&e.key).await?;
            // Either way the cached entry is stale now.
            self.invalidate(uid);
            if written {
                return self.key_entry(uid).await;
            }
        }
        Err(Error::Conflict(
            "the key is being changed by other requests; retry".into(),
        ))
    }

    /// Enables a disabled key.
    pub async fn enable_key(&self, account_id: i64, uid: &str) -> Result<Arc<KeyEntry>> {
        self.modify(account_id, uid, |e| {
            if e.key.status == KeyStatus::PendingDeletion {
                return Err(Error::InvalidState(
                    "the key is pending deletion; cancel the deletion first".into(),
                ));
            }
            if e.key.status != KeyStatus::Enabled {
                e.key.status = KeyStatus::Enabled;
                e.key.status_at = now();
            }
            Ok(())
        })
        .await
    }

    /// Disables an enabled key: every version stops working.
    pub async fn disable_key(&self, account_id: i64, uid: &str) -> Result<Arc<KeyEntry>> {
        self.modify(account_id, uid, |e| {
            if e.key.status == KeyStatus::PendingDeletion {
                return Err(Error::InvalidState("the key is pending deletion".into()));
            }
            if e.key.status != KeyStatus::Disabled {
                e.key.status = KeyStatus::Disabled;
                e.key.status_at = now();
            }
            Ok(())
        })
        .await
    }

    /// Enables or disables one version. The newest version cannot be
    /// disabled, and versions of a key that is not enabled cannot change.
    pub async fn set_version_enabled(
        &self,
        account_id: i64,
        uid: &str,
        version: i64,
        enabled: bool,
    ) -> Result<crate::store::VersionRow> {
        if !(1..=MAX_VERSIONS).contains(&version) {
            return Err(Error::InvalidInput(
                "version must be between 1 and 100".into(),
            ));
        }
        let e = self.owned_key(account_id, uid).await?;
        if e.key.status != KeyStatus::Enabled {
            return Err(Error::InvalidState(
                "versions of a key that is not enabled cannot change".into(),
            ));
        }
        let v = e.version(version).ok_or(Error::NotFound("key version"))?;
        if !enabled && e.current().map(|c| c.version) == Some(version) {
            return Err(Error::InvalidState(
                "the newest version cannot be disabled".into(),
            ));
        }
        if v.enabled != enabled {
            self.store()
                .set_version_enabled(e.key.id, version, enabled)
                .await?;
            self.invalidate(uid);
        }
        let e = self.key_entry(uid).await?;
        e.version(version)
            .cloned()
            .ok_or(Error::NotFound("key version"))
    }

    /// Makes a new version, which becomes the current one.
    pub async fn rotate(&self, account_id: i64, uid: &str) -> Result<Arc<KeyEntry>> {
        let e = self.owned_key(account_id, uid).await?;
        self.rotate_entry(&e).await
    }

    pub(super) async fn rotate_entry(&self, e: &KeyEntry) -> Result<Arc<KeyEntry>> {
        if e.key.status != KeyStatus::Enabled {
            return Err(Error::InvalidState(
                "only an enabled key can be rotated".into(),
            ));
        }
        let last = e.versions.last().map(|v| v.version).unwrap_or(0);
        if last >= MAX_VERSIONS {
            return Err(Error::InvalidState(
                "the key has reached 100 versions".into(),
            ));
        }
        let key_type = KeyType::parse(&e.key.key_type)
            .ok_or_else(|| Error::Internal(format!("unknown key type {}", e.key.key_type)))?;
        let cka_id = self.hsm().random(16).await?;
        let aux_id = if e.key.is_convergent {
            Some(self.hsm().random(16).await?)
        } else {
            None
        };
        let version = match self
            .store()
            .insert_version_pending(e.key.id, &cka_id, aux_id.as_deref())
            .await
        {
            Ok(v) => v,
            Err(crate::store::StoreError::Conflict) => {
                return Err(Error::Conflict(
                    "a concurrent rotation is in progress; retry".into(),
                ))
            }
            Err(err) => return Err(err.into()),
        };
        if version > MAX_VERSIONS {
            self.store()
                .delete_pending_version(e.key.id, version)
                .await?;
            return Err(Error::InvalidState(
                "the key has reached 100 versions".into(),
            ));
        }
        fault_point("rotate:after-pending");
        self.make_version_objects(
            e.key.id,
            version,
            &e.key.uid,
            key_type.spec(),
            &cka_id,
            aux_id.as_deref(),
        )
        .await?;
        fault_point("rotate:after-hsm");
        let next = if e.key.is_auto_rotation {
            e.key.rotation_period.map(|d| now() + d * DAY_MS)
        } else {
            None
        };
        self.activate_made_version(
            Abandoned {
                key_id: e.key.id,
                version,
                uid: e.key.uid.clone(),
                cka_id,
                aux_id,
            },
            next,
        )
        .await?;
        fault_point("rotate:after-store");
        self.invalidate(&e.key.uid);
        tracing::info!(key = %e.key.uid, version, "key rotated");
        self.key_entry(&e.key.uid).await
    }

    /// Schedules the key's destruction after the 72-hour waiting period.
    pub async fn request_deletion(&self, account_id: i64, uid: &str) -> Result<Arc<KeyEntry>> {
        self.modify(account_id, uid, |e| {
            if e.key.status == KeyStatus::PendingDeletion {
                return Err(Error::InvalidState(
                    "the key is already pending deletion".into(),
                ));
            }
            let t = now();
            e.key.status_before_delete = Some(e.key.status.as_str().to_string());
            e.key.status = KeyStatus::PendingDeletion;
            e.key.status_at = t;
            e.key.destroy_at = Some(t + DELETION_WAIT_MS);
            Ok(())
        })
        .await
    }

    /// Cancels a pending deletion; the key comes back disabled.
    pub async fn cancel_deletion(&self, account_id: i64, uid: &str) -> Result<Arc<KeyEntry>> {
        self.modify(account_id, uid, |e| {
            if e.key.status != KeyStatus::PendingDeletion {
                return Err(Error::InvalidState(
                    "the key is not pending deletion".into(),
                ));
            }
            e.key.status = KeyStatus::Disabled;
            e.key.status_at = now();
            e.key.destroy_at = None;
            e.key.status_before_delete = None;
            Ok(())
        })
        .await
    }

    /// Destroys a key that is pending deletion, now.
    pub async fn delete_key(&self, account_id: i64, uid: &str) -> Result<()> {
        let e = self.owned_key(account_id, uid).await?;
        if e.key.status != KeyStatus::PendingDeletion {
            return Err(Error::InvalidState(
                "only a key pending deletion can be deleted".into(),
            ));
        }
        self.destroy_key(e.key.id, uid).await
    }

    /// Marks every version `destroying`, destroys the objects, marks them
    /// `destroyed`. Shared by Delete Key and the deletion scheduler.
    pub(super) async fn destroy_key(&self, key_id: i64, uid: &str) -> Result<()> {
        self.store().mark_key_destroying(key_id).await?;
        self.invalidate(uid);
        fault_point("destroy:after-mark");
        for v in self.store().versions(key_id).await? {
            if v.state == VersionState::Destroying {
                self.destroy_version_objects(&v).await?;
            }
        }
        tracing::info!(key = uid, "key destroyed");
        Ok(())
    }

    pub(super) async fn destroy_version_objects(&self, v: &crate::store::VersionRow) -> Result<()> {
        self.hsm().destroy_id(v.cka_id.clone()).await?;
        if let Some(aux) = &v.aux_cka_id {
            self.hsm().destroy_id(aux.clone()).await?;
        }
        self.store()
            .set_version_state(v.key_id, v.version, VersionState::Destroyed)
            .await?;
        Ok(())
    }

    /// Replaces the memo.
    pub async fn update_memo(
        &self,
        account_id: i64,
        uid: &str,
        memo: String,
    ) -> Result<Arc<KeyEntry>> {
        check_memo(&memo)?;
        self.modify(account_id, uid, |e| {
            e.key.memo.clone_from(&memo);
            Ok(())
        })
        .await
    }

    /// Changes the rotation period; automatic rotation must be on.
    pub async fn update_rotation_period(
        &self,
        account_id: i64,
        uid: &str,
        days: i64,
    ) -> Result<Arc<KeyEntry>> {
        let days = check_rotation_period(days)?;
        self.modify(account_id, uid, |e| {
            if !e.key.is_auto_rotation {
                return Err(Error::InvalidState(
                    "enable automatic rotation before setting its period".into(),
                ));
            }
            e.key.rotation_period = Some(days);
            e.key.next_rotation_at = Some(last_rotation(e) + days * DAY_MS);
            Ok(())
        })
        .await
    }

    /// Turns automatic rotation on or off.
    pub async fn set_auto_rotation(
        &self,
        account_id: i64,
        uid: &str,
        on: bool,
    ) -> Result<Arc<KeyEntry>> {
        self.modify(account_id, uid, |e| {
            if on {
                let days = e.key.rotation_period.unwrap_or(ROTATION_PERIOD_DEFAULT);
                e.key.is_auto_rotation = true;
                e.key.rotation_period = Some(days);
                e.key.next_rotation_at = Some(now() + days * DAY_MS);
            } else {
                e.key.is_auto_rotation = false;
                e.key.next_rotation_at = None;
            }
            Ok(())
        })
        .await
    }
}

fn last_rotation(e: &KeyEntry) -> i64 {
    e.current()
        .map(|v| v.created_at)
        .unwrap_or(e.key.created_at)
}
