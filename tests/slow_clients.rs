//! Issue 8 item 7: slow and idle clients. Half-open connections (a request
//! head never finished, a TLS handshake never made), idle keep-alive
//! connections and trickled bodies are closed within their timeouts while
//! `/readyz` keeps answering; connections beyond `server.max_connections`
//! are closed at once while the open ones keep working. Both listeners, the
//! plain one and the `[tls]` one.
mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hsm_kms::config::Config;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Slack on top of a timeout for a loaded 2-core CI machine.
const MARGIN: Duration = Duration::from_secs(4);

struct Server {
    plain: SocketAddr,
    tls: SocketAddr,
    server_ca: reqwest::Certificate,
    server_der: Vec<u8>,
    access_key: String,
    secret_key: String,
    _dir: tempfile::TempDir,
}

/// Starts the service with both listeners after `tweak`.
async fn start(tweak: impl FnOnce(&mut Config)) -> Server {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let dir = tempfile::tempdir().unwrap();
    common::make_token(dir.path(), "hsm-kms-test");
    let mut cfg = common::config(dir.path());
    let server = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into()]).unwrap();
    let cert_file = dir.path().join("server.pem");
    let key_file = dir.path().join("server.key");
    std::fs::write(&cert_file, server.cert.pem()).unwrap();
    std::fs::write(&key_file, server.signing_key.serialize_pem()).unwrap();
    cfg.tls.listen = "127.0.0.1:0".into();
    cfg.tls.cert_file = cert_file.display().to_string();
    cfg.tls.key_file = key_file.display().to_string();
    tweak(&mut cfg);
    let creds = hsm_kms::server::init(&cfg, "default")
        .await
        .unwrap()
        .first_credentials
        .expect("first credentials");
    let running = hsm_kms::server::start(&cfg, std::future::pending())
        .await
        .unwrap();
    Server {
        plain: running.addr,
        tls: running.tls_addr.expect("TLS listener"),
        server_ca: reqwest::Certificate::from_pem(server.cert.pem().as_bytes()).unwrap(),
        server_der: server.cert.der().to_vec(),
        access_key: creds.access_key.clone(),
        secret_key: creds.secret_key.to_string(),
        _dir: dir,
    }
}

impl Server {
    /// A client that opens a new connection for every request (a pooled
    /// connection could be one the server just closed for idleness).
    fn client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(self.server_ca.clone())
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap()
    }

    async fn readyz(&self, tls: bool) -> u16 {
        let url = if tls {
            format!("https://{}/readyz", self.tls)
        } else {
            format!("http://{}/readyz", self.plain)
        };
        match self.client().get(url).send().await {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }

    /// A TLS connection to the `[tls]` listener, handshake done.
    async fn tls_connect(&self) -> tokio_rustls::client::TlsStream<TcpStream> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                self.server_der.clone(),
            ))
            .unwrap();
        let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let tcp = TcpStream::connect(self.tls).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        connector.connect(name, tcp).await.expect("TLS handshake")
    }
}

/// Reads until the peer closes (EOF or reset); the time it took, or `None`
/// when the connection is still open at `deadline`.
async fn closed_by<S: AsyncRead + Unpin>(s: &mut S, deadline: Instant) -> Option<Instant> {
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(Instant::now()),
            Ok(Ok(_)) => continue,
        }
    }
}

/// Polls `/readyz` every 100 ms until `until`; every answer must be 200.
async fn readyz_meanwhile(s: &Server, tls: bool, until: Instant) -> usize {
    let mut n = 0;
    while Instant::now() < until {
        assert_eq!(s.readyz(tls).await, 200, "/readyz while clients hang");
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    n
}

fn short_timeouts(c: &mut Config) {
    c.server.header_read_timeout_secs = 2;
    c.server.body_read_timeout_secs = 2;
    c.server.idle_timeout_secs = 2;
}

#[tokio::test]
async fn item7_half_open_connections_closed_while_readyz_answers() {
    let s = Arc::new(start(short_timeouts).await);
    let timeout = Duration::from_secs(2);
    let opened = Instant::now();
    let mut conns = Vec::new();
    for _ in 0..200 {
        let mut c = TcpStream::connect(s.plain).await.unwrap();
        c.write_all(b"GET /readyz HTTP/1.1\r\nHost: kms\r\nX-Slow: ")
            .await
            .unwrap();
        conns.push(c);
    }
    let polls = tokio::spawn({
        let until = opened + timeout;
        let s = s.clone();
        async move { readyz_meanwhile(&s, false, until).await }
    });
    let deadline = opened + timeout + MARGIN;
    let mut last = opened;
    for (i, c) in conns.iter_mut().enumerate() {
        let at = closed_by(c, deadline).await.unwrap_or_else(|| {
            panic!(
                "half-open connection {i} still open after {:?}",
                deadline - opened
            )
        });
        last = last.max(at);
    }
    assert!(polls.await.unwrap() > 0, "/readyz was polled");
    eprintln!(
        "200 half-open connections closed, the last {:?} after opening (header_read_timeout 2 s)",
        last - opened
    );
    assert_eq!(s.readyz(false).await, 200);
}

#[tokio::test]
async fn item7_idle_keep_alive_and_slow_body_closed() {
    let s = start(short_timeouts).await;
    // Idle keep-alive: one full request, then nothing.
    let mut c = TcpStream::connect(s.plain).await.unwrap();
    c.write_all(b"GET /healthz HTTP/1.1\r\nHost: kms\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    let answered = Instant::now();
    let at = closed_by(&mut c, answered + Duration::from_secs(2) + MARGIN)
        .await
        .expect("idle keep-alive connection still open");
    eprintln!(
        "idle keep-alive connection closed {:?} after its answer",
        at - answered
    );

    // A signed request whose body trickles in, one byte every 500 ms.
    let ts = common::now_ms().to_string();
    let headers =
        common::Kms::signed_headers(&s.access_key, &s.secret_key, "POST", "/kms/v1/keys", &ts);
    let mut c = TcpStream::connect(s.plain).await.unwrap();
    let mut head = String::from("POST /kms/v1/keys HTTP/1.1\r\nHost: kms\r\nContent-Type: application/json\r\nContent-Length: 200\r\n");
    for (k, v) in &headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    c.write_all(head.as_bytes()).await.unwrap();
    let started = Instant::now();
    let (mut rd, mut wr) = c.into_split();
    let trickle = tokio::spawn(async move {
        for _ in 0..200 {
            if wr.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    });
    let mut answer = Vec::new();
    let deadline = started + Duration::from_secs(2) + MARGIN;
    let closed = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rd.read(&mut buf)).await {
            Err(_) => break None,
            Ok(Ok(0)) | Ok(Err(_)) => break Some(Instant::now()),
            Ok(Ok(n)) => answer.extend_from_slice(&buf[..n]),
        }
    };
    trickle.abort();
    let closed = closed.expect("a trickled body kept the connection open");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 400"), "answer: {text}");
    assert!(text.contains("\"errorCode\":\"100\""), "answer: {text}");
    eprintln!(
        "trickled body refused and closed {:?} after its head",
        closed - started
    );
}

#[tokio::test]
async fn item7_connections_beyond_the_cap_are_closed() {
    let s = start(|c| c.server.max_connections = 20).await;
    // 20 connections, each proven accepted by one answered request (then
    // idle, well within the default idle timeout).
    let mut held = Vec::new();
    for _ in 0..20 {
        let mut c = TcpStream::connect(s.plain).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: kms\r\n\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 512];
        let n = c.read(&mut buf).await.unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(c);
    }
    let mut extra = TcpStream::connect(s.plain).await.unwrap();
    let t = Instant::now();
    closed_by(&mut extra, t + Duration::from_secs(2))
        .await
        .expect("the 21st connection is closed at once");
    eprintln!("connection over the cap closed after {:?}", t.elapsed());
    // The ones inside the cap work.
    let c = &mut held[7];
    c.write_all(b"GET /readyz HTTP/1.1\r\nHost: kms\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Freed slots are usable again.
    held.truncate(10);
    let mut ok = false;
    for _ in 0..20 {
        if s.readyz(false).await == 200 {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok, "/readyz once connections were released");
    let metrics = s
        .client()
        .get(format!("http://{}/metrics", s.plain))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("hsm_kms_connections_refused_total{listener=\"plain\"}")),
        "metrics: {metrics}"
    );
}

#[tokio::test]
async fn item7_tls_listener_half_open_connections_closed() {
    let s = start(short_timeouts).await;
    let opened = Instant::now();
    // 20 connections that never start the handshake, 10 that finish it and
    // then send half a request head.
    let mut raw = Vec::new();
    for _ in 0..20 {
        raw.push(TcpStream::connect(s.tls).await.unwrap());
    }
    let mut tls = Vec::new();
    for _ in 0..10 {
        let mut c = s.tls_connect().await;
        c.write_all(b"GET /readyz HTTP/1.1\r\nHost: kms\r\n")
            .await
            .unwrap();
        c.flush().await.unwrap();
        tls.push(c);
    }
    assert_eq!(
        s.readyz(true).await,
        200,
        "/readyz over TLS while clients hang"
    );
    let deadline = opened + Duration::from_secs(2) + MARGIN;
    for (i, c) in raw.iter_mut().enumerate() {
        closed_by(c, deadline)
            .await
            .unwrap_or_else(|| panic!("TLS connection {i} without a handshake still open"));
    }
    for (i, c) in tls.iter_mut().enumerate() {
        closed_by(c, deadline)
            .await
            .unwrap_or_else(|| panic!("TLS connection {i} with half a head still open"));
    }
    eprintln!(
        "30 half-open TLS connections closed within {:?}",
        opened.elapsed()
    );
    assert_eq!(s.readyz(true).await, 200);
}

#[tokio::test]
async fn item7_tls_listener_connections_beyond_the_cap_are_closed() {
    let s = start(|c| c.server.max_connections = 40).await;
    // 40 open connections (handshakes done, idle), the 41st is closed.
    let mut held = Vec::new();
    for _ in 0..40 {
        // A finished handshake proves the server accepted the connection.
        held.push(s.tls_connect().await);
    }
    let mut extra = TcpStream::connect(s.tls).await.unwrap();
    let t = Instant::now();
    closed_by(&mut extra, t + Duration::from_secs(1))
        .await
        .expect("the 41st TLS connection is closed at once");
    let c = &mut held[3];
    c.write_all(b"GET /readyz HTTP/1.1\r\nHost: kms\r\n\r\n")
        .await
        .unwrap();
    c.flush().await.unwrap();
    let mut buf = [0u8; 1024];
    let n = c.read(&mut buf).await.unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
}
