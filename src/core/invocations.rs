//! AES-GCM invocation counts per key version: the uniqueness argument of
//! random 96-bit IVs, enforced.
//!
//! Every AES-GCM Encrypt takes a fresh 96-bit IV from a random bit
//! generator (the token's `C_GenerateRandom`, or with `hsm.gcm_iv_source =
//! "host"` the operating system's CSPRNG); SP 800-38D section 8.2.2 allows
//! this construction and section 8.3 bounds it: with one key, at most 2^32
//! invocations of the authenticated encryption function, which keeps the
//! probability that any IV repeats below 2^-32 (birthday bound: n^2 / 2^97
//! for n invocations, 2^-33 at n = 2^32). Convergent encryption derives the
//! IV from the plaintext and context (the same pair gives the same IV, so no
//! two different messages meet under one IV except by an HMAC collision); it
//! is counted under the same limit, conservatively.
//!
//! Counting: each key version (by `CKA_ID`, so NAVER, NHN and convergent
//! keys alike) has an in-memory count and a durable reservation in the
//! store (`gcm_invocations`). An invocation is allowed only below the
//! reservation; when the count reaches it, the next block
//! ([`RESERVATION_BLOCK`], capped at the limit) is written to the store
//! first. After a restart the count starts at the reservation: a crash
//! loses at most one block of unused invocations and never lets a count go
//! back. A block is reserved by one atomic increment of `reserved` in the
//! store (`Store::gcm_reserve_next`): several nodes on one store (or a
//! node restarted while another still counts) get disjoint blocks, never
//! the same invocations.
//!
//! Reservations are cheap at any key count: the first Encrypt of each key
//! version after a start reserves its first block without reading the
//! store first (the increment's result says where the block starts), and
//! reservations of different versions made at the same time share one
//! store transaction (group commit: one fsync for all of them, instead of
//! one each behind a single lock, which made random-key Encrypt after a
//! restart wait on the disk once per key). Reservations of one version stay
//! one at a time (a lock per shard of versions), so none is wasted.
//!
//! First blocks ahead of use: even group-committed, a first use that must
//! reserve waits for a store commit (an fsync) on the request path, and
//! after a restart with many keys nearly every request is some key's first
//! use. So `serve` reserves a small first block ([`FIRST_BLOCK`]) for the
//! current version of every AES key before it is ready, in one statement
//! that reads the versions from the store itself
//! ([`Store::gcm_reserve_first_blocks`]: one transaction, rows in ascending
//! `CKA_ID` order, [`FIRST_BLOCK_MAX`] at most), run beside the token
//! enumeration so that it adds nothing to the start-up's length (0.3 s of
//! SQLite for 100 000 versions, against the enumeration's 10 s; before,
//! 98 transactions in the background after the key preload took 7.5 s and
//! fought the first requests for the store's write lock). Each row is the
//! same atomic increment as any block. A version's first Encrypt then
//! finds a durable reservation and writes nothing; its later blocks are
//! reserved on use as before. The invariant is unchanged: an invocation is
//! used only below a count already committed to the store (the blocks are
//! taken in memory only after their transaction commits), a count only
//! grows, and two nodes (or a node and a request racing with
//! [`Engine::reserve_first_blocks`]) get disjoint blocks from the
//! increment. A request that reserved on its own first keeps its own
//! block; the first block of that version is then never used. The cost: at
//! most one first block per AES version per start is wasted (never used,
//! counted as used), so the 2^32 limit of a version is spent by restarts
//! alone only after 2^32 / 2^10 = 4 194 304 starts.
//!
//! At the limit (`hsm.gcm_invocation_limit`, default 2^32) Encrypt with that
//! version is refused ([`Error::InvalidState`], a 400 asking to rotate); a
//! rotation makes a new version with a new key and a fresh count. Decrypt is
//! never limited.

use std::collections::hash_map::DefaultHasher;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::{Engine, Error, Result};
use crate::store::Store;

/// Invocations reserved in the store at a time per key version.
pub const RESERVATION_BLOCK: u64 = 1 << 16;

/// Invocations reserved at start, ahead of use, per AES key version
/// ([`Engine::reserve_first_blocks`]); at most this many are wasted per
/// version per start.
pub const FIRST_BLOCK: u64 = 1 << 10;

/// The first block's size under an invocation limit of `limit`:
/// [`FIRST_BLOCK`], or less when the limit is lower.
pub fn first_block(limit: u64) -> u64 {
    FIRST_BLOCK.min(limit).max(1)
}

/// Key versions [`Engine::reserve_first_blocks`] reserves for at most per
/// start (as many as the key preload caches: the versions beyond reserve
/// on first use).
pub const FIRST_BLOCK_MAX: usize = super::KEY_PRELOAD_MAX;

/// Locks that keep reservations of one key version one at a time (versions
/// hash to a shard; versions in different shards reserve concurrently).
const RESERVING_SHARDS: usize = 64;

/// The counts of every key version used since the start.
pub(crate) struct GcmCounts {
    limit: u64,
    counts: Mutex<HashMap<Vec<u8>, Count>>,
    /// Serialises reservations of one version (rare: one per block per
    /// version), by shard.
    reserving: Vec<tokio::sync::Mutex<()>>,
    /// Reservations waiting for the next group commit.
    batch: Arc<Mutex<Batch>>,
}

#[derive(Clone, Copy)]
struct Count {
    used: u64,
    reserved: u64,
}

/// One waiting reservation: the version, its block, and where to send the
/// new reserved count (`None`: the batch failed, reserve alone).
type Waiting = (Vec<u8>, u64, oneshot::Sender<Option<u64>>);

#[derive(Default)]
struct Batch {
    waiting: Vec<Waiting>,
    /// A commit task is running; it takes what waits when it is done.
    committing: bool,
}

impl GcmCounts {
    pub(crate) fn new(limit: u64) -> Self {
        GcmCounts {
            limit: limit.max(1),
            counts: Mutex::new(HashMap::new()),
            reserving: (0..RESERVING_SHARDS)
                .map(|_| tokio::sync::Mutex::new(()))
                .collect(),
            batch: Arc::new(Mutex::new(Batch::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Vec<u8>, Count>> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one invocation below the reservation, if there is one, and
    /// returns its number.
    fn take_reserved(&self, cka_id: &[u8]) -> Option<u64> {
        let mut map = self.lock();
        let c = map.get_mut(cka_id)?;
        if c.used < c.reserved {
            c.used += 1;
            return Some(c.used - 1);
        }
        None
    }

    /// Records a first block that ends at `upto` (committed to the store)
    /// for a version that has no count yet; a version a request counted
    /// meanwhile keeps its own block and this one is never used. Returns
    /// whether the block was taken.
    fn adopt_first_block(&self, cka_id: &[u8], upto: u64, block: u64) -> bool {
        let mut map = self.lock();
        if map.contains_key(cka_id) {
            return false;
        }
        // Everything reserved before counts as used; at the limit the
        // version is refused on its first use without a store write.
        let reserved = upto.min(self.limit);
        let used = upto.saturating_sub(block).min(reserved);
        map.insert(cka_id.to_vec(), Count { used, reserved });
        true
    }

    fn shard(&self, cka_id: &[u8]) -> &tokio::sync::Mutex<()> {
        let mut h = DefaultHasher::new();
        cka_id.hash(&mut h);
        &self.reserving[(h.finish() as usize) % self.reserving.len()]
    }

    /// Reserves the next `block` invocations of `cka_id` (see
    /// [`Store::gcm_reserve_next`]) together with every other reservation
    /// asked for meanwhile: the first caller starts a commit task, which
    /// commits what waits in one transaction, then what arrived during that
    /// commit, until nothing waits. The task is spawned, so a caller that
    /// goes away (a closed connection) never strands the others. When a
    /// batch fails, each of its callers reserves alone, so every error is
    /// its own store's answer.
    async fn reserve(&self, store: &Store, cka_id: &[u8], block: u64) -> Result<u64> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut b = lock_batch(&self.batch);
            b.waiting.push((cka_id.to_vec(), block, tx));
            !std::mem::replace(&mut b.committing, true)
        };
        if start {
            let (batch, store) = (self.batch.clone(), store.clone());
            tokio::spawn(commit_batches(batch, store));
        }
        match rx.await {
            Ok(Some(upto)) => Ok(upto),
            // The batch failed (or its task died): alone, with its own error.
            Ok(None) | Err(_) => Ok(store.gcm_reserve_next(cka_id, block).await?),
        }
    }
}

fn lock_batch(b: &Mutex<Batch>) -> std::sync::MutexGuard<'_, Batch> {
    b.lock().unwrap_or_else(|p| p.into_inner())
}

/// Commits waiting reservations, a batch per transaction, until none waits.
async fn commit_batches(batch: Arc<Mutex<Batch>>, store: Store) {
    loop {
        let waiting = {
            let mut b = lock_batch(&batch);
            if b.waiting.is_empty() {
                b.committing = false;
                return;
            }
            std::mem::take(&mut b.waiting)
        };
        let blocks: Vec<(Vec<u8>, u64)> = waiting
            .iter()
            .map(|(id, block, _)| (id.clone(), *block))
            .collect();
        metrics::counter!("hsm_kms_gcm_reservation_commits_total").increment(1);
        metrics::counter!("hsm_kms_gcm_reservations_total").increment(blocks.len() as u64);
        match store.gcm_reserve_batch(&blocks).await {
            Ok(ends) => {
                for ((_, _, tx), end) in waiting.into_iter().zip(ends) {
                    let _ = tx.send(Some(end));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, reservations = blocks.len(), "a batch of GCM invocation reservations failed; each is retried alone");
                for (_, _, tx) in waiting {
                    let _ = tx.send(None);
                }
            }
        }
    }
}

impl Engine {
    /// Reserves a first block of [`FIRST_BLOCK`] invocations for the
    /// current version of every AES key in the store (see the module doc;
    /// [`FIRST_BLOCK_MAX`] at most) in one store transaction, and takes
    /// the blocks of the versions that have no count yet. Returns the
    /// number of versions given a block. `serve` makes the same two steps
    /// apart ([`Store::gcm_reserve_first_blocks`] beside the token
    /// enumeration, [`Engine::adopt_first_blocks`] once the engine exists).
    pub async fn reserve_first_blocks(&self) -> Result<usize> {
        let block = self.first_block();
        let ends = self
            .store()
            .gcm_reserve_first_blocks(block, FIRST_BLOCK_MAX)
            .await?;
        Ok(self.adopt_first_blocks(block, &ends))
    }

    /// The first block's size: [`FIRST_BLOCK`], within the configured
    /// limit ([`first_block`]).
    pub fn first_block(&self) -> u64 {
        first_block(self.inner.gcm.limit)
    }

    /// Takes first blocks of `block` invocations, each ending at the
    /// reserved count committed for its version ([`Store::gcm_reserve_first_blocks`]):
    /// a version already counted (a request reserved on its own meanwhile)
    /// keeps its own block, and this one is never used. Returns how many
    /// were taken.
    pub fn adopt_first_blocks(&self, block: u64, ends: &[(Vec<u8>, u64)]) -> usize {
        let counts = &self.inner.gcm;
        metrics::counter!("hsm_kms_gcm_first_block_commits_total").increment(1);
        metrics::counter!("hsm_kms_gcm_first_blocks_total").increment(ends.len() as u64);
        ends.iter()
            .filter(|(id, upto)| counts.adopt_first_block(id, *upto, block))
            .count()
    }

    /// Counts one AES-GCM invocation of the key object `cka_id` (version
    /// `version`, for the message), or refuses it at the limit. Returns the
    /// invocation's number: no two calls, on any node, get the same number
    /// for one version, and each is below the count in the store.
    pub(super) async fn count_gcm_invocation(&self, cka_id: &[u8], version: i64) -> Result<u64> {
        let counts = &self.inner.gcm;
        if let Some(n) = counts.take_reserved(cka_id) {
            return Ok(n);
        }
        let _one = counts.shard(cka_id).lock().await;
        // Another caller may have reserved while this one waited.
        if let Some(n) = counts.take_reserved(cka_id) {
            return Ok(n);
        }
        let known = counts.lock().get(cka_id).copied();
        if let Some(c) = known {
            if c.used >= counts.limit {
                metrics::counter!("hsm_kms_gcm_invocation_limit_refusals_total").increment(1);
                return Err(Error::InvalidState(format!(
                    "key version {version} reached its AES-GCM invocation limit ({}); rotate the key",
                    counts.limit
                )));
            }
        }
        // The next block, whatever another node reserved meanwhile: the
        // increment is atomic, the block is ours alone. On the first use
        // since the start the store is not read first: the block starts
        // where every earlier reservation ended (all of them count as used).
        let used = known.map_or(0, |c| c.used);
        let block = RESERVATION_BLOCK.min(counts.limit - used).max(1);
        let upto = counts.reserve(self.store(), cka_id, block).await?;
        let from = upto.saturating_sub(block);
        let reserved = upto.min(counts.limit);
        if from >= reserved {
            // Others took the invocations up to the limit meanwhile.
            counts.lock().insert(
                cka_id.to_vec(),
                Count {
                    used: from,
                    reserved: from,
                },
            );
            metrics::counter!("hsm_kms_gcm_invocation_limit_refusals_total").increment(1);
            return Err(Error::InvalidState(format!(
                "key version {version} reached its AES-GCM invocation limit ({}); rotate the key",
                counts.limit
            )));
        }
        counts.lock().insert(
            cka_id.to_vec(),
            Count {
                used: from + 1,
                reserved,
            },
        );
        Ok(from)
    }

    /// [`Engine::count_gcm_invocation`] for tests: takes one invocation of
    /// the key object `cka_id` and returns its number.
    #[cfg(feature = "test-hooks")]
    pub async fn take_gcm_invocation(&self, cka_id: &[u8]) -> Result<u64> {
        self.count_gcm_invocation(cka_id, 0).await
    }
}
