//! Counts of the store's keys for `/metrics` (see
//! [`crate::telemetry::keys`]).

use super::{Engine, Result};
use crate::telemetry::keys::KeyCounts;

impl Engine {
    /// Keys and versions by dialect and state, overdue rotations and due
    /// deletions, read from the store now.
    pub async fn key_stats(&self) -> Result<KeyCounts> {
        Ok(self.store().key_counts(super::now_ms()).await?)
    }
}
