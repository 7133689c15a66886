//! RSA-2048 and ECDSA P-256 inside the token: OAEP encryption, signatures,
//! verification and public-key read-back.

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use sha2::{Digest, Sha256};

use super::{Hsm, HsmError, OpClass, Result, SessionRef};

/// A signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`CKM_SHA256_RSA_PKCS`).
    RsaPkcs1Sha256,
    /// Raw RSASSA-PKCS1-v1_5 on caller-supplied bytes, at most 245 of them
    /// (`CKM_RSA_PKCS`; NHN's sign).
    RsaPkcs1Raw,
    /// ECDSA P-256 over SHA-256; the digest is taken outside the token and the
    /// signature is DER-encoded.
    EcdsaP256Sha256,
}

fn oaep() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA256,
        PkcsMgfType::MGF1_SHA256,
        PkcsOaepSource::empty(),
    ))
}

/// Largest plaintext for RSA-2048 OAEP with SHA-256: 256 - 2*32 - 2.
pub const RSA_OAEP_MAX: usize = 190;
/// Largest input of raw PKCS#1 v1.5 signing with RSA-2048: 256 - 11.
pub const RSA_RAW_SIGN_MAX: usize = 245;

impl SessionRef<'_> {
    /// RSA-OAEP (SHA-256, MGF1-SHA-256) with the public key.
    pub fn rsa_oaep_encrypt(&self, id: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        if data.len() > RSA_OAEP_MAX {
            return Err(HsmError::DataLength);
        }
        let h = self.handle(id, ObjectClass::PUBLIC_KEY)?;
        Ok(self.raw().encrypt(&oaep(), h, data)?)
    }

    /// RSA-OAEP decryption with the private key.
    pub fn rsa_oaep_decrypt(&self, id: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        let h = self.handle(id, ObjectClass::PRIVATE_KEY)?;
        match self.raw().decrypt(&oaep(), h, data) {
            Ok(v) => Ok(v),
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::EncryptedDataInvalid
                | cryptoki::error::RvError::EncryptedDataLenRange
                | cryptoki::error::RvError::FunctionFailed
                | cryptoki::error::RvError::DataLenRange,
                _,
            )) => Err(HsmError::DecryptFailed),
            Err(e) => Err(e.into()),
        }
    }

    /// Signs `data` with the private key.
    pub fn sign(&self, id: &[u8], alg: SignAlg, data: &[u8]) -> Result<Vec<u8>> {
        let h = self.handle(id, ObjectClass::PRIVATE_KEY)?;
        match alg {
            SignAlg::RsaPkcs1Sha256 => Ok(self.raw().sign(&Mechanism::Sha256RsaPkcs, h, data)?),
            SignAlg::RsaPkcs1Raw => {
                if data.len() > RSA_RAW_SIGN_MAX {
                    return Err(HsmError::DataLength);
                }
                Ok(self.raw().sign(&Mechanism::RsaPkcs, h, data)?)
            }
            SignAlg::EcdsaP256Sha256 => {
                let digest = Sha256::digest(data);
                let raw = self.raw().sign(&Mechanism::Ecdsa, h, &digest)?;
                let sig = p256::ecdsa::Signature::from_slice(&raw)
                    .map_err(|e| HsmError::Malformed(format!("ECDSA signature: {e}")))?;
                Ok(sig.to_der().as_bytes().to_vec())
            }
        }
    }

    /// Verifies `signature` over `data` with the public key. `Ok(false)` for a
    /// signature that does not match or does not parse.
    pub fn verify(&self, id: &[u8], alg: SignAlg, data: &[u8], signature: &[u8]) -> Result<bool> {
        let h = self.handle(id, ObjectClass::PUBLIC_KEY)?;
        let res = match alg {
            SignAlg::RsaPkcs1Sha256 => {
                self.raw()
                    .verify(&Mechanism::Sha256RsaPkcs, h, data, signature)
            }
            SignAlg::RsaPkcs1Raw => self.raw().verify(&Mechanism::RsaPkcs, h, data, signature),
            SignAlg::EcdsaP256Sha256 => {
                let Ok(sig) = p256::ecdsa::Signature::from_der(signature) else {
                    return Ok(false);
                };
                let digest = Sha256::digest(data);
                self.raw()
                    .verify(&Mechanism::Ecdsa, h, &digest, &sig.to_bytes())
            }
        };
        match res {
            Ok(()) => Ok(true),
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::SignatureInvalid
                | cryptoki::error::RvError::SignatureLenRange
                | cryptoki::error::RvError::DataLenRange,
                _,
            )) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// The public key as DER SubjectPublicKeyInfo.
    pub fn public_key_spki(&self, id: &[u8]) -> Result<Vec<u8>> {
        use p256::pkcs8::EncodePublicKey as _;
        let h = self.handle(id, ObjectClass::PUBLIC_KEY)?;
        let attrs = self.raw().get_attributes(
            h,
            &[
                AttributeType::KeyType,
                AttributeType::Modulus,
                AttributeType::PublicExponent,
                AttributeType::EcPoint,
            ],
        )?;
        let (mut n, mut e, mut point) = (None, None, None);
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                Attribute::EcPoint(v) => point = Some(v),
                _ => {}
            }
        }
        if let (Some(n), Some(e)) = (n, e) {
            let key = rsa::RsaPublicKey::new(
                rsa::BigUint::from_bytes_be(&n),
                rsa::BigUint::from_bytes_be(&e),
            )
            .map_err(|e| HsmError::Malformed(format!("RSA public key: {e}")))?;
            let der = rsa::pkcs8::EncodePublicKey::to_public_key_der(&key)
                .map_err(|e| HsmError::Malformed(format!("RSA public key: {e}")))?;
            return Ok(der.as_bytes().to_vec());
        }
        if let Some(point) = point {
            // CKA_EC_POINT is a DER OCTET STRING around the SEC1 point.
            let sec1 = match point.as_slice() {
                [0x04, len, rest @ ..] if *len as usize == rest.len() => rest,
                other => other,
            };
            let key = p256::PublicKey::from_sec1_bytes(sec1)
                .map_err(|e| HsmError::Malformed(format!("EC point: {e}")))?;
            let der = key
                .to_public_key_der()
                .map_err(|e| HsmError::Malformed(format!("EC public key: {e}")))?;
            return Ok(der.as_bytes().to_vec());
        }
        Err(HsmError::Malformed(
            "public key has neither RSA nor EC attributes".into(),
        ))
    }
}

impl Hsm {
    /// See [`SessionRef::rsa_oaep_encrypt`].
    pub async fn rsa_oaep_encrypt(&self, id: Vec<u8>, data: Vec<u8>) -> Result<Vec<u8>> {
        self.run(OpClass::Asymmetric, move |s| s.rsa_oaep_encrypt(&id, &data))
            .await
    }

    /// See [`SessionRef::rsa_oaep_decrypt`].
    pub async fn rsa_oaep_decrypt(&self, id: Vec<u8>, data: Vec<u8>) -> Result<Vec<u8>> {
        self.run(OpClass::Asymmetric, move |s| s.rsa_oaep_decrypt(&id, &data))
            .await
    }

    /// See [`SessionRef::sign`].
    pub async fn sign(&self, id: Vec<u8>, alg: SignAlg, data: Vec<u8>) -> Result<Vec<u8>> {
        self.run(OpClass::Asymmetric, move |s| s.sign(&id, alg, &data))
            .await
    }

    /// See [`SessionRef::verify`].
    pub async fn verify(
        &self,
        id: Vec<u8>,
        alg: SignAlg,
        data: Vec<u8>,
        sig: Vec<u8>,
    ) -> Result<bool> {
        self.run(OpClass::Asymmetric, move |s| {
            s.verify(&id, alg, &data, &sig)
        })
        .await
    }

    /// See [`SessionRef::public_key_spki`].
    pub async fn public_key_spki(&self, id: Vec<u8>) -> Result<Vec<u8>> {
        self.run(OpClass::Symmetric, move |s| s.public_key_spki(&id))
            .await
    }
}
