//! The ECDSA P-256 raw/DER conversion: `ecdsa_raw_to_der` (the token's
//! `r || s` from `CKM_ECDSA` to the DER answered by Sign) and
//! `ecdsa_der_to_raw` (a client's DER for Verify to the `r || s` the token
//! checks).
//!
//! Holds: nothing panics; what parses as DER is 64 raw bytes and encodes
//! back to exactly the DER sent (one encoding per signature: no
//! malleability through the encoding); 64 raw bytes that convert give DER
//! that converts back to them.
#![no_main]

use hsm_kms::fuzzing::{ecdsa_der_to_raw, ecdsa_raw_to_der};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(raw) = ecdsa_der_to_raw(data) {
        assert_eq!(raw.len(), 64);
        assert_eq!(
            ecdsa_raw_to_der(&raw).as_deref(),
            Some(data),
            "non-canonical DER accepted"
        );
    }
    match ecdsa_raw_to_der(data) {
        Some(der) => {
            assert_eq!(data.len(), 64);
            assert!(der.len() <= 72);
            assert_eq!(ecdsa_der_to_raw(&der).as_deref(), Some(data));
        }
        // Refused only for a wrong length or r / s of 0 or >= n.
        None => assert!(
            data.len() != 64
                || data[..32].iter().all(|b| *b == 0)
                || data[32..].iter().all(|b| *b == 0)
                || data[..32] >= [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0][..]
                || data[32..] >= [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0][..]
        ),
    }
});
