-- Issue 10 section 1: key creation at any key count. The per-account key
-- cap was checked with SELECT COUNT(*) FROM keys WHERE account_id = $1 AND
-- status <> 'DELETED', a scan of the account's rows inside every
-- creation's write transaction, growing with the key count. The count is
-- now kept per account by this trigger, so the check reads one row. Every
-- path that adds, removes or changes the status of a key row goes through
-- it (the same as migrations/sqlite/0018).
CREATE TABLE account_key_counts (
    account_id BIGINT PRIMARY KEY,
    live       BIGINT NOT NULL
);
INSERT INTO account_key_counts (account_id, live)
    SELECT account_id, COUNT(*) FROM keys WHERE status <> 'DELETED' GROUP BY account_id;

CREATE FUNCTION account_key_counts_track() RETURNS trigger AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') AND OLD.status <> 'DELETED' THEN
        UPDATE account_key_counts SET live = live - 1 WHERE account_id = OLD.account_id;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') AND NEW.status <> 'DELETED' THEN
        INSERT INTO account_key_counts (account_id, live) VALUES (NEW.account_id, 1)
            ON CONFLICT (account_id) DO UPDATE SET live = account_key_counts.live + 1;
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER account_key_counts_track
    AFTER INSERT OR DELETE OR UPDATE OF status, account_id ON keys
    FOR EACH ROW EXECUTE FUNCTION account_key_counts_track();
