#!/usr/bin/env bash
# The audit chain's cost (issue 12), in one run on one machine, one build:
#   (a) saturated NAVER API 2.0 Encrypt (256-byte plaintexts, signed) under
#       wrk, in interleaved rounds (the order alternates every round), each
#       configuration on its own SoftHSM token and store; medians of req/s,
#       p50 and p99:
#         no-log      activity_log.enabled = false: no record, no chain;
#         per-record  activity log + fsync, audit.seal = "record": one
#                     HMAC-SHA-256 in the token per record (the format
#                     before the batch seal);
#         per-batch   activity log + fsync, audit.seal = "batch" (the
#                     default): SHA-256 links computed by the service, one
#                     in-token HMAC seal per group-commit batch;
#   (b) `hsm-kms audit verify` over each chained store (every record its
#       rounds wrote): records per second and seconds per 100k records (the
#       walk as `audit verify` times it, without process start-up).
#
#   scripts/bench-audit.sh
#
# Environment: ROUNDS (3), HTTP_SECS (10), CONNECTIONS (64), BIN (use this
# hsm-kms binary instead of building; it must be this tree's; the table
# then names it instead of the profile), PROFILE (release; `dev` for a
# quick check of the script itself, figures meaningless). The build's output goes to a log file, shown only when the
# build fails; standard output carries only the results.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
HTTP_SECS="${HTTP_SECS:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
PROFILE="${PROFILE:-release}"
case "$PROFILE" in
release) PROFILE_DIR=release ;;
dev) PROFILE_DIR=debug ;;
*) die "PROFILE must be release or dev" ;;
esac
CONFIGS="no-log per-record per-batch"

apt_install softhsm2 opensc wrk curl openssl
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config
MODULE="$(softhsm_module)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
WORK="$(mktemp -d /tmp/hsm-kms-bench-audit.XXXXXX)"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
        wait "$p" 2>/dev/null || true
    done
    rm -rf "$WORK"
}
trap cleanup EXIT

if [ -n "${BIN:-}" ]; then
    cp "$BIN" "$WORK/hsm-kms"
else
    need_cargo
    log "building hsm-kms ($PROFILE; output in the build log, shown on failure)"
    if ! (cd "$ROOT" && cargo build --profile "$PROFILE" --locked --bin hsm-kms) >"$WORK/build.log" 2>&1; then
        tail -n 40 "$WORK/build.log" >&2
        die "the build failed"
    fi
    cp "$TARGET_DIR/$PROFILE_DIR/hsm-kms" "$WORK/hsm-kms"
fi
HSM_KMS="$WORK/hsm-kms"
BUILD_LABEL="$PROFILE build"
[ -n "${BIN:-}" ] && BUILD_LABEL="binary $BIN"
# A binary without `audit.seal` refuses the configs below at `init`.
"$HSM_KMS" audit --help >/dev/null 2>&1 || die "$HSM_KMS has no audit command"

umask 077
export SOFTHSM2_CONF="$WORK/softhsm2.conf"
mkdir -p "$WORK/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" >"$SOFTHSM2_CONF"
random_secret >"$WORK/user.pin"
for v in $(env | sed -n 's/^\(HSM_KMS_[A-Z0-9_]*\)=.*/\1/p'); do unset "$v"; done
unset HSM_KMS_PIN HSM_KMS_CONFIG

# setup NAME: token, store, config and init for one configuration.
setup() {
    local name="$1" log_on=true seal=batch
    [ "$name" = no-log ] && log_on=false
    [ "$name" = per-record ] && seal=record
    softhsm2-util --init-token --free --label "bench-$name" --so-pin "$(random_secret)" \
        --pin "$(cat "$WORK/user.pin")" >/dev/null
    mkdir -p "$WORK/$name-data"
    cat >"$WORK/$name.toml" <<CONF
[server]
listen = "127.0.0.1:0"
[hsm]
module = "$MODULE"
token_label = "bench-$name"
pin_file = "$WORK/user.pin"
[store]
data_dir = "$WORK/$name-data"
[log]
format = "json"
level = "warn"
[activity_log]
enabled = $log_on
fsync = true
[audit]
seal = "$seal"
CONF
    "$HSM_KMS" --config "$WORK/$name.toml" init --account bench >"$WORK/$name.creds" 2>"$WORK/$name.init.log" \
        || die "init $name: $(cat "$WORK/$name.init.log")"
}
for name in $CONFIGS; do setup "$name"; done

SERVER_PID=""
start_server() { # start_server NAME
    stop_server
    rm -f "$WORK/addr"
    "$HSM_KMS" --config "$WORK/$1.toml" serve --addr-file "$WORK/addr" >/dev/null 2>"$WORK/$1.log" &
    SERVER_PID=$!
    PIDS+=("$SERVER_PID")
    for _ in $(seq 100); do [ -s "$WORK/addr" ] && break; sleep 0.1; done
    [ -s "$WORK/addr" ] || die "server $1 did not start: $(cat "$WORK/$1.log")"
    URL="http://$(cat "$WORK/addr")"
    AK="$(sed -n 's/^access_key=//p' "$WORK/$1.creds")"
    SK="$(sed -n 's/^secret_key=//p' "$WORK/$1.creds")"
}
stop_server() {
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
sign_headers() {
    local ts sig
    ts="$(date +%s%3N)"
    sig="$(printf '%s %s\n%s\n%s' "$1" "$2" "$ts" "$AK" | openssl dgst -sha256 -hmac "$SK" -binary | base64 -w0)"
    printf '%s\n' -H "x-ncp-apigw-timestamp: $ts" -H "x-ncp-iam-access-key: $AK" -H "x-ncp-apigw-signature-v2: $sig"
}
api() {
    local hdrs
    mapfile -t hdrs < <(sign_headers "$1" "$2")
    curl -sS -X "$1" "${hdrs[@]}" -H 'content-type: application/json' --data "$3" "$URL$2"
}
DATA_B64="$(head -c 256 /dev/urandom | base64 -w0)"
declare -A TAG
for name in $CONFIGS; do
    start_server "$name"
    TAG[$name]="$(api POST /kms/v1/keys '{"keyName":"bench-aes","keyType":"AES256","isAutoRotation":false}' \
        | grep -o '"keyTag":"[0-9a-f]*"' | cut -d'"' -f4)"
    [ -n "${TAG[$name]}" ] || die "could not create a key on $name"
done
cat >"$WORK/encrypt.lua" <<LUA
wrk.method = "POST"
wrk.body = [[{"plaintext":"$DATA_B64"}]]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.1f %.3f %.3f %d\n", summary.requests / (summary.duration / 1e6),
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, summary.errors.status))
end
LUA
run_round() { # run_round NAME -> "rps p50 p99"
    local path hdrs line
    start_server "$1"
    path="/kms/v1/keys/${TAG[$1]}/encrypt"
    api POST "$path" "{\"plaintext\":\"$DATA_B64\"}" | grep -q '"code":"SUCCESS"' || die "$1: encrypt failed"
    mapfile -t hdrs < <(sign_headers POST "$path")
    wrk -t1 -c"$CONNECTIONS" -d"${HTTP_SECS}s" --latency -s "$WORK/encrypt.lua" "${hdrs[@]}" "$URL$path" >"$WORK/$1.wrk"
    line="$(grep '^RESULT' "$WORK/$1.wrk")" || die "$1: no result"
    read -r _ rps p50 p99 non2xx <<<"$line"
    [ "$non2xx" -eq 0 ] || die "$1: $non2xx non-2xx answers"
    echo "$rps $p50 $p99"
}
for name in $CONFIGS; do : >"$WORK/$name.txt"; done
for round in $(seq "$ROUNDS"); do
    # Alternate the order, so drift on a shared machine evens out.
    if [ $((round % 2)) -eq 1 ]; then order="$CONFIGS"; else order="per-batch per-record no-log"; fi
    log "round $round/$ROUNDS: $order (${HTTP_SECS}s each, $CONNECTIONS connections)"
    for name in $order; do
        run_round "$name" >>"$WORK/$name.txt"
    done
done
stop_server
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
col() { cut -d' ' -f"$2" "$WORK/$1.txt" | median; }

# (b) verify each chained store; "walked in S s" is the walk alone.
verify_store() { # verify_store NAME -> "records seconds seals"
    local out
    "$HSM_KMS" --config "$WORK/$1.toml" audit verify >"$WORK/$1.verify" 2>&1 \
        || die "audit verify $1: $(cat "$WORK/$1.verify")"
    grep -q '^OK$' "$WORK/$1.verify" || die "audit verify $1: $(cat "$WORK/$1.verify")"
    out="$(sed -n 's/^checked \([0-9]*\) records.*/\1/p' "$WORK/$1.verify")"
    printf '%s %s %s\n' "$out" \
        "$(sed -n 's/^walked in \([0-9.]*\) s$/\1/p' "$WORK/$1.verify")" \
        "$(sed -n 's/.* under \([0-9]*\) in-token seals.*/\1/p' "$WORK/$1.verify")"
}
log "audit verify over both chained stores"
read -r rec_r secs_r _ <<<"$(verify_store per-record)"
read -r rec_b secs_b seals_b <<<"$(verify_store per-batch)"

cpu="$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
row() { # row NAME LABEL
    printf '%-44s %9.0f %8.2f %8.2f   %s\n' "$2" "$(col "$1" 1)" "$(col "$1" 2)" "$(col "$1" 3)" "$(cut -d' ' -f1 "$WORK/$1.txt" | tr '\n' ' ')"
}
ratio() { awk -v a="$(col "$1" 1)" -v b="$(col "$2" 1)" 'BEGIN { printf "%.2fx", a / b }'; }
vrow() { # vrow LABEL RECORDS SECS EXTRA
    awk -v l="$1" -v n="$2" -v s="$3" -v x="$4" 'BEGIN {
        printf "%-44s %9d %8.2f %11.0f %9.2f   %s\n", l, n, s, (s > 0 ? n / s : 0), (n > 0 ? 100000 * s / n : 0), x }'
}
printf '\naudit chain cost: %s cores (%s), load average %s, SoftHSMv2 %s, %s\n' \
    "$(nproc)" "${cpu:-unknown CPU}" "$(cut -d' ' -f1-3 /proc/loadavg)" "$(softhsm2-util --version)" "$BUILD_LABEL"
printf 'NAVER Encrypt 256 B, wrk -t1 -c%s, %s s per round, %s interleaved rounds, medians\n\n' \
    "$CONNECTIONS" "$HTTP_SECS" "$ROUNDS"
printf '%-44s %9s %8s %8s   %s\n' "configuration" "req/s" "p50 ms" "p99 ms" "rounds (req/s)"
row no-log "activity log off (no records)"
row per-record "log + fsync, chain: HMAC per record"
row per-batch "log + fsync, chain: seal per batch"
printf '\nper batch / per record = %s; per batch / log off = %s; per record / log off = %s\n' \
    "$(ratio per-batch per-record)" "$(ratio per-batch no-log)" "$(ratio per-record no-log)"
printf '\n%-44s %9s %8s %11s %9s\n' "audit verify (the walk, with the token)" "records" "s" "records/s" "s/100k"
vrow "per-record store (one token HMAC a record)" "$rec_r" "$secs_r" ""
vrow "per-batch store (links, one token HMAC a seal)" "$rec_b" "$secs_b" \
    "$seals_b seals, $(awk -v n="$rec_b" -v s="$seals_b" 'BEGIN { printf "%.1f", (s > 0 ? n / s : 0) }') records a batch"
