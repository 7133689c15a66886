-- The PostgreSQL schema: the same tables and columns as the SQLite
-- migrations 0001 to 0007 (see migrations/sqlite for the history and the
-- meaning of each column), as of their last step. Times are BIGINT
-- milliseconds since the Unix epoch, flags BOOLEAN, ids identity columns.

CREATE TABLE service_keys (
    name        TEXT PRIMARY KEY,
    cka_id      BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE accounts (
    id          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    created_at  BIGINT NOT NULL
);

-- secret_ct: the secret key, AES-GCM encrypted under the HSM-resident KEK,
-- with the access key as AAD.
CREATE TABLE access_keys (
    access_key  TEXT PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts(id),
    secret_ct   BYTEA NOT NULL,
    status      TEXT NOT NULL,          -- active | revoked
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE keys (
    id               BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    uid              TEXT NOT NULL UNIQUE,   -- NAVER keyTag
    account_id       BIGINT NOT NULL REFERENCES accounts(id),
    name             TEXT NOT NULL,
    key_type         TEXT NOT NULL,          -- AES256 | RSA2048 | ECDSA | SECRET
    status           TEXT NOT NULL,          -- ENABLE | DISABLE | REVOKE | DELETED
    memo             TEXT NOT NULL DEFAULT '',
    protection_type  TEXT NOT NULL DEFAULT 'COMMON_HSM',
    is_convergent    BOOLEAN NOT NULL,
    is_auto_rotation BOOLEAN NOT NULL,
    rotation_period  BIGINT,                 -- days
    next_rotation_at BIGINT,                 -- ms
    destroy_at       BIGINT,                 -- ms
    status_before_delete TEXT,
    status_at        BIGINT NOT NULL,        -- ms, last status change
    created_at       BIGINT NOT NULL,        -- ms
    updated_at       BIGINT NOT NULL,
    acl_enabled      BOOLEAN NOT NULL DEFAULT FALSE,
    revision         BIGINT NOT NULL DEFAULT 0
);
-- Names are unique per account among keys that are not deleted.
CREATE UNIQUE INDEX keys_account_name ON keys(account_id, name) WHERE status <> 'DELETED';
CREATE INDEX keys_account ON keys(account_id);

-- state: pending (row written, HSM object may not exist yet) -> active ->
-- destroying (object being destroyed) -> destroyed.
CREATE TABLE key_versions (
    key_id      BIGINT NOT NULL REFERENCES keys(id),
    version     BIGINT NOT NULL,
    state       TEXT NOT NULL,
    enabled     BOOLEAN NOT NULL,
    cka_id      BYTEA NOT NULL UNIQUE,
    aux_cka_id  BYTEA UNIQUE,                -- convergent HMAC key
    status_at   BIGINT NOT NULL,             -- ms, last enable/disable
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (key_id, version)
);
CREATE INDEX key_versions_state ON key_versions(state);

-- NHN Cloud Secure Key Manager.
CREATE TABLE nhn_projects (
    id                       BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name                     TEXT NOT NULL UNIQUE,
    account_id               BIGINT NOT NULL UNIQUE REFERENCES accounts(id),
    require_user_access_key  BOOLEAN NOT NULL DEFAULT TRUE,
    ca_cka_id                BYTEA UNIQUE,
    ca_cert                  BYTEA,
    created_at               BIGINT NOT NULL,
    require_user_access_key_on_data BOOLEAN NOT NULL DEFAULT FALSE
);

CREATE TABLE nhn_appkeys (
    appkey      TEXT PRIMARY KEY,
    project_id  BIGINT NOT NULL REFERENCES nhn_projects(id),
    created_at  BIGINT NOT NULL,
    status      TEXT NOT NULL DEFAULT 'active',   -- active | revoked
    revoked_at  BIGINT
);

-- The Secret Access Key is a bearer value: only its SHA-256 is kept.
CREATE TABLE nhn_user_access_keys (
    access_key     TEXT PRIMARY KEY,
    project_id     BIGINT NOT NULL REFERENCES nhn_projects(id),
    secret_sha256  BYTEA NOT NULL,
    status         TEXT NOT NULL,          -- active | revoked
    created_at     BIGINT NOT NULL
);

CREATE TABLE nhn_key_stores (
    id                    BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    project_id            BIGINT NOT NULL REFERENCES nhn_projects(id),
    name                  TEXT NOT NULL,
    description           TEXT NOT NULL DEFAULT '',
    ip4_auth_use          BOOLEAN NOT NULL,
    mac_auth_use          BOOLEAN NOT NULL,
    certificate_auth_use  BOOLEAN NOT NULL,
    allow_export          BOOLEAN NOT NULL DEFAULT FALSE,
    creation_user         TEXT NOT NULL,
    created_at            BIGINT NOT NULL,
    last_change_user      TEXT NOT NULL,
    updated_at            BIGINT NOT NULL,
    UNIQUE (project_id, name)
);

CREATE TABLE nhn_keys (
    key_id                BIGINT PRIMARY KEY REFERENCES keys(id) ON DELETE CASCADE,
    key_store_id          BIGINT NOT NULL REFERENCES nhn_key_stores(id),
    name                  TEXT NOT NULL,
    description           TEXT NOT NULL DEFAULT '',
    nhn_type              TEXT NOT NULL,
    extractable           BOOLEAN NOT NULL,
    auto_rotation_period  BIGINT NOT NULL DEFAULT 0,
    next_rotation_at      BIGINT,
    last_access_at        BIGINT,
    creation_user         TEXT NOT NULL,
    last_change_user      TEXT NOT NULL
);
CREATE INDEX nhn_keys_store ON nhn_keys(key_store_id);
CREATE INDEX nhn_keys_rotation ON nhn_keys(next_rotation_at) WHERE auto_rotation_period > 0;

CREATE TABLE nhn_credentials (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    key_store_id      BIGINT NOT NULL REFERENCES nhn_key_stores(id),
    kind              TEXT NOT NULL,
    value             TEXT NOT NULL,
    description       TEXT NOT NULL DEFAULT '',
    status            TEXT NOT NULL,
    deletion_at       BIGINT,
    last_access_at    BIGINT,
    cert_sha256       BYTEA,
    cert_der          BYTEA,
    expires_at        BIGINT,
    password_ct       BYTEA,
    p12_ct            BYTEA,
    creation_user     TEXT NOT NULL,
    created_at        BIGINT NOT NULL,
    last_change_user  TEXT NOT NULL,
    updated_at        BIGINT NOT NULL
);
CREATE UNIQUE INDEX nhn_credentials_live ON nhn_credentials(key_store_id, kind, value) WHERE status <> 'deleted';
CREATE INDEX nhn_credentials_cert ON nhn_credentials(cert_sha256);

-- NAVER API 2.0 token generators and tokens, IP ACLs, API keys, activity log.
CREATE TABLE token_generators (
    key_id        BIGINT PRIMARY KEY REFERENCES keys(id),
    generator_id  TEXT NOT NULL,
    status        TEXT NOT NULL,           -- ACTIVE | INACTIVE
    enabled_at    BIGINT NOT NULL,
    disabled_at   BIGINT,
    issued_count  BIGINT NOT NULL DEFAULT 0
);

-- Tokens are stored only as SHA-256 hashes.
CREATE TABLE tokens (
    token_hash    BYTEA PRIMARY KEY,
    token_id      TEXT NOT NULL UNIQUE,
    key_id        BIGINT NOT NULL REFERENCES keys(id),
    generator_id  TEXT NOT NULL,
    account_id    BIGINT NOT NULL,
    kind          TEXT NOT NULL,           -- access | refresh
    set_id        TEXT NOT NULL,
    expires_at    BIGINT,                  -- ms; NULL = unlimited ("UL")
    revoked_at    BIGINT,
    created_at    BIGINT NOT NULL
);
CREATE INDEX tokens_key ON tokens(key_id);

CREATE TABLE key_acl_rules (
    key_id      BIGINT NOT NULL REFERENCES keys(id),
    rule        TEXT NOT NULL,             -- IPv4 address or CIDR
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (key_id, rule)
);

CREATE TABLE api_keys (
    api_key     TEXT PRIMARY KEY,
    account_id  BIGINT NOT NULL REFERENCES accounts(id),
    status      TEXT NOT NULL,             -- active | revoked
    created_at  BIGINT NOT NULL
);

CREATE TABLE activity_logs (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            BIGINT NOT NULL,         -- ms
    account_id    BIGINT NOT NULL,
    key_uid       TEXT NOT NULL,
    key_name      TEXT NOT NULL,
    key_id        BIGINT NOT NULL,
    version       BIGINT,
    action        TEXT NOT NULL,
    auth_type     TEXT NOT NULL,
    caller        TEXT NOT NULL,
    source_ip     TEXT NOT NULL,
    result        TEXT NOT NULL,
    status        BIGINT NOT NULL,         -- HTTP status
    message       TEXT NOT NULL
);
CREATE INDEX activity_logs_key ON activity_logs(key_uid, at);

-- The installation id that binds this store to its token. One row at most.
CREATE TABLE installation (
    singleton        INTEGER PRIMARY KEY CHECK (singleton = 1),
    installation_id  TEXT NOT NULL,
    created_at       BIGINT NOT NULL
);
