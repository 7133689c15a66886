//! NHN Secure Key Manager tenancy and key-store authentication: projects and
//! their appkeys, User Access Keys, key stores with their IPv4 / MAC /
//! client-certificate switches and export policy. Keys are in `keys.rs`,
//! their operations in `crypto.rs`, credentials and the per-project CA in
//! `certs.rs`.

mod certs;
mod crypto;
mod keys;

pub use certs::{
    CertificateView, CredentialKind, CredentialStatus, CredentialView, IssuedCertificate,
    NhnCredential,
};
pub use crypto::{LocalKey, NHN_SECRET_MAX};
pub use keys::{
    check_key_id, NhnKeyFilter, NhnKeyType, NhnKeyView, KEY_DELETION_WAIT_MS, KEY_ID_HEX_LEN,
};

use crate::store::NhnRepo;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use rand::distributions::Alphanumeric;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use super::cache::Cache;
use super::{Engine, Error, Result, ACCESS_KEY_RECHECK};
use crate::store::{NewKeyStore, StoreError};

/// The user recorded as creator / modifier when no User Access Key is used.
pub const DEFAULT_USER: &str = "SECURE_KEY_MANAGER";

/// Which key-store authentication refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFactor {
    /// The client's IPv4 address is not registered.
    Ipv4,
    /// The `X-TOAST-CLIENT-MAC-ADDR` header is missing or not registered.
    Mac,
    /// No valid, unexpired, not-deleted client certificate of the key store.
    Certificate,
}

impl std::fmt::Display for AuthFactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            AuthFactor::Ipv4 => "IPv4 authentication failed",
            AuthFactor::Mac => "MAC authentication failed",
            AuthFactor::Certificate => "certificate authentication failed",
        })
    }
}

/// What the server saw of a client: address (after the trusted-proxy rule),
/// MAC header, and the SHA-256 of the TLS client certificate, if any.
#[derive(Debug, Clone)]
pub struct NhnClient {
    /// Client address.
    pub ip: IpAddr,
    /// `X-TOAST-CLIENT-MAC-ADDR`, as sent.
    pub mac: Option<String>,
    /// SHA-256 of the DER of the certificate presented in the TLS handshake.
    pub cert_sha256: Option<[u8; 32]>,
}

/// A project as the API sees it.
#[derive(Debug, Clone)]
pub struct NhnProject {
    /// Project id.
    pub id: i64,
    /// Name.
    pub name: String,
    /// Engine account owning the keys.
    pub account_id: i64,
    /// Which calls must carry a valid User Access Key.
    pub require: UserAccessKeyRequirement,
}

impl NhnProject {
    /// Whether a call of this class must carry a User Access Key.
    pub fn requires_user_access_key(&self, call: NhnCall) -> bool {
        match call {
            NhnCall::Management => self.require.management,
            NhnCall::Data => self.require.data,
        }
    }
}

impl From<NhnProjectRecord> for NhnProject {
    fn from(r: NhnProjectRecord) -> Self {
        NhnProject {
            id: r.id,
            name: r.name,
            account_id: r.account_id,
            require: UserAccessKeyRequirement {
                management: r.require_user_access_key,
                data: r.require_user_access_key_on_data,
            },
        }
    }
}

/// The two classes of NHN calls (`docs/nhn-error-codes.md` lists each
/// route's class).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NhnCall {
    /// Credentials, key creation and deletion, secret updates, key-store and
    /// key queries: what an appkey alone must not do. A User Access Key is
    /// required unless the project turned that off.
    Management,
    /// Encrypt, decrypt, create-local-key, sign, verify, secret and key
    /// reads, confirm: the appkey and the key store's IPv4 / MAC /
    /// certificate checks (a User Access Key only where the project asks).
    Data,
}

/// A short, stable, non-reversible name of an appkey for logs and the admin
/// CLI: the first 12 hex digits of its SHA-256. The appkey itself is a
/// bearer credential and is never logged.
pub fn appkey_fingerprint(appkey: &str) -> String {
    let h = Sha256::digest(appkey.as_bytes());
    h[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// A freshly made User Access Key; the secret is shown once.
pub struct NewUserAccessKey {
    /// User Access Key id.
    pub access_key: String,
    /// Secret Access Key. Never logged; stored only as a SHA-256.
    pub secret: Zeroizing<String>,
}

impl std::fmt::Debug for NewUserAccessKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewUserAccessKey")
            .field("access_key", &self.access_key)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Which calls of a project need a User Access Key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UserAccessKeyRequirement {
    /// Management calls (credentials, key creation and deletion, secret
    /// updates, key-store queries). On by default.
    pub management: bool,
    /// Data calls (encrypt, decrypt, sign, verify, secret and key reads).
    pub data: bool,
}

impl Default for UserAccessKeyRequirement {
    fn default() -> Self {
        UserAccessKeyRequirement {
            management: true,
            data: false,
        }
    }
}

/// An NHN key store: its authentication switches and export policy.
/// The store reads it by column name (`FromRow`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NhnKeyStore {
    /// Key store id (NHN `keyStoreId`).
    pub id: i64,
    /// Owning project.
    pub project_id: i64,
    /// Name, unique in the project.
    pub name: String,
    /// Description.
    pub description: String,
    /// IPv4 authentication on.
    pub ip4_auth_use: bool,
    /// MAC authentication on.
    pub mac_auth_use: bool,
    /// Client-certificate authentication on.
    pub certificate_auth_use: bool,
    /// Keys created in this store are extractable (symmetric-key and
    /// private-key queries allowed).
    pub allow_export: bool,
    /// Creator.
    pub creation_user: String,
    /// Creation time, ms.
    pub created_at: i64,
    /// Last modifier.
    pub last_change_user: String,
    /// Last change, ms.
    pub updated_at: i64,
}

/// Settings of a key store to create (admin).
#[derive(Debug, Clone, Default)]
pub struct KeyStoreSettings {
    /// Name, unique in the project.
    pub name: String,
    /// Description.
    pub description: String,
    /// IPv4 authentication.
    pub ip4_auth_use: bool,
    /// MAC authentication.
    pub mac_auth_use: bool,
    /// Client-certificate authentication.
    pub certificate_auth_use: bool,
    /// Export policy: keys created in the store are readable back.
    pub allow_export: bool,
}

/// The active credentials of a key store, cached for the auth checks.
#[derive(Debug)]
pub(crate) struct KeyStoreAuth {
    pub store: NhnKeyStore,
    ipv4: Vec<(i64, IpAddr)>,
    macs: Vec<(i64, String)>,
    certs: Vec<(i64, Vec<u8>, i64)>,
}

/// A project found through an appkey, and when the store last said the
/// appkey is active.
#[derive(Debug, Clone)]
struct CachedAppkey {
    project: Arc<NhnProject>,
    checked_at: Instant,
}

/// In-memory state of the NHN dialect's engine side: caches and the batch of
/// last-access times not yet written. The caches are generation-guarded
/// ([`Cache`]): a load that started before an invalidation (a credential
/// deletion, a switch change, a revoked appkey) is used once and not kept.
pub(crate) struct NhnState {
    appkeys: Cache<String, CachedAppkey>,
    keys: Cache<String, Arc<NhnKeyMeta>>,
    stores: Cache<i64, Arc<KeyStoreAuth>>,
    key_access: Mutex<HashMap<i64, i64>>,
    cred_access: Mutex<HashMap<i64, i64>>,
    cas: RwLock<(u64, Vec<Vec<u8>>)>,
}

impl Default for NhnState {
    fn default() -> Self {
        NhnState {
            appkeys: Cache::new(),
            keys: Cache::new(),
            stores: Cache::new(),
            key_access: Mutex::default(),
            cred_access: Mutex::default(),
            cas: RwLock::default(),
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|p| p.into_inner())
}
fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|p| p.into_inner())
}
fn lock<T>(l: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    l.lock().unwrap_or_else(|p| p.into_inner())
}

fn random_text(len: usize) -> String {
    rand::rngs::OsRng
        .sample_iter(&Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Checks an appkey an operator brings: 8 to 64 ASCII letters and digits.
/// NHN's appkeys are letters and digits (the console shows them); the
/// bound keeps it one URL path segment that needs no encoding, and long
/// enough not to be guessed from a short list.
pub fn check_appkey(appkey: &str) -> Result<()> {
    if !(8..=64).contains(&appkey.len()) || !appkey.bytes().all(|b| b.is_ascii_alphanumeric()) {
        return Err(Error::InvalidInput(
            "an appkey is 8 to 64 ASCII letters and digits".into(),
        ));
    }
    Ok(())
}

/// Checks a User Access Key an operator brings: the id 8 to 64 ASCII
/// letters and digits (NHN's are 20), the Secret Access Key 8 to 128
/// visible ASCII characters (it travels in the `X-TC-AUTHENTICATION-SECRET`
/// header, so no spaces or control characters).
pub fn check_user_access_key(access_key: &str, secret: &str) -> Result<()> {
    if !(8..=64).contains(&access_key.len())
        || !access_key.bytes().all(|b| b.is_ascii_alphanumeric())
    {
        return Err(Error::InvalidInput(
            "a User Access Key id is 8 to 64 ASCII letters and digits".into(),
        ));
    }
    if !(8..=128).contains(&secret.len()) || !secret.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(Error::InvalidInput(
            "a Secret Access Key is 8 to 128 visible ASCII characters".into(),
        ));
    }
    Ok(())
}

/// Normalises a MAC address to lower-case, colon-separated form, or `None`
/// when it is not six hexadecimal pairs.
pub fn normalize_mac(s: &str) -> Option<String> {
    let parts: Vec<&str> = s.trim().split([':', '-']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.len() != 2 || !p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts.join(":").to_ascii_lowercase())
}

fn as_ipv4(ip: IpAddr) -> Option<std::net::Ipv4Addr> {
    match ip {
        IpAddr::V4(v4) => Some(v4),
        IpAddr::V6(v6) => v6.to_ipv4_mapped(),
    }
}

impl Engine {
    fn nhn(&self) -> &NhnState {
        &self.inner.nhn
    }

    /// Creates a project (and the engine account owning its keys).
    /// `require_user_access_key`: management calls need a User Access Key
    /// (the admin CLI's default); data calls do not.
    pub async fn nhn_create_project(
        &self,
        name: &str,
        require_user_access_key: bool,
    ) -> Result<i64> {
        self.nhn_create_project_with(
            name,
            UserAccessKeyRequirement {
                management: require_user_access_key,
                data: false,
            },
        )
        .await
    }

    /// Creates a project with explicit User Access Key requirements.
    pub async fn nhn_create_project_with(
        &self,
        name: &str,
        require: UserAccessKeyRequirement,
    ) -> Result<i64> {
        if name.is_empty() || name.chars().count() > 56 {
            return Err(Error::InvalidInput(
                "project name must be 1 to 56 characters".into(),
            ));
        }
        match self
            .store()
            .nhn_create_project(name, &format!("nhn:{name}"), require)
            .await
        {
            Ok(id) => Ok(id),
            Err(StoreError::Conflict) => Err(Error::Conflict(format!("project {name} exists"))),
            Err(e) => Err(e.into()),
        }
    }

    async fn nhn_project_named(&self, name: &str) -> Result<NhnProjectRecord> {
        self.store()
            .nhn_project_by_name(name)
            .await?
            .ok_or(Error::NotFound("project"))
    }

    /// Makes a new appkey (32 random characters) for a project.
    pub async fn nhn_create_appkey(&self, project: &str) -> Result<String> {
        let p = self.nhn_project_named(project).await?;
        let appkey = random_text(32);
        self.store().nhn_insert_appkey(&appkey, p.id).await?;
        Ok(appkey)
    }

    /// Registers an appkey the operator brings (the one the project had at
    /// NHN, so that applications keep their URLs): see
    /// [`check_appkey`]. An appkey registered before, active or revoked,
    /// is refused with `Conflict` (a revoked appkey stays revoked).
    pub async fn nhn_import_appkey(&self, project: &str, appkey: &str) -> Result<()> {
        check_appkey(appkey)?;
        let p = self.nhn_project_named(project).await?;
        match self.store().nhn_insert_appkey(appkey, p.id).await {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict) => Err(Error::Conflict(format!(
                "appkey {} is already registered (active or revoked)",
                appkey_fingerprint(appkey)
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Revokes an appkey: it names no project from now on (within
    /// [`ACCESS_KEY_RECHECK`] on a server running in another process).
    pub async fn nhn_revoke_appkey(&self, appkey: &str) -> Result<()> {
        if !self.store().nhn_revoke_appkey(appkey).await? {
            return Err(Error::NotFound("appkey"));
        }
        self.nhn().appkeys.remove(appkey);
        tracing::info!(appkey = %appkey_fingerprint(appkey), "NHN appkey revoked");
        Ok(())
    }

    /// Replaces an appkey by a new one of the same project and revokes the
    /// old one, in one transaction. Returns the new appkey.
    pub async fn nhn_rotate_appkey(&self, appkey: &str) -> Result<String> {
        let new = random_text(32);
        if !self.store().nhn_rotate_appkey(appkey, &new).await? {
            return Err(Error::NotFound("appkey"));
        }
        self.nhn().appkeys.remove(appkey);
        tracing::info!(
            old = %appkey_fingerprint(appkey),
            new = %appkey_fingerprint(&new),
            "NHN appkey rotated"
        );
        Ok(new)
    }

    /// Changes which calls of a project need a User Access Key; `None`
    /// leaves a setting as is. A running server in another process applies
    /// it within [`ACCESS_KEY_RECHECK`].
    pub async fn nhn_update_project(
        &self,
        name: &str,
        management: Option<bool>,
        data: Option<bool>,
    ) -> Result<NhnProject> {
        if !self
            .store()
            .nhn_update_project(name, management, data)
            .await?
        {
            return Err(Error::NotFound("project"));
        }
        self.nhn().appkeys.clear();
        let p: NhnProject = self.nhn_project_named(name).await?.into();
        if !p.require.management {
            tracing::warn!(project = %p.name, "NHN project no longer requires a User Access Key for management calls");
        }
        Ok(p)
    }

    /// Logs a warning for every project whose management calls take the
    /// appkey alone; the server calls it at start. Returns their number.
    pub async fn nhn_warn_optional_user_access_keys(&self) -> Result<usize> {
        let open: Vec<_> = self
            .store()
            .nhn_projects()
            .await?
            .into_iter()
            .filter(|p| !p.require_user_access_key)
            .collect();
        for p in &open {
            tracing::warn!(
                project = %p.name,
                "NHN project does not require a User Access Key for management calls: anyone \
                 holding one of its appkeys can register addresses, delete credentials and \
                 destroy keys; turn it on with `hsm-kms admin nhn update-project {} \
                 --require-user-access-key true`",
                p.name
            );
        }
        Ok(open.len())
    }

    /// Makes a User Access Key for a project; the secret is returned once.
    pub async fn nhn_create_user_access_key(&self, project: &str) -> Result<NewUserAccessKey> {
        let p = self.nhn_project_named(project).await?;
        let access_key = random_text(20);
        let secret = Zeroizing::new(random_text(40));
        let hash = Sha256::digest(secret.as_bytes());
        self.store()
            .nhn_insert_user_access_key(&access_key, p.id, &hash)
            .await?;
        Ok(NewUserAccessKey { access_key, secret })
    }

    /// Registers a User Access Key the operator brings (id and Secret
    /// Access Key as NHN issued them; see [`check_user_access_key`]). The
    /// secret is kept only as a SHA-256, as for keys made here. An id
    /// registered before, active or revoked, is refused with `Conflict`.
    pub async fn nhn_import_user_access_key(
        &self,
        project: &str,
        access_key: &str,
        secret: &str,
    ) -> Result<()> {
        check_user_access_key(access_key, secret)?;
        let p = self.nhn_project_named(project).await?;
        let hash = Sha256::digest(secret.as_bytes());
        match self
            .store()
            .nhn_insert_user_access_key(access_key, p.id, &hash)
            .await
        {
            Ok(()) => Ok(()),
            Err(StoreError::Conflict) => Err(Error::Conflict(format!(
                "User Access Key {access_key} is already registered (active or revoked)"
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// Revokes a User Access Key.
    pub async fn nhn_revoke_user_access_key(&self, access_key: &str) -> Result<()> {
        if !self.store().nhn_revoke_user_access_key(access_key).await? {
            return Err(Error::NotFound("user access key"));
        }
        Ok(())
    }

    /// Creates a key store in a project (admin), with its switches and
    /// export policy.
    pub async fn nhn_create_key_store(&self, project: &str, s: KeyStoreSettings) -> Result<i64> {
        self.nhn_create_key_store_with_id(project, s, None).await
    }

    /// [`Engine::nhn_create_key_store`] under a `keyStoreId` the operator
    /// brings (the id the key store had at NHN, which applications' key
    /// queries name): a positive integer no key store of any project has.
    /// `None` takes the next free id.
    pub async fn nhn_create_key_store_with_id(
        &self,
        project: &str,
        s: KeyStoreSettings,
        id: Option<i64>,
    ) -> Result<i64> {
        if let Some(id) = id {
            if id < 1 {
                return Err(Error::InvalidInput(
                    "a keyStoreId is a positive integer".into(),
                ));
            }
            if self.store().nhn_key_store(id).await?.is_some() {
                return Err(Error::Conflict(format!("keyStoreId {id} is taken")));
            }
        }
        let p = self.nhn_project_named(project).await?;
        if s.name.is_empty() || s.name.chars().count() > 100 {
            return Err(Error::InvalidInput(
                "key store name must be 1 to 100 characters".into(),
            ));
        }
        let new = NewKeyStore {
            project_id: p.id,
            name: s.name.clone(),
            description: s.description,
            ip4_auth_use: s.ip4_auth_use,
            mac_auth_use: s.mac_auth_use,
            certificate_auth_use: s.certificate_auth_use,
            allow_export: s.allow_export,
            creation_user: DEFAULT_USER.into(),
        };
        let made = match id {
            Some(id) => self.store().nhn_create_key_store_with_id(&new, id).await,
            None => self.store().nhn_create_key_store(&new).await,
        };
        match made {
            Ok(id) => Ok(id),
            Err(StoreError::Conflict) => Err(Error::Conflict(match id {
                Some(id) => format!(
                    "key store {} exists in project {project}, or keyStoreId {id} is taken",
                    s.name
                ),
                None => format!("key store {} exists in project {project}", s.name),
            })),
            Err(e) => Err(e.into()),
        }
    }

    /// Changes the switches of a key store (admin). `None` leaves a switch as is.
    pub async fn nhn_update_key_store(
        &self,
        project: &str,
        name: &str,
        ip4: Option<bool>,
        mac: Option<bool>,
        cert: Option<bool>,
        allow_export: Option<bool>,
    ) -> Result<()> {
        let p = self.nhn_project_named(project).await?;
        let mut s = self
            .store()
            .nhn_key_store_by_name(p.id, name)
            .await?
            .ok_or(Error::NotFound("key store"))?;
        s.ip4_auth_use = ip4.unwrap_or(s.ip4_auth_use);
        s.mac_auth_use = mac.unwrap_or(s.mac_auth_use);
        s.certificate_auth_use = cert.unwrap_or(s.certificate_auth_use);
        s.allow_export = allow_export.unwrap_or(s.allow_export);
        s.last_change_user = DEFAULT_USER.into();
        self.store().nhn_update_key_store(&s).await?;
        self.nhn().stores.remove(&s.id);
        Ok(())
    }

    /// The project an active appkey names; `NotFound("appkey")` otherwise.
    /// A cached answer is trusted for [`ACCESS_KEY_RECHECK`], then the store
    /// is asked again, so that a revocation or a project change made by the
    /// admin CLI (another process) applies within that time, as for NAVER
    /// access keys.
    pub async fn nhn_project_by_appkey(&self, appkey: &str) -> Result<Arc<NhnProject>> {
        let seen = match self
            .nhn()
            .appkeys
            .get_if(appkey, |c| c.checked_at.elapsed() < ACCESS_KEY_RECHECK)
        {
            Ok(c) => return Ok(c.project),
            Err(seen) => seen,
        };
        let Some(row) = self.store().nhn_project_by_appkey(appkey).await? else {
            // Drop a revoked appkey's entry; unknown appkeys (say, guesses)
            // leave the cache and its generation alone.
            if self.nhn().appkeys.get_if(appkey, |_| true).is_ok() {
                self.nhn().appkeys.remove(appkey);
            }
            return Err(Error::NotFound("appkey"));
        };
        let project = Arc::new(NhnProject::from(row));
        self.nhn().appkeys.fill(
            appkey.to_string(),
            CachedAppkey {
                project: project.clone(),
                checked_at: Instant::now(),
            },
            seen,
        );
        Ok(project)
    }

    /// Checks the User Access Key headers of a request. Both absent is
    /// allowed unless the project requires them for this class of call;
    /// present ones must be a valid, active key of this project. Returns the
    /// user to record. The Secret Access Key is compared as a SHA-256 in
    /// constant time, and hashed even when the key id is unknown.
    pub async fn nhn_check_user_access_key(
        &self,
        project: &NhnProject,
        access_key: Option<&str>,
        secret: Option<&str>,
        call: NhnCall,
    ) -> Result<String> {
        let (ak, sk) = match (access_key, secret) {
            (None, None) if !project.requires_user_access_key(call) => {
                return Ok(DEFAULT_USER.into())
            }
            (Some(ak), Some(sk)) => (ak, sk),
            (None, None) => {
                return Err(Error::Unauthenticated(
                    "this call requires a User Access Key".into(),
                ))
            }
            _ => {
                return Err(Error::Unauthenticated(
                    "both the User Access Key and the Secret Access Key are required".into(),
                ))
            }
        };
        let row = self.store().nhn_user_access_key(ak).await?.filter(|r| {
            r.status == crate::core::AccessKeyStatus::Active && r.project_id == project.id
        });
        let hash = Sha256::digest(sk.as_bytes());
        let expected = row
            .as_ref()
            .map(|r| r.secret_sha256.as_slice())
            .unwrap_or(&[0u8; 32]);
        let matches = bool::from(expected.ct_eq(&hash[..]));
        match row {
            Some(r) if matches => Ok(r.access_key),
            _ => Err(Error::Unauthenticated(
                "invalid User Access Key or Secret Access Key".into(),
            )),
        }
    }

    /// Key stores of a project.
    pub async fn nhn_key_stores(&self, project: &NhnProject) -> Result<Vec<NhnKeyStore>> {
        Ok(self.store().nhn_key_stores(project.id).await?)
    }

    /// A key store of the project by id.
    pub async fn nhn_key_store(&self, project: &NhnProject, id: i64) -> Result<NhnKeyStore> {
        self.store()
            .nhn_key_store(id)
            .await?
            .filter(|s| s.project_id == project.id)
            .ok_or(Error::NotFound("key store"))
    }

    /// A key store of the project by name.
    pub async fn nhn_key_store_named(
        &self,
        project: &NhnProject,
        name: &str,
    ) -> Result<NhnKeyStore> {
        self.store()
            .nhn_key_store_by_name(project.id, name)
            .await?
            .ok_or(Error::NotFound("key store"))
    }

    async fn nhn_store_auth(&self, id: i64) -> Result<Arc<KeyStoreAuth>> {
        let seen = match self.nhn().stores.get(&id) {
            Ok(a) => return Ok(a),
            Err(seen) => seen,
        };
        let store = self
            .store()
            .nhn_key_store(id)
            .await?
            .ok_or(Error::NotFound("key store"))?;
        let active = |rows: Vec<NhnCredential>| {
            rows.into_iter()
                .filter(|r| r.status == CredentialStatus::Active)
                .collect::<Vec<_>>()
        };
        let ipv4 = active(
            self.store()
                .nhn_credentials(id, CredentialKind::Ipv4)
                .await?,
        )
        .into_iter()
        .filter_map(|r| r.value.parse::<IpAddr>().ok().map(|ip| (r.id, ip)))
        .collect();
        let macs = active(
            self.store()
                .nhn_credentials(id, CredentialKind::Mac)
                .await?,
        )
        .into_iter()
        .map(|r| (r.id, r.value))
        .collect();
        let certs = active(
            self.store()
                .nhn_credentials(id, CredentialKind::Certificate)
                .await?,
        )
        .into_iter()
        .filter_map(|r| Some((r.id, r.cert_sha256?, r.expires_at?)))
        .collect();
        let a = Arc::new(KeyStoreAuth {
            store,
            ipv4,
            macs,
            certs,
        });
        // Not kept if a credential changed while it was read: the change
        // (say a deletion request) must not be undone by an older read.
        self.nhn().stores.fill(id, a.clone(), seen);
        Ok(a)
    }

    pub(crate) fn nhn_forget_store(&self, id: i64) {
        self.nhn().stores.remove(&id);
    }

    /// Drops the NHN cache entries a change names (see `core::changes`):
    /// `key` (a key uid), `nhn_project` (every appkey: they are few and
    /// cached by appkey, not project), `nhn_store` (a key store id), or
    /// `*` (everything).
    pub(crate) fn nhn_forget(&self, kind: &str, id: &str) {
        match kind {
            "key" => self.nhn().keys.remove(id),
            "nhn_project" => self.nhn().appkeys.clear(),
            "nhn_store" => match id.parse::<i64>() {
                Ok(store) => self.nhn().stores.remove(&store),
                Err(_) => self.nhn().stores.clear(),
            },
            _ => {
                self.nhn().keys.clear();
                self.nhn().appkeys.clear();
                self.nhn().stores.clear();
            }
        }
    }

    /// Applies the key store's authentication to a client, in NHN's order:
    /// IPv4, then MAC, then client certificate. Each check runs only when
    /// its switch is on; a switch on with no registered credential refuses
    /// everyone.
    pub async fn nhn_authorize(&self, key_store_id: i64, client: &NhnClient) -> Result<()> {
        let auth = self.nhn_store_auth(key_store_id).await?;
        let mut used = Vec::new();
        if auth.store.ip4_auth_use {
            let ip = as_ipv4(client.ip);
            let hit = auth
                .ipv4
                .iter()
                .find(|(_, reg)| ip.is_some() && as_ipv4(*reg) == ip)
                .ok_or(Error::KeyStoreAuth(AuthFactor::Ipv4))?;
            used.push(hit.0);
        }
        if auth.store.mac_auth_use {
            let mac = client
                .mac
                .as_deref()
                .and_then(normalize_mac)
                .ok_or(Error::KeyStoreAuth(AuthFactor::Mac))?;
            let hit = auth
                .macs
                .iter()
                .find(|(_, reg)| *reg == mac)
                .ok_or(Error::KeyStoreAuth(AuthFactor::Mac))?;
            used.push(hit.0);
        }
        if auth.store.certificate_auth_use {
            let sha = client
                .cert_sha256
                .ok_or(Error::KeyStoreAuth(AuthFactor::Certificate))?;
            let now = crate::core::now_ms();
            let hit = auth
                .certs
                .iter()
                .find(|(_, h, exp)| h.as_slice() == sha.as_slice() && *exp > now)
                .ok_or(Error::KeyStoreAuth(AuthFactor::Certificate))?;
            used.push(hit.0);
        }
        if !used.is_empty() {
            let now = crate::core::now_ms();
            let mut acc = lock(&self.nhn().cred_access);
            for id in used {
                acc.insert(id, now);
            }
        }
        Ok(())
    }

    pub(crate) fn nhn_record_key_access(&self, key_id: i64) {
        lock(&self.nhn().key_access).insert(key_id, crate::core::now_ms());
    }

    pub(crate) fn nhn_pending_key_access(&self, key_id: i64) -> Option<i64> {
        lock(&self.nhn().key_access).get(&key_id).copied()
    }

    pub(crate) fn nhn_pending_cred_access(&self, id: i64) -> Option<i64> {
        lock(&self.nhn().cred_access).get(&id).copied()
    }

    /// Writes the batched last-access times to the store.
    pub async fn nhn_flush_access(&self) -> Result<()> {
        let keys: Vec<(i64, i64)> = std::mem::take(&mut *lock(&self.nhn().key_access))
            .into_iter()
            .collect();
        let creds: Vec<(i64, i64)> = std::mem::take(&mut *lock(&self.nhn().cred_access))
            .into_iter()
            .collect();
        if keys.is_empty() && creds.is_empty() {
            return Ok(());
        }
        self.store().nhn_flush_access(&keys, &creds).await?;
        if !keys.is_empty() {
            // The cached rows hold the old last-access times.
            self.nhn().keys.clear();
        }
        Ok(())
    }

    /// Loads the project CA certificates (for the TLS client verifier).
    /// A CA made by another process (the admin CLI) is picked up by the
    /// scheduler's next pass.
    pub async fn nhn_load_cas(&self) -> Result<()> {
        let cas = self.store().nhn_ca_certs().await?;
        let mut g = write(&self.nhn().cas);
        if g.1 != cas || g.0 == 0 {
            g.0 += 1;
            g.1 = cas;
        }
        Ok(())
    }

    /// The project CA certificates with a generation number that changes
    /// whenever a CA is added.
    pub fn nhn_cas(&self) -> (u64, Vec<Vec<u8>>) {
        read(&self.nhn().cas).clone()
    }

    /// Scheduled NHN work: credential deletion after the waiting period,
    /// and the last-access batch (automatic rotation is the engine's one
    /// schedule, `Engine::run_due_work`).
    pub async fn nhn_run_due_work(&self, now: i64) -> Result<()> {
        for id in self.store().nhn_credentials_due_for_deletion(now).await? {
            let cred = self.store().audit_credential_subject(id).await?;
            if self
                .store()
                .nhn_delete_credential(id, now, DEFAULT_USER)
                .await?
            {
                let (account_id, what) = match cred {
                    Some((account_id, store, kind, value)) => {
                        (account_id, format!("keyStore={store} {kind}={value}"))
                    }
                    None => (0, format!("credential={id}")),
                };
                self.record_system_event(account_id, "NhnDeleteCredential", what)
                    .await;
            }
        }
        // Drop cached credentials so that changes made by another process
        // (the admin CLI) apply, and pick up new project CAs.
        self.nhn().stores.clear();
        self.nhn_load_cas().await?;
        self.nhn_flush_access().await?;
        Ok(())
    }
}

/// A project row.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NhnProjectRecord {
    /// Project id.
    pub id: i64,
    /// Project name.
    pub name: String,
    /// Engine account that owns the project's keys.
    pub account_id: i64,
    /// Management calls must carry a valid User Access Key.
    pub require_user_access_key: bool,
    /// Data calls must carry one too.
    pub require_user_access_key_on_data: bool,
    /// `CKA_ID` of the client-certificate CA key, once made.
    pub ca_cka_id: Option<Vec<u8>>,
    /// The CA certificate (DER), once made.
    pub ca_cert: Option<Vec<u8>>,
    /// Creation time, ms.
    pub created_at: i64,
}

/// The NHN side of a key.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NhnKeyMeta {
    /// `keys.id`.
    pub key_id: i64,
    /// Key store.
    pub key_store_id: i64,
    /// Description.
    pub description: String,
    /// `SECRET`, `SYMMETRIC_KEY` or `ASYMMETRIC_KEY`.
    pub nhn_type: String,
    /// Versions are created extractable.
    pub extractable: bool,
    /// Last use, ms.
    pub last_access_at: Option<i64>,
    /// Creator.
    pub creation_user: String,
    /// Last modifier.
    pub last_change_user: String,
}

/// A User Access Key row (the secret only as a SHA-256).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NhnUserAccessKeyRecord {
    /// The User Access Key id.
    pub access_key: String,
    /// Owning project.
    pub project_id: i64,
    /// SHA-256 of the Secret Access Key.
    pub secret_sha256: Vec<u8>,
    /// Active or revoked.
    #[sqlx(try_from = "String")]
    pub status: crate::core::AccessKeyStatus,
}
