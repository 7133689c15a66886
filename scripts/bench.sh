#!/usr/bin/env bash
# One-run benchmark on one fresh SoftHSMv2 token:
#   (a) raw PKCS#11 ops/s through the crate's hsm layer (src/bin/hsm_bench.rs),
#       on 1 and 2 threads: AES-256-GCM encrypt of 256 bytes, RSA-2048 sign,
#       ECDSA P-256 sign;
#   (b) the release server on loopback under wrk: signed HTTP Encrypt (256-byte
#       plaintexts) and Sign (RSA2048, ECDSA) requests/s with p50/p99 latency;
#   (c) the ratio HTTP req/s / best raw ops/s for each.
#
#   scripts/bench.sh
#
#   (d) the levers of issue 10 §2, each on its own, in alternating rounds on
#       the same binary, token and store (runtime switches): dispatch
#       (blocking_pool = before, workers = after) and the IV source (token,
#       host), for Encrypt (log + fsync), RSA-2048 sign and ECDSA sign at
#       LEVER_CONNECTIONS; medians of LEVER_ROUNDS.
#
#   scripts/bench.sh                  everything
#   BENCH_PARTS=levers scripts/bench.sh   only (d), without the raw benchmark
#   PROFILE_DIR=docs/perf scripts/bench.sh  also a flamegraph of the server
#       (perf record + inferno) during the first Encrypt round of each lever
#       configuration but the host-IV one: PROFILE_DIR/encrypt-<configuration>.svg
#   BENCH_BUILD=0 uses the release binaries already in target/release
#
# Environment: RAW_SECS (3) per raw measurement, HTTP_SECS (10) per wrk run,
# CONNECTIONS (16) wrk connections, WRK_THREADS (1), and any HSM_KMS_* key to
# change the server's config (e.g. HSM_KMS_HSM_SYMMETRIC_CONCURRENCY=1).
# NCP signatures do not cover the body and stay valid for 5 minutes, so each
# wrk run reuses headers signed just before it.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RAW_SECS="${RAW_SECS:-3}"
HTTP_SECS="${HTTP_SECS:-10}"
CONNECTIONS="${CONNECTIONS:-16}"
WRK_THREADS="${WRK_THREADS:-1}"
BENCH_PARTS="${BENCH_PARTS:-raw http log levers}"
part() { [[ " $BENCH_PARTS " == *" $1 "* ]]; }

apt_install softhsm2 opensc wrk curl openssl
if [ -n "${PROFILE_DIR:-}" ]; then
    command -v perf >/dev/null 2>&1 || apt_install linux-perf
    need_cargo
    command -v inferno-flamegraph >/dev/null 2>&1 || cargo install --locked inferno
    PROFILE_DIR="$(realpath -m "$PROFILE_DIR")"
fi
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config
MODULE="$(softhsm_module)"
need_cargo
if [ "${BENCH_BUILD:-1}" = 0 ]; then
    log "BENCH_BUILD=0: using the release binaries already built"
elif part raw; then
    log "building hsm-kms and hsm-kms-bench (release; feature bench: runtime dependencies only)"
    (cd "$ROOT" && cargo build --release --locked --features bench --bin hsm-kms --bin hsm-kms-bench)
else
    log "building hsm-kms (release)"
    (cd "$ROOT" && cargo build --release --locked --bin hsm-kms)
fi
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"

WORK="$(mktemp -d /tmp/hsm-kms-bench.XXXXXX)"
SERVER_PID=""
cleanup() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# One token for everything.
throwaway_token "$WORK" hsm-kms-bench
CONFIG="$WORK/hsm-kms.toml"
cat >"$CONFIG" <<CONF
[server]
listen = "127.0.0.1:0"
[hsm]
module = "$MODULE"
token_label = "hsm-kms-bench"
pin_file = "$WORK/user.pin"
[store]
data_dir = "$WORK/data"
[log]
format = "json"
level = "info"
CONF
unset HSM_KMS_PIN HSM_KMS_CONFIG

# (a) raw PKCS#11.
: >"$WORK/raw.txt"
if part raw; then
    log "raw PKCS#11 through the hsm layer (${RAW_SECS}s per figure)"
    "$TARGET/hsm-kms-bench" --config "$CONFIG" --secs "$RAW_SECS" | tee "$WORK/raw.txt"
fi
raw() { awk -v op="$1" -v t="threads=$2" '$1 == "raw" && $2 == op && $3 == t { sub("ops_per_sec=", "", $4); print $4 }' "$WORK/raw.txt"; }

# (b) the server.
"$TARGET/hsm-kms" --config "$CONFIG" init --account bench >"$WORK/creds" 2>/dev/null
AK="$(sed -n 's/^access_key=//p' "$WORK/creds")"
SK="$(sed -n 's/^secret_key=//p' "$WORK/creds")"
# start_server [ENV=VALUE ...]: (re)starts the server on the same token and store.
start_server() {
    stop_server
    rm -f "$WORK/addr"
    env "$@" "$TARGET/hsm-kms" --config "$CONFIG" serve --addr-file "$WORK/addr" >/dev/null 2>"$WORK/server.log" &
    SERVER_PID=$!
    for _ in $(seq 100); do [ -s "$WORK/addr" ] && break; sleep 0.1; done
    [ -s "$WORK/addr" ] || die "server did not start: $(cat "$WORK/server.log")"
    URL="http://$(cat "$WORK/addr")"
}
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
start_server

# sign_headers METHOD PATH: the three NCP headers as `-H` arguments, one per line.
sign_headers() {
    local ts sig
    ts="$(date +%s%3N)"
    sig="$(printf '%s %s\n%s\n%s' "$1" "$2" "$ts" "$AK" | openssl dgst -sha256 -hmac "$SK" -binary | base64 -w0)"
    printf '%s\n' -H "x-ncp-apigw-timestamp: $ts" -H "x-ncp-iam-access-key: $AK" -H "x-ncp-apigw-signature-v2: $sig"
}
api() { # api METHOD PATH BODY
    local hdrs
    mapfile -t hdrs < <(sign_headers "$1" "$2")
    curl -sS -X "$1" "${hdrs[@]}" -H 'content-type: application/json' --data "$3" "$URL$2"
}
create_key() { # create_key NAME TYPE -> keyTag
    api POST /kms/v1/keys "{\"keyName\":\"$1\",\"keyType\":\"$2\",\"isAutoRotation\":false}" \
        | grep -o '"keyTag":"[0-9a-f]*"' | cut -d'"' -f4
}
AES_TAG="$(create_key bench-aes AES256)"
RSA_TAG="$(create_key bench-rsa RSA2048)"
EC_TAG="$(create_key bench-ec ECDSA)"
[ -n "$AES_TAG" ] && [ -n "$RSA_TAG" ] && [ -n "$EC_TAG" ] || die "could not create the keys"
DATA_B64="$(head -c 256 /dev/urandom | base64 -w0)"

# http_run NAME PATH BODY [TOKEN] -> "rps p50_ms p99_ms"; with TOKEN the
# requests use token auth (x-ncp-ocapi-token) instead of signatures.
http_run() {
    local name="$1" path="$2" body="$3" token="${4:-}" hdrs out
    cat >"$WORK/$name.lua" <<LUA
wrk.method = "POST"
wrk.body = [[$body]]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local errs = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %.1f %.3f %.3f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.status, errs))
end
LUA
    if [ -n "$token" ]; then
        hdrs=(-H "x-ncp-ocapi-token: $token")
        out="$(curl -sS -X POST "${hdrs[@]}" -H 'content-type: application/json' --data "$body" "$URL$path")"
    else
        # One checked request first: a wrong signature would otherwise bench 401s.
        out="$(api POST "$path" "$body")"
        mapfile -t hdrs < <(sign_headers POST "$path")
    fi
    grep -q '"code":"SUCCESS"' <<<"$out" || die "$name: $out"
    log "wrk $name: ${HTTP_SECS}s, $CONNECTIONS connections"
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${HTTP_SECS}s" --latency -s "$WORK/$name.lua" "${hdrs[@]}" "$URL$path" >"$WORK/$name.wrk"
    local line
    line="$(grep '^RESULT' "$WORK/$name.wrk")" || die "$name: no result: $(cat "$WORK/$name.wrk")"
    read -r _ rps p50 p99 non2xx errs <<<"$line"
    [ "$non2xx" -eq 0 ] || die "$name: $non2xx non-2xx answers"
    [ "$errs" -eq 0 ] || log "$name: $errs socket errors"
    echo "$rps $p50 $p99"
}
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
med3() { # med3 FILE -> "median_rps median_p50 median_p99"
    printf '%s %s %s\n' "$(cut -d' ' -f1 "$1" | median)" "$(cut -d' ' -f2 "$1" | median)" "$(cut -d' ' -f3 "$1" | median)"
}
lever_table() {
    printf '\nlevers (issue 10 §2), wrk -t%s -c%s, activity log + fsync on, medians of %s alternating rounds (req/s per round in brackets)\n' \
        "$WRK_THREADS" "$LEVER_CONNECTIONS" "$LEVER_ROUNDS"
    printf '%-16s %-16s %10s %8s %8s %7s  %s\n' configuration operation "req/s" "p50 ms" "p99 ms" "x before" rounds
    local c name op base rps p50 p99
    for op in enc rsa ec; do
        read -r base _ <<<"$(med3 "$WORK/lever-before-$op.txt")"
        for c in "${LEVER_CONFIGS[@]}"; do
            name="${c%%:*}"
            read -r rps p50 p99 <<<"$(med3 "$WORK/lever-$name-$op.txt")"
            printf '%-16s %-16s %10.0f %8.2f %8.2f %7.2f  [%s]\n' "$name" \
                "$(case $op in enc) echo "AES encrypt" ;; rsa) echo "RSA-2048 sign" ;; ec) echo "ECDSA sign" ;; esac)" \
                "$rps" "$p50" "$p99" "$(awk -v a="$rps" -v b="$base" 'BEGIN { print a / b }')" \
                "$(cut -d' ' -f1 "$WORK/lever-$name-$op.txt" | xargs printf '%.0f ')"
        done
    done
}

# (d) the levers, first (a fresh store for every configuration's rounds).
# lever_run NAME ENV... : one wrk run per op on a server started with ENV.
LEVER_ROUNDS="${LEVER_ROUNDS:-3}"
LEVER_CONNECTIONS="${LEVER_CONNECTIONS:-64}"
LEVER_CONFIGS=(
    "before:HSM_KMS_HSM_DISPATCH=blocking_pool"
    "workers:HSM_KMS_HSM_DISPATCH=workers"
    "workers+hostiv:HSM_KMS_HSM_DISPATCH=workers HSM_KMS_HSM_GCM_IV_SOURCE=host"
)
if part levers; then
    SAVED_CONNECTIONS="$CONNECTIONS"
    CONNECTIONS="$LEVER_CONNECTIONS"
    for round in $(seq "$LEVER_ROUNDS"); do
        for c in "${LEVER_CONFIGS[@]}"; do
            name="${c%%:*}"
            # shellcheck disable=SC2086
            start_server HSM_KMS_ACTIVITY_LOG_ENABLED=true HSM_KMS_ACTIVITY_LOG_FSYNC=true ${c#*:}
            perf_pid=""
            if [ -n "${PROFILE_DIR:-}" ] && [ "$round" -eq 1 ] && [ "$name" != workers+hostiv ]; then
                perf record -F 199 --call-graph dwarf,16384 -p "$SERVER_PID" -o "$WORK/perf-$name.data" \
                    -- sleep "$((HTTP_SECS - 2))" >/dev/null 2>&1 &
                perf_pid=$!
            fi
            http_run "lever-$name-enc-$round" "/kms/v1/keys/$AES_TAG/encrypt" "{\"plaintext\":\"$DATA_B64\"}" >>"$WORK/lever-$name-enc.txt"
            if [ -n "$perf_pid" ]; then
                wait "$perf_pid" || true
                mkdir -p "$PROFILE_DIR"
                perf script --no-inline -i "$WORK/perf-$name.data" 2>/dev/null | inferno-collapse-perf \
                    | inferno-flamegraph --title "hsm-kms Encrypt, wrk -c$CONNECTIONS, $name" >"$PROFILE_DIR/encrypt-$name.svg" \
                    || log "flamegraph $name failed"
                rm -f "$WORK/perf-$name.data"
            fi
            http_run "lever-$name-rsa-$round" "/kms/v1/keys/$RSA_TAG/sign" "{\"data\":\"$DATA_B64\"}" >>"$WORK/lever-$name-rsa.txt"
            http_run "lever-$name-ec-$round" "/kms/v1/keys/$EC_TAG/sign" "{\"data\":\"$DATA_B64\"}" >>"$WORK/lever-$name-ec.txt"
        done
    done
    CONNECTIONS="$SAVED_CONNECTIONS"
    start_server
fi
if ! part http; then
    lever_table
    exit 0
fi

AES_HTTP="$(http_run encrypt "/kms/v1/keys/$AES_TAG/encrypt" "{\"plaintext\":\"$DATA_B64\"}")"
RSA_HTTP="$(http_run sign-rsa "/kms/v1/keys/$RSA_TAG/sign" "{\"data\":\"$DATA_B64\"}")"
EC_HTTP="$(http_run sign-ecdsa "/kms/v1/keys/$EC_TAG/sign" "{\"data\":\"$DATA_B64\"}")"

# Encrypt with token auth (access token of a token set), same server.
api POST "/kms/v1/keys/$AES_TAG/token-generator" '' >/dev/null
ACCESS_TOKEN="$(api POST "/kms/v1/keys/$AES_TAG/token-set" '{}' | grep -o '"accessToken":"[^"]*"' | cut -d'"' -f4)"
[ -n "$ACCESS_TOKEN" ] || die "could not create a token set"
TOKEN_HTTP="$(http_run encrypt-token "/kms/v1/keys/$AES_TAG/encrypt" "{\"plaintext\":\"$DATA_B64\"}" "$ACCESS_TOKEN")"

# The activity log's cost: Encrypt with the log on and off, alternating
# server restarts on the same token and store, LOG_ROUNDS rounds each; the
# medians are compared (a shared 2-core machine drifts between runs).
LOG_ROUNDS="${LOG_ROUNDS:-3}"
# Throughput is compared at saturation: enough connections that the server,
# not the closed loop's round-trip time, sets the rate.
LOG_CONNECTIONS="${LOG_CONNECTIONS:-64}"
MAIN_CONNECTIONS="$CONNECTIONS"
CONNECTIONS="$LOG_CONNECTIONS"
: >"$WORK/log-on.txt"
: >"$WORK/log-fsync.txt"
: >"$WORK/log-off.txt"
for round in $(seq "$LOG_ROUNDS"); do
    start_server HSM_KMS_ACTIVITY_LOG_ENABLED=true HSM_KMS_ACTIVITY_LOG_FSYNC=true
    http_run "encrypt-log-fsync-$round" "/kms/v1/keys/$AES_TAG/encrypt" "{\"plaintext\":\"$DATA_B64\"}" >>"$WORK/log-fsync.txt"
    start_server HSM_KMS_ACTIVITY_LOG_ENABLED=true HSM_KMS_ACTIVITY_LOG_FSYNC=false
    http_run "encrypt-log-on-$round" "/kms/v1/keys/$AES_TAG/encrypt" "{\"plaintext\":\"$DATA_B64\"}" >>"$WORK/log-on.txt"
    start_server HSM_KMS_ACTIVITY_LOG_ENABLED=false
    http_run "encrypt-log-off-$round" "/kms/v1/keys/$AES_TAG/encrypt" "{\"plaintext\":\"$DATA_B64\"}" >>"$WORK/log-off.txt"
done
CONNECTIONS="$MAIN_CONNECTIONS"
LOGON_HTTP="$(med3 "$WORK/log-on.txt")"
FSYNC_HTTP="$(med3 "$WORK/log-fsync.txt")"
NOLOG_HTTP="$(med3 "$WORK/log-off.txt")"

# (c) the table.
cpu="$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
printf '\nhsm-kms benchmark: %s cores (%s), SoftHSMv2 %s, one token, loopback, wrk -t%s -c%s\n' \
    "$(nproc)" "${cpu:-unknown CPU}" "$(softhsm2-util --version)" "$WRK_THREADS" "$CONNECTIONS"
printf 'server: symmetric_concurrency=%s asymmetric_concurrency=%s activity log on except in the "log off" row (HSM_KMS_* overrides apply)\n\n' \
    "${HSM_KMS_HSM_SYMMETRIC_CONCURRENCY:-2}" "${HSM_KMS_HSM_ASYMMETRIC_CONCURRENCY:-2}"
printf '%-26s %12s %12s %12s %9s %9s %8s\n' operation "raw 1 thr/s" "raw 2 thr/s" "HTTP req/s" "p50 ms" "p99 ms" ratio
row() { # row LABEL RAWOP "rps p50 p99"
    local r1 r2 best rps p50 p99
    r1="$(raw "$2" 1)"; r2="$(raw "$2" 2)"
    read -r rps p50 p99 <<<"$3"
    best="$(awk -v a="$r1" -v b="$r2" 'BEGIN { print (a > b ? a : b) }')"
    printf '%-26s %12.0f %12.0f %12.0f %9.2f %9.2f %8.3f\n' "$1" "$r1" "$r2" "$rps" "$p50" "$p99" \
        "$(awk -v h="$rps" -v r="$best" 'BEGIN { print h / r }')"
}
row "AES-256-GCM encrypt 256B" aes-gcm-encrypt-256B "$AES_HTTP"
row "RSA-2048 sign" rsa2048-sign "$RSA_HTTP"
row "ECDSA P-256 sign" ecdsa-p256-sign "$EC_HTTP"
row "AES encrypt, token auth" aes-gcm-encrypt-256B "$TOKEN_HTTP"
printf 'the next three rows: wrk -c%s, medians of %s alternating rounds\n' "$LOG_CONNECTIONS" "$LOG_ROUNDS"
row "AES encrypt, log+fsync" aes-gcm-encrypt-256B "$FSYNC_HTTP"
row "AES encrypt, log on" aes-gcm-encrypt-256B "$LOGON_HTTP"
row "AES encrypt, log off" aes-gcm-encrypt-256B "$NOLOG_HTTP"
read -r log_fsync _ <<<"$FSYNC_HTTP"
read -r log_on _ <<<"$LOGON_HTTP"
read -r log_off _ <<<"$NOLOG_HTTP"
printf '\nactivity log (wrk -c%s): Encrypt with the log on = %.1f%% of the rate with it off (medians of %s alternating rounds: on %s, off %s req/s)\n' \
    "$LOG_CONNECTIONS" "$(awk -v a="$log_on" -v b="$log_off" 'BEGIN { print 100 * a / b }')" "$LOG_ROUNDS" \
    "$(cut -d' ' -f1 "$WORK/log-on.txt" | tr '\n' ' ')" "$(cut -d' ' -f1 "$WORK/log-off.txt" | tr '\n' ' ')"
printf 'activity log with fsync = %.1f%% of the rate with it off (rounds: %s req/s)\n' \
    "$(awk -v a="$log_fsync" -v b="$log_off" 'BEGIN { print 100 * a / b }')" "$(cut -d' ' -f1 "$WORK/log-fsync.txt" | tr '\n' ' ')"
printf '\nratio = HTTP req/s / the better raw figure (1 or 2 threads) of the same token.\n'
if part levers; then
    lever_table
fi
printf '\nscale curve (N keys, random-key encrypt after a restart): scripts/bench-scale.sh\n'
