//! Domain types the engine speaks: states and kinds of keys and versions.
//! The store maps its columns onto them (`store/`), the dialects format
//! them (`api/`).

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

/// A key, as the engine knows it: both dialects' keys, one shape. The
/// store reads and writes it (its row type never leaves `store/`).
#[derive(Debug, Clone)]
pub struct Key {
    /// Internal id (NAVER `keyId`).
    pub id: i64,
    /// Public identifier (NAVER `keyTag`, NHN `keyId`).
    pub uid: String,
    /// Owning account.
    pub account_id: i64,
    /// Name: a NAVER key's is unique in the account, an NHN key's may
    /// repeat.
    pub name: String,
    /// The dialect whose rules the key follows.
    pub dialect: Dialect,
    /// `AES256`, `RSA2048` or `ECDSA`.
    pub key_type: String,
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
    pub key_id: i64,
    /// Version number, from 1.
    pub version: i64,
    /// Object state.
    pub state: VersionState,
    /// Usable for crypto when active.
    pub enabled: bool,
    /// `CKA_ID` of the key object (or pair).
    pub cka_id: Vec<u8>,
    /// `CKA_ID` of the convergent HMAC key, if any.
    pub aux_cka_id: Option<Vec<u8>>,
    /// Last enable/disable, ms.
    pub status_at: i64,
    /// Creation time, ms.
    pub created_at: i64,
}
