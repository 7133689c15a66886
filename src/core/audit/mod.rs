//! The tamper-evident audit trail (issue 12, section 2): every activity
//! record carries a chain value, HMAC-SHA-256 computed in the token with
//! the `audit-hmac` service key over the previous record's chain value and
//! the record's canonical bytes ([`canonical_record`]); every
//! `audit.checkpoint_every_records` records or `audit.checkpoint_every_secs`
//! seconds, a checkpoint (sequence number, chain value, time) is signed in
//! the token with the attestation key ([`canonical_checkpoint`]).
//!
//! The chain is computed by the activity log's writer, per batch, in one
//! token session pass ([`AuditChain::chain_values`]); [`verify`] walks it
//! again with the token, and [`export`] writes it for an auditor, whose
//! checkpoints [`export::verify_export`] checks offline.

pub mod export;
mod verify;

pub use verify::{verify_chain, Break, BreakKind, ChainReport};

use std::sync::Arc;

use super::{service_keys, Error, Result};
use crate::core::ActivityRecord;
use crate::hsm::{Hsm, OpClass, SignAlg};
use crate::store::{ActivityWriter, ChainTail, CheckpointRow, InstallationRepo as _, Store};

/// The first field of a record's canonical bytes.
pub const RECORD_TAG: &str = "hsm-kms-audit-record/1";
/// The first field of a checkpoint's canonical bytes.
pub const CHECKPOINT_TAG: &str = "hsm-kms-audit-checkpoint/1";
/// The chain value before the first chained record.
pub const GENESIS: [u8; 32] = [0u8; 32];

fn field(out: &mut Vec<u8>, bytes: &[u8]) {
    // Fields are far below 4 GiB (request bodies are bounded).
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn int(out: &mut Vec<u8>, v: i64) {
    field(out, &v.to_be_bytes());
}

/// The canonical bytes of record `seq`: each field as a 4-byte big-endian
/// length followed by its bytes, in this order: [`RECORD_TAG`], seq, at,
/// account id, key uid, key name, key id, version, action, auth type,
/// caller, source address, result, status, message. Integers are 8-byte
/// big-endian two's complement; an absent version is an empty field; texts
/// are UTF-8. The record's own `id` is ignored: `seq` is where it belongs.
pub fn canonical_record(seq: i64, r: &ActivityRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + r.message.len());
    field(&mut out, RECORD_TAG.as_bytes());
    int(&mut out, seq);
    int(&mut out, r.at);
    int(&mut out, r.account_id);
    field(&mut out, r.key_uid.as_bytes());
    field(&mut out, r.key_name.as_bytes());
    int(&mut out, r.key_id);
    match r.version {
        Some(v) => int(&mut out, v),
        None => field(&mut out, &[]),
    }
    field(&mut out, r.action.as_bytes());
    field(&mut out, r.auth_type.as_bytes());
    field(&mut out, r.caller.as_bytes());
    field(&mut out, r.source_ip.as_bytes());
    field(&mut out, r.result.as_bytes());
    int(&mut out, r.status);
    field(&mut out, r.message.as_bytes());
    out
}

/// The bytes a checkpoint's signature covers, fields encoded as in
/// [`canonical_record`]: [`CHECKPOINT_TAG`], installation id, seq, chain
/// value (32 bytes), time (ms).
pub fn canonical_checkpoint(installation_id: &str, seq: i64, chain: &[u8], at: i64) -> Vec<u8> {
    let mut out = Vec::with_capacity(128);
    field(&mut out, CHECKPOINT_TAG.as_bytes());
    field(&mut out, installation_id.as_bytes());
    int(&mut out, seq);
    field(&mut out, chain);
    int(&mut out, at);
    out
}

/// The HMAC input of a link: the previous chain value, then the record's
/// canonical bytes.
pub fn link_input(prev: &[u8], seq: i64, r: &ActivityRecord) -> Vec<u8> {
    let mut m = Vec::with_capacity(32 + 160 + r.message.len());
    m.extend_from_slice(prev);
    m.extend_from_slice(&canonical_record(seq, r));
    m
}

fn to32(v: &[u8]) -> Option<[u8; 32]> {
    v.try_into().ok()
}

/// When checkpoints are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointPolicy {
    /// After this many records since the last checkpoint (at least 1).
    pub every_records: i64,
    /// After this long since the last checkpoint when records were added, ms.
    pub every_ms: i64,
}

impl Default for CheckpointPolicy {
    fn default() -> Self {
        CheckpointPolicy {
            every_records: 1000,
            every_ms: 60_000,
        }
    }
}

/// What the activity log's writer needs to chain records: the token, the
/// `audit-hmac` and attestation keys, the installation id and the
/// checkpoint policy.
#[derive(Clone)]
pub struct AuditChain {
    hsm: Hsm,
    hmac_id: Arc<Vec<u8>>,
    attest_id: Vec<u8>,
    installation_id: String,
    policy: CheckpointPolicy,
    /// Multi-row INSERTs kept prepared (`activity_log.statement_cache`).
    statement_cache: bool,
}

impl std::fmt::Debug for AuditChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditChain")
            .field("policy", &self.policy)
            .finish()
    }
}

/// The error an installation without the audit keys gets.
fn missing_key(name: &str) -> Error {
    Error::InvalidState(format!(
        "this installation has no `{name}` service key, which the audit chain needs: run \
         `hsm-kms init` (the upgrade step: it adds the service keys an existing installation \
         lacks and changes nothing else)"
    ))
}

impl AuditChain {
    /// Finds the keys in the store; fails when `init` has not made them.
    pub async fn open(hsm: Hsm, store: &Store, policy: CheckpointPolicy) -> Result<Self> {
        let hmac_id = store
            .service_key(service_keys::AUDIT_HMAC)
            .await?
            .ok_or_else(|| missing_key(service_keys::AUDIT_HMAC))?;
        let attest_id = store
            .service_key(service_keys::ATTESTATION)
            .await?
            .ok_or_else(|| missing_key(service_keys::ATTESTATION))?;
        let installation_id = store.installation_id().await?.unwrap_or_default();
        Ok(AuditChain {
            hsm,
            hmac_id: Arc::new(hmac_id),
            attest_id,
            installation_id,
            policy: CheckpointPolicy {
                every_records: policy.every_records.max(1),
                every_ms: policy.every_ms.max(1),
            },
            statement_cache: true,
        })
    }

    /// Whether the writer's INSERTs are kept prepared
    /// (`activity_log.statement_cache`, on by default; see
    /// [`crate::store::AuditTx::insert_chained`]).
    pub fn with_statement_cache(mut self, on: bool) -> Self {
        self.statement_cache = on;
        self
    }

    /// The checkpoint policy.
    pub fn policy(&self) -> CheckpointPolicy {
        self.policy
    }

    /// The sequence number and previous chain value the next record gets.
    fn next_link(tail: &ChainTail) -> (i64, [u8; 32]) {
        match &tail.last {
            Some((seq, Some(c))) if *seq >= tail.start_seq => (seq + 1, to32(c).unwrap_or(GENESIS)),
            Some((seq, _)) => ((seq + 1).max(tail.start_seq), GENESIS),
            None => (tail.start_seq, GENESIS),
        }
    }

    /// The chain values of `rows` numbered from `first` after `prev`: one
    /// token session, `C_Sign` (`CKM_SHA256_HMAC`) per record, in order.
    pub async fn chain_values(
        &self,
        prev: [u8; 32],
        first: i64,
        rows: &[ActivityRecord],
    ) -> Result<Vec<[u8; 32]>> {
        let msgs: Arc<Vec<Vec<u8>>> = Arc::new(
            rows.iter()
                .enumerate()
                .map(|(i, r)| canonical_record(first + i as i64, r))
                .collect(),
        );
        let id = self.hmac_id.clone();
        Ok(self
            .hsm
            .run_audit(OpClass::Symmetric, move |s| {
                let mut prev = prev;
                let mut out = Vec::with_capacity(msgs.len());
                let mut buf = Vec::with_capacity(512);
                for m in msgs.iter() {
                    buf.clear();
                    buf.extend_from_slice(&prev);
                    buf.extend_from_slice(m);
                    let mac = s.hmac_sha256(&id, &buf)?;
                    prev = to32(&mac).ok_or_else(|| {
                        crate::hsm::HsmError::Malformed("HMAC-SHA-256 of another length".into())
                    })?;
                    out.push(prev);
                }
                Ok(out)
            })
            .await?)
    }

    /// HMAC-SHA-256 of each input, independently, in one token session.
    pub async fn macs(&self, inputs: Vec<Vec<u8>>) -> Result<Vec<Vec<u8>>> {
        let id = self.hmac_id.clone();
        let inputs = Arc::new(inputs);
        Ok(self
            .hsm
            .run_audit(OpClass::Symmetric, move |s| {
                inputs.iter().map(|m| s.hmac_sha256(&id, m)).collect()
            })
            .await?)
    }

    /// Signs a checkpoint in the token.
    async fn checkpoint(&self, seq: i64, chain: &[u8], at: i64) -> Result<CheckpointRow> {
        let bytes = canonical_checkpoint(&self.installation_id, seq, chain, at);
        let id = self.attest_id.clone();
        let signature = self
            .hsm
            .run_audit(OpClass::Asymmetric, move |s| {
                s.sign(&id, SignAlg::EcdsaP256Sha256, &bytes)
            })
            .await?;
        Ok(CheckpointRow {
            seq,
            chain: chain.to_vec(),
            at,
            signature,
        })
    }

    /// Whether the chain ending at `last_seq` needs a checkpoint now.
    /// `last_cp`: the newest checkpoint's sequence number and time.
    fn due(&self, last_cp: Option<(i64, i64)>, since_ms: i64, last_seq: i64, now: i64) -> bool {
        let covered = last_cp.map(|c| c.0).unwrap_or(0);
        if last_seq <= covered {
            return false;
        }
        let cp_at = last_cp.map(|c| c.1).unwrap_or(since_ms);
        last_seq - covered >= self.policy.every_records || now - cp_at >= self.policy.every_ms
    }

    /// Writes one batch of records on the writer's connection: chain values
    /// computed from the cached tail before the transaction, the tail read
    /// again inside it (the store's write transaction: `BEGIN IMMEDIATE` on
    /// SQLite, the advisory write lock on PostgreSQL) and the values
    /// recomputed only when another writer (the admin CLI, another node)
    /// moved it; a checkpoint when due.
    /// `cached` is the tail after the batch, or `None` after a failure.
    pub(crate) async fn write_batch(
        &self,
        conn: &mut ActivityWriter,
        cached: &mut Option<ChainTail>,
        since_ms: i64,
        rows: &[ActivityRecord],
    ) -> Result<()> {
        let guess = match cached.take() {
            Some(t) => t,
            None => conn.chain_tail().await?,
        };
        let (mut first, prev) = Self::next_link(&guess);
        let mut chains = self.chain_values(prev, first, rows).await?;
        let mut tx = conn.begin_audit_batch().await?;
        // One statement for the tail and the newest checkpoint.
        let (tail, cp) = tx.chain_state().await?;
        if tail != guess {
            let (f, p) = Self::next_link(&tail);
            first = f;
            chains = self.chain_values(p, f, rows).await?;
        }
        tx.insert_chained(first, rows, &chains, self.statement_cache)
            .await?;
        let last_seq = first + rows.len() as i64 - 1;
        let last_chain = chains.last().copied().unwrap_or(prev);
        let now = crate::core::now_ms();
        if self.due(cp, since_ms, last_seq, now) {
            let cp = self.checkpoint(last_seq, &last_chain, now).await?;
            tx.insert_checkpoint(&cp).await?;
        }
        tx.commit().await?;
        *cached = Some(ChainTail {
            start_seq: tail.start_seq,
            last: Some((last_seq, Some(last_chain.to_vec()))),
        });
        Ok(())
    }

    /// The time trigger while no records arrive: a checkpoint of the tail
    /// when records were added since the last one and it is older than
    /// `audit.checkpoint_every_secs`. Returns whether one was made.
    pub(crate) async fn checkpoint_if_due(
        &self,
        conn: &mut ActivityWriter,
        since_ms: i64,
    ) -> Result<bool> {
        let mut tx = conn.begin_audit_batch().await?;
        let tail = tx.chain_tail().await?;
        let Some((seq, Some(chain))) = tail.last else {
            return Ok(false);
        };
        if seq < tail.start_seq {
            return Ok(false);
        }
        let cp = tx.last_checkpoint().await?;
        let now = crate::core::now_ms();
        let covered = cp.as_ref().map(|c| c.seq).unwrap_or(0);
        let cp_at = cp.as_ref().map(|c| c.at).unwrap_or(since_ms);
        if seq <= covered || now - cp_at < self.policy.every_ms {
            return Ok(false);
        }
        let cp = self.checkpoint(seq, &chain, now).await?;
        tx.insert_checkpoint(&cp).await?;
        tx.commit().await?;
        Ok(true)
    }
}

/// The attestation key's DER SubjectPublicKeyInfo, read from the token.
pub async fn attestation_spki(hsm: &Hsm, store: &Store) -> Result<Vec<u8>> {
    let id = store
        .service_key(service_keys::ATTESTATION)
        .await?
        .ok_or_else(|| missing_key(service_keys::ATTESTATION))?;
    Ok(hsm.public_key_spki(id).await?)
}

/// Checks a checkpoint's signature with the attestation public key (DER
/// SubjectPublicKeyInfo), in software: no token needed.
pub fn checkpoint_signature_ok(
    key: &p256::ecdsa::VerifyingKey,
    installation_id: &str,
    cp: &CheckpointRow,
) -> bool {
    use p256::ecdsa::signature::Verifier as _;
    let Ok(sig) = p256::ecdsa::Signature::from_der(&cp.signature) else {
        return false;
    };
    key.verify(
        &canonical_checkpoint(installation_id, cp.seq, &cp.chain, cp.at),
        &sig,
    )
    .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> ActivityRecord {
        ActivityRecord {
            id: 0,
            at: 1,
            account_id: 2,
            key_uid: "k".into(),
            key_name: "n".into(),
            key_id: 3,
            version: None,
            action: "Encrypt".into(),
            auth_type: "ACCOUNT".into(),
            caller: "AK".into(),
            source_ip: "127.0.0.1".into(),
            result: "SUCCESS".into(),
            status: 200,
            message: String::new(),
        }
    }

    #[test]
    fn canonical_bytes_are_length_prefixed_with_the_sequence_number() {
        let b = canonical_record(7, &row());
        let mut want = Vec::new();
        want.extend_from_slice(&22u32.to_be_bytes());
        want.extend_from_slice(b"hsm-kms-audit-record/1");
        want.extend_from_slice(&8u32.to_be_bytes());
        want.extend_from_slice(&7i64.to_be_bytes());
        assert_eq!(&b[..want.len()], &want[..]);
        // Moving text between adjacent fields changes the bytes.
        let mut r = row();
        r.key_uid = "kn".into();
        r.key_name = String::new();
        assert_ne!(canonical_record(7, &r), b);
        // So does the position.
        assert_ne!(canonical_record(8, &row()), b);
        // An absent version differs from version 0.
        let mut v0 = row();
        v0.version = Some(0);
        assert_ne!(canonical_record(7, &v0), b);
        // The stored id plays no part.
        let mut other_id = row();
        other_id.id = 99;
        assert_eq!(canonical_record(7, &other_id), b);
    }

    #[test]
    fn next_link_continues_after_unchained_records() {
        let t = ChainTail {
            start_seq: 5,
            last: Some((4, None)),
        };
        assert_eq!(AuditChain::next_link(&t), (5, GENESIS));
        let t = ChainTail {
            start_seq: 1,
            last: None,
        };
        assert_eq!(AuditChain::next_link(&t), (1, GENESIS));
        let t = ChainTail {
            start_seq: 1,
            last: Some((9, Some(vec![7u8; 32]))),
        };
        assert_eq!(AuditChain::next_link(&t), (10, [7u8; 32]));
    }
}
