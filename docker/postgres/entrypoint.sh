#!/bin/sh
# PostgreSQL entrypoint of docker/postgres/Dockerfile.
#
# First start (no $PGDATA/PG_VERSION): initdb with the superuser
# $POSTGRES_USER (default postgres) and the password of
# $POSTGRES_PASSWORD_FILE (or $POSTGRES_PASSWORD), the database
# $POSTGRES_DB (default: the user's name), password (SCRAM) authentication
# for every connection, listening on all the container's addresses. Then
# `exec postgres`.
set -eu

say() { printf 'postgres-entrypoint: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

: "${PGDATA:=/var/lib/postgresql/data}"
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  user=${POSTGRES_USER:-postgres}
  db=${POSTGRES_DB:-$user}
  if [ -n "${POSTGRES_PASSWORD_FILE:-}" ]; then
    [ -r "$POSTGRES_PASSWORD_FILE" ] || die "cannot read POSTGRES_PASSWORD_FILE $POSTGRES_PASSWORD_FILE as uid $(id -u)"
    pw=$(head -n 1 "$POSTGRES_PASSWORD_FILE" | tr -d '\r\n')
  else
    pw=${POSTGRES_PASSWORD:-}
  fi
  [ -n "$pw" ] || die "no password: set POSTGRES_PASSWORD_FILE or POSTGRES_PASSWORD"
  say "empty $PGDATA: initdb (superuser $user, database $db)"
  pwfile=$(mktemp)
  printf '%s\n' "$pw" > "$pwfile"
  unset pw POSTGRES_PASSWORD
  initdb -D "$PGDATA" -U "$user" --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 \
    --auth-local=scram-sha-256 --auth-host=scram-sha-256 >/dev/null \
    || { rm -f "$pwfile"; die "initdb failed"; }
  rm -f "$pwfile"
  printf "host all all all scram-sha-256\n" >> "$PGDATA/pg_hba.conf"
  printf "listen_addresses = '*'\n" >> "$PGDATA/postgresql.conf"
  if [ "$db" != postgres ]; then
    echo "CREATE DATABASE \"$db\" OWNER \"$user\"" \
      | postgres --single -D "$PGDATA" -c listen_addresses= postgres >/dev/null \
      || die "could not create database $db"
  fi
fi
exec postgres -D "$PGDATA" "$@"
