-- Issue 10 section 1: key creation at any key count. The per-account key
-- cap was checked with SELECT COUNT(*) FROM keys WHERE account_id = ? AND
-- status <> 'DELETED', a scan of the whole table (no index fits it) inside
-- every creation's write transaction: about 3.6 ms at 24 000 keys and four
-- times that at 100 000, with the store's write lock held. The count is now
-- kept per account by these triggers, so the check reads one row. Every
-- path that adds, removes or changes the status of a key row (creation,
-- deletion, its cancellation, the purge, the rollback of a pending
-- creation) goes through them.
CREATE TABLE account_key_counts (
    account_id INTEGER PRIMARY KEY,
    live       INTEGER NOT NULL
);
INSERT INTO account_key_counts (account_id, live)
    SELECT account_id, COUNT(*) FROM keys WHERE status <> 'DELETED' GROUP BY account_id;

CREATE TRIGGER account_key_counts_insert AFTER INSERT ON keys
WHEN NEW.status <> 'DELETED' BEGIN
    INSERT INTO account_key_counts (account_id, live) VALUES (NEW.account_id, 1)
        ON CONFLICT (account_id) DO UPDATE SET live = live + 1;
END;

CREATE TRIGGER account_key_counts_delete AFTER DELETE ON keys
WHEN OLD.status <> 'DELETED' BEGIN
    UPDATE account_key_counts SET live = live - 1 WHERE account_id = OLD.account_id;
END;

CREATE TRIGGER account_key_counts_leave AFTER UPDATE OF status, account_id ON keys
WHEN OLD.status <> 'DELETED' BEGIN
    UPDATE account_key_counts SET live = live - 1 WHERE account_id = OLD.account_id;
END;

CREATE TRIGGER account_key_counts_enter AFTER UPDATE OF status, account_id ON keys
WHEN NEW.status <> 'DELETED' BEGIN
    INSERT INTO account_key_counts (account_id, live) VALUES (NEW.account_id, 1)
        ON CONFLICT (account_id) DO UPDATE SET live = live + 1;
END;
