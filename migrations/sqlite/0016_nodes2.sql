-- Issue 11: the NAVER replay guard shared by every node of one store.
--
-- One row per NCP signature a node accepted on a call the guard covers
-- (`naver.replay_guard`): the first 16 bytes of SHA-256 over (access key,
-- timestamp, signature), kept until the timestamp leaves the signature
-- window. A node admits a covered call only if its INSERT ... ON CONFLICT
-- takes the digest (new, or its record expired), so a request replayed to
-- another node is refused there too. Each scheduler pass deletes the
-- expired rows.
CREATE TABLE used_signatures (
    digest      BLOB PRIMARY KEY,
    expires_at  INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX used_signatures_expiry ON used_signatures (expires_at);

