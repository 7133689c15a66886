//! NAVER key tags: the one parser of every spelling a client may send, and
//! the region-isolated keys NAVER added to API 2.0.
//!
//! NAVER's pages (the v3 `issueKeyTokens` page, `keyTag`): "Region-isolated
//! keys carry a region prefix (e.g. `kr-`, `jpn-`). A key can be called only
//! at the API address of the region it was made in; a call to another
//! region's address gets 400. The region prefix and the hex digits are not
//! case-sensitive. Length: 64 to 68." A tag is therefore an optional region
//! prefix followed by 64 hex digits (32 random bytes); its canonical text,
//! the one stored and answered, is lower case.

use super::super::{Error, Result};

/// Hex digits of a key tag (32 random bytes).
pub const TAG_HEX_LEN: usize = 64;

/// A region whose keys NAVER isolates (its API 2.0 addresses
/// `ocapi-kr.ncloud.com` and `ocapi-jp.ncloud.com`; keys without a prefix
/// are NAVER's global keys, served at `ocapi.ncloud.com`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Region {
    /// Korea: tags start with `kr-`.
    Kr,
    /// Japan: tags start with `jpn-`.
    Jpn,
}

impl Region {
    /// Every region, for parsing.
    const ALL: [Region; 2] = [Region::Kr, Region::Jpn];

    /// The tag prefix, with its dash (`kr-`, `jpn-`).
    pub fn prefix(self) -> &'static str {
        match self {
            Region::Kr => "kr-",
            Region::Jpn => "jpn-",
        }
    }

    /// The region's name as configured (`naver.region`) and reported.
    pub fn as_str(self) -> &'static str {
        match self {
            Region::Kr => "kr",
            Region::Jpn => "jpn",
        }
    }

    /// Parses `naver.region`: `kr` or `jpn` in any case (`KR` and `JPN` are
    /// how NAVER's Migrate Key page writes them); NAVER's `jp` host name
    /// spelling is accepted for Japan.
    pub fn parse(s: &str) -> Option<Region> {
        match s.to_ascii_lowercase().as_str() {
            "kr" => Some(Region::Kr),
            "jpn" | "jp" => Some(Region::Jpn),
            _ => None,
        }
    }
}

impl std::fmt::Display for Region {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A NAVER key tag in its canonical (lower-case) text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeyTag {
    region: Option<Region>,
    text: String,
}

impl KeyTag {
    /// Parses any spelling of a key tag: an optional region prefix and 64
    /// hex digits, each part in any case. `None` when `s` is not a key tag
    /// at all (wrong length, other characters, an unknown prefix).
    pub fn parse(s: &str) -> Option<KeyTag> {
        let lower = s.to_ascii_lowercase();
        let (region, hex) = match Region::ALL
            .into_iter()
            .find(|r| lower.starts_with(r.prefix()))
        {
            Some(r) => (Some(r), &lower[r.prefix().len()..]),
            None => (None, lower.as_str()),
        };
        if hex.len() != TAG_HEX_LEN || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        Some(KeyTag {
            region,
            text: lower,
        })
    }

    /// The region of `s` when `s` is already a key tag's canonical text
    /// (lower case; `Some(None)` for a global key), read without
    /// allocating; `None` when it is another spelling or no key tag at all
    /// (then [`KeyTag::parse`] says which).
    pub fn canonical_region(s: &str) -> Option<Option<Region>> {
        if s.bytes().any(|b| b.is_ascii_uppercase()) {
            return None;
        }
        let (region, hex) = match Region::ALL.into_iter().find(|r| s.starts_with(r.prefix())) {
            Some(r) => (Some(r), &s[r.prefix().len()..]),
            None => (None, s),
        };
        (hex.len() == TAG_HEX_LEN && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(region)
    }

    /// The tag of a new key made in `region` from its random bytes.
    pub fn from_random(region: Option<Region>, random: &[u8]) -> Result<KeyTag> {
        let hex = hex::encode(random);
        if hex.len() != TAG_HEX_LEN {
            return Err(Error::Internal(format!(
                "a key tag needs {} random bytes, got {}",
                TAG_HEX_LEN / 2,
                random.len()
            )));
        }
        Ok(KeyTag {
            region,
            text: format!("{}{hex}", region.map_or("", Region::prefix)),
        })
    }

    /// The canonical text (the stored key uid).
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The region the key is isolated in; `None` for a global key.
    pub fn region(&self) -> Option<Region> {
        self.region
    }

    /// Whether a service configured for `served` (`naver.region`; `None`:
    /// the global address) may serve this key. Global keys are served
    /// everywhere: NAVER turned every key made before region isolation into
    /// a global key "with no change to the APIs you are using", and an
    /// installation that starts to name a region keeps serving the keys it
    /// already has. A key isolated in a region is served only by a service
    /// of that region.
    pub fn served_by(&self, served: Option<Region>) -> bool {
        self.region.is_none() || self.region == served
    }

    /// [`KeyTag::served_by`] as the 400 NAVER documents for a call to
    /// another region's address.
    pub fn check_served_by(&self, served: Option<Region>) -> Result<()> {
        Self::check_region_served(self.region, served)
    }

    /// [`KeyTag::check_served_by`] for a tag isolated in `region`.
    pub fn check_region_served(region: Option<Region>, served: Option<Region>) -> Result<()> {
        if region.is_none() || region == served {
            return Ok(());
        }
        let here = served.map_or_else(
            || "the global address".to_string(),
            |r| format!("region {r}"),
        );
        Err(Error::InvalidInput(format!(
            "the key is isolated in region {} and this is {here}: call it at its region's address",
            region.map_or("global", Region::as_str)
        )))
    }
}

impl std::fmt::Display for KeyTag {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEX: &str = "f3a1c2d4e5b6978812345678abcdef0123456789abcdef0123456789abcdef01";

    #[test]
    fn canonical_region_reads_only_canonical_tags() {
        assert_eq!(KeyTag::canonical_region(HEX), Some(None));
        assert_eq!(
            KeyTag::canonical_region(&format!("kr-{HEX}")),
            Some(Some(Region::Kr))
        );
        assert_eq!(
            KeyTag::canonical_region(&format!("jpn-{HEX}")),
            Some(Some(Region::Jpn))
        );
        // Other spellings of a tag: parse them.
        assert_eq!(KeyTag::canonical_region(&HEX.to_uppercase()), None);
        assert_eq!(KeyTag::canonical_region(&format!("KR-{HEX}")), None);
        // No tag at all.
        assert_eq!(KeyTag::canonical_region(&HEX[1..]), None);
        assert_eq!(KeyTag::canonical_region(&format!("us-{HEX}")), None);
        assert_eq!(KeyTag::canonical_region(&format!("{}g", &HEX[1..])), None);
        // Whenever it answers, it agrees with parse.
        for s in [HEX.to_string(), format!("kr-{HEX}"), format!("jpn-{HEX}")] {
            let t = KeyTag::parse(&s).unwrap();
            assert_eq!(t.as_str(), s);
            assert_eq!(KeyTag::canonical_region(&s), Some(t.region()));
        }
    }

    /// NAVER (v3 `issueKeyTokens`, `keyTag`): "리전 격리 키는 리전 접두어(예:
    /// kr-, jpn-)가 붙음 ... 리전 접두어와 16진 문자의 대소문자는 구분하지
    /// 않음. 길이: 64 ~ 68" (region-isolated keys carry a region prefix;
    /// prefix and hex are not case-sensitive; 64 to 68 characters).
    #[test]
    fn prefix_and_hex_in_any_case() {
        let plain = KeyTag::parse(HEX).unwrap();
        assert_eq!(plain.region(), None);
        assert_eq!(plain.as_str(), HEX);
        assert_eq!(KeyTag::parse(&HEX.to_uppercase()).unwrap(), plain);

        for (spelling, region) in [
            (format!("kr-{HEX}"), Region::Kr),
            (format!("KR-{}", HEX.to_uppercase()), Region::Kr),
            (format!("Kr-{HEX}"), Region::Kr),
            (format!("jpn-{HEX}"), Region::Jpn),
            (format!("JPN-{}", HEX.to_uppercase()), Region::Jpn),
            (format!("jPn-{HEX}"), Region::Jpn),
        ] {
            let t = KeyTag::parse(&spelling).unwrap_or_else(|| panic!("{spelling}"));
            assert_eq!(t.region(), Some(region), "{spelling}");
            assert_eq!(t.as_str(), format!("{}{HEX}", region.prefix()));
            assert!((64..=68).contains(&spelling.len()));
        }
    }

    #[test]
    fn what_is_not_a_tag() {
        for s in [
            "",
            &HEX[1..],
            &format!("{HEX}0"),
            &format!("us-{HEX}"),
            &format!("kr{HEX}"),
            &format!("kr-kr-{}", &HEX[3..]),
            &format!("g{}", &HEX[1..]),
            "a1b2c3d4e5f6g7h8i9j0k1l2m3n4o5p6q7r8s9t0u1v2w3x4y5z6",
        ] {
            assert_eq!(KeyTag::parse(s), None, "{s}");
        }
    }

    /// NAVER: "키는 만든 리전의 API 주소로만 호출할 수 있고, 다른 리전의
    /// 주소로 호출하면 400" (a key can be called only at its region's
    /// address; another region's address answers 400).
    #[test]
    fn which_service_serves_which_key() {
        let global = KeyTag::parse(HEX).unwrap();
        let kr = KeyTag::parse(&format!("kr-{HEX}")).unwrap();
        let jpn = KeyTag::parse(&format!("jpn-{HEX}")).unwrap();
        for served in [None, Some(Region::Kr), Some(Region::Jpn)] {
            assert!(global.served_by(served));
        }
        assert!(kr.served_by(Some(Region::Kr)));
        assert!(!kr.served_by(Some(Region::Jpn)));
        assert!(!kr.served_by(None));
        assert!(jpn.served_by(Some(Region::Jpn)));
        assert!(!jpn.served_by(Some(Region::Kr)));
        let e = kr.check_served_by(Some(Region::Jpn)).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e:?}");
    }

    #[test]
    fn new_tags_carry_the_prefix() {
        let r = [0xabu8; 32];
        assert_eq!(
            KeyTag::from_random(Some(Region::Kr), &r).unwrap().as_str(),
            format!("kr-{}", "ab".repeat(32))
        );
        assert_eq!(
            KeyTag::from_random(None, &r).unwrap().as_str(),
            "ab".repeat(32)
        );
        assert!(KeyTag::from_random(None, &r[..31]).is_err());
        for region in [Region::Kr, Region::Jpn] {
            assert_eq!(Region::parse(region.as_str()), Some(region));
            assert_eq!(Region::parse(&region.as_str().to_uppercase()), Some(region));
        }
        assert_eq!(Region::parse("eu"), None);
    }
}
