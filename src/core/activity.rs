//! The activity log, written with group commit: callers hand a record to one
//! writer task and wait; the writer takes every record queued so far, writes
//! them in one transaction, and acknowledges them all once it has committed.
//! An operation is answered only after its record is durable.
//!
//! No unlogged crypto: when the record cannot be written (a full or
//! read-only disk, where full means less than
//! [`MIN_FREE_BYTES`](crate::store::MIN_FREE_BYTES) free as for `/readyz`;
//! a lost store file) every operation waiting on the batch
//! is refused with a 503, whatever the token did for it; nothing is dropped
//! silently. The next batch tries again on a fresh connection, so the log
//! works again, without a restart, once the disk does.

use crate::store::ActivitySink;
use crate::telemetry::store as telemetry;
use tokio::sync::oneshot;

use super::audit::AuditChain;
use super::{Engine, Error, KeyUid, Result};
use crate::store::Store;

/// One activity record: a key-management or crypto call, or the
/// service's own scheduled work. The store reads it by column name
/// (`FromRow`).
///
/// Serialized (camelCase, `id` as `seq`) as a record line of an audit
/// export ([`audit::export::Record`](crate::core::audit::export::Record)).
#[derive(Debug, Clone, sqlx::FromRow, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActivityRecord {
    /// Sequence number (in the chain).
    #[serde(rename = "seq")]
    pub id: i64,
    /// Time, ms.
    pub at: i64,
    /// Owning account.
    pub account_id: i64,
    /// Key tag.
    pub key_uid: String,
    /// Key name.
    pub key_name: String,
    /// Key id.
    pub key_id: i64,
    /// Key version used, if any.
    pub version: Option<i64>,
    /// API action (e.g. `Encrypt`).
    pub action: String,
    /// `ACCOUNT`, `TOKEN`, `SIGNATURE_V1`, `SYSTEM`.
    pub auth_type: String,
    /// Access key or token id.
    pub caller: String,
    /// Client address.
    pub source_ip: String,
    /// `SUCCESS` or `FAIL`.
    pub result: String,
    /// HTTP status.
    pub status: i64,
    /// Error details, empty on success.
    pub message: String,
}

/// Largest batch per transaction.
const MAX_BATCH: usize = 512;

/// Why a batch was not recorded: the store's message, and whether the
/// store is unavailable (503) rather than broken (500).
#[derive(Debug, Clone)]
struct Unrecorded {
    unavailable: bool,
    message: String,
}

/// Moves the records already queued into the batch, up to [`MAX_BATCH`]
/// (without waiting for more).
fn drain_queued(
    rx: &flume::Receiver<Pending>,
    rows: &mut Vec<ActivityRecord>,
    acks: &mut Vec<Ack>,
) {
    while rows.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok((row, ack)) => {
                rows.push(row);
                acks.push(ack);
            }
            Err(_) => break,
        }
    }
}

type Ack = oneshot::Sender<std::result::Result<(), Unrecorded>>;

type Pending = (ActivityRecord, Ack);

/// The writer's settings (see [`ActivityLog::start`]).
#[derive(Debug, Clone, Copy)]
pub struct WriterOptions {
    /// `activity_log.fsync`.
    pub fsync: bool,
    /// `activity_log.batch_wait_us`.
    pub batch_wait: std::time::Duration,
    /// `activity_log.batch_min_records`.
    pub batch_min: usize,
    /// `activity_log.batch_siblings`: the writer waits for more records
    /// only while at least this many other logged requests are on their
    /// way (see [`ActivityLog::start`]).
    pub batch_siblings: usize,
    /// `activity_log.writer_thread`: on SQLite, the writer runs on an OS
    /// thread of its own with its own synchronous connection.
    pub thread: bool,
}

/// Logged requests on their way: started (the activity middleware saw a
/// logged call) and whose record is not queued yet. The writer reads it to
/// decide whether waiting for more records can pay (see
/// [`ActivityLog::start`], `batch_siblings`).
#[derive(Debug, Default)]
struct OnTheirWay(std::sync::atomic::AtomicUsize);

impl OnTheirWay {
    fn count(&self) -> usize {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// One logged request on its way to the writer, from the activity
/// middleware's start until its record is queued (or the request ends
/// without one): dropping it takes it off the count.
#[derive(Debug)]
pub struct Coming(Option<std::sync::Arc<OnTheirWay>>);

impl Drop for Coming {
    fn drop(&mut self) {
        if let Some(c) = self.0.take() {
            c.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        }
    }
}

/// Handle to the writer.
#[derive(Clone, Debug)]
pub struct ActivityLog {
    // Declared before `_thread`: the last handle's sender is dropped first,
    // which ends the writer thread that `_thread` then waits for.
    tx: Option<flume::Sender<Pending>>,
    coming: std::sync::Arc<OnTheirWay>,
    // Held for its drop.
    _thread: Option<std::sync::Arc<WriterThread>>,
}

/// The writer's own OS thread: when the last [`ActivityLog`] handle goes,
/// its channel closes and the thread ends; the drop waits for it (up to
/// [`THREAD_EXIT_WAIT`]), so that the thread's last clone of the token port
/// is not released while the process exits.
#[derive(Debug)]
struct WriterThread {
    join: std::sync::Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// How long dropping the last handle waits for the writer thread to end.
const THREAD_EXIT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Drop for WriterThread {
    fn drop(&mut self) {
        let Some(join) = self.join.lock().ok().and_then(|mut j| j.take()) else {
            return;
        };
        let until = std::time::Instant::now() + THREAD_EXIT_WAIT;
        while !join.is_finished() && std::time::Instant::now() < until {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        if join.is_finished() {
            let _ = join.join();
        }
    }
}

/// Answers every caller of a written (or refused) batch, with the batch's
/// metrics and, on a failure, its log line.
fn settle(
    rows: &mut Vec<ActivityRecord>,
    acks: &mut Vec<Ack>,
    res: std::result::Result<(), Unrecorded>,
    took: std::time::Duration,
) {
    // Mean batch size = records / batches (counters: constant memory,
    // unlike a summary).
    telemetry::activity_batch(rows.len(), took, res.is_ok());
    metrics::counter!("hsm_kms_activity_batches_total").increment(1);
    metrics::counter!("hsm_kms_activity_batch_records_total").increment(rows.len() as u64);
    if let Err(e) = &res {
        tracing::error!(error = %e.message, records = rows.len(), "activity log write failed; the operations are refused (no unlogged crypto)");
    }
    rows.clear();
    for ack in acks.drain(..) {
        let _ = ack.send(res.clone());
    }
}

/// A batch's outcome as its callers hear it.
fn unrecorded(e: Error) -> Unrecorded {
    Unrecorded {
        unavailable: matches!(e, Error::Unavailable(_)),
        message: e.to_string(),
    }
}

impl ActivityLog {
    /// Starts the writer on `store`; without `chain` (the activity log is
    /// off) every record is a no-op. With `fsync`, every commit is flushed
    /// to disk (survives power loss); without, commits reach the OS (WAL,
    /// `synchronous=NORMAL`) and survive the process being killed, which is
    /// what an answer waits for.
    ///
    /// Each batch is chained before it is written (by default SHA-256
    /// links and one seal computed in the token for the whole batch; with
    /// `audit.seal = "record"` one token HMAC per record: see
    /// [`AuditChain::write_batch`]);
    /// while no records arrive, the writer wakes every
    /// `audit.checkpoint_every_secs` to sign a checkpoint of records not yet
    /// covered by one.
    ///
    /// `batch_wait` (`activity_log.batch_wait_us`, 2 ms by default): after the
    /// first record of a batch, the writer waits up to this long for more
    /// before it writes (fewer, larger commits: less work per record, a
    /// little more latency). Zero writes what is queued at once.
    ///
    /// `batch_min` (`activity_log.batch_min_records`, 16 by default): the
    /// wait ends as soon as the batch holds this many records (0: only at
    /// the largest batch). Under a fast stream (Encrypt) a batch fills at
    /// once and nothing waits; under a slow one (RSA sign, where a commit
    /// otherwise carries one or two records) the writer waits up to
    /// `batch_wait` and commits fewer, larger batches.
    ///
    /// `batch_siblings` (`activity_log.batch_siblings`, 4 by default): the
    /// writer waits at all only when at least this many other logged
    /// requests are on their way (past the activity middleware's start,
    /// record not yet queued; [`ActivityLog::expect`]), and stops waiting
    /// as soon as none is: a lone client never waits, and a wait ends when
    /// nothing more can come. PostgreSQL's `commit_delay` /
    /// `commit_siblings` make the same trade.
    ///
    /// `thread` (`activity_log.writer_thread`, on by default): on SQLite
    /// the writer is an OS thread of its own with a synchronous connection
    /// ([`crate::store::DirectWriter`]) and runs the batch's token calls
    /// (seal, checkpoint) itself, so a batch costs no hand-off to sqlx's
    /// connection worker or to a token worker; it wakes the batch's
    /// callers once, after the commit. Off, or on PostgreSQL: a task on
    /// the runtime with sqlx's connection (the earlier way).
    pub fn start(store: Store, chain: Option<AuditChain>, opts: WriterOptions) -> Self {
        let coming = std::sync::Arc::new(OnTheirWay::default());
        let Some(chain) = chain else {
            return ActivityLog {
                tx: None,
                coming,
                _thread: None,
            };
        };
        let (tx, rx) = flume::bounded::<Pending>(4096);
        let batching = Batching::new(opts, coming.clone());
        if opts.thread && store.is_sqlite() {
            let runtime = tokio::runtime::Handle::try_current().ok();
            let spawned = std::thread::Builder::new()
                .name("activity-writer".into())
                .spawn(move || {
                    // Whatever the store or the token port spawns when
                    // dropped here finds the runtime.
                    let _rt = runtime.as_ref().map(|h| h.enter());
                    run_thread(store, chain, opts, batching, rx);
                });
            return match spawned {
                Ok(join) => ActivityLog {
                    tx: Some(tx),
                    coming,
                    _thread: Some(std::sync::Arc::new(WriterThread {
                        join: std::sync::Mutex::new(Some(join)),
                    })),
                },
                Err(e) => {
                    // The receiver went with the closure: every record is
                    // refused (500, "writer stopped"), never unlogged.
                    tracing::error!(error = %e, "starting the activity-log writer thread failed");
                    ActivityLog {
                        tx: Some(tx),
                        coming,
                        _thread: None,
                    }
                }
            };
        }
        tokio::spawn(run_task(store, chain, opts, batching, rx));
        ActivityLog {
            tx: Some(tx),
            coming,
            _thread: None,
        }
    }

    /// Counts one logged request on its way to the writer until the
    /// returned guard is dropped ([`ActivityLog::record_coming`] drops it
    /// once the record is queued). With the log off it counts nothing.
    pub fn expect(&self) -> Coming {
        if self.tx.is_none() {
            return Coming(None);
        }
        self.coming
            .0
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Coming(Some(self.coming.clone()))
    }

    /// [`ActivityLog::record`] for a request counted by
    /// [`ActivityLog::expect`]: it leaves the count once its record is
    /// queued, before the commit is waited for.
    pub async fn record_coming(&self, row: ActivityRecord, coming: Coming) -> Result<()> {
        self.queue_and_wait(row, Some(coming)).await
    }

    /// True when records are kept.
    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    /// Queues a record and waits until it is committed.
    pub async fn record(&self, row: ActivityRecord) -> Result<()> {
        self.queue_and_wait(row, None).await
    }

    async fn queue_and_wait(&self, row: ActivityRecord, coming: Option<Coming>) -> Result<()> {
        let Some(tx) = &self.tx else { return Ok(()) };
        let (ack, done) = oneshot::channel();
        telemetry::activity_queued(1);
        // Off the count before the record is in the channel: a writer that
        // sees the record must not still count its sender as on its way
        // (it would wait for a record that never comes). The other order
        // only lets a batch close a moment early.
        drop(coming);
        tx.send_async((row, ack)).await.map_err(|_| {
            telemetry::activity_queued(-1);
            Error::Internal("activity log writer stopped".into())
        })?;
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

/// When the writer waits for more records before a commit, and for how
/// long (see [`ActivityLog::start`]).
struct Batching {
    /// `batch_wait`; zero: never.
    wait: std::time::Duration,
    /// The batch size that ends a wait.
    enough: usize,
    /// Other logged requests on their way that make a wait worth it.
    siblings: usize,
    coming: std::sync::Arc<OnTheirWay>,
}

impl Batching {
    fn new(opts: WriterOptions, coming: std::sync::Arc<OnTheirWay>) -> Self {
        Batching {
            wait: opts.batch_wait,
            enough: match opts.batch_min {
                0 => MAX_BATCH,
                n => n.min(MAX_BATCH),
            },
            siblings: opts.batch_siblings,
            coming,
        }
    }

    /// Whether to wait for more records into a batch of `len`: only with
    /// a wait configured, enough siblings on their way when the wait
    /// starts, and until the batch is large enough or none is left.
    /// With `siblings` 0 the count is not read: the wait runs until the
    /// batch is large enough or the time is over (the way before the count).
    fn starts(&self, len: usize) -> bool {
        !self.wait.is_zero() && len < self.enough && self.coming.count() >= self.siblings
    }

    fn goes_on(&self, len: usize) -> bool {
        len < self.enough && (self.siblings == 0 || self.coming.count() > 0)
    }

    /// The end of the next slice of a wait that ends at `until`: the count
    /// is read again at least this often, so a request that ends without a
    /// record (refused before its caller was known) holds a wait up by at
    /// most [`WAIT_SLICE`], not by the whole wait.
    fn slice(until: std::time::Instant) -> std::time::Instant {
        until.min(std::time::Instant::now() + WAIT_SLICE)
    }
}

/// How often a batch wait reads the count of records on their way again.
const WAIT_SLICE: std::time::Duration = std::time::Duration::from_millis(1);

/// The writer as a task on the runtime, with sqlx's connection.
async fn run_task(
    store: Store,
    chain: AuditChain,
    opts: WriterOptions,
    batching: Batching,
    rx: flume::Receiver<Pending>,
) {
    let mut conn: Option<crate::store::ActivityWriter> = None;
    let mut tail = None;
    let since_ms = crate::core::now_ms();
    let idle =
        std::time::Duration::from_millis(u64::try_from(chain.policy().every_ms).unwrap_or(60_000));
    let mut rows: Vec<ActivityRecord> = Vec::with_capacity(MAX_BATCH);
    let mut acks = Vec::with_capacity(MAX_BATCH);
    loop {
        let (row, ack) = match tokio::time::timeout(idle, rx.recv_async()).await {
            Ok(Ok(p)) => p,
            Ok(Err(_)) => break,
            Err(_) => {
                // Idle: the time trigger of checkpoints.
                if conn.is_none() {
                    conn = store.activity_writer(opts.fsync).await.ok();
                }
                let ok = match conn.as_mut() {
                    Some(c) => match chain.checkpoint_if_due(c, since_ms).await {
                        Ok(_) => true,
                        Err(e) => {
                            tracing::warn!(error = %e, "audit checkpoint failed; retried later");
                            conn = None;
                            false
                        }
                    },
                    None => false,
                };
                telemetry::scheduler_pass(telemetry::Scheduler::AuditCheckpoint, ok);
                continue;
            }
        };
        rows.push(row);
        acks.push(ack);
        // What is queued already counts towards the batch size that ends
        // the wait.
        drain_queued(&rx, &mut rows, &mut acks);
        if batching.starts(rows.len()) {
            let until = std::time::Instant::now() + batching.wait;
            while batching.goes_on(rows.len()) && std::time::Instant::now() < until {
                let slice = tokio::time::Instant::from_std(Batching::slice(until));
                match tokio::time::timeout_at(slice, rx.recv_async()).await {
                    Ok(Ok((row, ack))) => {
                        rows.push(row);
                        acks.push(ack);
                    }
                    // Every sender is gone (the next `recv` ends the writer).
                    Ok(Err(_)) => break,
                    // The slice is over: read the count again.
                    Err(_) => {}
                }
            }
        }
        drain_queued(&rx, &mut rows, &mut acks);
        telemetry::activity_queued(-(rows.len() as i64));
        let writing = std::time::Instant::now();
        if conn.is_none() {
            conn = store.activity_writer(opts.fsync).await.ok();
        }
        // A full disk refuses every batch, not only those whose WAL frames
        // find no space left allocated (Store::check_space).
        let res = match (conn.as_mut(), store.check_space()) {
            (_, Err(e)) => Err(Error::from(e)),
            (Some(c), Ok(())) => chain.write_batch(c, &mut tail, since_ms, &rows).await,
            (None, Ok(())) => Err(Error::Unavailable(
                "the metadata store is unavailable".into(),
            )),
        }
        // A commit into a deleted or replaced file is lost to the next
        // start: not acknowledged.
        .and_then(|()| store.check_file().map_err(Error::from))
        .map_err(unrecorded);
        if res.is_err() {
            // A broken connection is replaced at the next batch, and the
            // tail read again.
            conn = None;
            tail = None;
        }
        settle(&mut rows, &mut acks, res, writing.elapsed());
    }
}

/// The writer thread's connection, opened when there is none (at the start,
/// or after a failed batch dropped it).
fn open_direct<'a>(
    store: &Store,
    fsync: bool,
    conn: &'a mut Option<crate::store::DirectWriter>,
) -> Result<&'a mut crate::store::DirectWriter> {
    if conn.is_none() {
        *conn = store.direct_activity_writer(fsync)?;
    }
    conn.as_mut()
        .ok_or_else(|| Error::Unavailable("the metadata store is unavailable".into()))
}

/// The writer on its own OS thread with its own synchronous SQLite
/// connection: the same batches, order, checks and answers as
/// [`run_task`], with no hand-off between threads inside a batch.
fn run_thread(
    store: Store,
    chain: AuditChain,
    opts: WriterOptions,
    batching: Batching,
    rx: flume::Receiver<Pending>,
) {
    let mut conn: Option<crate::store::DirectWriter> = None;
    let mut tail = None;
    let since_ms = crate::core::now_ms();
    let idle =
        std::time::Duration::from_millis(u64::try_from(chain.policy().every_ms).unwrap_or(60_000));
    let mut rows: Vec<ActivityRecord> = Vec::with_capacity(MAX_BATCH);
    let mut acks = Vec::with_capacity(MAX_BATCH);
    loop {
        let (row, ack) = match rx.recv_timeout(idle) {
            Ok(p) => p,
            Err(flume::RecvTimeoutError::Disconnected) => break,
            Err(flume::RecvTimeoutError::Timeout) => {
                // Idle: the time trigger of checkpoints.
                let ok = open_direct(&store, opts.fsync, &mut conn)
                    .and_then(|c| chain.checkpoint_if_due_direct(c, since_ms).map(|_| ()));
                if let Err(e) = &ok {
                    tracing::warn!(error = %e, "audit checkpoint failed; retried later");
                    conn = None;
                }
                telemetry::scheduler_pass(telemetry::Scheduler::AuditCheckpoint, ok.is_ok());
                continue;
            }
        };
        rows.push(row);
        acks.push(ack);
        drain_queued(&rx, &mut rows, &mut acks);
        if batching.starts(rows.len()) {
            let until = std::time::Instant::now() + batching.wait;
            while batching.goes_on(rows.len()) && std::time::Instant::now() < until {
                match rx.recv_deadline(Batching::slice(until)) {
                    Ok((row, ack)) => {
                        rows.push(row);
                        acks.push(ack);
                    }
                    Err(flume::RecvTimeoutError::Disconnected) => break,
                    // The slice is over: read the count again.
                    Err(flume::RecvTimeoutError::Timeout) => {}
                }
            }
        }
        drain_queued(&rx, &mut rows, &mut acks);
        telemetry::activity_queued(-(rows.len() as i64));
        let writing = std::time::Instant::now();
        let res = store
            .check_space()
            .map_err(Error::from)
            .and_then(|()| open_direct(&store, opts.fsync, &mut conn))
            .and_then(|c| chain.write_batch_direct(c, &mut tail, since_ms, &rows))
            // A commit into a deleted or replaced file is lost to the next
            // start: not acknowledged.
            .and_then(|()| store.check_file().map_err(Error::from))
            .map_err(unrecorded);
        if res.is_err() {
            conn = None;
            tail = None;
        }
        settle(&mut rows, &mut acks, res, writing.elapsed());
    }
}

impl Engine {
    /// True when the activity log is kept.
    pub fn activity_enabled(&self) -> bool {
        self.inner.activity.enabled()
    }

    /// Records one activity and waits until it is durable.
    pub async fn record_activity(&self, row: ActivityRecord) -> Result<()> {
        self.inner.activity.record(row).await
    }

    /// Counts a logged request on its way to the activity log, from the
    /// start of its call, so that the writer can tell whether more records
    /// are coming (see [`ActivityLog::expect`]). Keep the guard until
    /// [`Engine::record_coming_activity`] takes it, or drop it.
    pub fn activity_coming(&self) -> Coming {
        self.inner.activity.expect()
    }

    /// [`Engine::record_activity`] for a request counted by
    /// [`Engine::activity_coming`].
    pub async fn record_coming_activity(&self, row: ActivityRecord, coming: Coming) -> Result<()> {
        self.inner.activity.record_coming(row, coming).await
    }

    /// Records an action of the admin CLI (`auth_type` `ADMIN`, caller
    /// `admin-cli`) in the chained log, and waits until it is durable.
    /// `target` names what was acted on (names and public ids only).
    pub async fn record_admin(&self, action: &str, target: &str) -> Result<()> {
        let row = ActivityRecord {
            id: 0,
            at: crate::core::now_ms(),
            account_id: 0,
            key_uid: String::new(),
            key_name: String::new(),
            key_id: 0,
            version: None,
            action: action.to_string(),
            auth_type: "ADMIN".into(),
            caller: "admin-cli".into(),
            source_ip: String::new(),
            result: "SUCCESS".into(),
            status: 0,
            message: target.to_string(),
        };
        self.record_activity(row).await
    }

    /// Activity of a key owned by `account_id`, oldest first: (rows, total).
    #[allow(clippy::too_many_arguments)]
    pub async fn key_activity(
        &self,
        account_id: i64,
        uid: &KeyUid,
        from: i64,
        to: i64,
        keyword: Option<&str>,
        page_no: i64,
        page_size: i64,
    ) -> Result<(Vec<ActivityRecord>, i64)> {
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
    pub async fn latest_activity(
        &self,
        account_id: i64,
        uid: &KeyUid,
    ) -> Result<Option<ActivityRecord>> {
        let e = self.owned_key(account_id, uid).await?;
        Ok(self.store().latest_activity(&e.key.uid).await?)
    }
}
