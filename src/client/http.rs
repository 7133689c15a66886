//! One end of the client: a base URL, its credentials and a reqwest client
//! (rustls; the built-in web roots plus an optional CA file; an optional
//! client certificate for NHN key stores that ask for one).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use serde_json::Value;
use zeroize::Zeroizing;

use super::profile::Credentials;
use super::ClientError;

/// An HTTP answer: status and JSON body (`Null` when the body is not JSON).
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// Parsed body.
    pub body: Value,
}

/// A server the client talks to.
pub struct Endpoint {
    /// Base URL, without a trailing slash.
    pub base: String,
    /// Credentials and settings.
    pub creds: Credentials,
    /// Where the credentials came from, for messages (`HSM_KMS_CLIENT_`).
    pub prefix: String,
    http: reqwest::Client,
    last_ts: AtomicI64,
}

fn local(e: impl std::fmt::Display) -> ClientError {
    ClientError::Local(e.to_string())
}

fn pem(label: &str, der: &[u8]) -> String {
    let b = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// A client identity from a PKCS#12 file (with its password) or a PEM
/// file holding the private key and the certificates.
fn identity(creds: &Credentials) -> Result<Option<reqwest::Identity>, ClientError> {
    let Some(path) = &creds.cert else {
        return Ok(None);
    };
    let data = Zeroizing::new(
        std::fs::read(path)
            .map_err(|e| local(format!("client certificate {}: {e}", path.display())))?,
    );
    let pem_text = if data.starts_with(b"-----BEGIN") {
        Zeroizing::new(data.to_vec())
    } else {
        let password = creds.cert_password.as_deref().unwrap_or_default();
        let ks = p12_keystore::KeyStore::from_pkcs12(
            &data,
            password,
            p12_keystore::Pkcs12ImportPolicy::default(),
        )
        .map_err(|e| {
            local(format!(
                "client certificate {}: not a PKCS#12 file this password opens ({e})",
                path.display()
            ))
        })?;
        let (_, chain) = ks.private_key_chain().ok_or_else(|| {
            local(format!(
                "client certificate {}: no private key in the PKCS#12 file",
                path.display()
            ))
        })?;
        let mut s = Zeroizing::new(pem("PRIVATE KEY", chain.key().as_der()));
        for c in chain.certs() {
            s.push_str(&pem("CERTIFICATE", c.as_der()));
        }
        Zeroizing::new(s.as_bytes().to_vec())
    };
    reqwest::Identity::from_pem(&pem_text)
        .map(Some)
        .map_err(|e| local(format!("client certificate {}: {e}", path.display())))
}

impl Endpoint {
    /// An endpoint for `creds`, which must name a URL.
    pub fn new(creds: Credentials, prefix: &str, timeout: Duration) -> Result<Self, ClientError> {
        let base = creds
            .url
            .clone()
            .ok_or_else(|| {
                local(format!(
                    "no URL: set url in the profile, {prefix}URL, or --url"
                ))
            })?
            .trim_end_matches('/')
            .to_string();
        reqwest::Url::parse(&base).map_err(|e| local(format!("URL {base}: {e}")))?;
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .timeout(timeout)
            .connect_timeout(timeout);
        if let Some(ca) = &creds.ca_file {
            let text = std::fs::read(ca).map_err(|e| local(format!("{}: {e}", ca.display())))?;
            let certs = reqwest::Certificate::from_pem_bundle(&text)
                .map_err(|e| local(format!("{}: {e}", ca.display())))?;
            if certs.is_empty() {
                return Err(local(format!("{}: no PEM certificate", ca.display())));
            }
            for c in certs {
                b = b.add_root_certificate(c);
            }
        }
        if let Some(id) = identity(&creds)? {
            b = b.identity(id);
        }
        let http = b.build().map_err(local)?;
        Ok(Endpoint {
            base,
            creds,
            prefix: prefix.to_string(),
            http,
            last_ts: AtomicI64::new(0),
        })
    }

    /// A signing timestamp in ms, never the same twice from this process:
    /// two calls signed in the same millisecond would carry the same
    /// signature, which the replay guard refuses.
    pub fn timestamp(&self) -> String {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as i64)
            .unwrap_or_default();
        let mut prev = self.last_ts.load(Ordering::SeqCst);
        loop {
            let next = now.max(prev + 1);
            match self
                .last_ts
                .compare_exchange(prev, next, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return next.to_string(),
                Err(p) => prev = p,
            }
        }
    }

    /// The path and query as the server sees them (what NCP signatures
    /// cover): the base URL's own path, if any, then `path_and_query`.
    pub fn signed_path(&self, path_and_query: &str) -> Result<String, ClientError> {
        let url = reqwest::Url::parse(&format!("{}{}", self.base, path_and_query))
            .map_err(|e| local(format!("{path_and_query}: {e}")))?;
        Ok(match url.query() {
            Some(q) => format!("{}?{q}", url.path()),
            None => url.path().to_string(),
        })
    }

    /// Sends one request. `shown_path` is the path for messages (no
    /// appkey in it).
    pub async fn send(
        &self,
        method: &str,
        path_and_query: &str,
        shown_path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Reply, ClientError> {
        let m = reqwest::Method::from_bytes(method.as_bytes()).map_err(local)?;
        let mut req = self
            .http
            .request(m, format!("{}{}", self.base, path_and_query));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        // Errors without their URL: an NHN path carries the appkey.
        let resp = req.send().await.map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            why: format!("{method} {shown_path}: {}", error_chain(&e.without_url())),
        })?;
        let status = resp.status().as_u16();
        let bytes = resp.bytes().await.map_err(|e| ClientError::Transport {
            url: self.base.clone(),
            why: format!(
                "{method} {shown_path}: reading the answer: {}",
                error_chain(&e.without_url())
            ),
        })?;
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Ok(Reply { status, body })
    }
}

/// An error with its causes (reqwest's own message hides the TLS reason).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
