//! Cache invalidation across nodes. Every cache of the engine (keys and
//! versions, access-key secrets, tokens, token generators, ACLs, NHN
//! appkeys, keys and key stores) is per process; a write made by another
//! node (or by the admin CLI) reaches this one through the store's change
//! log (`store::nodes`), which triggers write in the writing transaction:
//!
//! - every node polls the log every `store.change_poll_ms` (500 ms by
//!   default) and drops the entries it names. This alone bounds how long a
//!   node serves a stale entry, on SQLite (several nodes on one file) and on
//!   PostgreSQL;
//! - on PostgreSQL each change is also a `NOTIFY`, delivered at commit: the
//!   listening node drops the entry at once. A lost LISTEN connection drops
//!   every cache (notifications sent meanwhile are gone), and so does a
//!   node that fell behind the log's pruning.
//!
//! The caches are generation-guarded ([`super::cache::Cache`]): a store read
//! that began before an invalidation is used once and not kept, so a drop
//! that races a reload cannot leave the old value cached.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::{Engine, Result};

/// Changes read per query of the log.
const BATCH: i64 = 1000;

impl Engine {
    /// Drops what one change makes stale. Returns whether the NHN project
    /// CAs must be loaded again.
    pub(crate) fn apply_change(&self, kind: &str, id: &str) -> bool {
        match kind {
            "key" => {
                self.inner.keys.remove(id);
                self.nhn_forget(kind, id);
            }
            "acl" => match id.parse::<i64>() {
                Ok(key_id) => self.inner.acls.remove(&super::KeyId::new(key_id)),
                Err(_) => self.inner.acls.clear(),
            },
            "generator" => match id.parse::<i64>() {
                Ok(key_id) => self.inner.generators.remove(&super::KeyId::new(key_id)),
                Err(_) => self.inner.generators.clear(),
            },
            "token" => match hex::decode(id) {
                Ok(hash) => self.inner.tokens.remove(&hash),
                Err(_) => self.inner.tokens.clear(),
            },
            "access_key" => self.inner.secrets.remove(id),
            "nhn_project" => {
                self.nhn_forget(kind, id);
                return true;
            }
            "nhn_store" => self.nhn_forget(kind, id),
            // A kind this version does not know (a newer node wrote it).
            _ => {
                self.drop_caches();
                return true;
            }
        }
        false
    }

    /// Drops every cache (the change feed lost track of what changed).
    pub(crate) fn drop_caches(&self) {
        self.inner.keys.clear();
        self.inner.acls.clear();
        self.inner.generators.clear();
        self.inner.tokens.clear();
        self.inner.secrets.clear();
        self.nhn_forget("*", "");
    }

    /// Reads the change log past the last position seen and drops what it
    /// names. Returns how many changes were applied.
    pub async fn poll_changes(&self) -> Result<usize> {
        let last = self.inner.change_seq.load(Ordering::Acquire);
        let (applied, reload_cas) = self
            .apply_changes_after(last, &std::collections::HashSet::new(), |seq| {
                self.inner.change_seq.fetch_max(seq, Ordering::AcqRel);
                self.inner.change_seq.load(Ordering::Acquire)
            })
            .await?;
        if reload_cas {
            self.nhn_load_cas().await?;
        }
        Ok(applied)
    }

    /// Drops what every change after `from` names, except the positions
    /// in `skip`, a batch at a time; `advance` gets the last position of
    /// each batch and returns where the next batch starts. When rows past `from` were pruned unseen,
    /// every cache is dropped. Returns how many changes were applied and
    /// whether the NHN project CAs must be loaded again.
    pub(crate) async fn apply_changes_after(
        &self,
        from: i64,
        skip: &std::collections::HashSet<i64>,
        advance: impl Fn(i64) -> i64,
    ) -> Result<(usize, bool)> {
        let mut applied = 0;
        let mut reload_cas = false;
        let mut last = from;
        loop {
            let batch = self.store().changes_after(last, BATCH).await?;
            let Some(first) = batch.first() else { break };
            if first.seq > last + 1 {
                // Rows past `last` may have been pruned unseen (or, on
                // PostgreSQL, an identity value was skipped): only then is
                // the oldest row newer than what follows `last`.
                if self
                    .store()
                    .first_change()
                    .await?
                    .is_some_and(|oldest| oldest > last + 1)
                {
                    self.drop_caches();
                    reload_cas = true;
                }
            }
            let n = batch.len();
            let mut seq = last;
            for c in batch {
                if !skip.contains(&c.seq) {
                    reload_cas |= self.apply_change(&c.kind, &c.id);
                }
                seq = c.seq;
            }
            last = advance(seq);
            applied += n;
            if (n as i64) < BATCH {
                break;
            }
        }
        Ok((applied, reload_cas))
    }

    /// Follows PostgreSQL's change notifications until the runtime stops
    /// (returns at once on SQLite).
    async fn listen_changes(&self) {
        loop {
            let mut listener = match self.store().change_listener().await {
                Ok(Some(l)) => l,
                Ok(None) => return,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for changes; caches dropped, retrying");
                    self.drop_caches();
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            loop {
                match listener.next().await {
                    Ok(Some((kind, id))) => {
                        if self.apply_change(&kind, &id) {
                            if let Err(e) = self.nhn_load_cas().await {
                                tracing::warn!(error = %e, "cannot reload the NHN project CAs");
                            }
                        }
                    }
                    Ok(None) => {
                        // Changes announced while the connection was down
                        // are lost: forget everything; the listener
                        // reconnects on the next call.
                        tracing::warn!(
                            "the change notification connection was lost; caches dropped"
                        );
                        self.drop_caches();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "change notifications failed; caches dropped");
                        self.drop_caches();
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        break;
                    }
                }
            }
        }
    }
}

/// Starts following the change log: a poll every `interval`, and on
/// PostgreSQL the notification listener too.
pub fn spawn_change_feed(engine: Engine, interval: Duration) {
    let listener = engine.clone();
    tokio::spawn(async move { listener.listen_changes().await });
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = engine.poll_changes().await {
                tracing::warn!(error = %e, "cannot read the change log");
            }
        }
    });
}
