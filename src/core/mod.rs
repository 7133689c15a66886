//! The engine, dialect-neutral: accounts and access keys, keys and their
//! versions, crypto operations, rotation, deletion and the start-up
//! reconciler. Dialect modules call this; this calls `hsm` and `store`.

mod accounts;
mod activity;
pub mod attest;
pub mod audit;
mod cache;
mod changes;
mod crypto;
mod invocations;
pub mod jwt;
mod keys;
pub mod naver;
pub mod nhn;
mod reconcile;
mod scheduler;
mod stats;
mod tokens;
mod types;

pub use accounts::{
    ensure_service_keys, AccessKey, AccessKeyInfo, AccountRecord, NewAccessKey, ACCESS_KEY_RECHECK,
};
pub use activity::{ActivityLog, ActivityRecord, Coming};
pub use changes::spawn_change_feed;
pub use crypto::{
    CustomKey, RsaSignature, Sealed, CONTEXT_MAX, ENCRYPT_MAX, RSA_ENCRYPT_MAX, SIGN_DATA_MAX,
};
pub use invocations::{first_block, FIRST_BLOCK, FIRST_BLOCK_MAX, RESERVATION_BLOCK};
pub use keys::{KeyType, KeyView, VersionView};
pub use naver::{CreateKeyRequest, DELETION_WAIT_MS, MAX_VERSIONS, ROTATION_PERIOD_DEFAULT};
pub use reconcile::{bind, destroy_orphans, reconcile, Inventory, ReconcileReport, StartMode};
pub use scheduler::spawn_scheduler;
pub use tokens::{
    parse_rule, GeneratorStatus, Lifetime, StoredToken, TokenAuth, TokenGenerator, TokenKind,
    TokenSet, DEFAULT_ACCESS_HOURS, DEFAULT_REFRESH_HOURS, MAX_TOKEN_MINUTES,
};
pub(crate) use types::stored_names;
pub use types::{
    AccessKeyStatus, Algorithm, Dialect, Key, KeyId, KeyStatus, KeyUid, KeyVersion, ObjectRef,
    UnknownValue, VersionState,
};

use crate::store::{InstallationRepo, KeyRepo};
use std::sync::atomic::AtomicI64;
use std::sync::Arc;

use crate::hsm::{Hsm, HsmError};
use crate::store::{Store, StoreError};

/// An error of the engine. Dialects map each variant to their own envelope.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The key (or other resource) does not exist or is not visible to the caller.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The request is malformed or out of range.
    #[error("{0}")]
    InvalidInput(String),
    /// The resource's state forbids the operation (e.g. rotating a disabled key).
    #[error("{0}")]
    InvalidState(String),
    /// The key is disabled or pending deletion.
    #[error("the key is not enabled")]
    KeyDisabled,
    /// The key version named by the ciphertext or request is disabled or destroyed.
    #[error("key version {0} is disabled or unavailable")]
    VersionDisabled(i64),
    /// The key type does not support the operation.
    #[error("the operation is not supported by key type {0}")]
    WrongKeyType(String),
    /// The ciphertext did not decrypt (tampered, wrong context, wrong key).
    #[error("the ciphertext could not be decrypted")]
    DecryptFailed,
    /// A name or identifier is already taken.
    #[error("{0}")]
    Conflict(String),
    /// Authentication failed.
    #[error("{0}")]
    Unauthenticated(String),
    /// The caller may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// An NHN key store's IPv4 / MAC / client-certificate check refused the client.
    #[error("{0}")]
    KeyStoreAuth(nhn::AuthFactor),
    /// An owner has as many objects of a kind as `[limits]` allows.
    #[error("{0}")]
    LimitExceeded(String),
    /// The token no longer holds the object of a key version that the store
    /// names (deleted outside hsm-kms). Other keys are unaffected.
    #[error("key material missing from the HSM")]
    KeyMaterialMissing,
    /// A fault of the HSM or the store; details are logged, not returned.
    #[error("internal error")]
    Internal(String),
    /// A dependency is unusable right now (the token is being
    /// re-initialised or unreachable, the store's disk is full or read-only,
    /// the store file is lost): 503 with `Retry-After` ([`RETRY_AFTER_SECS`]);
    /// the request did not take effect and may be retried. The text is
    /// client-safe (it names the dependency, never a PKCS#11 or SQLite
    /// code); details are logged.
    #[error("service unavailable: {0}")]
    Unavailable(String),
}

/// `Retry-After` (seconds) of an answer to [`Error::Unavailable`].
pub const RETRY_AFTER_SECS: u64 = 1;

impl From<HsmError> for Error {
    fn from(e: HsmError) -> Self {
        match e {
            HsmError::DecryptFailed => Error::DecryptFailed,
            HsmError::DataLength => {
                Error::InvalidInput("data length out of range for the key".into())
            }
            HsmError::ObjectNotFound => {
                metrics::counter!("hsm_kms_key_material_missing_total").increment(1);
                tracing::error!(
                    "key material missing from the HSM: the store names an object the token \
                     does not hold (see `hsm-kms admin reconcile`)"
                );
                Error::KeyMaterialMissing
            }
            e @ HsmError::Unavailable(_) => {
                tracing::warn!(error = %e, "answering 503: the HSM is unavailable");
                Error::Unavailable("the HSM is temporarily unavailable; retry later".into())
            }
            e if e.fault().is_some() => {
                tracing::warn!(error = %e, "answering 503: token fault");
                Error::Unavailable("the HSM is temporarily unavailable; retry later".into())
            }
            other => {
                tracing::error!(error = %other, "HSM failure");
                Error::Internal(other.to_string())
            }
        }
    }
}

impl From<StoreError> for Error {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict => Error::Conflict("already exists".into()),
            StoreError::Gone(what) => Error::Conflict(format!("{what}; retry")),
            StoreError::LimitReached(what) => {
                Error::LimitExceeded(format!("the limit on {what} is reached"))
            }
            other if other.is_unavailable() => {
                tracing::error!(error = %other, "the metadata store is unavailable");
                Error::Unavailable("the metadata store is unavailable; retry later".into())
            }
            other => {
                tracing::error!(error = %other, "store failure");
                Error::Internal(other.to_string())
            }
        }
    }
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Result type of the engine.
pub type Result<T> = std::result::Result<T, Error>;

/// A key with its versions, as cached in memory.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// The key.
    pub key: Key,
    /// Its versions, oldest first.
    pub versions: Vec<KeyVersion>,
}

/// Keys [`Engine::preload_keys`] puts in the key cache at most (about
/// 0.9 kB each; README "### Key count").
pub const KEY_PRELOAD_MAX: usize = 250_000;

/// Live keys with their versions, read from the store for the key cache
/// ([`Engine::install_preload`]) before an engine exists.
pub struct Preload {
    /// Changes after this position may postdate the read.
    since: i64,
    /// Except these, committed before the read (PostgreSQL only, see
    /// [`PRELOAD_CHANGE_WINDOW`]).
    seen: std::collections::HashSet<i64>,
    rows: Vec<(Key, Vec<KeyVersion>)>,
}

/// On PostgreSQL ([`Store::commits_out_of_log_order`]) a change's position
/// is taken at its insert, so a transaction still open when the log's last
/// position is read may commit a lower one after it. [`Preload::read`]
/// therefore notes which of the last this-many positions are committed
/// before it reads the keys, and [`Engine::install_preload`] applies every
/// other change after the window's start as well. A transaction that
/// outlasts this many later changes could still leave its key as read
/// until the change feed drops it (its `NOTIFY`), as for any node's cache.
const PRELOAD_CHANGE_WINDOW: i64 = 1_000;

impl Preload {
    /// Notes the change log's position (and on PostgreSQL the committed
    /// positions just below it), then reads the live keys (up to
    /// [`KEY_PRELOAD_MAX`]) in two store queries.
    pub async fn read(store: &Store) -> Result<Preload> {
        let last = store.last_change().await?;
        let (since, seen) = if store.commits_out_of_log_order() {
            let since = last.saturating_sub(PRELOAD_CHANGE_WINDOW).max(0);
            let seen = store.change_seqs_between(since, last).await?;
            (since, seen.into_iter().collect())
        } else {
            (last, std::collections::HashSet::new())
        };
        let rows = store.live_keys_with_versions(KEY_PRELOAD_MAX).await?;
        Ok(Preload { since, seen, rows })
    }

    /// Keys read.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether no key was read.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

impl KeyEntry {
    /// Bytes this entry holds: itself, its strings and versions.
    fn heap_bytes(&self) -> usize {
        let k = &self.key;
        let strings = k.uid.capacity()
            + [&k.name, &k.memo, &k.protection_type]
                .iter()
                .map(|s| s.capacity())
                .sum::<usize>()
            + k.status_before_delete.as_ref().map_or(0, String::capacity);
        let versions = self.versions.capacity() * std::mem::size_of::<KeyVersion>()
            + self
                .versions
                .iter()
                .map(|v| v.cka_id.capacity() + v.aux_cka_id.as_ref().map_or(0, ObjectRef::capacity))
                .sum::<usize>();
        std::mem::size_of::<KeyEntry>() + strings + versions
    }

    /// The newest active version.
    pub fn current(&self) -> Option<&KeyVersion> {
        self.versions
            .iter()
            .rev()
            .find(|v| v.state == VersionState::Active)
    }

    /// Whether a call naming version `n` (a ciphertext's, a signature's, a
    /// query's) must read the key again before it is judged: this entry
    /// does not hold `n` past its creation (absent, or still `pending` when
    /// it was read), and `n` could still be a version another node made
    /// since: at most `max`, and newer than every version the entry holds
    /// (versions are numbered in order, so one missing below the newest was
    /// never made, unless it was pending when read). Both dialects' crypto
    /// decide here.
    pub fn names_unseen(&self, n: i64, max: i64) -> bool {
        if !(1..=max).contains(&n) {
            return false;
        }
        match self.versions.iter().find(|v| v.version == n) {
            Some(v) => v.state == VersionState::Pending,
            None => self.versions.iter().all(|v| v.version < n),
        }
    }

    /// A given version if it is active.
    pub fn version(&self, n: i64) -> Option<&KeyVersion> {
        self.versions
            .iter()
            .find(|v| v.version == n && v.state == VersionState::Active)
    }
}

/// Service key names recorded in the store.
pub mod service_keys {
    /// AES-256 KEK that encrypts API secret keys in the store.
    pub const KEK: &str = "kek";
    /// HMAC key that chains the audit log.
    pub const AUDIT_HMAC: &str = "audit-hmac";
    /// P-256 key that signs attestation reports.
    pub const ATTESTATION: &str = "attestation";
    /// P-256 key that signs NAVER tokens (JWT, ES256).
    pub const TOKEN_SIGNING: &str = "token-signing";
}

/// The engine. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

struct EngineInner {
    hsm: Hsm,
    store: Store,
    keys: cache::Cache<KeyUid, Arc<KeyEntry>>,
    secrets: cache::Cache<String, accounts::CachedSecret>,
    kek_id: Vec<u8>,
    activity: ActivityLog,
    tokens: cache::Cache<Vec<u8>, StoredToken>,
    generators: cache::Cache<KeyId, Option<TokenGenerator>>,
    acls: cache::Cache<KeyId, (bool, Vec<ipnet::IpNet>)>,
    token_hour_ms: i64,
    /// The key that signs NAVER tokens; read again on use until `init`
    /// (the upgrade step) has made it.
    token_signer: tokio::sync::OnceCell<jwt::TokenSigner>,
    /// `naver.region`: new key tags carry its prefix; keys isolated in
    /// another region are refused.
    naver_region: Option<naver::Region>,
    limits: ObjectLimits,
    /// How NAVER RSA2048 keys sign (`naver.rsa_signature`).
    rsa_signature: RsaSignature,
    nhn: nhn::NhnState,
    /// The store's installation id at start, if it had one.
    installation_id: Option<String>,
    /// Versions whose creation failed after their objects were made and
    /// whose rollback the store refused: retried by each scheduler pass.
    abandoned: std::sync::Mutex<Vec<keys::Abandoned>>,
    /// AES-GCM invocations per key version.
    gcm: invocations::GcmCounts,
    /// The last position of the store's change log applied to the caches
    /// (see `changes`).
    change_seq: AtomicI64,
}

/// Engine settings that are not the token or the store.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Keep the activity log.
    pub activity_log: bool,
    /// Flush every activity-log commit to disk (power-loss durable).
    pub activity_fsync: bool,
    /// Length of one "hour" of token lifetimes, ms (3 600 000; tests shorten it).
    pub token_hour_ms: i64,
    /// How many objects one owner may make.
    pub limits: ObjectLimits,
    /// AES-GCM encryptions allowed per key version (`hsm.gcm_invocation_limit`).
    pub gcm_invocation_limit: u64,
    /// When the audit chain gets a signed checkpoint (`[audit]`).
    pub checkpoints: audit::CheckpointPolicy,
    /// Keep the activity log's INSERTs prepared
    /// (`activity_log.statement_cache`).
    pub activity_statement_cache: bool,
    /// How long the activity log's writer waits for more records after the
    /// first of a batch (`activity_log.batch_wait_us`).
    pub activity_batch_wait: std::time::Duration,
    /// Batch size that ends that wait (`activity_log.batch_min_records`;
    /// 0: the largest batch).
    pub activity_batch_min: usize,
    /// Other logged requests on their way that make that wait worth it
    /// (`activity_log.batch_siblings`).
    pub activity_batch_siblings: usize,
    /// On SQLite, the activity log's writer runs on an OS thread of its own
    /// with its own synchronous connection (`activity_log.writer_thread`).
    pub activity_writer_thread: bool,
    /// How NAVER RSA2048 keys sign (`naver.rsa_signature`): RSASSA-PSS by
    /// default; verification accepts both schemes (see [`RsaSignature`]).
    pub rsa_signature: RsaSignature,
    /// `naver.region`: the region new NAVER keys are isolated in (their
    /// tags carry its prefix); `None`: NAVER's global keys, as before.
    pub naver_region: Option<naver::Region>,
    /// How the audit chain is sealed (`audit.seal`): per batch (default)
    /// or per record.
    pub audit_seal: audit::SealMode,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            activity_log: true,
            activity_fsync: true,
            token_hour_ms: 3_600_000,
            limits: ObjectLimits::default(),
            gcm_invocation_limit: crate::hsm::GCM_INVOCATION_LIMIT,
            checkpoints: audit::CheckpointPolicy::default(),
            activity_statement_cache: true,
            activity_batch_wait: std::time::Duration::ZERO,
            activity_batch_min: 0,
            activity_batch_siblings: 4,
            activity_writer_thread: true,
            rsa_signature: RsaSignature::default(),
            naver_region: None,
            audit_seal: audit::SealMode::Batch,
        }
    }
}

/// How many objects one owner may make (`[limits]`): each creation checks
/// its count in the same write transaction as its insert, so concurrent
/// creations cannot overshoot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectLimits {
    /// Keys per account (NAVER accounts and NHN projects), not destroyed.
    pub keys_per_account: i64,
    /// Live token sets per NAVER key.
    pub token_sets_per_key: i64,
    /// NHN secrets per project, not destroyed.
    pub nhn_secrets_per_project: i64,
    /// Versions of one NHN secret.
    pub secret_versions: i64,
    /// Client certificates per NHN key store, not deleted.
    pub certificates_per_key_store: i64,
}

impl Default for ObjectLimits {
    fn default() -> Self {
        ObjectLimits {
            keys_per_account: 10_000,
            token_sets_per_key: 100,
            nhn_secrets_per_project: 10_000,
            secret_versions: 100,
            certificates_per_key_store: 100,
        }
    }
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("hsm", &self.inner.hsm)
            .finish()
    }
}

impl Engine {
    /// Builds the engine over an initialised token and store. Fails when
    /// `init` has not created the service keys yet.
    pub async fn new(hsm: Hsm, store: Store) -> Result<Self> {
        Self::with_options(hsm, store, EngineOptions::default()).await
    }

    /// [`Engine::new`] with explicit options. Starts the activity-log writer,
    /// so it must run inside a tokio runtime.
    pub async fn with_options(hsm: Hsm, store: Store, opts: EngineOptions) -> Result<Self> {
        let kek_id = store.service_key(service_keys::KEK).await?.ok_or_else(|| {
            Error::InvalidState("the service is not initialised: run `hsm-kms init`".into())
        })?;
        let store_for_log = store.clone();
        let installation_id = store.installation_id().await?;
        // The caches start empty: only later changes can make them stale.
        let change_seq = store.last_change().await?;
        let token_signer = jwt::TokenSigner::load(&hsm, &store).await?;
        if token_signer.is_none() {
            tracing::warn!(
                "this installation has no token-signing key: NAVER token sets cannot be \
                 issued until `hsm-kms init` (the upgrade step) adds it; tokens issued \
                 before keep working"
            );
        }
        // Every record is chained: no activity log without the audit keys.
        let chain = if opts.activity_log {
            Some(
                audit::AuditChain::open(hsm.clone(), &store, opts.checkpoints)
                    .await?
                    .with_statement_cache(opts.activity_statement_cache)
                    .with_seal(opts.audit_seal),
            )
        } else {
            None
        };
        Ok(Engine {
            inner: Arc::new(EngineInner {
                hsm,
                store,
                keys: cache::Cache::new(),
                secrets: cache::Cache::new(),
                kek_id,
                activity: ActivityLog::start(
                    store_for_log,
                    chain,
                    activity::WriterOptions {
                        fsync: opts.activity_fsync,
                        batch_wait: opts.activity_batch_wait,
                        batch_min: opts.activity_batch_min,
                        batch_siblings: opts.activity_batch_siblings,
                        thread: opts.activity_writer_thread,
                    },
                ),
                tokens: cache::Cache::new(),
                generators: cache::Cache::new(),
                acls: cache::Cache::new(),
                token_hour_ms: opts.token_hour_ms.max(1),
                token_signer: tokio::sync::OnceCell::new_with(token_signer),
                naver_region: opts.naver_region,
                limits: opts.limits,
                rsa_signature: opts.rsa_signature,
                nhn: nhn::NhnState::default(),
                installation_id,
                abandoned: std::sync::Mutex::new(Vec::new()),
                gcm: invocations::GcmCounts::new(opts.gcm_invocation_limit),
                change_seq: AtomicI64::new(change_seq),
            }),
        })
    }

    /// The HSM port. Only the engine uses it (a dialect never calls
    /// PKCS#11); with `test-hooks` the tests may, to inspect the token.
    #[cfg(feature = "test-hooks")]
    pub fn hsm(&self) -> &Hsm {
        &self.inner.hsm
    }

    /// The HSM port (the engine's own).
    #[cfg(not(feature = "test-hooks"))]
    pub(crate) fn hsm(&self) -> &Hsm {
        &self.inner.hsm
    }

    /// The metadata store. Only the engine uses it (a dialect never runs
    /// SQL); with `test-hooks` the tests may, to inspect or damage rows.
    #[cfg(feature = "test-hooks")]
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The metadata store (the engine's own).
    #[cfg(not(feature = "test-hooks"))]
    pub(crate) fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Label of the token in use (for the start-up log line).
    pub fn token_label(&self) -> &str {
        self.inner.hsm.token_label()
    }

    /// Whether the store's file is still the one the engine opened (SQLite;
    /// always true on PostgreSQL). A deleted or replaced file marks the
    /// store lost for good (see [`Engine::check_store`]).
    pub fn store_file_ok(&self) -> bool {
        self.inner.store.check_file().is_ok()
    }

    /// The object-count limits in force.
    pub fn limits(&self) -> ObjectLimits {
        self.inner.limits
    }

    /// Loads a key (with its versions) from the cache or the store.
    pub async fn key_entry(&self, uid: &KeyUid) -> Result<Arc<KeyEntry>> {
        let seen = match self.inner.keys.get(uid) {
            Ok(e) => return Ok(e),
            Err(generation) => generation,
        };
        let uid = uid.clone();
        let (key, versions) = self
            .inner
            .store
            .key_by_uid(&uid)
            .await?
            .ok_or(Error::NotFound("key"))?;
        let entry = Arc::new(KeyEntry { key, versions });
        self.inner.keys.fill(uid, entry.clone(), seen);
        Ok(entry)
    }

    /// Fills the key cache with the live keys (up to [`KEY_PRELOAD_MAX`])
    /// in two store queries ([`Preload::read`], then
    /// [`Engine::install_preload`]), so that the first use of a key after a
    /// start reads nothing from the store. Returns the number of keys read.
    /// Keys already cached (read by a request meanwhile) are kept; an
    /// invalidation during the read keeps none of them (they load on first
    /// use as before). `serve` makes the read beside the token enumeration
    /// instead, before the engine exists.
    pub async fn preload_keys(&self) -> Result<usize> {
        let seen = self.inner.keys.generation();
        let p = Preload::read(self.store()).await?;
        self.fill_preload(p, seen).await
    }

    /// Fills the key cache with keys read before this engine existed, then
    /// drops every entry that a change logged since the read names (a key
    /// the start-up reconciler, another node or the admin CLI changed
    /// meanwhile loads again on first use). Returns the number of keys
    /// read. Publishes `hsm_kms_key_cache_entries` and
    /// `hsm_kms_key_cache_bytes`.
    pub async fn install_preload(&self, p: Preload) -> Result<usize> {
        let seen = self.inner.keys.generation();
        self.fill_preload(p, seen).await
    }

    async fn fill_preload(&self, p: Preload, seen: u64) -> Result<usize> {
        let n = p.rows.len();
        // A key with no active version is still being created (perhaps by
        // another node): cached as read, it would answer "not found" after
        // its activation until the change feed dropped it. It loads on
        // first use instead.
        let kept = self.inner.keys.fill_many(
            p.rows
                .into_iter()
                .map(|(key, versions)| KeyEntry { key, versions })
                .filter(|e| e.current().is_some())
                .map(|e| (e.key.uid.clone(), Arc::new(e))),
            seen,
        );
        if !kept {
            tracing::info!("a key changed during the key preload; keys load on first use");
        }
        let (_, reload_cas) = self
            .apply_changes_after(p.since, &p.seen, |seq| seq)
            .await?;
        if reload_cas {
            self.nhn_load_cas().await?;
        }
        let (entries, bytes) = self.key_cache_size();
        metrics::gauge!("hsm_kms_key_cache_entries").set(entries as f64);
        metrics::gauge!("hsm_kms_key_cache_bytes").set(bytes as f64);
        Ok(n)
    }

    /// The key cache's entries and (approximate) bytes: its table plus each
    /// entry's key row, versions and heap buffers.
    pub fn key_cache_size(&self) -> (usize, usize) {
        self.inner
            .keys
            .measure(|uid, e| uid.capacity() + 2 * std::mem::size_of::<usize>() + e.heap_bytes())
    }

    /// A key of `account_id` that is not deleted; another account's key is
    /// reported as not found, never described. So is a key still being
    /// created (no active version yet), which no client has been given.
    pub async fn owned_key(&self, account_id: i64, uid: &KeyUid) -> Result<Arc<KeyEntry>> {
        let e = self.key_entry(uid).await?;
        if e.key.account_id != account_id
            || e.key.status == KeyStatus::Deleted
            || e.current().is_none()
        {
            return Err(Error::NotFound("key"));
        }
        Ok(e)
    }

    /// [`Engine::owned_key`] for a call that names version `n` (a
    /// ciphertext's or a signature's). Another node may have made that
    /// version after this process cached the key, and its client may bring
    /// the ciphertext here at once: when the cached entry does not hold
    /// version `n` past its creation ([`KeyEntry::names_unseen`]), the key
    /// is read from the store again, once, before the call is judged.
    /// Versions outside 1 to 100, or below the newest the entry holds, are
    /// judged on the cached entry.
    pub async fn owned_key_naming(
        &self,
        account_id: i64,
        uid: &KeyUid,
        n: i64,
    ) -> Result<Arc<KeyEntry>> {
        let e = self.owned_key(account_id, uid).await?;
        if !e.names_unseen(n, MAX_VERSIONS) {
            return Ok(e);
        }
        self.invalidate(uid);
        self.owned_key(account_id, uid).await
    }

    /// Drops a key from the cache after a change.
    pub fn invalidate(&self, uid: &str) {
        self.inner.keys.remove(uid);
    }

    /// Checks the token and the store answer (for `/readyz`), and that the
    /// store is still this installation's ([`Engine::check_store`]).
    pub async fn ready(&self) -> Result<()> {
        // `/readyz` is for operators: it says why the token is unusable
        // (API answers only say "temporarily unavailable").
        self.inner.hsm.ping().await.map_err(|e| match e {
            HsmError::Unavailable(why) => Error::Unavailable(why),
            other => Error::from(other),
        })?;
        self.check_store().await?;
        self.inner
            .store
            .ping()
            .await
            .map_err(|e| Error::Unavailable(format!("the metadata store is unavailable: {e}")))?;
        Ok(())
    }

    /// True once the store file was found deleted or replaced: every API
    /// call answers 503 and `serve` exits (see `server::start`).
    pub fn store_lost(&self) -> bool {
        self.inner.store.lost().is_some()
    }

    /// Checks the store every `interval` with [`Engine::check_store`] and
    /// returns why once it is lost (deleted or replaced). `serve` stops on
    /// it: the running process cannot get its store back (its connections
    /// hold the old inode) and must not adopt another file without the
    /// start-up binding check.
    pub async fn watch_store(&self, interval: std::time::Duration) -> String {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let _ = self.check_store().await;
            if let Some(why) = self.inner.store.lost() {
                return why.to_string();
            }
        }
    }

    /// Checks that the store is the one this engine started on: the same
    /// file (inode and device of `metadata.db`) holding the same
    /// installation id. A mismatch marks the store lost for good. A store
    /// that cannot be read right now is not a mismatch.
    pub async fn check_store(&self) -> Result<()> {
        let store = &self.inner.store;
        store.check_file()?;
        if let Some(expected) = &self.inner.installation_id {
            match store.installation_id().await {
                Ok(Some(id)) if &id == expected => {}
                Ok(found) => {
                    return Err(store
                        .mark_lost(format!(
                            "its installation id changed from {expected} to {}",
                            found.as_deref().unwrap_or("none")
                        ))
                        .into())
                }
                Err(e) if e.is_unavailable() => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// Fault-injection points for the crash-consistency tests. Compiled only
/// with the `test-hooks` feature: when `HSM_KMS_FAULT_PAUSE` names the point,
/// the process writes the file named by `HSM_KMS_FAULT_MARKER` and blocks
/// forever, so that the test can SIGKILL it exactly there.
///
/// With `HSM_KMS_FAULT_GATE` naming the point instead, the process writes
/// the marker and waits until the test deletes it, then goes on: the test
/// changes the world (fills the store's disk) at exactly that point.
#[cfg(feature = "test-hooks")]
pub fn fault_point(name: &str) {
    if std::env::var("HSM_KMS_FAULT_GATE").ok().as_deref() == Some(name) {
        if let Ok(marker) = std::env::var("HSM_KMS_FAULT_MARKER") {
            let _ = std::fs::write(&marker, name);
            let wait = || {
                while std::path::Path::new(&marker).exists() {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
            };
            // On a multi-thread runtime the worker's queued tasks move to
            // another thread while this one waits: a task woken here just
            // before (sqlx's PostgreSQL connection returning to its pool)
            // would otherwise sit in this worker's LIFO slot, which no other
            // worker steals, and the test waiting on it hung.
            match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
                Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(wait),
                _ => wait(),
            }
        }
    }
    if std::env::var("HSM_KMS_FAULT_PAUSE").ok().as_deref() == Some(name) {
        if let Ok(marker) = std::env::var("HSM_KMS_FAULT_MARKER") {
            let _ = std::fs::write(marker, name);
        }
        loop {
            std::thread::sleep(std::time::Duration::from_secs(3600));
        }
    }
}

/// No-op without the `test-hooks` feature.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn fault_point(_name: &str) {}
