#!/usr/bin/env bash
# One-run benchmark on one fresh SoftHSMv2 token and store. Prints ONE table:
#   - raw PKCS#11 ops/s through the crate's hsm layer (src/bin/hsm_bench.rs)
#     on 1 and 2 threads: AES-256-GCM encrypt and decrypt of 256 bytes with
#     the key as a token object and as a session object, RSA-2048 sign,
#     verify and OAEP decrypt (128 bytes), ECDSA P-256 sign;
#   - the release server on loopback under wrk, activity log + fsync on (the
#     defaults): HTTP req/s, p50/p99 and the ratio HTTP / best raw rate of
#     the same token operation, for AES encrypt and decrypt, RSA sign,
#     verify and OAEP decrypt, ECDSA sign (NAVER API 2.0, signature v2),
#     NHN symmetric encrypt (appkey + User Access Key), AES encrypt with
#     token auth, and API 1.0 encrypt (signature v1 + API key);
#   - the activity log's cost: AES encrypt with the log + fsync, the log
#     without fsync and no log, medians of LOG_ROUNDS alternating rounds;
# then the scale curve (scripts/bench-scale.sh with SCALE_SIZES keys).
#
#   scripts/bench.sh                         the table and the scale curve
#   BENCH_PARTS=levers scripts/bench.sh      only the levers (below)
#   BENCH_PARTS="raw http" scripts/bench.sh  any subset of: raw http log scale levers
#   BENCH_BUILD=0 scripts/bench.sh           use the release binaries already built
#   HTTP_SECS=5 scripts/bench.sh             shorter wrk runs (default 10 s)
#
# Levers (BENCH_PARTS=levers): the hot-path levers of issue 10 §2, each a
# runtime switch, on the same binary, token and store, in alternating
# rounds (each round starts every configuration's server once and runs
# every operation on it), medians of LEVER_ROUNDS; LEVERS picks the
# configurations (default: all of them, in this order):
#   levers_off     the levers of this table off: activity_log.statement_cache
#                  = false, server.lean_requests = false (workers dispatch and
#                  token IVs, as on main before them)
#   stmt_cache     levers_off + activity_log.statement_cache
#   lean_requests  levers_off + server.lean_requests
#   defaults       both (the shipped configuration)
#   blocking_pool  defaults with hsm.dispatch = blocking_pool (the dispatch
#                  lever, by its inverse)
#   inline         defaults with hsm.inline_symmetric = true (short symmetric
#                  token calls on the request's executor thread)
#   no_inline      defaults with hsm.inline_symmetric = false (every token
#                  call on a worker thread: the inline lever by its inverse)
#   batch_wait     defaults with activity_log.batch_wait_us = 1000 (the log
#                  writer waits 1 ms for more records: fewer, larger commits)
#   batch_min      defaults with activity_log.batch_wait_us = 2000 and
#                  batch_min_records = 16: the writer waits only while a batch
#                  holds fewer than 16 records (slow streams such as RSA)
#   no_batch_wait  defaults with activity_log.batch_wait_us = 0: the log
#                  writer never waits for more records (the default before
#                  session 10; the sibling-aware batch wait by its inverse)
#   wait_always    defaults with activity_log.batch_siblings = 0: the batch
#                  wait whatever is on its way (batch_min before session 10)
#   host_iv        defaults with hsm.gcm_iv_source = host (not for FIPS)
#   access_log_off defaults with log.access = false (no access line per
#                  request; the server logs at info, to a file)
#   writer_task    defaults with activity_log.writer_thread = false (the log
#                  writer as a task with sqlx's connection: the writer-thread
#                  lever by its inverse)
#   log_off        defaults with the activity log off (what the log costs)
#   tokio_1        defaults on one async executor thread (TOKIO_WORKER_THREADS
#                  =1): fewer idle executor threads to wake on 2 cores
#   mimalloc_preload, jemalloc_preload
#                  defaults with Debian's libmimalloc2.0 or libjemalloc2 as
#                  the whole process's malloc (LD_PRELOAD; listed when the
#                  library is installed)
#   baseline       defaults served by BASELINE_BIN (another build of
#                  hsm-kms, e.g. main's): before / after of a code change in
#                  one interleaved run; listed only when BASELINE_BIN is set
# LEVER_OPS (default "enc rsa ec": AES encrypt, RSA-2048 sign, ECDSA sign;
# also "floor": GET /healthz, the HTTP floor).
# PROFILE_DIR=docs/perf also records the server with perf during the first
# run of each operation in PROFILE_OPS (default "enc") of each configuration
# in PROFILE_CONFIGS (default "defaults") and writes a flamegraph (inferno):
# PROFILE_DIR/{encrypt,sign-rsa,sign-ecdsa}-<configuration>.svg, and with
# PROFILE_FOLDED=1 the folded stacks beside it (.folded, for grep).
#
# SWITCHES=1 also prints, per run, the server CPU per request by thread kind
# and the server's context switches per request
# by thread kind (voluntary + involuntary, from /proc/PID/task/*/status),
# and repeats them under the levers table: who waits for whose wake-up.
#
# Environment: RAW_SECS (3) per raw figure, HTTP_SECS (10) per wrk run,
# CONNECTIONS (64) and WRK_THREADS (2) for wrk, LOG_ROUNDS (3), LEVER_ROUNDS
# (3), SCALE_SIZES ("100 1000"; empty skips the curve), and any HSM_KMS_* key
# to change the server's config. NCP signatures do not cover the body and
# stay valid for 5 minutes, so each wrk run reuses headers signed just
# before it. The machine, the token and the settings are printed above the
# table; every figure is one run unless it says medians.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

RAW_SECS="${RAW_SECS:-3}"
HTTP_SECS="${HTTP_SECS:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
WRK_THREADS="${WRK_THREADS:-2}"
LOG_ROUNDS="${LOG_ROUNDS:-3}"
LEVER_ROUNDS="${LEVER_ROUNDS:-3}"
LEVER_OPS="${LEVER_OPS:-enc rsa ec}"
SCALE_SIZES="${SCALE_SIZES-100 1000}"
BENCH_PARTS="${BENCH_PARTS:-raw http log scale}"
part() { [[ " $BENCH_PARTS " == *" $1 "* ]]; }
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"

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
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"
if [ "${BENCH_BUILD:-1}" = 0 ]; then
    log "BENCH_BUILD=0: using the release binaries already built in $TARGET"
else
    # Feature bench: the raw benchmark from the runtime dependencies alone;
    # the same features as scripts/bench-scale.sh builds with, so the scale
    # curve reuses this build.
    log "building hsm-kms and hsm-kms-bench (release, feature bench)"
    (cd "$ROOT" && cargo build --release --locked --features bench --bin hsm-kms --bin hsm-kms-bench)
fi
[ -x "$TARGET/hsm-kms" ] || die "no $TARGET/hsm-kms: build it (drop BENCH_BUILD=0)"
if part raw && [ ! -x "$TARGET/hsm-kms-bench" ]; then
    die "no $TARGET/hsm-kms-bench: build it (drop BENCH_BUILD=0)"
fi

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
kms() { "$TARGET/hsm-kms" --config "$CONFIG" "$@"; }
val() { sed -n "s/^$1=//p"; }

# Raw PKCS#11.
: >"$WORK/raw.txt"
if part raw; then
    log "raw PKCS#11 through the hsm layer (${RAW_SECS}s per figure)"
    "$TARGET/hsm-kms-bench" --config "$CONFIG" --secs "$RAW_SECS" | tee "$WORK/raw.txt" >&2 \
        || log "the raw benchmark failed; its rows stay empty"
fi
# raw OP THREADS -> ops/s, or empty.
raw() { awk -v op="$1" -v t="threads=$2" '$1 == "raw" && $2 == op && $3 == t { sub("ops_per_sec=", "", $4); print $4 }' "$WORK/raw.txt"; }

# Credentials, as an operator makes them (before the server runs).
kms init --account bench >"$WORK/creds" 2>/dev/null
AK="$(val access_key <"$WORK/creds")"
SK="$(val secret_key <"$WORK/creds")"
API_KEY="$(kms admin create-api-key --account bench | val api_key)"
kms admin nhn create-project bench >/dev/null
APPKEY="$(kms admin nhn create-appkey --project bench | val appkey)"
kms admin nhn create-user-access-key --project bench >"$WORK/uak" 2>/dev/null
UAK_ID="$(val user_access_key <"$WORK/uak")"
UAK_SECRET="$(val secret_access_key <"$WORK/uak")"
kms admin nhn create-key-store --project bench --name bench-store >/dev/null
[ -n "$AK" ] && [ -n "$SK" ] && [ -n "$API_KEY" ] && [ -n "$APPKEY" ] && [ -n "$UAK_ID" ] \
    && [ -n "$UAK_SECRET" ] || die "could not create the benchmark's credentials"

# start_server [ENV=VALUE ...]: (re)starts the server on the same token and
# store; SERVER_BIN (default this tree's release build) picks the binary.
start_server() {
    stop_server
    rm -f "$WORK/addr"
    env "$@" "${SERVER_BIN:-$TARGET/hsm-kms}" --config "$CONFIG" serve --addr-file "$WORK/addr" >/dev/null 2>"$WORK/server.log" &
    SERVER_PID=$!
    for _ in $(seq 100); do [ -s "$WORK/addr" ] && break; sleep 0.1; done
    [ -s "$WORK/addr" ] || die "server did not start: $(tail -5 "$WORK/server.log")"
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

# sign_headers METHOD PATH [v1]: the NCP headers as `-H` arguments, one per
# line: signature v2, or v1 with the API Gateway API key (API 1.0).
sign_headers() {
    local ts sig
    ts="$(date +%s%3N)"
    if [ "${3:-}" = v1 ]; then
        sig="$(printf '%s %s\n%s\n%s\n%s' "$1" "$2" "$ts" "$API_KEY" "$AK" | openssl dgst -sha256 -hmac "$SK" -binary | base64 -w0)"
        printf '%s\n' -H "x-ncp-apigw-timestamp: $ts" -H "x-ncp-apigw-api-key: $API_KEY" \
            -H "x-ncp-iam-access-key: $AK" -H "x-ncp-apigw-signature-v1: $sig"
    else
        sig="$(printf '%s %s\n%s\n%s' "$1" "$2" "$ts" "$AK" | openssl dgst -sha256 -hmac "$SK" -binary | base64 -w0)"
        printf '%s\n' -H "x-ncp-apigw-timestamp: $ts" -H "x-ncp-iam-access-key: $AK" -H "x-ncp-apigw-signature-v2: $sig"
    fi
}
nhn_headers() { printf '%s\n' -H "X-TC-AUTHENTICATION-ID: $UAK_ID" -H "X-TC-AUTHENTICATION-SECRET: $UAK_SECRET"; }
api() { # api METHOD PATH BODY [v1]
    local hdrs
    mapfile -t hdrs < <(sign_headers "$1" "$2" "${4:-}")
    curl -sS -X "$1" "${hdrs[@]}" -H 'content-type: application/json' --data "$3" "$URL$2"
}
nhn_api() { # nhn_api PATH_AFTER_APPKEY BODY
    local hdrs
    mapfile -t hdrs < <(nhn_headers)
    curl -sS -X POST "${hdrs[@]}" -H 'content-type: application/json' --data "$2" "$URL/keymanager/v1.2/appkey/$APPKEY$1"
}
json_str() { { grep -o "\"$1\":\"[^\"]*\"" || true; } | head -1 | cut -d'"' -f4; }
create_key() { # create_key NAME TYPE -> keyTag
    api POST /kms/v1/keys "{\"keyName\":\"$1\",\"keyType\":\"$2\",\"isAutoRotation\":false}" | json_str keyTag
}
AES_TAG="$(create_key bench-aes AES256)"
RSA_TAG="$(create_key bench-rsa RSA2048)"
EC_TAG="$(create_key bench-ec ECDSA)"
[ -n "$AES_TAG" ] && [ -n "$RSA_TAG" ] && [ -n "$EC_TAG" ] || die "could not create the keys"
DATA_B64="$(head -c 256 /dev/urandom | base64 -w0)"
OAEP_B64="$(head -c 128 /dev/urandom | base64 -w0)"
# NHN plaintexts are text: 256 characters.
NHN_TEXT="$(head -c 192 /dev/urandom | base64 -w0)"

# http_run NAME PATH BODY [MODE] -> "rps p50_ms p99_ms"; MODE: empty
# (signature v2), v1 (API 1.0), token:TOKEN (x-ncp-ocapi-token) or nhn
# (appkey in the path, User Access Key headers). One checked request first:
# a wrong credential would otherwise bench error answers.
http_run() {
    local name="$1" path="$2" body="$3" mode="${4:-}" hdrs out ok='"code":"SUCCESS"'
    case "$mode" in
        token:*)
            hdrs=(-H "x-ncp-ocapi-token: ${mode#token:}")
            out="$(curl -sS -X POST "${hdrs[@]}" -H 'content-type: application/json' --data "$body" "$URL$path")"
            ;;
        nhn)
            mapfile -t hdrs < <(nhn_headers)
            out="$(curl -sS -X POST "${hdrs[@]}" -H 'content-type: application/json' --data "$body" "$URL$path")"
            ok='"isSuccessful":true'
            ;;
        *)
            out="$(api POST "$path" "$body" "$mode")"
            mapfile -t hdrs < <(sign_headers POST "$path" "$mode")
            ;;
    esac
    grep -q "$ok" <<<"$out" || { log "$name: the checked request failed: $out"; return 1; }
    log "wrk $name: ${HTTP_SECS}s, -t$WRK_THREADS -c$CONNECTIONS"
    wrk_run "$name" "wrk.method = \"POST\"
wrk.body = [[$body]]
wrk.headers[\"Content-Type\"] = \"application/json\"" "$URL$path" "${hdrs[@]}"
}
# floor_run NAME -> "rps p50_ms p99_ms": wrk GET /healthz (the HTTP floor).
floor_run() {
    log "wrk $1: GET /healthz, ${HTTP_SECS}s, -t$WRK_THREADS -c$CONNECTIONS"
    wrk_run "$1" "" "$URL/healthz"
}
# wrk_run NAME LUA URL [WRK_ARGS...] -> "rps p50_ms p99_ms": one wrk run
# (WRK_THREADS, CONNECTIONS, HTTP_SECS) with LUA before the script's result
# line; fails on no result or any non-2xx answer, logs socket errors.
wrk_run() {
    local name="$1" lua="$2" url="$3" line rps p50 p99 non2xx errs
    shift 3
    {
        printf '%s\n' "$lua"
        cat <<'LUA'
done = function(summary, latency, requests)
  local errs = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %.1f %.3f %.3f %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.status, errs))
end
LUA
    } >"$WORK/$name.lua"
    wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${HTTP_SECS}s" --latency -s "$WORK/$name.lua" "$@" "$url" >"$WORK/$name.wrk" 2>&1 || true
    line="$(grep '^RESULT' "$WORK/$name.wrk")" || { log "$name: no result: $(tail -3 "$WORK/$name.wrk")"; return 1; }
    read -r _ rps p50 p99 non2xx errs <<<"$line"
    [ "$non2xx" -eq 0 ] || { log "$name: $non2xx non-2xx answers"; return 1; }
    [ "$errs" -eq 0 ] || log "$name: $errs socket errors"
    echo "$rps $p50 $p99"
}
median() { sort -n | awk '{ v[NR] = $1 } END { if (NR) print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
med3() { # med3 FILE -> "median_rps median_p50 median_p99", or "fail"
    if [ -s "$1" ]; then
        printf '%s %s %s\n' "$(cut -d' ' -f1 "$1" | median)" "$(cut -d' ' -f2 "$1" | median)" "$(cut -d' ' -f3 "$1" | median)"
    else
        echo fail
    fi
}
# metric_sum NAME: the value of an unlabelled metric of the running server.
metric_sum() { curl -s "$URL/metrics" | awk -v n="$1" '$1 == n { s += $NF } END { printf "%.0f\n", s }'; }
# metric_float NAME: the same, unrounded.
metric_float() { curl -s "$URL/metrics" | awk -v n="$1" '$1 == n { s += $NF } END { printf "%.6f\n", s }'; }
# server_cpu_ticks: user + system clock ticks of the running server so far.
server_cpu_ticks() { awk '{ print $14 + $15 }' "/proc/$SERVER_PID/stat"; }
# Context switches of every server thread, one line per thread kind (the
# name without its number): "kind voluntary involuntary", summed.
server_switches() {
    by_thread_kind status '/^voluntary_ctxt_switches/ { v = $2 } /^nonvoluntary_ctxt_switches/ { n = $2 } END { print v + 0, n + 0 }'
}
# CPU clock ticks (user + system) of every server thread, one line per
# thread kind: "kind ticks", summed.
server_thread_ticks() {
    by_thread_kind stat '{ sub(/^.*\) /, ""); print $12 + $13 }'
}
# by_thread_kind FILE AWK: for each server thread, what AWK prints of its
# /proc/PID/task/TID/FILE (numbers), summed column by column per thread kind
# (the thread's name without its digits): "kind sum...", sorted.
by_thread_kind() {
    local t
    for t in /proc/"$SERVER_PID"/task/*; do
        printf '%s %s\n' "$(tr -d '0-9' <"$t/comm" | tr ' ' '_')" "$(awk "$2" "$t/$1")"
    done 2>/dev/null | awk '{ for (i = 2; i <= NF; i++) s[$1, i] += $i; if (NF > w[$1]) w[$1] = NF }
        END { for (k in w) { line = k; for (i = 2; i <= w[k]; i++) line = line " " s[k, i]; print line } }' | sort
}
rounds() { cut -d' ' -f1 "$1" 2>/dev/null | xargs printf '%.0f ' 2>/dev/null || true; }

header() {
    local cpu
    cpu="$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
    printf '\nhsm-kms benchmark: %s cores (%s), %s, SoftHSMv2 %s (file object store), one token, loopback\n' \
        "$(nproc)" "${cpu:-unknown CPU}" "$(uname -sr)" "$(softhsm2-util --version)"
    printf 'wrk -t%s -c%s, %ss per run, 256-byte payloads (RSA OAEP: 128 bytes); load average before the run: %s\n' \
        "$WRK_THREADS" "$CONNECTIONS" "$HTTP_SECS" "$LOAD_BEFORE"
    local overrides
    overrides="$(env | { grep '^HSM_KMS_' || true; } | cut -d= -f1 | tr '\n' ' ')"
    printf 'server: the shipped defaults (activity log + fsync on, workers dispatch, token IVs)%s\n' \
        "${overrides:+; overridden: $overrides}"
}

# The levers (BENCH_PARTS=levers): alternating rounds, fresh server per
# configuration and round.
LEVER_ALL=(
    "levers_off:HSM_KMS_ACTIVITY_LOG_STATEMENT_CACHE=false HSM_KMS_SERVER_LEAN_REQUESTS=false"
    "stmt_cache:HSM_KMS_ACTIVITY_LOG_STATEMENT_CACHE=true HSM_KMS_SERVER_LEAN_REQUESTS=false"
    "lean_requests:HSM_KMS_ACTIVITY_LOG_STATEMENT_CACHE=false HSM_KMS_SERVER_LEAN_REQUESTS=true"
    "defaults:HSM_KMS_ACTIVITY_LOG_STATEMENT_CACHE=true HSM_KMS_SERVER_LEAN_REQUESTS=true"
    "blocking_pool:HSM_KMS_HSM_DISPATCH=blocking_pool"
    "inline:HSM_KMS_HSM_INLINE_SYMMETRIC=true"
    "no_inline:HSM_KMS_HSM_INLINE_SYMMETRIC=false"
    "batch_wait:HSM_KMS_ACTIVITY_LOG_BATCH_WAIT_US=1000"
    "batch_min:HSM_KMS_ACTIVITY_LOG_BATCH_WAIT_US=2000 HSM_KMS_ACTIVITY_LOG_BATCH_MIN_RECORDS=16"
    "no_batch_wait:HSM_KMS_ACTIVITY_LOG_BATCH_WAIT_US=0"
    "wait_always:HSM_KMS_ACTIVITY_LOG_BATCH_SIBLINGS=0"
    "host_iv:HSM_KMS_HSM_GCM_IV_SOURCE=host"
    "access_log_off:HSM_KMS_LOG_ACCESS=false"
    "writer_task:HSM_KMS_ACTIVITY_LOG_WRITER_THREAD=false"
    "log_off:HSM_KMS_ACTIVITY_LOG_ENABLED=false"
    "tokio_1:TOKIO_WORKER_THREADS=1"
)
# Another malloc for the whole server process (the Rust code, SoftHSMv2,
# SQLite and OpenSSL alike), preloaded: Debian's libmimalloc2.0 and
# libjemalloc2, listed when installed.
for lib in mimalloc jemalloc; do
    so="/usr/lib/$(uname -m)-linux-gnu/lib$lib.so.2"
    [ -e "$so" ] && LEVER_ALL+=("${lib}_preload:LD_PRELOAD=$so")
done
if [ -n "${BASELINE_BIN:-}" ]; then
    [ -x "$BASELINE_BIN" ] || die "BASELINE_BIN=$BASELINE_BIN is not an executable"
    LEVER_ALL+=("baseline:SERVER_BIN=$BASELINE_BIN")
fi
LEVER_CONFIGS=()
for c in "${LEVER_ALL[@]}"; do
    if [ -z "${LEVERS:-}" ] || [[ " $LEVERS " == *" ${c%%:*} "* ]]; then LEVER_CONFIGS+=("$c"); fi
done
PROFILE_CONFIGS="${PROFILE_CONFIGS:-defaults}"
PROFILE_OPS="${PROFILE_OPS:-enc}"
op_label() { case $1 in enc) echo "AES encrypt" ;; rsa) echo "RSA-2048 sign" ;; ec) echo "ECDSA sign" ;; floor) echo "GET /healthz" ;; esac; }
op_path() { case $1 in enc) echo "/kms/v1/keys/$AES_TAG/encrypt" ;; rsa) echo "/kms/v1/keys/$RSA_TAG/sign" ;; ec) echo "/kms/v1/keys/$EC_TAG/sign" ;; esac; }
op_body() { case $1 in enc) echo "{\"plaintext\":\"$DATA_B64\"}" ;; *) echo "{\"data\":\"$DATA_B64\"}" ;; esac; }
if part levers; then
    for round in $(seq "$LEVER_ROUNDS"); do
        for c in "${LEVER_CONFIGS[@]}"; do
            name="${c%%:*}"
            log "levers: round $round of $LEVER_ROUNDS, $name"
            SERVER_BIN=""
            [ "$name" = baseline ] && SERVER_BIN="$BASELINE_BIN"
            # shellcheck disable=SC2086
            start_server HSM_KMS_ACTIVITY_LOG_ENABLED=true HSM_KMS_ACTIVITY_LOG_FSYNC=true ${c#*:}
            SERVER_BIN=""
            for op in $LEVER_OPS; do
                perf_pid=""
                if [ -n "${PROFILE_DIR:-}" ] && [ "$round" -eq 1 ] && [[ " $PROFILE_OPS " == *" $op "* ]] \
                    && [[ " $PROFILE_CONFIGS " == *" $name "* ]]; then
                    perf record -F 199 --call-graph dwarf,16384 -p "$SERVER_PID" -o "$WORK/perf-$name.data" \
                        -- sleep "$((HTTP_SECS > 3 ? HTTP_SECS - 2 : 1))" >/dev/null 2>&1 &
                    perf_pid=$!
                fi
                b0="$(metric_sum hsm_kms_activity_batches_total)"; r0="$(metric_sum hsm_kms_activity_batch_records_total)"
                cs0="$(metric_float hsm_kms_activity_commit_duration_seconds_sum)"; cn0="$(metric_sum hsm_kms_activity_commit_duration_seconds_count)"
                cpu0="$(server_cpu_ticks)"
                [ "${SWITCHES:-0}" = 1 ] && { server_switches >"$WORK/sw0.txt"; server_thread_ticks >"$WORK/tt0.txt"; }
                if [ "$op" = floor ]; then
                    floor_run "lever-$name-$op-$round" >"$WORK/lever-run.txt"
                else
                    http_run "lever-$name-$op-$round" "$(op_path "$op")" "$(op_body "$op")" >"$WORK/lever-run.txt"
                fi || log "levers: $name $op round $round failed"
                cat "$WORK/lever-run.txt" >>"$WORK/lever-$name-$op.txt"
                if [ "${SWITCHES:-0}" = 1 ]; then
                    # Context switches per request, per thread kind: who
                    # sleeps (voluntary: waits for a wake-up) and who is
                    # pre-empted (involuntary), for this run.
                    read -r rps _ <<<"$(cat "$WORK/lever-run.txt") x"
                    server_switches | join -a1 -e0 -o 0,1.2,1.3,2.2,2.3 - "$WORK/sw0.txt" \
                        | awk -v r="$rps" -v s="$HTTP_SECS" -v c="$name" -v o="$op" -v k="$round" \
                            'BEGIN { printf "switches per request, %s %s round %s:", c, o, k }
                             r + 0 > 0 { vv = ($2 - $4) / (r * s); nn = ($3 - $5) / (r * s); tv += vv; tn += nn
                                         if (vv + nn >= 0.01) printf " %s %.2f+%.2f", $1, vv, nn }
                             END { printf "; total %.2f voluntary + %.2f involuntary\n", tv, tn }' \
                        | tee -a "$WORK/switches.txt" >&2
                    # CPU per request by thread kind: where the server's
                    # µs/req go (the token's work is on its worker threads).
                    server_thread_ticks | join -a1 -e0 -o 0,1.2,2.2 - "$WORK/tt0.txt" \
                        | awk -v r="$rps" -v s="$HTTP_SECS" -v c="$name" -v o="$op" -v k="$round" -v hz="$(getconf CLK_TCK)" \
                            'BEGIN { printf "CPU µs per request, %s %s round %s:", c, o, k }
                             r + 0 > 0 { u = ($2 - $3) / hz * 1e6 / (r * s); t += u; if (u >= 1) printf " %s %.0f", $1, u }
                             END { printf "; total %.0f\n", t }' \
                        | tee -a "$WORK/switches.txt" >&2
                fi
                # The server's CPU time per request (user + system, all its
                # threads, the token's included): less sensitive to other
                # load on the machine than req/s.
                read -r rps _ <<<"$(cat "$WORK/lever-run.txt") x"
                awk -v t="$(( $(server_cpu_ticks) - cpu0 ))" -v hz="$(getconf CLK_TCK)" -v r="$rps" -v s="$HTTP_SECS" \
                    'BEGIN { if (r + 0 > 0) printf "%.0f\n", t / hz * 1e6 / (r * s) }' >>"$WORK/cpu-$name-$op.txt"
                # Mean time the log writer took per batch (chain, seal, SQL, commit).
                awk -v n="$(( $(metric_sum hsm_kms_activity_commit_duration_seconds_count) - cn0 ))" \
                    -v a="$(metric_float hsm_kms_activity_commit_duration_seconds_sum)" -v b="$cs0" \
                    'BEGIN { if (n > 0) printf "%.2f\n", (a - b) * 1000 / n }' >>"$WORK/commit-$name-$op.txt"
                # Mean records per activity-log commit during this run.
                awk -v b="$(( $(metric_sum hsm_kms_activity_batches_total) - b0 ))" \
                    -v r="$(( $(metric_sum hsm_kms_activity_batch_records_total) - r0 ))" \
                    'BEGIN { if (b > 0) printf "%.1f\n", r / b }' >>"$WORK/batch-$name-$op.txt"
                if [ -n "$perf_pid" ]; then
                    wait "$perf_pid" || true
                    mkdir -p "$PROFILE_DIR"
                    svg="$(case $op in enc) echo encrypt ;; rsa) echo sign-rsa ;; ec) echo sign-ecdsa ;; esac)-$name.svg"
                    perf script --no-inline -i "$WORK/perf-$name.data" 2>/dev/null | inferno-collapse-perf \
                        >"$WORK/perf-$name.folded" || true
                    [ "${PROFILE_FOLDED:-0}" = 1 ] && cp "$WORK/perf-$name.folded" "$PROFILE_DIR/${svg%.svg}.folded"
                    inferno-flamegraph <"$WORK/perf-$name.folded" --title "hsm-kms $(op_label "$op"), wrk -t$WRK_THREADS -c$CONNECTIONS, $name" \
                            >"$PROFILE_DIR/$svg" || log "flamegraph $svg failed"
                    rm -f "$WORK/perf-$name.data"
                fi
            done
        done
    done
    start_server
fi
lever_table() {
    printf '\nlevers (issue 10 §2): wrk -t%s -c%s, %ss per run, activity log + fsync on; medians of %s alternating rounds (req/s of each round in brackets)\n' \
        "$WRK_THREADS" "$CONNECTIONS" "$HTTP_SECS" "$LEVER_ROUNDS"
    printf '%-15s %-14s %10s %8s %8s %9s %7s %8s %9s  %s\n' configuration operation "req/s" "p50 ms" "p99 ms" "x before" batch "µs/req" "commit ms" rounds
    local c name op base rps p50 p99 x
    for op in $LEVER_OPS; do
        read -r base _ <<<"$(med3 "$WORK/lever-${LEVER_CONFIGS[0]%%:*}-$op.txt")"
        for c in "${LEVER_CONFIGS[@]}"; do
            name="${c%%:*}"
            read -r rps p50 p99 <<<"$(med3 "$WORK/lever-$name-$op.txt")"
            if [ "$rps" = fail ]; then
                printf '%-15s %-14s %10s\n' "$name" "$(op_label "$op")" failed
                continue
            fi
            x="$(awk -v a="$rps" -v b="$base" 'BEGIN { if (b + 0 > 0) printf "%.2f", a / b; else print "-" }')"
            printf '%-15s %-14s %10.0f %8.2f %8.2f %9s %7s %8s %9s  [%s]\n' "$name" "$(op_label "$op")" \
                "$rps" "$p50" "$p99" "$x" "$(median <"$WORK/batch-$name-$op.txt" 2>/dev/null || true)" \
                "$(median <"$WORK/cpu-$name-$op.txt" 2>/dev/null || true)" \
                "$(median <"$WORK/commit-$name-$op.txt" 2>/dev/null || true)" \
                "$(rounds "$WORK/lever-$name-$op.txt")"
        done
    done
    printf 'x before = req/s / the %s row of the same operation; batch = median records per activity-log commit during the runs;\n' "${LEVER_CONFIGS[0]%%:*}"
    printf 'µs/req = median server CPU time (user + system, every thread, the token included) per request; commit ms = median of the mean\ntime the log writer took per batch (chain, seal, SQL, commit). On a shared machine, compare these more than req/s.\nConfigurations: %s\n' \
        "$(for c in "${LEVER_CONFIGS[@]}"; do printf '%s (%s); ' "${c%%:*}" "${c#*:}"; done)"
}

# The HTTP rows, on one server with the defaults.
declare -A HTTP=()
if part http; then
    api POST "/kms/v1/keys/$AES_TAG/token-generator" '' >/dev/null
    ACCESS_TOKEN="$(api POST "/kms/v1/keys/$AES_TAG/token-set" '{}' | json_str accessToken)"
    AES_CT="$(api POST "/kms/v1/keys/$AES_TAG/encrypt" "{\"plaintext\":\"$DATA_B64\"}" | json_str ciphertext)"
    RSA_SIG="$(api POST "/kms/v1/keys/$RSA_TAG/sign" "{\"data\":\"$DATA_B64\"}" | json_str signature)"
    RSA_CT="$(api POST "/kms/v1/keys/$RSA_TAG/encrypt" "{\"plaintext\":\"$OAEP_B64\"}" | json_str ciphertext)"
    NHN_KEY="$(nhn_api /keys/symmetric-keys/create \
        '{"keyStoreName":"bench-store","name":"bench-nhn","description":"bench"}' | json_str keyId)"
    run_row() { # run_row ID PATH BODY [MODE]
        HTTP[$1]="$(http_run "$@")" || HTTP[$1]=fail
    }
    run_row aes-enc "/kms/v1/keys/$AES_TAG/encrypt" "{\"plaintext\":\"$DATA_B64\"}"
    run_row aes-dec "/kms/v1/keys/$AES_TAG/decrypt" "{\"ciphertext\":\"$AES_CT\"}"
    run_row rsa-sign "/kms/v1/keys/$RSA_TAG/sign" "{\"data\":\"$DATA_B64\"}"
    run_row rsa-verify "/kms/v1/keys/$RSA_TAG/verify" "{\"data\":\"$DATA_B64\",\"signature\":\"$RSA_SIG\"}"
    run_row rsa-dec "/kms/v1/keys/$RSA_TAG/decrypt" "{\"ciphertext\":\"$RSA_CT\"}"
    run_row ec-sign "/kms/v1/keys/$EC_TAG/sign" "{\"data\":\"$DATA_B64\"}"
    run_row nhn-enc "/keymanager/v1.2/appkey/$APPKEY/symmetric-keys/$NHN_KEY/encrypt" "{\"plaintext\":\"$NHN_TEXT\"}" nhn
    run_row token-enc "/kms/v1/keys/$AES_TAG/encrypt" "{\"plaintext\":\"$DATA_B64\"}" "token:$ACCESS_TOKEN"
    run_row v1-enc "/keys/v1/$AES_TAG/encrypt" "{\"plaintext\":\"$DATA_B64\"}" v1
    # The HTTP floor: GET /healthz through the same listener and middleware
    # (request id, span, access log, limits) with no authentication, no
    # JSON and no token call, wrk on the same cores: no row can pass it.
    cpu0="$(server_cpu_ticks)"
    if HTTP[floor]="$(floor_run floor)"; then
        read -r rps _ <<<"${HTTP[floor]}"
        FLOOR_US="$(awk -v t="$(( $(server_cpu_ticks) - cpu0 ))" -v hz="$(getconf CLK_TCK)" -v r="$rps" -v s="$HTTP_SECS" \
            'BEGIN { if (r + 0 > 0) printf "%.0f", t / hz * 1e6 / (r * s) }')"
    else
        HTTP[floor]=fail
    fi
fi

# The activity log's cost: alternating server restarts, medians.
if part log; then
    for round in $(seq "$LOG_ROUNDS"); do
        for c in "fsync:HSM_KMS_ACTIVITY_LOG_ENABLED=true HSM_KMS_ACTIVITY_LOG_FSYNC=true" \
            "nofsync:HSM_KMS_ACTIVITY_LOG_ENABLED=true HSM_KMS_ACTIVITY_LOG_FSYNC=false" \
            "off:HSM_KMS_ACTIVITY_LOG_ENABLED=false"; do
            # shellcheck disable=SC2086
            start_server ${c#*:}
            http_run "encrypt-log-${c%%:*}-$round" "/kms/v1/keys/$AES_TAG/encrypt" "{\"plaintext\":\"$DATA_B64\"}" \
                >>"$WORK/log-${c%%:*}.txt" || log "log ${c%%:*} round $round failed"
        done
    done
    start_server
fi

# The scale curve: scripts/bench-scale.sh (issue 10 §1) with small N.
SCALE_OK=""
if part scale && [ -n "$SCALE_SIZES" ]; then
    stop_server
    log "scale curve: scripts/bench-scale.sh $SCALE_SIZES"
    # shellcheck disable=SC2086
    if HTTP_SECS="$HTTP_SECS" "$ROOT/scripts/bench-scale.sh" $SCALE_SIZES >"$WORK/scale.txt" 2>"$WORK/scale.log"; then
        SCALE_OK=1
    else
        log "the scale curve failed: $(tail -3 "$WORK/scale.log")"
    fi
fi

# The table.
if part raw || part http || part log; then
    header
    printf '\n%-36s %11s %11s %10s %8s %8s %7s\n' operation "raw 1 thr/s" "raw 2 thr/s" "HTTP req/s" "p50 ms" "p99 ms" ratio
    row() { # row LABEL RAWOP [HTTP_RESULT]
        local r1 r2 best rps p50 p99 ratio
        r1="$(raw "$2" 1)"; r2="$(raw "$2" 2)"
        best="$(awk -v a="${r1:-0}" -v b="${r2:-0}" 'BEGIN { print (a > b ? a : b) }')"
        printf '%-36s %11s %11s' "$1" "${r1:--}" "${r2:--}"
        if [ -z "${3:-}" ]; then
            printf '\n'
        elif [ "$3" = fail ]; then
            printf ' %10s\n' failed
        else
            read -r rps p50 p99 <<<"$3"
            ratio="$(awk -v h="$rps" -v r="$best" 'BEGIN { if (r > 0) printf "%.3f", h / r; else print "-" }')"
            printf ' %10.0f %8.2f %8.2f %7s\n' "$rps" "$p50" "$p99" "$ratio"
        fi
    }
    hrow() { part http && echo "${HTTP[$1]:-fail}" || echo ""; }
    row "AES-256-GCM encrypt, token object" aes-gcm-encrypt-256B "$(hrow aes-enc)"
    row "AES-256-GCM encrypt, session object" aes-gcm-encrypt-256B-session
    row "AES-256-GCM decrypt, token object" aes-gcm-decrypt-256B "$(hrow aes-dec)"
    row "AES-256-GCM decrypt, session object" aes-gcm-decrypt-256B-session
    row "RSA-2048 sign" rsa2048-sign "$(hrow rsa-sign)"
    row "RSA-2048 verify" rsa2048-verify "$(hrow rsa-verify)"
    row "RSA-2048 OAEP decrypt (128 B)" rsa2048-oaep-decrypt-128B "$(hrow rsa-dec)"
    row "ECDSA P-256 sign" ecdsa-p256-sign "$(hrow ec-sign)"
    row "NHN symmetric encrypt" aes-gcm-encrypt-256B "$(hrow nhn-enc)"
    row "AES encrypt, token auth" aes-gcm-encrypt-256B "$(hrow token-enc)"
    row "AES encrypt, API 1.0 (signature v1)" aes-gcm-encrypt-256B "$(hrow v1-enc)"
    if part log; then
        row "AES encrypt, log + fsync (median)" aes-gcm-encrypt-256B "$(med3 "$WORK/log-fsync.txt")"
        row "AES encrypt, log, no fsync (median)" aes-gcm-encrypt-256B "$(med3 "$WORK/log-nofsync.txt")"
        row "AES encrypt, no log (median)" aes-gcm-encrypt-256B "$(med3 "$WORK/log-off.txt")"
    fi
    part http && row "HTTP floor, GET /healthz" none "$(hrow floor)"
    printf '\nratio = HTTP req/s / the better raw figure (1 or 2 threads) of the same token operation (token object).\n'
    printf 'HTTP rows: NAVER API 2.0 signed requests (v2) unless named; one wrk run each on one server.\n'
    if part http && [ -n "${FLOOR_US:-}" ]; then
        printf 'HTTP floor: the server took %s µs of CPU per /healthz request (user + system, every thread); with wrk on the same cores no signed row can pass its req/s.\n' "$FLOOR_US"
    fi
    if part log; then
        printf 'log rows: medians of %s alternating rounds, a fresh server each (req/s per round: fsync %s| no fsync %s| off %s)\n' \
            "$LOG_ROUNDS" "$(rounds "$WORK/log-fsync.txt")" "$(rounds "$WORK/log-nofsync.txt")" "$(rounds "$WORK/log-off.txt")"
    fi
fi
if part levers; then
    part raw || part http || part log || header
    lever_table
    if [ -s "$WORK/switches.txt" ]; then
        printf '\ncontext switches per request by server thread kind (voluntary+involuntary; SWITCHES=1):\n'
        cat "$WORK/switches.txt"
    fi
fi
if part scale && [ -n "$SCALE_SIZES" ]; then
    printf '\nscale curve (scripts/bench-scale.sh %s, HTTP_SECS=%s):\n' "$SCALE_SIZES" "$HTTP_SECS"
    if [ -n "$SCALE_OK" ]; then
        sed -n '/^hsm-kms scale benchmark/,$p' "$WORK/scale.txt"
    else
        printf 'failed; the end of its log:\n'
        tail -5 "$WORK/scale.log"
    fi
fi
