//! Security signals: authentication failures by dialect and reason, and
//! quota refusals. Labels never carry a secret or a whole identifier: the
//! reasons are a fixed list, and quota refusals are by key only when the
//! operator asks (`rate_limit.metrics_key_labels`), then by a fingerprint
//! of the key tag ([`super::fingerprint`]) for at most that many keys, the
//! rest under `other`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use super::{header, sample, Counter};

/// Why an authentication failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// NAVER: a signature or token header is absent or not text.
    MissingCredentials,
    /// NAVER: the signature does not match.
    BadSignature,
    /// NAVER: the signing timestamp is not a number or out of the window.
    StaleTimestamp,
    /// NAVER: a signature already used (replay guard).
    Replay,
    /// NAVER: the access key is unknown or revoked.
    UnknownAccessKey,
    /// NAVER: the API Gateway API key (signature v1) is unknown or revoked.
    UnknownApiKey,
    /// NAVER: an OCAPI token that is unknown, expired, revoked or not for
    /// this key.
    BadToken,
    /// NAVER: the key's IP ACL refused the caller's address.
    Acl,
    /// NHN: the appkey names no project.
    UnknownAppkey,
    /// NHN: the project needs a User Access Key and none was sent.
    UserAccessKeyMissing,
    /// NHN: the User Access Key or its secret does not check.
    BadUserAccessKey,
    /// NHN: the key store's IPv4 check failed.
    Ipv4,
    /// NHN: the key store's MAC check failed.
    Mac,
    /// NHN: the key store's client-certificate check failed.
    Certificate,
}

const REASONS: [(AuthFailure, &str, &str); 14] = [
    (
        AuthFailure::MissingCredentials,
        "naver",
        "missing_credentials",
    ),
    (AuthFailure::BadSignature, "naver", "bad_signature"),
    (AuthFailure::StaleTimestamp, "naver", "stale_timestamp"),
    (AuthFailure::Replay, "naver", "replay"),
    (AuthFailure::UnknownAccessKey, "naver", "unknown_access_key"),
    (AuthFailure::UnknownApiKey, "naver", "unknown_api_key"),
    (AuthFailure::BadToken, "naver", "bad_token"),
    (AuthFailure::Acl, "naver", "acl"),
    (AuthFailure::UnknownAppkey, "nhn", "unknown_appkey"),
    (
        AuthFailure::UserAccessKeyMissing,
        "nhn",
        "user_access_key_missing",
    ),
    (AuthFailure::BadUserAccessKey, "nhn", "bad_user_access_key"),
    (AuthFailure::Ipv4, "nhn", "ipv4"),
    (AuthFailure::Mac, "nhn", "mac"),
    (AuthFailure::Certificate, "nhn", "certificate"),
];

static FAILURES: [Counter; REASONS.len()] = [const { Counter::new() }; REASONS.len()];

/// Counts one refused authentication.
pub fn auth_failure(why: AuthFailure) {
    if let Some(i) = REASONS.iter().position(|(r, _, _)| *r == why) {
        FAILURES[i].inc();
    }
}

/// The dialects with a per-key quota (`[rate_limit]`: NAVER's crypto
/// calls), the `dialect` label.
const QUOTA_DIALECTS: [&str; 1] = ["naver"];
static QUOTA_REFUSALS: [Counter; 1] = [const { Counter::new() }; 1];

/// Most keys with their own `hsm_kms_quota_refusals_by_key_total` series
/// (`rate_limit.metrics_key_labels`; 0, the default: none).
static KEY_LABELS: AtomicUsize = AtomicUsize::new(0);
/// Refusals by key fingerprint; `None` counts keys past the limit.
static BY_KEY: Mutex<Option<HashMap<Option<String>, u64>>> = Mutex::new(None);

/// Sets how many keys may have their own quota-refusal series.
pub fn set_key_labels(limit: usize) {
    KEY_LABELS.store(limit, Ordering::Relaxed);
}

/// Counts a request refused by a key's quota (`dialect`: `naver`; `key`: the key tag or id, labelled only by fingerprint and only
/// when the operator turned per-key labels on).
pub fn quota_refused(dialect: &str, key: &str) {
    let d = QUOTA_DIALECTS
        .iter()
        .position(|x| *x == dialect)
        .unwrap_or(0);
    QUOTA_REFUSALS[d].inc();
    let limit = KEY_LABELS.load(Ordering::Relaxed);
    if limit == 0 {
        return;
    }
    let fp = super::fingerprint(key);
    let mut g = BY_KEY.lock().unwrap_or_else(|p| p.into_inner());
    let map = g.get_or_insert_with(HashMap::new);
    let named = map.keys().filter(|k| k.is_some()).count();
    let slot = if map.contains_key(&Some(fp.clone())) || named < limit {
        Some(fp)
    } else {
        None
    };
    *map.entry(slot).or_insert(0) += 1;
}

pub(super) fn render(out: &mut String) {
    header(
        out,
        "hsm_kms_auth_failures_total",
        "counter",
        "Refused authentications by dialect and reason (no credential or identifier in labels).",
    );
    for (i, (_, dialect, reason)) in REASONS.iter().enumerate() {
        sample(
            out,
            "hsm_kms_auth_failures_total",
            &format!("dialect=\"{dialect}\",reason=\"{reason}\""),
            FAILURES[i].get(),
        );
    }
    header(
        out,
        "hsm_kms_quota_refusals_total",
        "counter",
        "Requests refused by a key's quota (429), by dialect.",
    );
    for (i, d) in QUOTA_DIALECTS.iter().enumerate() {
        sample(
            out,
            "hsm_kms_quota_refusals_total",
            &format!("dialect=\"{d}\""),
            QUOTA_REFUSALS[i].get(),
        );
    }
    if KEY_LABELS.load(Ordering::Relaxed) == 0 {
        return;
    }
    header(
        out,
        "hsm_kms_quota_refusals_by_key_total",
        "counter",
        "Quota refusals by key-tag fingerprint (first 6 bytes of its SHA-256, as in the access log), for at most rate_limit.metrics_key_labels keys; the rest as key=\"other\".",
    );
    let g = BY_KEY.lock().unwrap_or_else(|p| p.into_inner());
    let mut rows: Vec<_> = g.iter().flat_map(|m| m.iter()).collect();
    rows.sort();
    for (k, n) in rows {
        sample(
            out,
            "hsm_kms_quota_refusals_by_key_total",
            &format!("key=\"{}\"", k.as_deref().unwrap_or("other")),
            n,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_labels_are_capped() {
        set_key_labels(2);
        for k in ["a", "b", "c", "d", "a"] {
            quota_refused("naver", k);
        }
        let mut out = String::new();
        render(&mut out);
        let keyed = out
            .lines()
            .filter(|l| l.starts_with("hsm_kms_quota_refusals_by_key_total{"))
            .count();
        assert_eq!(keyed, 3, "{out}");
        assert!(
            out.contains("hsm_kms_quota_refusals_by_key_total{key=\"other\"} 2"),
            "{out}"
        );
        assert!(out.contains("hsm_kms_quota_refusals_total{dialect=\"naver\"} 5"));

        // 10,000 distinct keys refused: still two keyed series and "other".
        for i in 0..10_000 {
            quota_refused("naver", &format!("{i:064x}"));
        }
        let mut out = String::new();
        render(&mut out);
        let keyed = out
            .lines()
            .filter(|l| l.starts_with("hsm_kms_quota_refusals_by_key_total{"))
            .count();
        assert_eq!(keyed, 3, "{out}");
        assert!(
            out.contains("hsm_kms_quota_refusals_by_key_total{key=\"other\"} 10002"),
            "{out}"
        );
    }
}
