#!/usr/bin/env bash
# Runs hsm-kms on 127.0.0.1 against a local SoftHSMv2 token, from nothing.
#
#   scripts/serve.sh
#
# First run: installs softhsm2 and opensc if missing (apt-get; sudo when not
# root), builds the release binary, makes a SoftHSM token labelled `hsm-kms`
# with random user and SO PINs, runs `hsm-kms init`, and keeps the PINs and
# the first account's credentials in 0600 files under the data dir. Every run
# prints those credentials and serves. Re-running reuses the token, PINs and
# credentials.
#
# Environment:
#   HSM_KMS_DATA_DIR  data dir (default: .hsm-kms/ at the repository root)
#   HSM_KMS_PORT      port on 127.0.0.1 (default: 8080)
#   PKCS11_MODULE     PKCS#11 module (default: /usr/lib/softhsm/libsofthsm2.so)
#   HSM_KMS_SOFTHSM_BACKEND
#                     SoftHSM object store of a new token: `file` (default,
#                     Debian's softhsm2) or `db` (one SQLite file; builds
#                     SoftHSMv2 with it once, scripts/softhsm-db.sh; for
#                     tens of thousands of keys, see README "### Key count")
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

DATA_DIR="${HSM_KMS_DATA_DIR:-$ROOT/.hsm-kms}"
PORT="${HSM_KMS_PORT:-8080}"
LABEL=hsm-kms
case "$PORT" in '' | *[!0-9]*) die "HSM_KMS_PORT must be a number, got '$PORT'" ;; esac

# 1. System packages.
apt_install softhsm2 opensc
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config
BACKEND="${HSM_KMS_SOFTHSM_BACKEND:-file}"
case "$BACKEND" in
file) MODULE="$(softhsm_module)" ;;
db)
    eval "$("$ROOT/scripts/softhsm-db.sh")"
    MODULE="${PKCS11_MODULE:-$SOFTHSM_DB_MODULE}"
    export SOFTHSM2_UTIL="$SOFTHSM_DB_UTIL"
    ;;
*) die "HSM_KMS_SOFTHSM_BACKEND must be file or db, got '$BACKEND'" ;;
esac
[ -f "$MODULE" ] || die "PKCS#11 module $MODULE not found"

# 2. The binary.
need_cargo
log "building hsm-kms (release)"
(cd "$ROOT" && cargo build --release --locked --bin hsm-kms)
BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/hsm-kms"
[ -x "$BIN" ] || die "build produced no $BIN"

# 3. Data dir, SoftHSM config, PINs (0600, made once).
umask 077
mkdir -p "$DATA_DIR/tokens" "$DATA_DIR/data"
DATA_DIR="$(cd "$DATA_DIR" && pwd)"
chmod 700 "$DATA_DIR"
export SOFTHSM2_CONF="$DATA_DIR/softhsm2.conf"
if [ -f "$SOFTHSM2_CONF" ] && [ -n "$(ls -A "$DATA_DIR/tokens")" ] &&
    ! grep -qx "objectstore.backend = $BACKEND" "$SOFTHSM2_CONF"; then
    die "$DATA_DIR holds a token of another SoftHSM object store than '$BACKEND' (see $SOFTHSM2_CONF): use another HSM_KMS_DATA_DIR"
fi
cat >"$SOFTHSM2_CONF" <<CONF
directories.tokendir = $DATA_DIR/tokens
objectstore.backend = $BACKEND
log.level = ERROR
slots.removable = false
CONF
for f in user.pin so.pin; do
    [ -s "$DATA_DIR/$f" ] || random_secret >"$DATA_DIR/$f"
    chmod 600 "$DATA_DIR/$f"
done

# 4. The token.
if ! has_token "$LABEL"; then
    log "initialising SoftHSM token '$LABEL' in $DATA_DIR/tokens"
    "${SOFTHSM2_UTIL:-softhsm2-util}" --init-token --free --label "$LABEL" \
        --so-pin "$(cat "$DATA_DIR/so.pin")" --pin "$(cat "$DATA_DIR/user.pin")" >/dev/null
fi

# 5. The service config (rewritten each run; the PIN is read from its file).
CONFIG="$DATA_DIR/hsm-kms.toml"
cat >"$CONFIG" <<CONF
# Written by scripts/serve.sh on every run; see hsm-config/softhsm2.toml for every key.
[server]
listen = "127.0.0.1:$PORT"

[hsm]
module = "$MODULE"
token_label = "$LABEL"
pin_file = "$DATA_DIR/user.pin"

[store]
data_dir = "$DATA_DIR/data"

[log]
format = "text"
level = "info"
CONF
# The PIN comes from pin_file only; an HSM_KMS_PIN from the caller would win over it.
unset HSM_KMS_PIN HSM_KMS_CONFIG
kms() { "$BIN" --config "$CONFIG" "$@"; }

# 6. First run: service keys, schema and the first account.
CREDS="$DATA_DIR/credentials"
if [ ! -s "$CREDS" ]; then
    log "running hsm-kms init"
    out="$(kms init --account default)"
    if ! grep -q '^access_key=' <<<"$out"; then
        # Initialised before but the credentials file is gone: make a new key.
        out="account=default"$'\n'"$(kms admin create-access-key --account default)"
    fi
    printf '%s\n' "$out" >"$CREDS.tmp"
    mv "$CREDS.tmp" "$CREDS"
fi
chmod 600 "$CREDS"
ACCESS_KEY="$(sed -n 's/^access_key=//p' "$CREDS")"
SECRET_KEY="$(sed -n 's/^secret_key=//p' "$CREDS")"

cat <<MSG

  hsm-kms on http://127.0.0.1:$PORT  (NAVER KMS under /kms/v1 and /keys, NHN SKM under /keymanager)
  access key: $ACCESS_KEY
  secret key: $SECRET_KEY
  (kept in $CREDS; PINs in $DATA_DIR/user.pin and so.pin, all mode 0600)
  admin:      SOFTHSM2_CONF=$SOFTHSM2_CONF $BIN --config $CONFIG admin list-access-keys

MSG
exec "$BIN" --config "$CONFIG" serve
