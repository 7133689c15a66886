-- Issue 11 section 3: several nodes on one store.
--
-- `changes` is the log every node follows to drop cached entries that a
-- write (by any node, the admin CLI or an operator's SQL) made stale. The
-- triggers below write it in the same transaction as the change, so a change
-- that commits is always announced and one that rolls back never is. Writes
-- are serialised by SQLite's database lock, so `seq` grows in commit order.
-- Each row names what to drop:
--   key          keys.uid         the key, its versions and NHN metadata
--   acl          keys.id          the key's IP ACL
--   generator    keys.id          the key's token generator
--   token        hex(token_hash)  one token
--   access_key   access key       one NAVER access key's secret
--   nhn_project  project id       NHN appkeys of the project, project CAs
--   nhn_store    key store id     an NHN key store and its credentials
-- Last-access times (nhn_keys.last_access_at, nhn_credentials.last_access_at)
-- are not announced: they change on every use and nothing checks them.
CREATE TABLE changes (
    seq   INTEGER PRIMARY KEY AUTOINCREMENT,
    kind  TEXT NOT NULL,
    id    TEXT NOT NULL
);

-- The node that put a version into `pending` or `destroying` (a random id
-- per process start, see src/store/nodes.rs). A reconciler repairs such a
-- row only when that node is gone; NULL (rows written before this
-- migration) counts as gone.
ALTER TABLE key_versions ADD COLUMN owner_node INTEGER;

CREATE TRIGGER changes_keys_update AFTER UPDATE ON keys BEGIN
    INSERT INTO changes (kind, id) VALUES ('key', NEW.uid);
END;
CREATE TRIGGER changes_keys_acl AFTER UPDATE OF acl_enabled ON keys BEGIN
    INSERT INTO changes (kind, id) VALUES ('acl', CAST(NEW.id AS TEXT));
END;
CREATE TRIGGER changes_keys_delete AFTER DELETE ON keys BEGIN
    INSERT INTO changes (kind, id) VALUES ('key', OLD.uid);
END;

CREATE TRIGGER changes_versions_update AFTER UPDATE OF state, enabled ON key_versions BEGIN
    INSERT INTO changes (kind, id)
    VALUES ('key', COALESCE((SELECT uid FROM keys WHERE id = NEW.key_id), ''));
END;
CREATE TRIGGER changes_versions_delete AFTER DELETE ON key_versions BEGIN
    INSERT INTO changes (kind, id)
    VALUES ('key', COALESCE((SELECT uid FROM keys WHERE id = OLD.key_id), ''));
END;

CREATE TRIGGER changes_nhn_keys_update AFTER UPDATE OF key_store_id, name, description, nhn_type, extractable, auto_rotation_period, next_rotation_at, last_change_user ON nhn_keys BEGIN
    INSERT INTO changes (kind, id)
    VALUES ('key', COALESCE((SELECT uid FROM keys WHERE id = NEW.key_id), ''));
END;

CREATE TRIGGER changes_acl_insert AFTER INSERT ON key_acl_rules BEGIN
    INSERT INTO changes (kind, id) VALUES ('acl', CAST(NEW.key_id AS TEXT));
END;
CREATE TRIGGER changes_acl_delete AFTER DELETE ON key_acl_rules BEGIN
    INSERT INTO changes (kind, id) VALUES ('acl', CAST(OLD.key_id AS TEXT));
END;

CREATE TRIGGER changes_generators_insert AFTER INSERT ON token_generators BEGIN
    INSERT INTO changes (kind, id) VALUES ('generator', CAST(NEW.key_id AS TEXT));
END;
CREATE TRIGGER changes_generators_update AFTER UPDATE OF generator_id, status, enabled_at, disabled_at ON token_generators BEGIN
    INSERT INTO changes (kind, id) VALUES ('generator', CAST(NEW.key_id AS TEXT));
END;
CREATE TRIGGER changes_generators_delete AFTER DELETE ON token_generators BEGIN
    INSERT INTO changes (kind, id) VALUES ('generator', CAST(OLD.key_id AS TEXT));
END;

CREATE TRIGGER changes_tokens_update AFTER UPDATE ON tokens BEGIN
    INSERT INTO changes (kind, id) VALUES ('token', lower(hex(NEW.token_hash)));
END;
CREATE TRIGGER changes_tokens_delete AFTER DELETE ON tokens BEGIN
    INSERT INTO changes (kind, id) VALUES ('token', lower(hex(OLD.token_hash)));
END;

CREATE TRIGGER changes_access_keys_update AFTER UPDATE ON access_keys BEGIN
    INSERT INTO changes (kind, id) VALUES ('access_key', NEW.access_key);
END;
CREATE TRIGGER changes_access_keys_delete AFTER DELETE ON access_keys BEGIN
    INSERT INTO changes (kind, id) VALUES ('access_key', OLD.access_key);
END;

CREATE TRIGGER changes_nhn_projects_update AFTER UPDATE ON nhn_projects BEGIN
    INSERT INTO changes (kind, id) VALUES ('nhn_project', CAST(NEW.id AS TEXT));
END;
CREATE TRIGGER changes_nhn_appkeys_update AFTER UPDATE ON nhn_appkeys BEGIN
    INSERT INTO changes (kind, id) VALUES ('nhn_project', CAST(NEW.project_id AS TEXT));
END;
CREATE TRIGGER changes_nhn_appkeys_delete AFTER DELETE ON nhn_appkeys BEGIN
    INSERT INTO changes (kind, id) VALUES ('nhn_project', CAST(OLD.project_id AS TEXT));
END;

CREATE TRIGGER changes_nhn_key_stores_update AFTER UPDATE ON nhn_key_stores BEGIN
    INSERT INTO changes (kind, id) VALUES ('nhn_store', CAST(NEW.id AS TEXT));
END;
CREATE TRIGGER changes_nhn_key_stores_delete AFTER DELETE ON nhn_key_stores BEGIN
    INSERT INTO changes (kind, id) VALUES ('nhn_store', CAST(OLD.id AS TEXT));
END;
CREATE TRIGGER changes_nhn_credentials_insert AFTER INSERT ON nhn_credentials BEGIN
    INSERT INTO changes (kind, id) VALUES ('nhn_store', CAST(NEW.key_store_id AS TEXT));
END;
CREATE TRIGGER changes_nhn_credentials_update AFTER UPDATE OF key_store_id, kind, value, status, deletion_at, cert_sha256, expires_at ON nhn_credentials BEGIN
    INSERT INTO changes (kind, id) VALUES ('nhn_store', CAST(NEW.key_store_id AS TEXT));
END;
CREATE TRIGGER changes_nhn_credentials_delete AFTER DELETE ON nhn_credentials BEGIN
    INSERT INTO changes (kind, id) VALUES ('nhn_store', CAST(OLD.key_store_id AS TEXT));
END;
