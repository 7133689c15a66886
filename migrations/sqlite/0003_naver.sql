-- NAVER API 2.0 token generators and tokens, IP ACLs, API Gateway API keys
-- (signature v1) and the activity log.

-- One generator per key; replacing it makes a new generator_id, which
-- invalidates every token of the old one.
CREATE TABLE token_generators (
    key_id        INTEGER PRIMARY KEY REFERENCES keys(id),
    generator_id  TEXT NOT NULL,
    status        TEXT NOT NULL,           -- ACTIVE | INACTIVE
    enabled_at    INTEGER NOT NULL,
    disabled_at   INTEGER,
    issued_count  INTEGER NOT NULL DEFAULT 0
);

-- Tokens are stored only as SHA-256 hashes.
CREATE TABLE tokens (
    token_hash    BLOB PRIMARY KEY,
    token_id      TEXT NOT NULL UNIQUE,    -- public id, recorded in the activity log
    key_id        INTEGER NOT NULL REFERENCES keys(id),
    generator_id  TEXT NOT NULL,
    account_id    INTEGER NOT NULL,
    kind          TEXT NOT NULL,           -- access | refresh
    set_id        TEXT NOT NULL,           -- the token set it belongs to
    expires_at    INTEGER,                 -- ms; NULL = unlimited ("UL")
    revoked_at    INTEGER,
    created_at    INTEGER NOT NULL
);
CREATE INDEX tokens_key ON tokens(key_id);

ALTER TABLE keys ADD COLUMN acl_enabled INTEGER NOT NULL DEFAULT 0;

CREATE TABLE key_acl_rules (
    key_id      INTEGER NOT NULL REFERENCES keys(id),
    rule        TEXT NOT NULL,             -- IPv4 address or CIDR
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (key_id, rule)
);

-- API Gateway API keys for signature v1 (API 1.0 under /keys/v1).
CREATE TABLE api_keys (
    api_key     TEXT PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts(id),
    status      TEXT NOT NULL,             -- active | revoked
    created_at  INTEGER NOT NULL
);

CREATE TABLE activity_logs (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    at            INTEGER NOT NULL,        -- ms
    account_id    INTEGER NOT NULL,
    key_uid       TEXT NOT NULL,
    key_name      TEXT NOT NULL,
    key_id        INTEGER NOT NULL,
    version       INTEGER,
    action        TEXT NOT NULL,
    auth_type     TEXT NOT NULL,           -- ACCOUNT | TOKEN | SIGNATURE_V1 | SYSTEM
    caller        TEXT NOT NULL,           -- access key or token id
    source_ip     TEXT NOT NULL,
    result        TEXT NOT NULL,           -- SUCCESS | FAIL
    status        INTEGER NOT NULL,        -- HTTP status
    message       TEXT NOT NULL
);
CREATE INDEX activity_logs_key ON activity_logs(key_uid, at);
