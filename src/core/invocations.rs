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
//! At the limit (`hsm.gcm_invocation_limit`, default 2^32) Encrypt with that
//! version is refused ([`Error::InvalidState`], a 400 asking to rotate); a
//! rotation makes a new version with a new key and a fresh count. Decrypt is
//! never limited.

use std::collections::HashMap;
use std::sync::Mutex;

use super::{Engine, Error, Result};

/// Invocations reserved in the store at a time per key version.
pub const RESERVATION_BLOCK: u64 = 1 << 16;

/// The counts of every key version used since the start.
pub(crate) struct GcmCounts {
    limit: u64,
    counts: Mutex<HashMap<Vec<u8>, Count>>,
    /// Serialises reservations (rare: one per block per version).
    reserving: tokio::sync::Mutex<()>,
}

#[derive(Clone, Copy)]
struct Count {
    used: u64,
    reserved: u64,
}

impl GcmCounts {
    pub(crate) fn new(limit: u64) -> Self {
        GcmCounts {
            limit: limit.max(1),
            counts: Mutex::new(HashMap::new()),
            reserving: tokio::sync::Mutex::new(()),
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
}

impl Engine {
    /// Counts one AES-GCM invocation of the key object `cka_id` (version
    /// `version`, for the message), or refuses it at the limit.
    pub(super) async fn count_gcm_invocation(&self, cka_id: &[u8], version: i64) -> Result<()> {
        let counts = &self.inner.gcm;
        if counts.take_reserved(cka_id).is_some() {
            return Ok(());
        }
        let _one = counts.reserving.lock().await;
        // Another caller may have reserved while this one waited.
        if counts.take_reserved(cka_id).is_some() {
            return Ok(());
        }
        let known = counts.lock().get(cka_id).copied();
        let c = match known {
            Some(c) => c,
            None => {
                // First use since the start: every invocation reserved before
                // counts as used.
                let r = self.store().gcm_reserved(cka_id).await?;
                Count {
                    used: r,
                    reserved: r,
                }
            }
        };
        if c.used >= counts.limit {
            counts.lock().insert(cka_id.to_vec(), c);
            metrics::counter!("hsm_kms_gcm_invocation_limit_refusals_total").increment(1);
            return Err(Error::InvalidState(format!(
                "key version {version} reached its AES-GCM invocation limit ({}); rotate the key",
                counts.limit
            )));
        }
        // The next block, whatever another node reserved since `c` was
        // read: the increment is atomic, the block is ours alone.
        let block = RESERVATION_BLOCK.min(counts.limit - c.used).max(1);
        let upto = self.store().gcm_reserve_next(cka_id, block).await?;
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
