//! Where the client's credentials come from, never the command line:
//!
//! 1. a profile file, TOML with one table per profile, readable and
//!    writable by its owner only (mode 0600: any group or other bit and
//!    the file is refused, as ssh does with keys);
//! 2. `{PREFIX}{FIELD}` environment variables, which override the
//!    profile field by field (`HSM_KMS_CLIENT_` for `naver` / `nhn`,
//!    `HSM_KMS_SOURCE_` and `HSM_KMS_TARGET_` for the two ends of
//!    `migrate`).
//!
//! ```toml
//! [default]
//! url = "http://127.0.0.1:8080"
//! access_key = "..."
//! secret_key = "..."
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use zeroize::Zeroize;

use super::http::Endpoint;
use super::ClientError;

/// Variables of `hsm-kms client naver|nhn`.
pub const CLIENT_PREFIX: &str = "HSM_KMS_CLIENT_";
/// Variables of the old service in `migrate`.
pub const SOURCE_PREFIX: &str = "HSM_KMS_SOURCE_";
/// Variables of hsm-kms in `migrate`.
pub const TARGET_PREFIX: &str = "HSM_KMS_TARGET_";

/// One end's credentials and connection settings. The field names are
/// the profile's keys and, upper-cased after the prefix, the variables'.
#[derive(Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// Base URL (`https://ocapi.apigw.ntruss.com`,
    /// `https://api-keymanager.nhncloudservice.com`, `http://127.0.0.1:8080`).
    pub url: Option<String>,
    /// NAVER: access key id (account authentication).
    pub access_key: Option<String>,
    /// NAVER: secret key (account authentication).
    pub secret_key: Option<String>,
    /// NAVER: access token (`x-ncp-ocapi-token` on crypto calls).
    pub token: Option<String>,
    /// NAVER: refresh token (Renew Token Set, Create Access Token).
    pub refresh_token: Option<String>,
    /// NHN: appkey (in every path).
    pub appkey: Option<String>,
    /// NHN: User Access Key id (`X-TC-AUTHENTICATION-ID`).
    pub user_access_key_id: Option<String>,
    /// NHN: Secret Access Key (`X-TC-AUTHENTICATION-SECRET`).
    pub secret_access_key: Option<String>,
    /// NHN: MAC address sent in `X-TOAST-CLIENT-MAC-ADDR`.
    pub mac: Option<String>,
    /// NHN: client certificate, a PKCS#12 file (as `admin nhn
    /// issue-certificate` and NHN's console give them) or a PEM file with
    /// the private key and the certificates.
    pub cert: Option<PathBuf>,
    /// NHN: the PKCS#12 file's password.
    pub cert_password: Option<String>,
    /// PEM file of CA certificates to trust besides the built-in roots
    /// (a server with a private CA).
    pub ca_file: Option<PathBuf>,
}

impl Drop for Credentials {
    fn drop(&mut self) {
        for s in [
            &mut self.secret_key,
            &mut self.token,
            &mut self.refresh_token,
            &mut self.appkey,
            &mut self.secret_access_key,
            &mut self.cert_password,
        ]
        .into_iter()
        .flatten()
        {
            s.zeroize();
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let set = |o: &Option<String>| o.as_ref().map(|_| "<set>");
        f.debug_struct("Credentials")
            .field("url", &self.url)
            .field("access_key", &self.access_key)
            .field("secret_key", &set(&self.secret_key))
            .field("token", &set(&self.token))
            .field("refresh_token", &set(&self.refresh_token))
            .field("appkey", &set(&self.appkey))
            .field("user_access_key_id", &self.user_access_key_id)
            .field("secret_access_key", &set(&self.secret_access_key))
            .field("mac", &self.mac)
            .field("cert", &self.cert)
            .field("cert_password", &set(&self.cert_password))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl Credentials {
    /// Overrides fields from `{prefix}{FIELD}` variables (empty ones are
    /// ignored).
    fn apply_env(&mut self, prefix: &str) {
        let var = |name: &str| {
            std::env::var(format!("{prefix}{name}"))
                .ok()
                .filter(|v| !v.is_empty())
        };
        let strings: [(&str, &mut Option<String>); 10] = [
            ("URL", &mut self.url),
            ("ACCESS_KEY", &mut self.access_key),
            ("SECRET_KEY", &mut self.secret_key),
            ("TOKEN", &mut self.token),
            ("REFRESH_TOKEN", &mut self.refresh_token),
            ("APPKEY", &mut self.appkey),
            ("USER_ACCESS_KEY_ID", &mut self.user_access_key_id),
            ("SECRET_ACCESS_KEY", &mut self.secret_access_key),
            ("MAC", &mut self.mac),
            ("CERT_PASSWORD", &mut self.cert_password),
        ];
        for (name, field) in strings {
            if let Some(v) = var(name) {
                if let Some(old) = field.as_mut() {
                    old.zeroize();
                }
                *field = Some(v);
            }
        }
        if let Some(v) = var("CERT") {
            self.cert = Some(PathBuf::from(v));
        }
        if let Some(v) = var("CA_FILE") {
            self.ca_file = Some(PathBuf::from(v));
        }
    }
}

/// Which profile and variables one end of a command reads.
pub struct Selection<'a> {
    /// `--profile-file` / `HSM_KMS_CLIENT_PROFILE_FILE`.
    pub file: Option<&'a Path>,
    /// Profile name, when one was asked for.
    pub profile: Option<&'a str>,
    /// Variable prefix.
    pub prefix: &'a str,
    /// `--url`, over the profile and the variables.
    pub url: Option<&'a str>,
}

fn default_file() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config/hsm-kms/profiles.toml"))
}

/// Refuses a profile file that anyone but its owner may read or write.
#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), ClientError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path)
        .map_err(|e| ClientError::Local(format!("profile file {}: {e}", path.display())))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ClientError::Local(format!(
            "profile file {} has mode {mode:04o}: it holds secrets, so it must be readable by \
             its owner only (chmod 600 {})",
            path.display(),
            path.display()
        )));
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_path: &Path) -> Result<(), ClientError> {
    Ok(())
}

/// The credentials of one end: the profile (if a file exists or was
/// named), then the variables.
pub fn credentials(sel: &Selection<'_>) -> Result<Credentials, ClientError> {
    let explicit_file = sel.file.map(Path::to_path_buf);
    let path = explicit_file.clone().or_else(default_file);
    let mut creds = Credentials::default();
    match path {
        Some(path) if path.exists() => {
            check_mode(&path)?;
            let text = zeroize::Zeroizing::new(std::fs::read_to_string(&path).map_err(|e| {
                ClientError::Local(format!("profile file {}: {e}", path.display()))
            })?);
            let mut profiles: HashMap<String, Credentials> =
                toml::from_str(&text).map_err(|e| {
                    ClientError::Local(format!("profile file {}: {}", path.display(), e.message()))
                })?;
            let name = sel.profile.unwrap_or("default");
            match profiles.remove(name) {
                Some(p) => creds = p,
                None if sel.profile.is_some() => {
                    return Err(ClientError::Local(format!(
                        "profile file {} has no profile [{name}]",
                        path.display()
                    )))
                }
                None => {}
            }
        }
        _ if explicit_file.is_some() => {
            return Err(ClientError::Local(format!(
                "profile file {} does not exist",
                sel.file
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            )))
        }
        _ if sel.profile.is_some() => {
            return Err(ClientError::Local(format!(
                "profile {} asked for, and there is no profile file (--profile-file or \
                 $HOME/.config/hsm-kms/profiles.toml)",
                sel.profile.unwrap_or_default()
            )))
        }
        _ => {}
    }
    creds.apply_env(sel.prefix);
    if let Some(u) = sel.url {
        creds.url = Some(u.to_string());
    }
    Ok(creds)
}

/// The endpoint of one end: its credentials and an HTTP client.
pub fn endpoint(sel: &Selection<'_>, timeout: Duration) -> Result<Endpoint, ClientError> {
    let creds = credentials(sel)?;
    Endpoint::new(creds, sel.prefix, timeout)
}
