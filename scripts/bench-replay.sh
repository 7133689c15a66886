#!/usr/bin/env bash
# What the shared NAVER replay guard costs one node (issue 11): the guard
# recording each admitted signature in the store as well as in memory
# (naver.replay_guard_scope = "store", the default) against memory only
# ("node"), on the calls it guards: Update Memo under the default
# replay_guard = "management", Encrypt of 256 bytes under "all". One store
# and token, one server per configuration, rounds interleaved; prints each
# round's rate, the medians and the ratio store / node
# (tests/replay_bench.rs, an ignored test).
#
#   scripts/bench-replay.sh                    on SQLite
#   BENCH_STORE=postgres scripts/bench-replay.sh   on a throwaway PostgreSQL
#
# Environment: BENCH_ROUNDS (5), BENCH_MEMO_CALLS (200), BENCH_ENCRYPT_CALLS
# (400), HSM_KMS_BENCH_BIN (an hsm-kms binary to serve with, e.g. a release
# build of this tree; default: the test build). Figures measured on a shared
# machine are noise: compare the ratio, measured in one run.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install softhsm2 opensc
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config
need_cargo
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
cd "$ROOT"
run=(cargo nextest run --all-features --test replay_bench --run-ignored only --no-capture)
if [ "${BENCH_STORE:-sqlite}" = postgres ]; then
    export HSM_KMS_TEST_STORE=postgres
    exec "$ROOT/scripts/postgres.sh" -- "${run[@]}"
fi
exec "${run[@]}"
