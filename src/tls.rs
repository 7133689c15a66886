//! The TLS listener (rustls): the same router as the plain listener, with
//! optional client certificates for NHN certificate authentication.
//!
//! A client certificate is accepted in the handshake only when it chains to
//! one of the per-project CAs (whose keys live in the token) and is within its
//! validity period; the set of CAs is re-read whenever a project makes its
//! CA. Whether the certificate is one of the key store's live credentials is
//! decided per request by the engine, from the certificate's SHA-256, which
//! this module attaches to every request of the connection as
//! [`TlsClientCert`]. Clients without a certificate are served too (the key
//! store decides whether that is enough).

use axum::Router;
use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use sha2::{Digest, Sha256};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, RwLock};
use tokio::net::{TcpListener, TcpStream};

use crate::api::auth::nhn::TlsClientCert;
use crate::core::Engine;

/// An error setting up TLS.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read or parsed.
    #[error("cannot load {path}: {reason}")]
    Load {
        /// File.
        path: String,
        /// Why.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Verifies client certificates against the per-project CAs of the engine.
pub struct ProjectCaVerifier {
    engine: Engine,
    provider: Arc<CryptoProvider>,
    current: RwLock<(u64, Option<Arc<dyn ClientCertVerifier>>)>,
}

impl std::fmt::Debug for ProjectCaVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectCaVerifier").finish()
    }
}

impl ProjectCaVerifier {
    /// A verifier that follows the engine's project CAs.
    pub fn new(engine: Engine) -> Self {
        ProjectCaVerifier {
            engine,
            provider: provider(),
            current: RwLock::new((0, None)),
        }
    }

    fn verifier(&self) -> Option<Arc<dyn ClientCertVerifier>> {
        let (generation, cas) = self.engine.nhn_cas();
        {
            let cur = self.current.read().unwrap_or_else(|p| p.into_inner());
            if cur.0 == generation {
                return cur.1.clone();
            }
        }
        let mut roots = rustls::RootCertStore::empty();
        for der in cas {
            if let Err(e) = roots.add(CertificateDer::from(der)) {
                tracing::warn!(error = %e, "ignoring an unusable project CA certificate");
            }
        }
        let built: Option<Arc<dyn ClientCertVerifier>> = if roots.is_empty() {
            None
        } else {
            match WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                self.provider.clone(),
            )
            .allow_unauthenticated()
            .build()
            {
                Ok(v) => Some(v),
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the client certificate verifier");
                    None
                }
            }
        };
        let mut cur = self.current.write().unwrap_or_else(|p| p.into_inner());
        *cur = (generation, built.clone());
        built
    }
}

impl ClientCertVerifier for ProjectCaVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // The CA set changes at run time; clients send their certificate
        // without hints.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        match self.verifier() {
            Some(v) => v.verify_client_cert(end_entity, intermediates, now),
            None => Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::UnknownIssuer,
            )),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The rustls server configuration: the server certificate chain and key
/// from PEM files, and client certificates of the project CAs when
/// `client_auth` is on.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
    client_auth: bool,
    engine: &Engine,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let load = |path: &Path, reason: String| TlsError::Load {
        path: path.display().to_string(),
        reason,
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .map_err(|e| load(cert_file, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| load(cert_file, e.to_string()))?;
    if certs.is_empty() {
        return Err(load(cert_file, "no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_file(key_file).map_err(|e| load(key_file, e.to_string()))?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?;
    let builder = if client_auth {
        builder.with_client_cert_verifier(Arc::new(ProjectCaVerifier::new(engine.clone())))
    } else {
        builder.with_no_client_auth()
    };
    let mut cfg = builder.with_single_cert(certs, key)?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The TLS step of the [`crate::connections`] machinery: the handshake,
/// then the client certificate's SHA-256 as a [`TlsClientCert`] on every
/// request of the connection.
#[derive(Clone)]
struct TlsUpgrade {
    acceptor: tokio_rustls::TlsAcceptor,
}

impl crate::connections::Upgrade for TlsUpgrade {
    type Io = tokio_rustls::server::TlsStream<TcpStream>;

    async fn upgrade(
        &self,
        tcp: TcpStream,
        peer: SocketAddr,
    ) -> Option<(Self::Io, http::Extensions)> {
        let tls = match self.acceptor.accept(tcp).await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(%peer, error = %e, "TLS handshake refused");
                return None;
            }
        };
        let cert = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(&Sha256::digest(c.as_ref()));
                h
            });
        let mut ext = http::Extensions::new();
        ext.insert(TlsClientCert(cert));
        Some((tls, ext))
    }
}

/// Serves `app` over TLS on `listener` under `limits` (the handshake counts
/// against the request-head timeout) until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: Router,
    limits: crate::connections::ConnLimits,
    shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let upgrade = TlsUpgrade {
        acceptor: tokio_rustls::TlsAcceptor::from(config),
    };
    crate::connections::serve(listener, "tls", limits, upgrade, app, shutdown).await;
}
