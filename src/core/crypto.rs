//! Crypto operations on keys: encrypt, decrypt, re-encrypt, sign, verify,
//! public keys and custom (data) keys. All of them run in the token.

use zeroize::Zeroizing;

use super::keys::KeyType;
use super::KeyStatus;
use super::VersionState;
use super::{Engine, Error, KeyEntry, Result};
use crate::hsm::SignAlg;
use crate::store::VersionRow;

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
    KeyType::parse(&e.key.key_type)
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
) -> Result<&VersionRow> {
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
pub(super) fn current(e: &KeyEntry) -> Result<&VersionRow> {
    e.current()
        .ok_or_else(|| Error::Internal(format!("key {} has no active version", e.key.uid)))
}

/// NAVER's answer to a version the key does not have (400).
fn no_version(n: i64) -> impl FnOnce() -> Error {
    move || Error::InvalidInput(format!("the key has no version {n}"))
}

fn check_context(e: &KeyEntry, kt: KeyType, context: &Option<Vec<u8>>) -> Result<()> {
    if let Some(c) = context {
        if c.len() > CONTEXT_MAX {
            return Err(Error::InvalidInput(
                "context must be at most 50 bytes".into(),
            ));
        }
        if kt != KeyType::Aes256 {
            return Err(Error::InvalidInput(
                "context is only supported for AES256 keys".into(),
            ));
        }
    } else if e.key.is_convergent {
        return Err(Error::InvalidInput(
            "context is required for a convergent key".into(),
        ));
    }
    Ok(())
}

impl Engine {
    /// Encrypts with the key's current version.
    pub async fn encrypt(
        &self,
        account_id: i64,
        uid: &str,
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
        check_context(e, kt, &context)?;
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
                                v.cka_id.clone(),
                                hmac_id.clone(),
                                plaintext,
                                ctx,
                            )
                            .await?
                    }
                    (_, ctx) => {
                        self.hsm()
                            .aes_gcm_encrypt(
                                v.cka_id.clone(),
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
                    .rsa_oaep_encrypt(v.cka_id.clone(), plaintext)
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
        uid: &str,
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
        check_context(e, kt, &context)?;
        let v = usable_version(e, sealed.version, no_version(sealed.version))?;
        let pt = match kt {
            KeyType::Aes256 => {
                self.hsm()
                    .aes_gcm_decrypt(
                        v.cka_id.clone(),
                        sealed.blob.clone(),
                        context.unwrap_or_default(),
                    )
                    .await?
            }
            KeyType::Rsa2048 => {
                self.hsm()
                    .rsa_oaep_decrypt(v.cka_id.clone(), sealed.blob.clone())
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
        uid: &str,
        sealed: &Sealed,
        context: Option<Vec<u8>>,
    ) -> Result<Sealed> {
        let e = self
            .owned_key_naming(account_id, uid, sealed.version)
            .await?;
        let pt = self.decrypt_entry(&e, sealed, context.clone()).await?;
        self.encrypt_entry(&e, pt.to_vec(), context).await
    }

    /// Signs with the current version: RSA2048 with RSASSA-PKCS1-v1_5 SHA-256,
    /// ECDSA with P-256/SHA-256 (DER).
    pub async fn sign(&self, account_id: i64, uid: &str, data: Vec<u8>) -> Result<(i64, Vec<u8>)> {
        let e = self.owned_key(account_id, uid).await?;
        usable(&e)?;
        let alg = sign_alg(&e)?;
        if data.len() > SIGN_DATA_MAX {
            return Err(Error::InvalidInput("data must be at most 8 KB".into()));
        }
        let v = current(&e)?;
        let sig = self.hsm().sign(v.cka_id.clone(), alg, data).await?;
        Ok((v.version, sig))
    }

    /// Verifies a signature made by version `version`.
    pub async fn verify(
        &self,
        account_id: i64,
        uid: &str,
        version: i64,
        data: Vec<u8>,
        signature: Vec<u8>,
    ) -> Result<bool> {
        let e = self.owned_key_naming(account_id, uid, version).await?;
        usable(&e)?;
        let alg = sign_alg(&e)?;
        if data.len() > SIGN_DATA_MAX {
            return Err(Error::InvalidInput("data must be at most 8 KB".into()));
        }
        let v = usable_version(&e, version, no_version(version))?;
        Ok(self
            .hsm()
            .verify(v.cka_id.clone(), alg, data, signature)
            .await?)
    }

    /// The DER SubjectPublicKeyInfo of a version (the current one by default).
    pub async fn public_key(
        &self,
        account_id: i64,
        uid: &str,
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
        let der = self.hsm().public_key_spki(v.cka_id.clone()).await?;
        Ok((v.version, der))
    }

    /// A random key of `bits` bits from the token's generator, returned with
    /// its encryption under the master key (AES256 or RSA2048).
    pub async fn create_custom_key(
        &self,
        account_id: i64,
        uid: &str,
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

fn sign_alg(e: &KeyEntry) -> Result<SignAlg> {
    match key_type(e)? {
        KeyType::Rsa2048 => Ok(SignAlg::RsaPkcs1Sha256),
        KeyType::Ecdsa => Ok(SignAlg::EcdsaP256Sha256),
        kt @ KeyType::Aes256 => Err(Error::WrongKeyType(kt.as_str().into())),
    }
}
