#!/bin/sh
# hsm-kms container entrypoint.
#
# PINs: HSM_KMS_PIN / HSM_KMS_SO_PIN, or files named by HSM_KMS_PIN_FILE /
# HSM_KMS_SO_PIN_FILE (Docker secrets: /run/secrets/...). The files win.
#
# First start (empty token volume): initialise the SoftHSM token (label
# $HSM_KMS_HSM_TOKEN_LABEL), then `hsm-kms init`, which prints the first
# account's access key and secret key. They are printed once, here, and kept
# in $DATA/first-credentials (mode 0600) so a restart does not print them again.
# Then exec `hsm-kms serve` (or whatever command was given).
#
# `p11-kit-server` (the compose `cluster` profile's hsm service): the token
# part above (the SoftHSM token made on first start; no `hsm-kms init`, which
# cluster-init runs through the socket), then p11-kit 0.25.5's server in the
# foreground, exporting the token on the Unix socket
# ${HSM_KMS_P11KIT_SOCKET:-/run/hsm-kms/p11-kit.sock}. Unix socket only: the
# protocol carries PINs and plaintexts in clear.
#
# The token is made here only when the module is SoftHSMv2 (the image's
# default, HSM_KMS_HSM_MODULE): a node on p11-kit-client.so reaches a token
# the p11-kit-server container made, and holds no token volume of its own.
#
# The two volumes belong together; both mismatches stop the container (exit 1)
# and destroy nothing:
# - an empty token volume with a used data volume (a store, or the marker of
#   an earlier first start) is refused here, before any token is made;
# - a used token with an empty data volume reaches `hsm-kms init`, which
#   refuses because the token carries an installation id (or hsm-kms objects)
#   and the store does not. A token volume whose first start stopped before
#   `hsm-kms init` finished holds no hsm-kms object, so `init` completes it.
# `hsm-kms serve` checks the same binding at every start.
set -eu

TOKENS_DIR=${HSM_KMS_TOKENS_DIR:-/var/lib/hsm-kms/tokens}
DATA_DIR=${HSM_KMS_STORE_DATA_DIR:-/var/lib/hsm-kms/data}
LABEL=${HSM_KMS_HSM_TOKEN_LABEL:-hsm-kms}
INIT_ACCOUNT=${HSM_KMS_INIT_ACCOUNT:-default}
CREDS="$DATA_DIR/first-credentials"
MARKER="$DATA_DIR/.initialised"

say() { printf 'hsm-kms-entrypoint: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Reads the first line of a secret file.
read_secret() {
  [ -r "$1" ] || die "cannot read $2 file $1 (is it mounted and readable by uid $(id -u)?)"
  head -n 1 "$1" | tr -d '\r\n'
}

[ $# -gt 0 ] || set -- serve
case "$1" in
  serve|init|p11-kit-server) ;;
  # Any other command (admin, healthcheck, sh, ...) runs as given.
  *) exec "$@" ;;
esac

if [ -n "${HSM_KMS_PIN_FILE:-}" ]; then
  PIN=$(read_secret "$HSM_KMS_PIN_FILE" HSM_KMS_PIN_FILE)
  # hsm-kms reads the PIN from this file itself; keep it out of the environment.
  export HSM_KMS_HSM_PIN_FILE="$HSM_KMS_PIN_FILE"
  unset HSM_KMS_PIN
else
  PIN=${HSM_KMS_PIN:-}
fi
[ -n "$PIN" ] || die "no user PIN: set HSM_KMS_PIN or HSM_KMS_PIN_FILE"

MODULE=${HSM_KMS_HSM_MODULE:-/usr/lib/softhsm/libsofthsm2.so}
[ "$1" != p11-kit-server ] || MODULE=/usr/lib/softhsm/libsofthsm2.so
case "$MODULE" in
  */libsofthsm2.so) SOFTHSM=1 ;;
  *) SOFTHSM=0 ;;
esac

if [ "$SOFTHSM" = 1 ] && [ -z "$(ls -A "$TOKENS_DIR" 2>/dev/null)" ]; then
  if [ -n "${HSM_KMS_SO_PIN_FILE:-}" ]; then
    SO_PIN=$(read_secret "$HSM_KMS_SO_PIN_FILE" HSM_KMS_SO_PIN_FILE)
  else
    SO_PIN=${HSM_KMS_SO_PIN:-}
  fi
  [ -n "$SO_PIN" ] || die "empty token volume and no SO PIN: set HSM_KMS_SO_PIN or HSM_KMS_SO_PIN_FILE"
  # A fresh token with an old data dir would leave records pointing at keys
  # that do not exist: refuse rather than guess.
  for f in "$MARKER" "$DATA_DIR/metadata.db"; do
    [ ! -e "$f" ] || die "the token volume $TOKENS_DIR is empty but the data volume $DATA_DIR is in use (found $f): mount the token volume that belongs to this data volume (or restore it from backup), or an empty data volume for a new installation; nothing was changed"
  done
  say "empty token volume: initialising SoftHSM token '$LABEL'"
  softhsm2-util --init-token --free --label "$LABEL" --so-pin "$SO_PIN" --pin "$PIN" >/dev/null \
    || die "softhsm2-util --init-token failed"
  unset SO_PIN
fi
unset PIN HSM_KMS_SO_PIN

if [ "$1" = p11-kit-server ]; then
  SOCKET=${HSM_KMS_P11KIT_SOCKET:-/run/hsm-kms/p11-kit.sock}
  # A socket left by an earlier run of this container would make the bind fail.
  rm -f "$SOCKET"
  say "exporting token '$LABEL' on $SOCKET (p11-kit 0.25.5 server)"
  exec /opt/p11-kit-0.25.5/bin/p11-kit server --foreground \
    --provider /usr/lib/softhsm/libsofthsm2.so --name "$SOCKET" "pkcs11:token=$LABEL"
fi

if [ ! -e "$MARKER" ]; then
  umask 077
  # `init` is idempotent: if an earlier start died half-way it completes the job.
  # On a used token with an empty (or foreign) data volume it refuses, naming
  # both installation ids; stop here and keep the token untouched.
  if ! hsm-kms init --account "$INIT_ACCOUNT" > "$CREDS.tmp"; then
    rm -f "$CREDS.tmp"
    die "hsm-kms init refused (reason above): if the token volume $TOKENS_DIR is in use, mount the data volume that belongs to it (or restore it from backup); nothing was destroyed"
  fi
  if grep -q '^secret_key=' "$CREDS.tmp"; then
    mv "$CREDS.tmp" "$CREDS"
    echo "==== hsm-kms first credentials (shown once; kept in $CREDS, mode 0600) ===="
    cat "$CREDS"
    echo "==== end of first credentials ===="
  else
    rm -f "$CREDS.tmp"
  fi
  : > "$MARKER"
fi

[ "$1" = init ] && exit 0
exec hsm-kms "$@"
