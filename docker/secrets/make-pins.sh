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
# The PostgreSQL image reads its password file as uid 999, not 10001: the
# file is world-readable inside this private directory.
chmod 0444 postgres-password
# The cluster profile's nodes find the store's password in a pgpass file
# (PGPASSFILE). It must be private to the reader (hsm-kms, like libpq,
# ignores a pgpass file that group or others can read), so it is owned by
# uid 10001: run this script as root (or chown the file to the uid the
# containers run as).
if [ ! -s pgpass ]; then
  ( umask 077; printf '*:*:*:hsm_kms:%s\n' "$(cat postgres-password)" > pgpass )
  if [ "$(id -u)" = 0 ]; then
    chown 10001:10001 pgpass; chmod 0400 pgpass
  else
    echo "docker/secrets/pgpass: not root, so not given to uid 10001; the cluster profile needs that" >&2
  fi
  echo "wrote docker/secrets/pgpass"
fi
