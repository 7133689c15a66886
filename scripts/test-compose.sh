#!/usr/bin/env bash
# docker/compose.yaml's two profiles, brought up and checked for real:
#
#   scripts/test-compose.sh
#
# 1. a Docker engine (the one that answers, else, as root, docker.io
#    installed and dockerd started for this run) and a compose tool
#    (`docker compose`, else Debian's `docker-compose`, installed when
#    missing);
# 2. the images, reused when current: hsm-kms:latest (scripts/build-image.sh:
#    release binary, not rebuilt when the binary, entrypoint and Dockerfile
#    are those it was built from; HSM_KMS_SKIP_BUILD=1 takes the image as it
#    is), hsm-kms-postgres:latest (docker/postgres: Debian 12's PostgreSQL)
#    and hsm-kms-prometheus:latest (docker/prometheus: Debian 12's
#    Prometheus), both on the locally made debian:bookworm-slim base and
#    cached by Docker's layer cache;
# 3. `--profile cluster`: PostgreSQL, hsm (the SoftHSMv2 token exported by
#    p11-kit 0.25.5's `p11-kit server` on a Unix socket in a shared volume),
#    cluster-init (`hsm-kms init` through it), node1-3 on p11-kit-client.so;
#    each node answers a signed NAVER request (GET /kms/v1/keys, 200), and an
#    AES256 key made on node 1 encrypts on node 3 and decrypts on node 2;
#    then that the nodes really go through the server: each node's process
#    has p11-kit-client.so mapped and no SoftHSMv2, and the hsm container
#    runs one `p11-kit remote` per node connection (at least 3); `down -v`;
# 4. `--profile observability`: the hsm-kms service and Prometheus (the
#    image's prometheus.yml with its scrape and evaluation interval set to
#    HSM_KMS_COMPOSE_SCRAPE, default 1s, instead of 15 s, so the check does
#    not wait a minute; the target and rules are the shipped ones); a short
#    NAVER load (HSM_KMS_COMPOSE_LOAD_SECS, default 10: encrypt/decrypt,
#    sign/verify, refused calls), then through Prometheus's HTTP API the
#    target is up and every query of docker/grafana/hsm-kms.json and every
#    expression of docker/prometheus/rules.yml returns data
#    (scripts/lib/prom_queries.py, shared with test-observability.sh); then
#    `down -v`.
# Published ports are random loopback ports. On exit (trap) both compose
# projects are taken down with their volumes, the PIN files this run wrote
# into docker/secrets/ are removed, and a dockerd it started is stopped.
# Prints how long each part took.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# shellcheck source=scripts/lib/docker-engine.sh
. "$ROOT/scripts/lib/docker-engine.sh"

T0=$SECONDS
cd "$ROOT"
export HSM_KMS_IMAGE=${HSM_KMS_IMAGE:-hsm-kms:latest}
export HSM_KMS_POSTGRES_IMAGE=${HSM_KMS_POSTGRES_IMAGE:-hsm-kms-postgres:latest}
export HSM_KMS_PROMETHEUS_IMAGE=${HSM_KMS_PROMETHEUS_IMAGE:-hsm-kms-prometheus:latest}
SCRAPE=${HSM_KMS_COMPOSE_SCRAPE:-1s}
LOAD_SECS=${HSM_KMS_COMPOSE_LOAD_SECS:-10}
PY=/usr/bin/python3
[ "$(id -u)" = 0 ] || die "run as root: the cluster profile's pgpass secret must belong to the containers' uid 10001 (docker/secrets/make-pins.sh)"

apt_install python3 python3-yaml curl
COMPOSE=()
WORK=$(mktemp -d /tmp/hsm-kms-compose.XXXXXX)
SECRETS_MADE=()
PROJECTS=(hsm-kms-cmp-cluster hsm-kms-cmp-obs)
# shellcheck disable=SC2317 # run by the EXIT trap
cleanup() {
    local rc=$? p f
    trap - EXIT INT TERM
    if [ "${#COMPOSE[@]}" -gt 0 ] && engine_answers; then
        for p in "${PROJECTS[@]}"; do
            "${COMPOSE[@]}" -p "$p" -f docker/compose.yaml \
                --profile cluster --profile observability down -v --remove-orphans >/dev/null 2>&1 || true
        done
    fi
    for f in "${SECRETS_MADE[@]}"; do rm -f "$f"; done
    rm -rf "$WORK"
    stop_started_engine
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# 1. Engine and compose tool.
if ! engine_answers; then
    start_engine
fi
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
else
    command -v docker-compose >/dev/null 2>&1 || apt_install docker-compose
    COMPOSE=(docker-compose)
fi
log "engine $(docker version --format '{{.Server.Version}}'), compose: ${COMPOSE[*]} ($("${COMPOSE[@]}" version --short 2>/dev/null || echo '?'))"

# 2. Images.
t=$SECONDS
if [ "${HSM_KMS_SKIP_BUILD:-0}" != 1 ]; then
    scripts/build-image.sh --tag "$HSM_KMS_IMAGE"
fi
docker image inspect "$HSM_KMS_IMAGE" >/dev/null 2>&1 || die "no image $HSM_KMS_IMAGE"
ensure_base_image "$ROOT/.cache/images"
for pair in "postgres $HSM_KMS_POSTGRES_IMAGE" "prometheus $HSM_KMS_PROMETHEUS_IMAGE"; do
    read -r img tag <<<"$pair"
    # Another image named by HSM_KMS_*_IMAGE is compose's to find or pull.
    case "$tag" in hsm-kms-*) ;; *) continue ;; esac
    log "image $tag (docker/$img; Docker's cache makes it a no-op when current)"
    DOCKER_BUILDKIT=0 docker build -q --network "${HSM_KMS_BUILD_NETWORK:-host}" -t "$tag" "docker/$img" >/dev/null
done
T_IMAGES=$((SECONDS - t))

# The compose secrets: kept when present, else written now and removed on exit.
for f in pin so-pin postgres-password pgpass; do
    [ -e "docker/secrets/$f" ] || SECRETS_MADE+=("$ROOT/docker/secrets/$f")
done
docker/secrets/make-pins.sh >/dev/null

# Random loopback ports for everything published; Prometheus's config with
# a short interval (same target and rules as the image's).
export HSM_KMS_PORT=127.0.0.1:0 HSM_KMS_PROMETHEUS_PORT=127.0.0.1:0
export HSM_KMS_NODE1_PORT=127.0.0.1:0 HSM_KMS_NODE2_PORT=127.0.0.1:0 HSM_KMS_NODE3_PORT=127.0.0.1:0
sed -E "s/^(  (scrape|evaluation)_interval:).*/\1 $SCRAPE/" docker/prometheus/prometheus.yml >"$WORK/prometheus.yml"
grep -q "scrape_interval: $SCRAPE" "$WORK/prometheus.yml" || die "could not set the scrape interval in prometheus.yml"
chmod 0644 "$WORK/prometheus.yml"
chmod 0755 "$WORK"
cat >"$WORK/override.yaml" <<YML
# scripts/test-compose.sh: Prometheus with a ${SCRAPE} interval.
services:
  prometheus:
    volumes:
      - $WORK/prometheus.yml:/etc/prometheus/prometheus.yml:ro
YML

# host:port published for SERVICE's PORT in project P.
published() {
    local p=$1 service=$2 port=$3 out
    out=$("${COMPOSE[@]}" -p "$p" -f docker/compose.yaml "${PROFILE[@]}" port "$service" "$port" | tail -n 1)
    [ -n "$out" ] || die "$service: port $port not published"
    printf '%s\n' "${out/0.0.0.0/127.0.0.1}"
}
# wait_ok URL SECONDS: until URL answers 2xx.
wait_ok() {
    local _
    for _ in $(seq 1 $(($2 * 4))); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.25
    done
    return 1
}
# The first credentials a `hsm-kms init` printed in SERVICE's log.
first_credentials() {
    local logs
    logs=$("${COMPOSE[@]}" -p "$1" -f docker/compose.yaml "${PROFILE[@]}" logs --no-color "$2" 2>&1)
    AK=$(sed -n 's/.*access_key=\([A-Za-z0-9]*\).*/\1/p' <<<"$logs" | tail -n 1)
    HSM_KMS_SECRET_KEY=$(sed -n 's/.*secret_key=\([A-Za-z0-9]*\).*/\1/p' <<<"$logs" | tail -n 1)
    if [ -z "$AK" ] || [ -z "$HSM_KMS_SECRET_KEY" ]; then die "$2 printed no first credentials"; fi
    export HSM_KMS_SECRET_KEY
}
dump_logs() {
    "${COMPOSE[@]}" -p "$1" -f docker/compose.yaml "${PROFILE[@]}" logs --no-color --tail 30 >&2 || true
}

# 3. The cluster profile.
t=$SECONDS
P=hsm-kms-cmp-cluster
PROFILE=(--profile cluster)
CC=("${COMPOSE[@]}" -p "$P" -f docker/compose.yaml "${PROFILE[@]}")
"${CC[@]}" config -q
log "cluster profile: up (postgres, hsm, cluster-init, node1-3)"
"${CC[@]}" up -d postgres hsm cluster-init node1 node2 node3 >"$WORK/cluster-up.log" 2>&1 \
    || { cat "$WORK/cluster-up.log" >&2; dump_logs "$P"; die "cluster profile did not come up"; }
NODES=()
for n in node1 node2 node3; do
    addr=$(published "$P" "$n" 8080)
    wait_ok "http://$addr/readyz" 90 || { dump_logs "$P"; die "$n ($addr) not ready within 90 s"; }
    NODES+=("$addr")
done
T_CLUSTER_UP=$((SECONDS - t))
log "nodes ready after ${T_CLUSTER_UP} s: ${NODES[*]}"
first_credentials "$P" cluster-init
$PY scripts/lib/naver_calls.py cluster "$AK" "${NODES[@]}" || { dump_logs "$P"; die "cluster check failed"; }
# Through the server, not around it: what each node's process (pid 1, the
# same uid as `docker exec`) has loaded, and the hsm container's
# `p11-kit remote` processes (one per client connection). `docker exec` on
# the project's containers: a compose call each would cost seconds.
declare -A CID=()
while read -r id svc; do CID[$svc]=$id; done < <(docker ps --filter "label=com.docker.compose.project=$P" \
    --format '{{.ID}} {{.Label "com.docker.compose.service"}}')
for n in node1 node2 node3 hsm; do [ -n "${CID[$n]:-}" ] || die "no running container for $n"; done
for n in node1 node2 node3; do
    maps=$(docker exec "${CID[$n]}" cat /proc/1/maps) || { dump_logs "$P"; die "$n: cannot read its process's maps"; }
    grep -q '/opt/p11-kit-0.25.5/lib/pkcs11/p11-kit-client.so' <<<"$maps" || die "$n has not loaded p11-kit-client.so"
    if grep -q 'libsofthsm2' <<<"$maps"; then die "$n loaded SoftHSMv2 itself"; fi
done
# shellcheck disable=SC2016 # expanded by the container's shell
REMOTES=$(docker exec "${CID[hsm]}" sh -c 'n=0; for f in /proc/[0-9]*/cmdline; do
    tr "\0" " " <"$f" 2>/dev/null | grep -q "^p11-kit-remote " && n=$((n + 1)); done; echo $n')
[ "${REMOTES:-0}" -ge 3 ] || { dump_logs "$P"; die "the hsm container runs ${REMOTES:-no} p11-kit remote processes, want one per node (3)"; }
log "every node loaded p11-kit-client.so (no SoftHSMv2); the hsm container serves them with $REMOTES p11-kit remote processes"
"${CC[@]}" down -v >/dev/null 2>&1
T_CLUSTER=$((SECONDS - t))
log "cluster profile: passed and taken down (${T_CLUSTER} s)"

# 4. The observability profile.
t=$SECONDS
P=hsm-kms-cmp-obs
PROFILE=(-f "$WORK/override.yaml" --profile observability)
OC=("${COMPOSE[@]}" -p "$P" -f docker/compose.yaml "${PROFILE[@]}")
"${OC[@]}" config -q
log "observability profile: up (hsm-kms, prometheus every $SCRAPE)"
"${OC[@]}" up -d hsm-kms prometheus >"$WORK/obs-up.log" 2>&1 \
    || { cat "$WORK/obs-up.log" >&2; dump_logs "$P"; die "observability profile did not come up"; }
KMS=$(published "$P" hsm-kms 8080)
PROM=http://$(published "$P" prometheus 9090)
wait_ok "http://$KMS/readyz" 90 || { dump_logs "$P"; die "hsm-kms ($KMS) not ready within 90 s"; }
wait_ok "$PROM/-/ready" 60 || { dump_logs "$P"; die "prometheus ($PROM) not ready within 60 s"; }
log "hsm-kms $KMS, prometheus $PROM"
first_credentials "$P" hsm-kms
$PY scripts/lib/naver_calls.py load "$AK" "$KMS" "$LOAD_SECS" || { dump_logs "$P"; die "load failed"; }
# Enough scrapes and rule evaluations after the load for rate() and the
# recording rules: three intervals, at least 3 s.
wait_s=$(awk -v s="$SCRAPE" 'BEGIN { v = s + 0; if (s ~ /ms$/) v /= 1000; else if (s ~ /m$/) v *= 60; v *= 3; print (v < 3 ? 3 : v) }')
sleep "$wait_s"
$PY scripts/lib/prom_queries.py "$PROM" docker/grafana/hsm-kms.json docker/prometheus/rules.yml \
    || { dump_logs "$P"; die "a dashboard query or rule expression returned no data through the compose Prometheus"; }
"${OC[@]}" down -v >/dev/null 2>&1
T_OBS=$((SECONDS - t))
log "observability profile: passed and taken down (${T_OBS} s)"

cat <<MSG

==== compose profiles ====
images:        ${T_IMAGES} s ($HSM_KMS_IMAGE, $HSM_KMS_POSTGRES_IMAGE, $HSM_KMS_PROMETHEUS_IMAGE)
cluster:       ${T_CLUSTER} s (up to 3 ready nodes: ${T_CLUSTER_UP} s; signed request on each, node1 -> node3 -> node2 key check; every node through p11-kit server: $REMOTES p11-kit remote)
observability: ${T_OBS} s (${LOAD_SECS} s of load, Prometheus every $SCRAPE; every dashboard query and rule expression returned data)
MSG
echo "test-compose.sh: $((SECONDS - T0)) s"
