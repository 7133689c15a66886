//! The hot-path levers of issue 10 §2, for correctness (their speed is in
//! `scripts/bench.sh`): the AES-GCM invocation limit per key version, host
//! IVs and the earlier blocking-pool dispatch (the default worker dispatch
//! serves every other test).
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
    let v1 = kms.engine.key_entry(&tag).await.unwrap().versions[0]
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
