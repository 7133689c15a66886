//! NAVER Cloud KMS's key rules, over the engine's dialect-neutral key
//! lifecycle (`core/keys.rs`): the name format, versions 1 to 100, the
//! 72-hour deletion wait, the memo and rotation-period bounds, and the
//! operations of API 2.0's key management (`keys.rs`). Key statuses are
//! [`KeyStatus`](crate::core::KeyStatus), whose stored text is NAVER's
//! (`ENABLE`, `DISABLE`, `REVOKE`, `DELETED`).

mod keys;
mod signatures;

use super::{Error, KeyType, Result};

/// Default automatic-rotation period, days.
pub const ROTATION_PERIOD_DEFAULT: i64 = 90;
/// Waiting period between a deletion request and the destruction: 72 hours.
pub const DELETION_WAIT_MS: i64 = 72 * 3600 * 1000;
/// Highest version number a key may reach.
pub const MAX_VERSIONS: i64 = 100;

/// What a client asks for when creating a key.
#[derive(Debug, Clone)]
pub struct CreateKeyRequest {
    /// Name, `[A-Za-z][A-Za-z0-9_-]{2,14}`, unique in the account.
    pub name: String,
    /// Key type.
    pub key_type: KeyType,
    /// Memo, at most 100 characters.
    pub memo: String,
    /// Convergent encryption (AES256 only).
    pub is_convergent: bool,
    /// Automatic rotation.
    pub is_auto_rotation: bool,
    /// Rotation period in days (1 to 730); default 90 when rotation is on.
    pub rotation_period: Option<i64>,
    /// NAVER `protectionType` (`BASIC` or `COMMON_HSM`).
    pub protection_type: String,
}

/// Whether `name` is a NAVER key name: `[A-Za-z][A-Za-z0-9_-]{2,14}`.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=15).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// Checks a rotation period in days.
pub fn check_rotation_period(days: i64) -> Result<i64> {
    if (1..=730).contains(&days) {
        Ok(days)
    } else {
        Err(Error::InvalidInput(
            "rotationPeriod must be between 1 and 730 days".into(),
        ))
    }
}

/// Checks a memo.
pub fn check_memo(memo: &str) -> Result<()> {
    if memo.chars().count() > 100 {
        return Err(Error::InvalidInput(
            "memo must be at most 100 characters".into(),
        ));
    }
    Ok(())
}
