#!/usr/bin/env bash
# The audit chain's cost (issue 12, section 2), in one run on one machine:
#   (a) signed HTTP Encrypt (256-byte plaintexts, NAVER API 2.0) under wrk,
#       in alternating rounds, each configuration on its own SoftHSM token
#       and store; medians:
#         before   a build of AUDIT_BASE (default d160313^, main just before
#                  the merge that brought the chain: the same activity log
#                  with fsync, records unchained), activity log + fsync on;
#         after    this tree: every record chained in the token, activity
#                  log + fsync on (the defaults);
#         no-log   this tree with activity_log.enabled = false (no record,
#                  no chain), for scale: what the log itself costs;
#   (b) `hsm-kms audit verify` over the AFTER store (every record its rounds
#       wrote), as records per second and seconds per 100k records.
# The chain cannot be switched off while the activity log is on (every
# record is chained), hence the parent commit's build as "before".
#
#   scripts/bench-audit.sh
#
# Environment: ROUNDS (3), HTTP_SECS (10), CONNECTIONS (64), AUDIT_BASE,
# BEFORE_BIN / AFTER_BIN (use these hsm-kms binaries instead of building;
# AFTER_BIN must be this tree's), PROFILE (release; `dev` for a quick check
# of the script itself, figures meaningless). Both binaries build in this
# tree's target dir; the base's source is a `git archive` under a temp dir,
# removed at exit; the base's binary is what target/<profile>/hsm-kms holds
# afterwards (run `cargo build --release` again before other benchmarks).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ROUNDS="${ROUNDS:-3}"
HTTP_SECS="${HTTP_SECS:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
AUDIT_BASE="${AUDIT_BASE:-d160313^}"
PROFILE="${PROFILE:-release}"
case "$PROFILE" in
release) PROFILE_DIR=release ;;
dev) PROFILE_DIR=debug ;;
*) die "PROFILE must be release or dev" ;;
esac
CONFIGS="before after no-log"

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

BASE_COMMIT="$(git -C "$ROOT" rev-parse --short "$AUDIT_BASE")" || die "no commit $AUDIT_BASE"
if [ -n "${AFTER_BIN:-}" ]; then
    cp "$AFTER_BIN" "$WORK/hsm-kms-after"
else
    log "building AFTER (this tree, $PROFILE)"
    (cd "$ROOT" && cargo build --profile "$PROFILE" --locked --bin hsm-kms)
    cp "$TARGET_DIR/$PROFILE_DIR/hsm-kms" "$WORK/hsm-kms-after"
fi
cp "$WORK/hsm-kms-after" "$WORK/hsm-kms-no-log"
if [ -n "${BEFORE_BIN:-}" ]; then
    cp "$BEFORE_BIN" "$WORK/hsm-kms-before"
else
    log "building BEFORE ($AUDIT_BASE = $BASE_COMMIT, $PROFILE, same target dir)"
    mkdir -p "$WORK/base"
    git -C "$ROOT" archive "$BASE_COMMIT" | tar -x -C "$WORK/base"
    (cd "$WORK/base" && CARGO_TARGET_DIR="$TARGET_DIR" cargo build --profile "$PROFILE" --locked --bin hsm-kms)
    cp "$TARGET_DIR/$PROFILE_DIR/hsm-kms" "$WORK/hsm-kms-before"
    rm -rf "$WORK/base"
fi
# The binaries must be what they claim: only AFTER knows `audit verify`.
"$WORK/hsm-kms-after" audit --help >/dev/null 2>&1 || die "the AFTER binary has no audit command"
! "$WORK/hsm-kms-before" audit --help >/dev/null 2>&1 || die "the BEFORE binary already has the audit chain"

umask 077
export SOFTHSM2_CONF="$WORK/softhsm2.conf"
mkdir -p "$WORK/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$WORK/tokens" >"$SOFTHSM2_CONF"
random_secret >"$WORK/user.pin"
unset HSM_KMS_PIN HSM_KMS_CONFIG

# setup NAME: token, store, config and init for one configuration.
setup() {
    local name="$1" log_on=true
    [ "$name" = no-log ] && log_on=false
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
CONF
    "$WORK/hsm-kms-$name" --config "$WORK/$name.toml" init --account bench >"$WORK/$name.creds" 2>/dev/null
}
for name in $CONFIGS; do setup "$name"; done

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
    log "wrk $1: ${HTTP_SECS}s, $CONNECTIONS connections"
    wrk -t1 -c"$CONNECTIONS" -d"${HTTP_SECS}s" --latency -s "$WORK/encrypt.lua" "${hdrs[@]}" "$URL$path" >"$WORK/$1.wrk"
    line="$(grep '^RESULT' "$WORK/$1.wrk")" || die "$1: no result"
    read -r _ rps p50 p99 non2xx <<<"$line"
    [ "$non2xx" -eq 0 ] || die "$1: $non2xx non-2xx answers"
    echo "$rps $p50 $p99"
}
for name in $CONFIGS; do : >"$WORK/$name.txt"; done
for round in $(seq "$ROUNDS"); do
    # Alternate the order, so drift on a shared machine evens out.
    if [ $((round % 2)) -eq 1 ]; then order="before after no-log"; else order="no-log after before"; fi
    for name in $order; do
        run_round "$name" >>"$WORK/$name.txt"
    done
done
stop_server
median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
col() { cut -d' ' -f"$2" "$WORK/$1.txt" | median; }

# (b) verify over what AFTER wrote.
records="$("$WORK/hsm-kms-after" --config "$WORK/after.toml" audit export --out "$WORK/after.jsonl" 2>&1 >/dev/null | sed -n 's/^exported \([0-9]*\) records.*/\1/p')"
[ -n "$records" ] && [ "$records" -gt 0 ] || die "audit export counted no records"
start_ns="$(date +%s%N)"
"$WORK/hsm-kms-after" --config "$WORK/after.toml" audit verify >"$WORK/verify.txt" 2>&1 || die "audit verify: $(cat "$WORK/verify.txt")"
end_ns="$(date +%s%N)"
grep -q '^OK$' "$WORK/verify.txt" || die "audit verify: $(cat "$WORK/verify.txt")"
secs="$(awk -v a="$start_ns" -v b="$end_ns" 'BEGIN { print (b - a) / 1e9 }')"

cpu="$(awk -F': ' '/model name/ { print $2; exit }' /proc/cpuinfo)"
row() { # row NAME LABEL
    printf '%-40s %10.0f %9.2f %9.2f   %s\n' "$2" "$(col "$1" 1)" "$(col "$1" 2)" "$(col "$1" 3)" "$(cut -d' ' -f1 "$WORK/$1.txt" | tr '\n' ' ')"
}
ratio() { awk -v a="$(col "$1" 1)" -v b="$(col "$2" 1)" 'BEGIN { printf "%.1f%%", 100 * a / b }'; }
printf '\naudit chain benchmark: %s cores (%s), SoftHSMv2 %s, %s build, wrk -t1 -c%s, %s s per run, %s alternating rounds\n' \
    "$(nproc)" "${cpu:-unknown CPU}" "$(softhsm2-util --version)" "$PROFILE" "$CONNECTIONS" "$HTTP_SECS" "$ROUNDS"
printf '%-40s %10s %9s %9s   %s\n' "NAVER Encrypt 256 B" "req/s" "p50 ms" "p99 ms" "rounds (req/s)"
row before "before ($BASE_COMMIT): log+fsync, unchained"
row after "after: log+fsync, chained in the token"
row no-log "after, activity log off (no records)"
printf 'chained / unchained = %s; chained / no log = %s (medians of req/s)\n' "$(ratio after before)" "$(ratio after no-log)"
printf 'audit verify: %s records (with their checkpoints) in %.2f s = %.0f records/s, %.2f s per 100k records\n' \
    "$records" "$secs" "$(awk -v n="$records" -v s="$secs" 'BEGIN { print n / s }')" \
    "$(awk -v n="$records" -v s="$secs" 'BEGIN { print 100000 * s / n }')"
