#!/usr/bin/env bash
# Key creation rate (issue 10 §1), before / after in one run:
#
#   BASELINE_DIR=/path/to/older/release scripts/bench-create.sh
#
# For each token place in PLACES ("tmpfs disk"), each CONCURRENCY in
# CONCURRENCIES ("1 8 16 32") and each server build (the baseline's
# `hsm-kms-scale` in BASELINE_DIR when set, then this tree's), interleaved,
# on a fresh token and store: `hsm-kms init`, then `hsm-kms-scale populate`
# creates KEYS AES-256 keys through the engine (pending row, token object,
# activation, as Create Key does), CONCURRENCY at a time. The store is on
# disk (under TMPDIR, /tmp by default); the token directory is on tmpfs
# (/dev/shm: the stand-in for an HSM's own storage, see bench-scale.sh's
# TOKEN_TMPFS) or on the same disk. Prints keys/s per row, and the ratio
# new / base. Environment: KEYS (500 on tmpfs; a fifth of it on disk),
# ROUNDS (1: repeat the whole grid, rows interleaved), BENCH_BUILD=0 skips
# the cargo build.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

KEYS="${KEYS:-500}"
ROUNDS="${ROUNDS:-1}"
read -r -a PLACE_LIST <<<"${PLACES:-tmpfs disk}"
read -r -a CONC_LIST <<<"${CONCURRENCIES:-1 8 16 32}"

apt_install softhsm2
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config
MODULE="$(softhsm_module)"
need_cargo
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"
if [ "${BENCH_BUILD:-1}" != 0 ]; then
    log "building hsm-kms and hsm-kms-scale (release, feature bench)"
    (cd "$ROOT" && cargo build --release --locked --features bench --bin hsm-kms --bin hsm-kms-scale)
fi
BUILDS=(new)
if [ -n "${BASELINE_DIR:-}" ]; then
    [ -x "$BASELINE_DIR/hsm-kms-scale" ] || die "no hsm-kms-scale in BASELINE_DIR=$BASELINE_DIR"
    BUILDS=(base new)
fi

WORKS=()
cleanup() { for w in "${WORKS[@]}"; do rm -rf "$w"; done; }
trap cleanup EXIT

declare -A RATE
for round in $(seq "$ROUNDS"); do
for place in "${PLACE_LIST[@]}"; do
for c in "${CONC_LIST[@]}"; do
for build in "${BUILDS[@]}"; do
    case "$build" in base) dir="$BASELINE_DIR" ;; *) dir="$TARGET" ;; esac
    n="$KEYS"
    [ "$place" = disk ] && n=$((KEYS / 5))
    work="$(mktemp -d "${TMPDIR:-/tmp}/hsm-kms-create.XXXXXX")"
    WORKS+=("$work")
    case "$place" in
    tmpfs) tokens="$(mktemp -d /dev/shm/hsm-kms-create-tokens.XXXXXX)"; WORKS+=("$tokens") ;;
    disk) tokens="$work/tokens"; mkdir -p "$tokens" ;;
    *) die "PLACES: '$place' is not tmpfs or disk" ;;
    esac
    mkdir -p "$work/data" "$work/out"
    export SOFTHSM2_CONF="$work/softhsm2.conf"
    printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$tokens" >"$SOFTHSM2_CONF"
    (umask 077 && random_secret >"$work/user.pin")
    softhsm2-util --init-token --free --label hsm-kms-create --so-pin "$(random_secret)" \
        --pin "$(cat "$work/user.pin")" >/dev/null
    bench_setup "$dir" "$work/hsm-kms.toml" "$work" "$MODULE" hsm-kms-create $((n + 10))
    pop="$("$dir/hsm-kms-scale" populate --config "$work/hsm-kms.toml" --keys "$n" --concurrency "$c" --out "$work/out")"
    kps="$(sed -n 's/.*keys_per_sec=\([0-9.]*\).*/\1/p' <<<"$pop")"
    log "round $round, token on $place, $c at a time, $build: $n keys, $kps keys/s"
    RATE["$place $c $build"]="${RATE["$place $c $build"]:-} $kps"
    rm -rf "$work" "$tokens"
done
done
done
done

median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{ a[NR] = $1 } END { print (NR % 2 ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2) }'; }
printf '\nhsm-kms key creation: %s cores, %s AES-256 keys per run on tmpfs (%s on disk), %s round(s), load average %s\n' \
    "$(nproc)" "$KEYS" "$((KEYS / 5))" "$ROUNDS" "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%6s %11s %12s %12s %7s\n' token concurrency "base keys/s" "new keys/s" "new/base"
for place in "${PLACE_LIST[@]}"; do
for c in "${CONC_LIST[@]}"; do
    new="$(median <<<"${RATE["$place $c new"]}")"
    base="-" ratio="-"
    if [ -n "${BASELINE_DIR:-}" ]; then
        base="$(median <<<"${RATE["$place $c base"]}")"
        ratio="$(awk -v a="$new" -v b="$base" 'BEGIN { printf "%.2f", a / b }')"
    fi
    printf '%6s %11s %12s %12s %7s\n' "$place" "$c" "$base" "$new" "$ratio"
done
done
printf '\nkeys/s = keys / wall seconds of populate (median over rounds); store (SQLite, WAL, synchronous=FULL) on the disk under %s.\n' "${TMPDIR:-/tmp}"
