//! NHN sealed framing: ciphertexts (`parse_ciphertext`, base64 of a 4-byte
//! big-endian version, then `iv || ciphertext || tag`), signatures
//! (`parse_signature`: the same framing around a 256-byte RSA signature,
//! or a bare signature), and `nhn_frame` / `nhn_unframe`.
//!
//! Holds: nothing panics; what parses re-encodes to exactly the text sent
//! (trimmed, as the parser trims); any version and payload frame to bytes
//! that parse back to them.
#![no_main]

use hsm_kms::fuzzing::{
    nhn_b64, nhn_frame, nhn_parse_ciphertext, nhn_parse_signature, nhn_unframe, Sealed,
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match nhn_parse_ciphertext(text) {
            Ok(s) => {
                assert!((0..=i64::from(u32::MAX)).contains(&s.version));
                assert!(s.blob.len() >= 12 + 16);
                assert_eq!(nhn_b64(&nhn_frame(&s)), text.trim(), "not canonical");
            }
            Err(e) => assert_eq!(e.status.as_u16(), 400),
        }
        match nhn_parse_signature(text) {
            Ok((Some(v), sig)) => {
                assert_eq!(sig.len(), 256);
                let back = Sealed {
                    version: v,
                    blob: sig,
                };
                assert_eq!(nhn_b64(&nhn_frame(&back)), text.trim());
            }
            Ok((None, sig)) => {
                assert_ne!(sig.len(), 4 + 256);
                assert_eq!(nhn_b64(&sig), text.trim());
            }
            Err(e) => assert_eq!(e.status.as_u16(), 400),
        }
    }
    // The bytes as a value: 4 bytes of version, the rest the payload.
    if data.len() >= 4 {
        let version = i64::from(u32::from_be_bytes([data[0], data[1], data[2], data[3]]));
        let s = Sealed {
            version,
            blob: data[4..].to_vec(),
        };
        let bytes = nhn_frame(&s);
        assert_eq!(bytes, data);
        assert_eq!(nhn_unframe(&bytes, 0), Some(s.clone()));
        let text = nhn_b64(&bytes);
        match nhn_parse_ciphertext(&text) {
            Ok(back) => assert_eq!(back, s),
            Err(_) => assert!(s.blob.len() < 28),
        }
    }
});
