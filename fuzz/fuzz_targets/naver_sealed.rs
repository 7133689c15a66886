//! NAVER `ncpkms:v{n}:{base64}` ciphertexts and signatures: `parse_sealed`
//! (Decrypt, Re-encrypt, Verify) and `format_sealed` (every answer).
//!
//! Holds: parsing never panics; what parses has a version from 1 to 100 and
//! a non-empty blob, and formats back to exactly the text sent (one spelling
//! per value); any version and blob format to text that parses back to them.
#![no_main]

use hsm_kms::fuzzing::{format_sealed, parse_sealed, Sealed, MAX_VERSIONS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match parse_sealed("ciphertext", text) {
            Ok(s) => {
                assert!((1..=MAX_VERSIONS).contains(&s.version), "{text:?}");
                assert!(!s.blob.is_empty(), "{text:?}");
                assert_eq!(format_sealed(&s), text, "not canonical");
            }
            Err(e) => assert_eq!(e.status.as_u16(), 400),
        }
    }
    // The bytes as a value: first byte the version, the rest the blob.
    if let Some((v, blob)) = data.split_first() {
        let s = Sealed {
            version: i64::from(*v % 100) + 1,
            blob: blob.to_vec(),
        };
        let text = format_sealed(&s);
        match parse_sealed("ciphertext", &text) {
            Ok(back) => assert_eq!(back, s),
            // An empty blob is refused; nothing else is.
            Err(_) => assert!(blob.is_empty(), "{text:?}"),
        }
    }
});
