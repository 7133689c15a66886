//! Domain types the engine speaks: keys and versions ([`Key`],
//! [`KeyVersion`]), their identifiers ([`KeyUid`], [`KeyId`],
//! [`ObjectRef`]), states and kinds. The store maps its columns onto them
//! (`store/`), the dialects format them (`api/`).
//!
//! What crosses between the layers: `store/` hands the engine these types
//! (it reads `keys` / `key_versions` rows straight into [`Key`] and
//! [`KeyVersion`] in `store/keys.rs`, the one place their columns map, and
//! binds the identifiers in `store/ids.rs`); `api/` sees keys only as
//! [`KeyEntry`](super::KeyEntry), which holds a [`Key`] and its
//! [`KeyVersion`]s, and never imports `store`. The other records the store
//! reads are core types too, each beside the code that uses it (the list
//! is in `store/mod.rs`); their stored names (credential kind and status,
//! token kind, generator and access-key status) are enums read with
//! `TryFrom<String>` (`stored_names!`).

/// A stored name that no variant of the enum reading it knows (a row
/// written by a newer release, or damaged): the row does not read.
#[derive(Debug, thiserror::Error)]
#[error("unknown stored value {0:?}")]
pub struct UnknownValue(pub String);

/// Gives a fieldless enum its stored names: `as_str` (what the store
/// writes) and `TryFrom<String>` (how the store reads the column, with
/// `#[sqlx(try_from = "String")]` on the field).
macro_rules! stored_names {
    ($ty:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// The stored name.
            pub fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $name,)+
                }
            }
        }

        impl TryFrom<String> for $ty {
            type Error = $crate::core::UnknownValue;
            fn try_from(s: String) -> std::result::Result<Self, Self::Error> {
                match s.as_str() {
                    $($name => Ok($ty::$variant),)+
                    _ => Err($crate::core::UnknownValue(s)),
                }
            }
        }
    };
}
pub(crate) use stored_names;

/// Status of a revocable credential: an access key, an NHN User Access
/// Key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccessKeyStatus {
    /// Usable.
    Active,
    /// Revoked; never usable again.
    Revoked,
}
stored_names!(AccessKeyStatus { Active => "active", Revoked => "revoked" });

/// What a key's versions are in the token, for both dialects: the
/// algorithm of the objects each version holds. The store keeps the name
/// in `keys.key_type`; NAVER's `keyType` is the same name (its
/// [`KeyType`](super::KeyType) is the subset it can create), NHN's
/// `SYMMETRIC_KEY` / `ASYMMETRIC_KEY` / `SECRET` map onto it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// AES-256 (GCM), a secret-key object.
    Aes256,
    /// RSA-2048, a key pair.
    Rsa2048,
    /// ECDSA on P-256, a key pair.
    EcdsaP256,
    /// NHN confidential data in a `CKO_DATA` object.
    Secret,
}
stored_names!(Algorithm {
    Aes256 => "AES256",
    Rsa2048 => "RSA2048",
    EcdsaP256 => "ECDSA",
    Secret => "SECRET",
});

impl std::fmt::Display for Algorithm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Algorithm {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// State of a key version's HSM object, for crash consistency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// Row written; the HSM object may or may not exist yet.
    Pending,
    /// HSM object exists and the version is usable.
    Active,
    /// Being destroyed; the HSM object may or may not exist any more.
    Destroying,
    /// HSM object destroyed.
    Destroyed,
}

impl VersionState {
    /// Text stored in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            VersionState::Pending => "pending",
            VersionState::Active => "active",
            VersionState::Destroying => "destroying",
            VersionState::Destroyed => "destroyed",
        }
    }

    /// Parses the stored text; anything unknown reads as `Destroyed` (the
    /// state in which nothing is done with the row).
    pub fn parse(s: &str) -> Self {
        match s {
            "pending" => VersionState::Pending,
            "active" => VersionState::Active,
            "destroying" => VersionState::Destroying,
            _ => VersionState::Destroyed,
        }
    }
}

/// Status of a key. The stored text is NAVER's name (`ENABLE`, `DISABLE`,
/// `REVOKE`, `DELETED`), which the NAVER dialect also sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyStatus {
    /// Usable.
    Enabled,
    /// Disabled by the owner.
    Disabled,
    /// Pending deletion (NAVER `REVOKE`).
    PendingDeletion,
    /// Destroyed; invisible through the APIs.
    Deleted,
}

impl KeyStatus {
    /// The stored text, NAVER's name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyStatus::Enabled => "ENABLE",
            KeyStatus::Disabled => "DISABLE",
            KeyStatus::PendingDeletion => "REVOKE",
            KeyStatus::Deleted => "DELETED",
        }
    }

    /// Parses the stored text; anything unknown reads as `Deleted` (a key
    /// no API shows or uses).
    pub fn parse(s: &str) -> Self {
        match s {
            "ENABLE" => KeyStatus::Enabled,
            "DISABLE" => KeyStatus::Disabled,
            "REVOKE" => KeyStatus::PendingDeletion,
            _ => KeyStatus::Deleted,
        }
    }
}

/// The dialect whose rules a key follows. Both dialects' keys live in one
/// table and one lifecycle; the dialect decides the name's uniqueness
/// (NAVER names are unique in the account, NHN names may repeat), the
/// version limit and what an automatic rotation makes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// NAVER Cloud KMS.
    Naver,
    /// NHN Cloud Secure Key Manager.
    Nhn,
}

impl Dialect {
    /// The stored text.
    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::Naver => "naver",
            Dialect::Nhn => "nhn",
        }
    }

    /// Parses the stored text; anything unknown reads as `Naver` (the
    /// dialect of every key written before the column existed).
    pub fn parse(s: &str) -> Self {
        match s {
            "nhn" => Dialect::Nhn,
            _ => Dialect::Naver,
        }
    }
}

/// Public identifier of a key: NAVER's `keyTag`, NHN's `keyId`. Shown and
/// serialised as the bare string, as before.
#[derive(
    Debug,
    Clone,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct KeyUid(String);

impl KeyUid {
    /// The identifier's text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The identifier's text, owned.
    pub fn into_string(self) -> String {
        self.0
    }

    /// Bytes held on the heap (key cache accounting).
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl std::ops::Deref for KeyUid {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for KeyUid {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for KeyUid {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for KeyUid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<String> for KeyUid {
    fn from(s: String) -> Self {
        KeyUid(s)
    }
}

impl From<&str> for KeyUid {
    fn from(s: &str) -> Self {
        KeyUid(s.to_string())
    }
}

impl From<&String> for KeyUid {
    fn from(s: &String) -> Self {
        KeyUid(s.clone())
    }
}

impl From<KeyUid> for String {
    fn from(u: KeyUid) -> Self {
        u.0
    }
}

impl PartialEq<str> for KeyUid {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for KeyUid {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<String> for KeyUid {
    fn eq(&self, other: &String) -> bool {
        &self.0 == other
    }
}

/// Internal id of a key: the store's row id (NAVER's numeric `keyId`).
/// Shown and serialised as the bare number.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(transparent)]
pub struct KeyId(i64);

impl KeyId {
    /// Wraps a store row id.
    pub const fn new(id: i64) -> Self {
        KeyId(id)
    }

    /// The number.
    pub const fn get(self) -> i64 {
        self.0
    }
}

impl std::fmt::Display for KeyId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl From<i64> for KeyId {
    fn from(id: i64) -> Self {
        KeyId(id)
    }
}

impl From<KeyId> for i64 {
    fn from(id: KeyId) -> Self {
        id.0
    }
}

/// Reference to a token object: its `CKA_ID` bytes (16 random bytes for a
/// key version; an NHN secret version's label). Which object a key
/// version is, as the store records it and the HSM port looks it up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ObjectRef(Vec<u8>);

impl ObjectRef {
    /// The `CKA_ID` bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The `CKA_ID` bytes, owned.
    pub fn into_vec(self) -> Vec<u8> {
        self.0
    }

    /// Bytes held on the heap (key cache accounting).
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }
}

impl std::ops::Deref for ObjectRef {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for ObjectRef {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl From<Vec<u8>> for ObjectRef {
    fn from(v: Vec<u8>) -> Self {
        ObjectRef(v)
    }
}

impl From<&[u8]> for ObjectRef {
    fn from(v: &[u8]) -> Self {
        ObjectRef(v.to_vec())
    }
}

impl From<ObjectRef> for Vec<u8> {
    fn from(o: ObjectRef) -> Self {
        o.0
    }
}

impl PartialEq<Vec<u8>> for ObjectRef {
    fn eq(&self, other: &Vec<u8>) -> bool {
        &self.0 == other
    }
}

impl PartialEq<ObjectRef> for Vec<u8> {
    fn eq(&self, other: &ObjectRef) -> bool {
        self == &other.0
    }
}

/// A key, as the engine knows it: both dialects' keys, one shape. The
/// store reads and writes it (its row type never leaves `store/`).
#[derive(Debug, Clone)]
pub struct Key {
    /// Internal id (NAVER `keyId`).
    pub id: KeyId,
    /// Public identifier (NAVER `keyTag`, NHN `keyId`).
    pub uid: KeyUid,
    /// Owning account.
    pub account_id: i64,
    /// Name: a NAVER key's is unique in the account, an NHN key's may
    /// repeat.
    pub name: String,
    /// The dialect whose rules the key follows.
    pub dialect: Dialect,
    /// What its versions are in the token.
    pub key_type: Algorithm,
    /// Status.
    pub status: KeyStatus,
    /// Free text.
    pub memo: String,
    /// NAVER `protectionType` as requested (`BASIC` or `COMMON_HSM`).
    pub protection_type: String,
    /// Convergent encryption.
    pub is_convergent: bool,
    /// Automatic rotation on.
    pub is_auto_rotation: bool,
    /// Rotation period in days.
    pub rotation_period: Option<i64>,
    /// Next automatic rotation, ms.
    pub next_rotation_at: Option<i64>,
    /// Scheduled destruction, ms.
    pub destroy_at: Option<i64>,
    /// Status to go back to when a deletion request is cancelled.
    pub status_before_delete: Option<String>,
    /// Last status change, ms.
    pub status_at: i64,
    /// Creation time, ms.
    pub created_at: i64,
    /// Last change, ms.
    pub updated_at: i64,
    /// Bumped by every write of the key; the store's `update_key` writes
    /// only over the revision it read.
    pub revision: i64,
}

/// One version of a key and the token objects that hold it.
#[derive(Debug, Clone)]
pub struct KeyVersion {
    /// Owning key.
    pub key_id: KeyId,
    /// Version number, from 1.
    pub version: i64,
    /// Object state.
    pub state: VersionState,
    /// Usable for crypto when active.
    pub enabled: bool,
    /// `CKA_ID` of the key object (or pair).
    pub cka_id: ObjectRef,
    /// `CKA_ID` of the convergent HMAC key, if any.
    pub aux_cka_id: Option<ObjectRef>,
    /// Last enable/disable, ms.
    pub status_at: i64,
    /// Creation time, ms.
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn algorithms_read_back_their_stored_names_and_refuse_others() {
        for a in [
            Algorithm::Aes256,
            Algorithm::Rsa2048,
            Algorithm::EcdsaP256,
            Algorithm::Secret,
        ] {
            assert_eq!(Algorithm::try_from(a.as_str().to_string()).ok(), Some(a));
            assert_eq!(serde_json::to_value(a).ok(), Some(a.as_str().into()));
        }
        // The stored names are NAVER's keyType values, unchanged.
        assert_eq!(Algorithm::EcdsaP256.as_str(), "ECDSA");
        for bad in ["aes256", "HMAC", "", "RSA4096"] {
            assert!(Algorithm::try_from(bad.to_string()).is_err(), "{bad}");
        }
    }
}
