-- Issue 11: the NAVER replay guard shared by every node of one store (see
-- migrations/sqlite/0016_nodes2.sql). UNLOGGED: no WAL for a row per
-- guarded call; PostgreSQL empties the table after a crash of the server
-- (not after a clean restart), which reopens replays of signatures
-- accepted in the last window (`naver.signature_window_secs`) before it.
CREATE UNLOGGED TABLE used_signatures (
    digest      BYTEA PRIMARY KEY,
    expires_at  BIGINT NOT NULL
);
CREATE INDEX used_signatures_expiry ON used_signatures (expires_at);

