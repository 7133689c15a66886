-- Issue 12: the audit chain sealed per batch (as
-- migrations/sqlite/0011_audit_seal.sql; see docs/compliance.md, "How
-- records are chained").
--
-- `chain_format` 1: `chain` is the in-token HMAC of the record (every row
-- written before this migration, and with `audit.seal = "record"`);
-- 2: `chain` is a SHA-256 link computed by the service, and the last record
-- of every committed batch carries `seal`, an in-token HMAC over its
-- sequence number and link.
ALTER TABLE activity_logs ADD COLUMN chain_format INTEGER NOT NULL DEFAULT 1;
ALTER TABLE activity_logs ADD COLUMN seal BYTEA;
