//! `hsm-kms audit verify`: walks the chain with the token and reports the
//! first break, with its position (sequence number) and kind.

use std::collections::BTreeMap;

use super::{checkpoint_signature_ok, link_input, AuditChain, CheckpointPolicy, GENESIS};
use crate::core::{Error, Result};
use crate::hsm::Hsm;
use crate::store::{AuditRecordRow, CheckpointRow, Store};

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

/// Walks the chain from `from` (default: its start) with the token: each
/// record's chain value must be the HMAC of the previous one and its
/// canonical bytes at its sequence number, sequence numbers must follow
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
        last_seq: None,
        checkpoints: cps.len(),
        last_checkpoint: cps.last().map(|c| c.seq),
        first_break: None,
    };
    // Checkpoints whose signature holds, by position; the first forged one.
    let mut good: BTreeMap<i64, &CheckpointRow> = BTreeMap::new();
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
            Some(AuditRecordRow { chain: Some(c), .. }) => c,
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
    let mut walk_break = None;
    'walk: loop {
        let page = store.audit_records(expected, PAGE).await?;
        if page.is_empty() {
            break;
        }
        let inputs = page
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let p = if i == 0 {
                    prev.as_slice()
                } else {
                    page[i - 1].chain.as_deref().unwrap_or(&[])
                };
                link_input(p, r.row.id, &r.row)
            })
            .collect();
        let macs = chain.macs(inputs).await?;
        for (r, mac) in page.iter().zip(&macs) {
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
            if stored != mac.as_slice() {
                walk_break = Some(classify(&chain, store, &prev, r).await?);
                break 'walk;
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
            }
            prev = stored.to_vec();
            report.checked += 1;
            report.last_seq = Some(seq);
            expected = seq + 1;
        }
    }
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
    report.first_break = [walk_break, truncated, forged]
        .into_iter()
        .flatten()
        .min_by_key(|b| b.seq);
    Ok(report)
}

/// Why the link of record `r` does not hold: the record chained at its
/// position found further on (reordered), or an edit.
async fn classify(
    chain: &AuditChain,
    store: &Store,
    prev: &[u8],
    r: &AuditRecordRow,
) -> Result<Break> {
    let seq = r.row.id;
    let stored = r.chain.clone().unwrap_or_default();
    let ahead = store.audit_records(seq + 1, REORDER_WINDOW).await?;
    let mut inputs: Vec<Vec<u8>> = ahead
        .iter()
        .map(|a| link_input(prev, seq, &a.row))
        .collect();
    // The next link, from this record's stored chain value.
    let next = ahead.first().filter(|a| a.row.id == seq + 1);
    if let Some(n) = next {
        inputs.push(link_input(&stored, n.row.id, &n.row));
    }
    let macs = chain.macs(inputs).await?;
    for (a, mac) in ahead.iter().zip(&macs) {
        if *mac == stored || Some(mac) == a.chain.as_ref() {
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
    let next_holds = match (next, macs.get(ahead.len())) {
        (Some(n), Some(mac)) => n.chain.as_ref() == Some(mac),
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
