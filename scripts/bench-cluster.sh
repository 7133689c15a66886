#!/usr/bin/env bash
# Throughput of 1 and 3 nodes on one token, the token shared directly
# (every node loads SoftHSMv2 on the token directory) or through p11-kit
# remoting (README, "Running several nodes"):
#
#   scripts/bench-cluster.sh
#
# For each round and each configuration (direct x1, direct x3, p11kit x1,
# p11kit x3, interleaved), scripts/cluster.sh starts a fresh cluster
# (PostgreSQL, token, `hsm-kms init`, the nodes; release build), one AES-256
# key and one RSA-2048 key are made, and wrk drives signed AES-256-GCM
# Encrypt (256 bytes) and RSA-2048 Sign on every node at once (one wrk per
# node, CONNECTIONS split between them; the headers are signed just before
# each run: the signature does not cover the body and a timestamp stays
# valid 5 minutes). Prints every round's req/s, the medians, and each
# configuration's ratio to one direct node; exits non-zero on any non-2xx
# answer.
#
# Environment: BENCH_SECS (5) per wrk run, ROUNDS (3), CONNECTIONS (24),
# HSM_KMS_BIN (else a release build). The load generator runs on the same
# cores as the nodes and the token: on a 2-core machine the figures say how
# the work divides, not what more machines would give.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SECS=${BENCH_SECS:-5}
ROUNDS=${ROUNDS:-3}
CONNECTIONS=${CONNECTIONS:-24}

# `--measure MODE NODES`: run by scripts/cluster.sh with the cluster's
# variables; prints "RESULT MODE NODES OP REQ_PER_S" lines.
if [ "${1:-}" = "--measure" ]; then
    mode=$2 nodes=$3
    read -r -a URLS <<<"$HSM_KMS_CLUSTER_URLS"
    work=$HSM_KMS_CLUSTER_DIR
    sign_headers() { # sign_headers METHOD PATH -> wrk/curl -H arguments, one per line
        local ts sig
        ts=$(date +%s%3N)
        sig=$(printf '%s %s\n%s\n%s' "$1" "$2" "$ts" "$HSM_KMS_ACCESS_KEY" |
            openssl dgst -sha256 -hmac "$HSM_KMS_SECRET_KEY" -binary | base64 -w0)
        printf '%s\n' -H "x-ncp-apigw-timestamp: $ts" -H "x-ncp-iam-access-key: $HSM_KMS_ACCESS_KEY" \
            -H "x-ncp-apigw-signature-v2: $sig"
    }
    api() { # api URL METHOD PATH [JSON]
        local hdrs
        mapfile -t hdrs < <(sign_headers "$2" "$3")
        curl -sS -X "$2" "$1$3" "${hdrs[@]}" -H 'content-type: application/json' ${4:+--data "$4"}
    }
    tag() { # tag NAME TYPE
        api "${URLS[0]}" POST /kms/v1/keys "{\"keyName\":\"$1\",\"keyType\":\"$2\",\"isAutoRotation\":false}" |
            grep -o '"keyTag":"[0-9a-f]*"' | cut -d'"' -f4
    }
    AES=$(tag bench-aes AES256)
    RSA=$(tag bench-rsa RSA2048)
    { [ -n "$AES" ] && [ -n "$RSA" ]; } || die "could not create the keys"
    per_node=$(( (CONNECTIONS + nodes - 1) / nodes ))
    for op in encrypt sign; do
        if [ "$op" = encrypt ]; then
            path=/kms/v1/keys/$AES/encrypt
            body="{\"plaintext\":\"$(head -c 256 /dev/urandom | base64 -w0)\"}"
        else
            path=/kms/v1/keys/$RSA/sign
            body='{"data":"YmVuY2g="}'
        fi
        cat >"$work/$op.lua" <<LUA
wrk.method = "POST"
wrk.body = [[$body]]
wrk.headers["Content-Type"] = "application/json"
done = function(summary, latency, requests)
  local errs = summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout
  io.write(string.format("WRK %d %d %d %d\n", summary.requests, summary.duration, summary.errors.status, errs))
end
LUA
        # Every node once, checked: a wrong signature would bench 401s; it
        # also puts the key in each node's cache.
        for u in "${URLS[@]}"; do
            out=$(api "$u" POST "$path" "$body")
            grep -q '"code":"SUCCESS"' <<<"$out" || die "$op on $u: $out"
        done
        mapfile -t hdrs < <(sign_headers POST "$path")
        pids=()
        for i in "${!URLS[@]}"; do
            wrk -t1 -c"$per_node" -d"${SECS}s" -s "$work/$op.lua" "${hdrs[@]}" "${URLS[$i]}$path" \
                >"$work/$op.$i.wrk" 2>&1 &
            pids+=($!)
        done
        for p in "${pids[@]}"; do wait "$p" || die "wrk failed"; done
        total=0
        for i in "${!URLS[@]}"; do
            line=$(grep '^WRK' "$work/$op.$i.wrk") || die "$op on node $((i + 1)): $(cat "$work/$op.$i.wrk")"
            read -r _ reqs usecs non2xx errs <<<"$line"
            [ "$non2xx" -eq 0 ] || die "$op on node $((i + 1)): $non2xx non-2xx answers"
            [ "$errs" -eq 0 ] || log "$op on node $((i + 1)): $errs socket errors"
            total=$(awk -v t="$total" -v r="$reqs" -v u="$usecs" 'BEGIN { printf "%.1f", t + r / (u / 1e6) }')
        done
        echo "RESULT $mode $nodes $op $total"
    done
    exit 0
fi

apt_install wrk curl openssl
if [ -z "${HSM_KMS_BIN:-}" ]; then
    need_cargo
    log "building the release server"
    (cd "$ROOT" && cargo build --release --locked --bin hsm-kms)
    HSM_KMS_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/hsm-kms"
fi
export HSM_KMS_BIN
OUT=$(mktemp)
trap 'rm -f "$OUT"' EXIT
CONFIGS=("direct 1" "direct 3" "p11kit 1" "p11kit 3")
for round in $(seq 1 "$ROUNDS"); do
    for cfg in "${CONFIGS[@]}"; do
        read -r mode nodes <<<"$cfg"
        log "round $round: $mode, $nodes node(s)"
        HSM_KMS_CLUSTER_HSM=$mode HSM_KMS_CLUSTER_NODES=$nodes BENCH_SECS=$SECS CONNECTIONS=$CONNECTIONS \
            "$ROOT/scripts/cluster.sh" -- "$ROOT/scripts/bench-cluster.sh" --measure "$mode" "$nodes" |
            grep '^RESULT' | tee -a "$OUT" >&2
    done
done

median() { sort -n | awk '{ v[NR] = $1 } END { print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2) }'; }
printf '\nhsm-kms nodes on one token: wrk, %s connections split over the nodes, %s s per run, %s interleaved rounds, %s cores (%s), release build\n' \
    "$CONNECTIONS" "$SECS" "$ROUNDS" "$(nproc)" "$(uname -m)"
printf '| sharing | nodes | op | rounds (req/s) | median | x direct, 1 node |\n| --- | ---: | --- | --- | ---: | ---: |\n'
for op in encrypt sign; do
    base=$(awk -v op="$op" '$2 == "direct" && $3 == 1 && $4 == op { print $5 }' "$OUT" | median)
    for cfg in "${CONFIGS[@]}"; do
        read -r mode nodes <<<"$cfg"
        rates=$(awk -v m="$mode" -v n="$nodes" -v op="$op" '$2 == m && $3 == n && $4 == op { printf "%s%.0f", sep, $5; sep = " / " }' "$OUT")
        med=$(awk -v m="$mode" -v n="$nodes" -v op="$op" '$2 == m && $3 == n && $4 == op { print $5 }' "$OUT" | median)
        printf '| %s | %s | %s | %s | %.0f | %.2f |\n' "$mode" "$nodes" "$op" "$rates" "$med" \
            "$(awk -v a="$med" -v b="$base" 'BEGIN { print (b > 0 ? a / b : 0) }')"
    done
done
