//! Object templates: every key the service makes is generated in the token,
//! private, sensitive, not modifiable and (unless an export policy says
//! otherwise) not extractable, with usage flags only for its purpose.

use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass};

use super::{HsmError, OpClass, Result, SessionRef};
use crate::telemetry::token::Call;

/// DER encoding of the OID of NIST P-256 (prime256v1), for `CKA_EC_PARAMS`.
pub(crate) const P256_OID_DER: [u8; 10] =
    [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// What a generated key may be used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsage {
    /// Encrypt and decrypt only.
    Crypt,
    /// Sign and verify only.
    Sign,
    /// Both (NAVER RSA2048 keys do both).
    CryptAndSign,
}

impl KeyUsage {
    fn crypt(self) -> bool {
        matches!(self, KeyUsage::Crypt | KeyUsage::CryptAndSign)
    }
    fn sign(self) -> bool {
        matches!(self, KeyUsage::Sign | KeyUsage::CryptAndSign)
    }
}

/// The kind of key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeySpec {
    /// AES-256 secret key for AES-GCM.
    Aes256 {
        /// Created extractable under an export policy (NHN only).
        extractable: bool,
    },
    /// 256-bit generic secret for HMAC-SHA-256 (convergent IVs, audit chain).
    HmacSha256,
    /// RSA-2048 key pair, public exponent 65537.
    Rsa2048 {
        /// What the pair may do.
        usage: KeyUsage,
        /// Private key created extractable under an export policy (NHN only).
        extractable: bool,
    },
    /// ECDSA P-256 key pair.
    EcP256,
}

impl KeySpec {
    /// True for specs that make a public/private pair.
    pub fn is_pair(self) -> bool {
        matches!(self, KeySpec::Rsa2048 { .. } | KeySpec::EcP256)
    }
}

fn common(label: &str, id: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Token(true),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

fn private_common(label: &str, id: &[u8], extractable: bool) -> Vec<Attribute> {
    let mut t = common(label, id);
    t.extend([
        Attribute::Private(true),
        Attribute::Sensitive(!extractable),
        Attribute::Extractable(extractable),
        Attribute::Modifiable(false),
    ]);
    t
}

/// The class, type, size and usage attributes of an AES-256 key: encrypt
/// and decrypt only. One list for the service's keys and the benchmark's
/// session-object key, so the benchmark measures the same key.
fn aes256_usage() -> [Attribute; 10] {
    [
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::ValueLen(32.into()),
        Attribute::Encrypt(true),
        Attribute::Decrypt(true),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Wrap(false),
        Attribute::Unwrap(false),
        Attribute::Derive(false),
    ]
}

impl SessionRef<'_> {
    /// Generates an AES-256 key as a *session* object (`CKA_TOKEN=false`;
    /// private, sensitive, not extractable, encrypt and decrypt only) with
    /// `CKA_ID = id`: it is gone when the session that made it closes. Only
    /// for the raw benchmark's session-object rate (`hsm-kms-bench`); the
    /// service itself keeps no session objects.
    pub fn generate_session_aes256(&self, label: &str, id: &[u8]) -> Result<()> {
        let mut t: Vec<Attribute> = private_common(label, id, false)
            .into_iter()
            .map(|a| match a {
                Attribute::Token(_) => Attribute::Token(false),
                a => a,
            })
            .collect();
        t.extend(aes256_usage());
        let h = self.raw().generate_key(&Mechanism::AesKeyGen, &t)?;
        self.remember(id, &[(ObjectClass::SECRET_KEY, h)]);
        Ok(())
    }

    /// Generates a key (or pair) with `CKA_ID = id` and `CKA_LABEL = label`.
    pub fn generate(&self, spec: KeySpec, label: &str, id: &[u8]) -> Result<()> {
        match spec {
            KeySpec::Aes256 { extractable } => {
                let mut t = private_common(label, id, extractable);
                t.extend(aes256_usage());
                let h = self.call(Call::GenerateKey, Some(MechanismType::AES_KEY_GEN), |s| {
                    s.generate_key(&Mechanism::AesKeyGen, &t)
                })?;
                self.remember(id, &[(ObjectClass::SECRET_KEY, h)]);
            }
            KeySpec::HmacSha256 => {
                let mut t = private_common(label, id, false);
                t.extend([
                    Attribute::Class(ObjectClass::SECRET_KEY),
                    Attribute::KeyType(KeyType::GENERIC_SECRET),
                    Attribute::ValueLen(32.into()),
                    Attribute::Sign(true),
                    Attribute::Verify(true),
                    Attribute::Encrypt(false),
                    Attribute::Decrypt(false),
                    Attribute::Wrap(false),
                    Attribute::Unwrap(false),
                    Attribute::Derive(false),
                ]);
                let h = self.call(
                    Call::GenerateKey,
                    Some(MechanismType::GENERIC_SECRET_KEY_GEN),
                    |s| s.generate_key(&Mechanism::GenericSecretKeyGen, &t),
                )?;
                self.remember(id, &[(ObjectClass::SECRET_KEY, h)]);
            }
            KeySpec::Rsa2048 { usage, extractable } => {
                let mut public = common(label, id);
                public.extend([
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::KeyType(KeyType::RSA),
                    Attribute::Private(false),
                    Attribute::Modifiable(false),
                    Attribute::ModulusBits(2048.into()),
                    Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
                    Attribute::Encrypt(usage.crypt()),
                    Attribute::Verify(usage.sign()),
                    Attribute::Wrap(false),
                ]);
                let mut private = private_common(label, id, extractable);
                private.extend([
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::KeyType(KeyType::RSA),
                    Attribute::Decrypt(usage.crypt()),
                    Attribute::Sign(usage.sign()),
                    Attribute::Unwrap(false),
                    Attribute::Derive(false),
                ]);
                let (pb, pv) = self.call(
                    Call::GenerateKeyPair,
                    Some(MechanismType::RSA_PKCS_KEY_PAIR_GEN),
                    |s| s.generate_key_pair(&Mechanism::RsaPkcsKeyPairGen, &public, &private),
                )?;
                self.remember(
                    id,
                    &[
                        (ObjectClass::PUBLIC_KEY, pb),
                        (ObjectClass::PRIVATE_KEY, pv),
                    ],
                );
            }
            KeySpec::EcP256 => {
                let mut public = common(label, id);
                public.extend([
                    Attribute::Class(ObjectClass::PUBLIC_KEY),
                    Attribute::KeyType(KeyType::EC),
                    Attribute::Private(false),
                    Attribute::Modifiable(false),
                    Attribute::EcParams(P256_OID_DER.to_vec()),
                    Attribute::Verify(true),
                    // Unset, SoftHSM makes these true: usage flags only
                    // for the key's purpose.
                    Attribute::Encrypt(false),
                    Attribute::Wrap(false),
                ]);
                let mut private = private_common(label, id, false);
                private.extend([
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::KeyType(KeyType::EC),
                    Attribute::Sign(true),
                    Attribute::Decrypt(false),
                    Attribute::Unwrap(false),
                    Attribute::Derive(false),
                ]);
                let (pb, pv) = self.call(
                    Call::GenerateKeyPair,
                    Some(MechanismType::ECC_KEY_PAIR_GEN),
                    |s| s.generate_key_pair(&Mechanism::EccKeyPairGen, &public, &private),
                )?;
                self.remember(
                    id,
                    &[
                        (ObjectClass::PUBLIC_KEY, pb),
                        (ObjectClass::PRIVATE_KEY, pv),
                    ],
                );
            }
        }
        Ok(())
    }
}

impl super::Hsm {
    /// Generates a key (or pair) in the token. See [`SessionRef::generate`].
    pub async fn generate(&self, spec: KeySpec, label: String, id: Vec<u8>) -> Result<()> {
        let class = if spec.is_pair() {
            OpClass::Asymmetric
        } else {
            OpClass::Symmetric
        };
        self.run_once(class, move |s| s.generate(spec, &label, &id))
            .await
    }

    /// Stores `value` as a private `CKO_DATA` token object (NHN secrets).
    ///
    /// `CKO_DATA` has no `CKA_ID` (SoftHSMv2 refuses one with
    /// `CKR_ATTRIBUTE_TYPE_INVALID`), so a data object is named by its label:
    /// its id, everywhere the service records or looks up an object id, is
    /// the label's bytes. The label must therefore be unique and start with
    /// `hsm-kms/`.
    pub async fn create_data_object(&self, label: String, value: Vec<u8>) -> Result<()> {
        self.run_once(OpClass::Symmetric, move |s| {
            let t = vec![
                Attribute::Token(true),
                Attribute::Label(label.clone().into_bytes()),
                Attribute::Private(true),
                Attribute::Modifiable(false),
                Attribute::Class(ObjectClass::DATA),
                Attribute::Application(b"hsm-kms".to_vec()),
                Attribute::Value(value.clone()),
            ];
            let h = s.call(Call::CreateObject, None, |s| s.create_object(&t))?;
            // A data object's id is its label.
            s.remember(label.as_bytes(), &[(ObjectClass::DATA, h)]);
            Ok(())
        })
        .await
    }

    /// Reads the value of a `CKO_DATA` object (`id` = its label's bytes).
    pub async fn read_data_object(&self, id: Vec<u8>) -> Result<Vec<u8>> {
        self.run(OpClass::Symmetric, move |s| {
            let h = s.handle(&id, ObjectClass::DATA)?;
            let attrs = s
                .raw()
                .get_attributes(h, &[cryptoki::object::AttributeType::Value])?;
            for a in attrs {
                if let Attribute::Value(v) = a {
                    return Ok(v);
                }
            }
            Err(HsmError::Malformed("data object without CKA_VALUE".into()))
        })
        .await
    }
}
