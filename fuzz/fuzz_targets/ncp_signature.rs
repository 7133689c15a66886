//! NCP API Gateway signature headers and timestamp: the header reading
//! (`SignedRequest::from_headers`), the timestamp window
//! (`check_timestamp`) and the signature check (`verify`) that NAVER
//! account authentication runs, plus the key tag read from the path.
//!
//! Input: a first byte (bit 0: v1 or v2; bits 1-2: the window), then
//! newline-separated fields: timestamp, access key, signature, API key,
//! method, path-and-query, secret, server clock (ms).
//!
//! Holds: nothing panics; a header that is absent, empty or not text is
//! reported by name; the timestamp is accepted exactly when it is an i64
//! within the window of the clock (computed here in i128); a signature
//! verifies exactly when it equals `sign` over the same fields, and the
//! signature `sign` makes always verifies.
#![no_main]

use hsm_kms::fuzzing::{naver_key_tag, ncp_sign, SignatureError, SignatureVersion, SignedRequest};
use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;

const TIMESTAMP: &str = "x-ncp-apigw-timestamp";
const ACCESS_KEY: &str = "x-ncp-iam-access-key";
const SIGNATURE_V2: &str = "x-ncp-apigw-signature-v2";
const SIGNATURE_V1: &str = "x-ncp-apigw-signature-v1";
const API_KEY: &str = "x-ncp-apigw-api-key";

fuzz_target!(|data: &[u8]| {
    let Some((flags, rest)) = data.split_first() else {
        return;
    };
    let version = if flags & 1 == 0 {
        SignatureVersion::V2
    } else {
        SignatureVersion::V1
    };
    let window = [1i64, 5, 300, 3600][usize::from((flags >> 1) & 3)];
    let mut f = rest.split(|b| *b == b'\n');
    let mut next = || f.next().unwrap_or_default();
    let (ts, ak, sig, api, method, path, secret, now) = (
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
        next(),
    );
    let now: i64 = std::str::from_utf8(now)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_700_000_000_000);

    let mut h = HeaderMap::new();
    let sig_name = match version {
        SignatureVersion::V2 => SIGNATURE_V2,
        SignatureVersion::V1 => SIGNATURE_V1,
    };
    // A value hyper would not accept never reaches the extractor.
    for (name, v) in [
        (TIMESTAMP, ts),
        (ACCESS_KEY, ak),
        (sig_name, sig),
        (API_KEY, api),
    ] {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            h.insert(name, v);
        }
    }
    let text = |name: &str| {
        h.get(name)
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty())
    };
    let needed: &[&str] = match version {
        SignatureVersion::V2 => &[TIMESTAMP, ACCESS_KEY, SIGNATURE_V2],
        SignatureVersion::V1 => &[TIMESTAMP, ACCESS_KEY, SIGNATURE_V1, API_KEY],
    };
    let signed = match SignedRequest::from_headers(&h, version) {
        Ok(s) => s,
        Err(SignatureError::MissingHeader(name)) => {
            assert!(text(name).is_none(), "{name} was present");
            return;
        }
        Err(e) => panic!("unexpected {e:?}"),
    };
    assert!(needed.iter().all(|n| text(n).is_some()));
    assert_eq!(Some(signed.timestamp), text(TIMESTAMP));
    assert_eq!(Some(signed.access_key), text(ACCESS_KEY));
    assert_eq!(Some(signed.signature), text(sig_name));

    // The timestamp window, against an exact oracle.
    match (
        signed.timestamp.parse::<i64>(),
        signed.check_timestamp(now, window),
    ) {
        (Err(_), r) => assert_eq!(r, Err(SignatureError::BadTimestamp)),
        (Ok(t), r) => {
            let within = (i128::from(now) - i128::from(t)).abs() <= i128::from(window) * 1000;
            assert_eq!(r.is_ok(), within, "ts {t} now {now} window {window}: {r:?}");
            if !within {
                assert_eq!(r, Err(SignatureError::Expired(window)));
            }
        }
    }

    // The signature check.
    let method = String::from_utf8_lossy(method);
    let path = String::from_utf8_lossy(path);
    let expected = ncp_sign(
        version,
        secret,
        &method,
        &path,
        signed.timestamp,
        signed.access_key,
        signed.api_key,
    );
    let verdict = signed.verify(&method, &path, secret);
    assert_eq!(verdict.is_ok(), expected == signed.signature);
    if verdict.is_err() {
        assert_eq!(verdict, Err(SignatureError::Mismatch));
    }
    let genuine = SignedRequest {
        signature: &expected,
        ..signed.clone()
    };
    assert_eq!(genuine.verify(&method, &path, secret), Ok(()));

    // The key tag of the path (quota, activity log, token auth).
    if let Some(tag) = naver_key_tag(&path) {
        assert!(!tag.is_empty() && !tag.contains('/') && !path.contains('%'));
    }
});
