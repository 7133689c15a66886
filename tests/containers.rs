//! The `hsm-kms:latest` container image, driven over HTTP with testcontainers.
//!
//! These tests are `#[ignore]`d: the default `cargo nextest run` (and
//! `--all-features`) never needs Docker. `scripts/test-containers.sh` builds
//! the image and runs them with `--run-ignored only`; run by hand with
//!
//! ```text
//! scripts/build-image.sh && cargo nextest run --test containers --run-ignored only
//! ```
//!
//! Once asked for, they fail (never skip) when no engine answers or the image
//! is missing. Each test makes its own named volumes (`hsm-kms-ct-*`) and
//! removes them, and its containers, when it ends.
//!
//! Docker API versions: testcontainers 0.25 speaks API 1.49 without
//! negotiating, and Debian 12's `docker.io` (20.10) answers at most 1.41. When
//! the engine is older than the client, [`docker_api`] puts a small proxy in
//! front of the engine socket that rewrites the version in each request path.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use hsm_kms::api::auth::ncp::{sign, SignatureVersion};
use serde_json::{json, Value};
use testcontainers::core::{ContainerPort, Mount, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};

/// PINs the tests initialise their tokens with.
const PIN: &str = "container-pin-4711";
const SO_PIN: &str = "container-so-pin-0815";

/// The image under test: `HSM_KMS_IMAGE`, default `hsm-kms:latest`.
fn image_ref() -> (String, String) {
    let r = std::env::var("HSM_KMS_IMAGE").unwrap_or_else(|_| "hsm-kms:latest".into());
    match r.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name.to_string(), tag.to_string()),
        _ => (r, "latest".to_string()),
    }
}

mod docker_api {
    //! Finds the engine, fails clearly when there is none or the image is
    //! missing, and bridges the API version gap with old engines.
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use hyper::body::Incoming;
    use hyper::service::service_fn;
    use hyper::{Request, Uri};
    use hyper_util::rt::TokioIo;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    use tokio::net::{TcpListener, UnixStream};

    /// The API version testcontainers' bollard asks for.
    const CLIENT_API: (u32, u32) = (1, 49);

    /// `DOCKER_HOST` as it was before [`connect`] pointed it at the proxy.
    static ENGINE_HOST: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

    /// The `docker` CLI aimed at the engine itself, not at the proxy: the
    /// CLI negotiates the API version on its own, and `docker exec` needs a
    /// connection upgrade (stream hijack) that the proxy does not forward.
    pub fn cli() -> std::process::Command {
        let mut c = std::process::Command::new("docker");
        match ENGINE_HOST.get_or_init(|| std::env::var("DOCKER_HOST").ok()) {
            Some(h) => c.env("DOCKER_HOST", h),
            None => c.env_remove("DOCKER_HOST"),
        };
        c
    }

    fn engine_socket() -> PathBuf {
        match std::env::var("DOCKER_HOST") {
            Ok(h) if h.starts_with("unix://") => PathBuf::from(&h["unix://".len()..]),
            _ => PathBuf::from("/var/run/docker.sock"),
        }
    }

    fn parse_version(v: &str) -> Option<(u32, u32)> {
        let (a, b) = v.split_once('.')?;
        Some((a.parse().ok()?, b.parse().ok()?))
    }

    /// `GET /version` without a version prefix (every engine answers that).
    async fn engine_api_version(socket: &Path) -> (u32, u32) {
        let mut s = UnixStream::connect(socket).await.unwrap_or_else(|e| {
            panic!(
                "no Docker engine at {} ({e}); scripts/test-containers.sh starts one",
                socket.display()
            )
        });
        s.write_all(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
            .await
            .unwrap();
        let mut buf = Vec::new();
        s.read_to_end(&mut buf).await.unwrap();
        let text = String::from_utf8_lossy(&buf);
        let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
        let v: serde_json::Value = serde_json::from_str(body)
            .unwrap_or_else(|e| panic!("engine /version is not JSON ({e}): {text}"));
        parse_version(v["ApiVersion"].as_str().unwrap_or(""))
            .unwrap_or_else(|| panic!("engine /version has no ApiVersion: {v}"))
    }

    /// Makes testcontainers reach the engine: directly when the engine
    /// speaks the client's API version, else through a local proxy that
    /// rewrites `/v1.49/...` to the engine's version. Call once per process,
    /// before the first container.
    pub async fn connect() {
        ENGINE_HOST.get_or_init(|| std::env::var("DOCKER_HOST").ok());
        if std::env::var("DOCKER_HOST").is_ok_and(|h| !h.starts_with("unix://")) {
            return; // A remote or TCP engine: used as configured.
        }
        let socket = engine_socket();
        let engine = engine_api_version(&socket).await;
        if engine >= CLIENT_API {
            return;
        }
        let prefix = format!("/v{}.{}", engine.0, engine.1);
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let socket = socket.clone();
                let prefix = prefix.clone();
                tokio::spawn(async move {
                    let Ok(outbound) = UnixStream::connect(&socket).await else {
                        return;
                    };
                    let Ok((sender, conn)) =
                        hyper::client::conn::http1::handshake(TokioIo::new(outbound)).await
                    else {
                        return;
                    };
                    tokio::spawn(conn);
                    // One engine connection per client connection; HTTP/1
                    // serves one request at a time, so the lock never waits.
                    let sender = Arc::new(tokio::sync::Mutex::new(sender));
                    let svc = service_fn(move |mut req: Request<Incoming>| {
                        let sender = sender.clone();
                        let prefix = prefix.clone();
                        async move {
                            rewrite_version(&mut req, &prefix);
                            let mut s = sender.lock().await;
                            s.ready().await?;
                            s.send_request(req).await
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(inbound), svc)
                        .await;
                });
            }
        });
        std::env::set_var("DOCKER_HOST", format!("tcp://{addr}"));
    }

    /// `/v1.49/containers/x/json?all=1` -> `{prefix}/containers/x/json?all=1`.
    fn rewrite_version(req: &mut Request<Incoming>, prefix: &str) {
        let pq = req
            .uri()
            .path_and_query()
            .map(|p| p.as_str().to_string())
            .unwrap_or_default();
        let Some(rest) = pq.strip_prefix("/v") else {
            return;
        };
        let Some(slash) = rest.find('/') else { return };
        if parse_version(&rest[..slash]).is_none() {
            return;
        }
        if let Ok(uri) = format!("{prefix}{}", &rest[slash..]).parse::<Uri>() {
            *req.uri_mut() = uri;
        }
    }

    /// Fails the test unless the image exists locally (nothing is pulled).
    pub fn require_image(image: &str) {
        let out = std::process::Command::new("docker")
            .args(["image", "inspect", "--format", "{{.Id}}", image])
            .output()
            .expect(
                "the docker CLI must be installed (scripts/test-containers.sh installs docker.io)",
            );
        assert!(
            out.status.success(),
            "image {image} is missing: build it with scripts/build-image.sh ({})",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

/// A pair of named volumes (token + data), removed on drop. Declare it
/// before the containers that mount it so they are removed first.
struct Volumes {
    tokens: String,
    data: String,
}

impl Volumes {
    fn new() -> Volumes {
        let id = uuid::Uuid::new_v4().simple().to_string();
        Volumes {
            tokens: format!("hsm-kms-ct-{}-tokens", &id[..12]),
            data: format!("hsm-kms-ct-{}-data", &id[..12]),
        }
    }
}

impl Drop for Volumes {
    fn drop(&mut self) {
        let _ = Command::new("docker")
            .args(["volume", "rm", "-f", &self.tokens, &self.data])
            .output();
    }
}

/// How the container gets its user PIN.
enum Pin<'a> {
    /// `HSM_KMS_PIN` (and `HSM_KMS_SO_PIN`).
    Env(&'a str),
    /// `HSM_KMS_PIN_FILE` / `HSM_KMS_SO_PIN_FILE`, as Docker secrets would.
    File(&'a str),
}

/// Creates and starts a container on `vols`; returns once it is started
/// (readiness is the caller's business: see [`Node::ready`]).
async fn run(vols: &Volumes, pin: Pin<'_>, wait: WaitFor) -> ContainerAsync<GenericImage> {
    let (name, tag) = image_ref();
    docker_api::require_image(&format!("{name}:{tag}"));
    let mut req = GenericImage::new(name, tag)
        .with_exposed_port(ContainerPort::Tcp(8080))
        .with_wait_for(wait)
        .with_mount(Mount::volume_mount(&vols.tokens, "/var/lib/hsm-kms/tokens"))
        .with_mount(Mount::volume_mount(&vols.data, "/var/lib/hsm-kms/data"))
        .with_env_var("HSM_KMS_LOG_LEVEL", "info")
        .with_startup_timeout(Duration::from_secs(60));
    req = match pin {
        Pin::Env(p) => req
            .with_env_var("HSM_KMS_PIN", p)
            .with_env_var("HSM_KMS_SO_PIN", SO_PIN),
        Pin::File(p) => req
            .with_env_var("HSM_KMS_PIN_FILE", "/run/secrets/hsm_kms_pin")
            .with_env_var("HSM_KMS_SO_PIN_FILE", "/run/secrets/hsm_kms_so_pin")
            .with_copy_to("/run/secrets/hsm_kms_pin", format!("{p}\n").into_bytes())
            .with_copy_to(
                "/run/secrets/hsm_kms_so_pin",
                format!("{SO_PIN}\n").into_bytes(),
            ),
    };
    req.start().await.expect("start the hsm-kms container")
}

/// A started container and an HTTP client for it.
struct Node {
    container: ContainerAsync<GenericImage>,
    url: String,
    http: reqwest::Client,
}

/// The first account's credentials as the entrypoint printed them.
#[derive(Debug, Clone)]
struct Credentials {
    access_key: String,
    secret_key: String,
}

impl Node {
    async fn start(vols: &Volumes, pin: Pin<'_>) -> Node {
        let container = run(vols, pin, WaitFor::Nothing).await;
        let port = container
            .get_host_port_ipv4(ContainerPort::Tcp(8080))
            .await
            .expect("published port");
        let node = Node {
            container,
            url: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        };
        node.ready(Duration::from_secs(60)).await;
        node
    }

    /// Polls `/readyz` until it answers 200.
    async fn ready(&self, within: Duration) {
        let t0 = Instant::now();
        loop {
            if let Ok(r) = self.http.get(format!("{}/readyz", self.url)).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            if t0.elapsed() > within {
                panic!(
                    "/readyz not 200 within {within:?}\nstdout:\n{}\nstderr:\n{}",
                    self.stdout().await,
                    self.stderr().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.container.stdout_to_vec().await.unwrap()).into_owned()
    }

    async fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.container.stderr_to_vec().await.unwrap()).into_owned()
    }

    /// Parses the once-printed first credentials from the container's stdout.
    async fn first_credentials(&self) -> Option<Credentials> {
        let out = self.stdout().await;
        let field = |k: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(k))
                .map(|v| v.trim().to_string())
        };
        Some(Credentials {
            access_key: field("access_key=")?,
            secret_key: field("secret_key=")?,
        })
    }

    /// A NAVER API 2.0 request signed with signature v2.
    async fn call(&self, c: &Credentials, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, body) = self.call_status(c, method, path, body).await;
        assert_eq!(status, 200, "{method} {path}: {body}");
        assert_eq!(body["code"], "SUCCESS", "{method} {path}: {body}");
        body["data"].clone()
    }

    async fn call_status(
        &self,
        c: &Credentials,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let ts = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis()
            .to_string();
        let sig = sign(
            SignatureVersion::V2,
            c.secret_key.as_bytes(),
            method,
            path,
            &ts,
            &c.access_key,
            None,
        );
        let mut rb = self
            .http
            .request(method.parse().unwrap(), format!("{}{path}", self.url))
            .header("x-ncp-apigw-timestamp", ts)
            .header("x-ncp-iam-access-key", &c.access_key)
            .header("x-ncp-apigw-signature-v2", sig);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb.send().await.expect("HTTP request");
        let status = resp.status().as_u16();
        let body = resp.json::<Value>().await.unwrap_or(Value::Null);
        (status, body)
    }

    async fn create_key(&self, c: &Credentials, name: &str, key_type: &str) -> String {
        let d = self
            .call(
                c,
                "POST",
                "/kms/v1/keys",
                Some(json!({"keyName": name, "keyType": key_type, "isAutoRotation": false})),
            )
            .await;
        d["keyTag"].as_str().expect("keyTag").to_string()
    }

    /// `docker inspect` health status (`starting`, `healthy`, `unhealthy`).
    fn health(&self) -> String {
        let out = Command::new("docker")
            .args([
                "inspect",
                "--format",
                "{{.State.Health.Status}}",
                self.container.id(),
            ])
            .output()
            .expect("docker inspect");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Stops and removes the container (its named volumes stay).
    async fn remove(self) {
        self.container.rm().await.expect("remove container");
    }
}

fn b64(data: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// Encrypts `plaintext` under `tag` and returns the ciphertext.
async fn encrypt(n: &Node, c: &Credentials, tag: &str, plaintext: &[u8]) -> String {
    let d = n
        .call(
            c,
            "POST",
            &format!("/kms/v1/keys/{tag}/encrypt"),
            Some(json!({"plaintext": b64(plaintext)})),
        )
        .await;
    d["ciphertext"].as_str().expect("ciphertext").to_string()
}

async fn decrypt(n: &Node, c: &Credentials, tag: &str, ciphertext: &str) -> Value {
    n.call(
        c,
        "POST",
        &format!("/kms/v1/keys/{tag}/decrypt"),
        Some(json!({"ciphertext": ciphertext})),
    )
    .await["plaintext"]
        .clone()
}

async fn sign_data(n: &Node, c: &Credentials, tag: &str, data: &[u8]) -> String {
    let d = n
        .call(
            c,
            "POST",
            &format!("/kms/v1/keys/{tag}/sign"),
            Some(json!({"data": b64(data)})),
        )
        .await;
    d["signature"].as_str().expect("signature").to_string()
}

async fn verify(n: &Node, c: &Credentials, tag: &str, data: &[u8], sig: &str) -> bool {
    let d = n
        .call(
            c,
            "POST",
            &format!("/kms/v1/keys/{tag}/verify"),
            Some(json!({"data": b64(data), "signature": sig})),
        )
        .await;
    d["valid"].as_bool().expect("valid")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the hsm-kms:latest image: scripts/test-containers.sh"]
async fn first_start_prints_credentials_once_and_serves_naver_v2() {
    docker_api::connect().await;
    let vols = Volumes::new();
    let node = Node::start(&vols, Pin::Env(PIN)).await;

    let out = node.stdout().await;
    assert!(
        out.contains("==== hsm-kms first credentials"),
        "first start must print the credentials block:\n{out}"
    );
    let creds = node
        .first_credentials()
        .await
        .expect("credentials in stdout");
    assert!(creds.access_key.len() >= 16, "{creds:?}");
    assert!(!creds.secret_key.is_empty());
    let err = node.stderr().await;
    assert!(
        err.contains("initialising SoftHSM token 'hsm-kms'"),
        "entrypoint must say it initialised the token:\n{err}"
    );
    assert!(
        !err.contains(PIN) && !out.contains(PIN),
        "the PIN must never be logged"
    );

    // Unsigned and badly signed requests are refused: authentication is real.
    let bad = Credentials {
        access_key: creds.access_key.clone(),
        secret_key: "not-the-secret".into(),
    };
    let (status, body) = node.call_status(&bad, "GET", "/kms/v1/keys", None).await;
    assert_eq!(status, 401, "{body}");

    // AES-256-GCM: encrypt / decrypt round trip.
    let aes = node.create_key(&creds, "ct-aes", "AES256").await;
    let ct = encrypt(&node, &creds, &aes, b"attack at dawn").await;
    assert!(ct.starts_with("ncpkms:v1:"), "{ct}");
    assert_eq!(
        decrypt(&node, &creds, &aes, &ct).await,
        b64(b"attack at dawn")
    );

    // RSA-2048 and ECDSA P-256: sign / verify; a changed message fails.
    for kt in ["RSA2048", "ECDSA"] {
        let tag = node.create_key(&creds, &format!("ct-{kt}"), kt).await;
        let sig = sign_data(&node, &creds, &tag, b"container message").await;
        assert!(
            verify(&node, &creds, &tag, b"container message", &sig).await,
            "{kt}"
        );
        assert!(
            !verify(&node, &creds, &tag, b"another message", &sig).await,
            "{kt}"
        );
    }

    // The image's HEALTHCHECK (`hsm-kms healthcheck`) turns the container healthy.
    let t0 = Instant::now();
    let mut health = node.health();
    while health != "healthy" && t0.elapsed() < Duration::from_secs(45) {
        assert_ne!(health, "unhealthy", "HEALTHCHECK failed");
        tokio::time::sleep(Duration::from_millis(500)).await;
        health = node.health();
    }
    assert_eq!(health, "healthy");
    node.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the hsm-kms:latest image: scripts/test-containers.sh"]
async fn keys_and_ciphertexts_survive_a_new_container_on_the_same_volumes() {
    docker_api::connect().await;
    let vols = Volumes::new();
    // PINs as Docker secrets files this time.
    let first = Node::start(&vols, Pin::File(PIN)).await;
    let creds = first.first_credentials().await.expect("first credentials");
    let aes = first.create_key(&creds, "survivor-aes", "AES256").await;
    let ct = encrypt(&first, &creds, &aes, b"kept across restarts").await;
    let ec = first.create_key(&creds, "survivor-ec", "ECDSA").await;
    let sig = sign_data(&first, &creds, &ec, b"signed before").await;
    first.remove().await;

    let second = Node::start(&vols, Pin::File(PIN)).await;
    let out = second.stdout().await;
    assert!(
        !out.contains("secret_key="),
        "credentials must not be printed again on restart:\n{out}"
    );
    assert!(second.first_credentials().await.is_none());
    // The same access key still works, the same keys decrypt and verify.
    assert_eq!(
        decrypt(&second, &creds, &aes, &ct).await,
        b64(b"kept across restarts")
    );
    assert!(verify(&second, &creds, &ec, b"signed before", &sig).await);
    let listed = second.call(&creds, "GET", "/kms/v1/keys", None).await;
    let text = listed.to_string();
    assert!(text.contains(&aes) && text.contains(&ec), "{listed}");
    // And new work goes on: a fresh ciphertext under the old key.
    let ct2 = encrypt(&second, &creds, &aes, b"after restart").await;
    assert_eq!(
        decrypt(&second, &creds, &aes, &ct2).await,
        b64(b"after restart")
    );
    second.remove().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the hsm-kms:latest image: scripts/test-containers.sh"]
async fn a_wrong_pin_is_refused_with_a_clear_log_line() {
    docker_api::connect().await;
    let vols = Volumes::new();
    let good = Node::start(&vols, Pin::Env(PIN)).await;
    good.remove().await;

    let wrong = "0000-wrong-pin";
    let c = run(
        &vols,
        Pin::Env(wrong),
        WaitFor::exit(testcontainers::core::wait::ExitWaitStrategy::new()),
    )
    .await;
    assert_eq!(
        c.exit_code().await.unwrap(),
        Some(1),
        "a wrong PIN must stop the service"
    );
    let err = String::from_utf8_lossy(&c.stderr_to_vec().await.unwrap()).into_owned();
    let out = String::from_utf8_lossy(&c.stdout_to_vec().await.unwrap()).into_owned();
    assert!(
        err.contains("cannot open the HSM token: login to the token failed"),
        "expected a clear login failure in the log:\n{err}"
    );
    assert!(
        err.contains("PIN"),
        "the log line must name the PIN:\n{err}"
    );
    assert!(!out.contains("listening"), "must not serve:\n{out}");
    assert!(
        !err.contains(wrong) && !out.contains(wrong),
        "the PIN must never be logged"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the hsm-kms:latest image: scripts/test-containers.sh"]
async fn no_pin_at_all_is_refused_before_touching_the_token() {
    docker_api::connect().await;
    let vols = Volumes::new();
    let (name, tag) = image_ref();
    docker_api::require_image(&format!("{name}:{tag}"));
    let c = GenericImage::new(name, tag)
        .with_wait_for(WaitFor::exit(
            testcontainers::core::wait::ExitWaitStrategy::new(),
        ))
        .with_mount(Mount::volume_mount(&vols.tokens, "/var/lib/hsm-kms/tokens"))
        .with_mount(Mount::volume_mount(&vols.data, "/var/lib/hsm-kms/data"))
        .start()
        .await
        .expect("start");
    assert_eq!(c.exit_code().await.unwrap(), Some(1));
    let err = String::from_utf8_lossy(&c.stderr_to_vec().await.unwrap()).into_owned();
    assert!(
        err.contains("no user PIN: set HSM_KMS_PIN or HSM_KMS_PIN_FILE"),
        "{err}"
    );
    // Nothing was initialised: the token volume is still empty.
    let ls = Command::new("docker")
        .args([
            "volume",
            "inspect",
            "--format",
            "{{.Mountpoint}}",
            &vols.tokens,
        ])
        .output()
        .unwrap();
    let dir = PathBuf::from(String::from_utf8_lossy(&ls.stdout).trim());
    if dir.exists() {
        assert_eq!(
            std::fs::read_dir(&dir).unwrap().count(),
            0,
            "token volume touched"
        );
    }
}

/// Issue 8, item 1: the entrypoint and `hsm-kms` refuse both mismatched
/// volume pairs (a used token with an empty data volume, an empty token
/// volume with a used data volume), exit 1 and destroy nothing: the right
/// pair serves the old key afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the hsm-kms:latest image: scripts/test-containers.sh"]
async fn item1_mismatched_volumes_are_refused_in_both_directions() {
    docker_api::connect().await;
    let vols = Volumes::new();
    let spare = Volumes::new();
    let first = Node::start(&vols, Pin::Env(PIN)).await;
    let creds = first.first_credentials().await.expect("first credentials");
    let aes = first.create_key(&creds, "bound", "AES256").await;
    let ct = encrypt(&first, &creds, &aes, b"kept").await;
    first.remove().await;

    // Mixed pairs; `spare` and `vols` remove the volumes at the end.
    let used_token_empty_data = std::mem::ManuallyDrop::new(Volumes {
        tokens: vols.tokens.clone(),
        data: spare.data.clone(),
    });
    let empty_token_used_data = std::mem::ManuallyDrop::new(Volumes {
        tokens: spare.tokens.clone(),
        data: vols.data.clone(),
    });
    for (pair, want) in [
        (
            &*used_token_empty_data,
            "refusing to start, nothing was destroyed",
        ),
        (&*empty_token_used_data, "is empty but the data volume"),
    ] {
        let c = run(
            pair,
            Pin::Env(PIN),
            WaitFor::exit(testcontainers::core::wait::ExitWaitStrategy::new()),
        )
        .await;
        let err = String::from_utf8_lossy(&c.stderr_to_vec().await.unwrap()).into_owned();
        let out = String::from_utf8_lossy(&c.stdout_to_vec().await.unwrap()).into_owned();
        assert_eq!(c.exit_code().await.unwrap(), Some(1), "{err}");
        assert!(err.contains(want), "{err}");
        assert!(!out.contains("secret_key="), "no new installation: {out}");
        c.rm().await.expect("remove container");
    }

    let again = Node::start(&vols, Pin::Env(PIN)).await;
    assert_eq!(decrypt(&again, &creds, &aes, &ct).await, b64(b"kept"));
    again.remove().await;
}

/// `docker exec <container> hsm-kms admin nhn ARGS...` with the environment
/// the container was started with (PIN, SoftHSM config, data dir); returns
/// its stdout. Runs as the image's user, like the server.
fn nhn_admin(node: &Node, args: &[&str]) -> String {
    let out = docker_api::cli()
        .args(["exec", node.container.id(), "hsm-kms", "admin", "nhn"])
        .args(args)
        .output()
        .expect("docker exec");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "hsm-kms admin nhn {args:?} failed ({})\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The value of `key=` in an admin command's output (`key=value` words).
fn admin_field(out: &str, key: &str) -> String {
    out.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .unwrap_or_else(|| panic!("no {key}= in admin output: {out}"))
        .to_string()
}

/// An NHN Secure Key Manager v1.2 call under `appkey`, with the User
/// Access Key headers when `uak` is given; returns status and body.
async fn nhn_call(
    node: &Node,
    appkey: &str,
    uak: Option<&(String, String)>,
    method: &str,
    suffix: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut rb = node.http.request(
        method.parse().unwrap(),
        format!("{}/keymanager/v1.2/appkey/{appkey}{suffix}", node.url),
    );
    if let Some((id, secret)) = uak {
        rb = rb
            .header("X-TC-AUTHENTICATION-ID", id)
            .header("X-TC-AUTHENTICATION-SECRET", secret);
    }
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    let resp = rb.send().await.expect("HTTP request");
    let status = resp.status().as_u16();
    (status, resp.json::<Value>().await.unwrap_or(Value::Null))
}

/// Asserts the NHN success envelope and returns `body`.
fn nhn_ok((status, body): (u16, Value)) -> Value {
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["header"]["isSuccessful"], true, "{body}");
    assert_eq!(body["header"]["resultCode"], 0, "{body}");
    body["body"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs Docker and the hsm-kms:latest image: scripts/test-containers.sh"]
async fn nhn_dialect_through_admin_made_appkey() {
    docker_api::connect().await;
    let vols = Volumes::new();
    let node = Node::start(&vols, Pin::Env(PIN)).await;

    // The console's part, done with the admin CLI inside the container
    // (it opens the same token and SQLite store as the running server).
    let out = nhn_admin(&node, &["create-project", "ct-shop"]);
    assert!(out.starts_with("project=ct-shop id="), "{out}");
    let appkey = admin_field(
        &nhn_admin(&node, &["create-appkey", "--project", "ct-shop"]),
        "appkey",
    );
    assert!(appkey.len() >= 16, "{appkey}");
    // Management calls need the project's User Access Key (issue 8).
    let out = nhn_admin(&node, &["create-user-access-key", "--project", "ct-shop"]);
    let uak = (
        admin_field(&out, "user_access_key"),
        admin_field(&out, "secret_access_key"),
    );
    let out = nhn_admin(
        &node,
        &[
            "create-key-store",
            "--project",
            "ct-shop",
            "--name",
            "ct-store",
        ],
    );
    assert_eq!(admin_field(&out, "key_store"), "ct-store", "{out}");
    let ks: i64 = admin_field(&out, "keyStoreId").parse().expect("keyStoreId");

    let (status, body) = nhn_call(&node, &appkey, Some(&uak), "GET", "/confirm", None).await;
    let confirm = nhn_ok((status, body));
    assert_eq!(confirm["clientSentCertificate"], false, "{confirm}");

    let create = |kind: &'static str, extra: Value| {
        let node = &node;
        let appkey = appkey.clone();
        let uak = uak.clone();
        async move {
            let mut body = json!({"keyStoreName": "ct-store", "name": format!("ct {kind}"),
                "description": "container test"});
            for (k, v) in extra.as_object().unwrap() {
                body[k] = v.clone();
            }
            let b = nhn_ok(
                nhn_call(
                    node,
                    &appkey,
                    Some(&uak),
                    "POST",
                    &format!("/keys/{kind}/create"),
                    Some(body),
                )
                .await,
            );
            assert_eq!(b["keyStatus"], "ACTIVE", "{b}");
            let id = b["keyId"].as_str().expect("keyId").to_string();
            assert_eq!(id.len(), 32, "{id}");
            id
        }
    };

    // Symmetric key: encrypt / decrypt round trip; a tampered ciphertext fails.
    let sym = create("symmetric-keys", json!({"autoRotationPeriod": 0})).await;
    let b = nhn_ok(
        nhn_call(
            &node,
            &appkey,
            Some(&uak),
            "POST",
            &format!("/symmetric-keys/{sym}/encrypt"),
            Some(json!({"plaintext": "hello from the container"})),
        )
        .await,
    );
    assert_eq!(b["keyVersion"], 1, "{b}");
    let ct = b["ciphertext"].as_str().expect("ciphertext").to_string();
    assert!(!ct.contains("hello"), "{ct}");
    let b = nhn_ok(
        nhn_call(
            &node,
            &appkey,
            Some(&uak),
            "POST",
            &format!("/symmetric-keys/{sym}/decrypt"),
            Some(json!({"ciphertext": ct})),
        )
        .await,
    );
    assert_eq!(b["plaintext"], "hello from the container", "{b}");

    // Asymmetric key: sign / verify; a changed message does not verify.
    let asym = create("asymmetric-keys", json!({"autoRotationPeriod": 0})).await;
    let b = nhn_ok(
        nhn_call(
            &node,
            &appkey,
            Some(&uak),
            "POST",
            &format!("/asymmetric-keys/{asym}/sign"),
            Some(json!({"plaintext": "container message"})),
        )
        .await,
    );
    let sig = b["signature"].as_str().expect("signature").to_string();
    for (msg, valid) in [("container message", true), ("another message", false)] {
        let b = nhn_ok(
            nhn_call(
                &node,
                &appkey,
                Some(&uak),
                "POST",
                &format!("/asymmetric-keys/{asym}/verify"),
                Some(json!({"plaintext": msg, "signature": sig})),
            )
            .await,
        );
        assert_eq!(b["result"], valid, "{msg}: {b}");
    }

    // Secret: create and read back; the key store lists it.
    let sec = create("secrets", json!({"secretValue": "db-password-42"})).await;
    let b = nhn_ok(
        nhn_call(
            &node,
            &appkey,
            Some(&uak),
            "GET",
            &format!("/secrets/{sec}"),
            None,
        )
        .await,
    );
    assert_eq!(b["secret"], "db-password-42", "{b}");
    let b = nhn_ok(
        nhn_call(
            &node,
            &appkey,
            Some(&uak),
            "GET",
            &format!("/keystores/{ks}/keys/{sec}"),
            None,
        )
        .await,
    );
    assert_eq!(b["keyId"], sec.as_str(), "{b}");

    // NHN errors (docs/nhn-error-codes.md): unknown appkey -> 401 / -1100,
    // unknown key id -> 404 / -1300, each in the NHN envelope with a null body.
    for (key, suffix, status, code) in [
        ("nosuchappkey", "/confirm".to_string(), 401, -1100),
        (
            appkey.as_str(),
            "/secrets/00000000000000000000000000000000".to_string(),
            404,
            -1300,
        ),
    ] {
        let (s, body) = nhn_call(&node, key, Some(&uak), "GET", &suffix, None).await;
        assert_eq!(s, status, "{suffix}: {body}");
        assert_eq!(body["header"]["isSuccessful"], false, "{body}");
        assert_eq!(body["header"]["resultCode"], code, "{body}");
        assert!(body["header"]["resultMessage"].is_string(), "{body}");
        assert!(body["body"].is_null(), "{body}");
    }
    node.remove().await;
}
