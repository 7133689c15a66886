//! Several nodes on one store: who this node is, whether another node is
//! still alive, the change log that keeps every node's caches fresh, and
//! the claims that make scheduled work run on one node only.
//!
//! **Node identity and liveness.** Each opened store is one node, with a
//! random id for this process's life. The node holds a lock that the
//! operating system or the database server releases the moment the process
//! dies, so "is node N alive" is answered without clocks or leases that
//! could expire under a paused process: on SQLite an exclusive `flock` on
//! `{data_dir}/nodes/{id}.lock` (the nodes of one SQLite file share its
//! directory); on PostgreSQL a session-level advisory lock held on a
//! connection of its own, checked every second and taken again if that
//! connection is lost. Versions put into `pending` or `destroying` record
//! the node (`key_versions.owner_node`); reconcilers repair only rows whose
//! node is gone, and any doubt (an error while checking) counts as alive.
//!
//! **Change log.** Triggers (migration `0010_nodes.sql`) write one row in
//! `changes` per change that a cache depends on, in the writing transaction;
//! on PostgreSQL they also `NOTIFY hsm_kms_changes`. Nodes follow both (see
//! `core::changes`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{now_ms, Db, Result, Store, StoreError};

/// Advisory-lock class (first key of the two-key form) of node locks.
const NODE_LOCK_CLASS: i32 = 0x686b;

/// The PostgreSQL channel the change triggers notify.
pub const CHANGE_CHANNEL: &str = "hsm_kms_changes";

/// One entry of the change log.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Change {
    /// Position in the log.
    pub seq: i64,
    /// What kind of cached thing changed (`key`, `acl`, `generator`,
    /// `token`, `access_key`, `nhn_project`, `nhn_store`).
    pub kind: String,
    /// Which one (see the migration for each kind's id).
    pub id: String,
}

/// This process's identity on the store and the lock that proves it alive.
pub(crate) struct NodeLease {
    id: i64,
    hold: Hold,
}

enum Hold {
    /// SQLite: the locked file, and the directory of node lock files.
    File { dir: PathBuf, _file: std::fs::File },
    /// PostgreSQL: the connection holding the advisory lock (kept alive and
    /// re-locked by a background task).
    Pg,
}

impl std::fmt::Debug for NodeLease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeLease").field("id", &self.id).finish()
    }
}

impl Drop for NodeLease {
    fn drop(&mut self) {
        if let Hold::File { dir, .. } = &self.hold {
            let _ = std::fs::remove_file(lock_path(dir, self.id));
        }
    }
}

fn io(e: std::io::Error) -> StoreError {
    StoreError::Db(sqlx::Error::Io(e))
}

fn lock_path(dir: &Path, id: i64) -> PathBuf {
    dir.join(format!("{id}.lock"))
}

/// A random node id that fits the two-key advisory lock (positive `int4`).
fn random_id() -> i64 {
    i64::from(rand::random::<u32>() >> 1).max(1)
}

impl NodeLease {
    /// Takes a new node id under `data_dir/nodes` (SQLite).
    pub(super) fn on_file(data_dir: &Path) -> Result<Self> {
        let dir = data_dir.join("nodes");
        std::fs::create_dir_all(&dir).map_err(io)?;
        loop {
            let id = random_id();
            let file = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .open(lock_path(&dir, id))
                .map_err(io)?;
            match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
                Ok(()) => {
                    return Ok(NodeLease {
                        id,
                        hold: Hold::File { dir, _file: file },
                    })
                }
                // Another live node drew the same id: draw again.
                Err(rustix::io::Errno::WOULDBLOCK) => continue,
                Err(e) => return Err(io(e.into())),
            }
        }
    }

    /// Takes a new node id as an advisory lock on a connection of its own
    /// (PostgreSQL), and keeps it: a task checks the connection every
    /// second and locks again on a new one when it was lost.
    pub(super) async fn on_pg(pool: &sqlx::PgPool) -> Result<Arc<Self>> {
        let (id, conn) = loop {
            let id = random_id();
            if let Some(conn) = pg_lock(pool, id).await? {
                break (id, conn);
            }
        };
        let lease = Arc::new(NodeLease { id, hold: Hold::Pg });
        let weak = Arc::downgrade(&lease);
        let pool = pool.clone();
        tokio::spawn(async move {
            let mut conn = Some(conn);
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                if weak.upgrade().is_none() {
                    return;
                }
                let ok = match conn.as_mut() {
                    Some(c) => sqlx::query("SELECT 1").execute(&mut *c).await.is_ok(),
                    None => false,
                };
                if ok {
                    continue;
                }
                conn = match pg_lock(&pool, id).await {
                    Ok(Some(c)) => {
                        tracing::warn!(
                            node = id,
                            "the node's lock connection was lost; locked again"
                        );
                        Some(c)
                    }
                    Ok(None) => {
                        tracing::error!(node = id, "the node's lock is held by another session");
                        None
                    }
                    Err(e) => {
                        tracing::error!(node = id, error = %e, "cannot take the node's lock again; other nodes may take this node for dead");
                        None
                    }
                };
            }
        });
        Ok(lease)
    }
}

/// A connection holding node `id`'s advisory lock, or `None` when another
/// session holds it.
async fn pg_lock(pool: &sqlx::PgPool, id: i64) -> Result<Option<sqlx::PgConnection>> {
    let Ok(key) = i32::try_from(id) else {
        return Ok(None);
    };
    let mut conn = pool.acquire().await?.detach();
    let got: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
        .bind(NODE_LOCK_CLASS)
        .bind(key)
        .fetch_one(&mut conn)
        .await?;
    Ok(got.then_some(conn))
}

/// Whether the node that holds the lock file `id` is alive (SQLite).
fn file_alive(dir: &Path, id: i64) -> bool {
    let path = lock_path(dir, id);
    let file = match std::fs::OpenOptions::new().write(true).open(&path) {
        Ok(f) => f,
        // No file: the node ended cleanly (or never ran here).
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return false,
        Err(_) => return true,
    };
    match rustix::fs::flock(&file, rustix::fs::FlockOperation::NonBlockingLockShared) {
        Ok(()) => {
            // Nobody holds it: the node died. Its file is litter now.
            let _ = std::fs::remove_file(&path);
            false
        }
        Err(_) => true,
    }
}

impl Store {
    /// This node's id (recorded on the rows its in-flight operations own).
    pub fn node_id(&self) -> i64 {
        self.node.id
    }

    /// Whether node `node` is alive. `None` (rows from before node ids)
    /// counts as gone; this node is alive; an error while checking counts
    /// as alive (a reconciler must not destroy on doubt).
    pub async fn node_alive(&self, node: Option<i64>) -> bool {
        let Some(node) = node else { return false };
        if node == self.node.id {
            return true;
        }
        match (&self.node.hold, &self.db) {
            (Hold::File { dir, .. }, _) => file_alive(dir, node),
            (Hold::Pg, Db::Postgres(db)) => {
                let Ok(key) = i32::try_from(node) else {
                    return true;
                };
                let free = async {
                    let mut tx = db.pool.begin().await?;
                    let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, $2)")
                        .bind(NODE_LOCK_CLASS)
                        .bind(key)
                        .fetch_one(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    Ok::<bool, sqlx::Error>(free)
                }
                .await;
                !matches!(free, Ok(true))
            }
            (Hold::Pg, Db::Sqlite(_)) => true,
        }
    }

    /// The node that owns each `pending` or `destroying` version:
    /// (key id, version, state, owner).
    pub async fn version_owners(&self) -> Result<Vec<(i64, i64, String, Option<i64>)>> {
        on_db!(self, db => {
            Ok(sqlx::query_as(
                "SELECT key_id, version, state, owner_node FROM key_versions WHERE state IN ('pending', 'destroying')",
            )
            .fetch_all(&db.pool)
            .await?)
        })
    }

    /// The newest position of the change log (0 when empty).
    pub async fn last_change(&self) -> Result<i64> {
        on_db!(self, db => {
            let seq: Option<i64> = sqlx::query_scalar("SELECT MAX(seq) FROM changes")
                .fetch_one(&db.pool)
                .await?;
            Ok(seq.unwrap_or(0))
        })
    }

    /// The positions in the change log above `after` and up to `upto` that
    /// are visible now (committed).
    pub async fn change_seqs_between(&self, after: i64, upto: i64) -> Result<Vec<i64>> {
        on_db!(self, db => {
            Ok(sqlx::query_scalar("SELECT seq FROM changes WHERE seq > $1 AND seq <= $2")
                .bind(after)
                .bind(upto)
                .fetch_all(&db.pool)
                .await?)
        })
    }

    /// The oldest position still in the change log, if any.
    pub async fn first_change(&self) -> Result<Option<i64>> {
        on_db!(self, db => {
            Ok(sqlx::query_scalar("SELECT MIN(seq) FROM changes")
                .fetch_one(&db.pool)
                .await?)
        })
    }

    /// Up to `limit` changes after position `seq`, oldest first.
    pub async fn changes_after(&self, seq: i64, limit: i64) -> Result<Vec<Change>> {
        on_db!(self, db => {
            Ok(sqlx::query_as("SELECT seq, kind, id FROM changes WHERE seq > $1 ORDER BY seq LIMIT $2")
                .bind(seq)
                .bind(limit)
                .fetch_all(&db.pool)
                .await?)
        })
    }

    /// Drops all but the newest `keep` changes. A node that falls further
    /// behind than that drops all its caches (see `core::changes`).
    pub async fn prune_changes(&self, keep: i64) -> Result<u64> {
        on_db!(self, db => {
            let r = sqlx::query("DELETE FROM changes WHERE seq <= (SELECT MAX(seq) FROM changes) - $1")
                .bind(keep)
                .execute(&db.pool)
                .await?;
            Ok(r.rows_affected())
        })
    }

    /// Claims a due automatic rotation for this node: moves the key's next
    /// rotation to `retry_at` (so that if this node dies before rotating,
    /// another one retries then) only if it is still due at `now`. `true`:
    /// this node rotates; `false`: another node claimed it first, or it is
    /// no longer due. The activation writes the real next rotation.
    pub async fn claim_rotation(&self, key_id: i64, now: i64, retry_at: i64) -> Result<bool> {
        on_db!(self, db => {
            let r = sqlx::query(
                "UPDATE keys SET next_rotation_at = $1, updated_at = $2, revision = revision + 1
                 WHERE id = $3 AND is_auto_rotation = TRUE AND status = 'ENABLE'
                   AND next_rotation_at IS NOT NULL AND next_rotation_at <= $4",
            )
            .bind(retry_at)
            .bind(now_ms())
            .bind(key_id)
            .bind(now)
            .execute(&db.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// Gives back a claim this node took with [`Store::claim_rotation`] and
    /// could not carry out (the rotation failed): moves the next rotation
    /// from `claimed_until` to `retry_at`, only if the key still holds this
    /// claim (a rotation that did activate wrote the next period's due
    /// time, and another node's later claim is left alone). `true` when
    /// the claim was given back.
    pub async fn release_rotation_claim(
        &self,
        key_id: i64,
        claimed_until: i64,
        retry_at: i64,
    ) -> Result<bool> {
        on_db!(self, db => {
            let r = sqlx::query(
                "UPDATE keys SET next_rotation_at = $1, updated_at = $2, revision = revision + 1
                 WHERE id = $3 AND next_rotation_at = $4",
            )
            .bind(retry_at)
            .bind(now_ms())
            .bind(key_id)
            .bind(claimed_until)
            .execute(&db.pool)
            .await?;
            Ok(r.rows_affected() == 1)
        })
    }

    /// A listener on the change notifications (PostgreSQL), `None` on SQLite.
    pub async fn change_listener(&self) -> Result<Option<ChangeListener>> {
        match &self.db {
            Db::Sqlite(_) => Ok(None),
            Db::Postgres(db) => {
                let mut l = sqlx::postgres::PgListener::connect_with(&db.pool).await?;
                l.listen(CHANGE_CHANNEL).await?;
                Ok(Some(ChangeListener(l)))
            }
        }
    }
}

/// The PostgreSQL notifications of the change triggers.
pub struct ChangeListener(sqlx::postgres::PgListener);

impl std::fmt::Debug for ChangeListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChangeListener")
    }
}

impl ChangeListener {
    /// The next change as (kind, id); `Ok(None)` when the connection was
    /// lost (notifications sent meanwhile are lost too; the next call
    /// connects and listens again).
    pub async fn next(&mut self) -> Result<Option<(String, String)>> {
        Ok(self.0.try_recv().await?.map(|n| {
            let (kind, id) = n.payload().split_once(':').unwrap_or((n.payload(), ""));
            (kind.to_string(), id.to_string())
        }))
    }
}
