-- Issue 11 section 3: several nodes on one store. The same log and column as
-- migrations/sqlite/0010_nodes.sql (see there for the kinds of change).
--
-- Besides the row in `changes`, each change is sent with NOTIFY on channel
-- `hsm_kms_changes` (payload `kind:id`). PostgreSQL delivers notifications
-- at commit, in commit order, and only for transactions that commit: the
-- listening nodes drop stale entries at once, and the poll of `changes` is
-- the fallback (identity values are handed out before commit, so `seq`
-- order is not always commit order: a node whose LISTEN connection was lost
-- drops all its caches instead of trusting the poll alone).
CREATE TABLE changes (
    seq   BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind  TEXT NOT NULL,
    id    TEXT NOT NULL
);

ALTER TABLE key_versions ADD COLUMN owner_node BIGINT;

CREATE FUNCTION hsm_kms_note(k TEXT, i TEXT) RETURNS void AS $$
BEGIN
    INSERT INTO changes (kind, id) VALUES (k, COALESCE(i, ''));
    PERFORM pg_notify('hsm_kms_changes', k || ':' || COALESCE(i, ''));
END
$$ LANGUAGE plpgsql;

CREATE FUNCTION hsm_kms_keys_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM hsm_kms_note('key', OLD.uid);
        RETURN OLD;
    END IF;
    PERFORM hsm_kms_note('key', NEW.uid);
    IF NEW.acl_enabled IS DISTINCT FROM OLD.acl_enabled THEN
        PERFORM hsm_kms_note('acl', NEW.id::text);
    END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER changes_keys AFTER UPDATE OR DELETE ON keys
    FOR EACH ROW EXECUTE FUNCTION hsm_kms_keys_changed();

-- Versions and NHN metadata announce their key's uid.
CREATE FUNCTION hsm_kms_key_rows_changed() RETURNS trigger AS $$
DECLARE
    kid BIGINT;
BEGIN
    IF TG_OP = 'DELETE' THEN kid := OLD.key_id; ELSE kid := NEW.key_id; END IF;
    PERFORM hsm_kms_note('key', (SELECT uid FROM keys WHERE id = kid));
    IF TG_OP = 'DELETE' THEN RETURN OLD; END IF;
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER changes_versions AFTER UPDATE OF state, enabled OR DELETE ON key_versions
    FOR EACH ROW EXECUTE FUNCTION hsm_kms_key_rows_changed();
CREATE TRIGGER changes_nhn_keys AFTER UPDATE OF key_store_id, name, description, nhn_type, extractable, auto_rotation_period, next_rotation_at, last_change_user ON nhn_keys
    FOR EACH ROW EXECUTE FUNCTION hsm_kms_key_rows_changed();

-- Rows of one key announced by key id: TG_ARGV[0] is the kind.
CREATE FUNCTION hsm_kms_key_id_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM hsm_kms_note(TG_ARGV[0], OLD.key_id::text);
        RETURN OLD;
    END IF;
    PERFORM hsm_kms_note(TG_ARGV[0], NEW.key_id::text);
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER changes_acl AFTER INSERT OR DELETE ON key_acl_rules
    FOR EACH ROW EXECUTE FUNCTION hsm_kms_key_id_changed('acl');
CREATE TRIGGER changes_generators AFTER INSERT OR UPDATE OF generator_id, status, enabled_at, disabled_at OR DELETE ON token_generators
    FOR EACH ROW EXECUTE FUNCTION hsm_kms_key_id_changed('generator');

CREATE FUNCTION hsm_kms_tokens_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM hsm_kms_note('token', encode(OLD.token_hash, 'hex'));
        RETURN OLD;
    END IF;
    PERFORM hsm_kms_note('token', encode(NEW.token_hash, 'hex'));
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER changes_tokens AFTER UPDATE OR DELETE ON tokens
    FOR EACH ROW EXECUTE FUNCTION hsm_kms_tokens_changed();

CREATE FUNCTION hsm_kms_access_keys_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM hsm_kms_note('access_key', OLD.access_key);
        RETURN OLD;
    END IF;
    PERFORM hsm_kms_note('access_key', NEW.access_key);
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER changes_access_keys AFTER UPDATE OR DELETE ON access_keys
    FOR EACH ROW EXECUTE FUNCTION hsm_kms_access_keys_changed();

CREATE FUNCTION hsm_kms_nhn_projects_changed() RETURNS trigger AS $$
BEGIN
    PERFORM hsm_kms_note('nhn_project', NEW.id::text);
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER changes_nhn_projects AFTER UPDATE ON nhn_projects
    FOR EACH ROW EXECUTE FUNCTION hsm_kms_nhn_projects_changed();

CREATE FUNCTION hsm_kms_nhn_appkeys_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM hsm_kms_note('nhn_project', OLD.project_id::text);
        RETURN OLD;
    END IF;
    PERFORM hsm_kms_note('nhn_project', NEW.project_id::text);
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER changes_nhn_appkeys AFTER UPDATE OR DELETE ON nhn_appkeys
    FOR EACH ROW EXECUTE FUNCTION hsm_kms_nhn_appkeys_changed();

CREATE FUNCTION hsm_kms_nhn_key_stores_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM hsm_kms_note('nhn_store', OLD.id::text);
        RETURN OLD;
    END IF;
    PERFORM hsm_kms_note('nhn_store', NEW.id::text);
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER changes_nhn_key_stores AFTER UPDATE OR DELETE ON nhn_key_stores
    FOR EACH ROW EXECUTE FUNCTION hsm_kms_nhn_key_stores_changed();

CREATE FUNCTION hsm_kms_nhn_credentials_changed() RETURNS trigger AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM hsm_kms_note('nhn_store', OLD.key_store_id::text);
        RETURN OLD;
    END IF;
    PERFORM hsm_kms_note('nhn_store', NEW.key_store_id::text);
    RETURN NEW;
END
$$ LANGUAGE plpgsql;
CREATE TRIGGER changes_nhn_credentials AFTER INSERT OR UPDATE OF key_store_id, kind, value, status, deletion_at, cert_sha256, expires_at OR DELETE ON nhn_credentials
    FOR EACH ROW EXECUTE FUNCTION hsm_kms_nhn_credentials_changed();
