//! `hsm-kms client nhn ...`: NHN Cloud Secure Key Manager v1.2 under
//! `/keymanager/v1.2/appkey/{appkey}/...`, with the User Access Key
//! headers when configured, the `X-TOAST-CLIENT-MAC-ADDR` header and a
//! client certificate (PKCS#12) for key stores that check them. Messages
//! name the appkey by its fingerprint only.

use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};
use hsm_kms::api::auth::nhn::{MAC_HEADER, SECRET_ACCESS_KEY_HEADER, USER_ACCESS_KEY_HEADER};
use hsm_kms::core::nhn::appkey_fingerprint;
use serde_json::{json, Value};
use zeroize::Zeroizing;

use super::http::Endpoint;
use super::naver::{read_input, segment};
use super::{print_json, ClientError, Outcome};

/// `hsm-kms client nhn [--mac MAC] [--no-user-access-key] ...`
#[derive(Args)]
pub struct NhnArgs {
    /// MAC address for X-TOAST-CLIENT-MAC-ADDR (over the profile's `mac`).
    #[arg(long)]
    mac: Option<String>,
    /// Send no User Access Key even when one is configured (data calls of
    /// a project that does not ask for one, as applications make them).
    #[arg(long)]
    no_user_access_key: bool,
    #[command(subcommand)]
    cmd: NhnCmd,
}

/// Text to send: given, or from a file (UTF-8).
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Text {
    /// The text.
    #[arg(long)]
    text: Option<String>,
    /// A file holding the text (`-`: standard input).
    #[arg(long)]
    file: Option<PathBuf>,
}

impl Text {
    fn read(&self) -> Result<Zeroizing<String>, ClientError> {
        if let Some(t) = &self.text {
            return Ok(Zeroizing::new(t.clone()));
        }
        let data = read_input(self.file.as_ref())?;
        String::from_utf8(data)
            .map(Zeroizing::new)
            .map_err(|_| ClientError::Local("the input is not UTF-8 text".into()))
    }
}

/// A secret's value: from an environment variable or a file, never argv.
#[derive(Args)]
#[group(multiple = false)]
pub struct SecretValue {
    /// Environment variable holding the value.
    #[arg(long)]
    value_env: Option<String>,
    /// File holding the value (its whole content, less one final newline).
    #[arg(long)]
    value_file: Option<PathBuf>,
}

impl SecretValue {
    fn read(&self) -> Result<Option<Zeroizing<String>>, ClientError> {
        if let Some(v) = &self.value_env {
            return std::env::var(v)
                .map(|s| Some(Zeroizing::new(s)))
                .map_err(|_| ClientError::Local(format!("{v} is not set")));
        }
        let Some(f) = &self.value_file else {
            return Ok(None);
        };
        let text = std::fs::read_to_string(f)
            .map_err(|e| ClientError::Local(format!("{}: {e}", f.display())))?;
        let text = Zeroizing::new(text);
        Ok(Some(Zeroizing::new(
            text.strip_suffix('\n').unwrap_or(&text).to_string(),
        )))
    }
}

/// Key kinds of Create Key, as the path names them.
#[derive(Clone, Copy, ValueEnum)]
pub enum KeyKind {
    /// Confidential data.
    Secrets,
    /// AES-256.
    SymmetricKeys,
    /// RSA-2048.
    AsymmetricKeys,
}

impl KeyKind {
    fn path(self) -> &'static str {
        match self {
            KeyKind::Secrets => "secrets",
            KeyKind::SymmetricKeys => "symmetric-keys",
            KeyKind::AsymmetricKeys => "asymmetric-keys",
        }
    }
}

/// NHN calls.
#[derive(Subcommand)]
pub enum NhnCmd {
    /// What the server saw of this client (address, MAC header, certificate).
    Confirm,
    /// Read a secret.
    GetSecret {
        /// Key id.
        key_id: String,
    },
    /// Change a secret (a management call).
    UpdateSecret {
        /// Key id.
        key_id: String,
        #[command(flatten)]
        value: SecretValue,
    },
    /// Encrypt text with a symmetric key.
    Encrypt {
        /// Key id.
        key_id: String,
        #[command(flatten)]
        plaintext: Text,
    },
    /// Decrypt with a symmetric key.
    Decrypt {
        /// Key id.
        key_id: String,
        /// Ciphertext (base64).
        #[arg(long)]
        ciphertext: String,
    },
    /// Create a local key (a data key and its ciphertext).
    CreateLocalKey {
        /// Key id.
        key_id: String,
    },
    /// Read a symmetric key back (key stores with the export policy on).
    SymmetricKey {
        /// Key id.
        key_id: String,
        /// Key version (0 or absent: the current one).
        #[arg(long)]
        key_version: Option<i64>,
    },
    /// Sign text with an asymmetric key.
    Sign {
        /// Key id.
        key_id: String,
        #[command(flatten)]
        plaintext: Text,
    },
    /// Verify a signature; exit code 7 when it is not valid.
    Verify {
        /// Key id.
        key_id: String,
        #[command(flatten)]
        plaintext: Text,
        /// Signature (base64).
        #[arg(long)]
        signature: String,
    },
    /// Read a private key back (key stores with the export policy on).
    PrivateKey {
        /// Key id.
        key_id: String,
        /// Key version (0 or absent: the current one).
        #[arg(long)]
        key_version: Option<i64>,
    },
    /// Read a public key.
    PublicKey {
        /// Key id.
        key_id: String,
        /// Key version (0 or absent: the current one).
        #[arg(long)]
        key_version: Option<i64>,
    },
    /// Create a key in a key store (a management call).
    CreateKey {
        /// secrets, symmetric-keys or asymmetric-keys.
        #[arg(value_enum)]
        kind: KeyKind,
        /// Key store name.
        #[arg(long)]
        key_store: String,
        /// Key name.
        #[arg(long)]
        name: String,
        /// Description.
        #[arg(long)]
        description: Option<String>,
        /// Automatic rotation period in days (keys; 0 = off).
        #[arg(long)]
        auto_rotation_period: Option<i64>,
        #[command(flatten)]
        value: SecretValue,
    },
    /// Ask for a key's deletion (after the waiting period).
    RequestDeletion {
        /// Key id.
        key_id: String,
    },
    /// Delete a key whose deletion was asked for, now.
    DeleteKey {
        /// Key id.
        key_id: String,
    },
    /// List the key stores.
    KeyStores {
        /// With their details.
        #[arg(long)]
        detail: bool,
    },
    /// One key store.
    KeyStore {
        /// Key store id.
        key_store_id: i64,
    },
    /// Keys of a key store.
    Keys {
        /// Key store id.
        key_store_id: i64,
        /// With their details (paged).
        #[arg(long)]
        detail: bool,
        /// SECRET, SYMMETRIC_KEY or ASYMMETRIC_KEY.
        #[arg(long = "type")]
        key_type: Option<String>,
        /// Part of the name.
        #[arg(long)]
        name: Option<String>,
        /// active or inactive.
        #[arg(long)]
        status: Option<String>,
        /// Page number.
        #[arg(long)]
        page_number: Option<i64>,
        /// Page size (10 to 100).
        #[arg(long)]
        page_size: Option<i64>,
    },
    /// One key of a key store.
    Key {
        /// Key store id.
        key_store_id: i64,
        /// Key id.
        key_id: String,
    },
}

/// How one NHN call is made: the endpoint and the switches.
pub struct Nhn<'a> {
    ep: &'a Endpoint,
    mac: Option<String>,
    user_access_key: bool,
}

impl<'a> Nhn<'a> {
    /// Calls on `ep`, with the User Access Key when configured.
    pub fn new(ep: &'a Endpoint, mac: Option<String>, user_access_key: bool) -> Self {
        Nhn {
            mac: mac.or_else(|| ep.creds.mac.clone()),
            ep,
            user_access_key,
        }
    }

    /// One call under the appkey; the answer's `body` on success.
    pub async fn call(
        &self,
        method: &str,
        suffix: &str,
        body: Option<&Value>,
    ) -> Result<Value, ClientError> {
        let appkey = self.ep.creds.appkey.as_deref().ok_or_else(|| {
            ClientError::Local(format!(
                "NHN calls need an appkey (appkey in the profile, or {}APPKEY)",
                self.ep.prefix
            ))
        })?;
        let appkey = segment(appkey, "appkey")?;
        let path = Zeroizing::new(format!("/keymanager/v1.2/appkey/{appkey}{suffix}"));
        let shown = format!(
            "/keymanager/v1.2/appkey/[appkey {}]{suffix}",
            appkey_fingerprint(appkey)
        );
        let mut headers: Vec<(&str, &str)> = Vec::new();
        if self.user_access_key {
            match (
                &self.ep.creds.user_access_key_id,
                &self.ep.creds.secret_access_key,
            ) {
                (Some(id), Some(secret)) => {
                    headers.push((USER_ACCESS_KEY_HEADER, id.as_str()));
                    headers.push((SECRET_ACCESS_KEY_HEADER, secret.as_str()));
                }
                (None, None) => {}
                _ => {
                    return Err(ClientError::Local(format!(
                        "a User Access Key needs both user_access_key_id and secret_access_key \
                         ({}USER_ACCESS_KEY_ID, {}SECRET_ACCESS_KEY)",
                        self.ep.prefix, self.ep.prefix
                    )))
                }
            }
        }
        if let Some(m) = &self.mac {
            headers.push((MAC_HEADER, m.as_str()));
        }
        let r = self.ep.send(method, &path, &shown, &headers, body).await?;
        if (200..300).contains(&r.status) && r.body["header"]["isSuccessful"] == true {
            let mut body = r.body;
            return Ok(body["body"].take());
        }
        let message = r.body["header"]["resultMessage"]
            .as_str()
            .unwrap_or("no NHN envelope in the answer")
            .to_string();
        Err(ClientError::Refused {
            method: method.to_string(),
            path: shown,
            status: r.status,
            message,
            body: r.body,
        })
    }

    /// Decrypts one ciphertext with a symmetric key; returns the plaintext.
    pub async fn decrypt(
        &self,
        key_id: &str,
        ciphertext: &str,
    ) -> Result<Zeroizing<String>, ClientError> {
        let suffix = format!("/symmetric-keys/{}/decrypt", segment(key_id, "key id")?);
        let mut b = self
            .call("POST", &suffix, Some(&json!({ "ciphertext": ciphertext })))
            .await?;
        match b["plaintext"].take() {
            Value::String(s) => Ok(Zeroizing::new(s)),
            _ => Err(ClientError::Local(
                "Decrypt answered no plaintext string".into(),
            )),
        }
    }

    /// Encrypts text with a symmetric key; returns the ciphertext.
    pub async fn encrypt(&self, key_id: &str, plaintext: &str) -> Result<String, ClientError> {
        let suffix = format!("/symmetric-keys/{}/encrypt", segment(key_id, "key id")?);
        let b = self
            .call("POST", &suffix, Some(&json!({ "plaintext": plaintext })))
            .await?;
        b["ciphertext"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::Local("Encrypt answered no ciphertext string".into()))
    }
}

fn version_query(v: &Option<i64>) -> String {
    v.map(|n| format!("?keyVersion={n}")).unwrap_or_default()
}

/// Runs `hsm-kms client nhn ...`.
pub async fn run(ep: &Endpoint, args: &NhnArgs) -> Result<Outcome, ClientError> {
    let nhn = Nhn::new(ep, args.mac.clone(), !args.no_user_access_key);
    let id = |k: &str| -> Result<String, ClientError> { Ok(segment(k, "key id")?.to_string()) };
    let out = match &args.cmd {
        NhnCmd::Confirm => nhn.call("GET", "/confirm", None).await?,
        NhnCmd::GetSecret { key_id } => {
            nhn.call("GET", &format!("/secrets/{}", id(key_id)?), None)
                .await?
        }
        NhnCmd::UpdateSecret { key_id, value } => {
            let v = value.read()?.ok_or_else(|| {
                ClientError::Local(
                    "give the value with --value-env VAR or --value-file PATH".into(),
                )
            })?;
            let body = json!({ "secretValue": v.as_str() });
            nhn.call("PUT", &format!("/secrets/{}", id(key_id)?), Some(&body))
                .await?
        }
        NhnCmd::Encrypt { key_id, plaintext } => {
            let t = plaintext.read()?;
            let body = json!({ "plaintext": t.as_str() });
            let suffix = format!("/symmetric-keys/{}/encrypt", id(key_id)?);
            nhn.call("POST", &suffix, Some(&body)).await?
        }
        NhnCmd::Decrypt { key_id, ciphertext } => {
            let suffix = format!("/symmetric-keys/{}/decrypt", id(key_id)?);
            nhn.call("POST", &suffix, Some(&json!({ "ciphertext": ciphertext })))
                .await?
        }
        NhnCmd::CreateLocalKey { key_id } => {
            let suffix = format!("/symmetric-keys/{}/create-local-key", id(key_id)?);
            nhn.call("POST", &suffix, None).await?
        }
        NhnCmd::SymmetricKey {
            key_id,
            key_version,
        } => {
            let suffix = format!(
                "/symmetric-keys/{}/symmetric-key{}",
                id(key_id)?,
                version_query(key_version)
            );
            nhn.call("GET", &suffix, None).await?
        }
        NhnCmd::Sign { key_id, plaintext } => {
            let t = plaintext.read()?;
            let suffix = format!("/asymmetric-keys/{}/sign", id(key_id)?);
            nhn.call("POST", &suffix, Some(&json!({ "plaintext": t.as_str() })))
                .await?
        }
        NhnCmd::Verify {
            key_id,
            plaintext,
            signature,
        } => {
            let t = plaintext.read()?;
            let suffix = format!("/asymmetric-keys/{}/verify", id(key_id)?);
            let body = json!({ "plaintext": t.as_str(), "signature": signature });
            let answer = nhn.call("POST", &suffix, Some(&body)).await?;
            print_json(&answer);
            return Ok(if answer["result"] == true {
                Outcome::Success
            } else {
                Outcome::Invalid
            });
        }
        NhnCmd::PrivateKey {
            key_id,
            key_version,
        } => {
            let suffix = format!(
                "/asymmetric-keys/{}/privateKey{}",
                id(key_id)?,
                version_query(key_version)
            );
            nhn.call("GET", &suffix, None).await?
        }
        NhnCmd::PublicKey {
            key_id,
            key_version,
        } => {
            let suffix = format!(
                "/asymmetric-keys/{}/publicKey{}",
                id(key_id)?,
                version_query(key_version)
            );
            nhn.call("GET", &suffix, None).await?
        }
        NhnCmd::CreateKey {
            kind,
            key_store,
            name,
            description,
            auto_rotation_period,
            value,
        } => {
            let mut body = json!({ "keyStoreName": key_store, "name": name });
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            if let Some(p) = auto_rotation_period {
                body["autoRotationPeriod"] = json!(p);
            }
            let secret = value.read()?;
            if let Some(v) = &secret {
                body["secretValue"] = json!(v.as_str());
            }
            let suffix = format!("/keys/{}/create", kind.path());
            nhn.call("POST", &suffix, Some(&body)).await?
        }
        NhnCmd::RequestDeletion { key_id } => {
            nhn.call("PUT", &format!("/keys/{}/delete", id(key_id)?), None)
                .await?
        }
        NhnCmd::DeleteKey { key_id } => {
            nhn.call("DELETE", &format!("/keys/{}", id(key_id)?), None)
                .await?
        }
        NhnCmd::KeyStores { detail } => {
            let q = if *detail { "?detail=true" } else { "" };
            nhn.call("GET", &format!("/keystores{q}"), None).await?
        }
        NhnCmd::KeyStore { key_store_id } => {
            nhn.call("GET", &format!("/keystores/{key_store_id}"), None)
                .await?
        }
        NhnCmd::Keys {
            key_store_id,
            detail,
            key_type,
            name,
            status,
            page_number,
            page_size,
        } => {
            let mut url = reqwest::Url::parse("http://query.invalid/")
                .map_err(|e| ClientError::Local(e.to_string()))?;
            {
                let mut q = url.query_pairs_mut();
                if *detail {
                    q.append_pair("detail", "true");
                }
                for (k, v) in [("type", key_type), ("name", name), ("status", status)] {
                    if let Some(v) = v {
                        q.append_pair(k, v);
                    }
                }
                if let Some(n) = page_number {
                    q.append_pair("pageNumber", &n.to_string());
                }
                if let Some(n) = page_size {
                    q.append_pair("pageSize", &n.to_string());
                }
            }
            let q = url
                .query()
                .filter(|q| !q.is_empty())
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            nhn.call("GET", &format!("/keystores/{key_store_id}/keys{q}"), None)
                .await?
        }
        NhnCmd::Key {
            key_store_id,
            key_id,
        } => {
            let suffix = format!("/keystores/{key_store_id}/keys/{}", id(key_id)?);
            nhn.call("GET", &suffix, None).await?
        }
    };
    print_json(&out);
    Ok(Outcome::Success)
}
