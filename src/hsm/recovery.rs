//! Fault recovery of the PKCS#11 port: one module generation at a time, the
//! classes of token faults, and the single recovery thread that finalizes
//! and re-initialises the module after a device-class fault.
//!
//! States: **ready** (a [`Module`] is installed and serves sessions) and
//! **recovering** (none is; requests wait up to `hsm.unavailable_wait_ms`
//! for the next one, then answer [`HsmError::Unavailable`]). Faults:
//!
//! | class | PKCS#11 codes | repair | state |
//! | --- | --- | --- | --- |
//! | [`Fault::Session`] | `CKR_SESSION_HANDLE_INVALID`, `CKR_SESSION_CLOSED`, `CKR_OPERATION_ACTIVE` | forget the session and every session opened before the fault (never close them: after `C_CloseAllSessions` the token reuses handle numbers, so an old handle may already name a new session), empty the handle map (refilled by one enumeration at the next look-up), open a fresh logged-in session | ready |
//! | [`Fault::Login`] | `CKR_USER_NOT_LOGGED_IN`, a private object not found while the session is public | `C_Login` again (`CKR_USER_ALREADY_LOGGED_IN` counts as done), empty the handle map (refilled by one enumeration) | ready |
//! | [`Fault::Handle`] | `CKR_OBJECT_HANDLE_INVALID`, `CKR_KEY_HANDLE_INVALID` | drop the map entries the call used (the retry looks each up once by `CKA_ID`, counted in `hsm_kms_handle_refreshes_total{reason="stale"}`), log in if the session lost its login | ready |
//! | [`Fault::Device`] (also [`HsmError::LateView`]: an object the store names missing from this process's view of the token, at most once per `hsm.late_view_reinit_interval_ms`) | `CKR_DEVICE_ERROR`, `CKR_DEVICE_REMOVED`, `CKR_TOKEN_NOT_PRESENT`, `CKR_CRYPTOKI_NOT_INITIALIZED`, `CKR_SLOT_ID_INVALID`, `CKR_TOKEN_NOT_RECOGNIZED` | the recovery thread waits for in-flight calls of the generation, `C_Finalize`, then `C_Initialize` on a fresh context, finds the slot again by token label, logs in, empties the handle map and refills it from one enumeration; backs off 100 ms doubling to `hsm.recovery_backoff_max_ms` while that fails | recovering |

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, SessionState, UserType};
use cryptoki::slot::Slot;

use super::{find_slot, Hsm, HsmConfig, HsmError, Result};
use crate::telemetry::token as token_metrics;

/// First pause between two failed re-initialisations; it doubles up to
/// `hsm.recovery_backoff_max_ms`.
pub const RECOVERY_BACKOFF_MIN: Duration = Duration::from_millis(100);

/// How long the recovery thread waits for calls still running on the
/// broken generation before it finalizes the module anyway.
const IN_FLIGHT_GRACE: Duration = Duration::from_secs(5);

/// What a token fault asks of the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The session is gone (closed by `C_CloseAllSessions`, or its handle is
    /// invalid): use another one.
    Session,
    /// The application is no longer logged in (`C_Logout`, or the last
    /// session closed): log in again.
    Login,
    /// A cached object handle is no longer valid: look the object up again.
    Handle,
    /// The module or the token is unusable: finalize and re-initialise.
    Device,
}

fn rv_fault(rv: RvError) -> Option<Fault> {
    match rv {
        // CKR_OPERATION_ACTIVE: the session is in a state this call did not
        // leave it in; use another one.
        RvError::SessionHandleInvalid | RvError::SessionClosed | RvError::OperationActive => {
            Some(Fault::Session)
        }
        RvError::UserNotLoggedIn => Some(Fault::Login),
        RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid => Some(Fault::Handle),
        RvError::DeviceError
        | RvError::DeviceRemoved
        | RvError::TokenNotPresent
        | RvError::CryptokiNotInitialized
        | RvError::SlotIdInvalid
        | RvError::TokenNotRecognized => Some(Fault::Device),
        _ => None,
    }
}

fn ck_fault(e: &CkError) -> Option<Fault> {
    use cryptoki::context::Function as F;
    match e {
        // Kryoptic 1.5 answers CKR_GENERAL_ERROR, not CKR_KEY_HANDLE_INVALID
        // or CKR_USER_NOT_LOGGED_IN, when a key handle's object was deleted
        // by another process or the login was lost (it cannot read the
        // object's row any more): look the key up again and check the login,
        // which is the repair of both (docs/pkcs11-portability.md).
        CkError::Pkcs11(
            RvError::GeneralError,
            F::EncryptInit | F::DecryptInit | F::SignInit | F::VerifyInit | F::GetAttributeValue,
        ) => Some(Fault::Handle),
        CkError::Pkcs11(rv, _) => rv_fault(*rv),
        _ => None,
    }
}

impl HsmError {
    /// The fault class of this error, if it is a token fault the port
    /// repairs (see the module documentation).
    pub fn fault(&self) -> Option<Fault> {
        match self {
            HsmError::Pkcs11(e) | HsmError::Login(e) => ck_fault(e),
            HsmError::StaleHandle => Some(Fault::Handle),
            HsmError::Unavailable(_) | HsmError::LateView => Some(Fault::Device),
            _ => None,
        }
    }
}

/// Health of the token as the port sees it.
#[derive(Debug, Clone)]
pub enum Health {
    /// A module generation is installed and serving.
    Ready {
        /// Generation number: 1 at start, one more per re-initialisation.
        generation: u64,
    },
    /// The module is being re-initialised; requests answer 503.
    Recovering {
        /// When the fault was seen.
        since: Instant,
        /// Failed re-initialisations so far.
        attempts: u32,
        /// The fault, or the last re-initialisation's error.
        last_error: String,
    },
}

impl Health {
    /// Whether the token serves requests.
    pub fn is_ready(&self) -> bool {
        matches!(self, Health::Ready { .. })
    }
}

/// One initialisation of the PKCS#11 module: its context, the slot found in
/// it and the pool of idle logged-in sessions opened through it. A fresh
/// one replaces it after a device-class fault.
pub(super) struct Module {
    pub(super) generation: u64,
    pub(super) ctx: Pkcs11,
    pub(super) slot: Slot,
    pub(super) token_label: String,
    idle: Mutex<Vec<PooledSession>>,
    /// Bumped at every session fault: sessions opened before it are never
    /// pooled again, whatever they answer (see [`Fault::Session`]).
    epoch: AtomicU64,
    /// Set when a fresh generation replaces this one: its sessions are then
    /// forgotten, never closed, since after `C_Finalize` / `C_Initialize`
    /// their handle numbers may name sessions of the new generation.
    stale: AtomicBool,
}

impl Module {
    /// Loads and initialises the module, finds the slot, opens one session
    /// and logs in. On failure after `C_Initialize` the module is finalized
    /// again so that the next attempt can initialise it.
    pub(super) fn open(cfg: &HsmConfig, generation: u64) -> Result<Module> {
        let module_err = |source| HsmError::Module {
            path: cfg.module.display().to_string(),
            source,
        };
        let ctx = Pkcs11::new(&cfg.module).map_err(module_err)?;
        match ctx.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            // Another user of the library in this process initialised it.
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(module_err(e)),
        }
        let opened = (|| {
            let (slot, token_label) = find_slot(&ctx, cfg)?;
            let session = ctx.open_rw_session(slot)?;
            login_as(&session, cfg, token_metrics::Login::Open)?;
            Ok::<_, HsmError>((slot, token_label, session))
        })();
        match opened {
            Ok((slot, token_label, session)) => Ok(Module {
                generation,
                ctx,
                slot,
                token_label,
                idle: Mutex::new(vec![PooledSession { session, epoch: 0 }]),
                epoch: AtomicU64::new(0),
                stale: AtomicBool::new(false),
            }),
            Err(e) => {
                let _ = ctx.finalize();
                Err(e)
            }
        }
    }

    fn lock_idle(&self) -> std::sync::MutexGuard<'_, Vec<PooledSession>> {
        // A poisoned lock only means a worker panicked while holding it;
        // the Vec itself is still consistent.
        self.idle.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// An idle session, or a new logged-in one when `fresh` or none is idle.
    pub(super) fn checkout(&self, cfg: &HsmConfig, fresh: bool) -> Result<PooledSession> {
        if !fresh {
            let mut idle = self.lock_idle();
            if let Some(s) = idle.pop() {
                token_metrics::sessions_idle(idle.len());
                return Ok(s);
            }
        }
        let epoch = self.epoch.load(Ordering::Acquire);
        let s = self
            .ctx
            .open_rw_session(self.slot)
            .inspect_err(token_metrics::pkcs11_error)?;
        token_metrics::session_opened();
        // Sessions share the application's login, but that login is gone
        // when every session was closed (C_CloseAllSessions): log in when
        // needed, cheaply when already done.
        if let Err(e) = ensure_login(&s, cfg) {
            forget(s);
            return Err(e);
        }
        Ok(PooledSession { session: s, epoch })
    }

    /// Returns a session to the pool (or closes it when the pool is full).
    pub(super) fn checkin(&self, p: PooledSession, max: usize) {
        if self.stale.load(Ordering::Acquire) || p.epoch != self.epoch.load(Ordering::Acquire) {
            forget(p.session);
            return;
        }
        let mut idle = self.lock_idle();
        if idle.len() < max {
            idle.push(p);
        }
        token_metrics::sessions_idle(idle.len());
    }

    /// After a session-class fault: no session opened before it is pooled
    /// again. They are forgotten rather than checked, since a stale handle
    /// may answer for a session opened since.
    pub(super) fn session_fault(&self) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        for p in std::mem::take(&mut *self.lock_idle()) {
            forget(p.session);
        }
        token_metrics::sessions_idle(0);
    }

    fn retire(&self) {
        self.stale.store(true, Ordering::Release);
        for p in std::mem::take(&mut *self.lock_idle()) {
            forget(p.session);
        }
        token_metrics::sessions_idle(0);
    }
}

/// A session of the pool, with the session epoch it was opened in.
pub(super) struct PooledSession {
    pub(super) session: Session,
    epoch: u64,
}

impl Drop for Module {
    fn drop(&mut self) {
        if self.stale.load(Ordering::Acquire) {
            for p in std::mem::take(&mut *self.lock_idle()) {
                forget(p.session);
            }
        }
    }
}

/// Drops a session without `C_CloseSession`: its handle is invalid, or
/// may already name another session (token handles are reused).
pub(super) fn forget(session: Session) {
    std::mem::forget(session);
}

/// Successful `C_Login` calls of this process so far (see [`logins`]).
static LOGINS: AtomicU64 = AtomicU64::new(0);

/// How many times this process logged in: a call that found a private
/// object missing while a login was repaired by another thread ran on a
/// logged-out session, whatever the session says now.
pub(super) fn logins() -> u64 {
    LOGINS.load(Ordering::Acquire)
}

/// `C_Login` as the user to repair a lost login; an application already
/// logged in is fine.
pub(super) fn login(session: &Session, cfg: &HsmConfig) -> Result<()> {
    login_as(session, cfg, token_metrics::Login::Relogin)
}

/// `C_Login` as the user, counted in `hsm_kms_hsm_logins_total{reason}`.
fn login_as(session: &Session, cfg: &HsmConfig, why: token_metrics::Login) -> Result<()> {
    match session.login(UserType::User, Some(&cfg.pin)) {
        Ok(()) => {
            LOGINS.fetch_add(1, Ordering::AcqRel);
            token_metrics::login(why);
            Ok(())
        }
        Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(e) => {
            token_metrics::pkcs11_error(&e);
            Err(HsmError::Login(e))
        }
    }
}

/// Whether the session's application is logged in as the user.
pub(super) fn logged_in(session: &Session) -> Result<bool> {
    let state = session.get_session_info()?.session_state();
    Ok(matches!(state, SessionState::RoUser | SessionState::RwUser))
}

/// Logs in unless the session is logged in already.
pub(super) fn ensure_login(session: &Session, cfg: &HsmConfig) -> Result<()> {
    if logged_in(session)? {
        return Ok(());
    }
    login(session, cfg)
}

impl Hsm {
    /// The current generation, or `Unavailable` while recovering.
    pub(super) fn module(&self) -> Result<Arc<Module>> {
        self.inner
            .module
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(|| HsmError::Unavailable(self.unavailable_reason()))
    }

    pub(super) fn unavailable_reason(&self) -> String {
        match &*self.inner.health.borrow() {
            Health::Ready { .. } => "the token is being re-initialised".into(),
            Health::Recovering {
                last_error,
                attempts,
                ..
            } => format!(
                "the token is unusable ({last_error}); re-initialisation attempts: {attempts}"
            ),
        }
    }

    /// The token's health.
    pub fn health(&self) -> Health {
        self.inner.health.borrow().clone()
    }

    /// Re-initialises the module once (the device-fault recovery: finalize,
    /// initialize, log in, refill the handle map; nothing destroyed) and
    /// waits, at most `wait`, until the new generation is ready; returns
    /// whether it is. For the start-up reconciler, when objects the store
    /// names are missing from this process's view of the token: a late
    /// view of a token directory other processes share (README "Running
    /// several nodes") heals only by a re-initialisation. Counted in
    /// `hsm_kms_hsm_late_view_reinits_total`.
    pub async fn reread_token(&self, wait: Duration) -> bool {
        let Ok(module) = self.module() else {
            return self.wait_ready(wait).await;
        };
        let generation = module.generation;
        drop(module);
        metrics::counter!("hsm_kms_hsm_late_view_reinits_total").increment(1);
        let mut rx = self.inner.health.subscribe();
        self.device_fault(generation, &HsmError::LateView);
        let ready = tokio::time::timeout(
            wait,
            rx.wait_for(|h| matches!(h, Health::Ready { generation: g } if *g > generation)),
        )
        .await;
        matches!(ready, Ok(Ok(_)))
    }

    /// Completes once the token is ready, or after `wait`; returns whether
    /// it is ready.
    pub async fn wait_ready(&self, wait: Duration) -> bool {
        if self.inner.health.borrow().is_ready() {
            return true;
        }
        let mut rx = self.inner.health.subscribe();
        let ready = matches!(
            tokio::time::timeout(wait, rx.wait_for(Health::is_ready)).await,
            Ok(Ok(_))
        );
        ready
    }

    /// [`Hsm::wait_ready`] for threads outside the runtime.
    pub(super) fn wait_ready_blocking(&self, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            if self.inner.health.borrow().is_ready() {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Marks generation `generation` broken by `cause` and starts the
    /// recovery thread, unless another fault already did.
    pub(super) fn device_fault(&self, generation: u64, cause: &HsmError) {
        let old = {
            let mut slot = self.inner.module.write().unwrap_or_else(|p| p.into_inner());
            match &*slot {
                Some(m) if m.generation == generation => {}
                _ => return,
            }
            let old = slot.take();
            if let Some(m) = &old {
                m.retire();
            }
            old
        };
        self.inner.health.send_replace(Health::Recovering {
            since: Instant::now(),
            attempts: 0,
            last_error: cause.to_string(),
        });
        metrics::gauge!("hsm_kms_hsm_ready").set(0.0);
        tracing::error!(
            error = %cause,
            generation,
            "the token is unusable; finalizing and re-initialising the PKCS#11 module"
        );
        let hsm = self.clone();
        let spawned = std::thread::Builder::new()
            .name("hsm-recovery".into())
            .spawn(move || hsm.recover(old, generation + 1));
        if let Err(e) = spawned {
            tracing::error!(error = %e, "cannot start the HSM recovery thread");
        }
    }

    /// The recovery thread: finalize the broken generation, then initialise
    /// a fresh one until that works.
    fn recover(&self, old: Option<Arc<Module>>, generation: u64) {
        let started = Instant::now();
        if let Some(old) = old {
            let deadline = Instant::now() + IN_FLIGHT_GRACE;
            while Arc::strong_count(&old) > 1 && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            let ctx = old.ctx.clone();
            drop(old);
            if let Err(e) = ctx.finalize() {
                tracing::info!(error = %e, "C_Finalize of the broken module generation");
            }
        }
        self.inner.handles.invalidate();
        let mut delay = RECOVERY_BACKOFF_MIN;
        let mut attempts = 0u32;
        loop {
            match Module::open(&self.inner.cfg, generation) {
                Ok(m) => {
                    let label = m.token_label.clone();
                    *self.inner.module.write().unwrap_or_else(|p| p.into_inner()) =
                        Some(Arc::new(m));
                    self.inner.health.send_replace(Health::Ready { generation });
                    metrics::gauge!("hsm_kms_hsm_ready").set(1.0);
                    metrics::counter!("hsm_kms_hsm_recoveries_total").increment(1);
                    tracing::warn!(
                        generation,
                        token = %label,
                        failed_attempts = attempts,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "the token is usable again: module re-initialised, logged in"
                    );
                    // Refill the handle map now rather than in the first
                    // request that needs it.
                    if let Err(e) = self.rebuild_handles_blocking() {
                        tracing::warn!(error = %e, "refilling the handle map after the re-initialisation failed; the next request retries");
                    }
                    return;
                }
                Err(e) => {
                    attempts += 1;
                    tracing::warn!(error = %e, attempts, retry_in_ms = delay.as_millis() as u64,
                        "re-initialising the PKCS#11 module failed");
                    self.inner.health.send_modify(|h| {
                        if let Health::Recovering {
                            attempts: a,
                            last_error,
                            ..
                        } = h
                        {
                            *a = attempts;
                            *last_error = e.to_string();
                        }
                    });
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(self.inner.backoff_max.max(RECOVERY_BACKOFF_MIN));
                }
            }
        }
    }
}
