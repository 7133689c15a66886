//! The metadata store, the activity log and the schedulers: store call
//! latency by repository and engine, store errors by kind, the activity
//! log's queue, batches, commit latency, failed and dropped records, and
//! each scheduler's last successful pass.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::{header, sample, Counter, Gauge, Histogram};

/// The store's repositories (its source files), the `repo` label.
const REPOS: [&str; 9] = [
    "accounts",
    "audit",
    "invocations",
    "keys",
    "naver",
    "nhn",
    "nodes",
    "stats",
    "store",
];
/// The engines, the `engine` label.
const ENGINES: [&str; 2] = ["sqlite", "postgres"];

static CALL_DURATION: [[Histogram; 2]; REPOS.len()] =
    [const { [const { Histogram::latency() }; 2] }; REPOS.len()];

/// The repository of a store module path (`hsm_kms::store::keys` →
/// `keys`; the store's own module → `store`).
fn repo_slot(module: &str) -> usize {
    let last = module.rsplit("::").next().unwrap_or("");
    REPOS
        .iter()
        .position(|r| *r == last)
        .unwrap_or(REPOS.len() - 1)
}

/// Times one store call (a repository method, its statements and its
/// transaction) until dropped. Made by the store's `on_db!`.
#[derive(Debug)]
pub struct StoreCall {
    slot: (usize, usize),
    start: Instant,
}

impl StoreCall {
    /// Starts timing a call of the repository in `module` on `engine`
    /// (0 SQLite, 1 PostgreSQL).
    pub fn start(module: &'static str, engine: usize) -> Self {
        StoreCall {
            slot: (repo_slot(module), engine.min(1)),
            start: Instant::now(),
        }
    }
}

impl Drop for StoreCall {
    fn drop(&mut self) {
        CALL_DURATION[self.slot.0][self.slot.1].observe(self.start.elapsed());
    }
}

/// Kinds of store errors, the `kind` label.
#[derive(Debug, Clone, Copy)]
pub enum StoreErrorKind {
    /// The store cannot be used now (I/O, full disk, pool timeout, a
    /// database server gone): requests answer 503.
    Unavailable = 0,
    /// A uniqueness constraint refused a write (names taken, races the
    /// store settles).
    Conflict = 1,
    /// Any other database error.
    Other = 2,
}

static ERRORS: [Counter; 3] = [const { Counter::new() }; 3];

/// Counts a database error.
pub fn store_error(kind: StoreErrorKind) {
    ERRORS[kind as usize].inc();
}

static ACTIVITY_QUEUE: Gauge = Gauge::new();
static ACTIVITY_BATCH: Histogram = Histogram::sizes();
static ACTIVITY_COMMIT: Histogram = Histogram::latency();
static ACTIVITY_FAILED: Counter = Counter::new();
static ACTIVITY_DROPPED: Counter = Counter::new();

/// Records queued for the activity-log writer changed by `n`.
pub fn activity_queued(n: i64) {
    ACTIVITY_QUEUE.add(n);
}

/// One activity-log batch written (or not): its size and how long the
/// chain and commit took.
pub fn activity_batch(records: usize, took: Duration, ok: bool) {
    ACTIVITY_BATCH.observe_value(records as u64);
    ACTIVITY_COMMIT.observe(took);
    if !ok {
        ACTIVITY_FAILED.add(records as u64);
    }
}

/// A record of work already done that could not be written (scheduled
/// work: the next pass does not redo it). Must stay 0.
pub fn activity_dropped() {
    ACTIVITY_DROPPED.inc();
}

/// The schedulers, the `scheduler` label.
#[derive(Debug, Clone, Copy)]
pub enum Scheduler {
    /// Automatic rotation and scheduled destruction (`server.scheduler_interval_secs`).
    KeyLifecycle = 0,
    /// Audit checkpoints signed while the log is idle
    /// (`audit.checkpoint_every_secs`).
    AuditCheckpoint = 1,
}

const SCHEDULERS: [&str; 2] = ["key_lifecycle", "audit_checkpoint"];
static LAST_SUCCESS: [Gauge; 2] = [const { Gauge::new() }; 2];
static PASSES: [[Counter; 2]; 2] = [const { [const { Counter::new() }; 2] }; 2];
static ITEMS: [Counter; 2] = [const { Counter::new() }; 2];

/// Records one pass of a scheduler.
pub fn scheduler_pass(s: Scheduler, ok: bool) {
    PASSES[s as usize][usize::from(!ok)].inc();
    if ok {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        LAST_SUCCESS[s as usize].set(i64::try_from(now).unwrap_or(i64::MAX));
    }
}

/// Keys the key-lifecycle scheduler rotated (0) or destroyed (1).
pub fn scheduler_items(rotated: usize, destroyed: usize) {
    ITEMS[0].add(rotated as u64);
    ITEMS[1].add(destroyed as u64);
}

pub(super) fn render(out: &mut String) {
    header(
        out,
        "hsm_kms_store_call_duration_seconds",
        "histogram",
        "Latency of store calls (one repository method: its statements and transaction) by repository and engine.",
    );
    for (r, repo) in REPOS.iter().enumerate() {
        for (e, engine) in ENGINES.iter().enumerate() {
            let h = &CALL_DURATION[r][e];
            if h.count() == 0 {
                continue;
            }
            h.write(
                out,
                "hsm_kms_store_call_duration_seconds",
                &format!("repo=\"{repo}\",engine=\"{engine}\""),
            );
        }
    }
    header(
        out,
        "hsm_kms_store_errors_total",
        "counter",
        "Database errors by kind: unavailable (503 to callers), conflict (uniqueness), other.",
    );
    for (i, kind) in ["unavailable", "conflict", "other"].iter().enumerate() {
        sample(
            out,
            "hsm_kms_store_errors_total",
            &format!("kind=\"{kind}\""),
            ERRORS[i].get(),
        );
    }
    header(
        out,
        "hsm_kms_activity_queue_depth",
        "gauge",
        "Activity records waiting for the log writer (each holds back one answer).",
    );
    sample(
        out,
        "hsm_kms_activity_queue_depth",
        "",
        ACTIVITY_QUEUE.get().max(0),
    );
    header(
        out,
        "hsm_kms_activity_batch_size",
        "histogram",
        "Records per activity-log batch (one chained, committed transaction).",
    );
    ACTIVITY_BATCH.write(out, "hsm_kms_activity_batch_size", "");
    header(
        out,
        "hsm_kms_activity_commit_duration_seconds",
        "histogram",
        "Time to chain and commit one activity-log batch (the token's HMAC and the store's commit).",
    );
    ACTIVITY_COMMIT.write(out, "hsm_kms_activity_commit_duration_seconds", "");
    header(
        out,
        "hsm_kms_activity_failed_records_total",
        "counter",
        "Activity records whose batch could not be written: their operations were refused (503), never answered unlogged.",
    );
    sample(
        out,
        "hsm_kms_activity_failed_records_total",
        "",
        ACTIVITY_FAILED.get(),
    );
    header(
        out,
        "hsm_kms_activity_dropped_records_total",
        "counter",
        "Records of scheduled work already done that could not be written. Must stay 0.",
    );
    sample(
        out,
        "hsm_kms_activity_dropped_records_total",
        "",
        ACTIVITY_DROPPED.get(),
    );
    header(
        out,
        "hsm_kms_scheduler_last_success_timestamp_seconds",
        "gauge",
        "Unix time of each scheduler's last successful pass (0: none yet).",
    );
    for (i, s) in SCHEDULERS.iter().enumerate() {
        sample(
            out,
            "hsm_kms_scheduler_last_success_timestamp_seconds",
            &format!("scheduler=\"{s}\""),
            LAST_SUCCESS[i].get(),
        );
    }
    header(
        out,
        "hsm_kms_scheduler_passes_total",
        "counter",
        "Scheduler passes by result (ok, error).",
    );
    for (i, s) in SCHEDULERS.iter().enumerate() {
        for (j, result) in ["ok", "error"].iter().enumerate() {
            sample(
                out,
                "hsm_kms_scheduler_passes_total",
                &format!("scheduler=\"{s}\",result=\"{result}\""),
                PASSES[i][j].get(),
            );
        }
    }
    header(
        out,
        "hsm_kms_scheduler_items_total",
        "counter",
        "Keys the key-lifecycle scheduler rotated or destroyed.",
    );
    for (i, what) in ["rotated", "destroyed"].iter().enumerate() {
        sample(
            out,
            "hsm_kms_scheduler_items_total",
            &format!("action=\"{what}\""),
            ITEMS[i].get(),
        );
    }
}
