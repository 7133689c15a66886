#!/usr/bin/env bash
# The audit chain's cost (issue 12, section 2), in one run on one machine:
#   (a) signed HTTP Encrypt (256-byte plaintexts) with the activity log and
#       fsync on, under wrk, BEFORE (a build of AUDIT_BASE, default fae2537,
#       the commit before the chain) and AFTER (this tree) in alternating
#       rounds, each binary on its own SoftHSM token and store; medians;
#   (b) `hsm-kms audit verify` over the AFTER store (every record the rounds
#       wrote), as records per second and seconds per 100k records.
#
#   scripts/bench-audit.sh
#
# Environment: ROUNDS (3), HTTP_SECS (10), CONNECTIONS (64), AUDIT_BASE.
# Both binaries build in this tree's target dir (release); the base's
# source is a `git archive` under a temp dir, removed at exit; the base's
# binary is what target/release/hsm-kms holds afterwards.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
HTTP_SECS="${HTTP_SECS:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
AUDIT_BASE="${AUDIT_BASE:-fae2537}"

apt_install softhsm2 opensc wrk curl openssl
command -v cc >/dev/null 2>&1 || apt_install build-essential
command -v pkg-config >/dev/null 2>&1 || apt_install pkg-config
MODULE="$(softhsm_module)"
need_cargo
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

log "building AFTER (this tree, release)"
(cd "$ROOT" && cargo build --release --locked --bin hsm-kms)
cp "$TARGET_DIR/release/hsm-kms" "$WORK/hsm-kms-after"
log "building BEFORE ($AUDIT_BASE, release, same target dir)"
mkdir -p "$WORK/base"
git -C "$ROOT" archive "$AUDIT_BASE" | tar -x -C "$WORK/base"
(cd "$WORK/base" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --release --locked --bin hsm-kms)
cp "$TARGET_DIR/release/hsm-kms" "$WORK/hsm-kms-before"
rm -rf "$WORK/base"

umask 077
export SOFTHSM2_CONF="$WORK/softhsm2.conf"
mkdir -p "$WORK/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" >"$SOFTHSM2_CONF"
random_secret >"$WORK/user.pin"
unset HSM_KMS_PIN HSM_KMS_CONFIG

# setup NAME: token, store, config and init for one binary.
setup() {
    local name="$1"
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
enabled = true
fsync = true
CONF
    "$WORK/hsm-kms-$name" --config "$WORK/$name.toml" init --account bench >"$WORK/$name.creds" 2>/dev/null
}
setup before
setup after

SERVER_PID=""
start_server() { # start_server NAME
    stop_server
    rm -f "$WORK/addr"
    "$WORK/hsm-kms-$1" --config "$WORK/$1.toml" serve --addr-file "$WORK/addr" >/dev/null 2>"$WORK/$1.log" &
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
for name in before after; do
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
    log "wrk $1: ${HTTP_SECS}s, $CONNECTIONS connections"
    wrk -t1 -c"$CONNECTIONS" -d"${HTTP_SECS}s" --latency -s "$WORK/encrypt.lua" "${hdrs[@]}" "$URL$path" >"$WORK/$1.wrk"
    line="$(grep '^RESULT' "$WORK/$1.wrk")" || die "$1: no result"
    read -r _ rps p50 p99 non2xx <<<"$line"
    [ "$non2xx" -eq 0 ] || die "$1: $non2xx non-2xx answers"
    echo "$rps $p50 $p99"
}
: >"$WORK/before.txt"
: >"$WORK/after.txt"
for round in $(seq "$ROUNDS"); do
    # Alternate which goes first, so drift on a shared machine evens out.
    if [ $((round % 2)) -eq 1 ]; then order="before after"; else order="after before"; fi
    for name in $order; do
        run_round "$name" >>"$WORK/$name.txt"
    done
done
stop_server
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
col() { cut -d' ' -f"$2" "$WORK/$1.txt" | median; }

# (b) verify over what AFTER wrote.
records="$("$WORK/hsm-kms-after" --config "$WORK/after.toml" audit export --out "$WORK/after.jsonl" 2>&1 >/dev/null | sed -n 's/^exported \([0-9]*\) records.*/\1/p')"
start_ns="$(date +%s%N)"
"$WORK/hsm-kms-after" --config "$WORK/after.toml" audit verify >"$WORK/verify.txt" 2>&1 || die "audit verify: $(cat "$WORK/verify.txt")"
end_ns="$(date +%s%N)"
grep -q '^OK$' "$WORK/verify.txt" || die "audit verify: $(cat "$WORK/verify.txt")"
secs="$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN { print (b - a) / 1e9 }')"

cpu="$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
printf '\naudit chain benchmark: %s cores (%s), SoftHSMv2 %s, wrk -t1 -c%s, %s s per run, %s alternating rounds\n' \
    "$(nproc)" "${cpu:-unknown CPU}" "$(softhsm2-util --version)" "$CONNECTIONS" "$HTTP_SECS" "$ROUNDS"
printf '%-34s %12s %9s %9s   %s\n' "Encrypt 256 B, activity log+fsync" "req/s" "p50 ms" "p99 ms" "rounds (req/s)"
printf '%-34s %12.0f %9.2f %9.2f   %s\n' "before ($AUDIT_BASE, no chain)" "$(col before 1)" "$(col before 2)" "$(col before 3)" "$(cut -d' ' -f1 "$WORK/before.txt" | tr '\n' ' ')"
printf '%-34s %12.0f %9.2f %9.2f   %s\n' "after (chained in the token)" "$(col after 1)" "$(col after 2)" "$(col after 3)" "$(cut -d' ' -f1 "$WORK/after.txt" | tr '\n' ' ')"
printf 'after / before = %.1f%% (medians)\n' "$(awk -v a="$(col after 1)" -v b="$(col before 1)" 'BEGIN { print 100 * a / b }')"
printf 'audit verify: %s records (with their checkpoints) in %.2f s = %.0f records/s, %.2f s per 100k records\n' \
    "$records" "$secs" "$(awk -v n="$records" -v s="$secs" 'BEGIN { print n / s }')" \
    "$(awk -v n="$records" -v s="$secs" 'BEGIN { print 100000 * s / n }')"
