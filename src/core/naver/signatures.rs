//! The store's half of the NAVER replay guard (`api::naver::replay`): a
//! record of each NCP signature accepted on a guarded call, shared by every
//! node of one store, so that a request replayed to another node is refused
//! there too.

use crate::core::{Engine, Result};
use crate::store::NaverRepo;

impl Engine {
    /// Records one use of the signature whose guard digest is `digest`,
    /// valid until `expires_at` (ms): `true` when no node used it before
    /// (or its record expired by `now`), `false` when one did. A store that
    /// cannot answer is an error (503): the call is refused rather than
    /// admitted unchecked.
    pub async fn claim_signature(&self, digest: &[u8], expires_at: i64, now: i64) -> Result<bool> {
        Ok(self
            .store()
            .claim_signature(digest, expires_at, now)
            .await?)
    }

    /// Deletes the signature records expired by `now` (each scheduler
    /// pass). Returns how many.
    pub(crate) async fn prune_signatures(&self, now: i64) -> Result<u64> {
        Ok(self.store().prune_signatures(now).await?)
    }
}
