//! Offline checks of a signed report: the signature (with the `p256`
//! crate, no token) and the report's own consistency (flags and summary
//! recomputed from the rows).

use base64::Engine as _;
use p256::ecdsa::signature::Verifier as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{row_flags, summarise, Report, Signature, FORMAT};

/// Why a report was refused.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// The file is not a signed report of this format.
    #[error("not a signed hsm-kms attestation report: {0}")]
    Malformed(String),
    /// The public key given is not a P-256 PEM public key.
    #[error("the public key is not a P-256 PEM public key: {0}")]
    PublicKey(String),
    /// The report names another signing key than the one given.
    #[error(
        "the report was signed by another key (its key: sha256 {report}; the key given: sha256 {given})"
    )]
    OtherKey {
        /// SHA-256 of the key the report names.
        report: String,
        /// SHA-256 of the key given.
        given: String,
    },
    /// The signature does not match the report's bytes.
    #[error("the signature does not match the report: it was changed after signing, or signed by another key")]
    BadSignature,
    /// The signature holds but the report contradicts itself.
    #[error("the signature is valid but the report is inconsistent: {0}")]
    Inconsistent(String),
}

/// What a verified report says, in short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The report.
    pub report: Report,
    /// SHA-256 (hex) of the signing key's SubjectPublicKeyInfo.
    pub key_sha256: String,
}

/// The bytes that are signed: `v` as compact JSON with every object's
/// keys sorted by their UTF-8 bytes, no whitespace (what `jq -jcS` prints
/// for the integers and ASCII text of a report).
pub fn canonical_json(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_canonical(v, &mut out);
    out
}

fn write_canonical(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push(b'{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(k.clone()), out);
                out.push(b':');
                if let Some(x) = m.get(k) {
                    write_canonical(x, out);
                }
            }
            out.push(b'}');
        }
        Value::Array(a) => {
            out.push(b'[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(x, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(v: &Value, out: &mut Vec<u8>) {
    // Serialising a scalar Value into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, v);
}

/// Checks a signed report (the file's bytes) against a PEM public key,
/// offline: the key is the one the report names, the signature holds over
/// the report's canonical bytes, and the report's flags and summary are
/// what its rows imply.
pub fn verify(file: &[u8], public_key_pem: &str) -> Result<Verified, VerifyError> {
    use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
    let doc: Value =
        serde_json::from_slice(file).map_err(|e| VerifyError::Malformed(e.to_string()))?;
    let body = doc
        .get("report")
        .ok_or_else(|| VerifyError::Malformed("no `report` member".into()))?;
    let sig: Signature = serde_json::from_value(
        doc.get("signature")
            .cloned()
            .ok_or_else(|| VerifyError::Malformed("no `signature` member".into()))?,
    )
    .map_err(|e| VerifyError::Malformed(format!("signature: {e}")))?;
    if sig.alg != "ES256" || sig.encoding != "DER" {
        return Err(VerifyError::Malformed(format!(
            "signature {} / {} (only ES256 / DER)",
            sig.alg, sig.encoding
        )));
    }
    let key = p256::PublicKey::from_public_key_pem(public_key_pem.trim())
        .map_err(|e| VerifyError::PublicKey(e.to_string()))?;
    let spki = key
        .to_public_key_der()
        .map_err(|e| VerifyError::PublicKey(e.to_string()))?;
    let given = hex::encode(Sha256::digest(spki.as_bytes()));
    if given != sig.public_key_sha256 {
        return Err(VerifyError::OtherKey {
            report: sig.public_key_sha256,
            given,
        });
    }
    let der = base64::engine::general_purpose::STANDARD
        .decode(&sig.value)
        .map_err(|_| VerifyError::BadSignature)?;
    let signature =
        p256::ecdsa::Signature::from_der(&der).map_err(|_| VerifyError::BadSignature)?;
    p256::ecdsa::VerifyingKey::from(&key)
        .verify(&canonical_json(body), &signature)
        .map_err(|_| VerifyError::BadSignature)?;

    let report: Report = serde_json::from_value(body.clone())
        .map_err(|e| VerifyError::Inconsistent(format!("the report does not parse: {e}")))?;
    consistent(&report, &given)?;
    Ok(Verified {
        report,
        key_sha256: given,
    })
}

/// The report's own numbers against its rows.
fn consistent(r: &Report, key_sha256: &str) -> Result<(), VerifyError> {
    let bad = |m: String| Err(VerifyError::Inconsistent(m));
    if r.format != FORMAT {
        return bad(format!("format {:?}, expected {FORMAT:?}", r.format));
    }
    if r.attestation_key.public_key_sha256 != key_sha256 {
        return bad("the report names another attestation key than its signature".into());
    }
    let agree = r.installation.store.is_some() && r.installation.store == r.installation.token;
    if r.installation.agree != agree {
        return bad(format!(
            "installation.agree is {} but the ids say {agree}",
            r.installation.agree
        ));
    }
    for (i, row) in r.rows.iter().enumerate() {
        let flags = row_flags(row);
        if flags != row.flags {
            return bad(format!(
                "row {i}: flags {:?}, but its attributes give {:?}",
                codes(&row.flags),
                codes(&flags)
            ));
        }
    }
    let summary = summarise(&r.rows, &r.installation);
    if summary != r.summary {
        return bad(format!(
            "summary {:?}, but the rows give {:?}",
            r.summary, summary
        ));
    }
    Ok(())
}

fn codes(flags: &[super::Flag]) -> Vec<&str> {
    flags.iter().map(|f| f.code.as_str()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_form_sorts_keys_at_every_depth_and_drops_whitespace() {
        let v: Value =
            serde_json::from_str(r#"{ "b": [ {"z": 1, "a": "x\"y"} ], "a": null, "B": true }"#)
                .unwrap();
        assert_eq!(
            String::from_utf8(canonical_json(&v)).unwrap(),
            r#"{"B":true,"a":null,"b":[{"a":"x\"y","z":1}]}"#
        );
    }
}
