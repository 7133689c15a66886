//! Attestation reports (issue 12, section 1): what the token says about
//! every key version, beside the store's view, signed with the attestation
//! key; `hsm-kms attest verify` checks it offline.
//!
//! Each test starts the service in-process on a fresh SoftHSM token, makes
//! keys through the APIs, and runs the real binary for `attest`, `attest
//! public-key` and `attest verify` (the binary opens the same token, as an
//! operator's command would beside a running server). Objects made or
//! destroyed "behind the service's back" are made with `pkcs11-tool`.
// The engine's store and HSM ports are public to tests only with the
// `test-hooks` feature (scripts/test.sh builds with --all-features).
#![cfg(feature = "test-hooks")]

mod common;
#[path = "common/nhn.rs"]
mod nhn;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::Kms;
use hsm_kms::core::attest::{self, Row, Scope, SignedReport};
use hsm_kms::store::InstallationRepo;
use nhn::{key_store, project};
use serde_json::json;

fn run_ok(mut c: Command) -> Output {
    let out = c.output().expect("run hsm-kms");
    assert!(
        out.status.success(),
        "{c:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `hsm-kms attest ARGS --out FILE`, parsed.
fn attest_file(kms: &Kms, args: &[&str], name: &str) -> (PathBuf, SignedReport) {
    let path = kms.dir.path().join(name);
    let mut c = kms.cli();
    c.arg("attest").args(args).arg("--out").arg(&path);
    run_ok(c);
    let report = serde_json::from_slice(&std::fs::read(&path).expect("report")).expect("JSON");
    (path, report)
}

/// `hsm-kms attest public-key` into a file.
fn public_key(kms: &Kms) -> PathBuf {
    let path = kms.dir.path().join("attest.pem");
    let mut c = kms.cli();
    c.args(["attest", "public-key", "--out"]).arg(&path);
    run_ok(c);
    let pem = std::fs::read_to_string(&path).unwrap();
    assert!(pem.starts_with("-----BEGIN PUBLIC KEY-----"), "{pem}");
    path
}

/// `hsm-kms attest verify REPORT --public-key PEM` with no token at all
/// (no module, no store): (exit code, stdout).
fn verify(report: &Path, pem: &Path) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hsm-kms"))
        .env_clear()
        .env("HSM_KMS_HSM_MODULE", "/nonexistent/module.so")
        .env("HSM_KMS_STORE_DATA_DIR", "/nonexistent/data")
        .args(["attest", "verify"])
        .arg(report)
        .arg("--public-key")
        .arg(pem)
        .output()
        .expect("run hsm-kms attest verify");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        stdout.lines().count(),
        1,
        "one line: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), stdout)
}

fn pkcs11_tool(args: &[&str]) {
    let out = common::pkcs11_tool()
        .args(args)
        .output()
        .expect("pkcs11-tool (opensc) must be installed; scripts/test.sh installs it");
    assert!(
        out.status.success(),
        "pkcs11-tool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn version_rows<'a>(r: &'a SignedReport, key: &str) -> Vec<&'a Row> {
    r.report
        .rows
        .iter()
        .filter(|row| row.store.as_ref().is_some_and(|s| s.key == key))
        .collect()
}

fn codes(row: &Row) -> Vec<&str> {
    row.flags.iter().map(|f| f.code.as_str()).collect()
}

/// NAVER keys of every type (one rotated, one convergent) and NHN keys in a
/// key store with and without the export policy. Returns the NAVER tags
/// and the NHN key ids (exportable symmetric key first).
async fn make_keys(kms: &Kms) -> (Vec<String>, Vec<String>) {
    let mut tags = Vec::new();
    for (name, kt, extra) in [
        ("aes-key", "AES256", json!({})),
        ("conv", "AES256", json!({"isConvergent": true})),
        ("rsa-key", "RSA2048", json!({})),
        ("ecdsa", "ECDSA", json!({})),
    ] {
        tags.push(kms.create_key(name, kt, extra).await);
    }
    kms.op(&tags[0], "rotate", json!(null)).await.ok();
    let p = project(kms, "shop", false).await;
    key_store(kms, &p, "exp", false, false, false, true).await;
    key_store(kms, &p, "plain", false, false, false, false).await;
    let mut ids = Vec::new();
    for (store, kind, secret) in [
        ("exp", hsm_kms::core::nhn::NhnKeyType::Symmetric, None),
        ("plain", hsm_kms::core::nhn::NhnKeyType::Symmetric, None),
        ("plain", hsm_kms::core::nhn::NhnKeyType::Asymmetric, None),
        (
            "plain",
            hsm_kms::core::nhn::NhnKeyType::Secret,
            Some("s3cret"),
        ),
    ] {
        let v = kms
            .engine
            .nhn_create_key(&p.project, store, kind, "k", "", secret, 0, "test")
            .await
            .expect("NHN key");
        ids.push(v.entry.key.uid.to_string());
    }
    (tags, ids)
}

#[tokio::test]
async fn a_clean_installation_has_no_flag_and_its_report_verifies() {
    let kms = Kms::start().await;
    let (tags, nhn) = make_keys(&kms).await;
    let (path, r) = attest_file(&kms, &["--all"], "all.json");
    let s = &r.report.summary;
    // NAVER: 4 keys + 1 rotation; NHN: 4 keys.
    assert_eq!(s.versions, 9, "{s:?}");
    assert_eq!(s.flags, 0, "{:#?}", r.report.rows);
    assert_eq!(s.flagged_rows, 0);
    assert!(r.report.installation.agree);
    assert_eq!(r.report.scope, "all");
    assert_eq!(r.report.module.cryptoki_version.split('.').count(), 2);
    assert!(!r.report.token.serial.is_empty());
    assert!(r
        .report
        .token
        .flags
        .iter()
        .any(|f| f == "TOKEN_INITIALIZED"));
    // Four service keys (KEK, audit HMAC, attestation, token signing) and
    // the rows above, nothing unknown.
    assert_eq!(s.rows, 13, "{:#?}", r.report.rows);
    assert!(r.report.rows.iter().all(|row| row.store.is_some()));

    let export_key = &nhn[0];
    for row in &r.report.rows {
        let view = row.store.as_ref().unwrap();
        assert!(!row.objects.is_empty(), "{view:?} has no object");
        assert_eq!(row.objects.len(), row.expected.len(), "{view:?}");
        for o in &row.objects {
            assert!(!o.modifiable, "{}", o.label);
            match o.class.as_str() {
                "data" => assert!(o.private, "{}", o.label),
                "public-key" => assert!(o.local, "{}", o.label),
                _ if view.key == *export_key => {
                    assert!(view.export_policy);
                    assert!(o.local && o.extractable && !o.sensitive, "{}", o.label);
                }
                _ => {
                    assert!(o.local, "{}: CKA_LOCAL", o.label);
                    assert!(o.never_extractable, "{}: CKA_NEVER_EXTRACTABLE", o.label);
                    assert!(o.always_sensitive, "{}: CKA_ALWAYS_SENSITIVE", o.label);
                    assert!(o.sensitive && !o.extractable && o.private, "{}", o.label);
                }
            }
        }
    }
    // Key types and sizes as the token reports them.
    let of = |key: &str| version_rows(&r, key)[0].objects.clone();
    assert_eq!(
        (of(&tags[0])[0].key_type.as_deref(), of(&tags[0])[0].bits),
        (Some("AES"), Some(256))
    );
    assert_eq!(version_rows(&r, &tags[0]).len(), 2, "rotated: two versions");
    let conv = of(&tags[1]);
    assert_eq!(conv.len(), 2, "convergent: AES and HMAC keys");
    assert_eq!(conv[1].key_type.as_deref(), Some("GENERIC_SECRET"));
    assert!(of(&tags[2]).iter().all(|o| o.bits == Some(2048)));
    assert!(of(&tags[3])
        .iter()
        .all(|o| o.curve.as_deref() == Some("P-256")));
    let nhn_view = version_rows(&r, &nhn[1])[0].store.clone().unwrap();
    assert_eq!(
        (nhn_view.dialect.as_str(), nhn_view.owner.as_str()),
        ("nhn", "shop/plain")
    );
    let naver_view = version_rows(&r, &tags[0])[0].store.clone().unwrap();
    assert_eq!(
        (naver_view.dialect.as_str(), naver_view.owner.as_str()),
        ("naver", "default")
    );
    let att = version_rows(&r, "attestation");
    assert_eq!(att[0].objects.len(), 2);
    assert!(att[0].objects.iter().all(|o| o.local));

    // Offline verification.
    let pem = public_key(&kms);
    let (code, line) = verify(&path, &pem);
    assert_eq!(code, 0, "{line}");
    assert!(
        line.starts_with("OK ") && line.contains("9 key versions") && line.contains("0 flags"),
        "{line}"
    );

    // One byte of the report changed (a count: still valid JSON).
    let bytes = std::fs::read(&path).unwrap();
    let at = find(&bytes, b"\"versions\":9").expect("summary in the file") + 11;
    let mut changed = bytes.clone();
    changed[at] = b'8';
    let changed_path = kms.dir.path().join("changed.json");
    std::fs::write(&changed_path, &changed).unwrap();
    let (code, line) = verify(&changed_path, &pem);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.starts_with("REFUSED ") && line.contains("signature does not match"),
        "{line}"
    );

    // Another key.
    use p256::pkcs8::EncodePublicKey as _;
    let other = p256::SecretKey::random(&mut rand::rngs::OsRng)
        .public_key()
        .to_public_key_pem(p256::pkcs8::LineEnding::LF)
        .unwrap();
    let other_path = kms.dir.path().join("other.pem");
    std::fs::write(&other_path, other).unwrap();
    let (code, line) = verify(&path, &other_path);
    assert_eq!(code, 1, "{line}");
    assert!(line.contains("signed by another key"), "{line}");

    // The same report with a flag added and signed again with the real
    // key: the signature holds, the report contradicts itself.
    let mut forged = r.clone();
    forged.report.rows[0].flags.push(attest::Flag {
        code: "missing".into(),
        object: None,
    });
    let key_id = hex::decode(&forged.report.attestation_key.id).unwrap();
    let body = serde_json::to_value(&forged.report).unwrap();
    let sig = kms
        .engine
        .hsm()
        .sign(
            key_id,
            hsm_kms::hsm::SignAlg::EcdsaP256Sha256,
            attest::canonical_json(&body),
        )
        .await
        .unwrap();
    forged.signature.value = common::b64(&sig);
    let forged_path = kms.dir.path().join("forged.json");
    std::fs::write(&forged_path, attest::to_file_bytes(&forged).unwrap()).unwrap();
    let (code, line) = verify(&forged_path, &pem);
    assert_eq!(code, 1, "{line}");
    assert!(
        line.contains("inconsistent") && line.contains("row 0"),
        "{line}"
    );
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[tokio::test]
async fn objects_made_or_destroyed_behind_the_service_are_flagged() {
    let kms = Kms::start().await;
    let (tags, nhn) = make_keys(&kms).await;

    // An extractable, non-sensitive AES key imported (not generated) into
    // the token, labelled like a version of the first NAVER key.
    let key_file = kms.dir.path().join("aes.bin");
    std::fs::write(&key_file, [7u8; 32]).unwrap();
    let rogue_label = format!("hsm-kms/{}/v3", tags[0]);
    pkcs11_tool(&[
        "--write-object",
        key_file.to_str().unwrap(),
        "--type",
        "secrkey",
        "--key-type",
        "AES:32",
        "--label",
        &rogue_label,
        "--id",
        "0badc0de0badc0de0badc0de0badc0de",
        "--extractable",
        "--private",
    ]);
    // The ECDSA key's objects deleted outside hsm-kms.
    let ec = kms
        .engine
        .key_entry(&hsm_kms::core::KeyUid::from(&tags[3]))
        .await
        .unwrap();
    let ec_id = hex::encode(&ec.versions[0].cka_id);
    for kind in ["privkey", "pubkey"] {
        pkcs11_tool(&["--delete-object", "--type", kind, "--id", &ec_id]);
    }

    let (path, r) = attest_file(&kms, &[], "flagged.json");
    assert_eq!(r.report.scope, "all", "the default scope");
    let rogue: Vec<&Row> = r
        .report
        .rows
        .iter()
        .filter(|row| row.store.is_none())
        .collect();
    assert_eq!(rogue.len(), 1, "{:#?}", r.report.rows);
    let rogue_codes = codes(rogue[0]);
    for want in ["unknown", "extractable", "not-sensitive", "not-local"] {
        assert!(rogue_codes.contains(&want), "{want} in {rogue_codes:?}");
    }
    assert_eq!(rogue[0].objects[0].label, rogue_label);
    assert!(rogue[0].objects[0].extractable && !rogue[0].objects[0].local);

    let ec_row = version_rows(&r, &tags[3]);
    assert_eq!(codes(ec_row[0]), ["missing", "missing"]);
    assert!(ec_row[0].objects.is_empty());

    // The key of the export-policy key store is extractable and not flagged.
    let exp = version_rows(&r, &nhn[0]);
    assert!(exp[0].objects[0].extractable);
    assert!(exp[0].flags.is_empty(), "{:?}", exp[0].flags);
    // Nothing else is flagged.
    let flagged: usize = r.report.rows.iter().filter(|r| !r.flags.is_empty()).count();
    assert_eq!(flagged, 2, "{:#?}", r.report.rows);
    assert_eq!(
        r.report.summary.flags as usize,
        rogue[0].flags.len() + ec_row[0].flags.len()
    );
    assert_eq!(r.report.summary.by_code.get("missing"), Some(&2));

    // A flagged report is still authentic.
    let pem = public_key(&kms);
    let (code, line) = verify(&path, &pem);
    assert_eq!(code, 0, "{line}");

    // One key: its versions and the unknown object labelled as its own.
    let (_, one) = attest_file(&kms, &["--key", &tags[0]], "one.json");
    assert_eq!(one.report.scope, format!("naver-key:{}", tags[0]));
    assert_eq!(one.report.summary.versions, 2);
    assert_eq!(one.report.rows.len(), 3);
    assert!(one.report.rows[2].store.is_none());
    // An NHN key through --nhn-key; a NAVER tag there is not found.
    let (_, n) = attest_file(&kms, &["--nhn-key", &nhn[0]], "nhn.json");
    assert_eq!((n.report.summary.versions, n.report.summary.flags), (1, 0));
    let out = kms
        .cli()
        .args(["attest", "--nhn-key", &tags[0]])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no NHN key"), "{err}");

    // The same through the engine, in-process.
    let (rows, _) = attest::rows(kms.engine.hsm(), kms.engine.store(), &Scope::All)
        .await
        .unwrap();
    assert_eq!(rows, r.report.rows);
}

#[tokio::test]
async fn the_html_page_is_self_contained_and_leads_with_the_summary() {
    let kms = Kms::start().await;
    make_keys(&kms).await;
    let path = kms.dir.path().join("report.html");
    let mut c = kms.cli();
    c.args(["attest", "--format", "html", "--out"]).arg(&path);
    run_ok(c);
    let html = std::fs::read_to_string(&path).unwrap();
    assert!(html.starts_with("<!DOCTYPE html>"));
    for banned in ["<script", "src=", "href=", "@import", "url("] {
        assert!(!html.contains(banned), "{banned} in the page");
    }
    let summary = html.find("id=\"summary\"").expect("summary");
    let table = html.find("<th>CKA_ID</th>").expect("table");
    assert!(summary < table, "summary first");
    assert!(
        html.contains("9 key versions, 19 objects, 0 flags"),
        "{html}"
    );
    // The signed JSON is embedded (escaped) at the end.
    let pre = &html[html.rfind("<pre").unwrap()..];
    assert!(pre.contains("&quot;signature&quot;"));
}

#[tokio::test]
async fn init_adds_a_missing_attestation_key_to_an_existing_installation() {
    let kms = Kms::start().await;
    let key_id = kms
        .engine
        .store()
        .service_key("attestation")
        .await
        .unwrap()
        .unwrap();
    // An installation without the attestation key.
    for kind in ["privkey", "pubkey"] {
        pkcs11_tool(&[
            "--delete-object",
            "--type",
            kind,
            "--id",
            &hex::encode(&key_id),
        ]);
    }
    sqlx::query("DELETE FROM service_keys WHERE name = 'attestation'")
        .execute(&kms.db().await)
        .await
        .unwrap();
    let out = kms.cli().arg("attest").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no attestation key: run `hsm-kms init`"),
        "{err}"
    );

    let mut c = kms.cli();
    c.arg("init");
    let out = run_ok(c);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("created service keys: attestation"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (path, r) = attest_file(&kms, &[], "after.json");
    assert_eq!(r.report.summary.flags, 0, "{:#?}", r.report.rows);
    let (code, line) = verify(&path, &public_key(&kms));
    assert_eq!(code, 0, "{line}");
}
