//! The service's own Prometheus families (issue 14): request and dialect
//! operation latency, the token (PKCS#11 calls, errors, sessions, queues,
//! logins, faults, handle map), the store and the activity log, the
//! schedulers, and security signals. `docs/operations.md` lists every
//! family with its meaning and what to do when it moves.
//!
//! Why not the `metrics` facade for these: on the hot path it hashes the
//! metric key (name and label strings) at every call and its Prometheus
//! histograms keep each sample until an upkeep drains it. Here every
//! series is a set of atomic counters reached without a look-up
//! ([`Histogram`]: one atomic add for the bucket and one for the sum), its
//! labels are `&'static str`s of a bounded set, and the text is written
//! only when `/metrics` is scraped ([`render`]). Families whose labels are
//! a bounded enum are written with every label value, zeros included, so
//! that rate() and alert expressions have data before the first event.
//!
//! Leaf module: nothing here calls into the rest of the crate; `hsm`,
//! `store`, `core` and `api` report into it.

pub mod http;
pub mod keys;
pub mod security;
pub mod store;
pub mod token;

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of every latency histogram's buckets: 100 us to
/// 10 s. A token call takes tens of microseconds (AES) to milliseconds
/// (RSA); a request a few hundred microseconds to seconds when the token or
/// the store stalls.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

/// [`LATENCY_BUCKETS`] in nanoseconds, the unit latency histograms count in.
const LATENCY_NANOS: [u64; 16] = [
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// Bucket bounds of size histograms (token worker batches, activity-log
/// batches): powers of two up to the activity log's largest batch.
const SIZE_BOUNDS: [u64; 10] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512];

/// Most buckets a [`Histogram`] has (the `+Inf` one not counted).
const MAX_BUCKETS: usize = 16;

/// A Prometheus histogram with fixed buckets, in atomic counters: constant
/// memory, no allocation and no lock when observed.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds of the buckets, in the histogram's unit.
    bounds: &'static [u64],
    /// One rendered unit, in the exposed unit (1e-9 for nanoseconds shown
    /// as seconds).
    scale: f64,
    /// Observations per bucket (not cumulative); the last is `+Inf`.
    counts: [AtomicU64; MAX_BUCKETS + 1],
    /// Sum of the observations, in the histogram's unit.
    sum: AtomicU64,
}

impl Histogram {
    /// A latency histogram ([`LATENCY_BUCKETS`]), observed with
    /// [`Histogram::observe`].
    pub const fn latency() -> Self {
        Histogram {
            bounds: &LATENCY_NANOS,
            scale: 1e-9,
            counts: [const { AtomicU64::new(0) }; MAX_BUCKETS + 1],
            sum: AtomicU64::new(0),
        }
    }

    /// A size histogram (buckets 1, 2, 4, ... 512), observed with
    /// [`Histogram::observe_value`].
    pub const fn sizes() -> Self {
        Histogram {
            bounds: &SIZE_BOUNDS,
            scale: 1.0,
            counts: [const { AtomicU64::new(0) }; MAX_BUCKETS + 1],
            sum: AtomicU64::new(0),
        }
    }

    /// Records one duration (latency histograms).
    pub fn observe(&self, d: Duration) {
        self.observe_value(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
    }

    /// Records one value in the histogram's unit.
    pub fn observe_value(&self, v: u64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum.fetch_add(v, Ordering::Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.counts[..=self.bounds.len()]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of series `labels`
    /// (`a="x",b="y"`, or empty).
    fn write(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0u64;
        for (i, bound) in self.bounds.iter().enumerate() {
            cumulative += self.counts[i].load(Ordering::Relaxed);
            let le = *bound as f64 * self.scale;
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{le}\"}} {cumulative}"
            );
        }
        cumulative += self.counts[self.bounds.len()].load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cumulative}"
        );
        let sum = self.sum.load(Ordering::Relaxed) as f64 * self.scale;
        if labels.is_empty() {
            let _ = writeln!(out, "{name}_sum {sum}");
            let _ = writeln!(out, "{name}_count {cumulative}");
        } else {
            let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
        }
    }
}

/// A counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Zero.
    pub const fn new() -> Self {
        Counter(AtomicU64::new(0))
    }
    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }
    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A gauge of whole numbers.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Zero.
    pub const fn new() -> Self {
        Gauge(AtomicI64::new(0))
    }
    /// Adds `n` (negative to subtract).
    pub fn add(&self, n: i64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    /// Sets the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }
    /// The value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Writes `# HELP` and `# TYPE` of a family.
pub(crate) fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Writes one sample.
pub(crate) fn sample(out: &mut String, name: &str, labels: &str, value: impl std::fmt::Display) {
    if labels.is_empty() {
        let _ = writeln!(out, "{name} {value}");
    } else {
        let _ = writeln!(out, "{name}{{{labels}}} {value}");
    }
}

/// A label value with `\`, `"` and line feeds escaped, as the exposition
/// format wants them.
pub(crate) fn escape(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(v);
    }
    std::borrow::Cow::Owned(
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

/// A short, stable fingerprint of an identifier (a key tag, a key id) for
/// logs and opt-in labels: the first 6 bytes of its SHA-256, in hex. It
/// tells identifiers apart without naming them.
pub fn fingerprint(id: &str) -> String {
    use sha2::Digest as _;
    let h = sha2::Sha256::digest(id.as_bytes());
    h[..6].iter().fold(String::with_capacity(12), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// Writes every family of this module (the text after the `metrics`
/// exporter's own families on `/metrics`).
pub fn render(out: &mut String) {
    http::render(out);
    token::render(out);
    store::render(out);
    security::render(out);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_bounded() {
        let h = Histogram::latency();
        h.observe(Duration::from_micros(50));
        h.observe(Duration::from_micros(100));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.write(&mut out, "x", "a=\"b\"");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.0001\"} 2\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"0.005\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"10\"} 3\n"), "{out}");
        assert!(out.contains("x_bucket{a=\"b\",le=\"+Inf\"} 4\n"), "{out}");
        assert!(out.contains("x_count{a=\"b\"} 4\n"), "{out}");
        assert_eq!(h.count(), 4);
        let s = Histogram::sizes();
        s.observe_value(3);
        s.observe_value(1000);
        let mut out = String::new();
        s.write(&mut out, "y", "");
        assert!(out.contains("y_bucket{le=\"4\"} 1\n"), "{out}");
        assert!(out.contains("y_sum 1003\n"), "{out}");
    }

    #[test]
    fn fingerprints_are_short_and_stable() {
        assert_eq!(fingerprint("abc"), "ba7816bf8f01");
        assert_eq!(escape("a\"b"), "a\\\"b");
    }
}
