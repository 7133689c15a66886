//! The activity log, written with group commit: callers hand a record to one
//! writer task and wait; the writer takes every record queued so far, writes
//! them in one transaction, and acknowledges them all once it has committed.
//! An operation is answered only after its record is durable.
//!
//! No unlogged crypto: when the record cannot be written (a full or
//! read-only disk, a lost store file) every operation waiting on the batch
//! is refused with a 503, whatever the token did for it; nothing is dropped
//! silently. The next batch tries again on a fresh connection, so the log
//! works again, without a restart, once the disk does.

use crate::store::ActivitySink;
use tokio::sync::{mpsc, oneshot};

use super::{Engine, Error, Result};
use crate::store::{ActivityRow, Store};

/// Largest batch per transaction.
const MAX_BATCH: usize = 512;

/// Why a batch was not recorded: the store's message, and whether the
/// store is unavailable (503) rather than broken (500).
#[derive(Debug, Clone)]
struct Unrecorded {
    unavailable: bool,
    message: String,
}

type Pending = (
    ActivityRow,
    oneshot::Sender<std::result::Result<(), Unrecorded>>,
);

/// Handle to the writer task.
#[derive(Clone, Debug)]
pub struct ActivityLog {
    tx: Option<mpsc::Sender<Pending>>,
}

impl ActivityLog {
    /// Starts the writer on `store`; `enabled = false` makes every record a
    /// no-op. With `fsync`, every commit is flushed to disk (survives power
    /// loss); without, commits reach the OS (WAL, `synchronous=NORMAL`) and
    /// survive the process being killed, which is what an answer waits for.
    pub fn start(store: Store, enabled: bool, fsync: bool) -> Self {
        if !enabled {
            return ActivityLog { tx: None };
        }
        let (tx, mut rx) = mpsc::channel::<Pending>(4096);
        tokio::spawn(async move {
            let mut conn: Option<crate::store::ActivityWriter> = None;
            let mut rows: Vec<ActivityRow> = Vec::with_capacity(MAX_BATCH);
            let mut acks = Vec::with_capacity(MAX_BATCH);
            while let Some((row, ack)) = rx.recv().await {
                rows.push(row);
                acks.push(ack);
                while rows.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok((row, ack)) => {
                            rows.push(row);
                            acks.push(ack);
                        }
                        Err(_) => break,
                    }
                }
                if conn.is_none() {
                    conn = store.activity_writer(fsync).await.ok();
                }
                let res = match conn.as_mut() {
                    Some(c) => c.write(&rows).await,
                    None => store.insert_activity_batch(&rows).await,
                }
                // A commit into a deleted or replaced file is lost to the
                // next start: not acknowledged.
                .and_then(|()| store.check_file())
                .map_err(|e| Unrecorded {
                    unavailable: e.is_unavailable(),
                    message: e.to_string(),
                });
                if res.is_err() {
                    // A broken connection is replaced at the next batch.
                    conn = None;
                }
                if let Err(e) = &res {
                    tracing::error!(error = %e.message, records = rows.len(), "activity log write failed; the operations are refused (no unlogged crypto)");
                }
                rows.clear();
                for ack in acks.drain(..) {
                    let _ = ack.send(res.clone());
                }
            }
        });
        ActivityLog { tx: Some(tx) }
    }

    /// True when records are kept.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a record and waits until it is committed.
    pub async fn record(&self, row: ActivityRow) -> Result<()> {
        let Some(tx) = &self.tx else { return Ok(()) };
        let (ack, done) = oneshot::channel();
        tx.send((row, ack))
            .await
            .map_err(|_| Error::Internal("activity log writer stopped".into()))?;
        done.await
            .map_err(|_| Error::Internal("activity log writer stopped".into()))?
            .map_err(|e| {
                if e.unavailable {
                    Error::Unavailable(
                        "the activity log cannot be written; the operation is refused".into(),
                    )
                } else {
                    Error::Internal(e.message)
                }
            })
    }
}

impl Engine {
    /// True when the activity log is kept.
    pub fn activity_enabled(&self) -> bool {
        self.inner.activity.enabled()
    }

    /// Records one activity and waits until it is durable.
    pub async fn record_activity(&self, row: ActivityRow) -> Result<()> {
        self.inner.activity.record(row).await
    }

    /// Activity of a key owned by `account_id`, oldest first: (rows, total).
    #[allow(clippy::too_many_arguments)]
    pub async fn key_activity(
        &self,
        account_id: i64,
        uid: &str,
        from: i64,
        to: i64,
        keyword: Option<&str>,
        page_no: i64,
        page_size: i64,
    ) -> Result<(Vec<ActivityRow>, i64)> {
        let e = self.owned_key(account_id, uid).await?;
        Ok(self
            .store()
            .activity(
                &e.key.uid,
                from,
                to,
                keyword,
                (page_no - 1) * page_size,
                page_size,
            )
            .await?)
    }

    /// The newest activity record of a key owned by `account_id`.
    pub async fn latest_activity(&self, account_id: i64, uid: &str) -> Result<Option<ActivityRow>> {
        let e = self.owned_key(account_id, uid).await?;
        Ok(self.store().latest_activity(&e.key.uid).await?)
    }
}
