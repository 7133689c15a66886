//! Key counts, read from the store at each scrape (they are the store's
//! state, shared by every node): keys by dialect and state, versions by
//! dialect and state, keys overdue for rotation and the age of the oldest,
//! keys whose deletion is due.

use super::{header, sample};

/// Key states, as `keys.status` holds them, and their label.
const KEY_STATES: [(&str, &str); 3] = [
    ("ENABLE", "enabled"),
    ("DISABLE", "disabled"),
    ("REVOKE", "pending_deletion"),
];
/// Version states (`key_versions.state`), their own label.
const VERSION_STATES: [&str; 3] = ["pending", "active", "destroying"];
const DIALECTS: [&str; 2] = ["naver", "nhn"];

/// What the store counted.
#[derive(Debug, Clone, Default)]
pub struct KeyCounts {
    /// (dialect, `keys.status`, count), keys not deleted.
    pub keys: Vec<(String, String, i64)>,
    /// (dialect, `key_versions.state`, count), versions not destroyed.
    pub versions: Vec<(String, String, i64)>,
    /// Enabled keys with automatic rotation whose rotation is due.
    pub rotation_overdue: i64,
    /// The earliest due time (ms) among them.
    pub oldest_rotation_due_ms: Option<i64>,
    /// Keys pending deletion whose waiting period is over.
    pub deletion_due: i64,
    /// When the counts were read (ms).
    pub now_ms: i64,
}

impl KeyCounts {
    fn find(rows: &[(String, String, i64)], dialect: &str, state: &str) -> i64 {
        rows.iter()
            .filter(|(d, s, _)| d == dialect && s == state)
            .map(|r| r.2)
            .sum()
    }

    /// Writes the key families.
    pub fn render(&self, out: &mut String) {
        header(
            out,
            "hsm_kms_keys",
            "gauge",
            "Keys by dialect and state (enabled, disabled, pending_deletion), from the store.",
        );
        for d in DIALECTS {
            for (status, label) in KEY_STATES {
                sample(
                    out,
                    "hsm_kms_keys",
                    &format!("dialect=\"{d}\",state=\"{label}\""),
                    Self::find(&self.keys, d, status),
                );
            }
        }
        header(
            out,
            "hsm_kms_key_versions",
            "gauge",
            "Key versions by dialect and state (pending and destroying: a creation or destruction under way or interrupted; active: in the token).",
        );
        for d in DIALECTS {
            for state in VERSION_STATES {
                sample(
                    out,
                    "hsm_kms_key_versions",
                    &format!("dialect=\"{d}\",state=\"{state}\""),
                    Self::find(&self.versions, d, state),
                );
            }
        }
        header(
            out,
            "hsm_kms_keys_rotation_overdue",
            "gauge",
            "Enabled keys with automatic rotation whose rotation time has passed (the scheduler rotates them at its next pass).",
        );
        sample(
            out,
            "hsm_kms_keys_rotation_overdue",
            "",
            self.rotation_overdue,
        );
        header(
            out,
            "hsm_kms_key_rotation_overdue_seconds",
            "gauge",
            "How long the oldest overdue automatic rotation has been due (0: none overdue).",
        );
        let age = self
            .oldest_rotation_due_ms
            .map_or(0.0, |due| (self.now_ms - due).max(0) as f64 / 1000.0);
        sample(out, "hsm_kms_key_rotation_overdue_seconds", "", age);
        header(
            out,
            "hsm_kms_keys_deletion_due",
            "gauge",
            "Keys pending deletion whose waiting period is over (the scheduler destroys them at its next pass).",
        );
        sample(out, "hsm_kms_keys_deletion_due", "", self.deletion_due);
    }
}
