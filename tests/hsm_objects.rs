//! The objects on the token: one object (or public/private pair) per key
//! version, labelled `hsm-kms/{keyTag}/v{n}`, generated in the token,
//! sensitive and never extractable; convergent keys add their HMAC object.
//! Checked through the PKCS#11 layer and with `pkcs11-tool` from OpenSC.
// The engine's store and HSM ports are public to tests only with the
// `test-hooks` feature (scripts/test.sh builds with --all-features).
#![cfg(feature = "test-hooks")]

mod common;

use std::collections::BTreeSet;

use common::Kms;
use hsm_kms::hsm::ObjectInfo;
use serde_json::json;

/// Keys of every type, each rotated once: (tag, type, convergent).
async fn make_keys(kms: &Kms) -> Vec<(String, &'static str, bool)> {
    let mut out = Vec::new();
    for (name, kt, conv) in [
        ("obj-aes", "AES256", false),
        ("obj-conv", "AES256", true),
        ("obj-rsa", "RSA2048", false),
        ("obj-ec", "ECDSA", false),
    ] {
        let tag = kms
            .create_key(name, kt, json!({"isConvergent": conv}))
            .await;
        let r = kms.op(&tag, "rotate", json!(null)).await;
        assert_eq!(r.ok()["version"], 2);
        out.push((tag, kt, conv));
    }
    out
}

fn assert_secret(o: &ObjectInfo, label: &str) {
    assert_eq!(o.label, label);
    assert!(o.token, "{label}: CKA_TOKEN");
    assert!(o.private, "{label}: CKA_PRIVATE");
    assert!(o.sensitive, "{label}: CKA_SENSITIVE");
    assert!(!o.extractable, "{label}: CKA_EXTRACTABLE");
    assert!(o.local, "{label}: CKA_LOCAL (generated in the token)");
    assert!(o.never_extractable, "{label}: CKA_NEVER_EXTRACTABLE");
    assert!(o.always_sensitive, "{label}: CKA_ALWAYS_SENSITIVE");
    assert!(!o.modifiable, "{label}: CKA_MODIFIABLE");
}

#[tokio::test]
async fn one_protected_object_per_version() {
    let kms = Kms::start().await;
    let keys = make_keys(&kms).await;
    let mut expected: BTreeSet<(Vec<u8>, String)> = BTreeSet::new();

    for (tag, kt, conv) in &keys {
        let entry = kms
            .engine
            .key_entry(&hsm_kms::core::KeyUid::from(tag))
            .await
            .unwrap();
        assert_eq!(entry.versions.len(), 2);
        for v in &entry.versions {
            let label = format!("hsm-kms/{tag}/v{}", v.version);
            assert_eq!(v.cka_id.len(), 16);
            let objs = kms
                .engine
                .hsm()
                .object_info(v.cka_id.to_vec())
                .await
                .unwrap();
            let mut classes: Vec<&str> = objs.iter().map(|o| o.class.as_str()).collect();
            classes.sort_unstable();
            match *kt {
                "AES256" => {
                    assert_eq!(classes, ["secret-key"], "{label}");
                    assert_secret(&objs[0], &label);
                }
                _ => {
                    assert_eq!(classes, ["private-key", "public-key"], "{label}");
                    for o in &objs {
                        if o.class == "private-key" {
                            assert_secret(o, &label);
                        } else {
                            assert_eq!(o.label, label);
                            assert!(o.token && o.local && !o.modifiable, "{label}: {o:?}");
                        }
                    }
                }
            }
            expected.insert((v.cka_id.to_vec(), label.clone()));
            match (&v.aux_cka_id, conv) {
                (Some(aux), true) => {
                    let objs = kms.engine.hsm().object_info(aux.to_vec()).await.unwrap();
                    assert_eq!(objs.len(), 1, "{label}/convergent");
                    assert_eq!(objs[0].class, "secret-key");
                    assert_secret(&objs[0], &format!("{label}/convergent"));
                    expected.insert((aux.to_vec(), format!("{label}/convergent")));
                }
                (None, false) => {}
                (aux, _) => panic!("{label}: convergent {conv} but aux id {aux:?}"),
            }
        }
    }

    // The inventory of the token holds exactly these key objects (plus the
    // service keys of `init`): nothing unnamed, nothing missing.
    let listed = kms.engine.hsm().list_service_objects().await.unwrap();
    let key_objects: BTreeSet<(Vec<u8>, String)> = listed
        .iter()
        .filter(|o| !o.label.starts_with("hsm-kms/service/"))
        .map(|o| (o.id.clone(), o.label.clone()))
        .collect();
    assert_eq!(key_objects, expected);
    let service: BTreeSet<&str> = listed
        .iter()
        .filter_map(|o| o.label.strip_prefix("hsm-kms/service/"))
        .collect();
    assert_eq!(
        service,
        BTreeSet::from(["kek", "audit-hmac", "attestation", "token-signing"])
    );
    // Pairs are listed twice (public and private), single keys once.
    let aes_v1 = &kms
        .engine
        .key_entry(&hsm_kms::core::KeyUid::from(&keys[0].0))
        .await
        .unwrap()
        .versions[0];
    let rsa_v1 = &kms
        .engine
        .key_entry(&hsm_kms::core::KeyUid::from(&keys[2].0))
        .await
        .unwrap()
        .versions[0];
    assert_eq!(listed.iter().filter(|o| o.id == aes_v1.cka_id).count(), 1);
    assert_eq!(listed.iter().filter(|o| o.id == rsa_v1.cka_id).count(), 2);
}

/// One object as `pkcs11-tool --list-objects` prints it.
#[derive(Debug, Default)]
struct Listed {
    kind: String,
    label: String,
    id: String,
    access: String,
    usage: String,
}

fn parse_listing(text: &str) -> Vec<Listed> {
    let mut out: Vec<Listed> = Vec::new();
    for line in text.lines() {
        // Keys print "Secret Key Object; ...", data objects "Data object N"
        // (the installation id object) with a quoted label.
        if !line.starts_with(' ') && (line.contains("Object;") || line.starts_with("Data object")) {
            out.push(Listed {
                kind: line.split(';').next().unwrap_or("").trim().to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(cur) = out.last_mut() else { continue };
        let line = line.trim();
        if let Some(v) = line.strip_prefix("label:") {
            cur.label = v.trim().trim_matches('\'').to_string();
        } else if let Some(v) = line.strip_prefix("ID:") {
            cur.id = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("Access:") {
            cur.access = v.trim().to_string();
        } else if let Some(v) = line.strip_prefix("Usage:") {
            cur.usage = v.trim().to_string();
        }
    }
    out
}

#[tokio::test]
async fn pkcs11_tool_lists_every_version() {
    let kms = Kms::start().await;
    let keys = make_keys(&kms).await;
    let out = common::pkcs11_tool()
        .arg("--list-objects")
        .output()
        .expect("pkcs11-tool must be installed (package opensc; scripts/test.sh installs it)");
    assert!(
        out.status.success(),
        "pkcs11-tool failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = parse_listing(&String::from_utf8_lossy(&out.stdout));
    let ours: Vec<&Listed> = listing
        .iter()
        .filter(|o| {
            o.label.starts_with("hsm-kms/")
                && !o.label.starts_with("hsm-kms/service/")
                && o.label != "hsm-kms/installation"
        })
        .collect();

    let mut want_count = 0;
    for (tag, kt, conv) in &keys {
        let entry = kms
            .engine
            .key_entry(&hsm_kms::core::KeyUid::from(tag))
            .await
            .unwrap();
        for v in &entry.versions {
            let label = format!("hsm-kms/{tag}/v{}", v.version);
            let found: Vec<&&Listed> = ours.iter().filter(|o| o.label == label).collect();
            let kinds: BTreeSet<&str> = found.iter().map(|o| o.kind.as_str()).collect();
            let want: BTreeSet<&str> = if *kt == "AES256" {
                BTreeSet::from(["Secret Key Object"])
            } else {
                BTreeSet::from(["Private Key Object", "Public Key Object"])
            };
            assert_eq!(kinds, want, "{label}: {found:?}");
            assert_eq!(found.len(), want.len(), "{label}: one object or one pair");
            for o in &found {
                assert_eq!(o.id, hex::encode(&v.cka_id), "{label}");
                // Usage flags only for the key's purpose: no key wraps or
                // unwraps, and an ECDSA pair only signs and verifies (SoftHSM
                // defaults CKA_DECRYPT / CKA_UNWRAP to true when unset).
                let usage: BTreeSet<&str> = o.usage.split(", ").collect();
                assert!(
                    !usage.contains("wrap") && !usage.contains("unwrap"),
                    "{label} {}: usage {}",
                    o.kind,
                    o.usage
                );
                if *kt == "ECDSA" {
                    let want = if o.kind == "Private Key Object" {
                        "sign"
                    } else {
                        "verify"
                    };
                    assert_eq!(o.usage, want, "{label} {}", o.kind);
                }
                if o.kind == "Public Key Object" {
                    assert!(o.access.contains("local"), "{label}: {}", o.access);
                } else {
                    assert_eq!(
                        o.access, "sensitive, always sensitive, never extractable, local",
                        "{label}"
                    );
                }
            }
            want_count += found.len();
            if *conv {
                let l = format!("{label}/convergent");
                let c: Vec<&&Listed> = ours.iter().filter(|o| o.label == l).collect();
                assert_eq!(c.len(), 1, "{l}");
                assert_eq!(c[0].kind, "Secret Key Object");
                assert_eq!(c[0].id, hex::encode(v.aux_cka_id.as_ref().unwrap()));
                assert_eq!(
                    c[0].access,
                    "sensitive, always sensitive, never extractable, local"
                );
                want_count += 1;
            }
        }
    }
    assert_eq!(ours.len(), want_count, "no other key objects: {ours:?}");
}
