//! Concurrency on one key (issue 9, section 4): 32 clients for
//! `STRESS_SECS` seconds (default 20) on one AES key, through HTTP, doing
//! Encrypt, Decrypt, Re-encrypt, Rotate, version disable/enable, token-set
//! creation and renewal, token-auth Encrypt, and Sign/Verify on an ECDSA key.
//!
//! Every answer must be a success or one of the answers the vendor's rules
//! allow for that call at that moment (listed in [`Op::expected`]); a 5xx, a
//! request without an answer within 10 s (a deadlock) or any other status
//! fails the test. At the end every ciphertext acknowledged during the run
//! must decrypt to its plaintext, unless its version is disabled at the
//! end, when it must be refused with 403 / 230.
//!
//! `#[ignore]`d: run by `scripts/stress.sh`
//! (`cargo nextest run --all-features --test stress_one_key --run-ignored only`).
mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{b64, fresh_ts, unb64, Kms};
use rand::{Rng as _, SeedableRng as _};
use serde_json::{json, Value};

/// Concurrent clients.
const CLIENTS: usize = 32;
/// A request unanswered for this long counts as a deadlock.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// One kind of call the clients make.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
enum Op {
    Encrypt,
    Decrypt,
    ReEncrypt,
    Rotate,
    DisableVersion,
    EnableVersion,
    CreateTokenSet,
    RenewTokenSet,
    TokenEncrypt,
    Sign,
    Verify,
    ListVersions,
}

impl Op {
    /// Statuses other than 200 that the vendor's rules allow for this call
    /// under this load, with the NAVER error code each must carry.
    fn expected(self) -> &'static [(u16, &'static str)] {
        match self {
            // A ciphertext of a version another client has just disabled.
            Op::Decrypt | Op::ReEncrypt => &[(403, "230")],
            // 100 versions reached, or another client's rotation in progress.
            Op::Rotate => &[(400, "100")],
            // The newest version cannot be disabled.
            Op::DisableVersion => &[(400, "100")],
            // Renew Token Set and token-auth Encrypt allow no refusal: NAVER
            // says "Recreating a token set does not automatically discard
            // existing token sets", so a refresh token renewed by another
            // client, even at the same moment, renews again, and the access
            // tokens of a renewed set keep working.
            _ => &[],
        }
    }
}

/// An acknowledged ciphertext.
struct Sealed {
    ciphertext: String,
    version: i64,
    plaintext: Vec<u8>,
}

/// A token set shared by the clients. A renewal puts its new access token
/// here, and its new refresh token half the time, so that one refresh token
/// is renewed many times (concurrently too) and the renewed set's tokens
/// stay in use by the clients that read them before.
#[derive(Clone)]
struct TokenSlot {
    refresh: String,
    access: String,
}

struct Shared {
    kms: Kms,
    client: reqwest::Client,
    aes: String,
    ec: String,
    /// Every acknowledged ciphertext.
    sealed: Mutex<Vec<Sealed>>,
    /// Token sets in use; creation adds one, renewal updates one.
    slots: Mutex<Vec<TokenSlot>>,
    /// Highest version seen acknowledged.
    newest: AtomicI64,
    /// Earliest time (ms since start) of the next rotation.
    next_rotation_ms: AtomicI64,
    rotation_interval_ms: i64,
    started: Instant,
    /// (op, status) -> count.
    counts: Mutex<BTreeMap<(Op, u16), u64>>,
    /// Unexpected answers, deadlocks and wrong results.
    failures: Mutex<Vec<String>>,
    requests: AtomicU64,
}

/// An answer: status and JSON body.
struct Answer {
    status: u16,
    body: Value,
}

impl Shared {
    fn fail(&self, msg: String) {
        let mut f = self.failures.lock().expect("failures");
        if f.len() < 50 {
            f.push(msg);
        }
    }

    /// Sends one request; `None` (with the failure recorded) on a transport
    /// error or a timeout.
    async fn send(
        &self,
        op: Op,
        method: &str,
        path: &str,
        headers: Vec<(String, String)>,
        body: Option<Value>,
    ) -> Option<Answer> {
        let m = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut rb = self.client.request(m, format!("{}{path}", self.kms.url));
        for (k, v) in headers {
            rb = rb.header(k, v);
        }
        if let Some(b) = body {
            rb = rb
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let t0 = Instant::now();
        self.requests.fetch_add(1, Ordering::Relaxed);
        let resp = match rb.send().await {
            Ok(r) => r,
            Err(e) => {
                let kind = if e.is_timeout() {
                    "no answer within 10 s (deadlock?)"
                } else {
                    "transport error"
                };
                self.fail(format!(
                    "{op:?} {method} {path}: {kind} after {:?}: {e}",
                    t0.elapsed()
                ));
                return None;
            }
        };
        let status = resp.status().as_u16();
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                self.fail(format!("{op:?} {method} {path}: body: {e}"));
                return None;
            }
        };
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        *self
            .counts
            .lock()
            .expect("counts")
            .entry((op, status))
            .or_default() += 1;
        Some(Answer { status, body })
    }

    /// A call signed by the first account with a fresh timestamp.
    async fn signed(
        &self,
        op: Op,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Option<Answer> {
        let h = Kms::signed_headers(
            &self.kms.access_key,
            &self.kms.secret_key,
            method,
            path,
            &fresh_ts(),
        );
        self.send(op, method, path, h, body).await
    }

    /// A call with token auth.
    async fn with_token(
        &self,
        op: Op,
        method: &str,
        path: &str,
        token: &str,
        body: Value,
    ) -> Option<Answer> {
        let h = vec![("x-ncp-ocapi-token".to_string(), token.to_string())];
        self.send(op, method, path, h, Some(body)).await
    }

    /// `Some(data)` on 200; `None` on an expected refusal; a recorded
    /// failure otherwise.
    fn check<'a>(&self, op: Op, path: &str, a: &'a Answer) -> Option<&'a Value> {
        if a.status == 200 && a.body["code"] == "SUCCESS" {
            return Some(&a.body["data"]);
        }
        let code = a.body["error"]["errorCode"].as_str().unwrap_or("");
        if !op
            .expected()
            .iter()
            .any(|(s, c)| *s == a.status && *c == code)
        {
            self.fail(format!(
                "{op:?} {path}: unexpected HTTP {}: {}",
                a.status, a.body
            ));
        }
        None
    }

    fn record(&self, ciphertext: &str, plaintext: Vec<u8>) {
        let Some(version) = version_of(ciphertext) else {
            self.fail(format!("ciphertext without a version: {ciphertext}"));
            return;
        };
        self.newest.fetch_max(version, Ordering::SeqCst);
        self.sealed.lock().expect("sealed").push(Sealed {
            ciphertext: ciphertext.to_string(),
            version,
            plaintext,
        });
    }

    /// A random acknowledged ciphertext.
    fn pick_sealed(&self, rng: &mut impl rand::Rng) -> Option<(String, Vec<u8>)> {
        let s = self.sealed.lock().expect("sealed");
        if s.is_empty() {
            return None;
        }
        let x = &s[rng.gen_range(0..s.len())];
        Some((x.ciphertext.clone(), x.plaintext.clone()))
    }

    fn key_path(&self, action: &str) -> String {
        format!("/kms/v1/keys/{}/{action}", self.aes)
    }
}

/// `n` of `ncpkms:v{n}:...`.
fn version_of(ct: &str) -> Option<i64> {
    ct.strip_prefix("ncpkms:v")?.split(':').next()?.parse().ok()
}

/// One client: calls of `ops` in random order until `deadline`.
async fn run_client(sh: Arc<Shared>, ops: Vec<Op>, deadline: Instant, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    while Instant::now() < deadline {
        let op = ops[rng.gen_range(0..ops.len())];
        let plaintext: Vec<u8> = (0..rng.gen_range(1..64)).map(|_| rng.gen()).collect();
        match op {
            Op::Encrypt => {
                let path = sh.key_path("encrypt");
                let body = json!({"plaintext": b64(&plaintext)});
                if let Some(a) = sh.signed(op, "POST", &path, Some(body)).await {
                    if let Some(d) = sh.check(op, &path, &a) {
                        match d["ciphertext"].as_str() {
                            Some(ct) => sh.record(ct, plaintext),
                            None => sh.fail(format!("encrypt without ciphertext: {}", a.body)),
                        }
                    }
                }
            }
            Op::Decrypt | Op::ReEncrypt => {
                let Some((ct, pt)) = sh.pick_sealed(&mut rng) else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let action = if op == Op::Decrypt {
                    "decrypt"
                } else {
                    "re-encrypt"
                };
                let path = sh.key_path(action);
                let body = json!({"ciphertext": ct});
                if let Some(a) = sh.signed(op, "POST", &path, Some(body)).await {
                    if let Some(d) = sh.check(op, &path, &a) {
                        if op == Op::Decrypt {
                            let got = d["plaintext"].as_str().map(unb64);
                            if got.as_deref() != Some(pt.as_slice()) {
                                sh.fail(format!("decrypt of {ct} gave another plaintext"));
                            }
                        } else {
                            match d["newCiphertext"].as_str() {
                                Some(n) => sh.record(n, pt),
                                None => sh.fail(format!("re-encrypt answer: {}", a.body)),
                            }
                        }
                    }
                }
            }
            Op::Rotate => {
                let now = sh.started.elapsed().as_millis() as i64;
                let due = sh.next_rotation_ms.load(Ordering::SeqCst);
                if now < due
                    || sh
                        .next_rotation_ms
                        .compare_exchange(
                            due,
                            now + sh.rotation_interval_ms,
                            Ordering::SeqCst,
                            Ordering::SeqCst,
                        )
                        .is_err()
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
                let path = sh.key_path("rotate");
                if let Some(a) = sh.signed(op, "POST", &path, None).await {
                    if let Some(d) = sh.check(op, &path, &a) {
                        if let Some(v) = d["version"].as_i64() {
                            sh.newest.fetch_max(v, Ordering::SeqCst);
                        }
                    }
                }
            }
            Op::DisableVersion | Op::EnableVersion => {
                let newest = sh.newest.load(Ordering::SeqCst).max(1);
                let v = rng.gen_range(1..=newest);
                let action = if op == Op::DisableVersion {
                    "disable"
                } else {
                    "enable"
                };
                let path = sh.key_path(&format!("versions/{v}/{action}"));
                if let Some(a) = sh.signed(op, "POST", &path, None).await {
                    sh.check(op, &path, &a);
                }
                // Versions change state now and then, not at the rate of
                // the crypto calls, so that most ciphertexts stay usable.
                tokio::time::sleep(Duration::from_millis(rng.gen_range(20..200))).await;
            }
            Op::CreateTokenSet => {
                let path = sh.key_path("token-set");
                if let Some(a) = sh.signed(op, "POST", &path, Some(json!({}))).await {
                    if let Some(d) = sh.check(op, &path, &a) {
                        let slot = TokenSlot {
                            refresh: d["refreshToken"].as_str().unwrap_or("").to_string(),
                            access: d["accessToken"].as_str().unwrap_or("").to_string(),
                        };
                        sh.slots.lock().expect("slots").push(slot);
                    }
                }
            }
            Op::RenewTokenSet => {
                let (i, old) = {
                    let slots = sh.slots.lock().expect("slots");
                    let i = rng.gen_range(0..slots.len());
                    (i, slots[i].clone())
                };
                let keep_refresh = rng.gen_bool(0.5);
                let path = sh.key_path("token-set");
                let body = json!({"accessTokenHours": 1, "refreshTokenHours": 2});
                if let Some(a) = sh.with_token(op, "PUT", &path, &old.refresh, body).await {
                    // Any refusal fails: the refresh token is valid however
                    // often, and however concurrently, it was renewed.
                    if let Some(d) = sh.check(op, &path, &a) {
                        let mut slots = sh.slots.lock().expect("slots");
                        if !keep_refresh {
                            slots[i].refresh = d["refreshToken"].as_str().unwrap_or("").to_string();
                        }
                        slots[i].access = d["accessToken"].as_str().unwrap_or("").to_string();
                    }
                }
            }
            Op::TokenEncrypt => {
                let slot = {
                    let slots = sh.slots.lock().expect("slots");
                    slots[rng.gen_range(0..slots.len())].clone()
                };
                let path = sh.key_path("encrypt");
                let body = json!({"plaintext": b64(&plaintext)});
                // The slot's access token may be of a set renewed since it
                // was read: it works all the same.
                if let Some(a) = sh.with_token(op, "POST", &path, &slot.access, body).await {
                    if let Some(d) = sh.check(op, &path, &a) {
                        match d["ciphertext"].as_str() {
                            Some(ct) => sh.record(ct, plaintext),
                            None => sh.fail(format!("token encrypt answer: {}", a.body)),
                        }
                    }
                }
            }
            Op::Sign | Op::Verify => {
                let path = format!("/kms/v1/keys/{}/sign", sh.ec);
                let body = json!({"data": b64(&plaintext)});
                if let Some(a) = sh.signed(Op::Sign, "POST", &path, Some(body)).await {
                    if let Some(d) = sh.check(Op::Sign, &path, &a) {
                        let sig = d["signature"].as_str().unwrap_or("").to_string();
                        let path = format!("/kms/v1/keys/{}/verify", sh.ec);
                        let body = json!({"data": b64(&plaintext), "signature": sig});
                        if let Some(a) = sh.signed(Op::Verify, "POST", &path, Some(body)).await {
                            if let Some(d) = sh.check(Op::Verify, &path, &a) {
                                if d["valid"] != true {
                                    sh.fail(format!("own signature not valid: {}", a.body));
                                }
                            }
                        }
                    }
                }
            }
            Op::ListVersions => {
                let path = sh.key_path("versions");
                if let Some(a) = sh.signed(op, "GET", &path, None).await {
                    sh.check(op, &path, &a);
                }
            }
        }
    }
}

/// What each of the 32 clients does (in random order): mostly crypto
/// calls, with a few clients changing the key under them.
fn roles() -> Vec<Vec<Op>> {
    use Op::*;
    let mut r = Vec::new();
    for i in 0..CLIENTS {
        r.push(match i % 16 {
            0..=4 => vec![Encrypt],
            5 | 6 => vec![Decrypt],
            7 => vec![ReEncrypt, Decrypt],
            8 => vec![Rotate, Encrypt],
            9 => vec![DisableVersion, EnableVersion, EnableVersion],
            10 => vec![CreateTokenSet, TokenEncrypt],
            11 => vec![RenewTokenSet, TokenEncrypt],
            12 => vec![TokenEncrypt],
            13 => vec![Sign, Verify],
            14 => vec![ListVersions, Encrypt, Decrypt],
            _ => vec![Encrypt, Decrypt, ReEncrypt, TokenEncrypt],
        });
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "stress test: run by scripts/stress.sh"]
async fn thirty_two_clients_on_one_key() {
    let secs: u64 = std::env::var("STRESS_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    let kms = Kms::start_with(|c| {
        // Token sets are created and renewed (each renewal adds a set) all
        // through the run.
        c.limits.max_token_sets_per_key = 1_000_000;
    })
    .await;
    let aes = kms.create_key("stress-aes", "AES256", json!({})).await;
    let ec = kms.create_key("stress-ec", "ECDSA", json!({})).await;
    kms.call("POST", &format!("/kms/v1/keys/{aes}/token-generator"), None)
        .await
        .ok();
    let mut slots = Vec::new();
    for _ in 0..8 {
        let r = kms
            .call(
                "POST",
                &format!("/kms/v1/keys/{aes}/token-set"),
                Some(json!({})),
            )
            .await;
        let d = r.ok();
        slots.push(TokenSlot {
            refresh: d["refreshToken"].as_str().expect("refreshToken").into(),
            access: d["accessToken"].as_str().expect("accessToken").into(),
        });
    }
    let client = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .pool_max_idle_per_host(CLIENTS)
        .build()
        .expect("client");
    // Rotations at a bounded rate: about 80 in the run, so that the key stays
    // under its 100 versions for most of it (past 100 rotations answer 400).
    let rotation_interval_ms = (secs as i64 * 1000 / 80).max(50);
    let sh = Arc::new(Shared {
        kms,
        client,
        aes,
        ec,
        sealed: Mutex::new(Vec::new()),
        slots: Mutex::new(slots),
        newest: AtomicI64::new(1),
        next_rotation_ms: AtomicI64::new(0),
        rotation_interval_ms,
        started: Instant::now(),
        counts: Mutex::new(BTreeMap::new()),
        failures: Mutex::new(Vec::new()),
        requests: AtomicU64::new(0),
    });

    let deadline = Instant::now() + Duration::from_secs(secs);
    let tasks: Vec<_> = roles()
        .into_iter()
        .enumerate()
        .map(|(i, ops)| tokio::spawn(run_client(sh.clone(), ops, deadline, 0x5eed + i as u64)))
        .collect();
    for t in tasks {
        t.await.expect("client task");
    }
    let run_requests = sh.requests.load(Ordering::SeqCst);

    // The end state of the versions, then every acknowledged ciphertext.
    let path = sh.key_path("versions");
    let a = sh
        .signed(Op::ListVersions, "GET", &path, None)
        .await
        .expect("versions");
    let disabled: HashSet<i64> = a.body["data"]["versionList"]
        .as_array()
        .expect("versionList")
        .iter()
        .filter(|v| v["status"] != "ENABLE")
        .filter_map(|v| v["version"].as_i64())
        .collect();
    let current = a.body["data"]["currentVersion"].as_i64().unwrap_or(0);
    let sealed = std::mem::take(&mut *sh.sealed.lock().expect("sealed"));
    let mut by_version: HashMap<i64, Vec<Sealed>> = HashMap::new();
    for s in sealed.iter() {
        by_version.entry(s.version).or_default().push(Sealed {
            ciphertext: s.ciphertext.clone(),
            version: s.version,
            plaintext: s.plaintext.clone(),
        });
    }
    let (mut must_open, mut must_refuse) = (0usize, 0usize);
    for (version, items) in by_version {
        let off = disabled.contains(&version);
        for chunk in items.chunks(100) {
            let cts: Vec<&str> = chunk.iter().map(|s| s.ciphertext.as_str()).collect();
            let path = sh.key_path("decrypt");
            let Some(a) = sh
                .signed(Op::Decrypt, "POST", &path, Some(json!({"ciphertext": cts})))
                .await
            else {
                continue;
            };
            if off {
                must_refuse += chunk.len();
                let code = a.body["error"]["errorCode"].as_str().unwrap_or("");
                if a.status != 403 || code != "230" {
                    sh.fail(format!(
                        "end: ciphertexts of disabled version {version}: HTTP {} {}",
                        a.status, a.body
                    ));
                }
                continue;
            }
            must_open += chunk.len();
            if a.status != 200 {
                sh.fail(format!(
                    "end: ciphertexts of enabled version {version}: HTTP {} {}",
                    a.status, a.body
                ));
                continue;
            }
            let got = a.body["data"]["plaintext"].as_array().cloned();
            let ok = got.is_some_and(|g| {
                g.len() == chunk.len()
                    && g.iter()
                        .zip(chunk)
                        .all(|(p, s)| p.as_str().map(unb64).as_deref() == Some(&s.plaintext[..]))
            });
            if !ok {
                sh.fail(format!("end: version {version}: plaintexts differ"));
            }
        }
    }

    let counts = sh.counts.lock().expect("counts").clone();
    let mut summary = format!(
        "{CLIENTS} clients, {secs} s: {run_requests} requests ({:.0}/s), {} acknowledged \
         ciphertexts ({must_open} decrypted at the end, {must_refuse} refused: versions \
         {disabled:?} disabled of {current})\n",
        run_requests as f64 / secs as f64,
        sealed.len(),
    );
    for ((op, status), n) in &counts {
        summary.push_str(&format!("  {op:?} {status}: {n}\n"));
    }
    println!("{summary}");
    let failures = sh.failures.lock().expect("failures").clone();
    assert!(
        failures.is_empty(),
        "{} failures (first 50):\n  {}\n{summary}",
        failures.len(),
        failures.join("\n  ")
    );
    assert!(
        counts.keys().all(|(_, s)| *s < 500),
        "5xx answers:\n{summary}"
    );
    assert!(
        must_open > 0 && counts.contains_key(&(Op::Rotate, 200)),
        "the run did too little to mean anything:\n{summary}"
    );
}

/// Rotation while other calls write the store (their activity records, token
/// sets) must never answer 500. It did: the new version's number was read
/// and the row written in one deferred SQLite transaction, which fails with
/// "database is locked" at once, whatever the busy timeout, when another
/// connection commits between its read and its write. Part of the default
/// suite (a few seconds).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotation_under_concurrent_writes_never_fails() {
    let kms = Arc::new(Kms::start().await);
    let tag = kms.create_key("rot-aes", "AES256", json!({})).await;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..8)
        .map(|_| {
            let (kms, tag, stop) = (kms.clone(), tag.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    // Each Encrypt commits an activity record.
                    kms.encrypt(&tag, b"payload", None).await;
                }
            })
        })
        .collect();
    let mut failed = Vec::new();
    for _ in 0..20 {
        let r = kms.op(&tag, "rotate", json!(null)).await;
        if r.status != 200 {
            failed.push(format!("HTTP {} {}", r.status, r.body));
        }
    }
    stop.store(true, Ordering::SeqCst);
    for w in writers {
        w.await.expect("writer");
    }
    assert!(
        failed.is_empty(),
        "{} of 20 rotations failed: {failed:?}",
        failed.len()
    );
}
