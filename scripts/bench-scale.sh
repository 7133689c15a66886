#!/usr/bin/env bash
# Scale benchmark (issue 10 §1): does the key count matter?
#
#   scripts/bench-scale.sh [N...]        (default: 100 10000 100000)
#   BACKENDS="file db" scripts/bench-scale.sh 10000
#
# For each N and each SoftHSMv2 object store in BACKENDS (`file`, Debian's
# module, the default; `db`, the module scripts/softhsm-db.sh builds), on a
# fresh token and store:
#   1. `hsm-kms init`, then `hsm-kms-scale populate` creates N AES-256 key
#      versions through the engine (pending row, token object, activation,
#      as Create Key does), CONCURRENCY (16) at a time: keys/s;
#   2. the release server starts on them: seconds from spawn to /readyz 200,
#      split (from /metrics, hsm_kms_startup_seconds) into `C_Initialize`
#      and login (where SoftHSM loads its object store), the token
#      enumeration that fills the handle map, and the store scan;
#   3. with no warm-up, wrk runs signed Encrypt requests on keys drawn at
#      random among the N (HTTP_SECS, CONNECTIONS), so most requests are a
#      key's first use since the start: req/s, p50, p99;
#   4. then the same on one hot key on that (now warm) server: `hot warm`;
#      then the server is restarted and, again with no warm-up, the hot key
#      runs on the cold server: `hot cold`. `random` = random / hot cold,
#      both from a cold start (the fair ratio, issue 10 §1 "cold start
#      included"); `rnd/warm` = random / hot warm (the ratio this script
#      printed before, which favoured the hot key);
#   5. memory: the handle map's bytes per key version (from /metrics) and
#      the server's RSS growth over the random run per key touched (the
#      engine's key cache fills one entry per key used);
#   6. with the server stopped, the token's own floor (RAW=1, the default):
#      `hsm-kms-bench --token-keys` encrypts through the PKCS#11 layer alone
#      (no HTTP, no store) on the N keys in a random order, each once (raw
#      cold), again (raw warm), and on one key (raw hot), 2 threads,
#      RAW_SECS (5) each: `raw r/h` = raw cold / raw hot is the share of
#      the hot-key rate the token itself allows random keys.
# TOKEN_TMPFS=1 places the token directory on tmpfs (/dev/shm) and keeps
# the store (and everything else) on disk: the stand-in for a hardware or
# network HSM, which keeps its objects in its own storage. SoftHSMv2 2.6.1's
# `file` store truncates and rewrites an object's file once per attribute
# (35 ftruncates per AES key), which on an ext4 disk (and this VM's
# `discard` mount) costs a writeback each: that bounds creation on disk,
# and it is not what an HSM does. TOKEN_TMPFS=0 (the default) keeps the
# token on disk; TOKEN_TMPFS="0 1" runs both, one after the other per N.
# Prints one table. Environment: BACKENDS (file), HTTP_SECS (10),
# CONNECTIONS (64), WRK_THREADS (2), CONCURRENCY (16), RAW (1), RAW_SECS
# (5), ROUNDS (1: cold random / hot pairs per N), KEEP=1 keeps the work dirs, BENCH_BUILD=0 skips the cargo build,
# PROFILE_DIR=dir records the server with perf during the random and the
# hot-cold runs (perf-<N>-random.data, perf-<N>-hot-cold.data).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

HTTP_SECS="${HTTP_SECS:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
WRK_THREADS="${WRK_THREADS:-2}"
CONCURRENCY="${CONCURRENCY:-16}"
read -r -a BACKEND_LIST <<<"${BACKENDS:-file}"
read -r -a TOKEN_LIST <<<"${TOKEN_TMPFS:-0}"
for t in "${TOKEN_LIST[@]}"; do
    case "$t" in
    0 | 1) ;;
    *) die "TOKEN_TMPFS: '$t' is not 0 or 1" ;;
    esac
done
# BASELINE_BIN=/path/to/an/older/hsm-kms: each N is served by that binary
# first, then by this tree's, on the same token and store (before / after
# in one run).
SERVER_LIST=(new)
if [ -n "${BASELINE_BIN:-}" ]; then
    [ -x "$BASELINE_BIN" ] || die "BASELINE_BIN=$BASELINE_BIN is not an executable"
    SERVER_LIST=(base new)
fi
SIZES=("$@")
[ "${#SIZES[@]}" -gt 0 ] || SIZES=(100 10000 100000)

apt_install softhsm2 opensc wrk curl
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config
FILE_MODULE="$(softhsm_module)"
for b in "${BACKEND_LIST[@]}"; do
    case "$b" in
    file) ;;
    db) eval "$("$ROOT/scripts/softhsm-db.sh")" ;;
    *) die "BACKENDS: '$b' is not file or db" ;;
    esac
done
need_cargo
TARGET="${CARGO_TARGET_DIR:-$ROOT/target}/release"
if [ "${BENCH_BUILD:-1}" != 0 ]; then
    log "building hsm-kms, hsm-kms-scale and hsm-kms-bench (release, feature bench)"
    (cd "$ROOT" && cargo build --release --locked --features bench --bin hsm-kms --bin hsm-kms-scale --bin hsm-kms-bench)
fi

SERVER_PID=""
WORKS=()
cleanup() {
    stop_server
    if [ "${KEEP:-0}" != 1 ]; then
        for w in "${WORKS[@]}"; do rm -rf "$w"; done
    fi
}
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap cleanup EXIT
# start_server: $BIN on $CONFIG, until /readyz answers 200; sets SERVER_PID,
# URL and ready_ms (spawn to ready).
start_server() {
    local t0
    rm -f "$WORK/addr"
    t0="$(now_ms)"
    "$BIN" --config "$CONFIG" serve --addr-file "$WORK/addr" >/dev/null 2>"$WORK/server.log" &
    SERVER_PID=$!
    URL=""
    for _ in $(seq 1200); do
        if [ -s "$WORK/addr" ]; then
            URL="http://$(cat "$WORK/addr")"
            [ "$(curl -s -o /dev/null -w '%{http_code}' "$URL/readyz")" = 200 ] && break
        fi
        kill -0 "$SERVER_PID" 2>/dev/null || die "server exited: $(cat "$WORK/server.log")"
        sleep 0.05
    done
    ready_ms=$(($(now_ms) - t0))
}
now_ms() { date +%s%3N; }
rss_kib() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
metric() { # metric URL NAME -> value (sum of samples)
    curl -s "$1/metrics" | awk -v n="$2" '$1 == n || index($1, n "{") == 1 { s += $NF } END { printf "%.0f\n", s }'
}
phase() { # phase URL PHASE -> seconds of hsm_kms_startup_seconds{phase="PHASE"}
    curl -s "$1/metrics" | awk -v n="hsm_kms_startup_seconds{phase=\"$2\"}" '$1 == n { v = $NF } END { printf "%.3f\n", v }'
}

# The wrk script: Encrypt of 256 bytes on a key drawn at random from the
# signed request lines (`path timestamp signature`) in $SCALE_REQUESTS.
DATA_B64="$(head -c 256 /dev/urandom | base64 -w0)"
LUA="$(mktemp /tmp/hsm-kms-scale.XXXXXX.lua)"
WORKS+=("$LUA")
cat >"$LUA" <<LUA
local entries = {}
local ak = os.getenv("SCALE_AK")
local body = '{"plaintext":"$DATA_B64"}'
function init(args)
  for line in io.lines(os.getenv("SCALE_REQUESTS")) do
    local p, ts, sig = line:match("(%S+) (%S+) (%S+)")
    entries[#entries + 1] = { p, ts, sig }
  end
  math.randomseed(os.time() + math.floor(os.clock() * 1000000))
end
function request()
  local e = entries[math.random(#entries)]
  return wrk.format("POST", e[1], {
    ["Content-Type"] = "application/json",
    ["x-ncp-apigw-timestamp"] = e[2],
    ["x-ncp-iam-access-key"] = ak,
    ["x-ncp-apigw-signature-v2"] = e[3],
  }, body)
end
done = function(summary, latency, requests)
  local errs = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("RESULT %.1f %.3f %.3f %d %d %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.status, errs, summary.requests))
end
LUA

# run_wrk DIR LIMIT -> "rps p50 p99 requests"
run_wrk() {
    local dir="$1" limit="$2" ak line rps p50 p99 non2xx errs n
    ak="$("$TARGET/hsm-kms-scale" sign --dir "$dir" --limit "$limit" | sed -n 's/^access_key=//p')"
    local perf_pid=""
    if [ -n "${PROFILE_DIR:-}" ] && [ -n "${3:-}" ]; then
        # PROFILE_DIR: the server's profile over the run (perf, call graphs
        # by frame pointers and DWARF), one file per N and run.
        mkdir -p "$PROFILE_DIR"
        perf record -F 499 --call-graph dwarf,16384 -p "$SERVER_PID" -o "$PROFILE_DIR/perf-$N-$3.data" \
            -- sleep "$((HTTP_SECS > 3 ? HTTP_SECS - 2 : 1))" >/dev/null 2>&1 &
        perf_pid=$!
    fi
    SCALE_AK="$ak" SCALE_REQUESTS="$dir/requests" wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${HTTP_SECS}s" \
        -s "$LUA" "$URL" >"$dir/wrk-$limit.txt"
    [ -z "$perf_pid" ] || wait "$perf_pid" || true
    line="$(grep '^RESULT' "$dir/wrk-$limit.txt")" || die "no wrk result: $(cat "$dir/wrk-$limit.txt")"
    read -r _ rps p50 p99 non2xx errs n <<<"$line"
    [ "$non2xx" -eq 0 ] || die "$non2xx non-2xx answers (N=$limit); server log: $(tail -5 "$dir/server.log")"
    [ "$errs" -eq 0 ] || log "$errs socket errors"
    echo "$rps $p50 $p99 $n"
}

RESULTS=()
for N in "${SIZES[@]}"; do
for BACKEND in "${BACKEND_LIST[@]}"; do
for ON_TMPFS in "${TOKEN_LIST[@]}"; do
    if [ "$BACKEND" = db ]; then
        MODULE="$SOFTHSM_DB_MODULE" UTIL="$SOFTHSM_DB_UTIL"
    else
        MODULE="$FILE_MODULE" UTIL=softhsm2-util
    fi
    WORK="$(mktemp -d /tmp/hsm-kms-scale.XXXXXX)"
    WORKS+=("$WORK")
    umask 077
    mkdir -p "$WORK/data" "$WORK/scale"
    if [ "$ON_TMPFS" = 1 ]; then
        TOKEN_PLACE=tmpfs
        TOKEN_DIR="$(mktemp -d /dev/shm/hsm-kms-scale-tokens.XXXXXX)"
        WORKS+=("$TOKEN_DIR")
    else
        TOKEN_PLACE=disk
        TOKEN_DIR="$WORK/tokens"
        mkdir -p "$TOKEN_DIR"
    fi
    export SOFTHSM2_CONF="$WORK/softhsm2.conf"
    printf 'directories.tokendir = %s\nobjectstore.backend = %s\nlog.level = ERROR\n' "$TOKEN_DIR" "$BACKEND" >"$SOFTHSM2_CONF"
    random_secret >"$WORK/user.pin"
    "$UTIL" --init-token --free --label hsm-kms-scale --so-pin "$(random_secret)" \
        --pin "$(cat "$WORK/user.pin")" >/dev/null
    CONFIG="$WORK/hsm-kms.toml"
    bench_setup "$TARGET" "$CONFIG" "$WORK" "$MODULE" hsm-kms-scale $((N + 10))

    log "N=$N ($BACKEND, token on $TOKEN_PLACE): creating $N AES-256 keys through the engine, $CONCURRENCY at a time"
    pop="$("$TARGET/hsm-kms-scale" populate --config "$CONFIG" --keys "$N" \
        --concurrency "$CONCURRENCY" --out "$WORK/scale")"
    echo "$pop" >&2
    kps="$(sed -n 's/.*keys_per_sec=\([0-9.]*\).*/\1/p' <<<"$pop")"
    store_kib="$(du -sk "$TOKEN_DIR" | cut -f1)"

    for SERVER in "${SERVER_LIST[@]}"; do
    case "$SERVER" in
    base) BIN="$BASELINE_BIN" ;;
    *) BIN="$TARGET/hsm-kms" ;;
    esac
    log "N=$N ($BACKEND, $SERVER): starting the server (token store $store_kib KiB)"
    start_server
    rss0="$(rss_kib "$SERVER_PID")"
    p_module="$(phase "$URL" module)"
    p_enum="$(phase "$URL" enumeration)"
    p_store="$(phase "$URL" store_scan)"

    log "N=$N ($BACKEND, $SERVER): Encrypt on random keys, no warm-up (${HTTP_SECS}s, $CONNECTIONS connections)"
    resv0="$(metric "$URL" hsm_kms_gcm_reservations_total)"
    read -r r_rps r_p50 r_p99 r_n <<<"$(run_wrk "$WORK/scale" "$N" random)"
    resv="$(($(metric "$URL" hsm_kms_gcm_reservations_total) - resv0))"
    p_blocks="$(phase "$URL" gcm_first_blocks)"
    rss1="$(rss_kib "$SERVER_PID")"
    lookups="$(metric "$URL" hsm_kms_find_objects_total)"
    refreshes="$(metric "$URL" hsm_kms_handle_refreshes_total)"
    map_entries="$(metric "$URL" hsm_kms_handle_map_entries)"
    map_bytes="$(metric "$URL" hsm_kms_handle_map_bytes)"
    cache_entries="$(metric "$URL" hsm_kms_key_cache_entries)"
    cache_bytes="$(metric "$URL" hsm_kms_key_cache_bytes)"
    p_preload="$(phase "$URL" key_preload)"
    log "N=$N ($BACKEND, $SERVER): Encrypt on one hot key (the same server, warm)"
    read -r w_rps _ _ _ <<<"$(run_wrk "$WORK/scale" 1)"
    stop_server
    log "N=$N ($BACKEND, $SERVER): restarted; Encrypt on one hot key, no warm-up"
    start_server
    read -r h_rps _ h_p99 _ <<<"$(run_wrk "$WORK/scale" 1 hot-cold)"
    stop_server
    # ROUNDS > 1: more cold pairs (restart, random run; restart, hot run),
    # adjacent in time; the table then shows the medians, and `random` the
    # median of the pairs' ratios (this VM's neighbours move single runs by
    # 20 % and more).
    pairs="$r_rps:$h_rps"
    for round in $(seq 2 "${ROUNDS:-1}"); do
        log "N=$N ($BACKEND, $SERVER): round $round of $ROUNDS: restarted, random keys; restarted, one hot key"
        start_server
        read -r rr _ _ _ <<<"$(run_wrk "$WORK/scale" "$N")"
        stop_server
        start_server
        read -r hh _ _ _ <<<"$(run_wrk "$WORK/scale" 1)"
        stop_server
        pairs="$pairs $rr:$hh"
    done
    if [ "${ROUNDS:-1}" -gt 1 ]; then
        log "N=$N ($BACKEND, $SERVER): random:hot-cold req/s per round: $pairs"
        med() { tr ' ' '\n' | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
        r_rps="$(tr ' ' '\n' <<<"$pairs" | cut -d: -f1 | tr '\n' ' ' | med)"
        h_rps="$(tr ' ' '\n' <<<"$pairs" | cut -d: -f2 | tr '\n' ' ' | med)"
        ratio_med="$(tr ' ' '\n' <<<"$pairs" | awk -F: '{ print 100 * $1 / $2 }' | tr '\n' ' ' | med)"
    else
        ratio_med="$(awk -v a="$r_rps" -v b="$h_rps" 'BEGIN { print 100 * a / b }')"
    fi
    raw_enum=- raw_cold=0 raw_warm=0 raw_hot=0
    if [ "${RAW:-1}" = 1 ] && [ "$SERVER" = new ]; then
        log "N=$N ($BACKEND): the token alone (hsm-kms-bench --token-keys, ${RAW_SECS:-5}s per run)"
        raw="$("$TARGET/hsm-kms-bench" --config "$CONFIG" --token-keys --secs "${RAW_SECS:-5}")"
        echo "$raw" >&2
        raw_enum="$(sed -n 's/^raw token-keys .*enumeration_secs=\([0-9.]*\).*/\1/p' <<<"$raw")"
        raw_of() { sed -n "s/^raw aes-gcm-encrypt-256B-$1 .*threads=2 .*ops_per_sec=\([0-9]*\).*/\1/p" <<<"$raw"; }
        raw_cold="$(raw_of random-cold)" raw_warm="$(raw_of random-warm)" raw_hot="$(raw_of hot)"
    fi

    # Distinct keys a uniform draw of r_n requests among N touches.
    touched="$(awk -v n="$N" -v r="$r_n" 'BEGIN { printf "%.0f", n * (1 - exp(-r / n)) }')"
    RESULTS+=("$(printf '%s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s %s' "$N" "$kps" "$ready_ms" \
        "$r_rps" "$r_p50" "$r_p99" "$h_rps" "$h_p99" "$map_entries" "$map_bytes" \
        "$((rss1 - rss0))" "$touched" "$lookups" "$refreshes" "$store_kib" \
        "$BACKEND/$TOKEN_PLACE" "$p_module" "$p_enum" "$p_store" "$SERVER" "$cache_entries" "$cache_bytes" "$p_preload" "$rss0" \
        "$w_rps" "$resv" "$p_blocks" "$raw_enum" "$raw_cold" "$raw_warm" "$raw_hot" "$ratio_med")")
    done
    rm -rf "$TOKEN_DIR" "$WORK/data"
done
done
done

cpu="$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
printf '\nhsm-kms scale benchmark: %s cores (%s), SoftHSMv2 %s, wrk -t%s -c%s, %ss per run, 256-byte Encrypt, load average %s\n' \
    "$(nproc)" "${cpu:-unknown CPU}" "$(softhsm2-util --version)" "$WRK_THREADS" "$CONNECTIONS" "$HTTP_SECS" \
    "$(cut -d' ' -f1-3 /proc/loadavg)"
printf '%10s %5s %8s %9s %8s %8s %8s %8s %9s %8s %11s %8s %8s %9s %11s %8s %7s %9s %10s %10s %10s %9s %6s %8s\n' \
    "store/tok" "srv" "keys" "create/s" "ready s" "init s" "enum s" "store s" "preload s" "blocks s" "random r/s" "p50 ms" "p99 ms" "resv/req" "hot r/s" "p99 ms" "random" "rnd/warm" "map B/ver" "cache B/k" "RSS B/key" "RSS0 MiB" "finds" "refresh"
for r in "${RESULTS[@]}"; do
    read -r n kps ready r_rps r_p50 r_p99 h_rps h_p99 entries bytes drss touched finds refreshes _ backend p_module p_enum p_store srv c_entries c_bytes p_preload rss0 w_rps resv p_blocks _ _ _ _ ratio_med <<<"$r"
    printf '%10s %5s %8s %9.0f %8.2f %8.2f %8.2f %8.2f %9.2f %8.2f %11.0f %8.2f %8.2f %9.3f %11.0f %8.2f %6.0f%% %8.0f%% %10.0f %10.0f %10.0f %9.1f %6s %8s\n' \
        "$backend" "$srv" "$n" "$kps" "$(awk -v m="$ready" 'BEGIN { print m / 1000 }')" "$p_module" "$p_enum" "$p_store" "$p_preload" "$p_blocks" \
        "$r_rps" "$r_p50" "$r_p99" "$(awk -v a="$resv" -v b="$r_rps" -v s="$HTTP_SECS" 'BEGIN { print (b > 0 ? a / (b * s) : 0) }')" "$h_rps" "$h_p99" \
        "$ratio_med" \
        "$(awk -v a="$r_rps" -v b="$w_rps" 'BEGIN { print 100 * a / b }')" \
        "$(awk -v b="$bytes" -v e="$entries" 'BEGIN { print (e > 0 ? b / e : 0) }')" \
        "$(awk -v b="$c_bytes" -v e="$c_entries" 'BEGIN { print (e > 0 ? b / e : 0) }')" \
        "$(awk -v d="$drss" -v t="$touched" 'BEGIN { print (t > 0 ? d * 1024 / t : 0) }')" \
        "$(awk -v k="$rss0" 'BEGIN { print k / 1024 }')" "$finds" "$refreshes"
done
if [ "${RAW:-1}" = 1 ]; then
    printf '\nThe token alone (hsm-kms-bench --token-keys: PKCS#11 layer, no HTTP, no store; 2 threads, %ss per run):\n' "${RAW_SECS:-5}"
    printf '%10s %8s %8s %12s %12s %11s %8s %8s\n' "store/tok" "keys" "enum s" "raw cold r/s" "raw warm r/s" "raw hot r/s" "raw r/h" "http r/h"
    for r in "${RESULTS[@]}"; do
        read -r n _ _ _ _ _ _ _ _ _ _ _ _ _ _ backend _ _ _ srv _ _ _ _ _ _ _ raw_enum raw_cold raw_warm raw_hot ratio_med <<<"$r"
        [ "$srv" = new ] || continue
        printf '%10s %8s %8s %12s %12s %11s %7.0f%% %7.0f%%\n' "$backend" "$n" "$raw_enum" "$raw_cold" "$raw_warm" "$raw_hot" \
            "$(awk -v a="$raw_cold" -v b="$raw_hot" 'BEGIN { print (b > 0 ? 100 * a / b : 0) }')" \
            "$ratio_med"
    done
fi
printf '\nrandom = random-key req/s / hot r/s: each on a server just started (cold: no warm-up, cold start included);\n  with ROUNDS > 1, random r/s and hot r/s are medians and random the median of the rounds'"'"' ratios.\n'
printf 'rnd/warm = random-key req/s / one-hot-key req/s on the same server right after the random run (warm: the old figure).\n'
printf 'resv/req = AES-GCM blocks reserved on the request path (a store write waited for) per random-run request;\n'
printf '  blocks s = the start-up reservation of a first block per AES key version (in ready s, beside the enumeration).\n'
printf 'ready s = spawn to /readyz 200; of it: init s = C_Initialize + login + mechanism probe (SoftHSM loads its object store),\n'
printf '  enum s = the one token enumeration that fills the handle map, store s = the reconciler store reads.\n'
printf 'store/tok = SoftHSM object store / where its token files are (tmpfs: TOKEN_TMPFS=1, the stand-in for an HSM'"'"'s own storage).\n'
printf 'preload s = the key cache preload (in ready s, beside the enumeration; servers before 2026-11-27 ran it after ready); RSS0 MiB = server RSS at ready.\n'
printf 'map B/ver = handle map bytes / entries; cache B/k = key cache bytes / keys (preloaded at start; 0: no preload);\n'
printf '  RSS B/key = RSS growth over the random run / keys it touched. srv = base (BASELINE_BIN) or new (this tree).\n'
printf 'finds = C_FindObjects searches since start (the start-up enumeration included; servers before 1356b41 also searched by label for the installation id); refresh = handle refreshes.\n'
