//! The handle map: `(CKA_ID, CKO_*)` to object handle for every object of
//! the service, so that no request searches the token.
//!
//! A token search (`C_FindObjects`) costs a walk over every object of the
//! token on SoftHSMv2 (120 ms per search with 5,000 keys), so the map is
//! filled without one per key:
//!
//! - **at start-up**, from the one enumeration of the token that the
//!   reconciler makes anyway ([`super::SessionRef::list_service_objects`]);
//! - **at creation**: a generated key, pair or data object enters the map
//!   with the handles the token returned;
//! - **at destruction** its entries leave it;
//! - **after a fault that invalidates every handle** (a session fault, a
//!   lost login, a re-initialised module; see [`super::recovery`]) the map
//!   is emptied and marked incomplete; the next look-up enumerates the
//!   token once and refills it, while other requests wait for that one
//!   enumeration instead of each searching;
//! - **a stale handle** (`CKR_OBJECT_HANDLE_INVALID`: another client
//!   deleted or re-created the object) is dropped, and the operation's
//!   retry looks that one object up by `CKA_ID`, counted in
//!   `hsm_kms_handle_refreshes_total{reason="stale"}`. An id the complete
//!   map does not know (an object another node made) is looked up the same
//!   way (`reason="unknown"`); an id the token does not hold either gives
//!   [`super::HsmError::ObjectNotFound`].
//!
//! Handles are only valid in the module generation and login that made
//! them: after a re-initialisation the token may hand the same numbers to
//! other objects. Every change of that kind bumps the map's epoch, and a
//! handle learnt under an older epoch is never stored.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use cryptoki::object::ObjectHandle;

/// `(CKA_ID or, for data objects, the label; CKO_*)`.
pub(super) type HandleKey = (Vec<u8>, u64);

/// Why a single object was looked up on the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refresh {
    /// Its cached handle was refused as invalid.
    Stale,
    /// The complete map does not know the id.
    Unknown,
}

/// How many `C_FindObjects` searches the port made, by purpose (also in
/// `hsm_kms_find_objects_total{kind}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FindCalls {
    /// Enumerations of the whole token (start-up, reports, map rebuilds).
    pub enumerations: u64,
    /// Searches for one object: handle refreshes, destruction, the
    /// installation id, attribute reports.
    pub lookups: u64,
}

struct State<H> {
    map: HashMap<HandleKey, H>,
    /// Filled by an enumeration in the current epoch: a miss means the
    /// object is not on the token (or another process made it since).
    complete: bool,
    /// Entries dropped as stale and not looked up again yet.
    stale: HashSet<HandleKey>,
    epoch: u64,
    /// Heap bytes of the ids in `map`, kept as entries come and go, so
    /// that publishing the map's size does not walk it (at 100 000
    /// objects a walk per created key held the write lock that every
    /// token call's look-up waits on).
    id_bytes: usize,
}

impl<H> State<H> {
    /// Stores `h` under `k`, counting the id's bytes if it is new.
    fn put(&mut self, k: HandleKey, h: H) {
        self.stale.remove(&k);
        match self.map.entry(k) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                e.insert(h);
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                self.id_bytes += e.key().0.capacity();
                e.insert(h);
            }
        }
    }
}

impl<H> Default for State<H> {
    fn default() -> Self {
        State {
            map: HashMap::new(),
            complete: false,
            stale: HashSet::new(),
            epoch: 0,
            id_bytes: 0,
        }
    }
}

/// The map, its epoch and the counters of token searches. `H` is the
/// handle type (generic only so that unit tests need no token).
pub(super) struct HandleMap<H = ObjectHandle> {
    state: RwLock<State<H>>,
    /// Held by the one thread that refills an incomplete map.
    rebuild: Mutex<()>,
    enumerations: AtomicU64,
    lookups: AtomicU64,
}

impl<H> Default for HandleMap<H> {
    fn default() -> Self {
        HandleMap {
            state: RwLock::new(State::default()),
            rebuild: Mutex::new(()),
            enumerations: AtomicU64::new(0),
            lookups: AtomicU64::new(0),
        }
    }
}

impl<H: Copy> HandleMap<H> {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, State<H>> {
        self.state.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State<H>> {
        self.state.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The current epoch: handles learnt from now on are stored only while
    /// it lasts.
    pub(super) fn epoch(&self) -> u64 {
        self.read().epoch
    }

    /// Whether an enumeration filled the map in the current epoch.
    pub(super) fn is_complete(&self) -> bool {
        self.read().complete
    }

    /// The cached handle, and whether the map is complete.
    pub(super) fn get(&self, key: &HandleKey) -> (Option<H>, bool) {
        let s = self.read();
        (s.map.get(key).copied(), s.complete)
    }

    /// Stores handles learnt in `epoch` (creation, a single look-up).
    pub(super) fn insert(&self, epoch: u64, entries: impl IntoIterator<Item = (HandleKey, H)>) {
        let mut s = self.write();
        if s.epoch != epoch {
            return;
        }
        for (k, h) in entries {
            s.put(k, h);
        }
        publish(&s);
    }

    /// Installs the result of an enumeration made in `epoch`: every
    /// service object with its handle. Returns false (and changes nothing)
    /// when the epoch ended meanwhile.
    pub(super) fn install(&self, epoch: u64, entries: Vec<(HandleKey, H)>) -> bool {
        let mut s = self.write();
        if s.epoch != epoch {
            return false;
        }
        // Objects made during the enumeration are in `s.map` already and
        // stay; everything the enumeration saw replaces what was cached.
        for (k, h) in entries {
            s.put(k, h);
        }
        s.complete = true;
        publish(&s);
        true
    }

    /// Drops every entry of an object id (after destroying it).
    pub(super) fn forget_id(&self, id: &[u8]) {
        let mut s = self.write();
        let mut freed = 0;
        s.map.retain(|(k, _), _| {
            let keep = k.as_slice() != id;
            if !keep {
                freed += k.capacity();
            }
            keep
        });
        s.id_bytes -= freed;
        s.stale.retain(|(k, _)| k.as_slice() != id);
        publish(&s);
    }

    /// Drops entries a call found invalid; the retry looks each up again.
    pub(super) fn forget_stale(&self, keys: &[HandleKey]) {
        let mut s = self.write();
        for k in keys {
            if let Some(((id, _), _)) = s.map.remove_entry(k) {
                s.id_bytes -= id.capacity();
                s.stale.insert(k.clone());
            }
        }
        publish(&s);
    }

    /// Every handle may have changed (session fault, lost login, new
    /// module generation): empties the map, ends the epoch, and leaves the
    /// refill to the next look-up.
    pub(super) fn invalidate(&self) {
        let mut s = self.write();
        s.map.clear();
        s.id_bytes = 0;
        s.stale.clear();
        s.complete = false;
        s.epoch += 1;
        publish(&s);
    }

    /// Why a single look-up of `key` happens: its handle went stale, or
    /// the map never knew it.
    pub(super) fn refresh_reason(&self, key: &HandleKey) -> Refresh {
        if self.read().stale.contains(key) {
            Refresh::Stale
        } else {
            Refresh::Unknown
        }
    }

    /// The lock held while one thread refills an incomplete map.
    pub(super) fn rebuild_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.rebuild.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a `C_FindObjects` search.
    pub(super) fn count_find(&self, enumeration: bool) {
        let (counter, kind) = if enumeration {
            (&self.enumerations, "enumerate")
        } else {
            (&self.lookups, "lookup")
        };
        counter.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("hsm_kms_find_objects_total", "kind" => kind).increment(1);
    }

    /// The searches counted so far.
    pub(super) fn find_calls(&self) -> FindCalls {
        FindCalls {
            enumerations: self.enumerations.load(Ordering::Relaxed),
            lookups: self.lookups.load(Ordering::Relaxed),
        }
    }

    /// Number of entries.
    pub(super) fn len(&self) -> usize {
        self.read().map.len()
    }

    /// Bytes the map holds: its table (one key, handle and control byte
    /// per bucket) plus each id's heap buffer.
    pub(super) fn bytes(&self) -> usize {
        bytes_of(&*self.read())
    }
}

/// The map's bytes: its table (one key, handle and control byte per
/// bucket) plus the ids' heap buffers, in constant time.
fn bytes_of<H>(s: &State<H>) -> usize {
    let bucket = std::mem::size_of::<(HandleKey, H)>() + 1;
    s.map.capacity() * bucket + s.id_bytes
}

/// Publishes the map's size (`hsm_kms_handle_map_entries`,
/// `hsm_kms_handle_map_bytes`).
fn publish<H>(s: &State<H>) {
    metrics::gauge!("hsm_kms_handle_map_entries").set(s.map.len() as f64);
    metrics::gauge!("hsm_kms_handle_map_bytes").set(bytes_of(s) as f64);
}

/// Counts a single-object look-up in `hsm_kms_handle_refreshes_total`.
pub(super) fn count_refresh(reason: Refresh) {
    let reason = match reason {
        Refresh::Stale => "stale",
        Refresh::Unknown => "unknown",
    };
    metrics::counter!("hsm_kms_handle_refreshes_total", "reason" => reason).increment(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(n: u64) -> u64 {
        n
    }

    fn key(id: u8) -> HandleKey {
        (vec![id; 16], 4)
    }

    /// The id bytes kept as entries come and go equal a walk of the map.
    #[test]
    fn the_kept_byte_count_matches_a_walk_of_the_map() {
        fn walked(m: &HandleMap<u64>) -> usize {
            let s = m.read();
            let bucket = std::mem::size_of::<(HandleKey, u64)>() + 1;
            s.map.capacity() * bucket + s.map.keys().map(|(id, _)| id.capacity()).sum::<usize>()
        }
        let m: HandleMap<u64> = HandleMap::default();
        let e = m.epoch();
        m.insert(e, (0..50u8).map(|i| (key(i), h(u64::from(i)))));
        assert_eq!(m.bytes(), walked(&m));
        // Replacing a handle keeps the stored id.
        m.insert(e, [(key(3), h(300)), ((vec![3; 16], 2), h(301))]);
        assert_eq!(m.bytes(), walked(&m));
        m.forget_stale(&[key(4), key(5), key(200)]);
        assert_eq!(m.bytes(), walked(&m));
        m.forget_id(&[3; 16]);
        assert_eq!(m.len(), 47);
        assert_eq!(m.bytes(), walked(&m));
        assert!(m.install(e, (0..60u8).map(|i| (key(i), h(1))).collect()));
        assert_eq!(m.bytes(), walked(&m));
        m.invalidate();
        assert_eq!((m.len(), m.bytes()), (0, walked(&m)));
    }

    #[test]
    fn a_handle_from_an_ended_epoch_is_not_kept() {
        let m: HandleMap<u64> = HandleMap::default();
        let old = m.epoch();
        m.invalidate(); // the module was re-initialised meanwhile
        m.insert(old, [(key(1), h(7))]);
        assert_eq!(m.get(&key(1)), (None, false));
        assert!(!m.install(old, vec![(key(1), h(7))]));
        let now = m.epoch();
        assert!(m.install(now, vec![(key(1), h(8))]));
        assert_eq!(m.get(&key(1)), (Some(h(8)), true));
    }

    #[test]
    fn stale_entries_are_told_from_unknown_ones() {
        let m: HandleMap<u64> = HandleMap::default();
        let e = m.epoch();
        m.install(e, vec![(key(1), h(1)), (key(2), h(2))]);
        m.forget_stale(&[key(1)]);
        assert_eq!(m.refresh_reason(&key(1)), Refresh::Stale);
        assert_eq!(m.refresh_reason(&key(3)), Refresh::Unknown);
        m.insert(e, [(key(1), h(9))]);
        assert_eq!(m.refresh_reason(&key(1)), Refresh::Unknown);
        m.forget_id(&key(2).0);
        assert_eq!(m.len(), 1);
        assert!(m.bytes() > 0);
    }
}
