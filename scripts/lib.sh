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

# loadgen_site WORK NAME MODULE TARGET: what hsm-kms-loadgen runs against, as
# an operator makes it: a throwaway token "hsm-kms-NAME" and a config under
# WORK (loopback, JSON logs at warn, token sets unbounded enough for a long
# run), an account NAME with an API key, an NHN project NAME with an appkey,
# a User Access Key and the key store "NAME-store". Sets CONFIG, AK and
# UAK_ID, and exports SOAK_SECRET_KEY, SOAK_API_KEY, SOAK_APPKEY and
# SOAK_UAK_SECRET for the load generator (never on its command line).
loadgen_site() {
    local work="$1" name="$2" module="$3" target="$4"
    throwaway_token "$work" "hsm-kms-$name"
    CONFIG="$work/hsm-kms.toml"
    cat >"$CONFIG" <<CONF
[server]
listen = "127.0.0.1:0"
[hsm]
module = "$module"
token_label = "hsm-kms-$name"
pin_file = "$work/user.pin"
[store]
data_dir = "$work/data"
[log]
format = "json"
level = "warn"
[limits]
# Token sets are created all through a long run.
max_token_sets_per_key = 100000
CONF
    unset HSM_KMS_PIN HSM_KMS_CONFIG
    local kms=("$target/hsm-kms" --config "$CONFIG")
    val() { sed -n "s/^$1=//p"; }
    "${kms[@]}" init --account "$name" >"$work/creds" 2>/dev/null
    AK="$(val access_key <"$work/creds")"
    SOAK_SECRET_KEY="$(val secret_key <"$work/creds")"
    SOAK_API_KEY="$("${kms[@]}" admin create-api-key --account "$name" | val api_key)"
    "${kms[@]}" admin nhn create-project "$name" >/dev/null
    SOAK_APPKEY="$("${kms[@]}" admin nhn create-appkey --project "$name" | val appkey)"
    "${kms[@]}" admin nhn create-user-access-key --project "$name" >"$work/uak" 2>/dev/null
    UAK_ID="$(val user_access_key <"$work/uak")"
    SOAK_UAK_SECRET="$(val secret_access_key <"$work/uak")"
    "${kms[@]}" admin nhn create-key-store --project "$name" --name "$name-store" >/dev/null
    [ -n "$AK" ] && [ -n "$SOAK_SECRET_KEY" ] && [ -n "$SOAK_API_KEY" ] && [ -n "$SOAK_APPKEY" ] \
        && [ -n "$UAK_ID" ] && [ -n "$SOAK_UAK_SECRET" ] || die "could not create the load generator's credentials"
    export SOAK_SECRET_KEY SOAK_API_KEY SOAK_APPKEY SOAK_UAK_SECRET
}

# bench_setup BIN_DIR CONFIG DIR MODULE LABEL MAX_KEYS: writes the config the
# scale and creation benchmarks serve from (token LABEL of MODULE, PIN in
# DIR/user.pin, SQLite under DIR/data, MAX_KEYS keys per account, warnings
# only) to CONFIG and runs `hsm-kms init --account bench` on it.
bench_setup() {
    local bin="$1" config="$2" dir="$3" module="$4" label="$5" max="$6"
    cat >"$config" <<CONF
[server]
listen = "127.0.0.1:0"
[hsm]
module = "$module"
token_label = "$label"
pin_file = "$dir/user.pin"
[store]
data_dir = "$dir/data"
[limits]
max_keys_per_account = $max
[log]
format = "json"
level = "warn"
CONF
    unset HSM_KMS_PIN HSM_KMS_CONFIG
    "$bin/hsm-kms" --config "$config" init --account bench >/dev/null 2>"$dir/init.log" \
        || die "init: $(cat "$dir/init.log")"
}
