//! NAVER API 2.0 tokens as JWTs (issue 13, section 1).
//!
//! NAVER's guide, "Set up key authentication" (key request token overview):
//! the tokens used for KMS API 2.0 requests "consist of a [custom] JWT (JSON
//! Web Token) format"; its v3 pages describe `x-ncp-ocapi-token` as "JWT(JSON
//! Web Token) 타입 토큰" (a JWT-type token). hsm-kms signs them ES256 with a
//! P-256 key generated in the token by `init`; the claims are the key tag,
//! the token set id, the kind, `iat` and `exp` (and `jti`, the token's
//! public id). The store still keeps only each token's SHA-256 and decides
//! whether a token is valid: a good signature alone is never enough.
// The engine's store and HSM ports are public to tests only with the
// `test-hooks` feature (scripts/test.sh builds with --all-features).
#![cfg(feature = "test-hooks")]

mod common;

use base64::Engine as _;
use common::{b64, Kms, Reply};
use hsm_kms::store::InstallationRepo as _;
use p256::ecdsa::signature::Verifier as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn unb64url(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s)
        .expect("base64url")
}

fn b64url(data: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(data)
}

async fn with_token(kms: &Kms, method: &str, path: &str, token: &str, body: Value) -> Reply {
    kms.raw(
        method,
        path,
        &[("x-ncp-ocapi-token".to_string(), token.to_string())],
        Some(body.to_string().into_bytes()),
    )
    .await
}

async fn encrypt_with(kms: &Kms, tag: &str, token: &str) -> Reply {
    with_token(
        kms,
        "POST",
        &format!("/kms/v1/keys/{tag}/encrypt"),
        token,
        json!({"plaintext": b64(b"jwt")}),
    )
    .await
}

/// (refresh, access) of a new set of `tag`, its generator made first.
async fn token_set(kms: &Kms, tag: &str, body: Value) -> (String, String) {
    kms.call("POST", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await;
    let r = kms
        .call("POST", &format!("/kms/v1/keys/{tag}/token-set"), Some(body))
        .await;
    let d = r.ok();
    (
        d["refreshToken"].as_str().unwrap().to_string(),
        d["accessToken"].as_str().unwrap().to_string(),
    )
}

/// The three parts of a JWT, the first two decoded.
fn parts(token: &str) -> (Value, Value, Vec<u8>) {
    let p: Vec<&str> = token.split('.').collect();
    assert_eq!(p.len(), 3, "a JWT has three parts: {token}");
    (
        serde_json::from_slice(&unb64url(p[0])).unwrap(),
        serde_json::from_slice(&unb64url(p[1])).unwrap(),
        unb64url(p[2]),
    )
}

/// The installation's token-verifying key, as a client or auditor gets it.
async fn verifying_key(kms: &Kms) -> p256::ecdsa::VerifyingKey {
    use p256::pkcs8::DecodePublicKey as _;
    let der = kms.engine.token_public_key_der().await.unwrap();
    p256::ecdsa::VerifyingKey::from_public_key_der(&der).unwrap()
}

fn sha(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The tokens of a set verify with an independent ES256 implementation (the
/// RustCrypto `p256` crate; the signature was made by the PKCS#11 token),
/// carry the claims clients decode, and work; a token whose claims were
/// changed, or that another key signed, is refused.
#[tokio::test]
async fn tokens_are_es256_jwts_a_client_can_verify_and_decode() {
    let kms = Kms::start().await;
    let tag = kms.create_key("jwt-key", "AES256", json!({})).await;
    let before = common::now_ms() / 1000;
    let (refresh, access) = token_set(
        &kms,
        &tag,
        json!({"accessTokenHours": 2, "refreshTokenHours": "UL"}),
    )
    .await;
    let after = common::now_ms() / 1000 + 1;
    let key = verifying_key(&kms).await;
    let mut set_ids = Vec::new();
    for (token, kind) in [(&access, "access"), (&refresh, "refresh")] {
        let (header, claims, sig) = parts(token);
        assert_eq!(header["alg"], "ES256", "{header}");
        assert_eq!(header["typ"], "JWT", "{header}");
        assert!(header["kid"].is_string(), "{header}");
        // RFC 7518 section 3.4: ES256 is the 64-byte R || S.
        assert_eq!(sig.len(), 64);
        let signed = token.rsplit_once('.').unwrap().0;
        key.verify(
            signed.as_bytes(),
            &p256::ecdsa::Signature::from_slice(&sig).unwrap(),
        )
        .expect("the signature verifies with the installation's public key");
        assert_eq!(claims["keyTag"], tag.as_str(), "{claims}");
        assert_eq!(claims["kind"], kind, "{claims}");
        let iat = claims["iat"].as_i64().unwrap();
        assert!((before..=after).contains(&iat), "{claims}");
        assert!(claims["jti"].is_string(), "{claims}");
        set_ids.push(claims["tokenSetId"].as_str().unwrap().to_string());
        match kind {
            // Two hours, in whole seconds (rounded up).
            "access" => {
                let exp = claims["exp"].as_i64().unwrap();
                assert!((iat + 7200..=iat + 7201).contains(&exp), "{claims}");
            }
            // "UL": no expiry.
            _ => assert!(claims.get("exp").is_none(), "{claims}"),
        }
    }
    assert_eq!(set_ids[0], set_ids[1], "one set");

    encrypt_with(&kms, &tag, &access).await.ok();

    // The claims changed under the same signature: refused, and the store is
    // not what refused it.
    let (header_b64, rest) = access.split_once('.').unwrap();
    let (_, sig_b64) = rest.split_once('.').unwrap();
    let (_, mut claims, _) = parts(&access);
    claims["exp"] = json!(4_102_444_800i64);
    let forged = format!(
        "{header_b64}.{}.{sig_b64}",
        b64url(claims.to_string().as_bytes())
    );
    let r = encrypt_with(&kms, &tag, &forged).await;
    r.assert_naver_error(401, "200");
    assert!(
        r.body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("signature"),
        "{}",
        r.body
    );
    // The same claims signed by another P-256 key.
    let other = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let (_, claims, _) = parts(&access);
    let input = format!("{header_b64}.{}", b64url(claims.to_string().as_bytes()));
    let sig: p256::ecdsa::Signature =
        p256::ecdsa::signature::Signer::sign(&other, input.as_bytes());
    let r = encrypt_with(&kms, &tag, &format!("{input}.{}", b64url(&sig.to_bytes()))).await;
    r.assert_naver_error(401, "200");

    // A refresh token makes new access tokens of the same set, also JWTs.
    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{tag}/access-token"),
        &refresh,
        json!({}),
    )
    .await;
    let access2 = r.ok()["accessToken"].as_str().unwrap().to_string();
    let (_, claims, _) = parts(&access2);
    assert_eq!(claims["tokenSetId"], set_ids[0].as_str());
    assert_ne!(access2, access);
    encrypt_with(&kms, &tag, &access2).await.ok();

    // Still only hashes in the store.
    let db = kms.db().await;
    let hashes: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT token_hash FROM tokens")
        .fetch_all(&db)
        .await
        .unwrap();
    db.close().await;
    for t in [&access, &refresh, &access2] {
        let h = sha(t);
        assert!(hashes.iter().any(|(x,)| *x == h));
    }
}

/// "Still revocable; verification checks the store": tokens whose signature
/// is good are refused when the store says so. A token revoked in the store
/// (before this server ever saw it, so no cache answers), a token of a
/// replaced generator, and a token signed with the installation's own key
/// that the store never issued.
#[tokio::test]
async fn a_valid_signature_alone_is_not_enough() {
    let kms = Kms::start().await;
    let tag = kms.create_key("revoked", "AES256", json!({})).await;
    let (refresh, access) = token_set(&kms, &tag, json!({})).await;
    let key = verifying_key(&kms).await;

    // Revoked in the store.
    let db = kms.db().await;
    sqlx::query("UPDATE tokens SET revoked_at = $1 WHERE token_hash = $2")
        .bind(common::now_ms())
        .bind(sha(&access))
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    let (_, _, sig) = parts(&access);
    key.verify(
        access.rsplit_once('.').unwrap().0.as_bytes(),
        &p256::ecdsa::Signature::from_slice(&sig).unwrap(),
    )
    .expect("its signature is still good");
    let r = encrypt_with(&kms, &tag, &access).await;
    r.assert_naver_error(401, "200");
    assert!(
        r.body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("revoked"),
        "{}",
        r.body
    );

    // Signed by this installation's key, but never issued (no row).
    let id = kms
        .engine
        .store()
        .service_key("token-signing")
        .await
        .unwrap()
        .expect("init made the token-signing key");
    let (_, mut claims, _) = parts(&refresh);
    claims["jti"] = json!("00000000deadbeef");
    let header_b64 = refresh.split('.').next().unwrap();
    let input = format!("{header_b64}.{}", b64url(claims.to_string().as_bytes()));
    let der = kms
        .engine
        .hsm()
        .sign(
            id,
            hsm_kms::hsm::SignAlg::EcdsaP256Sha256,
            input.as_bytes().to_vec(),
        )
        .await
        .unwrap();
    let sig = p256::ecdsa::Signature::from_der(&der).unwrap();
    let unissued = format!("{input}.{}", b64url(&sig.to_bytes()));
    key.verify(input.as_bytes(), &sig).unwrap();
    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{tag}/access-token"),
        &unissued,
        json!({}),
    )
    .await;
    r.assert_naver_error(401, "200");
    assert!(
        r.body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("unknown token"),
        "{}",
        r.body
    );

    // The refresh token works until its generator is replaced.
    with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{tag}/access-token"),
        &refresh,
        json!({}),
    )
    .await
    .ok();
    kms.call("PUT", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await
        .ok();
    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{tag}/access-token"),
        &refresh,
        json!({}),
    )
    .await;
    r.assert_naver_error(401, "200");
}

/// Tokens issued before tokens became JWTs (`ncpkms_` and 256 random bits,
/// stored as their SHA-256 like every token) keep working until they
/// expire: rows as an older release wrote them.
#[tokio::test]
async fn tokens_made_before_jwts_keep_working_until_they_expire() {
    let kms = Kms::start().await;
    let tag = kms.create_key("legacy", "AES256", json!({})).await;
    // A generator and one (JWT) set, as the older release had made one.
    let (_refresh, _access) = token_set(&kms, &tag, json!({})).await;
    let db = kms.db().await;
    let (key_id, account_id): (i64, i64) =
        sqlx::query_as("SELECT id, account_id FROM keys WHERE uid = $1")
            .bind(&tag)
            .fetch_one(&db)
            .await
            .unwrap();
    let (generator_id,): (String,) =
        sqlx::query_as("SELECT generator_id FROM token_generators WHERE key_id = $1")
            .bind(key_id)
            .fetch_one(&db)
            .await
            .unwrap();
    let now = common::now_ms();
    let legacy = |n: u8| format!("ncpkms_{}", b64url(&[n; 32]));
    let rows = [
        (
            legacy(1),
            "access",
            "00000000000000a1",
            Some(now + 3_600_000),
        ),
        (legacy(2), "access", "00000000000000a2", Some(now - 1_000)),
        (legacy(3), "refresh", "00000000000000a3", None),
    ];
    for (token, kind, id, expires) in &rows {
        sqlx::query(
            "INSERT INTO tokens (token_hash, token_id, key_id, generator_id, account_id, kind, \
             set_id, expires_at, revoked_at, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, NULL, $9)",
        )
        .bind(Sha256::digest(token.as_bytes()).to_vec())
        .bind(*id)
        .bind(key_id)
        .bind(generator_id.clone())
        .bind(account_id)
        .bind(*kind)
        .bind("legacy-set")
        .bind(*expires)
        .bind(now - 60_000)
        .execute(&db)
        .await
        .unwrap();
    }
    db.close().await;

    let (live, expired, refresh) = (&rows[0].0, &rows[1].0, &rows[2].0);
    encrypt_with(&kms, &tag, live).await.ok();
    let r = encrypt_with(&kms, &tag, expired).await;
    r.assert_naver_error(401, "200");
    assert!(
        r.body["error"]["details"]
            .as_str()
            .unwrap()
            .contains("expired"),
        "{}",
        r.body
    );
    // The old refresh token still makes access tokens, now JWTs of its set.
    let r = with_token(
        &kms,
        "POST",
        &format!("/kms/v1/keys/{tag}/access-token"),
        refresh,
        json!({}),
    )
    .await;
    let access = r.ok()["accessToken"].as_str().unwrap().to_string();
    let (_, claims, _) = parts(&access);
    assert_eq!(claims["tokenSetId"], "legacy-set");
    encrypt_with(&kms, &tag, &access).await.ok();
}

/// `init` is the upgrade step: an installation whose store names no
/// token-signing key (made by an older `init`) issues no token set (503,
/// saying what to run), tokens it issued keep working, and once `hsm-kms
/// init` has added the key a running engine issues JWTs without a restart.
#[tokio::test]
async fn init_adds_the_token_key_to_an_older_installation() {
    let kms = Kms::start().await;
    let tag = kms.create_key("upgrade", "AES256", json!({})).await;
    let (_, access) = token_set(&kms, &tag, json!({})).await;
    let db = kms.db().await;
    sqlx::query("DELETE FROM service_keys WHERE name = 'token-signing'")
        .execute(&db)
        .await
        .unwrap();
    db.close().await;
    // A node started on that store (the running one read the key at start).
    let node = hsm_kms::core::Engine::with_options(
        kms.engine.hsm().clone(),
        kms.engine.store().clone(),
        hsm_kms::core::EngineOptions {
            activity_log: false,
            ..Default::default()
        },
    )
    .await
    .expect("an engine starts without the key");
    let account = kms.engine.account_id("default").await.unwrap().unwrap();
    let life = hsm_kms::core::Lifetime::Hours(1);
    let e = node
        .create_token_set(account, &hsm_kms::core::KeyUid::from(&tag), life, life)
        .await
        .err()
        .expect("no token set without the key");
    assert!(
        matches!(e, hsm_kms::core::Error::Unavailable(ref m) if m.contains("hsm-kms init")),
        "{e:?}"
    );
    encrypt_with(&kms, &tag, &access).await.ok();

    let out = kms.cli().arg("init").output().expect("hsm-kms init");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("token-signing"), "{err}");

    let set = node
        .create_token_set(account, &hsm_kms::core::KeyUid::from(&tag), life, life)
        .await
        .expect("the node picks up the new key");
    let (_, claims, _) = parts(&set.access_token);
    assert_eq!(claims["keyTag"], tag.as_str());
}
