//! The start-up reconciler: finishes or undoes what a crash interrupted, in
//! both directions between the store and the token.
//!
//! - a `pending` version never reached a client: its objects (if any) are
//!   destroyed and its row removed;
//! - a `destroying` version is destroyed and marked `destroyed`;
//! - an `hsm-kms/` object that no row names is an orphan and is destroyed;
//! - an `active` version whose object is missing is reported (it cannot be
//!   repaired; the operator must restore the token from backup).

use std::collections::HashSet;

use super::{Engine, Result};
use crate::hsm::Hsm;
use crate::store::{Store, VersionState};

/// What a reconciler run did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileReport {
    /// Pending versions rolled back.
    pub pending_rolled_back: usize,
    /// Destroying versions finished.
    pub destroyed_finished: usize,
    /// Orphan objects destroyed.
    pub orphans_destroyed: usize,
    /// Active versions whose object is missing from the token.
    pub missing_objects: usize,
}

/// Runs the reconciler on a token and store (before the engine serves).
pub async fn reconcile(hsm: &Hsm, store: &Store) -> Result<ReconcileReport> {
    let mut report = ReconcileReport::default();

    for v in store.versions_in_state(VersionState::Pending).await? {
        hsm.destroy_id(v.cka_id.clone()).await?;
        if let Some(aux) = &v.aux_cka_id {
            hsm.destroy_id(aux.clone()).await?;
        }
        store.delete_pending_version(v.key_id, v.version).await?;
        tracing::warn!(
            key_id = v.key_id,
            version = v.version,
            "rolled back a version interrupted during creation"
        );
        report.pending_rolled_back += 1;
    }

    for v in store.versions_in_state(VersionState::Destroying).await? {
        hsm.destroy_id(v.cka_id.clone()).await?;
        if let Some(aux) = &v.aux_cka_id {
            hsm.destroy_id(aux.clone()).await?;
        }
        store
            .set_version_state(v.key_id, v.version, VersionState::Destroyed)
            .await?;
        report.destroyed_finished += 1;
    }

    let known: HashSet<Vec<u8>> = store.known_object_ids().await?.into_iter().collect();
    let objects = hsm.list_service_objects().await?;
    let present: HashSet<Vec<u8>> = objects.iter().map(|o| o.id.clone()).collect();
    let mut seen_orphans = HashSet::new();
    for o in &objects {
        if !known.contains(&o.id) && seen_orphans.insert(o.id.clone()) {
            tracing::warn!(label = %o.label, "destroying an orphan object that no key version names");
            hsm.destroy_id(o.id.clone()).await?;
            report.orphans_destroyed += 1;
        }
    }

    for v in store.versions_in_state(VersionState::Active).await? {
        if !present.contains(&v.cka_id) {
            tracing::error!(
                key_id = v.key_id,
                version = v.version,
                "an active key version has no object on the token"
            );
            report.missing_objects += 1;
        }
    }
    Ok(report)
}

impl Engine {
    /// Runs the reconciler on the engine's token and store.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let r = reconcile(self.hsm(), self.store()).await?;
        self.inner.keys.clear();
        Ok(r)
    }
}
