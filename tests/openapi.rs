//! `docs/openapi.json` describes every route the router serves, and the
//! server serves that very document at `/openapi.json`.
//!
//! The routes are read from the source: every `.route("path", method(...)...)`
//! call in the files of [`DESCRIBED`], so a route added there without its
//! description fails here. A path may be a literal or a
//! `&format!("{P}/...")` whose `{NAME}`s are `const NAME: &str = "..."` of
//! the same file; anything else fails the scan. Every file under `src/` that
//! calls `.route(` must be listed in [`DESCRIBED`].
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

const METHODS: [&str; 5] = ["get", "post", "put", "delete", "patch"];

/// Router files whose routes docs/openapi.json describes.
const DESCRIBED: [&str; 10] = [
    "src/api/mod.rs",
    "src/api/naver/v2.rs",
    "src/api/naver/v3.rs",
    "src/api/naver/v3/tokens.rs",
    "src/api/naver/v3/acl.rs",
    "src/api/naver/v3/state.rs",
    "src/api/naver/tokens.rs",
    "src/api/naver/v1.rs",
    "src/api/nhn/data.rs",
    "src/api/nhn/manage.rs",
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

/// `const NAME: &str = "value";` items of a source file.
fn string_consts(src: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in src.lines() {
        let Some(rest) = line.trim().strip_prefix("const ") else {
            continue;
        };
        let Some((name, rest)) = rest.split_once(": &str = \"") else {
            continue;
        };
        let Some((value, _)) = rest.split_once('"') else {
            continue;
        };
        out.insert(name.to_string(), value.to_string());
    }
    out
}

/// The path a `format!` string yields: `{{`/`}}` become braces, `{NAME}`
/// the file's string constant NAME. Panics on any other placeholder (a loop
/// variable, an argument), which the scan cannot resolve.
fn expand_format(fmt: &str, consts: &BTreeMap<String, String>, file: &Path) -> String {
    let mut out = String::new();
    let mut chars = fmt.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                out.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                out.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let value = consts.get(&name).unwrap_or_else(|| {
                    panic!(
                        "{}: route path {fmt:?} uses {{{name}}}, which is not a string \
                         constant of the file; write the path literally",
                        file.display()
                    )
                });
                out.push_str(value);
            }
            _ => out.push(c),
        }
    }
    out
}

/// (method, normalised path) of every `.route(...)` in `file`.
fn routes_in_file(file: &Path) -> BTreeSet<(String, String)> {
    let src = std::fs::read_to_string(file).unwrap();
    let consts = string_consts(&src);
    let mut routes = BTreeSet::new();
    for (at, _) in src.match_indices(".route(") {
        let call = call_text(&src, at + ".route(".len());
        let Some(q1) = call.find('"') else {
            panic!(
                "{}: a route whose path is not a string: {call}",
                file.display()
            )
        };
        let Some(len) = call[q1 + 1..].find('"') else {
            panic!("{}: unterminated route path: {call}", file.display())
        };
        let raw = &call[q1 + 1..q1 + 1 + len];
        let before = call[..q1].trim();
        let path = match before {
            "" => raw.to_string(),
            "&format!(" => expand_format(raw, &consts, file),
            _ => panic!(
                "{}: route path built by {before:?}; use a literal or &format!",
                file.display()
            ),
        };
        assert!(path.starts_with('/'), "{}: path {path}", file.display());
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
                routes.insert((m.to_string(), normalise(&path)));
                found = true;
            }
        }
        assert!(
            found,
            "{}: no method found for route {path}",
            file.display()
        );
    }
    routes
}

/// (method, normalised path) of every `.route(...)` in the [`DESCRIBED`] files.
fn routes_in_source() -> BTreeSet<(String, String)> {
    DESCRIBED
        .iter()
        .flat_map(|f| routes_in_file(&manifest_dir().join(f)))
        .collect()
}

#[test]
fn format_paths_expand_file_constants_and_refuse_other_placeholders() {
    let src = "const P: &str = \"/keymanager/v1.2/appkey/{appkey}\";\n";
    let consts = string_consts(src);
    let file = Path::new("x.rs");
    assert_eq!(
        expand_format("{P}/keys/{{keyid}}/create", &consts, file),
        "/keymanager/v1.2/appkey/{appkey}/keys/{keyid}/create"
    );
    // A loop variable such as the old `for v in ["v1", "v2"]` cannot be resolved.
    let refused =
        std::panic::catch_unwind(|| expand_format("/keys/{v}/{{key_tag}}/sign", &consts, file));
    assert!(refused.is_err());
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn every_router_file_is_scanned() {
    let mut files = Vec::new();
    rust_files(&manifest_dir().join("src"), &mut files);
    let mut routers = BTreeSet::new();
    for f in files {
        if std::fs::read_to_string(&f).unwrap().contains(".route(") {
            let rel = f.strip_prefix(manifest_dir()).unwrap();
            routers.insert(rel.to_string_lossy().replace('\\', "/"));
        }
    }
    let listed: BTreeSet<String> = DESCRIBED.iter().map(|f| f.to_string()).collect();
    assert_eq!(
        routers, listed,
        "files under src/ that define routes vs. the DESCRIBED list"
    );
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
        source.len() >= 80,
        "the scan found too few routes: {source:?}"
    );
    for r in [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/kms/v1/keys/{}/encrypt",
        "/kms/v3/keys/{}/versions/{}/public-key",
        "/keys/v1/{}/createCustomKey",
        "/keys/v2/{}/re-encrypt",
        "/keymanager/v1.2/appkey/{}/symmetric-keys/{}/encrypt",
        "/keymanager/v1.2/appkey/{}/auths/{}/delete",
        "/keymanager/v1.0/appkey/{}/keystores",
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

fn schema_ref(response: &Value) -> &Value {
    &response["content"]["application/json"]["schema"]["$ref"]
}

/// The operation's responses, with `#/components/responses/...` references
/// replaced by what they name.
fn responses_of<'a>(doc: &'a Value, op: &'a Value) -> BTreeMap<String, &'a Value> {
    op["responses"]
        .as_object()
        .expect("responses")
        .iter()
        .map(|(code, r)| {
            let r = match r["$ref"].as_str() {
                Some(target) => doc
                    .pointer(target.strip_prefix('#').expect("local $ref"))
                    .expect("resolvable response"),
                None => r,
            };
            (code.clone(), r)
        })
        .collect()
}

fn requirement_sets(op: &Value) -> Vec<BTreeSet<String>> {
    op["security"]
        .as_array()
        .expect("security")
        .iter()
        .map(|r| {
            r.as_object()
                .expect("requirement")
                .keys()
                .cloned()
                .collect()
        })
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

/// NHN management calls (`docs/nhn-error-codes.md`): credentials, key
/// creation and deletion, key-store and key queries, and the secret update.
fn nhn_management(method: &str, path: &str) -> bool {
    let rest = path.split_once("/appkey/{appkey}").map_or("", |(_, r)| r);
    ["/keys/", "/auths/", "/keystores"]
        .iter()
        .any(|p| rest.starts_with(p))
        || (method == "put" && rest.starts_with("/secrets/"))
}

/// NHN data calls: checked against the key store's IPv4 / MAC / certificate
/// switches (`publicKey` is not, as NHN documents).
fn nhn_key_store_checked(path: &str) -> bool {
    ["/secrets/", "/symmetric-keys/", "/asymmetric-keys/"]
        .iter()
        .any(|p| path.contains(p))
        && !path.ends_with("/publicKey")
}

#[test]
fn document_is_openapi_3_1_with_resolvable_refs_and_each_dialects_auth() {
    use hsm_kms::api::auth::{ncp, nhn};
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    check_refs(&doc, &doc, "#");
    let schemes = &doc["components"]["securitySchemes"];
    for (name, header) in [
        ("NcpTimestamp", ncp::TIMESTAMP),
        ("NcpAccessKey", ncp::ACCESS_KEY),
        ("NcpSignatureV2", ncp::SIGNATURE_V2),
        ("NcpSignatureV1", ncp::SIGNATURE_V1),
        ("NcpApiKey", ncp::API_KEY),
        ("NcpOcapiToken", "x-ncp-ocapi-token"),
        ("NhnUserAccessKey", nhn::USER_ACCESS_KEY_HEADER),
        ("NhnSecretAccessKey", nhn::SECRET_ACCESS_KEY_HEADER),
        ("NhnClientMac", nhn::MAC_HEADER),
    ] {
        assert_eq!(schemes[name]["type"], "apiKey", "{name}");
        assert_eq!(schemes[name]["in"], "header", "{name}");
        let documented = schemes[name]["name"].as_str().unwrap_or_default();
        assert!(
            documented.eq_ignore_ascii_case(header),
            "{name}: {documented} vs {header}"
        );
    }
    assert_eq!(schemes["NhnClientCertificate"]["type"], "mutualTLS");

    let uak = set(&["NhnUserAccessKey", "NhnSecretAccessKey"]);
    let mut counts = BTreeMap::<&str, usize>::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            let at = format!("{method} {path}");
            let responses = responses_of(&doc, op);
            // v3's createKey and createKeyVersion answer 201.
            let created = path.starts_with("/kms/v3/") && method == "post" && {
                path == "/kms/v3/keys" || path.ends_with("/versions")
            };
            assert!(
                responses.contains_key(if created { "201" } else { "200" }),
                "{at}: no 200"
            );
            let reqs = requirement_sets(op);
            for req in &reqs {
                for name in req {
                    assert!(schemes.get(name).is_some(), "{at}: {name}");
                }
            }
            let errors = || responses.iter().filter(|(c, _)| !c.starts_with('2'));
            if path.starts_with("/kms/v3/") || path == "/kms/v3/keys" {
                *counts.entry("API v3").or_default() += 1;
                // v3's token calls take the token only (`/kms/v3/token/...`).
                let expected = if path.starts_with("/kms/v3/token/") {
                    set(&["NcpOcapiToken"])
                } else {
                    set(&["NcpTimestamp", "NcpAccessKey", "NcpSignatureV2"])
                };
                assert_eq!(reqs, vec![expected], "{at}: security");
                for code in ["400", "401", "404", "500"] {
                    assert!(responses.contains_key(code), "{at}: no {code}");
                }
                for (code, r) in errors() {
                    assert_eq!(schema_ref(r), "#/components/schemas/V3Error", "{at} {code}");
                }
                let ok = responses
                    .iter()
                    .find(|(c, _)| c.starts_with('2'))
                    .unwrap()
                    .1;
                assert!(
                    ok["headers"].get("x-ncp-request-id").is_some(),
                    "{at}: x-ncp-request-id"
                );
            } else if path.starts_with("/kms/") {
                *counts.entry("API 2.0").or_default() += 1;
                assert!(!reqs.is_empty(), "{at}: no security");
                for code in ["400", "401", "404", "500"] {
                    assert_eq!(
                        schema_ref(responses[code]),
                        "#/components/schemas/Error",
                        "{at} {code}"
                    );
                }
            } else if let Some(rest) = path.strip_prefix("/keys/") {
                *counts.entry("API 1.0").or_default() += 1;
                let expected = if rest.starts_with("v1/") {
                    set(&[
                        "NcpTimestamp",
                        "NcpAccessKey",
                        "NcpApiKey",
                        "NcpSignatureV1",
                    ])
                } else {
                    set(&["NcpTimestamp", "NcpAccessKey", "NcpSignatureV2"])
                };
                assert_eq!(reqs, vec![expected], "{at}: security");
                let ok = &responses["200"]["content"]["application/json"]["schema"];
                let one_of = ok["oneOf"].as_array().expect("200 is success or failure");
                assert!(
                    one_of
                        .iter()
                        .any(|s| s["$ref"] == "#/components/schemas/V1Failure"),
                    "{at}: the 200-with-code failure form"
                );
                // Invalid input is a 200 failure; the one 400 is the
                // percent-encoded path, refused before authentication.
                if let Some(r) = responses.get("400") {
                    let d = r["description"].as_str().unwrap_or_default();
                    assert!(d.contains("percent-encoding"), "{at}: 400 is a 200 failure");
                }
                for code in ["401", "403", "404", "429", "500"] {
                    assert!(responses.contains_key(code), "{at}: no {code}");
                }
                for (code, r) in errors() {
                    assert_eq!(schema_ref(r), "#/components/schemas/Error", "{at} {code}");
                }
            } else if path.starts_with("/keymanager/") {
                *counts.entry("NHN").or_default() += 1;
                let params = op["parameters"].as_array().expect("parameters");
                assert!(
                    params.iter().any(|p| p["name"] == "appkey"
                        && p["in"] == "path"
                        && p["required"] == true),
                    "{at}: appkey path parameter"
                );
                if nhn_management(method, path) {
                    // Issue 8: the appkey alone is not enough.
                    assert!(
                        reqs.iter().all(|r| uak.is_subset(r)),
                        "{at}: management needs the UAK"
                    );
                    assert!(reqs.contains(&uak), "{at}: UAK pair");
                    assert!(
                        op["description"]
                            .as_str()
                            .is_some_and(|d| d.contains("-1102")),
                        "{at}: documents -1102"
                    );
                } else {
                    assert!(reqs.contains(&BTreeSet::new()), "{at}: UAK is optional");
                    assert!(reqs.contains(&uak), "{at}: UAK pair");
                }
                let store_checked = nhn_key_store_checked(path);
                for factor in ["NhnClientMac", "NhnClientCertificate"] {
                    assert_eq!(
                        reqs.iter().any(|r| r.contains(factor)),
                        store_checked,
                        "{at}: {factor}"
                    );
                }
                if store_checked {
                    assert!(responses.contains_key("403"), "{at}: no 403");
                }
                for code in ["400", "401", "500"] {
                    assert!(responses.contains_key(code), "{at}: no {code}");
                }
                for (code, r) in errors() {
                    assert_eq!(
                        schema_ref(r),
                        "#/components/schemas/NhnError",
                        "{at} {code}"
                    );
                }
                let ok = &responses["200"]["content"]["application/json"]["schema"];
                assert_eq!(
                    ok["properties"]["header"]["$ref"], "#/components/schemas/NhnSuccessHeader",
                    "{at}: NHN envelope"
                );
            } else {
                *counts.entry("service").or_default() += 1;
                assert_eq!(op["security"], Value::Array(vec![]), "{at}");
            }
        }
    }
    assert_eq!(counts.len(), 5, "{counts:?}");
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
