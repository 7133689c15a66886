-- Issue 8, NHN: management calls need a User Access Key, appkeys can be
-- revoked, certificate passwords are not kept.

-- require_user_access_key now governs the management calls (credentials,
-- key creation and deletion, secret updates, key-store queries) and is on
-- for every project, existing ones included: before, it was off by default
-- and the appkey alone could change a key store's credentials and destroy
-- keys. `hsm-kms admin nhn update-project NAME --require-user-access-key
-- false` turns it off again (the server warns at start about such projects).
-- require_user_access_key_on_data: the data calls need one too; set for the
-- projects that were created with --require-user-access-key, which demanded
-- it on every call.
ALTER TABLE nhn_projects ADD COLUMN require_user_access_key_on_data INTEGER NOT NULL DEFAULT 0;
UPDATE nhn_projects SET require_user_access_key_on_data = require_user_access_key;
UPDATE nhn_projects SET require_user_access_key = 1;

-- status: active | revoked. A revoked appkey names no project.
ALTER TABLE nhn_appkeys ADD COLUMN status TEXT NOT NULL DEFAULT 'active';
ALTER TABLE nhn_appkeys ADD COLUMN revoked_at INTEGER;

-- Certificate passwords are returned once, in the issuance response, and
-- never kept: the PKCS#12 file and its password side by side in one store
-- would open the client key to whoever reads the store and the KEK.
UPDATE nhn_credentials SET password_ct = NULL;
