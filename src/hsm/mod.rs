//! The PKCS#11 port: module loading, login, a pool of logged-in sessions served
//! from tokio's blocking pool, key templates, mechanisms and a cache of object
//! handles keyed by `CKA_ID`.
//!
//! Nothing in this module runs PKCS#11 calls on the async executor's threads:
//! every operation goes through [`Hsm::run`], which takes a concurrency permit
//! for its mechanism class, then a session from the pool, inside
//! `spawn_blocking`.

pub(crate) mod asymmetric;
mod error;
mod export;
mod info;
mod objects;
mod symmetric;
mod templates;

pub use asymmetric::SignAlg;
/// Input limits of the RSA mechanisms.
pub mod asymmetric_limits {
    pub use super::asymmetric::{RSA_OAEP_MAX, RSA_RAW_SIGN_MAX};
}
pub use error::HsmError;
pub use info::{ModuleInfo, TokenInfo};
pub use objects::{ObjectInfo, TokenObject, INSTALLATION_LABEL, LABEL_PREFIX};
pub use templates::{KeySpec, KeyUsage};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::object::{ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use secrecy::SecretString;
use tokio::sync::Semaphore;

/// Result type of the HSM layer.
pub type Result<T> = std::result::Result<T, HsmError>;

/// How to reach the token: module, slot selection, PIN and pool sizes.
#[derive(Clone)]
pub struct HsmConfig {
    /// Path of the PKCS#11 module (`.so`).
    pub module: PathBuf,
    /// Label of the token to use (first match wins).
    pub token_label: Option<String>,
    /// Slot id to use when no label is given.
    pub slot_id: Option<u64>,
    /// The user PIN. Never logged.
    pub pin: SecretString,
    /// Maximum number of sessions kept open.
    pub max_sessions: usize,
    /// How many symmetric operations (AES, HMAC, random) run at once.
    pub symmetric_concurrency: usize,
    /// How many asymmetric operations (RSA, ECDSA, key generation) run at once.
    pub asymmetric_concurrency: usize,
}

impl std::fmt::Debug for HsmConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HsmConfig")
            .field("module", &self.module)
            .field("token_label", &self.token_label)
            .field("slot_id", &self.slot_id)
            .field("pin", &"<redacted>")
            .field("max_sessions", &self.max_sessions)
            .field("symmetric_concurrency", &self.symmetric_concurrency)
            .field("asymmetric_concurrency", &self.asymmetric_concurrency)
            .finish()
    }
}

/// Which concurrency budget an operation draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpClass {
    /// AES, HMAC, random numbers, object look-ups.
    Symmetric,
    /// RSA and ECDSA operations and key generation.
    Asymmetric,
}

/// A handle to one token slot. Cheap to clone.
#[derive(Clone)]
pub struct Hsm {
    inner: Arc<Inner>,
}

struct Inner {
    ctx: Pkcs11,
    slot: Slot,
    token_label: String,
    idle: Mutex<Vec<Session>>,
    max_sessions: usize,
    handles: RwLock<HashMap<(Vec<u8>, u64), ObjectHandle>>,
    symmetric: Semaphore,
    asymmetric: Semaphore,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("slot", &self.inner.slot.id())
            .field("token_label", &self.inner.token_label)
            .finish()
    }
}

impl Hsm {
    /// Loads the module, finds the slot, opens one session and logs in.
    ///
    /// This blocks; call it before the runtime serves requests or inside
    /// `spawn_blocking`.
    pub fn open(cfg: &HsmConfig) -> Result<Self> {
        let module_err = |source| HsmError::Module {
            path: cfg.module.display().to_string(),
            source,
        };
        let ctx = Pkcs11::new(&cfg.module).map_err(module_err)?;
        ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .map_err(module_err)?;
        let (slot, token_label) = find_slot(&ctx, cfg)?;
        let session = ctx.open_rw_session(slot)?;
        session
            .login(UserType::User, Some(&cfg.pin))
            .map_err(HsmError::Login)?;
        let max_sessions = cfg.max_sessions.max(1);
        Ok(Hsm {
            inner: Arc::new(Inner {
                ctx,
                slot,
                token_label,
                idle: Mutex::new(vec![session]),
                max_sessions,
                handles: RwLock::new(HashMap::new()),
                symmetric: Semaphore::new(cfg.symmetric_concurrency.max(1)),
                asymmetric: Semaphore::new(cfg.asymmetric_concurrency.max(1)),
            }),
        })
    }

    /// Label of the token in use.
    pub fn token_label(&self) -> &str {
        &self.inner.token_label
    }

    /// The slot id in use.
    pub fn slot_id(&self) -> u64 {
        self.inner.slot.id()
    }

    /// Runs `f` with a logged-in session on the blocking pool, bounded by the
    /// concurrency budget of `class`.
    pub async fn run<T, F>(&self, class: OpClass, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&SessionRef<'_>) -> Result<T> + Send + 'static,
    {
        let (sem, label) = match class {
            OpClass::Symmetric => (&self.inner.symmetric, "symmetric"),
            OpClass::Asymmetric => (&self.inner.asymmetric, "asymmetric"),
        };
        // Operators (and tests) see how much token work requests cause.
        metrics::counter!("hsm_kms_token_calls_total", "class" => label).increment(1);
        let _permit = sem
            .acquire()
            .await
            .map_err(|e| HsmError::Worker(e.to_string()))?;
        let hsm = self.clone();
        tokio::task::spawn_blocking(move || hsm.run_blocking(f))
            .await
            .map_err(|e| HsmError::Worker(e.to_string()))?
    }

    /// Runs `f` with a logged-in session on the current thread. For CLI
    /// commands, start-up work and benchmarks; request paths use [`Hsm::run`].
    pub fn run_blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: FnOnce(&SessionRef<'_>) -> Result<T>,
    {
        let session = self.checkout()?;
        let sref = SessionRef {
            session: &session,
            hsm: self,
        };
        let out = f(&sref);
        match &out {
            Err(e) if e.poisons_session() => {
                tracing::warn!(error = %e, "dropping a broken PKCS#11 session");
            }
            _ => self.checkin(session),
        }
        out
    }

    fn checkout(&self) -> Result<Session> {
        if let Some(s) = self.lock_idle().pop() {
            return Ok(s);
        }
        // Sessions share the login state of the application, so a new one
        // is logged in already.
        Ok(self.inner.ctx.open_rw_session(self.inner.slot)?)
    }

    fn checkin(&self, session: Session) {
        let mut idle = self.lock_idle();
        if idle.len() < self.inner.max_sessions {
            idle.push(session);
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<Session>> {
        // A poisoned lock only means a worker panicked while holding it;
        // the Vec itself is still consistent.
        self.inner.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets the cached handles of an object id (after destroying it).
    fn forget(&self, id: &[u8]) {
        let mut map = self
            .inner
            .handles
            .write()
            .unwrap_or_else(|p| p.into_inner());
        map.retain(|(k, _), _| k.as_slice() != id);
    }

    /// Checks that the token still answers (for `/readyz`).
    pub async fn ping(&self) -> Result<()> {
        self.run(OpClass::Symmetric, |s| {
            s.session.get_session_info()?;
            Ok(())
        })
        .await
    }
}

/// A session lent to one operation, with access to the handle cache.
pub struct SessionRef<'a> {
    session: &'a Session,
    hsm: &'a Hsm,
}

impl SessionRef<'_> {
    /// The raw session, for the operation modules.
    pub(crate) fn raw(&self) -> &Session {
        self.session
    }

    /// Finds the handle of the object with `CKA_ID = id` and class `class`,
    /// from the cache when possible.
    pub(crate) fn handle(&self, id: &[u8], class: ObjectClass) -> Result<ObjectHandle> {
        // CK_OBJECT_CLASS is u64 on Linux but not on every platform.
        #[allow(clippy::useless_conversion)]
        let key = (id.to_vec(), u64::from(*class));
        {
            let map = self
                .hsm
                .inner
                .handles
                .read()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(h) = map.get(&key) {
                return Ok(*h);
            }
        }
        use cryptoki::object::Attribute;
        // Data objects have no CKA_ID: their id is their label.
        let name = if class == ObjectClass::DATA {
            Attribute::Label(id.to_vec())
        } else {
            Attribute::Id(id.to_vec())
        };
        let found =
            self.session
                .find_objects(&[Attribute::Token(true), Attribute::Class(class), name])?;
        let h = match found.as_slice() {
            [h] => *h,
            [] => return Err(HsmError::ObjectNotFound),
            _ => {
                return Err(HsmError::Malformed(format!(
                    "{} objects share one CKA_ID",
                    found.len()
                )))
            }
        };
        self.hsm
            .inner
            .handles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, h);
        Ok(h)
    }

    /// Random bytes from the token's generator.
    pub fn random(&self, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.session.generate_random_slice(&mut buf)?;
        Ok(buf)
    }
}

impl Hsm {
    /// `len` random bytes from the token's generator.
    pub async fn random(&self, len: usize) -> Result<Vec<u8>> {
        self.run(OpClass::Symmetric, move |s| s.random(len)).await
    }
}

fn find_slot(ctx: &Pkcs11, cfg: &HsmConfig) -> Result<(Slot, String)> {
    let slots = ctx.get_slots_with_initialized_token()?;
    for slot in slots {
        let info = ctx.get_token_info(slot)?;
        let label = info.label().trim_end().to_string();
        let matches = match (&cfg.token_label, cfg.slot_id) {
            (Some(want), _) => &label == want,
            (None, Some(id)) => slot.id() == id,
            (None, None) => true,
        };
        if matches {
            return Ok((slot, label));
        }
    }
    Err(HsmError::TokenNotFound(
        match (&cfg.token_label, cfg.slot_id) {
            (Some(l), _) => format!("label {l:?}"),
            (None, Some(id)) => format!("slot id {id}"),
            (None, None) => "any slot".to_string(),
        },
    ))
}

/// Default module path: Debian's SoftHSMv2, overridable with `PKCS11_MODULE`.
pub fn default_module_path() -> PathBuf {
    std::env::var_os("PKCS11_MODULE")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new("/usr/lib/softhsm/libsofthsm2.so").to_path_buf())
}
