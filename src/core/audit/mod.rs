//! The tamper-evident audit trail (issue 12, section 2): every activity
//! record carries a chain value, and the chain is sealed in the token with
//! the `audit-hmac` service key. Two formats ([`ChainFormat`]), told apart
//! per record:
//! - [`ChainFormat::BatchSeal`] (the default, `audit.seal = "batch"`): each
//!   record's chain value is a link, SHA-256 over the previous chain value
//!   and the record's canonical bytes ([`canonical_record_v2`]), computed by
//!   the service; the last record of every committed batch also carries a
//!   seal, HMAC-SHA-256 computed in the token over its sequence number and
//!   link ([`seal_input`]). One token call per batch.
//! - [`ChainFormat::RecordHmac`] (records written before the seal existed,
//!   and `audit.seal = "record"`): each chain value is HMAC-SHA-256 computed
//!   in the token over the previous chain value and the record's canonical
//!   bytes ([`canonical_record`]). One token call per record.
//!
//! Every `audit.checkpoint_every_records` records or
//! `audit.checkpoint_every_secs` seconds, a checkpoint (sequence number,
//! chain value, time) is signed in the token with the attestation key
//! ([`canonical_checkpoint`]).
//!
//! The chain is computed by the activity log's writer, per batch
//! ([`AuditChain::chain_batch`]); [`verify`] walks it again with the token,
//! and [`export`] writes it for an auditor, whose links and checkpoints
//! [`export::verify_export`] checks offline.

pub mod export;
mod verify;

pub use verify::{verify_chain, Break, BreakKind, ChainReport};

use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use super::{service_keys, Error, Result};
use crate::core::ActivityRecord;
use crate::hsm::{Hsm, OpClass, SignAlg};
use crate::store::{ActivityWriter, ChainTail, DirectWriter, InstallationRepo as _, Store};

/// The first field of a record's canonical bytes, format 1 (in-token HMAC
/// per record).
pub const RECORD_TAG: &str = "hsm-kms-audit-record/1";
/// The first field of a record's canonical bytes, format 2 (SHA-256 link,
/// sealed per batch).
pub const RECORD_TAG_V2: &str = "hsm-kms-audit-record/2";
/// The first field of a seal's HMAC input.
pub const SEAL_TAG: &str = "hsm-kms-audit-seal/2";
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

/// The canonical bytes of record `seq`, format 1: each field as a 4-byte
/// big-endian length followed by its bytes, in this order: [`RECORD_TAG`],
/// seq, at, account id, key uid, key name, key id, version, action, auth
/// type, caller, source address, result, status, message. Integers are
/// 8-byte big-endian two's complement; an absent version is an empty field;
/// texts are UTF-8. The record's own `id` is ignored: `seq` is where it
/// belongs.
pub fn canonical_record(seq: i64, r: &ActivityRecord) -> Vec<u8> {
    canonical(RECORD_TAG, seq, None, r)
}

/// The canonical bytes of record `seq`, format 2: as [`canonical_record`]
/// with [`RECORD_TAG_V2`] first and, right after the sequence number, one
/// more field: 1 byte, 1 when the record carries its batch's seal and 0
/// when not (so that a seal removed or added changes the link).
pub fn canonical_record_v2(seq: i64, sealed: bool, r: &ActivityRecord) -> Vec<u8> {
    canonical(RECORD_TAG_V2, seq, Some(sealed), r)
}

fn canonical(tag: &str, seq: i64, sealed: Option<bool>, r: &ActivityRecord) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + r.message.len());
    field(&mut out, tag.as_bytes());
    int(&mut out, seq);
    if let Some(sealed) = sealed {
        field(&mut out, &[u8::from(sealed)]);
    }
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

/// The link of record `seq` in format 2: SHA-256 over the previous chain
/// value, then [`canonical_record_v2`]. Anyone can compute it; the seal
/// makes it binding.
pub fn link(prev: &[u8], seq: i64, sealed: bool, r: &ActivityRecord) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(prev);
    h.update(canonical_record_v2(seq, sealed, r));
    h.finalize().into()
}

/// The HMAC input of the seal on record `seq` whose link is `link`, fields
/// encoded as in [`canonical_record`]: [`SEAL_TAG`], seq, link (32 bytes).
pub fn seal_input(seq: i64, link: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    field(&mut out, SEAL_TAG.as_bytes());
    int(&mut out, seq);
    field(&mut out, link);
    out
}

/// How a record's chain value is made (`activity_logs.chain_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChainFormat {
    /// 1: HMAC-SHA-256 in the token over the previous chain value and
    /// [`canonical_record`], one token call per record.
    RecordHmac,
    /// 2: SHA-256 link over the previous chain value and
    /// [`canonical_record_v2`]; the last record of each batch carries a seal
    /// (HMAC-SHA-256 in the token over [`seal_input`]).
    BatchSeal,
}

impl ChainFormat {
    /// The stored number.
    pub fn as_i32(self) -> i32 {
        match self {
            ChainFormat::RecordHmac => 1,
            ChainFormat::BatchSeal => 2,
        }
    }

    /// The format a stored number names, `None` for an unknown one.
    pub fn from_i32(v: i32) -> Option<Self> {
        match v {
            1 => Some(ChainFormat::RecordHmac),
            2 => Some(ChainFormat::BatchSeal),
            _ => None,
        }
    }
}

/// How the writer seals the chain (`audit.seal`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SealMode {
    /// Links computed by the service, one in-token HMAC (the seal) per
    /// group-commit batch ([`ChainFormat::BatchSeal`]; the default).
    #[default]
    Batch,
    /// One in-token HMAC per record ([`ChainFormat::RecordHmac`]), the
    /// earlier way: kept to measure the batch seal against.
    Record,
}

impl SealMode {
    /// The format records written in this mode get.
    pub fn format(self) -> ChainFormat {
        match self {
            SealMode::Batch => ChainFormat::BatchSeal,
            SealMode::Record => ChainFormat::RecordHmac,
        }
    }
}

/// The chain values of one batch, as the writer stores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchChain {
    /// Their format.
    pub format: ChainFormat,
    /// Each record's chain value.
    pub chains: Vec<[u8; 32]>,
    /// The seal of the last record (format 2).
    pub seal: Option<[u8; 32]>,
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
    /// Per batch or per record (`audit.seal`).
    seal: SealMode,
}

impl std::fmt::Debug for AuditChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditChain")
            .field("policy", &self.policy)
            .field("seal", &self.seal)
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
            seal: SealMode::default(),
        })
    }

    /// How batches are sealed (`audit.seal`; per batch by default).
    pub fn with_seal(mut self, seal: SealMode) -> Self {
        self.seal = seal;
        self
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

    /// The chain values of `rows` numbered from `first` after `prev`, in
    /// the writer's format: per batch, the links computed here and one
    /// `C_Sign` (`CKM_SHA256_HMAC`) in the token for the last record's seal;
    /// per record, [`AuditChain::chain_values`].
    pub async fn chain_batch(
        &self,
        prev: [u8; 32],
        first: i64,
        rows: &[ActivityRecord],
    ) -> Result<BatchChain> {
        match self.seal {
            SealMode::Record => Ok(BatchChain {
                format: ChainFormat::RecordHmac,
                chains: self.chain_values(prev, first, rows).await?,
                seal: None,
            }),
            SealMode::Batch => {
                let chains = batch_links(prev, first, rows);
                let seal = match chains.last() {
                    Some(l) => Some(self.seal_of(first + chains.len() as i64 - 1, l).await?),
                    None => None,
                };
                Ok(BatchChain {
                    format: ChainFormat::BatchSeal,
                    chains,
                    seal,
                })
            }
        }
    }

    /// [`AuditChain::chain_batch`] with the token calls on the calling
    /// thread (the activity-log writer's own thread).
    pub(crate) fn chain_batch_blocking(
        &self,
        prev: [u8; 32],
        first: i64,
        rows: &[ActivityRecord],
    ) -> Result<BatchChain> {
        match self.seal {
            SealMode::Record => {
                let msgs = record_messages(first, rows);
                let id = &self.hmac_id;
                Ok(BatchChain {
                    format: ChainFormat::RecordHmac,
                    chains: self.hsm.run_audit_blocking(OpClass::Symmetric, |s| {
                        record_hmacs(s, id, prev, &msgs)
                    })?,
                    seal: None,
                })
            }
            SealMode::Batch => {
                let chains = batch_links(prev, first, rows);
                let seal = match chains.last() {
                    Some(l) => {
                        let input = seal_input(first + chains.len() as i64 - 1, l);
                        let id = &self.hmac_id;
                        let mac = self.hsm.run_audit_blocking(OpClass::Symmetric, |s| {
                            s.hmac_sha256(id, &input)
                        })?;
                        Some(to32(&mac).ok_or_else(|| {
                            Error::Internal("HMAC-SHA-256 of another length".into())
                        })?)
                    }
                    None => None,
                };
                Ok(BatchChain {
                    format: ChainFormat::BatchSeal,
                    chains,
                    seal,
                })
            }
        }
    }

    /// The seal of record `seq` whose link is `link`: HMAC-SHA-256 in the
    /// token over [`seal_input`].
    /// One short token call: on the writer's own thread with
    /// `hsm.inline_symmetric` ([`Hsm::run_audit_short`]).
    async fn seal_of(&self, seq: i64, link: &[u8; 32]) -> Result<[u8; 32]> {
        let id = self.hmac_id.clone();
        let input = seal_input(seq, link);
        let mac = self
            .hsm
            .run_audit_short(move |s| s.hmac_sha256(&id, &input))
            .await?;
        to32(&mac).ok_or_else(|| Error::Internal("HMAC-SHA-256 of another length".into()))
    }

    /// The chain values of `rows` numbered from `first` after `prev`, format
    /// 1: one token session, `C_Sign` (`CKM_SHA256_HMAC`) per record, in
    /// order.
    pub async fn chain_values(
        &self,
        prev: [u8; 32],
        first: i64,
        rows: &[ActivityRecord],
    ) -> Result<Vec<[u8; 32]>> {
        let msgs = Arc::new(record_messages(first, rows));
        let id = self.hmac_id.clone();
        Ok(self
            .hsm
            .run_audit(OpClass::Symmetric, move |s| {
                record_hmacs(s, &id, prev, &msgs)
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

    /// [`AuditChain::checkpoint`] on the calling thread.
    fn checkpoint_blocking(&self, seq: i64, chain: &[u8], at: i64) -> Result<SignedCheckpoint> {
        let bytes = canonical_checkpoint(&self.installation_id, seq, chain, at);
        let id = &self.attest_id;
        let signature = self.hsm.run_audit_blocking(OpClass::Asymmetric, |s| {
            s.sign(id, SignAlg::EcdsaP256Sha256, &bytes)
        })?;
        Ok(SignedCheckpoint {
            seq,
            chain: chain.to_vec(),
            at,
            signature,
        })
    }

    /// Signs a checkpoint in the token.
    async fn checkpoint(&self, seq: i64, chain: &[u8], at: i64) -> Result<SignedCheckpoint> {
        let bytes = canonical_checkpoint(&self.installation_id, seq, chain, at);
        let id = self.attest_id.clone();
        let signature = self
            .hsm
            .run_audit(OpClass::Asymmetric, move |s| {
                s.sign(&id, SignAlg::EcdsaP256Sha256, &bytes)
            })
            .await?;
        Ok(SignedCheckpoint {
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
    /// (and the batch's seal) computed from the cached tail before the
    /// transaction, the tail read again inside it (the store's write
    /// transaction: `BEGIN IMMEDIATE` on SQLite, the advisory write lock on
    /// PostgreSQL) and the values recomputed only when another writer (the
    /// admin CLI, another node) moved it; a checkpoint when due.
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
        if self.statement_cache && conn.is_sqlite() {
            match self
                .write_batch_sqlite(conn, cached, since_ms, rows, &guess)
                .await
            {
                Ok(true) => return Ok(()),
                // Not for the one-call path: written below instead.
                Ok(false) => {}
                Err(e) => {
                    conn.sqlite_rollback().await;
                    return Err(e);
                }
            }
        }
        let (mut first, mut prev) = Self::next_link(&guess);
        let mut batch = self.chain_batch(prev, first, rows).await?;
        let mut tx = conn.begin_audit_batch().await?;
        // One statement for the tail and the newest checkpoint.
        let (tail, cp) = tx.chain_state().await?;
        if tail != guess {
            (first, prev) = Self::next_link(&tail);
            batch = self.chain_batch(prev, first, rows).await?;
        }
        tx.insert_chained(
            first,
            rows,
            &batch.chains,
            batch.format.as_i32(),
            batch.seal.as_ref(),
            self.statement_cache,
        )
        .await?;
        let last_seq = first + rows.len() as i64 - 1;
        let last_chain = batch.chains.last().copied().unwrap_or(prev);
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

    /// [`AuditChain::write_batch`] on SQLite in two calls to the store's
    /// connection worker: `BEGIN IMMEDIATE` with the chain state read in it,
    /// made while the token computes the batch's seal from the cached tail;
    /// then every record as one INSERT (and the checkpoint when due) with
    /// the COMMIT. Same transaction, same durability (the records are
    /// acknowledged after the commit returns), fewer thread hand-offs
    /// while the requests of the next batch wait. `Ok(false)`: not written
    /// (a text field with a NUL character; the transaction rolled back).
    /// On an error the transaction may still be open: the caller rolls
    /// it back.
    async fn write_batch_sqlite(
        &self,
        conn: &mut ActivityWriter,
        cached: &mut Option<ChainTail>,
        since_ms: i64,
        rows: &[ActivityRecord],
        guess: &ChainTail,
    ) -> Result<bool> {
        let (mut first, mut prev) = Self::next_link(guess);
        let (batch, state) = tokio::join!(
            self.chain_batch(prev, first, rows),
            conn.sqlite_begin_batch()
        );
        let Some((tail, cp)) = state? else {
            return Ok(false);
        };
        let mut batch = batch?;
        if tail != *guess {
            (first, prev) = Self::next_link(&tail);
            batch = self.chain_batch(prev, first, rows).await?;
        }
        let last_seq = first + rows.len() as i64 - 1;
        let last_chain = batch.chains.last().copied().unwrap_or(prev);
        let now = crate::core::now_ms();
        let checkpoint = if self.due(cp, since_ms, last_seq, now) {
            Some(self.checkpoint(last_seq, &last_chain, now).await?)
        } else {
            None
        };
        let written = conn
            .sqlite_insert_commit(
                first,
                rows,
                &batch.chains,
                batch.format.as_i32(),
                batch.seal.as_ref(),
                checkpoint.as_ref(),
            )
            .await?;
        if !written {
            conn.sqlite_rollback().await;
            return Ok(false);
        }
        *cached = Some(ChainTail {
            start_seq: tail.start_seq,
            last: Some((last_seq, Some(last_chain.to_vec()))),
        });
        Ok(true)
    }

    /// [`AuditChain::write_batch`] on the activity-log writer's own thread
    /// and SQLite connection (`activity_log.writer_thread`): the chain
    /// values and the seal computed from the cached tail on this thread
    /// (the token call runs here, no worker hand-off), then `BEGIN
    /// IMMEDIATE` with the chain state read in it, the values recomputed
    /// only when another writer moved the tail, the INSERTs, the
    /// checkpoint when due and the `COMMIT`. Same transaction, same
    /// durability: the caller acknowledges the records after this returns.
    /// On an error the transaction is rolled back (or the caller drops the
    /// connection) and `cached` is left empty.
    pub(crate) fn write_batch_direct(
        &self,
        conn: &mut DirectWriter,
        cached: &mut Option<ChainTail>,
        since_ms: i64,
        rows: &[ActivityRecord],
    ) -> Result<()> {
        let guess = match cached.take() {
            Some(t) => t,
            None => conn.chain_state()?.0,
        };
        let (first, prev) = Self::next_link(&guess);
        let batch = self.chain_batch_blocking(prev, first, rows)?;
        let (tail, cp) = conn.begin_batch()?;
        match self.insert_direct(conn, since_ms, rows, &guess, &tail, cp, batch) {
            Ok(t) => {
                *cached = Some(t);
                Ok(())
            }
            Err(e) => {
                conn.rollback();
                Err(e)
            }
        }
    }

    /// The part of [`AuditChain::write_batch_direct`] inside the
    /// transaction; returns the tail after the batch.
    #[allow(clippy::too_many_arguments)]
    fn insert_direct(
        &self,
        conn: &mut DirectWriter,
        since_ms: i64,
        rows: &[ActivityRecord],
        guess: &ChainTail,
        tail: &ChainTail,
        cp: Option<(i64, i64)>,
        mut batch: BatchChain,
    ) -> Result<ChainTail> {
        let (mut first, mut prev) = Self::next_link(guess);
        if tail != guess {
            (first, prev) = Self::next_link(tail);
            batch = self.chain_batch_blocking(prev, first, rows)?;
        }
        let last_seq = first + rows.len() as i64 - 1;
        let last_chain = batch.chains.last().copied().unwrap_or(prev);
        let now = crate::core::now_ms();
        let checkpoint = if self.due(cp, since_ms, last_seq, now) {
            Some(self.checkpoint_blocking(last_seq, &last_chain, now)?)
        } else {
            None
        };
        conn.insert_commit(
            first,
            rows,
            &batch.chains,
            batch.format.as_i32(),
            batch.seal.as_ref(),
            checkpoint.as_ref(),
        )?;
        Ok(ChainTail {
            start_seq: tail.start_seq,
            last: Some((last_seq, Some(last_chain.to_vec()))),
        })
    }

    /// [`AuditChain::checkpoint_if_due`] on the writer thread's own
    /// connection.
    pub(crate) fn checkpoint_if_due_direct(
        &self,
        conn: &mut DirectWriter,
        since_ms: i64,
    ) -> Result<bool> {
        let (tail, cp) = conn.begin_batch()?;
        let out = (|| {
            let Some((seq, Some(chain))) = tail.last else {
                return Ok(false);
            };
            let now = crate::core::now_ms();
            let covered = cp.map(|c| c.0).unwrap_or(0);
            let cp_at = cp.map(|c| c.1).unwrap_or(since_ms);
            if seq < tail.start_seq || seq <= covered || now - cp_at < self.policy.every_ms {
                return Ok(false);
            }
            let cp = self.checkpoint_blocking(seq, &chain, now)?;
            conn.insert_checkpoint(&cp)?;
            conn.commit()?;
            Ok(true)
        })();
        if !matches!(out, Ok(true)) {
            conn.rollback();
        }
        out
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

/// The chain values of format 2 (batch seal): SHA-256 links of `rows`
/// numbered from `first` after `prev`, the last one marked sealed.
fn batch_links(prev: [u8; 32], first: i64, rows: &[ActivityRecord]) -> Vec<[u8; 32]> {
    let mut p = prev;
    let last = rows.len().saturating_sub(1);
    rows.iter()
        .enumerate()
        .map(|(i, r)| {
            p = link(&p, first + i as i64, i == last, r);
            p
        })
        .collect()
}

/// The canonical bytes of `rows` numbered from `first` (format 1).
fn record_messages(first: i64, rows: &[ActivityRecord]) -> Vec<Vec<u8>> {
    rows.iter()
        .enumerate()
        .map(|(i, r)| canonical_record(first + i as i64, r))
        .collect()
}

/// The chain values of format 1: one token HMAC per record over the
/// previous value and the record's bytes, in order, on session `s`.
fn record_hmacs(
    s: &crate::hsm::SessionRef<'_>,
    id: &[u8],
    prev: [u8; 32],
    msgs: &[Vec<u8>],
) -> crate::hsm::Result<Vec<[u8; 32]>> {
    let mut prev = prev;
    let mut out = Vec::with_capacity(msgs.len());
    let mut buf = Vec::with_capacity(512);
    for m in msgs {
        buf.clear();
        buf.extend_from_slice(&prev);
        buf.extend_from_slice(m);
        let mac = s.hmac_sha256(id, &buf)?;
        prev = to32(&mac).ok_or_else(|| {
            crate::hsm::HsmError::Malformed("HMAC-SHA-256 of another length".into())
        })?;
        out.push(prev);
    }
    Ok(out)
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
    cp: &SignedCheckpoint,
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
    fn format_two_bytes_carry_their_tag_and_the_seal_flag() {
        let b = canonical_record_v2(7, true, &row());
        let mut want = Vec::new();
        want.extend_from_slice(&22u32.to_be_bytes());
        want.extend_from_slice(b"hsm-kms-audit-record/2");
        want.extend_from_slice(&8u32.to_be_bytes());
        want.extend_from_slice(&7i64.to_be_bytes());
        want.extend_from_slice(&1u32.to_be_bytes());
        want.push(1);
        assert_eq!(&b[..want.len()], &want[..]);
        // After the flag, the fields of format 1.
        let one = canonical_record(7, &row());
        assert_eq!(&b[want.len()..], &one[4 + 22 + 4 + 8..]);
        // A seal removed or added changes the link.
        assert_ne!(
            link(&GENESIS, 7, true, &row()),
            link(&GENESIS, 7, false, &row())
        );
        // The link is SHA-256 over the previous value and the bytes.
        let mut h = Sha256::new();
        h.update([9u8; 32]);
        h.update(canonical_record_v2(7, false, &row()));
        let want: [u8; 32] = h.finalize().into();
        assert_eq!(link(&[9u8; 32], 7, false, &row()), want);
        // Seals are over their own tag, the position and the link.
        let s = seal_input(7, &[3u8; 32]);
        assert_eq!(&s[4..4 + SEAL_TAG.len()], SEAL_TAG.as_bytes());
        assert_ne!(seal_input(8, &[3u8; 32]), s);
        assert_eq!(ChainFormat::from_i32(2), Some(ChainFormat::BatchSeal));
        assert_eq!(ChainFormat::from_i32(1), Some(ChainFormat::RecordHmac));
        assert_eq!(ChainFormat::from_i32(0), None);
        assert_eq!(SealMode::default().format(), ChainFormat::BatchSeal);
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

/// A signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SignedCheckpoint {
    /// The last record it covers.
    pub seq: i64,
    /// That record's chain value.
    pub chain: Vec<u8>,
    /// When it was made, ms.
    pub at: i64,
    /// ECDSA P-256 signature (DER) over the canonical checkpoint bytes.
    pub signature: Vec<u8>,
}

/// An activity record with its chain value, as stored.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRecord {
    /// The record (`id` is its sequence number).
    #[sqlx(flatten)]
    pub row: ActivityRecord,
    /// Its chain value; `None` for records written before the chain.
    pub chain: Option<Vec<u8>>,
    /// How `chain` was made: 1, an in-token HMAC per record; 2, a SHA-256
    /// link, sealed per batch (see `core::audit::ChainFormat`).
    pub chain_format: i32,
    /// The batch seal (format 2, last record of a batch), else `None`.
    pub seal: Option<Vec<u8>>,
}
