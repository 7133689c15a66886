-- Issue 10: AES-GCM invocations per key version (SP 800-38D section 8.3).
-- `reserved` is the count of invocations handed out in blocks before use:
-- the service never encrypts past what is recorded here, so a crash can only
-- over-count (the unused rest of a block is lost, never reused).
CREATE TABLE gcm_invocations (
    cka_id BLOB PRIMARY KEY NOT NULL,
    reserved INTEGER NOT NULL
);
