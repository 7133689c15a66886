#!/usr/bin/env bash
# Builds Kryoptic (a PKCS#11 software token in Rust, crate `kryoptic`) into a
# cache dir, once, and prints the path of its module:
#
#   KRYOPTIC_MODULE=$(scripts/kryoptic.sh)
#   # .../lib/libkryoptic_pkcs11.so
#
# Why from source with these features: with its default features the crate
# wants OpenSSL 3.2 or later (its EdDSA code) and refuses Debian 12's 3.0.
# `--no-default-features --features minimal,kryoptic-lib/dynamic` keeps AES,
# RSA, ECDSA/ECDH, SHA-1/2 and HMAC with the SQLite token store, and links the
# system's libcrypto 3.0 dynamically. That is everything hsm-kms uses.
#
# Where: ${HSM_KMS_KRYOPTIC_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hsm-kms/kryoptic-$VERSION}.
# Re-running with a complete build there prints the path at once.
#
# How: the crate's source comes from crates.io through cargo itself (a
# throwaway package that depends on `kryoptic = "=$VERSION"`, `cargo fetch`,
# then `cargo metadata` says where the source is); it is copied to a temp dir
# and built there with the crate's own Cargo.lock (`--locked`). Build
# dependencies (libclang-dev for bindgen, libssl-dev, libsqlite3-dev,
# pkg-config, a C compiler) come from apt-get when missing. The build takes
# about a minute of wall time on 2 cores; the temp dir is removed after.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KRYOPTIC_VERSION=${HSM_KMS_KRYOPTIC_VERSION:-1.5.4}
PREFIX=${HSM_KMS_KRYOPTIC_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hsm-kms/kryoptic-$KRYOPTIC_VERSION}
SO=$PREFIX/lib/libkryoptic_pkcs11.so
STAMP=$PREFIX/.built

if [ -f "$STAMP" ] && [ -f "$SO" ]; then
    printf '%s\n' "$SO"
    exit 0
fi

mkdir -p "$(dirname "$PREFIX")"
# One build at a time per cache dir (two test runs may start together).
exec 9>"$PREFIX.lock"
flock 9
if [ -f "$STAMP" ] && [ -f "$SO" ]; then
    printf '%s\n' "$SO"
    exit 0
fi

T0=$(date +%s)
apt_install libclang-dev libssl-dev libsqlite3-dev pkg-config
command -v cc >/dev/null 2>&1 || apt_install build-essential
need_cargo

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The crate's source, through cargo and crates.io.
mkdir -p "$WORK/fetch/src"
cat >"$WORK/fetch/Cargo.toml" <<EOF
[package]
name = "kryoptic-fetch"
version = "0.0.0"
edition = "2021"
publish = false

[dependencies]
kryoptic = { version = "=$KRYOPTIC_VERSION", default-features = false }
EOF
: >"$WORK/fetch/src/lib.rs"
log "kryoptic $KRYOPTIC_VERSION: fetching the crate source"
cargo fetch --manifest-path "$WORK/fetch/Cargo.toml" >&2
MANIFEST=$(cargo metadata --format-version 1 --manifest-path "$WORK/fetch/Cargo.toml" |
    grep -o "\"manifest_path\":\"[^\"]*/kryoptic-$KRYOPTIC_VERSION/Cargo.toml\"" | head -n 1 | cut -d'"' -f4 || true)
[ -n "$MANIFEST" ] || die "cargo metadata does not list kryoptic $KRYOPTIC_VERSION"
cp -r "$(dirname "$MANIFEST")" "$WORK/src"

log "kryoptic $KRYOPTIC_VERSION: building (features minimal, kryoptic-lib/dynamic) into $PREFIX"
B0=$(date +%s)
(
    cd "$WORK/src"
    cargo build --release --locked --lib --target-dir "$WORK/target" \
        --no-default-features --features minimal,kryoptic-lib/dynamic
) >"$WORK/build.log" 2>&1 || {
    tail -n 40 "$WORK/build.log" >&2
    die "kryoptic build failed"
}
rm -rf "$PREFIX"
mkdir -p "$PREFIX/lib"
cp "$WORK/target/release/libkryoptic_pkcs11.so" "$SO"
touch "$STAMP"
log "kryoptic $KRYOPTIC_VERSION: built in $(($(date +%s) - B0)) s (everything: $(($(date +%s) - T0)) s)"
printf '%s\n' "$SO"
