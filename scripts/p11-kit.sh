#!/usr/bin/env bash
# Builds p11-kit 0.25.5 (server and client module) from Debian trixie's
# source package into a cache dir, once, and prints where they are:
#
#   eval "$(scripts/p11-kit.sh)"
#   # P11_KIT_BIN=.../bin/p11-kit
#   # P11_KIT_CLIENT_MODULE=.../lib/pkcs11/p11-kit-client.so
#
# Why not Debian 12's own p11-kit (0.24.1): its RPC layer forwards only the
# mechanisms it knows how to marshal, 37 of SoftHSMv2's 71 and no AES-GCM,
# so `hsm-kms init` fails with an invalid-mechanism error through it. 0.25.5
# forwards AES-GCM (and RSA-OAEP / PSS parameters) and works with hsm-kms
# unchanged. Server and client must both be the new one: the binaries are
# linked with an rpath to the library built beside them.
#
# Where: ${HSM_KMS_P11KIT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hsm-kms/p11-kit-0.25.5}.
# Re-running with a complete build there prints the paths at once.
#
# For another machine or an image: HSM_KMS_P11KIT_PREFIX=/opt/p11-kit-0.25.5
# configures the build for that prefix (its rpath and the path `p11-kit
# server` executes `p11-kit remote` from are compiled in) and installs it
# under HSM_KMS_P11KIT_DIR as a staging root (meson's DESTDIR): the files are
# in $HSM_KMS_P11KIT_DIR/opt/p11-kit-0.25.5/..., the printed paths point
# there, and they run once copied to /opt/p11-kit-0.25.5 (scripts/build-image.sh
# does so for the image's p11-kit server and client).
#
# How: a throwaway apt configuration (its own sources list, lists and cache
# dirs under a temp dir; the system's apt setup is not touched) names the
# `deb-src` of trixie on the same Debian mirror the system uses; `apt-get
# source --download-only` fetches the upstream tarball, whose SHA-256 is then
# checked against the signed Sources index. Build dependencies (meson,
# ninja-build, pkg-config, libffi-dev, a C compiler, xz-utils) come from the
# system's own release with apt-get. The build (meson + ninja, without the
# trust module, docs or translations) takes about 15 s of CPU time on 2 cores.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

P11KIT_VERSION=0.25.5
PREFIX=${HSM_KMS_P11KIT_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hsm-kms/p11-kit-$P11KIT_VERSION}
# The prefix compiled in; empty: PREFIX itself, installed in place.
INSTALL_PREFIX=${HSM_KMS_P11KIT_PREFIX:-}
case "$INSTALL_PREFIX" in "" | /*) ;; *) die "HSM_KMS_P11KIT_PREFIX must be an absolute path" ;; esac
BIN=$PREFIX$INSTALL_PREFIX/bin/p11-kit
CLIENT=$PREFIX$INSTALL_PREFIX/lib/pkcs11/p11-kit-client.so
STAMP=$PREFIX/.built

print_paths() {
    printf 'P11_KIT_BIN=%s\n' "$BIN"
    printf 'P11_KIT_CLIENT_MODULE=%s\n' "$CLIENT"
}

if [ -f "$STAMP" ] && [ -x "$BIN" ] && [ -f "$CLIENT" ]; then
    print_paths
    exit 0
fi

mkdir -p "$(dirname "$PREFIX")"
# One build at a time per cache dir (two test runs may start together).
exec 9>"$PREFIX.lock"
flock 9
if [ -f "$STAMP" ] && [ -x "$BIN" ] && [ -f "$CLIENT" ]; then
    print_paths
    exit 0
fi

T0=$(date +%s)
apt_install meson ninja-build pkg-config libffi-dev xz-utils
command -v cc >/dev/null 2>&1 || apt_install build-essential

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# The mirror of the system's own release, main component (from apt's own
# view of its sources, so a site's mirror or proxy is reused as is).
# shellcheck disable=SC1091
CODENAME=$(. /etc/os-release && printf '%s' "${VERSION_CODENAME:-}")
# shellcheck disable=SC2016 # apt's format fields, not shell expansions
MIRROR=${HSM_KMS_DEBIAN_MIRROR:-$(apt-get indextargets --no-release-info \
    --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' |
    awk -v rel="$CODENAME" '$2 == rel && $3 == "main" { print $1; exit }')}
[ -n "$MIRROR" ] || die "no Debian mirror for '$CODENAME main' in apt's sources (set HSM_KMS_DEBIAN_MIRROR)"

mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial" "$WORK/apt/parts" "$WORK/src"
printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s trixie main\n' "$MIRROR" \
    >"$WORK/apt/sources.list"
APT_OPTS=(
    -o "Dir::Etc::SourceList=$WORK/apt/sources.list"
    -o "Dir::Etc::SourceParts=$WORK/apt/parts"
    -o "Dir::State::Lists=$WORK/apt/lists"
    -o "Dir::Cache=$WORK/apt/cache"
    -o "APT::Sandbox::User=root"
)
log "p11-kit $P11KIT_VERSION: fetching trixie's Sources index from $MIRROR"
apt-get "${APT_OPTS[@]}" -qq update >&2

# The newest Debian revision of the upstream version we want.
SRC_VERSION=$(apt-cache "${APT_OPTS[@]}" showsrc p11-kit |
    awk -v v="$P11KIT_VERSION" '$1 == "Version:" && index($2, v "-") == 1 { print $2 }' | sort -V | tail -n 1)
[ -n "$SRC_VERSION" ] || die "trixie has no p11-kit $P11KIT_VERSION-* source package"
ORIG=p11-kit_$P11KIT_VERSION.orig.tar.xz
WANT_SHA=$(apt-cache "${APT_OPTS[@]}" showsrc p11-kit |
    awk -v ver="$SRC_VERSION" -v f="$ORIG" '
        /^Package:/ { this = 0 } $1 == "Version:" { this = ($2 == ver) }
        /^Checksums-Sha256:/ { sums = 1; next } /^[^ ]/ { sums = 0 }
        this && sums && $3 == f { print $1; exit }')
[ -n "$WANT_SHA" ] || die "no SHA-256 for $ORIG in trixie's Sources index"

log "p11-kit $P11KIT_VERSION: downloading source package $SRC_VERSION"
# Some package proxies serve the tarballs but not the .dsc; the tarball is
# all the build needs (Debian's one patch only enables translations), and
# its checksum is checked below either way.
(cd "$WORK/src" && apt-get "${APT_OPTS[@]}" -qq source --download-only "p11-kit=$SRC_VERSION" >&2) ||
    log "apt-get source reported an error; checking what it fetched"
[ -f "$WORK/src/$ORIG" ] || die "could not download $ORIG"
GOT_SHA=$(sha256sum "$WORK/src/$ORIG" | cut -d' ' -f1)
[ "$GOT_SHA" = "$WANT_SHA" ] || die "$ORIG: SHA-256 $GOT_SHA, the signed index says $WANT_SHA"

tar -C "$WORK/src" -xf "$WORK/src/$ORIG"
log "p11-kit $P11KIT_VERSION: building into $PREFIX"
rm -rf "$PREFIX"
B0=$(date +%s)
(
    cd "$WORK/src/p11-kit-$P11KIT_VERSION"
    # The rpath makes `p11-kit server` and `p11-kit remote` use the library
    # built here, not the system's 0.24.1 (whose RPC layer lacks AES-GCM).
    prefix=${INSTALL_PREFIX:-$PREFIX}
    LDFLAGS="-Wl,-rpath,$prefix/lib" meson setup build \
        --prefix="$prefix" --libdir=lib --buildtype=release \
        -Dhash_impl=internal -Dtrust_module=disabled -Dsystemd=disabled \
        -Dbash_completion=disabled -Dgtk_doc=false -Dman=false -Dnls=false -Dtest=false
    if [ -n "$INSTALL_PREFIX" ]; then
        DESTDIR=$PREFIX ninja -C build install
    else
        ninja -C build install
    fi
) >"$WORK/build.log" 2>&1 || {
    tail -n 40 "$WORK/build.log" >&2
    die "p11-kit build failed"
}
{ [ -x "$BIN" ] && [ -f "$CLIENT" ]; } || die "p11-kit build did not produce $BIN and $CLIENT"
touch "$STAMP"
log "p11-kit $P11KIT_VERSION: built in $(($(date +%s) - B0)) s (everything: $(($(date +%s) - T0)) s)"
print_paths
