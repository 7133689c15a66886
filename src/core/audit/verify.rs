//! `hsm-kms audit verify`: walks the chain with the token and reports the
//! first break, with its position (sequence number) and kind.
//!
//! Format-2 links are recomputed here (SHA-256); what needs the
//! `audit-hmac` key (format-1 chain values, format-2 seals) is computed in
//! the token, one session pass per page of records.

use std::collections::BTreeMap;

use super::{
    checkpoint_signature_ok, link, link_input, seal_input, AuditChain, ChainFormat,
    CheckpointPolicy, GENESIS,
};
use super::{AuditRecord, SignedCheckpoint};
use crate::core::{Error, Result};
use crate::hsm::Hsm;
use crate::store::Store;

/// Records read and checked per token pass.
const PAGE: i64 = 10_000;
/// How far past a broken link the walk looks for the record that belongs
/// there (to tell a reordering from an edit).
const REORDER_WINDOW: i64 = 1_000;

/// What kind of break.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakKind {
    /// The record at this position is not what was chained there: a field
    /// or its chain value was changed.
    Edited,
    /// Records from this position on are missing (a gap in the sequence).
    Deleted,
    /// The record chained at this position was found at another one.
    Reordered,
    /// The log ends before the newest signed checkpoint: its tail was cut.
    Truncated,
    /// A checkpoint's signature does not hold (forged or altered).
    BadCheckpointSignature,
    /// A validly signed checkpoint names another chain value than the
    /// record at its position has: the chain was recomputed after it.
    CheckpointMismatch,
    /// Every link from this position to a sealed record holds, but the
    /// seal does not (or a format-1 chain value after them does not): a
    /// record in that span, or the seal, was changed and the links after
    /// it recomputed. A batch seal proves its batch as a whole, so the
    /// position is the span's first record, the earliest one not proven.
    BadSeal,
    /// The log ends with format-2 records that no seal covers: they were
    /// appended without the token, or the batch's sealed last record was
    /// cut off.
    Unsealed,
}

impl BreakKind {
    /// The name printed by `audit verify`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakKind::Edited => "edited",
            BreakKind::Deleted => "deleted",
            BreakKind::Reordered => "reordered",
            BreakKind::Truncated => "truncated",
            BreakKind::BadCheckpointSignature => "bad-checkpoint-signature",
            BreakKind::CheckpointMismatch => "checkpoint-mismatch",
            BreakKind::BadSeal => "bad-seal",
            BreakKind::Unsealed => "unsealed",
        }
    }
}

/// The first break found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Break {
    /// The sequence number where the log stops being what was chained.
    pub seq: i64,
    /// The kind.
    pub kind: BreakKind,
    /// What was found, for people.
    pub detail: String,
}

/// The result of a walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainReport {
    /// The first chained sequence number.
    pub start_seq: i64,
    /// Records before `start_seq` (written before the chain existed).
    pub unchained: i64,
    /// Where the walk started.
    pub from: i64,
    /// Records whose link was checked.
    pub checked: i64,
    /// Of these, records of format 1 (an in-token HMAC each).
    pub hmac_records: i64,
    /// Of these, records of format 2 (a SHA-256 link each).
    pub linked_records: i64,
    /// Batch seals checked in the token.
    pub seals: i64,
    /// The last sequence number checked, if any.
    pub last_seq: Option<i64>,
    /// Checkpoints in the store.
    pub checkpoints: usize,
    /// The newest checkpoint's sequence number.
    pub last_checkpoint: Option<i64>,
    /// The first break, if any.
    pub first_break: Option<Break>,
}

pub(super) fn brk(seq: i64, kind: BreakKind, detail: impl Into<String>) -> Break {
    Break {
        seq,
        kind,
        detail: detail.into(),
    }
}

/// What a record's stored value must be, given the chain value before it:
/// computed here (a format-2 link) or by the token (a format-1 HMAC, whose
/// input this holds).
enum Expect {
    Local([u8; 32]),
    Token(Vec<u8>),
    /// An unknown `chain_format`.
    Unknown,
}

fn expect(prev: &[u8], seq: i64, r: &AuditRecord) -> Expect {
    match ChainFormat::from_i32(r.chain_format) {
        Some(ChainFormat::BatchSeal) => Expect::Local(link(prev, seq, r.seal.is_some(), &r.row)),
        Some(ChainFormat::RecordHmac) => Expect::Token(link_input(prev, seq, &r.row)),
        None => Expect::Unknown,
    }
}

/// Resolves each [`Expect`] (one token pass for the HMACs) and appends the
/// `extra` token inputs' MACs: (values, extra MACs). An unknown format
/// resolves to an empty value, which matches no stored one.
async fn resolve(
    chain: &AuditChain,
    exp: Vec<Expect>,
    extra: Vec<Vec<u8>>,
) -> Result<(Vec<Vec<u8>>, Vec<Vec<u8>>)> {
    let mut inputs = Vec::new();
    let slots: Vec<Option<Vec<u8>>> = exp
        .into_iter()
        .map(|e| match e {
            Expect::Local(v) => Some(v.to_vec()),
            Expect::Token(m) => {
                inputs.push(m);
                None
            }
            Expect::Unknown => Some(Vec::new()),
        })
        .collect();
    let n = inputs.len();
    inputs.extend(extra);
    let mut macs = if inputs.is_empty() {
        Vec::new()
    } else {
        chain.macs(inputs).await?
    };
    let extra_macs = macs.split_off(n.min(macs.len()));
    let mut macs = macs.into_iter();
    let values = slots
        .into_iter()
        .map(|v| v.unwrap_or_else(|| macs.next().unwrap_or_default()))
        .collect();
    Ok((values, extra_macs))
}

/// Walks the chain from `from` (default: its start) with the token: each
/// record's chain value must follow from the previous one and its
/// canonical bytes at its sequence number (a format-2 link recomputed
/// here, a format-1 HMAC in the token), every format-2 seal must hold in
/// the token and the log must end on one, sequence numbers must follow
/// each other, every checkpoint's signature must hold and name the chain
/// value its record has, and the log must reach the newest checkpoint.
/// With `from` after the start, the stored chain value of `from - 1` is
/// taken as the anchor (a full walk checks it too).
pub async fn verify_chain(hsm: &Hsm, store: &Store, from: Option<i64>) -> Result<ChainReport> {
    let chain = AuditChain::open(hsm.clone(), store, CheckpointPolicy::default()).await?;
    let spki = super::attestation_spki(hsm, store).await?;
    let key = {
        use p256::pkcs8::DecodePublicKey as _;
        p256::ecdsa::VerifyingKey::from_public_key_der(&spki)
            .map_err(|e| Error::Internal(format!("attestation public key: {e}")))?
    };
    let start = store.audit_start_seq().await?;
    let unchained = store.audit_count_before(start).await?;
    let from = from.unwrap_or(start).max(start);
    let cps = store.audit_checkpoints().await?;
    let mut report = ChainReport {
        start_seq: start,
        unchained,
        from,
        checked: 0,
        hmac_records: 0,
        linked_records: 0,
        seals: 0,
        last_seq: None,
        checkpoints: cps.len(),
        last_checkpoint: cps.last().map(|c| c.seq),
        first_break: None,
    };
    // Checkpoints whose signature holds, by position; the first forged one.
    let mut good: BTreeMap<i64, &SignedCheckpoint> = BTreeMap::new();
    let mut forged = None;
    for cp in &cps {
        if checkpoint_signature_ok(&key, &chain.installation_id, cp) {
            good.insert(cp.seq, cp);
        } else if forged.is_none() && cp.seq >= from {
            forged = Some(brk(
                cp.seq,
                BreakKind::BadCheckpointSignature,
                format!(
                    "the checkpoint at seq {} does not carry a valid attestation-key signature",
                    cp.seq
                ),
            ));
        }
    }
    let mut prev = if from == start {
        GENESIS.to_vec()
    } else {
        match store.audit_record(from - 1).await? {
            Some(AuditRecord { chain: Some(c), .. }) => c,
            _ => {
                report.first_break = Some(brk(
                    from - 1,
                    BreakKind::Deleted,
                    format!("no chained record at seq {} to start from", from - 1),
                ));
                return Ok(report);
            }
        }
    };
    let mut expected = from;
    // The first format-2 record that no seal, format-1 HMAC or matching
    // checkpoint has vouched for yet.
    let mut open: Option<i64> = None;
    let mut walk_break = None;
    'walk: loop {
        let page = store.audit_records(expected, PAGE).await?;
        if page.is_empty() {
            break;
        }
        let exp = page
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let p = if i == 0 {
                    prev.as_slice()
                } else {
                    page[i - 1].chain.as_deref().unwrap_or(&[])
                };
                expect(p, r.row.id, r)
            })
            .collect();
        let seals = page
            .iter()
            .filter(|r| r.chain_format == ChainFormat::BatchSeal.as_i32() && r.seal.is_some())
            .map(|r| seal_input(r.row.id, r.chain.as_deref().unwrap_or(&[])))
            .collect();
        let (values, seal_macs) = resolve(&chain, exp, seals).await?;
        let mut seal_macs = seal_macs.into_iter();
        for (r, value) in page.iter().zip(&values) {
            let seq = r.row.id;
            if seq != expected {
                walk_break = Some(brk(
                    expected,
                    BreakKind::Deleted,
                    if seq == expected + 1 {
                        format!("the record at seq {expected} is missing")
                    } else {
                        format!("the records at seq {expected} to {} are missing", seq - 1)
                    },
                ));
                break 'walk;
            }
            let Some(stored) = r.chain.as_deref() else {
                walk_break = Some(brk(
                    seq,
                    BreakKind::Edited,
                    format!("the record at seq {seq} has no chain value"),
                ));
                break 'walk;
            };
            let Some(format) = ChainFormat::from_i32(r.chain_format) else {
                walk_break = Some(brk(
                    seq,
                    BreakKind::Edited,
                    format!(
                        "the record at seq {seq} names an unknown chain format {}",
                        r.chain_format
                    ),
                ));
                break 'walk;
            };
            if stored != value.as_slice() {
                walk_break = Some(match (format, open) {
                    // A format-1 HMAC vouches for the links before it too:
                    // which of them changed is not known.
                    (ChainFormat::RecordHmac, Some(a)) => bad_seal(a, seq),
                    _ => classify(&chain, store, &prev, r).await?,
                });
                break 'walk;
            }
            match format {
                ChainFormat::RecordHmac => {
                    open = None;
                    report.hmac_records += 1;
                }
                ChainFormat::BatchSeal => {
                    let a = *open.get_or_insert(seq);
                    if let Some(seal) = &r.seal {
                        if seal_macs.next().as_deref() != Some(seal.as_slice()) {
                            walk_break = Some(bad_seal(a, seq));
                            break 'walk;
                        }
                        open = None;
                        report.seals += 1;
                    }
                    report.linked_records += 1;
                }
            }
            if let Some(cp) = good.get(&seq) {
                if cp.chain != stored {
                    walk_break = Some(brk(
                        seq,
                        BreakKind::CheckpointMismatch,
                        format!(
                            "the checkpoint signed at seq {seq} names another chain value: the \
                             chain was recomputed from here or earlier"
                        ),
                    ));
                    break 'walk;
                }
                // A signed checkpoint vouches for the links up to it.
                open = None;
            }
            prev = stored.to_vec();
            report.checked += 1;
            report.last_seq = Some(seq);
            expected = seq + 1;
        }
    }
    let unsealed = match (&walk_break, open) {
        (None, Some(a)) => Some(brk(
            a,
            BreakKind::Unsealed,
            format!(
                "the records from seq {a} to seq {} carry no seal: appended without the token, \
                 or their batch's sealed last record was cut off",
                expected - 1
            ),
        )),
        _ => None,
    };
    let truncated = if walk_break.is_none() {
        good.keys()
            .next_back()
            .filter(|&&s| s >= expected)
            .map(|&s| {
                brk(
                    expected,
                    BreakKind::Truncated,
                    format!(
                        "the log ends at seq {} but a checkpoint signed at seq {s} covers more: \
                         records {expected} to {s} at least were cut off",
                        expected - 1
                    ),
                )
            })
    } else {
        None
    };
    // The first break by position; at one position, the walk's own finding.
    report.first_break = [walk_break, unsealed, truncated, forged]
        .into_iter()
        .flatten()
        .min_by_key(|b| b.seq);
    Ok(report)
}

/// Every link from `a` to `seq` holds but the keyed value at `seq` (a seal,
/// or a format-1 HMAC) does not.
fn bad_seal(a: i64, seq: i64) -> Break {
    brk(
        a,
        BreakKind::BadSeal,
        if a == seq {
            format!("the seal at seq {seq} does not hold: the record or its seal was changed")
        } else {
            format!(
                "the keyed value at seq {seq} does not hold over the links from seq {a}: a \
                 record from seq {a} to seq {seq} (or the seal) was changed and the links after \
                 it recomputed; the batch seal proves these records together, not one by one"
            )
        },
    )
}

/// Why the chain value of record `r` does not follow: the record chained at
/// its position found further on (reordered), or an edit.
async fn classify(
    chain: &AuditChain,
    store: &Store,
    prev: &[u8],
    r: &AuditRecord,
) -> Result<Break> {
    let seq = r.row.id;
    let stored = r.chain.clone().unwrap_or_default();
    let ahead = store.audit_records(seq + 1, REORDER_WINDOW).await?;
    // Each record further on, as if it stood at this position.
    let mut exp: Vec<Expect> = ahead.iter().map(|a| expect(prev, seq, a)).collect();
    // The next link, from this record's stored chain value.
    let next = ahead.first().filter(|a| a.row.id == seq + 1);
    if let Some(n) = next {
        exp.push(expect(&stored, n.row.id, n));
    }
    let (values, _) = resolve(chain, exp, Vec::new()).await?;
    for (a, v) in ahead.iter().zip(&values) {
        if !v.is_empty() && (*v == stored || Some(v) == a.chain.as_ref()) {
            return Ok(brk(
                seq,
                BreakKind::Reordered,
                format!(
                    "the record chained at seq {seq} is at seq {} (records were moved)",
                    a.row.id
                ),
            ));
        }
    }
    let next_holds = match (next, values.get(ahead.len())) {
        (Some(n), Some(v)) => !v.is_empty() && n.chain.as_ref() == Some(v),
        _ => false,
    };
    Ok(brk(
        seq,
        BreakKind::Edited,
        if next_holds {
            format!("the record at seq {seq} was changed after it was chained (its fields)")
        } else {
            format!("the record at seq {seq} does not match its chain value (fields or chain value changed)")
        },
    ))
}
