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
  serve|init) ;;
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

if [ -z "$(ls -A "$TOKENS_DIR" 2>/dev/null)" ]; then
  if [ -n "${HSM_KMS_SO_PIN_FILE:-}" ]; then
    SO_PIN=$(read_secret "$HSM_KMS_SO_PIN_FILE" HSM_KMS_SO_PIN_FILE)
  else
    SO_PIN=${HSM_KMS_SO_PIN:-}
  fi
  [ -n "$SO_PIN" ] || die "empty token volume and no SO PIN: set HSM_KMS_SO_PIN or HSM_KMS_SO_PIN_FILE"
  # A fresh token with an old data dir would leave records pointing at keys
  # that do not exist: refuse rather than guess.
  [ ! -e "$MARKER" ] || die "$DATA_DIR belongs to another token (found $MARKER) but the token volume is empty; mount the matching token volume or an empty data volume"
  say "empty token volume: initialising SoftHSM token '$LABEL'"
  softhsm2-util --init-token --free --label "$LABEL" --so-pin "$SO_PIN" --pin "$PIN" >/dev/null \
    || die "softhsm2-util --init-token failed"
  unset SO_PIN
fi
unset PIN HSM_KMS_SO_PIN

if [ ! -e "$MARKER" ]; then
  umask 077
  # `init` is idempotent: if an earlier start died half-way it completes the job.
  hsm-kms init --account "$INIT_ACCOUNT" > "$CREDS.tmp"
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
