//! Issue 8, item 4: the client address behind proxies. Every
//! `X-Forwarded-For` line is read (a proxy such as HAProxy appends its own
//! line; nginx appends to one comma list), the hops are walked from the
//! right past `server.trusted_proxies`, and the first untrusted hop is the
//! client. `Forwarded` (RFC 7239) is ignored. Checked against the NAVER IP
//! ACL (token auth) and NHN's IPv4 key-store check.
mod common;
#[path = "common/nhn.rs"]
mod nhn_h;

use common::{b64, Kms, Reply};
use hsm_kms::core::nhn::{CredentialKind, NhnKeyType};
use nhn_h::{err, ok, project};
use serde_json::json;

/// The address the ACL and the key store allow.
const ALLOWED: &str = "198.51.100.7";
/// Another client.
const STRANGER: &str = "203.0.113.9";

/// The test client connects from 127.0.0.1; it and 10.0.0.0/8 are the
/// trusted proxies.
async fn start() -> Kms {
    Kms::start_with(|c| {
        c.server.trusted_proxies = vec!["127.0.0.1/32".into(), "10.0.0.0/8".into()];
    })
    .await
}

/// What a request carries: header lines in order.
type Lines = &'static [(&'static str, &'static str)];

/// Requests whose client is `ALLOWED` however the proxies wrote it.
const HONEST: &[Lines] = &[
    // One proxy, nginx style (`$proxy_add_x_forwarded_for`).
    &[("x-forwarded-for", ALLOWED)],
    // The client forged a line; HAProxy appended the real address as its own line.
    &[("x-forwarded-for", STRANGER), ("x-forwarded-for", ALLOWED)],
    // nginx style: the forged entry is on the left of the list.
    &[("x-forwarded-for", "203.0.113.9, 198.51.100.7")],
    // Two trusted proxies, one list.
    &[("x-forwarded-for", "203.0.113.9, 198.51.100.7, 10.1.1.1")],
    // Two trusted proxies, one line each after the client's forged one.
    &[
        ("x-forwarded-for", "203.0.113.9"),
        ("x-forwarded-for", "198.51.100.7"),
        ("x-forwarded-for", "10.1.1.1"),
    ],
    // Mixed: a list then an appended line.
    &[
        ("x-forwarded-for", "203.0.113.9, 198.51.100.7"),
        ("x-forwarded-for", "10.1.1.1"),
    ],
];

/// Spoof attempts: the client is `STRANGER` (or unknown) but claims `ALLOWED`.
const SPOOFS: &[Lines] = &[
    // HAProxy style: the forged line comes first, the proxy's line last.
    &[("x-forwarded-for", ALLOWED), ("x-forwarded-for", STRANGER)],
    // nginx style: one comma list, the forged entry first.
    &[("x-forwarded-for", "198.51.100.7, 203.0.113.9")],
    // A forged trusted-looking hop between: still the stranger is nearest.
    &[("x-forwarded-for", "198.51.100.7, 203.0.113.9, 10.1.1.1")],
    &[
        ("x-forwarded-for", "198.51.100.7"),
        ("x-forwarded-for", "203.0.113.9, 10.1.1.1"),
    ],
    // Garbage where the client should be: the address is unknown, never the
    // forged one on its left nor the trusted proxy on its right.
    &[("x-forwarded-for", "198.51.100.7, not-an-address")],
    &[
        ("x-forwarded-for", "198.51.100.7"),
        ("x-forwarded-for", "unknown, 10.1.1.1"),
    ],
    &[("x-forwarded-for", "198.51.100.7, , 10.1.1.1")],
    // RFC 7239 `Forwarded` is not read: a client cannot use it to claim an address.
    &[("forwarded", "for=198.51.100.7")],
    &[
        ("forwarded", "for=198.51.100.7"),
        ("x-forwarded-for", STRANGER),
    ],
    // No header: the peer (127.0.0.1, the proxy itself) is not the allowed client.
    &[],
];

fn headers(lines: Lines) -> Vec<(String, String)> {
    lines
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[tokio::test]
async fn item4_naver_acl_reads_every_forwarded_line() {
    let kms = start().await;
    let tag = kms.create_key("item4", "AES256", json!({})).await;
    kms.call(
        "POST",
        &format!("/kms/v1/keys/{tag}/acl"),
        Some(json!({"ipList": [ALLOWED]})),
    )
    .await
    .ok();
    kms.call("POST", &format!("/kms/v1/keys/{tag}/acl/enable"), None)
        .await
        .ok();
    kms.call("POST", &format!("/kms/v1/keys/{tag}/token-generator"), None)
        .await
        .ok();
    let set = kms
        .call(
            "POST",
            &format!("/kms/v1/keys/{tag}/token-set"),
            Some(json!({})),
        )
        .await;
    let token = set.ok()["accessToken"].as_str().unwrap().to_string();
    let encrypt = |lines: Lines| {
        let mut h = headers(lines);
        h.push(("x-ncp-ocapi-token".into(), token.clone()));
        let path = format!("/kms/v1/keys/{tag}/encrypt");
        let kms = &kms;
        async move {
            kms.raw(
                "POST",
                &path,
                &h,
                Some(json!({"plaintext": b64(b"x")}).to_string().into_bytes()),
            )
            .await
        }
    };
    for lines in HONEST {
        let r: Reply = encrypt(lines).await;
        assert_eq!(r.status, 200, "{lines:?}: {}", r.body);
    }
    for lines in SPOOFS {
        let r: Reply = encrypt(lines).await;
        assert_eq!(r.status, 403, "{lines:?} got past the ACL: {}", r.body);
    }
    // The activity log names the address the ACL saw (refused token calls
    // have no authenticated caller and are not recorded).
    let r = kms
        .call(
            "GET",
            &format!("/kms/v1/keys/{tag}/activities?pageSize=200"),
            None,
        )
        .await;
    let ips: Vec<String> = r.ok()["activityLogList"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["data"]["api"]["action"] == "Encrypt")
        .map(|a| a["data"]["requestor"]["ip"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ips, vec![ALLOWED.to_string(); HONEST.len()]);
}

#[tokio::test]
async fn item4_nhn_ipv4_check_reads_every_forwarded_line() {
    let kms = start().await;
    let p = project(&kms, "item4", false).await;
    nhn_h::key_store(&kms, &p, "S", true, false, false, false).await;
    kms.engine
        .nhn_add_address(
            &p.project,
            "S",
            CredentialKind::Ipv4,
            ALLOWED,
            "the application",
            "test",
        )
        .await
        .expect("register the IPv4");
    let key = kms
        .engine
        .nhn_create_key(
            &p.project,
            "S",
            NhnKeyType::Symmetric,
            "item4",
            "item4 key",
            None,
            0,
            "test",
        )
        .await
        .expect("symmetric key");
    let path = format!("/symmetric-keys/{}/encrypt", key.entry.key.uid);
    let body = Some(json!({"plaintext": "item4"}));
    for lines in HONEST {
        let r = nhn_h::call_h(&kms, &p, "POST", &path, body.clone(), lines).await;
        ok(&r);
    }
    for lines in SPOOFS {
        let r = nhn_h::call_h(&kms, &p, "POST", &path, body.clone(), lines).await;
        err(&r, 403, -1200);
    }
}
