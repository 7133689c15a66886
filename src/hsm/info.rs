//! What the module and the token say about themselves (`C_GetInfo`,
//! `C_GetSlotInfo`, `C_GetTokenInfo`), for attestation reports.

use super::{Hsm, OpClass, Result};

/// The PKCS#11 module, as `C_GetInfo` describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ModuleInfo {
    /// PKCS#11 (Cryptoki) version the module implements, `major.minor`.
    pub cryptoki_version: String,
    /// `manufacturerID`.
    pub manufacturer: String,
    /// `libraryDescription`.
    pub description: String,
    /// `libraryVersion`, `major.minor`.
    pub library_version: String,
}

/// The slot and its token, as `C_GetSlotInfo` and `C_GetTokenInfo` describe
/// them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenInfo {
    /// Slot id.
    pub slot_id: u64,
    /// `slotDescription`.
    pub slot_description: String,
    /// Token label.
    pub label: String,
    /// Token `manufacturerID`.
    pub manufacturer: String,
    /// Token model.
    pub model: String,
    /// Token serial number.
    pub serial: String,
    /// Token hardware version, `major.minor`.
    pub hardware_version: String,
    /// Token firmware version, `major.minor`.
    pub firmware_version: String,
    /// The token's `CKF_*` flags that are set, without the prefix
    /// (`RNG`, `LOGIN_REQUIRED`, `TOKEN_INITIALIZED`, ...).
    pub flags: Vec<String>,
}

impl Hsm {
    /// The module's and the token's information (on the blocking pool,
    /// like every PKCS#11 call).
    pub async fn describe(&self) -> Result<(ModuleInfo, TokenInfo)> {
        self.run(OpClass::Symmetric, |s| {
            Ok((s.hsm.module_info()?, s.hsm.token_info()?))
        })
        .await
    }

    /// The module's `C_GetInfo`.
    fn module_info(&self) -> Result<ModuleInfo> {
        let m = self.module()?;
        let i = m.ctx.get_library_info()?;
        Ok(ModuleInfo {
            cryptoki_version: i.cryptoki_version().to_string(),
            manufacturer: i.manufacturer_id().trim_end().to_string(),
            description: i.library_description().trim_end().to_string(),
            library_version: i.library_version().to_string(),
        })
    }

    /// The slot's and the token's information, flags included.
    fn token_info(&self) -> Result<TokenInfo> {
        let m = self.module()?;
        let slot = m.ctx.get_slot_info(m.slot)?;
        let t = m.ctx.get_token_info(m.slot)?;
        let flags = [
            ("RNG", t.rng()),
            ("WRITE_PROTECTED", t.write_protected()),
            ("LOGIN_REQUIRED", t.login_required()),
            ("USER_PIN_INITIALIZED", t.user_pin_initialized()),
            ("RESTORE_KEY_NOT_NEEDED", t.restore_key_not_needed()),
            ("CLOCK_ON_TOKEN", t.clock_on_token()),
            (
                "PROTECTED_AUTHENTICATION_PATH",
                t.protected_authentication_path(),
            ),
            ("DUAL_CRYPTO_OPERATIONS", t.dual_crypto_operations()),
            ("TOKEN_INITIALIZED", t.token_initialized()),
            ("SECONDARY_AUTHENTICATION", t.secondary_authentication()),
            ("USER_PIN_COUNT_LOW", t.user_pin_count_low()),
            ("USER_PIN_FINAL_TRY", t.user_pin_final_try()),
            ("USER_PIN_LOCKED", t.user_pin_locked()),
            ("USER_PIN_TO_BE_CHANGED", t.user_pin_to_be_changed()),
            ("SO_PIN_COUNT_LOW", t.so_pin_count_low()),
            ("SO_PIN_FINAL_TRY", t.so_pin_final_try()),
            ("SO_PIN_LOCKED", t.so_pin_locked()),
            ("SO_PIN_TO_BE_CHANGED", t.so_pin_to_be_changed()),
            ("ERROR_STATE", t.error_state()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(name, _)| name.to_string())
        .collect();
        Ok(TokenInfo {
            slot_id: m.slot.id(),
            slot_description: slot.slot_description().trim_end().to_string(),
            label: t.label().trim_end().to_string(),
            manufacturer: t.manufacturer_id().trim_end().to_string(),
            model: t.model().trim_end().to_string(),
            serial: t.serial_number().trim_end().to_string(),
            hardware_version: t.hardware_version().to_string(),
            firmware_version: t.firmware_version().to_string(),
            flags,
        })
    }
}
