//! NHN certificate authentication over a real mutual-TLS handshake: a
//! certificate issued through the API by the project CA (whose key is in the
//! token), delivered as a PKCS#12 file by `hsm-kms admin nhn`, opens the key
//! store; no certificate, another key store's, an expired, a foreign and a
//! deleted certificate do not. A refused handshake is told apart from any
//! other I/O failure by the TLS alert the server sent.
mod common;
#[path = "common/nhn.rs"]
mod nhn;

use std::net::SocketAddr;

use base64::Engine as _;
use hsm_kms::core::nhn::KeyStoreSettings;
use serde_json::{json, Value};

fn pem(label: &str, der: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// key + chain PEM from a PKCS#12 file.
fn identity_from_p12(p12: &[u8], password: &str) -> Vec<u8> {
    let ks = p12_keystore::KeyStore::from_pkcs12(
        p12,
        password,
        p12_keystore::Pkcs12ImportPolicy::default(),
    )
    .expect("PKCS#12 opens with the password");
    let (_, chain) = ks.private_key_chain().expect("a key chain");
    let mut s = pem("PRIVATE KEY", chain.key().as_der());
    for c in chain.certs() {
        s.push_str(&pem("CERTIFICATE", c.as_der()));
    }
    s.into_bytes()
}

struct Tls {
    plain: String,
    tls: SocketAddr,
    server_ca: reqwest::Certificate,
    config_file: std::path::PathBuf,
    engine: hsm_kms::core::Engine,
    dir: tempfile::TempDir,
}

async fn start() -> Tls {
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
    cfg.tls.client_auth = true;
    let config_file = dir.path().join("hsm-kms.toml");
    std::fs::write(&config_file, toml::to_string(&cfg).unwrap()).unwrap();
    hsm_kms::server::init(&cfg, "default").await.unwrap();
    let running = hsm_kms::server::start(&cfg, std::future::pending())
        .await
        .unwrap();
    Tls {
        plain: format!("http://{}", running.addr),
        tls: running.tls_addr.expect("TLS listener"),
        server_ca: reqwest::Certificate::from_pem(server.cert.pem().as_bytes()).unwrap(),
        config_file,
        engine: running.engine,
        dir,
    }
}

impl Tls {
    fn client(&self, identity: Option<&[u8]>) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(self.server_ca.clone());
        if let Some(pem) = identity {
            b = b.identity(reqwest::Identity::from_pem(pem).expect("identity"));
        }
        b.build().unwrap()
    }

    /// `Ok((status, body))`, or `Err` when the handshake or connection failed.
    async fn get(
        &self,
        identity: Option<&[u8]>,
        path: &str,
    ) -> Result<(u16, Value), reqwest::Error> {
        let r = self
            .client(identity)
            .get(format!("https://{}{}", self.tls, path))
            .send()
            .await?;
        let status = r.status().as_u16();
        Ok((status, r.json().await.unwrap_or(Value::Null)))
    }

    fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_hsm-kms"));
        c.arg("--config").arg(&self.config_file).args(args);
        for (k, v) in env {
            c.env(k, v);
        }
        let out = c.output().expect("run hsm-kms");
        assert!(
            out.status.success(),
            "hsm-kms {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
}

/// The handshake succeeds and the key store refuses with -1202.
fn assert_refused(r: Result<(u16, Value), reqwest::Error>, what: &str) {
    let (status, body) = r.unwrap_or_else(|e| panic!("{what}: the handshake should succeed: {e}"));
    assert_eq!(status, 403, "{what}: {body}");
    assert_eq!(body["header"]["resultCode"], -1202, "{what}: {body}");
}

/// The TLS alert the server sent, found in the client's error chain (the
/// rustls error sits inside an `io::Error`, whose `source` skips it).
fn alert_received(e: &reqwest::Error) -> Option<rustls::AlertDescription> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        let tls = err.downcast_ref::<rustls::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        });
        if let Some(rustls::Error::AlertReceived(a)) = tls {
            return Some(*a);
        }
        next = err.source();
    }
    None
}

/// The TLS handshake itself refuses the certificate, with this alert from
/// the server (not a refused connection, a timeout or any other I/O error).
fn assert_handshake_refused(
    r: Result<(u16, Value), reqwest::Error>,
    alert: rustls::AlertDescription,
    what: &str,
) {
    match r {
        Ok((status, body)) => {
            panic!("{what}: expected a handshake failure, got {status} {body}")
        }
        Err(e) => assert_eq!(
            alert_received(&e),
            Some(alert),
            "{what}: the server should refuse the certificate with {alert:?}: {e:?}"
        ),
    }
}

#[tokio::test]
async fn item8_mutual_tls_with_issued_pkcs12_and_refusal_reasons() {
    let t = start().await;
    let e = &t.engine;
    // Management calls (issuance, deletion) with the project's User Access Key.
    e.nhn_create_project("p", true).await.unwrap();
    let appkey = e.nhn_create_appkey("p").await.unwrap();
    let uak = e.nhn_create_user_access_key("p").await.unwrap();
    let (uak_id, uak_secret) = (uak.access_key.clone(), uak.secret.to_string());
    for name in ["TLS", "Other"] {
        e.nhn_create_key_store(
            "p",
            KeyStoreSettings {
                name: name.into(),
                certificate_auth_use: true,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    }
    let base = format!("/keymanager/v1.2/appkey/{appkey}");
    let http = reqwest::Client::new();
    let post = |path: String, body: Value| {
        let http = http.clone();
        let url = format!("{}{}{}", t.plain, base, path);
        let (id, secret) = (uak_id.clone(), uak_secret.clone());
        async move {
            let r = http
                .post(url)
                .header("X-TC-AUTHENTICATION-ID", id)
                .header("X-TC-AUTHENTICATION-SECRET", secret)
                .json(&body)
                .send()
                .await
                .unwrap();
            let status = r.status().as_u16();
            let v: Value = r.json().await.unwrap();
            assert_eq!(status, 200, "{v}");
            v["body"].clone()
        }
    };
    let put = |path: String, body: Value| {
        let http = http.clone();
        let url = format!("{}{}{}", t.plain, base, path);
        let (id, secret) = (uak_id.clone(), uak_secret.clone());
        async move {
            let r = http
                .put(url)
                .header("X-TC-AUTHENTICATION-ID", id)
                .header("X-TC-AUTHENTICATION-SECRET", secret)
                .json(&body)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 200);
        }
    };
    let secret = post(
        "/keys/secrets/create".into(),
        json!({"keyStoreName": "TLS", "name": "s", "secretValue": "over mTLS"}),
    )
    .await["keyId"]
        .as_str()
        .unwrap()
        .to_string();
    let other_secret = post(
        "/keys/secrets/create".into(),
        json!({"keyStoreName": "Other", "name": "s", "secretValue": "other store"}),
    )
    .await["keyId"]
        .as_str()
        .unwrap()
        .to_string();
    let get_secret = format!("{base}/secrets/{secret}");

    // Issue through the API; deliver the PKCS#12 through the admin CLI.
    post(
        "/auths/certificates".into(),
        json!({"keyStoreName": "TLS", "name": "c1", "password": "pw-c1", "lifeTime": 30, "description": "mTLS"}),
    )
    .await;
    let p12_path = t.dir.path().join("c1.p12");
    let p12_arg = p12_path.display().to_string();
    t.cli(
        &[
            "admin",
            "nhn",
            "export-certificate",
            "--project",
            "p",
            "--key-store",
            "TLS",
            "--name",
            "c1",
            "--out",
            &p12_arg,
        ],
        &[],
    );
    let c1 = identity_from_p12(&std::fs::read(&p12_path).unwrap(), "pw-c1");

    // The handshake with the issued certificate opens the key store.
    let (status, body) = t.get(Some(&c1), &get_secret).await.expect("mTLS handshake");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["body"]["secret"], "over mTLS");
    let (_, body) = t.get(Some(&c1), &format!("{base}/confirm")).await.unwrap();
    assert_eq!(body["body"]["clientSentCertificate"], true);
    assert_eq!(body["body"]["clientIp"], "127.0.0.1");
    let (_, body) = t.get(None, &format!("{base}/confirm")).await.unwrap();
    assert_eq!(body["body"]["clientSentCertificate"], false);

    // No certificate: TLS works, the key store refuses.
    assert_refused(t.get(None, &get_secret).await, "no certificate");
    // Plain HTTP: refused too.
    let r = http
        .get(format!("{}{}", t.plain, get_secret))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);

    // A certificate of another key store, issued by the admin CLI.
    let other_path = t.dir.path().join("other.p12");
    let other_arg = other_path.display().to_string();
    t.cli(
        &[
            "admin",
            "nhn",
            "issue-certificate",
            "--project",
            "p",
            "--key-store",
            "Other",
            "--name",
            "o1",
            "--lifetime-days",
            "2",
            "--out",
            &other_arg,
        ],
        &[("HSM_KMS_CERT_PASSWORD", "pw-o1")],
    );
    let o1 = identity_from_p12(&std::fs::read(&other_path).unwrap(), "pw-o1");
    assert_refused(
        t.get(Some(&o1), &get_secret).await,
        "another key store's certificate",
    );
    // The running server picks up the CLI's credential after a scheduler pass.
    t.engine.run_due_work().await.unwrap();
    let (status, body) = t
        .get(Some(&o1), &format!("{base}/secrets/{other_secret}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["body"]["secret"], "other store");

    // An expired certificate of the right key store.
    let project = e.nhn_project("p").await.unwrap();
    let now = common::now_ms();
    let day = 24 * 3600 * 1000;
    e.nhn_add_certificate_valid(
        &project,
        "TLS",
        "expired",
        "pw-x",
        (now - 2 * day, now - day),
        "",
        "test",
    )
    .await
    .unwrap();
    let old = identity_from_p12(
        &e.nhn_export_certificate("p", "TLS", "expired")
            .await
            .unwrap(),
        "pw-x",
    );
    assert_handshake_refused(
        t.get(Some(&old), &get_secret).await,
        rustls::AlertDescription::CertificateExpired,
        "expired certificate",
    );

    // A certificate from a CA the service does not know.
    let foreign = rcgen::generate_simple_self_signed(vec!["client".into()]).unwrap();
    let mut fpem = foreign.signing_key.serialize_pem();
    fpem.push_str(&foreign.cert.pem());
    assert_handshake_refused(
        t.get(Some(fpem.as_bytes()), &get_secret).await,
        rustls::AlertDescription::UnknownCA,
        "foreign certificate",
    );

    // Deleted (deletion requested): refused from then on.
    put(
        "/auths/certificates/delete".into(),
        json!({"keyStoreName": "TLS", "name": "c1"}),
    )
    .await;
    assert_refused(t.get(Some(&c1), &get_secret).await, "deleted certificate");
}
