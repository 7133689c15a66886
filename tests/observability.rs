//! Issue 14 acceptance: after a scripted mix of calls (both dialects, a
//! token fault made with the test hooks, a replayed request, a quota
//! refusal, failed authentications), `/metrics` is read by an independent
//! parser of the exposition format (the `prometheus_client` package's, run
//! by `scripts/lib/metrics_families.py`), every family of
//! `docs/operations.md` exists, those the mix drives moved, and label
//! cardinality stays bounded.
//!
//! Needs Debian's `python3-prometheus-client` (`scripts/test.sh` installs
//! it).
#![cfg(feature = "test-hooks")]
mod common;
#[path = "common/nhn.rs"]
mod nhn;

use std::collections::BTreeMap;

use common::{b64, Kms};
use serde_json::{json, Value};

/// Debian's interpreter, where `python3-prometheus-client` installs.
const PYTHON: &str = "/usr/bin/python3";

/// One parsed scrape: family → (type, value), sample → value, series.
struct Scrape {
    families: BTreeMap<String, (String, f64)>,
    samples: BTreeMap<String, f64>,
    series: u64,
}

impl Scrape {
    fn value(&self, family: &str) -> f64 {
        self.families
            .get(family)
            .unwrap_or_else(|| panic!("family {family} missing from /metrics"))
            .1
    }
    fn sample(&self, key: &str) -> f64 {
        self.samples.get(key).copied().unwrap_or(0.0)
    }
}

async fn scrape_text(kms: &Kms) -> String {
    let r = reqwest::get(format!("{}/metrics", kms.url))
        .await
        .expect("metrics");
    assert_eq!(r.status(), 200);
    r.text().await.expect("metrics text")
}

/// Parses scrapes with the independent parser.
fn parse(texts: &[&str]) -> Vec<Scrape> {
    let have = std::process::Command::new(PYTHON)
        .args(["-c", "import prometheus_client"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        have,
        "{PYTHON} cannot import prometheus_client: install Debian's python3-prometheus-client \
         (scripts/test.sh does)"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut args = vec![concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/scripts/lib/metrics_families.py"
    )
    .to_string()];
    for (i, t) in texts.iter().enumerate() {
        let p = dir.path().join(format!("scrape{i}.txt"));
        std::fs::write(&p, t).expect("write scrape");
        args.push(p.display().to_string());
    }
    let out = std::process::Command::new(PYTHON)
        .args(&args)
        .output()
        .expect("run the parser");
    assert!(
        out.status.success(),
        "the exposition text does not parse: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Vec<Value> = serde_json::from_slice(&out.stdout).expect("parser JSON");
    v.into_iter()
        .map(|s| Scrape {
            families: s["families"]
                .as_object()
                .expect("families")
                .iter()
                .map(|(k, f)| {
                    (
                        k.clone(),
                        (
                            f["type"].as_str().unwrap_or_default().to_string(),
                            f["value"].as_f64().unwrap_or(0.0),
                        ),
                    )
                })
                .collect(),
            samples: s["samples"]
                .as_object()
                .expect("samples")
                .iter()
                .map(|(k, v)| (k.clone(), v.as_f64().unwrap_or(0.0)))
                .collect(),
            series: s["series"].as_u64().expect("series"),
        })
        .collect()
}

/// Families the mix must move (their value grows between the scrapes).
const MOVED: &[&str] = &[
    "hsm_kms_requests_total",
    "hsm_kms_request_duration_seconds",
    "hsm_kms_operation_duration_seconds",
    "hsm_kms_operations_total",
    "hsm_kms_pkcs11_call_duration_seconds",
    "hsm_kms_pkcs11_errors_total",
    "hsm_kms_hsm_faults_total",
    "hsm_kms_hsm_logins_total",
    "hsm_kms_hsm_retries_total",
    "hsm_kms_hsm_session_wait_seconds",
    "hsm_kms_hsm_queue_wait_seconds",
    "hsm_kms_hsm_batch_size",
    "hsm_kms_handle_map_lookups_total",
    "hsm_kms_token_calls_total",
    "hsm_kms_store_call_duration_seconds",
    "hsm_kms_activity_batch_size",
    "hsm_kms_activity_commit_duration_seconds",
    "hsm_kms_activity_batches_total",
    "hsm_kms_keys",
    "hsm_kms_key_versions",
    "hsm_kms_auth_failures_total",
    "hsm_kms_quota_refusals_total",
    "hsm_kms_quota_refusals_by_key_total",
];

/// Families that must exist (gauges of a state, counters the mix leaves at
/// zero).
const PRESENT: &[&str] = &[
    "hsm_kms_hsm_sessions",
    "hsm_kms_hsm_sessions_opened_total",
    "hsm_kms_hsm_queue_depth",
    "hsm_kms_hsm_permit_waits_total",
    "hsm_kms_hsm_ready",
    "hsm_kms_handle_map_entries",
    "hsm_kms_store_errors_total",
    "hsm_kms_activity_queue_depth",
    "hsm_kms_activity_failed_records_total",
    "hsm_kms_activity_dropped_records_total",
    "hsm_kms_scheduler_last_success_timestamp_seconds",
    "hsm_kms_scheduler_passes_total",
    "hsm_kms_scheduler_items_total",
    "hsm_kms_keys_rotation_overdue",
    "hsm_kms_key_rotation_overdue_seconds",
    "hsm_kms_keys_deletion_due",
    "hsm_kms_startup_seconds",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_family_exists_and_the_mix_moves_them() {
    let kms = Kms::start_with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".into()];
        // A quota small enough to refuse the 4th quick call on a key.
        c.rate_limit.profile = "custom".into();
        c.rate_limit.requests_per_second = 1;
        c.rate_limit.burst = 3;
        c.rate_limit.metrics_key_labels = 4;
    })
    .await;
    let before = scrape_text(&kms).await;

    // NAVER: keys of three types, encrypt, decrypt, sign, a bad ciphertext.
    let aes = kms.create_key("obs-aes", "AES256", json!({})).await;
    let ec = kms.create_key("obs-ec", "ECDSA", json!({})).await;
    let quota = kms.create_key("obs-quota", "AES256", json!({})).await;
    let after_fault = kms.create_key("obs-fault", "AES256", json!({})).await;
    let ct = kms.encrypt(&aes, b"observability", None).await;
    assert_eq!(kms.decrypt_ok(&aes, &ct, None).await, b"observability");
    let forged = format!("ncpkms:v1:{}", b64(&[7u8; 48]));
    let r = kms.decrypt(&aes, &forged, None).await;
    assert!(
        r.status == 400 || r.body["code"] == "DECRYPTION_FAILED",
        "{}",
        r.body
    );
    kms.op(&ec, "sign", json!({"data": b64(b"signed")}))
        .await
        .ok();

    // Quota: the 4th call within a second on one key is refused.
    let mut refused = 0;
    for _ in 0..6 {
        let r = kms
            .op(&quota, "encrypt", json!({"plaintext": b64(b"q")}))
            .await;
        if r.status == 429 {
            refused += 1;
        }
    }
    assert!(refused > 0, "the quota refused nothing");

    // Authentication failures: a wrong secret, a replayed management call.
    let r = kms
        .call_as(
            &kms.access_key.clone(),
            "not-the-secret",
            "GET",
            "/kms/v1/keys",
            None,
        )
        .await;
    r.assert_naver_error(401, "200");
    let h = Kms::signed_headers(
        &kms.access_key,
        &kms.secret_key,
        "POST",
        "/kms/v1/keys",
        &common::fresh_ts(),
    );
    let body = json!({"keyName": "obs-replay", "keyType": "AES256", "isAutoRotation": false})
        .to_string()
        .into_bytes();
    kms.raw("POST", "/kms/v1/keys", &h, Some(body.clone()))
        .await
        .ok();
    kms.raw("POST", "/kms/v1/keys", &h, Some(body))
        .await
        .assert_naver_error(401, "200");

    // NHN: a key store, a symmetric key, encrypt and decrypt, an unknown
    // appkey.
    let p = nhn::project(&kms, "obs", true).await;
    nhn::key_store(&kms, &p, "S", false, false, false, false).await;
    let id = nhn::create_key(&kms, &p, "symmetric-keys", "S", json!({})).await;
    let r = nhn::call(
        &kms,
        &p,
        "POST",
        &format!("/symmetric-keys/{id}/encrypt"),
        Some(json!({"plaintext": "hello"})),
    )
    .await;
    let nct = nhn::ok(&r)["ciphertext"].as_str().unwrap().to_string();
    let r = nhn::call(
        &kms,
        &p,
        "POST",
        &format!("/symmetric-keys/{id}/decrypt"),
        Some(json!({"ciphertext": nct})),
    )
    .await;
    assert_eq!(nhn::ok(&r)["plaintext"], "hello");
    let r = kms
        .raw(
            "GET",
            "/keymanager/v1.2/appkey/not-an-appkey/keystores",
            &[],
            None,
        )
        .await;
    nhn::err(&r, 401, -1100);

    // The token loses its login (C_Logout on the service's own module,
    // between token calls); the next call repairs it and succeeds.
    kms.engine
        .hsm()
        .quiesced(|ctx, slot| {
            let s = ctx.open_ro_session(slot).expect("open a session");
            s.logout().expect("C_Logout");
        })
        .await
        .expect("quiesced");
    let ct2 = kms.encrypt(&after_fault, b"after the fault", None).await;
    assert_eq!(
        kms.decrypt_ok(&after_fault, &ct2, None).await,
        b"after the fault"
    );

    let after = scrape_text(&kms).await;
    // Every family has its help text, as `promtool check metrics` (in
    // scripts/test-observability.sh, late in CI) demands: a counter added
    // without its `describe_counter!` fails here, in the default suite.
    let undescribed: Vec<&str> = after
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| !after.contains(&format!("# HELP {name} ")))
        .collect();
    assert!(
        undescribed.is_empty(),
        "families without a help text (add a describe_*! in src/api/metrics.rs): {undescribed:?}"
    );
    let s = parse(&[&before, &after]);
    let (b, a) = (&s[0], &s[1]);
    for f in MOVED {
        let (vb, va) = (b.families.get(*f).map_or(0.0, |x| x.1), a.value(f));
        assert!(va > vb, "{f} did not move: {vb} before, {va} after");
    }
    for f in PRESENT {
        a.value(f);
    }
    assert_eq!(
        a.families["hsm_kms_request_duration_seconds"].0,
        "histogram"
    );
    assert_eq!(
        a.families["hsm_kms_pkcs11_call_duration_seconds"].0,
        "histogram"
    );
    // What moved, by label.
    let moved = |key: &str| a.sample(key) - b.sample(key);
    assert!(moved("hsm_kms_auth_failures_total{dialect=\"naver\",reason=\"replay\"}") >= 1.0);
    assert!(
        moved("hsm_kms_auth_failures_total{dialect=\"naver\",reason=\"bad_signature\"}") >= 1.0
    );
    assert!(moved("hsm_kms_auth_failures_total{dialect=\"nhn\",reason=\"unknown_appkey\"}") >= 1.0);
    // The lost login: a token fault, repaired by a C_Login, counted by
    // return code. SoftHSMv2 answers the key's handle as invalid or the
    // user as not logged in (kind "fault"); Kryoptic answers C_EncryptInit
    // with CKR_GENERAL_ERROR (kind "other"), so either counts here
    // (docs/pkcs11-portability.md).
    assert!(moved("hsm_kms_hsm_logins_total{reason=\"relogin\"}") >= 1.0);
    let fault_errors: f64 = a
        .samples
        .keys()
        .filter(|k| {
            k.starts_with("hsm_kms_pkcs11_errors_total{")
                && (k.contains("kind=\"fault\"")
                    || k.contains("code=\"CKR_GENERAL_ERROR\",function=\"C_EncryptInit\""))
        })
        .map(|k| moved(k))
        .sum();
    assert!(
        fault_errors >= 1.0,
        "the lost login is not counted by return code: {:?}",
        a.samples
            .keys()
            .filter(|k| k.starts_with("hsm_kms_pkcs11_errors_total"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        moved("hsm_kms_quota_refusals_total{dialect=\"naver\"}"),
        f64::from(refused)
    );
    let fp = hsm_kms::telemetry::fingerprint(&quota);
    assert_eq!(
        moved(&format!(
            "hsm_kms_quota_refusals_by_key_total{{key=\"{fp}\"}}"
        )),
        f64::from(refused)
    );
    assert!(
        moved(
            "hsm_kms_operations_total{dialect=\"naver\",operation=\"encrypt\",result=\"success\"}"
        ) >= 2.0
    );
    assert!(moved("hsm_kms_operations_total{dialect=\"nhn\",operation=\"symmetric_keys_decrypt\",result=\"success\"}") >= 1.0);
    assert_eq!(
        a.sample("hsm_kms_keys{dialect=\"naver\",state=\"enabled\"}"),
        5.0
    );
    assert_eq!(
        a.sample("hsm_kms_keys{dialect=\"nhn\",state=\"enabled\"}"),
        1.0
    );
    assert_eq!(a.sample("hsm_kms_activity_dropped_records_total"), 0.0);
    assert!(
        a.sample("hsm_kms_scheduler_last_success_timestamp_seconds{scheduler=\"key_lifecycle\"}")
            > 1.6e9,
        "the start-up scheduler pass is not recorded"
    );
    // Nothing of a key tag, appkey or secret in any label.
    let text = after.as_str();
    for secret in [
        &aes,
        &quota,
        &p.appkey,
        &kms.access_key,
        &kms.secret_key,
        &id,
    ] {
        assert!(
            !text.contains(secret.as_str()),
            "/metrics names an identifier"
        );
    }
    assert!(a.series < 10_000, "{} distinct series", a.series);
}

/// The access log (issue 14): at the default level, one JSON line per
/// request with target `access`, carrying the request id, route template,
/// status, duration, dialect, operation, kind of credentials and the key
/// tag's fingerprint; never a path, a key tag or an appkey.
#[tokio::test]
async fn one_access_line_per_request_with_a_key_fingerprint() {
    use common::process::Site;
    let env = [
        ("HSM_KMS_LOG_LEVEL", "info"),
        ("HSM_KMS_LOG_FORMAT", "json"),
    ];
    let mut site = Site::init_with(common::PIN, &env);
    let server = site.serve(&[]).await;
    let r = server
        .call(
            "POST",
            "/kms/v1/keys",
            Some(json!({"keyName": "access", "keyType": "AES256", "isAutoRotation": false})),
        )
        .await;
    let tag = r.ok()["keyTag"].as_str().unwrap().to_string();
    let r = server
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/encrypt"),
            Some(json!({"plaintext": b64(b"logged?")})),
        )
        .await;
    let id = r
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("x-request-id")
        .to_string();
    r.ok();
    // Unsigned, and an unknown appkey.
    let unsigned = common::send(
        &server.client,
        &server.url,
        "POST",
        &format!("/kms/v1/keys/{tag}/encrypt"),
        &[],
        Some(b"{}".to_vec()),
    )
    .await;
    assert_eq!(unsigned.status, 401);
    let appkey = "appkey-that-must-not-be-logged";
    let nhn = common::send(
        &server.client,
        &server.url,
        "GET",
        &format!("/keymanager/v1.2/appkey/{appkey}/keystores"),
        &[],
        None,
    )
    .await;
    assert_eq!(nhn.status, 401);
    server.kill();

    let log = site.log(1);
    let lines: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "access")
        .collect();
    assert_eq!(lines.len(), 4, "one access line per request: {log}");
    for l in &lines {
        assert_eq!(l["level"], "INFO", "{l}");
        for f in ["request_id", "method", "route", "dialect", "auth", "key"] {
            assert!(l[f].is_string(), "{f} missing: {l}");
        }
        assert!(l["status"].is_u64() && l["duration_us"].is_u64(), "{l}");
        assert!(
            l.get("span").is_none(),
            "the access line carries the request span: {l}"
        );
    }
    let enc = lines
        .iter()
        .find(|l| l["request_id"] == id.as_str())
        .expect("the encrypt's line, by its request id");
    assert_eq!(enc["route"], "/kms/v1/keys/{key_tag}/encrypt");
    assert_eq!(enc["status"], 200);
    assert_eq!(enc["dialect"], "naver");
    assert_eq!(enc["operation"], "encrypt");
    assert_eq!(enc["auth"], "ncp_signature_v2");
    assert_eq!(enc["key"], hsm_kms::telemetry::fingerprint(&tag).as_str());
    assert!(lines
        .iter()
        .any(|l| l["status"] == 401 && l["auth"] == "none" && l["operation"] == "encrypt"));
    assert!(lines
        .iter()
        .any(|l| l["dialect"] == "nhn" && l["auth"] == "nhn_appkey" && l["status"] == 401));
    let access: String = lines.iter().map(|l| l.to_string()).collect();
    assert!(!access.contains(&tag), "an access line names the key tag");
    assert!(!access.contains(appkey), "an access line names the appkey");
}

/// Label cardinality does not follow the keys a client names (issue 14:
/// "label cardinality stays bounded under 10,000 distinct keys"): after a
/// warm-up that makes every series these calls can touch, 10,000 calls
/// naming 10,000 distinct NAVER key tags (2.0, 1.0 and v3 paths, unsigned:
/// refused authentication) and NHN appkeys, and 500 signed calls naming
/// distinct unknown keys (404), leave the number of series where it was.
/// Routes are labelled by template, failures by reason, keys never (the
/// per-key quota series are capped: `telemetry::security` tests them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn series_do_not_grow_with_the_keys_clients_name() {
    let kms = Kms::start().await;
    let client = reqwest::Client::new();
    let tag = |i: usize| format!("{i:064x}");
    let paths = |i: usize| {
        let t = tag(i);
        [
            format!("/kms/v1/keys/{t}/encrypt"),
            format!("/keys/v2/{t}/encrypt"),
            format!("/kms/v3/keys/{t}/encrypt"),
            format!("/keymanager/v1.2/appkey/app{i:x}/symmetric-keys/{t}/encrypt"),
        ]
    };
    let send = |range: std::ops::Range<usize>| {
        let (client, url) = (client.clone(), kms.url.clone());
        async move {
            let mut set = tokio::task::JoinSet::new();
            for i in range {
                for p in paths(i) {
                    let (client, url) = (client.clone(), url.clone());
                    set.spawn(async move {
                        let r = client
                            .post(format!("{url}{p}"))
                            .json(&json!({"plaintext": "aGVsbG8="}))
                            .send()
                            .await
                            .expect("send");
                        assert!(r.status().is_client_error(), "{p}: {}", r.status());
                    });
                }
                while set.len() >= 64 {
                    set.join_next().await.expect("task").expect("call");
                }
            }
            while let Some(r) = set.join_next().await {
                r.expect("call");
            }
        }
    };
    let signed = |range: std::ops::Range<usize>| {
        let kms = &kms;
        async move {
            for i in range {
                let r = kms
                    .call(
                        "POST",
                        &format!("/kms/v1/keys/{}/encrypt", tag(i)),
                        Some(json!({"plaintext": "aGVsbG8="})),
                    )
                    .await;
                assert_eq!(r.status, 404, "{}", r.body);
            }
        }
    };
    send(0..20).await;
    signed(0..20).await;
    // A scrape makes its own series (its route, the key-count queries).
    scrape_text(&kms).await;
    let before = scrape_text(&kms).await;
    send(20..2_520).await; // 2,500 tags x 4 paths = 10,000 calls
    signed(10_000..10_500).await;
    let after = scrape_text(&kms).await;
    let s = parse(&[&before, &after]);
    if s[1].series != s[0].series {
        // Which ones, for whoever reads the failure.
        let names = |t: &str| -> std::collections::BTreeSet<String> {
            t.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.rsplit_once(' ').map(|(k, _)| k.to_string()))
                .collect()
        };
        let (b, a) = (names(&before), names(&after));
        eprintln!("new series: {:?}", a.difference(&b).collect::<Vec<_>>());
    }
    assert_eq!(
        s[1].series, s[0].series,
        "series grew with the keys named: {} -> {}",
        s[0].series, s[1].series
    );
    for i in [25, 2_000, 10_100] {
        assert!(!after.contains(&tag(i)), "/metrics names a key tag");
    }
}
