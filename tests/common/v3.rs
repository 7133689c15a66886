//! Assertions on NAVER KMS API v3 answers, shared by the v3 test files.

use super::Reply;
use serde_json::Value;

/// Asserts a v3 error: status, `error.errorCode`, a message and details,
/// no batch `failures` map, and the request id every v3 answer carries.
pub fn assert_v3_error(r: &Reply, status: u16, code: &str) {
    assert_eq!(r.status, status, "body: {}", r.body);
    assert_eq!(r.body["error"]["errorCode"], code, "body: {}", r.body);
    assert!(r.body["error"]["message"].is_string(), "{}", r.body);
    assert!(r.body["error"]["details"].is_string(), "{}", r.body);
    assert!(r.body.get("failures").is_none(), "{}", r.body);
    assert!(
        r.headers.contains_key("x-ncp-request-id"),
        "{:?}",
        r.headers
    );
}

/// Asserts a v3 success (no envelope: the resource itself) and returns it.
pub fn ok(r: &Reply, status: u16) -> &Value {
    assert_eq!(r.status, status, "body: {}", r.body);
    assert!(
        r.body.get("code").is_none(),
        "v3 has no envelope: {}",
        r.body
    );
    assert!(
        r.headers.contains_key("x-ncp-request-id"),
        "{:?}",
        r.headers
    );
    &r.body
}
