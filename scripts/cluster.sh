#!/usr/bin/env bash
# Three hsm-kms nodes on one token and one PostgreSQL store, on loopback:
#
#   scripts/cluster.sh                 start everything, print each node's URL
#                                      and a signed request, serve until Ctrl-C
#   scripts/cluster.sh -- CMD [ARG...] the same, run CMD with the cluster's
#                                      variables set (below), then stop; exits
#                                      with CMD's status
#
# What runs (all under one temp dir, removed on exit with everything it
# started):
# - PostgreSQL: a throwaway cluster from scripts/postgres.sh (random port);
# - the token: one SoftHSMv2 token with a random user PIN, shared through
#   `p11-kit server` on a Unix socket, each node loading p11-kit-client.so
#   with hsm-config/p11-kit-client.toml (p11-kit 0.25.5, built once by
#   scripts/p11-kit.sh). HSM_KMS_CLUSTER_HSM=direct makes every node load
#   SoftHSMv2 itself on the one token directory instead (README, "Running
#   several nodes", says which to use when);
# - `hsm-kms init` once, then nodes 1-3 on 127.0.0.1:PORT, PORT+1, PORT+2
#   (HSM_KMS_CLUSTER_PORT, default 18081; HSM_KMS_CLUSTER_NODES, default 3).
#
# For `--`: HSM_KMS_CLUSTER_URLS (the nodes' URLs, space-separated),
# HSM_KMS_ACCESS_KEY, HSM_KMS_SECRET_KEY, HSM_KMS_CLUSTER_DIR, and
# HSM_KMS_STORE_URL / HSM_KMS_HSM_* / P11_KIT_SERVER_ADDRESS / SOFTHSM2_CONF
# as the nodes have them (so `target/release/hsm-kms admin ...` works).
#
# The server binary: HSM_KMS_BIN, else a release build made here.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODE=${HSM_KMS_CLUSTER_HSM:-p11kit}
case "$MODE" in p11kit | direct) ;; *) die "HSM_KMS_CLUSTER_HSM must be p11kit or direct" ;; esac
PORT=${HSM_KMS_CLUSTER_PORT:-18081}
NODES=${HSM_KMS_CLUSTER_NODES:-3}
RUN=()
if [ "${1:-}" = "--" ]; then
    shift
    [ $# -ge 1 ] || die "usage: $0 [-- CMD [ARG...]]"
    RUN=("$@")
elif [ $# -gt 0 ]; then
    die "usage: $0 [-- CMD [ARG...]]"
fi

apt_install softhsm2 opensc openssl curl
if [ -n "${HSM_KMS_BIN:-}" ]; then
    BIN=$HSM_KMS_BIN
else
    need_cargo
    log "building the release server"
    (cd "$ROOT" && cargo build --release --locked --bin hsm-kms)
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/hsm-kms"
fi
[ -x "$BIN" ] || die "no server binary at $BIN"
if [ "$MODE" = p11kit ]; then
    P11KIT_ENV=$("$ROOT/scripts/p11-kit.sh")
    P11_KIT_BIN=$(printf '%s\n' "$P11KIT_ENV" | sed -n 's/^P11_KIT_BIN=//p')
    P11_KIT_CLIENT_MODULE=$(printf '%s\n' "$P11KIT_ENV" | sed -n 's/^P11_KIT_CLIENT_MODULE=//p')
fi

DIR=$(mktemp -d "${TMPDIR:-/tmp}/hsm-kms-cluster.XXXXXX")
chmod 0700 "$DIR"
PG_DIR=""
P11KIT_PID=""
NODE_PIDS=()
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local rc=$? pid
    trap - EXIT INT TERM
    for pid in "${NODE_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${NODE_PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    # The p11-kit server and its per-connection `p11-kit remote` children.
    [ -z "$P11KIT_PID" ] || kill -TERM -- "-$P11KIT_PID" 2>/dev/null || true
    [ -z "$P11KIT_PID" ] || wait "$P11KIT_PID" 2>/dev/null || true
    [ -z "$PG_DIR" ] || "$ROOT/scripts/postgres.sh" stop "$PG_DIR" || true
    rm -rf "$DIR"
    log "cluster stopped and removed"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# The store.
read -r PG_URL PG_DIR < <("$ROOT/scripts/postgres.sh" start)
[ -n "${PG_DIR:-}" ] || die "PostgreSQL did not start"
log "PostgreSQL at $PG_URL"

# The token: random PINs, kept only under $DIR (0600).
(
    umask 077
    random_secret >"$DIR/user.pin"
    random_secret >"$DIR/so.pin"
)
mkdir -p "$DIR/tokens"
printf 'directories.tokendir = %s\nobjectstore.backend = file\nlog.level = ERROR\n' "$DIR/tokens" \
    >"$DIR/softhsm2.conf"
export SOFTHSM2_CONF=$DIR/softhsm2.conf
softhsm2-util --init-token --free --label hsm-kms \
    --so-pin "$(cat "$DIR/so.pin")" --pin "$(cat "$DIR/user.pin")" >/dev/null

# What every node (and `init`) gets.
for v in $(env | sed -n 's/^\(HSM_KMS_[A-Z0-9_]*\)=.*/\1/p'); do
    case "$v" in HSM_KMS_CLUSTER_* | HSM_KMS_BIN) ;; *) unset "$v" ;; esac
done
export HSM_KMS_STORE_URL=$PG_URL
export HSM_KMS_HSM_TOKEN_LABEL=hsm-kms
export HSM_KMS_HSM_PIN_FILE=$DIR/user.pin
export HSM_KMS_LOG_FORMAT=text HSM_KMS_LOG_LEVEL=${HSM_KMS_CLUSTER_LOG_LEVEL:-warn}
CONFIG=()
if [ "$MODE" = p11kit ]; then
    # Its own session, so that the listener and every `p11-kit remote` it
    # forks stop together.
    setsid "$P11_KIT_BIN" server --foreground --provider "$(softhsm_module)" \
        --name "$DIR/p11-kit.sock" "pkcs11:token=hsm-kms" >/dev/null 2>"$DIR/p11-kit.log" &
    P11KIT_PID=$!
    for _ in $(seq 1 100); do
        [ -S "$DIR/p11-kit.sock" ] && break
        kill -0 "$P11KIT_PID" 2>/dev/null || { cat "$DIR/p11-kit.log" >&2; die "p11-kit server exited"; }
        sleep 0.1
    done
    [ -S "$DIR/p11-kit.sock" ] || die "p11-kit server did not listen on $DIR/p11-kit.sock"
    export P11_KIT_SERVER_ADDRESS=unix:path=$DIR/p11-kit.sock
    export HSM_KMS_HSM_MODULE=$P11_KIT_CLIENT_MODULE
    # The shipped profile, with this build's module path (the variable wins).
    CONFIG=(--config "$ROOT/hsm-config/p11-kit-client.toml")
    # The nodes must not reach the token's files themselves.
    unset SOFTHSM2_CONF
    log "token shared by p11-kit server ($P11_KIT_SERVER_ADDRESS)"
else
    export HSM_KMS_HSM_MODULE
    HSM_KMS_HSM_MODULE=$(softhsm_module)
    log "token shared as SoftHSMv2's directory $DIR/tokens (every node loads SoftHSMv2)"
fi

(umask 077 && "$BIN" "${CONFIG[@]}" init >"$DIR/credentials" 2>"$DIR/init.log") ||
    { cat "$DIR/init.log" >&2; die "hsm-kms init failed"; }
AK=$(sed -n 's/^access_key=//p' "$DIR/credentials")
SK=$(sed -n 's/^secret_key=//p' "$DIR/credentials")
{ [ -n "$AK" ] && [ -n "$SK" ]; } || die "hsm-kms init printed no credentials"

# One after the other: several SoftHSMv2 instances opening the token at the
# same moment were seen failing (C_GetTokenInfo: CKR_GENERAL_ERROR through
# p11-kit, 1 start in about 20); see the README, "Running several nodes".
URLS=()
for i in $(seq 1 "$NODES"); do
    port=$((PORT + i - 1))
    HSM_KMS_SERVER_LISTEN=127.0.0.1:$port \
        "$BIN" "${CONFIG[@]}" serve --addr-file "$DIR/node$i.addr" >/dev/null 2>"$DIR/node$i.log" &
    NODE_PIDS+=($!)
    URLS+=("http://127.0.0.1:$port")
    for _ in $(seq 1 300); do
        [ -s "$DIR/node$i.addr" ] && break
        kill -0 "${NODE_PIDS[$((i - 1))]}" 2>/dev/null ||
            { cat "$DIR/node$i.log" >&2; die "node $i exited (port $((PORT + i - 1)) taken? set HSM_KMS_CLUSTER_PORT)"; }
        sleep 0.1
    done
    [ -s "$DIR/node$i.addr" ] || die "node $i did not listen within 30 s"
done

SECOND=${URLS[1]:-${URLS[0]}}
cat <<EOF

hsm-kms cluster: $NODES nodes, one token ($MODE), one PostgreSQL store
$(for i in $(seq 1 "$NODES"); do printf '  node %s  %s   (log %s)\n' "$i" "${URLS[$((i - 1))]}" "$DIR/node$i.log"; done)
  store   $PG_URL
  access key  $AK
  secret key  $SK

A signed request (NCP signature v2), to any node:

  AK=$AK SK=$SK URL=${URLS[0]}
  ncp() {  # ncp METHOD PATH [JSON]
    local ts sig; ts=\$(date +%s%3N)
    sig=\$(printf '%s %s\\n%s\\n%s' "\$1" "\$2" "\$ts" "\$AK" | openssl dgst -sha256 -hmac "\$SK" -binary | base64 -w0)
    curl -s -X "\$1" "\$URL\$2" -H "x-ncp-apigw-timestamp: \$ts" -H "x-ncp-iam-access-key: \$AK" \\
         -H "x-ncp-apigw-signature-v2: \$sig" -H 'content-type: application/json' \${3:+--data "\$3"}
  }
  ncp POST /kms/v1/keys '{"keyName":"demo-key","keyType":"AES256"}'
  URL=$SECOND ncp POST /kms/v1/keys/TAG/encrypt '{"plaintext":"aGVsbG8="}'   # TAG: keyTag above

EOF

export HSM_KMS_CLUSTER_URLS="${URLS[*]}" HSM_KMS_ACCESS_KEY=$AK HSM_KMS_SECRET_KEY=$SK HSM_KMS_CLUSTER_DIR=$DIR
if [ "${#RUN[@]}" -gt 0 ]; then
    rc=0
    "${RUN[@]}" || rc=$?
    exit "$rc"
fi
log "serving; Ctrl-C stops every node, the token server and PostgreSQL, and removes $DIR"
# Until a node exits or we are interrupted.
wait -n "${NODE_PIDS[@]}" || true
die "a node exited; its log: $(for i in $(seq 1 "$NODES"); do kill -0 "${NODE_PIDS[$((i - 1))]}" 2>/dev/null || tail -n 5 "$DIR/node$i.log"; done)"
