//! NAVER wire formats: `ncpkms:v{version}:{base64}` ciphertexts and
//! signatures, base64 fields, and plaintexts that are a string or an array.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::NaverError;
use crate::core::Sealed;

/// Formats a ciphertext or signature as `ncpkms:v{n}:{base64}`.
pub fn format_sealed(s: &Sealed) -> String {
    format!("ncpkms:v{}:{}", s.version, STANDARD.encode(&s.blob))
}

/// Parses `ncpkms:v{n}:{base64}`.
pub fn parse_sealed(field: &str, text: &str) -> Result<Sealed, NaverError> {
    let bad = || {
        NaverError::bad_request(format!(
            "{field} is not of the form ncpkms:v{{version}}:{{base64}}"
        ))
    };
    let rest = text.strip_prefix("ncpkms:v").ok_or_else(bad)?;
    let (v, b64) = rest.split_once(':').ok_or_else(bad)?;
    // One spelling per version: digits only, no sign, no leading zero.
    if v.starts_with('0') || !v.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let version: i64 = v.parse().map_err(|_| bad())?;
    if !(1..=crate::core::MAX_VERSIONS).contains(&version) {
        return Err(bad());
    }
    let blob = STANDARD
        .decode(b64)
        .map_err(|_| NaverError::bad_request(format!("{field} has invalid base64")))?;
    if blob.is_empty() {
        return Err(bad());
    }
    Ok(Sealed { version, blob })
}

/// Decodes a base64 field.
pub fn b64(field: &str, text: &str) -> Result<Vec<u8>, NaverError> {
    STANDARD
        .decode(text)
        .map_err(|_| NaverError::bad_request(format!("{field} is not valid base64")))
}

/// Encodes base64.
pub fn enc(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// A field that is either a string or an array of strings; the response
/// keeps the request's shape.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(untagged)]
pub enum OneOrMany {
    /// A single value.
    One(String),
    /// Several values.
    Many(Vec<String>),
}

impl OneOrMany {
    /// The values, in order.
    pub fn items(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }

    /// The same shape with other values.
    pub fn same_shape(&self, mut values: Vec<String>) -> OneOrMany {
        match self {
            OneOrMany::One(_) => OneOrMany::One(values.pop().unwrap_or_default()),
            OneOrMany::Many(_) => OneOrMany::Many(values),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_round_trip() {
        let s = Sealed {
            version: 7,
            blob: vec![1, 2, 3],
        };
        let t = format_sealed(&s);
        assert_eq!(t, "ncpkms:v7:AQID");
        assert_eq!(parse_sealed("c", &t).unwrap(), s);
    }

    /// Found by the `naver_sealed` fuzz target and the format proptest:
    /// `v07` and `v+7` were read as version 7, so one ciphertext had several
    /// accepted spellings. The version is digits without a leading zero.
    #[test]
    fn sealed_version_has_one_spelling() {
        for t in [
            "ncpkms:v07:AQID",
            "ncpkms:v+7:AQID",
            "ncpkms:v007:AQID",
            "ncpkms:v 7:AQID",
        ] {
            assert!(parse_sealed("c", t).is_err(), "{t}");
        }
        assert_eq!(parse_sealed("c", "ncpkms:v7:AQID").unwrap().version, 7);
        assert_eq!(parse_sealed("c", "ncpkms:v100:AQID").unwrap().version, 100);
    }

    #[test]
    fn sealed_rejects_garbage() {
        for t in [
            "AQID",
            "ncpkms:vx:AQID",
            "ncpkms:v1AQID",
            "ncpkms:v1:***",
            "ncpkms:v0:AQID",
            "ncpkms:v1:",
        ] {
            assert!(parse_sealed("c", t).is_err(), "{t}");
        }
    }
}
