//! `hsm-kms client naver ...`: NAVER Cloud KMS API 2.0 (`/kms/v1/...`)
//! with account authentication (signature v2, signed by
//! [`hsm_kms::api::auth::ncp::sign`], the code the server verifies with)
//! or token authentication (`x-ncp-ocapi-token`).

use std::io::Read as _;
use std::path::PathBuf;

use base64::Engine as _;
use clap::{Args, Subcommand, ValueEnum};
use hsm_kms::api::auth::ncp::{self, SignatureVersion};
use serde_json::{json, Map, Value};
use zeroize::Zeroizing;

use super::http::Endpoint;
use super::{print_json, ClientError, Outcome};

/// Header of token authentication.
const OCAPI_TOKEN: &str = "x-ncp-ocapi-token";

/// How NAVER calls authenticate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Auth {
    /// Signature v2 with the access key and secret key.
    Account,
    /// The access token (crypto calls only).
    Token,
}

impl Auth {
    /// `--auth` if given; else account authentication when an access key
    /// is configured, token authentication otherwise.
    pub fn resolve(given: Option<Auth>, ep: &Endpoint) -> Auth {
        given.unwrap_or(
            if ep.creds.access_key.is_some() || ep.creds.token.is_none() {
                Auth::Account
            } else {
                Auth::Token
            },
        )
    }
}

/// `hsm-kms client naver [--auth account|token] ...`
#[derive(Args)]
pub struct NaverArgs {
    /// Authentication of crypto calls: `account` (signature v2 with
    /// access_key / secret_key) or `token` (the access token in `token`).
    /// Default: account when an access key is configured, else token.
    /// Management calls always use account authentication.
    #[arg(long, value_enum)]
    auth: Option<Auth>,
    #[command(subcommand)]
    cmd: NaverCmd,
}

/// Bytes to send: as text, as base64, or from a file.
#[derive(Args)]
#[group(required = true, multiple = false)]
pub struct Bytes {
    /// The bytes as text (sent as its UTF-8 bytes).
    #[arg(long)]
    text: Option<String>,
    /// The bytes, base64-encoded.
    #[arg(long)]
    base64: Option<String>,
    /// A file holding the bytes (`-`: standard input).
    #[arg(long)]
    file: Option<PathBuf>,
}

impl Bytes {
    /// The bytes in base64, as NAVER's bodies carry them.
    fn to_base64(&self) -> Result<Zeroizing<String>, ClientError> {
        let b64 = |d: &[u8]| Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(d));
        if let Some(t) = &self.text {
            return Ok(b64(t.as_bytes()));
        }
        if let Some(b) = &self.base64 {
            base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| ClientError::Local(format!("--base64: {e}")))?;
            return Ok(Zeroizing::new(b.clone()));
        }
        let data = Zeroizing::new(read_input(self.file.as_ref())?);
        Ok(b64(&data))
    }
}

/// Reads a file, or standard input for `-` (or no file).
pub fn read_input(file: Option<&PathBuf>) -> Result<Vec<u8>, ClientError> {
    let mut data = Vec::new();
    match file {
        Some(p) if p.as_os_str() != "-" => {
            data = std::fs::read(p)
                .map_err(|e| ClientError::Local(format!("{}: {e}", p.display())))?;
        }
        _ => {
            std::io::stdin()
                .read_to_end(&mut data)
                .map_err(|e| ClientError::Local(format!("standard input: {e}")))?;
        }
    }
    Ok(data)
}

/// Lifetimes of a token set: hours, or `UL` (unlimited).
#[derive(Args)]
pub struct Hours {
    /// Access token lifetime in hours, or UL.
    #[arg(long)]
    access_token_hours: Option<String>,
    /// Refresh token lifetime in hours, or UL.
    #[arg(long)]
    refresh_token_hours: Option<String>,
}

fn hours(v: &Option<String>) -> Option<Value> {
    v.as_ref().map(|h| match h.parse::<i64>() {
        Ok(n) => json!(n),
        Err(_) => json!(h),
    })
}

impl Hours {
    fn body(&self) -> Value {
        let mut m = Map::new();
        if let Some(v) = hours(&self.access_token_hours) {
            m.insert("accessTokenHours".into(), v);
        }
        if let Some(v) = hours(&self.refresh_token_hours) {
            m.insert("refreshTokenHours".into(), v);
        }
        Value::Object(m)
    }
}

/// What a token generator call does.
#[derive(Clone, Copy, ValueEnum)]
pub enum GeneratorAction {
    /// Create the key's token generator.
    Create,
    /// Show it.
    Get,
    /// Delete it (every token of the key stops working).
    Delete,
}

/// NAVER calls.
#[derive(Subcommand)]
pub enum NaverCmd {
    /// Create Key.
    CreateKey {
        /// Key name (3 to 15 letters, digits, '-' or '_', starting with a letter).
        #[arg(long)]
        key_name: String,
        /// AES256, RSA2048 or ECDSA.
        #[arg(long, default_value = "AES256")]
        key_type: String,
        /// Memo.
        #[arg(long, default_value = "")]
        memo: String,
        /// Convergent encryption (AES256 only).
        #[arg(long)]
        convergent: bool,
        /// Automatic rotation every this many days.
        #[arg(long)]
        rotation_period: Option<i64>,
    },
    /// Get Key List.
    ListKeys {
        /// Page number (from 1).
        #[arg(long)]
        page_no: Option<i64>,
        /// Keys per page (1 to 200).
        #[arg(long)]
        page_size: Option<i64>,
    },
    /// Get Key Info.
    GetKey {
        /// Key tag.
        key_tag: String,
    },
    /// Encrypt.
    Encrypt {
        /// Key tag.
        key_tag: String,
        #[command(flatten)]
        plaintext: Bytes,
        /// Context (convergent keys), as text.
        #[arg(long)]
        context: Option<String>,
    },
    /// Decrypt; the answer's `plaintext` is base64.
    Decrypt {
        /// Key tag.
        key_tag: String,
        /// Ciphertext (`ncpkms:v{n}:...`).
        #[arg(long)]
        ciphertext: String,
        /// Context (convergent keys), as text.
        #[arg(long)]
        context: Option<String>,
    },
    /// Re-encrypt under the key's current version.
    ReEncrypt {
        /// Key tag.
        key_tag: String,
        /// Ciphertext (`ncpkms:v{n}:...`).
        #[arg(long)]
        ciphertext: String,
        /// Context (convergent keys), as text.
        #[arg(long)]
        context: Option<String>,
    },
    /// Create Custom Key (a data key, encrypted under the key).
    CreateCustomKey {
        /// Key tag.
        key_tag: String,
        /// Also answer the data key in plaintext.
        #[arg(long)]
        request_plain_key: bool,
        /// Data key size in bits.
        #[arg(long)]
        bits: Option<u32>,
        /// Context (convergent keys), as text.
        #[arg(long)]
        context: Option<String>,
    },
    /// Sign.
    Sign {
        /// Key tag.
        key_tag: String,
        #[command(flatten)]
        data: Bytes,
    },
    /// Verify; exit code 7 when the signature is not valid.
    Verify {
        /// Key tag.
        key_tag: String,
        #[command(flatten)]
        data: Bytes,
        /// Signature (`ncpkms:v{n}:...`).
        #[arg(long)]
        signature: String,
    },
    /// Get Public Key (PEM).
    GetPubKey {
        /// Key tag.
        key_tag: String,
        /// Key version (default: the current one).
        #[arg(long)]
        key_version: Option<i64>,
    },
    /// Rotate Key: a new current version.
    Rotate {
        /// Key tag.
        key_tag: String,
    },
    /// The key's token generator.
    TokenGenerator {
        /// Key tag.
        key_tag: String,
        /// create, get or delete.
        #[arg(value_enum)]
        action: GeneratorAction,
    },
    /// Token sets: create (account authentication), renew and create an
    /// access token (with the refresh token).
    TokenSet {
        #[command(subcommand)]
        cmd: TokenSetCmd,
    },
}

/// Token-set calls.
#[derive(Subcommand)]
pub enum TokenSetCmd {
    /// Create Token Set: prints an access token and a refresh token.
    Create {
        /// Key tag.
        key_tag: String,
        #[command(flatten)]
        hours: Hours,
    },
    /// Renew Token Set with the refresh token (`refresh_token` /
    /// HSM_KMS_CLIENT_REFRESH_TOKEN).
    Renew {
        /// Key tag.
        key_tag: String,
        #[command(flatten)]
        hours: Hours,
    },
    /// Create Access Token with the refresh token.
    AccessToken {
        /// Key tag.
        key_tag: String,
        /// Access token lifetime in hours, or UL.
        #[arg(long)]
        access_token_hours: Option<String>,
    },
}

/// How one call authenticates.
#[derive(Clone, Copy)]
enum Use {
    /// Signature v2.
    Account,
    /// The `--auth` choice (crypto calls).
    Crypto(Auth),
    /// The refresh token.
    Refresh,
}

/// A key tag or other path segment: letters, digits, `-` and `_`, so it
/// cannot change the path it is put in.
pub fn segment<'a>(s: &'a str, what: &str) -> Result<&'a str, ClientError> {
    if s.is_empty()
        || !s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ClientError::Local(format!(
            "{what} {s:?}: only letters, digits, '-' and '_'"
        )));
    }
    Ok(s)
}

/// The error of a call whose credentials are not configured.
fn missing(ep: &Endpoint, what: &str, fields: &[&str]) -> ClientError {
    let vars: Vec<String> = fields
        .iter()
        .map(|f| format!("{}{}", ep.prefix, f.to_ascii_uppercase()))
        .collect();
    ClientError::Local(format!(
        "{what} needs {} (in the profile, or the variables {})",
        fields.join(" and "),
        vars.join(", ")
    ))
}

/// One NAVER call; the answer's `data` on success.
async fn call(
    ep: &Endpoint,
    how: Use,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<Value, ClientError> {
    let ts;
    let sig;
    let mut headers: Vec<(&str, &str)> = Vec::new();
    match how {
        Use::Account | Use::Crypto(Auth::Account) => {
            let (Some(ak), Some(sk)) = (&ep.creds.access_key, &ep.creds.secret_key) else {
                return Err(missing(
                    ep,
                    "account authentication",
                    &["access_key", "secret_key"],
                ));
            };
            ts = ep.timestamp();
            sig = ncp::sign(
                SignatureVersion::V2,
                sk.as_bytes(),
                method,
                &ep.signed_path(path)?,
                &ts,
                ak,
                None,
            );
            headers.push((ncp::TIMESTAMP, ts.as_str()));
            headers.push((ncp::ACCESS_KEY, ak.as_str()));
            headers.push((ncp::SIGNATURE_V2, sig.as_str()));
        }
        Use::Crypto(Auth::Token) => {
            let t = ep
                .creds
                .token
                .as_deref()
                .ok_or_else(|| missing(ep, "token authentication", &["token"]))?;
            headers.push((OCAPI_TOKEN, t));
        }
        Use::Refresh => {
            let t = ep
                .creds
                .refresh_token
                .as_deref()
                .ok_or_else(|| missing(ep, "this call", &["refresh_token"]))?;
            headers.push((OCAPI_TOKEN, t));
        }
    }
    let r = ep.send(method, path, path, &headers, body).await?;
    if (200..300).contains(&r.status) && r.body["code"] == "SUCCESS" {
        let mut body = r.body;
        return Ok(body["data"].take());
    }
    let message = r.body["error"]["message"]
        .as_str()
        .or_else(|| r.body["msg"].as_str())
        .or_else(|| r.body["error"]["details"].as_str())
        .unwrap_or("no NAVER envelope in the answer")
        .to_string();
    Err(ClientError::Refused {
        method: method.to_string(),
        path: path.to_string(),
        status: r.status,
        message,
        body: r.body,
    })
}

fn context_b64(c: &Option<String>) -> Option<String> {
    c.as_ref()
        .map(|t| base64::engine::general_purpose::STANDARD.encode(t.as_bytes()))
}

fn with_context(mut body: Value, context_b64: Option<&str>) -> Value {
    if let Some(c) = context_b64 {
        body["context"] = json!(c);
    }
    body
}

/// Decrypts one ciphertext; returns the plaintext in base64 (migrate).
pub async fn decrypt(
    ep: &Endpoint,
    auth: Auth,
    key_tag: &str,
    ciphertext: &str,
    context_b64: Option<&str>,
) -> Result<Zeroizing<String>, ClientError> {
    let path = format!("/kms/v1/keys/{}/decrypt", segment(key_tag, "key tag")?);
    let body = with_context(json!({ "ciphertext": ciphertext }), context_b64);
    let mut data = call(ep, Use::Crypto(auth), "POST", &path, Some(&body)).await?;
    match data["plaintext"].take() {
        Value::String(s) => Ok(Zeroizing::new(s)),
        _ => Err(ClientError::Local(
            "Decrypt answered no plaintext string".into(),
        )),
    }
}

/// Encrypts one plaintext given in base64; returns the ciphertext (migrate).
pub async fn encrypt(
    ep: &Endpoint,
    auth: Auth,
    key_tag: &str,
    plaintext_b64: &str,
    context_b64: Option<&str>,
) -> Result<String, ClientError> {
    let path = format!("/kms/v1/keys/{}/encrypt", segment(key_tag, "key tag")?);
    let body = with_context(json!({ "plaintext": plaintext_b64 }), context_b64);
    let data = call(ep, Use::Crypto(auth), "POST", &path, Some(&body)).await?;
    data["ciphertext"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| ClientError::Local("Encrypt answered no ciphertext string".into()))
}

/// Runs `hsm-kms client naver ...`.
pub async fn run(ep: &Endpoint, args: &NaverArgs) -> Result<Outcome, ClientError> {
    let auth = Auth::resolve(args.auth, ep);
    let crypto = Use::Crypto(auth);
    let key = |t: &str| -> Result<String, ClientError> {
        Ok(format!("/kms/v1/keys/{}", segment(t, "key tag")?))
    };
    let data = match &args.cmd {
        NaverCmd::CreateKey {
            key_name,
            key_type,
            memo,
            convergent,
            rotation_period,
        } => {
            let mut body = json!({
                "keyName": key_name,
                "keyType": key_type,
                "memo": memo,
                "isConvergent": convergent,
                "isAutoRotation": rotation_period.is_some(),
            });
            if let Some(p) = rotation_period {
                body["rotationPeriod"] = json!(p);
            }
            call(ep, Use::Account, "POST", "/kms/v1/keys", Some(&body)).await?
        }
        NaverCmd::ListKeys { page_no, page_size } => {
            let mut q = Vec::new();
            if let Some(n) = page_no {
                q.push(format!("pageNo={n}"));
            }
            if let Some(n) = page_size {
                q.push(format!("pageSize={n}"));
            }
            let path = if q.is_empty() {
                "/kms/v1/keys".to_string()
            } else {
                format!("/kms/v1/keys?{}", q.join("&"))
            };
            call(ep, Use::Account, "GET", &path, None).await?
        }
        NaverCmd::GetKey { key_tag } => call(ep, Use::Account, "GET", &key(key_tag)?, None).await?,
        NaverCmd::Encrypt {
            key_tag,
            plaintext,
            context,
        } => {
            let pt = plaintext.to_base64()?;
            let body = with_context(
                json!({ "plaintext": pt.as_str() }),
                context_b64(context).as_deref(),
            );
            let path = format!("{}/encrypt", key(key_tag)?);
            call(ep, crypto, "POST", &path, Some(&body)).await?
        }
        NaverCmd::Decrypt {
            key_tag,
            ciphertext,
            context,
        } => {
            let body = with_context(
                json!({ "ciphertext": ciphertext }),
                context_b64(context).as_deref(),
            );
            let path = format!("{}/decrypt", key(key_tag)?);
            call(ep, crypto, "POST", &path, Some(&body)).await?
        }
        NaverCmd::ReEncrypt {
            key_tag,
            ciphertext,
            context,
        } => {
            let body = with_context(
                json!({ "ciphertext": ciphertext }),
                context_b64(context).as_deref(),
            );
            let path = format!("{}/re-encrypt", key(key_tag)?);
            call(ep, crypto, "POST", &path, Some(&body)).await?
        }
        NaverCmd::CreateCustomKey {
            key_tag,
            request_plain_key,
            bits,
            context,
        } => {
            let mut body = with_context(
                json!({ "requestPlainKey": request_plain_key }),
                context_b64(context).as_deref(),
            );
            if let Some(b) = bits {
                body["bits"] = json!(b);
            }
            let path = format!("{}/create-custom-key", key(key_tag)?);
            call(ep, crypto, "POST", &path, Some(&body)).await?
        }
        NaverCmd::Sign { key_tag, data } => {
            let d = data.to_base64()?;
            let path = format!("{}/sign", key(key_tag)?);
            call(
                ep,
                crypto,
                "POST",
                &path,
                Some(&json!({ "data": d.as_str() })),
            )
            .await?
        }
        NaverCmd::Verify {
            key_tag,
            data,
            signature,
        } => {
            let d = data.to_base64()?;
            let path = format!("{}/verify", key(key_tag)?);
            let body = json!({ "data": d.as_str(), "signature": signature });
            let answer = call(ep, crypto, "POST", &path, Some(&body)).await?;
            print_json(&answer);
            return Ok(if answer["valid"] == true {
                Outcome::Success
            } else {
                Outcome::Invalid
            });
        }
        NaverCmd::GetPubKey {
            key_tag,
            key_version,
        } => {
            let body = match key_version {
                Some(v) => json!({ "keyVersion": v }),
                None => json!({}),
            };
            let path = format!("{}/get-pub-key", key(key_tag)?);
            call(ep, crypto, "POST", &path, Some(&body)).await?
        }
        NaverCmd::Rotate { key_tag } => {
            let path = format!("{}/rotate", key(key_tag)?);
            call(ep, Use::Account, "POST", &path, None).await?
        }
        NaverCmd::TokenGenerator { key_tag, action } => {
            let path = format!("{}/token-generator", key(key_tag)?);
            let method = match action {
                GeneratorAction::Create => "POST",
                GeneratorAction::Get => "GET",
                GeneratorAction::Delete => "DELETE",
            };
            call(ep, Use::Account, method, &path, None).await?
        }
        NaverCmd::TokenSet { cmd } => match cmd {
            TokenSetCmd::Create { key_tag, hours } => {
                let path = format!("{}/token-set", key(key_tag)?);
                call(ep, Use::Account, "POST", &path, Some(&hours.body())).await?
            }
            TokenSetCmd::Renew { key_tag, hours } => {
                let path = format!("{}/token-set", key(key_tag)?);
                call(ep, Use::Refresh, "PUT", &path, Some(&hours.body())).await?
            }
            TokenSetCmd::AccessToken {
                key_tag,
                access_token_hours,
            } => {
                let path = format!("{}/access-token", key(key_tag)?);
                let mut body = json!({});
                if let Some(v) = hours(access_token_hours) {
                    body["accessTokenHours"] = v;
                }
                call(ep, Use::Refresh, "POST", &path, Some(&body)).await?
            }
        },
    };
    print_json(&data);
    Ok(Outcome::Success)
}
