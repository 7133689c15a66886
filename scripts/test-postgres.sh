#!/usr/bin/env bash
# The whole integration suite on PostgreSQL:
#
#   scripts/test-postgres.sh [extra cargo-nextest arguments]
#
# Starts a throwaway cluster with scripts/postgres.sh (installs Debian's
# postgresql when missing), runs `cargo nextest run --all-features` with
# HSM_KMS_TEST_STORE=postgres (each test makes its own database in the
# cluster; tests of SQLite's file and disk skip with a printed reason), then
# stops and removes the cluster. fmt and clippy are scripts/test.sh's job.
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
export HSM_KMS_TEST_STORE=postgres
exec "$ROOT/scripts/postgres.sh" -- cargo nextest run --all-features "$@"
