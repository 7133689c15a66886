#!/usr/bin/env bash
# A throwaway PostgreSQL cluster for tests and trials: no system service.
#
#   scripts/postgres.sh -- CMD [ARG...]   start a cluster, run CMD with
#                                         HSM_KMS_TEST_PG_URL set to its URL,
#                                         stop and remove the cluster, exit
#                                         with CMD's status
#   scripts/postgres.sh start             start one, print `URL DIR` and leave
#                                         it running (for a shell session)
#   scripts/postgres.sh stop DIR          stop and remove the cluster in DIR
#
# Installs Debian's `postgresql` when its binaries are missing. The cluster
# lives in a temp dir (initdb + pg_ctl), listens on a random loopback port
# only, trusts loopback connections of its superuser `hsm_kms`, and runs as
# the calling user, or as `nobody` when called as root (PostgreSQL refuses
# to run as root). URL: postgres://hsm_kms@127.0.0.1:PORT/postgres.
#
# Environment: HSM_KMS_PG_FSYNC=on keeps fsync on (default off: a throwaway
# cluster need not survive power loss, and tests run faster; benchmarks of
# commit cost set it on).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

pg_bindir() {
    local d
    d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    [ -n "$d" ] && [ -x "$d/initdb" ] && printf '%s\n' "$d"
}

# as_owner CMD...: runs CMD as the cluster's owner.
as_owner() {
    if [ "$(id -u)" -eq 0 ]; then
        runuser -u nobody -- "$@"
    else
        "$@"
    fi
}

pg_start() {
    if [ -z "$(pg_bindir)" ]; then
        apt_install postgresql
    fi
    local bin dir port i
    bin=$(pg_bindir) || die "no PostgreSQL binaries under /usr/lib/postgresql after installing postgresql"
    dir=$(mktemp -d "${TMPDIR:-/tmp}/hsm-kms-pg.XXXXXX")
    chmod 0755 "$dir"
    if [ "$(id -u)" -eq 0 ]; then chown nobody "$dir"; fi
    as_owner "$bin/initdb" -D "$dir/data" -U hsm_kms --auth=trust -E UTF8 --locale=C.UTF-8 \
        >"$dir/initdb.log" 2>&1 || { cat "$dir/initdb.log" >&2; die "initdb failed"; }
    local fsync=${HSM_KMS_PG_FSYNC:-off}
    for i in $(seq 1 20); do
        port=$((20000 + RANDOM % 40000))
        if as_owner "$bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 30 \
            -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c fsync=$fsync -c max_connections=200" \
            start >/dev/null 2>&1; then
            printf 'postgres://hsm_kms@127.0.0.1:%s/postgres %s\n' "$port" "$dir"
            return 0
        fi
        # Most likely the port was taken: try another one.
        as_owner "$bin/pg_ctl" -D "$dir/data" -m immediate stop >/dev/null 2>&1 || true
    done
    cat "$dir/server.log" >&2 || true
    rm -rf "$dir"
    die "PostgreSQL did not start"
}

pg_stop() {
    local dir=$1 bin
    [ -d "$dir/data" ] || die "$dir holds no cluster"
    bin=$(pg_bindir) || die "no PostgreSQL binaries"
    as_owner "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
    rm -rf "$dir"
}

case "${1:-}" in
    start)
        pg_start
        ;;
    stop)
        [ $# -eq 2 ] || die "usage: $0 stop DIR"
        pg_stop "$2"
        ;;
    --)
        shift
        [ $# -ge 1 ] || die "usage: $0 -- CMD [ARG...]"
        read -r url dir < <(pg_start)
        [ -n "${dir:-}" ] || die "PostgreSQL did not start"
        trap 'pg_stop "$dir"' EXIT
        trap 'exit 130' INT TERM
        log "PostgreSQL at $url (cluster in $dir)"
        rc=0
        HSM_KMS_TEST_PG_URL=$url "$@" || rc=$?
        exit "$rc"
        ;;
    *)
        die "usage: $0 -- CMD [ARG...] | start | stop DIR"
        ;;
esac
