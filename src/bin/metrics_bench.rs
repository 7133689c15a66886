//! `hsm-kms-metrics-bench` (built with `--features bench`): what the request
//! metrics cost per request, before and after issue 14, in one process,
//! in alternating rounds.
//!
//! - `facade`: the request path of `/metrics` before issue 14, as it was:
//!   the `metrics` macros with the method, route and status as owned label
//!   strings (a key built and hashed per call), a Prometheus histogram of
//!   the exporter (each sample queued until an upkeep), an upkeep every
//!   4,096 requests;
//! - `telemetry`: this crate's path ([`hsm_kms::api::metrics::record_request`]:
//!   one look-up of the route template, atomic adds on the route's and the
//!   operation's histograms and the status counter).
//!
//! Both on one thread and on two threads at once, over 8 route templates.
//! Usage: `hsm-kms-metrics-bench [--rounds N] [--requests N]`; prints one
//! line per round and configuration, then the medians (ns per request) and
//! their ratio.
#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

const ROUTES: [&str; 8] = [
    "/kms/v1/keys/{key_tag}/encrypt",
    "/kms/v1/keys/{key_tag}/decrypt",
    "/kms/v1/keys/{key_tag}/sign",
    "/kms/v1/keys/{key_tag}/re-encrypt",
    "/keys/v2/{key_tag}/encrypt",
    "/keys/v2/{key_tag}/decrypt",
    "/keymanager/v1.2/appkey/{appkey}/symmetric-keys/{keyid}/encrypt",
    "/keymanager/v1.2/appkey/{appkey}/symmetric-keys/{keyid}/decrypt",
];

static RECORDED: AtomicU64 = AtomicU64::new(0);

/// The pre-issue-14 `record_request`, verbatim but for the handle.
fn facade(
    handle: &metrics_exporter_prometheus::PrometheusHandle,
    method: &str,
    route: &str,
    status: u16,
    secs: f64,
) {
    let (method, route) = (method.to_string(), route.to_string());
    metrics::counter!("bench_requests_total", "method" => method.clone(), "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("bench_request_duration_seconds", "method" => method, "route" => route)
        .record(secs);
    if RECORDED.fetch_add(1, Ordering::Relaxed) % 4096 == 4095 {
        handle.run_upkeep();
    }
}

fn run(threads: usize, requests: usize, f: &(dyn Fn(usize) + Sync)) -> f64 {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            s.spawn(move || {
                for i in 0..requests {
                    f(i * threads + t);
                }
            });
        }
    });
    start.elapsed().as_nanos() as f64 / (requests * threads) as f64
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> anyhow::Result<()> {
    let mut rounds = 5usize;
    let mut requests = 200_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let v = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))?;
        match a.as_str() {
            "--rounds" => rounds = v.parse()?,
            "--requests" => requests = v.parse()?,
            other => anyhow::bail!("unknown argument {other}"),
        }
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("bench_request_duration_seconds".into()),
            &[
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ],
        )?
        .install_recorder()?;
    let secs = |i: usize| 1e-4 * (1 + i % 97) as f64;
    let old = |i: usize| facade(&handle, "POST", ROUTES[i % 8], 200, secs(i));
    let new = |i: usize| hsm_kms::api::metrics::record_request("POST", ROUTES[i % 8], 200, secs(i));
    println!(
        "request metrics, ns per request; {rounds} alternating rounds of {requests} requests per thread; {} cores",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    for threads in [1usize, 2] {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for round in 1..=rounds {
            let x = run(threads, requests, &old);
            let y = run(threads, requests, &new);
            println!("round {round} threads={threads} facade={x:.0} telemetry={y:.0}");
            a.push(x);
            b.push(y);
        }
        let (ma, mb) = (median(&mut a), median(&mut b));
        println!(
            "median threads={threads} facade_ns={ma:.0} telemetry_ns={mb:.0} ratio_facade_over_telemetry={:.1}",
            ma / mb
        );
    }
    Ok(())
}
