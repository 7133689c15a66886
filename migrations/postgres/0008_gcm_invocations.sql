-- Issue 10: AES-GCM invocations per key version (SP 800-38D section 8.3).
-- `reserved` is the count of invocations handed out in blocks before use:
-- the service never encrypts past what is recorded here, so a crash can only
-- over-count (the unused rest of a block is lost, never reused). Blocks are
-- taken by an atomic increment, so several nodes get disjoint blocks.
CREATE TABLE gcm_invocations (
    cka_id    BYTEA PRIMARY KEY NOT NULL,
    reserved  BIGINT NOT NULL
);
