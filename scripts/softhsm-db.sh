#!/usr/bin/env bash
# Builds SoftHSMv2 2.6.1 with the `db` object-store backend from Debian
# bookworm's source package (Debian's own patches applied) into a cache
# dir, once, and prints where it is:
#
#   eval "$(scripts/softhsm-db.sh)"
#   # SOFTHSM_DB_MODULE=.../lib/softhsm/libsofthsm2.so
#   # SOFTHSM_DB_UTIL=.../bin/softhsm2-util
#
# Why: Debian's `softhsm2` package is built with the `file` object store
# only (a token whose config says `objectstore.backend = db` fails to
# initialise with it). The file store keeps one file per object and
# rewrites it attribute after attribute at creation (about 128 openat, 35
# ftruncate and 330 fcntl locks per AES key), which bounds key creation;
# the db store keeps a token in one SQLite file. README "### Key count"
# has the figures of both. The module is the same PKCS#11 module in every
# other respect: a token made with `objectstore.backend = db` in its
# SOFTHSM2_CONF is used by hsm-kms unchanged. Tokens must be made with the
# softhsm2-util printed here (Debian's cannot open a db token).
#
# Where: ${HSM_KMS_SOFTHSM_DB_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hsm-kms/softhsm-2.6.1-db}.
# Re-running with a complete build there prints the paths at once.
#
# How: a throwaway apt configuration (its own sources list, lists and cache
# dirs under a temp dir; the system's apt setup is not touched) names the
# `deb-src` of bookworm on the same Debian mirror the system uses; `apt-get
# source --download-only` fetches the .dsc, the upstream tarball and the
# Debian tarball, whose SHA-256 are checked against the signed Sources
# index; `dpkg-source -x` unpacks them and applies Debian's patches. Build
# dependencies (libssl-dev, libsqlite3-dev, pkg-config, a C++ compiler,
# dpkg-dev; autoconf, automake and libtool when a patch touches the build
# system) come from the system's own release. The build takes about 2-4 min
# of CPU time on 2 cores.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SOFTHSM_VERSION=2.6.1
SOURCE_RELEASE=bookworm
PREFIX=${HSM_KMS_SOFTHSM_DB_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/hsm-kms/softhsm-$SOFTHSM_VERSION-db}
MODULE=$PREFIX/lib/softhsm/libsofthsm2.so
UTIL=$PREFIX/bin/softhsm2-util
STAMP=$PREFIX/.built

print_paths() {
    printf 'SOFTHSM_DB_MODULE=%s\n' "$MODULE"
    printf 'SOFTHSM_DB_UTIL=%s\n' "$UTIL"
}

built() { [ -f "$STAMP" ] && [ -f "$MODULE" ] && [ -x "$UTIL" ]; }

if built; then
    print_paths
    exit 0
fi

mkdir -p "$(dirname "$PREFIX")"
# One build at a time per cache dir (two test runs may start together).
exec 9>"$PREFIX.lock"
flock 9
if built; then
    print_paths
    exit 0
fi

T0=$(date +%s)
apt_install libssl-dev libsqlite3-dev pkg-config dpkg-dev xz-utils
command -v c++ >/dev/null 2>&1 || apt_install build-essential

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
printf 'deb-src [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] %s %s main\n' \
    "$MIRROR" "$SOURCE_RELEASE" >"$WORK/apt/sources.list"
APT_OPTS=(
    -o "Dir::Etc::SourceList=$WORK/apt/sources.list"
    -o "Dir::Etc::SourceParts=$WORK/apt/parts"
    -o "Dir::State::Lists=$WORK/apt/lists"
    -o "Dir::Cache=$WORK/apt/cache"
    -o "APT::Sandbox::User=root"
)
log "softhsm2 $SOFTHSM_VERSION (db): fetching $SOURCE_RELEASE's Sources index from $MIRROR"
apt-get "${APT_OPTS[@]}" -qq update >&2

# The newest Debian revision of the upstream version we want.
SRC_VERSION=$(apt-cache "${APT_OPTS[@]}" showsrc softhsm2 |
    awk -v v="$SOFTHSM_VERSION" '$1 == "Version:" && index($2, v "-") == 1 { print $2 }' | sort -V | tail -n 1)
[ -n "$SRC_VERSION" ] || die "$SOURCE_RELEASE has no softhsm2 $SOFTHSM_VERSION-* source package"
# name -> SHA-256 of every file of that source version, from the signed index.
apt-cache "${APT_OPTS[@]}" showsrc softhsm2 |
    awk -v ver="$SRC_VERSION" '
        /^Package:/ { this = 0 } $1 == "Version:" { this = ($2 == ver) }
        /^Checksums-Sha256:/ { sums = 1; next } /^[^ ]/ { sums = 0 }
        this && sums && NF == 3 { print $1, $3 }' | sort -u >"$WORK/sums"
[ -s "$WORK/sums" ] || die "no SHA-256 for softhsm2 $SRC_VERSION in $SOURCE_RELEASE's Sources index"

log "softhsm2 $SOFTHSM_VERSION (db): downloading source package $SRC_VERSION"
(cd "$WORK/src" && apt-get "${APT_OPTS[@]}" -qq source --download-only "softhsm2=$SRC_VERSION" >&2) ||
    log "apt-get source reported an error; checking what it fetched"
# Some package proxies serve the upstream tarball but not the .dsc or the
# Debian tarball: the upstream tarball is required, Debian's patches are
# applied when both Debian files came.
DSC="" DEBIAN_TAR="" ORIG=""
while read -r want name; do
    [ -f "$WORK/src/$name" ] || continue
    got=$(sha256sum "$WORK/src/$name" | cut -d' ' -f1)
    [ "$got" = "$want" ] || die "$name: SHA-256 $got, the signed index says $want"
    case "$name" in
    *.dsc) DSC=$name ;;
    *.debian.tar.*) DEBIAN_TAR=$name ;;
    *.orig.tar.*) ORIG=$name ;;
    esac
done <"$WORK/sums"
[ -n "$ORIG" ] || die "could not download the upstream tarball of softhsm2 $SRC_VERSION"

SRC=$WORK/src/build
if [ -n "$DSC" ] && [ -n "$DEBIAN_TAR" ]; then
    # Unpacks the checked files and applies Debian's patches (the .dsc's
    # signature is not needed: every file was checked against the signed index).
    (cd "$WORK/src" && dpkg-source --no-check -x "$DSC" build >&2)
else
    log "softhsm2: the mirror served no Debian tarball; building the checked upstream tarball without Debian's patches"
    mkdir -p "$SRC"
    tar -C "$SRC" --strip-components=1 -xf "$WORK/src/$ORIG"
fi
AUTORECONF=0
if [ -f "$SRC/debian/patches/series" ]; then
    while read -r p; do
        case "$p" in '' | '#'*) continue ;; esac
        if grep -qE '^\+\+\+ [^ ]*(configure\.ac|Makefile\.am|\.m4)' "$SRC/debian/patches/${p%% *}"; then
            AUTORECONF=1
        fi
    done <"$SRC/debian/patches/series"
fi
if [ "$AUTORECONF" = 1 ] || [ ! -x "$SRC/configure" ]; then
    apt_install autoconf automake libtool
fi

log "softhsm2 $SOFTHSM_VERSION (db): building into $PREFIX"
rm -rf "$PREFIX"
B0=$(date +%s)
(
    cd "$SRC"
    if [ "$AUTORECONF" = 1 ] || [ ! -x configure ]; then
        autoreconf -fi
    fi
    # Debian's crypto choices (OpenSSL, ECC and EdDSA, no GOST), plus the
    # db object store.
    ./configure --prefix="$PREFIX" --sysconfdir="$PREFIX/etc" \
        --with-crypto-backend=openssl --with-objectstore-backend-db \
        --enable-ecc --enable-eddsa --disable-gost --disable-static --without-p11-kit
    make -j"$(nproc)"
    make install
) >"$WORK/build.log" 2>&1 || {
    tail -n 40 "$WORK/build.log" >&2
    die "softhsm2 build failed"
}
{ [ -f "$MODULE" ] && [ -x "$UTIL" ]; } || die "softhsm2 build did not produce $MODULE and $UTIL"
touch "$STAMP"
log "softhsm2 $SOFTHSM_VERSION (db): built in $(($(date +%s) - B0)) s (everything: $(($(date +%s) - T0)) s)"
print_paths
