//! NAVER tokens as JSON Web Tokens, signed ES256 with a P-256 service key
//! generated in the token (`hsm-kms/service/token-signing`, made by `init`).
//!
//! NAVER's guide ("Set up key authentication", key request token overview)
//! says the tokens of API 2.0 are JWTs, and its v3 pages describe
//! `x-ncp-ocapi-token` as a "JWT(JSON Web Token) 타입 토큰": clients may
//! decode `exp`. The signature makes a token self-describing and lets a
//! forged one be refused before the store is read; it never makes a token
//! valid on its own. The store still holds only the token's SHA-256 and
//! decides whether it is revoked, of a replaced generator or expired.

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{service_keys, Error, Result};
use crate::hsm::{Hsm, SignAlg};
use crate::store::{InstallationRepo as _, Store};

/// Longest token text accepted (a JWT of this service is about 400 bytes).
pub const MAX_TOKEN_LEN: usize = 1024;

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

fn unb64url(text: &str) -> Option<Vec<u8>> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .ok()
}

/// The claims of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The key the token acts on (canonical key tag).
    #[serde(rename = "keyTag")]
    pub key_tag: String,
    /// Its token set.
    #[serde(rename = "tokenSetId")]
    pub token_set_id: String,
    /// `access` or `refresh`.
    pub kind: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Expiry, seconds since the epoch, rounded up to the second (the
    /// store's expiry, exact to the millisecond, is the one enforced);
    /// absent for an unlimited (`"UL"`) token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// The token's public id (the activity log's caller); unique per token,
    /// so that two tokens of one set issued in the same second differ.
    pub jti: String,
}

impl Claims {
    /// `exp` for an expiry in ms: whole seconds, rounded up.
    pub fn exp_of(expires_at_ms: Option<i64>) -> Option<i64> {
        expires_at_ms.map(|ms| ms.div_euclid(1000) + i64::from(ms.rem_euclid(1000) != 0))
    }
}

/// Why a presented JWT was refused before the store was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts, another header, or claims that don't parse.
    #[error("malformed token")]
    Malformed,
    /// The signature does not verify under the service's token key.
    #[error("the token's signature does not verify")]
    BadSignature,
}

/// The service key that signs tokens: its `CKA_ID` and public key.
#[derive(Clone)]
pub struct TokenSigner {
    id: Vec<u8>,
    verifying: p256::ecdsa::VerifyingKey,
    /// The base64url JOSE header every token of this installation carries.
    header: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("id", &hex::encode(&self.id))
            .finish()
    }
}

impl TokenSigner {
    /// Reads the token-signing key's public half from the token. `None`
    /// when the installation has no such key yet (an `init` older than it:
    /// `hsm-kms init` adds it).
    pub async fn load(hsm: &Hsm, store: &Store) -> Result<Option<TokenSigner>> {
        let Some(id) = store.service_key(service_keys::TOKEN_SIGNING).await? else {
            return Ok(None);
        };
        let spki = hsm.public_key_spki(id.clone()).await?;
        Ok(Some(Self::from_spki(id, &spki)?))
    }

    fn from_spki(id: Vec<u8>, spki: &[u8]) -> Result<TokenSigner> {
        use p256::pkcs8::DecodePublicKey as _;
        let verifying = p256::ecdsa::VerifyingKey::from_public_key_der(spki)
            .map_err(|e| Error::Internal(format!("token-signing public key: {e}")))?;
        // The key id: the first 8 bytes of the SHA-256 of its SPKI, so a
        // verifier holding several installations' keys can pick one.
        let kid = hex::encode(&Sha256::digest(spki)[..8]);
        let header = b64url(format!(r#"{{"alg":"ES256","typ":"JWT","kid":"{kid}"}}"#).as_bytes());
        Ok(TokenSigner {
            id,
            verifying,
            header,
        })
    }

    /// The public key, DER SubjectPublicKeyInfo, for verifiers.
    pub fn public_key_der(&self) -> Result<Vec<u8>> {
        use p256::pkcs8::EncodePublicKey as _;
        self.verifying
            .to_public_key_der()
            .map(|d| d.as_bytes().to_vec())
            .map_err(|e| Error::Internal(format!("token-signing public key: {e}")))
    }

    /// Signs `claims` in the token: `header.payload.signature`, the
    /// signature ES256 (raw `r || s`, RFC 7518 section 3.4).
    pub async fn sign(&self, hsm: &Hsm, claims: &Claims) -> Result<Zeroizing<String>> {
        let payload = serde_json::to_vec(claims)
            .map_err(|e| Error::Internal(format!("token claims: {e}")))?;
        let input = format!("{}.{}", self.header, b64url(&payload));
        let der = hsm
            .sign(
                self.id.clone(),
                SignAlg::EcdsaP256Sha256,
                input.as_bytes().to_vec(),
            )
            .await?;
        let sig = p256::ecdsa::Signature::from_der(&der)
            .map_err(|e| Error::Internal(format!("token signature from the HSM: {e}")))?;
        Ok(Zeroizing::new(format!(
            "{input}.{}",
            b64url(&sig.to_bytes())
        )))
    }

    /// Checks a presented token's form and signature and returns its
    /// claims. Only the form and the signature: whether the token is still
    /// valid is the store's to say.
    pub fn verify(&self, token: &str) -> std::result::Result<Claims, JwtError> {
        let (input, sig) = token.rsplit_once('.').ok_or(JwtError::Malformed)?;
        let (header, payload) = input.split_once('.').ok_or(JwtError::Malformed)?;
        if header != self.header {
            return Err(JwtError::Malformed);
        }
        let sig = unb64url(sig)
            .and_then(|s| p256::ecdsa::Signature::from_slice(&s).ok())
            .ok_or(JwtError::Malformed)?;
        self.verifying
            .verify(input.as_bytes(), &sig)
            .map_err(|_| JwtError::BadSignature)?;
        let payload = unb64url(payload).ok_or(JwtError::Malformed)?;
        serde_json::from_slice(&payload).map_err(|_| JwtError::Malformed)
    }
}

/// Whether `token` has the shape of a JWT (three dot-separated parts);
/// tokens issued before JWTs start with `ncpkms_`.
pub fn looks_like_jwt(token: &str) -> bool {
    token.split('.').count() == 3
}

#[cfg(test)]
mod tests {
    use super::*;
    use p256::ecdsa::signature::Signer as _;

    fn signer_and_key() -> (TokenSigner, p256::ecdsa::SigningKey) {
        use p256::pkcs8::EncodePublicKey as _;
        let sk = p256::ecdsa::SigningKey::from_slice(&[7u8; 32]).unwrap();
        let spki = sk.verifying_key().to_public_key_der().unwrap();
        (
            TokenSigner::from_spki(b"id".to_vec(), spki.as_bytes()).unwrap(),
            sk,
        )
    }

    fn token(s: &TokenSigner, sk: &p256::ecdsa::SigningKey, claims: &Claims) -> String {
        let input = format!(
            "{}.{}",
            s.header,
            b64url(&serde_json::to_vec(claims).unwrap())
        );
        let sig: p256::ecdsa::Signature = sk.sign(input.as_bytes());
        format!("{input}.{}", b64url(&sig.to_bytes()))
    }

    fn claims() -> Claims {
        Claims {
            key_tag: "ab".repeat(32),
            token_set_id: "set".into(),
            kind: "access".into(),
            iat: 1_700_000_000,
            exp: Some(1_700_003_600),
            jti: "0011223344556677".into(),
        }
    }

    #[test]
    fn a_signed_token_verifies_and_a_changed_one_does_not() {
        let (s, sk) = signer_and_key();
        let t = token(&s, &sk, &claims());
        assert!(looks_like_jwt(&t));
        assert_eq!(s.verify(&t).unwrap(), claims());
        // Another payload under the same signature.
        let mut other = claims();
        other.kind = "refresh".into();
        let forged = format!(
            "{}.{}.{}",
            s.header,
            b64url(&serde_json::to_vec(&other).unwrap()),
            t.rsplit_once('.').unwrap().1
        );
        assert_eq!(s.verify(&forged), Err(JwtError::BadSignature));
        // Another header (alg "none", or no kid): refused before any check.
        let none = format!(
            "{}.{}.",
            b64url(br#"{"alg":"none"}"#),
            t.split('.').nth(1).unwrap()
        );
        assert_eq!(s.verify(&none), Err(JwtError::Malformed));
        assert_eq!(s.verify("a.b"), Err(JwtError::Malformed));
        assert_eq!(s.verify(&format!("{t}x")), Err(JwtError::Malformed));
    }

    #[test]
    fn exp_rounds_up_to_the_second() {
        assert_eq!(Claims::exp_of(None), None);
        assert_eq!(Claims::exp_of(Some(5_000)), Some(5));
        assert_eq!(Claims::exp_of(Some(5_001)), Some(6));
        assert_eq!(Claims::exp_of(Some(5_999)), Some(6));
    }
}
