//! Object inventory: listing the service's objects, reading back their
//! protection attributes, and destroying them.

use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};

use super::handles::HandleKey;
use super::{Hsm, HsmError, OpClass, Result, SessionRef};
use crate::telemetry::token::Call;

/// Sessions (threads) that read the attributes of a large token's objects
/// at once during an enumeration.
const ENUMERATION_THREADS: usize = 4;

/// Objects from which an enumeration reads attributes on several sessions.
const PARALLEL_READ_MIN: usize = 32;

/// Label prefix of every object the service creates.
pub const LABEL_PREFIX: &str = "hsm-kms/";

/// Label of the private `CKO_DATA` object that holds the installation id
/// binding this token to its store (see `core::reconcile`). It is not a key
/// and [`SessionRef::list_service_objects`] leaves it out.
pub const INSTALLATION_LABEL: &str = "hsm-kms/installation";

/// One object of the service found on the token.
#[derive(Debug, Clone)]
pub struct TokenObject {
    /// `CKA_ID`.
    pub id: Vec<u8>,
    /// `CKA_LABEL`.
    pub label: String,
    /// Object class (`CKO_*`) as text, as in [`ObjectInfo::class`].
    pub class: String,
}

/// Protection attributes of one object, read back from the token.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Object class (`CKO_*`) as text.
    pub class: String,
    /// `CKA_LABEL`.
    pub label: String,
    /// `CKA_ID`; for a data object (which has none) its label's bytes, as
    /// in [`TokenObject::id`].
    pub id: Vec<u8>,
    /// `CKA_KEY_TYPE` without its `CKK_` prefix (`AES`, `RSA`, `EC`,
    /// `GENERIC_SECRET`); `None` on data objects.
    pub key_type: Option<String>,
    /// Key size in bits: `CKA_VALUE_LEN` x 8 for secret keys, the modulus
    /// length for RSA; `None` where neither applies.
    pub bits: Option<u64>,
    /// The curve of an EC key (`P-256`, or the hex DER of `CKA_EC_PARAMS`
    /// for another curve).
    pub curve: Option<String>,
    /// `CKA_TOKEN`.
    pub token: bool,
    /// `CKA_PRIVATE`.
    pub private: bool,
    /// `CKA_SENSITIVE` (absent on public keys and data objects: false).
    pub sensitive: bool,
    /// `CKA_EXTRACTABLE` (absent on data objects: false).
    pub extractable: bool,
    /// `CKA_LOCAL`: generated in the token.
    pub local: bool,
    /// `CKA_MODIFIABLE`.
    pub modifiable: bool,
    /// `CKA_NEVER_EXTRACTABLE`.
    pub never_extractable: bool,
    /// `CKA_ALWAYS_SENSITIVE`.
    pub always_sensitive: bool,
}

/// What one enumeration of the token found: the service's objects and the
/// installation ids, so that a start searches the token once (SoftHSMv2
/// answers a search by label by walking every object of the token).
#[derive(Debug, Clone, Default)]
pub struct TokenListing {
    /// Every object whose label starts with [`LABEL_PREFIX`], except the
    /// installation object.
    pub objects: Vec<TokenObject>,
    /// The values of every `CKO_DATA` object labelled
    /// [`INSTALLATION_LABEL`] (none on a token `init` has not bound yet;
    /// more than one is a fault, see [`TokenListing::installation_id`]).
    pub installation_ids: Vec<String>,
}

impl TokenListing {
    /// The installation id on the token, if any. Two installation objects
    /// with different values are refused as malformed.
    pub fn installation_id(&self) -> Result<Option<String>> {
        let mut ids = self.installation_ids.clone();
        ids.sort();
        ids.dedup();
        match ids.len() {
            0 => Ok(None),
            1 => Ok(ids.pop()),
            n => Err(super::HsmError::Malformed(format!(
                "{n} different {INSTALLATION_LABEL} objects on the token: {}",
                ids.join(", ")
            ))),
        }
    }
}

/// What the attribute reads found among some handles of an enumeration.
#[derive(Default)]
struct ReadPart {
    objects: Vec<TokenObject>,
    entries: Vec<(HandleKey, ObjectHandle)>,
    installation_ids: Vec<String>,
}

impl SessionRef<'_> {
    /// Every token object whose label starts with [`LABEL_PREFIX`], except
    /// the installation object ([`INSTALLATION_LABEL`]); see
    /// [`SessionRef::list_token`].
    pub fn list_service_objects(&self) -> Result<Vec<TokenObject>> {
        Ok(self.list_token()?.objects)
    }

    /// The service's objects and the installation ids, from one
    /// enumeration of the token, which also fills the handle map (see
    /// [`super::handles`]): the reconciler's listing at start-up is what
    /// spares every request a search, and it answers the installation-id
    /// check too.
    pub fn list_token(&self) -> Result<TokenListing> {
        let handles = self.enumerate()?;
        // One C_GetAttributeValue per object: with many objects, spread
        // over a few sessions on threads of their own (a file-backed
        // SoftHSM token reads a file per call; the calls overlap).
        let threads = if handles.len() >= PARALLEL_READ_MIN {
            ENUMERATION_THREADS
        } else {
            1
        };
        let chunk = handles.len().div_ceil(threads).max(1);
        let mut parts = handles.chunks(chunk);
        let first = parts.next().unwrap_or(&[]);
        let read = std::thread::scope(|scope| {
            let hsm = self.hsm;
            let helpers: Vec<_> = parts
                .map(|part| scope.spawn(move || hsm.run_blocking(|s| s.read_service_attrs(part))))
                .collect();
            let mut all = self.read_service_attrs(first)?;
            for h in helpers {
                let part = h.join().map_err(|_| {
                    HsmError::Worker("a token enumeration thread panicked".into())
                })??;
                all.objects.extend(part.objects);
                all.entries.extend(part.entries);
                all.installation_ids.extend(part.installation_ids);
            }
            Ok::<_, HsmError>(all)
        })?;
        self.install_handles(read.entries);
        Ok(TokenListing {
            objects: read.objects,
            installation_ids: read.installation_ids,
        })
    }

    /// The service objects among `handles` (label, id and class read in one
    /// call each), with their handle-map entries, and the values of the
    /// installation objects among them.
    fn read_service_attrs(&self, handles: &[ObjectHandle]) -> Result<ReadPart> {
        let mut out = ReadPart::default();
        for &h in handles {
            let attrs = self.raw().get_attributes(
                h,
                &[
                    AttributeType::Label,
                    AttributeType::Id,
                    AttributeType::Class,
                ],
            )?;
            let (mut label, mut id, mut class, mut code) = (None, None, "other", None);
            for a in attrs {
                match a {
                    Attribute::Label(l) => label = Some(String::from_utf8_lossy(&l).into_owned()),
                    Attribute::Id(i) => id = Some(i),
                    Attribute::Class(c) => {
                        class = class_name(c);
                        // CK_OBJECT_CLASS is u64 on Linux but not everywhere.
                        #[allow(clippy::useless_conversion)]
                        {
                            code = Some(u64::from(*c));
                        }
                    }
                    _ => {}
                }
            }
            if label.as_deref() == Some(INSTALLATION_LABEL) {
                // The same objects the search by label found: token data
                // objects with exactly this label.
                if class == "data" {
                    for a in self.raw().get_attributes(h, &[AttributeType::Value])? {
                        if let Attribute::Value(v) = a {
                            out.installation_ids
                                .push(String::from_utf8_lossy(&v).into_owned());
                        }
                    }
                }
                continue;
            }
            // Data objects have no CKA_ID; their id is their label.
            let id = id.or_else(|| label.as_ref().map(|l| l.as_bytes().to_vec()));
            if let (Some(label), Some(id)) = (label, id) {
                if label.starts_with(LABEL_PREFIX) {
                    if let Some(code) = code {
                        out.entries.push(((id.clone(), code), h));
                    }
                    out.objects.push(TokenObject {
                        id,
                        label,
                        class: class.to_string(),
                    });
                }
            }
        }
        Ok(out)
    }

    /// Destroys every token object with `CKA_ID = id`. Returns how many.
    pub fn destroy_id(&self, id: &[u8]) -> Result<usize> {
        let handles = self.find_by_id(id)?;
        for h in &handles {
            self.call(Call::DestroyObject, None, |s| s.destroy_object(*h))?;
        }
        self.hsm.forget(id);
        Ok(handles.len())
    }

    /// Protection attributes of every object with `CKA_ID = id`.
    pub fn object_info(&self, id: &[u8]) -> Result<Vec<ObjectInfo>> {
        self.find_by_id(id)?
            .into_iter()
            .map(|h| self.read_info(h))
            .collect()
    }

    /// Protection attributes of every object of the service on the token
    /// (labels starting with [`LABEL_PREFIX`], the installation object
    /// left out), read in one pass: for reports over the whole token, where
    /// one look-up per id would cost a scan of the token each.
    pub fn service_object_infos(&self) -> Result<Vec<ObjectInfo>> {
        let mut out = Vec::new();
        for h in self.enumerate()? {
            let info = self.read_info(h)?;
            if info.label.starts_with(LABEL_PREFIX) && info.label != INSTALLATION_LABEL {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// Reads one object's class, label, id, key type and size, and its
    /// protection attributes. Attributes an object does not have (key
    /// attributes on a data object) read as absent: false or `None`.
    fn read_info(&self, h: cryptoki::object::ObjectHandle) -> Result<ObjectInfo> {
        let attrs = self.raw().get_attributes(
            h,
            &[
                AttributeType::Class,
                AttributeType::Label,
                AttributeType::Id,
                AttributeType::KeyType,
                AttributeType::ValueLen,
                AttributeType::Modulus,
                AttributeType::EcParams,
                AttributeType::Token,
                AttributeType::Private,
                AttributeType::Sensitive,
                AttributeType::Extractable,
                AttributeType::Local,
                AttributeType::Modifiable,
                AttributeType::NeverExtractable,
                AttributeType::AlwaysSensitive,
            ],
        )?;
        let mut info = ObjectInfo::default();
        let mut id = None;
        for a in attrs {
            match a {
                Attribute::Class(c) => info.class = class_name(c).to_string(),
                Attribute::Label(l) => info.label = String::from_utf8_lossy(&l).into_owned(),
                Attribute::Id(i) => id = Some(i),
                Attribute::KeyType(k) => {
                    info.key_type = Some(k.to_string().trim_start_matches("CKK_").to_string())
                }
                Attribute::ValueLen(n) => info.bits = Some(u64::from(n) * 8),
                Attribute::Modulus(m) => info.bits = Some(modulus_bits(&m)),
                Attribute::EcParams(p) => info.curve = Some(curve_name(&p)),
                Attribute::Token(b) => info.token = b,
                Attribute::Private(b) => info.private = b,
                Attribute::Sensitive(b) => info.sensitive = b,
                Attribute::Extractable(b) => info.extractable = b,
                Attribute::Local(b) => info.local = b,
                Attribute::Modifiable(b) => info.modifiable = b,
                Attribute::NeverExtractable(b) => info.never_extractable = b,
                Attribute::AlwaysSensitive(b) => info.always_sensitive = b,
                _ => {}
            }
        }
        // Data objects have no CKA_ID: their id is their label.
        info.id = id.unwrap_or_else(|| info.label.as_bytes().to_vec());
        Ok(info)
    }

    /// Objects with `CKA_ID = id`, and the data object labelled `id` (data
    /// objects have no `CKA_ID`; see [`super::Hsm::create_data_object`]).
    fn find_by_id(&self, id: &[u8]) -> Result<Vec<cryptoki::object::ObjectHandle>> {
        let mut handles = self.find(&[Attribute::Token(true), Attribute::Id(id.to_vec())])?;
        if id.starts_with(LABEL_PREFIX.as_bytes()) {
            handles.extend(self.find(&[
                Attribute::Token(true),
                Attribute::Class(ObjectClass::DATA),
                Attribute::Label(id.to_vec()),
            ])?);
        }
        Ok(handles)
    }

    /// Reads `CKA_VALUE` of an extractable secret key (export policy only).
    pub fn secret_value(&self, id: &[u8]) -> Result<Vec<u8>> {
        let h = self.handle(id, ObjectClass::SECRET_KEY)?;
        for a in self.call(Call::GetAttributeValue, None, |s| {
            s.get_attributes(h, &[AttributeType::Value])
        })? {
            if let Attribute::Value(v) = a {
                return Ok(v);
            }
        }
        Err(super::HsmError::Malformed("no CKA_VALUE".into()))
    }
}

/// Bits of an RSA modulus given big-endian (leading zero bytes ignored).
fn modulus_bits(m: &[u8]) -> u64 {
    let m = match m.iter().position(|b| *b != 0) {
        Some(i) => &m[i..],
        None => return 0,
    };
    (m.len() as u64 - 1) * 8 + u64::from(8 - m[0].leading_zeros())
}

/// `P-256` for the DER OID of prime256v1, else the parameters in hex.
fn curve_name(params: &[u8]) -> String {
    if params == super::templates::P256_OID_DER {
        "P-256".to_string()
    } else {
        hex::encode(params)
    }
}

fn class_name(c: ObjectClass) -> &'static str {
    if c == ObjectClass::SECRET_KEY {
        "secret-key"
    } else if c == ObjectClass::PRIVATE_KEY {
        "private-key"
    } else if c == ObjectClass::PUBLIC_KEY {
        "public-key"
    } else if c == ObjectClass::DATA {
        "data"
    } else {
        "other"
    }
}

impl Hsm {
    /// See [`SessionRef::list_service_objects`].
    pub async fn list_service_objects(&self) -> Result<Vec<TokenObject>> {
        self.run(OpClass::Symmetric, |s| s.list_service_objects())
            .await
    }

    /// See [`SessionRef::list_token`].
    pub async fn list_token(&self) -> Result<TokenListing> {
        self.run(OpClass::Symmetric, |s| s.list_token()).await
    }

    /// Writes the installation id on the token as a private, non-modifiable
    /// `CKO_DATA` object labelled [`INSTALLATION_LABEL`].
    pub async fn put_installation_id(&self, id: &str) -> Result<()> {
        self.create_data_object(INSTALLATION_LABEL.to_string(), id.as_bytes().to_vec())
            .await
    }

    /// See [`SessionRef::destroy_id`].
    pub async fn destroy_id(&self, id: Vec<u8>) -> Result<usize> {
        self.run_once(OpClass::Symmetric, move |s| s.destroy_id(&id))
            .await
    }

    /// See [`SessionRef::object_info`].
    pub async fn object_info(&self, id: Vec<u8>) -> Result<Vec<ObjectInfo>> {
        self.run(OpClass::Symmetric, move |s| s.object_info(&id))
            .await
    }

    /// See [`SessionRef::service_object_infos`].
    pub async fn service_object_infos(&self) -> Result<Vec<ObjectInfo>> {
        self.run(OpClass::Symmetric, |s| s.service_object_infos())
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modulus_bits_counts_from_the_top_bit() {
        assert_eq!(modulus_bits(&[0x80; 256]), 2048);
        assert_eq!(modulus_bits(&[0x00, 0x7f, 0xff]), 15);
        assert_eq!(modulus_bits(&[0x01]), 1);
        assert_eq!(modulus_bits(&[0, 0]), 0);
    }

    #[test]
    fn p256_is_named() {
        assert_eq!(curve_name(&super::super::templates::P256_OID_DER), "P-256");
        assert_eq!(curve_name(&[0x06, 0x01, 0x2a]), "06012a");
    }
}
