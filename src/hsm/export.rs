//! Read-back of key material from objects created extractable under an NHN
//! key store's export policy (off by default). Objects created with
//! `CKA_SENSITIVE=true` / `CKA_EXTRACTABLE=false` refuse these reads in the
//! token itself.

use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use zeroize::Zeroizing;

use super::{Hsm, HsmError, OpClass, Result, SessionRef};

impl SessionRef<'_> {
    /// The private key of an extractable RSA pair as PKCS#8 DER.
    pub fn rsa_private_key_pkcs8(&self, id: &[u8]) -> Result<Zeroizing<Vec<u8>>> {
        use rsa::pkcs8::EncodePrivateKey as _;
        let h = self.handle(id, ObjectClass::PRIVATE_KEY)?;
        let attrs = self.raw().get_attributes(
            h,
            &[
                AttributeType::Modulus,
                AttributeType::PublicExponent,
                AttributeType::PrivateExponent,
                AttributeType::Prime1,
                AttributeType::Prime2,
            ],
        )?;
        let (mut n, mut e, mut d, mut p, mut q) = (None, None, None, None, None);
        for a in attrs {
            match a {
                Attribute::Modulus(v) => n = Some(Zeroizing::new(v)),
                Attribute::PublicExponent(v) => e = Some(Zeroizing::new(v)),
                Attribute::PrivateExponent(v) => d = Some(Zeroizing::new(v)),
                Attribute::Prime1(v) => p = Some(Zeroizing::new(v)),
                Attribute::Prime2(v) => q = Some(Zeroizing::new(v)),
                _ => {}
            }
        }
        let (Some(n), Some(e), Some(d), Some(p), Some(q)) = (n, e, d, p, q) else {
            return Err(HsmError::Malformed(
                "the private key did not reveal its components".into(),
            ));
        };
        let big = |v: &[u8]| rsa::BigUint::from_bytes_be(v);
        let key =
            rsa::RsaPrivateKey::from_components(big(&n), big(&e), big(&d), vec![big(&p), big(&q)])
                .map_err(|e| HsmError::Malformed(format!("RSA private key: {e}")))?;
        let der = key
            .to_pkcs8_der()
            .map_err(|e| HsmError::Malformed(format!("RSA private key: {e}")))?;
        Ok(Zeroizing::new(der.as_bytes().to_vec()))
    }
}

impl Hsm {
    /// `CKA_VALUE` of an extractable secret key. See [`SessionRef::secret_value`].
    pub async fn secret_value(&self, id: Vec<u8>) -> Result<Zeroizing<Vec<u8>>> {
        self.run(OpClass::Symmetric, move |s| {
            s.secret_value(&id).map(Zeroizing::new)
        })
        .await
    }

    /// See [`SessionRef::rsa_private_key_pkcs8`].
    pub async fn rsa_private_key_pkcs8(&self, id: Vec<u8>) -> Result<Zeroizing<Vec<u8>>> {
        self.run(OpClass::Symmetric, move |s| s.rsa_private_key_pkcs8(&id))
            .await
    }
}
