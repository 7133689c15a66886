//! The token, as an operator of an HSM watches it: PKCS#11 call latency by
//! function and mechanism, errors by return code, the session pool (idle,
//! in use, opened, time to get one), the worker queues and concurrency
//! permits waited for, logins, repaired faults by class, and handle-map
//! hits and misses. Filled by `hsm/`; module re-initialisations and the
//! handle map's size stay in `hsm_kms_hsm_recoveries_total`,
//! `hsm_kms_hsm_late_view_reinits_total`, `hsm_kms_handle_map_entries` and
//! `hsm_kms_handle_refreshes_total` (the `metrics` exporter's families).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;

use super::{header, sample, Counter, Gauge, Histogram};

/// The PKCS#11 functions timed on the request paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Call {
    /// `C_Encrypt`.
    Encrypt,
    /// `C_Decrypt`.
    Decrypt,
    /// `C_Sign`.
    Sign,
    /// `C_Verify`.
    Verify,
    /// `C_GenerateRandom`.
    GenerateRandom,
    /// `C_GenerateKey`.
    GenerateKey,
    /// `C_GenerateKeyPair`.
    GenerateKeyPair,
    /// `C_CreateObject`.
    CreateObject,
    /// `C_DestroyObject`.
    DestroyObject,
    /// `C_FindObjects` (with its `Init` and `Final`).
    FindObjects,
    /// `C_GetAttributeValue`.
    GetAttributeValue,
}

const CALLS: [(Call, &str); 11] = [
    (Call::Encrypt, "C_Encrypt"),
    (Call::Decrypt, "C_Decrypt"),
    (Call::Sign, "C_Sign"),
    (Call::Verify, "C_Verify"),
    (Call::GenerateRandom, "C_GenerateRandom"),
    (Call::GenerateKey, "C_GenerateKey"),
    (Call::GenerateKeyPair, "C_GenerateKeyPair"),
    (Call::CreateObject, "C_CreateObject"),
    (Call::DestroyObject, "C_DestroyObject"),
    (Call::FindObjects, "C_FindObjects"),
    (Call::GetAttributeValue, "C_GetAttributeValue"),
];

/// Mechanisms with their own series; any other is `other`, no mechanism
/// (object calls, random numbers) is `none`.
const MECHANISMS: [(MechanismType, &str); 18] = [
    (MechanismType::AES_GCM, "CKM_AES_GCM"),
    (MechanismType::SHA256_HMAC, "CKM_SHA256_HMAC"),
    (MechanismType::RSA_PKCS_OAEP, "CKM_RSA_PKCS_OAEP"),
    (MechanismType::RSA_X_509, "CKM_RSA_X_509"),
    (MechanismType::RSA_PKCS, "CKM_RSA_PKCS"),
    (MechanismType::SHA256_RSA_PKCS, "CKM_SHA256_RSA_PKCS"),
    (MechanismType::RSA_PKCS_PSS, "CKM_RSA_PKCS_PSS"),
    (
        MechanismType::SHA256_RSA_PKCS_PSS,
        "CKM_SHA256_RSA_PKCS_PSS",
    ),
    (
        MechanismType::SHA384_RSA_PKCS_PSS,
        "CKM_SHA384_RSA_PKCS_PSS",
    ),
    (
        MechanismType::SHA512_RSA_PKCS_PSS,
        "CKM_SHA512_RSA_PKCS_PSS",
    ),
    (MechanismType::ECDSA, "CKM_ECDSA"),
    (MechanismType::ECDSA_SHA256, "CKM_ECDSA_SHA256"),
    (MechanismType::ECDSA_SHA384, "CKM_ECDSA_SHA384"),
    (MechanismType::AES_KEY_GEN, "CKM_AES_KEY_GEN"),
    (
        MechanismType::GENERIC_SECRET_KEY_GEN,
        "CKM_GENERIC_SECRET_KEY_GEN",
    ),
    (
        MechanismType::RSA_PKCS_KEY_PAIR_GEN,
        "CKM_RSA_PKCS_KEY_PAIR_GEN",
    ),
    (MechanismType::ECC_KEY_PAIR_GEN, "CKM_EC_KEY_PAIR_GEN"),
    (MechanismType::SHA384_RSA_PKCS, "CKM_SHA384_RSA_PKCS"),
];
const MECH_OTHER: usize = MECHANISMS.len();
const MECH_NONE: usize = MECHANISMS.len() + 1;
const MECH_SLOTS: usize = MECHANISMS.len() + 2;

fn mech_slot(m: Option<MechanismType>) -> usize {
    match m {
        None => MECH_NONE,
        Some(m) => MECHANISMS
            .iter()
            .position(|(t, _)| *t == m)
            .unwrap_or(MECH_OTHER),
    }
}

fn mech_name(i: usize) -> &'static str {
    match i {
        MECH_OTHER => "other",
        MECH_NONE => "none",
        i => MECHANISMS[i].1,
    }
}

static CALL_DURATION: [[Histogram; MECH_SLOTS]; CALLS.len()] =
    [const { [const { Histogram::latency() }; MECH_SLOTS] }; CALLS.len()];

/// Times one PKCS#11 call of `call` with mechanism `mech`.
pub fn observe_call(call: Call, mech: Option<MechanismType>, took: Duration) {
    let c = CALLS.iter().position(|(k, _)| *k == call).unwrap_or(0);
    CALL_DURATION[c][mech_slot(mech)].observe(took);
}

/// What a PKCS#11 error says about the token, for alerting: `fault` (the
/// port repairs it: session, login, handle, device), `data` (the caller's
/// data: a ciphertext or signature that does not check), `other`.
fn error_kind(rv: RvError, f: Function) -> &'static str {
    use RvError as R;
    match rv {
        R::SessionHandleInvalid
        | R::SessionClosed
        | R::OperationActive
        | R::UserNotLoggedIn
        | R::ObjectHandleInvalid
        | R::KeyHandleInvalid
        | R::DeviceError
        | R::DeviceRemoved
        | R::DeviceMemory
        | R::TokenNotPresent
        | R::CryptokiNotInitialized
        | R::SlotIdInvalid
        | R::TokenNotRecognized => "fault",
        R::EncryptedDataInvalid
        | R::EncryptedDataLenRange
        | R::DataInvalid
        | R::DataLenRange
        | R::SignatureInvalid
        | R::SignatureLenRange => "data",
        // SoftHSMv2 answers a GCM tag that does not check with these at
        // C_Decrypt (see hsm/symmetric.rs).
        R::GeneralError | R::FunctionFailed if matches!(f, Function::Decrypt) => "data",
        _ => "other",
    }
}

/// `UserNotLoggedIn` as `CKR_USER_NOT_LOGGED_IN`.
fn ckr_name(rv: RvError) -> String {
    match rv {
        RvError::VendorDefined(_) => return "CKR_VENDOR_DEFINED".into(),
        RvError::UnknownErrorCode(_) => return "CKR_UNKNOWN".into(),
        _ => {}
    }
    let camel = format!("{rv:?}");
    let mut out = String::from("CKR");
    for c in camel.chars() {
        if c.is_ascii_uppercase() {
            out.push('_');
        }
        out.push(c.to_ascii_uppercase());
    }
    out
}

/// (function, code, kind) → count. Errors are rare; their label values are
/// bounded by the PKCS#11 function and return-code lists.
type ErrorCounts = HashMap<(String, String, &'static str), u64>;
static ERRORS: Mutex<Option<ErrorCounts>> = Mutex::new(None);

/// Counts a PKCS#11 error (any function; other cryptoki errors are not
/// token answers and are not counted).
pub fn pkcs11_error(e: &CkError) {
    let CkError::Pkcs11(rv, f) = e else {
        return;
    };
    let key = (format!("C_{f:?}"), ckr_name(*rv), error_kind(*rv, *f));
    let mut g = ERRORS.lock().unwrap_or_else(|p| p.into_inner());
    *g.get_or_insert_with(HashMap::new).entry(key).or_insert(0) += 1;
}

/// Which worker lane (mechanism class) a token call queued on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// AES, HMAC, random numbers, look-ups.
    Symmetric = 0,
    /// RSA, ECDSA, key generation.
    Asymmetric = 1,
}

const LANES: [&str; 2] = ["symmetric", "asymmetric"];

static QUEUE_WAIT: [Histogram; 2] = [const { Histogram::latency() }; 2];
static QUEUE_DEPTH: [Gauge; 2] = [const { Gauge::new() }; 2];
static PERMIT_WAITS: [Counter; 2] = [const { Counter::new() }; 2];
static BATCH_SIZE: Histogram = Histogram::sizes();

/// Time a token call waited for a worker (or a permit) of its lane.
pub fn queue_wait(lane: Lane, took: Duration) {
    QUEUE_WAIT[lane as usize].observe(took);
}

/// A call found every worker (permit) of its lane busy and queued.
pub fn permit_waited(lane: Lane) {
    PERMIT_WAITS[lane as usize].inc();
}

/// Calls queued on a lane now.
pub fn queue_depth(lane: Lane, depth: usize) {
    QUEUE_DEPTH[lane as usize].set(i64::try_from(depth).unwrap_or(i64::MAX));
}

/// Jobs one worker took in one wake-up.
pub fn worker_batch(size: usize) {
    BATCH_SIZE.observe_value(size as u64);
}

static SESSIONS_IDLE: Gauge = Gauge::new();
static SESSIONS_IN_USE: Gauge = Gauge::new();
static SESSIONS_OPENED: Counter = Counter::new();
static SESSION_WAIT: Histogram = Histogram::latency();

/// Idle sessions in the pool now.
pub fn sessions_idle(n: usize) {
    SESSIONS_IDLE.set(i64::try_from(n).unwrap_or(i64::MAX));
}

/// A session was opened (`C_OpenSession`).
pub fn session_opened() {
    SESSIONS_OPENED.inc();
}

/// How long a call took to get a logged-in session (from the pool, or a
/// new one).
pub fn session_wait(took: Duration) {
    SESSION_WAIT.observe(took);
}

/// A session lent to a call: counted in use until dropped.
#[derive(Debug)]
pub struct SessionInUse(());

impl SessionInUse {
    /// Counts one more session in use.
    pub fn start() -> Self {
        SESSIONS_IN_USE.add(1);
        SessionInUse(())
    }
}

impl Drop for SessionInUse {
    fn drop(&mut self) {
        SESSIONS_IN_USE.add(-1);
    }
}

/// Why the service logged in.
#[derive(Debug, Clone, Copy)]
pub enum Login {
    /// Opening a module generation (start, re-initialisation).
    Open = 0,
    /// A lost login repaired (`C_Logout` elsewhere, every session closed).
    Relogin = 1,
}

static LOGINS: [Counter; 2] = [const { Counter::new() }; 2];

/// Counts a successful `C_Login`.
pub fn login(why: Login) {
    LOGINS[why as usize].inc();
}

/// Token fault classes the port repairs (see `hsm/recovery.rs`).
const FAULTS: [&str; 4] = ["session", "login", "handle", "device"];
static FAULT_COUNTS: [Counter; 4] = [const { Counter::new() }; 4];

/// Counts a token fault of class `i` (0 session, 1 login, 2 handle, 3
/// device; see [`FAULTS`]).
pub fn fault(class: usize) {
    if let Some(c) = FAULT_COUNTS.get(class) {
        c.inc();
    }
}

static HANDLE_HITS: Counter = Counter::new();
static HANDLE_MISSES: Counter = Counter::new();

/// A handle-map look-up: answered from the map, or not (the token was
/// searched, or the map refilled).
pub fn handle_lookup(hit: bool) {
    if hit {
        HANDLE_HITS.inc();
    } else {
        HANDLE_MISSES.inc();
    }
}

pub(super) fn render(out: &mut String) {
    header(
        out,
        "hsm_kms_pkcs11_call_duration_seconds",
        "histogram",
        "Latency of PKCS#11 calls by function and mechanism, in the token worker (buckets 100 us to 10 s).",
    );
    for (c, (_, fname)) in CALLS.iter().enumerate() {
        for (m, h) in CALL_DURATION[c].iter().enumerate() {
            if h.count() == 0 {
                continue;
            }
            h.write(
                out,
                "hsm_kms_pkcs11_call_duration_seconds",
                &format!("function=\"{fname}\",mechanism=\"{}\"", mech_name(m)),
            );
        }
    }
    header(
        out,
        "hsm_kms_pkcs11_errors_total",
        "counter",
        "PKCS#11 calls that failed, by function, return code and kind (fault: repaired by the port; data: the caller's ciphertext or signature; other).",
    );
    {
        let g = ERRORS.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<_> = g.iter().flat_map(|m| m.iter()).collect();
        rows.sort();
        for ((f, code, kind), n) in rows {
            sample(
                out,
                "hsm_kms_pkcs11_errors_total",
                &format!("function=\"{f}\",code=\"{code}\",kind=\"{kind}\""),
                n,
            );
        }
    }
    header(
        out,
        "hsm_kms_hsm_faults_total",
        "counter",
        "Token faults the port met and repaired, by class: session (re-opened), login (logged in again), handle (looked up again), device (module re-initialised).",
    );
    for (i, class) in FAULTS.iter().enumerate() {
        sample(
            out,
            "hsm_kms_hsm_faults_total",
            &format!("class=\"{class}\""),
            FAULT_COUNTS[i].get(),
        );
    }
    header(
        out,
        "hsm_kms_hsm_logins_total",
        "counter",
        "Successful C_Login calls: open (a module generation opened) or relogin (a lost login repaired).",
    );
    for (i, why) in ["open", "relogin"].iter().enumerate() {
        sample(
            out,
            "hsm_kms_hsm_logins_total",
            &format!("reason=\"{why}\""),
            LOGINS[i].get(),
        );
    }
    header(
        out,
        "hsm_kms_hsm_sessions",
        "gauge",
        "PKCS#11 sessions of the pool: idle (pooled) and in_use (lent to a call).",
    );
    sample(
        out,
        "hsm_kms_hsm_sessions",
        "state=\"idle\"",
        SESSIONS_IDLE.get(),
    );
    sample(
        out,
        "hsm_kms_hsm_sessions",
        "state=\"in_use\"",
        SESSIONS_IN_USE.get(),
    );
    header(
        out,
        "hsm_kms_hsm_sessions_opened_total",
        "counter",
        "PKCS#11 sessions opened (the pool was empty, or a session fault asked for a fresh one).",
    );
    sample(
        out,
        "hsm_kms_hsm_sessions_opened_total",
        "",
        SESSIONS_OPENED.get(),
    );
    header(
        out,
        "hsm_kms_hsm_session_wait_seconds",
        "histogram",
        "Time a token call took to get a logged-in session (pooled, or opened and logged in).",
    );
    SESSION_WAIT.write(out, "hsm_kms_hsm_session_wait_seconds", "");
    header(
        out,
        "hsm_kms_hsm_queue_wait_seconds",
        "histogram",
        "Time a token call waited for a worker (a concurrency permit) of its class.",
    );
    for (i, lane) in LANES.iter().enumerate() {
        QUEUE_WAIT[i].write(
            out,
            "hsm_kms_hsm_queue_wait_seconds",
            &format!("class=\"{lane}\""),
        );
    }
    header(
        out,
        "hsm_kms_hsm_permit_waits_total",
        "counter",
        "Token calls that found every worker (permit) of their class busy and queued.",
    );
    for (i, lane) in LANES.iter().enumerate() {
        sample(
            out,
            "hsm_kms_hsm_permit_waits_total",
            &format!("class=\"{lane}\""),
            PERMIT_WAITS[i].get(),
        );
    }
    header(
        out,
        "hsm_kms_hsm_queue_depth",
        "gauge",
        "Token calls queued for a worker of their class now.",
    );
    for (i, lane) in LANES.iter().enumerate() {
        sample(
            out,
            "hsm_kms_hsm_queue_depth",
            &format!("class=\"{lane}\""),
            QUEUE_DEPTH[i].get(),
        );
    }
    header(
        out,
        "hsm_kms_hsm_batch_size",
        "histogram",
        "Token calls a worker ran per wake-up (up to 8).",
    );
    BATCH_SIZE.write(out, "hsm_kms_hsm_batch_size", "");
    header(
        out,
        "hsm_kms_handle_map_lookups_total",
        "counter",
        "Object-handle look-ups: hit (answered by the handle map) or miss (the token was searched or the map refilled).",
    );
    sample(
        out,
        "hsm_kms_handle_map_lookups_total",
        "result=\"hit\"",
        HANDLE_HITS.get(),
    );
    sample(
        out,
        "hsm_kms_handle_map_lookups_total",
        "result=\"miss\"",
        HANDLE_MISSES.get(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn return_codes_are_named_as_in_the_standard() {
        assert_eq!(ckr_name(RvError::UserNotLoggedIn), "CKR_USER_NOT_LOGGED_IN");
        assert_eq!(ckr_name(RvError::GeneralError), "CKR_GENERAL_ERROR");
        assert_eq!(
            ckr_name(RvError::VendorDefined(0x8000_0001)),
            "CKR_VENDOR_DEFINED"
        );
        assert_eq!(error_kind(RvError::DeviceError, Function::Sign), "fault");
        assert_eq!(error_kind(RvError::GeneralError, Function::Decrypt), "data");
        assert_eq!(error_kind(RvError::GeneralError, Function::Sign), "other");
        assert_eq!(
            mech_name(mech_slot(Some(MechanismType::AES_GCM))),
            "CKM_AES_GCM"
        );
        assert_eq!(mech_name(mech_slot(None)), "none");
    }
}
