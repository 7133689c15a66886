//! RSA-2048 and ECDSA P-256 inside the token: OAEP encryption, signatures,
//! verification and public-key read-back.

use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource, PkcsPssParams};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use sha2::{Digest, Sha256};

use super::{Hsm, HsmError, MechanismPath, OpClass, Result, SessionRef};
use crate::telemetry::token::Call;

/// A signature scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignAlg {
    /// RSASSA-PKCS1-v1_5 with SHA-256 (`CKM_SHA256_RSA_PKCS`).
    RsaPkcs1Sha256,
    /// RSASSA-PSS with SHA-256, MGF1-SHA-256 and a salt of
    /// [`RSA_PSS_SALT_LEN`] bytes (`CKM_SHA256_RSA_PKCS_PSS`): NAVER's RSA2048
    /// signature.
    RsaPssSha256,
    /// Raw RSASSA-PKCS1-v1_5 on caller-supplied bytes, at most 245 of them
    /// (`CKM_RSA_PKCS`; NHN's sign).
    RsaPkcs1Raw,
    /// ECDSA P-256 over SHA-256 (`CKM_ECDSA_SHA256`, or the digest taken here
    /// and `CKM_ECDSA` where the token lacks it); the signature is DER-encoded.
    EcdsaP256Sha256,
}

pub(super) fn oaep() -> Mechanism<'static> {
    Mechanism::RsaPkcsOaep(PkcsOaepParams::new(
        MechanismType::SHA256,
        PkcsMgfType::MGF1_SHA256,
        PkcsOaepSource::empty(),
    ))
}

/// PSS salt length of NAVER's RSA2048 signatures: the largest a 2048-bit
/// modulus allows with SHA-256 (256 - 32 - 2 bytes), as NAVER documents.
pub const RSA_PSS_SALT_LEN: u64 = 222;

fn pss() -> Mechanism<'static> {
    Mechanism::Sha256RsaPkcsPss(PkcsPssParams {
        hash_alg: MechanismType::SHA256,
        mgf: PkcsMgfType::MGF1_SHA256,
        s_len: RSA_PSS_SALT_LEN.into(),
    })
}

/// Largest plaintext for RSA-2048 OAEP with SHA-256: 256 - 2*32 - 2.
pub const RSA_OAEP_MAX: usize = 190;
/// Largest input of raw PKCS#1 v1.5 signing with RSA-2048: 256 - 11.
pub const RSA_RAW_SIGN_MAX: usize = 245;

impl SessionRef<'_> {
    /// Where OAEP-SHA-256 and ECDSA-SHA-256 run (see [`super::mechanisms`]).
    fn paths(&self) -> super::MechanismPaths {
        self.hsm.inner.paths
    }

    /// RSA-OAEP (SHA-256, MGF1-SHA-256) with the public key.
    ///
    /// Tokens without OAEP-SHA-256 (SoftHSMv2 2.6 takes only SHA-1 and answers
    /// `CKR_ARGUMENTS_BAD` at `C_EncryptInit`) get the same padding applied
    /// outside the token with the public key read from it: the result is a
    /// standard OAEP-SHA-256 ciphertext either way, and no secret leaves the
    /// token.
    pub fn rsa_oaep_encrypt(&self, id: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        if data.len() > RSA_OAEP_MAX {
            return Err(HsmError::DataLength);
        }
        match self.paths().rsa_oaep_sha256 {
            MechanismPath::Token => {
                let h = self.handle(id, ObjectClass::PUBLIC_KEY)?;
                Ok(
                    self.call(Call::Encrypt, Some(MechanismType::RSA_PKCS_OAEP), |s| {
                        s.encrypt(&oaep(), h, data)
                    })?,
                )
            }
            MechanismPath::Outside => {
                let key = self.rsa_public_key(id)?;
                key.encrypt(&mut rand::rngs::OsRng, rsa::Oaep::new::<Sha256>(), data)
                    .map_err(|_| HsmError::DataLength)
            }
        }
    }

    /// RSA-OAEP (SHA-256) decryption with the private key.
    ///
    /// On tokens without OAEP-SHA-256 (see [`super::mechanisms`]) the
    /// private-key operation is raw RSA
    /// (`CKM_RSA_X_509`) in the token and the OAEP decoding, which handles
    /// only the padded plaintext, is done here in constant time.
    pub fn rsa_oaep_decrypt(&self, id: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        use cryptoki::error::{Error as CkError, RvError};
        let h = self.handle(id, ObjectClass::PRIVATE_KEY)?;
        let decrypt_failed = |e: CkError| match e {
            CkError::Pkcs11(
                RvError::EncryptedDataInvalid
                | RvError::EncryptedDataLenRange
                | RvError::FunctionFailed
                | RvError::DataLenRange
                | RvError::DataInvalid,
                _,
            ) => HsmError::DecryptFailed,
            e => e.into(),
        };
        match self.paths().rsa_oaep_sha256 {
            MechanismPath::Token => {
                match self.call(Call::Decrypt, Some(MechanismType::RSA_PKCS_OAEP), |s| {
                    s.decrypt(&oaep(), h, data)
                }) {
                    Ok(v) => Ok(v),
                    // Kryoptic 1.5 answers a ciphertext whose OAEP decoding fails
                    // with CKR_DEVICE_ERROR at C_Decrypt (its OpenSSL error mapped
                    // as is). The session still answering tells that from a lost
                    // token, which fails C_GetSessionInfo too and is repaired.
                    Err(CkError::Pkcs11(
                        RvError::DeviceError,
                        cryptoki::context::Function::Decrypt,
                    )) if self.raw().get_session_info().is_ok() => Err(HsmError::DecryptFailed),
                    Err(e) => Err(decrypt_failed(e)),
                }
            }
            MechanismPath::Outside => {
                if data.len() != RSA_MODULUS_LEN {
                    return Err(HsmError::DecryptFailed);
                }
                let em = zeroize::Zeroizing::new(
                    self.call(Call::Decrypt, Some(MechanismType::RSA_X_509), |s| {
                        s.decrypt(&Mechanism::RsaX509, h, data)
                    })
                    .map_err(decrypt_failed)?,
                );
                oaep_sha256_decode(&em, RSA_MODULUS_LEN).ok_or(HsmError::DecryptFailed)
            }
        }
    }

    /// The RSA public key of a version, read from its public-key object.
    fn rsa_public_key(&self, id: &[u8]) -> Result<rsa::RsaPublicKey> {
        let h = self.handle(id, ObjectClass::PUBLIC_KEY)?;
        let (mut n, mut e) = (None, None);
        for a in self.call(Call::GetAttributeValue, None, |s| {
            s.get_attributes(h, &[AttributeType::Modulus, AttributeType::PublicExponent])
        })? {
            match a {
                Attribute::Modulus(v) => n = Some(v),
                Attribute::PublicExponent(v) => e = Some(v),
                _ => {}
            }
        }
        let (Some(n), Some(e)) = (n, e) else {
            return Err(HsmError::Malformed("not an RSA public key".into()));
        };
        rsa::RsaPublicKey::new(
            rsa::BigUint::from_bytes_be(&n),
            rsa::BigUint::from_bytes_be(&e),
        )
        .map_err(|e| HsmError::Malformed(format!("RSA public key: {e}")))
    }

    /// Signs `data` with the private key.
    pub fn sign(&self, id: &[u8], alg: SignAlg, data: &[u8]) -> Result<Vec<u8>> {
        let h = self.handle(id, ObjectClass::PRIVATE_KEY)?;
        match alg {
            SignAlg::RsaPkcs1Sha256 => Ok(self.call(
                Call::Sign,
                Some(MechanismType::SHA256_RSA_PKCS),
                |s| s.sign(&Mechanism::Sha256RsaPkcs, h, data),
            )?),
            SignAlg::RsaPssSha256 => Ok(self.call(
                Call::Sign,
                Some(MechanismType::SHA256_RSA_PKCS_PSS),
                |s| s.sign(&pss(), h, data),
            )?),
            SignAlg::RsaPkcs1Raw => {
                if data.len() > RSA_RAW_SIGN_MAX {
                    return Err(HsmError::DataLength);
                }
                Ok(self.call(Call::Sign, Some(MechanismType::RSA_PKCS), |s| {
                    s.sign(&Mechanism::RsaPkcs, h, data)
                })?)
            }
            SignAlg::EcdsaP256Sha256 => {
                let raw = match self.paths().ecdsa_sha256 {
                    MechanismPath::Token => {
                        self.call(Call::Sign, Some(MechanismType::ECDSA_SHA256), |s| {
                            s.sign(&Mechanism::EcdsaSha256, h, data)
                        })?
                    }
                    MechanismPath::Outside => {
                        let digest = Sha256::digest(data);
                        self.call(Call::Sign, Some(MechanismType::ECDSA), |s| {
                            s.sign(&Mechanism::Ecdsa, h, &digest)
                        })?
                    }
                };
                ecdsa_raw_to_der(&raw)
            }
        }
    }

    /// Verifies `signature` over `data` with the public key. `Ok(false)` for a
    /// signature that does not match or does not parse.
    pub fn verify(&self, id: &[u8], alg: SignAlg, data: &[u8], signature: &[u8]) -> Result<bool> {
        let h = self.handle(id, ObjectClass::PUBLIC_KEY)?;
        let res = match alg {
            SignAlg::RsaPkcs1Sha256 => {
                self.call(Call::Verify, Some(MechanismType::SHA256_RSA_PKCS), |s| {
                    s.verify(&Mechanism::Sha256RsaPkcs, h, data, signature)
                })
            }
            SignAlg::RsaPssSha256 => self.call(
                Call::Verify,
                Some(MechanismType::SHA256_RSA_PKCS_PSS),
                |s| s.verify(&pss(), h, data, signature),
            ),
            SignAlg::RsaPkcs1Raw => self.call(Call::Verify, Some(MechanismType::RSA_PKCS), |s| {
                s.verify(&Mechanism::RsaPkcs, h, data, signature)
            }),
            SignAlg::EcdsaP256Sha256 => {
                let Some(raw) = ecdsa_der_to_raw(signature) else {
                    return Ok(false);
                };
                match self.paths().ecdsa_sha256 {
                    MechanismPath::Token => {
                        self.call(Call::Verify, Some(MechanismType::ECDSA_SHA256), |s| {
                            s.verify(&Mechanism::EcdsaSha256, h, data, &raw)
                        })
                    }
                    MechanismPath::Outside => {
                        let digest = Sha256::digest(data);
                        self.call(Call::Verify, Some(MechanismType::ECDSA), |s| {
                            s.verify(&Mechanism::Ecdsa, h, &digest, &raw)
                        })
                    }
                }
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
        let attrs = self.call(Call::GetAttributeValue, None, |s| {
            s.get_attributes(
                h,
                &[
                    AttributeType::KeyType,
                    AttributeType::Modulus,
                    AttributeType::PublicExponent,
                    AttributeType::EcPoint,
                ],
            )
        })?;
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

/// The token's raw P-256 ECDSA signature (`r || s`, 32 bytes each, as
/// `CKM_ECDSA` gives it) as DER, the form both dialects answer.
pub(crate) fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>> {
    let sig = p256::ecdsa::Signature::from_slice(raw)
        .map_err(|e| HsmError::Malformed(format!("ECDSA signature: {e}")))?;
    Ok(sig.to_der().as_bytes().to_vec())
}

/// A client's DER P-256 ECDSA signature as the raw `r || s` that
/// `CKM_ECDSA` verifies; `None` when it does not parse.
pub(crate) fn ecdsa_der_to_raw(der: &[u8]) -> Option<Vec<u8>> {
    p256::ecdsa::Signature::from_der(der)
        .ok()
        .map(|sig| sig.to_bytes().to_vec())
}

/// Length of an RSA-2048 modulus and ciphertext, bytes.
pub(crate) const RSA_MODULUS_LEN: usize = 256;

/// True when the token refuses the OAEP-SHA-256 parameters themselves
/// (rather than the data), so the software padding path applies.
pub(super) fn oaep_unsupported(e: &cryptoki::error::Error) -> bool {
    use cryptoki::error::RvError;
    matches!(
        e,
        cryptoki::error::Error::Pkcs11(
            RvError::ArgumentsBad | RvError::MechanismParamInvalid | RvError::MechanismInvalid,
            cryptoki::context::Function::EncryptInit | cryptoki::context::Function::DecryptInit
        )
    )
}

/// MGF1 with SHA-256, XORed into `out`.
fn mgf1_xor(out: &mut [u8], seed: &[u8]) {
    for (counter, chunk) in (0u32..).zip(out.chunks_mut(32)) {
        let mut h = Sha256::new();
        h.update(seed);
        h.update(counter.to_be_bytes());
        let mask = h.finalize();
        for (o, m) in chunk.iter_mut().zip(mask.iter()) {
            *o ^= m;
        }
    }
}

/// EME-OAEP decoding (RFC 8017 7.1.2) with SHA-256 and an empty label, in
/// time that does not depend on where the padding goes wrong.
pub(crate) fn oaep_sha256_decode(em_in: &[u8], k: usize) -> Option<Vec<u8>> {
    use subtle::{ConditionallySelectable, ConstantTimeEq};
    const H: usize = 32;
    if em_in.len() > k || k < 2 * H + 2 {
        return None;
    }
    // Raw RSA may drop leading zero bytes: put them back.
    let mut em = zeroize::Zeroizing::new(vec![0u8; k]);
    em[k - em_in.len()..].copy_from_slice(em_in);
    let (y, rest) = em.split_at_mut(1);
    let (seed, db) = rest.split_at_mut(H);
    mgf1_xor(seed, db);
    mgf1_xor(db, seed);
    let l_hash = Sha256::digest([]);
    let mut good = y[0].ct_eq(&0) & db[..H].ct_eq(&l_hash[..]);
    // Find the 0x01 separator after the zero padding without branching on data.
    let mut looking = subtle::Choice::from(1u8);
    let mut index = 0u32;
    for (i, b) in db[H..].iter().enumerate() {
        let is_one = b.ct_eq(&1);
        let is_zero = b.ct_eq(&0);
        index.conditional_assign(&(i as u32), looking & is_one);
        // A byte that is neither 0 nor 1 before the separator is invalid.
        good &= !(looking & !is_one & !is_zero);
        looking &= !is_one;
    }
    good &= !looking;
    if bool::from(good) {
        Some(db[H + index as usize + 1..].to_vec())
    } else {
        None
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oaep_decode_matches_the_rsa_crate() {
        use rsa::traits::{PrivateKeyParts as _, PublicKeyParts as _};
        let mut rng = rand::rngs::OsRng;
        let key = rsa::RsaPrivateKey::new(&mut rng, 1024).unwrap();
        let pk = key.to_public_key();
        let k = pk.size();
        for msg in [&b""[..], b"x", &[7u8; 62]] {
            let ct = pk
                .encrypt(&mut rng, rsa::Oaep::new::<Sha256>(), msg)
                .unwrap();
            // Raw RSA: m = c^d mod n.
            let c = rsa::BigUint::from_bytes_be(&ct);
            let m = c.modpow(key.d(), key.n());
            let em = m.to_bytes_be();
            assert_eq!(oaep_sha256_decode(&em, k).as_deref(), Some(msg));
            let mut bad = vec![0u8; k - em.len()];
            bad.extend_from_slice(&em);
            bad[k - 1] ^= 1;
            assert_eq!(oaep_sha256_decode(&bad, k), None);
        }
        assert_eq!(oaep_sha256_decode(&[0u8; 128], 128), None);
    }
}
