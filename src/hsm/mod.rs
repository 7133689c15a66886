//! The PKCS#11 port: module loading, login, a pool of logged-in sessions served
//! from tokio's blocking pool, key templates, mechanisms and the map of object
//! handles keyed by `CKA_ID` ([`handles`]: filled at start-up, so that no
//! request searches the token).
//!
//! Nothing in this module runs PKCS#11 calls on the async executor's threads:
//! every operation goes through [`Hsm::run`], which takes a concurrency permit
//! for its mechanism class, then a session from the pool, inside
//! `spawn_blocking`.

pub(crate) mod asymmetric;
mod error;
mod export;
mod handles;
mod info;
mod mechanisms;
mod objects;
mod recovery;
mod symmetric;
mod templates;
mod workers;

pub use asymmetric::SignAlg;
pub use symmetric::{IvSource, GCM_INVOCATION_LIMIT};
/// Input limits of the RSA mechanisms.
pub mod asymmetric_limits {
    pub use super::asymmetric::{RSA_OAEP_MAX, RSA_RAW_SIGN_MAX};
}
pub use error::HsmError;
pub use handles::FindCalls;
pub use info::{ModuleInfo, TokenInfo};
pub use mechanisms::{MechanismPath, MechanismPaths};
pub use objects::{ObjectInfo, TokenListing, TokenObject, INSTALLATION_LABEL, LABEL_PREFIX};
pub use recovery::{Fault, Health, RECOVERY_BACKOFF_MIN};
pub use templates::{KeySpec, KeyUsage};

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cryptoki::context::Pkcs11;
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::Slot;
use secrecy::SecretString;
use tokio::sync::Semaphore;

use crate::telemetry::token::{self as token_metrics, Call};
use recovery::Module;

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
    /// How long a request waits for a re-initialising token before it is
    /// answered [`HsmError::Unavailable`].
    pub unavailable_wait: Duration,
    /// Longest pause between two failed re-initialisations of the module.
    pub recovery_backoff_max: Duration,
    /// Shortest time between two re-initialisations of the module for a
    /// late view of the token (an object the store names that this
    /// process's token view lacks); zero turns them off.
    pub late_view_reinit_interval: Duration,
    /// How token calls reach a session (see [`Dispatch`]).
    pub dispatch: Dispatch,
    /// Short symmetric calls ([`Hsm::run_short`]) run on the calling thread
    /// with a pooled session, not on a worker (with [`Dispatch::Workers`]).
    pub inline_symmetric: bool,
    /// Where AES-GCM IVs come from.
    pub gcm_iv_source: IvSource,
}

/// How request paths hand token calls to sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Dispatch {
    /// Fixed worker threads per class, fed by a queue (the default).
    #[default]
    Workers,
    /// `spawn_blocking` behind a semaphore per class (the earlier dispatch;
    /// kept to measure against).
    BlockingPool,
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
            .field("unavailable_wait", &self.unavailable_wait)
            .field("recovery_backoff_max", &self.recovery_backoff_max)
            .field("late_view_reinit_interval", &self.late_view_reinit_interval)
            .field("dispatch", &self.dispatch)
            .field("inline_symmetric", &self.inline_symmetric)
            .field("gcm_iv_source", &self.gcm_iv_source)
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

/// How many times a [`Retry::Once`] operation runs at most: session, login
/// and handle faults prove the failing call did nothing, are repaired on the
/// spot, and the operation runs again; a device fault allows one more run
/// only, on the re-initialised module.
pub const REPAIRED_RUNS: u32 = 3;

/// Shortest time between two late-view re-initialisations when the last one
/// helped (a call run again after it found its object).
pub const LATE_VIEW_HELPED_FLOOR: std::time::Duration = std::time::Duration::from_millis(250);

/// The late-view rule: an object a store row names, missing from this
/// process's view of the token, re-initialises the module (nothing is
/// destroyed) unless `interval` is 0, and
/// - not within `interval` of the last such re-initialisation, unless
/// - that one `helped` (the call run again after it found its object: the
///   view was late, not the object gone), in which case only
///   [`LATE_VIEW_HELPED_FLOOR`] must have passed.
///
/// So an object that is really gone re-initialises the module at most once
/// per `interval` (the re-initialisation did not help), while a view that
/// went late again, as SoftHSMv2's can whenever another process logs in
/// (each node's start, a restarted node), is re-read again at once. Before,
/// the second late view within `interval` answered 503 "key material
/// missing" (seen in the node-loss test through p11-kit remoting).
pub fn late_view_allowed(
    last: Option<std::time::Instant>,
    now: std::time::Instant,
    interval: std::time::Duration,
    helped: bool,
) -> bool {
    if interval.is_zero() {
        return false;
    }
    let wait = if helped {
        interval.min(LATE_VIEW_HELPED_FLOOR)
    } else {
        interval
    };
    last.is_none_or(|at| now.duration_since(at) >= wait)
}

/// Whether an operation may run again after a token fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads and crypto (encrypt, decrypt, sign, verify, look-ups): after a
    /// repaired fault the operation runs again (see [`REPAIRED_RUNS`]) before
    /// it fails.
    Once,
    /// Object creation and destruction: never run twice (a first run may
    /// have changed the token before the fault); the fault is repaired for
    /// the next request and this one fails.
    Never,
}

/// A handle to one token slot. Cheap to clone.
///
/// It survives token faults: see [`recovery`](self) for the session, login,
/// handle and device repairs, and [`Hsm::health`].
#[derive(Clone)]
pub struct Hsm {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: HsmConfig,
    /// The serving module generation; `None` while recovering.
    module: RwLock<Option<Arc<Module>>>,
    health: tokio::sync::watch::Sender<Health>,
    token_label: String,
    slot_id: u64,
    max_sessions: usize,
    handles: handles::HandleMap,
    symmetric: Semaphore,
    asymmetric: Semaphore,
    /// Permits of (`symmetric`, `asymmetric`).
    #[cfg_attr(not(feature = "test-hooks"), allow(dead_code))]
    permits: (u32, u32),
    backoff_max: Duration,
    /// Token or outside path of OAEP-SHA-256 and ECDSA-SHA-256, found at
    /// the first open.
    paths: MechanismPaths,
    /// The worker threads, with [`Dispatch::Workers`].
    workers: Option<workers::Workers>,
    /// Held shared around every token call that is not made under a
    /// concurrency permit's exclusion: the workers' jobs, inline calls, and
    /// the calls of threads of the service's own ([`Hsm::run_audit_blocking`],
    /// [`Hsm::run_blocking_gated`]); test hooks take it alone
    /// ([`Hsm::quiesced`]).
    gate: Arc<std::sync::RwLock<()>>,
    /// When the last re-initialisation for a late view of the token was
    /// started (see [`Hsm::late_view`]).
    late_view_at: std::sync::Mutex<Option<std::time::Instant>>,
    /// The last late-view re-initialisation was followed by a call that
    /// then found its object: the view really was late, not the object
    /// gone (see [`late_view_allowed`]).
    late_view_helped: std::sync::atomic::AtomicBool,
}

use handles::HandleKey;

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm")
            .field("slot", &self.inner.slot_id)
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
        let module = Module::open(cfg, 1)?;
        let paths = MechanismPaths::probe(&module, cfg);
        tracing::info!(
            rsa_oaep_sha256 = ?paths.rsa_oaep_sha256,
            ecdsa_sha256 = ?paths.ecdsa_sha256,
            "token mechanism paths"
        );
        let max_sessions = cfg.max_sessions.max(1);
        let (health, _) = tokio::sync::watch::channel(Health::Ready { generation: 1 });
        let sym = cfg.symmetric_concurrency.clamp(1, 1 << 20);
        let asym = cfg.asymmetric_concurrency.clamp(1, 1 << 20);
        metrics::gauge!("hsm_kms_hsm_ready").set(1.0);
        // Present from the start, at 0: rate() and alerts see them before
        // the first event.
        for c in [
            "hsm_kms_token_inline_calls_total",
            "hsm_kms_hsm_recoveries_total",
            "hsm_kms_hsm_late_view_reinits_total",
            "hsm_kms_hsm_retries_total",
        ] {
            metrics::counter!(c).increment(0);
        }
        let gate = Arc::new(std::sync::RwLock::new(()));
        let workers = match cfg.dispatch {
            Dispatch::Workers => Some(
                workers::Workers::start(sym, asym, gate.clone())
                    .map_err(|e| HsmError::Worker(format!("starting token workers: {e}")))?,
            ),
            Dispatch::BlockingPool => None,
        };
        Ok(Hsm {
            inner: Arc::new(Inner {
                token_label: module.token_label.clone(),
                slot_id: module.slot.id(),
                cfg: cfg.clone(),
                module: RwLock::new(Some(Arc::new(module))),
                health,
                max_sessions,
                handles: handles::HandleMap::default(),
                symmetric: Semaphore::new(sym),
                asymmetric: Semaphore::new(asym),
                permits: (sym as u32, asym as u32),
                backoff_max: cfg.recovery_backoff_max,
                paths,
                workers,
                gate,
                late_view_at: std::sync::Mutex::new(None),
                late_view_helped: std::sync::atomic::AtomicBool::new(false),
            }),
        })
    }

    /// Label of the token in use.
    pub fn token_label(&self) -> &str {
        &self.inner.token_label
    }

    /// Where OAEP-SHA-256 and ECDSA-SHA-256 run on this token: in one
    /// token mechanism or with the hashing / padding done here.
    pub fn mechanism_paths(&self) -> MechanismPaths {
        self.inner.paths
    }

    /// The slot id found at start (a re-initialised module may renumber
    /// slots; the token is found again by its label).
    pub fn slot_id(&self) -> u64 {
        self.inner.slot_id
    }

    /// Runs `f` with a logged-in session on the blocking pool, bounded by the
    /// concurrency budget of `class`; after a repaired token fault `f` runs
    /// once more ([`Retry::Once`]). For reads and crypto.
    pub async fn run<T, F>(&self, class: OpClass, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&SessionRef<'_>) -> Result<T> + Send + Sync + 'static,
    {
        self.run_with(class, Retry::Once, f).await
    }

    /// [`Hsm::run`] for a short symmetric call (one AES-GCM operation, an
    /// HMAC, random bytes): with `hsm.inline_symmetric` (and the worker
    /// dispatch) it runs on the calling thread, with a pooled session and
    /// the same fault repair and re-runs as on a worker, so that it costs
    /// no hand-off to a worker thread and no wake-up back. It blocks the
    /// calling executor thread for the call's duration (tens of µs on
    /// SoftHSM), so long calls never come here. While the handle map is
    /// incomplete (after a fault, until one enumeration refills it) the
    /// call goes to a worker: the enumeration is long.
    pub async fn run_short<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&SessionRef<'_>) -> Result<T> + Send + Sync + 'static,
    {
        self.run_dispatched(
            OpClass::Symmetric,
            Retry::Once,
            "hsm_kms_token_calls_total",
            true,
            f,
        )
        .await
    }

    /// [`Hsm::run`] for operations that change the token ([`Retry::Never`]).
    pub async fn run_once<T, F>(&self, class: OpClass, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&SessionRef<'_>) -> Result<T> + Send + Sync + 'static,
    {
        self.run_with(class, Retry::Never, f).await
    }

    /// [`Hsm::run`] for the audit chain's passes (one per group-commit
    /// batch, one per walked page), counted as
    /// `hsm_kms_audit_token_calls_total` apart from the token calls that
    /// requests make (`hsm_kms_token_calls_total`).
    pub async fn run_audit<T, F>(&self, class: OpClass, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&SessionRef<'_>) -> Result<T> + Send + Sync + 'static,
    {
        self.run_counted(class, Retry::Once, "hsm_kms_audit_token_calls_total", f)
            .await
    }

    /// [`Hsm::run_audit`] for one short symmetric call (the batch seal):
    /// inline as [`Hsm::run_short`].
    pub async fn run_audit_short<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&SessionRef<'_>) -> Result<T> + Send + Sync + 'static,
    {
        self.run_dispatched(
            OpClass::Symmetric,
            Retry::Once,
            "hsm_kms_audit_token_calls_total",
            true,
            f,
        )
        .await
    }

    /// [`Hsm::run_audit`] on the calling thread ([`Hsm::run_blocking`]):
    /// for the activity-log writer's own thread, whose seal and checkpoint
    /// then cost no hand-off to a token worker. Counted as
    /// `hsm_kms_audit_token_calls_total` like [`Hsm::run_audit`].
    pub fn run_audit_blocking<T, F>(&self, class: OpClass, f: F) -> Result<T>
    where
        F: Fn(&SessionRef<'_>) -> Result<T>,
    {
        let label = match class {
            OpClass::Symmetric => "symmetric",
            OpClass::Asymmetric => "asymmetric",
        };
        metrics::counter!("hsm_kms_audit_token_calls_total", "class" => label).increment(1);
        self.run_blocking_gated(f)
    }

    /// [`Hsm::run_blocking`] with each run inside the gate that
    /// [`Hsm::quiesced`] closes, as workers run their jobs: for token calls
    /// on threads of the service's own while requests are served (the
    /// activity-log writer's thread, the NHN CA signature under
    /// `spawn_blocking`, the recovery thread's handle-map refill). SoftHSMv2 frees a session under a call still on
    /// it when a hook closes every session; outside the gate that call
    /// crashed the process (CI of stop 21). Never from inside a job or
    /// another gated run: a shared hold taken twice on one thread waits
    /// behind a waiting exclusive one.
    pub(crate) fn run_blocking_gated<T, F>(&self, f: F) -> Result<T>
    where
        F: Fn(&SessionRef<'_>) -> Result<T>,
    {
        self.blocking_runs(&f, true)
    }

    async fn run_with<T, F>(&self, class: OpClass, retry: Retry, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&SessionRef<'_>) -> Result<T> + Send + Sync + 'static,
    {
        self.run_counted(class, retry, "hsm_kms_token_calls_total", f)
            .await
    }

    async fn run_counted<T, F>(
        &self,
        class: OpClass,
        retry: Retry,
        counter: &'static str,
        f: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&SessionRef<'_>) -> Result<T> + Send + Sync + 'static,
    {
        self.run_dispatched(class, retry, counter, false, f).await
    }

    async fn run_dispatched<T, F>(
        &self,
        class: OpClass,
        retry: Retry,
        counter: &'static str,
        short: bool,
        f: F,
    ) -> Result<T>
    where
        T: Send + 'static,
        F: Fn(&SessionRef<'_>) -> Result<T> + Send + Sync + 'static,
    {
        let (sem, label, lane) = match class {
            OpClass::Symmetric => (
                &self.inner.symmetric,
                "symmetric",
                token_metrics::Lane::Symmetric,
            ),
            OpClass::Asymmetric => (
                &self.inner.asymmetric,
                "asymmetric",
                token_metrics::Lane::Asymmetric,
            ),
        };
        // Operators (and tests) see how much token work requests cause.
        metrics::counter!(counter, "class" => label).increment(1);
        let f = Arc::new(f);
        let mut runs = match retry {
            Retry::Once => REPAIRED_RUNS,
            Retry::Never => 1,
        };
        let mut fresh = false;
        let mut last = None;
        let mut run = 0;
        while run < runs {
            run += 1;
            if !self.wait_ready(self.inner.cfg.unavailable_wait).await {
                return Err(HsmError::Unavailable(self.unavailable_reason()));
            }
            let out = match &self.inner.workers {
                Some(w)
                    if short
                        && self.inner.cfg.inline_symmetric
                        && self.inner.handles.is_complete() =>
                {
                    metrics::counter!("hsm_kms_token_inline_calls_total").increment(1);
                    w.inline(|| self.attempt(&*f, fresh))
                }
                Some(w) => {
                    let hsm = self.clone();
                    let f = f.clone();
                    let (tx, rx) = tokio::sync::oneshot::channel();
                    let queued = std::time::Instant::now();
                    w.submit(
                        class,
                        Box::new(move || {
                            token_metrics::queue_wait(lane, queued.elapsed());
                            let out = hsm.attempt(&*f, fresh);
                            // The port is dropped here, before the caller
                            // hears back: the last clone must not go on a
                            // worker thread while the process exits (a
                            // C_Finalize racing exit made CLI commands fail).
                            drop((hsm, f));
                            let _ = tx.send(out);
                        }),
                    );
                    rx.await
                        .map_err(|_| HsmError::Worker("a token worker panicked".into()))?
                }
                None => {
                    let hsm = self.clone();
                    let f = f.clone();
                    let queued = std::time::Instant::now();
                    let _permit = match sem.try_acquire() {
                        Ok(p) => p,
                        Err(_) => {
                            token_metrics::permit_waited(lane);
                            sem.acquire()
                                .await
                                .map_err(|e| HsmError::Worker(e.to_string()))?
                        }
                    };
                    token_metrics::queue_wait(lane, queued.elapsed());
                    tokio::task::spawn_blocking(move || hsm.attempt(&*f, fresh))
                        .await
                        .map_err(|e| HsmError::Worker(e.to_string()))?
                }
            };
            match out {
                Ok(v) => {
                    if matches!(last, Some(HsmError::LateView)) {
                        self.late_view_helped();
                    }
                    return Ok(v);
                }
                Err(e) => match e.fault() {
                    Some(fault) if run < runs => {
                        metrics::counter!("hsm_kms_hsm_retries_total").increment(1);
                        tracing::info!(error = %e, ?fault, "token fault repaired; running the operation again");
                        if fault == Fault::Device {
                            // One more run, on the re-initialised module.
                            runs = runs.min(run + 1);
                        }
                        fresh = fault == Fault::Session;
                        last = Some(e);
                    }
                    _ => return Err(e.settled()),
                },
            }
        }
        Err(last
            .map(HsmError::settled)
            .unwrap_or_else(|| HsmError::Unavailable(self.unavailable_reason())))
    }

    /// Runs `f` with a logged-in session on the current thread, once more
    /// after a repaired token fault. For CLI commands, start-up work and
    /// benchmarks; request paths use [`Hsm::run`].
    pub fn run_blocking<T, F>(&self, f: F) -> Result<T>
    where
        F: Fn(&SessionRef<'_>) -> Result<T>,
    {
        self.blocking_runs(&f, false)
    }

    /// The runs of [`Hsm::run_blocking`]; `gated`: each attempt inside the
    /// gate ([`Hsm::run_blocking_gated`]).
    fn blocking_runs<T>(&self, f: &dyn Fn(&SessionRef<'_>) -> Result<T>, gated: bool) -> Result<T> {
        let mut fresh = false;
        let mut runs = REPAIRED_RUNS;
        let mut run = 0;
        let mut late = false;
        while run < runs {
            run += 1;
            if !self.wait_ready_blocking(self.inner.cfg.unavailable_wait) {
                return Err(HsmError::Unavailable(self.unavailable_reason()));
            }
            let outcome = if gated {
                let _g = self.inner.gate.read().unwrap_or_else(|p| p.into_inner());
                self.attempt(f, fresh)
            } else {
                self.attempt(f, fresh)
            };
            match outcome {
                Ok(v) => {
                    if late {
                        self.late_view_helped();
                    }
                    return Ok(v);
                }
                Err(e) if run < runs && e.fault().is_some() => {
                    late = matches!(e, HsmError::LateView);
                    if e.fault() == Some(Fault::Device) {
                        runs = runs.min(run + 1);
                    }
                    fresh = e.fault() == Some(Fault::Session);
                }
                Err(e) => return Err(e.settled()),
            }
        }
        Err(HsmError::Unavailable(self.unavailable_reason()))
    }

    /// One run of `f` on a session of the current generation, and the repair
    /// its fault asks for (see [`recovery`](self)). `fresh`: open a new
    /// session rather than take an idle one (after a session fault, idle
    /// sessions may be dead too).
    fn attempt<T>(&self, f: &dyn Fn(&SessionRef<'_>) -> Result<T>, fresh: bool) -> Result<T> {
        // Before the module: a handle learnt on this session is kept only
        // if no fault ended the handle map's epoch meanwhile.
        let epoch = self.inner.handles.epoch();
        let module = self.module()?;
        let waited = std::time::Instant::now();
        let pooled = match module.checkout(&self.inner.cfg, fresh) {
            Ok(s) => {
                token_metrics::session_wait(waited.elapsed());
                s
            }
            Err(e) => {
                if e.fault() == Some(Fault::Device) {
                    self.device_fault(module.generation, &e);
                }
                return Err(e);
            }
        };
        let _in_use = token_metrics::SessionInUse::start();
        let logins = recovery::logins();
        let session = &pooled.session;
        let sref = SessionRef {
            session,
            hsm: self,
            cached: RefCell::new(Vec::new()),
            epoch,
        };
        let out = f(&sref);
        let cached = sref.cached.into_inner();
        let err = match out {
            Ok(v) => {
                module.checkin(pooled, self.inner.max_sessions);
                return Ok(v);
            }
            Err(e) => e,
        };
        // A private object that is "not found" while the session lost its
        // login is a login fault, not a missing key.
        // Another thread may have repaired the login while this call ran
        // logged out (two workers meet the same C_Logout): that is a login
        // fault too, and the call runs again.
        let err = match err {
            HsmError::ObjectNotFound => match recovery::logged_in(session) {
                Ok(true) if recovery::logins() == logins => HsmError::ObjectNotFound,
                Ok(_) => HsmError::Pkcs11(cryptoki::error::Error::Pkcs11(
                    cryptoki::error::RvError::UserNotLoggedIn,
                    cryptoki::context::Function::FindObjects,
                )),
                Err(e) => e,
            },
            e => e,
        };
        // The store named the object (callers look up only what a store row
        // names), yet this process's view of the token lacks it: a late
        // view (SoftHSMv2's file store can keep one for good, see
        // docs/pkcs11-portability.md). One re-initialisation re-reads the
        // token, at most once per `hsm.late_view_reinit_interval_ms`;
        // nothing is destroyed.
        let err = match err {
            HsmError::ObjectNotFound if self.late_view(module.generation) => HsmError::LateView,
            e => e,
        };
        if let Some(fault) = err.fault() {
            token_metrics::fault(match fault {
                Fault::Session => 0,
                Fault::Login => 1,
                Fault::Handle => 2,
                Fault::Device => 3,
            });
        }
        match err.fault() {
            None => module.checkin(pooled, self.inner.max_sessions),
            Some(Fault::Session) => {
                tracing::warn!(error = %err, "a PKCS#11 session is gone; opening another");
                recovery::forget(pooled.session);
                module.session_fault();
                // Tokens drop object handles with the sessions
                // (SoftHSMv2 drops every handle of the slot).
                self.inner.handles.invalidate();
            }
            Some(Fault::Login) => {
                tracing::warn!(error = %err, "the token lost its login; logging in again");
                // Private objects' handles go with the login.
                self.inner.handles.invalidate();
                match recovery::login(session, &self.inner.cfg) {
                    Ok(()) => module.checkin(pooled, self.inner.max_sessions),
                    Err(e) => {
                        tracing::error!(error = %e, "logging in again failed");
                        recovery::forget(pooled.session);
                    }
                }
            }
            Some(Fault::Handle) => {
                self.inner.handles.forget_stale(&cached);
                match recovery::ensure_login(session, &self.inner.cfg) {
                    Ok(()) => module.checkin(pooled, self.inner.max_sessions),
                    Err(_) => recovery::forget(pooled.session),
                }
            }
            Some(Fault::Device) => {
                recovery::forget(pooled.session);
                self.device_fault(module.generation, &err);
            }
        }
        Err(err)
    }

    /// A call that ran again after a late-view re-initialisation found its
    /// object: the view was late (see [`late_view_allowed`]).
    fn late_view_helped(&self) {
        self.inner
            .late_view_helped
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether an object missing from generation `generation`'s view of the
    /// token starts a re-initialisation ([`late_view_allowed`]). Counted in
    /// `hsm_kms_hsm_late_view_reinits_total`.
    fn late_view(&self, generation: u64) -> bool {
        let interval = self.inner.cfg.late_view_reinit_interval;
        let mut last = self
            .inner
            .late_view_at
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let helped = self
            .inner
            .late_view_helped
            .load(std::sync::atomic::Ordering::Relaxed);
        if !late_view_allowed(*last, now, interval, helped) {
            return false;
        }
        self.inner
            .late_view_helped
            .store(false, std::sync::atomic::Ordering::Relaxed);
        *last = Some(now);
        metrics::counter!("hsm_kms_hsm_late_view_reinits_total").increment(1);
        tracing::warn!(
            generation,
            "an object the store names is missing from this process's view of the token; \
             re-initialising the PKCS#11 module once to re-read the token"
        );
        true
    }

    /// Forgets the handles of an object id (after destroying it).
    fn forget(&self, id: &[u8]) {
        self.inner.handles.forget_id(id);
    }

    /// How many `C_FindObjects` searches this port made so far (also in
    /// `hsm_kms_find_objects_total`): requests on known keys make none.
    pub fn find_calls(&self) -> FindCalls {
        self.inner.handles.find_calls()
    }

    /// Entries of the handle map and the bytes it holds (also in
    /// `hsm_kms_handle_map_entries` and `hsm_kms_handle_map_bytes`).
    pub fn handle_map_size(&self) -> (usize, usize) {
        (self.inner.handles.len(), self.inner.handles.bytes())
    }

    /// Fills the handle map from one enumeration of the token unless it is
    /// complete already (after a module re-initialisation; the next
    /// look-up would do it otherwise). On the recovery thread while
    /// requests are served, so inside the gate; the enumeration's helper
    /// threads run under this hold.
    pub(crate) fn rebuild_handles_blocking(&self) -> Result<()> {
        self.run_blocking_gated(|s| s.rebuild_handles())
    }

    /// Checks that the token answers (for `/readyz`): not while it is being
    /// re-initialised, and a call on a pooled session otherwise.
    pub async fn ping(&self) -> Result<()> {
        if !self.health().is_ready() {
            return Err(HsmError::Unavailable(self.unavailable_reason()));
        }
        self.run(OpClass::Symmetric, |s| {
            s.session.get_session_info()?;
            Ok(())
        })
        .await
    }

    /// The PKCS#11 context and slot of the serving generation, for test
    /// hooks that act on the service's own sessions.
    #[cfg(feature = "test-hooks")]
    pub fn context(&self) -> Result<(Pkcs11, Slot)> {
        let m = self.module()?;
        Ok((m.ctx.clone(), m.slot))
    }

    /// Runs `f` on the serving context and slot while no operation of the
    /// service is inside the token: with the blocking-pool dispatch every
    /// concurrency permit is taken first, and in both dispatches the gate
    /// that workers, inline calls and the service's own threads hold
    /// around each call.
    /// For test hooks that close sessions or log out: SoftHSMv2 2.6 frees a
    /// session's state under a concurrent call on it (`C_CloseAllSessions`
    /// racing a `C_FindObjectsInit` answered `CKR_GENERAL_ERROR` and then
    /// crashed the process), which a network HSM's server does not do.
    #[cfg(feature = "test-hooks")]
    pub async fn quiesced<T: Send + 'static>(
        &self,
        f: impl FnOnce(Pkcs11, Slot) -> T + Send + 'static,
    ) -> Result<T> {
        if self.inner.workers.is_some() {
            let hsm = self.clone();
            return tokio::task::spawn_blocking(move || {
                let _g = hsm.inner.gate.write().unwrap_or_else(|p| p.into_inner());
                let (ctx, slot) = hsm.context()?;
                Ok(f(ctx, slot))
            })
            .await
            .map_err(|e| HsmError::Worker(e.to_string()))?;
        }
        let worker = |e: tokio::sync::AcquireError| HsmError::Worker(e.to_string());
        let _sym = self
            .inner
            .symmetric
            .acquire_many(self.inner.permits.0)
            .await
            .map_err(worker)?;
        let _asym = self
            .inner
            .asymmetric
            .acquire_many(self.inner.permits.1)
            .await
            .map_err(worker)?;
        // Threads of the service's own call the token outside the permits
        // but inside the gate (Hsm::run_blocking_gated).
        let hsm = self.clone();
        tokio::task::spawn_blocking(move || {
            let _g = hsm.inner.gate.write().unwrap_or_else(|p| p.into_inner());
            let (ctx, slot) = hsm.context()?;
            Ok(f(ctx, slot))
        })
        .await
        .map_err(|e| HsmError::Worker(e.to_string()))?
    }
}

/// A session lent to one operation, with access to the handle cache.
pub struct SessionRef<'a> {
    session: &'a Session,
    hsm: &'a Hsm,
    /// Handles this call took from the cache: the ones to look up again
    /// when the token calls one invalid.
    cached: RefCell<Vec<HandleKey>>,
    /// The handle map's epoch when this session was lent.
    epoch: u64,
}

impl SessionRef<'_> {
    /// The raw session, for the operation modules.
    pub(crate) fn raw(&self) -> &Session {
        self.session
    }

    /// One PKCS#11 call `f` on this session: timed in
    /// `hsm_kms_pkcs11_call_duration_seconds` (function `call`, mechanism
    /// `mech`) and, when the token refuses it, counted by return code in
    /// `hsm_kms_pkcs11_errors_total`.
    pub(crate) fn call<T>(
        &self,
        call: Call,
        mech: Option<MechanismType>,
        f: impl FnOnce(&Session) -> cryptoki::error::Result<T>,
    ) -> cryptoki::error::Result<T> {
        let start = std::time::Instant::now();
        let out = f(self.session);
        token_metrics::observe_call(call, mech, start.elapsed());
        if let Err(e) = &out {
            token_metrics::pkcs11_error(e);
        }
        out
    }

    /// The handle of the object with `CKA_ID = id` (a data object: label
    /// `id`) and class `class`, from the handle map. The token is searched
    /// only when the map cannot answer: once in all to refill a map a fault
    /// emptied, or for this one object when its handle went stale or the
    /// complete map does not know it (see [`handles`]).
    pub(crate) fn handle(&self, id: &[u8], class: ObjectClass) -> Result<ObjectHandle> {
        // CK_OBJECT_CLASS is u64 on Linux but not on every platform.
        #[allow(clippy::useless_conversion)]
        let key = (id.to_vec(), u64::from(*class));
        let map = &self.hsm.inner.handles;
        let (mut found, complete) = map.get(&key);
        token_metrics::handle_lookup(found.is_some());
        if found.is_none() && !complete {
            self.rebuild_handles()?;
            found = map.get(&key).0;
        }
        if let Some(h) = found {
            self.cached.borrow_mut().push(key);
            return Ok(h);
        }
        handles::count_refresh(map.refresh_reason(&key));
        use cryptoki::object::Attribute;
        // Data objects have no CKA_ID: their id is their label.
        let name = if class == ObjectClass::DATA {
            Attribute::Label(id.to_vec())
        } else {
            Attribute::Id(id.to_vec())
        };
        let found = self.find(&[Attribute::Token(true), Attribute::Class(class), name])?;
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
        map.insert(self.epoch, [(key.clone(), h)]);
        self.cached.borrow_mut().push(key);
        Ok(h)
    }

    /// `C_FindObjects` for one object (or a few), counted.
    pub(crate) fn find(
        &self,
        template: &[cryptoki::object::Attribute],
    ) -> Result<Vec<ObjectHandle>> {
        self.hsm.inner.handles.count_find(false);
        Ok(self.call(Call::FindObjects, None, |s| s.find_objects(template))?)
    }

    /// `C_FindObjects` over every token object, counted.
    pub(crate) fn enumerate(&self) -> Result<Vec<ObjectHandle>> {
        self.hsm.inner.handles.count_find(true);
        Ok(self.call(Call::FindObjects, None, |s| {
            s.find_objects(&[cryptoki::object::Attribute::Token(true)])
        })?)
    }

    /// Refills an incomplete handle map from one enumeration; threads that
    /// need it meanwhile wait for that one instead of searching too.
    fn rebuild_handles(&self) -> Result<()> {
        let map = &self.hsm.inner.handles;
        let _one = map.rebuild_lock();
        if map.is_complete() {
            return Ok(());
        }
        self.list_service_objects().map(|_| ())
    }

    /// Stores the handles of objects this session just made.
    pub(crate) fn remember(&self, id: &[u8], handles: &[(ObjectClass, ObjectHandle)]) {
        // CK_OBJECT_CLASS is u64 on Linux but not on every platform.
        #[allow(clippy::useless_conversion)]
        self.hsm.inner.handles.insert(
            self.epoch,
            handles
                .iter()
                .map(|(c, h)| ((id.to_vec(), u64::from(**c)), *h)),
        );
    }

    /// Stores what an enumeration found; see [`handles::HandleMap::install`].
    pub(crate) fn install_handles(&self, entries: Vec<(HandleKey, ObjectHandle)>) {
        self.hsm.inner.handles.install(self.epoch, entries);
    }

    /// Random bytes from the token's generator.
    pub fn random(&self, len: usize) -> Result<Vec<u8>> {
        let mut buf = vec![0u8; len];
        self.call(Call::GenerateRandom, None, |s| {
            s.generate_random_slice(&mut buf)
        })?;
        Ok(buf)
    }
}

impl Hsm {
    /// `len` random bytes from the token's generator.
    pub async fn random(&self, len: usize) -> Result<Vec<u8>> {
        self.run_short(move |s| s.random(len)).await
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

#[cfg(test)]
mod late_view_tests {
    use super::late_view_allowed;
    use std::time::{Duration, Instant};

    #[test]
    fn a_late_view_soon_after_a_reinit_that_helped_is_read_again() {
        let t0 = Instant::now();
        let interval = Duration::from_millis(5000);
        let at = |ms| t0 + Duration::from_millis(ms);
        // The first one always.
        assert!(late_view_allowed(None, t0, interval, false));
        // 2.4 s after one that helped (the CI failure's case): again.
        assert!(late_view_allowed(Some(t0), at(2400), interval, true));
        // ... but not within the floor.
        assert!(!late_view_allowed(Some(t0), at(100), interval, true));
        // 2.4 s after one that did not help (the object is gone): no,
        // until the interval has passed.
        assert!(!late_view_allowed(Some(t0), at(2400), interval, false));
        assert!(late_view_allowed(Some(t0), at(5000), interval, false));
        // 0 turns them off, helped or not.
        assert!(!late_view_allowed(None, t0, Duration::ZERO, true));
        assert!(!late_view_allowed(Some(t0), at(9000), Duration::ZERO, true));
    }
}
