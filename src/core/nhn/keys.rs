//! NHN keys: secrets, symmetric (AES-256) and asymmetric (RSA-2048) keys in a
//! key store; creation, automatic rotation, the two-step deletion, queries.
//!
//! Keys and versions live in the engine's `keys` / `key_versions` tables
//! (dialect `nhn`), with their name and automatic-rotation schedule, so the
//! reconciler and the one rotation and deletion scheduler cover them; the
//! NHN side (key store, type, export policy, users) is in `nhn_keys`. A
//! secret version is a private `CKO_DATA` object.

use crate::store::{KeyRepo, NhnRepo};
use std::sync::Arc;

use super::NhnKeyMeta;
use super::NhnKeyStore;
use super::{NhnClient, NhnProject};
use crate::core::keys::{
    next_rotation, schedule_destruction, VersionFaults, VersionLimit, VersionObjects,
};
use crate::core::now_ms;
use crate::core::{
    Algorithm, Dialect, Engine, Error, Key, KeyEntry, KeyStatus, KeyUid, ObjectRef, Result,
};
use crate::hsm::{KeySpec, KeyUsage};
use crate::store::{NewKey, StoreError};

/// Waiting period between a deletion request and the destruction: 7 days.
pub const KEY_DELETION_WAIT_MS: i64 = 7 * DAY_MS;
const DAY_MS: i64 = 24 * 3600 * 1000;
/// The highest version an NHN ciphertext or signature can name (its
/// framing holds the version in 4 bytes).
const NHN_VERSION_MAX: i64 = u32::MAX as i64;
/// Longest automatic-rotation period, days.
const ROTATION_MAX_DAYS: i64 = 3650;

/// The crash tests' fault points of a new version (rotation, secret update).
const VERSION_FAULTS: VersionFaults = [
    "nhn-version:after-pending",
    "nhn-version:after-hsm",
    "nhn-version:after-store",
];

/// A secret has as many versions as `limits.max_secret_versions` allows.
fn secret_versions_refused(max: i64) -> Error {
    Error::LimitExceeded(format!(
        "the secret has reached its limit of {max} versions (limits.max_secret_versions)"
    ))
}

/// NHN key types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NhnKeyType {
    /// Confidential data in `CKO_DATA` objects.
    Secret,
    /// AES-256-GCM.
    Symmetric,
    /// RSA-2048, raw PKCS#1 v1.5 signatures.
    Asymmetric,
}

impl NhnKeyType {
    /// NHN's name.
    pub fn as_str(self) -> &'static str {
        match self {
            NhnKeyType::Secret => "SECRET",
            NhnKeyType::Symmetric => "SYMMETRIC_KEY",
            NhnKeyType::Asymmetric => "ASYMMETRIC_KEY",
        }
    }

    /// Parses NHN's name.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "SECRET" => Some(NhnKeyType::Secret),
            "SYMMETRIC_KEY" => Some(NhnKeyType::Symmetric),
            "ASYMMETRIC_KEY" => Some(NhnKeyType::Asymmetric),
            _ => None,
        }
    }

    fn engine_type(self) -> Algorithm {
        match self {
            NhnKeyType::Secret => Algorithm::Secret,
            NhnKeyType::Symmetric => Algorithm::Aes256,
            NhnKeyType::Asymmetric => Algorithm::Rsa2048,
        }
    }

    /// The token objects of a version of this type: a key generated in
    /// the token, or for a secret a data object holding `secret`.
    fn objects(self, extractable: bool, secret: Option<Vec<u8>>) -> Result<VersionObjects> {
        match self.spec(extractable) {
            Some(spec) => Ok(VersionObjects::Key(spec)),
            None => secret
                .map(VersionObjects::Data)
                .ok_or_else(|| Error::Internal("secret without value".into())),
        }
    }

    pub(super) fn spec(self, extractable: bool) -> Option<KeySpec> {
        match self {
            NhnKeyType::Secret => None,
            NhnKeyType::Symmetric => Some(KeySpec::Aes256 { extractable }),
            NhnKeyType::Asymmetric => Some(KeySpec::Rsa2048 {
                usage: KeyUsage::Sign,
                extractable,
            }),
        }
    }
}

/// Filters of the key list of a key store.
#[derive(Debug, Clone, Default)]
pub struct NhnKeyFilter {
    /// `SECRET`, `SYMMETRIC_KEY` or `ASYMMETRIC_KEY`.
    pub nhn_type: Option<String>,
    /// Substring of the name.
    pub name: Option<String>,
    /// `Some(true)`: active keys only; `Some(false)`: keys pending deletion only.
    pub active: Option<bool>,
    /// Rows to skip.
    pub offset: i64,
    /// Rows to return.
    pub limit: i64,
}

/// A key with its NHN metadata, for the dialect to format.
#[derive(Debug, Clone)]
pub struct NhnKeyView {
    /// Engine key and versions.
    pub entry: Arc<KeyEntry>,
    /// NHN side.
    pub meta: Arc<NhnKeyMeta>,
    /// Last access, merged with the not-yet-written batch.
    pub last_access_at: Option<i64>,
}

impl NhnKeyView {
    /// The key type.
    pub fn key_type(&self) -> Option<NhnKeyType> {
        NhnKeyType::parse(&self.meta.nhn_type)
    }
    /// The key's name (NHN names may repeat).
    pub fn name(&self) -> &str {
        &self.entry.key.name
    }
    /// Days between automatic rotations, 0 = off.
    pub fn auto_rotation_period(&self) -> i64 {
        let k = &self.entry.key;
        k.rotation_period
            .filter(|_| k.is_auto_rotation)
            .unwrap_or(0)
    }
    /// The next automatic rotation, ms, while it is on.
    pub fn next_rotation_at(&self) -> Option<i64> {
        let k = &self.entry.key;
        k.next_rotation_at.filter(|_| k.is_auto_rotation)
    }
    /// Newest active version number.
    pub fn current_version(&self) -> i64 {
        self.entry.current().map(|v| v.version).unwrap_or(0)
    }
    /// Whether the key is usable (not pending deletion).
    pub fn is_active(&self) -> bool {
        self.entry.key.status == crate::core::KeyStatus::Enabled
    }
}

/// Length of an NHN key id: 32 hexadecimal digits.
pub const KEY_ID_HEX_LEN: usize = 32;

/// Reads a key id an operator brings: 32 hexadecimal digits in either
/// case (the form of NHN's key ids and of the ones made here), returned in
/// lower case.
pub fn check_key_id(id: &str) -> Result<String> {
    if id.len() != KEY_ID_HEX_LEN || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Error::InvalidInput(format!(
            "a key id is {KEY_ID_HEX_LEN} hexadecimal digits; got {} characters",
            id.chars().count()
        )));
    }
    Ok(id.to_ascii_lowercase())
}

fn check_text(field: &str, v: &str, max: usize, required: bool) -> Result<()> {
    if (required && v.trim().is_empty()) || v.chars().count() > max {
        return Err(Error::InvalidInput(format!(
            "{field} must be {} to {max} characters",
            if required { 1 } else { 0 }
        )));
    }
    Ok(())
}

impl Engine {
    /// The object id of a new version: 16 random bytes, or for a secret (a
    /// `CKO_DATA` object, which has no `CKA_ID`) its unique label.
    async fn nhn_object_id(&self, kind: NhnKeyType, uid: &KeyUid) -> Result<ObjectRef> {
        let r = self.hsm().random(16).await?;
        Ok(ObjectRef::from(match kind {
            NhnKeyType::Secret => format!("hsm-kms/{uid}/secret/{}", hex::encode(r)).into_bytes(),
            _ => r,
        }))
    }

    /// A key of the project with its NHN metadata; keys of other projects and
    /// destroyed keys are not found.
    pub async fn nhn_key(&self, project: &NhnProject, uid: &KeyUid) -> Result<NhnKeyView> {
        self.nhn_key_of(project.account_id, uid).await
    }

    /// [`Engine::nhn_key`] by the engine account owning the project's keys
    /// (the scheduler has the key's row, not a caller's project).
    async fn nhn_key_of(&self, account_id: i64, uid: &KeyUid) -> Result<NhnKeyView> {
        let entry = match self.key_entry(uid).await {
            Ok(e) => e,
            Err(Error::NotFound(_)) => return Err(Error::NotFound("key")),
            Err(e) => return Err(e),
        };
        if entry.key.account_id != account_id || entry.key.status == crate::core::KeyStatus::Deleted
        {
            return Err(Error::NotFound("key"));
        }
        let meta = match self.nhn().keys.get(uid.as_str()) {
            Ok(m) => m,
            Err(seen) => {
                let m = Arc::new(
                    self.store()
                        .nhn_key(entry.key.id)
                        .await?
                        .ok_or(Error::NotFound("key"))?,
                );
                self.nhn().keys.fill(uid.to_string(), m.clone(), seen);
                m
            }
        };
        let last_access_at = match (
            meta.last_access_at,
            self.nhn_pending_key_access(entry.key.id.get()),
        ) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        Ok(NhnKeyView {
            entry,
            meta,
            last_access_at,
        })
    }

    /// A key for a data call: of the expected type, its key store's
    /// authentication passed, and not pending deletion.
    pub async fn nhn_usable_key(
        &self,
        project: &NhnProject,
        uid: &KeyUid,
        want: NhnKeyType,
        client: Option<&NhnClient>,
    ) -> Result<NhnKeyView> {
        let v = self.nhn_key(project, uid).await?;
        if let Some(c) = client {
            self.nhn_authorize(v.meta.key_store_id, c).await?;
        }
        if v.key_type() != Some(want) {
            return Err(Error::WrongKeyType(v.meta.nhn_type.clone()));
        }
        if !v.is_active() {
            return Err(Error::KeyDisabled);
        }
        self.nhn_record_key_access(v.entry.key.id.get());
        Ok(v)
    }

    /// [`Engine::nhn_usable_key`] for a call that names version `n` (a
    /// ciphertext's, a signature's, a query's). As for NAVER
    /// ([`Engine::owned_key_naming`]): another node may have made version
    /// `n` after this process cached the key, and its client may bring the
    /// ciphertext here at once; when the cached entry does not hold `n`
    /// ([`KeyEntry::names_unseen`]), the key is read from the store again,
    /// once, before the call is judged. NHN keys rotate without a bound, so
    /// the bound is the framing's (a 4-byte version): a client naming a
    /// version the key does not have costs one store read, as naming a key
    /// that does not exist does.
    pub async fn nhn_usable_key_naming(
        &self,
        project: &NhnProject,
        uid: &KeyUid,
        want: NhnKeyType,
        client: Option<&NhnClient>,
        n: Option<i64>,
    ) -> Result<NhnKeyView> {
        let v = self.nhn_usable_key(project, uid, want, client).await?;
        match n {
            Some(n) if v.entry.names_unseen(n, NHN_VERSION_MAX) => {
                self.nhn_forget_key(uid);
                self.nhn_usable_key(project, uid, want, client).await
            }
            _ => Ok(v),
        }
    }

    /// Creates a key in a key store of the project. `secret` is the value of
    /// a secret; `auto_rotation_period` (days, 0 = off) applies to symmetric
    /// and asymmetric keys. Keys are extractable when the key store's export
    /// policy allows it.
    #[allow(clippy::too_many_arguments)]
    pub async fn nhn_create_key(
        &self,
        project: &NhnProject,
        key_store_name: &str,
        kind: NhnKeyType,
        name: &str,
        description: &str,
        secret: Option<&str>,
        auto_rotation_period: i64,
        user: &str,
    ) -> Result<NhnKeyView> {
        self.nhn_create_key_with_id(
            project,
            key_store_name,
            kind,
            name,
            description,
            secret,
            auto_rotation_period,
            user,
            None,
        )
        .await
    }

    /// [`Engine::nhn_create_key`] under a key id the operator brings (the
    /// `keyid` the key had at NHN, which applications' URLs name): 32
    /// hexadecimal digits (see [`check_key_id`]), kept in lower case. An
    /// id any key has or had is refused with `Conflict`. `None` makes a
    /// random id.
    #[allow(clippy::too_many_arguments)]
    pub async fn nhn_create_key_with_id(
        &self,
        project: &NhnProject,
        key_store_name: &str,
        kind: NhnKeyType,
        name: &str,
        description: &str,
        secret: Option<&str>,
        auto_rotation_period: i64,
        user: &str,
        key_id: Option<&str>,
    ) -> Result<NhnKeyView> {
        let key_id = key_id.map(check_key_id).transpose()?;
        if let Some(id) = &key_id {
            if self
                .store()
                .key_by_uid(&id.as_str().into())
                .await?
                .is_some()
            {
                return Err(Error::Conflict(format!("key id {id} is taken")));
            }
        }
        check_text("name", name, 100, true)?;
        check_text("description", description, 500, false)?;
        if !(0..=ROTATION_MAX_DAYS).contains(&auto_rotation_period) {
            return Err(Error::InvalidInput(format!(
                "autoRotationPeriod must be 0 (off) to {ROTATION_MAX_DAYS} days"
            )));
        }
        if kind == NhnKeyType::Secret && auto_rotation_period != 0 {
            return Err(Error::InvalidInput(
                "a secret has no automatic rotation".into(),
            ));
        }
        let value = match (kind, secret) {
            (NhnKeyType::Secret, Some(v)) => Some(super::crypto::check_secret(v)?),
            (NhnKeyType::Secret, None) => {
                return Err(Error::InvalidInput("secretValue is required".into()))
            }
            _ => None,
        };
        let store: NhnKeyStore = self.nhn_key_store_named(project, key_store_name).await?;
        let extractable = kind != NhnKeyType::Secret && store.allow_export;
        let objects = kind.objects(extractable, value)?;
        let uid = KeyUid::from(match key_id {
            Some(id) => id,
            None => hex::encode(self.hsm().random(16).await?),
        });
        let cka_id = self.nhn_object_id(kind, &uid).await?;
        let rotation_period = (auto_rotation_period > 0).then_some(auto_rotation_period);
        let new = NewKey {
            uid: uid.to_string(),
            account_id: project.account_id,
            // Unique names per account are NAVER's rule (the store's index
            // covers NAVER keys only); NHN names may repeat.
            name: name.to_string(),
            dialect: Dialect::Nhn,
            key_type: kind.engine_type(),
            memo: String::new(),
            protection_type: "HSM".into(),
            is_convergent: false,
            is_auto_rotation: rotation_period.is_some(),
            rotation_period,
            next_rotation_at: rotation_period.map(|d| now_ms() + d * DAY_MS),
        };
        let limits = self.limits();
        let caps = crate::store::KeyCaps {
            per_account: limits.keys_per_account,
            of_type: (kind == NhnKeyType::Secret)
                .then(|| (kind.engine_type().as_str(), limits.nhn_secrets_per_project)),
        };
        let key_id = match self
            .store()
            .insert_key_pending(&new, &cka_id, None, caps)
            .await
        {
            Ok(id) => id,
            Err(StoreError::Conflict) => {
                return Err(Error::Conflict(format!("key id {uid} is taken; retry")))
            }
            Err(StoreError::LimitReached("type")) => {
                return Err(Error::LimitExceeded(format!(
                    "the project has reached its limit of {} secrets \
                     (limits.max_nhn_secrets_per_project)",
                    limits.nhn_secrets_per_project
                )))
            }
            Err(StoreError::LimitReached(_)) => {
                return Err(crate::core::keys::keys_limit(limits.keys_per_account))
            }
            Err(e) => return Err(e.into()),
        };
        let meta = NhnKeyMeta {
            key_id: key_id.get(),
            key_store_id: store.id,
            description: description.to_string(),
            nhn_type: kind.as_str().into(),
            extractable,
            last_access_at: None,
            creation_user: user.to_string(),
            last_change_user: user.to_string(),
        };
        if let Err(e) = self.store().nhn_insert_key(&meta).await {
            self.store().delete_pending_version(key_id, 1).await?;
            return Err(e.into());
        }
        crate::core::fault_point("nhn-create:after-pending");
        self.make_first_version(key_id, &uid, objects, cka_id, None, "nhn-create:after-hsm")
            .await?;
        tracing::info!(key = %uid, kind = kind.as_str(), "NHN key created");
        self.nhn_key(project, &uid).await
    }

    /// Adds a version and makes it current (rotation, secret update).
    pub(super) async fn nhn_new_version(
        &self,
        v: &NhnKeyView,
        secret: Option<Vec<u8>>,
    ) -> Result<i64> {
        let kind = v
            .key_type()
            .ok_or_else(|| Error::Internal(format!("unknown NHN key type {}", v.meta.nhn_type)))?;
        // Secrets keep every version; their number is bounded. Keys rotate
        // without a bound.
        let limit = (kind == NhnKeyType::Secret).then(|| VersionLimit {
            max: self.limits().secret_versions,
            refused: secret_versions_refused,
        });
        let objects = kind.objects(v.meta.extractable, secret)?;
        let ids =
            async { Ok::<_, Error>((self.nhn_object_id(kind, &v.entry.key.uid).await?, None)) };
        self.add_version(
            &v.entry,
            objects,
            ids,
            limit,
            "a concurrent change is in progress; retry",
            &VERSION_FAULTS,
            || next_rotation(&v.entry.key),
        )
        .await
    }

    /// Rotates an NHN key now; the new version's activation schedules the
    /// next automatic rotation.
    pub async fn nhn_rotate(&self, v: &NhnKeyView) -> Result<i64> {
        if v.key_type() == Some(NhnKeyType::Secret) {
            return Err(Error::WrongKeyType("SECRET".into()));
        }
        if !v.is_active() {
            return Err(Error::KeyDisabled);
        }
        let version = self.nhn_new_version(v, None).await?;
        self.nhn().keys.remove(v.entry.key.uid.as_str());
        tracing::info!(key = %v.entry.key.uid, version, "NHN key rotated");
        Ok(version)
    }

    /// The scheduler's rotation of an NHN key whose rotation it claimed
    /// (one schedule for both dialects: `keys.next_rotation_at`).
    pub(crate) async fn nhn_rotate_scheduled(&self, key: &Key) -> Result<i64> {
        let v = self.nhn_key_of(key.account_id, &key.uid).await?;
        self.nhn_rotate(&v).await
    }

    /// Requests deletion: the key stops working now and is destroyed after
    /// seven days. Returns the deletion time.
    pub async fn nhn_request_key_deletion(
        &self,
        project: &NhnProject,
        uid: &KeyUid,
        user: &str,
    ) -> Result<i64> {
        // The row is written only over the revision read (a rotation may
        // land in between): the engine reads again on a lost race.
        let load = move || async move { Ok::<_, Error>(self.nhn_key(project, uid).await?.entry) };
        let e = self
            .modify_with(uid, load, |e| {
                if e.key.status != KeyStatus::Enabled {
                    return Err(Error::InvalidState(
                        "the key is already scheduled for deletion".into(),
                    ));
                }
                schedule_destruction(&mut e.key, KEY_DELETION_WAIT_MS);
                Ok(())
            })
            .await
            .map_err(|e| match e {
                // NHN answers a key that other requests keep changing as a
                // key in the wrong state.
                Error::Conflict(m) => Error::InvalidState(m),
                e => e,
            })?;
        self.store().nhn_touch_key_change(e.key.id, user).await?;
        self.nhn().keys.remove(uid.as_str());
        e.key
            .destroy_at
            .ok_or_else(|| Error::Internal("a key scheduled for deletion has no time".into()))
    }

    /// Destroys a key that is scheduled for deletion, now. An active key is
    /// refused. Returns the deletion time.
    pub async fn nhn_delete_key_now(&self, project: &NhnProject, uid: &KeyUid) -> Result<i64> {
        let v = self.nhn_key(project, uid).await?;
        if v.is_active() {
            return Err(Error::InvalidState(
                "only a key scheduled for deletion can be deleted immediately".into(),
            ));
        }
        let destroyed = self.destroy_key(v.entry.key.id, uid).await?;
        self.nhn().keys.remove(uid.as_str());
        if !destroyed {
            return Err(Error::InvalidState(
                "only a key scheduled for deletion can be deleted immediately".into(),
            ));
        }
        Ok(now_ms())
    }

    /// Keys of a key store of the project: (views, total).
    pub async fn nhn_list_keys(
        &self,
        project: &NhnProject,
        key_store_id: i64,
        filter: &NhnKeyFilter,
    ) -> Result<(Vec<NhnKeyView>, i64)> {
        let store = self.nhn_key_store(project, key_store_id).await?;
        let (uids, total) = self.store().nhn_list_keys(store.id, filter).await?;
        let mut out = Vec::with_capacity(uids.len());
        for uid in uids {
            out.push(self.nhn_key(project, &KeyUid::from(uid)).await?);
        }
        Ok((out, total))
    }

    /// One key of a key store of the project.
    pub async fn nhn_key_in_store(
        &self,
        project: &NhnProject,
        key_store_id: i64,
        uid: &KeyUid,
    ) -> Result<NhnKeyView> {
        let store = self.nhn_key_store(project, key_store_id).await?;
        let v = self.nhn_key(project, uid).await?;
        if v.meta.key_store_id != store.id {
            return Err(Error::NotFound("key"));
        }
        Ok(v)
    }
}
