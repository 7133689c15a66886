//! Durable counts of AES-GCM invocations per key version (by `CKA_ID`).

use super::{Result, Store};

impl Store {
    /// Invocations reserved so far for the key object `cka_id` (0 if none).
    pub async fn gcm_reserved(&self, cka_id: &[u8]) -> Result<u64> {
        let v: Option<i64> =
            sqlx::query_scalar("SELECT reserved FROM gcm_invocations WHERE cka_id = ?")
                .bind(cka_id)
                .fetch_optional(self.pool())
                .await?;
        Ok(v.unwrap_or(0).max(0) as u64)
    }

    /// Records that invocations up to `upto` are reserved for `cka_id`;
    /// the count never goes down.
    pub async fn gcm_reserve(&self, cka_id: &[u8], upto: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO gcm_invocations (cka_id, reserved) VALUES (?, ?) \
             ON CONFLICT (cka_id) DO UPDATE SET reserved = MAX(reserved, excluded.reserved)",
        )
        .bind(cka_id)
        .bind(upto.min(i64::MAX as u64) as i64)
        .execute(self.pool())
        .await?;
        Ok(())
    }
}
