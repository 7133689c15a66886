//! An acknowledged call's activity record survives a SIGKILL right after the
//! response: the server answers only once the record is committed.
mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{b64, make_token, now_ms, PIN};
use hsm_kms::api::auth::ncp::{sign, SignatureVersion};
use serde_json::{json, Value};

fn hsm_kms(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_hsm-kms"));
    c.env(common::token_conf_var(), common::token_conf_path(dir))
        .env("HSM_KMS_HSM_MODULE", common::module())
        .env("HSM_KMS_HSM_TOKEN_LABEL", "hsm-kms-test")
        .env("HSM_KMS_PIN", PIN)
        .env("HSM_KMS_STORE_DATA_DIR", dir.join("data"))
        .env("HSM_KMS_SERVER_LISTEN", "127.0.0.1:0")
        .env("HSM_KMS_LOG_FORMAT", "text");
    c
}

// The caller kills and reaps the child it is handed.
#[allow(clippy::zombie_processes)]
fn serve(dir: &Path) -> (Child, String) {
    let addr_file = dir.join("addr");
    let _ = std::fs::remove_file(&addr_file);
    let mut child = hsm_kms(dir)
        .args(["serve", "--addr-file"])
        .arg(&addr_file)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn hsm-kms serve");
    let start = Instant::now();
    loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            if !a.is_empty() {
                return (child, format!("http://{a}"));
            }
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("server did not start");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

async fn call(
    url: &str,
    ak: &str,
    sk: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> Value {
    let ts = now_ms().to_string();
    let sig = sign(
        SignatureVersion::V2,
        sk.as_bytes(),
        method,
        path,
        &ts,
        ak,
        None,
    );
    let mut rb = reqwest::Client::new()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{url}{path}"),
        )
        .header("x-ncp-apigw-timestamp", ts)
        .header("x-ncp-iam-access-key", ak)
        .header("x-ncp-apigw-signature-v2", sig);
    if let Some(b) = body {
        rb = rb
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    let r = rb.send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test]
async fn acknowledged_records_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    make_token(dir.path(), "hsm-kms-test");
    let out = hsm_kms(dir.path()).arg("init").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let field = |k: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap()
            .to_string()
    };
    let (ak, sk) = (field("access_key"), field("secret_key"));

    let (mut child, url) = serve(dir.path());
    let created = call(
        &url,
        &ak,
        &sk,
        "POST",
        "/kms/v1/keys",
        Some(json!({"keyName": "durable", "keyType": "AES256"})),
    )
    .await;
    let tag = created["data"]["keyTag"].as_str().unwrap().to_string();
    // Concurrent acknowledged calls, then SIGKILL as soon as the last answer arrives.
    let mut tasks = Vec::new();
    for i in 0..20u8 {
        let (url, ak, sk, tag) = (url.clone(), ak.clone(), sk.clone(), tag.clone());
        tasks.push(tokio::spawn(async move {
            call(
                &url,
                &ak,
                &sk,
                "POST",
                &format!("/kms/v1/keys/{tag}/encrypt"),
                Some(json!({"plaintext": b64(&[i])})),
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    child.kill().unwrap();
    child.wait().unwrap();

    let (mut child, url) = serve(dir.path());
    let logs = call(
        &url,
        &ak,
        &sk,
        "GET",
        &format!("/kms/v1/keys/{tag}/activities?pageSize=200"),
        None,
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let list = logs["data"]["activityLogList"].as_array().unwrap();
    assert_eq!(
        logs["data"]["totalCount"], 21,
        "CreateKey + 20 Encrypt: {logs}"
    );
    assert_eq!(
        list.iter()
            .filter(|r| r["data"]["api"]["action"] == "Encrypt")
            .count(),
        20
    );
}
