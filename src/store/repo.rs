//! The store's repository traits: narrow views of the metadata, one per
//! concern, each implemented by [`Store`] on both engines. Callers import
//! the ones they use (`use crate::store::KeyRepo`).

use std::future::Future;

use super::*;
use crate::core::attest::VersionOwner;
use crate::core::nhn::{
    CredentialKind, NhnCredential, NhnKeyMeta, NhnProjectRecord, NhnUserAccessKeyRecord,
};
use crate::core::nhn::{NhnKeyFilter, NhnKeyStore, UserAccessKeyRequirement};
use crate::core::{AccessKey, AccountRecord, StoredToken, TokenGenerator};
use crate::core::{ActivityRecord, Key, KeyId, KeyUid, KeyVersion, ObjectRef, VersionState};

/// An active version's key uid, version number, `CKA_ID` and convergent
/// `CKA_ID`.
pub type ActiveVersionIds = (String, i64, Vec<u8>, Option<Vec<u8>>);

/// Keys and key versions, with the crash-consistency states of their HSM
/// objects (`pending` → `active` → `destroying` → `destroyed`).
pub trait KeyRepo {
    /// Writes a new key with its first version `pending`, in one transaction.
    /// Returns the key id. `Conflict` when the name or uid is taken,
    /// `LimitReached("keys")` / `LimitReached("type")` when the account
    /// already has `caps` keys: the counts are read by the INSERT itself,
    /// which holds the write lock, so concurrent creations cannot overshoot.
    fn insert_key_pending(
        &self,
        key: &NewKey,
        cka_id: &ObjectRef,
        aux_cka_id: Option<&ObjectRef>,
        caps: KeyCaps<'_>,
    ) -> impl Future<Output = Result<KeyId>> + Send;

    /// Writes the next version of a key as `pending`. Returns its number.
    /// `Conflict` while another version of the key is `pending` on a live
    /// node (an addition in flight), or if a concurrent one took the
    /// number first.
    fn insert_version_pending(
        &self,
        key_id: KeyId,
        cka_id: &ObjectRef,
        aux_cka_id: Option<&ObjectRef>,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// Moves a version to `state`.
    fn set_version_state(
        &self,
        key_id: KeyId,
        version: i64,
        state: VersionState,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Activates a pending version and, in the same transaction, applies the
    /// rotation bookkeeping of the key (next rotation time).
    fn activate_version(
        &self,
        key_id: KeyId,
        version: i64,
        next_rotation_at: Option<i64>,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Deletes a version row that never became active (reconciler, failed creation).
    fn delete_pending_version(
        &self,
        key_id: KeyId,
        version: i64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Decides to roll back a version whose creation failed after its
    /// objects were made: moves it from `pending` to `destroying` (only the
    /// row with this `CKA_ID`, so only the version the caller wrote) and,
    /// when the key has no active version, marks the key deleted (its name
    /// is free again even if the rollback stops here). Returns the version's
    /// state after the write: `Destroying` when its objects may now be
    /// destroyed, `Active` when an activation the caller saw fail did
    /// commit, `None` when the row is gone.
    fn mark_pending_destroying(
        &self,
        key_id: KeyId,
        version: i64,
        cka_id: &ObjectRef,
    ) -> impl Future<Output = Result<Option<VersionState>>> + Send;

    /// Deletes a version row in `state` and, when it was the key's last
    /// version, the key.
    fn delete_version_in_state(
        &self,
        key_id: KeyId,
        version: i64,
        state: VersionState,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Enables or disables one version.
    fn set_version_enabled(
        &self,
        key_id: KeyId,
        version: i64,
        enabled: bool,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// A key by its public identifier, with all its versions (oldest first).
    fn key_by_uid(
        &self,
        uid: &KeyUid,
    ) -> impl Future<Output = Result<Option<(Key, Vec<KeyVersion>)>>> + Send;

    /// A key by its internal id, with its versions.
    fn key_by_id(
        &self,
        id: KeyId,
    ) -> impl Future<Output = Result<Option<(Key, Vec<KeyVersion>)>>> + Send;

    /// Versions of a key, oldest first.
    fn versions(&self, key_id: KeyId) -> impl Future<Output = Result<Vec<KeyVersion>>> + Send;

    /// Versions in a given state, across keys (reconciler).
    fn versions_in_state(
        &self,
        state: VersionState,
    ) -> impl Future<Output = Result<Vec<KeyVersion>>> + Send;

    /// Every active version with its key's uid: (uid, version, `CKA_ID`,
    /// convergent `CKA_ID`). Their objects must be on the token.
    fn active_version_ids(&self) -> impl Future<Output = Result<Vec<ActiveVersionIds>>> + Send;

    /// Every version not destroyed, with its key, owner and NHN key store,
    /// in key then version order; only the key `uid` when given.
    fn versions_with_owners(
        &self,
        uid: Option<&str>,
    ) -> impl Future<Output = Result<Vec<VersionOwner>>> + Send;

    /// Every `CKA_ID` the store names (key versions not destroyed, service keys).
    fn known_object_ids(&self) -> impl Future<Output = Result<Vec<Vec<u8>>>> + Send;

    /// Keys of an account that are visible (not deleted, and past creation:
    /// a key whose first version is still `pending` is not listed), newest
    /// first, with the total count.
    fn list_keys(
        &self,
        account_id: i64,
        offset: i64,
        limit: i64,
    ) -> impl Future<Output = Result<(Vec<Key>, i64)>> + Send;

    /// Writes the mutable fields of a key, only if the row is still at the
    /// revision `k` was read at: `false` when another write came first (read
    /// again and retry).
    fn update_key(&self, k: &Key) -> impl Future<Output = Result<bool>> + Send;

    /// Ids of enabled keys with automatic rotation due at `now`.
    fn keys_due_for_rotation(&self, now: i64) -> impl Future<Output = Result<Vec<KeyId>>> + Send;

    /// Ids of keys pending deletion whose waiting period is over.
    fn keys_due_for_deletion(&self, now: i64) -> impl Future<Output = Result<Vec<KeyId>>> + Send;

    /// Marks a key pending deletion (`REVOKE`) deleted and all its live
    /// versions `destroying`, in one transaction. `false` (nothing written)
    /// when the key is not pending deletion, e.g. another node destroys it.
    fn mark_key_destroying(&self, key_id: KeyId) -> impl Future<Output = Result<bool>> + Send;
}

/// Accounts and their access keys (secret keys only as ciphertexts under
/// the HSM KEK).
pub trait AccountRepo {
    /// Creates an account; `Conflict` when the name is taken.
    fn create_account(&self, name: &str) -> impl Future<Output = Result<i64>> + Send;

    /// Looks an account up by name.
    fn account_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<AccountRecord>>> + Send;

    /// All accounts.
    fn list_accounts(&self) -> impl Future<Output = Result<Vec<AccountRecord>>> + Send;

    /// Stores a new access key.
    fn insert_access_key(
        &self,
        access_key: &str,
        account_id: i64,
        secret_ct: &[u8],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Looks an access key up.
    fn access_key(
        &self,
        access_key: &str,
    ) -> impl Future<Output = Result<Option<AccessKey>>> + Send;

    /// Access keys of all accounts.
    fn list_access_keys(&self) -> impl Future<Output = Result<Vec<AccessKey>>> + Send;

    /// Marks an access key revoked. Returns false when there is no such key.
    fn revoke_access_key(&self, access_key: &str) -> impl Future<Output = Result<bool>> + Send;
}

/// The service keys made at `init` and the installation id that binds the
/// store to its token.
pub trait InstallationRepo {
    /// The `CKA_ID` of a service key, if it was created.
    fn service_key(&self, name: &str) -> impl Future<Output = Result<Option<Vec<u8>>>> + Send;

    /// Records a service key.
    fn put_service_key(&self, name: &str, cka_id: &[u8])
        -> impl Future<Output = Result<()>> + Send;

    /// All service keys' ids.
    fn service_key_ids(&self) -> impl Future<Output = Result<Vec<Vec<u8>>>> + Send;

    /// The installation id this store was bound to at `init` (hex), if any.
    fn installation_id(&self) -> impl Future<Output = Result<Option<String>>> + Send;

    /// Records the installation id; `Conflict` when one is recorded already.
    fn put_installation_id(&self, id: &str) -> impl Future<Output = Result<()>> + Send;

    /// Service keys by name: (name, `CKA_ID`).
    fn service_keys(&self) -> impl Future<Output = Result<Vec<(String, Vec<u8>)>>> + Send;
}

/// NAVER token generators and tokens (hashes only), IP ACLs and API Gateway
/// API keys.
pub trait NaverRepo {
    /// The generator of a key.
    fn generator(
        &self,
        key_id: KeyId,
    ) -> impl Future<Output = Result<Option<TokenGenerator>>> + Send;

    /// Creates or replaces the generator of a key with a new id, active.
    fn put_generator(
        &self,
        key_id: KeyId,
        generator_id: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Disables the generator of a key. Returns false when there is none active.
    fn disable_generator(&self, key_id: KeyId) -> impl Future<Output = Result<bool>> + Send;

    /// Inserts new tokens of one set. With a `parent` (the refresh token the
    /// call was authenticated with), the insert happens only while that token
    /// is still unrevoked, checked under the write lock of the same
    /// transaction; the parent itself is left as it is (renewal keeps it).
    /// Returns `false`, writing nothing, when the parent was revoked. With
    /// `max_live_sets`, `LimitReached("token sets")` when the key's current
    /// generator already has that many live sets (unrevoked, unexpired
    /// refresh tokens), counted under the write lock.
    #[allow(clippy::too_many_arguments)]
    fn insert_tokens(
        &self,
        key_id: KeyId,
        generator_id: &str,
        account_id: i64,
        set_id: &str,
        tokens: &[NewToken],
        parent: TokenParent<'_>,
        max_live_sets: Option<i64>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Looks a token up by its hash.
    fn token_by_hash(
        &self,
        hash: &[u8],
    ) -> impl Future<Output = Result<Option<StoredToken>>> + Send;

    /// Turns the IP ACL of a key on or off.
    fn set_acl_enabled(&self, key_id: KeyId, on: bool) -> impl Future<Output = Result<()>> + Send;

    /// The ACL of a key: (enabled, rules in insertion order).
    fn acl(&self, key_id: KeyId) -> impl Future<Output = Result<(bool, Vec<String>)>> + Send;

    /// Adds rules (duplicates are ignored).
    fn add_acl_rules(
        &self,
        key_id: KeyId,
        rules: &[String],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Removes rules.
    fn delete_acl_rules(
        &self,
        key_id: KeyId,
        rules: &[String],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Stores an API Gateway API key.
    fn insert_api_key(
        &self,
        api_key: &str,
        account_id: i64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The account of an active API key.
    fn api_key_account(&self, api_key: &str) -> impl Future<Output = Result<Option<i64>>> + Send;

    /// Revokes an API key.
    fn revoke_api_key(&self, api_key: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Records one use of an NCP signature (the replay guard's digest of
    /// access key, timestamp and signature) until `expires_at`, in one
    /// statement: `true` when no live record of it exists (none, or one
    /// expired by `now`), `false` when one does: the signature was already
    /// used, on this node or another.
    fn claim_signature(
        &self,
        digest: &[u8],
        expires_at: i64,
        now: i64,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Deletes the signature records expired by `now`.
    fn prune_signatures(&self, now: i64) -> impl Future<Output = Result<u64>> + Send;
}

/// NHN Secure Key Manager projects, appkeys, User Access Keys, key stores,
/// the NHN side of keys and key-store credentials.
pub trait NhnRepo {
    /// Creates a project with its engine account, in one transaction.
    /// `Conflict` when the name is taken.
    fn nhn_create_project(
        &self,
        name: &str,
        account_name: &str,
        require: UserAccessKeyRequirement,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// A project by name.
    fn nhn_project_by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<NhnProjectRecord>>> + Send;

    /// A project by id.
    fn nhn_project(&self, id: i64)
        -> impl Future<Output = Result<Option<NhnProjectRecord>>> + Send;

    /// Records the project's CA key and certificate (once).
    fn nhn_set_project_ca(
        &self,
        id: i64,
        cka_id: &[u8],
        cert: &[u8],
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Every project CA certificate (for the TLS client verifier).
    fn nhn_ca_certs(&self) -> impl Future<Output = Result<Vec<Vec<u8>>>> + Send;

    /// CKA_IDs of the project CA keys (for the reconciler).
    fn nhn_ca_key_ids(&self) -> impl Future<Output = Result<Vec<Vec<u8>>>> + Send;

    /// Adds an appkey to a project.
    fn nhn_insert_appkey(
        &self,
        appkey: &str,
        project_id: i64,
    ) -> impl Future<Output = Result<()>> + Send;

    /// The project of an appkey.
    fn nhn_project_by_appkey(
        &self,
        appkey: &str,
    ) -> impl Future<Output = Result<Option<NhnProjectRecord>>> + Send;

    /// Revokes an active appkey; `false` when no active appkey has this value.
    fn nhn_revoke_appkey(&self, appkey: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Replaces an active appkey by `new` for the same project, in one
    /// transaction: the old one is revoked. `false` when `old` is not an
    /// active appkey.
    fn nhn_rotate_appkey(&self, old: &str, new: &str) -> impl Future<Output = Result<bool>> + Send;

    /// Changes a project's User Access Key requirements; `None` leaves one
    /// as is. `false` when no project has this name.
    fn nhn_update_project(
        &self,
        name: &str,
        management: Option<bool>,
        data: Option<bool>,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Every project, by id.
    fn nhn_projects(&self) -> impl Future<Output = Result<Vec<NhnProjectRecord>>> + Send;

    /// Stores a User Access Key.
    fn nhn_insert_user_access_key(
        &self,
        access_key: &str,
        project_id: i64,
        secret_sha256: &[u8],
    ) -> impl Future<Output = Result<()>> + Send;

    /// A User Access Key.
    fn nhn_user_access_key(
        &self,
        access_key: &str,
    ) -> impl Future<Output = Result<Option<NhnUserAccessKeyRecord>>> + Send;

    /// Revokes a User Access Key.
    fn nhn_revoke_user_access_key(
        &self,
        access_key: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Creates a key store; `Conflict` when the name is taken in the project.
    fn nhn_create_key_store(&self, s: &NewKeyStore) -> impl Future<Output = Result<i64>> + Send;

    /// Creates a key store under a given id; `Conflict` when the id or the
    /// name in the project is taken. Ids made later by
    /// [`NhnRepo::nhn_create_key_store`] come after it on both engines.
    fn nhn_create_key_store_with_id(
        &self,
        s: &NewKeyStore,
        id: i64,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// Changes the switches and export policy of a key store.
    fn nhn_update_key_store(&self, s: &NhnKeyStore) -> impl Future<Output = Result<()>> + Send;

    /// Key stores of a project, by id.
    fn nhn_key_stores(
        &self,
        project_id: i64,
    ) -> impl Future<Output = Result<Vec<NhnKeyStore>>> + Send;

    /// A key store by id.
    fn nhn_key_store(&self, id: i64) -> impl Future<Output = Result<Option<NhnKeyStore>>> + Send;

    /// A key store of a project by name.
    fn nhn_key_store_by_name(
        &self,
        project_id: i64,
        name: &str,
    ) -> impl Future<Output = Result<Option<NhnKeyStore>>> + Send;

    /// Writes the NHN side of a key (right after `insert_key_pending`).
    fn nhn_insert_key(&self, k: &NhnKeyMeta) -> impl Future<Output = Result<()>> + Send;

    /// The NHN side of a key.
    fn nhn_key(&self, key_id: KeyId) -> impl Future<Output = Result<Option<NhnKeyMeta>>> + Send;

    /// Records who changed a key last.
    fn nhn_touch_key_change(
        &self,
        key_id: KeyId,
        user: &str,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Writes last-access times (batched by the engine).
    fn nhn_flush_access(
        &self,
        keys: &[(i64, i64)],
        creds: &[(i64, i64)],
    ) -> impl Future<Output = Result<()>> + Send;

    /// Uids of the keys of a key store that are not destroyed, filtered, in
    /// creation order, with the total count.
    fn nhn_list_keys(
        &self,
        key_store_id: i64,
        f: &NhnKeyFilter,
    ) -> impl Future<Output = Result<(Vec<String>, i64)>> + Send;

    /// Adds a credential; `Conflict` when the same value is live in the
    /// store, `LimitReached("credentials")` when the key store already has
    /// `max_of_kind` live credentials of its kind (counted by the INSERT
    /// itself, under the write lock).
    fn nhn_insert_credential(
        &self,
        c: &NewCredential,
        max_of_kind: Option<i64>,
    ) -> impl Future<Output = Result<i64>> + Send;

    /// Live (active or deleting) credentials of a key store of one kind.
    fn nhn_credentials(
        &self,
        key_store_id: i64,
        kind: CredentialKind,
    ) -> impl Future<Output = Result<Vec<NhnCredential>>> + Send;

    /// The live credential of a key store with this kind and value.
    fn nhn_credential(
        &self,
        key_store_id: i64,
        kind: CredentialKind,
        value: &str,
    ) -> impl Future<Output = Result<Option<NhnCredential>>> + Send;

    /// Marks a credential `deleting` with its deletion time.
    fn nhn_request_credential_deletion(
        &self,
        id: i64,
        at: i64,
        user: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Deletes a credential: status `deleted`, certificate secrets wiped.
    fn nhn_delete_credential(
        &self,
        id: i64,
        at: i64,
        user: &str,
    ) -> impl Future<Output = Result<bool>> + Send;

    /// Credentials whose deletion waiting period is over.
    fn nhn_credentials_due_for_deletion(
        &self,
        now: i64,
    ) -> impl Future<Output = Result<Vec<i64>>> + Send;

    /// The live certificate credential whose DER hashes to `sha256`.
    fn nhn_certificate_by_hash(
        &self,
        sha256: &[u8],
    ) -> impl Future<Output = Result<Option<NhnCredential>>> + Send;
}

/// The activity log: the writer's connection (batches are chained and
/// written with group commit through [`ActivityWriter`]), and the reads of
/// `GET .../activities` and `.../last-use-info`.
pub trait ActivitySink {
    /// A connection of its own for the activity-log writer, whose commits
    /// are flushed to disk only when `fsync` is set (the metadata
    /// connections always flush).
    fn activity_writer(&self, fsync: bool) -> impl Future<Output = Result<ActivityWriter>> + Send;

    /// Activity records of a key in `[from, to]`, oldest first, paged, with
    /// the total count. `keyword` filters on action, caller, address or result.
    fn activity(
        &self,
        key_uid: &str,
        from: i64,
        to: i64,
        keyword: Option<&str>,
        offset: i64,
        limit: i64,
    ) -> impl Future<Output = Result<(Vec<ActivityRecord>, i64)>> + Send;

    /// The newest activity record of a key.
    fn latest_activity(
        &self,
        key_uid: &str,
    ) -> impl Future<Output = Result<Option<ActivityRecord>>> + Send;
}
