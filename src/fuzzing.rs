//! The parsers and encoders on the request path, for the fuzz targets under
//! `fuzz/` and the property tests: NCP signature headers, the NAVER
//! `ncpkms:v{n}:` and NHN sealed formats, the JSON bodies of the crypto
//! endpoints, the key-list queries, OAEP decoding and the ECDSA DER
//! conversion. Each function calls exactly what the handlers call (the
//! handlers call the same functions); nothing here is used in production.
//! Not part of the service's interface.

use std::collections::HashMap;

pub use crate::api::auth::ncp::{
    sign as ncp_sign, SignatureError, SignatureVersion, SignedRequest,
};
pub use crate::api::naver::NaverError;
pub use crate::api::naver::{format_sealed, parse_sealed};
pub use crate::api::nhn::NhnError;
pub use crate::api::parse_json;
pub use crate::core::nhn::NhnKeyFilter;
pub use crate::core::{Sealed, CONTEXT_MAX, ENCRYPT_MAX, MAX_VERSIONS};

use crate::api::naver::{crypto, v2};
use crate::api::nhn::data;

/// Length of the RSA-2048 modulus the service's OAEP decoding works on.
pub const RSA_MODULUS_LEN: usize = crate::hsm::asymmetric::RSA_MODULUS_LEN;

/// The key tag a NAVER path names (what the quota, the activity log and
/// token auth read).
pub fn naver_key_tag(path: &str) -> Option<&str> {
    crate::api::naver::key_tag_in(path)
}

/// The query map axum's `Query<HashMap<String, String>>` extractor gives
/// the handlers; `None` where the extractor rejects the query.
pub fn query_map(uri: &http::Uri) -> Option<HashMap<String, String>> {
    axum::extract::Query::<HashMap<String, String>>::try_from_uri(uri)
        .ok()
        .map(|q| q.0)
}

/// `(pageNo, pageSize)` of NAVER Get Key List.
pub fn naver_list_params(q: &HashMap<String, String>) -> Result<(i64, i64), NaverError> {
    v2::list_params(q)
}

/// The query of NAVER Get Key Activity.
#[derive(Debug)]
pub struct ActivityQuery {
    /// `timestampFrom`, ms.
    pub from: i64,
    /// `timestampTo`, ms.
    pub to: i64,
    /// `pageNo`.
    pub page_no: i64,
    /// `pageSize`.
    pub page_size: i64,
    /// `keyword`.
    pub keyword: Option<String>,
}

/// Reads the query of NAVER Get Key Activity at `now` (ms).
pub fn naver_activity_params(
    q: &HashMap<String, String>,
    now: i64,
) -> Result<ActivityQuery, NaverError> {
    let p = crate::api::naver::tokens::activity_params(q, now)?;
    Ok(ActivityQuery {
        from: p.from,
        to: p.to,
        page_no: p.page_no,
        page_size: p.page_size,
        keyword: p.keyword.map(str::to_string),
    })
}

/// The filters and page of NHN Get Key List.
pub fn nhn_key_filter(q: &HashMap<String, String>) -> Result<NhnKeyFilter, NhnError> {
    crate::api::nhn::manage::key_filter(q)
}

/// A `true` / `false` NHN query flag (`detail` of the key-store list).
pub fn nhn_flag(q: &HashMap<String, String>, name: &str) -> Result<bool, NhnError> {
    crate::api::nhn::manage::flag(q, name)
}

/// The `keyVersion` query of the NHN key read-back calls.
pub fn nhn_key_version(q: &HashMap<String, String>) -> Result<Option<i64>, NhnError> {
    data::key_version(q)
}

/// A NAVER crypto endpoint (API 2.0 and 1.0 share the bodies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NaverCall {
    /// Encrypt.
    Encrypt,
    /// Decrypt.
    Decrypt,
    /// Re-encrypt (the Decrypt body).
    ReEncrypt,
    /// Create Custom Key.
    CreateCustomKey,
    /// Sign.
    Sign,
    /// Verify.
    Verify,
    /// Get Public Key (API 2.0).
    GetPublicKey,
}

/// A NAVER crypto request as the handler has it before the engine call.
#[derive(Debug)]
pub enum NaverRequest {
    /// Encrypt: the plaintexts, the context (as a convergent key reads it),
    /// whether the body sent a list.
    Encrypt(Vec<Vec<u8>>, Option<Vec<u8>>, bool),
    /// Decrypt / Re-encrypt: the ciphertexts, the context, whether a list.
    Decrypt(Vec<Sealed>, Option<Vec<u8>>, bool),
    /// Create Custom Key: bits, context, whether the plaintext is asked for.
    CreateCustomKey(u32, Option<Vec<u8>>, bool),
    /// Sign: the data.
    Sign(Vec<u8>),
    /// Verify: the data and the signature.
    Verify(Vec<u8>, Sealed),
    /// Get Public Key: the version asked for.
    GetPublicKey(Option<i64>),
}

fn body<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, NaverError> {
    // NaverJson's rejection: the text of read_json in a 400.
    parse_json(b).map_err(NaverError::bad_request)
}

/// Deserializes `b` as the body of `call` (the `NaverJson` extractor's
/// rule) and decodes it as the handler does.
pub fn naver_request(
    call: NaverCall,
    b: &[u8],
    max_items: usize,
) -> Result<NaverRequest, NaverError> {
    use crate::api::naver::format::OneOrMany;
    let many = |s: &OneOrMany| matches!(s, OneOrMany::Many(_));
    Ok(match call {
        NaverCall::Encrypt => {
            let r = body::<crypto::EncryptBody>(b)?.decode(max_items)?;
            NaverRequest::Encrypt(r.plaintexts, r.context.strict()?, many(&r.shape))
        }
        NaverCall::Decrypt | NaverCall::ReEncrypt => {
            let r = body::<crypto::DecryptBody>(b)?.decode(max_items)?;
            NaverRequest::Decrypt(r.ciphertexts, r.context.strict()?, many(&r.shape))
        }
        NaverCall::CreateCustomKey => {
            let r = body::<crypto::CustomKeyBody>(b)?.decode()?;
            NaverRequest::CreateCustomKey(r.bits, r.context.strict()?, r.request_plain_key)
        }
        NaverCall::Sign => NaverRequest::Sign(body::<crypto::SignBody>(b)?.decode()?),
        NaverCall::Verify => {
            let (data, sig) = body::<crypto::VerifyBody>(b)?.decode()?;
            NaverRequest::Verify(data, sig)
        }
        NaverCall::GetPublicKey => {
            NaverRequest::GetPublicKey(body::<v2::PubKeyBody>(b)?.key_version)
        }
    })
}

/// An NHN data endpoint that takes a body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NhnCall {
    /// Encrypt.
    Encrypt,
    /// Decrypt.
    Decrypt,
    /// Sign.
    Sign,
    /// Verify.
    Verify,
    /// Update Secret.
    UpdateSecret,
}

/// An NHN request as the handler has it before the engine call.
#[derive(Debug)]
pub enum NhnRequest {
    /// Encrypt or Sign: the plaintext text.
    Plaintext(String),
    /// Decrypt: the parsed ciphertext.
    Decrypt(Sealed),
    /// Verify: the plaintext, the version named by the signature, the
    /// signature.
    Verify(String, Option<i64>, Vec<u8>),
    /// Update Secret: the value.
    UpdateSecret(String),
}

fn nhn_body<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, NhnError> {
    // NhnJson's rejection: the text of read_json in a -1000 / 400.
    parse_json(b).map_err(NhnError::bad_request)
}

/// Deserializes `b` as the body of `call` (the `NhnJson` extractor's rule)
/// and decodes it as the handler does.
pub fn nhn_request(call: NhnCall, b: &[u8]) -> Result<NhnRequest, NhnError> {
    let required = |v: Option<String>, f: &str| {
        v.ok_or_else(|| NhnError::bad_request(format!("{f} is required")))
    };
    Ok(match call {
        NhnCall::Encrypt | NhnCall::Sign => {
            let p: data::PlaintextBody = nhn_body(b)?;
            NhnRequest::Plaintext(required(p.plaintext, "plaintext")?)
        }
        NhnCall::Decrypt => {
            let c: data::CiphertextBody = nhn_body(b)?;
            NhnRequest::Decrypt(nhn_parse_ciphertext(&required(
                c.ciphertext,
                "ciphertext",
            )?)?)
        }
        NhnCall::Verify => {
            let v: data::VerifyBody = nhn_body(b)?;
            let pt = required(v.plaintext, "plaintext")?;
            let (hint, sig) = nhn_parse_signature(&required(v.signature, "signature")?)?;
            NhnRequest::Verify(pt, hint, sig)
        }
        NhnCall::UpdateSecret => {
            let s: data::SecretBody = nhn_body(b)?;
            NhnRequest::UpdateSecret(required(s.secret_value, "secretValue")?)
        }
    })
}

/// Parses an NHN ciphertext (base64 of `version || iv || ct || tag`).
pub fn nhn_parse_ciphertext(s: &str) -> Result<Sealed, NhnError> {
    crate::api::nhn::format::parse_ciphertext(s)
}

/// NHN's framing of a ciphertext or signature, `version (u32 BE) || payload`.
pub fn nhn_frame(s: &Sealed) -> Vec<u8> {
    crate::api::nhn::format::frame(s)
}

/// Splits NHN's `version || payload`; `None` when shorter than
/// `4 + min_payload`.
pub fn nhn_unframe(b: &[u8], min_payload: usize) -> Option<Sealed> {
    crate::api::nhn::format::unframe(b, min_payload)
}

/// Parses the `signature` of NHN Verify.
pub fn nhn_parse_signature(s: &str) -> Result<(Option<i64>, Vec<u8>), NhnError> {
    crate::api::nhn::format::parse_signature(s)
}

/// Base64 as the NHN dialect writes it.
pub fn nhn_b64(b: &[u8]) -> String {
    crate::api::nhn::format::b64(b)
}

/// EME-OAEP (SHA-256, empty label) decoding of a raw RSA result of a
/// `k`-byte modulus, as done outside tokens without OAEP-SHA-256.
pub fn oaep_sha256_decode(em: &[u8], k: usize) -> Option<Vec<u8>> {
    crate::hsm::asymmetric::oaep_sha256_decode(em, k)
}

/// The token's raw P-256 signature as DER (Sign).
pub fn ecdsa_raw_to_der(raw: &[u8]) -> Option<Vec<u8>> {
    crate::hsm::asymmetric::ecdsa_raw_to_der(raw).ok()
}

/// A DER P-256 signature as raw `r || s` (Verify).
pub fn ecdsa_der_to_raw(der: &[u8]) -> Option<Vec<u8>> {
    crate::hsm::asymmetric::ecdsa_der_to_raw(der)
}
