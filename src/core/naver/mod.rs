//! NAVER Cloud KMS's key rules, over the engine's dialect-neutral key
//! lifecycle (`core/keys.rs`): the name format, versions 1 to 100, the
//! 72-hour deletion wait, the memo and rotation-period bounds, and the
//! operations of API 2.0's key management (`keys.rs`), and the one parser
//! of key tags with their region prefixes (`tag.rs`). Key statuses are
//! [`KeyStatus`](crate::core::KeyStatus), whose stored text is NAVER's
//! (`ENABLE`, `DISABLE`, `REVOKE`, `DELETED`).

mod keys;
mod signatures;
mod tag;

pub use tag::{KeyTag, Region, TAG_HEX_LEN};

use super::{Engine, Error, KeyType, Result};

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

/// The canonical, lower-case spelling of a NAVER key tag (an optional
/// region prefix and 64 hex digits, both case-insensitive; the v3 pages:
/// "리전 접두어와 16진 문자의 대소문자는 구분하지 않음", 64 to 68
/// characters), through the one parser, [`KeyTag::parse`]; `None` when
/// `tag` is not a key tag.
pub fn canonical_tag(tag: &str) -> Option<String> {
    KeyTag::parse(tag).map(|t| t.as_str().to_string())
}

/// Whether `name` is a NAVER key name: `[A-Za-z][A-Za-z0-9_-]{2,14}`.
fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=15).contains(&b.len())
        && b[0].is_ascii_alphabetic()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'-' || *c == b'_')
}

/// Reads a key tag given by an operator who brings the tag a NAVER key
/// had (`admin naver create-key --key-tag`): 64 hexadecimal digits, the
/// vendor's form, optionally after a region prefix (`kr-`, `jpn-`: NAVER's
/// region-isolated keys), every part in either case. Returns it in lower
/// case, the form the service makes and compares.
pub fn parse_key_tag(tag: &str) -> Result<String> {
    canonical_tag(tag).ok_or_else(|| {
        Error::InvalidInput(format!(
            "a key tag is {TAG_HEX_LEN} hexadecimal digits, optionally after a region \
             prefix kr- or jpn- (NAVER's forms); got {} characters",
            tag.chars().count()
        ))
    })
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

impl Engine {
    /// The region this service isolates new keys in (`naver.region`).
    pub fn naver_region(&self) -> Option<Region> {
        self.inner.naver_region
    }

    /// [`Engine::naver_key_tag`] for a tag already spelled canonically
    /// (the usual call), without allocating: `Ok(true)` when `raw` is a
    /// canonical key tag this service serves, `Ok(false)` when it is
    /// another spelling or no tag (ask [`Engine::naver_key_tag`]), the 400
    /// for a key isolated in another region.
    pub fn naver_key_tag_is_canonical(&self, raw: &str) -> Result<bool> {
        match KeyTag::canonical_region(raw) {
            Some(region) => {
                KeyTag::check_region_served(region, self.naver_region())?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Reads the key tag of a NAVER call, as the client spelled it: its
    /// canonical text when it is a key tag this service serves; `None` when
    /// it is no key tag at all (the lookup then finds no key, as before);
    /// the 400 NAVER documents when the key is isolated in another region.
    pub fn naver_key_tag(&self, raw: &str) -> Result<Option<KeyTag>> {
        match KeyTag::parse(raw) {
            Some(tag) => {
                tag.check_served_by(self.naver_region())?;
                Ok(Some(tag))
            }
            None => Ok(None),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::canonical_tag;

    #[test]
    fn key_tags_any_case_with_an_optional_region() {
        let hex = "0123456789abcdef".repeat(4);
        assert_eq!(canonical_tag(&hex).as_deref(), Some(hex.as_str()));
        assert_eq!(
            canonical_tag(&hex.to_uppercase()).as_deref(),
            Some(hex.as_str())
        );
        assert_eq!(
            canonical_tag(&format!("KR-{hex}")),
            Some(format!("kr-{hex}"))
        );
        assert_eq!(
            canonical_tag(&format!("jpn-{}", hex.to_uppercase())),
            Some(format!("jpn-{hex}"))
        );
        for bad in [
            String::new(),
            hex[..63].to_string(),
            format!("{hex}0"),
            format!("us-{hex}"),
            format!("kr{hex}"),
            hex.replace('a', "g"),
            format!("kr-kr-{hex}"),
        ] {
            assert_eq!(canonical_tag(&bad), None, "{bad}");
        }
    }
}
