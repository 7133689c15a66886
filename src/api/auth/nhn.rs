//! NHN request authentication inputs: the appkey's project, the optional
//! User Access Key headers, and what the key-store checks need from the
//! connection (client IPv4 with the trusted-proxy rule, the
//! `X-TOAST-CLIENT-MAC-ADDR` header, the TLS client certificate).

use std::net::SocketAddr;

use axum::extract::ConnectInfo;
use axum::http::request::Parts;

use crate::core::nhn::NhnClient;

/// Header carrying the client's MAC address for MAC authentication.
pub const MAC_HEADER: &str = "x-toast-client-mac-addr";
/// Header carrying the User Access Key id.
pub const USER_ACCESS_KEY_HEADER: &str = "x-tc-authentication-id";
/// Header carrying the Secret Access Key.
pub const SECRET_ACCESS_KEY_HEADER: &str = "x-tc-authentication-secret";

/// Set by the TLS listener on every request of a connection: the SHA-256 of
/// the DER of the client certificate verified in the handshake, if any.
/// Plain-HTTP requests carry no such extension.
#[derive(Debug, Clone, Copy)]
pub struct TlsClientCert(pub Option<[u8; 32]>);

/// What the server saw of the client of a request.
pub fn client_of(parts: &Parts, trusted: &[ipnet::IpNet]) -> NhnClient {
    let peer = crate::api::peer_ip(parts.extensions.get::<ConnectInfo<SocketAddr>>());
    let ip = crate::api::client_ip(peer, &parts.headers, trusted);
    let mac = parts
        .headers
        .get(MAC_HEADER)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let cert_sha256 = parts.extensions.get::<TlsClientCert>().and_then(|c| c.0);
    NhnClient {
        ip,
        mac,
        cert_sha256,
    }
}

/// The User Access Key headers, if sent.
pub fn user_access_key(parts: &Parts) -> (Option<&str>, Option<&str>) {
    let h = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    (h(USER_ACCESS_KEY_HEADER), h(SECRET_ACCESS_KEY_HEADER))
}
