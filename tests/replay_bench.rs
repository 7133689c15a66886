//! Benchmark (ignored; `scripts/bench-replay.sh` runs it): what the shared
//! NAVER replay guard (`naver.replay_guard_scope = "store"`, issue 11)
//! costs a single node against the guard in memory only (`"node"`), on the
//! calls it guards: signed management calls (Update Memo, under the default
//! `replay_guard = "management"`) and, under `replay_guard = "all"`, every
//! crypto call (Encrypt of 256 bytes). One store and token, four servers
//! (one per configuration) started together; rounds interleave the
//! configurations, each round a closed loop of sequential requests on one
//! connection, each request signed anew with its own timestamp. Prints
//! each round's rate, the medians and the ratio store / node. Figures, not
//! assertions: a loaded machine moves them.
#![cfg(feature = "test-hooks")]
mod common;

use std::time::Instant;

use common::process::{Server, Site};
use common::{b64, fresh_ts, send, Kms};
use serde_json::json;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Requests per second of `n` sequential signed calls.
async fn closed_loop(server: &Server, method: &str, path: &str, body: &str, n: usize) -> f64 {
    let t0 = Instant::now();
    for _ in 0..n {
        let h = Kms::signed_headers(
            &server.access_key,
            &server.secret_key,
            method,
            path,
            &fresh_ts(),
        );
        let r = send(
            &server.client,
            &server.url,
            method,
            path,
            &h,
            Some(body.as_bytes().to_vec()),
        )
        .await;
        assert_eq!(r.status, 200, "{method} {path}: {}", r.body);
    }
    n as f64 / t0.elapsed().as_secs_f64()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

#[tokio::test]
#[ignore = "benchmark: scripts/bench-replay.sh"]
async fn replay_guard_cost() {
    let rounds = env_or("BENCH_ROUNDS", 5);
    let n_memo = env_or("BENCH_MEMO_CALLS", 200);
    let n_enc = env_or("BENCH_ENCRYPT_CALLS", 400);
    let bin = std::env::var("HSM_KMS_BENCH_BIN").unwrap_or_default();
    let mut site = Site::init();
    let configs = [
        ("management", "node"),
        ("management", "store"),
        ("all", "node"),
        ("all", "store"),
    ];
    let mut servers = Vec::new();
    for (mode, scope) in configs {
        let env = [
            ("HSM_KMS_NAVER_REPLAY_GUARD", mode),
            ("HSM_KMS_NAVER_REPLAY_GUARD_SCOPE", scope),
            ("HSM_KMS_LOG_LEVEL", "warn"),
        ];
        servers.push(if bin.is_empty() {
            site.serve(&env).await
        } else {
            site.serve_with_binary(&bin, &env).await
        });
    }
    let r = servers[0]
        .call(
            "POST",
            "/kms/v1/keys",
            Some(json!({"keyName": "bench", "keyType": "AES256", "isAutoRotation": false})),
        )
        .await;
    let tag = r.ok()["keyTag"].as_str().unwrap().to_string();
    let memo_path = format!("/kms/v1/keys/{tag}/memo");
    let memo_body = json!({"memo": "bench"}).to_string();
    let enc_path = format!("/kms/v1/keys/{tag}/encrypt");
    let enc_body = json!({"plaintext": b64(&[7u8; 256])}).to_string();
    // Warm-up: caches, connections, prepared statements.
    for s in &servers {
        closed_loop(s, "PUT", &memo_path, &memo_body, 20).await;
        closed_loop(s, "POST", &enc_path, &enc_body, 20).await;
    }
    let mut rates: Vec<Vec<f64>> = vec![Vec::new(); configs.len()];
    for round in 0..rounds {
        // Interleaved, and the order turned every round.
        for k in 0..configs.len() {
            let i = (k + round) % configs.len();
            let (mode, _) = configs[i];
            let rate = if mode == "management" {
                closed_loop(&servers[i], "PUT", &memo_path, &memo_body, n_memo).await
            } else {
                closed_loop(&servers[i], "POST", &enc_path, &enc_body, n_enc).await
            };
            rates[i].push(rate);
        }
    }
    let store = if common::on_postgres() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    println!(
        "replay guard cost, one node, {store} store, {} binary, {rounds} interleaved rounds \
         (sequential requests on one connection, each signed anew)",
        if bin.is_empty() {
            "test (debug)"
        } else {
            bin.as_str()
        }
    );
    println!(
        "{:<38} {:>6} {:<40} {:>8}",
        "call (replay_guard, scope)", "calls", "req/s per round", "median"
    );
    let mut medians = Vec::new();
    for (i, (mode, scope)) in configs.iter().enumerate() {
        let call = if *mode == "management" {
            "Update Memo"
        } else {
            "Encrypt 256 B"
        };
        let per_round: Vec<String> = rates[i].iter().map(|r| format!("{r:.0}")).collect();
        let m = median(&rates[i]);
        medians.push(m);
        println!(
            "{:<38} {:>6} {:<40} {:>8.0}",
            format!("{call} ({mode}, {scope})"),
            if *mode == "management" { n_memo } else { n_enc },
            per_round.join(" / "),
            m
        );
    }
    println!(
        "ratio store / node: Update Memo {:.2}, Encrypt under \"all\" {:.2}",
        medians[1] / medians[0],
        medians[3] / medians[2]
    );
}
