//! Several `hsm-kms serve` processes ("nodes") on one token and one store
//! (issue 11 §4 and §5).
//!
//! The token is shared in one of two ways ([`Sharing`]):
//! - **direct**: every node loads SoftHSMv2 itself on the one token
//!   directory (SoftHSM serialises its object files with file locks and
//!   notices other processes' changes through the token's generation file);
//! - **p11kit**: one `p11-kit server` exports the token on a Unix socket and
//!   every node loads `p11-kit-client.so` (the stand-in for a network HSM:
//!   each node's connection is served by its own `p11-kit remote` process,
//!   which loads SoftHSMv2 on the same directory and runs that connection's
//!   calls one at a time).
//!
//! The first test runs in the default suite (two nodes, direct). The others
//! are `#[ignore]`d: `scripts/test-cluster.sh` runs them on PostgreSQL with
//! p11-kit 0.25.5 (`P11_KIT_BIN`, `P11_KIT_CLIENT_MODULE`).
//! `HSM_KMS_CLUSTER_BIN` names another build of the server for the nodes
//! (the script's release build; an older build to see a test fail first).
//! Throughput figures come from `scripts/bench-cluster.sh` (wrk), not from
//! here.
mod common;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::p11kit::{p11kit_paths, P11KitServer};
use common::process::{Server, Site};
use common::{b64, fresh_ts, unb64, Kms};
use serde_json::{json, Value};

/// How a node reaches the shared token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sharing {
    /// SoftHSMv2 loaded by the node on the shared token directory.
    Direct,
    /// `p11-kit-client.so` talking to the one `p11-kit server`.
    P11Kit,
}

impl Sharing {
    fn name(self) -> &'static str {
        match self {
            Sharing::Direct => "direct",
            Sharing::P11Kit => "p11kit",
        }
    }
}

/// The sharing the node-loss test uses (`HSM_KMS_CLUSTER_SHARING=direct`
/// to run it the other way).
fn chosen_sharing() -> Sharing {
    match std::env::var("HSM_KMS_CLUSTER_SHARING").as_deref() {
        Ok("direct") => Sharing::Direct,
        _ => Sharing::P11Kit,
    }
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// One token, one store (PostgreSQL in the cluster suite), the p11-kit
/// server when asked for, and the nodes.
struct Cluster {
    site: Site,
    p11kit: Option<(P11KitServer, PathBuf)>,
    nodes: Vec<Option<Server>>,
    ports: Vec<u16>,
    /// Which run of `serve` each node slot is (for its log).
    runs: Vec<usize>,
    serves: usize,
}

impl Cluster {
    /// A token and store after `init`, and the p11-kit server on the token
    /// when `p11kit` is set. No node runs yet.
    fn new(p11kit: bool) -> Cluster {
        let site = Site::init_with(common::PIN, &[]);
        let p11kit = p11kit.then(|| {
            let (bin, client) = p11kit_paths();
            let mut s = P11KitServer::new(bin, site.softhsm_conf.clone(), site.dir.path());
            s.start();
            (s, client)
        });
        Cluster {
            site,
            p11kit,
            nodes: Vec::new(),
            ports: Vec::new(),
            runs: Vec::new(),
            serves: 0,
        }
    }

    /// The environment of a node reaching the token by `sharing`, listening
    /// on `port` (0: any).
    fn node_env(&self, sharing: Sharing, port: u16) -> Vec<(String, String)> {
        let mut env = vec![(
            "HSM_KMS_SERVER_LISTEN".to_string(),
            format!("127.0.0.1:{port}"),
        )];
        if sharing == Sharing::P11Kit {
            let (server, client) = self.p11kit.as_ref().expect("the p11-kit server");
            env.push((
                "HSM_KMS_HSM_MODULE".to_string(),
                client.display().to_string(),
            ));
            env.push(("P11_KIT_SERVER_ADDRESS".to_string(), server.address()));
        }
        env
    }

    /// Starts a node in slot `i` (a new slot when `i` is the number of
    /// slots), on its old port when it had one; waits until it listens.
    async fn start(&mut self, i: usize, sharing: Sharing) {
        if let Err(e) = self.try_start(i, sharing).await {
            panic!("{e}");
        }
    }

    /// [`Cluster::start`], returning why the node exited before it
    /// listened (a refused start) instead of panicking.
    async fn try_start(&mut self, i: usize, sharing: Sharing) -> Result<(), String> {
        let port = self.ports.get(i).copied().unwrap_or(0);
        let env = self.node_env(sharing, port);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let bin = std::env::var("HSM_KMS_CLUSTER_BIN")
            .ok()
            .filter(|b| !b.is_empty())
            .unwrap_or_else(|| common::process::binary().to_string());
        let server = self.site.try_serve_with_binary(&bin, &env).await;
        self.serves += 1;
        let server = server?;
        let port: u16 = server
            .url
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in the node's URL");
        if i == self.nodes.len() {
            self.nodes.push(Some(server));
            self.ports.push(port);
            self.runs.push(self.serves);
        } else {
            assert!(self.nodes[i].is_none(), "node {i} is running");
            self.nodes[i] = Some(server);
            self.runs[i] = self.serves;
        }
        Ok(())
    }

    /// SIGKILLs node `i` and reaps it.
    fn kill(&mut self, i: usize) {
        let server = self.nodes[i].take().expect("node running");
        server.kill();
    }

    /// Stops every node (SIGKILL; nothing depends on a clean shutdown here).
    fn stop_all(&mut self) {
        for n in self.nodes.iter_mut() {
            if let Some(s) = n.take() {
                s.kill();
            }
        }
        self.nodes.clear();
        self.ports.clear();
        self.runs.clear();
    }

    fn urls(&self) -> Vec<String> {
        self.ports
            .iter()
            .map(|p| format!("http://127.0.0.1:{p}"))
            .collect()
    }

    /// The end of node `i`'s log (its current run).
    fn log(&self, i: usize) -> String {
        tail(&self.site.log(self.runs[i]), 20)
    }

    /// How many times node `i` re-initialised its module for a late view of
    /// the token (docs/pkcs11-portability.md, "Late views").
    fn late_view_reinits(&self, i: usize) -> usize {
        self.site
            .log(self.runs[i])
            .matches("re-initialising the PKCS#11 module once")
            .count()
    }

    /// Checks that every node process is still running.
    fn assert_alive(&mut self) {
        for i in 0..self.nodes.len() {
            if let Some(s) = self.nodes[i].as_mut() {
                assert!(
                    s.child.try_wait().expect("try_wait").is_none(),
                    "node {i} exited: {}",
                    self.log(i)
                );
            }
        }
    }

    /// `hsm-kms admin list-objects` (SoftHSM loaded directly: the test
    /// process may read the token's files): label to object count.
    fn token_labels(&self) -> std::collections::HashMap<String, usize> {
        let mut m = std::collections::HashMap::new();
        for o in self.site.token_objects() {
            *m.entry(o.label).or_insert(0) += 1;
        }
        m
    }

    /// The versions of a key in the store: (version, state).
    async fn store_versions(&self, uid: &str) -> Vec<(i64, String)> {
        let db = self.site.db().await;
        let rows: Vec<(i64, String)> = sqlx::query_as(
            "SELECT v.version, v.state FROM key_versions v JOIN keys k ON k.id = v.key_id \
             WHERE k.uid = $1 ORDER BY v.version",
        )
        .bind(uid)
        .fetch_all(&db)
        .await
        .expect("versions of a key");
        db.close().await;
        rows
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// [`Site::serve`], with the binary of `HSM_KMS_CLUSTER_BIN` when it is set.
async fn serve_bin(site: &mut Site, env: &[(&str, &str)]) -> Server {
    match std::env::var("HSM_KMS_CLUSTER_BIN") {
        Ok(bin) if !bin.is_empty() => site.serve_with_binary(&bin, env).await,
        _ => site.serve(env).await,
    }
}

/// A log line without its terminal colours.
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(ch) = chars.next() {
        if ch == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(ch);
        }
    }
    out
}

/// The last `n` lines of a log.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// A client in front of the nodes, as a load balancer is: requests go round
/// robin, and a request that got no answer at all (connection refused,
/// reset or closed before the answer) is sent once more, to the next node,
/// signed again. Any answer, whatever its status, is final.
struct Balancer {
    urls: Vec<String>,
    next: AtomicUsize,
    client: reqwest::Client,
    access_key: String,
    secret_key: String,
    retries: AtomicUsize,
}

/// A request's outcome after the balancer's retry.
#[derive(Debug, Clone)]
struct Outcome {
    /// The node that answered (or was tried last).
    node: usize,
    /// HTTP status and JSON body, or why there was no answer.
    answer: Result<(u16, Value), String>,
}

impl Outcome {
    /// `data` of a NAVER success, else `None`.
    fn ok(&self) -> Option<&Value> {
        match &self.answer {
            Ok((200, b)) if b["code"] == "SUCCESS" => Some(&b["data"]),
            _ => None,
        }
    }
}

impl Balancer {
    fn new(urls: Vec<String>, site: &Site) -> Balancer {
        Balancer {
            urls,
            next: AtomicUsize::new(0),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("HTTP client"),
            access_key: site.access_key.clone(),
            secret_key: site.secret_key.clone(),
            retries: AtomicUsize::new(0),
        }
    }

    /// One attempt on node `node`.
    async fn once(
        &self,
        node: usize,
        method: &str,
        path: &str,
        body: &Option<Value>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.client.request(m, format!("{}{path}", self.urls[node]));
        for (k, v) in Kms::signed_headers(
            &self.access_key,
            &self.secret_key,
            method,
            path,
            &fresh_ts(),
        ) {
            rb = rb.header(k, v);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = rb.send().await?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// Sends to the next node in turn; `body(attempt)` gives the body of
    /// each attempt (a key creation names its key per attempt: the first
    /// attempt may have been done by a node that died before answering).
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: &(dyn Fn(usize) -> Option<Value> + Sync),
    ) -> Outcome {
        let first = self.next.fetch_add(1, Ordering::Relaxed) % self.urls.len();
        self.call_from(first, method, path, body).await
    }

    /// [`Balancer::call`] starting at node `first`.
    async fn call_from(
        &self,
        first: usize,
        method: &str,
        path: &str,
        body: &(dyn Fn(usize) -> Option<Value> + Sync),
    ) -> Outcome {
        let mut node = first;
        for attempt in 0..2 {
            node = (first + attempt) % self.urls.len();
            match self.once(node, method, path, &body(attempt)).await {
                Ok(a) => {
                    return Outcome {
                        node,
                        answer: Ok(a),
                    }
                }
                Err(e) if attempt == 0 && !e.is_timeout() => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    return Outcome {
                        node,
                        answer: Err(format!("no answer after the retry: {e}")),
                    }
                }
            }
        }
        Outcome {
            node,
            answer: Err("unreachable".into()),
        }
    }
}

fn key_body(name: &str, key_type: &str) -> Value {
    json!({"keyName": name, "keyType": key_type, "isAutoRotation": false})
}

/// Issue 11 §3/§5 (found by the round-robin load): a ciphertext or
/// signature made on node A with a version A just created is served by
/// node B at once, although B cached the key before that version existed.
/// Failed on the old code: B answered 400 "the key has no version 2" until
/// its cache entry was dropped for another reason.
#[tokio::test]
async fn a_version_made_on_another_node_is_served_at_once() {
    if common::softhsm_only("two processes on one SoftHSMv2 token directory") {
        return;
    }
    let mut site = Site::init();
    let a = serve_bin(&mut site, &[]).await;
    let b = serve_bin(&mut site, &[]).await;
    let create = |name: &'static str, kt: &'static str| {
        let a = &a;
        async move {
            a.call("POST", "/kms/v1/keys", Some(key_body(name, kt)))
                .await
                .ok()["keyTag"]
                .as_str()
                .expect("keyTag")
                .to_string()
        }
    };
    let aes = create("two-nodes-aes", "AES256").await;
    let ec = create("two-nodes-ec", "ECDSA").await;

    // B reads both keys once: its cache holds them with version 1.
    let ct1 = b
        .call(
            "POST",
            &format!("/kms/v1/keys/{aes}/encrypt"),
            Some(json!({"plaintext": b64(b"one")})),
        )
        .await
        .ok()["ciphertext"]
        .as_str()
        .expect("ciphertext")
        .to_string();
    let r = b
        .call(
            "POST",
            &format!("/kms/v1/keys/{ec}/sign"),
            Some(json!({"data": b64(b"doc")})),
        )
        .await;
    assert!(r.ok()["signature"]
        .as_str()
        .expect("sig")
        .starts_with("ncpkms:v1:"));

    // A rotates both and uses version 2.
    for tag in [&aes, &ec] {
        let r = a
            .call("POST", &format!("/kms/v1/keys/{tag}/rotate"), None)
            .await;
        assert_eq!(r.ok()["version"], 2, "{}", r.body);
    }
    let ct2 = a
        .call(
            "POST",
            &format!("/kms/v1/keys/{aes}/encrypt"),
            Some(json!({"plaintext": b64(b"two")})),
        )
        .await
        .ok()["ciphertext"]
        .as_str()
        .expect("ciphertext")
        .to_string();
    assert!(ct2.starts_with("ncpkms:v2:"), "{ct2}");
    let sig2 = a
        .call(
            "POST",
            &format!("/kms/v1/keys/{ec}/sign"),
            Some(json!({"data": b64(b"doc")})),
        )
        .await
        .ok()["signature"]
        .as_str()
        .expect("signature")
        .to_string();
    assert!(sig2.starts_with("ncpkms:v2:"), "{sig2}");

    // B serves version 2 at once, and version 1 still.
    for (ct, pt) in [(&ct2, b"two"), (&ct1, b"one")] {
        let r = b
            .call(
                "POST",
                &format!("/kms/v1/keys/{aes}/decrypt"),
                Some(json!({"ciphertext": ct})),
            )
            .await;
        assert_eq!(
            unb64(r.ok()["plaintext"].as_str().expect("plaintext")),
            pt,
            "decrypt of {ct} on the other node"
        );
    }
    let r = b
        .call(
            "POST",
            &format!("/kms/v1/keys/{ec}/verify"),
            Some(json!({"data": b64(b"doc"), "signature": sig2})),
        )
        .await;
    assert_eq!(r.ok()["valid"], true, "{}", r.body);
    let r = b
        .call(
            "POST",
            &format!("/kms/v1/keys/{ec}/get-pub-key"),
            Some(json!({"keyVersion": 2})),
        )
        .await;
    assert_eq!(
        r.status, 200,
        "get-pub-key of version 2 on the other node: {}",
        r.body
    );

    // A version that does not exist is still refused (after one reread).
    let forged = ct2.replacen("ncpkms:v2:", "ncpkms:v7:", 1);
    let r = b
        .call(
            "POST",
            &format!("/kms/v1/keys/{aes}/decrypt"),
            Some(json!({"ciphertext": forged})),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.body);
}

/// What one load task got acknowledged.
#[derive(Debug, Default, Clone)]
struct Acked {
    /// Keys: (tag, versions acknowledged).
    keys: Vec<(String, Vec<i64>)>,
    /// Ciphertexts: (tag, plaintext, ciphertext).
    ciphertexts: Vec<(String, Vec<u8>, String)>,
}

/// A request that did not succeed.
#[derive(Debug, Clone)]
struct Failure {
    op: &'static str,
    at: Duration,
    outcome: Outcome,
}

/// §4 (a) and (b): 3 nodes on one token create keys of every type and
/// rotate the same keys concurrently; afterwards every key's versions are
/// 1..n, all active, n = 1 + the rotations acknowledged (no duplicate, no
/// gap, no orphan), every
/// version has its objects on the token and no other object carries a key's
/// label, and every node serves every version of every key.
async fn concurrent_creation_and_rotation(sharing: Sharing) {
    if common::softhsm_only("SoftHSMv2's token directory and p11-kit are shared here") {
        return;
    }
    const NODES: usize = 3;
    const TASKS_PER_NODE: usize = 2;
    const KEYS_PER_TASK: usize = 4;
    const SHARED_KEYS: usize = 3;
    const ROTATIONS_PER_TASK: usize = 2;
    let mut c = Cluster::new(sharing == Sharing::P11Kit);
    for i in 0..NODES {
        c.start(i, sharing).await;
    }
    let lb = Arc::new(Balancer::new(c.urls(), &c.site));
    let mut shared = Vec::new();
    for k in 0..SHARED_KEYS {
        let o = lb
            .call_from(k % NODES, "POST", "/kms/v1/keys", &|_| {
                Some(key_body(&format!("shared{k}"), "AES256"))
            })
            .await;
        let tag = o.ok().expect("shared key")["keyTag"]
            .as_str()
            .expect("keyTag")
            .to_string();
        shared.push(tag);
    }
    let shared = Arc::new(shared);
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for node in 0..NODES {
        for t in 0..TASKS_PER_NODE {
            let lb = lb.clone();
            let shared = shared.clone();
            tasks.push(tokio::spawn(async move {
                let mut made = Vec::new();
                let mut rotations: Vec<(String, i64)> = Vec::new();
                let mut failures = Vec::new();
                let types = ["AES256", "RSA2048", "ECDSA", "AES256"];
                for k in 0..KEYS_PER_TASK {
                    let kt = types[k % types.len()];
                    let name = format!("n{node}t{t}k{k}");
                    let o = lb
                        .call_from(node, "POST", "/kms/v1/keys", &|_| Some(key_body(&name, kt)))
                        .await;
                    match o.ok() {
                        Some(d) => made.push((d["keyTag"].as_str().expect("keyTag").to_string(), kt)),
                        None => failures.push(("create", o)),
                    }
                    // Rotations of the shared keys, interleaved with creation.
                    if k < ROTATIONS_PER_TASK {
                        for tag in shared.iter() {
                            // A rotation refused as concurrent ("retry") is retried.
                            let mut tries = 0;
                            loop {
                                let o = lb
                                    .call_from(node, "POST", &format!("/kms/v1/keys/{tag}/rotate"), &|_| None)
                                    .await;
                                if let Some(d) = o.ok() {
                                    rotations.push((tag.clone(), d["version"].as_i64().expect("version")));
                                    break;
                                }
                                tries += 1;
                                let busy = matches!(&o.answer, Ok((_, b)) if b.to_string().contains("concurrent rotation"));
                                if busy && tries < 20 {
                                    tokio::time::sleep(Duration::from_millis(20)).await;
                                    continue;
                                }
                                failures.push(("rotate", o));
                                break;
                            }
                        }
                    }
                }
                // Each made key rotated once, on this node.
                for (tag, _) in &made {
                    let o = lb
                        .call_from(node, "POST", &format!("/kms/v1/keys/{tag}/rotate"), &|_| None)
                        .await;
                    match o.ok() {
                        Some(d) => rotations.push((tag.clone(), d["version"].as_i64().expect("version"))),
                        None => failures.push(("rotate own", o)),
                    }
                }
                (made, rotations, failures)
            }));
        }
    }
    let mut made = Vec::new();
    let mut rotations = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        let (m, r, f) = t.await.expect("task");
        made.extend(m);
        rotations.extend(r);
        failures.extend(f);
    }
    let elapsed = t0.elapsed();
    c.assert_alive();
    eprintln!(
        "{}: {} keys made and {} rotations by {} tasks on {NODES} nodes in {:.2} s ({:.1} token writes/s)",
        sharing.name(),
        made.len(),
        rotations.len(),
        NODES * TASKS_PER_NODE,
        elapsed.as_secs_f64(),
        (made.len() + rotations.len()) as f64 / elapsed.as_secs_f64()
    );
    assert!(
        failures.is_empty(),
        "requests failed (first 5): {:?}\nnode logs:\n{}\n{}\n{}",
        &failures[..failures.len().min(5)],
        c.log(0),
        c.log(1),
        c.log(2)
    );

    // The store: versions 1..n, n = 1 + acknowledged rotations, no duplicate.
    let labels = c.token_labels();
    let mut all: Vec<(String, &str)> = shared.iter().map(|t| (t.clone(), "AES256")).collect();
    all.extend(made.iter().map(|(t, k)| (t.clone(), *k)));
    for (tag, kt) in &all {
        // Each acknowledged rotation made one version. (A rotation answers
        // the key's current version when it reads the key back, which may
        // already be a concurrent rotation's: the answers are not compared.)
        let acked: Vec<i64> = rotations
            .iter()
            .filter(|(t, _)| t == tag)
            .map(|(_, v)| *v)
            .collect();
        let versions = c.store_versions(tag).await;
        let expect: Vec<(i64, String)> = (1..=1 + acked.len() as i64)
            .map(|v| (v, "active".to_string()))
            .collect();
        assert_eq!(
            versions, expect,
            "key {tag}: versions in the store after rotations answered {acked:?}"
        );
        let per_version = if *kt == "AES256" { 1 } else { 2 };
        for (v, _) in &versions {
            let label = format!("hsm-kms/{tag}/v{v}");
            assert_eq!(
                labels.get(&label).copied().unwrap_or(0),
                per_version,
                "objects labelled {label} on the token"
            );
        }
        let prefix = format!("hsm-kms/{tag}/");
        let on_token = labels
            .iter()
            .filter(|(l, _)| l.starts_with(&prefix))
            .map(|(_, n)| n)
            .sum::<usize>();
        assert_eq!(
            on_token,
            versions.len() * per_version,
            "objects of key {tag} on the token"
        );
    }

    // Every node serves every key: made on node i, used on node i+1.
    let mut missing = Vec::new();
    for (n, (tag, kt)) in all.iter().enumerate() {
        let (on, then) = (n % NODES, (n + 1) % NODES);
        let (op1, op2, body) = if *kt == "AES256" {
            (
                "encrypt",
                "decrypt",
                json!({"plaintext": b64(format!("key {n}").as_bytes())}),
            )
        } else {
            ("sign", "verify", json!({"data": b64(b"data")}))
        };
        let o = call_watching_missing(
            &lb,
            on,
            &format!("/kms/v1/keys/{tag}/{op1}"),
            body.clone(),
            &mut missing,
        )
        .await;
        if matches!(o.answer, Ok((503, _))) {
            continue; // noted in `missing`
        }
        let d = o
            .ok()
            .unwrap_or_else(|| panic!("{op1} with {tag} ({kt}) on node {on}: {o:?}\n{}", c.log(on)))
            .clone();
        let body2 = if op1 == "encrypt" {
            json!({"ciphertext": d["ciphertext"]})
        } else {
            json!({"data": body["data"], "signature": d["signature"]})
        };
        let o = call_watching_missing(
            &lb,
            then,
            &format!("/kms/v1/keys/{tag}/{op2}"),
            body2,
            &mut missing,
        )
        .await;
        if matches!(o.answer, Ok((503, _))) {
            continue; // noted in `missing`
        }
        let d = o.ok().unwrap_or_else(|| {
            panic!(
                "{op2} with {tag} ({kt}) on node {then}: {o:?}\n{}",
                c.log(then)
            )
        });
        if op2 == "decrypt" {
            assert_eq!(d["plaintext"], body["plaintext"], "{tag} on node {then}");
        } else {
            assert_eq!(d["valid"], true, "{tag} on node {then}");
        }
    }
    let reinits: Vec<usize> = (0..NODES).map(|i| c.late_view_reinits(i)).collect();
    println!("{sharing:?}: late-view re-initialisations per node: {reinits:?}");
    c.assert_alive();
    assert!(
        missing.is_empty(),
        "nodes did not find objects the token holds ({} times): {missing:#?}",
        missing.len()
    );
}

/// A POST to node `node`. A 503 "key material missing" while the token
/// holds the object (a node's SoftHSMv2 that does not find an object
/// another process made) is asked again every 300 ms for up to 3 s, and
/// noted with the time it took, so that a late view of the token is told
/// from a lost object.
async fn call_watching_missing(
    lb: &Balancer,
    node: usize,
    path: &str,
    body: Value,
    notes: &mut Vec<String>,
) -> Outcome {
    let t = Instant::now();
    let mut seen_missing = false;
    loop {
        let o = lb
            .call_from(node, "POST", path, &|_| Some(body.clone()))
            .await;
        let missing =
            matches!(&o.answer, Ok((503, b)) if b.to_string().contains("key material missing"));
        if !missing {
            if seen_missing {
                notes.push(format!(
                    "node {node}: 'key material missing' for {path}, answered after {:.1} s",
                    t.elapsed().as_secs_f64()
                ));
            }
            return o;
        }
        seen_missing = true;
        if t.elapsed() > Duration::from_secs(3) {
            notes.push(format!(
                "node {node}: 'key material missing' for {path}, still after 3 s"
            ));
            return o;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
#[ignore = "run by scripts/test-cluster.sh"]
async fn shared_token_direct_concurrent_creation_and_rotation() {
    concurrent_creation_and_rotation(Sharing::Direct).await;
}

#[tokio::test]
#[ignore = "needs p11-kit 0.25.5: run scripts/test-cluster.sh"]
async fn shared_token_p11kit_concurrent_creation_and_rotation() {
    concurrent_creation_and_rotation(Sharing::P11Kit).await;
}

/// §5: round-robin load over 3 nodes (key creation, rotation, encrypt,
/// decrypt) through a balancer that retries once on a refused or reset
/// connection; node 1 is SIGKILLed mid-load and started again later on its
/// port. Then: 0 failed requests, every acknowledged key, version and
/// ciphertext is there on every node (store, token, decrypt), and the
/// restarted node served requests again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by scripts/test-cluster.sh"]
async fn losing_a_node_under_round_robin_load() {
    if common::softhsm_only("the token is shared as SoftHSMv2 files or through p11-kit") {
        return;
    }
    const NODES: usize = 3;
    const VICTIM: usize = 1;
    let clients = env_usize("CLUSTER_CLIENTS", 6);
    let kill_at = Duration::from_secs(env_usize("CLUSTER_KILL_AT_SECS", 3) as u64);
    let down_for = Duration::from_secs(env_usize("CLUSTER_DOWN_SECS", 3) as u64);
    let load_for = Duration::from_secs(env_usize("CLUSTER_LOAD_SECS", 12) as u64);
    let sharing = chosen_sharing();
    let mut c = Cluster::new(sharing == Sharing::P11Kit);
    for i in 0..NODES {
        c.start(i, sharing).await;
    }
    let lb = Arc::new(Balancer::new(c.urls(), &c.site));
    let stop = Arc::new(AtomicBool::new(false));
    let failures: Arc<Mutex<Vec<Failure>>> = Arc::new(Mutex::new(Vec::new()));
    // Successful answers per node, and per node after the restart.
    let served: Arc<Vec<AtomicUsize>> = Arc::new((0..NODES).map(|_| AtomicUsize::new(0)).collect());
    let restarted_at: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let victim_served_after = Arc::new(AtomicUsize::new(0));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients {
        let lb = lb.clone();
        let stop = stop.clone();
        let failures = failures.clone();
        let served = served.clone();
        let restarted_at = restarted_at.clone();
        let victim_served_after = victim_served_after.clone();
        tasks.push(tokio::spawn(async move {
            let mut acked = Acked::default();
            let mut n: u64 = 0;
            let mut rng = client as u64 * 7919 + 1;
            let mut pick = |len: usize| {
                rng = rng
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                (rng >> 33) as usize % len.max(1)
            };
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let op: &'static str = if acked.keys.is_empty() || n % 10 == 0 {
                    "create"
                } else if n % 10 == 5 {
                    "rotate"
                } else if n % 2 == 1 || acked.ciphertexts.is_empty() {
                    "encrypt"
                } else {
                    "decrypt"
                };
                let outcome = match op {
                    "create" => {
                        let o = lb
                            .call("POST", "/kms/v1/keys", &|attempt| {
                                Some(key_body(&format!("c{client}n{n}a{attempt}"), "AES256"))
                            })
                            .await;
                        if let Some(d) = o.ok() {
                            acked
                                .keys
                                .push((d["keyTag"].as_str().expect("keyTag").to_string(), vec![1]));
                        }
                        o
                    }
                    "rotate" => {
                        let k = pick(acked.keys.len());
                        let tag = acked.keys[k].0.clone();
                        let o = lb
                            .call("POST", &format!("/kms/v1/keys/{tag}/rotate"), &|_| None)
                            .await;
                        match o.ok().map(|d| d["version"].as_i64().expect("version")) {
                            // Only this client rotates its keys: a rotation
                            // must answer a version newer than any before.
                            Some(v) if acked.keys[k].1.last().is_some_and(|l| v <= *l) => Outcome {
                                node: o.node,
                                answer: Err(format!(
                                    "rotation of {tag} acknowledged version {v} after {:?}",
                                    acked.keys[k].1
                                )),
                            },
                            Some(v) => {
                                acked.keys[k].1.push(v);
                                o
                            }
                            None => o,
                        }
                    }
                    "encrypt" => {
                        let k = pick(acked.keys.len());
                        let tag = acked.keys[k].0.clone();
                        let pt = format!("client {client} request {n}").into_bytes();
                        let o = lb
                            .call("POST", &format!("/kms/v1/keys/{tag}/encrypt"), &|_| {
                                Some(json!({"plaintext": b64(&pt)}))
                            })
                            .await;
                        if let Some(d) = o.ok() {
                            let ct = d["ciphertext"].as_str().expect("ciphertext").to_string();
                            acked.ciphertexts.push((tag, pt, ct));
                        }
                        o
                    }
                    _ => {
                        let i = pick(acked.ciphertexts.len());
                        let (tag, pt, ct) = acked.ciphertexts[i].clone();
                        let o = lb
                            .call("POST", &format!("/kms/v1/keys/{tag}/decrypt"), &|_| {
                                Some(json!({"ciphertext": ct}))
                            })
                            .await;
                        match o.ok().map(|d| d["plaintext"].as_str().map(unb64)) {
                            Some(Some(got)) if got == pt => o,
                            Some(_) => Outcome {
                                node: o.node,
                                answer: Err(format!("wrong plaintext for {ct}")),
                            },
                            None => o,
                        }
                    }
                };
                if outcome.ok().is_some() {
                    served[outcome.node].fetch_add(1, Ordering::Relaxed);
                    let after = *restarted_at.lock().unwrap();
                    if outcome.node == VICTIM && after.is_some_and(|t| started > t) {
                        victim_served_after.fetch_add(1, Ordering::Relaxed);
                    }
                } else {
                    failures.lock().unwrap().push(Failure {
                        op,
                        at: started - t0,
                        outcome,
                    });
                }
                n += 1;
            }
            acked
        }));
    }

    tokio::time::sleep(kill_at.saturating_sub(t0.elapsed())).await;
    let before_kill: usize = served.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    c.kill(VICTIM);
    let killed = t0.elapsed();
    tokio::time::sleep(down_for).await;
    let during_down: usize = served
        .iter()
        .map(|s| s.load(Ordering::Relaxed))
        .sum::<usize>()
        - before_kill;
    // Started again the way a supervisor does: a refused start is retried
    // after a second, at most 5 times (each refusal is reported).
    let restart = Instant::now();
    let mut refusals = Vec::new();
    while let Err(e) = c.try_start(VICTIM, sharing).await {
        refusals.push(strip_ansi(&tail(&e, 2)));
        if refusals.len() == 5 {
            // The load and the checks go on, to report everything.
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let restart_took = restart.elapsed();
    *restarted_at.lock().unwrap() = Some(Instant::now());
    let back = t0.elapsed();
    let at_restart: usize = served.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    tokio::time::sleep(load_for.saturating_sub(t0.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Acked::default();
    for t in tasks {
        let a = t.await.expect("load task");
        acked.keys.extend(a.keys);
        acked.ciphertexts.extend(a.ciphertexts);
    }
    let total = t0.elapsed();
    let total_ok: usize = served.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    let failures = failures.lock().unwrap().clone();
    let rate = |n: usize, d: Duration| n as f64 / d.as_secs_f64().max(0.001);
    eprintln!(
        "node loss ({}, {clients} clients, 3 nodes): {total_ok} requests answered ok in {:.1} s \
         ({:.0}/s); {:.0}/s before the kill, {:.0}/s with node {VICTIM} down, {:.0}/s after its \
         restart; per node {:?}; {} retries; restart to listening {:.2} s; node {VICTIM} served {} \
         after its restart; {} failed",
        sharing.name(),
        total.as_secs_f64(),
        rate(total_ok, total),
        rate(before_kill, killed),
        rate(during_down, back - killed),
        rate(total_ok - at_restart, total - back),
        served
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .collect::<Vec<_>>(),
        lb.retries.load(Ordering::Relaxed),
        restart_took.as_secs_f64(),
        victim_served_after.load(Ordering::Relaxed),
        failures.len()
    );
    c.assert_alive();
    for r in &refusals {
        eprintln!("node loss: a start of node {VICTIM} was refused: {r}");
    }
    // Nothing acknowledged is lost. Keys: every node knows them.
    let mut lost: Vec<String> = Vec::new();
    let labels = c.token_labels();
    let versions_acked: usize = acked.keys.iter().map(|(_, v)| v.len()).sum();
    for (tag, versions) in &acked.keys {
        for node in 0..NODES {
            let o = lb
                .call_from(node, "GET", &format!("/kms/v1/keys/{tag}"), &|_| None)
                .await;
            if o.ok().is_none() {
                lost.push(format!("acknowledged key {tag} on node {node}: {o:?}"));
            }
        }
        // Versions: active in the store, objects on the token.
        let in_store = c.store_versions(tag).await;
        for v in versions {
            if !in_store.iter().any(|(sv, st)| sv == v && st == "active") {
                lost.push(format!(
                    "acknowledged version {v} of key {tag}: the store has {in_store:?}"
                ));
            }
            let label = format!("hsm-kms/{tag}/v{v}");
            let n = labels.get(&label).copied().unwrap_or(0);
            if n != 1 {
                lost.push(format!("{n} objects {label} on the token"));
            }
        }
    }
    // Ciphertexts: each decrypts on the restarted node and on another one.
    for (n, (tag, pt, ct)) in acked.ciphertexts.iter().enumerate() {
        for node in [VICTIM, if n % 2 == 0 { 0 } else { 2 }] {
            let o = lb
                .call_from(
                    node,
                    "POST",
                    &format!("/kms/v1/keys/{tag}/decrypt"),
                    &|_| Some(json!({"ciphertext": ct})),
                )
                .await;
            let got = o.ok().and_then(|d| d["plaintext"].as_str().map(unb64));
            if got.as_ref() != Some(pt) {
                lost.push(format!(
                    "acknowledged ciphertext {ct} on node {node}: {o:?}"
                ));
            }
        }
    }
    eprintln!(
        "node loss: checked {} acknowledged keys, {versions_acked} versions and {} ciphertexts \
         after the load (store, token, decrypt on nodes {VICTIM} and 0/2): {} lost (first 8: {:#?})",
        acked.keys.len(),
        acked.ciphertexts.len(),
        lost.len(),
        &lost[..lost.len().min(8)]
    );
    let described: Vec<String> = failures
        .iter()
        .take(8)
        .map(|f| {
            format!(
                "{} started at {:.2} s, node {}: {:?}",
                f.op,
                f.at.as_secs_f64(),
                f.outcome.node,
                f.outcome.answer
            )
        })
        .collect();
    assert!(
        failures.is_empty(),
        "{} requests failed after the retry (first 8):\n{}\nrestarted node's log:\n{}\nother nodes:\n{}\n{}",
        failures.len(),
        described.join("\n"),
        c.log(VICTIM),
        c.log(0),
        c.log(2)
    );
    assert!(
        refusals.is_empty(),
        "node {VICTIM}'s restart was refused {} times (the first line of each above)",
        refusals.len()
    );
    assert!(before_kill > 0, "nothing served before the kill");
    assert!(
        lb.retries.load(Ordering::Relaxed) > 0,
        "the kill was never seen by a client"
    );
    assert!(
        victim_served_after.load(Ordering::Relaxed) > 0,
        "the restarted node served nothing"
    );

    assert!(
        lost.is_empty(),
        "{} acknowledged keys, versions or ciphertexts lost",
        lost.len()
    );
}
