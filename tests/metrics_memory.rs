//! The request metrics hold constant memory per route, scraped or not
//! (issue 9 §5: the soak's RSS grew by 3.5 MiB a minute).
//!
//! Two growths, both found with heaptrack on the soak's server and both
//! failing this test on the old code: `metrics-exporter-prometheus` keeps
//! every latency sample until an "upkeep" drains it, and with
//! `install_recorder` only a scrape did (16 bytes a request kept when
//! nobody scraped); and its default summary keeps rolling DDSketches whose
//! bins grow (to 256 KiB each) as the latencies seen spread out. Live heap
//! bytes are counted by a global allocator of this test binary (one test:
//! the recorder is process-wide).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use hsm_kms::api::metrics;

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counter only observes sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

const ROUTES: [&str; 8] = [
    "/kms/v1/keys/{keyTag}/encrypt",
    "/kms/v1/keys/{keyTag}/decrypt",
    "/kms/v1/keys/{keyTag}/sign",
    "/kms/v1/keys/{keyTag}/re-encrypt",
    "/keys/v2/{keyTag}/encrypt",
    "/keys/v2/{keyTag}/decrypt",
    "/keys/v1.0/appkey/{appkey}/symmetric-keys/{keyid}/encrypt",
    "/keys/v1.0/appkey/{appkey}/symmetric-keys/{keyid}/decrypt",
];

/// `n` requests spread over the routes, with latencies from 1 ms up to
/// `1 ms * 10^decades`, spread evenly on a log scale.
fn requests(n: usize, decades: f64) {
    for i in 0..n {
        let x = f64::from((i % 1009) as u32) / 1009.0;
        let secs = 1e-3 * 10f64.powf(x * decades);
        metrics::record_request("POST", ROUTES[i % ROUTES.len()], 200, secs);
    }
}

#[test]
fn request_latencies_are_not_kept_without_a_scrape() {
    assert!(metrics::handle().is_some(), "the recorder is installed");
    // Every label set exists after this, with latencies of 1 to 10 ms.
    requests(20_000, 1.0);
    let before = LIVE.load(Ordering::Relaxed);
    // The same routes, as a slow minute makes them: 1 ms to 10 s.
    requests(200_000, 4.0);
    let grown = LIVE.load(Ordering::Relaxed) - before;
    assert!(
        grown < 256 << 10,
        "{grown} bytes more after 200,000 requests on the same routes with no scrape of /metrics"
    );
}
