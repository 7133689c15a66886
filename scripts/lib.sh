# Shared helpers of the scripts in this folder; sourced, not run.
# shellcheck shell=bash

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# Runs a command as root: directly when we are root, else through sudo.
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        die "need root to run: $* (install sudo or run as root)"
    fi
}

APT_UPDATED=0
# apt_install PKG...: installs the Debian packages that are not installed yet.
apt_install() {
    local missing=() p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
    done
    [ "${#missing[@]}" -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "missing packages ${missing[*]} and no apt-get to install them"
    log "installing ${missing[*]}"
    if [ "$APT_UPDATED" -eq 0 ]; then
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
        APT_UPDATED=1
    fi
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
}

# Checks that cargo is there; Debian's own Rust is too old for this crate.
need_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "$HOME/.cargo/bin/cargo" ]; then
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install Rust 1.85 or newer (https://rustup.rs), then re-run"
}

# The SoftHSMv2 module: PKCS11_MODULE, else Debian's path.
softhsm_module() {
    printf '%s\n' "${PKCS11_MODULE:-/usr/lib/softhsm/libsofthsm2.so}"
}

# has_token LABEL: true when the SoftHSM of $SOFTHSM2_CONF has a token labelled LABEL
# (with $SOFTHSM2_UTIL, default softhsm2-util: a db-backend token needs the
# softhsm2-util of scripts/softhsm-db.sh).
has_token() {
    "${SOFTHSM2_UTIL:-softhsm2-util}" --show-slots 2>/dev/null | awk -v want="$1" '
        $1 == "Label:" { sub(/^[ \t]*Label:[ \t]*/, ""); sub(/[ \t]+$/, ""); if ($0 == want) found = 1 }
        END { exit found ? 0 : 1 }'
}

# random_secret: 32 hex characters from the kernel's generator.
random_secret() {
    od -An -tx1 -N16 /dev/urandom | tr -d ' \n'
}

# throwaway_token DIR LABEL [BACKEND]: a SoftHSM config (object store
# BACKEND, default file) and a fresh token LABEL under DIR (tokens/, data/,
# user.pin; umask 077), with SOFTHSM2_CONF exported; the benchmark and soak
# scripts' token. $SOFTHSM2_UTIL as for has_token.
throwaway_token() {
    local dir="$1" label="$2" backend="${3:-file}"
    umask 077
    mkdir -p "$dir/tokens" "$dir/data"
    export SOFTHSM2_CONF="$dir/softhsm2.conf"
    printf 'directories.tokendir = %s\nobjectstore.backend = %s\nlog.level = ERROR\n' "$dir/tokens" "$backend" >"$SOFTHSM2_CONF"
    random_secret >"$dir/user.pin"
    "${SOFTHSM2_UTIL:-softhsm2-util}" --init-token --free --label "$label" --so-pin "$(random_secret)" \
        --pin "$(cat "$dir/user.pin")" >/dev/null
}
