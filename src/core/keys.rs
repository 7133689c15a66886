//! The dialect-neutral key lifecycle: making a version's objects between
//! its `pending` row and its activation (and rolling back what failed),
//! changing a key row over the revision read, destroying a key. The
//! dialects' rules sit on top: NAVER's in `core/naver/`, NHN's in
//! `core/nhn/`.
//!
//! Every HSM object is written between a `pending` row and its activation, and
//! destroyed between a `destroying` mark and `destroyed`, so that the
//! reconciler can finish or undo whatever a crash interrupted.

use crate::store::KeyRepo;
use std::sync::Arc;

use super::{
    fault_point, now_ms, Engine, Error, Key, KeyEntry, KeyId, KeyStatus, KeyUid, ObjectRef, Result,
    VersionState,
};
use crate::hsm::{KeySpec, KeyUsage};
use crate::store::StoreError;

/// One day, ms.
pub(crate) const DAY_MS: i64 = 24 * 3600 * 1000;
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

    /// The NAVER type of a key's algorithm (`None`: an NHN secret, which
    /// NAVER has no type for).
    pub fn of(a: super::Algorithm) -> Option<Self> {
        match a {
            super::Algorithm::Aes256 => Some(KeyType::Aes256),
            super::Algorithm::Rsa2048 => Some(KeyType::Rsa2048),
            super::Algorithm::EcdsaP256 => Some(KeyType::Ecdsa),
            super::Algorithm::Secret => None,
        }
    }

    /// The engine's algorithm of this type.
    pub fn algorithm(self) -> super::Algorithm {
        match self {
            KeyType::Aes256 => super::Algorithm::Aes256,
            KeyType::Rsa2048 => super::Algorithm::Rsa2048,
            KeyType::Ecdsa => super::Algorithm::EcdsaP256,
        }
    }

    pub(crate) fn spec(self) -> KeySpec {
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

/// Re-exported view types: the dialects format [`KeyEntry`] directly.
pub type KeyView = KeyEntry;
/// A version as the dialects see it.
pub type VersionView = super::KeyVersion;

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
    pub(crate) key_id: KeyId,
    /// Version number.
    pub(crate) version: i64,
    /// The key's uid (cache, log).
    pub(crate) uid: String,
    /// `CKA_ID` (or NHN secret label) of the version's object.
    pub(crate) cka_id: ObjectRef,
    /// `CKA_ID` of the convergent HMAC key, if any.
    pub(crate) aux_id: Option<ObjectRef>,
}

fn label(uid: &str, version: i64) -> String {
    format!("hsm-kms/{uid}/v{version}")
}

/// The token objects of one key version. No `Debug`: a secret's value is
/// never printed.
pub(crate) enum VersionObjects {
    /// A key or key pair generated in the token (and, when the version has
    /// an aux id, the convergent key's HMAC key).
    Key(KeySpec),
    /// A private `CKO_DATA` object holding a secret's value; the version's
    /// object id is its label.
    Data(Vec<u8>),
}

/// A dialect's bound on the version numbers of a key.
#[derive(Debug, Clone, Copy)]
pub(crate) struct VersionLimit {
    /// Highest version number.
    pub(crate) max: i64,
    /// The error refusing a version past `max` (given `max`).
    pub(crate) refused: fn(i64) -> Error,
}

/// The fault points (crash tests) of one way of adding versions: after
/// the pending row, after the token objects, after the activation.
pub(crate) type VersionFaults = [&'static str; 3];

/// When a key's next automatic rotation falls if it gets a version now:
/// its period (days) from now while automatic rotation is on, else `None`
/// (the stored time is kept). Both dialects' rotations, manual or
/// scheduled, pass it to the activation of the new version.
pub(crate) fn next_rotation(key: &Key) -> Option<i64> {
    if key.is_auto_rotation {
        key.rotation_period.map(|d| now_ms() + d * DAY_MS)
    } else {
        None
    }
}

/// Marks a key for destruction `wait_ms` from now (a dialect's waiting
/// period): it stops working at once, and the deletion scheduler destroys
/// it then; the status it had is kept for the record. Returns the
/// destruction time.
pub(crate) fn schedule_destruction(key: &mut Key, wait_ms: i64) -> i64 {
    let t = now_ms();
    key.status_before_delete = Some(key.status.as_str().to_string());
    key.status = KeyStatus::PendingDeletion;
    key.status_at = t;
    key.destroy_at = Some(t + wait_ms);
    t + wait_ms
}

/// How long a version addition waits for another addition to the same key
/// (a concurrent rotation, on this node or another) before it is refused
/// with a retryable conflict.
const ADDITION_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// How often a waiting addition asks the store again.
const ADDITION_POLL: std::time::Duration = std::time::Duration::from_millis(25);

impl Engine {
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
        self.hsm().destroy_id(v.cka_id.to_vec()).await?;
        if let Some(aux) = &v.aux_id {
            self.hsm().destroy_id(aux.to_vec()).await?;
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

    /// Makes the objects of one version; on failure removes whatever was
    /// made and the pending row, so no half-made version survives.
    pub(super) async fn make_version_objects(
        &self,
        key_id: KeyId,
        version: i64,
        uid: &str,
        objects: VersionObjects,
        cka_id: &ObjectRef,
        aux_id: Option<&ObjectRef>,
    ) -> Result<()> {
        let data_label = match &objects {
            VersionObjects::Data(_) => Some(
                String::from_utf8(cka_id.to_vec())
                    .map_err(|_| Error::Internal("secret object id is not a label".into()))?,
            ),
            VersionObjects::Key(_) => None,
        };
        let res = async {
            match objects {
                VersionObjects::Key(spec) => {
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
                }
                VersionObjects::Data(value) => {
                    self.hsm()
                        .create_data_object(data_label.unwrap_or_default(), value)
                        .await?;
                }
            }
            Ok::<(), crate::hsm::HsmError>(())
        }
        .await;
        if let Err(e) = res {
            tracing::error!(error = %e, key = uid, version, "making the version's objects failed; rolling back");
            let ids: Vec<Vec<u8>> = std::iter::once(cka_id.to_vec())
                .chain(aux_id.map(|a| a.to_vec()))
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

    /// Makes the objects of a new key's first version, which the caller
    /// wrote `pending` with the key, and activates it.
    pub(crate) async fn make_first_version(
        &self,
        key_id: KeyId,
        uid: &str,
        objects: VersionObjects,
        object_id: ObjectRef,
        aux_id: Option<ObjectRef>,
        after_hsm: &'static str,
    ) -> Result<()> {
        self.make_version_objects(key_id, 1, uid, objects, &object_id, aux_id.as_ref())
            .await?;
        fault_point(after_hsm);
        self.activate_made_version(
            Abandoned {
                key_id,
                version: 1,
                uid: uid.to_string(),
                cka_id: object_id,
                aux_id,
            },
            None,
        )
        .await?;
        self.invalidate(uid);
        Ok(())
    }

    /// Adds a version to `e`'s key and makes it current: the pending row
    /// (the store numbers it), the token objects, the activation with the
    /// key's next rotation time (`next_rotation_at`, asked once the objects
    /// exist). `ids` makes the object ids (the version's and the aux one),
    /// after the `limit` check; `limit` is checked again on the number the
    /// store gave, which is exact under concurrent additions. `conflict`
    /// is the message when a concurrent addition took the number.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn add_version(
        &self,
        e: &KeyEntry,
        objects: VersionObjects,
        ids: impl std::future::Future<Output = Result<(ObjectRef, Option<ObjectRef>)>>,
        limit: Option<VersionLimit>,
        conflict: &str,
        faults: &VersionFaults,
        next_rotation_at: impl FnOnce() -> Option<i64>,
    ) -> Result<i64> {
        if let Some(l) = limit {
            let last = e.versions.last().map(|v| v.version).unwrap_or(0);
            if last >= l.max {
                return Err((l.refused)(l.max));
            }
        }
        let (cka_id, aux_id) = ids.await?;
        let key_id = e.key.id;
        // Another addition to this key in flight (on any live node): wait
        // for it to settle, so that versions activate in number order,
        // for at most ADDITION_WAIT; then the caller is told to retry.
        let waited = std::time::Instant::now();
        let version = loop {
            match self
                .store()
                .insert_version_pending(key_id, &cka_id, aux_id.as_ref())
                .await
            {
                Ok(v) => break v,
                Err(StoreError::Conflict) if waited.elapsed() < ADDITION_WAIT => {
                    tokio::time::sleep(ADDITION_POLL).await;
                }
                Err(StoreError::Conflict) => return Err(Error::Conflict(conflict.into())),
                Err(err) => return Err(err.into()),
            }
        };
        if let Some(l) = limit {
            if version > l.max {
                self.store().delete_pending_version(key_id, version).await?;
                return Err((l.refused)(l.max));
            }
        }
        fault_point(faults[0]);
        self.make_version_objects(
            key_id,
            version,
            &e.key.uid,
            objects,
            &cka_id,
            aux_id.as_ref(),
        )
        .await?;
        fault_point(faults[1]);
        self.activate_made_version(
            Abandoned {
                key_id,
                version,
                uid: e.key.uid.to_string(),
                cka_id,
                aux_id,
            },
            next_rotation_at(),
        )
        .await?;
        fault_point(faults[2]);
        self.invalidate(&e.key.uid);
        Ok(version)
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
    pub(crate) fn roll_back_later(&self, key_id: KeyId, version: i64, ids: Vec<Vec<u8>>) {
        tracing::warn!(
            key_id = key_id.get(),
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
                            tracing::info!(
                                key_id = key_id.get(),
                                version,
                                "rolled back the pending version"
                            );
                            return;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, key_id = key_id.get(), version, "deleting the pending version failed")
                        }
                    }
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }

    /// Reads the key (`load`), applies `change` and writes the row back
    /// only if no other write came in between (the row's revision); on a
    /// lost race it reads again and re-applies `change`, so concurrent
    /// changes of different fields (memo, rotation period, status) all
    /// persist.
    pub(crate) async fn modify_with<F, Fut>(
        &self,
        uid: &KeyUid,
        load: F,
        change: impl Fn(&mut KeyEntry) -> Result<()>,
    ) -> Result<Arc<KeyEntry>>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<Arc<KeyEntry>>>,
    {
        for _ in 0..MODIFY_ATTEMPTS {
            let mut e = (*load().await?).clone();
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

    /// [`Engine::modify_with`] on a key of `account_id` as NAVER sees it
    /// ([`Engine::owned_key`]).
    pub(crate) async fn modify(
        &self,
        account_id: i64,
        uid: &KeyUid,
        change: impl Fn(&mut KeyEntry) -> Result<()>,
    ) -> Result<Arc<KeyEntry>> {
        self.modify_with(uid, move || self.owned_key(account_id, uid), change)
            .await
    }

    /// Marks every version `destroying`, destroys the objects, marks them
    /// `destroyed`. Shared by Delete Key and the deletion scheduler.
    /// `false` (nothing done) when the key is no longer pending deletion:
    /// another node or request is destroying it.
    pub(super) async fn destroy_key(&self, key_id: KeyId, uid: &str) -> Result<bool> {
        if !self.store().mark_key_destroying(key_id).await? {
            return Ok(false);
        }
        self.invalidate(uid);
        fault_point("destroy:after-mark");
        for v in self.store().versions(key_id).await? {
            if v.state == VersionState::Destroying {
                self.destroy_version_objects(&v).await?;
            }
        }
        tracing::info!(key = uid, "key destroyed");
        Ok(true)
    }

    pub(super) async fn destroy_version_objects(&self, v: &super::KeyVersion) -> Result<()> {
        self.hsm().destroy_id(v.cka_id.to_vec()).await?;
        if let Some(aux) = &v.aux_cka_id {
            self.hsm().destroy_id(aux.to_vec()).await?;
        }
        self.store()
            .set_version_state(v.key_id, v.version, VersionState::Destroyed)
            .await?;
        Ok(())
    }
}
