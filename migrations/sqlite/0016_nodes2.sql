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

-- Issue 11 section 1: NHN keys without workarounds. Until now an NHN key's
-- `keys` row carried a made-up name (`nhn/{uid}`, so that NAVER's
-- one-name-per-account index let NHN names repeat) and no rotation
-- schedule, its real name and schedule living in `nhn_keys`, read by a
-- second scheduler. Now:
--   keys.dialect           'naver' or 'nhn': whose rules the key follows;
--   keys.name              the NHN name too; unique per account for NAVER
--                          keys only (the index below);
--   keys.is_auto_rotation, rotation_period, next_rotation_at
--                          the one rotation schedule of both dialects.
-- Existing NHN rows are moved over, then the old columns dropped.
ALTER TABLE keys ADD COLUMN dialect TEXT NOT NULL DEFAULT 'naver';
UPDATE keys SET dialect = 'nhn' WHERE id IN (SELECT key_id FROM nhn_keys);

-- The old index would refuse two NHN keys of one project with one name.
DROP INDEX keys_account_name;
UPDATE keys SET name = (SELECT n.name FROM nhn_keys n WHERE n.key_id = keys.id)
WHERE dialect = 'nhn';
CREATE UNIQUE INDEX keys_account_name ON keys(account_id, name)
    WHERE status <> 'DELETED' AND dialect = 'naver';

UPDATE keys SET
    is_auto_rotation = 1,
    rotation_period = (SELECT n.auto_rotation_period FROM nhn_keys n WHERE n.key_id = keys.id),
    next_rotation_at = (SELECT n.next_rotation_at FROM nhn_keys n WHERE n.key_id = keys.id)
WHERE dialect = 'nhn'
  AND EXISTS (SELECT 1 FROM nhn_keys n WHERE n.key_id = keys.id AND n.auto_rotation_period > 0);

-- The moved columns go; the trigger and index naming them first.
DROP TRIGGER changes_nhn_keys_update;
DROP INDEX nhn_keys_rotation;
ALTER TABLE nhn_keys DROP COLUMN name;
ALTER TABLE nhn_keys DROP COLUMN auto_rotation_period;
ALTER TABLE nhn_keys DROP COLUMN next_rotation_at;
CREATE TRIGGER changes_nhn_keys_update AFTER UPDATE OF key_store_id, description, nhn_type, extractable, last_change_user ON nhn_keys BEGIN
    INSERT INTO changes (kind, id)
    VALUES ('key', COALESCE((SELECT uid FROM keys WHERE id = NEW.key_id), ''));
END;
