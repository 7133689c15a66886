//! AES-GCM and HMAC-SHA-256 inside the token.

use cryptoki::mechanism::aead::GcmParams;
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::ObjectClass;

use super::{Hsm, Result, SessionRef};
use crate::telemetry::token::Call;

/// Length of the GCM nonce.
pub const GCM_IV_LEN: usize = 12;
/// Length of the GCM tag.
pub const GCM_TAG_LEN: usize = 16;

/// AES-GCM encryptions with random 96-bit IVs allowed per key (SP 800-38D
/// section 8.3: the probability of a repeated IV stays below 2^-32 for at
/// most 2^32 invocations of the encryption function with one key).
pub const GCM_INVOCATION_LIMIT: u64 = 1 << 32;

/// Where the random 96-bit GCM IVs come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IvSource {
    /// `C_GenerateRandom` in the token (FIPS 140-3 IG C.H: generated inside
    /// the module boundary). The default.
    #[default]
    Token,
    /// The operating system's CSPRNG (`getrandom`), outside the token: one
    /// token call less per Encrypt; not for FIPS 140-3 deployments.
    Host,
}

impl SessionRef<'_> {
    /// AES-GCM encryption with a 96-bit IV and a 128-bit tag. Returns
    /// `iv || ciphertext || tag`. Without `iv`, a fresh one comes from the
    /// token's generator.
    pub fn aes_gcm_encrypt(
        &self,
        id: &[u8],
        plaintext: &[u8],
        aad: &[u8],
        iv: Option<[u8; GCM_IV_LEN]>,
    ) -> Result<Vec<u8>> {
        let h = self.handle(id, ObjectClass::SECRET_KEY)?;
        let mut iv = match iv {
            Some(iv) => iv,
            None => {
                let mut iv = [0u8; GCM_IV_LEN];
                match self.hsm.inner.cfg.gcm_iv_source {
                    IvSource::Token => self.call(Call::GenerateRandom, None, |s| {
                        s.generate_random_slice(&mut iv)
                    })?,
                    IvSource::Host => {
                        use rand::RngCore as _;
                        rand::rngs::OsRng
                            .try_fill_bytes(&mut iv)
                            .map_err(|e| super::HsmError::Worker(format!("getrandom: {e}")))?
                    }
                }
                iv
            }
        };
        let ct = {
            let params = GcmParams::new(&mut iv, aad, ((GCM_TAG_LEN * 8) as u64).into())?;
            self.call(Call::Encrypt, Some(MechanismType::AES_GCM), |s| {
                s.encrypt(&Mechanism::AesGcm(params), h, plaintext)
            })?
        };
        let mut out = Vec::with_capacity(GCM_IV_LEN + ct.len());
        out.extend_from_slice(&iv);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Decrypts `iv || ciphertext || tag` made by [`SessionRef::aes_gcm_encrypt`].
    pub fn aes_gcm_decrypt(&self, id: &[u8], blob: &[u8], aad: &[u8]) -> Result<Vec<u8>> {
        if blob.len() < GCM_IV_LEN + GCM_TAG_LEN {
            return Err(super::HsmError::DecryptFailed);
        }
        let h = self.handle(id, ObjectClass::SECRET_KEY)?;
        let mut iv = [0u8; GCM_IV_LEN];
        iv.copy_from_slice(&blob[..GCM_IV_LEN]);
        let params = GcmParams::new(&mut iv, aad, ((GCM_TAG_LEN * 8) as u64).into())?;
        match self.call(Call::Decrypt, Some(MechanismType::AES_GCM), |s| {
            s.decrypt(&Mechanism::AesGcm(params), h, &blob[GCM_IV_LEN..])
        }) {
            Ok(pt) => Ok(pt),
            // SoftHSM answers a bad tag with CKR_FUNCTION_FAILED,
            // CKR_ENCRYPTED_DATA_INVALID or (2.6.1, one-shot C_Decrypt)
            // CKR_GENERAL_ERROR; all mean "not ours" here, where the key
            // handle and the mechanism are known to be valid.
            Err(cryptoki::error::Error::Pkcs11(
                cryptoki::error::RvError::GeneralError
                | cryptoki::error::RvError::FunctionFailed
                | cryptoki::error::RvError::EncryptedDataInvalid
                | cryptoki::error::RvError::EncryptedDataLenRange,
                _,
            )) => Err(super::HsmError::DecryptFailed),
            Err(e) => Err(e.into()),
        }
    }

    /// HMAC-SHA-256 with a generic secret key in the token.
    pub fn hmac_sha256(&self, id: &[u8], data: &[u8]) -> Result<Vec<u8>> {
        let h = self.handle(id, ObjectClass::SECRET_KEY)?;
        Ok(
            self.call(Call::Sign, Some(MechanismType::SHA256_HMAC), |s| {
                s.sign(&Mechanism::Sha256Hmac, h, data)
            })?,
        )
    }
}

impl Hsm {
    /// See [`SessionRef::aes_gcm_encrypt`].
    pub async fn aes_gcm_encrypt(
        &self,
        id: Vec<u8>,
        plaintext: Vec<u8>,
        aad: Vec<u8>,
        iv: Option<[u8; GCM_IV_LEN]>,
    ) -> Result<Vec<u8>> {
        self.run_short(move |s| s.aes_gcm_encrypt(&id, &plaintext, &aad, iv))
            .await
    }

    /// See [`SessionRef::aes_gcm_decrypt`].
    pub async fn aes_gcm_decrypt(
        &self,
        id: Vec<u8>,
        blob: Vec<u8>,
        aad: Vec<u8>,
    ) -> Result<Vec<u8>> {
        self.run_short(move |s| s.aes_gcm_decrypt(&id, &blob, &aad))
            .await
    }

    /// Convergent AES-GCM: the IV is the first 12 bytes of
    /// HMAC-SHA-256(hmac key, len(context) || context || plaintext), computed
    /// in the token, and the context is the GCM AAD. One blocking hop for both
    /// calls.
    pub async fn aes_gcm_encrypt_convergent(
        &self,
        aes_id: Vec<u8>,
        hmac_id: Vec<u8>,
        plaintext: Vec<u8>,
        context: Vec<u8>,
    ) -> Result<Vec<u8>> {
        self.run_short(move |s| {
            let mut msg = Vec::with_capacity(4 + context.len() + plaintext.len());
            msg.extend_from_slice(&(context.len() as u32).to_be_bytes());
            msg.extend_from_slice(&context);
            msg.extend_from_slice(&plaintext);
            let mac = s.hmac_sha256(&hmac_id, &msg)?;
            let mut iv = [0u8; GCM_IV_LEN];
            iv.copy_from_slice(&mac[..GCM_IV_LEN]);
            s.aes_gcm_encrypt(&aes_id, &plaintext, &context, Some(iv))
        })
        .await
    }

    /// See [`SessionRef::hmac_sha256`].
    pub async fn hmac_sha256(&self, id: Vec<u8>, data: Vec<u8>) -> Result<Vec<u8>> {
        self.run_short(move |s| s.hmac_sha256(&id, &data)).await
    }
}
