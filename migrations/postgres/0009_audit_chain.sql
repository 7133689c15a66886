-- Issue 12, section 2: the tamper-evident audit trail (as
-- migrations/sqlite/0009_audit_chain.sql; see docs/compliance.md, "The
-- audit chain").
--
-- The record's `id` is its sequence number: chained records are written
-- with explicit, consecutive ids (the writer reads the tail inside the
-- store's write transaction, under its advisory lock), so the id stops
-- being an identity column: nothing numbers records but the writer.
ALTER TABLE activity_logs ALTER COLUMN id DROP IDENTITY IF EXISTS;
ALTER TABLE activity_logs ADD COLUMN chain BYTEA;

-- One row: where the chain starts (one past the newest record at the time
-- of the upgrade; records before it stay unchained).
CREATE TABLE audit_chain (
    singleton   INTEGER PRIMARY KEY CHECK (singleton = 1),
    start_seq   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL       -- ms
);
INSERT INTO audit_chain (singleton, start_seq, created_at)
    SELECT 1, COALESCE(MAX(id), 0) + 1, (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT
    FROM activity_logs;

-- Checkpoints: the chain value at `seq`, at time `at` (ms), signed in the
-- token with the attestation key (ECDSA P-256, DER).
CREATE TABLE audit_checkpoints (
    seq        BIGINT PRIMARY KEY,
    chain      BYTEA NOT NULL,
    at         BIGINT NOT NULL,
    signature  BYTEA NOT NULL
);
