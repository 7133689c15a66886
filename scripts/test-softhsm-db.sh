#!/usr/bin/env bash
# The integration suite on SoftHSMv2 with the `db` object store (issue 10):
# every test of the default suite, each on its own SoftHSM token kept in
# one SQLite file, with
#
#   PKCS11_MODULE=<module of scripts/softhsm-db.sh> SOFTHSM2_UTIL=<its softhsm2-util>
#   HSM_KMS_SOFTHSM_BACKEND=db
#
#   scripts/test-softhsm-db.sh [extra cargo-nextest arguments]
#
# Builds the module once with scripts/softhsm-db.sh (cached under
# ~/.cache/hsm-kms), installs opensc and cargo-nextest when missing, and
# prints how long it all took.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

T0=$(date +%s)
apt_install opensc
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config
need_cargo
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

eval "$("$ROOT/scripts/softhsm-db.sh")"
[ -f "${SOFTHSM_DB_MODULE:-}" ] || die "scripts/softhsm-db.sh printed no module path"
export PKCS11_MODULE=$SOFTHSM_DB_MODULE SOFTHSM2_UTIL=$SOFTHSM_DB_UTIL HSM_KMS_SOFTHSM_BACKEND=db
T1=$(date +%s)

cd "$ROOT"
log "cargo nextest run on SoftHSMv2 with the db object store ($PKCS11_MODULE)"
cargo nextest run --all-features "$@"
log "SoftHSM db suite: $(($(date +%s) - T0)) s (module build or cache: $((T1 - T0)) s)"
