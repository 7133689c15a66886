-- The installation id that binds this store to its token (issue 8, item 1).
-- `hsm-kms init` writes it here and, as a private non-modifiable CKO_DATA
-- object labelled `hsm-kms/installation`, on the token. At every start the
-- two must agree, or the service refuses to start and destroys nothing.
-- One row at most.
CREATE TABLE installation (
    singleton        INTEGER PRIMARY KEY CHECK (singleton = 1),
    installation_id  TEXT NOT NULL,
    created_at       INTEGER NOT NULL
);
