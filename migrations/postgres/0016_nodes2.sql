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

-- Issue 11 section 1: NHN keys without workarounds (see
-- migrations/sqlite/0016_nodes2.sql): keys.dialect, the NHN name in
-- keys.name (unique per account for NAVER keys only), one rotation
-- schedule in keys for both dialects; existing NHN rows moved over, the
-- old nhn_keys columns dropped.
ALTER TABLE keys ADD COLUMN dialect TEXT NOT NULL DEFAULT 'naver';
UPDATE keys SET dialect = 'nhn' WHERE id IN (SELECT key_id FROM nhn_keys);

DROP INDEX keys_account_name;
UPDATE keys k SET name = n.name FROM nhn_keys n WHERE n.key_id = k.id;
CREATE UNIQUE INDEX keys_account_name ON keys(account_id, name)
    WHERE status <> 'DELETED' AND dialect = 'naver';

UPDATE keys k SET
    is_auto_rotation = TRUE,
    rotation_period = n.auto_rotation_period,
    next_rotation_at = n.next_rotation_at
FROM nhn_keys n
WHERE n.key_id = k.id AND n.auto_rotation_period > 0;

DROP TRIGGER changes_nhn_keys ON nhn_keys;
DROP INDEX nhn_keys_rotation;
ALTER TABLE nhn_keys DROP COLUMN name;
ALTER TABLE nhn_keys DROP COLUMN auto_rotation_period;
ALTER TABLE nhn_keys DROP COLUMN next_rotation_at;
CREATE TRIGGER changes_nhn_keys AFTER UPDATE OF key_store_id, description, nhn_type, extractable, last_change_user ON nhn_keys
    FOR EACH ROW EXECUTE FUNCTION hsm_kms_key_rows_changed();
