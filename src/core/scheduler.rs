//! Scheduled work: automatic rotation when due and destruction of keys whose
//! deletion waiting period is over.

use crate::store::KeyRepo;
use std::time::Duration;

use super::accounts::now;
use super::Engine;

impl Engine {
    /// One pass of the scheduler. Returns (rotated, destroyed).
    pub async fn run_due_work(&self) -> super::Result<(usize, usize)> {
        self.check_store().await?;
        if self.retry_abandoned().await > 0 {
            tracing::warn!("versions whose activation failed still wait for their rollback");
        }
        let t = now();
        let mut rotated = 0;
        for key_id in self.store().keys_due_for_rotation(t).await? {
            let Some((key, versions)) = self.store().key_by_id(key_id).await? else {
                continue;
            };
            let entry = super::KeyEntry { key, versions };
            match self.rotate_entry(&entry).await {
                Ok(after) => {
                    rotated += 1;
                    let v = after.current().map(|v| v.version);
                    self.record_system(&entry.key, v, "RotateKey").await;
                }
                Err(e) => {
                    tracing::warn!(key = %entry.key.uid, error = %e, "automatic rotation failed")
                }
            }
        }
        let mut destroyed = 0;
        for key_id in self.store().keys_due_for_deletion(t).await? {
            let Some((key, _)) = self.store().key_by_id(key_id).await? else {
                continue;
            };
            match self.destroy_key(key_id, &key.uid).await {
                Ok(()) => {
                    destroyed += 1;
                    self.record_system(&key, None, "DeleteKey").await;
                }
                Err(e) => {
                    tracing::warn!(key = %key.uid, error = %e, "scheduled destruction failed")
                }
            }
        }
        rotated += self.nhn_run_due_work(t).await?;
        // Access keys revoked by the admin CLI (another process) apply from
        // the next pass on; the secrets are decrypted again on first use.
        self.forget_cached_secrets();
        Ok((rotated, destroyed))
    }
}

impl Engine {
    /// Records work the service did on its own (requestor type `SYSTEM`).
    async fn record_system(&self, key: &crate::store::KeyRow, version: Option<i64>, action: &str) {
        let row = super::ActivityRecord {
            id: 0,
            at: now(),
            account_id: key.account_id,
            key_uid: key.uid.clone(),
            key_name: key.name.clone(),
            key_id: key.id,
            version,
            action: action.to_string(),
            auth_type: "SYSTEM".into(),
            caller: "scheduler".into(),
            source_ip: String::new(),
            result: "SUCCESS".into(),
            status: 200,
            message: String::new(),
        };
        if let Err(e) = self.record_activity(row).await {
            tracing::warn!(error = %e, "cannot record scheduled work");
        }
    }
}

/// Runs [`Engine::run_due_work`] every `interval` until the runtime stops.
pub fn spawn_scheduler(engine: Engine, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match engine.run_due_work().await {
                Ok((0, 0)) => {}
                Ok((r, d)) => tracing::info!(rotated = r, destroyed = d, "scheduler pass"),
                Err(e) => tracing::warn!(error = %e, "scheduler pass failed"),
            }
        }
    })
}
