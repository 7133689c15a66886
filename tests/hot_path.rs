//! The hot-path levers of issue 10 §2, for correctness (their speed is in
//! `scripts/bench.sh`): the AES-GCM invocation limit per key version, host
//! IVs and the earlier blocking-pool dispatch (the default worker dispatch
//! serves every other test), short symmetric calls inline or on the
//! workers (`hsm.inline_symmetric`), the activity log's INSERTs with and without
//! the statement cache and with a batch wait, the lean and the earlier
//! per-request path, and the raw benchmark's session-object key.
// The engine's store and HSM ports are public to tests only with the
// `test-hooks` feature (scripts/test.sh builds with --all-features).
#![cfg(feature = "test-hooks")]

mod common;

use common::{b64, unb64, Kms};
use hsm_kms::hsm::{Dispatch, IvSource};
use serde_json::json;

#[tokio::test]
async fn gcm_invocation_limit_refuses_encrypt_until_rotation() {
    let kms = Kms::start_with(|c| c.hsm.gcm_invocation_limit = 3).await;
    let tag = kms.create_key("counted", "AES256", json!({})).await;
    let mut cts = Vec::new();
    for i in 0..3u8 {
        cts.push(kms.encrypt(&tag, &[i], None).await);
    }
    let r = kms
        .op(&tag, "encrypt", json!({"plaintext": b64(b"fourth")}))
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert!(
        r.body.to_string().contains("invocation limit"),
        "{}",
        r.body
    );
    // Decrypt is not limited.
    for (i, ct) in cts.iter().enumerate() {
        assert_eq!(kms.decrypt_ok(&tag, ct, None).await, [i as u8]);
    }
    // The count is durable before any invocation is used: the store holds
    // the reservation of version 1 (capped at the limit).
    let v1 = kms
        .engine
        .key_entry(&hsm_kms::core::KeyUid::from(&tag))
        .await
        .unwrap()
        .versions[0]
        .cka_id
        .clone();
    let reserved: i64 =
        sqlx::query_scalar("SELECT reserved FROM gcm_invocations WHERE cka_id = $1")
            .bind(&v1)
            .fetch_one(&kms.db().await)
            .await
            .unwrap();
    assert_eq!(reserved, 3);
    // A rotation makes a fresh version with its own count.
    kms.op(&tag, "rotate", json!(null)).await.ok();
    let ct = kms.encrypt(&tag, b"after rotation", None).await;
    assert!(ct.starts_with("ncpkms:v2:"), "{ct}");
    assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, b"after rotation");
    // Convergent keys count too.
    let conv = kms
        .create_key("conv", "AES256", json!({"isConvergent": true}))
        .await;
    for _ in 0..3 {
        kms.encrypt(&conv, b"same", Some(b"ctx")).await;
    }
    let r = kms
        .op(
            &conv,
            "encrypt",
            json!({"plaintext": b64(b"same"), "context": b64(b"ctx")}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
}

/// Two nodes on one store (two `Store` handles, each with its own pool)
/// reserving invocation blocks of one key version at once get disjoint
/// blocks: each reservation is one atomic increment in the store, not a
/// read followed by a write (where both nodes could read the same count
/// and hand out the same invocations).
#[tokio::test]
async fn gcm_reservations_of_two_nodes_never_overlap() {
    let kms = Kms::start().await;
    let open = || {
        hsm_kms::store::Store::open(
            &kms.config.store.url,
            std::path::Path::new(&kms.config.store.data_dir),
        )
    };
    let (a, b) = (open().await.unwrap(), open().await.unwrap());
    let cka_id = b"shared-version".to_vec();
    const BLOCK: u64 = 7;
    const PER_NODE: usize = 20;
    let mut tasks = tokio::task::JoinSet::new();
    for node in [a, b] {
        for _ in 0..PER_NODE {
            let (node, id) = (node.clone(), cka_id.clone());
            tasks.spawn(async move { node.gcm_reserve_next(&id, BLOCK).await.unwrap() });
        }
    }
    let mut ends = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ends.push(r.unwrap());
    }
    ends.sort_unstable();
    // Every block (end - BLOCK, end] handed out once: the ends are
    // exactly BLOCK, 2 BLOCK, ..., 40 BLOCK.
    let want: Vec<u64> = (1..=2 * PER_NODE as u64).map(|i| i * BLOCK).collect();
    assert_eq!(ends, want);
    let reserved: i64 =
        sqlx::query_scalar("SELECT reserved FROM gcm_invocations WHERE cka_id = $1")
            .bind(&cka_id)
            .fetch_one(&kms.db().await)
            .await
            .unwrap();
    assert_eq!(reserved as u64, 2 * PER_NODE as u64 * BLOCK);
}

/// AES encrypt and decrypt (random and convergent IVs) and the activity
/// log's seal through a server with `hsm.inline_symmetric` `inline`;
/// returns the server's count of inline token calls.
async fn symmetric_round_trips(inline: bool) -> f64 {
    let kms = Kms::start_with(|c| {
        c.hsm.inline_symmetric = inline;
        c.activity_log.enabled = true;
    })
    .await;
    let tag = kms.create_key("inline", "AES256", json!({})).await;
    let conv = kms
        .create_key("inline-conv", "AES256", json!({"isConvergent": true}))
        .await;
    let before = kms.metric("hsm_kms_token_inline_calls_total").await;
    // Several requests at once: the calls meet on the executor's threads
    // and share the session pool.
    let tasks: Vec<_> = (0..16u8)
        .map(|i| {
            let (kms, tag) = (&kms, &tag);
            async move {
                let ct = kms.encrypt(tag, &[i; 9], None).await;
                assert_eq!(kms.decrypt_ok(tag, &ct, None).await, [i; 9]);
                ct
            }
        })
        .collect();
    let cts = join_all(tasks).await;
    let ivs: std::collections::HashSet<Vec<u8>> = cts
        .iter()
        .map(|ct| unb64(ct.strip_prefix("ncpkms:v1:").unwrap())[..12].to_vec())
        .collect();
    assert_eq!(ivs.len(), cts.len(), "an IV repeated");
    let a = kms.encrypt(&conv, b"same", Some(b"ctx")).await;
    let b = kms.encrypt(&conv, b"same", Some(b"ctx")).await;
    assert_eq!(a, b, "convergent encryption is deterministic");
    assert_eq!(kms.decrypt_ok(&conv, &a, Some(b"ctx")).await, b"same");
    // Every acknowledged request's record is in the log.
    let logged: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM activity_logs WHERE action IN ('Encrypt', 'Decrypt')",
    )
    .fetch_one(&kms.db().await)
    .await
    .unwrap();
    assert!(logged >= 2 * 16 + 3, "{logged} records");
    kms.metric("hsm_kms_token_inline_calls_total").await - before
}

/// `hsm.inline_symmetric = true` (off by default): AES-GCM calls and the
/// log's seal run on the request's own thread, and give what the workers
/// give (decryptable ciphertexts, fresh IVs, deterministic convergent
/// ciphertexts, every record logged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_symmetric_calls_run_inline() {
    let inline = symmetric_round_trips(true).await;
    // 32 encrypt/decrypt, 3 convergent (HMAC + AES in one call), seals.
    assert!(inline >= 35.0, "{inline} inline calls");
}

/// `hsm.inline_symmetric = false`: the same calls all go to the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_symmetric_calls_on_the_workers_when_inline_is_off() {
    assert_eq!(symmetric_round_trips(false).await, 0.0);
}

#[tokio::test]
async fn host_ivs_over_the_blocking_pool_dispatch() {
    let kms = Kms::start_with(|c| {
        c.hsm.gcm_iv_source = IvSource::Host;
        c.hsm.dispatch = Dispatch::BlockingPool;
    })
    .await;
    let tag = kms.create_key("host-iv", "AES256", json!({})).await;
    let mut ivs = std::collections::HashSet::new();
    for i in 0..32u8 {
        let ct = kms.encrypt(&tag, &[i; 7], None).await;
        let blob = unb64(ct.strip_prefix("ncpkms:v1:").unwrap());
        assert!(ivs.insert(blob[..12].to_vec()), "an IV repeated");
        assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, [i; 7]);
    }
    let ec = kms.create_key("ecdsa-key", "ECDSA", json!({})).await;
    let s = kms.op(&ec, "sign", json!({"data": b64(b"d")})).await;
    let sig = s.ok()["signature"].as_str().unwrap().to_string();
    let v = kms
        .op(&ec, "verify", json!({"data": b64(b"d"), "signature": sig}))
        .await;
    assert_eq!(v.ok()["valid"], true);
}

/// Runs `futs` at once on this task; their outputs in order.
async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<std::pin::Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future completed"))
        .collect()
}

/// Encrypt calls in waves of 1, 37 and 100 at once (batches of many
/// sizes), then checks every record: one per call, numbered without gaps,
/// each field where it belongs, and the chain intact.
async fn records_of_concurrent_calls(kms: &Kms) {
    let tag = kms.create_key("stmt", "AES256", json!({})).await;
    let mut calls = 0usize;
    for wave in [1usize, 37, 100] {
        let replies = join_all(
            (0..wave)
                .map(|i| kms.op(&tag, "encrypt", json!({"plaintext": b64(&[i as u8; 5])})))
                .collect(),
        )
        .await;
        for r in &replies {
            r.ok();
        }
        calls += wave;
    }
    #[allow(clippy::type_complexity)]
    let rows: Vec<(
        i64,
        String,
        String,
        String,
        String,
        String,
        String,
        i64,
        String,
    )> = sqlx::query_as(
        "SELECT id, key_uid, key_name, action, auth_type, caller, source_ip, status, result \
             FROM activity_logs ORDER BY id",
    )
    .fetch_all(&kms.db().await)
    .await
    .unwrap();
    let encrypts: Vec<_> = rows.iter().filter(|r| r.3 == "Encrypt").collect();
    assert_eq!(encrypts.len(), calls, "one record per Encrypt");
    for (i, r) in rows.iter().enumerate() {
        assert_eq!(r.0, rows[0].0 + i as i64, "sequence numbers without gaps");
    }
    for r in encrypts {
        assert_eq!(r.1, tag, "key_uid");
        assert_eq!(r.2, "stmt", "key_name");
        assert_eq!(r.4, "ACCOUNT", "auth_type");
        assert_eq!(r.5, kms.access_key, "caller");
        assert_eq!(r.6, "127.0.0.1", "source_ip");
        assert_eq!((r.7, r.8.as_str()), (200, "SUCCESS"), "status, result");
    }
    let report = hsm_kms::core::audit::verify_chain(kms.engine.hsm(), kms.engine.store(), None)
        .await
        .unwrap();
    assert!(report.first_break.is_none(), "{report:?}");
    assert_eq!(report.checked, rows.len() as i64);
}

/// The OS threads of this process named `name` (`/proc/self/task/*/comm`).
fn threads_named(name: &str) -> usize {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.unwrap().path().join("comm")).ok())
        .filter(|c| c.trim_end() == name)
        .count()
}

/// The number of threads named `name` once it equals `want`, or after 5 s
/// whatever it is: a new thread takes its name from inside itself, so right
/// after the spawn `/proc` may still show the spawning thread's name.
async fn threads_named_settled(name: &str, want: usize) -> usize {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let n = threads_named(name);
        if n == want || std::time::Instant::now() > deadline {
            return n;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// `activity_log.writer_thread` (the default): on SQLite the writer is an
/// OS thread of its own (`activity-writer`) with its own connection; its
/// records are complete, in order and chained; dropping the engine ends
/// the thread.
#[tokio::test]
async fn activity_records_on_the_writer_thread() {
    if common::sqlite_only("the writer thread is SQLite's") {
        return;
    }
    let kms = Kms::start_with(|c| c.activity_log.writer_thread = true).await;
    assert_eq!(threads_named_settled("activity-writer", 1).await, 1);
    records_of_concurrent_calls(&kms).await;
    // A second engine on the same store and token: a second writer, whose
    // record joins the same chain, and which ends with the engine.
    let second = hsm_kms::core::Engine::with_options(
        kms.engine.hsm().clone(),
        kms.engine.store().clone(),
        hsm_kms::core::EngineOptions::default(),
    )
    .await
    .unwrap();
    assert_eq!(threads_named_settled("activity-writer", 2).await, 2);
    second
        .record_admin("AdminTest", "second writer")
        .await
        .unwrap();
    drop(second);
    assert_eq!(
        threads_named_settled("activity-writer", 1).await,
        1,
        "its writer thread ended"
    );
    let report = hsm_kms::core::audit::verify_chain(kms.engine.hsm(), kms.engine.store(), None)
        .await
        .unwrap();
    assert!(report.first_break.is_none(), "{report:?}");
}

/// The writer thread with a batch wait: batches of many sizes, nothing
/// lost, reordered or duplicated.
#[tokio::test]
async fn activity_records_on_the_writer_thread_with_a_batch_wait() {
    let kms = Kms::start_with(|c| {
        c.activity_log.writer_thread = true;
        c.activity_log.batch_wait_us = 2000;
    })
    .await;
    records_of_concurrent_calls(&kms).await;
}

/// With `writer_thread` off, the writer is a task on the runtime (the
/// earlier way, and PostgreSQL's): no writer thread.
#[tokio::test]
async fn activity_records_through_cached_statements() {
    let kms = Kms::start_with(|c| {
        c.activity_log.writer_thread = false;
        c.activity_log.statement_cache = true;
    })
    .await;
    assert_eq!(threads_named("activity-writer"), 0);
    records_of_concurrent_calls(&kms).await;
}

#[tokio::test]
async fn activity_records_through_fresh_statements() {
    let kms = Kms::start_with(|c| {
        c.activity_log.writer_thread = false;
        c.activity_log.statement_cache = false;
    })
    .await;
    records_of_concurrent_calls(&kms).await;
}

/// The writer waiting for more records after the first of a batch loses,
/// reorders or duplicates none (the wait's only effect is batch sizes).
#[tokio::test]
async fn activity_records_with_a_batch_wait() {
    let kms = Kms::start_with(|c| c.activity_log.batch_wait_us = 2000).await;
    records_of_concurrent_calls(&kms).await;
}

/// `activity_log.batch_min_records`: the writer's wait ends once the batch
/// holds that many records. With a wait of two minutes and a minimum of
/// one, each call is acknowledged without waiting out the two minutes
/// (before the minimum, the writer waited for a full batch or the time);
/// records are neither lost, reordered nor duplicated.
#[tokio::test]
async fn a_batch_wait_ends_at_the_minimum_batch() {
    let kms = Kms::start_with(|c| {
        c.activity_log.batch_wait_us = 120_000_000;
        c.activity_log.batch_min_records = 1;
    })
    .await;
    tokio::time::timeout(
        std::time::Duration::from_secs(60),
        records_of_concurrent_calls(&kms),
    )
    .await
    .expect("the writer waited past its minimum batch");
}

/// `activity_log.batch_siblings`: the writer waits for more records only
/// while enough other logged calls are on their way, so a lone client's
/// calls never wait out the batch wait. Before, with a wait and a minimum
/// batch above one, every call of a lone client waited the whole time (5
/// calls here: 2 s).
#[tokio::test]
async fn a_lone_clients_calls_do_not_wait_for_a_batch() {
    let kms = Kms::start_with(|c| {
        c.activity_log.batch_wait_us = 400_000;
        c.activity_log.batch_min_records = 16;
        c.activity_log.batch_siblings = 4;
    })
    .await;
    let tag = kms.create_key("lone", "AES256", json!({})).await;
    let t0 = std::time::Instant::now();
    for i in 0..5u8 {
        kms.op(&tag, "encrypt", json!({"plaintext": b64(&[i; 9])}))
            .await
            .ok();
    }
    let took = t0.elapsed();
    assert!(
        took < std::time::Duration::from_millis(1000),
        "5 calls one after the other took {took:?}"
    );
}

/// With other logged calls on their way, the writer waits for them and
/// they share commits; the wait ends as soon as none is left, not at its
/// time (20 s here, with no minimum batch: before, the first call at once
/// waited all of it). NAVER and NHN calls alike.
#[tokio::test]
async fn calls_on_their_way_share_a_commit_and_end_the_wait_early() {
    let kms = Kms::start_with(|c| {
        c.activity_log.batch_wait_us = 20_000_000;
        c.activity_log.batch_min_records = 0;
        c.activity_log.batch_siblings = 2;
    })
    .await;
    tokio::time::timeout(std::time::Duration::from_secs(15), async {
        let mut tags = Vec::new();
        for i in 0..8 {
            tags.push(
                kms.create_key(&format!("sib-{i}"), "AES256", json!({}))
                    .await,
            );
        }
        let before = kms.metric("hsm_kms_activity_batches_total").await;
        let records_before = kms.metric("hsm_kms_activity_batch_records_total").await;
        let t0 = std::time::Instant::now();
        let replies = join_all(
            tags.iter()
                .map(|t| kms.op(t, "encrypt", json!({"plaintext": b64(b"together")})))
                .collect(),
        )
        .await;
        for r in &replies {
            r.ok();
        }
        let took = t0.elapsed();
        let batches = kms.metric("hsm_kms_activity_batches_total").await - before;
        let records = kms.metric("hsm_kms_activity_batch_records_total").await - records_before;
        assert_eq!(records, 8.0);
        assert!(
            took < std::time::Duration::from_secs(10),
            "8 calls at once took {took:?}: the wait did not end when none was left"
        );
        assert!(batches <= 4.0, "{batches} commits for 8 calls at once");
    })
    .await
    .expect("the writer waited out its batch wait");
}

/// Calls through both per-request paths answer alike: request ids present
/// and distinct (a client's own kept), success envelopes with `code` and
/// `data`, a decrypt that gives the plaintext back.
async fn answers_of_the_request_path(kms: &Kms) -> Vec<uuid::Uuid> {
    let tag = kms.create_key("lean", "AES256", json!({})).await;
    let mut ids = Vec::new();
    for i in 0..8u8 {
        let r = kms
            .op(&tag, "encrypt", json!({"plaintext": b64(&[i; 9])}))
            .await;
        let ct = r.ok()["ciphertext"].as_str().unwrap().to_string();
        assert_eq!(r.body.as_object().unwrap().len(), 2, "{}", r.body);
        let id = r.headers["x-request-id"].to_str().unwrap();
        ids.push(uuid::Uuid::parse_str(id).expect("a UUID-shaped request id"));
        assert_eq!(kms.decrypt_ok(&tag, &ct, None).await, [i; 9]);
    }
    let unique: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "request ids repeat: {ids:?}");
    let own = kms
        .client
        .get(format!("{}/healthz", kms.url))
        .header("x-request-id", "client-chosen-id")
        .send()
        .await
        .unwrap();
    assert_eq!(own.headers()["x-request-id"], "client-chosen-id");
    ids
}

#[tokio::test]
async fn lean_request_path() {
    let kms = Kms::start_with(|c| c.server.lean_requests = true).await;
    let ids = answers_of_the_request_path(&kms).await;
    // One process prefix, a counter after it.
    assert!(ids
        .windows(2)
        .all(|w| w[0].as_u64_pair().0 == w[1].as_u64_pair().0));
}

#[tokio::test]
async fn earlier_request_path() {
    let kms = Kms::start_with(|c| c.server.lean_requests = false).await;
    let ids = answers_of_the_request_path(&kms).await;
    assert!(ids.iter().all(|id| id.get_version_num() == 4), "{ids:?}");
}

/// The raw benchmark's session-object key: it encrypts and decrypts, and
/// it is not a token object (a search for token objects with its `CKA_ID`
/// finds nothing, so nothing of it outlives the session).
#[tokio::test]
async fn session_object_key_of_the_raw_benchmark() {
    let kms = Kms::start().await;
    let hsm = kms.engine.hsm().clone();
    let id = vec![0x42u8; 16];
    let (id2, hsm2) = (id.clone(), hsm.clone());
    let pt = tokio::task::spawn_blocking(move || {
        hsm2.run_blocking(|s| {
            s.generate_session_aes256("hsm-kms-bench/session-test", &id2)?;
            let ct = s.aes_gcm_encrypt(&id2, b"session object", &[], None)?;
            assert_eq!(ct.len(), 12 + 14 + 16, "iv || ciphertext || tag");
            s.aes_gcm_decrypt(&id2, &ct, &[])
        })
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(pt, b"session object");
    assert!(
        hsm.object_info(id).await.unwrap().is_empty(),
        "a token object"
    );
}
