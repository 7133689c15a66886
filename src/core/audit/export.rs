//! `hsm-kms audit export` and `hsm-kms audit verify-export`: the records
//! with their chain values, seals and the signed checkpoints as JSON lines
//! for an auditor, and the offline check of such a file with the
//! attestation public key (checkpoint signatures, sequence continuity,
//! format-2 links, that the log ends on a seal, checkpoints against the
//! records' chain values). Seals and format-1 chain values need the
//! `audit-hmac` key: `hsm-kms audit verify` checks them on the service.
//!
//! File format `hsm-kms-audit-export/2` (`/1`, without `chainFormat` and
//! `seal`, is still read), one JSON object per line:
//! - first, `{"type":"header","format","installationId","chainStart",
//!   "unchained","publicKeySha256","exportedAt","recordBytes","checkpointBytes"}`;
//! - then every record in sequence order, `{"type":"record","seq","at",
//!   "accountId","keyUid","keyName","keyId","version","action","authType",
//!   "caller","sourceIp","result","status","message","chain","chainFormat",
//!   "seal"}` (`chain` hex, `null` for records before the chain;
//!   `chainFormat` 1 or 2; `seal` hex on the last record of a format-2
//!   batch, else `null`);
//! - each checkpoint right after the record it covers (or at the end when
//!   that record is not in the log), `{"type":"checkpoint","seq","chain",
//!   "at","signature"}` (`signature` base64 DER).

use std::collections::BTreeMap;
use std::io::Write;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::SignedCheckpoint;
use super::{checkpoint_signature_ok, link, BreakKind, ChainFormat, GENESIS};
use crate::core::ActivityRecord;
use crate::core::{Error, Result};
use crate::hsm::Hsm;
use crate::store::{InstallationRepo as _, Store};

/// The `format` of export files.
pub const FORMAT: &str = "hsm-kms-audit-export/2";
/// The earlier format (every record format 1, no seals), still read.
pub const FORMAT_V1: &str = "hsm-kms-audit-export/1";

/// One line of an export.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Line {
    /// The first line.
    Header(Header),
    /// An activity record.
    Record(Record),
    /// A signed checkpoint.
    Checkpoint(Checkpoint),
}

/// The header line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Header {
    /// [`FORMAT`].
    pub format: String,
    /// The installation id (part of every checkpoint's signed bytes).
    pub installation_id: String,
    /// The first chained sequence number.
    pub chain_start: i64,
    /// Records before it (written before the chain existed).
    pub unchained: i64,
    /// SHA-256 (hex) of the attestation key's DER SubjectPublicKeyInfo.
    pub public_key_sha256: String,
    /// When the export was written, ms.
    pub exported_at: i64,
    /// How a record's canonical bytes and chain value are made.
    pub record_bytes: String,
    /// How a checkpoint's signed bytes are made.
    pub checkpoint_bytes: String,
}

/// A record line: the activity record as the chain saw it (its `id`, the
/// sequence number, written as `seq`), its chain value, format and seal.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    /// The record.
    #[serde(flatten)]
    pub record: ActivityRecord,
    /// Chain value, hex; `None` before the chain.
    pub chain: Option<String>,
    /// 1 (in-token HMAC per record) or 2 (SHA-256 link, sealed per batch);
    /// 1 when absent (format `/1` exports).
    #[serde(default = "format_one")]
    pub chain_format: i32,
    /// The batch seal, hex (format 2, last record of a batch).
    #[serde(default)]
    pub seal: Option<String>,
}

fn format_one() -> i32 {
    1
}

/// A checkpoint line.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// The last record it covers.
    pub seq: i64,
    /// That record's chain value, hex.
    pub chain: String,
    /// When it was made, ms.
    pub at: i64,
    /// ECDSA P-256 over SHA-256 of the checkpoint bytes, DER, base64.
    pub signature: String,
}

/// What `record_bytes` says in the header.
pub const RECORD_BYTES: &str = "chain[chainStart-1] = 32 zero bytes; chainFormat 1: chain[seq] = HMAC-SHA-256(audit-hmac key, \
     chain[seq-1] || canonical1(seq, record)); chainFormat 2: chain[seq] = SHA-256(chain[seq-1] || canonical2(seq, sealed, \
     record)), and the last record of each batch has seal = HMAC-SHA-256(audit-hmac key, \"hsm-kms-audit-seal/2\", seq, \
     chain[seq]) (fields length-prefixed as below); canonical1 = each field as a 4-byte big-endian length then its bytes: \
     \"hsm-kms-audit-record/1\", seq, at, accountId, keyUid, keyName, keyId, version (empty when null), action, \
     authType, caller, sourceIp, result, status, message; canonical2 = the same with \"hsm-kms-audit-record/2\" first and, \
     after seq, one byte 1 when the record carries a seal and 0 when not; integers 8-byte big-endian, texts UTF-8";

/// What `checkpoint_bytes` says in the header.
pub const CHECKPOINT_BYTES: &str = "ECDSA P-256 with SHA-256 (DER) by the attestation key over the fields, \
     each as a 4-byte big-endian length then its bytes: \"hsm-kms-audit-checkpoint/1\", installationId, seq, \
     chain (32 bytes), at; integers 8-byte big-endian";

fn line(out: &mut impl Write, l: &Line) -> Result<()> {
    serde_json::to_writer(&mut *out, l).map_err(|e| Error::Internal(format!("export: {e}")))?;
    out.write_all(b"\n")
        .map_err(|e| Error::Internal(format!("export: {e}")))
}

fn cp_line(c: &SignedCheckpoint) -> Line {
    Line::Checkpoint(Checkpoint {
        seq: c.seq,
        chain: hex::encode(&c.chain),
        at: c.at,
        signature: base64::engine::general_purpose::STANDARD.encode(&c.signature),
    })
}

/// Writes the whole log with chain values and checkpoints to `out`;
/// returns (records, checkpoints) written.
pub async fn export(hsm: &Hsm, store: &Store, out: &mut impl Write) -> Result<(i64, usize)> {
    let spki = super::attestation_spki(hsm, store).await?;
    let start = store.audit_start_seq().await?;
    let header = Header {
        format: FORMAT.into(),
        installation_id: store.installation_id().await?.unwrap_or_default(),
        chain_start: start,
        unchained: store.audit_count_before(start).await?,
        public_key_sha256: hex::encode(Sha256::digest(&spki)),
        exported_at: crate::core::now_ms(),
        record_bytes: RECORD_BYTES.into(),
        checkpoint_bytes: CHECKPOINT_BYTES.into(),
    };
    line(out, &Line::Header(header))?;
    let all_cps = store.audit_checkpoints().await?;
    let mut cps = all_cps.iter().peekable();
    let mut next = i64::MIN;
    let mut n = 0;
    loop {
        let page = store.audit_records(next, 10_000).await?;
        let Some(last) = page.last() else { break };
        next = last.row.id + 1;
        for r in &page {
            let a = &r.row;
            line(
                out,
                &Line::Record(Record {
                    record: a.clone(),
                    chain: r.chain.as_ref().map(hex::encode),
                    chain_format: r.chain_format,
                    seal: r.seal.as_ref().map(hex::encode),
                }),
            )?;
            n += 1;
            while let Some(c) = cps.next_if(|c| c.seq <= a.id) {
                line(out, &cp_line(c))?;
            }
        }
    }
    for c in cps {
        line(out, &cp_line(c))?;
    }
    Ok((n, all_cps.len()))
}

/// Why an export file was refused outright.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// Not an export of this format.
    #[error("not an hsm-kms audit export: {0}")]
    Malformed(String),
    /// The public key is not a P-256 PEM public key.
    #[error("the public key is not a P-256 PEM public key: {0}")]
    PublicKey(String),
    /// The export names another attestation key.
    #[error(
        "the export names another attestation key (sha256 {export}; the key given: sha256 {given})"
    )]
    OtherKey {
        /// The export's.
        export: String,
        /// The given key's.
        given: String,
    },
}

/// What the offline check found.
#[derive(Debug, Clone)]
pub struct ExportReport {
    /// Records in the file.
    pub records: i64,
    /// Chained records.
    pub chained: i64,
    /// Checkpoints whose signature holds.
    pub checkpoints_ok: usize,
    /// The first break, if any.
    pub first_break: Option<super::Break>,
}

/// Checks an export offline with the attestation public key (PEM): every
/// checkpoint's signature, sequence continuity of the chained records,
/// every format-2 link, that the records do not end on format-2 records
/// without a seal, each checkpoint's chain value against its record's, and
/// that the records reach the newest checkpoint. Seals and format-1 chain
/// values are not checked here (that needs the token: `hsm-kms audit
/// verify`).
pub fn verify_export(
    file: &[u8],
    public_key_pem: &str,
) -> std::result::Result<ExportReport, ExportError> {
    use p256::pkcs8::{DecodePublicKey as _, EncodePublicKey as _};
    let key = p256::PublicKey::from_public_key_pem(public_key_pem.trim())
        .map_err(|e| ExportError::PublicKey(e.to_string()))?;
    let spki = key
        .to_public_key_der()
        .map_err(|e| ExportError::PublicKey(e.to_string()))?;
    let given = hex::encode(Sha256::digest(spki.as_bytes()));
    let vk = p256::ecdsa::VerifyingKey::from(key);
    let text = std::str::from_utf8(file).map_err(|e| ExportError::Malformed(e.to_string()))?;
    let mut lines = text.lines().filter(|l| !l.trim().is_empty()).enumerate();
    let header = match lines.next().map(|(_, l)| serde_json::from_str::<Line>(l)) {
        Some(Ok(Line::Header(h))) if h.format == FORMAT || h.format == FORMAT_V1 => h,
        Some(Ok(_)) => {
            return Err(ExportError::Malformed(
                "the first line is not its header".into(),
            ))
        }
        Some(Err(e)) => return Err(ExportError::Malformed(format!("line 1: {e}"))),
        None => return Err(ExportError::Malformed("empty file".into())),
    };
    if header.public_key_sha256 != given {
        return Err(ExportError::OtherKey {
            export: header.public_key_sha256,
            given,
        });
    }
    let mut report = ExportReport {
        records: 0,
        chained: 0,
        checkpoints_ok: 0,
        first_break: None,
    };
    let mut breaks: Vec<super::Break> = Vec::new();
    let mut chains: BTreeMap<i64, Option<String>> = BTreeMap::new();
    let mut cps: Vec<Checkpoint> = Vec::new();
    let mut last: Option<i64> = None;
    // The first format-2 record of a run without a seal yet.
    let mut unsealed: Option<i64> = None;
    for (i, l) in lines {
        match serde_json::from_str::<Line>(l) {
            Ok(Line::Record(r)) => {
                let seq = r.record.id;
                report.records += 1;
                if seq >= header.chain_start {
                    report.chained += 1;
                    let expected = last
                        .map(|s| s + 1)
                        .unwrap_or(header.chain_start)
                        .max(header.chain_start);
                    if seq < expected {
                        breaks.push(super::verify::brk(
                            seq,
                            BreakKind::Reordered,
                            format!("seq {seq} comes after seq {}", expected - 1),
                        ));
                    } else if seq > expected {
                        breaks.push(super::verify::brk(
                            expected,
                            BreakKind::Deleted,
                            format!("the records at seq {expected} to {} are missing", seq - 1),
                        ));
                    }
                    match (&r.chain, ChainFormat::from_i32(r.chain_format)) {
                        (None, _) => breaks.push(super::verify::brk(
                            seq,
                            BreakKind::Edited,
                            format!("the record at seq {seq} has no chain value"),
                        )),
                        (Some(_), None) => breaks.push(super::verify::brk(
                            seq,
                            BreakKind::Edited,
                            format!(
                                "the record at seq {seq} names an unknown chain format {}",
                                r.chain_format
                            ),
                        )),
                        (Some(c), Some(ChainFormat::BatchSeal)) => {
                            // The link follows from the record before it in
                            // the file (a gap or a move is reported above).
                            let prev = if seq == header.chain_start {
                                Some(GENESIS.to_vec())
                            } else {
                                chains
                                    .get(&(seq - 1))
                                    .cloned()
                                    .flatten()
                                    .and_then(|p| hex::decode(p).ok())
                            };
                            if let Some(prev) = prev {
                                let want = link(&prev, seq, r.seal.is_some(), &r.record);
                                if hex::decode(c).ok().as_deref() != Some(&want[..]) {
                                    breaks.push(super::verify::brk(
                                        seq,
                                        BreakKind::Edited,
                                        format!(
                                            "the record at seq {seq} does not match its link \
                                             (fields or link changed)"
                                        ),
                                    ));
                                }
                            }
                            unsealed = if r.seal.is_some() {
                                None
                            } else {
                                unsealed.or(Some(seq))
                            };
                        }
                        (Some(_), Some(ChainFormat::RecordHmac)) => unsealed = None,
                    }
                }
                last = Some(last.map_or(seq, |s: i64| s.max(seq)));
                chains.insert(seq, r.chain);
            }
            Ok(Line::Checkpoint(c)) => cps.push(c),
            Ok(Line::Header(_)) => {
                return Err(ExportError::Malformed(format!(
                    "line {}: a second header",
                    i + 1
                )))
            }
            Err(e) => return Err(ExportError::Malformed(format!("line {}: {e}", i + 1))),
        }
    }
    let mut newest_good = None;
    for c in &cps {
        let row = SignedCheckpoint {
            seq: c.seq,
            chain: hex::decode(&c.chain).unwrap_or_default(),
            at: c.at,
            signature: base64::engine::general_purpose::STANDARD
                .decode(&c.signature)
                .unwrap_or_default(),
        };
        if !checkpoint_signature_ok(&vk, &header.installation_id, &row) {
            breaks.push(super::verify::brk(
                c.seq,
                BreakKind::BadCheckpointSignature,
                format!(
                    "the checkpoint at seq {} does not carry a valid attestation-key signature",
                    c.seq
                ),
            ));
            continue;
        }
        report.checkpoints_ok += 1;
        newest_good = newest_good.max(Some(c.seq));
        match chains.get(&c.seq) {
            Some(Some(chain)) if *chain == c.chain => {}
            Some(_) => breaks.push(super::verify::brk(
                c.seq,
                BreakKind::CheckpointMismatch,
                format!(
                    "the checkpoint signed at seq {} names another chain value than the record's",
                    c.seq
                ),
            )),
            None => {}
        }
    }
    if let Some(a) = unsealed {
        // A checkpoint signed at or after the run's end vouches for it.
        let end = last.unwrap_or(a);
        if newest_good.is_none_or(|s| s < end) {
            breaks.push(super::verify::brk(
                a,
                BreakKind::Unsealed,
                format!("the records from seq {a} to seq {end} carry no seal"),
            ));
        }
    }
    if let Some(s) = newest_good {
        let end = last.unwrap_or(header.chain_start - 1);
        if s > end {
            breaks.push(super::verify::brk(
                end + 1,
                BreakKind::Truncated,
                format!(
                    "the records end at seq {end} but a checkpoint signed at seq {s} covers more"
                ),
            ));
        }
    }
    report.first_break = breaks.into_iter().min_by_key(|b| b.seq);
    Ok(report)
}

/// What the token found in an export ([`verify_export_keyed`]).
#[derive(Debug, Clone)]
pub struct KeyedReport {
    /// Seals of format-2 records checked.
    pub seals: i64,
    /// Format-1 chain values (an HMAC each) checked.
    pub hmacs: i64,
    /// The first keyed value that does not hold, if any.
    pub first_break: Option<super::Break>,
}

/// Checks in the token what [`verify_export`] cannot check offline: every
/// seal of a format-2 record and every format-1 chain value of an export,
/// with this installation's `audit-hmac` key (`audit verify-export
/// --seals`, run by the service's operator for an auditor who holds the
/// file). A seal that fails is reported at the first record it alone
/// covers (`bad-seal`), a format-1 value at its record (`edited`). The
/// links, continuity and checkpoints are [`verify_export`]'s.
pub async fn verify_export_keyed(hsm: &Hsm, store: &Store, file: &[u8]) -> Result<KeyedReport> {
    let text =
        std::str::from_utf8(file).map_err(|e| Error::InvalidInput(format!("export: {e}")))?;
    let mut header = None;
    let mut records = Vec::new();
    for (i, l) in text.lines().filter(|l| !l.trim().is_empty()).enumerate() {
        match serde_json::from_str::<Line>(l) {
            Ok(Line::Header(h)) if i == 0 => header = Some(h),
            Ok(Line::Record(r)) => records.push(r),
            Ok(_) => {}
            Err(e) => return Err(Error::InvalidInput(format!("export line {}: {e}", i + 1))),
        }
    }
    let header = header
        .ok_or_else(|| Error::InvalidInput("export: the first line is not its header".into()))?;
    let ours = store.installation_id().await?.unwrap_or_default();
    if header.installation_id != ours {
        return Err(Error::InvalidInput(format!(
            "the export is of installation {}, this service is {ours}",
            header.installation_id
        )));
    }
    let chain =
        super::AuditChain::open(hsm.clone(), store, super::CheckpointPolicy::default()).await?;
    // (seq, token input, stored value, is a seal) in file order.
    let mut checks: Vec<(i64, Vec<u8>, Vec<u8>, bool)> = Vec::new();
    let mut prev = GENESIS.to_vec();
    for r in records.iter().filter(|r| r.record.id >= header.chain_start) {
        let seq = r.record.id;
        let Some(stored) = r.chain.as_deref().and_then(|c| hex::decode(c).ok()) else {
            continue;
        };
        match ChainFormat::from_i32(r.chain_format) {
            Some(ChainFormat::RecordHmac) => checks.push((
                seq,
                super::link_input(&prev, seq, &r.record),
                stored.clone(),
                false,
            )),
            Some(ChainFormat::BatchSeal) => {
                if let Some(seal) = r.seal.as_deref().and_then(|s| hex::decode(s).ok()) {
                    checks.push((seq, super::seal_input(seq, &stored), seal, true));
                }
            }
            None => {}
        }
        prev = stored;
    }
    let macs = chain
        .macs(checks.iter().map(|c| c.1.clone()).collect())
        .await?;
    let mut report = KeyedReport {
        seals: 0,
        hmacs: 0,
        first_break: None,
    };
    // The first record after the last keyed value that held.
    let mut open = header.chain_start;
    for ((seq, _, stored, is_seal), mac) in checks.iter().zip(&macs) {
        if mac != stored {
            // A format-1 value covers the unsealed links before it too.
            report.first_break = Some(if *is_seal || open < *seq {
                super::verify::brk(
                    open,
                    BreakKind::BadSeal,
                    format!(
                        "the keyed value at seq {seq} does not hold over the records from seq \
                         {open}: one of them, or the seal, is not what the service sealed"
                    ),
                )
            } else {
                super::verify::brk(
                    *seq,
                    BreakKind::Edited,
                    format!(
                        "the chain value at seq {seq} is not the service's HMAC of the record \
                         after seq {}",
                        seq - 1
                    ),
                )
            });
            break;
        }
        if *is_seal {
            report.seals += 1;
        } else {
            report.hmacs += 1;
        }
        open = seq + 1;
    }
    Ok(report)
}
