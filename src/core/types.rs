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
