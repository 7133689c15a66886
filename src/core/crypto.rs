//! Crypto operations on keys: encrypt, decrypt, re-encrypt, sign, verify,
//! public keys and custom (data) keys. All of them run in the token.

use zeroize::Zeroizing;

use super::keys::KeyType;
use super::KeyStatus;
use super::VersionState;
use super::{Engine, Error, KeyEntry, KeyUid, KeyVersion, Result};
use crate::hsm::SignAlg;

/// Largest plaintext accepted by Encrypt (AES256), bytes.
pub const ENCRYPT_MAX: usize = 32 * 1024;
/// Largest plaintext for RSA2048 OAEP, bytes.
pub const RSA_ENCRYPT_MAX: usize = crate::hsm::asymmetric_limits::RSA_OAEP_MAX;
/// Largest data accepted by Sign and Verify, bytes.
pub const SIGN_DATA_MAX: usize = 8 * 1024;
/// Largest encryption context, bytes.
pub const CONTEXT_MAX: usize = 50;

/// A ciphertext with the version that made it; dialects format it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// Key version.
    pub version: i64,
    /// `iv || ciphertext || tag` (AES) or the RSA-OAEP ciphertext.
    pub blob: Vec<u8>,
}

/// A random data key, encrypted under a master key.
pub struct CustomKey {
    /// The plaintext key.
    pub plaintext: Zeroizing<Vec<u8>>,
    /// The same key encrypted under the master key's current version.
    pub sealed: Sealed,
}

fn key_type(e: &KeyEntry) -> Result<KeyType> {
    KeyType::of(e.key.key_type)
        .ok_or_else(|| Error::Internal(format!("unknown key type {}", e.key.key_type)))
}

fn usable(e: &KeyEntry) -> Result<()> {
    if e.key.status != KeyStatus::Enabled {
        return Err(Error::KeyDisabled);
    }
    Ok(())
}

/// The version `n` of a key, if it can be used for crypto (active and
/// enabled; `VersionDisabled` otherwise). A key with no version `n` answers
/// `missing()`: each dialect says that its own way. Both dialects' crypto
/// picks versions here.
pub(super) fn usable_version(
    e: &KeyEntry,
    n: i64,
    missing: impl FnOnce() -> Error,
) -> Result<&KeyVersion> {
    let v = e
        .versions
        .iter()
        .find(|v| v.version == n)
        .ok_or_else(missing)?;
    if v.state != VersionState::Active || !v.enabled {
        return Err(Error::VersionDisabled(n));
    }
    Ok(v)
}

/// The newest active version, which new ciphertexts and signatures use.
pub(super) fn current(e: &KeyEntry) -> Result<&KeyVersion> {
    e.current()
        .ok_or_else(|| Error::Internal(format!("key {} has no active version", e.key.uid)))
}

/// NAVER's answer to a version the key does not have (400).
fn no_version(n: i64) -> impl FnOnce() -> Error {
    move || Error::InvalidInput(format!("the key has no version {n}"))
}

/// NAVER's `context` rule (issue 13 §1, the v3 encrypt page): a convergent
/// key needs a context of at most 50 bytes; every other key ignores it.
fn check_context(e: &KeyEntry, context: &Option<Vec<u8>>) -> Result<()> {
    if !e.key.is_convergent {
        return Ok(());
    }
    match context {
        None => Err(Error::InvalidInput(
            "context is required for a convergent key".into(),
        )),
        Some(c) if c.len() > CONTEXT_MAX => Err(Error::InvalidInput(
            "context must be at most 50 bytes".into(),
        )),
        Some(_) => Ok(()),
    }
}

/// How NAVER RSA2048 keys sign (`naver.rsa_signature`).
///
/// NAVER documents RSA2048 signatures as RSASSA-PSS with SHA-256,
/// MGF1-SHA-256 and a 222-byte salt; hsm-kms signed RSASSA-PKCS1-v1_5 before.
/// Sign uses the configured scheme. Verify tries the configured scheme and
/// then the other one, so signatures made before the switch (or under the
/// other setting) keep verifying: both are sound schemes over the same key,
/// and a signature valid under either was made by that key's private half.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RsaSignature {
    /// RSASSA-PSS, SHA-256, MGF1-SHA-256, 222-byte salt (the default).
    #[default]
    Pss,
    /// RSASSA-PKCS1-v1_5 with SHA-256, the scheme before issue 13.
    Pkcs1,
}

impl RsaSignature {
    /// `"pss"` or `"pkcs1"`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pss" => Some(RsaSignature::Pss),
            "pkcs1" => Some(RsaSignature::Pkcs1),
            _ => None,
        }
    }

    fn alg(self) -> SignAlg {
        match self {
            RsaSignature::Pss => SignAlg::RsaPssSha256,
            RsaSignature::Pkcs1 => SignAlg::RsaPkcs1Sha256,
        }
    }

    fn other(self) -> Self {
        match self {
            RsaSignature::Pss => RsaSignature::Pkcs1,
            RsaSignature::Pkcs1 => RsaSignature::Pss,
        }
    }
}

impl Engine {
    /// Encrypts with the key's current version.
    pub async fn encrypt(
        &self,
        account_id: i64,
        uid: &KeyUid,
        plaintext: Vec<u8>,
        context: Option<Vec<u8>>,
    ) -> Result<Sealed> {
        let e = self.owned_key(account_id, uid).await?;
        self.encrypt_entry(&e, plaintext, context).await
    }

    async fn encrypt_entry(
        &self,
        e: &KeyEntry,
        plaintext: Vec<u8>,
        context: Option<Vec<u8>>,
    ) -> Result<Sealed> {
        usable(e)?;
        let kt = key_type(e)?;
        check_context(e, &context)?;
        // Only a convergent key uses the context; the others ignore it.
        let context = if e.key.is_convergent { context } else { None };
        let v = current(e)?;
        let blob = match kt {
            KeyType::Aes256 => {
                if plaintext.len() > ENCRYPT_MAX {
                    return Err(Error::InvalidInput(
                        "plaintext must be at most 32 KB".into(),
                    ));
                }
                self.count_gcm_invocation(&v.cka_id, v.version).await?;
                match (&v.aux_cka_id, context) {
                    (Some(hmac_id), Some(ctx)) => {
                        self.hsm()
                            .aes_gcm_encrypt_convergent(
                                v.cka_id.to_vec(),
                                hmac_id.to_vec(),
                                plaintext,
                                ctx,
                            )
                            .await?
                    }
                    (_, ctx) => {
                        self.hsm()
                            .aes_gcm_encrypt(
                                v.cka_id.to_vec(),
                                plaintext,
                                ctx.unwrap_or_default(),
                                None,
                            )
                            .await?
                    }
                }
            }
            KeyType::Rsa2048 => {
                if plaintext.len() > RSA_ENCRYPT_MAX {
                    return Err(Error::InvalidInput(
                        "plaintext must be at most 190 bytes for an RSA2048 key".into(),
                    ));
                }
                self.hsm()
                    .rsa_oaep_encrypt(v.cka_id.to_vec(), plaintext)
                    .await?
            }
            KeyType::Ecdsa => return Err(Error::WrongKeyType(kt.as_str().into())),
        };
        Ok(Sealed {
            version: v.version,
            blob,
        })
    }

    /// Decrypts a ciphertext made by any enabled version of the key.
    pub async fn decrypt(
        &self,
        account_id: i64,
        uid: &KeyUid,
        sealed: &Sealed,
        context: Option<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let e = self
            .owned_key_naming(account_id, uid, sealed.version)
            .await?;
        self.decrypt_entry(&e, sealed, context).await
    }

    async fn decrypt_entry(
        &self,
        e: &KeyEntry,
        sealed: &Sealed,
        context: Option<Vec<u8>>,
    ) -> Result<Zeroizing<Vec<u8>>> {
        usable(e)?;
        let kt = key_type(e)?;
        check_context(e, &context)?;
        let v = usable_version(e, sealed.version, no_version(sealed.version))?;
        let pt = match kt {
            KeyType::Aes256 if e.key.is_convergent => {
                self.hsm()
                    .aes_gcm_decrypt(
                        v.cka_id.to_vec(),
                        sealed.blob.clone(),
                        context.unwrap_or_default(),
                    )
                    .await?
            }
            KeyType::Aes256 => {
                let now = self
                    .hsm()
                    .aes_gcm_decrypt(v.cka_id.to_vec(), sealed.blob.clone(), Vec::new())
                    .await
                    .map_err(Error::from);
                match (now, context) {
                    // Before issue 13 a context on a key that is not
                    // convergent was the GCM AAD: such a ciphertext decrypts
                    // with the context it was made with.
                    (Err(Error::DecryptFailed), Some(ctx)) if !ctx.is_empty() => {
                        self.hsm()
                            .aes_gcm_decrypt(v.cka_id.to_vec(), sealed.blob.clone(), ctx)
                            .await?
                    }
                    (r, _) => r?,
                }
            }
            KeyType::Rsa2048 => {
                self.hsm()
                    .rsa_oaep_decrypt(v.cka_id.to_vec(), sealed.blob.clone())
                    .await?
            }
            KeyType::Ecdsa => return Err(Error::WrongKeyType(kt.as_str().into())),
        };
        Ok(Zeroizing::new(pt))
    }

    /// Decrypts and encrypts again under the current version.
    pub async fn reencrypt(
        &self,
        account_id: i64,
        uid: &KeyUid,
        sealed: &Sealed,
        context: Option<Vec<u8>>,
    ) -> Result<Sealed> {
        let e = self
            .owned_key_naming(account_id, uid, sealed.version)
            .await?;
        let pt = self.decrypt_entry(&e, sealed, context.clone()).await?;
        self.encrypt_entry(&e, pt.to_vec(), context).await
    }

    /// Signs with the current version: RSA2048 with the configured
    /// [`RsaSignature`] (RSASSA-PSS by default), ECDSA with P-256/SHA-256 (DER).
    pub async fn sign(
        &self,
        account_id: i64,
        uid: &KeyUid,
        data: Vec<u8>,
    ) -> Result<(i64, Vec<u8>)> {
        let e = self.owned_key(account_id, uid).await?;
        usable(&e)?;
        let alg = sign_alg(&e, self.inner.rsa_signature)?;
        if data.len() > SIGN_DATA_MAX {
            return Err(Error::InvalidInput("data must be at most 8 KB".into()));
        }
        let v = current(&e)?;
        let sig = self.hsm().sign(v.cka_id.to_vec(), alg, data).await?;
        Ok((v.version, sig))
    }

    /// Verifies a signature made by version `version`. An RSA2048 signature
    /// verifies under either scheme, the configured one tried first (see
    /// [`RsaSignature`]).
    pub async fn verify(
        &self,
        account_id: i64,
        uid: &KeyUid,
        version: i64,
        data: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool> {
        let e = self.owned_key_naming(account_id, uid, version).await?;
        usable(&e)?;
        let scheme = self.inner.rsa_signature;
        let alg = sign_alg(&e, scheme)?;
        if data.len() > SIGN_DATA_MAX {
            return Err(Error::InvalidInput("data must be at most 8 KB".into()));
        }
        let v = usable_version(&e, version, no_version(version))?;
        let valid = self
            .hsm()
            .verify(v.cka_id.to_vec(), alg, data.clone(), signature.clone())
            .await?;
        if valid || alg == SignAlg::EcdsaP256Sha256 {
            return Ok(valid);
        }
        Ok(self
            .hsm()
            .verify(v.cka_id.to_vec(), scheme.other().alg(), data, signature)
            .await?)
    }

    /// The DER SubjectPublicKeyInfo of a version (the current one by default).
    pub async fn public_key(
        &self,
        account_id: i64,
        uid: &KeyUid,
        version: Option<i64>,
    ) -> Result<(i64, Vec<u8>)> {
        let e = match version {
            Some(n) => self.owned_key_naming(account_id, uid, n).await?,
            None => self.owned_key(account_id, uid).await?,
        };
        usable(&e)?;
        let kt = key_type(&e)?;
        if kt == KeyType::Aes256 {
            return Err(Error::WrongKeyType(kt.as_str().into()));
        }
        let v = match version {
            Some(n) => {
                if !(1..=super::naver::MAX_VERSIONS).contains(&n) {
                    return Err(Error::InvalidInput(
                        "keyVersion must be between 1 and 100".into(),
                    ));
                }
                usable_version(&e, n, no_version(n))?
            }
            None => current(&e)?,
        };
        let der = self.hsm().public_key_spki(v.cka_id.to_vec()).await?;
        Ok((v.version, der))
    }

    /// A random key of `bits` bits from the token's generator, returned with
    /// its encryption under the master key (AES256 or RSA2048).
    pub async fn create_custom_key(
        &self,
        account_id: i64,
        uid: &KeyUid,
        bits: u32,
        context: Option<Vec<u8>>,
    ) -> Result<CustomKey> {
        if !matches!(bits, 128 | 256 | 512) {
            return Err(Error::InvalidInput("bits must be 128, 256 or 512".into()));
        }
        let e = self.owned_key(account_id, uid).await?;
        usable(&e)?;
        let kt = key_type(&e)?;
        if kt == KeyType::Ecdsa {
            return Err(Error::WrongKeyType(kt.as_str().into()));
        }
        let plaintext = Zeroizing::new(self.hsm().random(bits as usize / 8).await?);
        let sealed = self.encrypt_entry(&e, plaintext.to_vec(), context).await?;
        Ok(CustomKey { plaintext, sealed })
    }
}

fn sign_alg(e: &KeyEntry, rsa: RsaSignature) -> Result<SignAlg> {
    match key_type(e)? {
        KeyType::Rsa2048 => Ok(rsa.alg()),
        KeyType::Ecdsa => Ok(SignAlg::EcdsaP256Sha256),
        kt @ KeyType::Aes256 => Err(Error::WrongKeyType(kt.as_str().into())),
    }
}
