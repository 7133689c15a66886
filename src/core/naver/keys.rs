//! NAVER's key management on the engine's key lifecycle: creation,
//! listing, enable / disable, version enable / disable, rotation, the
//! two-step deletion, memo and automatic-rotation settings.

use std::sync::Arc;

use super::{
    check_memo, check_rotation_period, valid_name, CreateKeyRequest, DELETION_WAIT_MS,
    MAX_VERSIONS, ROTATION_PERIOD_DEFAULT,
};
use crate::core::accounts::now;
use crate::core::keys::{
    keys_limit, next_rotation, schedule_destruction, VersionFaults, VersionLimit, VersionObjects,
    DAY_MS,
};
use crate::core::{
    fault_point, Dialect, Engine, Error, KeyEntry, KeyStatus, KeyType, KeyUid, ObjectRef, Result,
};
use crate::store::{KeyRepo, NewKey};

/// NAVER keys hold versions 1 to [`MAX_VERSIONS`].
const VERSION_LIMIT: VersionLimit = VersionLimit {
    max: MAX_VERSIONS,
    refused: |_| Error::InvalidState("the key has reached 100 versions".into()),
};

/// The crash tests' fault points of a rotation.
const ROTATE_FAULTS: VersionFaults = [
    "rotate:after-pending",
    "rotate:after-hsm",
    "rotate:after-store",
];

impl Engine {
    /// Creates a key and its first version in the token.
    pub async fn create_key(
        &self,
        account_id: i64,
        req: CreateKeyRequest,
    ) -> Result<Arc<KeyEntry>> {
        self.create_key_tagged(account_id, req, None).await
    }

    /// [`Engine::create_key`] under a key tag the operator brings (the tag
    /// the key had at NAVER, so that applications keep their
    /// configuration): 64 hexadecimal digits, optionally after a region
    /// prefix, in either case, kept in lower case ([`super::parse_key_tag`]). A tag any key has or had (destroyed keys included) is
    /// refused with `Conflict`; a tag isolated in another region than
    /// `naver.region` with `InvalidInput`, as every call naming it would be.
    /// `None` makes a random tag.
    pub async fn create_key_tagged(
        &self,
        account_id: i64,
        req: CreateKeyRequest,
        key_tag: Option<&str>,
    ) -> Result<Arc<KeyEntry>> {
        let key_tag = key_tag.map(super::parse_key_tag).transpose()?;
        if let Some(tag) = key_tag.as_deref().and_then(super::KeyTag::parse) {
            tag.check_served_by(self.naver_region())?;
        }
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
        let uid = match &key_tag {
            Some(tag) => {
                if self
                    .store()
                    .key_by_uid(&tag.as_str().into())
                    .await?
                    .is_some()
                {
                    return Err(Error::Conflict(format!(
                        "key tag {tag} is taken by another key"
                    )));
                }
                tag.clone()
            }
            None => super::KeyTag::from_random(self.naver_region(), &self.hsm().random(32).await?)?
                .as_str()
                .to_string(),
        };
        let cka_id = ObjectRef::from(self.hsm().random(16).await?);
        let aux_id = if req.is_convergent {
            Some(ObjectRef::from(self.hsm().random(16).await?))
        } else {
            None
        };
        let new = NewKey {
            uid: uid.clone(),
            account_id,
            name: req.name.clone(),
            dialect: Dialect::Naver,
            key_type: req.key_type.algorithm(),
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
            .insert_key_pending(&new, &cka_id, aux_id.as_ref(), caps)
            .await
        {
            Ok(id) => id,
            Err(crate::store::StoreError::Conflict) => {
                return Err(Error::Conflict(match &key_tag {
                    // The tag was free a moment ago: either the name or a
                    // concurrent creation under the same tag.
                    Some(tag) => format!("a key named {} or tagged {tag} already exists", req.name),
                    None => format!("a key named {} already exists", req.name),
                }));
            }
            Err(crate::store::StoreError::LimitReached(_)) => return Err(keys_limit(max)),
            Err(e) => return Err(e.into()),
        };
        fault_point("create:after-pending");
        self.make_first_version(
            key_id,
            &uid,
            VersionObjects::Key(req.key_type.spec()),
            cka_id,
            aux_id,
            "create:after-hsm",
        )
        .await?;
        self.key_entry(&KeyUid::from(uid)).await
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

    /// Enables a disabled key.
    pub async fn enable_key(&self, account_id: i64, uid: &KeyUid) -> Result<Arc<KeyEntry>> {
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
    pub async fn disable_key(&self, account_id: i64, uid: &KeyUid) -> Result<Arc<KeyEntry>> {
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
        uid: &KeyUid,
        version: i64,
        enabled: bool,
    ) -> Result<crate::core::KeyVersion> {
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
    pub async fn rotate(&self, account_id: i64, uid: &KeyUid) -> Result<Arc<KeyEntry>> {
        let e = self.owned_key(account_id, uid).await?;
        self.rotate_entry(&e).await
    }

    pub(crate) async fn rotate_entry(&self, e: &KeyEntry) -> Result<Arc<KeyEntry>> {
        if e.key.status != KeyStatus::Enabled {
            return Err(Error::InvalidState(
                "only an enabled key can be rotated".into(),
            ));
        }
        let key_type = KeyType::of(e.key.key_type)
            .ok_or_else(|| Error::Internal(format!("unknown key type {}", e.key.key_type)))?;
        let ids = async {
            let cka_id = ObjectRef::from(self.hsm().random(16).await?);
            let aux_id = if e.key.is_convergent {
                Some(ObjectRef::from(self.hsm().random(16).await?))
            } else {
                None
            };
            Ok::<_, Error>((cka_id, aux_id))
        };
        let version = self
            .add_version(
                e,
                VersionObjects::Key(key_type.spec()),
                ids,
                Some(VERSION_LIMIT),
                "a concurrent rotation is in progress; retry",
                &ROTATE_FAULTS,
                || next_rotation(&e.key),
            )
            .await?;
        tracing::info!(key = %e.key.uid, version, "key rotated");
        self.key_entry(&e.key.uid).await
    }

    /// Schedules the key's destruction after the 72-hour waiting period.
    pub async fn request_deletion(&self, account_id: i64, uid: &KeyUid) -> Result<Arc<KeyEntry>> {
        self.modify(account_id, uid, |e| {
            if e.key.status == KeyStatus::PendingDeletion {
                return Err(Error::InvalidState(
                    "the key is already pending deletion".into(),
                ));
            }
            schedule_destruction(&mut e.key, DELETION_WAIT_MS);
            Ok(())
        })
        .await
    }

    /// Cancels a pending deletion; the key comes back disabled.
    pub async fn cancel_deletion(&self, account_id: i64, uid: &KeyUid) -> Result<Arc<KeyEntry>> {
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
    pub async fn delete_key(&self, account_id: i64, uid: &KeyUid) -> Result<()> {
        let e = self.owned_key(account_id, uid).await?;
        if e.key.status != KeyStatus::PendingDeletion {
            return Err(Error::InvalidState(
                "only a key pending deletion can be deleted".into(),
            ));
        }
        if self.destroy_key(e.key.id, uid).await? {
            Ok(())
        } else {
            // Another node or request is destroying it.
            self.invalidate(uid);
            Err(Error::InvalidState(
                "only a key pending deletion can be deleted".into(),
            ))
        }
    }

    /// Replaces the memo.
    pub async fn update_memo(
        &self,
        account_id: i64,
        uid: &KeyUid,
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
        uid: &KeyUid,
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
        uid: &KeyUid,
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
