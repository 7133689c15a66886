#!/usr/bin/env bash
# Soak: a mixed load on both dialects at half the measured peak, for MINUTES
# minutes (default 3), against the release server on 127.0.0.1 with a fresh
# SoftHSMv2 token and SQLite store under a temp dir.
#
#   scripts/soak.sh [MINUTES]
#
# The load (src/bin/loadgen.rs, built with --features loadgen): NAVER API 2.0
# Encrypt/Decrypt with account auth and with token auth, ECDSA Sign; API 1.0
# Encrypt/Decrypt (signature v1 with an API key); NHN Encrypt/Decrypt and
# secret reads; and on timers NAVER key creation and rotation, token-set
# creation and renewal, NHN key creation and secret updates. First a peak
# probe (closed loop, 32 connections, PROBE_SECS=10 s, the data-call mix,
# like scripts/bench.sh's wrk runs); the soak then runs open loop at half
# that rate. Every minute: requests, errors, p50/p99, the server's RSS and
# open descriptors. Verdict at the end (exit code 0 only on PASS): 0 errors,
# anonymous memory (RssAnon: the heap, where a leak shows) grown < 10 % from
# minute 1 to the last net of the token objects made meanwhile (SoftHSMv2
# keeps each in the server's heap: the bytes an object costs are measured
# before minute 1 by a calibration, after a warm-up of the management calls,
# and capped at 10 KiB), p99 of the last minute < 2x minute 1's.
# VmRSS is printed too; its file-backed part is code paged in as paths first
# run, not a leak.
#
# Environment: PROBE_SECS (10), SOAK_NICE (0: niceness of server and load),
# any HSM_KMS_* key for the server; CARGO_TARGET_DIR as cargo uses it.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MINUTES="${1:-3}"
PROBE_SECS="${PROBE_SECS:-10}"
SOAK_NICE="${SOAK_NICE:-0}"
case "$MINUTES" in '' | *[!0-9]* | 0) die "minutes must be a positive number, got '$MINUTES'" ;; esac
case "$PROBE_SECS" in '' | *[!0-9]* | 0) die "PROBE_SECS must be a positive number, got '$PROBE_SECS'" ;; esac

apt_install softhsm2 opensc
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config
MODULE="$(softhsm_module)"
[ -f "$MODULE" ] || die "PKCS#11 module $MODULE not found"
need_cargo
log "building hsm-kms and hsm-kms-loadgen (release)"
(cd "$ROOT" && cargo build --release --locked --features loadgen --bin hsm-kms --bin hsm-kms-loadgen)
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"

WORK="$(mktemp -d /tmp/hsm-kms-soak.XXXXXX)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

loadgen_site "$WORK" soak "$MODULE" "$TARGET"

nice -n "$SOAK_NICE" "$TARGET/hsm-kms" --config "$CONFIG" serve --addr-file "$WORK/addr" >/dev/null 2>"$WORK/server.log" &
SERVER_PID=$!
for _ in $(seq 100); do [ -s "$WORK/addr" ] && break; sleep 0.1; done
[ -s "$WORK/addr" ] || die "server did not start: $(cat "$WORK/server.log")"

log "soak: $MINUTES min against $(cat "$WORK/addr") (server pid $SERVER_PID, $(nproc) cores)"
rc=0
nice -n "$SOAK_NICE" "$TARGET/hsm-kms-loadgen" --addr "$(cat "$WORK/addr")" --pid "$SERVER_PID" \
    --minutes "$MINUTES" --probe-secs "$PROBE_SECS" --access-key "$AK" --uak-id "$UAK_ID" \
    --key-store soak-store || rc=$?
if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    log "the server died during the soak; its log:"
    tail -20 "$WORK/server.log" >&2
    rc=1
fi
if grep -q '"level":"ERROR"' "$WORK/server.log"; then
    log "the server logged errors (first 5):"
    grep '"level":"ERROR"' "$WORK/server.log" | head -5 >&2
fi
exit "$rc"
