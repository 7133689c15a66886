//! Scheduled work: automatic rotation when due and destruction of keys whose
//! deletion waiting period is over.

use crate::store::KeyRepo;
use crate::telemetry::store as telemetry;
use std::time::Duration;

use super::accounts::now;
use super::{Dialect, Engine};

/// How long a claimed automatic rotation waits before any node may try it
/// again when the claiming node died before rotating.
pub(crate) const ROTATION_RETRY_MS: i64 = 10 * 60 * 1000;

/// How long after a failed automatic rotation (a token or store error on
/// this node, which stays up) any node may try it again: the claim is
/// given back at once, due this much later, so a transient fault (a token
/// out of memory for a moment, a store busy) delays the rotation by a pass
/// or two, not by [`ROTATION_RETRY_MS`]. A permanent one is logged at WARN
/// on every such retry.
pub(crate) const ROTATION_FAILED_RETRY_MS: i64 = 10 * 1000;

/// How many entries of the change log are kept (see `core::changes`).
const CHANGES_KEPT: i64 = 100_000;

impl Engine {
    /// One pass of the scheduler. Returns (rotated, destroyed).
    ///
    /// Every node runs it; each due item is claimed in the store first
    /// (a rotation by moving its due time, a deletion by leaving `REVOKE`),
    /// so that exactly one node does each, whatever the passes' timing.
    pub async fn run_due_work(&self) -> super::Result<(usize, usize)> {
        self.check_store().await?;
        if self.retry_abandoned().await > 0 {
            tracing::warn!("versions whose activation failed still wait for their rollback");
        }
        if let Err(e) = self.repair_interrupted().await {
            tracing::warn!(error = %e, "cannot repair versions left half-done by a node that is gone");
        }
        let t = now();
        let due_rotation = self.store().keys_due_for_rotation(t).await?;
        let due_deletion = self.store().keys_due_for_deletion(t).await?;
        if !due_rotation.is_empty() || !due_deletion.is_empty() {
            super::fault_point("scheduler:due");
        }
        let mut rotated = 0;
        for key_id in due_rotation {
            let claimed_until = t + ROTATION_RETRY_MS;
            if !self
                .store()
                .claim_rotation(key_id.get(), t, claimed_until)
                .await?
            {
                continue;
            }
            let Some((key, versions)) = self.store().key_by_id(key_id).await? else {
                continue;
            };
            self.invalidate(&key.uid);
            // One schedule, each dialect's rotation.
            let (done, action) = match key.dialect {
                Dialect::Naver => {
                    let entry = super::KeyEntry {
                        key: key.clone(),
                        versions,
                    };
                    let after = self.rotate_entry(&entry).await;
                    (after.map(|a| a.current().map(|v| v.version)), "RotateKey")
                }
                Dialect::Nhn => (
                    self.nhn_rotate_scheduled(&key).await.map(Some),
                    "NhnRotateKey",
                ),
            };
            match done {
                Ok(v) => {
                    rotated += 1;
                    self.record_system(&key, v, action).await;
                }
                Err(e) => {
                    let retry_at = now() + ROTATION_FAILED_RETRY_MS;
                    let released = self
                        .store()
                        .release_rotation_claim(key_id.get(), claimed_until, retry_at)
                        .await;
                    tracing::warn!(
                        key = %key.uid,
                        error = %e,
                        retry_in_ms = if matches!(released, Ok(true)) {
                            ROTATION_FAILED_RETRY_MS
                        } else {
                            ROTATION_RETRY_MS
                        },
                        "automatic rotation failed"
                    );
                    self.invalidate(&key.uid);
                }
            }
        }
        let mut destroyed = 0;
        for key_id in due_deletion {
            let Some((key, _)) = self.store().key_by_id(key_id).await? else {
                continue;
            };
            match self.destroy_key(key_id, &key.uid).await {
                Ok(true) => {
                    destroyed += 1;
                    self.record_system(&key, None, "DeleteKey").await;
                }
                // Another node claimed it first.
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(key = %key.uid, error = %e, "scheduled destruction failed")
                }
            }
        }
        self.nhn_run_due_work(t).await?;
        // Access keys revoked by the admin CLI (another process) apply from
        // the next pass on; the secrets are decrypted again on first use.
        self.forget_cached_secrets();
        if let Err(e) = self.store().prune_changes(CHANGES_KEPT).await {
            tracing::warn!(error = %e, "cannot prune the change log");
        }
        if let Err(e) = self.prune_signatures(now()).await {
            tracing::warn!(error = %e, "cannot prune the replay guard's signatures");
        }
        Ok((rotated, destroyed))
    }
}

impl Engine {
    /// Records work the service did on a key on its own (requestor type
    /// `SYSTEM`, caller `scheduler`).
    pub(super) async fn record_system(&self, key: &super::Key, version: Option<i64>, action: &str) {
        self.record_scheduled(super::ActivityRecord {
            id: 0,
            at: now(),
            account_id: key.account_id,
            key_uid: key.uid.to_string(),
            key_name: key.name.clone(),
            key_id: key.id.get(),
            version,
            action: action.to_string(),
            auth_type: "SYSTEM".into(),
            caller: "scheduler".into(),
            source_ip: String::new(),
            result: "SUCCESS".into(),
            status: 200,
            message: String::new(),
        })
        .await
    }

    /// Records scheduled work on something other than a key: `message`
    /// names it.
    pub(super) async fn record_system_event(&self, account_id: i64, action: &str, message: String) {
        self.record_scheduled(super::ActivityRecord {
            id: 0,
            at: now(),
            account_id,
            key_uid: String::new(),
            key_name: String::new(),
            key_id: 0,
            version: None,
            action: action.to_string(),
            auth_type: "SYSTEM".into(),
            caller: "scheduler".into(),
            source_ip: String::new(),
            result: "SUCCESS".into(),
            status: 200,
            message,
        })
        .await
    }

    /// The work is done whether or not its record could be written (the
    /// next pass would not redo it): a failure is logged.
    async fn record_scheduled(&self, row: super::ActivityRecord) {
        if let Err(e) = self.record_activity(row).await {
            telemetry::activity_dropped();
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
            let res = engine.run_due_work().await;
            telemetry::scheduler_pass(telemetry::Scheduler::KeyLifecycle, res.is_ok());
            match res {
                Ok((0, 0)) => {}
                Ok((r, d)) => {
                    telemetry::scheduler_items(r, d);
                    tracing::info!(rotated = r, destroyed = d, "scheduler pass")
                }
                Err(e) => tracing::warn!(error = %e, "scheduler pass failed"),
            }
        }
    })
}
