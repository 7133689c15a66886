//! Key-store credentials: IPv4 addresses, MAC addresses and client
//! certificates, with NHN's two-step deletion; and the per-project CA that
//! issues the client certificates, whose EC P-256 key lives in the token and
//! signs through [`crate::hsm::Hsm`].

use crate::store::NhnRepo;
use std::net::Ipv4Addr;

use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::{normalize_mac, NhnProject};
use crate::core::now_ms;
use crate::core::{Engine, Error, Result};
use crate::hsm::{Hsm, KeySpec, SignAlg};
use crate::store::{NewCredential, StoreError};

const DAY_MS: i64 = 24 * 3600 * 1000;
/// Waiting period of a credential deletion request: 7 days.
pub const CREDENTIAL_DELETION_WAIT_MS: i64 = 7 * DAY_MS;
/// Longest certificate lifetime, days.
const CERT_LIFETIME_MAX_DAYS: i64 = 3650;

/// The kinds of key-store credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    /// IPv4 address.
    Ipv4,
    /// MAC address.
    Mac,
    /// Client certificate.
    Certificate,
}

crate::core::stored_names!(CredentialKind {
    Ipv4 => "ipv4",
    Mac => "mac",
    Certificate => "certificate",
});

/// Life of a key-store credential.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialStatus {
    /// Checked on every call.
    Active,
    /// Deletion requested; still checked until the deletion time.
    Deleting,
    /// Deleted.
    Deleted,
}
crate::core::stored_names!(CredentialStatus {
    Active => "active",
    Deleting => "deleting",
    Deleted => "deleted",
});

impl CredentialKind {
    fn normalize(self, v: &str) -> Result<String> {
        match self {
            CredentialKind::Ipv4 => v
                .trim()
                .parse::<Ipv4Addr>()
                .map(|a| a.to_string())
                .map_err(|_| Error::InvalidInput(format!("{v:?} is not an IPv4 address"))),
            CredentialKind::Mac => normalize_mac(v)
                .ok_or_else(|| Error::InvalidInput(format!("{v:?} is not a MAC address"))),
            CredentialKind::Certificate => {
                if v.trim().is_empty() || v.chars().count() > 100 {
                    Err(Error::InvalidInput(
                        "certificate name must be 1 to 100 characters".into(),
                    ))
                } else {
                    Ok(v.to_string())
                }
            }
        }
    }
}

/// A credential as the dialect formats it.
#[derive(Debug, Clone)]
pub struct CredentialView {
    /// The row.
    pub row: NhnCredential,
    /// Last use, merged with the batch not yet written.
    pub last_access_at: Option<i64>,
}

/// A certificate issued by a project CA.
pub struct IssuedCertificate {
    /// Certificate DER.
    pub cert_der: Vec<u8>,
    /// The PKCS#12 file (key, certificate, CA), protected by the password.
    pub p12: Zeroizing<Vec<u8>>,
    /// Expiry, ms.
    pub expires_at: i64,
}

/// Certificate detail, for the admin CLI.
#[derive(Debug, Clone)]
pub struct CertificateView {
    /// Name.
    pub name: String,
    /// Expiry, ms.
    pub expires_at: i64,
}

/// The project CA's key in the token, as an rcgen signer. `sign` blocks on
/// the token: call only from a blocking thread.
struct HsmCaKey {
    hsm: Hsm,
    id: Vec<u8>,
    point: Vec<u8>,
}

impl rcgen::PublicKeyData for HsmCaKey {
    fn der_bytes(&self) -> &[u8] {
        &self.point
    }
    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}

impl rcgen::SigningKey for HsmCaKey {
    fn sign(&self, msg: &[u8]) -> std::result::Result<Vec<u8>, rcgen::Error> {
        self.hsm
            .run_blocking_gated(|s| s.sign(&self.id, SignAlg::EcdsaP256Sha256, msg))
            .map_err(|e| {
                tracing::error!(error = %e, "CA signature in the token failed");
                rcgen::Error::RemoteKeyError
            })
    }
}

fn ca_params(project: &str) -> rcgen::CertificateParams {
    let mut p = rcgen::CertificateParams::default();
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::OrganizationName, "hsm-kms");
    dn.push(
        rcgen::DnType::CommonName,
        format!("hsm-kms NHN client CA {project}"),
    );
    p.distinguished_name = dn;
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    p
}

fn to_time(ms: i64) -> Result<time::OffsetDateTime> {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .map_err(|e| Error::InvalidInput(format!("time out of range: {e}")))
}

fn rc(e: rcgen::Error) -> Error {
    Error::Internal(format!("certificate generation: {e}"))
}

impl Engine {
    /// The CA signer of a project, made on first use (EC P-256 in the token,
    /// self-signed for 20 years).
    async fn nhn_project_ca(&self, project_id: i64) -> Result<(HsmCaKey, Vec<u8>, String)> {
        let row = self
            .store()
            .nhn_project(project_id)
            .await?
            .ok_or(Error::NotFound("project"))?;
        let (id, cert) = match (row.ca_cka_id.clone(), row.ca_cert.clone()) {
            (Some(id), Some(cert)) => (id, cert),
            _ => {
                let id = self.hsm().random(16).await?;
                self.hsm()
                    .generate(
                        KeySpec::EcP256,
                        format!("hsm-kms/nhn-ca/{}", row.id),
                        id.clone(),
                    )
                    .await?;
                let key = self.ca_key(id.clone()).await?;
                let name = row.name.clone();
                let now = now_ms();
                let res = tokio::task::spawn_blocking(move || {
                    let mut p = ca_params(&name);
                    p.not_before = to_time(now - DAY_MS)?;
                    p.not_after = to_time(now + 20 * 365 * DAY_MS)?;
                    let cert = p.self_signed(&key).map_err(rc)?;
                    Ok::<_, Error>((key, cert.der().to_vec()))
                })
                .await
                .map_err(|e| Error::Internal(e.to_string()))?;
                let (_key, cert) = match res {
                    Ok(v) => v,
                    Err(e) => {
                        let _ = self.hsm().destroy_id(id).await;
                        return Err(e);
                    }
                };
                if !self.store().nhn_set_project_ca(row.id, &id, &cert).await? {
                    // Another request made the CA first; use that one.
                    let _ = self.hsm().destroy_id(id).await;
                    return Box::pin(self.nhn_project_ca(project_id)).await;
                }
                self.nhn_load_cas().await?;
                tracing::info!(project = %row.name, "NHN project CA created");
                (id, cert)
            }
        };
        Ok((self.ca_key(id).await?, cert, row.name))
    }

    async fn ca_key(&self, id: Vec<u8>) -> Result<HsmCaKey> {
        use p256::pkcs8::DecodePublicKey as _;
        let spki = self.hsm().public_key_spki(id.clone()).await?;
        let pk = p256::PublicKey::from_public_key_der(&spki)
            .map_err(|e| Error::Internal(format!("CA public key: {e}")))?;
        let point = p256::elliptic_curve::sec1::ToEncodedPoint::to_encoded_point(&pk, false)
            .as_bytes()
            .to_vec();
        Ok(HsmCaKey {
            hsm: self.hsm().clone(),
            id,
            point,
        })
    }

    /// Issues a client certificate valid from `not_before` to `not_after`
    /// (ms) for a key store, signed by the project CA, and packs it with its
    /// fresh private key and the CA certificate in a PKCS#12 file protected
    /// by `password`.
    pub async fn nhn_issue_certificate_raw(
        &self,
        project: &NhnProject,
        key_store: &str,
        name: &str,
        password: &str,
        not_before: i64,
        not_after: i64,
    ) -> Result<IssuedCertificate> {
        let store = self.nhn_key_store_named(project, key_store).await?;
        let (ca, ca_cert, project_name) = self.nhn_project_ca(project.id).await?;
        let serial = self.hsm().random(16).await?;
        let name = name.to_string();
        let password = Zeroizing::new(password.to_string());
        let store_name = store.name.clone();
        tokio::task::spawn_blocking(move || {
            let client_key = rcgen::KeyPair::generate().map_err(rc)?;
            let mut p = rcgen::CertificateParams::default();
            let mut dn = rcgen::DistinguishedName::new();
            dn.push(rcgen::DnType::OrganizationName, project_name.clone());
            dn.push(rcgen::DnType::OrganizationalUnitName, store_name);
            dn.push(rcgen::DnType::CommonName, name.clone());
            p.distinguished_name = dn;
            p.not_before = to_time(not_before)?;
            p.not_after = to_time(not_after)?;
            let mut serial = serial;
            serial[0] &= 0x7f;
            p.serial_number = Some(rcgen::SerialNumber::from_slice(&serial));
            p.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
            p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
            p.use_authority_key_identifier_extension = true;
            let issuer = rcgen::Issuer::new(ca_params(&project_name), &ca);
            let cert = p.signed_by(&client_key, &issuer).map_err(rc)?;
            let cert_der = cert.der().to_vec();
            let key_der = Zeroizing::new(client_key.serialize_der());
            let p12err = |e: p12_keystore::error::Error| Error::Internal(format!("PKCS#12: {e}"));
            let chain = p12_keystore::PrivateKeyChain::new(
                p12_keystore::LocalKeyId(Sha256::digest(&cert_der)[..20].to_vec()),
                p12_keystore::PrivateKey::from_der(&key_der).map_err(p12err)?,
                [
                    p12_keystore::Certificate::from_der(&cert_der).map_err(p12err)?,
                    p12_keystore::Certificate::from_der(&ca_cert).map_err(p12err)?,
                ],
            );
            let mut ks = p12_keystore::KeyStore::new();
            ks.add_entry(&name, p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
            let p12 = Zeroizing::new(ks.writer(&password).write().map_err(p12err)?);
            Ok(IssuedCertificate {
                cert_der,
                p12,
                expires_at: not_after,
            })
        })
        .await
        .map_err(|e| Error::Internal(e.to_string()))?
    }

    fn cred_aad(store_id: i64, name: &str, what: &str) -> Vec<u8> {
        format!("nhn-cred/{store_id}/{name}/{what}").into_bytes()
    }

    /// Adds an IPv4 or MAC credential to a key store.
    pub async fn nhn_add_address(
        &self,
        project: &NhnProject,
        key_store: &str,
        kind: CredentialKind,
        value: &str,
        description: &str,
        user: &str,
    ) -> Result<NhnCredential> {
        if kind == CredentialKind::Certificate {
            return Err(Error::InvalidInput(
                "use certificate issuance for certificates".into(),
            ));
        }
        let value = kind.normalize(value)?;
        check_description(description)?;
        let store = self.nhn_key_store_named(project, key_store).await?;
        self.nhn_insert_cred(NewCredential {
            key_store_id: store.id,
            kind,
            value: value.clone(),
            description: description.into(),
            cert_sha256: None,
            cert_der: None,
            expires_at: None,
            p12_ct: None,
            creation_user: user.into(),
        })
        .await?;
        self.nhn_forget_store(store.id);
        self.store()
            .nhn_credential(store.id, kind, &value)
            .await?
            .ok_or(Error::Internal("credential vanished".into()))
    }

    async fn nhn_insert_cred(&self, c: NewCredential) -> Result<i64> {
        let max = (c.kind == CredentialKind::Certificate)
            .then(|| self.limits().certificates_per_key_store);
        match self.store().nhn_insert_credential(&c, max).await {
            Ok(id) => Ok(id),
            Err(StoreError::Conflict) => Err(Error::Conflict(format!(
                "{} {} is already registered in the key store",
                c.kind.as_str(),
                c.value
            ))),
            Err(StoreError::LimitReached(_)) => Err(self.certificates_limit()),
            Err(e) => Err(e.into()),
        }
    }

    fn certificates_limit(&self) -> Error {
        Error::LimitExceeded(format!(
            "the key store has reached its limit of {} certificates \
             (limits.max_certificates_per_key_store); delete unused ones",
            self.limits().certificates_per_key_store
        ))
    }

    /// Issues a client certificate for a key store (`lifetime_days` from
    /// now) and records it; the PKCS#12 file is kept under the KEK for
    /// `hsm-kms admin nhn export-certificate`, its password is not kept.
    #[allow(clippy::too_many_arguments)]
    pub async fn nhn_add_certificate(
        &self,
        project: &NhnProject,
        key_store: &str,
        name: &str,
        password: &str,
        lifetime_days: i64,
        description: &str,
        user: &str,
    ) -> Result<NhnCredential> {
        if !(1..=CERT_LIFETIME_MAX_DAYS).contains(&lifetime_days) {
            return Err(Error::InvalidInput(format!(
                "lifeTime must be 1 to {CERT_LIFETIME_MAX_DAYS} days"
            )));
        }
        let now = now_ms();
        self.nhn_add_certificate_valid(
            project,
            key_store,
            name,
            password,
            (now - 60_000, now + lifetime_days * DAY_MS),
            description,
            user,
        )
        .await
    }

    /// [`Engine::nhn_add_certificate`] with an explicit validity window (ms);
    /// the admin CLI and tests use it for certificates that already expired.
    #[allow(clippy::too_many_arguments)]
    pub async fn nhn_add_certificate_valid(
        &self,
        project: &NhnProject,
        key_store: &str,
        name: &str,
        password: &str,
        (not_before, not_after): (i64, i64),
        description: &str,
        user: &str,
    ) -> Result<NhnCredential> {
        let name = CredentialKind::Certificate.normalize(name)?;
        check_description(description)?;
        if password.is_empty() || password.len() > 128 {
            return Err(Error::InvalidInput(
                "password must be 1 to 128 characters".into(),
            ));
        }
        let store = self.nhn_key_store_named(project, key_store).await?;
        if self
            .store()
            .nhn_credential(store.id, CredentialKind::Certificate, &name)
            .await?
            .is_some()
        {
            return Err(Error::Conflict(format!(
                "certificate {name} is already registered in the key store"
            )));
        }
        // Saves the CA signature when the key store is full; the insert
        // below decides under the write lock.
        let live = self
            .store()
            .nhn_credentials(store.id, CredentialKind::Certificate)
            .await?;
        if i64::try_from(live.len()).unwrap_or(i64::MAX) >= self.limits().certificates_per_key_store
        {
            return Err(self.certificates_limit());
        }
        let issued = self
            .nhn_issue_certificate_raw(project, key_store, &name, password, not_before, not_after)
            .await?;
        // The password is not kept: the caller chose it and gets it back
        // once, in the issuance response.
        let p12_ct = self
            .hsm()
            .aes_gcm_encrypt(
                self.inner.kek_id.clone(),
                issued.p12.to_vec(),
                Self::cred_aad(store.id, &name, "p12"),
                None,
            )
            .await?;
        self.nhn_insert_cred(NewCredential {
            key_store_id: store.id,
            kind: CredentialKind::Certificate,
            value: name.clone(),
            description: description.into(),
            cert_sha256: Some(Sha256::digest(&issued.cert_der).to_vec()),
            cert_der: Some(issued.cert_der),
            expires_at: Some(issued.expires_at),
            p12_ct: Some(p12_ct),
            creation_user: user.into(),
        })
        .await?;
        self.nhn_forget_store(store.id);
        self.store()
            .nhn_credential(store.id, CredentialKind::Certificate, &name)
            .await?
            .ok_or(Error::Internal("credential vanished".into()))
    }

    /// The PKCS#12 file of a live certificate (admin delivery).
    pub async fn nhn_export_certificate(
        &self,
        project: &str,
        key_store: &str,
        name: &str,
    ) -> Result<Zeroizing<Vec<u8>>> {
        let p: NhnProject = self.nhn_project_named(project).await?.into();
        let store = self.nhn_key_store_named(&p, key_store).await?;
        let row = self
            .store()
            .nhn_credential(store.id, CredentialKind::Certificate, name)
            .await?
            .ok_or(Error::NotFound("certificate"))?;
        let ct = row.p12_ct.ok_or(Error::NotFound("certificate"))?;
        Ok(Zeroizing::new(
            self.hsm()
                .aes_gcm_decrypt(
                    self.inner.kek_id.clone(),
                    ct,
                    Self::cred_aad(store.id, name, "p12"),
                )
                .await?,
        ))
    }

    /// The project by name, as the API sees it (admin, tests).
    pub async fn nhn_project(&self, name: &str) -> Result<NhnProject> {
        Ok(self.nhn_project_named(name).await?.into())
    }

    /// Live credentials of a key store of one kind, optionally only `value`.
    pub async fn nhn_list_credentials(
        &self,
        project: &NhnProject,
        key_store_id: i64,
        kind: CredentialKind,
        value: Option<&str>,
    ) -> Result<Vec<CredentialView>> {
        let store = self.nhn_key_store(project, key_store_id).await?;
        let want = match value {
            Some(v) => Some(kind.normalize(v)?),
            None => None,
        };
        let mut out = Vec::new();
        for row in self.store().nhn_credentials(store.id, kind).await? {
            if want.as_ref().is_some_and(|w| *w != row.value) {
                continue;
            }
            let last_access_at = match (row.last_access_at, self.nhn_pending_cred_access(row.id)) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
            out.push(CredentialView {
                row,
                last_access_at,
            });
        }
        Ok(out)
    }

    /// Requests deletion of a credential: unusable now, deleted after 7 days.
    pub async fn nhn_request_credential_deletion(
        &self,
        project: &NhnProject,
        key_store: &str,
        kind: CredentialKind,
        value: &str,
        user: &str,
    ) -> Result<(String, i64)> {
        let (value, store_id, row) = self
            .nhn_credential_named(project, key_store, kind, value)
            .await?;
        if row.status != CredentialStatus::Active {
            return Err(Error::InvalidState(
                "the credential is already scheduled for deletion".into(),
            ));
        }
        let at = now_ms() + CREDENTIAL_DELETION_WAIT_MS;
        self.store()
            .nhn_request_credential_deletion(row.id, at, user)
            .await?;
        self.nhn_forget_store(store_id);
        Ok((value, at))
    }

    /// A credential of a key store by its (normalised) value: the value,
    /// the key store id and the row.
    async fn nhn_credential_named(
        &self,
        project: &NhnProject,
        key_store: &str,
        kind: CredentialKind,
        value: &str,
    ) -> Result<(String, i64, NhnCredential)> {
        let value = kind.normalize(value)?;
        let store = self.nhn_key_store_named(project, key_store).await?;
        let row = self
            .store()
            .nhn_credential(store.id, kind, &value)
            .await?
            .ok_or(Error::NotFound("credential"))?;
        Ok((value, store.id, row))
    }

    /// Deletes a credential scheduled for deletion, now.
    pub async fn nhn_delete_credential_now(
        &self,
        project: &NhnProject,
        key_store: &str,
        kind: CredentialKind,
        value: &str,
        user: &str,
    ) -> Result<(String, i64)> {
        let (value, store_id, row) = self
            .nhn_credential_named(project, key_store, kind, value)
            .await?;
        if row.status == CredentialStatus::Active {
            return Err(Error::InvalidState(
                "only a credential scheduled for deletion can be deleted immediately".into(),
            ));
        }
        let at = now_ms();
        self.store().nhn_delete_credential(row.id, at, user).await?;
        self.nhn_forget_store(store_id);
        Ok((value, at))
    }
}

fn check_description(d: &str) -> Result<()> {
    if d.chars().count() > 500 {
        return Err(Error::InvalidInput(
            "description must be at most 500 characters".into(),
        ));
    }
    Ok(())
}

/// A key-store credential (IPv4 address, MAC address or client certificate).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct NhnCredential {
    /// Row id.
    pub id: i64,
    /// Key store.
    pub key_store_id: i64,
    /// IPv4 address, MAC address or certificate.
    #[sqlx(try_from = "String")]
    pub kind: CredentialKind,
    /// Address, or certificate name.
    pub value: String,
    /// Description.
    pub description: String,
    /// Active, deleting or deleted.
    #[sqlx(try_from = "String")]
    pub status: CredentialStatus,
    /// Scheduled (or done) deletion, ms.
    pub deletion_at: Option<i64>,
    /// Last use, ms.
    pub last_access_at: Option<i64>,
    /// SHA-256 of the certificate DER.
    pub cert_sha256: Option<Vec<u8>>,
    /// Certificate DER.
    pub cert_der: Option<Vec<u8>>,
    /// Certificate expiry, ms.
    pub expires_at: Option<i64>,
    /// PKCS#12 file under the KEK (its password is not kept).
    pub p12_ct: Option<Vec<u8>>,
    /// Creator.
    pub creation_user: String,
    /// Creation time, ms.
    pub created_at: i64,
    /// Last modifier.
    pub last_change_user: String,
    /// Last change, ms.
    pub updated_at: i64,
}
