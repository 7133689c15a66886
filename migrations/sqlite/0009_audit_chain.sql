-- Issue 12, section 2: the tamper-evident audit trail.
--
-- Every activity record written from this migration on carries `chain`, an
-- HMAC-SHA-256 computed in the token with the `audit-hmac` service key over
-- the previous record's chain value and this record's canonical bytes (see
-- docs/compliance.md, "The audit chain"). The record's `id` is its sequence
-- number: chained records are written with explicit, consecutive ids.
--
-- Records written before this migration keep `chain` NULL: `audit verify`
-- reports them as "unchained before seq N", N being `audit_chain.start_seq`,
-- the id the first chained record gets (one past the newest record at the
-- time of the upgrade).
ALTER TABLE activity_logs ADD COLUMN chain BLOB;

-- One row: where the chain starts.
CREATE TABLE audit_chain (
    singleton   INTEGER PRIMARY KEY CHECK (singleton = 1),
    start_seq   INTEGER NOT NULL,
    created_at  INTEGER NOT NULL      -- ms
);
INSERT INTO audit_chain (singleton, start_seq, created_at)
    SELECT 1, COALESCE(MAX(id), 0) + 1, CAST(strftime('%s', 'now') AS INTEGER) * 1000
    FROM activity_logs;

-- Checkpoints: the chain value at `seq`, at time `at` (ms), signed in the
-- token with the attestation key (ECDSA P-256, DER) over the canonical
-- checkpoint bytes. One every `audit.checkpoint_every_records` records or
-- `audit.checkpoint_every_secs` seconds.
CREATE TABLE audit_checkpoints (
    seq        INTEGER PRIMARY KEY,
    chain      BLOB NOT NULL,
    at         INTEGER NOT NULL,
    signature  BLOB NOT NULL
);
