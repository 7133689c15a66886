//! Errors of the PKCS#11 port.

use cryptoki::error::RvError;

/// An error from the HSM layer. Never carries key material or PINs.
#[derive(Debug, thiserror::Error)]
pub enum HsmError {
    /// The PKCS#11 module could not be loaded or initialised.
    #[error("cannot load PKCS#11 module {path}: {source}")]
    Module {
        /// Module path from the configuration.
        path: String,
        /// Underlying error.
        source: cryptoki::error::Error,
    },
    /// No slot holds a token with the configured label or id.
    #[error("no initialised token matches {0}")]
    TokenNotFound(String),
    /// Login with the user PIN was refused.
    #[error("login to the token failed: {0}")]
    Login(cryptoki::error::Error),
    /// No object with the given CKA_ID exists on the token (a logged-in
    /// `C_FindObjects` found none).
    #[error("object not found on the token")]
    ObjectNotFound,
    /// An object the store names was missing from this process's view of
    /// the token, which is being re-initialised to read the token again
    /// (see `docs/pkcs11-portability.md`, "Late views"); the call runs once
    /// more on the fresh module.
    #[error("object missing from this process's view of the token; re-reading the token")]
    LateView,
    /// A cached object handle is no longer valid (`CKR_OBJECT_HANDLE_INVALID`,
    /// `CKR_KEY_HANDLE_INVALID`); the object is looked up again.
    #[error("object handle no longer valid")]
    StaleHandle,
    /// The token is unusable for now: it is being re-initialised, or a fault
    /// was not repaired in time. Carries the cause, for the log.
    #[error("the HSM is unavailable: {0}")]
    Unavailable(String),
    /// The token rejected a ciphertext (bad tag, wrong length, padding).
    #[error("the token could not decrypt the data")]
    DecryptFailed,
    /// The data is too long or too short for the mechanism.
    #[error("data length out of range for the mechanism")]
    DataLength,
    /// Any other PKCS#11 error.
    #[error("PKCS#11 call failed: {0}")]
    Pkcs11(cryptoki::error::Error),
    /// A value read from the token could not be interpreted.
    #[error("unexpected value from the token: {0}")]
    Malformed(String),
    /// The blocking worker pool failed (a panic in a worker or a shutdown).
    #[error("HSM worker failed: {0}")]
    Worker(String),
}

impl From<cryptoki::error::Error> for HsmError {
    fn from(e: cryptoki::error::Error) -> Self {
        match &e {
            cryptoki::error::Error::Pkcs11(rv, _) => match rv {
                RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange => {
                    HsmError::DecryptFailed
                }
                RvError::DataLenRange => HsmError::DataLength,
                RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid => HsmError::StaleHandle,
                _ => HsmError::Pkcs11(e),
            },
            _ => HsmError::Pkcs11(e),
        }
    }
}

impl HsmError {
    /// The error a caller sees once the port gave up on repairing it: a
    /// token fault (session, login, handle, device) becomes
    /// [`HsmError::Unavailable`]; anything else is unchanged.
    pub fn settled(self) -> HsmError {
        match self {
            HsmError::Unavailable(_) => self,
            e if e.fault().is_some() => HsmError::Unavailable(e.to_string()),
            e => e,
        }
    }
}
