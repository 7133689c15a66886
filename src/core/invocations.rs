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

    /// Takes one invocation below the reservation, if there is one.
    fn take_reserved(&self, cka_id: &[u8]) -> Option<()> {
        let mut map = self.lock();
        let c = map.get_mut(cka_id)?;
        if c.used < c.reserved {
            c.used += 1;
            return Some(());
        }
        None
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
    /// Counts one AES-GCM invocation of the key object `cka_id` (version
    /// `version`, for the message), or refuses it at the limit.
    pub(super) async fn count_gcm_invocation(&self, cka_id: &[u8], version: i64) -> Result<()> {
        let counts = &self.inner.gcm;
        if counts.take_reserved(cka_id).is_some() {
            return Ok(());
        }
        let _one = counts.shard(cka_id).lock().await;
        // Another caller may have reserved while this one waited.
        if counts.take_reserved(cka_id).is_some() {
            return Ok(());
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
        Ok(())
    }
}
