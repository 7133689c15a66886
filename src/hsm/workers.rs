//! Fixed token worker threads, one set per mechanism class, fed by a queue.
//!
//! Why not `spawn_blocking` behind a semaphore (the earlier dispatch, kept as
//! `hsm.dispatch = "blocking_pool"` for comparison): there the permit was
//! released by the async task after the blocking call returned, so between
//! two token calls the next request had to wait for an executor thread to be
//! scheduled, woken, and to hop to the blocking pool. On a 2-core machine
//! where the token's own threads keep both cores busy (RSA), that gap left
//! the token idle about half of the time (RSA sign ran at 0.44x the raw
//! 2-thread rate). Here a worker that finishes a call takes the next queued
//! one at once, without going through the executor: with a deep queue it
//! runs several requests' token calls per wake-up (up to [`BATCH`]).
//!
//! The number of workers of a class is its concurrency budget
//! (`hsm.symmetric_concurrency`, `hsm.asymmetric_concurrency`).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, RwLock};

use super::OpClass;
use crate::telemetry::token::{self as token_metrics, Lane as TokenLane};

/// One queued token call; it reports its result itself (a oneshot channel).
pub(super) type Job = Box<dyn FnOnce() + Send>;

/// Most jobs a worker takes from the queue per wake-up.
pub(super) const BATCH: usize = 8;

struct Lane {
    queue: Mutex<LaneState>,
    ready: Condvar,
    /// Workers serving the lane: a wake-up takes its fair share of the
    /// queue, so that no worker idles while another runs a long batch.
    workers: usize,
}

struct LaneState {
    jobs: VecDeque<Job>,
    closed: bool,
    /// Workers waiting for a job.
    idle: usize,
}

/// The worker threads of both classes.
pub(super) struct Workers {
    symmetric: Arc<Lane>,
    asymmetric: Arc<Lane>,
    /// The [`Hsm`](super::Hsm)'s gate: workers (and inline calls,
    /// [`Workers::inline`]) hold it shared around each job; test hooks take
    /// it alone to act between token calls (`Hsm::quiesced`).
    gate: Arc<RwLock<()>>,
}

impl Workers {
    /// Starts `sym` symmetric and `asym` asymmetric workers, each holding
    /// `gate` shared around each job.
    pub(super) fn start(
        sym: usize,
        asym: usize,
        gate: Arc<RwLock<()>>,
    ) -> std::io::Result<Workers> {
        let lane = |workers: usize| {
            Arc::new(Lane {
                queue: Mutex::new(LaneState {
                    jobs: VecDeque::new(),
                    closed: false,
                    idle: 0,
                }),
                ready: Condvar::new(),
                workers: workers.max(1),
            })
        };
        let w = Workers {
            symmetric: lane(sym),
            asymmetric: lane(asym),
            gate,
        };
        for (lane, n, name, class) in [
            (&w.symmetric, sym, "hsm-sym", TokenLane::Symmetric),
            (&w.asymmetric, asym, "hsm-asym", TokenLane::Asymmetric),
        ] {
            for i in 0..n.max(1) {
                let lane = lane.clone();
                let gate = w.gate.clone();
                std::thread::Builder::new()
                    .name(format!("{name}-{i}"))
                    .spawn(move || work(&lane, &gate, class))?;
            }
        }
        Ok(w)
    }

    /// Queues `job` on the lane of `class`.
    pub(super) fn submit(&self, class: OpClass, job: Job) {
        let (lane, label) = match class {
            OpClass::Symmetric => (&self.symmetric, TokenLane::Symmetric),
            OpClass::Asymmetric => (&self.asymmetric, TokenLane::Asymmetric),
        };
        let mut q = lane.queue.lock().unwrap_or_else(|p| p.into_inner());
        q.jobs.push_back(job);
        // More jobs queued than workers waiting: this one waits for a busy
        // worker (a concurrency permit).
        if q.jobs.len() > q.idle {
            token_metrics::permit_waited(label);
        }
        token_metrics::queue_depth(label, q.jobs.len());
        drop(q);
        lane.ready.notify_one();
    }

    /// Runs `f` (a short token call) on the calling thread, as a worker
    /// runs a job: inside the gate that [`Workers::exclusive`] closes.
    pub(super) fn inline<T>(&self, f: impl FnOnce() -> T) -> T {
        let _g = self.gate.read().unwrap_or_else(|p| p.into_inner());
        f()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for lane in [&self.symmetric, &self.asymmetric] {
            lane.queue.lock().unwrap_or_else(|p| p.into_inner()).closed = true;
            lane.ready.notify_all();
        }
    }
}

fn work(lane: &Lane, gate: &RwLock<()>, class: TokenLane) {
    let mut batch: Vec<Job> = Vec::with_capacity(BATCH);
    loop {
        {
            let mut q = lane.queue.lock().unwrap_or_else(|p| p.into_inner());
            while q.jobs.is_empty() {
                if q.closed {
                    return;
                }
                q.idle += 1;
                q = lane.ready.wait(q).unwrap_or_else(|p| p.into_inner());
                q.idle -= 1;
            }
            let n = q.jobs.len().div_ceil(lane.workers).min(BATCH);
            batch.extend(q.jobs.drain(..n));
            token_metrics::queue_depth(class, q.jobs.len());
            // Jobs left behind: let another idle worker take them now.
            if !q.jobs.is_empty() {
                lane.ready.notify_one();
            }
        }
        token_metrics::worker_batch(batch.len());
        for job in batch.drain(..) {
            let _g = gate.read().unwrap_or_else(|p| p.into_inner());
            // A panicking job drops its result channel (the caller sees a
            // worker error); the worker lives on.
            let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
        }
    }
}
