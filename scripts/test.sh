#!/usr/bin/env bash
# Installs what the tests need and runs them all:
#
#   scripts/test.sh [extra cargo-nextest arguments]
#
# Installs softhsm2, opensc, python3-prometheus-client, pkg-config and
# build-essential with apt-get when missing (sudo when not root) and
# cargo-nextest with `cargo install` when absent; then `cargo fmt --check`, clippy with warnings as errors, and the
# whole suite with cargo-nextest (each test in its own process: SoftHSM reads
# its config once per process). Extra arguments go to `cargo nextest run`.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

apt_install softhsm2 opensc
# tests/observability.rs reads /metrics with prometheus_client's parser.
apt_install python3-prometheus-client
# Independent signature checks (tests/common/independent.rs) use python3's
# cryptography where present, else the openssl command.
command -v openssl >/dev/null 2>&1 || apt_install openssl
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config
[ -f "$(softhsm_module)" ] || die "PKCS#11 module $(softhsm_module) not found"

need_cargo
if ! cargo nextest --version >/dev/null 2>&1; then
    log "installing cargo-nextest"
    cargo install cargo-nextest --locked
fi
for c in rustfmt clippy; do
    if ! cargo "${c/rustfmt/fmt}" --version >/dev/null 2>&1; then
        command -v rustup >/dev/null 2>&1 || die "cargo $c is missing and there is no rustup to add it"
        rustup component add "$c"
    fi
done

cd "$ROOT"
log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --all-targets --all-features -- -D warnings
log "cargo nextest run"
cargo nextest run --all-features "$@"
