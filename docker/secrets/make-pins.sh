#!/bin/sh
# Writes random PINs for docker/compose.yaml next to this script, unless they
# exist. The directory is private to you (0700); the files are made readable
# by the container's hsm-kms user (uid 10001): owned by it when run as root,
# else world-readable inside the private directory.
set -eu
cd "$(dirname "$0")"
chmod 0700 .
for f in pin so-pin postgres-password; do
  [ -s "$f" ] && continue
  ( umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$f" )
  if [ "$(id -u)" = 0 ]; then
    chown 10001:10001 "$f"; chmod 0400 "$f"
  else
    chmod 0444 "$f"
  fi
  echo "wrote docker/secrets/$f"
done
