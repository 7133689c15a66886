//! Operations on NHN keys: secrets (read, update), AES-256-GCM encryption
//! and decryption, local keys, raw PKCS#1 v1.5 signatures, public keys, and
//! the export queries allowed by a key store's export policy.
//!
//! Ciphertexts and signatures are the engine's [`Sealed`] (the version and
//! `iv || ciphertext || tag`, or the signature); the dialect frames them
//! (`api::nhn::format::frame`).

use crate::store::NhnRepo;
use zeroize::Zeroizing;

use super::keys::{NhnKeyType, NhnKeyView};
use super::{NhnClient, NhnProject};
use crate::core::crypto::{current, usable_version};
use crate::core::{Engine, Error, Result, Sealed, ENCRYPT_MAX};
use crate::core::{KeyUid, KeyVersion};
use crate::hsm::asymmetric_limits::RSA_RAW_SIGN_MAX;
use crate::hsm::SignAlg;

/// Largest secret value, bytes.
pub const NHN_SECRET_MAX: usize = 32 * 1024;

/// A local key: the plaintext key (base64 text) and its encryption.
pub struct LocalKey {
    /// Base64 of the 32 random bytes.
    pub plaintext_b64: Zeroizing<String>,
    /// The base64 text encrypted under the key's current version.
    pub sealed: Sealed,
}

pub(super) fn check_secret(v: &str) -> Result<Vec<u8>> {
    if v.is_empty() || v.len() > NHN_SECRET_MAX {
        return Err(Error::InvalidInput(format!(
            "secretValue must be 1 to {NHN_SECRET_MAX} bytes"
        )));
    }
    Ok(v.as_bytes().to_vec())
}

/// A given version (decrypt, verify, queries), or the current one. NHN
/// answers a version the key does not have with 404.
fn pick(v: &NhnKeyView, n: Option<i64>) -> Result<&KeyVersion> {
    match n {
        Some(n) => usable_version(&v.entry, n, || Error::NotFound("key version")),
        None => current(&v.entry),
    }
}

impl Engine {
    /// The current value of a secret.
    pub async fn nhn_get_secret(
        &self,
        p: &NhnProject,
        uid: &KeyUid,
        c: &NhnClient,
    ) -> Result<Zeroizing<String>> {
        let v = self
            .nhn_usable_key(p, uid, NhnKeyType::Secret, Some(c))
            .await?;
        let row = current(&v.entry)?;
        let bytes = Zeroizing::new(self.hsm().read_data_object(row.cka_id.to_vec()).await?);
        let s = std::str::from_utf8(&bytes)
            .map_err(|_| Error::Internal("secret value is not UTF-8".into()))?;
        Ok(Zeroizing::new(s.to_string()))
    }

    /// Replaces a secret's value with a new version.
    pub async fn nhn_update_secret(
        &self,
        p: &NhnProject,
        uid: &KeyUid,
        value: &str,
        c: &NhnClient,
        user: &str,
    ) -> Result<NhnKeyView> {
        let bytes = check_secret(value)?;
        let v = self
            .nhn_usable_key(p, uid, NhnKeyType::Secret, Some(c))
            .await?;
        self.nhn_new_version(&v, Some(bytes)).await?;
        self.store()
            .nhn_touch_key_change(v.entry.key.id, user)
            .await?;
        self.nhn_forget_key(uid);
        self.nhn_key(p, uid).await
    }

    pub(super) fn nhn_forget_key(&self, uid: &KeyUid) {
        self.nhn().keys.remove(uid.as_str());
        self.invalidate(uid);
    }

    /// Encrypts at most 32 KB with the current version.
    pub async fn nhn_encrypt(
        &self,
        p: &NhnProject,
        uid: &KeyUid,
        plaintext: &[u8],
        c: &NhnClient,
    ) -> Result<Sealed> {
        if plaintext.len() > ENCRYPT_MAX {
            return Err(Error::InvalidInput(
                "plaintext must be at most 32 KB".into(),
            ));
        }
        let v = self
            .nhn_usable_key(p, uid, NhnKeyType::Symmetric, Some(c))
            .await?;
        self.nhn_seal(&v, plaintext.to_vec()).await
    }

    async fn nhn_seal(&self, v: &NhnKeyView, plaintext: Vec<u8>) -> Result<Sealed> {
        let row = current(&v.entry)?;
        self.count_gcm_invocation(&row.cka_id, row.version).await?;
        let payload = self
            .hsm()
            .aes_gcm_encrypt(row.cka_id.to_vec(), plaintext, Vec::new(), None)
            .await?;
        Ok(Sealed {
            version: row.version,
            blob: payload,
        })
    }

    /// Decrypts a ciphertext of any live version.
    pub async fn nhn_decrypt(
        &self,
        p: &NhnProject,
        uid: &KeyUid,
        sealed: &Sealed,
        c: &NhnClient,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let v = self
            .nhn_usable_key_naming(p, uid, NhnKeyType::Symmetric, Some(c), Some(sealed.version))
            .await?;
        let row = pick(&v, Some(sealed.version))?;
        Ok(Zeroizing::new(
            self.hsm()
                .aes_gcm_decrypt(row.cka_id.to_vec(), sealed.blob.clone(), Vec::new())
                .await?,
        ))
    }

    /// A fresh AES-256 key from the token's generator, as base64 text, and
    /// that text encrypted under the key (so Decrypt gives the text back).
    pub async fn nhn_create_local_key(
        &self,
        p: &NhnProject,
        uid: &KeyUid,
        c: &NhnClient,
    ) -> Result<LocalKey> {
        use base64::Engine as _;
        let v = self
            .nhn_usable_key(p, uid, NhnKeyType::Symmetric, Some(c))
            .await?;
        let raw = Zeroizing::new(self.hsm().random(32).await?);
        let b64 = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(&*raw));
        let sealed = self.nhn_seal(&v, b64.as_bytes().to_vec()).await?;
        Ok(LocalKey {
            plaintext_b64: b64,
            sealed,
        })
    }

    /// The AES key of a version, when the key was created extractable.
    pub async fn nhn_export_symmetric_key(
        &self,
        p: &NhnProject,
        uid: &KeyUid,
        n: Option<i64>,
        c: &NhnClient,
    ) -> Result<(i64, Zeroizing<Vec<u8>>)> {
        let (version, cka_id) = self
            .nhn_exportable_version(p, uid, NhnKeyType::Symmetric, n, c)
            .await?;
        let value = self.hsm().secret_value(cka_id).await?;
        Ok((version, value))
    }

    /// Signs at most 245 bytes with raw RSASSA-PKCS1-v1_5 (no hash, no
    /// DigestInfo), with the current version.
    pub async fn nhn_sign(
        &self,
        p: &NhnProject,
        uid: &KeyUid,
        data: &[u8],
        c: &NhnClient,
    ) -> Result<Sealed> {
        if data.len() > RSA_RAW_SIGN_MAX {
            return Err(Error::InvalidInput(format!(
                "plaintext must be at most {RSA_RAW_SIGN_MAX} bytes"
            )));
        }
        let v = self
            .nhn_usable_key(p, uid, NhnKeyType::Asymmetric, Some(c))
            .await?;
        let row = current(&v.entry)?;
        let sig = self
            .hsm()
            .sign(row.cka_id.to_vec(), SignAlg::RsaPkcs1Raw, data.to_vec())
            .await?;
        Ok(Sealed {
            version: row.version,
            blob: sig,
        })
    }

    /// Verifies a signature made by `sealed.version` (or the current version
    /// when `None`).
    pub async fn nhn_verify(
        &self,
        p: &NhnProject,
        uid: &KeyUid,
        data: &[u8],
        version_hint: Option<i64>,
        signature: Vec<u8>,
        c: &NhnClient,
    ) -> Result<(i64, bool)> {
        if data.len() > RSA_RAW_SIGN_MAX {
            return Err(Error::InvalidInput(format!(
                "plaintext must be at most {RSA_RAW_SIGN_MAX} bytes"
            )));
        }
        let v = self
            .nhn_usable_key_naming(p, uid, NhnKeyType::Asymmetric, Some(c), version_hint)
            .await?;
        let row = pick(&v, version_hint)?;
        let ok = self
            .hsm()
            .verify(
                row.cka_id.to_vec(),
                SignAlg::RsaPkcs1Raw,
                data.to_vec(),
                signature,
            )
            .await?;
        Ok((row.version, ok))
    }

    /// The SubjectPublicKeyInfo DER of a version. NHN serves the public key
    /// without key-store authentication.
    pub async fn nhn_public_key(
        &self,
        p: &NhnProject,
        uid: &KeyUid,
        n: Option<i64>,
    ) -> Result<(i64, Vec<u8>)> {
        let v = self
            .nhn_usable_key_naming(p, uid, NhnKeyType::Asymmetric, None, n)
            .await?;
        let row = pick(&v, n)?;
        let der = self.hsm().public_key_spki(row.cka_id.to_vec()).await?;
        Ok((row.version, der))
    }

    /// The PKCS#8 DER of a version's private key, when the key was created
    /// extractable.
    pub async fn nhn_export_private_key(
        &self,
        p: &NhnProject,
        uid: &KeyUid,
        n: Option<i64>,
        c: &NhnClient,
    ) -> Result<(i64, Zeroizing<Vec<u8>>)> {
        let (version, cka_id) = self
            .nhn_exportable_version(p, uid, NhnKeyType::Asymmetric, n, c)
            .await?;
        let der = self.hsm().rsa_private_key_pkcs8(cka_id).await?;
        Ok((version, der))
    }

    /// The version (number and `CKA_ID`) of a key that may be read back:
    /// usable by this client, and created extractable under its key store's
    /// export policy; otherwise `Forbidden`.
    async fn nhn_exportable_version(
        &self,
        p: &NhnProject,
        uid: &KeyUid,
        kind: NhnKeyType,
        n: Option<i64>,
        c: &NhnClient,
    ) -> Result<(i64, Vec<u8>)> {
        let v = self.nhn_usable_key_naming(p, uid, kind, Some(c), n).await?;
        if !v.meta.extractable {
            return Err(Error::Forbidden(
                "the key store's export policy does not allow reading this key".into(),
            ));
        }
        let row = pick(&v, n)?;
        Ok((row.version, row.cka_id.to_vec()))
    }
}
