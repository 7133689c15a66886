//! The start-up reconciler: checks that the token and the store belong to
//! one installation, then finishes or undoes what a crash interrupted, and
//! only that.
//!
//! An object that no store row names is never destroyed at start: an empty,
//! wrong or restored store looks exactly like a store whose keys were never
//! made, and destroying on that evidence loses every key (issue 8, item 1).
//! So:
//!
//! - **binding**: `init` writes a random installation id in the store (table
//!   `installation`) and on the token (a private, non-modifiable `CKO_DATA`
//!   object labelled [`crate::hsm::INSTALLATION_LABEL`]). At every start both must agree;
//!   otherwise the service refuses to start, names both ids and destroys
//!   nothing. Installations made before ids existed are adopted only when the
//!   token holds every object the store names and nothing the store does not
//!   know.
//! - **repair by proof**: a `pending` version (the store wrote `pending`
//!   before making its objects; no client ever saw it) is rolled back; a
//!   `destroying` version (the store recorded the decision to destroy) is
//!   finished.
//! - **report the rest**: an `hsm-kms/` object that no row names is logged
//!   and counted, never destroyed; `hsm-kms admin reconcile` lists them and
//!   `--destroy-orphans --yes` destroys them on an operator's word.
//! - **refuse on loss**: an active version, service key or NHN project CA
//!   whose object is missing stops the start, naming what is missing.

use crate::store::{InstallationRepo, KeyRepo, NhnRepo};
use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use super::VersionState;
use super::{Engine, Error, Result};
use crate::hsm::{Hsm, TokenObject};
use crate::store::Store;

/// What a reconciler run found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReconcileReport {
    /// The installation id shared by the token and the store.
    pub installation_id: String,
    /// How the binding was reached: `checked` (both agreed), `created` (a
    /// fresh `init`), `completed` (an interrupted `init` or adoption written
    /// on the token), `adopted` (an installation made before ids existed).
    pub binding: &'static str,
    /// Pending versions rolled back.
    pub pending_rolled_back: usize,
    /// Destroying versions finished.
    pub destroyed_finished: usize,
    /// Pending or destroying versions left alone because the node working
    /// on them is alive (another node's operation in flight).
    pub left_to_live_nodes: usize,
    /// `hsm-kms/` objects that no row names: reported, left in place.
    pub unknown_objects: usize,
    /// Active versions, service keys or CA keys whose object is missing
    /// (always 0 in a report: a start with missing objects is refused).
    pub missing_objects: usize,
    /// Milliseconds spent enumerating the token (all inventories of the run).
    pub enumeration_ms: u64,
    /// Milliseconds spent reading the store's object ids (all inventories;
    /// the store's installation id included; the token's comes with the
    /// enumeration).
    pub store_scan_ms: u64,
}

/// Whether the caller may create a new binding (`init`) or only check one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StartMode {
    /// `hsm-kms init`: a fresh token and store get a new installation id.
    Init,
    /// `hsm-kms serve` (and in-process starts): an unbound pair is refused.
    Serve,
}

/// The token's objects and the store's names for them, taken together.
#[derive(Debug, Clone)]
pub struct Inventory {
    /// Installation id recorded in the store.
    pub store_id: Option<String>,
    /// Installation id recorded on the token.
    pub token_id: Option<String>,
    /// Every `hsm-kms/` object on the token except the installation object.
    pub objects: Vec<TokenObject>,
    /// Every object id the store names (versions not destroyed, service
    /// keys, NHN project CAs).
    pub known: HashSet<Vec<u8>>,
    /// What the store names as live but the token lacks, described for an
    /// operator (`key {uid} v{n}`, `service key kek`, ...).
    pub missing: Vec<String>,
    /// Time spent enumerating the token (one `C_FindObjects` and one
    /// `C_GetAttributeValue` per object, plus one for each installation
    /// object).
    pub enumeration: Duration,
    /// Time spent reading the store's object ids.
    pub store_scan: Duration,
}

impl Inventory {
    /// Reads the token and the store. Changes nothing.
    ///
    /// Other nodes may create and destroy objects while the token is
    /// listed, so the store is read on both sides of the listing: an object
    /// is missing only if the store named it as live before the listing
    /// (its object was made before its row went live) and still does after
    /// it (its object is destroyed only after its row left `active`); an
    /// object is known if a row named it before or after.
    pub async fn take(hsm: &Hsm, store: &Store) -> Result<Self> {
        let t0 = Instant::now();
        let store_id = store.installation_id().await?;
        let service_keys = store.service_keys().await?;
        let ca_ids = store.nhn_ca_key_ids().await?;
        let active_before = store.active_version_ids().await?;
        let mut known: HashSet<Vec<u8>> = store.known_object_ids().await?.into_iter().collect();
        let t1 = Instant::now();
        // The one enumeration also answers the installation id: a search
        // by label would walk every object of the token once more.
        let listing = hsm.list_token().await?;
        let enumeration = t1.elapsed();
        let token_id = listing.installation_id()?;
        let objects = listing.objects;
        super::fault_point("inventory:after-listing");
        let t2 = Instant::now();
        known.extend(store.known_object_ids().await?);
        let active_after: HashSet<(String, i64)> = store
            .active_version_ids()
            .await?
            .into_iter()
            .map(|(uid, version, _, _)| (uid, version))
            .collect();
        let present: HashSet<&[u8]> = objects.iter().map(|o| o.id.as_slice()).collect();
        let mut missing = Vec::new();
        for (name, id) in service_keys {
            if !present.contains(id.as_slice()) {
                missing.push(format!("service key {name}"));
            }
        }
        for id in ca_ids {
            if !present.contains(id.as_slice()) {
                missing.push(format!("NHN project CA key {}", hex::encode(&id)));
            }
        }
        for (uid, version, id, aux) in active_before {
            if !active_after.contains(&(uid.clone(), version)) {
                continue;
            }
            if !present.contains(id.as_slice()) {
                missing.push(format!("key {uid} v{version}"));
            }
            if let Some(aux) = aux {
                if !present.contains(aux.as_slice()) {
                    missing.push(format!("key {uid} v{version} (convergent HMAC key)"));
                }
            }
        }
        let store_scan = t2.elapsed() + (t1 - t0);
        Ok(Inventory {
            store_id,
            token_id,
            objects,
            known,
            missing,
            enumeration,
            store_scan,
        })
    }

    /// Objects on the token that no store row names, in token order.
    pub fn unknown(&self) -> Vec<&TokenObject> {
        self.objects
            .iter()
            .filter(|o| !self.known.contains(&o.id))
            .collect()
    }

    /// Whether the token proves it holds exactly what this store describes:
    /// every object the store names is there, and nothing else of ours.
    fn token_matches_store(&self) -> bool {
        self.missing.is_empty() && self.unknown().is_empty()
    }

    /// The one-line refusal naming both ids and the likely causes.
    fn refusal(&self, what: &str) -> Error {
        let id = |v: &Option<String>| v.clone().unwrap_or_else(|| "none".into());
        Error::InvalidState(format!(
            "refusing to start, nothing was destroyed: {what} (token installation id: {}, \
             {} hsm-kms objects; store installation id: {}, {} objects named). Likely causes: \
             a wrong or relative store.data_dir, a lost or fresh data volume, a store restored \
             from before `hsm-kms init`, the wrong token (hsm.token_label / hsm.slot_id) or a \
             re-initialised one, or two installations pointed at one token. Point the service \
             at this token's own store (or restore it from backup), or at this store's own token",
            id(&self.token_id),
            self.objects.len(),
            id(&self.store_id),
            self.known.len(),
        ))
    }
}

/// A new installation id: 16 random bytes from the token, hex.
async fn new_installation_id(hsm: &Hsm) -> Result<String> {
    Ok(hex::encode(hsm.random(16).await?))
}

/// Writes `id` on the token; logs and returns it.
async fn write_token_id(hsm: &Hsm, id: &str, binding: &'static str) -> Result<&'static str> {
    hsm.put_installation_id(id).await?;
    tracing::info!(
        installation_id = id,
        binding,
        "bound the token to the store with an installation id"
    );
    Ok(binding)
}

/// Checks (and, where the evidence allows, makes) the binding between the
/// token and the store. Returns the installation id and how it was reached.
///
/// The store is always written before the token, so an interruption leaves
/// "store has an id, token has none", which is completed only when the
/// token holds exactly what the store names.
pub async fn bind(hsm: &Hsm, store: &Store, mode: StartMode) -> Result<(String, &'static str)> {
    let inv = Inventory::take(hsm, store).await?;
    bind_taken(hsm, store, mode, &inv).await
}

/// [`bind`] on an inventory already taken.
async fn bind_taken(
    hsm: &Hsm,
    store: &Store,
    mode: StartMode,
    inv: &Inventory,
) -> Result<(String, &'static str)> {
    match (inv.store_id.clone(), inv.token_id.clone()) {
        (Some(s), Some(t)) if s == t => Ok((s, "checked")),
        (Some(_), Some(_)) => Err(inv.refusal(
            "the token and the store belong to two different installations",
        )),
        (None, Some(_)) => Err(inv.refusal(
            "the token belongs to an installation but the store has no installation id (an empty, new or other store)",
        )),
        (Some(s), None) => {
            if inv.token_matches_store() {
                // An `init` or an adoption was interrupted after the store
                // write: the token holds exactly what the store names.
                let how = write_token_id(hsm, &s, "completed").await?;
                Ok((s, how))
            } else {
                Err(inv.refusal(&format!(
                    "the store belongs to an installation but the token has no installation id and \
                     does not hold what the store names ({} missing, {} unknown)",
                    inv.missing.len(),
                    inv.unknown().len()
                )))
            }
        }
        (None, None) if inv.known.is_empty() && inv.objects.is_empty() => match mode {
            StartMode::Init => {
                let id = new_installation_id(hsm).await?;
                store.put_installation_id(&id).await?;
                let how = write_token_id(hsm, &id, "created").await?;
                Ok((id, how))
            }
            StartMode::Serve => Err(Error::InvalidState(
                "the service is not initialised: run `hsm-kms init`".into(),
            )),
        },
        (None, None) if inv.known.is_empty() => Err(inv.refusal(
            "the token holds hsm-kms objects but the store is empty and neither has an installation id",
        )),
        (None, None) => {
            // Made before installation ids existed: adopt only on proof.
            if inv.token_matches_store() {
                let id = new_installation_id(hsm).await?;
                store.put_installation_id(&id).await?;
                let how = write_token_id(hsm, &id, "adopted").await?;
                Ok((id, how))
            } else {
                Err(inv.refusal(&format!(
                    "this token and store predate installation ids and do not match: {} objects the \
                     store names are missing from the token ({}), {} objects on the token are \
                     unknown to the store (see `hsm-kms admin reconcile`)",
                    inv.missing.len(),
                    summarise(&inv.missing),
                    inv.unknown().len()
                )))
            }
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// How long the reconciler waits for the module's re-initialisation after
/// objects were missing from its view of the token (a start-up at 100 000
/// objects spends 6 s in SoftHSMv2's `C_Initialize` and 10 s refilling the
/// handle map).
const REREAD_WAIT: Duration = Duration::from_secs(120);

/// The first few entries of a list, for one-line messages.
fn summarise(items: &[String]) -> String {
    const SHOWN: usize = 10;
    let mut s = items
        .iter()
        .take(SHOWN)
        .cloned()
        .collect::<Vec<_>>()
        .join(", ");
    if items.len() > SHOWN {
        s.push_str(&format!(", and {} more", items.len() - SHOWN));
    }
    s
}

/// Runs the reconciler on a token and store (before the engine serves):
/// [`bind`], then the crash repair, then the report of unknown objects and
/// the refusal on missing ones.
///
/// The token is enumerated once (twice when a crash left work to repair):
/// that enumeration also fills the HSM port's handle map, so no request
/// searches the token afterwards.
pub async fn reconcile(hsm: &Hsm, store: &Store, mode: StartMode) -> Result<ReconcileReport> {
    let inv = Inventory::take(hsm, store).await?;
    let (installation_id, binding) = bind_taken(hsm, store, mode, &inv).await?;
    let mut report = ReconcileReport {
        installation_id,
        binding,
        enumeration_ms: millis(inv.enumeration),
        store_scan_ms: millis(inv.store_scan),
        ..ReconcileReport::default()
    };

    repair(hsm, store, &mut report).await?;

    // The repairs above changed the token; otherwise the first inventory
    // still holds.
    let inv = if report.pending_rolled_back + report.destroyed_finished > 0 {
        take_again(hsm, store, &mut report).await?
    } else {
        inv
    };
    // Objects missing from this process's view: on a token directory other
    // processes share (several nodes on one SoftHSMv2 directory, or behind
    // p11-kit), the view may be late; it heals only by a re-initialisation
    // of the module. Once, before judging (the same repair the request
    // path makes, hsm::late_view_allowed).
    let inv = if inv.missing.is_empty() {
        inv
    } else {
        tracing::warn!(
            missing = inv.missing.len(),
            first = %summarise(&inv.missing),
            "objects the store names are missing from this process's view of the token; \
             re-initialising the PKCS#11 module once and listing the token again before judging"
        );
        if hsm.reread_token(REREAD_WAIT).await {
            take_again(hsm, store, &mut report).await?
        } else {
            inv
        }
    };
    let unknown = inv.unknown();
    for o in &unknown {
        tracing::warn!(
            label = %o.label,
            id = %hex::encode(&o.id),
            class = %o.class,
            "an hsm-kms object that no store row names; left in place (see `hsm-kms admin reconcile`)"
        );
    }
    report.unknown_objects = unknown.len();
    if !inv.missing.is_empty() {
        report.missing_objects = inv.missing.len();
        return Err(Error::InvalidState(format!(
            "refusing to start, nothing was destroyed: the store names {} objects that are not on \
             the token (installation id {}): {}. Likely causes: the wrong token, a token restored \
             from a backup older than the store, or objects deleted outside hsm-kms. Restore the \
             token from a backup that holds them",
            inv.missing.len(),
            report.installation_id,
            summarise(&inv.missing)
        )));
    }
    Ok(report)
}

/// Another inventory, its listing and store reads added to the report's
/// times.
async fn take_again(hsm: &Hsm, store: &Store, report: &mut ReconcileReport) -> Result<Inventory> {
    let again = Inventory::take(hsm, store).await?;
    report.enumeration_ms += millis(again.enumeration);
    report.store_scan_ms += millis(again.store_scan);
    Ok(again)
}

/// Finishes or undoes the versions left `pending` or `destroying` by nodes
/// that are gone (killed mid-operation), and only those: a version whose
/// node is alive is that node's operation in flight, and rolling it back
/// would destroy a key its client is about to be given. See
/// `store::nodes` for how a node is known to be alive.
async fn repair(hsm: &Hsm, store: &Store, report: &mut ReconcileReport) -> Result<()> {
    // Read with the rows' states: a row that reached `pending` or
    // `destroying` after this read is not looked at (the next pass will).
    let owners: HashMap<(i64, i64, String), Option<i64>> = store
        .version_owners()
        .await?
        .into_iter()
        .map(|(k, v, state, owner)| ((k, v, state), owner))
        .collect();
    let owner = |v: &super::KeyVersion| {
        owners
            .get(&(v.key_id.get(), v.version, v.state.as_str().to_string()))
            .copied()
    };

    for v in store.versions_in_state(VersionState::Pending).await? {
        let Some(node) = owner(&v) else { continue };
        if store.node_alive(node).await {
            report.left_to_live_nodes += 1;
            continue;
        }
        // The decision is committed first, and only over a row still
        // `pending` with this `CKA_ID`: a concurrent activation or another
        // reconciler doing the same leaves it alone.
        if store
            .mark_pending_destroying(v.key_id, v.version, &v.cka_id)
            .await?
            != Some(VersionState::Destroying)
        {
            continue;
        }
        hsm.destroy_id(v.cka_id.to_vec()).await?;
        if let Some(aux) = &v.aux_cka_id {
            hsm.destroy_id(aux.to_vec()).await?;
        }
        store
            .delete_version_in_state(v.key_id, v.version, VersionState::Destroying)
            .await?;
        tracing::warn!(
            key_id = v.key_id.get(),
            version = v.version,
            node = node.unwrap_or(0),
            "rolled back a version interrupted during creation"
        );
        report.pending_rolled_back += 1;
    }

    for v in store.versions_in_state(VersionState::Destroying).await? {
        let Some(node) = owner(&v) else { continue };
        if store.node_alive(node).await {
            report.left_to_live_nodes += 1;
            continue;
        }
        hsm.destroy_id(v.cka_id.to_vec()).await?;
        if let Some(aux) = &v.aux_cka_id {
            hsm.destroy_id(aux.to_vec()).await?;
        }
        store
            .set_version_state(v.key_id, v.version, VersionState::Destroyed)
            .await?;
        report.destroyed_finished += 1;
    }
    Ok(())
}

/// Destroys the objects [`Inventory::unknown`] lists, on an operator's
/// explicit word (`hsm-kms admin reconcile --destroy-orphans --yes`). Refused
/// unless the token and the store carry the same installation id: without
/// that, "unknown to this store" says nothing about an object. Returns the
/// number of object ids destroyed.
pub async fn destroy_orphans(hsm: &Hsm, store: &Store) -> Result<usize> {
    let inv = Inventory::take(hsm, store).await?;
    match (&inv.store_id, &inv.token_id) {
        (Some(s), Some(t)) if s == t => {}
        _ => {
            return Err(
                inv.refusal("--destroy-orphans needs a token and a store with one installation id")
            )
        }
    }
    let mut done = HashSet::new();
    for o in inv.unknown() {
        if !done.insert(o.id.clone()) {
            continue;
        }
        let n = hsm.destroy_id(o.id.clone()).await?;
        tracing::warn!(
            label = %o.label,
            id = %hex::encode(&o.id),
            class = %o.class,
            objects = n,
            "destroyed an object that no store row names (admin reconcile --destroy-orphans)"
        );
    }
    Ok(done.len())
}

impl Engine {
    /// Runs the reconciler on the engine's token and store, as `serve` does.
    pub async fn reconcile(&self) -> Result<ReconcileReport> {
        let r = reconcile(self.hsm(), self.store(), StartMode::Serve).await?;
        self.inner.keys.clear();
        Ok(r)
    }

    /// The reconciler's repair alone, run by every scheduler pass: what a
    /// node killed mid-operation left half-done is repaired by the nodes
    /// still running (a dead node's own start-up may never come).
    pub(crate) async fn repair_interrupted(&self) -> Result<ReconcileReport> {
        let mut report = ReconcileReport::default();
        repair(self.hsm(), self.store(), &mut report).await?;
        if report.pending_rolled_back + report.destroyed_finished > 0 {
            self.inner.keys.clear();
            tracing::warn!(
                rolled_back = report.pending_rolled_back,
                destroyed = report.destroyed_finished,
                "repaired versions that a node which is gone left half-done"
            );
        }
        Ok(report)
    }

    /// Every object of the service on the token, with its attributes
    /// (`hsm-kms admin list-objects`).
    pub async fn service_objects(&self) -> Result<Vec<crate::hsm::ObjectInfo>> {
        Ok(self.hsm().service_object_infos().await?)
    }
}
