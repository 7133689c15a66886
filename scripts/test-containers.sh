#!/usr/bin/env bash
# The container suite, end to end, on a fresh machine:
#   1. a Docker engine: uses the one that answers, else (as root) installs
#      docker.io and starts dockerd for this run only;
#   2. the image: scripts/build-image.sh (release binary; debian:bookworm-slim
#      made locally with debootstrap where no registry can be reached);
#   3. figures: image size, and cold start to ready (`docker run` -> /readyz
#      200) on empty volumes (token init + `hsm-kms init`) and on warm ones;
#   4. the testcontainers harness, tests/containers.rs (#[ignore]d tests,
#      run here with `--run-ignored only`);
#   5. optional: `docker compose` / `docker-compose` config check and a
#      one-shot `up` until healthy, when a compose tool is installed;
#   6. cleanup of what it started: containers and volumes named hsm-kms-ct-*,
#      the compose project, and dockerd if this script started it.
#
# Environment: HSM_KMS_IMAGE (default hsm-kms:latest); HSM_KMS_SKIP_BUILD=1
# to test an image already built.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
# shellcheck source=lib/docker-engine.sh
. "$ROOT/scripts/lib/docker-engine.sh"

export HSM_KMS_IMAGE=${HSM_KMS_IMAGE:-hsm-kms:latest}
T_START=$(date +%s)
COMPOSE_PROJECT=hsm-kms-ct-compose
COMPOSE=()
COMPOSE_SECRETS=()

cleanup() {
  local rc=$?
  if engine_answers; then
    if [ ${#COMPOSE[@]} -gt 0 ]; then
      "${COMPOSE[@]}" -p "$COMPOSE_PROJECT" -f docker/compose.yaml down -v >/dev/null 2>&1 || true
    fi
    local ids
    ids=$(docker ps -aq --filter name=hsm-kms-ct- 2>/dev/null || true)
    [ -z "$ids" ] || docker rm -f -v $ids >/dev/null 2>&1 || true
    ids=$(docker volume ls -q --filter name=hsm-kms-ct- 2>/dev/null || true)
    [ -z "$ids" ] || docker volume rm -f $ids >/dev/null 2>&1 || true
  fi
  for f in "${COMPOSE_SECRETS[@]}"; do rm -f "$f"; done
  stop_started_engine
  exit $rc
}
trap cleanup EXIT

# 1. Engine.
if ! engine_answers; then
  start_engine
fi
echo "==> engine: $(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})')" >&2

# cargo-nextest runs each test in its own process (see tests/common).
if ! cargo nextest --version >/dev/null 2>&1; then
  echo "==> installing cargo-nextest" >&2
  cargo install --locked cargo-nextest
fi

# 2. Image.
if [ "${HSM_KMS_SKIP_BUILD:-0}" != 1 ]; then
  scripts/build-image.sh --tag "$HSM_KMS_IMAGE"
fi
PROBE=${CARGO_TARGET_DIR:-$ROOT/target}/release/hsm-kms

# 3. Figures.
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# Starts a container on the named volumes $1, prints ms from `docker run` to /readyz 200.
cold_start() {
  local vols=$1 name=$2 t0 cid port i
  t0=$(now_ms)
  cid=$(docker run -d --name "$name" -p 127.0.0.1::8080 \
    -e HSM_KMS_PIN=figures-pin -e HSM_KMS_SO_PIN=figures-so-pin \
    -v "$vols-tokens:/var/lib/hsm-kms/tokens" -v "$vols-data:/var/lib/hsm-kms/data" \
    "$HSM_KMS_IMAGE")
  port=$(docker port "$cid" 8080/tcp | head -n 1 | sed 's/.*://')
  for i in $(seq 1 1200); do
    if "$PROBE" healthcheck --url "http://127.0.0.1:$port/readyz" --timeout-secs 1 >/dev/null 2>&1; then
      echo $(( $(now_ms) - t0 ))
      return 0
    fi
    sleep 0.05
  done
  docker logs "$cid" >&2
  echo "container $name not ready within 60s" >&2
  return 1
}
SIZE=$(docker image inspect -f '{{.Size}}' "$HSM_KMS_IMAGE")
SIZE_MB=$(awk -v s="$SIZE" 'BEGIN{printf "%.1f", s/1e6}')
COLD_FIRST=$(cold_start hsm-kms-ct-figures hsm-kms-ct-figures-1)
docker rm -f hsm-kms-ct-figures-1 >/dev/null
COLD_WARM=$(cold_start hsm-kms-ct-figures hsm-kms-ct-figures-2)
docker rm -f hsm-kms-ct-figures-2 >/dev/null
docker volume rm -f hsm-kms-ct-figures-tokens hsm-kms-ct-figures-data >/dev/null

# 4. The harness. --all-features matches the main suite's build, so the
# test binary is reused when .ci/run ran that first.
echo "==> cargo nextest run --test containers --run-ignored only" >&2
cargo nextest run --all-features --test containers --run-ignored only

# 5. Compose, when a compose tool is installed (Debian 12: `docker-compose`).
if docker compose version >/dev/null 2>&1; then
  COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
  COMPOSE=(docker-compose)
fi
COMPOSE_RESULT="skipped (no docker compose / docker-compose installed)"
if [ ${#COMPOSE[@]} -gt 0 ]; then
  for f in pin so-pin postgres-password; do
    [ -e "docker/secrets/$f" ] || COMPOSE_SECRETS+=("$ROOT/docker/secrets/$f")
  done
  docker/secrets/make-pins.sh >/dev/null
  export HSM_KMS_PORT=127.0.0.1:0
  "${COMPOSE[@]}" -p "$COMPOSE_PROJECT" -f docker/compose.yaml config -q
  "${COMPOSE[@]}" -p "$COMPOSE_PROJECT" -f docker/compose.yaml up -d
  cid=$("${COMPOSE[@]}" -p "$COMPOSE_PROJECT" -f docker/compose.yaml ps -q hsm-kms)
  health=starting
  for i in $(seq 1 60); do
    health=$(docker inspect -f '{{.State.Health.Status}}' "$cid")
    [ "$health" = starting ] || break
    sleep 1
  done
  if [ "$health" != healthy ]; then
    "${COMPOSE[@]}" -p "$COMPOSE_PROJECT" -f docker/compose.yaml logs >&2
    echo "compose service is $health" >&2
    exit 1
  fi
  COMPOSE_RESULT="ok (${COMPOSE[*]}: config valid, service healthy)"
fi

cat <<MSG

==== container suite figures ====
image:               $HSM_KMS_IMAGE, $SIZE_MB MB
cold start to ready: ${COLD_FIRST} ms on empty volumes (token init + hsm-kms init)
                     ${COLD_WARM} ms on existing volumes
compose:             $COMPOSE_RESULT
suite wall time:     $(( $(date +%s) - T_START )) s
MSG
