//! Which way the two token-dependent operations take, decided once when the
//! module is first opened.
//!
//! | operation | in the token ([`MechanismPath::Token`]) | outside ([`MechanismPath::Outside`]) |
//! | --- | --- | --- |
//! | RSA-OAEP, SHA-256 and MGF1-SHA-256 | `CKM_RSA_PKCS_OAEP` with those parameters | padding here with the public key read from the token; decryption is raw RSA (`CKM_RSA_X_509`) in the token and OAEP decoding here |
//! | ECDSA P-256 over SHA-256 | `CKM_ECDSA_SHA256` on the message | SHA-256 here, `CKM_ECDSA` on the digest |
//!
//! Both ways give the same standard ciphertexts and signatures, and no
//! secret leaves the token either way. `CKM_ECDSA_SHA256` is taken when
//! `C_GetMechanismInfo` says it signs and verifies. For OAEP the list is
//! not enough: SoftHSMv2 2.6 lists `CKM_RSA_PKCS_OAEP` but takes only SHA-1
//! (`CKR_ARGUMENTS_BAD` at `C_EncryptInit`), so the parameters are tried once
//! with a session public key (never stored in the token).

use cryptoki::mechanism::{MechanismInfo, MechanismType};
use cryptoki::object::{Attribute, KeyType, ObjectClass};
use cryptoki::session::Session;

use super::recovery::Module;
use super::HsmConfig;

/// Where an operation with a token-dependent mechanism runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MechanismPath {
    /// One mechanism of the token does all of it.
    Token,
    /// The hashing or padding is done here, the key operation in the token.
    Outside,
}

/// The paths chosen for this token (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MechanismPaths {
    /// RSA-OAEP with SHA-256.
    pub rsa_oaep_sha256: MechanismPath,
    /// ECDSA P-256 with SHA-256.
    pub ecdsa_sha256: MechanismPath,
}

impl MechanismPaths {
    /// Asks the token once: `C_GetMechanismInfo` for both mechanisms, then a
    /// trial OAEP-SHA-256 encryption under a session public key. A token
    /// that fails to answer gets the outside paths, which need only
    /// `CKM_RSA_X_509` and `CKM_ECDSA`.
    pub(super) fn probe(module: &Module, cfg: &HsmConfig) -> MechanismPaths {
        // C_GetMechanismInfo per mechanism rather than C_GetMechanismList:
        // cryptoki logs an error for every listed type it has no name for
        // (Kryoptic lists dozens), and an unsupported mechanism answers
        // CKR_MECHANISM_INVALID here anyway.
        let offers = |m: MechanismType, ok: fn(&MechanismInfo) -> bool| {
            module
                .ctx
                .get_mechanism_info(module.slot, m)
                .map(|i| ok(&i))
                .unwrap_or(false)
        };
        let ecdsa_sha256 = if offers(MechanismType::ECDSA_SHA256, |i| i.sign() && i.verify()) {
            MechanismPath::Token
        } else {
            MechanismPath::Outside
        };
        let rsa_oaep_sha256 = if offers(MechanismType::RSA_PKCS_OAEP, |i| {
            i.encrypt() && i.decrypt()
        }) {
            match module.checkout(cfg, false) {
                Ok(pooled) => {
                    let path = oaep_trial(&pooled.session);
                    module.checkin(pooled, cfg.max_sessions.max(1));
                    path
                }
                Err(e) => {
                    tracing::warn!(error = %e, "no session to try OAEP-SHA-256; padding outside the token");
                    MechanismPath::Outside
                }
            }
        } else {
            MechanismPath::Outside
        };
        MechanismPaths {
            rsa_oaep_sha256,
            ecdsa_sha256,
        }
    }
}

/// Encrypts a few bytes with OAEP-SHA-256 under a session RSA public key
/// (a fixed 2048-bit modulus, destroyed after): whether the token takes
/// these parameters.
fn oaep_trial(session: &Session) -> MechanismPath {
    let mut modulus = vec![0xffu8; super::asymmetric::RSA_MODULUS_LEN];
    modulus[0] = 0xc3;
    let template = [
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::RSA),
        Attribute::Token(false),
        Attribute::Encrypt(true),
        Attribute::Modulus(modulus),
        Attribute::PublicExponent(vec![0x01, 0x00, 0x01]),
    ];
    let key = match session.create_object(&template) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "cannot create a session RSA key to try OAEP-SHA-256; padding outside the token");
            return MechanismPath::Outside;
        }
    };
    let out = session.encrypt(&super::asymmetric::oaep(), key, b"probe");
    if let Err(e) = session.destroy_object(key) {
        tracing::debug!(error = %e, "destroying the OAEP trial key (a session object)");
    }
    match out {
        Ok(_) => MechanismPath::Token,
        Err(e) if super::asymmetric::oaep_unsupported(&e) => MechanismPath::Outside,
        Err(e) => {
            tracing::warn!(error = %e, "OAEP-SHA-256 trial failed; padding outside the token");
            MechanismPath::Outside
        }
    }
}
