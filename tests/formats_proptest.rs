//! Property tests of the wire formats (issue 9, section 3): round trips of
//! the NAVER `ncpkms:v{n}:` ciphertext and signature text, the NHN sealed
//! framing, the ECDSA raw/DER conversion and the OAEP decoding done outside
//! the token, each through the functions the handlers call
//! (`hsm_kms::fuzzing`); and encrypt/decrypt of any plaintext up to 32 KB
//! through both dialects' HTTP APIs against a real SoftHSM token.

mod common;
#[path = "common/nhn.rs"]
mod nhn;

use hsm_kms::fuzzing::{
    ecdsa_der_to_raw, ecdsa_raw_to_der, format_sealed, nhn_b64, nhn_frame, nhn_parse_ciphertext,
    nhn_parse_signature, nhn_unframe, oaep_sha256_decode, parse_sealed, Sealed, ENCRYPT_MAX,
    MAX_VERSIONS, RSA_MODULUS_LEN,
};
use proptest::prelude::*;
use sha2::{Digest, Sha256};

proptest! {
    // Values of up to 32 KB are slow to generate in a debug build: fewer
    // cases for those.
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// `ncpkms:v{n}:{base64}`: any version and blob (up to a 32 KB
    /// ciphertext) format to text that parses back to them, and that text
    /// is the only spelling accepted for them.
    #[test]
    fn naver_sealed_round_trip(
        version in 1..=MAX_VERSIONS,
        blob in proptest::collection::vec(any::<u8>(), 1..=ENCRYPT_MAX + 28),
    ) {
        let s = Sealed { version, blob };
        let text = format_sealed(&s);
        prop_assert_eq!(parse_sealed("ciphertext", &text).unwrap(), s.clone());
        // Other spellings of the same value are refused.
        let b64 = &text[text.rfind(':').unwrap() + 1..];
        for other in [
            format!("ncpkms:v0{version}:{b64}"),
            format!("ncpkms:v+{version}:{b64}"),
            format!("ncpkms:v{version}:{b64}="),
            format!("ncpkms:v{version}: {b64}"),
        ] {
            prop_assert!(parse_sealed("ciphertext", &other).is_err(), "{} accepted", other);
        }
    }

    /// Parsing any text never panics; what parses formats back to it.
    #[test]
    fn naver_sealed_parse_is_canonical(tail in ".{0,40}", v in "[+0-9-]{0,4}") {
        for text in [tail.clone(), format!("ncpkms:v{v}:{tail}")] {
            if let Ok(s) = parse_sealed("ciphertext", &text) {
                prop_assert_eq!(format_sealed(&s), text);
            }
        }
    }

    /// NHN ciphertexts: base64 of a 4-byte big-endian version, then
    /// `iv || ciphertext || tag`; any version and payload (up to 32 KB of
    /// ciphertext) round-trip through the bytes and the base64 text.
    #[test]
    fn nhn_sealed_round_trip(
        version in 0..=i64::from(u32::MAX),
        payload in proptest::collection::vec(any::<u8>(), 28..=ENCRYPT_MAX + 28),
    ) {
        let s = Sealed { version, blob: payload };
        let bytes = nhn_frame(&s);
        prop_assert_eq!(nhn_unframe(&bytes, 28), Some(s.clone()));
        let text = nhn_b64(&bytes);
        prop_assert_eq!(nhn_parse_ciphertext(&text).unwrap(), s.clone());
        // Surrounding whitespace is tolerated, as before.
        prop_assert_eq!(nhn_parse_ciphertext(&format!(" {text}\n")).unwrap(), s);
    }

    /// NHN signatures: Sign's `version || signature` names its version; a
    /// bare signature of any other length is checked against the current one.
    #[test]
    fn nhn_signature_framing(
        version in 0..=i64::from(u32::MAX),
        sig in proptest::collection::vec(any::<u8>(), 256),
        bare in proptest::collection::vec(any::<u8>(), 0..600),
    ) {
        let framed = Sealed { version, blob: sig.clone() };
        let (hint, got) = nhn_parse_signature(&nhn_b64(&nhn_frame(&framed))).unwrap();
        prop_assert_eq!(hint, Some(version));
        prop_assert_eq!(got, sig);
        let parsed = nhn_parse_signature(&nhn_b64(&bare)).unwrap();
        if bare.len() == 260 {
            prop_assert!(parsed.0.is_some());
        } else {
            prop_assert_eq!(parsed, (None, bare));
        }
    }

    /// ECDSA P-256: real signatures go raw -> DER -> raw unchanged, and the
    /// DER given back is the only encoding accepted for them.
    #[test]
    fn ecdsa_raw_der_round_trip(
        msg in proptest::collection::vec(any::<u8>(), 0..256),
        key in proptest::array::uniform32(1u8..),
    ) {
        use p256::ecdsa::signature::Signer as _;
        let Ok(sk) = p256::ecdsa::SigningKey::from_slice(&key) else {
            return Ok(());
        };
        let sig: p256::ecdsa::Signature = sk.sign(&msg);
        let raw = sig.to_bytes().to_vec();
        let der = ecdsa_raw_to_der(&raw).unwrap();
        prop_assert_eq!(&der, &sig.to_der().as_bytes().to_vec());
        prop_assert_eq!(ecdsa_der_to_raw(&der), Some(raw.clone()));
        // A longer length form of the same sequence is refused.
        let mut long = vec![0x30, 0x81, der[1]];
        long.extend_from_slice(&der[2..]);
        prop_assert_eq!(ecdsa_der_to_raw(&long), None);
        // Trailing bytes are refused.
        let mut trailing = der.clone();
        trailing.push(0);
        prop_assert_eq!(ecdsa_der_to_raw(&trailing), None);
    }

    /// Any `r || s` of values in [1, 2^248) round-trips through DER.
    #[test]
    fn ecdsa_any_scalars_round_trip(
        r in proptest::collection::vec(any::<u8>(), 31),
        s in proptest::collection::vec(any::<u8>(), 31),
    ) {
        prop_assume!(r.iter().any(|b| *b != 0) && s.iter().any(|b| *b != 0));
        let mut raw = vec![0u8];
        raw.extend_from_slice(&r);
        raw.push(0);
        raw.extend_from_slice(&s);
        let der = ecdsa_raw_to_der(&raw).unwrap();
        prop_assert_eq!(ecdsa_der_to_raw(&der), Some(raw));
    }

    /// OAEP (SHA-256) as done outside the token: a message of any length the
    /// 2048-bit modulus allows, padded per RFC 8017 7.1.1 with any seed,
    /// decodes back to itself (also with its leading zero byte dropped, as
    /// raw RSA gives it), and any flipped bit is refused.
    #[test]
    fn oaep_pad_unpad_round_trip(
        msg in proptest::collection::vec(any::<u8>(), 0..=RSA_MODULUS_LEN - 66),
        seed in proptest::array::uniform32(any::<u8>()),
        flip in 0..RSA_MODULUS_LEN * 8,
    ) {
        let em = oaep_encode(&msg, &seed, RSA_MODULUS_LEN);
        prop_assert_eq!(oaep_sha256_decode(&em, RSA_MODULUS_LEN), Some(msg.clone()));
        prop_assert_eq!(oaep_sha256_decode(&em[1..], RSA_MODULUS_LEN), Some(msg));
        let mut bad = em;
        bad[flip / 8] ^= 1 << (flip % 8);
        prop_assert_eq!(oaep_sha256_decode(&bad, RSA_MODULUS_LEN), None);
    }

    /// Unpadding random input never panics and never yields more than fits.
    #[test]
    fn oaep_unpad_of_random_input(em in proptest::collection::vec(any::<u8>(), 0..300)) {
        if let Some(m) = oaep_sha256_decode(&em, RSA_MODULUS_LEN) {
            prop_assert!(m.len() <= RSA_MODULUS_LEN - 66);
        }
    }
}

/// RFC 8017 7.1.1 EME-OAEP encoding with SHA-256 and an empty label,
/// written from the RFC for this test.
fn oaep_encode(msg: &[u8], seed: &[u8; 32], k: usize) -> Vec<u8> {
    fn mgf1_xor(out: &mut [u8], seed: &[u8]) {
        for (i, chunk) in out.chunks_mut(32).enumerate() {
            let mask = Sha256::new()
                .chain_update(seed)
                .chain_update((i as u32).to_be_bytes())
                .finalize();
            for (o, m) in chunk.iter_mut().zip(mask) {
                *o ^= m;
            }
        }
    }
    let mut db = Sha256::digest([]).to_vec();
    db.resize(k - msg.len() - 34, 0);
    db.push(1);
    db.extend_from_slice(msg);
    let mut seed = seed.to_vec();
    mgf1_xor(&mut db, &seed);
    mgf1_xor(&mut seed, &db);
    let mut em = vec![0u8];
    em.extend_from_slice(&seed);
    em.extend_from_slice(&db);
    em
}

/// Encrypt then decrypt any plaintext up to 32 KB through both dialects'
/// HTTP APIs, against one service on a real SoftHSM token: NAVER API 2.0
/// (base64 plaintext, with and without a context) and NHN (text
/// plaintext). 32 cases, so the default suite stays fast.
#[test]
fn encrypt_decrypt_any_plaintext_up_to_32k_over_http() {
    use nhn::{call, create_key, key_store, ok, project};
    use serde_json::json;
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (kms, tag, p, nhn_key) = rt.block_on(async {
        let kms = nhn::start().await;
        let tag = kms.create_key("prop", "AES256", json!({})).await;
        let p = project(&kms, "prop", true).await;
        key_store(&kms, &p, "S", false, false, false, false).await;
        let id = create_key(&kms, &p, "symmetric-keys", "S", json!({})).await;
        (kms, tag, p, id)
    });
    let config = ProptestConfig {
        cases: 32,
        ..ProptestConfig::default()
    };
    proptest!(config, |(
        pt in proptest::collection::vec(any::<u8>(), 0..=ENCRYPT_MAX),
        text in proptest::collection::vec(any::<char>(), 0..=ENCRYPT_MAX),
        ctx in proptest::option::of(proptest::collection::vec(any::<u8>(), 1..=50)),
    )| {
        rt.block_on(async {
            // NAVER.
            let c = kms.encrypt(&tag, &pt, ctx.as_deref()).await;
            let s = parse_sealed("ciphertext", &c).unwrap();
            assert_eq!(format_sealed(&s), c);
            assert_eq!(s.blob.len(), 12 + pt.len() + 16);
            assert_eq!(kms.decrypt_ok(&tag, &c, ctx.as_deref()).await, pt);

            // NHN: the plaintext is text; fill up to 32 KB of UTF-8.
            let mut plain: String = text.iter().collect();
            while plain.len() > ENCRYPT_MAX {
                plain.pop();
            }
            let enc = format!("/symmetric-keys/{nhn_key}/encrypt");
            let dec = format!("/symmetric-keys/{nhn_key}/decrypt");
            let r = call(&kms, &p, "POST", &enc, Some(json!({"plaintext": plain}))).await;
            let ct = ok(&r)["ciphertext"].as_str().unwrap().to_string();
            let sealed = nhn_parse_ciphertext(&ct).unwrap();
            assert_eq!(sealed.version, 1);
            assert_eq!(sealed.blob.len(), 12 + plain.len() + 16);
            let r = call(&kms, &p, "POST", &dec, Some(json!({"ciphertext": ct}))).await;
            assert_eq!(ok(&r)["plaintext"], plain.as_str());
        });
    });
    // And the largest: exactly 32 KB through each.
    rt.block_on(async {
        let pt = vec![0xa5u8; ENCRYPT_MAX];
        let c = kms.encrypt(&tag, &pt, None).await;
        assert_eq!(kms.decrypt_ok(&tag, &c, None).await, pt);
        let plain = "k".repeat(ENCRYPT_MAX);
        let enc = format!("/symmetric-keys/{nhn_key}/encrypt");
        let r = call(&kms, &p, "POST", &enc, Some(json!({"plaintext": plain}))).await;
        let ct = ok(&r)["ciphertext"].as_str().unwrap().to_string();
        let dec = format!("/symmetric-keys/{nhn_key}/decrypt");
        let r = call(&kms, &p, "POST", &dec, Some(json!({"ciphertext": ct}))).await;
        assert_eq!(ok(&r)["plaintext"], plain.as_str());
    });
}
