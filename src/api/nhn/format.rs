//! NHN formats: date-times, the `0x.., 0x..` hex form of keys, base64, and
//! the key / key-store / credential records.

use base64::Engine as _;
use serde_json::{json, Value};

use super::NhnError;
use crate::core::nhn::{CredentialView, NhnKeyStore, NhnKeyView};
use crate::core::Sealed;

/// NHN Cloud's date-times are Korea Standard Time (UTC+09:00, no daylight
/// saving), written without an offset: the API guide's examples
/// (`"creationDatetime": "2025-01-25T12:00:00"`, `"lastChangeDatetime":
/// "2025-01-30T15:00:00.000"`) carry none.
pub const KST: time::UtcOffset = time::macros::offset!(+9);

/// `YYYY-MM-DDTHH:MM:SS.mmm` in KST ([`KST`]), no offset.
pub fn datetime(ms: i64) -> String {
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]"
    );
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .ok()
        .and_then(|t| t.to_offset(KST).format(&fmt).ok())
        .unwrap_or_default()
}

/// Optional date-time.
pub fn opt_datetime(ms: Option<i64>) -> Value {
    ms.map(|m| Value::String(datetime(m)))
        .unwrap_or(Value::Null)
}

/// `0x30, 0x82, ...`.
pub fn hex_list(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("0x{x:02x}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Standard base64.
pub fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// Decodes standard base64, or answers -1001.
pub fn unb64(field: &str, s: &str) -> Result<Vec<u8>, NhnError> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim())
        .map_err(|_| NhnError::invalid_user_data(format!("{field} is not valid base64")))
}

/// NHN's framing of a ciphertext or signature: `version (u32 BE) ||
/// payload`, the payload being `iv || ciphertext || tag` or the signature.
pub fn frame(s: &Sealed) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + s.blob.len());
    out.extend_from_slice(&(s.version as u32).to_be_bytes());
    out.extend_from_slice(&s.blob);
    out
}

/// Splits [`frame`]'s `version || payload`; `None` when shorter than
/// `4 + min_payload`.
pub fn unframe(b: &[u8], min_payload: usize) -> Option<Sealed> {
    if b.len() < 4 + min_payload {
        return None;
    }
    let version = u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as i64;
    Some(Sealed {
        version,
        blob: b[4..].to_vec(),
    })
}

/// Parses an NHN ciphertext: base64 of `version || iv || ct || tag`.
pub fn parse_ciphertext(s: &str) -> Result<Sealed, NhnError> {
    let raw = unb64("ciphertext", s)?;
    unframe(&raw, 12 + 16).ok_or_else(|| NhnError::invalid_user_data("ciphertext is too short"))
}

/// RSA-2048 signature length.
const SIG_LEN: usize = 256;

/// Parses the `signature` of Verify: base64 of `version || signature`
/// (what Sign answers), or of a bare RSA-2048 signature, checked against
/// the current version (`None`).
pub fn parse_signature(s: &str) -> Result<(Option<i64>, Vec<u8>), NhnError> {
    let raw = unb64("signature", s)?;
    // Our signatures carry the version in front; a bare RSA signature is
    // checked against the current version.
    Ok(match raw.len() {
        n if n == 4 + SIG_LEN => {
            let s = unframe(&raw, SIG_LEN)
                .ok_or_else(|| NhnError::invalid_user_data("malformed signature"))?;
            (Some(s.version), s.blob)
        }
        _ => (None, raw),
    })
}

/// `Y` / `N`.
pub fn yn(b: bool) -> &'static str {
    if b {
        "Y"
    } else {
        "N"
    }
}

/// A key record (key list details and key detail).
pub fn key_record(v: &NhnKeyView) -> Value {
    let k = &v.entry.key;
    let m = &v.meta;
    json!({
        "keyId": k.uid,
        "name": v.name(),
        "description": m.description,
        "keyType": m.nhn_type,
        "currentKeyValueVersion": v.current_version(),
        "autoRotationPeriod": v.auto_rotation_period(),
        "nextAutoRotationDate": opt_datetime(v.next_rotation_at()),
        "lastAccessDatetime": opt_datetime(v.last_access_at),
        "deletionDatetime": opt_datetime(k.destroy_at.filter(|_| !v.is_active())),
        "creationUser": m.creation_user,
        "creationDatetime": datetime(k.created_at),
        "lastChangeUser": m.last_change_user,
        "lastChangeDatetime": datetime(k.updated_at),
    })
}

/// A key-store record.
pub fn key_store_record(s: &NhnKeyStore) -> Value {
    json!({
        "keyStoreId": s.id,
        "name": s.name,
        "description": s.description,
        "ip4AuthUse": yn(s.ip4_auth_use),
        "macAuthUse": yn(s.mac_auth_use),
        "certificateAuthUse": yn(s.certificate_auth_use),
        "creationUser": s.creation_user,
        "creationDatetime": datetime(s.created_at),
        "lastChangeUser": s.last_change_user,
        "lastChangeDatetime": datetime(s.updated_at),
    })
}

/// A credential record (IPv4, MAC or certificate detail).
pub fn credential_record(c: &CredentialView) -> Value {
    let r = &c.row;
    let deletion = opt_datetime(
        r.deletion_at
            .filter(|_| r.status != crate::core::nhn::CredentialStatus::Active),
    );
    let mut v = json!({
        "description": r.description,
        "lastAccessDatetime": opt_datetime(c.last_access_at),
        "deletionDatetime": deletion,
        "creationUser": r.creation_user,
        "creationDatetime": datetime(r.created_at),
        "lastChangeUser": r.last_change_user,
        "lastChangeDatetime": datetime(r.updated_at),
    });
    if let Some(o) = v.as_object_mut() {
        if r.kind == crate::core::nhn::CredentialKind::Certificate {
            o.insert("name".into(), json!(r.value));
            // NHN's record has the password; it is shown only in the
            // issuance response and never kept, so the field is null.
            o.insert("password".into(), Value::Null);
            o.insert("expirationDate".into(), opt_datetime(r.expires_at));
        } else {
            o.insert("value".into(), json!(r.value));
        }
    }
    v
}
