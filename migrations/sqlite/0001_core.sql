-- Core schema: service keys, accounts, access keys, keys and key versions.
CREATE TABLE service_keys (
    name        TEXT PRIMARY KEY,
    cka_id      BLOB NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE accounts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL UNIQUE,
    created_at  INTEGER NOT NULL
);

-- secret_ct: the secret key, AES-GCM encrypted under the HSM-resident KEK,
-- with the access key as AAD.
CREATE TABLE access_keys (
    access_key  TEXT PRIMARY KEY,
    account_id  INTEGER NOT NULL REFERENCES accounts(id),
    secret_ct   BLOB NOT NULL,
    status      TEXT NOT NULL,          -- active | revoked
    created_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);

CREATE TABLE keys (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    uid              TEXT NOT NULL UNIQUE,   -- NAVER keyTag
    account_id       INTEGER NOT NULL REFERENCES accounts(id),
    name             TEXT NOT NULL,
    key_type         TEXT NOT NULL,          -- AES256 | RSA2048 | ECDSA
    status           TEXT NOT NULL,          -- ENABLE | DISABLE | REVOKE | DELETED
    memo             TEXT NOT NULL DEFAULT '',
    protection_type  TEXT NOT NULL DEFAULT 'COMMON_HSM',
    is_convergent    INTEGER NOT NULL,
    is_auto_rotation INTEGER NOT NULL,
    rotation_period  INTEGER,                -- days
    next_rotation_at INTEGER,                -- ms
    destroy_at       INTEGER,                -- ms
    status_before_delete TEXT,
    status_at        INTEGER NOT NULL,       -- ms, last status change
    created_at       INTEGER NOT NULL,       -- ms
    updated_at       INTEGER NOT NULL
);
-- Names are unique per account among keys that are not deleted.
CREATE UNIQUE INDEX keys_account_name ON keys(account_id, name) WHERE status <> 'DELETED';

-- state: pending (row written, HSM object may not exist yet) -> active ->
-- destroying (object being destroyed) -> destroyed.
CREATE TABLE key_versions (
    key_id      INTEGER NOT NULL REFERENCES keys(id),
    version     INTEGER NOT NULL,
    state       TEXT NOT NULL,
    enabled     INTEGER NOT NULL,
    cka_id      BLOB NOT NULL UNIQUE,
    aux_cka_id  BLOB UNIQUE,                 -- convergent HMAC key
    status_at   INTEGER NOT NULL,            -- ms, last enable/disable
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (key_id, version)
);
CREATE INDEX key_versions_state ON key_versions(state);
