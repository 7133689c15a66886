# shellcheck shell=bash
# Shared by scripts/build-image.sh and scripts/test-containers.sh: find or
# start a Docker engine, and make the debian:bookworm-slim base locally when
# no registry can be reached. Source it; it defines functions only.

# Set to the pid of a dockerd this shell started (empty otherwise).
HSM_KMS_STARTED_DOCKERD_PID=""

engine_answers() {
  command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1
}

engine_help() {
  cat >&2 <<'MSG'
No Docker engine answers (`docker info` failed). To get one on Debian/Ubuntu:
  sudo apt-get update && sudo apt-get install -y docker.io
  sudo dockerd > /tmp/dockerd.log 2>&1 &      # or: sudo systemctl start docker
then re-run. As root, `scripts/build-image.sh --start-engine` does both, and
scripts/test-containers.sh does it on its own.
MSG
}

# Installs docker.io (if dockerd is missing) and starts dockerd in the
# background. Root only. Sets HSM_KMS_STARTED_DOCKERD_PID.
start_engine() {
  if [ "$(id -u)" != 0 ]; then
    echo "starting a Docker engine needs root" >&2
    engine_help
    return 1
  fi
  if ! command -v dockerd >/dev/null 2>&1 || ! command -v docker >/dev/null 2>&1; then
    echo "==> installing docker.io" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io >/dev/null
  fi
  local log=${HSM_KMS_DOCKERD_LOG:-/tmp/hsm-kms-dockerd.log}
  echo "==> starting dockerd (log: $log)" >&2
  dockerd > "$log" 2>&1 &
  HSM_KMS_STARTED_DOCKERD_PID=$!
  local i
  for i in $(seq 1 60); do
    if engine_answers; then
      echo "==> dockerd ready after ${i}s (pid $HSM_KMS_STARTED_DOCKERD_PID)" >&2
      return 0
    fi
    if ! kill -0 "$HSM_KMS_STARTED_DOCKERD_PID" 2>/dev/null; then
      echo "dockerd exited; see $log" >&2
      tail -n 20 "$log" >&2 || true
      HSM_KMS_STARTED_DOCKERD_PID=""
      return 1
    fi
    sleep 1
  done
  echo "dockerd did not answer within 60s; see $log" >&2
  return 1
}

# Stops the dockerd started by start_engine, if any.
stop_started_engine() {
  [ -n "$HSM_KMS_STARTED_DOCKERD_PID" ] || return 0
  echo "==> stopping the dockerd this script started (pid $HSM_KMS_STARTED_DOCKERD_PID)" >&2
  kill "$HSM_KMS_STARTED_DOCKERD_PID" 2>/dev/null || true
  local i
  for i in $(seq 1 30); do
    kill -0 "$HSM_KMS_STARTED_DOCKERD_PID" 2>/dev/null || break
    sleep 1
  done
  HSM_KMS_STARTED_DOCKERD_PID=""
}

# The Debian mirror the host's apt uses (deb822 or one-line sources), else deb.debian.org.
debian_mirror() {
  local m
  m=$(grep -hoE '(URIs:|^deb)[[:space:]]+[^[:space:]]+/debian/?([[:space:]]|$)' \
        /etc/apt/sources.list /etc/apt/sources.list.d/* 2>/dev/null \
      | awk '{print $2}' | head -n 1)
  echo "${m:-http://deb.debian.org/debian}"
}

# Makes `debian:bookworm-slim` when it is not present and cannot be pulled:
# debootstrap --variant=minbase, trimmed like Debian's slim images (no docs,
# man pages, locales, apt caches), then `docker import`. The rootfs tarball
# is cached in $1 (a gitignored dir) so later builds skip debootstrap.
ensure_base_image() {
  local cache=$1 base=debian:bookworm-slim
  if docker image inspect "$base" >/dev/null 2>&1; then
    return 0
  fi
  echo "==> $base not present; trying docker pull" >&2
  if timeout 60 docker pull "$base" >/dev/null 2>&1; then
    return 0
  fi
  local tarball=$cache/debian-bookworm-slim-rootfs.tar
  if [ ! -s "$tarball" ]; then
    if [ "$(id -u)" != 0 ]; then
      echo "cannot pull $base, and making it with debootstrap needs root" >&2
      return 1
    fi
    if ! command -v debootstrap >/dev/null 2>&1; then
      echo "==> installing debootstrap" >&2
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
    fi
    local mirror rootfs
    mirror=$(debian_mirror)
    rootfs=$(mktemp -d /tmp/hsm-kms-rootfs.XXXXXX)
    echo "==> debootstrap --variant=minbase bookworm from $mirror (about a minute)" >&2
    if ! debootstrap --variant=minbase bookworm "$rootfs" "$mirror" > "$cache/debootstrap.log" 2>&1; then
      tail -n 20 "$cache/debootstrap.log" >&2
      rm -rf "$rootfs"
      return 1
    fi
    # What Debian's slim images do: keep docs, man pages and locales out,
    # now and for packages installed later in the image.
    cat > "$rootfs/etc/dpkg/dpkg.cfg.d/docker-slim" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
CFG
    cat > "$rootfs/etc/apt/apt.conf.d/docker-clean" <<'CFG'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
CFG
    find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
    rm -rf "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
           "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
           "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/tmp/*
    mkdir -p "$cache"
    tar --numeric-owner -C "$rootfs" -cf "$tarball.tmp" .
    mv "$tarball.tmp" "$tarball"
    rm -rf "$rootfs"
  else
    echo "==> using cached rootfs $tarball" >&2
  fi
  docker import --change 'CMD ["bash"]' --message "debootstrap --variant=minbase bookworm (hsm-kms build-image.sh)" \
    "$tarball" "$base" >/dev/null
  echo "==> made $base locally: $(docker image inspect -f '{{.Size}}' "$base" | awk '{printf "%.0f MB", $1/1e6}')" >&2
}
