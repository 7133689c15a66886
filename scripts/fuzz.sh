#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time:
#
#   scripts/fuzz.sh [seconds-per-target] [target...]
#
# Default 30 s per target, every target of fuzz/ (`cargo fuzz list`).
# Installs cargo-fuzz with `cargo install` when missing and needs the
# nightly toolchain (installed with rustup when absent). Builds the targets
# (address sanitizer, debug assertions, fuzz/target), then runs each one from
# a scratch copy of its committed seed corpus (fuzz/corpus/<target>), so a
# run never grows the committed corpus. Prints, per target, libFuzzer's
# executions (`stat::number_of_executed_units`) and rate; exits non-zero
# when any target crashes, hangs (10 s per input) or leaks, after naming the
# crash input libFuzzer wrote under fuzz/artifacts/<target>/. Reproduce one
# with `cargo +nightly fuzz run <target> <artifact>` in fuzz/.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECS="${1:-30}"
shift || true
case "$SECS" in '' | *[!0-9]*) die "seconds-per-target must be a number, got '$SECS'" ;; esac
# The build settings; every run uses the same ones so the build is reused.
FUZZ_FLAGS=(--codegen-units 16)

need_cargo
command -v cc >/dev/null 2>&1 || apt_install build-essential
if ! cargo +nightly --version >/dev/null 2>&1; then
    command -v rustup >/dev/null 2>&1 || die "cargo-fuzz needs the nightly toolchain and there is no rustup to install it"
    log "installing the nightly toolchain"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
    log "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

cd "$ROOT/fuzz"
start=$(date +%s)
log "building the fuzz targets ($(cargo +nightly --version))"
cargo +nightly fuzz build "${FUZZ_FLAGS[@]}"
built=$(date +%s)
log "fuzz build took $((built - start)) s"

if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
scratch="$(mktemp -d)"
trap 'rm -rf "$scratch"' EXIT

failed=()
printf '%-16s %14s %10s %8s  %s\n' target executions exec/s seconds result
for t in "${targets[@]}"; do
    mkdir -p "$scratch/corpus/$t"
    [ -d "corpus/$t" ] && cp -r "corpus/$t/." "$scratch/corpus/$t/"
    t0=$(date +%s)
    rc=0
    cargo +nightly fuzz run "${FUZZ_FLAGS[@]}" "$t" "$scratch/corpus/$t" -- \
        -max_total_time="$SECS" -print_final_stats=1 -timeout=10 \
        >"$scratch/$t.log" 2>&1 || rc=$?
    t1=$(date +%s)
    execs=$(sed -n 's/.*stat::number_of_executed_units: *\([0-9][0-9]*\).*/\1/p' "$scratch/$t.log" | tail -n 1); execs=${execs:-0}; mkdir -p target/logs; cp "$scratch/$t.log" "target/logs/$t.log"
    secs=$((t1 - t0))
    rate=$((execs / (secs > 0 ? secs : 1)))
    if [ "$rc" -eq 0 ]; then
        result=ok
    else
        result="FAILED (exit $rc)"
        failed+=("$t")
    fi
    printf '%-16s %14s %10s %8s  %s\n' "$t" "$execs" "$rate" "$secs" "$result"
    if [ "$rc" -ne 0 ]; then
        # libFuzzer's report: the panic or sanitizer message and where the
        # input that triggered it was written.
        grep -E 'panicked at|ERROR: (libFuzzer|AddressSanitizer|LeakSanitizer)|SUMMARY|Test unit written to|artifact_prefix|Crash' \
            "$scratch/$t.log" | head -n 20 >&2 || true
        tail -n 30 "$scratch/$t.log" >&2
    fi
done
end=$(date +%s)
log "fuzzing: ${#targets[@]} targets, ${SECS} s each; build $((built - start)) s, total $((end - start)) s"
if [ "${#failed[@]}" -gt 0 ]; then
    die "crashes in: ${failed[*]} (inputs under fuzz/artifacts/<target>/)"
fi
log "0 crashes"
