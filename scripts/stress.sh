#!/usr/bin/env bash
# Concurrency on one key: 32 clients for STRESS_SECS seconds (default 20) on
# one AES key (and Sign/Verify on an ECDSA key) through HTTP against an
# in-process server on a fresh SoftHSMv2 token: Encrypt, Decrypt, Re-encrypt,
# Rotate, version disable/enable, token-set creation and renewal. Fails on
# any 5xx, any request unanswered within 10 s, any answer the vendor's rules
# do not allow, or an acknowledged ciphertext that does not decrypt at the end
# (unless its version is disabled then). See tests/stress_one_key.rs.
#
#   scripts/stress.sh            # 20 s
#   STRESS_SECS=60 scripts/stress.sh
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install softhsm2 opensc
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config
[ -f "$(softhsm_module)" ] || die "PKCS#11 module $(softhsm_module) not found"
need_cargo
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi

export STRESS_SECS="${STRESS_SECS:-20}"
case "$STRESS_SECS" in '' | *[!0-9]*) die "STRESS_SECS must be a number of seconds, got '$STRESS_SECS'" ;; esac
cd "$ROOT"
log "stress: 32 clients on one key for ${STRESS_SECS}s"
# --no-capture: the per-call summary is printed even when the test passes.
cargo nextest run --all-features --test stress_one_key --run-ignored only --no-capture
