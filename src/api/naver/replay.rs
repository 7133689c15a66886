//! The replay guard of NCP-signed calls.
//!
//! NCP's signature covers method, path, timestamp and access key, not the
//! body, and the protocol has no nonce: a captured request can be sent again,
//! with any body, for as long as its timestamp is inside the signature window.
//! A server cannot tell such a replay from two honest identical requests sent
//! in the same millisecond (a multi-threaded client encrypting under one key
//! does that all the time), so the guard refuses a second use of
//! (access key, timestamp, signature) only where an honest duplicate is
//! implausible and a replay does damage: by default the calls that change
//! keys, versions, ACLs, token generators and token sets (`"management"`);
//! with `"all"`, every signed call.
//!
//! Memory: one entry per guarded call seen within the window, kept until its
//! timestamp leaves the window (`timestamp + window`), so the map holds at
//! most (guarded calls per second) x (2 x window) entries, and never more
//! than `max_entries`. An entry is a 16-byte digest and an 8-byte expiry,
//! held in a hash map and in an expiry heap: 64 bytes of data, at most about
//! 130 bytes with the collections' growth slack (measured: 8 MB of resident
//! memory for 100,000 entries, 82 bytes each), so the default 100,000
//! entries take at most about 13 MB. When the map
//! is full of entries that have not expired, new guarded calls are refused
//! with 503 rather than an entry being forgotten early: forgetting would
//! reopen exactly the replay the guard exists to stop, and a full guard is an
//! overload the operator should see.
//!
//! Several nodes: with `naver.replay_guard_scope = "store"` (the default)
//! a call this process admits is also recorded in the metadata store (one
//! `INSERT ... ON CONFLICT` on the digest, see `Engine::claim_signature`),
//! and admitted only if no node recorded it first: a request replayed to
//! another node sharing the store is refused there too. This process's map
//! stays in front, so a replay to the same node is refused without a store
//! round trip; calls the guard does not cover (by default every crypto
//! call and every read) never touch it. With `"node"` the guard is this
//! process's map alone.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;

use sha2::{Digest, Sha256};

/// Which signed calls the guard covers (`naver.replay_guard`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    /// No guard: replays within the window are served.
    Off,
    /// Calls that change state, other than the crypto calls (default).
    Management,
    /// Every signed call, crypto included.
    All,
}

impl ReplayMode {
    /// Parses `off`, `management` or `all`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(ReplayMode::Off),
            "management" => Some(ReplayMode::Management),
            "all" => Some(ReplayMode::All),
            _ => None,
        }
    }
}

/// Why the guard refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ReplayError {
    /// The same (access key, timestamp, signature) was already used.
    #[error(
        "replayed request: this access key already used this x-ncp-apigw-timestamp and signature; \
         sign each request anew with a fresh timestamp"
    )]
    Replayed,
    /// The guard holds `max_entries` live entries.
    #[error("too many signed management calls in the signature window; retry later")]
    Full,
}

#[derive(Debug, Default)]
struct Seen {
    expiry: HashMap<u128, i64>,
    order: BinaryHeap<Reverse<(i64, u128)>>,
}

/// The guard: a bounded set of recently used signatures.
#[derive(Debug)]
pub struct ReplayGuard {
    mode: ReplayMode,
    window_ms: i64,
    max_entries: usize,
    shared: bool,
    seen: Mutex<Seen>,
}

/// A signature the guard admitted in this process (see
/// [`ReplayGuard::admit`]): what the store records for the other nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admitted {
    /// The 128-bit digest of (access key, timestamp, signature).
    pub digest: [u8; 16],
    /// When the timestamp leaves the window, ms.
    pub expires_at: i64,
}

/// The crypto actions, which honest clients repeat within a millisecond.
const CRYPTO_ACTIONS: [&str; 7] = [
    "Encrypt",
    "Decrypt",
    "ReEncrypt",
    "CreateCustomKey",
    "Sign",
    "Verify",
    "GetPublicKey",
];

impl ReplayGuard {
    /// A guard for `mode`, signatures valid for `window_secs`, holding at
    /// most `max_entries` signatures.
    pub fn new(mode: ReplayMode, window_secs: i64, max_entries: usize) -> Self {
        ReplayGuard {
            mode,
            window_ms: window_secs.saturating_mul(1000),
            max_entries,
            shared: false,
            seen: Mutex::new(Seen::default()),
        }
    }

    /// The same guard, recording admitted signatures in the store too
    /// (`naver.replay_guard_scope = "store"`) when `shared`.
    pub fn shared(mut self, shared: bool) -> Self {
        self.shared = shared;
        self
    }

    /// Whether admitted signatures must also be claimed in the store.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Whether a call of `method` on route `template` is guarded.
    pub fn covers(&self, method: &str, template: Option<&str>) -> bool {
        match self.mode {
            ReplayMode::Off => false,
            ReplayMode::All => true,
            ReplayMode::Management => {
                if method == "GET" || method == "HEAD" {
                    return false;
                }
                let action = template.and_then(|t| super::activity::action(method, t));
                !action.is_some_and(|a| CRYPTO_ACTIONS.contains(&a))
            }
        }
    }

    /// Records one use of (access key, timestamp, signature) at `now_ms`:
    /// `Err(Replayed)` if it was used before within the window.
    pub fn check(
        &self,
        access_key: &str,
        timestamp_ms: i64,
        signature: &str,
        now_ms: i64,
    ) -> Result<(), ReplayError> {
        self.admit(access_key, timestamp_ms, signature, now_ms)
            .map(|_| ())
    }

    /// [`ReplayGuard::check`], returning what the store records of the
    /// admitted signature when the guard is shared.
    pub fn admit(
        &self,
        access_key: &str,
        timestamp_ms: i64,
        signature: &str,
        now_ms: i64,
    ) -> Result<Admitted, ReplayError> {
        let digest = digest(access_key, timestamp_ms, signature);
        let expires = timestamp_ms.saturating_add(self.window_ms);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(Reverse((at, d))) = seen.order.peek().copied() {
            if at >= now_ms {
                break;
            }
            seen.order.pop();
            if seen.expiry.get(&d) == Some(&at) {
                seen.expiry.remove(&d);
            }
        }
        if seen.expiry.contains_key(&digest) {
            return Err(ReplayError::Replayed);
        }
        if seen.expiry.len() >= self.max_entries {
            return Err(ReplayError::Full);
        }
        seen.expiry.insert(digest, expires);
        seen.order.push(Reverse((expires, digest)));
        Ok(Admitted {
            digest: digest.to_be_bytes(),
            expires_at: expires,
        })
    }

    /// Forgets a signature [`ReplayGuard::admit`] admitted, when the call
    /// was refused before it did anything (the store could not record it):
    /// the client may send it again.
    pub fn forget(&self, admitted: &Admitted) {
        let d = u128::from_be_bytes(admitted.digest);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.expiry.get(&d) == Some(&admitted.expires_at) {
            seen.expiry.remove(&d);
        }
    }

    /// Signatures held now (for tests and metrics).
    pub fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .expiry
            .len()
    }

    /// True when no signature is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// 128 bits of SHA-256 over the three fields, length-prefixed so that no two
/// different triples share an input. A collision could only refuse an honest
/// call, never admit a replay.
fn digest(access_key: &str, timestamp_ms: i64, signature: &str) -> u128 {
    let mut h = Sha256::new();
    h.update((access_key.len() as u64).to_be_bytes());
    h.update(access_key.as_bytes());
    h.update(timestamp_ms.to_be_bytes());
    h.update(signature.as_bytes());
    let out = h.finalize();
    let mut first = [0u8; 16];
    first.copy_from_slice(&out[..16]);
    u128::from_be_bytes(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item5_second_use_refused_until_the_window_passes() {
        let g = ReplayGuard::new(ReplayMode::Management, 300, 10);
        let ts = 1_700_000_000_000;
        assert_eq!(g.check("AK", ts, "sig", ts), Ok(()));
        assert_eq!(g.check("AK", ts, "sig", ts + 1), Err(ReplayError::Replayed));
        // Another access key, timestamp or signature is another call.
        assert_eq!(g.check("AK2", ts, "sig", ts), Ok(()));
        assert_eq!(g.check("AK", ts + 1, "sig", ts), Ok(()));
        assert_eq!(g.check("AK", ts, "sig2", ts), Ok(()));
        // Still refused at the window's last millisecond, forgotten after it
        // (the signature itself is refused as expired from then on).
        assert_eq!(
            g.check("AK", ts, "sig", ts + 300_000),
            Err(ReplayError::Replayed)
        );
        assert_eq!(g.check("AK", ts, "sig", ts + 300_001), Ok(()));
    }

    #[test]
    fn item5_full_guard_refuses_instead_of_forgetting() {
        let g = ReplayGuard::new(ReplayMode::All, 1, 2);
        assert_eq!(g.check("AK", 1_000, "a", 1_000), Ok(()));
        assert_eq!(g.check("AK", 1_000, "b", 1_000), Ok(()));
        assert_eq!(g.check("AK", 1_000, "c", 1_500), Err(ReplayError::Full));
        assert_eq!(g.check("AK", 1_000, "a", 1_500), Err(ReplayError::Replayed));
        // Once the first entries expire there is room again.
        assert_eq!(g.check("AK", 2_500, "c", 2_500), Ok(()));
        assert_eq!(g.len(), 1);
    }

    #[test]
    fn a_forgotten_signature_may_be_sent_again() {
        let g = ReplayGuard::new(ReplayMode::All, 300, 10).shared(true);
        assert!(g.is_shared());
        let ts = 1_700_000_000_000;
        let a = g.admit("AK", ts, "sig", ts).unwrap();
        assert_eq!(a.expires_at, ts + 300_000);
        assert_eq!(g.admit("AK", ts, "sig", ts), Err(ReplayError::Replayed));
        g.forget(&a);
        assert_eq!(g.admit("AK", ts, "sig", ts), Ok(a));
    }

    #[test]
    fn item5_modes_cover_the_documented_calls() {
        let m = ReplayGuard::new(ReplayMode::Management, 300, 1);
        assert!(m.covers("POST", Some("/kms/v1/keys")));
        assert!(m.covers("POST", Some("/kms/v1/keys/{key_tag}/token-set")));
        assert!(m.covers("DELETE", Some("/kms/v1/keys/{key_tag}")));
        assert!(m.covers("POST", Some("/kms/v1/keys/{key_tag}/acl")));
        assert!(!m.covers("GET", Some("/kms/v1/keys/{key_tag}")));
        assert!(!m.covers("POST", Some("/kms/v1/keys/{key_tag}/decrypt")));
        assert!(!m.covers("POST", Some("/keys/v1/{key_tag}/encrypt")));
        assert!(!m.covers("POST", Some("/keys/v2/{key_tag}/createCustomKey")));
        let a = ReplayGuard::new(ReplayMode::All, 300, 1);
        assert!(a.covers("POST", Some("/keys/v1/{key_tag}/encrypt")));
        assert!(a.covers("GET", Some("/kms/v1/keys")));
        let o = ReplayGuard::new(ReplayMode::Off, 300, 1);
        assert!(!o.covers("POST", Some("/kms/v1/keys")));
    }
}
