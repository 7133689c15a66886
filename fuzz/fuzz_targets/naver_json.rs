//! The JSON bodies of the NAVER crypto endpoints (API 2.0 and 1.0 share
//! them): Encrypt, Decrypt, Re-encrypt, Create Custom Key, Sign, Verify and
//! Get Public Key, through the extractor's rule (`parse_json`) and the
//! handlers' decoding (`*Body::decode`).
//!
//! Input: a first byte choosing the endpoint, then the body.
//!
//! Holds: nothing panics; a refused body is a 400 / `100`; an accepted one
//! is within every limit (1 to 100 items, 32 KB of plaintext in total,
//! context at most 50 bytes, versions 1 to 100, non-empty blobs).
#![no_main]

use hsm_kms::fuzzing::{
    naver_request, NaverCall, NaverRequest, CONTEXT_MAX, ENCRYPT_MAX, MAX_VERSIONS,
};
use libfuzzer_sys::fuzz_target;

const CALLS: [NaverCall; 7] = [
    NaverCall::Encrypt,
    NaverCall::Decrypt,
    NaverCall::ReEncrypt,
    NaverCall::CreateCustomKey,
    NaverCall::Sign,
    NaverCall::Verify,
    NaverCall::GetPublicKey,
];
const MAX_ITEMS: usize = 100;

fn ctx_ok(c: &Option<Vec<u8>>) {
    assert!(c.as_ref().is_none_or(|c| c.len() <= CONTEXT_MAX));
}

fuzz_target!(|data: &[u8]| {
    let Some((sel, body)) = data.split_first() else {
        return;
    };
    let call = CALLS[usize::from(*sel) % CALLS.len()];
    match naver_request(call, body, MAX_ITEMS) {
        Err(e) => {
            assert_eq!(e.status.as_u16(), 400, "{e:?}");
            assert_eq!(e.code, "100");
        }
        Ok(NaverRequest::Encrypt(pts, ctx, many)) => {
            assert!((1..=MAX_ITEMS).contains(&pts.len()));
            assert!(many || pts.len() == 1);
            assert!(pts.iter().map(Vec::len).sum::<usize>() <= ENCRYPT_MAX);
            ctx_ok(&ctx);
        }
        Ok(NaverRequest::Decrypt(cts, ctx, many)) => {
            assert!((1..=MAX_ITEMS).contains(&cts.len()));
            assert!(many || cts.len() == 1);
            for c in &cts {
                assert!((1..=MAX_VERSIONS).contains(&c.version));
                assert!(!c.blob.is_empty());
            }
            ctx_ok(&ctx);
        }
        Ok(NaverRequest::CreateCustomKey(_, ctx, _)) => ctx_ok(&ctx),
        Ok(NaverRequest::Sign(_)) | Ok(NaverRequest::GetPublicKey(_)) => {}
        Ok(NaverRequest::Verify(_, sig)) => {
            assert!((1..=MAX_VERSIONS).contains(&sig.version));
            assert!(!sig.blob.is_empty());
        }
    }
});
