-- NHN Cloud Secure Key Manager: projects, appkeys, User Access Keys, key
-- stores with their authentication switches and export policy, the NHN
-- metadata of keys (the keys and their versions live in `keys` and
-- `key_versions`, so the reconciler and the deletion scheduler cover them),
-- and key-store credentials (IPv4, MAC, client certificates).

-- Each project owns one engine account (named `nhn:{name}`) that owns its keys.
-- ca_cka_id: CKA_ID of the project's client-certificate CA key (EC P-256 in
-- the token); ca_cert: its self-signed certificate (DER).
CREATE TABLE nhn_projects (
    id                       INTEGER PRIMARY KEY AUTOINCREMENT,
    name                     TEXT NOT NULL UNIQUE,
    account_id               INTEGER NOT NULL UNIQUE REFERENCES accounts(id),
    require_user_access_key  INTEGER NOT NULL DEFAULT 0,
    ca_cka_id                BLOB UNIQUE,
    ca_cert                  BLOB,
    created_at               INTEGER NOT NULL
);

CREATE TABLE nhn_appkeys (
    appkey      TEXT PRIMARY KEY,
    project_id  INTEGER NOT NULL REFERENCES nhn_projects(id),
    created_at  INTEGER NOT NULL
);

-- The Secret Access Key is a bearer value: only its SHA-256 is kept.
CREATE TABLE nhn_user_access_keys (
    access_key     TEXT PRIMARY KEY,
    project_id     INTEGER NOT NULL REFERENCES nhn_projects(id),
    secret_sha256  BLOB NOT NULL,
    status         TEXT NOT NULL,          -- active | revoked
    created_at     INTEGER NOT NULL
);

CREATE TABLE nhn_key_stores (
    id                    INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id            INTEGER NOT NULL REFERENCES nhn_projects(id),
    name                  TEXT NOT NULL,
    description           TEXT NOT NULL DEFAULT '',
    ip4_auth_use          INTEGER NOT NULL,
    mac_auth_use          INTEGER NOT NULL,
    certificate_auth_use  INTEGER NOT NULL,
    allow_export          INTEGER NOT NULL DEFAULT 0,
    creation_user         TEXT NOT NULL,
    created_at            INTEGER NOT NULL,
    last_change_user      TEXT NOT NULL,
    updated_at            INTEGER NOT NULL,
    UNIQUE (project_id, name)
);

-- nhn_type: SECRET | SYMMETRIC_KEY | ASYMMETRIC_KEY. extractable: the
-- versions were created readable under the key store's export policy.
-- auto_rotation_period: days, 0 = off.
CREATE TABLE nhn_keys (
    key_id                INTEGER PRIMARY KEY REFERENCES keys(id) ON DELETE CASCADE,
    key_store_id          INTEGER NOT NULL REFERENCES nhn_key_stores(id),
    name                  TEXT NOT NULL,
    description           TEXT NOT NULL DEFAULT '',
    nhn_type              TEXT NOT NULL,
    extractable           INTEGER NOT NULL,
    auto_rotation_period  INTEGER NOT NULL DEFAULT 0,
    next_rotation_at      INTEGER,
    last_access_at        INTEGER,
    creation_user         TEXT NOT NULL,
    last_change_user      TEXT NOT NULL
);
CREATE INDEX nhn_keys_store ON nhn_keys(key_store_id);
CREATE INDEX nhn_keys_rotation ON nhn_keys(next_rotation_at) WHERE auto_rotation_period > 0;

-- kind: ipv4 | mac | certificate; value: the address or the certificate name.
-- status: active -> deleting (deletion requested, unusable) -> deleted.
-- Certificates: cert_sha256 identifies the presented certificate; the
-- password and the PKCS#12 file are AES-GCM ciphertexts under the HSM KEK.
CREATE TABLE nhn_credentials (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    key_store_id      INTEGER NOT NULL REFERENCES nhn_key_stores(id),
    kind              TEXT NOT NULL,
    value             TEXT NOT NULL,
    description       TEXT NOT NULL DEFAULT '',
    status            TEXT NOT NULL,
    deletion_at       INTEGER,
    last_access_at    INTEGER,
    cert_sha256       BLOB,
    cert_der          BLOB,
    expires_at        INTEGER,
    password_ct       BLOB,
    p12_ct            BLOB,
    creation_user     TEXT NOT NULL,
    created_at        INTEGER NOT NULL,
    last_change_user  TEXT NOT NULL,
    updated_at        INTEGER NOT NULL
);
CREATE UNIQUE INDEX nhn_credentials_live ON nhn_credentials(key_store_id, kind, value) WHERE status <> 'deleted';
CREATE INDEX nhn_credentials_cert ON nhn_credentials(cert_sha256);
