//! Key count does not matter (issue 10 §1), for correctness: the first
//! Encrypts of many key versions after a restart reserve their AES-GCM
//! invocation blocks together (group commit) and each still gets its own
//! disjoint block; the start-up phases are published. Speed is measured by
//! `scripts/bench-scale.sh`, not here.
// The engine's store and HSM ports are public to tests only with the
// `test-hooks` feature (scripts/test.sh builds with --all-features).
#![cfg(feature = "test-hooks")]

mod common;

use std::collections::HashMap;

use common::Kms;
use hsm_kms::core::{
    CreateKeyRequest, Engine, EngineOptions, KeyType, FIRST_BLOCK, RESERVATION_BLOCK,
};
use hsm_kms::store::AccountRepo as _;
use serde_json::json;

async fn reserved(kms: &Kms, cka_id: &[u8]) -> i64 {
    sqlx::query_scalar("SELECT reserved FROM gcm_invocations WHERE cka_id = $1")
        .bind(cka_id)
        .fetch_optional(&kms.db().await)
        .await
        .expect("gcm_invocations")
        .unwrap_or(0)
}

/// A node restarted on the store (a fresh engine: no counts in memory)
/// encrypts with 12 keys at once, 4 requests each: every request succeeds,
/// each version gets exactly one new block (none wasted by two requests of
/// one version reserving at once, none shared), and a version used before
/// the restart continues after its earlier block, never inside it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_uses_after_a_restart_reserve_one_block_each() {
    let kms = Kms::start().await;
    let mut tags = Vec::new();
    for i in 0..12 {
        tags.push(
            kms.create_key(&format!("key{i}"), "AES256", json!({}))
                .await,
        );
    }
    // The first six are used before the restart: one block each.
    for t in &tags[..6] {
        kms.encrypt(t, b"before the restart", None).await;
    }
    let mut ids = HashMap::new();
    for t in &tags {
        let e = kms
            .engine
            .key_entry(&hsm_kms::core::KeyUid::from(t))
            .await
            .expect("key");
        ids.insert(t.clone(), (e.key.account_id, e.versions[0].cka_id.clone()));
    }
    for (i, t) in tags.iter().enumerate() {
        let want = if i < 6 { RESERVATION_BLOCK as i64 } else { 0 };
        assert_eq!(reserved(&kms, &ids[t].1).await, want, "key {i} before");
    }

    let node = second_engine(&kms).await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in &tags {
        for j in 0..4u8 {
            let (node, t, account) = (node.clone(), t.clone(), ids[t].0);
            tasks.spawn(async move {
                let sealed = node
                    .encrypt(account, &hsm_kms::core::KeyUid::from(&t), vec![j; 16], None)
                    .await
                    .expect("encrypt on the restarted node");
                (t, j, sealed)
            });
        }
    }
    let mut sealed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        sealed.push(r.expect("task"));
    }
    assert_eq!(sealed.len(), 48);
    for (i, t) in tags.iter().enumerate() {
        let want = if i < 6 { 2 } else { 1 } * RESERVATION_BLOCK as i64;
        assert_eq!(reserved(&kms, &ids[t].1).await, want, "key {i} after");
    }
    // What the restarted node sealed opens with the first node's engine.
    for (t, j, s) in &sealed {
        let pt = kms
            .engine
            .decrypt(ids[t].0, &hsm_kms::core::KeyUid::from(t), s, None)
            .await
            .expect("decrypt");
        assert_eq!(pt.as_slice(), [*j; 16]);
    }
}

/// The limit still holds on a version's first use after a restart, now
/// that the first use reserves without reading the count first: a version
/// whose invocations were all used before is refused, and a refused first
/// use leaves the version refused (the store's count only grows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_holds_on_the_first_use_after_a_restart() {
    let kms = Kms::start_with(|c| c.hsm.gcm_invocation_limit = 2).await;
    let tag = kms.create_key("limited", "AES256", json!({})).await;
    kms.encrypt(&tag, b"one", None).await;
    kms.encrypt(&tag, b"two", None).await;
    let e = kms
        .engine
        .key_entry(&hsm_kms::core::KeyUid::from(&tag))
        .await
        .expect("key");
    let account = e.key.account_id;
    for _ in 0..2 {
        let node = Engine::with_options(
            kms.engine.hsm().clone(),
            kms.engine.store().clone(),
            EngineOptions {
                activity_log: false,
                gcm_invocation_limit: 2,
                ..EngineOptions::default()
            },
        )
        .await
        .expect("restarted engine");
        let err = node
            .encrypt(
                account,
                &hsm_kms::core::KeyUid::from(&tag),
                b"three".to_vec(),
                None,
            )
            .await
            .expect_err("the limit was reached before the restart");
        assert!(err.to_string().contains("invocation limit"), "{err}");
        // Refused again without asking the store.
        let err = node
            .encrypt(
                account,
                &hsm_kms::core::KeyUid::from(&tag),
                b"four".to_vec(),
                None,
            )
            .await
            .expect_err("still at the limit");
        assert!(err.to_string().contains("invocation limit"), "{err}");
    }
}

/// `/metrics` says how long each start-up phase took
/// (`hsm_kms_startup_seconds{phase}`), as `scripts/bench-scale.sh` reads.
#[tokio::test]
async fn startup_phases_are_published() {
    let kms = Kms::start().await;
    let text = reqwest::get(format!("{}/metrics", kms.url))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for phase in [
        "module",
        "store_open",
        "reconcile",
        "enumeration",
        "store_scan",
        "total",
    ] {
        let line = format!("hsm_kms_startup_seconds{{phase=\"{phase}\"}} ");
        assert!(
            text.lines().any(|l| l.starts_with(&line)),
            "no {line} in /metrics:\n{text}"
        );
    }
}

/// A start fills the key cache from the store in one go (live keys only),
/// so that no key's first use reads the store; keys a request cached first
/// are kept as they are.
#[tokio::test]
async fn the_key_cache_is_preloaded_with_the_live_keys() {
    let kms = Kms::start().await;
    let mut tags = Vec::new();
    for (name, ty) in [
        ("alpha", "AES256"),
        ("rsakey", "RSA2048"),
        ("ecdsakey", "ECDSA"),
        ("gonekey", "AES256"),
    ] {
        tags.push(kms.create_key(name, ty, json!({})).await);
    }
    kms.op(&tags[0], "rotate", json!(null)).await.ok();
    sqlx::query("UPDATE keys SET status = 'DELETED' WHERE uid = $1")
        .bind(&tags[3])
        .execute(&kms.db().await)
        .await
        .expect("mark deleted");

    // A restarted node: nothing cached until the preload.
    let node = second_engine(&kms).await;
    assert_eq!(node.key_cache_size().0, 0);
    let before = node
        .key_entry(&hsm_kms::core::KeyUid::from(&tags[1]))
        .await
        .expect("cached by a request");
    assert_eq!(node.preload_keys().await.expect("preload"), 3);
    let (entries, bytes) = node.key_cache_size();
    assert_eq!(entries, 3, "the three live keys, not the deleted one");
    assert!(bytes > 3 * 200, "{bytes} bytes for 3 entries");
    // The preloaded entry is the store's row with every version.
    let a = node
        .key_entry(&hsm_kms::core::KeyUid::from(&tags[0]))
        .await
        .expect("key a");
    assert_eq!(a.versions.len(), 2);
    assert_eq!(a.current().map(|v| v.version), Some(2));
    // The entry a request had cached first was not replaced.
    let after = node
        .key_entry(&hsm_kms::core::KeyUid::from(&tags[1]))
        .await
        .expect("key r");
    assert!(std::sync::Arc::ptr_eq(&before, &after));
}

/// The start-up enumeration of a token with more than a few dozen objects
/// reads their attributes on several sessions at once; the handle map it
/// fills is whole and right: a second port on the token (a restart, in
/// this process) serves every key, and decrypts what the first one sealed,
/// with no search of the token beyond the enumeration itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parallel_enumeration_maps_every_object_to_its_own_handle() {
    let kms = Kms::start().await;
    let account = kms
        .engine
        .store()
        .account_by_name("default")
        .await
        .expect("store")
        .expect("account")
        .id;
    // One at a time: SoftHSMv2's db object store fails concurrent
    // C_GenerateKey calls (README "### Key count").
    let mut sealed = Vec::new();
    for i in 0..40 {
        let req = hsm_kms::core::CreateKeyRequest {
            name: format!("many{i}"),
            key_type: hsm_kms::core::KeyType::Aes256,
            memo: String::new(),
            is_convergent: false,
            is_auto_rotation: false,
            rotation_period: None,
            protection_type: "COMMON_HSM".into(),
        };
        let uid = kms
            .engine
            .create_key(account, req)
            .await
            .expect("create")
            .key
            .uid
            .clone();
        let s = kms
            .engine
            .encrypt(account, &uid, uid.as_bytes().to_vec(), None)
            .await
            .expect("encrypt");
        sealed.push((uid, s));
    }

    let cfg = kms.config.hsm_config().expect("hsm config");
    let hsm = tokio::task::spawn_blocking(move || hsm_kms::hsm::Hsm::open(&cfg))
        .await
        .expect("join")
        .expect("second port");
    let store = kms.engine.store().clone();
    hsm_kms::core::reconcile(&hsm, &store, hsm_kms::core::StartMode::Serve)
        .await
        .expect("reconcile");
    let (entries, _) = hsm.handle_map_size();
    assert!(entries >= 43, "{entries} entries");
    let searched = hsm.find_calls();
    let node = Engine::with_options(
        hsm.clone(),
        store,
        EngineOptions {
            activity_log: false,
            ..EngineOptions::default()
        },
    )
    .await
    .expect("engine on the second port");
    for (uid, s) in &sealed {
        let pt = node.decrypt(account, uid, s, None).await.expect("decrypt");
        assert_eq!(pt.as_slice(), uid.as_bytes());
        node.encrypt(account, uid, b"again".to_vec(), None)
            .await
            .expect("encrypt");
    }
    assert_eq!(
        hsm.find_calls(),
        searched,
        "a request searched the token: the enumeration missed an object"
    );
}

fn create_request(name: &str) -> CreateKeyRequest {
    CreateKeyRequest {
        name: name.into(),
        key_type: KeyType::Aes256,
        memo: String::new(),
        is_convergent: false,
        is_auto_rotation: false,
        rotation_period: None,
        protection_type: "COMMON_HSM".into(),
    }
}

/// (key uid, version state) of every version row.
async fn version_states(kms: &Kms) -> Vec<(String, String)> {
    sqlx::query_as(
        "SELECT k.uid, v.state FROM key_versions v JOIN keys k ON k.id = v.key_id ORDER BY k.id",
    )
    .fetch_all(&kms.db().await)
    .await
    .expect("key_versions")
}

/// Creations running at once commit their pending rows, and then their
/// activations, in shared transactions (group commit): each creation still
/// ends with its one version active and its object on the token, nothing
/// stays pending, and the store counted fewer transactions than writes.
/// Within one shared transaction a refused write undoes only itself: two
/// creations under one name give one key and one conflict, and creations
/// past the account's cap are refused while the others in their group
/// commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creations_share_commits_and_each_end_active() {
    const KEYS: usize = 24;
    const CAP: usize = 30;
    let kms = Kms::start_with(|c| c.limits.max_keys_per_account = CAP as u64).await;
    let account = kms
        .engine
        .account_id("default")
        .await
        .expect("account")
        .expect("the first account");
    let (tx0, writes0) = kms.engine.store().key_commit_counts();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..KEYS {
        let engine = kms.engine.clone();
        tasks.spawn(async move {
            engine
                .create_key(account, create_request(&format!("key{i}")))
                .await
        });
    }
    // The same name twice, in the same burst.
    for _ in 0..2 {
        let engine = kms.engine.clone();
        tasks.spawn(async move { engine.create_key(account, create_request("twin")).await });
    }
    let mut made = Vec::new();
    let mut conflicts = 0;
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(e) => made.push(e.key.uid.to_string()),
            Err(e) => {
                assert!(
                    e.to_string().contains("twin"),
                    "only the twin may fail: {e}"
                );
                conflicts += 1;
            }
        }
    }
    assert_eq!((made.len(), conflicts), (KEYS + 1, 1));
    let (tx1, writes1) = kms.engine.store().key_commit_counts();
    // One pending row and one activation per creation made; the refused
    // twin's pending row was tried and undone within its transaction.
    assert!(
        writes1 - writes0 >= 2 * (KEYS as u64 + 1),
        "{writes0} -> {writes1}"
    );
    assert!(
        tx1 - tx0 < writes1 - writes0,
        "no transaction carried two writes: {} transactions for {} writes",
        tx1 - tx0,
        writes1 - writes0
    );
    let states = version_states(&kms).await;
    for uid in &made {
        let rows: Vec<&str> = states
            .iter()
            .filter(|(u, _)| u == uid)
            .map(|(_, s)| s.as_str())
            .collect();
        assert_eq!(rows, ["active"], "key {uid}");
        let sealed = kms.encrypt(uid, b"made in a group", None).await;
        assert_eq!(kms.decrypt_ok(uid, &sealed, None).await, b"made in a group");
    }
    assert_eq!(states.len(), KEYS + 1, "{states:?}");

    // Past the cap: 8 at once for the CAP - (KEYS + 1) = 5 places left.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..8 {
        let engine = kms.engine.clone();
        tasks.spawn(async move {
            engine
                .create_key(account, create_request(&format!("late{i}")))
                .await
        });
    }
    let (mut ok, mut refused) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        match r.expect("task") {
            Ok(_) => ok += 1,
            Err(e) => {
                assert!(e.to_string().contains("limit of 30 keys"), "{e}");
                refused += 1;
            }
        }
    }
    assert_eq!((ok, refused), (CAP - KEYS - 1, 8 - (CAP - KEYS - 1)));
    let states = version_states(&kms).await;
    assert_eq!(states.len(), CAP);
    assert!(states.iter().all(|(_, s)| s == "active"), "{states:?}");
}

/// The current AES version's object id of each key `tags` names.
async fn current_ids(kms: &Kms, tags: &[String]) -> Vec<Vec<u8>> {
    let mut ids = Vec::new();
    for t in tags {
        let e = kms
            .engine
            .key_entry(&hsm_kms::core::KeyUid::from(t))
            .await
            .expect("key");
        ids.push(e.current().expect("current").cka_id.to_vec());
    }
    ids
}

/// Another engine on the same token and store, its activity log off, as a
/// second node or a restarted one sees them: nothing cached yet.
async fn second_engine(kms: &Kms) -> Engine {
    Engine::with_options(
        kms.engine.hsm().clone(),
        kms.engine.store().clone(),
        EngineOptions {
            activity_log: false,
            ..EngineOptions::default()
        },
    )
    .await
    .expect("second engine")
}

/// A restarted node on the store (a fresh engine, its key cache preloaded).
async fn restarted(kms: &Kms) -> Engine {
    let node = second_engine(kms).await;
    node.preload_keys().await.expect("preload");
    node
}

/// After a start's first-block reservation, a key's first Encrypts write
/// nothing to the store (its reserved count stays where the start left
/// it); the invocations used are below the store's count, the next block
/// is reserved on use as before, and a later start never goes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_first_blocks_a_first_encrypt_writes_nothing() {
    let kms = Kms::start().await;
    let mut tags = Vec::new();
    for i in 0..5 {
        tags.push(
            kms.create_key(&format!("aes{i}"), "AES256", json!({}))
                .await,
        );
    }
    kms.create_key("rsa", "RSA2048", json!({})).await;
    // Two keys used before the restart: one block each already.
    for t in &tags[..2] {
        kms.encrypt(t, b"before the restart", None).await;
    }
    let ids = current_ids(&kms, &tags).await;
    let mut before = Vec::new();
    for id in &ids {
        before.push(reserved(&kms, id).await);
    }

    let node = restarted(&kms).await;
    assert_eq!(
        node.reserve_first_blocks().await.expect("first blocks"),
        5,
        "one block per AES version, none for the RSA key"
    );
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(
            reserved(&kms, id).await,
            before[i] + FIRST_BLOCK as i64,
            "key {i}: one first block"
        );
    }
    let account = node
        .key_entry(&hsm_kms::core::KeyUid::from(&tags[0]))
        .await
        .expect("key")
        .key
        .account_id;
    for t in &tags {
        for j in 0..3u8 {
            node.encrypt(account, &hsm_kms::core::KeyUid::from(t), vec![j; 8], None)
                .await
                .expect("encrypt after the restart");
        }
    }
    for (i, id) in ids.iter().enumerate() {
        let upto = before[i] + FIRST_BLOCK as i64;
        assert_eq!(reserved(&kms, id).await, upto, "key {i}: no store write");
        // The fourth invocation since the start, inside the first block.
        let n = node.take_gcm_invocation(id).await.expect("take") as i64;
        assert_eq!(n, before[i] + 3, "key {i}");
        assert!(n < upto);
    }
    // The first block used up, the next one is reserved on use.
    let id = &ids[0];
    for _ in 4..FIRST_BLOCK {
        node.take_gcm_invocation(id).await.expect("take");
    }
    assert_eq!(
        reserved(&kms, id).await,
        before[0] + FIRST_BLOCK as i64,
        "the first block holds {FIRST_BLOCK} invocations"
    );
    let n = node.take_gcm_invocation(id).await.expect("take") as i64;
    assert_eq!(
        n,
        before[0] + FIRST_BLOCK as i64,
        "continues after the block"
    );
    let upto = reserved(&kms, id).await;
    assert_eq!(upto, n + RESERVATION_BLOCK as i64);

    // Another start: its first block begins where every earlier one ended.
    let again = restarted(&kms).await;
    again.reserve_first_blocks().await.expect("first blocks");
    let m = again.take_gcm_invocation(id).await.expect("take") as i64;
    assert_eq!(m, upto, "never inside an earlier reservation");
    assert_eq!(reserved(&kms, id).await, upto + FIRST_BLOCK as i64);
}

/// Two nodes reserve their first blocks while requests on both already use
/// the same versions for the first time: no invocation number of a
/// version is handed out twice, and every one is below the store's count.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn first_blocks_racing_first_uses_never_hand_out_an_invocation_twice() {
    let kms = Kms::start().await;
    let mut tags = Vec::new();
    for i in 0..24 {
        tags.push(
            kms.create_key(&format!("key{i}"), "AES256", json!({}))
                .await,
        );
    }
    let ids = current_ids(&kms, &tags).await;
    let nodes = [restarted(&kms).await, restarted(&kms).await];
    let mut tasks = tokio::task::JoinSet::new();
    for node in &nodes {
        let node = node.clone();
        tasks.spawn(async move {
            node.reserve_first_blocks().await.expect("first blocks");
            Vec::new()
        });
    }
    for node in &nodes {
        for id in &ids {
            for _ in 0..3 {
                let (node, id) = (node.clone(), id.clone());
                tasks.spawn(async move {
                    let mut got = Vec::new();
                    for _ in 0..4 {
                        let n = node.take_gcm_invocation(&id).await.expect("take");
                        got.push((id.clone(), n));
                    }
                    got
                });
            }
        }
    }
    let mut seen: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
    while let Some(r) = tasks.join_next().await {
        for (id, n) in r.expect("task") {
            seen.entry(id).or_default().push(n);
        }
    }
    assert_eq!(seen.len(), ids.len());
    for (i, id) in ids.iter().enumerate() {
        let mut ns = seen.remove(id).expect("used");
        assert_eq!(ns.len(), 2 * 3 * 4);
        ns.sort_unstable();
        let before = ns.len();
        ns.dedup();
        assert_eq!(ns.len(), before, "key {i}: an invocation handed out twice");
        let upto = reserved(&kms, id).await as u64;
        assert!(
            ns.iter().all(|&n| n < upto),
            "key {i}: {ns:?} not all below the store's {upto}"
        );
    }
}

/// A key still being created when a node preloads its key cache (another
/// node's creation between its pending row and its activation) is not
/// cached as it was read: once active it serves on this node at once,
/// without waiting for the change feed to drop a stale entry.
#[tokio::test]
async fn the_preload_skips_a_key_still_being_created() {
    let kms = Kms::start().await;
    let tag = kms.create_key("increation", "AES256", json!({})).await;
    let e = kms
        .engine
        .key_entry(&hsm_kms::core::KeyUid::from(&tag))
        .await
        .expect("key");
    let set_state = |state: &'static str| {
        let kms = &kms;
        let key_id = e.key.id;
        async move {
            sqlx::query("UPDATE key_versions SET state = $1 WHERE key_id = $2")
                .bind(state)
                .bind(key_id)
                .execute(&kms.db().await)
                .await
                .expect("version state");
        }
    };
    set_state("pending").await;
    let node = restarted(&kms).await;
    set_state("active").await;
    node.owned_key(e.key.account_id, &hsm_kms::core::KeyUid::from(&tag))
        .await
        .expect("the key, active now, serves on the preloaded node");
}

/// `serve` reads the key cache's rows beside the token enumeration, before
/// its engine exists (`Preload::read`, then `Engine::install_preload`): a
/// key changed between that read and the engine (by the start-up
/// reconciler, another node or the admin CLI) is read again, not served as
/// it was read; the others are served from the preload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_changed_after_the_preload_read_is_not_served_stale() {
    let kms = Kms::start().await;
    let a = kms.create_key("first", "AES256", json!({})).await;
    let b = kms.create_key("second", "AES256", json!({})).await;
    let read = hsm_kms::core::Preload::read(kms.engine.store())
        .await
        .expect("read");
    assert_eq!(read.len(), 2);
    // After the read, before the new engine: `a` gets a second version.
    kms.op(&a, "rotate", json!(null)).await.ok();
    let node = second_engine(&kms).await;
    assert_eq!(node.install_preload(read).await.expect("install"), 2);
    assert_eq!(node.key_cache_size().0, 1, "only `b` kept from the read");
    let entry = node
        .key_entry(&hsm_kms::core::KeyUid::from(&a))
        .await
        .expect("key a");
    assert_eq!(
        entry.current().map(|v| v.version),
        Some(2),
        "the rotated key is read again"
    );
    let entry = node
        .key_entry(&hsm_kms::core::KeyUid::from(&b))
        .await
        .expect("key b");
    assert_eq!(entry.current().map(|v| v.version), Some(1));
}
