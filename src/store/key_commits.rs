//! Group commit of key creations' store writes: the `pending` rows of new
//! keys and the activations of versions whose objects were just made.
//!
//! The crash protocol needs a new key's `pending` row durable before its
//! token object exists, then its activation: two commits, each an fsync on
//! SQLite (WAL, `synchronous=FULL`) and a WAL flush on PostgreSQL. Creations
//! that run at once queue their writes to one writer task, which takes
//! every write queued at that moment (up to [`MAX_BATCH`]) into one
//! transaction, each in a savepoint of its own (a refused write, a taken
//! name or a reached cap, undoes only itself), commits once, and only then
//! answers each caller. A caller is therefore acknowledged exactly when its
//! own row is durable, as with a transaction of its own: the ordering of
//! the protocol is unchanged; only the fsyncs are shared. When the shared
//! transaction fails as a whole (begin or commit), each of its writes is
//! tried again alone, so every caller gets its own write's own error.
//!
//! The per-account key cap is counted once per account and transaction
//! (the writer serialises every write of the batch, and every store write
//! holds the engine's write lock: SQLite's `BEGIN IMMEDIATE`, PostgreSQL's
//! advisory lock), instead of an index scan of the account's keys per key.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};

use super::{map_unique, now_ms, Db, NewKey, Result, StoreError};
use crate::core::{KeyId, ObjectRef};

/// Largest number of writes per shared transaction.
pub(super) const MAX_BATCH: usize = 256;

/// One queued write.
#[derive(Debug)]
pub(super) enum KeyWrite {
    /// A new key and its version 1, `pending` (see `insert_key_pending`).
    InsertKeyPending {
        key: Box<NewKey>,
        cka_id: ObjectRef,
        aux_cka_id: Option<ObjectRef>,
        per_account: i64,
        of_type: Option<(String, i64)>,
    },
    /// A pending version made active (see `activate_version`).
    Activate {
        key_id: KeyId,
        version: i64,
        next_rotation_at: Option<i64>,
    },
}

/// What a write returns.
#[derive(Debug)]
pub(super) enum Written {
    /// The new key's id.
    Key(KeyId),
    /// The version is active.
    Activated,
}

struct Job {
    write: KeyWrite,
    reply: oneshot::Sender<Result<Written>>,
}

/// The queue in front of the writer task, shared by a store's clones.
#[derive(Debug, Default)]
pub(super) struct KeyCommits {
    /// The writer's queue; `None` until the first write (the task is
    /// spawned on the runtime of that write), and replaced when the
    /// writer is gone (its runtime ended).
    queue: Mutex<Option<mpsc::UnboundedSender<Job>>>,
    transactions: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job").field("write", &self.write).finish()
    }
}

impl KeyCommits {
    /// Queues `write` and waits until it is committed (or refused).
    pub(super) async fn write(&self, db: &Db, node_id: i64, write: KeyWrite) -> Result<Written> {
        let (reply, answer) = oneshot::channel();
        let mut job = Job { write, reply };
        for _ in 0..2 {
            let sender = {
                let mut q = self.queue.lock().unwrap_or_else(|p| p.into_inner());
                match q.as_ref() {
                    Some(s) if !s.is_closed() => s.clone(),
                    _ => {
                        let (tx, rx) = mpsc::unbounded_channel();
                        let writer = Writer {
                            db: db.clone(),
                            node_id,
                            transactions: self.transactions.clone(),
                            writes: self.writes.clone(),
                        };
                        tokio::spawn(writer.run(rx));
                        *q = Some(tx.clone());
                        tx
                    }
                }
            };
            match sender.send(job) {
                Ok(()) => {
                    return answer.await.unwrap_or_else(|_| {
                        Err(StoreError::Lost("the store's key writer stopped".into()))
                    })
                }
                Err(mpsc::error::SendError(j)) => job = j,
            }
        }
        Err(StoreError::Lost("the store's key writer stopped".into()))
    }

    /// Shared transactions committed and the writes they carried, since
    /// the store was opened: `writes / transactions` is the mean group.
    pub(super) fn counts(&self) -> (u64, u64) {
        (
            self.transactions.load(Ordering::Relaxed),
            self.writes.load(Ordering::Relaxed),
        )
    }
}

/// The writer task's side: the engine and this node's id. It holds no
/// handle on the queue, so it ends when the last store clone is dropped.
struct Writer {
    db: Db,
    node_id: i64,
    transactions: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
}

impl Writer {
    async fn run(self, mut rx: mpsc::UnboundedReceiver<Job>) {
        let mut jobs: Vec<Job> = Vec::new();
        while rx.recv_many(&mut jobs, MAX_BATCH).await > 0 {
            let writes: Vec<&KeyWrite> = jobs.iter().map(|j| &j.write).collect();
            let results = match self.commit(&writes).await {
                Ok(r) => {
                    self.count(jobs.len());
                    r
                }
                Err(e) if jobs.len() == 1 => vec![Err(e)],
                Err(_) => {
                    // The shared transaction failed as a whole: each write
                    // alone, for its own answer.
                    let mut r = Vec::with_capacity(jobs.len());
                    for w in &writes {
                        r.push(match self.commit(std::slice::from_ref(w)).await {
                            Ok(mut one) => {
                                self.count(1);
                                one.pop().unwrap_or(Err(StoreError::Gone("no answer")))
                            }
                            Err(e) => Err(e),
                        });
                    }
                    r
                }
            };
            for (job, res) in jobs.drain(..).zip(results) {
                // A caller that went away still had its row committed,
                // as when a request is dropped after its own commit.
                let _ = job.reply.send(res);
            }
        }
    }

    fn count(&self, writes: usize) {
        self.transactions.fetch_add(1, Ordering::Relaxed);
        self.writes.fetch_add(writes as u64, Ordering::Relaxed);
        metrics::counter!("hsm_kms_key_commit_transactions_total").increment(1);
        metrics::counter!("hsm_kms_key_commit_writes_total").increment(writes as u64);
    }

    /// One transaction for `writes`, each in a savepoint: the outer
    /// result fails only when the transaction itself does.
    async fn commit(&self, writes: &[&KeyWrite]) -> Result<Vec<Result<Written>>> {
        on_db!(self, db => {
            let mut tx = db.begin_write().await?;
            let mut of_account: HashMap<i64, i64> = HashMap::new();
            let mut out = Vec::with_capacity(writes.len());
            for w in writes {
                let mut sp = sqlx::Connection::begin(&mut *tx).await?;
                let res = match w {
                    KeyWrite::InsertKeyPending { key, cka_id, aux_cka_id, per_account, of_type } => {
                        async {
                            let count = match of_account.get(&key.account_id) {
                                Some(c) => *c,
                                // The account's live keys, kept by the
                                // triggers of migration 0018 (one row, where
                                // a COUNT(*) scanned every key).
                                None => sqlx::query_scalar::<_, i64>(
                                    "SELECT COALESCE((SELECT live FROM account_key_counts WHERE account_id = $1), 0)",
                                )
                                .bind(key.account_id)
                                .fetch_one(&mut *sp)
                                .await?,
                            };
                            of_account.insert(key.account_id, count);
                            if count >= *per_account {
                                return Err(StoreError::LimitReached("keys"));
                            }
                            if let Some((key_type, cap)) = of_type {
                                let n: i64 = sqlx::query_scalar(
                                    "SELECT COUNT(*) FROM keys WHERE account_id = $1 AND status <> 'DELETED' AND key_type = $2",
                                )
                                .bind(key.account_id)
                                .bind(key_type)
                                .fetch_one(&mut *sp)
                                .await?;
                                if n >= *cap {
                                    return Err(StoreError::LimitReached("type"));
                                }
                            }
                            let now = now_ms();
                            let key_id: KeyId = sqlx::query_scalar(
                                "INSERT INTO keys (uid, account_id, name, key_type, status, memo, protection_type, is_convergent, is_auto_rotation, rotation_period, next_rotation_at, status_at, created_at, updated_at, dialect)
                                 VALUES ($1, $2, $3, $4, 'ENABLE', $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)
                                 RETURNING id",
                            )
                            .bind(&key.uid)
                            .bind(key.account_id)
                            .bind(&key.name)
                            .bind(key.key_type.as_str())
                            .bind(&key.memo)
                            .bind(&key.protection_type)
                            .bind(key.is_convergent)
                            .bind(key.is_auto_rotation)
                            .bind(key.rotation_period)
                            .bind(key.next_rotation_at)
                            .bind(now)
                            .bind(now)
                            .bind(now)
                            .bind(key.dialect.as_str())
                            .fetch_one(&mut *sp)
                            .await
                            .map_err(map_unique)?;
                            sqlx::query(
                                "INSERT INTO key_versions (key_id, version, state, enabled, cka_id, aux_cka_id, status_at, created_at, owner_node) VALUES ($1, 1, 'pending', TRUE, $2, $3, $4, $5, $6)",
                            )
                            .bind(key_id)
                            .bind(cka_id)
                            .bind(aux_cka_id.as_ref())
                            .bind(now)
                            .bind(now)
                            .bind(self.node_id)
                            .execute(&mut *sp)
                            .await
                            .map_err(map_unique)?;
                            of_account.insert(key.account_id, count + 1);
                            Ok(Written::Key(key_id))
                        }
                        .await
                    }
                    KeyWrite::Activate { key_id, version, next_rotation_at } => {
                        async {
                            let r = sqlx::query("UPDATE key_versions SET state = 'active' WHERE key_id = $1 AND version = $2 AND state = 'pending'")
                                .bind(*key_id)
                                .bind(*version)
                                .execute(&mut *sp)
                                .await?;
                            if r.rows_affected() == 0 {
                                // Rolled back or destroyed by someone else
                                // meanwhile: the caller must not report a
                                // version that does not exist.
                                return Err(StoreError::Gone("the new version was undone before its activation"));
                            }
                            sqlx::query("UPDATE keys SET next_rotation_at = COALESCE($1, next_rotation_at), updated_at = $2, revision = revision + 1 WHERE id = $3")
                                .bind(*next_rotation_at)
                                .bind(now_ms())
                                .bind(*key_id)
                                .execute(&mut *sp)
                                .await?;
                            Ok(Written::Activated)
                        }
                        .await
                    }
                };
                match res {
                    Ok(v) => {
                        sp.commit().await?;
                        out.push(Ok(v));
                    }
                    Err(e) => {
                        sp.rollback().await?;
                        // A statement that failed for the store's own
                        // reasons (I/O, a full disk) fails the transaction.
                        if e.is_unavailable() {
                            return Err(e);
                        }
                        out.push(Err(e));
                    }
                }
            }
            tx.commit().await?;
            Ok(out)
        })
    }
}
