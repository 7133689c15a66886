//! The EME-OAEP (SHA-256) decoding done outside tokens that lack
//! OAEP-SHA-256 (SoftHSMv2 2.6): `oaep_sha256_decode` on the token's raw
//! RSA result.
//!
//! Input: a first byte choosing the modulus length (mostly 256, the
//! service's only one; sometimes a small, odd or larger one), then the
//! encoded message.
//!
//! Holds: nothing panics on any input; a decoded message fits the modulus;
//! and, with the input as seed and message, an encoding made here from
//! RFC 8017 7.1.1 decodes back to the message.
#![no_main]

use hsm_kms::fuzzing::{oaep_sha256_decode, RSA_MODULUS_LEN};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};

const H: usize = 32;

fn mgf1_xor(out: &mut [u8], seed: &[u8]) {
    for (i, chunk) in out.chunks_mut(H).enumerate() {
        let mask = Sha256::new()
            .chain_update(seed)
            .chain_update((i as u32).to_be_bytes())
            .finalize();
        for (o, m) in chunk.iter_mut().zip(mask) {
            *o ^= m;
        }
    }
}

/// RFC 8017 7.1.1 step 2 with an empty label.
fn encode(msg: &[u8], seed: &[u8; H], k: usize) -> Vec<u8> {
    let mut db = Sha256::digest([]).to_vec();
    db.resize(k - msg.len() - H - 2, 0);
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

fuzz_target!(|data: &[u8]| {
    let Some((sel, rest)) = data.split_first() else {
        return;
    };
    let k = match *sel {
        0..=199 => RSA_MODULUS_LEN,
        200..=219 => usize::from(*sel - 200) * 4,
        220..=239 => 60 + usize::from(*sel - 220),
        240..=247 => 128,
        _ => 512,
    };
    if let Some(m) = oaep_sha256_decode(rest, k) {
        assert!(k >= 2 * H + 2 && m.len() <= k - 2 * H - 2);
    }
    // Round trip: a seed and a message from the input.
    if k >= 2 * H + 2 && rest.len() >= H {
        let (seed, msg) = rest.split_at(H);
        let msg = &msg[..msg.len().min(k - 2 * H - 2)];
        let seed: [u8; H] = seed.try_into().unwrap_or([0; H]);
        let em = encode(msg, &seed, k);
        assert_eq!(oaep_sha256_decode(&em, k).as_deref(), Some(msg));
        // Raw RSA may drop the leading zero byte; it is put back.
        assert_eq!(oaep_sha256_decode(&em[1..], k).as_deref(), Some(msg));
        // Any one flipped bit is refused.
        let bit = usize::from(seed[0]) * 8 + usize::from(seed[1] & 7);
        let mut bad = em.clone();
        let i = bit % (k * 8);
        bad[i / 8] ^= 1 << (i % 8);
        assert_eq!(oaep_sha256_decode(&bad, k), None, "flipped bit {i}");
    }
});
