//! Attestation reports: what the token itself says about every key version
//! (its attributes read back with `C_GetAttributeValue`, not the store's
//! word), beside what the store says, with a flag on every disagreement.
//! The report is signed in the token with the `attestation` service key
//! (ECDSA P-256) and can be checked offline with its public key
//! ([`verify`]).
//!
//! Flags are a pure function of one row ([`row_flags`]) and the summary a
//! pure function of the rows ([`summarise`]), so a verifier recomputes both
//! from the signed rows and refuses a report whose own numbers disagree.

mod verify;

pub use verify::{canonical_json, verify, Verified, VerifyError};

use crate::store::{InstallationRepo, KeyRepo, NhnRepo};
use std::collections::{BTreeMap, HashMap};

use base64::Engine as _;
use sha2::{Digest, Sha256};

use super::{service_keys, Algorithm, Error, Inventory, Result};
use crate::hsm::{Hsm, ModuleInfo, ObjectInfo, SignAlg, TokenInfo};
use crate::store::Store;

/// The `format` of the reports this code writes and reads.
pub const FORMAT: &str = "hsm-kms-attestation/1";

/// Label of the attestation key's objects on the token.
pub const ATTESTATION_KEY_LABEL: &str = "hsm-kms/service/attestation";

/// Which key versions a report covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// Every key version, the service keys, the NHN project CA keys and
    /// every `hsm-kms/` object no store row names.
    All,
    /// One NAVER key by its `keyTag`.
    NaverKey(String),
    /// One NHN key by its `keyId`.
    NhnKey(String),
}

impl Scope {
    fn describe(&self) -> String {
        match self {
            Scope::All => "all".into(),
            Scope::NaverKey(t) => format!("naver-key:{t}"),
            Scope::NhnKey(t) => format!("nhn-key:{t}"),
        }
    }
}

/// A report with its signature, as written to a file.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedReport {
    /// The signed body.
    pub report: Report,
    /// The signature over [`canonical_json`] of `report`.
    pub signature: Signature,
}

/// The signature block of a [`SignedReport`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Signature {
    /// Always `ES256`: ECDSA P-256 over the SHA-256 of the signed bytes.
    pub alg: String,
    /// Always `DER`: `value` is an ASN.1 `ECDSA-Sig-Value` (not JOSE's raw
    /// `r || s`).
    pub encoding: String,
    /// The signature, base64 (standard alphabet, padded).
    pub value: String,
    /// SHA-256 (hex) of the signing key's DER SubjectPublicKeyInfo.
    pub public_key_sha256: String,
    /// How the signed bytes are made, for an auditor checking by hand.
    pub signed_bytes: String,
}

/// What [`Signature::signed_bytes`] says.
pub const SIGNED_BYTES: &str = "the report member as compact JSON with object keys sorted \
     (byte order), no whitespace, as `jq -jcS .report` prints it";

/// The body of a report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Report {
    /// [`FORMAT`].
    pub format: String,
    /// When the token was read, RFC 3339 UTC.
    pub generated_at: String,
    /// `all`, `naver-key:{keyTag}` or `nhn-key:{keyId}`.
    pub scope: String,
    /// The installation ids on the token and in the store.
    pub installation: Installation,
    /// The PKCS#11 module.
    pub module: ModuleInfo,
    /// The slot and token.
    pub token: TokenInfo,
    /// The key that signs this report.
    pub attestation_key: AttestationKey,
    /// Counts over `rows`.
    pub summary: Summary,
    /// One row per key version (and, for `all`, per service key, NHN
    /// project CA key and unknown object id).
    pub rows: Vec<Row>,
}

/// Both installation ids (see `core::reconcile`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Installation {
    /// On the token.
    pub token: Option<String>,
    /// In the store.
    pub store: Option<String>,
    /// Both present and equal.
    pub agree: bool,
}

/// The attestation key, as the report names it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttestationKey {
    /// `CKA_LABEL` of its objects.
    pub label: String,
    /// `CKA_ID`, hex.
    pub id: String,
    /// SHA-256 (hex) of its DER SubjectPublicKeyInfo.
    pub public_key_sha256: String,
}

/// Counts over the rows, recomputed by [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Summary {
    /// Rows that are key versions.
    pub versions: u64,
    /// All rows.
    pub rows: u64,
    /// Token objects listed in the rows.
    pub objects: u64,
    /// Flags in all rows, plus one when the installation ids disagree.
    pub flags: u64,
    /// Rows with at least one flag.
    pub flagged_rows: u64,
    /// Flags by code.
    pub by_code: BTreeMap<String, u64>,
}

/// One key version (or service key, CA key, unknown object id): the
/// store's view, the objects it expects, the token's objects, the flags.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Row {
    /// What the store says; `None` for an object no store row names.
    pub store: Option<StoreView>,
    /// The objects the store's record implies, by `CKA_ID` and class.
    pub expected: Vec<Expected>,
    /// What the token holds under those ids (or, for an unknown object,
    /// under its id), read from the token.
    pub objects: Vec<TokenView>,
    /// Disagreements, as [`row_flags`] computes them.
    pub flags: Vec<Flag>,
}

/// The store's view of a row.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoreView {
    /// `version`, `service-key` or `nhn-ca`.
    pub kind: String,
    /// `naver`, `nhn` or `service`.
    pub dialect: String,
    /// Key tag / key id; the service key's name; the CA's project.
    pub key: String,
    /// Version number (key versions only).
    pub version: Option<i64>,
    /// `AES256`, `RSA2048`, `ECDSA`, `SECRET`, `HMAC`.
    pub key_type: String,
    /// The key's status (key versions only).
    pub key_status: Option<String>,
    /// Version state (`pending`, `active`, `destroying`); `active` for
    /// service and CA keys.
    pub state: String,
    /// Version enabled (key versions only).
    pub enabled: Option<bool>,
    /// NAVER account, `project/key store` for NHN, `hsm-kms` for service keys.
    pub owner: String,
    /// Created extractable under its NHN key store's export policy.
    pub export_policy: bool,
}

/// One object the store's record implies.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Expected {
    /// `CKA_ID`, hex (a data object's label bytes, hex).
    pub id: String,
    /// `secret-key`, `private-key`, `public-key` or `data`.
    pub class: String,
    /// `CKA_KEY_TYPE` it must have (`AES`, `RSA`, `EC`, `GENERIC_SECRET`);
    /// `None` for data objects.
    pub key_type: Option<String>,
}

/// One object as the token describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TokenView {
    /// Object class.
    pub class: String,
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`, hex (a data object's label bytes, hex).
    pub id: String,
    /// `CKA_KEY_TYPE`.
    pub key_type: Option<String>,
    /// Key size in bits.
    pub bits: Option<u64>,
    /// EC curve.
    pub curve: Option<String>,
    /// `CKA_LOCAL`.
    pub local: bool,
    /// `CKA_NEVER_EXTRACTABLE`.
    pub never_extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`.
    pub always_sensitive: bool,
    /// `CKA_EXTRACTABLE`.
    pub extractable: bool,
    /// `CKA_SENSITIVE`.
    pub sensitive: bool,
    /// `CKA_MODIFIABLE`.
    pub modifiable: bool,
    /// `CKA_PRIVATE`.
    pub private: bool,
    /// `CKA_TOKEN`.
    pub token: bool,
}

impl From<&ObjectInfo> for TokenView {
    fn from(o: &ObjectInfo) -> Self {
        TokenView {
            class: o.class.clone(),
            label: o.label.clone(),
            id: hex::encode(&o.id),
            key_type: o.key_type.clone(),
            bits: o.bits,
            curve: o.curve.clone(),
            local: o.local,
            never_extractable: o.never_extractable,
            always_sensitive: o.always_sensitive,
            extractable: o.extractable,
            sensitive: o.sensitive,
            modifiable: o.modifiable,
            private: o.private,
            token: o.token,
        }
    }
}

/// One disagreement: a [`FLAG_CODES`] code and the object (label, or id
/// when the object is missing) it concerns, if one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Flag {
    /// The code.
    pub code: String,
    /// The object concerned.
    pub object: Option<String>,
}

/// Every flag code with what it means, in the order [`row_flags`] checks.
pub const FLAG_CODES: &[(&str, &str)] = &[
    (
        "unknown",
        "an hsm-kms object that no store row names (made behind the service's back, or by a newer store)",
    ),
    (
        "unfinished",
        "the store records a creation or destruction a crash interrupted (the next start finishes it)",
    ),
    (
        "missing",
        "the store names an object (id and class) that is not on the token",
    ),
    ("duplicate", "more than one object with the expected id and class"),
    ("wrong-type", "the object's key type is not the one the store records"),
    ("unexpected", "an object under the row's id that the store's record does not imply"),
    (
        "extractable",
        "CKA_EXTRACTABLE set or CKA_NEVER_EXTRACTABLE clear, outside an NHN export-policy key store",
    ),
    (
        "not-sensitive",
        "CKA_SENSITIVE or CKA_ALWAYS_SENSITIVE clear, outside an NHN export-policy key store",
    ),
    ("not-local", "CKA_LOCAL clear: the key was not generated in the token"),
    ("not-private", "CKA_PRIVATE clear on a secret, private key or data object"),
    ("modifiable", "CKA_MODIFIABLE set"),
    (
        "installation",
        "the token and the store carry different installation ids, or one has none (counted once, in the summary)",
    ),
];

fn flag(code: &str, object: Option<&str>) -> Flag {
    Flag {
        code: code.to_string(),
        object: object.map(str::to_string),
    }
}

/// The flags of one row, from its store view, expected objects and token
/// objects alone. [`verify`] recomputes them with this same function.
pub fn row_flags(row: &Row) -> Vec<Flag> {
    let mut out = Vec::new();
    let export_policy = row.store.as_ref().is_some_and(|s| s.export_policy);
    match &row.store {
        None => out.push(flag("unknown", None)),
        Some(s) if s.state != "active" => out.push(flag("unfinished", None)),
        Some(_) => {}
    }
    for e in &row.expected {
        let matching: Vec<&TokenView> = row
            .objects
            .iter()
            .filter(|o| o.id == e.id && o.class == e.class)
            .collect();
        let what = format!("{} {}", e.class, e.id);
        match matching.as_slice() {
            [] => out.push(flag("missing", Some(&what))),
            [_] => {}
            _ => out.push(flag("duplicate", Some(&what))),
        }
        for o in matching {
            if o.key_type != e.key_type {
                out.push(flag("wrong-type", Some(&o.label)));
            }
        }
    }
    for o in &row.objects {
        let implied = row
            .expected
            .iter()
            .any(|e| e.id == o.id && e.class == o.class);
        if row.store.is_some() && !implied {
            out.push(flag("unexpected", Some(&o.label)));
        }
        let secret = matches!(o.class.as_str(), "secret-key" | "private-key");
        let key = secret || o.class == "public-key";
        if secret && !export_policy && (o.extractable || !o.never_extractable) {
            out.push(flag("extractable", Some(&o.label)));
        }
        if secret && !export_policy && (!o.sensitive || !o.always_sensitive) {
            out.push(flag("not-sensitive", Some(&o.label)));
        }
        if key && !o.local {
            out.push(flag("not-local", Some(&o.label)));
        }
        if (secret || o.class == "data") && !o.private {
            out.push(flag("not-private", Some(&o.label)));
        }
        if o.modifiable {
            out.push(flag("modifiable", Some(&o.label)));
        }
    }
    out
}

/// The summary of `rows`; a disagreeing installation counts as one flag.
pub fn summarise(rows: &[Row], installation: &Installation) -> Summary {
    let mut s = Summary::default();
    for r in rows {
        s.rows += 1;
        if r.store.as_ref().is_some_and(|v| v.kind == "version") {
            s.versions += 1;
        }
        s.objects += r.objects.len() as u64;
        s.flags += r.flags.len() as u64;
        if !r.flags.is_empty() {
            s.flagged_rows += 1;
        }
        for f in &r.flags {
            *s.by_code.entry(f.code.clone()).or_default() += 1;
        }
    }
    if !installation.agree {
        s.flags += 1;
        *s.by_code.entry("installation".into()).or_default() += 1;
    }
    s
}

/// The objects a key type implies under `id` (and the convergent HMAC key
/// under `aux`).
fn expected_objects(key_type: &str, id: &[u8], aux: Option<&[u8]>) -> Vec<Expected> {
    let e = |id: &[u8], class: &str, kt: Option<&str>| Expected {
        id: hex::encode(id),
        class: class.into(),
        key_type: kt.map(str::to_string),
    };
    let mut out = match key_type {
        "AES256" => vec![e(id, "secret-key", Some("AES"))],
        "HMAC" => vec![e(id, "secret-key", Some("GENERIC_SECRET"))],
        "RSA2048" => vec![
            e(id, "private-key", Some("RSA")),
            e(id, "public-key", Some("RSA")),
        ],
        "ECDSA" => vec![
            e(id, "private-key", Some("EC")),
            e(id, "public-key", Some("EC")),
        ],
        "SECRET" => vec![e(id, "data", None)],
        _ => Vec::new(),
    };
    if let Some(aux) = aux {
        out.push(e(aux, "secret-key", Some("GENERIC_SECRET")));
    }
    out
}

fn version_view(v: &VersionOwner) -> StoreView {
    let nhn = v.nhn_type.is_some();
    StoreView {
        kind: "version".into(),
        dialect: if nhn { "nhn" } else { "naver" }.into(),
        key: v.uid.clone(),
        version: Some(v.version),
        key_type: v.key_type.to_string(),
        key_status: Some(v.key_status.clone()),
        state: v.state.clone(),
        enabled: Some(v.enabled),
        owner: match (&v.project, &v.key_store) {
            (Some(p), Some(s)) => format!("{p}/{s}"),
            _ => v.account.clone(),
        },
        export_policy: v.export_policy.unwrap_or(false),
    }
}

fn service_view(kind: &str, key: &str, key_type: &str, owner: &str) -> StoreView {
    StoreView {
        kind: kind.into(),
        dialect: "service".into(),
        key: key.into(),
        version: None,
        key_type: key_type.into(),
        key_status: None,
        state: "active".into(),
        enabled: None,
        owner: owner.into(),
        export_policy: false,
    }
}

/// Builds a row: the token's objects under the expected ids, then flags.
fn make_row(
    store: Option<StoreView>,
    expected: Vec<Expected>,
    ids: &[&[u8]],
    token: &HashMap<Vec<u8>, Vec<ObjectInfo>>,
) -> Row {
    // In a fixed order (the token's own enumeration order may differ from
    // one process to the next): by id as listed, then class and label.
    let mut objects: Vec<(usize, TokenView)> = ids
        .iter()
        .enumerate()
        .flat_map(|(i, id)| {
            token
                .get(*id)
                .into_iter()
                .flatten()
                .map(move |o| (i, TokenView::from(o)))
        })
        .collect();
    objects.sort_by(|(i, a), (j, b)| (i, &a.class, &a.label).cmp(&(j, &b.class, &b.label)));
    let objects = objects.into_iter().map(|(_, o)| o).collect();
    let mut row = Row {
        store,
        expected,
        objects,
        flags: Vec::new(),
    };
    row.flags = row_flags(&row);
    row
}

/// Reads the token and the store and builds the rows of `scope`, with
/// their flags. Changes nothing.
pub async fn rows(hsm: &Hsm, store: &Store, scope: &Scope) -> Result<(Vec<Row>, Installation)> {
    let inv = Inventory::take(hsm, store).await?;
    let installation = Installation {
        agree: inv.store_id.is_some() && inv.store_id == inv.token_id,
        token: inv.token_id.clone(),
        store: inv.store_id.clone(),
    };
    let mut token: HashMap<Vec<u8>, Vec<ObjectInfo>> = HashMap::new();
    for o in hsm.service_object_infos().await? {
        token.entry(o.id.clone()).or_default().push(o);
    }
    let uid = match scope {
        Scope::All => None,
        Scope::NaverKey(t) | Scope::NhnKey(t) => Some(t.as_str()),
    };
    let versions = store.versions_with_owners(uid).await?;
    if let Some(uid) = uid {
        let nhn_wanted = matches!(scope, Scope::NhnKey(_));
        if versions.is_empty() || versions.iter().any(|v| v.nhn_type.is_some() != nhn_wanted) {
            return Err(Error::InvalidInput(if nhn_wanted {
                format!("no NHN key {uid} with a version that is not destroyed (NAVER keys: --key)")
            } else {
                format!(
                    "no NAVER key {uid} with a version that is not destroyed (NHN keys: --nhn-key)"
                )
            }));
        }
    }
    let mut out = Vec::new();
    for v in &versions {
        let expected = expected_objects(v.key_type.as_str(), &v.cka_id, v.aux_cka_id.as_deref());
        let mut ids: Vec<&[u8]> = vec![&v.cka_id];
        ids.extend(v.aux_cka_id.as_deref());
        out.push(make_row(Some(version_view(v)), expected, &ids, &token));
    }
    if *scope == Scope::All {
        for (name, id) in store.service_keys().await? {
            let kt = match name.as_str() {
                service_keys::KEK => "AES256",
                service_keys::AUDIT_HMAC => "HMAC",
                service_keys::ATTESTATION | service_keys::TOKEN_SIGNING => "ECDSA",
                _ => "unknown",
            };
            let view = service_view("service-key", &name, kt, "hsm-kms");
            out.push(make_row(
                Some(view),
                expected_objects(kt, &id, None),
                &[&id],
                &token,
            ));
        }
        for p in store.nhn_projects().await? {
            if let Some(id) = &p.ca_cka_id {
                let view = service_view("nhn-ca", &p.name, "ECDSA", &p.name);
                out.push(make_row(
                    Some(view),
                    expected_objects("ECDSA", id, None),
                    &[id],
                    &token,
                ));
            }
        }
    }
    // Objects no store row names: all of them, or those labelled as
    // belonging to the one key asked for.
    let prefix = uid.map(|u| format!("{}{u}/", crate::hsm::LABEL_PREFIX));
    let mut unknown: Vec<&[u8]> = inv
        .unknown()
        .into_iter()
        .filter(|o| prefix.as_ref().is_none_or(|p| o.label.starts_with(p)))
        .map(|o| o.id.as_slice())
        .collect();
    unknown.sort();
    unknown.dedup();
    for id in unknown {
        out.push(make_row(None, Vec::new(), &[id], &token));
    }
    Ok((out, installation))
}

/// Builds the report of `scope` and signs it with the attestation key.
pub async fn attest(hsm: &Hsm, store: &Store, scope: &Scope) -> Result<SignedReport> {
    let key_id = attestation_key_id(store).await?;
    let spki = hsm.public_key_spki(key_id.clone()).await?;
    let key_sha = hex::encode(Sha256::digest(&spki));
    let (module, token) = hsm.describe().await?;
    let (rows, installation) = rows(hsm, store, scope).await?;
    let report = Report {
        format: FORMAT.into(),
        generated_at: now_rfc3339(),
        scope: scope.describe(),
        summary: summarise(&rows, &installation),
        installation,
        module,
        token,
        attestation_key: AttestationKey {
            label: ATTESTATION_KEY_LABEL.into(),
            id: hex::encode(&key_id),
            public_key_sha256: key_sha.clone(),
        },
        rows,
    };
    let body = serde_json::to_value(&report)
        .map_err(|e| Error::Internal(format!("report serialisation: {e}")))?;
    let sig = hsm
        .sign(key_id, SignAlg::EcdsaP256Sha256, canonical_json(&body))
        .await?;
    Ok(SignedReport {
        report,
        signature: Signature {
            alg: "ES256".into(),
            encoding: "DER".into(),
            value: base64::engine::general_purpose::STANDARD.encode(sig),
            public_key_sha256: key_sha,
            signed_bytes: SIGNED_BYTES.into(),
        },
    })
}

/// The attestation key's public key, PEM SubjectPublicKeyInfo, read from
/// its public-key object (`CKA_EC_POINT`) on the token.
pub async fn public_key_pem(hsm: &Hsm, store: &Store) -> Result<String> {
    use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _, LineEnding};
    let spki = hsm
        .public_key_spki(attestation_key_id(store).await?)
        .await?;
    let key = p256::PublicKey::from_public_key_der(&spki)
        .map_err(|e| Error::Internal(format!("attestation public key: {e}")))?;
    key.to_public_key_pem(LineEnding::LF)
        .map_err(|e| Error::Internal(format!("attestation public key: {e}")))
}

/// The attestation key's `CKA_ID`, or how to make it.
async fn attestation_key_id(store: &Store) -> Result<Vec<u8>> {
    store
        .service_key(service_keys::ATTESTATION)
        .await?
        .ok_or_else(|| {
            Error::InvalidState(
                "this installation has no attestation key: run `hsm-kms init`, which adds the \
                 service keys an existing installation lacks and changes nothing else"
                    .into(),
            )
        })
}

/// The file form of a signed report: compact, with the report member in
/// exactly its signed bytes, so that `jq -jcS .report` reproduces them.
pub fn to_file_bytes(r: &SignedReport) -> Result<Vec<u8>> {
    let v = serde_json::to_value(r)
        .map_err(|e| Error::Internal(format!("report serialisation: {e}")))?;
    let mut out = canonical_json(&v);
    out.push(b'\n');
    Ok(out)
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(class: &str, id: &str, kt: Option<&str>) -> TokenView {
        TokenView {
            class: class.into(),
            label: format!("hsm-kms/k/{class}"),
            id: id.into(),
            key_type: kt.map(str::to_string),
            bits: None,
            curve: None,
            local: true,
            never_extractable: true,
            always_sensitive: true,
            extractable: false,
            sensitive: class != "public-key",
            modifiable: false,
            private: class != "public-key",
            token: true,
        }
    }

    fn row(key_type: &str, export_policy: bool, objects: Vec<TokenView>) -> Row {
        let mut view = service_view("version", "k", key_type, "acct");
        view.export_policy = export_policy;
        let mut r = Row {
            store: Some(view),
            expected: expected_objects(key_type, &[0xab], None),
            objects,
            flags: Vec::new(),
        };
        r.flags = row_flags(&r);
        r
    }

    fn codes(r: &Row) -> Vec<&str> {
        r.flags.iter().map(|f| f.code.as_str()).collect()
    }

    #[test]
    fn a_protected_pair_has_no_flag() {
        let r = row(
            "ECDSA",
            false,
            vec![
                object("private-key", "ab", Some("EC")),
                object("public-key", "ab", Some("EC")),
            ],
        );
        assert!(r.flags.is_empty(), "{:?}", r.flags);
    }

    #[test]
    fn missing_half_of_a_pair_is_flagged() {
        let r = row(
            "RSA2048",
            false,
            vec![object("public-key", "ab", Some("RSA"))],
        );
        assert_eq!(codes(&r), ["missing"]);
        assert_eq!(r.flags[0].object.as_deref(), Some("private-key ab"));
    }

    #[test]
    fn extractable_is_flagged_only_outside_an_export_policy() {
        let mut o = object("secret-key", "ab", Some("AES"));
        o.extractable = true;
        o.never_extractable = false;
        o.sensitive = false;
        o.always_sensitive = false;
        assert_eq!(
            codes(&row("AES256", false, vec![o.clone()])),
            ["extractable", "not-sensitive"]
        );
        assert!(row("AES256", true, vec![o]).flags.is_empty());
    }

    #[test]
    fn imported_modifiable_public_wrong_type_and_extra_objects() {
        let mut o = object("secret-key", "ab", Some("GENERIC_SECRET"));
        o.local = false;
        o.modifiable = true;
        o.private = false;
        let extra = object("data", "ab", None);
        assert_eq!(
            codes(&row("AES256", false, vec![o, extra])),
            [
                "wrong-type",
                "not-local",
                "not-private",
                "modifiable",
                "unexpected"
            ]
        );
    }

    #[test]
    fn unknown_and_unfinished_rows() {
        let mut r = Row {
            store: None,
            expected: Vec::new(),
            objects: vec![object("secret-key", "cd", Some("AES"))],
            flags: Vec::new(),
        };
        assert_eq!(row_flags(&r), [flag("unknown", None)]);
        r.store = Some(service_view("version", "k", "AES256", "a"));
        r.store.as_mut().unwrap().state = "pending".into();
        r.expected = expected_objects("AES256", &[0xcd], None);
        assert_eq!(row_flags(&r), [flag("unfinished", None)]);
    }

    #[test]
    fn summary_counts_rows_and_a_disagreeing_installation() {
        let clean = row(
            "AES256",
            false,
            vec![object("secret-key", "ab", Some("AES"))],
        );
        let bad = row("AES256", false, Vec::new());
        let agree = Installation {
            token: Some("x".into()),
            store: Some("x".into()),
            agree: true,
        };
        let s = summarise(&[clean.clone(), bad.clone()], &agree);
        assert_eq!(
            (s.versions, s.rows, s.objects, s.flags, s.flagged_rows),
            (2, 2, 1, 1, 1)
        );
        assert_eq!(s.by_code.get("missing"), Some(&1));
        let disagree = Installation {
            agree: false,
            ..agree
        };
        assert_eq!(summarise(&[clean], &disagree).flags, 1);
    }
}

/// One key version as an attestation report describes it: the version, its
/// key, the key's owner and, for NHN keys, the key store.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VersionOwner {
    /// Public identifier of the key (NAVER `keyTag`, NHN `keyId`).
    pub uid: String,
    /// What the key's versions are in the token.
    #[sqlx(try_from = "String")]
    pub key_type: Algorithm,
    /// Key status (`ENABLE`, `DISABLE`, `REVOKE`, `DELETED`).
    pub key_status: String,
    /// Version number.
    pub version: i64,
    /// Version state as stored (`pending`, `active`, `destroying`).
    pub state: String,
    /// Version enabled.
    pub enabled: bool,
    /// `CKA_ID` of the version's object (or pair).
    pub cka_id: Vec<u8>,
    /// `CKA_ID` of the convergent HMAC key, if any.
    pub aux_cka_id: Option<Vec<u8>>,
    /// The owning account's name (`nhn:{project}` for NHN projects).
    pub account: String,
    /// NHN key type (`SECRET`, `SYMMETRIC_KEY`, `ASYMMETRIC_KEY`); `None`
    /// for NAVER keys.
    pub nhn_type: Option<String>,
    /// NHN key store name.
    pub key_store: Option<String>,
    /// NHN project name.
    pub project: Option<String>,
    /// The NHN key was created extractable under its key store's export
    /// policy.
    pub export_policy: Option<bool>,
}
