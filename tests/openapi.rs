//! `docs/openapi.json` describes every route the router serves, and the
//! server serves that very document at `/openapi.json`.
//!
//! The routes are read from the source: every `.route("path", method(...)...)`
//! call in the files of [`DESCRIBED`], so a route added there without its
//! description fails here. API 1.0 (`src/api/naver/v1.rs`, paths built with
//! `format!`) is not described yet; add its file here when it is.
mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Router files whose routes docs/openapi.json describes.
const DESCRIBED: [&str; 3] = [
    "src/api/mod.rs",
    "src/api/naver/v2.rs",
    "src/api/naver/tokens.rs",
];

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn document() -> Value {
    let text = std::fs::read_to_string(manifest_dir().join("docs/openapi.json")).unwrap();
    serde_json::from_str(&text).expect("docs/openapi.json is not valid JSON")
}

/// `{key_tag}` and `{keyTag}` both become `{}`.
fn normalise(path: &str) -> String {
    let mut out = String::new();
    let mut in_param = false;
    for c in path.chars() {
        match c {
            '{' => {
                in_param = true;
                out.push_str("{}");
            }
            '}' => in_param = false,
            _ if in_param => {}
            _ => out.push(c),
        }
    }
    out
}

/// The text of the call that starts at `start` (just after `(`), up to its
/// matching `)`.
fn call_text(src: &str, start: usize) -> &str {
    let mut depth = 1;
    for (i, c) in src[start..].char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return &src[start..start + i];
                }
            }
            _ => {}
        }
    }
    &src[start..]
}

/// (method, normalised path) of every `.route(...)` in the [`DESCRIBED`] files.
fn routes_in_source() -> BTreeSet<(String, String)> {
    let mut routes = BTreeSet::new();
    for f in DESCRIBED.map(|f| manifest_dir().join(f)) {
        let src = std::fs::read_to_string(&f).unwrap();
        for (at, _) in src.match_indices(".route(") {
            let call = call_text(&src, at + ".route(".len());
            let Some(q1) = call.find('"') else { continue };
            let Some(len) = call[q1 + 1..].find('"') else {
                continue;
            };
            let path = &call[q1 + 1..q1 + 1 + len];
            let handlers = &call[q1 + 2 + len..];
            let mut found = false;
            for m in METHODS {
                let needle = format!("{m}(");
                let hit = handlers.match_indices(&needle).any(|(i, _)| {
                    i == 0
                        || !handlers.as_bytes()[i - 1].is_ascii_alphanumeric()
                            && handlers.as_bytes()[i - 1] != b'_'
                });
                if hit {
                    routes.insert((m.to_string(), normalise(path)));
                    found = true;
                }
            }
            assert!(found, "{}: no method found for route {path}", f.display());
        }
    }
    routes
}

fn routes_in_document(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for m in METHODS {
            if item.get(m).is_some() {
                out.insert((m.to_string(), normalise(path)));
            }
        }
    }
    out
}

#[test]
fn every_route_is_described_and_nothing_else() {
    let source = routes_in_source();
    assert!(
        source.len() >= 40,
        "the scan found too few routes: {source:?}"
    );
    for r in [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/kms/v1/keys/{}/encrypt",
    ] {
        assert!(
            source.iter().any(|(_, p)| p == r),
            "scan missed {r}: {source:?}"
        );
    }
    let described = routes_in_document(&document());
    let missing: Vec<_> = source.difference(&described).collect();
    let extra: Vec<_> = described.difference(&source).collect();
    assert!(
        missing.is_empty(),
        "routes served but not in docs/openapi.json: {missing:?}"
    );
    assert!(
        extra.is_empty(),
        "routes in docs/openapi.json that the router does not serve: {extra:?}"
    );
}

fn check_refs(doc: &Value, v: &Value, at: &str) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let pointer = r.strip_prefix('#').expect("local $ref");
                assert!(
                    doc.pointer(pointer).is_some(),
                    "{at}: $ref {r} does not resolve"
                );
            }
            for (k, x) in m {
                check_refs(doc, x, &format!("{at}/{k}"));
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                check_refs(doc, x, &format!("{at}/{i}"));
            }
        }
        _ => {}
    }
}

#[test]
fn document_is_openapi_3_1_with_resolvable_refs_and_ncp_auth() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    check_refs(&doc, &doc, "#");
    let schemes = &doc["components"]["securitySchemes"];
    for (name, header) in [
        ("NcpTimestamp", "x-ncp-apigw-timestamp"),
        ("NcpAccessKey", "x-ncp-iam-access-key"),
        ("NcpSignatureV2", "x-ncp-apigw-signature-v2"),
    ] {
        assert_eq!(schemes[name]["in"], "header", "{name}");
        assert_eq!(schemes[name]["name"], header, "{name}");
    }
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let responses = op["responses"].as_object().expect("responses");
            assert!(responses.contains_key("200"), "{method} {path}: no 200");
            if path.starts_with("/kms/") {
                let reqs = op["security"].as_array().expect("security");
                assert!(!reqs.is_empty(), "{method} {path}: no security");
                for req in reqs {
                    for name in req.as_object().expect("requirement").keys() {
                        assert!(schemes.get(name).is_some(), "{method} {path}: {name}");
                    }
                }
                for code in ["400", "401", "404", "500"] {
                    assert_eq!(
                        responses[code]["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path} {code}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn served_document_is_the_file() {
    let kms = common::Kms::start().await;
    let r = kms.raw("GET", "/openapi.json", &[], None).await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.headers.get("content-type").and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    assert_eq!(r.body, document());
}
