//! The six crypto calls shared by API 2.0 and API 1.0: request bodies,
//! decoding and limits, and the engine calls. Each API wraps the results in
//! its own envelope and field names.

use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::{Caller, NoteVersion};
use super::format::{b64, enc, format_sealed, parse_sealed, OneOrMany};
use super::NaverError;
use crate::api::AppState;
use crate::core::KeyUid;
use crate::core::{Error, Sealed, CONTEXT_MAX, ENCRYPT_MAX};

/// A failure of a shared crypto call: the request's shape (already a NAVER
/// 400) or the engine's verdict (each API maps it its own way).
#[derive(Debug)]
pub enum OpError {
    /// The body is malformed: a missing field, bad base64, over a limit.
    Request(NaverError),
    /// The engine refused or failed.
    Engine(Error),
}

impl From<NaverError> for OpError {
    fn from(e: NaverError) -> Self {
        OpError::Request(e)
    }
}

impl From<Error> for OpError {
    fn from(e: Error) -> Self {
        OpError::Engine(e)
    }
}

impl From<OpError> for NaverError {
    fn from(e: OpError) -> Self {
        match e {
            OpError::Request(e) => e,
            OpError::Engine(e) => e.into(),
        }
    }
}

type OpResult<T> = Result<T, OpError>;

fn required<T>(v: Option<T>, field: &str) -> Result<T, NaverError> {
    v.ok_or_else(|| NaverError::bad_request(format!("{field} is required")))
}

/// A `context` as the body sent it. NAVER checks its format only on
/// convergent keys and ignores a string on every other key, whatever it holds
/// (the v3 encrypt page; issue 13 §1); a value that is not a string is a 400
/// on any key.
#[derive(Debug, Clone, Default)]
pub struct RawContext(Option<String>);

impl RawContext {
    /// The `context` member of a body: absent or `null`, or a string; any
    /// other JSON value is a 400.
    pub(crate) fn from_value(v: Option<Value>) -> Result<Self, NaverError> {
        match v {
            None | Some(Value::Null) => Ok(RawContext(None)),
            Some(Value::String(s)) => Ok(RawContext(Some(s))),
            Some(_) => Err(NaverError::bad_request("context must be a string")),
        }
    }

    /// The context of a convergent key: base64 of at most 50 bytes.
    pub fn strict(&self) -> Result<Option<Vec<u8>>, NaverError> {
        match &self.0 {
            None => Ok(None),
            Some(s) => {
                let v = b64("context", s)?;
                if v.len() > CONTEXT_MAX {
                    return Err(NaverError::bad_request("context must be at most 50 bytes"));
                }
                Ok(Some(v))
            }
        }
    }

    /// The context of any other key, which ignores it: the decoded bytes
    /// when they could have been a context before issue 13 (the engine tries
    /// them as the AAD of a ciphertext that does not open without), else
    /// nothing. Never an error.
    pub fn lenient(&self) -> Option<Vec<u8>> {
        self.strict().ok().flatten()
    }

    /// The context for key `tag`: [`Self::strict`] on a convergent key,
    /// [`Self::lenient`] on any other.
    pub async fn for_key(
        &self,
        st: &AppState,
        account_id: i64,
        tag: &KeyUid,
    ) -> OpResult<Option<Vec<u8>>> {
        if self.0.is_none() {
            return Ok(None);
        }
        let e = st.engine.owned_key(account_id, tag).await?;
        if e.key.is_convergent {
            Ok(self.strict()?)
        } else {
            Ok(self.lenient())
        }
    }
}

/// Refuses a list of more than `max` items (`limits.max_batch_items`)
/// before anything is decoded or any token call is made.
fn check_batch(field: &str, items: usize, max: usize) -> Result<(), NaverError> {
    if items > max {
        return Err(NaverError::bad_request(format!(
            "{field} may list at most {max} items; this request has {items}"
        )));
    }
    Ok(())
}

/// Decodes the plaintexts and enforces the batch cap and the 32 KB limit on
/// their total.
pub fn plaintexts(p: &OneOrMany, max_items: usize) -> Result<Vec<Vec<u8>>, NaverError> {
    let items = p.items();
    if items.is_empty() {
        return Err(NaverError::bad_request("plaintext must not be empty"));
    }
    check_batch("plaintext", items.len(), max_items)?;
    let mut out = Vec::with_capacity(items.len());
    let mut total = 0usize;
    for s in items {
        let v = b64("plaintext", s)?;
        total += v.len();
        if total > ENCRYPT_MAX {
            return Err(NaverError::bad_request(
                "plaintext must be at most 32 KB in total",
            ));
        }
        out.push(v);
    }
    Ok(out)
}

fn ciphertexts(c: &OneOrMany, max_items: usize) -> Result<Vec<Sealed>, NaverError> {
    let items = c.items();
    if items.is_empty() {
        return Err(NaverError::bad_request("ciphertext must not be empty"));
    }
    check_batch("ciphertext", items.len(), max_items)?;
    items
        .into_iter()
        .map(|s| parse_sealed("ciphertext", s))
        .collect()
}

/// Encrypt body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncryptBody {
    plaintext: Option<OneOrMany>,
    context: Option<Value>,
}

/// Decrypt and Re-encrypt body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DecryptBody {
    ciphertext: Option<OneOrMany>,
    context: Option<Value>,
}

/// Create Custom Key body.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CustomKeyBody {
    #[serde(default)]
    request_plain_key: bool,
    bits: Option<u32>,
    context: Option<Value>,
}

/// Sign body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignBody {
    data: Option<String>,
}

/// Verify body.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifyBody {
    data: Option<String>,
    signature: Option<String>,
}

/// An Encrypt request, decoded and within its limits.
#[derive(Debug)]
pub struct EncryptRequest {
    /// The request's shape, which the response keeps.
    pub shape: OneOrMany,
    /// The context as sent (its format is checked on convergent keys only).
    pub context: RawContext,
    /// The decoded plaintexts, at most 32 KB in total.
    pub plaintexts: Vec<Vec<u8>>,
}

impl EncryptBody {
    /// Checks and decodes the body: `plaintext` is required, `context` a
    /// string if present, at most `max_items` plaintexts of 32 KB in total.
    pub fn decode(self, max_items: usize) -> Result<EncryptRequest, NaverError> {
        let shape = required(self.plaintext, "plaintext")?;
        let context = RawContext::from_value(self.context)?;
        let plaintexts = plaintexts(&shape, max_items)?;
        Ok(EncryptRequest {
            shape,
            context,
            plaintexts,
        })
    }
}

/// A Decrypt or Re-encrypt request, decoded.
#[derive(Debug)]
pub struct DecryptRequest {
    /// The request's shape, which the response keeps.
    pub shape: OneOrMany,
    /// The context as sent (its format is checked on convergent keys only).
    pub context: RawContext,
    /// The parsed `ncpkms:v{n}:` ciphertexts.
    pub ciphertexts: Vec<Sealed>,
}

impl DecryptBody {
    /// Checks and decodes the body: `ciphertext` is required, each one of
    /// the form `ncpkms:v{n}:{base64}`, at most `max_items` of them.
    pub fn decode(self, max_items: usize) -> Result<DecryptRequest, NaverError> {
        let shape = required(self.ciphertext, "ciphertext")?;
        let context = RawContext::from_value(self.context)?;
        let ciphertexts = ciphertexts(&shape, max_items)?;
        Ok(DecryptRequest {
            shape,
            context,
            ciphertexts,
        })
    }
}

/// A Create Custom Key request, decoded.
#[derive(Debug)]
pub struct CustomKeyRequest {
    /// Whether the answer carries the plaintext key.
    pub request_plain_key: bool,
    /// Key length in bits (the engine checks the value).
    pub bits: u32,
    /// The context as sent (its format is checked on convergent keys only).
    pub context: RawContext,
}

impl CustomKeyBody {
    /// Decodes the body; `bits` defaults to 256.
    pub fn decode(self) -> Result<CustomKeyRequest, NaverError> {
        Ok(CustomKeyRequest {
            request_plain_key: self.request_plain_key,
            bits: self.bits.unwrap_or(256),
            context: RawContext::from_value(self.context)?,
        })
    }
}

impl SignBody {
    /// The decoded `data` (required).
    pub fn decode(self) -> Result<Vec<u8>, NaverError> {
        b64("data", &required(self.data, "data")?)
    }
}

impl VerifyBody {
    /// The decoded `data` and the parsed `ncpkms:v{n}:` signature (both
    /// required).
    pub fn decode(self) -> Result<(Vec<u8>, Sealed), NaverError> {
        let data = b64("data", &required(self.data, "data")?)?;
        let sig = parse_sealed("signature", &required(self.signature, "signature")?)?;
        Ok((data, sig))
    }
}

/// Encrypts every plaintext; the output keeps the input's shape.
pub async fn encrypt(
    st: &AppState,
    auth: &Caller,
    tag: &KeyUid,
    b: EncryptBody,
) -> OpResult<OneOrMany> {
    let r = b.decode(st.config.max_batch_items)?;
    auth.charge_items(r.plaintexts.len())?;
    let context = r.context.for_key(st, auth.account_id, tag).await?;
    let mut out = Vec::with_capacity(r.plaintexts.len());
    for pt in r.plaintexts {
        let sealed = st
            .engine
            .encrypt(auth.account_id, tag, pt, context.clone())
            .await?;
        auth.note_version(sealed.version);
        out.push(format_sealed(&sealed));
    }
    Ok(r.shape.same_shape(out))
}

/// Decrypts every ciphertext; the output keeps the input's shape.
pub async fn decrypt(
    st: &AppState,
    auth: &Caller,
    tag: &KeyUid,
    b: DecryptBody,
) -> OpResult<OneOrMany> {
    let r = b.decode(st.config.max_batch_items)?;
    auth.charge_items(r.ciphertexts.len())?;
    let context = r.context.for_key(st, auth.account_id, tag).await?;
    let mut out = Vec::with_capacity(r.ciphertexts.len());
    for sealed in r.ciphertexts {
        auth.note_version(sealed.version);
        let pt = st
            .engine
            .decrypt(auth.account_id, tag, &sealed, context.clone())
            .await?;
        out.push(enc(&pt));
    }
    Ok(r.shape.same_shape(out))
}

/// Re-encrypts every ciphertext under the newest version.
pub async fn reencrypt(
    st: &AppState,
    auth: &Caller,
    tag: &KeyUid,
    b: DecryptBody,
) -> OpResult<OneOrMany> {
    let r = b.decode(st.config.max_batch_items)?;
    auth.charge_items(r.ciphertexts.len())?;
    let context = r.context.for_key(st, auth.account_id, tag).await?;
    let mut out = Vec::with_capacity(r.ciphertexts.len());
    for sealed in r.ciphertexts {
        let s = st
            .engine
            .reencrypt(auth.account_id, tag, &sealed, context.clone())
            .await?;
        auth.note_version(s.version);
        out.push(format_sealed(&s));
    }
    Ok(r.shape.same_shape(out))
}

/// `{"ciphertext", "key_version", "plaintext"?}` of Create Custom Key.
pub async fn create_custom_key(
    st: &AppState,
    auth: &Caller,
    tag: &KeyUid,
    b: CustomKeyBody,
) -> OpResult<Value> {
    let r = b.decode()?;
    let context = r.context.for_key(st, auth.account_id, tag).await?;
    let ck = st
        .engine
        .create_custom_key(auth.account_id, tag, r.bits, context)
        .await?;
    auth.note_version(ck.sealed.version);
    let mut data =
        json!({"ciphertext": format_sealed(&ck.sealed), "key_version": ck.sealed.version});
    if r.request_plain_key {
        data["plaintext"] = json!(enc(&ck.plaintext));
    }
    Ok(data)
}

/// The `ncpkms:v{n}:` signature of Sign.
pub async fn sign(st: &AppState, auth: &Caller, tag: &KeyUid, b: SignBody) -> OpResult<String> {
    let data = b.decode()?;
    let (version, sig) = st.engine.sign(auth.account_id, tag, data).await?;
    auth.note_version(version);
    Ok(format_sealed(&Sealed { version, blob: sig }))
}

/// The verdict of Verify.
pub async fn verify(st: &AppState, auth: &Caller, tag: &KeyUid, b: VerifyBody) -> OpResult<bool> {
    let (data, sig) = b.decode()?;
    auth.note_version(sig.version);
    Ok(st
        .engine
        .verify(auth.account_id, tag, sig.version, data, sig.blob)
        .await?)
}
