#!/usr/bin/env bash
# Builds the release `hsm-kms` binary and the runtime image (default tag
# hsm-kms:latest) from docker/Dockerfile.
#
#   scripts/build-image.sh [--start-engine] [--tag NAME:TAG]
#
# --start-engine  when no Docker engine answers and we are root: install
#                 docker.io if needed and start dockerd (left running).
#
# p11-kit 0.25.5 (the cluster profile's token server and client module) is
# scripts/p11-kit.sh's build for the prefix /opt/p11-kit-0.25.5, made once
# into ${XDG_CACHE_HOME:-$HOME/.cache}/hsm-kms/p11-kit-0.25.5-opt
# (HSM_KMS_IMAGE_P11KIT_DIR) and copied in; with the profile
# hsm-config/p11-kit-client.toml as /etc/hsm-kms/p11-kit-client.toml.
#
# The binary is built on the host and copied in: the image's base is Debian 12
# (bookworm), so the host must have glibc 2.36 or older (Debian 12 does).
# A smoke run (`hsm-kms --version` inside the image) catches a mismatch.
#
# Where `debian:bookworm-slim` is not present and cannot be pulled (no
# registry, as on CI machines here), the base is made locally with
# debootstrap + docker import; the rootfs tarball is cached under .cache/images/.
#
# Network: the image build runs `apt-get install` against Debian's mirror.
# It builds with `--network host` (HSM_KMS_BUILD_NETWORK, default `host`)
# because sandboxed engines often give the default bridge no route out; set
# HSM_KMS_BUILD_NETWORK=default to use the bridge.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=lib/docker-engine.sh
. "$ROOT/scripts/lib/docker-engine.sh"

TAG=${HSM_KMS_IMAGE:-hsm-kms:latest}
START_ENGINE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --start-engine) START_ENGINE=1 ;;
    --tag) TAG=$2; shift ;;
    -h|--help) sed -n '2,28p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

if ! engine_answers; then
  if [ "$START_ENGINE" = 1 ]; then
    start_engine
  else
    engine_help
    exit 1
  fi
fi

CACHE=$ROOT/.cache/images
mkdir -p "$CACHE"
# The base (network and disk bound when made with debootstrap) is made
# while cargo compiles (CPU bound).
ensure_base_image "$CACHE" > "$CACHE/base.log" 2>&1 &
BASE_PID=$!

echo "==> cargo build --release --bin hsm-kms" >&2
t0=$(date +%s)
if ! (cd "$ROOT" && cargo build --release --locked --bin hsm-kms); then
  kill "$BASE_PID" 2>/dev/null || true
  exit 1
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN=$TARGET_DIR/release/hsm-kms
echo "==> binary built in $(( $(date +%s) - t0 ))s" >&2

# p11-kit 0.25.5 for /opt/p11-kit-0.25.5 (cached: instant when built).
P11KIT_STAGE=${HSM_KMS_IMAGE_P11KIT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hsm-kms/p11-kit-0.25.5-opt}
if ! HSM_KMS_P11KIT_DIR=$P11KIT_STAGE HSM_KMS_P11KIT_PREFIX=/opt/p11-kit-0.25.5 \
    "$ROOT/scripts/p11-kit.sh" >/dev/null; then
  kill "$BASE_PID" 2>/dev/null || true
  echo "could not build p11-kit 0.25.5 (scripts/p11-kit.sh)" >&2
  exit 1
fi

if ! wait "$BASE_PID"; then
  cat "$CACHE/base.log" >&2
  echo "could not get debian:bookworm-slim" >&2
  exit 1
fi
cat "$CACHE/base.log" >&2

CTX=$(mktemp -d /tmp/hsm-kms-image-ctx.XXXXXX)
trap 'rm -rf "$CTX"' EXIT
install -m 0755 "$BIN" "$CTX/hsm-kms"
# Line tables are for local debugging; the image does without them.
strip --strip-debug "$CTX/hsm-kms" 2>/dev/null || true
install -m 0755 "$ROOT/docker/entrypoint.sh" "$CTX/entrypoint.sh"
cp "$ROOT/docker/Dockerfile" "$CTX/Dockerfile"
install -m 0644 "$ROOT/hsm-config/p11-kit-client.toml" "$CTX/p11-kit-client.toml"
# What the server, `p11-kit remote` and the client module need: no headers,
# pkg-config files or examples.
P11KIT_SRC=$P11KIT_STAGE/opt/p11-kit-0.25.5
mkdir -p "$CTX/p11-kit/lib/pkcs11"
cp -a "$P11KIT_SRC/bin" "$P11KIT_SRC/libexec" "$CTX/p11-kit/"
cp -a "$P11KIT_SRC"/lib/libp11-kit.so.0* "$CTX/p11-kit/lib/"
cp -a "$P11KIT_SRC/lib/pkcs11/p11-kit-client.so" "$CTX/p11-kit/lib/pkcs11/"

# The image is current when it was built from this very context (binary,
# entrypoint, Dockerfile, p11-kit, the p11-kit profile): then it is kept as
# it is, no build at all.
CTX_SUM=$(cd "$CTX" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum | sha256sum | cut -c1-64)
HAVE_SUM=$(docker image inspect -f '{{index .Config.Labels "org.hsm-kms.context-sha256"}}' "$TAG" 2>/dev/null || true)
if [ "$HAVE_SUM" = "$CTX_SUM" ]; then
  echo "==> $TAG is current (same binary, entrypoint, Dockerfile and p11-kit): not rebuilt" >&2
else
  NETWORK=${HSM_KMS_BUILD_NETWORK:-host}
  echo "==> docker build -t $TAG (network: $NETWORK)" >&2
  t0=$(date +%s)
  # DOCKER_BUILDKIT=0: the legacy builder needs no buildx plugin (Debian's
  # docker.io ships none); the Dockerfile uses no BuildKit-only syntax.
  DOCKER_BUILDKIT=0 docker build --network "$NETWORK" \
    --label "org.opencontainers.image.revision=$(cd "$ROOT" && git rev-parse --short HEAD 2>/dev/null || echo unknown)" \
    --label "org.hsm-kms.context-sha256=$CTX_SUM" \
    -t "$TAG" "$CTX"
  echo "==> image built in $(( $(date +%s) - t0 ))s" >&2
fi

# The binary must load in the image (glibc of the host vs bookworm).
docker run --rm --entrypoint /usr/local/bin/hsm-kms "$TAG" --version >&2
# p11-kit 0.25.5 must run with its own library, not Debian's 0.24.1.
LIBS=$(docker run --rm -e LD_TRACE_LOADED_OBJECTS=1 --entrypoint /opt/p11-kit-0.25.5/bin/p11-kit "$TAG")
grep -q '=> /opt/p11-kit-0.25.5/lib/libp11-kit.so.0' <<<"$LIBS" \
  || { echo "$TAG: /opt/p11-kit-0.25.5/bin/p11-kit does not load its own libp11-kit:" >&2; echo "$LIBS" >&2; exit 1; }
size=$(docker image inspect -f '{{.Size}}' "$TAG")
echo "==> $TAG: $(awk -v s="$size" 'BEGIN{printf "%.1f MB", s/1e6}')" >&2
