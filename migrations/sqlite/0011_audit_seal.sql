-- Issue 12: the audit chain sealed per batch (see docs/compliance.md, "How
-- records are chained").
--
-- `chain_format` says how a record's `chain` value was made:
--   1  HMAC-SHA-256 in the token over the previous chain value and the
--      record's canonical bytes (`hsm-kms-audit-record/1`), one token call
--      per record: every record written before this migration, and those
--      written with `audit.seal = "record"`;
--   2  a link, SHA-256 over the previous chain value and the record's
--      canonical bytes (`hsm-kms-audit-record/2`), computed by the service;
--      the last record of every committed batch also carries `seal`, an
--      HMAC-SHA-256 in the token (the audit-hmac key) over its sequence
--      number and link: one token call per batch.
-- The default keeps every existing row, and any writer that does not name
-- the format, in format 1.
ALTER TABLE activity_logs ADD COLUMN chain_format INTEGER NOT NULL DEFAULT 1;
ALTER TABLE activity_logs ADD COLUMN seal BLOB;
