//! The JSON bodies of the NHN data endpoints: Encrypt, Decrypt, Sign,
//! Verify and Update Secret, through the extractor's rule (`parse_json`)
//! and the handlers' decoding (`parse_ciphertext`, `parse_signature`).
//!
//! Input: a first byte choosing the endpoint, then the body.
//!
//! Holds: nothing panics; a refused body is a 400 with a negative
//! `resultCode`; an accepted ciphertext has room for an IV and a tag, and a
//! signature that names a version is 256 bytes.
#![no_main]

use hsm_kms::fuzzing::{nhn_request, NhnCall, NhnRequest};
use libfuzzer_sys::fuzz_target;

const CALLS: [NhnCall; 5] = [
    NhnCall::Encrypt,
    NhnCall::Decrypt,
    NhnCall::Sign,
    NhnCall::Verify,
    NhnCall::UpdateSecret,
];

fuzz_target!(|data: &[u8]| {
    let Some((sel, body)) = data.split_first() else {
        return;
    };
    let call = CALLS[usize::from(*sel) % CALLS.len()];
    match nhn_request(call, body) {
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400, "{e:?}");
            assert!(e.code < 0);
        }
        Ok(NhnRequest::Decrypt(s)) => {
            assert!(s.blob.len() >= 28);
            assert!((0..=i64::from(u32::MAX)).contains(&s.version));
        }
        Ok(NhnRequest::Verify(_, Some(_), sig)) => assert_eq!(sig.len(), 256),
        Ok(NhnRequest::Verify(_, None, sig)) => assert_ne!(sig.len(), 260),
        Ok(NhnRequest::Plaintext(_)) | Ok(NhnRequest::UpdateSecret(_)) => {}
    }
});
